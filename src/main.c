/* popgate — options, config, main loop, signals: wiring only.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-build-config.h"
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-net.h"
#include "popgate/pg-pop3.h"

#include <glib-unix.h>
#include <signal.h>

#include <stdio.h>

/* Exit codes: 0 ok; 1 the configuration is wrong (or the daemon failed); 2 bad usage. */
#define PG_EXIT_CONFIG 1
#define PG_EXIT_USAGE 2

static guint pg_main_verbosity = 0;

typedef struct
{
  GMainLoop *loop;              /* owned */
  PgServer *server;             /* owned */
  const char *config_path;      /* unowned: NULL without --config */
  PgConfigOverrides *overrides; /* unowned */
  guint signal_ids[3];
} PgMainState;

/* The front ends that serve sessions; listeners without one answer "not available". */
static void
pg_main_register_frontends (PgServer *server)
{
  pg_server_set_handler (server, PG_FRONTEND_POP3, pg_pop3_session_start, NULL);
}

static void
pg_main_log_listeners (PgServer *server)
{
  for (int fe = 0; fe < PG_FRONTEND_COUNT; fe++)
    for (int tls = 0; tls <= 1; tls++)
      {
        g_autoptr (GPtrArray) bound = pg_server_get_bound_addresses (server, fe, tls);
        for (guint i = 0; i < bound->len; i++)
          pg_session_message (0, "listening for %s%s on %s", pg_frontend_to_string (fe),
                              tls ? " (implicit TLS)" : "",
                              (const char *) g_ptr_array_index (bound, i));
      }
}

static void
pg_main_idle_cb (PgServer *server, gpointer user_data)
{
  PgMainState *state = user_data;
  g_main_loop_quit (state->loop);
}

static gboolean
pg_main_stop_cb (gpointer user_data)
{
  PgMainState *state = user_data;

  pg_session_message (0, "stopping: no new connections; %u sessions still running",
                      pg_server_get_n_sessions (state->server));
  pg_server_shutdown (state->server);
  return G_SOURCE_CONTINUE;
}

static gboolean
pg_main_reload_cb (gpointer user_data)
{
  PgMainState *state = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = pg_config_load (state->config_path, state->overrides, &error);

  if (config == NULL)
    {
      pg_session_warning (0, "reload refused, keeping the running configuration: %s",
                          error->message);
      return G_SOURCE_CONTINUE;
    }
  if (!pg_server_reload (state->server, config, &error))
    {
      pg_session_warning (0, "reload refused, keeping the running configuration: %s",
                          error->message);
      return G_SOURCE_CONTINUE;
    }
  pg_session_message (0, "configuration reloaded from %s", config->source);
  pg_main_log_listeners (state->server);
  return G_SOURCE_CONTINUE;
}

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

  /* glib-networking reads its GnuTLS priority string once, when the backend first loads;
   * so [tls] priority applies at start only (a reload cannot change it). */
  if (config->tls.priority != NULL)
    g_setenv ("G_TLS_GNUTLS_PRIORITY", config->tls.priority, TRUE);
  else
    g_setenv ("G_TLS_GNUTLS_PRIORITY", PG_TLS_DEFAULT_PRIORITY, FALSE);

  {
    PgMainState state = { 0 };

    state.loop = g_main_loop_new (NULL, FALSE);
    state.server = pg_server_new (config);
    state.config_path = config_path;
    state.overrides = &overrides;
    pg_main_register_frontends (state.server);
    if (!pg_server_start (state.server, &error))
      {
        fprintf (stderr, "popgate: %s\n", error->message);
        g_object_unref (state.server);
        g_main_loop_unref (state.loop);
        return PG_EXIT_CONFIG;
      }
    pg_main_log_listeners (state.server);
    g_signal_connect (state.server, "idle", G_CALLBACK (pg_main_idle_cb), &state);
    state.signal_ids[0] = g_unix_signal_add (SIGTERM, pg_main_stop_cb, &state);
    state.signal_ids[1] = g_unix_signal_add (SIGINT, pg_main_stop_cb, &state);
    state.signal_ids[2] = g_unix_signal_add (SIGHUP, pg_main_reload_cb, &state);
    pg_session_message (0, "ready");

    g_main_loop_run (state.loop);

    for (gsize i = 0; i < G_N_ELEMENTS (state.signal_ids); i++)
      if (state.signal_ids[i] != 0)
        g_source_remove (state.signal_ids[i]);
    g_object_unref (state.server);
    g_main_loop_unref (state.loop);
    pg_session_message (0, "stopped");
  }
  return 0;
}
