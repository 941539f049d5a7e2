/* popgate — TLS: certificate loading and checks, the server and the client handshake
 * (see pg-tls.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-tls.h"

#include "popgate/pg-core.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

gboolean
pg_tls_check_pair (const char *cert_file, const char *key_file, GError **error)
{
  gnutls_certificate_credentials_t creds = NULL;
  int rc;

  g_return_val_if_fail (cert_file != NULL && key_file != NULL, FALSE);

  if (gnutls_certificate_allocate_credentials (&creds) < 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_TLS, "cannot allocate TLS credentials");
      return FALSE;
    }
  /* GnuTLS loads the chain and the key and compares the key with the leaf's public key:
   * GNUTLS_E_CERTIFICATE_KEY_MISMATCH is what GIO's loader never reports. */
  rc = gnutls_certificate_set_x509_key_file2 (creds, cert_file, key_file, GNUTLS_X509_FMT_PEM, NULL,
                                              0);
  gnutls_certificate_free_credentials (creds);
  if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_TLS,
                   "the private key %s does not belong to the certificate %s (every TLS "
                   "handshake would fail)",
                   key_file, cert_file);
      return FALSE;
    }
  if (rc < 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_TLS,
                   "cannot use certificate %s with key %s: %s (are they PEM, and not "
                   "swapped?)",
                   cert_file, key_file, gnutls_strerror (rc));
      return FALSE;
    }
  return TRUE;
}

gboolean
pg_tls_check_ca_file (const char *ca_file, GError **error)
{
  gnutls_certificate_credentials_t creds = NULL;
  int rc;

  g_return_val_if_fail (ca_file != NULL, FALSE);

  if (gnutls_certificate_allocate_credentials (&creds) < 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_TLS, "cannot allocate TLS credentials");
      return FALSE;
    }
  /* The number of certificates read, or an error: an empty or junk file reads none. */
  rc = gnutls_certificate_set_x509_trust_file (creds, ca_file, GNUTLS_X509_FMT_PEM);
  gnutls_certificate_free_credentials (creds);
  if (rc <= 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_TLS, "CA file %s holds no usable certificate%s%s",
                   ca_file, rc < 0 ? ": " : "", rc < 0 ? gnutls_strerror (rc) : "");
      return FALSE;
    }
  return TRUE;
}

GTlsCertificate *
pg_tls_load_certificate (const char *cert_file, const char *key_file, GError **error)
{
  /* GIO loads a key of another certificate without a word; every handshake would fail. */
  if (!pg_tls_check_pair (cert_file, key_file, error))
    return NULL;
  return g_tls_certificate_new_from_files (cert_file, key_file, error);
}

/* --- handshakes --------------------------------------------------------------------------- */

/* What a failed handshake means to an admin: the first verification flag that explains it. */
static GError *
pg_tls_client_error (GTlsConnection *tls, const GError *error)
{
  GTlsCertificateFlags flags = g_tls_connection_get_peer_certificate_errors (tls);
  const char *why = "handshake failed";

  if (flags & G_TLS_CERTIFICATE_UNKNOWN_CA)
    why = "certificate not signed by a trusted CA";
  else if (flags & G_TLS_CERTIFICATE_BAD_IDENTITY)
    why = "certificate does not match the host name";
  else if (flags & G_TLS_CERTIFICATE_EXPIRED)
    why = "certificate expired";
  else if (flags != 0)
    why = "certificate rejected";
  return g_error_new (PG_ERROR, PG_ERROR_TLS, "TLS: %s (%s)", why, error->message);
}

/* Either handshake is over. A client's failure is explained (pg_tls_client_error); a
 * server's is the client's business and stays as GIO gave it. */
static void
pg_tls_handshake_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  g_autoptr (GError) error = NULL;

  if (!g_tls_connection_handshake_finish (G_TLS_CONNECTION (source), result, &error))
    {
      if (g_task_get_source_tag (task) == pg_tls_client_handshake_async
          && !g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        g_task_return_error (task, pg_tls_client_error (G_TLS_CONNECTION (source), error));
      else
        g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  g_task_return_pointer (task, g_object_ref (source), g_object_unref);
}

void
pg_tls_client_handshake_async (GIOStream *base, const char *host, guint16 port, const char *ca_file,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocketConnectable) identity = NULL;
  g_autoptr (GIOStream) tls = NULL;

  g_task_set_source_tag (task, pg_tls_client_handshake_async);
  identity = g_network_address_new (host, port);
  tls = g_tls_client_connection_new (base, identity, &error);
  if (tls == NULL)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_TLS, "TLS: %s", error->message);
      return;
    }
  if (ca_file != NULL)
    {
      g_autoptr (GTlsDatabase) database = g_tls_file_database_new (ca_file, &error);

      if (database == NULL)
        {
          g_task_return_new_error (task, PG_ERROR, PG_ERROR_TLS, "CA file %s: %s", ca_file,
                                   error->message);
          return;
        }
      g_tls_connection_set_database (G_TLS_CONNECTION (tls), database);
    }
  /* No "accept-certificate" handler: any verification error fails the handshake. */
  g_tls_connection_handshake_async (G_TLS_CONNECTION (tls), G_PRIORITY_DEFAULT, cancellable,
                                    pg_tls_handshake_cb, g_steal_pointer (&task));
}

void
pg_tls_server_handshake_async (GIOStream *base, GTlsCertificate *certificate,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  GError *error = NULL;
  g_autoptr (GIOStream) tls = NULL;

  g_task_set_source_tag (task, pg_tls_server_handshake_async);
  tls = g_tls_server_connection_new (base, certificate, &error);
  if (tls == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  g_tls_connection_handshake_async (G_TLS_CONNECTION (tls), G_PRIORITY_DEFAULT, cancellable,
                                    pg_tls_handshake_cb, g_steal_pointer (&task));
}

GIOStream *
pg_tls_handshake_finish (GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}
