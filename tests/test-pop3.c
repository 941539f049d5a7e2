/* popgate — POP3 front end integration tests: the real popgate binary in front of a real
 * Dovecot, driven by a small POP3 client (and by Python's poplib); the upstream's content is
 * checked over IMAP.
 *
 * The same program is the `cyrus` test: with PG_TEST_UPSTREAM=cyrus (tests/meson.build)
 * the upstream is a real Cyrus IMAP (tests/pg-test-cyrus.c) and the cases that hold for
 * any IMAP server run against it, as /popgate/cyrus/...
 *
 * One upstream serves the whole program; each test has its own user (named after the
 * test) and its own popgate.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-cyrus.h"
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include "popgate/pg-codec-dotstuff.h"

#include <signal.h>
#include <string.h>

/* Exactly one of them runs. */
static PgTestDovecot *upstream = NULL;
static PgTestCyrus *cyrus = NULL;
/* The upstream's IMAP listener, whichever it is. */
static const char *upstream_host = NULL;
static guint16 upstream_port = 0;
/* Its trash mailbox (for delete = move:...): Cyrus's namespace puts it under INBOX. */
static const char *trash_mailbox = "Trash";

#define PASSWORD "p\"a\\ss w0rd-é"

typedef struct
{
  gchar *user;
  PgTestPopgate *popgate;
  GArray *uids;      /* guint32: the seeded messages, in order */
  GPtrArray *bodies; /* GBytes: what Dovecot serves for each (CRLF) */
} Fixture;

/* Messages with every awkward shape RETR must carry byte-exact. */
static const char *const sample_messages[] = {
  "From: a@example.org\r\nTo: b@example.org\r\nSubject: one\r\n\r\nHello.\r\n",
  "Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two dots\r\nend\r\n",
  "Subject: no final newline\r\n\r\nlast line without CRLF",
  "Subject: bare LF\n\nline one\nline two\n",
  "Subject: 8bit \xc3\xa9t\xc3\xa9\r\n\r\nBody with 8-bit: \xe2\x82\xac \xff\xfe\r\n",
};

static gchar *
fixture_user_name (void)
{
  /* "/popgate/pop3/retr-exact" → "retr-exact" (Dovecot lower-cases names anyway). */
  const char *path = g_test_get_path ();
  const char *base = strrchr (path, '/');
  return g_ascii_strdown (base != NULL ? base + 1 : path, -1);
}

static PgTestImap *
imap_login (const Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestImap *imap = pg_test_imap_connect (upstream_host, upstream_port, NULL, &error);

  g_assert_no_error (error);
  g_assert_true (pg_test_imap_login (imap, fx->user, PASSWORD, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error));
  g_assert_no_error (error);
  return imap;
}

static void
fixture_seed (Fixture *fx, const char *data, gsize len)
{
  g_autoptr (GError) error = NULL;
  gboolean ok = cyrus != NULL
                    ? pg_test_cyrus_append (cyrus, fx->user, "INBOX", data, len, &error)
                    : pg_test_dovecot_append (upstream, fx->user, "INBOX", data, len, &error);
  g_assert_no_error (error);
  g_assert_true (ok);
}

/* Read back what Dovecot now holds: UIDs and the exact bytes it serves. */
static void
fixture_snapshot (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = imap_login (fx);

  g_clear_pointer (&fx->uids, g_array_unref);
  g_clear_pointer (&fx->bodies, g_ptr_array_unref);
  fx->uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  fx->bodies = g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref);
  for (guint i = 0; i < fx->uids->len; i++)
    {
      GBytes *body = pg_test_imap_fetch_body (imap, g_array_index (fx->uids, guint32, i), &error);
      g_assert_no_error (error);
      g_ptr_array_add (fx->bodies, body);
    }
}

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  const char *const *settings = data;

  fx->user = fixture_user_name ();
  for (gsize i = 0; i < G_N_ELEMENTS (sample_messages); i++)
    fixture_seed (fx, sample_messages[i], strlen (sample_messages[i]));
  fixture_snapshot (fx);

  fx->popgate = pg_test_popgate_new (upstream, "none", &error);
  g_assert_no_error (error);
  if (cyrus != NULL)
    {
      g_autofree gchar *port = g_strdup_printf ("%u", cyrus->port);
      pg_test_popgate_set (fx->popgate, "upstream", "host", cyrus->host);
      pg_test_popgate_set (fx->popgate, "upstream", "port", port);
      pg_test_popgate_set (fx->popgate, "upstream", "tls", "none");
    }
  pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "50ms");
  if (g_getenv ("PG_DEBUG_POPGATE") != NULL)
    pg_test_popgate_add_arg (fx->popgate, "-v");
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    if (strcmp (settings[i], "-") == 0)
      pg_test_popgate_add_arg (fx->popgate, settings[i + 2]); /* "-", "arg", "-v" */
    else
      pg_test_popgate_set (fx->popgate, settings[i], settings[i + 1], settings[i + 2]);
  g_assert_true (pg_test_popgate_start (fx->popgate, &error));
  g_assert_no_error (error);
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *log = NULL;

  if (fx->popgate != NULL)
    {
      log = pg_test_popgate_read_log (fx->popgate);
      /* Never a password in popgate's output, at any log level. */
      g_assert_null (strstr (log, PASSWORD));
      g_assert_true (pg_test_popgate_stop (fx->popgate));
    }
  g_clear_pointer (&fx->popgate, pg_test_popgate_free);
  g_clear_pointer (&fx->uids, g_array_unref);
  g_clear_pointer (&fx->bodies, g_ptr_array_unref);
  g_free (fx->user);
}

static PgTestPop3 *
pop3_connect (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3_port, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK"));
  return pop3;
}

static PgTestPop3 *
pop3_login (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pop3_connect (fx);

  g_assert_true (pg_test_pop3_login (pop3, fx->user, PASSWORD, NULL, &error));
  g_assert_no_error (error);
  return pop3;
}

static GBytes *
multiline (PgTestPop3 *pop3, const char *command)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *status = pg_test_pop3_cmd (pop3, command);
  GBytes *body;

  g_assert_true (g_str_has_prefix (status, "+OK"));
  body = pg_test_pop3_read_multiline (pop3, &error);
  g_assert_no_error (error);
  return body;
}

