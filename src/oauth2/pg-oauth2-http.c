/* popgate — OAuth 2.0: the HTTP side (token and device endpoints) with libsoup-3 and
 * json-glib, on the thread-default main context; and the small files tokens live in.
 *
 * One SoupSession per CA file (oauth2_ca_file, or the system trust store), made on first
 * use: certificate verification is libsoup's default and is never turned off.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-oauth2-private.h"

#include "pg-build-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <libsoup/soup.h>
#include <string.h>

/* ca_file ("" for the system store) → SoupSession*, owned. */
static GHashTable *pg_oauth2_http_sessions;

void
pg_oauth2_http_reset (void)
{
  g_clear_pointer (&pg_oauth2_http_sessions, g_hash_table_unref);
}

static SoupSession *
pg_oauth2_http_session (const char *ca_file, GError **error)
{
  SoupSession *session;
  const char *key = ca_file != NULL ? ca_file : "";

  if (pg_oauth2_http_sessions == NULL)
    pg_oauth2_http_sessions
        = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_object_unref);
  session = g_hash_table_lookup (pg_oauth2_http_sessions, key);
  if (session != NULL)
    return session;
  session = soup_session_new_with_options ("user-agent", PG_PACKAGE "/" PG_VERSION, NULL);
  if (ca_file != NULL)
    {
      g_autoptr (GTlsDatabase) database = g_tls_file_database_new (ca_file, error);

      if (database == NULL)
        {
          g_object_unref (session);
          g_prefix_error (error, "oauth2_ca_file %s: ", ca_file);
          if (error != NULL && *error != NULL)
            {
              (*error)->domain = PG_ERROR;
              (*error)->code = PG_ERROR_CONFIG;
            }
          return NULL;
        }
      soup_session_set_tls_database (session, database);
    }
  g_hash_table_insert (pg_oauth2_http_sessions, g_strdup (key), session);
  return session;
}

/* https://, or http:// to a loopback address (a test server, a local proxy). */
static gboolean
pg_oauth2_http_check_url (const char *url, GError **error)
{
  g_autoptr (GUri) uri = g_uri_parse (url, G_URI_FLAGS_NONE, NULL);
  const char *scheme = uri != NULL ? g_uri_get_scheme (uri) : NULL;
  const char *host = uri != NULL ? g_uri_get_host (uri) : NULL;

  if (uri == NULL || host == NULL || scheme == NULL)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "oauth2: not a URL: %s", url);
      return FALSE;
    }
  if (g_ascii_strcasecmp (scheme, "https") == 0)
    return TRUE;
  if (g_ascii_strcasecmp (scheme, "http") == 0)
    {
      g_autoptr (GInetAddress) address = g_inet_address_new_from_string (host);

      if ((address != NULL && g_inet_address_get_is_loopback (address))
          || g_ascii_strcasecmp (host, "localhost") == 0)
        return TRUE;
    }
  g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
               "oauth2: %s must be https:// (http:// only to a loopback address)", url);
  return FALSE;
}

gchar *
pg_oauth2_read_secret_file (const char *path, const char *what, GError **error)
{
  g_autoptr (GError) local = NULL;
  gchar *data = NULL;
  gsize len = 0;
  gchar *end;

  if (!g_file_get_contents (path, &data, &len, &local))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s %s: %s", what, path, local->message);
      return NULL;
    }
  if (len > PG_OAUTH2_MAX_FILE || strlen (data) != len)
    {
      pg_secret_wipe (data, len);
      g_free (data);
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s %s: not one line of text", what, path);
      return NULL;
    }
  end = data + strcspn (data, "\r\n");
  *end = '\0';
  g_strstrip (data);
  if (*data == '\0')
    {
      pg_secret_wipe (data, len);
      g_free (data);
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s %s is empty", what, path);
      return NULL;
    }
  /* Wipe what followed the first line too, then hand out the line. */
  {
    gchar *line = g_strdup (data);
    pg_secret_wipe (data, len);
    g_free (data);
    return line;
  }
}

