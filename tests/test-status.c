/* popgate — the status page and its JSON/SSE API.
 *
 * In process: the session registry and PgStatusServer on a loopback port, driven with
 * libsoup's client on the same main loop (trace ring order and bound, the subscriber cap,
 * a subscriber that never reads is dropped while the registry keeps going).
 * End to end: the real popgate binary in front of a real Dovecot, real POP3 sessions, the
 * API over HTTP, the event stream read raw from a socket, the access rules, and the page in
 * a real headless Chromium driven over the DevTools protocol.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-status-server.h"
#include "popgate/pg-status.h"
#include "popgate/pg-trace.h"

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <string.h>
#include <sys/socket.h>

#define PASSWORD "St4tus-s3cret-pw"
#define WATCHDOG_MS 20000
#define CHROMIUM "/usr/bin/chromium"

static PgTestDovecot *upstream = NULL;

/* --- main-loop helpers (in-process tests) ------------------------------------------------ */

static gboolean
watchdog_cb (gpointer user_data)
{
  g_error ("watchdog: %s did not happen in time", (const char *) user_data);
  return G_SOURCE_REMOVE;
}

/* Run the default main context until *done, failing the test after WATCHDOG_MS. */
static void
loop_until (gboolean *done, const char *what)
{
  guint id = g_timeout_add (WATCHDOG_MS, watchdog_cb, (gpointer) what);

  while (!*done)
    g_main_context_iteration (NULL, TRUE);
  g_source_remove (id);
}

typedef struct
{
  gboolean done;
  guint status;
  gchar *body;
} AsyncGet;

static void
async_get_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  AsyncGet *get = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) bytes
      = soup_session_send_and_read_finish (SOUP_SESSION (source), result, &error);

  g_assert_no_error (error);
  get->status = soup_message_get_status (
      soup_session_get_async_result_message (SOUP_SESSION (source), result));
  get->body = g_strndup (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
  get->done = TRUE;
}

/* GET on the in-process server while the main loop keeps serving it. */
static gchar *
inproc_get (const char *base, const char *path, guint *out_status)
{
  g_autoptr (SoupSession) session = soup_session_new_with_options ("proxy-resolver", NULL, NULL);
  g_autofree gchar *url = g_strconcat (base, path, NULL);
  g_autoptr (SoupMessage) msg = soup_message_new ("GET", url);
  AsyncGet get = { 0 };

  soup_session_send_and_read_async (session, msg, G_PRIORITY_DEFAULT, NULL, async_get_cb, &get);
  loop_until (&get.done, url);
  *out_status = get.status;
  return get.body;
}

static JsonNode *
parse_json (const char *text)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) error = NULL;

  json_parser_load_from_data (parser, text, -1, &error);
  g_assert_no_error (error);
  return json_node_copy (json_parser_get_root (parser));
}

/* The session with `id` in a /api/sessions reply, or NULL. */
static JsonObject *
find_session (JsonNode *root, gint64 id)
{
  JsonArray *list = json_object_get_array_member (json_node_get_object (root), "sessions");

  for (guint i = 0; i < json_array_get_length (list); i++)
    {
      JsonObject *s = json_array_get_object_element (list, i);
      if (json_object_get_int_member (s, "id") == id)
        return s;
    }
  return NULL;
}

typedef struct
{
  const char *state;
  guint retrieved;
} FakeSession;

static void
fake_fill_cb (gpointer owner, PgStatusInfo *info)
{
  FakeSession *fake = owner;

  info->frontend = PG_METRICS_FRONTEND_POP3;
  info->client = "127.0.0.1:4242";
  info->user = "fake\x01user";
  info->tag = "laptop";
  info->state = fake->state;
  info->retrieved = fake->retrieved;
}

static PgStatusServer *
inproc_server (gchar **out_base)
{
  g_autoptr (GError) error = NULL;
  guint16 port = pg_test_free_port ("127.0.0.1", &error);
  g_autofree gchar *text = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\n[pop3]\n"
                                            "listen = 127.0.0.1:1110\n[status]\n"
                                            "listen = 127.0.0.1:%u\n",
                                            port);
  g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "test", &error);
  PgStatusServer *server = pg_status_server_new ();
  g_autoptr (GPtrArray) bound = NULL;

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_status_server_apply (server, config, &error), error);
  bound = pg_status_server_get_bound_addresses (server);
  g_assert_cmpuint (bound->len, ==, 1);
  *out_base = g_strdup_printf ("http://%s", (const char *) g_ptr_array_index (bound, 0));
  return server;
}

/* --- in-process tests ---------------------------------------------------------------------- */

static void
test_registry_api (void)
{
  g_autofree gchar *base = NULL;
  g_autoptr (PgStatusServer) server = inproc_server (&base);
  FakeSession fake = { "AUTHORIZATION", 0 };
  guint status = 0;
  g_autofree gchar *body = NULL;
  g_autoptr (JsonNode) root = NULL;
  JsonObject *s;

  g_assert_true (pg_trace_is_enabled ()); /* the page wants the trace, logged or not */
  pg_status_session_update (901, fake_fill_cb, &fake);
  fake.state = "TRANSACTION";
  fake.retrieved = 2;
  pg_status_session_update (901, fake_fill_cb, &fake);
  body = inproc_get (base, "/api/sessions", &status);
  g_assert_cmpuint (status, ==, 200);
  root = parse_json (body);
  s = find_session (root, 901);
  g_assert_nonnull (s);
  g_assert_cmpstr (json_object_get_string_member (s, "state"), ==, "TRANSACTION");
  g_assert_cmpstr (json_object_get_string_member (s, "frontend"), ==, "pop3");
  g_assert_cmpint (json_object_get_int_member (s, "retrieved"), ==, 2);
  /* Peer text is escaped before it reaches JSON. */
  g_assert_cmpstr (json_object_get_string_member (s, "user"), ==, "fake\\x01user");
  g_assert_cmpstr (json_object_get_string_member (s, "tag"), ==, "laptop");

  /* The ring keeps the last PG_STATUS_TRACE_LINES lines, in order. */
  for (guint i = 1; i <= PG_STATUS_TRACE_LINES + 50; i++)
    {
      g_autofree gchar *line = g_strdup_printf ("C: NOOP %u", i);
      pg_status_trace (901, line);
    }
  g_clear_pointer (&body, g_free);
  g_clear_pointer (&root, json_node_unref);
  body = inproc_get (base, "/api/sessions/901/trace", &status);
  g_assert_cmpuint (status, ==, 200);
  root = parse_json (body);
  {
    JsonObject *trace = json_node_get_object (root);
    JsonArray *lines = json_object_get_array_member (trace, "lines");

    g_assert_cmpint (json_object_get_int_member (trace, "seq"), ==, PG_STATUS_TRACE_LINES + 50);
    g_assert_cmpuint (json_array_get_length (lines), ==, PG_STATUS_TRACE_LINES);
    for (guint i = 0; i < PG_STATUS_TRACE_LINES; i++)
      {
        JsonObject *l = json_array_get_object_element (lines, i);
        g_autofree gchar *want = g_strdup_printf ("C: NOOP %u", 51 + i);
        g_assert_cmpint (json_object_get_int_member (l, "seq"), ==, 51 + i);
        g_assert_cmpstr (json_object_get_string_member (l, "line"), ==, want);
      }
  }

  /* Gone from the live list when it ends, into "recent" with its trace, until
   * PG_STATUS_RECENT_SESSIONS newer ones have ended. */
  pg_status_session_update (901, NULL, NULL);
  g_clear_pointer (&body, g_free);
  g_clear_pointer (&root, json_node_unref);
  body = inproc_get (base, "/api/sessions", &status);
  root = parse_json (body);
  g_assert_null (find_session (root, 901));
  {
    JsonArray *recent = json_object_get_array_member (json_node_get_object (root), "recent");
    JsonObject *gone = json_array_get_object_element (recent, 0);
    g_assert_cmpint (json_object_get_int_member (gone, "id"), ==, 901);
    g_assert_cmpint (json_object_get_int_member (gone, "ended_ms"), >=,
                     json_object_get_int_member (gone, "started_ms"));
    g_assert_cmpstr (json_object_get_string_member (gone, "state"), ==, "TRANSACTION");
  }
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/api/sessions/901/trace", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (body, "C: NOOP 250"));
  for (guint64 id = 1000; id < 1000 + PG_STATUS_RECENT_SESSIONS; id++)
    {
      pg_status_session_update (id, fake_fill_cb, &fake);
      pg_status_trace (id, "C: QUIT");
      pg_status_session_update (id, NULL, NULL);
    }
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/api/sessions/901/trace", &status);
  g_assert_cmpuint (status, ==, 404);
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/api/sessions/1000/trace", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (body, "C: QUIT"));
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/api/sessions/x/trace", &status);
  g_assert_cmpuint (status, ==, 404);
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (body, "status.js"));
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/status.js", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (body, "EventSource"));
}

