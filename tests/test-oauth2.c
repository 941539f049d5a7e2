/* Tests for src/oauth2: the SASL initial responses (exact bytes), the metrics, and the
 * token manager against the real authorization server (tests/pg-test-oauth2.c).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-oauth2.h"
#include "pg-test-peer.h"
#include "pg-test-util.h"

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-oauth2.h"
#include "popgate/pg-upstream.h"

#include <glib/gstdio.h>
#include <libsoup/soup.h>
#include <string.h>

/* Every wait in this file is bounded by this. */
#define PG_TEST_DEADLINE_MS 20000

/* --- log capture: tokens must never reach a log line -------------------------------------- */

static GString *pg_test_log; /* everything logged, one line per message */

static GLogWriterOutput
pg_test_log_writer_cb (GLogLevelFlags level, const GLogField *fields, gsize n_fields,
                       gpointer user_data)
{
  for (gsize i = 0; i < n_fields; i++)
    if (g_strcmp0 (fields[i].key, "MESSAGE") == 0)
      {
        g_string_append_printf (pg_test_log, "%s\n", (const char *) fields[i].value);
        if (g_getenv ("PG_TEST_SHOW_LOG") != NULL)
          g_printerr ("# %s\n", (const char *) fields[i].value);
      }
  if (level & (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_ERROR))
    return g_log_writer_default (level, fields, n_fields, user_data);
  return G_LOG_WRITER_HANDLED;
}

typedef struct
{
  gboolean done;
  gboolean ok;
  GError *error;
  PgSecret *token;
} PgTestResult;

static void
pg_test_result_clear (PgTestResult *result)
{
  g_clear_error (&result->error);
  g_clear_pointer (&result->token, pg_secret_free);
  result->done = result->ok = FALSE;
}

static void
pg_test_upstream_bool_cb (GObject *source, GAsyncResult *res, gpointer user_data)
{
  PgTestResult *result = user_data;

  result->ok = g_task_propagate_boolean (G_TASK (res), &result->error);
  result->done = TRUE;
}

/* Decode `b64` and compare it with `expected` byte for byte. */
static void
pg_test_oauth2_assert_b64 (const char *b64, const char *expected, gsize expected_len)
{
  gsize len = 0;
  g_autofree guchar *raw = g_base64_decode (b64, &len);

  g_assert_cmpmem (raw, len, expected, expected_len);
}

static void
pg_test_oauth2_xoauth2 (void)
{
  static const char expected[] = "user=alice@example.com\001auth=Bearer ya29.abc-DEF_1\001\001";
  g_autoptr (PgSecret) b64 = pg_oauth2_sasl_xoauth2 ("alice@example.com", "ya29.abc-DEF_1");

  pg_test_oauth2_assert_b64 (b64, expected, sizeof expected - 1);
  /* The example of Google's XOAUTH2 documentation, byte for byte. */
  {
    g_autoptr (PgSecret) google = pg_oauth2_sasl_xoauth2 (
        "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
    g_assert_cmpstr (google, ==,
                     "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRj"
                     "Mk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==");
  }
}

static void
pg_test_oauth2_oauthbearer (void)
{
  /* RFC 7628 §4.1's example, byte for byte. */
  static const char rfc[] = "n,a=user@example.com,\001host=server.example.com\001port=143\001"
                            "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\001\001";
  g_autoptr (PgSecret) b64 = pg_oauth2_sasl_oauthbearer (
      "user@example.com", "server.example.com", 143, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");

  pg_test_oauth2_assert_b64 (b64, rfc, sizeof rfc - 1);
}

static void
pg_test_oauth2_oauthbearer_escaping (void)
{
  /* RFC 5801 §4 / RFC 7628 §3.1: ',' → "=2C" and '=' → "=3D" in the authzid. */
  static const char expected[] = "n,a=a=2Cb=3Dc=3D=2C,\001host=127.0.0.1\001port=10143\001"
                                 "auth=Bearer t\001\001";
  g_autoptr (PgSecret) b64 = pg_oauth2_sasl_oauthbearer ("a,b=c=,", "127.0.0.1", 10143, "t");

  pg_test_oauth2_assert_b64 (b64, expected, sizeof expected - 1);
}

static void
pg_test_oauth2_metrics (void)
{
  g_autofree gchar *text = NULL;

  pg_metrics_reset ();
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", TRUE), ==, 0);
  pg_metrics_oauth2_refresh ("m365", TRUE);
  pg_metrics_oauth2_refresh ("gmail", FALSE);
  pg_metrics_oauth2_refresh ("m365", TRUE);
  pg_metrics_upstream_login (PG_METRICS_MECHANISM_OAUTHBEARER);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", TRUE), ==, 2);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", FALSE), ==, 0);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("gmail", FALSE), ==, 1);
  text = pg_metrics_render (PG_METRICS_FORMAT_OPENMETRICS, NULL);
  g_assert_nonnull (
      strstr (text, "popgate_oauth2_refreshes_total{upstream=\"m365\",result=\"ok\"} 2\n"));
  g_assert_nonnull (
      strstr (text, "popgate_oauth2_refreshes_total{upstream=\"gmail\",result=\"failed\"} 1\n"));
  g_assert_nonnull (strstr (text, "popgate_upstream_logins_total{mechanism=\"oauthbearer\"} 1\n"));
  g_assert_nonnull (strstr (text, "popgate_upstream_logins_total{mechanism=\"plain\"} 0\n"));
  /* One family, not one per name. */
  g_assert_nonnull (strstr (text, "# TYPE popgate_oauth2_refreshes counter\n"));
  g_assert_null (strstr (strstr (text, "# TYPE popgate_oauth2_refreshes counter\n") + 1,
                         "# TYPE popgate_oauth2_refreshes counter\n"));
  /* Past the limit, names share "other". */
  for (guint i = 0; i < 40; i++)
    {
      g_autofree gchar *name = g_strdup_printf ("u%u", i);
      pg_metrics_oauth2_refresh (name, TRUE);
    }
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("other", TRUE), ==, 40 - 30 + 1);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", TRUE), ==, 2);
  pg_metrics_shutdown ();
}

