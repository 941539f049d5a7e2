/* popgate — the login path both front ends share: login name and client tag, the
 * accounts file and the local secret, the credential, the upstream login, and the
 * bookkeeping of failures and SASL exchanges (see pg-login.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-login"

#include "pg-login-private.h"

#include "pg-build-config.h"
#include "popgate/pg-codec-sasl.h"
#include "popgate/pg-upstream.h"

#include <string.h>

typedef enum
{
  PG_LOGIN_SASL_NONE,
  PG_LOGIN_SASL_PLAIN,      /* waiting for the PLAIN response */
  PG_LOGIN_SASL_LOGIN_USER, /* LOGIN: waiting for the user name */
  PG_LOGIN_SASL_LOGIN_PASS, /* LOGIN: waiting for the password */
} PgLoginSasl;

/* LOGIN's challenges (draft-murchison-sasl-login): "Username:" and "Password:". */
#define PG_LOGIN_CHALLENGE_USER "VXNlcm5hbWU6"
#define PG_LOGIN_CHALLENGE_PASS "UGFzc3dvcmQ6"

struct _PgLogin
{
  PgConfig *config; /* owned */
  PgMetricsFrontend frontend;
  guint64 sid;
  gchar *client;     /* owned: for log lines */
  gchar *client_ip;  /* owned: for ID */
  gchar *id_name;    /* owned: the client's ID name, or NULL */
  gchar *id_version; /* owned */

  gchar *user;                      /* owned: as given; NULL: none yet */
  gchar *account;                   /* owned: without the tag */
  gchar *client_tag;                /* owned */
  gchar *upstream_user;             /* owned */
  gchar *tried_user;                /* owned: the last name given, kept after a failure */
  const PgUpstreamConfig *upstream; /* unowned: config's */

  guint bad_commands;
  guint auth_failures;
  GSource *delay_source; /* owned: the failed-auth delay */
  PgLoginFailedFunc delay_func;
  gpointer delay_data; /* unowned */

  PgLoginSasl sasl;
};

PgLogin *
pg_login_new (PgConfig *config, PgMetricsFrontend frontend, guint64 sid, const char *client,
              const char *client_ip)
{
  PgLogin *login = g_new0 (PgLogin, 1);

  login->config = pg_config_ref (config);
  login->frontend = frontend;
  login->sid = sid;
  login->client = g_strdup (client);
  login->client_ip = g_strdup (client_ip);
  login->upstream = &config->upstream;
  return login;
}

static void
pg_login_stop_delay (PgLogin *login)
{
  if (login->delay_source == NULL)
    return;
  g_source_destroy (login->delay_source);
  g_clear_pointer (&login->delay_source, g_source_unref);
}

void
pg_login_free (PgLogin *login)
{
  if (login == NULL)
    return;
  pg_login_stop_delay (login);
  pg_login_clear_user (login);
  g_free (login->tried_user);
  g_free (login->client);
  g_free (login->client_ip);
  g_free (login->id_name);
  g_free (login->id_version);
  pg_config_unref (login->config);
  g_free (login);
}

/* --- the login name --------------------------------------------------------------------- */

void
pg_login_set_user (PgLogin *login, const char *name)
{
  const char *sep = login->config->pop3.client_tag_separator;
  const char *at = NULL;

  pg_login_clear_user (login);
  login->user = g_strdup (name);
  g_free (login->tried_user);
  login->tried_user = g_strdup (name);
  if (sep != NULL && *sep != '\0')
    at = g_strrstr (name, sep);
  if (at != NULL && at != name && at[strlen (sep)] != '\0')
    {
      login->account = g_strndup (name, (gsize) (at - name));
      login->client_tag = g_strdup (at + strlen (sep));
    }
  else
    {
      login->account = g_strdup (name);
      login->client_tag = g_strdup ("default");
    }
  login->upstream_user = g_strdup (login->account);
}

void
pg_login_clear_user (PgLogin *login)
{
  g_clear_pointer (&login->user, g_free);
  g_clear_pointer (&login->account, g_free);
  g_clear_pointer (&login->client_tag, g_free);
  g_clear_pointer (&login->upstream_user, g_free);
  login->upstream = &login->config->upstream;
}

const char *
pg_login_get_user (PgLogin *login)
{
  return login->user;
}

