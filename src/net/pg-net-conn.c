/* popgate — one connection (a client's, or popgate's own to an upstream server; the one
 * engine under both): reads, an ordered write queue with back-pressure,
 * an idle timer, TLS upgrade, and a single "closed" notification.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-net-private.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-tls.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>

/* Metrics count bytes by PgFrontend as PgMetricsFrontend: the two enums must agree. */
G_STATIC_ASSERT ((int) PG_METRICS_FRONTEND_POP3 == (int) PG_FRONTEND_POP3
                 && (int) PG_METRICS_FRONTEND_IMAP == (int) PG_FRONTEND_IMAP
                 && (int) PG_METRICS_FRONTEND_COUNT == (int) PG_FRONTEND_COUNT);

/* Compressed client input buffered for inflating (COMPRESS=DEFLATE): one allocation per
 * compressed session beside zlib's own state; a few TCP segments' worth. */
#define PG_CONN_ZLIB_INPUT 4096

/* How long pg_conn_close() waits for queued output before dropping it. */
#define PG_CONN_CLOSE_FLUSH_MS 5000

struct _PgConn
{
  GObject parent_instance;

  guint64 id;
  PgFrontend frontend;
  PgConfig *config;          /* owned */
  GTlsCertificate *tls_cert; /* owned, may be NULL: what STLS/STARTTLS would present */
  GSocketConnection *socket; /* owned: the TCP connection */
  GIOStream *stream;         /* owned: socket or TLS on top of it */
  gchar *peer;               /* owned */
  gchar *peer_ip;            /* owned */
  gchar *proxy;              /* owned: the proxy's address when a PROXY header named
                              * the client, else NULL */
  gboolean loopback;
  gboolean tls;
  gboolean upstream; /* popgate's connection to a server: not counted as client bytes */

  GCancellable *cancellable; /* owned: cancels our own I/O on close */
  gboolean read_pending;
  GSource *read_source; /* owned: the stream's readiness, kept from read to read */
  GTask *read_task;     /* owned: the pending read when read_source serves it */
  void *read_buffer;    /* unowned: its buffer */
  gsize read_len;
  GSource *read_cancel_source;    /* owned: watches read_cancellable, kept from read to read */
  GCancellable *read_cancellable; /* owned: the caller's cancellable of the last read */

  GQueue write_queue; /* of GBytes* (owned) */
  gsize write_offset; /* bytes of the head already written */
  gsize queued;       /* bytes in the queue not yet written */
  gboolean write_pending;
  GList *drain_waiters; /* of GTask* (owned) waiting for the queue to drain */
  guint corked;         /* pg_conn_cork() depth */
  GByteArray *cork_buf; /* owned while corked and holding output, else NULL */

  guint idle_timeout_ms;
  gint64 idle_deadline_us;  /* monotonic: last activity + idle_timeout_ms */
  GSource *idle_source;     /* owned: fires at or before idle_deadline_us */
  GSource *deadline_source; /* owned: fires at or before deadline_us */
  gint64 deadline_us;       /* monotonic: pg_conn_set_deadline_at(), 0 = off */
  gint64 deadline_timer_us; /* monotonic: when deadline_source fires */
  gboolean deadline_passed;
  gint64 accepted_us;    /* monotonic: when the server accepted the connection */
  GSource *close_source; /* owned: deadline for a flushing close */

  guint64 bytes_in;
  guint64 bytes_out;
  gboolean closing; /* pg_conn_close called: flush then close */
  gboolean closed;
  GError *error; /* owned: why a write failed and closed us, else NULL */

  PgConnReadableFunc wait_func; /* pg_conn_wait_readable(): called once, then NULL */
  gpointer wait_data;
  GSource *wait_idle; /* owned: serves a wait on a stream that cannot be polled */

  /* COMPRESS=DEFLATE (RFC 4978) toward the client, NULL while off (see
   * pg_conn_start_compress). */
  GConverter *deflate; /* owned */
  GConverter *inflate; /* owned */
  guint8 *zin;         /* owned, PG_CONN_ZLIB_INPUT: compressed input not yet inflated */
  gsize zin_off;
  gsize zin_len;
  gboolean zin_more; /* the last inflate filled the caller's buffer: zlib may hold more */
  gboolean zwriting; /* deflated output on its way to the raw write path */
  GTask *zread;      /* owned: the read being served while compressed */
  guint8 *zread_buf; /* unowned: its buffer */
  gsize zread_len;

  gint plain_fd_plus1;  /* the TCP socket's descriptor + 1, 0 until looked up (pg_conn_plain_fd) */
  gboolean handshaking; /* a TLS handshake owns the plain stream: writes wait in the queue,
                         * reads are refused */
};

G_DEFINE_TYPE (PgConn, pg_conn, G_TYPE_OBJECT)

enum
{
  SIGNAL_CLOSED,
  SIGNAL_TIMEOUT,
  SIGNAL_SHUTDOWN,
  SIGNAL_LAST,
};
static guint pg_conn_signals[SIGNAL_LAST];

typedef struct
{
  gsize low_water;
} PgConnDrainData;

static void pg_conn_write_next (PgConn *conn);
static void pg_conn_finish_close (PgConn *conn);
static void pg_conn_cork_release (PgConn *conn);

/* Destroy a source this connection owns, if any. */
static void
pg_conn_clear_source (GSource **source)
{
  if (*source != NULL)
    {
      g_source_destroy (*source);
      g_clear_pointer (source, g_source_unref);
    }
}

/* The one spare cork buffer (see PG_CLIENT_CORK_MAX): corks last one callback, so a
 * process needs about one at a time, and none is allocated per message. */
static GByteArray *pg_conn_spare_cork = NULL;

static void
pg_conn_dispose (GObject *object)
{
  PgConn *conn = PG_CONN (object);

  pg_conn_finish_close (conn);
  G_OBJECT_CLASS (pg_conn_parent_class)->dispose (object);
}

static void
pg_conn_finalize (GObject *object)
{
  PgConn *conn = PG_CONN (object);

  g_queue_clear_full (&conn->write_queue, (GDestroyNotify) g_bytes_unref);
  pg_conn_cork_release (conn);
  g_clear_object (&conn->read_cancellable);
  g_clear_error (&conn->error);
  g_clear_object (&conn->deflate);
  g_clear_object (&conn->inflate);
  g_free (conn->zin);
  g_clear_object (&conn->stream);
  g_clear_object (&conn->socket);
  g_clear_object (&conn->tls_cert);
  g_clear_object (&conn->cancellable);
  g_clear_pointer (&conn->config, pg_config_unref);
  g_free (conn->peer);
  g_free (conn->peer_ip);
  g_free (conn->proxy);
  G_OBJECT_CLASS (pg_conn_parent_class)->finalize (object);
}

