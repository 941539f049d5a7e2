/* popgate — OAuth 2.0: obtaining an account's first refresh token (--oauth2-authorize).
 *
 * With oauth2_device_url: the device authorization grant (RFC 8628). popgate asks for a
 * device code, shows the verification URI and the user code, and polls the token endpoint
 * at the server's interval (5 s more after each slow_down, §3.5) until the user approved,
 * refused, or the code expired (its expires_in bounds the wait).
 *
 * Else with oauth2_authorize_url: the authorization code grant with PKCE S256 (RFC 7636)
 * and a loopback redirect (RFC 8252 §7.3): a SoupServer on 127.0.0.1 on an ephemeral port
 * receives the browser's redirect; the state parameter ties it to this request. The wait
 * is bounded by PG_OAUTH2_AUTHORIZE_TIMEOUT_S.
 *
 * Either way the refresh token is written to the account's token file atomically with
 * mode 0600, and nothing secret is printed: the user code is meant for the user's eyes.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-oauth2.h"

#include "pg-oauth2-private.h"

#include "pg-build-config.h"
#include "popgate/pg-limits.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <libsoup/soup.h>
#include <string.h>

typedef struct
{
  PgOAuth2Config oauth2; /* strings owned */
  gchar *upstream;       /* owned: its name, for messages */
  gchar *provider;       /* owned */
  gchar *token_file;     /* owned */
  guint timeout_ms;      /* per HTTP request */
  PgOAuth2PromptFunc prompt;
  gpointer prompt_data;

  /* device grant */
  PgSecret *device_code; /* owned */
  guint interval_s;
  gint64 deadline_us;  /* monotonic */
  GSource *poll_timer; /* owned */

  /* authorization code */
  SoupServer *server;  /* owned */
  gchar *redirect_uri; /* owned */
  PgSecret *verifier;  /* owned: PKCE code_verifier */
  gchar *state;        /* owned */
  GSource *wait_timer; /* owned */
  gboolean got_redirect;
} PgOAuth2Authorize;

static void
pg_oauth2_authorize_free (PgOAuth2Authorize *auth)
{
  g_free (auth->oauth2.token_url);
  g_free (auth->oauth2.client_id);
  g_free (auth->oauth2.client_secret_file);
  g_free (auth->oauth2.scope);
  g_free (auth->oauth2.authorize_url);
  g_free (auth->oauth2.device_url);
  g_free (auth->oauth2.ca_file);
  g_free (auth->upstream);
  g_free (auth->provider);
  g_free (auth->token_file);
  pg_secret_free (auth->device_code);
  if (auth->poll_timer != NULL)
    {
      g_source_destroy (auth->poll_timer);
      g_source_unref (auth->poll_timer);
    }
  if (auth->wait_timer != NULL)
    {
      g_source_destroy (auth->wait_timer);
      g_source_unref (auth->wait_timer);
    }
  if (auth->server != NULL)
    soup_server_disconnect (auth->server);
  g_clear_object (&auth->server);
  g_free (auth->redirect_uri);
  pg_secret_free (auth->verifier);
  g_free (auth->state);
  g_free (auth);
}

static void pg_oauth2_authorize_say (PgOAuth2Authorize *auth, const char *format, ...)
    G_GNUC_PRINTF (2, 3);

static void
pg_oauth2_authorize_say (PgOAuth2Authorize *auth, const char *format, ...)
{
  va_list args;
  g_autofree gchar *text = NULL;

  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);
  if (auth->prompt != NULL)
    auth->prompt (text, auth->prompt_data);
}

/* Peer text for the terminal: escaped and cut. */
static gchar *
pg_oauth2_authorize_escape (const char *text)
{
  return pg_log_escape (text, strlen (text), 512);
}

/* A token reply: keep its refresh token, or fail. */
static void
pg_oauth2_authorize_keep (GTask *task, JsonObject *object)
{
  PgOAuth2Authorize *auth = g_task_get_task_data (task);
  const char *refresh_token = pg_oauth2_json_string (object, "refresh_token");
  g_autoptr (GError) error = NULL;

  if (refresh_token == NULL || *refresh_token == '\0' || strpbrk (refresh_token, "\r\n") != NULL)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "the token endpoint issued no refresh_token (for Google, the "
                               "consent must ask for offline access)");
      return;
    }
  if (!pg_oauth2_write_token_file (auth->token_file, refresh_token, &error))
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  pg_oauth2_authorize_say (auth, "popgate: authorized; the refresh token is in %s",
                           auth->token_file);
  g_task_return_boolean (task, TRUE);
}

