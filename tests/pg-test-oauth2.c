/* popgate tests — a real OAuth 2.0 authorization server for integration tests.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-oauth2.h"

#include <glib/gstdio.h>
#include <string.h>

/* Debian's interpreter: a python3 earlier in PATH (pyenv) does not see Debian's modules. */
#define PG_TEST_OAUTH2_PYTHON "/usr/bin/python3"
#define PG_TEST_OAUTH2_AUTHLIB "/usr/lib/python3/dist-packages/authlib/__init__.py"
#define PG_TEST_OAUTH2_FLASK "/usr/lib/python3/dist-packages/flask/__init__.py"
/* The server starts in well under a second (Flask and Authlib imports); allow for a
 * loaded CI machine. */
#define PG_TEST_OAUTH2_START_TIMEOUT_MS 30000
/* It exits at once on SIGTERM. */
#define PG_TEST_OAUTH2_STOP_TIMEOUT_MS 10000
/* Seconds one HTTP request to the server may take. */
#define PG_TEST_OAUTH2_HTTP_TIMEOUT_S 30
/* Token polls of the device grant before we give up (each waits `interval`). */
#define PG_TEST_OAUTH2_DEVICE_POLLS 20
/* Largest answer we read from the server. */
#define PG_TEST_OAUTH2_MAX_BODY (1024 * 1024)

const char *
pg_test_oauth2_skip_reason (void)
{
  if (!g_file_test (PG_TEST_OAUTH2_PYTHON, G_FILE_TEST_IS_EXECUTABLE))
    return "Debian's " PG_TEST_OAUTH2_PYTHON " is missing (apt-get install python3)";
  if (!g_file_test (PG_TEST_OAUTH2_AUTHLIB, G_FILE_TEST_EXISTS)
      || !g_file_test (PG_TEST_OAUTH2_FLASK, G_FILE_TEST_EXISTS))
    return "Authlib or Flask is missing (apt-get install python3-authlib python3-flask)";
  return NULL;
}

PgTestOAuth2 *
pg_test_oauth2_new (const PgTestOAuth2Options *options, GError **error)
{
  g_autoptr (PgTestOAuth2) oauth2 = g_new0 (PgTestOAuth2, 1);
  const char *reason = pg_test_oauth2_skip_reason ();

  if (reason != NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "%s", reason);
      return NULL;
    }
  if (options != NULL)
    oauth2->options = *options;
  if (oauth2->options.access_token_lifetime == 0)
    oauth2->options.access_token_lifetime = 3600;
  if (oauth2->options.device_interval == 0)
    oauth2->options.device_interval = 1;
  if (oauth2->options.device_code_lifetime == 0)
    oauth2->options.device_code_lifetime = 600;
  oauth2->host = "127.0.0.1";
  oauth2->clients = json_array_new ();
  oauth2->secrets = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  oauth2->methods = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  oauth2->session
      = soup_session_new_with_options ("timeout", PG_TEST_OAUTH2_HTTP_TIMEOUT_S, "idle-timeout",
                                       PG_TEST_OAUTH2_HTTP_TIMEOUT_S, NULL);
  oauth2->dir = g_dir_make_tmp ("popgate-oauth2-XXXXXX", error);
  if (oauth2->dir == NULL)
    return NULL;
  if (oauth2->options.tls)
    {
      g_autoptr (GTlsDatabase) database = NULL;

      oauth2->certs = pg_test_certs_new (oauth2->dir, error);
      if (oauth2->certs == NULL)
        return NULL;
      oauth2->ca_file = oauth2->certs->ca_file;
      database = g_tls_file_database_new (oauth2->ca_file, error);
      if (database == NULL)
        return NULL;
      soup_session_set_tls_database (oauth2->session, database);
    }
  oauth2->config_file = g_build_filename (oauth2->dir, "config.json", NULL);
  oauth2->log_file = g_build_filename (oauth2->dir, "oauth2-server.log", NULL);
  oauth2->stderr_file = g_build_filename (oauth2->dir, "stderr.log", NULL);
  return g_steal_pointer (&oauth2);
}

static JsonNode *
pg_test_oauth2_settings (PgTestOAuth2 *oauth2, gboolean with_clients)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "access_token_lifetime");
  json_builder_add_int_value (builder, oauth2->options.access_token_lifetime);
  json_builder_set_member_name (builder, "refresh_token_lifetime");
  json_builder_add_int_value (builder, oauth2->options.refresh_token_lifetime);
  json_builder_set_member_name (builder, "rotation");
  json_builder_add_boolean_value (builder, oauth2->options.rotation);
  json_builder_set_member_name (builder, "device_interval");
  json_builder_add_int_value (builder, oauth2->options.device_interval);
  json_builder_set_member_name (builder, "device_code_lifetime");
  json_builder_add_int_value (builder, oauth2->options.device_code_lifetime);
  if (with_clients)
    {
      json_builder_set_member_name (builder, "clients");
      json_builder_add_value (builder, json_node_init_array (json_node_alloc (), oauth2->clients));
    }
  json_builder_end_object (builder);
  return json_builder_get_root (builder);
}

