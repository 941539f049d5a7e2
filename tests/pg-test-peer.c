/* popgate tests — a scripted IMAP upstream in a thread (see pg-test-peer.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-peer.h"

#include <string.h>

/* How often blocking waits wake up to look at the stop flag. */
#define PG_TEST_PEER_POLL_MS 20
/* No single step may take longer than this (popgate answers in milliseconds). */
#define PG_TEST_PEER_STEP_TIMEOUT_MS 30000
/* A line popgate sends us is far shorter than this; longer is a script failure. */
#define PG_TEST_PEER_MAX_LINE (256 * 1024)

struct _PgTestPeer
{
  GSocket *listener; /* owned */
  guint16 port;
  const PgTestPeerStep *steps; /* unowned */
  GThread *thread;             /* owned */
  GMutex lock;
  GCond cond;
  gint stop;              /* atomic */
  gboolean finished;      /* under lock */
  gboolean client_closed; /* under lock */
  gchar *mismatch;        /* owned, under lock */
  GString *received;      /* owned, under lock */
};

static void
pg_test_peer_set_flag (PgTestPeer *peer, gboolean *flag)
{
  g_mutex_lock (&peer->lock);
  *flag = TRUE;
  g_cond_broadcast (&peer->cond);
  g_mutex_unlock (&peer->lock);
}

static void
pg_test_peer_fail (PgTestPeer *peer, gchar *message)
{
  g_mutex_lock (&peer->lock);
  if (peer->mismatch == NULL)
    peer->mismatch = message;
  else
    g_free (message);
  peer->finished = TRUE;
  g_cond_broadcast (&peer->cond);
  g_mutex_unlock (&peer->lock);
}

/* Wait until `socket` is readable or the peer stops; FALSE on stop or step timeout. */
static gboolean
pg_test_peer_wait_readable (PgTestPeer *peer, GSocket *socket, gboolean forever)
{
  gint64 deadline = g_get_monotonic_time () + PG_TEST_PEER_STEP_TIMEOUT_MS * 1000;

  while (!g_atomic_int_get (&peer->stop))
    {
      if (g_socket_condition_timed_wait (socket, G_IO_IN | G_IO_HUP | G_IO_ERR,
                                         PG_TEST_PEER_POLL_MS * 1000, NULL, NULL))
        return TRUE;
      if (!forever && g_get_monotonic_time () > deadline)
        return FALSE;
    }
  return FALSE;
}

static gboolean
pg_test_peer_send_all (PgTestPeer *peer, GSocket *socket, const char *data, gsize len)
{
  while (len > 0 && !g_atomic_int_get (&peer->stop))
    {
      g_autoptr (GError) error = NULL;
      gssize n;

      if (!g_socket_condition_timed_wait (socket, G_IO_OUT, PG_TEST_PEER_POLL_MS * 1000, NULL,
                                          NULL))
        continue; /* popgate is not reading (back-pressure): keep waiting until stopped */
      n = g_socket_send (socket, data, len, NULL, &error);
      if (n < 0)
        {
          if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            continue;
          return FALSE;
        }
      data += n;
      len -= (gsize) n;
    }
  return len == 0;
}

/* Read one CRLF line into *out_line (without CRLF); FALSE at EOF, error or stop. */
static gboolean
pg_test_peer_read_line (PgTestPeer *peer, GSocket *socket, GString *input, gchar **out_line)
{
  for (;;)
    {
      const char *crlf = strstr (input->str, "\r\n");
      gchar buf[4096];
      gssize n;

      if (crlf != NULL)
        {
          *out_line = g_strndup (input->str, (gsize) (crlf - input->str));
          g_string_erase (input, 0, crlf + 2 - input->str);
          g_mutex_lock (&peer->lock);
          g_string_append_printf (peer->received, "%s\n", *out_line);
          g_mutex_unlock (&peer->lock);
          return TRUE;
        }
      if (input->len > PG_TEST_PEER_MAX_LINE)
        return FALSE;
      if (!pg_test_peer_wait_readable (peer, socket, FALSE))
        return FALSE;
      n = g_socket_receive (socket, buf, sizeof buf, NULL, NULL);
      if (n <= 0)
        return FALSE;
      g_string_append_len (input, buf, n);
    }
}

