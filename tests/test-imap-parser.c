/* Tests for the IMAP response parser and the IMAP command writer.
 *
 * Every parser case is fed whole, byte by byte and split at every position, and the
 * transcripts (responses dumped, bodies reassembled from their chunks) must be identical.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-core.h"
#include "popgate/pg-imap-parser.h"
#include "popgate/pg-imap-writer.h"
#include "popgate/pg-limits.h"

#include <string.h>

/* --- harness --------------------------------------------------------------------------- */

typedef struct
{
  GString *transcript; /* owned */
  GString *body;       /* owned: the body being reassembled */
  guint64 expect_offset;
  gboolean in_body;
  GError *error; /* owned: first error */
} PgTestRun;

static void
pg_test_run_clear (PgTestRun *run)
{
  g_string_free (run->transcript, TRUE);
  g_string_free (run->body, TRUE);
  g_clear_error (&run->error);
}

/* Feed one piece until the parser wants more; record events. FALSE once an error happened. */
static gboolean
pg_test_feed_piece (PgImapParser *parser, PgTestRun *run, const guint8 *data, gsize len)
{
  gsize pos = 0;

  for (;;)
    {
      PgImapEvent event;
      gsize consumed = 0;
      g_autoptr (GError) error = NULL;
      PgImapParseResult result
          = pg_imap_parser_feed (parser, data + pos, len - pos, &consumed, &event, &error);

      if (result == PG_IMAP_PARSE_ERROR)
        {
          g_assert_nonnull (error);
          g_assert_true (error->domain == PG_ERROR);
          g_string_append_printf (run->transcript, "ERROR %d\n", error->code);
          run->error = g_steal_pointer (&error);
          return FALSE;
        }
      g_assert_no_error (error);
      g_assert_cmpuint (consumed, <=, len - pos);
      pos += consumed;
      switch (result)
        {
        case PG_IMAP_PARSE_NEED_MORE:
          g_assert_cmpuint (pos, ==, len);
          return TRUE;
        case PG_IMAP_PARSE_RESPONSE:
          {
            g_autoptr (PgImapResponse) response = event.response;
            g_autofree gchar *dump = pg_imap_response_dump (response);
            g_assert_false (run->in_body);
            g_string_append_printf (run->transcript, "%s\n", dump);
            break;
          }
        case PG_IMAP_PARSE_BODY_BEGIN:
          g_assert_false (run->in_body);
          run->in_body = TRUE;
          run->expect_offset = 0;
          g_string_truncate (run->body, 0);
          g_string_append_printf (run->transcript,
                                  "BEGIN seq=%" G_GUINT64_FORMAT " item=%s size=%" G_GUINT64_FORMAT
                                  "\n",
                                  event.seq, event.item, event.size);
          break;
        case PG_IMAP_PARSE_BODY_CHUNK:
          g_assert_true (run->in_body);
          g_assert_cmpuint (event.len, >, 0);
          g_assert_cmpuint (event.len, <=, PG_UPSTREAM_BODY_CHUNK);
          g_assert_cmpuint (event.offset, ==, run->expect_offset);
          g_assert_cmpuint (event.offset + event.len, <=, event.size);
          g_assert_true (event.data >= data && event.data + event.len <= data + len);
          run->expect_offset += event.len;
          g_string_append_len (run->body, (const char *) event.data, (gssize) event.len);
          break;
        case PG_IMAP_PARSE_BODY_END:
          {
            g_autofree gchar *escaped = NULL;
            g_assert_true (run->in_body);
            g_assert_cmpuint (event.offset, ==, event.size);
            g_assert_cmpuint (run->expect_offset, ==, event.size);
            escaped = pg_log_escape (run->body->str, run->body->len, G_MAXSIZE);
            g_string_append_printf (run->transcript, "END %s [%s]\n", event.item, escaped);
            run->in_body = FALSE;
            break;
          }
        case PG_IMAP_PARSE_ERROR:
          g_assert_not_reached ();
        }
    }
}

/* Parse input split into pieces at the given sorted cut positions. */
static gchar *
pg_test_parse_cuts (const char *input, gsize len, const gsize *cuts, gsize n_cuts,
                    gint *out_error_code)
{
  g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
  PgTestRun run = { g_string_new (NULL), g_string_new (NULL), 0, FALSE, NULL };
  gsize start = 0;
  gchar *result;

  for (gsize i = 0; i <= n_cuts; i++)
    {
      gsize end = i < n_cuts ? cuts[i] : len;
      /* A private copy per piece, so stale pointers into a previous piece would show. */
      g_autofree guint8 *piece = g_memdup2 (input + start, end - start + 1);
      if (!pg_test_feed_piece (parser, &run, piece, end - start))
        break;
      start = end;
    }
  if (run.error == NULL)
    {
      /* An incomplete response at the end is reported, so truncations are visible. */
      PgImapEvent event;
      gsize consumed = 0;
      g_assert_cmpint (
          pg_imap_parser_feed (parser, (const guint8 *) "", 0, &consumed, &event, NULL), ==,
          PG_IMAP_PARSE_NEED_MORE);
    }
  *out_error_code = run.error != NULL ? run.error->code : -1;
  result = g_strdup (run.transcript->str);
  pg_test_run_clear (&run);
  return result;
}

/* Parse whole, byte by byte and at every split point; all must agree. Returns the whole
 * transcript. */
static gchar *
pg_test_parse_all_ways (const char *input, gsize len, gint *out_error_code)
{
  gint whole_code = -1;
  gchar *whole = pg_test_parse_cuts (input, len, NULL, 0, &whole_code);

  {
    g_autofree gsize *cuts = g_new (gsize, len + 1);
    g_autofree gchar *bytewise = NULL;
    gint code = -1;
    for (gsize i = 0; i < len; i++)
      cuts[i] = i;
    bytewise = pg_test_parse_cuts (input, len, cuts, len, &code);
    g_assert_cmpstr (bytewise, ==, whole);
    g_assert_cmpint (code, ==, whole_code);
  }
  for (gsize k = 0; k <= len; k++)
    {
      gint code = -1;
      g_autofree gchar *split = pg_test_parse_cuts (input, len, &k, 1, &code);
      g_assert_cmpstr (split, ==, whole);
      g_assert_cmpint (code, ==, whole_code);
    }
  *out_error_code = whole_code;
  return whole;
}

