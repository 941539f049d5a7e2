/* Fuzz target: a whole IMAP front-end session. The input is what a client sends, over a
 * socketpair into the real PgImapSession (in-process PgConn), against a small scripted IMAP
 * upstream on 127.0.0.1 in the same main loop: pre-auth commands answered by popgate, the
 * login upstream (ID + AUTHENTICATE PLAIN), then the byte relay with its command and
 * response scanners. The first input byte picks how the upstream behaves (normal, refuses
 * the login, drops after the login, answers with malformed and unsolicited responses), the
 * rest is the client's byte stream, sent at once and then half-closed.
 *
 * After fuzz-pop3-session.c, and deterministic and bounded the same way: no timers fire
 * (auth delay 0, long timeouts), the session is driven until it has ended or gone quiet,
 * and a wall-clock guard turns a hang into a crash. Logging and the audit trace run (the
 * redaction paths are fuzzed too) into a writer that drops the lines but aborts on a
 * critical.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-net-private.h"
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-imap.h"
#include "popgate/pg-trace.h"

#include <gio/gio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Longer than any sane session over loopback takes; a hang is a bug. */
#define PG_FUZZ_SESSION_DEADLINE_US (5 * G_USEC_PER_SEC)
/* How long nothing may happen before the session counts as idle. */
#define PG_FUZZ_SESSION_QUIET_US (5 * 1000)
/* The same once the session relays: popgate's upstream socket has Nagle on, so a small
 * relayed write waits for the upstream's ACK (sent at once: TCP_QUICKACK below). */
#define PG_FUZZ_SESSION_RELAY_QUIET_US (10 * 1000)
/* Client bytes we feed: more than the session's input buffer, less than a socketpair's
 * buffer (so the one write never blocks). */
#define PG_FUZZ_SESSION_MAX_INPUT (48 * 1024)

typedef enum
{
  PG_FUZZ_UPSTREAM_NORMAL,
  PG_FUZZ_UPSTREAM_LOGIN_NO,
  PG_FUZZ_UPSTREAM_DROP_AFTER_LOGIN,
  PG_FUZZ_UPSTREAM_GARBAGE,
  PG_FUZZ_UPSTREAM_COUNT,
} PgFuzzUpstreamMode;

static const char pg_fuzz_message[] = "Subject: one\r\n\r\nHello.\r\n";

typedef struct
{
  PgFuzzUpstreamMode mode;
  GSocketConnection *conn; /* owned */
  GString *input;          /* owned */
  guint8 buf[4096];
  gboolean closed;
  gboolean logged_in;
  gchar *idle_tag; /* owned: the IDLE being answered */
  gboolean reading;  /* a read is pending: its callback owns the struct once orphaned */
  gboolean orphaned; /* the run is over */
} PgFuzzUpstream;

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

static void
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

static void
pg_fuzz_upstream_send (PgFuzzUpstream *up, const char *text, gsize len)
{
  GOutputStream *out = g_io_stream_get_output_stream (G_IO_STREAM (up->conn));

  /* Small replies into an empty loopback buffer: a blocking write returns at once. */
  if (!up->closed && !g_output_stream_write_all (out, text, len, NULL, NULL, NULL))
    pg_fuzz_upstream_close (up);
}

static void
pg_fuzz_upstream_printf (PgFuzzUpstream *up, const char *format, ...) G_GNUC_PRINTF (2, 3);

static void
pg_fuzz_upstream_printf (PgFuzzUpstream *up, const char *format, ...)
{
  va_list args;
  g_autofree gchar *text = NULL;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  pg_fuzz_upstream_send (up, text, strlen (text));
}

/* Malformed and unsolicited responses for the relay's response scanner. */
static const char *const pg_fuzz_garbage[] = {
  "* 1 FETCH (BODY[] {99999999999999999999}\r\n",
  "* OK [ALERT \xff\x00 bad\r\n",
  "+ \r\n",
  "* BYE going\r\n",
  "zz OK not yours\r\n",
  "* 2 FETCH (BODY[] {3}\r\nab",
  "\r\n\r\n)\r\n",
};

/* One line from popgate: before login its ID and AUTHENTICATE, after it whatever the
 * client's commands were (literal octets arrive as lines too and are answered as such). */
