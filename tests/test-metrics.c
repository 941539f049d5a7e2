/* popgate — metrics registry and text rendering (unit tests).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-openmetrics.h"
#include "pg-test-util.h"

#include "popgate/pg-core.h"
#include "popgate/pg-metrics.h"

#include <gio/gio.h>
#include <string.h>

static const char *const fe_values[] = { "pop3", "imap", NULL };
static const char *const result_values[] = { "ok", "bad", NULL };
static const char *const cmd_values[] = { "LOGIN", "FETCH", NULL };
static const guint64 buckets[] = { 1000, 2500, 1000000 };

/* A small registry: one family of each type, with 0, 1 and 2 labels. */
static PgMetricsRegistry *
small_registry (PgMetricsFamily **out_counter, PgMetricsFamily **out_gauge,
                PgMetricsFamily **out_histogram)
{
  PgMetricsRegistry *registry = pg_metrics_registry_new ();
  const PgMetricsLabel fe_result[] = { { "frontend", fe_values }, { "result", result_values } };
  const PgMetricsLabel cmd[] = { { "command", cmd_values } };

  *out_counter = pg_metrics_registry_add (registry, PG_METRICS_COUNTER, "t_logins",
                                          "Logins \"by\" result.", fe_result, 2, NULL, 0);
  *out_gauge = pg_metrics_registry_add (registry, PG_METRICS_GAUGE, "t_sessions", "Sessions\\now.",
                                        NULL, 0, NULL, 0);
  *out_histogram = pg_metrics_registry_add (registry, PG_METRICS_HISTOGRAM, "t_latency_seconds",
                                            "Latency.", cmd, 1, buckets, G_N_ELEMENTS (buckets));
  return registry;
}

static gchar *
render (PgMetricsRegistry *registry, PgMetricsFormat format)
{
  GString *out = g_string_new (NULL);

  pg_metrics_registry_render (registry, format, out);
  return g_string_free (out, FALSE);
}

static void
test_render_openmetrics (void)
{
  PgMetricsFamily *counter, *gauge, *histogram;
  g_autoptr (PgMetricsRegistry) registry = small_registry (&counter, &gauge, &histogram);
  g_autofree gchar *text = NULL;
  g_autoptr (GHashTable) samples = NULL;
  g_autoptr (GError) error = NULL;

  pg_metrics_family_add (counter, 0, 0, 3);
  pg_metrics_family_add (counter, 1, 1, 1);
  pg_metrics_family_add (counter, 1, 1, 1);
  pg_metrics_family_add (gauge, 0, 0, 5);
  pg_metrics_family_add (gauge, 0, 0, -2);
  pg_metrics_family_observe_us (histogram, 0, 0, 1000);    /* on a bound: that bucket */
  pg_metrics_family_observe_us (histogram, 0, 0, 1001);    /* just above: the next */
  pg_metrics_family_observe_us (histogram, 0, 0, 3000000); /* beyond the last: +Inf */
  text = render (registry, PG_METRICS_FORMAT_OPENMETRICS);
  g_assert_cmpstr (text, ==,
                   "# TYPE t_logins counter\n"
                   "# HELP t_logins Logins \\\"by\\\" result.\n"
                   "t_logins_total{frontend=\"pop3\",result=\"ok\"} 3\n"
                   "t_logins_total{frontend=\"pop3\",result=\"bad\"} 0\n"
                   "t_logins_total{frontend=\"imap\",result=\"ok\"} 0\n"
                   "t_logins_total{frontend=\"imap\",result=\"bad\"} 2\n"
                   "# TYPE t_sessions gauge\n"
                   "# HELP t_sessions Sessions\\\\now.\n"
                   "t_sessions 3\n"
                   "# TYPE t_latency_seconds histogram\n"
                   "# UNIT t_latency_seconds seconds\n"
                   "# HELP t_latency_seconds Latency.\n"
                   "t_latency_seconds_bucket{command=\"LOGIN\",le=\"0.001\"} 1\n"
                   "t_latency_seconds_bucket{command=\"LOGIN\",le=\"0.0025\"} 2\n"
                   "t_latency_seconds_bucket{command=\"LOGIN\",le=\"1.0\"} 2\n"
                   "t_latency_seconds_bucket{command=\"LOGIN\",le=\"+Inf\"} 3\n"
                   "t_latency_seconds_sum{command=\"LOGIN\"} 3.002001\n"
                   "t_latency_seconds_count{command=\"LOGIN\"} 3\n"
                   "t_latency_seconds_bucket{command=\"FETCH\",le=\"0.001\"} 0\n"
                   "t_latency_seconds_bucket{command=\"FETCH\",le=\"0.0025\"} 0\n"
                   "t_latency_seconds_bucket{command=\"FETCH\",le=\"1.0\"} 0\n"
                   "t_latency_seconds_bucket{command=\"FETCH\",le=\"+Inf\"} 0\n"
                   "t_latency_seconds_sum{command=\"FETCH\"} 0.0\n"
                   "t_latency_seconds_count{command=\"FETCH\"} 0\n"
                   "# EOF\n");
  samples = pg_test_openmetrics_parse (text, PG_METRICS_FORMAT_OPENMETRICS, &error);
  g_assert_no_error (error);
  g_assert_cmpfloat (
      pg_test_openmetrics_get (samples, "t_logins_total{frontend=\"imap\",result=\"bad\"}"), ==, 2);
  g_assert_cmpfloat (
      pg_test_openmetrics_get (samples, "t_latency_seconds_count{command=\"LOGIN\"}"), ==, 3);
}

