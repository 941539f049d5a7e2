/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-line.h"

#include "popgate/pg-core.h"

#include <string.h>

/* The first allocation: a few POP3 commands. The buffer doubles up to the capacity only
 * while more is buffered, and is released when empty (see the header). */
#define PG_LINE_READER_INITIAL_ALLOC 256

struct _PgLineReader
{
  guint8 *buf;         /* owned; alloc bytes, NULL (alloc 0) while nothing is buffered */
  gsize alloc;         /* <= capacity */
  gsize capacity;      /* the bound: what is buffered never exceeds it */
  gsize start;         /* first unread byte */
  gsize end;           /* one past the last buffered byte */
  gsize scanned;       /* [start, scanned) is known to hold no LF */
  gboolean discarding; /* dropping input up to the next LF after LINE_TOO_LONG */
};

PgLineReader *
pg_line_reader_new (gsize capacity)
{
  PgLineReader *reader;

  g_return_val_if_fail (capacity > 0, NULL);

  reader = g_new0 (PgLineReader, 1);
  reader->capacity = capacity;
  return reader;
}

/* Wipe and free the buffer; only when nothing unread is in it. */
static void
pg_line_reader_release (PgLineReader *reader)
{
  if (reader->buf != NULL)
    {
      pg_secret_wipe (reader->buf, reader->alloc);
      g_clear_pointer (&reader->buf, g_free);
    }
  reader->alloc = 0;
  reader->start = 0;
  reader->end = 0;
  reader->scanned = 0;
}

void
pg_line_reader_free (PgLineReader *reader)
{
  if (reader == NULL)
    return;
  pg_line_reader_release (reader);
  g_free (reader);
}

gsize
pg_line_reader_get_allocated (const PgLineReader *reader)
{
  return reader->alloc;
}

gsize
pg_line_reader_get_capacity (const PgLineReader *reader)
{
  return reader->capacity;
}

gsize
pg_line_reader_get_buffered (const PgLineReader *reader)
{
  return reader->end - reader->start;
}

gsize
pg_line_reader_get_space (const PgLineReader *reader)
{
  return reader->capacity - (reader->end - reader->start);
}

gboolean
pg_line_reader_is_discarding (const PgLineReader *reader)
{
  return reader->discarding;
}

static void
pg_line_reader_compact (PgLineReader *reader)
{
  gsize held = reader->end - reader->start;

  if (reader->start == 0)
    return;
  memmove (reader->buf, reader->buf + reader->start, held);
  /* The tail may hold a password that was already taken as a line. */
  pg_secret_wipe (reader->buf + held, reader->end - held);
  reader->scanned -= reader->start;
  reader->start = 0;
  reader->end = held;
}

/* Make room for `want` more bytes after what is held (want <= capacity - held). */
static void
pg_line_reader_reserve (PgLineReader *reader, gsize want)
{
  gsize held = reader->end - reader->start;
  gsize alloc;
  guint8 *buf;

  /* Compact only when the tail is too short: most lines are taken before the next
   * read, so the common case is start == end and the move is free. */
  if (reader->alloc - reader->end >= want)
    return;
  pg_line_reader_compact (reader);
  if (reader->alloc - held >= want)
    return;
  /* Grow by doubling, never past the capacity: held + want <= capacity. */
  alloc = reader->alloc != 0 ? reader->alloc : MIN (PG_LINE_READER_INITIAL_ALLOC, reader->capacity);
  while (alloc < held + want)
    alloc = MIN (alloc * 2, reader->capacity);
  buf = g_malloc (alloc);
  if (held > 0)
    memcpy (buf, reader->buf, held);
  /* Not g_realloc(): the old block may hold a password and must be wiped, not left
   * behind in the heap. */
  if (reader->buf != NULL)
    {
      pg_secret_wipe (reader->buf, reader->alloc);
      g_free (reader->buf);
    }
  reader->buf = buf;
  reader->alloc = alloc;
}

gsize
pg_line_reader_feed (PgLineReader *reader, const void *data, gsize len)
{
  const guint8 *p = data;
  gsize taken = 0;
  gsize room;
  gsize n;

  g_return_val_if_fail (reader != NULL, 0);
  g_return_val_if_fail (data != NULL || len == 0, 0);

  if (reader->discarding)
    {
      const guint8 *lf = memchr (p, '\n', len);

      if (lf == NULL)
        return len;
      taken = (gsize) (lf - p) + 1;
      reader->discarding = FALSE;
      p += taken;
      len -= taken;
    }

  room = reader->capacity - (reader->end - reader->start);
  n = MIN (room, len);
  if (n == 0)
    return taken;
  pg_line_reader_reserve (reader, n);
  memcpy (reader->buf + reader->end, p, n);
  reader->end += n;
  return taken + n;
}