static void
pg_test_expect (const char *input, const char *expected)
{
  gint code = -1;
  g_autofree gchar *got = pg_test_parse_all_ways (input, strlen (input), &code);

  g_assert_cmpint (code, ==, -1);
  g_assert_cmpstr (got, ==, expected);
}

static void
pg_test_expect_error (const char *input, gsize len, gint error_code)
{
  gint code = -1;
  g_autofree gchar *got = pg_test_parse_all_ways (input, len, &code);

  g_assert_cmpint (code, ==, error_code);
}

/* --- typical Dovecot responses ----------------------------------------------------------- */

static void
test_greeting (void)
{
  pg_test_expect ("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
                  "STARTTLS AUTH=PLAIN] Dovecot (Debian) ready.\r\n",
                  "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
                  "STARTTLS AUTH=PLAIN] |Dovecot (Debian) ready.|\n");
  pg_test_expect ("* PREAUTH [CAPABILITY IMAP4rev2] Logged in as alice\r\n",
                  "* PREAUTH [CAPABILITY IMAP4rev2] |Logged in as alice|\n");
  pg_test_expect ("* BYE Too many connections\r\n", "* BYE |Too many connections|\n");
  pg_test_expect ("* CAPABILITY IMAP4rev1 UIDPLUS MOVE METADATA\r\n",
                  "* CAPABILITY IMAP4rev1 UIDPLUS MOVE METADATA\n");
}

static void
test_select (void)
{
  pg_test_expect ("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                  "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags "
                  "permitted.\r\n"
                  "* 3 EXISTS\r\n"
                  "* 0 RECENT\r\n"
                  "* OK [UNSEEN 2] First unseen.\r\n"
                  "* OK [UIDVALIDITY 1700000001] UIDs valid\r\n"
                  "* OK [UIDNEXT 4] Predicted next UID\r\n"
                  "* OK [HIGHESTMODSEQ 7] Highest\r\n"
                  "a2 OK [READ-WRITE] Select completed (0.002 + 0.000 + 0.001 secs).\r\n",
                  "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\n"
                  "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                  "|Flags permitted.|\n"
                  "* #3 EXISTS\n"
                  "* #0 RECENT\n"
                  "* OK [UNSEEN #2] |First unseen.|\n"
                  "* OK [UIDVALIDITY #1700000001] |UIDs valid|\n"
                  "* OK [UIDNEXT #4] |Predicted next UID|\n"
                  "* OK [HIGHESTMODSEQ #7] |Highest|\n"
                  "TAG:a2 OK [READ-WRITE] |Select completed (0.002 + 0.000 + 0.001 secs).|\n");
}

static void
test_fetch_sizes (void)
{
  const char *input = "* 1 FETCH (UID 4 RFC822.SIZE 1234 FLAGS (\\Seen))\r\n"
                      "* 2 FETCH (UID 9 RFC822.SIZE 0 FLAGS ())\r\n"
                      "* 3 FETCH (FLAGS (\\Deleted $Forwarded) UID 10)\r\n"
                      "a3 OK Fetch completed (0.001 + 0.000 secs).\r\n";
  PgImapEvent event;
  gsize consumed = 0;
  guint64 n = 0;
  g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
  g_autoptr (GError) error = NULL;
  g_autoptr (PgImapResponse) response = NULL;

  pg_test_expect (input, "* #1 FETCH (UID #4 RFC822.SIZE #1234 FLAGS (\\Seen))\n"
                         "* #2 FETCH (UID #9 RFC822.SIZE #0 FLAGS ())\n"
                         "* #3 FETCH (FLAGS (\\Deleted $Forwarded) UID #10)\n"
                         "TAG:a3 OK |Fetch completed (0.001 + 0.000 secs).|\n");

  /* The accessors a consumer uses. */
  g_assert_cmpint (pg_imap_parser_feed (parser, (const guint8 *) input, strlen (input), &consumed,
                                        &event, &error),
                   ==, PG_IMAP_PARSE_RESPONSE);
  g_assert_no_error (error);
  response = event.response;
  g_assert_true (pg_imap_value_get_number (pg_imap_response_get_fetch_item (response, "uid"), &n));
  g_assert_cmpuint (n, ==, 4);
  g_assert_true (
      pg_imap_value_get_number (pg_imap_response_get_fetch_item (response, "RFC822.SIZE"), &n));
  g_assert_cmpuint (n, ==, 1234);
  g_assert_null (pg_imap_response_get_fetch_item (response, "BODY[]"));
  g_assert_cmpuint (pg_imap_response_get_fetch_item (response, "FLAGS")->type, ==,
                    PG_IMAP_VALUE_LIST);
  g_assert_cmpuint (response->number, ==, 1);
}

static void
test_fetch_body (void)
{
  pg_test_expect ("* 1 FETCH (UID 7 BODY[] {14}\r\nHello\r\n\r\nWorld)\r\n"
                  "a4 OK Fetch completed.\r\n",
                  "BEGIN seq=1 item=BODY[] size=14\n"
                  "END BODY[] [Hello\\r\\n\\r\\nWorld]\n"
                  "* #1 FETCH (UID #7 BODY[] <body 14>)\n"
                  "TAG:a4 OK |Fetch completed.|\n");
  /* Sections with spaces, partial origins, RFC822 and a literal8. */
  pg_test_expect ("* 2 FETCH (BODY[HEADER.FIELDS (FROM TO)] {9}\r\nFrom: a\r\n UID 8)\r\n"
                  "* 3 FETCH (UID 9 BODY[TEXT]<0> {3}\r\nabc)\r\n"
                  "* 4 FETCH (RFC822 {0}\r\n UID 10)\r\n",
                  "BEGIN seq=2 item=BODY[HEADER.FIELDS (FROM TO)] size=9\n"
                  "END BODY[HEADER.FIELDS (FROM TO)] [From: a\\r\\n]\n"
                  "* #2 FETCH (BODY[HEADER.FIELDS (FROM TO)] <body 9> UID #8)\n"
                  "BEGIN seq=3 item=BODY[TEXT]<0> size=3\n"
                  "END BODY[TEXT]<0> [abc]\n"
                  "* #3 FETCH (UID #9 BODY[TEXT]<0> <body 3>)\n"
                  "BEGIN seq=4 item=RFC822 size=0\n"
                  "END RFC822 []\n"
                  "* #4 FETCH (RFC822 <body 0> UID #10)\n");
  /* A body sent as NIL or a quoted string is an ordinary value. */
  pg_test_expect ("* 6 FETCH (UID 12 BODY[] NIL)\r\n* 7 FETCH (UID 13 BODY[] \"hi\")\r\n",
                  "* #6 FETCH (UID #12 BODY[] NIL)\n* #7 FETCH (UID #13 BODY[] \"hi\")\n");
  /* Literals elsewhere in a FETCH (an envelope field) are small literals. */
  pg_test_expect ("* 8 FETCH (ENVELOPE ({3}\r\nabc NIL) UID 14)\r\n",
                  "* #8 FETCH (ENVELOPE (\"abc\" NIL) UID #14)\n");
}

