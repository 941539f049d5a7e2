/* popgate-demo — the README's first command: POP3 and IMAP side by side on one mailbox.
 *
 * A throwaway Dovecot seeded from data/demo-mail and two popgate instances in front of it
 * (the same real binary, the audit trace on): one with `delete = expunge`, one with
 * `delete = keep`. Scene 1: an IMAP client in IDLE (through popgate's IMAP front end) sees
 * the EXPUNGE that a POP3 DELE+QUIT causes. Scene 2: under `keep`, the client tag
 * demo#laptop deletes a message only for itself; demo#phone and IMAP still see it. Each
 * scene ends with popgate's trace lines for the POP3 session (DELE -> UID -> upstream).
 * Scene 3: an old POP3 client with a plain local password in front of an account that
 * takes only OAuth2 tokens: `popgate --oauth2-authorize` (device grant, approved at a local
 * Authlib authorization server), then the login, with popgate's refresh and AUTHENTICATE
 * lines.
 *
 * Interactive by default: popgate then stays up and the demo prints how to point a real
 * POP3 or IMAP client at it, until Ctrl-C. With --non-interactive (or when stdin is not a
 * terminal, or CI is set) it exits by itself; every wait is bounded.
 *
 * It reuses the test fixtures (tests/pg-test-*.c): same Dovecot, same real popgate binary.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-oauth2.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include <glib-unix.h>
#include <libsoup/soup.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DEMO_USER "demo"
#define DEMO_PASSWORD "demo-password"
/* Scene 3: the old client's local login in front of the OAuth2-only account. */
#define DEMO_OLD_USER "olduser"
#define DEMO_OLD_PASSWORD "old-pw"
#define DEMO_OAUTH2_CLIENT "popgate-demo"
#define DEMO_WAIT_MS 30000
/* Seconds any single read from the demo's IMAP client may block. It is also how long the
 * IDLEing client waits for the EXPUNGE before it ends IDLE (see demo_scene_expunge()). */
#define DEMO_IMAP_TIMEOUT_S 5
/* Upper bounds on one demo_imap_read_until(): time and lines. */
#define DEMO_READ_DEADLINE_US (15 * G_USEC_PER_SEC)
#define DEMO_MAX_IMAP_LINES 64

static gboolean demo_failed = FALSE;

static void demo_say (const char *format, ...) G_GNUC_PRINTF (1, 2);

static void
demo_say (const char *format, ...)
{
  va_list args;

  va_start (args, format);
  printf ("\n== ");
  vprintf (format, args);
  printf ("\n");
  va_end (args);
  fflush (stdout);
}

static void demo_note (const char *format, ...) G_GNUC_PRINTF (1, 2);

static void
demo_note (const char *format, ...)
{
  va_list args;

  va_start (args, format);
  printf ("   # ");
  vprintf (format, args);
  printf ("\n");
  va_end (args);
  fflush (stdout);
}

static void
demo_fail (const char *what, const GError *error)
{
  printf ("   !! %s%s%s\n", what, error != NULL ? ": " : "", error != NULL ? error->message : "");
  fflush (stdout);
  demo_failed = TRUE;
}

/* --- POP3 ------------------------------------------------------------------------------- */

/* Print a server reply, indenting each line; long bodies are cut for the screen. */
static void
demo_pop3_print_reply (const char *label, const char *status, GBytes *body)
{
  printf ("   %s S: %s\n", label, status);
  if (body != NULL)
    {
      gsize len = 0;
      const char *data = g_bytes_get_data (body, &len);
      g_autofree gchar *text = g_strndup (data, len);
      g_auto (GStrv) lines = g_strsplit (text, "\r\n", -1);
      guint shown = 0;

      for (guint i = 0; lines[i] != NULL; i++)
        {
          if (lines[i + 1] == NULL && lines[i][0] == '\0')
            break;
          if (shown++ == 12)
            {
              printf ("   %s S: … (%" G_GSIZE_FORMAT " octets in all)\n", label, len);
              break;
            }
          printf ("   %s S: %s%s\n", label, lines[i][0] == '.' ? "." : "", lines[i]);
        }
      printf ("   %s S: .\n", label);
    }
  fflush (stdout);
}

/* Send one command, show it (password masked) and its reply. NULL (and the demo fails)
 * unless the reply is +OK. */
static gchar *
demo_pop3_command (PgTestPop3 *pop3, const char *label, const char *command, gboolean multiline)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = NULL;
  g_autofree gchar *status = NULL;

  if (g_str_has_prefix (command, "PASS "))
    printf ("   %s C: PASS ********\n", label);
  else
    printf ("   %s C: %s\n", label, command);
  status = pg_test_pop3_command (pop3, command, &error);
  if (status == NULL)
    {
      demo_fail ("POP3", error);
      return NULL;
    }
  if (multiline && g_str_has_prefix (status, "+OK"))
    {
      body = pg_test_pop3_read_multiline (pop3, &error);
      if (body == NULL)
        {
          demo_fail ("POP3 body", error);
          return NULL;
        }
    }
  demo_pop3_print_reply (label, status, body);
  if (!g_str_has_prefix (status, "+OK"))
    {
      demo_fail ("POP3 command refused", NULL);
      return NULL;
    }
  return g_steal_pointer (&status);
}

