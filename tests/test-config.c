/* Unit tests of the config module: values, defaults, every kind of error (each message
 * names file, group and key), relative paths, overrides, refcounting, and the shipped
 * example file so that it cannot rot.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "pg-test-util.h"

#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#define MINIMAL "[upstream]\nhost = imap.example.com\n[pop3]\nlisten = 127.0.0.1:1110\n"

/* --- helpers ----------------------------------------------------------------------------- */

typedef struct
{
  gchar *dir; /* owned: a fresh temp dir, removed in teardown */
} TempDirFixture;

static void
temp_dir_setup (TempDirFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  fixture->dir = g_dir_make_tmp ("popgate-config-XXXXXX", &error);
  g_assert_no_error (error);
}

static void
remove_tree (const char *path)
{
  if (g_file_test (path, G_FILE_TEST_IS_DIR) && !g_file_test (path, G_FILE_TEST_IS_SYMLINK))
    {
      g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
      const char *name = NULL;

      while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
        {
          g_autofree gchar *child = g_build_filename (path, name, NULL);
          remove_tree (child);
        }
      g_assert_cmpint (g_rmdir (path), ==, 0);
    }
  else
    g_assert_cmpint (g_unlink (path), ==, 0);
}

static void
temp_dir_teardown (TempDirFixture *fixture, gconstpointer data)
{
  remove_tree (fixture->dir);
  g_free (fixture->dir);
}

static gchar *
write_file (const char *dir, const char *name, const char *contents)
{
  g_autofree gchar *path = g_build_filename (dir, name, NULL);
  g_autofree gchar *parent = g_path_get_dirname (path);
  g_autoptr (GError) error = NULL;

  g_assert_cmpint (g_mkdir_with_parents (parent, 0700), ==, 0);
  g_file_set_contents (path, contents, -1, &error);
  g_assert_no_error (error);
  return g_steal_pointer (&path);
}

static PgConfig *
load_ok (const char *text)
{
  g_autoptr (GError) error = NULL;
  PgConfig *config = pg_config_load_data (text, strlen (text), "test.conf", &error);

  g_assert_no_error (error);
  g_assert_nonnull (config);
  return config;
}

/* The load fails with PG_ERROR_CONFIG and a message "test.conf: [group] key: ...fragment". */
static void
assert_load_error (const char *text, const char *group, const char *key, const char *fragment)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "test.conf", &error);
  g_autofree gchar *where = key != NULL ? g_strdup_printf ("test.conf: [%s] %s: ", group, key)
                                        : g_strdup_printf ("test.conf: [%s]: ", group);

  if (config != NULL)
    g_error ("config:\n%s\nloaded, but should fail with \"%s…%s\"", text, where, fragment);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  if (!g_str_has_prefix (error->message, where) || strstr (error->message, fragment) == NULL)
    g_error ("config:\n%s\nexpected \"%s…%s\", got: %s", text, where, fragment, error->message);
}

static gchar *
listen_to_string (GPtrArray *list)
{
  g_autoptr (GString) out = g_string_new (NULL);

  for (guint i = 0; i < list->len; i++)
    {
      g_autofree gchar *one = pg_listen_addr_to_string (g_ptr_array_index (list, i));
      g_string_append_printf (out, "%s%s", i > 0 ? "," : "", one);
    }
  return g_string_free (g_steal_pointer (&out), FALSE);
}

static void
assert_listen (GPtrArray *list, const char *expected)
{
  g_autofree gchar *got = listen_to_string (list);
  g_assert_cmpstr (got, ==, expected);
}

/* --- tests ------------------------------------------------------------------------------- */

static void
test_defaults (void)
{
  g_autoptr (PgConfig) config = load_ok (MINIMAL);

  g_assert_cmpstr (config->source, ==, "test.conf");
  g_assert_cmpstr (config->upstream.host, ==, "imap.example.com");
  g_assert_cmpint (config->upstream.port, ==, 993);
  g_assert_cmpint (config->upstream.tls, ==, PG_UPSTREAM_TLS_IMPLICIT);
  g_assert_null (config->upstream.ca_file);
  g_assert_cmpstr (config->upstream.mailbox, ==, "INBOX");
  g_assert_cmpuint (config->upstream.timeout_ms, ==, PG_DEFAULT_UPSTREAM_TIMEOUT_S * 1000);
  g_assert_cmpuint (config->upstream.connect_timeout_ms, ==,
                    PG_DEFAULT_UPSTREAM_CONNECT_TIMEOUT_S * 1000);

  assert_listen (config->pop3.listen, "127.0.0.1:1110");
  g_assert_cmpuint (config->pop3.tls_listen->len, ==, 0);
  g_assert_cmpint (config->pop3.delete_policy, ==, PG_DELETE_EXPUNGE);
  g_assert_null (config->pop3.move_mailbox);
  g_assert_true (config->pop3.mark_seen);
  g_assert_false (config->pop3.lock_session);
  g_assert_false (config->pop3.allow_plaintext_auth);
  g_assert_cmpuint (config->pop3.autologout_ms, ==, PG_DEFAULT_POP3_AUTOLOGOUT_S * 1000);
  g_assert_cmpuint (config->pop3.login_delay_s, ==, 0);
  g_assert_cmpstr (config->pop3.client_tag_separator, ==, "#");
  g_assert_cmpint (config->pop3.first_login, ==, PG_FIRST_LOGIN_ALL);
  g_assert_cmpint (config->pop3.uidl_ledger, ==, PG_UIDL_LEDGER_AUTO);
  g_assert_cmpuint (config->pop3.recent_days, ==, 0);

  g_assert_cmpuint (config->imap.listen->len, ==, 0);
  g_assert_cmpuint (config->imap.tls_listen->len, ==, 0);
  g_assert_false (config->imap.allow_plaintext_auth);
  g_assert_cmpuint (config->imap.idle_timeout_ms, ==, PG_DEFAULT_IMAP_IDLE_TIMEOUT_S * 1000);

  g_assert_null (config->tls.cert);
  g_assert_null (config->tls.key);
  g_assert_null (config->tls.priority);
  g_assert_cmpint (config->state.backend, ==, PG_STATE_BACKEND_FILE);
  g_assert_cmpstr (config->state.path, ==, "/var/lib/popgate");
  g_assert_cmpuint (config->metrics.listen->len, ==, 0);

  g_assert_cmpuint (config->limits.max_sessions, ==, PG_DEFAULT_MAX_SESSIONS);
  g_assert_cmpuint (config->limits.max_sessions_per_address, ==,
                    PG_DEFAULT_MAX_SESSIONS_PER_ADDRESS);
  g_assert_cmpuint (config->limits.preauth_timeout_ms, ==, PG_DEFAULT_PREAUTH_TIMEOUT_S * 1000);
  g_assert_cmpuint (config->limits.auth_failure_delay_ms, ==, PG_DEFAULT_AUTH_FAILURE_DELAY_MS);
  g_assert_cmpuint (config->limits.max_auth_failures, ==, PG_DEFAULT_MAX_AUTH_FAILURES);
  g_assert_cmpuint (config->limits.max_bad_commands, ==, PG_DEFAULT_MAX_BAD_COMMANDS);
  g_assert_cmpuint (config->limits.shutdown_timeout_ms, ==, PG_DEFAULT_SHUTDOWN_TIMEOUT_S * 1000);
  g_assert_false (config->log.trace);
}

static void
test_upstream_port_follows_tls (void)
{
  g_autoptr (PgConfig) starttls = load_ok (MINIMAL "[upstream]\ntls = starttls\n");
  g_autoptr (PgConfig) none = load_ok (MINIMAL "[upstream]\ntls = NONE\n");
  g_autoptr (PgConfig) explicit_port = load_ok (MINIMAL "[upstream]\ntls = none\nport = 10143\n");

  g_assert_cmpint (starttls->upstream.tls, ==, PG_UPSTREAM_TLS_STARTTLS);
  g_assert_cmpint (starttls->upstream.port, ==, 143);
  g_assert_cmpint (none->upstream.tls, ==, PG_UPSTREAM_TLS_NONE);
  g_assert_cmpint (none->upstream.port, ==, 143);
  g_assert_cmpint (explicit_port->upstream.port, ==, 10143);
}

