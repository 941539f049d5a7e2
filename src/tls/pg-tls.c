/* popgate — TLS: certificate checks that GIO's loaders do not make (see pg-tls.h).
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
