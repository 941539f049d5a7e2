/* Tests of the login path (src/login/): in process, the login name and its tag, SASL,
 * the counts and the failure delay, the local secret and the auth_mechanism fallback
 * against a scripted peer; then both front ends of the real binary in front of a real
 * Dovecot through an accounts file: password:FILE, pass-through, an [upstream:NAME]
 * group, auth_mechanism = login, and a wrong local secret that never reaches the upstream.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-login.h"
#include "popgate/pg-upstream.h"

#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-peer.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <glib/gstdio.h>
#include <string.h>

/* How long an in-process step may take before the test fails (a watchdog, not a timing
 * assertion). */
#define WATCHDOG_MS 20000

#define UPSTREAM_PASSWORD "up-str3am pw"
#define LOCAL_PASSWORD "l0cal-secret"

/* --- in process ---------------------------------------------------------------------------- */

static PgConfig *
load_config (const char *text)
{
  g_autoptr (GError) error = NULL;
  PgConfig *config = pg_config_load_data (text, strlen (text), "test.conf", &error);

  g_assert_no_error (error);
  g_assert_nonnull (config);
  return config;
}

static gboolean
watchdog_cb (gpointer user_data)
{
  g_error ("watchdog: an in-process step did not finish in %d ms", WATCHDOG_MS);
  return G_SOURCE_REMOVE;
}

/* Run the default main context until *flag. */
static void
run_until (gboolean *flag)
{
  GSource *watchdog = g_timeout_source_new (WATCHDOG_MS);

  g_source_set_callback (watchdog, watchdog_cb, NULL, NULL);
  g_source_attach (watchdog, NULL);
  while (!*flag)
    g_main_context_iteration (NULL, TRUE);
  g_source_destroy (watchdog);
  g_source_unref (watchdog);
}

static void
test_tags (void)
{
  g_autoptr (PgConfig) config = load_config ("[upstream]\nhost = h\n[pop3]\nlisten = "
                                             "127.0.0.1:1110\n");
  g_autoptr (PgConfig) untagged = load_config ("[upstream]\nhost = h\n[pop3]\nlisten = "
                                               "127.0.0.1:1110\nclient_tag_separator =\n");
  g_autoptr (PgLogin) login = pg_login_new (config, PG_METRICS_FRONTEND_POP3, 1, "c", "1.2.3.4");
  g_autoptr (PgLogin) plain = pg_login_new (untagged, PG_METRICS_FRONTEND_IMAP, 2, "c", NULL);
  static const struct
  {
    const char *name, *account, *tag;
  } cases[] = {
    { "olduser#phone", "olduser", "phone" },
    { "a@example.com#laptop", "a@example.com", "laptop" },
    { "a#b#c", "a#b", "c" },
    { "olduser", "olduser", "default" },
    { "#phone", "#phone", "default" },
    { "olduser#", "olduser#", "default" },
  };

  g_assert_null (pg_login_get_user (login));
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      pg_login_set_user (login, cases[i].name);
      g_assert_cmpstr (pg_login_get_user (login), ==, cases[i].name);
      g_assert_cmpstr (pg_login_get_account (login), ==, cases[i].account);
      g_assert_cmpstr (pg_login_get_client_tag (login), ==, cases[i].tag);
      g_assert_cmpstr (pg_login_get_upstream_user (login), ==, cases[i].account);
      g_assert_true (pg_login_get_upstream (login) == &config->upstream);
    }
  pg_login_clear_user (login);
  g_assert_null (pg_login_get_user (login));
  g_assert_null (pg_login_get_account (login));
  /* client_tag_separator = "": no tags at all. */
  pg_login_set_user (plain, "olduser#phone");
  g_assert_cmpstr (pg_login_get_account (plain), ==, "olduser#phone");
  g_assert_cmpstr (pg_login_get_client_tag (plain), ==, "default");
}

static gchar *
b64 (const char *data, gsize len)
{
  return g_base64_encode ((const guchar *) data, len);
}

