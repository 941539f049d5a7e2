/* popgate — limits through the real binary: sessions in total and per address, the
 * failed-auth delay and the disconnect after max_auth_failures, command line length,
 * the pipelined input buffer, the bad-command count, the output queue for a client that
 * does not read, the pre-auth and idle timers, and the upstream's line and literal limits.
 *
 * Where a limit protects memory we watch popgate's VmRSS: a client that floods or never
 * reads must not make it grow with what it sends or with the size of a message.
 * (tests/test-net.c covers the same session limits on the in-process server.)
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-peer.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include "popgate/pg-limits.h"

#include <signal.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

static PgTestDovecot *upstream = NULL;

#define PASSWORD "limits-pass-7"
/* How much popgate's resident memory may grow while a client floods it or refuses to
 * read. Without the limits the floods below would add hundreds of megabytes; with them
 * the growth is a few buffers, but allocators and ASan's quarantine add noise. */
#define RSS_GROWTH_BOUND_KB (24 * 1024)
/* The same for the IMAP relay's 20 MB FETCH: far below the message, which a relay without
 * back-pressure would hold whole (the client's queue and the upstream buffer are 64 KiB
 * each). */
#define RELAY_RSS_GROWTH_BOUND_KB (8 * 1024)

/* --- helpers ------------------------------------------------------------------------------ */

static gchar *
test_user_name (void)
{
  const char *path = g_test_get_path ();
  return g_ascii_strdown (strrchr (path, '/') + 1, -1);
}

/* settings: NULL-terminated triples group, key, value. */
static PgTestPopgate *
start_popgate (PgTestDovecot *dovecot, guint16 peer_port, const char *const *settings)
{
  g_autoptr (GError) error = NULL;
  PgTestPopgate *popgate = pg_test_popgate_new (dovecot, "none", &error);

  g_assert_no_error (error);
  if (dovecot == NULL)
    {
      pg_test_popgate_set_plain_upstream (popgate, peer_port);
      pg_test_popgate_set (popgate, "upstream", "timeout", "5s");
    }
  pg_test_popgate_set (popgate, "limits", "auth_failure_delay", "10ms");
  pg_test_popgate_set (popgate, "limits", "shutdown_timeout", "5s");
  for (gsize i = 0; settings != NULL && settings[i] != NULL; i += 3)
    pg_test_popgate_set (popgate, settings[i], settings[i + 1], settings[i + 2]);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  return popgate;
}

static void
stop_popgate (PgTestPopgate *popgate)
{
  g_autofree gchar *log = pg_test_popgate_read_log (popgate);

  g_assert_null (strstr (log, PASSWORD));
  pg_test_popgate_assert_clean_exit (popgate);
  pg_test_popgate_free (popgate);
}

static PgTestPop3 *
pop3_connect (PgTestPopgate *popgate)
{
  g_autoptr (GError) error = NULL;
  PgTestPop3 *pop3 = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, &error);

  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK"));
  return pop3;
}

static gchar *
read_line (PgTestPop3 *pop3)
{
  g_autoptr (GError) error = NULL;
  gchar *line = pg_test_pop3_read_line (pop3, &error);

  g_assert_no_error (error);
  g_assert_nonnull (line);
  return line;
}

/* popgate's resident set in KiB, from /proc/PID/status. */
static guint64
popgate_rss_kb (PgTestPopgate *popgate)
{
  g_autofree gchar *path
      = g_strdup_printf ("/proc/%d/status", (int) pg_test_popgate_get_pid (popgate));
  g_autofree gchar *status = NULL;
  const char *line;

  g_assert_true (g_file_get_contents (path, &status, NULL, NULL));
  line = strstr (status, "VmRSS:");
  g_assert_nonnull (line);
  return g_ascii_strtoull (line + strlen ("VmRSS:"), NULL, 10);
}

typedef struct
{
  PgTestPopgate *popgate;
  guint64 limit_kb; /* RSS above this is a failure */
  guint64 peak_kb;
} RssWatch;

static gboolean
rss_exceeded_cb (gpointer user_data)
{
  RssWatch *watch = user_data;
  guint64 rss = popgate_rss_kb (watch->popgate);

  watch->peak_kb = MAX (watch->peak_kb, rss);
  return rss > watch->limit_kb;
}

/* Watch popgate's RSS for `ms` milliseconds; it must stay within baseline + bound. */
static void
assert_rss_bounded_by (PgTestPopgate *popgate, guint64 baseline_kb, guint64 bound_kb, guint ms,
                       const char *what)
{
  RssWatch watch = { popgate, baseline_kb + bound_kb, 0 };
  gboolean exceeded = pg_test_wait_until (rss_exceeded_cb, &watch, ms);

  g_test_message ("%s: RSS %" G_GUINT64_FORMAT " KiB before, peak %" G_GUINT64_FORMAT " KiB", what,
                  baseline_kb, watch.peak_kb);
  g_assert_false (exceeded);
}

static void
assert_rss_bounded (PgTestPopgate *popgate, guint64 baseline_kb, guint ms, const char *what)
{
  assert_rss_bounded_by (popgate, baseline_kb, RSS_GROWTH_BOUND_KB, ms, what);
}

