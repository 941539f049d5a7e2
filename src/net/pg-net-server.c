/* popgate — listeners, accept-time limits and TLS, session accounting, reload, shutdown.
 *
 * One listener per listen address (not one per front end): a reload can then keep the
 * addresses that stay bound — no window in which connections are refused — while it
 * opens new ones and closes removed ones. A listener is its bound sockets and one read
 * source on each (not a GSocketService, whose accept adds a cancellable source per socket:
 * every attached source costs each main-loop turn of every session), accepting a bounded
 * batch per wake-up and pausing, not spinning, when the process is out of descriptors.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-net-private.h"

#include "popgate/pg-tls.h"
#include "popgate/pg-codec-proxy.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-metrics.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>

typedef struct
{
  gchar *key; /* owned: "pop3|tls|127.0.0.1:1995" */
  PgFrontend frontend;
  gboolean tls;
  GPtrArray *sockets;          /* owned GSocket*: listening; two for "*:PORT" without dual stack */
  GPtrArray *sources;          /* owned GSource*: one read source per socket while accepting */
  GSource *resume;             /* owned: the timer that ends an out-of-descriptors pause */
  gchar *bound;                /* owned: the address actually bound, "host:port" */
  PgServer *server;            /* unowned */
  gboolean adopted;            /* in the server's table (not just opened by a reload) */
  gboolean inherited;          /* socket activation: not from the config, kept by reloads */
  gboolean out_of_fds;         /* out of descriptors logged, and no accept since */
  gint64 out_of_fds_logged_us; /* monotonic time of that log line; 0: never */
} PgListener;

struct _PgServer
{
  GObject parent_instance;

  PgConfig *config;          /* owned: the config new connections get */
  GTlsCertificate *tls_cert; /* owned, NULL when [tls] is not configured */
  GHashTable *listeners;     /* key → PgListener* (owned) */
  GHashTable *conns;         /* PgConn* (owned ref) → NULL: live sessions */
  GHashTable *per_address;   /* peer ip (owned) → GUINT_TO_POINTER(count) */
  guint n_handshaking;       /* accepted, PROXY header or TLS handshake in progress */
  GHashTable *accepts;       /* PgAccept* (unowned: each owns itself) in that phase */
  struct
  {
    PgSessionStartFunc func;
    gpointer user_data;
  } handlers[PG_FRONTEND_COUNT];
  gboolean shutting_down;
  GSource *shutdown_source; /* owned */
};

G_DEFINE_TYPE (PgServer, pg_server, G_TYPE_OBJECT)

enum
{
  SIGNAL_IDLE,
  SIGNAL_LAST,
};
static guint pg_server_signals[SIGNAL_LAST];

static const char *const pg_frontend_names[] = { "pop3", "imap" };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_frontend_names) == PG_FRONTEND_COUNT);

const char *
pg_frontend_to_string (PgFrontend frontend)
{
  return frontend < PG_FRONTEND_COUNT ? pg_frontend_names[frontend] : "?";
}

static void pg_listener_stop (PgListener *listener);

static void
pg_listener_free (PgListener *listener)
{
  pg_listener_stop (listener);
  g_clear_pointer (&listener->sources, g_ptr_array_unref);
  if (listener->sockets != NULL)
    {
      for (guint i = 0; i < listener->sockets->len; i++)
        g_socket_close (g_ptr_array_index (listener->sockets, i), NULL);
      g_ptr_array_unref (listener->sockets);
    }
  g_free (listener->key);
  g_free (listener->bound);
  g_free (listener);
}

static void
pg_server_dispose (GObject *object)
{
  PgServer *server = PG_SERVER (object);

  g_clear_pointer (&server->listeners, g_hash_table_unref);
  if (server->shutdown_source != NULL)
    {
      g_source_destroy (server->shutdown_source);
      g_clear_pointer (&server->shutdown_source, g_source_unref);
    }
  if (server->conns != NULL)
    {
      GHashTableIter iter;
      gpointer conn;
      g_hash_table_iter_init (&iter, server->conns);
      while (g_hash_table_iter_next (&iter, &conn, NULL))
        g_signal_handlers_disconnect_by_data (conn, server);
      g_clear_pointer (&server->conns, g_hash_table_unref);
    }
  G_OBJECT_CLASS (pg_server_parent_class)->dispose (object);
}

static void
pg_server_finalize (GObject *object)
{
  PgServer *server = PG_SERVER (object);

  g_clear_pointer (&server->per_address, g_hash_table_unref);
  g_clear_pointer (&server->accepts, g_hash_table_unref);
  g_clear_object (&server->tls_cert);
  g_clear_pointer (&server->config, pg_config_unref);
  G_OBJECT_CLASS (pg_server_parent_class)->finalize (object);
}

static void
pg_server_class_init (PgServerClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pg_server_dispose;
  object_class->finalize = pg_server_finalize;
  pg_server_signals[SIGNAL_IDLE] = g_signal_new (
      "idle", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL, G_TYPE_NONE, 0);
}

static void
pg_server_init (PgServer *server)
{
  server->listeners
      = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) pg_listener_free);
  server->conns = g_hash_table_new_full (g_direct_hash, g_direct_equal, g_object_unref, NULL);
  server->per_address = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  server->accepts = g_hash_table_new (g_direct_hash, g_direct_equal);
}

PgServer *
pg_server_new (PgConfig *config)
{
  PgServer *server = g_object_new (PG_TYPE_SERVER, NULL);

  server->config = pg_config_ref (config);
  return server;
}

