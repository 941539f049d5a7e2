/* popgate — login path internals: one login attempt (PgLoginOp) as the credential
 * steps see it.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-login.h"
#include "popgate/pg-upstream.h"

G_BEGIN_DECLS

/* One pg_login_authenticate_async(): the task data of its GTask. */
typedef struct
{
  GTask *task;                             /* the operation; see pg_login_op_return() */
  PgConfig *config;                        /* owned: keeps the pointers below alive */
  const PgUpstreamConfig *upstream_config; /* unowned: config's */
  const PgAccount *account;                /* unowned: config's; NULL: not in the file */
  gchar *upstream_user;                    /* owned: who logs in upstream */
  PgSecret *password;                      /* owned: the password to send (password kinds) */
  PgUpstream *upstream;                    /* owned: the connection, once made */
  guint64 sid;
  gchar *client_ip;  /* owned */
  gchar *id_name;    /* owned */
  gchar *id_version; /* owned */
  gboolean for_relay;
  gboolean fell_back; /* auth_mechanism = auto already retried with LOGIN */
} PgLoginOp;

/* Complete the operation: `error` NULL when op->upstream is logged in, else the failure
 * (transfer full; PG_ERROR_AUTH_FAILED for refused credentials). Drops the reference on
 * op->task that the step was given; op is gone afterwards. */
void pg_login_op_return (PgLoginOp *op, GError *error);
/* Right after a connect: ID with the client's address, and the relay hold when the
 * login is for the IMAP relay. Every login step calls it on every connection it makes. */
void pg_login_op_greet (PgLoginOp *op);
/* Drop op->upstream (if any) and make a new, unconnected one to op->upstream_config. */
void pg_login_op_new_upstream (PgLoginOp *op);

/* THE OAUTH2 STEP (src/login/pg-login-oauth2.c). Called with op->upstream connected (ID
 * sent, the relay hold set) for an account whose credential is PG_CREDENTIAL_OAUTH2
 * (op->account->token_file) or PG_CREDENTIAL_OAUTH2_CLIENT, on an upstream with auth =
 * oauth2 (op->upstream_config->oauth2); op->upstream_user is the user to authenticate as.
 * It owns one reference on op->task and must end with pg_login_op_return() exactly once;
 * g_task_get_cancellable (op->task) is the caller's cancellable. */
void pg_login_oauth2_authenticate (PgLoginOp *op);

/* The failed-login penalty (pg-login-penalty.c): record a failure from `address` (NULL:
 * unknown, only the global count) and return how long to delay its answer, from
 * `base_ms` ([limits] auth_failure_delay) doubling per earlier failure of that address,
 * at most PG_LOGIN_PENALTY_MAX_MS; that maximum for everyone while the process-wide
 * failures of the last minute exceed PG_LOGIN_PENALTY_GLOBAL_PER_MINUTE. */
guint pg_login_penalty_fail (const char *address, guint base_ms);
/* A successful login from `address` forgets its failures. */
void pg_login_penalty_clear (const char *address);

G_END_DECLS