static void
pg_fuzz_upstream_command (PgFuzzUpstream *up, const char *line)
{
  g_auto (GStrv) words = g_strsplit (line, " ", 4);
  const char *tag = words[0];
  const char *verb = words[0] != NULL ? words[1] : NULL;

  if (up->idle_tag != NULL && g_ascii_strcasecmp (line, "DONE") == 0)
    {
      g_autofree gchar *idle_tag = g_steal_pointer (&up->idle_tag);
      pg_fuzz_upstream_printf (up, "%s OK idle done\r\n", idle_tag);
      return;
    }
  if (tag == NULL || verb == NULL)
    return;
  if (!up->logged_in)
    {
      if (g_ascii_strcasecmp (verb, "AUTHENTICATE") == 0 || g_ascii_strcasecmp (verb, "LOGIN") == 0)
        {
          if (up->mode == PG_FUZZ_UPSTREAM_LOGIN_NO)
            {
              pg_fuzz_upstream_printf (up, "%s NO [AUTHENTICATIONFAILED] no\r\n", tag);
              return;
            }
          up->logged_in = TRUE;
          /* Dovecot sends an unsolicited line with the OK at times: the relay gets it. */
          pg_fuzz_upstream_printf (up, "%s OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE "
                                       "COMPRESS=DEFLATE UNAUTHENTICATE STARTTLS] in\r\n"
                                       "* 3 EXISTS\r\n", tag);
          return;
        }
      pg_fuzz_upstream_printf (up, "%s OK done\r\n", tag);
      return;
    }
  if (up->mode == PG_FUZZ_UPSTREAM_DROP_AFTER_LOGIN)
    {
      pg_fuzz_upstream_close (up);
      return;
    }
  if (up->mode == PG_FUZZ_UPSTREAM_GARBAGE)
    {
      const char *junk = pg_fuzz_garbage[strlen (line) % G_N_ELEMENTS (pg_fuzz_garbage)];
      pg_fuzz_upstream_send (up, junk, strlen (junk));
    }
  if (g_ascii_strcasecmp (verb, "SELECT") == 0 || g_ascii_strcasecmp (verb, "EXAMINE") == 0)
    pg_fuzz_upstream_printf (up, "* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n"
                                 "%s OK [%s] s\r\n", tag,
                             g_ascii_strcasecmp (verb, "EXAMINE") == 0 ? "READ-ONLY"
                                                                        : "READ-WRITE");
  else if (g_ascii_strcasecmp (verb, "IDLE") == 0)
    {
      g_free (up->idle_tag);
      up->idle_tag = g_strdup (tag);
      pg_fuzz_upstream_printf (up, "+ idling\r\n* 4 EXISTS\r\n");
    }
  else if (g_ascii_strcasecmp (verb, "FETCH") == 0 || g_ascii_strcasecmp (verb, "UID") == 0)
    pg_fuzz_upstream_printf (up, "* 1 FETCH (UID 11 BODY[] {%" G_GSIZE_FORMAT "}\r\n%s)\r\n"
                                 "%s OK f\r\n",
                             strlen (pg_fuzz_message), pg_fuzz_message, tag);
  else if (g_ascii_strcasecmp (verb, "LOGOUT") == 0)
    {
      pg_fuzz_upstream_printf (up, "* BYE b\r\n%s OK l\r\n", tag);
      /* A FIN after the replies (a reset could discard them unread); popgate closes its
       * side first, so the reset at the end of the run leaves no TIME_WAIT. */
      g_socket_shutdown (g_socket_connection_get_socket (up->conn), FALSE, TRUE, NULL);
    }
  else if (g_ascii_strcasecmp (verb, "CLOSE") == 0 && strlen (tag) % 2 == 0)
    pg_fuzz_upstream_printf (up, "%s NO cannot\r\n", tag);
  else
    pg_fuzz_upstream_printf (up, "%s OK done\r\n", tag);
}

static void pg_fuzz_upstream_free (PgFuzzUpstream *up);

