/* popgate — upstream: one asynchronous IMAP client connection to the upstream store.
 *
 * Everything runs on the GMainContext that was thread-default when pg_upstream_new() was
 * called; no threads. Commands may be issued at any time, even before the previous one
 * completed: they are queued, tagged, pipelined and matched with their tagged replies.
 * Every operation is an _async/_finish pair with a GCancellable. When the connection
 * fails (disconnect, BYE, malformed reply, timeout) every pending and queued command fails
 * with PG_ERROR_UPSTREAM (PG_ERROR_TIMEOUT, PG_ERROR_PROTOCOL... for those causes) and
 * "closed" is emitted once.
 *
 * Cancelling an operation: IMAP cannot take a command back, so it completes with
 * G_IO_ERROR_CANCELLED once the server has answered; a cancelled body fetch stops
 * delivering chunks at once (and un-pauses itself), the rest of the literal is skipped.
 *
 * While connected, the pending read keeps the object alive: end a session with
 * pg_upstream_logout_async() or pg_upstream_close(), then drop your reference.
 *
 * Signals (unsolicited data from the server):
 *   "exists"   (guint count)                 — * n EXISTS
 *   "expunge"  (guint seq)                   — * n EXPUNGE
 *   "vanished" (const char *uid_set, gboolean earlier) — * VANISHED
 *   "fetch"    (guint seq, const PgImapResponse *response) — a FETCH no command asked for
 *                                                (flag changes)
 *   "alert"    (const char *text)            — [ALERT] text: show it to the user
 *   "bye"      (const char *text)            — * BYE (the connection is about to go)
 *   "closed"   (const GError *why)           — the connection is gone (NULL after LOGOUT)
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"
#include "popgate/pg-imap-parser.h"
#include "popgate/pg-net.h"

G_BEGIN_DECLS

#define PG_TYPE_UPSTREAM (pg_upstream_get_type ())
G_DECLARE_FINAL_TYPE (PgUpstream, pg_upstream, PG, UPSTREAM, GObject)

/* Connects to `upstream` (host, port, tls, ca_file, timeout_ms, connect_timeout_ms): one of
 * config's upstreams ([upstream] or an [upstream:NAME]; NULL: config->upstream). Keeps a
 * reference on config, which owns `upstream`. `sid` prefixes the debug log lines (0: none). */
PgUpstream *pg_upstream_new (PgConfig *config, const PgUpstreamConfig *upstream, guint64 sid);

/* Connect (TCP, then TLS per config: none / starttls / implicit, with certificate and
 * host name verification), read the greeting and the capabilities (refreshed after TLS).
 * Errors: PG_ERROR_TLS (verification, STARTTLS not offered), PG_ERROR_UPSTREAM (BYE
 * greeting), PG_ERROR_TIMEOUT, GIO errors of the TCP connect. */
