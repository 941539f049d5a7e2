/* popgate — the POP3 maildrop on one upstream IMAP connection.
 *
 * The login path (src/login/) connects and logs in (ID + LOGIN pipelined); open is SELECT
 * + UID FETCH 1:* (UID RFC822.SIZE) (pipelined): three round trips to a usable maildrop. Only UID
 * commands touch messages; plain EXPUNGE is never sent.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-pop3-maildrop.h"

#include "popgate/pg-core.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-state.h"
#include "popgate/pg-upstream.h"

#include <string.h>

struct _PgPop3Maildrop
{
  PgConfig *config;                        /* owned */
  const PgUpstreamConfig *upstream_config; /* unowned: config's; its mailbox is POP3's */
  guint64 sid;
  PgUpstream *upstream;     /* owned */
  GArray *messages;         /* owned, of PgPop3Message; NULL once sealed */
  PgPop3Snapshot *snapshot; /* owned: the sealed snapshot; NULL before */
  GArray *dates;            /* owned, of gint64 INTERNALDATE per message; NULL when not fetched */
  GHashTable *big_sizes;    /* owned, UID → guint64* for sizes of G_MAXUINT32 and more; or NULL */
  guint32 uidvalidity;
  guint32 uidnext;
  guint32 exists;    /* SELECT's EXISTS */
  gboolean complete; /* see pg_pop3_maildrop_snapshot_is_complete() */
  PgLedgerKind ledger_kind;
  GArray *identities; /* owned, of PgLedgerEntry (uid and id): what the snapshot and
                       * identify() found; sorted by get_identities() */
};

/* --- the sealed snapshot ------------------------------------------------------------ */

struct _PgPop3Snapshot
{
  guint n;      /* messages */
  guint n_runs; /* 0: uids follow the sizes as a plain array */
  /* n sizes; then n UIDs, or n_runs pairs (first index, first UID), ascending */
  guint32 data[];
};

/* n sizes, then n UIDs or n_runs (first index, first UID) pairs. */
static gsize
pg_pop3_snapshot_alloc_size (guint n, guint n_runs)
{
  return sizeof (PgPop3Snapshot)
         + sizeof (guint32) * ((gsize) n + (n_runs > 0 ? (gsize) n_runs * 2 : n));
}

PgPop3Snapshot *
pg_pop3_snapshot_new (const PgPop3Message *messages, guint n)
{
  PgPop3Snapshot *snapshot;
  guint n_runs = 0;
  guint32 *out;

  for (guint i = 0; i < n; i++)
    if (i == 0 || messages[i].uid != messages[i - 1].uid + 1)
      n_runs++;
  /* A run takes two words, a plain UID one: runs only where they are fewer than n / 2. */
  if ((gsize) n_runs * 2 >= n)
    n_runs = 0;
  snapshot = g_malloc (pg_pop3_snapshot_alloc_size (n, n_runs));
  snapshot->n = n;
  snapshot->n_runs = n_runs;
  for (guint i = 0; i < n; i++)
    snapshot->data[i] = messages[i].size;
  out = snapshot->data + n;
  for (guint i = 0; i < n; i++)
    {
      if (n_runs == 0)
        *out++ = messages[i].uid;
      else if (i == 0 || messages[i].uid != messages[i - 1].uid + 1)
        {
          *out++ = i;
          *out++ = messages[i].uid;
        }
    }
  return snapshot;
}

void
pg_pop3_snapshot_free (PgPop3Snapshot *snapshot)
{
  g_free (snapshot);
}

guint
pg_pop3_snapshot_count (const PgPop3Snapshot *snapshot)
{
  return snapshot->n;
}

guint32
pg_pop3_snapshot_uid (const PgPop3Snapshot *snapshot, guint index)
{
  const guint32 *runs = snapshot->data + snapshot->n;
  guint lo = 0;
  guint hi = snapshot->n_runs;

  g_return_val_if_fail (index < snapshot->n, 0);
  if (snapshot->n_runs == 0)
    return runs[index];
  /* The last run that starts at or before index (the first starts at 0). */
  while (hi - lo > 1)
    {
      guint mid = lo + (hi - lo) / 2;

      if (runs[2 * mid] <= index)
        lo = mid;
      else
        hi = mid;
    }
  return runs[2 * lo + 1] + (index - runs[2 * lo]);
}

guint32
pg_pop3_snapshot_size (const PgPop3Snapshot *snapshot, guint index)
{
  g_return_val_if_fail (index < snapshot->n, 0);
  return snapshot->data[index];
}

void
pg_pop3_snapshot_set_size (PgPop3Snapshot *snapshot, guint index, guint32 size)
{
  g_return_if_fail (index < snapshot->n);
  snapshot->data[index] = size;
}

guint
pg_pop3_snapshot_n_runs (const PgPop3Snapshot *snapshot)
{
  return snapshot->n_runs;
}

gsize
pg_pop3_snapshot_bytes (const PgPop3Snapshot *snapshot)
{
  return pg_pop3_snapshot_alloc_size (snapshot->n, snapshot->n_runs);
}

