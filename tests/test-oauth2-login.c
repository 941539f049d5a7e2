/* End-to-end tests of OAuth2 upstream accounts: the real popgate binary in front of a
 * real Dovecot whose oauth2 passdb asks a real authorization server (Authlib, tests/
 * oauth2-server.py) about each token. Old clients log in to popgate with a local password;
 * popgate gets access tokens from the server and logs in upstream with OAUTHBEARER or
 * XOAUTH2. popgate runs at -vv --trace, and every token the server issued is looked for
 * in its log at the end of each test.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-oauth2.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <glib/gstdio.h>
#include <string.h>

#define ALICE "alice@example.com"
#define SCANNER "scanner@example.com"
#define PUBLIC_CLIENT "popgate-public"
#define CLIENT "popgate-basic"
#define CLIENT_SECRET "basic-s3cret-Xy7"
#define LOCAL_USER "olduser"
#define LOCAL_PASSWORD "local-pw-4711"
#define SCANNER_USER "scanner"
#define SCANNER_PASSWORD "scan-pw-0815"
#define SHORT_LIFETIME 2
#define CONCURRENT 20
#define WAIT_MS 30000

#define MESSAGE                                                                                    \
  "From: sender@example.com\r\nTo: alice@example.com\r\nSubject: through OAuth2\r\n\r\n"           \
  "Hello from a mailbox that wants a token.\r\n"

typedef struct
{
  PgTestOAuth2Options server;
  const char *mechanism; /* oauth2_mechanism; NULL: auto */
  const char *grant;     /* oauth2_grant; NULL: refresh_token */
} Case;

typedef struct
{
  const Case *c;
  PgTestOAuth2 *oauth2;   /* owned */
  PgTestDovecot *dovecot; /* owned */
  PgTestPopgate *popgate; /* owned */
  gchar *token_file;      /* owned: alice's refresh token, in popgate's dir */
  GPtrArray *secrets;     /* owned: every token and secret; none may reach popgate's log */
} Fixture;

static void
write_private (const char *path, const char *text)
{
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (
      g_file_set_contents_full (path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error),
      error);
}

