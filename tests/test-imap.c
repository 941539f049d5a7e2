/* popgate — IMAP front end integration tests: the real popgate binary in front of a real
 * Dovecot, driven by a small IMAP client (raw lines where the protocol detail matters) and
 * by Python's imaplib; plus an in-process session on a non-loopback (Unix socket)
 * connection for what needs an off-loopback client and the session registry.
 *
 * One Dovecot serves the whole program; each test has its own user (named after the test)
 * and its own popgate.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-popgate.h"

#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-imap.h"

#include <signal.h>
#include <string.h>
#include <sys/socket.h>

static PgTestDovecot *upstream = NULL;

/* Awkward on purpose: a quote, a backslash, a space and 8-bit. */
#define PASSWORD "p\"a\\ss w0rd-é"
/* imaplib sends only ASCII credentials (as a quoted string: the quote and backslash stay). */
#define PASSWORD_ASCII "p\"a\\ss w0rd-e"

typedef struct
{
  gchar *user;
  PgTestPopgate *popgate;
  gchar *account_map; /* owned: set by tests that need one, before setup */
  gchar *map_dir;     /* owned */
} Fixture;

static gchar *
fixture_user_name (void)
{
  const char *path = g_test_get_path ();
  const char *base = strrchr (path, '/');
  return g_ascii_strdown (base != NULL ? base + 1 : path, -1);
}

#define MAP_LOCAL_USER "mapped-local"
#define MAP_LOCAL_PASSWORD "local-pass-w0rd"

/* An account map (mode 0600) that maps MAP_LOCAL_USER to this test's upstream user, with
 * the upstream password in its own 0600 file. */
static void
fixture_make_map (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *pw_file = NULL;
  g_autofree gchar *map = NULL;

  if (fx->account_map != NULL)
    return;
  fx->map_dir = g_dir_make_tmp ("popgate-map-XXXXXX", &error);
  g_assert_no_error (error);
  pw_file = g_build_filename (fx->map_dir, "upstream.pw", NULL);
  g_assert_true (g_file_set_contents_full (pw_file, PASSWORD "\n", -1, G_FILE_SET_CONTENTS_NONE,
                                           0600, &error));
  g_assert_no_error (error);
  fx->account_map = g_build_filename (fx->map_dir, "accounts", NULL);
  map = g_strdup_printf ("# local-user local-secret upstream-user upstream-password-file\n"
                         "%s {PLAIN}%s %s upstream.pw\n",
                         MAP_LOCAL_USER, MAP_LOCAL_PASSWORD, fx->user);
  g_assert_true (
      g_file_set_contents_full (fx->account_map, map, -1, G_FILE_SET_CONTENTS_NONE, 0600, &error));
  g_assert_no_error (error);
}

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  const char *const *settings = data;
  static const char message[] = "From: a@example.org\r\nSubject: seed\r\n\r\nHello.\r\n";
  /* A triple ("upstream", "tls", "implicit") makes popgate's upstream TLS (the fixture's
   * IMAPS port and CA) rather than plain. */
  const char *upstream_tls = "none";

  fx->user = fixture_user_name ();
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    if (strcmp (settings[i], "upstream") == 0 && strcmp (settings[i + 1], "tls") == 0
        && strcmp (settings[i + 2], "implicit") == 0)
      upstream_tls = "implicit";
  g_assert_true (
      pg_test_dovecot_append (upstream, fx->user, "INBOX", message, strlen (message), &error));
  g_assert_no_error (error);
  /* pg_test_popgate_start() waits for the first port to accept, and polling connects to a
   * free ephemeral port can connect to themselves (TCP simultaneous open), which then holds
   * the port so popgate cannot bind it. So wait for popgate's own "ready" line and start
   * over on fresh ports if it did not get there. */
  for (guint attempt = 0; attempt < 5; attempt++)
    {
      g_clear_pointer (&fx->popgate, pg_test_popgate_free);
      fx->popgate = pg_test_popgate_new (upstream, upstream_tls, &error);
      g_assert_no_error (error);
      pg_test_popgate_set (fx->popgate, "limits", "auth_failure_delay", "50ms");
      for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
        if (strcmp (settings[i], "upstream") == 0 && strcmp (settings[i + 1], "tls") == 0
            && strcmp (settings[i + 2], "implicit") == 0)
          continue; /* pg_test_popgate_new() set it, with the port and CA to go with it */
        else if (strcmp (settings[i + 2], "@MAP@") == 0)
          fixture_make_map (fx);
        else if (strcmp (settings[i + 2], "@OWN_CA@") == 0)
          /* A CA that did not sign the upstream's certificate: popgate's own. */
          pg_test_popgate_set (fx->popgate, settings[i], settings[i + 1],
                               fx->popgate->certs->ca_file);
        else
          pg_test_popgate_set (fx->popgate, settings[i], settings[i + 1], settings[i + 2]);
      if (fx->account_map != NULL)
        pg_test_popgate_set (fx->popgate, "imap", "account_map", fx->account_map);
      if (!pg_test_popgate_start (fx->popgate, &error))
        {
          g_test_message ("popgate start failed, retrying: %s", error->message);
          g_clear_error (&error);
          continue;
        }
      if (pg_test_popgate_wait_log (fx->popgate, "ready", 10000)
          && !pg_test_popgate_wait (fx->popgate, 0, NULL))
        return;
      g_test_message ("popgate did not get ready, retrying");
    }
  g_assert_not_reached ();
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  g_autofree gchar *log = NULL;

  if (fx->popgate != NULL)
    {
      pg_test_popgate_stop (fx->popgate);
      log = pg_test_popgate_read_log (fx->popgate);
      if (g_test_failed ())
        g_test_message ("popgate log:\n%s", log);
      /* Never a password in the log, at -v, whatever happened. */
      g_assert_null (strstr (log, PASSWORD));
      g_assert_null (strstr (log, "w0rd"));
    }
  g_clear_pointer (&fx->popgate, pg_test_popgate_free);
  if (fx->map_dir != NULL)
    pg_test_rm_rf (fx->map_dir);
  g_free (fx->map_dir);
  g_free (fx->account_map);
  g_free (fx->user);
}

/* --- helpers -------------------------------------------------------------------------------- */

static PgTestImap *
connect_popgate (Fixture *fx)
{
  g_autoptr (GError) error = NULL;
  PgTestImap *imap = pg_test_imap_connect (fx->popgate->host, fx->popgate->imap_port, NULL, &error);

  if (error != NULL)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
      g_test_message ("port %u; popgate log:\n%s", fx->popgate->imap_port, log);
    }
  g_assert_no_error (error);
  g_assert_nonnull (imap);
  return imap;
}

static void
send_raw (PgTestImap *imap, const char *text)
{
  g_autoptr (GError) error = NULL;

  g_assert_true (pg_test_imap_send_raw (imap, text, strlen (text), &error));
  g_assert_no_error (error);
}

