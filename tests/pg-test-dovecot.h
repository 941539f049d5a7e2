/* popgate tests — a real Dovecot 2.3 upstream for integration tests.
 *
 * Each fixture runs Debian's /usr/sbin/dovecot in the foreground (dovecot -F -c FILE) as
 * root, with its own config (tests/data/dovecot-upstream.conf.in) in a fresh temp dir:
 * never the system service, never /etc/dovecot. IMAP, IMAPS, POP3 and POP3S listen on
 * ephemeral 127.0.0.1 ports; IMAPS/POP3S serve a certificate from a CA made for this
 * fixture (ca_file). Users live in a passwd-file, mail in Maildir, auth penalty is off.
 * The master is stopped by PID (SIGTERM, then SIGKILL after a deadline) and has
 * PR_SET_PDEATHSIG, so it goes away even when a failed assertion aborts the test.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "pg-test-certs.h"
#include "pg-test-util.h"

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct
{
  /* IMAP METADATA (RFC 5464) with a file dict per user, for the imap-metadata state
   * backend. */
  gboolean metadata;
  /* NULL: passwords only. Else also accept OAuth 2.0 bearer tokens (AUTHENTICATE XOAUTH2
   * and OAUTHBEARER): a second passdb (driver oauth2) asks this RFC 7662 introspection
   * endpoint (POST token=...) on every login whether the token is active and whose it is
   * (the "username" attribute); see tests/pg-test-oauth2.h. Copied. */
  const char *oauth2_introspection_url;
  /* For an https introspection URL: the CA that verifies it (PgTestOAuth2.ca_file). */
  const char *oauth2_ca_file;
  /* The zlib and imap_zlib plugins: the upstream offers COMPRESS=DEFLATE after login. */
  gboolean zlib;
  /* The whole post-login capability list (Dovecot's imap_capability), NULL: Dovecot's own.
   * Dovecot serves the same commands either way; popgate sees (and must honour) only what
   * is listed, e.g. a server without UIDPLUS and MOVE. */
  const char *capability;
  /* Settings appended verbatim at the end of the config (NULL: none), e.g. the benchmark's
   * process and client limits for 10,000 sessions. Copied. */
  const char *extra;
} PgTestDovecotOptions;

typedef struct
{
  gchar *dir;          /* owned: the temp dir; removed by pg_test_dovecot_free() */
  gchar *config_file;  /* owned: the filled-in dovecot.conf */
  gchar *log_file;     /* owned: Dovecot's own log */
  gchar *stderr_file;  /* owned: the master's stdout/stderr (startup errors) */
  PgTestCerts *certs;  /* owned: certs->ca_file verifies IMAPS/POP3S (localhost, 127.0.0.1) */
  const char *ca_file; /* unowned: = certs->ca_file */
  const char *host;    /* "127.0.0.1" */
  guint16 imap_port;   /* the ports are valid after pg_test_dovecot_start() */
  guint16 imaps_port;
  guint16 pop3_port;
  guint16 pop3s_port;
  gboolean metadata;
  gchar *oauth2_introspection_url; /* owned; NULL: no OAuth2 */
  gchar *oauth2_ca_file;           /* owned: the caller's CA, copied; NULL: none */
  gboolean zlib;
  gchar *capability;      /* owned: options->capability */
  gchar *extra;           /* owned: options->extra */
  PgTestProcess *process; /* owned: the master; NULL while stopped */
  GHashTable *passwd;     /* owned: user → passwd-file line */
} PgTestDovecot;

/* NULL if this machine can run the fixture; else why not (for g_test_skip()). */
const char *pg_test_dovecot_skip_reason (void);

/* Make the temp dir, the certificates and an empty user list. Does not start Dovecot. */
PgTestDovecot *pg_test_dovecot_new (const PgTestDovecotOptions *options, GError **error);

/* Add a user or change its password (before or after start: the passwd-file is replaced
 * atomically and Dovecot re-reads it on change). Dovecot lower-cases login names
 * (auth_username_format = %Lu) and so do we; the name may not contain ':' or control
 * characters. The password may hold anything but NUL. */
gboolean pg_test_dovecot_add_user (PgTestDovecot *dovecot, const char *user, const char *password,
                                   GError **error);

/* Start the master and wait (bounded) until it has bound every listener and the IMAP port
 * accepts. Retries with new ports if one was taken meanwhile. */
gboolean pg_test_dovecot_start (PgTestDovecot *dovecot, GError **error);

/* The master's PID while running, else 0. */
GPid pg_test_dovecot_get_pid (PgTestDovecot *dovecot);

/* SIGTERM the master, wait for it and its children (bounded; SIGKILL after the deadline).
 * FALSE if it had to be killed. */
gboolean pg_test_dovecot_stop (PgTestDovecot *dovecot);

/* Stop if running, remove the temp dir, free. */
void pg_test_dovecot_free (PgTestDovecot *dovecot);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestDovecot, pg_test_dovecot_free)

/* Deliver a message byte-exact (doveadm save, via stdin) into user's mailbox, creating the
 * mailbox's user on first use. Give CRLF line ends: Dovecot stores LF and serves CRLF over
 * IMAP, so only a CRLF message reads back identical. */
gboolean pg_test_dovecot_append (PgTestDovecot *dovecot, const char *user, const char *mailbox,
                                 const char *data, gsize len, GError **error);

/* Create a mailbox (e.g. "Trash") for user (doveadm mailbox create). */
gboolean pg_test_dovecot_create_mailbox (PgTestDovecot *dovecot, const char *user,
                                         const char *mailbox, GError **error);

/* Make Dovecot forget user's UIDs in mailbox, as an index rebuild or a restore from backup
 * does: the Maildir's dovecot-uidlist and index files (and the mailbox list index) go, the
 * messages stay, so the next session sees them under a new UIDVALIDITY (Dovecot's
 * dovecot-uidvalidity file makes it larger than the old one). Waits (bounded) until no
 * imap process serves user, so none writes the old UIDs back. */
gboolean pg_test_dovecot_reset_uids (PgTestDovecot *dovecot, const char *user, const char *mailbox,
                                     GError **error);

/* Send signo (SIGSTOP/SIGCONT for fault injection) to every `imap` worker process of this
 * Dovecot (children of our master). Returns how many were signalled. */
guint pg_test_dovecot_signal_sessions (PgTestDovecot *dovecot, int signo);
/* The same, only for the imap processes serving `user` (from their process titles). */
guint pg_test_dovecot_signal_user_sessions (PgTestDovecot *dovecot, const char *user, int signo);

/* Dovecot's log so far (for a failing test's messages). */
gchar *pg_test_dovecot_read_log (PgTestDovecot *dovecot);

G_END_DECLS
