/* popgate tests — process and network helpers shared by the fixtures.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-util.h"

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

/* How often a condition is polled. Short enough not to slow the tests down, long enough
 * not to spin a core while Dovecot starts. */
#define PG_TEST_POLL_INTERVAL_US 5000

struct _PgTestProcess
{
  GSubprocess *subprocess; /* owned */
  GMainContext *context;   /* owned: the wait for the child completes here */
  GPid pid;
  gboolean exited;
  int wait_status;
};

/* Runs in the child between fork and exec: only async-signal-safe calls. The parent PID is
 * compared after prctl() so a parent that died before the prctl still takes us along. */
static void
pg_test_process_child_setup_cb (gpointer user_data)
{
  pid_t parent = (pid_t) GPOINTER_TO_INT (user_data);

  if (prctl (PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid () != parent)
    _exit (127);
}

static void
pg_test_process_wait_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestProcess *process = user_data;
  g_autoptr (GError) error = NULL;

  /* wait_async has no cancellable here, so it only finishes when the child is reaped. */
  if (!g_subprocess_wait_finish (G_SUBPROCESS (source), result, &error))
    g_warning ("waiting for child %d: %s", (int) process->pid, error->message);
  process->wait_status = g_subprocess_get_status (G_SUBPROCESS (source));
  process->exited = TRUE;
}

static GSubprocessLauncher *
pg_test_launcher_new (GSubprocessFlags flags)
{
  GSubprocessLauncher *launcher = g_subprocess_launcher_new (flags);

  g_subprocess_launcher_set_child_setup (launcher, pg_test_process_child_setup_cb,
                                         GINT_TO_POINTER ((int) getpid ()), NULL);
  return launcher;
}

PgTestProcess *
pg_test_process_spawn (const char *const *argv, const char *output_path, GError **error)
{
  g_autoptr (GSubprocessLauncher) launcher = NULL;
  g_autoptr (GSubprocess) subprocess = NULL;
  PgTestProcess *process = NULL;
  const char *identifier = NULL;

  g_return_val_if_fail (argv != NULL && argv[0] != NULL, NULL);

  launcher = pg_test_launcher_new (output_path != NULL ? G_SUBPROCESS_FLAGS_STDERR_MERGE
                                                       : G_SUBPROCESS_FLAGS_NONE);
  if (output_path != NULL)
    g_subprocess_launcher_set_stdout_file_path (launcher, output_path);
  subprocess = g_subprocess_launcher_spawnv (launcher, argv, error);
  if (subprocess == NULL)
    return NULL;

  process = g_new0 (PgTestProcess, 1);
  process->context = g_main_context_new ();
  process->wait_status = -1;
  identifier = g_subprocess_get_identifier (subprocess);
  process->pid = identifier != NULL ? (GPid) atoi (identifier) : 0;
  process->subprocess = g_steal_pointer (&subprocess);

  g_main_context_push_thread_default (process->context);
  g_subprocess_wait_async (process->subprocess, NULL, pg_test_process_wait_cb, process);
  g_main_context_pop_thread_default (process->context);
  return process;
}

GPid
pg_test_process_get_pid (PgTestProcess *process)
{
  return process->pid;
}

gboolean
pg_test_process_has_exited (PgTestProcess *process)
{
  while (g_main_context_iteration (process->context, FALSE))
    ;
  return process->exited;
}

static gboolean
pg_test_process_timeout_cb (gpointer user_data)
{
  gboolean *timed_out = user_data;

  *timed_out = TRUE;
  return G_SOURCE_REMOVE;
}

gboolean
pg_test_process_wait (PgTestProcess *process, guint timeout_ms)
{
  g_autoptr (GSource) timeout = NULL;
  gboolean timed_out = FALSE;

  if (pg_test_process_has_exited (process))
    return TRUE;
  timeout = g_timeout_source_new (timeout_ms);
  g_source_set_callback (timeout, pg_test_process_timeout_cb, &timed_out, NULL);
  g_source_attach (timeout, process->context);
  while (!process->exited && !timed_out)
    g_main_context_iteration (process->context, TRUE);
  g_source_destroy (timeout);
  return process->exited;
}