/* --- device grant (RFC 8628) --------------------------------------------------------------- */

static void pg_oauth2_authorize_poll_later (GTask *task);

static void
pg_oauth2_authorize_poll_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgOAuth2Authorize *auth = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) object = NULL;
  guint status = 0;
  const char *code;

  object = pg_oauth2_http_post_finish (result, &status, &error);
  if (error != NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (status == 200)
    {
      pg_oauth2_authorize_keep (task, object);
      return;
    }
  code = pg_oauth2_http_error_code (object);
  if (g_strcmp0 (code, "authorization_pending") == 0)
    {
      pg_oauth2_authorize_poll_later (g_steal_pointer (&task));
      return;
    }
  if (g_strcmp0 (code, "slow_down") == 0)
    {
      /* §3.5: add 5 seconds to this and every later interval. */
      auth->interval_s = MIN (auth->interval_s + 5, PG_OAUTH2_DEVICE_MAX_INTERVAL_S);
      pg_oauth2_authorize_poll_later (g_steal_pointer (&task));
      return;
    }
  g_task_return_error (task, pg_oauth2_http_error (status, object, "device authorization"));
}

static gboolean
pg_oauth2_authorize_poll_timer_cb (gpointer user_data)
{
  GTask *task = user_data;
  PgOAuth2Authorize *auth = g_task_get_task_data (task);
  g_autoptr (GHashTable) form = g_hash_table_new (g_str_hash, g_str_equal);

  g_clear_pointer (&auth->poll_timer, g_source_unref);
  if (g_task_return_error_if_cancelled (task))
    {
      g_object_unref (task);
      return G_SOURCE_REMOVE;
    }
  g_hash_table_insert (form, (gpointer) "grant_type",
                       (gpointer) "urn:ietf:params:oauth:grant-type:device_code");
  g_hash_table_insert (form, (gpointer) "device_code", auth->device_code);
  pg_oauth2_http_post_async (&auth->oauth2, auth->oauth2.token_url, form, auth->timeout_ms,
                             g_task_get_cancellable (task), pg_oauth2_authorize_poll_cb, task);
  return G_SOURCE_REMOVE;
}

static void
pg_oauth2_authorize_poll_later (GTask *task)
{
  PgOAuth2Authorize *auth = g_task_get_task_data (task);

  if (g_get_monotonic_time () + (gint64) auth->interval_s * G_USEC_PER_SEC > auth->deadline_us)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_TIMEOUT,
                               "the device code expired before it was approved");
      g_object_unref (task);
      return;
    }
  auth->poll_timer = g_timeout_source_new_seconds (auth->interval_s);
  g_source_set_callback (auth->poll_timer, pg_oauth2_authorize_poll_timer_cb, task, NULL);
  g_source_attach (auth->poll_timer, g_task_get_context (task));
}