typedef struct
{
  SoupSession *session;
  SoupMessage *msg;
  GInputStream *stream;
  gboolean done;
} Subscriber;

static void
subscriber_sent_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Subscriber *sub = user_data;
  g_autoptr (GError) error = NULL;

  sub->stream = soup_session_send_finish (SOUP_SESSION (source), result, &error);
  g_assert_no_error (error);
  sub->done = TRUE;
}

/* A stalled subscriber: connected, request sent, never reads. A small receive buffer so
 * the kernel holds little on our side. */
static GSocket *
stalled_subscriber (const char *base)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocket) socket
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &error);
  g_autoptr (GInetSocketAddress) addr = NULL;
  g_autofree gchar *request = NULL;
  const char *hostport = base + strlen ("http://");
  guint64 port = 0;

  g_assert_no_error (error);
  g_assert_true (g_socket_set_option (socket, SOL_SOCKET, SO_RCVBUF, 4096, &error));
  g_assert_true (
      g_ascii_string_to_unsigned (strchr (hostport, ':') + 1, 10, 1, 65535, &port, NULL));
  addr = G_INET_SOCKET_ADDRESS (g_inet_socket_address_new_from_string ("127.0.0.1", (guint) port));
  PG_TEST_ASSERT_OK (g_socket_connect (socket, G_SOCKET_ADDRESS (addr), NULL, &error), error);
  request = g_strdup_printf ("GET /api/events?trace=all HTTP/1.1\r\nHost: %s\r\n\r\n", hostport);
  g_assert_cmpint (g_socket_send (socket, request, strlen (request), NULL, &error), ==,
                   strlen (request));
  return g_steal_pointer (&socket);
}

typedef struct
{
  GString *seen;
  const char *needle;
  gboolean done;
  gchar buf[16384];
} RawRead;

static gboolean
raw_read_cb (GSocket *socket, GIOCondition condition, gpointer user_data)
{
  RawRead *r = user_data;
  gssize n = g_socket_receive (socket, r->buf, sizeof r->buf, NULL, NULL);

  gsize from = r->seen->len > strlen (r->needle) ? r->seen->len - strlen (r->needle) : 0;

  if (n > 0)
    g_string_append_len (r->seen, r->buf, n);
  /* Only the new bytes (and a needle's length before them): megabytes arrive here. */
  r->done = n <= 0 || strstr (r->seen->str + from, r->needle) != NULL;
  return r->done ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

/* A snapshot bigger than the subscriber bound (a busy server) is not a reason to drop: a
 * subscriber with a small receive buffer, an event while the snapshot is still being
 * written. */
static void
test_big_snapshot (void)
{
  g_autofree gchar *base = NULL;
  g_autoptr (PgStatusServer) server = inproc_server (&base);
  g_autoptr (GSocket) socket = NULL;
  g_autoptr (GSource) source = NULL;
  FakeSession fake = { "TRANSACTION", 0 };
  FakeSession changed = { "UPDATE", 0 };
  RawRead r = { g_string_new (NULL), "\"state\":\"UPDATE\"", FALSE, { 0 } };
  /* 200 bytes of JSON or more each: 4 MB, more than a loopback socket's kernel buffers take. */
  const guint n = 20000;

  for (guint i = 0; i < n; i++)
    pg_status_session_update (5000 + i, fake_fill_cb, &fake);
  socket = stalled_subscriber (base);
  while (pg_status_server_get_n_subscribers (server) == 0)
    g_main_context_iteration (NULL, TRUE);
  pg_status_session_update (5000 + n - 1, fake_fill_cb, &changed);
  g_assert_cmpuint (pg_status_server_get_n_dropped (server), ==, 0);
  /* Now read it all: the snapshot, then the change. */
  g_socket_set_blocking (socket, FALSE);
  source = g_socket_create_source (socket, G_IO_IN, NULL);
  g_source_set_callback (source, G_SOURCE_FUNC (raw_read_cb), &r, NULL);
  g_source_attach (source, NULL);
  loop_until (&r.done, "the change after a big snapshot");
  g_assert_nonnull (strstr (r.seen->str, r.needle));
  g_assert_cmpuint (r.seen->len, >, PG_STATUS_SUBSCRIBER_QUEUE);
  g_assert_cmpuint (pg_status_server_get_n_dropped (server), ==, 0);
  g_source_destroy (source);
  g_socket_close (socket, NULL);
  for (guint i = 0; i < n; i++)
    pg_status_session_update (5000 + i, NULL, NULL);
  g_string_free (r.seen, TRUE);
}

/* Reload: the same address keeps its socket; another one rebinds; none closes the page
 * and stops collecting the trace. */
static void
test_reload (void)
{
  g_autofree gchar *base = NULL;
  g_autoptr (PgStatusServer) server = inproc_server (&base);
  g_autoptr (GError) error = NULL;
  guint16 port = pg_test_free_port ("127.0.0.1", &error);
  g_autofree gchar *moved = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\n[pop3]\n"
                                             "listen = 127.0.0.1:1110\n[status]\n"
                                             "listen = 127.0.0.1:%u\n",
                                             port);
  static const char off[] = "[upstream]\nhost = 127.0.0.1\n[pop3]\nlisten = 127.0.0.1:1110\n";
  g_autoptr (PgConfig) config = pg_config_load_data (moved, strlen (moved), "test", &error);
  g_autoptr (PgConfig) none = pg_config_load_data (off, strlen (off), "test", &error);
  g_autoptr (GPtrArray) bound = NULL;
  g_autofree gchar *body = NULL;
  g_autofree gchar *url = NULL;
  guint status = 0;

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_status_server_apply (server, config, &error), error);
  bound = pg_status_server_get_bound_addresses (server);
  g_assert_cmpuint (bound->len, ==, 1);
  url = g_strdup_printf ("http://127.0.0.1:%u", port);
  g_assert_cmpstr (g_ptr_array_index (bound, 0), ==, url + strlen ("http://"));
  body = inproc_get (url, "/api/sessions", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_true (pg_trace_is_enabled ());
  PG_TEST_ASSERT_OK (pg_status_server_apply (server, none, &error), error);
  g_clear_pointer (&bound, g_ptr_array_unref);
  bound = pg_status_server_get_bound_addresses (server);
  g_assert_cmpuint (bound->len, ==, 0);
  g_assert_false (pg_trace_is_enabled ());
}