int
pg_test_process_get_wait_status (PgTestProcess *process)
{
  return pg_test_process_has_exited (process) ? process->wait_status : -1;
}

void
pg_test_process_kill (PgTestProcess *process, int signo)
{
  /* Only while not yet reaped: after that the PID may belong to someone else. */
  if (!pg_test_process_has_exited (process) && process->pid > 0)
    kill (process->pid, signo);
}

gboolean
pg_test_process_stop (PgTestProcess *process, guint timeout_ms)
{
  if (pg_test_process_has_exited (process))
    return TRUE;
  pg_test_process_kill (process, SIGTERM);
  if (pg_test_process_wait (process, timeout_ms))
    return TRUE;
  g_test_message ("child %d ignored SIGTERM for %u ms; sending SIGKILL", (int) process->pid,
                  timeout_ms);
  pg_test_process_kill (process, SIGKILL);
  if (!pg_test_process_wait (process, timeout_ms))
    g_test_message ("child %d survived SIGKILL for %u ms", (int) process->pid, timeout_ms);
  return FALSE;
}

void
pg_test_process_free (PgTestProcess *process)
{
  if (process == NULL)
    return;
  pg_test_process_stop (process, 10000);
  if (!process->exited)
    {
      /* The pending wait still points at us: leak rather than use after free. */
      return;
    }
  g_clear_object (&process->subprocess);
  g_main_context_unref (process->context);
  g_free (process);
}

gboolean
pg_test_wait_until (gboolean (*condition) (gpointer user_data), gpointer user_data,
                    guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;

  for (;;)
    {
      if (condition (user_data))
        return TRUE;
      if (g_get_monotonic_time () >= deadline)
        return condition (user_data);
      g_usleep (PG_TEST_POLL_INTERVAL_US);
    }
}

static gboolean
pg_test_flag_deadline_cb (gpointer user_data)
{
  *(gboolean *) user_data = TRUE;
  return G_SOURCE_REMOVE;
}

void
pg_test_wait_flag (const gboolean *flag)
{
  gboolean expired = FALSE;
  guint id = g_timeout_add (PG_TEST_FLAG_DEADLINE_MS, pg_test_flag_deadline_cb, &expired);

  while (!*flag && !expired)
    g_main_context_iteration (NULL, TRUE);
  if (!expired)
    g_source_remove (id);
  g_assert_false (expired);
}

guint
pg_test_count (const char *haystack, const char *needle)
{
  guint n = 0;

  for (const char *p = strstr (haystack, needle); p != NULL; p = strstr (p + 1, needle))
    n++;
  return n;
}

typedef struct
{
  gboolean done;
  gssize n;
  GError *error;
} PgTestConnRead;

static void
pg_test_conn_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestConnRead *r = user_data;

  r->n = pg_conn_read_finish (PG_CONN (source), result, &r->error);
  r->done = TRUE;
}

void
pg_test_conn_read_until (PgConn *conn, GString *got, const char *text)
{
  while (strstr (got->str, text) == NULL)
    {
      PgTestConnRead r = { 0 };
      char buf[256];

      pg_conn_read_async (conn, buf, sizeof buf, NULL, pg_test_conn_read_cb, &r);
      pg_test_wait_flag (&r.done);
      g_assert_no_error (r.error);
      g_assert_cmpint (r.n, >, 0);
      g_string_append_len (got, buf, (gsize) r.n);
    }
}

