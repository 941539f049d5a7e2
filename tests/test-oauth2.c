/* Tests for src/oauth2: the SASL initial responses (exact bytes), the metrics, and the
 * token manager against the real authorization server (tests/pg-test-oauth2.c).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-peer.h"
#include "pg-test-util.h"

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-oauth2.h"
#include "popgate/pg-upstream.h"

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

/* --- waiting ------------------------------------------------------------------------------ */

static gboolean
pg_test_deadline_cb (gpointer user_data)
{
  gboolean *expired = user_data;

  *expired = TRUE;
  return G_SOURCE_REMOVE;
}

/* Iterate the main context until *flag; fail the test at the deadline. */
static void
pg_test_wait_flag (const gboolean *flag)
{
  gboolean expired = FALSE;
  guint id = g_timeout_add (PG_TEST_DEADLINE_MS, pg_test_deadline_cb, &expired);

  while (!*flag && !expired)
    g_main_context_iteration (NULL, TRUE);
  if (!expired)
    g_source_remove (id);
  g_assert_false (expired);
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
  return g_test_run ();
}
