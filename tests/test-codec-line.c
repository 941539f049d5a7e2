/* Tests for PgLineReader: framing, limits, recovery after an over-long line, raw takes, and
 * its memory (allocated on demand, grown up to the capacity, released when empty).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-line.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

/* Take every complete line; append "L:<line>" or "E" to out. Checks the allocation bound
 * after each step: never over the capacity, nothing held when nothing is buffered. */
static void
pg_test_line_drain (PgLineReader *reader, GString *out)
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

/* Feed input in pieces of `step` octets (0 = whole) and at split point `split` (0 = none),
 * taking lines eagerly; returns what came out as "L:<line>" / "E" joined by "|". */
static gchar *
pg_test_line_run (gsize capacity, const char *input, gsize len, gsize split, gsize step)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (capacity);
  g_autoptr (GString) out = g_string_new (NULL);
  gsize pos = 0;

  while (pos < len)
    {
      gsize piece = len - pos;
      gsize taken;

      if (split > 0 && pos < split)
        piece = split - pos;
      if (step > 0)
        piece = MIN (piece, step);
      taken = pg_line_reader_feed (reader, input + pos, piece);
      g_assert_cmpuint (taken, <=, piece);
      pos += taken;

      pg_test_line_drain (reader, out);
    }
  return g_string_free (g_steal_pointer (&out), FALSE);
}

/* Whole, byte by byte, and at every split point give the same result. */
static void
pg_test_line_check (gsize capacity, const char *input, const char *expected)
{
  gsize len = strlen (input);
  g_autofree gchar *whole = pg_test_line_run (capacity, input, len, 0, 0);
  g_autofree gchar *bytewise = pg_test_line_run (capacity, input, len, 0, 1);

  g_assert_cmpstr (whole, ==, expected);
  g_assert_cmpstr (bytewise, ==, expected);
  for (gsize split = 1; split < len; split++)
    {
      g_autofree gchar *got = pg_test_line_run (capacity, input, len, split, 0);

      g_assert_cmpstr (got, ==, expected);
    }
}

static void
pg_test_line_basic (void)
{
  pg_test_line_check (64, "USER a\r\nPASS b c\r\n", "L:USER a|L:PASS b c|");
  pg_test_line_check (64, "bare\nlf\n", "L:bare|L:lf|");
  pg_test_line_check (64, "\r\n\n\r\n", "L:|L:|L:|");
  pg_test_line_check (64, "mid\rcr\r\n", "L:mid\rcr|");
  pg_test_line_check (64, "no end yet", "");
  pg_test_line_check (64, "a\r\r\n", "L:a\r|");
}

static void
pg_test_line_capacity (void)
{
  /* capacity 8: 6 octets + CRLF = 8 fits; 7 + LF fits; 7 + CRLF does not. */
  pg_test_line_check (8, "123456\r\nx\r\n", "L:123456|L:x|");
  pg_test_line_check (8, "1234567\nx\r\n", "L:1234567|L:x|");
  pg_test_line_check (8, "1234567\r\nx\r\n", "E|L:x|");
}

static void
pg_test_line_too_long_recovers (void)
{
  /* Each over-long line gives exactly one error, then framing resumes. */
  pg_test_line_check (8, "0123456789abcdef\r\nNOOP\r\n", "E|L:NOOP|");
  pg_test_line_check (8, "0123456789abcdefghijklmnopqrstuvwxyz\nok\n", "E|L:ok|");
  pg_test_line_check (8, "aaaaaaaaaaaa\nbbbbbbbbbbbb\ncccccccccc\nQUIT\r\n", "E|E|E|L:QUIT|");
  pg_test_line_check (8, "ok1\r\n0123456789\r\nok2\r\n", "L:ok1|E|L:ok2|");
}