const char *
pg_login_get_tried_user (PgLogin *login)
{
  return login->tried_user;
}

const char *
pg_login_get_account (PgLogin *login)
{
  return login->account;
}

const char *
pg_login_get_client_tag (PgLogin *login)
{
  return login->client_tag;
}

const char *
pg_login_get_upstream_user (PgLogin *login)
{
  return login->upstream_user;
}

const PgUpstreamConfig *
pg_login_get_upstream (PgLogin *login)
{
  return login->upstream;
}

void
pg_login_set_client_id (PgLogin *login, const char *name, const char *version)
{
  g_free (login->id_name);
  g_free (login->id_version);
  login->id_name = g_strdup (name);
  login->id_version = g_strdup (version);
}

/* --- counting and the failure delay ----------------------------------------------------- */

gboolean
pg_login_bad_command (PgLogin *login)
{
  login->bad_commands++;
  pg_metrics_error (PG_METRICS_ERROR_PROTOCOL);
  return login->bad_commands >= login->config->limits.max_bad_commands;
}

static void
pg_login_delay_done (PgLogin *login)
{
  PgLoginFailedFunc func = login->delay_func;

  login->delay_func = NULL;
  func (login->delay_data, login->auth_failures >= login->config->limits.max_auth_failures);
}

static gboolean
pg_login_delay_cb (gpointer user_data)
{
  PgLogin *login = user_data;

  g_clear_pointer (&login->delay_source, g_source_unref);
  pg_login_delay_done (login);
  return G_SOURCE_REMOVE;
}

void
pg_login_auth_failed (PgLogin *login, const GError *why, PgLoginFailedFunc func, gpointer user_data)
{
  guint delay_ms;

  g_return_if_fail (login->delay_source == NULL);

  /* The same for a wrong password and an unknown user: only the address counts. */
  delay_ms = pg_login_penalty_fail (login->client_ip, login->config->limits.auth_failure_delay_ms);
  if (login->user != NULL)
    {
      g_autofree gchar *user = pg_log_escape (login->user, strlen (login->user), 64);
      pg_session_message (login->sid, "login failed: user=%s client=%s delay=%ums%s%s", user,
                          login->client, delay_ms, why != NULL ? ": " : "",
                          why != NULL ? why->message : "");
    }
  else
    pg_session_message (login->sid, "login failed: client=%s delay=%ums%s%s", login->client,
                        delay_ms, why != NULL ? ": " : "", why != NULL ? why->message : "");
  login->auth_failures++;
  pg_metrics_login (login->frontend, PG_METRICS_LOGIN_AUTH_FAILED);
  pg_login_clear_user (login);
  login->sasl = PG_LOGIN_SASL_NONE;
  login->delay_func = func;
  login->delay_data = user_data;
  if (delay_ms == 0)
    {
      pg_login_delay_done (login);
      return;
    }
  login->delay_source = g_timeout_source_new (delay_ms);
  g_source_set_callback (login->delay_source, pg_login_delay_cb, login, NULL);
  g_source_set_static_name (login->delay_source, "[popgate] failed-login delay");
  g_source_attach (login->delay_source, g_main_context_get_thread_default ());
}

gboolean
pg_login_is_delaying (PgLogin *login)
{
  return login->delay_source != NULL;
}

void
pg_login_unavailable (PgLogin *login, const GError *error)
{
  g_autofree gchar *user
      = login->user != NULL ? pg_log_escape (login->user, strlen (login->user), 64) : NULL;

  pg_session_warning (login->sid, "login for user=%s: upstream unavailable: %s",
                      user != NULL ? user : "?", error->message);
  pg_metrics_login (login->frontend, PG_METRICS_LOGIN_UPSTREAM_UNAVAILABLE);
  pg_metrics_gerror (error);
  pg_login_clear_user (login);
}

void
pg_login_succeeded (PgLogin *login)
{
  pg_login_penalty_clear (login->client_ip);
  pg_metrics_login (login->frontend, PG_METRICS_LOGIN_OK);
}

/* --- SASL --------------------------------------------------------------------------------- */

gboolean
pg_login_sasl_in_progress (PgLogin *login)
{
  return login->sasl != PG_LOGIN_SASL_NONE;
}

