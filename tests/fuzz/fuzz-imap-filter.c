/* Fuzz target: the IMAP relay filter (src/imap/pg-imap-filter.c) and the capability
 * filter under it. The input is fed as the client stream and as the upstream stream, in
 * pieces whose size the first byte chooses: holds stay bounded, kept octets never exceed
 * what came in, and the upstream output does not depend on how the input is cut.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "../../src/imap/pg-imap-filter.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
pg_fuzz_command_cb (gpointer user_data, const PgImapRelayCommand *cmd)
{
}

static gboolean
pg_fuzz_withheld_cb (gpointer user_data, PgImapCapsCommand what, const PgImapRelayCommand *cmd)
{
  return FALSE;
}

static void
pg_fuzz_response_cb (gpointer user_data, const PgImapRelayCommand *resp)
{
}

static void
pg_fuzz_to_client_cb (gpointer user_data, const guint8 *data, gsize len)
{
  g_string_append_len (user_data, (const char *) data, (gssize) len);
}

static const PgImapFilterFuncs pg_fuzz_funcs = {
  .command = pg_fuzz_command_cb,
  .withheld = pg_fuzz_withheld_cb,
  .response = pg_fuzz_response_cb,
  .to_client = pg_fuzz_to_client_cb,
};

/* The upstream stream through a fresh filter; NULL when it reported an error. */
static GString *
pg_fuzz_upstream (const guint8 *data, gsize size, gsize chunk)
{
  GString *out = g_string_new (NULL);
  g_autoptr (PgImapFilter) filter = pg_imap_filter_new (&pg_fuzz_funcs, out, "COMPRESS=DEFLATE");

  for (gsize pos = 0; pos < size; pos += chunk)
    if (!pg_imap_filter_upstream (filter, data + pos, MIN (chunk, size - pos), NULL))
      {
        g_string_free (out, TRUE);
        return NULL;
      }
  return out;
}

static void
pg_fuzz_client (const guint8 *data, gsize size, gsize chunk)
{
  g_autoptr (GString) sink = g_string_new (NULL);
  g_autoptr (PgImapFilter) filter = pg_imap_filter_new (&pg_fuzz_funcs, sink, NULL);
  guint8 *buf = g_malloc (chunk + PG_IMAP_FILTER_MAX_HOLD + 1);
  gsize held = 0;

  for (gsize pos = 0; pos < size; pos += chunk)
    {
      gsize n = MIN (chunk, size - pos);
      gsize hold_off = 0, hold_len = 0, kept;
      gboolean stopped = FALSE;

      memcpy (buf + held, data + pos, n);
      kept = pg_imap_filter_client (filter, buf, held + n, &hold_off, &hold_len, &stopped);
      if (kept > held + n || hold_len > PG_IMAP_FILTER_MAX_HOLD || (hold_len > 0 && kept > hold_off)
          || hold_off + hold_len > held + n || stopped)
        abort ();
      memmove (buf, buf + hold_off, hold_len);
      held = hold_len;
    }
  g_free (buf);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  gsize chunk;
  GString *whole;
  GString *cut;

  if (size < 1)
    return 0;
  chunk = 1 + data[0] % 64;
  data++;
  size--;
  pg_fuzz_client (data, size, chunk);
  pg_fuzz_client (data, size, size > 0 ? size : 1);
  whole = pg_fuzz_upstream (data, size, size > 0 ? size : 1);
  cut = pg_fuzz_upstream (data, size, chunk);
  if ((whole == NULL) != (cut == NULL) || (whole != NULL && !g_string_equal (whole, cut)))
    abort ();
  if (whole != NULL)
    g_string_free (whole, TRUE);
  if (cut != NULL)
    g_string_free (cut, TRUE);
  return 0;
}