typedef struct
{
  const char *command;
  gboolean multiline;
  const char *note;
} DemoStep;

/* Connect, run the steps (stopping at the first failure). *out_stat (optional) gets the
 * message count of the first STAT. */
static void
demo_pop3_session (PgTestPopgate *popgate, const char *label, const DemoStep *steps, gsize n_steps,
                   guint *out_stat)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3
      = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, &error);
  gboolean stat_seen = FALSE;

  if (pop3 == NULL)
    {
      demo_fail ("POP3 connect", error);
      return;
    }
  printf ("   %s S: %s\n", label, pg_test_pop3_get_greeting (pop3));
  for (gsize i = 0; i < n_steps && !demo_failed; i++)
    {
      g_autofree gchar *status = NULL;
      guint count = 0;

      if (steps[i].note != NULL)
        demo_note ("%s", steps[i].note);
      status = demo_pop3_command (pop3, label, steps[i].command, steps[i].multiline);
      if (status != NULL && !stat_seen && strcmp (steps[i].command, "STAT") == 0
          && sscanf (status, "+OK %u", &count) == 1)
        {
          stat_seen = TRUE;
          if (out_stat != NULL)
            *out_stat = count;
        }
    }
}

/* --- IMAP (through popgate's IMAP front end) --------------------------------------------- */

static gboolean
demo_imap_send (PgTestImap *imap, const char *shown, const char *line)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *raw = g_strconcat (line, "\r\n", NULL);

  printf ("   IMAP C: %s\n", shown != NULL ? shown : line);
  fflush (stdout);
  if (!pg_test_imap_send_raw (imap, raw, strlen (raw), &error))
    {
      demo_fail ("IMAP send", error);
      return FALSE;
    }
  return TRUE;
}

static gboolean
demo_imap_is_expunge (const char *line)
{
  return g_str_has_prefix (line, "* ") && g_str_has_suffix (line, " EXPUNGE");
}

/* Print server lines until one starts with `prefix` (or, for "* EXPUNGE", is an untagged
 * EXPUNGE). Bounded in lines and time. The matching line goes to *out_line, the first
 * untagged EXPUNGE on the way to *out_expunge (both optional, *out_expunge NULL before).
 * With out_timed_out, a read timeout is not a failure: FALSE with *out_timed_out TRUE. */
static gboolean
demo_imap_read_until (PgTestImap *imap, const char *prefix, gchar **out_line, gchar **out_expunge,
                      gboolean *out_timed_out)
{
  gint64 deadline = g_get_monotonic_time () + DEMO_READ_DEADLINE_US;

  for (guint n = 0; n < DEMO_MAX_IMAP_LINES && g_get_monotonic_time () < deadline; n++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *line = pg_test_imap_read_line (imap, &error);
      gboolean match;

      if (line == NULL && out_timed_out != NULL
          && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
        {
          *out_timed_out = TRUE;
          return FALSE;
        }
      if (line == NULL)
        {
          demo_fail ("IMAP read", error);
          return FALSE;
        }
      printf ("   IMAP S: %s\n", line);
      fflush (stdout);
      if (out_expunge != NULL && *out_expunge == NULL && demo_imap_is_expunge (line))
        *out_expunge = g_strdup (line);
      if (strcmp (prefix, "* EXPUNGE") == 0)
        match = demo_imap_is_expunge (line);
      else
        match = g_str_has_prefix (line, prefix);
      if (match)
        {
          if (out_line != NULL)
            *out_line = g_steal_pointer (&line);
          return TRUE;
        }
    }
  demo_fail ("IMAP: no reply in time", NULL);
  return FALSE;
}

/* A command and its reply up to the tagged line, which must be OK. */
static gboolean
demo_imap_command (PgTestImap *imap, const char *tag, const char *command)
{
  g_autofree gchar *line = g_strdup_printf ("%s %s", tag, command);
  g_autofree gchar *tagged_prefix = g_strdup_printf ("%s ", tag);
  g_autofree gchar *tagged = NULL;
  g_autofree gchar *ok = g_strdup_printf ("%s OK", tag);

  if (!demo_imap_send (imap, NULL, line)
      || !demo_imap_read_until (imap, tagged_prefix, &tagged, NULL, NULL))
    return FALSE;
  if (!g_str_has_prefix (tagged, ok))
    {
      demo_fail ("IMAP command refused", NULL);
      return FALSE;
    }
  return TRUE;
}

/* Connect to popgate's IMAP front end and LOGIN, the password as a literal (masked). */
static PgTestImap *
demo_imap_login (PgTestPopgate *popgate)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = pg_test_imap_connect_full (popgate->host, popgate->imap_port, NULL,
                                                           NULL, DEMO_IMAP_TIMEOUT_S, &error);
  g_autofree gchar *login
      = g_strdup_printf ("a1 LOGIN " DEMO_USER " {%zu}", strlen (DEMO_PASSWORD));
  g_autofree gchar *tagged = NULL;

  if (imap == NULL)
    {
      demo_fail ("IMAP connect", error);
      return NULL;
    }
  printf ("   IMAP S: %s\n", pg_test_imap_get_greeting (imap));
  if (!demo_imap_send (imap, NULL, login) || !demo_imap_read_until (imap, "+", NULL, NULL, NULL)
      || !demo_imap_send (imap, "********", DEMO_PASSWORD)
      || !demo_imap_read_until (imap, "a1 ", &tagged, NULL, NULL))
    return NULL;
  if (!g_str_has_prefix (tagged, "a1 OK"))
    {
      demo_fail ("IMAP LOGIN refused", NULL);
      return NULL;
    }
  return g_steal_pointer (&imap);
}

