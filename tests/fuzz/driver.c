/* A stand-in for libFuzzer: run LLVMFuzzerTestOneInput() on every file of the corpus
 * directories (or files) given as arguments, then on deterministic pseudo-random
 * mutations of them, so each fuzz target is also an ordinary, reproducible test.
 *
 * PG_FUZZ_MUTATIONS=N sets the mutations per corpus file (default 200).
 * After the pattern of GLib's fuzzing/driver.c.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <glib.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Larger than any seed, small enough to keep a mutation run quick. */
#define PG_FUZZ_DRIVER_MAX_INPUT (64 * 1024)

static void
pg_fuzz_driver_run (const guint8 *data, gsize len)
{
  /* Hand over a copy of exactly len bytes, so ASan sees any read past the end; never
   * NULL, as libFuzzer does. */
  g_autofree guint8 *copy = g_malloc (MAX (len, 1));

  if (len > 0)
    memcpy (copy, data, len);

  LLVMFuzzerTestOneInput (copy, len);
}

static void
pg_fuzz_driver_insert (GByteArray *array, guint pos, const guint8 *data, guint len)
{
  guint old_len = array->len;

  g_byte_array_set_size (array, old_len + len);
  memmove (array->data + pos + len, array->data + pos, old_len - pos);
  memcpy (array->data + pos, data, len);
}

/* One mutation of input into out, chosen by rand; other is another corpus file, for
 * splicing. Mutations that matter to line-oriented parsers: line ends, dots, braces. */
static void
pg_fuzz_driver_mutate (GRand *rand, GByteArray *out, GBytes *input, GBytes *other)
{
  static const char *const tokens[]
      = { "\r\n", "\n", "\r", ".", "{", "}",  "{5}\r\n",    "{0+}\r\n",
          "\"",   "\\", "(",  ")", " ", "\0", "4294967296", "\xff" };
  gsize len = 0;
  const guint8 *data = g_bytes_get_data (input, &len);
  guint rounds = (guint) g_rand_int_range (rand, 1, 8);

  g_byte_array_set_size (out, 0);
  g_byte_array_append (out, data, (guint) len);

  for (guint r = 0; r < rounds; r++)
    {
      guint pos = out->len > 0 ? (guint) g_rand_int_range (rand, 0, (gint32) out->len + 1) : 0;
      /* Drawn once: MIN() evaluates its arguments twice. */
      guint span = (guint) g_rand_int_range (rand, 1, 128);

      switch (g_rand_int_range (rand, 0, 6))
        {
        case 0: /* flip a bit */
          if (out->len > 0)
            out->data[pos % out->len] ^= (guint8) (1u << g_rand_int_range (rand, 0, 8));
          break;
        case 1: /* insert a token */
          {
            const char *t = tokens[g_rand_int_range (rand, 0, G_N_ELEMENTS (tokens))];
            guint tlen = t[0] == '\0' ? 1 : (guint) strlen (t);

            pg_fuzz_driver_insert (out, pos, (const guint8 *) t, tlen);
          }
          break;
        case 2: /* delete a range */
          if (out->len > 0 && pos < out->len)
            g_byte_array_remove_range (out, pos, MIN (span % 16 + 1, out->len - pos));
          break;
        case 3: /* duplicate a range */
          if (out->len > 0 && pos < out->len && out->len < PG_FUZZ_DRIVER_MAX_INPUT / 2)
            {
              guint n = MIN (span % 64 + 1, out->len - pos);
              g_autofree guint8 *copy = g_memdup2 (out->data + pos, n);

              pg_fuzz_driver_insert (out, pos, copy, n);
            }
          break;
        case 4: /* splice in part of another input */
          {
            gsize olen = 0;
            const guint8 *odata = g_bytes_get_data (other, &olen);

            if (olen > 0)
              {
                guint start = (guint) g_rand_int_range (rand, 0, (gint32) olen);
                guint n = MIN (span, (guint) olen - start);

                pg_fuzz_driver_insert (out, pos, odata + start, n);
              }
          }
          break;
        default: /* truncate */
          if (pos < out->len)
            g_byte_array_set_size (out, pos);
          break;
        }
    }
  if (out->len > PG_FUZZ_DRIVER_MAX_INPUT)
    g_byte_array_set_size (out, PG_FUZZ_DRIVER_MAX_INPUT);
}

static gint
pg_fuzz_driver_compare_paths (gconstpointer a, gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

static gboolean
pg_fuzz_driver_collect (const char *path, GPtrArray *inputs, GError **error)
{
  g_autoptr (GDir) dir = NULL;
  g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
  const char *name;

  if (!g_file_test (path, G_FILE_TEST_IS_DIR))
    {
      g_autofree gchar *contents = NULL;
      gsize len = 0;

      if (!g_file_get_contents (path, &contents, &len, error))
        return FALSE;
      g_ptr_array_add (inputs, g_bytes_new_take (g_steal_pointer (&contents), len));
      return TRUE;
    }

  dir = g_dir_open (path, 0, error);
  if (dir == NULL)
    return FALSE;
  while ((name = g_dir_read_name (dir)) != NULL)
    g_ptr_array_add (names, g_build_filename (path, name, NULL));
  /* Directory order is not stable; the mutation sequence must be. */
  g_ptr_array_sort (names, pg_fuzz_driver_compare_paths);
  for (guint i = 0; i < names->len; i++)
    if (!pg_fuzz_driver_collect (names->pdata[i], inputs, error))
      return FALSE;
  return TRUE;
}

int
main (int argc, char **argv)
{
  g_autoptr (GPtrArray) inputs = g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref);
  g_autoptr (GByteArray) mutant = g_byte_array_new ();
  g_autoptr (GRand) rand = g_rand_new_with_seed (0x706f7067); /* "popg" */
  const char *env = g_getenv ("PG_FUZZ_MUTATIONS");
  guint mutations = env != NULL ? (guint) g_ascii_strtoull (env, NULL, 10) : 200;
  guint runs = 0;

  /* A g_return_if_fail() in the code under test is a bug the fuzzer must report. */
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);

  if (argc < 2)
    {
      g_printerr ("usage: %s CORPUS-DIR-OR-FILE...\n", argv[0]);
      return 2;
    }
  for (int i = 1; i < argc; i++)
    {
      g_autoptr (GError) error = NULL;

      if (!pg_fuzz_driver_collect (argv[i], inputs, &error))
        {
          g_printerr ("%s: %s\n", argv[0], error->message);
          return 1;
        }
    }
  if (inputs->len == 0)
    {
      g_printerr ("%s: empty corpus\n", argv[0]);
      return 1;
    }

  pg_fuzz_driver_run (NULL, 0);
  runs++;
  for (guint i = 0; i < inputs->len; i++)
    {
      gsize len = 0;
      const guint8 *data = g_bytes_get_data (inputs->pdata[i], &len);

      pg_fuzz_driver_run (data, len);
      runs++;
    }
  for (guint i = 0; i < inputs->len; i++)
    for (guint m = 0; m < mutations; m++)
      {
        GBytes *other = inputs->pdata[(guint) g_rand_int_range (rand, 0, (gint32) inputs->len)];

        pg_fuzz_driver_mutate (rand, mutant, inputs->pdata[i], other);
        pg_fuzz_driver_run (mutant->data, mutant->len);
        runs++;
      }
  g_print ("%s: %u inputs from %u corpus files, all passed\n", argv[0], runs, inputs->len);
  return 0;
}
