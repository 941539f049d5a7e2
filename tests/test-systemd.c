/* Tests of the systemd integration, without systemd as PID 1:
 *  - the units pass `systemd-analyze verify` (which loads them the way the manager would,
 *    offline) and carry the hardening the project promises;
 *  - socket activation: the real binary started as systemd would (fds from 3 on,
 *    LISTEN_FDS, LISTEN_PID = its own PID, LISTEN_FDNAMES) serves POP3 on the inherited
 *    socket with a config that names no listener;
 *  - sd_notify: READY=1 arrives on a NOTIFY_SOCKET the test owns once the listeners accept,
 *    RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG_TEST_SYSTEMD_TIMEOUT_MS 10000

static const char *const pg_test_units[] = {
  "popgate.socket",
  "popgate-pop3s.socket",
  "popgate-imap.socket",
  "popgate-imaps.socket",
};

/* The units as meson built them, in a temp dir, with ExecStart pointing at the built
 * binary (verify checks that the command exists). Returns the dir. */
static gchar *
pg_test_systemd_stage_units (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-units-XXXXXX", &error);
  g_autofree gchar *service_path
      = g_test_build_filename (G_TEST_BUILT, "..", "data", "popgate.service", NULL);
  g_autofree gchar *service = NULL;
  g_autoptr (GRegex) exec = NULL;
  g_autofree gchar *patched = NULL;
  g_autofree gchar *target = NULL;
  const char *bin = g_getenv ("POPGATE_BIN");

  g_assert_no_error (error);
  g_assert_nonnull (bin);
  g_file_get_contents (service_path, &service, NULL, &error);
  g_assert_no_error (error);
  exec = g_regex_new ("^(Exec[A-Za-z]*=)\\S*/popgate ", G_REGEX_MULTILINE, 0, &error);
  g_assert_no_error (error);
  {
    g_autofree gchar *replacement = g_strdup_printf ("\\1%s ", bin);
    patched = g_regex_replace (exec, service, -1, 0, replacement, 0, &error);
    g_assert_no_error (error);
  }
  g_assert_nonnull (strstr (patched, bin));
  target = g_build_filename (dir, "popgate.service", NULL);
  g_file_set_contents (target, patched, -1, &error);
  g_assert_no_error (error);

  for (gsize i = 0; i < G_N_ELEMENTS (pg_test_units); i++)
    {
      g_autofree gchar *src
          = g_test_build_filename (G_TEST_DIST, "..", "data", pg_test_units[i], NULL);
      g_autofree gchar *dst = g_build_filename (dir, pg_test_units[i], NULL);
      g_autofree gchar *text = NULL;

      g_file_get_contents (src, &text, NULL, &error);
      g_assert_no_error (error);
      g_file_set_contents (dst, text, -1, &error);
      g_assert_no_error (error);
    }
  return g_steal_pointer (&dir);
}

/* systemd-analyze verify on every unit; returns its output (empty when clean). */
static gchar *
pg_test_systemd_verify (const char *dir, int *out_exit_code)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) argv = g_ptr_array_new_with_free_func (g_free);
  gchar *output = NULL;

  g_ptr_array_add (argv, g_strdup ("systemd-analyze"));
  g_ptr_array_add (argv, g_strdup ("verify"));
  /* The man pages are checked by the install test; they are not in the system MANPATH. */
  g_ptr_array_add (argv, g_strdup ("--man=no"));
  g_ptr_array_add (argv, g_build_filename (dir, "popgate.service", NULL));
  for (gsize i = 0; i < G_N_ELEMENTS (pg_test_units); i++)
    g_ptr_array_add (argv, g_build_filename (dir, pg_test_units[i], NULL));
  g_ptr_array_add (argv, NULL);
  g_assert_true (pg_test_run_status ((const char *const *) argv->pdata, NULL, 60000, out_exit_code,
                                     &output, &error));
  g_assert_no_error (error);
  return output != NULL ? output : g_strdup ("");
}

static void
test_systemd_verify (void)
{
  g_autofree gchar *dir = pg_test_systemd_stage_units ();
  g_autofree gchar *output = NULL;
  g_autofree gchar *broken_output = NULL;
  g_autofree gchar *service = g_build_filename (dir, "popgate.service", NULL);
  g_autofree gchar *text = NULL;
  g_autoptr (GError) error = NULL;
  int rc = -1;

  output = pg_test_systemd_verify (dir, &rc);
  g_test_message ("systemd-analyze verify: rc %d, output: %s", rc, output);
  g_assert_cmpint (rc, ==, 0);
  g_assert_cmpstr (output, ==, "");

  /* The check can fail: a typo in a directive is reported. */
  g_file_get_contents (service, &text, NULL, &error);
  g_assert_no_error (error);
  {
    g_autofree gchar *broken = g_strconcat (text, "\n[Service]\nProtectSystem=stricter\n", NULL);
    g_file_set_contents (service, broken, -1, &error);
    g_assert_no_error (error);
  }
  broken_output = pg_test_systemd_verify (dir, &rc);
  g_assert_nonnull (strstr (broken_output, "stricter"));
  pg_test_rm_rf (dir);
}