static void
test_full (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *cert = write_file (fixture->dir, "cert.pem", "not checked here\n");
  g_autofree gchar *key = write_file (fixture->dir, "key.pem", "not checked here\n");
  g_autofree gchar *ca = write_file (fixture->dir, "ca.pem", "not checked here\n");
  g_autofree gchar *text = g_strdup_printf ("# a full config\n"
                                            "[upstream]\n"
                                            "host = mail.example.org   # the store\n"
                                            "port = 10993\n"
                                            "tls = implicit\n"
                                            "ca_file = %s\n"
                                            "mailbox = Lists/popgate\n"
                                            "timeout = 2m\n"
                                            "connect_timeout = 1500ms\n"
                                            "[pop3]\n"
                                            "listen = 127.0.0.1:1110 , [::1]:1110\n"
                                            "tls_listen = 127.0.0.1:1995\n"
                                            "delete = move:Deleted Items\n"
                                            "mark_seen = no\n"
                                            "allow_plaintext_auth = YES\n"
                                            "autologout = 15m\n"
                                            "login_delay = 5m\n"
                                            "client_tag_separator = +\n"
                                            "first_login = new\n"
                                            "recent_days = 30\n"
                                            "uidl_ledger = digest\n"
                                            "[imap]\n"
                                            "listen = 127.0.0.2:1143\n"
                                            "tls_listen = [::1]:1993\n"
                                            "allow_plaintext_auth = 1\n"
                                            "idle_timeout = 1h\n"
                                            "[tls]\n"
                                            "cert = %s\n"
                                            "key = %s\n"
                                            "priority = NORMAL:-VERS-TLS1.0\n"
                                            "[state]\n"
                                            "backend = imap-metadata\n"
                                            "path = /srv/popgate\n"
                                            "[metrics]\n"
                                            "listen = 127.0.0.1:9145\n"
                                            "[limits]\n"
                                            "max_sessions = 100\n"
                                            "max_sessions_per_address = 10\n"
                                            "preauth_timeout = 20\n"
                                            "auth_failure_delay = 0\n"
                                            "max_auth_failures = 5\n"
                                            "max_bad_commands = 7\n"
                                            "shutdown_timeout = 0s\n"
                                            "[log]\n"
                                            "trace = true\n",
                                            ca, cert, key);
  g_autoptr (PgConfig) config = load_ok (text);

  g_assert_cmpstr (config->upstream.host, ==, "mail.example.org");
  g_assert_cmpint (config->upstream.port, ==, 10993);
  g_assert_cmpstr (config->upstream.ca_file, ==, ca);
  g_assert_cmpstr (config->upstream.mailbox, ==, "Lists/popgate");
  g_assert_cmpuint (config->upstream.timeout_ms, ==, 120000);
  g_assert_cmpuint (config->upstream.connect_timeout_ms, ==, 1500);
  assert_listen (config->pop3.listen, "127.0.0.1:1110,[::1]:1110");
  assert_listen (config->pop3.tls_listen, "127.0.0.1:1995");
  g_assert_cmpint (config->pop3.delete_policy, ==, PG_DELETE_MOVE);
  g_assert_cmpstr (config->pop3.move_mailbox, ==, "Deleted Items");
  g_assert_false (config->pop3.mark_seen);
  g_assert_true (config->pop3.allow_plaintext_auth);
  g_assert_cmpuint (config->pop3.autologout_ms, ==, 15 * 60000);
  g_assert_cmpuint (config->pop3.login_delay_s, ==, 300);
  g_assert_cmpstr (config->pop3.client_tag_separator, ==, "+");
  g_assert_cmpint (config->pop3.first_login, ==, PG_FIRST_LOGIN_NEW);
  g_assert_cmpuint (config->pop3.recent_days, ==, 30);
  g_assert_cmpint (config->pop3.uidl_ledger, ==, PG_UIDL_LEDGER_DIGEST);
  g_assert_cmpstr (pg_uidl_ledger_to_string (config->pop3.uidl_ledger), ==, "digest");
  assert_listen (config->imap.listen, "127.0.0.2:1143");
  assert_listen (config->imap.tls_listen, "[::1]:1993");
  g_assert_true (config->imap.allow_plaintext_auth);
  g_assert_cmpuint (config->imap.idle_timeout_ms, ==, 3600000);
  g_assert_cmpstr (config->tls.cert, ==, cert);
  g_assert_cmpstr (config->tls.key, ==, key);
  g_assert_cmpstr (config->tls.priority, ==, "NORMAL:-VERS-TLS1.0");
  g_assert_cmpint (config->state.backend, ==, PG_STATE_BACKEND_IMAP_METADATA);
  g_assert_cmpstr (config->state.path, ==, "/srv/popgate");
  assert_listen (config->metrics.listen, "127.0.0.1:9145");
  g_assert_cmpuint (config->limits.max_sessions, ==, 100);
  g_assert_cmpuint (config->limits.max_sessions_per_address, ==, 10);
  g_assert_cmpuint (config->limits.preauth_timeout_ms, ==, 20000);
  g_assert_cmpuint (config->limits.auth_failure_delay_ms, ==, 0);
  g_assert_cmpuint (config->limits.max_auth_failures, ==, 5);
  g_assert_cmpuint (config->limits.max_bad_commands, ==, 7);
  g_assert_cmpuint (config->limits.shutdown_timeout_ms, ==, 0);
  g_assert_true (config->log.trace);

  g_assert_cmpstr (pg_delete_policy_to_string (config->pop3.delete_policy), ==, "move");
  g_assert_cmpstr (pg_upstream_tls_to_string (config->upstream.tls), ==, "implicit");
  g_assert_cmpstr (pg_state_backend_to_string (config->state.backend), ==, "imap-metadata");
  g_assert_cmpstr (pg_first_login_to_string (config->pop3.first_login), ==, "new");
}

static void
test_comments_and_escapes (void)
{
  g_autoptr (PgConfig) config
      = load_ok (MINIMAL "client_tag_separator = #   # the default, written out\n"
                         "delete = move:Old \\#1 \\\\ x  # a comment\n"
                         "[upstream]\nmailbox = A#B\n");

  g_assert_cmpstr (config->pop3.client_tag_separator, ==, "#");
  g_assert_cmpstr (config->pop3.move_mailbox, ==, "Old #1 \\ x");
  g_assert_cmpstr (config->upstream.mailbox, ==, "A#B");

  {
    g_autoptr (PgConfig) empty_tag = load_ok (MINIMAL "client_tag_separator =\n");
    g_assert_cmpstr (empty_tag->pop3.client_tag_separator, ==, "");
  }
}

static void
test_booleans (void)
{
  static const struct
  {
    const char *text;
    gboolean value;
  } cases[] = { { "true", TRUE }, { "false", FALSE }, { "yes", TRUE },  { "no", FALSE },
                { "1", TRUE },    { "0", FALSE },     { "True", TRUE }, { "NO", FALSE } };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *text = g_strdup_printf (MINIMAL "[log]\ntrace = %s\n", cases[i].text);
      g_autoptr (PgConfig) config = load_ok (text);
      g_assert_cmpint (config->log.trace, ==, cases[i].value);
    }
}

static void
test_durations (void)
{
  static const struct
  {
    const char *text;
    gboolean ok;
    guint ms;
  } cases[] = {
    { "90", TRUE, 90000 },
    { "90s", TRUE, 90000 },
    { "500ms", TRUE, 500 },
    { "10m", TRUE, 600000 },
    { "2h", TRUE, 7200000 },
    { "0", TRUE, 0 },
    { "0ms", TRUE, 0 },
    { "1193h", TRUE, 1193u * 3600000u },
    { "1194h", FALSE, 0 },
    { "4294967295ms", TRUE, 4294967295u },
    { "4294967296ms", FALSE, 0 },
    { "99999999999999999999", FALSE, 0 },
    { "", FALSE, 0 },
    { "s", FALSE, 0 },
    { "10 m", FALSE, 0 },
    { "-1", FALSE, 0 },
    { "+5", FALSE, 0 },
    { "1.5s", FALSE, 0 },
    { "5d", FALSE, 0 },
    { "5S", FALSE, 0 },
    { "10mm", FALSE, 0 },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      guint ms = 12345;
      gboolean ok = pg_config_parse_duration (cases[i].text, &ms, &error);

      if (ok != cases[i].ok)
        g_error ("duration \"%s\": expected %s", cases[i].text, cases[i].ok ? "ok" : "error");
      if (ok)
        {
          g_assert_no_error (error);
          g_assert_cmpuint (ms, ==, cases[i].ms);
        }
      else
        {
          g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
          g_assert_cmpuint (ms, ==, 12345); /* out_* written only on success */
        }
    }
}

