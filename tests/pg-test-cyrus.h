/* popgate tests — Cyrus IMAP 3.6 (Debian `cyrus-imapd`) as a real test upstream: a server
 * with UIDPLUS, MOVE, METADATA, CONDSTORE/QRESYNC and SASL-IR but no LITERAL- or
 * UTF8=ACCEPT, with its own namespace (INBOX.Trash) and its own rules for message text.
 *
 * Debian's package conflicts with dovecot-imapd, so it is not installed: scripts/deps.sh
 * (scripts/cyrus-fetch.sh) unpacks cyrus-imapd and cyrus-common into a cache dir,
 * $PG_TEST_CYRUS_ROOT (default /var/cache/popgate-test/cyrus). Each fixture runs Cyrus's
 * `master -D` from that tree with its own imapd.conf and cyrus.conf in a fresh temp dir:
 * one service, imapd on one ephemeral 127.0.0.1 port, no TLS.
 *
 * Cyrus does not run as root: master starts as nobody:nogroup (setpriv, which then sets
 * the parent-death signal again, as a uid change clears it) and `cyrus_user: nobody`
 * says so to its config; the temp dir is theirs. Users are in a sasldb in the temp dir
 * (`saslpasswd2 -f`, sasl_pwcheck_method auxprop); an INBOX and INBOX.Trash are created
 * at the first login (autocreate_quota, autocreate_inbox_folders). The namespace is
 * Debian's default (altnamespace: no, unixhierarchysep: no): personal mailboxes are
 * INBOX.NAME. `munge8bit: no` keeps 8-bit header bytes as they are;
 * `annotation_allow_undefined: yes` lets popgate keep client state in METADATA
 * (/private/vendor/popgate/..., refused with "NO Permission denied" otherwise, as
 * refuse_undefined_annotations shows). Stopped by PID
 * (master takes its imapd children along on SIGTERM).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "pg-test-util.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* The Trash mailbox every user gets at the first login, in Cyrus's namespace. */
#define PG_TEST_CYRUS_TRASH "INBOX.Trash"

typedef struct
{
  gchar *root;            /* owned: the unpacked packages ($PG_TEST_CYRUS_ROOT) */
  gchar *libdir;          /* owned: where libcyrus*.so.0 are in root */
  gchar *dir;             /* owned: the temp dir (imapd.conf, cyrus.conf, sasldb, spool) */
  gchar *log_file;        /* owned: master's stdout and stderr (Cyrus itself logs to syslog) */
  const char *host;       /* "127.0.0.1" */
  guint16 port;           /* valid after start */
  GHashTable *passwords;  /* owned: user → password, for the IMAP logins of append */
  PgTestProcess *process; /* owned: master; NULL while stopped */
  /* Set before start: Cyrus's default `annotation_allow_undefined: no`, so a SETMETADATA
   * of an entry its annotation_definitions do not name is refused. */
  gboolean refuse_undefined_annotations;
} PgTestCyrus;

/* The temp dir and an empty sasldb. Fails (never skips) when the unpacked tree is
 * missing: run scripts/deps.sh. Does not start Cyrus. */
PgTestCyrus *pg_test_cyrus_new (GError **error);
/* Add user (lower case, no '.': Cyrus's hierarchy separator) with password (no newline:
 * saslpasswd2 reads one line). Before start. */
gboolean pg_test_cyrus_add_user (PgTestCyrus *cyrus, const char *user, const char *password,
                                 GError **error);
/* Start master and wait (bounded) until the IMAP port accepts. */
gboolean pg_test_cyrus_start (PgTestCyrus *cyrus, GError **error);
/* Deliver a message into user's mailbox by IMAP APPEND as that user. Cyrus refuses bare
 * LFs in APPEND, so each is sent as CRLF (as an MTA in front of Cyrus would). */
gboolean pg_test_cyrus_append (PgTestCyrus *cyrus, const char *user, const char *mailbox,
                               const char *data, gsize len, GError **error);
/* Stop (if running), remove the temp dir, free. */
void pg_test_cyrus_free (PgTestCyrus *cyrus);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestCyrus, pg_test_cyrus_free)

G_END_DECLS