/* --- the maildrop ------------------------------------------------------------------- */

PgPop3Maildrop *
pg_pop3_maildrop_new (PgConfig *config, const PgUpstreamConfig *upstream, guint64 session_id)
{
  PgPop3Maildrop *maildrop = g_new0 (PgPop3Maildrop, 1);

  maildrop->config = pg_config_ref (config);
  maildrop->upstream_config = upstream != NULL ? upstream : &config->upstream;
  maildrop->sid = session_id;
  maildrop->messages = g_array_new (FALSE, FALSE, sizeof (PgPop3Message));
  maildrop->identities = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));
  return maildrop;
}

void
pg_pop3_maildrop_free (PgPop3Maildrop *maildrop)
{
  if (maildrop == NULL)
    return;
  pg_pop3_maildrop_close (maildrop);
  g_clear_pointer (&maildrop->messages, g_array_unref);
  g_clear_pointer (&maildrop->snapshot, pg_pop3_snapshot_free);
  g_array_unref (maildrop->identities);
  g_clear_pointer (&maildrop->dates, g_array_unref);
  g_clear_pointer (&maildrop->big_sizes, g_hash_table_unref);
  pg_config_unref (maildrop->config);
  g_free (maildrop);
}

GArray *
pg_pop3_maildrop_get_messages (PgPop3Maildrop *maildrop)
{
  return maildrop->messages;
}

guint32
pg_pop3_maildrop_get_uidvalidity (PgPop3Maildrop *maildrop)
{
  return maildrop->uidvalidity;
}

guint32
pg_pop3_maildrop_get_uidnext (PgPop3Maildrop *maildrop)
{
  return maildrop->uidnext;
}

gboolean
pg_pop3_maildrop_snapshot_is_complete (PgPop3Maildrop *maildrop)
{
  return maildrop->complete;
}

PgUpstream *
pg_pop3_maildrop_get_upstream (PgPop3Maildrop *maildrop)
{
  return maildrop->upstream;
}

gboolean
pg_pop3_maildrop_has_capability (PgPop3Maildrop *maildrop, const char *capability)
{
  return maildrop->upstream != NULL && pg_upstream_has_capability (maildrop->upstream, capability);
}

void
pg_pop3_maildrop_filter (PgPop3Maildrop *maildrop, PgPop3KeepFunc keep, gpointer user_data)
{
  guint kept = 0;

  for (guint i = 0; i < maildrop->messages->len; i++)
    {
      const PgPop3Message *msg = &g_array_index (maildrop->messages, PgPop3Message, i);
      gint64 date = maildrop->dates != NULL ? g_array_index (maildrop->dates, gint64, i)
                                            : PG_UPSTREAM_NO_DATE;
      if (!keep (msg, date, user_data))
        continue;
      if (kept != i)
        {
          g_array_index (maildrop->messages, PgPop3Message, kept) = *msg;
          if (maildrop->dates != NULL)
            g_array_index (maildrop->dates, gint64, kept) = date;
        }
      kept++;
    }
  g_array_set_size (maildrop->messages, kept);
  if (maildrop->dates != NULL)
    g_array_set_size (maildrop->dates, kept);
}

/* --- open ----------------------------------------------------------------------------- */

typedef struct
{
  PgPop3Maildrop *maildrop; /* unowned: the session keeps it alive until we complete */
  guint pending;            /* pipelined operations still to complete */
  GError *error;            /* owned: the first failure of a pipelined step */
} PgOpenData;

static void
pg_open_data_free (PgOpenData *data)
{
  g_clear_error (&data->error);
  g_free (data);
}

static void
pg_pop3_maildrop_keep_error (PgOpenData *data, GError *error)
{
  if (data->error == NULL)
    data->error = error;
  else
    g_error_free (error);
}

/* The 32-bit size to store for uid; a larger one goes aside into big_sizes. */
static guint32
pg_pop3_maildrop_keep_size (PgPop3Maildrop *maildrop, guint32 uid, guint64 size)
{
  if (size >= G_MAXUINT32)
    {
      guint64 *big = g_new (guint64, 1);

      *big = size;
      if (maildrop->big_sizes == NULL)
        maildrop->big_sizes = g_hash_table_new_full (g_direct_hash, g_direct_equal, NULL, g_free);
      g_hash_table_replace (maildrop->big_sizes, GUINT_TO_POINTER (uid), big);
    }
  else if (maildrop->big_sizes != NULL)
    g_hash_table_remove (maildrop->big_sizes, GUINT_TO_POINTER (uid));
  return (guint32) MIN (size, G_MAXUINT32);
}

static void
pg_pop3_maildrop_add (PgPop3Maildrop *maildrop, guint32 uid, guint64 size)
{
  PgPop3Message msg = { .uid = uid };

  msg.size = pg_pop3_maildrop_keep_size (maildrop, uid, size);
  g_array_append_val (maildrop->messages, msg);
}