gboolean
pg_oauth2_write_token_file (const char *path, const char *token, GError **error)
{
  g_autoptr (GError) local = NULL;
  g_autofree gchar *content = g_strconcat (token, "\n", NULL);
  gboolean ok;

  /* GLib 2.74 writes a temporary file in the same directory with this mode, fsync()s it,
   * renames it over the old one and fsync()s the directory (see src/state's file
   * backend). */
  ok = g_file_set_contents_full (path, content, -1,
                                 G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE, 0600,
                                 &local);
  pg_secret_wipe (content, strlen (content));
  if (!ok)
    g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "token file %s: %s", path, local->message);
  return ok;
}

const char *
pg_oauth2_json_string (JsonObject *object, const char *member)
{
  JsonNode *node = object != NULL ? json_object_get_member (object, member) : NULL;

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node)
      || json_node_get_value_type (node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string (node);
}

gboolean
pg_oauth2_json_uint (JsonObject *object, const char *member, guint64 *out_value)
{
  JsonNode *node = object != NULL ? json_object_get_member (object, member) : NULL;
  guint64 value = 0;

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node))
    return FALSE;
  if (json_node_get_value_type (node) == G_TYPE_INT64)
    {
      gint64 v = json_node_get_int (node);
      if (v < 0)
        return FALSE;
      value = (guint64) v;
    }
  else if (json_node_get_value_type (node) == G_TYPE_DOUBLE)
    {
      gdouble v = json_node_get_double (node);
      if (!(v >= 0 && v < 1e15))
        return FALSE;
      value = (guint64) v;
    }
  else if (json_node_get_value_type (node) == G_TYPE_STRING)
    {
      /* Some servers (Microsoft's v1 endpoint) send "3599". */
      if (!g_ascii_string_to_unsigned (json_node_get_string (node), 10, 0, G_MAXUINT32, &value,
                                       NULL))
        return FALSE;
    }
  else
    return FALSE;
  *out_value = value;
  return TRUE;
}

const char *
pg_oauth2_http_error_code (JsonObject *object)
{
  return pg_oauth2_json_string (object, "error");
}

GError *
pg_oauth2_http_error (guint status, JsonObject *object, const char *what)
{
  static const char *const refused[]
      = { "invalid_grant",          "invalid_client",  "unauthorized_client", "invalid_scope",
          "unsupported_grant_type", "invalid_request", "access_denied",       "expired_token" };
  const char *code = pg_oauth2_http_error_code (object);
  g_autofree gchar *escaped = NULL;

  if (code == NULL)
    return g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "%s answered HTTP %u without an OAuth2 error",
                        what, status);
  escaped = pg_log_escape (code, strlen (code), 64);
  for (gsize i = 0; i < G_N_ELEMENTS (refused); i++)
    if (strcmp (code, refused[i]) == 0 && status < 500)
      return g_error_new (PG_ERROR, PG_ERROR_AUTH_FAILED, "%s refused: %s", what, escaped);
  return g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "%s failed (HTTP %u): %s", what, status,
                      escaped);
}

/* --- the POST ------------------------------------------------------------------------ */

typedef struct
{
  SoupMessage *message;      /* owned */
  GInputStream *body;        /* owned once sent */
  GByteArray *reply;         /* owned */
  guint8 *chunk;             /* owned: PG_OAUTH2_READ_CHUNK */
  GCancellable *cancellable; /* owned: ours, cancelled by the timer or the caller's */
  GCancellable *caller;      /* owned, may be NULL */
  gulong caller_id;
  GSource *timer; /* owned */
  guint timeout_ms;
  gboolean timed_out;
} PgOAuth2Post;

#define PG_OAUTH2_READ_CHUNK 4096

static void
pg_oauth2_post_free (PgOAuth2Post *post)
{
  if (post->caller != NULL)
    g_cancellable_disconnect (post->caller, post->caller_id);
  g_clear_object (&post->caller);
  if (post->timer != NULL)
    {
      g_source_destroy (post->timer);
      g_source_unref (post->timer);
    }
  g_clear_object (&post->message);
  g_clear_object (&post->body);
  if (post->reply != NULL)
    {
      pg_secret_wipe (post->reply->data, post->reply->len);
      g_byte_array_unref (post->reply);
    }
  if (post->chunk != NULL)
    pg_secret_wipe (post->chunk, PG_OAUTH2_READ_CHUNK);
  g_free (post->chunk);
  g_clear_object (&post->cancellable);
  g_free (post);
}

