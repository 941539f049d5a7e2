/* popgate — options, config, main loop, signals: wiring only.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-build-config.h"
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-metrics-server.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-status-server.h"
#include "popgate/pg-status.h"
#include "popgate/pg-net.h"
#include "popgate/pg-oauth2.h"
#include "popgate/pg-imap.h"
#include "popgate/pg-pop3.h"
#include "popgate/pg-tls.h"
#include "popgate/pg-state.h"
#include "popgate/pg-trace.h"

#include <glib/gstdio.h>
#include <glib-unix.h>
#include <signal.h>

#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <string.h>

#if PG_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* Exit codes: 0 ok; 1 the configuration is wrong (or the daemon failed); 2 bad usage. */
#define PG_EXIT_CONFIG 1
#define PG_EXIT_USAGE 2

static guint pg_main_verbosity = 0;
static gboolean pg_main_trace = FALSE; /* --trace: on whatever the config says */

/* --- systemd: readiness notification and socket activation --------------------------------
 * Without NOTIFY_SOCKET / LISTEN_FDS (not under systemd) both are no-ops. */

/* Tell the service manager about a state change ("READY=1", "STOPPING=1", ...) with a
 * STATUS= line for `systemctl status`. */
static void G_GNUC_PRINTF (2, 3) pg_main_notify (const char *state, const char *status_format, ...)
{
#if PG_HAVE_LIBSYSTEMD
  g_autofree gchar *status = NULL;
  g_autofree gchar *message = NULL;
  va_list args;
  int rc;

  va_start (args, status_format);
  status = g_strdup_vprintf (status_format, args);
  va_end (args);
  message = g_strdup_printf ("%s\nSTATUS=%s", state, status);
  rc = sd_notify (0, message);
  if (rc < 0)
    pg_session_warning (0, "cannot notify the service manager: %s", g_strerror (-rc));
#else
  (void) state;
  (void) status_format;
#endif
}

/* One socket handed over by systemd. */
typedef struct
{
  PgFrontend frontend;
  gboolean tls;
  GSocket *socket; /* owned */
  gchar *name;     /* owned: its FileDescriptorName= */
} PgMainInherited;

static void
pg_main_inherited_free (PgMainInherited *inherited)
{
  g_clear_object (&inherited->socket);
  g_free (inherited->name);
  g_free (inherited);
}

/* The listening sockets systemd passed (LISTEN_FDS), matched to front ends by their
 * FileDescriptorName=: pop3, pop3s, imap, imaps. An fd with another name is an error: a
 * socket nobody serves would hang its clients. */
static GPtrArray *
pg_main_inherited_sockets (GError **error)
{
  g_autoptr (GPtrArray) out
      = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_main_inherited_free);
#if PG_HAVE_LIBSYSTEMD
  static const struct
  {
    const char *name;
    PgFrontend frontend;
    gboolean tls;
  } names[] = {
    { "pop3", PG_FRONTEND_POP3, FALSE },
    { "pop3s", PG_FRONTEND_POP3, TRUE },
    { "imap", PG_FRONTEND_IMAP, FALSE },
    { "imaps", PG_FRONTEND_IMAP, TRUE },
  };
  g_auto (GStrv) fd_names = NULL;
  int n = sd_listen_fds_with_names (1, &fd_names);

  if (n < 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "socket activation: %s", g_strerror (-n));
      return NULL;
    }
  for (int i = 0; i < n; i++)
    {
      int fd = SD_LISTEN_FDS_START + i;
      const char *name = fd_names != NULL && fd_names[i] != NULL ? fd_names[i] : "unknown";
      g_autoptr (GError) local_error = NULL;
      PgMainInherited *inherited = NULL;

      for (gsize k = 0; k < G_N_ELEMENTS (names); k++)
        {
          if (strcmp (name, names[k].name) != 0)
            continue;
          inherited = g_new0 (PgMainInherited, 1);
          inherited->frontend = names[k].frontend;
          inherited->tls = names[k].tls;
          inherited->name = g_strdup (name);
        }
      if (inherited == NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "socket activation: file descriptor %d is named \"%s\"; set "
                       "FileDescriptorName= to pop3, pop3s, imap or imaps in its .socket unit",
                       fd, name);
          return NULL;
        }
      g_ptr_array_add (out, inherited);
      if (sd_is_socket (fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "socket activation: file descriptor %d (%s) is not a listening stream "
                       "socket",
                       fd, name);
          return NULL;
        }
      inherited->socket = g_socket_new_from_fd (fd, &local_error);
      if (inherited->socket == NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "socket activation: fd %d (%s): %s", fd,
                       name, local_error->message);
          return NULL;
        }
    }
