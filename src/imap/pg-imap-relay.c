/* popgate — the IMAP relay after login: a pump between the client's PgConn and the
 * upstream's (see pg-imap-relay.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-imap"

#include "pg-imap-relay.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

struct _PgImapRelay
{
  GObject parent_instance;

  PgConn *client;            /* owned */
  PgConn *upstream;          /* owned */
  GCancellable *cancellable; /* owned: the session's */
  guint64 id;                /* the session id, for log lines */
  const PgImapRelayFuncs *funcs;
  gpointer user_data; /* unowned: the session, until stop */
  gboolean stopped;   /* pg_imap_relay_stop() */
  gboolean over;      /* `ended` was called */

  PgImapFilter *filter;     /* owned: both streams' scanners, the caps filter */
  guint8 *client_buf;       /* owned, PG_IMAP_RELAY_CHUNK: client reads */
  PgLineReader *reader;     /* owned: what was pipelined behind the login, until taken */
  gsize client_hold_offset; /* client_buf[offset..+len) kept for the next read */
  gsize client_hold_len;
  gboolean reading;          /* a client read is pending */
  gboolean client_waiting;   /* ...as a pg_conn_wait_readable() on the client */
  gboolean up_draining;      /* the client waits for the upstream's queue to drain */
  gboolean client_eof;       /* the client half-closed */
  gboolean up_shut;          /* ...and that half-close was passed on (or is on its way) */
  gboolean up_waiting;       /* a pg_conn_wait_readable() on the upstream is armed */
  gboolean client_draining;  /* the upstream waits for the client's queue to drain */
  gboolean compress_pending; /* COMPRESS answered OK: start once the OK is out */
  GBytes *compress_input;    /* owned: compressed octets that came behind COMPRESS */
};

G_DEFINE_FINAL_TYPE (PgImapRelay, pg_imap_relay, G_TYPE_OBJECT)

static void pg_imap_relay_client_read (PgImapRelay *relay);
static void pg_imap_relay_up_resume (PgImapRelay *relay);

/* Upstream → client runs on readiness: one wakeup takes what arrived in as few reads as it
 * fits in. Every relay reads into this one buffer (one thread, and the buffer is never
 * used across a return to the main loop): what the client's socket does not take at once
 * is copied into the client's queue. */
static guint8 pg_imap_relay_up_buf[PG_IMAP_RELAY_UP_CHUNK];

static void
pg_imap_relay_dispose (GObject *object)
{
  PgImapRelay *self = PG_IMAP_RELAY (object);

  pg_imap_relay_stop (self);
  G_OBJECT_CLASS (pg_imap_relay_parent_class)->dispose (object);
}

static void
pg_imap_relay_finalize (GObject *object)
{
  PgImapRelay *self = PG_IMAP_RELAY (object);

  g_clear_pointer (&self->filter, pg_imap_filter_free);
  g_clear_pointer (&self->reader, pg_line_reader_free);
  /* It held the login's literals once. */
  if (self->client_buf != NULL)
    pg_secret_wipe (self->client_buf, PG_IMAP_RELAY_CHUNK);
  g_free (self->client_buf);
  g_clear_pointer (&self->compress_input, g_bytes_unref);
  g_clear_object (&self->cancellable);
  g_clear_object (&self->upstream);
  g_clear_object (&self->client);
  G_OBJECT_CLASS (pg_imap_relay_parent_class)->finalize (object);
}

static void
pg_imap_relay_class_init (PgImapRelayClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pg_imap_relay_dispose;
  object_class->finalize = pg_imap_relay_finalize;
}

static void
pg_imap_relay_init (PgImapRelay *self)
{
}

/* Nothing more may happen: no hook, no read, no write. */
static gboolean
pg_imap_relay_is_over (PgImapRelay *self)
{
  return self->stopped || self->over || pg_conn_is_closed (self->client);
}

/* The client's readiness wait holds no reference: it goes when the relay is over. */
static void
pg_imap_relay_cancel_client_wait (PgImapRelay *self)
{
  if (!self->client_waiting)
    return;
  pg_conn_cancel_wait_readable (self->client);
  self->client_waiting = FALSE;
  self->reading = FALSE;
}