/* --- upstream SASL against the scripted peer -------------------------------------------- */

static PgUpstream *
pg_test_peer_upstream (PgTestPeer *peer)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text = g_strdup_printf (
      "[pop3]\nlisten = 127.0.0.1:1110\n[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n",
      pg_test_peer_get_port (peer));
  g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "test", &error);
  PgUpstream *upstream;
  PgTestResult result = { 0 };

  g_assert_no_error (error);
  upstream = pg_upstream_new (config, &config->upstream, 21);
  pg_upstream_connect_async (upstream, NULL, pg_test_upstream_bool_cb, &result);
  pg_test_wait_flag (&result.done);
  g_assert_no_error (result.error);
  return upstream;
}

/* Authenticate with `mechanism` against `script`: the result in *result, what the peer
 * got in *out_received and the initial response popgate had to send in *out_ir. */
static void
pg_test_peer_authenticate (const PgTestPeerStep *script, PgOAuth2Mechanism mechanism,
                           PgTestResult *result, gchar **out_received, gchar **out_ir)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new (script, &error);
  g_autoptr (PgUpstream) upstream = NULL;

  g_assert_no_error (error);
  upstream = pg_test_peer_upstream (peer);
  pg_upstream_authenticate_oauth2_async (upstream, mechanism, "alice@example.com", "tok-SECRET-123",
                                         NULL, pg_test_upstream_bool_cb, result);
  pg_test_wait_flag (&result->done);
  g_assert_true (pg_test_peer_wait_finished (peer, PG_TEST_DEADLINE_MS));
  g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
  *out_received = pg_test_peer_get_received (peer);
  if (strstr (*out_received, "OAUTHBEARER") != NULL)
    *out_ir = pg_oauth2_sasl_oauthbearer ("alice@example.com", "127.0.0.1",
                                          pg_test_peer_get_port (peer), "tok-SECRET-123");
  else
    *out_ir = pg_oauth2_sasl_xoauth2 ("alice@example.com", "tok-SECRET-123");
  pg_upstream_close (upstream);
}

/* {"status":"invalid_token","scope":"mail","openid-configuration":"https://x/"} */
#define PG_TEST_CHALLENGE                                                                          \
  "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJtYWlsIiwib3BlbmlkLWNvbmZpZ3VyYXRpb24iOiJodHRwcz" \
  "ovL3gvIn0="

static gboolean
pg_test_metrics_has (const char *line)
{
  g_autofree gchar *text = pg_metrics_render (PG_METRICS_FORMAT_OPENMETRICS, NULL);

  return strstr (text, line) != NULL;
}

/* SASL-IR, AUTO → OAUTHBEARER; the error challenge is answered with %x01, then NO. */
static void
pg_test_oauth2_peer_oauthbearer_challenge (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND,
      "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] peer ready\r\n" },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE OAUTHBEARER *" },
    { PG_TEST_PEER_SEND, "+ " PG_TEST_CHALLENGE "\r\n" },
    { PG_TEST_PEER_EXPECT_RAW, "AQ==" },
    { PG_TEST_PEER_SEND, "$ NO [AUTHENTICATIONFAILED] Authentication failed\r\n" },
    { PG_TEST_PEER_HANG },
  };
  PgTestResult result = { 0 };
  g_autofree gchar *received = NULL;
  g_autofree gchar *ir = NULL;
  g_autofree gchar *line = NULL;

  g_string_truncate (pg_test_log, 0);
  pg_metrics_reset ();
  pg_test_peer_authenticate (script, PG_OAUTH2_MECHANISM_AUTO, &result, &received, &ir);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  /* The exact initial response, inline, for the configured host and port. */
  line = g_strdup_printf (" AUTHENTICATE OAUTHBEARER %s\nAQ==\n", ir);
  g_assert_nonnull (strstr (received, line));
  /* The challenge's status and scope are logged; the token and the rest are not. */
  g_assert_nonnull (strstr (pg_test_log->str, "status=invalid_token scope=mail"));
  g_assert_null (strstr (pg_test_log->str, "tok-SECRET-123"));
  g_assert_null (strstr (pg_test_log->str, ir));
  g_assert_null (strstr (pg_test_log->str, "openid"));
  g_assert_true (
      pg_test_metrics_has ("popgate_upstream_logins_total{mechanism=\"oauthbearer\"} 0\n"));
  pg_test_result_clear (&result);
}

/* No SASL-IR: the response waits for "+"; XOAUTH2's challenge is answered with an empty
 * line. */
static void
pg_test_oauth2_peer_xoauth2_no_ir (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] peer ready\r\n" },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE XOAUTH2" },
    { PG_TEST_PEER_SEND, "+ \r\n" },
    { PG_TEST_PEER_EXPECT_RAW, "*" },
    { PG_TEST_PEER_SEND, "+ " PG_TEST_CHALLENGE "\r\n" },
    { PG_TEST_PEER_EXPECT_RAW, "" },
    { PG_TEST_PEER_SEND, "$ NO [AUTHENTICATIONFAILED] Authentication failed\r\n" },
    { PG_TEST_PEER_HANG },
  };
  PgTestResult result = { 0 };
  g_autofree gchar *received = NULL;
  g_autofree gchar *ir = NULL;
  g_autofree gchar *line = NULL;

  g_string_truncate (pg_test_log, 0);
  pg_test_peer_authenticate (script, PG_OAUTH2_MECHANISM_AUTO, &result, &received, &ir);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  line = g_strdup_printf (" AUTHENTICATE XOAUTH2\n%s\n\n", ir);
  g_assert_nonnull (strstr (received, line));
  g_assert_nonnull (strstr (pg_test_log->str, "status=invalid_token"));
  g_assert_null (strstr (pg_test_log->str, "tok-SECRET-123"));
  pg_test_result_clear (&result);
}