static void
pg_conn_class_init (PgConnClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pg_conn_dispose;
  object_class->finalize = pg_conn_finalize;

  pg_conn_signals[SIGNAL_CLOSED] = g_signal_new (
      "closed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL, G_TYPE_NONE, 0);
  /* Returns TRUE when a handler took care of the timeout (it closes the connection). */
  pg_conn_signals[SIGNAL_TIMEOUT]
      = g_signal_new ("timeout", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                      g_signal_accumulator_true_handled, NULL, NULL, G_TYPE_BOOLEAN, 0);
  pg_conn_signals[SIGNAL_SHUTDOWN]
      = g_signal_new ("shutdown", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 0);
}

static void
pg_conn_init (PgConn *conn)
{
  g_queue_init (&conn->write_queue);
  conn->cancellable = g_cancellable_new ();
}

PgConn *
pg_conn_new_internal (guint64 id, PgFrontend frontend, PgConfig *config, GSocketConnection *socket,
                      GIOStream *stream, gboolean tls, GTlsCertificate *tls_cert)
{
  PgConn *conn = g_object_new (PG_TYPE_CONN, NULL);
  g_autoptr (GSocketAddress) remote = NULL;

  conn->id = id;
  conn->frontend = frontend;
  conn->config = pg_config_ref (config);
  conn->socket = socket != NULL ? g_object_ref (socket) : NULL;
  conn->stream = g_object_ref (stream);
  conn->tls = tls;
  conn->tls_cert = tls_cert != NULL ? g_object_ref (tls_cert) : NULL;
  conn->accepted_us = g_get_monotonic_time ();

  if (socket != NULL)
    remote = g_socket_connection_get_remote_address (socket, NULL);
  if (remote != NULL && G_IS_INET_SOCKET_ADDRESS (remote))
    {
      GInetAddress *ip = g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (remote));
      conn->peer = pg_address_to_string (remote);
      conn->peer_ip = g_inet_address_to_string (ip);
      conn->loopback = g_inet_address_get_is_loopback (ip);
    }
  else
    {
      conn->peer = g_strdup ("unknown");
      conn->peer_ip = g_strdup ("unknown");
    }
  return conn;
}

/* The socket under `stream` (a GSocketConnection, or the base of TLS), or NULL: reffed. */
static GSocketConnection *
pg_conn_dup_socket (GIOStream *stream)
{
  g_autoptr (GIOStream) base = NULL;

  if (G_IS_TLS_CONNECTION (stream))
    g_object_get (stream, "base-io-stream", &base, NULL);
  else
    base = g_object_ref (stream);
  return G_IS_SOCKET_CONNECTION (base) ? G_SOCKET_CONNECTION (g_object_ref (base)) : NULL;
}

static PgConn *
pg_conn_new_with_id (guint64 id, PgFrontend frontend, PgConfig *config, GIOStream *stream)
{
  g_autoptr (GSocketConnection) socket = pg_conn_dup_socket (stream);

  return pg_conn_new_internal (id, frontend, config, socket, stream, G_IS_TLS_CONNECTION (stream),
                               NULL);
}

PgConn *
pg_conn_new (PgFrontend frontend, PgConfig *config, GIOStream *stream)
{
  g_return_val_if_fail (G_IS_IO_STREAM (stream), NULL);
  return pg_conn_new_with_id (pg_session_id_next (), frontend, config, stream);
}

PgConn *
pg_conn_new_upstream (PgConfig *config, GIOStream *stream)
{
  PgConn *conn;

  g_return_val_if_fail (G_IS_IO_STREAM (stream), NULL);
  conn = pg_conn_new_with_id (0, PG_FRONTEND_IMAP, config, stream);
  conn->upstream = TRUE;
  return conn;
}

gboolean
pg_conn_is_upstream (PgConn *conn)
{
  return conn->upstream;
}

void
pg_conn_set_peer_internal (PgConn *conn, GInetSocketAddress *peer, const char *proxy)
{
  GInetAddress *ip = g_inet_socket_address_get_address (peer);

  g_free (conn->peer);
  g_free (conn->peer_ip);
  g_free (conn->proxy);
  conn->peer = pg_address_to_string (peer);
  conn->peer_ip = g_inet_address_to_string (ip);
  conn->loopback = g_inet_address_get_is_loopback (ip);
  conn->proxy = g_strdup (proxy);
}

const char *
pg_conn_get_proxy (PgConn *conn)
{
  return conn->proxy;
}

guint64
pg_conn_get_id (PgConn *conn)
{
  return conn->id;
}

PgFrontend
pg_conn_get_frontend (PgConn *conn)
{
  return conn->frontend;
}

PgConfig *
pg_conn_get_config (PgConn *conn)
{
  return conn->config;
}

const char *
pg_conn_get_peer (PgConn *conn)
{
  return conn->peer;
}

const char *
pg_conn_get_peer_ip (PgConn *conn)
{
  return conn->peer_ip;
}

gboolean
pg_conn_is_loopback (PgConn *conn)
{
  return conn->loopback;
}

gboolean
pg_conn_is_tls (PgConn *conn)
{
  return conn->tls;
}

gboolean
pg_conn_is_closed (PgConn *conn)
{
  return conn->closed;
}

gboolean
pg_conn_can_start_tls (PgConn *conn)
{
  return !conn->tls && conn->tls_cert != NULL && !conn->closed;
}

guint64
pg_conn_get_bytes_in (PgConn *conn)
{
  return conn->bytes_in;
}

guint64
pg_conn_get_bytes_out (PgConn *conn)
{
  return conn->bytes_out;
}

/* --- idle timer ----------------------------------------------------------------------- */

/* The idle timer or the deadline ran out: the session says why and closes, else we do. */
static void
pg_conn_emit_timeout (PgConn *conn)
{
  gboolean handled = FALSE;
  g_autoptr (PgConn) keep = g_object_ref (conn);

  g_signal_emit (conn, pg_conn_signals[SIGNAL_TIMEOUT], 0, &handled);
  if (!handled)
    pg_conn_abort (conn);
}

/* The timer is not moved on every read (a relay round trip or a RETR would destroy and
 * create a timeout source each): reads move idle_deadline_us, and a timer that fires
 * before it waits for the rest. */
static void pg_conn_arm_idle (PgConn *conn, guint ms);

static gboolean
pg_conn_idle_cb (gpointer user_data)
{
  PgConn *conn = user_data;
  gint64 left_us = conn->idle_deadline_us - g_get_monotonic_time ();

  g_clear_pointer (&conn->idle_source, g_source_unref);
  if (left_us > 0)
    {
      pg_conn_arm_idle (conn, (guint) ((left_us + 999) / 1000));
      return G_SOURCE_REMOVE;
    }
  pg_conn_emit_timeout (conn);
  return G_SOURCE_REMOVE;
}