static void
test_render_prometheus (void)
{
  PgMetricsFamily *counter, *gauge, *histogram;
  g_autoptr (PgMetricsRegistry) registry = small_registry (&counter, &gauge, &histogram);
  g_autofree gchar *text = NULL;
  g_autoptr (GHashTable) samples = NULL;
  g_autoptr (GError) error = NULL;

  pg_metrics_family_add (counter, 1, 0, 7);
  text = render (registry, PG_METRICS_FORMAT_PROMETHEUS);
  /* 0.0.4: counters are declared under their sample name; '"' in HELP stays as it is. */
  g_assert_true (g_str_has_prefix (text, "# TYPE t_logins_total counter\n"
                                         "# HELP t_logins_total Logins \"by\" result.\n"
                                         "t_logins_total{frontend=\"pop3\",result=\"ok\"} 0\n"));
  g_assert_nonnull (strstr (text, "t_logins_total{frontend=\"imap\",result=\"ok\"} 7\n"));
  g_assert_null (strstr (text, "# UNIT"));
  g_assert_true (g_str_has_suffix (text, "t_latency_seconds_count{command=\"FETCH\"} 0\n# EOF\n"));
  samples = pg_test_openmetrics_parse (text, PG_METRICS_FORMAT_PROMETHEUS, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (pg_metrics_format_content_type (PG_METRICS_FORMAT_PROMETHEUS), ==,
                   "text/plain; version=0.0.4; charset=utf-8");
  g_assert_cmpstr (pg_metrics_format_content_type (PG_METRICS_FORMAT_OPENMETRICS), ==,
                   "application/openmetrics-text; version=1.0.0; charset=utf-8");
}

static void
test_histogram (void)
{
  PgMetricsFamily *counter, *gauge, *histogram;
  g_autoptr (PgMetricsRegistry) registry = small_registry (&counter, &gauge, &histogram);
  g_autofree gchar *text = NULL;
  guint64 count = 0, sum = 0;

  for (guint64 us = 0; us <= 2000000; us += 500)
    pg_metrics_family_observe_us (histogram, 1, 0, us);
  pg_metrics_family_get_histogram (histogram, 1, 0, &count, &sum);
  g_assert_cmpuint (count, ==, 4001);
  g_assert_cmpuint (sum, ==, (guint64) 500 * (4000 * 4001 / 2));
  text = render (registry, PG_METRICS_FORMAT_OPENMETRICS);
  /* Cumulative: ≤1 ms holds 0, 500, 1000 µs; ≤2.5 ms 6 values; ≤1 s 2001. */
  g_assert_nonnull (strstr (text, "t_latency_seconds_bucket{command=\"FETCH\",le=\"0.001\"} 3\n"
                                  "t_latency_seconds_bucket{command=\"FETCH\",le=\"0.0025\"} 6\n"
                                  "t_latency_seconds_bucket{command=\"FETCH\",le=\"1.0\"} 2001\n"
                                  "t_latency_seconds_bucket{command=\"FETCH\",le=\"+Inf\"} 4001\n"
                                  "t_latency_seconds_sum{command=\"FETCH\"} 4001.0\n"
                                  "t_latency_seconds_count{command=\"FETCH\"} 4001\n"));
}

static void
test_label_escaping (void)
{
  static const char *const odd_values[] = { "a\"b", "back\\slash", "new\nline", "plain", NULL };
  const PgMetricsLabel odd[] = { { "v", odd_values } };
  g_autoptr (PgMetricsRegistry) registry = pg_metrics_registry_new ();
  g_autoptr (GString) escaped = g_string_new (NULL);
  g_autofree gchar *text = NULL;
  g_autoptr (GHashTable) samples = NULL;
  g_autoptr (GError) error = NULL;

  pg_metrics_escape_label_value (escaped, "x\\\"\n\ty");
  g_assert_cmpstr (escaped->str, ==, "x\\\\\\\"\\n\ty");

  pg_metrics_registry_add (registry, PG_METRICS_GAUGE, "t_odd", "Odd.", odd, 1, NULL, 0);
  text = render (registry, PG_METRICS_FORMAT_OPENMETRICS);
  g_assert_cmpstr (text, ==,
                   "# TYPE t_odd gauge\n"
                   "# HELP t_odd Odd.\n"
                   "t_odd{v=\"a\\\"b\"} 0\n"
                   "t_odd{v=\"back\\\\slash\"} 0\n"
                   "t_odd{v=\"new\\nline\"} 0\n"
                   "t_odd{v=\"plain\"} 0\n"
                   "# EOF\n");
  samples = pg_test_openmetrics_parse (text, PG_METRICS_FORMAT_OPENMETRICS, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (samples), ==, 4);
}

/* The checker must reject what a scraper would: otherwise the integration test proves
 * nothing. */
static void
test_checker_rejects (void)
{
  static const char *const bad[] = {
    "t 1\n# EOF\n",                            /* no TYPE */
    "# TYPE t gauge\nt 1\n",                   /* no EOF */
    "# TYPE t gauge\nt{a=\"x} 1\n# EOF\n",     /* open quote */
    "# TYPE t gauge\nt{a=\"\\x\"} 1\n# EOF\n", /* bad escape */
    "# TYPE t gauge\nu 1\n# EOF\n",            /* other family */
    "# TYPE t counter\nt 1\n# EOF\n",          /* OM counter needs _total */
    "# TYPE t gauge\nt one\n# EOF\n",          /* value */
    "# TYPE t gauge\nt 1\nt 2\n# EOF\n",       /* duplicate */
    "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
    "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 2\n# EOF\n",
  };

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GHashTable) samples
          = pg_test_openmetrics_parse (bad[i], PG_METRICS_FORMAT_OPENMETRICS, &error);
      if (samples != NULL)
        g_error ("checker accepted case %" G_GSIZE_FORMAT ": %s", i, bad[i]);
      g_assert_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA);
    }
}