/* Success: no challenge, the unsent answer is dropped, the next command goes out. */
static void
pg_test_oauth2_peer_success (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND,
      "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] peer ready\r\n" },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE XOAUTH2 *" },
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n" },
    { PG_TEST_PEER_EXPECT, "NOOP" },
    { PG_TEST_PEER_SEND, "$ OK done\r\n" },
    { PG_TEST_PEER_HANG },
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new (script, &error);
  g_autoptr (PgUpstream) upstream = NULL;
  PgTestResult result = { 0 };

  g_assert_no_error (error);
  pg_metrics_reset ();
  upstream = pg_test_peer_upstream (peer);
  pg_upstream_authenticate_oauth2_async (upstream, PG_OAUTH2_MECHANISM_XOAUTH2, "alice@example.com",
                                         "tok-SECRET-123", NULL, pg_test_upstream_bool_cb, &result);
  pg_test_wait_flag (&result.done);
  g_assert_no_error (result.error);
  g_assert_true (pg_upstream_is_authenticated (upstream));
  pg_test_result_clear (&result);
  pg_upstream_noop_async (upstream, NULL, pg_test_upstream_bool_cb, &result);
  pg_test_wait_flag (&result.done);
  g_assert_no_error (result.error);
  g_assert_true (pg_test_peer_wait_finished (peer, PG_TEST_DEADLINE_MS));
  g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
  g_assert_true (pg_test_metrics_has ("popgate_upstream_logins_total{mechanism=\"xoauth2\"} 1\n"));
  pg_test_result_clear (&result);
  pg_upstream_close (upstream);
}

/* Neither mechanism offered; and NO [UNAVAILABLE] is temporary, not a refused token. */
static void
pg_test_oauth2_peer_refusals (void)
{
  static const PgTestPeerStep none[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] peer ready\r\n" },
    { PG_TEST_PEER_HANG },
  };
  static const PgTestPeerStep unavailable[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=OAUTHBEARER] peer ready\r\n" },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE OAUTHBEARER *" },
    { PG_TEST_PEER_SEND, "$ NO [UNAVAILABLE] Temporary authentication failure\r\n" },
    { PG_TEST_PEER_HANG },
  };
  PgTestResult result = { 0 };
  g_autofree gchar *received = NULL;
  g_autofree gchar *ir = NULL;

  pg_test_peer_authenticate (none, PG_OAUTH2_MECHANISM_AUTO, &result, &received, &ir);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_null (strstr (received, "AUTHENTICATE"));
  pg_test_result_clear (&result);
  g_clear_pointer (&received, g_free);
  g_clear_pointer (&ir, g_free);
  pg_test_peer_authenticate (unavailable, PG_OAUTH2_MECHANISM_OAUTHBEARER, &result, &received, &ir);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_UPSTREAM);
  pg_test_result_clear (&result);
}

/* --- the token manager against the real authorization server ------------------------------ */

#define PG_TEST_PUBLIC_CLIENT "popgate-public"
#define PG_TEST_CLIENT "popgate-basic"
#define PG_TEST_CLIENT_SECRET "basic-s3cret-Xy7"
#define PG_TEST_ALICE "alice@example.com"
#define PG_TEST_SCANNER "scanner@example.com"
/* Seconds an access token lives where expiry is tested. */
#define PG_TEST_SHORT_LIFETIME 2
#define PG_TEST_CONCURRENT 20

typedef struct
{
  PgTestOAuth2 *server;      /* owned */
  gchar *dir;                /* owned: token and secret files */
  gchar *token_file;         /* owned */
  gchar *secret_file;        /* owned */
  PgUpstreamConfig upstream; /* strings owned */
  GPtrArray *secrets;        /* owned: every token and secret seen: none may be logged */
} PgTestTokenFixture;

static void
pg_test_write_private (const char *path, const char *text)
{
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (
      g_file_set_contents_full (path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error),
      error);
}

static void
pg_test_token_setup (PgTestTokenFixture *fixture, gconstpointer data)
{
  const PgTestOAuth2Options *options = data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *refresh_token = NULL;
  g_autofree gchar *access_token = NULL;

  g_string_truncate (pg_test_log, 0);
  pg_oauth2_reset ();
  pg_metrics_reset ();
  fixture->secrets = g_ptr_array_new_with_free_func (g_free);
  g_ptr_array_add (fixture->secrets, g_strdup (PG_TEST_CLIENT_SECRET));
  fixture->server = pg_test_oauth2_new (options, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_oauth2_add_client (fixture->server, PG_TEST_CLIENT,
                                                PG_TEST_CLIENT_SECRET, "client_secret_basic",
                                                PG_TEST_SCANNER, &error),
                     error);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_add_client (fixture->server, PG_TEST_PUBLIC_CLIENT, NULL, NULL, NULL, &error),
      error);
  PG_TEST_ASSERT_OK (pg_test_oauth2_start (fixture->server, &error), error);
  /* A confidential client (HTTP Basic) with alice's consent through the code grant. */
  refresh_token = pg_test_oauth2_code_login (fixture->server, PG_TEST_CLIENT, PG_TEST_ALICE,
                                             &access_token, &error);
  g_assert_no_error (error);
  g_ptr_array_add (fixture->secrets, g_strdup (refresh_token));
  g_ptr_array_add (fixture->secrets, g_strdup (access_token));

  fixture->dir = g_dir_make_tmp ("popgate-oauth2-XXXXXX", &error);
  g_assert_no_error (error);
  fixture->token_file = g_build_filename (fixture->dir, "alice.token", NULL);
  fixture->secret_file = g_build_filename (fixture->dir, "client.secret", NULL);
  pg_test_write_private (fixture->token_file, refresh_token);
  pg_test_write_private (fixture->secret_file, PG_TEST_CLIENT_SECRET "\n");

  fixture->upstream.name = g_strdup ("m365");
  fixture->upstream.provider = g_strdup ("generic");
  fixture->upstream.host = g_strdup ("127.0.0.1");
  fixture->upstream.timeout_ms = 15000;
  fixture->upstream.auth = PG_UPSTREAM_AUTH_OAUTH2;
  fixture->upstream.oauth2.token_url = g_strdup (fixture->server->token_url);
  fixture->upstream.oauth2.device_url = g_strdup (fixture->server->device_url);
  fixture->upstream.oauth2.client_id = g_strdup (PG_TEST_CLIENT);
  fixture->upstream.oauth2.client_secret_file = g_strdup (fixture->secret_file);
  fixture->upstream.oauth2.grant = PG_OAUTH2_GRANT_REFRESH_TOKEN;
}

