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
  guint n = 0;

  for (const char *p = strstr (log, needle); p != NULL; p = strstr (p + 1, needle))
    n++;
  return n;
}

static gboolean
greets (guint16 port)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = pg_test_pop3_connect ("127.0.0.1", port, NULL, &error);

  return pop3 != NULL && g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK");
}

static void
test_sighup (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (NULL, "none", &error);
  guint16 extra = 0;
  g_autofree gchar *extra_listen = NULL;
  g_autofree gchar *both = NULL;
  int code = -1;

  g_assert_no_error (error);
  pg_test_popgate_set (popgate, "upstream", "host", "127.0.0.1");
  pg_test_popgate_set (popgate, "upstream", "port", "1");
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  g_assert_true (greets (popgate->pop3_port));

  /* A good new config: one more POP3 listener. */
  extra = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);
  extra_listen = g_strdup_printf ("127.0.0.1:%u", extra);
  both = g_strdup_printf ("127.0.0.1:%u, %s", popgate->pop3_port, extra_listen);
  pg_test_popgate_set (popgate, "pop3", "listen", both);
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (popgate, &error), error);
  pg_test_popgate_reload (popgate);
  g_assert_true (pg_test_popgate_wait_log (popgate, "configuration reloaded", 10000));
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

  /* SIGTERM: exits by itself, with status 0. */
  pg_test_popgate_kill (popgate, SIGTERM);
  g_assert_true (pg_test_popgate_wait (popgate, 20000, &code));
  g_assert_cmpint (code, ==, 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/daemon/sighup", test_sighup);
  return g_test_run ();
}
