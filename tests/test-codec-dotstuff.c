/* Tests for the streaming dot-stuffer.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-dotstuff.h"

#include <string.h>

/* An obviously-correct, byte-at-a-time model of the rules in pg-codec-dotstuff.h. */
static GByteArray *
pg_test_dotstuff_model (const guint8 *data, gsize len, gboolean top, guint64 k)
{
  GByteArray *out = g_byte_array_new ();
  gboolean line_start = TRUE;
  gboolean in_body = FALSE;
  gboolean done = FALSE;

  for (gsize i = 0; i < len && !done; i++)
    {
      guint8 c = data[i];

      if (c == '\n' || (c == '\r' && i + 1 < len && data[i + 1] == '\n'))
        {
          if (c == '\r')
            i++;
          g_byte_array_append (out, (const guint8 *) "\r\n", 2);
          if (top)
            {
              if (!in_body && line_start)
                {
                  in_body = TRUE;
                  done = k == 0;
                }
              else if (in_body && --k == 0)
                done = TRUE;
            }
          line_start = TRUE;
          continue;
        }
      if (line_start && c == '.')
        g_byte_array_append (out, (const guint8 *) ".", 1);
      g_byte_array_append (out, &c, 1);
      line_start = FALSE;
    }
  if (!done && !line_start)
    g_byte_array_append (out, (const guint8 *) "\r\n", 2);
  g_byte_array_append (out, (const guint8 *) ".\r\n", 3);
  return out;
}

/* Feed in pieces given by a callback-free plan: sizes[] cycled; returns the output. */
static GByteArray *
pg_test_dotstuff_run (const guint8 *data, gsize len, const gsize *sizes, gsize n_sizes,
                      gboolean top, guint64 k, guint64 *out_in, guint64 *out_unstuffed)
{
  g_autoptr (PgDotStuffer) stuffer = top ? pg_dot_stuffer_new_top (k) : pg_dot_stuffer_new ();
  GByteArray *out = g_byte_array_new ();
  gsize pos = 0;
  gsize i = 0;

  while (pos < len)
    {
      gsize piece = MIN (sizes[i % n_sizes], len - pos);
      gsize taken = pg_dot_stuffer_feed (stuffer, data + pos, piece, out);

      if (pg_dot_stuffer_is_done (stuffer))
        {
          g_assert_true (top);
          g_assert_cmpuint (taken, <=, piece);
          g_assert_cmpuint (pg_dot_stuffer_feed (stuffer, data + pos + taken, piece - taken, out),
                            ==, 0);
          pos += taken;
          break;
        }
      g_assert_cmpuint (taken, ==, piece);
      pos += piece;
      i++;
    }
  pg_dot_stuffer_finish (stuffer, out);
  g_assert_cmpuint (pg_dot_stuffer_get_octets_in (stuffer), ==, pos);
  if (out_in != NULL)
    *out_in = pg_dot_stuffer_get_octets_in (stuffer);
  if (out_unstuffed != NULL)
    *out_unstuffed = pg_dot_stuffer_get_octets_unstuffed (stuffer);
  return out;
}

/* Whole, byte by byte, and split at every point: all equal the model (and `expected`,
 * when given). */
static void
pg_test_dotstuff_check_full (const char *input, gsize len, const char *expected, gboolean top,
                             guint64 k)
{
  const guint8 *data = (const guint8 *) input;
  g_autoptr (GByteArray) model = pg_test_dotstuff_model (data, len, top, k);
  gsize whole[] = { len > 0 ? len : 1 };
  gsize one[] = { 1 };
  g_autoptr (GByteArray) got_whole = pg_test_dotstuff_run (data, len, whole, 1, top, k, NULL, NULL);
  g_autoptr (GByteArray) got_bytes = pg_test_dotstuff_run (data, len, one, 1, top, k, NULL, NULL);

  if (expected != NULL)
    g_assert_cmpmem (model->data, model->len, expected, strlen (expected));
  g_assert_cmpmem (got_whole->data, got_whole->len, model->data, model->len);
  g_assert_cmpmem (got_bytes->data, got_bytes->len, model->data, model->len);
  for (gsize split = 1; split < len; split++)
    {
      gsize sizes[] = { split, len };
      g_autoptr (GByteArray) got = pg_test_dotstuff_run (data, len, sizes, 2, top, k, NULL, NULL);

      g_assert_cmpmem (got->data, got->len, model->data, model->len);
    }
}

static void
pg_test_dotstuff_check (const char *input, const char *expected)
{
  pg_test_dotstuff_check_full (input, strlen (input), expected, FALSE, 0);
}

