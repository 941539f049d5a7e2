/* The harness of the whole-session fuzz targets: see fuzz-session.h.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz-session.h"

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-trace.h"

#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

/* Longer than any sane session over loopback takes; a hang is a bug. */
#define PG_FUZZ_SESSION_DEADLINE_US (5 * G_USEC_PER_SEC)
/* Client bytes we feed: more than the session's input buffer, less than a socketpair's
 * buffer (so the one write never blocks). */
#define PG_FUZZ_SESSION_MAX_INPUT (48 * 1024)

static const PgFuzzSessionTarget *pg_fuzz_target = NULL; /* set by the first run */
static GSocketService *pg_fuzz_service = NULL;
static guint16 pg_fuzz_port = 0;
static PgConfig *pg_fuzz_config = NULL;
static PgFuzzUpstream *pg_fuzz_upstream = NULL;
/* Bytes moved on either side, to tell when the session has gone quiet. */
static guint64 pg_fuzz_activity = 0;

static GLogWriterOutput
pg_fuzz_log_writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields,
                    gpointer user_data)
{
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
    abort ();
  /* PG_FUZZ_SESSION_LOG=1 shows the session's log when reproducing a crash. */
  if (user_data != NULL)
    return g_log_writer_standard_streams (level, fields, n_fields, NULL);
  return G_LOG_WRITER_HANDLED;
}

void
pg_fuzz_upstream_close (PgFuzzUpstream *up)
{
  GSocket *socket;
  struct linger linger = { 1, 0 };

  if (up->closed)
    return;
  up->closed = TRUE;
  /* A reset, not a FIN: no TIME_WAIT piles up over millions of runs. */
  socket = g_socket_connection_get_socket (up->conn);
  setsockopt (g_socket_get_fd (socket), SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
  g_io_stream_close (G_IO_STREAM (up->conn), NULL, NULL);
}

void
pg_fuzz_upstream_send (PgFuzzUpstream *up, const char *text, gsize len)
{
  GOutputStream *out = g_io_stream_get_output_stream (G_IO_STREAM (up->conn));

  /* Small replies into an empty loopback buffer: a blocking write returns at once. */
  if (!up->closed && !g_output_stream_write_all (out, text, len, NULL, NULL, NULL))
    pg_fuzz_upstream_close (up);
}

void
pg_fuzz_upstream_printf (PgFuzzUpstream *up, const char *format, ...)
{
  va_list args;
  g_autofree gchar *text = NULL;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  pg_fuzz_upstream_send (up, text, strlen (text));
}

static void pg_fuzz_upstream_free (PgFuzzUpstream *up);

/* ACK popgate's writes at once: with delayed ACKs a small write that waits for one (40 ms)
 * makes a busy session look idle. Linux clears TCP_QUICKACK again after a while, so it is
 * set before every read. */
static void
pg_fuzz_upstream_quickack (PgFuzzUpstream *up)
{
  g_socket_set_option (g_socket_connection_get_socket (up->conn), IPPROTO_TCP, TCP_QUICKACK, 1,
                       NULL);
}

static void
pg_fuzz_upstream_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgFuzzUpstream *up = user_data;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, NULL);
  const char *crlf;

  up->reading = FALSE;
  if (up->orphaned)
    {
      pg_fuzz_upstream_free (up);
      return;
    }
  if (n <= 0 || up->closed)
    {
      pg_fuzz_upstream_close (up);
      return;
    }
  pg_fuzz_activity += (guint64) n;
  g_string_append_len (up->input, (const char *) up->buf, n);
  while (!up->closed && (crlf = strstr (up->input->str, "\r\n")) != NULL)
    {
      g_autofree gchar *line = g_strndup (up->input->str, (gsize) (crlf - up->input->str));
      g_string_erase (up->input, 0, crlf + 2 - up->input->str);
      pg_fuzz_target->command (up, line);
    }
  if (!up->closed)
    {
      pg_fuzz_upstream_quickack (up);
      up->reading = TRUE;
      g_input_stream_read_async (G_INPUT_STREAM (source), up->buf, sizeof up->buf,
                                 G_PRIORITY_DEFAULT, NULL, pg_fuzz_upstream_read_cb, up);
    }
}

static gboolean
pg_fuzz_incoming_cb (GSocketService *service, GSocketConnection *connection, GObject *source,
                     gpointer user_data)
{
  PgFuzzUpstream *up = pg_fuzz_upstream;

  if (up == NULL || up->conn != NULL)
    return FALSE;
  up->conn = g_object_ref (connection);
  /* Without it, Nagle holds our second small write until popgate's delayed ACK (40 ms),
   * which looks like an idle session. */
  g_socket_set_option (g_socket_connection_get_socket (connection), IPPROTO_TCP, TCP_NODELAY, 1,
                       NULL);
  pg_fuzz_target->greet (up);
  pg_fuzz_upstream_quickack (up);
  up->reading = TRUE;
  g_input_stream_read_async (g_io_stream_get_input_stream (G_IO_STREAM (connection)), up->buf,
                             sizeof up->buf, G_PRIORITY_DEFAULT, NULL, pg_fuzz_upstream_read_cb,
                             up);
  return TRUE;
}