static void
pg_test_line_back_pressure (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (8);
  g_autoptr (GError) error = NULL;
  const char *line = NULL;
  gsize line_len = 0;

  g_assert_cmpuint (pg_line_reader_feed (reader, "ab\r\ncdefghijk", 13), ==, 8);
  g_assert_cmpuint (pg_line_reader_get_space (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_feed (reader, "x", 1), ==, 0);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, &error), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, line_len, "ab", 2);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, &error), ==,
                   PG_LINE_READER_NEED_MORE);
  g_assert_cmpuint (pg_line_reader_get_buffered (reader), ==, 4);
  g_assert_cmpuint (pg_line_reader_feed (reader, "ghij\r\n", 6), ==, 4);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, &error), ==,
                   PG_LINE_READER_ERROR);
  g_assert_error (error, PG_ERROR, PG_ERROR_LINE_TOO_LONG);
  g_assert_true (pg_line_reader_is_discarding (reader));
  g_assert_cmpuint (pg_line_reader_feed (reader, "\r\nA\n", 4), ==, 4);
  g_assert_false (pg_line_reader_is_discarding (reader));
  g_clear_error (&error);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, &error), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, line_len, "A", 1);
}

static void
pg_test_line_discard_buffered (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (64);
  g_autoptr (GError) error = NULL;
  const char *line = NULL;
  gsize line_len = 0;
  const char *input = "STLS\r\nUSER injected\r\n";

  g_assert_cmpuint (pg_line_reader_feed (reader, input, strlen (input)), ==, strlen (input));
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, &error), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, line_len, "STLS", 4);
  /* What followed STLS in plaintext must not survive the TLS handshake. */
  g_assert_cmpuint (pg_line_reader_discard_buffered (reader), ==, 15);
  g_assert_cmpuint (pg_line_reader_get_buffered (reader), ==, 0);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, &error), ==,
                   PG_LINE_READER_NEED_MORE);
  g_assert_no_error (error);
}

/* An IMAP literal: a line announcing {5}, five raw octets, then the rest of the line; at
 * every split point. */
static void
pg_test_line_take_raw (void)
{
  const char *input = "a LOGIN {5}\r\nal\nce {3}\r\n\r\n\r\r\n";
  gsize len = strlen (input);

  for (gsize split = 0; split <= len; split++)
    {
      g_autoptr (PgLineReader) reader = pg_line_reader_new (32);
      g_autoptr (GString) out = g_string_new (NULL);
      gsize pos = 0;
      gsize raw_wanted = 0;
      guint literals = 0;

      while (pos < len)
        {
          gsize piece = (split > pos) ? split - pos : len - pos;

          /* The loop below always drains the reader, so it takes every piece. */
          g_assert_cmpuint (pg_line_reader_feed (reader, input + pos, piece), ==, piece);
          pos += piece;
          for (;;)
            {
              const char *line = NULL;
              gsize line_len = 0;

              if (raw_wanted > 0)
                {
                  const guint8 *raw = NULL;
                  gsize n = pg_line_reader_take_raw (reader, raw_wanted, &raw);

                  if (n == 0)
                    break;
                  g_string_append_len (out, (const char *) raw, (gssize) n);
                  raw_wanted -= n;
                  if (raw_wanted == 0)
                    g_string_append_c (out, ']');
                  continue;
                }
              if (pg_line_reader_next (reader, &line, &line_len, NULL) != PG_LINE_READER_LINE)
                break;
              g_string_append_len (out, line, (gssize) line_len);
              g_string_append_c (out, '|');
              if (line_len >= 3 && line[line_len - 1] == '}')
                {
                  raw_wanted = (gsize) (line[line_len - 2] - '0');
                  literals++;
                  g_string_append_c (out, '[');
                }
            }
        }
      g_assert_cmpuint (literals, ==, 2);
      g_assert_cmpstr (out->str, ==, "a LOGIN {5}|[al\nce] {3}|[\r\n\r]|");
    }
}

/* Regression: a raw take followed by a compaction must keep the scan position sane. */
static void
pg_test_line_take_raw_then_compact (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (8);
  const char *line = NULL;
  gsize line_len = 0;
  const guint8 *raw = NULL;

  g_assert_cmpuint (pg_line_reader_feed (reader, "ab{3}\nxy", 8), ==, 8);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, NULL), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, line_len, "ab{3}", 5);
  g_assert_cmpuint (pg_line_reader_take_raw (reader, 3, &raw), ==, 2);
  g_assert_cmpmem (raw, 2, "xy", 2);
  g_assert_cmpuint (pg_line_reader_feed (reader, "z\nQ\n", 4), ==, 4);
  g_assert_cmpuint (pg_line_reader_take_raw (reader, 1, &raw), ==, 1);
  g_assert_cmpmem (raw, 1, "z", 1);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, NULL), ==, PG_LINE_READER_LINE);
  g_assert_cmpuint (line_len, ==, 0);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, NULL), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, line_len, "Q", 1);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &line_len, NULL), ==,
                   PG_LINE_READER_NEED_MORE);
}

