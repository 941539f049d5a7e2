/* popgate — per-client state through the POP3 front end (DESIGN.md "Per-client state"):
 * the real popgate binary in front of a real Dovecot, driven by a small POP3 client, with
 * the upstream's content checked over IMAP and the state store read back directly.
 *
 * Two Dovecots serve the whole program: `upstream` with IMAP METADATA (for the
 * imap-metadata backend; harmless for the file backend) and `plain` without it. Each test
 * has its own user (named after the test) and its own popgate(s).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-faultproxy.h"
#include "pg-test-imap.h"
#include "pg-test-peer.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include "popgate/pg-state.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static PgTestDovecot *upstream = NULL; /* with METADATA */
static PgTestDovecot *plain = NULL;    /* without METADATA, UIDPLUS and MOVE */

/* Dovecot 2.3's default capabilities without METADATA, UIDPLUS and MOVE: what GNU
 * mailutils imap4d and other small servers offer. */
#define BARE_CAPABILITY                                                                            \
  "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFERENCES MULTIAPPEND "           \
  "UNSELECT CHILDREN NAMESPACE LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH "               \
  "SEARCHRES WITHIN LIST-STATUS BINARY SPECIAL-USE LITERAL+"

#define PASSWORD "st4te-p\"ss w0rd"
#define WAIT_MS 20000

typedef struct
{
  gchar *user;
  PgTestDovecot *dovecot; /* unowned: the Dovecot this test uses */
  PgTestPopgate *popgate;
  PgTestPopgate *second; /* another instance, for the shared-state test */
} Fixture;

typedef struct
{
  const char *const *settings; /* group, key, value triples */
  gboolean plain;              /* use the Dovecot without METADATA */
  const char *mailbox;         /* NULL: INBOX */
  guint n_messages;            /* seeded before popgate starts */
} TestSpec;

static gchar *
fixture_user_name (void)
{
  const char *path = g_test_get_path ();
  const char *base = strrchr (path, '/');
  return g_ascii_strdown (base != NULL ? base + 1 : path, -1);
}

static gchar *
sample_message (guint i)
{
  return g_strdup_printf ("From: a@example.org\r\nSubject: message %u\r\n\r\nBody %u.\r\n", i, i);
}

static void
seed (Fixture *fx, const char *mailbox, guint first, guint n)
{
  for (guint i = first; i < first + n; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *msg = sample_message (i);
      PG_TEST_ASSERT_OK (
          pg_test_dovecot_append (fx->dovecot, fx->user, mailbox, msg, strlen (msg), &error),
          error);
    }
}

static PgTestImap *
imap_login (Fixture *fx, const char *mailbox, guint32 *out_uidvalidity)
{
  g_autoptr (GError) error = NULL;
  PgTestImap *imap = pg_test_imap_connect (fx->dovecot->host, fx->dovecot->imap_port, NULL, &error);

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, fx->user, PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, mailbox, FALSE, out_uidvalidity, NULL, &error),
                     error);
  return imap;
}

static GArray *
upstream_uids (Fixture *fx, const char *mailbox)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = imap_login (fx, mailbox, NULL);
  GArray *uids = pg_test_imap_uid_search_all (imap, &error);

  g_assert_no_error (error);
  pg_test_imap_logout (imap, NULL);
  return uids;
}

static PgTestPopgate *
popgate_new (Fixture *fx, const TestSpec *spec)
{
  g_autoptr (GError) error = NULL;
  PgTestPopgate *popgate = pg_test_popgate_new (fx->dovecot, "none", &error);

  g_assert_no_error (error);
  pg_test_popgate_set (popgate, "limits", "auth_failure_delay", "10ms");
  if (spec->mailbox != NULL)
    pg_test_popgate_set (popgate, "upstream", "mailbox", spec->mailbox);
  for (gsize i = 0; spec->settings != NULL && spec->settings[i] != NULL; i += 3)
    pg_test_popgate_set (popgate, spec->settings[i], spec->settings[i + 1], spec->settings[i + 2]);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  return popgate;
}

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  const TestSpec *spec = data;
  const char *mailbox = spec->mailbox != NULL ? spec->mailbox : "INBOX";

  fx->user = fixture_user_name ();
  fx->dovecot = spec->plain ? plain : upstream;
  if (strcmp (mailbox, "INBOX") != 0)
    {
      g_autoptr (GError) error = NULL;
      PG_TEST_ASSERT_OK (pg_test_dovecot_create_mailbox (fx->dovecot, fx->user, mailbox, &error),
                         error);
    }
  seed (fx, mailbox, 1, spec->n_messages);
  fx->popgate = popgate_new (fx, spec);
}

static void
popgate_check_and_free (PgTestPopgate *popgate)
{
  g_autofree gchar *log = NULL;

  if (popgate == NULL)
    return;
  pg_test_popgate_stop (popgate);
  log = pg_test_popgate_read_log (popgate);
  /* Never a password in popgate's output, at any log level; and under the sanitizers,
   * no report from popgate itself (LSan runs when it exits). */
  g_assert_null (strstr (log, PASSWORD));
  if (strstr (log, "Sanitizer") != NULL || strstr (log, "runtime error") != NULL)
    g_error ("popgate's sanitizer report:\n%s", log);
  pg_test_popgate_free (popgate);
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  popgate_check_and_free (g_steal_pointer (&fx->popgate));
  popgate_check_and_free (g_steal_pointer (&fx->second));
  g_free (fx->user);
}

/* --- POP3 helpers -------------------------------------------------------------------------- */

/* Log in as login (e.g. "user#laptop") through `popgate`; returns the PASS reply. */
static PgTestPop3 *
pop3_try_login (PgTestPopgate *popgate, const char *login, gchar **out_status)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, &error);

  g_assert_no_error (error);
  /* A refused PASS is an answer here, not a failure: the caller checks *out_status. */
  if (!pg_test_pop3_login (pop3, login, PASSWORD, out_status, &error))
    g_assert_true (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_FAILED));
  return pop3;
}

static PgTestPop3 *
pop3_login (PgTestPopgate *popgate, const char *login)
{
  g_autofree gchar *status = NULL;
  PgTestPop3 *pop3 = pop3_try_login (popgate, login, &status);

  if (status == NULL || !g_str_has_prefix (status, "+OK"))
    {
      g_autofree gchar *log = pg_test_popgate_read_log (popgate);
      g_error ("login as %s: %s\npopgate log:\n%s", login, status, log);
    }
  return pop3;
}

static gchar *
tagged (Fixture *fx, const char *tag)
{
  return tag != NULL ? g_strconcat (fx->user, "#", tag, NULL) : g_strdup (fx->user);
}

/* The UIDs a client sees, in message-number order (from UIDL: UID is the first 8 hex
 * digits). */
static GArray *
pop3_uids (PgTestPop3 *pop3)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *status = pg_test_pop3_cmd (pop3, "UIDL");
  g_autoptr (GBytes) body = NULL;
  g_auto (GStrv) lines = NULL;
  g_autofree gchar *text = NULL;
  GArray *uids = g_array_new (FALSE, FALSE, sizeof (guint32));
  guint number = 0;

  g_assert_true (g_str_has_prefix (status, "+OK"));
  body = pg_test_pop3_read_multiline (pop3, &error);
  g_assert_no_error (error);
  text = g_bytes_get_size (body) > 0
             ? g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body))
             : g_strdup ("");
  lines = g_strsplit (text, "\r\n", -1);
  for (guint i = 0; lines[i] != NULL; i++)
    {
      guint n = 0;
      gchar hex[9] = { 0 };
      guint32 uid;
      if (*lines[i] == '\0')
        continue;
      g_assert_cmpint (sscanf (lines[i], "%u %8s", &n, hex), ==, 2);
      /* Numbering is dense: hidden messages leave no holes. */
      g_assert_cmpuint (n, ==, ++number);
      uid = (guint32) g_ascii_strtoull (hex, NULL, 16);
      g_array_append_val (uids, uid);
    }
  return uids;
}