/* Every token the server has issued so far (GET /issued) goes into fixture->secrets. */
static void
remember_issued (Fixture *fx)
{
  g_autoptr (SoupSession) session = soup_session_new ();
  g_autofree gchar *url
      = g_strdup_printf ("http://%s:%u/issued", fx->oauth2->host, fx->oauth2->port);
  g_autoptr (SoupMessage) msg = soup_message_new ("GET", url);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = soup_session_send_and_read (session, msg, NULL, &error);
  g_autoptr (JsonParser) parser = json_parser_new ();
  JsonObject *object;
  const char *const kinds[] = { "access", "refresh" };

  g_assert_no_error (error);
  g_assert_cmpuint (soup_message_get_status (msg), ==, 200);
  PG_TEST_ASSERT_OK (json_parser_load_from_data (parser, g_bytes_get_data (body, NULL),
                                                 (gssize) g_bytes_get_size (body), &error),
                     error);
  object = json_node_get_object (json_parser_get_root (parser));
  for (gsize k = 0; k < G_N_ELEMENTS (kinds); k++)
    {
      JsonArray *array = json_object_get_array_member (object, kinds[k]);
      for (guint i = 0; i < json_array_get_length (array); i++)
        g_ptr_array_add (fx->secrets, g_strdup (json_array_get_string_element (array, i)));
    }
}

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  PgTestDovecotOptions dovecot_options = { 0 };
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh_token = NULL;
  g_autofree gchar *accounts = NULL;
  g_autofree gchar *accounts_file = NULL;
  g_autofree gchar *secret_file = NULL;

  fx->c = data;
  fx->secrets = g_ptr_array_new_with_free_func (g_free);
  g_ptr_array_add (fx->secrets, g_strdup (CLIENT_SECRET));
  g_ptr_array_add (fx->secrets, g_strdup (LOCAL_PASSWORD));
  g_ptr_array_add (fx->secrets, g_strdup (SCANNER_PASSWORD));

  fx->oauth2 = pg_test_oauth2_new (&fx->c->server, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_add_client (fx->oauth2, CLIENT, CLIENT_SECRET, NULL, SCANNER, &error), error);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_add_client (fx->oauth2, PUBLIC_CLIENT, NULL, NULL, NULL, &error), error);
  PG_TEST_ASSERT_OK (pg_test_oauth2_start (fx->oauth2, &error), error);

  dovecot_options.oauth2_introspection_url = fx->oauth2->introspection_url;
  fx->dovecot = pg_test_dovecot_new (&dovecot_options, &error);
  g_assert_no_error (error);
  /* Their passwords are never used: popgate logs in with tokens. */
  PG_TEST_ASSERT_OK (pg_test_dovecot_add_user (fx->dovecot, ALICE, "unused-Alice-1", &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_add_user (fx->dovecot, SCANNER, "unused-Scan-1", &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (fx->dovecot, &error), error);
  PG_TEST_ASSERT_OK (
      pg_test_dovecot_append (fx->dovecot, ALICE, "INBOX", MESSAGE, strlen (MESSAGE), &error),
      error);
  PG_TEST_ASSERT_OK (
      pg_test_dovecot_append (fx->dovecot, SCANNER, "INBOX", MESSAGE, strlen (MESSAGE), &error),
      error);

  fx->popgate = pg_test_popgate_new (fx->dovecot, "none", &error);
  g_assert_no_error (error);
  /* alice consented once (what --oauth2-authorize does); popgate keeps her refresh token. */
  refresh_token = pg_test_oauth2_code_login (fx->oauth2, CLIENT, ALICE, NULL, &error);
  g_assert_no_error (error);
  fx->token_file = g_build_filename (fx->popgate->dir, "alice.token", NULL);
  write_private (fx->token_file, refresh_token);
  secret_file = g_build_filename (fx->popgate->dir, "client.secret", NULL);
  write_private (secret_file, CLIENT_SECRET "\n");
  accounts_file = g_build_filename (fx->popgate->dir, "accounts", NULL);
  if (g_strcmp0 (fx->c->grant, "client_credentials") == 0)
    accounts
        = g_strdup ("# local-user local-secret upstream upstream-user credential\n" SCANNER_USER
                    " {PLAIN}" SCANNER_PASSWORD " default " SCANNER " oauth2\n");
  else
    accounts = g_strdup ("# local-user local-secret upstream upstream-user credential\n" LOCAL_USER
                         " {PLAIN}" LOCAL_PASSWORD " default " ALICE " oauth2:alice.token\n");
  write_private (accounts_file, accounts);

  pg_test_popgate_set (fx->popgate, "upstream", "auth", "oauth2");
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_token_url", fx->oauth2->token_url);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_client_id", CLIENT);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_client_secret_file", secret_file);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_mechanism", fx->c->mechanism);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_grant", fx->c->grant);
  pg_test_popgate_set (fx->popgate, "upstream", "timeout", "10s");
  pg_test_popgate_set (fx->popgate, "accounts", "file", accounts_file);
  pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "50ms");
  pg_test_popgate_set (fx->popgate, "limits", "max_sessions_per_address", "1000");
  pg_test_popgate_add_arg (fx->popgate, "-vv");
  pg_test_popgate_add_arg (fx->popgate, "--trace");
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  if (fx->oauth2 != NULL && pg_test_oauth2_get_pid (fx->oauth2) != 0)
    remember_issued (fx);
  if (fx->popgate != NULL)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);

      g_assert_cmpstr (log, !=, "");
      for (guint i = 0; i < fx->secrets->len; i++)
        {
          const char *secret = g_ptr_array_index (fx->secrets, i);
          if (secret != NULL && strlen (secret) >= 8 && strstr (log, secret) != NULL)
            g_test_fail_printf ("a token or secret (#%u) is in popgate's log", i);
        }
      /* Under ASan this is also the leak check of the sessions run. */
      pg_test_popgate_assert_clean_exit (fx->popgate);
    }
  g_clear_pointer (&fx->popgate, pg_test_popgate_free);
  g_clear_pointer (&fx->dovecot, pg_test_dovecot_free);
  g_clear_pointer (&fx->oauth2, pg_test_oauth2_free);
  g_free (fx->token_file);
  g_ptr_array_unref (fx->secrets);
}

