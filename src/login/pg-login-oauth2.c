/* popgate — the login path's OAuth2 step: an access token from the token manager
 * (pg-oauth2.h), then SASL OAUTHBEARER / XOAUTH2 upstream.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-login"

#include "pg-login-private.h"

/* Not written yet: the token manager's branch fills this in (pg_oauth2_get_token_async,
 * then pg_upstream_authenticate_oauth2_async, one refresh and retry on
 * AUTHENTICATIONFAILED with a cached token). Until then an OAuth2 account cannot log in,
 * and says so: the upstream is "unavailable", not the credentials wrong. */
void
pg_login_oauth2_authenticate (PgLoginOp *op)
{
  pg_login_op_return (op, g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "OAuth2 not available"));
}