/* A raw non-blocking client for floods: the POP3 helper's blocking writes would stop the
 * test as soon as popgate (rightly) stops reading. */
static GSocket *
raw_connect (PgTestPopgate *popgate)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address = g_inet_socket_address_new (loopback, popgate->pop3_port);
  GSocket *socket
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &error);

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (g_socket_connect (socket, address, NULL, &error), error);
  g_socket_set_blocking (socket, FALSE);
  return socket;
}

/* Send `pattern` repeatedly without reading until `max` bytes went out or popgate stopped
 * taking them for a while (its buffers and the kernel's are full). Returns bytes sent. */
static guint64
flood (GSocket *socket, const char *pattern, guint64 max)
{
  g_autoptr (GString) chunk = g_string_new (NULL);
  guint64 sent = 0;

  while (chunk->len < 64 * 1024)
    g_string_append (chunk, pattern);
  while (sent < max)
    {
      g_autoptr (GError) error = NULL;
      gssize n;

      /* 500 ms without room: popgate is not reading (back-pressure works). */
      if (!g_socket_condition_timed_wait (socket, G_IO_OUT, 500 * 1000, NULL, NULL))
        break;
      n = g_socket_send (socket, chunk->str, chunk->len, NULL, &error);
      if (n < 0)
        {
          if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            continue;
          break; /* popgate closed on us: also bounded */
        }
      sent += (guint64) n;
    }
  return sent;
}

/* --- session limits ------------------------------------------------------------------------ */

static gboolean
accepts_again_cb (gpointer user_data)
{
  PgTestPopgate *popgate = user_data;
  g_autoptr (PgTestPop3) pop3
      = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, NULL);
  return pop3 != NULL && g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK");
}

static void
test_sessions_total (void)
{
  static const char *const settings[] = { "limits", "max_sessions", "3", NULL };
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  PgTestPop3 *sessions[3];

  for (guint i = 0; i < 3; i++)
    sessions[i] = pop3_connect (popgate);
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (PgTestPop3) refused
        = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, &error);
    /* Refused with a reason in POP3's terms, or closed before the line arrived. */
    if (refused != NULL)
      {
        g_assert_true (g_str_has_prefix (pg_test_pop3_get_greeting (refused), "-ERR [SYS/TEMP]"));
        g_assert_true (pg_test_pop3_wait_closed (refused));
      }
  }
  /* The refused one is not counted: the three are still served. */
  for (guint i = 0; i < 3; i++)
    PG_TEST_POP3_ASSERT_REPLY (sessions[i], "NOOP", "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (sessions[0], "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (sessions[0]));
  pg_test_pop3_free (sessions[0]);
  /* A slot is free again once popgate has seen the close. */
  g_assert_true (pg_test_wait_until (accepts_again_cb, popgate, 10000));
  pg_test_pop3_free (sessions[1]);
  pg_test_pop3_free (sessions[2]);
  stop_popgate (popgate);
}

static void
test_sessions_per_address (void)
{
  static const char *const settings[] = { "limits", "max_sessions_per_address", "2", NULL };
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) a = pop3_connect (popgate);
  g_autoptr (PgTestPop3) b = pop3_connect (popgate);
  g_autoptr (PgTestPop3) c = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, NULL);
  g_autoptr (PgTestPop3) other = NULL;

  if (c != NULL)
    {
      g_assert_true (g_str_has_prefix (pg_test_pop3_get_greeting (c), "-ERR [SYS/TEMP]"));
      g_assert_true (pg_test_pop3_wait_closed (c));
    }
  /* Another client address still gets in. */
  other = pg_test_pop3_connect_from (popgate->host, popgate->pop3_port, "127.0.0.2", &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (pg_test_pop3_get_greeting (other), "+OK"));
  PG_TEST_POP3_ASSERT_REPLY (a, "CAPA", "+OK");
  g_clear_pointer (&a, pg_test_pop3_free);
  g_clear_pointer (&b, pg_test_pop3_free);
  g_clear_pointer (&other, pg_test_pop3_free);
  stop_popgate (popgate);
}

/* --- authentication ------------------------------------------------------------------------ */

static void
test_auth_failure_delay (void)
{
  static const char *const settings[]
      = { "limits", "auth_failure_delay", "700ms", "limits", "max_auth_failures", "3", NULL };
  g_autofree gchar *user = test_user_name ();
  g_autofree gchar *user_cmd = g_strdup_printf ("USER %s", user);
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);

  for (guint i = 0; i < 3; i++)
    {
      g_autofree gchar *reply = NULL;
      gint64 start, ms;

      PG_TEST_POP3_ASSERT_REPLY (pop3, user_cmd, "+OK");
      start = g_get_monotonic_time ();
      reply = pg_test_pop3_cmd (pop3, "PASS wrong-password");
      ms = (g_get_monotonic_time () - start) / 1000;
      g_test_message ("failure %u answered after %" G_GINT64_FORMAT " ms", i + 1, ms);
      g_assert_cmpstr (reply, ==, "-ERR [AUTH] Authentication failed.");
      /* Never faster than the delay; a guesser gets one try per delay. */
      g_assert_cmpint (ms, >=, 690);
    }
  /* The third failure (max_auth_failures = 3) ends the session. */
  {
    g_autofree gchar *last = read_line (pop3);
    g_assert_true (g_str_has_prefix (last, "-ERR [AUTH] Too many"));
  }
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  /* A correct password in a new session still works (no lockout of the account). */
  g_clear_pointer (&pop3, pg_test_pop3_free);
  pop3 = pop3_connect (popgate);
  {
    g_autoptr (GError) error = NULL;
    PG_TEST_ASSERT_OK (pg_test_pop3_login (pop3, user, PASSWORD, NULL, &error), error);
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  stop_popgate (popgate);
}

