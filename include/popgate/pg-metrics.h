/* popgate — metrics: cheap counters, gauges and latency histograms, rendered as
 * OpenMetrics 1.0 or Prometheus 0.0.4 text.
 *
 * Two layers:
 * - A small generic registry (PgMetricsRegistry) of metric families with at most two
 *   labels whose values come from fixed tables given at registration. Every series is
 *   allocated when its family is registered, so updating one is an array index and an
 *   add: no allocation, no lookup, no lock (popgate has one thread).
 * - popgate's own families in a process-wide registry, updated through the typed calls
 *   below (pg_metrics_login() etc.) that the front ends, the upstream client and the net
 *   layer make. Metric names start with "popgate_".
 *
 * The HTTP endpoint that serves the text lives in src/metrics (pg-metrics-server.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* --- generic registry ------------------------------------------------------------------ */

typedef enum
{
  PG_METRICS_COUNTER,
  PG_METRICS_GAUGE,
  PG_METRICS_HISTOGRAM, /* observations in microseconds, rendered in seconds */
  /* OpenMetrics "info": labels describe the target, the value is 1; the sample is
   * NAME_info (a gauge of that name in Prometheus 0.0.4 text). */
  PG_METRICS_INFO,
} PgMetricsType;

typedef enum
{
  PG_METRICS_FORMAT_OPENMETRICS, /* application/openmetrics-text; version=1.0.0 */
  PG_METRICS_FORMAT_PROMETHEUS,  /* text/plain; version=0.0.4 */
} PgMetricsFormat;

/* Content-Type of each format (with charset). */
const char *pg_metrics_format_content_type (PgMetricsFormat format);

typedef struct _PgMetricsRegistry PgMetricsRegistry;
typedef struct _PgMetricsFamily PgMetricsFamily;

/* A label: its name and the NULL-terminated table of the values it may take. Both are
 * kept by reference and must outlive the registry (use static tables). */
typedef struct
{
  const char *name;
  const char *const *values;
} PgMetricsLabel;

PgMetricsRegistry *pg_metrics_registry_new (void);
void pg_metrics_registry_free (PgMetricsRegistry *registry);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgMetricsRegistry, pg_metrics_registry_free)

/* Register a family. `name` is the family name without "_total" (counters get it on their
 * samples); `labels` has n_labels (0, 1 or 2) entries; histograms take ascending bucket
 * bounds in microseconds (+Inf is added). Strings are kept by reference. The family is
 * owned by the registry; families render in registration order. */
PgMetricsFamily *pg_metrics_registry_add (PgMetricsRegistry *registry, PgMetricsType type,
                                          const char *name, const char *help,
                                          const PgMetricsLabel *labels, guint n_labels,
                                          const guint64 *buckets_us, guint n_buckets);

/* Declare the family's unit (OpenMetrics "# UNIT"; the family name must end in
 * "_<unit>"). A counter or gauge in "seconds" takes its values in microseconds and
 * renders them as seconds, like a histogram. `unit` is kept by reference. */
void pg_metrics_family_set_unit (PgMetricsFamily *family, const char *unit);

/* Series are addressed by the indexes of their label values (0 for an absent label).
 * Out-of-range indexes are a programming error (g_return_if_fail). */
void pg_metrics_family_add (PgMetricsFamily *family, guint i1, guint i2, gint64 delta);
void pg_metrics_family_set (PgMetricsFamily *family, guint i1, guint i2, gint64 value);
gint64 pg_metrics_family_get (PgMetricsFamily *family, guint i1, guint i2);
void pg_metrics_family_observe_us (PgMetricsFamily *family, guint i1, guint i2, guint64 us);
/* A histogram series' observation count and sum (microseconds). */
void pg_metrics_family_get_histogram (PgMetricsFamily *family, guint i1, guint i2,
                                      guint64 *out_count, guint64 *out_sum_us);

/* Append the whole registry as text in `format`, ending with "# EOF\n" (a plain comment
 * for Prometheus 0.0.4 parsers). */
void pg_metrics_registry_render (PgMetricsRegistry *registry, PgMetricsFormat format, GString *out);

/* Append a label value escaped for the text formats (\\, \" and \n). */
void pg_metrics_escape_label_value (GString *out, const char *value);

/* --- popgate's metrics ------------------------------------------------------------------ */

/* The same order as PgFrontend (pg-net.h; src/net/pg-net-conn.c checks it). */
typedef enum
{
  PG_METRICS_FRONTEND_POP3,
  PG_METRICS_FRONTEND_IMAP,
  PG_METRICS_FRONTEND_COUNT,
} PgMetricsFrontend;

/* Where a session is, across protocols: POP3 AUTHORIZATION / IMAP not authenticated is
 * preauth; POP3 TRANSACTION / IMAP authenticated or selected is authenticated; IMAP IDLE
 * is idle; POP3 UPDATE (applying QUIT) is update. NONE: not counted (not started, or
 * ended). */
