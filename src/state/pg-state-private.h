/* Shared between the store and its backends; not part of the module's API.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#pragma once

#include "popgate/pg-state.h"

G_BEGIN_DECLS

/* What a load task returns. */
typedef struct
{
  PgStateLoadStatus status;
  PgClientState *state; /* owned; NULL for NEW */
} PgStateLoadResult;

/* Takes state (may be NULL: nothing stored) and sets the status against uidvalidity. */
PgStateLoadResult *pg_state_load_result_new (const PgStateKey *key, PgClientState *state,
                                             guint32 uidvalidity);
void pg_state_load_result_free (PgStateLoadResult *result);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgStateLoadResult, pg_state_load_result_free)

/* The same for a keyed record (see pg_client_state_decode_keyed). */
PgClientState *pg_state_decode_for_key_keyed (const void *data, gsize len, const char *source,
                                              const PgStateKey *key, GBytes *mac_key,
                                              gboolean accept_crc, GError **error);
PgClientState *pg_state_decode_for_key (const void *data, gsize len, const char *source,
                                        const PgStateKey *key, GError **error);

/* The imap-metadata backend: each completes task exactly once. */
void pg_state_metadata_load (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                             guint32 uidvalidity);
void pg_state_metadata_save (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                             GBytes *bytes);
/* Returns the merged PgClientState (pg_state_store_save_merge_async). */
void pg_state_metadata_save_merge (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                                   const PgClientState *base, const PgClientState *state);

/* The ledger (pg-state-ledger.c): a kind from its record word (not "none"); the merge
 * of stored's ledger into merged (a copy of ours) for pg_client_state_merge. */
gboolean pg_ledger_kind_from_string (const char *text, gsize len, PgLedgerKind *out_kind);
void pg_state_ledger_merge (PgClientState *merged, const PgClientState *stored,
                            const PgClientState *base);

/* Fold one more stored record into *acc for the same UIDVALIDITY (a union). */
void pg_state_fold (PgClientState **acc, PgClientState *record);

G_END_DECLS