#endif
  return g_steal_pointer (&out);
}

typedef struct
{
  GMainLoop *loop;              /* owned */
  PgServer *server;             /* owned */
  PgMetricsServer *metrics;     /* owned */
  PgStatusServer *status;       /* owned */
  const char *config_path;      /* unowned: NULL without --config */
  PgConfigOverrides *overrides; /* unowned */
  guint signal_ids[3];
} PgMainState;

/* The front ends that serve sessions; listeners without one answer "not available". */
static void
pg_main_register_frontends (PgServer *server)
{
  pg_server_set_handler (server, PG_FRONTEND_POP3, pg_pop3_session_start, NULL);
  pg_server_set_handler (server, PG_FRONTEND_IMAP, pg_imap_session_start, NULL);
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
pg_main_log_metrics (PgMetricsServer *metrics)
{
  g_autoptr (GPtrArray) bound = pg_metrics_server_get_bound_addresses (metrics);

  for (guint i = 0; i < bound->len; i++)
    pg_session_message (0, "metrics at http://%s/metrics",
                        (const char *) g_ptr_array_index (bound, i));
}

static void
pg_main_log_status (PgStatusServer *status)
{
  g_autoptr (GPtrArray) bound = pg_status_server_get_bound_addresses (status);

  for (guint i = 0; i < bound->len; i++)
    pg_session_message (0, "status page at http://%s/",
                        (const char *) g_ptr_array_index (bound, i));
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

  pg_main_notify ("STOPPING=1", "stopping: %u sessions still running",
                  pg_server_get_n_sessions (state->server));
  pg_session_message (0, "stopping: no new connections; %u sessions still running",
                      pg_server_get_n_sessions (state->server));
  pg_server_shutdown (state->server);
  return G_SOURCE_CONTINUE;
}

/* [imap] account_map still works, as [accounts] file; say so once per process. */
static void
pg_main_warn_deprecated (const PgConfig *config)
{
  static gboolean warned = FALSE;

  if (!config->accounts.deprecated_map || warned)
    return;
  warned = TRUE;
  pg_session_warning (0,
                      "%s: [imap] account_map is deprecated: use [accounts] file (lines "
                      "\"local-user local-secret upstream upstream-user credential\"; an "
                      "old line \"u s up-user FILE\" is \"u s default up-user "
                      "password:FILE\")",
                      config->source);
}

static gboolean
pg_main_reload_cb (gpointer user_data)
{
  PgMainState *state = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autofree gchar *monotonic
      = g_strdup_printf ("RELOADING=1\nMONOTONIC_USEC=%" G_GINT64_FORMAT, g_get_monotonic_time ());

  pg_main_notify (monotonic, "reloading the configuration");
  config = pg_config_load (state->config_path, state->overrides, &error);
  if (config == NULL || !pg_pop3_prepare_state (config, &error)
      || !pg_server_reload (state->server, config, &error))
    {
      pg_session_warning (0, "reload refused, keeping the running configuration: %s",
                          error->message);
      pg_main_notify ("READY=1", "serving; the last reload was refused: %s", error->message);
      return G_SOURCE_CONTINUE;
    }
  if (!pg_metrics_server_apply (state->metrics, config, &error))
    {
      pg_session_warning (0, "reload: metrics listeners unchanged: %s", error->message);
      g_clear_error (&error);
    }
  if (!pg_status_server_apply (state->status, config, &error))
    {
      pg_session_warning (0, "reload: status page listeners unchanged: %s", error->message);
      g_clear_error (&error);
    }
  pg_trace_set_enabled (pg_main_trace || config->log.trace);
  pg_main_warn_deprecated (config);
  pg_session_message (0, "configuration reloaded from %s", config->source);
  pg_main_log_listeners (state->server);
  pg_main_log_metrics (state->metrics);
  pg_main_log_status (state->status);
  pg_main_notify ("READY=1", "serving; configuration reloaded from %s", config->source);
  return G_SOURCE_CONTINUE;
}

static gboolean
pg_main_verbose_cb (const gchar *option_name, const gchar *value, gpointer data, GError **error)
{
  if (pg_main_verbosity < PG_LOG_LEVEL_DEBUG)
    pg_main_verbosity++;
  return TRUE;
}

/* --- --oauth2-authorize LOCAL-USER: the account's first refresh token ------------------- */

typedef struct
{
  GMainLoop *loop; /* owned */
  GError *error;   /* owned */
  gboolean ok;
} PgMainAuthorize;

static void
pg_main_authorize_prompt_cb (const char *line, gpointer user_data)
{
  printf ("%s\n", line);
  fflush (stdout);
}

static void
pg_main_authorize_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgMainAuthorize *authorize = user_data;

  authorize->ok = pg_oauth2_authorize_finish (result, &authorize->error);
  g_main_loop_quit (authorize->loop);
}

