/* popgate — codec: SASL helpers shared by the POP3 and IMAP front ends.
 *
 * Strict base64 (RFC 4648 §4, no whitespace, padding only at the end) and the PLAIN
 * mechanism's message (RFC 4616: [authzid] NUL authcid NUL passwd). Decoded buffers may
 * hold a password: they are PgSecret (wiped when freed).
 *
 * Pure: no I/O, no logging.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-core.h"

G_BEGIN_DECLS

/* Decode strict base64 into a NUL-terminated secret buffer (pg_secret_free() it); NULL
 * when the text is not strict base64. The decoded data may contain NUL bytes: use
 * *out_len. */
PgSecret *pg_sasl_base64_decode (const char *text, gsize len, gsize *out_len);

/* Decode a base64 PLAIN response. On success *out_authcid gets the login name and
 * *out_password the password (both NUL-free, the name non-empty). An authorisation
 * identity other than empty or the authcid itself is refused (PG_ERROR_AUTH_FAILED): a
 * gateway cannot let one user act as another. Malformed data is PG_ERROR_PROTOCOL. */
gboolean pg_sasl_plain_decode (const char *text, gsize len, gchar **out_authcid,
                               PgSecret **out_password, GError **error);

G_END_DECLS
