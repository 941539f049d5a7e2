/* popgate tests — a real Dovecot 2.3 upstream for integration tests.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define PG_TEST_DOVECOT_BIN "/usr/sbin/dovecot"
#define PG_TEST_DOVEADM_BIN "/usr/bin/doveadm"
/* Whole start attempts (new ports each time) before we give up: a port found free can be
 * taken by a parallel test before Dovecot binds it. */
#define PG_TEST_DOVECOT_START_ATTEMPTS 5
/* Dovecot starts in well under a second; allow for a loaded CI machine under ASan. */
#define PG_TEST_DOVECOT_START_TIMEOUT_MS 30000
/* The master waits for its children on SIGTERM (a few seconds at most). */
#define PG_TEST_DOVECOT_STOP_TIMEOUT_MS 15000
#define PG_TEST_DOVEADM_TIMEOUT_MS 30000

static guint pg_test_dovecot_counter;

const char *
pg_test_dovecot_skip_reason (void)
{
  if (geteuid () != 0)
    return "the Dovecot fixture runs Dovecot as root (its login/mail processes drop privileges)";
  if (!g_file_test (PG_TEST_DOVECOT_BIN, G_FILE_TEST_IS_EXECUTABLE)
      || !g_file_test (PG_TEST_DOVEADM_BIN, G_FILE_TEST_IS_EXECUTABLE))
    return "Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)";
  if (getpwnam ("dovecot") == NULL || getpwnam ("dovenull") == NULL || getpwnam ("nobody") == NULL
      || getgrnam ("nogroup") == NULL)
    return "the users dovecot, dovenull, nobody or the group nogroup are missing";
  return NULL;
}

PgTestDovecot *
pg_test_dovecot_new (const PgTestDovecotOptions *options, GError **error)
{
  g_autoptr (PgTestDovecot) dovecot = g_new0 (PgTestDovecot, 1);
  g_autofree gchar *mail = NULL;
  g_autofree gchar *log = NULL;
  const char *reason = pg_test_dovecot_skip_reason ();
  struct passwd *nobody = NULL;
  struct group *nogroup = NULL;

  if (reason != NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "%s", reason);
      return NULL;
    }
  dovecot->host = "127.0.0.1";
  dovecot->metadata = options != NULL && options->metadata;
  dovecot->oauth2_introspection_url
      = g_strdup (options != NULL ? options->oauth2_introspection_url : NULL);
  dovecot->oauth2_ca_file = g_strdup (options != NULL ? options->oauth2_ca_file : NULL);
  dovecot->zlib = options != NULL && options->zlib;
  dovecot->capability = g_strdup (options != NULL ? options->capability : NULL);
  dovecot->extra = g_strdup (options != NULL ? options->extra : NULL);
  dovecot->passwd = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  dovecot->dir = g_dir_make_tmp ("popgate-dovecot-XXXXXX", error);
  if (dovecot->dir == NULL)
    return NULL;
  /* Dovecot's unprivileged processes must reach into the dir: auth (user dovecot) reads
   * the passwd-file, login processes (dovenull) chroot into run/login, mail processes
   * (nobody) write the Maildirs. g_dir_make_tmp() made it 0700. */
  if (chmod (dovecot->dir, 0755) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno), "chmod %s: %s", dovecot->dir,
                   g_strerror (errno));
      return NULL;
    }
  dovecot->config_file = g_build_filename (dovecot->dir, "dovecot.conf", NULL);
  dovecot->log_file = g_build_filename (dovecot->dir, "log", "dovecot.log", NULL);
  dovecot->stderr_file = g_build_filename (dovecot->dir, "log", "stderr.log", NULL);
  log = g_build_filename (dovecot->dir, "log", NULL);
  mail = g_build_filename (dovecot->dir, "mail", NULL);
  nobody = getpwnam ("nobody");
  nogroup = getgrnam ("nogroup");
  if (g_mkdir (log, 0755) != 0 || g_mkdir (mail, 0700) != 0
      || chown (mail, nobody->pw_uid, nogroup->gr_gid) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno), "preparing %s: %s",
                   dovecot->dir, g_strerror (errno));
      return NULL;
    }
  /* cert.pem and key.pem in the dir are what the template's ssl_cert/ssl_key name. */
  dovecot->certs = pg_test_certs_new (dovecot->dir, error);
  if (dovecot->certs == NULL)
    return NULL;
  dovecot->ca_file = dovecot->certs->ca_file;
  /* An empty passwd-file so that Dovecot starts without users. */
  if (!pg_test_dovecot_add_user (dovecot, NULL, NULL, error))
    return NULL;
  return g_steal_pointer (&dovecot);
}

