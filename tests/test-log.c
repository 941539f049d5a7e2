/* Tests of the log helpers: peer text is escaped once, readably, and cannot forge an
 * escape; the redaction helpers hide secrets (before login: all but known command words
 * and USER's argument).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-core.h"

#include <string.h>

static void
test_log_escape (void)
{
  static const struct
  {
    const char *in;
    gsize len;
    const char *out;
  } cases[] = {
    { "UID STORE 18 +FLAGS.SILENT (\\Deleted)", 0, "UID STORE 18 +FLAGS.SILENT (\\Deleted)" },
    { "a\r\nb", 0, "a\\r\\nb" },
    { "\x01\xff", 2, "\\x01\\xff" },
    /* Text that looks like an escape is told apart from one. */
    { "\\x41", 0, "\\\\x41" },
    { "\\r", 0, "\\\\r" },
    { "\\\\", 0, "\\\\\\\\" },
    /* A backslash before an escaped byte, and at the very end. */
    { "\\\r", 0, "\\\\\\r" },
    { "end\\", 0, "end\\\\" },
    { "\\Seen \\Answered", 0, "\\Seen \\Answered" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      gsize len = cases[i].len != 0 ? cases[i].len : strlen (cases[i].in);
      g_autofree gchar *out = pg_log_escape (cases[i].in, len, 1000);

      g_assert_cmpstr (out, ==, cases[i].out);
    }
  {
    g_autofree gchar *cut = pg_log_escape ("abcdef", 6, 3);

    g_assert_cmpstr (cut, ==, "abc…(+3 bytes)");
  }
}

static const char *const pop3_words[] = { "USER", "PASS", "APOP", "AUTH", "CAPA", "QUIT", NULL };
static const char *const imap_words[]
    = { "CAPABILITY", "NOOP", "LOGIN", "AUTHENTICATE", "ID", NULL };

static void
check (const char *line, gboolean tagged, const char *expected)
{
  const char *const *known = tagged ? imap_words : pop3_words;
  g_autofree gchar *shown = pg_log_redact_preauth_line (line, strlen (line), tagged, known);

  g_assert_cmpstr (shown, ==, expected);
}

/* Issue 19 item 10: before login only known command words and USER's argument are shown;
 * a mistyped command or a password sent as a line never is. */
static void
test_redact_preauth_pop3 (void)
{
  check ("PASSS Secret3Typo", FALSE, "<unknown command> <redacted>");
  check ("Secret3Typo", FALSE, "<unknown command>");
  check ("PASS Secret3Typo", FALSE, "PASS <redacted>");
  check ("pass Secret3Typo and more", FALSE, "pass <redacted>");
  check ("USER alice@example.com#laptop", FALSE, "USER alice@example.com#laptop");
  check ("CAPA", FALSE, "CAPA");
  check ("CAPA Secret3Typo", FALSE, "CAPA <redacted>");
  check ("QUIT now", FALSE, "QUIT <redacted>");
  check ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", FALSE, "AUTH PLAIN <redacted>");
  check ("AUTH Secret3Typo", FALSE, "AUTH <redacted>");
  check ("AUTH XOAUTH2", FALSE, "AUTH XOAUTH2");
  check ("APOP alice c4c9334bac560ecc979e58001b3e22fb", FALSE, "APOP <redacted>");
  check ("", FALSE, "");
  /* Control bytes in a shown word are escaped, as everywhere. */
  check ("USER a\x01"
         "b",
         FALSE, "USER a\\x01b");
}

static void
test_redact_preauth_imap (void)
{
  check ("a1 LOGINN alice Secret3Typo", TRUE, "a1 <unknown command> <redacted>");
  check ("a1 LOGIN alice Secret3Typo", TRUE, "a1 LOGIN <redacted>");
  check ("a1 CAPABILITY", TRUE, "a1 CAPABILITY");
  check ("a1 NOOP Secret3Typo", TRUE, "a1 NOOP <redacted>");
  check ("a1 ID (\"name\" \"Secret3Typo\")", TRUE, "a1 ID <redacted>");
  check ("a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==", TRUE, "a1 AUTHENTICATE PLAIN <redacted>");
  check ("a1 AUTHENTICATE secret", TRUE, "a1 AUTHENTICATE <redacted>");
  check ("Secret3Typo", TRUE, "Secret3Typo");
  check ("a1", TRUE, "a1");
}

/* The hot paths' decimal formatter prints what printf prints, at both ends of the range. */
static void
test_format_decimal (void)
{
  static const guint64 values[] = { 0, 7, 10, 99, 1000, 4294967295u, G_MAXUINT64 };

  for (gsize i = 0; i < G_N_ELEMENTS (values); i++)
    {
      char out[PG_DECIMAL_MAX_LEN + 1];
      g_autofree gchar *expected = g_strdup_printf ("%" G_GUINT64_FORMAT, values[i]);
      gsize len = pg_format_decimal (out, values[i]);

      out[len] = '\0';
      g_assert_cmpstr (out, ==, expected);
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/log/escape", test_log_escape);
  g_test_add_func ("/popgate/log/format-decimal", test_format_decimal);
  g_test_add_func ("/popgate/log/redact-preauth-pop3", test_redact_preauth_pop3);
  g_test_add_func ("/popgate/log/redact-preauth-imap", test_redact_preauth_imap);
  return g_test_run ();
}
