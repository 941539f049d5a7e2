/* popgate — the audit trace (`--trace`, `[log] trace = true`): per session, each client
 * command next to the upstream IMAP commands it caused, with the message number ↔ UID ↔
 * UIDL mapping — the answer to "why did this message vanish".
 *
 * Trace lines are logged at notice level (shown without -v) with the session id:
 *   [7] trace: C: DELE 2 -> uid 18 uidl 000000120000abcd
 *   [7] trace: U: p9 UID STORE 18 +FLAGS.SILENT (\Deleted)
 * Every line passes through pg_log_redact_line() or is built from numbers only: no
 * password, SASL data or literal holding a secret ever reaches it.
 *
 * The same lines go to the status page (pg-status.h) while it runs, logged or not.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Process-wide switch, set by main from --trace or [log] trace (and on reload). */
void pg_trace_set_enabled (gboolean enabled);
/* TRUE when trace lines are wanted: logged, or shown on the status page. */
gboolean pg_trace_is_enabled (void);

/* One trace line for a session (nothing when the trace is off). The caller has redacted
 * and escaped any peer text in it. */
void pg_trace (guint64 sid, const char *format, ...) G_GNUC_PRINTF (2, 3);

G_END_DECLS