void
pg_server_set_handler (PgServer *server, PgFrontend frontend, PgSessionStartFunc func,
                       gpointer user_data)
{
  g_return_if_fail (frontend < PG_FRONTEND_COUNT);
  server->handlers[frontend].func = func;
  server->handlers[frontend].user_data = user_data;
}

PgConfig *
pg_server_get_config (PgServer *server)
{
  return server->config;
}

guint
pg_server_get_n_sessions (PgServer *server)
{
  return g_hash_table_size (server->conns) + server->n_handshaking;
}

/* --- per-address accounting -------------------------------------------------------------- */

static guint
pg_server_address_count (PgServer *server, const char *ip)
{
  return GPOINTER_TO_UINT (g_hash_table_lookup (server->per_address, ip));
}

static void
pg_server_address_add (PgServer *server, const char *ip, gint delta)
{
  guint count = pg_server_address_count (server, ip);

  g_assert (delta > 0 || count > 0);
  count = (guint) ((gint) count + delta);
  if (count == 0)
    g_hash_table_remove (server->per_address, ip);
  else
    g_hash_table_replace (server->per_address, g_strdup (ip), GUINT_TO_POINTER (count));
}

static void
pg_server_check_idle (PgServer *server)
{
  if (server->shutting_down && pg_server_get_n_sessions (server) == 0)
    g_signal_emit (server, pg_server_signals[SIGNAL_IDLE], 0);
}

static void
pg_server_conn_closed_cb (PgConn *conn, gpointer user_data)
{
  PgServer *server = user_data;

  g_signal_handlers_disconnect_by_data (conn, server);
  pg_server_address_add (server, pg_conn_get_peer_ip (conn), -1);
  pg_session_info (
      pg_conn_get_id (conn),
      "connection from %s closed (in %" G_GUINT64_FORMAT ", out %" G_GUINT64_FORMAT " bytes)",
      pg_conn_get_peer (conn), pg_conn_get_bytes_in (conn), pg_conn_get_bytes_out (conn));
  g_hash_table_remove (server->conns, conn);
  pg_server_check_idle (server);
}

/* --- accepting --------------------------------------------------------------------------- */

static void
pg_server_start_session (PgServer *server, PgListener *listener, PgConn *conn)
{
  PgSessionStartFunc func = server->handlers[listener->frontend].func;

  g_hash_table_add (server->conns, g_object_ref (conn));
  g_signal_connect (conn, "closed", G_CALLBACK (pg_server_conn_closed_cb), server);
  pg_session_info (pg_conn_get_id (conn), "%s connection from %s%s%s%s",
                   pg_frontend_to_string (listener->frontend), pg_conn_get_peer (conn),
                   pg_conn_is_tls (conn) ? " (TLS)" : "",
                   pg_conn_get_proxy (conn) != NULL ? " via proxy " : "",
                   pg_conn_get_proxy (conn) != NULL ? pg_conn_get_proxy (conn) : "");
  if (server->shutting_down)
    {
      pg_conn_abort (conn);
      return;
    }
  if (func == NULL)
    {
      /* No front end is wired for this listener: say so in the protocol's terms. */
      if (listener->frontend == PG_FRONTEND_POP3)
        pg_conn_write_printf (conn, "-ERR [SYS/PERM] POP3 service not available\r\n");
      else
        pg_conn_write_printf (conn, "* BYE [UNAVAILABLE] IMAP service not available\r\n");
      pg_conn_close (conn);
      return;
    }
  pg_conn_set_idle_timeout (conn, pg_conn_get_config (conn)->limits.preauth_timeout_ms);
  /* preauth_timeout is a deadline from the accept, not only an idle timer: a client that
   * sends a byte now and then would otherwise hold its slot for ever (slowloris). The
   * session clears it once logged in. */
  pg_conn_set_deadline (conn, pg_conn_get_config (conn)->limits.preauth_timeout_ms);
  func (conn, server->handlers[listener->frontend].user_data);
}

/* An accepted connection before its session starts: reading the PROXY header (on a
 * proxy_protocol listener), then the TLS handshake (on a TLS listener). Both run under
 * one pre-auth deadline, and the connection counts against max_sessions meanwhile. */
typedef struct
{
  PgServer *server; /* owned */
  PgFrontend frontend;
  gboolean tls;
  gchar *listener_key;              /* owned: the listener may be gone after a reload */
  PgConfig *config;                 /* owned */
  GSocketConnection *socket;        /* owned */
  GIOStream *stream;                /* owned: the TLS stream once the handshake is done */
  gchar *peer_ip;                   /* owned: counted in per_address once set */
  GInetSocketAddress *proxied_peer; /* owned: the client a PROXY header named, or NULL */
  gchar *proxy;                     /* owned: the proxy's address when proxied_peer is set */
  guint64 id;
  GSource *timeout;          /* owned */
  gint64 accepted_us;        /* monotonic: the pre-auth deadline counts from here */
  GSource *read_source;      /* owned: waiting for PROXY header bytes */
  GCancellable *cancellable; /* owned */
  PgProxyParser *parser;     /* owned */
} PgAccept;

static void
pg_accept_free (PgAccept *accept)
{
  g_hash_table_remove (accept->server->accepts, accept);
  if (accept->timeout != NULL)
    {
      g_source_destroy (accept->timeout);
      g_source_unref (accept->timeout);
    }
  if (accept->read_source != NULL)
    {
      g_source_destroy (accept->read_source);
      g_source_unref (accept->read_source);
    }
  g_object_unref (accept->cancellable);
  g_clear_object (&accept->stream);
  g_object_unref (accept->socket);
  pg_config_unref (accept->config);
  g_clear_object (&accept->proxied_peer);
  g_free (accept->proxy);
  g_free (accept->peer_ip);
  g_free (accept->listener_key);
  g_clear_pointer (&accept->parser, pg_proxy_parser_free);
  g_object_unref (accept->server);
  g_free (accept);
}