/* Log in as `login`, check the UIDs it sees, and leave without QUIT (nothing changes). */
static void
assert_sees (PgTestPopgate *popgate, const char *login, const guint32 *expected, guint n)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (popgate, login);
  g_autoptr (GArray) uids = pop3_uids (pop3);
  g_autofree gchar *stat = pg_test_pop3_cmd (pop3, "STAT");
  g_autofree gchar *want_stat = g_strdup_printf ("+OK %u ", n);

  if (uids->len != n || (n > 0 && memcmp (uids->data, expected, n * sizeof (guint32)) != 0))
    {
      GString *got = g_string_new (NULL);
      for (guint i = 0; i < uids->len; i++)
        g_string_append_printf (got, " %u", g_array_index (uids, guint32, i));
      g_error ("%s sees UIDs [%s ], expected %u of them", login, got->str, n);
    }
  g_assert_true (g_str_has_prefix (stat, want_stat));
}

/* Log in, DELE the given message numbers, QUIT and expect +OK. */
static void
dele_quit (PgTestPopgate *popgate, const char *login, const guint *numbers, guint n)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (popgate, login);

  for (guint i = 0; i < n; i++)
    {
      g_autofree gchar *command = g_strdup_printf ("DELE %u", numbers[i]);
      PG_TEST_POP3_ASSERT_REPLY (pop3, command, "+OK");
    }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
}

static void
assert_upstream (Fixture *fx, const char *mailbox, const guint32 *expected, guint n)
{
  g_autoptr (GArray) uids = upstream_uids (fx, mailbox);

  g_assert_cmpuint (uids->len, ==, n);
  g_assert_cmpmem (uids->data, n * sizeof (guint32), expected, n * sizeof (guint32));
}

static gchar *
state_file (PgTestPopgate *popgate, const char *user, const char *mailbox, const char *tag)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = pg_state_store_new_file (popgate->state_dir, &error);
  g_autoptr (PgStateKey) key = pg_state_key_new (user, mailbox, tag);

  g_assert_no_error (error);
  return pg_state_store_get_file_path (store, key);
}

static void
restart (PgTestPopgate *popgate)
{
  g_autoptr (GError) error = NULL;

  g_assert_true (pg_test_popgate_stop (popgate));
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
}

/* --- tests --------------------------------------------------------------------------------- */

/* delete = keep: each tag hides only what it deleted; the upstream keeps everything. */
static void
test_two_tags_keep (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *phone = tagged (fx, "phone");
  g_autofree gchar *untagged = tagged (fx, NULL);
  static const guint laptop_deletes[] = { 1, 3 };
  static const guint phone_deletes[] = { 5 };
  static const guint32 all[] = { 1, 2, 3, 4, 5 };
  static const guint32 laptop_sees[] = { 2, 4, 5 };
  static const guint32 phone_sees[] = { 1, 2, 3, 4 };

  dele_quit (fx->popgate, laptop, laptop_deletes, G_N_ELEMENTS (laptop_deletes));
  assert_sees (fx->popgate, laptop, laptop_sees, G_N_ELEMENTS (laptop_sees));
  assert_sees (fx->popgate, phone, all, G_N_ELEMENTS (all));
  dele_quit (fx->popgate, phone, phone_deletes, G_N_ELEMENTS (phone_deletes));
  assert_sees (fx->popgate, phone, phone_sees, G_N_ELEMENTS (phone_sees));
  assert_sees (fx->popgate, laptop, laptop_sees, G_N_ELEMENTS (laptop_sees));
  /* No tag is the tag "default": a client of its own. */
  assert_sees (fx->popgate, untagged, all, G_N_ELEMENTS (all));
  assert_upstream (fx, "INBOX", all, G_N_ELEMENTS (all));
  /* Message numbers follow the client's view: laptop's message 1 is UID 2. */
  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx->popgate, laptop);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "LIST 1", "+OK 1 ");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "UIDL 1", "+OK 1 00000002");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "RETR 4", "-ERR");
  }
}

/* The file store survives a restart of popgate. */
static void
test_restart (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *path = state_file (fx->popgate, fx->user, "INBOX", "laptop");
  g_autofree gchar *contents = NULL;
  static const guint deletes[] = { 2 };
  static const guint32 sees[] = { 1, 3 };

  dele_quit (fx->popgate, laptop, deletes, G_N_ELEMENTS (deletes));
  restart (fx->popgate);
  assert_sees (fx->popgate, laptop, sees, G_N_ELEMENTS (sees));
  contents = pg_test_read_file (path);
  g_assert_nonnull (strstr (contents, "\nhidden 2\n"));
}

/* first_login = new: a new tag sees only mail that arrives after its first login, even
 * when that login ended without QUIT. */
static void
test_first_login_new (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *fresh = tagged (fx, "fresh");
  g_autofree gchar *later = tagged (fx, "later");
  static const guint32 new_one[] = { 4 };
  static const guint32 new_two[] = { 4, 5 };
  static const guint32 only_five[] = { 5 };

  assert_sees (fx->popgate, fresh, NULL, 0);
  seed (fx, "INBOX", 4, 1);
  assert_sees (fx->popgate, fresh, new_one, G_N_ELEMENTS (new_one));
  assert_sees (fx->popgate, later, NULL, 0);
  seed (fx, "INBOX", 5, 1);
  assert_sees (fx->popgate, fresh, new_two, G_N_ELEMENTS (new_two));
  assert_sees (fx->popgate, later, only_five, G_N_ELEMENTS (only_five));
  /* Still so after a restart: the first login's UIDNEXT was stored. */
  restart (fx->popgate);
  assert_sees (fx->popgate, fresh, new_two, G_N_ELEMENTS (new_two));
}

/* recent_days: only messages whose INTERNALDATE is within the window. */
static void
test_recent_days (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", NULL);
  g_autofree gchar *client = tagged (fx, "recent");
  static const char old_msg[] = "Subject: old\r\n\r\nFrom long ago.\r\n";
  g_autofree gchar *append = g_strdup_printf ("APPEND INBOX \"01-Jan-2001 00:00:00 +0000\" "
                                              "{%zu+}\r\n%s",
                                              strlen (old_msg), old_msg);
  g_autofree gchar *reply = pg_test_imap_command (imap, append, &error);
  static const guint32 recent[] = { 1, 2 };

  g_assert_no_error (error);
  g_assert_nonnull (strstr (reply, "APPENDUID"));
  pg_test_imap_logout (imap, NULL);
  assert_sees (fx->popgate, client, recent, G_N_ELEMENTS (recent));
}

/* The imap-metadata backend: two popgate instances share one client's state through the
 * upstream, and hold none themselves. */
static void
test_metadata_two_instances (Fixture *fx, gconstpointer data)
{
  const TestSpec *spec = data;
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *phone = tagged (fx, "phone");
  static const guint deletes[] = { 1, 2 };
  static const guint more[] = { 1 };
  static const guint32 all[] = { 1, 2, 3, 4 };
  static const guint32 laptop_sees[] = { 3, 4 };
  static const guint32 laptop_later[] = { 4 };
  g_autoptr (GError) error = NULL;
  g_autoptr (GDir) dir = NULL;

  fx->second = popgate_new (fx, spec);
  dele_quit (fx->popgate, laptop, deletes, G_N_ELEMENTS (deletes));
  assert_sees (fx->second, laptop, laptop_sees, G_N_ELEMENTS (laptop_sees));
  assert_sees (fx->second, phone, all, G_N_ELEMENTS (all));
  dele_quit (fx->second, laptop, more, G_N_ELEMENTS (more));
  assert_sees (fx->popgate, laptop, laptop_later, G_N_ELEMENTS (laptop_later));
  assert_upstream (fx, "INBOX", all, G_N_ELEMENTS (all));

  /* Nothing local; the entry is on the mailbox. */
  dir = g_dir_open (fx->popgate->state_dir, 0, &error);
  g_assert_no_error (error);
  g_assert_null (g_dir_read_name (dir));
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", NULL);
    g_autofree gchar *reply = pg_test_imap_command (
        imap, "GETMETADATA (DEPTH 1) INBOX /private/vendor/popgate/laptop", &error);
    g_assert_no_error (error);
    g_assert_nonnull (strstr (reply, "popgate-state 2\nuser "));
    g_assert_nonnull (strstr (reply, "hidden 1:3"));
  }
}

