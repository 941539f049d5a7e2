/* popgate — closing a connection's stream: TLS close_notify first, bounded.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-limits.h"
#include "popgate/pg-net.h"

typedef struct
{
  GIOStream *tls;            /* owned */
  GSocketConnection *socket; /* owned */
  GCancellable *cancellable; /* owned: cancelled at the deadline */
  GSource *deadline;         /* owned */
} PgNetClose;

static void
pg_net_close_free (PgNetClose *close)
{
  if (close->deadline != NULL)
    {
      g_source_destroy (close->deadline);
      g_source_unref (close->deadline);
    }
  /* Whatever the TLS close did, the socket goes now (a no-op when it is closed). */
  if (close->socket != NULL)
    g_socket_close (g_socket_connection_get_socket (close->socket), NULL);
  g_clear_object (&close->tls);
  g_clear_object (&close->socket);
  g_clear_object (&close->cancellable);
  g_free (close);
}

static void
pg_net_close_done_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  /* A failed close_notify (the peer reset, the deadline) changes nothing: the socket is
   * closed all the same. */
  g_io_stream_close_finish (G_IO_STREAM (source), result, NULL);
  pg_net_close_free (user_data);
}

static gboolean
pg_net_close_deadline_cb (gpointer user_data)
{
  PgNetClose *close = user_data;

  /* A peer that does not read (a full socket) cannot hold the close any longer. */
  g_cancellable_cancel (close->cancellable);
  g_clear_pointer (&close->deadline, g_source_unref);
  return G_SOURCE_REMOVE;
}

void
pg_net_close_stream (GIOStream *stream, GSocketConnection *socket)
{
  PgNetClose *close;

  if (stream == NULL || !G_IS_TLS_CONNECTION (stream) || g_io_stream_is_closed (stream))
    {
      if (socket != NULL)
        g_socket_close (g_socket_connection_get_socket (socket), NULL);
      else if (stream != NULL)
        g_io_stream_close (stream, NULL, NULL); /* not a socket: a pipe pair, say */
      return;
    }
  close = g_new0 (PgNetClose, 1);
  close->tls = g_object_ref (stream);
  close->socket = socket != NULL ? g_object_ref (socket) : NULL;
  close->cancellable = g_cancellable_new ();
  close->deadline = g_timeout_source_new (PG_TLS_CLOSE_TIMEOUT_MS);
  g_source_set_callback (close->deadline, pg_net_close_deadline_cb, close, NULL);
  g_source_set_static_name (close->deadline, "[popgate] TLS close deadline");
  g_source_attach (close->deadline, g_main_context_get_thread_default ());
  g_io_stream_close_async (stream, G_PRIORITY_DEFAULT, close->cancellable, pg_net_close_done_cb,
                           close);
}
