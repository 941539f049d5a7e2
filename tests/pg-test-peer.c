/* popgate tests — the scripted IMAP upstream (see pg-test-peer.h).
 *
 * Everything below the public functions runs in the peer's context: the engine keeps at
 * most one read and one write pending, counts them, and never frees itself while one is
 * in flight. What a test thread may look at (flags, mismatch, the record) is under `lock`.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-peer.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

/* A line popgate sends us is far shorter than this; longer is a script failure. */
#define PG_TEST_PEER_MAX_LINE (256 * 1024)
/* SEND and FLOOD queue at most about this much before waiting for it to go out, so a
 * 64 MB SEND never sits in memory. */
#define PG_TEST_PEER_BATCH (64 * 1024)
/* pg_test_peer_free() and _restart() wait at most this long for cancelled I/O to end. */
#define PG_TEST_PEER_DRAIN_MS 10000

typedef enum
{
  PG_TEST_PEER_AFTER_NOTHING,
  PG_TEST_PEER_AFTER_SHUTDOWN,
  PG_TEST_PEER_AFTER_CLOSE,
  PG_TEST_PEER_AFTER_ABORT,
} PgTestPeerAfter;

struct _PgTestPeer
{
  GMainContext *context; /* owned: where the engine runs */
  GThread *thread;       /* owned; NULL: the caller's context */
  GSocket *listener;     /* owned */
  GSource *accept;       /* owned */
  guint16 port;
  const PgTestPeerStep *steps; /* unowned */

  /* The engine's state (peer context only). */
  guint step;
  gsize count; /* SEND/FLOOD: repetitions queued so far */
  gboolean served;
  gboolean dropped; /* the connection was torn down: callbacks only count themselves */
  gboolean failed;  /* a mismatch: only read until popgate closes */
  gboolean eof;
  gboolean reading;
  gboolean writing;
  gboolean shut;       /* write side shut down */
  gboolean responding; /* the responder has had its greeting call */
  guint pending;       /* async operations in flight */
  gboolean stopping;
  PgTestPeerAfter after;     /* what to do once the output has gone out */
  GSocketConnection *conn;   /* owned */
  GIOStream *stream;         /* owned: conn, or the TLS connection on it */
  GCancellable *cancellable; /* owned, per connection */
  GString *input;            /* owned: read, not yet matched */
  GString *output;           /* owned: queued, not yet being written */
  GBytes *writing_bytes;     /* owned: the write in flight */
  gchar *tag;                /* owned: of the last EXPECT */
  gchar *previous_tag;       /* owned: of the one before */
  guint8 buf[16384];

  /* Shared with the test thread. */
  GMutex lock;
  GCond cond;
  GTlsCertificate *certificate; /* owned */
  PgTestPeerRespondFunc respond;
  gpointer respond_data; /* unowned */
  gboolean finished;
  gboolean client_closed;
  PgTestPeerEnd end;
  gchar *mismatch;   /* owned */
  GString *received; /* owned */
};

static void pg_test_peer_advance (PgTestPeer *peer);
static void pg_test_peer_flush (PgTestPeer *peer);

/* --- the record ------------------------------------------------------------------------- */

static void
pg_test_peer_set_flag (PgTestPeer *peer, gboolean *flag)
{
  g_mutex_lock (&peer->lock);
  *flag = TRUE;
  g_cond_broadcast (&peer->cond);
  g_mutex_unlock (&peer->lock);
}

static void
pg_test_peer_set_end (PgTestPeer *peer, PgTestPeerEnd end)
{
  g_mutex_lock (&peer->lock);
  if (peer->end == PG_TEST_PEER_END_OPEN)
    peer->end = end;
  peer->client_closed = TRUE;
  g_cond_broadcast (&peer->cond);
  g_mutex_unlock (&peer->lock);
}

static void
pg_test_peer_record (PgTestPeer *peer, const char *data, gsize len, gboolean line)
{
  /* PG_TEST_PEER_DEBUG=1 shows the dialogue when a script goes wrong. */
  if (g_getenv ("PG_TEST_PEER_DEBUG") != NULL)
    g_printerr ("# peer %u <- %.*s\n", peer->port, (int) MIN (len, 200), data);
  g_mutex_lock (&peer->lock);
  g_string_append_len (peer->received, data, (gssize) len);
  if (line)
    g_string_append_c (peer->received, '\n');
  g_mutex_unlock (&peer->lock);
}