void
pg_pop3_maildrop_seal (PgPop3Maildrop *maildrop)
{
  g_return_if_fail (maildrop->snapshot == NULL);
  maildrop->snapshot = pg_pop3_snapshot_new (
      (const PgPop3Message *) (gpointer) maildrop->messages->data, maildrop->messages->len);
  g_clear_pointer (&maildrop->messages, g_array_unref);
  /* Only the filter needed them. */
  g_clear_pointer (&maildrop->dates, g_array_unref);
}

/* msg's size, with a size of G_MAXUINT32 and more found aside by UID. */
static guint64
pg_pop3_maildrop_message_size (PgPop3Maildrop *maildrop, const PgPop3Message *msg)
{
  const guint64 *big;

  if (msg->size < G_MAXUINT32 || maildrop->big_sizes == NULL)
    return msg->size;
  big = g_hash_table_lookup (maildrop->big_sizes, GUINT_TO_POINTER (msg->uid));
  return big != NULL ? *big : msg->size;
}

guint
pg_pop3_maildrop_count (PgPop3Maildrop *maildrop)
{
  return maildrop->snapshot != NULL ? pg_pop3_snapshot_count (maildrop->snapshot)
                                    : maildrop->messages->len;
}

guint32
pg_pop3_maildrop_uid (PgPop3Maildrop *maildrop, guint index)
{
  if (maildrop->snapshot != NULL)
    return pg_pop3_snapshot_uid (maildrop->snapshot, index);
  g_return_val_if_fail (index < maildrop->messages->len, 0);
  return g_array_index (maildrop->messages, PgPop3Message, index).uid;
}

guint64
pg_pop3_maildrop_size (PgPop3Maildrop *maildrop, guint index)
{
  PgPop3Message msg = { 0 };

  if (maildrop->snapshot != NULL)
    msg.size = pg_pop3_snapshot_size (maildrop->snapshot, index);
  else
    {
      g_return_val_if_fail (index < maildrop->messages->len, 0);
      msg.size = g_array_index (maildrop->messages, PgPop3Message, index).size;
    }
  if (msg.size == G_MAXUINT32)
    msg.uid = pg_pop3_maildrop_uid (maildrop, index); /* the big sizes go by UID */
  return pg_pop3_maildrop_message_size (maildrop, &msg);
}

void
pg_pop3_maildrop_set_size (PgPop3Maildrop *maildrop, guint index, guint64 size)
{
  guint32 kept
      = pg_pop3_maildrop_keep_size (maildrop, pg_pop3_maildrop_uid (maildrop, index), size);

  if (maildrop->snapshot != NULL)
    pg_pop3_snapshot_set_size (maildrop->snapshot, index, kept);
  else
    g_array_index (maildrop->messages, PgPop3Message, index).size = kept;
}

/* The ledger identity of a snapshot or identify() entry (a zero id: none, e.g. no
 * Message-ID). */
static void
pg_pop3_maildrop_add_identity (PgPop3Maildrop *maildrop, const PgUpstreamSnapshotEntry *entry)
{
  PgLedgerEntry ledger = { .uid = entry->uid };

  switch (maildrop->ledger_kind)
    {
    case PG_LEDGER_KIND_NONE:
    case PG_LEDGER_KIND_COUNT:
      return;
    case PG_LEDGER_KIND_EMAILID:
    case PG_LEDGER_KIND_X_GM_MSGID:
      if (entry->object_id != NULL)
        pg_ledger_identity (maildrop->ledger_kind, entry->object_id, entry->object_id_len,
                            ledger.id);
      break;
    case PG_LEDGER_KIND_DIGEST:
      if (entry->header == NULL)
        return; /* not asked for (the snapshot itself) */
      (void) pg_ledger_digest (entry->header, entry->header_len, entry->size, ledger.id);
      break;
    }
  g_array_append_val (maildrop->identities, ledger);
}

static void
pg_pop3_maildrop_snapshot_cb (const PgUpstreamSnapshotEntry *entry, gpointer user_data)
{
  PgPop3Maildrop *maildrop = user_data;

  pg_pop3_maildrop_add (maildrop, entry->uid, entry->size);
  if (maildrop->dates != NULL)
    g_array_append_val (maildrop->dates, entry->internaldate);
  pg_pop3_maildrop_add_identity (maildrop, entry);
}

/* [pop3] uidl_ledger against what the server offers. */
static PgLedgerKind
pg_pop3_maildrop_choose_ledger (PgPop3Maildrop *maildrop)
{
  switch (maildrop->config->pop3.uidl_ledger)
    {
    case PG_UIDL_LEDGER_OFF:
      return PG_LEDGER_KIND_NONE;
    case PG_UIDL_LEDGER_DIGEST:
      return PG_LEDGER_KIND_DIGEST;
    case PG_UIDL_LEDGER_AUTO:
      break;
    }
  if (pg_upstream_has_capability (maildrop->upstream, "OBJECTID"))
    return PG_LEDGER_KIND_EMAILID;
  if (pg_upstream_has_capability (maildrop->upstream, "X-GM-EXT-1"))
    return PG_LEDGER_KIND_X_GM_MSGID;
  return PG_LEDGER_KIND_DIGEST;
}