static void
test_sasl (void)
{
  g_autoptr (PgConfig) config = load_config ("[upstream]\nhost = h\n[pop3]\nlisten = "
                                             "127.0.0.1:1110\n");
  g_autoptr (PgLogin) login = pg_login_new (config, PG_METRICS_FRONTEND_POP3, 1, "c", NULL);
  static const char plain_raw[] = "\0alice#tag\0pw";
  static const char other_raw[] = "bob\0alice\0pw";
  static const char nul_raw[] = "\0alice\0p\0w";
  g_autofree gchar *plain = b64 (plain_raw, sizeof plain_raw - 1);
  g_autofree gchar *other = b64 (other_raw, sizeof other_raw - 1);
  g_autofree gchar *nul = b64 (nul_raw, sizeof nul_raw - 1);
  g_autofree gchar *user = b64 ("carol", 5);
  g_autofree gchar *pass = b64 ("s3cret", 6);

  /* PLAIN with an initial response. */
  {
    g_autoptr (PgSecret) password = NULL;
    const char *challenge = NULL;

    g_assert_cmpint (
        pg_login_sasl_start (login, "plain", plain, strlen (plain), &challenge, &password, NULL),
        ==, PG_LOGIN_SASL_DONE);
    g_assert_cmpstr (password, ==, "pw");
    g_assert_cmpstr (pg_login_get_account (login), ==, "alice");
    g_assert_cmpstr (pg_login_get_client_tag (login), ==, "tag");
    g_assert_false (pg_login_sasl_in_progress (login));
  }
  /* PLAIN without: an empty challenge, then the response. */
  {
    g_autoptr (PgSecret) password = NULL;
    const char *challenge = NULL;

    g_assert_cmpint (pg_login_sasl_start (login, "PLAIN", NULL, 0, &challenge, &password, NULL), ==,
                     PG_LOGIN_SASL_CONTINUE);
    g_assert_cmpstr (challenge, ==, "");
    g_assert_true (pg_login_sasl_in_progress (login));
    g_assert_cmpint (pg_login_sasl_step (login, plain, strlen (plain), &challenge, &password, NULL),
                     ==, PG_LOGIN_SASL_DONE);
    g_assert_cmpstr (password, ==, "pw");
  }
  /* Another authzid: valid, but refused; malformed ones are malformed. */
  {
    g_autoptr (PgSecret) password = NULL;
    g_autoptr (GError) error = NULL;
    const char *challenge = NULL;

    g_assert_cmpint (
        pg_login_sasl_start (login, "PLAIN", other, strlen (other), &challenge, &password, NULL),
        ==, PG_LOGIN_SASL_REFUSED);
    g_assert_null (password);
    g_assert_cmpint (
        pg_login_sasl_start (login, "PLAIN", nul, strlen (nul), &challenge, &password, &error), ==,
        PG_LOGIN_SASL_MALFORMED);
    g_assert_nonnull (error);
    g_clear_error (&error);
    /* "=" is an empty initial response, which PLAIN cannot be. */
    g_assert_cmpint (pg_login_sasl_start (login, "PLAIN", "=", 1, &challenge, &password, &error),
                     ==, PG_LOGIN_SASL_MALFORMED);
    g_clear_error (&error);
    g_assert_cmpint (pg_login_sasl_start (login, "PLAIN", "a!b", 3, &challenge, &password, &error),
                     ==, PG_LOGIN_SASL_MALFORMED);
    g_assert_false (pg_login_sasl_in_progress (login));
  }
  /* LOGIN: user name, then password; "*" cancels at any step. */
  {
    g_autoptr (PgSecret) password = NULL;
    g_autoptr (GError) error = NULL;
    const char *challenge = NULL;

    g_assert_cmpint (pg_login_sasl_start (login, "LOGIN", NULL, 0, &challenge, &password, NULL), ==,
                     PG_LOGIN_SASL_CONTINUE);
    g_assert_cmpstr (challenge, ==, "VXNlcm5hbWU6");
    g_assert_cmpint (pg_login_sasl_step (login, user, strlen (user), &challenge, &password, NULL),
                     ==, PG_LOGIN_SASL_CONTINUE);
    g_assert_cmpstr (challenge, ==, "UGFzc3dvcmQ6");
    g_assert_cmpstr (pg_login_get_user (login), ==, "carol");
    g_assert_cmpint (pg_login_sasl_step (login, pass, strlen (pass), &challenge, &password, NULL),
                     ==, PG_LOGIN_SASL_DONE);
    g_assert_cmpstr (password, ==, "s3cret");

    g_assert_cmpint (
        pg_login_sasl_start (login, "LOGIN", user, strlen (user), &challenge, &password, NULL), ==,
        PG_LOGIN_SASL_CONTINUE);
    g_assert_cmpint (pg_login_sasl_step (login, "*", 1, &challenge, &password, NULL), ==,
                     PG_LOGIN_SASL_CANCELLED);
    g_assert_null (pg_login_get_user (login));
    g_assert_false (pg_login_sasl_in_progress (login));
    g_assert_cmpint (pg_login_sasl_start (login, "LOGIN", NULL, 0, &challenge, &password, NULL), ==,
                     PG_LOGIN_SASL_CONTINUE);
    g_assert_cmpint (pg_login_sasl_step (login, "%%%", 3, &challenge, &password, &error), ==,
                     PG_LOGIN_SASL_MALFORMED);
    g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
    g_assert_cmpint (pg_login_sasl_start (login, "CRAM-MD5", NULL, 0, &challenge, &password, NULL),
                     ==, PG_LOGIN_SASL_UNSUPPORTED);
  }
}

