/* popgate — the metrics endpoint over libsoup 3.
 *
 * One SoupServer per listen address (as the net layer keeps one GSocketService per
 * address), so a reload can open and close addresses one by one without ever unbinding
 * an address that stays. HTTP parsing, limits and keep-alive are libsoup's; we only
 * render the registry (a few KiB) on each GET.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-metrics-server.h"

#include "pg-build-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-metrics.h"

#include <libsoup/soup.h>
#include <string.h>

struct _PgMetricsServer
{
  GObject parent_instance;

  GHashTable *servers; /* owned: "addr:port" as configured → SoupServer* (owned) */
};

G_DEFINE_FINAL_TYPE (PgMetricsServer, pg_metrics_server, G_TYPE_OBJECT)

static void
pg_metrics_server_soup_free (gpointer data)
{
  SoupServer *server = data;

  soup_server_disconnect (server);
  g_object_unref (server);
}

static void
pg_metrics_server_finalize (GObject *object)
{
  PgMetricsServer *self = PG_METRICS_SERVER (object);

  g_hash_table_unref (self->servers);
  G_OBJECT_CLASS (pg_metrics_server_parent_class)->finalize (object);
}

static void
pg_metrics_server_class_init (PgMetricsServerClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pg_metrics_server_finalize;
}

static void
pg_metrics_server_init (PgMetricsServer *self)
{
  self->servers
      = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, pg_metrics_server_soup_free);
}

PgMetricsServer *
pg_metrics_server_new (void)
{
  return g_object_new (PG_TYPE_METRICS_SERVER, NULL);
}

gboolean
pg_metrics_server_wants_prometheus (const char *accept)
{
  g_autofree gchar *lower = NULL;

  /* Prometheus asks for OpenMetrics first and text/plain as a fallback; a client that
   * names only text/plain (curl -H, older scrapers) gets the 0.0.4 format. */
  if (accept == NULL)
    return FALSE;
  lower = g_ascii_strdown (accept, -1);
  return strstr (lower, "application/openmetrics-text") == NULL
         && strstr (lower, "text/plain") != NULL;
}

static void
pg_metrics_server_handle_cb (SoupServer *server, SoupServerMessage *msg, const char *path,
                             GHashTable *query, gpointer user_data)
{
  const char *method = soup_server_message_get_method (msg);
  SoupMessageHeaders *request = soup_server_message_get_request_headers (msg);
  PgMetricsFormat format = PG_METRICS_FORMAT_OPENMETRICS;
  gchar *body;
  gsize len = 0;

  /* The handler also gets "/metrics/anything". */
  if (strcmp (path, "/metrics") != 0)
    {
      soup_server_message_set_status (msg, SOUP_STATUS_NOT_FOUND, NULL);
      return;
    }
  if (method != SOUP_METHOD_GET && method != SOUP_METHOD_HEAD)
    {
      soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Allow",
                                    "GET, HEAD");
      soup_server_message_set_status (msg, SOUP_STATUS_METHOD_NOT_ALLOWED, NULL);
      return;
    }
  if (pg_metrics_server_wants_prometheus (soup_message_headers_get_list (request, "Accept")))
    format = PG_METRICS_FORMAT_PROMETHEUS;
  body = pg_metrics_render (format, &len);
  soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
  soup_server_message_set_response (msg, pg_metrics_format_content_type (format), SOUP_MEMORY_TAKE,
                                    body, len);
}

gboolean
pg_metrics_server_listen_on (SoupServer *server, const PgListenAddr *addr, const char *group,
                             GError **error)
{
  g_autoptr (GError) local_error = NULL;
  gboolean ok;

  if (addr->any)
    ok = soup_server_listen_all (server, addr->port, 0, &local_error);
  else
    {
      g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (addr->host);
      g_autoptr (GSocketAddress) sockaddr = NULL;

      if (inet == NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "not an address: %s", addr->host);
          return FALSE;
        }
      sockaddr = g_inet_socket_address_new (inet, addr->port);
      ok = soup_server_listen (server, sockaddr, 0, &local_error);
    }
  if (!ok)
    {
      g_autofree gchar *where = pg_listen_addr_to_string (addr);
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "[%s] listen %s: ", group,
                                  where);
      return FALSE;
    }
  return TRUE;
}

static SoupServer *
pg_metrics_server_listen (const PgListenAddr *addr, GError **error)
{
  g_autoptr (SoupServer) server = soup_server_new ("server-header", "popgate/" PG_VERSION, NULL);

  soup_server_add_handler (server, "/metrics", pg_metrics_server_handle_cb, NULL, NULL);
  if (!pg_metrics_server_listen_on (server, addr, "metrics", error))
    return NULL;
  return g_steal_pointer (&server);
}

gboolean
pg_metrics_server_apply (PgMetricsServer *self, PgConfig *config, GError **error)
{
  g_autoptr (GHashTable) wanted = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr (GHashTable) opened
      = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, pg_metrics_server_soup_free);
  GHashTableIter iter;
  gpointer key, value;

  g_return_val_if_fail (PG_IS_METRICS_SERVER (self), FALSE);
  for (guint i = 0; i < config->metrics.listen->len; i++)
    {
      const PgListenAddr *addr = g_ptr_array_index (config->metrics.listen, i);
      gchar *name = pg_listen_addr_to_string (addr);

      if (g_hash_table_contains (self->servers, name))
        {
          g_hash_table_add (wanted, name);
          continue;
        }
      {
        SoupServer *server = pg_metrics_server_listen (addr, error);
        if (server == NULL)
          {
            g_free (name);
            return FALSE; /* `opened` closes what this call bound */
          }
        g_hash_table_add (wanted, g_strdup (name));
        g_hash_table_insert (opened, name, server);
      }
    }
  /* Everything is bound: close what is no longer configured, keep the new ones. */
  g_hash_table_iter_init (&iter, self->servers);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    if (!g_hash_table_contains (wanted, key))
      g_hash_table_iter_remove (&iter);
  g_hash_table_iter_init (&iter, opened);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      g_hash_table_iter_steal (&iter);
      g_hash_table_insert (self->servers, key, value);
    }
  return TRUE;
}

GPtrArray *
pg_metrics_server_get_bound_addresses (PgMetricsServer *self)
{
  GPtrArray *bound = g_ptr_array_new_with_free_func (g_free);
  GHashTableIter iter;
  gpointer value;

  g_return_val_if_fail (PG_IS_METRICS_SERVER (self), bound);
  g_hash_table_iter_init (&iter, self->servers);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    pg_metrics_server_append_addresses (value, bound);
  return bound;
}

void
pg_metrics_server_append_addresses (SoupServer *server, GPtrArray *out)
{
  GSList *uris = soup_server_get_uris (server);

  for (GSList *l = uris; l != NULL; l = l->next)
    {
      const char *host = g_uri_get_host (l->data);
      gboolean v6 = strchr (host, ':') != NULL;
      g_ptr_array_add (out, g_strdup_printf ("%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "",
                                             g_uri_get_port (l->data)));
    }
  g_slist_free_full (uris, (GDestroyNotify) g_uri_unref);
}
