/* popgate — the POP3 maildrop on the upstream: what the POP3 session needs from IMAP, in
 * POP3's terms. One upstream connection per session; every message is addressed by UID.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"

G_BEGIN_DECLS

typedef struct
{
  guint32 uid;
  guint64 size; /* RFC822.SIZE: the octets BODY[] returns */
} PgPop3Message;

typedef struct _PgPop3Maildrop PgPop3Maildrop;

PgPop3Maildrop *pg_pop3_maildrop_new (PgConfig *config, guint64 session_id,
                                      const char *client_ip);
void pg_pop3_maildrop_free (PgPop3Maildrop *maildrop);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgPop3Maildrop, pg_pop3_maildrop_free)

/* Connect, log in with the client's credentials, SELECT the configured mailbox and take
 * the snapshot of (UID, size). Errors: PG_ERROR_AUTH_FAILED for refused credentials,
 * anything else means the upstream could not be used (answer [SYS/TEMP]). */
void pg_pop3_maildrop_open_async (PgPop3Maildrop *maildrop, const char *user,
                                  const char *password, GCancellable *cancellable,
                                  GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_pop3_maildrop_open_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                       GError **error);

/* After open: the snapshot, in UID order (owned by the maildrop), and UIDVALIDITY. */
GArray *pg_pop3_maildrop_get_messages (PgPop3Maildrop *maildrop);
guint32 pg_pop3_maildrop_get_uidvalidity (PgPop3Maildrop *maildrop);

typedef enum
{
  PG_POP3_SECTION_ALL,    /* BODY.PEEK[] */
  PG_POP3_SECTION_HEADER, /* BODY.PEEK[HEADER] */
  PG_POP3_SECTION_TEXT,   /* BODY.PEEK[TEXT]<offset.length> */
} PgPop3Section;

/* Called for each chunk of the fetched section as it arrives. The consumer may call
 * pg_pop3_maildrop_pause() from inside and pg_pop3_maildrop_resume() later. */
typedef void (*PgPop3ChunkFunc) (const guint8 *data, gsize len, gpointer user_data);

/* Stream one section of one message. Completes with TRUE when the section was delivered
 * (possibly empty), with PG_ERROR_PROTOCOL/"gone" (G_IO_ERROR_NOT_FOUND) when the message
 * no longer exists upstream, or another error when the upstream failed (the caller must
 * then end the session: a partial message may have been sent). *out_total is the number
 * of octets delivered. */
void pg_pop3_maildrop_fetch_async (PgPop3Maildrop *maildrop, guint32 uid, PgPop3Section section,
                                   guint64 offset, guint64 length, PgPop3ChunkFunc chunk_func,
                                   gpointer chunk_data, GCancellable *cancellable,
                                   GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_pop3_maildrop_fetch_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                        guint64 *out_total, GError **error);
void pg_pop3_maildrop_pause (PgPop3Maildrop *maildrop);
void pg_pop3_maildrop_resume (PgPop3Maildrop *maildrop);

/* The UPDATE state: apply the delete policy to `deleted` and \Seen to `seen` (arrays of
 * guint32 UIDs), then LOGOUT. Completes with TRUE when all of it was applied; otherwise
 * the error message names what was not. Never plain EXPUNGE. */
void pg_pop3_maildrop_update_async (PgPop3Maildrop *maildrop, GArray *deleted, GArray *seen,
                                    GCancellable *cancellable, GAsyncReadyCallback callback,
                                    gpointer user_data);
gboolean pg_pop3_maildrop_update_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                         GError **error);

/* Drop the upstream connection without changing anything (LOGOUT if it is cheap). */
void pg_pop3_maildrop_close (PgPop3Maildrop *maildrop);

G_END_DECLS
