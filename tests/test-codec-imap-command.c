/* Tests for the pre-auth IMAP command parser and the relay scanner.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-imap-command.h"
#include "popgate/pg-codec-line.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

static void
pg_test_imap_append_arg (GString *out, const PgImapArg *arg)
{
  switch (arg->type)
    {
    case PG_IMAP_ARG_ATOM:
      g_string_append_printf (out, "A(%s)", arg->value);
      break;
    case PG_IMAP_ARG_QUOTED:
      g_string_append_printf (out, "Q(%s)", arg->value);
      break;
    case PG_IMAP_ARG_LITERAL:
      g_string_append (out, "L(");
      g_string_append_len (out, arg->value, (gssize) arg->len);
      g_string_append (out, ")");
      break;
    case PG_IMAP_ARG_LIST:
      g_string_append_c (out, '(');
      for (guint i = 0; i < arg->list->len; i++)
        {
          if (i > 0)
            g_string_append_c (out, ' ');
          pg_test_imap_append_arg (out, arg->list->pdata[i]);
        }
      g_string_append_c (out, ')');
      break;
    }
}

/* Drive a PgLineReader and the parser as the front end will, feeding the input in pieces
 * of `step` octets (0 = whole) or split once at `split`; describe what happened:
 * "+" for a continuation request, "C:<tag> <KIND> <args>" for a command, "E:<tag>:<code>"
 * for an error. Stops at a LIMIT error (the front end closes the connection). */
static gchar *
pg_test_imap_run (const char *input, gsize len, gsize split, gsize step)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (PG_IMAP_MAX_PREAUTH_LINE);
  g_autoptr (PgImapCommandParser) parser = pg_imap_command_parser_new ();
  g_autoptr (GString) out = g_string_new (NULL);
  gboolean in_literal = FALSE;
  gboolean closed = FALSE;
  gsize pos = 0;

  while (pos < len && !closed)
    {
      gsize piece = len - pos;

      if (split > 0 && pos < split)
        piece = split - pos;
      if (step > 0)
        piece = MIN (piece, step);
      pos += pg_line_reader_feed (reader, input + pos, piece);

      while (!closed)
        {
          g_autoptr (GError) error = NULL;
          const char *line = NULL;
          gsize line_len = 0;
          PgImapParseStatus status;

          if (in_literal)
            {
              const guint8 *raw = NULL;
              gsize want = pg_imap_command_parser_get_literal_remaining (parser);
              gsize n = pg_line_reader_take_raw (reader, want, &raw);
              gsize taken = 0;

              if (n == 0 && want > 0)
                break;
              status = pg_imap_command_parser_feed_literal (parser, raw, n, &taken);
              g_assert_cmpuint (taken, ==, n);
              in_literal = status == PG_IMAP_PARSE_NEED_LITERAL;
              continue;
            }

          if (pg_line_reader_next (reader, &line, &line_len, &error) != PG_LINE_READER_LINE)
            {
              g_assert_no_error (error);
              break;
            }
          status = pg_imap_command_parser_feed_line (parser, line, line_len, &error);
          switch (status)
            {
            case PG_IMAP_PARSE_NEED_LINE:
              g_assert_no_error (error);
              break;
            case PG_IMAP_PARSE_NEED_LITERAL:
              g_assert_no_error (error);
              if (pg_imap_command_parser_is_literal_sync (parser))
                g_string_append (out, "+|");
              in_literal = TRUE;
              break;
            case PG_IMAP_PARSE_COMPLETE:
              {
                g_autoptr (PgImapCommand) command = pg_imap_command_parser_take_command (parser);

                g_assert_no_error (error);
                g_assert_nonnull (command);
                g_string_append_printf (out, "C:%s %s", command->tag,
                                        pg_imap_command_kind_to_string (command->kind));
                for (guint i = 0; i < command->args->len; i++)
                  {
                    g_string_append_c (out, ' ');
                    pg_test_imap_append_arg (out, command->args->pdata[i]);
                  }
                g_string_append_c (out, '|');
              }
              break;
            case PG_IMAP_PARSE_ERROR:
              g_assert_nonnull (error);
              g_assert_true (error->domain == PG_ERROR);
              g_string_append_printf (out, "E:%s:%s|",
                                      pg_imap_command_parser_get_tag (parser) != NULL
                                          ? pg_imap_command_parser_get_tag (parser)
                                          : "*",
                                      error->code == PG_ERROR_LIMIT ? "limit" : "protocol");
              if (error->code == PG_ERROR_LIMIT)
                closed = TRUE;
              break;
            }
        }
    }
  return g_string_free (g_steal_pointer (&out), FALSE);
}