/* No token or secret reached a log line. */
static void
pg_test_token_assert_no_secrets (PgTestTokenFixture *fixture)
{
  for (guint i = 0; i < fixture->secrets->len; i++)
    {
      const char *secret = g_ptr_array_index (fixture->secrets, i);
      if (secret != NULL && *secret != '\0' && strstr (pg_test_log->str, secret) != NULL)
        g_error ("a secret (#%u) reached the log", i);
    }
}

static void
pg_test_token_teardown (PgTestTokenFixture *fixture, gconstpointer data)
{
  pg_test_token_assert_no_secrets (fixture);
  pg_oauth2_reset ();
  g_clear_pointer (&fixture->server, pg_test_oauth2_free);
  pg_test_rm_rf (fixture->dir);
  g_free (fixture->dir);
  g_free (fixture->token_file);
  g_free (fixture->secret_file);
  pg_upstream_config_clear (&fixture->upstream);
  g_ptr_array_unref (fixture->secrets);
}

static void
pg_test_token_cb (GObject *source, GAsyncResult *res, gpointer user_data)
{
  PgTestResult *result = user_data;

  result->token = pg_oauth2_get_token_finish (res, &result->error);
  result->done = TRUE;
}

/* One pg_oauth2_get_token_async() to its end. */
static void
pg_test_token_get (PgTestTokenFixture *fixture, const char *account, const char *token_file,
                   gboolean force, PgTestResult *result)
{
  pg_test_result_clear (result);
  pg_oauth2_get_token_async (&fixture->upstream, account, token_file, force, NULL, pg_test_token_cb,
                             result);
  pg_test_wait_flag (&result->done);
  if (result->token != NULL)
    g_ptr_array_add (fixture->secrets, g_strdup (result->token));
}

static gint64
pg_test_token_refreshes (PgTestTokenFixture *fixture)
{
  return pg_test_oauth2_get_stat (fixture->server, "token", "refresh_token");
}

typedef struct
{
  PgTestOAuth2 *server;
  const char *token;
} PgTestExpiry;

static gboolean
pg_test_token_expired_cb (gpointer user_data)
{
  PgTestExpiry *expiry = user_data;
  g_autoptr (GError) error = NULL;
  gboolean active = TRUE;

  PG_TEST_ASSERT_OK (
      pg_test_oauth2_introspect (expiry->server, expiry->token, &active, NULL, &error), error);
  return !active;
}

/* Wait (bounded) until the authorization server says `token` is no longer active. */
static void
pg_test_token_wait_expired (PgTestTokenFixture *fixture, const char *token)
{
  PgTestExpiry expiry = { fixture->server, token };

  g_assert_true (pg_test_wait_until (pg_test_token_expired_cb, &expiry, PG_TEST_DEADLINE_MS));
}

static const PgTestOAuth2Options pg_test_long_lived = { 0 };
static const PgTestOAuth2Options pg_test_short_lived
    = { .access_token_lifetime = PG_TEST_SHORT_LIFETIME };
static const PgTestOAuth2Options pg_test_rotating = { .rotation = TRUE };

/* One refresh, then the cached token for every later request; another account has its own. */
static void
pg_test_token_reuse (PgTestTokenFixture *fixture, gconstpointer data)
{
  PgTestResult first = { 0 }, again = { 0 };
  g_autofree gchar *log_line = NULL;

  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &first);
  g_assert_no_error (first.error);
  g_assert_nonnull (first.token);
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 1);
  for (guint i = 0; i < 3; i++)
    {
      pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &again);
      g_assert_no_error (again.error);
      g_assert_cmpstr (again.token, ==, first.token);
    }
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 1);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", TRUE), ==, 1);
  g_assert_nonnull (
      strstr (pg_test_log->str, "oauth2 refresh ok upstream=m365 account=olduser expires_in="));
  /* The server accepts it: introspection says active, for alice. */
  {
    g_autoptr (GError) error = NULL;
    g_autofree gchar *user = NULL;
    gboolean active = FALSE;
    PG_TEST_ASSERT_OK (
        pg_test_oauth2_introspect (fixture->server, first.token, &active, &user, &error), error);
    g_assert_true (active);
    g_assert_cmpstr (user, ==, PG_TEST_ALICE);
  }
  /* force_refresh drops the cache: a second refresh. */
  pg_test_token_get (fixture, "olduser", fixture->token_file, TRUE, &again);
  g_assert_no_error (again.error);
  g_assert_cmpstr (again.token, !=, first.token);
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 2);
  /* invalidate with a stale token is a no-op; with the cached one it drops it. */
  g_assert_false (pg_oauth2_invalidate_token (&fixture->upstream, "olduser", first.token));
  g_assert_true (pg_oauth2_invalidate_token (&fixture->upstream, "olduser", again.token));
  pg_test_result_clear (&first);
  pg_test_result_clear (&again);
}

typedef struct
{
  PgTestResult results[PG_TEST_CONCURRENT];
  guint done;
} PgTestConcurrent;

static void
pg_test_concurrent_cb (GObject *source, GAsyncResult *res, gpointer user_data)
{
  PgTestResult *result = user_data;

  result->token = pg_oauth2_get_token_finish (res, &result->error);
  result->done = TRUE;
}

