/* popgate tests — Cyrus IMAP as a test upstream (see pg-test-cyrus.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-cyrus.h"

#include "pg-test-imap.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#define PG_TEST_CYRUS_DEFAULT_ROOT "/var/cache/popgate-test/cyrus"
#define PG_TEST_CYRUS_MASTER "usr/lib/cyrus/bin/master"
#define PG_TEST_CYRUS_IMAPD "usr/lib/cyrus/bin/imapd"
/* nobody/nogroup on Debian: Cyrus runs as them and owns the temp dir. */
#define PG_TEST_CYRUS_UID 65534
#define PG_TEST_CYRUS_GID 65534
/* The SASL realm of the users: Cyrus's servername, which a login without "@" gets. */
#define PG_TEST_CYRUS_REALM "localhost"
/* Cyrus starts in well under a second; allow for a loaded CI machine. */
#define PG_TEST_CYRUS_START_MS 30000
#define PG_TEST_CYRUS_TOOL_MS 10000

/* The directory under root/usr/lib that holds libcyrus.so.0 (the multiarch triplet). */
static gchar *
pg_test_cyrus_find_libdir (const char *root, GError **error)
{
  g_autofree gchar *lib = g_build_filename (root, "usr", "lib", NULL);
  g_autoptr (GDir) dir = g_dir_open (lib, 0, error);
  const char *name;

  if (dir == NULL)
    return NULL;
  while ((name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree gchar *candidate = g_build_filename (lib, name, NULL);
      g_autofree gchar *so = g_build_filename (candidate, "libcyrus.so.0", NULL);
      if (g_file_test (so, G_FILE_TEST_EXISTS))
        return g_steal_pointer (&candidate);
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no libcyrus.so.0 under %s", lib);
  return NULL;
}

static gboolean
pg_test_cyrus_mkdir (const char *path, GError **error)
{
  if (g_mkdir (path, 0750) != 0 || chown (path, PG_TEST_CYRUS_UID, PG_TEST_CYRUS_GID) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno), "mkdir %s: %s", path,
                   g_strerror (errno));
      return FALSE;
    }
  return TRUE;
}

PgTestCyrus *
pg_test_cyrus_new (GError **error)
{
  g_autoptr (PgTestCyrus) cyrus = g_new0 (PgTestCyrus, 1);
  const char *root = g_getenv ("PG_TEST_CYRUS_ROOT");
  g_autofree gchar *master = NULL;
  const char *const subdirs[] = { "conf", "spool", "socket" };

  cyrus->host = "127.0.0.1";
  cyrus->passwords = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  cyrus->root = g_strdup (root != NULL && *root != '\0' ? root : PG_TEST_CYRUS_DEFAULT_ROOT);
  master = g_build_filename (cyrus->root, PG_TEST_CYRUS_MASTER, NULL);
  if (!g_file_test (master, G_FILE_TEST_IS_EXECUTABLE))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                   "%s missing: run scripts/deps.sh (scripts/cyrus-fetch.sh unpacks Debian's "
                   "cyrus-imapd there)",
                   master);
      return NULL;
    }
  cyrus->libdir = pg_test_cyrus_find_libdir (cyrus->root, error);
  if (cyrus->libdir == NULL)
    return NULL;
  cyrus->dir = g_dir_make_tmp ("popgate-cyrus-XXXXXX", error);
  if (cyrus->dir == NULL)
    return NULL;
  if (chown (cyrus->dir, PG_TEST_CYRUS_UID, PG_TEST_CYRUS_GID) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno), "chown %s: %s", cyrus->dir,
                   g_strerror (errno));
      return NULL;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (subdirs); i++)
    {
      g_autofree gchar *path = g_build_filename (cyrus->dir, subdirs[i], NULL);
      if (!pg_test_cyrus_mkdir (path, error))
        return NULL;
    }
  cyrus->log_file = g_build_filename (cyrus->dir, "master.log", NULL);
  return g_steal_pointer (&cyrus);
}

gboolean
pg_test_cyrus_add_user (PgTestCyrus *cyrus, const char *user, const char *password, GError **error)
{
  g_autofree gchar *sasldb = g_build_filename (cyrus->dir, "sasldb2", NULL);
  const char *argv[]
      = { "saslpasswd2", "-p", "-c", "-f", sasldb, "-u", PG_TEST_CYRUS_REALM, user, NULL };
  g_autoptr (GBytes) input = g_bytes_new (password, strlen (password));

  if (strpbrk (password, "\r\n") != NULL || strchr (user, '.') != NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "user %s: no '.' in the name, no newline in the password", user);
      return FALSE;
    }
  if (!pg_test_run (argv, input, PG_TEST_CYRUS_TOOL_MS, NULL, error))
    return FALSE;
  /* saslpasswd2 made it root's, 0640: imapd (nobody) reads it. */
  if (chown (sasldb, PG_TEST_CYRUS_UID, PG_TEST_CYRUS_GID) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno), "chown %s: %s", sasldb,
                   g_strerror (errno));
      return FALSE;
    }
  g_hash_table_replace (cyrus->passwords, g_strdup (user), g_strdup (password));
  return TRUE;
}

static gboolean
pg_test_cyrus_write (const char *path, const char *text, GError **error)
{
  return g_file_set_contents (path, text, -1, error) && g_chmod (path, 0644) == 0;
}