static void
pg_test_imap_check_len (const char *input, gsize len, const char *expected)
{
  g_autofree gchar *whole = pg_test_imap_run (input, len, 0, 0);
  g_autofree gchar *bytewise = pg_test_imap_run (input, len, 0, 1);

  g_assert_cmpstr (whole, ==, expected);
  g_assert_cmpstr (bytewise, ==, expected);
  for (gsize split = 1; split < len; split++)
    {
      g_autofree gchar *got = pg_test_imap_run (input, len, split, 0);

      g_assert_cmpstr (got, ==, expected);
    }
}

static void
pg_test_imap_check (const char *input, const char *expected)
{
  pg_test_imap_check_len (input, strlen (input), expected);
}

static void
pg_test_imap_simple (void)
{
  pg_test_imap_check ("a1 CAPABILITY\r\nA2 noop\r\nz.3 Logout\n",
                      "C:a1 CAPABILITY|C:A2 NOOP|C:z.3 LOGOUT|");
  pg_test_imap_check ("t STARTTLS\r\n", "C:t STARTTLS|");
  pg_test_imap_check ("a LOGIN alice s3cr]t\r\n", "C:a LOGIN A(alice) A(s3cr]t)|");
  pg_test_imap_check ("a SELECT INBOX\r\n", "C:a UNKNOWN A(INBOX)|");
  pg_test_imap_check ("a NOOP\r\n\r\nb NOOP\r\n", "C:a NOOP|E:*:protocol|C:b NOOP|");
}

static void
pg_test_imap_quoted (void)
{
  pg_test_imap_check ("a LOGIN \"al ice\" \"p\\\"w\\\\d\"\r\n", "C:a LOGIN Q(al ice) Q(p\"w\\d)|");
  pg_test_imap_check ("a LOGIN \"\" \"\"\r\n", "C:a LOGIN Q() Q()|");
  pg_test_imap_check ("a LOGIN \"x\r\nb NOOP\r\n", "E:a:protocol|C:b NOOP|");
  pg_test_imap_check ("a LOGIN \"x\\q\" y\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN \"x\"y z\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN \"\xc3\xa9\" z\r\n", "C:a LOGIN Q(\xc3\xa9) A(z)|");
}

static void
pg_test_imap_literals (void)
{
  pg_test_imap_check ("a LOGIN {5}\r\nalice {6}\r\nse cr\n\r\n",
                      "+|+|C:a LOGIN L(alice) L(se cr\n)|");
  /* LITERAL+: no continuation request. */
  pg_test_imap_check ("a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", "C:a LOGIN L(alice) L(secret)|");
  pg_test_imap_check ("a LOGIN {0}\r\n {0+}\r\n\r\n", "+|C:a LOGIN L() L()|");
  pg_test_imap_check ("a LOGIN {5}x\r\nb NOOP\r\n", "E:a:protocol|C:b NOOP|");
  pg_test_imap_check ("a LOGIN {}\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN {-1}\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN {4097}\r\nb NOOP\r\n", "E:a:limit|");
  pg_test_imap_check ("a LOGIN {99999999999999999999999}\r\n", "E:a:limit|");
  pg_test_imap_check ("a LOGIN {2}\r\nab\r\n", "+|E:a:protocol|");
}