static void
pg_test_dotstuff_dots (void)
{
  pg_test_dotstuff_check ("a\r\n.b\r\n..\r\n", "a\r\n..b\r\n...\r\n.\r\n");
  pg_test_dotstuff_check (".\r\n", "..\r\n.\r\n");
  pg_test_dotstuff_check ("x\r\n.\r\ny\r\n", "x\r\n..\r\ny\r\n.\r\n");
  pg_test_dotstuff_check ("a.b\r\n .\r\n", "a.b\r\n .\r\n.\r\n");
  pg_test_dotstuff_check (".", "..\r\n.\r\n");
  pg_test_dotstuff_check ("", ".\r\n");
}

static void
pg_test_dotstuff_line_ends (void)
{
  pg_test_dotstuff_check ("no final newline", "no final newline\r\n.\r\n");
  pg_test_dotstuff_check ("bare\nlf\n.dot\n", "bare\r\nlf\r\n..dot\r\n.\r\n");
  pg_test_dotstuff_check ("\n\n", "\r\n\r\n.\r\n");
  /* A bare CR is content and passes through unchanged (issue 19, item 10): the "." after
   * it does not start a line; a final bare CR gets the missing CRLF after it. */
  pg_test_dotstuff_check ("a\r.\r\nb\r", "a\r.\r\nb\r\r\n.\r\n");
  pg_test_dotstuff_check ("\r\r\n\r", "\r\r\n\r\r\n.\r\n");
  pg_test_dotstuff_check ("x\r", "x\r\r\n.\r\n");
  pg_test_dotstuff_check ("a\rb\r\n\r.x\r\n", "a\rb\r\n\r.x\r\n.\r\n");
  pg_test_dotstuff_check ("\r\n.\r\n", "\r\n..\r\n.\r\n");
}

static void
pg_test_dotstuff_cr_at_chunk_end (void)
{
  g_autoptr (PgDotStuffer) stuffer = pg_dot_stuffer_new ();
  g_autoptr (GByteArray) out = g_byte_array_new ();
  const char *expected = "a\r\n..b\r\n.\r\n";

  g_assert_cmpuint (pg_dot_stuffer_feed (stuffer, "a\r", 2, out), ==, 2);
  /* Nothing about the CR can be decided yet; the next chunk starts with its LF. */
  g_assert_cmpmem (out->data, out->len, "a", 1);
  g_assert_cmpuint (pg_dot_stuffer_feed (stuffer, "\n.b", 3, out), ==, 3);
  pg_dot_stuffer_finish (stuffer, out);
  g_assert_cmpmem (out->data, out->len, expected, strlen (expected));
}

static void
pg_test_dotstuff_eight_bit (void)
{
  static const char input[] = "\xff\xfe\0.\r\n.\x80\0\r\n\0";
  static const char expected[] = "\xff\xfe\0.\r\n..\x80\0\r\n\0\r\n.\r\n";

  pg_test_dotstuff_check_full (input, sizeof (input) - 1, NULL, FALSE, 0);
  {
    g_autoptr (GBytes) got = pg_dot_stuffer_stuff_all (input, sizeof (input) - 1);

    g_assert_cmpmem (g_bytes_get_data (got, NULL), g_bytes_get_size (got), expected,
                     sizeof (expected) - 1);
  }
}

static void
pg_test_dotstuff_long_lines (void)
{
  g_autoptr (GString) input = g_string_new (NULL);

  for (guint i = 0; i < 3; i++)
    {
      g_string_append_c (input, '.');
      for (guint j = 0; j < 1999; j++)
        g_string_append_c (input, (char) ('a' + (j % 26)));
      g_string_append (input, i == 1 ? "\n" : "\r\n");
    }
  pg_test_dotstuff_check_full (input->str, input->len, NULL, FALSE, 0);
}

/* A large message with every awkward feature, fed in random chunk sizes, gives exactly the
 * bytes it gives when fed whole; and the octet counters prove LIST size = RETR octets. */
