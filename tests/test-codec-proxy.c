/* Tests for PgProxyParser: PROXY protocol v1 and v2 headers, valid and not, whole, byte by
 * byte and at every split point; the bytes after the header are never consumed.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-proxy.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

#define V2_SIG "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"

/* Feed `input` in pieces of `step` (0 = whole) and at split point `split` (0 = none).
 * Returns "v1 192.0.2.1:56324 -> 198.51.100.1:110 used=N", "v2 local used=N" or
 * "error <code>". */
static gchar *
pg_test_proxy_run (const guint8 *input, gsize len, gsize split, gsize step)
{
  g_autoptr (PgProxyParser) parser = pg_proxy_parser_new ();
  gsize pos = 0;

  g_assert_null (pg_proxy_parser_get_header (parser));
  while (pos < len)
    {
      g_autoptr (GError) error = NULL;
      gsize piece = len - pos;
      gsize used = G_MAXSIZE;
      PgProxyParserStatus status;

      if (split > 0 && pos < split)
        piece = split - pos;
      if (step > 0)
        piece = MIN (piece, step);
      status = pg_proxy_parser_feed (parser, input + pos, piece, &used, &error);
      if (status == PG_PROXY_PARSER_ERROR)
        {
          g_assert_nonnull (error);
          g_assert_true (error->domain == PG_ERROR);
          g_assert_null (pg_proxy_parser_get_header (parser));
          return g_strdup_printf ("error %d", error->code);
        }
      g_assert_no_error (error);
      if (status == PG_PROXY_PARSER_NEED_MORE)
        {
          g_assert_cmpuint (used, ==, G_MAXSIZE); /* written only on DONE */
          pos += piece;
          continue;
        }
      g_assert_cmpint (status, ==, PG_PROXY_PARSER_DONE);
      g_assert_cmpuint (used, >=, 1);
      g_assert_cmpuint (used, <=, piece);
      pos += used;
      {
        const PgProxyHeader *header = pg_proxy_parser_get_header (parser);
        g_autofree gchar *src = NULL;
        char dst[64] = "";

        g_assert_nonnull (header);
        if (header->local)
          {
            g_assert_cmpint (header->family, ==, PG_PROXY_FAMILY_NONE);
            g_assert_null (pg_proxy_header_source_to_string (header));
            return g_strdup_printf ("v%u local used=%zu", header->version, pos);
          }
        src = pg_proxy_header_source_to_string (header);
        g_assert_nonnull (src);
        if (header->family == PG_PROXY_FAMILY_INET)
          g_snprintf (dst, sizeof dst, "%u.%u.%u.%u", header->dst_addr[0], header->dst_addr[1],
                      header->dst_addr[2], header->dst_addr[3]);
        else
          g_snprintf (dst, sizeof dst, "v6");
        return g_strdup_printf ("v%u %s:%u -> %s:%u used=%zu", header->version, src,
                                header->src_port, dst, header->dst_port, pos);
      }
    }
  return g_strdup ("need-more");
}

/* Whole, byte by byte and at every split point give `expected`. */
static void
pg_test_proxy_check (const void *input, gsize len, const char *expected)
{
  g_autofree gchar *whole = pg_test_proxy_run (input, len, 0, 0);
  g_autofree gchar *bytewise = pg_test_proxy_run (input, len, 0, 1);

  g_assert_cmpstr (whole, ==, expected);
  g_assert_cmpstr (bytewise, ==, expected);
  for (gsize split = 1; split < len; split++)
    {
      g_autofree gchar *got = pg_test_proxy_run (input, len, split, 0);

      g_assert_cmpstr (got, ==, expected);
    }
}

#define CHECK_STR(s, expected) pg_test_proxy_check ((s), strlen (s), (expected))
#define CHECK_BIN(s, expected) pg_test_proxy_check ((s), sizeof (s) - 1, (expected))

