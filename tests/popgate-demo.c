/* popgate-demo — the README's first command: a throwaway Dovecot seeded from data/demo-mail,
 * popgate in front of it, and a narrated POP3 session through popgate, with the mailbox
 * checked over IMAP before and after. Interactive by default: popgate then stays up and the
 * demo prints how to point a real POP3 client at it, until Ctrl-C. With --non-interactive
 * (or when stdin is not a terminal, as in CI) it exits by itself.
 *
 * It reuses the test fixtures (tests/pg-test-*.c): same Dovecot, same real popgate binary.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"

#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DEMO_USER "demo"
#define DEMO_PASSWORD "demo-password"

static gboolean demo_failed = FALSE;

static void
demo_say (const char *format, ...) G_GNUC_PRINTF (1, 2);

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

/* Print a server reply, indenting each line; long bodies are cut for the screen. */
static void
demo_print_reply (const char *status, GBytes *body)
{
  printf ("   S: %s\n", status);
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
              printf ("   S: … (%" G_GSIZE_FORMAT " octets in all)\n", len);
              break;
            }
          printf ("   S: %s%s\n", lines[i][0] == '.' ? "." : "", lines[i]);
        }
      printf ("   S: .\n");
    }
  fflush (stdout);
}

/* Send one command, show it (password masked) and its reply. */
static gchar *
demo_command (PgTestPop3 *pop3, const char *command, gboolean multiline)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = NULL;
  gchar *status;

  if (g_str_has_prefix (command, "PASS "))
    printf ("   C: PASS ********\n");
  else
    printf ("   C: %s\n", command);
  status = pg_test_pop3_command (pop3, command, &error);
  if (status == NULL)
    {
      printf ("   !! %s\n", error != NULL ? error->message : "connection closed");
      demo_failed = TRUE;
      return NULL;
    }
  if (multiline && g_str_has_prefix (status, "+OK"))
    {
      body = pg_test_pop3_read_multiline (pop3, &error);
      if (body == NULL)
        demo_failed = TRUE;
    }
  demo_print_reply (status, body);
  return status;
}

static void
demo_show_upstream (PgTestDovecot *dovecot, const char *when)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap = pg_test_imap_connect (dovecot->host, dovecot->imap_port, NULL,
                                                      &error);
  g_autoptr (GArray) uids = NULL;
  g_autoptr (GString) list = g_string_new (NULL);

  if (imap == NULL || !pg_test_imap_login (imap, DEMO_USER, DEMO_PASSWORD, &error)
      || !pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error)
      || (uids = pg_test_imap_uid_search_all (imap, &error)) == NULL)
    {
      printf ("   !! IMAP check failed: %s\n", error != NULL ? error->message : "?");
      demo_failed = TRUE;
      return;
    }
  for (guint i = 0; i < uids->len; i++)
    g_string_append_printf (list, " %u", g_array_index (uids, guint32, i));
  printf ("   IMAP (%s): INBOX holds %u messages, UIDs%s\n", when, uids->len, list->str);
  fflush (stdout);
}