guint16
pg_test_free_port (const char *address, GError **error)
{
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (address);
  g_autoptr (GSocketAddress) any = NULL;
  g_autoptr (GSocketAddress) bound = NULL;
  g_autoptr (GSocket) socket = NULL;

  if (inet == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "not an address: %s", address);
      return 0;
    }
  socket = g_socket_new (g_inet_address_get_family (inet), G_SOCKET_TYPE_STREAM,
                         G_SOCKET_PROTOCOL_TCP, error);
  if (socket == NULL)
    return 0;
  any = g_inet_socket_address_new (inet, 0);
  if (!g_socket_bind (socket, any, FALSE, error))
    return 0;
  bound = g_socket_get_local_address (socket, error);
  if (bound == NULL)
    return 0;
  return g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
}

static gboolean
pg_test_try_connect (const char *address, guint16 port)
{
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (address);
  g_autoptr (GSocketAddress) target = NULL;
  g_autoptr (GSocket) socket = NULL;

  if (inet == NULL)
    return FALSE;
  socket = g_socket_new (g_inet_address_get_family (inet), G_SOCKET_TYPE_STREAM,
                         G_SOCKET_PROTOCOL_TCP, NULL);
  if (socket == NULL)
    return FALSE;
  g_socket_set_timeout (socket, 1);
  target = g_inet_socket_address_new (inet, port);
  return g_socket_connect (socket, target, NULL, NULL);
}

gboolean
pg_test_wait_port (const char *address, guint16 port, PgTestProcess *process, guint timeout_ms,
                   GError **error)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;

  for (;;)
    {
      if (process != NULL && pg_test_process_has_exited (process))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                       "process %d exited (wait status %d) before %s:%u accepted",
                       (int) process->pid, process->wait_status, address, port);
          return FALSE;
        }
      if (pg_test_try_connect (address, port))
        return TRUE;
      if (g_get_monotonic_time () >= deadline)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "%s:%u did not accept within %u ms",
                       address, port, timeout_ms);
          return FALSE;
        }
      g_usleep (PG_TEST_POLL_INTERVAL_US);
    }
}

GBytes *
pg_test_to_crlf (const void *data, gsize len)
{
  const char *text = data;
  GString *crlf = g_string_sized_new (len + len / 16);

  for (gsize i = 0; i < len; i++)
    {
      if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r'))
        g_string_append_c (crlf, '\r');
      g_string_append_c (crlf, text[i]);
    }
  return g_string_free_to_bytes (crlf);
}

gchar *
pg_test_read_file (const char *path)
{
  gchar *contents = NULL;

  if (!g_file_get_contents (path, &contents, NULL, NULL))
    return g_strdup ("");
  return contents;
}

static int
pg_test_rm_rf_cb (const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
  if (remove (path) != 0 && errno != ENOENT)
    g_warning ("could not remove %s: %s", path, g_strerror (errno));
  return 0;
}

gboolean
pg_test_rm_rf (const char *path)
{
  if (path == NULL)
    return TRUE;
  nftw (path, pg_test_rm_rf_cb, 16, FTW_DEPTH | FTW_PHYS);
  return !g_file_test (path, G_FILE_TEST_EXISTS);
}

typedef struct
{
  gboolean done;
  gboolean reaped;
  GBytes *output; /* owned */
  GError *error;  /* owned */
} PgTestRunState;

static void
pg_test_run_communicate_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestRunState *state = user_data;

  g_subprocess_communicate_finish (G_SUBPROCESS (source), result, &state->output, NULL,
                                   &state->error);
  state->done = TRUE;
}

static void
pg_test_run_wait_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestRunState *state = user_data;

  g_subprocess_wait_finish (G_SUBPROCESS (source), result, NULL);
  state->reaped = TRUE;
}

