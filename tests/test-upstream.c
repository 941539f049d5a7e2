/* Tests for the upstream IMAP client (src/upstream).
 *
 * Faults Dovecot will not produce (a drop mid-literal, malformed replies, BYE mid-command,
 * a server without STARTTLS/UIDPLUS/MOVE, silence) come from the tests' scripted peer
 * (pg-test-peer.h) on 127.0.0.1, run in this thread's main context. Behaviour is tested
 * against a real Dovecot when the fixture is available.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-peer.h"

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-upstream.h"

#include <glib/gstdio.h>
#include <string.h>

/* Every wait in this file is bounded by this. */
#define PG_TEST_DEADLINE_MS 15000

/* --- log capture: secrets must never reach a log line ----------------------------------- */

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

/* --- waiting ---------------------------------------------------------------------------- */

static gboolean
pg_test_deadline_cb (gpointer user_data)
{
  gboolean *expired = user_data;

  *expired = TRUE;
  return G_SOURCE_REMOVE;
}

/* Iterate the main context until *a or *b is TRUE; fail the test at the deadline. */
static void
pg_test_wait_either (const gboolean *a, const gboolean *b)
{
  gboolean expired = FALSE;
  guint id = g_timeout_add (PG_TEST_DEADLINE_MS, pg_test_deadline_cb, &expired);

  while (!*a && !*b && !expired)
    g_main_context_iteration (NULL, TRUE);
  if (!expired)
    g_source_remove (id);
  g_assert_false (expired);
}

typedef struct
{
  GAsyncResult *result; /* owned */
  gboolean done;
} PgTestAsync;

static void
pg_test_async_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestAsync *async = user_data;

  async->result = g_object_ref (result);
  async->done = TRUE;
}

/* Wait for an operation and hand out its result (owned). */
static GAsyncResult *
pg_test_async_wait (PgTestAsync *async)
{
  pg_test_wait_flag (&async->done);
  async->done = FALSE;
  return g_steal_pointer (&async->result);
}

/* --- scripted peer (tests/pg-test-peer.h), in this thread's main context ------------------- */

static PgTestPeer *
pg_test_peer_start (const PgTestPeerStep *steps)
{
  g_autoptr (GError) error = NULL;
  PgTestPeer *peer = pg_test_peer_new_in_context (steps, &error);

  g_assert_no_error (error);
  g_assert_nonnull (peer);
  return peer;
}

/* The script ran to its end without a mismatch. */
static void
pg_test_peer_assert_done (PgTestPeer *peer)
{
  g_assert_true (pg_test_peer_wait_finished (peer, PG_TEST_DEADLINE_MS));
  g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
}

/* --- helpers around PgUpstream ------------------------------------------------------------ */

static PgConfig *
pg_test_config (const char *host, guint16 port, const char *tls, const char *ca_file,
                const char *extra)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text = g_strdup_printf (
      "[pop3]\nlisten = 127.0.0.1:1110\n[upstream]\nhost = %s\nport = %u\ntls = %s\n%s%s%s%s", host,
      port, tls, ca_file != NULL ? "ca_file = " : "", ca_file != NULL ? ca_file : "",
      ca_file != NULL ? "\n" : "", extra != NULL ? extra : "");
  PgConfig *config = pg_config_load_data (text, strlen (text), "test", &error);

  g_assert_no_error (error);
  g_assert_nonnull (config);
  return config;
}

static PgUpstream *
pg_test_upstream_for_peer (PgTestPeer *peer, const char *tls, const char *extra)
{
  g_autoptr (PgConfig) config
      = pg_test_config ("127.0.0.1", pg_test_peer_get_port (peer), tls, NULL, extra);

  return pg_upstream_new (config, &config->upstream, 7);
}

static gboolean
pg_test_connect (PgUpstream *upstream, GError **error)
{
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;

  pg_upstream_connect_async (upstream, NULL, pg_test_async_cb, &async);
  result = pg_test_async_wait (&async);
  return pg_upstream_connect_finish (upstream, result, error);
}

static gboolean
pg_test_noop (PgUpstream *upstream, GError **error)
{
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;

  pg_upstream_noop_async (upstream, NULL, pg_test_async_cb, &async);
  result = pg_test_async_wait (&async);
  return pg_upstream_noop_finish (upstream, result, error);
}

static gboolean
pg_test_login (PgUpstream *upstream, const char *user, const char *password, gboolean plain,
               GError **error)
{
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;

  if (plain)
    pg_upstream_authenticate_plain_async (upstream, user, password, NULL, pg_test_async_cb, &async);
  else
    pg_upstream_login_async (upstream, user, password, NULL, pg_test_async_cb, &async);
  result = pg_test_async_wait (&async);
  return plain ? pg_upstream_authenticate_plain_finish (upstream, result, error)
               : pg_upstream_login_finish (upstream, result, error);
}

static gboolean
pg_test_select (PgUpstream *upstream, const char *mailbox, PgUpstreamMailbox *out_mailbox,
                GError **error)
{
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;

  pg_upstream_select_async (upstream, mailbox, FALSE, NULL, pg_test_async_cb, &async);
  result = pg_test_async_wait (&async);
  return pg_upstream_select_finish (upstream, result, out_mailbox, error);
}

static gboolean
pg_test_logout (PgUpstream *upstream, GError **error)
{
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;

  pg_upstream_logout_async (upstream, NULL, pg_test_async_cb, &async);
  result = pg_test_async_wait (&async);
  return pg_upstream_logout_finish (upstream, result, error);
}

/* A body consumer that collects chunks; pauses after each chunk when asked to, or holds
 * each chunk once (PG_UPSTREAM_CHUNK_HOLD) and takes it when it comes again. */
typedef struct
{
  GString *data; /* owned */
  guint chunks;
  gboolean pause;
  gboolean paused;
  gboolean hold;
  GByteArray *held; /* owned: a copy of the chunk held, to compare with its redelivery */
  guint holds;
} PgTestBody;

static PgUpstreamChunkAction
pg_test_body_chunk_cb (const guint8 *data, gsize size, gpointer user_data)
{
  PgTestBody *body = user_data;

  g_assert_cmpuint (size, >, 0);
  g_assert_cmpuint (size, <=, PG_UPSTREAM_BODY_CHUNK);
  g_assert_false (body->paused);
  if (body->hold && body->held == NULL)
    {
      body->held = g_byte_array_new ();
      g_byte_array_append (body->held, data, (guint) size);
      body->holds++;
      body->paused = TRUE;
      return PG_UPSTREAM_CHUNK_HOLD;
    }
  if (body->held != NULL)
    {
      /* The held chunk again, exactly: nothing came in between. */
      g_assert_cmpmem (data, size, body->held->data, body->held->len);
      g_clear_pointer (&body->held, g_byte_array_unref);
    }
  g_string_append_len (body->data, (const char *) data, (gssize) size);
  body->chunks++;
  body->paused = body->pause;
  return body->pause ? PG_UPSTREAM_CHUNK_PAUSE : PG_UPSTREAM_CHUNK_NEXT;
}

typedef struct
{
  GArray *uids;  /* owned, of guint32 */
  GArray *sizes; /* owned, of guint64 */
} PgTestSizes;

static void
pg_test_size_cb (guint32 seq, guint32 uid, guint64 size, gpointer user_data)
{
  PgTestSizes *sizes = user_data;

  g_assert_cmpuint (seq, ==, sizes->uids->len + 1);
  g_array_append_val (sizes->uids, uid);
  g_array_append_val (sizes->sizes, size);
}

typedef struct
{
  guint exists, expunge, vanished, fetch, alert, bye, closed;
  guint last_exists;
  gboolean is_closed;
  gchar *bye_text;
} PgTestSignals;

static void
pg_test_exists_cb (PgUpstream *upstream, guint count, PgTestSignals *s)
{
  s->exists++;
  s->last_exists = count;
}

static void
pg_test_expunge_cb (PgUpstream *upstream, guint seq, PgTestSignals *s)
{
  s->expunge++;
}

static void
pg_test_vanished_cb (PgUpstream *upstream, const char *set, gboolean earlier, PgTestSignals *s)
{
  g_assert_cmpstr (set, ==, "1:3,5");
  g_assert_true (earlier);
  s->vanished++;
}

static void
pg_test_fetch_cb (PgUpstream *upstream, guint seq, const PgImapResponse *response, PgTestSignals *s)
{
  g_assert_nonnull (pg_imap_response_get_fetch_item (response, "FLAGS"));
  s->fetch++;
}

static void
pg_test_alert_cb (PgUpstream *upstream, const char *text, PgTestSignals *s)
{
  s->alert++;
}

static void
pg_test_bye_cb (PgUpstream *upstream, const char *text, PgTestSignals *s)
{
  s->bye++;
  g_free (s->bye_text);
  s->bye_text = g_strdup (text);
}

static void
pg_test_closed_cb (PgUpstream *upstream, const GError *error, PgTestSignals *s)
{
  s->closed++;
  s->is_closed = TRUE;
}

static void
pg_test_connect_signals (PgUpstream *upstream, PgTestSignals *s)
{
  g_signal_connect (upstream, "exists", G_CALLBACK (pg_test_exists_cb), s);
  g_signal_connect (upstream, "expunge", G_CALLBACK (pg_test_expunge_cb), s);
  g_signal_connect (upstream, "fetch", G_CALLBACK (pg_test_fetch_cb), s);
  g_signal_connect (upstream, "vanished", G_CALLBACK (pg_test_vanished_cb), s);
  g_signal_connect (upstream, "alert", G_CALLBACK (pg_test_alert_cb), s);
  g_signal_connect (upstream, "bye", G_CALLBACK (pg_test_bye_cb), s);
  g_signal_connect (upstream, "closed", G_CALLBACK (pg_test_closed_cb), s);
}

/* A password with everything that breaks naive quoting. */
#define PG_TEST_PASSWORD "p\"a\\ss wörd"

static void
pg_test_assert_no_secret_logged (const char *user, const char *password)
{
  g_autofree gchar *raw = g_strdup_printf ("%c%s%c%s", 0, user, 0, password);
  /* The base64 of "\0user\0password" as AUTHENTICATE PLAIN would send it. */
  g_autofree gchar *b64 = NULL;
  gsize raw_len = strlen (user) + strlen (password) + 2;

  raw[0] = '\0';
  b64 = g_base64_encode ((const guchar *) raw, raw_len);
  g_assert_null (strstr (pg_test_log->str, password));
  g_assert_null (strstr (pg_test_log->str, b64));
  g_assert_null (strstr (pg_test_log->str, "ss w"));
}

/* --- scripted-peer tests ------------------------------------------------------------------- */

static void
test_peer_login_literals (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN ID] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5}", 0 },
    { PG_TEST_PEER_SEND, "+ OK\r\n", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12}", 0 },
    { PG_TEST_PEER_SEND, "+ OK\r\n", 0 },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD, 0 },
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 UIDPLUS ID] Logged in\r\n", 0 },
    { PG_TEST_PEER_EXPECT,
      "ID (\"name\" \"popgate\" \"version\" \"1.0\" \"x-originating-ip\" "
      "\"192.0.2.1\")",
      0 },
    { PG_TEST_PEER_SEND, "* ID NIL\r\n$ OK ID done\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGOUT", 0 },
    { PG_TEST_PEER_SEND, "* BYE bye\r\n$ OK Logout completed.\r\n", 0 },
    { PG_TEST_PEER_CLOSE, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "none", NULL);
  g_autoptr (GError) error = NULL;
  PgTestSignals signals = { 0 };

  g_string_truncate (pg_test_log, 0);
  pg_test_connect_signals (upstream, &signals);
  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  g_assert_false (pg_upstream_is_authenticated (upstream));
  g_assert_false (pg_upstream_has_capability (upstream, "UIDPLUS"));
  g_assert_true (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, FALSE, &error));
  g_assert_no_error (error);
  g_assert_true (pg_upstream_is_authenticated (upstream));
  g_assert_true (pg_upstream_has_capability (upstream, "uidplus"));
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    pg_upstream_id_async (upstream, "popgate", "1.0", "192.0.2.1", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    g_assert_true (pg_upstream_id_finish (upstream, result, &error));
    g_assert_no_error (error);
  }
  g_assert_true (pg_test_logout (upstream, &error));
  g_assert_no_error (error);
  pg_test_peer_assert_done (peer);
  g_assert_true (pg_upstream_is_closed (upstream));
  g_assert_cmpuint (signals.closed, ==, 1);
  g_assert_cmpuint (signals.bye, ==, 1);
  pg_test_assert_no_secret_logged ("alice", PG_TEST_PASSWORD);
  g_free (signals.bye_text);
}