/* Give up on a connection that never became a session. */
static void
pg_accept_drop (PgAccept *accept)
{
  PgServer *server = accept->server;

  g_io_stream_close (G_IO_STREAM (accept->socket), NULL, NULL);
  server->n_handshaking--;
  if (accept->peer_ip != NULL)
    pg_server_address_add (server, accept->peer_ip, -1);
  g_object_ref (server);
  pg_accept_free (accept);
  pg_server_check_idle (server);
  g_object_unref (server);
}

static gboolean
pg_accept_timeout_cb (gpointer user_data)
{
  PgAccept *accept = user_data;

  g_clear_pointer (&accept->timeout, g_source_unref);
  if (accept->read_source != NULL)
    {
      pg_session_info (accept->id, "no PROXY header within the pre-auth timeout");
      pg_accept_drop (accept);
      return G_SOURCE_REMOVE;
    }
  g_cancellable_cancel (accept->cancellable);
  return G_SOURCE_REMOVE;
}

/* Best-effort refusal: on a plain listener say why in the protocol's terms; on a TLS
 * listener there is no session to say it in. Never blocks. */
static void
pg_server_send_refusal (PgFrontend frontend, gboolean tls, GSocketConnection *socket,
                        const char *refusal)
{
  g_autofree gchar *line = NULL;
  GSocket *sock = g_socket_connection_get_socket (socket);

  if (tls)
    return;
  if (frontend == PG_FRONTEND_POP3)
    line = g_strdup_printf ("-ERR [SYS/TEMP] %s, try again later\r\n", refusal);
  else
    line = g_strdup_printf ("* BYE [UNAVAILABLE] %s, try again later\r\n", refusal);
  g_socket_set_blocking (sock, FALSE);
  (void) g_socket_send (sock, line, strlen (line), NULL, NULL);
}

/* The connection passed every check: it becomes a session. */
static void
pg_accept_start_session (PgAccept *accept)
{
  PgServer *server = accept->server;
  PgListener *listener = g_hash_table_lookup (server->listeners, accept->listener_key);
  PgListener gone = { .frontend = accept->frontend, .tls = accept->tls };
  g_autoptr (PgConn) conn = NULL;
  g_autoptr (PgServer) keep = g_object_ref (server);

  server->n_handshaking--;
  conn = pg_conn_new_internal (accept->id, accept->frontend, accept->config, accept->socket,
                               accept->stream != NULL ? accept->stream
                                                      : G_IO_STREAM (accept->socket),
                               accept->tls, accept->tls ? NULL : server->tls_cert);
  pg_conn_set_accepted_internal (conn, accept->accepted_us);
  if (accept->proxied_peer != NULL)
    pg_conn_set_peer_internal (conn, accept->proxied_peer, accept->proxy);
  /* The per-address count moves to the session: it is released when the conn closes. */
  g_clear_pointer (&accept->peer_ip, g_free);
  pg_accept_free (accept);
  /* A listener closed by a reload meanwhile: the session still runs. */
  pg_server_start_session (server, listener != NULL ? listener : &gone, conn);
}

static void
pg_server_handshake_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgAccept *accept = user_data;
  g_autoptr (GError) error = NULL;

  accept->stream = pg_tls_handshake_finish (result, &error);
  if (accept->stream == NULL)
    {
      pg_session_info (accept->id, "TLS handshake with a client failed: %s", error->message);
      pg_metrics_error (PG_METRICS_ERROR_TLS);
      pg_accept_drop (accept);
      return;
    }
  pg_accept_start_session (accept);
}

/* The client's address is known (from the socket or a PROXY header): apply the
 * per-address limit, then the TLS handshake or the session. */
static void
pg_accept_continue (PgAccept *accept, const char *peer_ip, const char *peer_text)
{
  PgServer *server = accept->server;

  if (pg_server_address_count (server, peer_ip) >= accept->config->limits.max_sessions_per_address)
    {
      pg_session_message (accept->id, "refusing %s connection from %s: %s",
                          pg_frontend_to_string (accept->frontend), peer_text,
                          "too many sessions from this address");
      pg_server_send_refusal (accept->frontend, accept->tls, accept->socket,
                              "too many sessions from this address");
      pg_accept_drop (accept);
      return;
    }
  accept->peer_ip = g_strdup (peer_ip);
  pg_server_address_add (server, peer_ip, +1);
  g_socket_set_keepalive (g_socket_connection_get_socket (accept->socket), TRUE);
  /* Replies are written as soon as they are ready (one write per burst of commands): do
   * not let Nagle's algorithm hold a reply behind an unacknowledged one. */
  (void) g_socket_set_option (g_socket_connection_get_socket (accept->socket), IPPROTO_TCP,
                              TCP_NODELAY, 1, NULL);

  if (accept->tls)
    {
      pg_tls_server_handshake_async (G_IO_STREAM (accept->socket), server->tls_cert,
                                     accept->cancellable, pg_server_handshake_cb, accept);
      return;
    }
  pg_accept_start_session (accept);
}