/* A script failure: recorded (the first one counts), and from now on the peer only reads
 * until popgate closes, so a test that waits for that close still sees it. */
static void
pg_test_peer_fail (PgTestPeer *peer, gchar *message)
{
  peer->failed = TRUE;
  g_mutex_lock (&peer->lock);
  if (peer->mismatch == NULL)
    peer->mismatch = message;
  else
    g_free (message);
  peer->finished = TRUE;
  g_cond_broadcast (&peer->cond);
  g_mutex_unlock (&peer->lock);
}

/* --- the connection --------------------------------------------------------------------- */

static void
pg_test_peer_close_socket (PgTestPeer *peer, gboolean reset)
{
  GSocket *socket;

  if (peer->conn == NULL || peer->dropped)
    return;
  peer->dropped = TRUE;
  g_cancellable_cancel (peer->cancellable);
  socket = g_socket_connection_get_socket (peer->conn);
  if (reset)
    {
      struct linger linger = { 1, 0 };
      setsockopt (g_socket_get_fd (socket), SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
    }
  g_socket_close (socket, NULL);
}

/* ACK popgate's writes at once: with delayed ACKs a small write that waits for one (40 ms)
 * makes a busy session look idle to the fuzzers. Linux clears TCP_QUICKACK again after a
 * while, so it is set before every read. */
static void
pg_test_peer_quickack (PgTestPeer *peer)
{
  g_socket_set_option (g_socket_connection_get_socket (peer->conn), IPPROTO_TCP, TCP_QUICKACK, 1,
                       NULL);
}

static void
pg_test_peer_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestPeer *peer = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  peer->pending--;
  peer->reading = FALSE;
  if (peer->dropped)
    return;
  if (n > 0)
    {
      g_string_append_len (peer->input, (const char *) peer->buf, n);
      pg_test_peer_advance (peer);
      return;
    }
  peer->eof = TRUE;
  if (n == 0)
    pg_test_peer_set_end (peer, G_IS_TLS_CONNECTION (peer->stream) ? PG_TEST_PEER_END_CLOSE_NOTIFY
                                                                   : PG_TEST_PEER_END_EOF);
  else if (g_error_matches (error, G_TLS_ERROR, G_TLS_ERROR_EOF))
    pg_test_peer_set_end (peer, PG_TEST_PEER_END_NO_CLOSE_NOTIFY);
  else
    pg_test_peer_set_end (peer, PG_TEST_PEER_END_ERROR);
  pg_test_peer_advance (peer);
  /* Popgate is gone: so are we, once our last words went out, as a server would. A
   * responder's server resets (the fuzzers run millions of connections: no TIME_WAIT). */
  if (!peer->dropped && peer->after == PG_TEST_PEER_AFTER_NOTHING)
    {
      peer->after = peer->responding ? PG_TEST_PEER_AFTER_ABORT : PG_TEST_PEER_AFTER_CLOSE;
      pg_test_peer_flush (peer);
    }
}

static void
pg_test_peer_read (PgTestPeer *peer)
{
  if (peer->reading || peer->eof || peer->dropped)
    return;
  if (peer->input->len > PG_TEST_PEER_MAX_LINE)
    {
      pg_test_peer_fail (peer, g_strdup_printf ("step %u: a line over %u bytes", peer->step,
                                                PG_TEST_PEER_MAX_LINE));
      g_string_truncate (peer->input, 0);
    }
  pg_test_peer_quickack (peer);
  peer->reading = TRUE;
  peer->pending++;
  g_input_stream_read_async (g_io_stream_get_input_stream (peer->stream), peer->buf,
                             sizeof peer->buf, G_PRIORITY_DEFAULT, peer->cancellable,
                             pg_test_peer_read_cb, peer);
}

