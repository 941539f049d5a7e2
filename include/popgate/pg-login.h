/* popgate — the login path that both front ends share (in the spirit of Dovecot's
 * login-common): the login name (account and client tag), the accounts file, the local
 * secret, the upstream and the credential, the upstream connection and its login, and
 * the bookkeeping around failures (the delay, the failed-auth and bad-command counts) and
 * the SASL exchanges (PLAIN, LOGIN) that POP3 and IMAP clients start.
 *
 * A front-end session owns one PgLogin for its life. It feeds it what the client sent and
 * turns the outcomes into its protocol's replies; the wording of replies stays in the
 * front end, everything else is here.
 *
 * This header does not include pg-upstream.h: the IMAP session, which includes the IMAP
 * command parser, cannot (both define PG_IMAP_PARSE_ERROR).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-metrics.h"

G_BEGIN_DECLS

typedef struct _PgUpstream PgUpstream; /* pg-upstream.h */
typedef struct _PgLogin PgLogin;

/* `client` names the client in log lines ("ADDR:PORT"), `client_ip` goes upstream in ID
 * (x-originating-ip); `sid` prefixes log lines. Keeps a reference on config. */
PgLogin *pg_login_new (PgConfig *config, PgMetricsFrontend frontend, guint64 sid,
                       const char *client, const char *client_ip);
/* Stops a pending failure delay (its function is not called). */
void pg_login_free (PgLogin *login);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgLogin, pg_login_free)

/* --- the login name ---------------------------------------------------------------------
 * "olduser#phone" is account "olduser" with client tag "phone" ([pop3]
 * client_tag_separator, "#" by default; "" turns tags off). The tag names the client for
 * the POP3 per-client state; on the IMAP front end it only shows in the log. */

/* Take `name` as the login name (replacing any earlier one). */
void pg_login_set_user (PgLogin *login, const char *name);
/* Forget the login name (and what was resolved from it). */
void pg_login_clear_user (PgLogin *login);
/* The name as the client gave it, or NULL before pg_login_set_user(). */
const char *pg_login_get_user (PgLogin *login);
/* The last name given, still there after a failed login cleared it (for the end line of
 * a session whose login failed), or NULL. */
const char *pg_login_get_tried_user (PgLogin *login);
/* The account part (no tag), the tag ("default" without one) and the user popgate logs in
 * as upstream: the account's upstream-user once pg_login_authenticate_async() resolved an
 * accounts-file login, else the account part. NULL without a login name. */
const char *pg_login_get_account (PgLogin *login);
const char *pg_login_get_client_tag (PgLogin *login);
const char *pg_login_get_upstream_user (PgLogin *login);
/* The upstream the login went (or goes) to: the account's, else [upstream]. */
const PgUpstreamConfig *pg_login_get_upstream (PgLogin *login);

/* IMAP ID (RFC 2971) from the client, passed upstream instead of popgate's own name and
 * version; NULL: popgate's. */
void pg_login_set_client_id (PgLogin *login, const char *name, const char *version);

/* --- counting and the failure delay ----------------------------------------------------- */

/* A bad command: count it. TRUE when that was one too many ([limits] max_bad_commands):
 * the front end then says goodbye and closes. */
gboolean pg_login_bad_command (PgLogin *login);

/* Called when the delay after a failed login is over; `too_many`: that was the last one
 * allowed ([limits] max_auth_failures), close after the failure reply. */
typedef void (*PgLoginFailedFunc) (gpointer user_data, gboolean too_many);

/* A failed login, whatever the reason (unknown user, wrong local secret, refused
 * upstream, a forbidden SASL authzid): one uniform outcome, so the client cannot tell
 * them apart. Logs the failure (`why`: for the log only, NULL: none), counts it, forgets
 * the login name, and calls `func` after [limits] auth_failure_delay (at once with 0;
 * `user_data` is not referenced: pg_login_free() stops the delay). */
void pg_login_auth_failed (PgLogin *login, const GError *why, PgLoginFailedFunc func,
                           gpointer user_data);
