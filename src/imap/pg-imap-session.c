/* popgate — IMAP session: pre-auth answered by popgate, login upstream, then a relay.
 *
 * Pre-auth input is framed by a fixed PgLineReader (PG_IMAP_MAX_PREAUTH_LINE) and parsed
 * by the pure command parser, one command at a time; replies produced back to back go out
 * in one write. While a command waits (login upstream, the failed-auth delay, STARTTLS)
 * the client is not read at all, so no read is ever pending when the phase changes.
 *
 * After login the upstream's connection, as a PgConn, goes to the relay (pg-imap-relay.h):
 * a pump between the two connections. The session keeps the bookkeeping: through the
 * relay's hooks it sees each command and response start (mailbox, IDLE, LOGOUT, BYE),
 * answers commands for withheld capabilities, and writes its own lines when the relay is
 * between two responses; literals and IDLE pass untouched.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-imap"

#include "popgate/pg-imap.h"

#include "pg-imap-filter.h"
#include "pg-imap-private.h"
#include "pg-imap-relay.h"
#include "pg-build-config.h"
#include "popgate/pg-codec-imap-command.h"
#include "popgate/pg-codec-line.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-status.h"
#include "popgate/pg-trace.h"

#include <string.h>

static const char *const pg_imap_state_names[] = {
  "PREAUTH",
  "AUTHENTICATING",
  "RELAY",
  "CLOSED",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_imap_state_names) == PG_IMAP_STATE_COUNT);

struct _PgImapSession
{
  GObject parent_instance;

  PgImapSessionInfo info; /* what the registry shows; strings below own its pointers */
  GList link;             /* in pg_imap_sessions; data = self */

  PgConn *conn;     /* owned */
  PgConfig *config; /* unowned: the conn's */
  guint64 id;
  gint64 started_mono_us;
  gchar *end_reason;         /* owned */
  GCancellable *cancellable; /* owned: cancelled when the connection closes */
  guint8 *client_buf;        /* owned, PG_IMAP_RELAY_CHUNK: pre-auth reads; the relay's then */
  gboolean reading;          /* a pre-auth client read is pending */
  gboolean client_eof;       /* the client shut down its side: answer what it sent, then end */

  /* pre-auth */
  PgLineReader *reader;        /* owned */
  PgImapCommandParser *parser; /* owned */
  GString *reply;              /* replies not yet handed to the connection */
  gboolean busy;               /* a command waits: do not read or process */
  gboolean starting_tls;
  gboolean in_command;       /* the parser holds part of a command (line or literal) */
  gboolean in_login_command; /* ... and it is LOGIN/AUTHENTICATE: never log its lines */
  gchar *sasl_tag;           /* owned: AUTHENTICATE waiting for its response */
  /* The login name, the account, SASL, failure counts and delay: the login path's. */
  PgLogin *login;           /* owned */
  gchar *pending_tag;       /* owned: LOGIN/AUTHENTICATE being answered */
  gchar *client_id_name;    /* owned: ID "name" from the client, for the upstream */
  gchar *client_id_version; /* owned */
  gchar *user;              /* owned: info.user */
  gchar *upstream_user;     /* owned: info.upstream_user */

  /* relay */
  PgImapRelay *relay;                          /* owned: the pump, after login */
  gboolean upstream_bye;                       /* the upstream sent "* BYE" */
  gboolean logout_sent;                        /* the client sent LOGOUT */
  gchar select_tag[PG_IMAP_RELAY_MAX_TAG + 1]; /* SELECT/EXAMINE awaiting its reply */
  gchar *select_mailbox;                       /* owned: its mailbox (NULL if not trackable) */
  gboolean select_read_only;
  gchar close_tag[PG_IMAP_RELAY_MAX_TAG + 1]; /* CLOSE/UNSELECT awaiting its reply */
  gchar idle_tag[PG_IMAP_RELAY_MAX_TAG + 1];  /* IDLE running or starting */
  gchar *mailbox;                             /* owned: info.mailbox */
  gchar *last_mailbox;      /* owned: the last mailbox selected, kept after CLOSE (the log) */
  guint64 mailbox_commands; /* client commands while last_mailbox was selected */
  guint64 mailbox_bytes;    /* octets to the client while it was selected */
  gchar auth_tag[PG_IMAP_RELAY_MAX_TAG + 1]; /* AUTHENTICATE relayed: its lines are secret */

  PgMetricsSessionState metrics_state; /* where the session gauge counts it */
};

G_DEFINE_FINAL_TYPE (PgImapSession, pg_imap_session, G_TYPE_OBJECT)

/* What popgate itself adds to the upstream's capabilities after login. */
#define PG_IMAP_SESSION_OWN_CAPABILITIES "COMPRESS=DEFLATE"

/* Live sessions, oldest first (the links live in the sessions). */
static GQueue pg_imap_sessions = G_QUEUE_INIT;

static void pg_imap_session_process (PgImapSession *self);
static void pg_imap_session_read (PgImapSession *self);

const char *
pg_imap_state_to_string (PgImapState state)
{
  g_return_val_if_fail (state < PG_IMAP_STATE_COUNT, "?");
  return pg_imap_state_names[state];
}

guint
pg_imap_session_get_n_live (void)
{
  return pg_imap_sessions.length;
}

void
pg_imap_session_foreach (PgImapSessionInfoFunc func, gpointer user_data)
{
  for (GList *l = pg_imap_sessions.head; l != NULL;)
    {
      PgImapSession *self = l->data;
      l = l->next; /* the callback may not end sessions, but be safe against reordering */
      func (&self->info, user_data);
    }
}

const PgImapSessionInfo *
pg_imap_session_get_info (PgImapSession *self)
{
  g_return_val_if_fail (PG_IS_IMAP_SESSION (self), NULL);
  return &self->info;
}

/* --- metrics and audit trace (pg-metrics.h, pg-trace.h) ---------------------------------- */

static PgMetricsSessionState
pg_imap_session_metrics_state_of (PgImapSession *self)
{
  switch (self->info.state)
    {
    case PG_IMAP_STATE_PREAUTH:
    case PG_IMAP_STATE_AUTHENTICATING:
      return PG_METRICS_SESSION_PREAUTH;
    case PG_IMAP_STATE_RELAY:
      return self->info.idling ? PG_METRICS_SESSION_IDLE : PG_METRICS_SESSION_AUTHENTICATED;
    case PG_IMAP_STATE_CLOSED:
      return PG_METRICS_SESSION_NONE;
    case PG_IMAP_STATE_COUNT:
      break;
    }
  g_return_val_if_reached (PG_METRICS_SESSION_NONE);
}

/* The session gauge follows the state and IDLE: called after either changed. */
static void
pg_imap_session_metrics_update (PgImapSession *self)
{
  PgMetricsSessionState to = pg_imap_session_metrics_state_of (self);

  if (to == self->metrics_state)
    return;
  pg_metrics_session_state (PG_METRICS_FRONTEND_IMAP, self->metrics_state, to);
  self->metrics_state = to;
}

