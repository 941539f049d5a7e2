/* popgate tests — process and network helpers shared by the fixtures: spawn a child that
 * dies with the test (PR_SET_PDEATHSIG), wait for it with a deadline, stop it by PID, find
 * free loopback ports and wait until a port accepts. No fixed sleeps: every wait polls a
 * condition against a deadline.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-net.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* Assert that a call taking `error` succeeded, showing the error's message if not:
 * PG_TEST_ASSERT_OK (pg_test_dovecot_start (dovecot, &error), error); */
#define PG_TEST_ASSERT_OK(expr, error)                                                             \
  G_STMT_START                                                                                     \
  {                                                                                                \
    gboolean pg_test_ok_ = (expr);                                                                 \
    g_assert_no_error (error);                                                                     \
    g_assert_true (pg_test_ok_);                                                                   \
  }                                                                                                \
  G_STMT_END

/* A child process started by a test. Always stopped by its PID, never by name. */
typedef struct _PgTestProcess PgTestProcess;

/* Start argv[0] (a path or a name looked up in PATH) with stdout and stderr both going to
 * `output_path` (created/truncated; NULL: inherit the test's). The child gets
 * PR_SET_PDEATHSIG(SIGTERM), so it is terminated even when a failed assertion aborts the
 * test. */
PgTestProcess *pg_test_process_spawn (const char *const *argv, const char *output_path,
                                      GError **error);
GPid pg_test_process_get_pid (PgTestProcess *process);
/* TRUE once the child has exited (and been reaped). Does not block. */
gboolean pg_test_process_has_exited (PgTestProcess *process);
/* Wait at most timeout_ms for the child to exit; TRUE if it has. */
gboolean pg_test_process_wait (PgTestProcess *process, guint timeout_ms);
/* The wait status once exited (see g_spawn_check_wait_status); -1 before. */
int pg_test_process_get_wait_status (PgTestProcess *process);
/* Send a signal to the child (no-op once it has exited). */
void pg_test_process_kill (PgTestProcess *process, int signo);
/* SIGTERM, wait up to timeout_ms, then SIGKILL and wait again. TRUE if it exited after the
 * SIGTERM alone (a clean stop). */
gboolean pg_test_process_stop (PgTestProcess *process, guint timeout_ms);
/* Stops the child (as pg_test_process_stop with a 10 s deadline) if still running. */
void pg_test_process_free (PgTestProcess *process);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestProcess, pg_test_process_free)

/* Wait (bounded) until condition(user_data) is TRUE, polling every few milliseconds. */
gboolean pg_test_wait_until (gboolean (*condition) (gpointer user_data), gpointer user_data,
                             guint timeout_ms);

/* Iterate the thread-default main context until *flag is TRUE; fail the test after
 * PG_TEST_FLAG_DEADLINE_MS (a watchdog, not a timing check). */
#define PG_TEST_FLAG_DEADLINE_MS 20000
void pg_test_wait_flag (const gboolean *flag);

/* How often needle occurs in haystack (overlapping occurrences count). */
guint pg_test_count (const char *haystack, const char *needle);

/* Read from conn (pg_conn_read_async) and append to got until `text` is in it. */
void pg_test_conn_read_until (PgConn *conn, GString *got, const char *text);

/* A loopback TCP port that was free a moment ago (bind port 0, read it, close). Another
 * process may take it before we use it: callers retry their whole start on a bind failure. */
guint16 pg_test_free_port (const char *address, GError **error);

/* Wait until address:port accepts a TCP connection, at most timeout_ms. If `process` is
 * given and exits meanwhile, fail at once (G_IO_ERROR_FAILED). */
gboolean pg_test_wait_port (const char *address, guint16 port, PgTestProcess *process,
                            guint timeout_ms, GError **error);

/* The message with every bare LF made CRLF (CRLFs stay), as an MTA delivers it. */
GBytes *pg_test_to_crlf (const void *data, gsize len);

/* Read a whole file as a string ("" if it does not exist yet). */
gchar *pg_test_read_file (const char *path);

/* Remove a directory tree (no symlinks followed). Best effort; FALSE if something stayed. */
gboolean pg_test_rm_rf (const char *path);

/* Run a short-lived command to completion, feeding it `input` (may be NULL) on stdin, with
 * a deadline (then SIGKILL). FALSE with an error if it could not run or timed out; else
 * *out_exit_code gets its exit code (128 + N if killed by signal N) and *out_output
 * (optional) its stdout+stderr. */
gboolean pg_test_run_status (const char *const *argv, GBytes *input, guint timeout_ms,
                             int *out_exit_code, gchar **out_output, GError **error);
/* tests/tls-close.py against host:port ("imap" or "pop3", "implicit" or "starttls"):
 * asserts that the server ended the TLS session with a close_notify. */
void pg_test_assert_tls_close_clean (const char *host, guint16 port, const char *ca_file,
                                     const char *proto, const char *mode);
/* The same, but a non-zero exit is an error too (its message holds the output). */
gboolean pg_test_run (const char *const *argv, GBytes *input, guint timeout_ms, gchar **out_output,
                      GError **error);

G_END_DECLS
