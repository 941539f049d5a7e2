/* Fuzz target: a whole IMAP front-end session. The input is what a client sends, over a
 * socketpair into the real PgImapSession (in-process PgConn), against a small scripted IMAP
 * upstream (fuzz-session.h): pre-auth commands answered by popgate, the login upstream (ID +
 * AUTHENTICATE PLAIN), then the byte relay with its command and response scanners. The
 * first input byte picks how the upstream behaves (normal, refuses the login, drops after
 * the login, answers with malformed and unsolicited responses), the rest is the client's
 * byte stream, sent at once and then half-closed. The audit trace runs too.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz-session.h"

#include "popgate/pg-imap.h"

#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* How long nothing may happen once the session relays before it counts as idle: relayed
 * bytes take a hop more than popgate's own answers. */
#define PG_FUZZ_SESSION_RELAY_QUIET_US (10 * 1000)

typedef enum
{
  PG_FUZZ_UPSTREAM_NORMAL,
  PG_FUZZ_UPSTREAM_LOGIN_NO,
  PG_FUZZ_UPSTREAM_DROP_AFTER_LOGIN,
  PG_FUZZ_UPSTREAM_GARBAGE,
  PG_FUZZ_UPSTREAM_COUNT,
} PgFuzzUpstreamMode;

static const char pg_fuzz_message[] = "Subject: one\r\n\r\nHello.\r\n";

static void
pg_fuzz_imap_greet (PgFuzzUpstream *up)
{
  pg_test_peer_printf (up->peer, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] hi\r\n");
}

/* Malformed and unsolicited responses for the relay's response scanner. */
static const char *const pg_fuzz_garbage[] = {
  "* 1 FETCH (BODY[] {99999999999999999999}\r\n",
  "* OK [ALERT \xff\x00 bad\r\n",
  "+ \r\n",
  "* BYE going\r\n",
  "zz OK not yours\r\n",
  "* 2 FETCH (BODY[] {3}\r\nab",
  "\r\n\r\n)\r\n",
};

/* One line from popgate: before login its ID and AUTHENTICATE, after it whatever the
 * client's commands were (literal octets arrive as lines too and are answered as such). */
static void
pg_fuzz_imap_command (PgFuzzUpstream *up, const char *line)
{
  g_auto (GStrv) words = g_strsplit (line, " ", 4);
  const char *tag = words[0];
  const char *verb = words[0] != NULL ? words[1] : NULL;

  if (up->idle_tag != NULL && g_ascii_strcasecmp (line, "DONE") == 0)
    {
      g_autofree gchar *idle_tag = g_steal_pointer (&up->idle_tag);
      pg_test_peer_printf (up->peer, "%s OK idle done\r\n", idle_tag);
      return;
    }
  if (tag == NULL || verb == NULL)
    return;
  if (!up->logged_in)
    {
      if (g_ascii_strcasecmp (verb, "AUTHENTICATE") == 0 || g_ascii_strcasecmp (verb, "LOGIN") == 0)
        {
          if (up->mode == PG_FUZZ_UPSTREAM_LOGIN_NO)
            {
              pg_test_peer_printf (up->peer, "%s NO [AUTHENTICATIONFAILED] no\r\n", tag);
              return;
            }
          up->logged_in = TRUE;
          /* Dovecot sends an unsolicited line with the OK at times: the relay gets it. */
          pg_test_peer_printf (up->peer,
                               "%s OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE "
                               "COMPRESS=DEFLATE UNAUTHENTICATE STARTTLS] in\r\n"
                               "* 3 EXISTS\r\n",
                               tag);
          return;
        }
      pg_test_peer_printf (up->peer, "%s OK done\r\n", tag);
      return;
    }
  if (up->mode == PG_FUZZ_UPSTREAM_DROP_AFTER_LOGIN)
    {
      pg_test_peer_abort (up->peer);
      return;
    }
  if (up->mode == PG_FUZZ_UPSTREAM_GARBAGE)
    {
      const char *junk = pg_fuzz_garbage[strlen (line) % G_N_ELEMENTS (pg_fuzz_garbage)];
      pg_test_peer_send (up->peer, junk, strlen (junk));
    }
  if (g_ascii_strcasecmp (verb, "SELECT") == 0 || g_ascii_strcasecmp (verb, "EXAMINE") == 0)
    pg_test_peer_printf (up->peer,
                         "* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n"
                         "%s OK [%s] s\r\n",
                         tag,
                         g_ascii_strcasecmp (verb, "EXAMINE") == 0 ? "READ-ONLY" : "READ-WRITE");
  else if (g_ascii_strcasecmp (verb, "IDLE") == 0)
    {
      g_free (up->idle_tag);
      up->idle_tag = g_strdup (tag);
      pg_test_peer_printf (up->peer, "+ idling\r\n* 4 EXISTS\r\n");
    }
  else if (g_ascii_strcasecmp (verb, "FETCH") == 0 || g_ascii_strcasecmp (verb, "UID") == 0)
    pg_test_peer_printf (up->peer,
                         "* 1 FETCH (UID 11 BODY[] {%" G_GSIZE_FORMAT "}\r\n%s)\r\n"
                         "%s OK f\r\n",
                         strlen (pg_fuzz_message), pg_fuzz_message, tag);
  else if (g_ascii_strcasecmp (verb, "LOGOUT") == 0)
    {
      pg_test_peer_printf (up->peer, "* BYE b\r\n%s OK l\r\n", tag);
      /* A FIN after the replies (a reset could discard them unread); popgate closes its
       * side first, so the reset at the end of the run leaves no TIME_WAIT. */
      pg_test_peer_shutdown (up->peer);
    }
  else if (g_ascii_strcasecmp (verb, "CLOSE") == 0 && strlen (tag) % 2 == 0)
    pg_test_peer_printf (up->peer, "%s NO cannot\r\n", tag);
  else
    pg_test_peer_printf (up->peer, "%s OK done\r\n", tag);
}

static void
pg_fuzz_session_state_cb (const PgImapSessionInfo *info, gpointer user_data)
{
  PgImapState *out_state = user_data;

  *out_state = info->state;
}

/* How long the session must have been quiet before the client may half-close: never
 * while it logs in upstream (that takes GIO worker threads and the upstream's replies). */
static gint64
pg_fuzz_session_quiet_us (void)
{
  PgImapState state = PG_IMAP_STATE_CLOSED;

  pg_imap_session_foreach (pg_fuzz_session_state_cb, &state);
  switch (state)
    {
    case PG_IMAP_STATE_AUTHENTICATING:
      return G_MAXINT64;
    case PG_IMAP_STATE_RELAY:
      return PG_FUZZ_SESSION_RELAY_QUIET_US;
    case PG_IMAP_STATE_PREAUTH:
    case PG_IMAP_STATE_CLOSED:
    case PG_IMAP_STATE_COUNT:
      break;
    }
  return PG_FUZZ_SESSION_QUIET_US;
}

static const PgFuzzSessionTarget pg_fuzz_imap_target = {
  .frontend = PG_FRONTEND_IMAP,
  .n_modes = PG_FUZZ_UPSTREAM_COUNT,
  .config = "[imap]\nlisten = 127.0.0.1:1\nallow_plaintext_auth = true\nidle_timeout = 1h\n",
  .trace = TRUE,
  .greet = pg_fuzz_imap_greet,
  .command = pg_fuzz_imap_command,
  .start = pg_imap_session_start,
  .n_live = pg_imap_session_get_n_live,
  .quiet_us = pg_fuzz_session_quiet_us,
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  return pg_fuzz_session_run (&pg_fuzz_imap_target, data, size);
}