static void
pg_conn_arm_idle (PgConn *conn, guint ms)
{
  conn->idle_source = g_timeout_source_new (ms);
  g_source_set_callback (conn->idle_source, pg_conn_idle_cb, conn, NULL);
  g_source_set_static_name (conn->idle_source, "[popgate] idle timeout");
  g_source_attach (conn->idle_source, g_main_context_get_thread_default ());
}

static void
pg_conn_stop_idle (PgConn *conn)
{
  pg_conn_clear_source (&conn->idle_source);
}

static void
pg_conn_restart_idle (PgConn *conn)
{
  if (conn->idle_timeout_ms == 0 || conn->closed)
    {
      pg_conn_stop_idle (conn);
      return;
    }
  conn->idle_deadline_us = g_get_monotonic_time () + (gint64) conn->idle_timeout_ms * 1000;
  if (conn->idle_source == NULL)
    pg_conn_arm_idle (conn, conn->idle_timeout_ms);
}

void
pg_conn_set_idle_timeout (PgConn *conn, guint timeout_ms)
{
  conn->idle_timeout_ms = timeout_ms;
  pg_conn_stop_idle (conn); /* a new length: a timer armed for the old one would be late */
  pg_conn_restart_idle (conn);
}

/* --- deadline ------------------------------------------------------------------------- */

/* Like the idle timer, the deadline's source is not moved when the deadline moves later
 * (an upstream's per-command deadline moves with every reply): the source fires at the
 * old time and waits for the rest. Only a deadline moved earlier gets a new source. */
static void pg_conn_arm_deadline (PgConn *conn, gint64 at_us);

static gboolean
pg_conn_deadline_cb (gpointer user_data)
{
  PgConn *conn = user_data;

  g_clear_pointer (&conn->deadline_source, g_source_unref);
  if (conn->deadline_us > g_get_monotonic_time ())
    {
      pg_conn_arm_deadline (conn, conn->deadline_us);
      return G_SOURCE_REMOVE;
    }
  conn->deadline_us = 0;
  conn->deadline_passed = TRUE;
  pg_conn_emit_timeout (conn);
  return G_SOURCE_REMOVE;
}

static void
pg_conn_arm_deadline (PgConn *conn, gint64 at_us)
{
  gint64 left_us = MAX (at_us - g_get_monotonic_time (), 0);

  conn->deadline_timer_us = at_us;
  conn->deadline_source = g_timeout_source_new ((guint) MIN ((left_us + 999) / 1000, G_MAXUINT));
  g_source_set_callback (conn->deadline_source, pg_conn_deadline_cb, conn, NULL);
  g_source_set_static_name (conn->deadline_source, "[popgate] connection deadline");
  g_source_attach (conn->deadline_source, g_main_context_get_thread_default ());
}

void
pg_conn_set_deadline_at (PgConn *conn, gint64 at_us)
{
  conn->deadline_us = conn->closed ? 0 : at_us;
  if (conn->deadline_us == 0)
    {
      pg_conn_clear_source (&conn->deadline_source);
      return;
    }
  conn->deadline_passed = FALSE;
  if (conn->deadline_source != NULL && conn->deadline_timer_us <= at_us)
    return; /* it fires early and waits for the rest */
  pg_conn_clear_source (&conn->deadline_source);
  pg_conn_arm_deadline (conn, at_us);
}

void
pg_conn_set_deadline (PgConn *conn, guint after_accept_ms)
{
  pg_conn_set_deadline_at (
      conn, after_accept_ms == 0 ? 0 : conn->accepted_us + (gint64) after_accept_ms * 1000);
}

gboolean
pg_conn_deadline_passed (PgConn *conn)
{
  return conn->deadline_passed;
}

void
pg_conn_set_accepted_internal (PgConn *conn, gint64 accepted_us)
{
  conn->accepted_us = accepted_us;
}

/* --- plain sockets ------------------------------------------------------------------------ */

/* On a plain TCP connection (no TLS on top) a non-blocking read or write
 * goes to the descriptor itself: GIO's pollable-stream and GSocket layers cost about
 * 1,000 instructions a call in type and interface checks (callgrind), four calls per
 * relay round trip. GSocket keeps the descriptor non-blocking whatever its "blocking"
 * flag says and keeps no state of its own on Linux that this passes by. Returns -1 for a
 * connection that is not plain. */
static int
pg_conn_plain_fd (PgConn *conn)
{
  if (conn->closed || conn->handshaking || conn->socket == NULL
      || conn->stream != (GIOStream *) conn->socket)
    return -1; /* closed: the number may belong to another connection by now */
  if (conn->plain_fd_plus1 == 0)
    conn->plain_fd_plus1 = g_socket_get_fd (g_socket_connection_get_socket (conn->socket)) + 1;
  return conn->plain_fd_plus1 - 1;
}

static gssize
pg_conn_plain_recv (int fd, void *buffer, gsize len, GError **error)
{
  for (;;)
    {
      gssize n = recv (fd, buffer, len, 0);
      int saved = errno;

      if (n >= 0)
        return n;
      if (saved == EINTR)
        continue;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (saved), "Error receiving data: %s",
                   g_strerror (saved));
      return -1;
    }
}

/* Returns what the socket took, 0 when it is full or the write failed (see
 * pg_conn_write_now). */
static gsize
pg_conn_plain_send (int fd, const void *data, gsize len)
{
  for (;;)
    {
      gssize n = send (fd, data, len, MSG_NOSIGNAL);

      if (n >= 0)
        return (gsize) n;
      if (errno != EINTR)
        return 0;
    }
}

/* --- reading ---------------------------------------------------------------------------- */

/* Reads on a pollable stream (every socket, TLS or not) are served by one readable source
 * per connection that stays attached from one read to the next, rather than by
 * g_input_stream_read_async(), which creates, attaches and destroys a source per read.
 * GLib 2.74 writes its wake-up eventfd each time a source with a file descriptor is
 * attached, destroyed, or blocked and unblocked around its dispatch: four writes (and a
 * read of the eventfd) per read that way, none with a kept source that may recurse
 * (pg_net_readable_source_new). When input arrives while nobody reads, the source removes
 * itself; the next read adds it. */

typedef struct
{
  GSourceFunc func;
  gpointer data;
} PgNetReadable;

static gboolean
pg_net_socket_readable_cb (GSocket *socket, GIOCondition condition, gpointer user_data)
{
  PgNetReadable *readable = user_data;
  return readable->func (readable->data);
}

static gboolean
pg_net_pollable_readable_cb (GObject *stream, gpointer user_data)
{
  PgNetReadable *readable = user_data;
  return readable->func (readable->data);
}

