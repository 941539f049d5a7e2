/* popgate — the metrics endpoint and the audit trace, end to end: the real popgate binary
 * in front of a real Dovecot, scraped over HTTP with libsoup's client, and its trace read
 * back from its log.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-openmetrics.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"
#include "popgate/pg-core.h"

#include <libsoup/soup.h>
#include <string.h>

static PgTestDovecot *upstream = NULL;

#define PASSWORD "Tr4ce-s3cret-pw"

typedef struct
{
  gchar *user;
  PgTestPopgate *popgate;
  GArray *uids; /* guint32: the seeded messages, in order */
  guint16 metrics_port;
} Fixture;

static const char *const sample_messages[] = {
  "Subject: one\r\n\r\nfirst\r\n",
  "Subject: two\r\n\r\nsecond\r\n",
  "Subject: three\r\n\r\nthird\r\n",
};

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  const char *const *settings = data;
  const char *path = g_test_get_path ();
  g_autofree gchar *listen = NULL;
  g_autoptr (PgTestImap) imap = NULL;

  fx->user = g_ascii_strdown (strrchr (path, '/') + 1, -1);
  for (gsize i = 0; i < G_N_ELEMENTS (sample_messages); i++)
    {
      gboolean ok = pg_test_dovecot_append (upstream, fx->user, "INBOX", sample_messages[i],
                                            strlen (sample_messages[i]), &error);
      g_assert_no_error (error);
      g_assert_true (ok);
    }
  imap = pg_test_imap_connect (upstream->host, upstream->imap_port, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (pg_test_imap_login (imap, fx->user, PASSWORD, &error));
  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error));
  fx->uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (fx->uids->len, ==, G_N_ELEMENTS (sample_messages));

  fx->popgate = pg_test_popgate_new (upstream, "none", &error);
  g_assert_no_error (error);
  fx->metrics_port = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);
  listen = g_strdup_printf ("127.0.0.1:%u", fx->metrics_port);
  pg_test_popgate_set (fx->popgate, "metrics", "listen", listen);
  pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "10ms");
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    {
      if (strcmp (settings[i], "--") == 0)
        pg_test_popgate_add_arg (fx->popgate, settings[i + 1]);
      else
        pg_test_popgate_set (fx->popgate, settings[i], settings[i + 1], settings[i + 2]);
    }
  g_assert_true (pg_test_popgate_start (fx->popgate, &error));
  g_assert_no_error (error);
  /* The POP3 port accepts first; the metrics endpoint is bound just after. */
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "metrics at http://", 10000));
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  if (fx->popgate != NULL)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
      /* Never a password in popgate's output, trace or not. */
      g_assert_null (strstr (log, PASSWORD));
      g_assert_true (pg_test_popgate_stop (fx->popgate));
    }
  g_clear_pointer (&fx->popgate, pg_test_popgate_free);
  g_clear_pointer (&fx->uids, g_array_unref);
  g_free (fx->user);
}

/* --- HTTP ------------------------------------------------------------------------------- */

typedef struct
{
  guint status;
  gchar *content_type; /* owned */
  gchar *body;         /* owned */
} HttpReply;

static void
http_reply_free (HttpReply *reply)
{
  g_free (reply->content_type);
  g_free (reply->body);
  g_free (reply);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HttpReply, http_reply_free)

static HttpReply *
http_request (guint16 port, const char *method, const char *path, const char *accept,
              GError **error)
{
  /* No proxy, whatever the environment says: the endpoint is on loopback. */
  g_autoptr (SoupSession) session
      = soup_session_new_with_options ("proxy-resolver", NULL, "timeout", 10, NULL);
  g_autofree gchar *url = g_strdup_printf ("http://127.0.0.1:%u%s", port, path);
  g_autoptr (SoupMessage) msg = soup_message_new (method, url);
  g_autoptr (GBytes) body = NULL;
  HttpReply *reply;

  if (accept != NULL)
    soup_message_headers_replace (soup_message_get_request_headers (msg), "Accept", accept);
  body = soup_session_send_and_read (session, msg, NULL, error);
  if (body == NULL)
    return NULL;
  reply = g_new0 (HttpReply, 1);
  reply->status = soup_message_get_status (msg);
  reply->content_type = g_strdup (
      soup_message_headers_get_one (soup_message_get_response_headers (msg), "Content-Type"));
  reply->body = g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body));
  return reply;
}

