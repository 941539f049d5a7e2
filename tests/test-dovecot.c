/* popgate tests — the Dovecot fixture itself: it starts, serves IMAP, IMAPS (verified
 * against the generated CA), POP3, authenticates generated users (with awkward
 * passwords), returns seeded mail byte-exact, pauses sessions, and goes away on stop.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"

#include "popgate/pg-core.h"

#include <errno.h>
#include <signal.h>

/* Awkward on purpose: quote, backslash, spaces, colon (the passwd-file separator), UTF-8. */
#define ALICE "alice@example.com"
#define ALICE_PASSWORD "p\"a\\ss wo:rd \xc3\xbc\xe2\x82\xac"
#define BOB "bob"
#define BOB_PASSWORD "bob-secret"

typedef struct
{
  PgTestDovecot *dovecot; /* owned */
} DovecotFixture;

static void
dovecot_setup (DovecotFixture *fixture, gconstpointer data)
{
  const PgTestDovecotOptions *options = data;
  g_autoptr (GError) error = NULL;

  fixture->dovecot = pg_test_dovecot_new (options, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_add_user (fixture->dovecot, ALICE, ALICE_PASSWORD, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_add_user (fixture->dovecot, BOB, BOB_PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (fixture->dovecot, &error), error);
}

static void
dovecot_teardown (DovecotFixture *fixture, gconstpointer data)
{
  g_clear_pointer (&fixture->dovecot, pg_test_dovecot_free);
}

/* FALSE (and the test failed: a missing dependency is a failure, never a skip) if this
 * machine cannot run Dovecot. */
static gboolean
dovecot_available (DovecotFixture *fixture)
{
  if (fixture->dovecot != NULL)
    return TRUE;
  g_test_fail_printf ("%s", pg_test_dovecot_skip_reason ());
  return FALSE;
}

static gboolean
tls_available (void)
{
  if (g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    return TRUE;
  g_test_fail_printf ("%s", "no GIO TLS backend (install glib-networking)");
  return FALSE;
}

static void
test_dovecot_login_plain (DovecotFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  guint32 uidvalidity = 0;
  guint32 exists = 99;

  if (!dovecot_available (fixture))
    return;
  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (pg_test_imap_get_greeting (imap), "* OK"));
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, ALICE, ALICE_PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", FALSE, &uidvalidity, &exists, &error),
                     error);
  g_assert_cmpuint (uidvalidity, !=, 0);
  g_assert_cmpuint (exists, ==, 0);
  PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
}

static void
test_dovecot_login_tls (DovecotFixture *fixture, gconstpointer data)
{
  const char *const identities[] = { "127.0.0.1", "localhost" };
  g_autoptr (GError) error = NULL;

  if (!dovecot_available (fixture) || !tls_available ())
    return;
  for (gsize i = 0; i < G_N_ELEMENTS (identities); i++)
    {
      g_autoptr (PgTestImap) imap = pg_test_imap_connect_full (
          fixture->dovecot->host, fixture->dovecot->imaps_port, fixture->dovecot->ca_file,
          identities[i], PG_TEST_IMAP_TIMEOUT_S, &error);

      g_assert_no_error (error);
      PG_TEST_ASSERT_OK (pg_test_imap_login (imap, BOB, BOB_PASSWORD, &error), error);
      PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
    }
}

static void
test_dovecot_tls_untrusted (DovecotFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;

  if (!dovecot_available (fixture) || !tls_available ())
    return;
  /* Served cert signed by the fixture CA; another CA must not accept it... */
  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imaps_port,
                               fixture->dovecot->certs->untrusted_ca_file, &error);
  g_assert_error (error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
  g_assert_null (imap);
  g_clear_error (&error);
  /* ...nor a name the certificate is not for. */
  imap = pg_test_imap_connect_full (fixture->dovecot->host, fixture->dovecot->imaps_port,
                                    fixture->dovecot->ca_file, "imap.example.org",
                                    PG_TEST_IMAP_TIMEOUT_S, &error);
  g_assert_error (error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
  g_assert_null (imap);
}

static void
test_dovecot_wrong_password (DovecotFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;

  if (!dovecot_available (fixture))
    return;
  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  g_assert_false (pg_test_imap_login (imap, ALICE, "p\"a\\ss wo:rd", &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  g_clear_error (&error);
  g_assert_false (pg_test_imap_login (imap, "nobody-here", ALICE_PASSWORD, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_AUTH_FAILED);
  g_clear_error (&error);
  /* Auth penalty is off, so the next try answers at once, and it works. */
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, ALICE, ALICE_PASSWORD, &error), error);
}

static void
test_dovecot_seed (DovecotFixture *fixture, gconstpointer data)
{
  /* CRLF throughout, a dot-line, 8-bit bytes, a line of only "." and no final newline
   * inside the body's last line but CRLF at the end: what POP3 dot-stuffing must handle. */
  static const char message[] = "From: Carol <carol@example.org>\r\n"
                                "To: alice@example.com\r\n"
                                "Subject: seeded \xc3\xa4\r\n"
                                "\r\n"
                                ".leading dot\r\n"
                                ".\r\n"
                                "\x80\xff binary-ish\r\n"
                                "last line\r\n";
  static const char second[] = "Subject: two\r\n\r\nsecond\r\n";
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) uids = NULL;
  g_autoptr (GBytes) body = NULL;
  g_auto (GStrv) flags = NULL;
  guint32 appended = 0;

  if (!dovecot_available (fixture))
    return;
  PG_TEST_ASSERT_OK (pg_test_dovecot_append (fixture->dovecot, ALICE, "INBOX", message,
                                             sizeof message - 1, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_create_mailbox (fixture->dovecot, ALICE, "Trash", &error),
                     error);

  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, ALICE, ALICE_PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "Trash", TRUE, NULL, NULL, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error), error);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 1);

  body = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, 0), &error);
  g_assert_no_error (error);
  g_assert_cmpmem (g_bytes_get_data (body, NULL), g_bytes_get_size (body), message,
                   sizeof message - 1);
  /* BODY.PEEK leaves \Seen alone. */
  flags = pg_test_imap_fetch_flags (imap, g_array_index (uids, guint32, 0), &error);
  g_assert_no_error (error);
  g_assert_false (g_strv_contains ((const char *const *) flags, "\\Seen"));

  /* The client's own append, flags and expunge work too. */
  PG_TEST_ASSERT_OK (
      pg_test_imap_append (imap, "INBOX", "\\Seen", second, sizeof second - 1, &appended, &error),
      error);
  g_assert_cmpuint (appended, >, g_array_index (uids, guint32, 0));
  g_clear_pointer (&flags, g_strfreev);
  flags = pg_test_imap_fetch_flags (imap, appended, &error);
  g_assert_no_error (error);
  g_assert_true (g_strv_contains ((const char *const *) flags, "\\Seen"));
  PG_TEST_ASSERT_OK (pg_test_imap_expunge_uid (imap, appended, &error), error);
  g_clear_pointer (&body, g_bytes_unref);
  body = pg_test_imap_fetch_body (imap, appended, &error);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_assert_null (body);
}

