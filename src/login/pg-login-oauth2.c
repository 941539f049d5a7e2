/* popgate — the login path's OAuth2 step: an access token from the token manager
 * (pg-oauth2.h), then SASL OAUTHBEARER / XOAUTH2 upstream.
 *
 * A cached token the upstream refuses (revoked, or its lifetime was shorter than the
 * server said) is dropped and one fresh token is tried, on a new connection if the server
 * closed this one; a fresh token that is refused is a refused login. The refusal is
 * idempotent across sessions: twenty sessions refused with one stale token cause one
 * refresh (pg_oauth2_invalidate_token drops it only while it is still the cached one).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-login"

#include "pg-login-private.h"

#include "popgate/pg-oauth2.h"

typedef struct
{
  PgLoginOp *op;   /* unowned: lives while we hold its task's reference */
  PgSecret *token; /* owned, wiped */
  gboolean cached; /* the token came from the cache */
  gboolean retried;
} PgLoginOAuth2;

static void
pg_login_oauth2_return (PgLoginOAuth2 *step, GError *error)
{
  PgLoginOp *op = step->op;

  pg_secret_free (step->token);
  g_free (step);
  pg_login_op_return (op, error);
}

static void pg_login_oauth2_send (PgLoginOAuth2 *step);
static void pg_login_oauth2_get_token (PgLoginOAuth2 *step);

static void
pg_login_oauth2_auth_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgLoginOAuth2 *step = user_data;
  PgLoginOp *op = step->op;
  GError *error = NULL;

  if (pg_upstream_authenticate_oauth2_finish (PG_UPSTREAM (source), result, &error))
    {
      pg_login_oauth2_return (step, NULL);
      return;
    }
  if (g_error_matches (error, PG_ERROR, PG_ERROR_AUTH_FAILED) && step->cached && !step->retried
      && !g_cancellable_is_cancelled (g_task_get_cancellable (op->task)))
    {
      pg_session_info (op->sid, "upstream refused the cached access token of %s; one refresh",
                       op->account->local_user);
      g_clear_error (&error);
      step->retried = TRUE;
      (void) pg_oauth2_invalidate_token (op->upstream_config, op->account->local_user, step->token);
      g_clear_pointer (&step->token, pg_secret_free);
      pg_login_oauth2_get_token (step);
      return;
    }
  pg_login_oauth2_return (step, error);
}

static void
pg_login_oauth2_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgLoginOAuth2 *step = user_data;
  PgLoginOp *op = step->op;
  GError *error = NULL;

  if (!pg_upstream_connect_finish (PG_UPSTREAM (source), result, &error)
      || g_cancellable_set_error_if_cancelled (g_task_get_cancellable (op->task), &error))
    {
      pg_login_oauth2_return (step, error);
      return;
    }
  pg_login_op_greet (op);
  pg_login_oauth2_send (step);
}

/* AUTHENTICATE with step->token; a new connection first if the server closed the old. */
static void
pg_login_oauth2_send (PgLoginOAuth2 *step)
{
  PgLoginOp *op = step->op;
  GCancellable *cancellable = g_task_get_cancellable (op->task);

  if (pg_upstream_is_closed (op->upstream))
    {
      pg_login_op_new_upstream (op);
      pg_upstream_connect_async (op->upstream, cancellable, pg_login_oauth2_connect_cb, step);
      return;
    }
  pg_upstream_authenticate_oauth2_async (op->upstream, op->upstream_config->oauth2.mechanism,
                                         op->upstream_user, step->token, cancellable,
                                         pg_login_oauth2_auth_cb, step);
}

static void
pg_login_oauth2_token_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgLoginOAuth2 *step = user_data;
  GError *error = NULL;

  step->token = pg_oauth2_get_token_finish (result, &error);
  if (step->token == NULL)
    {
      /* A file that cannot be read is the admin's to fix; for the client it is a
       * temporary failure, like an endpoint that is down. */
      if (g_error_matches (error, PG_ERROR, PG_ERROR_CONFIG))
        error->code = PG_ERROR_UPSTREAM;
      pg_login_oauth2_return (step, error);
      return;
    }
  step->cached = pg_oauth2_get_token_was_cached (result);
  pg_login_oauth2_send (step);
}

static void
pg_login_oauth2_get_token (PgLoginOAuth2 *step)
{
  PgLoginOp *op = step->op;

  pg_oauth2_get_token_async (
      op->upstream_config, op->account->local_user,
      op->account->credential == PG_CREDENTIAL_OAUTH2 ? op->account->token_file : NULL, FALSE,
      g_task_get_cancellable (op->task), pg_login_oauth2_token_cb, step);
}

void
pg_login_oauth2_authenticate (PgLoginOp *op)
{
  PgLoginOAuth2 *step = g_new0 (PgLoginOAuth2, 1);

  step->op = op;
  pg_login_oauth2_get_token (step);
}