static void
test_fetch_body_binary (void)
{
  /* The binary test above has a NUL: build it with an explicit length. */
  static const char input[] = "* 5 FETCH (UID 11 BINARY[1] ~{2}\r\n\x00\xff)\r\n";
  gint code = -1;
  g_autofree gchar *got = pg_test_parse_all_ways (input, sizeof input - 1, &code);

  g_assert_cmpint (code, ==, -1);
  g_assert_cmpstr (got, ==,
                   "BEGIN seq=5 item=BINARY[1] size=2\n"
                   "END BINARY[1] [\\x00\\xff]\n"
                   "* #5 FETCH (UID #11 BINARY[1] <body 2>)\n");
}

/* A body bigger than a chunk comes in chunks; a huge declared size costs nothing; the
 * consumer can stop after any chunk and resume with the rest. */
static void
test_fetch_body_chunks (void)
{
  gsize body_len = PG_UPSTREAM_BODY_CHUNK * 3 + 17;
  g_autoptr (GString) input = g_string_new ("* 1 FETCH (UID 1 BODY[] {");
  g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
  g_autoptr (GError) error = NULL;
  PgImapEvent event;
  gsize consumed = 0, pos = 0, chunks = 0, body = 0;

  g_string_append_printf (input, "%" G_GSIZE_FORMAT "}\r\n", body_len);
  for (gsize i = 0; i < body_len; i++)
    g_string_append_c (input, (gchar) ('a' + i % 26));
  g_string_append (input, ")\r\n");

  for (;;)
    {
      PgImapParseResult r = pg_imap_parser_feed (parser, (const guint8 *) input->str + pos,
                                                 input->len - pos, &consumed, &event, &error);
      g_assert_no_error (error);
      pos += consumed;
      if (r == PG_IMAP_PARSE_BODY_CHUNK)
        {
          g_assert_cmpuint (event.len, <=, PG_UPSTREAM_BODY_CHUNK);
          g_assert_cmpint (memcmp (event.data, input->str + pos - event.len, event.len), ==, 0);
          chunks++;
          body += event.len;
          /* Back-pressure: the consumer returns here later; nothing after it was taken. */
          g_assert_cmpuint (pos, <, input->len);
        }
      else if (r == PG_IMAP_PARSE_RESPONSE)
        {
          pg_imap_response_free (event.response);
          break;
        }
      else
        g_assert_cmpint (r, !=, PG_IMAP_PARSE_NEED_MORE);
    }
  g_assert_cmpuint (chunks, ==, 4);
  g_assert_cmpuint (body, ==, body_len);
  g_assert_cmpuint (pos, ==, input->len);

  /* 10 GB declared: BEGIN with that size, no allocation, no error. */
  {
    const char *big = "* 2 FETCH (UID 2 BODY[] {10000000000}\r\nabc";
    g_autoptr (PgImapParser) p2 = pg_imap_parser_new ();
    g_assert_cmpint (
        pg_imap_parser_feed (p2, (const guint8 *) big, strlen (big), &consumed, &event, &error), ==,
        PG_IMAP_PARSE_BODY_BEGIN);
    g_assert_cmpuint (event.size, ==, G_GUINT64_CONSTANT (10000000000));
    /* The UID that came before the body names the FETCH it answers. */
    g_assert_cmpuint (event.uid, ==, 2);
    g_assert_cmpint (pg_imap_parser_feed (p2, (const guint8 *) big + consumed,
                                          strlen (big) - consumed, &consumed, &event, &error),
                     ==, PG_IMAP_PARSE_BODY_CHUNK);
    g_assert_cmpuint (event.len, ==, 3);
    g_assert_cmpuint (event.uid, ==, 2);
    g_assert_no_error (error);
  }
}

static void
test_metadata (void)
{
  pg_test_expect ("* METADATA \"INBOX\" (/private/vendor/popgate/state {11}\r\nhello world)\r\n"
                  "* METADATA \"\" (/private/comment NIL)\r\n"
                  "* METADATA INBOX (/shared/comment \"a \\\"quoted\\\" \\\\ value\")\r\n"
                  "a5 OK [METADATA LONGENTRIES 2000] Getmetadata completed.\r\n"
                  "a6 NO [METADATA TOOMANY] Too many\r\n",
                  "* METADATA \"INBOX\" (/private/vendor/popgate/state \"hello world\")\n"
                  /* pg_log_escape() shows a lone backslash as it is. */
                  "* METADATA \"\" (/private/comment NIL)\n"
                  "* METADATA INBOX (/shared/comment \"a \"quoted\" \\ value\")\n"
                  "TAG:a5 OK [METADATA LONGENTRIES #2000] |Getmetadata completed.|\n"
                  "TAG:a6 NO [METADATA TOOMANY] |Too many|\n");
}