static void
test_peer_login_literal_plus (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD, 0 },
    /* No capabilities in the reply: the client must ask. */
    { PG_TEST_PEER_SEND, "$ NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD, 0 },
    { PG_TEST_PEER_SEND, "$ OK Logged in\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "CAPABILITY", 0 },
    { PG_TEST_PEER_SEND, "* CAPABILITY IMAP4rev1 MOVE\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "none", NULL);
  g_autoptr (GError) error = NULL;

  g_string_truncate (pg_test_log, 0);
  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  g_assert_false (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, FALSE, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  g_clear_error (&error);
  g_assert_true (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, FALSE, &error));
  g_assert_no_error (error);
  g_assert_true (pg_upstream_has_capability (upstream, "MOVE"));
  g_assert_false (pg_upstream_has_capability (upstream, "LITERAL+"));
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
  pg_test_assert_no_secret_logged ("alice", PG_TEST_PASSWORD);
}

/* Read from a stolen stream until `text` has arrived (appended to `got`), bounded. */
typedef struct
{
  GString *got;
  gboolean done;
  gboolean failed;
  guint8 buf[256];
} PgTestStreamRead;

static void
pg_test_stream_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestStreamRead *r = user_data;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, NULL);

  if (n <= 0)
    r->failed = TRUE;
  else
    g_string_append_len (r->got, (const char *) r->buf, n);
  r->done = TRUE;
}

static void
pg_test_stream_read_until (GIOStream *stream, GString *got, const char *text)
{
  while (strstr (got->str, text) == NULL)
    {
      PgTestStreamRead r = { got, FALSE, FALSE, { 0 } };

      g_input_stream_read_async (g_io_stream_get_input_stream (stream), r.buf, sizeof r.buf,
                                 G_PRIORITY_DEFAULT, NULL, pg_test_stream_read_cb, &r);
      pg_test_wait_flag (&r.done);
      g_assert_false (r.failed);
    }
}

/* The relay hand-off: after the login reply nothing the server sends is lost or parsed;
 * it is either returned as buffered bytes or still in the stream. */
static void
pg_test_steal_after_login (const PgTestPeerStep *script, const char *expected_cap)
{
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "none", NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) buffered = NULL;
  g_autoptr (GIOStream) stream = NULL;
  g_autoptr (GString) got = g_string_new (NULL);
  g_auto (GStrv) caps = NULL;
  gsize written = 0;

  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  /* Not logged in yet: nothing to hand over. */
  g_assert_null (pg_upstream_steal_stream (upstream, &buffered, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_clear_error (&error);
  g_assert_null (buffered);

  pg_upstream_hold_when_idle (upstream);
  g_assert_true (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, FALSE, &error));
  g_assert_no_error (error);
  caps = pg_upstream_dup_capabilities (upstream);
  g_assert_true (g_strv_contains ((const char *const *) caps, expected_cap));
  g_assert_cmpstr (caps[0], ==, "IMAP4rev1"); /* the server's order and spelling */

  stream = pg_upstream_steal_stream (upstream, &buffered, &error);
  g_assert_no_error (error);
  g_assert_nonnull (stream);
  g_assert_nonnull (buffered);
  g_assert_true (pg_upstream_is_closed (upstream));
  g_string_append_len (got, g_bytes_get_data (buffered, NULL), g_bytes_get_size (buffered));
  pg_test_stream_read_until (stream, got, "* 3 EXISTS\r\n");
  g_assert_cmpstr (got->str, ==, "* 3 EXISTS\r\n");

  /* The stream goes on working in the new owner's hands. */
  g_assert_true (g_output_stream_write_all (g_io_stream_get_output_stream (stream), "x NOOP\r\n", 8,
                                            &written, NULL, &error));
  g_assert_no_error (error);
  g_string_truncate (got, 0);
  pg_test_stream_read_until (stream, got, "x OK noop\r\n");
  pg_test_peer_assert_done (peer);
  /* Dropping the inert upstream leaves the connection alone. */
  g_clear_object (&upstream);
  g_assert_false (g_io_stream_is_closed (stream));
  pg_test_assert_no_secret_logged ("alice", PG_TEST_PASSWORD);
}

static void
test_peer_steal_stream (void)
{
  static const PgTestPeerStep with_caps[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD, 0 },
    /* Untagged data right behind the reply, in the same write. */
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n* 3 EXISTS\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "$ OK noop\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  static const PgTestPeerStep ask_caps[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD, 0 },
    { PG_TEST_PEER_SEND, "$ OK Logged in\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "CAPABILITY", 0 },
    { PG_TEST_PEER_SEND, "* CAPABILITY IMAP4rev1 MOVE\r\n$ OK done\r\n* 3 EXISTS\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "$ OK noop\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };

  pg_test_steal_after_login (with_caps, "IDLE");
  pg_test_steal_after_login (ask_caps, "MOVE");
}

static void
test_peer_authenticate_plain (void)
{
  g_autofree gchar *b64 = NULL;
  g_autofree gchar *ir_line = NULL;
  {
    static const char raw[] = "\0alice\0" PG_TEST_PASSWORD;
    b64 = g_base64_encode ((const guchar *) raw, sizeof raw - 1);
    ir_line = g_strdup_printf ("AUTHENTICATE PLAIN %s", b64);
  }
  for (int ir = 0; ir < 2; ir++)
    {
      const PgTestPeerStep with_ir[] = {
        { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n", 0 },
        { PG_TEST_PEER_EXPECT, ir_line, 0 },
        { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 X] Logged in\r\n", 0 },
        { PG_TEST_PEER_HANG, NULL, 0 },
      };
      const PgTestPeerStep without_ir[] = {
        { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n", 0 },
        { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN", 0 },
        { PG_TEST_PEER_SEND, "+ \r\n", 0 },
        { PG_TEST_PEER_EXPECT_RAW, b64, 0 },
        { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 X] Logged in\r\n", 0 },
        { PG_TEST_PEER_HANG, NULL, 0 },
      };
      const PgTestPeerStep *script = ir ? with_ir : without_ir;
      g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
      g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "none", NULL);
      g_autoptr (GError) error = NULL;

      g_string_truncate (pg_test_log, 0);
      g_assert_true (pg_test_connect (upstream, &error));
      g_assert_no_error (error);
      g_assert_true (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, TRUE, &error));
      g_assert_no_error (error);
      g_assert_true (pg_upstream_has_capability (upstream, "X"));
      pg_test_peer_assert_done (peer);
      pg_upstream_close (upstream);
      pg_test_assert_no_secret_logged ("alice", PG_TEST_PASSWORD);
    }
}

/* An [upstream:NAME] group: the connection goes where that group says, not to [upstream]
 * (port 1 there: nothing listens). */
static void
test_peer_named_upstream (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1] named ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "LOGIN {5}", 0 },
    { PG_TEST_PEER_SEND, "+ OK\r\n", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12}", 0 },
    { PG_TEST_PEER_SEND, "+ OK\r\n", 0 },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD, 0 },
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 NAMED] Logged in\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autofree gchar *extra = g_strdup_printf ("[upstream:other]\nhost = 127.0.0.1\nport = %u\n"
                                             "tls = none\n",
                                             pg_test_peer_get_port (peer));
  g_autoptr (PgConfig) config = pg_test_config ("127.0.0.1", 1, "none", NULL, extra);
  g_autoptr (PgUpstream) upstream
      = pg_upstream_new (config, pg_config_find_upstream (config, "other"), 3);
  g_autoptr (GError) error = NULL;

  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, FALSE, &error));
  g_assert_no_error (error);
  g_assert_true (pg_upstream_has_capability (upstream, "NAMED"));
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
}