typedef struct
{
  guint calls;
  gboolean too_many;
} FailedState;

static void
failed_cb (gpointer user_data, gboolean too_many)
{
  FailedState *state = user_data;

  state->calls++;
  state->too_many = too_many;
}

static void
test_counting (void)
{
  g_autoptr (PgConfig) config = load_config (
      "[upstream]\nhost = h\n[pop3]\nlisten = 127.0.0.1:1110\n[limits]\nmax_bad_commands = 3\n"
      "max_auth_failures = 2\nauth_failure_delay = 0\n");
  g_autoptr (PgConfig) delayed = load_config (
      "[upstream]\nhost = h\n[pop3]\nlisten = 127.0.0.1:1110\n[limits]\nauth_failure_delay = "
      "20ms\n");
  g_autoptr (PgLogin) login = pg_login_new (config, PG_METRICS_FRONTEND_POP3, 1, "c", NULL);
  FailedState state = { 0 };

  g_assert_false (pg_login_bad_command (login));
  g_assert_false (pg_login_bad_command (login));
  g_assert_true (pg_login_bad_command (login));

  pg_login_set_user (login, "someone");
  pg_login_auth_failed (login, NULL, failed_cb, &state);
  g_assert_cmpuint (state.calls, ==, 1);
  g_assert_false (state.too_many);
  g_assert_null (pg_login_get_user (login)); /* forgotten */
  pg_login_auth_failed (login, NULL, failed_cb, &state);
  g_assert_cmpuint (state.calls, ==, 2);
  g_assert_true (state.too_many);

  /* With a delay the answer waits for the main loop. */
  {
    g_autoptr (PgLogin) slow = pg_login_new (delayed, PG_METRICS_FRONTEND_IMAP, 2, "c", NULL);
    FailedState later = { 0 };
    gboolean done = FALSE;

    pg_login_auth_failed (slow, NULL, failed_cb, &later);
    g_assert_cmpuint (later.calls, ==, 0);
    g_assert_true (pg_login_is_delaying (slow));
    while (!done)
      {
        g_main_context_iteration (NULL, TRUE);
        done = later.calls > 0;
      }
    g_assert_cmpuint (later.calls, ==, 1);
    g_assert_false (later.too_many);
    g_assert_false (pg_login_is_delaying (slow));
  }
}

typedef struct
{
  PgLogin *login; /* unowned */
  gboolean done;
  PgUpstream *upstream; /* owned */
  GError *error;        /* owned */
} LoginResult;

static void
login_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  LoginResult *out = user_data;

  out->upstream = pg_login_authenticate_finish (out->login, result, &out->error);
  out->done = TRUE;
}

/* Log `name` in with `password` through the login path and wait for the outcome. */
static void
run_login (PgLogin *login, const char *name, const char *password, LoginResult *out)
{
  out->login = login;
  pg_login_set_user (login, name);
  pg_login_authenticate_async (login, password, FALSE, NULL, login_cb, out);
  run_until (&out->done);
}

static void
login_result_clear (LoginResult *out)
{
  if (out->upstream != NULL)
    pg_upstream_close (out->upstream);
  g_clear_object (&out->upstream);
  g_clear_error (&out->error);
  out->done = FALSE;
}

static gchar *
write_secret (const char *dir, const char *name, const char *contents)
{
  g_autofree gchar *path = g_build_filename (dir, name, NULL);
  g_autoptr (GError) error = NULL;

  g_assert_true (
      g_file_set_contents_full (path, contents, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error));
  g_assert_no_error (error);
  return g_steal_pointer (&path);
}

