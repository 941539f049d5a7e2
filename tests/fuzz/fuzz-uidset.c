/* Fuzz target: the UID set parser. Checks: whatever it accepts is canonical (printing it
 * gives back the input exactly), counts add up, and a copy built UID range by range is
 * equal.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-state.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgUidSet) set = pg_uid_set_parse ((const char *) data, size, &error);
  g_autoptr (PgUidSet) rebuilt = NULL;
  g_autofree gchar *text = NULL;
  guint64 count = 0;

  if (set == NULL)
    {
      if (error == NULL)
        abort ();
      return 0;
    }
  if (error != NULL)
    abort ();
  text = pg_uid_set_to_string (set);
  if (strlen (text) != size || memcmp (text, data, size) != 0)
    abort ();

  rebuilt = pg_uid_set_new ();
  for (guint i = pg_uid_set_get_n_ranges (set); i > 0; i--)
    {
      guint32 first = 0;
      guint32 last = 0;

      pg_uid_set_get_range (set, i - 1, &first, &last);
      if (first == 0 || first > last || !pg_uid_set_contains (set, first)
          || !pg_uid_set_contains (set, last))
        abort ();
      count += (guint64) last - first + 1;
      pg_uid_set_add_range (rebuilt, first, last);
    }
  if (count != pg_uid_set_count (set) || !pg_uid_set_equal (rebuilt, set))
    abort ();
  return 0;
}