static gboolean
pg_test_dovecot_write_passwd (PgTestDovecot *dovecot, GError **error)
{
  g_autoptr (GString) contents = g_string_new (NULL);
  g_autofree gchar *path = g_build_filename (dovecot->dir, "passwd", NULL);
  g_autofree gchar *tmp = g_build_filename (dovecot->dir, "passwd.tmp", NULL);
  GHashTableIter iter;
  gpointer line = NULL;
  struct group *group = getgrnam ("dovecot");

  g_hash_table_iter_init (&iter, dovecot->passwd);
  while (g_hash_table_iter_next (&iter, NULL, &line))
    g_string_append_printf (contents, "%s\n", (const char *) line);
  /* Readable by the auth process (group dovecot) only; replaced by rename so Dovecot never
   * reads a half-written file and sees a new inode (it reloads on change). */
  if (!g_file_set_contents_full (tmp, contents->str, (gssize) contents->len,
                                 G_FILE_SET_CONTENTS_CONSISTENT, 0640, error))
    return FALSE;
  if (group == NULL || chown (tmp, 0, group->gr_gid) != 0 || rename (tmp, path) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "installing %s: %s", path,
                   g_strerror (errno));
      return FALSE;
    }
  return TRUE;
}

gboolean
pg_test_dovecot_add_user (PgTestDovecot *dovecot, const char *user, const char *password,
                          GError **error)
{
  g_autofree gchar *name = NULL;
  g_autofree gchar *hash = NULL;
  guint8 digest[32];
  gsize digest_len = sizeof digest;
  g_autoptr (GChecksum) checksum = NULL;

  g_return_val_if_fail (dovecot != NULL, FALSE);
  if (user == NULL)
    return pg_test_dovecot_write_passwd (dovecot, error);
  g_return_val_if_fail (password != NULL, FALSE);

  for (const char *p = user; *p != '\0'; p++)
    if (*p == ':' || (guchar) *p < 0x20 || *p == 0x7f)
      {
        g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                     "user name unfit for a passwd-file: %s", user);
        return FALSE;
      }
  if (*user == '\0')
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "empty user name");
      return FALSE;
    }
  /* passwd-file fields cannot quote ':' or newlines, so the password goes in hashed:
   * {SHA256.B64} is base64(SHA-256(password bytes)), whatever bytes they are. */
  checksum = g_checksum_new (G_CHECKSUM_SHA256);
  g_checksum_update (checksum, (const guchar *) password, (gssize) strlen (password));
  g_checksum_get_digest (checksum, digest, &digest_len);
  hash = g_base64_encode (digest, digest_len);
  name = g_ascii_strdown (user, -1);
  g_hash_table_replace (dovecot->passwd, g_strdup (name),
                        g_strdup_printf ("%s:{SHA256.B64}%s::::::", name, hash));
  return pg_test_dovecot_write_passwd (dovecot, error);
}

/* The oauth2 passdb's settings (dovecot-oauth2.conf.ext in the temp dir): RFC 7662
 * introspection by POST (form field token=...) on every login, no caching, and the user
 * is the answer's "username", which must equal the SASL authorization identity. */
static gboolean
pg_test_dovecot_write_oauth2 (PgTestDovecot *dovecot, GError **error)
{
  g_autofree gchar *path = g_build_filename (dovecot->dir, "dovecot-oauth2.conf.ext", NULL);
  g_autofree gchar *ca_copy = g_build_filename (dovecot->dir, "oauth2-ca.pem", NULL);
  g_autofree gchar *ca = NULL;
  g_autoptr (GString) contents = g_string_new (NULL);

  g_string_append_printf (contents,
                          "introspection_mode = post\n"
                          "introspection_url = %s\n"
                          "username_attribute = username\n"
                          "active_attribute = active\n"
                          "active_value = true\n"
                          "force_introspection = yes\n",
                          dovecot->oauth2_introspection_url);
  if (dovecot->oauth2_ca_file != NULL)
    {
      /* A copy the auth process can read (the caller's dir is 0700). */
      if (!g_file_get_contents (dovecot->oauth2_ca_file, &ca, NULL, error)
          || !g_file_set_contents_full (ca_copy, ca, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0644,
                                        error))
        return FALSE;
      g_string_append_printf (contents, "tls_ca_cert_file = %s\n", ca_copy);
    }
  /* Read by the auth process (user dovecot); it holds no secret. */
  return g_file_set_contents_full (path, contents->str, (gssize) contents->len,
                                   G_FILE_SET_CONTENTS_CONSISTENT, 0644, error);
}

