/* popgate tests — a fault-injecting TCP proxy (see pg-test-faultproxy.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-faultproxy.h"

#include <string.h>

/* How often the threads look at the stop flag while waiting for input. */
#define PG_TEST_FAULTPROXY_POLL_MS 20
/* A blocked send gives up after this long (the other side stopped reading). */
#define PG_TEST_FAULTPROXY_IO_TIMEOUT_S 30
/* Client bytes without a CRLF are forwarded once this many are buffered (a literal). */
#define PG_TEST_FAULTPROXY_MAX_LINE 65536

struct _PgTestFaultProxy
{
  gchar *host; /* owned: the upstream */
  guint16 port;
  gchar *match; /* owned: rule.match */
  PgTestFaultRule rule;
  GSocket *listener; /* owned */
  guint16 listen_port;
  GThread *accept_thread; /* owned */
  GPtrArray *threads;     /* owned, of GThread*: one per relayed connection (under lock) */
  GMutex lock;
  GCond cond;
  gint stop;          /* atomic */
  gboolean fired;     /* under lock: the rule matched a command */
  gboolean triggered; /* under lock: the fault is complete */
};

typedef struct
{
  PgTestFaultProxy *proxy; /* unowned: outlives the thread (joined in free) */
  GSocket *client;         /* owned */
} PgTestFaultConn;

static void
pg_test_faultproxy_set_triggered (PgTestFaultProxy *proxy)
{
  g_mutex_lock (&proxy->lock);
  proxy->triggered = TRUE;
  g_cond_broadcast (&proxy->cond);
  g_mutex_unlock (&proxy->lock);
}

/* The rule matches this command line (once, over all connections). */
static gboolean
pg_test_faultproxy_fires (PgTestFaultProxy *proxy, const char *line)
{
  const char *rest = strchr (line, ' ');
  gboolean fire = FALSE;

  if (rest == NULL)
    return FALSE;
  g_mutex_lock (&proxy->lock);
  if (!proxy->fired && g_pattern_match_simple (proxy->match, rest + 1))
    fire = proxy->fired = TRUE;
  g_mutex_unlock (&proxy->lock);
  return fire;
}

static gboolean
pg_test_faultproxy_send (GSocket *socket, const char *data, gsize len)
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

/* Forward the complete lines buffered from the client, injecting the fault at the
 * matching one. FALSE when the relay must end (a CUT, or a failed send). */
static gboolean
pg_test_faultproxy_client_lines (PgTestFaultConn *conn, GSocket *server, GString *pending,
                                 gssize *truncate_left)
{
  PgTestFaultProxy *proxy = conn->proxy;
  const char *crlf;

  while ((crlf = strstr (pending->str, "\r\n")) != NULL)
    {
      gsize len = (gsize) (crlf + 2 - pending->str);
      g_autofree gchar *line = g_strndup (pending->str, len - 2);

      if (pg_test_faultproxy_fires (proxy, line))
        {
          switch (proxy->rule.action)
            {
            case PG_TEST_FAULT_CUT:
              pg_test_faultproxy_set_triggered (proxy);
              return FALSE;
            case PG_TEST_FAULT_TRUNCATE:
              *truncate_left = (gssize) proxy->rule.bytes;
              break;
            case PG_TEST_FAULT_DELAY:
              /* The emulated slow upstream, not a wait for a condition. */
              g_usleep ((gulong) proxy->rule.delay_ms * 1000);
              pg_test_faultproxy_set_triggered (proxy);
              break;
            }
        }
      if (!pg_test_faultproxy_send (server, pending->str, len))
        return FALSE;
      g_string_erase (pending, 0, (gssize) len);
    }
  if (pending->len > PG_TEST_FAULTPROXY_MAX_LINE)
    {
      if (!pg_test_faultproxy_send (server, pending->str, pending->len))
        return FALSE;
      g_string_truncate (pending, 0);
    }
  return TRUE;
}

