/* popgate — IMAP front end: log in upstream and hand the connection to the relay.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-imap"

#include "pg-imap-private.h"

#include "popgate/pg-core.h"
#include "popgate/pg-upstream.h"

#include <string.h>

typedef struct
{
  PgUpstream *upstream; /* owned */
  gchar *user;          /* owned */
  PgSecret *password;   /* owned */
  gchar *client_ip;     /* owned */
  gchar *id_name;       /* owned */
  gchar *id_version;    /* owned */
} PgImapLogin;

typedef struct
{
  GIOStream *stream;  /* owned */
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
  g_free (login->user);
  pg_secret_free (login->password);
  g_free (login->client_ip);
  g_free (login->id_name);
  g_free (login->id_version);
  g_free (login);
}

static void
pg_imap_login_result_free (PgImapLoginResult *result)
{
  g_clear_object (&result->stream);
  g_clear_pointer (&result->buffered, g_bytes_unref);
  g_strfreev (result->capabilities);
  g_free (result);
}

static void
pg_imap_login_done_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgImapLogin *login = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  PgImapLoginResult *out;
  gboolean ok;

  if (g_async_result_is_tagged (result, pg_upstream_login_async))
    ok = pg_upstream_login_finish (login->upstream, result, &error);
  else
    ok = pg_upstream_authenticate_plain_finish (login->upstream, result, &error);
  if (!ok)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  out = g_new0 (PgImapLoginResult, 1);
  out->capabilities = pg_upstream_dup_capabilities (login->upstream);
  out->stream = pg_upstream_steal_stream (login->upstream, &out->buffered, &error);
  if (out->stream == NULL)
    {
      pg_imap_login_result_free (out);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  g_task_return_pointer (task, out, (GDestroyNotify) pg_imap_login_result_free);
}

static void
pg_imap_login_id_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;

  /* ID is informative: a failure here shows up in the login that follows. */
  if (!pg_upstream_id_finish (PG_UPSTREAM (source), result, &error))
    pg_session_debug (0, "upstream ID: %s", error->message);
}

static void
pg_imap_login_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgImapLogin *login = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  GCancellable *cancellable = g_task_get_cancellable (task);

  if (!pg_upstream_connect_finish (login->upstream, result, &error))
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (g_task_return_error_if_cancelled (task))
    return;
  /* RFC 2971 ID with the client's address, so the upstream's logs and rate limits see the
   * real client. */
  pg_upstream_id_async (login->upstream, login->id_name, login->id_version, login->client_ip,
                        cancellable, pg_imap_login_id_cb, NULL);
  pg_upstream_hold_when_idle (login->upstream);
  if (pg_upstream_has_capability (login->upstream, "AUTH=PLAIN"))
    pg_upstream_authenticate_plain_async (login->upstream, login->user, login->password,
                                          cancellable, pg_imap_login_done_cb,
                                          g_steal_pointer (&task));
  else
    pg_upstream_login_async (login->upstream, login->user, login->password, cancellable,
                             pg_imap_login_done_cb, g_steal_pointer (&task));
}

void
pg_imap_login_async (PgConfig *config, guint64 sid, const char *user, const char *password,
                     const char *client_ip, const char *id_name, const char *id_version,
                     GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  PgImapLogin *login = g_new0 (PgImapLogin, 1);

  g_task_set_source_tag (task, pg_imap_login_async);
  login->upstream = pg_upstream_new (config, sid);
  login->user = g_strdup (user);
  login->password = g_strdup (password);
  login->client_ip = g_strdup (client_ip);
  login->id_name = g_strdup (id_name);
  login->id_version = g_strdup (id_version);
  g_task_set_task_data (task, login, (GDestroyNotify) pg_imap_login_free);
  pg_upstream_connect_async (login->upstream, cancellable, pg_imap_login_connect_cb,
                             g_steal_pointer (&task));
}

GIOStream *
pg_imap_login_finish (GAsyncResult *result, GBytes **out_buffered, GStrv *out_capabilities,
                      GError **error)
{
  PgImapLoginResult *out;
  GIOStream *stream;

  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  g_return_val_if_fail (g_async_result_is_tagged (result, pg_imap_login_async), NULL);
  out = g_task_propagate_pointer (G_TASK (result), error);
  if (out == NULL)
    return NULL;
  stream = g_steal_pointer (&out->stream);
  *out_buffered = g_steal_pointer (&out->buffered);
  *out_capabilities = g_steal_pointer (&out->capabilities);
  pg_imap_login_result_free (out);
  return stream;
}