static gboolean
bytes_contains_line (GBytes *bytes, const char *line)
{
  g_autofree gchar *text = g_strndup (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
  g_autofree gchar *needle = g_strconcat ("\r\n", line, "\r\n", NULL);
  g_autofree gchar *framed = g_strconcat ("\r\n", text, NULL);
  return strstr (framed, needle) != NULL;
}

/* --- tests ----------------------------------------------------------------------------- */

static void
test_capa (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autoptr (GBytes) capa = multiline (pop3, "CAPA");
  const char *const expected[]
      = { "TOP",        "UIDL", "USER",        "SASL PLAIN LOGIN", "RESP-CODES", "AUTH-RESP-CODE",
          "PIPELINING", "STLS", "EXPIRE NEVER" };

  for (gsize i = 0; i < G_N_ELEMENTS (expected); i++)
    if (!bytes_contains_line (capa, expected[i]))
      g_error ("CAPA lacks %s", expected[i]);
  g_assert_false (bytes_contains_line (capa, "LOGIN-DELAY 0"));
  {
    g_autoptr (GBytes) mechs = multiline (pop3, "AUTH");
    g_assert_true (bytes_contains_line (mechs, "PLAIN"));
    g_assert_true (bytes_contains_line (mechs, "LOGIN"));
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
}

static void
test_stat_list_uidl (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (GBytes) list = NULL;
  g_autoptr (GBytes) uidl = NULL;
  g_autoptr (GString) want_list = g_string_new (NULL);
  g_autoptr (GString) want_uidl = g_string_new (NULL);
  g_autofree gchar *stat = NULL;
  g_autofree gchar *want_stat = NULL;
  guint64 total = 0;
  guint32 uidvalidity = 0;

  {
    g_autoptr (GError) error = NULL;
    g_autoptr (PgTestImap) imap = imap_login (fx);
    g_assert_true (pg_test_imap_select (imap, "INBOX", TRUE, &uidvalidity, NULL, &error));
  }
  for (guint i = 0; i < fx->uids->len; i++)
    {
      gsize size = g_bytes_get_size (g_ptr_array_index (fx->bodies, i));
      total += size;
      g_string_append_printf (want_list, "%u %" G_GSIZE_FORMAT "\r\n", i + 1, size);
      g_string_append_printf (want_uidl, "%u %08x%08x\r\n", i + 1,
                              g_array_index (fx->uids, guint32, i), uidvalidity);
    }
  stat = pg_test_pop3_cmd (pop3, "STAT");
  want_stat = g_strdup_printf ("+OK %u %" G_GUINT64_FORMAT, fx->uids->len, total);
  g_assert_cmpstr (stat, ==, want_stat);
  list = multiline (pop3, "LIST");
  g_assert_cmpmem (g_bytes_get_data (list, NULL), g_bytes_get_size (list), want_list->str,
                   want_list->len);
  uidl = multiline (pop3, "UIDL");
  g_assert_cmpmem (g_bytes_get_data (uidl, NULL), g_bytes_get_size (uidl), want_uidl->str,
                   want_uidl->len);
  {
    g_autofree gchar *one = pg_test_pop3_cmd (pop3, "LIST 2");
    g_autofree gchar *want = g_strdup_printf ("+OK 2 %" G_GSIZE_FORMAT,
                                              g_bytes_get_size (g_ptr_array_index (fx->bodies, 1)));
    g_assert_cmpstr (one, ==, want);
  }
  {
    g_autofree gchar *one = pg_test_pop3_cmd (pop3, "UIDL 1");
    g_autofree gchar *want
        = g_strdup_printf ("+OK 1 %08x%08x", g_array_index (fx->uids, guint32, 0), uidvalidity);
    g_assert_cmpstr (one, ==, want);
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

/* One session's UIDL listing, a UIDL per message in order (without the numbers). */
static GPtrArray *
uidl_session (Fixture *fx, const char *dele)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (GBytes) uidl = multiline (pop3, "UIDL");
  g_autofree gchar *text = g_strndup (g_bytes_get_data (uidl, NULL), g_bytes_get_size (uidl));
  g_auto (GStrv) lines = g_strsplit (text, "\r\n", -1);
  GPtrArray *uidls = g_ptr_array_new_with_free_func (g_free);

  for (guint i = 0; lines[i] != NULL && lines[i][0] != '\0'; i++)
    {
      const char *space = strchr (lines[i], ' ');
      g_assert_nonnull (space);
      g_assert_cmpuint (g_ascii_strtoull (lines[i], NULL, 10), ==, i + 1);
      g_ptr_array_add (uidls, g_strdup (space + 1));
    }
  if (dele != NULL)
    PG_TEST_POP3_ASSERT_REPLY (pop3, dele, "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  return uidls;
}

/* UIDLs are stable across sessions: the next session lists the same one for each message,
 * and after a DELE + QUIT the others keep theirs (only the message numbers move up). */
static void
test_uidl_stable (Fixture *fx, gconstpointer data)
{
  g_autoptr (GPtrArray) first = uidl_session (fx, NULL);
  g_autoptr (GPtrArray) second = uidl_session (fx, "DELE 2");
  g_autoptr (GPtrArray) third = uidl_session (fx, NULL);

  g_assert_cmpuint (first->len, ==, fx->uids->len);
  g_assert_cmpuint (second->len, ==, first->len);
  for (guint i = 0; i < first->len; i++)
    g_assert_cmpstr (g_ptr_array_index (second, i), ==, g_ptr_array_index (first, i));
  g_assert_cmpuint (third->len, ==, first->len - 1);
  for (guint i = 0, j = 0; i < first->len; i++)
    if (i != 1)
      g_assert_cmpstr (g_ptr_array_index (third, j++), ==, g_ptr_array_index (first, i));
}

/* RETR gives exactly the bytes the upstream serves over IMAP, and LIST's size is that
 * count. The upstream serves each shape as it was delivered, but for CRLF line ends (8-bit
 * headers too: Cyrus runs with munge8bit off). */
static void
test_retr_exact (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);

  g_assert_cmpuint (fx->bodies->len, ==, G_N_ELEMENTS (sample_messages));
  for (guint i = 0; i < G_N_ELEMENTS (sample_messages); i++)
    {
      g_autoptr (GBytes) sent = pg_test_to_crlf (sample_messages[i], strlen (sample_messages[i]));
      g_assert_true (g_bytes_equal (g_ptr_array_index (fx->bodies, i), sent));
    }

  for (guint i = 0; i < fx->uids->len; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *status = NULL;
      g_autoptr (GBytes) got = pg_test_pop3_retr (pop3, i + 1, &status, &error);
      GBytes *want = g_ptr_array_index (fx->bodies, i);
      g_autofree gchar *want_status
          = g_strdup_printf ("+OK %" G_GSIZE_FORMAT " octets", g_bytes_get_size (want));
      gsize want_len = g_bytes_get_size (want);
      const guint8 *want_data = g_bytes_get_data (want, NULL);

      g_assert_no_error (error);
      g_assert_cmpstr (status, ==, want_status);
      if (want_len >= 2 && want_data[want_len - 2] == '\r' && want_data[want_len - 1] == '\n')
        g_assert_true (g_bytes_equal (got, want));
      else
        {
          /* POP3 must end the last line: exactly CRLF is added. */
          g_assert_cmpuint (g_bytes_get_size (got), ==, want_len + 2);
          g_assert_cmpmem (g_bytes_get_data (got, NULL), want_len, want_data, want_len);
        }
    }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

/* [upstream] compress = auto: the upstream session runs deflated (Dovecot offers
 * COMPRESS=DEFLATE with imap_zlib) and every RETR is still byte-exact. */
static void
test_compress (Fixture *fx, gconstpointer data)
{
  test_retr_exact (fx, data);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "upstream: COMPRESS=DEFLATE on", 10000));
}

static void
test_retr_large (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GString) big = g_string_new ("Subject: big\r\n\r\n");
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (GBytes) got = NULL;
  g_autofree gchar *line = g_strnfill (1998, 'x');

  /* 20 MB, with 2,000-octet lines and a dot at each line start every so often. */
  for (guint i = 0; big->len < 20 * 1000 * 1000; i++)
    {
      if (i % 7 == 0)
        g_string_append_c (big, '.');
      g_string_append_len (big, line, 1998 - (i % 7 == 0));
      g_string_append (big, "\r\n");
    }
  fixture_seed (fx, big->str, big->len);
  fixture_snapshot (fx);
  pop3 = pop3_login (fx);
  got = pg_test_pop3_retr (pop3, fx->uids->len, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_bytes_get_size (got), ==, big->len);
  g_assert_true (g_bytes_equal (got, g_ptr_array_index (fx->bodies, fx->uids->len - 1)));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

static void
test_top (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (GBytes) top0 = multiline (pop3, "TOP 2 0");
  g_autoptr (GBytes) top1 = multiline (pop3, "TOP 2 1");
  g_autoptr (GBytes) top_all = multiline (pop3, "TOP 2 100");
  const char *want0 = "Subject: dots\r\n\r\n";
  const char *want1 = "Subject: dots\r\n\r\n.starts with a dot\r\n";

  g_assert_cmpmem (g_bytes_get_data (top0, NULL), g_bytes_get_size (top0), want0, strlen (want0));
  g_assert_cmpmem (g_bytes_get_data (top1, NULL), g_bytes_get_size (top1), want1, strlen (want1));
  g_assert_true (g_bytes_equal (top_all, g_ptr_array_index (fx->bodies, 1)));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "TOP 99 1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "TOP 1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

static void
test_errors (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *long_line = NULL;

  /* Wrong state. */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "PASS x", "-ERR");
  {
    g_autoptr (GError) error = NULL;
    g_assert_true (pg_test_pop3_login (pop3, fx->user, PASSWORD, NULL, &error));
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "USER again", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 0", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 99", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR abc", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR -1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 1 2", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "LIST 4294967296", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "XYZZY", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "LIST 1", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "NOOP", "+OK");
  long_line = g_strnfill (600, 'A');
  PG_TEST_POP3_ASSERT_REPLY (pop3, long_line, "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "NOOP", "+OK");
  /* Longer than the input buffer and not yet ended: the -ERR comes at once, not when (or
   * if) the line's end arrives. */
  {
    g_autoptr (GError) error = NULL;
    g_autofree gchar *huge = g_strnfill (3 * 8192, 'B');
    g_autofree gchar *reply = NULL;

    g_assert_true (pg_test_pop3_send (pop3, huge, strlen (huge), &error));
    reply = pg_test_pop3_read_line (pop3, &error);
    g_assert_no_error (error);
    g_assert_true (g_str_has_prefix (reply, "-ERR"));
    g_assert_true (pg_test_pop3_send (pop3, "BB\r\n", 4, &error));
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "NOOP", "+OK");
  /* Nothing was QUIT: the drop below must leave the upstream as it was. */
}

static void
test_auth_failures (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *wrong = NULL;
  g_autofree gchar *unknown = NULL;

  g_assert_false (pg_test_pop3_login (pop3, fx->user, "wrong", &wrong, NULL));
  g_assert_false (pg_test_pop3_login (pop3, "nobody-here", "wrong", &unknown, NULL));
  g_assert_true (g_str_has_prefix (wrong, "-ERR [AUTH]"));
  /* One uniform answer: an unknown user is not told apart from a wrong password. */
  g_assert_cmpstr (wrong, ==, unknown);
  /* The third failure (max_auth_failures = 3) ends the session. */
  g_assert_false (pg_test_pop3_login (pop3, fx->user, "wrong again", NULL, NULL));
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  (void) error;
}

static void
test_sasl (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *plain_raw = g_strdup_printf ("%c%s%c%s", 0, fx->user, 0, PASSWORD);
  gsize plain_len = 2 + strlen (fx->user) + strlen (PASSWORD);
  g_autofree gchar *plain = g_base64_encode ((const guchar *) plain_raw, plain_len);
  g_autofree gchar *ir = g_strdup_printf ("AUTH PLAIN %s", plain);
  g_autofree gchar *user64 = g_base64_encode ((const guchar *) fx->user, strlen (fx->user));
  g_autofree gchar *pass64 = g_base64_encode ((const guchar *) PASSWORD, strlen (PASSWORD));

  /* Continuation, cancelled with "*". */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN", "+ ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "*", "-ERR");
  /* Continuation. */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN", "+ ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, plain, "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_clear_pointer (&pop3, pg_test_pop3_free);

  /* Initial response. */
  pop3 = pop3_connect (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, ir, "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 5 ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_clear_pointer (&pop3, pg_test_pop3_free);

  /* AUTH LOGIN. */
  pop3 = pop3_connect (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH LOGIN", "+ VXNlcm5hbWU6");
  PG_TEST_POP3_ASSERT_REPLY (pop3, user64, "+ UGFzc3dvcmQ6");
  PG_TEST_POP3_ASSERT_REPLY (pop3, pass64, "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_clear_pointer (&pop3, pg_test_pop3_free);

  /* Garbage base64. */
  pop3 = pop3_connect (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH PLAIN !!!!", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "AUTH CRAM-MD5", "-ERR");
}

/* DELE + QUIT expunges exactly those UIDs; an IMAP user's \Deleted-but-kept message
 * survives (never a plain EXPUNGE). */
static void
test_dele_quit_expunge (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (PgTestImap) imap = imap_login (fx);
  g_autoptr (GArray) after = NULL;
  guint32 flagged = g_array_index (fx->uids, guint32, 4);

  g_assert_true (pg_test_imap_uid_store (imap, flagged, "+FLAGS.SILENT (\\Deleted)", &error));
  g_assert_no_error (error);
  pop3 = pop3_login (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 3", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 3 ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));

  /* A fresh IMAP session sees the mailbox as it is now. */
  g_clear_pointer (&imap, pg_test_imap_free);
  imap = imap_login (fx);
  after = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, 3);
  g_assert_cmpuint (g_array_index (after, guint32, 0), ==, g_array_index (fx->uids, guint32, 1));
  g_assert_cmpuint (g_array_index (after, guint32, 1), ==, g_array_index (fx->uids, guint32, 3));
  g_assert_cmpuint (g_array_index (after, guint32, 2), ==, flagged);
}

/* DELE then a dropped connection (or RSET + QUIT) changes nothing upstream. */
static void
test_no_quit_no_change (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) after = NULL;

  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
  g_clear_pointer (&pop3, pg_test_pop3_free); /* dropped, no QUIT */

  pop3 = pop3_login (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 5 ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RSET", "+OK 5 ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 1", "+OK");
  g_clear_pointer (&pop3, pg_test_pop3_free);

  imap = imap_login (fx);
  after = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, 5);
  {
    /* RETR without QUIT does not mark \Seen either. */
    g_auto (GStrv) flags
        = pg_test_imap_fetch_flags (imap, g_array_index (fx->uids, guint32, 0), &error);
    g_assert_no_error (error);
    g_assert_false (g_strv_contains ((const char *const *) flags, "\\Seen"));
  }
}

static void
check_seen_after_retr (Fixture *fx, gboolean want_seen)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (PgTestImap) imap = NULL;
  g_auto (GStrv) flags1 = NULL;
  g_auto (GStrv) flags2 = NULL;

  {
    g_autoptr (GBytes) body = pg_test_pop3_retr (pop3, 1, NULL, &error);
    g_assert_no_error (error);
  }
  {
    g_autoptr (GBytes) top = multiline (pop3, "TOP 2 1");
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  imap = imap_login (fx);
  flags1 = pg_test_imap_fetch_flags (imap, g_array_index (fx->uids, guint32, 0), &error);
  g_assert_no_error (error);
  flags2 = pg_test_imap_fetch_flags (imap, g_array_index (fx->uids, guint32, 1), &error);
  g_assert_no_error (error);
  g_assert_cmpint (g_strv_contains ((const char *const *) flags1, "\\Seen"), ==, want_seen);
  /* TOP is not a retrieval. */
  g_assert_false (g_strv_contains ((const char *const *) flags2, "\\Seen"));
}

static void
test_mark_seen_on (Fixture *fx, gconstpointer data)
{
  check_seen_after_retr (fx, TRUE);
}

static void
test_mark_seen_off (Fixture *fx, gconstpointer data)
{
  check_seen_after_retr (fx, FALSE);
}

static void
test_move_trash (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) inbox = NULL;
  g_autoptr (GArray) trash = NULL;

  /* Cyrus made INBOX.Trash at the user's first login. */
  if (cyrus == NULL)
    PG_TEST_ASSERT_OK (pg_test_dovecot_create_mailbox (upstream, fx->user, "Trash", &error), error);
  pop3 = pop3_login (fx);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));

  imap = imap_login (fx);
  inbox = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (inbox->len, ==, 4);
  g_assert_true (pg_test_imap_select (imap, trash_mailbox, TRUE, NULL, NULL, &error));
  trash = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (trash->len, ==, 1);
  {
    g_autoptr (GBytes) moved
        = pg_test_imap_fetch_body (imap, g_array_index (trash, guint32, 0), &error);
    g_assert_no_error (error);
    g_assert_true (g_bytes_equal (moved, g_ptr_array_index (fx->bodies, 1)));
  }
}

/* delete = move: to a mailbox the server does not have (on Cyrus: "Trash", where its
 * namespace has INBOX.Trash): the login is refused with [SYS/PERM] before anything is
 * downloaded, and nothing changes upstream. */
static void
test_move_target_missing (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) after = NULL;
  g_autofree gchar *status = NULL;

  g_assert_false (pg_test_pop3_login (pop3, fx->user, PASSWORD, &status, NULL));
  g_test_message ("login, move target missing: %s", status);
  g_assert_true (g_str_has_prefix (status, "-ERR [SYS/PERM]"));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  imap = imap_login (fx);
  after = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, fx->uids->len);
}