/* GET /metrics (OpenMetrics) and check it parses. */
static GHashTable *
scrape (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HttpReply) reply = http_request (fx->metrics_port, "GET", "/metrics", NULL, &error);
  GHashTable *samples;

  g_assert_no_error (error);
  g_assert_cmpuint (reply->status, ==, 200);
  g_assert_cmpstr (reply->content_type, ==,
                   "application/openmetrics-text; version=1.0.0; charset=utf-8");
  samples = pg_test_openmetrics_parse (reply->body, PG_METRICS_FORMAT_OPENMETRICS, &error);
  if (samples == NULL)
    g_error ("scrape does not parse: %s\n%s", error->message, reply->body);
  return samples;
}

#define SESSIONS_AUTH "popgate_sessions{frontend=\"pop3\",state=\"authenticated\"}"
#define SESSIONS_PREAUTH "popgate_sessions{frontend=\"pop3\",state=\"preauth\"}"
#define STARTED "popgate_sessions_started_total{frontend=\"pop3\"}"
#define LOGIN_OK "popgate_logins_total{frontend=\"pop3\",result=\"ok\"}"
#define LOGIN_FAILED "popgate_logins_total{frontend=\"pop3\",result=\"auth_failed\"}"
#define LOGIN_IN_USE "popgate_logins_total{frontend=\"pop3\",result=\"in_use\"}"
#define BYTES_IN "popgate_client_bytes_total{frontend=\"pop3\",direction=\"in\"}"
#define BYTES_OUT "popgate_client_bytes_total{frontend=\"pop3\",direction=\"out\"}"
#define EXPUNGED "popgate_pop3_dele_messages_total{outcome=\"expunged\"}"
#define LATENCY_COUNT(cmd) "popgate_upstream_command_duration_seconds_count{command=\"" cmd "\"}"

static gboolean
no_pop3_sessions_cb (gpointer user_data)
{
  Fixture *fx = user_data;
  g_autoptr (GHashTable) samples = scrape (fx);

  return pg_test_openmetrics_get (samples, SESSIONS_AUTH) == 0
         && pg_test_openmetrics_get (samples, SESSIONS_PREAUTH) == 0
         && pg_test_openmetrics_get (samples,
                                     "popgate_sessions{frontend=\"pop3\",state=\"update\"}")
                == 0;
}

static PgTestPop3 *
pop3_connect (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);
  g_assert_no_error (error);
  return pop3;
}

/* --- tests ------------------------------------------------------------------------------- */