static void
test_listen_parse (void)
{
  static const struct
  {
    const char *text;
    const char *expected; /* NULL: an error whose message contains `fragment` */
    const char *fragment;
  } cases[] = {
    { "127.0.0.1:110", "127.0.0.1:110", NULL },
    { "[::1]:110", "[::1]:110", NULL },
    { " 127.0.0.1:110 ,[::1]:995,  10.0.0.1:1 ", "127.0.0.1:110,[::1]:995,10.0.0.1:1", NULL },
    { "[0:0:0:0:0:0:0:1]:110", "[::1]:110", NULL },
    { "0.0.0.0:110", "0.0.0.0:110", NULL },
    { "[::]:110", "[::]:110", NULL },
    { "*:110", "*:110", NULL },
    { "127.0.0.1:65535", "127.0.0.1:65535", NULL },
    { "localhost:110", NULL, "host names are not allowed" },
    { "mail.example.com:110", NULL, "host names are not allowed" },
    { "127.0.0.1", NULL, "missing :PORT" },
    { "127.0.0.1:", NULL, "missing port" },
    { "127.0.0.1:0", NULL, "1 to 65535" },
    { "127.0.0.1:65536", NULL, "1 to 65535" },
    { "127.0.0.1:99999999999999", NULL, "1 to 65535" },
    { "127.0.0.1:x1", NULL, "not a number" },
    { "127.0.0.1:-1", NULL, "not a number" },
    { "::1:110", NULL, "needs brackets" },
    { "[::1]110", NULL, "[ADDR]:PORT" },
    { "[::1:110", NULL, "[ADDR]:PORT" },
    { "[127.0.0.1]:110", NULL, "not an IPv6 address" },
    { "[zz::1]:110", NULL, "not an IPv6 address" },
    { "127.1:110", NULL, "not a literal IPv4 address" },
    { "127.0.0.1:110,", NULL, "empty entry" },
    { "127.0.0.1:110,,[::1]:110", NULL, "empty entry" },
    { "", NULL, "empty entry" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GPtrArray) list = pg_config_parse_listen (cases[i].text, &error);

      if (cases[i].expected != NULL)
        {
          g_assert_no_error (error);
          g_assert_nonnull (list);
          assert_listen (list, cases[i].expected);
        }
      else
        {
          g_assert_null (list);
          g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
          if (strstr (error->message, cases[i].fragment) == NULL)
            g_error ("listen \"%s\": expected \"%s\" in: %s", cases[i].text, cases[i].fragment,
                     error->message);
        }
    }

  {
    g_autoptr (GPtrArray) list = pg_config_parse_listen ("*:110, [::1]:111", NULL);
    const PgListenAddr *any = g_ptr_array_index (list, 0);
    const PgListenAddr *v6 = g_ptr_array_index (list, 1);

    g_assert_true (any->any);
    g_assert_cmpstr (any->host, ==, "::");
    g_assert_cmpuint (any->port, ==, 110);
    g_assert_false (v6->any);
    g_assert_cmpstr (v6->host, ==, "::1");
    g_assert_cmpuint (v6->port, ==, 111);
  }
}

