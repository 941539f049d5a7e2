/* popgate tests — the test helpers themselves: child processes (PDEATHSIG, stop by PID,
 * SIGKILL fallback, output capture), port waits, and the popgate runner (config written
 * as given, output captured, early exit reported with the log).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

static gboolean
pid_gone (GPid pid)
{
  return kill (pid, 0) == -1 && errno == ESRCH;
}

static void
test_fixture_process_stop (void)
{
  const char *argv[] = { "sleep", "600", NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestProcess) process = pg_test_process_spawn (argv, NULL, &error);
  GPid pid = 0;

  g_assert_no_error (error);
  pid = pg_test_process_get_pid (process);
  g_assert_cmpint (pid, >, 0);
  g_assert_false (pg_test_process_has_exited (process));
  g_assert_false (pg_test_process_wait (process, 10));
  g_assert_true (pg_test_process_stop (process, 10000));
  g_assert_true (pg_test_process_has_exited (process));
  g_assert_true (WIFSIGNALED (pg_test_process_get_wait_status (process)));
  g_assert_cmpint (WTERMSIG (pg_test_process_get_wait_status (process)), ==, SIGTERM);
  g_assert_true (pid_gone (pid));
}

static gboolean
comm_is_sleep_cb (gpointer user_data)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/comm", GPOINTER_TO_INT (user_data));
  g_autofree gchar *comm = pg_test_read_file (path);

  return g_str_has_prefix (comm, "sleep");
}

static void
test_fixture_process_sigkill (void)
{
  /* The ignored SIGTERM survives the exec, so sleep cannot be stopped politely. */
  const char *argv[] = { "sh", "-c", "trap '' TERM; exec sleep 600", NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestProcess) process = pg_test_process_spawn (argv, NULL, &error);
  GPid pid = 0;

  g_assert_no_error (error);
  pid = pg_test_process_get_pid (process);
  /* Only once the exec happened is SIGTERM surely ignored. */
  g_assert_true (pg_test_wait_until (comm_is_sleep_cb, GINT_TO_POINTER (pid), 10000));
  g_assert_false (pg_test_process_stop (process, 200));
  g_assert_cmpint (WTERMSIG (pg_test_process_get_wait_status (process)), ==, SIGKILL);
  g_assert_true (pid_gone (pid));
}

static void
test_fixture_process_output (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-fixture-XXXXXX", &error);
  g_autofree gchar *path = g_build_filename (dir, "out.log", NULL);
  const char *argv[] = { "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3", NULL };
  g_autoptr (PgTestProcess) process = NULL;
  g_autofree gchar *output = NULL;
  int code = -1;

  g_assert_no_error (error);
  process = pg_test_process_spawn (argv, path, &error);
  g_assert_no_error (error);
  g_assert_true (pg_test_process_wait (process, 10000));
  g_assert_true (WIFEXITED (pg_test_process_get_wait_status (process)));
  g_assert_cmpint (WEXITSTATUS (pg_test_process_get_wait_status (process)), ==, 3);
  output = pg_test_read_file (path);
  g_assert_nonnull (strstr (output, "to-stdout\n"));
  g_assert_nonnull (strstr (output, "to-stderr\n"));

  /* pg_test_run: exit codes and stdin. */
  {
    const char *cat[] = { "cat", NULL };
    const char *fail[] = { "sh", "-c", "echo oops; exit 4", NULL };
    g_autoptr (GBytes) input = g_bytes_new_static ("a\r\nb\0c", 6);
    g_autofree gchar *echoed = NULL;

    g_assert_true (pg_test_run_status (cat, input, 10000, &code, &echoed, &error));
    g_assert_no_error (error);
    g_assert_cmpint (code, ==, 0);
    g_assert_cmpmem (echoed, 3, "a\r\n", 3);
    g_assert_false (pg_test_run (fail, NULL, 10000, NULL, &error));
    g_assert_error (error, G_IO_ERROR, G_IO_ERROR_FAILED);
    g_assert_nonnull (strstr (error->message, "oops"));
  }
  g_assert_true (pg_test_rm_rf (dir));
}

static void
test_fixture_wait_port (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocket) listener = NULL;
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) address = NULL;
  guint16 port = pg_test_free_port ("127.0.0.1", &error);

  g_assert_no_error (error);
  g_assert_cmpuint (port, !=, 0);
  g_assert_false (pg_test_wait_port ("127.0.0.1", port, NULL, 50, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT);
  g_clear_error (&error);

  listener
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &error);
  g_assert_no_error (error);
  address = g_inet_socket_address_new (loopback, port);
  if (!g_socket_bind (listener, address, TRUE, &error))
    {
      /* Someone took the port meanwhile: that is what the fixtures retry for. */
      g_test_skip (error->message);
      return;
    }
  PG_TEST_ASSERT_OK (g_socket_listen (listener, &error), error);
  PG_TEST_ASSERT_OK (pg_test_wait_port ("127.0.0.1", port, NULL, 5000, &error), error);
}

