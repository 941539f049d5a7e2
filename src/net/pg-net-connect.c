/* popgate — connecting to a server: TCP with a deadline, into an upstream PgConn.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-core.h"
#include "popgate/pg-net.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

typedef struct
{
  PgConfig *config;          /* owned */
  GCancellable *cancellable; /* owned: ours, cancelled by the caller's or the deadline */
  GCancellable *caller;      /* owned, may be NULL */
  gulong caller_id;
  GSource *deadline; /* owned */
  gboolean timed_out;
} PgNetConnect;

static void
pg_net_connect_free (PgNetConnect *connect)
{
  if (connect->caller != NULL)
    g_cancellable_disconnect (connect->caller, connect->caller_id);
  g_clear_object (&connect->caller);
  if (connect->deadline != NULL)
    {
      g_source_destroy (connect->deadline);
      g_source_unref (connect->deadline);
    }
  g_clear_object (&connect->cancellable);
  g_clear_pointer (&connect->config, pg_config_unref);
  g_free (connect);
}

static void
pg_net_connect_cancelled_cb (GCancellable *caller, gpointer user_data)
{
  GCancellable *ours = user_data;

  g_cancellable_cancel (ours);
}

static gboolean
pg_net_connect_deadline_cb (gpointer user_data)
{
  PgNetConnect *connect = user_data;

  g_clear_pointer (&connect->deadline, g_source_unref);
  connect->timed_out = TRUE;
  g_cancellable_cancel (connect->cancellable);
  return G_SOURCE_REMOVE;
}

static void
pg_net_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgNetConnect *connect = g_task_get_task_data (task);
  GError *error = NULL;
  g_autoptr (GSocketConnection) connection
      = g_socket_client_connect_to_host_finish (G_SOCKET_CLIENT (source), result, &error);

  if (connection == NULL)
    {
      if (connect->timed_out)
        {
          g_clear_error (&error);
          error = g_error_new_literal (PG_ERROR, PG_ERROR_TIMEOUT, "connect timed out");
        }
      g_task_return_error (task, error);
      return;
    }
  /* Commands and their literals go out as separate small writes (AUTHENTICATE PLAIN and
   * its response, pipelined FETCHes): without TCP_NODELAY, Nagle's algorithm holds the
   * second until the first is acknowledged, ~40 ms against a peer that delays its ACKs. */
  (void) g_socket_set_option (g_socket_connection_get_socket (connection), IPPROTO_TCP, TCP_NODELAY,
                              1, NULL);
  g_tcp_connection_set_graceful_disconnect (G_TCP_CONNECTION (connection), FALSE);
  g_task_return_pointer (task, pg_conn_new_upstream (connect->config, G_IO_STREAM (connection)),
                         g_object_unref);
}

void
pg_conn_connect_async (PgConfig *config, const char *host, guint16 port, gint64 deadline_us,
                       GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  PgNetConnect *connect = g_new0 (PgNetConnect, 1);

  g_task_set_source_tag (task, pg_conn_connect_async);
  connect->config = pg_config_ref (config);
  connect->cancellable = g_cancellable_new ();
  g_task_set_task_data (task, connect, (GDestroyNotify) pg_net_connect_free);
  if (cancellable != NULL)
    {
      connect->caller = g_object_ref (cancellable);
      connect->caller_id = g_cancellable_connect (
          cancellable, G_CALLBACK (pg_net_connect_cancelled_cb), connect->cancellable, NULL);
    }
  if (deadline_us != 0)
    {
      gint64 left_us = MAX (deadline_us - g_get_monotonic_time (), 0);

      connect->deadline = g_timeout_source_new ((guint) MIN ((left_us + 999) / 1000, G_MAXUINT));
      g_source_set_callback (connect->deadline, pg_net_connect_deadline_cb, connect, NULL);
      g_source_set_static_name (connect->deadline, "[popgate] connect deadline");
      g_source_attach (connect->deadline, g_main_context_get_thread_default ());
    }
  /* A mail gateway talks to its configured upstream directly, never via desktop proxy
   * settings. */
  g_socket_client_set_enable_proxy (client, FALSE);
  g_socket_client_connect_to_host_async (client, host, port, connect->cancellable,
                                         pg_net_connect_cb, g_steal_pointer (&task));
}

PgConn *
pg_conn_connect_finish (GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}