/* --- input limits ---------------------------------------------------------------------------- */

static void
test_command_line_length (void)
{
  PgTestPopgate *popgate = start_popgate (upstream, 0, NULL);
  g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
  g_autofree gchar *long_line = g_strnfill (PG_POP3_MAX_COMMAND_LINE + 1, 'A');
  g_autofree gchar *huge = g_strnfill (PG_POP3_INPUT_BUFFER * 3, 'B');
  g_autoptr (GError) error = NULL;

  /* Just over the command limit: refused, the session goes on. */
  PG_TEST_POP3_ASSERT_REPLY (pop3, long_line, "-ERR");
  PG_TEST_POP3_ASSERT_REPLY (pop3, "CAPA", "+OK");
  {
    g_autoptr (GBytes) capa = pg_test_pop3_read_multiline (pop3, &error);
    g_assert_no_error (error);
  }
  /* A line that does not even fit the input buffer: -ERR for each, and a flood of them
   * (PG_POP3_MAX_LONG_LINES in a row) ends the session. */
  for (guint i = 0; i < PG_POP3_MAX_LONG_LINES; i++)
    {
      g_autofree gchar *reply = NULL;
      g_assert_true (pg_test_pop3_send (pop3, huge, strlen (huge), &error));
      g_assert_no_error (error);
      g_assert_true (pg_test_pop3_send (pop3, "\r\n", 2, &error));
      g_assert_no_error (error);
      reply = read_line (pop3);
      g_assert_cmpstr (reply, ==, "-ERR Command line too long.");
    }
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  stop_popgate (popgate);
}

static void
test_bad_commands (void)
{
  static const char *const settings[] = { "limits", "max_bad_commands", "4", NULL };
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);

  for (guint i = 0; i < 3; i++)
    PG_TEST_POP3_ASSERT_REPLY (pop3, "XYZZY", "-ERR Unknown command");
  /* Good commands do not reset the count of bad ones. */
  PG_TEST_POP3_ASSERT_REPLY (pop3, "USER someone", "+OK");
  {
    g_autofree gchar *closing = NULL;
    PG_TEST_POP3_ASSERT_REPLY (pop3, "PLUGH", "-ERR Unknown command");
    closing = read_line (pop3);
    g_assert_cmpstr (closing, ==, "-ERR Too many bad commands, closing");
  }
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  stop_popgate (popgate);
}

/* A client pipelines megabytes of commands and never reads the replies. CAPA's reply is
 * twenty times its command: without back-pressure on both sides popgate would queue
 * hundreds of megabytes. It must stop reading instead. */
static void
test_pipelined_flood (void)
{
  PgTestPopgate *popgate = start_popgate (upstream, 0, NULL);
  g_autoptr (GSocket) socket = raw_connect (popgate);
  guint64 baseline = popgate_rss_kb (popgate);
  guint64 sent = flood (socket, "CAPA\r\n", 64 * 1024 * 1024);

  g_test_message ("flood: %" G_GUINT64_FORMAT " bytes of CAPA taken before popgate stopped "
                  "reading",
                  sent);
  /* popgate stopped taking input long before 64 MB. */
  g_assert_cmpuint (sent, <, 32 * 1024 * 1024);
  assert_rss_bounded (popgate, baseline, 1000, "pipelined flood");
  g_socket_close (socket, NULL);
  stop_popgate (popgate);
}

/* RETR of a 50 MB message by a client that never reads: popgate must pause reading the
 * upstream, not buffer the message. Then the client reads it all, byte-exact. */