static void
pg_test_peer_write_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestPeer *peer = user_data;
  g_autoptr (GError) error = NULL;
  gboolean ok = g_output_stream_write_all_finish (G_OUTPUT_STREAM (source), result, NULL, &error);

  peer->pending--;
  peer->writing = FALSE;
  g_clear_pointer (&peer->writing_bytes, g_bytes_unref);
  if (peer->dropped)
    return;
  if (!ok)
    {
      /* Popgate closed on us (on loopback a write fails only so). A flood or a responder
       * expects that; a script step that had more to say is a failure. */
      const PgTestPeerStep *step = &peer->steps[peer->step];
      if (!peer->failed && step->action != PG_TEST_PEER_FLOOD
          && step->action != PG_TEST_PEER_RESPOND)
        pg_test_peer_fail (
            peer, g_strdup_printf ("send failed at step %u: %s", peer->step, error->message));
      pg_test_peer_set_flag (peer, &peer->finished);
      pg_test_peer_set_end (peer, PG_TEST_PEER_END_ERROR);
      pg_test_peer_close_socket (peer, FALSE);
      return;
    }
  pg_test_peer_flush (peer);
  pg_test_peer_advance (peer);
}

/* Write what is queued; once all has gone out, do what was asked for after it. */
static void
pg_test_peer_flush (PgTestPeer *peer)
{
  gsize len;

  if (peer->writing || peer->dropped || peer->conn == NULL)
    return;
  if (peer->output->len == 0)
    {
      PgTestPeerAfter after = peer->after;

      peer->after = PG_TEST_PEER_AFTER_NOTHING;
      switch (after)
        {
        case PG_TEST_PEER_AFTER_NOTHING:
          break;
        case PG_TEST_PEER_AFTER_SHUTDOWN:
          peer->shut = TRUE;
          g_socket_shutdown (g_socket_connection_get_socket (peer->conn), FALSE, TRUE, NULL);
          break;
        case PG_TEST_PEER_AFTER_CLOSE:
        case PG_TEST_PEER_AFTER_ABORT:
          pg_test_peer_close_socket (peer, after == PG_TEST_PEER_AFTER_ABORT);
          pg_test_peer_set_flag (peer, &peer->finished);
          pg_test_peer_set_flag (peer, &peer->client_closed);
          break;
        }
      return;
    }
  if (peer->shut)
    {
      g_string_truncate (peer->output, 0);
      return;
    }
  len = peer->output->len;
  if (g_getenv ("PG_TEST_PEER_DEBUG") != NULL)
    g_printerr ("# peer %u -> %.*s\n", peer->port, (int) MIN (len, 200), peer->output->str);
  peer->writing_bytes = g_string_free_to_bytes (g_steal_pointer (&peer->output));
  peer->output = g_string_new (NULL);
  peer->writing = TRUE;
  peer->pending++;
  g_output_stream_write_all_async (
      g_io_stream_get_output_stream (peer->stream), g_bytes_get_data (peer->writing_bytes, NULL),
      len, G_PRIORITY_DEFAULT, peer->cancellable, pg_test_peer_write_cb, peer);
}

static void
pg_test_peer_handshake_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestPeer *peer = user_data;
  g_autoptr (GError) error = NULL;
  gboolean ok = g_tls_connection_handshake_finish (G_TLS_CONNECTION (source), result, &error);

  peer->pending--;
  peer->writing = FALSE;
  if (peer->dropped)
    return;
  if (!ok)
    pg_test_peer_fail (peer,
                       g_strdup_printf ("step %u: TLS handshake: %s", peer->step, error->message));
  else
    peer->step++;
  pg_test_peer_advance (peer);
}

/* --- the script ------------------------------------------------------------------------- */

/* Queue a SEND's or FLOOD's next repetitions; TRUE when all are queued. */
static gboolean
pg_test_peer_queue_step (PgTestPeer *peer, const PgTestPeerStep *step)
{
  gsize repeat = step->action == PG_TEST_PEER_SEND ? MAX (step->repeat, 1) : step->repeat;

  while (peer->count < repeat && peer->output->len < PG_TEST_PEER_BATCH)
    {
      g_autoptr (GString) text = g_string_new (step->text);

      peer->count++;
      if (step->action == PG_TEST_PEER_FLOOD)
        {
          g_autofree gchar *counter = g_strdup_printf ("%" G_GSIZE_FORMAT, peer->count);
          g_string_replace (text, "%u", counter, 0);
        }
      else
        {
          g_string_replace (text, "$^", peer->previous_tag != NULL ? peer->previous_tag : "*", 0);
          g_string_replace (text, "$", peer->tag != NULL ? peer->tag : "*", 0);
        }
      g_string_append_len (peer->output, text->str, (gssize) text->len);
    }
  pg_test_peer_flush (peer);
  return peer->count >= repeat;
}