/* Pre-auth command words shown in logs and the trace (pg_log_redact_preauth_line): any
 * other word, and every argument but LOGIN's user and a SASL mechanism, is redacted. */
static const char *const pg_imap_preauth_words[]
    = { "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ID", NULL };

/* Trace a pre-auth client line. A SASL response, or a later line of LOGIN/AUTHENTICATE
 * (after a literal), can hold the password whole: only "<redacted>" is traced for it. */
static void
pg_imap_session_trace_line (PgImapSession *self, const char *line, gsize len)
{
  g_autofree gchar *shown = NULL;

  if (!pg_trace_is_enabled ())
    return;
  if ((self->in_command && self->in_login_command) || self->sasl_tag != NULL)
    shown = g_strdup ("<redacted>");
  else
    shown = pg_log_redact_preauth_line (line, len, TRUE, pg_imap_preauth_words);
  pg_trace (self->id, "C: %s", shown);
}

/* Trace a relayed client command from what the scanner saw of it: tag, command word and
 * its first argument (the mailbox of SELECT etc.), never the rest of the line. */
static void
pg_imap_session_trace_command (PgImapSession *self, const PgImapRelayCommand *cmd)
{
  g_autofree gchar *line = NULL;
  g_autofree gchar *shown = NULL;

  if (!pg_trace_is_enabled ())
    return;
  if (self->auth_tag[0] != '\0' || cmd->word[0] == '\0')
    {
      /* An AUTHENTICATE exchange (SASL data), or a line that is no command at all. */
      pg_trace (self->id, "C: <redacted>");
      return;
    }
  line = g_strdup_printf ("%s %s%s%s", cmd->tag, cmd->word, cmd->argument != NULL ? " " : "",
                          cmd->argument != NULL ? cmd->argument : "");
  shown = pg_log_redact_line (line, strlen (line), FALSE);
  pg_trace (self->id, "C: %s", shown);
}

/* What the status page shows of this session (pg-status.h). */
static void
pg_imap_session_status_cb (gpointer owner, PgStatusInfo *info)
{
  PgImapSession *self = owner;

  info->frontend = PG_METRICS_FRONTEND_IMAP;
  info->client = self->info.client;
  info->tls = pg_conn_is_tls (self->conn);
  info->user = self->info.user;
  /* The IMAP states of RFC 9051 §3, as a client sees them. */
  info->state = self->info.state == PG_IMAP_STATE_RELAY
                    ? (self->info.mailbox != NULL ? "SELECTED" : "AUTHENTICATED")
                    : "NOT AUTHENTICATED";
  info->mailbox = self->info.mailbox;
  info->idle = self->info.idling;
  info->bytes_in = self->info.bytes_from_client;
  info->bytes_out = self->info.bytes_to_client;
}

static void
pg_imap_session_set_state (PgImapSession *self, PgImapState state)
{
  if (self->info.state == state)
    return;
  pg_session_debug (self->id, "state %s -> %s", pg_imap_state_names[self->info.state],
                    pg_imap_state_names[state]);
  self->info.state = state;
  if (state != PG_IMAP_STATE_RELAY)
    self->info.idling = FALSE;
  pg_imap_session_metrics_update (self);
  pg_status_session_update (self->id,
                            state != PG_IMAP_STATE_CLOSED ? pg_imap_session_status_cb : NULL, self);
}

/* --- object ------------------------------------------------------------------------------ */

static void
pg_imap_session_close_upstream (PgImapSession *self)
{
  if (self->relay == NULL)
    return;
  pg_imap_relay_stop (self->relay);
  g_clear_object (&self->relay);
}

static void
pg_imap_session_dispose (GObject *object)
{
  PgImapSession *self = PG_IMAP_SESSION (object);

  /* Stops a failed-login delay: its callback must not run on a disposed session. */
  g_clear_pointer (&self->login, pg_login_free);
  pg_imap_session_close_upstream (self);
  if (self->conn != NULL)
    g_signal_handlers_disconnect_by_data (self->conn, self);
  g_clear_object (&self->conn);
  G_OBJECT_CLASS (pg_imap_session_parent_class)->dispose (object);
}

static void
pg_imap_session_finalize (GObject *object)
{
  PgImapSession *self = PG_IMAP_SESSION (object);

  if (self->link.data != NULL)
    g_queue_unlink (&pg_imap_sessions, &self->link);
  g_clear_pointer (&self->reader, pg_line_reader_free);
  g_clear_pointer (&self->parser, pg_imap_command_parser_free);
  g_clear_object (&self->cancellable);
  g_string_free (self->reply, TRUE);
  if (self->client_buf != NULL)
    pg_secret_wipe (self->client_buf, PG_IMAP_RELAY_CHUNK);
  g_free (self->client_buf);
  g_free (self->end_reason);
  g_free (self->sasl_tag);
  g_free (self->pending_tag);
  g_free (self->client_id_name);
  g_free (self->client_id_version);
  g_free (self->user);
  g_free (self->upstream_user);
  g_free (self->select_mailbox);
  g_free (self->mailbox);
  g_free (self->last_mailbox);
  G_OBJECT_CLASS (pg_imap_session_parent_class)->finalize (object);
}

static void
pg_imap_session_class_init (PgImapSessionClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pg_imap_session_dispose;
  object_class->finalize = pg_imap_session_finalize;
}

static void
pg_imap_session_init (PgImapSession *self)
{
  self->reply = g_string_sized_new (256);
  self->cancellable = g_cancellable_new ();
  self->started_mono_us = g_get_monotonic_time ();
  self->info.started_us = g_get_real_time ();
  self->info.last_activity_us = self->info.started_us;
  self->info.state = PG_IMAP_STATE_PREAUTH;
  self->metrics_state = PG_METRICS_SESSION_NONE;
}

/* --- output and ending -------------------------------------------------------------------- */

static void pg_imap_session_reply (PgImapSession *self, const char *format, ...)
    G_GNUC_PRINTF (2, 3);

static void
pg_imap_session_reply (PgImapSession *self, const char *format, ...)
{
  va_list args;

  va_start (args, format);
  g_string_append_vprintf (self->reply, format, args);
  va_end (args);
  g_string_append (self->reply, "\r\n");
}

static void
pg_imap_session_flush (PgImapSession *self)
{
  if (self->reply->len == 0)
    return;
  if (!pg_conn_is_closed (self->conn))
    {
      self->info.bytes_to_client += self->reply->len;
      pg_conn_write (self->conn, self->reply->str, self->reply->len);
    }
  g_string_truncate (self->reply, 0);
}