PgLoginSaslStatus
pg_login_sasl_step (PgLogin *login, const char *line, gsize len, const char **out_challenge,
                    PgSecret **out_password, GError **error)
{
  PgLoginSasl sasl = login->sasl;

  login->sasl = PG_LOGIN_SASL_NONE;
  if (len == 1 && line[0] == '*')
    {
      pg_login_clear_user (login);
      return PG_LOGIN_SASL_CANCELLED;
    }
  switch (sasl)
    {
    case PG_LOGIN_SASL_PLAIN:
      {
        g_autoptr (GError) local_error = NULL;
        g_autofree gchar *authcid = NULL;
        g_autoptr (PgSecret) passwd = NULL;

        if (!pg_sasl_plain_decode (line, len, &authcid, &passwd, &local_error))
          {
            /* Acting as another user is not something a gateway can grant. */
            if (g_error_matches (local_error, PG_ERROR, PG_ERROR_AUTH_FAILED))
              return PG_LOGIN_SASL_REFUSED;
            g_propagate_error (error, g_steal_pointer (&local_error));
            return PG_LOGIN_SASL_MALFORMED;
          }
        pg_login_set_user (login, authcid);
        *out_password = g_steal_pointer (&passwd);
        return PG_LOGIN_SASL_DONE;
      }
    case PG_LOGIN_SASL_LOGIN_USER:
    case PG_LOGIN_SASL_LOGIN_PASS:
      {
        gsize n = 0;
        g_autoptr (PgSecret) decoded = pg_sasl_base64_decode (line, len, &n);

        if (decoded == NULL || strlen (decoded) != n
            || (sasl == PG_LOGIN_SASL_LOGIN_USER && n == 0))
          {
            g_set_error_literal (error, PG_ERROR, PG_ERROR_PROTOCOL, "invalid base64 data");
            return PG_LOGIN_SASL_MALFORMED;
          }
        if (sasl == PG_LOGIN_SASL_LOGIN_USER)
          {
            pg_login_set_user (login, decoded);
            login->sasl = PG_LOGIN_SASL_LOGIN_PASS;
            *out_challenge = PG_LOGIN_CHALLENGE_PASS;
            return PG_LOGIN_SASL_CONTINUE;
          }
        *out_password = g_steal_pointer (&decoded);
        return PG_LOGIN_SASL_DONE;
      }
    case PG_LOGIN_SASL_NONE:
      break;
    }
  g_set_error_literal (error, PG_ERROR, PG_ERROR_PROTOCOL, "no SASL exchange in progress");
  return PG_LOGIN_SASL_MALFORMED;
}

PgLoginSaslStatus
pg_login_sasl_start (PgLogin *login, const char *mechanism, const char *ir, gsize ir_len,
                     const char **out_challenge, PgSecret **out_password, GError **error)
{
  if (g_ascii_strcasecmp (mechanism, "PLAIN") == 0)
    {
      login->sasl = PG_LOGIN_SASL_PLAIN;
      if (ir == NULL)
        {
          *out_challenge = "";
          return PG_LOGIN_SASL_CONTINUE;
        }
    }
  else if (g_ascii_strcasecmp (mechanism, "LOGIN") == 0)
    {
      pg_login_clear_user (login);
      login->sasl = PG_LOGIN_SASL_LOGIN_USER;
      if (ir == NULL)
        {
          *out_challenge = PG_LOGIN_CHALLENGE_USER;
          return PG_LOGIN_SASL_CONTINUE;
        }
    }
  else
    return PG_LOGIN_SASL_UNSUPPORTED;
  /* RFC 4959 §3, RFC 5034 §4: "=" is an empty initial response. */
  if (ir_len == 1 && ir[0] == '=')
    ir_len = 0;
  return pg_login_sasl_step (login, ir, ir_len, out_challenge, out_password, error);
}

/* --- the login itself ------------------------------------------------------------------- */

static void
pg_login_op_free (PgLoginOp *op)
{
  if (op->upstream != NULL)
    {
      /* Not handed to the caller: drop the connection. */
      pg_upstream_close (op->upstream);
      g_object_unref (op->upstream);
    }
  g_free (op->upstream_user);
  pg_secret_free (op->password);
  g_free (op->client_ip);
  g_free (op->id_name);
  g_free (op->id_version);
  pg_config_unref (op->config);
  g_free (op);
}

void
pg_login_op_return (PgLoginOp *op, GError *error)
{
  GTask *task = op->task;

  if (error != NULL)
    g_task_return_error (task, error);
  else
    g_task_return_boolean (task, TRUE);
  g_object_unref (task);
}

