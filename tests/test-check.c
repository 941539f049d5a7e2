/* The command line of the real binary: --check on good and bad configs, --version, --help,
 * the short-cut flags. popgate runs as a GSubprocess (POPGATE_BIN) under a watchdog and is
 * killed by PID if it overstays.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-build-config.h"
#include "popgate/pg-core.h"

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>

/* popgate --check must answer at once; this only guards against a hang. */
#define CHECK_DEADLINE_S 20

typedef struct
{
  gchar *dir; /* owned: temp dir with the configs */
} CheckFixture;

typedef struct
{
  gboolean done;
  gboolean timed_out;
  gchar *out; /* owned */
  gchar *err; /* owned */
  GError *error; /* owned */
} RunState;

static void
check_setup (CheckFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  fixture->dir = g_dir_make_tmp ("popgate-check-XXXXXX", &error);
  g_assert_no_error (error);
}

static void
check_teardown (CheckFixture *fixture, gconstpointer data)
{
  g_autoptr (GDir) dir = g_dir_open (fixture->dir, 0, NULL);
  const char *name = NULL;

  while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree gchar *path = g_build_filename (fixture->dir, name, NULL);
      g_assert_cmpint (g_unlink (path), ==, 0);
    }
  g_assert_cmpint (g_rmdir (fixture->dir), ==, 0);
  g_free (fixture->dir);
}

static gchar *
write_config (CheckFixture *fixture, const char *name, const char *text)
{
  g_autofree gchar *path = g_build_filename (fixture->dir, name, NULL);
  g_autoptr (GError) error = NULL;

  g_file_set_contents (path, text, -1, &error);
  g_assert_no_error (error);
  return g_steal_pointer (&path);
}

static void
run_communicate_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  RunState *state = user_data;

  g_subprocess_communicate_utf8_finish (G_SUBPROCESS (source), result, &state->out, &state->err,
                                        &state->error);
  state->done = TRUE;
}

static gboolean
run_deadline_cb (gpointer user_data)
{
  RunState *state = user_data;

  state->timed_out = TRUE;
  return G_SOURCE_REMOVE;
}

/* Run popgate with `args` (NULL-terminated); return its exit status, stdout and stderr. */
static gint
run_popgate (const char *const *args, gchar **out_stdout, gchar **out_stderr)
{
  const char *bin = g_getenv ("POPGATE_BIN");
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_autoptr (GSubprocess) process = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GMainContext) context = g_main_context_new ();
  g_autoptr (GSource) deadline = g_timeout_source_new_seconds (CHECK_DEADLINE_S);
  RunState state = { 0 };
  gint status = 0;

  g_assert_nonnull (bin);
  g_ptr_array_add (argv, (gpointer) bin);
  for (gsize i = 0; args[i] != NULL; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);

  g_main_context_push_thread_default (context);
  process = g_subprocess_newv ((const gchar *const *) argv->pdata,
                               G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE,
                               &error);
  g_assert_no_error (error);
  g_subprocess_communicate_utf8_async (process, NULL, NULL, run_communicate_cb, &state);
  g_source_set_callback (deadline, run_deadline_cb, &state, NULL);
  g_source_attach (deadline, context);
  while (!state.done && !state.timed_out)
    g_main_context_iteration (context, TRUE);
  if (!state.done)
    {
      /* Stop it by PID (SIGKILL), reap it, then fail. */
      g_subprocess_force_exit (process);
      while (!state.done)
        g_main_context_iteration (context, TRUE);
    }
  g_source_destroy (deadline);
  g_main_context_pop_thread_default (context);

  g_assert_false (state.timed_out);
  g_assert_no_error (state.error);
  g_assert_true (g_subprocess_get_if_exited (process));
  status = g_subprocess_get_exit_status (process);
  *out_stdout = state.out;
  *out_stderr = state.err;
  return status;
}

#define ASSERT_CONTAINS(haystack, needle)                                                     \
  do                                                                                          \
    {                                                                                         \
      if (strstr ((haystack), (needle)) == NULL)                                              \
        g_error ("expected \"%s\" in: %s", (needle), (haystack));                             \
    }                                                                                         \
  while (0)

static void
test_check_good (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path = write_config (fixture, "good.conf",
                                         "[upstream]\nhost = imap.example.com\n"
                                         "[pop3]\nlisten = 127.0.0.1:1110\n");
  const char *args[] = { "--config", path, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (args, &out, &err), ==, 0);
  ASSERT_CONTAINS (out, "configuration OK");
  g_assert_cmpstr (err, ==, "");
}

static void
test_check_bad (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path = write_config (fixture, "bad.conf",
                                         "[upstream]\nhost = imap.example.com\n"
                                         "[pop3]\nlisten = 127.0.0.1:1110\ndelete = purge\n");
  g_autofree gchar *expected = g_strdup_printf (
    "popgate: %s: [pop3] delete: \"purge\" is not one of expunge, move:MAILBOX, keep\n", path);
  const char *args[] = { "--config", path, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (args, &out, &err), ==, 1);
  g_assert_cmpstr (err, ==, expected);
  g_assert_cmpstr (out, ==, "");
}

