/* popgate tests — GNU mailutils imap4d as a test upstream (see pg-test-imap4d.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-imap4d.h"

#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#define PG_TEST_IMAP4D_BIN "/usr/sbin/imap4d"
/* nobody/nogroup on Debian: the users' files belong to them, imap4d switches to them. */
#define PG_TEST_IMAP4D_UID 65534
#define PG_TEST_IMAP4D_GID 65534
#define PG_TEST_IMAP4D_START_MS 20000

PgTestImap4d *
pg_test_imap4d_new (GError **error)
{
  g_autoptr (PgTestImap4d) imap4d = g_new0 (PgTestImap4d, 1);
  g_autofree gchar *pw = NULL;

  imap4d->host = "127.0.0.1";
  imap4d->dir = g_dir_make_tmp ("popgate-imap4d-XXXXXX", error);
  if (imap4d->dir == NULL)
    return NULL;
  /* imap4d, running as nobody after the login, must reach the homes below. */
  if (g_chmod (imap4d->dir, 0755) != 0)
    return NULL;
  pw = g_build_filename (imap4d->dir, "pw", NULL);
  if (g_mkdir (pw, 0755) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "mkdir %s failed", pw);
      return NULL;
    }
  imap4d->log_file = g_build_filename (imap4d->dir, "imap4d.log", NULL);
  return g_steal_pointer (&imap4d);
}

gboolean
pg_test_imap4d_add_user (PgTestImap4d *imap4d, const char *user, const char *password,
                         GError **error)
{
  const char *at = strrchr (user, '@');
  const char *argv[] = { "openssl", "passwd", "-6", "-stdin", NULL };
  g_autoptr (GBytes) input = g_bytes_new (password, strlen (password));
  g_autofree gchar *hash = NULL;
  g_autofree gchar *name = NULL;
  g_autofree gchar *home = NULL;
  g_autofree gchar *inbox = NULL;
  g_autofree gchar *domain_file = NULL;
  g_autofree gchar *line = NULL;
  g_autofree gchar *old = NULL;
  g_autofree gchar *text = NULL;

  if (at == NULL || strpbrk (password, ":\n") != NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "user %s: need name@domain",
                   user);
      return FALSE;
    }
  if (!pg_test_run (argv, input, 10000, &hash, error))
    return FALSE;
  g_strstrip (hash);
  name = g_strndup (user, (gsize) (at - user));
  home = g_build_filename (imap4d->dir, "home", user, NULL);
  if (g_mkdir_with_parents (home, 0700) != 0
      || chown (home, PG_TEST_IMAP4D_UID, PG_TEST_IMAP4D_GID) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "home %s failed", home);
      return FALSE;
    }
  inbox = g_build_filename (home, "INBOX", NULL);
  if (!g_file_set_contents (inbox, "", 0, error) || g_chmod (inbox, 0600) != 0
      || chown (inbox, PG_TEST_IMAP4D_UID, PG_TEST_IMAP4D_GID) != 0)
    return FALSE;
  domain_file = g_build_filename (imap4d->dir, "pw", at + 1, NULL);
  old = pg_test_read_file (domain_file);
  line = g_strdup_printf ("%s:%s:%d:%d::%s:/bin/false\n", name, hash, PG_TEST_IMAP4D_UID,
                          PG_TEST_IMAP4D_GID, home);
  text = g_strconcat (old, line, NULL);
  if (!g_file_set_contents (domain_file, text, -1, error))
    return FALSE;
  return g_chmod (domain_file, 0644) == 0;
}

gboolean
pg_test_imap4d_start (PgTestImap4d *imap4d, GError **error)
{
  g_autofree gchar *config_file = g_build_filename (imap4d->dir, "imap4d.conf", NULL);
  g_autofree gchar *pidfile = g_build_filename (imap4d->dir, "imap4d.pid", NULL);
  g_autofree gchar *pw = g_build_filename (imap4d->dir, "pw", NULL);
  g_autofree gchar *config = NULL;
  g_autofree gchar *config_arg = NULL;

  if (!g_file_test (PG_TEST_IMAP4D_BIN, G_FILE_TEST_IS_EXECUTABLE))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                   "%s missing: install mailutils-imap4d (scripts/deps.sh)", PG_TEST_IMAP4D_BIN);
      return FALSE;
    }
  imap4d->port = pg_test_free_port (imap4d->host, error);
  if (imap4d->port == 0)
    return FALSE;
  config = g_strdup_printf ("logging { syslog no; };\n"
                            "auth { authorization virtdomain; authentication generic; };\n"
                            "virtdomain { passwd-dir %s; };\n"
                            "mode daemon;\n"
                            "foreground yes;\n"
                            "pidfile %s;\n"
                            "server %s:%u { transcript yes; };\n",
                            pw, pidfile, imap4d->host, imap4d->port);
  if (!g_file_set_contents (config_file, config, -1, error))
    return FALSE;
  config_arg = g_strconcat ("--config-file=", config_file, NULL);
  {
    const char *argv[] = { PG_TEST_IMAP4D_BIN, config_arg, "--daemon", "--foreground", NULL };
    imap4d->process = pg_test_process_spawn (argv, imap4d->log_file, error);
  }
  if (imap4d->process == NULL)
    return FALSE;
  return pg_test_wait_port (imap4d->host, imap4d->port, imap4d->process, PG_TEST_IMAP4D_START_MS,
                            error);
}

void
pg_test_imap4d_free (PgTestImap4d *imap4d)
{
  if (imap4d == NULL)
    return;
  g_clear_pointer (&imap4d->process, pg_test_process_free);
  if (imap4d->dir != NULL)
    pg_test_rm_rf (imap4d->dir);
  g_free (imap4d->dir);
  g_free (imap4d->log_file);
  g_free (imap4d);
}