gboolean
pg_test_cyrus_start (PgTestCyrus *cyrus, GError **error)
{
  g_autofree gchar *imapd_conf = g_build_filename (cyrus->dir, "imapd.conf", NULL);
  g_autofree gchar *cyrus_conf = g_build_filename (cyrus->dir, "cyrus.conf", NULL);
  g_autofree gchar *pidfile = g_build_filename (cyrus->dir, "master.pid", NULL);
  g_autofree gchar *master = g_build_filename (cyrus->root, PG_TEST_CYRUS_MASTER, NULL);
  g_autofree gchar *imapd = g_build_filename (cyrus->root, PG_TEST_CYRUS_IMAPD, NULL);
  g_autofree gchar *library_path = g_strconcat ("LD_LIBRARY_PATH=", cyrus->libdir, NULL);
  g_autofree gchar *uid = g_strdup_printf ("--reuid=%d", PG_TEST_CYRUS_UID);
  g_autofree gchar *gid = g_strdup_printf ("--regid=%d", PG_TEST_CYRUS_GID);
  g_autofree gchar *imapd_text = NULL;
  g_autofree gchar *cyrus_text = NULL;

  cyrus->port = pg_test_free_port (cyrus->host, error);
  if (cyrus->port == 0)
    return FALSE;
  /* Only what the test needs; everything else is Cyrus's default. The lmtp, idle and
   * notify sockets are named so that nothing reaches for /run/cyrus. */
  imapd_text = g_strdup_printf ("configdirectory: %1$s/conf\n"
                                "defaultpartition: default\n"
                                "partition-default: %1$s/spool\n"
                                "cyrus_user: nobody\n"
                                "cyrus_group: nogroup\n"
                                "servername: " PG_TEST_CYRUS_REALM "\n"
                                "sasl_pwcheck_method: auxprop\n"
                                "sasl_auxprop_plugin: sasldb\n"
                                "sasl_sasldb_path: %1$s/sasldb2\n"
                                "sasl_mech_list: PLAIN LOGIN\n"
                                "allowplaintext: yes\n"
                                "altnamespace: no\n"
                                "unixhierarchysep: no\n"
                                "munge8bit: no\n"
                                /* popgate's [state] backend = imap-metadata stores
                                 * /private/vendor/popgate/...: Cyrus refuses entries
                                 * its annotation_definitions do not name otherwise. */
                                "annotation_allow_undefined: %2$s\n"
                                "autocreate_quota: 0\n"
                                "autocreate_inbox_folders: Trash\n"
                                "lmtpsocket: %1$s/socket/lmtp\n"
                                "idlesocket: %1$s/socket/idle\n"
                                "notifysocket: %1$s/socket/notify\n"
                                "syslog_prefix: popgate-test-cyrus\n",
                                cyrus->dir, cyrus->refuse_undefined_annotations ? "no" : "yes");
  cyrus_text = g_strdup_printf ("SERVICES {\n"
                                "  imap cmd=\"%s -C %s\" listen=\"%s:%u\" prefork=0\n"
                                "}\n",
                                imapd, imapd_conf, cyrus->host, cyrus->port);
  if (!pg_test_cyrus_write (imapd_conf, imapd_text, error)
      || !pg_test_cyrus_write (cyrus_conf, cyrus_text, error))
    return FALSE;
  {
    /* env and setpriv exec in turn: the PID we get is master's. */
    const char *argv[] = { "env",         library_path, "setpriv", uid,     gid,  "--clear-groups",
                           "--pdeathsig", "TERM",       "--",      master,  "-C", imapd_conf,
                           "-M",          cyrus_conf,   "-p",      pidfile, "-D", NULL };
    cyrus->process = pg_test_process_spawn (argv, cyrus->log_file, error);
  }
  if (cyrus->process == NULL)
    return FALSE;
  return pg_test_wait_port (cyrus->host, cyrus->port, cyrus->process, PG_TEST_CYRUS_START_MS,
                            error);
}

gboolean
pg_test_cyrus_append (PgTestCyrus *cyrus, const char *user, const char *mailbox, const char *data,
                      gsize len, GError **error)
{
  const char *password = g_hash_table_lookup (cyrus->passwords, user);
  g_autoptr (PgTestImap) imap = NULL;
  /* Cyrus refuses a bare LF in APPEND ("NO Message contains bare newlines"). */
  g_autoptr (GBytes) crlf = pg_test_to_crlf (data, len);

  if (password == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no Cyrus user %s", user);
      return FALSE;
    }
  imap = pg_test_imap_connect (cyrus->host, cyrus->port, NULL, error);
  if (imap == NULL || !pg_test_imap_login (imap, user, password, error)
      || !pg_test_imap_append (imap, mailbox, NULL, g_bytes_get_data (crlf, NULL),
                               g_bytes_get_size (crlf), NULL, error))
    return FALSE;
  return pg_test_imap_logout (imap, error);
}

void
pg_test_cyrus_free (PgTestCyrus *cyrus)
{
  if (cyrus == NULL)
    return;
  g_clear_pointer (&cyrus->process, pg_test_process_free);
  if (cyrus->dir != NULL)
    pg_test_rm_rf (cyrus->dir);
  g_clear_pointer (&cyrus->passwords, g_hash_table_unref);
  g_free (cyrus->root);
  g_free (cyrus->libdir);
  g_free (cyrus->dir);
  g_free (cyrus->log_file);
  g_free (cyrus);
}
