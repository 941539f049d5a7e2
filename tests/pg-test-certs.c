/* popgate tests — X.509 certificates generated at test time with GnuTLS.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-certs.h"

#include <gio/gio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <time.h>

/* Valid from an hour ago (clock skew between test steps) for a week: long enough for any
 * test run, short enough that a stray file is useless. */
#define PG_TEST_CERT_BACKDATE_S (60 * 60)
#define PG_TEST_CERT_LIFETIME_S (7 * 24 * 60 * 60)

typedef struct
{
  gnutls_x509_crt_t crt;
  gnutls_x509_privkey_t key;
} PgTestCa;

struct _PgTestCertsPrivate
{
  PgTestCa trusted;
  PgTestCa untrusted;
};

static void
pg_test_certs_ca_clear (PgTestCa *ca)
{
  if (ca->crt != NULL)
    gnutls_x509_crt_deinit (ca->crt);
  if (ca->key != NULL)
    gnutls_x509_privkey_deinit (ca->key);
  ca->crt = NULL;
  ca->key = NULL;
}

static gboolean
pg_test_certs_check (int ret, const char *what, GError **error)
{
  if (ret >= 0)
    return TRUE;
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "GnuTLS %s: %s", what, gnutls_strerror (ret));
  return FALSE;
}

#define PG_CHECK(call)                                                                             \
  do                                                                                               \
    {                                                                                              \
      if (!pg_test_certs_check ((call), #call, error))                                             \
        goto out;                                                                                  \
    }                                                                                              \
  while (0)

/* A new key and a certificate with everything but the issuer-specific parts. */
static gboolean
pg_test_certs_start (const char *common_name, gnutls_x509_crt_t *out_crt,
                     gnutls_x509_privkey_t *out_key, GError **error)
{
  gnutls_x509_crt_t crt = NULL;
  gnutls_x509_privkey_t key = NULL;
  guint8 serial[16];
  guint8 key_id[64];
  size_t key_id_len = sizeof key_id;
  time_t now = time (NULL);
  gboolean ok = FALSE;

  PG_CHECK (gnutls_x509_privkey_init (&key));
  PG_CHECK (gnutls_x509_privkey_generate (key, GNUTLS_PK_ECDSA,
                                          GNUTLS_CURVE_TO_BITS (GNUTLS_ECC_CURVE_SECP256R1), 0));
  PG_CHECK (gnutls_x509_crt_init (&crt));
  PG_CHECK (gnutls_x509_crt_set_version (crt, 3));
  PG_CHECK (gnutls_rnd (GNUTLS_RND_NONCE, serial, sizeof serial));
  serial[0] &= 0x7f; /* a positive INTEGER */
  serial[0] |= 0x01; /* and no leading zero octet */
  PG_CHECK (gnutls_x509_crt_set_serial (crt, serial, sizeof serial));
  PG_CHECK (gnutls_x509_crt_set_activation_time (crt, now - PG_TEST_CERT_BACKDATE_S));
  PG_CHECK (gnutls_x509_crt_set_expiration_time (crt, now + PG_TEST_CERT_LIFETIME_S));
  PG_CHECK (gnutls_x509_crt_set_dn_by_oid (crt, GNUTLS_OID_X520_ORGANIZATION_NAME, 0,
                                           "popgate tests", strlen ("popgate tests")));
  PG_CHECK (gnutls_x509_crt_set_dn_by_oid (crt, GNUTLS_OID_X520_COMMON_NAME, 0, common_name,
                                           strlen (common_name)));
  PG_CHECK (gnutls_x509_crt_set_key (crt, key));
  PG_CHECK (gnutls_x509_crt_get_key_id (crt, GNUTLS_KEYID_USE_SHA1, key_id, &key_id_len));
  PG_CHECK (gnutls_x509_crt_set_subject_key_id (crt, key_id, key_id_len));
  *out_crt = g_steal_pointer (&crt);
  *out_key = g_steal_pointer (&key);
  ok = TRUE;
out:
  if (crt != NULL)
    gnutls_x509_crt_deinit (crt);
  if (key != NULL)
    gnutls_x509_privkey_deinit (key);
  return ok;
}

static gboolean
pg_test_certs_write (const char *cert_path, gnutls_x509_crt_t crt, const char *key_path,
                     gnutls_x509_privkey_t key, GError **error)
{
  gnutls_datum_t pem = { NULL, 0 };
  gboolean ok = FALSE;

  PG_CHECK (gnutls_x509_crt_export2 (crt, GNUTLS_X509_FMT_PEM, &pem));
  if (!g_file_set_contents_full (cert_path, (const char *) pem.data, pem.size,
                                 G_FILE_SET_CONTENTS_CONSISTENT, 0644, error))
    goto out;
  gnutls_free (pem.data);
  pem.data = NULL;
  if (key_path != NULL)
    {
      PG_CHECK (gnutls_x509_privkey_export2_pkcs8 (key, GNUTLS_X509_FMT_PEM, NULL,
                                                   GNUTLS_PKCS_PLAIN, &pem));
      if (!g_file_set_contents_full (key_path, (const char *) pem.data, pem.size,
                                     G_FILE_SET_CONTENTS_CONSISTENT, 0600, error))
        goto out;
    }
  ok = TRUE;
out:
  if (pem.data != NULL)
    {
      memset (pem.data, 0, pem.size);
      gnutls_free (pem.data);
    }
  return ok;
}

static gboolean
pg_test_certs_make_ca (PgTestCa *ca, const char *name, const char *path, GError **error)
{
  gboolean ok = FALSE;

  if (!pg_test_certs_start (name, &ca->crt, &ca->key, error))
    return FALSE;
  PG_CHECK (gnutls_x509_crt_set_basic_constraints (ca->crt, 1, -1));
  PG_CHECK (gnutls_x509_crt_set_key_usage (ca->crt, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN
                                                        | GNUTLS_KEY_DIGITAL_SIGNATURE));
  PG_CHECK (gnutls_x509_crt_sign2 (ca->crt, ca->crt, ca->key, GNUTLS_DIG_SHA256, 0));
  ok = pg_test_certs_write (path, ca->crt, NULL, NULL, error);
out:
  return ok;
}

static gboolean
pg_test_certs_add_san (gnutls_x509_crt_t crt, const char *name, GError **error)
{
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (name);
  gboolean ok = FALSE;

  if (inet != NULL)
    PG_CHECK (gnutls_x509_crt_set_subject_alt_name (
        crt, GNUTLS_SAN_IPADDRESS, g_inet_address_to_bytes (inet),
        g_inet_address_get_native_size (inet), GNUTLS_FSAN_APPEND));
  else
    PG_CHECK (gnutls_x509_crt_set_subject_alt_name (crt, GNUTLS_SAN_DNSNAME, name, strlen (name),
                                                    GNUTLS_FSAN_APPEND));
  ok = TRUE;
out:
  return ok;
}

static gboolean
pg_test_certs_make_leaf (PgTestCa *ca, const char *const *names, const char *cert_path,
                         const char *key_path, GError **error)
{
  gnutls_x509_crt_t crt = NULL;
  gnutls_x509_privkey_t key = NULL;
  guint8 ca_key_id[64];
  size_t ca_key_id_len = sizeof ca_key_id;
  gboolean ok = FALSE;

  if (!pg_test_certs_start (names[0], &crt, &key, error))
    return FALSE;
  PG_CHECK (gnutls_x509_crt_set_basic_constraints (crt, 0, -1));
  PG_CHECK (gnutls_x509_crt_set_key_usage (crt, GNUTLS_KEY_DIGITAL_SIGNATURE));
  PG_CHECK (gnutls_x509_crt_set_key_purpose_oid (crt, GNUTLS_KP_TLS_WWW_SERVER, 0));
  for (gsize i = 0; names[i] != NULL; i++)
    if (!pg_test_certs_add_san (crt, names[i], error))
      goto out;
  PG_CHECK (gnutls_x509_crt_get_subject_key_id (ca->crt, ca_key_id, &ca_key_id_len, NULL));
  PG_CHECK (gnutls_x509_crt_set_authority_key_id (crt, ca_key_id, ca_key_id_len));
  PG_CHECK (gnutls_x509_crt_sign2 (crt, ca->crt, ca->key, GNUTLS_DIG_SHA256, 0));
  ok = pg_test_certs_write (cert_path, crt, key_path, key, error);
out:
  if (crt != NULL)
    gnutls_x509_crt_deinit (crt);
  if (key != NULL)
    gnutls_x509_privkey_deinit (key);
  return ok;
}

PgTestCerts *
pg_test_certs_new (const char *dir, GError **error)
{
  static const char *const local_names[] = { "localhost", "127.0.0.1", "::1", NULL };
  g_autoptr (PgTestCerts) certs = g_new0 (PgTestCerts, 1);
  int ret = gnutls_global_init ();

  if (!pg_test_certs_check (ret, "gnutls_global_init", error))
    return NULL;
  /* Balanced in pg_test_certs_free (GnuTLS counts the inits). */
  certs->priv = g_new0 (PgTestCertsPrivate, 1);
  certs->dir = g_strdup (dir);
  certs->ca_file = g_build_filename (dir, "ca.pem", NULL);
  certs->cert_file = g_build_filename (dir, "cert.pem", NULL);
  certs->key_file = g_build_filename (dir, "key.pem", NULL);
  certs->untrusted_ca_file = g_build_filename (dir, "untrusted-ca.pem", NULL);
  certs->untrusted_cert_file = g_build_filename (dir, "untrusted-cert.pem", NULL);
  certs->untrusted_key_file = g_build_filename (dir, "untrusted-key.pem", NULL);

  if (!pg_test_certs_make_ca (&certs->priv->trusted, "popgate test CA", certs->ca_file, error)
      || !pg_test_certs_make_leaf (&certs->priv->trusted, local_names, certs->cert_file,
                                   certs->key_file, error)
      || !pg_test_certs_make_ca (&certs->priv->untrusted, "popgate untrusted CA",
                                 certs->untrusted_ca_file, error)
      || !pg_test_certs_make_leaf (&certs->priv->untrusted, local_names, certs->untrusted_cert_file,
                                   certs->untrusted_key_file, error))
    return NULL;
  return g_steal_pointer (&certs);
}

gboolean
pg_test_certs_make_server (PgTestCerts *certs, const char *hostname, const char *cert_path,
                           const char *key_path, GError **error)
{
  const char *const names[] = { hostname, NULL };

  g_return_val_if_fail (certs != NULL && hostname != NULL, FALSE);
  return pg_test_certs_make_leaf (&certs->priv->trusted, names, cert_path, key_path, error);
}

void
pg_test_certs_free (PgTestCerts *certs)
{
  if (certs == NULL)
    return;
  if (certs->priv != NULL)
    {
      pg_test_certs_ca_clear (&certs->priv->trusted);
      pg_test_certs_ca_clear (&certs->priv->untrusted);
      g_free (certs->priv);
      gnutls_global_deinit ();
    }
  g_free (certs->dir);
  g_free (certs->ca_file);
  g_free (certs->cert_file);
  g_free (certs->key_file);
  g_free (certs->untrusted_ca_file);
  g_free (certs->untrusted_cert_file);
  g_free (certs->untrusted_key_file);
  g_free (certs);
}
