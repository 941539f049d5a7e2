/* popgate — OAuth 2.0 access tokens: the process-wide cache, one refresh in flight per
 * (upstream, account), and the SASL initial responses.
 *
 * An entry per key holds the cached token and, while a refresh runs, the queue of
 * waiting GTasks. A waiter that is cancelled leaves the queue (and gets
 * G_IO_ERROR_CANCELLED on the next main-loop iteration); the refresh goes on for the
 * others, bounded by the upstream's timeout_ms. A rotated refresh token is written to the
 * account's file before any waiter is answered, so a crash after a login never leaves the
 * file holding a token the server has already replaced.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-oauth2.h"

#include "pg-oauth2-private.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-metrics.h"

#include <string.h>

typedef struct
{
  gint ref_count;
  gchar *upstream;       /* owned: the upstream's name */
  gchar *account;        /* owned */
  gchar *key;            /* owned: upstream NUL-free "\n" account */
  PgSecret *token;       /* owned, wiped; NULL: none cached */
  gint64 valid_until_us; /* monotonic: the token is used until then */
  GQueue waiters;        /* of PgOAuth2Waiter*, owned */
  gboolean refreshing;
  GCancellable *refresh_cancellable; /* owned while refreshing: pg_oauth2_reset() */
} PgOAuth2Entry;

typedef struct
{
  GTask *task;               /* owned */
  GCancellable *cancellable; /* unowned: the task's */
  gulong cancelled_id;
} PgOAuth2Waiter;

/* What one refresh needs, copied: the config may be reloaded meanwhile. */
typedef struct
{
  PgOAuth2Entry *entry;    /* owned (a ref) */
  PgOAuth2Config oauth2;   /* strings owned */
  gchar *token_file;       /* owned; NULL for client_credentials */
  PgSecret *refresh_token; /* owned, wiped: what the file held */
  guint timeout_ms;
} PgOAuth2Refresh;

/* key → PgOAuth2Entry* (owned ref) */
static GHashTable *pg_oauth2_entries;

static PgOAuth2Entry *
pg_oauth2_entry_ref (PgOAuth2Entry *entry)
{
  entry->ref_count++;
  return entry;
}

static void
pg_oauth2_entry_unref (PgOAuth2Entry *entry)
{
  if (entry == NULL || --entry->ref_count > 0)
    return;
  g_assert (g_queue_is_empty (&entry->waiters));
  g_free (entry->upstream);
  g_free (entry->account);
  g_free (entry->key);
  pg_secret_free (entry->token);
  g_clear_object (&entry->refresh_cancellable);
  g_free (entry);
}

static void
pg_oauth2_refresh_free (PgOAuth2Refresh *refresh)
{
  pg_oauth2_entry_unref (refresh->entry);
  g_free (refresh->oauth2.token_url);
  g_free (refresh->oauth2.client_id);
  g_free (refresh->oauth2.client_secret_file);
  g_free (refresh->oauth2.scope);
  g_free (refresh->oauth2.ca_file);
  g_free (refresh->token_file);
  pg_secret_free (refresh->refresh_token);
  g_free (refresh);
}

static gchar *
pg_oauth2_escape (const char *text)
{
  return pg_log_escape (text, strlen (text), 120);
}

/* --- waiters --------------------------------------------------------------------------- */

static void
pg_oauth2_waiter_free (PgOAuth2Waiter *waiter)
{
  if (waiter->cancelled_id != 0)
    g_cancellable_disconnect (waiter->cancellable, waiter->cancelled_id);
  g_clear_object (&waiter->task);
  g_free (waiter);
}

typedef struct
{
  gchar *key;  /* owned */
  GTask *task; /* owned: identifies the waiter */
} PgOAuth2Cancelled;

static void
pg_oauth2_cancelled_free (PgOAuth2Cancelled *cancelled)
{
  g_free (cancelled->key);
  g_object_unref (cancelled->task);
  g_free (cancelled);
}

