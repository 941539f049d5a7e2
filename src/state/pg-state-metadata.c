/* The imap-metadata backend: the encoded state as a private METADATA entry (RFC 5464) on
 * the mailbox, "/private/vendor/popgate/<tag>", through the session's own upstream.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-state-private.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-upstream.h"

#include <string.h>

#define PG_STATE_METADATA_PREFIX "/private/vendor/popgate/"

static gboolean
pg_state_metadata_tag_is_plain (const char *tag)
{
  if (*tag == '\0')
    return FALSE;
  for (const char *p = tag; *p != '\0'; p++)
    if (!(g_ascii_islower (*p) || g_ascii_isdigit (*p) || *p == '.' || *p == '_' || *p == '-'))
      return FALSE;
  return TRUE;
}

gchar *
pg_state_metadata_entry (const char *tag)
{
  GString *entry = g_string_new (PG_STATE_METADATA_PREFIX);

  if (pg_state_metadata_tag_is_plain (tag))
    g_string_append (entry, tag);
  else
    {
      /* "=" starts no plain tag, so the two forms cannot collide; "=" alone is "". */
      g_string_append_c (entry, '=');
      for (const guchar *p = (const guchar *) tag; *p != '\0'; p++)
        g_string_append_printf (entry, "%02x", *p);
    }
  return g_string_free (entry, FALSE);
}

typedef struct
{
  PgUpstream *upstream; /* owned */
  PgStateKey *key;      /* owned */
  gchar *entry;         /* owned */
  guint32 uidvalidity;
} PgStateMetadataOp;

/* Name the entry after the message, not before it: an upstream refusal must keep its
 * "upstream refused ..." start, which is how pg_upstream_error_is_permanent() tells a
 * refusal that a retry will not fix ([SYS/PERM] at QUIT) from a transient failure. */
static void
pg_state_metadata_name_entry (GError *error, const char *what, const char *entry)
{
  gchar *old = error->message;

  error->message = g_strdup_printf ("%s (%s %s)", old, what, entry);
  g_free (old);
}

static void
pg_state_metadata_op_free (PgStateMetadataOp *op)
{
  g_clear_object (&op->upstream);
  pg_state_key_free (op->key);
  g_free (op->entry);
  g_free (op);
}

/* Every refusal is an upstream error that says which backend needs what. */
static gboolean
pg_state_metadata_check (GTask *task, PgUpstream *upstream)
{
  if (upstream == NULL || !pg_upstream_is_authenticated (upstream))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "[state] backend = imap-metadata needs a logged-in upstream");
      return FALSE;
    }
  /* METADATA-SERVER alone only covers server annotations; entries on a mailbox need
   * METADATA (RFC 5464 §1). */
  if (!pg_upstream_has_capability (upstream, "METADATA"))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "the upstream server does not support METADATA (RFC 5464), "
                               "which [state] backend = imap-metadata needs; use the file "
                               "backend or enable METADATA on the server");
      return FALSE;
    }
  return TRUE;
}

static PgStateMetadataOp *
pg_state_metadata_op_new (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                          guint32 uidvalidity)
{
  PgStateMetadataOp *op = g_new0 (PgStateMetadataOp, 1);

  op->upstream = g_object_ref (upstream);
  op->key = pg_state_key_copy (key);
  op->entry = pg_state_metadata_entry (key->tag);
  op->uidvalidity = uidvalidity;
  g_task_set_task_data (task, op, (GDestroyNotify) pg_state_metadata_op_free);
  return op;
}

/* Decode every entry of the tree for op->key. Entries of another UIDVALIDITY than
 * `uidvalidity` are left out of the union; if nothing is for it, one of them is returned
 * (the caller then sees UIDVALIDITY_CHANGED). NULL without error: nothing stored. */