static void
pg_test_imap_authenticate_id (void)
{
  pg_test_imap_check ("a AUTHENTICATE PLAIN\r\n", "C:a AUTHENTICATE A(PLAIN)|");
  pg_test_imap_check ("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
                      "C:a AUTHENTICATE A(PLAIN) A(AGFsaWNlAHNlY3JldA==)|");
  pg_test_imap_check ("a AUTHENTICATE PLAIN =\r\n", "C:a AUTHENTICATE A(PLAIN) A(=)|");
  pg_test_imap_check ("a AUTHENTICATE\r\n", "E:a:protocol|");
  pg_test_imap_check ("a AUTHENTICATE \"PLAIN\"\r\n", "E:a:protocol|");
  pg_test_imap_check ("a ID NIL\r\n", "C:a ID A(NIL)|");
  pg_test_imap_check ("a ID (\"name\" \"mutt\" \"version\" NIL)\r\n",
                      "C:a ID (Q(name) Q(mutt) Q(version) A(NIL))|");
  pg_test_imap_check ("a ID ()\r\n", "C:a ID ()|");
  pg_test_imap_check ("a ID (\"name\" {4}\r\nmutt)\r\n", "+|C:a ID (Q(name) L(mutt))|");
  pg_test_imap_check ("a ID (\"name\")\r\n", "E:a:protocol|");
  pg_test_imap_check ("a ID ((\"a\" \"b\"))\r\n", "E:a:protocol|");
  pg_test_imap_check ("a ID (\"a\" \"b\"\r\n", "E:a:protocol|");
  pg_test_imap_check ("a ID \"a\")\r\n", "E:a:protocol|");
  pg_test_imap_check ("a X (((a)))\r\n", "E:a:limit|");
}

static void
pg_test_imap_syntax_errors (void)
{
  pg_test_imap_check ("a\r\n", "E:a:protocol|");
  pg_test_imap_check ("+ NOOP\r\n", "E:*:protocol|");
  pg_test_imap_check ("a* NOOP\r\n", "E:a:protocol|");
  pg_test_imap_check ("a NOOP x\r\n", "E:a:protocol|");
  pg_test_imap_check ("a NOOP \r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN x  y\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN x y \r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN x\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN x y z\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN (x) y\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOG-IN x y\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN x y)\r\n", "E:a:protocol|");
  pg_test_imap_check ("a LOGIN x%y z\r\n", "E:a:protocol|");
  pg_test_imap_check_len ("a LOGIN x\0 y\r\nb NOOP\r\n", 22, "E:a:protocol|C:b NOOP|");
}

static void
pg_test_imap_limits (void)
{
  g_autoptr (GString) input = g_string_new ("a X");
  g_autofree gchar *got = NULL;
  g_autofree gchar *literal = g_strnfill (PG_IMAP_MAX_PREAUTH_LITERAL, 'x');

  for (guint i = 0; i < PG_IMAP_MAX_PREAUTH_ARGS; i++)
    g_string_append (input, " y");
  g_string_append (input, "\r\n");
  got = pg_test_imap_run (input->str, input->len, 0, 0);
  g_assert_true (g_str_has_prefix (got, "C:a UNKNOWN"));
  g_clear_pointer (&got, g_free);

  g_string_truncate (input, input->len - 2);
  g_string_append (input, " y\r\n");
  got = pg_test_imap_run (input->str, input->len, 0, 0);
  g_assert_cmpstr (got, ==, "E:a:limit|");
  g_clear_pointer (&got, g_free);

  /* Literals of the largest size, but too many of them for one command. */
  g_string_assign (input, "a LOGIN");
  for (guint i = 0; i <= PG_IMAP_MAX_PREAUTH_COMMAND / PG_IMAP_MAX_PREAUTH_LITERAL; i++)
    g_string_append_printf (input, " {%u+}\r\n%s", PG_IMAP_MAX_PREAUTH_LITERAL, literal);
  g_string_append (input, "\r\n");
  got = pg_test_imap_run (input->str, input->len, 0, 0);
  g_assert_cmpstr (got, ==, "E:a:limit|");
  g_clear_pointer (&got, g_free);

  /* A line longer than the line limit is the line reader's LINE_TOO_LONG, not ours. */
}