static gboolean
pg_test_oauth2_write_config (PgTestOAuth2 *oauth2, GError **error)
{
  g_autoptr (JsonNode) root = pg_test_oauth2_settings (oauth2, TRUE);
  g_autofree gchar *text = json_to_string (root, TRUE);

  /* It holds client secrets: only we read it. */
  return g_file_set_contents_full (oauth2->config_file, text, -1, G_FILE_SET_CONTENTS_CONSISTENT,
                                   0600, error);
}

static JsonObject *
pg_test_oauth2_parse (GBytes *body, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  gsize len = 0;
  const char *data = g_bytes_get_data (body, &len);
  JsonNode *root = NULL;

  if (len > PG_TEST_OAUTH2_MAX_BODY)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE,
                   "the server's answer is too large (%" G_GSIZE_FORMAT " bytes)", len);
      return NULL;
    }
  if (!json_parser_load_from_data (parser, data, (gssize) len, error))
    return NULL;
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                           "the server's answer is not a JSON object");
      return NULL;
    }
  return json_object_ref (json_node_get_object (root));
}

/* Send msg, read the whole answer; *out_status gets the HTTP status. */
static GBytes *
pg_test_oauth2_send (PgTestOAuth2 *oauth2, SoupMessage *msg, guint *out_status, GError **error)
{
  g_autoptr (GBytes) body = NULL;

  if (oauth2->base_url == NULL)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_CONNECTED,
                           "the authorization server was never started");
      return NULL;
    }
  /* While it is stopped, this is a real connection refused. */
  body = soup_session_send_and_read (oauth2->session, msg, NULL, error);
  if (body == NULL)
    return NULL;
  *out_status = soup_message_get_status (msg);
  return g_steal_pointer (&body);
}

static gboolean
pg_test_oauth2_admin (PgTestOAuth2 *oauth2, JsonNode *settings, GError **error)
{
  g_autofree gchar *url = NULL;
  g_autofree gchar *text = json_to_string (settings, FALSE);
  g_autoptr (SoupMessage) msg = NULL;
  g_autoptr (GBytes) request = NULL;
  g_autoptr (GBytes) body = NULL;
  guint status = 0;

  if (oauth2->process == NULL)
    return pg_test_oauth2_write_config (oauth2, error);
  url = g_strconcat (oauth2->base_url, "/admin", NULL);
  msg = soup_message_new ("POST", url);
  request = g_bytes_new (text, strlen (text));
  soup_message_set_request_body_from_bytes (msg, "application/json", request);
  body = pg_test_oauth2_send (oauth2, msg, &status, error);
  if (body == NULL)
    return FALSE;
  if (status != SOUP_STATUS_OK)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "POST /admin: HTTP %u: %.*s", status,
                   (int) MIN (g_bytes_get_size (body), 200),
                   (const char *) g_bytes_get_data (body, NULL));
      return FALSE;
    }
  /* Also for a restart. */
  return pg_test_oauth2_write_config (oauth2, error);
}

gboolean
pg_test_oauth2_add_client (PgTestOAuth2 *oauth2, const char *client_id, const char *client_secret,
                           const char *auth_method, const char *username, GError **error)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonBuilder) update = json_builder_new ();
  g_autoptr (JsonNode) client = NULL;
  g_autoptr (JsonNode) settings = NULL;

  g_return_val_if_fail (oauth2 != NULL && client_id != NULL, FALSE);
  if (auth_method == NULL)
    auth_method = client_secret != NULL ? "client_secret_basic" : "none";
  if ((client_secret == NULL) != (g_strcmp0 (auth_method, "none") == 0))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "client %s: auth method %s does not fit a %s client", client_id, auth_method,
                   client_secret != NULL ? "confidential" : "public");
      return FALSE;
    }
  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "client_id");
  json_builder_add_string_value (builder, client_id);
  if (client_secret != NULL)
    {
      json_builder_set_member_name (builder, "client_secret");
      json_builder_add_string_value (builder, client_secret);
    }
  json_builder_set_member_name (builder, "grant_types");
  json_builder_begin_array (builder);
  json_builder_add_string_value (builder, "refresh_token");
  json_builder_add_string_value (builder, PG_TEST_OAUTH2_DEVICE_GRANT);
  json_builder_add_string_value (builder, "authorization_code");
  if (username != NULL)
    json_builder_add_string_value (builder, "client_credentials");
  json_builder_end_array (builder);
  json_builder_set_member_name (builder, "redirect_uris");
  json_builder_begin_array (builder);
  json_builder_add_string_value (builder, "http://127.0.0.1/callback");
  json_builder_end_array (builder);
  if (username != NULL)
    {
      json_builder_set_member_name (builder, "username");
      json_builder_add_string_value (builder, username);
    }
  json_builder_end_object (builder);
  client = json_builder_get_root (builder);

  json_array_add_element (oauth2->clients, json_node_copy (client));
  if (client_secret != NULL)
    g_hash_table_replace (oauth2->secrets, g_strdup (client_id), g_strdup (client_secret));
  g_hash_table_replace (oauth2->methods, g_strdup (client_id), g_strdup (auth_method));

  json_builder_begin_object (update);
  json_builder_set_member_name (update, "clients");
  json_builder_begin_array (update);
  json_builder_add_value (update, g_steal_pointer (&client));
  json_builder_end_array (update);
  json_builder_end_object (update);
  settings = json_builder_get_root (update);
  return pg_test_oauth2_admin (oauth2, settings, error);
}