static void
pg_pop3_maildrop_open_step_done (GTask *task)
{
  PgOpenData *data = g_task_get_task_data (task);

  if (--data->pending > 0)
    return;
  if (data->error != NULL)
    g_task_return_error (task, g_steal_pointer (&data->error));
  else
    g_task_return_boolean (task, TRUE);
  g_object_unref (task);
}

static void
pg_pop3_maildrop_sizes_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgOpenData *data = g_task_get_task_data (task);
  GError *error = NULL;

  if (!pg_upstream_fetch_sizes_finish (PG_UPSTREAM (source), result, &error))
    pg_pop3_maildrop_keep_error (data, error);
  pg_pop3_maildrop_open_step_done (task);
}

static gint
pg_pop3_message_compare (gconstpointer a, gconstpointer b)
{
  guint32 x = ((const PgPop3Message *) a)->uid;
  guint32 y = ((const PgPop3Message *) b)->uid;
  return x < y ? -1 : x > y ? 1 : 0;
}

typedef struct
{
  PgPop3Message msg;
  gint64 date;
} PgPop3DatedMessage;

static gint
pg_pop3_dated_message_compare (gconstpointer a, gconstpointer b)
{
  return pg_pop3_message_compare (&((const PgPop3DatedMessage *) a)->msg,
                                  &((const PgPop3DatedMessage *) b)->msg);
}

/* Message numbers go by UID. Servers answer in sequence order, which is UID order, so
 * this rarely moves anything; dates, when fetched, move with their messages. */
static void
pg_pop3_maildrop_sort (PgPop3Maildrop *maildrop)
{
  GArray *messages = maildrop->messages;
  g_autofree PgPop3DatedMessage *pairs = NULL;
  gboolean sorted = TRUE;

  for (guint i = 1; i < messages->len && sorted; i++)
    sorted = g_array_index (messages, PgPop3Message, i - 1).uid
             < g_array_index (messages, PgPop3Message, i).uid;
  if (sorted)
    return;
  if (maildrop->dates == NULL)
    {
      g_array_sort (messages, pg_pop3_message_compare);
      return;
    }
  pairs = g_new (PgPop3DatedMessage, messages->len);
  for (guint i = 0; i < messages->len; i++)
    {
      pairs[i].msg = g_array_index (messages, PgPop3Message, i);
      pairs[i].date = g_array_index (maildrop->dates, gint64, i);
    }
  qsort (pairs, messages->len, sizeof *pairs, pg_pop3_dated_message_compare);
  for (guint i = 0; i < messages->len; i++)
    {
      g_array_index (messages, PgPop3Message, i) = pairs[i].msg;
      g_array_index (maildrop->dates, gint64, i) = pairs[i].date;
    }
}

/* A UID twice in the snapshot (a broken server) would be two messages with one UIDL: keep
 * the first of each (the array is sorted by UID) and say so once. FALSE if there were. */
static gboolean
pg_pop3_maildrop_drop_duplicates (PgPop3Maildrop *maildrop)
{
  GArray *messages = maildrop->messages;
  guint kept = 0;

  for (guint i = 0; i < messages->len; i++)
    {
      if (kept > 0
          && g_array_index (messages, PgPop3Message, i).uid
                 == g_array_index (messages, PgPop3Message, kept - 1).uid)
        continue;
      if (kept != i)
        {
          g_array_index (messages, PgPop3Message, kept)
              = g_array_index (messages, PgPop3Message, i);
          if (maildrop->dates != NULL)
            g_array_index (maildrop->dates, gint64, kept)
                = g_array_index (maildrop->dates, gint64, i);
        }
      kept++;
    }
  if (kept == messages->len)
    return TRUE;
  pg_session_warning (maildrop->sid,
                      "upstream snapshot listed %u UIDs more than once; each is "
                      "kept once",
                      messages->len - kept);
  g_array_set_size (messages, kept);
  if (maildrop->dates != NULL)
    g_array_set_size (maildrop->dates, kept);
  return FALSE;
}

static void
pg_pop3_maildrop_select_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgOpenData *data = g_task_get_task_data (task);
  PgPop3Maildrop *maildrop = data->maildrop;
  PgUpstreamMailbox mailbox = { 0 };
  GError *error = NULL;

  if (!pg_upstream_select_finish (PG_UPSTREAM (source), result, &mailbox, &error))
    pg_pop3_maildrop_keep_error (data, error);
  else
    {
      maildrop->uidvalidity = mailbox.uidvalidity;
      maildrop->uidnext = mailbox.uidnext;
      maildrop->exists = mailbox.exists;
    }
  pg_pop3_maildrop_open_step_done (task);
}