static PgClientState *
pg_state_metadata_fold_tree (PgStateMetadataOp *op, GHashTable *tree, guint32 uidvalidity,
                             GError **error)
{
  g_autofree gchar *mailbox = pg_log_escape (op->key->mailbox, strlen (op->key->mailbox), 64);
  g_autoptr (PgClientState) acc = NULL;
  g_autoptr (PgClientState) other = NULL;
  GHashTableIter iter;
  gpointer name;
  gpointer value;

  g_hash_table_iter_init (&iter, tree);
  while (g_hash_table_iter_next (&iter, &name, &value))
    {
      g_autofree gchar *escaped = pg_log_escape (name, strlen (name), 100);
      g_autofree gchar *where = g_strdup_printf ("METADATA %s on mailbox %s", escaped, mailbox);
      gsize len = 0;
      const void *data = g_bytes_get_data (value, &len);
      PgClientState *record = pg_state_decode_for_key (data, len, where, op->key, error);

      if (record == NULL)
        return NULL;
      if (record->uidvalidity != uidvalidity)
        {
          g_clear_pointer (&other, pg_client_state_free);
          other = record;
          continue;
        }
      pg_state_fold (&acc, record);
    }
  return acc != NULL ? g_steal_pointer (&acc) : g_steal_pointer (&other);
}

static void
pg_state_metadata_get_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataOp *op = g_task_get_task_data (task);
  g_autoptr (GHashTable) tree = NULL;
  g_autoptr (GError) error = NULL;
  PgClientState *state;

  tree = pg_upstream_get_metadata_tree_finish (PG_UPSTREAM (source), result, &error);
  if (tree == NULL)
    {
      pg_state_metadata_name_entry (error, "GETMETADATA", op->entry);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (g_task_return_error_if_cancelled (task))
    return;
  state = pg_state_metadata_fold_tree (op, tree, op->uidvalidity, &error);
  if (state == NULL && error != NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  g_task_return_pointer (task, pg_state_load_result_new (op->key, state, op->uidvalidity),
                         (GDestroyNotify) pg_state_load_result_free);
}

void
pg_state_metadata_load (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                        guint32 uidvalidity)
{
  PgStateMetadataOp *op;

  if (!pg_state_metadata_check (task, upstream))
    return;
  op = pg_state_metadata_op_new (task, upstream, key, uidvalidity);
  pg_upstream_get_metadata_tree_async (upstream, key->mailbox, op->entry,
                                       g_task_get_cancellable (task), pg_state_metadata_get_cb,
                                       g_object_ref (task));
}

static void
pg_state_metadata_set_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataOp *op = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;

  if (!pg_upstream_set_metadata_finish (PG_UPSTREAM (source), result, &error))
    {
      pg_state_metadata_name_entry (error, "SETMETADATA", op->entry);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  g_task_return_boolean (task, TRUE);
}

void
pg_state_metadata_save (GTask *task, PgUpstream *upstream, const PgStateKey *key, GBytes *bytes)
{
  PgStateMetadataOp *op;

  if (!pg_state_metadata_check (task, upstream))
    return;
  op = pg_state_metadata_op_new (task, upstream, key, 0);
  /* The server stores it before its tagged OK (RFC 5464 §4.3), so a completed save is as
   * durable as the server's own storage. */
  pg_upstream_set_metadata_async (upstream, key->mailbox, op->entry, bytes,
                                  g_task_get_cancellable (task), pg_state_metadata_set_cb,
                                  g_object_ref (task));
}

/* --- merged save (see pg_state_store_save_merge_async for the design) --- */

typedef struct
{
  PgStateMetadataOp *op; /* owned */
  PgClientState *base;   /* owned, may be NULL */
  PgClientState *ours;   /* owned */
  PgClientState *merged; /* owned: what the new entry holds */
  GPtrArray *subsumed;   /* owned, of gchar*: the entries read, removed after the write */
  guint removals;        /* SETMETADATA ... NIL still outstanding */
} PgStateMetadataMerge;

static void
pg_state_metadata_merge_free (PgStateMetadataMerge *merge)
{
  pg_state_metadata_op_free (merge->op);
  pg_client_state_free (merge->base);
  pg_client_state_free (merge->ours);
  pg_client_state_free (merge->merged);
  g_ptr_array_unref (merge->subsumed);
  g_free (merge);
}

static void
pg_state_metadata_merge_removed_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataMerge *merge = g_task_get_task_data (task);

  /* A removal that failed leaves an entry the next load folds in and the next save
   * removes: nothing is lost, so it does not fail the save. */
  (void) pg_upstream_set_metadata_finish (PG_UPSTREAM (source), result, NULL);
  if (--merge->removals == 0)
    g_task_return_pointer (task, g_steal_pointer (&merge->merged),
                           (GDestroyNotify) pg_client_state_free);
}

