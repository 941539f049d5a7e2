/* Tests for PgLineReader's memory: the buffer follows what is buffered (allocated on
 * demand, grown up to the capacity, released when empty) while framing, the capacity bound
 * and back-pressure stay what they were. An idle POP3 session holds a reader: this is what
 * keeps it small (DESIGN.md: < 64 KiB per idle session).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-line.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

/* Take every complete line; append "L:<line>" or "E" to out. Checks the allocation bound
 * after each step. */
static void
pg_test_alloc_drain (PgLineReader *reader, GString *out)
{
  for (;;)
    {
      g_autoptr (GError) error = NULL;
      const char *line = NULL;
      gsize len = 0;
      PgLineReaderStatus status = pg_line_reader_next (reader, &line, &len, &error);

      g_assert_cmpuint (pg_line_reader_get_allocated (reader), <=,
                        pg_line_reader_get_capacity (reader));
      if (status == PG_LINE_READER_NEED_MORE)
        {
          g_assert_no_error (error);
          /* Nothing held: nothing allocated. */
          if (pg_line_reader_get_buffered (reader) == 0)
            g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
          return;
        }
      if (status == PG_LINE_READER_ERROR)
        {
          g_assert_error (error, PG_ERROR, PG_ERROR_LINE_TOO_LONG);
          g_string_append (out, "E|");
          continue;
        }
      g_assert_no_error (error);
      g_string_append (out, "L:");
      g_string_append_len (out, line, (gssize) len);
      g_string_append_c (out, '|');
    }
}

static void
test_alloc_empty_reader_holds_nothing (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (PG_POP3_INPUT_BUFFER);
  g_autoptr (GString) out = g_string_new (NULL);

  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_get_space (reader), ==, PG_POP3_INPUT_BUFFER);

  g_assert_cmpuint (pg_line_reader_feed (reader, "STAT\r\n", 6), ==, 6);
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), >, 0);
  /* A short command does not make the reader take its whole capacity. */
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), <=, 1024);

  pg_test_alloc_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "L:STAT|");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_get_space (reader), ==, PG_POP3_INPUT_BUFFER);
}

static void
test_alloc_line_valid_until_next_call (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (64);
  g_autoptr (GError) error = NULL;
  const char *line = NULL;
  gsize len = 0;

  g_assert_cmpuint (pg_line_reader_feed (reader, "NOOP\r\n", 6), ==, 6);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &len, &error), ==, PG_LINE_READER_LINE);
  g_assert_no_error (error);
  /* The reader is empty now, but the line it returned is still readable. */
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), >, 0);
  g_assert_cmpmem (line, len, "NOOP", 4);
  g_assert_true (pg_line_reader_peek (reader, &line, &len) == FALSE);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &len, &error), ==,
                   PG_LINE_READER_NEED_MORE);
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
}

static void
test_alloc_partial_line_kept (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (64);
  g_autoptr (GString) out = g_string_new (NULL);

  g_assert_cmpuint (pg_line_reader_feed (reader, "RETR", 4), ==, 4);
  pg_test_alloc_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), >, 0);
  g_assert_cmpuint (pg_line_reader_get_buffered (reader), ==, 4);
  g_assert_cmpuint (pg_line_reader_feed (reader, " 1\r\n", 4), ==, 4);
  pg_test_alloc_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "L:RETR 1|");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
}