static void
test_slow_reader (void)
{
  g_autofree gchar *user = test_user_name ();
  g_autoptr (GString) big = g_string_new ("Subject: fifty\r\n\r\n");
  g_autofree gchar *line = g_strnfill (998, 'z');
  g_autofree gchar *user_cmd = g_strdup_printf ("USER %s\r\nPASS %s\r\nRETR 1\r\n", user, PASSWORD);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;
  PgTestPopgate *popgate;
  guint64 baseline;

  while (big->len < 50 * 1000 * 1000)
    {
      g_string_append (big, line);
      g_string_append (big, "\r\n");
    }
  PG_TEST_ASSERT_OK (pg_test_dovecot_append (upstream, user, "INBOX", big->str, big->len, &error),
                     error);
  popgate = start_popgate (upstream, 0, NULL);
  pop3 = pop3_connect (popgate);
  baseline = popgate_rss_kb (popgate);
  PG_TEST_ASSERT_OK (pg_test_pop3_send (pop3, user_cmd, strlen (user_cmd), &error), error);
  /* Dovecot serves 50 MB in well under a second: two seconds of watching is plenty. */
  assert_rss_bounded (popgate, baseline, 2000, "RETR 50 MB, client not reading");
  {
    g_autofree gchar *l1 = read_line (pop3);
    g_autofree gchar *l2 = read_line (pop3);
    g_autofree gchar *status = read_line (pop3);
    g_autoptr (GBytes) body = NULL;
    g_assert_true (g_str_has_prefix (l1, "+OK"));
    g_assert_true (g_str_has_prefix (l2, "+OK"));
    g_assert_true (g_str_has_prefix (status, "+OK"));
    body = pg_test_pop3_read_multiline (pop3, &error);
    g_assert_no_error (error);
    g_assert_cmpuint (g_bytes_get_size (body), ==, big->len);
    g_assert_cmpmem (g_bytes_get_data (body, NULL), big->len, big->str, big->len);
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  stop_popgate (popgate);
}

/* The IMAP relay's back-pressure: a client that sends UID FETCH for a 20 MB message and
 * then does not read makes popgate stop reading the upstream (its RSS stays far below the
 * message); reading it in small pieces afterwards, with RSS sampled all along, gets every
 * octet of it, and the session goes on. */
#define RELAY_MESSAGE_OCTETS (20 * 1000 * 1000)
#define RELAY_READ_PIECE 4096

static void
test_relay_slow_reader (void)
{
  g_autofree gchar *user = test_user_name ();
  g_autoptr (GString) big = g_string_new ("Subject: twenty\r\n\r\n");
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) uids = NULL;
  g_autoptr (GByteArray) body = g_byte_array_new ();
  g_autofree gchar *fetch = NULL;
  g_autofree gchar *header = NULL;
  g_autofree gchar *expected_header = NULL;
  g_autofree gchar *close_paren = NULL;
  g_autofree gchar *tagged = NULL;
  PgTestPopgate *popgate;
  guint64 baseline;
  RssWatch watch;
  guint32 uid;

  /* Lines that look like IMAP responses too: the relay must not take them for any. */
  for (guint i = 0; big->len < RELAY_MESSAGE_OCTETS; i++)
    if (i % 101 == 0)
      g_string_append_printf (big, "* BYE not really %u\r\n", i);
    else
      g_string_append_printf (big, "%u %0990u\r\n", i, i);
  PG_TEST_ASSERT_OK (pg_test_dovecot_append (upstream, user, "INBOX", big->str, big->len, &error),
                     error);
  popgate = start_popgate (upstream, 0, NULL);
  imap = pg_test_imap_connect (popgate->host, popgate->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, user, PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error), error);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 1);
  uid = g_array_index (uids, guint32, 0);

  baseline = popgate_rss_kb (popgate);
  fetch = g_strdup_printf ("f1 UID FETCH %u BODY.PEEK[]\r\n", uid);
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, fetch, strlen (fetch), &error), error);
  /* Dovecot serves 20 MB in well under a second: two seconds of watching is plenty. */
  assert_rss_bounded_by (popgate, baseline, RELAY_RSS_GROWTH_BOUND_KB, 2000,
                         "relay UID FETCH 20 MB, client not reading");

  header = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  expected_header = g_strdup_printf (" BODY[] {%" G_GSIZE_FORMAT "}", big->len);
  g_assert_true (g_str_has_prefix (header, "* 1 FETCH ("));
  g_assert_true (g_str_has_suffix (header, expected_header));
  watch = (RssWatch){ popgate, baseline + RELAY_RSS_GROWTH_BOUND_KB, 0 };
  while (body->len < big->len)
    {
      PG_TEST_ASSERT_OK (pg_test_imap_read_bytes (
                             imap, body, MIN (RELAY_READ_PIECE, big->len - body->len), &error),
                         error);
      /* Every 256 pieces a look at popgate: the queue refills as the client reads. */
      if (body->len % (256 * RELAY_READ_PIECE) == 0)
        g_assert_false (rss_exceeded_cb (&watch));
    }
  g_test_message ("relay FETCH read in %u-octet pieces: RSS peak %" G_GUINT64_FORMAT
                  " KiB, %" G_GUINT64_FORMAT " KiB before",
                  RELAY_READ_PIECE, watch.peak_kb, baseline);
  g_assert_cmpmem (body->data, body->len, big->str, big->len);
  close_paren = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (close_paren, ==, ")");
  tagged = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (tagged, "f1 OK "));
  PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
  stop_popgate (popgate);
}

/* The other direction: the upstream stops reading (the user's imap process is stopped)
 * while the client sends a 40 MB APPEND literal, more than every socket buffer on the way
 * holds. popgate stops reading the client once its queue to the upstream is past the high
 * water, so the client is stuck before its literal is out and popgate's RSS stays bounded;
 * once the upstream goes on, the APPEND completes and the message reads back whole. */
#define RELAY_APPEND_OCTETS (40 * 1000 * 1000)

