/* popgate tests — the generated test certificates verify where they should and fail where
 * they must, both with GnuTLS directly and through GIO's TLS database (what popgate uses).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-certs.h"
#include "pg-test-util.h"

#include <gio/gio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <sys/stat.h>

typedef struct
{
  gchar *dir;         /* owned */
  PgTestCerts *certs; /* owned */
} CertsFixture;

static void
certs_setup (CertsFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  fixture->dir = g_dir_make_tmp ("popgate-certs-XXXXXX", &error);
  g_assert_no_error (error);
  fixture->certs = pg_test_certs_new (fixture->dir, &error);
  g_assert_no_error (error);
  g_assert_nonnull (fixture->certs);
}

static void
certs_teardown (CertsFixture *fixture, gconstpointer data)
{
  pg_test_certs_free (fixture->certs);
  g_assert_true (pg_test_rm_rf (fixture->dir));
  g_free (fixture->dir);
}

/* The flags GIO reports for `cert_file` checked against `ca_file` for `identity`. */
static GTlsCertificateFlags
verify_gio (const char *ca_file, const char *cert_file, const char *identity)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GTlsDatabase) database = g_tls_file_database_new (ca_file, &error);
  g_autoptr (GTlsCertificate) cert = NULL;
  g_autoptr (GSocketConnectable) connectable = NULL;
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (identity);
  GTlsCertificateFlags flags;

  g_assert_no_error (error);
  cert = g_tls_certificate_new_from_file (cert_file, &error);
  g_assert_no_error (error);
  if (inet != NULL)
    connectable = G_SOCKET_CONNECTABLE (g_inet_socket_address_new (inet, 993));
  else
    connectable = g_network_address_new (identity, 993);
  flags = g_tls_database_verify_chain (database, cert, G_TLS_DATABASE_PURPOSE_AUTHENTICATE_SERVER,
                                       connectable, NULL, G_TLS_DATABASE_VERIFY_NONE, NULL, &error);
  g_assert_no_error (error);
  return flags;
}

/* GnuTLS directly: chain status against ca_file, and whether the name matches. */
static void
verify_gnutls (const char *ca_file, const char *cert_file, const char *hostname,
               unsigned *out_status, gboolean *out_name_ok)
{
  gnutls_x509_crt_t ca = NULL;
  gnutls_x509_crt_t crt = NULL;
  g_autofree gchar *ca_pem = NULL;
  g_autofree gchar *crt_pem = NULL;
  gsize ca_len = 0;
  gsize crt_len = 0;
  gnutls_datum_t datum;
  unsigned status = 0;

  g_assert_true (g_file_get_contents (ca_file, &ca_pem, &ca_len, NULL));
  g_assert_true (g_file_get_contents (cert_file, &crt_pem, &crt_len, NULL));
  g_assert_cmpint (gnutls_x509_crt_init (&ca), ==, 0);
  g_assert_cmpint (gnutls_x509_crt_init (&crt), ==, 0);
  datum.data = (unsigned char *) ca_pem;
  datum.size = (unsigned) ca_len;
  g_assert_cmpint (gnutls_x509_crt_import (ca, &datum, GNUTLS_X509_FMT_PEM), ==, 0);
  datum.data = (unsigned char *) crt_pem;
  datum.size = (unsigned) crt_len;
  g_assert_cmpint (gnutls_x509_crt_import (crt, &datum, GNUTLS_X509_FMT_PEM), ==, 0);
  g_assert_cmpint (gnutls_x509_crt_verify (crt, &ca, 1, 0, &status), ==, 0);
  *out_status = status;
  *out_name_ok = gnutls_x509_crt_check_hostname (crt, hostname) != 0;
  gnutls_x509_crt_deinit (ca);
  gnutls_x509_crt_deinit (crt);
}

static void
test_certs_trusted (CertsFixture *fixture, gconstpointer data)
{
  const char *const names[] = { "localhost", "127.0.0.1", "::1" };

  if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    {
      g_test_fail_printf ("%s", "no GIO TLS backend (install glib-networking)");
      return;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (names); i++)
    {
      unsigned status = 1;
      gboolean name_ok = FALSE;

      g_test_message ("identity %s", names[i]);
      g_assert_cmpuint (verify_gio (fixture->certs->ca_file, fixture->certs->cert_file, names[i]),
                        ==, 0);
      verify_gnutls (fixture->certs->ca_file, fixture->certs->cert_file, names[i], &status,
                     &name_ok);
      g_assert_cmpuint (status, ==, 0);
      g_assert_true (name_ok);
    }
}

