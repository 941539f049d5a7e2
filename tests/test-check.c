/* The command line of the real binary: --check on good and bad configs, --version, --help,
 * the short-cut flags. popgate runs as a GSubprocess (POPGATE_BIN) under a watchdog and is
 * killed by PID if it overstays.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-build-config.h"
#include "popgate/pg-core.h"
#include "pg-test-certs.h"
#include "pg-test-util.h"

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

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
  gchar *out;    /* owned */
  gchar *err;    /* owned */
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
  process
      = g_subprocess_newv ((const gchar *const *) argv->pdata,
                           G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE, &error);
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

#define ASSERT_CONTAINS(haystack, needle)                                                          \
  do                                                                                               \
    {                                                                                              \
      if (strstr ((haystack), (needle)) == NULL)                                                   \
        g_error ("expected \"%s\" in: %s", (needle), (haystack));                                  \
    }                                                                                              \
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

/* --check reads the accounts file the way the daemon does: an unknown upstream, a missing
 * token file and a file others can read are each reported with the file and the line;
 * the deprecated [imap] account_map passes with a warning. */
static void
test_check_accounts (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *accounts = g_build_filename (fixture->dir, "accounts", NULL);
  g_autofree gchar *path
      = write_config (fixture, "accounts.conf",
                      "[upstream]\nhost = imap.example.com\n"
                      "[upstream:m365]\nprovider = outlook\nauth = oauth2\noauth2_client_id = c\n"
                      "[pop3]\nlisten = 127.0.0.1:1110\n[accounts]\nfile = accounts\n");
  const char *args[] = { "--config", path, "--check", NULL };
  static const struct
  {
    const char *text;
    const char *error;
  } cases[] = {
    { "a {PLAIN}x default a@up -\n", NULL },
    { "a {PLAIN}x default a@up -\nb {PLAIN}y m356 b@up oauth2:b.token\n",
      "accounts line 2: unknown upstream \"m356\"" },
    { "b {PLAIN}y m365 b@up oauth2:b.token\n", "b.token: No such file" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *out = NULL;
      g_autofree gchar *err = NULL;
      g_autoptr (GError) error = NULL;

      g_assert_true (g_file_set_contents_full (accounts, cases[i].text, -1,
                                               G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error));
      g_assert_no_error (error);
      if (cases[i].error == NULL)
        {
          g_assert_cmpint (run_popgate (args, &out, &err), ==, 0);
          ASSERT_CONTAINS (out, "configuration OK");
          continue;
        }
      g_assert_cmpint (run_popgate (args, &out, &err), ==, 1);
      ASSERT_CONTAINS (err, "[accounts] file: ");
      ASSERT_CONTAINS (err, cases[i].error);
    }
  {
    g_autofree gchar *out = NULL;
    g_autofree gchar *err = NULL;

    g_assert_cmpint (g_chmod (accounts, 0644), ==, 0);
    g_assert_cmpint (run_popgate (args, &out, &err), ==, 1);
    ASSERT_CONTAINS (err, "chmod 600");
  }
  {
    g_autofree gchar *pw = write_config (fixture, "pw", "secret\n");
    g_autofree gchar *old
        = write_config (fixture, "old.conf",
                        "[upstream]\nhost = imap.example.com\n[imap]\nlisten = 127.0.0.1:1143\n"
                        "account_map = accounts\n");
    const char *old_args[] = { "--config", old, "--check", NULL };
    g_autofree gchar *out = NULL;
    g_autofree gchar *err = NULL;
    g_autoptr (GError) error = NULL;

    g_assert_cmpint (g_chmod (pw, 0600), ==, 0);
    g_assert_true (g_file_set_contents_full (accounts, "a {PLAIN}x a@up pw\n", -1,
                                             G_FILE_SET_CONTENTS_CONSISTENT, 0600, &error));
    g_assert_no_error (error);
    g_assert_cmpint (run_popgate (old_args, &out, &err), ==, 0);
    ASSERT_CONTAINS (out, "configuration OK");
    ASSERT_CONTAINS (err, "account_map is deprecated");
  }
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
  const char *good[] = { "--upstream",
                         "imaps://imap.example.com",
                         "--pop3-listen",
                         "127.0.0.1:1110",
                         "--imap-listen",
                         "[::1]:1143",
                         "--imap-listen",
                         "127.0.0.1:1143",
                         "-vv",
                         "--check",
                         NULL };
  const char *bad[]
      = { "--upstream", "imap.example.com", "--pop3-listen", "localhost:1110", "--check", NULL };
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
  g_autofree gchar *path
      = write_config (fixture, "partial.conf", "[upstream]\nhost = imap.example.com\n");
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

/* What startup would refuse, --check refuses too, with a message that says what is wrong:
 * a key of another certificate, a swapped pair, a junk key, a CA file with nothing in it.
 * The good pair passes, so each refusal is about the files, not the config around them. */
static void
test_check_tls_files (CheckFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestCerts) certs = pg_test_certs_new (fixture->dir, &error);
  g_autofree gchar *junk = write_config (fixture, "junk.pem", "not a key\n");
  struct
  {
    const char *cert;
    const char *key;
    const char *ca;
    const char *expected; /* NULL: OK */
  } cases[] = {
    { certs->cert_file, certs->key_file, certs->ca_file, NULL },
    { certs->cert_file, certs->untrusted_key_file, NULL, "does not belong to the certificate" },
    { certs->key_file, certs->cert_file, NULL, "not swapped?" },
    { certs->cert_file, junk, NULL, "are they PEM" },
    { certs->cert_file, certs->key_file, junk, "[upstream] ca_file: CA file" },
  };

  g_assert_no_error (error);
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *name = g_strdup_printf ("tls-%zu.conf", i);
      g_autofree gchar *state = g_build_filename (fixture->dir, "state", NULL);
      g_autofree gchar *ca_line
          = cases[i].ca != NULL ? g_strdup_printf ("ca_file = %s\n", cases[i].ca) : g_strdup ("");
      g_autofree gchar *text = g_strdup_printf ("[upstream]\nhost = imap.example.com\n%s"
                                                "[pop3]\ntls_listen = 127.0.0.1:1995\n"
                                                "[tls]\ncert = %s\nkey = %s\n"
                                                "[state]\npath = %s\n",
                                                ca_line, cases[i].cert, cases[i].key, state);
      g_autofree gchar *path = write_config (fixture, name, text);
      const char *args[] = { "--config", path, "--check", NULL };
      g_autofree gchar *out = NULL;
      g_autofree gchar *err = NULL;
      gint status = run_popgate (args, &out, &err);

      g_test_message ("case %zu: status %d, stderr: %s", i, status, err);
      if (cases[i].expected == NULL)
        {
          g_assert_cmpint (status, ==, 0);
          ASSERT_CONTAINS (out, "configuration OK");
        }
      else
        {
          g_assert_cmpint (status, ==, 1);
          ASSERT_CONTAINS (err, cases[i].expected);
          ASSERT_CONTAINS (err, path);
        }
    }
}

