/* popgate tests — the OAuth2 fixtures themselves: the Authlib authorization server
 * (tests/oauth2-server.py) issues tokens through the real grants, and the Dovecot fixture
 * with oauth2_introspection_url accepts them for AUTHENTICATE XOAUTH2 and OAUTHBEARER —
 * and stops accepting them once they expire or are revoked.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-oauth2.h"

#include <errno.h>
#include <signal.h>

#define ALICE "alice@example.com"
#define BOB "bob"
#define SCANNER "scanner@example.com"
/* Client ids and secrets of unreserved characters (see pg_test_oauth2_post). */
#define PUBLIC_CLIENT "popgate-public"
#define BASIC_CLIENT "popgate-basic"
#define BASIC_SECRET "basic-s3cret-Xy7"
#define POST_CLIENT "popgate-post"
#define POST_SECRET "post-s3cret-Qz9"
/* Seconds an access token lives in the expiry test: long enough to log in once. */
#define SHORT_LIFETIME 2
/* The bounded wait for a token to expire (lifetime plus a loaded machine). */
#define EXPIRY_TIMEOUT_MS 30000
#define EXPIRY_POLL_US (100 * 1000)

typedef struct
{
  PgTestOAuth2 *oauth2;   /* owned */
  PgTestDovecot *dovecot; /* owned */
  GPtrArray *secrets;     /* owned: every token and secret seen; none may reach a log */
} Fixture;

static void
fixture_setup (Fixture *fixture, gconstpointer data)
{
  const PgTestOAuth2Options *options = data;
  PgTestDovecotOptions dovecot_options = { 0 };
  g_autoptr (GError) error = NULL;

  fixture->secrets = g_ptr_array_new_with_free_func (g_free);
  g_ptr_array_add (fixture->secrets, g_strdup (BASIC_SECRET));
  g_ptr_array_add (fixture->secrets, g_strdup (POST_SECRET));
  /* A missing dependency is a failure, never a skip: deps.sh installs both. */
  fixture->oauth2 = pg_test_oauth2_new (options, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_add_client (fixture->oauth2, PUBLIC_CLIENT, NULL, NULL, NULL, &error), error);
  PG_TEST_ASSERT_OK (pg_test_oauth2_add_client (fixture->oauth2, BASIC_CLIENT, BASIC_SECRET,
                                                "client_secret_basic", SCANNER, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_oauth2_start (fixture->oauth2, &error), error);
  /* After start: registered at run time through the admin endpoint. */
  PG_TEST_ASSERT_OK (pg_test_oauth2_add_client (fixture->oauth2, POST_CLIENT, POST_SECRET,
                                                "client_secret_post", SCANNER, &error),
                     error);

  dovecot_options.oauth2_introspection_url = fixture->oauth2->introspection_url;
  dovecot_options.oauth2_ca_file = fixture->oauth2->ca_file;
  fixture->dovecot = pg_test_dovecot_new (&dovecot_options, &error);
  g_assert_no_error (error);
  /* bob has a password too: the passwd-file passdb comes first and must not get in the
   * way of his tokens. */
  PG_TEST_ASSERT_OK (pg_test_dovecot_add_user (fixture->dovecot, BOB, "bob-password", &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (fixture->dovecot, &error), error);
}

static void
fixture_teardown (Fixture *fixture, gconstpointer data)
{
  if (fixture->oauth2 != NULL)
    {
      g_autofree gchar *log = pg_test_oauth2_read_log (fixture->oauth2);
      g_autofree gchar *dovecot_log
          = fixture->dovecot != NULL ? pg_test_dovecot_read_log (fixture->dovecot) : g_strdup ("");

      /* The server's request log holds what was asked, never a token or secret. */
      g_assert_cmpstr (log, !=, "");
      for (guint i = 0; i < fixture->secrets->len; i++)
        {
          const char *secret = g_ptr_array_index (fixture->secrets, i);

          if (strstr (log, secret) != NULL)
            g_test_fail_printf ("a token or secret (#%u) is in the OAuth2 server's log", i);
          if (strstr (dovecot_log, secret) != NULL)
            g_test_fail_printf ("a token or secret (#%u) is in Dovecot's log", i);
        }
    }
  g_clear_pointer (&fixture->dovecot, pg_test_dovecot_free);
  g_clear_pointer (&fixture->oauth2, pg_test_oauth2_free);
  g_clear_pointer (&fixture->secrets, g_ptr_array_unref);
}

/* Remember a token so that teardown checks the logs for it; returns it. */
static const char *
remember (Fixture *fixture, const char *token)
{
  g_assert_nonnull (token);
  g_assert_cmpuint (strlen (token), >=, 16);
  g_ptr_array_add (fixture->secrets, g_strdup (token));
  return token;
}

/* AUTHENTICATE against the fixture's Dovecot on a fresh connection. Returns TRUE for OK;
 * a NO must say [AUTHENTICATIONFAILED] (and carry the RFC 7628 error challenge). */
static gboolean
authenticate (Fixture *fixture, const char *mechanism, const char *user, const char *token)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autofree gchar *ir = NULL;
  g_autofree gchar *tagged = NULL;
  g_autofree gchar *challenge = NULL;
  gboolean ok = FALSE;

  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  if (g_strcmp0 (mechanism, "XOAUTH2") == 0)
    ir = pg_test_oauth2_sasl_xoauth2 (user, token);
  else
    ir = pg_test_oauth2_sasl_oauthbearer (user, fixture->dovecot->host, fixture->dovecot->imap_port,
                                          token);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_imap_authenticate (imap, mechanism, ir, &ok, &tagged, &challenge, &error),
      error);
  g_test_message ("AUTHENTICATE %s as %s: %.40s", mechanism, user, tagged);
  if (ok)
    {
      g_autofree gchar *selected = NULL;

      /* Really logged in: the mailbox opens. */
      selected = pg_test_imap_command (imap, "SELECT INBOX", &error);
      g_assert_no_error (error);
      g_assert_nonnull (selected);
      return TRUE;
    }
  g_assert_nonnull (strstr (tagged, "[AUTHENTICATIONFAILED]"));
  g_assert_nonnull (challenge);
  g_assert_nonnull (strstr (challenge, "\"status\""));
  return FALSE;
}