static void
test_status_responses (void)
{
  pg_test_expect ("* OK [ALERT] System shutdown in 10 minutes\r\n"
                  "* NO [ALERT]Quota exceeded\r\n"
                  "* BYE Server shutting down.\r\n"
                  "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                  "a2 BAD Error in IMAP command: Unknown command.\r\n"
                  "a3 OK [COPYUID 1700000001 304,319:320 3956:3958] Moved\r\n"
                  "a4 OK\r\n"
                  "a5 OK [CLOSED]\r\n"
                  "* 4 EXPUNGE\r\n"
                  "* VANISHED (EARLIER) 1:3,5\r\n"
                  "* ID (\"name\" \"Dovecot\" \"version\" NIL)\r\n"
                  "* LIST (\\HasNoChildren) \"/\" \"a \\\"b\\\" \\\\c\"\r\n"
                  "* ENABLED\r\n",
                  "* OK [ALERT] |System shutdown in 10 minutes|\n"
                  "* NO [ALERT] |Quota exceeded|\n"
                  "* BYE |Server shutting down.|\n"
                  "TAG:a1 NO [AUTHENTICATIONFAILED] |Authentication failed.|\n"
                  "TAG:a2 BAD |Error in IMAP command: Unknown command.|\n"
                  "TAG:a3 OK [COPYUID #1700000001 304,319:320 3956:3958] |Moved|\n"
                  "TAG:a4 OK ||\n"
                  "TAG:a5 OK [CLOSED] ||\n"
                  "* #4 EXPUNGE\n"
                  "* VANISHED (EARLIER) 1:3,5\n"
                  "* ID (\"name\" \"Dovecot\" \"version\" NIL)\n"
                  "* LIST (\\HasNoChildren) \"/\" \"a \"b\" \\c\"\n"
                  "* ENABLED\n");
}

static void
test_continuation (void)
{
  pg_test_expect ("+ OK\r\n+ \r\n+\r\n+ dGVzdA==\r\n", "+ |OK|\n+ ||\n+ ||\n+ |dGVzdA==|\n");
}

/* --- malformed input and limits -------------------------------------------------------- */

/* Issue 13: a bare LF ends a response line as CRLF does (GNU mailutils imap4d ends the
 * tagged OK of AUTHENTICATE so), wherever a line may end; inside a literal it is data
 * (counted octets); NUL, a bare CR, a line end inside a string or a list, and over-long
 * lines stay errors. Every case at every split point. */
static void
test_bare_lf (void)
{
  pg_test_expect ("* OK IMAP4rev1 imap4d ready\n", "* OK |IMAP4rev1 imap4d ready|\n");
  pg_test_expect ("a1 OK [CAPABILITY IMAP4rev1 IDLE] AUTHENTICATE Completed\n",
                  "TAG:a1 OK [CAPABILITY IMAP4rev1 IDLE] |AUTHENTICATE Completed|\n");
  pg_test_expect ("a2 OK\n", "TAG:a2 OK ||\n");
  pg_test_expect ("* OK [READ-WRITE]\n", "* OK [READ-WRITE] ||\n");
  pg_test_expect ("+\n", "+ ||\n");
  pg_test_expect ("+ go on\n", "+ |go on|\n");
  pg_test_expect ("* CAPABILITY IMAP4rev1 UIDPLUS\n", "* CAPABILITY IMAP4rev1 UIDPLUS\n");
  pg_test_expect ("* 3 EXISTS\n* 1 FETCH (UID 5 RFC822.SIZE 10)\n",
                  "* #3 EXISTS\n* #1 FETCH (UID #5 RFC822.SIZE #10)\n");
  /* Mixed with CRLF lines, and inside a literal an LF is one counted octet of data. */
  pg_test_expect ("* OK a\r\n* METADATA INBOX (/private/x {4}\r\na\nb\n)\n* OK b\n",
                  "* OK |a|\n* METADATA INBOX (/private/x \"a\\nb\\n\")\n* OK |b|\n");
  pg_test_expect_error ("* OK a\0b\n", 9, PG_ERROR_PROTOCOL);
  pg_test_expect_error ("* X \"a\nb\"\r\n", strlen ("* X \"a\nb\"\r\n"), PG_ERROR_PROTOCOL);
  pg_test_expect_error ("* FLAGS (\\Seen\n", strlen ("* FLAGS (\\Seen\n"), PG_ERROR_PROTOCOL);
  pg_test_expect_error ("* OK [ALERT\n", strlen ("* OK [ALERT\n"), PG_ERROR_PROTOCOL);
  pg_test_expect_error ("* OK a\r\r\n", strlen ("* OK a\r\r\n"), PG_ERROR_PROTOCOL);
  {
    /* A line of LF-free text beyond the limit is still too long. */
    GString *line = g_string_new ("* OK ");
    while (line->len <= PG_UPSTREAM_MAX_LINE)
      g_string_append_c (line, 'x');
    g_string_append_c (line, '\n');
    {
      gint code = -1;
      g_autofree gchar *got = pg_test_parse_cuts (line->str, line->len, NULL, 0, &code);
      g_assert_cmpint (code, ==, PG_ERROR_LINE_TOO_LONG);
    }
    g_string_free (line, TRUE);
  }
}

static void
test_malformed (void)
{
  static const char *const cases[] = {
    "\r\n",
    " OK\r\n",
    "*OK\r\n",
    "* \r\n",
    "a1\r\n",
    "a1 FETCH (x)\r\n",
    "a1 PREAUTH hi\r\n",
    "* 5\r\n",
    "* 5 OK numbered\r\n",
    "* OK [] empty code\r\n",
    "* OK [ALERT no end\r\n",
    "* FLAGS (\\Seen\r\n",
    "* FLAGS \\Seen)\r\n",
    "* X \"unterminated\r\n",
    "* X \"bad \\escape\"\r\n",
    "* X {abc}\r\n",
    "* X {}\r\n",
    "* X {3}x\r\n",
    "* X ~3\r\n",
    "* OK [X {3}\r\nabc] literal in code\r\n",
    "* X a\rb\r\n",
    "* X {3}\nabc\r\n",
    "\n",
    "a1\n",
    "* OK text\nmore\r\n",
    "* 1 FETCH (BODY[HEADER\r\n",
    "* 1 FETCH (BODY[a[b]] x)\r\n",
    "+ OK\rx\n",
    "+x\r\n",
    "a\"1 OK\r\n",
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_test_message ("case %" G_GSIZE_FORMAT ": %s", i, cases[i]);
      pg_test_expect_error (cases[i], strlen (cases[i]), PG_ERROR_PROTOCOL);
    }

  /* A literal size that overflows 64 bits is a limit, not a wrap-around. */
  pg_test_expect_error ("* X {99999999999999999999999}\r\n", 31, PG_ERROR_LIMIT);

  /* NUL inside a quoted string and inside text. */
  pg_test_expect_error ("* X \"a\0b\"\r\n", 11, PG_ERROR_PROTOCOL);
  pg_test_expect_error ("* OK a\0b\r\n", 10, PG_ERROR_PROTOCOL);

  /* After an error the parser stays dead. */
  {
    g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
    g_autoptr (GError) error = NULL;
    PgImapEvent event;
    gsize consumed = 0;
    g_assert_cmpint (
        pg_imap_parser_feed (parser, (const guint8 *) "?\r\n", 3, &consumed, &event, &error), ==,
        PG_IMAP_PARSE_ERROR);
    g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
    g_clear_error (&error);
    g_assert_cmpint (
        pg_imap_parser_feed (parser, (const guint8 *) "* OK\r\n", 6, &consumed, &event, &error), ==,
        PG_IMAP_PARSE_ERROR);
    g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
    g_clear_error (&error);
    /* reset() revives it (the STARTTLS case). */
    pg_imap_parser_reset (parser);
    g_assert_cmpint (
        pg_imap_parser_feed (parser, (const guint8 *) "* OK\r\n", 6, &consumed, &event, &error), ==,
        PG_IMAP_PARSE_RESPONSE);
    pg_imap_response_free (event.response);
  }
}