/* --- clients ----------------------------------------------------------------------------- */

static PgTestPop3 *
pop3_connect (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);

  g_assert_no_error (error);
  return pop3;
}

/* USER/PASS; the PASS reply. */
static gchar *
pop3_login (Fixture *fx, const char *user, const char *password)
{
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *status = NULL;
  g_autoptr (GError) error = NULL;

  /* A -ERR is an error here too: the status line is what the tests look at. */
  (void) pg_test_pop3_login (pop3, user, password, &status, &error);
  g_assert_nonnull (status);
  if (g_getenv ("PG_TEST_SHOW_LOG") != NULL && !g_str_has_prefix (status, "+OK"))
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
      g_printerr ("%s\n", log);
    }
  if (g_str_has_prefix (status, "+OK"))
    {
      PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 1 ");
      {
        g_autofree gchar *retr_status = NULL;
        g_autoptr (GBytes) body = pg_test_pop3_retr (pop3, 1, &retr_status, &error);
        g_assert_no_error (error);
        g_assert_nonnull (g_strstr_len (g_bytes_get_data (body, NULL), g_bytes_get_size (body),
                                        "Subject: through OAuth2"));
      }
      PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
    }
  return g_steal_pointer (&status);
}

/* LOGIN; the tagged reply's status and text ("OK ...", "NO [...] ..."). */
static gchar *
imap_login (Fixture *fx, const char *user, const char *password)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap
      = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);
  g_autofree gchar *command = g_strdup_printf ("LOGIN %s %s", user, password);
  g_autofree gchar *status = NULL;
  g_autofree gchar *reply = NULL;
  const char *last;

  g_assert_no_error (error);
  reply = pg_test_imap_command_status (imap, command, &status, &error);
  g_assert_no_error (error);
  if (g_strcmp0 (status, "OK") == 0)
    {
      guint32 exists = 0;
      PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", TRUE, NULL, &exists, &error), error);
      g_assert_cmpuint (exists, ==, 1);
      PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
    }
  /* The tagged line is the last one: "TAG STATUS text". */
  g_strchomp (reply);
  last = strrchr (reply, '\n');
  last = last != NULL ? last + 1 : reply;
  last = strchr (last, ' ');
  g_assert_nonnull (last);
  return g_strdup (last + 1);
}

static gint64
refreshes (Fixture *fx)
{
  return pg_test_oauth2_get_stat (fx->oauth2, "token", "refresh_token");
}

static gboolean
log_has (Fixture *fx, const char *needle)
{
  return pg_test_popgate_wait_log (fx->popgate, needle, WAIT_MS);
}

static gboolean
popgate_answers (Fixture *fx)
{
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *capa = pg_test_pop3_cmd (pop3, "CAPA");

  return pg_test_popgate_get_pid (fx->popgate) != 0 && g_str_has_prefix (capa, "+OK");
}

/* --- cases ------------------------------------------------------------------------------- */

/* POP3 and IMAP through the local password; the token is shared by both sessions. */
static void
test_pop3_and_imap (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *pop3 = NULL;
  g_autofree gchar *imap = NULL;
  g_autofree gchar *again = NULL;
  g_autofree gchar *wrong = NULL;
  const char *mechanism = g_strcmp0 (fx->c->mechanism, "xoauth2") == 0 ? "XOAUTH2" : "OAUTHBEARER";
  g_autofree gchar *sent = g_strdup_printf ("AUTHENTICATE %s", mechanism);

  g_assert_cmpint (refreshes (fx), ==, 0);
  pop3 = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (pop3, "+OK"));
  g_assert_cmpint (refreshes (fx), ==, 1);
  imap = imap_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (imap, "OK"));
  again = pop3_login (fx, LOCAL_USER "#phone", LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (again, "+OK"));
  /* One refresh for three sessions; Dovecot checked the token at each login. */
  g_assert_cmpint (refreshes (fx), ==, 1);
  g_assert_cmpint (pg_test_oauth2_get_stat (fx->oauth2, "introspection_active", NULL), >=, 3);
  g_assert_true (log_has (fx, sent));
  g_assert_true (log_has (fx, "oauth2 refresh ok upstream=default account=" LOCAL_USER));
  /* The local password is checked by popgate, and a wrong one never reaches upstream. */
  wrong = pop3_login (fx, LOCAL_USER, "not-the-password");
  g_assert_true (g_str_has_prefix (wrong, "-ERR [AUTH]"));
  g_assert_cmpint (refreshes (fx), ==, 1);
}