/* Take one line from the input; FALSE if there is none yet. */
static gboolean
pg_test_peer_take_line (PgTestPeer *peer, gchar **out_line)
{
  const char *crlf = strstr (peer->input->str, "\r\n");

  if (crlf == NULL)
    return FALSE;
  *out_line = g_strndup (peer->input->str, (gsize) (crlf - peer->input->str));
  g_string_erase (peer->input, 0, crlf + 2 - peer->input->str);
  pg_test_peer_record (peer, *out_line, strlen (*out_line), TRUE);
  return TRUE;
}

/* One EXPECT: FALSE when it has to wait for more input. */
static gboolean
pg_test_peer_expect (PgTestPeer *peer, const PgTestPeerStep *step)
{
  g_autofree gchar *line = NULL;
  const char *rest;

  if (!pg_test_peer_take_line (peer, &line))
    {
      if (peer->eof)
        pg_test_peer_fail (peer, g_strdup_printf ("step %u: expected '%s', got EOF or nothing",
                                                  peer->step, step->text));
      else
        pg_test_peer_read (peer);
      return FALSE;
    }
  rest = line;
  if (step->action == PG_TEST_PEER_EXPECT)
    {
      const char *space = strchr (line, ' ');
      if (space == NULL)
        {
          pg_test_peer_fail (peer, g_strdup_printf ("step %u: no tag in '%s'", peer->step, line));
          return TRUE;
        }
      g_free (peer->previous_tag);
      peer->previous_tag = g_steal_pointer (&peer->tag);
      peer->tag = g_strndup (line, (gsize) (space - line));
      rest = space + 1;
    }
  if (!g_pattern_match_simple (step->text, rest))
    pg_test_peer_fail (
        peer, g_strdup_printf ("step %u: expected '%s', got '%s'", peer->step, step->text, rest));
  return TRUE;
}

/* Read and keep whatever comes until popgate closes. */
static void
pg_test_peer_discard (PgTestPeer *peer)
{
  pg_test_peer_record (peer, peer->input->str, peer->input->len, FALSE);
  g_string_truncate (peer->input, 0);
  pg_test_peer_read (peer);
}

/* Hand the responder the greeting call (once) and every complete line, then read on. */
static void
pg_test_peer_respond (PgTestPeer *peer, gboolean greet)
{
  PgTestPeerRespondFunc respond;
  gpointer respond_data;
  gchar *line = NULL;

  g_mutex_lock (&peer->lock);
  respond = peer->respond;
  respond_data = peer->respond_data;
  g_mutex_unlock (&peer->lock);
  g_assert_nonnull (respond);
  if (greet)
    respond (peer, NULL, respond_data);
  while (!peer->dropped && pg_test_peer_take_line (peer, &line))
    {
      respond (peer, line, respond_data);
      g_free (line);
    }
  pg_test_peer_read (peer);
}