void
pg_pop3_maildrop_open_async (PgPop3Maildrop *maildrop, PgUpstream *upstream,
                             GCancellable *cancellable, GAsyncReadyCallback callback,
                             gpointer user_data)
{
  GTask *task = g_task_new (NULL, cancellable, callback, user_data);
  PgOpenData *data = g_new0 (PgOpenData, 1);

  g_task_set_source_tag (task, pg_pop3_maildrop_open_async);
  g_task_set_task_data (task, data, (GDestroyNotify) pg_open_data_free);
  data->maildrop = maildrop;
  g_clear_object (&maildrop->upstream);
  g_clear_pointer (&maildrop->snapshot, pg_pop3_snapshot_free);
  if (maildrop->messages == NULL)
    maildrop->messages = g_array_new (FALSE, FALSE, sizeof (PgPop3Message));
  g_array_set_size (maildrop->messages, 0);
  g_clear_pointer (&maildrop->dates, g_array_unref);
  g_clear_pointer (&maildrop->big_sizes, g_hash_table_unref);
  maildrop->upstream = g_object_ref (upstream);
  /* SELECT and the snapshot FETCH go out together. The snapshot arrives in sequence
   * order, which is UID order; sorting keeps that true whatever the server does. */
  data->pending = 2;
  /* ... in one write (pg_upstream_cork), not one each. */
  pg_upstream_cork (upstream);
  pg_upstream_select_async (maildrop->upstream, maildrop->upstream_config->mailbox, FALSE,
                            cancellable, pg_pop3_maildrop_select_cb, task);
  /* INTERNALDATE only when recent_days needs it; the server's own message ids when the
   * ledger uses them (they cost it nothing: they are in its index). */
  if (maildrop->config->pop3.recent_days > 0)
    maildrop->dates = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_array_set_size (maildrop->identities, 0);
  maildrop->ledger_kind = pg_pop3_maildrop_choose_ledger (maildrop);
  pg_upstream_fetch_snapshot_async (
      maildrop->upstream, "1:*", maildrop->config->pop3.recent_days > 0,
      maildrop->ledger_kind == PG_LEDGER_KIND_EMAILID      ? PG_UPSTREAM_IDS_EMAILID
      : maildrop->ledger_kind == PG_LEDGER_KIND_X_GM_MSGID ? PG_UPSTREAM_IDS_X_GM_MSGID
                                                           : PG_UPSTREAM_IDS_NONE,
      pg_pop3_maildrop_snapshot_cb, maildrop, cancellable, pg_pop3_maildrop_sizes_cb, task);
  pg_upstream_uncork (upstream);
}

PgLedgerKind
pg_pop3_maildrop_get_ledger_kind (PgPop3Maildrop *maildrop)
{
  return maildrop->ledger_kind;
}

static gint
pg_pop3_identity_compare (gconstpointer a, gconstpointer b)
{
  guint32 x = ((const PgLedgerEntry *) a)->uid;
  guint32 y = ((const PgLedgerEntry *) b)->uid;
  return x < y ? -1 : x > y ? 1 : 0;
}

GArray *
pg_pop3_maildrop_get_identities (PgPop3Maildrop *maildrop)
{
  GArray *ids = maildrop->identities;
  guint kept = 0;

  g_array_sort (ids, pg_pop3_identity_compare);
  for (guint i = 0; i < ids->len; i++)
    if (kept == 0
        || g_array_index (ids, PgLedgerEntry, i).uid
               != g_array_index (ids, PgLedgerEntry, kept - 1).uid)
      g_array_index (ids, PgLedgerEntry, kept++) = g_array_index (ids, PgLedgerEntry, i);
  g_array_set_size (ids, kept);
  return ids;
}

void
pg_pop3_maildrop_clear_identities (PgPop3Maildrop *maildrop)
{
  g_array_set_size (maildrop->identities, 0);
  /* A session lives on for long: its memory should not keep the login's 24 octets per
   * message. */
  g_clear_pointer (&maildrop->identities, g_array_unref);
  maildrop->identities = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));
}

static void
pg_pop3_maildrop_identify_entry_cb (const PgUpstreamSnapshotEntry *entry, gpointer user_data)
{
  pg_pop3_maildrop_add_identity (user_data, entry);
}

void
pg_pop3_maildrop_identify_async (PgPop3Maildrop *maildrop, const char *uid_set,
                                 GCancellable *cancellable, GAsyncReadyCallback callback,
                                 gpointer user_data)
{
  /* The upstream's own result goes to the caller: no task of ours in between. */
  pg_upstream_fetch_snapshot_async (maildrop->upstream, uid_set, FALSE, PG_UPSTREAM_IDS_HEADER,
                                    pg_pop3_maildrop_identify_entry_cb, maildrop, cancellable,
                                    callback, user_data);
}

gboolean
pg_pop3_maildrop_identify_finish (PgPop3Maildrop *maildrop, GAsyncResult *result, GError **error)
{
  return pg_upstream_fetch_sizes_finish (maildrop->upstream, result, error);
}