static void
test_dovecot_pop3 (DovecotFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GSocketConnection) connection = NULL;
  char greeting[512];
  gsize got = 0;

  if (!dovecot_available (fixture))
    return;
  g_socket_client_set_timeout (client, PG_TEST_IMAP_TIMEOUT_S);
  connection = g_socket_client_connect_to_host (client, fixture->dovecot->host,
                                                fixture->dovecot->pop3_port, NULL, &error);
  g_assert_no_error (error);
  /* The greeting is one short line: read until its LF, bounded by the buffer. */
  while (got < sizeof greeting - 1 && memchr (greeting, '\n', got) == NULL)
    {
      gssize n = g_input_stream_read (g_io_stream_get_input_stream (G_IO_STREAM (connection)),
                                      greeting + got, sizeof greeting - 1 - got, NULL, &error);
      g_assert_no_error (error);
      g_assert_cmpint (n, >, 0);
      got += (gsize) n;
    }
  greeting[got] = '\0';
  g_assert_true (g_str_has_prefix (greeting, "+OK"));
}

static void
test_dovecot_pause (DovecotFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (PgTestImap) other = NULL;
  g_autofree gchar *reply = NULL;

  if (!dovecot_available (fixture))
    return;
  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, ALICE, ALICE_PASSWORD, &error), error);
  other = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (other, BOB, BOB_PASSWORD, &error), error);

  /* Only alice's process: bob's is left running. */
  g_assert_cmpuint (pg_test_dovecot_signal_user_sessions (fixture->dovecot, ALICE, SIGSTOP), ==, 1);
  g_assert_cmpuint (pg_test_dovecot_signal_sessions (fixture->dovecot, 0), ==, 2);
  reply = pg_test_imap_command (other, "NOOP", &error);
  g_assert_no_error (error);
  g_clear_pointer (&reply, g_free);
  g_assert_cmpuint (pg_test_dovecot_signal_user_sessions (fixture->dovecot, ALICE, SIGCONT), ==, 1);
  reply = pg_test_imap_command (imap, "NOOP", &error);
  g_assert_no_error (error);
  /* Leave one paused: stop must still work (it resumes them first). */
  g_assert_cmpuint (pg_test_dovecot_signal_sessions (fixture->dovecot, SIGSTOP), ==, 2);
}