/* The promises of DESIGN/the issue, line by line. */
static void
test_systemd_hardening (void)
{
  g_autofree gchar *path
      = g_test_build_filename (G_TEST_BUILT, "..", "data", "popgate.service", NULL);
  g_autofree gchar *text = NULL;
  g_autoptr (GError) error = NULL;
  g_auto (GStrv) lines = NULL;
  const char *const required[] = {
    "Type=notify",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "DynamicUser=yes",
    "StateDirectory=popgate",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
    "CapabilityBoundingSet=",
  };

  g_file_get_contents (path, &text, NULL, &error);
  g_assert_no_error (error);
  lines = g_strsplit (text, "\n", -1);
  for (gsize r = 0; r < G_N_ELEMENTS (required); r++)
    {
      gboolean found = FALSE;

      for (gsize i = 0; lines[i] != NULL && !found; i++)
        found = g_str_equal (g_strstrip (lines[i]), required[r]);
      if (!found)
        g_test_message ("popgate.service lacks \"%s\"", required[r]);
      g_assert_true (found);
    }
  g_assert_null (strstr (text, "@SBINDIR@"));
  g_assert_null (strstr (text, "@CONFIGURATION_DIRECTORY@"));
  /* A broken config fails the start, or the reload before the signal is sent. */
  {
    const char *pre = strstr (text, "\nExecStartPre=");
    const char *reload = strstr (text, "\nExecReload=");
    const char *hup = strstr (text, "\nExecReload=/bin/kill -HUP $MAINPID");

    g_assert_nonnull (pre);
    g_assert_nonnull (strstr (pre, " --check --socket-activation\n"));
    g_assert_nonnull (reload);
    g_assert_nonnull (hup);
    g_assert_true (reload < hup);
    {
      g_autofree gchar *first
          = g_strndup (reload + 1, (gsize) (strchr (reload + 1, '\n') - reload - 1));

      g_assert_nonnull (strstr (first, " --check"));
    }
  }

  /* Each socket unit names its descriptor after the front end it feeds. */
  for (gsize i = 0; i < G_N_ELEMENTS (pg_test_units); i++)
    {
      static const char *const names[] = { "pop3", "pop3s", "imap", "imaps" };
      g_autofree gchar *socket_path
          = g_test_build_filename (G_TEST_DIST, "..", "data", pg_test_units[i], NULL);
      g_autofree gchar *socket_text = NULL;
      g_autofree gchar *expected = g_strdup_printf ("\nFileDescriptorName=%s\n", names[i]);

      g_file_get_contents (socket_path, &socket_text, NULL, &error);
      g_assert_no_error (error);
      g_assert_nonnull (strstr (socket_text, expected));
      g_assert_nonnull (strstr (socket_text, "\nService=popgate.service\n"));
    }
}

/* --- socket activation ---------------------------------------------------------------- */

/* "LISTEN_PID=" followed by room for any PID; the child writes its own PID into it after
 * fork, so the value equals the PID popgate will have after exec. Only async-signal-safe
 * work happens in the child. */
#define PG_TEST_LISTEN_PID_PREFIX "LISTEN_PID="
static char pg_test_listen_pid[sizeof PG_TEST_LISTEN_PID_PREFIX + 24];

static void
pg_test_systemd_child_setup_cb (gpointer user_data)
{
  char digits[24];
  gsize n = 0;
  pid_t pid = getpid ();
  gsize pos = strlen (PG_TEST_LISTEN_PID_PREFIX);

  (void) prctl (PR_SET_PDEATHSIG, SIGTERM);
  do
    {
      digits[n++] = (char) ('0' + pid % 10);
      pid /= 10;
    }
  while (pid > 0);
  while (n > 0)
    pg_test_listen_pid[pos++] = digits[--n];
  pg_test_listen_pid[pos] = '\0';
}

typedef struct
{
  GPid pid;
  gboolean exited;
  int status;
} PgTestChild;

static gboolean
pg_test_child_exited (gpointer user_data)
{
  PgTestChild *child = user_data;

  if (!child->exited && waitpid (child->pid, &child->status, WNOHANG) == child->pid)
    child->exited = TRUE;
  return child->exited;
}