static gpointer
pg_test_faultproxy_relay_thread (gpointer user_data)
{
  PgTestFaultConn *conn = user_data;
  PgTestFaultProxy *proxy = conn->proxy;
  g_autoptr (GSocketClient) connector = g_socket_client_new ();
  g_autoptr (GSocketConnection) upstream = NULL;
  g_autoptr (GString) pending = g_string_new (NULL);
  gssize truncate_left = -1;
  GSocket *server;

  g_socket_client_set_timeout (connector, PG_TEST_FAULTPROXY_IO_TIMEOUT_S);
  upstream = g_socket_client_connect_to_host (connector, proxy->host, proxy->port, NULL, NULL);
  if (upstream == NULL)
    goto out;
  server = g_socket_connection_get_socket (upstream);
  g_socket_set_timeout (server, PG_TEST_FAULTPROXY_IO_TIMEOUT_S);
  g_socket_set_timeout (conn->client, PG_TEST_FAULTPROXY_IO_TIMEOUT_S);
  while (!g_atomic_int_get (&proxy->stop))
    {
      GPollFD fds[2] = {
        { g_socket_get_fd (conn->client), G_IO_IN | G_IO_HUP | G_IO_ERR, 0 },
        { g_socket_get_fd (server), G_IO_IN | G_IO_HUP | G_IO_ERR, 0 },
      };
      char buf[16384];
      gssize n;

      if (g_poll (fds, 2, PG_TEST_FAULTPROXY_POLL_MS) <= 0)
        continue;
      if (fds[0].revents != 0)
        {
          n = g_socket_receive (conn->client, buf, sizeof buf, NULL, NULL);
          if (n <= 0)
            break;
          g_string_append_len (pending, buf, n);
          if (!pg_test_faultproxy_client_lines (conn, server, pending, &truncate_left))
            break;
        }
      if (fds[1].revents != 0)
        {
          gsize pass;

          n = g_socket_receive (server, buf, sizeof buf, NULL, NULL);
          if (n <= 0)
            break;
          pass = truncate_left >= 0 ? MIN ((gsize) n, (gsize) truncate_left) : (gsize) n;
          if (!pg_test_faultproxy_send (conn->client, buf, pass))
            break;
          if (truncate_left >= 0)
            {
              truncate_left -= (gssize) pass;
              if (truncate_left == 0)
                {
                  pg_test_faultproxy_set_triggered (proxy);
                  break;
                }
            }
        }
    }
  g_socket_close (server, NULL);
out:
  g_socket_close (conn->client, NULL);
  g_object_unref (conn->client);
  g_free (conn);
  return NULL;
}

static gpointer
pg_test_faultproxy_accept_thread (gpointer user_data)
{
  PgTestFaultProxy *proxy = user_data;

  while (!g_atomic_int_get (&proxy->stop))
    {
      PgTestFaultConn *conn;
      GSocket *client;

      if (!g_socket_condition_timed_wait (proxy->listener, G_IO_IN,
                                          PG_TEST_FAULTPROXY_POLL_MS * 1000, NULL, NULL))
        continue;
      client = g_socket_accept (proxy->listener, NULL, NULL);
      if (client == NULL)
        continue;
      g_socket_set_blocking (client, TRUE);
      conn = g_new0 (PgTestFaultConn, 1);
      conn->proxy = proxy;
      conn->client = client;
      g_mutex_lock (&proxy->lock);
      g_ptr_array_add (proxy->threads,
                       g_thread_new ("faultproxy-relay", pg_test_faultproxy_relay_thread, conn));
      g_mutex_unlock (&proxy->lock);
    }
  return NULL;
}

PgTestFaultProxy *
pg_test_faultproxy_new (const char *host, guint16 port, const PgTestFaultRule *rule, GError **error)
{
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) any = g_inet_socket_address_new (loopback, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  PgTestFaultProxy *proxy = g_new0 (PgTestFaultProxy, 1);

  proxy->host = g_strdup (host);
  proxy->port = port;
  proxy->rule = *rule;
  proxy->match = g_strdup (rule->match);
  proxy->rule.match = proxy->match;
  proxy->threads = g_ptr_array_new ();
  g_mutex_init (&proxy->lock);
  g_cond_init (&proxy->cond);
  proxy->listener
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, error);
  if (proxy->listener == NULL || !g_socket_bind (proxy->listener, any, TRUE, error)
      || !g_socket_listen (proxy->listener, error)
      || (bound = g_socket_get_local_address (proxy->listener, error)) == NULL)
    {
      pg_test_faultproxy_free (proxy);
      return NULL;
    }
  g_socket_set_blocking (proxy->listener, FALSE);
  proxy->listen_port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  proxy->accept_thread
      = g_thread_new ("faultproxy-accept", pg_test_faultproxy_accept_thread, proxy);
  return proxy;
}

guint16
pg_test_faultproxy_get_port (PgTestFaultProxy *proxy)
{
  return proxy->listen_port;
}

gboolean
pg_test_faultproxy_wait_triggered (PgTestFaultProxy *proxy, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gboolean triggered;

  g_mutex_lock (&proxy->lock);
  while (!proxy->triggered && g_cond_wait_until (&proxy->cond, &proxy->lock, deadline))
    ;
  triggered = proxy->triggered;
  g_mutex_unlock (&proxy->lock);
  return triggered;
}

void
pg_test_faultproxy_free (PgTestFaultProxy *proxy)
{
  if (proxy == NULL)
    return;
  g_atomic_int_set (&proxy->stop, 1);
  if (proxy->accept_thread != NULL)
    g_thread_join (proxy->accept_thread);
  /* The accept thread is gone: nobody adds to threads any more. */
  for (guint i = 0; i < proxy->threads->len; i++)
    g_thread_join (g_ptr_array_index (proxy->threads, i));
  g_ptr_array_unref (proxy->threads);
  g_clear_object (&proxy->listener);
  g_mutex_clear (&proxy->lock);
  g_cond_clear (&proxy->cond);
  g_free (proxy->match);
  g_free (proxy->host);
  g_free (proxy);
}
