/* popgate tests — X.509 certificates generated at test time with GnuTLS: a CA, a server
 * certificate it signs (DNS localhost, IP 127.0.0.1 and ::1), and a second, untrusted CA
 * with its own server certificate. ECDSA P-256 keys: generating them takes milliseconds.
 * Keys are written as unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), mode 0600, which GIO,
 * GnuTLS and OpenSSL (Dovecot) all read.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _PgTestCertsPrivate PgTestCertsPrivate;

typedef struct
{
  gchar *dir;                 /* owned: where the files are */
  gchar *ca_file;             /* owned: the trusted test CA certificate */
  gchar *cert_file;           /* owned: server cert for localhost, 127.0.0.1, ::1 */
  gchar *key_file;            /* owned: its key */
  gchar *untrusted_ca_file;   /* owned: a CA nobody trusts */
  gchar *untrusted_cert_file; /* owned: server cert for the same names, signed by it */
  gchar *untrusted_key_file;  /* owned */
  PgTestCertsPrivate *priv;   /* owned: the CA keys, to sign more certificates */
} PgTestCerts;

/* Generate everything into `dir` (must exist): ca.pem, cert.pem, key.pem,
 * untrusted-ca.pem, untrusted-cert.pem, untrusted-key.pem. */
PgTestCerts *pg_test_certs_new (const char *dir, GError **error);

/* Another server certificate signed by the trusted CA, for `hostname` (a DNS name, or an
 * IPv4/IPv6 literal which goes into an IP SAN). For wrong-hostname tests. */
gboolean pg_test_certs_make_server (PgTestCerts *certs, const char *hostname, const char *cert_path,
                                    const char *key_path, GError **error);

void pg_test_certs_free (PgTestCerts *certs);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestCerts, pg_test_certs_free)

G_END_DECLS