static void
test_subscribers (void)
{
  g_autofree gchar *base = NULL;
  g_autoptr (PgStatusServer) server = inproc_server (&base);
  g_autofree gchar *url = g_strconcat (base, "/api/events", NULL);
  g_autoptr (SoupSession) session = soup_session_new_with_options (
      "proxy-resolver", NULL, "max-conns", 64, "max-conns-per-host", 64, NULL);
  Subscriber subs[PG_STATUS_MAX_SUBSCRIBERS];
  g_autoptr (GSocket) stalled = NULL;
  FakeSession fake = { "TRANSACTION", 0 };
  g_autofree gchar *line = g_strnfill (400, 'x');
  guint status = 0;
  g_autofree gchar *body = NULL;
  guint sent = 0;

  /* The cap: PG_STATUS_MAX_SUBSCRIBERS streams, then 503. */
  for (guint i = 0; i < PG_STATUS_MAX_SUBSCRIBERS; i++)
    {
      subs[i] = (Subscriber){ 0 };
      subs[i].msg = soup_message_new ("GET", url);
      soup_session_send_async (session, subs[i].msg, G_PRIORITY_DEFAULT, NULL, subscriber_sent_cb,
                               &subs[i]);
      loop_until (&subs[i].done, "an events stream opening");
      g_assert_cmpuint (soup_message_get_status (subs[i].msg), ==, 200);
    }
  g_assert_cmpuint (pg_status_server_get_n_subscribers (server), ==, PG_STATUS_MAX_SUBSCRIBERS);
  body = inproc_get (base, "/api/events", &status);
  g_assert_cmpuint (status, ==, 503);
  for (guint i = 0; i < PG_STATUS_MAX_SUBSCRIBERS; i++)
    {
      g_input_stream_close (subs[i].stream, NULL, NULL);
      g_object_unref (subs[i].stream);
      g_object_unref (subs[i].msg);
    }
  soup_session_abort (session);
  while (pg_status_server_get_n_subscribers (server) > 0)
    g_main_context_iteration (NULL, TRUE);

  /* A subscriber that never reads falls behind and is dropped; the sessions' side (the
   * registry's calls) never waits. Bounded: 64 MiB of trace lines at most. */
  stalled = stalled_subscriber (base);
  while (pg_status_server_get_n_subscribers (server) == 0)
    g_main_context_iteration (NULL, TRUE);
  pg_status_session_update (902, fake_fill_cb, &fake);
  while (pg_status_server_get_n_dropped (server) == 0 && sent < 160000)
    {
      pg_status_trace (902, line);
      sent++;
      if (sent % 64 == 0)
        while (g_main_context_iteration (NULL, FALSE))
          ;
    }
  g_assert_cmpuint (pg_status_server_get_n_dropped (server), ==, 1);
  g_test_message ("stalled subscriber dropped after %u trace lines of 400 bytes", sent);
  while (pg_status_server_get_n_subscribers (server) > 0)
    g_main_context_iteration (NULL, TRUE);
  /* The session's trace is still complete in its ring. */
  g_clear_pointer (&body, g_free);
  body = inproc_get (base, "/api/sessions/902/trace", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (body, line));
  pg_status_session_update (902, NULL, NULL);
}

static void
test_config (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-status-XXXXXX", NULL);
  g_autofree gchar *users = g_build_filename (dir, "users", NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autofree gchar *with_file = NULL;
  static const char base[] = "[upstream]\nhost = h\n[pop3]\nlisten = 127.0.0.1:1110\n";
  const struct
  {
    const char *status;
    const char *error;
  } bad[] = {
    { "listen = 192.0.2.1:9146\n", "not a loopback address" },
    { "listen = *:9146\n", "not a loopback address" },
    { "listen = 127.0.0.1:9146\nallow_remote = true\n", "needs [status] auth_file" },
    { "listen = 127.0.0.1:1110\n", "overlaps" },
    { "listen = 127.0.0.1:9146\nbogus = 1\n", "bogus" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autofree gchar *text = g_strconcat (base, "[status]\n", bad[i].status, NULL);
      g_autoptr (PgConfig) c = pg_config_load_data (text, strlen (text), "test", &error);

      g_assert_null (c);
      g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
      if (strstr (error->message, bad[i].error) == NULL)
        g_error ("\"%s\": expected \"%s\" in: %s", bad[i].status, bad[i].error, error->message);
      g_clear_error (&error);
    }

  /* PBKDF2-HMAC-SHA256("pbkdf-secret", "salt", 1000, 32) and a PLAIN secret. */
  g_assert_true (g_file_set_contents_full (
      users,
      "# status page users\nadmin:{PLAIN}open-sesame\n"
      "carol:{PBKDF2-SHA256}1000$c2FsdA==$DgMm1xuV/trFQkBouMahWUYyPDsbay3m8hKDoNyWqz4=\n",
      -1, G_FILE_SET_CONTENTS_NONE, 0644, &error));
  with_file = g_strdup_printf ("%s[status]\nlisten = 0.0.0.0:9146\nallow_remote = true\n"
                               "auth_file = %s\n",
                               base, users);
  config = pg_config_load_data (with_file, strlen (with_file), "test", &error);
  g_assert_null (config);
  g_assert_nonnull (strstr (error->message, "chmod 600"));
  g_clear_error (&error);
  g_assert_cmpint (g_chmod (users, 0600), ==, 0);
  config = pg_config_load_data (with_file, strlen (with_file), "test", &error);
  g_assert_no_error (error);
  g_assert_true (pg_config_status_check_user (config, "admin", "open-sesame"));
  g_assert_false (pg_config_status_check_user (config, "admin", "open-sesam"));
  g_assert_true (pg_config_status_check_user (config, "carol", "pbkdf-secret"));
  g_assert_false (pg_config_status_check_user (config, "carol", "open-sesame"));
  g_assert_false (pg_config_status_check_user (config, "nobody", "open-sesame"));
  g_clear_pointer (&config, pg_config_unref);

  g_assert_true (g_file_set_contents_full (users, "admin {PLAIN}x\n", -1, G_FILE_SET_CONTENTS_NONE,
                                           0600, &error));
  config = pg_config_load_data (with_file, strlen (with_file), "test", &error);
  g_assert_null (config);
  g_assert_nonnull (strstr (error->message, "line 1"));
  g_clear_error (&error);
  pg_test_rm_rf (dir);
}

/* --- end to end ------------------------------------------------------------------------ */

typedef struct
{
  gchar *user;
  PgTestPopgate *popgate;
  guint16 status_port;
  gchar *dir; /* owned: scratch (browser profile, auth file) */
} Fixture;

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  const char *const *settings = data;
  g_autofree gchar *listen = NULL;

  fx->user = g_ascii_strdown (strrchr (g_test_get_path (), '/') + 1, -1);
  for (guint i = 0; i < 3; i++)
    {
      g_autofree gchar *msg
          = g_strdup_printf ("Subject: status %u\r\n\r\nbody %u\r\n", i + 1, i + 1);
      PG_TEST_ASSERT_OK (
          pg_test_dovecot_append (upstream, fx->user, "INBOX", msg, strlen (msg), &error), error);
    }
  fx->dir = g_dir_make_tmp ("popgate-status-XXXXXX", &error);
  g_assert_no_error (error);
  fx->popgate = pg_test_popgate_new (upstream, "none", &error);
  g_assert_no_error (error);
  fx->status_port = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);
  listen = g_strdup_printf ("127.0.0.1:%u", fx->status_port);
  pg_test_popgate_set (fx->popgate, "status", "listen", listen);
  pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "10ms");
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 2)
    {
      if (strcmp (settings[i], "auth_file") == 0)
        {
          g_autofree gchar *path = g_build_filename (fx->dir, "users", NULL);
          g_assert_true (g_file_set_contents_full (path, settings[i + 1], -1,
                                                   G_FILE_SET_CONTENTS_NONE, 0600, &error));
          pg_test_popgate_set (fx->popgate, "status", "auth_file", path);
        }
      else
        pg_test_popgate_set (fx->popgate, "status", settings[i], settings[i + 1]);
    }
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "status page at http://", 10000));
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  if (fx->popgate != NULL)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
      g_assert_null (strstr (log, PASSWORD));
      /* Exit status 0 on SIGTERM: under ASan that includes no leak at exit. */
      pg_test_popgate_assert_clean_exit (fx->popgate);
    }
  g_clear_pointer (&fx->popgate, pg_test_popgate_free);
  if (fx->dir != NULL)
    pg_test_rm_rf (fx->dir);
  g_free (fx->dir);
  g_free (fx->user);
}