static void
test_relay_upstream_stopped (void)
{
  g_autofree gchar *user = test_user_name ();
  g_autoptr (GString) big = g_string_new ("Subject: forty\r\n\r\n");
  g_autofree gchar *line = g_strnfill (998, 'u');
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = NULL;
  g_autoptr (GArray) uids = NULL;
  g_autoptr (GBytes) body = NULL;
  g_autofree gchar *append = NULL;
  g_autofree gchar *cont = NULL;
  g_autofree gchar *tagged = NULL;
  PgTestPopgate *popgate;
  guint64 baseline;
  gssize sent;

  while (big->len < RELAY_APPEND_OCTETS)
    {
      g_string_append (big, line);
      g_string_append (big, "\r\n");
    }
  popgate = start_popgate (upstream, 0, NULL);
  imap = pg_test_imap_connect (popgate->host, popgate->imap_port, NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, user, PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", FALSE, NULL, NULL, &error), error);
  baseline = popgate_rss_kb (popgate);
  append = g_strdup_printf ("a1 APPEND INBOX {%" G_GSIZE_FORMAT "}\r\n", big->len);
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, append, strlen (append), &error), error);
  cont = pg_test_imap_read_line (imap, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (cont, "+"));

  g_assert_cmpuint (pg_test_dovecot_signal_user_sessions (upstream, user, SIGSTOP), >=, 1);
  sent = pg_test_imap_send_until_stuck (imap, big->str, big->len, 1000, &error);
  g_assert_no_error (error);
  g_test_message ("APPEND to a stopped upstream: %" G_GSSIZE_FORMAT " of %" G_GSIZE_FORMAT
                  " octets sent before the client was stuck",
                  sent, big->len);
  g_assert_cmpint (sent, <, (gssize) big->len);
  assert_rss_bounded_by (popgate, baseline, RELAY_RSS_GROWTH_BOUND_KB, 1000,
                         "relay APPEND 40 MB, upstream not reading");
  g_assert_cmpuint (pg_test_dovecot_signal_user_sessions (upstream, user, SIGCONT), >=, 1);

  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, big->str + sent, big->len - (gsize) sent, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_imap_send_raw (imap, "\r\n", 2, &error), error);
  for (guint i = 0; i < 100 && (tagged == NULL || !g_str_has_prefix (tagged, "a1 ")); i++)
    {
      g_free (tagged);
      tagged = pg_test_imap_read_line (imap, &error);
      g_assert_no_error (error);
    }
  g_assert_true (g_str_has_prefix (tagged, "a1 OK"));
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (uids->len, ==, 1);
  body = pg_test_imap_fetch_body (imap, g_array_index (uids, guint32, 0), &error);
  g_assert_no_error (error);
  g_assert_cmpmem (g_bytes_get_data (body, NULL), g_bytes_get_size (body), big->str, big->len);
  PG_TEST_ASSERT_OK (pg_test_imap_logout (imap, &error), error);
  stop_popgate (popgate);
}

/* --- timers ------------------------------------------------------------------------------- */

static void
test_preauth_timeout (void)
{
  static const char *const settings[] = { "limits", "preauth_timeout", "600ms", NULL };
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (PgTestPop3) silent = pop3_connect (popgate);
  g_autoptr (PgTestPop3) chatty = pop3_connect (popgate);
  gint64 start = g_get_monotonic_time ();

  /* Only reads restart the timer: the silent client goes, with a reason. */
  {
    g_autofree gchar *bye = read_line (silent);
    gint64 ms = (g_get_monotonic_time () - start) / 1000;
    g_test_message ("pre-auth timeout after %" G_GINT64_FORMAT " ms: %s", ms, bye);
    g_assert_cmpstr (bye, ==, "-ERR Disconnected for inactivity.");
    g_assert_cmpint (ms, >=, 550);
    g_assert_cmpint (ms, <, 10000);
  }
  g_assert_true (pg_test_pop3_wait_closed (silent));
  g_clear_pointer (&chatty, pg_test_pop3_free);
  stop_popgate (popgate);
}

/* Issue 19 item 7: preauth_timeout is a deadline from the connect, not an idle timer. A
 * client that keeps talking (a CAPA round trip after another, so every read would restart
 * an idle timer) without logging in is cut at the deadline: it must be gone long before it
 * completes TRICKLE_ROUNDS rounds (bounded by a watchdog). */
#define TRICKLE_ROUNDS 1000000
#define TRICKLE_WATCHDOG_MS 60000

static void
test_preauth_deadline_pop3 (void)
{
  static const char *const settings[] = { "limits", "preauth_timeout", "1s", NULL };
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
  gint64 watchdog = g_get_monotonic_time () + TRICKLE_WATCHDOG_MS * 1000;
  g_autofree gchar *last = NULL;
  guint rounds = 0;

  for (; rounds < TRICKLE_ROUNDS && g_get_monotonic_time () < watchdog; rounds++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *status = pg_test_pop3_command (pop3, "CAPA", &error);
      g_autoptr (GBytes) lines = NULL;

      if (status == NULL || !g_str_has_prefix (status, "+OK"))
        {
          last = g_steal_pointer (&status);
          break;
        }
      lines = pg_test_pop3_read_multiline (pop3, &error);
      if (lines == NULL)
        break;
    }
  g_test_message ("pre-auth deadline: cut after %u CAPA rounds: %s", rounds,
                  last != NULL ? last : "(closed)");
  g_assert_cmpuint (rounds, <, TRICKLE_ROUNDS);
  g_assert_true (g_get_monotonic_time () < watchdog);
  g_assert_cmpstr (last, ==, "-ERR Disconnected: no login within the time allowed.");
  g_assert_true (pg_test_pop3_wait_closed (pop3));
  stop_popgate (popgate);
}