/* Feed whole input once; return the error code (-1: none). Used for limits, where the
 * inputs are too big to feed at every split point. */
static gint
pg_test_parse_once (const char *input, gsize len)
{
  gint code = -1;
  gsize cuts[2] = { len / 3, len / 3 * 2 };
  g_autofree gchar *whole = pg_test_parse_cuts (input, len, NULL, 0, &code);
  gint code2 = -1;
  g_autofree gchar *split = pg_test_parse_cuts (input, len, cuts, 2, &code2);

  g_assert_cmpstr (whole, ==, split);
  g_assert_cmpint (code, ==, code2);
  return code;
}

static void
test_limits (void)
{
  /* Line length: exactly at the limit passes, one more fails. */
  {
    g_autoptr (GString) line = g_string_new ("* OK ");
    while (line->len < PG_UPSTREAM_MAX_LINE - 2)
      g_string_append_c (line, 'x');
    g_string_append (line, "\r\n");
    g_assert_cmpuint (line->len, ==, PG_UPSTREAM_MAX_LINE);
    g_assert_cmpint (pg_test_parse_once (line->str, line->len), ==, -1);
    g_string_insert_c (line, 5, 'y');
    g_assert_cmpint (pg_test_parse_once (line->str, line->len), ==, PG_ERROR_LINE_TOO_LONG);
  }
  /* A line with no CRLF at all. */
  {
    g_autofree gchar *junk = g_strnfill (PG_UPSTREAM_MAX_LINE + 10, 'a');
    g_assert_cmpint (pg_test_parse_once (junk, strlen (junk)), ==, PG_ERROR_LINE_TOO_LONG);
  }
  /* Nesting depth. */
  {
    g_autoptr (GString) ok = g_string_new ("* X ");
    g_autoptr (GString) bad = NULL;
    for (int i = 0; i < PG_UPSTREAM_MAX_DEPTH; i++)
      g_string_append_c (ok, '(');
    for (int i = 0; i < PG_UPSTREAM_MAX_DEPTH; i++)
      g_string_append_c (ok, ')');
    g_string_append (ok, "\r\n");
    g_assert_cmpint (pg_test_parse_once (ok->str, ok->len), ==, -1);
    bad = g_string_new ("* X (");
    g_string_append (bad, ok->str + 4);
    g_string_insert_c (bad, bad->len - 2, ')');
    g_assert_cmpint (pg_test_parse_once (bad->str, bad->len), ==, PG_ERROR_LIMIT);
  }
  /* Item count. */
  {
    g_autoptr (GString) ok = g_string_new ("* SEARCH");
    for (int i = 0; i < PG_UPSTREAM_MAX_ITEMS; i++)
      g_string_append (ok, " 1");
    g_string_append (ok, "\r\n");
    g_assert_cmpint (pg_test_parse_once (ok->str, ok->len), ==, -1);
    g_string_insert (ok, ok->len - 2, " 1");
    g_assert_cmpint (pg_test_parse_once (ok->str, ok->len), ==, PG_ERROR_LIMIT);
  }
  /* A small literal over its limit fails at its header, before any allocation. */
  {
    g_autofree gchar *big = g_strdup_printf ("* METADATA INBOX (/private/x {%d}\r\n",
                                             PG_UPSTREAM_MAX_SMALL_LITERAL + 1);
    g_assert_cmpint (pg_test_parse_once (big, strlen (big)), ==, PG_ERROR_LIMIT);
  }
  /* A literal of exactly the limit passes; enough of them exceed the response budget. */
  {
    g_autoptr (GString) input = g_string_new ("* METADATA INBOX (");
    g_autofree gchar *value = g_strnfill (PG_UPSTREAM_MAX_SMALL_LITERAL, 'v');
    guint n = PG_UPSTREAM_MAX_RESPONSE / PG_UPSTREAM_MAX_SMALL_LITERAL;
    for (guint i = 0; i < n; i++)
      {
        g_string_append_printf (input, "%s/private/k%u {%d}\r\n", i > 0 ? " " : "", i,
                                PG_UPSTREAM_MAX_SMALL_LITERAL);
        g_string_append (input, value);
        if (i == 0)
          {
            g_autofree gchar *one = g_strconcat (input->str, ")\r\n", NULL);
            g_assert_cmpint (pg_test_parse_once (one, strlen (one)), ==, -1);
          }
      }
    g_string_append (input, ")\r\n");
    g_assert_cmpint (pg_test_parse_once (input->str, input->len), ==, PG_ERROR_LIMIT);
  }
  /* The response budget reached inside an atom (taken as a run, not byte by byte): a
   * response of exactly the budget passes, one byte more fails with LIMIT. It counts every
   * byte but the first, literals included. */
  {
    g_autoptr (GString) input = g_string_new ("* METADATA INBOX (");
    g_autofree gchar *value = g_strnfill (PG_UPSTREAM_MAX_SMALL_LITERAL, 'v');
    g_autofree gchar *atom = NULL;
    gsize atom_len;

    for (guint i = 0; i < 4; i++)
      {
        gsize size = i < 3 ? PG_UPSTREAM_MAX_SMALL_LITERAL : PG_UPSTREAM_MAX_SMALL_LITERAL - 40000;

        g_string_append_printf (input, "/private/k%u {%" G_GSIZE_FORMAT "}\r\n", i, size);
        g_string_append_len (input, value, (gssize) size);
        g_string_append_c (input, ' ');
      }
    atom_len = PG_UPSTREAM_MAX_RESPONSE + 1 - input->len - strlen (")\r\n");
    g_assert_cmpuint (atom_len, >, 30000);
    g_assert_cmpuint (atom_len, <, PG_UPSTREAM_MAX_LINE - 10);
    atom = g_strnfill (atom_len, 'a');
    g_string_append (input, atom);
    g_string_append (input, ")\r\n");
    g_assert_cmpuint (input->len - 1, ==, PG_UPSTREAM_MAX_RESPONSE);
    g_assert_cmpint (pg_test_parse_once (input->str, input->len), ==, -1);
    g_string_insert_c (input, (gssize) (input->len - 3), 'a');
    g_assert_cmpint (pg_test_parse_once (input->str, input->len), ==, PG_ERROR_LIMIT);
  }
}