/* On the loop after a waiter's cancellable fired: if it still waits, answer it. */
static gboolean
pg_oauth2_cancelled_idle_cb (gpointer user_data)
{
  PgOAuth2Cancelled *cancelled = user_data;
  PgOAuth2Entry *entry
      = pg_oauth2_entries != NULL ? g_hash_table_lookup (pg_oauth2_entries, cancelled->key) : NULL;

  if (entry == NULL)
    return G_SOURCE_REMOVE;
  for (GList *l = entry->waiters.head; l != NULL; l = l->next)
    {
      PgOAuth2Waiter *waiter = l->data;

      if (waiter->task == cancelled->task)
        {
          g_autoptr (GTask) task = g_steal_pointer (&waiter->task);

          g_queue_delete_link (&entry->waiters, l);
          pg_oauth2_waiter_free (waiter);
          g_task_return_error_if_cancelled (task);
          break;
        }
    }
  return G_SOURCE_REMOVE;
}

static void
pg_oauth2_waiter_cancelled_cb (GCancellable *cancellable, gpointer user_data)
{
  GTask *task = user_data;
  PgOAuth2Cancelled *cancelled = g_new0 (PgOAuth2Cancelled, 1);
  GSource *source = g_idle_source_new ();

  /* Inside g_cancellable_cancel(): we may neither disconnect nor answer here. */
  cancelled->key = g_strdup (g_task_get_task_data (task));
  cancelled->task = g_object_ref (task);
  g_source_set_callback (source, pg_oauth2_cancelled_idle_cb, cancelled,
                         (GDestroyNotify) pg_oauth2_cancelled_free);
  g_source_attach (source, g_task_get_context (task));
  g_source_unref (source);
}

/* Answer every waiter: a copy of `token`, or `error`. */
static void
pg_oauth2_entry_answer (PgOAuth2Entry *entry, const char *token, const GError *error)
{
  PgOAuth2Waiter *waiter;

  while ((waiter = g_queue_pop_head (&entry->waiters)) != NULL)
    {
      g_autoptr (GTask) task = g_steal_pointer (&waiter->task);

      pg_oauth2_waiter_free (waiter);
      if (g_task_return_error_if_cancelled (task))
        continue;
      if (token != NULL)
        g_task_return_pointer (task, g_strdup (token), (GDestroyNotify) pg_secret_free);
      else
        g_task_return_error (task, g_error_copy (error));
    }
}

/* --- the refresh ------------------------------------------------------------------------ */