/* A config whose [upstream] and [upstream:peer] point at `port`, with an accounts file. */
static PgConfig *
peer_config (const char *dir, guint16 port, const char *mechanism)
{
  g_autofree gchar *accounts
      = write_secret (dir, "accounts",
                      "mapped {PLAIN}" LOCAL_PASSWORD " peer alice password:alice.pw\n"
                      "token {PLAIN}" LOCAL_PASSWORD " cc svc oauth2\n");
  g_autofree gchar *pw = write_secret (dir, "alice.pw", UPSTREAM_PASSWORD "\n");
  g_autofree gchar *text = g_strdup_printf (
      "[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n"
      "[upstream:peer]\nhost = 127.0.0.1\nport = %u\ntls = none\nauth_mechanism = %s\n"
      "[upstream:cc]\nhost = 127.0.0.1\nport = %u\ntls = none\nauth = oauth2\n"
      "oauth2_token_url = http://127.0.0.1:1/token\noauth2_client_id = c\n"
      "oauth2_grant = client_credentials\n"
      "[pop3]\nlisten = 127.0.0.1:1110\n[accounts]\nfile = %s\n",
      port, port, mechanism, port, accounts);

  return load_config (text);
}

/* auth_mechanism = auto: a BAD to AUTHENTICATE PLAIN is not the credentials, so LOGIN
 * goes once more on the same connection, and that login is the result. */
static void
test_fallback_to_login (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-login-XXXXXX", NULL);
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN *", 0 },
    { PG_TEST_PEER_SEND, "$ BAD [CLIENTBUG] mechanism not today\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5}", 0 },
    { PG_TEST_PEER_SEND, "+ OK\r\n", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12}", 0 },
    { PG_TEST_PEER_SEND, "+ OK\r\n", 0 },
    { PG_TEST_PEER_EXPECT_RAW, UPSTREAM_PASSWORD, 0 },
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 FELLBACK] Logged in\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new (script, &error);
  g_autoptr (PgConfig) config = NULL;
  g_autoptr (PgLogin) login = NULL;
  LoginResult out = { 0 };

  g_assert_no_error (error);
  config = peer_config (dir, pg_test_peer_get_port (peer), "auto");
  login = pg_login_new (config, PG_METRICS_FRONTEND_POP3, 5, "c", "192.0.2.7");
  run_login (login, "mapped#phone", LOCAL_PASSWORD, &out);
  g_assert_no_error (out.error);
  g_assert_nonnull (out.upstream);
  g_assert_true (pg_upstream_is_authenticated (out.upstream));
  g_assert_true (pg_upstream_has_capability (out.upstream, "FELLBACK"));
  g_assert_cmpstr (pg_login_get_upstream_user (login), ==, "alice");
  g_assert_cmpstr (pg_login_get_client_tag (login), ==, "phone");
  g_assert_cmpstr (pg_login_get_upstream (login)->name, ==, "peer");
  g_assert_true (pg_test_peer_wait_finished (peer, WATCHDOG_MS));
  g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
  login_result_clear (&out);
  g_assert_true (pg_test_rm_rf (dir));
}

/* auth_mechanism = plain: the same BAD is the end (no LOGIN); a NO is the credentials
 * whatever the mechanism, and is not retried either. */
