/* popgate — codec: SASL base64 and PLAIN decoding (see pg-codec-sasl.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-codec-sasl.h"

#include <string.h>

PgSecret *
pg_sasl_base64_decode (const char *text, gsize len, gsize *out_len)
{
  gchar *out;
  gint state = 0;
  guint save = 0;
  gsize n;

  g_return_val_if_fail (text != NULL || len == 0, NULL);
  g_return_val_if_fail (out_len != NULL, NULL);

  /* g_base64_decode_step() skips what it does not know; SASL wants strict input. */
  if (len % 4 != 0)
    return NULL;
  for (gsize i = 0; i < len; i++)
    {
      char c = text[i];
      if (!(g_ascii_isalnum (c) || c == '+' || c == '/' || (c == '=' && i + 2 >= len)))
        return NULL;
      if (c != '=' && i > 0 && text[i - 1] == '=')
        return NULL;
    }
  out = g_malloc0 (len / 4 * 3 + 4);
  n = g_base64_decode_step (text, len, (guchar *) out, &state, &save);
  out[n] = '\0';
  *out_len = n;
  return out;
}

gboolean
pg_sasl_plain_decode (const char *text, gsize len, gchar **out_authcid, PgSecret **out_password,
                      GError **error)
{
  gsize n = 0;
  g_autoptr (PgSecret) decoded = NULL;
  const char *authzid, *authcid, *passwd;
  gsize zlen, clen, plen;

  g_return_val_if_fail (out_authcid != NULL && out_password != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  decoded = pg_sasl_base64_decode (text, len, &n);
  if (decoded == NULL)
    {
      g_set_error_literal (error, PG_ERROR, PG_ERROR_PROTOCOL, "invalid base64 data");
      return FALSE;
    }
  authzid = decoded;
  zlen = strnlen (authzid, n);
  if (zlen >= n)
    goto malformed;
  authcid = authzid + zlen + 1;
  clen = strnlen (authcid, n - zlen - 1);
  if (zlen + 1 + clen >= n)
    goto malformed;
  passwd = authcid + clen + 1;
  plen = n - zlen - clen - 2;
  if (clen == 0 || strnlen (passwd, plen) != plen)
    goto malformed;
  if (zlen > 0 && strcmp (authzid, authcid) != 0)
    {
      g_set_error_literal (error, PG_ERROR, PG_ERROR_AUTH_FAILED,
                           "authorization identity differs from the login name");
      return FALSE;
    }
  *out_authcid = g_strdup (authcid);
  *out_password = g_strdup (passwd);
  return TRUE;

malformed:
  g_set_error_literal (error, PG_ERROR, PG_ERROR_PROTOCOL, "malformed PLAIN response");
  return FALSE;
}