PgLineReaderStatus
pg_line_reader_next (PgLineReader *reader, const char **out_line, gsize *out_len, GError **error)
{
  const guint8 *lf;
  gsize line_start;
  gsize line_end;

  g_return_val_if_fail (reader != NULL, PG_LINE_READER_ERROR);
  g_return_val_if_fail (error == NULL || *error == NULL, PG_LINE_READER_ERROR);

  if (reader->start == reader->end)
    {
      /* Empty: the last line returned is no longer valid, so the buffer can go. An idle
       * connection then holds no input buffer at all. */
      pg_line_reader_release (reader);
      return PG_LINE_READER_NEED_MORE;
    }
  lf = memchr (reader->buf + reader->scanned, '\n', reader->end - reader->scanned);
  if (lf == NULL)
    {
      reader->scanned = reader->end;
      if (reader->end - reader->start < reader->capacity)
        return PG_LINE_READER_NEED_MORE;

      /* Full and no line end: refuse, then skip the rest of this line. */
      pg_line_reader_discard_buffered (reader);
      reader->discarding = TRUE;
      g_set_error (error, PG_ERROR, PG_ERROR_LINE_TOO_LONG,
                   "Line longer than %" G_GSIZE_FORMAT " octets", reader->capacity);
      return PG_LINE_READER_ERROR;
    }

  line_start = reader->start;
  line_end = (gsize) (lf - reader->buf);
  reader->start = line_end + 1;
  reader->scanned = reader->start;
  if (line_end > line_start && reader->buf[line_end - 1] == '\r')
    line_end--;

  *out_line = (const char *) reader->buf + line_start;
  *out_len = line_end - line_start;
  return PG_LINE_READER_LINE;
}

gboolean
pg_line_reader_peek_at (PgLineReader *reader, gsize *inout_offset, const char **out_line,
                        gsize *out_len)
{
  const guint8 *lf;
  gsize from;
  gsize line_end;

  g_return_val_if_fail (reader != NULL && inout_offset != NULL, FALSE);

  from = reader->start + *inout_offset;
  if (reader->discarding || from >= reader->end)
    return FALSE;
  lf = memchr (reader->buf + from, '\n', reader->end - from);
  if (lf == NULL)
    return FALSE;
  line_end = (gsize) (lf - reader->buf);
  *inout_offset = line_end + 1 - reader->start;
  if (line_end > from && reader->buf[line_end - 1] == '\r')
    line_end--;
  *out_line = (const char *) reader->buf + from;
  *out_len = line_end - from;
  return TRUE;
}

gboolean
pg_line_reader_peek (PgLineReader *reader, const char **out_line, gsize *out_len)
{
  gsize offset = 0;

  return pg_line_reader_peek_at (reader, &offset, out_line, out_len);
}

gsize
pg_line_reader_take_raw (PgLineReader *reader, gsize max_len, const guint8 **out_data)
{
  gsize n;

  g_return_val_if_fail (reader != NULL, 0);
  g_return_val_if_fail (out_data != NULL, 0);

  n = MIN (max_len, reader->end - reader->start);
  *out_data = reader->buf != NULL ? reader->buf + reader->start : (const guint8 *) "";
  reader->start += n;
  /* Keep scanned >= start: compaction subtracts start from it. */
  reader->scanned = MAX (reader->scanned, reader->start);
  return n;
}

gsize
pg_line_reader_peek_raw (const PgLineReader *reader, const guint8 **out_data)
{
  g_return_val_if_fail (reader != NULL, 0);
  g_return_val_if_fail (out_data != NULL, 0);

  *out_data = reader->buf != NULL ? reader->buf + reader->start : (const guint8 *) "";
  return reader->end - reader->start;
}

gsize
pg_line_reader_discard_buffered (PgLineReader *reader)
{
  gsize dropped;

  g_return_val_if_fail (reader != NULL, 0);

  dropped = reader->end - reader->start;
  pg_line_reader_release (reader);
  reader->discarding = FALSE;
  return dropped;
}
