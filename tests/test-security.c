/* popgate — security checks through the real binary: no secret in the log at the highest
 * log level (with the upstream trace on), for USER/PASS, AUTH PLAIN and AUTH LOGIN, good
 * and bad passwords; and the TLS version floor and priority string of [tls] priority, and
 * the defaults without it, as a TLS client of popgate's implicit-TLS listener sees them.
 * (STLS and upstream STARTTLS plaintext injection: tests/test-pop3.c and
 * tests/test-upstream.c; upstream certificate verification: tests/test-upstream.c.)
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include <signal.h>
#include <string.h>

static PgTestDovecot *upstream = NULL;

#define USER "secret-user"
/* Distinctive, so that finding it anywhere is meaningful. */
#define PASSWORD "Tr0ub4dor&3-unlogged"
#define WRONG_PASSWORD "c0rrect-horse-unlogged"

static PgTestPopgate *
start_popgate (const char *const *settings, gboolean debug)
{
  g_autoptr (GError) error = NULL;
  PgTestPopgate *popgate = pg_test_popgate_new (upstream, "none", &error);

  g_assert_no_error (error);
  /* -v from the helper, one more for debug: the highest level. */
  if (debug)
    pg_test_popgate_add_arg (popgate, "-v");
  pg_test_popgate_set (popgate, "limits", "auth_failure_delay", "10ms");
  pg_test_popgate_set (popgate, "limits", "max_auth_failures", "100");
  pg_test_popgate_set (popgate, "limits", "shutdown_timeout", "5s");
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    pg_test_popgate_set (popgate, settings[i], settings[i + 1], settings[i + 2]);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  return popgate;
}

static PgTestPop3 *
pop3_connect (PgTestPopgate *popgate)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, &error);

  g_assert_no_error (error);
  return pop3;
}

static gchar *
b64 (const char *data, gsize len)
{
  return g_base64_encode ((const guchar *) data, len);
}

/* Every form a secret could leak in: itself, base64 of it, the PLAIN blobs (with and
 * without authzid) in base64, and base64 of the password at each of the three
 * alignments (a blob containing it shows one of those as a substring). */
static GPtrArray *
secret_forms (const char *password)
{
  GPtrArray *forms = g_ptr_array_new_with_free_func (g_free);
  g_autofree gchar *plain = g_strdup_printf ("%c%s%c%s", 0, USER, 0, password);
  g_autofree gchar *plain_z = g_strdup_printf ("%s%c%s%c%s", USER, 0, USER, 0, password);
  gsize plen = strlen (password);

  g_ptr_array_add (forms, g_strdup (password));
  g_ptr_array_add (forms, b64 (password, plen));
  g_ptr_array_add (forms, b64 (plain, 2 + strlen (USER) + plen));
  g_ptr_array_add (forms, b64 (plain_z, 2 + 2 * strlen (USER) + plen));
  for (gsize shift = 1; shift < 3; shift++)
    {
      /* base64 of "x"*shift + password, minus the characters the prefix influences. */
      g_autofree gchar *padded = g_strdup_printf ("%.*s%s", (int) shift, "xx", password);
      g_autofree gchar *enc = b64 (padded, shift + plen);
      /* The first 4 output characters depend on the prefix; the last 4 on the end. */
      if (strlen (enc) > 12)
        g_ptr_array_add (forms, g_strndup (enc + 4, strlen (enc) - 8));
    }
  {
    g_autofree gchar *enc = b64 (password, plen);
    if (strlen (enc) > 8)
      g_ptr_array_add (forms, g_strndup (enc, strlen (enc) - 4));
  }
  return forms;
}