gboolean
pg_test_run_status (const char *const *argv, GBytes *input, guint timeout_ms, int *out_exit_code,
                    gchar **out_output, GError **error)
{
  g_autoptr (GSubprocessLauncher) launcher = NULL;
  g_autoptr (GSubprocess) subprocess = NULL;
  g_autoptr (GMainContext) context = g_main_context_new ();
  g_autoptr (GSource) timeout = NULL;
  g_autoptr (GBytes) no_input = g_bytes_new_static ("", 0);
  g_autofree gchar *output = NULL;
  g_autofree gchar *command = NULL;
  PgTestRunState state = { FALSE, FALSE, NULL, NULL };
  gboolean timed_out = FALSE;

  launcher = pg_test_launcher_new (G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE
                                   | G_SUBPROCESS_FLAGS_STDERR_MERGE);
  subprocess = g_subprocess_launcher_spawnv (launcher, argv, error);
  if (subprocess == NULL)
    return FALSE;

  g_main_context_push_thread_default (context);
  /* With a stdin pipe GIO wants bytes to write, even none (then it closes stdin). */
  g_subprocess_communicate_async (subprocess, input != NULL ? input : no_input, NULL,
                                  pg_test_run_communicate_cb, &state);
  g_subprocess_wait_async (subprocess, NULL, pg_test_run_wait_cb, &state);
  g_main_context_pop_thread_default (context);

  timeout = g_timeout_source_new (timeout_ms);
  g_source_set_callback (timeout, pg_test_process_timeout_cb, &timed_out, NULL);
  g_source_attach (timeout, context);
  while (!(state.done && state.reaped) && !timed_out)
    g_main_context_iteration (context, TRUE);
  g_source_destroy (timeout);
  if (!(state.done && state.reaped))
    {
      /* SIGKILL closes its pipes too (unless it forked a child that keeps them: not our
       * commands), so both operations complete. */
      g_subprocess_force_exit (subprocess);
      while (!(state.done && state.reaped))
        g_main_context_iteration (context, TRUE);
    }

  command = g_strjoinv (" ", (gchar **) argv);
  if (state.output != NULL)
    output = g_strndup (g_bytes_get_data (state.output, NULL), g_bytes_get_size (state.output));
  else
    output = g_strdup ("");
  g_clear_pointer (&state.output, g_bytes_unref);

  if (state.error != NULL)
    {
      g_propagate_prefixed_error (error, state.error, "%s: ", command);
      return FALSE;
    }
  if (timed_out)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "%s: no exit within %u ms: %s", command,
                   timeout_ms, output);
      return FALSE;
    }
  if (out_exit_code != NULL)
    *out_exit_code = g_subprocess_get_if_signaled (subprocess)
                         ? 128 + g_subprocess_get_term_sig (subprocess)
                         : g_subprocess_get_exit_status (subprocess);
  if (out_output != NULL)
    *out_output = g_steal_pointer (&output);
  return TRUE;
}

gboolean
pg_test_run (const char *const *argv, GBytes *input, guint timeout_ms, gchar **out_output,
             GError **error)
{
  g_autofree gchar *output = NULL;
  int exit_code = -1;

  if (!pg_test_run_status (argv, input, timeout_ms, &exit_code, &output, error))
    return FALSE;
  if (exit_code != 0)
    {
      g_autofree gchar *command = g_strjoinv (" ", (gchar **) argv);

      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s: failed (exit %d): %s", command,
                   exit_code, output);
      return FALSE;
    }
  if (out_output != NULL)
    *out_output = g_steal_pointer (&output);
  return TRUE;
}

void
pg_test_assert_tls_close_clean (const char *host, guint16 port, const char *ca_file,
                                const char *proto, const char *mode)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *script = g_test_build_filename (G_TEST_DIST, "tls-close.py", NULL);
  g_autofree gchar *port_s = g_strdup_printf ("%u", port);
  const char *argv[] = { "python3", script, host, port_s, ca_file, proto, mode, NULL };
  g_autofree gchar *output = NULL;
  int status = -1;

  g_assert_true (pg_test_run_status (argv, NULL, 60000, &status, &output, &error));
  g_assert_no_error (error);
  if (status != 0)
    g_error ("tls-close %s %s failed (%d): %s", proto, mode, status, output);
  g_assert_nonnull (strstr (output, "tls-close: clean"));
}
