/* popgate tests — a small checker for OpenMetrics / Prometheus text: every sample line
 * belongs to a family declared by a TYPE line before it, label syntax and escapes are
 * valid, values parse, histogram buckets are cumulative, and the text ends with "# EOF".
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-metrics.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* Parse and check `text`. On success returns series → value: the key is the sample name
 * and its labels exactly as written ("popgate_logins_total{frontend=\"pop3\",result=\"ok\"}"),
 * the value a gdouble*. On failure the error names the line. */
GHashTable *pg_test_openmetrics_parse (const char *text, PgMetricsFormat format, GError **error);

/* The value of one series; fails the test if it is missing. */
gdouble pg_test_openmetrics_get (GHashTable *samples, const char *series);

G_END_DECLS