void pg_upstream_connect_async (PgUpstream *self, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_connect_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* Capability as the server spells it, ASCII case ignored: "UIDPLUS", "AUTH=PLAIN". */
gboolean pg_upstream_has_capability (PgUpstream *self, const char *capability);
/* TRUE after PREAUTH or a successful login. */
gboolean pg_upstream_is_authenticated (PgUpstream *self);
gboolean pg_upstream_is_tls (PgUpstream *self);

/* LOGIN with both credentials as literals (non-synchronising with LITERAL+/LITERAL-).
 * A refusal is PG_ERROR_AUTH_FAILED whatever the reason; capabilities are refreshed. */
void pg_upstream_login_async (PgUpstream *self, const char *user, const char *password,
                              GCancellable *cancellable, GAsyncReadyCallback callback,
                              gpointer user_data);
gboolean pg_upstream_login_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* AUTHENTICATE PLAIN (initial response inline with SASL-IR). Same errors as login, except
 * that a BAD is PG_ERROR_UPSTREAM (the exchange failed, not the credentials). */
void pg_upstream_authenticate_plain_async (PgUpstream *self, const char *user, const char *password,
                                           GCancellable *cancellable, GAsyncReadyCallback callback,
                                           gpointer user_data);
gboolean pg_upstream_authenticate_plain_finish (PgUpstream *self, GAsyncResult *result,
                                                GError **error);

/* AUTHENTICATE OAUTHBEARER (RFC 7628) or XOAUTH2 with an OAuth 2.0 access token.
 * PG_OAUTH2_MECHANISM_AUTO takes OAUTHBEARER when AUTH=OAUTHBEARER is advertised, else
 * XOAUTH2; the mechanism must be advertised. The initial response goes inline with
 * SASL-IR, else after the server's "+". A refusal's error challenge (base64 JSON) is
 * logged (status and scope only) and answered as RFC 7628 §3.2.3 says; the tagged NO is
 * PG_ERROR_AUTH_FAILED, except NO [UNAVAILABLE] (the server cannot check tokens now):
 * PG_ERROR_UPSTREAM. */
void pg_upstream_authenticate_oauth2_async (PgUpstream *self, PgOAuth2Mechanism mechanism,
                                            const char *user, const char *token,
                                            GCancellable *cancellable, GAsyncReadyCallback callback,
                                            gpointer user_data);
gboolean pg_upstream_authenticate_oauth2_finish (PgUpstream *self, GAsyncResult *result,
                                                 GError **error);

/* ID (RFC 2971) with name, version and, if not NULL, x-originating-ip. A server without
 * ID completes at once with success. */
void pg_upstream_id_async (PgUpstream *self, const char *name, const char *version,
                           const char *originating_ip, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_id_finish (PgUpstream *self, GAsyncResult *result, GError **error);

typedef struct
{
  guint32 uidvalidity;
  guint32 uidnext; /* 0 if the server did not say */
  guint32 exists;
  gboolean read_only;
} PgUpstreamMailbox;

/* SELECT (or EXAMINE when read_only). */
void pg_upstream_select_async (PgUpstream *self, const char *mailbox, gboolean read_only,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data);
gboolean pg_upstream_select_finish (PgUpstream *self, GAsyncResult *result,
                                    PgUpstreamMailbox *out_mailbox, GError **error);

/* `UID FETCH 1:* (UID RFC822.SIZE)`: func is called for every message as its line
 * arrives (in server order), then the operation completes. One round trip; nothing is
 * kept here. An entry without a UID or RFC822.SIZE fails the connection with
 * PG_ERROR_PROTOCOL; more than PG_MAX_SNAPSHOT_MESSAGES entries or PG_MAX_SNAPSHOT_OCTETS
 * of reply with G_IO_ERROR_MESSAGE_TOO_LARGE. */
typedef void (*PgUpstreamSizeFunc) (guint32 seq, guint32 uid, guint64 size, gpointer user_data);
void pg_upstream_fetch_sizes_async (PgUpstream *self, PgUpstreamSizeFunc func, gpointer func_data,
                                    GCancellable *cancellable, GAsyncReadyCallback callback,
                                    gpointer user_data);
gboolean pg_upstream_fetch_sizes_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* INTERNALDATE as UNIX time in a dated snapshot entry (pg_upstream_fetch_snapshot_async),
 * or PG_UPSTREAM_NO_DATE when the server sent none or one that does not parse. */
#define PG_UPSTREAM_NO_DATE G_MININT64

/* The snapshot for the UIDL ledger (src/state): `UID FETCH uid_set (UID RFC822.SIZE
 * [INTERNALDATE] [ID])` where ID is RFC 8474's EMAILID, Gmail's X-GM-MSGID or
 * BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)] per `ids`; uid_set is a valid UID set
 * ("1:*"). func gets each entry; the same checks and limits as fetch_sizes. Complete
 * with pg_upstream_fetch_sizes_finish(). */
typedef enum
{
  PG_UPSTREAM_IDS_NONE,
  PG_UPSTREAM_IDS_EMAILID,
  PG_UPSTREAM_IDS_X_GM_MSGID,
  PG_UPSTREAM_IDS_HEADER,
} PgUpstreamIds;

typedef struct
{
  guint32 seq;
  guint32 uid;
  guint64 size;
  gint64 internaldate;   /* PG_UPSTREAM_NO_DATE unless dated and the server sent one */
  const char *object_id; /* EMAILID or X-GM-MSGID as sent; NULL: none */
  gsize object_id_len;
  const guint8 *header; /* HEADER: the fields (at most PG_UPSTREAM_MAX_ID_HEADER octets);
                         * NULL: the server sent none */
  gsize header_len;
} PgUpstreamSnapshotEntry;

/* entry and what it points to are valid only during the call. */
typedef void (*PgUpstreamSnapshotFunc) (const PgUpstreamSnapshotEntry *entry, gpointer user_data);
void pg_upstream_fetch_snapshot_async (PgUpstream *self, const char *uid_set, gboolean dated,
                                       PgUpstreamIds ids, PgUpstreamSnapshotFunc func,
                                       gpointer func_data, GCancellable *cancellable,
                                       GAsyncReadyCallback callback, gpointer user_data);

/* What a body consumer did with a chunk. */
typedef enum
{
  PG_UPSTREAM_CHUNK_PAUSE, /* taken; pause: nothing more is read or delivered until
                            * pg_upstream_resume() */
  PG_UPSTREAM_CHUNK_NEXT,  /* taken; the next one as soon as it arrives */
  PG_UPSTREAM_CHUNK_HOLD,  /* not taken: pause, and deliver this same chunk (the same bytes,
                            * still in the read buffer, so nobody copies them) again first
                            * after pg_upstream_resume(). A consumer not ready for a body
                            * yet (read-ahead) waits on it without a copy. */
} PgUpstreamChunkAction;

/* A chunk of a streamed body (1 to PG_UPSTREAM_BODY_CHUNK bytes), straight from the read
 * buffer: valid only during the call, so copy what you keep (or HOLD it).
 * pg_upstream_resume() may be called from inside the function. */
typedef PgUpstreamChunkAction (*PgUpstreamChunkFunc) (const guint8 *data, gsize len,
                                                      gpointer user_data);

/* `UID FETCH uid BODY.PEEK[section]<offset.length>`: section "" (the whole message),
 * "HEADER" or "TEXT"; length 0 means no partial. The body goes to func in chunks, with
 * back-pressure. On success *out_vanished says the message no longer exists upstream
 * (no body came back, or the server said NO): no chunk was delivered then. */
void pg_upstream_fetch_body_async (PgUpstream *self, guint32 uid, const char *section,
                                   guint64 offset, guint64 length, PgUpstreamChunkFunc func,
                                   gpointer func_data, GCancellable *cancellable,
                                   GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_fetch_body_finish (PgUpstream *self, GAsyncResult *result,
                                        gboolean *out_vanished, GError **error);

/* Let a paused body stream go on. Harmless when not paused. */
void pg_upstream_resume (PgUpstream *self);

/* Hold commands back until the matching uncork (they nest), so that body FETCHes queued
 * in between go out as one batched UID FETCH (see pg_upstream_fetch_body_async). */
void pg_upstream_cork (PgUpstream *self);
void pg_upstream_uncork (PgUpstream *self);

/* `UID STORE set +FLAGS.SILENT (flags)`, e.g. flags = "\\Deleted \\Seen". Long sets are
 * split into several commands. */
void pg_upstream_add_flags_async (PgUpstream *self, const guint32 *uids, gsize n_uids,
                                  const char *flags, GCancellable *cancellable,
                                  GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_add_flags_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* `UID EXPUNGE set` (needs UIDPLUS: without it, PG_ERROR_UPSTREAM and nothing is sent). */
void pg_upstream_expunge_async (PgUpstream *self, const guint32 *uids, gsize n_uids,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data);
gboolean pg_upstream_expunge_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* `UID MOVE set mailbox` (RFC 6851); without MOVE: UID COPY, UID STORE +FLAGS.SILENT
 * (\Deleted) and, with UIDPLUS, UID EXPUNGE. *out_removed tells whether the messages are
 * gone from the selected mailbox (FALSE: copied and left flagged \Deleted, no UIDPLUS). */
void pg_upstream_move_async (PgUpstream *self, const guint32 *uids, gsize n_uids,
                             const char *mailbox, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_move_finish (PgUpstream *self, GAsyncResult *result, gboolean *out_removed,
                                  GError **error);

/* `UID COPY set mailbox` alone (split like STORE): for a caller that must record what was
 * copied before it flags the originals (a move without MOVE, made idempotent). */
void pg_upstream_copy_async (PgUpstream *self, const guint32 *uids, gsize n_uids,
                             const char *mailbox, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_copy_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* GETMETADATA mailbox entry (RFC 5464; mailbox "" for server annotations). *out_value is
 * NULL when the entry is not set. */
void pg_upstream_get_metadata_async (PgUpstream *self, const char *mailbox, const char *entry,
                                     GCancellable *cancellable, GAsyncReadyCallback callback,
                                     gpointer user_data);
gboolean pg_upstream_get_metadata_finish (PgUpstream *self, GAsyncResult *result,
                                          GBytes **out_value, GError **error);

/* GETMETADATA (DEPTH 1) mailbox entry: the entry and the entries one level below it that
 * are set, as a new table of entry name (as the server spells it) → GBytes. More than
 * PG_STATE_MAX_ENTRIES is PG_ERROR_LIMIT. */
void pg_upstream_get_metadata_tree_async (PgUpstream *self, const char *mailbox, const char *entry,
                                          GCancellable *cancellable, GAsyncReadyCallback callback,
                                          gpointer user_data);
GHashTable *pg_upstream_get_metadata_tree_finish (PgUpstream *self, GAsyncResult *result,
                                                  GError **error);

/* SETMETADATA mailbox (entry value); value NULL removes the entry. */
void pg_upstream_set_metadata_async (PgUpstream *self, const char *mailbox, const char *entry,
                                     GBytes *value, GCancellable *cancellable,
                                     GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_set_metadata_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* LIST "" mailbox: *out_exists is whether the server listed exactly that mailbox, neither
 * \NonExistent nor \Noselect (so it can take messages). A refused LIST is an error. */
void pg_upstream_list_async (PgUpstream *self, const char *mailbox, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_list_finish (PgUpstream *self, GAsyncResult *result, gboolean *out_exists,
                                  GError **error);

void pg_upstream_noop_async (PgUpstream *self, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_noop_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* LOGOUT, then close. Completes when the server confirmed (or closed). */
void pg_upstream_logout_async (PgUpstream *self, GCancellable *cancellable,
                               GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_upstream_logout_finish (PgUpstream *self, GAsyncResult *result, GError **error);

/* TRUE when error is the server's own refusal of a command (a tagged NO or BAD) that the
 * same command will meet again: not a lost connection, a timeout or a broken reply, and
 * not one of RFC 5530's temporary codes (UNAVAILABLE, INUSE, EXPUNGEISSUED); and for a
 * TLS failure (certificate, STARTTLS missing). What a POP3 client hears as [SYS/PERM]
 * rather than [SYS/TEMP], an IMAP client as NO [SERVERBUG] rather than [UNAVAILABLE]. */
gboolean pg_upstream_error_is_permanent (const GError *error);

/* The capabilities as the server last listed them, in its order and spelling. */
GStrv pg_upstream_dup_capabilities (PgUpstream *self);

/* --- relay hand-off (the IMAP front end) -------------------------------------------
 * After login the IMAP front end relays its client's bytes to the upstream and back
 * instead of issuing commands through this object. The hand-off:
 *
 *   pg_upstream_hold_when_idle (up);          // before the login is sent
 *   pg_upstream_login_async (up, ...);        // (or authenticate_plain)
 *   ... in the login callback, on success:
 *   stream = pg_upstream_steal_stream (up, &buffered, &error);
 *
 * With the hold set, the client stops reading and parsing at once when it is logged in
 * and no command is outstanding (right after the tagged reply that completed the login,
 * or the CAPABILITY it had to ask for), so every byte the server sends after that reply
 * is either still in the socket or returned in `buffered` — nothing is lost or parsed.
 *
 * pg_upstream_steal_stream() hands over the connection (plain or TLS): the returned
 * GIOStream (transfer full) and *out_buffered, the bytes already read but not parsed
 * (possibly empty), which the caller must treat as the start of the server's stream. It
 * fails (PG_ERROR_UPSTREAM) unless logged in with no command, read or write
 * outstanding (an idle connection's wait for unsolicited data does not count). Afterwards the
 * PgUpstream is inert: is_closed() is TRUE, "closed" is not emitted, commands fail, and dropping it
 * does not touch the connection. */
void pg_upstream_hold_when_idle (PgUpstream *self);
GIOStream *pg_upstream_steal_stream (PgUpstream *self, GBytes **out_buffered, GError **error);

/* The same hand-over of the connection engine itself: the upstream's PgConn (transfer
 * full; pg_conn_is_upstream(), TLS and any compression included) with no read pending,
 * nothing queued, no deadline and no handler of ours, plus *out_buffered as above. For a
 * relay that pumps between two PgConns. pg_upstream_steal_stream() refuses a compressed
 * connection (PG_ERROR_UPSTREAM); this one does not. */
PgConn *pg_upstream_steal_conn (PgUpstream *self, GBytes **out_buffered, GError **error);

/* Drop the connection now; pending commands fail with G_IO_ERROR_CANCELLED. */
void pg_upstream_close (PgUpstream *self);
gboolean pg_upstream_is_closed (PgUpstream *self);

G_END_DECLS