static void
pg_test_proxy_v1 (void)
{
  CHECK_STR ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 110\r\n",
             "v1 192.0.2.1:56324 -> 198.51.100.1:110 used=45");
  /* What follows the header stays unread: a pipelined command or a TLS ClientHello. */
  CHECK_STR ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 110\r\nCAPA\r\n",
             "v1 192.0.2.1:56324 -> 198.51.100.1:110 used=45");
  CHECK_STR ("PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n",
             "v1 2001:db8::1:65535 -> v6:0 used=44");
  CHECK_STR ("PROXY UNKNOWN\r\n", "v1 local used=15");
  CHECK_STR ("PROXY UNKNOWN anything at all 1 2\r\nX", "v1 local used=35");
  /* The longest TCP6 line, and the longest line the spec allows (UNKNOWN with the same
   * fields): exactly PG_PROXY_V1_MAX_LINE octets. */
  CHECK_STR ("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
             "v1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:65535 -> v6:65535 used=104");
  {
    const char *longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    g_assert_cmpuint (strlen (longest), ==, PG_PROXY_V1_MAX_LINE);
    CHECK_STR (longest, "v1 local used=107");
  }
  /* Incomplete: nothing decided yet. */
  CHECK_STR ("PROXY TCP4 192.0.2.1", "need-more");
}