/* --- writer ------------------------------------------------------------------------------ */

/* Concatenate a command's parts; *out_waits counts parts that wait for "+". */
static gchar *
pg_test_join_parts (GPtrArray *parts, guint *out_waits, guint *out_secrets)
{
  GString *out = g_string_new (NULL);

  *out_waits = 0;
  *out_secrets = 0;
  for (guint i = 0; i < parts->len; i++)
    {
      PgImapWriterPart *part = g_ptr_array_index (parts, i);
      gsize size = 0;
      const char *data = g_bytes_get_data (part->bytes, &size);
      g_string_append_len (out, data, (gssize) size);
      *out_waits += part->wait_continuation ? 1 : 0;
      *out_secrets += part->secret ? 1 : 0;
    }
  return g_string_free (out, FALSE);
}

static void
test_writer_astring (void)
{
  g_assert_cmpint (pg_imap_writer_astring_form ("INBOX", 5), ==, PG_IMAP_ASTRING_ATOM);
  g_assert_cmpint (pg_imap_writer_astring_form ("a]b", 3), ==, PG_IMAP_ASTRING_ATOM);
  g_assert_cmpint (pg_imap_writer_astring_form ("", 0), ==, PG_IMAP_ASTRING_QUOTED);
  g_assert_cmpint (pg_imap_writer_astring_form ("nil", 3), ==, PG_IMAP_ASTRING_QUOTED);
  g_assert_cmpint (pg_imap_writer_astring_form ("a b", 3), ==, PG_IMAP_ASTRING_QUOTED);
  g_assert_cmpint (pg_imap_writer_astring_form ("a\"b\\", 4), ==, PG_IMAP_ASTRING_QUOTED);
  g_assert_cmpint (pg_imap_writer_astring_form ("a%", 2), ==, PG_IMAP_ASTRING_QUOTED);
  g_assert_cmpint (pg_imap_writer_astring_form ("grüße", strlen ("grüße")), ==,
                   PG_IMAP_ASTRING_LITERAL);
  g_assert_cmpint (pg_imap_writer_astring_form ("a\r\nb", 4), ==, PG_IMAP_ASTRING_LITERAL);
  g_assert_cmpint (pg_imap_writer_astring_form ("a\0b", 3), ==, PG_IMAP_ASTRING_LITERAL);
}

static void
test_writer_login (void)
{
  const char *password = "p\"a\\ss wörd";
  guint waits = 0, secrets = 0;

  /* Synchronising literals: each literal's data waits for "+". */
  {
    g_autoptr (PgImapWriter) writer = pg_imap_writer_new ("a1", 0);
    g_autoptr (GPtrArray) parts = NULL;
    g_autofree gchar *joined = NULL;

    pg_imap_writer_add_raw (writer, " LOGIN");
    pg_imap_writer_add_secret (writer, "alice", 5);
    pg_imap_writer_add_secret (writer, password, strlen (password));
    parts = pg_imap_writer_finish (g_steal_pointer (&writer));
    joined = pg_test_join_parts (parts, &waits, &secrets);
    g_assert_cmpstr (joined, ==, "a1 LOGIN {5}\r\nalice {12}\r\np\"a\\ss wörd\r\n");
    g_assert_cmpuint (parts->len, ==, 5);
    g_assert_cmpuint (waits, ==, 2);
    g_assert_cmpuint (secrets, ==, 2);
    g_assert_true (((PgImapWriterPart *) g_ptr_array_index (parts, 3))->secret);
    g_assert_false (((PgImapWriterPart *) g_ptr_array_index (parts, 2))->secret);
  }
  /* LITERAL+: nothing waits. */
  {
    g_autoptr (PgImapWriter) writer = pg_imap_writer_new ("a2", G_MAXSIZE);
    g_autoptr (GPtrArray) parts = NULL;
    g_autofree gchar *joined = NULL;

    pg_imap_writer_add_raw (writer, " LOGIN");
    pg_imap_writer_add_secret (writer, "alice", 5);
    pg_imap_writer_add_secret (writer, password, strlen (password));
    parts = pg_imap_writer_finish (g_steal_pointer (&writer));
    joined = pg_test_join_parts (parts, &waits, &secrets);
    g_assert_cmpstr (joined, ==, "a2 LOGIN {5+}\r\nalice {12+}\r\np\"a\\ss wörd\r\n");
    g_assert_cmpuint (waits, ==, 0);
  }
  /* LITERAL-: only small literals are non-synchronising. */
  {
    g_autoptr (PgImapWriter) writer = pg_imap_writer_new ("a3", 4);
    g_autoptr (GPtrArray) parts = NULL;
    g_autofree gchar *joined = NULL;

    pg_imap_writer_add_raw (writer, " SETMETADATA INBOX (/private/comment");
    pg_imap_writer_add_string (writer, "ab\r\n", 4);
    pg_imap_writer_add_string (writer, "abc\r\n", 5);
    pg_imap_writer_add_string (writer, "say \"hi\"", 8);
    pg_imap_writer_add_astring (writer, "INBOX", 5);
    pg_imap_writer_add_raw (writer, ")");
    g_assert_cmpuint (pg_imap_writer_get_line_length (writer), ==,
                      strlen (" \"say \\\"hi\\\"\" INBOX)"));
    parts = pg_imap_writer_finish (g_steal_pointer (&writer));
    joined = pg_test_join_parts (parts, &waits, &secrets);
    g_assert_cmpstr (joined, ==,
                     "a3 SETMETADATA INBOX (/private/comment {4+}\r\nab\r\n {5}\r\nabc\r\n "
                     "\"say \\\"hi\\\"\" INBOX)\r\n");
    g_assert_cmpuint (waits, ==, 1);
    g_assert_cmpuint (secrets, ==, 0);
  }
}

