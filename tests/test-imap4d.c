/* popgate — POP3 over GNU mailutils imap4d, a real server without UIDPLUS, MOVE and
 * SASL-IR that ends the tagged OK of AUTHENTICATE with a bare LF (issue 13): the real
 * popgate binary in front of imap4d (tests/pg-test-imap4d.c), driven by a small POP3
 * client; imap4d's content is checked over IMAP.
 *
 * One imap4d serves the whole program; each test has its own user and its own popgate.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-imap.h"
#include "pg-test-imap4d.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include <string.h>

static PgTestImap4d *upstream = NULL;

#define PASSWORD "imap4d-pa55 w0rd"
#define WAIT_MS 20000

typedef struct
{
  gchar *user;
  PgTestPopgate *popgate;
} Fixture;

static const char *const sample_messages[] = {
  "From: a@example.org\nSubject: one\n\nHello one.\n",
  "From: a@example.org\nSubject: two\n\n.a dot\nHello two.\n",
  "From: a@example.org\nSubject: three\n\nHello three.\n",
};

static gchar *
fixture_user_name (void)
{
  const char *path = g_test_get_path ();
  return g_strconcat (strrchr (path, '/') + 1, "@example.org", NULL);
}

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  const char *const *settings = data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *port = NULL;

  fx->user = fixture_user_name ();
  fx->popgate = pg_test_popgate_new (NULL, "none", &error);
  g_assert_no_error (error);
  port = g_strdup_printf ("%u", upstream->port);
  pg_test_popgate_set (fx->popgate, "upstream", "host", upstream->host);
  pg_test_popgate_set (fx->popgate, "upstream", "port", port);
  pg_test_popgate_set (fx->popgate, "upstream", "tls", "none");
  pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "10ms");
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    pg_test_popgate_set (fx->popgate, settings[i], settings[i + 1], settings[i + 2]);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);

  g_assert_null (strstr (log, PASSWORD));
  g_assert_true (pg_test_popgate_stop (fx->popgate));
  pg_test_popgate_free (fx->popgate);
  g_free (fx->user);
}

static PgTestPop3 *
pop3_login (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *status = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);

  g_assert_no_error (error);
  if (!pg_test_pop3_login (pop3, fx->user, PASSWORD, &status, &error))
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
      g_autofree gchar *up = pg_test_read_file (upstream->log_file);
      g_error ("login through popgate to imap4d: %s\npopgate:\n%s\nimap4d:\n%s", status, log, up);
    }
  return pop3;
}

static PgTestImap *
imap_login (Fixture *fx, const char *mailbox)
{
  g_autoptr (GError) error = NULL;
  PgTestImap *imap = pg_test_imap_connect (upstream->host, upstream->port, NULL, &error);

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, fx->user, PASSWORD, &error), error);
  if (mailbox != NULL)
    PG_TEST_ASSERT_OK (pg_test_imap_select (imap, mailbox, FALSE, NULL, NULL, &error), error);
  return imap;
}

static guint
upstream_count (Fixture *fx, const char *mailbox)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = imap_login (fx, mailbox);
  g_autoptr (GArray) uids = pg_test_imap_uid_search_all (imap, &error);

  g_assert_no_error (error);
  pg_test_imap_logout (imap, NULL);
  return uids->len;
}

/* Through IMAP APPEND: imap4d gives a message it finds in the mbox without its own X-UID
 * header a new UIDVALIDITY (every client would see the mailbox anew). */
static void
seed (Fixture *fx, guint first, guint n)
{
  g_autoptr (PgTestImap) imap = imap_login (fx, NULL);

  for (guint i = first; i < first + n; i++)
    {
      g_autoptr (GError) error = NULL;
      g_auto (GStrv) lines = g_strsplit (sample_messages[i], "\n", -1);
      g_autofree gchar *crlf = g_strjoinv ("\r\n", lines);
      PG_TEST_ASSERT_OK (
          pg_test_imap_append (imap, "INBOX", NULL, crlf, strlen (crlf), NULL, &error), error);
    }
  pg_test_imap_logout (imap, NULL);
}

static gchar *
stat_reply (PgTestPop3 *pop3)
{
  return pg_test_pop3_cmd (pop3, "STAT");
}

/* The login works (AUTHENTICATE PLAIN, answered with a bare LF) and RETR serves each
 * message as imap4d does over IMAP, byte for byte. */