static void
test_keep (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) after = NULL;

  PG_TEST_POP3_ASSERT_REPLY (pop3, "CAPA", "+OK");
  g_assert_nonnull (pg_test_pop3_read_multiline (pop3, NULL));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  imap = imap_login (fx);
  after = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, 5);
}

/* delete = keep: a DELE'd message stays upstream and this client is not offered it again
 * in the next session (with [state] backend = imap-metadata, the record is on the server). */
static void
test_keep_hides (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) after = NULL;
  g_autofree gchar *uidl = NULL;
  g_autofree gchar *want = NULL;

  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }
  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
    g_autofree gchar *stat = g_strdup_printf ("+OK %u ", fx->uids->len - 1);

    PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", stat);
    /* Message 2 is now the one that was 3. */
    uidl = pg_test_pop3_cmd (pop3, "UIDL 2");
    want = g_strdup_printf ("+OK 2 %08x", g_array_index (fx->uids, guint32, 2));
    g_assert_true (g_str_has_prefix (uidl, want));
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  imap = imap_login (fx);
  after = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, fx->uids->len);
}

/* Another client expunges a message during the POP3 session: RETR of it fails, the rest
 * of the session goes on. Cyrus (RFC 2180 4.1.2) still serves an expunged message to a
 * session that has not been told of the expunge: then RETR gives it whole and exact. */