static gint
demo_compare_names (gconstpointer a, gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

static gboolean
demo_quit_cb (gpointer user_data)
{
  g_main_loop_quit (user_data);
  return G_SOURCE_REMOVE;
}

int
main (int argc, char **argv)
{
  gboolean non_interactive = FALSE;
  const GOptionEntry entries[] = {
    { "non-interactive", 0, 0, G_OPTION_ARG_NONE, &non_interactive,
      "Run the scripted session and exit (CI)", NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) context = g_option_context_new ("- popgate demo");
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestDovecot) dovecot = NULL;
  g_autoptr (PgTestPopgate) popgate = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;
  g_autoptr (GDir) dir = NULL;
  g_autofree gchar *mail_dir = NULL;
  const char *name;
  guint seeded = 0;

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "popgate-demo: %s\n", error->message);
      return 2;
    }
  if (!isatty (STDIN_FILENO) || g_getenv ("CI") != NULL)
    non_interactive = TRUE;
  mail_dir = g_strdup (g_getenv ("POPGATE_DEMO_MAIL"));
  if (mail_dir == NULL)
    {
      fprintf (stderr, "popgate-demo: run it through scripts/demo.sh (POPGATE_DEMO_MAIL)\n");
      return 2;
    }

  demo_say ("Starting a throwaway Dovecot (IMAP upstream) on 127.0.0.1");
  dovecot = pg_test_dovecot_new (NULL, &error);
  if (dovecot == NULL || !pg_test_dovecot_add_user (dovecot, DEMO_USER, DEMO_PASSWORD, &error)
      || !pg_test_dovecot_start (dovecot, &error))
    {
      fprintf (stderr, "popgate-demo: cannot start Dovecot: %s\n", error->message);
      return 1;
    }
  printf ("   Dovecot IMAP on 127.0.0.1:%u, user \"%s\", its temp dir %s\n", dovecot->imap_port,
          DEMO_USER, dovecot->dir);

  dir = g_dir_open (mail_dir, 0, &error);
  if (dir == NULL)
    {
      fprintf (stderr, "popgate-demo: %s\n", error->message);
      return 1;
    }
  {
    g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
    while ((name = g_dir_read_name (dir)) != NULL)
      if (g_str_has_suffix (name, ".eml"))
        g_ptr_array_add (names, g_strdup (name));
    g_ptr_array_sort (names, demo_compare_names);
    for (guint i = 0; i < names->len; i++)
      {
        g_autofree gchar *path = g_build_filename (mail_dir, g_ptr_array_index (names, i), NULL);
        g_autofree gchar *data = NULL;
        gsize len = 0;
        if (!g_file_get_contents (path, &data, &len, &error)
            || !pg_test_dovecot_append (dovecot, DEMO_USER, "INBOX", data, len, &error))
          {
            fprintf (stderr, "popgate-demo: seeding %s: %s\n", path, error->message);
            return 1;
          }
        seeded++;
      }
  }
  printf ("   seeded %u messages from %s\n", seeded, mail_dir);

  demo_say ("Starting popgate in front of it");
  popgate = pg_test_popgate_new (dovecot, "implicit", &error);
  if (popgate == NULL)
    {
      fprintf (stderr, "popgate-demo: %s\n", error->message);
      return 1;
    }
  pg_test_popgate_set (popgate, "pop3", "delete", "expunge");
  if (!pg_test_popgate_start (popgate, &error))
    {
      fprintf (stderr, "popgate-demo: cannot start popgate: %s\n", error->message);
      return 1;
    }
  printf ("   popgate POP3 on 127.0.0.1:%u (POP3S %u), upstream imaps://127.0.0.1:%u, "
          "config %s\n",
          popgate->pop3_port, popgate->pop3s_port, dovecot->imaps_port, popgate->config_file);

  demo_show_upstream (dovecot, "before");

  demo_say ("A POP3 session through popgate (C: client, S: popgate)");
  pop3 = pg_test_pop3_connect (popgate->host, popgate->pop3_port, NULL, &error);
  if (pop3 == NULL)
    {
      fprintf (stderr, "popgate-demo: %s\n", error->message);
      return 1;
    }
  printf ("   S: %s\n", pg_test_pop3_get_greeting (pop3));
  {
    const struct
    {
      const char *command;
      gboolean multiline;
      const char *note;
    } script[] = {
      { "CAPA", TRUE, "what this session supports" },
      { "USER " DEMO_USER, FALSE, NULL },
      { "PASS " DEMO_PASSWORD, FALSE, "popgate logs in upstream over TLS, SELECTs INBOX and "
                                      "snapshots (UID, size)" },
      { "STAT", FALSE, NULL },
      { "LIST", TRUE, NULL },
      { "UIDL", TRUE, "UIDL = UID and UIDVALIDITY in hex, the same strings Dovecot's POP3 gives" },
      { "TOP 2 1", TRUE, "headers and one body line (fetched without the whole body)" },
      { "RETR 2", TRUE, "streamed from UID FETCH BODY.PEEK[], dot-stuffed" },
      { "DELE 1", FALSE, "only marks it: nothing changes upstream before QUIT" },
      { "QUIT", FALSE, "UPDATE: UID STORE +FLAGS.SILENT (\\Deleted), then UID EXPUNGE of "
                       "exactly that UID" },
    };
    for (gsize i = 0; i < G_N_ELEMENTS (script) && !demo_failed; i++)
      {
        g_autofree gchar *status = NULL;
        if (script[i].note != NULL)
          printf ("   # %s\n", script[i].note);
        status = demo_command (pop3, script[i].command, script[i].multiline);
        if (status == NULL || !g_str_has_prefix (status, "+OK"))
          demo_failed = TRUE;
      }
  }
  g_clear_pointer (&pop3, pg_test_pop3_free);

  demo_show_upstream (dovecot, "after QUIT");

  if (!demo_failed && !non_interactive)
    {
      g_autoptr (GMainLoop) loop = g_main_loop_new (NULL, FALSE);

      demo_say ("popgate is running; point a POP3 client at it");
      printf ("   server 127.0.0.1, port %u (plain, STLS offered) or %u (implicit TLS)\n"
              "   user %s, password %s\n"
              "   e.g.  python3 -c \"import poplib; p = poplib.POP3('127.0.0.1', %u); "
              "p.user('%s'); p.pass_('%s'); print(p.stat()); p.quit()\"\n"
              "   (TLS uses a test CA: %s)\n"
              "   Ctrl-C stops popgate and Dovecot.\n",
              popgate->pop3_port, popgate->pop3s_port, DEMO_USER, DEMO_PASSWORD,
              popgate->pop3_port, DEMO_USER, DEMO_PASSWORD, popgate->certs->ca_file);
      fflush (stdout);
      g_unix_signal_add (SIGINT, demo_quit_cb, loop);
      g_unix_signal_add (SIGTERM, demo_quit_cb, loop);
      g_main_loop_run (loop);
    }

  demo_say ("Stopping popgate and Dovecot");
  if (!pg_test_popgate_stop (popgate))
    demo_failed = TRUE;
  printf ("%s\n", demo_failed ? "demo: FAILED" : "demo: ok");
  return demo_failed ? 1 : 0;
}
