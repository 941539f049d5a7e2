/* Fuzz target: the dot-stuffer. The first two bytes choose RETR or TOP k and a chunk
 * size. Checks: the output ends with ".\r\n"; every line ends with CRLF (a lone CR is content); no
 * line before the terminator starts with a lone, unstuffed dot; unstuffing gives back the input
 * modulo CRLF repair (a prefix of it for TOP); chunking does not change the output; the octet
 * counters add up.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-dotstuff.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* The input with every line end (CRLF, LF) as "\n" and a final one added; a lone CR is
 * content and stays. */
static GByteArray *
pg_fuzz_dotstuff_normalise (const guint8 *data, gsize size)
{
  GByteArray *out = g_byte_array_sized_new ((guint) size + 1);

  for (gsize i = 0; i < size; i++)
    {
      if (data[i] == '\r' && i + 1 < size && data[i + 1] == '\n')
        {
          i++;
          g_byte_array_append (out, (const guint8 *) "\n", 1);
        }
      else
        g_byte_array_append (out, data + i, 1);
    }
  if (out->len > 0 && out->data[out->len - 1] != '\n')
    g_byte_array_append (out, (const guint8 *) "\n", 1);
  return out;
}

static GByteArray *
pg_fuzz_dotstuff_run (gboolean top, guint k, const guint8 *data, gsize size, gsize chunk,
                      guint64 *out_unstuffed)
{
  g_autoptr (PgDotStuffer) stuffer = top ? pg_dot_stuffer_new_top (k) : pg_dot_stuffer_new ();
  GByteArray *out = g_byte_array_new ();
  gsize pos = 0;

  while (pos < size && !pg_dot_stuffer_is_done (stuffer))
    {
      gsize piece = MIN (chunk, size - pos);
      gsize taken = pg_dot_stuffer_feed (stuffer, data + pos, piece, out);

      if (taken != piece && !pg_dot_stuffer_is_done (stuffer))
        abort ();
      pos += taken;
    }
  if (pg_dot_stuffer_get_octets_in (stuffer) != pos)
    abort ();
  pg_dot_stuffer_finish (stuffer, out);
  *out_unstuffed = pg_dot_stuffer_get_octets_unstuffed (stuffer);
  return out;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GByteArray) out = NULL;
  g_autoptr (GByteArray) out_bytewise = NULL;
  g_autoptr (GByteArray) expected = NULL;
  g_autoptr (GByteArray) unstuffed = g_byte_array_new ();
  guint64 unstuffed_octets = 0;
  guint64 unstuffed_octets_b = 0;
  guint64 dots = 0;
  gboolean top;
  guint k;
  gsize chunk;
  gsize line_start = 0;

  if (size < 2)
    return 0;
  top = (data[0] & 0x80) != 0;
  k = data[0] & 0x7f;
  chunk = 1 + data[1];
  data += 2;
  size -= 2;

  out = pg_fuzz_dotstuff_run (top, k, data, size, chunk, &unstuffed_octets);
  out_bytewise = pg_fuzz_dotstuff_run (top, k, data, size, 1, &unstuffed_octets_b);
  if (out->len != out_bytewise->len || memcmp (out->data, out_bytewise->data, out->len) != 0
      || unstuffed_octets != unstuffed_octets_b)
    abort ();

  if (out->len < 3 || memcmp (out->data + out->len - 3, ".\r\n", 3) != 0)
    abort ();

  /* Walk the lines: CRLF only, and undo the stuffing. */
  for (gsize i = 0; i < out->len; i++)
    {
      const guint8 *line;
      gsize line_len;

      if (out->data[i] != '\n')
        continue;
      if (i == 0 || out->data[i - 1] != '\r')
        abort ();
      line = out->data + line_start;
      line_len = i - 1 - line_start;
      if (i + 1 == out->len)
        {
          /* The terminator, and nothing like it before. */
          if (line_len != 1 || line[0] != '.')
            abort ();
          break;
        }
      if (line_len > 0 && line[0] == '.')
        {
          if (line_len < 2 || line[1] != '.')
            abort ();
          line++;
          line_len--;
          dots++;
        }
      g_byte_array_append (unstuffed, line, (guint) line_len);
      g_byte_array_append (unstuffed, (const guint8 *) "\n", 1);
      line_start = i + 1;
    }

  /* Every CRLF in the output stands for one "\n"; stuffing dots and ".\r\n" aside, the
   * octet counter is what the client got. */
  if (unstuffed_octets + dots + 3 != out->len)
    abort ();

  expected = pg_fuzz_dotstuff_normalise (data, size);
  if (top)
    {
      if (unstuffed->len > expected->len
          || (unstuffed->len > 0 && memcmp (unstuffed->data, expected->data, unstuffed->len) != 0))
        abort ();
    }
  else if (unstuffed->len != expected->len
           || (expected->len > 0 && memcmp (unstuffed->data, expected->data, expected->len) != 0))
    abort ();
  return 0;
}
