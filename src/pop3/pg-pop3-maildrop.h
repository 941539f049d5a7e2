/* popgate — the POP3 maildrop on the upstream: what the POP3 session needs from IMAP, in
 * POP3's terms. One upstream connection per session; every message is addressed by UID.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"
#include "popgate/pg-state.h"
#include "popgate/pg-upstream.h"

G_BEGIN_DECLS

/* One per message of the snapshot (8 octets: a session holds thousands). */
typedef struct
{
  guint32 uid;
  guint32 size; /* RFC822.SIZE, the octets BODY[] returns; G_MAXUINT32: see below */
} PgPop3Message;

/* The snapshot as a logged-in session holds it (pg_pop3_maildrop_seal): message index (from
 * 0) → UID and 32-bit size, in UID order, in one allocation. A mailbox's UIDs are mostly
 * consecutive, so they are kept as runs (the first index and UID of each run of
 * consecutive UIDs; found by binary search); when runs would take more room than the UIDs
 * themselves, as a plain array. 4 octets per message plus 8 per run, at most 8 per
 * message (what the array of PgPop3Message took). */
typedef struct _PgPop3Snapshot PgPop3Snapshot;

/* From n messages in ascending UID order (no UID twice). */
PgPop3Snapshot *pg_pop3_snapshot_new (const PgPop3Message *messages, guint n);
void pg_pop3_snapshot_free (PgPop3Snapshot *snapshot);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgPop3Snapshot, pg_pop3_snapshot_free)
guint pg_pop3_snapshot_count (const PgPop3Snapshot *snapshot);
guint32 pg_pop3_snapshot_uid (const PgPop3Snapshot *snapshot, guint index);
guint32 pg_pop3_snapshot_size (const PgPop3Snapshot *snapshot, guint index);
void pg_pop3_snapshot_set_size (PgPop3Snapshot *snapshot, guint index, guint32 size);
/* Its runs (0: a plain UID array), and the octets its allocation takes. */
guint pg_pop3_snapshot_n_runs (const PgPop3Snapshot *snapshot);
gsize pg_pop3_snapshot_bytes (const PgPop3Snapshot *snapshot);

typedef struct _PgPop3Maildrop PgPop3Maildrop;

/* The maildrop in `upstream`'s mailbox (NULL: config->upstream). */
PgPop3Maildrop *pg_pop3_maildrop_new (PgConfig *config, const PgUpstreamConfig *upstream,
                                      guint64 session_id);
void pg_pop3_maildrop_free (PgPop3Maildrop *maildrop);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgPop3Maildrop, pg_pop3_maildrop_free)

/* On `upstream`, logged in by the login path (the maildrop keeps a reference): SELECT the
 * upstream's mailbox and take the snapshot of (UID, size), with INTERNALDATE when [pop3]
 * recent_days is set. An error means the upstream could not be used (answer [SYS/TEMP]). */
void pg_pop3_maildrop_open_async (PgPop3Maildrop *maildrop, PgUpstream *upstream,
                                  GCancellable *cancellable, GAsyncReadyCallback callback,
                                  gpointer user_data);
gboolean pg_pop3_maildrop_open_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                       GError **error);

/* After open and until seal(): the snapshot, in UID order (owned by the maildrop);
 * UIDVALIDITY and UIDNEXT (0 if the server did not say). */
GArray *pg_pop3_maildrop_get_messages (PgPop3Maildrop *maildrop);
guint32 pg_pop3_maildrop_get_uidvalidity (PgPop3Maildrop *maildrop);
guint32 pg_pop3_maildrop_get_uidnext (PgPop3Maildrop *maildrop);
/* After open: the snapshot is known complete — UIDNEXT was given, the snapshot holds as
 * many messages as SELECT's EXISTS said, all below UIDNEXT, with no UID twice. Only then
 * is a UID below UIDNEXT that is not in it known not to exist. */
gboolean pg_pop3_maildrop_snapshot_is_complete (PgPop3Maildrop *maildrop);
/* After open: the UIDL ledger's kind ([pop3] uidl_ledger and the server's capabilities),
 * and the identities found so far (uid and id of PgLedgerEntry; a zero id: the message
 * has none), sorted by UID, one per UID. The snapshot brings EMAILID and X-GM-MSGID
 * identities; digests need identify(). */
PgLedgerKind pg_pop3_maildrop_get_ledger_kind (PgPop3Maildrop *maildrop);
GArray *pg_pop3_maildrop_get_identities (PgPop3Maildrop *maildrop);
/* Drop the identities (and their memory) once the ledger has them. */
void pg_pop3_maildrop_clear_identities (PgPop3Maildrop *maildrop);
/* The digests of the messages in uid_set: `UID FETCH uid_set (UID RFC822.SIZE
 * BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)])`, added to the identities. */
void pg_pop3_maildrop_identify_async (PgPop3Maildrop *maildrop, const char *uid_set,
                                      GCancellable *cancellable, GAsyncReadyCallback callback,
                                      gpointer user_data);
gboolean pg_pop3_maildrop_identify_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                           GError **error);
/* The authenticated upstream connection (the imap-metadata state store uses it). */
PgUpstream *pg_pop3_maildrop_get_upstream (PgPop3Maildrop *maildrop);

/* After the last filter: the snapshot becomes a PgPop3Snapshot (what a long idle session
 * holds), and get_messages() returns NULL from then on. The accessors below work before
 * and after. */