static void
pg_oauth2_authorize_device_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgOAuth2Authorize *auth = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) object = NULL;
  guint status = 0;
  const char *device_code, *user_code, *uri, *uri_complete;
  guint64 expires_in = 0, interval = PG_OAUTH2_DEVICE_DEFAULT_INTERVAL_S;
  g_autofree gchar *user_code_text = NULL;
  g_autofree gchar *uri_text = NULL;

  object = pg_oauth2_http_post_finish (result, &status, &error);
  if (error != NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (status != 200)
    {
      g_task_return_error (task,
                           pg_oauth2_http_error (status, object, "device authorization endpoint"));
      return;
    }
  device_code = pg_oauth2_json_string (object, "device_code");
  user_code = pg_oauth2_json_string (object, "user_code");
  /* Google's older endpoint says verification_url. */
  uri = pg_oauth2_json_string (object, "verification_uri");
  if (uri == NULL)
    uri = pg_oauth2_json_string (object, "verification_url");
  uri_complete = pg_oauth2_json_string (object, "verification_uri_complete");
  if (device_code == NULL || user_code == NULL || uri == NULL
      || !pg_oauth2_json_uint (object, "expires_in", &expires_in) || expires_in == 0)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "the device authorization endpoint answered without device_code, "
                               "user_code, verification_uri or expires_in");
      return;
    }
  (void) pg_oauth2_json_uint (object, "interval", &interval);
  auth->interval_s = (guint) CLAMP (interval, 1, PG_OAUTH2_DEVICE_MAX_INTERVAL_S);
  auth->deadline_us = g_get_monotonic_time ()
                      + (gint64) MIN (expires_in, PG_OAUTH2_DEVICE_MAX_EXPIRES_S) * G_USEC_PER_SEC;
  auth->device_code = g_strdup (device_code);
  user_code_text = pg_oauth2_authorize_escape (user_code);
  uri_text = pg_oauth2_authorize_escape (uri);
  pg_oauth2_authorize_say (auth,
                           "To authorize popgate for upstream %s, open %s and enter the code %s",
                           auth->upstream, uri_text, user_code_text);
  if (uri_complete != NULL)
    {
      g_autofree gchar *complete_text = pg_oauth2_authorize_escape (uri_complete);
      pg_oauth2_authorize_say (auth, "(or open %s)", complete_text);
    }
  pg_oauth2_authorize_say (auth, "Waiting up to %" G_GUINT64_FORMAT " s for the approval...",
                           MIN (expires_in, PG_OAUTH2_DEVICE_MAX_EXPIRES_S));
  pg_oauth2_authorize_poll_later (g_steal_pointer (&task));
}

/* --- authorization code + PKCE (RFC 7636, RFC 8252) ---------------------------------------- */

/* base64url without padding (RFC 7636 §4.1-4.2). */
static gchar *
pg_oauth2_base64url (const guint8 *data, gsize len)
{
  gchar *text = g_base64_encode (data, len);

  for (gchar *p = text; *p != '\0'; p++)
    if (*p == '+')
      *p = '-';
    else if (*p == '/')
      *p = '_';
  *strchrnul (text, '=') = '\0';
  return text;
}

static gchar *
pg_oauth2_random_string (void)
{
  guint8 bytes[32];
  gchar *text;

  if (gnutls_rnd (GNUTLS_RND_KEY, bytes, sizeof bytes) != 0)
    g_error ("gnutls_rnd failed");
  text = pg_oauth2_base64url (bytes, sizeof bytes);
  pg_secret_wipe (bytes, sizeof bytes);
  return text;
}

static gchar *
pg_oauth2_pkce_challenge (const char *verifier)
{
  g_autoptr (GChecksum) sha = g_checksum_new (G_CHECKSUM_SHA256);
  guint8 digest[32];
  gsize len = sizeof digest;

  g_checksum_update (sha, (const guchar *) verifier, (gssize) strlen (verifier));
  g_checksum_get_digest (sha, digest, &len);
  return pg_oauth2_base64url (digest, len);
}

static void
pg_oauth2_authorize_exchange_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) object = NULL;
  guint status = 0;

  object = pg_oauth2_http_post_finish (result, &status, &error);
  if (error != NULL)
    g_task_return_error (task, g_steal_pointer (&error));
  else if (status != 200)
    g_task_return_error (task, pg_oauth2_http_error (status, object, "token endpoint"));
  else
    pg_oauth2_authorize_keep (task, object);
}

