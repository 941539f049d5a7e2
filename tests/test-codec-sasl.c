/* Tests for the SASL helpers (strict base64, PLAIN).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-sasl.h"

#include <string.h>

static gchar *
pg_test_sasl_encode (const char *raw, gsize len)
{
  return g_base64_encode ((const guchar *) raw, len);
}

static void
pg_test_sasl_base64 (void)
{
  static const char *const bad[] = { "a", "abc", "ab=c", "a===", "ab c", "ab\ncd", "ab-_", "=abc" };
  gsize n = 0;
  g_autoptr (PgSecret) ok = pg_sasl_base64_decode ("aGVsbG8=", 8, &n);
  g_autoptr (PgSecret) empty = pg_sasl_base64_decode ("", 0, &n);

  g_assert_nonnull (ok);
  g_assert_nonnull (empty);
  g_assert_cmpuint (n, ==, 0);
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr (PgSecret) out = pg_sasl_base64_decode (bad[i], strlen (bad[i]), &n);
      if (out != NULL)
        g_test_message ("accepted \"%s\"", bad[i]);
      g_assert_null (out);
    }
}

static void
pg_test_sasl_plain_ok (void)
{
  static const struct
  {
    const char *raw;
    gsize len;
    const char *user;
    const char *password;
  } cases[] = {
    { "\0alice\0secret", 13, "alice", "secret" },
    { "alice\0alice\0secret", 18, "alice", "secret" },
    { "\0bob\0", 5, "bob", "" },
    { "\0u\0p a s s", 10, "u", "p a s s" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *b64 = pg_test_sasl_encode (cases[i].raw, cases[i].len);
      g_autofree gchar *user = NULL;
      g_autoptr (PgSecret) password = NULL;
      g_autoptr (GError) error = NULL;

      g_assert_true (pg_sasl_plain_decode (b64, strlen (b64), &user, &password, &error));
      g_assert_no_error (error);
      g_assert_cmpstr (user, ==, cases[i].user);
      g_assert_cmpstr (password, ==, cases[i].password);
    }
}

static void
pg_test_sasl_plain_bad (void)
{
  static const struct
  {
    const char *raw;
    gsize len;
    gint code;
  } cases[] = {
    { "alice", 5, PG_ERROR_PROTOCOL },                      /* no NULs */
    { "\0alice", 6, PG_ERROR_PROTOCOL },                    /* one NUL */
    { "\0\0secret", 8, PG_ERROR_PROTOCOL },                 /* empty authcid */
    { "\0alice\0sec\0ret", 14, PG_ERROR_PROTOCOL },         /* NUL in the password */
    { "mallory\0alice\0secret", 20, PG_ERROR_AUTH_FAILED }, /* act as another user */
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *b64 = pg_test_sasl_encode (cases[i].raw, cases[i].len);
      gchar *user = NULL;
      PgSecret *password = NULL;
      g_autoptr (GError) error = NULL;

      g_assert_false (pg_sasl_plain_decode (b64, strlen (b64), &user, &password, &error));
      g_assert_error (error, PG_ERROR, cases[i].code);
      g_assert_null (user);
      g_assert_null (password);
    }
  {
    gchar *user = NULL;
    PgSecret *password = NULL;
    g_autoptr (GError) error = NULL;

    g_assert_false (pg_sasl_plain_decode ("!!!!", 4, &user, &password, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/codec-sasl/base64", pg_test_sasl_base64);
  g_test_add_func ("/popgate/codec-sasl/plain-ok", pg_test_sasl_plain_ok);
  g_test_add_func ("/popgate/codec-sasl/plain-bad", pg_test_sasl_plain_bad);
  return g_test_run ();
}
