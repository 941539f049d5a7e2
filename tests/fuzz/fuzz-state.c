/* Fuzz target: the per-client state record decoder. Checks: an error always comes with a
 * message naming the source; whatever it accepts encodes back to the same bytes, so a
 * record is never silently reinterpreted. Each input is decoded as it is and once more
 * with its "end" line replaced by a correct checksum, so mutations get past the CRC and
 * reach the line parser.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-state.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static guint32
pg_fuzz_state_crc32 (const guint8 *data, gsize len)
{
  guint32 crc = 0xffffffffu;

  for (gsize i = 0; i < len; i++)
    {
      crc ^= data[i];
      for (guint k = 0; k < 8; k++)
        crc = (crc & 1u) ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
    }
  return crc ^ 0xffffffffu;
}

static void
pg_fuzz_state_check (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateKey) key = NULL;
  g_autoptr (PgClientState) state = pg_client_state_decode (data, size, "fuzz", &key, &error);
  g_autoptr (GBytes) again = NULL;
  g_autoptr (PgClientState) copy = NULL;

  if (state == NULL)
    {
      if (error == NULL || key != NULL || !g_str_has_prefix (error->message, "fuzz: "))
        abort ();
      return;
    }
  if (error != NULL || key == NULL)
    abort ();
  again = pg_client_state_encode (state, key);
  if (g_bytes_get_size (again) != size || memcmp (g_bytes_get_data (again, NULL), data, size) != 0)
    abort ();
  copy = pg_client_state_copy (state);
  if (!pg_client_state_equal (copy, state))
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GByteArray) fixed = g_byte_array_new ();
  g_autofree gchar *end = NULL;
  gsize body = size;

  pg_fuzz_state_check (data, size);

  /* Drop a final "end ..." line, if any, and append one with the right checksum. */
  if (body > 0 && data[body - 1] == '\n')
    {
      gsize start = body - 1;

      while (start > 0 && data[start - 1] != '\n')
        start--;
      if (body - start >= 4 && memcmp (data + start, "end ", 4) == 0)
        body = start;
    }
  g_byte_array_append (fixed, data, (guint) body);
  end = g_strdup_printf ("end %08x\n", pg_fuzz_state_crc32 (data, body));
  g_byte_array_append (fixed, (const guint8 *) end, (guint) strlen (end));
  pg_fuzz_state_check (fixed->data, fixed->len);
  return 0;
}
