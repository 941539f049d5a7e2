/* popgate — IMAP front end: the last step of the login path, handing the logged-in
 * upstream connection to the relay. The login itself is the shared login path's
 * (src/login/); what is IMAP's is the hold and the hand-over.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-imap"

#include "pg-imap-private.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-upstream.h"

#include <string.h>

typedef struct
{
  PgLogin *login;       /* unowned: the session's, which outlives us */
  PgUpstream *upstream; /* owned: once logged in */
  GStrv capabilities;   /* owned: after login, until handed over with the stream */
  guint timeout_ms;     /* the upstream command timeout: bounds the hand-off retries */
  gint64 hand_over_deadline_us;
} PgImapLogin;

typedef struct
{
  PgConn *conn;       /* owned */
  GBytes *buffered;   /* owned */
  GStrv capabilities; /* owned */
} PgImapLoginResult;

static void
pg_imap_login_free (PgImapLogin *login)
{
  if (login->upstream != NULL)
    {
      /* After a hand-off it is inert; otherwise this drops the connection. */
      pg_upstream_close (login->upstream);
      g_object_unref (login->upstream);
    }
  g_strfreev (login->capabilities);
  g_free (login);
}

static void
pg_imap_login_result_free (PgImapLoginResult *result)
{
  g_clear_object (&result->conn);
  g_clear_pointer (&result->buffered, g_bytes_unref);
  g_strfreev (result->capabilities);
  g_free (result);
}

/* Take the connection over. Returns FALSE while the upstream is still busy: the reply
 * that completed the login can be parsed before the main loop has run the completion of
 * the write that carried the command (a GTask completes on a later iteration), and under
 * a burst of logins it often is (2 of 1,000 relay logins at K=1000 failed with "upstream
 * connection is busy"). */
static gboolean
pg_imap_login_try_hand_over (GTask *task)
{
  PgImapLogin *login = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  PgImapLoginResult *out = g_new0 (PgImapLoginResult, 1);

  /* The upstream's own connection engine becomes the relay's upstream side. */
  out->conn = pg_upstream_steal_conn (login->upstream, &out->buffered, &error);
  if (out->conn == NULL)
    {
      pg_imap_login_result_free (out);
      if (!pg_upstream_is_closed (login->upstream)
          && g_get_monotonic_time () < login->hand_over_deadline_us
          && !g_cancellable_is_cancelled (g_task_get_cancellable (task)))
        return FALSE;
      if (!g_task_return_error_if_cancelled (task))
        g_task_return_error (task, g_steal_pointer (&error));
      return TRUE;
    }
  out->capabilities = login->capabilities;
  login->capabilities = NULL;
  g_task_return_pointer (task, out, (GDestroyNotify) pg_imap_login_result_free);
  return TRUE;
}

static gboolean
pg_imap_login_hand_over_cb (gpointer user_data)
{
  GTask *task = user_data;

  return pg_imap_login_try_hand_over (task) ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

static void
pg_imap_login_done_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgImapLogin *login = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  GSource *retry;

  login->upstream = pg_login_authenticate_finish (login->login, result, &error);
  if (login->upstream == NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  /* As they are now: the upstream is inert after the hand-off. */
  login->capabilities = pg_upstream_dup_capabilities (login->upstream);
  login->timeout_ms = pg_login_get_upstream (login->login)->timeout_ms > 0
                          ? pg_login_get_upstream (login->login)->timeout_ms
                          : PG_DEFAULT_UPSTREAM_TIMEOUT_S * 1000;
  login->hand_over_deadline_us
      = g_get_monotonic_time () + (gint64) login->timeout_ms * G_TIME_SPAN_MILLISECOND;
  if (pg_imap_login_try_hand_over (task))
    return;
  /* Until the write's completion has run: a timer, not an idle, so a write that takes
   * long (a full socket) does not spin; bounded by the upstream command timeout. */
  retry = g_timeout_source_new (PG_IMAP_HAND_OVER_RETRY_MS);
  g_source_set_callback (retry, pg_imap_login_hand_over_cb, g_object_ref (task), g_object_unref);
  g_source_set_static_name (retry, "[popgate] imap relay hand-off");
  g_source_attach (retry, g_main_context_get_thread_default ());
  g_source_unref (retry);
}

void
pg_imap_login_async (PgLogin *shared, const char *password, GCancellable *cancellable,
                     GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  PgImapLogin *login = g_new0 (PgImapLogin, 1);

  g_task_set_source_tag (task, pg_imap_login_async);
  login->login = shared;
  g_task_set_task_data (task, login, (GDestroyNotify) pg_imap_login_free);
  /* for_relay: the upstream stops reading once logged in, for the hand-over. */
  pg_login_authenticate_async (shared, password, TRUE, cancellable, pg_imap_login_done_cb,
                               g_steal_pointer (&task));
}

PgConn *
pg_imap_login_finish (GAsyncResult *result, GBytes **out_buffered, GStrv *out_capabilities,
                      GError **error)
{
  PgImapLoginResult *out;
  PgConn *conn;

  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  g_return_val_if_fail (g_async_result_is_tagged (result, pg_imap_login_async), NULL);
  out = g_task_propagate_pointer (G_TASK (result), error);
  if (out == NULL)
    return NULL;
  conn = g_steal_pointer (&out->conn);
  *out_buffered = g_steal_pointer (&out->buffered);
  *out_capabilities = g_steal_pointer (&out->capabilities);
  pg_imap_login_result_free (out);
  return conn;
}

gboolean
pg_imap_login_error_is_permanent (const GError *error)
{
  return pg_upstream_error_is_permanent (error);
}