static void
pg_test_oauth2_set_urls (PgTestOAuth2 *oauth2)
{
  g_autofree gchar *base = g_strdup_printf ("%s://%s:%u", oauth2->options.tls ? "https" : "http",
                                            oauth2->host, oauth2->port);

  g_free (oauth2->base_url);
  g_free (oauth2->token_url);
  g_free (oauth2->device_url);
  g_free (oauth2->authorize_url);
  g_free (oauth2->introspection_url);
  g_free (oauth2->revoke_url);
  g_free (oauth2->verification_url);
  oauth2->base_url = g_strdup (base);
  oauth2->token_url = g_strconcat (base, "/token", NULL);
  oauth2->device_url = g_strconcat (base, "/device_authorization", NULL);
  oauth2->authorize_url = g_strconcat (base, "/authorize", NULL);
  oauth2->introspection_url = g_strconcat (base, "/introspect", NULL);
  oauth2->revoke_url = g_strconcat (base, "/revoke", NULL);
  oauth2->verification_url = g_strconcat (base, "/device", NULL);
}

typedef struct
{
  const char *ready_file;
  PgTestProcess *process;
} PgTestOAuth2Wait;

static gboolean
pg_test_oauth2_ready_cb (gpointer user_data)
{
  PgTestOAuth2Wait *wait = user_data;

  return g_file_test (wait->ready_file, G_FILE_TEST_EXISTS)
         || pg_test_process_has_exited (wait->process);
}

gboolean
pg_test_oauth2_start (PgTestOAuth2 *oauth2, GError **error)
{
  g_autofree gchar *script = NULL;
  g_autofree gchar *ready_file = g_build_filename (oauth2->dir, "ready", NULL);
  g_autofree gchar *port_arg = NULL;
  g_autofree gchar *contents = NULL;
  g_autofree gchar *output = NULL;
  const char *srcdir = g_getenv ("G_TEST_SRCDIR");
  PgTestOAuth2Wait wait = { ready_file, NULL };
  guint64 port = 0;

  g_return_val_if_fail (oauth2 != NULL && oauth2->process == NULL, FALSE);
  if (srcdir == NULL)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                           "G_TEST_SRCDIR is not set (run the tests through meson test)");
      return FALSE;
    }
  script = g_build_filename (srcdir, "oauth2-server.py", NULL);
  port_arg = g_strdup_printf ("%u", oauth2->port);
  g_unlink (ready_file);
  if (!pg_test_oauth2_write_config (oauth2, error))
    return FALSE;
  {
    g_autoptr (GPtrArray) argv = g_ptr_array_new ();
    const char *args[] = { PG_TEST_OAUTH2_PYTHON, script,   "--dir", oauth2->dir, "--config",
                           oauth2->config_file,   "--port", port_arg };

    for (gsize i = 0; i < G_N_ELEMENTS (args); i++)
      g_ptr_array_add (argv, (gpointer) args[i]);
    if (oauth2->certs != NULL)
      {
        g_ptr_array_add (argv, (gpointer) "--tls-cert");
        g_ptr_array_add (argv, oauth2->certs->cert_file);
        g_ptr_array_add (argv, (gpointer) "--tls-key");
        g_ptr_array_add (argv, oauth2->certs->key_file);
      }
    g_ptr_array_add (argv, NULL);
    oauth2->process
        = pg_test_process_spawn ((const char *const *) argv->pdata, oauth2->stderr_file, error);
  }
  if (oauth2->process == NULL)
    return FALSE;
  wait.process = oauth2->process;
  pg_test_wait_until (pg_test_oauth2_ready_cb, &wait, PG_TEST_OAUTH2_START_TIMEOUT_MS);
  contents = pg_test_read_file (ready_file);
  if (pg_test_process_has_exited (oauth2->process)
      || !g_ascii_string_to_unsigned (g_strstrip (contents), 10, 1, G_MAXUINT16, &port, NULL))
    {
      pg_test_process_stop (oauth2->process, PG_TEST_OAUTH2_STOP_TIMEOUT_MS);
      g_clear_pointer (&oauth2->process, pg_test_process_free);
      output = pg_test_read_file (oauth2->stderr_file);
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                   "the OAuth2 server (%s) did not start within %d ms:\n%s", script,
                   PG_TEST_OAUTH2_START_TIMEOUT_MS, output);
      return FALSE;
    }
  oauth2->port = (guint16) port;
  pg_test_oauth2_set_urls (oauth2);
  return TRUE;
}

