/* popgate — per-client state: what one POP3 client (user, mailbox, client tag) has hidden
 * under `delete = keep` and retrieved, its first login, and a pending QUIT update that
 * must survive a crash.
 *
 * Three layers:
 *  - PgUidSet: a set of UIDs kept as sorted, merged ranges and written as an IMAP-style
 *    sequence set ("1:5,7,9:12"), so a history of a million UIDs stays a few bytes when
 *    it is mostly contiguous.
 *  - PgClientState and its versioned, checksummed text encoding. The decoder is pure and
 *    bounded; a truncated or corrupted record is an error (PG_ERROR_PROTOCOL naming the
 *    source and the fault), never "nothing hidden".
 *  - PgStateStore: load/save by key with two backends, `file` (one file per key, written
 *    atomically and durably) and `imap-metadata` (RFC 5464 private entry on the mailbox,
 *    through the session's own upstream connection).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"

G_BEGIN_DECLS

/* --- PgUidSet ------------------------------------------------------------------------ */

typedef struct _PgUidSet PgUidSet;

PgUidSet *pg_uid_set_new (void);
void pg_uid_set_free (PgUidSet *set);
PgUidSet *pg_uid_set_copy (const PgUidSet *set);
gboolean pg_uid_set_equal (const PgUidSet *a, const PgUidSet *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgUidSet, pg_uid_set_free)

/* UIDs are 1..G_MAXUINT32 (RFC 9051 §2.3.1.1); 0 is refused with a critical. */
void pg_uid_set_add (PgUidSet *set, guint32 uid);
/* first <= last, both != 0. */
void pg_uid_set_add_range (PgUidSet *set, guint32 first, guint32 last);
void pg_uid_set_remove (PgUidSet *set, guint32 uid);
void pg_uid_set_clear (PgUidSet *set);
gboolean pg_uid_set_contains (const PgUidSet *set, guint32 uid);
/* Number of UIDs (up to G_MAXUINT32, hence 64 bits). */
guint64 pg_uid_set_count (const PgUidSet *set);
gboolean pg_uid_set_is_empty (const PgUidSet *set);
/* Add every UID of other to set. */
void pg_uid_set_union (PgUidSet *set, const PgUidSet *other);
/* A smaller set with the same membership for every UID that may exist: `uids` (ascending,
 * n_uids) is a COMPLETE snapshot of the mailbox and uidnext its UIDNEXT, so a UID below
 * uidnext that is not in `uids` is known not to exist (and, in this UIDVALIDITY, never
 * will). Members known not to exist are dropped, runs of members are merged across UIDs
 * known not to exist only, and members at or above uidnext are kept as they are. Never
 * call it with an incomplete snapshot: a UID missing from it that still exists could be
 * merged into a run (and hidden for good). */
PgUidSet *pg_uid_set_compact (const PgUidSet *set, const guint32 *uids, gsize n_uids,
                              guint32 uidnext);
/* Remove every UID of other from set (by ranges: linear in the number of ranges). */
void pg_uid_set_subtract (PgUidSet *set, const PgUidSet *other);

/* Iterate in ascending order by range: index 0 .. n_ranges-1. */
guint pg_uid_set_get_n_ranges (const PgUidSet *set);
void pg_uid_set_get_range (const PgUidSet *set, guint index, guint32 *out_first, guint32 *out_last);
/* Every UID in ascending order; stop early by returning FALSE. */
typedef gboolean (*PgUidSetFunc) (guint32 uid, gpointer user_data);
void pg_uid_set_foreach (const PgUidSet *set, PgUidSetFunc func, gpointer user_data);

/* Canonical text: "1:5,7,9:12"; "" for the empty set. */
gchar *pg_uid_set_to_string (const PgUidSet *set);
/* Strict inverse of pg_uid_set_to_string(): only canonical text is accepted (ascending,
 * neither overlapping nor adjacent ranges, a:b with a < b, no 0, no leading zeros, no
 * spaces); "" is the empty set. len is bounded by PG_STATE_MAX_ENCODED (else
 * PG_ERROR_LIMIT); anything else wrong is PG_ERROR_PROTOCOL. Pure. */
