/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-dotstuff.h"

#include <string.h>

struct _PgDotStuffer
{
  gboolean top_mode;
  guint64 body_lines_left; /* TOP: body lines still to send once in the body */
  gboolean in_body;        /* TOP: the blank line after the header has been sent */
  gboolean done;           /* TOP: everything wanted is out */
  gboolean finished;       /* finish() was called */
  gboolean at_line_start;  /* the next byte begins a line */
  gboolean pending_cr;     /* the last chunk ended with a CR whose LF may follow */
  guint64 octets_in;
  guint64 octets_unstuffed;
};

static const guint8 pg_dot_stuffer_crlf[2] = { '\r', '\n' };

PgDotStuffer *
pg_dot_stuffer_new (void)
{
  PgDotStuffer *stuffer = g_new0 (PgDotStuffer, 1);

  stuffer->at_line_start = TRUE;
  return stuffer;
}

PgDotStuffer *
pg_dot_stuffer_new_top (guint64 body_lines)
{
  PgDotStuffer *stuffer = pg_dot_stuffer_new ();

  stuffer->top_mode = TRUE;
  stuffer->body_lines_left = body_lines;
  return stuffer;
}

void
pg_dot_stuffer_free (PgDotStuffer *stuffer)
{
  g_free (stuffer);
}

gboolean
pg_dot_stuffer_is_done (const PgDotStuffer *stuffer)
{
  return stuffer->done;
}

guint64
pg_dot_stuffer_get_octets_in (const PgDotStuffer *stuffer)
{
  return stuffer->octets_in;
}

guint64
pg_dot_stuffer_get_octets_unstuffed (const PgDotStuffer *stuffer)
{
  return stuffer->octets_unstuffed;
}

static void
pg_dot_stuffer_emit (PgDotStuffer *stuffer, GByteArray *out, const guint8 *data, gsize len)
{
  if (len == 0)
    return;
  g_byte_array_append (out, data, (guint) len);
  stuffer->octets_unstuffed += len;
}

/* A line ended and its CRLF is out: TOP's accounting. */
static void
pg_dot_stuffer_line_ended (PgDotStuffer *stuffer)
{
  gboolean was_empty = stuffer->at_line_start;

  stuffer->at_line_start = TRUE;
  if (!stuffer->top_mode)
    return;
  if (!stuffer->in_body)
    {
      if (was_empty)
        {
          stuffer->in_body = TRUE;
          if (stuffer->body_lines_left == 0)
            stuffer->done = TRUE;
        }
      return;
    }
  if (stuffer->body_lines_left > 0 && --stuffer->body_lines_left == 0)
    stuffer->done = TRUE;
}

/* A line ended (its content is already out): write CRLF and do TOP's accounting. */
static void
pg_dot_stuffer_end_line (PgDotStuffer *stuffer, GByteArray *out)
{
  pg_dot_stuffer_emit (stuffer, out, pg_dot_stuffer_crlf, 2);
  pg_dot_stuffer_line_ended (stuffer);
}

/* RETR's loop, after any pending CR is settled (start < end): only a bare LF and a "." first
 * on a line change the bytes, and no line needs counting, so a CRLF line costs a few
 * compares, and runs of such lines go out in one append. */
static void
pg_dot_stuffer_feed_retr (PgDotStuffer *stuffer, const guint8 *start, const guint8 *end,
                          GByteArray *out)
{
  const guint8 *run = start; /* [run, p) goes out as it is */
  const guint8 *p = start;   /* where the search for the next LF goes on */
  const guint8 *lf;

  if (stuffer->at_line_start && *p == '.')
    g_byte_array_append (out, (const guint8 *) ".", 1);
  while ((lf = memchr (p, '\n', (gsize) (end - p))) != NULL)
    {
      /* A bare LF (first in the chunk, a CR last in the previous chunk having been settled
       * by the caller, or after anything but a CR): the line ends, with CRLF. A bare CR
       * before a CRLF is content and stays in the run. */
      if (G_UNLIKELY (lf == start || lf[-1] != '\r'))
        {
          pg_dot_stuffer_emit (stuffer, out, run, (gsize) (lf - run));
          pg_dot_stuffer_emit (stuffer, out, pg_dot_stuffer_crlf, 2);
          run = lf + 1;
        }
      p = lf + 1;
      if (p == end)
        {
          stuffer->at_line_start = TRUE;
          pg_dot_stuffer_emit (stuffer, out, run, (gsize) (end - run));
          return;
        }
      if (G_UNLIKELY (*p == '.'))
        {
          pg_dot_stuffer_emit (stuffer, out, run, (gsize) (p - run));
          g_byte_array_append (out, (const guint8 *) ".", 1);
          run = p;
        }
    }
  stuffer->at_line_start = FALSE;
  if (end[-1] == '\r')
    {
      /* A CR last in the chunk: a CRLF or a bare CR, the next chunk tells. */
      pg_dot_stuffer_emit (stuffer, out, run, (gsize) (end - 1 - run));
      stuffer->pending_cr = TRUE;
      return;
    }
  pg_dot_stuffer_emit (stuffer, out, run, (gsize) (end - run));
}