static void
pg_imap_relay_end (PgImapRelay *self, PgImapRelayEnd end)
{
  if (pg_imap_relay_is_over (self))
    return;
  self->over = TRUE;
  pg_conn_cancel_wait_readable (self->upstream);
  self->up_waiting = FALSE;
  pg_imap_relay_cancel_client_wait (self);
  self->funcs->ended (self->user_data, end);
}

/* --- the filter's hooks ------------------------------------------------------------------ */

static void pg_imap_relay_flush (PgImapRelay *self);

static void
pg_imap_relay_command_cb (gpointer user_data, const PgImapRelayCommand *cmd)
{
  PgImapRelay *self = user_data;

  self->funcs->command (self->user_data, cmd);
}

static gboolean
pg_imap_relay_withheld_cb (gpointer user_data, PgImapCapsCommand what,
                           const PgImapRelayCommand *cmd)
{
  PgImapRelay *self = user_data;

  /* On TRUE (COMPRESS's OK): what follows in this read is compressed already, and the
   * compression starts once the OK is out (relay_client_data). */
  if (self->funcs->withheld (self->user_data, what, cmd))
    return TRUE;
  pg_imap_relay_flush (self);
  return FALSE;
}

static void
pg_imap_relay_response_cb (gpointer user_data, const PgImapRelayCommand *resp)
{
  PgImapRelay *self = user_data;

  self->funcs->response (self->user_data, resp);
}

static void
pg_imap_relay_to_client_cb (gpointer user_data, const guint8 *data, gsize len)
{
  PgImapRelay *self = user_data;

  self->funcs->to_client (self->user_data, len);
  pg_conn_write (self->client, data, len);
}

PgImapRelay *
pg_imap_relay_new (PgConn *client, PgConn *upstream, GCancellable *cancellable,
                   const char *own_capabilities, const PgImapRelayFuncs *funcs, gpointer user_data)
{
  static const PgImapFilterFuncs filter_funcs = {
    .command = pg_imap_relay_command_cb,
    .withheld = pg_imap_relay_withheld_cb,
    .response = pg_imap_relay_response_cb,
    .to_client = pg_imap_relay_to_client_cb,
  };
  PgImapRelay *self = g_object_new (PG_TYPE_IMAP_RELAY, NULL);

  self->client = g_object_ref (client);
  self->upstream = g_object_ref (upstream);
  self->cancellable = g_object_ref (cancellable);
  self->id = pg_conn_get_id (client);
  self->funcs = funcs;
  self->user_data = user_data;
  self->filter = pg_imap_filter_new (&filter_funcs, self, own_capabilities);
  return self;
}

/* --- COMPRESS ---------------------------------------------------------------------------- */

gboolean
pg_imap_relay_can_compress (PgImapRelay *self)
{
  return !pg_conn_is_compressed (self->client) && !self->compress_pending;
}

void
pg_imap_relay_compress (PgImapRelay *self)
{
  self->compress_pending = TRUE;
}

/* popgate's own lines during the relay go out between the upstream's responses, never
 * inside one (a literal, a held capability line). Once COMPRESS's OK is out, the client
 * stream is compressed from the next octet on. */
static void
pg_imap_relay_flush (PgImapRelay *self)
{
  g_autoptr (GError) error = NULL;
  gsize len = 0;
  const void *input = NULL;

  if (pg_imap_relay_is_over (self) || !pg_imap_filter_at_response_boundary (self->filter))
    return;
  self->funcs->flush (self->user_data);
  /* No client read may be pending, nor be about to start: the first read after the
   * switch goes through the inflater (relay_client_read comes back here). */
  if (!self->compress_pending || self->reading || self->up_draining || pg_imap_relay_is_over (self))
    return;
  self->compress_pending = FALSE;
  if (self->compress_input != NULL)
    input = g_bytes_get_data (self->compress_input, &len);
  if (!pg_conn_start_compress (self->client, input, len, &error))
    {
      pg_imap_relay_end (self, PG_IMAP_RELAY_END_COMPRESS_FAILED);
      return;
    }
  g_clear_pointer (&self->compress_input, g_bytes_unref);
  pg_session_info (self->id, "COMPRESS=DEFLATE active");
  pg_imap_relay_client_read (self);
}

/* --- client → upstream --------------------------------------------------------------------- */

static void
pg_imap_relay_up_shut (PgImapRelay *self)
{
  g_autoptr (GError) error = NULL;

  if (!pg_conn_shutdown_write (self->upstream, &error))
    pg_imap_relay_end (self, PG_IMAP_RELAY_END_HALF_CLOSE);
}