static gboolean
authenticate_both (Fixture *fixture, const char *user, const char *token)
{
  gboolean xoauth2 = authenticate (fixture, "XOAUTH2", user, token);
  gboolean oauthbearer = authenticate (fixture, "OAUTHBEARER", user, token);

  g_assert_cmpint (xoauth2, ==, oauthbearer);
  return xoauth2;
}

static gboolean
token_inactive (Fixture *fixture, const char *token)
{
  g_autoptr (GError) error = NULL;
  gboolean active = TRUE;

  PG_TEST_ASSERT_OK (pg_test_oauth2_introspect (fixture->oauth2, token, &active, NULL, &error),
                     error);
  return !active;
}

/* alice's refresh token through the device grant, and an access token refreshed from it
 * (out_access optional). */
static gchar *
login_alice (Fixture *fixture, gchar **out_access)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;

  refresh = pg_test_oauth2_device_login (fixture->oauth2, PUBLIC_CLIENT, ALICE, NULL, &error);
  g_assert_no_error (error);
  remember (fixture, refresh);
  if (out_access != NULL)
    {
      *out_access = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, refresh, NULL, &error);
      g_assert_no_error (error);
      remember (fixture, *out_access);
    }
  return g_steal_pointer (&refresh);
}

/* The refresh grant's error code for refresh_token, or NULL if it worked. */
static gchar *
refresh_error (Fixture *fixture, const char *client_id, const char *refresh_token)
{
  const char *form[] = { "grant_type", "refresh_token", "refresh_token", refresh_token, NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) answer = NULL;
  guint status = 0;

  answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, client_id, form,
                                &status, &error);
  g_assert_no_error (error);
  if (status == 200)
    {
      remember (fixture, json_object_get_string_member (answer, "access_token"));
      return NULL;
    }
  return g_strdup (json_object_get_string_member_with_default (answer, "error", "?"));
}

/* Device grant → refresh token → access token → both SASL mechanisms; another user's
 * name with that token is refused; the counts show one of each grant. */