/* --- popgate's audit trace --------------------------------------------------------------- */

/* Print popgate's trace lines ("[sid] trace: ...", from the "[sid]" on) of every session
 * that traced `needle` (e.g. "C: DELE"); with `from_needle`, only from that line on. */
static void
demo_show_trace (PgTestPopgate *popgate, const char *needle, gboolean from_needle)
{
  g_autofree gchar *log = pg_test_popgate_read_log (popgate);
  g_auto (GStrv) lines = g_strsplit (log != NULL ? log : "", "\n", -1);
  /* sid ("[n]") -> the index of its first line holding needle */
  g_autoptr (GHashTable) sids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  guint shown = 0;

  for (guint pass = 0; pass < 2; pass++)
    for (guint i = 0; lines[i] != NULL; i++)
      {
        const char *trace = strstr (lines[i], "] trace: ");
        const char *open = NULL;
        g_autofree gchar *sid = NULL;
        gpointer first = NULL;

        if (trace == NULL)
          continue;
        for (const char *p = trace; p >= lines[i]; p--)
          if (*p == '[')
            {
              open = p;
              break;
            }
        if (open == NULL)
          continue;
        sid = g_strndup (open, (gsize) (trace - open + 1));
        if (pass == 0)
          {
            if (strstr (trace, needle) != NULL && !g_hash_table_contains (sids, sid))
              g_hash_table_insert (sids, g_steal_pointer (&sid), GUINT_TO_POINTER (i));
          }
        else if (g_hash_table_lookup_extended (sids, sid, NULL, &first)
                 && (!from_needle || i >= GPOINTER_TO_UINT (first)))
          {
            printf ("   %s\n", open);
            shown++;
          }
      }
  if (shown == 0)
    demo_fail ("no trace lines in popgate's log", NULL);
  fflush (stdout);
}

/* --- set-up ------------------------------------------------------------------------------ */

static void
demo_show_upstream (PgTestDovecot *dovecot, const char *when, guint *out_count)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap
      = pg_test_imap_connect (dovecot->host, dovecot->imap_port, NULL, &error);
  g_autoptr (GArray) uids = NULL;
  g_autoptr (GString) list = g_string_new (NULL);

  if (imap == NULL || !pg_test_imap_login (imap, DEMO_USER, DEMO_PASSWORD, &error)
      || !pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error)
      || (uids = pg_test_imap_uid_search_all (imap, &error)) == NULL)
    {
      demo_fail ("IMAP check of Dovecot", error);
      return;
    }
  for (guint i = 0; i < uids->len; i++)
    g_string_append_printf (list, " %u", g_array_index (uids, guint32, i));
  printf ("   Dovecot (%s): INBOX holds %u messages, UIDs%s\n", when, uids->len, list->str);
  fflush (stdout);
  if (out_count != NULL)
    *out_count = uids->len;
}