static void
pg_fuzz_init (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address = g_inet_socket_address_new (loopback, 0);
  g_autoptr (GSocketAddress) effective = NULL;
  g_autofree gchar *text = NULL;

  g_log_set_writer_func (pg_fuzz_log_writer,
                         g_getenv ("PG_FUZZ_SESSION_LOG") != NULL ? (gpointer) "show" : NULL, NULL);
  pg_log_set_level (PG_LOG_LEVEL_DEBUG);
  pg_trace_set_enabled (pg_fuzz_target->trace);
  pg_fuzz_service = g_socket_service_new ();
  if (!g_socket_listener_add_address (G_SOCKET_LISTENER (pg_fuzz_service), address,
                                      G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL, &effective,
                                      &error))
    abort ();
  pg_fuzz_port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (effective));
  g_signal_connect (pg_fuzz_service, "incoming", G_CALLBACK (pg_fuzz_incoming_cb), NULL);
  g_socket_service_start (pg_fuzz_service);
  text = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n"
                          "timeout = 1h\nconnect_timeout = 1h\n"
                          "[limits]\nauth_failure_delay = 0\npreauth_timeout = 1h\n"
                          "max_bad_commands = 1000\nmax_auth_failures = 1000\n%s",
                          pg_fuzz_port, pg_fuzz_target->config);
  pg_fuzz_config = pg_config_load_data (text, strlen (text), "fuzz", &error);
  if (pg_fuzz_config == NULL)
    abort ();
}

static void
pg_fuzz_upstream_free (PgFuzzUpstream *up)
{
  if (up->reading)
    {
      /* Closing fails the pending read; its callback frees us. */
      up->orphaned = TRUE;
      if (up->conn != NULL)
        pg_fuzz_upstream_close (up);
      return;
    }
  if (up->conn != NULL)
    {
      pg_fuzz_upstream_close (up);
      g_object_unref (up->conn);
    }
  g_string_free (up->input, TRUE);
  g_free (up->idle_tag);
  g_free (up);
}

static gint64
pg_fuzz_quiet_us (const PgFuzzSessionTarget *target)
{
  return target->quiet_us != NULL ? target->quiet_us () : PG_FUZZ_SESSION_QUIET_US;
}

static gboolean
pg_fuzz_tick_cb (gpointer user_data)
{
  return G_SOURCE_CONTINUE;
}

int
pg_fuzz_session_run (const PgFuzzSessionTarget *target, const uint8_t *data, size_t size)
{
  int fds[2];
  g_autoptr (GSocket) server_socket = NULL;
  g_autoptr (GSocketConnection) server_conn = NULL;
  PgConn *conn;
  gint64 deadline;
  guint8 sink[4096];
  GSource *tick;
  gint64 quiet_since = g_get_monotonic_time ();
  gboolean half_closed = FALSE;

  if (size < 1 || size > PG_FUZZ_SESSION_MAX_INPUT)
    return 0;
  if (pg_fuzz_service == NULL)
    {
      pg_fuzz_target = target;
      pg_fuzz_init ();
    }
  g_assert (target == pg_fuzz_target);
  pg_fuzz_upstream = g_new0 (PgFuzzUpstream, 1);
  pg_fuzz_upstream->mode = data[0] % target->n_modes;
  pg_fuzz_upstream->input = g_string_new (NULL);

  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    abort ();
  {
    int bufsize = 256 * 1024;
    setsockopt (fds[1], SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    setsockopt (fds[0], SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
  }
  server_socket = g_socket_new_from_fd (fds[0], NULL);
  if (server_socket == NULL)
    abort ();
  server_conn = g_socket_connection_factory_create_connection (server_socket);
  conn = pg_conn_new (target->frontend, pg_fuzz_config, G_IO_STREAM (server_conn));
  target->start (conn, NULL);
  g_object_unref (conn); /* the session holds the connection */

  /* The client's whole stream at once. Once the session has gone quiet (everything
   * answered, popgate waits for more) the client half-closes: the session ends when it
   * reads EOF, or earlier at QUIT/LOGOUT or at a limit. A close right away would end every
   * session at its first upstream command (a client that goes away gets nothing). */
  if (size > 1 && write (fds[1], data + 1, size - 1) != (ssize_t) (size - 1))
    abort ();

  deadline = g_get_monotonic_time () + PG_FUZZ_SESSION_DEADLINE_US;
  /* Wakes a blocking iteration now and then, so the client side is drained and the
   * deadline checked even when popgate waits for nothing we could see. */
  tick = g_timeout_source_new (1);
  g_source_set_callback (tick, pg_fuzz_tick_cb, NULL, NULL);
  g_source_attach (tick, NULL);
  while (target->n_live () > 0)
    {
      gssize n;

      /* Read what popgate says so its writes never stall. */
      while ((n = recv (fds[1], sink, sizeof sink, MSG_DONTWAIT)) > 0)
        pg_fuzz_activity += (guint64) n;
      if (g_get_monotonic_time () > deadline)
        abort (); /* a hang: the session neither ended nor waits on a timer */
      if (g_main_context_iteration (NULL, FALSE))
        {
          quiet_since = g_get_monotonic_time ();
          continue;
        }
      /* Nothing ready. Some steps finish in GIO's worker threads (the upstream connect),
       * so "idle" means nothing happened for the target's quiet time: then the client
       * half-closes, or if it has already, we wait for the next tick. */
      if (!half_closed && g_get_monotonic_time () - quiet_since > pg_fuzz_quiet_us (target))
        {
          shutdown (fds[1], SHUT_WR);
          half_closed = TRUE;
          continue;
        }
      g_main_context_iteration (NULL, TRUE);
    }
  g_source_destroy (tick);
  g_source_unref (tick);
  close (fds[1]);
  /* Let the upstream side see popgate's close before the next run. */
  while (g_main_context_iteration (NULL, FALSE))
    ;
  pg_fuzz_upstream_free (pg_fuzz_upstream);
  pg_fuzz_upstream = NULL;
  while (g_main_context_iteration (NULL, FALSE))
    ;
  return 0;
}