static void
pg_test_peer_advance (PgTestPeer *peer)
{
  while (!peer->dropped)
    {
      const PgTestPeerStep *step = &peer->steps[peer->step];

      if (peer->failed)
        {
          pg_test_peer_discard (peer);
          return;
        }
      switch (step->action)
        {
        case PG_TEST_PEER_SEND:
          if (!pg_test_peer_queue_step (peer, step))
            return;
          peer->count = 0;
          peer->step++;
          break;
        case PG_TEST_PEER_EXPECT:
        case PG_TEST_PEER_EXPECT_RAW:
          if (!pg_test_peer_expect (peer, step))
            return;
          if (!peer->failed)
            peer->step++;
          break;
        case PG_TEST_PEER_TLS:
          {
            g_autoptr (GError) error = NULL;
            g_autoptr (GTlsCertificate) certificate = NULL;
            GIOStream *tls;

            if (peer->writing || peer->output->len > 0)
              return; /* "OK Begin TLS" goes out in plaintext first */
            g_mutex_lock (&peer->lock);
            certificate = peer->certificate != NULL ? g_object_ref (peer->certificate) : NULL;
            g_mutex_unlock (&peer->lock);
            if (certificate == NULL)
              {
                pg_test_peer_fail (
                    peer, g_strdup_printf ("step %u: TLS without a certificate", peer->step));
                break;
              }
            tls = g_tls_server_connection_new (G_IO_STREAM (peer->conn), certificate, &error);
            if (tls == NULL)
              {
                pg_test_peer_fail (
                    peer, g_strdup_printf ("step %u: TLS: %s", peer->step, error->message));
                break;
              }
            g_clear_object (&peer->stream);
            peer->stream = tls;
            /* No write goes out while the handshake runs. */
            peer->writing = TRUE;
            peer->pending++;
            g_tls_connection_handshake_async (G_TLS_CONNECTION (tls), G_PRIORITY_DEFAULT,
                                              peer->cancellable, pg_test_peer_handshake_cb, peer);
            return;
          }
        case PG_TEST_PEER_CLOSE:
          /* Killed: gone as soon as what was said went out, with no goodbye. */
          peer->after = PG_TEST_PEER_AFTER_CLOSE;
          pg_test_peer_flush (peer);
          return;
        case PG_TEST_PEER_HANG:
          pg_test_peer_set_flag (peer, &peer->finished);
          pg_test_peer_discard (peer);
          return;
        case PG_TEST_PEER_FLOOD:
          if (!pg_test_peer_queue_step (peer, step))
            return;
          if (peer->writing || peer->output->len > 0)
            return; /* the last batch has not gone out yet */
          pg_test_peer_fail (
              peer, g_strdup_printf ("step %u: flood not stopped after %" G_GSIZE_FORMAT " sends",
                                     peer->step, peer->count));
          break;
        case PG_TEST_PEER_RESPOND:
          {
            gboolean greet = !peer->responding;

            peer->responding = TRUE;
            if (greet)
              pg_test_peer_set_flag (peer, &peer->finished);
            pg_test_peer_respond (peer, greet);
            return;
          }
        }
    }
}