static void
pg_test_peer_run_script (PgTestPeer *peer, GSocket *socket)
{
  g_autoptr (GString) input = g_string_new (NULL);
  g_autofree gchar *tag = NULL;
  g_autofree gchar *previous_tag = NULL;

  for (const PgTestPeerStep *step = peer->steps;; step++)
    {
      switch (step->action)
        {
        case PG_TEST_PEER_SEND:
          {
            g_autoptr (GString) text = g_string_new (step->text);
            gsize repeat = MAX (step->repeat, 1);
            g_string_replace (text, "$^", previous_tag != NULL ? previous_tag : "*", 0);
            g_string_replace (text, "$", tag != NULL ? tag : "*", 0);
            for (gsize i = 0; i < repeat; i++)
              if (!pg_test_peer_send_all (peer, socket, text->str, text->len))
                {
                  pg_test_peer_fail (peer, g_strdup_printf ("send failed at step %u",
                                                            (guint) (step - peer->steps)));
                  return;
                }
            break;
          }
        case PG_TEST_PEER_EXPECT:
        case PG_TEST_PEER_EXPECT_RAW:
          {
            g_autofree gchar *line = NULL;
            const char *rest;

            if (!pg_test_peer_read_line (peer, socket, input, &line))
              {
                pg_test_peer_fail (peer,
                                   g_strdup_printf ("step %u: expected '%s', got EOF or "
                                                    "nothing",
                                                    (guint) (step - peer->steps), step->text));
                return;
              }
            rest = line;
            if (step->action == PG_TEST_PEER_EXPECT)
              {
                const char *space = strchr (line, ' ');
                if (space == NULL)
                  {
                    pg_test_peer_fail (peer, g_strdup_printf ("no tag in '%s'", line));
                    return;
                  }
                g_free (previous_tag);
                previous_tag = g_steal_pointer (&tag);
                tag = g_strndup (line, (gsize) (space - line));
                rest = space + 1;
              }
            if (!g_pattern_match_simple (step->text, rest))
              {
                pg_test_peer_fail (peer, g_strdup_printf ("step %u: expected '%s', got '%s'",
                                                          (guint) (step - peer->steps), step->text,
                                                          rest));
                return;
              }
            break;
          }
        case PG_TEST_PEER_FLOOD:
          {
            g_autoptr (GString) batch = g_string_new (NULL);
            gsize i = 0;

            while (i < step->repeat)
              {
                g_autoptr (GString) text = g_string_new (step->text);
                g_autofree gchar *count = g_strdup_printf ("%" G_GSIZE_FORMAT, ++i);

                g_string_replace (text, "%u", count, 0);
                g_string_append_len (batch, text->str, text->len);
                if (batch->len < 32768 && i < step->repeat)
                  continue;
                if (!pg_test_peer_send_all (peer, socket, batch->str, batch->len))
                  {
                    /* popgate closed on us: the flood was stopped. */
                    pg_test_peer_set_flag (peer, &peer->finished);
                    pg_test_peer_set_flag (peer, &peer->client_closed);
                    return;
                  }
                g_string_truncate (batch, 0);
              }
            pg_test_peer_fail (
                peer, g_strdup_printf ("step %u: flood not stopped after %" G_GSIZE_FORMAT " sends",
                                       (guint) (step - peer->steps), i));
            return;
          }
        case PG_TEST_PEER_CLOSE:
          /* Killed: gone at once, with no goodbye. */
          g_socket_close (socket, NULL);
          pg_test_peer_set_flag (peer, &peer->finished);
          pg_test_peer_set_flag (peer, &peer->client_closed);
          return;
        case PG_TEST_PEER_HANG:
          pg_test_peer_set_flag (peer, &peer->finished);
          /* Paused: read and drop whatever comes until popgate gives up on us. */
          while (pg_test_peer_wait_readable (peer, socket, TRUE))
            {
              gchar buf[4096];
              gssize n = g_socket_receive (socket, buf, sizeof buf, NULL, NULL);
              if (n <= 0)
                break;
              g_mutex_lock (&peer->lock);
              g_string_append_len (peer->received, buf, n);
              g_mutex_unlock (&peer->lock);
            }
          return;
        }
    }
}

static gpointer
pg_test_peer_thread (gpointer user_data)
{
  PgTestPeer *peer = user_data;
  gboolean served = FALSE;

  while (!g_atomic_int_get (&peer->stop))
    {
      g_autoptr (GSocket) socket = NULL;

      if (!g_socket_condition_timed_wait (peer->listener, G_IO_IN, PG_TEST_PEER_POLL_MS * 1000,
                                          NULL, NULL))
        continue;
      socket = g_socket_accept (peer->listener, NULL, NULL);
      if (socket == NULL)
        continue;
      if (served)
        {
          g_socket_close (socket, NULL);
          continue;
        }
      served = TRUE;
      g_socket_set_blocking (socket, FALSE);
      pg_test_peer_run_script (peer, socket);
      if (g_socket_is_closed (socket))
        continue;
      /* After the script: wait for popgate's close (bounded by the stop flag). */
      while (pg_test_peer_wait_readable (peer, socket, TRUE))
        {
          gchar buf[4096];
          if (g_socket_receive (socket, buf, sizeof buf, NULL, NULL) <= 0)
            break;
        }
      if (!g_atomic_int_get (&peer->stop))
        pg_test_peer_set_flag (peer, &peer->client_closed);
      g_socket_close (socket, NULL);
    }
  return NULL;
}

PgTestPeer *
pg_test_peer_new (const PgTestPeerStep *steps, GError **error)
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
  peer->listener = g_steal_pointer (&listener);
  peer->port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  peer->steps = steps;
  peer->received = g_string_new (NULL);
  g_mutex_init (&peer->lock);
  g_cond_init (&peer->cond);
  peer->thread = g_thread_new ("pg-test-peer", pg_test_peer_thread, peer);
  return peer;
}

guint16
pg_test_peer_get_port (PgTestPeer *peer)
{
  return peer->port;
}

static gboolean
pg_test_peer_wait_flag (PgTestPeer *peer, const gboolean *flag, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gboolean done;

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

void
pg_test_peer_free (PgTestPeer *peer)
{
  if (peer == NULL)
    return;
  g_atomic_int_set (&peer->stop, 1);
  g_thread_join (peer->thread);
  g_socket_close (peer->listener, NULL);
  g_object_unref (peer->listener);
  g_mutex_clear (&peer->lock);
  g_cond_clear (&peer->cond);
  g_string_free (peer->received, TRUE);
  g_free (peer->mismatch);
  g_free (peer);
}