typedef enum
{
  PG_METRICS_SESSION_NONE = -1,
  PG_METRICS_SESSION_PREAUTH,
  PG_METRICS_SESSION_AUTHENTICATED,
  PG_METRICS_SESSION_IDLE,
  PG_METRICS_SESSION_UPDATE,
  PG_METRICS_SESSION_COUNT,
} PgMetricsSessionState;

typedef enum
{
  PG_METRICS_LOGIN_OK,
  PG_METRICS_LOGIN_AUTH_FAILED,
  PG_METRICS_LOGIN_UPSTREAM_UNAVAILABLE,
  PG_METRICS_LOGIN_IN_USE,
  PG_METRICS_LOGIN_COUNT,
} PgMetricsLogin;

typedef enum
{
  PG_METRICS_DIRECTION_IN,  /* from the client */
  PG_METRICS_DIRECTION_OUT, /* to the client */
  PG_METRICS_DIRECTION_COUNT,
} PgMetricsDirection;

/* What QUIT did with the messages a POP3 client DELE'd. */
typedef enum
{
  PG_METRICS_DELE_EXPUNGED, /* UID EXPUNGE'd */
  PG_METRICS_DELE_MOVED,    /* moved to the move:MAILBOX */
  PG_METRICS_DELE_KEPT,     /* delete = keep: hidden from that client only */
  PG_METRICS_DELE_FAILED,   /* not removed (refused, or left flagged without UIDPLUS) */
  PG_METRICS_DELE_COUNT,
} PgMetricsDele;

/* Kinds of error, after PgError, plus GIO's I/O errors and the rest. */
typedef enum
{
  PG_METRICS_ERROR_PROTOCOL,
  PG_METRICS_ERROR_LINE_TOO_LONG,
  PG_METRICS_ERROR_LIMIT,
  PG_METRICS_ERROR_AUTH_FAILED,
  PG_METRICS_ERROR_UPSTREAM,
  PG_METRICS_ERROR_TLS,
  PG_METRICS_ERROR_CONFIG,
  PG_METRICS_ERROR_TIMEOUT,
  PG_METRICS_ERROR_IO,
  PG_METRICS_ERROR_OTHER,
  PG_METRICS_ERROR_COUNT,
} PgMetricsError;

/* How popgate logged in upstream (popgate_upstream_logins_total{mechanism}). */
typedef enum
{
  PG_METRICS_MECHANISM_PLAIN,
  PG_METRICS_MECHANISM_LOGIN,
  PG_METRICS_MECHANISM_XOAUTH2,
  PG_METRICS_MECHANISM_OAUTHBEARER,
  PG_METRICS_MECHANISM_COUNT,
} PgMetricsMechanism;

/* The process-wide registry (created on first use). */
PgMetricsRegistry *pg_metrics_get_default (void);
/* Zero every popgate metric (tests) — or create the registry now. */
void pg_metrics_reset (void);
/* Free the process-wide registry (at exit, so leak checkers stay quiet). */
void pg_metrics_shutdown (void);
/* Render the process-wide registry into a new string (the process_* families are read
 * from /proc/self first). */
gchar *pg_metrics_render (PgMetricsFormat format, gsize *out_len);

/* A session moved from one state to another: NONE → x when it starts (also counts it in
 * popgate_sessions_total), x → NONE when it ends. */
void pg_metrics_session_state (PgMetricsFrontend frontend, PgMetricsSessionState from,
                               PgMetricsSessionState to);
void pg_metrics_login (PgMetricsFrontend frontend, PgMetricsLogin result);
void pg_metrics_client_bytes (PgMetricsFrontend frontend, PgMetricsDirection direction, guint64 n);
void pg_metrics_dele (PgMetricsDele outcome, guint n);
void pg_metrics_error (PgMetricsError kind);
/* Count an error by what it is (PG_ERROR code, G_IO_ERROR, G_TLS_ERROR, other). */
void pg_metrics_gerror (const GError *error);
/* An upstream command completed (tagged reply) after `us` microseconds. `command` is the
 * command as sent ("UID FETCH", "LOGIN"); "UID " is dropped and unknown ones count as
 * "OTHER". */
void pg_metrics_upstream_command (const char *command, gint64 us);
/* A successful upstream login with `mechanism`. */
void pg_metrics_upstream_login (PgMetricsMechanism mechanism);
/* A failed login delayed by the penalty: for its address, or process-wide (`global`). */
void pg_metrics_login_penalty (gboolean global);
/* A token refresh for `upstream` (its name) ended (popgate_oauth2_refreshes_total{upstream,
 * result}). Upstream names become label values as they first appear, up to
 * PG_METRICS_MAX_UPSTREAMS; further names count as "other". */
void pg_metrics_oauth2_refresh (const char *upstream, gboolean ok);
/* The count so far (tests). */
gint64 pg_metrics_oauth2_refresh_count (const char *upstream, gboolean ok);

G_END_DECLS