static void
test_alloc_grows_to_capacity_and_no_further (void)
{
  const gsize capacity = PG_POP3_INPUT_BUFFER;
  g_autoptr (PgLineReader) reader = pg_line_reader_new (capacity);
  g_autoptr (GString) out = g_string_new (NULL);
  g_autofree gchar *junk = g_strnfill (capacity + 100, 'x');
  gsize fed = 0;

  /* Fed a byte at a time, the buffer grows only as needed and stops at the capacity: a
   * full reader takes nothing more (back-pressure), it does not grow. */
  while (fed < capacity + 100)
    {
      gsize before = pg_line_reader_get_allocated (reader);
      gsize taken = pg_line_reader_feed (reader, junk + fed, 1);

      if (taken == 0)
        break;
      fed += taken;
      g_assert_cmpuint (pg_line_reader_get_allocated (reader), >=, fed);
      g_assert_cmpuint (pg_line_reader_get_allocated (reader), <=, capacity);
      /* Doubling: never more than twice what is held (or the first allocation). */
      if (pg_line_reader_get_allocated (reader) != before && before != 0)
        g_assert_cmpuint (pg_line_reader_get_allocated (reader), <=, MAX (2 * fed, 256));
    }
  g_assert_cmpuint (fed, ==, capacity);
  g_assert_cmpuint (pg_line_reader_get_space (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, capacity);

  /* Full without a line end: LINE_TOO_LONG once, the buffer is dropped, and the rest of the
   * line is discarded without a buffer. */
  pg_test_alloc_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "E|");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_feed (reader, "xxxx\r\nQUIT\r\n", 12), ==, 12);
  pg_test_alloc_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "E|L:QUIT|");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
}

static void
test_alloc_discard_buffered_releases (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (PG_POP3_INPUT_BUFFER);

  g_assert_cmpuint (pg_line_reader_feed (reader, "STLS\r\nUSER x\r\n", 14), ==, 14);
  g_assert_cmpuint (pg_line_reader_discard_buffered (reader), ==, 14);
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_get_buffered (reader), ==, 0);
}

/* Lines of lengths around the doubling steps, fed whole, byte by byte and split at every
 * point: the same lines come out whatever the growth, and an emptied reader holds nothing. */
static void
test_alloc_every_split_point (void)
{
  const gsize capacity = 2048;
  const gsize lengths[] = { 0, 1, 254, 255, 256, 257, 300, 511, 512, 1000, 1500, 2046, 2047 };
  g_autoptr (GString) input = g_string_new (NULL);
  g_autoptr (GString) expected = g_string_new (NULL);

  for (gsize i = 0; i < G_N_ELEMENTS (lengths); i++)
    {
      /* A line of lengths[i] octets plus CRLF; 2047 + CRLF is over the capacity. */
      g_autofree gchar *body = g_strnfill (lengths[i], (gchar) ('a' + i));

      g_string_append (input, body);
      g_string_append (input, "\r\n");
      if (lengths[i] + 2 <= capacity)
        g_string_append_printf (expected, "L:%s|", body);
      else
        g_string_append (expected, "E|");
    }

  for (gsize step = 0; step <= 3; step++)
    for (gsize split = 0; split <= input->len; split += (step == 0 ? 1 : input->len + 1))
      {
        g_autoptr (PgLineReader) reader = pg_line_reader_new (capacity);
        g_autoptr (GString) out = g_string_new (NULL);
        gsize pos = 0;

        while (pos < input->len)
          {
            gsize piece = input->len - pos;
            gsize taken;

            if (split > 0 && pos < split)
              piece = split - pos;
            if (step > 0)
              piece = MIN (piece, step);
            taken = pg_line_reader_feed (reader, input->str + pos, piece);
            pos += taken;
            g_assert_cmpuint (pg_line_reader_get_allocated (reader), <=, capacity);
            pg_test_alloc_drain (reader, out);
            if (taken == 0)
              g_assert_cmpuint (pg_line_reader_get_space (reader), >, 0);
          }
        pg_test_alloc_drain (reader, out);
        g_assert_cmpstr (out->str, ==, expected->str);
        g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
      }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-line/alloc/empty-reader-holds-nothing",
                   test_alloc_empty_reader_holds_nothing);
  g_test_add_func ("/popgate/codec-line/alloc/line-valid-until-next-call",
                   test_alloc_line_valid_until_next_call);
  g_test_add_func ("/popgate/codec-line/alloc/partial-line-kept", test_alloc_partial_line_kept);
  g_test_add_func ("/popgate/codec-line/alloc/grows-to-capacity-and-no-further",
                   test_alloc_grows_to_capacity_and_no_further);
  g_test_add_func ("/popgate/codec-line/alloc/discard-buffered-releases",
                   test_alloc_discard_buffered_releases);
  g_test_add_func ("/popgate/codec-line/alloc/every-split-point", test_alloc_every_split_point);
  return g_test_run ();
}