static gint
demo_compare_names (gconstpointer a, gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

static gboolean
demo_seed (PgTestDovecot *dovecot, const char *mail_dir, GError **error)
{
  g_autoptr (GDir) dir = g_dir_open (mail_dir, 0, error);
  g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
  const char *name;

  if (dir == NULL)
    return FALSE;
  while ((name = g_dir_read_name (dir)) != NULL)
    if (g_str_has_suffix (name, ".eml"))
      g_ptr_array_add (names, g_strdup (name));
  g_ptr_array_sort (names, demo_compare_names);
  for (guint i = 0; i < names->len; i++)
    {
      g_autofree gchar *path = g_build_filename (mail_dir, g_ptr_array_index (names, i), NULL);
      g_autofree gchar *data = NULL;
      gsize len = 0;

      if (!g_file_get_contents (path, &data, &len, error)
          || !pg_test_dovecot_append (dovecot, DEMO_USER, "INBOX", data, len, error))
        return FALSE;
    }
  printf ("   seeded %u messages from %s\n", names->len, mail_dir);
  return TRUE;
}

/* A popgate in front of dovecot with the given delete policy, the audit trace and the
 * status page on; `out_status_port` is the page's port. */
static PgTestPopgate *
demo_start_popgate (PgTestDovecot *dovecot, const char *delete_policy, guint16 *out_status_port,
                    GError **error)
{
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (dovecot, "implicit", error);
  g_autofree gchar *status_listen = NULL;
  guint16 status_port;

  if (popgate == NULL)
    return NULL;
  status_port = pg_test_free_port ("127.0.0.1", error);
  if (status_port == 0)
    return NULL;
  status_listen = g_strdup_printf ("127.0.0.1:%u", status_port);
  pg_test_popgate_set (popgate, "pop3", "delete", delete_policy);
  pg_test_popgate_set (popgate, "log", "trace", "true");
  pg_test_popgate_set (popgate, "status", "listen", status_listen);
  if (!pg_test_popgate_start (popgate, error))
    return NULL;
  printf ("   popgate (delete = %s): POP3 127.0.0.1:%u (POP3S %u), IMAP 127.0.0.1:%u "
          "(IMAPS %u)\n"
          "     upstream imaps://127.0.0.1:%u, config %s\n"
          "     live status page: http://127.0.0.1:%u/\n",
          delete_policy, popgate->pop3_port, popgate->pop3s_port, popgate->imap_port,
          popgate->imaps_port, dovecot->imaps_port, popgate->config_file, status_port);
  *out_status_port = status_port;
  fflush (stdout);
  return g_steal_pointer (&popgate);
}

/* --- the scenes -------------------------------------------------------------------------- */

/* Dovecot pushes changes to an IDLEing client when inotify tells it of them; without an
 * inotify instance (fs.inotify.max_user_instances is per user, and every test Dovecot's
 * imap processes run as nobody: a busy machine runs out) it only re-checks every
 * mailbox_idle_check_interval, 30 s. Say which it was rather than wait that long. */
static void
demo_imap_explain_no_push (PgTestDovecot *dovecot)
{
  g_autofree gchar *log = pg_test_dovecot_read_log (dovecot);

  if (log != NULL && strstr (log, "Inotify instance limit") != NULL)
    demo_note ("nothing within %d s: Dovecot found no free inotify instance on this machine "
               "(fs.inotify.max_user_instances), so it re-checks an IDLEing mailbox only every "
               "30 s. Ending IDLE and a NOOP make it report at once:",
               DEMO_IMAP_TIMEOUT_S);
  else
    demo_note ("nothing within %d s (a busy machine?); ending IDLE and a NOOP make Dovecot "
               "report at once:",
               DEMO_IMAP_TIMEOUT_S);
}

/* POP3 DELE+QUIT through the `expunge` popgate while an IMAP client IDLEs. */
static void
demo_scene_expunge (PgTestDovecot *dovecot, PgTestPopgate *popgate)
{
  static const DemoStep steps[] = {
    { "CAPA", TRUE, "what this session supports" },
    { "USER " DEMO_USER, FALSE, NULL },
    { "PASS " DEMO_PASSWORD, FALSE,
      "popgate logs in upstream over TLS, SELECTs INBOX and "
      "snapshots (UID, size)" },
    { "STAT", FALSE, NULL },
    { "LIST", TRUE, NULL },
    { "UIDL", TRUE, "UIDL = UID and UIDVALIDITY in hex, the same strings Dovecot's POP3 gives" },
    { "TOP 2 1", TRUE, "headers and one body line (fetched without the whole body)" },
    { "RETR 2", TRUE, "streamed from UID FETCH BODY.PEEK[], dot-stuffed" },
    { "DELE 1", FALSE, "only marks it: nothing changes upstream before QUIT" },
    { "QUIT", FALSE,
      "UPDATE: UID STORE +FLAGS.SILENT (\\Deleted), then UID EXPUNGE of "
      "exactly that UID" },
  };
  g_autoptr (PgTestImap) imap = NULL;
  g_autofree gchar *expunge = NULL;
  guint before = 0, after = 0;
  gboolean timed_out = FALSE;

  demo_say ("Scene 1: POP3 DELE+QUIT while an IMAP client IDLEs (both through popgate, "
            "delete = expunge)");
  demo_show_upstream (dovecot, "before", &before);
  demo_note ("an IMAP client logs in through popgate's IMAP front end, SELECTs INBOX, IDLEs");
  imap = demo_imap_login (popgate);
  if (imap == NULL || !demo_imap_command (imap, "s1", "SELECT INBOX")
      || !demo_imap_send (imap, NULL, "i1 IDLE")
      || !demo_imap_read_until (imap, "+", NULL, NULL, NULL))
    return;

  demo_note ("meanwhile a POP3 client downloads and deletes message 1");
  demo_pop3_session (popgate, "POP3", steps, G_N_ELEMENTS (steps), NULL);
  if (demo_failed)
    return;

  demo_note ("the IDLEing IMAP client is told without asking: \\Seen on the message RETR'd (2), "
             "and message 1 is gone");
  if (!demo_imap_read_until (imap, "* EXPUNGE", NULL, &expunge, &timed_out) && !timed_out)
    return;
  if (timed_out)
    demo_imap_explain_no_push (dovecot);
  if (!demo_imap_send (imap, NULL, "DONE")
      || !demo_imap_read_until (imap, "i1 ", NULL, &expunge, NULL))
    return;
  /* NOOP makes Dovecot sync the mailbox now: the EXPUNGE comes before its tagged OK. */
  if (expunge == NULL
      && (!demo_imap_send (imap, NULL, "n1 NOOP")
          || !demo_imap_read_until (imap, "n1 ", NULL, &expunge, NULL)))
    return;
  if (!demo_imap_command (imap, "l1", "LOGOUT"))
    return;
  demo_show_upstream (dovecot, "after QUIT", &after);
  if (g_strcmp0 (expunge, "* 1 EXPUNGE") != 0 || after + 1 != before)
    demo_fail ("DELE 1 + QUIT did not expunge exactly message 1", NULL);

  demo_note ("popgate's audit trace of that POP3 session ([log] trace = true or --trace):");
  demo_show_trace (popgate, "C: DELE", FALSE);
}

/* Client tags under `keep`: demo#laptop hides a message for itself only. */
static void
demo_scene_keep (PgTestDovecot *dovecot, PgTestPopgate *popgate)
{
  static const DemoStep laptop[] = {
    { "USER " DEMO_USER "#laptop", FALSE, "#laptop names this client; upstream login is demo" },
    { "PASS " DEMO_PASSWORD, FALSE, NULL },
    { "STAT", FALSE, NULL },
    { "UIDL", TRUE, NULL },
    { "DELE 1", FALSE, NULL },
    { "QUIT", FALSE,
      "UPDATE under keep: nothing is sent upstream; the UID is stored as "
      "deleted for (demo, INBOX, UIDVALIDITY, laptop)" },
  };
  static const DemoStep laptop_again[] = {
    { "USER " DEMO_USER "#laptop", FALSE, NULL },
    { "PASS " DEMO_PASSWORD, FALSE, NULL },
    { "STAT", FALSE, "the laptop no longer sees it, in this and every later session" },
    { "UIDL", TRUE, NULL },
    { "QUIT", FALSE, NULL },
  };
  static const DemoStep phone[] = {
    { "USER " DEMO_USER "#phone", FALSE, NULL },
    { "PASS " DEMO_PASSWORD, FALSE, NULL },
    { "STAT", FALSE, "the phone still sees every message" },
    { "LIST", TRUE, NULL },
    { "UIDL", TRUE, NULL },
    { "QUIT", FALSE, NULL },
  };
  g_autoptr (PgTestImap) imap = NULL;
  guint before = 0, laptop_after = 0, phone_count = 0, upstream_count = 0;

  demo_say ("Scene 2: delete = keep with client tags (a second popgate)");
  demo_note ("demo#laptop deletes message 1 — for itself only");
  demo_pop3_session (popgate, "POP3 #laptop", laptop, G_N_ELEMENTS (laptop), &before);
  if (demo_failed)
    return;
  demo_note ("demo#laptop logs in again");
  demo_pop3_session (popgate, "POP3 #laptop", laptop_again, G_N_ELEMENTS (laptop_again),
                     &laptop_after);
  if (demo_failed)
    return;
  demo_note ("demo#phone, another client of the same mailbox");
  demo_pop3_session (popgate, "POP3 #phone", phone, G_N_ELEMENTS (phone), &phone_count);
  if (demo_failed)
    return;

  demo_note ("and an IMAP client (through this popgate's IMAP front end) still sees it too");
  imap = demo_imap_login (popgate);
  if (imap == NULL || !demo_imap_command (imap, "s1", "EXAMINE INBOX")
      || !demo_imap_command (imap, "u1", "UID SEARCH ALL")
      || !demo_imap_command (imap, "l1", "LOGOUT"))
    return;
  demo_show_upstream (dovecot, "after", &upstream_count);

  printf ("   => laptop %u -> %u messages, phone %u, Dovecot %u\n", before, laptop_after,
          phone_count, upstream_count);
  if (before == 0 || laptop_after + 1 != before || phone_count != before
      || upstream_count != before)
    demo_fail ("keep did not behave as described", NULL);

  demo_note ("popgate's audit trace of the laptop's DELE session, from the DELE on:");
  demo_show_trace (popgate, "C: DELE", TRUE);
}

/* --- scene 3: an OAuth2-only upstream account -------------------------------------------- */

static gboolean
demo_write_private (const char *path, const char *text, GError **error)
{
  return g_file_set_contents_full (path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, error);
}

static void
demo_print_lines (const char *text)
{
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);

  for (guint i = 0; lines[i] != NULL; i++)
    if (lines[i][0] != '\0')
      printf ("   %s\n", lines[i]);
  fflush (stdout);
}