PgUidSet *pg_uid_set_parse (const char *text, gsize len, GError **error);

/* --- key and state ------------------------------------------------------------------- */

/* Whose state: the upstream user, the mailbox, and the client tag ("" when the login
 * carried none). Any bytes but NUL are allowed in each; at most PG_STATE_MAX_KEY_FIELD. */
typedef struct
{
  gchar *user;    /* owned */
  gchar *mailbox; /* owned */
  gchar *tag;     /* owned; "" = no tag */
} PgStateKey;

PgStateKey *pg_state_key_new (const char *user, const char *mailbox, const char *tag);
void pg_state_key_free (PgStateKey *key);
PgStateKey *pg_state_key_copy (const PgStateKey *key);
gboolean pg_state_key_equal (const PgStateKey *a, const PgStateKey *b);
/* "user=… mailbox=… tag=…", escaped and cut for a log line. */
gchar *pg_state_key_to_log (const PgStateKey *key);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgStateKey, pg_state_key_free)

typedef enum
{
  PG_STATE_PENDING_NONE,
  PG_STATE_PENDING_EXPUNGE, /* QUIT was about to expunge pending_uids */
  PG_STATE_PENDING_MOVE,    /* QUIT was about to move pending_uids to pending_mailbox */
} PgStatePending;

/* --- the UIDL ledger ------------------------------------------------------------------ */

/* What names a message across a UIDVALIDITY change (the ledger's identity): RFC 8474's
 * EMAILID (the server offers OBJECTID), Gmail's X-GM-MSGID (X-GM-EXT-1), or a digest of
 * Message-ID, Date and RFC822.SIZE. Each is kept as PG_LEDGER_ID_LEN bytes of the SHA-256
 * of the kind's name and the value, so entries have one size and identities of different
 * kinds never compare equal. */
typedef enum
{
  PG_LEDGER_KIND_NONE, /* no ledger (uidl_ledger = off, or a record from before it) */
  PG_LEDGER_KIND_EMAILID,
  PG_LEDGER_KIND_X_GM_MSGID,
  PG_LEDGER_KIND_DIGEST,
  PG_LEDGER_KIND_COUNT,
} PgLedgerKind;

/* The word in records and logs: "none", "emailid", "x-gm-msgid", "digest". */
const char *pg_ledger_kind_to_string (PgLedgerKind kind);

#define PG_LEDGER_ID_LEN 12

/* One message of the ledger. Its UIDL is "%08x%08x" of uidl_uid and uidl_uidvalidity:
 * the message's own UID and UIDVALIDITY, or those it had when a client first saw it, kept
 * across UIDVALIDITY changes. */
typedef struct
{
  guint32 uid; /* in the state's UIDVALIDITY */
  guint32 uidl_uid;
  guint32 uidl_uidvalidity;
  guint8 id[PG_LEDGER_ID_LEN];
} PgLedgerEntry;

/* The identity of a message from the server's own id (EMAILID, X-GM-MSGID: value, len
 * bytes). */
void pg_ledger_identity (PgLedgerKind kind, const void *value, gsize len,
                         guint8 out_id[PG_LEDGER_ID_LEN]);
/* The digest identity from a BODY[HEADER.FIELDS (MESSAGE-ID DATE)] reply and the
 * message's RFC822.SIZE. Field names compare without case, folded values are unfolded
 * and runs of white space count as one, so two servers' renderings of one header give
 * one identity. FALSE when there is no Message-ID: such a message has no identity (and
 * gets a new UIDL after a UIDVALIDITY change). Pure and bounded by len. */
gboolean pg_ledger_digest (const guint8 *header, gsize len, guint64 size,
                           guint8 out_id[PG_LEDGER_ID_LEN]);