static void
pg_imap_session_log_end (PgImapSession *self)
{
  gint64 ms = (g_get_monotonic_time () - self->started_mono_us) / 1000;
  /* A failed login cleared the name; the end line still says who was tried. */
  const char *login = self->user != NULL    ? self->user
                      : self->login != NULL ? pg_login_get_tried_user (self->login)
                                            : NULL;
  const char *client_tag
      = self->user != NULL && self->login != NULL ? pg_login_get_client_tag (self->login) : NULL;
  g_autofree gchar *user
      = login != NULL ? pg_log_escape (login, strlen (login), 64) : g_strdup ("-");
  g_autofree gchar *tag
      = client_tag != NULL ? pg_log_escape (client_tag, strlen (client_tag), 64) : g_strdup ("-");
  /* The last mailbox selected, even when the client closed it before leaving (neomutt and
   * mbsync do), and what was done in it. */
  g_autofree gchar *mailbox
      = self->last_mailbox != NULL
            ? pg_log_escape (self->last_mailbox, strlen (self->last_mailbox), 64)
            : g_strdup ("-");

  pg_session_message (
      self->id,
      "imap session ended: user=%s tag=%s client=%s state=%s duration=%" G_GINT64_FORMAT
      "ms in=%" G_GUINT64_FORMAT " out=%" G_GUINT64_FORMAT " commands=%" G_GUINT64_FORMAT
      " mailbox=%s mailbox_commands=%" G_GUINT64_FORMAT " mailbox_bytes=%" G_GUINT64_FORMAT
      " reason=%s",
      user, tag, pg_conn_get_peer (self->conn), pg_imap_state_names[self->info.state], ms,
      pg_conn_get_bytes_in (self->conn), pg_conn_get_bytes_out (self->conn), self->info.commands,
      mailbox, self->mailbox_commands, self->mailbox_bytes,
      self->end_reason != NULL ? self->end_reason : "client disconnected");
}

static void
pg_imap_session_conn_closed_cb (PgConn *conn, gpointer user_data)
{
  PgImapSession *self = user_data;

  g_cancellable_cancel (self->cancellable);
  pg_imap_session_close_upstream (self);
  pg_imap_session_log_end (self);
  pg_imap_session_set_state (self, PG_IMAP_STATE_CLOSED);
  g_signal_handlers_disconnect_by_data (conn, self);
  g_queue_unlink (&pg_imap_sessions, &self->link);
  self->link.data = NULL;
  /* Drop the reference the session held on itself for the connection's life. */
  g_object_unref (self);
}

/* Flush the replies and close after them. */
static void
pg_imap_session_end (PgImapSession *self, const char *reason)
{
  if (self->end_reason == NULL)
    self->end_reason = g_strdup (reason);
  pg_imap_session_flush (self);
  pg_conn_close (self->conn);
}

/* Close now (the client is gone or broke the protocol beyond repair). */
static void
pg_imap_session_abort (PgImapSession *self, const char *reason)
{
  if (self->end_reason == NULL)
    self->end_reason = g_strdup (reason);
  pg_conn_abort (self->conn);
}

static void
pg_imap_session_bad_command (PgImapSession *self)
{
  if (pg_login_bad_command (self->login))
    {
      pg_imap_session_reply (self, "* BYE Too many invalid commands.");
      pg_imap_session_end (self, "too many bad commands");
    }
}

/* --- pre-auth ---------------------------------------------------------------------------- */

static gboolean
pg_imap_session_plaintext_allowed (PgImapSession *self)
{
  return pg_conn_is_tls (self->conn) || pg_conn_is_loopback (self->conn)
         || self->config->imap.allow_plaintext_auth;
}

/* Before login: what popgate itself does. LITERAL- (RFC 7888): a pre-auth literal is at
 * most PG_IMAP_MAX_PREAUTH_LITERAL = 4096 octets, which is exactly LITERAL-'s promise. */
static gchar *
pg_imap_session_preauth_capabilities (PgImapSession *self)
{
  g_autoptr (GString) own = g_string_new ("IMAP4rev1 SASL-IR LITERAL- ID");
  GString *caps = g_string_new (NULL);

  if (pg_conn_can_start_tls (self->conn))
    g_string_append (own, " STARTTLS");
  if (pg_imap_session_plaintext_allowed (self))
    {
      g_auto (GStrv) mechanisms = g_strsplit (PG_LOGIN_SASL_MECHANISMS, " ", -1);
      for (gsize i = 0; mechanisms[i] != NULL; i++)
        g_string_append_printf (own, " AUTH=%s", mechanisms[i]);
    }
  else
    g_string_append (own, " LOGINDISABLED");
  /* popgate's own list, through the one filter all the same (pg-codec-imap-caps.h). */
  pg_imap_caps_filter (caps, own->str, own->len, FALSE);
  return g_string_free (caps, FALSE);
}

/* After login: the upstream's, through the one capability filter (pg-codec-imap-caps.h:
 * what popgate withholds, and why), plus popgate's own additions. */
static gchar *
pg_imap_session_relay_capabilities (GStrv upstream_caps)
{
  GString *caps = g_string_new (NULL);

  for (gsize i = 0; upstream_caps != NULL && upstream_caps[i] != NULL; i++)
    pg_imap_caps_filter (caps, upstream_caps[i], strlen (upstream_caps[i]), TRUE);
  if (caps->len == 0)
    g_string_append (caps, "IMAP4rev1");
  g_string_append (caps, " " PG_IMAP_SESSION_OWN_CAPABILITIES);
  return g_string_free (caps, FALSE);
}

static void
pg_imap_session_greeting (PgImapSession *self)
{
  g_autofree gchar *caps = pg_imap_session_preauth_capabilities (self);

  pg_imap_session_reply (self, "* OK [CAPABILITY %s] popgate ready.", caps);
}

static void
pg_imap_session_auth_failed_cb (gpointer user_data, gboolean too_many)
{
  PgImapSession *self = user_data;
  g_autofree gchar *tag = g_steal_pointer (&self->pending_tag);

  self->busy = FALSE;
  pg_imap_session_set_state (self, PG_IMAP_STATE_PREAUTH);
  pg_imap_session_reply (self, "%s NO [AUTHENTICATIONFAILED] Authentication failed.",
                         tag != NULL ? tag : "*");
  if (too_many)
    {
      pg_imap_session_reply (self, "* BYE Too many authentication failures.");
      pg_imap_session_end (self, "too many authentication failures");
      return;
    }
  pg_imap_session_process (self);
}

/* One answer for an unknown user and a wrong password, after a delay. */
static void
pg_imap_session_auth_failed (PgImapSession *self, const char *tag, const GError *why)
{
  if (tag != NULL)
    {
      g_free (self->pending_tag);
      self->pending_tag = g_strdup (tag);
    }
  self->busy = TRUE;
  g_clear_pointer (&self->user, g_free);
  g_clear_pointer (&self->upstream_user, g_free);
  self->info.user = NULL;
  self->info.upstream_user = NULL;
  pg_login_auth_failed (self->login, why, pg_imap_session_auth_failed_cb, self);
}

static void pg_imap_session_relay_start (PgImapSession *self, PgConn *upstream,
                                         GBytes *up_buffered);