static void
test_no_fallback (void)
{
  static const PgTestPeerStep bad[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN *", 0 },
    { PG_TEST_PEER_SEND, "$ BAD no\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  static const PgTestPeerStep no[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN *", 0 },
    { PG_TEST_PEER_SEND, "$ NO [AUTHENTICATIONFAILED] no\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  const struct
  {
    const PgTestPeerStep *script;
    const char *mechanism;
    gint code;
  } cases[] = {
    { bad, "plain", PG_ERROR_UPSTREAM },
    { no, "auto", PG_ERROR_AUTH_FAILED },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *dir = g_dir_make_tmp ("popgate-login-XXXXXX", NULL);
      g_autoptr (GError) error = NULL;
      g_autoptr (PgTestPeer) peer = pg_test_peer_new (cases[i].script, &error);
      g_autoptr (PgConfig) config = NULL;
      g_autoptr (PgLogin) login = NULL;
      g_autofree gchar *received = NULL;
      LoginResult out = { 0 };

      g_assert_no_error (error);
      config = peer_config (dir, pg_test_peer_get_port (peer), cases[i].mechanism);
      login = pg_login_new (config, PG_METRICS_FRONTEND_IMAP, 6, "c", NULL);
      run_login (login, "mapped", LOCAL_PASSWORD, &out);
      g_assert_null (out.upstream);
      g_assert_error (out.error, PG_ERROR, cases[i].code);
      g_assert_true (pg_test_peer_wait_finished (peer, WATCHDOG_MS));
      g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
      received = pg_test_peer_get_received (peer);
      g_assert_null (strstr (received, "LOGIN {"));
      login_result_clear (&out);
      g_assert_true (pg_test_rm_rf (dir));
    }
}

/* A wrong local secret fails before any connection: the upstream here is port 1, so a
 * login that went there would fail as "unavailable", not as refused credentials. */
static void
test_local_secret (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-login-XXXXXX", NULL);
  g_autoptr (PgConfig) config = peer_config (dir, 1, "auto");
  g_autoptr (PgLogin) login = pg_login_new (config, PG_METRICS_FRONTEND_POP3, 7, "c", NULL);
  LoginResult out = { 0 };

  run_login (login, "mapped", "not-" LOCAL_PASSWORD, &out);
  g_assert_error (out.error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  login_result_clear (&out);
  run_login (login, "mapped", LOCAL_PASSWORD, &out);
  g_assert_nonnull (out.error);
  g_assert_false (g_error_matches (out.error, PG_ERROR, PG_ERROR_AUTH_FAILED));
  login_result_clear (&out);
  g_assert_true (pg_test_rm_rf (dir));
}

/* An OAuth2 account gets as far as the connection, then the OAuth2 step. Its token
 * endpoint (port 1) is down, and before the token manager existed there was no token at
 * all: either way the login fails as unavailable, never as a login or as refused
 * credentials. */
static void
test_oauth2_step (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-login-XXXXXX", NULL);
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER AUTH=XOAUTH2] hi\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new (script, &error);
  g_autoptr (PgConfig) config = NULL;
  g_autoptr (PgLogin) login = NULL;
  LoginResult out = { 0 };

  g_assert_no_error (error);
  config = peer_config (dir, pg_test_peer_get_port (peer), "auto");
  login = pg_login_new (config, PG_METRICS_FRONTEND_POP3, 8, "c", NULL);
  run_login (login, "token", LOCAL_PASSWORD, &out);
  g_assert_null (out.upstream);
  g_assert_error (out.error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_cmpstr (pg_login_get_upstream (login)->name, ==, "cc");
  login_result_clear (&out);
  g_assert_true (pg_test_rm_rf (dir));
}

/* --- both front ends, the real binary, a real Dovecot ---------------------------------- */

static PgTestDovecot *dovecot = NULL;

#define USER_MAPPED "login-mapped"
#define USER_PASSER "login-passer"
#define PASSER_PASSWORD "pass-thr0ugh-pw" /* a {PLAIN} secret has no spaces */
#define LOCAL_SECOND "s3cond-local"
#define LOCAL_GATED "gat3d-local"

typedef struct
{
  gchar *dir; /* owned: the accounts file and its password file */
  PgTestPopgate *popgate;
} Fixture;

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *accounts = NULL;
  g_autofree gchar *pw = NULL;
  g_autofree gchar *imap_port = g_strdup_printf ("%u", dovecot->imap_port);

  fx->dir = g_dir_make_tmp ("popgate-login-XXXXXX", &error);
  g_assert_no_error (error);
  pw = write_secret (fx->dir, "mapped.pw", UPSTREAM_PASSWORD "\n");
  accounts = write_secret (
      fx->dir, "accounts",
      "# local-user  local-secret  upstream  upstream-user  credential\n"
      "mapped   {PLAIN}" LOCAL_PASSWORD "  default " USER_MAPPED "  password:mapped.pw\n"
      "passer   {PLAIN}" PASSER_PASSWORD "  default " USER_PASSER "  -\n"
      "second   {PLAIN}" LOCAL_SECOND "  second  " USER_MAPPED "  password:mapped.pw\n"
      "gated    {PLAIN}" LOCAL_GATED "  dead    " USER_MAPPED "  password:mapped.pw\n");
  for (guint attempt = 0; attempt < 5; attempt++)
    {
      g_clear_pointer (&fx->popgate, pg_test_popgate_free);
      fx->popgate = pg_test_popgate_new (dovecot, "none", &error);
      g_assert_no_error (error);
      pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "20ms");
      pg_test_popgate_set (fx->popgate, "limits", "max_auth_failures", "10");
      pg_test_popgate_set (fx->popgate, "log", "trace", "true");
      pg_test_popgate_set (fx->popgate, "accounts", "file", accounts);
      /* The same Dovecot under a second name: another mailbox, LOGIN instead of PLAIN. */
      pg_test_popgate_set (fx->popgate, "upstream:second", "host", "127.0.0.1");
      pg_test_popgate_set (fx->popgate, "upstream:second", "port", imap_port);
      pg_test_popgate_set (fx->popgate, "upstream:second", "tls", "none");
      pg_test_popgate_set (fx->popgate, "upstream:second", "mailbox", "Other");
      pg_test_popgate_set (fx->popgate, "upstream:second", "auth_mechanism", "login");
      /* Nothing listens on port 1: reaching it is "unavailable", never "refused". */
      pg_test_popgate_set (fx->popgate, "upstream:dead", "host", "127.0.0.1");
      pg_test_popgate_set (fx->popgate, "upstream:dead", "port", "1");
      pg_test_popgate_set (fx->popgate, "upstream:dead", "tls", "none");
      if (!pg_test_popgate_start (fx->popgate, &error))
        {
          g_test_message ("popgate start failed, retrying: %s", error->message);
          g_clear_error (&error);
          continue;
        }
      if (pg_test_popgate_wait_log (fx->popgate, "ready", 10000)
          && !pg_test_popgate_wait (fx->popgate, 0, NULL))
        return;
      g_test_message ("popgate did not get ready, retrying");
    }
  g_assert_not_reached ();
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *log = NULL;

  pg_test_popgate_stop (fx->popgate);
  log = pg_test_popgate_read_log (fx->popgate);
  if (g_test_failed ())
    g_test_message ("popgate log:\n%s", log);
  /* Neither the local secrets nor the upstream passwords, at -v with the trace on. */
  g_assert_null (strstr (log, LOCAL_PASSWORD));
  g_assert_null (strstr (log, UPSTREAM_PASSWORD));
  g_assert_null (strstr (log, PASSER_PASSWORD));
  g_assert_null (strstr (log, LOCAL_SECOND));
  g_assert_null (strstr (log, LOCAL_GATED));
  g_clear_pointer (&fx->popgate, pg_test_popgate_free);
  g_assert_true (pg_test_rm_rf (fx->dir));
  g_free (fx->dir);
}

static PgTestPop3 *
pop3_connect (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);

  g_assert_no_error (error);
  return pop3;
}