static void
test_device_login (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *first_access = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *rotated = NULL;
  g_autofree gchar *username = NULL;
  gboolean active = FALSE;

  refresh
      = pg_test_oauth2_device_login (fixture->oauth2, PUBLIC_CLIENT, ALICE, &first_access, &error);
  g_assert_no_error (error);
  remember (fixture, refresh);
  remember (fixture, first_access);
  access = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, refresh, &rotated, &error);
  g_assert_no_error (error);
  remember (fixture, access);
  g_assert_cmpstr (access, !=, first_access);
  g_assert_null (rotated); /* rotation is off by default */

  PG_TEST_ASSERT_OK (
      pg_test_oauth2_introspect (fixture->oauth2, access, &active, &username, &error), error);
  g_assert_true (active);
  g_assert_cmpstr (username, ==, ALICE);

  g_assert_true (authenticate_both (fixture, ALICE, access));
  g_assert_true (authenticate (fixture, "XOAUTH2", ALICE, first_access));
  /* The token is alice's, not bob's; and a made-up token is nobody's. */
  g_assert_false (authenticate_both (fixture, BOB, access));
  g_assert_false (authenticate (fixture, "XOAUTH2", ALICE, "not-a-token-at-all-0123456789"));
  /* bob's password still works (the passwd-file passdb is untouched). */
  {
    g_autoptr (PgTestImap) imap
        = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);

    g_assert_no_error (error);
    PG_TEST_ASSERT_OK (pg_test_imap_login (imap, BOB, "bob-password", &error), error);
  }

  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "device_authorization", NULL), ==, 1);
  g_assert_cmpint (
      pg_test_oauth2_get_stat (fixture->oauth2, "token_ok", PG_TEST_OAUTH2_DEVICE_GRANT), ==, 1);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "token_ok", "refresh_token"), ==, 1);
  /* Dovecot asked the server once for each of the 6 token logins (force_introspection: no
   * cache), plus our own one; all but the made-up token were active (bob's were refused
   * for the username, not the token). */
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "introspection", NULL), ==, 7);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "introspection_active", NULL), ==, 6);
}

/* An expired access token is refused by Dovecot; a refresh gives one that works. */
static void
test_expiry (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *renewed = NULL;
  gint64 deadline = g_get_monotonic_time () + EXPIRY_TIMEOUT_MS * 1000;

  refresh = login_alice (fixture, &access);
  g_assert_true (authenticate_both (fixture, ALICE, access));

  /* Wait for the expiry itself (bounded), not a fixed time. */
  while (!token_inactive (fixture, access) && g_get_monotonic_time () < deadline)
    g_usleep (EXPIRY_POLL_US);
  g_assert_true (token_inactive (fixture, access));
  g_assert_false (authenticate_both (fixture, ALICE, access));

  renewed = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, refresh, NULL, &error);
  g_assert_no_error (error);
  remember (fixture, renewed);
  g_assert_true (authenticate (fixture, "OAUTHBEARER", ALICE, renewed));
}

/* A refresh token with a lifetime works until it ends, then it is invalid_grant (and
 * introspection calls it inactive). */
static void
test_refresh_expiry (Fixture *fixture, gconstpointer data)
{
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *code = NULL;
  gint64 deadline = g_get_monotonic_time () + EXPIRY_TIMEOUT_MS * 1000;

  refresh = login_alice (fixture, NULL);
  g_assert_false (token_inactive (fixture, refresh));
  code = refresh_error (fixture, PUBLIC_CLIENT, refresh);
  g_assert_null (code);
  /* Wait for the end itself (bounded), refreshing all along. */
  while (code == NULL && g_get_monotonic_time () < deadline)
    {
      g_usleep (EXPIRY_POLL_US);
      code = refresh_error (fixture, PUBLIC_CLIENT, refresh);
    }
  g_assert_cmpstr (code, ==, "invalid_grant");
  g_assert_true (token_inactive (fixture, refresh));
}

