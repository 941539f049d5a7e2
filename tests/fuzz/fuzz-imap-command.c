/* Fuzz target: the pre-auth IMAP command parser (driven through PgLineReader, literals
 * included, as the front end drives it) and the relay scanner over the same bytes.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-imap-command.h"
#include "popgate/pg-codec-line.h"
#include "popgate/pg-limits.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static guint
pg_fuzz_imap_count_args (GPtrArray *args, guint depth)
{
  guint n = args->len;

  if (depth > PG_IMAP_MAX_PREAUTH_DEPTH)
    abort ();
  for (guint i = 0; i < args->len; i++)
    {
      const PgImapArg *arg = args->pdata[i];

      if (arg->type == PG_IMAP_ARG_LIST)
        n += pg_fuzz_imap_count_args (arg->list, depth + 1);
      else if (arg->value == NULL || arg->len > PG_IMAP_MAX_PREAUTH_LITERAL
               || (arg->type != PG_IMAP_ARG_LITERAL && strlen (arg->value) != arg->len))
        abort ();
    }
  return n;
}

static void
pg_fuzz_imap_parser (const uint8_t *data, size_t size)
{
  g_autoptr (PgLineReader) reader = pg_line_reader_new (PG_IMAP_MAX_PREAUTH_LINE);
  g_autoptr (PgImapCommandParser) parser = pg_imap_command_parser_new ();
  gboolean in_literal = FALSE;
  gsize pos = 0;

  while (pos < size)
    {
      pos += pg_line_reader_feed (reader, data + pos, size - pos);
      for (;;)
        {
          const char *line = NULL;
          gsize line_len = 0;
          PgLineReaderStatus line_status;
          PgImapParseStatus status;

          if (in_literal)
            {
              const guint8 *raw = NULL;
              gsize want = pg_imap_command_parser_get_literal_remaining (parser);
              gsize n = pg_line_reader_take_raw (reader, want, &raw);

              if (n == 0 && want > 0)
                break;
              status = pg_imap_command_parser_feed_literal (parser, raw, n, NULL);
              in_literal = status == PG_IMAP_PARSE_NEED_LITERAL;
              continue;
            }
          line_status = pg_line_reader_next (reader, &line, &line_len, NULL);
          if (line_status == PG_LINE_READER_NEED_MORE)
            break;
          if (line_status == PG_LINE_READER_ERROR)
            continue;

          switch (pg_imap_command_parser_feed_line (parser, line, line_len, NULL))
            {
            case PG_IMAP_PARSE_NEED_LINE:
            case PG_IMAP_PARSE_ERROR:
              break;
            case PG_IMAP_PARSE_NEED_LITERAL:
              if (pg_imap_command_parser_get_literal_remaining (parser)
                  > PG_IMAP_MAX_PREAUTH_LITERAL)
                abort ();
              in_literal = TRUE;
              break;
            case PG_IMAP_PARSE_COMPLETE:
              {
                g_autoptr (PgImapCommand) command = pg_imap_command_parser_take_command (parser);

                if (command == NULL || command->tag[0] == '\0' || command->name[0] == '\0'
                    || command->kind >= PG_IMAP_COMMAND_COUNT
                    || pg_fuzz_imap_count_args (command->args, 0) > PG_IMAP_MAX_PREAUTH_ARGS)
                  abort ();
              }
              break;
            }
        }
    }
}

static void
pg_fuzz_imap_relay (const uint8_t *data, size_t size)
{
  g_autoptr (PgImapRelayScanner) scanner = pg_imap_relay_scanner_new ();
  guint64 complete_octets = 0;
  gsize last_end = 0;
  gsize pos = 0;

  while (pos < size)
    {
      gboolean complete = FALSE;
      const PgImapRelayCommand *command = NULL;
      gsize n = pg_imap_relay_scanner_scan (scanner, data + pos, size - pos, &complete, &command);

      if (n == 0 || n > size - pos)
        abort ();
      pos += n;
      if (!complete)
        continue;
      if (command->octets != pos - last_end || data[pos - 1] != '\n'
          || strlen (command->tag) > PG_IMAP_RELAY_MAX_TAG
          || (command->argument != NULL && strlen (command->argument) > PG_IMAP_RELAY_MAX_ARGUMENT))
        abort ();
      complete_octets += command->octets;
      last_end = pos;
    }
  if (complete_octets != last_end)
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  pg_fuzz_imap_parser (data, size);
  pg_fuzz_imap_relay (data, size);
  return 0;
}