/* The same for the IMAP front end: NOOP after NOOP before login. */
static void
test_preauth_deadline_imap (void)
{
  static const char *const settings[] = { "limits", "preauth_timeout", "1s", NULL };
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap
      = pg_test_imap_connect (popgate->host, popgate->imap_port, NULL, &error);
  gint64 watchdog = g_get_monotonic_time () + TRICKLE_WATCHDOG_MS * 1000;
  g_autofree gchar *bye = NULL;
  guint rounds = 0;

  g_assert_no_error (error);
  for (; rounds < TRICKLE_ROUNDS && g_get_monotonic_time () < watchdog; rounds++)
    {
      g_autoptr (GError) local = NULL;
      g_autofree gchar *reply = pg_test_imap_command (imap, "NOOP", &local);

      if (reply == NULL || strstr (reply, "* BYE") != NULL)
        {
          bye = g_steal_pointer (&reply);
          if (bye == NULL && local != NULL)
            bye = g_strdup (local->message);
          break;
        }
    }
  g_test_message ("IMAP pre-auth deadline: cut after %u NOOP rounds: %s", rounds,
                  bye != NULL ? bye : "(closed)");
  g_assert_cmpuint (rounds, <, TRICKLE_ROUNDS);
  g_assert_true (g_get_monotonic_time () < watchdog);
  /* The BYE may be lost to a reset (popgate closes with our next NOOP unread): the log
   * says why the session ended. */
  g_assert_nonnull (bye);
  g_assert_true (pg_test_popgate_wait_log (popgate, "pre-auth deadline", 10000));
  g_clear_pointer (&imap, pg_test_imap_free);
  stop_popgate (popgate);
}

/* After login the pre-auth timer no longer applies: the RFC 1939 autologout (at least ten
 * minutes, enforced by the config loader) takes over. */
static gboolean
session_gone_cb (gpointer user_data)
{
  PgTestPop3 *pop3 = user_data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *reply = pg_test_pop3_command (pop3, "NOOP", &error);
  return reply == NULL || !g_str_has_prefix (reply, "+OK");
}

static void
test_idle_after_login (void)
{
  static const char *const settings[] = { "limits", "preauth_timeout", "300ms", NULL };
  g_autofree gchar *user = test_user_name ();
  PgTestPopgate *popgate = start_popgate (upstream, 0, settings);
  g_autoptr (PgTestPop3) pop3 = pop3_connect (popgate);
  g_autoptr (GError) error = NULL;

  PG_TEST_ASSERT_OK (pg_test_pop3_login (pop3, user, PASSWORD, NULL, &error), error);
  /* Polled NOOPs would restart the timer: so wait without them, then check once. */
  {
    g_autoptr (PgTestPop3) probe = pop3_connect (popgate);
    /* The probe, never logged in, is closed by the pre-auth timer ... */
    g_autofree gchar *bye = read_line (probe);
    g_assert_cmpstr (bye, ==, "-ERR Disconnected for inactivity.");
  }
  /* ... while the logged-in session, idle as long, is still there. */
  g_assert_false (session_gone_cb (pop3));
  {
    static const char *const short_autologout[] = { "--check", NULL };
    int exit_code = -1;
    g_autofree gchar *output = NULL;
    pg_test_popgate_set (popgate, "pop3", "autologout", "9m");
    PG_TEST_ASSERT_OK (pg_test_popgate_run (popgate, short_autologout, &exit_code, &output, &error),
                       error);
    g_assert_cmpint (exit_code, !=, 0);
    g_assert_nonnull (strstr (output, "autologout"));
  }
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  stop_popgate (popgate);
}

/* --- the upstream's limits (scripted peer) ------------------------------------------------ */

/* clang-format off */
#define PEER_SNAPSHOT_ASKED                                                                  \
  { PG_TEST_PEER_SEND, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN UIDPLUS] ready\r\n", 0 }, \
  { PG_TEST_PEER_EXPECT, "AUTHENTICATE PLAIN *", 0 },                                        \
  { PG_TEST_PEER_SEND, "$ OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n", 0 },            \
  { PG_TEST_PEER_EXPECT, "SELECT INBOX", 0 },                                                \
  { PG_TEST_PEER_EXPECT, "UID FETCH 1:* (UID RFC822.SIZE)", 0 },                             \
  { PG_TEST_PEER_SEND, "* 1 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n$^ OK [READ-WRITE] sel\r\n", 0 }
/* clang-format on */

/* what: the label for the test log; because: what popgate's log must give as the reason
 * (the limit, not the upstream timeout). */