/* The PROXY header is complete. */
static void
pg_accept_proxy_done (PgAccept *accept)
{
  const PgProxyHeader *header = pg_proxy_parser_get_header (accept->parser);
  g_autoptr (GSocketAddress) remote = g_socket_connection_get_remote_address (accept->socket, NULL);
  g_autofree gchar *proxy_text = pg_address_to_string (remote);
  g_autofree gchar *ip_text = NULL;
  g_autofree gchar *peer_text = NULL;
  g_autoptr (GInetAddress) ip = NULL;

  if (header->local)
    {
      /* A health check or an unknown transport: the proxy speaks for itself. */
      g_autofree gchar *own_ip = g_inet_address_to_string (
          g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (remote)));
      pg_accept_continue (accept, own_ip, proxy_text);
      return;
    }
  ip = g_inet_address_new_from_bytes (header->src_addr, header->family == PG_PROXY_FAMILY_INET
                                                            ? G_SOCKET_FAMILY_IPV4
                                                            : G_SOCKET_FAMILY_IPV6);
  accept->proxied_peer = G_INET_SOCKET_ADDRESS (g_inet_socket_address_new (ip, header->src_port));
  accept->proxy = g_steal_pointer (&proxy_text);
  ip_text = g_inet_address_to_string (ip);
  peer_text = pg_address_to_string (accept->proxied_peer);
  pg_accept_continue (accept, ip_text, peer_text);
}

/* Peek at what arrived, feed it to the parser, and consume from the socket exactly what
 * the parser used: whatever follows the header (a TLS ClientHello) stays for the next
 * reader. */
static gboolean
pg_accept_proxy_readable_cb (GSocket *sock, GIOCondition condition, gpointer user_data)
{
  PgAccept *accept = user_data;
  guint8 buf[PG_PROXY_READ_CHUNK];
  GInputVector vec = { buf, sizeof buf };
  gint flags = G_SOCKET_MSG_PEEK;
  g_autoptr (GError) error = NULL;
  gssize n;
  gsize used = 0;
  PgProxyParserStatus status;

  n = g_socket_receive_message (sock, NULL, &vec, 1, NULL, NULL, &flags, NULL, &error);
  if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    return G_SOURCE_CONTINUE;
  if (n <= 0)
    {
      pg_session_info (accept->id, "connection closed before its PROXY header%s%s",
                       error != NULL ? ": " : "", error != NULL ? error->message : "");
      g_clear_pointer (&accept->read_source, g_source_unref);
      pg_accept_drop (accept);
      return G_SOURCE_REMOVE;
    }
  status = pg_proxy_parser_feed (accept->parser, buf, (gsize) n, &used, &error);
  if (status == PG_PROXY_PARSER_ERROR)
    {
      g_autoptr (GSocketAddress) remote = g_socket_get_remote_address (sock, NULL);
      g_autofree gchar *from = pg_address_to_string (remote);

      pg_session_message (accept->id, "refusing %s connection from %s: %s",
                          pg_frontend_to_string (accept->frontend), from, error->message);
      g_clear_pointer (&accept->read_source, g_source_unref);
      pg_accept_drop (accept);
      return G_SOURCE_REMOVE;
    }
  if (status == PG_PROXY_PARSER_NEED_MORE)
    used = (gsize) n;
  /* Consume what the parser took; it is already in the socket buffer, so this does not
   * wait. */
  if (g_socket_receive (sock, (gchar *) buf, used, NULL, &error) != (gssize) used)
    {
      pg_session_info (accept->id, "reading the PROXY header failed");
      g_clear_pointer (&accept->read_source, g_source_unref);
      pg_accept_drop (accept);
      return G_SOURCE_REMOVE;
    }
  if (status == PG_PROXY_PARSER_NEED_MORE)
    return G_SOURCE_CONTINUE;

  g_clear_pointer (&accept->read_source, g_source_unref);
  g_socket_set_blocking (sock, TRUE);
  pg_accept_proxy_done (accept);
  return G_SOURCE_REMOVE;
}

static void
pg_server_incoming (PgListener *listener, GSocketConnection *socket)
{
  PgServer *server = listener->server;
  PgConfig *config = server->config;
  g_autoptr (GSocketAddress) remote = g_socket_connection_get_remote_address (socket, NULL);
  g_autofree gchar *peer_ip = NULL;
  g_autofree gchar *peer_text = pg_address_to_string (remote);
  guint64 id = pg_session_id_next ();
  const char *refusal = NULL;
  gboolean proxied = listener->frontend == PG_FRONTEND_POP3 ? config->pop3.proxy_protocol
                                                            : config->imap.proxy_protocol;
  PgAccept *accept;

  if (remote != NULL && G_IS_INET_SOCKET_ADDRESS (remote))
    peer_ip = g_inet_address_to_string (
        g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (remote)));
  else
    peer_ip = g_strdup ("unknown");

  if (server->shutting_down)
    refusal = "server shutting down";
  else if (pg_server_get_n_sessions (server) >= config->limits.max_sessions)
    refusal = "too many sessions";
  else if (proxied
           && (remote == NULL || !G_IS_INET_SOCKET_ADDRESS (remote)
               || !pg_config_networks_contain (
                   config->proxy.trusted,
                   g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (remote)))))
    refusal = "not a trusted proxy (see [proxy] trusted)";

  if (refusal != NULL)
    {
      pg_session_message (id, "refusing %s connection from %s: %s",
                          pg_frontend_to_string (listener->frontend), peer_text, refusal);
      pg_metrics_error (PG_METRICS_ERROR_LIMIT);
      /* A peer that should have sent a PROXY header is not a client to talk to. */
      if (!proxied)
        pg_server_send_refusal (listener->frontend, listener->tls, socket, refusal);
      g_io_stream_close (G_IO_STREAM (socket), NULL, NULL);
      return;
    }

  accept = g_new0 (PgAccept, 1);
  accept->server = g_object_ref (server);
  accept->frontend = listener->frontend;
  accept->tls = listener->tls;
  accept->listener_key = g_strdup (listener->key);
  accept->config = pg_config_ref (config);
  accept->socket = g_object_ref (socket);
  accept->id = id;
  accept->accepted_us = g_get_monotonic_time ();
  accept->cancellable = g_cancellable_new ();
  server->n_handshaking++;
  g_hash_table_add (server->accepts, accept);

  if (!proxied && !listener->tls)
    {
      /* The common case, with no deadline to arm: straight to the session. */
      pg_accept_continue (accept, peer_ip, peer_text);
      return;
    }

  accept->timeout = g_timeout_source_new (config->limits.preauth_timeout_ms);
  g_source_set_callback (accept->timeout, pg_accept_timeout_cb, accept, NULL);
  g_source_set_static_name (accept->timeout, "[popgate] accept deadline");
  g_source_attach (accept->timeout, g_main_context_get_thread_default ());
  if (!proxied)
    {
      pg_accept_continue (accept, peer_ip, peer_text);
      return;
    }

  accept->parser = pg_proxy_parser_new ();
  {
    GSocket *sock = g_socket_connection_get_socket (socket);

    g_socket_set_blocking (sock, FALSE);
    accept->read_source = g_socket_create_source (sock, G_IO_IN, NULL);
    g_source_set_callback (accept->read_source,
                           (GSourceFunc) (void (*) (void)) pg_accept_proxy_readable_cb, accept,
                           NULL);
    g_source_set_static_name (accept->read_source, "[popgate] PROXY header");
    g_source_attach (accept->read_source, g_main_context_get_thread_default ());
  }
  return;
}