/* popgate's own registry: the typed calls land in the right series, the text parses in
 * both formats. */
static void
test_default_registry (void)
{
  g_autofree gchar *om = NULL;
  g_autofree gchar *prom = NULL;
  g_autoptr (GHashTable) samples = NULL;
  g_autoptr (GHashTable) prom_samples = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) limit = g_error_new (PG_ERROR, PG_ERROR_LIMIT, "x");
  g_autoptr (GError) io = g_error_new (G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE, "x");
  gsize len = 0;

  pg_metrics_reset ();
  pg_metrics_session_state (PG_METRICS_FRONTEND_POP3, PG_METRICS_SESSION_NONE,
                            PG_METRICS_SESSION_PREAUTH);
  pg_metrics_session_state (PG_METRICS_FRONTEND_POP3, PG_METRICS_SESSION_NONE,
                            PG_METRICS_SESSION_PREAUTH);
  pg_metrics_session_state (PG_METRICS_FRONTEND_POP3, PG_METRICS_SESSION_PREAUTH,
                            PG_METRICS_SESSION_AUTHENTICATED);
  pg_metrics_session_state (PG_METRICS_FRONTEND_POP3, PG_METRICS_SESSION_PREAUTH,
                            PG_METRICS_SESSION_NONE);
  pg_metrics_login (PG_METRICS_FRONTEND_POP3, PG_METRICS_LOGIN_OK);
  pg_metrics_login (PG_METRICS_FRONTEND_POP3, PG_METRICS_LOGIN_IN_USE);
  pg_metrics_client_bytes (PG_METRICS_FRONTEND_IMAP, PG_METRICS_DIRECTION_OUT, 1234);
  pg_metrics_dele (PG_METRICS_DELE_EXPUNGED, 3);
  pg_metrics_gerror (limit);
  pg_metrics_gerror (io);
  pg_metrics_error (PG_METRICS_ERROR_PROTOCOL);
  pg_metrics_upstream_command ("UID FETCH", 1500);
  pg_metrics_upstream_command ("LOGIN", 200);
  pg_metrics_upstream_command ("XYZZY", 10);

  om = pg_metrics_render (PG_METRICS_FORMAT_OPENMETRICS, &len);
  g_assert_cmpuint (len, ==, strlen (om));
  samples = pg_test_openmetrics_parse (om, PG_METRICS_FORMAT_OPENMETRICS, &error);
  g_assert_no_error (error);
  prom = pg_metrics_render (PG_METRICS_FORMAT_PROMETHEUS, NULL);
  prom_samples = pg_test_openmetrics_parse (prom, PG_METRICS_FORMAT_PROMETHEUS, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (samples), ==, g_hash_table_size (prom_samples));

  /* Every metric name starts with popgate_, but the standard process_* ones. */
  {
    GHashTableIter iter;
    gpointer key;
    g_hash_table_iter_init (&iter, samples);
    while (g_hash_table_iter_next (&iter, &key, NULL))
      g_assert_true (g_str_has_prefix (key, "popgate_") || g_str_has_prefix (key, "process_"));
  }