/* Whatever the writer produces, the parser reads back as the same string. */
static void
test_writer_roundtrip (void)
{
  static const char *const strings[] = {
    "INBOX", "", "NIL", "a b", "\"", "\\", "p\"a\\ss wörd", "x\r\ny", "(){}%*", "]",
  };

  for (gsize i = 0; i < G_N_ELEMENTS (strings); i++)
    for (int secret = 0; secret < 2; secret++)
      {
        g_autoptr (PgImapWriter) writer = pg_imap_writer_new ("*", 0);
        g_autoptr (GPtrArray) parts = NULL;
        g_autofree gchar *joined = NULL;
        g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
        g_autoptr (GError) error = NULL;
        g_autoptr (PgImapResponse) response = NULL;
        PgImapEvent event;
        gsize consumed = 0;
        guint waits = 0, secrets = 0;
        const PgImapValue *value;
        PgImapParseResult result;

        pg_imap_writer_add_raw (writer, " X");
        if (secret)
          pg_imap_writer_add_secret (writer, strings[i], strlen (strings[i]));
        else
          pg_imap_writer_add_astring (writer, strings[i], strlen (strings[i]));
        parts = pg_imap_writer_finish (g_steal_pointer (&writer));
        joined = pg_test_join_parts (parts, &waits, &secrets);
        result = pg_imap_parser_feed (parser, (const guint8 *) joined, strlen (joined), &consumed,
                                      &event, &error);
        g_assert_no_error (error);
        g_assert_cmpint (result, ==, PG_IMAP_PARSE_RESPONSE);
        response = event.response;
        g_assert_cmpuint (response->args->len, ==, 1);
        value = g_ptr_array_index (response->args, 0);
        g_assert_cmpint (value->type, !=, PG_IMAP_VALUE_NIL);
        g_assert_cmpstr (pg_imap_value_get_string (value), ==, strings[i]);
      }
}

/* Parse "a:b,c" back into UIDs, checking the compact form (sorted, disjoint ranges). */
static void
pg_test_expand_set (const char *set, GArray *out)
{
  g_auto (GStrv) items = g_strsplit (set, ",", -1);
  guint64 prev = 0;

  for (gsize i = 0; items[i] != NULL; i++)
    {
      g_auto (GStrv) ends = g_strsplit (items[i], ":", 2);
      guint64 a = g_ascii_strtoull (ends[0], NULL, 10);
      guint64 b = ends[1] != NULL ? g_ascii_strtoull (ends[1], NULL, 10) : a;

      /* Within a set: ascending, and neighbours would have been merged into one range. */
      if (i > 0)
        g_assert_cmpuint (a, >, prev + 1);
      if (ends[1] != NULL)
        g_assert_cmpuint (a, <, b);
      for (guint64 u = a; u <= b; u++)
        {
          guint32 uid = (guint32) u;
          g_array_append_val (out, uid);
        }
      prev = b;
    }
}

static void
test_writer_uid_sets (void)
{
  {
    const guint32 uids[] = { 9, 1, 2, 3, 3, 5, 0, 10, 11, 12, 7 };
    g_autoptr (GPtrArray) sets = pg_imap_writer_format_uid_sets (uids, G_N_ELEMENTS (uids), 100);
    g_assert_cmpuint (sets->len, ==, 1);
    g_assert_cmpstr (g_ptr_array_index (sets, 0), ==, "1:3,5,7,9:12");
  }
  {
    const guint32 uids[] = { G_MAXUINT32, G_MAXUINT32 - 1, 1 };
    g_autoptr (GPtrArray) sets = pg_imap_writer_format_uid_sets (uids, G_N_ELEMENTS (uids), 21);
    g_assert_cmpuint (sets->len, ==, 2);
    g_assert_cmpstr (g_ptr_array_index (sets, 0), ==, "1");
    g_assert_cmpstr (g_ptr_array_index (sets, 1), ==, "4294967294:4294967295");
  }
  {
    g_autoptr (GPtrArray) sets = pg_imap_writer_format_uid_sets (NULL, 0, 100);
    g_assert_cmpuint (sets->len, ==, 0);
  }
  /* 100k scattered UIDs: every set fits, together they are exactly the input. */
  {
    gsize n = 100000;
    g_autofree guint32 *uids = g_new (guint32, n);
    g_autoptr (GArray) back = g_array_new (FALSE, FALSE, sizeof (guint32));
    gsize room = pg_imap_writer_uid_set_room ("a100", "UID STORE", "+FLAGS.SILENT (\\Deleted)");
    g_autoptr (GPtrArray) sets = NULL;

    for (gsize i = 0; i < n; i++)
      uids[i] = (guint32) (n - i) * 3 + (i % 7 == 0 ? 1 : 0) + 1000000;
    sets = pg_imap_writer_format_uid_sets (uids, n, room);
    g_assert_cmpuint (sets->len, >, 1);
    for (guint i = 0; i < sets->len; i++)
      {
        const char *set = g_ptr_array_index (sets, i);
        g_autofree gchar *line
            = g_strdup_printf ("a100 UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n", set);
        g_assert_cmpuint (strlen (line), <=, PG_UPSTREAM_MAX_COMMAND_LINE);
        pg_test_expand_set (set, back);
      }
    g_assert_cmpuint (back->len, ==, n);
    for (gsize i = 1; i < back->len; i++)
      g_assert_cmpuint (g_array_index (back, guint32, i - 1), <, g_array_index (back, guint32, i));
  }
}

/* INTERNALDATE: the snapshot FETCH of recent_days, through the streaming parser at every
 * split point, then the date-time itself. */
