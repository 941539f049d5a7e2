/* popgate tests — a relay that cuts one connection at a command (see pg-test-cutproxy.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-cutproxy.h"

#include <poll.h>
#include <string.h>

/* How often the relay loop looks at the stop flag. */
#define PG_TEST_CUT_PROXY_POLL_MS 20

struct _PgTestCutProxy
{
  GSocket *listener; /* owned */
  guint16 port;
  guint16 upstream_port;
  gchar *needle;   /* owned */
  GThread *thread; /* owned */
  gint stop;       /* atomic */
  gint cut;        /* atomic */
};

static GSocket *
pg_test_cut_proxy_connect (guint16 port)
{
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address = g_inet_socket_address_new (loopback, port);
  g_autoptr (GSocket) socket
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);

  if (socket == NULL || !g_socket_connect (socket, address, NULL, NULL))
    return NULL;
  return g_steal_pointer (&socket);
}

static gboolean
pg_test_cut_proxy_send_all (GSocket *socket, const gchar *data, gsize len)
{
  while (len > 0)
    {
      gssize n = g_socket_send (socket, data, len, NULL, NULL);
      if (n <= 0)
        return FALSE;
      data += n;
      len -= (gsize) n;
    }
  return TRUE;
}

/* Relay one connection until either side closes, the cut, or stop. */
static void
pg_test_cut_proxy_relay (PgTestCutProxy *proxy, GSocket *client, GSocket *server)
{
  GSocket *sockets[2] = { client, server };

  while (!g_atomic_int_get (&proxy->stop))
    {
      struct pollfd fds[2] = {
        { g_socket_get_fd (client), POLLIN, 0 },
        { g_socket_get_fd (server), POLLIN, 0 },
      };

      if (poll (fds, 2, PG_TEST_CUT_PROXY_POLL_MS) <= 0)
        continue;
      for (guint i = 0; i < 2; i++)
        {
          gchar buf[16384];
          gssize n;

          if (fds[i].revents == 0)
            continue;
          n = g_socket_receive (sockets[i], buf, sizeof buf - 1, NULL, NULL);
          if (n <= 0)
            return;
          buf[n] = '\0';
          /* A command line from popgate holds no NUL, so strstr sees all of it. */
          if (i == 0 && !g_atomic_int_get (&proxy->cut) && strstr (buf, proxy->needle) != NULL)
            {
              g_atomic_int_set (&proxy->cut, 1);
              return;
            }
          if (!pg_test_cut_proxy_send_all (sockets[1 - i], buf, (gsize) n))
            return;
        }
    }
}

static gpointer
pg_test_cut_proxy_thread (gpointer data)
{
  PgTestCutProxy *proxy = data;

  while (!g_atomic_int_get (&proxy->stop))
    {
      g_autoptr (GSocket) client = NULL;
      g_autoptr (GSocket) server = NULL;

      if (!g_socket_condition_timed_wait (proxy->listener, G_IO_IN,
                                          PG_TEST_CUT_PROXY_POLL_MS * 1000, NULL, NULL))
        continue;
      client = g_socket_accept (proxy->listener, NULL, NULL);
      if (client == NULL)
        continue;
      server = pg_test_cut_proxy_connect (proxy->upstream_port);
      if (server == NULL)
        continue;
      g_socket_set_blocking (client, TRUE);
      pg_test_cut_proxy_relay (proxy, client, server);
      g_socket_close (client, NULL);
      g_socket_close (server, NULL);
    }
  return NULL;
}

PgTestCutProxy *
pg_test_cut_proxy_new (guint16 upstream_port, const char *needle, GError **error)
{
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) any = g_inet_socket_address_new (loopback, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  PgTestCutProxy *proxy = g_new0 (PgTestCutProxy, 1);

  proxy->upstream_port = upstream_port;
  proxy->needle = g_strdup (needle);
  proxy->listener
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, error);
  if (proxy->listener == NULL || !g_socket_bind (proxy->listener, any, TRUE, error)
      || !g_socket_listen (proxy->listener, error))
    {
      pg_test_cut_proxy_free (proxy);
      return NULL;
    }
  bound = g_socket_get_local_address (proxy->listener, error);
  if (bound == NULL)
    {
      pg_test_cut_proxy_free (proxy);
      return NULL;
    }
  proxy->port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  proxy->thread = g_thread_new ("pg-test-cut-proxy", pg_test_cut_proxy_thread, proxy);
  return proxy;
}

guint16
pg_test_cut_proxy_get_port (PgTestCutProxy *proxy)
{
  return proxy->port;
}

gboolean
pg_test_cut_proxy_has_cut (PgTestCutProxy *proxy)
{
  return g_atomic_int_get (&proxy->cut) != 0;
}

void
pg_test_cut_proxy_free (PgTestCutProxy *proxy)
{
  if (proxy == NULL)
    return;
  g_atomic_int_set (&proxy->stop, 1);
  if (proxy->thread != NULL)
    g_thread_join (proxy->thread);
  if (proxy->listener != NULL)
    g_socket_close (proxy->listener, NULL);
  g_clear_object (&proxy->listener);
  g_free (proxy->needle);
  g_free (proxy);
}
