/* popgate tests — a tiny synchronous IMAP client to check what the upstream (or popgate's
 * IMAP front end) holds. Blocking I/O with a timeout on every read and write, plain or
 * implicit TLS verified against a given CA, bounded lines and literals. Credentials are
 * always sent as synchronising literals, so any bytes work as user name or password.
 *
 * Not for production: no pipelining, no IDLE, minimal parsing.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/* Longest response line we accept (without literals) and the largest literal. */
#define PG_TEST_IMAP_MAX_LINE (1024 * 1024)
#define PG_TEST_IMAP_MAX_LITERAL ((gsize) 512 * 1024 * 1024)
/* Default seconds a read or write may block. */
#define PG_TEST_IMAP_TIMEOUT_S 30

typedef struct _PgTestImap PgTestImap;

/* Connect and read the greeting. `ca_file` NULL: plain TCP; else implicit TLS whose
 * certificate must verify against ca_file for the identity `host`. */
PgTestImap *pg_test_imap_connect (const char *host, guint16 port, const char *ca_file,
                                  GError **error);
/* The same with an explicit TLS identity (a host name or address literal) and timeout. */
PgTestImap *pg_test_imap_connect_full (const char *host, guint16 port, const char *ca_file,
                                       const char *tls_identity, guint timeout_s, GError **error);
void pg_test_imap_free (PgTestImap *imap);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestImap, pg_test_imap_free)

/* The greeting line (without CRLF). */
const char *pg_test_imap_get_greeting (PgTestImap *imap);

/* LOGIN with both arguments as literals. A NO is PG_ERROR_AUTH_FAILED. */
gboolean pg_test_imap_login (PgTestImap *imap, const char *user, const char *password,
                             GError **error);
/* SELECT (or EXAMINE if read_only). out_* are optional. */
gboolean pg_test_imap_select (PgTestImap *imap, const char *mailbox, gboolean read_only,
                              guint32 *out_uidvalidity, guint32 *out_exists, GError **error);
/* UID SEARCH ALL: the UIDs in ascending order (guint32). */
GArray *pg_test_imap_uid_search_all (PgTestImap *imap, GError **error);
/* UID FETCH uid BODY.PEEK[]: the message's exact bytes. G_IO_ERROR_NOT_FOUND if no
 * such UID. */
GBytes *pg_test_imap_fetch_body (PgTestImap *imap, guint32 uid, GError **error);
/* UID FETCH uid (FLAGS): e.g. { "\\Seen", NULL }. G_IO_ERROR_NOT_FOUND if no such UID. */
GStrv pg_test_imap_fetch_flags (PgTestImap *imap, guint32 uid, GError **error);
/* APPEND with optional flags ("\\Seen \\Flagged", without parentheses). *out_uid gets the
 * APPENDUID (0 if the server sent none). */
gboolean pg_test_imap_append (PgTestImap *imap, const char *mailbox, const char *flags,
                              const void *data, gsize len, guint32 *out_uid, GError **error);
/* UID STORE uid ITEM, e.g. item "+FLAGS.SILENT (\\Deleted)". */
gboolean pg_test_imap_uid_store (PgTestImap *imap, guint32 uid, const char *item, GError **error);
/* Flag uid \Deleted and UID EXPUNGE just it (UIDPLUS). */
gboolean pg_test_imap_expunge_uid (PgTestImap *imap, guint32 uid, GError **error);
gboolean pg_test_imap_logout (PgTestImap *imap, GError **error);

/* Send "TAG command" (no CRLF in `command`) and read until the tagged reply. Returns the
 * whole response (untagged lines, literals inline, and the tagged line; each line ends in
 * CRLF). A tagged NO or BAD is an error (PG_ERROR_UPSTREAM). */
gchar *pg_test_imap_command (PgTestImap *imap, const char *command, GError **error);
/* The same, but a NO or BAD is not an error: *out_status gets "OK", "NO" or "BAD". */
gchar *pg_test_imap_command_status (PgTestImap *imap, const char *command, gchar **out_status,
                                    GError **error);
/* Raw: send bytes as they are (for protocol tests), then read one line (without CRLF). */
gboolean pg_test_imap_send_raw (PgTestImap *imap, const void *data, gsize len, GError **error);
gchar *pg_test_imap_read_line (PgTestImap *imap, GError **error);
/* Raw: read exactly `len` octets (a literal's data) onto `into`. On an error or EOF first,
 * FALSE with what did arrive appended. */
gboolean pg_test_imap_read_bytes (PgTestImap *imap, GByteArray *into, gsize len, GError **error);
/* Raw, plain TCP only: send as much of data[0..len) as the connection takes, until all is
 * sent or it has not been writable for `stuck_ms` (the peer stopped reading); returns
 * the octets sent, or -1 with error. */
gssize pg_test_imap_send_until_stuck (PgTestImap *imap, const void *data, gsize len, guint stuck_ms,
                                      GError **error);

G_END_DECLS
