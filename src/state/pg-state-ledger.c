/* The UIDL ledger of a client's state: each message's identity beside the UIDL the client
 * was given for it, so that after a UIDVALIDITY change (an index rebuilt, a mailbox
 * restored or migrated) the same messages keep their UIDLs and only what is really new
 * looks new (README "UIDLs across a UIDVALIDITY change").
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-state-private.h"

#include "popgate/pg-limits.h"

#include <string.h>

static const char *const pg_ledger_kind_names[] = {
  "none",
  "emailid",
  "x-gm-msgid",
  "digest",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_ledger_kind_names) == PG_LEDGER_KIND_COUNT);

const char *
pg_ledger_kind_to_string (PgLedgerKind kind)
{
  g_return_val_if_fail (kind < PG_LEDGER_KIND_COUNT, "none");
  return pg_ledger_kind_names[kind];
}

gboolean
pg_ledger_kind_from_string (const char *text, gsize len, PgLedgerKind *out_kind)
{
  /* NONE is never written: a record without a ledger has no ledger line. */
  for (guint i = PG_LEDGER_KIND_NONE + 1; i < PG_LEDGER_KIND_COUNT; i++)
    if (strlen (pg_ledger_kind_names[i]) == len && memcmp (pg_ledger_kind_names[i], text, len) == 0)
      {
        *out_kind = (PgLedgerKind) i;
        return TRUE;
      }
  return FALSE;
}

void
pg_ledger_identity (PgLedgerKind kind, const void *value, gsize len,
                    guint8 out_id[PG_LEDGER_ID_LEN])
{
  g_autoptr (GChecksum) sum = g_checksum_new (G_CHECKSUM_SHA256);
  const char *name = pg_ledger_kind_to_string (kind);
  guint8 digest[32];
  gsize digest_len = sizeof digest;

  g_checksum_update (sum, (const guchar *) name, (gssize) strlen (name) + 1);
  g_checksum_update (sum, value, (gssize) len);
  g_checksum_get_digest (sum, digest, &digest_len);
  memcpy (out_id, digest, PG_LEDGER_ID_LEN);
}

/* The value of the header field `name` (the first one), unfolded, runs of white space as
 * one space, trimmed: into out. FALSE if there is none. */
static gboolean
pg_ledger_header_field (const guint8 *header, gsize len, const char *name, GString *out)
{
  gsize name_len = strlen (name);
  gsize pos = 0;

  while (pos < len)
    {
      gsize start = pos;
      gboolean space = FALSE;

      /* A field starts at a line start that is not a continuation. */
      if (len - pos > name_len
          && g_ascii_strncasecmp ((const char *) header + pos, name, name_len) == 0
          && header[pos + name_len] == ':')
        {
          g_string_truncate (out, 0);
          for (pos += name_len + 1; pos < len; pos++)
            {
              guint8 c = header[pos];

              if (c == '\n'
                  && (pos + 1 >= len || (header[pos + 1] != ' ' && header[pos + 1] != '\t')))
                break;
              if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
                {
                  space = out->len > 0;
                  continue;
                }
              if (space)
                g_string_append_c (out, ' ');
              space = FALSE;
              g_string_append_c (out, (char) c);
            }
          return TRUE;
        }
      /* To the next line that is not a continuation of this one. */
      for (pos = start; pos < len; pos++)
        if (header[pos] == '\n'
            && (pos + 1 >= len || (header[pos + 1] != ' ' && header[pos + 1] != '\t')))
          break;
      pos++;
    }
  return FALSE;
}

gboolean
pg_ledger_digest (const guint8 *header, gsize len, guint64 size, guint8 out_id[PG_LEDGER_ID_LEN])
{
  g_autoptr (GString) value = g_string_new (NULL);
  g_autoptr (GString) date = g_string_new (NULL);

  if (!pg_ledger_header_field (header, len, "Message-ID", value) || value->len == 0)
    return FALSE;
  /* No Date is a Date of "": the Message-ID and the size still tell messages apart. */
  (void) pg_ledger_header_field (header, len, "Date", date);
  g_string_append_c (value, '\0');
  g_string_append_len (value, date->str, (gssize) date->len);
  g_string_append_printf (value, "%c%" G_GUINT64_FORMAT, '\0', size);
  pg_ledger_identity (PG_LEDGER_KIND_DIGEST, value->str, value->len, out_id);
  return TRUE;
}

/* --- the ledger of a state ---------------------------------------------------------------- */

/* The index of uid in ledger, or where it would go (*out_found FALSE). */
static guint
pg_ledger_search (GArray *ledger, guint32 uid, gboolean *out_found)
{
  guint lo = 0, hi = ledger->len;

  while (lo < hi)
    {
      guint mid = lo + (hi - lo) / 2;
      guint32 at = g_array_index (ledger, PgLedgerEntry, mid).uid;

      if (at == uid)
        {
          *out_found = TRUE;
          return mid;
        }
      if (at < uid)
        lo = mid + 1;
      else
        hi = mid;
    }
  *out_found = FALSE;
  return lo;
}