static void
test_errors (void)
{
  static const struct
  {
    const char *text;
    const char *group;
    const char *key; /* NULL: the error is about the group */
    const char *fragment;
  } cases[] = {
    /* structure */
    { MINIMAL "[pop4]\nlisten = 127.0.0.1:1\n", "pop4", NULL, "unknown group" },
    { MINIMAL "colour = blue\n", "pop3", "colour", "unknown key" },
    { MINIMAL "idle_timeout = 40m\n", "pop3", "idle_timeout", "did you mean [imap] idle_timeout" },
    { MINIMAL "listen[de] = 127.0.0.1:2\n", "pop3", "listen[de]", "unknown key" },
    { MINIMAL "listen = 127.0.0.1:2\n", "pop3", "listen", "set twice (again on line 5)" },
    { MINIMAL "[imap]\nlisten = 127.0.0.1:2\n[pop3]\nmark_seen = no\n[upstream]\nhost = y\n",
      "upstream", "host", "set twice" },
    /* enums */
    { MINIMAL "[upstream]\ntls = ssl\n", "upstream", "tls",
      "\"ssl\" is not one of none, starttls, implicit" },
    { MINIMAL "delete = purge\n", "pop3", "delete",
      "\"purge\" is not one of expunge, move:MAILBOX, keep" },
    { MINIMAL "delete = move\n", "pop3", "delete", "move needs a mailbox name" },
    { MINIMAL "delete = move:\n", "pop3", "delete", "move needs a mailbox name" },
    { MINIMAL "delete = moved:Trash\n", "pop3", "delete", "is not one of" },
    { MINIMAL "first_login = some\n", "pop3", "first_login", "is not one of all, new" },
    { MINIMAL "uidl_ledger = emailid\n", "pop3", "uidl_ledger", "is not one of auto, digest, off" },
    { MINIMAL "[state]\nbackend = sql\n", "state", "backend", "is not one of file, imap-metadata" },
    /* booleans */
    { MINIMAL "mark_seen = maybe\n", "pop3", "mark_seen", "\"maybe\" is not a boolean" },
    { MINIMAL "[log]\ntrace = on\n", "log", "trace", "is not a boolean" },
    { MINIMAL "[imap]\nlisten = 127.0.0.1:2\nallow_plaintext_auth = 2\n", "imap",
      "allow_plaintext_auth", "is not a boolean" },
    /* numbers */
    { MINIMAL "[upstream]\nport = 99999\n", "upstream", "port", "out of range (1 to 65535)" },
    { MINIMAL "[upstream]\nport = 0\n", "upstream", "port", "out of range" },
    { MINIMAL "[upstream]\nport = imaps\n", "upstream", "port", "\"imaps\" is not a whole number" },
    { MINIMAL "[limits]\nmax_sessions = 0\n", "limits", "max_sessions", "out of range" },
    { MINIMAL "[limits]\nmax_sessions = -5\n", "limits", "max_sessions", "not a whole number" },
    { MINIMAL "[limits]\nmax_auth_failures = 3.5\n", "limits", "max_auth_failures",
      "not a whole number" },
    { MINIMAL "[limits]\nmax_bad_commands = 99999999999999999999999\n", "limits",
      "max_bad_commands", "out of range" },
    { MINIMAL "recent_days = lots\n", "pop3", "recent_days", "not a whole number" },
    /* durations */
    { MINIMAL "[upstream]\ntimeout = 5 minutes\n", "upstream", "timeout", "is not a duration" },
    { MINIMAL "[upstream]\ntimeout = 0\n", "upstream", "timeout", "too short" },
    { MINIMAL "[limits]\npreauth_timeout = 1d\n", "limits", "preauth_timeout",
      "is not a duration" },
    { MINIMAL "autologout = 9m\n", "pop3", "autologout", "too short: the minimum is 10m" },
    { MINIMAL "autologout = 599s\n", "pop3", "autologout", "minimum is 10m" },
    { MINIMAL "[imap]\nlisten = 127.0.0.1:2\nidle_timeout = 29m\n", "imap", "idle_timeout",
      "minimum is 30m" },
    { MINIMAL "login_delay = 1500ms\n", "pop3", "login_delay", "whole seconds" },
    /* listen lists */
    { "[upstream]\nhost = x\n[pop3]\nlisten = localhost:1110\n", "pop3", "listen",
      "host names are not allowed" },
    { "[upstream]\nhost = x\n[pop3]\nlisten = 127.0.0.1:0\n", "pop3", "listen", "1 to 65535" },
    { "[upstream]\nhost = x\n[pop3]\nlisten = 127.0.0.1:65536\n", "pop3", "listen", "1 to 65535" },
    { "[upstream]\nhost = x\n[pop3]\nlisten = ::1:1110\n", "pop3", "listen", "needs brackets" },
    { "[upstream]\nhost = x\n[pop3]\nlisten = 127.0.0.1\n", "pop3", "listen", "missing :PORT" },
    { MINIMAL "[metrics]\nlisten = 127.0.0.1:9145,\n", "metrics", "listen", "empty entry" },
    /* duplicates and overlaps across all listeners */
    { "[upstream]\nhost = x\n[pop3]\nlisten = 127.0.0.1:1110, 127.0.0.1:1110\n", "pop3", "listen",
      "127.0.0.1:1110 overlaps 127.0.0.1:1110 in [pop3] listen" },
    { MINIMAL "[imap]\nlisten = 127.0.0.1:1110\n", "imap", "listen",
      "overlaps 127.0.0.1:1110 in [pop3] listen" },
    { MINIMAL "[metrics]\nlisten = 127.0.0.1:1110\n", "metrics", "listen", "overlaps" },
    { MINIMAL "[imap]\nlisten = *:1110\n", "imap", "listen", "*:1110 overlaps" },
    { MINIMAL "[imap]\nlisten = 0.0.0.0:1110\n", "imap", "listen", "overlaps" },
    { MINIMAL "[imap]\nlisten = [::]:1110\n", "imap", "listen", "overlaps" },
    { "[upstream]\nhost = x\n[pop3]\nlisten = [::1]:1110, [0::1]:1110\n", "pop3", "listen",
      "overlaps" },
    /* missing required keys */
    { "[pop3]\nlisten = 127.0.0.1:1110\n", "upstream", "host", "missing" },
    { "[upstream]\nhost =\n[pop3]\nlisten = 127.0.0.1:1110\n", "upstream", "host", "missing" },
    { "[upstream]\nhost = x\n", "pop3", "listen", "no listener" },
    { "[upstream]\nhost = x\n[pop3]\nlisten =\n[metrics]\nlisten = 127.0.0.1:9145\n", "pop3",
      "listen", "no listener" },
    { MINIMAL "tls_listen = 127.0.0.1:1995\n", "tls", "cert", "missing" },
    { "[upstream]\nhost = x\n[imap]\ntls_listen = 127.0.0.1:1993\n", "tls", "cert", "missing" },
    { MINIMAL "[tls]\ncert = /etc/popgate-does-not-exist/cert.pem\n", "tls", "cert",
      "No such file" },
    { MINIMAL "[tls]\nkey = /\n", "tls", "key", "not a regular file" },
    { MINIMAL "[upstream]\nca_file = /nonexistent-ca.pem\n", "upstream", "ca_file",
      "/nonexistent-ca.pem" },
    /* other values */
    { "[pop3]\nlisten = 127.0.0.1:1110\n[upstream]\nhost = imap.example.com:993\n", "upstream",
      "host", "put the port in [upstream] port" },
    { "[pop3]\nlisten = 127.0.0.1:1110\n[upstream]\nhost = imap example\n", "upstream", "host",
      "not a host name" },
    { MINIMAL "[upstream]\nmailbox =\n", "upstream", "mailbox", "empty" },
    { MINIMAL "client_tag_separator = ###########\n", "pop3", "client_tag_separator",
      "short marker" },
    { MINIMAL "delete = move:a\\qb\n", "pop3", "delete", "unknown escape" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    assert_load_error (cases[i].text, cases[i].group, cases[i].key, cases[i].fragment);
}

static void
test_tls_pair_and_priority (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *cert = write_file (fixture->dir, "cert.pem", "x\n");
  g_autofree gchar *key = write_file (fixture->dir, "key.pem", "x\n");
  g_autofree gchar *only_cert = g_strdup_printf (MINIMAL "[tls]\ncert = %s\n", cert);
  g_autofree gchar *only_key = g_strdup_printf (MINIMAL "[tls]\nkey = %s\n", key);
  g_autofree gchar *bad_priority = g_strdup_printf (
      MINIMAL "[tls]\ncert = %s\nkey = %s\npriority = NORMAL:+NONSENSE\n", cert, key);
  g_autofree gchar *stls_only = g_strdup_printf (MINIMAL "[tls]\ncert = %s\nkey = %s\n", cert, key);
  g_autoptr (PgConfig) config = NULL;

  assert_load_error (only_cert, "tls", "key", "missing");
  assert_load_error (only_key, "tls", "cert", "missing");
  assert_load_error (bad_priority, "tls", "priority", "not a GnuTLS priority string");
  /* cert and key without a tls_listen are fine: STLS/STARTTLS use them. */
  config = load_ok (stls_only);
  g_assert_cmpstr (config->tls.cert, ==, cert);
}

static void
test_syntax_error (void)
{
  const char *text = "[upstream]\nhost = x\nthis line is not a key\n";
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "test.conf", &error);

  g_assert_null (config);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  g_assert_true (g_str_has_prefix (error->message, "test.conf: syntax error: "));
}

static void
test_missing_file (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path = g_build_filename (fixture->dir, "nope.conf", NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = pg_config_load_file (path, &error);

  g_assert_null (config);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  g_assert_nonnull (strstr (error->message, path));
}

static void
test_file_errors_name_the_file (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path = write_file (fixture->dir, "popgate.conf", MINIMAL "delete = purge\n");
  g_autofree gchar *expected = g_strdup_printf (
      "%s: [pop3] delete: \"purge\" is not one of expunge, move:MAILBOX, keep", path);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = pg_config_load_file (path, &error);

  g_assert_null (config);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  g_assert_cmpstr (error->message, ==, expected);
}

static void
test_relative_paths (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *cert = write_file (fixture->dir, "tls/cert.pem", "x\n");
  g_autofree gchar *key = write_file (fixture->dir, "tls/key.pem", "x\n");
  g_autofree gchar *ca = write_file (fixture->dir, "ca.pem", "x\n");
  g_autofree gchar *conf = write_file (fixture->dir, "etc/popgate.conf",
                                       "[upstream]\nhost = x\nca_file = ../ca.pem\n"
                                       "[pop3]\ntls_listen = 127.0.0.1:1995\n"
                                       "[tls]\ncert = ../tls/cert.pem\nkey = ../tls/./key.pem\n"
                                       "[state]\npath = state\n");
  g_autofree gchar *state = g_build_filename (fixture->dir, "etc", "state", NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autofree gchar *cwd = g_get_current_dir ();

  /* Load from a different working directory: paths follow the file, not the cwd. */
  g_assert_cmpint (g_chdir ("/"), ==, 0);
  config = pg_config_load_file (conf, &error);
  g_assert_cmpint (g_chdir (cwd), ==, 0);
  g_assert_no_error (error);
  g_assert_nonnull (config);
  g_assert_cmpstr (config->tls.cert, ==, cert);
  g_assert_cmpstr (config->tls.key, ==, key);
  g_assert_cmpstr (config->upstream.ca_file, ==, ca);
  g_assert_cmpstr (config->state.path, ==, state);
  g_assert_cmpstr (config->source, ==, conf);
}

static void
test_overrides (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *conf = write_file (fixture->dir, "popgate.conf",
                                       "[upstream]\nhost = file.example\nport = 1\n"
                                       "[pop3]\nlisten = 127.0.0.1:1110\n");

  {
    /* No file: flags alone make a config from the defaults. */
    PgConfigOverrides overrides
        = { .upstream = "imap.example.net:1993", .pop3_listen = "[::1]:2110" };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (NULL, &overrides, &error);

    g_assert_no_error (error);
    g_assert_cmpstr (config->source, ==, "(command line)");
    g_assert_cmpstr (config->upstream.host, ==, "imap.example.net");
    g_assert_cmpint (config->upstream.port, ==, 1993);
    g_assert_cmpint (config->upstream.tls, ==, PG_UPSTREAM_TLS_IMPLICIT);
    assert_listen (config->pop3.listen, "[::1]:2110");
  }
  {
    PgConfigOverrides overrides = { .upstream = "imap://[::1]", .imap_listen = "127.0.0.1:2143" };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (NULL, &overrides, &error);

    g_assert_no_error (error);
    g_assert_cmpstr (config->upstream.host, ==, "::1");
    g_assert_cmpint (config->upstream.tls, ==, PG_UPSTREAM_TLS_STARTTLS);
    g_assert_cmpint (config->upstream.port, ==, 143);
    assert_listen (config->imap.listen, "127.0.0.1:2143");
  }
  {
    PgConfigOverrides overrides
        = { .upstream = "imaps://mail.example.com/", .pop3_listen = "127.0.0.1:1" };
    g_autoptr (PgConfig) config = pg_config_load (NULL, &overrides, NULL);
    g_assert_cmpstr (config->upstream.host, ==, "mail.example.com");
    g_assert_cmpint (config->upstream.port, ==, 993);
  }
  {
    /* Flags override the file; the rest of the file still applies. */
    PgConfigOverrides overrides = { .upstream = "flag.example", .pop3_listen = "127.0.0.1:3110" };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (conf, &overrides, &error);

    g_assert_no_error (error);
    g_assert_cmpstr (config->source, ==, conf);
    g_assert_cmpstr (config->upstream.host, ==, "flag.example");
    g_assert_cmpint (config->upstream.port, ==, 1);
    assert_listen (config->pop3.listen, "127.0.0.1:3110");
  }
  {
    /* An error in a flag's value names the flag, not the file. */
    PgConfigOverrides overrides = { .pop3_listen = "localhost:110" };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (conf, &overrides, &error);

    g_assert_null (config);
    g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
    g_assert_true (
        g_str_has_prefix (error->message, "(command line) --pop3-listen: [pop3] listen: "));
  }
  {
    PgConfigOverrides overrides = { .upstream = "host:port", .pop3_listen = "127.0.0.1:1" };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (NULL, &overrides, &error);

    g_assert_null (config);
    g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
    g_assert_true (
        g_str_has_prefix (error->message, "(command line) --upstream: [upstream] host: "));
    g_test_message ("%s", error->message);
  }
  {
    PgConfigOverrides overrides = { .upstream = "[::1", .pop3_listen = "127.0.0.1:1" };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (conf, &overrides, &error);

    g_assert_null (config);
    g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
    g_assert_true (
        g_str_has_prefix (error->message, "(command line) --upstream: [upstream] host: "));
  }
  {
    /* No file and no flags: nothing to run, and the message says what is missing. */
    g_autoptr (GError) error = NULL;
    g_autoptr (PgConfig) config = pg_config_load (NULL, NULL, &error);

    g_assert_null (config);
    g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
    g_assert_true (g_str_has_prefix (error->message, "(command line): [upstream] host: missing"));
  }
}

static void
test_refcount (void)
{
  PgConfig *config = load_ok (MINIMAL);
  PgConfig *again = pg_config_ref (config);

  g_assert_true (again == config);
  g_assert_cmpint (config->ref_count, ==, 2);
  pg_config_unref (config);
  g_assert_cmpint (again->ref_count, ==, 1);
  /* Still usable through the remaining reference. */
  g_assert_cmpstr (again->upstream.host, ==, "imap.example.com");
  pg_config_unref (again);
  pg_config_unref (NULL);
}

static gchar *
example_path (void)
{
  return g_test_build_filename (G_TEST_DIST, "..", "data", "popgate.conf.example", NULL);
}

static void
test_example_as_is (void)
{
  g_autofree gchar *path = example_path ();
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = pg_config_load_file (path, &error);

  g_assert_no_error (error);
  g_assert_nonnull (config);
  g_assert_cmpstr (config->upstream.host, ==, "imap.example.com");
  assert_listen (config->pop3.listen, "127.0.0.1:1110");
  assert_listen (config->imap.listen, "127.0.0.1:1143");
}

/* Uncomment every "#key = value" line of the example (the file's convention for a default
 * or an example value), point the file keys at files we create, and load it: every
 * documented key must exist, every shown value must parse, and the defaults the example
 * states must be the real defaults. */
static void
test_example_every_key (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path = example_path ();
  g_autofree gchar *contents = NULL;
  g_autofree gchar *cert = write_file (fixture->dir, "cert.pem", "x\n");
  g_autofree gchar *key = write_file (fixture->dir, "key.pem", "x\n");
  g_autofree gchar *ca = write_file (fixture->dir, "ca.pem", "x\n");
  g_autoptr (GRegex) setting = NULL;
  g_autoptr (GString) text = g_string_new (NULL);
  g_autoptr (GError) error = NULL;
  g_auto (GStrv) lines = NULL;
  g_autoptr (PgConfig) all = NULL;
  g_autoptr (PgConfig) defaults = NULL;
  guint uncommented = 0;

  g_file_get_contents (path, &contents, NULL, &error);
  g_assert_no_error (error);
  setting = g_regex_new ("^#([a-z0-9_]+) = (.*)$", 0, 0, &error);
  g_assert_no_error (error);

  lines = g_strsplit (contents, "\n", -1);
  for (gsize i = 0; lines[i] != NULL; i++)
    {
      g_autoptr (GMatchInfo) match = NULL;

      if (g_regex_match (setting, lines[i], 0, &match))
        {
          g_autofree gchar *name = g_match_info_fetch (match, 1);

          uncommented++;
          if (g_str_equal (name, "cert"))
            g_string_append_printf (text, "cert = %s\n", cert);
          else if (g_str_equal (name, "key"))
            g_string_append_printf (text, "key = %s\n", key);
          else if (g_str_equal (name, "ca_file"))
            g_string_append_printf (text, "ca_file = %s\n", ca);
          else if (g_str_equal (name, "oauth2_ca_file"))
            g_string_append_printf (text, "oauth2_ca_file = %s\n", ca);
          else if (g_str_equal (name, "oauth2_client_secret_file"))
            {
              g_autofree gchar *secret = write_file (fixture->dir, "client.secret", "s\n");
              g_assert_cmpint (g_chmod (secret, 0600), ==, 0);
              g_string_append_printf (text, "oauth2_client_secret_file = %s\n", secret);
            }
          else if (g_str_equal (name, "file"))
            {
              /* The accounts file and its password file must exist and be 0600. */
              g_autofree gchar *pw = write_file (fixture->dir, "up-pw", "secret\n");
              g_autofree gchar *accounts
                  = write_file (fixture->dir, "accounts", "u {PLAIN}l default up password:up-pw\n");
              g_assert_cmpint (g_chmod (pw, 0600), ==, 0);
              g_assert_cmpint (g_chmod (accounts, 0600), ==, 0);
              g_string_append_printf (text, "file = %s\n", accounts);
            }
          else if (g_str_equal (name, "account_map"))
            {
              /* Its deprecated alias cannot be set with it (test_imap_account_map and
               * test_accounts cover both). */
            }
          else if (g_str_equal (name, "auth_file"))
            {
              g_autofree gchar *users
                  = write_file (fixture->dir, "status-users", "admin:{PLAIN}secret\n");
              g_assert_cmpint (g_chmod (users, 0600), ==, 0);
              g_string_append_printf (text, "auth_file = %s\n", users);
            }
          else
            g_string_append_printf (text, "%s\n", lines[i] + 1);
        }
      else
        g_string_append_printf (text, "%s\n", lines[i]);
    }
  /* 58 keys in all, 3 of them set in the example as-is. */
  g_assert_cmpuint (uncommented, ==, 55);

  all = pg_config_load_data (text->str, text->len, "example-uncommented", &error);
  g_assert_no_error (error);
  g_assert_nonnull (all);
  defaults = load_ok (MINIMAL);

  g_assert_cmpint (all->upstream.port, ==, defaults->upstream.port);
  g_assert_cmpstr (all->upstream.provider, ==, defaults->upstream.provider);
  g_assert_cmpint (all->upstream.auth, ==, defaults->upstream.auth);
  g_assert_cmpint (all->upstream.auth_mechanism, ==, defaults->upstream.auth_mechanism);
  g_assert_cmpint (all->upstream.compress, ==, defaults->upstream.compress);
  g_assert_false (defaults->upstream.compress);
  g_assert_cmpint (all->upstream.oauth2.grant, ==, defaults->upstream.oauth2.grant);
  g_assert_cmpint (all->upstream.oauth2.mechanism, ==, defaults->upstream.oauth2.mechanism);
  g_assert_nonnull (pg_config_find_account (all, "u"));
  g_assert_cmpint (all->upstream.tls, ==, defaults->upstream.tls);
  g_assert_cmpstr (all->upstream.mailbox, ==, defaults->upstream.mailbox);
  g_assert_cmpuint (all->upstream.timeout_ms, ==, defaults->upstream.timeout_ms);
  g_assert_cmpuint (all->upstream.connect_timeout_ms, ==, defaults->upstream.connect_timeout_ms);
  g_assert_cmpint (all->pop3.delete_policy, ==, defaults->pop3.delete_policy);
  g_assert_cmpint (all->pop3.mark_seen, ==, defaults->pop3.mark_seen);
  g_assert_cmpint (all->pop3.allow_plaintext_auth, ==, defaults->pop3.allow_plaintext_auth);
  g_assert_cmpuint (all->pop3.autologout_ms, ==, defaults->pop3.autologout_ms);
  g_assert_cmpuint (all->pop3.login_delay_s, ==, defaults->pop3.login_delay_s);
  g_assert_cmpstr (all->pop3.client_tag_separator, ==, defaults->pop3.client_tag_separator);
  g_assert_cmpint (all->pop3.first_login, ==, defaults->pop3.first_login);
  g_assert_cmpuint (all->pop3.recent_days, ==, defaults->pop3.recent_days);
  g_assert_cmpint (all->imap.allow_plaintext_auth, ==, defaults->imap.allow_plaintext_auth);
  g_assert_cmpuint (all->imap.idle_timeout_ms, ==, defaults->imap.idle_timeout_ms);
  g_assert_cmpint (all->state.backend, ==, defaults->state.backend);
  g_assert_cmpstr (all->state.path, ==, defaults->state.path);
  g_assert_cmpuint (all->limits.max_sessions, ==, defaults->limits.max_sessions);
  g_assert_cmpuint (all->limits.max_sessions_per_address, ==,
                    defaults->limits.max_sessions_per_address);
  g_assert_cmpuint (all->limits.preauth_timeout_ms, ==, defaults->limits.preauth_timeout_ms);
  g_assert_cmpuint (all->limits.auth_failure_delay_ms, ==, defaults->limits.auth_failure_delay_ms);
  g_assert_cmpuint (all->limits.max_auth_failures, ==, defaults->limits.max_auth_failures);
  g_assert_cmpuint (all->limits.max_bad_commands, ==, defaults->limits.max_bad_commands);
  g_assert_cmpuint (all->limits.shutdown_timeout_ms, ==, defaults->limits.shutdown_timeout_ms);
  g_assert_cmpint (all->log.trace, ==, defaults->log.trace);
  g_assert_cmpint (all->pop3.proxy_protocol, ==, defaults->pop3.proxy_protocol);
  g_assert_cmpint (all->imap.proxy_protocol, ==, defaults->imap.proxy_protocol);
  g_assert_cmpuint (all->proxy.trusted->len, ==, defaults->proxy.trusted->len);
  for (guint i = 0; i < all->proxy.trusted->len; i++)
    g_assert_true (g_inet_address_mask_equal (g_ptr_array_index (all->proxy.trusted, i),
                                              g_ptr_array_index (defaults->proxy.trusted, i)));
  /* Keys without a default show an example, and it loaded. */
  g_assert_cmpuint (all->pop3.tls_listen->len, ==, 1);
  g_assert_cmpuint (all->imap.tls_listen->len, ==, 1);
  g_assert_cmpuint (all->metrics.listen->len, ==, 1);
  g_assert_nonnull (all->tls.priority);
}

static gboolean
networks_contain (GPtrArray *networks, const char *ip)
{
  g_autoptr (GInetAddress) address = g_inet_address_new_from_string (ip);

  g_assert_nonnull (address);
  return pg_config_networks_contain (networks, address);
}

/* proxy_protocol per front end and [proxy] trusted: defaults, parsing, matching, errors. */
static void
test_proxy (void)
{
  g_autoptr (PgConfig) defaults = load_ok (MINIMAL);
  g_autoptr (PgConfig) set = NULL;
  g_autoptr (PgConfig) nobody = NULL;
  g_autoptr (GError) error = NULL;
  const struct
  {
    const char *value;
    const char *message;
  } bad[] = {
    { "10.0.0.1/8", "not a network" }, /* bits past the prefix */
    { "10.0.0.0/33", "not a network" }, { "example.com", "not a network" },
    { "10.0.0.0/8,", "empty entry" },   { "10.0.0.0/8, , ::1", "empty entry" },
    { "::1/129", "not a network" },
  };

  g_assert_false (defaults->pop3.proxy_protocol);
  g_assert_false (defaults->imap.proxy_protocol);
  g_assert_true (networks_contain (defaults->proxy.trusted, "127.0.0.1"));
  g_assert_true (networks_contain (defaults->proxy.trusted, "127.9.8.7"));
  g_assert_true (networks_contain (defaults->proxy.trusted, "::1"));
  g_assert_true (networks_contain (defaults->proxy.trusted, "::ffff:127.0.0.1"));
  g_assert_false (networks_contain (defaults->proxy.trusted, "10.0.0.1"));
  g_assert_false (networks_contain (defaults->proxy.trusted, "::2"));

  set = load_ok ("[upstream]\nhost = imap.example.com\n"
                 "[pop3]\nlisten = 127.0.0.1:1110\nproxy_protocol = true\n"
                 "[imap]\nproxy_protocol = yes\n"
                 "[proxy]\ntrusted = 10.1.0.0/16, 192.0.2.7, fd00::/8\n");
  g_assert_true (set->pop3.proxy_protocol);
  g_assert_true (set->imap.proxy_protocol);
  g_assert_cmpuint (set->proxy.trusted->len, ==, 3);
  g_assert_true (networks_contain (set->proxy.trusted, "10.1.255.1"));
  g_assert_true (networks_contain (set->proxy.trusted, "::ffff:10.1.0.9"));
  g_assert_false (networks_contain (set->proxy.trusted, "10.2.0.1"));
  g_assert_true (networks_contain (set->proxy.trusted, "192.0.2.7"));
  g_assert_false (networks_contain (set->proxy.trusted, "192.0.2.8"));
  g_assert_true (networks_contain (set->proxy.trusted, "fd12::1"));
  g_assert_false (networks_contain (set->proxy.trusted, "127.0.0.1"));

  nobody = load_ok (MINIMAL "[proxy]\ntrusted =\n");
  g_assert_cmpuint (nobody->proxy.trusted->len, ==, 0);
  g_assert_false (networks_contain (nobody->proxy.trusted, "127.0.0.1"));

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autofree gchar *text = g_strdup_printf (MINIMAL "[proxy]\ntrusted = %s\n", bad[i].value);
      g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "proxy.conf", &error);

      g_assert_null (config);
      g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
      g_assert_nonnull (strstr (error->message, "proxy.conf"));
      g_assert_nonnull (strstr (error->message, "[proxy] trusted"));
      g_assert_nonnull (strstr (error->message, bad[i].message));
      g_clear_error (&error);
    }
  {
    const char *text = MINIMAL "proxy_protocol = maybe\n";
    g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "p.conf", &error);

    g_assert_null (config);
    g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
    g_assert_nonnull (strstr (error->message, "[pop3] proxy_protocol"));
    g_clear_error (&error);
  }
  {
    const char *text = MINIMAL "[proxy]\nproxy_protocol = true\n";
    g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "p.conf", &error);

    g_assert_null (config);
    g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
    g_assert_nonnull (strstr (error->message, "did you mean [pop3] proxy_protocol"));
    g_clear_error (&error);
  }
}

