/* popgate — IMAP relay filter: what the relay looks at in the streams it copies.
 *
 * Client → upstream: the relay scanner finds each command; as soon as its command word
 * is known, a command for a withheld capability (pg-codec-imap-caps.h) is cut out of the
 * stream (its bytes are never sent upstream) and handed to the session to answer; every
 * other byte is sent on as it came. A chunk that ends before the word of its last command
 * is known keeps those few octets back (at most PG_IMAP_FILTER_MAX_HOLD) for the next
 * chunk.
 *
 * Upstream → client: at each response start the first octets are matched
 * (pg_imap_caps_line_match()); a response that carries a capability list is held whole
 * (bounded by PG_UPSTREAM_MAX_LINE) and rewritten by the one capability filter; every
 * other response, literals included, is copied as it is, in as few writes as the chunk
 * allows (one, when no capability line is in it).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-codec-imap-caps.h"
#include "popgate/pg-codec-imap-command.h"

#include <glib.h>

G_BEGIN_DECLS

/* Octets of a command's start kept back while its command word is not yet known: a tag
 * (PG_IMAP_RELAY_MAX_TAG) and "UID " plus a word. A longer start is relayed undecided: no
 * withheld command is that long. */
#define PG_IMAP_FILTER_MAX_HOLD 160

typedef struct
{
  /* A complete client command that was relayed (tracking, trace). */
  void (*command) (gpointer user_data, const PgImapRelayCommand *cmd);
  /* A complete client command for a withheld capability: the session answers it. Return
   * TRUE to stop filtering this chunk after it (what follows is handed back). */
  gboolean (*withheld) (gpointer user_data, PgImapCapsCommand what, const PgImapRelayCommand *cmd);
  /* A complete upstream response (tracking). */
  void (*response) (gpointer user_data, const PgImapRelayCommand *resp);
  /* Bytes for the client, in order. */
  void (*to_client) (gpointer user_data, const guint8 *data, gsize len);
} PgImapFilterFuncs;

typedef struct _PgImapFilter PgImapFilter;

/* `extra`: popgate's own capabilities to add to every upstream CAPABILITY list (copied). */
PgImapFilter *pg_imap_filter_new (const PgImapFilterFuncs *funcs, gpointer user_data,
                                  const char *extra);
void pg_imap_filter_free (PgImapFilter *filter);

/* buf[0..len) came from the client (its first octets may be what the last call kept
 * back). Cuts withheld commands out in place and returns how many octets, now at
 * buf[0...], go upstream; *out_hold_offset and *out_hold_len say which octets to keep for the
 * next call (move them to buf's start once the send is done; they are not to be sent
 * now). When `withheld` asked to stop, the octets after that command are the hold and
 * *out_stopped is TRUE: they were not scanned. */
gsize pg_imap_filter_client (PgImapFilter *filter, guint8 *buf, gsize len, gsize *out_hold_offset,
                             gsize *out_hold_len, gboolean *out_stopped);

/* Upstream bytes for the client. FALSE (error set) when the upstream sent a capability
 * line longer than PG_UPSTREAM_MAX_LINE. */
gboolean pg_imap_filter_upstream (PgImapFilter *filter, const guint8 *data, gsize len,
                                  GError **error);

/* TRUE between upstream responses (nothing held, no response half sent): popgate's own
 * lines may go to the client now without landing inside one of the upstream's. */
gboolean pg_imap_filter_at_response_boundary (const PgImapFilter *filter);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapFilter, pg_imap_filter_free)

G_END_DECLS