static gboolean
pg_test_peer_accept_cb (GSocket *listener, GIOCondition condition, gpointer user_data)
{
  PgTestPeer *peer = user_data;
  g_autoptr (GSocket) socket = g_socket_accept (listener, NULL, NULL);

  if (socket == NULL)
    return G_SOURCE_CONTINUE;
  if (peer->served || peer->stopping)
    {
      g_socket_close (socket, NULL); /* one connection per script */
      return G_SOURCE_CONTINUE;
    }
  peer->served = TRUE;
  g_socket_set_blocking (socket, FALSE);
  /* Without it, Nagle holds a second small write until popgate's delayed ACK (40 ms). */
  g_socket_set_option (socket, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
  peer->conn = g_socket_connection_factory_create_connection (socket);
  peer->stream = G_IO_STREAM (g_object_ref (peer->conn));
  peer->cancellable = g_cancellable_new ();
  pg_test_peer_advance (peer);
  return G_SOURCE_CONTINUE;
}

/* Tear the connection down and forget it, once its I/O has ended. */
static void
pg_test_peer_reset_connection (PgTestPeer *peer)
{
  g_clear_object (&peer->stream);
  g_clear_object (&peer->conn);
  g_clear_object (&peer->cancellable);
  g_string_truncate (peer->input, 0);
  g_string_truncate (peer->output, 0);
  g_clear_pointer (&peer->tag, g_free);
  g_clear_pointer (&peer->previous_tag, g_free);
  peer->step = 0;
  peer->count = 0;
  peer->served = FALSE;
  peer->dropped = FALSE;
  peer->failed = FALSE;
  peer->eof = FALSE;
  peer->shut = FALSE;
  peer->responding = FALSE;
  peer->after = PG_TEST_PEER_AFTER_NOTHING;
}

/* --- running ---------------------------------------------------------------------------- */

static gboolean
pg_test_peer_stop_cb (gpointer user_data)
{
  PgTestPeer *peer = user_data;

  peer->stopping = TRUE;
  pg_test_peer_close_socket (peer, TRUE);
  if (peer->conn == NULL)
    peer->dropped = TRUE;
  g_main_context_wakeup (peer->context);
  return G_SOURCE_REMOVE;
}

static gpointer
pg_test_peer_thread (gpointer user_data)
{
  PgTestPeer *peer = user_data;

  g_main_context_push_thread_default (peer->context);
  while (!peer->stopping || peer->pending > 0)
    g_main_context_iteration (peer->context, TRUE);
  g_main_context_pop_thread_default (peer->context);
  return NULL;
}

static gboolean
pg_test_peer_timeout_cb (gpointer user_data)
{
  gboolean *expired = user_data;

  *expired = TRUE;
  return G_SOURCE_REMOVE;
}

/* In-process: iterate the context until no I/O of ours is in flight (bounded). */
static void
pg_test_peer_drain (PgTestPeer *peer)
{
  gboolean expired = FALSE;
  GSource *timeout = g_timeout_source_new (PG_TEST_PEER_DRAIN_MS);

  g_source_set_callback (timeout, pg_test_peer_timeout_cb, &expired, NULL);
  g_source_attach (timeout, peer->context);
  while (peer->pending > 0 && !expired)
    g_main_context_iteration (peer->context, TRUE);
  g_source_destroy (timeout);
  g_source_unref (timeout);
  if (peer->pending > 0)
    g_error ("pg-test-peer: %u operations did not end after a reset", peer->pending);
}

static PgTestPeer *
pg_test_peer_new_full (const PgTestPeerStep *steps, gboolean own_thread, GError **error)
{
  g_autoptr (GSocket) listener = NULL;
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address = g_inet_socket_address_new (loopback, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  PgTestPeer *peer;

  listener
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, error);
  if (listener == NULL || !g_socket_bind (listener, address, TRUE, error)
      || !g_socket_listen (listener, error))
    return NULL;
  bound = g_socket_get_local_address (listener, error);
  if (bound == NULL)
    return NULL;
  g_socket_set_blocking (listener, FALSE);
  peer = g_new0 (PgTestPeer, 1);
  peer->context = own_thread ? g_main_context_new () : g_main_context_ref_thread_default ();
  peer->listener = g_steal_pointer (&listener);
  peer->port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  peer->steps = steps;
  peer->input = g_string_new (NULL);
  peer->output = g_string_new (NULL);
  peer->received = g_string_new (NULL);
  g_mutex_init (&peer->lock);
  g_cond_init (&peer->cond);
  peer->accept = g_socket_create_source (peer->listener, G_IO_IN, NULL);
  g_source_set_callback (peer->accept, G_SOURCE_FUNC (pg_test_peer_accept_cb), peer, NULL);
  g_source_attach (peer->accept, peer->context);
  if (own_thread)
    peer->thread = g_thread_new ("pg-test-peer", pg_test_peer_thread, peer);
  return peer;
}

PgTestPeer *
pg_test_peer_new (const PgTestPeerStep *steps, GError **error)
{
  return pg_test_peer_new_full (steps, TRUE, error);
}

PgTestPeer *
pg_test_peer_new_in_context (const PgTestPeerStep *steps, GError **error)
{
  return pg_test_peer_new_full (steps, FALSE, error);
}

guint16
pg_test_peer_get_port (PgTestPeer *peer)
{
  return peer->port;
}

void
pg_test_peer_set_certificate (PgTestPeer *peer, GTlsCertificate *certificate)
{
  g_mutex_lock (&peer->lock);
  g_set_object (&peer->certificate, certificate);
  g_mutex_unlock (&peer->lock);
}

void
pg_test_peer_set_responder (PgTestPeer *peer, PgTestPeerRespondFunc respond, gpointer user_data)
{
  g_mutex_lock (&peer->lock);
  peer->respond = respond;
  peer->respond_data = user_data;
  g_mutex_unlock (&peer->lock);
}

void
pg_test_peer_send (PgTestPeer *peer, const char *text, gsize len)
{
  if (peer->conn == NULL || peer->dropped || peer->after != PG_TEST_PEER_AFTER_NOTHING)
    return;
  g_string_append_len (peer->output, text, (gssize) len);
  pg_test_peer_flush (peer);
}

void
pg_test_peer_printf (PgTestPeer *peer, const char *format, ...)
{
  va_list args;
  g_autofree gchar *text = NULL;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  pg_test_peer_send (peer, text, strlen (text));
}

void
pg_test_peer_shutdown (PgTestPeer *peer)
{
  if (peer->after == PG_TEST_PEER_AFTER_NOTHING)
    peer->after = PG_TEST_PEER_AFTER_SHUTDOWN;
  pg_test_peer_flush (peer);
}

void
pg_test_peer_abort (PgTestPeer *peer)
{
  peer->after = PG_TEST_PEER_AFTER_ABORT;
  pg_test_peer_flush (peer);
}

void
pg_test_peer_restart (PgTestPeer *peer)
{
  g_return_if_fail (peer->thread == NULL);
  pg_test_peer_close_socket (peer, TRUE);
  pg_test_peer_drain (peer);
  pg_test_peer_reset_connection (peer);
  g_mutex_lock (&peer->lock);
  peer->finished = FALSE;
  peer->client_closed = FALSE;
  peer->end = PG_TEST_PEER_END_OPEN;
  g_clear_pointer (&peer->mismatch, g_free);
  g_string_truncate (peer->received, 0);
  g_mutex_unlock (&peer->lock);
}

static gboolean
pg_test_peer_wait_flag (PgTestPeer *peer, const gboolean *flag, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gboolean done;

  if (peer->thread == NULL)
    {
      gboolean expired = FALSE;
      GSource *timeout = g_timeout_source_new (timeout_ms);

      g_source_set_callback (timeout, pg_test_peer_timeout_cb, &expired, NULL);
      g_source_attach (timeout, peer->context);
      while (!*flag && !expired)
        g_main_context_iteration (peer->context, TRUE);
      g_source_destroy (timeout);
      g_source_unref (timeout);
      return *flag;
    }
  g_mutex_lock (&peer->lock);
  while (!*flag)
    if (!g_cond_wait_until (&peer->cond, &peer->lock, deadline))
      break;
  done = *flag;
  g_mutex_unlock (&peer->lock);
  return done;
}

gboolean
pg_test_peer_wait_finished (PgTestPeer *peer, guint timeout_ms)
{
  return pg_test_peer_wait_flag (peer, &peer->finished, timeout_ms);
}

gboolean
pg_test_peer_wait_client_closed (PgTestPeer *peer, guint timeout_ms)
{
  return pg_test_peer_wait_flag (peer, &peer->client_closed, timeout_ms);
}

const char *
pg_test_peer_get_mismatch (PgTestPeer *peer)
{
  const char *mismatch;

  g_mutex_lock (&peer->lock);
  mismatch = peer->mismatch;
  g_mutex_unlock (&peer->lock);
  return mismatch;
}

gchar *
pg_test_peer_get_received (PgTestPeer *peer)
{
  gchar *copy;

  g_mutex_lock (&peer->lock);
  copy = g_strndup (peer->received->str, peer->received->len);
  g_mutex_unlock (&peer->lock);
  return copy;
}

PgTestPeerEnd
pg_test_peer_get_end (PgTestPeer *peer)
{
  PgTestPeerEnd end;

  g_mutex_lock (&peer->lock);
  end = peer->end;
  g_mutex_unlock (&peer->lock);
  return end;
}

void
pg_test_peer_free (PgTestPeer *peer)
{
  if (peer == NULL)
    return;
  if (peer->thread != NULL)
    {
      g_main_context_invoke (peer->context, pg_test_peer_stop_cb, peer);
      g_thread_join (peer->thread);
    }
  else
    {
      pg_test_peer_stop_cb (peer);
      pg_test_peer_drain (peer);
    }
  g_source_destroy (peer->accept);
  g_source_unref (peer->accept);
  g_socket_close (peer->listener, NULL);
  g_object_unref (peer->listener);
  pg_test_peer_reset_connection (peer);
  g_main_context_unref (peer->context);
  g_clear_object (&peer->certificate);
  g_mutex_clear (&peer->lock);
  g_cond_clear (&peer->cond);
  g_string_free (peer->input, TRUE);
  g_string_free (peer->output, TRUE);
  g_string_free (peer->received, TRUE);
  g_free (peer->mismatch);
  g_free (peer);
}