/* The login upstream failed for another reason than the credentials. */
static void
pg_imap_session_unavailable (PgImapSession *self, const GError *error)
{
  pg_login_unavailable (self->login, error);
  g_clear_pointer (&self->user, g_free);
  g_clear_pointer (&self->upstream_user, g_free);
  self->info.user = NULL;
  self->info.upstream_user = NULL;
  self->busy = FALSE;
  pg_imap_session_set_state (self, PG_IMAP_STATE_PREAUTH);
  /* RFC 5530: UNAVAILABLE — try again later, the credentials may well be right; but
   * what a retry cannot fix (the upstream's certificate, its refusal) is SERVERBUG, so
   * that clients stop retrying and someone looks at the configuration. */
  if (pg_imap_login_error_is_permanent (error))
    pg_imap_session_reply (self,
                           "%s NO [SERVERBUG] The mail server cannot be used, ask the "
                           "administrator.",
                           self->pending_tag);
  else
    pg_imap_session_reply (self,
                           "%s NO [UNAVAILABLE] The mail server is not available, try "
                           "again later.",
                           self->pending_tag);
  g_clear_pointer (&self->pending_tag, g_free);
  pg_imap_session_process (self);
}

static void
pg_imap_session_login_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapSession) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) buffered = NULL;
  g_auto (GStrv) caps = NULL;
  g_autoptr (PgConn) upstream = pg_imap_login_finish (result, &buffered, &caps, &error);
  g_autofree gchar *user = NULL;
  g_autofree gchar *upstream_user = NULL;
  g_autofree gchar *relay_caps = NULL;
  g_autofree gchar *tag = NULL;

  if (pg_conn_is_closed (self->conn) || self->info.state != PG_IMAP_STATE_AUTHENTICATING)
    return;
  if (upstream == NULL)
    {
      if (g_error_matches (error, PG_ERROR, PG_ERROR_AUTH_FAILED))
        {
          pg_imap_session_auth_failed (self, NULL, error);
          return;
        }
      pg_imap_session_unavailable (self, error);
      return;
    }
  g_free (self->upstream_user);
  self->upstream_user = g_strdup (pg_login_get_upstream_user (self->login));
  self->info.upstream_user = self->upstream_user;
  pg_login_succeeded (self->login);
  relay_caps = pg_imap_session_relay_capabilities (caps);
  pg_imap_session_reply (self, "%s OK [CAPABILITY %s] Logged in.", self->pending_tag, relay_caps);
  g_clear_pointer (&self->pending_tag, g_free);
  user = pg_log_escape (self->user, strlen (self->user), 64);
  upstream_user = pg_log_escape (self->upstream_user, strlen (self->upstream_user), 64);
  tag = pg_log_escape (pg_login_get_client_tag (self->login),
                       strlen (pg_login_get_client_tag (self->login)), 64);
  /* The client tag means nothing to the relay: it is only logged. */
  pg_session_message (self->id, "imap session started: user=%s upstream_user=%s tag=%s client=%s%s",
                      user, upstream_user, tag, pg_conn_get_peer (self->conn),
                      pg_conn_is_tls (self->conn) ? " tls" : "");
  pg_imap_session_relay_start (self, upstream, buffered);
}

/* Log in through the login path; the login name is set already. */
static void
pg_imap_session_login (PgImapSession *self, const char *tag, const char *password)
{
  const char *login = pg_login_get_user (self->login);

  g_free (self->pending_tag);
  self->pending_tag = g_strdup (tag);
  self->busy = TRUE;
  pg_imap_session_set_state (self, PG_IMAP_STATE_AUTHENTICATING);
  g_free (self->user);
  self->user = g_strdup (login);
  self->info.user = self->user;
  g_free (self->upstream_user);
  self->upstream_user = g_strdup (pg_login_get_account (self->login));
  self->info.upstream_user = self->upstream_user;
  pg_login_set_client_id (self->login, self->client_id_name, self->client_id_version);
  pg_imap_login_async (self->login, password, self->cancellable, pg_imap_session_login_cb,
                       g_object_ref (self));
}

static gboolean
pg_imap_session_check_plaintext (PgImapSession *self, const char *tag)
{
  if (pg_imap_session_plaintext_allowed (self))
    return TRUE;
  pg_imap_session_reply (self,
                         "%s NO [PRIVACYREQUIRED] Plaintext authentication is disallowed "
                         "on non-secure connections; use STARTTLS first.",
                         tag);
  return FALSE;
}

/* What the login path made of AUTHENTICATE or a line of its exchange. */
static void
pg_imap_session_sasl_result (PgImapSession *self, const char *tag, PgLoginSaslStatus status,
                             const char *challenge, const char *password, const GError *error)
{
  switch (status)
    {
    case PG_LOGIN_SASL_CONTINUE:
      g_free (self->sasl_tag);
      self->sasl_tag = g_strdup (tag);
      pg_imap_session_reply (self, "+ %s", challenge);
      return;
    case PG_LOGIN_SASL_DONE:
      pg_imap_session_login (self, tag, password);
      return;
    case PG_LOGIN_SASL_CANCELLED:
      /* RFC 9051 §6.2.2: a cancelled exchange is answered with BAD. */
      pg_imap_session_reply (self, "%s BAD Authentication cancelled.", tag);
      return;
    case PG_LOGIN_SASL_MALFORMED:
      pg_imap_session_reply (self, "%s BAD Invalid SASL response (%s).", tag, error->message);
      pg_imap_session_bad_command (self);
      return;
    case PG_LOGIN_SASL_REFUSED:
      pg_imap_session_auth_failed (self, tag, NULL);
      return;
    case PG_LOGIN_SASL_UNSUPPORTED:
      pg_imap_session_reply (self, "%s NO Unsupported authentication mechanism.", tag);
      pg_imap_session_bad_command (self);
      return;
    }
  g_assert_not_reached ();
}

static void
pg_imap_session_sasl_response (PgImapSession *self, const char *line, gsize len)
{
  g_autofree gchar *tag = g_steal_pointer (&self->sasl_tag);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgSecret) password = NULL;
  const char *challenge = NULL;
  PgLoginSaslStatus status
      = pg_login_sasl_step (self->login, line, len, &challenge, &password, &error);

  pg_imap_session_sasl_result (self, tag, status, challenge, password, error);
}

static void
pg_imap_session_authenticate (PgImapSession *self, PgImapCommand *cmd)
{
  const PgImapArg *mech = g_ptr_array_index (cmd->args, 0);
  const char *mech_name = pg_imap_arg_get_string (mech, NULL);
  const char *ir = NULL;
  gsize len = 0;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgSecret) password = NULL;
  const char *challenge = NULL;
  PgLoginSaslStatus status;

  if (mech_name == NULL)
    {
      pg_imap_session_sasl_result (self, cmd->tag, PG_LOGIN_SASL_UNSUPPORTED, NULL, NULL, NULL);
      return;
    }
  if (!pg_imap_session_check_plaintext (self, cmd->tag))
    return;
  if (cmd->args->len > 1)
    {
      ir = pg_imap_arg_get_string (g_ptr_array_index (cmd->args, 1), &len);
      if (ir == NULL)
        ir = "";
    }
  status = pg_login_sasl_start (self->login, mech_name, ir, len, &challenge, &password, &error);
  pg_imap_session_sasl_result (self, cmd->tag, status, challenge, password, error);
}