static void
pg_test_proxy_v1_invalid (void)
{
  g_autofree gchar *too_long = NULL;

  CHECK_STR ("USER alice\r\n", "error 0");
  CHECK_STR ("PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "error 0");
  CHECK_STR ("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "error 0");
  CHECK_STR ("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "error 0");
  CHECK_STR ("PROXY \r\n", "error 0");
  CHECK_STR ("PROXY\r\n", "error 0");
  {
    static const char nul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
    CHECK_BIN (nul, "error 0");
  }
  /* A line that does not end within 107 octets is refused at the 108th. */
  too_long = g_strdup_printf ("PROXY UNKNOWN %0*d\r\n", 200, 0);
  CHECK_STR (too_long, "error 1");
}

static void
pg_test_proxy_v2 (void)
{
  /* PROXY, TCP over IPv4, 12 address bytes: 192.0.2.1:56324 -> 198.51.100.1:995. */
  static const char inet[] = V2_SIG "\x21\x11\x00\x0C"
                                    "\xC0\x00\x02\x01\xC6\x33\x64\x01\xDC\x04\x03\xE3";
  /* The same followed by a TLS ClientHello's first bytes. */
  static const char inet_more[] = V2_SIG "\x21\x11\x00\x0C"
                                         "\xC0\x00\x02\x01\xC6\x33\x64\x01\xDC\x04\x03\xE3"
                                         "\x16\x03\x01";
  /* IPv6 2001:db8::1 port 1 -> ::1 port 110. */
  static const char inet6[]
      = V2_SIG "\x21\x21\x00\x24"
               "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
               "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
               "\x00\x01\x00\x6E";
  /* IPv4 with TLVs (ALPN "pop3", a unique id, a NOOP with padding): skipped. */
  static const char tlvs[] = V2_SIG "\x21\x11\x00\x21"
                                    "\x0A\x00\x00\x07\x0A\x00\x00\x01\x30\x39\x00\x6E"
                                    "\x01\x00\x04pop3"
                                    "\x05\x00\x05uniq1"
                                    "\x04\x00\x03\x00\x00\x00"
                                    "USER";
  /* LOCAL (a health check), with and without a payload. */
  static const char local[] = V2_SIG "\x20\x00\x00\x00";
  static const char local_payload[] = V2_SIG "\x20\x11\x00\x0C"
                                             "\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02"
                                             "CAPA";
  /* PROXY with UNSPEC or UNIX: no IP, keep the connection's. */
  static const char unspec[] = V2_SIG "\x21\x00\x00\x00";
  g_autofree gchar *unix_hdr = NULL;

  CHECK_BIN (inet, "v2 192.0.2.1:56324 -> 198.51.100.1:995 used=28");
  CHECK_BIN (inet_more, "v2 192.0.2.1:56324 -> 198.51.100.1:995 used=28");
  CHECK_BIN (inet6, "v2 2001:db8::1:1 -> v6:110 used=52");
  CHECK_BIN (tlvs, "v2 10.0.0.7:12345 -> 10.0.0.1:110 used=49");
  CHECK_BIN (local, "v2 local used=16");
  CHECK_BIN (local_payload, "v2 local used=28");
  CHECK_BIN (unspec, "v2 local used=16");

  /* UNIX stream, 216 address bytes. */
  unix_hdr = g_malloc0 (16 + 216);
  memcpy (unix_hdr, V2_SIG "\x21\x31\x00\xD8", 16);
  pg_test_proxy_check (unix_hdr, 16 + 216, "v2 local used=232");

  /* Header incomplete, payload incomplete. */
  CHECK_BIN (V2_SIG "\x21\x11\x00", "need-more");
  CHECK_BIN (V2_SIG "\x21\x11\x00\x0C\xC0\x00", "need-more");
}

static void
pg_test_proxy_v2_invalid (void)
{
  g_autofree guint8 *huge = NULL;
  gsize huge_len = 16 + PG_PROXY_V2_MAX_PAYLOAD + 1;

  /* A broken signature is refused at the first wrong byte. */
  CHECK_BIN ("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0B\x21\x11\x00\x00", "error 0");
  CHECK_BIN ("\r\nQUIT\r\n", "error 0");
  /* Version 1 in a v2 header; command 2; family 4; protocol 3. */
  CHECK_BIN (V2_SIG "\x11\x11\x00\x0C", "error 0");
  CHECK_BIN (V2_SIG "\x22\x11\x00\x0C", "error 0");
  CHECK_BIN (V2_SIG "\x21\x41\x00\x0C", "error 0");
  CHECK_BIN (V2_SIG "\x21\x13\x00\x0C", "error 0");
  /* UDP over IPv4 on a stream listener; IPv4 with UNSPEC protocol. */
  CHECK_BIN (V2_SIG "\x21\x12\x00\x0C", "error 0");
  CHECK_BIN (V2_SIG "\x21\x10\x00\x0C", "error 0");
  /* A payload shorter than the addresses of its family. */
  CHECK_BIN (V2_SIG "\x21\x11\x00\x0B", "error 0");
  CHECK_BIN (V2_SIG "\x21\x21\x00\x0C", "error 0");
  /* A payload over the limit is refused by the header alone, even for LOCAL. */
  huge = g_malloc0 (huge_len);
  memcpy (huge, V2_SIG "\x20\x00", 14);
  huge[14] = (guint8) ((PG_PROXY_V2_MAX_PAYLOAD + 1) >> 8);
  huge[15] = (guint8) ((PG_PROXY_V2_MAX_PAYLOAD + 1) & 0xFF);
  {
    g_autofree gchar *got = pg_test_proxy_run (huge, 16, 0, 1);
    g_assert_cmpstr (got, ==, "error 2");
  }
  /* Exactly at the limit is fine. */
  huge[15] = (guint8) (PG_PROXY_V2_MAX_PAYLOAD & 0xFF);
  huge[14] = (guint8) (PG_PROXY_V2_MAX_PAYLOAD >> 8);
  {
    g_autofree gchar *got = pg_test_proxy_run (huge, huge_len, 0, 7);
    g_autofree gchar *expected = g_strdup_printf ("v2 local used=%d", 16 + PG_PROXY_V2_MAX_PAYLOAD);
    g_assert_cmpstr (got, ==, expected);
  }
}

/* After DONE or ERROR the parser takes nothing more. */
static void
pg_test_proxy_finished (void)
{
  g_autoptr (PgProxyParser) parser = pg_proxy_parser_new ();
  g_autoptr (GError) error = NULL;
  gsize used = 0;

  g_assert_cmpint (pg_proxy_parser_feed (parser, "PROXY UNKNOWN\r\n", 15, &used, &error), ==,
                   PG_PROXY_PARSER_DONE);
  g_assert_no_error (error);
  g_assert_cmpuint (used, ==, 15);
  if (g_test_undefined ())
    {
      g_test_expect_message ("popgate", G_LOG_LEVEL_CRITICAL, "*state*");
      g_assert_cmpint (pg_proxy_parser_feed (parser, "X", 1, &used, &error), ==,
                       PG_PROXY_PARSER_ERROR);
      g_test_assert_expected_messages ();
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-proxy/v1", pg_test_proxy_v1);
  g_test_add_func ("/popgate/codec-proxy/v1-invalid", pg_test_proxy_v1_invalid);
  g_test_add_func ("/popgate/codec-proxy/v2", pg_test_proxy_v2);
  g_test_add_func ("/popgate/codec-proxy/v2-invalid", pg_test_proxy_v2_invalid);
  g_test_add_func ("/popgate/codec-proxy/finished", pg_test_proxy_finished);
  return g_test_run ();
}
