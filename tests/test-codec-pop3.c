/* Tests for the POP3 command parser.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-line.h"
#include "popgate/pg-codec-pop3.h"
#include "popgate/pg-limits.h"

#include <string.h>

static PgPop3ParseResult
pg_test_pop3_parse (const char *line, PgPop3Command *out_command)
{
  return pg_pop3_command_parse (line, strlen (line), out_command);
}

static void
pg_test_pop3_expect (const char *line, PgPop3ParseResult expected_result,
                     PgPop3CommandKind expected_kind)
{
  g_auto (PgPop3Command) command = { 0 };
  PgPop3ParseResult result = pg_test_pop3_parse (line, &command);

  if (result != expected_result || command.kind != expected_kind)
    g_test_message ("line \"%s\": result %s kind %s", line, pg_pop3_parse_result_to_string (result),
                    pg_pop3_command_kind_to_string (command.kind));
  g_assert_cmpint (result, ==, expected_result);
  g_assert_cmpint (command.kind, ==, expected_kind);
  if (result != PG_POP3_PARSE_OK)
    {
      g_assert_null (command.arg1);
      g_assert_null (command.arg2);
    }
}

static void
pg_test_pop3_keywords (void)
{
  static const struct
  {
    const char *line;
    PgPop3CommandKind kind;
  } cases[] = {
    { "USER alice", PG_POP3_COMMAND_USER }, { "pass x", PG_POP3_COMMAND_PASS },
    { "ApOp a b", PG_POP3_COMMAND_APOP },   { "AUTH", PG_POP3_COMMAND_AUTH },
    { "stls", PG_POP3_COMMAND_STLS },       { "CAPA", PG_POP3_COMMAND_CAPA },
    { "QUIT", PG_POP3_COMMAND_QUIT },       { "stat", PG_POP3_COMMAND_STAT },
    { "LIST", PG_POP3_COMMAND_LIST },       { "uidl", PG_POP3_COMMAND_UIDL },
    { "RETR 1", PG_POP3_COMMAND_RETR },     { "top 1 0", PG_POP3_COMMAND_TOP },
    { "DELE 1", PG_POP3_COMMAND_DELE },     { "RSET", PG_POP3_COMMAND_RSET },
    { "NOOP", PG_POP3_COMMAND_NOOP },       { "utf8", PG_POP3_COMMAND_UTF8 },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    pg_test_pop3_expect (cases[i].line, PG_POP3_PARSE_OK, cases[i].kind);

  pg_test_pop3_expect ("", PG_POP3_PARSE_UNKNOWN_COMMAND, PG_POP3_COMMAND_UNKNOWN);
  pg_test_pop3_expect ("XTND XMIT", PG_POP3_PARSE_UNKNOWN_COMMAND, PG_POP3_COMMAND_UNKNOWN);
  pg_test_pop3_expect ("RETRX 1", PG_POP3_PARSE_UNKNOWN_COMMAND, PG_POP3_COMMAND_UNKNOWN);
  pg_test_pop3_expect ("RET 1", PG_POP3_PARSE_UNKNOWN_COMMAND, PG_POP3_COMMAND_UNKNOWN);
  pg_test_pop3_expect (" STAT", PG_POP3_PARSE_UNKNOWN_COMMAND, PG_POP3_COMMAND_UNKNOWN);
  pg_test_pop3_expect ("STAT\t", PG_POP3_PARSE_BAD_CHARACTER, PG_POP3_COMMAND_UNKNOWN);

  g_assert_cmpstr (pg_pop3_command_kind_to_string (PG_POP3_COMMAND_TOP), ==, "TOP");
  g_assert_cmpstr (pg_pop3_parse_result_to_string (PG_POP3_PARSE_BAD_NUMBER), ==,
                   "Invalid message number");
}

static void
pg_test_pop3_argument_counts (void)
{
  pg_test_pop3_expect ("USER", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_USER);
  pg_test_pop3_expect ("USER a b", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_USER);
  pg_test_pop3_expect ("PASS", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_PASS);
  pg_test_pop3_expect ("PASS ", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_PASS);
  pg_test_pop3_expect ("APOP a", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_APOP);
  pg_test_pop3_expect ("APOP a b c", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_APOP);
  pg_test_pop3_expect ("AUTH PLAIN", PG_POP3_PARSE_OK, PG_POP3_COMMAND_AUTH);
  pg_test_pop3_expect ("AUTH PLAIN AGFAAGI=", PG_POP3_PARSE_OK, PG_POP3_COMMAND_AUTH);
  pg_test_pop3_expect ("AUTH PLAIN a b", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_AUTH);
  pg_test_pop3_expect ("STLS x", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_STLS);
  pg_test_pop3_expect ("CAPA x", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_CAPA);
  pg_test_pop3_expect ("QUIT now", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_QUIT);
  pg_test_pop3_expect ("STAT 1", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_STAT);
  pg_test_pop3_expect ("LIST 1 2", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_LIST);
  pg_test_pop3_expect ("UIDL 1 2", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_UIDL);
  pg_test_pop3_expect ("RETR", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_RETR);
  pg_test_pop3_expect ("RETR 1 2", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_RETR);
  pg_test_pop3_expect ("TOP 1", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_TOP);
  pg_test_pop3_expect ("TOP 1 2 3", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_TOP);
  pg_test_pop3_expect ("DELE", PG_POP3_PARSE_MISSING_ARGUMENT, PG_POP3_COMMAND_DELE);
  pg_test_pop3_expect ("RSET 1", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_RSET);
  pg_test_pop3_expect ("NOOP 1", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_NOOP);
  pg_test_pop3_expect ("UTF8 x", PG_POP3_PARSE_TOO_MANY_ARGUMENTS, PG_POP3_COMMAND_UTF8);
  /* Extra spaces between and after arguments are tolerated. */
  pg_test_pop3_expect ("RETR  7 ", PG_POP3_PARSE_OK, PG_POP3_COMMAND_RETR);
  pg_test_pop3_expect ("STAT ", PG_POP3_PARSE_OK, PG_POP3_COMMAND_STAT);
}

