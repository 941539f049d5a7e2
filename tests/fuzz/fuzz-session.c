/* The harness of the whole-session fuzz targets: see fuzz-session.h.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz-session.h"

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-trace.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Longer than any sane session over loopback takes; a hang is a bug. */
#define PG_FUZZ_SESSION_DEADLINE_US (5 * G_USEC_PER_SEC)
/* Client bytes we feed: more than the session's input buffer, less than a socketpair's
 * buffer (so the one write never blocks). */
#define PG_FUZZ_SESSION_MAX_INPUT (48 * 1024)

static const PgFuzzSessionTarget *pg_fuzz_target = NULL; /* set by the first run */
static PgTestPeer *pg_fuzz_peer = NULL;                  /* lives for the process */
static PgConfig *pg_fuzz_config = NULL;

/* The whole script: the target answers from the first byte on. */
static const PgTestPeerStep pg_fuzz_script[] = {
  { PG_TEST_PEER_RESPOND, NULL, 0 },
};

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

/* The peer's responder: the greeting (line NULL), then each line from popgate. */
static void
pg_fuzz_respond_cb (PgTestPeer *peer, const char *line, gpointer user_data)
{
  PgFuzzUpstream *up = user_data;

  if (line == NULL)
    pg_fuzz_target->greet (up);
  else
    pg_fuzz_target->command (up, line);
}

static void
pg_fuzz_init (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text = NULL;

  g_log_set_writer_func (pg_fuzz_log_writer,
                         g_getenv ("PG_FUZZ_SESSION_LOG") != NULL ? (gpointer) "show" : NULL, NULL);
  pg_log_set_level (PG_LOG_LEVEL_DEBUG);
  pg_trace_set_enabled (pg_fuzz_target->trace);
  pg_fuzz_peer = pg_test_peer_new_in_context (pg_fuzz_script, &error);
  if (pg_fuzz_peer == NULL)
    abort ();
  text = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n"
                          "timeout = 1h\nconnect_timeout = 1h\n"
                          "[limits]\nauth_failure_delay = 0\npreauth_timeout = 1h\n"
                          "max_bad_commands = 1000\nmax_auth_failures = 1000\n%s",
                          pg_test_peer_get_port (pg_fuzz_peer), pg_fuzz_target->config);
  pg_fuzz_config = pg_config_load_data (text, strlen (text), "fuzz", &error);
  if (pg_fuzz_config == NULL)
    abort ();
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
  PgFuzzUpstream up = { 0 };

  if (size < 1 || size > PG_FUZZ_SESSION_MAX_INPUT)
    return 0;
  if (pg_fuzz_peer == NULL)
    {
      pg_fuzz_target = target;
      pg_fuzz_init ();
    }
  g_assert (target == pg_fuzz_target);
  up.mode = data[0] % target->n_modes;
  up.peer = pg_fuzz_peer;
  pg_test_peer_set_responder (pg_fuzz_peer, pg_fuzz_respond_cb, &up);

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
        ;
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
  /* Reset the upstream connection (no TIME_WAIT piles up over millions of runs) and wait
   * for its I/O to end; the next run's connection starts the script afresh. */
  pg_test_peer_restart (pg_fuzz_peer);
  g_free (up.idle_tag);
  while (g_main_context_iteration (NULL, FALSE))
    ;
  return 0;
}