/* A plain value: copy it, compare it, free it. */
typedef struct
{
  guint32 uidvalidity;   /* the UIDVALIDITY all UIDs below belong to */
  guint32 first_uidnext; /* UIDNEXT at the first login (first_login = new); 0: unknown */
  gint64 first_login;    /* UNIX time of the first login */
  PgUidSet *hidden;      /* owned, never NULL: deleted by this client under delete = keep */
  PgUidSet *retrieved;   /* owned, never NULL: RETR'd by this client */
  PgStatePending pending;
  gchar *pending_mailbox; /* owned: the MAILBOX of PENDING_MOVE, else NULL */
  PgUidSet *pending_uids; /* owned, never NULL; empty when pending is NONE */
  /* The UIDL ledger: what identity each message has and which UIDL this client was
   * given for it (see pg_client_state_rebase). ledger_kind NONE: no ledger, and the
   * array is empty. */
  PgLedgerKind ledger_kind;
  GArray *ledger; /* owned, never NULL: PgLedgerEntry, ascending by uid, no uid twice, at
                   * most PG_STATE_MAX_LEDGER_ENTRIES */
} PgClientState;

PgClientState *pg_client_state_new (guint32 uidvalidity, guint32 first_uidnext, gint64 first_login);
void pg_client_state_free (PgClientState *state);
PgClientState *pg_client_state_copy (const PgClientState *state);
gboolean pg_client_state_equal (const PgClientState *a, const PgClientState *b);
/* Record the update QUIT is about to apply (mailbox only for MOVE); replaces any other. */
void pg_client_state_set_pending (PgClientState *state, PgStatePending pending, const char *mailbox,
                                  const PgUidSet *uids);
void pg_client_state_clear_pending (PgClientState *state);
/* Three-way merge for concurrent sessions of one client: `stored` is what the store holds
 * now (NULL: nothing), `base` what this session loaded or last saved (NULL: nothing),
 * `ours` what it wants to store. hidden and retrieved are unions (a DELE under keep made
 * in any session is never lost); first login the earlier; the pending update is ours plus
 * whatever `stored` records that this session did not itself clear. Another UIDVALIDITY
 * in `stored` gives ours. A new state. */
PgClientState *pg_client_state_merge (const PgClientState *stored, const PgClientState *base,
                                      const PgClientState *ours);

/* The ledger entry of uid, or NULL. */
const PgLedgerEntry *pg_client_state_ledger_lookup (const PgClientState *state, guint32 uid);
/* Add or replace the entry of entry->uid. Beyond PG_STATE_MAX_LEDGER_ENTRIES the lowest
 * UIDs are dropped (their messages then get new UIDLs after a UIDVALIDITY change). */
void pg_client_state_ledger_set (PgClientState *state, const PgLedgerEntry *entry);
/* Drop the entries of UIDs not in `uids` (ascending, n_uids): a COMPLETE snapshot. */
void pg_client_state_ledger_prune (PgClientState *state, const guint32 *uids, gsize n_uids);
/* Memory for an idle session: drop from `state` and from `base` (the saved copy it is
 * later merged against) every entry they hold alike whose UIDL is the message's own UID
 * and UIDVALIDITY — pg_client_state_format_uidl() gives the same UIDL without it, and
 * the merge at the next save takes those entries back from the stored record (absent
 * from base, they are not "pruned by us"). Entries new in `state` or carried across a
 * UIDVALIDITY change stay. Nothing when the two differ in kind or UIDVALIDITY. */
void pg_client_state_ledger_slim (PgClientState *state, PgClientState *base);
/* The same for a state that is its own base (just saved, before the copy that becomes the
 * base is made): slim (state, copy of state) without the copy of a full ledger. */
void pg_client_state_ledger_slim_saved (PgClientState *state);
/* Print the UIDL of uid in state into out (17 bytes): the ledger's, else uid and the
 * state's UIDVALIDITY. */
void pg_client_state_format_uidl (const PgClientState *state, guint32 uid, char out[17]);

/* After a UIDVALIDITY change: the state for the mailbox that now has `uidvalidity`, made
 * from `old` (a state of another UIDVALIDITY) and `fresh`, the identities of the
 * messages now there (ascending by uid, kind `kind`; their uidl_* fields are ignored). A
 * message whose identity occurs exactly once in old's ledger and once in fresh (of the
 * same kind) is the same message: it keeps its UIDL, and stays hidden or retrieved if it
 * was. Every other message (new, without identity, or ambiguous — two messages with one
 * identity) gets its own new UIDL and no state: never another message's. Nothing
 * pending carries over (its UIDs named the old mailbox). *out_carried and *out_new count
 * the two kinds of message. A new state. */