static void
test_vanished (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (PgTestImap) imap = imap_login (fx);

  g_assert_true (pg_test_imap_expunge_uid (imap, g_array_index (fx->uids, guint32, 1), &error));
  g_assert_no_error (error);
  if (cyrus != NULL)
    {
      g_autoptr (GBytes) body = pg_test_pop3_retr (pop3, 2, NULL, &error);
      g_assert_no_error (error);
      g_assert_true (g_bytes_equal (body, g_ptr_array_index (fx->bodies, 1)));
    }
  else
    PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 2", "-ERR");
  {
    g_autoptr (GBytes) body = pg_test_pop3_retr (pop3, 3, NULL, &error);
    g_assert_no_error (error);
    g_assert_true (g_bytes_equal (body, g_ptr_array_index (fx->bodies, 2))
                   || g_bytes_get_size (body)
                          == g_bytes_get_size (g_ptr_array_index (fx->bodies, 2)) + 2);
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

static void
test_in_use (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) first = pop3_login (fx);
  g_autoptr (PgTestPop3) second = pop3_connect (fx);
  g_autofree gchar *status = NULL;
  g_autofree gchar *user_tag = g_strdup_printf ("%s#phone", fx->user);

  g_assert_false (pg_test_pop3_login (second, fx->user, PASSWORD, &status, NULL));
  g_assert_true (g_str_has_prefix (status, "-ERR [IN-USE]"));
  /* Another client tag is another maildrop view. */
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (PgTestPop3) third = pop3_connect (fx);
    g_assert_true (pg_test_pop3_login (third, user_tag, PASSWORD, NULL, &error));
    g_assert_no_error (error);
  }
  PG_TEST_POP3_ASSERT_REPLY (first, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (first));
  g_clear_pointer (&status, g_free);
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (PgTestPop3) again = pop3_connect (fx);
    g_assert_true (pg_test_pop3_login (again, fx->user, PASSWORD, NULL, &error));
    g_assert_no_error (error);
  }
}