/* peek and peek_at look ahead without taking anything; next() still returns every line. */
static void
pg_test_line_peek (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (64);
  g_autoptr (GError) error = NULL;
  const char *input = "RETR 1\r\nRETR 2\nRETR";
  const char *line = NULL;
  gsize len = 0;
  gsize offset = 0;

  g_assert_false (pg_line_reader_peek (reader, &line, &len));
  g_assert_cmpuint (pg_line_reader_feed (reader, input, strlen (input)), ==, strlen (input));
  g_assert_true (pg_line_reader_peek (reader, &line, &len));
  g_assert_cmpmem (line, len, "RETR 1", 6);
  g_assert_true (pg_line_reader_peek_at (reader, &offset, &line, &len));
  g_assert_cmpmem (line, len, "RETR 1", 6);
  g_assert_true (pg_line_reader_peek_at (reader, &offset, &line, &len));
  g_assert_cmpmem (line, len, "RETR 2", 6);
  /* "RETR" has no line end yet. */
  g_assert_false (pg_line_reader_peek_at (reader, &offset, &line, &len));
  g_assert_cmpint (pg_line_reader_next (reader, &line, &len, &error), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, len, "RETR 1", 6);
  offset = 0;
  g_assert_true (pg_line_reader_peek_at (reader, &offset, &line, &len));
  g_assert_cmpmem (line, len, "RETR 2", 6);
  g_assert_cmpint (pg_line_reader_next (reader, &line, &len, &error), ==, PG_LINE_READER_LINE);
  g_assert_cmpmem (line, len, "RETR 2", 6);
  g_assert_false (pg_line_reader_peek (reader, &line, &len));
  g_assert_no_error (error);
}

/* --- memory: the buffer follows what is buffered (an idle POP3 session holds a reader;
 * DESIGN.md: < 64 KiB per idle session) ------------------------------------------------ */

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

  pg_test_line_drain (reader, out);
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
  g_assert_cmpint (pg_line_reader_next (reader, &line, &len, &error), ==, PG_LINE_READER_NEED_MORE);
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
}

static void
test_alloc_partial_line_kept (void)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (64);
  g_autoptr (GString) out = g_string_new (NULL);

  g_assert_cmpuint (pg_line_reader_feed (reader, "RETR", 4), ==, 4);
  pg_test_line_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), >, 0);
  g_assert_cmpuint (pg_line_reader_get_buffered (reader), ==, 4);
  g_assert_cmpuint (pg_line_reader_feed (reader, " 1\r\n", 4), ==, 4);
  pg_test_line_drain (reader, out);
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
  pg_test_line_drain (reader, out);
  g_assert_cmpstr (out->str, ==, "E|");
  g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
  g_assert_cmpuint (pg_line_reader_feed (reader, "xxxx\r\nQUIT\r\n", 12), ==, 12);
  pg_test_line_drain (reader, out);
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
            pg_test_line_drain (reader, out);
            if (taken == 0)
              g_assert_cmpuint (pg_line_reader_get_space (reader), >, 0);
          }
        pg_test_line_drain (reader, out);
        g_assert_cmpstr (out->str, ==, expected->str);
        g_assert_cmpuint (pg_line_reader_get_allocated (reader), ==, 0);
      }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-line/basic", pg_test_line_basic);
  g_test_add_func ("/popgate/codec-line/capacity", pg_test_line_capacity);
  g_test_add_func ("/popgate/codec-line/too-long-recovers", pg_test_line_too_long_recovers);
  g_test_add_func ("/popgate/codec-line/back-pressure", pg_test_line_back_pressure);
  g_test_add_func ("/popgate/codec-line/discard-buffered", pg_test_line_discard_buffered);
  g_test_add_func ("/popgate/codec-line/take-raw", pg_test_line_take_raw);
  g_test_add_func ("/popgate/codec-line/peek", pg_test_line_peek);
  g_test_add_func ("/popgate/codec-line/take-raw-then-compact", pg_test_line_take_raw_then_compact);
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