/* imap-metadata against a server without METADATA: the login is refused, permanently and
 * clearly, and nothing is shown. */
static void
test_no_metadata (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *status = NULL;
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autoptr (PgTestPop3) pop3 = pop3_try_login (fx->popgate, laptop, &status);

  g_assert_nonnull (status);
  g_assert_true (g_str_has_prefix (status, "-ERR [SYS/PERM]"));
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "does not support METADATA", WAIT_MS));
  /* The session goes on (the client may QUIT cleanly). */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
}

static void
assert_login_refused_and_file_kept (Fixture *fx, const char *login, const char *path,
                                    const char *contents)
{
  g_autofree gchar *status = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_try_login (fx->popgate, login, &status);
  g_autofree gchar *after = pg_test_read_file (path);

  g_assert_nonnull (status);
  if (!g_str_has_prefix (status, "-ERR [SYS/TEMP]"))
    g_error ("login with a corrupt state: expected -ERR [SYS/TEMP], got %s", status);
  g_assert_cmpstr (after, ==, contents);
}

/* A corrupt or truncated state file refuses the login (never "show everything again")
 * and is left as it is for the admin. */
static void
test_corrupt_state (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *path = state_file (fx->popgate, fx->user, "INBOX", "laptop");
  g_autofree gchar *good = NULL;
  g_autofree gchar *bad = NULL;
  static const guint deletes[] = { 1 };
  static const guint32 sees[] = { 2, 3 };
  gchar *hidden;

  dele_quit (fx->popgate, laptop, deletes, G_N_ELEMENTS (deletes));
  good = pg_test_read_file (path);
  hidden = strstr (good, "\nhidden 1\n");
  g_assert_nonnull (hidden);

  /* One flipped byte: "hidden 1" → "hidden 3" (the checksum no longer matches). */
  bad = g_strdup (good);
  bad[hidden - good + 8] = '3';
  PG_TEST_ASSERT_OK (g_file_set_contents (path, bad, -1, &error), error);
  assert_login_refused_and_file_kept (fx, laptop, path, bad);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "cannot be read", WAIT_MS));

  /* Truncated, as a torn write would leave it without the atomic rename. */
  bad[strlen (bad) / 2] = '\0';
  PG_TEST_ASSERT_OK (g_file_set_contents (path, bad, -1, &error), error);
  assert_login_refused_and_file_kept (fx, laptop, path, bad);

  /* Other clients are not affected; the repaired file works again. */
  {
    g_autofree gchar *phone = tagged (fx, "phone");
    static const guint32 all[] = { 1, 2, 3 };
    assert_sees (fx->popgate, phone, all, G_N_ELEMENTS (all));
  }
  PG_TEST_ASSERT_OK (g_file_set_contents (path, good, -1, &error), error);
  assert_sees (fx->popgate, laptop, sees, G_N_ELEMENTS (sees));
}

/* The mailbox is deleted and recreated: a new UIDVALIDITY, other messages under the old
 * UIDs. Nothing of the client's state carries over (the ledger knows none of the new
 * messages), with a warning naming user, mailbox and tag. */
static void
test_uidvalidity_reset (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *warning = NULL;
  static const guint deletes[] = { 1, 2 };
  static const guint32 before[] = { 3 };
  static const guint32 after[] = { 1, 2 };
  guint32 old_validity = 0, new_validity = 0;

  dele_quit (fx->popgate, laptop, deletes, G_N_ELEMENTS (deletes));
  assert_sees (fx->popgate, laptop, before, G_N_ELEMENTS (before));
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "Work", &old_validity);
    g_autofree gchar *r1 = NULL;
    g_autofree gchar *r2 = NULL;
    g_autofree gchar *r3 = NULL;

    r1 = pg_test_imap_command (imap, "UNSELECT", &error);
    g_assert_no_error (error);
    r2 = pg_test_imap_command (imap, "DELETE Work", &error);
    g_assert_no_error (error);
    r3 = pg_test_imap_command (imap, "CREATE Work", &error);
    g_assert_no_error (error);
    pg_test_imap_logout (imap, NULL);
  }
  seed (fx, "Work", 10, 2);
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "Work", &new_validity);
    pg_test_imap_logout (imap, NULL);
  }
  g_assert_cmpuint (new_validity, !=, old_validity);

  /* UIDs 1 and 2 again, but other messages: the old "hidden 1:2" must not apply. */
  assert_sees (fx->popgate, laptop, after, G_N_ELEMENTS (after));
  /* Messages without a Message-ID have no identity in the ledger: none carries over. */
  warning
      = g_strdup_printf ("UIDVALIDITY of user=%s mailbox=Work tag=laptop changed from %u to %u: "
                         "0 UIDLs carried over, 2 new",
                         fx->user, old_validity, new_validity);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, warning, WAIT_MS));
  /* The new state sticks. */
  {
    static const guint again[] = { 2 };
    static const guint32 left[] = { 1 };
    dele_quit (fx->popgate, laptop, again, G_N_ELEMENTS (again));
    assert_sees (fx->popgate, laptop, left, G_N_ELEMENTS (left));
  }
}

typedef struct
{
  const char *path;
  const char *needle;
} FileWait;

static gboolean
file_contains_cb (gpointer user_data)
{
  FileWait *wait = user_data;
  g_autofree gchar *contents = pg_test_read_file (wait->path);
  return strstr (contents, wait->needle) != NULL;
}

/* popgate is SIGKILLed in the middle of QUIT (the upstream is paused after the pending
 * update was recorded): the next login finishes exactly that update. */
static void
test_sigkill_quit (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *path = state_file (fx->popgate, fx->user, "INBOX", "default");
  g_autofree gchar *contents = NULL;
  g_autoptr (GPtrArray) bodies = g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref);
  static const guint32 remaining[] = { 1, 3, 5 };
  FileWait wait = { path, "\npending expunge 2,4\n" };
  guint stopped;
  int code = 0;

  /* An IMAP user flagged UID 5 \Deleted without expunging: it must survive. */
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", NULL);
    PG_TEST_ASSERT_OK (pg_test_imap_uid_store (imap, 5, "+FLAGS.SILENT (\\Deleted)", &error),
                       error);
    for (guint i = 0; i < G_N_ELEMENTS (remaining); i++)
      g_ptr_array_add (bodies, pg_test_imap_fetch_body (imap, remaining[i], &error));
    g_assert_no_error (error);
    pg_test_imap_logout (imap, NULL);
  }

  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx->popgate, fx->user);

    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 4", "+OK");
    stopped = pg_test_dovecot_signal_user_sessions (fx->dovecot, fx->user, SIGSTOP);
    g_assert_cmpuint (stopped, >=, 1);
    PG_TEST_ASSERT_OK (pg_test_pop3_send (pop3, "QUIT\r\n", 6, &error), error);
    /* Recorded durably before anything is sent upstream. */
    g_assert_true (pg_test_wait_until (file_contains_cb, &wait, WAIT_MS));
    pg_test_popgate_kill (fx->popgate, SIGKILL);
    g_assert_true (pg_test_popgate_wait (fx->popgate, WAIT_MS, &code));
    g_assert_cmpint (code, ==, 128 + SIGKILL);
    pg_test_dovecot_signal_user_sessions (fx->dovecot, fx->user, SIGCONT);
  }
  pg_test_popgate_stop (fx->popgate);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);

  assert_sees (fx->popgate, fx->user, remaining, G_N_ELEMENTS (remaining));
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "finished the interrupted QUIT", WAIT_MS));
  contents = pg_test_read_file (path);
  g_assert_null (strstr (contents, "pending"));

  /* Upstream: exactly the DELE'd UIDs are gone, the rest byte for byte as before. */
  assert_upstream (fx, "INBOX", remaining, G_N_ELEMENTS (remaining));
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", NULL);
    g_auto (GStrv) flags = pg_test_imap_fetch_flags (imap, 5, &error);
    g_assert_no_error (error);
    g_assert_true (g_strv_contains ((const gchar *const *) flags, "\\Deleted"));
    for (guint i = 0; i < G_N_ELEMENTS (remaining); i++)
      {
        g_autoptr (GBytes) body = pg_test_imap_fetch_body (imap, remaining[i], &error);
        g_assert_no_error (error);
        g_assert_true (g_bytes_equal (body, g_ptr_array_index (bodies, i)));
      }
  }
}