static void
test_scrape (Fixture *fx, gconstpointer data)
{
  g_autoptr (GHashTable) before = scrape (fx);
  g_autoptr (GHashTable) during = NULL;
  g_autoptr (GHashTable) after = NULL;
  g_autoptr (GError) error = NULL;

#define DELTA(series)                                                                              \
  (pg_test_openmetrics_get (after, series) - pg_test_openmetrics_get (before, series))
  g_assert_cmpfloat (pg_test_openmetrics_get (before, SESSIONS_AUTH), ==, 0);

  /* A failed login, then a full session: RETR, DELE, QUIT (delete = expunge). */
  {
    g_autoptr (PgTestPop3) bad = pop3_connect (fx);
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autoptr (PgTestPop3) second = NULL;
    g_autoptr (GBytes) body = NULL;

    g_autofree gchar *bad_status = NULL;
    g_autofree gchar *in_use_status = NULL;

    g_assert_false (pg_test_pop3_login (bad, fx->user, "wrong", &bad_status, &error));
    g_clear_error (&error);
    g_assert_true (g_str_has_prefix (bad_status, "-ERR [AUTH]"));
    /* A second failure from the same address is answered after a longer delay: the
     * penalty counts it. The success below clears the address again. */
    g_clear_pointer (&bad_status, g_free);
    g_assert_false (pg_test_pop3_login (bad, fx->user, "wrong", &bad_status, &error));
    g_clear_error (&error);
    g_assert_true (g_str_has_prefix (bad_status, "-ERR [AUTH]"));
    g_assert_true (pg_test_pop3_login (pop3, fx->user, PASSWORD, NULL, &error));
    g_assert_no_error (error);
    /* The same maildrop again: refused as in use. */
    second = pop3_connect (fx);
    g_assert_false (pg_test_pop3_login (second, fx->user, PASSWORD, &in_use_status, &error));
    g_clear_error (&error);
    g_assert_true (g_str_has_prefix (in_use_status, "-ERR [IN-USE]"));

    during = scrape (fx);
    g_assert_cmpfloat (pg_test_openmetrics_get (during, SESSIONS_AUTH), ==, 1);
    g_assert_cmpfloat (pg_test_openmetrics_get (during, SESSIONS_PREAUTH), ==, 2);

    body = pg_test_pop3_retr (pop3, 1, NULL, &error);
    g_assert_no_error (error);
    g_assert_nonnull (body);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
    PG_TEST_POP3_ASSERT_REPLY (bad, "QUIT", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (second, "QUIT", "+OK");
  }
  /* Sessions end asynchronously after the last reply: wait (bounded) for the gauge. */
  g_assert_true (pg_test_wait_until (no_pop3_sessions_cb, fx, 10000));
  after = scrape (fx);

  g_assert_cmpfloat (DELTA (STARTED), ==, 3);
  g_assert_cmpfloat (DELTA (LOGIN_OK), ==, 1);
  g_assert_cmpfloat (DELTA (LOGIN_FAILED), ==, 2);
  g_assert_cmpfloat (DELTA ("popgate_login_penalties_total{scope=\"address\"}"), ==, 1);
  g_assert_cmpfloat (DELTA ("popgate_login_penalties_total{scope=\"global\"}"), ==, 0);
  g_assert_cmpfloat (DELTA (LOGIN_IN_USE), ==, 1);
  g_assert_cmpfloat (DELTA (EXPUNGED), ==, 1);
  g_assert_cmpfloat (DELTA (BYTES_IN), >, 20);
  g_assert_cmpfloat (DELTA (BYTES_OUT), >, (double) strlen (sample_messages[0]));
  /* Dovecot offers AUTH=PLAIN, so logins went up as AUTHENTICATE. */
  g_assert_cmpfloat (DELTA (LATENCY_COUNT ("AUTHENTICATE")), ==, 4);
  g_assert_cmpfloat (DELTA (LATENCY_COUNT ("SELECT")), ==, 2);
  g_assert_cmpfloat (DELTA (LATENCY_COUNT ("FETCH")), >=, 3); /* 2 snapshots + RETR */
  g_assert_cmpfloat (DELTA (LATENCY_COUNT ("STORE")), >=, 1);
  g_assert_cmpfloat (DELTA (LATENCY_COUNT ("EXPUNGE")), ==, 1);
  g_assert_cmpfloat (DELTA (LATENCY_COUNT ("LOGOUT")), >=, 1);
  g_assert_cmpfloat (
      pg_test_openmetrics_get (after,
                               "popgate_upstream_command_duration_seconds_sum{command=\"SELECT\"}"),
      >, 0);
#undef DELTA
}

#define IMAP_SESSIONS(state) "popgate_sessions{frontend=\"imap\",state=\"" state "\"}"
#define IMAP_STARTED "popgate_sessions_started_total{frontend=\"imap\"}"
#define IMAP_LOGIN(result) "popgate_logins_total{frontend=\"imap\",result=\"" result "\"}"

static PgTestImap *
imap_connect (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestImap *imap = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);
  g_assert_no_error (error);
  return imap;
}

