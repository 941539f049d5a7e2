/* popgate — options, config, main loop, signals: wiring only.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-build-config.h"
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"

#include <stdio.h>

/* Exit codes: 0 ok; 1 the configuration is wrong (or the daemon failed); 2 bad usage. */
#define PG_EXIT_CONFIG 1
#define PG_EXIT_USAGE 2

static guint pg_main_verbosity = 0;

static gboolean
pg_main_verbose_cb (const gchar *option_name, const gchar *value, gpointer data, GError **error)
{
  if (pg_main_verbosity < PG_LOG_LEVEL_DEBUG)
    pg_main_verbosity++;
  return TRUE;
}

int
main (int argc, char **argv)
{
  g_autofree gchar *config_path = NULL;
  g_autofree gchar *upstream = NULL;
  g_auto (GStrv) pop3_listen = NULL;
  g_auto (GStrv) imap_listen = NULL;
  g_autofree gchar *pop3_listen_joined = NULL;
  g_autofree gchar *imap_listen_joined = NULL;
  gboolean check = FALSE;
  gboolean version = FALSE;
  const GOptionEntry entries[] = {
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
      "Configuration file (see popgate.conf.example)", "FILE" },
    { "check", 0, 0, G_OPTION_ARG_NONE, &check,
      "Validate the configuration and exit (0 ok, 1 with a message naming file, group and key)",
      NULL },
    { "upstream", 0, 0, G_OPTION_ARG_STRING, &upstream,
      "Upstream IMAP server; overrides [upstream] host/port (imaps:// = implicit TLS, "
      "imap:// = STARTTLS)",
      "[imaps://|imap://]HOST[:PORT]" },
    { "pop3-listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &pop3_listen,
      "POP3 listener; overrides [pop3] listen (repeatable; [::1]:PORT for IPv6)", "ADDR:PORT" },
    { "imap-listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &imap_listen,
      "IMAP listener; overrides [imap] listen (repeatable)", "ADDR:PORT" },
    { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, (gpointer) pg_main_verbose_cb,
      "More log detail: -v info, -vv debug (secrets are never logged)", NULL },
    { "version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) context
    = g_option_context_new ("- POP3/IMAP gateway to an IMAP store");
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;
  PgConfigOverrides overrides = { 0 };

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (
    context, "Without --config, --upstream and --pop3-listen/--imap-listen build a config\n"
             "from the defaults. Flags override the file.\n"
             "Examples:\n"
             "  popgate --config /etc/popgate/popgate.conf --check\n"
             "  popgate --upstream imaps://imap.example.com --pop3-listen 127.0.0.1:1110\n");
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "popgate: %s (try --help)\n", error->message);
      return PG_EXIT_USAGE;
    }
  if (version)
    {
      printf ("popgate %s\n", PG_VERSION);
      return 0;
    }
  if (argc > 1)
    {
      fprintf (stderr, "popgate: unexpected argument \"%s\" (try --help)\n", argv[1]);
      return PG_EXIT_USAGE;
    }
  pg_log_init ((PgLogLevel) pg_main_verbosity);

  if (pop3_listen != NULL)
    pop3_listen_joined = g_strjoinv (",", pop3_listen);
  if (imap_listen != NULL)
    imap_listen_joined = g_strjoinv (",", imap_listen);
  overrides.upstream = upstream;
  overrides.pop3_listen = pop3_listen_joined;
  overrides.imap_listen = imap_listen_joined;

  if (config_path == NULL && upstream == NULL && pop3_listen == NULL && imap_listen == NULL)
    {
      fprintf (stderr, "popgate: no configuration: use --config FILE, or --upstream with "
                       "--pop3-listen/--imap-listen (try --help)\n");
      return PG_EXIT_USAGE;
    }

  config = pg_config_load (config_path, &overrides, &error);
  if (config == NULL)
    {
      fprintf (stderr, "popgate: %s\n", error->message);
      return PG_EXIT_CONFIG;
    }
  if (check)
    {
      printf ("%s: configuration OK\n", config->source);
      return 0;
    }

  pg_session_message (0, "popgate %s starting with %s; upstream %s:%u (tls %s)", PG_VERSION,
                      config->source, config->upstream.host, config->upstream.port,
                      pg_upstream_tls_to_string (config->upstream.tls));

  /* ==== LEAD: wire the daemon here ===================================================
   * 1. Listeners: one per entry of config->pop3.listen / tls_listen, config->imap.listen /
   *    tls_listen and config->metrics.listen (PgListenAddr; `any` = all addresses, bind
   *    with g_socket_listener_add_inet_port()).
   * 2. Signals with g_unix_signal_add(): SIGTERM/SIGINT stop accepting and let sessions
   *    finish for config->limits.shutdown_timeout_ms; SIGHUP reloads with
   *    pg_config_load (config_path, &overrides, &error) (keep the old config on error,
   *    log the message) and hands the new ref to new sessions.
   * 3. Run the GMainLoop until shutdown completes; return 0, or 1 if listening failed.
   * ==================================================================================== */

  return 0;
}