static int
pg_main_oauth2_authorize (const PgConfig *config, const char *local_user)
{
  const PgAccount *account = pg_config_find_account (config, local_user);
  PgMainAuthorize authorize = { g_main_loop_new (NULL, FALSE), NULL, FALSE };

  if (account == NULL || account->credential != PG_CREDENTIAL_OAUTH2)
    {
      fprintf (
          stderr, "popgate: --oauth2-authorize %s: %s has no line with an oauth2:FILE credential\n",
          local_user, config->accounts.file != NULL ? config->accounts.file : "no accounts file");
      g_main_loop_unref (authorize.loop);
      return PG_EXIT_CONFIG;
    }
  pg_oauth2_authorize_async (account->upstream, account->token_file, pg_main_authorize_prompt_cb,
                             NULL, NULL, pg_main_authorize_cb, &authorize);
  g_main_loop_run (authorize.loop);
  g_main_loop_unref (authorize.loop);
  pg_oauth2_reset ();
  if (!authorize.ok)
    {
      fprintf (stderr, "popgate: --oauth2-authorize %s: %s\n", local_user,
               authorize.error->message);
      g_error_free (authorize.error);
      return PG_EXIT_CONFIG;
    }
  return 0;
}

/* [state] path for the file backend: a directory popgate can write, or one it can create
 * (its nearest existing ancestor is a writable directory). --check must not create it. */