/* --- listeners --------------------------------------------------------------------------- */

static gchar *
pg_listener_key (PgFrontend frontend, gboolean tls, const PgListenAddr *addr)
{
  return g_strdup_printf ("%s|%s|%s|%u", pg_frontend_to_string (frontend), tls ? "tls" : "plain",
                          addr->host, addr->port);
}

/* Stop accepting: drop the read sources and any pause timer (the sockets stay bound). */
static void
pg_listener_stop (PgListener *listener)
{
  if (listener->sources != NULL)
    {
      for (guint i = 0; i < listener->sources->len; i++)
        g_source_destroy (g_ptr_array_index (listener->sources, i));
      g_ptr_array_set_size (listener->sources, 0);
    }
  if (listener->resume != NULL)
    {
      g_source_destroy (listener->resume);
      g_clear_pointer (&listener->resume, g_source_unref);
    }
}

static gboolean pg_listener_accept_cb (GSocket *socket, GIOCondition condition, gpointer user_data);

/* Accept on every socket (again). Harmless while already accepting. */
static void
pg_listener_start (PgListener *listener)
{
  if (listener->sources->len > 0 || listener->resume != NULL)
    return;
  for (guint i = 0; i < listener->sockets->len; i++)
    {
      GSource *source
          = g_socket_create_source (g_ptr_array_index (listener->sockets, i), G_IO_IN, NULL);

      g_source_set_callback (source, (GSourceFunc) (void (*) (void)) pg_listener_accept_cb,
                             listener, NULL);
      g_source_set_static_name (source, "[popgate] listener");
      g_source_attach (source, g_main_context_get_thread_default ());
      g_ptr_array_add (listener->sources, source);
    }
}

static gboolean
pg_listener_resume_cb (gpointer user_data)
{
  PgListener *listener = user_data;

  g_clear_pointer (&listener->resume, g_source_unref);
  pg_listener_start (listener);
  return G_SOURCE_REMOVE;
}

/* Out of descriptors (EMFILE/ENFILE): the pending connection stays in the kernel's
 * queue, and the socket stays readable, so accepting on would spin. Stop for a while, as
 * nginx does. Linux reports EMFILE before it looks at the queue, so the accept after the
 * one that took the last descriptor fails too: one warning per
 * PG_ACCEPT_LOG_INTERVAL_S, not one per episode. */
static void
pg_listener_pause (PgListener *listener, const GError *error)
{
  gint64 now = g_get_monotonic_time ();

  if (listener->out_of_fds_logged_us == 0
      || now - listener->out_of_fds_logged_us >= PG_ACCEPT_LOG_INTERVAL_S * G_USEC_PER_SEC)
    {
      pg_log_session (G_LOG_LEVEL_WARNING, 0, G_LOG_DOMAIN,
                      "cannot accept on %s: %s; accepting again every %u ms until a descriptor "
                      "is free",
                      listener->bound, error->message, PG_ACCEPT_PAUSE_MS);
      listener->out_of_fds_logged_us = now;
      listener->out_of_fds = TRUE;
    }
  pg_metrics_error (PG_METRICS_ERROR_LIMIT);
  pg_listener_stop (listener);
  listener->resume = g_timeout_source_new (PG_ACCEPT_PAUSE_MS);
  g_source_set_callback (listener->resume, pg_listener_resume_cb, listener, NULL);
  g_source_set_static_name (listener->resume, "[popgate] accept pause");
  g_source_attach (listener->resume, g_main_context_get_thread_default ());
}