PgClientState *pg_client_state_rebase (const PgClientState *old, guint32 uidvalidity,
                                       guint32 first_uidnext, gint64 first_login, PgLedgerKind kind,
                                       const PgLedgerEntry *fresh, gsize n_fresh,
                                       guint *out_carried, guint *out_new);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgClientState, pg_client_state_free)

/* The text form, key included (it is checked on load):
 *   popgate-state 1
 *   user %-escaped
 *   mailbox %-escaped
 *   tag %-escaped
 *   uidvalidity N
 *   first-uidnext N
 *   first-login UNIXTIME
 *   hidden SET
 *   retrieved SET
 *   [ledger KIND                               (version 2 only, and there always)
 *    l UID ID [UIDL-UID:UIDL-UIDVALIDITY]...]  (ID: 24 lowercase hex digits; the UIDL
 *                                               pair only when not UID:uidvalidity)
 *   [pending expunge SET | pending move:%-escaped-MAILBOX SET]
 *   end CRC32 (8 lowercase hex digits over every byte before this line)
 * LF line ends, this order, nothing after the end line. An empty SET leaves the line as
 * the bare word ("hidden"). %-escaping covers '%', controls, space and bytes >= 0x7f.
 * The first line says "popgate-state 2" when the record has a ledger, else "1" (what
 * popgate wrote before the ledger, and can still read). */
GBytes *pg_client_state_encode (const PgClientState *state, const PgStateKey *key);
/* The same with the end line "end hmac-sha256:<64 hex>", an HMAC-SHA256 under mac_key
 * over every byte before it (mac_key NULL: the CRC-32 line above). The file backend keys
 * its records: who can write a record but not read the key cannot forge one. */
GBytes *pg_client_state_encode_keyed (const PgClientState *state, const PgStateKey *key,
                                      GBytes *mac_key);
/* Decode a record ended by a MAC (checked under mac_key, in constant time) or, only when
 * accept_crc, by the CRC-32. A MAC mismatch, a MAC without mac_key or a CRC line without
 * accept_crc is PG_ERROR_PROTOCOL. */
PgClientState *pg_client_state_decode_keyed (const void *data, gsize len, const char *source,
                                             GBytes *mac_key, gboolean accept_crc,
                                             PgStateKey **out_key, GError **error);
/* `source` names the file or entry in error messages. Errors: PG_ERROR_PROTOCOL (with
 * what is wrong and the line number), PG_ERROR_LIMIT (longer than PG_STATE_MAX_ENCODED).
 * Pure and bounded. */
PgClientState *pg_client_state_decode (const void *data, gsize len, const char *source,
                                       PgStateKey **out_key, GError **error);

/* --- the store ----------------------------------------------------------------------- */

/* The upstream connection (src/upstream); only the imap-metadata backend uses it. */
typedef struct _PgUpstream PgUpstream;

#define PG_TYPE_STATE_STORE (pg_state_store_get_type ())
G_DECLARE_FINAL_TYPE (PgStateStore, pg_state_store, PG, STATE_STORE, GObject)

/* From config->state: backend and path. The file backend creates its directory (0700)
 * if missing. Errors: PG_ERROR_CONFIG naming the path and why. */
PgStateStore *pg_state_store_new (PgConfig *config, GError **error);
/* The file backend refuses a directory that is not owned by the effective user or is
 * writable by group or others (PG_ERROR_CONFIG naming the fix); its records carry an
 * HMAC-SHA256 under the key "state.key" in the directory (32 random bytes, 0600, made at
 * the first start); temp files of a save that a crash interrupted (older than 10 minutes)
 * are removed. Unkeyed records older than the key are read as legacy and keyed at their
 * next save; a newer unkeyed or a mismatching record is PG_ERROR_PROTOCOL. */