gsize
pg_dot_stuffer_feed (PgDotStuffer *stuffer, const void *data, gsize len, GByteArray *out)
{
  const guint8 *p = data;
  const guint8 *end = p + len;
  const guint8 *run; /* [run, p) goes out as it is, copied in one go when something differs */

  g_return_val_if_fail (stuffer != NULL, 0);
  g_return_val_if_fail (data != NULL || len == 0, 0);
  g_return_val_if_fail (out != NULL, 0);
  g_return_val_if_fail (!stuffer->finished, 0);
  /* GByteArray counts in guint; chunks from the network are far smaller. */
  g_return_val_if_fail (len <= G_MAXUINT / 2, 0);

  if (len == 0)
    return 0;

  if (stuffer->pending_cr && !stuffer->done)
    {
      stuffer->pending_cr = FALSE;
      if (*p == '\n')
        {
          p++;
          pg_dot_stuffer_end_line (stuffer, out);
        }
      else
        {
          /* A bare CR: content, passed through (see the header). */
          pg_dot_stuffer_emit (stuffer, out, (const guint8 *) "\r", 1);
          stuffer->at_line_start = FALSE;
        }
    }
  if (!stuffer->top_mode)
    {
      if (p < end)
        pg_dot_stuffer_feed_retr (stuffer, p, end, out);
      stuffer->octets_in += len;
      return len;
    }

  /* TOP: line by line, counting lines. */
  run = p;
  while (p < end && !stuffer->done)
    {
      const guint8 *lf;

      if (stuffer->at_line_start)
        {
          if (*p == '.')
            {
              pg_dot_stuffer_emit (stuffer, out, run, (gsize) (p - run));
              g_byte_array_append (out, (const guint8 *) ".", 1);
              run = p;
            }
          /* An empty line is not "content": leave at_line_start for its line end (a CR
           * last in the chunk may be one; the next chunk tells). */
          if (*p != '\n' && !(*p == '\r' && (p + 1 == end || p[1] == '\n')))
            stuffer->at_line_start = FALSE;
        }
      lf = memchr (p, '\n', (gsize) (end - p));
      if (lf != NULL && lf > p && lf[-1] == '\r')
        {
          /* The usual line, ending in CRLF (a bare CR before it is content): it stays in
           * the run. */
          p = lf + 1;
          pg_dot_stuffer_line_ended (stuffer);
        }
      else if (lf != NULL)
        {
          /* A bare LF: the line ends, with CRLF. */
          pg_dot_stuffer_emit (stuffer, out, run, (gsize) (lf - run));
          p = lf + 1;
          run = p;
          pg_dot_stuffer_end_line (stuffer, out);
        }
      else if (end[-1] == '\r')
        {
          /* A CR last in the chunk: a CRLF or a bare CR, the next chunk tells. */
          pg_dot_stuffer_emit (stuffer, out, run, (gsize) (end - 1 - run));
          stuffer->pending_cr = TRUE;
          p = end;
          run = p;
        }
      else
        p = end;
    }
  pg_dot_stuffer_emit (stuffer, out, run, (gsize) (p - run));

  stuffer->octets_in += (guint64) (p - (const guint8 *) data);
  return (gsize) (p - (const guint8 *) data);
}

void
pg_dot_stuffer_finish (PgDotStuffer *stuffer, GByteArray *out)
{
  g_return_if_fail (stuffer != NULL);
  g_return_if_fail (out != NULL);
  g_return_if_fail (!stuffer->finished);

  stuffer->finished = TRUE;
  if (!stuffer->done)
    {
      if (stuffer->pending_cr)
        {
          /* A bare CR last in the message: content, then the missing line end. */
          stuffer->pending_cr = FALSE;
          pg_dot_stuffer_emit (stuffer, out, (const guint8 *) "\r", 1);
          pg_dot_stuffer_end_line (stuffer, out);
        }
      else if (!stuffer->at_line_start)
        pg_dot_stuffer_end_line (stuffer, out);
    }
  g_byte_array_append (out, (const guint8 *) ".\r\n", 3);
}

GBytes *
pg_dot_stuffer_stuff_all (const void *data, gsize len)
{
  g_autoptr (PgDotStuffer) stuffer = pg_dot_stuffer_new ();
  g_autoptr (GByteArray) out = g_byte_array_sized_new ((guint) MIN (len + len / 16 + 8, G_MAXUINT));

  pg_dot_stuffer_feed (stuffer, data, len, out);
  pg_dot_stuffer_finish (stuffer, out);
  return g_byte_array_free_to_bytes (g_steal_pointer (&out));
}