static void
pg_imap_session_id (PgImapSession *self, PgImapCommand *cmd)
{
  const PgImapArg *list = g_ptr_array_index (cmd->args, 0);

  if (list->type == PG_IMAP_ARG_LIST)
    for (guint i = 0; i + 1 < list->list->len; i += 2)
      {
        const char *key = pg_imap_arg_get_string (g_ptr_array_index (list->list, i), NULL);
        const PgImapArg *value_arg = g_ptr_array_index (list->list, i + 1);
        gsize len = 0;
        const char *value
            = pg_imap_arg_is_nil (value_arg) ? NULL : pg_imap_arg_get_string (value_arg, &len);

        /* Forwarded upstream as they are: short, and no NUL hiding a second value. */
        if (key == NULL || value == NULL || len > PG_IMAP_MAX_ID_VALUE || strlen (value) != len)
          continue;
        if (g_ascii_strcasecmp (key, "name") == 0)
          {
            g_free (self->client_id_name);
            self->client_id_name = g_strdup (value);
          }
        else if (g_ascii_strcasecmp (key, "version") == 0)
          {
            g_free (self->client_id_version);
            self->client_id_version = g_strdup (value);
          }
      }
  if (self->client_id_name != NULL)
    {
      g_autofree gchar *name
          = pg_log_escape (self->client_id_name, strlen (self->client_id_name), 64);
      pg_session_info (self->id, "client ID name=%s", name);
    }
  pg_imap_session_reply (self, "* ID (\"name\" \"popgate\" \"version\" \"%s\")", PG_VERSION);
  pg_imap_session_reply (self, "%s OK ID completed.", cmd->tag);
}

static void
pg_imap_session_starttls_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapSession) self = user_data;
  g_autoptr (GError) error = NULL;

  if (!pg_conn_start_tls_finish (self->conn, result, &error))
    {
      if (!pg_conn_is_closed (self->conn))
        {
          pg_session_info (self->id, "STARTTLS handshake failed: %s", error->message);
          pg_imap_session_abort (self, "TLS handshake failed");
        }
      return;
    }
  pg_session_info (self->id, "TLS started");
  self->info.tls = TRUE;
  self->busy = FALSE;
  self->starting_tls = FALSE;
  pg_imap_session_process (self);
}

static void
pg_imap_session_starttls_flushed_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapSession) self = user_data;

  if (!pg_conn_wait_drained_finish (self->conn, result, NULL))
    return;
  pg_conn_start_tls_async (self->conn, self->cancellable, pg_imap_session_starttls_cb,
                           g_object_ref (self));
}

static void
pg_imap_session_starttls (PgImapSession *self, const char *tag)
{
  gsize dropped;

  if (!pg_conn_can_start_tls (self->conn))
    {
      pg_imap_session_reply (self, "%s BAD STARTTLS is not available here.", tag);
      return;
    }
  pg_imap_session_reply (self, "%s OK Begin TLS negotiation now.", tag);
  pg_imap_session_flush (self);
  /* RFC 9051 §6.2.1 / CVE-2011-0411: what the client pipelined after STARTTLS arrived in
   * plaintext and must not run inside TLS. */
  dropped = pg_line_reader_discard_buffered (self->reader);
  pg_imap_command_parser_reset (self->parser);
  if (dropped > 0)
    pg_session_info (self->id, "discarded %" G_GSIZE_FORMAT " plaintext bytes after STARTTLS",
                     dropped);
  self->busy = TRUE;
  self->starting_tls = TRUE;
  pg_conn_wait_drained_async (self->conn, 0, self->cancellable, pg_imap_session_starttls_flushed_cb,
                              g_object_ref (self));
}

static void
pg_imap_session_handle_command (PgImapSession *self, PgImapCommand *cmd)
{
  self->info.commands++;
  switch (cmd->kind)
    {
    case PG_IMAP_COMMAND_CAPABILITY:
      {
        g_autofree gchar *caps = pg_imap_session_preauth_capabilities (self);
        pg_imap_session_reply (self, "* CAPABILITY %s", caps);
        pg_imap_session_reply (self, "%s OK Capability completed.", cmd->tag);
        return;
      }
    case PG_IMAP_COMMAND_NOOP:
      pg_imap_session_reply (self, "%s OK NOOP completed.", cmd->tag);
      return;
    case PG_IMAP_COMMAND_LOGOUT:
      pg_imap_session_reply (self, "* BYE Logging out.");
      pg_imap_session_reply (self, "%s OK Logout completed.", cmd->tag);
      pg_imap_session_end (self, "LOGOUT");
      return;
    case PG_IMAP_COMMAND_STARTTLS:
      pg_imap_session_starttls (self, cmd->tag);
      return;
    case PG_IMAP_COMMAND_LOGIN:
      {
        gsize user_len = 0, pass_len = 0;
        const char *user = pg_imap_arg_get_string (g_ptr_array_index (cmd->args, 0), &user_len);
        const char *pass = pg_imap_arg_get_string (g_ptr_array_index (cmd->args, 1), &pass_len);

        if (!pg_imap_session_check_plaintext (self, cmd->tag))
          return;
        if (user == NULL || pass == NULL || user_len == 0 || strlen (user) != user_len
            || strlen (pass) != pass_len)
          {
            pg_imap_session_reply (self, "%s BAD Invalid user name or password.", cmd->tag);
            pg_imap_session_bad_command (self);
            return;
          }
        pg_login_set_user (self->login, user);
        pg_imap_session_login (self, cmd->tag, pass);
        return;
      }
    case PG_IMAP_COMMAND_AUTHENTICATE:
      pg_imap_session_authenticate (self, cmd);
      return;
    case PG_IMAP_COMMAND_ID:
      pg_imap_session_id (self, cmd);
      return;
    case PG_IMAP_COMMAND_UNKNOWN:
    case PG_IMAP_COMMAND_COUNT:
      break;
    }
  pg_imap_session_reply (self, "%s BAD Unknown command or not allowed before login.", cmd->tag);
  pg_imap_session_bad_command (self);
}

static void
pg_imap_session_log_line (PgImapSession *self, const char *line, gsize len)
{
  g_autofree gchar *shown = NULL;

  if (pg_log_get_level () < PG_LOG_LEVEL_DEBUG)
    return;
  /* A SASL response, or a later line of LOGIN/AUTHENTICATE (after a literal), can hold
   * the password whole: never shown. */
  if (self->sasl_tag != NULL || self->in_login_command)
    shown = g_strdup ("<redacted>");
  else
    shown = pg_log_redact_preauth_line (line, len, TRUE, pg_imap_preauth_words);
  pg_session_debug (self->id, "C: %s", shown);
}

/* Does the line start a LOGIN or AUTHENTICATE command? ("tag LOGIN ...") */
static gboolean
pg_imap_session_is_login_line (const char *line, gsize len)
{
  const char *space = memchr (line, ' ', len);
  gsize rest;

  if (space == NULL)
    return FALSE;
  space++;
  rest = len - (gsize) (space - line);
  return (rest >= 5 && g_ascii_strncasecmp (space, "LOGIN", 5) == 0)
         || (rest >= 12 && g_ascii_strncasecmp (space, "AUTHENTICATE", 12) == 0);
}