GPid
pg_test_oauth2_get_pid (PgTestOAuth2 *oauth2)
{
  return oauth2->process != NULL ? pg_test_process_get_pid (oauth2->process) : 0;
}

gboolean
pg_test_oauth2_stop (PgTestOAuth2 *oauth2)
{
  gboolean clean = TRUE;

  g_return_val_if_fail (oauth2 != NULL, FALSE);
  if (oauth2->process == NULL)
    return TRUE;
  clean = pg_test_process_stop (oauth2->process, PG_TEST_OAUTH2_STOP_TIMEOUT_MS);
  g_clear_pointer (&oauth2->process, pg_test_process_free);
  /* Kept-alive connections to the old server are dead now. */
  soup_session_abort (oauth2->session);
  return clean;
}

void
pg_test_oauth2_free (PgTestOAuth2 *oauth2)
{
  if (oauth2 == NULL)
    return;
  pg_test_oauth2_stop (oauth2);
  if (oauth2->dir != NULL && !pg_test_rm_rf (oauth2->dir))
    g_warning ("could not remove %s", oauth2->dir);
  g_free (oauth2->dir);
  g_free (oauth2->config_file);
  g_free (oauth2->log_file);
  g_free (oauth2->stderr_file);
  g_free (oauth2->base_url);
  g_free (oauth2->token_url);
  g_free (oauth2->device_url);
  g_free (oauth2->authorize_url);
  g_free (oauth2->introspection_url);
  g_free (oauth2->revoke_url);
  g_free (oauth2->verification_url);
  pg_test_certs_free (oauth2->certs);
  g_clear_pointer (&oauth2->clients, json_array_unref);
  g_clear_pointer (&oauth2->secrets, g_hash_table_unref);
  g_clear_pointer (&oauth2->methods, g_hash_table_unref);
  g_clear_object (&oauth2->session);
  g_free (oauth2);
}

JsonObject *
pg_test_oauth2_post (PgTestOAuth2 *oauth2, const char *url, const char *client_id,
                     const char *const *form, guint *out_status, GError **error)
{
  g_autoptr (GHashTable) fields = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (SoupMessage) msg = NULL;
  g_autoptr (GBytes) body = NULL;
  g_autoptr (JsonObject) answer = NULL;
  const char *method = NULL;
  const char *secret = NULL;
  guint status = 0;

  for (gsize i = 0; form != NULL && form[i] != NULL && form[i + 1] != NULL; i += 2)
    g_hash_table_insert (fields, (gpointer) form[i], (gpointer) form[i + 1]);
  if (client_id != NULL)
    {
      method = g_hash_table_lookup (oauth2->methods, client_id);
      secret = g_hash_table_lookup (oauth2->secrets, client_id);
      if (method == NULL)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no client %s registered",
                       client_id);
          return NULL;
        }
      if (g_strcmp0 (method, "client_secret_basic") != 0)
        g_hash_table_insert (fields, (gpointer) "client_id", (gpointer) client_id);
      if (g_strcmp0 (method, "client_secret_post") == 0)
        g_hash_table_insert (fields, (gpointer) "client_secret", (gpointer) secret);
    }
  msg = soup_message_new_from_encoded_form ("POST", url, soup_form_encode_hash (fields));
  /* (soup_message_new_from_encoded_form takes the encoded form.) */
  if (msg == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "bad URL %s", url);
      return NULL;
    }
  if (g_strcmp0 (method, "client_secret_basic") == 0)
    {
      /* RFC 6749 2.3.1 form-encodes both first, but Authlib 1.2 does not decode them: keep
       * test client ids and secrets to unreserved characters, where the two agree. */
      g_autofree gchar *pair = g_strconcat (client_id, ":", secret, NULL);
      g_autofree gchar *b64 = g_base64_encode ((const guchar *) pair, strlen (pair));
      g_autofree gchar *header = g_strconcat ("Basic ", b64, NULL);

      soup_message_headers_replace (soup_message_get_request_headers (msg), "Authorization",
                                    header);
    }
  body = pg_test_oauth2_send (oauth2, msg, &status, error);
  if (body == NULL)
    return NULL;
  answer = pg_test_oauth2_parse (body, error);
  if (answer == NULL)
    {
      g_prefix_error (error, "%s: HTTP %u: ", url, status);
      return NULL;
    }
  *out_status = status;
  return g_steal_pointer (&answer);
}

/* The answer of a token request: the access token, or the OAuth error as a GError. */
static gchar *
pg_test_oauth2_token_answer (JsonObject *answer, guint status, gchar **out_refresh_token,
                             GError **error)
{
  const char *access = json_object_get_string_member_with_default (answer, "access_token", NULL);
  const char *refresh = json_object_get_string_member_with_default (answer, "refresh_token", NULL);

  if (status != SOUP_STATUS_OK || access == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED, "%s (HTTP %u): %s",
                   json_object_get_string_member_with_default (answer, "error", "no token"), status,
                   json_object_get_string_member_with_default (answer, "error_description", ""));
      return NULL;
    }
  if (out_refresh_token != NULL)
    *out_refresh_token = g_strdup (refresh);
  return g_strdup (access);
}