static void
pg_imap_relay_up_flushed_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapRelay) self = user_data;

  if (!pg_conn_wait_drained_finish (PG_CONN (source), result, NULL) || pg_imap_relay_is_over (self))
    return;
  pg_imap_relay_up_shut (self);
}

/* The client half-closed: what it sent goes upstream, then the half-close (the server
 * answers those commands, then closes, as it would for a direct client), and the relay
 * keeps relaying its replies until it does. */
static void
pg_imap_relay_client_eof (PgImapRelay *self)
{
  if (self->up_shut)
    return;
  self->up_shut = TRUE;
  if (pg_conn_get_queued (self->upstream) == 0)
    {
      pg_imap_relay_up_shut (self);
      return;
    }
  pg_conn_wait_drained_async (self->upstream, 0, self->cancellable, pg_imap_relay_up_flushed_cb,
                              g_object_ref (self));
}

static void
pg_imap_relay_up_drained_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapRelay) self = user_data;

  self->up_draining = FALSE;
  if (!pg_conn_wait_drained_finish (PG_CONN (source), result, NULL) || pg_imap_relay_is_over (self))
    return;
  pg_imap_relay_client_read (self);
}

/* client_buf[0..n) (after the held octets) came from the client: observe it and send it
 * on. The client is read again at once unless the upstream's queue is past the high
 * water (back-pressure: a client sending faster than the upstream takes is not read). */
static void
pg_imap_relay_client_data (PgImapRelay *self, gsize n)
{
  gboolean stopped = FALSE;

  /* Withheld commands are cut out; a command start whose word is not known yet is kept
   * back for the next read. */
  n = pg_imap_filter_client (self->filter, self->client_buf, self->client_hold_len + n,
                             &self->client_hold_offset, &self->client_hold_len, &stopped);
  if (stopped)
    {
      /* After COMPRESS: the rest is compressed input for the connection to inflate. */
      self->compress_input
          = g_bytes_new (self->client_buf + self->client_hold_offset, self->client_hold_len);
      self->client_hold_len = 0;
      self->client_hold_offset = 0;
    }
  if (pg_imap_relay_is_over (self))
    return;
  /* The upstream's queue copies what its socket does not take: client_buf is free again. */
  pg_conn_write (self->upstream, self->client_buf, n);
  if (pg_conn_get_queued (self->upstream) > PG_CLIENT_OUTPUT_HIGH_WATER)
    {
      self->up_draining = TRUE;
      pg_conn_wait_drained_async (self->upstream, PG_CLIENT_OUTPUT_HIGH_WATER, self->cancellable,
                                  pg_imap_relay_up_drained_cb, g_object_ref (self));
      return;
    }
  pg_imap_relay_client_read (self);
}

/* A client read is over: n octets at client_buf + client_hold_len, 0 at EOF, < 0 on error
 * (`error` set). */
static void
pg_imap_relay_client_got (PgImapRelay *self, gssize n, GError *error)
{
  self->reading = FALSE;
  if (pg_imap_relay_is_over (self))
    return;
  if (n == 0)
    {
      /* EOF: closed or half-closed (shutdown(SHUT_WR)) after its last command. */
      self->client_eof = TRUE;
      pg_imap_relay_client_eof (self);
      return;
    }
  if (n < 0)
    {
      pg_session_debug (self->id, "client read failed: %s", error->message);
      pg_imap_relay_end (self, PG_IMAP_RELAY_END_CLIENT_ERROR);
      return;
    }
  self->funcs->from_client (self->user_data, (gsize) n);
  pg_imap_relay_client_data (self, (gsize) n);
}

/* The compressed path: the inflater reads on GIO's async read. */
static void
pg_imap_relay_client_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapRelay) self = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = pg_conn_read_finish (self->client, result, &error);

  pg_imap_relay_client_got (self, n, error);
}

/* The plain (or TLS) path: readiness, then one non-blocking read, with no task, source or
 * timer made per round trip (the readable source stays from one wait to the next). */