/* Under socket activation the listeners come from systemd: a config without any listen
 * key loads only then. */
static void
test_inherited_listeners (void)
{
  g_autoptr (GError) error = NULL;
  const char *text = "[upstream]\nhost = imap.example.com\n";
  g_autofree gchar *path = NULL;
  int fd = g_file_open_tmp ("popgate-inherit-XXXXXX.conf", &path, &error);
  PgConfigOverrides inherited = { .inherited_listeners = TRUE };
  g_autoptr (PgConfig) plain = NULL;
  g_autoptr (PgConfig) activated = NULL;

  g_assert_no_error (error);
  g_assert_cmpint (fd, >=, 0);
  close (fd);
  g_file_set_contents (path, text, -1, &error);
  g_assert_no_error (error);
  plain = pg_config_load (path, NULL, &error);
  g_assert_null (plain);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  g_assert_nonnull (strstr (error->message, "no listener"));
  g_clear_error (&error);
  activated = pg_config_load (path, &inherited, &error);
  g_assert_no_error (error);
  g_assert_nonnull (activated);
  g_assert_cmpuint (activated->pop3.listen->len, ==, 0);
  g_unlink (path);
}

/* [imap] account_map: 0600 files only, four fields a line, PLAIN and PBKDF2 secrets. */
static void
test_imap_account_map (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = g_dir_make_tmp ("pg-config-map-XXXXXX", &error);
  g_autofree gchar *pw = g_build_filename (dir, "pw", NULL);
  g_autofree gchar *map = g_build_filename (dir, "accounts", NULL);
  g_autofree gchar *text
      = g_strdup_printf ("[upstream]\nhost = h\n[imap]\nlisten = 127.0.0.1:1143\n"
                         "account_map = %s\n",
                         map);
  /* PBKDF2-HMAC-SHA256("pbkdf-secret", "salt", 1000, 32), as Python's hashlib computes it. */
  static const char pbkdf2_line[] = "carol {PBKDF2-SHA256}1000$c2FsdA==$"
                                    "DgMm1xuV/trFQkBouMahWUYyPDsbay3m8hKDoNyWqz4= carol@up pw\n";

  g_assert_no_error (error);
  g_assert_true (g_file_set_contents_full (pw, "upstream-secret\n", -1, G_FILE_SET_CONTENTS_NONE,
                                           0600, &error));
  g_assert_no_error (error);
  {
    g_autofree gchar *contents = g_strdup_printf ("# comment\n\nalice {PLAIN}local-secret  "
                                                  "alice@up pw\n%s",
                                                  pbkdf2_line);
    g_autoptr (PgConfig) config = NULL;
    const PgAccount *alice, *carol;

    g_assert_true (
        g_file_set_contents_full (map, contents, -1, G_FILE_SET_CONTENTS_NONE, 0600, &error));
    g_assert_no_error (error);
    config = load_ok (text);
    /* The old map is an alias of [accounts] file: its lines are password accounts on the
     * default upstream, and main is told to warn. */
    g_assert_true (config->accounts.deprecated_map);
    g_assert_cmpstr (config->accounts.file, ==, map);
    alice = pg_config_find_account (config, "alice");
    g_assert_nonnull (alice);
    g_assert_cmpstr (alice->upstream_user, ==, "alice@up");
    g_assert_true (alice->upstream == &config->upstream);
    g_assert_cmpint (alice->credential, ==, PG_CREDENTIAL_PASSWORD);
    g_assert_cmpstr (alice->password, ==, "upstream-secret");
    g_assert_true (pg_config_account_check (alice, "local-secret"));
    g_assert_false (pg_config_account_check (alice, "local-secre"));
    g_assert_false (pg_config_account_check (alice, "local-secret!"));
    carol = pg_config_find_account (config, "carol");
    g_assert_nonnull (carol);
    g_assert_true (pg_config_account_check (carol, "pbkdf-secret"));
    g_assert_false (pg_config_account_check (carol, "pbkdf-secreT"));
    g_assert_null (pg_config_find_account (config, "nobody"));
  }
  /* Readable by others: refused, naming the key. */
  g_assert_cmpint (g_chmod (map, 0644), ==, 0);
  assert_load_error (text, "imap", "account_map", "chmod 600");
  g_assert_cmpint (g_chmod (map, 0600), ==, 0);
  /* A malformed line, a bad secret scheme, a missing password file. */
  g_assert_true (g_file_set_contents_full (map, "alice {PLAIN}x alice@up\n", -1,
                                           G_FILE_SET_CONTENTS_NONE, 0600, &error));
  assert_load_error (text, "imap", "account_map", "line 1");
  g_assert_true (g_file_set_contents_full (map, "alice {MD5}x alice@up pw\n", -1,
                                           G_FILE_SET_CONTENTS_NONE, 0600, &error));
  assert_load_error (text, "imap", "account_map", "local secret");
  g_assert_true (g_file_set_contents_full (map, "alice {PLAIN}x alice@up missing\n", -1,
                                           G_FILE_SET_CONTENTS_NONE, 0600, &error));
  assert_load_error (text, "imap", "account_map", "missing");
  g_assert_no_error (error);
  g_assert_true (pg_test_rm_rf (dir));
}

