/* Fuzz target: POP3 command lines, framed by PgLineReader as the front end frames them.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-line.h"
#include "popgate/pg-codec-pop3.h"
#include "popgate/pg-limits.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
pg_fuzz_pop3_check (const char *line, gsize len)
{
  g_auto (PgPop3Command) command = { 0 };
  PgPop3ParseResult result = pg_pop3_command_parse (line, len, &command);

  if (result >= PG_POP3_PARSE_COUNT || command.kind >= PG_POP3_COMMAND_COUNT)
    abort ();
  if (result != PG_POP3_PARSE_OK)
    {
      if (command.arg1 != NULL || command.arg2 != NULL || command.has_message)
        abort ();
      return;
    }
  switch (command.kind)
    {
    case PG_POP3_COMMAND_RETR:
    case PG_POP3_COMMAND_DELE:
    case PG_POP3_COMMAND_TOP:
      if (!command.has_message || command.message == 0)
        abort ();
      break;
    case PG_POP3_COMMAND_LIST:
    case PG_POP3_COMMAND_UIDL:
      if (command.has_message && command.message == 0)
        abort ();
      break;
    case PG_POP3_COMMAND_USER:
    case PG_POP3_COMMAND_PASS:
      if (command.arg1 == NULL || command.arg1[0] == '\0' || strlen (command.arg1) >= len)
        abort ();
      break;
    case PG_POP3_COMMAND_APOP:
      if (command.arg1 == NULL || command.arg2 == NULL)
        abort ();
      break;
    case PG_POP3_COMMAND_AUTH:
      if (command.arg2 != NULL && command.arg1 == NULL)
        abort ();
      break;
    case PG_POP3_COMMAND_STLS:
    case PG_POP3_COMMAND_CAPA:
    case PG_POP3_COMMAND_QUIT:
    case PG_POP3_COMMAND_STAT:
    case PG_POP3_COMMAND_RSET:
    case PG_POP3_COMMAND_NOOP:
    case PG_POP3_COMMAND_UTF8:
      if (command.arg1 != NULL || command.has_message)
        abort ();
      break;
    case PG_POP3_COMMAND_UNKNOWN:
    case PG_POP3_COMMAND_COUNT:
      abort ();
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (PG_POP3_MAX_COMMAND_LINE);
  gsize pos = 0;

  /* The whole input as one line, and then as a pipelined stream of lines. */
  pg_fuzz_pop3_check ((const char *) data, size);
  while (pos < size)
    {
      const char *line = NULL;
      gsize line_len = 0;
      PgLineReaderStatus status;

      pos += pg_line_reader_feed (reader, data + pos, size - pos);
      while ((status = pg_line_reader_next (reader, &line, &line_len, NULL))
             != PG_LINE_READER_NEED_MORE)
        if (status == PG_LINE_READER_LINE)
          pg_fuzz_pop3_check (line, line_len);
    }
  return 0;
}