static gboolean
pg_test_concurrent_all_done (PgTestConcurrent *c)
{
  for (guint i = 0; i < PG_TEST_CONCURRENT; i++)
    if (!c->results[i].done)
      return FALSE;
  return TRUE;
}

/* After expiry the next request refreshes; 20 at once cause one refresh, not 20. */
static void
pg_test_token_expiry (PgTestTokenFixture *fixture, gconstpointer data)
{
  PgTestResult first = { 0 }, second = { 0 };
  PgTestConcurrent *c = g_new0 (PgTestConcurrent, 1);
  gboolean all = FALSE;

  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &first);
  g_assert_no_error (first.error);
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 1);
  pg_test_token_wait_expired (fixture, first.token);
  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &second);
  g_assert_no_error (second.error);
  g_assert_cmpstr (second.token, !=, first.token);
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 2);

  pg_test_token_wait_expired (fixture, second.token);
  for (guint i = 0; i < PG_TEST_CONCURRENT; i++)
    pg_oauth2_get_token_async (&fixture->upstream, "olduser", fixture->token_file, FALSE, NULL,
                               pg_test_concurrent_cb, &c->results[i]);
  while (!all)
    {
      g_main_context_iteration (NULL, TRUE);
      all = pg_test_concurrent_all_done (c);
    }
  for (guint i = 0; i < PG_TEST_CONCURRENT; i++)
    {
      g_assert_no_error (c->results[i].error);
      g_assert_cmpstr (c->results[i].token, ==, c->results[0].token);
    }
  g_assert_cmpstr (c->results[0].token, !=, second.token);
  g_ptr_array_add (fixture->secrets, g_strdup (c->results[0].token));
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 3);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", TRUE), ==, 3);
  for (guint i = 0; i < PG_TEST_CONCURRENT; i++)
    pg_test_result_clear (&c->results[i]);
  g_free (c);
  pg_test_result_clear (&first);
  pg_test_result_clear (&second);
}

/* A waiter that gives up leaves the queue; the refresh goes on for the others. */
static void
pg_test_token_cancel_one (PgTestTokenFixture *fixture, gconstpointer data)
{
  PgTestResult a = { 0 }, b = { 0 }, c = { 0 };
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_delay (fixture->server, 300, &error), error);
  pg_oauth2_get_token_async (&fixture->upstream, "olduser", fixture->token_file, FALSE, NULL,
                             pg_test_token_cb, &a);
  pg_oauth2_get_token_async (&fixture->upstream, "olduser", fixture->token_file, FALSE, cancellable,
                             pg_test_token_cb, &b);
  pg_oauth2_get_token_async (&fixture->upstream, "olduser", fixture->token_file, FALSE, NULL,
                             pg_test_token_cb, &c);
  g_cancellable_cancel (cancellable);
  pg_test_wait_flag (&b.done);
  g_assert_error (b.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  pg_test_wait_flag (&a.done);
  pg_test_wait_flag (&c.done);
  g_assert_no_error (a.error);
  g_assert_no_error (c.error);
  g_assert_cmpstr (a.token, ==, c.token);
  g_ptr_array_add (fixture->secrets, g_strdup (a.token));
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 1);
  pg_test_result_clear (&a);
  pg_test_result_clear (&b);
  pg_test_result_clear (&c);
}

/* A rotated refresh token replaces the file (0600) before the token is handed out, and
 * the next refresh uses it (the old one no longer works). */
static void
pg_test_token_rotation (PgTestTokenFixture *fixture, gconstpointer data)
{
  g_autofree gchar *before = pg_test_read_file (fixture->token_file);
  g_autofree gchar *after = NULL;
  g_autofree gchar *third = NULL;
  PgTestResult result = { 0 };
  GStatBuf st;

  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &result);
  g_assert_no_error (result.error);
  after = pg_test_read_file (fixture->token_file);
  g_ptr_array_add (fixture->secrets, g_strdup (after));
  g_assert_cmpstr (after, !=, before);
  g_assert_true (g_str_has_suffix (after, "\n"));
  g_assert_cmpuint (strlen (after), >, 10);
  g_assert_cmpint (g_stat (fixture->token_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  /* The new token works: a forced refresh succeeds and rotates again. */
  pg_test_token_get (fixture, "olduser", fixture->token_file, TRUE, &result);
  g_assert_no_error (result.error);
  third = pg_test_read_file (fixture->token_file);
  g_ptr_array_add (fixture->secrets, g_strdup (third));
  g_assert_cmpstr (third, !=, after);
  g_assert_cmpint (pg_test_token_refreshes (fixture), ==, 2);
  /* The old one is dead at the server (rotation), so the file was the only copy. */
  {
    g_autoptr (GError) error = NULL;
    g_autofree gchar *old = g_strstrip (g_strdup (before));
    g_autofree gchar *token
        = pg_test_oauth2_refresh (fixture->server, PG_TEST_CLIENT, old, NULL, &error);
    g_assert_null (token);
    g_assert_nonnull (error);
  }
  pg_test_result_clear (&result);
}

/* A revoked refresh token: AUTH_FAILED, and the log says what to run. */
static void
pg_test_token_invalid_grant (PgTestTokenFixture *fixture, gconstpointer data)
{
  g_autofree gchar *refresh_token = g_strstrip (pg_test_read_file (fixture->token_file));
  g_autoptr (GError) error = NULL;
  PgTestResult result = { 0 };

  PG_TEST_ASSERT_OK (pg_test_oauth2_revoke (fixture->server, PG_TEST_CLIENT, refresh_token,
                                            "refresh_token", &error),
                     error);
  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &result);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  g_assert_nonnull (strstr (result.error->message, "invalid_grant"));
  g_assert_nonnull (strstr (pg_test_log->str,
                            "oauth2 refresh failed upstream=m365 account=olduser "
                            "error=invalid_grant: run popgate --oauth2-authorize olduser"));
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", FALSE), ==, 1);
  /* A wrong client secret: invalid_client, also AUTH_FAILED. */
  pg_test_write_private (fixture->secret_file, "not-the-secret\n");
  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &result);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  pg_test_result_clear (&result);
}