/* RFC 7009: a revoked refresh token gets invalid_grant; its access tokens end with it. */
static void
test_revoke (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *code = NULL;
  g_autofree gchar *failed = NULL;

  refresh = login_alice (fixture, &access);
  g_assert_true (authenticate (fixture, "XOAUTH2", ALICE, access));

  /* Another client may not revoke it (RFC 7009 2.1: silently ignored). */
  PG_TEST_ASSERT_OK (pg_test_oauth2_revoke (fixture->oauth2, BASIC_CLIENT, refresh, NULL, &error),
                     error);
  g_assert_true (authenticate (fixture, "XOAUTH2", ALICE, access));

  PG_TEST_ASSERT_OK (
      pg_test_oauth2_revoke (fixture->oauth2, PUBLIC_CLIENT, refresh, "refresh_token", &error),
      error);
  code = refresh_error (fixture, PUBLIC_CLIENT, refresh);
  g_assert_cmpstr (code, ==, "invalid_grant");
  failed = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, refresh, NULL, &error);
  g_assert_null (failed);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED);
  g_assert_true (g_str_has_prefix (error->message, "invalid_grant"));
  g_assert_true (token_inactive (fixture, access));
  g_assert_false (authenticate_both (fixture, ALICE, access));
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "revocation", NULL), ==, 2);
}

/* With rotation a refresh hands out a new refresh token and the old one is dead; without,
 * the same refresh token keeps working. Switchable at run time. */
static void
test_rotation (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *rotated = NULL;
  g_autofree gchar *again = NULL;
  g_autofree gchar *code = NULL;
  g_autofree gchar *kept = NULL;

  refresh = login_alice (fixture, NULL);
  PG_TEST_ASSERT_OK (pg_test_oauth2_set_rotation (fixture->oauth2, TRUE, &error), error);
  access = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, refresh, &rotated, &error);
  g_assert_no_error (error);
  remember (fixture, access);
  remember (fixture, rotated);
  g_assert_cmpstr (rotated, !=, refresh);
  code = refresh_error (fixture, PUBLIC_CLIENT, refresh);
  g_assert_cmpstr (code, ==, "invalid_grant");
  /* The access token from the rotating refresh is good. */
  g_assert_true (authenticate (fixture, "OAUTHBEARER", ALICE, access));

  PG_TEST_ASSERT_OK (pg_test_oauth2_set_rotation (fixture->oauth2, FALSE, &error), error);
  again = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, rotated, &kept, &error);
  g_assert_no_error (error);
  remember (fixture, again);
  g_assert_null (kept);
  g_assert_null (refresh_error (fixture, PUBLIC_CLIENT, rotated));
}

/* client_credentials: an app-only token, Dovecot takes it for the client's mailbox user;
 * client_secret_basic and client_secret_post both work; bad secrets do not. */
static void
test_client_credentials (Fixture *fixture, gconstpointer data)
{
  const char *form[] = { "grant_type", "client_credentials", NULL };
  g_autoptr (GError) error = NULL;
  g_autofree gchar *basic = NULL;
  g_autofree gchar *post = NULL;
  g_autofree gchar *public_token = NULL;
  g_autoptr (JsonObject) answer = NULL;
  guint status = 0;

  basic = pg_test_oauth2_client_credentials (fixture->oauth2, BASIC_CLIENT, &error);
  g_assert_no_error (error);
  remember (fixture, basic);
  post = pg_test_oauth2_client_credentials (fixture->oauth2, POST_CLIENT, &error);
  g_assert_no_error (error);
  remember (fixture, post);
  g_assert_true (authenticate_both (fixture, SCANNER, basic));
  g_assert_true (authenticate (fixture, "XOAUTH2", SCANNER, post));
  g_assert_false (authenticate (fixture, "XOAUTH2", ALICE, basic));

  /* A public client has no credentials to show. */
  public_token = pg_test_oauth2_client_credentials (fixture->oauth2, PUBLIC_CLIENT, &error);
  g_assert_null (public_token);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED);
  g_test_message ("public client_credentials: %s", error->message);
  g_clear_error (&error);

  /* A wrong secret: 401 invalid_client, as Authlib answers client_secret_basic. */
  PG_TEST_ASSERT_OK (pg_test_oauth2_add_client (fixture->oauth2, "popgate-wrong", "wrong-secret",
                                                NULL, SCANNER, &error),
                     error);
  g_hash_table_replace (fixture->oauth2->secrets, g_strdup ("popgate-wrong"),
                        g_strdup ("not-the-secret"));
  answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, "popgate-wrong", form,
                                &status, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (status, ==, 401);
  g_assert_cmpstr (json_object_get_string_member (answer, "error"), ==, "invalid_client");
  g_clear_pointer (&answer, json_object_unref);

  /* No client at all, and a grant the server does not know. */
  answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, NULL, form, &status,
                                &error);
  g_assert_no_error (error);
  g_assert_cmpstr (json_object_get_string_member (answer, "error"), ==, "invalid_client");
  g_clear_pointer (&answer, json_object_unref);
  {
    const char *password[] = { "grant_type", "password", "username", ALICE, "password", "x", NULL };

    answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, BASIC_CLIENT,
                                  password, &status, &error);
    g_assert_no_error (error);
    g_assert_cmpuint (status, ==, 400);
    g_assert_cmpstr (json_object_get_string_member (answer, "error"), ==, "unsupported_grant_type");
  }
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "token_ok", "client_credentials"), ==,
                   2);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "token_error", "client_credentials"),
                   ==, 3);
}