/* A blocking GET against the popgate process (it runs its own loop). */
static gchar *
http_get (guint16 port, const char *path, const char *user, const char *password, guint *out_status)
{
  g_autoptr (SoupSession) session
      = soup_session_new_with_options ("proxy-resolver", NULL, "timeout", 10, NULL);
  g_autofree gchar *url = g_strdup_printf ("http://127.0.0.1:%u%s", port, path);
  g_autoptr (SoupMessage) msg = soup_message_new ("GET", url);
  g_autoptr (GBytes) body = NULL;
  g_autoptr (GError) error = NULL;

  if (user != NULL)
    {
      g_autofree gchar *pair = g_strdup_printf ("%s:%s", user, password);
      g_autofree gchar *b64 = g_base64_encode ((const guchar *) pair, strlen (pair));
      g_autofree gchar *value = g_strdup_printf ("Basic %s", b64);
      soup_message_headers_replace (soup_message_get_request_headers (msg), "Authorization", value);
    }
  body = soup_session_send_and_read (session, msg, NULL, &error);
  g_assert_no_error (error);
  *out_status = soup_message_get_status (msg);
  return g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body));
}

/* The id of the live session of `user`, or 0. */
static gint64
session_of (Fixture *fx, const char *user, const char *state)
{
  guint status = 0;
  g_autofree gchar *body = http_get (fx->status_port, "/api/sessions", NULL, NULL, &status);
  g_autoptr (JsonNode) root = NULL;
  JsonArray *list;

  g_assert_cmpuint (status, ==, 200);
  g_assert_null (strstr (body, PASSWORD));
  root = parse_json (body);
  list = json_object_get_array_member (json_node_get_object (root), "sessions");
  for (guint i = 0; i < json_array_get_length (list); i++)
    {
      JsonObject *s = json_array_get_object_element (list, i);
      if (!json_object_get_null_member (s, "user")
          && g_strcmp0 (json_object_get_string_member (s, "user"), user) == 0
          && (state == NULL || g_strcmp0 (json_object_get_string_member (s, "state"), state) == 0))
        return json_object_get_int_member (s, "id");
    }
  return 0;
}

typedef struct
{
  Fixture *fx;
  const char *user;
  const char *state;
  gint64 id;
} SessionWait;

static gboolean
session_present_cb (gpointer user_data)
{
  SessionWait *w = user_data;
  w->id = session_of (w->fx, w->user, w->state);
  return w->id != 0;
}

static gboolean
session_absent_cb (gpointer user_data)
{
  return !session_present_cb (user_data);
}

/* The raw event stream: what a browser reads, without a browser. */
typedef struct
{
  GSocketConnection *conn; /* owned */
  GString *seen;           /* owned: everything read so far */
} EventStream;

static void
event_stream_free (EventStream *es)
{
  g_clear_object (&es->conn);
  g_string_free (es->seen, TRUE);
  g_free (es);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EventStream, event_stream_free)

/* GET /api/events`query` ("?trace=all", "" for none). */
static EventStream *
event_stream_open (guint16 port, const char *query)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  EventStream *es = g_new0 (EventStream, 1);
  g_autofree gchar *request
      = g_strdup_printf ("GET /api/events%s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n\r\n", query, port);

  g_socket_client_set_timeout (client, 10);
  es->seen = g_string_new (NULL);
  es->conn = g_socket_client_connect_to_host (client, "127.0.0.1", port, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (es->conn)),
                                            request, strlen (request), NULL, NULL, &error));
  g_assert_no_error (error);
  return es;
}

/* Read until `needle` shows up (the socket's timeout bounds each read). */
static void
event_stream_wait (EventStream *es, const char *needle)
{
  GInputStream *in = g_io_stream_get_input_stream (G_IO_STREAM (es->conn));

  while (strstr (es->seen->str, needle) == NULL)
    {
      char buf[4096];
      g_autoptr (GError) error = NULL;
      gssize n = g_input_stream_read (in, buf, sizeof buf, NULL, &error);

      if (n <= 0)
        g_error ("event stream ended (%s) before \"%s\"; read: %s",
                 error != NULL ? error->message : "EOF", needle, es->seen->str);
      g_string_append_len (es->seen, buf, n);
    }
}

static PgTestPop3 *
pop3_login (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3
      = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);
  g_autofree gchar *user = g_strdup_printf ("USER %s#desk", fx->user);
  g_autofree gchar *pass = g_strdup_printf ("PASS %s", PASSWORD);

  g_assert_no_error (error);
  PG_TEST_POP3_ASSERT_REPLY (pop3, user, "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, pass, "+OK");
  return g_steal_pointer (&pop3);
}