/* An interrupted QUIT under delete = move: finished as a move at the next login. */
static void
test_sigkill_quit_move (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *path = state_file (fx->popgate, fx->user, "INBOX", "default");
  FileWait wait = { path, "\npending move:Trash 1\n" };
  static const guint32 remaining[] = { 2, 3 };
  int code = 0;

  PG_TEST_ASSERT_OK (pg_test_dovecot_create_mailbox (fx->dovecot, fx->user, "Trash", &error),
                     error);

  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx->popgate, fx->user);

    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
    g_assert_cmpuint (pg_test_dovecot_signal_user_sessions (fx->dovecot, fx->user, SIGSTOP), >=, 1);
    PG_TEST_ASSERT_OK (pg_test_pop3_send (pop3, "QUIT\r\n", 6, &error), error);
    g_assert_true (pg_test_wait_until (file_contains_cb, &wait, WAIT_MS));
    pg_test_popgate_kill (fx->popgate, SIGKILL);
    g_assert_true (pg_test_popgate_wait (fx->popgate, WAIT_MS, &code));
    pg_test_dovecot_signal_user_sessions (fx->dovecot, fx->user, SIGCONT);
  }
  pg_test_popgate_stop (fx->popgate);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);
  assert_sees (fx->popgate, fx->user, remaining, G_N_ELEMENTS (remaining));
  assert_upstream (fx, "INBOX", remaining, G_N_ELEMENTS (remaining));
  {
    g_autoptr (GArray) trash = upstream_uids (fx, "Trash");
    g_assert_cmpuint (trash->len, ==, 1);
  }
}

/* Log in, DELE numbers, QUIT; returns the QUIT reply. */
static gchar *
dele_quit_reply (PgTestPopgate *popgate, const char *login, const guint *numbers, guint n)
{
  g_autoptr (PgTestPop3) pop3 = pop3_login (popgate, login);
  gchar *reply;

  for (guint i = 0; i < n; i++)
    {
      g_autofree gchar *command = g_strdup_printf ("DELE %u", numbers[i]);
      PG_TEST_POP3_ASSERT_REPLY (pop3, command, "+OK");
    }
  reply = pg_test_pop3_cmd (pop3, "QUIT");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  return reply;
}

static void
assert_flagged_deleted (Fixture *fx, guint32 uid, gboolean want)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", NULL);
  g_auto (GStrv) flags = pg_test_imap_fetch_flags (imap, uid, &error);

  g_assert_no_error (error);
  g_assert_cmpint (g_strv_contains ((const gchar *const *) flags, "\\Deleted"), ==, want);
  pg_test_imap_logout (imap, NULL);
}

/* A server without UIDPLUS: QUIT flags the DELE'd messages and says, permanently, that
 * they were not expunged; this client is never offered them again, so a no-keep client
 * polling twice downloads each message once. */
static void
test_no_uidplus (Fixture *fx, gconstpointer data)
{
  static const guint deletes[] = { 1, 2 };
  static const guint32 after[] = { 3, 4 };
  static const guint32 all[] = { 1, 2, 3, 4 };
  g_autofree gchar *reply = dele_quit_reply (fx->popgate, fx->user, deletes, 2);
  g_autofree gchar *phone = tagged (fx, "phone");

  g_test_message ("QUIT without UIDPLUS: %s", reply);
  g_assert_true (g_str_has_prefix (reply, "-ERR [SYS/PERM]"));
  g_assert_nonnull (strstr (reply, "UIDPLUS"));
  assert_sees (fx->popgate, fx->user, after, G_N_ELEMENTS (after));
  /* Never a plain EXPUNGE: all four are still there, the two flagged. */
  assert_upstream (fx, "INBOX", all, G_N_ELEMENTS (all));
  assert_flagged_deleted (fx, 1, TRUE);
  assert_flagged_deleted (fx, 3, FALSE);
  /* The log said why (once in that session). */
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "lacks UIDPLUS", WAIT_MS));
  /* The second poll: the other two, then nothing more. */
  {
    static const guint rest[] = { 1, 2 };
    g_autofree gchar *second = dele_quit_reply (fx->popgate, fx->user, rest, 2);
    g_assert_true (g_str_has_prefix (second, "-ERR [SYS/PERM]"));
  }
  assert_sees (fx->popgate, fx->user, NULL, 0);
  /* Per client: another tag still sees every message (they were not expunged). */
  assert_sees (fx->popgate, phone, all, G_N_ELEMENTS (all));
}

/* move:Trash without MOVE and UIDPLUS: each message is copied once, however often the
 * client QUITs (issue 13: the trash grew from 2 to 4 copies over two sessions). */
static void
test_move_no_move (Fixture *fx, gconstpointer data)
{
  static const guint first[] = { 1, 2 };
  static const guint everything[] = { 1 };
  static const guint32 all[] = { 1, 2, 3 };
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (pg_test_dovecot_create_mailbox (fx->dovecot, fx->user, "Trash", &error),
                     error);
  {
    g_autofree gchar *reply = dele_quit_reply (fx->popgate, fx->user, first, 2);
    g_test_message ("QUIT, move without MOVE/UIDPLUS: %s", reply);
    g_assert_true (g_str_has_prefix (reply, "-ERR [SYS/PERM]"));
  }
  {
    g_autoptr (GArray) trash = upstream_uids (fx, "Trash");
    g_assert_cmpuint (trash->len, ==, 2);
  }
  {
    static const guint32 left[] = { 3 };
    assert_sees (fx->popgate, fx->user, left, G_N_ELEMENTS (left));
  }
  {
    g_autofree gchar *reply = dele_quit_reply (fx->popgate, fx->user, everything, 1);
    g_assert_true (g_str_has_prefix (reply, "-ERR [SYS/PERM]"));
  }
  assert_sees (fx->popgate, fx->user, NULL, 0);
  /* One copy of each in the trash, byte for byte; the originals stay, flagged. */
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "Trash", NULL);
    g_autoptr (GArray) trash = pg_test_imap_uid_search_all (imap, &error);
    g_autoptr (GHashTable) seen = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

    g_assert_no_error (error);
    g_assert_cmpuint (trash->len, ==, 3);
    for (guint i = 0; i < trash->len; i++)
      {
        g_autoptr (GBytes) body
            = pg_test_imap_fetch_body (imap, g_array_index (trash, guint32, i), &error);
        g_assert_no_error (error);
        g_assert_true (g_hash_table_add (
            seen, g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body))));
      }
    pg_test_imap_logout (imap, NULL);
  }
  assert_upstream (fx, "INBOX", all, G_N_ELEMENTS (all));
}

static void
create_mailbox (Fixture *fx, const char *mailbox)
{
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (pg_test_dovecot_create_mailbox (fx->dovecot, fx->user, mailbox, &error),
                     error);
}

/* move:MAILBOX to a mailbox that does not exist: the login is refused with [SYS/PERM]
 * (popgate asks LIST "" MAILBOX), before a client downloads what it could never remove.
 * A mailbox that goes away during the session: QUIT says [SYS/PERM]. Nothing is removed
 * either way. */
