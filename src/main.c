/* popgate — options, config, main loop, signals: wiring only.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-build-config.h"
#include "popgate/pg-core.h"

#include <stdio.h>

int
main (int argc, char **argv)
{
  gboolean version = FALSE;
  const GOptionEntry entries[] = {
    { "version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) context = g_option_context_new ("- POP3/IMAP gateway to an IMAP store");
  g_autoptr (GError) error = NULL;

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "popgate: %s\n", error->message);
      return 2;
    }
  if (version)
    {
      printf ("popgate %s\n", PG_VERSION);
      return 0;
    }
  pg_log_init (PG_LOG_LEVEL_WARNING);
  return 0;
}
