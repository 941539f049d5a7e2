/* popgate — the daemon's life cycle through the real binary: SIGHUP with a good and with a
 * bad new config, and SIGTERM. No upstream is needed: nothing here logs in.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-popgate.h"
#include "pg-test-pop3.h"
#include "pg-test-util.h"

#include <signal.h>
#include <string.h>

/* Count the occurrences of needle in popgate's log. */
static guint
log_count (PgTestPopgate *popgate, const char *needle)
{
  g_autofree gchar *log = pg_test_popgate_read_log (popgate);

  return pg_test_count (log, needle);
}

static gboolean
greets_at (const char *host, guint16 port)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pg_test_pop3_connect (host, port, NULL, &error);

  return pop3 != NULL && g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK");
}

static gboolean
greets (guint16 port)
{
  return greets_at ("127.0.0.1", port);
}

/* popgate without an upstream (nothing here logs in), serving. */
static PgTestPopgate *
start_popgate (void)
{
  g_autoptr (GError) error = NULL;
  PgTestPopgate *popgate = pg_test_popgate_new (NULL, "none", &error);

  g_assert_no_error (error);
  pg_test_popgate_set (popgate, "upstream", "host", "127.0.0.1");
  pg_test_popgate_set (popgate, "upstream", "port", "1");
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  return popgate;
}

/* SIGTERM: popgate exits by itself, with status 0. */
static void
assert_sigterm_exits (PgTestPopgate *popgate)
{
  int code = -1;

  pg_test_popgate_kill (popgate, SIGTERM);
  g_assert_true (pg_test_popgate_wait (popgate, 20000, &code));
  g_assert_cmpint (code, ==, 0);
}

/* Reload with [pop3] listen = the first listener and host:port. */
static void
reload_with_second_listener (PgTestPopgate *popgate, const char *host, guint16 port)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *both = g_strdup_printf ("127.0.0.1:%u, %s:%u", popgate->pop3_port, host, port);

  pg_test_popgate_set (popgate, "pop3", "listen", both);
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (popgate, &error), error);
  pg_test_popgate_reload (popgate);
  g_assert_true (pg_test_popgate_wait_log (popgate, "configuration reloaded", 10000));
}

static void
test_sighup (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = start_popgate ();
  guint16 extra = 0;

  g_assert_true (greets (popgate->pop3_port));

  /* A good new config: one more POP3 listener. */
  extra = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);
  reload_with_second_listener (popgate, "127.0.0.1", extra);
  g_assert_true (greets (extra));
  g_assert_true (greets (popgate->pop3_port));

  /* A bad new config: refused, logged with file/group/key, the old one keeps serving. */
  pg_test_popgate_set (popgate, "pop3", "delete", "purge");
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (popgate, &error), error);
  pg_test_popgate_reload (popgate);
  g_assert_true (pg_test_popgate_wait_log (popgate, "reload refused", 10000));
  g_assert_true (pg_test_popgate_wait_log (popgate, "[pop3] delete", 1000));
  g_assert_cmpuint (log_count (popgate, "configuration reloaded"), ==, 1);
  g_assert_true (greets (extra));
  g_assert_true (greets (popgate->pop3_port));

  assert_sigterm_exits (popgate);
}

/* "*:PORT" takes IPv4 and IPv6 clients alike (one dual-stack socket, or two), and a
 * reload that adds it keeps the listener it already had. */
static void
test_listen_any (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = start_popgate ();
  guint16 any = 0;

  any = pg_test_free_port ("::", &error);
  g_assert_no_error (error);
  reload_with_second_listener (popgate, "*", any);
  g_assert_true (greets_at ("127.0.0.1", any));
  g_assert_true (greets_at ("::1", any));
  g_assert_true (greets (popgate->pop3_port));

  assert_sigterm_exits (popgate);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/daemon/sighup", test_sighup);
  g_test_add_func ("/popgate/daemon/listen-any", test_listen_any);
  return g_test_run ();
}