/* `popgate --oauth2-authorize`, shown as the user sees it; the demo approves the code at
 * the authorization server as the user would in a browser. */
static gboolean
demo_oauth2_authorize (PgTestOAuth2 *oauth2, PgTestPopgate *popgate)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *out_file = g_build_filename (popgate->dir, "authorize.out", NULL);
  g_autofree gchar *output = NULL;
  g_autofree gchar *code = NULL;
  g_autoptr (PgTestProcess) process = NULL;
  const char *argv[] = { g_getenv ("POPGATE_BIN"), "--config",    popgate->config_file,
                         "--oauth2-authorize",     DEMO_OLD_USER, NULL };
  gint64 deadline = g_get_monotonic_time () + DEMO_WAIT_MS * 1000;
  gsize printed = 0;

  printf ("   $ popgate --config popgate.conf --oauth2-authorize " DEMO_OLD_USER "\n");
  fflush (stdout);
  if (!pg_test_popgate_write_config (popgate, &error)
      || (process = pg_test_process_spawn (argv, out_file, &error)) == NULL)
    {
      demo_fail ("--oauth2-authorize", error);
      return FALSE;
    }
  while (code == NULL && g_get_monotonic_time () < deadline
         && !pg_test_process_has_exited (process))
    {
      g_autofree gchar *text = pg_test_read_file (out_file);
      const char *at = strstr (text, "enter the code ");

      if (at != NULL && strchr (at, '\n') != NULL)
        code = g_strndup (at + strlen ("enter the code "),
                          strcspn (at + strlen ("enter the code "), "\n"));
      else
        pg_test_process_wait (process, 20); /* bounded; also notices an exit */
    }
  if (code == NULL)
    {
      demo_fail ("--oauth2-authorize printed no user code", NULL);
      return FALSE;
    }
  output = pg_test_read_file (out_file);
  printed = strlen (output);
  demo_print_lines (output);
  demo_note ("the user opens that page and approves code %s (the demo does it over HTTP)", code);
  if (!pg_test_oauth2_approve_device (oauth2, code, DEMO_USER, &error))
    {
      demo_fail ("approving the user code", error);
      return FALSE;
    }
  if (!pg_test_process_wait (process, DEMO_WAIT_MS)
      || pg_test_process_get_wait_status (process) != 0)
    {
      demo_fail ("--oauth2-authorize did not succeed", NULL);
      return FALSE;
    }
  g_free (output);
  output = pg_test_read_file (out_file);
  demo_print_lines (output + MIN (printed, strlen (output)));
  return TRUE;
}