/* Stop by PID: SIGTERM, bounded wait, then SIGKILL. TRUE if SIGTERM sufficed. */
static gboolean
pg_test_child_stop (PgTestChild *child)
{
  gboolean clean;

  if (child->exited)
    return TRUE;
  kill (child->pid, SIGTERM);
  clean = pg_test_wait_until (pg_test_child_exited, child, PG_TEST_SYSTEMD_TIMEOUT_MS);
  if (!clean)
    {
      kill (child->pid, SIGKILL);
      g_assert_true (pg_test_wait_until (pg_test_child_exited, child, PG_TEST_SYSTEMD_TIMEOUT_MS));
    }
  return clean;
}

typedef struct
{
  const char *log_path;
  const char *needle;
} PgTestLogWait;

static gboolean
pg_test_log_has (gpointer user_data)
{
  PgTestLogWait *wait = user_data;
  g_autofree gchar *text = pg_test_read_file (wait->log_path);

  return strstr (text, wait->needle) != NULL;
}

/* A loopback listening socket, as systemd would create for a .socket unit. */
static GSocket *
pg_test_systemd_listen (guint16 *out_port)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocket) sock
      = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &error);
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) any_port = g_inet_socket_address_new (loopback, 0);
  g_autoptr (GSocketAddress) bound = NULL;

  g_assert_no_error (error);
  g_socket_bind (sock, any_port, TRUE, &error);
  g_assert_no_error (error);
  g_socket_listen (sock, &error);
  g_assert_no_error (error);
  bound = g_socket_get_local_address (sock, &error);
  g_assert_no_error (error);
  *out_port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  return g_steal_pointer (&sock);
}

/* Connect, read one line (the greeting) with a timeout. */
static gchar *
pg_test_systemd_greeting (guint16 port)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GSocketConnection) conn = NULL;
  g_autoptr (GString) line = g_string_new (NULL);

  g_socket_client_set_timeout (client, PG_TEST_SYSTEMD_TIMEOUT_MS / 1000);
  conn = g_socket_client_connect_to_host (client, "127.0.0.1", port, NULL, &error);
  g_assert_no_error (error);
  while (line->len < 512)
    {
      char c;
      gssize n = g_input_stream_read (g_io_stream_get_input_stream (G_IO_STREAM (conn)), &c, 1,
                                      NULL, &error);
      if (n <= 0 || c == '\n')
        break;
      if (c != '\r')
        g_string_append_c (line, c);
    }
  g_assert_no_error (error);
  return g_string_free (g_steal_pointer (&line), FALSE);
}

static void
test_systemd_socket_activation (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-activation-XXXXXX", &error);
  g_autofree gchar *config_path = NULL;
  g_autofree gchar *log_path = NULL;
  g_autofree gchar *config = NULL;
  g_autofree gchar *greeting = NULL;
  g_autofree gchar *log = NULL;
  g_auto (GStrv) envp = NULL;
  g_autoptr (GSocket) sock = NULL;
  const char *bin = g_getenv ("POPGATE_BIN");
  guint16 port = 0;
  guint16 closed_port;
  int log_fd;
  int source_fds[1];
  int target_fds[1] = { 3 };
  PgTestChild child = { 0 };
  PgTestLogWait ready = { NULL, "ready" };

  g_assert_no_error (error);
  g_assert_nonnull (bin);
  closed_port = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);

  /* No [pop3] listen at all: the listener is the inherited socket. */
  config_path = g_build_filename (dir, "popgate.conf", NULL);
  config = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n"
                            "[state]\npath = %s\n",
                            closed_port, dir);
  g_file_set_contents (config_path, config, -1, &error);
  g_assert_no_error (error);
  log_path = g_build_filename (dir, "popgate.log", NULL);
  log_fd = g_open (log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  g_assert_cmpint (log_fd, >=, 0);

  sock = pg_test_systemd_listen (&port);
  source_fds[0] = g_socket_get_fd (sock);

  g_strlcpy (pg_test_listen_pid, PG_TEST_LISTEN_PID_PREFIX "0", sizeof pg_test_listen_pid);
  envp = g_get_environ ();
  envp = g_environ_unsetenv (envp, "NOTIFY_SOCKET");
  envp = g_environ_setenv (envp, "LISTEN_FDS", "1", TRUE);
  envp = g_environ_setenv (envp, "LISTEN_FDNAMES", "pop3", TRUE);
  {
    /* The LISTEN_PID entry must be our static buffer, which the child fills in. */
    gsize n = g_strv_length (envp);
    envp = g_renew (gchar *, envp, n + 2);
    envp[n] = g_strdup ("LISTEN_PID=placeholder");
    envp[n + 1] = NULL;
  }
  {
    const char *argv[] = { bin, "--config", config_path, "-v", NULL };
    gsize n = g_strv_length (envp);
    gchar *mine = envp[n - 1];

    envp[n - 1] = pg_test_listen_pid;
    g_spawn_async_with_pipes_and_fds (NULL, argv, (const char *const *) envp,
                                      G_SPAWN_DO_NOT_REAP_CHILD, pg_test_systemd_child_setup_cb,
                                      NULL, -1, log_fd, log_fd, source_fds, target_fds, 1,
                                      &child.pid, NULL, NULL, NULL, &error);
    envp[n - 1] = mine;
  }
  close (log_fd);
  g_assert_no_error (error);
  g_assert_cmpint (child.pid, >, 0);

  ready.log_path = log_path;
  if (!pg_test_wait_until (pg_test_log_has, &ready, PG_TEST_SYSTEMD_TIMEOUT_MS))
    {
      g_autofree gchar *text = pg_test_read_file (log_path);
      g_test_message ("popgate log:\n%s", text);
    }
  g_assert_false (pg_test_child_exited (&child));
  greeting = pg_test_systemd_greeting (port);
  g_assert_true (g_str_has_prefix (greeting, "+OK"));

  log = pg_test_read_file (log_path);
  g_assert_nonnull (strstr (log, "socket activation: pop3 socket from systemd serves pop3"));
  {
    g_autofree gchar *bound = g_strdup_printf ("listening for pop3 on 127.0.0.1:%u", port);
    g_assert_nonnull (strstr (log, bound));
  }
  g_assert_true (pg_test_child_stop (&child));
  g_assert_true (WIFEXITED (child.status));
  g_assert_cmpint (WEXITSTATUS (child.status), ==, 0);
  pg_test_rm_rf (dir);
}