/* [state] path: one that can be created passes (and is not created by --check); one under
 * a regular file, or in a directory nobody may write, is refused. */
static void
test_check_state_path (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *file = write_config (fixture, "plain-file", "x\n");
  g_autofree gchar *creatable = g_build_filename (fixture->dir, "new", "state", NULL);
  g_autofree gchar *under_file = g_build_filename (file, "state", NULL);
  g_autofree gchar *locked = g_build_filename (fixture->dir, "locked", NULL);
  g_autofree gchar *under_locked = g_build_filename (locked, "state", NULL);
  struct
  {
    const char *path;
    const char *expected;
  } cases[] = {
    { creatable, NULL },
    { under_file, "ot a directory" },
    { under_locked, "cannot be created in" },
  };
  gboolean root = geteuid () == 0;

  g_assert_cmpint (g_mkdir (locked, 0500), ==, 0);
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *name = g_strdup_printf ("state-%zu.conf", i);
      g_autofree gchar *text = g_strdup_printf ("[upstream]\nhost = imap.example.com\n"
                                                "[pop3]\nlisten = 127.0.0.1:1110\n"
                                                "[state]\npath = %s\n",
                                                cases[i].path);
      g_autofree gchar *path = write_config (fixture, name, text);
      const char *args[] = { "--config", path, "--check", NULL };
      g_autofree gchar *out = NULL;
      g_autofree gchar *err = NULL;
      gint status = run_popgate (args, &out, &err);

      g_test_message ("case %zu: status %d, stderr: %s", i, status, err);
      /* root may write a 0500 directory: that case only holds for other users. */
      if (cases[i].expected == NULL || (root && i == 2))
        g_assert_cmpint (status, ==, 0);
      else
        {
          g_assert_cmpint (status, ==, 1);
          ASSERT_CONTAINS (err, cases[i].expected);
        }
    }
  g_assert_false (g_file_test (creatable, G_FILE_TEST_EXISTS));
  g_assert_cmpint (g_rmdir (locked), ==, 0);
}