GSource *
pg_net_readable_source_new (GIOStream *stream, GSourceFunc func, gpointer data)
{
  PgNetReadable *readable = g_new (PgNetReadable, 1);
  GSource *source;

  readable->func = func;
  readable->data = data;
  if (G_IS_SOCKET_CONNECTION (stream))
    {
      source = g_socket_create_source (
          g_socket_connection_get_socket (G_SOCKET_CONNECTION (stream)), G_IO_IN, NULL);
      g_source_set_callback (source, G_SOURCE_FUNC (pg_net_socket_readable_cb), readable, g_free);
    }
  else
    {
      GInputStream *in = g_io_stream_get_input_stream (stream);

      g_return_val_if_fail (G_IS_POLLABLE_INPUT_STREAM (in), NULL);
      source = g_pollable_input_stream_create_source (G_POLLABLE_INPUT_STREAM (in), NULL);
      g_source_set_callback (source, G_SOURCE_FUNC (pg_net_pollable_readable_cb), readable, g_free);
    }
  g_source_set_can_recurse (source, TRUE);
  return source;
}

static void
pg_conn_drop_read_source (PgConn *conn)
{
  pg_conn_clear_source (&conn->read_source);
}

/* `n` bytes came in: count them, and the connection is not idle. */
static void
pg_conn_count_in (PgConn *conn, gsize n)
{
  conn->bytes_in += (guint64) n;
  if (!conn->upstream)
    pg_metrics_client_bytes ((PgMetricsFrontend) conn->frontend, PG_METRICS_DIRECTION_IN,
                             (guint64) n);
  pg_conn_restart_idle (conn);
}

/* A read is over, by either path (readiness or GIO's async read): count it and return it
 * on `task` (transfer full). */
static void
pg_conn_read_return (PgConn *conn, GTask *task, gssize n, GError *error)
{
  conn->read_pending = FALSE;
  if (n < 0)
    {
      g_task_return_error (task, error);
      g_object_unref (task);
      return;
    }
  pg_conn_count_in (conn, (gsize) n);
  g_task_return_int (task, n);
  g_object_unref (task);
}

static void
pg_conn_read_done (PgConn *conn, gssize n, GError *error)
{
  pg_conn_read_return (conn, g_steal_pointer (&conn->read_task), n, error);
}

static gboolean
pg_conn_readable_cb (gpointer user_data)
{
  PgConn *conn = user_data;
  g_autoptr (PgConn) keep = g_object_ref (conn);
  GInputStream *in = g_io_stream_get_input_stream (conn->stream);
  GError *error = NULL;
  gssize n;

  if (conn->read_task == NULL && conn->wait_func != NULL)
    {
      PgConnReadableFunc func = conn->wait_func;

      conn->wait_func = NULL;
      func (conn, conn->wait_data);
      /* Kept for the read that follows (if none comes, the next dispatch removes it). */
      return conn->read_source != NULL ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
    }
  if (conn->read_task == NULL)
    {
      g_clear_pointer (&conn->read_source, g_source_unref);
      return G_SOURCE_REMOVE;
    }
  n = g_pollable_input_stream_read_nonblocking (G_POLLABLE_INPUT_STREAM (in), conn->read_buffer,
                                                conn->read_len, NULL, &error);
  if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    {
      g_error_free (error);
      return G_SOURCE_CONTINUE;
    }
  pg_conn_read_done (conn, n, error);
  return G_SOURCE_CONTINUE;
}

static gboolean
pg_conn_read_cancelled_cb (GCancellable *cancellable, gpointer user_data)
{
  PgConn *conn = user_data;
  g_autoptr (PgConn) keep = g_object_ref (conn);

  /* It fires once: the next read with this cancellable fails at once (see read_async). */
  g_clear_pointer (&conn->read_cancel_source, g_source_unref);
  if (conn->read_task != NULL)
    pg_conn_read_done (
        conn, -1,
        g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED, "Operation was cancelled"));
  return G_SOURCE_REMOVE;
}

static gboolean
pg_conn_read_closed_cb (gpointer user_data)
{
  GTask *task = user_data;

  g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_CLOSED, "connection closed");
  return G_SOURCE_REMOVE;
}

/* The connection closed under a pending read: fail it from the main loop, as a cancelled
 * g_input_stream_read_async() would, never from inside pg_conn_finish_close(). */
static void
pg_conn_fail_pending_read (PgConn *conn)
{
  g_autoptr (GTask) task = NULL;
  g_autoptr (GSource) idle = NULL;

  if (conn->read_task == NULL)
    return;
  task = g_steal_pointer (&conn->read_task);
  conn->read_pending = FALSE;
  idle = g_idle_source_new ();
  g_task_attach_source (task, idle, pg_conn_read_closed_cb);
}

static void
pg_conn_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgConn *conn = g_task_get_source_object (task);
  GError *error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  pg_conn_read_return (conn, task, n, error);
}

/* --- COMPRESS=DEFLATE (RFC 4978) --------------------------------------------------------- */

static void pg_conn_inflate_step (PgConn *conn);

static void
pg_conn_zread_complete (PgConn *conn, gssize n, GError *error)
{
  g_autoptr (GTask) task = g_steal_pointer (&conn->zread);

  conn->read_pending = FALSE;
  if (error != NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  pg_conn_restart_idle (conn);
  g_task_return_int (task, n);
}

static void
pg_conn_zread_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgConn) conn = user_data;
  GError *error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  if (n <= 0)
    {
      pg_conn_zread_complete (conn, n, error);
      return;
    }
  conn->bytes_in += (guint64) n;
  if (!conn->upstream)
    pg_metrics_client_bytes ((PgMetricsFrontend) conn->frontend, PG_METRICS_DIRECTION_IN,
                             (guint64) n);
  conn->zin_len += (gsize) n;
  pg_conn_inflate_step (conn);
}

/* Inflate what is buffered into the pending read's buffer; read the socket when that
 * gives nothing yet. */