static gchar *
read_line (PgTestImap *imap)
{
  g_autoptr (GError) error = NULL;
  gchar *line = pg_test_imap_read_line (imap, &error);

  g_assert_no_error (error);
  g_assert_nonnull (line);
  return line;
}

/* Read lines until one starts with `prefix`; return it (the others are dropped). */
static gchar *
read_until (PgTestImap *imap, const char *prefix)
{
  for (guint i = 0; i < 1000; i++)
    {
      gchar *line = read_line (imap);
      if (g_str_has_prefix (line, prefix))
        return line;
      g_free (line);
    }
  g_assert_not_reached ();
  return NULL;
}

/* LOGIN with both arguments as synchronising literals; returns the tagged reply. */
static gchar *
raw_login (PgTestImap *imap, const char *tag, const char *user, const char *password)
{
  g_autofree gchar *head = g_strdup_printf ("%s LOGIN {%zu}\r\n", tag, strlen (user));
  g_autofree gchar *mid = g_strdup_printf ("%s {%zu}\r\n", user, strlen (password));
  g_autofree gchar *tail = g_strdup_printf ("%s\r\n", password);
  g_autofree gchar *cont1 = NULL;
  g_autofree gchar *cont2 = NULL;
  g_autofree gchar *prefix = g_strdup_printf ("%s ", tag);

  send_raw (imap, head);
  cont1 = read_line (imap);
  g_assert_true (g_str_has_prefix (cont1, "+"));
  send_raw (imap, mid);
  cont2 = read_line (imap);
  g_assert_true (g_str_has_prefix (cont2, "+"));
  send_raw (imap, tail);
  return read_until (imap, prefix);
}

static gchar *
plain_b64 (const char *user, const char *password)
{
  g_autoptr (GString) raw = g_string_new (NULL);

  g_string_append_c (raw, '\0');
  g_string_append (raw, user);
  g_string_append_c (raw, '\0');
  g_string_append (raw, password);
  return g_base64_encode ((const guchar *) raw->str, raw->len);
}

static gboolean
log_has (Fixture *fx, const char *needle)
{
  return pg_test_popgate_wait_log (fx->popgate, needle, 10000);
}

/* --- tests ---------------------------------------------------------------------------------- */

/* A message of about `size` octets, CRLF lines; some body lines look like IMAP responses
 * ("* BYE", a tagged OK, "+ ") so a relay that mistook literal data for responses shows. */
static GBytes *
make_large_message (gsize size, guint seed)
{
  GString *message = g_string_sized_new (size + 256);
  guint32 x = seed * 2654435761u + 1;

  g_string_append_printf (message, "From: a@example.org\r\nSubject: large %u\r\n\r\n", seed);
  for (guint line = 0; message->len < size; line++)
    {
      if (line % 97 == 0)
        g_string_append (message, "* BYE not really\r\n");
      else if (line % 89 == 0)
        g_string_append (message, "a1 OK not a reply\r\n+ nor a continuation\r\n");
      for (guint i = 0; i < 70; i++)
        {
          x = x * 1103515245u + 12345u;
          g_string_append_c (message, (char) ('!' + (x >> 16) % 90));
        }
      g_string_append (message, "\r\n");
    }
  return g_string_free_to_bytes (message);
}

/* Megabytes each way through the relay, byte-exact: a FETCH of a large message (upstream
 * -> client in many reads, the client's queue filling and draining) and an APPEND of
 * another (client -> upstream, writes that the socket does not take at once); the
 * session goes on afterwards. */