static gboolean
pg_oauth2_post_timeout_cb (gpointer user_data)
{
  PgOAuth2Post *post = user_data;

  post->timed_out = TRUE;
  g_cancellable_cancel (post->cancellable);
  return G_SOURCE_REMOVE;
}

static void
pg_oauth2_post_caller_cancelled_cb (GCancellable *caller, gpointer user_data)
{
  /* Runs inside the caller's g_cancellable_cancel(); only cancels our own. */
  g_cancellable_cancel (user_data);
}

/* A failure of the exchange as the header promises (timeout, unreachable, TLS). */
static GError *
pg_oauth2_post_error (PgOAuth2Post *post, const GError *error)
{
  if (post->timed_out)
    return g_error_new (PG_ERROR, PG_ERROR_TIMEOUT, "token endpoint did not answer within %u ms",
                        post->timeout_ms);
  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return g_error_copy (error);
  if (error->domain == G_TLS_ERROR)
    return g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "token endpoint TLS: %s", error->message);
  return g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "token endpoint unreachable: %s",
                      error->message);
}

static void pg_oauth2_post_read (GTask *task);

static void
pg_oauth2_post_done (GTask *task)
{
  PgOAuth2Post *post = g_task_get_task_data (task);
  g_autoptr (JsonParser) parser = json_parser_new ();
  JsonNode *root;
  guint status = soup_message_get_status (post->message);

  /* Not JSON at all: a proxy's or a load balancer's HTML page. The status tells. */
  if (post->reply->len == 0
      || !json_parser_load_from_data (parser, (const gchar *) post->reply->data,
                                      (gssize) post->reply->len, NULL)
      || (root = json_parser_get_root (parser)) == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      if (status >= 200 && status < 300)
        g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                                 "token endpoint answered HTTP %u without a JSON object", status);
      else
        g_task_return_pointer (task, NULL, NULL);
      return;
    }
  g_task_return_pointer (task, json_object_ref (json_node_get_object (root)),
                         (GDestroyNotify) json_object_unref);
}

static void
pg_oauth2_post_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgOAuth2Post *post = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  if (n < 0)
    {
      g_task_return_error (task, pg_oauth2_post_error (post, error));
      return;
    }
  if (n == 0)
    {
      pg_oauth2_post_done (task);
      return;
    }
  if (post->reply->len + (gsize) n > PG_OAUTH2_MAX_RESPONSE)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "token endpoint reply is larger than %u bytes",
                               (guint) PG_OAUTH2_MAX_RESPONSE);
      return;
    }
  g_byte_array_append (post->reply, post->chunk, (guint) n);
  pg_oauth2_post_read (g_steal_pointer (&task));
}

static void
pg_oauth2_post_read (GTask *task)
{
  PgOAuth2Post *post = g_task_get_task_data (task);

  g_input_stream_read_async (post->body, post->chunk, PG_OAUTH2_READ_CHUNK, G_PRIORITY_DEFAULT,
                             post->cancellable, pg_oauth2_post_read_cb, task);
}

static void
pg_oauth2_post_sent_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgOAuth2Post *post = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;

  post->body = soup_session_send_finish (SOUP_SESSION (source), result, &error);
  if (post->body == NULL)
    {
      g_task_return_error (task, pg_oauth2_post_error (post, error));
      return;
    }
  pg_oauth2_post_read (g_steal_pointer (&task));
}

static void
pg_oauth2_wipe_free (gpointer data)
{
  pg_secret_free (data);
}