static void
pg_oauth2_authorize_redirect_cb (SoupServer *server, SoupServerMessage *msg, const char *path,
                                 GHashTable *query, gpointer user_data)
{
  GTask *task = user_data;
  PgOAuth2Authorize *auth = g_task_get_task_data (task);
  const char *code = query != NULL ? g_hash_table_lookup (query, "code") : NULL;
  const char *state = query != NULL ? g_hash_table_lookup (query, "state") : NULL;
  const char *oauth_error = query != NULL ? g_hash_table_lookup (query, "error") : NULL;
  static const char done_page[]
      = "<!DOCTYPE html><title>popgate</title><p>popgate is authorized. You may close this "
        "window.</p>\n";
  static const char error_page[]
      = "<!DOCTYPE html><title>popgate</title><p>popgate was not authorized; see its "
        "terminal.</p>\n";
  g_autoptr (GHashTable) form = NULL;

  if (auth->got_redirect || strcmp (path, "/callback") != 0 || state == NULL || auth->state == NULL
      || strlen (state) != strlen (auth->state)
      || !pg_secret_equal (state, auth->state, strlen (state)))
    {
      /* Not our redirect (a favicon, a stale tab, a forged request): ignore it. */
      soup_server_message_set_status (msg, SOUP_STATUS_NOT_FOUND, NULL);
      return;
    }
  auth->got_redirect = TRUE;
  if (code == NULL)
    {
      g_autofree gchar *text = pg_oauth2_authorize_escape (oauth_error != NULL ? oauth_error : "");
      soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
      soup_server_message_set_response (msg, "text/html; charset=utf-8", SOUP_MEMORY_STATIC,
                                        error_page, strlen (error_page));
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_AUTH_FAILED,
                               "the authorization server refused: %s", text);
      g_object_unref (task);
      return;
    }
  soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
  soup_server_message_set_response (msg, "text/html; charset=utf-8", SOUP_MEMORY_STATIC, done_page,
                                    strlen (done_page));
  if (auth->wait_timer != NULL)
    {
      g_source_destroy (auth->wait_timer);
      g_clear_pointer (&auth->wait_timer, g_source_unref);
    }
  form = g_hash_table_new (g_str_hash, g_str_equal);
  g_hash_table_insert (form, (gpointer) "grant_type", (gpointer) "authorization_code");
  g_hash_table_insert (form, (gpointer) "code", (gpointer) code);
  g_hash_table_insert (form, (gpointer) "redirect_uri", auth->redirect_uri);
  g_hash_table_insert (form, (gpointer) "code_verifier", auth->verifier);
  /* The task's ref passes to the exchange. */
  pg_oauth2_http_post_async (&auth->oauth2, auth->oauth2.token_url, form, auth->timeout_ms,
                             g_task_get_cancellable (task), pg_oauth2_authorize_exchange_cb, task);
}

static gboolean
pg_oauth2_authorize_wait_timeout_cb (gpointer user_data)
{
  GTask *task = user_data;
  PgOAuth2Authorize *auth = g_task_get_task_data (task);

  g_clear_pointer (&auth->wait_timer, g_source_unref);
  auth->got_redirect = TRUE; /* a late redirect is ignored */
  g_task_return_new_error (task, PG_ERROR, PG_ERROR_TIMEOUT, "no authorization arrived within %u s",
                           (guint) PG_OAUTH2_AUTHORIZE_TIMEOUT_S);
  g_object_unref (task);
  return G_SOURCE_REMOVE;
}

static void
pg_oauth2_authorize_code (GTask *task)
{
  PgOAuth2Authorize *auth = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (GSList) uris = NULL;
  g_autofree gchar *challenge = NULL;
  g_autoptr (GString) url = NULL;
  guint port;

  auth->server = soup_server_new ("server-header", PG_PACKAGE, NULL);
  if (!soup_server_listen_local (auth->server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_CONFIG,
                               "cannot listen on 127.0.0.1 for the redirect: %s", error->message);
      g_object_unref (task);
      return;
    }
  uris = soup_server_get_uris (auth->server);
  port = uris != NULL ? (guint) g_uri_get_port (uris->data) : 0;
  g_slist_free_full (g_steal_pointer (&uris), (GDestroyNotify) g_uri_unref);
  /* RFC 8252 §7.3: the loopback IP literal, not "localhost"; any port. Register
   * http://127.0.0.1/callback with the provider. */
  auth->redirect_uri = g_strdup_printf ("http://127.0.0.1:%u/callback", port);
  auth->verifier = pg_oauth2_random_string ();
  auth->state = pg_oauth2_random_string ();
  challenge = pg_oauth2_pkce_challenge (auth->verifier);
  soup_server_add_handler (auth->server, NULL, pg_oauth2_authorize_redirect_cb, task, NULL);

  url = g_string_new (auth->oauth2.authorize_url);
  g_string_append_c (url, strchr (auth->oauth2.authorize_url, '?') != NULL ? '&' : '?');
  {
    g_autoptr (GHashTable) query = g_hash_table_new (g_str_hash, g_str_equal);
    g_autofree gchar *encoded = NULL;

    g_hash_table_insert (query, (gpointer) "response_type", (gpointer) "code");
    g_hash_table_insert (query, (gpointer) "client_id", auth->oauth2.client_id);
    g_hash_table_insert (query, (gpointer) "redirect_uri", auth->redirect_uri);
    g_hash_table_insert (query, (gpointer) "state", auth->state);
    g_hash_table_insert (query, (gpointer) "code_challenge", challenge);
    g_hash_table_insert (query, (gpointer) "code_challenge_method", (gpointer) "S256");
    if (auth->oauth2.scope != NULL)
      g_hash_table_insert (query, (gpointer) "scope", auth->oauth2.scope);
    if (g_strcmp0 (auth->provider, "gmail") == 0)
      {
        /* Google issues a refresh token only for offline access, and again only on a
         * fresh consent. */
        g_hash_table_insert (query, (gpointer) "access_type", (gpointer) "offline");
        g_hash_table_insert (query, (gpointer) "prompt", (gpointer) "consent");
      }
    encoded = soup_form_encode_hash (query);
    g_string_append (url, encoded);
  }
  pg_oauth2_authorize_say (auth,
                           "To authorize popgate for upstream %s, open this URL in a browser "
                           "on this machine:\n%s",
                           auth->upstream, url->str);
  pg_oauth2_authorize_say (auth, "Waiting up to %u s for the browser to come back to %s ...",
                           (guint) PG_OAUTH2_AUTHORIZE_TIMEOUT_S, auth->redirect_uri);
  auth->wait_timer = g_timeout_source_new_seconds (PG_OAUTH2_AUTHORIZE_TIMEOUT_S);
  g_source_set_callback (auth->wait_timer, pg_oauth2_authorize_wait_timeout_cb, task, NULL);
  g_source_attach (auth->wait_timer, g_task_get_context (task));
}