/* The token endpoint stopped (by PID): UPSTREAM; slow beyond timeout_ms: TIMEOUT. */
static void
pg_test_token_server_down (PgTestTokenFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  PgTestResult result = { 0 };

  PG_TEST_ASSERT_OK (pg_test_oauth2_set_token_delay (fixture->server, 5000, &error), error);
  fixture->upstream.timeout_ms = 300;
  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &result);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_TIMEOUT);
  fixture->upstream.timeout_ms = 15000;
  pg_test_oauth2_stop (fixture->server);
  pg_test_token_get (fixture, "olduser", fixture->token_file, FALSE, &result);
  g_assert_error (result.error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("m365", FALSE), ==, 2);
  pg_test_result_clear (&result);
}

/* client_credentials: no token file, the client's own grant. */
static void
pg_test_token_client_credentials (PgTestTokenFixture *fixture, gconstpointer data)
{
  PgTestResult result = { 0 }, again = { 0 };
  g_autoptr (GError) error = NULL;
  g_autofree gchar *user = NULL;
  gboolean active = FALSE;

  fixture->upstream.oauth2.grant = PG_OAUTH2_GRANT_CLIENT_CREDENTIALS;
  pg_test_token_get (fixture, "scanner", NULL, FALSE, &result);
  g_assert_no_error (result.error);
  pg_test_token_get (fixture, "scanner", NULL, FALSE, &again);
  g_assert_cmpstr (again.token, ==, result.token);
  g_assert_cmpint (pg_test_oauth2_get_stat (fixture->server, "token", "client_credentials"), ==, 1);
  PG_TEST_ASSERT_OK (
      pg_test_oauth2_introspect (fixture->server, result.token, &active, &user, &error), error);
  g_assert_true (active);
  g_assert_cmpstr (user, ==, PG_TEST_SCANNER);
  pg_test_result_clear (&result);
  pg_test_result_clear (&again);
}

/* --oauth2-authorize's device grant: the "user" approves the printed code. */
typedef struct
{
  PgTestTokenFixture *fixture;
  gchar *user_code; /* owned */
  GString *said;    /* owned */
} PgTestAuthorize;

static void
pg_test_authorize_prompt_cb (const char *line, gpointer user_data)
{
  PgTestAuthorize *t = user_data;
  const char *code = strstr (line, "enter the code ");

  g_string_append_printf (t->said, "%s\n", line);
  if (code != NULL && t->user_code == NULL)
    t->user_code = g_strdup (code + strlen ("enter the code "));
}

static void
pg_test_authorize_cb (GObject *source, GAsyncResult *res, gpointer user_data)
{
  PgTestResult *result = user_data;

  result->ok = pg_oauth2_authorize_finish (res, &result->error);
  result->done = TRUE;
}