static void
pg_test_dotstuff_random_chunks (void)
{
  g_autoptr (GByteArray) input = g_byte_array_new ();
  g_autoptr (GRand) rand = g_rand_new_with_seed (20261125);
  static const char *const pieces[] = { "\r\n", "\n", "\r", ".", "..", "text ", "\xe9", "\0" };
  gsize whole_size[1];
  g_autoptr (GByteArray) whole = NULL;
  g_autoptr (GByteArray) model = NULL;

  while (input->len < 256 * 1024)
    {
      const char *p = pieces[g_rand_int_range (rand, 0, G_N_ELEMENTS (pieces))];

      g_byte_array_append (input, (const guint8 *) p, p[0] == '\0' ? 1 : (guint) strlen (p));
    }
  whole_size[0] = input->len;
  whole = pg_test_dotstuff_run (input->data, input->len, whole_size, 1, FALSE, 0, NULL, NULL);
  model = pg_test_dotstuff_model (input->data, input->len, FALSE, 0);
  g_assert_cmpmem (whole->data, whole->len, model->data, model->len);

  for (guint round = 0; round < 20; round++)
    {
      gsize sizes[64];
      g_autoptr (GByteArray) got = NULL;

      for (guint i = 0; i < G_N_ELEMENTS (sizes); i++)
        sizes[i] = (gsize) g_rand_int_range (rand, 1, round < 10 ? 16 : 40000);
      got = pg_test_dotstuff_run (input->data, input->len, sizes, G_N_ELEMENTS (sizes), FALSE, 0,
                                  NULL, NULL);
      g_assert_cmpmem (got->data, got->len, whole->data, whole->len);
    }
}

static void
pg_test_dotstuff_octets (void)
{
  /* A CRLF message as IMAP delivers it: the unstuffed octets are RFC822.SIZE. */
  const char *message = "Subject: hi\r\n\r\n.dot\r\nbody\r\n..\r\n";
  gsize len = strlen (message);
  gsize sizes[] = { 3 };
  guint64 octets_in = 0;
  guint64 unstuffed = 0;
  g_autoptr (GByteArray) out = pg_test_dotstuff_run ((const guint8 *) message, len, sizes, 1, FALSE,
                                                     0, &octets_in, &unstuffed);

  g_assert_cmpuint (octets_in, ==, len);
  g_assert_cmpuint (unstuffed, ==, len);
  /* Two stuffed dots and the terminator come on top. */
  g_assert_cmpuint (out->len, ==, len + 2 + 3);

  /* With a repair, the count says what the client actually receives. */
  g_clear_pointer (&out, g_byte_array_unref);
  out = pg_test_dotstuff_run ((const guint8 *) "a\nb", 3, sizes, 1, FALSE, 0, &octets_in,
                              &unstuffed);
  g_assert_cmpuint (octets_in, ==, 3);
  g_assert_cmpuint (unstuffed, ==, 6);

  /* A bare CR is sent as it is: what the client gets is RFC822.SIZE (LIST's size). */
  g_clear_pointer (&out, g_byte_array_unref);
  out = pg_test_dotstuff_run ((const guint8 *) "a\rb\r\n", 5, sizes, 1, FALSE, 0, &octets_in,
                              &unstuffed);
  g_assert_cmpuint (unstuffed, ==, 5);
  g_assert_cmpmem (out->data, out->len, "a\rb\r\n.\r\n", 8);
}

static void
pg_test_dotstuff_top (void)
{
  const char *message = "From: a\r\nSubject: b\r\n\r\nl1\r\n.l2\r\nl3\r\n";

  pg_test_dotstuff_check_full (message, strlen (message), "From: a\r\nSubject: b\r\n\r\n.\r\n",
                               TRUE, 0);
  pg_test_dotstuff_check_full (message, strlen (message),
                               "From: a\r\nSubject: b\r\n\r\nl1\r\n..l2\r\n.\r\n", TRUE, 2);
  pg_test_dotstuff_check_full (message, strlen (message), NULL, TRUE, 3);
  pg_test_dotstuff_check_full (message, strlen (message),
                               "From: a\r\nSubject: b\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n", TRUE, 100);
  /* No blank line: the header is all there is. */
  pg_test_dotstuff_check_full ("From: a\nX: y", 12, "From: a\r\nX: y\r\n.\r\n", TRUE, 0);
  /* Bare LF line ends count as lines in TOP as everywhere; a bare CR is content. */
  pg_test_dotstuff_check_full ("H: 1\n\nb1\rb2\nb3\n", 15, "H: 1\r\n\r\nb1\rb2\r\nb3\r\n.\r\n",
                               TRUE, 2);
  pg_test_dotstuff_check_full ("H: 1\r\n\r\n", 8, "H: 1\r\n\r\n.\r\n", TRUE, 5);
}

