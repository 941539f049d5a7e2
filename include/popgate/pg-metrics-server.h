/* popgate — the metrics endpoint: `GET /metrics` over HTTP (libsoup 3's SoupServer on the
 * main loop) at every [metrics] listen address, answering OpenMetrics 1.0 text, or
 * Prometheus 0.0.4 text to a client that accepts only text/plain.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>
#include <libsoup/soup.h>

#include "popgate/pg-config.h"

G_BEGIN_DECLS

#define PG_TYPE_METRICS_SERVER (pg_metrics_server_get_type ())
G_DECLARE_FINAL_TYPE (PgMetricsServer, pg_metrics_server, PG, METRICS_SERVER, GObject)

/* A server with no listeners. */
PgMetricsServer *pg_metrics_server_new (void);

/* Listen on config->metrics.listen (at start and on reload): addresses that stay keep
 * their socket, new ones are bound, dropped ones closed. When one cannot be bound nothing
 * changes and the error says which. An empty list closes every listener. */
gboolean pg_metrics_server_apply (PgMetricsServer *self, PgConfig *config, GError **error);

/* The addresses bound now (with the real port for port 0), as "host:port" strings. */
GPtrArray *pg_metrics_server_get_bound_addresses (PgMetricsServer *self);

/* Shared with the status page (src/status): bind `server` to `addr`; errors name
 * "[group] listen ADDR". */
gboolean pg_metrics_server_listen_on (SoupServer *server, const PgListenAddr *addr,
                                      const char *group, GError **error);
/* Append the addresses `server` is bound to, as "host:port" strings, to `out`. */
void pg_metrics_server_append_addresses (SoupServer *server, GPtrArray *out);

/* Choose the format for an Accept header value (NULL: none sent). Exposed for tests. */
gboolean pg_metrics_server_wants_prometheus (const char *accept);

G_END_DECLS