static gboolean
pg_listener_accept_cb (GSocket *socket, GIOCondition condition, gpointer user_data)
{
  PgListener *listener = user_data;

  for (guint n = 0; n < PG_ACCEPT_BATCH; n++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GSocket) accepted = g_socket_accept (socket, NULL, &error);
      g_autoptr (GSocketConnection) connection = NULL;

      if (accepted == NULL)
        {
          if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TOO_MANY_OPEN_FILES)
              || g_error_matches (error, G_IO_ERROR, G_IO_ERROR_NO_SPACE))
            {
              pg_listener_pause (listener, error);
              return G_SOURCE_REMOVE; /* pg_listener_pause destroyed this source */
            }
          /* WOULD_BLOCK: the queue is empty. Anything else (a connection reset while
           * queued) concerns that one connection: the next wake-up goes on. */
          if (!g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            pg_log_session (G_LOG_LEVEL_DEBUG, 0, G_LOG_DOMAIN, "accept on %s: %s", listener->bound,
                            error->message);
          break;
        }
      if (listener->out_of_fds)
        {
          pg_log_session (G_LOG_LEVEL_MESSAGE, 0, G_LOG_DOMAIN, "accepting on %s again",
                          listener->bound);
          listener->out_of_fds = FALSE;
        }
      connection = g_socket_connection_factory_create_connection (accepted);
      pg_server_incoming (listener, connection);
    }
  return G_SOURCE_CONTINUE;
}

/* A listening TCP socket on `address`: SO_REUSEADDR, nginx's backlog, non-blocking;
 * dual_stack: an IPv6 socket that takes IPv4 too (else the system's default). */
static GSocket *
pg_listener_socket_new (GSocketAddress *address, gboolean dual_stack, GError **error)
{
  g_autoptr (GSocket) socket = g_socket_new (g_socket_address_get_family (address),
                                             G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, error);

  if (socket == NULL)
    return NULL;
  if (dual_stack && !g_socket_set_option (socket, IPPROTO_IPV6, IPV6_V6ONLY, 0, error))
    return NULL;
  g_socket_set_blocking (socket, FALSE);
  /* A backlog like nginx's default, so a burst of clients is not refused. */
  g_socket_set_listen_backlog (socket, PG_LISTEN_BACKLOG);
  if (!g_socket_bind (socket, address, TRUE, error) || !g_socket_listen (socket, error))
    return NULL;
  return g_steal_pointer (&socket);
}

/* "*:PORT": every IPv4 and IPv6 address. One dual-stack IPv6 socket where the system has
 * IPv6; else, or where it will not take IPv4 too, an IPv4 socket as well. */
static gboolean
pg_listener_bind_any (GPtrArray *sockets, guint16 port, GError **error)
{
  g_autoptr (GInetAddress) any6 = g_inet_address_new_any (G_SOCKET_FAMILY_IPV6);
  g_autoptr (GInetAddress) any4 = g_inet_address_new_any (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address6 = g_inet_socket_address_new (any6, port);
  g_autoptr (GSocketAddress) address4 = g_inet_socket_address_new (any4, port);
  GSocket *socket6 = pg_listener_socket_new (address6, TRUE, NULL);
  GSocket *socket4;

  if (socket6 != NULL)
    {
      g_ptr_array_add (sockets, socket6);
      if (g_socket_speaks_ipv4 (socket6))
        return TRUE;
    }
  socket4 = pg_listener_socket_new (address4, FALSE, error);
  if (socket4 == NULL)
    return FALSE;
  g_ptr_array_add (sockets, socket4);
  return TRUE;
}

static PgListener *
pg_listener_new (PgServer *server, PgFrontend frontend, gboolean tls, GPtrArray *sockets)
{
  PgListener *listener = g_new0 (PgListener, 1);

  listener->frontend = frontend;
  listener->tls = tls;
  listener->server = server;
  listener->sockets = sockets;
  listener->sources = g_ptr_array_new_with_free_func ((GDestroyNotify) g_source_unref);
  return listener;
}

/* Name the address and front end; for a privileged port refused, say how to get it. */
static void
pg_listener_explain_bind_error (GError **error, const PgListenAddr *addr, const char *shown,
                                PgFrontend frontend)
{
  if (addr->port < 1024 && g_error_matches (*error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED))
    g_prefix_error (error,
                    "cannot listen on %s for %s (ports below 1024 need privileges: use the "
                    "socket units, e.g. systemctl enable --now popgate.socket, or a port from "
                    "1024 up): ",
                    shown, pg_frontend_to_string (frontend));
  else
    g_prefix_error (error, "cannot listen on %s for %s: ", shown, pg_frontend_to_string (frontend));
}

static PgListener *
pg_listener_open (PgServer *server, PgFrontend frontend, gboolean tls, const PgListenAddr *addr,
                  GError **error)
{
  g_autoptr (GInetAddress) ip = g_inet_address_new_from_string (addr->host);
  g_autoptr (GSocketAddress) effective = NULL;
  g_autoptr (GPtrArray) sockets = g_ptr_array_new_with_free_func (g_object_unref);
  g_autofree gchar *shown = pg_listen_addr_to_string (addr);
  PgListener *listener;

  if (addr->any)
    {
      if (!pg_listener_bind_any (sockets, addr->port, error))
        {
          pg_listener_explain_bind_error (error, addr, shown, frontend);
          return NULL;
        }
    }
  else if (ip == NULL)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "not an IP address: %s", addr->host);
      return NULL;
    }
  else
    {
      g_autoptr (GSocketAddress) sockaddr = g_inet_socket_address_new (ip, addr->port);
      GSocket *socket = pg_listener_socket_new (sockaddr, FALSE, error);

      if (socket == NULL)
        {
          pg_listener_explain_bind_error (error, addr, shown, frontend);
          return NULL;
        }
      g_ptr_array_add (sockets, socket);
      effective = g_socket_get_local_address (socket, NULL);
    }

  listener = pg_listener_new (server, frontend, tls, g_steal_pointer (&sockets));
  listener->key = pg_listener_key (frontend, tls, addr);
  listener->bound = effective != NULL ? pg_address_to_string (effective) : g_steal_pointer (&shown);
  return listener;
}

