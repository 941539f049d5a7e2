/* popgate tests — run the real popgate binary.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-popgate.h"

#include <glib/gstdio.h>
#include <signal.h>
#include <sys/wait.h>

/* popgate starts in milliseconds; allow for ASan and a loaded CI machine. */
#define PG_TEST_POPGATE_START_TIMEOUT_MS 30000
/* SIGTERM lets sessions finish up to [limits] shutdown_timeout (30 s by default): tests
 * that keep sessions open set it lower. */
#define PG_TEST_POPGATE_STOP_TIMEOUT_MS 40000
#define PG_TEST_POPGATE_RUN_TIMEOUT_MS 30000
#define PG_TEST_POPGATE_START_ATTEMPTS 5

/* The listen keys in the order "first listener" is looked for. */
static const struct
{
  const char *group;
  const char *key;
} pg_test_popgate_listen_keys[] = {
  { "pop3", "listen" },
  { "pop3", "tls_listen" },
  { "imap", "listen" },
  { "imap", "tls_listen" },
};

static const char *
pg_test_popgate_bin (GError **error)
{
  const char *bin = g_getenv ("POPGATE_BIN");

  if (bin == NULL || !g_file_test (bin, G_FILE_TEST_IS_EXECUTABLE))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                   "POPGATE_BIN is not set or not executable (run through meson test)");
      return NULL;
    }
  return bin;
}

/* Give the helper's listeners fresh ports: all four at first (`initial`), later only those
 * still holding the value we gave them; a caller's own value or removal is left alone. */
static gboolean
pg_test_popgate_pick_ports (PgTestPopgate *popgate, gboolean initial, GError **error)
{
  guint16 *ports[]
      = { &popgate->pop3_port, &popgate->pop3s_port, &popgate->imap_port, &popgate->imaps_port };

  G_STATIC_ASSERT (G_N_ELEMENTS (ports) == G_N_ELEMENTS (pg_test_popgate_listen_keys));
  for (gsize i = 0; i < G_N_ELEMENTS (ports); i++)
    {
      const char *group = pg_test_popgate_listen_keys[i].group;
      const char *key = pg_test_popgate_listen_keys[i].key;
      g_autofree gchar *current = g_key_file_get_string (popgate->config, group, key, NULL);
      g_autofree gchar *ours = g_strdup_printf ("%s:%u", popgate->host, *ports[i]);
      g_autofree gchar *value = NULL;
      guint16 port = 0;
      gboolean fresh = FALSE;

      if (!initial && (*ports[i] == 0 || g_strcmp0 (current, ours) != 0))
        {
          *ports[i] = 0;
          continue;
        }
      while (!fresh)
        {
          port = pg_test_free_port (popgate->host, error);
          if (port == 0)
            return FALSE;
          fresh = TRUE;
          for (gsize j = 0; j < i; j++)
            if (*ports[j] == port)
              fresh = FALSE;
        }
      *ports[i] = port;
      value = g_strdup_printf ("%s:%u", popgate->host, port);
      g_key_file_set_string (popgate->config, group, key, value);
    }
  return TRUE;
}