static void
pg_test_imap_secrets_wiped (void)
{
  /* Freeing goes through pg_secret_wipe; here we just check the values are reachable and
   * that a parser dropped mid-literal frees everything (LSan checks the rest). */
  g_autoptr (PgImapCommandParser) parser = pg_imap_command_parser_new ();
  const char *line = "a LOGIN alice {6}";
  gsize taken = 0;

  g_assert_cmpint (pg_imap_command_parser_feed_line (parser, line, strlen (line), NULL), ==,
                   PG_IMAP_PARSE_NEED_LITERAL);
  g_assert_cmpstr (pg_imap_command_parser_get_tag (parser), ==, "a");
  g_assert_cmpuint (pg_imap_command_parser_get_literal_remaining (parser), ==, 6);
  g_assert_cmpint (pg_imap_command_parser_feed_literal (parser, "sec", 3, &taken), ==,
                   PG_IMAP_PARSE_NEED_LITERAL);
  g_assert_cmpuint (taken, ==, 3);
  g_assert_cmpuint (pg_imap_command_parser_get_literal_remaining (parser), ==, 3);
  pg_imap_command_parser_reset (parser);
  g_assert_null (pg_imap_command_parser_get_tag (parser));
}

/* --- relay scanner --- */

static gchar *
pg_test_relay_run (const char *input, gsize len, gsize split, gsize step)
{
  g_autoptr (PgImapRelayScanner) scanner = pg_imap_relay_scanner_new ();
  g_autoptr (GString) out = g_string_new (NULL);
  guint64 octets = 0;
  gsize pos = 0;

  while (pos < len)
    {
      gsize piece = len - pos;
      gsize off = 0;

      if (split > 0 && pos < split)
        piece = split - pos;
      if (step > 0)
        piece = MIN (piece, step);
      while (off < piece)
        {
          gboolean complete = FALSE;
          const PgImapRelayCommand *command = NULL;
          gsize n = pg_imap_relay_scanner_scan (scanner, input + pos + off, piece - off, &complete,
                                                &command);

          g_assert_cmpuint (n, >, 0);
          off += n;
          if (!complete)
            {
              g_assert_cmpuint (off, ==, piece);
              break;
            }
          g_string_append_printf (out, "%s/%s/%s/%u|", command->tag, command->word,
                                  command->argument != NULL ? command->argument : "-",
                                  command->n_literals);
          octets += command->octets;
        }
      pos += piece;
    }
  g_string_append_printf (out, "%" G_GUINT64_FORMAT, octets);
  return g_string_free (g_steal_pointer (&out), FALSE);
}

static void
pg_test_relay_scanner (void)
{
  const char *input = "a1 SELECT INBOX\r\n"
                      "a2 examine \"Sent \\\"Mail\\\"\"\r\n"
                      "a3 UID fetch 1:* (FLAGS)\r\n"
                      "a4 APPEND Drafts (\\Seen) {12}\r\nline1\r\n{5}\r\n\r\n"
                      "a5 SELECT {7+}\r\nArchive\r\n"
                      "a6 IDLE\r\n"
                      "DONE\r\n"
                      "a7 LOGIN x {3}\r\n}\r\n\r\n"
                      "a8 NOOP\n"
                      "a9 LOGOUT\r\n";
  const char *expected = "a1/SELECT/INBOX/0|a2/EXAMINE/Sent \"Mail\"/0|"
                         "a3/UID FETCH/1:*/0|a4/APPEND/Drafts/1|a5/SELECT/Archive/1|"
                         "a6/IDLE/-/0|DONE//-/0|a7/LOGIN/x/1|a8/NOOP/-/0|a9/LOGOUT/-/0|";
  gsize len = strlen (input);
  g_autofree gchar *expected_full = g_strdup_printf ("%s%" G_GSIZE_FORMAT, expected, len);
  g_autofree gchar *whole = pg_test_relay_run (input, len, 0, 0);
  g_autofree gchar *bytewise = pg_test_relay_run (input, len, 0, 1);

  g_assert_cmpstr (whole, ==, expected_full);
  g_assert_cmpstr (bytewise, ==, expected_full);
  for (gsize split = 1; split < len; split++)
    {
      g_autofree gchar *got = pg_test_relay_run (input, len, split, 0);

      g_assert_cmpstr (got, ==, expected_full);
    }
}

