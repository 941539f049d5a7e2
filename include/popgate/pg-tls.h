/* popgate — TLS: certificate checks that GIO's loaders do not make.
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

#include <glib.h>

G_BEGIN_DECLS

/* The PEM certificate (chain) and private key parse and belong together.
 * PG_ERROR_TLS naming both files otherwise. */
gboolean pg_tls_check_pair (const char *cert_file, const char *key_file, GError **error);

/* A PEM CA file that holds at least one certificate. PG_ERROR_TLS otherwise. */
gboolean pg_tls_check_ca_file (const char *ca_file, GError **error);

G_END_DECLS
