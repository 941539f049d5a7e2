/* Fuzz target: the SASL codec (strict base64 and PLAIN). The input is the base64 text as
 * a client sends it; both decoders must never crash, and their results must hold what the
 * header promises (a NUL-terminated buffer of *out_len bytes; a non-empty, NUL-free name
 * and a NUL-free password; an error otherwise, PG_ERROR_PROTOCOL or AUTH_FAILED).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-sasl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* More than a PLAIN response can be on any of popgate's lines. */
#define PG_FUZZ_SASL_MAX_INPUT (16 * 1024)

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgSecret) decoded = NULL;
  g_autoptr (PgSecret) password = NULL;
  g_autofree gchar *authcid = NULL;
  gsize decoded_len = 0;

  if (size > PG_FUZZ_SASL_MAX_INPUT)
    return 0;

  decoded = pg_sasl_base64_decode ((const char *) data, size, &decoded_len);
  if (decoded != NULL && (decoded_len > size || decoded[decoded_len] != '\0'))
    abort ();

  if (pg_sasl_plain_decode ((const char *) data, size, &authcid, &password, &error))
    {
      if (error != NULL || authcid == NULL || password == NULL || authcid[0] == '\0')
        abort ();
      /* PLAIN decodes from valid base64 only, and its parts come from the decoded bytes. */
      if (decoded == NULL || strlen (authcid) + strlen (password) > decoded_len)
        abort ();
    }
  else
    {
      if (error == NULL || authcid != NULL || password != NULL)
        abort ();
      if (error->domain != PG_ERROR
          || (error->code != PG_ERROR_PROTOCOL && error->code != PG_ERROR_AUTH_FAILED))
        abort ();
    }
  return 0;
}
