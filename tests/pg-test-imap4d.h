/* popgate tests — GNU mailutils imap4d (Debian `mailutils-imap4d`) as a second real
 * upstream: a small server without UIDPLUS, MOVE, METADATA and SASL-IR, that ends the
 * tagged OK of AUTHENTICATE with a bare LF.
 *
 * Each fixture runs `imap4d --daemon --foreground --config-file FILE` as root with its own
 * config in a fresh temp dir, on one ephemeral 127.0.0.1 port, never the system service.
 * No system users and no PAM: users are a virtual domain (`auth { authorization
 * virtdomain; authentication generic; }`, a passwd-format file per domain with
 * SHA-512-crypt hashes made by `openssl passwd -6 -stdin`), uid/gid nobody, each with an
 * mbox INBOX in its own home under the temp dir. Stopped by PID.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "pg-test-util.h"

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct
{
  gchar *dir;             /* owned: the temp dir */
  gchar *log_file;        /* owned: imap4d's stderr (with the session transcript) */
  const char *host;       /* "127.0.0.1" */
  guint16 port;           /* valid after start */
  PgTestProcess *process; /* owned: NULL while stopped */
} PgTestImap4d;

/* The temp dir, its config and an empty virtual domain. Does not start imap4d. */
PgTestImap4d *pg_test_imap4d_new (GError **error);
/* Add user ("name@domain": the domain names its passwd file) with password (no ':' or
 * newline) and an empty INBOX. */
gboolean pg_test_imap4d_add_user (PgTestImap4d *imap4d, const char *user, const char *password,
                                  GError **error);
/* Messages go in through IMAP APPEND (pg_test_imap_append): a message written into the
 * mbox behind imap4d's back makes it pick a new UIDVALIDITY. */
/* Start imap4d and wait (bounded) until its port accepts. */
gboolean pg_test_imap4d_start (PgTestImap4d *imap4d, GError **error);
/* Stop (if running), remove the temp dir, free. */
void pg_test_imap4d_free (PgTestImap4d *imap4d);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestImap4d, pg_test_imap4d_free)

G_END_DECLS