static void
test_live (Fixture *fx, gconstpointer data)
{
  g_autoptr (EventStream) events = event_stream_open (fx->status_port, "?trace=all");
  g_autoptr (PgTestPop3) pop3 = NULL;
  SessionWait wait = { fx, fx->user, "TRANSACTION", 0 };
  g_autofree gchar *path = NULL;
  g_autofree gchar *body = NULL;
  g_autoptr (JsonNode) root = NULL;
  g_autoptr (GBytes) message = NULL;
  JsonArray *lines;
  guint status = 0;
  gint last = -1;
  const char *const expected[] = { "C: USER", "C: PASS",          "U: ",       "AUTHENTICATE",
                                   "C: STAT", "C: RETR 1 -> uid", "UID FETCH", "C: DELE 2 -> uid" };

  event_stream_wait (events, "event: sessions");
  pop3 = pop3_login (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 3");
  message = pg_test_pop3_retr (pop3, 1, NULL, NULL);
  g_assert_nonnull (message);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
  g_assert_true (pg_test_wait_until (session_present_cb, &wait, WATCHDOG_MS));

  /* The session as the API shows it: tag split off the login, counters. */
  body = http_get (fx->status_port, "/api/sessions", NULL, NULL, &status);
  root = parse_json (body);
  {
    JsonObject *s = find_session (root, wait.id);
    g_assert_cmpstr (json_object_get_string_member (s, "frontend"), ==, "pop3");
    g_assert_cmpstr (json_object_get_string_member (s, "tag"), ==, "desk");
    g_assert_cmpstr (json_object_get_string_member (s, "mailbox"), ==, "INBOX");
    g_assert_cmpint (json_object_get_int_member (s, "retrieved"), ==, 1);
    g_assert_cmpint (json_object_get_int_member (s, "deleted"), ==, 1);
    g_assert_cmpint (json_object_get_int_member (s, "bytes_out"), >, 0);
    g_assert_false (json_object_get_boolean_member (s, "tls"));
  }
  g_clear_pointer (&body, g_free);
  g_clear_pointer (&root, json_node_unref);

  /* Its trace, in order, each POP3 command before the upstream commands it caused; the
   * password never, the PASS line redacted. */
  path = g_strdup_printf ("/api/sessions/%" G_GINT64_FORMAT "/trace", wait.id);
  body = http_get (fx->status_port, path, NULL, NULL, &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_null (strstr (body, PASSWORD));
  root = parse_json (body);
  lines = json_object_get_array_member (json_node_get_object (root), "lines");
  for (gsize e = 0; e < G_N_ELEMENTS (expected); e++)
    {
      gint found = -1;
      for (guint i = (guint) (last + 1); i < json_array_get_length (lines) && found < 0; i++)
        {
          const char *line
              = json_object_get_string_member (json_array_get_object_element (lines, i), "line");
          if (strstr (line, expected[e]) != NULL)
            found = (gint) i;
        }
      if (found < 0)
        g_error ("trace: \"%s\" not found after line %d in %s", expected[e], last, body);
      last = found;
    }
  g_assert_nonnull (strstr (body, "C: PASS <redacted>"));

  /* The stream saw the start, the change to TRANSACTION, and the trace lines. */
  event_stream_wait (events, "C: DELE 2 -> uid");
  g_assert_nonnull (strstr (events->seen->str, "event: start"));
  g_assert_nonnull (strstr (events->seen->str, "\"state\":\"TRANSACTION\""));
  g_assert_nonnull (strstr (events->seen->str, "event: trace"));
  g_assert_null (strstr (events->seen->str, PASSWORD));

  /* QUIT: the session ends, and leaves the list. */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  event_stream_wait (events, "event: end");
  wait.state = NULL;
  g_assert_true (pg_test_wait_until (session_absent_cb, &wait, WATCHDOG_MS));
  /* Its trace stays readable among the recent sessions, QUIT's upstream commands too. */
  g_clear_pointer (&body, g_free);
  body = http_get (fx->status_port, path, NULL, NULL, &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (body, "C: QUIT -> delete=expunge for 1 uids"));
  g_assert_nonnull (strstr (body, "UID EXPUNGE"));
  g_assert_null (strstr (body, PASSWORD));
  g_assert_null (strstr (events->seen->str, PASSWORD));
}

/* SASL: AUTH PLAIN inline and as a continuation, AUTH LOGIN: neither the password nor
 * the base64 that carries it reaches the API or the event stream. */
static void
test_redaction (Fixture *fx, gconstpointer data)
{
  g_autoptr (EventStream) events = event_stream_open (fx->status_port, "?trace=all");
  g_autoptr (EventStream) quiet = event_stream_open (fx->status_port, "");
  g_autoptr (GError) error = NULL;
  g_autofree gchar *plain = g_strdup_printf ("%c%s%c%s", 0, fx->user, 0, PASSWORD);
  g_autofree gchar *b64
      = g_base64_encode ((const guchar *) plain, 2 + strlen (fx->user) + strlen (PASSWORD));
  g_autofree gchar *b64_user = g_base64_encode ((const guchar *) fx->user, strlen (fx->user));
  g_autofree gchar *b64_pass = g_base64_encode ((const guchar *) PASSWORD, strlen (PASSWORD));
  g_autofree gchar *inline_cmd = g_strdup_printf ("AUTH PLAIN %s", b64);
  SessionWait wait = { fx, fx->user, "TRANSACTION", 0 };
  g_autoptr (GPtrArray) traces = g_ptr_array_new_with_free_func (g_free);
  const char *const secrets[] = { PASSWORD, b64, b64_pass };

  event_stream_wait (events, "event: sessions");
  for (guint round = 0; round < 3; round++)
    {
      g_autoptr (PgTestPop3) pop3
          = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);
      g_autofree gchar *path = NULL;
      guint status = 0;

      g_assert_no_error (error);
      if (round == 0)
        PG_TEST_POP3_ASSERT_REPLY (pop3, inline_cmd, "+OK");
      else if (round == 1)
        {
          PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN", "+ ");
          PG_TEST_POP3_ASSERT_REPLY (pop3, b64, "+OK");
        }
      else
        {
          PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH LOGIN", "+ ");
          PG_TEST_POP3_ASSERT_REPLY (pop3, b64_user, "+ ");
          PG_TEST_POP3_ASSERT_REPLY (pop3, b64_pass, "+OK");
        }
      PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK");
      g_assert_true (pg_test_wait_until (session_present_cb, &wait, WATCHDOG_MS));
      path = g_strdup_printf ("/api/sessions/%" G_GINT64_FORMAT "/trace", wait.id);
      g_ptr_array_add (traces, http_get (fx->status_port, path, NULL, NULL, &status));
      g_assert_cmpuint (status, ==, 200);
      g_assert_nonnull (strstr (g_ptr_array_index (traces, round), "C: STAT"));
      PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
      g_assert_true (pg_test_pop3_wait_closed (pop3));
      wait.state = NULL;
      g_assert_true (pg_test_wait_until (session_absent_cb, &wait, WATCHDOG_MS));
      wait.state = "TRANSACTION";
    }
  event_stream_wait (events, "C: AUTH LOGIN");
  /* A stream that did not ask for trace lines gets the sessions only. */
  event_stream_wait (quiet, "\"ended_ms\"");
  g_assert_nonnull (strstr (quiet->seen->str, "event: start"));
  g_assert_null (strstr (quiet->seen->str, "event: trace"));
  g_ptr_array_add (traces, http_get (fx->status_port, "/api/sessions", NULL, NULL, &(guint){ 0 }));
  g_ptr_array_add (traces, g_strdup (events->seen->str));
  for (guint i = 0; i < traces->len; i++)
    for (gsize k = 0; k < G_N_ELEMENTS (secrets); k++)
      if (strstr (g_ptr_array_index (traces, i), secrets[k]) != NULL)
        g_error ("a secret (%" G_GSIZE_FORMAT ") reached the status API (%u)", k, i);
  g_assert_nonnull (strstr (g_ptr_array_index (traces, 0), "C: AUTH PLAIN <redacted>"));
  g_assert_nonnull (strstr (g_ptr_array_index (traces, 1), "C: <redacted>"));
}

/* An IMAP session through the IMAP front end: state, mailbox and IDLE as they change. */
static void
test_imap (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EventStream) events = event_stream_open (fx->status_port, "?trace=all");
  g_autoptr (PgTestImap) imap = NULL;
  SessionWait wait = { fx, fx->user, "SELECTED", 0 };
  g_autofree gchar *line = NULL;
  g_autofree gchar *body = NULL;
  g_autoptr (JsonNode) root = NULL;
  JsonObject *s;
  guint status = 0;

  event_stream_wait (events, "event: sessions");
  imap = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, fx->user, PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, "i1 IDLE\r\n", 9, &error), error);
  line = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (line, "+"));
  g_assert_true (pg_test_wait_until (session_present_cb, &wait, WATCHDOG_MS));
  body = http_get (fx->status_port, "/api/sessions", NULL, NULL, &status);
  root = parse_json (body);
  s = find_session (root, wait.id);
  g_assert_nonnull (s);
  g_assert_cmpstr (json_object_get_string_member (s, "frontend"), ==, "imap");
  g_assert_cmpstr (json_object_get_string_member (s, "mailbox"), ==, "INBOX");
  g_assert_true (json_object_get_boolean_member (s, "idle"));
  /* The stream followed: start, then the change to SELECTED (pushed or by the tick). */
  event_stream_wait (events, "\"state\":\"SELECTED\"");
  g_assert_nonnull (strstr (events->seen->str, "event: start"));
  g_assert_null (strstr (events->seen->str, PASSWORD));
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, "DONE\r\n", 6, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
  event_stream_wait (events, "event: end");
  wait.state = NULL;
  g_assert_true (pg_test_wait_until (session_absent_cb, &wait, WATCHDOG_MS));
}