/* The quick form reaches a plaintext or self-signed upstream without a file. */
static void
test_check_upstream_flags (CheckFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestCerts) certs = pg_test_certs_new (fixture->dir, &error);
  const char *plain[] = { "--upstream",    "imap://127.0.0.1:1143", "--upstream-tls", "none",
                          "--pop3-listen", "127.0.0.1:1110",        "--check",        NULL };
  const char *bad_mode[] = { "--upstream",    "127.0.0.1",      "--upstream-tls", "maybe",
                             "--pop3-listen", "127.0.0.1:1110", "--check",        NULL };
  const char *ca[] = { "--upstream",    "imaps://127.0.0.1:1993", "--upstream-ca", certs->ca_file,
                       "--pop3-listen", "127.0.0.1:1110",         "--check",       NULL };
  const char *bad_ca[]
      = { "--upstream",    "imaps://127.0.0.1:1993", "--upstream-ca", certs->key_file,
          "--pop3-listen", "127.0.0.1:1110",         "--check",       NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_no_error (error);
  g_assert_cmpint (run_popgate (plain, &out, &err), ==, 0);
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (run_popgate (bad_mode, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "--upstream-tls");
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (run_popgate (ca, &out, &err), ==, 0);
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (run_popgate (bad_ca, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "CA file");
}

/* The unit's ExecStartPre: a config that names no listener passes only when the
 * listeners come from socket units. */
static void
test_check_socket_activation (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *path
      = write_config (fixture, "sockets.conf", "[upstream]\nhost = imap.example.com\n");
  const char *with[] = { "--config", path, "--check", "--socket-activation", NULL };
  const char *without[] = { "--config", path, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  g_assert_cmpint (run_popgate (with, &out, &err), ==, 0);
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (run_popgate (without, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "no listener");
}

/* A privileged port refused to an unprivileged popgate: the error says how to get one
 * (the socket units). Run as nobody with setpriv, so root's right to bind does not hide
 * the case; the config's state directory belongs to nobody so nothing else is refused. */
static void
test_check_privileged_port (CheckFixture *fixture, gconstpointer data)
{
  const char *bin = g_getenv ("POPGATE_BIN");
  g_autofree gchar *state = g_build_filename (fixture->dir, "nobody-state", NULL);
  g_autofree gchar *text = NULL;
  g_autofree gchar *path = NULL;
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;
  g_autoptr (GError) error = NULL;
  gint status = 0;

  if (geteuid () != 0)
    {
      /* Not root: this very process cannot bind it either, which is the case itself. */
      g_test_message ("not root: popgate runs as this user");
    }
  g_assert_cmpint (g_mkdir (state, 0700), ==, 0);
  if (geteuid () == 0)
    g_assert_cmpint (chown (state, 65534, 65534), ==, 0);
  text = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\ntls = none\n"
                          "[pop3]\nlisten = 127.0.0.1:110\n[state]\npath = %s\n",
                          state);
  path = write_config (fixture, "privileged.conf", text);
  g_assert_cmpint (g_chmod (fixture->dir, 0755), ==, 0);
  g_assert_cmpint (g_chmod (path, 0644), ==, 0);
  {
    const char *argv[]
        = { "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "--config", path,
            NULL };
    const char *const *run = geteuid () == 0 ? argv : argv + 4;

    g_assert_true (g_spawn_sync (NULL, (gchar **) run, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out,
                                 &err, &status, &error));
    g_assert_no_error (error);
  }
  g_test_message ("status %d, stderr: %s", status, err);
  g_assert_false (g_spawn_check_wait_status (status, NULL));
  ASSERT_CONTAINS (err, "cannot listen on 127.0.0.1:110 for pop3");
  ASSERT_CONTAINS (err, "socket units");
  /* popgate made its state key there before it tried to listen. */
  g_assert_true (pg_test_rm_rf (state));
}

/* An admin's --check as root of the service's state directory, owned by the unit's
 * DynamicUser (some uid root cannot know): passes with a note, still refused when its
 * mode lets others write; run as that user, --check checks the owner as startup does. */
static void
test_check_service_owned_state (CheckFixture *fixture, gconstpointer data)
{
  g_autofree gchar *state = g_build_filename (fixture->dir, "service-state", NULL);
  g_autofree gchar *text = NULL;
  g_autofree gchar *path = NULL;
  const char *args[] = { "--config", NULL, "--check", NULL };
  g_autofree gchar *out = NULL;
  g_autofree gchar *err = NULL;

  if (geteuid () != 0)
    {
      g_test_skip ("needs root to give the directory another owner");
      return;
    }
  g_assert_cmpint (g_mkdir (state, 0700), ==, 0);
  g_assert_cmpint (chown (state, 65534, 65534), ==, 0);
  text = g_strdup_printf ("[upstream]\nhost = imap.example.com\n"
                          "[pop3]\nlisten = 127.0.0.1:1110\n[state]\npath = %s\n",
                          state);
  path = write_config (fixture, "service-state.conf", text);
  args[1] = path;
  g_assert_cmpint (run_popgate (args, &out, &err), ==, 0);
  ASSERT_CONTAINS (out, "belongs to uid 65534: popgate must run as that user");
  ASSERT_CONTAINS (out, "configuration OK");
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_assert_cmpint (g_chmod (state, 0777), ==, 0);
  g_assert_cmpint (run_popgate (args, &out, &err), ==, 1);
  ASSERT_CONTAINS (err, "writable by group or others");
  g_assert_cmpint (g_rmdir (state), ==, 0);
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
  g_test_add ("/popgate/check/accounts", CheckFixture, NULL, check_setup, test_check_accounts,
              check_teardown);
  g_test_add_func ("/popgate/check/example", test_check_example);
  g_test_add_func ("/popgate/check/flags-without-file", test_flags_without_file);
  g_test_add ("/popgate/check/flags-override-file", CheckFixture, NULL, check_setup,
              test_flags_override_file, check_teardown);
  g_test_add_func ("/popgate/check/usage", test_usage);
  g_test_add ("/popgate/check/privileged-port", CheckFixture, NULL, check_setup,
              test_check_privileged_port, check_teardown);
  g_test_add ("/popgate/check/tls-files", CheckFixture, NULL, check_setup, test_check_tls_files,
              check_teardown);
  g_test_add ("/popgate/check/service-owned-state", CheckFixture, NULL, check_setup,
              test_check_service_owned_state, check_teardown);
  g_test_add ("/popgate/check/state-path", CheckFixture, NULL, check_setup, test_check_state_path,
              check_teardown);
  g_test_add ("/popgate/check/upstream-flags", CheckFixture, NULL, check_setup,
              test_check_upstream_flags, check_teardown);
  g_test_add ("/popgate/check/socket-activation", CheckFixture, NULL, check_setup,
              test_check_socket_activation, check_teardown);

  return g_test_run ();
}