static void
pg_imap_relay_client_readable_cb (PgConn *client, gpointer user_data)
{
  g_autoptr (PgImapRelay) self = g_object_ref (PG_IMAP_RELAY (user_data));
  g_autoptr (GError) error = NULL;
  gssize n;

  self->client_waiting = FALSE;
  if (pg_imap_relay_is_over (self))
    {
      self->reading = FALSE;
      return;
    }
  n = pg_conn_read_nonblocking (client, self->client_buf + self->client_hold_len,
                                PG_IMAP_RELAY_CHUNK - self->client_hold_len, &error);
  if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    {
      /* Readable, but nothing whole yet (a TLS record cut short), or a stream that cannot
       * be polled: this one read waits the asynchronous way (never a busy loop). */
      pg_conn_read_async (client, self->client_buf + self->client_hold_len,
                          PG_IMAP_RELAY_CHUNK - self->client_hold_len, self->cancellable,
                          pg_imap_relay_client_read_cb, g_object_ref (self));
      return;
    }
  pg_imap_relay_client_got (self, n, error);
}

static void
pg_imap_relay_client_read (PgImapRelay *self)
{
  if (self->reading || self->up_draining || pg_imap_relay_is_over (self))
    return;
  if (self->compress_pending)
    {
      /* COMPRESS's OK out first, then the switch, then this read (relay_flush). */
      pg_imap_relay_flush (self);
      return;
    }
  if (self->client_hold_len > 0 && self->client_hold_offset > 0)
    memmove (self->client_buf, self->client_buf + self->client_hold_offset, self->client_hold_len);
  self->client_hold_offset = 0;
  if (self->reader != NULL)
    {
      /* The rest of what was pipelined behind the login, before any new read. */
      const guint8 *pipelined = NULL;
      gsize n = pg_line_reader_take_raw (self->reader, PG_IMAP_RELAY_CHUNK - self->client_hold_len,
                                         &pipelined);

      if (n > 0)
        {
          memcpy (self->client_buf + self->client_hold_len, pipelined, n);
          pg_imap_relay_client_data (self, n);
          return;
        }
      g_clear_pointer (&self->reader, pg_line_reader_free);
    }
  if (self->client_eof)
    {
      /* The half-close came before the login completed: pass it on now. */
      pg_imap_relay_client_eof (self);
      return;
    }
  self->reading = TRUE;
  if (pg_conn_is_compressed (self->client))
    {
      pg_conn_read_async (self->client, self->client_buf + self->client_hold_len,
                          PG_IMAP_RELAY_CHUNK - self->client_hold_len, self->cancellable,
                          pg_imap_relay_client_read_cb, g_object_ref (self));
      return;
    }
  self->client_waiting = TRUE;
  pg_conn_wait_readable (self->client, pg_imap_relay_client_readable_cb, self);
}

/* --- upstream → client --------------------------------------------------------------------- */

/* Upstream bytes for the client: observe, filter capability lists, send. */
static void
pg_imap_relay_up_data (PgImapRelay *self, const guint8 *data, gsize n)
{
  g_autoptr (GError) error = NULL;

  if (!pg_imap_filter_upstream (self->filter, data, n, &error))
    {
      pg_session_warning (self->id, "upstream: %s", error->message);
      pg_imap_relay_end (self, PG_IMAP_RELAY_END_UPSTREAM_INVALID);
      return;
    }
  pg_imap_relay_flush (self);
}

static void
pg_imap_relay_client_drained_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapRelay) self = user_data;

  self->client_draining = FALSE;
  if (!pg_conn_wait_drained_finish (PG_CONN (source), result, NULL) || pg_imap_relay_is_over (self))
    return;
  pg_imap_relay_up_resume (self);
}

/* Read what the upstream has, up to PG_IMAP_RELAY_UP_BURST chunks (then let other sessions
 * run; readiness is level-triggered, so we come back at once). Returns TRUE when the relay
 * should wait for the upstream to be readable again, FALSE when it ended or waits for the
 * client's queue to drain. */
