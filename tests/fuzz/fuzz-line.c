/* Fuzz target: PgLineReader. The first two bytes choose the capacity and a chunk size;
 * the framing must not depend on how the input is cut. A line ending in "{d}" (one digit)
 * is followed by d raw octets taken with pg_line_reader_take_raw(), as an IMAP literal.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-line.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Frame data fed in pieces of `chunk`; returns a checksum of the lines and errors. */
static guint64
pg_fuzz_line_frame (gsize capacity, const guint8 *data, gsize size, gsize chunk, guint *out_lines)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (capacity);
  guint64 sum = 14695981039346656037u;
  guint lines = 0;
  gsize pos = 0;
  gsize raw_wanted = 0;

  while (pos < size)
    {
      gsize piece = MIN (chunk, size - pos);
      gsize taken = pg_line_reader_feed (reader, data + pos, piece);
      PgLineReaderStatus status;
      const char *line = NULL;
      gsize line_len = 0;

      if (taken > piece || pg_line_reader_get_buffered (reader) > capacity)
        abort ();
      pos += taken;
      for (;;)
        {
          if (raw_wanted > 0)
            {
              const guint8 *raw = NULL;
              gsize n = pg_line_reader_take_raw (reader, raw_wanted, &raw);

              if (n == 0)
                break;
              for (gsize i = 0; i < n; i++)
                sum = (sum ^ (0x200u | raw[i])) * 1099511628211u;
              raw_wanted -= n;
              continue;
            }
          status = pg_line_reader_next (reader, &line, &line_len, NULL);
          if (status == PG_LINE_READER_NEED_MORE)
            break;
          if (status == PG_LINE_READER_ERROR)
            {
              sum = (sum ^ 0xE) * 1099511628211u;
              continue;
            }
          /* A line fits its terminator in the buffer and never holds an LF. */
          if (line_len + 1 > capacity || memchr (line, '\n', line_len) != NULL)
            abort ();
          for (gsize i = 0; i < line_len; i++)
            sum = (sum ^ (guint8) line[i]) * 1099511628211u;
          sum = (sum ^ 0x100) * 1099511628211u;
          lines++;
          if (line_len >= 3 && line[line_len - 1] == '}' && g_ascii_isdigit (line[line_len - 2])
              && line[line_len - 3] == '{')
            raw_wanted = (gsize) (line[line_len - 2] - '0');
        }
      if (taken == 0 && pg_line_reader_get_space (reader) == 0)
        abort (); /* full and yet neither a line nor an error: stuck */
    }
  *out_lines = lines;
  return sum;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  gsize capacity;
  gsize chunk;
  guint lines_a = 0;
  guint lines_b = 0;

  if (size < 2)
    return 0;
  capacity = 1 + data[0] % 64;
  chunk = 1 + data[1];
  data += 2;
  size -= 2;

  if (pg_fuzz_line_frame (capacity, data, size, chunk, &lines_a)
          != pg_fuzz_line_frame (capacity, data, size, 1, &lines_b)
      || lines_a != lines_b)
    abort ();
  return 0;
}