static void
test_certs_untrusted (CertsFixture *fixture, gconstpointer data)
{
  unsigned status = 0;
  gboolean name_ok = FALSE;

  if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    {
      g_test_fail_printf ("%s", "no GIO TLS backend (install glib-networking)");
      return;
    }
  /* The untrusted chain against the trusted CA, and the trusted cert against the other CA. */
  g_assert_cmpuint (
      verify_gio (fixture->certs->ca_file, fixture->certs->untrusted_cert_file, "localhost")
          & G_TLS_CERTIFICATE_UNKNOWN_CA,
      !=, 0);
  g_assert_cmpuint (
      verify_gio (fixture->certs->untrusted_ca_file, fixture->certs->cert_file, "localhost")
          & G_TLS_CERTIFICATE_UNKNOWN_CA,
      !=, 0);
  /* Its own CA accepts it: the failure above is about trust, not a broken certificate. */
  g_assert_cmpuint (verify_gio (fixture->certs->untrusted_ca_file,
                                fixture->certs->untrusted_cert_file, "localhost"),
                    ==, 0);
  verify_gnutls (fixture->certs->ca_file, fixture->certs->untrusted_cert_file, "localhost", &status,
                 &name_ok);
  g_assert_cmpuint (status & GNUTLS_CERT_INVALID, !=, 0);
  g_assert_cmpuint (status & GNUTLS_CERT_SIGNER_NOT_FOUND, !=, 0);
}

static void
test_certs_wrong_hostname (CertsFixture *fixture, gconstpointer data)
{
  g_autofree gchar *cert = g_build_filename (fixture->dir, "other-cert.pem", NULL);
  g_autofree gchar *key = g_build_filename (fixture->dir, "other-key.pem", NULL);
  g_autoptr (GError) error = NULL;
  unsigned status = 1;
  gboolean name_ok = TRUE;

  if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    {
      g_test_fail_printf ("%s", "no GIO TLS backend (install glib-networking)");
      return;
    }
  g_assert_true (pg_test_certs_make_server (fixture->certs, "imap.example.org", cert, key, &error));
  g_assert_no_error (error);
  /* Trusted chain, wrong name: exactly BAD_IDENTITY. */
  g_assert_cmpuint (verify_gio (fixture->certs->ca_file, cert, "localhost"), ==,
                    G_TLS_CERTIFICATE_BAD_IDENTITY);
  g_assert_cmpuint (verify_gio (fixture->certs->ca_file, cert, "127.0.0.1"), ==,
                    G_TLS_CERTIFICATE_BAD_IDENTITY);
  g_assert_cmpuint (verify_gio (fixture->certs->ca_file, cert, "imap.example.org"), ==, 0);
  verify_gnutls (fixture->certs->ca_file, cert, "localhost", &status, &name_ok);
  g_assert_cmpuint (status, ==, 0);
  g_assert_false (name_ok);
  /* And the localhost certificate is not good for another name either. */
  g_assert_cmpuint (
      verify_gio (fixture->certs->ca_file, fixture->certs->cert_file, "imap.example.org"), ==,
      G_TLS_CERTIFICATE_BAD_IDENTITY);
}

static void
test_certs_files (CertsFixture *fixture, gconstpointer data)
{
  const char *const keys[] = { fixture->certs->key_file, fixture->certs->untrusted_key_file };
  g_autofree gchar *pem = NULL;

  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++)
    {
      struct stat st;

      g_assert_cmpint (stat (keys[i], &st), ==, 0);
      g_assert_cmpint (st.st_mode & 0777, ==, 0600);
    }
  /* PKCS#8: the one key format every consumer (GIO, GnuTLS, OpenSSL) reads. */
  g_assert_true (g_file_get_contents (fixture->certs->key_file, &pem, NULL, NULL));
  g_assert_true (g_str_has_prefix (pem, "-----BEGIN "
                                        "PRIVATE KEY-----"));
  /* GIO can load the pair as a server identity. */
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (GTlsCertificate) cert = g_tls_certificate_new_from_files (
        fixture->certs->cert_file, fixture->certs->key_file, &error);

    if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
      {
        g_test_fail_printf ("%s", "no GIO TLS backend (install glib-networking)");
        return;
      }
    g_assert_no_error (error);
    g_assert_nonnull (cert);
  }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/popgate/certs/trusted", CertsFixture, NULL, certs_setup, test_certs_trusted,
              certs_teardown);
  g_test_add ("/popgate/certs/untrusted", CertsFixture, NULL, certs_setup, test_certs_untrusted,
              certs_teardown);
  g_test_add ("/popgate/certs/wrong-hostname", CertsFixture, NULL, certs_setup,
              test_certs_wrong_hostname, certs_teardown);
  g_test_add ("/popgate/certs/files", CertsFixture, NULL, certs_setup, test_certs_files,
              certs_teardown);
  return g_test_run ();
}