/* A subscriber that connects and never reads does not hold up a RETR. */
static void
test_stalled (Fixture *fx, gconstpointer data)
{
  g_autoptr (EventStream) stalled = event_stream_open (fx->status_port, "?trace=all");
  g_autoptr (EventStream) watcher = event_stream_open (fx->status_port, "?trace=all");
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *big = NULL;
  GString *msg = g_string_new ("Subject: big\r\n\r\n");

  /* A message of 2 MiB, RETR'd ten times: far more trace and byte counters than a stalled
   * socket's buffers take. */
  while (msg->len < 2 * 1024 * 1024)
    g_string_append (msg, "status page stalled subscriber test line ........................\r\n");
  PG_TEST_ASSERT_OK (
      pg_test_dovecot_append (upstream, fx->user, "INBOX", msg->str, msg->len, &error), error);
  g_string_free (msg, TRUE);
  event_stream_wait (watcher, "event: sessions");
  pop3 = pop3_login (fx);
  for (guint round = 0; round < 10; round++)
    {
      g_autoptr (GBytes) got = pg_test_pop3_retr (pop3, 4, NULL, &error);
      g_assert_no_error (error);
      g_assert_cmpuint (g_bytes_get_size (got), >, 2 * 1024 * 1024);
      PG_TEST_POP3_ASSERT_REPLY (pop3, "NOOP", "+OK");
    }
  /* Still live, stalled subscriber or not: the API answers and the watcher saw it all. */
  event_stream_wait (watcher, "C: RETR 4 -> uid");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  event_stream_wait (watcher, "event: end");
}

/* The subscriber cap of the real server: the next stream gets 503. */
static void
test_cap (Fixture *fx, gconstpointer data)
{
  g_autoptr (GPtrArray) streams
      = g_ptr_array_new_with_free_func ((GDestroyNotify) event_stream_free);
  g_autoptr (EventStream) extra = NULL;

  for (guint i = 0; i < PG_STATUS_MAX_SUBSCRIBERS; i++)
    {
      EventStream *es = event_stream_open (fx->status_port, "?trace=all");
      event_stream_wait (es, "event: sessions");
      g_ptr_array_add (streams, es);
    }
  extra = event_stream_open (fx->status_port, "?trace=all");
  event_stream_wait (extra, "\r\n\r\n");
  g_assert_true (g_str_has_prefix (extra->seen->str, "HTTP/1.1 503"));
  /* One closes: there is room again. */
  g_ptr_array_remove_index (streams, 0);
  {
    g_autoptr (EventStream) again = NULL;
    for (guint attempt = 0; attempt < 200; attempt++)
      {
        g_clear_pointer (&again, event_stream_free);
        again = event_stream_open (fx->status_port, "?trace=all");
        event_stream_wait (again, "\r\n\r\n");
        if (g_str_has_prefix (again->seen->str, "HTTP/1.1 200"))
          break;
        /* The server may not have seen the close yet: it answered 503 and closed. */
        g_assert_true (g_str_has_prefix (again->seen->str, "HTTP/1.1 503"));
      }
    g_assert_true (g_str_has_prefix (again->seen->str, "HTTP/1.1 200"));
  }
}

/* allow_remote with an auth file: nothing without the right credentials. */
static void
test_auth (Fixture *fx, gconstpointer data)
{
  guint status = 0;
  g_autofree gchar *a = http_get (fx->status_port, "/api/sessions", NULL, NULL, &status);
  g_autofree gchar *b = NULL;
  g_autofree gchar *c = NULL;
  g_autofree gchar *d = NULL;
  g_autofree gchar *log = NULL;

  g_assert_cmpuint (status, ==, 401);
  b = http_get (fx->status_port, "/api/sessions", "admin", "wrong", &status);
  g_assert_cmpuint (status, ==, 401);
  c = http_get (fx->status_port, "/", "admin", "open-sesame", &status);
  g_assert_cmpuint (status, ==, 200);
  d = http_get (fx->status_port, "/api/sessions", "admin", "open-sesame", &status);
  g_assert_cmpuint (status, ==, 200);
  g_assert_nonnull (strstr (d, "\"sessions\""));
  log = pg_test_popgate_read_log (fx->popgate);
  g_assert_null (strstr (log, "open-sesame"));
}

/* Without allow_remote the page is loopback only: --check refuses anything else. */
static void
test_remote_refused (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (upstream, "none", &error);
  const char *const args[] = { "--check", NULL };
  g_autofree gchar *output = NULL;
  int code = 0;

  g_assert_no_error (error);
  pg_test_popgate_set (popgate, "status", "listen", "0.0.0.0:9146");
  PG_TEST_ASSERT_OK (pg_test_popgate_run (popgate, args, &code, &output, &error), error);
  g_assert_cmpint (code, !=, 0);
  g_assert_nonnull (strstr (output, "not a loopback address"));
  g_clear_pointer (&output, g_free);
  pg_test_popgate_set (popgate, "status", "allow_remote", "true");
  PG_TEST_ASSERT_OK (pg_test_popgate_run (popgate, args, &code, &output, &error), error);
  g_assert_cmpint (code, !=, 0);
  g_assert_nonnull (strstr (output, "auth_file"));
}

/* --- the page in a real browser (headless Chromium, DevTools protocol) -------------------- */

typedef struct
{
  SoupWebsocketConnection *ws;
  guint next_id;
  guint want_id;
  JsonNode *reply; /* owned: the reply to want_id */
} DevTools;