static void
pg_conn_inflate_step (PgConn *conn)
{
  GCancellable *cancellable = g_task_get_cancellable (conn->zread);

  while (conn->zin_len > 0 || conn->zin_more)
    {
      g_autoptr (GError) error = NULL;
      gsize r = 0, w = 0;
      GConverterResult res = g_converter_convert (conn->inflate, conn->zin + conn->zin_off,
                                                  conn->zin_len, conn->zread_buf, conn->zread_len,
                                                  G_CONVERTER_NO_FLAGS, &r, &w, &error);

      conn->zin_more = FALSE;
      if (res == G_CONVERTER_ERROR)
        {
          if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT))
            break;
          pg_conn_zread_complete (
              conn, -1,
              g_error_new (PG_ERROR, PG_ERROR_PROTOCOL, "invalid compressed data from the %s: %s",
                           conn->upstream ? "server" : "client", error->message));
          return;
        }
      conn->zin_off += r;
      conn->zin_len -= r;
      conn->zin_more = w == conn->zread_len;
      if (w > 0)
        {
          pg_conn_zread_complete (conn, (gssize) w, NULL);
          return;
        }
      if (res == G_CONVERTER_FINISHED)
        {
          /* The client ended its deflate stream: nothing more can come. */
          pg_conn_zread_complete (conn, 0, NULL);
          return;
        }
      if (r == 0)
        break;
    }
  if (conn->zin_len == PG_CONN_ZLIB_INPUT)
    {
      pg_conn_zread_complete (conn, -1,
                              g_error_new (PG_ERROR, PG_ERROR_PROTOCOL,
                                           "compressed data from the %s stalled",
                                           conn->upstream ? "server" : "client"));
      return;
    }
  memmove (conn->zin, conn->zin + conn->zin_off, conn->zin_len);
  conn->zin_off = 0;
  g_input_stream_read_async (g_io_stream_get_input_stream (conn->stream), conn->zin + conn->zin_len,
                             PG_CONN_ZLIB_INPUT - conn->zin_len, G_PRIORITY_DEFAULT,
                             cancellable != NULL ? cancellable : conn->cancellable,
                             pg_conn_zread_cb, g_object_ref (conn));
}

static void
pg_conn_inflate_read (PgConn *conn, GTask *task, void *buffer, gsize len)
{
  conn->zread = task;
  conn->zread_buf = buffer;
  conn->zread_len = len;
  pg_conn_inflate_step (conn);
}

/* Deflate one write batch and flush it (Z_SYNC_FLUSH): what popgate writes reaches the
 * client at once, an IDLE push or a BYE as much as a FETCH. */
static void
pg_conn_write_deflated (PgConn *conn, const void *data, gsize len)
{
  g_autoptr (GByteArray) out = g_byte_array_sized_new ((guint) MIN (len / 2 + 64, G_MAXUINT));
  guint8 chunk[4096];
  gsize off = 0;

  for (;;)
    {
      g_autoptr (GError) error = NULL;
      gsize r = 0, w = 0;
      GConverterResult res
          = g_converter_convert (conn->deflate, (const guint8 *) data + off, len - off, chunk,
                                 sizeof chunk, G_CONVERTER_FLUSH, &r, &w, &error);

      if (res == G_CONVERTER_ERROR)
        break; /* nothing left to flush */
      off += r;
      g_byte_array_append (out, chunk, (guint) w);
      if (off == len && (w < sizeof chunk || res == G_CONVERTER_FLUSHED))
        break;
    }
  conn->zwriting = TRUE;
  pg_conn_write (conn, out->data, out->len);
  conn->zwriting = FALSE;
}

gboolean
pg_conn_start_compress (PgConn *conn, const void *input, gsize len, GError **error)
{
  g_return_val_if_fail (!conn->read_pending, FALSE);

  if (conn->deflate != NULL || len > PG_CONN_ZLIB_INPUT)
    {
      g_set_error_literal (error, PG_ERROR, PG_ERROR_PROTOCOL, "compression cannot start now");
      return FALSE;
    }
  /* Reads now go through the inflater: the readable source of the plain path goes. */
  pg_conn_drop_read_source (conn);
  conn->deflate = G_CONVERTER (g_zlib_compressor_new (G_ZLIB_COMPRESSOR_FORMAT_RAW, -1));
  conn->inflate = G_CONVERTER (g_zlib_decompressor_new (G_ZLIB_COMPRESSOR_FORMAT_RAW));
  conn->zin = g_malloc (PG_CONN_ZLIB_INPUT);
  if (len > 0)
    memcpy (conn->zin, input, len);
  conn->zin_len = len;
  return TRUE;
}

gboolean
pg_conn_is_compressed (PgConn *conn)
{
  return conn->deflate != NULL;
}

void
pg_conn_read_async (PgConn *conn, void *buffer, gsize len, GCancellable *cancellable,
                    GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (conn, cancellable, callback, user_data);
  GInputStream *in = NULL;

  g_task_set_source_tag (task, pg_conn_read_async);
  g_return_if_fail (!conn->read_pending && conn->wait_func == NULL);
  if (conn->closed)
    {
      g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_CLOSED, "connection closed");
      return;
    }
  if (conn->handshaking)
    {
      g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_PENDING,
                               "a TLS handshake is in progress");
      return;
    }
  conn->read_pending = TRUE;
  if (conn->inflate != NULL)
    {
      pg_conn_inflate_read (conn, g_steal_pointer (&task), buffer, len);
      return;
    }
  in = g_io_stream_get_input_stream (conn->stream);
  if (!G_IS_POLLABLE_INPUT_STREAM (in)
      || !g_pollable_input_stream_can_poll (G_POLLABLE_INPUT_STREAM (in)))
    {
      g_input_stream_read_async (in, buffer, len, G_PRIORITY_DEFAULT,
                                 cancellable != NULL ? cancellable : conn->cancellable,
                                 pg_conn_read_cb, g_steal_pointer (&task));
      return;
    }
  conn->read_task = g_steal_pointer (&task);
  conn->read_buffer = buffer;
  conn->read_len = len;
  /* The same cancellable read after read (the usual case) keeps its source; one that
   * was cancelled already gets a new source, which fires at once and fails the read. */
  if (cancellable != conn->read_cancellable || conn->read_cancel_source == NULL)
    {
      pg_conn_clear_source (&conn->read_cancel_source);
      g_set_object (&conn->read_cancellable, cancellable);
      if (cancellable != NULL)
        {
          conn->read_cancel_source = g_cancellable_source_new (cancellable);
          g_source_set_callback (conn->read_cancel_source,
                                 G_SOURCE_FUNC (pg_conn_read_cancelled_cb), conn, NULL);
          g_source_attach (conn->read_cancel_source, g_main_context_get_thread_default ());
        }
    }
  if (conn->read_source == NULL)
    {
      conn->read_source = pg_net_readable_source_new (conn->stream, pg_conn_readable_cb, conn);
      g_source_set_static_name (conn->read_source, "[popgate] client readable");
      g_source_attach (conn->read_source, g_main_context_get_thread_default ());
    }
}

gssize
pg_conn_read_finish (PgConn *conn, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, conn), -1);
  return g_task_propagate_int (G_TASK (result), error);
}

static gboolean
pg_conn_can_poll (GIOStream *stream)
{
  GInputStream *in = g_io_stream_get_input_stream (stream);

  return G_IS_POLLABLE_INPUT_STREAM (in)
         && g_pollable_input_stream_can_poll (G_POLLABLE_INPUT_STREAM (in));
}