static void
test_move_missing (Fixture *fx, gconstpointer data)
{
  static const guint32 all[] = { 1, 2, 3 };
  g_autofree gchar *status = NULL;
  g_autofree gchar *reply = NULL;

  {
    g_autoptr (PgTestPop3) refused = pop3_try_login (fx->popgate, fx->user, &status);

    g_test_message ("login, move target missing: %s", status);
    g_assert_true (g_str_has_prefix (status, "-ERR [SYS/PERM]"));
    g_assert_true (
        pg_test_popgate_wait_log (fx->popgate, "the move target Nosuch does not exist", 10000));
    PG_TEST_POP3_ASSERT_REPLY (refused, "QUIT", "+OK");
  }

  create_mailbox (fx, "Nosuch");
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx->popgate, fx->user);
    g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", NULL);
    g_autofree gchar *deleted = NULL;

    PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 2", "+OK");
    deleted = pg_test_imap_command (imap, "DELETE Nosuch", &error);
    g_assert_no_error (error);
    pg_test_imap_logout (imap, NULL);
    reply = pg_test_pop3_cmd (pop3, "QUIT");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }
  g_test_message ("QUIT, move target deleted during the session: %s", reply);
  g_assert_true (g_str_has_prefix (reply, "-ERR [SYS/PERM]"));
  g_assert_nonnull (strstr (reply, "Nosuch"));
  assert_upstream (fx, "INBOX", all, G_N_ELEMENTS (all));
  assert_flagged_deleted (fx, 2, FALSE);
  /* Not hidden either: the client may DELE it again once the admin fixed the config. */
  create_mailbox (fx, "Nosuch");
  assert_sees (fx->popgate, fx->user, all, G_N_ELEMENTS (all));
}

/* Issue 19 item 3: the upstream connection is lost after QUIT's UID STORE was answered and
 * before its UID EXPUNGE reached the server. The client hears [SYS/TEMP]; the pending
 * record stays until the server confirmed, so the next login (through the same, now
 * plain relay) finishes exactly those UIDs instead of listing flagged messages again. */
static void
test_lost_before_expunge (Fixture *fx, gconstpointer data)
{
  const TestSpec *spec = data;
  g_autoptr (GError) error = NULL;
  static const PgTestFaultRule cut = { .match = "UID EXPUNGE *", .action = PG_TEST_FAULT_CUT };
  g_autoptr (PgTestFaultProxy) proxy
      = pg_test_faultproxy_new (fx->dovecot->host, fx->dovecot->imap_port, &cut, &error);
  g_autofree gchar *port = NULL;
  g_autofree gchar *path = NULL;
  g_autofree gchar *contents = NULL;
  static const guint deletes[] = { 1, 3 };
  static const guint32 remaining[] = { 2, 4 };

  g_assert_no_error (error);
  /* This test's popgate talks to Dovecot through the relay. */
  popgate_check_and_free (g_steal_pointer (&fx->popgate));
  fx->popgate = pg_test_popgate_new (fx->dovecot, "none", &error);
  g_assert_no_error (error);
  port = g_strdup_printf ("%u", pg_test_faultproxy_get_port (proxy));
  pg_test_popgate_set (fx->popgate, "upstream", "port", port);
  pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "10ms");
  for (gsize i = 0; spec->settings != NULL && spec->settings[i] != NULL; i += 3)
    pg_test_popgate_set (fx->popgate, spec->settings[i], spec->settings[i + 1],
                         spec->settings[i + 2]);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fx->popgate, &error), error);
  path = state_file (fx->popgate, fx->user, "INBOX", "default");

  {
    g_autofree gchar *reply = dele_quit_reply (fx->popgate, fx->user, deletes, 2);
    g_test_message ("QUIT, upstream lost before UID EXPUNGE: %s", reply);
    g_assert_true (g_str_has_prefix (reply, "-ERR [SYS/TEMP]"));
  }
  g_assert_true (pg_test_faultproxy_wait_triggered (proxy, WAIT_MS));
  /* Flagged upstream, not expunged, and still recorded as pending. */
  assert_flagged_deleted (fx, 1, TRUE);
  contents = pg_test_read_file (path);
  g_assert_nonnull (strstr (contents, "\npending expunge 1,3\n"));

  assert_sees (fx->popgate, fx->user, remaining, G_N_ELEMENTS (remaining));
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, "finished the interrupted QUIT", WAIT_MS));
  assert_upstream (fx, "INBOX", remaining, G_N_ELEMENTS (remaining));
  g_clear_pointer (&contents, g_free);
  contents = pg_test_read_file (path);
  g_assert_null (strstr (contents, "pending"));
}

/* Two concurrent sessions of one client (`login`) under keep, on popgate a and b (the
 * same instance or two): the first DELEs 1 and 2, the second 4; they QUIT in the order
 * given. Both DELE sets are kept: the next login sees neither. */
static void
concurrent_keep (Fixture *fx, PgTestPopgate *a, PgTestPopgate *b, const char *login,
                 gboolean first_quits_first)
{
  static const guint32 left[] = { 3, 5 };
  g_autoptr (PgTestPop3) first = pop3_login (a, login);
  g_autoptr (PgTestPop3) second = pop3_login (b, login);
  PgTestPop3 *order[2] = { first, second };

  PG_TEST_POP3_ASSERT_REPLY (first, "DELE 1", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (first, "DELE 2", "+OK");
  PG_TEST_POP3_ASSERT_REPLY (second, "DELE 4", "+OK");
  if (!first_quits_first)
    {
      order[0] = second;
      order[1] = first;
    }
  for (guint i = 0; i < 2; i++)
    {
      PG_TEST_POP3_ASSERT_REPLY (order[i], "QUIT", "+OK");
      g_assert_true (pg_test_pop3_wait_closed (order[i]));
    }
  assert_sees (a, login, left, G_N_ELEMENTS (left));
  assert_sees (b, login, left, G_N_ELEMENTS (left));
}

/* The file backend: both sessions in one popgate; QUIT in both orders. */
static void
test_concurrent_keep_file (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *phone = tagged (fx, "phone");

  concurrent_keep (fx, fx->popgate, fx->popgate, laptop, TRUE);
  concurrent_keep (fx, fx->popgate, fx->popgate, phone, FALSE);
}

/* The imap-metadata backend: the sessions on two popgate instances; both orders. */
static void
test_concurrent_keep_metadata (Fixture *fx, gconstpointer data)
{
  const TestSpec *spec = data;
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *phone = tagged (fx, "phone");
  static const guint32 all[] = { 1, 2, 3, 4, 5 };

  fx->second = popgate_new (fx, spec);
  concurrent_keep (fx, fx->popgate, fx->second, laptop, TRUE);
  concurrent_keep (fx, fx->popgate, fx->second, phone, FALSE);
  assert_upstream (fx, "INBOX", all, G_N_ELEMENTS (all));
  /* A later save folds the entries into one again. */
  {
    static const guint one[] = { 1 };
    static const guint32 later[] = { 5 };
    g_autoptr (GError) error = NULL;
    g_autoptr (PgTestImap) imap = NULL;
    g_autofree gchar *reply = NULL;
    const char *p;
    guint n = 0;

    dele_quit (fx->second, laptop, one, 1);
    assert_sees (fx->popgate, laptop, later, G_N_ELEMENTS (later));
    imap = imap_login (fx, "INBOX", NULL);
    reply = pg_test_imap_command (
        imap, "GETMETADATA (DEPTH 1) INBOX /private/vendor/popgate/laptop", &error);
    g_assert_no_error (error);
    for (p = reply; (p = strstr (p, "popgate-state 2\nuser ")) != NULL; p++)
      n++;
    g_assert_cmpuint (n, ==, 1);
  }
}

/* --- UIDLs across a UIDVALIDITY change (the UIDL ledger) ------------------------------------- */

static guint
upstream_count (Fixture *fx)
{
  g_autoptr (GArray) uids = upstream_uids (fx, "INBOX");

  return uids->len;
}

static gchar *
ledger_message (const char *id, const char *subject)
{
  return g_strdup_printf ("Message-ID: <%s@ledger.example>\r\nDate: Tue, 1 Dec 2026 10:00:00 "
                          "+0000\r\nFrom: a@example.org\r\nSubject: %s\r\n\r\nBody of %s.\r\n",
                          id, subject, subject);
}

static void
ledger_seed (Fixture *fx, const char *id, const char *subject)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *msg = ledger_message (id, subject);

  PG_TEST_ASSERT_OK (
      pg_test_dovecot_append (fx->dovecot, fx->user, "INBOX", msg, strlen (msg), &error), error);
}