const PgLedgerEntry *
pg_client_state_ledger_lookup (const PgClientState *state, guint32 uid)
{
  gboolean found = FALSE;
  guint i = pg_ledger_search (state->ledger, uid, &found);

  return found ? &g_array_index (state->ledger, PgLedgerEntry, i) : NULL;
}

/* Keep the newest PG_STATE_MAX_LEDGER_ENTRIES. */
static void
pg_ledger_trim (GArray *ledger)
{
  if (ledger->len > PG_STATE_MAX_LEDGER_ENTRIES)
    g_array_remove_range (ledger, 0, ledger->len - PG_STATE_MAX_LEDGER_ENTRIES);
}

void
pg_client_state_ledger_set (PgClientState *state, const PgLedgerEntry *entry)
{
  gboolean found = FALSE;
  guint i = pg_ledger_search (state->ledger, entry->uid, &found);

  if (found)
    g_array_index (state->ledger, PgLedgerEntry, i) = *entry;
  else
    {
      g_array_insert_val (state->ledger, i, *entry);
      pg_ledger_trim (state->ledger);
    }
}

void
pg_client_state_ledger_prune (PgClientState *state, const guint32 *uids, gsize n_uids)
{
  GArray *ledger = state->ledger;
  guint kept = 0;
  gsize j = 0;

  for (guint i = 0; i < ledger->len; i++)
    {
      guint32 uid = g_array_index (ledger, PgLedgerEntry, i).uid;

      while (j < n_uids && uids[j] < uid)
        j++;
      if (j < n_uids && uids[j] == uid)
        g_array_index (ledger, PgLedgerEntry, kept++) = g_array_index (ledger, PgLedgerEntry, i);
    }
  g_array_set_size (ledger, kept);
}

/* A copy of `kept` that holds no spare room (a GArray keeps what it once grew to). */
static void
pg_state_ledger_replace (PgClientState *state, GArray *kept)
{
  GArray *exact = g_array_sized_new (FALSE, FALSE, sizeof (PgLedgerEntry), kept->len);

  g_array_append_vals (exact, kept->data, kept->len);
  g_array_unref (state->ledger);
  state->ledger = exact;
}

void
pg_client_state_ledger_slim (PgClientState *state, PgClientState *base)
{
  g_autoptr (GArray) mine = NULL;
  g_autoptr (GArray) theirs = NULL;
  guint i = 0;
  guint j = 0;

  if (state->ledger_kind != base->ledger_kind || state->uidvalidity != base->uidvalidity)
    return;
  mine = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));
  theirs = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));
  while (i < state->ledger->len || j < base->ledger->len)
    {
      const PgLedgerEntry *a
          = i < state->ledger->len ? &g_array_index (state->ledger, PgLedgerEntry, i) : NULL;
      const PgLedgerEntry *b
          = j < base->ledger->len ? &g_array_index (base->ledger, PgLedgerEntry, j) : NULL;

      if (b == NULL || (a != NULL && a->uid < b->uid))
        {
          g_array_append_vals (mine, a, 1);
          i++;
        }
      else if (a == NULL || b->uid < a->uid)
        {
          g_array_append_vals (theirs, b, 1);
          j++;
        }
      else
        {
          if (memcmp (a, b, sizeof *a) != 0 || a->uidl_uid != a->uid
              || a->uidl_uidvalidity != state->uidvalidity)
            {
              g_array_append_vals (mine, a, 1);
              g_array_append_vals (theirs, b, 1);
            }
          i++;
          j++;
        }
    }
  pg_state_ledger_replace (state, mine);
  pg_state_ledger_replace (base, theirs);
}

void
pg_client_state_ledger_slim_saved (PgClientState *state)
{
  g_autoptr (GArray) kept = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));

  /* What slim() keeps of two equal ledgers: the entries whose UIDL is not the default. */
  for (guint i = 0; i < state->ledger->len; i++)
    {
      const PgLedgerEntry *a = &g_array_index (state->ledger, PgLedgerEntry, i);

      if (a->uidl_uid != a->uid || a->uidl_uidvalidity != state->uidvalidity)
        g_array_append_vals (kept, a, 1);
    }
  pg_state_ledger_replace (state, kept);
}

void
pg_client_state_format_uidl (const PgClientState *state, guint32 uid, char out[17])
{
  const PgLedgerEntry *entry = pg_client_state_ledger_lookup (state, uid);

  if (entry != NULL)
    g_snprintf (out, 17, "%08x%08x", entry->uidl_uid, entry->uidl_uidvalidity);
  else
    g_snprintf (out, 17, "%08x%08x", uid, state->uidvalidity);
}

/* An all-zero id: a message without an identity (no Message-ID, no EMAILID). */
static gboolean
pg_ledger_id_is_none (const guint8 id[PG_LEDGER_ID_LEN])
{
  static const guint8 none[PG_LEDGER_ID_LEN] = { 0 };

  return memcmp (id, none, PG_LEDGER_ID_LEN) == 0;
}