static void
pg_test_relay_scanner_states (void)
{
  g_autoptr (PgImapRelayScanner) scanner = pg_imap_relay_scanner_new ();
  gboolean complete = TRUE;
  const PgImapRelayCommand *command = NULL;
  g_autofree gchar *long_name = g_strnfill (PG_IMAP_RELAY_MAX_ARGUMENT + 1, 'm');
  g_autofree gchar *line = g_strdup_printf ("b SELECT %s\r\n", long_name);
  const char *huge = "c APPEND x {99999999999999999999999}\r\n";

  g_assert_cmpuint (
      pg_imap_relay_scanner_scan (scanner, "a LOGIN {3}\r\n", 13, &complete, &command), ==, 13);
  g_assert_false (complete);
  g_assert_true (pg_imap_relay_scanner_in_literal (scanner));
  g_assert_true (pg_imap_relay_scanner_awaits_continuation (scanner));
  g_assert_cmpuint (pg_imap_relay_scanner_scan (scanner, "u", 1, &complete, &command), ==, 1);
  g_assert_false (pg_imap_relay_scanner_awaits_continuation (scanner));
  g_assert_true (pg_imap_relay_scanner_in_literal (scanner));
  g_assert_cmpuint (pg_imap_relay_scanner_scan (scanner, "s\r", 2, &complete, &command), ==, 2);
  g_assert_false (complete);
  g_assert_false (pg_imap_relay_scanner_in_literal (scanner));
  g_assert_cmpuint (pg_imap_relay_scanner_scan (scanner, "\nb", 2, &complete, &command), ==, 1);
  g_assert_true (complete);
  g_assert_cmpstr (command->argument, ==, "us\r");

  /* Too long to keep: reported as absent, never grown. */
  g_assert_cmpuint (pg_imap_relay_scanner_scan (scanner, line, strlen (line), &complete, &command),
                    ==, strlen (line));
  g_assert_true (complete);
  g_assert_cmpstr (command->tag, ==, "b");
  g_assert_null (command->argument);

  /* An overflowing literal size is no literal: the line just ends. */
  g_assert_cmpuint (pg_imap_relay_scanner_scan (scanner, huge, strlen (huge), &complete, &command),
                    ==, strlen (huge));
  g_assert_true (complete);
  g_assert_cmpuint (command->n_literals, ==, 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-imap-command/simple", pg_test_imap_simple);
  g_test_add_func ("/popgate/codec-imap-command/quoted", pg_test_imap_quoted);
  g_test_add_func ("/popgate/codec-imap-command/literals", pg_test_imap_literals);
  g_test_add_func ("/popgate/codec-imap-command/authenticate-id", pg_test_imap_authenticate_id);
  g_test_add_func ("/popgate/codec-imap-command/syntax-errors", pg_test_imap_syntax_errors);
  g_test_add_func ("/popgate/codec-imap-command/limits", pg_test_imap_limits);
  g_test_add_func ("/popgate/codec-imap-command/partial-reset", pg_test_imap_secrets_wiped);
  g_test_add_func ("/popgate/codec-imap-command/relay-scanner", pg_test_relay_scanner);
  g_test_add_func ("/popgate/codec-imap-command/relay-scanner-states",
                   pg_test_relay_scanner_states);
  return g_test_run ();
}