/* The answer that ends a user's grant: the refresh token (required) and the access token. */
static gchar *
pg_test_oauth2_login_answer (JsonObject *answer, guint status, const char *grant,
                             gchar **out_access_token, GError **error)
{
  g_autofree gchar *refresh = NULL;
  g_autofree gchar *access = pg_test_oauth2_token_answer (answer, status, &refresh, error);

  if (access == NULL)
    return NULL;
  if (refresh == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "the %s grant gave no refresh token",
                   grant);
      return NULL;
    }
  if (out_access_token != NULL)
    *out_access_token = g_steal_pointer (&access);
  return g_steal_pointer (&refresh);
}

gboolean
pg_test_oauth2_approve_device (PgTestOAuth2 *oauth2, const char *user_code, const char *user,
                               GError **error)
{
  g_autoptr (GHashTable) query = g_hash_table_new (g_str_hash, g_str_equal);
  g_autofree gchar *encoded = NULL;
  g_autofree gchar *url = NULL;
  g_autoptr (SoupMessage) msg = NULL;
  g_autoptr (GBytes) body = NULL;
  guint status = 0;

  g_hash_table_insert (query, (gpointer) "user_code", (gpointer) user_code);
  if (user != NULL)
    g_hash_table_insert (query, (gpointer) "approve_as", (gpointer) user);
  else
    g_hash_table_insert (query, (gpointer) "deny", (gpointer) "1");
  encoded = soup_form_encode_hash (query);
  url = g_strconcat (oauth2->verification_url, "?", encoded, NULL);
  msg = soup_message_new ("GET", url);
  body = pg_test_oauth2_send (oauth2, msg, &status, error);
  if (body == NULL)
    return FALSE;
  if (status != SOUP_STATUS_OK)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                   "device approval: HTTP %u (unknown or expired user code)", status);
      return FALSE;
    }
  return TRUE;
}

gchar *
pg_test_oauth2_device_login (PgTestOAuth2 *oauth2, const char *client_id, const char *user,
                             gchar **out_access_token, GError **error)
{
  g_autoptr (JsonObject) device = NULL;
  const char *device_code = NULL;
  const char *user_code = NULL;
  gint64 interval = 0;
  guint status = 0;

  /* (A, B) The client asks for a device code and shows the user the user code. */
  device = pg_test_oauth2_post (oauth2, oauth2->device_url, client_id, NULL, &status, error);
  if (device == NULL)
    return NULL;
  device_code = json_object_get_string_member_with_default (device, "device_code", NULL);
  user_code = json_object_get_string_member_with_default (device, "user_code", NULL);
  interval = json_object_get_int_member_with_default (device, "interval", 5);
  if (status != SOUP_STATUS_OK || device_code == NULL || user_code == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "device authorization: HTTP %u: %s",
                   status, json_object_get_string_member_with_default (device, "error", "?"));
      return NULL;
    }
  /* (C, D) The user approves it at the verification URI. */
  if (!pg_test_oauth2_approve_device (oauth2, user_code, user, error))
    return NULL;
  /* (E, F) The client polls the token endpoint. */
  for (guint poll = 0; poll < PG_TEST_OAUTH2_DEVICE_POLLS; poll++)
    {
      const char *form[]
          = { "grant_type", PG_TEST_OAUTH2_DEVICE_GRANT, "device_code", device_code, NULL };
      g_autoptr (JsonObject) answer = NULL;
      const char *code = NULL;

      answer = pg_test_oauth2_post (oauth2, oauth2->token_url, client_id, form, &status, error);
      if (answer == NULL)
        return NULL;
      code = json_object_get_string_member_with_default (answer, "error", NULL);
      if (g_strcmp0 (code, "slow_down") == 0)
        interval += 5;
      if (g_strcmp0 (code, "slow_down") != 0 && g_strcmp0 (code, "authorization_pending") != 0)
        return pg_test_oauth2_login_answer (answer, status, "device", out_access_token, error);
      g_usleep ((gulong) CLAMP (interval, 1, 60) * G_USEC_PER_SEC);
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "device grant: no token after %d polls",
               PG_TEST_OAUTH2_DEVICE_POLLS);
  return NULL;
}