/* The device grant's polling answers (RFC 8628 3.5): authorization_pending, slow_down,
 * access_denied and expired_token. */
static void
test_device_errors (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint status = 0;
  const char *codes[] = { "authorization_pending", "slow_down", "access_denied" };
  g_autoptr (JsonObject) device = NULL;
  g_autoptr (JsonObject) second = NULL;
  gint64 deadline = g_get_monotonic_time () + EXPIRY_TIMEOUT_MS * 1000;
  g_autofree gchar *last = NULL;

  device = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->device_url, PUBLIC_CLIENT, NULL,
                                &status, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (status, ==, 200);
  remember (fixture, json_object_get_string_member (device, "device_code"));
  for (gsize i = 0; i < G_N_ELEMENTS (codes); i++)
    {
      const char *form[] = { "grant_type", PG_TEST_OAUTH2_DEVICE_GRANT, "device_code",
                             json_object_get_string_member (device, "device_code"), NULL };
      g_autoptr (JsonObject) answer = NULL;

      if (g_str_equal (codes[i], "access_denied"))
        PG_TEST_ASSERT_OK (
            pg_test_oauth2_approve_device (
                fixture->oauth2, json_object_get_string_member (device, "user_code"), NULL, &error),
            error);
      /* The second poll comes sooner than the interval (10 s here): slow_down. */
      answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, PUBLIC_CLIENT,
                                    form, &status, &error);
      g_assert_no_error (error);
      g_assert_cmpuint (status, ==, 400);
      g_assert_cmpstr (json_object_get_string_member (answer, "error"), ==, codes[i]);
    }

  /* A code nobody approves expires (device_code_lifetime 1 s). */
  second = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->device_url, PUBLIC_CLIENT, NULL,
                                &status, &error);
  g_assert_no_error (error);
  remember (fixture, json_object_get_string_member (second, "device_code"));
  while (g_strcmp0 (last, "expired_token") != 0 && g_get_monotonic_time () < deadline)
    {
      const char *form[] = { "grant_type", PG_TEST_OAUTH2_DEVICE_GRANT, "device_code",
                             json_object_get_string_member (second, "device_code"), NULL };
      g_autoptr (JsonObject) answer = NULL;

      g_usleep (EXPIRY_POLL_US);
      answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, PUBLIC_CLIENT,
                                    form, &status, &error);
      g_assert_no_error (error);
      g_free (last);
      last = g_strdup (json_object_get_string_member_with_default (answer, "error", "none"));
      g_assert_true (g_str_equal (last, "authorization_pending") || g_str_equal (last, "slow_down")
                     || g_str_equal (last, "expired_token"));
    }
  g_assert_cmpstr (last, ==, "expired_token");
}