static void
upstream_limit (const PgTestPeerStep *script, const char *what, const char *because)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new (script, &error);
  PgTestPopgate *popgate;
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autofree gchar *reply = NULL;
  guint64 baseline;
  gint64 start;

  g_assert_no_error (error);
  popgate = start_popgate (NULL, pg_test_peer_get_port (peer), NULL);
  pop3 = pop3_connect (popgate);
  baseline = popgate_rss_kb (popgate);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "USER alice", "+OK");
  start = g_get_monotonic_time ();
  reply = pg_test_pop3_cmd (pop3, "PASS " PASSWORD);
  g_test_message ("%s: %s after %" G_GINT64_FORMAT " ms (peer: %s)", what, reply,
                  (g_get_monotonic_time () - start) / 1000,
                  pg_test_peer_get_mismatch (peer) != NULL ? pg_test_peer_get_mismatch (peer)
                                                           : "script followed");
  if (g_test_verbose ())
    {
      g_autofree gchar *log = pg_test_popgate_read_log (popgate);
      g_test_message ("popgate's log:\n%s", log);
    }
  /* Refused for the limit (the reason popgate logs), not after the upstream timeout. */
  g_assert_true (g_str_has_prefix (reply, "-ERR [SYS/TEMP]"));
  g_assert_true (pg_test_popgate_wait_log (popgate, because, 10000));
  g_assert_true (pg_test_peer_wait_client_closed (peer, 10000));
  g_assert_cmpuint (popgate_rss_kb (popgate), <, baseline + RSS_GROWTH_BOUND_KB);
  PG_TEST_POP3_ASSERT_REPLY (pop3, "QUIT", "+OK");
  stop_popgate (popgate);
}