static void pg_login_op_connect (PgLoginOp *op);

static void
pg_login_password_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgLoginOp *op = g_task_get_task_data (task);
  GError *error = NULL;
  gboolean authenticate = g_async_result_is_tagged (result, pg_upstream_authenticate_plain_async);
  gboolean ok = authenticate ? pg_upstream_authenticate_plain_finish (op->upstream, result, &error)
                             : pg_upstream_login_finish (op->upstream, result, &error);

  if (ok)
    {
      pg_login_op_return (op, NULL);
      return;
    }
  if (authenticate && !op->fell_back
      && op->upstream_config->auth_mechanism == PG_AUTH_MECHANISM_AUTO
      && !g_error_matches (error, PG_ERROR, PG_ERROR_AUTH_FAILED)
      /* A timeout already took the upstream's whole timeout: no second one. */
      && !g_error_matches (error, PG_ERROR, PG_ERROR_TIMEOUT)
      && !g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED)
      && !g_cancellable_is_cancelled (g_task_get_cancellable (task)))
    {
      /* Not the credentials: the server did not take AUTHENTICATE PLAIN as offered (a
       * BAD, a reply that did not parse). LOGIN once, on a new connection if this one
       * is gone. */
      pg_session_info (op->sid, "upstream: AUTHENTICATE PLAIN failed (%s); trying LOGIN",
                       error->message);
      g_clear_error (&error);
      op->fell_back = TRUE;
      if (pg_upstream_is_closed (op->upstream))
        pg_login_op_connect (op);
      else
        pg_upstream_login_async (op->upstream, op->upstream_user, op->password,
                                 g_task_get_cancellable (task), pg_login_password_cb, task);
      return;
    }
  pg_login_op_return (op, error);
}

static void
pg_login_id_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;

  /* ID is informative: a failure here shows up in the login that follows. */
  if (!pg_upstream_id_finish (PG_UPSTREAM (source), result, &error))
    pg_session_debug (0, "upstream ID: %s", error->message);
}

void
pg_login_op_greet (PgLoginOp *op)
{
  /* RFC 2971 ID with the client's address, so the upstream's logs and rate limits see the
   * real client. A server without ID: completes at once. */
  pg_upstream_id_async (op->upstream, op->id_name, op->id_version, op->client_ip,
                        g_task_get_cancellable (op->task), pg_login_id_cb, NULL);
  if (op->for_relay)
    pg_upstream_hold_when_idle (op->upstream);
}

void
pg_login_op_new_upstream (PgLoginOp *op)
{
  if (op->upstream != NULL)
    {
      pg_upstream_close (op->upstream);
      g_clear_object (&op->upstream);
    }
  op->upstream = pg_upstream_new (op->config, op->upstream_config, op->sid);
}

/* Connected: ID, then the login by the upstream's auth and auth_mechanism. */
static void
pg_login_op_authenticate (PgLoginOp *op)
{
  GCancellable *cancellable = g_task_get_cancellable (op->task);
  /* ID and the login leave in one write (pg_upstream_cork): one segment and one wake-up
   * of the server fewer per login. The reference: a step that fails at once may end op. */
  g_autoptr (PgUpstream) upstream = g_object_ref (op->upstream);
  gboolean plain = FALSE;

  pg_upstream_cork (upstream);
  pg_login_op_greet (op);
  if (op->account != NULL
      && (op->account->credential == PG_CREDENTIAL_OAUTH2
          || op->account->credential == PG_CREDENTIAL_OAUTH2_CLIENT))
    {
      pg_login_oauth2_authenticate (op);
      pg_upstream_uncork (upstream);
      return;
    }
  switch (op->upstream_config->auth_mechanism)
    {
    case PG_AUTH_MECHANISM_AUTO:
      /* AUTHENTICATE PLAIN where offered (it survives LOGINDISABLED-style policies and
       * carries UTF-8 cleanly); LOGIN with literals otherwise. */
      plain = !op->fell_back && pg_upstream_has_capability (op->upstream, "AUTH=PLAIN");
      break;
    case PG_AUTH_MECHANISM_PLAIN:
      plain = TRUE;
      break;
    case PG_AUTH_MECHANISM_LOGIN:
      plain = FALSE;
      break;
    }
  if (plain)
    pg_upstream_authenticate_plain_async (op->upstream, op->upstream_user, op->password,
                                          cancellable, pg_login_password_cb, op->task);
  else
    pg_upstream_login_async (op->upstream, op->upstream_user, op->password, cancellable,
                             pg_login_password_cb, op->task);
  pg_upstream_uncork (upstream);
}