/* Authorization code with PKCE S256 and a loopback redirect; a wrong verifier is refused. */
static void
test_code_pkce (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *from_confidential = NULL;

  refresh = pg_test_oauth2_code_login (fixture->oauth2, PUBLIC_CLIENT, ALICE, &access, &error);
  g_assert_no_error (error);
  remember (fixture, refresh);
  remember (fixture, access);
  g_assert_true (authenticate (fixture, "XOAUTH2", ALICE, access));
  from_confidential = pg_test_oauth2_code_login (fixture->oauth2, BASIC_CLIENT, BOB, NULL, &error);
  g_assert_no_error (error);
  remember (fixture, from_confidential);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "token_ok", "authorization_code"), ==,
                   2);
}

/* https: the fixture and Dovecot verify the server against the fixture's CA; a client
 * without that CA is refused by TLS, not by OAuth. */
static void
test_tls (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = NULL;
  g_autoptr (SoupSession) stranger = soup_session_new ();
  g_autoptr (SoupMessage) msg = NULL;
  g_autoptr (GBytes) body = NULL;

  g_assert_true (g_str_has_prefix (fixture->oauth2->token_url, "https://127.0.0.1:"));
  g_assert_nonnull (fixture->oauth2->ca_file);
  refresh = login_alice (fixture, &access);
  g_assert_true (authenticate_both (fixture, ALICE, access));

  msg = soup_message_new ("GET", fixture->oauth2->token_url);
  body = soup_session_send_and_read (stranger, msg, NULL, &error);
  g_assert_null (body);
  g_assert_error (error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
}

#define CONCURRENT_LOGINS 20

/* Many logins at once: Dovecot's introspections reach the threaded server concurrently
 * and each is answered (one each: force_introspection), and one refresh stays one. */
static void
test_concurrent (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *ir = NULL;
  g_autofree gchar *command = NULL;
  PgTestImap *imaps[CONCURRENT_LOGINS] = { NULL };
  gint64 before = 0;

  refresh = login_alice (fixture, &access);
  ir = pg_test_oauth2_sasl_xoauth2 (ALICE, access);
  command = g_strdup_printf ("c1 AUTHENTICATE XOAUTH2 %s\r\n", ir);
  before = pg_test_oauth2_get_stat (fixture->oauth2, "introspection", NULL);
  /* Every command is out before any answer is read. */
  for (guint i = 0; i < CONCURRENT_LOGINS; i++)
    {
      imaps[i] = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL,
                                       &error);
      g_assert_no_error (error);
    }
  for (guint i = 0; i < CONCURRENT_LOGINS; i++)
    PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imaps[i], command, strlen (command), &error), error);
  for (guint i = 0; i < CONCURRENT_LOGINS; i++)
    {
      g_autofree gchar *line = NULL;

      do
        {
          g_clear_pointer (&line, g_free);
          line = pg_test_imap_read_line (imaps[i], &error);
          g_assert_no_error (error);
        }
      while (g_str_has_prefix (line, "* "));
      g_assert_true (g_str_has_prefix (line, "c1 OK"));
      pg_test_imap_free (imaps[i]);
    }
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "introspection", NULL) - before, ==,
                   CONCURRENT_LOGINS);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "token", "refresh_token"), ==, 1);
}

/* Stopped, the token endpoint refuses connections; started again it is on the same port
 * (the URLs popgate was given stay right) but has forgotten every token. */
static void
test_restart (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *again = NULL;
  g_autofree gchar *access = NULL;
  g_autofree gchar *token_url = g_strdup (fixture->oauth2->token_url);
  g_autofree gchar *code = NULL;
  GPid pid = 0;

  refresh = login_alice (fixture, NULL);
  pid = pg_test_oauth2_get_pid (fixture->oauth2);
  g_assert_cmpint (pid, >, 0);
  g_assert_true (pg_test_oauth2_stop (fixture->oauth2));
  g_assert_cmpint (pg_test_oauth2_get_pid (fixture->oauth2), ==, 0);
  g_assert_cmpint (kill (pid, 0), ==, -1);
  access = pg_test_oauth2_refresh (fixture->oauth2, PUBLIC_CLIENT, refresh, NULL, &error);
  g_assert_null (access);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED);
  g_clear_error (&error);

  PG_TEST_ASSERT_OK (pg_test_oauth2_start (fixture->oauth2, &error), error);
  g_assert_cmpstr (fixture->oauth2->token_url, ==, token_url);
  code = refresh_error (fixture, PUBLIC_CLIENT, refresh);
  g_assert_cmpstr (code, ==, "invalid_grant");
  /* The clients were kept: a new login works, also for the one added at run time. */
  again = login_alice (fixture, &access);
  g_assert_true (authenticate (fixture, "XOAUTH2", ALICE, access));
  g_clear_pointer (&access, g_free);
  access = pg_test_oauth2_client_credentials (fixture->oauth2, POST_CLIENT, &error);
  g_assert_no_error (error);
  remember (fixture, access);
}