static void
test_login_retr (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) uids = NULL;
  g_autofree gchar *stat = NULL;

  seed (fx, 0, 3);
  pop3 = pop3_login (fx);
  stat = stat_reply (pop3);
  g_assert_true (g_str_has_prefix (stat, "+OK 3 "));
  imap = imap_login (fx, "INBOX");
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 3);
  for (guint i = 0; i < 3; i++)
    {
      g_autoptr (GBytes) want
          = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, i), &error);
      g_autoptr (GBytes) got = NULL;
      g_assert_no_error (error);
      got = pg_test_pop3_retr (pop3, i + 1, NULL, &error);
      g_assert_no_error (error);
      g_assert_true (g_bytes_equal (got, want));
    }
  pg_test_imap_logout (imap, NULL);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

/* A no-keep client (delete = expunge, as fetchmail without --keep) polls twice: without
 * UIDPLUS the first QUIT leaves the messages flagged (-ERR [SYS/PERM], never a plain
 * EXPUNGE), and the second poll is offered only what arrived since. */
static void
test_no_keep_polls (Fixture *fx, gconstpointer data)
{
  seed (fx, 0, 2);
  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
    g_autofree gchar *quit = NULL;

    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 2 ");
    g_assert_nonnull (pg_test_pop3_retr (pop3, 1, NULL, NULL));
    g_assert_nonnull (pg_test_pop3_retr (pop3, 2, NULL, NULL));
    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
    quit = pg_test_pop3_cmd (pop3, "QUIT");
    g_test_message ("QUIT on imap4d: %s", quit);
    g_assert_true (g_str_has_prefix (quit, "-ERR [SYS/PERM]"));
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "lacks UIDPLUS", WAIT_MS));
  /* Still there upstream (flagged): nothing another client flagged was expunged. */
  g_assert_cmpuint (upstream_count (fx, "INBOX"), ==, 2);
  seed (fx, 2, 1);
  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 1 ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
}

/* delete = move:Trash without MOVE (and UIDPLUS): each message is copied once, however
 * often the client QUITs. */
static void
test_move_copies_once (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  seed (fx, 0, 3);
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, NULL);
    g_autofree gchar *reply = pg_test_imap_command (imap, "CREATE Trash", &error);
    g_assert_no_error (error);
    pg_test_imap_logout (imap, NULL);
  }
  for (guint round = 0; round < 2; round++)
    {
      g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
      g_autofree gchar *quit = NULL;

      /* Round 0 DELEs two of three; round 1 DELEs what it is offered (the third). */
      PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", round == 0 ? "+OK 3 " : "+OK 1 ");
      PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
      if (round == 0)
        PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
      quit = pg_test_pop3_cmd (pop3, "QUIT");
      g_test_message ("QUIT %u, move on imap4d: %s", round, quit);
      g_assert_true (g_str_has_prefix (quit, "-ERR [SYS/PERM]"));
      g_assert_true (pg_test_pop3_wait_closed (pop3));
    }
  g_assert_cmpuint (upstream_count (fx, "Trash"), ==, 3);
  g_assert_cmpuint (upstream_count (fx, "INBOX"), ==, 3);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  static const char *const move[] = { "pop3", "delete", "move:Trash", NULL };
  static const struct
  {
    const char *path;
    const char *const *settings;
    void (*func) (Fixture *, gconstpointer);
  } tests[] = {
    { "/popgate/imap4d/login-retr", NULL, test_login_retr },
    { "/popgate/imap4d/no-keep-polls", NULL, test_no_keep_polls },
    { "/popgate/imap4d/move-copies-once", move, test_move_copies_once },
  };
  int rc;

  g_test_init (&argc, &argv, NULL);
  upstream = pg_test_imap4d_new (&error);
  g_assert_no_error (error);
  for (gsize i = 0; i < G_N_ELEMENTS (tests); i++)
    {
      g_autofree gchar *user = g_strconcat (strrchr (tests[i].path, '/') + 1, "@example.org", NULL);
      if (!pg_test_imap4d_add_user (upstream, user, PASSWORD, &error))
        g_error ("%s", error->message);
      g_test_add (tests[i].path, Fixture, tests[i].settings, fixture_setup, tests[i].func,
                  fixture_teardown);
    }
  if (!pg_test_imap4d_start (upstream, &error))
    g_error ("cannot start imap4d: %s", error->message);
  rc = g_test_run ();
  pg_test_imap4d_free (upstream);
  return rc;
}