static void
test_fixture_popgate_version (void)
{
  const char *args[] = { "--version", NULL };
  g_autoptr (GError) error = NULL;
  g_autofree gchar *output = NULL;
  int code = -1;

  PG_TEST_ASSERT_OK (pg_test_popgate_run (NULL, args, &code, &output, &error), error);
  g_assert_cmpint (code, ==, 0);
  g_assert_true (g_str_has_prefix (output, "popgate "));
}

static void
test_fixture_popgate_config (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (NULL, "implicit", &error);
  g_autoptr (GKeyFile) written = g_key_file_new ();
  g_autofree gchar *listen = NULL;
  g_autofree gchar *path = NULL;
  g_autofree gchar *expected = NULL;
  guint16 ports[4];
  struct stat st;

  g_assert_no_error (error);
  ports[0] = popgate->pop3_port;
  ports[1] = popgate->pop3s_port;
  ports[2] = popgate->imap_port;
  ports[3] = popgate->imaps_port;
  for (gsize i = 0; i < G_N_ELEMENTS (ports); i++)
    {
      g_assert_cmpuint (ports[i], !=, 0);
      for (gsize j = 0; j < i; j++)
        g_assert_cmpuint (ports[i], !=, ports[j]);
    }
  pg_test_popgate_set (popgate, "upstream", "host", "127.0.0.1");
  pg_test_popgate_set (popgate, "pop3", "delete", "keep");
  pg_test_popgate_set (popgate, "imap", "tls_listen", NULL);
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (popgate, &error), error);

  g_assert_cmpint (stat (popgate->config_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  PG_TEST_ASSERT_OK (
      g_key_file_load_from_file (written, popgate->config_file, G_KEY_FILE_NONE, &error), error);
  listen = g_key_file_get_string (written, "pop3", "listen", &error);
  g_assert_no_error (error);
  expected = g_strdup_printf ("127.0.0.1:%u", popgate->pop3_port);
  g_assert_cmpstr (listen, ==, expected);
  g_clear_pointer (&listen, g_free);
  listen = g_key_file_get_string (written, "pop3", "delete", &error);
  g_assert_no_error (error);
  g_assert_cmpstr (listen, ==, "keep");
  g_assert_false (g_key_file_has_key (written, "imap", "tls_listen", NULL));
  path = g_key_file_get_string (written, "state", "path", &error);
  g_assert_no_error (error);
  g_assert_cmpstr (path, ==, popgate->state_dir);
  g_assert_true (g_file_test (popgate->state_dir, G_FILE_TEST_IS_DIR));
  g_clear_pointer (&path, g_free);
  path = g_key_file_get_string (written, "tls", "cert", &error);
  g_assert_no_error (error);
  g_assert_cmpstr (path, ==, popgate->certs->cert_file);
}

static void
test_fixture_popgate_early_exit (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (NULL, "implicit", &error);
  g_autofree gchar *log = NULL;

  g_assert_no_error (error);
  /* popgate refuses an unknown option and exits: start must say so, with the log. */
  pg_test_popgate_add_arg (popgate, "--no-such-option-for-tests");
  g_assert_false (pg_test_popgate_start (popgate, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_FAILED);
  g_test_message ("%s", error->message);
  g_assert_nonnull (strstr (error->message, "exited"));
  /* Whatever popgate said (today "Unknown option --config", later the bad option) is in
   * the captured log and in the error. */
  log = pg_test_popgate_read_log (popgate);
  g_assert_cmpstr (log, !=, "");
  g_assert_nonnull (strstr (error->message, log));
  g_assert_cmpint (pg_test_popgate_get_pid (popgate), ==, 0);
}

static void
test_fixture_popgate_run (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestDovecot) dovecot = NULL;
  g_autoptr (PgTestPopgate) popgate = NULL;
  GPid pid = 0;

  dovecot = pg_test_dovecot_new (NULL, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (dovecot, &error), error);
  popgate = pg_test_popgate_new (dovecot, "implicit", &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  pid = pg_test_popgate_get_pid (popgate);
  g_assert_cmpint (pid, >, 0);
  pg_test_popgate_reload (popgate);
  g_assert_false (pg_test_popgate_wait (popgate, 100, NULL));
  g_assert_true (pg_test_popgate_stop (popgate));
  g_assert_true (pid_gone (pid));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/fixture/process-stop", test_fixture_process_stop);
  g_test_add_func ("/popgate/fixture/process-sigkill", test_fixture_process_sigkill);
  g_test_add_func ("/popgate/fixture/process-output", test_fixture_process_output);
  g_test_add_func ("/popgate/fixture/wait-port", test_fixture_wait_port);
  g_test_add_func ("/popgate/fixture/popgate-version", test_fixture_popgate_version);
  g_test_add_func ("/popgate/fixture/popgate-config", test_fixture_popgate_config);
  g_test_add_func ("/popgate/fixture/popgate-early-exit", test_fixture_popgate_early_exit);
  g_test_add_func ("/popgate/fixture/popgate-run", test_fixture_popgate_run);
  return g_test_run ();
}