static void
pg_imap_session_handle_line (PgImapSession *self, const char *line, gsize len)
{
  g_autoptr (GError) error = NULL;
  PgImapParseStatus status;

  if (!self->in_command && self->sasl_tag == NULL)
    self->in_login_command = pg_imap_session_is_login_line (line, len);
  pg_imap_session_log_line (self, line, len);
  pg_imap_session_trace_line (self, line, len);
  if (self->sasl_tag != NULL)
    {
      pg_imap_session_sasl_response (self, line, len);
      return;
    }
  status = pg_imap_command_parser_feed_line (self->parser, line, len, &error);
  switch (status)
    {
    case PG_IMAP_PARSE_COMPLETE:
      {
        g_autoptr (PgImapCommand) cmd = pg_imap_command_parser_take_command (self->parser);

        self->in_command = FALSE;
        self->in_login_command = FALSE;
        pg_imap_session_handle_command (self, cmd);
        return;
      }
    case PG_IMAP_PARSE_NEED_LITERAL:
      self->in_command = TRUE;
      if (pg_imap_command_parser_is_literal_sync (self->parser))
        pg_imap_session_reply (self, "+ Ready for literal data.");
      /* A zero-length literal ({0}, {0+}) has all its octets already: complete it now, or
       * the next line would be fed to a parser still waiting for the literal (found by
       * fuzz-imap-session). */
      if (pg_imap_command_parser_get_literal_remaining (self->parser) == 0)
        pg_imap_command_parser_feed_literal (self->parser, NULL, 0, NULL);
      return;
    case PG_IMAP_PARSE_NEED_LINE:
      self->in_command = TRUE;
      return;
    case PG_IMAP_PARSE_ERROR:
      {
        const char *tag = pg_imap_command_parser_get_tag (self->parser);
        gboolean non_sync_literal = len >= 3 && line[len - 1] == '}' && line[len - 2] == '+';

        self->in_command = FALSE;
        self->in_login_command = FALSE;
        pg_imap_session_reply (self, "%s BAD %s.", tag != NULL ? tag : "*", error->message);
        if (g_error_matches (error, PG_ERROR, PG_ERROR_LIMIT) && non_sync_literal)
          {
            /* Its octets are on their way and would be read as commands. */
            pg_imap_session_reply (self, "* BYE Literal too large before login.");
            pg_imap_session_end (self, "literal too large");
            return;
          }
        pg_imap_session_bad_command (self);
        return;
      }
    }
  g_assert_not_reached ();
}

/* The tag to answer an over-long line with: the SASL exchange's or the command's when
 * the line continues one, else the line's own first word when it is a valid tag
 * (RFC 9051 §9: astring characters but "+"); NULL when there is none. */
static gchar *
pg_imap_session_long_line_tag (PgImapSession *self)
{
  const guint8 *data = NULL;
  gsize n = pg_line_reader_peek_raw (self->reader, &data);
  gsize i;

  if (self->sasl_tag != NULL)
    return g_strdup (self->sasl_tag);
  if (self->in_command)
    return g_strdup (pg_imap_command_parser_get_tag (self->parser));
  for (i = 0; i < n && i <= PG_IMAP_RELAY_MAX_TAG && data[i] != ' '; i++)
    if (data[i] <= 0x20 || data[i] >= 0x7f || strchr ("(){%*\"\\+", data[i]) != NULL)
      return NULL;
  if (i == 0 || i > PG_IMAP_RELAY_MAX_TAG || i == n)
    return NULL;
  return g_strndup ((const char *) data, i);
}

/* Handle every complete buffered line (and literal) until a command must wait, then
 * flush the replies in one write and read more. */
static void
pg_imap_session_process (PgImapSession *self)
{
  g_autofree gchar *long_tag = NULL;

  while (!self->busy && !pg_conn_is_closed (self->conn)
         && self->info.state == PG_IMAP_STATE_PREAUTH)
    {
      g_autoptr (GError) error = NULL;
      const char *line = NULL;
      gsize len = 0;
      PgLineReaderStatus status;

      if (self->in_command && pg_imap_command_parser_get_literal_remaining (self->parser) > 0)
        {
          const guint8 *data = NULL;
          gsize n = pg_line_reader_take_raw (
              self->reader, pg_imap_command_parser_get_literal_remaining (self->parser), &data);

          if (n == 0)
            break;
          pg_imap_command_parser_feed_literal (self->parser, data, n, NULL);
          continue;
        }
      /* A full reader without a line end is about to be reported too long: its tag is
       * only readable now. */
      if (pg_line_reader_get_space (self->reader) == 0)
        {
          g_free (long_tag);
          long_tag = pg_imap_session_long_line_tag (self);
        }
      status = pg_line_reader_next (self->reader, &line, &len, &error);
      if (status == PG_LINE_READER_NEED_MORE)
        break;
      if (status == PG_LINE_READER_ERROR)
        {
          pg_imap_command_parser_reset (self->parser);
          self->in_command = FALSE;
          self->in_login_command = FALSE;
          g_clear_pointer (&self->sasl_tag, g_free);
          pg_metrics_error (PG_METRICS_ERROR_LINE_TOO_LONG);
          if (long_tag == NULL)
            {
              /* No tag to answer: the client would wait for a reply forever. */
              pg_imap_session_reply (self, "* BYE Command line too long.");
              pg_imap_session_end (self, "line too long");
              break;
            }
          pg_imap_session_reply (self, "%s BAD Command line too long.", long_tag);
          g_clear_pointer (&long_tag, g_free);
          pg_imap_session_bad_command (self);
          continue;
        }
      pg_imap_session_handle_line (self, line, len);
    }
  if (self->client_eof && !self->busy && self->info.state == PG_IMAP_STATE_PREAUTH
      && !pg_conn_is_closed (self->conn))
    {
      /* Every complete command sent before the half-close is answered; then we end. */
      pg_imap_session_end (self, "client disconnected");
      return;
    }
  pg_imap_session_flush (self);
  pg_imap_session_read (self);
}

static void
pg_imap_session_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgImapSession) self = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = pg_conn_read_finish (self->conn, result, &error);

  self->reading = FALSE;
  if (pg_conn_is_closed (self->conn))
    return;
  if (n == 0)
    {
      /* EOF: closed or half-closed (shutdown(SHUT_WR)) after its last command. What it
       * sent is still answered (before login here; upstream by the relay). */
      self->client_eof = TRUE;
      pg_imap_session_process (self);
      return;
    }
  if (n < 0)
    {
      pg_imap_session_abort (self, "client read error");
      return;
    }
  self->info.bytes_from_client += (guint64) n;
  self->info.last_activity_us = g_get_real_time ();
  pg_line_reader_feed (self->reader, self->client_buf, (gsize) n);
  pg_imap_session_process (self);
}

/* Pre-auth reads: only while nothing waits, so no read is pending when the phase changes
 * (STARTTLS, login). */