static void
pg_test_pop3_numbers (void)
{
  g_auto (PgPop3Command) command = { 0 };

  g_assert_cmpint (pg_test_pop3_parse ("RETR 4294967295", &command), ==, PG_POP3_PARSE_OK);
  g_assert_true (command.has_message);
  g_assert_cmpuint (command.message, ==, G_MAXUINT32);
  pg_pop3_command_clear (&command);

  g_assert_cmpint (pg_test_pop3_parse ("TOP 12 0", &command), ==, PG_POP3_PARSE_OK);
  g_assert_cmpuint (command.message, ==, 12);
  g_assert_cmpuint (command.lines, ==, 0);
  pg_pop3_command_clear (&command);

  g_assert_cmpint (pg_test_pop3_parse ("LIST", &command), ==, PG_POP3_PARSE_OK);
  g_assert_false (command.has_message);
  pg_pop3_command_clear (&command);

  g_assert_cmpint (pg_test_pop3_parse ("uidl 007", &command), ==, PG_POP3_PARSE_OK);
  g_assert_true (command.has_message);
  g_assert_cmpuint (command.message, ==, 7);
  pg_pop3_command_clear (&command);

  {
    const char *bad[] = { "RETR 0",
                          "RETR -1",
                          "RETR +1",
                          "RETR 1a",
                          "RETR 0x1",
                          "RETR 4294967296",
                          "RETR 99999999999999999999999",
                          "DELE 00",
                          "LIST 1.0",
                          "TOP 1 -1",
                          "TOP 0 1",
                          "TOP 1 4294967296",
                          "UIDL ٣" };

    for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
      {
        g_auto (PgPop3Command) c = { 0 };

        g_test_message ("%s", bad[i]);
        g_assert_cmpint (pg_test_pop3_parse (bad[i], &c), ==, PG_POP3_PARSE_BAD_NUMBER);
        g_assert_false (c.has_message);
      }
  }
}

