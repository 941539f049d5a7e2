/* popgate — net layer internals shared by pg-net-conn.c and pg-net-server.c.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#pragma once

#include "popgate/pg-net.h"

PgConn *pg_conn_new_internal (guint64 id, PgFrontend frontend, PgConfig *config,
                              GSocketConnection *socket, GIOStream *stream, gboolean tls,
                              GTlsCertificate *tls_cert);
void pg_conn_emit_shutdown_internal (PgConn *conn);
/* The client named by a PROXY header replaces the socket's peer; `proxy` is the proxy's
 * own address, for logs. */
void pg_conn_set_peer_internal (PgConn *conn, GInetSocketAddress *peer, const char *proxy);
/* When the listener accepted the connection (monotonic), before a PROXY header or TLS
 * handshake: pg_conn_set_deadline() counts from there. Default: when the conn was made. */
void pg_conn_set_accepted_internal (PgConn *conn, gint64 accepted_us);