static void
assert_no_secret (const char *text, const char *what)
{
  const char *const passwords[] = { PASSWORD, WRONG_PASSWORD };

  for (gsize p = 0; p < G_N_ELEMENTS (passwords); p++)
    {
      g_autoptr (GPtrArray) forms = secret_forms (passwords[p]);
      for (guint i = 0; i < forms->len; i++)
        if (strstr (text, g_ptr_array_index (forms, i)) != NULL)
          g_error ("%s contains a secret form \"%s\"", what,
                   (const char *) g_ptr_array_index (forms, i));
    }
}

/* A session of every login kind at -vv with the upstream trace on: popgate's whole log
 * (stdout and stderr) holds no password in any form. */
static void
test_log_secrets (void)
{
  static const char *const settings[] = { "log", "trace", "true", NULL };
  PgTestPopgate *popgate;
  g_autofree gchar *plain = g_strdup_printf ("%c%s%c%s", 0, USER, 0, PASSWORD);
  g_autofree gchar *plain64 = b64 (plain, 2 + strlen (USER) + strlen (PASSWORD));
  g_autofree gchar *wrong = g_strdup_printf ("%c%s%c%s", 0, USER, 0, WRONG_PASSWORD);
  g_autofree gchar *wrong64 = b64 (wrong, 2 + strlen (USER) + strlen (WRONG_PASSWORD));
  g_autofree gchar *user64 = b64 (USER, strlen (USER));
  g_autofree gchar *pass64 = b64 (PASSWORD, strlen (PASSWORD));
  g_autofree gchar *wrongpass64 = b64 (WRONG_PASSWORD, strlen (WRONG_PASSWORD));
  g_autofree gchar *log = NULL;

  popgate = start_popgate (settings, TRUE);

  /* USER/PASS, wrong then right. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "USER " USER, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "PASS " WRONG_PASSWORD, "-ERR [AUTH]");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "USER " USER, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "PASS " PASSWORD, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  /* AUTH PLAIN with an initial response, wrong then right. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
    g_autofree gchar *ir_wrong = g_strdup_printf ("AUTH PLAIN %s", wrong64);
    g_autofree gchar *ir = g_strdup_printf ("AUTH PLAIN %s", plain64);
    PG_TEST_POP3_ASSERT_REPLY (pop3, ir_wrong, "-ERR [AUTH]");
    PG_TEST_POP3_ASSERT_REPLY (pop3, ir, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  /* AUTH PLAIN with a continuation. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN", "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, plain64, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  /* AUTH LOGIN, wrong then right; and one cancelled after the password prompt. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH LOGIN", "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, user64, "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, wrongpass64, "-ERR [AUTH]");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH LOGIN", "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, user64, "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "*", "-ERR");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH LOGIN", "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, user64, "+ ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, pass64, "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  /* A session dropped in the middle of a SASL exchange. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
    g_autoptr (GError) error = NULL;
    PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN", "+ ");
    g_assert_true (pg_test_pop3_send (pop3, plain64, 10, &error));
    g_assert_no_error (error);
  }
  pg_test_popgate_assert_clean_exit (popgate);
  log = pg_test_popgate_read_log (popgate);
  /* The log is detailed (the level took effect) but secret-free. */
  g_assert_nonnull (strstr (log, "C: USER " USER));
  g_assert_nonnull (strstr (log, "login: user=" USER));
  assert_no_secret (log, "popgate's log");
  pg_test_popgate_free (popgate);
}

/* gnutls-cli as a TLS client of popgate's implicit-TLS POP3 listener with `priority`; TRUE
 * if the handshake succeeded and popgate's greeting arrived. */