/* One poll of a client that downloads what it has not seen (by UIDL, as fetchmail and
 * every leave-on-server client do): UIDL, RETR of each unseen message (its subject goes
 * into `seen` under the UIDL), DELE of the message with subject `dele` (if any), QUIT.
 * Returns how many messages it downloaded; *out_visible (if given) gets "UIDL subject"
 * lines of what it saw. */
static guint
ledger_poll (PgTestPopgate *popgate, const char *login, GHashTable *seen, const char *dele,
             GPtrArray **out_visible)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pop3_login (popgate, login);
  g_auto (GStrv) lines = pg_test_pop3_cmd_lines (pop3, "UIDL");
  GPtrArray *visible = g_ptr_array_new_with_free_func (g_free);
  guint downloads = 0;
  guint dele_number = 0;

  for (guint i = 0; lines[i] != NULL; i++)
    {
      guint n = 0;
      gchar uidl[71] = { 0 };
      const char *subject;

      g_assert_cmpint (sscanf (lines[i], "%u %70s", &n, uidl), ==, 2);
      /* A UIDL is listed once: never two messages under one. */
      for (guint k = 0; k < visible->len; k++)
        g_assert_false (g_str_has_prefix (g_ptr_array_index (visible, k), uidl));
      if (!g_hash_table_contains (seen, uidl))
        {
          g_autoptr (GBytes) message = pg_test_pop3_retr (pop3, n, NULL, &error);
          g_autofree gchar *copy = NULL;
          const char *at;

          g_assert_no_error (error);
          copy = g_strndup (g_bytes_get_data (message, NULL), g_bytes_get_size (message));
          at = strstr (copy, "Subject: ");
          g_assert_nonnull (at);
          g_hash_table_insert (seen, g_strdup (uidl), g_strndup (at + 9, strcspn (at + 9, "\r\n")));
          downloads++;
        }
      subject = g_hash_table_lookup (seen, uidl);
      g_ptr_array_add (visible, g_strdup_printf ("%s %s", uidl, subject));
      if (dele != NULL && strcmp (subject, dele) == 0)
        dele_number = n;
    }
  if (dele != NULL)
    {
      g_autofree gchar *command = g_strdup_printf ("DELE %u", dele_number);
      g_assert_cmpuint (dele_number, !=, 0);
      PG_TEST_POP3_ASSERT_REPLY (pop3, command, "+OK");
    }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  if (out_visible != NULL)
    *out_visible = visible;
  else
    g_ptr_array_unref (visible);
  return downloads;
}

/* The UIDL under which `seen` holds subject, or NULL; FALSE in *out_twice if it holds it
 * under one UIDL only. */
static guint
ledger_count_subject (GHashTable *seen, const char *subject)
{
  GHashTableIter iter;
  gpointer value;
  guint n = 0;

  g_hash_table_iter_init (&iter, seen);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    n += strcmp (value, subject) == 0;
  return n;
}

static void
ledger_assert_visible (GPtrArray *visible, const char *const *subjects)
{
  g_autoptr (GString) got = g_string_new (NULL);
  g_autoptr (GString) want = g_string_new (NULL);

  for (guint i = 0; i < visible->len; i++)
    g_string_append_printf (got, "%s;", strchr (g_ptr_array_index (visible, i), ' ') + 1);
  for (guint i = 0; subjects[i] != NULL; i++)
    g_string_append_printf (want, "%s;", subjects[i]);
  g_assert_cmpstr (got->str, ==, want->str);
}

/* The upstream loses its UIDs (index rebuilt: dovecot-uidlist and indexes removed, the
 * messages stay) and gets a new UIDVALIDITY. A keep-mode client (digest ledger) and an
 * expunge-mode client (the server's EMAILID, or a digest) polled before; after the
 * change they download only what is new, the keep client's deleted message stays hidden,
 * and the two identical messages (same Message-ID, Date and size) get new UIDLs for the
 * digest client — never each other's. */
static void
test_uidvalidity_ledger (Fixture *fx, gconstpointer data)
{
  static const char *const expunge_auto[] = { "pop3", "delete", "expunge", NULL };
  static const TestSpec desk_spec = { expunge_auto, FALSE, NULL, 0 };
  g_autoptr (GError) error = NULL;
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *desk = tagged (fx, "desk");
  g_autoptr (GHashTable) seen_laptop
      = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (GHashTable) seen_desk
      = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (GHashTable) before_laptop = NULL;
  g_autoptr (GHashTable) before_desk = NULL;
  g_autoptr (GPtrArray) visible = NULL;
  g_autofree gchar *warning = NULL;
  g_autofree gchar *log = NULL;
  guint32 old_validity = 0, new_validity = 0;
  gboolean emailid;

  fx->second = popgate_new (fx, &desk_spec);
  ledger_seed (fx, "m1", "one");
  ledger_seed (fx, "m2", "two");
  ledger_seed (fx, "m3", "three");
  ledger_seed (fx, "twin", "twin");
  ledger_seed (fx, "twin", "twin");

  /* Before: each downloads all five; laptop deletes "one" (hidden), desk "two" (gone). */
  g_assert_cmpuint (ledger_poll (fx->popgate, laptop, seen_laptop, "one", NULL), ==, 5);
  g_assert_cmpuint (ledger_poll (fx->second, desk, seen_desk, "two", NULL), ==, 5);
  g_assert_cmpuint (ledger_poll (fx->popgate, laptop, seen_laptop, NULL, &visible), ==, 0);
  {
    static const char *const want[] = { "three", "twin", "twin", NULL };
    ledger_assert_visible (visible, want);
  }
  g_clear_pointer (&visible, g_ptr_array_unref);
  g_assert_cmpuint (ledger_poll (fx->second, desk, seen_desk, NULL, NULL), ==, 0);
  before_laptop = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  before_desk = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  {
    GHashTableIter iter;
    gpointer key;
    g_hash_table_iter_init (&iter, seen_laptop);
    while (g_hash_table_iter_next (&iter, &key, NULL))
      g_hash_table_add (before_laptop, g_strdup (key));
    g_hash_table_iter_init (&iter, seen_desk);
    while (g_hash_table_iter_next (&iter, &key, NULL))
      g_hash_table_add (before_desk, g_strdup (key));
  }

  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", &old_validity);
    pg_test_imap_logout (imap, NULL);
  }
  PG_TEST_ASSERT_OK (pg_test_dovecot_reset_uids (fx->dovecot, fx->user, "INBOX", &error), error);
  ledger_seed (fx, "new", "new");
  {
    g_autoptr (PgTestImap) imap = imap_login (fx, "INBOX", &new_validity);
    pg_test_imap_logout (imap, NULL);
  }
  g_assert_cmpuint (new_validity, !=, old_validity);

  /* Keep client, digest: "three" keeps its UIDL (not downloaded again), "one" stays
   * hidden, the twins are ambiguous (new UIDLs, downloaded again), "new" is new. */
  g_assert_cmpuint (ledger_poll (fx->popgate, laptop, seen_laptop, NULL, &visible), ==, 3);
  {
    static const char *const want[] = { "one", "three", "twin", "twin", "new", NULL };
    static const char *const shown[] = { "three", "twin", "twin", "new", NULL };
    /* The upstream holds "one" still: only this client does not see it. */
    g_assert_cmpuint (upstream_count (fx), ==, G_N_ELEMENTS (want) - 1);
    ledger_assert_visible (visible, shown);
  }
  for (guint i = 0; i < visible->len; i++)
    {
      const char *line = g_ptr_array_index (visible, i);
      g_autofree gchar *uidl = g_strndup (line, strcspn (line, " "));
      gboolean old = g_hash_table_contains (before_laptop, uidl);

      if (g_str_has_suffix (line, " three"))
        g_assert_true (old);
      else
        g_assert_false (old);
    }
  g_assert_cmpuint (ledger_count_subject (seen_laptop, "twin"), ==, 4);
  g_assert_cmpuint (ledger_count_subject (seen_laptop, "three"), ==, 1);
  g_assert_cmpuint (ledger_count_subject (seen_laptop, "new"), ==, 1);
  g_clear_pointer (&visible, g_ptr_array_unref);
  warning = g_strdup_printf ("UIDVALIDITY of user=%s mailbox=INBOX tag=laptop changed from %u to "
                             "%u: 2 UIDLs carried over, 3 new (ledger: digest",
                             fx->user, old_validity, new_validity);
  g_assert_true (pg_test_popgate_wait_log (fx->popgate, warning, WAIT_MS));

  /* Expunge client: with EMAILID (Dovecot keeps a Maildir message's GUID in its file
   * name) the twins are told apart and keep their UIDLs too; with a digest they do not. */
  g_assert_cmpuint (ledger_poll (fx->second, desk, seen_desk, "new", &visible), >=, 1);
  log = pg_test_popgate_read_log (fx->second);
  emailid = strstr (log, "(ledger: emailid") != NULL;
  g_test_message ("desk's ledger: %s", emailid ? "emailid" : "digest");
  {
    static const char *const shown[] = { "one", "three", "twin", "twin", "new", NULL };
    ledger_assert_visible (visible, shown);
  }
  for (guint i = 0; i < visible->len; i++)
    {
      const char *line = g_ptr_array_index (visible, i);
      g_autofree gchar *uidl = g_strndup (line, strcspn (line, " "));
      gboolean old = g_hash_table_contains (before_desk, uidl);

      if (g_str_has_suffix (line, " new") || (!emailid && g_str_has_suffix (line, " twin")))
        g_assert_false (old);
      else
        g_assert_true (old);
    }
  g_assert_cmpuint (ledger_count_subject (seen_desk, "one"), ==, 1);
  g_assert_cmpuint (ledger_count_subject (seen_desk, "three"), ==, 1);
  g_assert_cmpuint (ledger_count_subject (seen_desk, "twin"), ==, emailid ? 2 : 4);
  g_clear_pointer (&visible, g_ptr_array_unref);

  /* desk's DELE removed "new" and nothing else; laptop's state still applies. */
  g_assert_cmpuint (upstream_count (fx), ==, 4);
  g_assert_cmpuint (ledger_poll (fx->popgate, laptop, seen_laptop, NULL, &visible), ==, 0);
  {
    static const char *const shown[] = { "three", "twin", "twin", NULL };
    ledger_assert_visible (visible, shown);
  }
  g_clear_pointer (&visible, g_ptr_array_unref);
  g_assert_cmpuint (ledger_poll (fx->second, desk, seen_desk, NULL, NULL), ==, 0);
}

