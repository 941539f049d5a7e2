/* popgate — the live session registry (see pg-status.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-status.h"

#include <string.h>

typedef struct
{
  guint64 id;
  gint64 started_us;
  PgMetricsFrontend frontend; /* from the first description */
  PgStatusFillFunc fill;
  gpointer owner; /* unowned: the session, which unregisters before it goes */
  GList link;     /* in pg_status_order; data = the entry */
} PgStatusEntry;

static GHashTable *pg_status_sessions = NULL; /* guint64* id → PgStatusEntry* (owned) */
static GQueue pg_status_order = G_QUEUE_INIT; /* oldest first */
static PgStatusObserver pg_status_observer = NULL;
static gpointer pg_status_observer_data = NULL;

static void
pg_status_entry_describe (PgStatusEntry *entry, PgStatusInfo *info)
{
  memset (info, 0, sizeof *info);
  info->id = entry->id;
  info->started_us = entry->started_us;
  entry->fill (entry->owner, info);
  info->id = entry->id;
  info->started_us = entry->started_us;
}

static void
pg_status_notify (PgStatusEvent event, PgStatusEntry *entry)
{
  PgStatusInfo info;

  if (pg_status_observer == NULL)
    return;
  pg_status_entry_describe (entry, &info);
  pg_status_observer (event, entry->id, &info, NULL, pg_status_observer_data);
}

void
pg_status_session_update (guint64 sid, PgStatusFillFunc fill, gpointer owner)
{
  PgStatusEntry *entry;

  if (pg_status_sessions == NULL)
    pg_status_sessions = g_hash_table_new_full (g_int64_hash, g_int64_equal, NULL, g_free);
  entry = g_hash_table_lookup (pg_status_sessions, &sid);
  if (fill == NULL)
    {
      if (entry == NULL)
        return;
      pg_status_notify (PG_STATUS_EVENT_END, entry);
      g_queue_unlink (&pg_status_order, &entry->link);
      g_hash_table_remove (pg_status_sessions, &sid);
      return;
    }
  if (entry != NULL)
    {
      entry->fill = fill;
      entry->owner = owner;
      pg_status_notify (PG_STATUS_EVENT_CHANGE, entry);
      return;
    }
  entry = g_new0 (PgStatusEntry, 1);
  entry->id = sid;
  entry->started_us = g_get_real_time ();
  entry->fill = fill;
  entry->owner = owner;
  entry->link.data = entry;
  g_hash_table_insert (pg_status_sessions, &entry->id, entry);
  g_queue_push_tail_link (&pg_status_order, &entry->link);
  pg_status_notify (PG_STATUS_EVENT_START, entry);
}

gboolean
pg_status_session_get (guint64 sid, PgStatusInfo *out_info)
{
  PgStatusEntry *entry
      = pg_status_sessions != NULL ? g_hash_table_lookup (pg_status_sessions, &sid) : NULL;

  if (entry == NULL)
    return FALSE;
  pg_status_entry_describe (entry, out_info);
  return TRUE;
}

void
pg_status_foreach (PgStatusInfoFunc func, gpointer user_data)
{
  for (GList *l = pg_status_order.head; l != NULL; l = l->next)
    {
      PgStatusInfo info;

      pg_status_entry_describe (l->data, &info);
      func (&info, user_data);
    }
}

guint
pg_status_get_n_sessions (void)
{
  return pg_status_order.length;
}

void
pg_status_set_observer (PgStatusObserver observer, gpointer user_data)
{
  pg_status_observer = observer;
  pg_status_observer_data = user_data;
}

gboolean
pg_status_is_observed (void)
{
  return pg_status_observer != NULL;
}

void
pg_status_trace (guint64 sid, const char *line)
{
  /* Only for live sessions: a line after the end (an upstream LOGOUT finishing) would
   * otherwise make the observer keep a ring nobody removes. */
  if (pg_status_observer != NULL && pg_status_sessions != NULL
      && g_hash_table_contains (pg_status_sessions, &sid))
    pg_status_observer (PG_STATUS_EVENT_TRACE, sid, NULL, line, pg_status_observer_data);
}

void
pg_status_shutdown (void)
{
  g_queue_init (&pg_status_order);
  g_clear_pointer (&pg_status_sessions, g_hash_table_unref);
}