/* popgate writes to its upstream with Nagle on: without an immediate ACK each second small
 * write (AUTHENTICATE after ID, relayed commands) waits for the delayed ACK, 40 ms. Linux
 * clears TCP_QUICKACK again after a while, so it is set before every read. */
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
      pg_fuzz_upstream_command (up, line);
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
  pg_fuzz_upstream_printf (up, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] hi\r\n");
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
                         g_getenv ("PG_FUZZ_SESSION_LOG") != NULL ? (gpointer) "show" : NULL,
                         NULL);
  pg_log_set_level (PG_LOG_LEVEL_DEBUG);
  pg_trace_set_enabled (TRUE);
  pg_fuzz_service = g_socket_service_new ();
  if (!g_socket_listener_add_address (G_SOCKET_LISTENER (pg_fuzz_service), address,
                                      G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL,
                                      &effective, &error))
    abort ();
  pg_fuzz_port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (effective));
  g_signal_connect (pg_fuzz_service, "incoming", G_CALLBACK (pg_fuzz_incoming_cb), NULL);
  g_socket_service_start (pg_fuzz_service);
  text = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n"
                          "timeout = 1h\nconnect_timeout = 1h\n"
                          "[imap]\nlisten = 127.0.0.1:1\nallow_plaintext_auth = true\n"
                          "idle_timeout = 1h\n"
                          "[limits]\nauth_failure_delay = 0\npreauth_timeout = 1h\n"
                          "max_bad_commands = 1000\nmax_auth_failures = 1000\n",
                          pg_fuzz_port);
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

static void
pg_fuzz_session_state_cb (const PgImapSessionInfo *info, gpointer user_data)
{
  PgImapState *out_state = user_data;

  *out_state = info->state;
}

/* How long the session must have been quiet before the client may half-close: never
 * while it logs in upstream (that takes GIO worker threads and the upstream's replies). */
static gint64
pg_fuzz_session_quiet_us (void)
{
  PgImapState state = PG_IMAP_STATE_CLOSED;

  pg_imap_session_foreach (pg_fuzz_session_state_cb, &state);
  switch (state)
    {
    case PG_IMAP_STATE_AUTHENTICATING:
      return G_MAXINT64;
    case PG_IMAP_STATE_RELAY:
      return PG_FUZZ_SESSION_RELAY_QUIET_US;
    case PG_IMAP_STATE_PREAUTH:
    case PG_IMAP_STATE_CLOSED:
    case PG_IMAP_STATE_COUNT:
      break;
    }
  return PG_FUZZ_SESSION_QUIET_US;
}

static gboolean
pg_fuzz_tick_cb (gpointer user_data)
{
  return G_SOURCE_CONTINUE;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
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
    pg_fuzz_init ();
  pg_fuzz_upstream = g_new0 (PgFuzzUpstream, 1);
  pg_fuzz_upstream->mode = (PgFuzzUpstreamMode) (data[0] % PG_FUZZ_UPSTREAM_COUNT);
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
  conn = pg_conn_new_internal (1, PG_FRONTEND_IMAP, pg_fuzz_config, server_conn,
                               G_IO_STREAM (server_conn), FALSE, NULL);
  pg_imap_session_start (conn, NULL);
  g_object_unref (conn); /* the session holds the connection */

  /* The client's whole stream at once. Once the session has gone quiet (everything
   * answered, popgate waits for more) the client half-closes: the session ends when it
   * reads EOF, or earlier at LOGOUT or at a limit. A close right away would end every
   * session at its first upstream command (a client that goes away gets nothing). */
  if (size > 1 && write (fds[1], data + 1, size - 1) != (ssize_t) (size - 1))
    abort ();

  deadline = g_get_monotonic_time () + PG_FUZZ_SESSION_DEADLINE_US;
  /* Wakes a blocking iteration now and then, so the client side is drained and the
   * deadline checked even when popgate waits for nothing we could see. */
  tick = g_timeout_source_new (1);
  g_source_set_callback (tick, pg_fuzz_tick_cb, NULL, NULL);
  g_source_attach (tick, NULL);
  while (pg_imap_session_get_n_live () > 0)
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
       * so "idle" means nothing happened for pg_fuzz_session_quiet_us(): then the client
       * half-closes, or if it has already, we wait for the next tick. */
      if (!half_closed && g_get_monotonic_time () - quiet_since > pg_fuzz_session_quiet_us ())
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
