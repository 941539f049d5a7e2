/* Replays every file of the corpus directories given as arguments through the fuzz target
 * it is linked with, so fuzz targets run as ordinary tests without libFuzzer.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include <glib.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
main (int argc, char **argv)
{
  guint n = 0;

  for (int i = 1; i < argc; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GDir) dir = g_dir_open (argv[i], 0, &error);
      const char *name;

      if (dir == NULL)
        {
          g_printerr ("%s\n", error->message);
          return 1;
        }
      while ((name = g_dir_read_name (dir)) != NULL)
        {
          g_autofree gchar *path = g_build_filename (argv[i], name, NULL);
          g_autofree gchar *contents = NULL;
          gsize len = 0;

          if (!g_file_get_contents (path, &contents, &len, &error))
            {
              g_printerr ("%s\n", error->message);
              return 1;
            }
          LLVMFuzzerTestOneInput ((const uint8_t *) contents, len);
          n++;
        }
    }
  g_print ("replayed %u inputs\n", n);
  return n > 0 ? 0 : 1;
}