static void
pg_test_dotstuff_top_stops_early (void)
{
  g_autoptr (PgDotStuffer) stuffer = pg_dot_stuffer_new_top (1);
  g_autoptr (GByteArray) out = g_byte_array_new ();
  const char *chunk = "H: v\r\n\r\nfirst\r\nsecond\r\nthird\r\n";
  const char *expected = "H: v\r\n\r\nfirst\r\n.\r\n";

  g_assert_cmpuint (pg_dot_stuffer_feed (stuffer, chunk, strlen (chunk), out), ==, 15);
  g_assert_true (pg_dot_stuffer_is_done (stuffer));
  g_assert_cmpuint (pg_dot_stuffer_feed (stuffer, "more", 4, out), ==, 0);
  pg_dot_stuffer_finish (stuffer, out);
  g_assert_cmpmem (out->data, out->len, expected, strlen (expected));
}

/* Every shape the stuffer treats specially, cut into three chunks at every pair of points
 * (so a boundary falls between CR and LF, right before a "." that starts a line, right after
 * a bare CR, and two boundaries fall next to each other): the bytes and both octet counters
 * equal those of the message fed in one chunk, for RETR and for TOP. */
static void
pg_test_dotstuff_every_boundary (void)
{
  static const char *const shapes[] = {
    "a\r\nb\r\n",         /* plain CRLF lines */
    ".a\r\n..\r\n.\r\n",  /* dots first on lines, first in the message */
    "a\r\n.\r\n.b",       /* a dot line, then an unterminated one */
    "bare\nlf\n.dot\n\n", /* bare LFs, a dot after one, an empty line */
    "a\r.b\r\n\r.\r\n",   /* a bare CR before a dot: not a line start */
    "\r\r\n\r\n.\r",      /* CRs in a row, a final bare CR */
    "x\r\n\r\n.y\r\nz",   /* header, blank line, body without a final CRLF */
    "no line end at all", "\n.\r\n\r.\n",
  };

  /* RETR, TOP 0 (the header only) and TOP 1. */
  static const struct
  {
    gboolean top;
    guint64 k;
  } modes[] = { { FALSE, 0 }, { TRUE, 0 }, { TRUE, 1 } };

  for (gsize i = 0; i < G_N_ELEMENTS (shapes); i++)
    for (gsize m = 0; m < G_N_ELEMENTS (modes); m++)
      {
        const guint8 *data = (const guint8 *) shapes[i];
        gsize len = strlen (shapes[i]);
        gboolean top = modes[m].top;
        guint64 k = modes[m].k;
        gsize whole[] = { len };
        guint64 in = 0, unstuffed = 0;
        g_autoptr (GByteArray) model = pg_test_dotstuff_model (data, len, top, k);
        g_autoptr (GByteArray) one
            = pg_test_dotstuff_run (data, len, whole, 1, top, k, &in, &unstuffed);

        g_assert_cmpmem (one->data, one->len, model->data, model->len);
        for (gsize a = 1; a < len; a++)
          for (gsize b = a; b < len; b++)
            {
              /* Chunks [0, a), [a, b) and [b, len); two chunks when a == b. */
              gsize sizes[3] = { a, b - a, len - b };
              gsize n_sizes = 3;
              guint64 got_in = 0, got_unstuffed = 0;
              g_autoptr (GByteArray) got = NULL;

              if (a == b)
                {
                  sizes[1] = len - a;
                  n_sizes = 2;
                }
              got = pg_test_dotstuff_run (data, len, sizes, n_sizes, top, k, &got_in,
                                          &got_unstuffed);
              g_assert_cmpmem (got->data, got->len, one->data, one->len);
              g_assert_cmpuint (got_in, ==, in);
              g_assert_cmpuint (got_unstuffed, ==, unstuffed);
            }
      }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-dotstuff/dots", pg_test_dotstuff_dots);
  g_test_add_func ("/popgate/codec-dotstuff/line-ends", pg_test_dotstuff_line_ends);
  g_test_add_func ("/popgate/codec-dotstuff/cr-at-chunk-end", pg_test_dotstuff_cr_at_chunk_end);
  g_test_add_func ("/popgate/codec-dotstuff/eight-bit", pg_test_dotstuff_eight_bit);
  g_test_add_func ("/popgate/codec-dotstuff/long-lines", pg_test_dotstuff_long_lines);
  g_test_add_func ("/popgate/codec-dotstuff/random-chunks", pg_test_dotstuff_random_chunks);
  g_test_add_func ("/popgate/codec-dotstuff/octets", pg_test_dotstuff_octets);
  g_test_add_func ("/popgate/codec-dotstuff/top", pg_test_dotstuff_top);
  g_test_add_func ("/popgate/codec-dotstuff/top-stops-early", pg_test_dotstuff_top_stops_early);
  g_test_add_func ("/popgate/codec-dotstuff/every-boundary", pg_test_dotstuff_every_boundary);
  return g_test_run ();
}
