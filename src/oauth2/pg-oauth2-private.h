/* popgate — OAuth 2.0: what the token manager and --oauth2-authorize share.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "popgate/pg-config.h"

G_BEGIN_DECLS

/* POST `form` (name → value, borrowed; values may be secrets) as
 * application/x-www-form-urlencoded to `url` with the client's authentication: with a
 * client_secret_file, HTTP Basic (RFC 6749 §2.3.1, the method every server must support);
 * without one, client_id in the body (a public client, §2.3.1 / RFC 8252 §8.4). The
 * secret is read from its file for this request only and wiped after. Redirects are not
 * followed (the body carries credentials), the reply is read up to
 * PG_OAUTH2_MAX_RESPONSE, and the whole exchange is bounded by `timeout_ms`.
 *
 * The reply: the HTTP status and the body's JSON object (NULL when the body was not a
 * JSON object). Errors: PG_ERROR_TIMEOUT, PG_ERROR_UPSTREAM (unreachable, TLS, too big),
 * PG_ERROR_CONFIG (the secret file, a non-loopback http:// URL), G_IO_ERROR_CANCELLED. */
void pg_oauth2_http_post_async (const PgOAuth2Config *oauth2, const char *url, GHashTable *form,
                                guint timeout_ms, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
JsonObject *pg_oauth2_http_post_finish (GAsyncResult *result, guint *out_status, GError **error);

/* The token endpoint's error reply (RFC 6749 §5.2) as a GError: the grant or client was
 * refused (invalid_grant, invalid_client, ...) → PG_ERROR_AUTH_FAILED, anything else
 * (5xx, no JSON) → PG_ERROR_UPSTREAM. Only the error code (escaped) is quoted, never the
 * request. */
GError *pg_oauth2_http_error (guint status, JsonObject *object, const char *what);
/* The OAuth2 error code of a reply ("invalid_grant"), NULL if none. */
const char *pg_oauth2_http_error_code (JsonObject *object);

/* The first line of a small secret file (refresh token, client secret), wiped when freed;
 * errors are PG_ERROR_CONFIG naming the file (never its content). */
gchar *pg_oauth2_read_secret_file (const char *path, const char *what, GError **error);
/* Write `token` as the whole content of `path` atomically and durably (a temporary file in
 * the same directory, mode 0600, fsync, rename, directory fsync). Blocking: a refresh
 * token file is written once per rotation, a few hundred bytes. */
gboolean pg_oauth2_write_token_file (const char *path, const char *token, GError **error);

/* A JSON member as a string / a non-negative integer (numbers and numeric strings), or
 * NULL / FALSE when absent or of another type. */
const char *pg_oauth2_json_string (JsonObject *object, const char *member);
gboolean pg_oauth2_json_uint (JsonObject *object, const char *member, guint64 *out_value);

/* Drop the HTTP sessions (pg_oauth2_reset). */
void pg_oauth2_http_reset (void);

G_END_DECLS