/* Identity → how often it occurs and, when once, where. */
typedef struct
{
  guint count;
  guint index;
} PgLedgerCount;

static guint
pg_ledger_id_hash (gconstpointer key)
{
  guint h;

  memcpy (&h, key, sizeof h); /* a SHA-256 prefix: any of its bytes are as good */
  return h;
}

static gboolean
pg_ledger_id_equal (gconstpointer a, gconstpointer b)
{
  return memcmp (a, b, PG_LEDGER_ID_LEN) == 0;
}

static GHashTable *
pg_ledger_count (const PgLedgerEntry *entries, gsize n)
{
  GHashTable *counts = g_hash_table_new_full (pg_ledger_id_hash, pg_ledger_id_equal, NULL, g_free);

  for (gsize i = 0; i < n; i++)
    {
      PgLedgerCount *c = g_hash_table_lookup (counts, entries[i].id);

      if (c == NULL)
        {
          c = g_new0 (PgLedgerCount, 1);
          c->index = (guint) i;
          g_hash_table_insert (counts, (gpointer) entries[i].id, c);
        }
      c->count++;
    }
  return counts;
}

PgClientState *
pg_client_state_rebase (const PgClientState *old, guint32 uidvalidity, guint32 first_uidnext,
                        gint64 first_login, PgLedgerKind kind, const PgLedgerEntry *fresh,
                        gsize n_fresh, guint *out_carried, guint *out_new)
{
  PgClientState *state = pg_client_state_new (uidvalidity, first_uidnext, first_login);
  gboolean comparable = kind != PG_LEDGER_KIND_NONE && old->ledger_kind == kind;
  const PgLedgerEntry *old_entries = (const PgLedgerEntry *) (gpointer) old->ledger->data;
  g_autoptr (GHashTable) old_counts = pg_ledger_count (old_entries, old->ledger->len);
  g_autoptr (GHashTable) new_counts = pg_ledger_count (fresh, n_fresh);
  guint carried = 0;

  state->ledger_kind = kind;
  for (gsize i = 0; i < n_fresh; i++)
    {
      PgLedgerEntry entry = fresh[i];
      const PgLedgerCount *mine = g_hash_table_lookup (new_counts, entry.id);
      const PgLedgerCount *theirs = comparable ? g_hash_table_lookup (old_counts, entry.id) : NULL;

      entry.uidl_uid = entry.uid;
      entry.uidl_uidvalidity = uidvalidity;
      /* Once on each side, or it is not known to be the same message. A UIDL of the new
       * UIDVALIDITY could be another message's own: a server that went back to a former
       * UIDVALIDITY is not trusted with a carry-over either. */
      if (theirs != NULL && theirs->count == 1 && mine->count == 1
          && !pg_ledger_id_is_none (entry.id)
          && old_entries[theirs->index].uidl_uidvalidity != uidvalidity)
        {
          const PgLedgerEntry *was = &old_entries[theirs->index];

          entry.uidl_uid = was->uidl_uid;
          entry.uidl_uidvalidity = was->uidl_uidvalidity;
          if (pg_uid_set_contains (old->hidden, was->uid))
            pg_uid_set_add (state->hidden, entry.uid);
          if (pg_uid_set_contains (old->retrieved, was->uid))
            pg_uid_set_add (state->retrieved, entry.uid);
          carried++;
        }
      pg_client_state_ledger_set (state, &entry);
    }
  *out_carried = carried;
  *out_new = (guint) n_fresh - carried;
  return state;
}

/* Merge the ledgers for pg_client_state_merge() (one UIDVALIDITY): ours, plus the entries
 * another session added (in stored, neither in base nor ours: what we pruned stays
 * pruned). Where both hold a UID with different UIDLs (two sessions carried a UIDVALIDITY
 * change over at once, on different snapshots), the stored one stands: it was written
 * first, so a client may have been given it already. */
void
pg_state_ledger_merge (PgClientState *merged, const PgClientState *stored,
                       const PgClientState *base)
{
  if (stored->ledger_kind != merged->ledger_kind)
    return; /* the kind changed (config or server): ours, which is current */
  for (guint i = 0; i < stored->ledger->len; i++)
    {
      const PgLedgerEntry *theirs = &g_array_index (stored->ledger, PgLedgerEntry, i);
      const PgLedgerEntry *mine = pg_client_state_ledger_lookup (merged, theirs->uid);

      if (mine == NULL
          && (base == NULL || base->ledger_kind != merged->ledger_kind
              || pg_client_state_ledger_lookup (base, theirs->uid) == NULL))
        pg_client_state_ledger_set (merged, theirs);
      else if (mine != NULL && memcmp (mine, theirs, sizeof *mine) != 0
               && memcmp (mine->id, theirs->id, PG_LEDGER_ID_LEN) == 0)
        pg_client_state_ledger_set (merged, theirs);
    }
}