static void
test_large_transfer (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autoptr (GBytes) fetched = make_large_message (3 * 1024 * 1024, 1);
  g_autoptr (GBytes) appended = make_large_message (2 * 1024 * 1024, 2);
  g_autoptr (GArray) uids = NULL;
  guint32 exists = 0;
  guint32 appended_uid = 0;

  g_assert_true (pg_test_dovecot_append (upstream, fx->user, "INBOX",
                                         g_bytes_get_data (fetched, NULL),
                                         g_bytes_get_size (fetched), &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_imap_login (imap, fx->user, PASSWORD, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, &exists, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (exists, ==, 2);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 2);
  for (guint round = 0; round < 2; round++)
    {
      g_autoptr (GBytes) body
          = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, 1), &error);

      g_assert_no_error (error);
      g_assert_true (g_bytes_equal (body, fetched));
    }

  g_assert_true (pg_test_imap_append (imap, "INBOX", NULL, g_bytes_get_data (appended, NULL),
                                      g_bytes_get_size (appended), &appended_uid, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (appended_uid, >, 0);
  {
    g_autoptr (GBytes) body = pg_test_imap_fetch_body (imap, appended_uid, &error);

    g_assert_no_error (error);
    g_assert_true (g_bytes_equal (body, appended));
  }
  g_assert_true (pg_test_imap_logout (imap, &error));
  g_assert_no_error (error);
}

/* The one capability filter, against an upstream that offers COMPRESS=DEFLATE (Dovecot
 * with imap_zlib): no list the client sees shows a withheld capability, and a command for
 * one is answered by popgate (the upstream would have said OK to COMPRESS, or BAD in its
 * own words). */
static void
test_capabilities (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *login = NULL;
  g_autofree gchar *caps = NULL;
  g_autofree gchar *caps_ok = NULL;
  g_autofree gchar *enabled = NULL;
  g_autofree gchar *reply = NULL;

  g_assert_null (strstr (pg_test_imap_get_greeting (imap), "UNAUTHENTICATE"));
  login = raw_login (imap, "a1", fx->user, PASSWORD);
  g_assert_true (g_str_has_prefix (login, "a1 OK [CAPABILITY "));
  /* popgate's own COMPRESS=DEFLATE, once; never the upstream's. */
  g_assert_nonnull (strstr (login, " COMPRESS=DEFLATE]"));
  g_assert_null (strstr (strstr (login, "COMPRESS=") + 1, "COMPRESS="));

  send_raw (imap, "a2 CAPABILITY\r\n");
  caps = read_until (imap, "* CAPABILITY ");
  g_assert_nonnull (strstr (caps, "IDLE"));
  g_assert_true (g_str_has_suffix (caps, " COMPRESS=DEFLATE"));
  g_assert_null (strstr (caps, "COMPRESS=DEFLATE COMPRESS="));
  g_assert_null (strstr (caps, "COMPRESS=DEFLATE "));
  g_assert_null (strstr (caps, "STARTTLS"));
  g_assert_null (strstr (caps, "AUTH="));
  caps_ok = read_until (imap, "a2 ");
  g_assert_true (g_str_has_prefix (caps_ok, "a2 OK"));

  send_raw (imap, "a3 ENABLE CONDSTORE\r\n");
  enabled = read_until (imap, "* ENABLED");
  g_assert_cmpstr (enabled, ==, "* ENABLED CONDSTORE");
  g_free (read_until (imap, "a3 OK"));

  /* Answered by popgate, never relayed. */
  send_raw (imap, "a4 UNAUTHENTICATE\r\n");
  reply = read_until (imap, "a4 ");
  g_assert_cmpstr (reply, ==, "a4 BAD UNAUTHENTICATE is not supported here.");
  g_clear_pointer (&reply, g_free);
  send_raw (imap, "a5 STARTTLS\r\n");
  reply = read_until (imap, "a5 ");
  g_assert_cmpstr (reply, ==, "a5 BAD STARTTLS is only available before login.");
  g_clear_pointer (&reply, g_free);
  /* A synchronising literal: the tagged BAD comes instead of "+". */
  send_raw (imap, "a6 LOGIN {3}\r\n");
  reply = read_line (imap);
  g_assert_cmpstr (reply, ==, "a6 BAD Already logged in.");
  g_clear_pointer (&reply, g_free);
  /* Split inside the command word, and pipelined behind a relayed command: the rest is
   * sent only once a7 is answered, so popgate has surely read the first part alone. */
  send_raw (imap, "a7 NOOP\r\na8 UNAUTH");
  reply = read_until (imap, "a7 ");
  g_assert_true (g_str_has_prefix (reply, "a7 OK"));
  g_clear_pointer (&reply, g_free);
  send_raw (imap, "ENTICATE\r\na9 NOOP\r\n");
  reply = read_until (imap, "a8 ");
  g_assert_cmpstr (reply, ==, "a8 BAD UNAUTHENTICATE is not supported here.");
  g_clear_pointer (&reply, g_free);
  reply = read_until (imap, "a9 ");
  g_assert_true (g_str_has_prefix (reply, "a9 OK"));
  g_clear_pointer (&reply, g_free);
  send_raw (imap, "b1 COMPRESS LZ77\r\n");
  reply = read_until (imap, "b1 ");
  g_assert_cmpstr (reply, ==, "b1 BAD Unsupported compression mechanism.");
  g_clear_pointer (&reply, g_free);
  send_raw (imap, "b2 LOGOUT\r\n");
  g_free (read_until (imap, "b2 OK"));
}

/* Literal octets are counted past, never read as commands or responses: a MULTIAPPEND
 * whose two literals hold lines that look like withheld commands, capability lists and
 * tagged replies (one cut across the two literals, which popgate reads separately: the
 * "+" before the second is the upstream's), stored and fetched back byte for byte. */
static void
test_literal_lookalikes (Fixture *fx, gconstpointer data)
{
  static const char one[] = "From: a@example.org\r\nSubject: lookalikes\r\n\r\n"
                            "* CAPABILITY IMAP4rev1 STARTTLS UNAUTHENTICATE COMPRESS=DEFLATE\r\n"
                            "x0 UNAUTHENTICATE\r\n"
                            "x1 START";
  static const char two[] = "TLS\r\n"
                            "a1 OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] done\r\n"
                            "* ENABLED UTF8=ACCEPT COMPRESS=DEFLATE\r\n"
                            "x2 COMPRESS DEFLATE\r\n"
                            "c1 OK not the reply {5}\r\n"
                            "+ nor a continuation\r\n";
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autoptr (GArray) uids = NULL;
  g_autofree gchar *head = g_strdup_printf ("c1 APPEND INBOX {%zu}\r\n", strlen (one));
  g_autofree gchar *mid = g_strdup_printf ("%s {%zu}\r\n", one, strlen (two));
  g_autofree gchar *tail = g_strdup_printf ("%s\r\n", two);
  g_autofree gchar *cont = NULL;
  g_autofree gchar *reply = NULL;
  guint32 exists = 0;

  g_assert_true (pg_test_imap_login (imap, fx->user, PASSWORD, &error));
  g_assert_no_error (error);
  send_raw (imap, head);
  cont = read_line (imap);
  g_assert_true (g_str_has_prefix (cont, "+"));
  g_clear_pointer (&cont, g_free);
  send_raw (imap, mid);
  cont = read_line (imap);
  g_assert_true (g_str_has_prefix (cont, "+"));
  send_raw (imap, tail);
  reply = read_until (imap, "c1 ");
  g_assert_true (g_str_has_prefix (reply, "c1 OK"));

  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, &exists, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (exists, ==, 3);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 3);
  for (guint i = 0; i < 2; i++)
    {
      const char *want = i == 0 ? one : two;
      g_autoptr (GBytes) body
          = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, 1 + i), &error);

      g_assert_no_error (error);
      g_assert_cmpmem (g_bytes_get_data (body, NULL), g_bytes_get_size (body), want, strlen (want));
    }
  g_assert_true (pg_test_imap_logout (imap, &error));
  g_assert_no_error (error);
}

/* A whole session: SELECT, FETCH, STORE, APPEND (synchronising and LITERAL+), EXPUNGE,
 * LOGOUT, with the upstream's capabilities filtered in the login reply. */