gssize
pg_conn_read_nonblocking (PgConn *conn, void *buffer, gsize len, GError **error)
{
  gssize n;

  g_return_val_if_fail (!conn->read_pending && conn->wait_func == NULL, -1);
  if (conn->closed)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_CLOSED, "connection closed");
      return -1;
    }
  if (conn->handshaking)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_PENDING, "a TLS handshake is in progress");
      return -1;
    }
  if (conn->inflate == NULL && pg_conn_plain_fd (conn) >= 0)
    n = pg_conn_plain_recv (pg_conn_plain_fd (conn), buffer, len, error);
  else if (conn->inflate != NULL || !pg_conn_can_poll (conn->stream))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK, "read asynchronously");
      return -1;
    }
  else
    n = g_pollable_input_stream_read_nonblocking (
        G_POLLABLE_INPUT_STREAM (g_io_stream_get_input_stream (conn->stream)), buffer, len, NULL,
        error);
  if (n >= 0)
    pg_conn_count_in (conn, (gsize) n);
  return n;
}

static gboolean
pg_conn_wait_idle_cb (gpointer user_data)
{
  PgConn *conn = user_data;
  g_autoptr (PgConn) keep = g_object_ref (conn);
  PgConnReadableFunc func = conn->wait_func;

  g_clear_pointer (&conn->wait_idle, g_source_unref);
  conn->wait_func = NULL;
  if (func != NULL)
    func (conn, conn->wait_data);
  return G_SOURCE_REMOVE;
}

void
pg_conn_wait_readable (PgConn *conn, PgConnReadableFunc func, gpointer user_data)
{
  g_return_if_fail (func != NULL);
  g_return_if_fail (!conn->read_pending && conn->wait_func == NULL);
  g_return_if_fail (!conn->handshaking);
  if (conn->closed)
    return;
  conn->wait_func = func;
  conn->wait_data = user_data;
  /* A wait needs no cancellable source: one a read left attached would be prepared and
   * checked on every turn of the main loop for nothing (read_async makes it again). */
  pg_conn_clear_source (&conn->read_cancel_source);
  /* Inflated input already waiting, or a stream that cannot say when it has input: the
   * caller reads at once, and that read waits. */
  if ((conn->inflate != NULL && (conn->zin_len > 0 || conn->zin_more))
      || (pg_conn_plain_fd (conn) < 0 && !pg_conn_can_poll (conn->stream)))
    {
      conn->wait_idle = g_idle_source_new ();
      g_source_set_callback (conn->wait_idle, pg_conn_wait_idle_cb, conn, NULL);
      g_source_set_static_name (conn->wait_idle, "[popgate] readable wait");
      g_source_attach (conn->wait_idle, g_main_context_get_thread_default ());
      return;
    }
  if (conn->read_source == NULL)
    {
      conn->read_source = pg_net_readable_source_new (conn->stream, pg_conn_readable_cb, conn);
      g_source_set_static_name (conn->read_source, "[popgate] connection readable");
      g_source_attach (conn->read_source, g_main_context_get_thread_default ());
    }
}

void
pg_conn_cancel_wait_readable (PgConn *conn)
{
  conn->wait_func = NULL;
  conn->wait_data = NULL;
  pg_conn_clear_source (&conn->wait_idle);
}

gboolean
pg_conn_is_reading (PgConn *conn)
{
  return conn->read_pending || conn->wait_func != NULL;
}

/* --- writing ---------------------------------------------------------------------------- */

static void
pg_conn_check_drain_waiters (PgConn *conn)
{
  GList *l = conn->drain_waiters;

  while (l != NULL)
    {
      GList *next = l->next;
      GTask *task = l->data;
      PgConnDrainData *data = g_task_get_task_data (task);

      if (conn->closed)
        {
          conn->drain_waiters = g_list_delete_link (conn->drain_waiters, l);
          g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_CLOSED, "connection closed");
          g_object_unref (task);
        }
      else if (pg_conn_get_queued (conn) <= data->low_water)
        {
          conn->drain_waiters = g_list_delete_link (conn->drain_waiters, l);
          g_task_return_boolean (task, TRUE);
          g_object_unref (task);
        }
      l = next;
    }
}

static void
pg_conn_write_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgConn *conn = user_data; /* a reference taken by pg_conn_write_next */
  g_autoptr (GError) error = NULL;
  gssize n = g_output_stream_write_finish (G_OUTPUT_STREAM (source), result, &error);

  conn->write_pending = FALSE;
  if (n < 0)
    {
      /* The client went away or the close deadline cancelled us: drop the rest. */
      if (conn->error == NULL && !conn->closed)
        conn->error = g_steal_pointer (&error);
      pg_conn_finish_close (conn);
      g_object_unref (conn);
      return;
    }

  GBytes *head = g_queue_peek_head (&conn->write_queue);
  conn->write_offset += (gsize) n;
  conn->queued -= (gsize) n;
  conn->bytes_out += (guint64) n;
  if (!conn->upstream)
    pg_metrics_client_bytes ((PgMetricsFrontend) conn->frontend, PG_METRICS_DIRECTION_OUT,
                             (guint64) n);
  if (conn->write_offset == g_bytes_get_size (head))
    {
      g_bytes_unref (g_queue_pop_head (&conn->write_queue));
      conn->write_offset = 0;
    }
  pg_conn_check_drain_waiters (conn);
  pg_conn_write_next (conn);
  g_object_unref (conn);
}

static void
pg_conn_write_next (PgConn *conn)
{
  GBytes *head;
  gsize size;
  const guint8 *data;

  if (conn->write_pending || conn->closed || conn->handshaking)
    return;
  head = g_queue_peek_head (&conn->write_queue);
  if (head == NULL)
    {
      if (conn->closing)
        pg_conn_finish_close (conn);
      return;
    }
  data = g_bytes_get_data (head, &size);
  conn->write_pending = TRUE;
  g_output_stream_write_async (g_io_stream_get_output_stream (conn->stream),
                               data + conn->write_offset, size - conn->write_offset,
                               G_PRIORITY_DEFAULT, conn->cancellable, pg_conn_write_cb,
                               g_object_ref (conn));
}

/* When nothing is queued or being written, hand `data` to the socket at once, without
 * blocking: a relay or a RETR chunk that the socket takes whole is then neither copied
 * nor queued, and costs no async round through the main loop. Returns the bytes written;
 * 0 when the socket is full, the stream cannot be polled, or the write failed — the
 * queued write that follows then meets the error and closes through the ordinary path,
 * so "closed" is never emitted from inside a caller's pg_conn_write(). */