/* lock_session = false (the default, as Dovecot): a second session of the same client
 * logs in while the first lasts; each works on its own snapshot. */
static void
test_concurrent (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) first = pop3_login (fx);
  g_autoptr (PgTestPop3) second = pop3_login (fx);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) after = NULL;

  PG_TEST_POP3_ASSERT_REPLY (first, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (second, "STAT", "+OK 5 ");
  PG_TEST_POP3_ASSERT_REPLY (second, "DELE 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (first, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (first));
  /* The second session's snapshot still numbers message 1; it never touches it. */
  PG_TEST_POP3_ASSERT_REPLY (second, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (second));
  imap = imap_login (fx);
  after = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, 3);
  g_assert_cmpuint (g_array_index (after, guint32, 0), ==, g_array_index (fx->uids, guint32, 2));
}

static void
test_pipelining (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *batch = g_strdup_printf ("USER %s\r\nPASS %s\r\nSTAT\r\nRETR 1\r\nRETR 2\r\n"
                                             "NOOP\r\nDELE 5\r\nRSET\r\nQUIT\r\n",
                                             fx->user, PASSWORD);
  g_autofree gchar *l1 = NULL, *l2 = NULL, *l3 = NULL;

  g_assert_true (pg_test_pop3_send (pop3, batch, strlen (batch), &error));
  l1 = pg_test_pop3_read_line (pop3, &error);
  l2 = pg_test_pop3_read_line (pop3, &error);
  l3 = pg_test_pop3_read_line (pop3, &error);
  g_assert_true (g_str_has_prefix (l1, "+OK"));
  g_assert_true (g_str_has_prefix (l2, "+OK"));
  g_assert_true (g_str_has_prefix (l3, "+OK 5 "));
  for (guint i = 0; i < 2; i++)
    {
      g_autofree gchar *status = pg_test_pop3_read_line (pop3, &error);
      g_autoptr (GBytes) body = NULL;
      g_assert_true (g_str_has_prefix (status, "+OK"));
      body = pg_test_pop3_read_multiline (pop3, &error);
      g_assert_no_error (error);
      g_assert_true (g_bytes_equal (body, g_ptr_array_index (fx->bodies, i)));
    }
  {
    const char *want[] = { "+OK", "+OK", "+OK 5 ", "+OK" };
    for (gsize i = 0; i < G_N_ELEMENTS (want); i++)
      {
        g_autofree gchar *line = pg_test_pop3_read_line (pop3, &error);
        g_assert_no_error (error);
        g_assert_nonnull (line);
        g_assert_true (g_str_has_prefix (line, want[i]));
      }
  }
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  /* The second RETR was fetched upstream (batched with the first) before popgate got to
   * that command. */
  {
    g_autofree gchar *pattern = g_strdup_printf ("U: p[0-9]+ UID FETCH ([0-9]+,)*%u(,[0-9]+)* "
                                                 "\\(UID BODY",
                                                 g_array_index (fx->uids, guint32, 1));
    g_autoptr (GRegex) regex = g_regex_new (pattern, 0, 0, NULL);
    g_autoptr (GMatchInfo) match = NULL;
    g_autofree gchar *log = NULL;
    const char *at_retr;
    gint at_fetch = -1;

    g_assert_true (pg_test_popgate_wait_log (fx->popgate, "trace: C: RETR 2", 5000));
    log = pg_test_popgate_read_log (fx->popgate);
    at_retr = strstr (log, "trace: C: RETR 2");
    g_assert_true (g_regex_match (regex, log, 0, &match));
    g_assert_true (g_match_info_fetch_pos (match, 0, &at_fetch, NULL));
    g_assert_cmpint (at_fetch, <, at_retr - log);
  }
}

/* RETR gives the message as Dovecot serves it (one without a final CRLF gets one). */
static void
assert_retr_body (const Fixture *fx, GBytes *body, guint index)
{
  GBytes *want = g_ptr_array_index (fx->bodies, index);
  gsize want_len = g_bytes_get_size (want);
  gsize len = g_bytes_get_size (body);

  g_assert_true (len == want_len || len == want_len + 2);
  g_assert_cmpmem (g_bytes_get_data (body, NULL), want_len, g_bytes_get_data (want, NULL),
                   want_len);
}

static void
assert_retr (const Fixture *fx, PgTestPop3 *pop3, guint number)
{
  g_autofree gchar *command = g_strdup_printf ("RETR %u", number);
  g_autoptr (GBytes) body = multiline (pop3, command);

  assert_retr_body (fx, body, number - 1);
}

/* A client that RETRs one message after another, one command at a time (most do), gets
 * the next messages read ahead in one batched UID FETCH; when it then asks for something
 * else (TOP, a message out of order, QUIT) the guesses are dropped, and every answer is
 * still exact and QUIT still applies exactly the DELEs. */