static void
test_upstream_line_limit (void)
{
  /* A 64 MB line: popgate must give up after PG_UPSTREAM_MAX_LINE, not buffer it. */
  const PgTestPeerStep script[] = {
    PEER_SNAPSHOT_ASKED,
    { PG_TEST_PEER_SEND, "* 1 FETCH (UID 5 RFC822.SIZE 20 X-JUNK \"", 0 },
    { PG_TEST_PEER_SEND, "0123456789abcdef", 4 * 1024 * 1024 },
    { PG_TEST_PEER_SEND, "\")\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  upstream_limit (script, "upstream line over the limit", "line longer than 65536 bytes");
}

static void
test_upstream_literal_limit (void)
{
  /* A 64 MB literal where only a small one belongs (not a message body). */
  const PgTestPeerStep script[] = {
    PEER_SNAPSHOT_ASKED,
    { PG_TEST_PEER_SEND, "* 1 FETCH (UID 5 RFC822.SIZE 20 X-JUNK {67108864}\r\n", 0 },
    { PG_TEST_PEER_SEND, "0123456789abcdef", 4 * 1024 * 1024 },
    { PG_TEST_PEER_SEND, ")\r\n$ OK done\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  upstream_limit (script, "upstream literal over the limit", "literal of 67108864 bytes (limit");
}

/* popgate's open descriptors, as numbers + 1 (a set), from /proc/PID/fd; with their
 * targets appended to `seen`. */
static GHashTable *
popgate_fds (PgTestPopgate *popgate, GString *seen)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/fd", (int) pg_test_popgate_get_pid (popgate));
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  GHashTable *open = g_hash_table_new (g_direct_hash, g_direct_equal);
  const char *name;

  g_assert_nonnull (dir);
  while ((name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree gchar *link = g_build_filename (path, name, NULL);
      g_autofree gchar *target = g_file_read_link (link, NULL);

      g_string_append_printf (seen, " %s=%s", name, target != NULL ? target : "(closed)");
      g_hash_table_add (open, GUINT_TO_POINTER ((guint) g_ascii_strtoull (name, NULL, 10) + 1));
    }
  return open;
}

/* The RLIMIT_NOFILE that leaves popgate exactly one descriptor to open. The limit caps
 * descriptor numbers, not their count: it is the second-lowest number popgate does not
 * hold (what start-up opened and closed leaves holes, and "open + 1" would leave one free
 * number per hole). Held means held in each of a few looks 20 ms apart: popgate opens
 * some files for an instant (glibc's gconv cache at the first session's log line), and
 * such a descriptor counted as held would leave a second number free. */
static guint
popgate_one_more_fd_limit (PgTestPopgate *popgate)
{
  g_autoptr (GString) seen = g_string_new (NULL);
  g_autoptr (GHashTable) held = popgate_fds (popgate, seen);
  guint free_seen = 0;

  for (guint look = 1; look < 5; look++)
    {
      g_autoptr (GHashTable) now = NULL;
      GHashTableIter iter;
      gpointer fd;

      g_usleep (20 * 1000);
      g_string_append (seen, " |");
      now = popgate_fds (popgate, seen);
      g_hash_table_iter_init (&iter, held);
      while (g_hash_table_iter_next (&iter, &fd, NULL))
        if (!g_hash_table_contains (now, fd))
          g_hash_table_iter_remove (&iter);
    }
  g_test_message ("popgate's descriptors:%s", seen->str);
  for (guint fd = 0; fd < 65536; fd++)
    {
      if (g_hash_table_contains (held, GUINT_TO_POINTER (fd + 1)))
        continue;
      if (++free_seen == 2)
        {
          g_test_message ("popgate holds %u descriptors; RLIMIT_NOFILE %u leaves it one",
                          g_hash_table_size (held), fd);
          return fd;
        }
    }
  g_assert_not_reached ();
}

/* Out of descriptors, a listener stops accepting for a while (one log line, no spinning
 * on the readable socket), and the connection waiting in the kernel's queue is served
 * once a session ends. */
static void
test_out_of_descriptors (void)
{
  PgTestPopgate *popgate = start_popgate (upstream, 0, NULL);
  PgTestPop3 *first = pop3_connect (popgate);
  g_autoptr (PgTestPop3) second = NULL;
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GSocketConnection) waiting = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *log = NULL;
  struct rlimit limit;
  char greeting[64];
  gssize got;

  /* Room for exactly one more session: the next accept finds no descriptor. */
  g_assert_cmpint (prlimit (pg_test_popgate_get_pid (popgate), RLIMIT_NOFILE, NULL, &limit), ==, 0);
  limit.rlim_cur = popgate_one_more_fd_limit (popgate);
  g_assert_cmpint (prlimit (pg_test_popgate_get_pid (popgate), RLIMIT_NOFILE, &limit, NULL), ==, 0);
  second = pop3_connect (popgate);

  waiting
      = g_socket_client_connect_to_host (client, popgate->host, popgate->pop3_port, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (pg_test_popgate_wait_log (popgate, "cannot accept on", 10000));

  /* A session ends: its descriptor lets the queued connection in. */
  PG_TEST_POP3_ASSERT_REPLY (first, "QUIT", "+OK");
  g_assert_true (pg_test_pop3_wait_closed (first));
  pg_test_pop3_free (first);
  g_socket_set_timeout (g_socket_connection_get_socket (waiting), 10);
  got = g_socket_receive (g_socket_connection_get_socket (waiting), greeting, sizeof greeting - 1,
                          NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (got, >, 3);
  greeting[got] = '\0';
  g_assert_true (g_str_has_prefix (greeting, "+OK"));
  {
    g_autofree gchar *again
        = g_strdup_printf ("accepting on %s:%u again", popgate->host, popgate->pop3_port);

    if (!pg_test_popgate_wait_log (popgate, again, 10000))
      {
        g_autofree gchar *so_far = pg_test_popgate_read_log (popgate);

        g_test_message ("popgate log: %s", so_far);
        g_assert_not_reached ();
      }
  }

  /* One line for the episode, however often it tried meanwhile. */
  log = pg_test_popgate_read_log (popgate);
  if (pg_test_count (log, "cannot accept on") != 1)
    g_test_message ("popgate log: %s", log);
  g_assert_cmpuint (pg_test_count (log, "cannot accept on"), ==, 1);
  g_assert_null (strstr (log, "fail:"));
  g_clear_object (&waiting);
  g_clear_pointer (&second, pg_test_pop3_free);
  stop_popgate (popgate);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int rc;
  static const struct
  {
    const char *path;
    void (*func) (void);
  } tests[] = {
    { "/popgate/limits/sessions-total", test_sessions_total },
    { "/popgate/limits/sessions-per-address", test_sessions_per_address },
    { "/popgate/limits/auth-failure-delay", test_auth_failure_delay },
    { "/popgate/limits/command-line-length", test_command_line_length },
    { "/popgate/limits/bad-commands", test_bad_commands },
    { "/popgate/limits/pipelined-flood", test_pipelined_flood },
    { "/popgate/limits/slow-reader", test_slow_reader },
    { "/popgate/limits/relay-slow-reader", test_relay_slow_reader },
    { "/popgate/limits/relay-upstream-stopped", test_relay_upstream_stopped },
    { "/popgate/limits/preauth-timeout", test_preauth_timeout },
    { "/popgate/limits/preauth-deadline-pop3", test_preauth_deadline_pop3 },
    { "/popgate/limits/preauth-deadline-imap", test_preauth_deadline_imap },
    { "/popgate/limits/idle-after-login", test_idle_after_login },
    { "/popgate/limits/upstream-line", test_upstream_line_limit },
    { "/popgate/limits/upstream-literal", test_upstream_literal_limit },
    { "/popgate/limits/out-of-descriptors", test_out_of_descriptors },
  };

  g_test_init (&argc, &argv, NULL);
  /* Under ASan, freed memory sits in a quarantine (256 MB by default) and counts in RSS:
   * popgate would seem to grow with every allocation it ever made. A small quarantine
   * for the popgate processes we start keeps RSS about live memory. */
  if (g_getenv ("ASAN_OPTIONS") != NULL)
    {
      g_autofree gchar *options
          = g_strconcat (g_getenv ("ASAN_OPTIONS"), ":quarantine_size_mb=1", NULL);
      g_setenv ("ASAN_OPTIONS", options, TRUE);
    }
  upstream = pg_test_dovecot_new (NULL, &error);
  g_assert_no_error (error);
  /* Every user exists before Dovecot starts: its passwd-file cache goes by mtime. */
  for (gsize i = 0; i < G_N_ELEMENTS (tests); i++)
    {
      g_autofree gchar *user = g_ascii_strdown (strrchr (tests[i].path, '/') + 1, -1);
      if (!pg_test_dovecot_add_user (upstream, user, PASSWORD, &error))
        g_error ("%s", error->message);
      g_test_add_func (tests[i].path, tests[i].func);
    }
  if (!pg_test_dovecot_start (upstream, &error))
    g_error ("cannot start Dovecot: %s", error->message);
  rc = g_test_run ();
  pg_test_dovecot_free (upstream);
  return rc;
}