/* An [upstream] text with the named groups and the accounts file `accounts`. */
static gchar *
accounts_config (const char *accounts, const char *extra)
{
  return g_strdup_printf ("[upstream]\nhost = h\n"
                          "[upstream:m365]\nprovider = outlook\nauth = oauth2\n"
                          "oauth2_client_id = app-1\noauth2_grant = client_credentials\n"
                          "[upstream:g]\nprovider = gmail\nauth = oauth2\noauth2_client_id = c-2\n"
                          "[upstream:second]\nhost = 127.0.0.1\nport = 1143\ntls = none\n"
                          "auth_mechanism = login\n"
                          "[pop3]\nlisten = 127.0.0.1:1110\n[accounts]\nfile = %s\n%s",
                          accounts, extra != NULL ? extra : "");
}

static void
write_secret (const char *path, const char *contents)
{
  g_autoptr (GError) error = NULL;

  /* CONSISTENT: a rewrite replaces the file (NONE may leave the old tail behind). */
  g_assert_true (
      g_file_set_contents_full (path, contents, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error));
  g_assert_no_error (error);
}

/* The accounts file: five fields, every credential kind, relative paths, and each rule
 * that refuses a line names the file and the line. */
static void
test_accounts (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *accounts = g_build_filename (fixture->dir, "accounts", NULL);
  g_autofree gchar *pw = g_build_filename (fixture->dir, "sub", "alice.pw", NULL);
  g_autofree gchar *token = g_build_filename (fixture->dir, "carol.token", NULL);
  g_autofree gchar *text = accounts_config (accounts, NULL);
  g_autofree gchar *line2 = g_strdup_printf ("%s line 2: ", accounts);
  g_autoptr (PgConfig) config = NULL;
  const PgAccount *account;

  {
    g_autofree gchar *sub = g_path_get_dirname (pw);
    g_assert_cmpint (g_mkdir_with_parents (sub, 0700), ==, 0);
  }
  write_secret (pw, "up-secret\nsecond line is not part of it\n");
  write_secret (token, "refresh-token\n");
  write_secret (accounts, "# local  secret  upstream  user  credential\n"
                          "alice {PLAIN}s1 default alice@up password:sub/alice.pw\n"
                          "bob\t{PLAIN}s2\tdefault\tbob@up\t-\n"
                          "carol {PLAIN}s3 g carol@gmail.example oauth2:carol.token\n"
                          "scan {PLAIN}s4 m365 scans@example.com oauth2\n"
                          "dave {PLAIN}s5 second dave@second -\n");
  config = load_ok (text);
  g_assert_false (config->accounts.deprecated_map);

  account = pg_config_find_account (config, "alice");
  g_assert_nonnull (account);
  g_assert_true (account->upstream == pg_config_find_upstream (config, "default"));
  g_assert_cmpint (account->credential, ==, PG_CREDENTIAL_PASSWORD);
  g_assert_cmpstr (account->password, ==, "up-secret");
  g_assert_null (account->token_file);
  g_assert_true (pg_config_account_check (account, "s1"));
  g_assert_false (pg_config_account_check (account, "s2"));
  g_assert_false (pg_config_account_check (account, ""));

  account = pg_config_find_account (config, "bob");
  g_assert_cmpint (account->credential, ==, PG_CREDENTIAL_PASS_THROUGH);
  g_assert_null (account->password);
  g_assert_cmpstr (account->upstream_user, ==, "bob@up");

  account = pg_config_find_account (config, "carol");
  g_assert_cmpint (account->credential, ==, PG_CREDENTIAL_OAUTH2);
  g_assert_cmpstr (account->token_file, ==, token);
  g_assert_true (account->upstream == pg_config_find_upstream (config, "g"));
  g_assert_cmpstr (account->upstream->name, ==, "g");

  account = pg_config_find_account (config, "scan");
  g_assert_cmpint (account->credential, ==, PG_CREDENTIAL_OAUTH2_CLIENT);
  g_assert_null (account->token_file);
  g_assert_cmpstr (account->upstream->name, ==, "m365");

  account = pg_config_find_account (config, "dave");
  g_assert_cmpstr (account->upstream->name, ==, "second");
  g_assert_cmpint (account->upstream->auth_mechanism, ==, PG_AUTH_MECHANISM_LOGIN);
  g_assert_null (pg_config_find_account (config, "alice#phone"));

  /* Each rule, on line 2 of the file. */
  {
    static const struct
    {
      const char *line;
      const char *fragment;
    } bad[] = {
      { "x {PLAIN}s nowhere u -", "unknown upstream \"nowhere\"" },
      { "x {PLAIN} default u -", "not empty" },
      { "x {MD5}abc default u -", "local secret" },
      { "x {PLAIN}s default u", "expected \"local-user local-secret upstream upstream-user" },
      { "x {PLAIN}s", "expected \"local-user local-secret upstream upstream-user" },
      { "x {PLAIN}s default u password:missing.pw", "missing.pw" },
      { "x {PLAIN}s default u oauth2:carol.token", "auth = password" },
      { "x {PLAIN}s g u oauth2", "client_credentials" },
      { "x {PLAIN}s g u -", "auth = oauth2" },
      { "x {PLAIN}s m365 u password:sub/alice.pw", "auth = oauth2" },
      { "x {PLAIN}s g u oauth2:no.token", "no.token" },
      { "x {PLAIN}s default u secret", "password:FILE, oauth2:FILE, oauth2 or -" },
      { "alice {PLAIN}s default u -", "listed twice" },
    };

    for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
      {
        g_autofree gchar *contents
            = g_strdup_printf ("alice {PLAIN}s1 default alice@up -\n%s\n", bad[i].line);
        g_autoptr (GError) error = NULL;
        g_autoptr (PgConfig) refused = NULL;

        write_secret (accounts, contents);
        /* "test.conf: [accounts] file: FILE line 2: what is wrong" */
        assert_load_error (text, "accounts", "file", line2);
        refused = pg_config_load_data (text, strlen (text), "test.conf", &error);
        g_assert_null (refused);
        if (strstr (error->message, bad[i].fragment) == NULL)
          g_error ("line \"%s\": expected \"%s\" in: %s", bad[i].line, bad[i].fragment,
                   error->message);
      }
  }
  /* Secret files must be 0600: the accounts file, a password file, a token file. */
  write_secret (accounts, "alice {PLAIN}s1 default alice@up password:sub/alice.pw\n"
                          "carol {PLAIN}s3 g carol@gmail.example oauth2:carol.token\n");
  g_assert_cmpint (g_chmod (pw, 0640), ==, 0);
  assert_load_error (text, "accounts", "file", "chmod 600");
  g_assert_cmpint (g_chmod (pw, 0600), ==, 0);
  g_assert_cmpint (g_chmod (token, 0604), ==, 0);
  assert_load_error (text, "accounts", "file", "chmod 600");
  g_assert_cmpint (g_chmod (token, 0600), ==, 0);
  g_assert_cmpint (g_chmod (accounts, 0644), ==, 0);
  assert_load_error (text, "accounts", "file", "chmod 600");
  g_assert_cmpint (g_chmod (accounts, 0600), ==, 0);
  g_clear_pointer (&config, pg_config_unref);
  config = load_ok (text);
  /* The old key and the new one together: which one would win is not obvious. */
  {
    g_autofree gchar *both = accounts_config (accounts, NULL);
    g_autofree gchar *with_map = g_strdup_printf ("%s[imap]\naccount_map = %s\n", both, accounts);
    assert_load_error (with_map, "imap", "account_map", "set only one");
  }
}

