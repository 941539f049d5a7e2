/* popgate — codec: IMAP command writer (astring quoting, literals, UID sets).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-imap-writer.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <stdlib.h>
#include <string.h>

struct _PgImapWriter
{
  GString *line;    /* owned: text since the last literal */
  GPtrArray *parts; /* owned, of PgImapWriterPart* */
  gsize max_nonsync;
  gboolean next_waits; /* the next part follows a synchronising literal header */
  gboolean no_space;   /* just after "(": the next item gets no SP */
};

/* Longest "n:m" of two 32-bit UIDs. */
#define PG_IMAP_WRITER_MAX_RANGE 21

static void
pg_imap_writer_wipe_free_cb (gpointer data)
{
  GBytes *bytes = data;
  gsize size = 0;
  gconstpointer p = g_bytes_get_data (bytes, &size);

  /* The GBytes owns a private copy: wiping it through a cast is safe. */
  pg_secret_wipe ((gpointer) p, size);
  g_bytes_unref (bytes);
}

void
pg_imap_writer_part_free (PgImapWriterPart *part)
{
  if (part == NULL)
    return;
  g_clear_pointer (&part->bytes, g_bytes_unref);
  g_free (part);
}

PgImapAstringForm
pg_imap_writer_astring_form (const char *str, gsize len)
{
  gboolean atom = len > 0;

  for (gsize i = 0; i < len; i++)
    {
      guchar c = (guchar) str[i];
      if (c < 0x20 || c >= 0x7f)
        return PG_IMAP_ASTRING_LITERAL;
      /* ASTRING-CHAR: ATOM-CHAR or ']'; no atom-specials. */
      if (c == ' ' || c == '(' || c == ')' || c == '{' || c == '%' || c == '*' || c == '"'
          || c == '\\')
        atom = FALSE;
    }
  if (atom && len == 3 && g_ascii_strncasecmp (str, "NIL", 3) == 0)
    atom = FALSE;
  return atom ? PG_IMAP_ASTRING_ATOM : PG_IMAP_ASTRING_QUOTED;
}

PgImapWriter *
pg_imap_writer_new (const char *tag, gsize max_nonsync)
{
  PgImapWriter *writer = g_new0 (PgImapWriter, 1);

  writer->line = g_string_new (tag);
  writer->parts = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_imap_writer_part_free);
  writer->max_nonsync = max_nonsync;
  return writer;
}

void
pg_imap_writer_free (PgImapWriter *writer)
{
  if (writer == NULL)
    return;
  g_string_free (writer->line, TRUE);
  g_ptr_array_unref (writer->parts);
  g_free (writer);
}

static void
pg_imap_writer_push_part (PgImapWriter *writer, GBytes *bytes, gboolean wait, gboolean secret)
{
  PgImapWriterPart *part = g_new0 (PgImapWriterPart, 1);

  part->bytes = bytes;
  part->wait_continuation = wait;
  part->secret = secret;
  g_ptr_array_add (writer->parts, part);
}

/* Close the current line as a part (it ends with a literal header, or the command). */
static void
pg_imap_writer_flush_line (PgImapWriter *writer)
{
  gsize len = writer->line->len;

  pg_imap_writer_push_part (writer, g_bytes_new (writer->line->str, len), writer->next_waits,
                            FALSE);
  writer->next_waits = FALSE;
  g_string_truncate (writer->line, 0);
}

/* The SP before an item, or nothing right after "(". */
static const char *
pg_imap_writer_separator (PgImapWriter *writer)
{
  gboolean no_space = writer->no_space;

  writer->no_space = FALSE;
  return no_space ? "" : " ";
}

void
pg_imap_writer_begin_list (PgImapWriter *writer)
{
  g_string_append_printf (writer->line, "%s(", pg_imap_writer_separator (writer));
  writer->no_space = TRUE;
}

void
pg_imap_writer_end_list (PgImapWriter *writer)
{
  writer->no_space = FALSE;
  g_string_append_c (writer->line, ')');
}

static void
pg_imap_writer_add_literal (PgImapWriter *writer, const char *data, gsize len, gboolean secret)
{
  gboolean nonsync = writer->max_nonsync > 0 && len <= writer->max_nonsync;
  GBytes *bytes;

  g_string_append_printf (writer->line, "%s{%" G_GSIZE_FORMAT "%s}\r\n",
                          pg_imap_writer_separator (writer), len, nonsync ? "+" : "");
  pg_imap_writer_flush_line (writer);
  if (secret)
    {
      /* A private copy whose free function wipes it. */
      GBytes *inner = g_bytes_new (data, len);
      gsize size = 0;
      gconstpointer p = g_bytes_get_data (inner, &size);
      bytes = g_bytes_new_with_free_func (p, size, pg_imap_writer_wipe_free_cb, inner);
    }
  else
    bytes = g_bytes_new (data, len);
  pg_imap_writer_push_part (writer, bytes, !nonsync, secret);
}