static gsize
pg_conn_write_now (PgConn *conn, const void *data, gsize len)
{
  GOutputStream *out;
  gssize n;

  if (conn->write_pending || conn->queued > 0 || conn->handshaking)
    return 0;
  if (pg_conn_plain_fd (conn) >= 0)
    n = (gssize) pg_conn_plain_send (pg_conn_plain_fd (conn), data, len);
  else
    {
      out = g_io_stream_get_output_stream (conn->stream);
      if (!G_IS_POLLABLE_OUTPUT_STREAM (out)
          || !g_pollable_output_stream_can_poll (G_POLLABLE_OUTPUT_STREAM (out)))
        return 0;
      n = g_pollable_output_stream_write_nonblocking (G_POLLABLE_OUTPUT_STREAM (out), data, len,
                                                      NULL, NULL);
    }
  if (n <= 0)
    return 0;
  conn->bytes_out += (guint64) n;
  if (!conn->upstream)
    pg_metrics_client_bytes ((PgMetricsFrontend) conn->frontend, PG_METRICS_DIRECTION_OUT,
                             (guint64) n);
  return (gsize) n;
}

static void
pg_conn_send_bytes (PgConn *conn, GBytes *bytes)
{
  gsize size = g_bytes_get_size (bytes);
  gsize done;

  if (conn->closed || conn->closing || size == 0)
    return;
  if (conn->deflate != NULL && !conn->zwriting)
    {
      pg_conn_write_deflated (conn, g_bytes_get_data (bytes, NULL), size);
      return;
    }
  done = pg_conn_write_now (conn, g_bytes_get_data (bytes, NULL), size);
  if (done == size)
    return;
  /* done > 0 only with an empty queue: this chunk is the head, partly written. */
  g_queue_push_tail (&conn->write_queue, g_bytes_ref (bytes));
  if (done > 0)
    conn->write_offset = done;
  conn->queued += size - done;
  pg_conn_write_next (conn);
}

static void
pg_conn_send (PgConn *conn, const void *data, gsize len)
{
  g_autoptr (GBytes) rest = NULL;
  gsize done;

  if (conn->closed || conn->closing || len == 0)
    return;
  if (conn->deflate != NULL && !conn->zwriting)
    {
      pg_conn_write_deflated (conn, data, len);
      return;
    }
  done = pg_conn_write_now (conn, data, len);
  if (done == len)
    return;
  /* Only what the socket did not take is copied. */
  rest = g_bytes_new ((const guint8 *) data + done, len - done);
  pg_conn_send_bytes (conn, rest);
}

/* --- corking ---------------------------------------------------------------------------- */

static void
pg_conn_cork_release (PgConn *conn)
{
  if (conn->cork_buf == NULL)
    return;
  if (pg_conn_spare_cork == NULL)
    {
      g_byte_array_set_size (conn->cork_buf, 0);
      pg_conn_spare_cork = g_steal_pointer (&conn->cork_buf);
    }
  else
    g_clear_pointer (&conn->cork_buf, g_byte_array_unref);
}

/* Hand what the cork holds to the socket (or the queue). */
static void
pg_conn_cork_flush (PgConn *conn)
{
  if (conn->cork_buf == NULL || conn->cork_buf->len == 0)
    return;
  pg_conn_send (conn, conn->cork_buf->data, conn->cork_buf->len);
  g_byte_array_set_size (conn->cork_buf, 0);
}

/* The cork buffer, taken from the spare one the last uncork left, or new. */
static void
pg_conn_cork_take_buf (PgConn *conn)
{
  if (conn->cork_buf == NULL)
    conn->cork_buf = pg_conn_spare_cork != NULL ? g_steal_pointer (&pg_conn_spare_cork)
                                                : g_byte_array_sized_new (PG_CLIENT_CORK_MAX);
}

static void
pg_conn_cork_append (PgConn *conn, const void *data, gsize len)
{
  pg_conn_cork_take_buf (conn);
  if (conn->cork_buf->len + len > PG_CLIENT_CORK_MAX)
    pg_conn_cork_flush (conn);
  if (len >= PG_CLIENT_CORK_MAX)
    pg_conn_send (conn, data, len);
  else
    g_byte_array_append (conn->cork_buf, data, (guint) len);
}

void
pg_conn_cork (PgConn *conn)
{
  conn->corked++;
}

void
pg_conn_uncork (PgConn *conn)
{
  g_return_if_fail (conn->corked > 0);
  if (--conn->corked > 0)
    return;
  pg_conn_cork_flush (conn);
  pg_conn_cork_release (conn);
  /* A waiter that counted the corked bytes may be satisfied now. */
  pg_conn_check_drain_waiters (conn);
}

/* Output built in place (issue 16: a RETR's body is dot-stuffed straight into the cork
 * buffer, not into scratch space first and then copied here). */
GByteArray *
pg_conn_cork_buffer (PgConn *conn, gsize room)
{
  g_return_val_if_fail (conn->corked > 0, NULL);
  if (conn->closed || conn->closing)
    return NULL;
  pg_conn_cork_take_buf (conn);
  if (conn->cork_buf->len + room > PG_CLIENT_CORK_MAX)
    pg_conn_cork_flush (conn);
  return conn->cork_buf;
}

void
pg_conn_write_bytes (PgConn *conn, GBytes *bytes)
{
  if (conn->closed || conn->closing)
    return;
  if (conn->corked > 0)
    pg_conn_cork_append (conn, g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
  else
    pg_conn_send_bytes (conn, bytes);
}

void
pg_conn_write (PgConn *conn, const void *data, gsize len)
{
  if (conn->closed || conn->closing || len == 0)
    return;
  if (conn->corked > 0)
    pg_conn_cork_append (conn, data, len);
  else
    pg_conn_send (conn, data, len);
}

void
pg_conn_write_printf (PgConn *conn, const char *format, ...)
{
  va_list args;
  gchar *text;
  gsize len;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  len = strlen (text);
  {
    g_autoptr (GBytes) bytes = g_bytes_new_take (text, len);
    pg_conn_write_bytes (conn, bytes);
  }
}

gsize
pg_conn_get_queued (PgConn *conn)
{
  return conn->queued + (conn->cork_buf != NULL ? conn->cork_buf->len : 0);
}

void
pg_conn_wait_drained_async (PgConn *conn, gsize low_water, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data)
{
  GTask *task = g_task_new (conn, cancellable, callback, user_data);
  PgConnDrainData *data = g_new0 (PgConnDrainData, 1);

  g_task_set_source_tag (task, pg_conn_wait_drained_async);
  data->low_water = low_water;
  g_task_set_task_data (task, data, g_free);
  conn->drain_waiters = g_list_append (conn->drain_waiters, task);
  pg_conn_check_drain_waiters (conn);
}

gboolean
pg_conn_wait_drained_finish (PgConn *conn, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, conn), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- TLS upgrade ------------------------------------------------------------------------ */

/* A handshake may begin: nothing read, waited for, written or compressed is in flight on
 * the plain stream, which the handshake takes over. */
static gboolean
pg_conn_tls_startable (PgConn *conn)
{
  return !conn->closed && !conn->tls && conn->deflate == NULL && !pg_conn_is_reading (conn)
         && !conn->write_pending && pg_conn_get_queued (conn) == 0;
}

/* Either handshake (server for STARTTLS and implicit TLS, client for the upstream) is
 * done: the TLS stream replaces the plain one. The read source was dropped before it
 * began. */
static void
pg_conn_handshake_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgConn *conn = g_task_get_source_object (task);
  GError *error = NULL;
  g_autoptr (GIOStream) tls = pg_tls_handshake_finish (result, &error);

  conn->handshaking = FALSE;
  if (tls == NULL || conn->closed)
    {
      /* What was written while it ran was meant for TLS: it never goes out in clear. */
      g_queue_clear_full (&conn->write_queue, (GDestroyNotify) g_bytes_unref);
      conn->queued = 0;
      conn->write_offset = 0;
      pg_conn_check_drain_waiters (conn);
    }
  if (tls == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  if (conn->closed)
    {
      /* Closed while the handshake ran (the socket under it is closed already). */
      g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_CLOSED, "connection closed");
      return;
    }
  g_clear_object (&conn->stream);
  conn->stream = g_steal_pointer (&tls);
  conn->tls = TRUE;
  /* What was written while it ran goes out now, over TLS. */
  pg_conn_write_next (conn);
  g_task_return_boolean (task, TRUE);
}