/* Issue 19 item 9: --check refuses a state directory others can write, as the start does. */
static void
test_check_unsafe_state (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *state = g_build_filename (fixture->dir, "state", NULL);
  g_autofree gchar *text = NULL;
  g_autofree gchar *path = NULL;
  const char *args[] = { "--config", NULL, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (g_mkdir (state, 0700), ==, 0);
  g_assert_cmpint (g_chmod (state, 0777), ==, 0);
  text = g_strdup_printf ("[upstream]\nhost = imap.example.com\n[pop3]\nlisten = "
                          "127.0.0.1:1110\n[state]\npath = %s\n",
                          state);
  path = write_config (fixture, "unsafe.conf", text);
  args[1] = path;
  g_assert_cmpint (run_popgate (args, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "writable by group or others");
  ASSERT_CONTAINS (err, state);
  g_assert_cmpint (g_chmod (state, 0700), ==, 0);
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (run_popgate (args, &out, &err), ==, 0);
  ASSERT_CONTAINS (out, "configuration OK");
  g_assert_cmpint (g_rmdir (state), ==, 0);
}

static void
test_check_missing_file (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path = g_build_filename (fixture->dir, "absent.conf", NULL);
  const char *args[] = { "--check", "--config", path, NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (args, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, path);
}

static void
test_check_example (void)
{
  g_autofree gchar *path
    = g_test_build_filename (G_TEST_DIST, "..", "data", "popgate.conf.example", NULL);
  const char *args[] = { "--config", path, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (args, &out, &err), ==, 0);
  ASSERT_CONTAINS (out, "configuration OK");
}

static void
test_flags_without_file (void)
{
  const char *good[] = { "--upstream", "imaps://imap.example.com", "--pop3-listen",
                         "127.0.0.1:1110", "--imap-listen", "[::1]:1143", "--imap-listen",
                         "127.0.0.1:1143", "-vv", "--check", NULL };
  const char *bad[] = { "--upstream", "imap.example.com", "--pop3-listen", "localhost:1110",
                        "--check", NULL };
  const char *no_listener[] = { "--upstream", "imap.example.com", "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (good, &out, &err), ==, 0);
  ASSERT_CONTAINS (out, "(command line): configuration OK");
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);

  g_assert_cmpint (run_popgate (bad, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "--pop3-listen: [pop3] listen: ");
  ASSERT_CONTAINS (err, "host names are not allowed");
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);

  g_assert_cmpint (run_popgate (no_listener, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "no listener");
}

static void
test_flags_override_file (CheckFixture *fixture, gconstpointer data)
{
  /* The file alone is invalid (no listener); the flag completes it. */
  g_autofree gchar *path = write_config (fixture, "partial.conf",
                                         "[upstream]\nhost = imap.example.com\n");
  const char *args[] = { "--config", path, "--pop3-listen", "127.0.0.1:1110", "--check", NULL };
  const char *without[] = { "--config", path, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (args, &out, &err), ==, 0);
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (run_popgate (without, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "[pop3] listen: no listener");
}

static void
test_usage (void)
{
  const char *version[] = { "--version", NULL };
  const char *help[] = { "--help", NULL };
  const char *nothing[] = { NULL };
  const char *unknown[] = { "--frobnicate", NULL };
  const char *stray[] = { "popgate.conf", NULL };
  g_autofree gchar *expected_version = g_strdup_printf ("popgate %s\n", PG_VERSION);
  gchar *out = NULL;
  gchar *err = NULL;

  g_assert_cmpint (run_popgate (version, &out, &err), ==, 0);
  g_assert_cmpstr (out, ==, expected_version);
  g_free (out);
  g_free (err);

  g_assert_cmpint (run_popgate (help, &out, &err), ==, 0);
  ASSERT_CONTAINS (out, "--config");
  ASSERT_CONTAINS (out, "--check");
  ASSERT_CONTAINS (out, "--upstream");
  ASSERT_CONTAINS (out, "--pop3-listen");
  ASSERT_CONTAINS (out, "--imap-listen");
  ASSERT_CONTAINS (out, "--verbose");
  g_free (out);
  g_free (err);

  g_assert_cmpint (run_popgate (nothing, &out, &err), ==, 2);
  ASSERT_CONTAINS (err, "no configuration");
  g_free (out);
  g_free (err);

  g_assert_cmpint (run_popgate (unknown, &out, &err), ==, 2);
  ASSERT_CONTAINS (err, "--frobnicate");
  g_free (out);
  g_free (err);

  g_assert_cmpint (run_popgate (stray, &out, &err), ==, 2);
  ASSERT_CONTAINS (err, "unexpected argument");
  g_free (out);
  g_free (err);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add ("/popgate/check/good", CheckFixture, NULL, check_setup, test_check_good,
              check_teardown);
  g_test_add ("/popgate/check/bad", CheckFixture, NULL, check_setup, test_check_bad,
              check_teardown);
  g_test_add ("/popgate/check/unsafe-state", CheckFixture, NULL, check_setup,
              test_check_unsafe_state, check_teardown);
  g_test_add ("/popgate/check/missing-file", CheckFixture, NULL, check_setup,
              test_check_missing_file, check_teardown);
  g_test_add_func ("/popgate/check/example", test_check_example);
  g_test_add_func ("/popgate/check/flags-without-file", test_flags_without_file);
  g_test_add ("/popgate/check/flags-override-file", CheckFixture, NULL, check_setup,
              test_flags_override_file, check_teardown);
  g_test_add_func ("/popgate/check/usage", test_usage);

  return g_test_run ();
}
