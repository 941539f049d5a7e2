/* popgate — OAuth 2.0 access tokens for upstream logins (RFC 6749, 7628).
 *
 * The contract between the login path (src/login/pg-login*.c, which decides that an
 * account needs a token) and the token manager (src/oauth2/pg-oauth2.c, which gets one).
 * The token endpoint is called with libsoup on the thread-default main context, JSON is
 * read with json-glib; nothing here blocks.
 *
 * Tokens are cached in memory per (upstream, account) until shortly before `expires_in`
 * (a margin of at most a tenth of the lifetime and at most 60 s) and shared by every
 * session of that account; at most one refresh is in flight per account, and concurrent
 * requests wait for it. A rotated refresh token is written back to the account's token
 * file atomically (mode 0600) before any waiter is answered.
 *
 * No access token, refresh token or client secret ever reaches a log line, a trace, a
 * metric label or a GError message.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"

G_BEGIN_DECLS

/* Get an access token for `account` (the cache key within `upstream`, e.g. the local
 * user name) on `upstream` (auth = oauth2). `token_file` is the account's refresh-token
 * file for grant = refresh_token, NULL for client_credentials. `force_refresh` drops a
 * cached token first (the upstream refused it): still one refresh per account in flight.
 * `upstream` must stay alive until the callback (hold a ref on its PgConfig).
 *
 * Errors: PG_ERROR_AUTH_FAILED when the authorization server refused the grant
 * (invalid_grant, invalid_client...: the user must run --oauth2-authorize or the admin
 * fix the client), PG_ERROR_UPSTREAM / PG_ERROR_TIMEOUT when the token endpoint is down,
 * slow (bounded by the upstream's timeout_ms) or answered nonsense, PG_ERROR_CONFIG when a
 * file cannot be read. Messages are safe to log. */
void pg_oauth2_get_token_async (const PgUpstreamConfig *upstream, const char *account,
                                const char *token_file, gboolean force_refresh,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data);
/* The access token (wipe it: g_autoptr (PgSecret)), or NULL with `error` set. */
PgSecret *pg_oauth2_get_token_finish (GAsyncResult *result, GError **error);
/* TRUE when the result came from the cache (no refresh was waited for): a refusal
 * upstream may then mean the token went stale early, worth one refresh and retry. */
gboolean pg_oauth2_get_token_was_cached (GAsyncResult *result);

/* The upstream refused `token`: drop it from the cache if it is still the cached token of
 * (upstream, account), so that the next pg_oauth2_get_token_async() refreshes. Unlike
 * force_refresh this is idempotent: twenty sessions refused with one stale token cause one
 * refresh, not twenty. TRUE when it was dropped. */
gboolean pg_oauth2_invalidate_token (const PgUpstreamConfig *upstream, const char *account,
                                     const char *token);

/* The SASL initial responses (base64, ready for AUTHENTICATE MECH RESPONSE).
 * XOAUTH2:     base64 ("user=" USER "\x01auth=Bearer " TOKEN "\x01\x01")
 * OAUTHBEARER: base64 ("n,a=" USER ",\x01host=" HOST "\x01port=" PORT "\x01auth=Bearer "
 *              TOKEN "\x01\x01"), with ',' and '=' in USER escaped as RFC 7628 §3.1 says. */
PgSecret *pg_oauth2_sasl_xoauth2 (const char *user, const char *token);
PgSecret *pg_oauth2_sasl_oauthbearer (const char *user, const char *host, guint16 port,
                                      const char *token);

/* --oauth2-authorize: obtain the first refresh token for an account and write it to
 * `token_file` (atomically, mode 0600). With oauth2_device_url the device grant (RFC 8628),
 * else with oauth2_authorize_url the authorization code grant with PKCE S256 (RFC 7636)
 * and a loopback redirect on 127.0.0.1 (RFC 8252 §7.3). `prompt` gets each line to show
 * the user (the URL, the user code, the outcome); it is never given a token. The wait is
 * bounded by the device code's expires_in or PG_OAUTH2_AUTHORIZE_TIMEOUT_S.
 * Errors: PG_ERROR_AUTH_FAILED (refused: access_denied...), PG_ERROR_TIMEOUT (expired),
 * PG_ERROR_UPSTREAM (the server failed), PG_ERROR_CONFIG. */
typedef void (*PgOAuth2PromptFunc) (const char *line, gpointer user_data);
void pg_oauth2_authorize_async (const PgUpstreamConfig *upstream, const char *token_file,
                                PgOAuth2PromptFunc prompt, gpointer prompt_data,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data);
gboolean pg_oauth2_authorize_finish (GAsyncResult *result, GError **error);

/* Drop every cached token (SIGHUP with a new config, and tests). */
void pg_oauth2_reset (void);

G_END_DECLS