void
pg_imap_writer_add_raw (PgImapWriter *writer, const char *text)
{
  g_string_append (writer->line, text);
  writer->no_space = FALSE;
}

static void
pg_imap_writer_append_quoted (PgImapWriter *writer, const char *str, gsize len)
{
  g_string_append_printf (writer->line, "%s\"", pg_imap_writer_separator (writer));
  for (gsize i = 0; i < len; i++)
    {
      if (str[i] == '"' || str[i] == '\\')
        g_string_append_c (writer->line, '\\');
      g_string_append_c (writer->line, str[i]);
    }
  g_string_append_c (writer->line, '"');
}

void
pg_imap_writer_add_astring (PgImapWriter *writer, const char *str, gsize len)
{
  switch (pg_imap_writer_astring_form (str, len))
    {
    case PG_IMAP_ASTRING_ATOM:
      g_string_append (writer->line, pg_imap_writer_separator (writer));
      g_string_append_len (writer->line, str, (gssize) len);
      return;
    case PG_IMAP_ASTRING_QUOTED:
      pg_imap_writer_append_quoted (writer, str, len);
      return;
    case PG_IMAP_ASTRING_LITERAL:
      pg_imap_writer_add_literal (writer, str, len, FALSE);
      return;
    }
}

void
pg_imap_writer_add_string (PgImapWriter *writer, const char *data, gsize len)
{
  if (pg_imap_writer_astring_form (data, len) == PG_IMAP_ASTRING_LITERAL)
    pg_imap_writer_add_literal (writer, data, len, FALSE);
  else
    pg_imap_writer_append_quoted (writer, data, len);
}

void
pg_imap_writer_add_secret (PgImapWriter *writer, const char *data, gsize len)
{
  pg_imap_writer_add_literal (writer, data, len, TRUE);
}

gsize
pg_imap_writer_get_line_length (const PgImapWriter *writer)
{
  return writer->line->len;
}

GPtrArray *
pg_imap_writer_finish (PgImapWriter *writer)
{
  GPtrArray *parts;

  g_string_append (writer->line, "\r\n");
  /* The last line's buffer becomes its part (flush_line would copy it and free it). */
  pg_imap_writer_push_part (writer, g_string_free_to_bytes (g_steal_pointer (&writer->line)),
                            writer->next_waits, FALSE);
  parts = g_steal_pointer (&writer->parts);
  g_free (writer);
  return parts;
}

static int
pg_imap_writer_compare_uid_cb (const void *a, const void *b)
{
  guint32 x = *(const guint32 *) a;
  guint32 y = *(const guint32 *) b;

  return x < y ? -1 : x > y ? 1 : 0;
}

GPtrArray *
pg_imap_writer_format_uid_sets (const guint32 *uids, gsize n_uids, gsize max_len)
{
  GPtrArray *sets = g_ptr_array_new_with_free_func (g_free);
  g_autofree guint32 *sorted = NULL;
  g_autoptr (GString) set = g_string_new (NULL);
  gsize i = 0;

  g_return_val_if_fail (max_len >= PG_IMAP_WRITER_MAX_RANGE, sets);
  if (n_uids == 0)
    return sets;
  sorted = g_memdup2 (uids, n_uids * sizeof *uids);
  qsort (sorted, n_uids, sizeof *sorted, pg_imap_writer_compare_uid_cb);

  while (i < n_uids)
    {
      guint32 first = sorted[i];
      guint32 last = first;
      char item[PG_IMAP_WRITER_MAX_RANGE + 2];

      if (first == 0)
        {
          i++;
          continue;
        }
      while (i < n_uids && (sorted[i] == last || (last < G_MAXUINT32 && sorted[i] == last + 1)))
        last = sorted[i++];
      if (first == last)
        g_snprintf (item, sizeof item, "%u", first);
      else
        g_snprintf (item, sizeof item, "%u:%u", first, last);

      if (set->len > 0 && set->len + 1 + strlen (item) > max_len)
        {
          g_ptr_array_add (sets, g_strndup (set->str, set->len));
          g_string_truncate (set, 0);
        }
      if (set->len > 0)
        g_string_append_c (set, ',');
      g_string_append (set, item);
    }
  if (set->len > 0)
    g_ptr_array_add (sets, g_strndup (set->str, set->len));
  return sets;
}

gsize
pg_imap_writer_uid_set_room (const char *tag, const char *before, const char *after)
{
  /* tag SP before SP <set> SP after CRLF */
  gsize fixed = strlen (tag) + 1 + strlen (before) + 1 + 1 + strlen (after) + 2;

  if (fixed + PG_IMAP_WRITER_MAX_RANGE > PG_UPSTREAM_MAX_COMMAND_LINE)
    return PG_IMAP_WRITER_MAX_RANGE;
  return PG_UPSTREAM_MAX_COMMAND_LINE - fixed;
}