static void
test_readahead (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autofree gchar *log = NULL;
  g_autofree gchar *batch = NULL;

  assert_retr (fx, pop3, 1);
  assert_retr (fx, pop3, 2);
  /* RETR 2 continued a run: 3, 4 and 5 went upstream with it, as one command. */
  batch = g_strdup_printf (
      "UID FETCH %u,%u,%u,%u (UID BODY.PEEK[])", g_array_index (fx->uids, guint32, 1),
      g_array_index (fx->uids, guint32, 2), g_array_index (fx->uids, guint32, 3),
      g_array_index (fx->uids, guint32, 4));
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, batch, 5000));

  /* Out of order: 5 is in flight (read ahead, now dropped) and is fetched again; its
   * bodies must not be confused. */
  assert_retr (fx, pop3, 5);
  assert_retr (fx, pop3, 3);
  /* RETR 4 continues a run again (3 → 4): 5 is read ahead, then TOP drops it. */
  assert_retr (fx, pop3, 4);
  {
    g_autoptr (GBytes) top = multiline (pop3, "TOP 1 0");
    const char *want = "From: a@example.org";

    g_assert_cmpuint (g_bytes_get_size (top), >, strlen (want));
    g_assert_cmpmem (g_bytes_get_data (top, NULL), strlen (want), want, strlen (want));
  }
  assert_retr (fx, pop3, 1);
  /* RETR 2 continues 1 → 2: 3, 4, 5 are read ahead; QUIT drops them and still applies. */
  assert_retr (fx, pop3, 2);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  log = pg_test_popgate_read_log (fx->popgate);
  g_assert_nonnull (strstr (log, "dropping"));
  {
    g_autoptr (PgTestImap) imap = imap_login (fx);
    g_autoptr (GArray) left = pg_test_imap_uid_search_all (imap, &error);

    g_assert_no_error (error);
    g_assert_cmpuint (left->len, ==, 4);
    for (guint i = 0, j = 0; i < fx->uids->len; i++)
      if (i != 1)
        g_assert_cmpuint (g_array_index (left, guint32, j++), ==,
                          g_array_index (fx->uids, guint32, i));
  }
}

/* A long pipelined batch of RETRs (each prefetched while the one before streams) comes back
 * complete and in order, including a large message between small ones. */
static void
test_pipelined_retr_batch (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GString) big = g_string_new ("Subject: big\r\n\r\n");
  g_autoptr (GString) batch = g_string_new (NULL);
  g_autoptr (PgTestPop3) pop3 = NULL;

  while (big->len < 3 * 1000 * 1000)
    g_string_append (big, ".dotted line to stuff, and some more text to fill it up\r\n");
  fixture_seed (fx, big->str, big->len);
  fixture_snapshot (fx);
  pop3 = pop3_login (fx);
  for (guint round = 0; round < 3; round++)
    for (guint i = 0; i < fx->uids->len; i++)
      g_string_append_printf (batch, "RETR %u\r\n", i + 1);
  g_string_append (batch, "QUIT\r\n");
  g_assert_true (pg_test_pop3_send (pop3, batch->str, batch->len, &error));
  for (guint round = 0; round < 3; round++)
    for (guint i = 0; i < fx->uids->len; i++)
      {
        g_autofree gchar *status = pg_test_pop3_read_line (pop3, &error);
        g_autoptr (GBytes) body = NULL;
        GBytes *want = g_ptr_array_index (fx->bodies, i);
        gsize want_len = g_bytes_get_size (want);

        g_assert_no_error (error);
        g_assert_nonnull (status);
        if (!g_str_has_prefix (status, "+OK"))
          g_error ("round %u RETR %u: %s", round, i + 1, status);
        body = pg_test_pop3_read_multiline (pop3, &error);
        g_assert_no_error (error);
        /* Messages without a final CRLF get one. */
        g_assert_cmpmem (g_bytes_get_data (body, NULL), want_len, g_bytes_get_data (want, NULL),
                         want_len);
      }
  {
    g_autofree gchar *bye = pg_test_pop3_read_line (pop3, &error);
    g_assert_cmpstr (bye, ==, "+OK popgate signing off.");
  }
}

static void
test_stls (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *plain_raw = g_strdup_printf ("%c%s%c%s", 0, fx->user, 0, PASSWORD);
  g_autofree gchar *plain
      = g_base64_encode ((const guchar *) plain_raw, 2 + strlen (fx->user) + strlen (PASSWORD));
  g_autofree gchar *ir = g_strdup_printf ("AUTH PLAIN %s", plain);
  g_autoptr (GBytes) capa = NULL;

  g_assert_true (pg_test_pop3_stls (pop3, fx->popgate->certs->ca_file, &error));
  g_assert_no_error (error);
  capa = multiline (pop3, "CAPA");
  g_assert_false (bytes_contains_line (capa, "STLS"));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STLS", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, ir, "+OK");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 5 ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

/* Commands pipelined after STLS in plaintext are dropped, not run inside TLS. */
static void
test_stls_injection (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  const char *inject = "STLS\r\nCAPA\r\n";
  g_autofree gchar *status = NULL;

  g_assert_true (pg_test_pop3_send (pop3, inject, strlen (inject), &error));
  status = pg_test_pop3_read_line (pop3, &error);
  g_assert_true (g_str_has_prefix (status, "+OK"));
  /* The injected CAPA must not be answered, in plaintext or inside TLS: the first reply
   * inside TLS is the one to our own QUIT. */
  g_assert_true (pg_test_pop3_start_tls (pop3, fx->popgate->certs->ca_file, &error));
  g_assert_no_error (error);
  {
    g_autofree gchar *quit = pg_test_pop3_cmd (pop3, "QUIT");
    g_assert_cmpstr (quit, ==, "+OK popgate signing off.");
  }
}

static void
test_implicit_tls (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pg_test_pop3_connect (fx->popgate->host, fx->popgate->pop3s_port,
                                                      fx->popgate->certs->ca_file, &error);
  g_assert_no_error (error);
  g_assert_true (pg_test_pop3_login (pop3, fx->user, PASSWORD, NULL, &error));
  g_assert_no_error (error);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 5 ");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

/* popgate's UIDLs are byte-identical to Dovecot's own POP3 server's on the same mailbox. */
static void
test_uidl_matches_dovecot (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) ours = pop3_login (fx);
  g_autoptr (PgTestPop3) theirs
      = pg_test_pop3_connect (upstream_host, upstream->pop3_port, NULL, &error);
  g_autoptr (GBytes) ours_uidl = NULL;
  g_autoptr (GBytes) theirs_uidl = NULL;

  g_assert_no_error (error);
  ours_uidl = multiline (ours, "UIDL");
  PG_TEST_POP3_ASSERT_REPLY (ours, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_login (theirs, fx->user, PASSWORD, NULL, &error));
  g_assert_no_error (error);
  theirs_uidl = multiline (theirs, "UIDL");
  PG_TEST_POP3_ASSERT_REPLY (theirs, "QUIT", "+OK");
  g_assert_cmpuint (g_bytes_get_size (ours_uidl), >, 0);
  g_test_message ("ours:\n%.*s\ntheirs:\n%.*s", (int) g_bytes_get_size (ours_uidl),
                  (const char *) g_bytes_get_data (ours_uidl, NULL),
                  (int) g_bytes_get_size (theirs_uidl),
                  (const char *) g_bytes_get_data (theirs_uidl, NULL));
  g_assert_cmpmem (g_bytes_get_data (ours_uidl, NULL), g_bytes_get_size (ours_uidl),
                   g_bytes_get_data (theirs_uidl, NULL), g_bytes_get_size (theirs_uidl));
}

/* The session end line says what an admin asks first (Dovecot logs retr=/del= by
 * default): the tag, RETRs with their octets, TOPs, DELEs and what QUIT applied; and for a
 * failed login, the name that was tried. */
static void
test_end_line (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *tagged = g_strconcat (fx->user, "#laptop", NULL);
  g_autofree gchar *bad_user = g_strconcat (fx->user, "#phone", NULL);
  g_autofree gchar *expected = NULL;
  g_autofree gchar *log = NULL;
  gsize octets = g_bytes_get_size (g_ptr_array_index (fx->bodies, 0));

  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autoptr (GBytes) body = NULL;
    g_autoptr (GBytes) top = NULL;

    g_assert_true (pg_test_pop3_login (pop3, tagged, PASSWORD, NULL, &error));
    g_assert_no_error (error);
    body = multiline (pop3, "RETR 1");
    top = multiline (pop3, "TOP 2 0");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  expected = g_strdup_printf ("pop3 session ended: user=%s tag=laptop ", tagged);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, expected, 10000));
  log = pg_test_popgate_read_log (fx->popgate);
  {
    const char *line = strstr (log, expected);
    g_autofree gchar *counts
        = g_strdup_printf (" retr=1/%" G_GSIZE_FORMAT " top=1 del=1 applied=expunged ", octets);
    g_autofree gchar *one = g_strndup (line, strcspn (line, "\n"));

    g_test_message ("%s", one);
    g_assert_nonnull (strstr (one, counts));
    g_assert_nonnull (strstr (one, "reason=QUIT"));
  }
  {
    g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
    g_autofree gchar *status = NULL;

    g_assert_false (pg_test_pop3_login (pop3, bad_user, "Wr0ngPassw0rd", &status, NULL));
    g_assert_true (g_str_has_prefix (status, "-ERR [AUTH]"));
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  }
  g_free (expected);
  expected = g_strdup_printf ("pop3 session ended: user=%s tag=- ", bad_user);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, expected, 10000));
  g_free (log);
  log = pg_test_popgate_read_log (fx->popgate);
  g_assert_nonnull (strstr (strstr (log, expected), "state=AUTHORIZATION"));
  g_assert_null (strstr (log, "Wr0ngPassw0rd"));
}