static gboolean
pg_test_dovecot_write_config (PgTestDovecot *dovecot, const char *instance, GError **error)
{
  g_autofree gchar *template_path = NULL;
  g_autofree gchar *template = NULL;
  g_autofree gchar *extra = NULL;
  g_auto (GStrv) ports = g_new0 (gchar *, 5);
  const char *srcdir = g_getenv ("G_TEST_SRCDIR");
  struct
  {
    const char *placeholder;
    const char *value;
  } fills[9];
  g_autoptr (GString) config = NULL;
  g_autoptr (GString) extra_settings = g_string_new (NULL);

  if (srcdir == NULL)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                           "G_TEST_SRCDIR is not set (run the tests through meson test)");
      return FALSE;
    }
  template_path = g_build_filename (srcdir, "data", "dovecot-upstream.conf.in", NULL);
  if (!g_file_get_contents (template_path, &template, NULL, error))
    return FALSE;
  ports[0] = g_strdup_printf ("%u", dovecot->imap_port);
  ports[1] = g_strdup_printf ("%u", dovecot->imaps_port);
  ports[2] = g_strdup_printf ("%u", dovecot->pop3_port);
  ports[3] = g_strdup_printf ("%u", dovecot->pop3s_port);
  if (dovecot->metadata)
    g_string_append (extra_settings, "protocol imap {\n"
                                     "  imap_metadata = yes\n"
                                     "}\n"
                                     "mail_attribute_dict = file:%h/dovecot-attributes\n");
  if (dovecot->oauth2_introspection_url != NULL)
    {
      if (!pg_test_dovecot_write_oauth2 (dovecot, error))
        return FALSE;
      /* After the passwd-file passdb: tokens are tried only for the two mechanisms. */
      g_string_append_printf (extra_settings,
                              "passdb {\n"
                              "  driver = oauth2\n"
                              "  mechanisms = xoauth2 oauthbearer\n"
                              "  args = %s/dovecot-oauth2.conf.ext\n"
                              "}\n",
                              dovecot->dir);
    }
  /* COMPRESS=DEFLATE (RFC 4978) after login, as a real server offers it. */
  if (dovecot->zlib)
    g_string_append (extra_settings, "mail_plugins = $mail_plugins zlib\n"
                                     "protocol imap {\n"
                                     "  mail_plugins = $mail_plugins imap_zlib\n"
                                     "}\n");
  if (dovecot->capability != NULL)
    g_string_append_printf (extra_settings, "protocol imap {\n  imap_capability = %s\n}\n",
                            dovecot->capability);
  if (dovecot->extra != NULL)
    g_string_append_printf (extra_settings, "%s\n", dovecot->extra);
  extra = g_string_free (g_steal_pointer (&extra_settings), FALSE);
  fills[0].placeholder = "@DIR@", fills[0].value = dovecot->dir;
  fills[1].placeholder = "@INSTANCE@", fills[1].value = instance;
  fills[2].placeholder = "@IMAP_PORT@", fills[2].value = ports[0];
  fills[3].placeholder = "@IMAPS_PORT@", fills[3].value = ports[1];
  fills[4].placeholder = "@POP3_PORT@", fills[4].value = ports[2];
  fills[5].placeholder = "@POP3S_PORT@", fills[5].value = ports[3];
  fills[6].placeholder = "@EXTRA@", fills[6].value = extra;
  fills[7].placeholder = "@AUTH_MECHANISMS@";
  fills[7].value = dovecot->oauth2_introspection_url != NULL ? "plain login xoauth2 oauthbearer"
                                                             : "plain login";
  fills[8].placeholder = NULL, fills[8].value = NULL;

  config = g_string_new (template);
  for (gsize i = 0; fills[i].placeholder != NULL; i++)
    g_string_replace (config, fills[i].placeholder, fills[i].value, 0);
  if (g_regex_match_simple ("@[A-Z0-9_]+@", config->str, 0, 0))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s: a placeholder was left unfilled", template_path);
      return FALSE;
    }
  return g_file_set_contents_full (dovecot->config_file, config->str, (gssize) config->len,
                                   G_FILE_SET_CONTENTS_CONSISTENT, 0644, error);
}