static void
test_session (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *login = NULL;
  g_autoptr (GArray) uids = NULL;
  g_autoptr (GBytes) body = NULL;
  g_auto (GStrv) flags = NULL;
  guint32 exists = 0, uid_sync = 0;
  static const char appended[] = "Subject: appended\r\n\r\nsync literal\r\n";
  static const char appended_plus[] = "Subject: literal plus\r\n\r\nnon-sync\r\n";

  g_assert_true (g_str_has_prefix (pg_test_imap_get_greeting (imap), "* OK [CAPABILITY IMAP4rev1"));
  g_assert_nonnull (strstr (pg_test_imap_get_greeting (imap), "AUTH=PLAIN")); /* loopback */
  login = raw_login (imap, "a1", fx->user, PASSWORD);
  g_assert_true (g_str_has_prefix (login, "a1 OK [CAPABILITY "));
  g_assert_nonnull (strstr (login, "IDLE"));
  g_assert_nonnull (strstr (login, "LITERAL+"));
  g_assert_null (strstr (login, "STARTTLS"));
  g_assert_null (strstr (login, "AUTH="));
  g_assert_null (strstr (login, "LOGINDISABLED"));
  g_assert_nonnull (strstr (login, " COMPRESS=DEFLATE]")); /* popgate's own */

  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, &exists, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (exists, ==, 1);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 1);
  body = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, 0), &error);
  g_assert_no_error (error);
  g_assert_nonnull (strstr (g_bytes_get_data (body, NULL), "Subject: seed"));

  g_assert_true (pg_test_imap_uid_store (imap, g_array_index (uids, guint32, 0),
                                         "+FLAGS.SILENT (\\Flagged)", &error));
  g_assert_no_error (error);
  flags = pg_test_imap_fetch_flags (imap, g_array_index (uids, guint32, 0), &error);
  g_assert_no_error (error);
  g_assert_true (g_strv_contains ((const char *const *) flags, "\\Flagged"));

  /* APPEND with a synchronising literal (the client waits for "+"). */
  g_assert_true (pg_test_imap_append (imap, "INBOX", "\\Seen", appended, strlen (appended),
                                      &uid_sync, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (uid_sync, >, 0);

  /* APPEND with LITERAL+: command and literal in one write, no "+" in between. */
  {
    g_autofree gchar *cmd = g_strdup_printf ("p1 APPEND INBOX {%zu+}\r\n%s\r\n",
                                             strlen (appended_plus), appended_plus);
    g_autofree gchar *reply = NULL;

    send_raw (imap, cmd);
    reply = read_until (imap, "p1 ");
    g_assert_true (g_str_has_prefix (reply, "p1 OK"));
  }
  g_clear_pointer (&uids, g_array_unref);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 3);
  {
    g_autoptr (GBytes) plus
        = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, 2), &error);
    g_assert_no_error (error);
    g_assert_cmpmem (g_bytes_get_data (plus, NULL), g_bytes_get_size (plus), appended_plus,
                     strlen (appended_plus));
  }

  g_assert_true (pg_test_imap_expunge_uid (imap, uid_sync, &error));
  g_assert_no_error (error);
  g_clear_pointer (&uids, g_array_unref);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 2);

  g_assert_true (pg_test_imap_logout (imap, &error));
  g_assert_no_error (error);
  g_assert_true (log_has (fx, "imap session ended: user=session"));
  {
    g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
    const char *end = strstr (log, "imap session ended: user=session");
    g_assert_nonnull (strstr (log, "imap session started: user=session"));
    g_assert_nonnull (strstr (end, "mailbox=INBOX"));
    g_assert_nonnull (strstr (end, "reason=LOGOUT"));
    g_assert_nonnull (strstr (end, " in="));
    g_assert_nonnull (strstr (end, " out="));
    g_assert_nonnull (strstr (end, "duration="));
  }
}

/* IDLE through the relay receives the EXISTS caused by another client's APPEND. */
static void
test_idle (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autoptr (PgTestImap) other = NULL;
  g_autofree gchar *login = raw_login (imap, "a1", fx->user, PASSWORD);
  g_autofree gchar *cont = NULL;
  g_autofree gchar *exists = NULL;
  g_autofree gchar *done = NULL;
  static const char message[] = "Subject: while idling\r\n\r\nhi\r\n";

  g_assert_true (g_str_has_prefix (login, "a1 OK"));
  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error));
  g_assert_no_error (error);
  send_raw (imap, "i1 IDLE\r\n");
  cont = read_line (imap);
  g_assert_true (g_str_has_prefix (cont, "+"));

  other = pg_test_imap_connect (upstream->host, upstream->imap_port, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (pg_test_imap_login (other, fx->user, PASSWORD, &error));
  g_assert_no_error (error);
  g_assert_true (
      pg_test_imap_append (other, "INBOX", NULL, message, strlen (message), NULL, &error));
  g_assert_no_error (error);

  exists = read_until (imap, "* 2 EXISTS");
  send_raw (imap, "DONE\r\n");
  done = read_until (imap, "i1 ");
  g_assert_true (g_str_has_prefix (done, "i1 OK"));
  g_assert_true (pg_test_imap_logout (imap, &error));
  g_assert_no_error (error);
}

/* STARTTLS, LOGIN, SELECT, FETCH, APPEND, LOGOUT by Python's imaplib. */
static void
test_imaplib (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *script = g_test_build_filename (G_TEST_DIST, "imap-imaplib.py", NULL);
  g_autofree gchar *port = g_strdup_printf ("%u", fx->popgate->imap_port);
  const char *argv[]
      = { "python3",      script, fx->popgate->host, port, fx->popgate->certs->ca_file, fx->user,
          PASSWORD_ASCII, NULL };
  g_autofree gchar *output = NULL;
  int status = -1;

  g_assert_true (pg_test_run_status (argv, NULL, 60000, &status, &output, &error));
  g_assert_no_error (error);
  if (status != 0)
    g_error ("imaplib script failed (%d): %s", status, output);
  g_assert_nonnull (strstr (output, "imaplib: ok"));
  g_assert_true (log_has (fx, "reason=LOGOUT"));
}

/* Every TLS session popgate ends, implicit (IMAPS) or after STARTTLS, ends with a
 * close_notify: Python's ssl sees a clean shutdown, not an EOF under TLS. */
/* COMPRESS=DEFLATE done by popgate, driven by imaplib wrapped in zlib: SELECT, a FETCH
 * with a 20 MB message byte-identical to the plain one, COMPRESS twice, IDLE and LOGOUT
 * inside compression; and the session's tracking kept working. */
static void
test_compress (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) large = make_large_message (20 * 1024 * 1024, 3);
  g_autofree gchar *script = g_test_build_filename (G_TEST_DIST, "imap-compress.py", NULL);
  g_autofree gchar *port = g_strdup_printf ("%u", fx->popgate->imap_port);
  g_autofree gchar *up_port = g_strdup_printf ("%u", upstream->imap_port);
  const char *argv[]
      = { "python3", script, fx->popgate->host, port, fx->user, PASSWORD_ASCII, up_port, NULL };
  g_autofree gchar *output = NULL;
  int status = -1;

  g_assert_true (pg_test_dovecot_append (upstream, fx->user, "INBOX",
                                         g_bytes_get_data (large, NULL), g_bytes_get_size (large),
                                         &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_run_status (argv, NULL, 120000, &status, &output, &error));
  g_assert_no_error (error);
  if (status != 0)
    g_error ("imap-compress script failed (%d): %s", status, output);
  g_assert_nonnull (strstr (output, "imap-compress: ok"));
  g_test_message ("%s", output);
  /* Tracking saw through the compression: the SELECT, the IDLE, the LOGOUT. */
  g_assert_true (log_has (fx, "COMPRESS=DEFLATE active"));
  g_assert_true (log_has (fx, "mailbox=INBOX mailbox_commands="));
  g_assert_true (log_has (fx, "reason=LOGOUT"));
}

/* popgate's own BYE (here: shutdown) goes into the compressed stream, compressed. */
static void
test_compress_bye (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *script = g_test_build_filename (G_TEST_DIST, "imap-compress.py", NULL);
  g_autofree gchar *port = g_strdup_printf ("%u", fx->popgate->imap_port);
  g_autofree gchar *up_port = g_strdup_printf ("%u", upstream->imap_port);
  g_autofree gchar *pid = g_strdup_printf ("%d", (int) pg_test_popgate_get_pid (fx->popgate));
  const char *argv[] = { "python3", script,   fx->popgate->host,
                         port,      fx->user, PASSWORD_ASCII,
                         up_port,   pid,      NULL };
  g_autofree gchar *output = NULL;
  int status = -1;

  g_assert_true (pg_test_run_status (argv, NULL, 60000, &status, &output, &error));
  g_assert_no_error (error);
  if (status != 0)
    g_error ("imap-compress script failed (%d): %s", status, output);
  g_assert_nonnull (strstr (output, "imap-compress: bye"));
  g_assert_true (log_has (fx, "reason=server shutdown"));
}

