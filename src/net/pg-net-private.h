/* popgate — net layer internals shared by pg-net-conn.c and pg-net-server.c.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#pragma once

#include "popgate/pg-net.h"

PgConn *pg_conn_new_internal (guint64 id, PgFrontend frontend, PgConfig *config,
                              GSocketConnection *socket, GIOStream *stream, gboolean tls,
                              GTlsCertificate *tls_cert);
void pg_conn_emit_shutdown_internal (PgConn *conn);