PgStateStore *pg_state_store_new_file (const char *path, GError **error);
/* The ownership and mode checks alone, without creating anything (--check): a path that
 * does not exist yet passes (it is created 0700). */
/* `any_owner`: root's --check of a directory the service's own user owns (systemd's
 * DynamicUser, whose uid root cannot know): only the mode counts. */
gboolean pg_state_store_check_dir (const char *path, gboolean any_owner, GError **error);
PgStateStore *pg_state_store_new_imap_metadata (void);
PgStateBackend pg_state_store_get_backend (PgStateStore *self);

typedef enum
{
  PG_STATE_LOAD_NEW,                 /* nothing stored for this key: a first login */
  PG_STATE_LOAD_FOUND,               /* the stored state, for this UIDVALIDITY */
  PG_STATE_LOAD_UIDVALIDITY_CHANGED, /* the stored state is for another UIDVALIDITY: it is
                                      * returned for the log; the caller must discard it
                                      * (warn naming user, mailbox and tag) and start anew */
} PgStateLoadStatus;

/* Load the state of key in the mailbox whose UIDVALIDITY is now `uidvalidity`. upstream
 * is the session's authenticated connection with key->mailbox selected (imap-metadata;
 * may be NULL for file). A corrupt or truncated record, or one whose stored key differs,
 * is an error (PG_ERROR_PROTOCOL), never NEW. A server without METADATA is
 * PG_ERROR_UPSTREAM. */
void pg_state_store_load_async (PgStateStore *self, PgUpstream *upstream, const PgStateKey *key,
                                guint32 uidvalidity, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
/* On success *out_status is set, and *out_state (NULL for NEW) is the stored state. */
gboolean pg_state_store_load_finish (PgStateStore *self, GAsyncResult *result,
                                     PgStateLoadStatus *out_status, PgClientState **out_state,
                                     GError **error);

/* Store state for key, durably: when it completes successfully, a crash cannot lose it.
 * A state longer than PG_STATE_MAX_ENCODED is PG_ERROR_LIMIT and nothing is written. */
void pg_state_store_save_async (PgStateStore *self, PgUpstream *upstream, const PgStateKey *key,
                                const PgClientState *state, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_state_store_save_finish (PgStateStore *self, GAsyncResult *result, GError **error);

/* Store state for key merged with whatever another session (of this or another popgate
 * instance) stored meanwhile: pg_client_state_merge (now stored, base, state). base is
 * what the caller loaded or last saved (NULL: nothing). Durable like save. The backends:
 *  - file: under an exclusive flock() of "<file>.lock", re-read the record, merge, write
 *    atomically (temp file, fsync, rename, fsync of the directory), unlock.
 *  - imap-metadata: RFC 5464 has no compare-and-swap, so no entry is ever overwritten by
 *    two writers: every save writes a new entry "<entry>/<random 64-bit id>" holding the
 *    merge of everything it read, and only then removes the entries it read (the merge
 *    subsumes them). A load merges the entry and all its children (DEPTH 1). Two
 *    concurrent saves each leave their own entry; neither can remove what it did not
 *    read, so no confirmed change is lost, and the next save compacts them again.
 * On success *out_merged is what is stored now. */
void pg_state_store_save_merge_async (PgStateStore *self, PgUpstream *upstream,
                                      const PgStateKey *key, const PgClientState *base,
                                      const PgClientState *state, GCancellable *cancellable,
                                      GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_state_store_save_merge_finish (PgStateStore *self, GAsyncResult *result,
                                           PgClientState **out_merged, GError **error);

/* The file a key maps to in the file backend (tests, logs); NULL for imap-metadata. */
gchar *pg_state_store_get_file_path (PgStateStore *self, const PgStateKey *key);
/* The RFC 5464 entry a tag maps to: "/private/vendor/popgate/<tag>", with tags outside
 * [a-z0-9._-]+ written as "=" and lowercase hex (entry names are case-insensitive on
 * some servers, and must not hold '*', '%', '/' or controls). */
gchar *pg_state_metadata_entry (const char *tag);

G_END_DECLS