static void
test_tls_close (Fixture *fx, gconstpointer data)
{
  pg_test_assert_tls_close_clean (fx->popgate->host, fx->popgate->imaps_port,
                                  fx->popgate->certs->ca_file, "imap", "implicit");
  pg_test_assert_tls_close_clean (fx->popgate->host, fx->popgate->imap_port,
                                  fx->popgate->certs->ca_file, "imap", "starttls");
}

/* The session log names the last mailbox selected even after CLOSE, with what was done
 * in it. */
static void
test_session_log (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *login = raw_login (imap, "a1", fx->user, PASSWORD);

  g_assert_true (g_str_has_prefix (login, "a1 OK"));
  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error));
  g_assert_no_error (error);
  send_raw (imap, "a2 FETCH 1 (BODY.PEEK[])\r\na3 CLOSE\r\n");
  g_free (read_until (imap, "a2 OK"));
  g_free (read_until (imap, "a3 OK"));
  g_assert_true (pg_test_imap_logout (imap, &error));
  g_assert_no_error (error);
  g_assert_true (log_has (fx, "imap session ended: user=session-log"));
  g_assert_true (log_has (fx, "mailbox=INBOX mailbox_commands=2 mailbox_bytes="));
  {
    g_autofree gchar *log = pg_test_popgate_read_log (fx->popgate);
    const char *bytes = strstr (strstr (log, "imap session ended"), "mailbox_bytes=");

    /* The FETCH's body at least. */
    g_assert_cmpuint (g_ascii_strtoull (bytes + strlen ("mailbox_bytes="), NULL, 10), >, 40);
  }
}

/* Plaintext sent behind STARTTLS is dropped, never run inside TLS. Checked with a raw
 * client: the injected command would otherwise be answered after the handshake. */
static void
test_starttls_injection (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *reply = NULL;

  g_assert_nonnull (strstr (pg_test_imap_get_greeting (imap), "STARTTLS"));
  send_raw (imap, "s1 STARTTLS\r\ns2 CAPABILITY\r\n");
  reply = read_line (imap);
  g_assert_cmpstr (reply, ==, "s1 OK Begin TLS negotiation now.");
  /* The server now waits for a ClientHello; it sent nothing about s2. */
  g_assert_true (log_has (fx, "discarded 15 plaintext bytes after STARTTLS"));
}

static void
test_authenticate_plain (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *b64 = plain_b64 (fx->user, PASSWORD);

  /* SASL-IR */
  {
    g_autoptr (PgTestImap) imap = connect_popgate (fx);
    g_autofree gchar *cmd = g_strdup_printf ("a1 AUTHENTICATE PLAIN %s\r\n", b64);
    g_autofree gchar *reply = NULL;

    send_raw (imap, cmd);
    reply = read_until (imap, "a1 ");
    g_assert_true (g_str_has_prefix (reply, "a1 OK [CAPABILITY "));
    g_assert_true (pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error));
    g_assert_no_error (error);
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
  }
  /* Continuation */
  {
    g_autoptr (PgTestImap) imap = connect_popgate (fx);
    g_autofree gchar *cont = NULL;
    g_autofree gchar *response = g_strdup_printf ("%s\r\n", b64);
    g_autofree gchar *reply = NULL;

    send_raw (imap, "a1 AUTHENTICATE PLAIN\r\n");
    cont = read_line (imap);
    g_assert_cmpstr (cont, ==, "+ ");
    send_raw (imap, response);
    reply = read_until (imap, "a1 ");
    g_assert_true (g_str_has_prefix (reply, "a1 OK"));
    g_assert_true (pg_test_imap_logout (imap, &error));
    g_assert_no_error (error);
  }
  /* Cancelled with "*" */
  {
    g_autoptr (PgTestImap) imap = connect_popgate (fx);
    g_autofree gchar *cont = NULL;
    g_autofree gchar *reply = NULL;
    g_autofree gchar *noop = NULL;

    send_raw (imap, "a1 AUTHENTICATE PLAIN\r\n");
    cont = read_line (imap);
    g_assert_cmpstr (cont, ==, "+ ");
    send_raw (imap, "*\r\na2 NOOP\r\n");
    reply = read_line (imap);
    g_assert_true (g_str_has_prefix (reply, "a1 BAD"));
    noop = read_line (imap);
    g_assert_true (g_str_has_prefix (noop, "a2 OK"));
  }
}

/* ID before login is answered by popgate; the session goes on to log in. */
static void
test_id (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *id = NULL;
  g_autofree gchar *ok = NULL;
  g_autofree gchar *login = NULL;
  g_autofree gchar *nil_reply = NULL;

  send_raw (imap, "a1 ID (\"name\" \"test-client\" \"version\" \"1.0\")\r\n");
  id = read_line (imap);
  g_assert_true (g_str_has_prefix (id, "* ID (\"name\" \"popgate\""));
  ok = read_line (imap);
  g_assert_cmpstr (ok, ==, "a1 OK ID completed.");
  send_raw (imap, "a2 ID NIL\r\n");
  g_free (read_line (imap));
  nil_reply = read_line (imap);
  g_assert_true (g_str_has_prefix (nil_reply, "a2 OK"));
  login = raw_login (imap, "a3", fx->user, PASSWORD);
  g_assert_true (g_str_has_prefix (login, "a3 OK"));
  g_assert_true (log_has (fx, "client ID name=test-client"));
}

static void
test_wrong_password (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *reply = raw_login (imap, "a1", fx->user, "not-the-password-w0rd");
  g_autofree gchar *unknown = raw_login (imap, "a2", "nobody-here", PASSWORD);
  g_autofree gchar *noop = NULL;

  g_assert_cmpstr (reply, ==, "a1 NO [AUTHENTICATIONFAILED] Authentication failed.");
  /* An unknown user gets the very same answer. */
  g_assert_cmpstr (unknown, ==, "a2 NO [AUTHENTICATIONFAILED] Authentication failed.");
  send_raw (imap, "a3 NOOP\r\n");
  noop = read_line (imap);
  g_assert_true (g_str_has_prefix (noop, "a3 OK"));
  g_assert_true (log_has (fx, "login failed: user=wrong-password"));
}

static void
test_auth_failure_limit (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);

  for (int i = 0; i < 3; i++)
    {
      g_autofree gchar *tag = g_strdup_printf ("a%d", i);
      g_autofree gchar *reply = raw_login (imap, tag, fx->user, "wrong");
      g_assert_nonnull (strstr (reply, "NO [AUTHENTICATIONFAILED]"));
    }
  {
    g_autofree gchar *bye = read_line (imap);
    g_assert_true (g_str_has_prefix (bye, "* BYE"));
  }
  g_assert_true (log_has (fx, "reason=too many authentication failures"));
}