typedef struct
{
  PgTestOAuth2 *oauth2;
  const char *token;
} Expiry;

static gboolean
expired_cb (gpointer user_data)
{
  Expiry *expiry = user_data;
  g_autoptr (GError) error = NULL;
  gboolean active = TRUE;

  PG_TEST_ASSERT_OK (
      pg_test_oauth2_introspect (expiry->oauth2, expiry->token, &active, NULL, &error), error);
  return !active;
}

/* Wait until every token issued before now has expired at the server: a token issued
 * now (client_credentials) is a clock that runs out no sooner than popgate's. */
static void
wait_expired (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *marker = pg_test_oauth2_client_credentials (fx->oauth2, CLIENT, &error);
  Expiry expiry = { fx->oauth2, marker };

  g_assert_no_error (error);
  g_assert_true (pg_test_wait_until (expired_cb, &expiry, WAIT_MS));
}

/* A refresh after expiry; then 20 logins at once at expiry cause one refresh. */
static void
test_expiry (Fixture *fx, gconstpointer data)
{
  PgTestPop3 *clients[CONCURRENT];
  g_autofree gchar *first = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_autofree gchar *second = NULL;

  g_assert_true (g_str_has_prefix (first, "+OK"));
  g_assert_cmpint (refreshes (fx), ==, 1);
  wait_expired (fx);
  second = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (second, "+OK"));
  g_assert_cmpint (refreshes (fx), ==, 2);

  wait_expired (fx);
  for (guint i = 0; i < CONCURRENT; i++)
    {
      /* One account, a client tag each: a session of its own on the mailbox. */
      g_autofree gchar *user = g_strdup_printf ("USER " LOCAL_USER "#c%u", i);
      clients[i] = pop3_connect (fx);
      PG_TEST_POP3_ASSERT_REPLY (clients[i], user, "+OK");
    }
  /* All the PASSes go out before any reply is read. */
  for (guint i = 0; i < CONCURRENT; i++)
    {
      g_autoptr (GError) error = NULL;
      const char pass[] = "PASS " LOCAL_PASSWORD "\r\n";
      PG_TEST_ASSERT_OK (pg_test_pop3_send (clients[i], pass, strlen (pass), &error), error);
    }
  for (guint i = 0; i < CONCURRENT; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *reply = pg_test_pop3_read_line (clients[i], &error);
      g_assert_no_error (error);
      if (!g_str_has_prefix (reply, "+OK"))
        {
          g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
          g_error ("login %u of %u: %s\n%s", i + 1, CONCURRENT, reply,
                   g_getenv ("PG_TEST_SHOW_LOG") != NULL ? log : "");
        }
      PG_TEST_POP3_ASSERT_REPLY (clients[i], "STAT", "+OK 1 ");
      PG_TEST_POP3_ASSERT_REPLY (clients[i], "QUIT", "+OK");
      pg_test_pop3_free (clients[i]);
    }
  g_assert_cmpint (refreshes (fx), ==, 3);
}