static void
test_peer_starttls_not_offered (void)
{
  /* Once in the greeting, once in a CAPABILITY reply. */
  static const PgTestPeerStep script1[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  static const PgTestPeerStep script2[] = {
    { PG_TEST_PEER_SEND, "* OK ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "CAPABILITY", 0 },
    { PG_TEST_PEER_SEND, "* CAPABILITY IMAP4rev1\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  const PgTestPeerStep *scripts[] = { script1, script2 };

  for (gsize i = 0; i < G_N_ELEMENTS (scripts); i++)
    {
      g_autoptr (PgTestPeer) peer = pg_test_peer_start (scripts[i]);
      g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "starttls", NULL);
      g_autoptr (GError) error = NULL;

      g_assert_false (pg_test_connect (upstream, &error));
      g_assert_error (error, PG_ERROR, PG_ERROR_TLS);
      g_assert_nonnull (strstr (error->message, "STARTTLS"));
      g_assert_true (pg_upstream_is_closed (upstream));
      pg_test_peer_assert_done (peer);
    }
}

/* What the server sends in plaintext after "OK Begin TLS" could be injected by a man in
 * the middle: it must be discarded, never read as if it came over TLS. */
static void
test_peer_starttls_injection (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "STARTTLS", 0 },
    { PG_TEST_PEER_SEND,
      "$ OK Begin TLS negotiation now.\r\n* BYE injected\r\n"
      "* CAPABILITY IMAP4rev1 INJECTED\r\n",
      0 },
    { PG_TEST_PEER_TLS, NULL, 0 },
    { PG_TEST_PEER_EXPECT, "CAPABILITY", 0 },
    { PG_TEST_PEER_SEND, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "$ OK done\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = NULL;
  g_autoptr (PgTestCerts) certs = NULL;
  g_autoptr (PgTestPeer) peer = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autoptr (PgUpstream) upstream = NULL;
  PgTestSignals signals = { 0 };

  if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    {
      g_test_skip ("no GIO TLS backend (install glib-networking)");
      return;
    }
  dir = g_dir_make_tmp ("popgate-upstream-XXXXXX", &error);
  g_assert_no_error (error);
  certs = pg_test_certs_new (dir, &error);
  g_assert_no_error (error);
  peer = pg_test_peer_start (script);
  {
    g_autoptr (GTlsCertificate) certificate
        = g_tls_certificate_new_from_files (certs->cert_file, certs->key_file, &error);
    g_assert_no_error (error);
    pg_test_peer_set_certificate (peer, certificate);
  }
  config = pg_test_config ("127.0.0.1", pg_test_peer_get_port (peer), "starttls", certs->ca_file,
                           NULL);
  upstream = pg_upstream_new (config, &config->upstream, 9);
  pg_test_connect_signals (upstream, &signals);

  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  g_assert_true (pg_upstream_is_tls (upstream));
  g_assert_false (pg_upstream_has_capability (upstream, "INJECTED"));
  g_assert_false (pg_upstream_has_capability (upstream, "LOGINDISABLED"));
  g_assert_true (pg_upstream_has_capability (upstream, "AUTH=PLAIN"));
  g_assert_true (pg_test_noop (upstream, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (signals.bye, ==, 0);
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
  {
    /* The certificate files are in dir: remove them. */
    const char *files[]
        = { certs->ca_file,           certs->cert_file,           certs->key_file,
            certs->untrusted_ca_file, certs->untrusted_cert_file, certs->untrusted_key_file };
    for (gsize i = 0; i < G_N_ELEMENTS (files); i++)
      g_remove (files[i]);
    g_rmdir (dir);
  }
}

/* PREAUTH plus a SELECT, the start of most scripts below. */
/* clang-format off */
#define PG_TEST_PREAUTH_SELECT(caps)                                                               \
  { PG_TEST_PEER_SEND, "* PREAUTH [CAPABILITY IMAP4rev1 " caps "] ready\r\n", 0 },                         \
  { PG_TEST_PEER_EXPECT, "SELECT INBOX", 0 },                                                              \
  { PG_TEST_PEER_SEND, "* FLAGS (\\Seen \\Deleted)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n"                       \
                  "* OK [UIDVALIDITY 42] UIDs valid\r\n* OK [UIDNEXT 9] next\r\n"                  \
                  "$ OK [READ-WRITE] Select completed.\r\n", 0 }
/* clang-format on */

static PgUpstream *
pg_test_start_selected (PgTestPeer *peer, const char *extra)
{
  PgUpstream *upstream = pg_test_upstream_for_peer (peer, "none", extra);
  g_autoptr (GError) error = NULL;
  PgUpstreamMailbox mailbox = { 0 };

  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  g_assert_true (pg_upstream_is_authenticated (upstream));
  g_assert_true (pg_test_select (upstream, "INBOX", &mailbox, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (mailbox.uidvalidity, ==, 42);
  g_assert_cmpuint (mailbox.uidnext, ==, 9);
  g_assert_cmpuint (mailbox.exists, ==, 3);
  g_assert_false (mailbox.read_only);
  return upstream;
}

static void
test_peer_drop_mid_literal (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
    { PG_TEST_PEER_EXPECT, "UID FETCH 5 (UID BODY.PEEK[])", 0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "* 1 FETCH (UID 5 BODY[] {100}\r\nabc", 0 },
    { PG_TEST_PEER_CLOSE, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  g_autoptr (GError) error = NULL;
  PgTestBody body = { g_string_new (NULL), 0, FALSE, FALSE };
  PgTestAsync fetch = { NULL, FALSE }, noop = { NULL, FALSE };
  g_autoptr (GAsyncResult) fetch_result = NULL;
  g_autoptr (GAsyncResult) noop_result = NULL;
  PgTestSignals signals = { 0 };
  gboolean vanished = FALSE;

  pg_test_connect_signals (upstream, &signals);
  /* Two commands in flight: both must fail. */
  pg_upstream_fetch_body_async (upstream, 5, "", 0, 0, pg_test_body_chunk_cb, &body, NULL,
                                pg_test_async_cb, &fetch);
  pg_upstream_noop_async (upstream, NULL, pg_test_async_cb, &noop);
  fetch_result = pg_test_async_wait (&fetch);
  noop_result = pg_test_async_wait (&noop);
  g_assert_false (pg_upstream_fetch_body_finish (upstream, fetch_result, &vanished, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_clear_error (&error);
  g_assert_false (pg_upstream_noop_finish (upstream, noop_result, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_cmpstr (body.data->str, ==, "abc");
  g_assert_cmpuint (signals.closed, ==, 1);
  g_assert_true (pg_upstream_is_closed (upstream));
  /* A command after the close fails at once. */
  g_clear_error (&error);
  g_assert_false (pg_test_noop (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  pg_test_peer_assert_done (peer);
  g_string_free (body.data, TRUE);
}

static void
test_peer_malformed (void)
{
  static const char *const replies[] = {
    "* 1 FETCH (((\r\n",      /* line ends inside a list */
    "zz9 OK who are you\r\n", /* a tag we never sent */
    "+ go ahead\r\n",         /* a continuation nobody asked for */
    "* OK [UNTERMINATED\r\n", /* response code without ']' */
    "\x01\x02\x03\r\n",       /* garbage */
  };

  for (gsize i = 0; i < G_N_ELEMENTS (replies); i++)
    {
      PgTestPeerStep script[] = {
        PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
        { PG_TEST_PEER_EXPECT, "NOOP", 0 },
        { PG_TEST_PEER_SEND, replies[i], 0 },
        { PG_TEST_PEER_HANG, NULL, 0 },
      };
      g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
      g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
      g_autoptr (GError) error = NULL;

      g_assert_false (pg_test_noop (upstream, &error));
      g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      g_assert_true (pg_upstream_is_closed (upstream));
      pg_test_peer_assert_done (peer);
    }
  /* A line over the limit. */
  {
    g_autofree gchar *junk = g_strnfill (PG_UPSTREAM_MAX_LINE + 100, 'x');
    g_autofree gchar *line = g_strdup_printf ("* OK %s\r\n", junk);
    PgTestPeerStep script[] = {
      PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
      { PG_TEST_PEER_EXPECT, "NOOP", 0 },
      { PG_TEST_PEER_SEND, line, 0 },
      { PG_TEST_PEER_HANG, NULL, 0 },
    };
    g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
    g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
    g_autoptr (GError) error = NULL;

    g_assert_false (pg_test_noop (upstream, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_LINE_TOO_LONG);
    pg_test_peer_assert_done (peer);
  }
}

static void
test_peer_bye (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "* BYE Server shutting down.\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  g_autoptr (GError) error = NULL;
  PgTestSignals signals = { 0 };

  pg_test_connect_signals (upstream, &signals);
  g_assert_false (pg_test_noop (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_nonnull (strstr (error->message, "BYE Server shutting down."));
  g_assert_cmpuint (signals.bye, ==, 1);
  g_assert_cmpuint (signals.closed, ==, 1);
  g_assert_cmpstr (signals.bye_text, ==, "Server shutting down.");
  pg_test_peer_assert_done (peer);
  g_free (signals.bye_text);
}

static void
test_peer_timeout (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 }, /* never answers */
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, "timeout = 300ms\n");
  g_autoptr (GError) error = NULL;

  g_assert_false (pg_test_noop (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_TIMEOUT);
  g_assert_true (pg_upstream_is_closed (upstream));
  pg_test_peer_assert_done (peer);
}

static void
test_peer_untagged (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
    { PG_TEST_PEER_EXPECT, "UID FETCH 1:* (UID RFC822.SIZE)", 0 },
    { PG_TEST_PEER_SEND,
      "* 1 FETCH (UID 4 RFC822.SIZE 100)\r\n"
      "* 2 FETCH (RFC822.SIZE 0 UID 7)\r\n"
      "* 3 FETCH (UID 8 RFC822.SIZE 4294967296 FLAGS (\\Seen))\r\n"
      "$ OK Fetch completed.\r\n",
      0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND,
      "* 4 EXISTS\r\n* 2 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Seen))\r\n"
      "* OK [ALERT] maintenance at noon\r\n* VANISHED (EARLIER) 1:3,5\r\n"
      "$ OK done\r\n",
      0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  g_autoptr (GError) error = NULL;
  PgTestSignals signals = { 0 };
  PgTestSizes sizes = { g_array_new (FALSE, FALSE, sizeof (guint32)),
                        g_array_new (FALSE, FALSE, sizeof (guint64)) };
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;

  pg_test_connect_signals (upstream, &signals);
  pg_upstream_fetch_sizes_async (upstream, pg_test_size_cb, &sizes, NULL, pg_test_async_cb, &async);
  result = pg_test_async_wait (&async);
  g_assert_true (pg_upstream_fetch_sizes_finish (upstream, result, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (sizes.uids->len, ==, 3);
  g_assert_cmpuint (g_array_index (sizes.uids, guint32, 1), ==, 7);
  g_assert_cmpuint (g_array_index (sizes.sizes, guint64, 0), ==, 100);
  g_assert_cmpuint (g_array_index (sizes.sizes, guint64, 2), ==, G_GUINT64_CONSTANT (4294967296));

  g_assert_true (pg_test_noop (upstream, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (signals.exists, ==, 1);
  g_assert_cmpuint (signals.last_exists, ==, 4);
  g_assert_cmpuint (signals.expunge, ==, 1);
  g_assert_cmpuint (signals.fetch, ==, 1);
  g_assert_cmpuint (signals.alert, ==, 1);
  g_assert_cmpuint (signals.vanished, ==, 1);
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
  g_array_unref (sizes.uids);
  g_array_unref (sizes.sizes);
}

/* The consumer pauses after every chunk: nothing more is delivered until it resumes. */
/* A body of body_len patterned octets over several chunks, and a reply that sends it as
 * UID 5's literal: "* 2 FETCH (UID 5 BODY[] {n}...)\r\n". */
static gchar *
pg_test_long_body (gsize body_len, GString *reply)
{
  gchar *expected = g_malloc (body_len + 1);

  for (gsize i = 0; i < body_len; i++)
    expected[i] = (gchar) ('a' + i % 23);
  expected[body_len] = '\0';
  g_string_append_printf (reply, "* 2 FETCH (UID 5 BODY[] {%" G_GSIZE_FORMAT "}\r\n%s)\r\n",
                          body_len, expected);
  return expected;
}

static void
test_peer_back_pressure (void)
{
  g_autoptr (GString) reply = g_string_new (NULL);
  gsize body_len = PG_UPSTREAM_BODY_CHUNK * 2 + 1000;
  g_autofree gchar *expected = pg_test_long_body (body_len, reply);

  g_string_append (reply, "$ OK done\r\n");
  {
    PgTestPeerStep script[] = {
      PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
      { PG_TEST_PEER_EXPECT, "UID FETCH 5 (UID BODY.PEEK[TEXT]<0.10>)", 0 },
      { PG_TEST_PEER_SEND, "* 2 FETCH (UID 5 BODY[TEXT]<0> {10}\r\n0123456789)\r\n$ OK done\r\n",
        0 },
      { PG_TEST_PEER_EXPECT, "UID FETCH 5 (UID BODY.PEEK[])", 0 },
      { PG_TEST_PEER_SEND, reply->str, 0 },
      { PG_TEST_PEER_EXPECT, "UID FETCH 6 (UID BODY.PEEK[HEADER])", 0 },
      { PG_TEST_PEER_SEND, "$ OK Fetch completed.\r\n", 0 },
      { PG_TEST_PEER_EXPECT, "UID FETCH 7 (UID BODY.PEEK[])", 0 },
      { PG_TEST_PEER_SEND, "$ NO Some messages were also expunged.\r\n", 0 },
      { PG_TEST_PEER_HANG, NULL, 0 },
    };
    g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
    g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
    g_autoptr (GError) error = NULL;
    gboolean vanished = TRUE;

    /* A partial fetch. */
    {
      PgTestBody body = { g_string_new (NULL), 0, FALSE, FALSE };
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;
      pg_upstream_fetch_body_async (upstream, 5, "TEXT", 0, 10, pg_test_body_chunk_cb, &body, NULL,
                                    pg_test_async_cb, &async);
      result = pg_test_async_wait (&async);
      g_assert_true (pg_upstream_fetch_body_finish (upstream, result, &vanished, &error));
      g_assert_no_error (error);
      g_assert_false (vanished);
      g_assert_cmpstr (body.data->str, ==, "0123456789");
      g_string_free (body.data, TRUE);
    }
    /* The whole body, paused after every chunk. */
    {
      PgTestBody body = { g_string_new (NULL), 0, TRUE, FALSE };
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;
      pg_upstream_fetch_body_async (upstream, 5, "", 0, 0, pg_test_body_chunk_cb, &body, NULL,
                                    pg_test_async_cb, &async);
      while (!async.done)
        {
          pg_test_wait_either (&body.paused, &async.done);
          if (!body.paused)
            continue;
          /* Paused: running the loop delivers nothing (the chunk function asserts that)
           * and does not complete the fetch. */
          for (int i = 0; i < 50 && g_main_context_iteration (NULL, FALSE); i++)
            ;
          g_assert_false (async.done);
          body.paused = FALSE;
          pg_upstream_resume (upstream);
        }
      result = pg_test_async_wait (&async);
      g_assert_true (pg_upstream_fetch_body_finish (upstream, result, &vanished, &error));
      g_assert_no_error (error);
      g_assert_false (vanished);
      g_assert_cmpuint (body.data->len, ==, body_len);
      g_assert_cmpint (memcmp (body.data->str, expected, body_len), ==, 0);
      g_assert_cmpuint (body.chunks, >=, 3);
      g_string_free (body.data, TRUE);
    }
    /* No body in the reply, and a NO: both are "vanished", not errors. */
    for (guint32 uid = 6; uid <= 7; uid++)
      {
        PgTestBody body = { g_string_new (NULL), 0, FALSE, FALSE };
        PgTestAsync async = { NULL, FALSE };
        g_autoptr (GAsyncResult) result = NULL;
        pg_upstream_fetch_body_async (upstream, uid, uid == 6 ? "HEADER" : "", 0, 0,
                                      pg_test_body_chunk_cb, &body, NULL, pg_test_async_cb, &async);
        result = pg_test_async_wait (&async);
        vanished = FALSE;
        g_assert_true (pg_upstream_fetch_body_finish (upstream, result, &vanished, &error));
        g_assert_no_error (error);
        g_assert_true (vanished);
        g_assert_cmpuint (body.chunks, ==, 0);
        g_string_free (body.data, TRUE);
      }
    pg_upstream_close (upstream);
  }
}

/* A silent server: the connect deadline fires. */
static void
test_peer_bye_greeting (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* BYE Too many connections from your IP\r\n", 0 },
    { PG_TEST_PEER_CLOSE, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "none", NULL);
  g_autoptr (GError) error = NULL;

  g_assert_false (pg_test_connect (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_nonnull (strstr (error->message, "Too many connections"));
  g_assert_true (pg_upstream_is_closed (upstream));
  pg_test_peer_assert_done (peer);
}

/* 100k messages: one command, every size delivered as its line arrives. */
static void
test_peer_many_sizes (void)
{
  const guint n = 100000;
  g_autoptr (GString) reply = g_string_new (NULL);
  PgTestSizes sizes = { g_array_new (FALSE, FALSE, sizeof (guint32)),
                        g_array_new (FALSE, FALSE, sizeof (guint64)) };

  for (guint i = 1; i <= n; i++)
    g_string_append_printf (reply, "* %u FETCH (UID %u RFC822.SIZE %u)\r\n", i, i * 2, i + 1000);
  g_string_append (reply, "$ OK Fetch completed.\r\n");
  {
    PgTestPeerStep script[] = {
      PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
      { PG_TEST_PEER_EXPECT, "UID FETCH 1:* (UID RFC822.SIZE)", 0 },
      { PG_TEST_PEER_SEND, reply->str, 0 },
      { PG_TEST_PEER_HANG, NULL, 0 },
    };
    g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
    g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
    g_autoptr (GError) error = NULL;
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;

    pg_upstream_fetch_sizes_async (upstream, pg_test_size_cb, &sizes, NULL, pg_test_async_cb,
                                   &async);
    result = pg_test_async_wait (&async);
    g_assert_true (pg_upstream_fetch_sizes_finish (upstream, result, &error));
    g_assert_no_error (error);
    g_assert_cmpuint (sizes.uids->len, ==, n);
    g_assert_cmpuint (g_array_index (sizes.uids, guint32, n - 1), ==, n * 2);
    g_assert_cmpuint (g_array_index (sizes.sizes, guint64, n - 1), ==, n + 1000);
    pg_test_peer_assert_done (peer);
    pg_upstream_close (upstream);
  }
  g_array_unref (sizes.uids);
  g_array_unref (sizes.sizes);
}

/* The ledger's snapshot (pg_upstream_fetch_snapshot_async): EMAILID's "(id)" list,
 * X-GM-MSGID's number, and the header fields as a literal (cut at
 * PG_UPSTREAM_MAX_ID_HEADER) or as a quoted string; a message without them says so. */
typedef struct
{
  GPtrArray *ids; /* owned, of gchar*: "uid=… id=… header=…" per entry */
  gsize longest;  /* the longest header_len seen */
} PgTestSnapshot;

static void
pg_test_snapshot_cb (const PgUpstreamSnapshotEntry *entry, gpointer user_data)
{
  PgTestSnapshot *snapshot = user_data;
  g_autofree gchar *id = entry->object_id != NULL
                             ? g_strndup (entry->object_id, entry->object_id_len)
                             : g_strdup ("-");
  g_autofree gchar *header = entry->header != NULL ? g_strndup ((const char *) entry->header,
                                                                MIN (entry->header_len, 20))
                                                   : g_strdup ("-");

  g_ptr_array_add (snapshot->ids,
                   g_strdup_printf ("uid=%u size=%" G_GUINT64_FORMAT " id=%s header=%s", entry->uid,
                                    entry->size, id, header));
  snapshot->longest = MAX (snapshot->longest, entry->header != NULL ? entry->header_len : 0);
}

static void
test_peer_snapshot_ids (void)
{
  g_autofree gchar *long_header = g_strnfill (3000, 'x');
  g_autofree gchar *long_reply = g_strdup_printf (
      "* 1 FETCH (UID 4 RFC822.SIZE 100 BODY[HEADER.FIELDS (MESSAGE-ID DATE)] {21}\r\n"
      "Message-ID: <a@b>\r\n\r\n)\r\n"
      "* 2 FETCH (UID 5 RFC822.SIZE 10 BODY[HEADER.FIELDS (MESSAGE-ID DATE)] {%u}\r\n%s)\r\n"
      "* 3 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID DATE)] \"Date: x\" UID 7 RFC822.SIZE 5)\r\n"
      "$ OK Fetch completed.\r\n",
      3000u, long_header);
  PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS OBJECTID X-GM-EXT-1"),
    { PG_TEST_PEER_EXPECT, "UID FETCH 1:* (UID RFC822.SIZE EMAILID)" },
    { PG_TEST_PEER_SEND, "* 1 FETCH (UID 4 RFC822.SIZE 100 EMAILID (M6d99ac3275bb4e))\r\n"
                         "* 2 FETCH (UID 5 RFC822.SIZE 10)\r\n"
                         "$ OK Fetch completed.\r\n" },
    { PG_TEST_PEER_EXPECT, "UID FETCH 4:5 (UID RFC822.SIZE INTERNALDATE X-GM-MSGID)" },
    { PG_TEST_PEER_SEND, "* 1 FETCH (X-GM-MSGID 1278455344230334865 UID 4 RFC822.SIZE 100)\r\n"
                         "$ OK Fetch completed.\r\n" },
    { PG_TEST_PEER_EXPECT,
      "UID FETCH 4,5,7 (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)])" },
    { PG_TEST_PEER_SEND, long_reply },
    { PG_TEST_PEER_HANG, NULL },
  };
  static const char *const want[] = {
    "uid=4 size=100 id=M6d99ac3275bb4e header=-",
    "uid=5 size=10 id=- header=-",
    "uid=4 size=100 id=1278455344230334865 header=-",
    "uid=4 size=100 id=- header=Message-ID: <a@b>\r\n\r",
    "uid=5 size=10 id=- header=xxxxxxxxxxxxxxxxxxxx",
    "uid=7 size=5 id=- header=Date: x",
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  PgTestSnapshot snapshot = { g_ptr_array_new_with_free_func (g_free), 0 };
  static const struct
  {
    const char *set;
    gboolean dated;
    PgUpstreamIds ids;
  } calls[] = {
    { "1:*", FALSE, PG_UPSTREAM_IDS_EMAILID },
    { "4:5", TRUE, PG_UPSTREAM_IDS_X_GM_MSGID },
    { "4,5,7", FALSE, PG_UPSTREAM_IDS_HEADER },
  };

  for (guint i = 0; i < G_N_ELEMENTS (calls); i++)
    {
      g_autoptr (GError) error = NULL;
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;

      pg_upstream_fetch_snapshot_async (upstream, calls[i].set, calls[i].dated, calls[i].ids,
                                        pg_test_snapshot_cb, &snapshot, NULL, pg_test_async_cb,
                                        &async);
      result = pg_test_async_wait (&async);
      pg_upstream_fetch_sizes_finish (upstream, result, &error);
      g_assert_no_error (error);
    }
  g_assert_cmpuint (snapshot.ids->len, ==, G_N_ELEMENTS (want));
  for (guint i = 0; i < G_N_ELEMENTS (want); i++)
    g_assert_cmpstr (g_ptr_array_index (snapshot.ids, i), ==, want[i]);
  g_assert_cmpuint (snapshot.longest, ==, PG_UPSTREAM_MAX_ID_HEADER);
  g_ptr_array_unref (snapshot.ids);
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
}

static void
test_peer_connect_timeout (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_HANG, NULL, 0 }, /* no greeting */
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream
      = pg_test_upstream_for_peer (peer, "none", "connect_timeout = 300ms\n");
  g_autoptr (GError) error = NULL;

  g_assert_false (pg_test_connect (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_TIMEOUT);
  g_assert_true (pg_upstream_is_closed (upstream));
}

/* The consumer holds each chunk (read-ahead not asked for yet): the upstream pauses on it
 * in its read buffer, delivers nothing more and does not complete the fetch; on resume the
 * same chunk comes again, and the body is exact — a literal over several chunks, with the
 * next message's body already in the same read, and a body sent as a quoted string. */
static void
test_peer_hold_body (void)
{
  g_autoptr (GString) reply = g_string_new (NULL);
  gsize body_len = PG_UPSTREAM_BODY_CHUNK * 2 + 1000;
  g_autofree gchar *expected = pg_test_long_body (body_len, reply);

  g_string_append (reply, "* 3 FETCH (UID 6 BODY[] \"quoted body\")\r\n$ OK done\r\n");
  {
    PgTestPeerStep script[] = {
      PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
      { PG_TEST_PEER_EXPECT, "UID FETCH 5,6 (UID BODY.PEEK[])", 0 },
      { PG_TEST_PEER_SEND, reply->str, 0 },
      { PG_TEST_PEER_EXPECT, "UID FETCH 7 (UID BODY.PEEK[])", 0 },
      { PG_TEST_PEER_SEND, "* 4 FETCH (UID 7 BODY[] \"held\" BODY[] \"again\")\r\n", 0 },
      { PG_TEST_PEER_HANG, NULL, 0 },
    };
    g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
    g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
    PgTestBody bodies[2] = {
      { g_string_new (NULL), 0, FALSE, FALSE, TRUE, NULL, 0 },
      { g_string_new (NULL), 0, FALSE, FALSE, TRUE, NULL, 0 },
    };
    PgTestAsync asyncs[2] = { { NULL, FALSE }, { NULL, FALSE } };

    /* One batch: both bodies come in one reply. */
    pg_upstream_cork (upstream);
    for (guint i = 0; i < 2; i++)
      pg_upstream_fetch_body_async (upstream, 5 + i, "", 0, 0, pg_test_body_chunk_cb, &bodies[i],
                                    NULL, pg_test_async_cb, &asyncs[i]);
    pg_upstream_uncork (upstream);
    for (guint i = 0; i < 2; i++)
      {
        PgTestBody *body = &bodies[i];
        g_autoptr (GAsyncResult) result = NULL;
        g_autoptr (GError) error = NULL;
        gboolean vanished = TRUE;

        while (!asyncs[i].done)
          {
            pg_test_wait_either (&body->paused, &asyncs[i].done);
            if (!body->paused)
              continue;
            /* Held: running the loop delivers nothing (the chunk function asserts that)
             * and completes no fetch. */
            for (int n = 0; n < 50 && g_main_context_iteration (NULL, FALSE); n++)
              ;
            g_assert_false (asyncs[i].done);
            g_assert_nonnull (body->held);
            body->paused = FALSE;
            pg_upstream_resume (upstream);
          }
        result = pg_test_async_wait (&asyncs[i]);
        g_assert_true (pg_upstream_fetch_body_finish (upstream, result, &vanished, &error));
        g_assert_no_error (error);
        g_assert_false (vanished);
        g_assert_null (body->held);
        g_assert_cmpuint (body->holds, ==, body->chunks);
      }
    g_assert_cmpuint (bodies[0].data->len, ==, body_len);
    g_assert_cmpint (memcmp (bodies[0].data->str, expected, body_len), ==, 0);
    g_assert_cmpuint (bodies[0].chunks, >=, 3);
    g_assert_cmpstr (bodies[1].data->str, ==, "quoted body");
    g_assert_cmpuint (bodies[1].chunks, ==, 1);
    for (guint i = 0; i < 2; i++)
      g_string_free (bodies[i].data, TRUE);
    /* Two bodies in one FETCH after one is held: a protocol error, not a second hold. */
    {
      PgTestBody body = { g_string_new (NULL), 0, FALSE, FALSE, TRUE, NULL, 0 };
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;
      g_autoptr (GError) error = NULL;
      gboolean vanished = FALSE;

      pg_upstream_fetch_body_async (upstream, 7, "", 0, 0, pg_test_body_chunk_cb, &body, NULL,
                                    pg_test_async_cb, &async);
      result = pg_test_async_wait (&async);
      g_assert_false (pg_upstream_fetch_body_finish (upstream, result, &vanished, &error));
      g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      g_assert_cmpuint (body.holds, ==, 1);
      g_assert_cmpuint (body.chunks, ==, 0);
      g_clear_pointer (&body.held, g_byte_array_unref);
      g_string_free (body.data, TRUE);
    }
    pg_upstream_close (upstream);
  }
}

/* Cancelling a paused body fetch: delivery stops, the rest of the literal is skipped, the
 * fetch ends CANCELLED once the server has answered, and the connection stays usable. */
static void
pg_test_cancel_paused_body (PgUpstream *upstream, GCancellable *cancellable)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GAsyncResult) result = NULL;
  PgTestBody body = { g_string_new (NULL), 0, TRUE, FALSE };
  PgTestAsync async = { NULL, FALSE };
  gboolean vanished = FALSE;

  pg_upstream_fetch_body_async (upstream, 5, "", 0, 0, pg_test_body_chunk_cb, &body, cancellable,
                                pg_test_async_cb, &async);
  pg_test_wait_flag (&body.paused);
  g_assert_cmpuint (body.chunks, ==, 1);
  g_cancellable_cancel (cancellable); /* no resume from the consumer */
  result = pg_test_async_wait (&async);
  g_assert_false (pg_upstream_fetch_body_finish (upstream, result, &vanished, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_cmpuint (body.chunks, ==, 1);
  g_clear_error (&error);
  g_assert_true (pg_test_noop (upstream, &error));
  g_assert_no_error (error);
  g_string_free (body.data, TRUE);
}

/* Twice: the first cancellable a body fetch names is watched once for all fetches that
 * name it, another one by its own fetch. */
static void
test_peer_cancel_body (void)
{
  g_autofree gchar *body_text = g_strnfill (PG_UPSTREAM_BODY_CHUNK * 3, 'b');
  g_autofree gchar *reply = g_strdup_printf ("* 2 FETCH (UID 5 BODY[] {%d}\r\n%s)\r\n$ OK done\r\n",
                                             PG_UPSTREAM_BODY_CHUNK * 3, body_text);
  PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
    { PG_TEST_PEER_EXPECT, "UID FETCH 5 (UID BODY.PEEK[])", 0 },
    { PG_TEST_PEER_SEND, reply, 0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "$ OK done\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "UID FETCH 5 (UID BODY.PEEK[])", 0 },
    { PG_TEST_PEER_SEND, reply, 0 },
    { PG_TEST_PEER_EXPECT, "NOOP", 0 },
    { PG_TEST_PEER_SEND, "$ OK done\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  g_autoptr (GCancellable) first = g_cancellable_new ();
  g_autoptr (GCancellable) other = g_cancellable_new ();

  pg_test_cancel_paused_body (upstream, first);
  pg_test_cancel_paused_body (upstream, other);
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
}

static void
test_peer_move_fallback (void)
{
  static const guint32 uids[] = { 3, 1, 2, 7 };

  /* Without MOVE, with UIDPLUS: COPY, STORE, UID EXPUNGE. */
  {
    static const PgTestPeerStep script[] = {
      PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
      { PG_TEST_PEER_EXPECT, "UID COPY 1:3,7 Trash", 0 },
      { PG_TEST_PEER_SEND, "$ OK [COPYUID 1 1:3,7 10:13] Copy completed.\r\n", 0 },
      { PG_TEST_PEER_EXPECT, "UID STORE 1:3,7 +FLAGS.SILENT (\\Deleted)", 0 },
      { PG_TEST_PEER_SEND, "$ OK Store completed.\r\n", 0 },
      { PG_TEST_PEER_EXPECT, "UID EXPUNGE 1:3,7", 0 },
      { PG_TEST_PEER_SEND, "* 1 EXPUNGE\r\n$ OK Expunge completed.\r\n", 0 },
      { PG_TEST_PEER_HANG, NULL, 0 },
    };
    g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
    g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
    g_autoptr (GError) error = NULL;
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    gboolean removed = FALSE;

    pg_upstream_move_async (upstream, uids, G_N_ELEMENTS (uids), "Trash", NULL, pg_test_async_cb,
                            &async);
    result = pg_test_async_wait (&async);
    g_assert_true (pg_upstream_move_finish (upstream, result, &removed, &error));
    g_assert_no_error (error);
    g_assert_true (removed);
    pg_test_peer_assert_done (peer);
    pg_upstream_close (upstream);
  }
  /* Neither MOVE nor UIDPLUS: copied and left flagged; UID EXPUNGE refused locally. */
  {
    static const PgTestPeerStep script[] = {
      PG_TEST_PREAUTH_SELECT ("ID"),
      { PG_TEST_PEER_EXPECT, "UID COPY 1:3,7 \"Deleted Items\"", 0 },
      { PG_TEST_PEER_SEND, "$ OK Copy completed.\r\n", 0 },
      { PG_TEST_PEER_EXPECT, "UID STORE 1:3,7 +FLAGS.SILENT (\\Deleted)", 0 },
      { PG_TEST_PEER_SEND, "$ OK Store completed.\r\n", 0 },
      { PG_TEST_PEER_EXPECT, "NOOP", 0 },
      { PG_TEST_PEER_SEND, "$ OK done\r\n", 0 },
      { PG_TEST_PEER_HANG, NULL, 0 },
    };
    g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
    g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
    g_autoptr (GError) error = NULL;
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    g_autoptr (GAsyncResult) result2 = NULL;
    gboolean removed = TRUE;

    pg_upstream_move_async (upstream, uids, G_N_ELEMENTS (uids), "Deleted Items", NULL,
                            pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    g_assert_true (pg_upstream_move_finish (upstream, result, &removed, &error));
    g_assert_no_error (error);
    g_assert_false (removed);
    pg_upstream_expunge_async (upstream, uids, G_N_ELEMENTS (uids), NULL, pg_test_async_cb, &async);
    result2 = pg_test_async_wait (&async);
    g_assert_false (pg_upstream_expunge_finish (upstream, result2, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
    g_clear_error (&error);
    /* Nothing was sent for it: the next command is the NOOP. */
    g_assert_true (pg_test_noop (upstream, &error));
    g_assert_no_error (error);
    pg_test_peer_assert_done (peer);
    pg_upstream_close (upstream);
  }
}

typedef struct
{
  const char *mailbox;
  gboolean exists;
} PgTestListCase;

/* pg_upstream_list_async on each mailbox: it must say cases[i].exists. */
static void
assert_lists (PgUpstream *upstream, const PgTestListCase *cases, gsize n)
{
  for (gsize i = 0; i < n; i++)
    {
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;
      g_autoptr (GError) error = NULL;
      gboolean exists = !cases[i].exists;

      pg_upstream_list_async (upstream, cases[i].mailbox, NULL, pg_test_async_cb, &async);
      result = pg_test_async_wait (&async);
      PG_TEST_ASSERT_OK (pg_upstream_list_finish (upstream, result, &exists, &error), error);
      if (exists != cases[i].exists)
        g_error ("LIST \"\" %s: exists = %d", cases[i].mailbox, exists);
    }
}

/* LIST replies a real server may send: only the exact name counts, as atom, quoted or
 * literal, and not when flagged \NonExistent or \Noselect; a refused LIST is an error. */
static void
test_peer_list (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("UIDPLUS"),
    { PG_TEST_PEER_EXPECT, "LIST \"\" INBOX.Trash" },
    { PG_TEST_PEER_SEND, "* LIST (\\HasNoChildren) \".\" INBOX.Trash\r\n$ OK done\r\n" },
    { PG_TEST_PEER_EXPECT, "LIST \"\" Trash" },
    { PG_TEST_PEER_SEND,
      "* LIST () \"/\" Trash2\r\n* LIST () \"/\" {5}\r\nTrash\r\n$ OK done\r\n" },
    { PG_TEST_PEER_EXPECT, "LIST \"\" Gone" },
    { PG_TEST_PEER_SEND, "* LIST (\\NonExistent) \"/\" \"Gone\"\r\n$ OK done\r\n" },
    { PG_TEST_PEER_EXPECT, "LIST \"\" Parent" },
    { PG_TEST_PEER_SEND, "* LIST (\\Noselect \\HasChildren) \"/\" Parent\r\n$ OK done\r\n" },
    { PG_TEST_PEER_EXPECT, "LIST \"\" Other" },
    { PG_TEST_PEER_SEND, "* LIST () \"/\" Others\r\n* LIST () NIL other\r\n$ OK done\r\n" },
    { PG_TEST_PEER_EXPECT, "LIST \"\" Trash" },
    { PG_TEST_PEER_SEND, "$ NO [NOPERM] not for you\r\n" },
    { PG_TEST_PEER_HANG, NULL },
  };
  static const PgTestListCase cases[] = {
    { "INBOX.Trash", TRUE }, { "Trash", TRUE },  { "Gone", FALSE },
    { "Parent", FALSE },     { "Other", FALSE },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  g_autoptr (GError) error = NULL;

  assert_lists (upstream, cases, G_N_ELEMENTS (cases));
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    gboolean exists = TRUE;

    pg_upstream_list_async (upstream, "Trash", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    g_assert_false (pg_upstream_list_finish (upstream, result, &exists, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
    g_assert_true (pg_upstream_error_is_permanent (error));
    g_assert_true (exists); /* untouched on failure */
  }
}

static void
test_peer_metadata (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_PREAUTH_SELECT ("METADATA"),
    { PG_TEST_PEER_EXPECT, "GETMETADATA INBOX /private/vendor/popgate/x", 0 },
    { PG_TEST_PEER_SEND,
      "* METADATA INBOX (/private/vendor/popgate/x {5}\r\nhello)\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "GETMETADATA \"\" /private/comment", 0 },
    { PG_TEST_PEER_SEND, "* METADATA \"\" (/private/comment NIL)\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "SETMETADATA INBOX (/private/vendor/popgate/x \"v 1\")", 0 },
    { PG_TEST_PEER_SEND, "$ OK done\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "SETMETADATA INBOX (/private/vendor/popgate/x NIL)", 0 },
    { PG_TEST_PEER_SEND, "$ NO [METADATA TOOMANY] nope\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_start_selected (peer, NULL);
  g_autoptr (GError) error = NULL;

  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    g_autoptr (GBytes) value = NULL;
    pg_upstream_get_metadata_async (upstream, "INBOX", "/private/vendor/popgate/x", NULL,
                                    pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    g_assert_true (pg_upstream_get_metadata_finish (upstream, result, &value, &error));
    g_assert_no_error (error);
    g_assert_nonnull (value);
    g_assert_cmpmem (g_bytes_get_data (value, NULL), g_bytes_get_size (value), "hello", 5);
  }
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    g_autoptr (GBytes) value = g_bytes_new ("x", 1);
    pg_upstream_get_metadata_async (upstream, "", "/private/comment", NULL, pg_test_async_cb,
                                    &async);
    result = pg_test_async_wait (&async);
    g_clear_pointer (&value, g_bytes_unref);
    g_assert_true (pg_upstream_get_metadata_finish (upstream, result, &value, &error));
    g_assert_no_error (error);
    g_assert_null (value);
  }
  for (int i = 0; i < 2; i++)
    {
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;
      g_autoptr (GBytes) value = i == 0 ? g_bytes_new ("v 1", 3) : NULL;
      pg_upstream_set_metadata_async (upstream, "INBOX", "/private/vendor/popgate/x", value, NULL,
                                      pg_test_async_cb, &async);
      result = pg_test_async_wait (&async);
      if (i == 0)
        {
          g_assert_true (pg_upstream_set_metadata_finish (upstream, result, &error));
          g_assert_no_error (error);
        }
      else
        {
          g_assert_false (pg_upstream_set_metadata_finish (upstream, result, &error));
          g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
        }
    }
  pg_test_peer_assert_done (peer);
  pg_upstream_close (upstream);
}

/* --- against a real Dovecot ------------------------------------------------------------------ */

#define PG_TEST_USER "alice@example.com"

typedef struct
{
  PgTestDovecot *dovecot; /* owned */
  GArray *uids;           /* owned: UIDs of the seeded messages, in order */
  GPtrArray *messages;    /* owned, of GBytes*: their exact bytes */
} UpstreamFixture;

static GBytes *
pg_test_make_message (guint index, gsize body_len)
{
  GString *text = g_string_new (NULL);

  g_string_append_printf (text,
                          "From: sender%u@example.com\r\nTo: alice@example.com\r\n"
                          "Subject: message %u\r\nMessage-ID: <%u@popgate.test>\r\n\r\n",
                          index, index, index);
  while (text->len < body_len)
    g_string_append_printf (text, "line %" G_GSIZE_FORMAT " of message %u\r\n", text->len, index);
  return g_string_free_to_bytes (text);
}

static void
upstream_setup (UpstreamFixture *fixture, gconstpointer data)
{
  const PgTestDovecotOptions *options = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  /* Small, medium, and one a few chunks long. */
  const gsize sizes[] = { 0, 2000, PG_UPSTREAM_BODY_CHUNK * 5 + 123 };

  if (pg_test_dovecot_skip_reason () != NULL)
    return;
  fixture->dovecot = pg_test_dovecot_new (options, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (
      pg_test_dovecot_add_user (fixture->dovecot, PG_TEST_USER, PG_TEST_PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (fixture->dovecot, &error), error);
  fixture->messages = g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref);
  for (guint i = 0; i < G_N_ELEMENTS (sizes); i++)
    {
      GBytes *message = pg_test_make_message (i + 1, sizes[i]);
      PG_TEST_ASSERT_OK (pg_test_dovecot_append (fixture->dovecot, PG_TEST_USER, "INBOX",
                                                 g_bytes_get_data (message, NULL),
                                                 g_bytes_get_size (message), &error),
                         error);
      g_ptr_array_add (fixture->messages, message);
    }
  PG_TEST_ASSERT_OK (
      pg_test_dovecot_create_mailbox (fixture->dovecot, PG_TEST_USER, "Trash", &error), error);
  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, PG_TEST_USER, PG_TEST_PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error), error);
  fixture->uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (fixture->uids->len, ==, G_N_ELEMENTS (sizes));
}

static void
upstream_teardown (UpstreamFixture *fixture, gconstpointer data)
{
  g_clear_pointer (&fixture->dovecot, pg_test_dovecot_free);
  g_clear_pointer (&fixture->uids, g_array_unref);
  g_clear_pointer (&fixture->messages, g_ptr_array_unref);
}

static gboolean
upstream_available (UpstreamFixture *fixture, gboolean need_tls)
{
  if (fixture->dovecot == NULL)
    {
      g_test_skip (pg_test_dovecot_skip_reason ());
      return FALSE;
    }
  if (need_tls && !g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    {
      g_test_skip ("no GIO TLS backend (install glib-networking)");
      return FALSE;
    }
  return TRUE;
}

static PgUpstream *
pg_test_upstream_for_dovecot (UpstreamFixture *fixture, const char *tls, const char *host,
                              const char *ca_file)
{
  guint16 port
      = strcmp (tls, "implicit") == 0 ? fixture->dovecot->imaps_port : fixture->dovecot->imap_port;
  g_autoptr (PgConfig) config = pg_test_config (host, port, tls, ca_file, NULL);

  return pg_upstream_new (config, &config->upstream, 11);
}

/* A sync-client view of the mailbox, to check what our commands did. */
static PgTestImap *
pg_test_checker (UpstreamFixture *fixture)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap
      = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, PG_TEST_USER, PG_TEST_PASSWORD, &error), error);
  return g_steal_pointer (&imap);
}

static GBytes *
pg_test_fetch (PgUpstream *upstream, guint32 uid, const char *section, guint64 offset,
               guint64 length, gboolean pause, gboolean *out_vanished)
{
  PgTestBody body = { g_string_new (NULL), 0, pause, FALSE };
  PgTestAsync async = { NULL, FALSE };
  g_autoptr (GAsyncResult) result = NULL;
  g_autoptr (GError) error = NULL;

  pg_upstream_fetch_body_async (upstream, uid, section, offset, length, pg_test_body_chunk_cb,
                                &body, NULL, pg_test_async_cb, &async);
  while (!async.done)
    {
      pg_test_wait_either (&body.paused, &async.done);
      if (body.paused)
        {
          /* A slow consumer: resume from the main loop, as a client write completing. */
          for (int i = 0; i < 5 && g_main_context_iteration (NULL, FALSE); i++)
            ;
          g_assert_false (async.done);
          body.paused = FALSE;
          pg_upstream_resume (upstream);
        }
    }
  result = pg_test_async_wait (&async);
  g_assert_true (pg_upstream_fetch_body_finish (upstream, result, out_vanished, &error));
  g_assert_no_error (error);
  return g_string_free_to_bytes (body.data);
}

/* The whole POP3 session shape: connect, log in, ID, SELECT, sizes, bodies, flags, expunge,
 * logout. */
static void
pg_test_dovecot_session (UpstreamFixture *fixture, PgUpstream *upstream, gboolean plain)
{
  g_autoptr (GError) error = NULL;
  PgUpstreamMailbox mailbox = { 0 };
  PgTestSizes sizes = { g_array_new (FALSE, FALSE, sizeof (guint32)),
                        g_array_new (FALSE, FALSE, sizeof (guint64)) };
  g_autoptr (PgTestImap) checker = NULL;
  guint32 first, last;

  g_string_truncate (pg_test_log, 0);
  PG_TEST_ASSERT_OK (pg_test_connect (upstream, &error), error);
  g_assert_true (pg_upstream_has_capability (upstream, "IMAP4rev1"));
  PG_TEST_ASSERT_OK (pg_test_login (upstream, PG_TEST_USER, PG_TEST_PASSWORD, plain, &error),
                     error);
  g_assert_true (pg_upstream_is_authenticated (upstream));
  /* Refreshed after login: Dovecot announces UIDPLUS, MOVE only after it. */
  g_assert_true (pg_upstream_has_capability (upstream, "UIDPLUS"));
  g_assert_true (pg_upstream_has_capability (upstream, "MOVE"));
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    pg_upstream_id_async (upstream, "popgate", "0.1", "192.0.2.7", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_id_finish (upstream, result, &error), error);
  }
  PG_TEST_ASSERT_OK (pg_test_select (upstream, "INBOX", &mailbox, &error), error);
  g_assert_cmpuint (mailbox.exists, ==, 3);
  g_assert_cmpuint (mailbox.uidvalidity, !=, 0);
  g_assert_cmpuint (mailbox.uidnext, >, g_array_index (fixture->uids, guint32, 2));

  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    pg_upstream_fetch_sizes_async (upstream, pg_test_size_cb, &sizes, NULL, pg_test_async_cb,
                                   &async);
    result = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_fetch_sizes_finish (upstream, result, &error), error);
  }
  g_assert_cmpuint (sizes.uids->len, ==, 3);
  for (guint i = 0; i < 3; i++)
    {
      GBytes *expected = g_ptr_array_index (fixture->messages, i);
      g_autoptr (GBytes) body = NULL;
      gboolean vanished = TRUE;

      g_assert_cmpuint (g_array_index (sizes.uids, guint32, i), ==,
                        g_array_index (fixture->uids, guint32, i));
      /* LIST sizes must equal what RETR sends. */
      g_assert_cmpuint (g_array_index (sizes.sizes, guint64, i), ==, g_bytes_get_size (expected));
      body = pg_test_fetch (upstream, g_array_index (sizes.uids, guint32, i), "", 0, 0, i == 2,
                            &vanished);
      g_assert_false (vanished);
      g_assert_true (g_bytes_equal (body, expected));
    }

  /* HEADER and a partial TEXT. */
  {
    GBytes *expected = g_ptr_array_index (fixture->messages, 1);
    const char *text = g_bytes_get_data (expected, NULL);
    const char *sep = strstr (text, "\r\n\r\n");
    gsize header_len = (gsize) (sep - text) + 4;
    g_autoptr (GBytes) header = NULL;
    g_autoptr (GBytes) part = NULL;
    gboolean vanished = TRUE;

    header = pg_test_fetch (upstream, g_array_index (fixture->uids, guint32, 1), "HEADER", 0, 0,
                            FALSE, &vanished);
    g_assert_false (vanished);
    g_assert_cmpmem (g_bytes_get_data (header, NULL), g_bytes_get_size (header), text, header_len);
    part = pg_test_fetch (upstream, g_array_index (fixture->uids, guint32, 1), "TEXT", 10, 100,
                          FALSE, &vanished);
    g_assert_false (vanished);
    g_assert_cmpmem (g_bytes_get_data (part, NULL), g_bytes_get_size (part), text + header_len + 10,
                     100);
  }

  /* A UID that does not exist: vanished, not an error. */
  {
    gboolean vanished = FALSE;
    g_autoptr (GBytes) none
        = pg_test_fetch (upstream, mailbox.uidnext + 100, "", 0, 0, FALSE, &vanished);
    g_assert_true (vanished);
    g_assert_cmpuint (g_bytes_get_size (none), ==, 0);
  }

  /* \Seen on the first, then UID EXPUNGE of the last. */
  first = g_array_index (fixture->uids, guint32, 0);
  last = g_array_index (fixture->uids, guint32, 2);
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    pg_upstream_add_flags_async (upstream, &first, 1, "\\Seen", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_add_flags_finish (upstream, result, &error), error);
  }
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    g_autoptr (GAsyncResult) result2 = NULL;
    pg_upstream_add_flags_async (upstream, &last, 1, "\\Deleted", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_add_flags_finish (upstream, result, &error), error);
    pg_upstream_expunge_async (upstream, &last, 1, NULL, pg_test_async_cb, &async);
    result2 = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_expunge_finish (upstream, result2, &error), error);
  }
  PG_TEST_ASSERT_OK (pg_test_noop (upstream, &error), error);

  checker = pg_test_checker (fixture);
  PG_TEST_ASSERT_OK (pg_test_imap_select (checker, "INBOX", TRUE, NULL, NULL, &error), error);
  {
    g_auto (GStrv) flags = pg_test_imap_fetch_flags (checker, first, &error);
    g_autoptr (GArray) now = NULL;
    g_assert_no_error (error);
    g_assert_true (g_strv_contains ((const char *const *) flags, "\\Seen"));
    now = pg_test_imap_uid_search_all (checker, &error);
    g_assert_no_error (error);
    g_assert_cmpuint (now->len, ==, 2);
  }
  PG_TEST_ASSERT_OK (pg_test_logout (upstream, &error), error);
  g_assert_true (pg_upstream_is_closed (upstream));
  pg_test_assert_no_secret_logged (PG_TEST_USER, PG_TEST_PASSWORD);
  g_array_unref (sizes.uids);
  g_array_unref (sizes.sizes);
}

static void
test_dovecot_plain (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgUpstream) upstream = NULL;

  if (!upstream_available (fixture, FALSE))
    return;
  upstream = pg_test_upstream_for_dovecot (fixture, "none", "127.0.0.1", NULL);
  pg_test_dovecot_session (fixture, upstream, FALSE);
  g_assert_false (pg_upstream_is_tls (upstream));
}

static void
test_dovecot_starttls (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgUpstream) upstream = NULL;

  if (!upstream_available (fixture, TRUE))
    return;
  upstream
      = pg_test_upstream_for_dovecot (fixture, "starttls", "localhost", fixture->dovecot->ca_file);
  pg_test_dovecot_session (fixture, upstream, TRUE);
  g_assert_true (pg_upstream_is_tls (upstream));
}

static void
test_dovecot_implicit (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgUpstream) upstream = NULL;

  if (!upstream_available (fixture, TRUE))
    return;
  upstream
      = pg_test_upstream_for_dovecot (fixture, "implicit", "127.0.0.1", fixture->dovecot->ca_file);
  pg_test_dovecot_session (fixture, upstream, FALSE);
  g_assert_true (pg_upstream_is_tls (upstream));
}

static void
test_dovecot_untrusted (UpstreamFixture *fixture, gconstpointer data)
{
  const char *modes[] = { "implicit", "starttls" };

  if (!upstream_available (fixture, TRUE))
    return;
  for (gsize i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      /* Trust only a CA that did not sign Dovecot's certificate. */
      g_autoptr (PgUpstream) upstream = pg_test_upstream_for_dovecot (
          fixture, modes[i], "localhost", fixture->dovecot->certs->untrusted_ca_file);
      g_autoptr (GError) error = NULL;

      g_assert_false (pg_test_connect (upstream, &error));
      g_assert_error (error, PG_ERROR, PG_ERROR_TLS);
      g_assert_nonnull (strstr (error->message, "trusted CA"));
      g_assert_true (pg_upstream_is_closed (upstream));
    }
}

/* The CA file is read at each upstream connect (GIO's TLS backend reads its anchors in each
 * handshake anyway): a CA replaced or edited before a renewal takes effect without a reload,
 * and one that is gone is a clear error. */
static gboolean
pg_test_connect_with_ca (UpstreamFixture *fixture, const char *ca_file, GError **error)
{
  g_autoptr (PgUpstream) upstream
      = pg_test_upstream_for_dovecot (fixture, "implicit", "localhost", ca_file);

  if (!pg_test_connect (upstream, error))
    return FALSE;
  pg_upstream_close (upstream);
  return TRUE;
}

static void
test_dovecot_ca_file_changed (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = NULL;
  g_autofree gchar *ca_file = NULL;
  g_autofree gchar *trusted = NULL;
  g_autofree gchar *untrusted = NULL;
  g_autoptr (PgUpstream) upstream = NULL;
  FILE *f;

  if (!upstream_available (fixture, TRUE))
    return;
  g_assert_true (g_file_get_contents (fixture->dovecot->ca_file, &trusted, NULL, &error));
  g_assert_true (
      g_file_get_contents (fixture->dovecot->certs->untrusted_ca_file, &untrusted, NULL, &error));
  dir = g_dir_make_tmp ("popgate-ca-XXXXXX", &error);
  g_assert_no_error (error);
  ca_file = g_build_filename (dir, "ca.pem", NULL);

  g_assert_true (g_file_set_contents (ca_file, trusted, -1, &error));
  g_assert_true (pg_test_connect_with_ca (fixture, ca_file, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_connect_with_ca (fixture, ca_file, &error));

  /* Replaced (g_file_set_contents renames a new file over it). */
  g_assert_true (g_file_set_contents (ca_file, untrusted, -1, &error));
  g_assert_false (pg_test_connect_with_ca (fixture, ca_file, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_TLS);
  g_assert_nonnull (strstr (error->message, "trusted CA"));
  g_clear_error (&error);

  /* Rewritten in place (as cp does), same inode: trusted again. */
  f = fopen (ca_file, "w");
  g_assert_nonnull (f);
  g_assert_cmpint (fputs (trusted, f), >=, 0);
  g_assert_cmpint (fclose (f), ==, 0);
  g_assert_true (pg_test_connect_with_ca (fixture, ca_file, &error));
  g_assert_no_error (error);

  /* Gone after the config was read: a clear error naming the file. */
  upstream = pg_test_upstream_for_dovecot (fixture, "implicit", "localhost", ca_file);
  g_assert_cmpint (g_unlink (ca_file), ==, 0);
  g_assert_false (pg_test_connect (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_TLS);
  g_assert_nonnull (strstr (error->message, "CA file"));
  g_clear_error (&error);
  g_assert_true (pg_test_rm_rf (dir));
}

/* A TLS server whose certificate (from the trusted CA) names another host. */
static gboolean
pg_test_tls_incoming_cb (GSocketService *service, GSocketConnection *connection,
                         GObject *source_object, gpointer user_data)
{
  GTlsCertificate *certificate = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GIOStream) tls
      = g_tls_server_connection_new (G_IO_STREAM (connection), certificate, &error);

  g_assert_no_error (error);
  /* The client gives up during the handshake; the result does not matter here. */
  g_tls_connection_handshake_async (G_TLS_CONNECTION (tls), G_PRIORITY_DEFAULT, NULL, NULL, NULL);
  g_object_set_data_full (G_OBJECT (service), "tls", g_steal_pointer (&tls), g_object_unref);
  return TRUE;
}

static void
test_dovecot_wrong_hostname (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *cert_path = NULL;
  g_autofree gchar *key_path = NULL;
  g_autoptr (GTlsCertificate) certificate = NULL;
  g_autoptr (GSocketService) service = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autoptr (PgUpstream) upstream = NULL;
  guint16 port;

  if (!upstream_available (fixture, TRUE))
    return;
  /* An in-test TLS server with a certificate for "mail.example.org". */
  cert_path = g_build_filename (fixture->dovecot->dir, "other-cert.pem", NULL);
  key_path = g_build_filename (fixture->dovecot->dir, "other-key.pem", NULL);
  PG_TEST_ASSERT_OK (pg_test_certs_make_server (fixture->dovecot->certs, "mail.example.org",
                                                cert_path, key_path, &error),
                     error);
  certificate = g_tls_certificate_new_from_files (cert_path, key_path, &error);
  g_assert_no_error (error);
  service = g_socket_service_new ();
  port = g_socket_listener_add_any_inet_port (G_SOCKET_LISTENER (service), NULL, &error);
  g_assert_no_error (error);
  g_signal_connect (service, "incoming", G_CALLBACK (pg_test_tls_incoming_cb), certificate);
  g_socket_service_start (service);

  config = pg_test_config ("127.0.0.1", port, "implicit", fixture->dovecot->ca_file, NULL);
  upstream = pg_upstream_new (config, &config->upstream, 12);
  g_assert_false (pg_test_connect (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_TLS);
  g_assert_nonnull (strstr (error->message, "host name"));
  g_socket_service_stop (service);
  g_socket_listener_close (G_SOCKET_LISTENER (service));
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

static void
test_dovecot_wrong_password (UpstreamFixture *fixture, gconstpointer data)
{
  for (int plain = 0; plain < 2; plain++)
    {
      g_autoptr (PgUpstream) upstream = NULL;
      g_autoptr (GError) error = NULL;

      if (!upstream_available (fixture, FALSE))
        return;
      upstream = pg_test_upstream_for_dovecot (fixture, "none", "127.0.0.1", NULL);
      PG_TEST_ASSERT_OK (pg_test_connect (upstream, &error), error);
      g_assert_false (pg_test_login (upstream, PG_TEST_USER, "wrong", plain, &error));
      g_assert_error (error, PG_ERROR, PG_ERROR_AUTH_FAILED);
      g_assert_false (pg_upstream_is_authenticated (upstream));
      pg_upstream_close (upstream);
    }
}

static PgUpstream *
pg_test_dovecot_selected (UpstreamFixture *fixture)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgUpstream) upstream
      = pg_test_upstream_for_dovecot (fixture, "none", "127.0.0.1", NULL);

  PG_TEST_ASSERT_OK (pg_test_connect (upstream, &error), error);
  PG_TEST_ASSERT_OK (pg_test_login (upstream, PG_TEST_USER, PG_TEST_PASSWORD, FALSE, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_select (upstream, "INBOX", NULL, &error), error);
  return g_steal_pointer (&upstream);
}

static void
test_dovecot_move_and_long_sets (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgUpstream) upstream = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) checker = NULL;
  g_autoptr (GArray) scattered = g_array_new (FALSE, FALSE, sizeof (guint32));
  guint32 second;

  if (!upstream_available (fixture, FALSE))
    return;
  upstream = pg_test_dovecot_selected (fixture);

  /* 12000 scattered UIDs: several STORE commands, each line within the limit. */
  for (guint32 uid = 1; uid <= 24000; uid += 2)
    g_array_append_val (scattered, uid);
  g_array_append_val (scattered, g_array_index (fixture->uids, guint32, 0));
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    g_string_truncate (pg_test_log, 0);
    pg_upstream_add_flags_async (upstream, (const guint32 *) scattered->data, scattered->len,
                                 "\\Flagged", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_add_flags_finish (upstream, result, &error), error);
  }

  second = g_array_index (fixture->uids, guint32, 1);
  {
    PgTestAsync async = { NULL, FALSE };
    g_autoptr (GAsyncResult) result = NULL;
    gboolean removed = FALSE;
    pg_upstream_move_async (upstream, &second, 1, "Trash", NULL, pg_test_async_cb, &async);
    result = pg_test_async_wait (&async);
    PG_TEST_ASSERT_OK (pg_upstream_move_finish (upstream, result, &removed, &error), error);
    g_assert_true (removed);
  }
  PG_TEST_ASSERT_OK (pg_test_logout (upstream, &error), error);

  checker = pg_test_checker (fixture);
  {
    guint32 exists = 0;
    g_auto (GStrv) flags = NULL;
    PG_TEST_ASSERT_OK (pg_test_imap_select (checker, "INBOX", TRUE, NULL, &exists, &error), error);
    g_assert_cmpuint (exists, ==, 2);
    flags = pg_test_imap_fetch_flags (checker, g_array_index (fixture->uids, guint32, 0), &error);
    g_assert_no_error (error);
    g_assert_true (g_strv_contains ((const char *const *) flags, "\\Flagged"));
    PG_TEST_ASSERT_OK (pg_test_imap_select (checker, "Trash", TRUE, NULL, &exists, &error), error);
    g_assert_cmpuint (exists, ==, 1);
  }
}

/* LIST "" mailbox against Dovecot: what exists, in INBOX's any case; not a pattern. */
static void
test_dovecot_list (UpstreamFixture *fixture, gconstpointer data)
{
  static const PgTestListCase cases[] = {
    { "INBOX", TRUE },   { "inbox", TRUE }, { "Trash", TRUE },
    { "Nosuch", FALSE }, { "*", FALSE },    { "Tr%", FALSE },
  };
  g_autoptr (PgUpstream) upstream = NULL;

  if (!upstream_available (fixture, FALSE))
    return;
  upstream = pg_test_dovecot_selected (fixture);
  assert_lists (upstream, cases, G_N_ELEMENTS (cases));
}

static void
test_dovecot_metadata (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgUpstream) upstream = NULL;
  g_autoptr (GError) error = NULL;
  /* A value that needs a literal: CRLF, quotes, 8-bit. */
  static const char value_text[] = "state: \"x\"\r\nuids: 1,2,3\r\n\xc3\xbc";
  g_autoptr (GBytes) value = g_bytes_new_static (value_text, sizeof value_text - 1);

  if (!upstream_available (fixture, FALSE))
    return;
  upstream = pg_test_dovecot_selected (fixture);
  g_assert_true (pg_upstream_has_capability (upstream, "METADATA"));
  for (int round = 0; round < 3; round++)
    {
      PgTestAsync async = { NULL, FALSE };
      g_autoptr (GAsyncResult) result = NULL;
      g_autoptr (GAsyncResult) result2 = NULL;
      g_autoptr (GBytes) got = NULL;

      /* 0: set, 1: read back, 2: remove and read back nothing */
      if (round != 1)
        {
          pg_upstream_set_metadata_async (upstream, "INBOX", "/private/vendor/popgate/state",
                                          round == 0 ? value : NULL, NULL, pg_test_async_cb,
                                          &async);
          result = pg_test_async_wait (&async);
          PG_TEST_ASSERT_OK (pg_upstream_set_metadata_finish (upstream, result, &error), error);
        }
      pg_upstream_get_metadata_async (upstream, "INBOX", "/private/vendor/popgate/state", NULL,
                                      pg_test_async_cb, &async);
      result2 = pg_test_async_wait (&async);
      PG_TEST_ASSERT_OK (pg_upstream_get_metadata_finish (upstream, result2, &got, &error), error);
      if (round == 2)
        g_assert_null (got);
      else
        {
          g_assert_nonnull (got);
          g_assert_true (g_bytes_equal (got, value));
        }
    }
  PG_TEST_ASSERT_OK (pg_test_logout (upstream, &error), error);
}

static void
test_dovecot_shutdown (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgUpstream) upstream = NULL;
  g_autoptr (GError) error = NULL;
  PgTestSignals signals = { 0 };

  if (!upstream_available (fixture, FALSE))
    return;
  upstream = pg_test_dovecot_selected (fixture);
  pg_test_connect_signals (upstream, &signals);
  /* Dovecot says BYE to its sessions and closes them. */
  pg_test_dovecot_stop (fixture->dovecot);
  pg_test_wait_flag (&signals.is_closed);
  g_assert_false (pg_test_noop (upstream, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_free (signals.bye_text);
}

/* --- the connection engine under the upstream -------------------------------------- */

/* The relay's hand-over of the PgConn itself: after the login reply, the untagged data
 * behind it is in `buffered` or still to be read through the PgConn, which goes on
 * working after the upstream is dropped; the hand-over is no failure ("closed"). */
static void
test_peer_steal_conn (void)
{
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n" },
    { PG_TEST_PEER_EXPECT, "LOGIN {5+}" },
    { PG_TEST_PEER_EXPECT_RAW, "alice {12+}" },
    { PG_TEST_PEER_EXPECT_RAW, PG_TEST_PASSWORD },
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n* 3 EXISTS\r\n" },
    { PG_TEST_PEER_EXPECT, "NOOP" },
    { PG_TEST_PEER_SEND, "$ OK noop\r\n" },
    { PG_TEST_PEER_HANG, NULL },
  };
  g_autoptr (PgTestPeer) peer = pg_test_peer_start (script);
  g_autoptr (PgUpstream) upstream = pg_test_upstream_for_peer (peer, "none", NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) buffered = NULL;
  g_autoptr (PgConn) conn = NULL;
  g_autoptr (GString) got = g_string_new (NULL);
  PgTestSignals signals = { 0 };

  g_assert_true (pg_test_connect (upstream, &error));
  g_assert_no_error (error);
  g_assert_null (pg_upstream_steal_conn (upstream, &buffered, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_clear_error (&error);
  g_assert_null (buffered);

  pg_test_connect_signals (upstream, &signals);
  pg_upstream_hold_when_idle (upstream);
  g_assert_true (pg_test_login (upstream, "alice", PG_TEST_PASSWORD, FALSE, &error));
  g_assert_no_error (error);
  conn = pg_upstream_steal_conn (upstream, &buffered, &error);
  g_assert_no_error (error);
  g_assert_nonnull (conn);
  g_assert_true (pg_conn_is_upstream (conn));
  g_assert_false (pg_conn_is_closed (conn));
  g_assert_false (pg_conn_is_reading (conn));
  g_assert_cmpuint (pg_conn_get_queued (conn), ==, 0);
  g_assert_true (pg_upstream_is_closed (upstream));
  g_clear_object (&upstream);
  g_assert_false (signals.is_closed); /* a hand-over is not a failure */

  g_string_append_len (got, g_bytes_get_data (buffered, NULL), g_bytes_get_size (buffered));
  pg_test_conn_read_until (conn, got, "* 3 EXISTS\r\n");
  g_assert_cmpstr (got->str, ==, "* 3 EXISTS\r\n");
  pg_conn_write (conn, "x NOOP\r\n", 8);
  g_string_truncate (got, 0);
  pg_test_conn_read_until (conn, got, "x OK noop\r\n");
  g_assert_false (pg_conn_is_closed (conn));
  pg_test_peer_assert_done (peer);
  pg_conn_close (conn);
  pg_test_assert_no_secret_logged ("alice", PG_TEST_PASSWORD);
}

/* compress = auto against Dovecot with imap_zlib: COMPRESS DEFLATE goes up right after
 * login, and the whole session (snapshot, bodies of several chunks byte for byte,
 * partials, flags, expunge) runs deflated; a connection held for the relay stays
 * uncompressed and is handed over as a bare stream. */
static void
test_dovecot_compress (UpstreamFixture *fixture, gconstpointer data)
{
  g_autoptr (PgConfig) config = NULL;
  g_autoptr (PgUpstream) upstream = NULL;

  if (!upstream_available (fixture, FALSE))
    return;
  config = pg_test_config ("127.0.0.1", fixture->dovecot->imap_port, "none", NULL,
                           "compress = auto\n");
  upstream = pg_upstream_new (config, &config->upstream, 11);
  pg_test_dovecot_session (fixture, upstream, FALSE);
  g_assert_nonnull (strstr (pg_test_log->str, "upstream C: p2 COMPRESS DEFLATE"));
  g_assert_nonnull (strstr (pg_test_log->str, "upstream: COMPRESS=DEFLATE on"));
  g_assert_null (strstr (pg_test_log->str, "COMPRESS refused"));

  {
    g_autoptr (PgUpstream) relayed = pg_upstream_new (config, &config->upstream, 12);
    g_autoptr (GError) error = NULL;
    g_autoptr (GBytes) buffered = NULL;
    g_autoptr (GIOStream) stream = NULL;
    g_autoptr (GString) got = g_string_new (NULL);
    gsize written = 0;

    g_string_truncate (pg_test_log, 0);
    PG_TEST_ASSERT_OK (pg_test_connect (relayed, &error), error);
    pg_upstream_hold_when_idle (relayed);
    PG_TEST_ASSERT_OK (pg_test_login (relayed, PG_TEST_USER, PG_TEST_PASSWORD, FALSE, &error),
                       error);
    g_assert_null (strstr (pg_test_log->str, "COMPRESS"));
    stream = pg_upstream_steal_stream (relayed, &buffered, &error);
    g_assert_no_error (error);
    g_assert_nonnull (stream);
    g_assert_true (g_output_stream_write_all (g_io_stream_get_output_stream (stream), "x NOOP\r\n",
                                              8, &written, NULL, &error));
    g_assert_no_error (error);
    g_string_append_len (got, g_bytes_get_data (buffered, NULL), g_bytes_get_size (buffered));
    pg_test_stream_read_until (stream, got, "x OK");
  }

  /* A compressed connection is handed over only as a PgConn, zlib state and all. */
  {
    g_autoptr (PgUpstream) compressed = pg_upstream_new (config, &config->upstream, 13);
    g_autoptr (GError) error = NULL;
    g_autoptr (GBytes) buffered = NULL;
    g_autoptr (PgConn) conn = NULL;
    g_autoptr (GString) got = g_string_new (NULL);

    PG_TEST_ASSERT_OK (pg_test_connect (compressed, &error), error);
    PG_TEST_ASSERT_OK (pg_test_login (compressed, PG_TEST_USER, PG_TEST_PASSWORD, FALSE, &error),
                       error);
    g_assert_null (pg_upstream_steal_stream (compressed, &buffered, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
    g_assert_nonnull (strstr (error->message, "compressed"));
    g_clear_error (&error);
    g_assert_false (pg_upstream_is_closed (compressed));
    conn = pg_upstream_steal_conn (compressed, &buffered, &error);
    g_assert_no_error (error);
    g_assert_true (pg_conn_is_compressed (conn));
    g_assert_cmpuint (g_bytes_get_size (buffered), ==, 0);
    pg_conn_write (conn, "x NOOP\r\n", 8);
    pg_test_conn_read_until (conn, got, "x OK");
    pg_conn_close (conn);
  }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  pg_test_log = g_string_new (NULL);
  g_log_set_writer_func (pg_test_log_writer_cb, NULL, NULL);
  pg_log_set_level (PG_LOG_LEVEL_DEBUG);

  g_test_add_func ("/popgate/upstream/peer/login-literals", test_peer_login_literals);
  g_test_add_func ("/popgate/upstream/peer/login-literal-plus", test_peer_login_literal_plus);
  g_test_add_func ("/popgate/upstream/peer/authenticate-plain", test_peer_authenticate_plain);
  g_test_add_func ("/popgate/upstream/peer/named-upstream", test_peer_named_upstream);
  g_test_add_func ("/popgate/upstream/peer/steal-stream", test_peer_steal_stream);
  g_test_add_func ("/popgate/upstream/peer/starttls-not-offered", test_peer_starttls_not_offered);
  g_test_add_func ("/popgate/upstream/peer/starttls-injection", test_peer_starttls_injection);
  g_test_add_func ("/popgate/upstream/peer/drop-mid-literal", test_peer_drop_mid_literal);
  g_test_add_func ("/popgate/upstream/peer/malformed", test_peer_malformed);
  g_test_add_func ("/popgate/upstream/peer/bye", test_peer_bye);
  g_test_add_func ("/popgate/upstream/peer/timeout", test_peer_timeout);
  g_test_add_func ("/popgate/upstream/peer/untagged", test_peer_untagged);
  g_test_add_func ("/popgate/upstream/peer/back-pressure", test_peer_back_pressure);
  g_test_add_func ("/popgate/upstream/peer/bye-greeting", test_peer_bye_greeting);
  g_test_add_func ("/popgate/upstream/peer/many-sizes", test_peer_many_sizes);
  g_test_add_func ("/popgate/upstream/peer/snapshot-ids", test_peer_snapshot_ids);
  g_test_add_func ("/popgate/upstream/peer/connect-timeout", test_peer_connect_timeout);
  g_test_add_func ("/popgate/upstream/peer/cancel-body", test_peer_cancel_body);
  g_test_add_func ("/popgate/upstream/peer/hold-body", test_peer_hold_body);
  g_test_add_func ("/popgate/upstream/peer/move-fallback", test_peer_move_fallback);
  g_test_add_func ("/popgate/upstream/peer/metadata", test_peer_metadata);
  g_test_add_func ("/popgate/upstream/peer/list", test_peer_list);
  g_test_add_func ("/popgate/upstream/peer/steal-conn", test_peer_steal_conn);

  {
    static const PgTestDovecotOptions with_metadata = { .metadata = TRUE };
    static const PgTestDovecotOptions with_zlib = { .zlib = TRUE };
#define ADD(path, func, options)                                                                   \
  g_test_add ("/popgate/upstream/dovecot/" path, UpstreamFixture, options, upstream_setup, func,   \
              upstream_teardown)
    ADD ("plain", test_dovecot_plain, NULL);
    ADD ("starttls", test_dovecot_starttls, NULL);
    ADD ("implicit", test_dovecot_implicit, NULL);
    ADD ("untrusted", test_dovecot_untrusted, NULL);
    ADD ("ca-file-changed", test_dovecot_ca_file_changed, NULL);
    ADD ("wrong-hostname", test_dovecot_wrong_hostname, NULL);
    ADD ("wrong-password", test_dovecot_wrong_password, NULL);
    ADD ("move-and-long-sets", test_dovecot_move_and_long_sets, NULL);
    ADD ("metadata", test_dovecot_metadata, &with_metadata);
    ADD ("list", test_dovecot_list, NULL);
    ADD ("shutdown", test_dovecot_shutdown, NULL);
    ADD ("compress", test_dovecot_compress, &with_zlib);
#undef ADD
  }

  return g_test_run ();
}