static void
test_upstream_down (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *reply = raw_login (imap, "a1", fx->user, PASSWORD);

  g_assert_true (g_str_has_prefix (reply, "a1 NO [UNAVAILABLE]"));
}

/* RFC 5530: what a retry will not fix (here the upstream's certificate, signed by a CA
 * popgate does not trust) is NO [SERVERBUG], not [UNAVAILABLE]: clients stop retrying. */
static void
test_upstream_untrusted (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *reply = raw_login (imap, "a1", fx->user, PASSWORD);

  g_test_message ("login, upstream certificate untrusted: %s", reply);
  g_assert_true (g_str_has_prefix (reply, "a1 NO [SERVERBUG]"));
}

/* An over-long pre-auth line is refused; the session goes on; a flood ends it. */
static void
test_long_line (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autoptr (GString) line = g_string_new ("a1 NOOP ");
  g_autofree gchar *bad = NULL;
  g_autofree gchar *ok = NULL;

  g_autofree gchar *bye = NULL;
  g_autoptr (PgTestImap) untagged = connect_popgate (fx);
  g_autoptr (GError) error = NULL;

  while (line->len < 40000)
    g_string_append (line, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
  /* The tagged BAD comes at once, before the line's end is even sent: the client is never
   * left waiting for its reply. */
  send_raw (imap, line->str);
  bad = read_line (imap);
  g_assert_cmpstr (bad, ==, "a1 BAD Command line too long.");
  send_raw (imap, "xxxx\r\na2 NOOP\r\n");
  ok = read_line (imap);
  g_assert_true (g_str_has_prefix (ok, "a2 OK"));

  /* No tag to answer: BYE and a close. */
  send_raw (untagged, line->str + strlen ("a1 NOOP "));
  bye = read_line (untagged);
  g_assert_cmpstr (bye, ==, "* BYE Command line too long.");
  g_assert_null (pg_test_imap_read_line (untagged, &error));
}

/* RFC 2971 ID at its maxima (30 pairs, 1024-octet values: about 32 KiB on one line) is
 * answered by popgate, and the login after it works. */
static void
test_id_maxima (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autoptr (GString) id = g_string_new ("a1 ID (");
  g_autofree gchar *value = g_strnfill (1024, 'v');
  g_autofree gchar *reply = NULL;
  g_autofree gchar *ok = NULL;
  g_autofree gchar *login = NULL;

  for (guint i = 0; i < 30; i++)
    g_string_append_printf (id, "%s\"field-%02u-%s\" \"%s\"", i > 0 ? " " : "", i,
                            "xxxxxxxxxxxxxxxxxxxxx", value);
  g_string_append (id, ")\r\n");
  g_assert_cmpuint (id->len, >, 31000);
  send_raw (imap, id->str);
  reply = read_line (imap);
  g_assert_true (g_str_has_prefix (reply, "* ID (\"name\" \"popgate\""));
  ok = read_line (imap);
  g_assert_cmpstr (ok, ==, "a1 OK ID completed.");
  login = raw_login (imap, "a2", fx->user, PASSWORD);
  g_assert_true (g_str_has_prefix (login, "a2 OK"));
}

/* More than one relay chunk pipelined behind a LOGIN (non-synchronising literals): every
 * command reaches the upstream, in order. */
static void
test_pipelined_login (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autoptr (GString) burst = g_string_new (NULL);
  g_autofree gchar *login = NULL;

  g_string_append_printf (burst, "a1 LOGIN {%zu+}\r\n%s {%zu+}\r\n%s\r\n", strlen (fx->user),
                          fx->user, strlen (PASSWORD), PASSWORD);
  for (guint i = 0; i < 4000; i++)
    g_string_append_printf (burst, "n%u NOOP\r\n", i);
  g_assert_cmpuint (burst->len, >, 2 * 16384);
  send_raw (imap, burst->str);
  login = read_until (imap, "a1 ");
  g_assert_true (g_str_has_prefix (login, "a1 OK"));
  for (guint i = 0; i < 4000; i++)
    {
      g_autofree gchar *prefix = g_strdup_printf ("n%u ", i);
      g_autofree gchar *reply = read_until (imap, prefix);
      g_assert_true (g_str_has_prefix (reply + strlen (prefix), "OK"));
    }
}

/* A literal before login beyond its limit: BAD (synchronising) or a close (LITERAL+). */
static void
test_long_literal (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *bad = NULL;
  g_autofree gchar *bye = NULL;
  g_autofree gchar *bad2 = NULL;

  send_raw (imap, "a1 LOGIN {100000}\r\n");
  bad = read_line (imap);
  g_assert_true (g_str_has_prefix (bad, "a1 BAD"));
  send_raw (imap, "a2 LOGIN {100000+}\r\n");
  bad2 = read_line (imap);
  g_assert_true (g_str_has_prefix (bad2, "a2 BAD"));
  bye = read_line (imap);
  g_assert_true (g_str_has_prefix (bye, "* BYE"));
}

/* Zero-length literals before login ({0} and {0+}) complete at once: the command goes on
 * with the next line (found by fuzz-imap-session: the parser was fed a line while it
 * still waited for the empty literal). */
static void
test_empty_literal (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *cont = NULL;
  g_autofree gchar *list = NULL;
  g_autofree gchar *login = NULL;
  g_autofree gchar *noop = NULL;

  send_raw (imap, "a1 LIST {0}\r\n");
  cont = read_line (imap);
  g_assert_true (g_str_has_prefix (cont, "+"));
  send_raw (imap, " \"\"\r\n");
  /* LIST is not a pre-auth command: parsed whole, then refused. */
  list = read_line (imap);
  g_assert_true (g_str_has_prefix (list, "a1 BAD"));
  /* An empty user name (non-synchronising) is refused as such, not as a parse error. */
  send_raw (imap, "a2 LOGIN {0+}\r\n {0+}\r\n\r\n");
  login = read_line (imap);
  g_assert_cmpstr (login, ==, "a2 BAD Invalid user name or password.");
  send_raw (imap, "a3 NOOP\r\n");
  noop = read_line (imap);
  g_assert_true (g_str_has_prefix (noop, "a3 OK"));
}

static void
test_bad_commands (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgTestImap) imap = connect_popgate (fx);

  for (int i = 0; i < 3; i++)
    {
      g_autofree gchar *cmd = g_strdup_printf ("b%d SELECT INBOX\r\n", i);
      g_autofree gchar *reply = NULL;

      send_raw (imap, cmd);
      reply = read_line (imap);
      g_assert_true (g_str_has_prefix (reply, "b"));
      g_assert_nonnull (strstr (reply, " BAD "));
    }
  {
    g_autofree gchar *bye = read_line (imap);
    g_assert_true (g_str_has_prefix (bye, "* BYE"));
  }
  g_assert_true (log_has (fx, "reason=too many bad commands"));
}