void pg_pop3_maildrop_seal (PgPop3Maildrop *maildrop);
/* The number of messages; UID and size (RFC822.SIZE, or what RETR really sent, see
 * set_size) of message `index` (from 0, < count). IMAP4rev1's RFC822.SIZE is 32-bit; a
 * larger one (IMAP4rev2's number64) is kept aside and found here. */
guint pg_pop3_maildrop_count (PgPop3Maildrop *maildrop);
guint32 pg_pop3_maildrop_uid (PgPop3Maildrop *maildrop, guint index);
guint64 pg_pop3_maildrop_size (PgPop3Maildrop *maildrop, guint index);
/* Correct message index's size to what RETR really sent. */
void pg_pop3_maildrop_set_size (PgPop3Maildrop *maildrop, guint index, guint64 size);

/* Drop from the snapshot every message for which keep() returns FALSE (the client's
 * hidden messages and windows), keeping UID order. Before seal() only. */
/* internaldate: UNIX time; PG_UPSTREAM_NO_DATE unless [pop3] recent_days is set (only then
 * is it fetched) or when the server sent none. */
typedef gboolean (*PgPop3KeepFunc) (const PgPop3Message *msg, gint64 internaldate,
                                    gpointer user_data);
void pg_pop3_maildrop_filter (PgPop3Maildrop *maildrop, PgPop3KeepFunc keep, gpointer user_data);

typedef enum
{
  PG_POP3_SECTION_ALL,    /* BODY.PEEK[] */
  PG_POP3_SECTION_HEADER, /* BODY.PEEK[HEADER] */
  PG_POP3_SECTION_TEXT,   /* BODY.PEEK[TEXT]<offset.length> */
} PgPop3Section;

/* Called for each chunk (at most PG_UPSTREAM_BODY_CHUNK bytes) of the fetched section as it
 * arrives; what it returns is PgUpstreamChunkFunc's (pause until pg_pop3_maildrop_resume(),
 * the next chunk, or hold this one to get it again after the resume). */
typedef PgUpstreamChunkFunc PgPop3ChunkFunc;

/* Stream one section of one message. Completes with TRUE when the section was delivered
 * (possibly empty), with G_IO_ERROR_NOT_FOUND when the message no longer exists upstream
 * (no chunk was delivered then), or another error when the upstream failed (the caller
 * must then end the session: a partial message may have been sent). Several fetches may be
 * outstanding: they complete, and deliver their chunks, in the order they were started. */
void pg_pop3_maildrop_fetch_async (PgPop3Maildrop *maildrop, guint32 uid, PgPop3Section section,
                                   guint64 offset, guint64 length, PgPop3ChunkFunc chunk_func,
                                   gpointer chunk_data, GCancellable *cancellable,
                                   GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_pop3_maildrop_fetch_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                        GError **error);
/* Let a paused body stream go on. Harmless when not paused. */
void pg_pop3_maildrop_resume (PgPop3Maildrop *maildrop);
/* Hold upstream commands back while several fetches are queued (pg_upstream_cork). */
void pg_pop3_maildrop_cork (PgPop3Maildrop *maildrop);
void pg_pop3_maildrop_uncork (PgPop3Maildrop *maildrop);

/* The UPDATE state: \Seen on `seen`, then `policy` on `deleted` (arrays of guint32 UIDs;
 * move_mailbox for PG_DELETE_MOVE; nothing for PG_DELETE_KEEP). Completes with TRUE when
 * all of it was applied; otherwise the error message names what was not. Never plain
 * EXPUNGE. The connection stays open: end it with pg_pop3_maildrop_logout_async(). Also
 * finishes an interrupted QUIT at the next login (with `seen` empty). */
void pg_pop3_maildrop_update_async (PgPop3Maildrop *maildrop, PgDeletePolicy policy,
                                    const char *move_mailbox, GArray *deleted, GArray *seen,
                                    GCancellable *cancellable, GAsyncReadyCallback callback,
                                    gpointer user_data);
/* Whatever the outcome: *out_flagged (guint32 UIDs, a new reference) are the deleted
 * messages left flagged \Deleted in the mailbox for good (no UIDPLUS, or the server
 * refused UID EXPUNGE); *out_permanent is TRUE when the update failed and a retry would
 * fail the same way (the server refused, or lacks UIDPLUS), FALSE when it succeeded or a
 * retry may work (connection lost, timeout, RFC 5530 UNAVAILABLE/INUSE). */
gboolean pg_pop3_maildrop_update_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                         GArray **out_flagged, gboolean *out_permanent,
                                         GError **error);

/* UID COPY of uids to mailbox (a move without MOVE, step by step). */
void pg_pop3_maildrop_copy_async (PgPop3Maildrop *maildrop, GArray *uids, const char *mailbox,
                                  GCancellable *cancellable, GAsyncReadyCallback callback,
                                  gpointer user_data);
gboolean pg_pop3_maildrop_copy_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                       GError **error);
/* Whether the upstream offers a capability (after open). */
gboolean pg_pop3_maildrop_has_capability (PgPop3Maildrop *maildrop, const char *capability);

/* LOGOUT (a failure changes nothing for the client: it is only logged at debug level). */
void pg_pop3_maildrop_logout_async (PgPop3Maildrop *maildrop, GCancellable *cancellable,
                                    GAsyncReadyCallback callback, gpointer user_data);
void pg_pop3_maildrop_logout_finish (PgPop3Maildrop *maildrop, GAsyncResult *result);

/* Drop the upstream connection without changing anything (LOGOUT if it is cheap). */
void pg_pop3_maildrop_close (PgPop3Maildrop *maildrop);

G_END_DECLS