/* [upstream:NAME] groups, provider presets, auth and the oauth2_* rules. */
static void
test_upstream_groups (TempDirFixture *fixture, gconstpointer data)
{
  g_autofree gchar *secret = g_build_filename (fixture->dir, "client.secret", NULL);
  const PgUpstreamConfig *up;

  {
    g_autoptr (PgConfig) config
        = load_ok ("[upstream]\nprovider = gmail\n"
                   "[upstream:work]\nprovider = outlook\nauth = oauth2\noauth2_client_id = id-1\n"
                   "port = 1993\noauth2_scope = custom\n"
                   "[upstream:plain]\nhost = 127.0.0.1\ntls = none\nauth_mechanism = plain\n"
                   "compress = auto\n"
                   "mailbox = Archive\n"
                   "[pop3]\nlisten = 127.0.0.1:1110\n");

    up = pg_config_find_upstream (config, "default");
    g_assert_true (up == &config->upstream);
    g_assert_cmpstr (up->provider, ==, "gmail");
    g_assert_cmpstr (up->host, ==, "imap.gmail.com");
    g_assert_cmpint (up->port, ==, 993);
    g_assert_cmpint (up->tls, ==, PG_UPSTREAM_TLS_IMPLICIT);
    g_assert_cmpint (up->auth, ==, PG_UPSTREAM_AUTH_PASSWORD);
    g_assert_cmpstr (up->oauth2.token_url, ==, "https://oauth2.googleapis.com/token");
    g_assert_cmpstr (up->oauth2.authorize_url, ==, "https://accounts.google.com/o/oauth2/v2/auth");
    g_assert_null (up->oauth2.device_url);
    g_assert_cmpstr (up->oauth2.scope, ==, "https://mail.google.com/");

    g_assert_cmpuint (config->upstreams->len, ==, 2);
    up = pg_config_find_upstream (config, "work");
    g_assert_nonnull (up);
    g_assert_cmpstr (up->name, ==, "work");
    g_assert_cmpstr (up->host, ==, "outlook.office365.com");
    g_assert_cmpint (up->port, ==, 1993); /* a key overrides the preset */
    g_assert_cmpint (up->auth, ==, PG_UPSTREAM_AUTH_OAUTH2);
    g_assert_cmpstr (up->oauth2.token_url, ==,
                     "https://login.microsoftonline.com/common/oauth2/v2.0/token");
    g_assert_cmpstr (up->oauth2.authorize_url, ==,
                     "https://login.microsoftonline.com/common/oauth2/v2.0/authorize");
    g_assert_cmpstr (up->oauth2.device_url, ==,
                     "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode");
    g_assert_cmpstr (up->oauth2.scope, ==, "custom");
    g_assert_cmpstr (up->oauth2.client_id, ==, "id-1");
    g_assert_cmpint (up->oauth2.grant, ==, PG_OAUTH2_GRANT_REFRESH_TOKEN);
    g_assert_cmpint (up->oauth2.mechanism, ==, PG_OAUTH2_MECHANISM_AUTO);
    g_assert_cmpstr (up->mailbox, ==, "INBOX");

    up = pg_config_find_upstream (config, "plain");
    g_assert_cmpint (up->port, ==, 143);
    g_assert_cmpint (up->auth_mechanism, ==, PG_AUTH_MECHANISM_PLAIN);
    g_assert_true (up->compress);
    g_assert_cmpstr (up->mailbox, ==, "Archive");
    g_assert_cmpstr (up->provider, ==, "generic");
    g_assert_null (up->oauth2.token_url);
    g_assert_null (pg_config_find_upstream (config, "nope"));
  }
  {
    g_autoptr (PgConfig) config = load_ok (
        "[upstream]\nhost = h\nauth = oauth2\noauth2_token_url = http://127.0.0.1:8080/token\n"
        "oauth2_client_id = c\noauth2_grant = client_credentials\n"
        "oauth2_mechanism = oauthbearer\n"
        "[upstream:v6]\nhost = h\nauth = oauth2\noauth2_token_url = http://[::1]/t\n"
        "oauth2_client_id = c\noauth2_mechanism = xoauth2\n"
        "[pop3]\nlisten = 127.0.0.1:1110\n");

    g_assert_cmpint (config->upstream.auth, ==, PG_UPSTREAM_AUTH_OAUTH2);
    g_assert_cmpint (config->upstream.oauth2.grant, ==, PG_OAUTH2_GRANT_CLIENT_CREDENTIALS);
    g_assert_cmpint (config->upstream.oauth2.mechanism, ==, PG_OAUTH2_MECHANISM_OAUTHBEARER);
    g_assert_cmpint (pg_config_find_upstream (config, "v6")->oauth2.mechanism, ==,
                     PG_OAUTH2_MECHANISM_XOAUTH2);
  }

#define UP_G "[pop3]\nlisten = 127.0.0.1:1110\n[upstream]\nhost = h\n[upstream:x]\nhost = h\n"
  assert_load_error (UP_G "auth = oauth2\noauth2_client_id = c\n", "upstream:x", "oauth2_token_url",
                     "missing");
  assert_load_error (UP_G "auth = oauth2\noauth2_token_url = https://t/\n", "upstream:x",
                     "oauth2_client_id", "missing");
  assert_load_error (UP_G "oauth2_token_url = http://auth.example.com/token\n", "upstream:x",
                     "oauth2_token_url", "loopback");
  assert_load_error (UP_G "oauth2_token_url = http://127.0.0.1.example.com/token\n", "upstream:x",
                     "oauth2_token_url", "loopback");
  assert_load_error (UP_G "oauth2_device_url = ftp://127.0.0.1/\n", "upstream:x",
                     "oauth2_device_url", "https://");
  assert_load_error (UP_G "oauth2_token_url = not a url\n", "upstream:x", "oauth2_token_url",
                     "not a URL");
  assert_load_error (UP_G "auth = kerberos\n", "upstream:x", "auth", "password, oauth2");
  assert_load_error (UP_G "auth_mechanism = cram-md5\n", "upstream:x", "auth_mechanism",
                     "auto, plain, login");
  assert_load_error (UP_G "compress = yes\n", "upstream:x", "compress", "off, auto");
  assert_load_error (UP_G "provider = yahoo\n", "upstream:x", "provider",
                     "generic, gmail, outlook");
  assert_load_error (UP_G "oauth2_grant = password\n", "upstream:x", "oauth2_grant",
                     "refresh_token, client_credentials");
  assert_load_error (UP_G "oauth2_mechanism = plain\n", "upstream:x", "oauth2_mechanism",
                     "auto, xoauth2, oauthbearer");
  assert_load_error (UP_G "listen = 1.2.3.4:5\n", "upstream:x", "listen", "unknown key");
  assert_load_error ("[upstream]\nhost = h\n[upstream:y]\nport = 1\n"
                     "[pop3]\nlisten = 127.0.0.1:1110\n",
                     "upstream:y", "host", "missing");
  assert_load_error ("[upstream]\nhost = h\n[upstream:]\nhost = h\n"
                     "[pop3]\nlisten = 127.0.0.1:1110\n",
                     "upstream:", NULL, "1 to");
  assert_load_error ("[upstream]\nhost = h\n[upstream:default]\nhost = h\n"
                     "[pop3]\nlisten = 127.0.0.1:1110\n",
                     "upstream:default", NULL, "[upstream] itself");
  assert_load_error ("[upstream]\nhost = h\n[upstream:a b]\nhost = h\n"
                     "[pop3]\nlisten = 127.0.0.1:1110\n",
                     "upstream:a b", NULL, "letters");
  /* The client secret file: it must exist and be 0600. */
  {
    g_autofree gchar *text = g_strdup_printf (UP_G "oauth2_client_secret_file = %s\n", secret);
    g_autoptr (PgConfig) config = NULL;

    assert_load_error (text, "upstream:x", "oauth2_client_secret_file", "client.secret");
    write_secret (secret, "shh\n");
    config = load_ok (text);
    g_assert_cmpstr (pg_config_find_upstream (config, "x")->oauth2.client_secret_file, ==, secret);
    g_assert_cmpint (g_chmod (secret, 0640), ==, 0);
    assert_load_error (text, "upstream:x", "oauth2_client_secret_file", "chmod 600");
  }
#undef UP_G
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/popgate/config/defaults", test_defaults);
  g_test_add_func ("/popgate/config/proxy", test_proxy);
  g_test_add_func ("/popgate/config/inherited-listeners", test_inherited_listeners);
  g_test_add_func ("/popgate/config/upstream-port-follows-tls", test_upstream_port_follows_tls);
  g_test_add ("/popgate/config/full", TempDirFixture, NULL, temp_dir_setup, test_full,
              temp_dir_teardown);
  g_test_add_func ("/popgate/config/comments-and-escapes", test_comments_and_escapes);
  g_test_add_func ("/popgate/config/booleans", test_booleans);
  g_test_add_func ("/popgate/config/durations", test_durations);
  g_test_add_func ("/popgate/config/listen-parse", test_listen_parse);
  g_test_add_func ("/popgate/config/errors", test_errors);
  g_test_add ("/popgate/config/tls-pair-and-priority", TempDirFixture, NULL, temp_dir_setup,
              test_tls_pair_and_priority, temp_dir_teardown);
  g_test_add_func ("/popgate/config/syntax-error", test_syntax_error);
  g_test_add ("/popgate/config/missing-file", TempDirFixture, NULL, temp_dir_setup,
              test_missing_file, temp_dir_teardown);
  g_test_add ("/popgate/config/file-errors-name-the-file", TempDirFixture, NULL, temp_dir_setup,
              test_file_errors_name_the_file, temp_dir_teardown);
  g_test_add ("/popgate/config/relative-paths", TempDirFixture, NULL, temp_dir_setup,
              test_relative_paths, temp_dir_teardown);
  g_test_add ("/popgate/config/overrides", TempDirFixture, NULL, temp_dir_setup, test_overrides,
              temp_dir_teardown);
  g_test_add_func ("/popgate/config/refcount", test_refcount);
  g_test_add_func ("/popgate/config/example-as-is", test_example_as_is);
  g_test_add_func ("/popgate/config/imap-account-map", test_imap_account_map);
  g_test_add ("/popgate/config/accounts", TempDirFixture, NULL, temp_dir_setup, test_accounts,
              temp_dir_teardown);
  g_test_add ("/popgate/config/upstream-groups", TempDirFixture, NULL, temp_dir_setup,
              test_upstream_groups, temp_dir_teardown);
  g_test_add ("/popgate/config/example-every-key", TempDirFixture, NULL, temp_dir_setup,
              test_example_every_key, temp_dir_teardown);

  return g_test_run ();
}