static void
devtools_message_cb (SoupWebsocketConnection *ws, gint type, GBytes *message, gpointer user_data)
{
  DevTools *dt = user_data;
  g_autofree gchar *text = g_strndup (g_bytes_get_data (message, NULL), g_bytes_get_size (message));
  g_autoptr (JsonNode) root = parse_json (text);
  JsonObject *obj = json_node_get_object (root);

  if (json_object_has_member (obj, "id") && json_object_get_int_member (obj, "id") == dt->want_id)
    dt->reply = g_steal_pointer (&root);
}

static gboolean
devtools_reply_cb (gpointer user_data)
{
  DevTools *dt = user_data;
  while (g_main_context_iteration (NULL, FALSE))
    ;
  return dt->reply != NULL;
}

/* Send a DevTools command and wait for its reply's "result". */
static JsonNode *
devtools_call (DevTools *dt, const char *method, const char *params_json)
{
  g_autofree gchar *text = NULL;
  JsonNode *result;

  dt->want_id = ++dt->next_id;
  text = g_strdup_printf ("{\"id\":%u,\"method\":\"%s\",\"params\":%s}", dt->want_id, method,
                          params_json != NULL ? params_json : "{}");
  soup_websocket_connection_send_text (dt->ws, text);
  g_assert_true (pg_test_wait_until (devtools_reply_cb, dt, WATCHDOG_MS));
  if (!json_object_has_member (json_node_get_object (dt->reply), "result"))
    g_error ("DevTools %s failed", method);
  result = json_node_copy (json_object_get_member (json_node_get_object (dt->reply), "result"));
  g_clear_pointer (&dt->reply, json_node_unref);
  return result;
}

/* Evaluate a JavaScript expression in the page; its value as JSON text. */
static gchar *
devtools_eval (DevTools *dt, const char *expression)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  g_autoptr (JsonNode) params = NULL;
  g_autofree gchar *params_json = NULL;
  g_autoptr (JsonNode) result = NULL;
  JsonObject *value;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "expression");
  json_builder_add_string_value (builder, expression);
  json_builder_set_member_name (builder, "returnByValue");
  json_builder_add_boolean_value (builder, TRUE);
  json_builder_end_object (builder);
  params = json_builder_get_root (builder);
  json_generator_set_root (generator, params);
  params_json = json_generator_to_data (generator, NULL);
  result = devtools_call (dt, "Runtime.evaluate", params_json);
  value = json_object_get_object_member (json_node_get_object (result), "result");
  if (!json_object_has_member (value, "value"))
    return g_strdup ("null");
  json_generator_set_root (generator, json_object_get_member (value, "value"));
  return json_generator_to_data (generator, NULL);
}

typedef struct
{
  DevTools *dt;
  const char *expression;
} EvalWait;

static gboolean
eval_true_cb (gpointer user_data)
{
  EvalWait *w = user_data;
  g_autofree gchar *value = devtools_eval (w->dt, w->expression);
  return strcmp (value, "true") == 0;
}

/* Chromium writes DevToolsActivePort ("PORT\nPATH\n") once it listens; wait for a whole
 * first line, not just the file. */
static gboolean
devtools_port_written_cb (gpointer user_data)
{
  g_autofree gchar *text = pg_test_read_file (user_data);
  return text != NULL && strchr (text, '\n') != NULL;
}

static void
ws_connected_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  DevTools *dt = user_data;
  g_autoptr (GError) error = NULL;

  dt->ws = soup_session_websocket_connect_finish (SOUP_SESSION (source), result, &error);
  g_assert_no_error (error);
}

static gboolean
ws_ready_cb (gpointer user_data)
{
  DevTools *dt = user_data;
  while (g_main_context_iteration (NULL, FALSE))
    ;
  return dt->ws != NULL;
}

typedef struct
{
  guint16 port;
  gchar *ws_url;
} PageTarget;

static gboolean
page_target_cb (gpointer user_data)
{
  PageTarget *t = user_data;
  guint status = 0;
  g_autofree gchar *body = http_get (t->port, "/json/list", NULL, NULL, &status);
  g_autoptr (JsonNode) root = NULL;
  JsonArray *list;

  if (status != 200)
    return FALSE;
  root = parse_json (body);
  list = json_node_get_array (root);
  for (guint i = 0; i < json_array_get_length (list); i++)
    {
      JsonObject *target = json_array_get_object_element (list, i);
      if (g_strcmp0 (json_object_get_string_member (target, "type"), "page") == 0
          && json_object_has_member (target, "webSocketDebuggerUrl"))
        {
          t->ws_url = g_strdup (json_object_get_string_member (target, "webSocketDebuggerUrl"));
          return TRUE;
        }
    }
  return FALSE;
}