static void
pg_oauth2_refresh_fail (PgOAuth2Refresh *refresh, GError *error, const char *code)
{
  PgOAuth2Entry *entry = refresh->entry;
  g_autofree gchar *account = pg_oauth2_escape (entry->account);
  g_autofree gchar *upstream = pg_oauth2_escape (entry->upstream);

  if (!g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    {
      pg_metrics_oauth2_refresh (entry->upstream, FALSE);
      if (code != NULL && strcmp (code, "invalid_grant") == 0)
        pg_session_warning (0,
                            "oauth2 refresh failed upstream=%s account=%s error=invalid_grant: "
                            "run popgate --oauth2-authorize %s",
                            upstream, account, account);
      else
        pg_session_warning (0, "oauth2 refresh failed upstream=%s account=%s error=%s", upstream,
                            account, error->message);
      if (code != NULL && strcmp (code, "invalid_grant") == 0)
        g_prefix_error (&error, "account %s: ", account);
    }
  entry->refreshing = FALSE;
  g_clear_object (&entry->refresh_cancellable);
  pg_oauth2_entry_answer (entry, NULL, error);
  g_error_free (error);
  pg_oauth2_refresh_free (refresh);
}

static void
pg_oauth2_refresh_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgOAuth2Refresh *refresh = user_data;
  PgOAuth2Entry *entry = refresh->entry;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) object = NULL;
  guint status = 0;
  const char *access_token, *token_type, *rotated;
  guint64 lifetime = PG_OAUTH2_DEFAULT_LIFETIME_S;
  guint64 margin_us;

  object = pg_oauth2_http_post_finish (result, &status, &error);
  if (error != NULL)
    {
      pg_oauth2_refresh_fail (refresh, g_steal_pointer (&error), NULL);
      return;
    }
  if (status != 200)
    {
      const char *code = pg_oauth2_http_error_code (object);
      g_autofree gchar *copy = g_strdup (code);

      pg_oauth2_refresh_fail (refresh, pg_oauth2_http_error (status, object, "token endpoint"),
                              copy);
      return;
    }
  access_token = pg_oauth2_json_string (object, "access_token");
  token_type = pg_oauth2_json_string (object, "token_type");
  if (access_token == NULL || *access_token == '\0' || strpbrk (access_token, "\x01\r\n") != NULL)
    {
      pg_oauth2_refresh_fail (refresh,
                              g_error_new (PG_ERROR, PG_ERROR_UPSTREAM,
                                           "token endpoint answered without a usable access_token"),
                              NULL);
      return;
    }
  if (token_type != NULL && g_ascii_strcasecmp (token_type, "Bearer") != 0)
    {
      g_autofree gchar *type = pg_oauth2_escape (token_type);
      pg_oauth2_refresh_fail (refresh,
                              g_error_new (PG_ERROR, PG_ERROR_UPSTREAM,
                                           "token endpoint issued a %s token, not Bearer", type),
                              NULL);
      return;
    }
  if (pg_oauth2_json_uint (object, "expires_in", &lifetime))
    lifetime = CLAMP (lifetime, 1, PG_OAUTH2_MAX_LIFETIME_S);
  rotated = pg_oauth2_json_string (object, "refresh_token");
  if (rotated != NULL && refresh->token_file != NULL && *rotated != '\0'
      && (refresh->refresh_token == NULL || strcmp (rotated, refresh->refresh_token) != 0))
    {
      if (strpbrk (rotated, "\r\n") != NULL
          || !pg_oauth2_write_token_file (refresh->token_file, rotated, &error))
        {
          /* The old refresh token may be dead already: say so loudly. */
          if (error == NULL)
            error = g_error_new (PG_ERROR, PG_ERROR_UPSTREAM,
                                 "token endpoint sent a refresh_token with a line break");
          g_prefix_error (&error, "could not keep the rotated refresh token: ");
          pg_oauth2_refresh_fail (refresh, g_steal_pointer (&error), NULL);
          return;
        }
    }

  /* In microseconds: a tenth of a short lifetime is not zero. */
  margin_us
      = MIN (lifetime * G_USEC_PER_SEC / 10, (guint64) PG_OAUTH2_MAX_MARGIN_S * G_USEC_PER_SEC);
  pg_secret_free (entry->token);
  entry->token = g_strdup (access_token);
  entry->valid_until_us
      = g_get_monotonic_time () + (gint64) (lifetime * G_USEC_PER_SEC - margin_us);
  entry->refreshing = FALSE;
  g_clear_object (&entry->refresh_cancellable);
  pg_metrics_oauth2_refresh (entry->upstream, TRUE);
  {
    g_autofree gchar *account = pg_oauth2_escape (entry->account);
    g_autofree gchar *upstream = pg_oauth2_escape (entry->upstream);
    pg_session_info (0,
                     "oauth2 refresh ok upstream=%s account=%s expires_in=%" G_GUINT64_FORMAT "%s",
                     upstream, account, lifetime, rotated != NULL ? " rotated" : "");
  }
  pg_oauth2_entry_answer (entry, entry->token, NULL);
  pg_oauth2_refresh_free (refresh);
}