static gboolean
pg_main_check_state_path (PgConfig *config, gboolean check_only, GError **error)
{
  g_autofree gchar *dir = NULL;
  GStatBuf st;
  gboolean any_owner = FALSE;

  if (config->state.backend != PG_STATE_BACKEND_FILE)
    return TRUE;
  /* root's --check of a directory the service user owns (DynamicUser: a uid root cannot
   * know; the unit's own ExecStartPre check runs as that user and checks the owner). */
  if (check_only && geteuid () == 0 && g_stat (config->state.path, &st) == 0 && st.st_uid != 0)
    {
      any_owner = TRUE;
      printf ("%s: note: [state] path %s belongs to uid %u: popgate must run as that user "
              "(as the systemd unit's DynamicUser does)\n",
              config->source, config->state.path, (guint) st.st_uid);
    }
  /* Owner and mode, as the store checks them at start (a forgeable record is refused). */
  if (!pg_state_store_check_dir (config->state.path, any_owner, error))
    {
      g_prefix_error (error, "%s: ", config->source);
      return FALSE;
    }
  dir = g_strdup (config->state.path);
  for (;;)
    {
      if (g_file_test (dir, G_FILE_TEST_EXISTS))
        break;
      {
        g_autofree gchar *parent = g_path_get_dirname (dir);

        if (g_strcmp0 (parent, dir) == 0)
          break;
        g_free (dir);
        dir = g_steal_pointer (&parent);
      }
    }
  if (!g_file_test (dir, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: [state] path %s: %s is not a directory",
                   config->source, config->state.path, dir);
      return FALSE;
    }
  if (access (dir, W_OK | X_OK) != 0)
    {
      int saved_errno = errno;

      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: [state] path %s: %s %s: %s",
                   config->source, config->state.path,
                   g_strcmp0 (dir, config->state.path) == 0 ? "cannot write to"
                                                            : "cannot be created in",
                   dir, g_strerror (saved_errno));
      return FALSE;
    }
  return TRUE;
}

/* What the config names on disk, loaded the way startup will use it: the certificate and
 * key must belong together, CA files must hold certificates, the state path must be
 * usable. Both --check and startup run it, so they agree. */
static gboolean
pg_main_check_files (PgConfig *config, gboolean check_only, GError **error)
{
  if (config->tls.cert != NULL && config->tls.key != NULL
      && !pg_tls_check_pair (config->tls.cert, config->tls.key, error))
    {
      g_prefix_error (error, "%s: [tls] cert/key: ", config->source);
      return FALSE;
    }
  for (guint i = 0; i <= config->upstreams->len; i++)
    {
      const PgUpstreamConfig *upstream
          = i == 0 ? &config->upstream : g_ptr_array_index (config->upstreams, i - 1);
      g_autofree gchar *group
          = i == 0 ? g_strdup ("upstream") : g_strdup_printf ("upstream:%s", upstream->name);

      if (upstream->ca_file != NULL && !pg_tls_check_ca_file (upstream->ca_file, error))
        {
          g_prefix_error (error, "%s: [%s] ca_file: ", config->source, group);
          return FALSE;
        }
      if (upstream->oauth2.ca_file != NULL
          && !pg_tls_check_ca_file (upstream->oauth2.ca_file, error))
        {
          g_prefix_error (error, "%s: [%s] oauth2_ca_file: ", config->source, group);
          return FALSE;
        }
    }
  return pg_main_check_state_path (config, check_only, error);
}

