/* Tests for src/oauth2: the SASL initial responses (exact bytes), the metrics, and the
 * token manager against the real authorization server (tests/pg-test-oauth2.c).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-metrics.h"
#include "popgate/pg-oauth2.h"

#include <string.h>

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

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/oauth2/sasl-xoauth2", pg_test_oauth2_xoauth2);
  g_test_add_func ("/popgate/oauth2/sasl-oauthbearer", pg_test_oauth2_oauthbearer);
  g_test_add_func ("/popgate/oauth2/sasl-oauthbearer-escaping",
                   pg_test_oauth2_oauthbearer_escaping);
  g_test_add_func ("/popgate/oauth2/metrics", pg_test_oauth2_metrics);
  return g_test_run ();
}