/* An old POP3 client with a plain local password in front of an account that takes only
 * OAuth2 tokens (as Microsoft 365 and Gmail do). */
static void
demo_scene_oauth2 (PgTestDovecot *dovecot, PgTestOAuth2 *oauth2)
{
  static const DemoStep steps[] = {
    { "USER " DEMO_OLD_USER, FALSE, NULL },
    { "PASS " DEMO_OLD_PASSWORD, FALSE,
      "popgate checks the local password itself, gets an access token with the refresh "
      "token and logs in upstream with AUTHENTICATE OAUTHBEARER" },
    { "STAT", FALSE, NULL },
    { "UIDL", TRUE, NULL },
    { "QUIT", FALSE, NULL },
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPopgate) popgate = pg_test_popgate_new (dovecot, "implicit", &error);
  g_autofree gchar *token_file = NULL;
  g_autofree gchar *accounts = NULL;
  g_autofree gchar *log = NULL;
  g_autofree gchar *refresh_token = NULL;
  guint count = 0;

  demo_say ("Scene 3: an old POP3 client, a plain local password, an OAuth2-only mailbox");
  demo_note ("a local OAuth 2.0 server (Authlib) stands in for Microsoft's or Google's; Dovecot "
             "asks it about every token (RFC 7662)");
  if (popgate == NULL)
    {
      demo_fail ("popgate", error);
      return;
    }
  token_file = g_build_filename (popgate->dir, "demo.token", NULL);
  accounts = g_build_filename (popgate->dir, "accounts", NULL);
  if (!demo_write_private (token_file, "", &error)
      || !demo_write_private (
          accounts,
          "# local-user local-secret upstream upstream-user credential\n" DEMO_OLD_USER
          " {PLAIN}" DEMO_OLD_PASSWORD " default " DEMO_USER " oauth2:demo.token\n",
          &error))
    {
      demo_fail ("accounts file", error);
      return;
    }
  printf ("   accounts: " DEMO_OLD_USER "  {PLAIN}" DEMO_OLD_PASSWORD "  default  " DEMO_USER
          "  oauth2:demo.token\n");
  pg_test_popgate_set (popgate, "upstream", "auth", "oauth2");
  pg_test_popgate_set (popgate, "upstream", "oauth2_token_url", oauth2->token_url);
  pg_test_popgate_set (popgate, "upstream", "oauth2_device_url", oauth2->device_url);
  pg_test_popgate_set (popgate, "upstream", "oauth2_client_id", DEMO_OAUTH2_CLIENT);
  pg_test_popgate_set (popgate, "accounts", "file", accounts);
  pg_test_popgate_set (popgate, "pop3", "delete", "keep");
  pg_test_popgate_set (popgate, "log", "trace", "true");
  pg_test_popgate_add_arg (popgate, "-v");

  demo_note ("once: obtain the account's first refresh token (device grant, RFC 8628)");
  if (!demo_oauth2_authorize (oauth2, popgate))
    return;
  if (!pg_test_popgate_start (popgate, &error))
    {
      demo_fail ("popgate", error);
      return;
    }
  demo_pop3_session (popgate, "POP3 (old client)", steps, G_N_ELEMENTS (steps), &count);
  if (demo_failed)
    return;
  if (count == 0)
    demo_fail ("the OAuth2 account showed no messages", NULL);
  demo_note ("popgate's log and trace of that login:");
  log = pg_test_popgate_read_log (popgate);
  {
    g_auto (GStrv) lines = g_strsplit (log, "\n", -1);
    for (guint i = 0; lines[i] != NULL; i++)
      if (strstr (lines[i], "oauth2 refresh") != NULL || strstr (lines[i], "AUTHENTICATE") != NULL)
        printf ("   %s\n", lines[i]);
  }
  refresh_token = g_strstrip (pg_test_read_file (token_file));
  if (strlen (refresh_token) < 16 || strstr (log, refresh_token) != NULL
      || strstr (log, DEMO_OLD_PASSWORD) != NULL)
    demo_fail ("a token or the local password reached popgate's log", NULL);
  else
    printf ("   (checked: neither the refresh token nor the local password is in the log)\n");
  fflush (stdout);
  if (!pg_test_popgate_stop (popgate))
    demo_failed = TRUE;
}