static void
test_browser (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (GBytes) message = NULL;
  SessionWait wait = { fx, fx->user, "TRANSACTION", 0 };
  SessionWait imap_wait = { fx, fx->user, "SELECTED", 0 };
  g_autoptr (PgTestImap) imap = NULL;
  g_autofree gchar *idle_reply = NULL;
  g_autofree gchar *profile = g_build_filename (fx->dir, "chromium", NULL);
  g_autofree gchar *port_file = g_build_filename (profile, "DevToolsActivePort", NULL);
  g_autofree gchar *browser_log = g_build_filename (fx->dir, "chromium.log", NULL);
  g_autofree gchar *user_data_dir = g_strdup_printf ("--user-data-dir=%s", profile);
  g_autofree gchar *url = NULL;
  g_autofree gchar *port_text = NULL;
  g_autofree gchar *expr = NULL;
  g_autofree gchar *seen = NULL;
  g_autofree gchar *shot_path = NULL;
  g_autoptr (PgTestProcess) chromium = NULL;
  g_autoptr (SoupSession) session = soup_session_new_with_options ("proxy-resolver", NULL, NULL);
  g_autoptr (SoupMessage) ws_msg = NULL;
  g_autoptr (JsonNode) shot = NULL;
  DevTools dt = { 0 };
  PageTarget target = { 0 };
  EvalWait ew = { &dt, NULL };
  guint64 devtools_port = 0;

  /* Not installed is a failure, not a skip: scripts/deps.sh installs chromium. */
  if (!g_file_test (CHROMIUM, G_FILE_TEST_IS_EXECUTABLE))
    g_error (CHROMIUM " is missing: run scripts/deps.sh (Debian package chromium)");

  /* POP3 and IMAP side by side on one mailbox: an IMAP client IDLEs in INBOX, a POP3
   * client is in TRANSACTION. */
  imap = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, fx->user, PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, "i1 IDLE\r\n", 9, &error), error);
  idle_reply = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (idle_reply, "+"));
  g_assert_true (pg_test_wait_until (session_present_cb, &imap_wait, WATCHDOG_MS));
  pop3 = pop3_login (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 3");
  message = pg_test_pop3_retr (pop3, 1, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 3", "+OK");
  g_assert_true (pg_test_wait_until (session_present_cb, &wait, WATCHDOG_MS));

  url = g_strdup_printf ("http://127.0.0.1:%u/", fx->status_port);
  {
    const char *const argv[] = { CHROMIUM,
                                 "--headless",
                                 "--no-sandbox",
                                 "--disable-gpu",
                                 "--disable-quic",
                                 "--no-first-run",
                                 "--disable-background-networking",
                                 "--disable-component-update",
                                 "--disable-sync",
                                 "--remote-debugging-address=127.0.0.1",
                                 "--remote-debugging-port=0",
                                 "--window-size=1200,720",
                                 user_data_dir,
                                 url,
                                 NULL };
    chromium = pg_test_process_spawn (argv, browser_log, &error);
    g_assert_no_error (error);
  }
  g_assert_true (pg_test_wait_until (devtools_port_written_cb, port_file, WATCHDOG_MS));
  port_text = pg_test_read_file (port_file);
  g_assert_nonnull (port_text);
  g_assert_true (g_ascii_string_to_unsigned (g_strstrip (strtok (port_text, "\n")), 10, 1, 65535,
                                             &devtools_port, NULL));
  target.port = (guint16) devtools_port;
  g_assert_true (pg_test_wait_until (page_target_cb, &target, WATCHDOG_MS));
  ws_msg = soup_message_new ("GET", target.ws_url);
  soup_session_websocket_connect_async (session, ws_msg, NULL, NULL, G_PRIORITY_DEFAULT, NULL,
                                        ws_connected_cb, &dt);
  g_assert_true (pg_test_wait_until (ws_ready_cb, &dt, WATCHDOG_MS));
  soup_websocket_connection_set_max_incoming_payload_size (dt.ws, 16 * 1024 * 1024);
  g_signal_connect (dt.ws, "message", G_CALLBACK (devtools_message_cb), &dt);

  /* The row appears; clicking it shows the trace, POP3 commands beside upstream ones. */
  expr = g_strdup_printf ("document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT
                          "\"]') !== null",
                          wait.id);
  ew.expression = expr;
  g_assert_true (pg_test_wait_until (eval_true_cb, &ew, WATCHDOG_MS));
  g_free (expr);
  expr = g_strdup_printf ("document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT
                          "\"]').click(), true",
                          wait.id);
  g_free (devtools_eval (&dt, expr));
  ew.expression = "[...document.querySelectorAll('#trace td:nth-child(2) .line')]"
                  ".some(e => e.textContent.includes('UID FETCH'))"
                  " && [...document.querySelectorAll('#trace td:first-child .line')]"
                  ".some(e => e.textContent.startsWith('DELE 3 -> uid'))";
  g_assert_true (pg_test_wait_until (eval_true_cb, &ew, WATCHDOG_MS));
  g_free (expr);
  expr = g_strdup_printf (
      "JSON.stringify({row: document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT
      "\"]').innerText, trace: document.querySelector('#trace').innerText})",
      wait.id);
  seen = devtools_eval (&dt, expr);
  g_test_message ("rendered: %s", seen);
  g_assert_nonnull (strstr (seen, fx->user));
  g_assert_nonnull (strstr (seen, "TRANSACTION"));
  g_assert_nonnull (strstr (seen, "desk"));
  g_assert_nonnull (strstr (seen, "RETR 1 -> uid"));
  g_assert_nonnull (strstr (seen, "PASS <redacted>"));
  g_assert_null (strstr (seen, PASSWORD));
  g_free (expr);
  expr = g_strdup_printf ("(document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT
                          "\"]') || {innerText: ''}).innerText.includes('IDLE')",
                          imap_wait.id);
  ew.expression = expr;
  g_assert_true (pg_test_wait_until (eval_true_cb, &ew, WATCHDOG_MS));
  g_free (seen);
  g_free (expr);
  expr = g_strdup_printf ("document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT
                          "\"]').innerText",
                          imap_wait.id);
  seen = devtools_eval (&dt, expr);
  g_test_message ("IMAP row: %s", seen);
  g_assert_nonnull (strstr (seen, "IMAP"));
  g_assert_nonnull (strstr (seen, "SELECTED"));
  g_assert_nonnull (strstr (seen, "INBOX"));

  /* A screenshot for people to look at (the README's, made by this test). */
  shot = devtools_call (&dt, "Page.captureScreenshot", "{\"format\":\"png\"}");
  {
    const char *b64 = json_object_get_string_member (json_node_get_object (shot), "data");
    gsize len = 0;
    g_autofree guchar *png = g_base64_decode (b64, &len);
    shot_path = g_build_filename (
        g_getenv ("G_TEST_BUILDDIR") != NULL ? g_getenv ("G_TEST_BUILDDIR") : ".",
        "status-page.png", NULL);
    g_assert_cmpuint (len, >, 1000);
    g_assert_true (g_file_set_contents (shot_path, (const char *) png, (gssize) len, &error));
    g_test_message ("screenshot: %s (%" G_GSIZE_FORMAT " bytes)", shot_path, len);
  }

  /* QUIT: the row leaves the live table (for "Recently ended"), live and on a fresh load. */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, "DONE\r\n", 6, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
  g_free (expr);
  expr = g_strdup_printf (
      "document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT "\"]') === null"
      " && document.querySelector('#recent tr[data-session=\"%" G_GINT64_FORMAT "\"]') !== null",
      wait.id, wait.id);
  ew.expression = expr;
  g_assert_true (pg_test_wait_until (eval_true_cb, &ew, WATCHDOG_MS));
  {
    g_autoptr (JsonNode) r = devtools_call (&dt, "Page.reload", "{\"ignoreCache\":true}");
  }
  g_free (expr);
  expr = g_strdup_printf (
      "document.getElementById('connection').className === 'online'"
      " && document.querySelector('#sessions tr[data-session=\"%" G_GINT64_FORMAT "\"]') === null"
      " && document.querySelector('#recent tr[data-session=\"%" G_GINT64_FORMAT "\"]') !== null"
      " && !document.getElementById('empty').hidden",
      wait.id, wait.id);
  ew.expression = expr;
  g_assert_true (pg_test_wait_until (eval_true_cb, &ew, WATCHDOG_MS));

  soup_websocket_connection_close (dt.ws, SOUP_WEBSOCKET_CLOSE_NORMAL, NULL);
  g_clear_object (&dt.ws);
  g_assert_true (pg_test_process_stop (chromium, 10000));
  g_free (target.ws_url);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int rc;
  static const char *const auth_settings[]
      = { "allow_remote", "true", "auth_file", "admin:{PLAIN}open-sesame\n", NULL };
  const struct
  {
    const char *path;
    const char *const *settings;
    void (*func) (Fixture *, gconstpointer);
  } tests[] = {
    { "/popgate/status/live", NULL, test_live },
    { "/popgate/status/imap", NULL, test_imap },
    { "/popgate/status/redaction", NULL, test_redaction },
    { "/popgate/status/stalled", NULL, test_stalled },
    { "/popgate/status/cap", NULL, test_cap },
    { "/popgate/status/auth", auth_settings, test_auth },
    { "/popgate/status/browser", NULL, test_browser },
  };

  g_test_init (&argc, &argv, NULL);
  pg_log_init (PG_LOG_LEVEL_WARNING);
  g_test_add_func ("/popgate/status/registry-api", test_registry_api);
  g_test_add_func ("/popgate/status/subscribers", test_subscribers);
  g_test_add_func ("/popgate/status/reload", test_reload);
  g_test_add_func ("/popgate/status/big-snapshot", test_big_snapshot);
  g_test_add_func ("/popgate/status/config", test_config);
  g_test_add_func ("/popgate/status/remote-refused", test_remote_refused);
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
  pg_status_shutdown ();
  return rc;
}