static void
pg_login_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgLoginOp *op = g_task_get_task_data (task);
  GError *error = NULL;

  if (!pg_upstream_connect_finish (op->upstream, result, &error))
    {
      pg_login_op_return (op, error);
      return;
    }
  if (g_cancellable_set_error_if_cancelled (g_task_get_cancellable (task), &error))
    {
      pg_login_op_return (op, error);
      return;
    }
  pg_login_op_authenticate (op);
}

/* Uses the reference on op->task that the caller handed over. */
static void
pg_login_op_connect (PgLoginOp *op)
{
  pg_login_op_new_upstream (op);
  pg_upstream_connect_async (op->upstream, g_task_get_cancellable (op->task), pg_login_connect_cb,
                             op->task);
}

void
pg_login_authenticate_async (PgLogin *login, const char *password, gboolean for_relay,
                             GCancellable *cancellable, GAsyncReadyCallback callback,
                             gpointer user_data)
{
  GTask *task = g_task_new (NULL, cancellable, callback, user_data);
  PgLoginOp *op = g_new0 (PgLoginOp, 1);
  const PgAccount *account = NULL;

  g_task_set_source_tag (task, pg_login_authenticate_async);
  g_task_set_task_data (task, op, (GDestroyNotify) pg_login_op_free);
  op->task = task;
  op->config = pg_config_ref (login->config);
  op->sid = login->sid;
  op->for_relay = for_relay;
  op->client_ip = g_strdup (login->client_ip);
  op->id_name = g_strdup (login->id_name != NULL ? login->id_name : "popgate");
  op->id_version = g_strdup (login->id_name == NULL      ? PG_VERSION
                             : login->id_version != NULL ? login->id_version
                                                         : "");
  if (login->account == NULL)
    {
      pg_login_op_return (op, g_error_new (PG_ERROR, PG_ERROR_AUTH_FAILED, "no user name"));
      return;
    }

  account = pg_config_find_account (login->config, login->account);
  if (account != NULL)
    {
      /* A listed login is checked here; the upstream sees only the account's credential. */
      if (!pg_config_account_check (account, password))
        {
          pg_login_op_return (op, g_error_new (PG_ERROR, PG_ERROR_AUTH_FAILED,
                                               "wrong local secret (accounts file)"));
          return;
        }
      op->account = account;
      op->upstream_config = account->upstream;
      op->upstream_user = g_strdup (account->upstream_user);
      switch (account->credential)
        {
        case PG_CREDENTIAL_PASSWORD:
          op->password = g_strdup (account->password);
          break;
        case PG_CREDENTIAL_PASS_THROUGH:
          op->password = g_strdup (password);
          break;
        case PG_CREDENTIAL_OAUTH2:
        case PG_CREDENTIAL_OAUTH2_CLIENT:
          break;
        }
    }
  else
    {
      op->upstream_config = &login->config->upstream;
      op->upstream_user = g_strdup (login->account);
      op->password = g_strdup (password);
      if (op->upstream_config->auth == PG_UPSTREAM_AUTH_OAUTH2)
        {
          /* popgate has no token for a login it does not know. */
          pg_login_op_return (op, g_error_new (PG_ERROR, PG_ERROR_AUTH_FAILED,
                                               "not in the accounts file, and [upstream] has "
                                               "auth = oauth2"));
          return;
        }
    }
  login->upstream = op->upstream_config;
  g_free (login->upstream_user);
  login->upstream_user = g_strdup (op->upstream_user);
  pg_login_op_connect (op);
}

PgUpstream *
pg_login_authenticate_finish (PgLogin *login, GAsyncResult *result, GError **error)
{
  PgLoginOp *op;

  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  g_return_val_if_fail (g_async_result_is_tagged (result, pg_login_authenticate_async), NULL);
  op = g_task_get_task_data (G_TASK (result));
  if (!g_task_propagate_boolean (G_TASK (result), error))
    return NULL;
  return g_steal_pointer (&op->upstream);
}