/* The upstream going away reaches the client as "* BYE" and a close. */
static void
test_upstream_bye (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *login = raw_login (imap, "a1", fx->user, PASSWORD);
  g_autofree gchar *bye = NULL;

  g_assert_true (g_str_has_prefix (login, "a1 OK"));
  /* Kill this user's imap process at Dovecot: an upstream disconnect without BYE. */
  g_assert_cmpuint (pg_test_dovecot_signal_user_sessions (upstream, fx->user, SIGKILL), >, 0);
  bye = read_until (imap, "* BYE");
  g_assert_null (pg_test_imap_read_line (imap, &error)); /* then the close */
  g_assert_nonnull (error);
  g_assert_true (log_has (fx, "reason=upstream closed the connection"));
}

/* A mapped login is checked locally and logs in upstream with the mapped credentials;
 * a wrong local password never reaches the upstream. */
static void
test_account_map (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = connect_popgate (fx);
  g_autofree gchar *wrong = raw_login (imap, "a1", MAP_LOCAL_USER, "not-it-w0rd");
  g_autofree gchar *upstream_pw = raw_login (imap, "a2", MAP_LOCAL_USER, PASSWORD);
  g_autofree gchar *ok = raw_login (imap, "a3", MAP_LOCAL_USER, MAP_LOCAL_PASSWORD);
  guint32 exists = 0;

  g_assert_true (g_str_has_prefix (wrong, "a1 NO [AUTHENTICATIONFAILED]"));
  g_assert_true (g_str_has_prefix (upstream_pw, "a2 NO [AUTHENTICATIONFAILED]"));
  g_assert_true (g_str_has_prefix (ok, "a3 OK [CAPABILITY "));
  g_assert_true (pg_test_imap_select (imap, "INBOX", FALSE, NULL, &exists, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (exists, ==, 1);
  g_assert_true (pg_test_imap_logout (imap, &error));
  g_assert_no_error (error);
  g_assert_true (
      log_has (fx, "imap session started: user=" MAP_LOCAL_USER " upstream_user=account-map"));
}

/* --- in process: an off-loopback client and the session registry ------------------------- */

typedef struct
{
  GMainContext *context;          /* owned */
  GMainLoop *loop;                /* owned */
  PgConfig *config;               /* owned */
  GSocketConnection *server_side; /* owned */
  gboolean quit;
} PgTestInProcess;

static gpointer
in_process_thread (gpointer user_data)
{
  PgTestInProcess *ip = user_data;
  g_autoptr (PgConn) conn = NULL;

  g_main_context_push_thread_default (ip->context);
  conn = pg_conn_new (PG_FRONTEND_IMAP, ip->config, G_IO_STREAM (ip->server_side));
  pg_imap_session_start (conn, NULL);
  g_main_loop_run (ip->loop);
  pg_conn_abort (conn);
  while (g_main_context_pending (ip->context))
    g_main_context_iteration (ip->context, FALSE);
  g_main_context_pop_thread_default (ip->context);
  return NULL;
}

typedef struct
{
  guint n_live;
  PgImapState state;
  guint64 commands;
  gboolean tls;
  gboolean done;
  GMutex lock;
  GCond cond;
} PgTestSnapshot;

static void
snapshot_info_cb (const PgImapSessionInfo *info, gpointer user_data)
{
  PgTestSnapshot *snap = user_data;

  snap->state = info->state;
  snap->commands = info->commands;
  snap->tls = info->tls;
}

static gboolean
snapshot_cb (gpointer user_data)
{
  PgTestSnapshot *snap = user_data;

  g_mutex_lock (&snap->lock);
  snap->n_live = pg_imap_session_get_n_live ();
  pg_imap_session_foreach (snapshot_info_cb, snap);
  snap->done = TRUE;
  g_cond_signal (&snap->cond);
  g_mutex_unlock (&snap->lock);
  return G_SOURCE_REMOVE;
}

/* Read the registry on the session's own thread. */
static void
snapshot (PgTestInProcess *ip, PgTestSnapshot *snap)
{
  gint64 deadline = g_get_monotonic_time () + 10 * G_TIME_SPAN_SECOND;

  g_mutex_lock (&snap->lock);
  snap->done = FALSE;
  g_main_context_invoke (ip->context, snapshot_cb, snap);
  while (!snap->done)
    g_assert_true (g_cond_wait_until (&snap->cond, &snap->lock, deadline));
  g_mutex_unlock (&snap->lock);
}

typedef struct
{
  PgTestInProcess *ip;
  PgTestSnapshot *snap;
} PgTestGone;

static gboolean
session_gone_cb (gpointer user_data)
{
  PgTestGone *gone = user_data;

  snapshot (gone->ip, gone->snap);
  return gone->snap->n_live == 0;
}

static gchar *
stream_read_line (GDataInputStream *in)
{
  g_autoptr (GError) error = NULL;
  gchar *line = g_data_input_stream_read_line (in, NULL, NULL, &error);

  g_assert_no_error (error);
  g_assert_nonnull (line);
  if (strlen (line) > 0 && line[strlen (line) - 1] == '\r')
    line[strlen (line) - 1] = '\0';
  return line;
}

static void
stream_write (GSocketConnection *conn, const char *text)
{
  g_autoptr (GError) error = NULL;

  g_assert_true (g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (conn)),
                                            text, strlen (text), NULL, NULL, &error));
  g_assert_no_error (error);
}

/* Without TLS and off loopback, LOGIN and AUTHENTICATE are refused (LOGINDISABLED), and
 * the session is visible in the registry. */