static void
test_fetch_internaldate (void)
{
  const char *input
      = "* 1 FETCH (UID 4 RFC822.SIZE 12 INTERNALDATE \" 7-Mar-2024 09:05:01 +0100\")\r\n"
        "a3 OK Fetch completed.\r\n";
  PgImapEvent event;
  gsize consumed = 0;
  gint64 t = 0;
  const char *date;
  g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
  g_autoptr (GError) error = NULL;
  g_autoptr (PgImapResponse) response = NULL;

  pg_test_expect (input, "* #1 FETCH (UID #4 RFC822.SIZE #12 INTERNALDATE \" 7-Mar-2024 09:05:01 "
                         "+0100\")\n"
                         "TAG:a3 OK |Fetch completed.|\n");
  g_assert_cmpint (pg_imap_parser_feed (parser, (const guint8 *) input, strlen (input), &consumed,
                                        &event, &error),
                   ==, PG_IMAP_PARSE_RESPONSE);
  g_assert_no_error (error);
  response = event.response;
  date = pg_imap_value_get_string (pg_imap_response_get_fetch_item (response, "INTERNALDATE"));
  g_assert_nonnull (date);
  g_assert_true (pg_imap_parse_date_time (date, strlen (date), &t));
  /* 2024-03-07 08:05:01 UTC */
  g_assert_cmpint (t, ==, G_GINT64_CONSTANT (1709798701));
}

static void
test_date_time (void)
{
  static const struct
  {
    const char *text;
    gint64 expected;
  } good[] = {
    { "01-Jan-1970 00:00:00 +0000", 0 },
    { " 1-Jan-1970 01:00:00 +0100", 0 },
    { "31-Dec-1969 19:00:00 -0500", 0 },
    { "29-Feb-2000 12:00:00 +0000", G_GINT64_CONSTANT (951825600) },
    { "29-feb-2024 23:59:59 -1230", G_GINT64_CONSTANT (1709296199) },
    { "01-Jan-1900 00:00:00 +0000", G_GINT64_CONSTANT (-2208988800) },
    { "31-Dec-9999 23:59:60 +0000", G_GINT64_CONSTANT (253402300800) },
    { "19-Jan-2038 03:14:08 +0000", G_GINT64_CONSTANT (2147483648) },
  };
  static const char *const bad[] = {
    "",
    "01-Jan-1970 00:00:00",
    "01-Jan-1970 00:00:00 +00000",
    "1-Jan-1970 00:00:00 +0000x",
    "01-Jam-1970 00:00:00 +0000",
    "00-Jan-1970 00:00:00 +0000",
    "32-Jan-1970 00:00:00 +0000",
    "29-Feb-1900 00:00:00 +0000",
    "31-Apr-2024 00:00:00 +0000",
    "01-Jan-1899 00:00:00 +0000",
    "01-Jan-1970 24:00:00 +0000",
    "01-Jan-1970 00:60:00 +0000",
    "01-Jan-1970 00:00:61 +0000",
    "01-Jan-1970 00:00:00 +0060",
    "01-Jan-1970 00:00:00 *0000",
    "01/Jan/1970 00:00:00 +0000",
    "01-Jan-1970T00:00:00 +0000",
    "0x-Jan-1970 00:00:00 +0000",
    "01-Jan-197O 00:00:00 +0000",
  };

  for (gsize i = 0; i < G_N_ELEMENTS (good); i++)
    {
      gint64 t = 12345;
      g_assert_true (pg_imap_parse_date_time (good[i].text, strlen (good[i].text), &t));
      g_assert_cmpint (t, ==, good[i].expected);
    }
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      gint64 t = 12345;
      if (pg_imap_parse_date_time (bad[i], strlen (bad[i]), &t))
        g_error ("accepted \"%s\"", bad[i]);
      g_assert_cmpint (t, ==, 12345);
    }
  /* Bounded by len: a valid prefix of a longer buffer is not read past. */
  g_assert_false (pg_imap_parse_date_time ("01-Jan-1970 00:00:00 +0000", 25, NULL));
  g_assert_false (pg_imap_parse_date_time (NULL, 26, NULL));

  /* Agrees with GDateTime on every day of four years around a leap year, at odd times. */
  for (gint64 day = 0; day < 4 * 366; day++)
    {
      g_autoptr (GDateTime) utc = g_date_time_new_from_unix_utc (G_GINT64_CONSTANT (946684800)
                                                                 + day * 86400 + day * 37 % 86400);
      g_autoptr (GTimeZone) zone = g_time_zone_new_offset ((gint32) (day % 27 - 13) * 3600);
      g_autoptr (GDateTime) local = g_date_time_to_timezone (utc, zone);
      g_autofree gchar *text = g_date_time_format (local, "%d-%b-%Y %H:%M:%S %z");
      gint64 t = 0;

      g_assert_nonnull (text);
      g_assert_true (pg_imap_parse_date_time (text, strlen (text), &t));
      g_assert_cmpint (t, ==, g_date_time_to_unix (utc));
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/popgate/imap-parser/greeting", test_greeting);
  g_test_add_func ("/popgate/imap-parser/select", test_select);
  g_test_add_func ("/popgate/imap-parser/fetch-sizes", test_fetch_sizes);
  g_test_add_func ("/popgate/imap-parser/fetch-internaldate", test_fetch_internaldate);
  g_test_add_func ("/popgate/imap-parser/date-time", test_date_time);
  g_test_add_func ("/popgate/imap-parser/fetch-body", test_fetch_body);
  g_test_add_func ("/popgate/imap-parser/fetch-body-binary", test_fetch_body_binary);
  g_test_add_func ("/popgate/imap-parser/fetch-body-chunks", test_fetch_body_chunks);
  g_test_add_func ("/popgate/imap-parser/metadata", test_metadata);
  g_test_add_func ("/popgate/imap-parser/status", test_status_responses);
  g_test_add_func ("/popgate/imap-parser/continuation", test_continuation);
  g_test_add_func ("/popgate/imap-parser/malformed", test_malformed);
  g_test_add_func ("/popgate/imap-parser/bare-lf", test_bare_lf);
  g_test_add_func ("/popgate/imap-parser/limits", test_limits);
  g_test_add_func ("/popgate/imap-parser/writer-astring", test_writer_astring);
  g_test_add_func ("/popgate/imap-parser/writer-login", test_writer_login);
  g_test_add_func ("/popgate/imap-parser/writer-roundtrip", test_writer_roundtrip);
  g_test_add_func ("/popgate/imap-parser/writer-uid-sets", test_writer_uid_sets);

  return g_test_run ();
}