static gboolean
pg_imap_relay_up_pump (PgImapRelay *self)
{
  for (guint i = 0; i < PG_IMAP_RELAY_UP_BURST; i++)
    {
      g_autoptr (GError) error = NULL;
      gssize n;

      if (pg_imap_relay_is_over (self))
        return FALSE;
      if (pg_conn_get_queued (self->client) > PG_CLIENT_OUTPUT_HIGH_WATER)
        {
          self->client_draining = TRUE;
          pg_conn_wait_drained_async (self->client, PG_CLIENT_OUTPUT_HIGH_WATER, self->cancellable,
                                      pg_imap_relay_client_drained_cb, g_object_ref (self));
          return FALSE;
        }
      n = pg_conn_read_nonblocking (self->upstream, pg_imap_relay_up_buf,
                                    sizeof pg_imap_relay_up_buf, &error);
      if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        return TRUE;
      if (n == 0)
        {
          pg_imap_relay_end (self, PG_IMAP_RELAY_END_UPSTREAM_CLOSED);
          return FALSE;
        }
      if (n < 0)
        {
          pg_session_info (self->id, "upstream read failed: %s", error->message);
          pg_imap_relay_end (self, PG_IMAP_RELAY_END_UPSTREAM_READ);
          return FALSE;
        }
      pg_imap_relay_up_data (self, pg_imap_relay_up_buf, (gsize) n);
      /* A short read took all there was: wait for readiness rather than try a read that
       * would only say "would block" (one syscall per round trip). Readiness is
       * level-triggered and sees data TLS holds decrypted, so nothing waits unseen. */
      if ((gsize) n < sizeof pg_imap_relay_up_buf)
        return TRUE;
    }
  return TRUE;
}

static void
pg_imap_relay_up_readable_cb (PgConn *upstream, gpointer user_data)
{
  /* The pump may end the session (and with it drop the relay): hold it while it runs. */
  g_autoptr (PgImapRelay) self = g_object_ref (PG_IMAP_RELAY (user_data));

  /* The wait is one-shot: armed again while the pump wants more. */
  self->up_waiting = FALSE;
  if (pg_imap_relay_up_pump (self) && !pg_imap_relay_is_over (self))
    {
      self->up_waiting = TRUE;
      pg_conn_wait_readable (self->upstream, pg_imap_relay_up_readable_cb, self);
    }
}

/* Read the upstream now and, when it has nothing more, wait until it is readable. */
static void
pg_imap_relay_up_resume (PgImapRelay *self)
{
  if (self->up_waiting || self->client_draining || pg_imap_relay_is_over (self))
    return;
  if (!pg_imap_relay_up_pump (self))
    return;
  /* PgConn keeps its readiness source from one wait to the next (no source made per
   * response; see pg_net_readable_source_new). */
  self->up_waiting = TRUE;
  pg_conn_wait_readable (self->upstream, pg_imap_relay_up_readable_cb, self);
}

/* The upstream connection closes by itself only when a write to it failed (a read error
 * or EOF is the pump's to see). */
static void
pg_imap_relay_up_closed_cb (PgConn *upstream, gpointer user_data)
{
  PgImapRelay *self = user_data;

  if (pg_imap_relay_is_over (self))
    return;
  pg_session_info (self->id, "upstream write failed");
  pg_imap_relay_end (self, PG_IMAP_RELAY_END_UPSTREAM_WRITE);
}

/* --- start and stop ---------------------------------------------------------------------- */

void
pg_imap_relay_start (PgImapRelay *self, guint8 *client_buf, PgLineReader *pipelined,
                     GBytes *up_buffered, gboolean client_eof)
{
  g_return_if_fail (self->client_buf == NULL);

  self->client_buf = client_buf;
  self->reader = pipelined;
  self->client_eof = client_eof;
  g_signal_connect (self->upstream, "closed", G_CALLBACK (pg_imap_relay_up_closed_cb), self);

  /* What the client pipelined behind its login goes upstream first: up to
   * PG_IMAP_MAX_PREAUTH_LINE octets, one relay chunk at a time (relay_client_read takes
   * the rest from the reader before it reads the client again). */
  pg_imap_relay_client_read (self);

  if (up_buffered != NULL && g_bytes_get_size (up_buffered) > 0 && !pg_imap_relay_is_over (self))
    pg_imap_relay_up_data (self, g_bytes_get_data (up_buffered, NULL),
                           g_bytes_get_size (up_buffered));
  pg_imap_relay_up_resume (self);
}

void
pg_imap_relay_stop (PgImapRelay *self)
{
  if (self->stopped)
    return;
  self->stopped = TRUE;
  self->user_data = NULL;
  g_signal_handlers_disconnect_by_data (self->upstream, self);
  pg_conn_cancel_wait_readable (self->upstream);
  pg_imap_relay_cancel_client_wait (self);
  self->up_waiting = FALSE;
  /* With TLS a close_notify first, bounded (pg_net_close_stream). */
  pg_conn_abort (self->upstream);
}