static void
pg_test_token_authorize_device (PgTestTokenFixture *fixture, gconstpointer data)
{
  PgTestAuthorize t = { fixture, NULL, g_string_new (NULL) };
  PgTestResult result = { 0 }, token = { 0 };
  g_autofree gchar *new_file = g_build_filename (fixture->dir, "bob.token", NULL);
  g_autofree gchar *written = NULL;
  gint64 deadline = g_get_monotonic_time () + 20 * G_USEC_PER_SEC;
  GStatBuf st;

  /* The device grant is for public clients (no secret), as Microsoft's is. */
  g_free (fixture->upstream.oauth2.client_id);
  fixture->upstream.oauth2.client_id = g_strdup (PG_TEST_PUBLIC_CLIENT);
  g_clear_pointer (&fixture->upstream.oauth2.client_secret_file, g_free);

  pg_oauth2_authorize_async (&fixture->upstream, new_file, pg_test_authorize_prompt_cb, &t, NULL,
                             pg_test_authorize_cb, &result);
  while (t.user_code == NULL && !result.done && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, TRUE);
  g_assert_nonnull (t.user_code);
  g_assert_nonnull (strstr (t.said->str, fixture->server->verification_url));
  /* The user's browser, at the verification URI. */
  {
    g_autoptr (GError) error = NULL;
    PG_TEST_ASSERT_OK (pg_test_oauth2_approve_device (fixture->server, t.user_code, "bob", &error),
                       error);
  }
  pg_test_wait_flag (&result.done);
  g_assert_no_error (result.error);
  g_assert_true (result.ok);
  written = pg_test_read_file (new_file);
  g_ptr_array_add (fixture->secrets, g_strdup (written));
  g_assert_cmpuint (strlen (written), >, 10);
  g_assert_cmpint (g_stat (new_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  /* Nothing secret was shown: the refresh token is not in what the user saw. */
  g_strstrip (written);
  g_assert_null (strstr (t.said->str, written));
  /* The token works: popgate refreshes with it, as bob. */
  pg_test_token_get (fixture, "bob", new_file, FALSE, &token);
  g_assert_no_error (token.error);
  {
    g_autoptr (GError) error = NULL;
    g_autofree gchar *user = NULL;
    gboolean active = FALSE;
    PG_TEST_ASSERT_OK (
        pg_test_oauth2_introspect (fixture->server, token.token, &active, &user, &error), error);
    g_assert_true (active);
    g_assert_cmpstr (user, ==, "bob");
  }
  g_free (t.user_code);
  g_string_free (t.said, TRUE);
  pg_test_result_clear (&result);
  pg_test_result_clear (&token);
}

/* --oauth2-authorize without a device URL: the code grant with PKCE and a loopback
 * redirect. The "browser" consents at the authorization endpoint as alice and follows the
 * redirect to popgate's listener on 127.0.0.1. */
typedef struct
{
  gchar *url; /* owned: the URL popgate asked the user to open */
} PgTestCodeFlow;

static void
pg_test_code_prompt_cb (const char *line, gpointer user_data)
{
  PgTestCodeFlow *flow = user_data;
  const char *url = strstr (line, "\nhttp");

  if (url != NULL && flow->url == NULL)
    flow->url = g_strdup (url + 1);
}

static void
pg_test_code_redirect_cb (GObject *source, GAsyncResult *res, gpointer user_data)
{
  PgTestResult *result = user_data;
  g_autoptr (GBytes) body
      = soup_session_send_and_read_finish (SOUP_SESSION (source), res, &result->error);

  result->ok = body != NULL;
  result->done = TRUE;
}

static void
pg_test_token_authorize_code (PgTestTokenFixture *fixture, gconstpointer data)
{
  PgTestCodeFlow flow = { NULL };
  PgTestResult result = { 0 }, redirect = { 0 }, token = { 0 };
  g_autofree gchar *new_file = g_build_filename (fixture->dir, "carol.token", NULL);
  g_autofree gchar *written = NULL;
  g_autofree gchar *consent = NULL;
  g_autoptr (SoupSession) browser = soup_session_new ();
  g_autoptr (SoupMessage) msg = NULL;
  g_autoptr (GBytes) body = NULL;
  g_autoptr (GError) error = NULL;
  const char *location;
  gint64 deadline = g_get_monotonic_time () + 20 * G_USEC_PER_SEC;
  GStatBuf st;

  fixture->upstream.oauth2.authorize_url = g_strdup (fixture->server->authorize_url);
  g_clear_pointer (&fixture->upstream.oauth2.device_url, g_free);
  pg_oauth2_authorize_async (&fixture->upstream, new_file, pg_test_code_prompt_cb, &flow, NULL,
                             pg_test_authorize_cb, &result);
  while (flow.url == NULL && !result.done && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, TRUE);
  g_assert_nonnull (flow.url);
  g_assert_nonnull (strstr (flow.url, "code_challenge_method=S256"));
  g_assert_nonnull (strstr (flow.url, "redirect_uri=http%3A%2F%2F127.0.0.1%3A"));
  /* Consent as carol; the server answers with a redirect, which the browser follows. */
  consent = g_strconcat (flow.url, "&approve_as=carol", NULL);
  msg = soup_message_new ("GET", consent);
  g_assert_nonnull (msg);
  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  body = soup_session_send_and_read (browser, msg, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (soup_message_get_status (msg), ==, 302);
  location = soup_message_headers_get_one (soup_message_get_response_headers (msg), "Location");
  g_assert_nonnull (location);
  g_assert_true (g_str_has_prefix (location, "http://127.0.0.1:"));
  {
    /* popgate's listener runs on this main context: the browser's GET must be async. */
    g_autoptr (SoupMessage) back = soup_message_new ("GET", location);
    soup_session_send_and_read_async (browser, back, G_PRIORITY_DEFAULT, NULL,
                                      pg_test_code_redirect_cb, &redirect);
    pg_test_wait_flag (&redirect.done);
    g_assert_no_error (redirect.error);
    g_assert_cmpuint (soup_message_get_status (back), ==, 200);
  }
  pg_test_wait_flag (&result.done);
  g_assert_no_error (result.error);
  g_assert_true (result.ok);
  written = g_strstrip (pg_test_read_file (new_file));
  g_ptr_array_add (fixture->secrets, g_strdup (written));
  g_assert_cmpuint (strlen (written), >, 10);
  g_assert_cmpint (g_stat (new_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  /* The token works, as carol, through the confidential client. */
  pg_test_token_get (fixture, "carol", new_file, FALSE, &token);
  g_assert_no_error (token.error);
  {
    g_autofree gchar *user = NULL;
    gboolean active = FALSE;
    PG_TEST_ASSERT_OK (
        pg_test_oauth2_introspect (fixture->server, token.token, &active, &user, &error), error);
    g_assert_true (active);
    g_assert_cmpstr (user, ==, "carol");
  }
  g_free (flow.url);
  pg_test_result_clear (&result);
  pg_test_result_clear (&redirect);
  pg_test_result_clear (&token);
}

/* --- token endpoint faults no real server makes (an in-process SoupServer) -------------- */

static void
pg_test_bad_endpoint_cb (SoupServer *server, SoupServerMessage *msg, const char *path,
                         GHashTable *query, gpointer user_data)
{
  static const char ok[]
      = "{\"access_token\":\"at-123456789\",\"token_type\":\"bearer\",\"expires_in\":\"3599\"}";
  static const char mac[] = "{\"access_token\":\"at-1\",\"token_type\":\"mac\"}";
  static const char html[] = "<html><body>502 Bad Gateway</body></html>";
  static const char broken[] = "{\"access_token\": \"at-1\", ";
  static const char bad_request[] = "{\"error\":\"temporarily_unavailable\"}";

  if (strcmp (path, "/ok") == 0)
    {
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_STATIC, ok,
                                        strlen (ok));
    }
  else if (strcmp (path, "/mac") == 0)
    {
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_STATIC, mac,
                                        strlen (mac));
    }
  else if (strcmp (path, "/html") == 0)
    {
      soup_server_message_set_status (msg, 502, NULL);
      soup_server_message_set_response (msg, "text/html", SOUP_MEMORY_STATIC, html, strlen (html));
    }
  else if (strcmp (path, "/broken") == 0)
    {
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_STATIC, broken,
                                        strlen (broken));
    }
  else if (strcmp (path, "/unavailable") == 0)
    {
      soup_server_message_set_status (msg, 503, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_STATIC, bad_request,
                                        strlen (bad_request));
    }
  else if (strcmp (path, "/huge") == 0)
    {
      gsize len = 200 * 1024;
      gchar *body = g_malloc (len);

      memset (body, ' ', len);
      body[0] = '{';
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_TAKE, body, len);
    }
  else if (strcmp (path, "/redirect") == 0)
    soup_server_message_set_redirect (msg, 302, "/ok");
  else
    soup_server_message_set_status (msg, 404, NULL);
}

static void
pg_test_token_bad_replies (void)
{
  static const struct
  {
    const char *path;
    gint code; /* -1: success */
  } cases[] = {
    { "/ok", -1 },                         /* expires_in as a string, "bearer" in lower case */
    { "/mac", PG_ERROR_UPSTREAM },         /* not a Bearer token */
    { "/html", PG_ERROR_UPSTREAM },        /* a proxy's error page */
    { "/broken", PG_ERROR_UPSTREAM },      /* cut JSON */
    { "/unavailable", PG_ERROR_UPSTREAM }, /* 503 with an OAuth2 error: temporary */
    { "/huge", PG_ERROR_UPSTREAM },        /* beyond PG_OAUTH2_MAX_RESPONSE */
    { "/redirect", PG_ERROR_UPSTREAM },    /* credentials are not sent after a redirect */
  };
  g_autoptr (SoupServer) server = soup_server_new (NULL, NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (GSList) uris = NULL;
  PgUpstreamConfig upstream = { 0 };
  guint port;

  pg_oauth2_reset ();
  pg_metrics_reset ();
  soup_server_add_handler (server, NULL, pg_test_bad_endpoint_cb, NULL, NULL);
  PG_TEST_ASSERT_OK (soup_server_listen_local (server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error),
                     error);
  uris = soup_server_get_uris (server);
  port = (guint) g_uri_get_port (uris->data);
  g_slist_free_full (g_steal_pointer (&uris), (GDestroyNotify) g_uri_unref);
  upstream.name = g_strdup ("faults");
  upstream.timeout_ms = 10000;
  upstream.oauth2.client_id = g_strdup ("popgate");
  upstream.oauth2.grant = PG_OAUTH2_GRANT_CLIENT_CREDENTIALS;
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      PgTestResult result = { 0 };

      g_free (upstream.oauth2.token_url);
      upstream.oauth2.token_url = g_strdup_printf ("http://127.0.0.1:%u%s", port, cases[i].path);
      pg_oauth2_get_token_async (&upstream, cases[i].path, NULL, FALSE, NULL, pg_test_token_cb,
                                 &result);
      pg_test_wait_flag (&result.done);
      if (cases[i].code < 0)
        {
          g_assert_no_error (result.error);
          g_assert_cmpstr (result.token, ==, "at-123456789");
        }
      else
        {
          if (result.error == NULL)
            g_error ("%s: no error", cases[i].path);
          g_assert_error (result.error, PG_ERROR, cases[i].code);
        }
      pg_test_result_clear (&result);
    }
  g_assert_cmpint (pg_metrics_oauth2_refresh_count ("faults", FALSE), ==, 6);
  /* http:// to anything but loopback is refused before any connection. */
  {
    PgTestResult result = { 0 };

    g_free (upstream.oauth2.token_url);
    upstream.oauth2.token_url = g_strdup ("http://192.0.2.1/token");
    pg_oauth2_get_token_async (&upstream, "remote", NULL, FALSE, NULL, pg_test_token_cb, &result);
    pg_test_wait_flag (&result.done);
    g_assert_error (result.error, PG_ERROR, PG_ERROR_CONFIG);
    pg_test_result_clear (&result);
  }
  pg_oauth2_reset ();
  pg_upstream_config_clear (&upstream);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  pg_test_log = g_string_new (NULL);
  g_log_set_writer_func (pg_test_log_writer_cb, NULL, NULL);
  pg_log_set_level (PG_LOG_LEVEL_DEBUG);
  g_test_add_func ("/popgate/oauth2/sasl-xoauth2", pg_test_oauth2_xoauth2);
  g_test_add_func ("/popgate/oauth2/sasl-oauthbearer", pg_test_oauth2_oauthbearer);
  g_test_add_func ("/popgate/oauth2/sasl-oauthbearer-escaping",
                   pg_test_oauth2_oauthbearer_escaping);
  g_test_add_func ("/popgate/oauth2/metrics", pg_test_oauth2_metrics);
  g_test_add_func ("/popgate/oauth2/peer/oauthbearer-challenge",
                   pg_test_oauth2_peer_oauthbearer_challenge);
  g_test_add_func ("/popgate/oauth2/peer/xoauth2-no-ir", pg_test_oauth2_peer_xoauth2_no_ir);
  g_test_add_func ("/popgate/oauth2/peer/success", pg_test_oauth2_peer_success);
  g_test_add_func ("/popgate/oauth2/peer/refusals", pg_test_oauth2_peer_refusals);
#define PG_TEST_ADD_TOKEN(path, options, func)                                                     \
  g_test_add ("/popgate/oauth2/token/" path, PgTestTokenFixture, options, pg_test_token_setup,     \
              func, pg_test_token_teardown)
  g_test_add_func ("/popgate/oauth2/token/bad-replies", pg_test_token_bad_replies);
  PG_TEST_ADD_TOKEN ("reuse", &pg_test_long_lived, pg_test_token_reuse);
  PG_TEST_ADD_TOKEN ("expiry-and-concurrency", &pg_test_short_lived, pg_test_token_expiry);
  PG_TEST_ADD_TOKEN ("cancel-one-waiter", &pg_test_long_lived, pg_test_token_cancel_one);
  PG_TEST_ADD_TOKEN ("rotation", &pg_test_rotating, pg_test_token_rotation);
  PG_TEST_ADD_TOKEN ("invalid-grant", &pg_test_long_lived, pg_test_token_invalid_grant);
  PG_TEST_ADD_TOKEN ("server-down", &pg_test_long_lived, pg_test_token_server_down);
  PG_TEST_ADD_TOKEN ("client-credentials", &pg_test_long_lived, pg_test_token_client_credentials);
  PG_TEST_ADD_TOKEN ("authorize-device", &pg_test_long_lived, pg_test_token_authorize_device);
  PG_TEST_ADD_TOKEN ("authorize-code-pkce", &pg_test_long_lived, pg_test_token_authorize_code);
  return g_test_run ();
}