/* An fd with a name popgate does not know is refused with a message naming it. */
static void
test_systemd_socket_activation_bad_name (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocket) sock = NULL;
  g_auto (GStrv) envp = NULL;
  const char *bin = g_getenv ("POPGATE_BIN");
  const char *argv[] = { bin, "--upstream", "imap://127.0.0.1:1", NULL };
  int source_fds[1];
  int target_fds[1] = { 3 };
  int out_pipe = -1;
  PgTestChild child = { 0 };
  guint16 port;
  g_autoptr (GString) text = g_string_new (NULL);

  sock = pg_test_systemd_listen (&port);
  source_fds[0] = g_socket_get_fd (sock);
  envp = g_get_environ ();
  envp = g_environ_setenv (envp, "LISTEN_FDS", "1", TRUE);
  envp = g_environ_setenv (envp, "LISTEN_FDNAMES", "smtp", TRUE);
  {
    gsize n = g_strv_length (envp);
    envp = g_renew (gchar *, envp, n + 2);
    envp[n] = NULL;
    envp[n + 1] = NULL;
    g_strlcpy (pg_test_listen_pid, PG_TEST_LISTEN_PID_PREFIX "0", sizeof pg_test_listen_pid);
    envp[n] = pg_test_listen_pid;
    g_spawn_async_with_pipes_and_fds (NULL, argv, (const char *const *) envp,
                                      G_SPAWN_DO_NOT_REAP_CHILD, pg_test_systemd_child_setup_cb,
                                      NULL, -1, -1, -1, source_fds, target_fds, 1, &child.pid, NULL,
                                      NULL, &out_pipe, &error);
    envp[n] = NULL;
  }
  g_assert_no_error (error);
  {
    char buf[512];
    ssize_t n;

    /* popgate's message goes to stderr; read it to EOF (popgate exits). */
    while ((n = read (out_pipe, buf, sizeof buf)) > 0)
      g_string_append_len (text, buf, n);
    close (out_pipe);
  }
  g_assert_true (pg_test_wait_until (pg_test_child_exited, &child, PG_TEST_SYSTEMD_TIMEOUT_MS));
  g_assert_true (WIFEXITED (child.status));
  g_assert_cmpint (WEXITSTATUS (child.status), ==, 1);
  g_assert_nonnull (strstr (text->str, "file descriptor 3 is named \"smtp\""));
  g_assert_nonnull (strstr (text->str, "FileDescriptorName="));
}

/* --- sd_notify ------------------------------------------------------------------------ */

typedef struct
{
  GSocket *sock; /* unowned */
  GString *seen; /* unowned: every datagram so far, joined by "|" */
  const char *needle;
} PgTestNotifyWait;