static gboolean
tls_client_connects (PgTestPopgate *popgate, const char *priority)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *port = g_strdup_printf ("%u", popgate->pop3s_port);
  g_autofree gchar *priority_arg = g_strdup_printf ("--priority=%s", priority);
  g_autofree gchar *ca_arg = g_strdup_printf ("--x509cafile=%s", popgate->certs->ca_file);
  const char *argv[]
      = { "gnutls-cli", "--port", port, priority_arg, ca_arg, "--verify-hostname=localhost",
          "127.0.0.1",  NULL };
  g_autoptr (GBytes) input = g_bytes_new_static ("QUIT\r\n", 6);
  g_autofree gchar *output = NULL;
  int exit_code = -1;

  PG_TEST_ASSERT_OK (pg_test_run_status (argv, input, 30000, &exit_code, &output, &error), error);
  g_test_message ("gnutls-cli %s: exit %d", priority, exit_code);
  if (exit_code != 0 && g_test_verbose ())
    g_test_message ("%s", output);
  /* The greeting only comes through a completed handshake. The exit code says nothing:
   * gnutls-cli fails when the server's close after QUIT beats its own EOF on stdin. */
  return strstr (output, "- Handshake was completed") != NULL
         && strstr (output, "+OK popgate ready.") != NULL;
}

static void
test_tls_priority (void)
{
  static const char *const settings[]
      = { "tls", "priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3", NULL };
  PgTestPopgate *popgate = start_popgate (settings, FALSE);

  g_assert_true (tls_client_connects (popgate, "NORMAL:-VERS-ALL:+VERS-TLS1.3"));
  g_assert_false (tls_client_connects (popgate, "NORMAL:-VERS-ALL:+VERS-TLS1.2"));
  pg_test_popgate_assert_clean_exit (popgate);
  pg_test_popgate_free (popgate);
}

/* Without [tls] priority: TLS 1.2 and 1.3 work, the broken old versions do not. */
static void
test_tls_defaults (void)
{
  PgTestPopgate *popgate = start_popgate (NULL, FALSE);

  g_assert_true (tls_client_connects (popgate, "NORMAL:-VERS-ALL:+VERS-TLS1.3"));
  g_assert_true (tls_client_connects (popgate, "NORMAL:-VERS-ALL:+VERS-TLS1.2"));
  g_assert_false (tls_client_connects (popgate, "NORMAL:-VERS-ALL:+VERS-TLS1.1:+VERS-TLS1.0"));
  pg_test_popgate_assert_clean_exit (popgate);
  pg_test_popgate_free (popgate);
}

/* An invalid priority string is a config error naming the key, not a silent default. */
static void
test_tls_priority_invalid (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (upstream, "none", &error);
  static const char *const check[] = { "--check", NULL };
  g_autofree gchar *output = NULL;
  int exit_code = -1;

  g_assert_no_error (error);
  pg_test_popgate_set (popgate, "tls", "priority", "NORMAL:+VERS-NONSENSE");
  PG_TEST_ASSERT_OK (pg_test_popgate_run (popgate, check, &exit_code, &output, &error), error);
  g_assert_cmpint (exit_code, !=, 0);
  g_assert_nonnull (strstr (output, "priority"));
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int rc;

  g_test_init (&argc, &argv, NULL);
  upstream = pg_test_dovecot_new (NULL, &error);
  g_assert_no_error (error);
  if (!pg_test_dovecot_add_user (upstream, USER, PASSWORD, &error))
    g_error ("%s", error->message);
  g_test_add_func ("/popgate/security/log-secrets", test_log_secrets);
  g_test_add_func ("/popgate/security/tls-priority", test_tls_priority);
  g_test_add_func ("/popgate/security/tls-defaults", test_tls_defaults);
  g_test_add_func ("/popgate/security/tls-priority-invalid", test_tls_priority_invalid);
  if (!pg_test_dovecot_start (upstream, &error))
    g_error ("cannot start Dovecot: %s", error->message);
  {
    g_autoptr (GError) seed_error = NULL;
    const char *msg = "Subject: s\r\n\r\nbody\r\n";
    PG_TEST_ASSERT_OK (
        pg_test_dovecot_append (upstream, USER, "INBOX", msg, strlen (msg), &seed_error),
        seed_error);
  }
  rc = g_test_run ();
  pg_test_dovecot_free (upstream);
  return rc;
}
