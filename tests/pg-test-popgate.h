/* popgate tests — run the real popgate binary ($POPGATE_BIN, set by tests/meson.build)
 * against a test upstream.
 *
 * The helper owns a temp dir holding the config file (GKeyFile, the groups of DESIGN.md),
 * a server certificate for popgate's own TLS listeners (certs->ca_file verifies it), the
 * state dir and popgate.log, which captures popgate's stdout and stderr so a test can grep
 * it (e.g. for leaked passwords). popgate runs as `popgate --config FILE -v [args]` with
 * PR_SET_PDEATHSIG and is stopped by PID.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "pg-test-certs.h"
#include "pg-test-dovecot.h"
#include "pg-test-util.h"

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct
{
  gchar *dir;         /* owned: the temp dir; removed by pg_test_popgate_free() */
  gchar *config_file; /* owned: written by pg_test_popgate_start() */
  gchar *log_file;    /* owned: popgate's stdout + stderr */
  gchar *state_dir;   /* owned: [state] path */
  PgTestCerts *certs; /* owned: [tls] cert/key; certs->ca_file verifies them */
  GKeyFile *config;   /* owned: what will be written; change with pg_test_popgate_set() */
  GPtrArray *args;    /* owned: extra command line arguments (strings) */
  const char *host;   /* "127.0.0.1" */
  guint16 pop3_port;  /* the listeners this helper picked (0 if a caller replaced them) */
  guint16 pop3s_port;
  guint16 imap_port;
  guint16 imaps_port;
  PgTestProcess *process; /* owned: NULL while not running */
  GString *earlier_log;   /* owned: output of earlier runs (restarts), NULL before any */
} PgTestPopgate;

/* A config for popgate in front of `upstream` (may be NULL: then set [upstream] yourself).
 * `upstream_tls` is "none", "starttls" or "implicit" (port and ca_file follow from it).
 * All four listeners get free 127.0.0.1 ports; [state] is file-based in the temp dir. */
PgTestPopgate *pg_test_popgate_new (PgTestDovecot *upstream, const char *upstream_tls,
                                    GError **error);

/* Set (value != NULL) or remove (value == NULL) a config key before start. */
void pg_test_popgate_set (PgTestPopgate *popgate, const char *group, const char *key,
                          const char *value);
/* Point the upstream at a plain-text server on 127.0.0.1:port (the scripted peer). */
void pg_test_popgate_set_plain_upstream (PgTestPopgate *popgate, guint16 port);
/* Append an extra command-line argument for start and run. */
void pg_test_popgate_add_arg (PgTestPopgate *popgate, const char *arg);

/* Write the config file (start does this too). */
gboolean pg_test_popgate_write_config (PgTestPopgate *popgate, GError **error);

/* Write the config, start popgate and wait (bounded) until its first listener accepts:
 * the first of [pop3] listen, [pop3] tls_listen, [imap] listen, [imap] tls_listen that is
 * set. If popgate exits first, the error holds its log. Retries with new ports if one of
 * the helper's ports was taken meanwhile. */
gboolean pg_test_popgate_start (PgTestPopgate *popgate, GError **error);

/* The PID while running, else 0. */
GPid pg_test_popgate_get_pid (PgTestPopgate *popgate);
/* Send a signal (while running). */
void pg_test_popgate_kill (PgTestPopgate *popgate, int signo);
/* SIGHUP: reload the config (write it first with pg_test_popgate_write_config()). */
void pg_test_popgate_reload (PgTestPopgate *popgate);
/* Wait at most timeout_ms for popgate to exit by itself; TRUE if it has. *out_exit_code
 * (optional) gets its exit code, or 128 + N if killed by signal N. */
gboolean pg_test_popgate_wait (PgTestPopgate *popgate, guint timeout_ms, int *out_exit_code);
/* SIGTERM, wait (bounded; SIGKILL after the deadline). FALSE if it had to be killed. */
gboolean pg_test_popgate_stop (PgTestPopgate *popgate);

/* SIGTERM, then fail the test unless popgate exits by itself with status 0. Under ASan a
 * leak makes the status non-zero, so this doubles as a leak check of the sessions run. */
void pg_test_popgate_assert_clean_exit (PgTestPopgate *popgate);
/* popgate's captured output so far. */
gchar *pg_test_popgate_read_log (PgTestPopgate *popgate);
/* Wait (bounded) until the log contains `needle`. */
gboolean pg_test_popgate_wait_log (PgTestPopgate *popgate, const char *needle, guint timeout_ms);

/* Run popgate to completion (e.g. { "--check", NULL } or { "--version", NULL }). With a
 * `popgate` the config is written and `--config FILE` passed first; popgate may be NULL.
 * FALSE only if it could not run or hung. */
gboolean pg_test_popgate_run (PgTestPopgate *popgate, const char *const *args, int *out_exit_code,
                              gchar **out_output, GError **error);

/* Stop if running, remove the temp dir, free. */
void pg_test_popgate_free (PgTestPopgate *popgate);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestPopgate, pg_test_popgate_free)

G_END_DECLS