static PgTestImap *
imap_connect (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestImap *imap = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);

  g_assert_no_error (error);
  return imap;
}

/* The POP3 status of USER + PASS. */
static gchar *
pop3_login_status (Fixture *fx, PgTestPop3 *pop3, const char *user, const char *password)
{
  g_autoptr (GError) error = NULL;
  gchar *status = NULL;

  (void) pg_test_pop3_login (pop3, user, password, &status, &error);
  g_assert_nonnull (status);
  return status;
}

/* The tagged status line of LOGIN (both arguments as literals). */
static gchar *
imap_login_status (PgTestImap *imap, const char *tag, const char *user, const char *password)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *head = g_strdup_printf ("%s LOGIN {%zu+}\r\n%s {%zu+}\r\n%s\r\n", tag,
                                            strlen (user), user, strlen (password), password);
  g_autofree gchar *prefix = g_strdup_printf ("%s ", tag);

  g_assert_true (pg_test_imap_send_raw (imap, head, strlen (head), &error));
  g_assert_no_error (error);
  for (;;)
    {
      gchar *line = pg_test_imap_read_line (imap, &error);

      g_assert_no_error (error);
      g_assert_nonnull (line);
      if (g_str_has_prefix (line, prefix))
        return line;
      g_free (line);
    }
}

/* password:FILE on the default upstream: POP3 and IMAP log in with the local password, the
 * upstream sees the mapped account (its INBOX has one message). */