static void
pg_state_metadata_merge_written_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataMerge *merge = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;

  if (!pg_upstream_set_metadata_finish (PG_UPSTREAM (source), result, &error))
    {
      pg_state_metadata_name_entry (error, "SETMETADATA", merge->op->entry);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (merge->subsumed->len == 0)
    {
      g_task_return_pointer (task, g_steal_pointer (&merge->merged),
                             (GDestroyNotify) pg_client_state_free);
      return;
    }
  /* Only now, with the new entry stored, do the ones it subsumes go. */
  merge->removals = merge->subsumed->len;
  for (guint i = 0; i < merge->subsumed->len; i++)
    pg_upstream_set_metadata_async (merge->op->upstream, merge->op->key->mailbox,
                                    g_ptr_array_index (merge->subsumed, i), NULL, NULL,
                                    pg_state_metadata_merge_removed_cb, g_object_ref (task));
}

static void
pg_state_metadata_merge_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataMerge *merge = g_task_get_task_data (task);
  g_autoptr (GHashTable) tree = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgClientState) stored = NULL;
  g_autoptr (GBytes) bytes = NULL;
  g_autofree gchar *entry = NULL;
  GHashTableIter iter;
  gpointer name;

  tree = pg_upstream_get_metadata_tree_finish (PG_UPSTREAM (source), result, &error);
  if (tree == NULL)
    {
      pg_state_metadata_name_entry (error, "GETMETADATA", merge->op->entry);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  /* A record that does not decode is not overwritten or removed: left for the admin. */
  stored = pg_state_metadata_fold_tree (merge->op, tree, merge->ours->uidvalidity, &error);
  if (stored == NULL && error != NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  merge->merged = pg_client_state_merge (stored, merge->base, merge->ours);
  bytes = pg_client_state_encode (merge->merged, merge->op->key);
  if (g_bytes_get_size (bytes) > PG_STATE_MAX_ENCODED)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_LIMIT,
                               "merged state: %zu bytes encoded, more than %u",
                               g_bytes_get_size (bytes), (guint) PG_STATE_MAX_ENCODED);
      return;
    }
  g_hash_table_iter_init (&iter, tree);
  while (g_hash_table_iter_next (&iter, &name, NULL))
    g_ptr_array_add (merge->subsumed, g_strdup (name));
  /* 64 random bits: two saves picking one name is beyond any real chance. */
  entry = g_strdup_printf ("%s/%08x%08x", merge->op->entry, g_random_int (), g_random_int ());
  pg_upstream_set_metadata_async (merge->op->upstream, merge->op->key->mailbox, entry, bytes,
                                  g_task_get_cancellable (task), pg_state_metadata_merge_written_cb,
                                  g_object_ref (task));
}

void
pg_state_metadata_save_merge (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                              const PgClientState *base, const PgClientState *state)
{
  PgStateMetadataMerge *merge;

  if (!pg_state_metadata_check (task, upstream))
    return;
  merge = g_new0 (PgStateMetadataMerge, 1);
  merge->op = g_new0 (PgStateMetadataOp, 1);
  merge->op->upstream = g_object_ref (upstream);
  merge->op->key = pg_state_key_copy (key);
  merge->op->entry = pg_state_metadata_entry (key->tag);
  merge->base = base != NULL ? pg_client_state_copy (base) : NULL;
  merge->ours = pg_client_state_copy (state);
  merge->subsumed = g_ptr_array_new_with_free_func (g_free);
  g_task_set_task_data (task, merge, (GDestroyNotify) pg_state_metadata_merge_free);
  pg_upstream_get_metadata_tree_async (upstream, key->mailbox, merge->op->entry,
                                       g_task_get_cancellable (task),
                                       pg_state_metadata_merge_read_cb, g_object_ref (task));
}
