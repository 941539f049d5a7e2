/* The imap-metadata backend: the encoded state as a private METADATA entry (RFC 5464) on
 * the mailbox, "/private/vendor/popgate/<tag>", through the session's own upstream.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-state-private.h"

#include "popgate/pg-core.h"
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

static void
pg_state_metadata_get_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataOp *op = g_task_get_task_data (task);
  g_autoptr (GBytes) value = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *mailbox = NULL;
  g_autofree gchar *where = NULL;
  PgClientState *state;
  gsize len = 0;
  const void *data;

  if (!pg_upstream_get_metadata_finish (PG_UPSTREAM (source), result, &value, &error))
    {
      g_prefix_error (&error, "GETMETADATA %s: ", op->entry);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  if (g_task_return_error_if_cancelled (task))
    return;
  if (value == NULL)
    {
      g_task_return_pointer (task, pg_state_load_result_new (op->key, NULL, op->uidvalidity),
                             (GDestroyNotify) pg_state_load_result_free);
      return;
    }
  mailbox = pg_log_escape (op->key->mailbox, strlen (op->key->mailbox), 64);
  where = g_strdup_printf ("METADATA %s on mailbox %s", op->entry, mailbox);
  data = g_bytes_get_data (value, &len);
  state = pg_state_decode_for_key (data, len, where, op->key, &error);
  if (state == NULL)
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
  pg_upstream_get_metadata_async (upstream, key->mailbox, op->entry, g_task_get_cancellable (task),
                                  pg_state_metadata_get_cb, g_object_ref (task));
}

static void
pg_state_metadata_set_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgStateMetadataOp *op = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;

  if (!pg_upstream_set_metadata_finish (PG_UPSTREAM (source), result, &error))
    {
      g_prefix_error (&error, "SETMETADATA %s: ", op->entry);
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