/* --- entry point ----------------------------------------------------------------------------- */

void
pg_oauth2_authorize_async (const PgUpstreamConfig *upstream, const char *token_file,
                           PgOAuth2PromptFunc prompt, gpointer prompt_data,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  PgOAuth2Authorize *auth;

  g_return_if_fail (upstream != NULL && token_file != NULL);
  g_task_set_source_tag (task, pg_oauth2_authorize_async);
  auth = g_new0 (PgOAuth2Authorize, 1);
  g_task_set_task_data (task, auth, (GDestroyNotify) pg_oauth2_authorize_free);
  auth->oauth2.token_url = g_strdup (upstream->oauth2.token_url);
  auth->oauth2.client_id = g_strdup (upstream->oauth2.client_id);
  auth->oauth2.client_secret_file = g_strdup (upstream->oauth2.client_secret_file);
  auth->oauth2.scope = g_strdup (upstream->oauth2.scope);
  auth->oauth2.authorize_url = g_strdup (upstream->oauth2.authorize_url);
  auth->oauth2.device_url = g_strdup (upstream->oauth2.device_url);
  auth->oauth2.ca_file = g_strdup (upstream->oauth2.ca_file);
  auth->oauth2.grant = upstream->oauth2.grant;
  auth->upstream = g_strdup (upstream->name);
  auth->provider = g_strdup (upstream->provider);
  auth->token_file = g_strdup (token_file);
  auth->timeout_ms
      = upstream->timeout_ms > 0 ? upstream->timeout_ms : PG_DEFAULT_UPSTREAM_TIMEOUT_S * 1000;
  auth->prompt = prompt;
  auth->prompt_data = prompt_data;

  if (auth->oauth2.token_url == NULL || auth->oauth2.client_id == NULL)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_CONFIG,
                               "upstream %s needs oauth2_token_url and oauth2_client_id",
                               upstream->name);
      return;
    }
  if (auth->oauth2.device_url != NULL)
    {
      g_autoptr (GHashTable) form = g_hash_table_new (g_str_hash, g_str_equal);

      if (auth->oauth2.scope != NULL)
        g_hash_table_insert (form, (gpointer) "scope", auth->oauth2.scope);
      pg_oauth2_http_post_async (&auth->oauth2, auth->oauth2.device_url, form, auth->timeout_ms,
                                 cancellable, pg_oauth2_authorize_device_cb,
                                 g_steal_pointer (&task));
      return;
    }
  if (auth->oauth2.authorize_url != NULL)
    {
      pg_oauth2_authorize_code (g_steal_pointer (&task));
      return;
    }
  g_task_return_new_error (task, PG_ERROR, PG_ERROR_CONFIG,
                           "upstream %s has neither oauth2_device_url nor oauth2_authorize_url",
                           upstream->name);
}

gboolean
pg_oauth2_authorize_finish (GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == pg_oauth2_authorize_async,
                        FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}