static void
pg_oauth2_refresh_start (PgOAuth2Entry *entry, const PgUpstreamConfig *upstream,
                         const char *token_file)
{
  PgOAuth2Refresh *refresh = g_new0 (PgOAuth2Refresh, 1);
  g_autoptr (GHashTable) form = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (GError) error = NULL;

  refresh->entry = pg_oauth2_entry_ref (entry);
  refresh->oauth2.token_url = g_strdup (upstream->oauth2.token_url);
  refresh->oauth2.client_id = g_strdup (upstream->oauth2.client_id);
  refresh->oauth2.client_secret_file = g_strdup (upstream->oauth2.client_secret_file);
  refresh->oauth2.scope = g_strdup (upstream->oauth2.scope);
  refresh->oauth2.ca_file = g_strdup (upstream->oauth2.ca_file);
  refresh->oauth2.grant = upstream->oauth2.grant;
  refresh->token_file = g_strdup (token_file);
  refresh->timeout_ms
      = upstream->timeout_ms > 0 ? upstream->timeout_ms : PG_DEFAULT_UPSTREAM_TIMEOUT_S * 1000;
  entry->refreshing = TRUE;
  entry->refresh_cancellable = g_cancellable_new ();

  if (refresh->oauth2.token_url == NULL)
    {
      pg_oauth2_refresh_fail (refresh,
                              g_error_new (PG_ERROR, PG_ERROR_CONFIG,
                                           "upstream %s has no oauth2_token_url", entry->upstream),
                              NULL);
      return;
    }
  switch (refresh->oauth2.grant)
    {
    case PG_OAUTH2_GRANT_REFRESH_TOKEN:
      if (token_file == NULL)
        {
          pg_oauth2_refresh_fail (refresh,
                                  g_error_new (PG_ERROR, PG_ERROR_CONFIG,
                                               "oauth2 refresh_token grant without a token file"),
                                  NULL);
          return;
        }
      /* Read per refresh: --oauth2-authorize may have replaced it meanwhile. */
      refresh->refresh_token = pg_oauth2_read_secret_file (token_file, "token file", &error);
      if (refresh->refresh_token == NULL)
        {
          /* Most likely never authorized (an empty file): say what to do. */
          g_autofree gchar *account = pg_oauth2_escape (entry->account);
          g_prefix_error (&error, "run popgate --oauth2-authorize %s: ", account);
          pg_oauth2_refresh_fail (refresh, g_steal_pointer (&error), NULL);
          return;
        }
      g_hash_table_insert (form, (gpointer) "grant_type", (gpointer) "refresh_token");
      g_hash_table_insert (form, (gpointer) "refresh_token", refresh->refresh_token);
      break;
    case PG_OAUTH2_GRANT_CLIENT_CREDENTIALS:
      g_hash_table_insert (form, (gpointer) "grant_type", (gpointer) "client_credentials");
      break;
    }
  if (refresh->oauth2.scope != NULL)
    g_hash_table_insert (form, (gpointer) "scope", refresh->oauth2.scope);
  pg_oauth2_http_post_async (&refresh->oauth2, refresh->oauth2.token_url, form, refresh->timeout_ms,
                             entry->refresh_cancellable, pg_oauth2_refresh_cb, refresh);
}

/* --- the public calls -------------------------------------------------------------------- */

void
pg_oauth2_get_token_async (const PgUpstreamConfig *upstream, const char *account,
                           const char *token_file, gboolean force_refresh,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  g_autofree gchar *key = NULL;
  PgOAuth2Entry *entry;
  PgOAuth2Waiter *waiter;

  g_return_if_fail (upstream != NULL && upstream->name != NULL && account != NULL);

  task = g_task_new (NULL, cancellable, callback, user_data);
  g_task_set_source_tag (task, pg_oauth2_get_token_async);
  if (g_task_return_error_if_cancelled (task))
    return;
  key = g_strconcat (upstream->name, "\n", account, NULL);
  if (pg_oauth2_entries == NULL)
    pg_oauth2_entries = g_hash_table_new_full (g_str_hash, g_str_equal, NULL,
                                               (GDestroyNotify) pg_oauth2_entry_unref);
  entry = g_hash_table_lookup (pg_oauth2_entries, key);
  if (entry == NULL)
    {
      entry = g_new0 (PgOAuth2Entry, 1);
      entry->ref_count = 1;
      entry->upstream = g_strdup (upstream->name);
      entry->account = g_strdup (account);
      entry->key = g_steal_pointer (&key);
      g_hash_table_insert (pg_oauth2_entries, entry->key, entry);
    }
  if (force_refresh && !entry->refreshing)
    g_clear_pointer (&entry->token, pg_secret_free);
  if (entry->token != NULL && g_get_monotonic_time () < entry->valid_until_us)
    {
      g_task_return_pointer (task, g_strdup (entry->token), (GDestroyNotify) pg_secret_free);
      return;
    }

  waiter = g_new0 (PgOAuth2Waiter, 1);
  waiter->task = g_object_ref (task);
  g_task_set_task_data (task, g_strdup (entry->key), g_free);
  if (cancellable != NULL)
    {
      waiter->cancellable = cancellable;
      waiter->cancelled_id = g_cancellable_connect (
          cancellable, G_CALLBACK (pg_oauth2_waiter_cancelled_cb), task, NULL);
    }
  g_queue_push_tail (&entry->waiters, waiter);
  if (!entry->refreshing)
    pg_oauth2_refresh_start (entry, upstream, token_file);
}

