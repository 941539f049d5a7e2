/* popgate — IMAP front end internals.
 *
 * The upstream login lives in its own file because pg-upstream.h (through
 * pg-imap-parser.h) and pg-codec-imap-command.h both define PG_IMAP_PARSE_ERROR: the
 * session, which parses client commands, never includes the upstream's header.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-config.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* Connect to the upstream (per config), send ID (name, version, x-originating-ip =
 * client_ip) pipelined with the login, log in with AUTHENTICATE PLAIN when offered (else
 * LOGIN with literals), and take the connection over for the relay. `sid` prefixes the
 * upstream's log lines. Errors: PG_ERROR_AUTH_FAILED when the credentials were refused;
 * anything else means the upstream is unavailable. */
void pg_imap_login_async (PgConfig *config, guint64 sid, const char *user, const char *password,
                          const char *client_ip, const char *id_name, const char *id_version,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data);
/* The upstream connection (transfer full), the bytes it already sent after the login
 * reply (*out_buffered, maybe empty) and its capabilities after login (*out_capabilities,
 * the server's spelling and order). */
GIOStream *pg_imap_login_finish (GAsyncResult *result, GBytes **out_buffered,
                                 GStrv *out_capabilities, GError **error);

/* pg_upstream_error_is_permanent() for the session (which cannot include pg-upstream.h):
 * a failed login that a retry will not fix. */
gboolean pg_imap_login_error_is_permanent (const GError *error);

G_END_DECLS