gchar *
pg_test_oauth2_consent (PgTestOAuth2 *oauth2, const char *authorize_url, const char *user,
                        gboolean follow, GError **error)
{
  g_autofree gchar *escaped = g_uri_escape_string (user, NULL, FALSE);
  g_autofree gchar *url = g_strdup_printf (
      "%s%capprove_as=%s", authorize_url, strchr (authorize_url, '?') != NULL ? '&' : '?', escaped);
  g_autoptr (SoupMessage) msg = soup_message_new ("GET", url);
  g_autoptr (SoupMessage) landing = NULL;
  g_autoptr (GBytes) body = NULL;
  g_autoptr (GBytes) landed = NULL;
  const char *location = NULL;
  guint status = 0;

  if (msg == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "bad URL %s", authorize_url);
      return NULL;
    }
  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  body = pg_test_oauth2_send (oauth2, msg, &status, error);
  if (body == NULL)
    return NULL;
  location = soup_message_headers_get_one (soup_message_get_response_headers (msg), "Location");
  if (status != SOUP_STATUS_FOUND || location == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "authorize: HTTP %u, no redirect: %.*s",
                   status, (int) MIN (g_bytes_get_size (body), 200),
                   (const char *) g_bytes_get_data (body, NULL));
      return NULL;
    }
  if (follow)
    {
      landing = soup_message_new ("GET", location);
      if (landing == NULL)
        {
          g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                               "authorize: the redirect is no URL");
          return NULL;
        }
      landed = soup_session_send_and_read (oauth2->session, landing, NULL, error);
      if (landed == NULL)
        return NULL;
    }
  return g_strdup (location);
}

/* base64url without padding (RFC 7636 appendix A). */
static gchar *
pg_test_oauth2_base64url (const guint8 *data, gsize len)
{
  gchar *text = g_base64_encode (data, len);

  g_strdelimit (text, "+", '-');
  g_strdelimit (text, "/", '_');
  g_strdelimit (text, "=", '\0');
  return text;
}

gchar *
pg_test_oauth2_code_login (PgTestOAuth2 *oauth2, const char *client_id, const char *user,
                           gchar **out_access_token, GError **error)
{
  guint8 random[32];
  guint8 digest[32];
  gsize digest_len = sizeof digest;
  g_autofree gchar *verifier = NULL;
  g_autofree gchar *challenge = NULL;
  g_autofree gchar *state = NULL;
  g_autofree gchar *url = NULL;
  g_autofree gchar *encoded = NULL;
  g_autofree gchar *redirect = NULL;
  g_autoptr (GChecksum) sha = g_checksum_new (G_CHECKSUM_SHA256);
  g_autoptr (GHashTable) query = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (GUri) location = NULL;
  g_autoptr (GHashTable) params = NULL;
  g_autoptr (JsonObject) answer = NULL;
  /* A loopback redirect (RFC 8252 7.3) on some port: registered without one. Not
   * followed: nothing listens there. */
  const char *redirect_uri = "http://127.0.0.1:9/callback";
  const char *code = NULL;
  guint status = 0;

  /* RFC 7636 4.1, 4.2: verifier = base64url(32 random bytes), challenge = S256. */
  for (gsize i = 0; i < sizeof random; i++)
    random[i] = (guint8) g_random_int_range (0, 256);
  verifier = pg_test_oauth2_base64url (random, sizeof random);
  g_checksum_update (sha, (const guchar *) verifier, (gssize) strlen (verifier));
  g_checksum_get_digest (sha, digest, &digest_len);
  challenge = pg_test_oauth2_base64url (digest, digest_len);
  state = g_strdup_printf ("%08x", g_random_int ());

  g_hash_table_insert (query, (gpointer) "response_type", (gpointer) "code");
  g_hash_table_insert (query, (gpointer) "client_id", (gpointer) client_id);
  g_hash_table_insert (query, (gpointer) "redirect_uri", (gpointer) redirect_uri);
  g_hash_table_insert (query, (gpointer) "code_challenge", challenge);
  g_hash_table_insert (query, (gpointer) "code_challenge_method", (gpointer) "S256");
  g_hash_table_insert (query, (gpointer) "state", state);
  encoded = soup_form_encode_hash (query);
  url = g_strconcat (oauth2->authorize_url, "?", encoded, NULL);
  redirect = pg_test_oauth2_consent (oauth2, url, user, FALSE, error);
  if (redirect == NULL)
    return NULL;
  location = g_uri_parse (redirect, G_URI_FLAGS_ENCODED_QUERY, error);
  if (location == NULL)
    return NULL;
  params = g_uri_parse_params (g_uri_get_query (location), -1, "&", G_URI_PARAMS_NONE, error);
  if (params == NULL)
    return NULL;
  code = g_hash_table_lookup (params, "code");
  if (code == NULL || g_strcmp0 (g_hash_table_lookup (params, "state"), state) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                   "authorize: the redirect has no code or the wrong state (error %s)",
                   (const char *) g_hash_table_lookup (params, "error"));
      return NULL;
    }
  {
    const char *form[] = { "grant_type", "authorization_code", "code",   code, "redirect_uri",
                           redirect_uri, "code_verifier",      verifier, NULL };

    answer = pg_test_oauth2_post (oauth2, oauth2->token_url, client_id, form, &status, error);
  }
  if (answer == NULL)
    return NULL;
  return pg_test_oauth2_login_answer (answer, status, "authorization-code", out_access_token,
                                      error);
}