PgTestPopgate *
pg_test_popgate_new (PgTestDovecot *upstream, const char *upstream_tls, GError **error)
{
  g_autoptr (PgTestPopgate) popgate = g_new0 (PgTestPopgate, 1);

  g_return_val_if_fail (upstream_tls != NULL, NULL);
  popgate->host = "127.0.0.1";
  popgate->config = g_key_file_new ();
  popgate->args = g_ptr_array_new_with_free_func (g_free);
  popgate->dir = g_dir_make_tmp ("popgate-run-XXXXXX", error);
  if (popgate->dir == NULL)
    return NULL;
  popgate->config_file = g_build_filename (popgate->dir, "popgate.conf", NULL);
  popgate->log_file = g_build_filename (popgate->dir, "popgate.log", NULL);
  popgate->state_dir = g_build_filename (popgate->dir, "state", NULL);
  if (g_mkdir_with_parents (popgate->state_dir, 0700) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "mkdir %s failed", popgate->state_dir);
      return NULL;
    }
  popgate->certs = pg_test_certs_new (popgate->dir, error);
  if (popgate->certs == NULL)
    return NULL;

  if (upstream != NULL)
    {
      gboolean implicit = g_strcmp0 (upstream_tls, "implicit") == 0;
      g_autofree gchar *port
          = g_strdup_printf ("%u", implicit ? upstream->imaps_port : upstream->imap_port);

      pg_test_popgate_set (popgate, "upstream", "host", upstream->host);
      pg_test_popgate_set (popgate, "upstream", "port", port);
      pg_test_popgate_set (popgate, "upstream", "tls", upstream_tls);
      pg_test_popgate_set (popgate, "upstream", "ca_file", upstream->ca_file);
      pg_test_popgate_set (popgate, "upstream", "mailbox", "INBOX");
    }
  pg_test_popgate_set (popgate, "tls", "cert", popgate->certs->cert_file);
  pg_test_popgate_set (popgate, "tls", "key", popgate->certs->key_file);
  pg_test_popgate_set (popgate, "state", "backend", "file");
  pg_test_popgate_set (popgate, "state", "path", popgate->state_dir);
  if (!pg_test_popgate_pick_ports (popgate, TRUE, error))
    return NULL;
  return g_steal_pointer (&popgate);
}

void
pg_test_popgate_set (PgTestPopgate *popgate, const char *group, const char *key, const char *value)
{
  if (value != NULL)
    g_key_file_set_string (popgate->config, group, key, value);
  else
    g_key_file_remove_key (popgate->config, group, key, NULL);
}

void
pg_test_popgate_set_plain_upstream (PgTestPopgate *popgate, guint16 port)
{
  g_autofree gchar *text = g_strdup_printf ("%u", port);

  pg_test_popgate_set (popgate, "upstream", "host", "127.0.0.1");
  pg_test_popgate_set (popgate, "upstream", "port", text);
  pg_test_popgate_set (popgate, "upstream", "tls", "none");
}

void
pg_test_popgate_add_arg (PgTestPopgate *popgate, const char *arg)
{
  g_ptr_array_add (popgate->args, g_strdup (arg));
}

gboolean
pg_test_popgate_write_config (PgTestPopgate *popgate, GError **error)
{
  /* The config names key files: keep it private like a real one. */
  return g_key_file_save_to_file (popgate->config, popgate->config_file, error)
         && g_chmod (popgate->config_file, 0600) == 0;
}

/* Host and port of the first configured listener. */
static gboolean
pg_test_popgate_first_listener (PgTestPopgate *popgate, gchar **out_host, guint16 *out_port,
                                GError **error)
{
  for (gsize i = 0; i < G_N_ELEMENTS (pg_test_popgate_listen_keys); i++)
    {
      g_autofree gchar *value
          = g_key_file_get_string (popgate->config, pg_test_popgate_listen_keys[i].group,
                                   pg_test_popgate_listen_keys[i].key, NULL);
      g_auto (GStrv) items = NULL;
      gchar *first = NULL;
      const char *colon = NULL;
      guint64 port = 0;

      if (value == NULL)
        continue;
      items = g_strsplit (value, ",", 2);
      first = g_strstrip (items[0]);
      colon = strrchr (first, ':');
      if (colon == NULL
          || !g_ascii_string_to_unsigned (colon + 1, 10, 1, G_MAXUINT16, &port, error))
        {
          g_prefix_error (error, "[%s] %s: ", pg_test_popgate_listen_keys[i].group,
                          pg_test_popgate_listen_keys[i].key);
          return FALSE;
        }
      if (first[0] == '[' && colon > first + 1 && colon[-1] == ']')
        *out_host = g_strndup (first + 1, (gsize) (colon - first - 2));
      else
        *out_host = g_strndup (first, (gsize) (colon - first));
      *out_port = (guint16) port;
      return TRUE;
    }
  g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                       "no [pop3]/[imap] listen or tls_listen configured");
  return FALSE;
}

typedef enum
{
  PG_TEST_POPGATE_STARTED,
  PG_TEST_POPGATE_RETRY,
  PG_TEST_POPGATE_FAILED,
} PgTestPopgateAttempt;

