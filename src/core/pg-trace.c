/* popgate — the audit trace switch and its log lines (see pg-trace.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-trace.h"

#include "popgate/pg-core.h"
#include "popgate/pg-status.h"

static gboolean pg_trace_enabled = FALSE;

void
pg_trace_set_enabled (gboolean enabled)
{
  pg_trace_enabled = enabled;
}

gboolean
pg_trace_is_enabled (void)
{
  /* The status page shows the trace too, whether or not it is logged. */
  return pg_trace_enabled || pg_status_is_observed ();
}

void
pg_trace (guint64 sid, const char *format, ...)
{
  va_list args;
  g_autofree gchar *text = NULL;

  if (!pg_trace_is_enabled ())
    return;
  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  pg_status_trace (sid, text);
  if (!pg_trace_enabled)
    return;
  /* Notice level: the trace shows whatever -v says. */
  pg_log_session (G_LOG_LEVEL_MESSAGE, sid, "popgate-trace", "trace: %s", text);
}