/* A rotated refresh token is written back (0600), and a restarted popgate uses it. */
static void
test_rotation (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *before = pg_test_read_file (fx->token_file);
  g_autofree gchar *after = NULL;
  g_autofree gchar *login = NULL;
  g_autofree gchar *restarted = NULL;
  g_autoptr (GError) error = NULL;
  GStatBuf st;

  login = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (login, "+OK"));
  after = pg_test_read_file (fx->token_file);
  g_assert_cmpstr (after, !=, before);
  g_assert_cmpuint (strlen (after), >, 16);
  g_assert_cmpint (g_stat (fx->token_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  g_assert_true (log_has (fx, "expires_in=3600 rotated"));
  /* The cache dies with the process; the old refresh token is dead at the server. */
  g_assert_true (pg_test_popgate_stop (fx->popgate));
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);
  restarted = imap_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (restarted, "OK"));
  g_assert_cmpint (refreshes (fx), ==, 2);
}

/* The user revoked popgate's access: [AUTH] / [AUTHENTICATIONFAILED] and a log line that
 * says what to do; popgate goes on serving. Also through the cached-token path: the
 * upstream refuses the (revoked) cached token, popgate refreshes once, and that fails. */
static void
test_revoked (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *refresh_token = g_strstrip (pg_test_read_file (fx->token_file));
  g_autofree gchar *ok = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_autofree gchar *pop3 = NULL;
  g_autofree gchar *imap = NULL;
  g_autoptr (GError) error = NULL;

  g_assert_true (g_str_has_prefix (ok, "+OK"));
  remember_issued (fx);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_revoke (fx->oauth2, CLIENT, refresh_token, "refresh_token", &error), error);
  pop3 = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (pop3, "-ERR [AUTH]"));
  g_assert_true (log_has (fx, "upstream refused the cached access token of " LOCAL_USER));
  g_assert_true (log_has (fx, "oauth2 refresh failed upstream=default account=" LOCAL_USER
                              " error=invalid_grant: run popgate --oauth2-authorize " LOCAL_USER));
  imap = imap_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (imap, "NO [AUTHENTICATIONFAILED]"));
  g_assert_true (popgate_answers (fx));
}

/* The token endpoint is slow, then stopped: a temporary failure for the client. */
static void
test_endpoint_down (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *slow = NULL;
  g_autofree gchar *pop3 = NULL;
  g_autofree gchar *imap = NULL;
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_delay (fx->oauth2, 15000, &error), error);
  pg_test_popgate_set (fx->popgate, "upstream", "timeout", "1s");
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (fx->popgate, &error), error);
  pg_test_popgate_reload (fx->popgate);
  g_assert_true (log_has (fx, "configuration reloaded"));
  slow = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (slow, "-ERR [SYS/TEMP]"));
  g_assert_true (log_has (fx, "token endpoint did not answer within 1000 ms"));

  remember_issued (fx);
  g_assert_true (pg_test_oauth2_stop (fx->oauth2));
  pop3 = pop3_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (pop3, "-ERR [SYS/TEMP]"));
  imap = imap_login (fx, LOCAL_USER, LOCAL_PASSWORD);
  g_assert_true (g_str_has_prefix (imap, "NO [UNAVAILABLE]"));
  g_assert_true (log_has (fx, "token endpoint unreachable"));
  g_assert_true (popgate_answers (fx));
}

/* An app-only account: client_credentials, no token file. */
static void
test_client_credentials (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *pop3 = pop3_login (fx, SCANNER_USER, SCANNER_PASSWORD);
  g_autofree gchar *imap = imap_login (fx, SCANNER_USER, SCANNER_PASSWORD);

  g_assert_true (g_str_has_prefix (pop3, "+OK"));
  g_assert_true (g_str_has_prefix (imap, "OK"));
  g_assert_cmpint (pg_test_oauth2_get_stat (fx->oauth2, "token", "client_credentials"), ==, 1);
  g_assert_cmpint (refreshes (fx), ==, 0);
}