/* TRUE while that delay runs. */
gboolean pg_login_is_delaying (PgLogin *login);
/* The upstream could not be used (not the credentials): log it, count it, forget the
 * login name. The front end answers [SYS/TEMP] / [UNAVAILABLE] at once. */
void pg_login_unavailable (PgLogin *login, const GError *error);
/* The login is complete (for the metrics). */
void pg_login_succeeded (PgLogin *login);

/* --- SASL (RFC 4422) in the front ends: PLAIN (RFC 4616) and LOGIN ----------------------- */

typedef enum
{
  PG_LOGIN_SASL_CONTINUE,    /* send *out_challenge (base64, maybe "") and feed the next line */
  PG_LOGIN_SASL_DONE,        /* the login name is set; *out_password is the password */
  PG_LOGIN_SASL_CANCELLED,   /* the client sent "*" */
  PG_LOGIN_SASL_MALFORMED,   /* bad base64 or a malformed message (error says what): a bad
                              * command */
  PG_LOGIN_SASL_REFUSED,     /* a valid message a gateway cannot grant (an authzid that is
                              * another user): a failed login */
  PG_LOGIN_SASL_UNSUPPORTED, /* not PLAIN or LOGIN */
} PgLoginSaslStatus;

/* The mechanisms, as the front ends list them ("PLAIN LOGIN"). */
#define PG_LOGIN_SASL_MECHANISMS "PLAIN LOGIN"

/* Start `mechanism` with an initial response (`ir`, its base64 text; "=" is an empty
 * one) or none (`ir` NULL). Out-parameters are set for CONTINUE (*out_challenge, static),
 * DONE (*out_password) and MALFORMED (error). */
PgLoginSaslStatus pg_login_sasl_start (PgLogin *login, const char *mechanism, const char *ir,
                                       gsize ir_len, const char **out_challenge,
                                       PgSecret **out_password, GError **error);
/* The client's next line of the exchange started by pg_login_sasl_start(). */
PgLoginSaslStatus pg_login_sasl_step (PgLogin *login, const char *line, gsize len,
                                      const char **out_challenge, PgSecret **out_password,
                                      GError **error);
/* TRUE while an exchange waits for the client's next line (its lines are secret). */
gboolean pg_login_sasl_in_progress (PgLogin *login);

/* --- the login itself ------------------------------------------------------------------- */

/* Log in the current login name with the client's `password`:
 *  1. the accounts file: a listed account's local secret is checked here, in constant
 *     time, and never sent upstream; a wrong one fails without contacting the upstream;
 *     an unlisted login goes to [upstream] with the client's own credentials;
 *  2. the credential: password:FILE, the client's (-), or an OAuth2 token;
 *  3. connect to the account's upstream, ID (x-originating-ip = the client) pipelined
 *     with the login: per the upstream's auth_mechanism, auto = AUTHENTICATE PLAIN when
 *     advertised, else LOGIN with literals (and LOGIN once more, on a new connection if
 *     need be, when AUTHENTICATE failed for another reason than the credentials or a
 *     timeout), plain,
 *     login; OAUTHBEARER / XOAUTH2 for OAuth2 accounts.
 * `for_relay`: the connection will be handed to a relay (pg_upstream_hold_when_idle()).
 * Errors: PG_ERROR_AUTH_FAILED for any refusal of the credentials (answer [AUTH] /
 * [AUTHENTICATIONFAILED] via pg_login_auth_failed()); anything else means the upstream is
 * unavailable (pg_login_unavailable()). */
void pg_login_authenticate_async (PgLogin *login, const char *password, gboolean for_relay,
                                  GCancellable *cancellable, GAsyncReadyCallback callback,
                                  gpointer user_data);
/* The logged-in upstream connection (transfer full). */
PgUpstream *pg_login_authenticate_finish (PgLogin *login, GAsyncResult *result, GError **error);

/* Forget every address's failed-login penalty (tests). */
void pg_login_penalty_reset (void);

G_END_DECLS