static void
pg_imap_session_read (PgImapSession *self)
{
  gsize space;

  if (self->reading || self->busy || self->client_eof || pg_conn_is_closed (self->conn)
      || self->info.state != PG_IMAP_STATE_PREAUTH)
    return;
  space = pg_line_reader_get_space (self->reader);
  if (space == 0)
    return;
  self->reading = TRUE;
  pg_conn_read_async (self->conn, self->client_buf, MIN (space, PG_IMAP_RELAY_CHUNK),
                      self->cancellable, pg_imap_session_read_cb, g_object_ref (self));
}

/* --- relay ---------------------------------------------------------------------------------- */

static void
pg_imap_session_set_mailbox (PgImapSession *self, gchar *mailbox, gboolean read_only)
{
  g_free (self->mailbox);
  self->mailbox = mailbox;
  self->info.mailbox = mailbox;
  if (mailbox != NULL)
    {
      g_free (self->last_mailbox);
      self->last_mailbox = g_strdup (mailbox);
      self->mailbox_commands = 0;
      self->mailbox_bytes = 0;
    }
  self->info.read_only = mailbox != NULL && read_only;
}

static void
pg_imap_session_copy_tag (gchar *dest, const char *tag)
{
  g_strlcpy (dest, tag, PG_IMAP_RELAY_MAX_TAG + 1);
}

/* A client command start, seen by the scanner. */
static void
pg_imap_session_track_command (PgImapSession *self, const PgImapRelayCommand *cmd)
{
  if (self->idle_tag[0] != '\0' && cmd->word[0] == '\0'
      && g_ascii_strcasecmp (cmd->tag, "DONE") == 0)
    return; /* ends the IDLE; its tagged reply clears the state */
  pg_imap_session_trace_command (self, cmd);
  if (self->auth_tag[0] != '\0')
    return; /* SASL data of a relayed AUTHENTICATE, not a command */
  self->info.commands++;
  if (self->mailbox != NULL)
    self->mailbox_commands++;
  if (strcmp (cmd->word, "SELECT") == 0 || strcmp (cmd->word, "EXAMINE") == 0)
    {
      pg_imap_session_copy_tag (self->select_tag, cmd->tag);
      g_free (self->select_mailbox);
      self->select_mailbox = g_strdup (cmd->argument);
      self->select_read_only = strcmp (cmd->word, "EXAMINE") == 0;
    }
  else if (strcmp (cmd->word, "CLOSE") == 0 || strcmp (cmd->word, "UNSELECT") == 0)
    pg_imap_session_copy_tag (self->close_tag, cmd->tag);
  else if (strcmp (cmd->word, "IDLE") == 0)
    pg_imap_session_copy_tag (self->idle_tag, cmd->tag);
  else if (strcmp (cmd->word, "AUTHENTICATE") == 0)
    pg_imap_session_copy_tag (self->auth_tag, cmd->tag);
  else if (strcmp (cmd->word, "LOGOUT") == 0)
    self->logout_sent = TRUE;
}

/* An upstream response start, seen by the scanner. */
static void
pg_imap_session_track_response (PgImapSession *self, const PgImapRelayCommand *resp)
{
  const char *tag = resp->tag;
  gboolean ok = strcmp (resp->word, "OK") == 0;

  if (strcmp (tag, "*") == 0)
    {
      if (strcmp (resp->word, "BYE") == 0)
        self->upstream_bye = TRUE;
      return;
    }
  if (strcmp (tag, "+") == 0)
    {
      if (self->idle_tag[0] != '\0')
        {
          self->info.idling = TRUE;
          pg_imap_session_metrics_update (self);
        }
      return;
    }
  if (self->select_tag[0] != '\0' && strcmp (tag, self->select_tag) == 0)
    {
      self->select_tag[0] = '\0';
      /* RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected. */
      pg_imap_session_set_mailbox (self, ok ? g_steal_pointer (&self->select_mailbox) : NULL,
                                   self->select_read_only);
      g_clear_pointer (&self->select_mailbox, g_free);
    }
  else if (self->close_tag[0] != '\0' && strcmp (tag, self->close_tag) == 0)
    {
      self->close_tag[0] = '\0';
      if (ok)
        pg_imap_session_set_mailbox (self, NULL, FALSE);
    }
  else if (self->idle_tag[0] != '\0' && strcmp (tag, self->idle_tag) == 0)
    {
      self->idle_tag[0] = '\0';
      self->info.idling = FALSE;
      pg_imap_session_metrics_update (self);
    }
  if (self->auth_tag[0] != '\0' && strcmp (tag, self->auth_tag) == 0)
    self->auth_tag[0] = '\0';
}

/* --- the relay's hooks (pg-imap-relay.h) ------------------------------------------------- */

static void
pg_imap_session_relay_command_cb (gpointer user_data, const PgImapRelayCommand *cmd)
{
  pg_imap_session_track_command (user_data, cmd);
}

static void
pg_imap_session_relay_response_cb (gpointer user_data, const PgImapRelayCommand *resp)
{
  pg_imap_session_track_response (user_data, resp);
}

static void
pg_imap_session_relay_from_client_cb (gpointer user_data, gsize len)
{
  PgImapSession *self = user_data;

  self->info.bytes_from_client += len;
  self->info.last_activity_us = g_get_real_time ();
}

static void
pg_imap_session_relay_to_client_cb (gpointer user_data, gsize len)
{
  PgImapSession *self = user_data;

  self->info.bytes_to_client += len;
  if (self->mailbox != NULL)
    self->mailbox_bytes += len;
}

static void
pg_imap_session_relay_flush_cb (gpointer user_data)
{
  pg_imap_session_flush (user_data);
}

/* COMPRESS (RFC 4978) by popgate: the relay keeps seeing the plain streams. */
static gboolean
pg_imap_session_compress (PgImapSession *self, const char *tag, const PgImapRelayCommand *cmd)
{
  if (!pg_imap_relay_can_compress (self->relay))
    {
      pg_imap_session_reply (self, "%s NO [COMPRESSIONACTIVE] DEFLATE is active already.", tag);
      return FALSE;
    }
  if (cmd->argument == NULL || g_ascii_strcasecmp (cmd->argument, "DEFLATE") != 0)
    {
      pg_imap_session_reply (self, "%s BAD Unsupported compression mechanism.", tag);
      return FALSE;
    }
  pg_imap_session_reply (self, "%s OK DEFLATE active.", tag);
  pg_imap_relay_compress (self->relay);
  return TRUE;
}

/* A client command for a withheld capability: popgate answers, the upstream never sees
 * it. */
static gboolean
pg_imap_session_relay_withheld_cb (gpointer user_data, PgImapCapsCommand what,
                                   const PgImapRelayCommand *cmd)
{
  PgImapSession *self = user_data;
  const char *tag = cmd->tag[0] != '\0' ? cmd->tag : "*";

  pg_imap_session_trace_command (self, cmd);
  self->info.commands++;
  switch (what)
    {
    case PG_IMAP_CAPS_COMMAND_NOT_AUTH:
      pg_imap_session_reply (self, "%s BAD Already logged in.", tag);
      break;
    case PG_IMAP_CAPS_COMMAND_STARTTLS:
      pg_imap_session_reply (self, "%s BAD STARTTLS is only available before login.", tag);
      break;
    case PG_IMAP_CAPS_COMMAND_UNAUTHENTICATE:
    case PG_IMAP_CAPS_COMMAND_XCLIENT:
      pg_imap_session_reply (self, "%s BAD %s is not supported here.", tag, cmd->word);
      break;
    case PG_IMAP_CAPS_COMMAND_COMPRESS:
      /* On OK the relay stops filtering here: what follows in this read is compressed
       * already, and the compression starts once the OK is out. */
      if (pg_imap_session_compress (self, tag, cmd))
        return TRUE;
      break;
    case PG_IMAP_CAPS_COMMAND_RELAYED:
      g_return_val_if_reached (FALSE);
    }
  return FALSE;
}