gboolean
pg_oauth2_get_token_was_cached (GAsyncResult *result)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), FALSE);
  /* A waiter's task carries its cache key; a cache hit carries nothing. */
  return g_task_get_task_data (G_TASK (result)) == NULL;
}

PgSecret *
pg_oauth2_get_token_finish (GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == pg_oauth2_get_token_async, NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

gboolean
pg_oauth2_invalidate_token (const PgUpstreamConfig *upstream, const char *account,
                            const char *token)
{
  g_autofree gchar *key = NULL;
  PgOAuth2Entry *entry;

  g_return_val_if_fail (upstream != NULL && account != NULL && token != NULL, FALSE);
  if (pg_oauth2_entries == NULL)
    return FALSE;
  key = g_strconcat (upstream->name, "\n", account, NULL);
  entry = g_hash_table_lookup (pg_oauth2_entries, key);
  if (entry == NULL || entry->token == NULL || strlen (entry->token) != strlen (token)
      || !pg_secret_equal (entry->token, token, strlen (token)))
    return FALSE;
  g_clear_pointer (&entry->token, pg_secret_free);
  return TRUE;
}

void
pg_oauth2_reset (void)
{
  GHashTableIter iter;
  gpointer value;

  if (pg_oauth2_entries != NULL)
    {
      g_hash_table_iter_init (&iter, pg_oauth2_entries);
      while (g_hash_table_iter_next (&iter, NULL, &value))
        {
          PgOAuth2Entry *entry = value;
          /* The refresh's callback answers the waiters (cancelled) and drops its ref. */
          if (entry->refresh_cancellable != NULL)
            g_cancellable_cancel (entry->refresh_cancellable);
        }
      g_clear_pointer (&pg_oauth2_entries, g_hash_table_unref);
    }
  pg_oauth2_http_reset ();
}

/* --- SASL ---------------------------------------------------------------------------------- */

static PgSecret *
pg_oauth2_base64_secret (GString *raw)
{
  PgSecret *b64 = g_base64_encode ((const guchar *) raw->str, raw->len);

  pg_secret_wipe (raw->str, raw->len);
  g_string_free (raw, TRUE);
  return b64;
}

PgSecret *
pg_oauth2_sasl_xoauth2 (const char *user, const char *token)
{
  GString *raw = g_string_sized_new (64 + strlen (token));

  g_string_append_printf (raw, "user=%s\001auth=Bearer %s\001\001", user, token);
  return pg_oauth2_base64_secret (raw);
}

PgSecret *
pg_oauth2_sasl_oauthbearer (const char *user, const char *host, guint16 port, const char *token)
{
  GString *raw = g_string_sized_new (96 + strlen (token));

  /* gs2-header: "n," (no channel binding), "a=" saslname ",", where RFC 5801 §4 has ','
   * and '=' written as "=2C" and "=3D". */
  g_string_append (raw, "n,a=");
  for (const char *p = user; *p != '\0'; p++)
    {
      if (*p == ',')
        g_string_append (raw, "=2C");
      else if (*p == '=')
        g_string_append (raw, "=3D");
      else
        g_string_append_c (raw, *p);
    }
  g_string_append_printf (raw, ",\001host=%s\001port=%u\001auth=Bearer %s\001\001", host,
                          (guint) port, token);
  return pg_oauth2_base64_secret (raw);
}