void
pg_oauth2_http_post_async (const PgOAuth2Config *oauth2, const char *url, GHashTable *form,
                           guint timeout_ms, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  g_autoptr (GError) error = NULL;
  g_autoptr (GHashTable) fields = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (PgSecret) secret = NULL;
  GHashTableIter iter;
  gpointer key, value;
  PgOAuth2Post *post;
  SoupSession *session;
  gchar *encoded;
  GBytes *body;

  g_task_set_source_tag (task, pg_oauth2_http_post_async);
  if (!pg_oauth2_http_check_url (url, &error)
      || (session = pg_oauth2_http_session (oauth2->ca_file, &error)) == NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (oauth2->client_secret_file != NULL)
    {
      secret = pg_oauth2_read_secret_file (oauth2->client_secret_file, "oauth2_client_secret_file",
                                           &error);
      if (secret == NULL)
        {
          g_task_return_error (task, g_steal_pointer (&error));
          return;
        }
    }

  post = g_new0 (PgOAuth2Post, 1);
  g_task_set_task_data (task, post, (GDestroyNotify) pg_oauth2_post_free);
  post->timeout_ms = timeout_ms;
  post->reply = g_byte_array_new ();
  post->chunk = g_malloc (PG_OAUTH2_READ_CHUNK);
  post->cancellable = g_cancellable_new ();
  if (cancellable != NULL)
    {
      post->caller = g_object_ref (cancellable);
      post->caller_id = g_cancellable_connect (
          cancellable, G_CALLBACK (pg_oauth2_post_caller_cancelled_cb), post->cancellable, NULL);
    }

  g_hash_table_iter_init (&iter, form);
  while (g_hash_table_iter_next (&iter, &key, &value))
    g_hash_table_insert (fields, key, value);
  if (secret == NULL && oauth2->client_id != NULL)
    g_hash_table_insert (fields, (gpointer) "client_id", oauth2->client_id);
  encoded = soup_form_encode_hash (fields);
  body = g_bytes_new_with_free_func (encoded, strlen (encoded), pg_oauth2_wipe_free, encoded);

  post->message = soup_message_new (SOUP_METHOD_POST, url);
  soup_message_add_flags (post->message, SOUP_MESSAGE_NO_REDIRECT);
  soup_message_set_request_body_from_bytes (post->message, "application/x-www-form-urlencoded",
                                            body);
  g_bytes_unref (body);
  soup_message_headers_replace (soup_message_get_request_headers (post->message), "Accept",
                                "application/json");
  if (secret != NULL)
    {
      /* RFC 6749 §2.3.1: both halves form-urlencoded, then "id:secret" in base64. */
      g_autofree gchar *id = g_uri_escape_string (oauth2->client_id, NULL, FALSE);
      g_autoptr (PgSecret) escaped = g_uri_escape_string (secret, NULL, FALSE);
      g_autoptr (PgSecret) pair = g_strconcat (id, ":", escaped, NULL);
      g_autoptr (PgSecret) b64 = g_base64_encode ((const guchar *) pair, strlen (pair));
      g_autoptr (PgSecret) header = g_strconcat ("Basic ", b64, NULL);

      soup_message_headers_replace (soup_message_get_request_headers (post->message),
                                    "Authorization", header);
    }

  post->timer = g_timeout_source_new (MAX (timeout_ms, 1));
  g_source_set_callback (post->timer, pg_oauth2_post_timeout_cb, post, NULL);
  g_source_attach (post->timer, g_main_context_get_thread_default ());
  soup_session_send_async (session, post->message, G_PRIORITY_DEFAULT, post->cancellable,
                           pg_oauth2_post_sent_cb, g_steal_pointer (&task));
}

JsonObject *
pg_oauth2_http_post_finish (GAsyncResult *result, guint *out_status, GError **error)
{
  GTask *task = G_TASK (result);
  PgOAuth2Post *post = g_task_get_task_data (task);
  g_autoptr (GError) local = NULL;
  JsonObject *object;

  g_return_val_if_fail (g_task_get_source_tag (task) == pg_oauth2_http_post_async, NULL);
  object = g_task_propagate_pointer (task, &local);
  if (local != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&local));
      return NULL;
    }
  if (out_status != NULL)
    *out_status = post != NULL ? soup_message_get_status (post->message) : 0;
  return object;
}
