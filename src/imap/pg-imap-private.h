/* popgate — IMAP front end internals.
 *
 * The relay hand-off lives in its own file because pg-upstream.h (through
 * pg-imap-parser.h) and pg-codec-imap-command.h both define PG_IMAP_PARSE_ERROR: the
 * session, which parses client commands, never includes the upstream's header.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-config.h"
#include "popgate/pg-login.h"
#include "popgate/pg-net.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* The IMAP-specific last step of the login path: log in through `login` (the shared
 * login path: accounts file, local secret, credential, connect, ID, login), then take the
 * connection over for the relay: the upstream's own PgConn (pg_upstream_steal_conn). Errors are
 * pg_login_authenticate_async()'s: PG_ERROR_AUTH_FAILED when the credentials were refused; anything
 * else means the upstream is unavailable. `login` must outlive the operation. */
void pg_imap_login_async (PgLogin *login, const char *password, GCancellable *cancellable,
                          GAsyncReadyCallback callback, gpointer user_data);
/* The upstream connection (transfer full; pg_conn_is_upstream()), the bytes it already sent after
 * the login reply (*out_buffered, maybe empty) and its capabilities after login (*out_capabilities,
 * the server's spelling and order). */
PgConn *pg_imap_login_finish (GAsyncResult *result, GBytes **out_buffered, GStrv *out_capabilities,
                              GError **error);

/* pg_upstream_error_is_permanent() for the session (which cannot include pg-upstream.h):
 * a failed login that a retry will not fix. */
gboolean pg_imap_login_error_is_permanent (const GError *error);

G_END_DECLS