void
pg_conn_start_tls_async (PgConn *conn, GCancellable *cancellable, GAsyncReadyCallback callback,
                         gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (conn, cancellable, callback, user_data);

  g_task_set_source_tag (task, pg_conn_start_tls_async);
  if (!pg_conn_can_start_tls (conn) || !pg_conn_tls_startable (conn))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_TLS, "TLS cannot be started now");
      return;
    }
  /* From here the handshake reads and writes the socket, not us. */
  pg_conn_drop_read_source (conn);
  conn->handshaking = TRUE;
  pg_tls_server_handshake_async (conn->stream, conn->tls_cert,
                                 cancellable != NULL ? cancellable : conn->cancellable,
                                 pg_conn_handshake_cb, g_steal_pointer (&task));
}

gboolean
pg_conn_start_tls_finish (PgConn *conn, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, conn), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

void
pg_conn_start_client_tls_async (PgConn *conn, const char *host, guint16 port, const char *ca_file,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (conn, cancellable, callback, user_data);

  g_task_set_source_tag (task, pg_conn_start_client_tls_async);
  if (!pg_conn_tls_startable (conn))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_TLS, "TLS cannot be started now");
      return;
    }
  /* From here the handshake reads and writes the socket, not us. */
  pg_conn_drop_read_source (conn);
  conn->handshaking = TRUE;
  pg_tls_client_handshake_async (conn->stream, host, port, ca_file,
                                 cancellable != NULL ? cancellable : conn->cancellable,
                                 pg_conn_handshake_cb, g_steal_pointer (&task));
}

gboolean
pg_conn_start_client_tls_finish (PgConn *conn, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, conn), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- closing ---------------------------------------------------------------------------- */

static gboolean
pg_conn_close_deadline_cb (gpointer user_data)
{
  PgConn *conn = user_data;

  g_clear_pointer (&conn->close_source, g_source_unref);
  pg_conn_finish_close (conn);
  return G_SOURCE_REMOVE;
}

static void
pg_conn_finish_close (PgConn *conn)
{
  if (conn->closed)
    return;
  conn->closed = TRUE;
  g_cancellable_cancel (conn->cancellable);
  pg_conn_drop_read_source (conn);
  pg_conn_clear_source (&conn->read_cancel_source);
  pg_conn_fail_pending_read (conn);
  pg_conn_cancel_wait_readable (conn);
  pg_conn_stop_idle (conn);
  pg_conn_clear_source (&conn->deadline_source);
  pg_conn_clear_source (&conn->close_source);
  /* TLS sends its close_notify first, bounded by PG_TLS_CLOSE_TIMEOUT_MS; the session is
   * over for us at once either way. */
  pg_net_close_stream (conn->stream, conn->socket);
  g_queue_clear_full (&conn->write_queue, (GDestroyNotify) g_bytes_unref);
  conn->queued = 0;
  pg_conn_cork_release (conn);
  pg_conn_check_drain_waiters (conn);
  g_signal_emit (conn, pg_conn_signals[SIGNAL_CLOSED], 0);
}

void
pg_conn_close (PgConn *conn)
{
  if (conn->closed || conn->closing)
    return;
  /* What a cork holds was written before the close: it goes first. */
  pg_conn_cork_flush (conn);
  if (conn->closed)
    return;
  conn->closing = TRUE;
  if (conn->queued == 0 && !conn->write_pending)
    {
      pg_conn_finish_close (conn);
      return;
    }
  conn->close_source = g_timeout_source_new (PG_CONN_CLOSE_FLUSH_MS);
  g_source_set_callback (conn->close_source, pg_conn_close_deadline_cb, conn, NULL);
  g_source_attach (conn->close_source, g_main_context_get_thread_default ());
}

void
pg_conn_abort (PgConn *conn)
{
  pg_conn_finish_close (conn);
}

const GError *
pg_conn_get_error (PgConn *conn)
{
  return conn->error;
}

GIOStream *
pg_conn_steal_stream (PgConn *conn, GError **error)
{
  if (conn->closed || conn->closing)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_CLOSED, "connection closed");
      return NULL;
    }
  if (conn->read_pending || conn->write_pending || conn->handshaking
      || pg_conn_get_queued (conn) > 0)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_BUSY,
                           "connection busy: a read, a write or a TLS handshake is pending");
      return NULL;
    }
  if (conn->deflate != NULL)
    {
      /* The zlib state cannot go with the stream. */
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                           "a compressed connection cannot be handed over");
      return NULL;
    }
  conn->closed = TRUE;
  pg_conn_cancel_wait_readable (conn);
  pg_conn_drop_read_source (conn);
  pg_conn_clear_source (&conn->read_cancel_source);
  pg_conn_stop_idle (conn);
  pg_conn_clear_source (&conn->deadline_source);
  pg_conn_check_drain_waiters (conn);
  g_clear_object (&conn->socket);
  return g_steal_pointer (&conn->stream);
}

void
pg_conn_emit_shutdown_internal (PgConn *conn)
{
  if (!conn->closed)
    g_signal_emit (conn, pg_conn_signals[SIGNAL_SHUTDOWN], 0);
}

/* --- half-close (the IMAP relay's pump) ------------------------------------------------- */

gboolean
pg_conn_shutdown_write (PgConn *conn, GError **error)
{
  if (conn->closed || conn->socket == NULL)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "no socket to half-close");
      return FALSE;
    }
  return g_socket_shutdown (g_socket_connection_get_socket (conn->socket), FALSE, TRUE, error);
}