static gboolean
pg_test_dovecot_pick_ports (PgTestDovecot *dovecot, GError **error)
{
  guint16 ports[4] = { 0, 0, 0, 0 };

  for (gsize i = 0; i < G_N_ELEMENTS (ports); i++)
    {
      gboolean fresh = FALSE;

      while (!fresh)
        {
          ports[i] = pg_test_free_port (dovecot->host, error);
          if (ports[i] == 0)
            return FALSE;
          fresh = TRUE;
          for (gsize j = 0; j < i; j++)
            if (ports[j] == ports[i])
              fresh = FALSE;
        }
    }
  dovecot->imap_port = ports[0];
  dovecot->imaps_port = ports[1];
  dovecot->pop3_port = ports[2];
  dovecot->pop3s_port = ports[3];
  return TRUE;
}

/* The master writes base_dir/master.pid only after it has bound every listener, so our
 * PID in that file means all four ports are ours (a connect alone could reach a parallel
 * test's server that took a port we picked). */
static gboolean
pg_test_dovecot_pidfile_is_ours (PgTestDovecot *dovecot)
{
  g_autofree gchar *path = g_build_filename (dovecot->dir, "run", "master.pid", NULL);
  g_autofree gchar *contents = pg_test_read_file (path);

  return atoi (contents) == (int) pg_test_process_get_pid (dovecot->process)
         && pg_test_process_get_pid (dovecot->process) > 0;
}

typedef enum
{
  PG_TEST_DOVECOT_STARTED,
  PG_TEST_DOVECOT_RETRY,
  PG_TEST_DOVECOT_FAILED,
} PgTestDovecotAttempt;

static PgTestDovecotAttempt
pg_test_dovecot_try_start (PgTestDovecot *dovecot, GError **error)
{
  g_autofree gchar *instance = NULL;
  g_autofree gchar *output = NULL;
  g_autofree gchar *log = NULL;
  const char *argv[] = { PG_TEST_DOVECOT_BIN, "-F", "-c", dovecot->config_file, NULL };
  gint64 deadline = g_get_monotonic_time () + PG_TEST_DOVECOT_START_TIMEOUT_MS * 1000;

  instance = g_strdup_printf ("popgate-test-%d-%u", (int) getpid (), ++pg_test_dovecot_counter);
  if (!pg_test_dovecot_pick_ports (dovecot, error)
      || !pg_test_dovecot_write_config (dovecot, instance, error))
    return PG_TEST_DOVECOT_FAILED;
  dovecot->process = pg_test_process_spawn (argv, dovecot->stderr_file, error);
  if (dovecot->process == NULL)
    return PG_TEST_DOVECOT_FAILED;

  while (!pg_test_dovecot_pidfile_is_ours (dovecot))
    {
      if (pg_test_process_has_exited (dovecot->process) || g_get_monotonic_time () >= deadline)
        break;
      g_usleep (5000);
    }
  if (pg_test_dovecot_pidfile_is_ours (dovecot)
      && pg_test_wait_port (dovecot->host, dovecot->imap_port, dovecot->process,
                            PG_TEST_DOVECOT_START_TIMEOUT_MS, NULL))
    return PG_TEST_DOVECOT_STARTED;

  pg_test_process_stop (dovecot->process, PG_TEST_DOVECOT_STOP_TIMEOUT_MS);
  g_clear_pointer (&dovecot->process, pg_test_process_free);
  output = pg_test_read_file (dovecot->stderr_file);
  log = pg_test_read_file (dovecot->log_file);
  if (strstr (output, "Address already in use") != NULL
      || strstr (log, "Address already in use") != NULL)
    {
      g_test_message ("dovecot: a port was taken, retrying: %s", output);
      return PG_TEST_DOVECOT_RETRY;
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
               "dovecot did not start within %d ms.\nstderr: %s\nlog: %s",
               PG_TEST_DOVECOT_START_TIMEOUT_MS, output, log);
  return PG_TEST_DOVECOT_FAILED;
}

