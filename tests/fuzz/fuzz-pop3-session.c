/* Fuzz target: a whole POP3 session. The input is what a client sends, over a socketpair
 * into the real PgPop3Session (in-process PgConn), against a small scripted IMAP upstream
 * (fuzz-session.h). The first input byte picks how the upstream behaves (normal, refuses
 * the login, no UIDPLUS, NO to a body FETCH, drops mid-literal, drops at QUIT), the rest
 * is the client's byte stream, sent at once and then half-closed.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz-session.h"

#include "popgate/pg-pop3.h"

#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

typedef enum
{
  PG_FUZZ_UPSTREAM_NORMAL,
  PG_FUZZ_UPSTREAM_LOGIN_NO,
  PG_FUZZ_UPSTREAM_NO_UIDPLUS,
  PG_FUZZ_UPSTREAM_FETCH_NO,
  PG_FUZZ_UPSTREAM_DROP_MID_LITERAL,
  PG_FUZZ_UPSTREAM_DROP_AT_STORE,
  PG_FUZZ_UPSTREAM_COUNT,
} PgFuzzUpstreamMode;

static const char *const pg_fuzz_messages[] = {
  "Subject: one\r\n\r\nHello.\r\n",
  "Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two\r\nno final newline",
  "Subject: bare\n\nline\nline two\n",
};

static void
pg_fuzz_pop3_greet (PgFuzzUpstream *up)
{
  pg_test_peer_printf (up->peer, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN%s] hi\r\n",
                       up->mode == PG_FUZZ_UPSTREAM_NO_UIDPLUS ? "" : " UIDPLUS");
}

/* One command line from popgate: answer it like a tiny IMAP server with three messages
 * (UIDs 11, 12, 13). */
static void
pg_fuzz_pop3_command (PgFuzzUpstream *up, const char *line)
{
  g_auto (GStrv) words = g_strsplit (line, " ", 4);
  const char *tag = words[0];
  const char *verb = words[0] != NULL ? words[1] : NULL;

  if (tag == NULL || verb == NULL)
    return;
  if (strcmp (verb, "AUTHENTICATE") == 0 || strcmp (verb, "LOGIN") == 0)
    {
      if (up->mode == PG_FUZZ_UPSTREAM_LOGIN_NO)
        pg_test_peer_printf (up->peer, "%s NO [AUTHENTICATIONFAILED] no\r\n", tag);
      else
        pg_test_peer_printf (up->peer, "%s OK [CAPABILITY IMAP4rev1 %s] in\r\n", tag,
                             up->mode == PG_FUZZ_UPSTREAM_NO_UIDPLUS ? "" : "UIDPLUS");
    }
  else if (strcmp (verb, "SELECT") == 0 || strcmp (verb, "EXAMINE") == 0)
    pg_test_peer_printf (up->peer,
                         "* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n"
                         "* OK [UIDNEXT 14] n\r\n%s OK [READ-WRITE] s\r\n",
                         tag);
  else if (strcmp (verb, "UID") == 0 && words[2] != NULL && strcmp (words[2], "FETCH") == 0)
    {
      const char *rest = words[3] != NULL ? words[3] : "";
      if (g_str_has_prefix (rest, "1:*"))
        {
          g_autoptr (GString) reply = g_string_new (NULL);
          for (guint i = 0; i < G_N_ELEMENTS (pg_fuzz_messages); i++)
            g_string_append_printf (reply,
                                    "* %u FETCH (UID %u RFC822.SIZE %" G_GSIZE_FORMAT ")\r\n",
                                    i + 1, 11 + i, strlen (pg_fuzz_messages[i]));
          g_string_append_printf (reply, "%s OK f\r\n", tag);
          pg_test_peer_send (up->peer, reply->str, reply->len);
          return;
        }
      if (up->mode == PG_FUZZ_UPSTREAM_FETCH_NO)
        {
          pg_test_peer_printf (up->peer, "%s NO gone\r\n", tag);
          return;
        }
      /* "u1,u2,… (UID BODY.PEEK[…])": popgate batches body FETCHes. Unknown UIDs are
       * skipped, as a server skips expunged ones. */
      for (const char *p = rest; g_ascii_isdigit (*p);)
        {
          gchar *end = NULL;
          guint64 uid = g_ascii_strtoull (p, &end, 10);
          const char *msg;
          gsize len;

          p = *end == ',' ? end + 1 : end;
          if (uid < 11 || uid > 13)
            continue;
          msg = pg_fuzz_messages[uid - 11];
          len = strlen (msg);
          /* The whole message for every section: popgate must cope with what it gets. */
          pg_test_peer_printf (up->peer, "* %u FETCH (UID %u BODY[] {%" G_GSIZE_FORMAT "}\r\n",
                               (guint) (uid - 10), (guint) uid, len);
          if (up->mode == PG_FUZZ_UPSTREAM_DROP_MID_LITERAL)
            {
              pg_test_peer_send (up->peer, msg, len / 2);
              pg_test_peer_abort (up->peer);
              return;
            }
          pg_test_peer_send (up->peer, msg, len);
          pg_test_peer_send (up->peer, ")\r\n", 3);
        }
      pg_test_peer_printf (up->peer, "%s OK f\r\n", tag);
    }
  else if (strcmp (verb, "UID") == 0 && words[2] != NULL && strcmp (words[2], "STORE") == 0
           && up->mode == PG_FUZZ_UPSTREAM_DROP_AT_STORE)
    pg_test_peer_abort (up->peer);
  else if (strcmp (verb, "LOGOUT") == 0)
    {
      pg_test_peer_printf (up->peer, "* BYE b\r\n%s OK l\r\n", tag);
      pg_test_peer_abort (up->peer);
    }
  else
    pg_test_peer_printf (up->peer, "%s OK done\r\n", tag);
}

static const PgFuzzSessionTarget pg_fuzz_pop3_target = {
  .frontend = PG_FRONTEND_POP3,
  .n_modes = PG_FUZZ_UPSTREAM_COUNT,
  .config = "[pop3]\nlisten = 127.0.0.1:1\nallow_plaintext_auth = true\n",
  .greet = pg_fuzz_pop3_greet,
  .command = pg_fuzz_pop3_command,
  .start = pg_pop3_session_start,
  .n_live = pg_pop3_session_get_n_live,
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  return pg_fuzz_session_run (&pg_fuzz_pop3_target, data, size);
}