#define GET(series) pg_test_openmetrics_get (samples, series)
  g_assert_cmpfloat (GET ("popgate_sessions{frontend=\"pop3\",state=\"preauth\"}"), ==, 0);
  g_assert_cmpfloat (GET ("popgate_sessions{frontend=\"pop3\",state=\"authenticated\"}"), ==, 1);
  g_assert_cmpfloat (GET ("popgate_sessions_started_total{frontend=\"pop3\"}"), ==, 2);
  g_assert_cmpfloat (GET ("popgate_logins_total{frontend=\"pop3\",result=\"ok\"}"), ==, 1);
  g_assert_cmpfloat (GET ("popgate_logins_total{frontend=\"pop3\",result=\"in_use\"}"), ==, 1);
  g_assert_cmpfloat (GET ("popgate_client_bytes_total{frontend=\"imap\",direction=\"out\"}"), ==,
                     1234);
  g_assert_cmpfloat (GET ("popgate_pop3_dele_messages_total{outcome=\"expunged\"}"), ==, 3);
  g_assert_cmpfloat (GET ("popgate_errors_total{kind=\"limit\"}"), ==, 1);
  g_assert_cmpfloat (GET ("popgate_errors_total{kind=\"io\"}"), ==, 1);
  g_assert_cmpfloat (GET ("popgate_errors_total{kind=\"protocol\"}"), ==, 1);
  g_assert_cmpfloat (GET ("popgate_upstream_command_duration_seconds_count{command=\"FETCH\"}"), ==,
                     1);
  g_assert_cmpfloat (GET ("popgate_upstream_command_duration_seconds_sum{command=\"FETCH\"}"), ==,
                     0.0015);
  g_assert_cmpfloat (GET ("popgate_upstream_command_duration_seconds_count{command=\"OTHER\"}"), ==,
                     1);
  g_assert_cmpfloat (
      GET ("popgate_upstream_command_duration_seconds_bucket{command=\"LOGIN\",le=\"0.001\"}"), ==,
      1);
  g_assert_nonnull (strstr (om, "# TYPE popgate_build info\n"));
  g_assert_nonnull (strstr (om, "popgate_build_info{version=\""));
  g_assert_nonnull (strstr (prom, "# TYPE popgate_build_info gauge\n"));
  g_assert_nonnull (strstr (om, "# UNIT popgate_client_bytes bytes\n"));
  g_assert_null (strstr (prom, "# UNIT"));
  /* The process_* families, read from /proc/self of this test. */
  g_assert_cmpfloat (GET ("process_resident_memory_bytes"), >, 0);
  g_assert_cmpfloat (GET ("process_virtual_memory_bytes"), >=,
                     GET ("process_resident_memory_bytes"));
  g_assert_cmpfloat (GET ("process_open_fds"), >=, 3); /* stdin, stdout, stderr */
  g_assert_cmpfloat (GET ("process_max_fds"), >=, GET ("process_open_fds"));
  g_assert_cmpfloat (GET ("process_cpu_seconds_total"), >=, 0);
  g_assert_cmpfloat (GET ("process_start_time_seconds"), >, 1e9);
  g_assert_cmpfloat (GET ("process_start_time_seconds"), <=, g_get_real_time () / 1e6 + 1);