/* popgate --oauth2-authorize: the device grant, approved by the "user" at the URI shown. */
static void
test_authorize_device (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *bob_file = g_build_filename (fx->popgate->dir, "bob.token", NULL);
  g_autofree gchar *accounts_file = g_build_filename (fx->popgate->dir, "accounts2", NULL);
  g_autofree gchar *output_file = g_build_filename (fx->popgate->dir, "authorize.out", NULL);
  g_autofree gchar *output = NULL;
  g_autofree gchar *written = NULL;
  const char *bin = g_getenv ("POPGATE_BIN");
  g_autoptr (PgTestProcess) process = NULL;
  g_autofree gchar *code = NULL;
  GStatBuf st;

  /* The token file must exist (mode 0600) for the accounts file to load: an empty one. */
  write_private (bob_file, "");
  write_private (accounts_file, "bob {PLAIN}bob-local default bob oauth2:bob.token\n");
  pg_test_popgate_set (fx->popgate, "accounts", "file", accounts_file);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_client_id", PUBLIC_CLIENT);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_client_secret_file", NULL);
  pg_test_popgate_set (fx->popgate, "upstream", "oauth2_device_url", fx->oauth2->device_url);
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (fx->popgate, &error), error);
  {
    const char *argv[]
        = { bin, "--config", fx->popgate->config_file, "--oauth2-authorize", "bob", NULL };
    process = pg_test_process_spawn (argv, output_file, &error);
    g_assert_no_error (error);
  }
  /* Read the user code from what popgate printed. */
  {
    gint64 deadline = g_get_monotonic_time () + WAIT_MS * 1000;
    while (code == NULL && g_get_monotonic_time () < deadline
           && !pg_test_process_has_exited (process))
      {
        g_autofree gchar *text = pg_test_read_file (output_file);
        const char *at = strstr (text, "enter the code ");
        if (at != NULL && strchr (at, '\n') != NULL)
          code = g_strndup (at + strlen ("enter the code "),
                            strcspn (at + strlen ("enter the code "), "\n"));
        else
          pg_test_process_wait (process, 20); /* a bounded wait, also noticing an exit */
      }
  }
  g_assert_nonnull (code);
  PG_TEST_ASSERT_OK (pg_test_oauth2_approve_device (fx->oauth2, code, "bob", &error), error);
  g_assert_true (pg_test_process_wait (process, WAIT_MS));
  g_assert_cmpint (pg_test_process_get_wait_status (process), ==, 0);
  output = pg_test_read_file (output_file);
  g_assert_nonnull (strstr (output, fx->oauth2->verification_url));
  g_assert_nonnull (strstr (output, "authorized"));
  written = g_strstrip (pg_test_read_file (bob_file));
  g_assert_cmpuint (strlen (written), >, 16);
  g_assert_null (strstr (output, written));
  g_assert_cmpint (g_stat (bob_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  /* The refresh token works: the server takes it from the public client. */
  {
    g_autofree gchar *access
        = pg_test_oauth2_refresh (fx->oauth2, PUBLIC_CLIENT, written, NULL, &error);
    g_assert_no_error (error);
    g_assert_nonnull (access);
  }
}

static const Case auto_case = { { 0 }, NULL, NULL };
static const Case xoauth2_case = { { 0 }, "xoauth2", NULL };
static const Case oauthbearer_case = { { 0 }, "oauthbearer", NULL };
static const Case short_case = { { .access_token_lifetime = SHORT_LIFETIME }, NULL, NULL };
static const Case rotating_case = { { .rotation = TRUE }, NULL, NULL };
static const Case app_case = { { 0 }, NULL, "client_credentials" };

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(path, c, func)                                                                         \
  g_test_add ("/popgate/oauth2-login/" path, Fixture, c, fixture_setup, func, fixture_teardown)
  ADD ("pop3-and-imap-auto", &auto_case, test_pop3_and_imap);
  ADD ("pop3-and-imap-xoauth2", &xoauth2_case, test_pop3_and_imap);
  ADD ("pop3-and-imap-oauthbearer", &oauthbearer_case, test_pop3_and_imap);
  ADD ("expiry-and-20-at-once", &short_case, test_expiry);
  ADD ("rotation", &rotating_case, test_rotation);
  ADD ("revoked", &auto_case, test_revoked);
  ADD ("endpoint-down", &auto_case, test_endpoint_down);
  ADD ("client-credentials", &app_case, test_client_credentials);
  ADD ("authorize-device", &auto_case, test_authorize_device);
  return g_test_run ();
}