/* Read raw lines until one starts with `prefix` (bounded by the helper's read timeout). */
static void
imap_expect (PgTestImap *imap, const char *prefix)
{
  for (guint i = 0; i < 100; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *line = pg_test_imap_read_line (imap, &error);

      g_assert_no_error (error);
      g_assert_nonnull (line);
      if (g_str_has_prefix (line, prefix))
        return;
    }
  g_error ("no line starting with \"%s\"", prefix);
}

typedef struct
{
  Fixture *fx;
  const char *series;
  double value;
} WaitSeries;

static gboolean
series_is_cb (gpointer user_data)
{
  WaitSeries *wait = user_data;
  g_autoptr (GHashTable) samples = scrape (wait->fx);

  return pg_test_openmetrics_get (samples, wait->series) == wait->value;
}

static void
wait_series (Fixture *fx, const char *series, double value)
{
  WaitSeries wait = { fx, series, value };

  if (!pg_test_wait_until (series_is_cb, &wait, 10000))
    g_error ("%s never became %g", series, value);
}

/* The IMAP front end in the scrape: sessions by state (pre-auth, authenticated, IDLE),
 * logins by result. */
static void
test_scrape_imap (Fixture *fx, gconstpointer data)
{
  g_autoptr (GHashTable) before = scrape (fx);
  g_autoptr (GHashTable) during = NULL;
  g_autoptr (GHashTable) after = NULL;
  g_autoptr (GError) error = NULL;

#define DELTA(series)                                                                              \
  (pg_test_openmetrics_get (after, series) - pg_test_openmetrics_get (before, series))
  g_assert_cmpfloat (pg_test_openmetrics_get (before, IMAP_SESSIONS ("authenticated")), ==, 0);
  {
    g_autoptr (PgTestImap) bad = imap_connect (fx);
    g_autoptr (PgTestImap) imap = imap_connect (fx);
    g_autoptr (PgTestImap) idler = imap_connect (fx);
    g_autofree gchar *reply = NULL;

    g_assert_false (pg_test_imap_login (bad, fx->user, "wrong", &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_AUTH_FAILED);
    g_clear_error (&error);
    g_assert_true (pg_test_imap_login (imap, fx->user, PASSWORD, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_login (idler, fx->user, PASSWORD, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_select (idler, "INBOX", FALSE, NULL, NULL, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_send_raw (idler, "i1 IDLE\r\n", 9, &error));
    g_assert_no_error (error);
    imap_expect (idler, "+");
    /* The "+" reached the client after popgate saw it: the gauge moves with it. */
    wait_series (fx, IMAP_SESSIONS ("idle"), 1);

    during = scrape (fx);
    g_assert_cmpfloat (pg_test_openmetrics_get (during, IMAP_SESSIONS ("authenticated")), ==, 1);
    g_assert_cmpfloat (pg_test_openmetrics_get (during, IMAP_SESSIONS ("preauth")), ==, 1);
    g_assert_cmpfloat (pg_test_openmetrics_get (during, IMAP_SESSIONS ("idle")), ==, 1);

    g_assert_true (pg_test_imap_send_raw (idler, "DONE\r\n", 6, &error));
    g_assert_no_error (error);
    imap_expect (idler, "i1 OK");
    wait_series (fx, IMAP_SESSIONS ("idle"), 0);
    wait_series (fx, IMAP_SESSIONS ("authenticated"), 2);
    reply = pg_test_imap_command (imap, "NOOP", &error);
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_logout (idler, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_logout (bad, &error));
    g_assert_no_error (error);
  }
  wait_series (fx, IMAP_SESSIONS ("authenticated"), 0);
  wait_series (fx, IMAP_SESSIONS ("preauth"), 0);
  wait_series (fx, IMAP_SESSIONS ("idle"), 0);
  after = scrape (fx);
  g_assert_cmpfloat (DELTA (IMAP_STARTED), ==, 3);
  g_assert_cmpfloat (DELTA (IMAP_LOGIN ("ok")), ==, 2);
  g_assert_cmpfloat (DELTA (IMAP_LOGIN ("auth_failed")), ==, 1);
  g_assert_cmpfloat (DELTA (IMAP_LOGIN ("upstream_unavailable")), ==, 0);
  /* The POP3 series did not move. */
  g_assert_cmpfloat (DELTA (LOGIN_OK), ==, 0);
  g_assert_cmpfloat (DELTA (STARTED), ==, 0);
#undef DELTA
}

static void
test_formats (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HttpReply) prom = NULL;
  g_autoptr (HttpReply) prometheus_server = NULL;
  g_autoptr (HttpReply) missing = NULL;
  g_autoptr (HttpReply) post = NULL;
  g_autoptr (GHashTable) samples = NULL;

  prom = http_request (fx->metrics_port, "GET", "/metrics", "text/plain", &error);
  g_assert_no_error (error);
  g_assert_cmpuint (prom->status, ==, 200);
  g_assert_cmpstr (prom->content_type, ==, "text/plain; version=0.0.4; charset=utf-8");
  samples = pg_test_openmetrics_parse (prom->body, PG_METRICS_FORMAT_PROMETHEUS, &error);
  g_assert_no_error (error);
  g_assert_nonnull (strstr (prom->body, "# TYPE popgate_logins_total counter\n"));

  /* What Prometheus itself sends: OpenMetrics preferred. */
  prometheus_server = http_request (
      fx->metrics_port, "GET", "/metrics",
      "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
      "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
      &error);
  g_assert_no_error (error);
  g_assert_true (
      g_str_has_prefix (prometheus_server->content_type, "application/openmetrics-text"));
  g_assert_true (g_str_has_suffix (prometheus_server->body, "# EOF\n"));

  missing = http_request (fx->metrics_port, "GET", "/other", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (missing->status, ==, 404);
  post = http_request (fx->metrics_port, "POST", "/metrics", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (post->status, ==, 405);
}

static gboolean
port_closed_cb (gpointer user_data)
{
  guint16 port = GPOINTER_TO_UINT (user_data);
  g_autoptr (GError) error = NULL;
  g_autoptr (HttpReply) reply = http_request (port, "GET", "/metrics", NULL, &error);

  return reply == NULL && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED);
}

/* SIGHUP moves the endpoint: the new address serves, the old one is closed. */
static void
test_reload (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 old_port = fx->metrics_port;
  g_autofree gchar *listen = NULL;
  g_autoptr (GHashTable) samples = NULL;

  fx->metrics_port = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);
  g_assert_cmpuint (fx->metrics_port, !=, old_port);
  listen = g_strdup_printf ("127.0.0.1:%u", fx->metrics_port);
  pg_test_popgate_set (fx->popgate, "metrics", "listen", listen);
  g_assert_true (pg_test_popgate_write_config (fx->popgate, &error));
  g_assert_no_error (error);
  pg_test_popgate_reload (fx->popgate);
  {
    g_autofree gchar *needle = g_strdup_printf ("metrics at http://%s/metrics", listen);
    g_assert_true (pg_test_popgate_wait_log (fx->popgate, needle, 10000));
  }
  samples = scrape (fx);
  g_assert_true (pg_test_wait_until (port_closed_cb, GUINT_TO_POINTER (old_port), 10000));
}

/* --- audit trace ------------------------------------------------------------------------ */

/* The log lines of session `sid` that contain "trace: ", in order. */
static GPtrArray *
trace_lines (const char *log, const char *sid_prefix)
{
  g_auto (GStrv) lines = g_strsplit (log, "\n", -1);
  GPtrArray *out = g_ptr_array_new_with_free_func (g_free);

  for (gsize i = 0; lines[i] != NULL; i++)
    if (strstr (lines[i], sid_prefix) != NULL && strstr (lines[i], "trace: ") != NULL)
      g_ptr_array_add (out, g_strdup (strstr (lines[i], "trace: ")));
  return out;
}

/* The session id popgate gave the first session that logged in as `user`: "[N] ". */
static gchar *
session_prefix (const char *log, const char *user)
{
  g_autofree gchar *needle = g_strdup_printf ("login: user=%s ", user);
  const char *hit = strstr (log, needle);
  const char *open;
  const char *close;

  if (hit == NULL)
    g_error ("no \"%s\" in the log:\n%s", needle, log);
  for (open = hit; open > log && *open != '['; open--)
    ;
  close = strchr (open, ']');
  g_assert_true (*open == '[' && close != NULL && close < hit);
  return g_strndup (open, (gsize) (close - open + 1));
}

/* The same for the IMAP session that logged in as `user`. */
static gchar *
imap_session_prefix (const char *log, const char *user)
{
  g_autofree gchar *needle = g_strdup_printf ("imap session started: user=%s ", user);
  const char *hit = strstr (log, needle);
  const char *open;
  const char *close;

  if (hit == NULL)
    g_error ("no \"%s\" in the log:\n%s", needle, log);
  for (open = hit; open > log && *open != '['; open--)
    ;
  close = strchr (open, ']');
  g_assert_true (*open == '[' && close != NULL && close < hit);
  return g_strndup (open, (gsize) (close - open + 1));
}

static gssize
find_line (GPtrArray *lines, gsize from, const char *needle)
{
  for (gsize i = from; i < lines->len; i++)
    if (strstr (g_ptr_array_index (lines, i), needle) != NULL)
      return (gssize) i;
  return -1;
}

static void
dump_trace (GPtrArray *lines)
{
  for (guint i = 0; i < lines->len; i++)
    g_test_message ("%s", (const char *) g_ptr_array_index (lines, i));
}

/* DELE 2 → its UID → UID STORE and UID EXPUNGE of that UID at QUIT, in that order. */
static void
test_trace_dele (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  guint32 uid2 = g_array_index (fx->uids, guint32, 1);
  g_autofree gchar *log = NULL;
  g_autofree gchar *sid = NULL;
  g_autoptr (GPtrArray) lines = NULL;
  g_autofree gchar *dele = NULL;
  g_autofree gchar *store = NULL;
  g_autofree gchar *expunge = NULL;
  gssize at_user, at_pass, at_dele, at_quit, at_store, at_expunge;

  g_assert_true (pg_test_pop3_login (pop3, fx->user, PASSWORD, NULL, &error));
  g_assert_no_error (error);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "UIDL 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "pop3 session ended", 10000));

  log = pg_test_popgate_read_log (fx->popgate);
  sid = session_prefix (log, fx->user);
  lines = trace_lines (log, sid);
  dump_trace (lines);

  dele = g_strdup_printf ("trace: C: DELE 2 -> uid %u uidl %08x", uid2, uid2);
  /* As the README shows it: a flag's backslash is not doubled. */
  store = g_strdup_printf ("UID STORE %u +FLAGS.SILENT (\\Deleted)", uid2);
  expunge = g_strdup_printf ("UID EXPUNGE %u", uid2);
  at_user = find_line (lines, 0, "trace: C: USER ");
  at_pass = find_line (lines, 0, "trace: C: PASS <redacted>");
  at_dele = find_line (lines, 0, dele);
  at_quit = find_line (lines, 0, "trace: C: QUIT -> delete=expunge for 1 uids");
  at_store = find_line (lines, MAX (at_quit, 0), store);
  at_expunge = find_line (lines, MAX (at_store, 0), expunge);
  g_assert_cmpint (at_user, >=, 0);
  g_assert_cmpint (at_pass, >, at_user);
  g_assert_cmpint (at_dele, >, at_pass);
  g_assert_cmpint (at_quit, >, at_dele);
  g_assert_cmpint (at_store, >, at_quit);
  g_assert_cmpint (at_expunge, >, at_store);
  /* Upstream lines are marked U: and the tagged results are traced too. */
  g_assert_true (strstr (g_ptr_array_index (lines, at_store), "trace: U: ") != NULL);
  g_assert_cmpint (find_line (lines, (gsize) at_expunge, "UID EXPUNGE OK"), >, at_expunge);
  /* The UIDL the client saw is the one the trace names. */
  g_assert_cmpint (find_line (lines, 0, "trace: C: UIDL 2 -> uid"), >, at_pass);
}

/* AUTH PLAIN (inline and as a continuation) and the upstream AUTHENTICATE: traced, but
 * not one byte of the credentials. */
static void
test_trace_no_secrets (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *plain = NULL;
  g_autofree gchar *b64 = NULL;
  g_autofree gchar *inline_cmd = NULL;
  g_autofree gchar *log = NULL;
  g_autofree gchar *sid = NULL;
  g_autoptr (GPtrArray) lines = NULL;
  gsize plain_len;

  plain = g_strdup_printf ("%c%s%c%s", 0, fx->user, 0, PASSWORD);
  plain_len = 2 + strlen (fx->user) + strlen (PASSWORD);
  b64 = g_base64_encode ((const guchar *) plain, plain_len);
  {
    /* A wrong password as a continuation line first, then the right one inline. */
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *bad_plain = g_strdup_printf ("%c%s%cwrong-%s", 0, fx->user, 0, PASSWORD);
    g_autofree gchar *bad_b64
        = g_base64_encode ((const guchar *) bad_plain, plain_len + strlen ("wrong-"));

    PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN", "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, bad_b64, "-ERR");
    inline_cmd = g_strdup_printf ("AUTH PLAIN %s", b64);
    PG_TEST_POP3_ASSERT_REPLY (pop3, inline_cmd, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "pop3 session ended", 10000));
  log = pg_test_popgate_read_log (fx->popgate);
  g_assert_null (strstr (log, PASSWORD));
  g_assert_null (strstr (log, b64));
  sid = session_prefix (log, fx->user);
  lines = trace_lines (log, sid);
  dump_trace (lines);
  g_assert_cmpint (find_line (lines, 0, "trace: C: AUTH PLAIN"), >=, 0);
  g_assert_cmpint (find_line (lines, 0, "trace: C: <redacted>"), >=, 0);
  g_assert_cmpint (find_line (lines, 0, "trace: C: AUTH PLAIN <redacted>"), >=, 0);
  g_assert_cmpint (find_line (lines, 0, "AUTHENTICATE PLAIN"), >=, 0);
  g_assert_cmpint (find_line (lines, 0, "trace: C: STAT"), >=, 0);
}

/* An IMAP session through the relay: pre-auth lines (LOGIN redacted), the login's upstream
 * commands, then each relayed client command by its word. */
static void
test_trace_imap (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *log = NULL;
  g_autofree gchar *sid = NULL;
  g_autoptr (GPtrArray) lines = NULL;
  g_autofree gchar *plain = NULL;
  g_autofree gchar *b64 = NULL;
  gssize at_login, at_up_auth, at_select, at_relayed_auth;

  plain = g_strdup_printf ("%c%s%c%s", 0, fx->user, 0, PASSWORD);
  b64 = g_base64_encode ((const guchar *) plain, 2 + strlen (fx->user) + strlen (PASSWORD));
  {
    g_autoptr (PgTestImap) imap = imap_connect (fx);
    g_autofree gchar *reply = NULL;
    g_autofree gchar *status = NULL;
    g_autofree gchar *auth = g_strdup_printf ("AUTHENTICATE PLAIN %s", b64);

    g_assert_true (pg_test_imap_login (imap, fx->user, PASSWORD, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error));
    g_assert_no_error (error);
    /* Relayed: Dovecot refuses it after login, and the trace must not show its data. */
    reply = pg_test_imap_command_status (imap, auth, &status, &error);
    g_assert_no_error (error);
    g_assert_cmpstr (status, !=, "OK");
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
  }
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "imap session ended", 10000));
  log = pg_test_popgate_read_log (fx->popgate);
  g_assert_null (strstr (log, PASSWORD));
  g_assert_null (strstr (log, b64));
  sid = imap_session_prefix (log, fx->user);
  lines = trace_lines (log, sid);
  dump_trace (lines);
  at_login = find_line (lines, 0, " LOGIN <redacted>");
  at_up_auth = find_line (lines, MAX (at_login, 0), "trace: U: ");
  at_select = find_line (lines, MAX (at_up_auth, 0), " EXAMINE INBOX");
  at_relayed_auth = find_line (lines, MAX (at_select, 0), " AUTHENTICATE PLAIN");
  g_assert_cmpint (at_login, >=, 0);
  g_assert_true (strstr (g_ptr_array_index (lines, at_login), "trace: C: ") != NULL);
  g_assert_cmpint (at_up_auth, >, at_login);
  /* Dovecot offers AUTH=PLAIN: the login went up as AUTHENTICATE, before the EXAMINE. */
  g_assert_cmpint (find_line (lines, (gsize) at_login, "U: "), <, at_select);
  g_assert_cmpint (find_line (lines, (gsize) at_login, "AUTHENTICATE"), <, at_select);
  g_assert_cmpint (at_select, >, at_up_auth);
  g_assert_true (strstr (g_ptr_array_index (lines, at_select), "trace: C: ") != NULL);
  g_assert_cmpint (at_relayed_auth, >, at_select);
  g_assert_cmpint (find_line (lines, (gsize) at_relayed_auth, " LOGOUT"), >, at_relayed_auth);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int rc;
  static const char *const trace_config[] = { "log", "trace", "true", NULL };
  static const char *const trace_flag[] = { "--", "--trace", "", NULL };
  /* The scrape counts an [IN-USE] refusal: only with the lock on (off by default). */
  static const char *const lock_session[] = { "pop3", "lock_session", "true", NULL };
  const struct
  {
    const char *path;
    const char *const *settings;
    void (*func) (Fixture *, gconstpointer);
  } tests[] = {
    { "/popgate/metrics/scrape", lock_session, test_scrape },
    { "/popgate/metrics/scrape-imap", NULL, test_scrape_imap },
    { "/popgate/metrics/formats", NULL, test_formats },
    { "/popgate/metrics/reload", NULL, test_reload },
    { "/popgate/trace/dele-expunge", trace_config, test_trace_dele },
    { "/popgate/trace/no-secrets", trace_flag, test_trace_no_secrets },
    { "/popgate/trace/imap", trace_config, test_trace_imap },
  };

  g_test_init (&argc, &argv, NULL);
  upstream = pg_test_dovecot_new (NULL, &error);
  g_assert_no_error (error);
  for (gsize i = 0; i < G_N_ELEMENTS (tests); i++)
    {
      g_autofree gchar *user = g_ascii_strdown (strrchr (tests[i].path, '/') + 1, -1);
      if (!pg_test_dovecot_add_user (upstream, user, PASSWORD, &error))
        g_error ("%s", error->message);
      g_test_add (tests[i].path, Fixture, tests[i].settings, fixture_setup, tests[i].func,
                  fixture_teardown);
    }
  if (!pg_test_dovecot_start (upstream, &error))
    g_error ("cannot start Dovecot: %s", error->message);
  rc = g_test_run ();
  pg_test_dovecot_free (upstream);
  return rc;
}