static void
pg_test_pop3_arguments (void)
{
  g_auto (PgPop3Command) command = { 0 };

  g_assert_cmpint (pg_test_pop3_parse ("USER alice@example.com#laptop", &command), ==,
                   PG_POP3_PARSE_OK);
  g_assert_cmpstr (command.arg1, ==, "alice@example.com#laptop");
  g_assert_null (command.arg2);
  pg_pop3_command_clear (&command);

  /* PASS keeps everything after the first space, spaces included. */
  g_assert_cmpint (pg_test_pop3_parse ("PASS  my secret pass ", &command), ==, PG_POP3_PARSE_OK);
  g_assert_cmpstr (command.arg1, ==, " my secret pass ");
  pg_pop3_command_clear (&command);

  g_assert_cmpint (pg_test_pop3_parse ("APOP mrose c4c9334bac560ecc979e58001b3e22fb", &command), ==,
                   PG_POP3_PARSE_OK);
  g_assert_cmpstr (command.arg1, ==, "mrose");
  g_assert_cmpstr (command.arg2, ==, "c4c9334bac560ecc979e58001b3e22fb");
  pg_pop3_command_clear (&command);

  g_assert_cmpint (pg_test_pop3_parse ("AUTH PLAIN =", &command), ==, PG_POP3_PARSE_OK);
  g_assert_cmpstr (command.arg1, ==, "PLAIN");
  g_assert_cmpstr (command.arg2, ==, "=");
  pg_pop3_command_clear (&command);

  /* 8-bit passwords are fine; control bytes are not. */
  g_assert_cmpint (pg_test_pop3_parse ("PASS p\xc3\xa4ss", &command), ==, PG_POP3_PARSE_OK);
  pg_pop3_command_clear (&command);
  g_assert_cmpint (pg_pop3_command_parse ("PASS a\0b", 8, &command), ==,
                   PG_POP3_PARSE_BAD_CHARACTER);
  g_assert_cmpint (command.kind, ==, PG_POP3_COMMAND_PASS);
  g_assert_null (command.arg1);
  pg_pop3_command_clear (&command);
  g_assert_cmpint (pg_test_pop3_parse ("USER a\rb", &command), ==, PG_POP3_PARSE_BAD_CHARACTER);
  pg_pop3_command_clear (&command);
}

/* A pipelined client: the commands, framed by PgLineReader, fed byte by byte and at every
 * split point, parse the same every time. */
static void
pg_test_pop3_pipelined_split (void)
{
  const char *script = "CAPA\r\nUSER a\r\nPASS b c\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 2 10\n"
                       "DELE 1\r\nRETR 0\r\nXYZZY\r\nQUIT\r\n";
  static const PgPop3CommandKind expected[] = {
    PG_POP3_COMMAND_CAPA, PG_POP3_COMMAND_USER,    PG_POP3_COMMAND_PASS, PG_POP3_COMMAND_STAT,
    PG_POP3_COMMAND_LIST, PG_POP3_COMMAND_RETR,    PG_POP3_COMMAND_TOP,  PG_POP3_COMMAND_DELE,
    PG_POP3_COMMAND_RETR, PG_POP3_COMMAND_UNKNOWN, PG_POP3_COMMAND_QUIT,
  };
  gsize len = strlen (script);

  for (gsize step = 1; step <= len; step++)
    {
      g_autoptr (PgLineReader) reader = pg_line_reader_new (PG_POP3_MAX_COMMAND_LINE);
      gsize n = 0;
      guint errors = 0;

      for (gsize pos = 0; pos < len; pos += step)
        {
          const char *line = NULL;
          gsize line_len = 0;
          gsize piece = MIN (step, len - pos);

          g_assert_cmpuint (pg_line_reader_feed (reader, script + pos, piece), ==, piece);
          while (pg_line_reader_next (reader, &line, &line_len, NULL) == PG_LINE_READER_LINE)
            {
              g_auto (PgPop3Command) command = { 0 };

              if (pg_pop3_command_parse (line, line_len, &command) != PG_POP3_PARSE_OK)
                errors++;
              g_assert_cmpuint (n, <, G_N_ELEMENTS (expected));
              g_assert_cmpint (command.kind, ==, expected[n]);
              n++;
            }
        }
      g_assert_cmpuint (n, ==, G_N_ELEMENTS (expected));
      g_assert_cmpuint (errors, ==, 2);
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-pop3/keywords", pg_test_pop3_keywords);
  g_test_add_func ("/popgate/codec-pop3/argument-counts", pg_test_pop3_argument_counts);
  g_test_add_func ("/popgate/codec-pop3/numbers", pg_test_pop3_numbers);
  g_test_add_func ("/popgate/codec-pop3/arguments", pg_test_pop3_arguments);
  g_test_add_func ("/popgate/codec-pop3/pipelined-split", pg_test_pop3_pipelined_split);
  return g_test_run ();
}