#define MAIL_SCOPE "https://mail.example.com/"

/* A scope asked for in the device grant is granted, kept through refreshes, and a wider
 * one on refresh is invalid_scope (RFC 6749 6). */
static void
test_scope (Fixture *fixture, gconstpointer data)
{
  const char *ask[] = { "scope", MAIL_SCOPE " offline_access", NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) device = NULL;
  g_autoptr (JsonObject) token = NULL;
  g_autoptr (JsonObject) refreshed = NULL;
  g_autoptr (JsonObject) wider = NULL;
  guint status = 0;

  device = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->device_url, PUBLIC_CLIENT, ask,
                                &status, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (status, ==, 200);
  remember (fixture, json_object_get_string_member (device, "device_code"));
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_approve_device (
          fixture->oauth2, json_object_get_string_member (device, "user_code"), ALICE, &error),
      error);
  {
    const char *form[] = { "grant_type", PG_TEST_OAUTH2_DEVICE_GRANT, "device_code",
                           json_object_get_string_member (device, "device_code"), NULL };

    token = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, PUBLIC_CLIENT, form,
                                 &status, &error);
  }
  g_assert_no_error (error);
  g_assert_cmpuint (status, ==, 200);
  remember (fixture, json_object_get_string_member (token, "access_token"));
  remember (fixture, json_object_get_string_member (token, "refresh_token"));
  g_assert_cmpstr (json_object_get_string_member (token, "scope"), ==,
                   MAIL_SCOPE " offline_access");
  {
    const char *form[] = { "grant_type",
                           "refresh_token",
                           "refresh_token",
                           json_object_get_string_member (token, "refresh_token"),
                           "scope",
                           MAIL_SCOPE,
                           NULL };
    const char *more[] = { "grant_type",
                           "refresh_token",
                           "refresh_token",
                           json_object_get_string_member (token, "refresh_token"),
                           "scope",
                           MAIL_SCOPE " admin",
                           NULL };

    refreshed = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, PUBLIC_CLIENT,
                                     form, &status, &error);
    g_assert_no_error (error);
    g_assert_cmpuint (status, ==, 200);
    remember (fixture, json_object_get_string_member (refreshed, "access_token"));
    g_assert_cmpstr (json_object_get_string_member (refreshed, "scope"), ==, MAIL_SCOPE);
    wider = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, PUBLIC_CLIENT, more,
                                 &status, &error);
    g_assert_no_error (error);
    g_assert_cmpuint (status, ==, 400);
    g_assert_cmpstr (json_object_get_string_member (wider, "error"), ==, "invalid_scope");
  }
  g_assert_true (authenticate (fixture, "XOAUTH2", ALICE,
                               json_object_get_string_member (refreshed, "access_token")));
}

/* A restart that cannot bind its port says so, with the server's own words, and leaves
 * no process behind. */
static void
test_start_failure (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocketListener) squatter = g_socket_listener_new ();
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address = NULL;
  guint16 port = fixture->oauth2->port;

  PG_TEST_ASSERT_OK (pg_test_oauth2_stop (fixture->oauth2), error);
  address = g_inet_socket_address_new (loopback, port);
  PG_TEST_ASSERT_OK (g_socket_listener_add_address (squatter, address, G_SOCKET_TYPE_STREAM,
                                                    G_SOCKET_PROTOCOL_TCP, NULL, NULL, &error),
                     error);
  g_assert_false (pg_test_oauth2_start (fixture->oauth2, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_FAILED);
  g_test_message ("%s", error->message);
  g_assert_nonnull (strstr (error->message, "did not start"));
  g_assert_nonnull (strstr (error->message, "Address already in use"));
  g_assert_cmpint (pg_test_oauth2_get_pid (fixture->oauth2), ==, 0);
  g_clear_error (&error);

  g_socket_listener_close (squatter);
  PG_TEST_ASSERT_OK (pg_test_oauth2_start (fixture->oauth2, &error), error);
  g_assert_cmpuint (fixture->oauth2->port, ==, port);
  g_free (login_alice (fixture, NULL));
}