static void
test_upstream_down (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *status = NULL;

  g_assert_false (pg_test_pop3_login (pop3, fx->user, PASSWORD, &status, NULL));
  g_assert_true (g_str_has_prefix (status, "-ERR [SYS/TEMP]"));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  /* The log names the upstream's host and port (GIO's message names only the host). */
  {
    g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);

    g_assert_nonnull (strstr (log, "upstream unavailable: upstream 127.0.0.1:1: "));
  }
}

/* RFC 3206: a login that a retry cannot fix gets [SYS/PERM]: the configured mailbox does
 * not exist (the server refuses SELECT). */
static void
test_upstream_mailbox_missing (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestPop3) pop3 = pop3_connect (fx);
  g_autofree gchar *status = NULL;

  g_assert_false (pg_test_pop3_login (pop3, fx->user, PASSWORD, &status, NULL));
  g_test_message ("login, mailbox missing: %s", status);
  g_assert_true (g_str_has_prefix (status, "-ERR [SYS/PERM]"));
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

/* SIGTERM: no new connections; a logged-in POP3 client may still QUIT until the deadline,
 * after which it is closed with nothing applied; an IMAP client gets "* BYE". */
static void
test_shutdown_drain (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (fx);
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (PgTestImap) check = NULL;
  g_autoptr (GArray) after = NULL;
  g_autofree gchar *bye = NULL;
  int code = -1;

  imap = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, fx->user, PASSWORD, &error), error);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
  pg_test_popgate_kill (fx->popgate, SIGTERM);
  /* The IMAP session is told at once. */
  bye = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  g_assert_nonnull (bye);
  g_assert_true (g_str_has_prefix (bye, "* BYE"));
  /* The POP3 session still works until the deadline... */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "STAT", "+OK 4 ");
  /* ...and is then closed without entering UPDATE. */
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  g_assert_true (pg_test_popgate_wait (fx->popgate, 20000, &code));
  g_assert_cmpint (code, ==, 0);
  check = imap_login (fx);
  after = pg_test_imap_uid_search_all (check, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (after->len, ==, 5);
}

/* Python's poplib as a real third-party client. */
static void
test_poplib (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *script = g_test_build_filename (G_TEST_DIST, "pop3-poplib.py", NULL);
  g_autofree gchar *port = g_strdup_printf ("%u", fx->popgate->pop3_port);
  g_autofree gchar *count = g_strdup_printf ("%u", fx->uids->len);
  const char *argv[]
      = { "python3", script, fx->popgate->host, port, fx->user, PASSWORD, count, NULL };
  g_autofree gchar *output = NULL;
  int status = -1;

  g_assert_true (pg_test_run_status (argv, NULL, 60000, &status, &output, &error));
  g_assert_no_error (error);
  if (status != 0)
    g_error ("poplib script failed (%d): %s", status, output);
  g_assert_nonnull (strstr (output, "poplib: ok"));
  {
    g_autoptr (PgTestImap) imap = imap_login (fx);
    g_autoptr (GArray) after = pg_test_imap_uid_search_all (imap, &error);
    g_assert_no_error (error);
    /* The script deletes message 1. */
    g_assert_cmpuint (after->len, ==, fx->uids->len - 1);
  }
}