/* The upstream is gone: tell the client (RFC 9051 §7.1.5) unless the upstream did. */
static void
pg_imap_session_upstream_gone (PgImapSession *self, const char *why)
{
  if (!self->upstream_bye)
    pg_imap_session_reply (self, "* BYE The mail server closed the connection.");
  pg_imap_session_end (self, self->logout_sent ? "LOGOUT" : why);
}

static void
pg_imap_session_relay_ended_cb (gpointer user_data, PgImapRelayEnd end)
{
  PgImapSession *self = user_data;

  switch (end)
    {
    case PG_IMAP_RELAY_END_CLIENT_ERROR:
      pg_imap_session_abort (self, self->logout_sent ? "LOGOUT" : "client read error");
      return;
    case PG_IMAP_RELAY_END_HALF_CLOSE:
      pg_imap_session_end (self, "client disconnected");
      return;
    case PG_IMAP_RELAY_END_UPSTREAM_CLOSED:
      pg_imap_session_upstream_gone (self, "upstream closed the connection");
      return;
    case PG_IMAP_RELAY_END_UPSTREAM_READ:
      pg_imap_session_upstream_gone (self, "upstream read error");
      return;
    case PG_IMAP_RELAY_END_UPSTREAM_WRITE:
      pg_imap_session_upstream_gone (self, "upstream write failed");
      return;
    case PG_IMAP_RELAY_END_UPSTREAM_INVALID:
      pg_metrics_error (PG_METRICS_ERROR_PROTOCOL);
      pg_imap_session_reply (self, "* BYE The mail server sent an invalid response.");
      pg_imap_session_end (self, "upstream protocol error");
      return;
    case PG_IMAP_RELAY_END_COMPRESS_FAILED:
      pg_imap_session_abort (self, "COMPRESS failed");
      return;
    case PG_IMAP_RELAY_END_COUNT:
      break;
    }
  g_return_if_reached ();
}

static void
pg_imap_session_relay_start (PgImapSession *self, PgConn *upstream, GBytes *up_buffered)
{
  static const PgImapRelayFuncs funcs = {
    .command = pg_imap_session_relay_command_cb,
    .withheld = pg_imap_session_relay_withheld_cb,
    .response = pg_imap_session_relay_response_cb,
    .from_client = pg_imap_session_relay_from_client_cb,
    .to_client = pg_imap_session_relay_to_client_cb,
    .flush = pg_imap_session_relay_flush_cb,
    .ended = pg_imap_session_relay_ended_cb,
  };

  pg_imap_session_set_state (self, PG_IMAP_STATE_RELAY);
  self->busy = FALSE;
  pg_conn_set_deadline (self->conn, 0); /* logged in: the pre-auth deadline is over */
  pg_conn_set_idle_timeout (self->conn, self->config->imap.idle_timeout_ms);
  self->relay = pg_imap_relay_new (self->conn, upstream, self->cancellable,
                                   PG_IMAP_SESSION_OWN_CAPABILITIES, &funcs, self);
  pg_imap_session_flush (self);
  g_clear_pointer (&self->parser, pg_imap_command_parser_free);
  /* The relay takes the read buffer, and what the client pipelined behind its login. */
  pg_imap_relay_start (self->relay, g_steal_pointer (&self->client_buf),
                       g_steal_pointer (&self->reader), up_buffered, self->client_eof);
}

/* --- signals and start ---------------------------------------------------------------- */

static gboolean
pg_imap_session_timeout_cb (PgConn *conn, gpointer user_data)
{
  PgImapSession *self = user_data;

  /* RFC 9051 §5.4 autologout (the timer is at least 30 minutes after login, which also
   * satisfies RFC 2177's 29 minutes for IDLE); before login it is the pre-auth timeout. */
  pg_metrics_error (PG_METRICS_ERROR_TIMEOUT);
  if (pg_conn_deadline_passed (conn) && self->info.state != PG_IMAP_STATE_RELAY)
    {
      pg_imap_session_reply (self, "* BYE No login within the time allowed.");
      pg_imap_session_end (self, "pre-auth deadline");
      return TRUE;
    }
  pg_imap_session_reply (self, "* BYE Disconnected for inactivity.");
  pg_imap_session_end (self, self->info.state == PG_IMAP_STATE_RELAY ? "inactivity timeout"
                                                                     : "pre-auth timeout");
  return TRUE;
}

static void
pg_imap_session_shutdown_cb (PgConn *conn, gpointer user_data)
{
  PgImapSession *self = user_data;

  /* Nothing is half-applied in a relay; the client reconnects to another instance. */
  pg_imap_session_reply (self, "* BYE Server shutting down.");
  pg_imap_session_end (self, "server shutdown");
}

void
pg_imap_session_start (PgConn *conn, gpointer user_data)
{
  PgImapSession *self = g_object_new (PG_TYPE_IMAP_SESSION, NULL);

  self->conn = g_object_ref (conn);
  self->config = pg_conn_get_config (conn);
  self->id = pg_conn_get_id (conn);
  self->info.id = self->id;
  self->info.client = pg_conn_get_peer (conn);
  self->login = pg_login_new (self->config, PG_METRICS_FRONTEND_IMAP, self->id,
                              pg_conn_get_peer (conn), pg_conn_get_peer_ip (conn));
  self->info.tls = pg_conn_is_tls (conn);
  self->reader = pg_line_reader_new (PG_IMAP_MAX_PREAUTH_LINE);
  self->parser = pg_imap_command_parser_new ();
  self->client_buf = g_malloc (PG_IMAP_RELAY_CHUNK);
  self->link.data = self;
  g_queue_push_tail_link (&pg_imap_sessions, &self->link);
  pg_imap_session_metrics_update (self);
  pg_status_session_update (self->id, pg_imap_session_status_cb, self);
  /* The session holds itself until the connection's "closed". */
  g_signal_connect (conn, "closed", G_CALLBACK (pg_imap_session_conn_closed_cb), self);
  g_signal_connect (conn, "timeout", G_CALLBACK (pg_imap_session_timeout_cb), self);
  g_signal_connect (conn, "shutdown", G_CALLBACK (pg_imap_session_shutdown_cb), self);
  pg_session_info (self->id, "imap session from %s%s", pg_conn_get_peer (conn),
                   pg_conn_is_tls (conn) ? " (TLS)" : "");
  pg_imap_session_greeting (self);
  pg_imap_session_process (self);
}