static void
test_off_loopback (void)
{
  g_autoptr (GError) error = NULL;
  PgTestInProcess ip = { 0 };
  PgTestSnapshot snap = { 0 };
  int fds[2];
  g_autoptr (GSocket) server_socket = NULL;
  g_autoptr (GSocket) client_socket = NULL;
  g_autoptr (GSocketConnection) client = NULL;
  g_autoptr (GDataInputStream) in = NULL;
  GThread *thread;
  static const char config_text[] = "[upstream]\nhost = 127.0.0.1\nport = 1\ntls = none\n"
                                    "[imap]\nlisten = 127.0.0.1:1143\n"
                                    "[limits]\nauth_failure_delay = 0\n";

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  server_socket = g_socket_new_from_fd (fds[0], &error);
  g_assert_no_error (error);
  client_socket = g_socket_new_from_fd (fds[1], &error);
  g_assert_no_error (error);
  ip.config = pg_config_load_data (config_text, strlen (config_text), "test", &error);
  g_assert_no_error (error);
  ip.context = g_main_context_new ();
  ip.loop = g_main_loop_new (ip.context, FALSE);
  ip.server_side = g_socket_connection_factory_create_connection (server_socket);
  client = g_socket_connection_factory_create_connection (client_socket);
  in = g_data_input_stream_new (g_io_stream_get_input_stream (G_IO_STREAM (client)));
  g_data_input_stream_set_newline_type (in, G_DATA_STREAM_NEWLINE_TYPE_LF);
  g_mutex_init (&snap.lock);
  g_cond_init (&snap.cond);
  thread = g_thread_new ("imap-session", in_process_thread, &ip);

  {
    g_autofree gchar *greeting = stream_read_line (in);
    g_assert_true (g_str_has_prefix (greeting, "* OK [CAPABILITY "));
    g_assert_nonnull (strstr (greeting, "LOGINDISABLED"));
    g_assert_null (strstr (greeting, "AUTH=PLAIN"));
  }
  stream_write (client, "a1 LOGIN user secret-w0rd\r\n");
  {
    g_autofree gchar *reply = stream_read_line (in);
    g_assert_true (g_str_has_prefix (reply, "a1 NO [PRIVACYREQUIRED]"));
  }
  stream_write (client, "a2 AUTHENTICATE PLAIN AHVzZXIAc2VjcmV0\r\n");
  {
    g_autofree gchar *reply = stream_read_line (in);
    g_assert_true (g_str_has_prefix (reply, "a2 NO [PRIVACYREQUIRED]"));
  }
  stream_write (client, "a3 CAPABILITY\r\n");
  {
    g_autofree gchar *caps = stream_read_line (in);
    g_autofree gchar *ok = stream_read_line (in);
    g_assert_nonnull (strstr (caps, "LOGINDISABLED"));
    g_assert_true (g_str_has_prefix (ok, "a3 OK"));
  }

  snapshot (&ip, &snap);
  g_assert_cmpuint (snap.n_live, ==, 1);
  g_assert_cmpint (snap.state, ==, PG_IMAP_STATE_PREAUTH);
  g_assert_cmpuint (snap.commands, ==, 3);
  g_assert_false (snap.tls);

  stream_write (client, "a4 LOGOUT\r\n");
  {
    g_autofree gchar *bye = stream_read_line (in);
    g_autofree gchar *ok = stream_read_line (in);
    g_assert_true (g_str_has_prefix (bye, "* BYE"));
    g_assert_true (g_str_has_prefix (ok, "a4 OK"));
  }
  /* The session leaves the registry once the connection is closed. */
  {
    PgTestGone gone = { &ip, &snap };
    g_assert_true (pg_test_wait_until (session_gone_cb, &gone, 10000));
  }
  g_main_loop_quit (ip.loop);
  g_thread_join (thread);
  g_object_unref (ip.server_side);
  g_main_loop_unref (ip.loop);
  g_main_context_unref (ip.context);
  pg_config_unref (ip.config);
  g_mutex_clear (&snap.lock);
  g_cond_clear (&snap.cond);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  static const char *const strict[] = { "limits", "max_bad_commands", "3", NULL };
  static const char *const down[] = { "upstream", "port", "1", NULL };
  static const char *const tls[] = { "upstream", "tls", "implicit", NULL };
  static const char *const untrusted[]
      = { "upstream", "tls", "starttls", "upstream", "ca_file", "@OWN_CA@", NULL };
  static const char *const mapped[]
      = { "imap", "account_map", "@MAP@", "limits", "max_auth_failures", "5", NULL };
  int rc;
  static const struct
  {
    const char *path;
    const char *const *settings;
    void (*func) (Fixture *, gconstpointer);
  } tests[] = {
    { "/popgate/imap/session", NULL, test_session },
    { "/popgate/imap/idle", NULL, test_idle },
    { "/popgate/imap/imaplib", NULL, test_imaplib },
    { "/popgate/imap/starttls-injection", NULL, test_starttls_injection },
    { "/popgate/imap/authenticate-plain", NULL, test_authenticate_plain },
    { "/popgate/imap/id", NULL, test_id },
    { "/popgate/imap/wrong-password", NULL, test_wrong_password },
    { "/popgate/imap/auth-failure-limit", NULL, test_auth_failure_limit },
    { "/popgate/imap/upstream-down", down, test_upstream_down },
    { "/popgate/imap/upstream-untrusted", untrusted, test_upstream_untrusted },
    { "/popgate/imap/long-line", NULL, test_long_line },
    { "/popgate/imap/long-literal", NULL, test_long_literal },
    { "/popgate/imap/empty-literal", NULL, test_empty_literal },
    { "/popgate/imap/bad-commands", strict, test_bad_commands },
    { "/popgate/imap/upstream-bye", NULL, test_upstream_bye },
    { "/popgate/imap/account-map", mapped, test_account_map },
    { "/popgate/imap/large-transfer", NULL, test_large_transfer },
    { "/popgate/imap/literal-lookalikes", NULL, test_literal_lookalikes },
    { "/popgate/imap/large-transfer-tls", tls, test_large_transfer },
    { "/popgate/imap/capabilities", NULL, test_capabilities },
    { "/popgate/imap/id-maxima", NULL, test_id_maxima },
    { "/popgate/imap/pipelined-login", NULL, test_pipelined_login },
    { "/popgate/imap/tls-close", NULL, test_tls_close },
    { "/popgate/imap/session-log", NULL, test_session_log },
    { "/popgate/imap/compress", NULL, test_compress },
    { "/popgate/imap/compress-bye", NULL, test_compress_bye },
  };

  g_test_init (&argc, &argv, NULL);
  pg_log_init (PG_LOG_LEVEL_WARNING);
  g_test_add_func ("/popgate/imap/off-loopback", test_off_loopback);
  /* COMPRESS=DEFLATE upstream: what popgate must not pass on. */
  upstream = pg_test_dovecot_new (&(PgTestDovecotOptions){ .zlib = TRUE }, &error);
  g_assert_no_error (error);
  /* Every test's user exists before Dovecot starts: its passwd-file cache goes by mtime. */
  for (gsize i = 0; i < G_N_ELEMENTS (tests); i++)
    {
      g_autofree gchar *user = g_ascii_strdown (strrchr (tests[i].path, '/') + 1, -1);
      if (!pg_test_dovecot_add_user (upstream, user,
                                     tests[i].func == test_imaplib || tests[i].func == test_compress
                                             || tests[i].func == test_compress_bye
                                         ? PASSWORD_ASCII
                                         : PASSWORD,
                                     &error))
        g_error ("%s", error->message);
      g_test_add (tests[i].path, Fixture, tests[i].settings, fixture_setup, tests[i].func,
                  fixture_teardown);
    }
  if (!pg_test_dovecot_start (upstream, &error))
    g_error ("cannot start Dovecot: %s", error->message);

  rc = g_test_run ();
  pg_test_dovecot_free (upstream);
  return rc;
}