static guint16 demo_status_ports[2]; /* the status pages: expunge, keep */

/* The status page answers and lists sessions as JSON (what the browser page reads). */
static void
demo_check_status (guint16 port)
{
  g_autoptr (SoupSession) session
      = soup_session_new_with_options ("proxy-resolver", NULL, "timeout", 10, NULL);
  g_autofree gchar *url = g_strdup_printf ("http://127.0.0.1:%u/api/sessions", port);
  g_autoptr (SoupMessage) msg = soup_message_new ("GET", url);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = soup_session_send_and_read (session, msg, NULL, &error);

  if (body == NULL || soup_message_get_status (msg) != SOUP_STATUS_OK
      || g_strstr_len (g_bytes_get_data (body, NULL), (gssize) g_bytes_get_size (body),
                       "\"sessions\"")
             == NULL)
    demo_fail ("the status page did not answer /api/sessions", error);
}

static gboolean
demo_quit_cb (gpointer user_data)
{
  g_main_loop_quit (user_data);
  return G_SOURCE_REMOVE;
}

static void
demo_print_how_to_connect (PgTestPopgate *expunge, PgTestPopgate *keep)
{
  demo_say ("popgate is running; point a real POP3 or IMAP client at it");
  printf ("   watch the sessions live: http://127.0.0.1:%u/ (delete = expunge), "
          "http://127.0.0.1:%u/ (delete = keep)\n",
          demo_status_ports[0], demo_status_ports[1]);
  printf ("   user %s, password %s (a throwaway demo account; user#tag names a client)\n",
          DEMO_USER, DEMO_PASSWORD);
  for (guint i = 0; i < 2; i++)
    {
      PgTestPopgate *popgate = i == 0 ? expunge : keep;

      printf ("   popgate with delete = %-8s POP3 127.0.0.1:%u (STLS), POP3S %u, "
              "IMAP 127.0.0.1:%u (STARTTLS), IMAPS %u\n"
              "                                   trace in %s\n",
              i == 0 ? "expunge:" : "keep:", popgate->pop3_port, popgate->pop3s_port,
              popgate->imap_port, popgate->imaps_port, popgate->log_file);
    }
  printf ("   e.g.  python3 -c \"import poplib; p = poplib.POP3('127.0.0.1', %u); "
          "p.user('%s#laptop'); p.pass_('%s'); print(p.stat()); p.quit()\"\n"
          "         python3 -c \"import imaplib; m = imaplib.IMAP4('127.0.0.1', %u); "
          "m.login('%s', '%s'); print(m.select('INBOX')); m.logout()\"\n"
          "   TLS (POP3S, IMAPS, STLS, STARTTLS) uses test CAs: %s, %s\n"
          "   Ctrl-C stops popgate and Dovecot.\n",
          keep->pop3_port, DEMO_USER, DEMO_PASSWORD, expunge->imap_port, DEMO_USER, DEMO_PASSWORD,
          expunge->certs->ca_file, keep->certs->ca_file);
  fflush (stdout);
}