#undef GET
  pg_metrics_shutdown ();
}

/* The text parses with a real OpenMetrics parser: Python prometheus_client's (Debian
 * python3-prometheus-client), which also checks UNIT suffixes, info families and # EOF. */
static void
test_real_parser (void)
{
  static const char script[]
      = "import sys\n"
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families\n"
        "for f in text_string_to_metric_families(sys.stdin.read()):\n"
        "    print(f.name, f.type, f.unit or '-', len(f.samples))\n";
  const char *const argv[] = { "/usr/bin/python3", "-c", script, NULL };
  g_autofree gchar *om = NULL;
  g_autofree gchar *output = NULL;
  g_autoptr (GBytes) input = NULL;
  g_autoptr (GError) error = NULL;
  int code = -1;

  pg_metrics_reset ();
  pg_metrics_client_bytes (PG_METRICS_FRONTEND_POP3, PG_METRICS_DIRECTION_IN, 42);
  pg_metrics_upstream_command ("LOGIN", 1500);
  om = pg_metrics_render (PG_METRICS_FORMAT_OPENMETRICS, NULL);
  input = g_bytes_new (om, strlen (om));
  PG_TEST_ASSERT_OK (pg_test_run_status (argv, input, 30000, &code, &output, &error), error);
  if (code != 0)
    g_error ("prometheus_client refused the text (%d): %s\n%s", code, output, om);
  g_test_message ("%s", output);
  g_assert_nonnull (strstr (output, "popgate_build info - 1\n"));
  g_assert_nonnull (strstr (output, "popgate_client_bytes counter bytes 4\n"));
  g_assert_nonnull (strstr (output, "popgate_upstream_command_duration_seconds histogram seconds"));
  g_assert_nonnull (strstr (output, "process_cpu_seconds counter seconds 1\n"));
  g_assert_nonnull (strstr (output, "process_resident_memory_bytes gauge bytes 1\n"));
  g_assert_nonnull (strstr (output, "process_open_fds gauge - 1\n"));
  g_assert_nonnull (strstr (output, "process_start_time_seconds gauge seconds 1\n"));
  pg_metrics_shutdown ();
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/metrics/render-openmetrics", test_render_openmetrics);
  g_test_add_func ("/popgate/metrics/render-prometheus", test_render_prometheus);
  g_test_add_func ("/popgate/metrics/histogram", test_histogram);
  g_test_add_func ("/popgate/metrics/label-escaping", test_label_escaping);
  g_test_add_func ("/popgate/metrics/checker-rejects", test_checker_rejects);
  g_test_add_func ("/popgate/metrics/default-registry", test_default_registry);
  g_test_add_func ("/popgate/metrics/real-parser", test_real_parser);
  return g_test_run ();
}