/* Every TLS session popgate ends, POP3S or after STLS, ends with a close_notify. */
static void
test_tls_close (Fixture *fx, gconstpointer data)
{
  pg_test_assert_tls_close_clean (fx->popgate->host, fx->popgate->pop3s_port,
                                  fx->popgate->certs->ca_file, "pop3", "implicit");
  pg_test_assert_tls_close_clean (fx->popgate->host, fx->popgate->pop3_port,
                                  fx->popgate->certs->ca_file, "pop3", "starttls");
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  static const char *const mark_seen_off[] = { "pop3", "mark_seen", "false", NULL };
  static const char *const move_trash[] = { "pop3", "delete", "move:Trash", NULL };
  static const char *const move_cyrus_trash[]
      = { "pop3", "delete", "move:" PG_TEST_CYRUS_TRASH, NULL };
  static const char *const move_missing[] = { "pop3", "delete", "move:Nosuch", NULL };
  static const char *const move_cyrus_missing[] = { "pop3", "delete", "move:Trash", NULL };
  static const char *const keep[] = { "pop3", "delete", "keep", NULL };
  static const char *const keep_metadata[]
      = { "pop3", "delete", "keep", "state", "backend", "imap-metadata", NULL };
  static const char *const lock_session[] = { "pop3", "lock_session", "true", NULL };
  static const char *const trace[] = { "log", "trace", "true", NULL };
  static const char *const trace_verbose[] = { "log", "trace", "true", "-", "arg", "-v", NULL };
  static const char *const lenient[] = { "limits", "max_bad_commands", "100", NULL };
  static const char *const compress[] = { "upstream", "compress", "auto", "-", "arg", "-v", NULL };
  /* COMPRESS=DEFLATE offered after login (compress = auto uses it; the rest ignore it). */
  static const PgTestDovecotOptions with_zlib = { .zlib = TRUE };
  static const char *const drain[] = { "limits", "shutdown_timeout", "1s", NULL };
  static const char *const down[] = { "upstream", "port", "1", NULL };
  static const char *const no_mailbox[] = { "upstream", "mailbox", "Nosuch", NULL };
  const gboolean on_cyrus = g_strcmp0 (g_getenv ("PG_TEST_UPSTREAM"), "cyrus") == 0;
  int rc;
  /* Where a case runs: ON_ANY holds for any IMAP server; this Dovecot has no METADATA
   * (pop3-state tests that backend on Dovecot), Cyrus has. */
  enum
  {
    ON_DOVECOT = 1,
    ON_CYRUS = 2,
    ON_ANY = ON_DOVECOT | ON_CYRUS,
  };
  static const struct
  {
    const char *name;
    const char *const *settings;
    void (*func) (Fixture *, gconstpointer);
    guint on; /* ON_DOVECOT, ON_CYRUS or both */
  } tests[] = {
    { "capa", NULL, test_capa, ON_DOVECOT },
    { "stat-list-uidl", NULL, test_stat_list_uidl, ON_ANY },
    { "uidl-stable", NULL, test_uidl_stable, ON_ANY },
    { "retr-exact", NULL, test_retr_exact, ON_ANY },
    { "retr-large", NULL, test_retr_large, ON_DOVECOT },
    { "top", NULL, test_top, ON_ANY },
    { "errors", lenient, test_errors, ON_DOVECOT },
    { "auth-failures", NULL, test_auth_failures, ON_DOVECOT },
    { "sasl", NULL, test_sasl, ON_DOVECOT },
    { "dele-quit-expunge", NULL, test_dele_quit_expunge, ON_ANY },
    { "no-quit-no-change", NULL, test_no_quit_no_change, ON_ANY },
    { "mark-seen-on", NULL, test_mark_seen_on, ON_ANY },
    { "mark-seen-off", mark_seen_off, test_mark_seen_off, ON_DOVECOT },
    { "move-trash", move_trash, test_move_trash, ON_ANY },
    { "move-target-missing", move_missing, test_move_target_missing, ON_ANY },
    { "keep-leaves-upstream", keep, test_keep, ON_ANY },
    { "keep-hides", keep, test_keep_hides, ON_ANY },
    { "keep-hides-metadata", keep_metadata, test_keep_hides, ON_CYRUS },
    { "vanished", NULL, test_vanished, ON_ANY },
    { "in-use", lock_session, test_in_use, ON_DOVECOT },
    { "concurrent", NULL, test_concurrent, ON_ANY },
    { "pipelining", trace, test_pipelining, ON_DOVECOT },
    { "readahead", trace_verbose, test_readahead, ON_ANY },
    { "pipelined-retr-batch", NULL, test_pipelined_retr_batch, ON_ANY },
    { "stls", NULL, test_stls, ON_DOVECOT },
    { "stls-injection", NULL, test_stls_injection, ON_DOVECOT },
    { "implicit-tls", NULL, test_implicit_tls, ON_DOVECOT },
    { "uidl-matches-dovecot", NULL, test_uidl_matches_dovecot, ON_DOVECOT },
    { "upstream-down", down, test_upstream_down, ON_DOVECOT },
    { "end-line", NULL, test_end_line, ON_DOVECOT },
    { "upstream-mailbox-missing", no_mailbox, test_upstream_mailbox_missing, ON_ANY },
    { "poplib", NULL, test_poplib, ON_ANY },
    { "tls-close", NULL, test_tls_close, ON_DOVECOT },
    { "shutdown-drain", drain, test_shutdown_drain, ON_DOVECOT },
    { "compress", compress, test_compress, ON_DOVECOT },
  };

  g_test_init (&argc, &argv, NULL);
  if (on_cyrus)
    {
      cyrus = pg_test_cyrus_new (&error);
      if (cyrus == NULL)
        g_error ("cannot set up Cyrus: %s", error->message);
      upstream_host = cyrus->host;
      trash_mailbox = PG_TEST_CYRUS_TRASH;
    }
  else
    {
      upstream = pg_test_dovecot_new (&with_zlib, &error);
      g_assert_no_error (error);
      upstream_host = upstream->host;
    }

  /* Every test's user exists before the upstream starts: Dovecot's passwd-file cache goes
   * by mtime, which two writes within a second do not change. */
  for (gsize i = 0; i < G_N_ELEMENTS (tests); i++)
    {
      g_autofree gchar *path = NULL;
      const char *const *settings = tests[i].settings;

      if ((tests[i].on & (on_cyrus ? ON_CYRUS : ON_DOVECOT)) == 0)
        continue;
      /* Cyrus's namespace: its trash is INBOX.Trash, and "Trash" does not exist. */
      if (on_cyrus && settings == move_trash)
        settings = move_cyrus_trash;
      else if (on_cyrus && settings == move_missing)
        settings = move_cyrus_missing;
      if (!(on_cyrus ? pg_test_cyrus_add_user (cyrus, tests[i].name, PASSWORD, &error)
                     : pg_test_dovecot_add_user (upstream, tests[i].name, PASSWORD, &error)))
        g_error ("%s", error->message);
      path = g_strconcat (on_cyrus ? "/popgate/cyrus/" : "/popgate/pop3/", tests[i].name, NULL);
      g_test_add (path, Fixture, settings, fixture_setup, tests[i].func, fixture_teardown);
    }
  if (on_cyrus ? !pg_test_cyrus_start (cyrus, &error) : !pg_test_dovecot_start (upstream, &error))
    g_error ("cannot start the upstream: %s", error->message);
  upstream_port = on_cyrus ? cyrus->port : upstream->imap_port;

  rc = g_test_run ();
  pg_test_cyrus_free (cyrus);
  pg_test_dovecot_free (upstream);
  return rc;
}