gboolean
pg_pop3_maildrop_open_finish (PgPop3Maildrop *maildrop, GAsyncResult *result, GError **error)
{
  if (!g_task_propagate_boolean (G_TASK (result), error))
    return FALSE;
  pg_pop3_maildrop_sort (maildrop);
  maildrop->complete
      = pg_pop3_maildrop_drop_duplicates (maildrop) && maildrop->uidnext != 0
        && maildrop->messages->len == maildrop->exists
        && (maildrop->messages->len == 0
            || g_array_index (maildrop->messages, PgPop3Message, maildrop->messages->len - 1).uid
                   < maildrop->uidnext);
  if (!maildrop->complete)
    pg_session_debug (maildrop->sid,
                      "snapshot not known complete (%u messages, EXISTS %u, "
                      "UIDNEXT %u): client state is not compacted",
                      maildrop->messages->len, maildrop->exists, maildrop->uidnext);
  return TRUE;
}

/* --- fetch ------------------------------------------------------------------------------ */

static const char *const pg_pop3_section_names[] = { "", "HEADER", "TEXT" };

/* The upstream's own task completes the caller's fetch (no second task per body): the
 * result is the upstream's, and finish() turns "vanished" into G_IO_ERROR_NOT_FOUND. */
void
pg_pop3_maildrop_fetch_async (PgPop3Maildrop *maildrop, guint32 uid, PgPop3Section section,
                              guint64 offset, guint64 length, PgPop3ChunkFunc chunk_func,
                              gpointer chunk_data, GCancellable *cancellable,
                              GAsyncReadyCallback callback, gpointer user_data)
{
  pg_upstream_fetch_body_async (maildrop->upstream, uid, pg_pop3_section_names[section], offset,
                                length, chunk_func, chunk_data, cancellable, callback, user_data);
}

gboolean
pg_pop3_maildrop_fetch_finish (PgPop3Maildrop *maildrop, GAsyncResult *result, GError **error)
{
  gboolean vanished = FALSE;

  if (!pg_upstream_fetch_body_finish (PG_UPSTREAM (g_task_get_source_object (G_TASK (result))),
                                      result, &vanished, error))
    return FALSE;
  if (vanished)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                           "the message no longer exists upstream");
      return FALSE;
    }
  return TRUE;
}

void
pg_pop3_maildrop_resume (PgPop3Maildrop *maildrop)
{
  if (maildrop->upstream != NULL)
    pg_upstream_resume (maildrop->upstream);
}

void
pg_pop3_maildrop_cork (PgPop3Maildrop *maildrop)
{
  if (maildrop->upstream != NULL)
    pg_upstream_cork (maildrop->upstream);
}

void
pg_pop3_maildrop_uncork (PgPop3Maildrop *maildrop)
{
  if (maildrop->upstream != NULL)
    pg_upstream_uncork (maildrop->upstream);
}

/* --- update (QUIT) ------------------------------------------------------------------------ */

typedef enum
{
  PG_UPDATE_SEEN,
  PG_UPDATE_FLAG_DELETED,
  PG_UPDATE_EXPUNGE,
  PG_UPDATE_MOVE,
  PG_UPDATE_DONE,
} PgUpdateStep;

typedef struct
{
  PgPop3Maildrop *maildrop; /* unowned */
  GArray *deleted;          /* owned */
  GArray *seen;             /* owned */
  PgDeletePolicy policy;
  gchar *move_mailbox; /* owned: PG_DELETE_MOVE's mailbox, else NULL */
  PgUpdateStep step;
  GString *problems;  /* owned: what was not applied */
  gboolean transient; /* a problem a retry may fix (connection, timeout, busy) */
  GArray *flagged;    /* owned, guint32: flagged \Deleted, still in the mailbox */
} PgUpdateData;

static void
pg_update_data_free (PgUpdateData *data)
{
  g_array_unref (data->deleted);
  g_array_unref (data->seen);
  g_free (data->move_mailbox);
  g_string_free (data->problems, TRUE);
  g_array_unref (data->flagged);
  g_free (data);
}

static void pg_pop3_maildrop_update_next (GTask *task);

static void pg_pop3_maildrop_update_problem (PgUpdateData *data, const char *format, ...)
    G_GNUC_PRINTF (2, 3);

static void
pg_pop3_maildrop_update_problem (PgUpdateData *data, const char *format, ...)
{
  va_list args;

  if (data->problems->len > 0)
    g_string_append (data->problems, "; ");
  va_start (args, format);
  g_string_append_vprintf (data->problems, format, args);
  va_end (args);
}