/* popgate logs "ready" at notice level when it serves (see src/main.c). */
static gboolean
pg_test_popgate_wait_ready (PgTestPopgate *popgate, guint timeout_ms, GError **error)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;

  for (;;)
    {
      g_autofree gchar *log = pg_test_read_file (popgate->log_file);
      if (strstr (log, " notice: ready\n") != NULL)
        return TRUE;
      if (pg_test_process_has_exited (popgate->process))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "popgate exited before it was ready");
          return FALSE;
        }
      if (g_get_monotonic_time () >= deadline)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                       "popgate did not log \"ready\" within %u ms", timeout_ms);
          return FALSE;
        }
      g_usleep (2000);
    }
}

static PgTestPopgateAttempt
pg_test_popgate_try_start (PgTestPopgate *popgate, const char *bin, GError **error)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_autoptr (GError) local_error = NULL;
  g_autofree gchar *host = NULL;
  g_autofree gchar *log = NULL;
  guint16 port = 0;

  if (!pg_test_popgate_write_config (popgate, error)
      || !pg_test_popgate_first_listener (popgate, &host, &port, error))
    return PG_TEST_POPGATE_FAILED;
  g_ptr_array_add (argv, (gpointer) bin);
  g_ptr_array_add (argv, (gpointer) "--config");
  g_ptr_array_add (argv, popgate->config_file);
  g_ptr_array_add (argv, (gpointer) "-v");
  for (guint i = 0; i < popgate->args->len; i++)
    g_ptr_array_add (argv, g_ptr_array_index (popgate->args, i));
  g_ptr_array_add (argv, NULL);

  {
    /* An earlier run's log (with its "ready") moves aside: the child truncates the file
     * only after it has started, too late for the wait below. */
    g_autofree gchar *before = pg_test_read_file (popgate->log_file);
    if (popgate->earlier_log == NULL)
      popgate->earlier_log = g_string_new (NULL);
    g_string_append (popgate->earlier_log, before);
    g_unlink (popgate->log_file);
  }
  popgate->process
      = pg_test_process_spawn ((const char *const *) argv->pdata, popgate->log_file, error);
  if (popgate->process == NULL)
    return PG_TEST_POPGATE_FAILED;
  /* Wait for popgate's own "ready" line (written once every listener is bound), not for
   * a port to accept: another process that took the port meanwhile would accept too (and
   * popgate would have exited with "already in use"), and polling connects to a free
   * loopback port can connect the socket to itself and hold the port. */
  if (pg_test_popgate_wait_ready (popgate, PG_TEST_POPGATE_START_TIMEOUT_MS, &local_error))
    return PG_TEST_POPGATE_STARTED;

  pg_test_process_stop (popgate->process, PG_TEST_POPGATE_STOP_TIMEOUT_MS);
  g_clear_pointer (&popgate->process, pg_test_process_free);
  log = pg_test_read_file (popgate->log_file);
  if (strstr (log, "already in use") != NULL)
    {
      g_test_message ("popgate: a port was taken, retrying: %s", log);
      return PG_TEST_POPGATE_RETRY;
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "popgate did not start: %s\nlog:\n%s",
               local_error->message, log);
  return PG_TEST_POPGATE_FAILED;
}

gboolean
pg_test_popgate_start (PgTestPopgate *popgate, GError **error)
{
  const char *bin = pg_test_popgate_bin (error);

  g_return_val_if_fail (popgate->process == NULL, FALSE);
  if (bin == NULL)
    return FALSE;
  for (guint attempt = 0; attempt < PG_TEST_POPGATE_START_ATTEMPTS; attempt++)
    {
      switch (pg_test_popgate_try_start (popgate, bin, error))
        {
        case PG_TEST_POPGATE_STARTED:
          return TRUE;
        case PG_TEST_POPGATE_FAILED:
          return FALSE;
        case PG_TEST_POPGATE_RETRY:
          if (!pg_test_popgate_pick_ports (popgate, FALSE, error))
            return FALSE;
          break;
        }
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
               "popgate: no free ports after %d attempts", PG_TEST_POPGATE_START_ATTEMPTS);
  return FALSE;
}

GPid
pg_test_popgate_get_pid (PgTestPopgate *popgate)
{
  return popgate->process != NULL ? pg_test_process_get_pid (popgate->process) : 0;
}