static void
test_dovecot_metadata (DovecotFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autofree gchar *reply = NULL;

  if (!dovecot_available (fixture))
    return;
  imap = pg_test_imap_connect (fixture->dovecot->host, fixture->dovecot->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, ALICE, ALICE_PASSWORD, &error), error);
  reply = pg_test_imap_command (imap, "CAPABILITY", &error);
  g_assert_no_error (error);
  g_assert_nonnull (strstr (reply, " METADATA"));
  g_clear_pointer (&reply, g_free);
  reply = pg_test_imap_command (imap, "SETMETADATA INBOX (/private/vendor/popgate/test \"v1\")",
                                &error);
  g_assert_no_error (error);
  g_clear_pointer (&reply, g_free);
  reply = pg_test_imap_command (imap, "GETMETADATA INBOX /private/vendor/popgate/test", &error);
  g_assert_no_error (error);
  g_test_message ("GETMETADATA: %s", reply);
  /* Dovecot may send the value quoted or as a literal. */
  g_assert_true (strstr (reply, "\"v1\"") != NULL || strstr (reply, "{2}\r\nv1") != NULL);
}

static void
test_dovecot_stop (DovecotFixture *fixture, gconstpointer data)
{
  GPid pid = 0;

  if (!dovecot_available (fixture))
    return;
  pid = pg_test_dovecot_get_pid (fixture->dovecot);
  g_assert_cmpint (pid, >, 0);
  g_assert_cmpint (kill (pid, 0), ==, 0);
  g_assert_true (pg_test_dovecot_stop (fixture->dovecot));
  g_assert_cmpint (pg_test_dovecot_get_pid (fixture->dovecot), ==, 0);
  /* Reaped, so the PID is gone (not even a zombie). */
  g_assert_cmpint (kill (pid, 0), ==, -1);
  g_assert_cmpint (errno, ==, ESRCH);
  /* And it can start again in the same dir. */
  {
    g_autoptr (GError) error = NULL;

    PG_TEST_ASSERT_OK (pg_test_dovecot_start (fixture->dovecot, &error), error);
    g_assert_cmpint (pg_test_dovecot_get_pid (fixture->dovecot), >, 0);
  }
}

int
main (int argc, char **argv)
{
  static const PgTestDovecotOptions with_metadata = { .metadata = TRUE };

  g_test_init (&argc, &argv, NULL);
  g_test_add ("/popgate/dovecot/login-plain", DovecotFixture, NULL, dovecot_setup,
              test_dovecot_login_plain, dovecot_teardown);
  g_test_add ("/popgate/dovecot/login-tls", DovecotFixture, NULL, dovecot_setup,
              test_dovecot_login_tls, dovecot_teardown);
  g_test_add ("/popgate/dovecot/tls-untrusted", DovecotFixture, NULL, dovecot_setup,
              test_dovecot_tls_untrusted, dovecot_teardown);
  g_test_add ("/popgate/dovecot/wrong-password", DovecotFixture, NULL, dovecot_setup,
              test_dovecot_wrong_password, dovecot_teardown);
  g_test_add ("/popgate/dovecot/seed", DovecotFixture, NULL, dovecot_setup, test_dovecot_seed,
              dovecot_teardown);
  g_test_add ("/popgate/dovecot/pop3", DovecotFixture, NULL, dovecot_setup, test_dovecot_pop3,
              dovecot_teardown);
  g_test_add ("/popgate/dovecot/pause", DovecotFixture, NULL, dovecot_setup, test_dovecot_pause,
              dovecot_teardown);
  g_test_add ("/popgate/dovecot/metadata", DovecotFixture, &with_metadata, dovecot_setup,
              test_dovecot_metadata, dovecot_teardown);
  g_test_add ("/popgate/dovecot/stop", DovecotFixture, NULL, dovecot_setup, test_dovecot_stop,
              dovecot_teardown);
  return g_test_run ();
}