gchar *
pg_test_oauth2_refresh (PgTestOAuth2 *oauth2, const char *client_id, const char *refresh_token,
                        gchar **out_refresh_token, GError **error)
{
  const char *form[] = { "grant_type", "refresh_token", "refresh_token", refresh_token, NULL };
  g_autoptr (JsonObject) answer = NULL;
  guint status = 0;

  answer = pg_test_oauth2_post (oauth2, oauth2->token_url, client_id, form, &status, error);
  if (answer == NULL)
    return NULL;
  return pg_test_oauth2_token_answer (answer, status, out_refresh_token, error);
}

gchar *
pg_test_oauth2_client_credentials (PgTestOAuth2 *oauth2, const char *client_id, GError **error)
{
  const char *form[] = { "grant_type", "client_credentials", NULL };
  g_autoptr (JsonObject) answer = NULL;
  guint status = 0;

  answer = pg_test_oauth2_post (oauth2, oauth2->token_url, client_id, form, &status, error);
  if (answer == NULL)
    return NULL;
  return pg_test_oauth2_token_answer (answer, status, NULL, error);
}

gboolean
pg_test_oauth2_revoke (PgTestOAuth2 *oauth2, const char *client_id, const char *token,
                       const char *token_type_hint, GError **error)
{
  const char *form[] = { "token", token, token_type_hint != NULL ? "token_type_hint" : NULL,
                         token_type_hint, NULL };
  g_autoptr (JsonObject) answer = NULL;
  guint status = 0;

  answer = pg_test_oauth2_post (oauth2, oauth2->revoke_url, client_id, form, &status, error);
  if (answer == NULL)
    return FALSE;
  if (status != SOUP_STATUS_OK)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "revoke: HTTP %u: %s", status,
                   json_object_get_string_member_with_default (answer, "error", "?"));
      return FALSE;
    }
  return TRUE;
}

gboolean
pg_test_oauth2_introspect (PgTestOAuth2 *oauth2, const char *token, gboolean *out_active,
                           gchar **out_username, GError **error)
{
  const char *form[] = { "token", token, NULL };
  g_autoptr (JsonObject) answer = NULL;
  guint status = 0;

  answer = pg_test_oauth2_post (oauth2, oauth2->introspection_url, NULL, form, &status, error);
  if (answer == NULL)
    return FALSE;
  if (status != SOUP_STATUS_OK || !json_object_has_member (answer, "active"))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "introspect: HTTP %u: %s", status,
                   json_object_get_string_member_with_default (answer, "error", "?"));
      return FALSE;
    }
  *out_active = json_object_get_boolean_member (answer, "active");
  if (out_username != NULL)
    *out_username
        = g_strdup (json_object_get_string_member_with_default (answer, "username", NULL));
  return TRUE;
}

JsonObject *
pg_test_oauth2_get_stats (PgTestOAuth2 *oauth2, GError **error)
{
  g_autofree gchar *url = g_strconcat (oauth2->base_url, "/stats", NULL);
  g_autoptr (SoupMessage) msg = soup_message_new ("GET", url);
  g_autoptr (GBytes) body = NULL;
  guint status = 0;

  body = pg_test_oauth2_send (oauth2, msg, &status, error);
  if (body == NULL)
    return NULL;
  if (status != SOUP_STATUS_OK)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "GET /stats: HTTP %u", status);
      return NULL;
    }
  return pg_test_oauth2_parse (body, error);
}

gint64
pg_test_oauth2_get_stat (PgTestOAuth2 *oauth2, const char *key, const char *sub)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) stats = pg_test_oauth2_get_stats (oauth2, &error);
  JsonNode *node = NULL;

  if (stats == NULL)
    {
      g_test_message ("oauth2 stats: %s", error->message);
      return -1;
    }
  node = json_object_get_member (stats, key);
  if (node != NULL && sub != NULL)
    node = JSON_NODE_HOLDS_OBJECT (node) ? json_object_get_member (json_node_get_object (node), sub)
                                         : NULL;
  if (node == NULL)
    return 0;
  return JSON_NODE_HOLDS_VALUE (node) ? json_node_get_int (node) : -1;
}

static gboolean
pg_test_oauth2_set_one (PgTestOAuth2 *oauth2, const char *name, JsonNode *value, GError **error)
{
  g_autoptr (JsonObject) object = json_object_new ();
  g_autoptr (JsonNode) settings = json_node_alloc ();

  json_object_set_member (object, name, value);
  json_node_init_object (settings, object);
  return pg_test_oauth2_admin (oauth2, settings, error);
}

gboolean
pg_test_oauth2_set_rotation (PgTestOAuth2 *oauth2, gboolean rotation, GError **error)
{
  JsonNode *value = json_node_init_boolean (json_node_alloc (), rotation);

  oauth2->options.rotation = rotation;
  return pg_test_oauth2_set_one (oauth2, "rotation", value, error);
}