/* Open the listeners `config` asks for that are not in `keep`, into `out` (key →
 * PgListener). Listeners already in `keep` are moved from keep to out. */
static gboolean
pg_server_open_listeners (PgServer *server, PgConfig *config, GHashTable *keep, GHashTable *out,
                          GError **error)
{
  struct
  {
    PgFrontend frontend;
    gboolean tls;
    GPtrArray *addrs;
  } sets[] = {
    { PG_FRONTEND_POP3, FALSE, config->pop3.listen },
    { PG_FRONTEND_POP3, TRUE, config->pop3.tls_listen },
    { PG_FRONTEND_IMAP, FALSE, config->imap.listen },
    { PG_FRONTEND_IMAP, TRUE, config->imap.tls_listen },
  };

  for (gsize s = 0; s < G_N_ELEMENTS (sets); s++)
    {
      if (sets[s].addrs == NULL || pg_server_has_inherited (server, sets[s].frontend, sets[s].tls))
        continue;
      for (guint i = 0; i < sets[s].addrs->len; i++)
        {
          const PgListenAddr *addr = g_ptr_array_index (sets[s].addrs, i);
          g_autofree gchar *key = pg_listener_key (sets[s].frontend, sets[s].tls, addr);
          PgListener *listener = NULL;
          gpointer old_key = NULL;

          if (keep != NULL
              && g_hash_table_steal_extended (keep, key, &old_key, (gpointer *) &listener))
            {
              g_hash_table_insert (out, listener->key, listener);
              continue;
            }
          listener = pg_listener_open (server, sets[s].frontend, sets[s].tls, addr, error);
          if (listener == NULL)
            return FALSE;
          g_hash_table_insert (out, listener->key, listener);
        }
    }
  /* Inherited sockets are not in any config: a reload keeps them as they are. */
  if (keep != NULL)
    {
      GHashTableIter iter;
      gpointer value;

      g_hash_table_iter_init (&iter, keep);
      while (g_hash_table_iter_next (&iter, NULL, &value))
        {
          PgListener *listener = value;

          if (!listener->inherited)
            continue;
          g_hash_table_iter_steal (&iter);
          g_hash_table_insert (out, listener->key, listener);
        }
    }
  return TRUE;
}

static GTlsCertificate *
pg_server_load_certificate (PgConfig *config, GError **error)
{
  GTlsCertificate *cert;

  if (config->tls.cert == NULL || config->tls.key == NULL)
    return NULL;
  cert = pg_tls_load_certificate (config->tls.cert, config->tls.key, error);
  if (cert == NULL)
    g_prefix_error (error, "%s: [tls] cert/key: ", config->source);
  return cert;
}

static gboolean
pg_server_wants_tls (PgServer *server, PgConfig *config)
{
  return (config->pop3.tls_listen != NULL && config->pop3.tls_listen->len > 0)
         || (config->imap.tls_listen != NULL && config->imap.tls_listen->len > 0)
         || pg_server_has_inherited (server, PG_FRONTEND_POP3, TRUE)
         || pg_server_has_inherited (server, PG_FRONTEND_IMAP, TRUE);
}

gboolean
pg_server_has_inherited (PgServer *server, PgFrontend frontend, gboolean tls)
{
  GHashTableIter iter;
  gpointer value;

  g_hash_table_iter_init (&iter, server->listeners);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    {
      PgListener *listener = value;

      if (listener->inherited && listener->frontend == frontend && listener->tls == tls)
        return TRUE;
    }
  return FALSE;
}

gboolean
pg_server_adopt_socket (PgServer *server, PgFrontend frontend, gboolean tls, GSocket *socket,
                        GError **error)
{
  static guint serial = 0;
  g_autoptr (GSocketAddress) local = NULL;
  PgListener *listener;

  g_return_val_if_fail (frontend < PG_FRONTEND_COUNT, FALSE);
  g_return_val_if_fail (G_IS_SOCKET (socket), FALSE);

  local = g_socket_get_local_address (socket, error);
  if (local == NULL)
    {
      g_prefix_error (error, "inherited %s socket: ", pg_frontend_to_string (frontend));
      return FALSE;
    }
  /* An inherited socket is listening already (systemd did bind and listen). */
  g_socket_set_blocking (socket, FALSE);
  listener
      = pg_listener_new (server, frontend, tls, g_ptr_array_new_with_free_func (g_object_unref));
  g_ptr_array_add (listener->sockets, g_object_ref (socket));
  listener->key = g_strdup_printf ("%s|%s|inherited|%u", pg_frontend_to_string (frontend),
                                   tls ? "tls" : "plain", ++serial);
  listener->bound = pg_address_to_string (local);
  listener->inherited = TRUE;
  listener->adopted = TRUE;
  g_hash_table_insert (server->listeners, listener->key, listener);
  return TRUE;
}

/* Move every listener of `from` into the server's table and start accepting on it. */
static void
pg_server_adopt_listeners (PgServer *server, GHashTable *from)
{
  GHashTableIter iter;
  gpointer key, value;

  g_hash_table_iter_init (&iter, from);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      PgListener *listener = value;
      g_hash_table_iter_steal (&iter);
      listener->adopted = TRUE;
      g_hash_table_insert (server->listeners, listener->key, listener);
      pg_listener_start (listener);
    }
}