static void
pg_pop3_maildrop_update_step_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgUpdateData *data = g_task_get_task_data (task);
  PgPop3Maildrop *maildrop = data->maildrop;
  PgUpstream *upstream = PG_UPSTREAM (source);
  g_autoptr (GError) error = NULL;
  gboolean removed = TRUE;

  switch (data->step)
    {
    case PG_UPDATE_SEEN:
      if (!pg_upstream_add_flags_finish (upstream, result, &error))
        {
          pg_pop3_maildrop_update_problem (data, "%u retrieved messages not marked seen (%s)",
                                           data->seen->len, error->message);
          data->transient |= !pg_upstream_error_is_permanent (error);
        }
      data->step = PG_UPDATE_FLAG_DELETED;
      break;
    case PG_UPDATE_FLAG_DELETED:
      if (!pg_upstream_add_flags_finish (upstream, result, &error))
        {
          pg_pop3_maildrop_update_problem (data, "%u messages not deleted (%s)", data->deleted->len,
                                           error->message);
          data->transient |= !pg_upstream_error_is_permanent (error);
          pg_metrics_dele (PG_METRICS_DELE_FAILED, data->deleted->len);
          data->step = PG_UPDATE_DONE;
          break;
        }
      if (!pg_upstream_has_capability (upstream, "UIDPLUS"))
        {
          /* Never a plain EXPUNGE: it would also remove what an IMAP user flagged
           * \Deleted and meant to keep. The messages stay flagged (the session hides
           * them from this client for good): no retry changes that, so it is permanent. */
          g_array_append_vals (data->flagged, data->deleted->data, data->deleted->len);
          pg_session_warning (maildrop->sid,
                              "upstream lacks UIDPLUS: %u messages left "
                              "flagged \\Deleted, not expunged",
                              data->deleted->len);
          pg_pop3_maildrop_update_problem (data,
                                           "%u messages flagged \\Deleted but not "
                                           "expunged: the server lacks UIDPLUS",
                                           data->deleted->len);
          pg_metrics_dele (PG_METRICS_DELE_FAILED, data->deleted->len);
          data->step = PG_UPDATE_DONE;
          break;
        }
      data->step = PG_UPDATE_EXPUNGE;
      break;
    case PG_UPDATE_EXPUNGE:
      if (!pg_upstream_expunge_finish (upstream, result, &error))
        {
          pg_pop3_maildrop_update_problem (data,
                                           "%u messages flagged \\Deleted but not "
                                           "expunged (%s)",
                                           data->deleted->len, error->message);
          /* A refusal leaves them flagged for sure; a lost connection may or may not have
           * expunged them, and the pending record finishes them at the next login. */
          if (pg_upstream_error_is_permanent (error))
            g_array_append_vals (data->flagged, data->deleted->data, data->deleted->len);
          else
            data->transient = TRUE;
        }
      pg_metrics_dele (error == NULL ? PG_METRICS_DELE_EXPUNGED : PG_METRICS_DELE_FAILED,
                       data->deleted->len);
      data->step = PG_UPDATE_DONE;
      break;
    case PG_UPDATE_MOVE:
      if (!pg_upstream_move_finish (upstream, result, &removed, &error))
        {
          pg_pop3_maildrop_update_problem (data, "%u messages not moved to %s (%s)",
                                           data->deleted->len, data->move_mailbox, error->message);
          data->transient |= !pg_upstream_error_is_permanent (error);
        }
      else if (!removed)
        {
          g_array_append_vals (data->flagged, data->deleted->data, data->deleted->len);
          pg_session_warning (maildrop->sid,
                              "upstream lacks MOVE and UIDPLUS: %u messages "
                              "copied to %s and left flagged \\Deleted",
                              data->deleted->len, data->move_mailbox);
          pg_pop3_maildrop_update_problem (data,
                                           "%u messages copied to %s but left flagged "
                                           "\\Deleted: the server lacks UIDPLUS",
                                           data->deleted->len, data->move_mailbox);
        }
      pg_metrics_dele (error == NULL && removed ? PG_METRICS_DELE_MOVED : PG_METRICS_DELE_FAILED,
                       data->deleted->len);
      data->step = PG_UPDATE_DONE;
      break;
    case PG_UPDATE_DONE:
      g_assert_not_reached ();
    }
  pg_pop3_maildrop_update_next (task);
}

static void
pg_pop3_maildrop_update_next (GTask *task)
{
  PgUpdateData *data = g_task_get_task_data (task);
  PgUpstream *upstream = data->maildrop->upstream;
  GCancellable *cancellable = g_task_get_cancellable (task);

  for (;;)
    {
      switch (data->step)
        {
        case PG_UPDATE_SEEN:
          if (data->seen->len > 0)
            {
              pg_upstream_add_flags_async (upstream, (const guint32 *) data->seen->data,
                                           data->seen->len, "\\Seen", cancellable,
                                           pg_pop3_maildrop_update_step_cb, task);
              return;
            }
          data->step = PG_UPDATE_FLAG_DELETED;
          continue;
        case PG_UPDATE_FLAG_DELETED:
          if (data->deleted->len == 0 || data->policy == PG_DELETE_KEEP)
            {
              pg_metrics_dele (PG_METRICS_DELE_KEPT, data->deleted->len); /* 0 unless keep */
              data->step = PG_UPDATE_DONE;
              continue;
            }
          if (data->policy == PG_DELETE_MOVE)
            {
              data->step = PG_UPDATE_MOVE;
              pg_upstream_move_async (upstream, (const guint32 *) data->deleted->data,
                                      data->deleted->len, data->move_mailbox, cancellable,
                                      pg_pop3_maildrop_update_step_cb, task);
              return;
            }
          pg_upstream_add_flags_async (upstream, (const guint32 *) data->deleted->data,
                                       data->deleted->len, "\\Deleted", cancellable,
                                       pg_pop3_maildrop_update_step_cb, task);
          return;
        case PG_UPDATE_EXPUNGE:
          pg_upstream_expunge_async (upstream, (const guint32 *) data->deleted->data,
                                     data->deleted->len, cancellable,
                                     pg_pop3_maildrop_update_step_cb, task);
          return;
        case PG_UPDATE_MOVE:
          g_assert_not_reached ();
        case PG_UPDATE_DONE:
          if (data->problems->len > 0)
            g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM, "%s", data->problems->str);
          else
            g_task_return_boolean (task, TRUE);
          g_object_unref (task);
          return;
        }
    }
}