static void
test_mapped_account (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = pop3_login_status (fx, pop3, "mapped", LOCAL_PASSWORD);

    g_assert_cmpstr (status, ==, "+OK Logged in.");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 1 ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  {
    g_autoptr (PgTestImap) imap = imap_connect (fx);
    g_autofree gchar *status = imap_login_status (imap, "a1", "mapped#phone", LOCAL_PASSWORD);
    guint32 exists = 0;

    g_assert_true (g_str_has_prefix (status, "a1 OK [CAPABILITY "));
    g_assert_true (pg_test_imap_select (imap, "INBOX", TRUE, NULL, &exists, &error));
    g_assert_no_error (error);
    g_assert_cmpuint (exists, ==, 1);
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
  }
  /* The IMAP tag shows in the log, and nowhere else. */
  g_assert_true (pg_test_popgate_wait_log (
      fx->popgate,
      "imap session started: user=mapped#phone upstream_user=" USER_MAPPED " tag=phone", 10000));
  /* The upstream password is not the local one. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = pop3_login_status (fx, pop3, "mapped", UPSTREAM_PASSWORD);

    g_assert_cmpstr (status, ==, "-ERR [AUTH] Authentication failed.");
  }
}

/* "-": the client's own password goes upstream (after the local secret matched it). */
static void
test_pass_through (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = pop3_login_status (fx, pop3, "passer", PASSER_PASSWORD);

    g_assert_cmpstr (status, ==, "+OK Logged in.");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 1 ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  {
    g_autoptr (PgTestImap) imap = imap_connect (fx);
    g_autofree gchar *status = imap_login_status (imap, "b1", "passer", PASSER_PASSWORD);

    g_assert_true (g_str_has_prefix (status, "b1 OK "));
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
  }
  g_assert_true (pg_test_popgate_wait_log (
      fx->popgate, "imap session started: user=passer upstream_user=" USER_PASSER, 10000));
}

/* Count the lines of `log` that contain both `a` and `b`. */
static guint
count_lines_with (const char *log, const char *a, const char *b)
{
  g_auto (GStrv) lines = g_strsplit (log, "\n", -1);
  guint n = 0;

  for (gsize i = 0; lines[i] != NULL; i++)
    if (strstr (lines[i], a) != NULL && (b == NULL || strstr (lines[i], b) != NULL))
      n++;
  return n;
}

/* An account on [upstream:second]: its mailbox (Other, two messages) and its
 * auth_mechanism = login, which the trace shows as LOGIN and never AUTHENTICATE. */
static void
test_named_upstream (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *log = NULL;
  guint authenticates_before = 0;

  log = pg_test_popgate_read_log (fx->popgate);
  authenticates_before = count_lines_with (log, "trace: U: ", " AUTHENTICATE ");
  g_clear_pointer (&log, g_free);
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = pop3_login_status (fx, pop3, "second", LOCAL_SECOND);

    g_assert_cmpstr (status, ==, "+OK Logged in.");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 2 ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  {
    g_autoptr (PgTestImap) imap = imap_connect (fx);
    g_autofree gchar *status = imap_login_status (imap, "c1", "second", LOCAL_SECOND);
    guint32 exists = 0;

    g_assert_true (g_str_has_prefix (status, "c1 OK "));
    g_assert_true (pg_test_imap_select (imap, "Other", TRUE, NULL, &exists, &error));
    g_assert_no_error (error);
    g_assert_cmpuint (exists, ==, 2);
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
  }
  g_assert_true (pg_test_popgate_wait_log (
      fx->popgate, "imap session started: user=second upstream_user=" USER_MAPPED, 10000));
  log = pg_test_popgate_read_log (fx->popgate);
  /* Two logins went up as LOGIN (the trace's reply line "U: tag LOGIN OK (n ms) ..."); none
   * of this test's went up as AUTHENTICATE although Dovecot offers AUTH=PLAIN. */
  g_assert_cmpuint (count_lines_with (log, "trace: U: ", " LOGIN OK "), ==, 2);
  g_assert_cmpuint (count_lines_with (log, "trace: U: ", " AUTHENTICATE "), ==,
                    authenticates_before);
}

/* A wrong local secret: [AUTH] / [AUTHENTICATIONFAILED], the same reply as an unknown user,
 * and the upstream is never contacted (this account's upstream is port 1: the right secret
 * gets [SYS/TEMP] / [UNAVAILABLE] there). */
static void
test_bad_local_secret (Fixture *fx, gconstpointer data)
{
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *wrong = pop3_login_status (fx, pop3, "gated", "not-" LOCAL_GATED);
    g_autofree gchar *unknown = pop3_login_status (fx, pop3, "nobody-here", "whatever");
    g_autofree gchar *wrong_mapped = pop3_login_status (fx, pop3, "mapped", "wrong");
    g_autofree gchar *right = pop3_login_status (fx, pop3, "gated", LOCAL_GATED);

    g_assert_cmpstr (wrong, ==, "-ERR [AUTH] Authentication failed.");
    g_assert_cmpstr (unknown, ==, wrong);
    g_assert_cmpstr (wrong_mapped, ==, wrong);
    g_assert_true (g_str_has_prefix (right, "-ERR [SYS/TEMP] "));
  }
  {
    g_autoptr (PgTestImap) imap = imap_connect (fx);
    g_autofree gchar *wrong = imap_login_status (imap, "d1", "gated", "not-" LOCAL_GATED);
    g_autofree gchar *unknown = imap_login_status (imap, "d1", "nobody-here", "whatever");
    g_autofree gchar *right = imap_login_status (imap, "d2", "gated#tag", LOCAL_GATED);

    g_assert_cmpstr (wrong, ==, "d1 NO [AUTHENTICATIONFAILED] Authentication failed.");
    g_assert_cmpstr (unknown, ==, wrong);
    g_assert_true (g_str_has_prefix (right, "d2 NO [UNAVAILABLE] "));
  }
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "wrong local secret", 10000));
}

