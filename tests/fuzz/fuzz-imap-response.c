/* Fuzz target: the IMAP response parser. Feeds the input whole and byte by byte; both
 * must produce the same events (body chunks reassembled) and the same final error.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-core.h"
#include "popgate/pg-imap-parser.h"
#include "popgate/pg-limits.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
pg_fuzz_check (gboolean ok)
{
  if (!ok)
    abort ();
}

/* Parse data in pieces of `step` bytes (0: whole); return the transcript. */
static gchar *
pg_fuzz_parse (const uint8_t *data, size_t size, gsize step)
{
  g_autoptr (PgImapParser) parser = pg_imap_parser_new ();
  GString *out = g_string_new (NULL);
  gsize start = 0;

  while (start < size || start == 0)
    {
      gsize end = step == 0 ? size : MIN (size, start + step);
      gsize pos = start;

      for (;;)
        {
          PgImapEvent event;
          gsize consumed = 0;
          g_autoptr (GError) error = NULL;
          PgImapParseResult r
              = pg_imap_parser_feed (parser, data + pos, end - pos, &consumed, &event, &error);

          if (r == PG_IMAP_PARSE_ERROR)
            {
              pg_fuzz_check (error != NULL && error->domain == PG_ERROR);
              g_string_append_printf (out, "ERROR %d\n", error->code);
              return g_string_free (out, FALSE);
            }
          pg_fuzz_check (consumed <= end - pos);
          pos += consumed;
          if (r == PG_IMAP_PARSE_NEED_MORE)
            break;
          if (r == PG_IMAP_PARSE_RESPONSE)
            {
              g_autofree gchar *dump = pg_imap_response_dump (event.response);
              g_string_append_printf (out, "%s\n", dump);
              pg_imap_response_free (event.response);
            }
          else if (r == PG_IMAP_PARSE_BODY_CHUNK)
            {
              pg_fuzz_check (event.len > 0 && event.len <= PG_UPSTREAM_BODY_CHUNK);
              g_string_append_len (out, (const char *) event.data, (gssize) event.len);
            }
          else
            g_string_append_printf (out, "\n%d %s %" G_GUINT64_FORMAT "\n", r, event.item,
                                    event.size);
        }
      if (end == size)
        break;
      start = end;
    }
  return g_string_free (out, FALSE);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autofree gchar *whole = pg_fuzz_parse (data, size, 0);
  g_autofree gchar *bytewise = pg_fuzz_parse (data, size, 1);

  pg_fuzz_check (strcmp (whole, bytewise) == 0);
  return 0;
}