gboolean
pg_test_dovecot_start (PgTestDovecot *dovecot, GError **error)
{
  g_return_val_if_fail (dovecot != NULL && dovecot->process == NULL, FALSE);

  for (guint attempt = 0; attempt < PG_TEST_DOVECOT_START_ATTEMPTS; attempt++)
    {
      switch (pg_test_dovecot_try_start (dovecot, error))
        {
        case PG_TEST_DOVECOT_STARTED:
          return TRUE;
        case PG_TEST_DOVECOT_FAILED:
          return FALSE;
        case PG_TEST_DOVECOT_RETRY:
          break;
        }
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
               "dovecot: no free ports after %d attempts", PG_TEST_DOVECOT_START_ATTEMPTS);
  return FALSE;
}

GPid
pg_test_dovecot_get_pid (PgTestDovecot *dovecot)
{
  return dovecot->process != NULL ? pg_test_process_get_pid (dovecot->process) : 0;
}

/* Read /proc/PID/stat: the command name (in parentheses, may hold anything) and the
 * parent PID. FALSE for a process that is gone or a zombie. */
static gboolean
pg_test_dovecot_proc_stat (const char *pid, gchar **out_comm, GPid *out_ppid)
{
  g_autofree gchar *path = g_build_filename ("/proc", pid, "stat", NULL);
  g_autofree gchar *stat = NULL;
  const char *open = NULL;
  const char *close = NULL;
  char state = 0;
  int ppid = 0;

  if (!g_file_get_contents (path, &stat, NULL, NULL))
    return FALSE;
  open = strchr (stat, '(');
  close = strrchr (stat, ')');
  if (open == NULL || close == NULL || close < open
      || sscanf (close + 1, " %c %d", &state, &ppid) != 2 || state == 'Z')
    return FALSE;
  *out_comm = g_strndup (open + 1, (gsize) (close - open - 1));
  *out_ppid = (GPid) ppid;
  return TRUE;
}

static gchar *
pg_test_dovecot_proc_cmdline (const char *pid)
{
  g_autofree gchar *path = g_build_filename ("/proc", pid, "cmdline", NULL);
  gchar *cmdline = NULL;
  gsize len = 0;

  if (!g_file_get_contents (path, &cmdline, &len, NULL))
    return g_strdup ("");
  /* argv is NUL-separated; a rewritten process title may be too. */
  for (gsize i = 0; i < len; i++)
    if (cmdline[i] == '\0')
      cmdline[i] = ' ';
  return cmdline;
}

/* PIDs of the master's live children; only `comm` ones if given, only those whose title
 * names `user` if given. */
static GArray *
pg_test_dovecot_children (PgTestDovecot *dovecot, const char *comm, const char *user)
{
  GArray *pids = g_array_new (FALSE, FALSE, sizeof (GPid));
  g_autoptr (GDir) proc = g_dir_open ("/proc", 0, NULL);
  GPid master = pg_test_dovecot_get_pid (dovecot);
  g_autofree gchar *needle = user != NULL ? g_strdup_printf ("[%s ", user) : NULL;
  const char *name = NULL;

  if (proc == NULL || master <= 0)
    return pids;
  while ((name = g_dir_read_name (proc)) != NULL)
    {
      g_autofree gchar *child_comm = NULL;
      GPid ppid = 0;
      GPid pid = (GPid) atoi (name);

      if (pid <= 0 || !pg_test_dovecot_proc_stat (name, &child_comm, &ppid) || ppid != master)
        continue;
      if (comm != NULL && g_strcmp0 (child_comm, comm) != 0)
        continue;
      if (needle != NULL)
        {
          g_autofree gchar *cmdline = pg_test_dovecot_proc_cmdline (name);

          if (strstr (cmdline, needle) == NULL)
            continue;
        }
      g_array_append_val (pids, pid);
    }
  return pids;
}