/* The same across a UIDVALIDITY change with the server's own ids (RFC 8474 EMAILID; the
 * fixture's Dovecot 2.3 has no OBJECTID, so a scripted server stands in): popgate asks
 * for EMAILID in the snapshot itself and needs no header FETCH; after the change the UIDs
 * are others and in another order, and each message keeps its UIDL by its EMAILID, the
 * deleted one staying hidden. Two popgates share one state directory, one per server
 * connection. */
/* clang-format off */
#define LEDGER_PEER_LOGIN                                                                    \
  { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN UIDPLUS OBJECTID] hi\r\n", 0 }, \
  { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN *", 0 },                                        \
  { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 SASL-IR UIDPLUS OBJECTID] in\r\n", 0 },   \
  { PG_TEST_PEER_EXPECT, "SELECT INBOX", 0 },                                                \
  { PG_TEST_PEER_EXPECT, "UID FETCH 1:* (UID RFC822.SIZE EMAILID)", 0 }
#define LEDGER_PEER_LOGOUT                                                                   \
  { PG_TEST_PEER_EXPECT, "LOGOUT", 0 },                                                      \
  { PG_TEST_PEER_SEND, "* BYE bye\r\n$ OK done\r\n", 0 },                                      \
  { PG_TEST_PEER_CLOSE, NULL, 0 }
/* clang-format on */

/* A popgate in front of a scripted server; state_dir NULL: its own. */
static PgTestPopgate *
peer_popgate (PgTestPeer *peer, const char *const *settings, const char *state_dir)
{
  g_autoptr (GError) error = NULL;
  PgTestPopgate *popgate = pg_test_popgate_new (NULL, "none", &error);

  g_assert_no_error (error);
  pg_test_popgate_set_plain_upstream (popgate, pg_test_peer_get_port (peer));
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    pg_test_popgate_set (popgate, settings[i], settings[i + 1], settings[i + 2]);
  if (state_dir != NULL)
    pg_test_popgate_set (popgate, "state", "path", state_dir);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  return popgate;
}

static void
test_uidvalidity_ledger_emailid (Fixture *fx, gconstpointer data)
{
  static const PgTestPeerStep before[] = {
    LEDGER_PEER_LOGIN,
    { PG_TEST_PEER_SEND,
      "* 3 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n* OK [UIDNEXT 4] ok\r\n$^ OK [READ-WRITE] sel\r\n"
      "* 1 FETCH (UID 1 RFC822.SIZE 20 EMAILID (Maaa))\r\n"
      "* 2 FETCH (UID 2 RFC822.SIZE 20 EMAILID (Mbbb))\r\n"
      "* 3 FETCH (UID 3 RFC822.SIZE 20 EMAILID (Mccc))\r\n$ OK fetched\r\n",
      0 },
    LEDGER_PEER_LOGOUT,
  };
  static const PgTestPeerStep after[] = {
    LEDGER_PEER_LOGIN,
    { PG_TEST_PEER_SEND,
      "* 4 EXISTS\r\n* OK [UIDVALIDITY 43] ok\r\n* OK [UIDNEXT 15] ok\r\n$^ OK [READ-WRITE] sel\r\n"
      "* 1 FETCH (UID 11 RFC822.SIZE 20 EMAILID (Mccc))\r\n"
      "* 2 FETCH (UID 12 RFC822.SIZE 20 EMAILID (Maaa))\r\n"
      "* 3 FETCH (UID 13 RFC822.SIZE 20 EMAILID (Mbbb))\r\n"
      "* 4 FETCH (UID 14 RFC822.SIZE 20 EMAILID (Mddd))\r\n$ OK fetched\r\n",
      0 },
    LEDGER_PEER_LOGOUT,
  };
  static const char *const keep[] = { "pop3", "delete", "keep", NULL };
  const PgTestPeerStep *scripts[] = { before, after };
  /* Before: all three, then DELE 1 (UID 1, Maaa). After: Maaa stays hidden, Mccc and
   * Mbbb keep their UIDLs, Mddd is new. */
  static const char *const want[][4] = {
    { "1 000000010000002a", "2 000000020000002a", "3 000000030000002a", NULL },
    { "1 000000030000002a", "2 000000020000002a", "3 0000000e0000002b", NULL },
  };
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_autofree gchar *state_dir = NULL;

  for (guint round = 0; round < G_N_ELEMENTS (scripts); round++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (PgTestPeer) peer = pg_test_peer_new (scripts[round], &error);
      PgTestPopgate *popgate;
      g_auto (GStrv) lines = NULL;

      g_assert_no_error (error);
      popgate = peer_popgate (peer, keep, state_dir);
      if (state_dir == NULL)
        state_dir = g_strdup (popgate->state_dir);
      {
        g_autoptr (PgTestPop3) pop3 = pop3_login (popgate, laptop);

        lines = pg_test_pop3_cmd_lines (pop3, "UIDL");
        g_assert_cmpstrv (lines, want[round]);
        if (round == 0)
          PG_TEST_POP3_ASSERT_REPLY (pop3, "DELE 1", "+OK");
        PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
        g_assert_true (pg_test_pop3_wait_closed (pop3));
      }
      g_assert_true (pg_test_peer_wait_client_closed (peer, WAIT_MS));
      g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
      if (round == 0)
        {
          /* It owns the state directory: kept until the end. */
          fx->second = popgate;
          continue;
        }
      g_assert_true (pg_test_popgate_wait_log (
          popgate,
          "changed from 42 to 43: 3 UIDLs carried over, 1 new (ledger: emailid, 3 messages; 1 "
          "hidden",
          WAIT_MS));
      popgate_check_and_free (popgate);
    }
}

