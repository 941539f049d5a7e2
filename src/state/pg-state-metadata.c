/* The imap-metadata backend: the encoded state as a private METADATA entry (RFC 5464) on
 * the mailbox, "/private/vendor/popgate/<tag>", through the session's own upstream.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-state-private.h"

#include "popgate/pg-core.h"

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

void
pg_state_metadata_load (GTask *task, PgUpstream *upstream, const PgStateKey *key,
                        guint32 uidvalidity)
{
  g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                           "the imap-metadata state backend is not built yet");
}

void
pg_state_metadata_save (GTask *task, PgUpstream *upstream, const PgStateKey *key, GBytes *bytes)
{
  g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                           "the imap-metadata state backend is not built yet");
}