gboolean
pg_test_oauth2_set_access_token_lifetime (PgTestOAuth2 *oauth2, guint seconds, GError **error)
{
  JsonNode *value = json_node_init_int (json_node_alloc (), seconds);

  oauth2->options.access_token_lifetime = seconds;
  return pg_test_oauth2_set_one (oauth2, "access_token_lifetime", value, error);
}

/* A setting of the running server only (a restart forgets it). */
static gboolean
pg_test_oauth2_set_live (PgTestOAuth2 *oauth2, const char *name, guint value, GError **error)
{
  if (oauth2->process == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_CONNECTED, "%s is set on the running server",
                   name);
      return FALSE;
    }
  return pg_test_oauth2_set_one (oauth2, name, json_node_init_int (json_node_alloc (), value),
                                 error);
}

gboolean
pg_test_oauth2_set_token_delay (PgTestOAuth2 *oauth2, guint delay_ms, GError **error)
{
  return pg_test_oauth2_set_live (oauth2, "token_delay_ms", delay_ms, error);
}

gboolean
pg_test_oauth2_set_token_failure (PgTestOAuth2 *oauth2, guint http_status, GError **error)
{
  return pg_test_oauth2_set_live (oauth2, "token_fail_status", http_status, error);
}

gchar *
pg_test_oauth2_read_log (PgTestOAuth2 *oauth2)
{
  g_autofree gchar *output = pg_test_read_file (oauth2->stderr_file);
  g_autofree gchar *log = pg_test_read_file (oauth2->log_file);

  return g_strconcat (output, log, NULL);
}

gchar *
pg_test_oauth2_sasl_xoauth2 (const char *user, const char *access_token)
{
  g_autofree gchar *raw = g_strdup_printf ("user=%s\001auth=Bearer %s\001\001", user, access_token);

  return g_base64_encode ((const guchar *) raw, strlen (raw));
}

gchar *
pg_test_oauth2_sasl_oauthbearer (const char *user, const char *host, guint16 port,
                                 const char *access_token)
{
  g_autoptr (GString) saslname = g_string_new (user);
  g_autofree gchar *raw = NULL;

  /* RFC 7628 3.1 (RFC 5801 saslname): ',' and '=' are escaped. */
  g_string_replace (saslname, "=", "=3D", 0);
  g_string_replace (saslname, ",", "=2C", 0);
  raw = g_strdup_printf ("n,a=%s,\001host=%s\001port=%u\001auth=Bearer %s\001\001", saslname->str,
                         host, port, access_token);

  return g_base64_encode ((const guchar *) raw, strlen (raw));
}

/* Lines an AUTHENTICATE exchange may take before the tagged reply (untagged CAPABILITY
 * and the one error challenge). */
#define PG_TEST_OAUTH2_AUTH_LINES 16

gboolean
pg_test_oauth2_imap_authenticate (PgTestImap *imap, const char *mechanism,
                                  const char *initial_response, gboolean *out_ok,
                                  gchar **out_tagged, gchar **out_challenge, GError **error)
{
  static guint counter;
  g_autofree gchar *tag = g_strdup_printf ("oa%u", ++counter);
  g_autofree gchar *command
      = g_strdup_printf ("%s AUTHENTICATE %s %s\r\n", tag, mechanism, initial_response);
  g_autofree gchar *prefix = g_strconcat (tag, " ", NULL);
  g_autofree gchar *challenge = NULL;

  if (!pg_test_imap_send_raw (imap, command, strlen (command), error))
    return FALSE;
  for (guint i = 0; i < PG_TEST_OAUTH2_AUTH_LINES; i++)
    {
      g_autofree gchar *line = pg_test_imap_read_line (imap, error);

      if (line == NULL)
        return FALSE;
      if (g_str_has_prefix (line, "+") && challenge == NULL)
        {
          gsize len = 0;
          g_autofree guchar *json = g_base64_decode (g_strstrip (line + 1), &len);
          /* OAUTHBEARER's client answers the error with a single ^A (RFC 7628 3.2.3);
           * XOAUTH2's with an empty response. */
          const char *reply
              = g_ascii_strcasecmp (mechanism, "OAUTHBEARER") == 0 ? "AQ==\r\n" : "\r\n";

          challenge = g_strndup ((const char *) json, len);
          if (!pg_test_imap_send_raw (imap, reply, strlen (reply), error))
            return FALSE;
          continue;
        }
      if (g_str_has_prefix (line, prefix))
        {
          const char *status = line + strlen (prefix);

          *out_ok = g_str_has_prefix (status, "OK");
          if (out_tagged != NULL)
            *out_tagged = g_steal_pointer (&line);
          if (out_challenge != NULL)
            *out_challenge = g_steal_pointer (&challenge);
          return TRUE;
        }
      if (!g_str_has_prefix (line, "* "))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                       "AUTHENTICATE: unexpected line %.80s", line);
          return FALSE;
        }
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
               "AUTHENTICATE: no tagged reply after %d lines", PG_TEST_OAUTH2_AUTH_LINES);
  return FALSE;
}