/* A server that refuses the ledger's header FETCH (but stays connected) costs the ledger
 * those digests, not the login. */
static void
test_uidvalidity_ledger_refused (Fixture *fx, gconstpointer data)
{
  /* clang-format off */
  static const PgTestPeerStep script[] = {
    { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN UIDPLUS] hi\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN *", 0 },
    { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 SASL-IR UIDPLUS] in\r\n", 0 },
    { PG_TEST_PEER_EXPECT, "SELECT INBOX", 0 },
    { PG_TEST_PEER_EXPECT, "UID FETCH 1:* (UID RFC822.SIZE)", 0 },
    { PG_TEST_PEER_SEND,
      "* 2 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n* OK [UIDNEXT 9] ok\r\n$^ OK [READ-WRITE] sel\r\n"
      "* 1 FETCH (UID 5 RFC822.SIZE 20)\r\n* 2 FETCH (UID 8 RFC822.SIZE 20)\r\n$ OK fetched\r\n",
      0 },
    { PG_TEST_PEER_EXPECT, "UID FETCH 5,8 (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)])", 0 },
    { PG_TEST_PEER_SEND, "$ NO [SERVERBUG] cannot\r\n", 0 },
    LEDGER_PEER_LOGOUT,
  };
  /* clang-format on */
  static const char *const want[] = { "1 000000050000002a", "2 000000080000002a", NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new (script, &error);
  g_autofree gchar *laptop = tagged (fx, "laptop");
  g_auto (GStrv) lines = NULL;

  g_assert_no_error (error);
  fx->second = peer_popgate (peer, NULL, NULL);
  {
    g_autoptr (PgTestPop3) pop3 = pop3_login (fx->second, laptop);

    lines = pg_test_pop3_cmd_lines (pop3, "UIDL");
    g_assert_cmpstrv (lines, want);
    PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }
  g_assert_true (pg_test_peer_wait_client_closed (peer, WAIT_MS));
  g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
  g_assert_true (
      pg_test_popgate_wait_log (fx->second, "the UIDL ledger's FETCH was refused", WAIT_MS));
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  static const char *const keep[] = { "pop3", "delete", "keep", NULL };
  static const char *const first_new[] = { "pop3", "first_login", "new", NULL };
  static const char *const recent[] = { "pop3", "recent_days", "30", NULL };
  static const char *const metadata_keep[]
      = { "pop3", "delete", "keep", "state", "backend", "imap-metadata", NULL };
  static const char *const move[] = { "pop3", "delete", "move:Trash", NULL };
  static const TestSpec two_tags = { keep, FALSE, NULL, 5 };
  static const TestSpec restart_spec = { keep, FALSE, NULL, 3 };
  static const TestSpec first_login = { first_new, FALSE, NULL, 3 };
  static const TestSpec recent_spec = { recent, FALSE, NULL, 2 };
  static const TestSpec metadata = { metadata_keep, FALSE, NULL, 4 };
  static const TestSpec no_metadata = { metadata_keep, TRUE, NULL, 2 };
  static const TestSpec corrupt = { keep, FALSE, NULL, 3 };
  static const TestSpec reset = { keep, FALSE, "Work", 3 };
  static const char *const keep_digest[]
      = { "pop3", "delete", "keep", "pop3", "uidl_ledger", "digest", NULL };
  static const TestSpec ledger = { keep_digest, FALSE, NULL, 0 };
  static const TestSpec ledger_emailid = { NULL, FALSE, NULL, 0 };
  static const TestSpec sigkill = { NULL, FALSE, NULL, 5 };
  static const TestSpec sigkill_move = { move, FALSE, NULL, 3 };
  static const char *const move_missing[] = { "pop3", "delete", "move:Nosuch", NULL };
  static const TestSpec no_uidplus = { NULL, TRUE, NULL, 4 };
  static const TestSpec move_no_move = { move, TRUE, NULL, 3 };
  static const TestSpec move_missing_spec = { move_missing, FALSE, NULL, 3 };
  static const TestSpec move_missing_bare = { move_missing, TRUE, NULL, 3 };
  static const TestSpec lost_before_expunge = { NULL, FALSE, NULL, 4 };
  static const TestSpec concurrent_file = { keep, FALSE, NULL, 5 };
  static const TestSpec concurrent_metadata = { metadata_keep, FALSE, NULL, 5 };
  static const struct
  {
    const char *path;
    const TestSpec *spec;
    void (*func) (Fixture *, gconstpointer);
  } tests[] = {
    { "/popgate/pop3-state/two-tags-keep", &two_tags, test_two_tags_keep },
    { "/popgate/pop3-state/restart", &restart_spec, test_restart },
    { "/popgate/pop3-state/first-login-new", &first_login, test_first_login_new },
    { "/popgate/pop3-state/recent-days", &recent_spec, test_recent_days },
    { "/popgate/pop3-state/metadata-two-instances", &metadata, test_metadata_two_instances },
    { "/popgate/pop3-state/no-metadata", &no_metadata, test_no_metadata },
    { "/popgate/pop3-state/corrupt-state", &corrupt, test_corrupt_state },
    { "/popgate/pop3-state/uidvalidity-reset", &reset, test_uidvalidity_reset },
    { "/popgate/pop3-state/uidvalidity-ledger", &ledger, test_uidvalidity_ledger },
    { "/popgate/pop3-state/uidvalidity-ledger-emailid", &ledger_emailid,
      test_uidvalidity_ledger_emailid },
    { "/popgate/pop3-state/uidvalidity-ledger-refused", &ledger_emailid,
      test_uidvalidity_ledger_refused },
    { "/popgate/pop3-state/sigkill-quit", &sigkill, test_sigkill_quit },
    { "/popgate/pop3-state/sigkill-quit-move", &sigkill_move, test_sigkill_quit_move },
    { "/popgate/pop3-state/no-uidplus", &no_uidplus, test_no_uidplus },
    { "/popgate/pop3-state/move-no-move", &move_no_move, test_move_no_move },
    { "/popgate/pop3-state/move-missing", &move_missing_spec, test_move_missing },
    { "/popgate/pop3-state/move-missing-bare", &move_missing_bare, test_move_missing },
    { "/popgate/pop3-state/lost-before-expunge", &lost_before_expunge, test_lost_before_expunge },
    { "/popgate/pop3-state/concurrent-keep-file", &concurrent_file, test_concurrent_keep_file },
    { "/popgate/pop3-state/concurrent-keep-metadata", &concurrent_metadata,
      test_concurrent_keep_metadata },
  };
  PgTestDovecotOptions with_metadata = { .metadata = TRUE };
  PgTestDovecotOptions bare = { .capability = BARE_CAPABILITY };
  int rc;

  g_test_init (&argc, &argv, NULL);
  upstream = pg_test_dovecot_new (&with_metadata, &error);
  g_assert_no_error (error);
  plain = pg_test_dovecot_new (&bare, &error);
  g_assert_no_error (error);

  /* Every test's user exists before Dovecot starts: its passwd-file cache goes by mtime,
   * which two writes within a second do not change. */
  for (gsize i = 0; i < G_N_ELEMENTS (tests); i++)
    {
      g_autofree gchar *user = g_ascii_strdown (strrchr (tests[i].path, '/') + 1, -1);
      PgTestDovecot *dovecot = tests[i].spec->plain ? plain : upstream;
      if (!pg_test_dovecot_add_user (dovecot, user, PASSWORD, &error))
        g_error ("%s", error->message);
      g_test_add (tests[i].path, Fixture, tests[i].spec, fixture_setup, tests[i].func,
                  fixture_teardown);
    }
  if (!pg_test_dovecot_start (upstream, &error))
    g_error ("cannot start Dovecot: %s", error->message);
  if (!pg_test_dovecot_start (plain, &error))
    g_error ("cannot start Dovecot without METADATA: %s", error->message);

  rc = g_test_run ();
  pg_test_dovecot_free (plain);
  pg_test_dovecot_free (upstream);
  return rc;
}