#define TOKEN_DELAY_MS 400

/* A slow token endpoint answers no sooner than asked; a broken one answers 503 and
 * temporarily_unavailable; both recover. */
static void
test_slow_and_broken (Fixture *fixture, gconstpointer data)
{
  const char *form[] = { "grant_type", "client_credentials", NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) answer = NULL;
  g_autofree gchar *slow = NULL;
  g_autofree gchar *fine = NULL;
  gint64 start = 0;
  guint status = 0;

  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_delay (fixture->oauth2, TOKEN_DELAY_MS, &error),
                     error);
  start = g_get_monotonic_time ();
  slow = pg_test_oauth2_client_credentials (fixture->oauth2, BASIC_CLIENT, &error);
  g_assert_no_error (error);
  remember (fixture, slow);
  /* A lower bound only: the server slept at least that long before answering. */
  g_assert_cmpint (g_get_monotonic_time () - start, >=, TOKEN_DELAY_MS * 1000);
  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_delay (fixture->oauth2, 0, &error), error);

  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_failure (fixture->oauth2, 503, &error), error);
  answer = pg_test_oauth2_post (fixture->oauth2, fixture->oauth2->token_url, BASIC_CLIENT, form,
                                &status, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (status, ==, 503);
  g_assert_cmpstr (json_object_get_string_member (answer, "error"), ==, "temporarily_unavailable");
  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_failure (fixture->oauth2, 0, &error), error);
  fine = pg_test_oauth2_client_credentials (fixture->oauth2, BASIC_CLIENT, &error);
  g_assert_no_error (error);
  remember (fixture, fine);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->oauth2, "token_error", "client_credentials"),
                   ==, 1);
}

int
main (int argc, char **argv)
{
  static const PgTestOAuth2Options defaults = { 0 };
  static const PgTestOAuth2Options short_lived = { .access_token_lifetime = SHORT_LIFETIME };
  static const PgTestOAuth2Options device = { .device_interval = 10, .device_code_lifetime = 1 };
  static const PgTestOAuth2Options tls = { .tls = TRUE };
  static const PgTestOAuth2Options short_refresh = { .refresh_token_lifetime = SHORT_LIFETIME };

  g_test_init (&argc, &argv, NULL);
  g_test_add ("/popgate/oauth2-fixture/device-login", Fixture, &defaults, fixture_setup,
              test_device_login, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/expiry", Fixture, &short_lived, fixture_setup, test_expiry,
              fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/refresh-expiry", Fixture, &short_refresh, fixture_setup,
              test_refresh_expiry, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/revoke", Fixture, &defaults, fixture_setup, test_revoke,
              fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/rotation", Fixture, &defaults, fixture_setup, test_rotation,
              fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/client-credentials", Fixture, &defaults, fixture_setup,
              test_client_credentials, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/device-errors", Fixture, &device, fixture_setup,
              test_device_errors, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/code-pkce", Fixture, &defaults, fixture_setup,
              test_code_pkce, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/tls", Fixture, &tls, fixture_setup, test_tls,
              fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/concurrent", Fixture, &defaults, fixture_setup,
              test_concurrent, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/restart", Fixture, &defaults, fixture_setup, test_restart,
              fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/scope", Fixture, &defaults, fixture_setup, test_scope,
              fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/start-failure", Fixture, &defaults, fixture_setup,
              test_start_failure, fixture_teardown);
  g_test_add ("/popgate/oauth2-fixture/slow-and-broken", Fixture, &defaults, fixture_setup,
              test_slow_and_broken, fixture_teardown);
  return g_test_run ();
}