guint
pg_test_dovecot_signal_user_sessions (PgTestDovecot *dovecot, const char *user, int signo)
{
  g_autoptr (GArray) pids = pg_test_dovecot_children (dovecot, "imap", user);
  guint signalled = 0;

  for (guint i = 0; i < pids->len; i++)
    if (kill (g_array_index (pids, GPid, i), signo) == 0)
      signalled++;
  return signalled;
}

guint
pg_test_dovecot_signal_sessions (PgTestDovecot *dovecot, int signo)
{
  return pg_test_dovecot_signal_user_sessions (dovecot, NULL, signo);
}

static gboolean
pg_test_dovecot_all_gone_cb (gpointer user_data)
{
  GArray *pids = user_data;

  for (guint i = 0; i < pids->len; i++)
    {
      g_autofree gchar *name = g_strdup_printf ("%d", (int) g_array_index (pids, GPid, i));
      g_autofree gchar *comm = NULL;
      GPid ppid = 0;

      if (pg_test_dovecot_proc_stat (name, &comm, &ppid))
        return FALSE;
    }
  return TRUE;
}

/* SIGTERM every child of the master not signalled yet; remember them in `signalled`. */
static void
pg_test_dovecot_term_children (PgTestDovecot *dovecot, GArray *signalled)
{
  g_autoptr (GArray) children = pg_test_dovecot_children (dovecot, NULL, NULL);

  for (guint i = 0; i < children->len; i++)
    {
      GPid pid = g_array_index (children, GPid, i);
      gboolean seen = FALSE;

      for (guint j = 0; j < signalled->len && !seen; j++)
        seen = g_array_index (signalled, GPid, j) == pid;
      if (seen)
        continue;
      kill (pid, SIGTERM);
      g_array_append_val (signalled, pid);
    }
}

gboolean
pg_test_dovecot_stop (PgTestDovecot *dovecot)
{
  g_autoptr (GArray) children = g_array_new (FALSE, FALSE, sizeof (GPid));
  gint64 deadline = g_get_monotonic_time () + PG_TEST_DOVECOT_STOP_TIMEOUT_MS * 1000;
  gboolean clean = TRUE;

  g_return_val_if_fail (dovecot != NULL, FALSE);
  if (dovecot->process == NULL)
    return TRUE;
  /* A stopped imap process would hold up the master's shutdown. */
  pg_test_dovecot_signal_sessions (dovecot, SIGCONT);
  /* SIGTERM to the master alone takes Dovecot 2.5-6 s: it keeps its log process to the end
   * and waits up to 6 s for children still starting. Terminating the master and each of
   * its children (also those it starts meanwhile) takes milliseconds. */
  pg_test_process_kill (dovecot->process, SIGTERM);
  while (!pg_test_process_has_exited (dovecot->process) && g_get_monotonic_time () < deadline)
    {
      pg_test_dovecot_term_children (dovecot, children);
      pg_test_process_wait (dovecot->process, 5);
    }
  clean = pg_test_process_stop (dovecot->process, PG_TEST_DOVECOT_STOP_TIMEOUT_MS);
  g_clear_pointer (&dovecot->process, pg_test_process_free);
  /* The master has told its children to go; make sure they did, by PID. */
  if (!pg_test_wait_until (pg_test_dovecot_all_gone_cb, children, PG_TEST_DOVECOT_STOP_TIMEOUT_MS))
    {
      clean = FALSE;
      for (guint i = 0; i < children->len; i++)
        kill (g_array_index (children, GPid, i), SIGKILL);
      pg_test_wait_until (pg_test_dovecot_all_gone_cb, children, PG_TEST_DOVECOT_STOP_TIMEOUT_MS);
    }
  return clean;
}

void
pg_test_dovecot_free (PgTestDovecot *dovecot)
{
  if (dovecot == NULL)
    return;
  pg_test_dovecot_stop (dovecot);
  pg_test_certs_free (dovecot->certs);
  if (dovecot->dir != NULL && !pg_test_rm_rf (dovecot->dir))
    g_warning ("could not remove %s", dovecot->dir);
  g_free (dovecot->dir);
  g_free (dovecot->config_file);
  g_free (dovecot->log_file);
  g_free (dovecot->stderr_file);
  g_free (dovecot->oauth2_introspection_url);
  g_free (dovecot->oauth2_ca_file);
  g_clear_pointer (&dovecot->passwd, g_hash_table_unref);
  g_free (dovecot->capability);
  g_free (dovecot->extra);
  g_free (dovecot);
}