void
pg_pop3_maildrop_update_async (PgPop3Maildrop *maildrop, PgDeletePolicy policy,
                               const char *move_mailbox, GArray *deleted, GArray *seen,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data)
{
  GTask *task;
  PgUpdateData *data;

  g_return_if_fail (policy != PG_DELETE_MOVE || move_mailbox != NULL);
  task = g_task_new (NULL, cancellable, callback, user_data);
  data = g_new0 (PgUpdateData, 1);

  g_task_set_source_tag (task, pg_pop3_maildrop_update_async);
  data->maildrop = maildrop;
  data->deleted = g_array_ref (deleted);
  data->seen = g_array_ref (seen);
  data->policy = policy;
  data->move_mailbox = g_strdup (move_mailbox);
  data->problems = g_string_new (NULL);
  data->flagged = g_array_new (FALSE, FALSE, sizeof (guint32));
  data->step = PG_UPDATE_SEEN;
  g_task_set_task_data (task, data, (GDestroyNotify) pg_update_data_free);
  pg_pop3_maildrop_update_next (task);
}

gboolean
pg_pop3_maildrop_update_finish (PgPop3Maildrop *maildrop, GAsyncResult *result,
                                GArray **out_flagged, gboolean *out_permanent, GError **error)
{
  PgUpdateData *data = g_task_get_task_data (G_TASK (result));

  if (out_flagged != NULL)
    *out_flagged = g_array_ref (data->flagged);
  if (out_permanent != NULL)
    *out_permanent = data->problems->len > 0 && !data->transient;
  return g_task_propagate_boolean (G_TASK (result), error);
}

static void
pg_pop3_maildrop_copy_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  GError *error = NULL;

  if (!pg_upstream_copy_finish (PG_UPSTREAM (source), result, &error))
    g_task_return_error (task, error);
  else
    g_task_return_boolean (task, TRUE);
}

void
pg_pop3_maildrop_copy_async (PgPop3Maildrop *maildrop, GArray *uids, const char *mailbox,
                             GCancellable *cancellable, GAsyncReadyCallback callback,
                             gpointer user_data)
{
  GTask *task = g_task_new (NULL, cancellable, callback, user_data);

  g_task_set_source_tag (task, pg_pop3_maildrop_copy_async);
  pg_upstream_copy_async (maildrop->upstream, (const guint32 *) uids->data, uids->len, mailbox,
                          cancellable, pg_pop3_maildrop_copy_cb, task);
}

gboolean
pg_pop3_maildrop_copy_finish (PgPop3Maildrop *maildrop, GAsyncResult *result, GError **error)
{
  return g_task_propagate_boolean (G_TASK (result), error);
}

static void
pg_pop3_maildrop_logout_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgPop3Maildrop *maildrop = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;

  /* A failed LOGOUT after everything was applied changes nothing for the client. */
  if (!pg_upstream_logout_finish (PG_UPSTREAM (source), result, &error))
    pg_session_debug (maildrop->sid, "upstream LOGOUT: %s", error->message);
  g_task_return_boolean (task, TRUE);
}

void
pg_pop3_maildrop_logout_async (PgPop3Maildrop *maildrop, GCancellable *cancellable,
                               GAsyncReadyCallback callback, gpointer user_data)
{
  GTask *task = g_task_new (NULL, cancellable, callback, user_data);

  g_task_set_source_tag (task, pg_pop3_maildrop_logout_async);
  g_task_set_task_data (task, maildrop, NULL);
  pg_upstream_logout_async (maildrop->upstream, cancellable, pg_pop3_maildrop_logout_cb, task);
}

void
pg_pop3_maildrop_logout_finish (PgPop3Maildrop *maildrop, GAsyncResult *result)
{
  (void) g_task_propagate_boolean (G_TASK (result), NULL);
}

void
pg_pop3_maildrop_close (PgPop3Maildrop *maildrop)
{
  if (maildrop->upstream == NULL)
    return;
  if (!pg_upstream_is_closed (maildrop->upstream))
    pg_upstream_close (maildrop->upstream);
  g_clear_object (&maildrop->upstream);
}