int
main (int argc, char **argv)
{
  g_autofree gchar *config_path = NULL;
  g_autofree gchar *upstream = NULL;
  g_autofree gchar *upstream_tls = NULL;
  g_autofree gchar *upstream_ca = NULL;
  g_autofree gchar *upstream_ca_absolute = NULL;
  g_auto (GStrv) pop3_listen = NULL;
  g_auto (GStrv) imap_listen = NULL;
  g_autofree gchar *pop3_listen_joined = NULL;
  g_autofree gchar *imap_listen_joined = NULL;
  gboolean check = FALSE;
  gboolean socket_activation = FALSE;
  gboolean version = FALSE;
  g_autofree gchar *oauth2_authorize = NULL;
  const GOptionEntry entries[] = {
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
      "Configuration file (see popgate.conf.example)", "FILE" },
    { "check", 0, 0, G_OPTION_ARG_NONE, &check,
      "Validate the configuration and exit (0 ok, 1 with a message naming file, group and key)",
      NULL },
    { "socket-activation", 0, 0, G_OPTION_ARG_NONE, &socket_activation,
      "With --check: the listeners come from systemd socket units, so a config without "
      "listen keys is fine (the unit's ExecStartPre uses it)",
      NULL },
    { "upstream", 0, 0, G_OPTION_ARG_STRING, &upstream,
      "Upstream IMAP server; overrides [upstream] host/port (imaps:// = implicit TLS, "
      "imap:// = STARTTLS)",
      "[imaps://|imap://]HOST[:PORT]" },
    { "upstream-tls", 0, 0, G_OPTION_ARG_STRING, &upstream_tls,
      "How to reach the upstream; overrides [upstream] tls and the --upstream scheme",
      "none|starttls|implicit" },
    { "upstream-ca", 0, 0, G_OPTION_ARG_FILENAME, &upstream_ca,
      "CA file (PEM) that verifies the upstream's certificate; overrides [upstream] ca_file",
      "FILE" },
    { "pop3-listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &pop3_listen,
      "POP3 listener; overrides [pop3] listen (repeatable; [::1]:PORT for IPv6)", "ADDR:PORT" },
    { "imap-listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &imap_listen,
      "IMAP listener; overrides [imap] listen (repeatable)", "ADDR:PORT" },
    { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, (gpointer) pg_main_verbose_cb,
      "More log detail: -v info, -vv debug (secrets are never logged)", NULL },
    { "trace", 0, 0, G_OPTION_ARG_NONE, &pg_main_trace,
      "Audit trace: log each client command with the upstream commands it caused and the "
      "message number/UID/UIDL mapping (secrets redacted); same as [log] trace = true",
      NULL },
    { "oauth2-authorize", 0, 0, G_OPTION_ARG_STRING, &oauth2_authorize,
      "Obtain the first OAuth2 refresh token of an accounts-file user (device grant, or a "
      "browser with a loopback redirect), write its token file and exit",
      "LOCAL-USER" },
    { "version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) context
      = g_option_context_new ("- POP3/IMAP gateway to an IMAP store");
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autoptr (GPtrArray) inherited = NULL;
  PgConfigOverrides overrides = { 0 };

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (
      context, "Without --config, --upstream and --pop3-listen/--imap-listen build a config\n"
               "from the defaults. Flags override the file.\n"
               "Examples:\n"
               "  popgate --config /etc/popgate/popgate.conf --check\n"
               "  popgate --upstream imaps://imap.example.com --pop3-listen 127.0.0.1:1110\n"
               "  popgate --upstream 127.0.0.1:1143 --upstream-tls none --pop3-listen "
               "127.0.0.1:1110\n");
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
  overrides.upstream_tls = upstream_tls;
  /* A flag's path is relative to where popgate was started, not to the config file. */
  if (upstream_ca != NULL)
    upstream_ca_absolute = g_canonicalize_filename (upstream_ca, NULL);
  overrides.upstream_ca = upstream_ca_absolute;
  overrides.pop3_listen = pop3_listen_joined;
  overrides.imap_listen = imap_listen_joined;

  /* Only the daemon takes over systemd's sockets; --check just reads the file (and with
   * LISTEN_FDS set it accepts a config without listen keys, as the daemon would). */
  inherited = pg_main_inherited_sockets (&error);
  if (inherited == NULL)
    {
      fprintf (stderr, "popgate: %s\n", error->message);
      return PG_EXIT_CONFIG;
    }
  /* ExecStartPre gets no LISTEN_FDS even when sockets will come with ExecStart. */
  overrides.inherited_listeners = inherited->len > 0 || (check && socket_activation);
  overrides.missing_token_files = oauth2_authorize != NULL;

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
  if (!pg_main_check_files (config, check, &error))
    {
      fprintf (stderr, "popgate: %s\n", error->message);
      return PG_EXIT_CONFIG;
    }
  pg_main_warn_deprecated (config);
  if (check)
    {
      printf ("%s: configuration OK\n", config->source);
      return 0;
    }
  if (oauth2_authorize != NULL)
    return pg_main_oauth2_authorize (config, oauth2_authorize);

  pg_session_message (0, "popgate %s starting with %s; upstream %s:%u (tls %s)", PG_VERSION,
                      config->source, config->upstream.host, config->upstream.port,
                      pg_upstream_tls_to_string (config->upstream.tls));

  /* glib-networking reads its GnuTLS priority string once, when the backend first loads;
   * so [tls] priority applies at start only (a reload cannot change it). */
  if (config->tls.priority != NULL)
    g_setenv ("G_TLS_GNUTLS_PRIORITY", config->tls.priority, TRUE);
  else
    g_setenv ("G_TLS_GNUTLS_PRIORITY", PG_TLS_DEFAULT_PRIORITY, FALSE);

  /* The state store is opened now so that an unusable [state] path stops popgate here.
   * METADATA support cannot be checked yet: servers announce it only after a login, and
   * popgate has no credentials of its own, so each login checks it (and is refused with
   * -ERR [SYS/PERM] and an error line naming the backend when it is missing). */
  if (!pg_pop3_prepare_state (config, &error))
    {
      fprintf (stderr, "popgate: %s\n", error->message);
      return PG_EXIT_CONFIG;
    }
  if (config->state.backend == PG_STATE_BACKEND_IMAP_METADATA)
    pg_session_message (0, "client state on the upstream (IMAP METADATA); each login checks "
                           "that the server supports it");

  {
    PgMainState state = { 0 };
    int rc = 0;

    state.loop = g_main_loop_new (NULL, FALSE);
    state.server = pg_server_new (config);
    state.metrics = pg_metrics_server_new ();
    state.status = pg_status_server_new ();
    state.config_path = config_path;
    state.overrides = &overrides;
    pg_main_register_frontends (state.server);
    /* Before the listeners open: a SIGHUP or SIGTERM sent as soon as a port accepts must
     * not meet the default action (which ends the process). They run once the loop does. */
    g_signal_connect (state.server, "idle", G_CALLBACK (pg_main_idle_cb), &state);
    state.signal_ids[0] = g_unix_signal_add (SIGTERM, pg_main_stop_cb, &state);
    state.signal_ids[1] = g_unix_signal_add (SIGINT, pg_main_stop_cb, &state);
    state.signal_ids[2] = g_unix_signal_add (SIGHUP, pg_main_reload_cb, &state);
    for (guint i = 0; i < inherited->len; i++)
      {
        PgMainInherited *item = g_ptr_array_index (inherited, i);

        if (!pg_server_adopt_socket (state.server, item->frontend, item->tls, item->socket, &error))
          break;
        pg_session_message (
            0,
            "socket activation: %s socket from systemd serves %s%s; the "
            "config's [%s] %s is not used",
            item->name, pg_frontend_to_string (item->frontend), item->tls ? " (implicit TLS)" : "",
            pg_frontend_to_string (item->frontend), item->tls ? "tls_listen" : "listen");
      }
    if (error != NULL || !pg_server_start (state.server, &error))
      {
        fprintf (stderr, "popgate: %s\n", error->message);
        rc = PG_EXIT_CONFIG;
      }
    else
      {
        pg_main_log_listeners (state.server);
        if (!pg_metrics_server_apply (state.metrics, config, &error)
            || !pg_status_server_apply (state.status, config, &error))
          {
            fprintf (stderr, "popgate: %s\n", error->message);
            rc = PG_EXIT_CONFIG;
          }
      }
    if (rc == 0)
      {
        pg_main_log_metrics (state.metrics);
        pg_main_log_status (state.status);
        pg_trace_set_enabled (pg_main_trace || config->log.trace);
        pg_session_message (0, "ready");
        pg_main_notify ("READY=1", "serving; configuration from %s", config->source);
        g_main_loop_run (state.loop);
      }

    for (gsize i = 0; i < G_N_ELEMENTS (state.signal_ids); i++)
      if (state.signal_ids[i] != 0)
        g_source_remove (state.signal_ids[i]);
    g_object_unref (state.status);
    g_object_unref (state.metrics);
    g_object_unref (state.server);
    g_main_loop_unref (state.loop);
    pg_status_shutdown ();
    pg_metrics_shutdown ();
    if (rc != 0)
      return rc;
    pg_session_message (0, "stopped");
  }
  return 0;
}
