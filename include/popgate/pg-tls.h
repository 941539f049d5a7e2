/* popgate — TLS: certificate loading with the checks that GIO's loaders do not make, and
 * the handshakes: the server's (popgate's listeners, STLS/STARTTLS) and the client's
 * (popgate to its upstream servers).
 *
 * g_tls_certificate_new_from_files() accepts a private key that belongs to another
 * certificate; every handshake then fails with "Public key signature verification has
 * failed" and nothing at startup says why. These checks load the files the way GnuTLS
 * will use them, so `--check` and startup refuse what cannot work, with a message that
 * names the file and the problem.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/* The PEM certificate (chain) and private key parse and belong together.
 * PG_ERROR_TLS naming both files otherwise. */
gboolean pg_tls_check_pair (const char *cert_file, const char *key_file, GError **error);

/* A PEM CA file that holds at least one certificate. PG_ERROR_TLS otherwise. */
gboolean pg_tls_check_ca_file (const char *ca_file, GError **error);

/* The certificate (chain) and key popgate presents to its clients: checked as
 * pg_tls_check_pair() does, then loaded. */
GTlsCertificate *pg_tls_load_certificate (const char *cert_file, const char *key_file,
                                          GError **error);

/* The server side of TLS over `base` (an accepted connection, or plaintext after
 * STLS/STARTTLS) with `certificate`. Complete it with pg_tls_handshake_finish(); its
 * errors are GIO's, as the handshake gave them. */
void pg_tls_server_handshake_async (GIOStream *base, GTlsCertificate *certificate,
                                    GCancellable *cancellable, GAsyncReadyCallback callback,
                                    gpointer user_data);

/* The client side of TLS over `base` (a TCP connection, or plaintext after STARTTLS) to
 * the server `host`:`port`: the certificate must chain to `ca_file` (NULL: the system trust
 * store) and name `host`; any verification error fails the handshake (there is no
 * "accept-certificate" handler). Complete it with pg_tls_handshake_finish(). Errors are
 * PG_ERROR_TLS, worded for an admin
 * ("TLS: certificate not signed by a trusted CA (…)", "CA file F: …"); a cancelled
 * handshake is G_IO_ERROR_CANCELLED. */
void pg_tls_client_handshake_async (GIOStream *base, const char *host, guint16 port,
                                    const char *ca_file, GCancellable *cancellable,
                                    GAsyncReadyCallback callback, gpointer user_data);

/* Either handshake's end: the TLS connection (transfer full), from then on the stream to
 * use, or NULL with the error. */
GIOStream *pg_tls_handshake_finish (GAsyncResult *result, GError **error);

G_END_DECLS