static gboolean
pg_test_notify_has (gpointer user_data)
{
  PgTestNotifyWait *wait = user_data;
  char buf[4096];
  gssize n;

  while ((n = g_socket_receive (wait->sock, buf, sizeof buf, NULL, NULL)) > 0)
    {
      g_string_append_len (wait->seen, buf, n);
      g_string_append_c (wait->seen, '|');
    }
  return strstr (wait->seen->str, wait->needle) != NULL;
}

static void
test_systemd_notify (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *dir = g_dir_make_tmp ("popgate-notify-XXXXXX", &error);
  g_autofree gchar *path = g_build_filename (dir, "notify", NULL);
  g_autoptr (GSocket) sock = NULL;
  g_autoptr (GSocketAddress) addr = g_unix_socket_address_new (path);
  g_autoptr (GString) seen = g_string_new (NULL);
  g_autoptr (PgTestPopgate) popgate = NULL;
  PgTestNotifyWait wait = { NULL, seen, NULL };
  guint16 closed_port;

  g_assert_no_error (error);
  sock = g_socket_new (G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_DATAGRAM, G_SOCKET_PROTOCOL_DEFAULT,
                       &error);
  g_assert_no_error (error);
  g_socket_bind (sock, addr, FALSE, &error);
  g_assert_no_error (error);
  g_socket_set_blocking (sock, FALSE);
  wait.sock = sock;

  closed_port = pg_test_free_port ("127.0.0.1", &error);
  g_assert_no_error (error);
  popgate = pg_test_popgate_new (NULL, "none", &error);
  g_assert_no_error (error);
  {
    g_autofree gchar *port = g_strdup_printf ("%u", closed_port);
    pg_test_popgate_set (popgate, "upstream", "host", "127.0.0.1");
    pg_test_popgate_set (popgate, "upstream", "port", port);
    pg_test_popgate_set (popgate, "upstream", "tls", "none");
  }

  /* The child inherits NOTIFY_SOCKET from us; nothing else in this test binary uses it. */
  g_setenv ("NOTIFY_SOCKET", path, TRUE);
  PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
  g_unsetenv ("NOTIFY_SOCKET");

  wait.needle = "READY=1";
  g_assert_true (pg_test_wait_until (pg_test_notify_has, &wait, PG_TEST_SYSTEMD_TIMEOUT_MS));
  g_assert_nonnull (strstr (seen->str, "STATUS=serving"));
  /* Every listener accepts once READY=1 was sent. */
  {
    guint16 ports[]
        = { popgate->pop3_port, popgate->pop3s_port, popgate->imap_port, popgate->imaps_port };
    for (gsize i = 0; i < G_N_ELEMENTS (ports); i++)
      {
        g_autoptr (GSocketClient) client = g_socket_client_new ();
        g_autoptr (GSocketConnection) conn
            = g_socket_client_connect_to_host (client, "127.0.0.1", ports[i], NULL, &error);
        g_assert_no_error (error);
      }
  }
  g_string_truncate (seen, 0);

  /* A reload says RELOADING=1, then READY=1 again. */
  pg_test_popgate_reload (popgate);
  wait.needle = "READY=1";
  g_assert_true (pg_test_wait_until (pg_test_notify_has, &wait, PG_TEST_SYSTEMD_TIMEOUT_MS));
  g_assert_nonnull (strstr (seen->str, "RELOADING=1"));
  g_assert_nonnull (strstr (seen->str, "MONOTONIC_USEC="));
  g_assert_true (strstr (seen->str, "RELOADING=1") < strstr (seen->str, "READY=1"));
  g_string_truncate (seen, 0);

  pg_test_popgate_kill (popgate, SIGTERM);
  wait.needle = "STOPPING=1";
  g_assert_true (pg_test_wait_until (pg_test_notify_has, &wait, PG_TEST_SYSTEMD_TIMEOUT_MS));
  g_assert_true (pg_test_popgate_wait (popgate, PG_TEST_SYSTEMD_TIMEOUT_MS, NULL));
  g_clear_pointer (&popgate, pg_test_popgate_free);
  g_unlink (path);
  pg_test_rm_rf (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/systemd/verify", test_systemd_verify);
  g_test_add_func ("/popgate/systemd/hardening", test_systemd_hardening);
  g_test_add_func ("/popgate/systemd/socket-activation", test_systemd_socket_activation);
  g_test_add_func ("/popgate/systemd/socket-activation-bad-name",
                   test_systemd_socket_activation_bad_name);
  g_test_add_func ("/popgate/systemd/notify", test_systemd_notify);
  return g_test_run ();
}
