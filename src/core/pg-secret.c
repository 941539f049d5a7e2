/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-core.h"

#include <string.h>

void
pg_secret_wipe (void *data, gsize len)
{
  if (data == NULL || len == 0)
    return;
  /* explicit_bzero is not removed by dead-store elimination. */
  explicit_bzero (data, len);
}

void
pg_secret_free (gchar *secret)
{
  if (secret == NULL)
    return;
  pg_secret_wipe (secret, strlen (secret));
  g_free (secret);
}

gboolean
pg_secret_equal (const void *a, const void *b, gsize len)
{
  const volatile guchar *x = a;
  const volatile guchar *y = b;
  guchar diff = 0;

  for (gsize i = 0; i < len; i++)
    diff |= x[i] ^ y[i];
  return diff == 0;
}