/* Issue 19 item 8: failures from one address make the next failure's answer wait longer,
 * across connections (auth_failure_delay × 2^(n−1)), and a successful login from it
 * resets that. Read from popgate's own log line, not from the clock. */
static void
test_penalty (Fixture *fx, gconstpointer data)
{
  static const char *const expected[] = { "delay=20ms", "delay=40ms", "delay=80ms" };
  g_autofree gchar *log = NULL;
  const char *at = NULL;

  for (gsize i = 0; i < G_N_ELEMENTS (expected); i++)
    {
      g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
      g_autofree gchar *status = pop3_login_status (fx, pop3, "mapped", "not-the-password");

      g_assert_cmpstr (status, ==, "-ERR [AUTH] Authentication failed.");
    }
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = pop3_login_status (fx, pop3, "mapped", LOCAL_PASSWORD);

    /* The right password is never refused because of a penalty. */
    g_assert_true (g_str_has_prefix (status, "+OK"));
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = pop3_login_status (fx, pop3, "mapped", "not-the-password");

    g_assert_cmpstr (status, ==, "-ERR [AUTH] Authentication failed.");
  }
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "pop3 session ended", 10000));
  log = pg_test_popgate_read_log (fx->popgate);
  at = log;
  for (gsize i = 0; i < G_N_ELEMENTS (expected); i++)
    {
      at = strstr (at, "login failed: user=mapped ");
      g_assert_nonnull (at);
      g_assert_nonnull (strstr (at, expected[i]));
      g_assert_true (strstr (at, expected[i]) < strchr (at, '\n'));
      at = strchr (at, '\n');
    }
  /* After the success, the count starts again. */
  at = strstr (at, "login failed: user=mapped ");
  g_assert_nonnull (at);
  g_assert_true (strstr (at, "delay=20ms") != NULL
                 && strstr (at, "delay=20ms") < strchr (at, '\n'));
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  static const char message[] = "From: a@example.org\r\nSubject: login\r\n\r\nHello.\r\n";
  int rc;

  g_test_init (&argc, &argv, NULL);
  pg_log_init (PG_LOG_LEVEL_WARNING);
  g_test_add_func ("/popgate/login/tags", test_tags);
  g_test_add_func ("/popgate/login/sasl", test_sasl);
  g_test_add_func ("/popgate/login/counting", test_counting);
  g_test_add_func ("/popgate/login/fallback-to-login", test_fallback_to_login);
  g_test_add_func ("/popgate/login/no-fallback", test_no_fallback);
  g_test_add_func ("/popgate/login/local-secret", test_local_secret);
  g_test_add_func ("/popgate/login/oauth2-step", test_oauth2_step);
  g_test_add ("/popgate/login/mapped-account", Fixture, NULL, fixture_setup, test_mapped_account,
              fixture_teardown);
  g_test_add ("/popgate/login/pass-through", Fixture, NULL, fixture_setup, test_pass_through,
              fixture_teardown);
  g_test_add ("/popgate/login/named-upstream", Fixture, NULL, fixture_setup, test_named_upstream,
              fixture_teardown);
  g_test_add ("/popgate/login/penalty", Fixture, NULL, fixture_setup, test_penalty,
              fixture_teardown);
  g_test_add ("/popgate/login/bad-local-secret", Fixture, NULL, fixture_setup,
              test_bad_local_secret, fixture_teardown);

  dovecot = pg_test_dovecot_new (NULL, &error);
  g_assert_no_error (error);
  if (!pg_test_dovecot_add_user (dovecot, USER_MAPPED, UPSTREAM_PASSWORD, &error)
      || !pg_test_dovecot_add_user (dovecot, USER_PASSER, PASSER_PASSWORD, &error))
    g_error ("%s", error->message);
  if (!pg_test_dovecot_start (dovecot, &error))
    g_error ("cannot start Dovecot: %s", error->message);
  if (!pg_test_dovecot_append (dovecot, USER_MAPPED, "INBOX", message, strlen (message), &error)
      || !pg_test_dovecot_append (dovecot, USER_PASSER, "INBOX", message, strlen (message), &error)
      || !pg_test_dovecot_create_mailbox (dovecot, USER_MAPPED, "Other", &error)
      || !pg_test_dovecot_append (dovecot, USER_MAPPED, "Other", message, strlen (message), &error)
      || !pg_test_dovecot_append (dovecot, USER_MAPPED, "Other", message, strlen (message), &error))
    g_error ("%s", error->message);

  rc = g_test_run ();
  pg_test_dovecot_free (dovecot);
  return rc;
}
