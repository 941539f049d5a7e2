/* Fuzz target: PgProxyParser. The first byte chooses a chunk size; the result (status,
 * bytes used, the header) must not depend on how the input is cut, the parser must never
 * use a byte past the header, and a v1 header never exceeds its line limit.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-proxy.h"
#include "popgate/pg-limits.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

typedef struct
{
  PgProxyParserStatus status;
  gsize used; /* total input bytes used when DONE */
  PgProxyHeader header;
} PgFuzzProxyResult;

static void
pg_fuzz_proxy_run (const guint8 *data, gsize size, gsize chunk, PgFuzzProxyResult *out)
{
  g_autoptr (PgProxyParser) parser = pg_proxy_parser_new ();
  gsize pos = 0;

  memset (out, 0, sizeof *out);
  out->status = PG_PROXY_PARSER_NEED_MORE;
  while (pos < size)
    {
      gsize piece = MIN (chunk, size - pos);
      gsize used = 0;
      PgProxyParserStatus status = pg_proxy_parser_feed (parser, data + pos, piece, &used, NULL);

      if (status == PG_PROXY_PARSER_NEED_MORE)
        {
          pos += piece;
          continue;
        }
      out->status = status;
      if (status == PG_PROXY_PARSER_DONE)
        {
          const PgProxyHeader *header = pg_proxy_parser_get_header (parser);
          g_autofree gchar *src = NULL;

          if (used == 0 || used > piece || header == NULL)
            abort ();
          out->used = pos + used;
          out->header = *header;
          src = pg_proxy_header_source_to_string (header);
          if (header->local != (src == NULL))
            abort ();
          if (header->version == 1 && out->used > PG_PROXY_V1_MAX_LINE)
            abort ();
          if (header->version == 2 && out->used > 16 + PG_PROXY_V2_MAX_PAYLOAD)
            abort ();
        }
      return;
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  PgFuzzProxyResult a, b;

  if (size < 1)
    return 0;
  pg_fuzz_proxy_run (data + 1, size - 1, 1 + data[0], &a);
  pg_fuzz_proxy_run (data + 1, size - 1, 1, &b);
  if (a.status != b.status || a.used != b.used
      || memcmp (&a.header, &b.header, sizeof a.header) != 0)
    abort ();
  return 0;
}
