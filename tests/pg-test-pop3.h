/* popgate tests — a small synchronous POP3 client (plain, implicit TLS or STLS, verified
 * against a test CA), with bounded lines and a timeout on every read.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct _PgTestPop3 PgTestPop3;

/* Connect and read the greeting; ca_file != NULL: implicit TLS verified as "localhost". */
PgTestPop3 *pg_test_pop3_connect (const char *host, guint16 port, const char *ca_file,
                                  GError **error);
/* Connect from a given local address (e.g. "127.0.0.2"). */
PgTestPop3 *pg_test_pop3_connect_from (const char *host, guint16 port, const char *bind_ip,
                                       GError **error);
void pg_test_pop3_free (PgTestPop3 *pop3);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestPop3, pg_test_pop3_free)

const char *pg_test_pop3_get_greeting (PgTestPop3 *pop3);

/* Send raw bytes. */
gboolean pg_test_pop3_send (PgTestPop3 *pop3, const void *data, gsize len, GError **error);
/* Read one line without its CRLF; NULL at EOF or error (error set unless EOF). */
gchar *pg_test_pop3_read_line (PgTestPop3 *pop3, GError **error);
/* Send "command\r\n" and return the status line. */
gchar *pg_test_pop3_command (PgTestPop3 *pop3, const char *command, GError **error);
/* Read a multi-line body after a +OK: the lines up to ".", dot-unstuffed, CRLF kept. */
GBytes *pg_test_pop3_read_multiline (PgTestPop3 *pop3, GError **error);
/* RETR n: the message as the client sees it (unstuffed). *out_status gets the status line. */
GBytes *pg_test_pop3_retr (PgTestPop3 *pop3, guint n, gchar **out_status, GError **error);
/* USER + PASS; TRUE on +OK (*out_status gets the PASS reply if given). */
gboolean pg_test_pop3_login (PgTestPop3 *pop3, const char *user, const char *password,
                             gchar **out_status, GError **error);
/* STLS and a TLS handshake verified against ca_file for "localhost". */
gboolean pg_test_pop3_stls (PgTestPop3 *pop3, const char *ca_file, GError **error);
/* Send "command" and return its status line; a transport error fails the test. */
gchar *pg_test_pop3_cmd (PgTestPop3 *pop3, const char *command);
/* Send a multi-line command ("UIDL", "LIST"), expect +OK, and return the body's lines
 * (without line ends, the empty last one dropped); a failure fails the test. */
GStrv pg_test_pop3_cmd_lines (PgTestPop3 *pop3, const char *command);
/* Send "command" and fail the test unless the reply starts with `prefix`. */
#define PG_TEST_POP3_ASSERT_REPLY(pop3, command, prefix)                                           \
  G_STMT_START                                                                                     \
  {                                                                                                \
    g_autofree gchar *reply_ = pg_test_pop3_cmd ((pop3), (command));                               \
    if (!g_str_has_prefix (reply_, (prefix)))                                                      \
      g_error ("%s: expected \"%s…\", got \"%s\"", (command), (prefix), reply_);                   \
  }                                                                                                \
  G_STMT_END

/* Only the TLS handshake (after the caller had STLS answered). */
gboolean pg_test_pop3_start_tls (PgTestPop3 *pop3, const char *ca_file, GError **error);
/* TRUE once the server closed the connection (reads until EOF, bounded). */
gboolean pg_test_pop3_wait_closed (PgTestPop3 *pop3);

G_END_DECLS