void
pg_test_popgate_kill (PgTestPopgate *popgate, int signo)
{
  if (popgate->process != NULL)
    pg_test_process_kill (popgate->process, signo);
}

void
pg_test_popgate_reload (PgTestPopgate *popgate)
{
  pg_test_popgate_kill (popgate, SIGHUP);
}

gboolean
pg_test_popgate_wait (PgTestPopgate *popgate, guint timeout_ms, int *out_exit_code)
{
  int status = 0;

  if (popgate->process == NULL || !pg_test_process_wait (popgate->process, timeout_ms))
    return FALSE;
  status = pg_test_process_get_wait_status (popgate->process);
  if (out_exit_code != NULL)
    *out_exit_code = WIFSIGNALED (status) ? 128 + WTERMSIG (status) : WEXITSTATUS (status);
  return TRUE;
}

gboolean
pg_test_popgate_stop (PgTestPopgate *popgate)
{
  gboolean clean = TRUE;

  if (popgate->process == NULL)
    return TRUE;
  clean = pg_test_process_stop (popgate->process, PG_TEST_POPGATE_STOP_TIMEOUT_MS);
  g_clear_pointer (&popgate->process, pg_test_process_free);
  return clean;
}

gchar *
pg_test_popgate_read_log (PgTestPopgate *popgate)
{
  g_autofree gchar *current = pg_test_read_file (popgate->log_file);

  return g_strconcat (popgate->earlier_log != NULL ? popgate->earlier_log->str : "", current, NULL);
}

typedef struct
{
  PgTestPopgate *popgate; /* unowned */
  const char *needle;     /* unowned */
} PgTestPopgateLogWait;

static gboolean
pg_test_popgate_log_has_cb (gpointer user_data)
{
  PgTestPopgateLogWait *wait = user_data;
  g_autofree gchar *log = pg_test_popgate_read_log (wait->popgate);

  return strstr (log, wait->needle) != NULL;
}

gboolean
pg_test_popgate_wait_log (PgTestPopgate *popgate, const char *needle, guint timeout_ms)
{
  PgTestPopgateLogWait wait = { popgate, needle };

  return pg_test_wait_until (pg_test_popgate_log_has_cb, &wait, timeout_ms);
}

gboolean
pg_test_popgate_run (PgTestPopgate *popgate, const char *const *args, int *out_exit_code,
                     gchar **out_output, GError **error)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  const char *bin = pg_test_popgate_bin (error);

  if (bin == NULL)
    return FALSE;
  g_ptr_array_add (argv, (gpointer) bin);
  if (popgate != NULL)
    {
      if (!pg_test_popgate_write_config (popgate, error))
        return FALSE;
      g_ptr_array_add (argv, (gpointer) "--config");
      g_ptr_array_add (argv, popgate->config_file);
    }
  for (gsize i = 0; args != NULL && args[i] != NULL; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);
  return pg_test_run_status ((const char *const *) argv->pdata, NULL,
                             PG_TEST_POPGATE_RUN_TIMEOUT_MS, out_exit_code, out_output, error);
}

void
pg_test_popgate_free (PgTestPopgate *popgate)
{
  if (popgate == NULL)
    return;
  pg_test_popgate_stop (popgate);
  pg_test_certs_free (popgate->certs);
  if (popgate->dir != NULL && !pg_test_rm_rf (popgate->dir))
    g_warning ("could not remove %s", popgate->dir);
  g_free (popgate->dir);
  g_free (popgate->config_file);
  g_free (popgate->log_file);
  g_free (popgate->state_dir);
  g_clear_pointer (&popgate->config, g_key_file_unref);
  g_clear_pointer (&popgate->args, g_ptr_array_unref);
  if (popgate->earlier_log != NULL)
    g_string_free (popgate->earlier_log, TRUE);
  g_free (popgate);
}

void
pg_test_popgate_assert_clean_exit (PgTestPopgate *popgate)
{
  int exit_code = -1;

  pg_test_popgate_kill (popgate, SIGTERM);
  g_assert_true (pg_test_popgate_wait (popgate, 30000, &exit_code));
  if (exit_code != 0)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (popgate);
      g_error ("popgate exited with %d after SIGTERM:\n%s", exit_code, log);
    }
}