int
main (int argc, char **argv)
{
  gboolean non_interactive = FALSE;
  const GOptionEntry entries[] = {
    { "non-interactive", 0, 0, G_OPTION_ARG_NONE, &non_interactive,
      "Run the scripted scenes and exit (CI)", NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) context = g_option_context_new ("- popgate demo");
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestDovecot) dovecot = NULL;
  g_autoptr (PgTestOAuth2) oauth2 = NULL;
  PgTestDovecotOptions dovecot_options = { 0 };
  g_autoptr (PgTestPopgate) expunge = NULL;
  g_autoptr (PgTestPopgate) keep = NULL;
  const char *mail_dir;

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "popgate-demo: %s\n", error->message);
      return 2;
    }
  if (!isatty (STDIN_FILENO) || g_getenv ("CI") != NULL)
    non_interactive = TRUE;
  mail_dir = g_getenv ("POPGATE_DEMO_MAIL");
  if (mail_dir == NULL)
    {
      fprintf (stderr, "popgate-demo: run it through scripts/demo.sh (POPGATE_DEMO_MAIL)\n");
      return 2;
    }

  demo_say ("Starting a throwaway OAuth 2.0 server and Dovecot (IMAP upstream) on 127.0.0.1");
  oauth2 = pg_test_oauth2_new (NULL, &error);
  if (oauth2 == NULL
      || !pg_test_oauth2_add_client (oauth2, DEMO_OAUTH2_CLIENT, NULL, NULL, NULL, &error)
      || !pg_test_oauth2_start (oauth2, &error))
    {
      fprintf (stderr, "popgate-demo: cannot start the OAuth 2.0 server: %s\n", error->message);
      return 1;
    }
  printf ("   OAuth 2.0 server on 127.0.0.1:%u (Authlib), its temp dir %s\n", oauth2->port,
          oauth2->dir);
  /* The same Dovecot takes the demo user's password (scenes 1 and 2) and tokens (3). */
  dovecot_options.oauth2_introspection_url = oauth2->introspection_url;
  dovecot = pg_test_dovecot_new (&dovecot_options, &error);
  if (dovecot == NULL || !pg_test_dovecot_add_user (dovecot, DEMO_USER, DEMO_PASSWORD, &error)
      || !pg_test_dovecot_start (dovecot, &error))
    {
      fprintf (stderr, "popgate-demo: cannot start Dovecot: %s\n", error->message);
      return 1;
    }
  printf ("   Dovecot IMAP on 127.0.0.1:%u, user \"%s\", its temp dir %s\n", dovecot->imap_port,
          DEMO_USER, dovecot->dir);
  if (!demo_seed (dovecot, mail_dir, &error))
    {
      fprintf (stderr, "popgate-demo: seeding from %s: %s\n", mail_dir, error->message);
      return 1;
    }

  demo_say ("Starting two popgates in front of it (audit trace on)");
  expunge = demo_start_popgate (dovecot, "expunge", &demo_status_ports[0], &error);
  if (expunge != NULL)
    keep = demo_start_popgate (dovecot, "keep", &demo_status_ports[1], &error);
  if (keep == NULL)
    {
      fprintf (stderr, "popgate-demo: cannot start popgate: %s\n", error->message);
      return 1;
    }

  if (!non_interactive)
    {
      char line[16];

      demo_say ("Open a status page above in a browser to watch the scenes live; "
                "press Enter to start them");
      fflush (stdout);
      if (fgets (line, sizeof line, stdin) == NULL)
        printf ("\n");
    }
  demo_scene_expunge (dovecot, expunge);
  if (!demo_failed)
    demo_scene_keep (dovecot, keep);
  if (!demo_failed)
    demo_scene_oauth2 (dovecot, oauth2);

  if (!demo_failed)
    {
      g_autofree gchar *log_expunge = pg_test_popgate_read_log (expunge);
      g_autofree gchar *log_keep = pg_test_popgate_read_log (keep);

      if (log_expunge == NULL || log_keep == NULL || strstr (log_expunge, DEMO_PASSWORD) != NULL
          || strstr (log_keep, DEMO_PASSWORD) != NULL)
        demo_fail ("the password reached popgate's log", NULL);
      else
        printf ("\n   (checked: the password appears in neither popgate's log nor trace)\n");
    }

  if (!demo_failed)
    {
      demo_check_status (demo_status_ports[0]);
      demo_check_status (demo_status_ports[1]);
    }

  if (!demo_failed && !non_interactive)
    {
      g_autoptr (GMainLoop) loop = g_main_loop_new (NULL, FALSE);

      demo_print_how_to_connect (expunge, keep);
      g_unix_signal_add (SIGINT, demo_quit_cb, loop);
      g_unix_signal_add (SIGTERM, demo_quit_cb, loop);
      g_main_loop_run (loop);
    }

  demo_say ("Stopping popgate and Dovecot");
  if (!pg_test_popgate_stop (keep))
    demo_failed = TRUE;
  if (!pg_test_popgate_stop (expunge))
    demo_failed = TRUE;
  printf ("%s\n", demo_failed ? "demo: FAILED" : "demo: ok");
  return demo_failed ? 1 : 0;
}