static gboolean
pg_test_dovecot_doveadm (PgTestDovecot *dovecot, const char *const *args, GBytes *input,
                         GError **error)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();

  g_ptr_array_add (argv, (gpointer) PG_TEST_DOVEADM_BIN);
  g_ptr_array_add (argv, (gpointer) "-c");
  g_ptr_array_add (argv, dovecot->config_file);
  for (gsize i = 0; args[i] != NULL; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);
  return pg_test_run ((const char *const *) argv->pdata, input, PG_TEST_DOVEADM_TIMEOUT_MS, NULL,
                      error);
}

gboolean
pg_test_dovecot_append (PgTestDovecot *dovecot, const char *user, const char *mailbox,
                        const char *data, gsize len, GError **error)
{
  g_autoptr (GBytes) input = g_bytes_new (data, len);
  g_autofree gchar *name = g_ascii_strdown (user, -1);
  const char *args[] = { "save", "-u", name, "-m", mailbox, NULL };

  return pg_test_dovecot_doveadm (dovecot, args, input, error);
}

gboolean
pg_test_dovecot_create_mailbox (PgTestDovecot *dovecot, const char *user, const char *mailbox,
                                GError **error)
{
  g_autofree gchar *name = g_ascii_strdown (user, -1);
  const char *args[] = { "mailbox", "create", "-u", name, mailbox, NULL };

  return pg_test_dovecot_doveadm (dovecot, args, NULL, error);
}

gchar *
pg_test_dovecot_read_log (PgTestDovecot *dovecot)
{
  g_autofree gchar *log = pg_test_read_file (dovecot->log_file);
  g_autofree gchar *output = pg_test_read_file (dovecot->stderr_file);

  return g_strconcat (output, log, NULL);
}

static gboolean
pg_test_dovecot_no_user_sessions_cb (gpointer user_data)
{
  gpointer *args = user_data;

  return pg_test_dovecot_signal_user_sessions (args[0], args[1], 0) == 0;
}

gboolean
pg_test_dovecot_reset_uids (PgTestDovecot *dovecot, const char *user, const char *mailbox,
                            GError **error)
{
  g_autofree gchar *name = g_ascii_strdown (user, -1);
  g_autofree gchar *root = g_build_filename (dovecot->dir, "mail", name, "Maildir", NULL);
  g_autofree gchar *folder = NULL;
  g_autofree gchar *dotted = g_strconcat (".", mailbox, NULL);
  gpointer args[] = { dovecot, name };
  const char *dirs[2];

  /* An imap process that still has the mailbox open could write the old UIDs back. */
  if (!pg_test_wait_until (pg_test_dovecot_no_user_sessions_cb, args, 20000))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "imap processes of %s did not go away",
                   name);
      return FALSE;
    }
  folder = g_ascii_strcasecmp (mailbox, "INBOX") == 0 ? g_strdup (root)
                                                      : g_build_filename (root, dotted, NULL);
  dirs[0] = folder;
  dirs[1] = root; /* the mailbox list index caches UIDVALIDITY too */
  for (guint d = 0; d < G_N_ELEMENTS (dirs); d++)
    {
      g_autoptr (GDir) dir = g_dir_open (dirs[d], 0, error);
      const char *entry;

      if (dir == NULL)
        return FALSE;
      while ((entry = g_dir_read_name (dir)) != NULL)
        {
          g_autofree gchar *path = NULL;

          if (!(d == 0
                && (g_str_has_prefix (entry, "dovecot.index")
                    || g_str_has_prefix (entry, "dovecot-uidlist")))
              && !g_str_has_prefix (entry, "dovecot.list.index"))
            continue;
          path = g_build_filename (dirs[d], entry, NULL);
          if (g_unlink (path) != 0 && errno != ENOENT)
            {
              int saved_errno = errno;
              g_set_error (error, G_IO_ERROR, g_io_error_from_errno (saved_errno), "unlink %s: %s",
                           path, g_strerror (saved_errno));
              return FALSE;
            }
        }
    }
  return TRUE;
}
