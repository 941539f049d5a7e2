/* popgate — the POP3 front end: one PgPop3Session per client connection, mapping POP3
 * onto the upstream IMAP mailbox (DESIGN.md "POP3 semantics" and "Safety rules").
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-net.h"

G_BEGIN_DECLS

#define PG_TYPE_POP3_SESSION (pg_pop3_session_get_type ())
G_DECLARE_FINAL_TYPE (PgPop3Session, pg_pop3_session, PG, POP3_SESSION, GObject)

/* A PgSessionStartFunc for PG_FRONTEND_POP3: the session keeps itself alive until the
 * connection closes. */
void pg_pop3_session_start (PgConn *conn, gpointer user_data);

/* Open (once per process and [state] backend/path) the per-client state store that
 * sessions of `config` use. main calls it at start and before a reload, so an unusable
 * [state] path is a config error rather than a refused login. Sessions also call it
 * lazily. Errors: PG_ERROR_CONFIG. */
gboolean pg_pop3_prepare_state (PgConfig *config, GError **error);

/* Live POP3 sessions in this process (for status and tests). */
guint pg_pop3_session_get_n_live (void);

G_END_DECLS
