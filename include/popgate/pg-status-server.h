/* popgate — the live status page and its JSON/SSE API (src/status), at [status] listen:
 *
 *   GET /                          the page (HTML/CSS/JS compiled in as a GResource)
 *   GET /api/sessions              {"now_ms":…, "sessions":[{…}, …], "recent":[{…}, …]}
 *   GET /api/sessions/ID/trace     {"id":…, "seq":…, "lines":[{"seq":…,"line":…}, …]}
 *                                  (live sessions and the PG_STATUS_RECENT_SESSIONS
 *                                  that ended last)
 *   GET /api/events[?trace=ID|all] Server-Sent Events: "sessions" (a snapshot, first),
 *                                  "start", "change", "end", and "trace" lines of the
 *                                  session(s) asked for
 *
 * Served by libsoup 3's SoupServer on the main loop, like the metrics endpoint but on its
 * own addresses: the status page has its own access rules (loopback clients only unless
 * allow_remote; HTTP basic auth from [status] auth_file) that a metrics scraper should not
 * be subject to. Events are written without blocking; a subscriber whose queue passes
 * PG_STATUS_SUBSCRIBER_QUEUE is dropped.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"

G_BEGIN_DECLS

#define PG_TYPE_STATUS_SERVER (pg_status_server_get_type ())
G_DECLARE_FINAL_TYPE (PgStatusServer, pg_status_server, PG, STATUS_SERVER, GObject)

/* A server with no listener. It observes the session registry (pg-status.h) while it
 * listens. */
PgStatusServer *pg_status_server_new (void);

/* Listen on config->status.listen (at start and on reload). The same addresses keep their
 * sockets and subscribers (the new config's users apply at once); a changed list rebinds
 * (subscribers reconnect). When an address cannot be bound nothing changes. An empty list
 * closes the page. */
gboolean pg_status_server_apply (PgStatusServer *self, PgConfig *config, GError **error);

/* The addresses bound now ("host:port", the real port for port 0). */
GPtrArray *pg_status_server_get_bound_addresses (PgStatusServer *self);

/* Subscribers now, and how many were dropped for falling behind (tests, logs). */
guint pg_status_server_get_n_subscribers (PgStatusServer *self);
guint pg_status_server_get_n_dropped (PgStatusServer *self);

G_END_DECLS