gboolean
pg_server_start (PgServer *server, GError **error)
{
  g_autoptr (GHashTable) opened
      = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) pg_listener_free);
  g_autoptr (GTlsCertificate) cert = NULL;
  g_autoptr (GError) cert_error = NULL;

  cert = pg_server_load_certificate (server->config, &cert_error);
  if (cert == NULL && cert_error != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&cert_error));
      return FALSE;
    }
  if (cert == NULL && pg_server_wants_tls (server, server->config))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "%s: [tls] cert and key are needed for tls_listen", server->config->source);
      return FALSE;
    }
  if (!pg_server_open_listeners (server, server->config, NULL, opened, error))
    return FALSE;
  g_set_object (&server->tls_cert, cert);
  pg_server_adopt_listeners (server, opened);
  {
    GHashTableIter iter;
    gpointer value;

    g_hash_table_iter_init (&iter, server->listeners);
    while (g_hash_table_iter_next (&iter, NULL, &value))
      if (((PgListener *) value)->inherited)
        pg_listener_start (value);
  }
  return TRUE;
}

gboolean
pg_server_reload (PgServer *server, PgConfig *config, GError **error)
{
  g_autoptr (GHashTable) next
      = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) pg_listener_free);
  g_autoptr (GTlsCertificate) cert = NULL;
  g_autoptr (GError) cert_error = NULL;
  GHashTableIter iter;
  gpointer value;

  if (server->shutting_down)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "shutting down: reload ignored");
      return FALSE;
    }
  cert = pg_server_load_certificate (config, &cert_error);
  if (cert == NULL && cert_error != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&cert_error));
      return FALSE;
    }
  if (cert == NULL && pg_server_wants_tls (server, config))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "%s: [tls] cert and key are needed for tls_listen", config->source);
      return FALSE;
    }
  /* Kept listeners move from server->listeners to next; on failure move them back. */
  if (!pg_server_open_listeners (server, config, server->listeners, next, error))
    {
      g_hash_table_iter_init (&iter, next);
      while (g_hash_table_iter_next (&iter, NULL, &value))
        {
          PgListener *listener = value;
          if (listener->adopted)
            {
              g_hash_table_iter_steal (&iter);
              g_hash_table_insert (server->listeners, listener->key, listener);
            }
        }
      return FALSE;
    }
  /* What is left in server->listeners was dropped from the config: close it. */
  g_hash_table_remove_all (server->listeners);
  pg_server_adopt_listeners (server, next);
  g_set_object (&server->tls_cert, cert);
  pg_config_unref (server->config);
  server->config = pg_config_ref (config);
  return TRUE;
}

static gboolean
pg_server_shutdown_deadline_cb (gpointer user_data)
{
  PgServer *server = user_data;
  g_autoptr (GPtrArray) conns = g_ptr_array_new_with_free_func (g_object_unref);
  GHashTableIter iter;
  gpointer conn;

  g_clear_pointer (&server->shutdown_source, g_source_unref);
  g_hash_table_iter_init (&iter, server->conns);
  while (g_hash_table_iter_next (&iter, &conn, NULL))
    g_ptr_array_add (conns, g_object_ref (conn));
  if (conns->len > 0)
    pg_log_session (G_LOG_LEVEL_MESSAGE, 0, G_LOG_DOMAIN,
                    "shutdown deadline reached: closing %u sessions", conns->len);
  for (guint i = 0; i < conns->len; i++)
    pg_conn_abort (g_ptr_array_index (conns, i));
  return G_SOURCE_REMOVE;
}

void
pg_server_shutdown (PgServer *server)
{
  g_autoptr (GPtrArray) conns = g_ptr_array_new_with_free_func (g_object_unref);
  GHashTableIter iter;
  gpointer conn;

  if (server->shutting_down)
    return;
  server->shutting_down = TRUE;
  g_hash_table_remove_all (server->listeners);

  /* Connections still sending a PROXY header or doing a TLS handshake never became
   * sessions: stop them now rather than at their pre-auth deadline. */
  {
    g_autoptr (GList) pending = g_hash_table_get_keys (server->accepts);

    for (GList *l = pending; l != NULL; l = l->next)
      {
        PgAccept *accept = l->data;

        if (accept->read_source != NULL)
          pg_accept_drop (accept);
        else
          g_cancellable_cancel (accept->cancellable);
      }
  }

  g_hash_table_iter_init (&iter, server->conns);
  while (g_hash_table_iter_next (&iter, &conn, NULL))
    g_ptr_array_add (conns, g_object_ref (conn));
  for (guint i = 0; i < conns->len; i++)
    pg_conn_emit_shutdown_internal (g_ptr_array_index (conns, i));

  server->shutdown_source = g_timeout_source_new (server->config->limits.shutdown_timeout_ms);
  g_source_set_callback (server->shutdown_source, pg_server_shutdown_deadline_cb, server, NULL);
  g_source_attach (server->shutdown_source, g_main_context_get_thread_default ());
  pg_server_check_idle (server);
}

GPtrArray *
pg_server_get_bound_addresses (PgServer *server, PgFrontend frontend, gboolean tls)
{
  GPtrArray *out = g_ptr_array_new_with_free_func (g_free);
  GHashTableIter iter;
  gpointer value;

  g_hash_table_iter_init (&iter, server->listeners);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    {
      PgListener *listener = value;
      if (listener->frontend == frontend && listener->tls == tls)
        g_ptr_array_add (out, g_strdup (listener->bound));
    }
  return out;
}
