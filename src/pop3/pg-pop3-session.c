/* popgate — POP3 session: the state machine of RFC 1939 (with RFC 2449 CAPA and
 * PIPELINING, RFC 2595 STLS, RFC 5034 SASL, RFC 3206 response codes) over the upstream
 * IMAP mailbox.
 *
 * Input is framed by a fixed-size PgLineReader and handled one command at a time: a
 * command that needs the upstream (login, RETR, TOP, QUIT) makes the session busy and
 * later input waits in the reader (pipelining keeps its order; when the reader is full we
 * stop reading the socket). Replies produced back to back are sent in one write.
 *
 * Nothing is changed upstream before QUIT: DELE and RSET only touch session state, RETR
 * and TOP use BODY.PEEK, and a connection that ends any other way applies nothing.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-pop3.h"

#include "pg-build-config.h"
#include "pg-pop3-maildrop.h"
#include "popgate/pg-codec-dotstuff.h"
#include "popgate/pg-codec-line.h"
#include "popgate/pg-codec-pop3.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-login.h"
#include "popgate/pg-state.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-status.h"
#include "popgate/pg-trace.h"

#include <string.h>

/* RETRs fetched ahead of the one being sent, pipelined or read ahead (only one of them can
 * hold a chunk: the upstream pauses there). Read-ahead tops the queue up only once it is
 * down to half, so the upstream gets batches of PG_POP3_PREFETCH_DEPTH / 2. */
#define PG_POP3_PREFETCH_DEPTH 32
/* Read-ahead fetches no more than this many octets of messages nobody asked for yet: what
 * is wasted (read from the upstream and dropped) when the client asks for something else. */
#define PG_POP3_READAHEAD_OCTETS (512 * 1024)
/* TOP fetches the body text in partial fetches of this size until it has its lines. */
#define PG_POP3_TOP_PARTIAL (64 * 1024)
/* Socket reads go into this much scratch space per session, held for the session's life
 * (a read is always pending). POP3 input is commands of at most PG_POP3_MAX_COMMAND_LINE
 * octets; 1 KiB takes one, or a pipelined batch of RETRs, per read, where 4 KiB cost every
 * idle session 3 KiB more. Longer input (SASL lines, big batches) just takes more reads. */
#define PG_POP3_READ_CHUNK 1024

typedef enum
{
  PG_POP3_STATE_AUTHORIZATION,
  PG_POP3_STATE_TRANSACTION,
  PG_POP3_STATE_UPDATE,
  PG_POP3_STATE_CLOSED,
  PG_POP3_STATE_COUNT,
} PgPop3State;

static const char *const pg_pop3_state_names[] = {
  "AUTHORIZATION",
  "TRANSACTION",
  "UPDATE",
  "CLOSED",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_pop3_state_names) == PG_POP3_STATE_COUNT);

enum
{
  PG_POP3_MSG_DELETED = 1 << 0,
  PG_POP3_MSG_RETRIEVED = 1 << 1,
};

typedef struct _PgPop3Transfer PgPop3Transfer;
static void pg_pop3_transfer_free (PgPop3Transfer *transfer);

struct _PgPop3Session
{
  GObject parent_instance;

  PgConn *conn;     /* owned */
  PgConfig *config; /* unowned: the conn's */
  guint64 id;
  PgPop3State state;
  gint64 started_us;
  gchar *end_reason; /* owned: why the session ended, for the end line */

  PgLineReader *reader;           /* owned */
  guint8 *read_buffer;            /* owned, PG_POP3_READ_CHUNK bytes */
  gboolean reading;               /* a socket read is pending */
  gboolean busy;                  /* a command is waiting for the upstream or a timer */
  gboolean starting_tls;          /* STLS: no socket reads until the handshake is done */
  gboolean tls_flushed;           /* STLS: the +OK is on the wire */
  gboolean output_full;           /* replies wait for the client to read: no commands, no reads */
  gboolean client_eof;            /* the client shut down its side: finish what it sent, then end */
  GCancellable *read_cancellable; /* owned: the pending socket read */
  GString *reply;                 /* replies not yet handed to the connection */
  GCancellable *cancellable;      /* owned: cancelled when the connection closes */

  guint long_lines; /* consecutive over-long lines */

  /* The login name, the account, its upstream, SASL, failure counts and delay: the
   * login path's (src/login/). */
  PgLogin *login;  /* owned */
  gchar *lock_key; /* owned when this session holds the maildrop lock */

  PgPop3Maildrop *maildrop; /* owned */
  guint n_messages;         /* in the maildrop's snapshot (sealed at login) */
  guint8 *flags;            /* owned: PG_POP3_MSG_* per message; NULL until the first is set
                             * (an idle session has none), see pg_pop3_session_flag() */
  guint32 uidvalidity;

  /* Per-client state (DESIGN.md "Per-client state") */
  PgStateStore *store;         /* owned */
  PgStateKey *state_key;       /* owned */
  PgClientState *client_state; /* owned: the state as it is now */
  PgClientState *saved_state;  /* owned: as last loaded or saved (NULL: never stored) */
  guint n_hidden;              /* snapshot messages the client's state and windows hide */

  /* What the state load returned, while the UIDL ledger's identities are fetched */
  PgStateLoadStatus loaded_status;
  PgClientState *loaded_state; /* owned; NULL once settled */

  /* QUIT in progress */
  GArray *quit_deleted; /* owned, guint32 UIDs */
  GArray *quit_seen;    /* owned, guint32 UIDs */
  guint n_retr;         /* for the end line: RETRs completed, their octets, TOPs */
  guint64 retr_octets;
  guint n_top;
  const char *quit_applied; /* static: what QUIT did upstream, for the end line; NULL: no
                             * QUIT got that far */
  gchar *quit_problem;      /* owned: what the update could not apply */
  gboolean quit_permanent;  /* quit_problem will not go away on a retry: [SYS/PERM] */

  /* RETR/TOP in progress (see "RETR and TOP" below) */
  PgPop3Transfer *transfer;      /* owned: the one being sent to the client */
  GQueue prefetch;               /* of PgPop3Transfer* (owned): the next RETRs, fetched ahead */
  guint last_retr;               /* index of the last RETR + 1 (0: none yet) */
  gboolean retr_run;             /* the current RETR is for the message after the last one */
  gboolean in_chunk_cb;          /* finishing a RETR from inside the next one's chunk callback */
  gboolean size_mismatch_logged; /* a RETR sent other octets than RFC822.SIZE said (once) */
};

G_DEFINE_TYPE (PgPop3Session, pg_pop3_session, G_TYPE_OBJECT)

/* Maildrop locks of this process: "user\nmailbox\ntag" → PgPop3Session* (unowned). */
static GHashTable *pg_pop3_locks = NULL;
static guint pg_pop3_n_live = 0;

static void pg_pop3_session_process (PgPop3Session *self);
static void pg_pop3_session_end (PgPop3Session *self, const char *reason);

static guint64
pg_pop3_session_size (PgPop3Session *self, guint index)
{
  return pg_pop3_maildrop_size (self->maildrop, index);
}

/* The per-message flags. They are allocated at the first DELE or RETR: a session that
 * only looked (STAT, LIST, UIDL) or idles holds no octet per message. */
static gboolean
pg_pop3_session_flagged (PgPop3Session *self, guint index, guint8 flag)
{
  g_assert (index < self->n_messages);
  return self->flags != NULL && (self->flags[index] & flag) != 0;
}

static void
pg_pop3_session_flag (PgPop3Session *self, guint index, guint8 flag)
{
  g_assert (index < self->n_messages);
  if (self->flags == NULL)
    self->flags = g_malloc0 (self->n_messages);
  self->flags[index] |= flag;
}

static void
pg_pop3_session_unflag (PgPop3Session *self, guint index, guint8 flag)
{
  g_assert (index < self->n_messages);
  if (self->flags != NULL)
    self->flags[index] &= (guint8) ~flag;
}

guint
pg_pop3_session_get_n_live (void)
{
  return pg_pop3_n_live;
}

/* --- metrics and audit trace (pg-metrics.h, pg-trace.h) ---------------------------------- */

static PgMetricsSessionState
pg_pop3_session_metrics_state_of (PgPop3State state)
{
  switch (state)
    {
    case PG_POP3_STATE_AUTHORIZATION:
      return PG_METRICS_SESSION_PREAUTH;
    case PG_POP3_STATE_TRANSACTION:
      return PG_METRICS_SESSION_AUTHENTICATED;
    case PG_POP3_STATE_UPDATE:
      return PG_METRICS_SESSION_UPDATE;
    case PG_POP3_STATE_CLOSED:
      return PG_METRICS_SESSION_NONE;
    case PG_POP3_STATE_COUNT:
      break;
    }
  g_return_val_if_reached (PG_METRICS_SESSION_NONE);
}

/* The session gauge follows every state change, including the start and the end. */
static void
pg_pop3_session_metrics_state (PgPop3Session *self, PgPop3State to)
{
  pg_metrics_session_state (PG_METRICS_FRONTEND_POP3,
                            pg_pop3_session_metrics_state_of (self->state),
                            pg_pop3_session_metrics_state_of (to));
}

/* A client line as logs and the trace show it: SASL data never, and before login only
 * known command words and USER's argument (pg_log_redact_preauth_line). */
static gchar *
pg_pop3_session_shown_line (PgPop3Session *self, const char *line, gsize len)
{
  static const char *const known[]
      = { "USER", "PASS", "APOP", "AUTH", "CAPA", "STLS", "QUIT", "NOOP", "UTF8",
          "STAT", "LIST", "RETR", "DELE", "RSET", "TOP",  "UIDL", NULL };

  if (pg_login_sasl_in_progress (self->login))
    return g_strdup ("<redacted>");
  if (self->state == PG_POP3_STATE_AUTHORIZATION)
    return pg_log_redact_preauth_line (line, len, FALSE, known);
  return pg_log_redact_line (line, len, FALSE);
}

/* Trace a client line: redacted, with the message number's UID and UIDL (and at QUIT the
 * UIDs the delete policy will be applied to), so the upstream commands traced next can be
 * matched to it. */
static void
pg_pop3_session_trace (PgPop3Session *self, const char *line, gsize len)
{
  g_auto (PgPop3Command) cmd = { 0 };
  g_autofree gchar *shown = NULL;

  if (!pg_trace_is_enabled ())
    return;
  shown = pg_pop3_session_shown_line (self, line, len);
  /* Only commands of TRANSACTION are parsed here: never a second copy of a password. */
  if (self->state != PG_POP3_STATE_TRANSACTION || pg_login_sasl_in_progress (self->login)
      || len > PG_POP3_MAX_COMMAND_LINE
      || pg_pop3_command_parse (line, len, &cmd) != PG_POP3_PARSE_OK)
    {
      pg_trace (self->id, "C: %s", shown);
      return;
    }
  if (cmd.has_message && cmd.message >= 1 && cmd.message <= self->n_messages)
    {
      guint32 uid = pg_pop3_maildrop_uid (self->maildrop, cmd.message - 1);
      char uidl[17];

      pg_client_state_format_uidl (self->client_state, uid, uidl);
      pg_trace (self->id, "C: %s -> uid %u uidl %s%s", shown, uid, uidl,
                pg_pop3_session_flagged (self, cmd.message - 1, PG_POP3_MSG_DELETED)
                    ? " (already deleted)"
                    : "");
      return;
    }
  if (cmd.kind == PG_POP3_COMMAND_QUIT)
    {
      g_autoptr (GString) uids = g_string_new (NULL);
      guint n = 0;

      for (guint i = 0; i < self->n_messages; i++)
        if (pg_pop3_session_flagged (self, i, PG_POP3_MSG_DELETED))
          {
            if (n++ < PG_POP3_TRACE_MAX_UIDS)
              g_string_append_printf (uids, "%s%u", uids->len > 0 ? "," : "",
                                      pg_pop3_maildrop_uid (self->maildrop, i));
          }
      if (n > PG_POP3_TRACE_MAX_UIDS)
        g_string_append_printf (uids, ",…(+%u)", n - PG_POP3_TRACE_MAX_UIDS);
      pg_trace (self->id, "C: %s -> delete=%s for %u uids [%s]", shown,
                pg_delete_policy_to_string (self->config->pop3.delete_policy), n, uids->str);
      return;
    }
  pg_trace (self->id, "C: %s", shown);
}

/* What the status page shows of this session (pg-status.h). */
static void
pg_pop3_session_status_cb (gpointer owner, PgStatusInfo *info)
{
  PgPop3Session *self = owner;

  info->frontend = PG_METRICS_FRONTEND_POP3;
  info->client = pg_conn_get_peer (self->conn);
  info->tls = pg_conn_is_tls (self->conn);
  info->user = pg_login_get_account (self->login);
  info->tag
      = pg_login_get_user (self->login) != NULL ? pg_login_get_client_tag (self->login) : NULL;
  info->state = pg_pop3_state_names[self->state];
  info->mailbox = self->maildrop != NULL ? pg_login_get_upstream (self->login)->mailbox : NULL;
  info->bytes_in = pg_conn_get_bytes_in (self->conn);
  info->bytes_out = pg_conn_get_bytes_out (self->conn);
  for (guint i = 0; self->flags != NULL && i < self->n_messages; i++)
    {
      info->retrieved += pg_pop3_session_flagged (self, i, PG_POP3_MSG_RETRIEVED);
      info->deleted += pg_pop3_session_flagged (self, i, PG_POP3_MSG_DELETED);
    }
}

static void
pg_pop3_session_set_state (PgPop3Session *self, PgPop3State state)
{
  if (self->state == state)
    return;
  pg_session_debug (self->id, "state %s -> %s", pg_pop3_state_names[self->state],
                    pg_pop3_state_names[state]);
  pg_pop3_session_metrics_state (self, state);
  self->state = state;
  pg_status_session_update (self->id, pg_pop3_session_status_cb, self);
}

static void
pg_pop3_session_release_lock (PgPop3Session *self)
{
  if (self->lock_key == NULL)
    return;
  if (pg_pop3_locks != NULL && g_hash_table_lookup (pg_pop3_locks, self->lock_key) == self)
    g_hash_table_remove (pg_pop3_locks, self->lock_key);
  g_clear_pointer (&self->lock_key, g_free);
}

static void
pg_pop3_session_dispose (GObject *object)
{
  PgPop3Session *self = PG_POP3_SESSION (object);

  pg_pop3_session_release_lock (self);
  /* Stops a failed-login delay: its callback must not run on a disposed session. */
  g_clear_pointer (&self->login, pg_login_free);
  if (self->conn != NULL)
    g_signal_handlers_disconnect_by_data (self->conn, self);
  g_clear_object (&self->conn);
  G_OBJECT_CLASS (pg_pop3_session_parent_class)->dispose (object);
}

static void
pg_pop3_session_finalize (GObject *object)
{
  PgPop3Session *self = PG_POP3_SESSION (object);

  g_clear_pointer (&self->maildrop, pg_pop3_maildrop_free);
  g_clear_pointer (&self->reader, pg_line_reader_free);
  g_clear_pointer (&self->transfer, pg_pop3_transfer_free);
  g_queue_clear_full (&self->prefetch, (GDestroyNotify) pg_pop3_transfer_free);
  g_clear_object (&self->cancellable);
  g_clear_object (&self->read_cancellable);
  g_string_free (self->reply, TRUE);
  g_free (self->read_buffer);
  g_free (self->flags);
  g_clear_object (&self->store);
  g_clear_pointer (&self->state_key, pg_state_key_free);
  g_clear_pointer (&self->client_state, pg_client_state_free);
  g_clear_pointer (&self->saved_state, pg_client_state_free);
  g_clear_pointer (&self->loaded_state, pg_client_state_free);
  g_clear_pointer (&self->quit_deleted, g_array_unref);
  g_clear_pointer (&self->quit_seen, g_array_unref);
  g_free (self->quit_problem);
  g_free (self->end_reason);
  pg_pop3_n_live--;
  G_OBJECT_CLASS (pg_pop3_session_parent_class)->finalize (object);
}

static void
pg_pop3_session_class_init (PgPop3SessionClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pg_pop3_session_dispose;
  object_class->finalize = pg_pop3_session_finalize;
}

static void
pg_pop3_session_init (PgPop3Session *self)
{
  self->reply = g_string_sized_new (256);
  self->cancellable = g_cancellable_new ();
  self->started_us = g_get_monotonic_time ();
  pg_pop3_n_live++;
}

/* --- output ----------------------------------------------------------------------------- */

static void pg_pop3_reply (PgPop3Session *self, const char *format, ...) G_GNUC_PRINTF (2, 3);

static void
pg_pop3_reply (PgPop3Session *self, const char *format, ...)
{
  va_list args;

  va_start (args, format);
  g_string_append_vprintf (self->reply, format, args);
  va_end (args);
  g_string_append (self->reply, "\r\n");
}

static void
pg_pop3_session_flush (PgPop3Session *self)
{
  if (self->reply->len == 0)
    return;
  pg_conn_write (self->conn, self->reply->str, self->reply->len);
  g_string_truncate (self->reply, 0);
}

/* --- ending ----------------------------------------------------------------------------- */

static void
pg_pop3_session_log_end (PgPop3Session *self)
{
  gint64 ms = (g_get_monotonic_time () - self->started_us) / 1000;
  /* A failed login cleared the name; the end line still says who was tried. */
  const char *login = self->login == NULL ? NULL
                      : pg_login_get_user (self->login) != NULL
                          ? pg_login_get_user (self->login)
                          : pg_login_get_tried_user (self->login);
  const char *client_tag = self->login != NULL && pg_login_get_user (self->login) != NULL
                               ? pg_login_get_client_tag (self->login)
                               : NULL;
  g_autofree gchar *user
      = login != NULL ? pg_log_escape (login, strlen (login), 64) : g_strdup ("-");
  g_autofree gchar *tag
      = client_tag != NULL ? pg_log_escape (client_tag, strlen (client_tag), 64) : g_strdup ("-");
  guint deleted = 0;

  for (guint i = 0; self->flags != NULL && i < self->n_messages; i++)
    deleted += pg_pop3_session_flagged (self, i, PG_POP3_MSG_DELETED);
  /* Dovecot's pop3 logs retr=/del= by default: what an admin asks first. */
  pg_session_message (
      self->id,
      "pop3 session ended: user=%s tag=%s client=%s state=%s duration=%" G_GINT64_FORMAT
      "ms retr=%u/%" G_GUINT64_FORMAT " top=%u del=%u applied=%s in=%" G_GUINT64_FORMAT
      " out=%" G_GUINT64_FORMAT " reason=%s",
      user, tag, pg_conn_get_peer (self->conn), pg_pop3_state_names[self->state], ms, self->n_retr,
      self->retr_octets, self->n_top, deleted,
      self->quit_applied != NULL ? self->quit_applied : "-", pg_conn_get_bytes_in (self->conn),
      pg_conn_get_bytes_out (self->conn),
      self->end_reason != NULL ? self->end_reason : "client disconnected");
}

/* The connection is gone (for any reason): nothing more is applied upstream. */
static void
pg_pop3_session_conn_closed_cb (PgConn *conn, gpointer user_data)
{
  PgPop3Session *self = user_data;

  g_cancellable_cancel (self->cancellable);
  if (self->maildrop != NULL)
    pg_pop3_maildrop_close (self->maildrop);
  pg_pop3_session_release_lock (self);
  pg_pop3_session_log_end (self);
  pg_pop3_session_metrics_state (self, PG_POP3_STATE_CLOSED);
  pg_status_session_update (self->id, NULL, NULL);
  self->state = PG_POP3_STATE_CLOSED;
  g_signal_handlers_disconnect_by_data (conn, self);
  /* Drop the reference the session held on itself for the connection's life. */
  g_object_unref (self);
}

/* Flush the replies and close after them. */
static void
pg_pop3_session_end (PgPop3Session *self, const char *reason)
{
  if (self->end_reason == NULL)
    self->end_reason = g_strdup (reason);
  pg_pop3_session_flush (self);
  pg_conn_close (self->conn);
}

/* A bad command: count it, and end the session when there were too many. */
static void
pg_pop3_session_bad_command (PgPop3Session *self)
{
  if (pg_login_bad_command (self->login))
    {
      pg_pop3_reply (self, "-ERR Too many bad commands, closing");
      pg_pop3_session_end (self, "too many bad commands");
    }
}

/* --- AUTHORIZATION ---------------------------------------------------------------------- */

static gboolean
pg_pop3_session_plaintext_allowed (PgPop3Session *self)
{
  return pg_conn_is_tls (self->conn) || pg_conn_is_loopback (self->conn)
         || self->config->pop3.allow_plaintext_auth;
}

static void
pg_pop3_session_capa (PgPop3Session *self)
{
  pg_pop3_reply (self, "+OK Capability list follows");
  pg_pop3_reply (self, "TOP");
  pg_pop3_reply (self, "UIDL");
  pg_pop3_reply (self, "RESP-CODES");
  pg_pop3_reply (self, "AUTH-RESP-CODE");
  pg_pop3_reply (self, "PIPELINING");
  if (self->state == PG_POP3_STATE_AUTHORIZATION)
    {
      if (pg_pop3_session_plaintext_allowed (self))
        {
          pg_pop3_reply (self, "USER");
          pg_pop3_reply (self, "SASL " PG_LOGIN_SASL_MECHANISMS);
        }
      if (pg_conn_can_start_tls (self->conn))
        pg_pop3_reply (self, "STLS");
    }
  /* EXPIRE (RFC 2449 §6.7) is about mail the client leaves on the server: popgate never
   * removes a message the client did not DELE, whatever the delete policy, and under
   * `keep` not even those. */
  pg_pop3_reply (self, "EXPIRE NEVER");
  if (self->config->pop3.login_delay_s > 0)
    pg_pop3_reply (self, "LOGIN-DELAY %u", self->config->pop3.login_delay_s);
  pg_pop3_reply (self, "IMPLEMENTATION popgate-%s", PG_VERSION);
  pg_pop3_reply (self, ".");
}

static void
pg_pop3_session_auth_failed_cb (gpointer user_data, gboolean too_many)
{
  PgPop3Session *self = user_data;

  self->busy = FALSE;
  pg_pop3_reply (self, "-ERR [AUTH] Authentication failed.");
  if (too_many)
    {
      pg_pop3_reply (self, "-ERR [AUTH] Too many authentication failures, closing");
      pg_pop3_session_end (self, "too many authentication failures");
      return;
    }
  pg_pop3_session_process (self);
}

/* One uniform answer for an unknown user and a wrong password, after a delay. */
static void
pg_pop3_session_auth_failed (PgPop3Session *self, const GError *why)
{
  self->busy = TRUE;
  pg_login_auth_failed (self->login, why, pg_pop3_session_auth_failed_cb, self);
}

/* The login is complete: fix the message numbering and enter TRANSACTION. */
static void
pg_pop3_session_enter_transaction (PgPop3Session *self)
{
  const char *login = pg_login_get_user (self->login);
  const char *client_tag = pg_login_get_client_tag (self->login);
  g_autofree gchar *user = pg_log_escape (login, strlen (login), 64);
  g_autofree gchar *tag = pg_log_escape (client_tag, strlen (client_tag), 64);
  guint64 total = 0;

  /* What an idle session keeps of the snapshot: the packed form (pg_pop3_maildrop_seal). */
  pg_pop3_maildrop_seal (self->maildrop);
  self->n_messages = pg_pop3_maildrop_count (self->maildrop);
  for (guint i = 0; i < self->n_messages; i++)
    total += pg_pop3_session_size (self, i);
  pg_pop3_session_set_state (self, PG_POP3_STATE_TRANSACTION);
  pg_conn_set_deadline (self->conn, 0); /* logged in: the pre-auth deadline is over */
  pg_conn_set_idle_timeout (self->conn, self->config->pop3.autologout_ms);
  pg_session_message (
      self->id,
      "login: user=%s tag=%s client=%s messages=%u octets=%" G_GUINT64_FORMAT " hidden=%u", user,
      tag, pg_conn_get_peer (self->conn), self->n_messages, total, self->n_hidden);
  self->busy = FALSE;
  pg_login_succeeded (self->login);
  pg_pop3_reply (self, "+OK Logged in.");
  pg_pop3_session_process (self);
}

/* --- per-client state ------------------------------------------------------------------- */

/* One PgStateStore per (backend, path) for the whole process, made on first use: a reload
 * that changes [state] gets a new store, sessions of the old config keep theirs. */
static GHashTable *pg_pop3_stores = NULL; /* "backend\npath" → PgStateStore* (owned) */

static PgStateStore *
pg_pop3_state_store_get (PgConfig *config, GError **error)
{
  g_autofree gchar *id
      = g_strdup_printf ("%s\n%s", pg_state_backend_to_string (config->state.backend),
                         config->state.backend == PG_STATE_BACKEND_FILE ? config->state.path : "");
  PgStateStore *store;

  if (pg_pop3_stores == NULL)
    pg_pop3_stores = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_object_unref);
  store = g_hash_table_lookup (pg_pop3_stores, id);
  if (store == NULL)
    {
      store = pg_state_store_new (config, error);
      if (store == NULL)
        return NULL;
      g_hash_table_insert (pg_pop3_stores, g_steal_pointer (&id), store);
    }
  return g_object_ref (store);
}

gboolean
pg_pop3_prepare_state (PgConfig *config, GError **error)
{
  g_autoptr (PgStateStore) store = pg_pop3_state_store_get (config, error);

  return store != NULL;
}

/* Refuse a login after the upstream accepted it (the client's state is unusable): nothing
 * was changed upstream, the client may try again. */
static void
pg_pop3_session_refuse_login (PgPop3Session *self, const char *reply)
{
  if (self->maildrop != NULL)
    pg_pop3_maildrop_close (self->maildrop);
  g_clear_pointer (&self->maildrop, pg_pop3_maildrop_free);
  pg_pop3_session_release_lock (self);
  pg_login_clear_user (self->login);
  g_clear_pointer (&self->state_key, pg_state_key_free);
  g_clear_pointer (&self->client_state, pg_client_state_free);
  g_clear_pointer (&self->saved_state, pg_client_state_free);
  g_clear_pointer (&self->loaded_state, pg_client_state_free);
  self->busy = FALSE;
  pg_pop3_reply (self, "%s", reply);
  pg_pop3_session_process (self);
}

/* Rewrite a set of UIDs against the snapshot so it stays small (pg_uid_set_compact), but
 * only when the snapshot is known complete: a flaky server that left out a UID that still
 * exists would otherwise have it merged into a run of hidden UIDs, hidden for good. */
static PgUidSet *
pg_pop3_session_compact (PgPop3Session *self, const PgUidSet *set, GArray *messages)
{
  g_autofree guint32 *uids = NULL;

  if (pg_uid_set_is_empty (set) || !pg_pop3_maildrop_snapshot_is_complete (self->maildrop))
    return pg_uid_set_copy (set);
  uids = g_new (guint32, MAX (messages->len, 1));
  for (guint i = 0; i < messages->len; i++)
    uids[i] = g_array_index (messages, PgPop3Message, i).uid;
  return pg_uid_set_compact (set, uids, messages->len,
                             pg_pop3_maildrop_get_uidnext (self->maildrop));
}

static gboolean
pg_pop3_session_is_visible_cb (const PgPop3Message *msg, gint64 internaldate, gpointer user_data)
{
  PgPop3Session *self = user_data;
  const PgClientState *state = self->client_state;
  gint64 oldest;

  if (pg_uid_set_contains (state->hidden, msg->uid))
    return FALSE;
  if (self->config->pop3.first_login == PG_FIRST_LOGIN_NEW && state->first_uidnext != 0
      && msg->uid < state->first_uidnext)
    return FALSE;
  if (self->config->pop3.recent_days > 0 && internaldate != PG_UPSTREAM_NO_DATE)
    {
      oldest
          = g_get_real_time () / G_USEC_PER_SEC - (gint64) self->config->pop3.recent_days * 86400;
      if (internaldate < oldest)
        return FALSE;
    }
  return TRUE;
}

/* The state is settled: hide what this client must not see, then log in. */
static void
pg_pop3_session_state_ready (PgPop3Session *self)
{
  guint before = pg_pop3_maildrop_get_messages (self->maildrop)->len;

  pg_pop3_maildrop_filter (self->maildrop, pg_pop3_session_is_visible_cb, self);
  self->n_hidden = before - pg_pop3_maildrop_get_messages (self->maildrop)->len;
  /* The ledger's everyday entries stay in the stored record, not in an idle session:
   * 24 octets a message, twice, was most of an idle session on a large mailbox. */
  if (self->client_state != NULL && self->saved_state != NULL)
    pg_client_state_ledger_slim (self->client_state, self->saved_state);
  pg_pop3_session_enter_transaction (self);
}

/* Store client_state, merged with what concurrent sessions of this client (here or in
 * another popgate) stored since we loaded or last saved; pg_pop3_session_save_finish()
 * makes the merged state both the current and the saved one. */
static void
pg_pop3_session_save_with (PgPop3Session *self, GAsyncReadyCallback callback, gpointer user_data)
{
  pg_state_store_save_merge_async (self->store, pg_pop3_maildrop_get_upstream (self->maildrop),
                                   self->state_key, self->saved_state, self->client_state,
                                   self->cancellable, callback, user_data);
}

static void
pg_pop3_session_save (PgPop3Session *self, GAsyncReadyCallback callback)
{
  pg_pop3_session_save_with (self, callback, g_object_ref (self));
}

static gboolean
pg_pop3_session_save_finish (PgPop3Session *self, GAsyncResult *result, GError **error)
{
  PgClientState *merged = NULL;

  if (!pg_state_store_save_merge_finish (self->store, result, &merged, error))
    return FALSE;
  g_clear_pointer (&self->client_state, pg_client_state_free);
  self->client_state = merged;
  /* Slim now, as pg_pop3_session_state_ready() would after the copy: a login's first save
   * then copies a few entries, not the whole ledger (24 octets a message). */
  pg_client_state_ledger_slim_saved (merged);
  g_clear_pointer (&self->saved_state, pg_client_state_free);
  self->saved_state = pg_client_state_copy (merged);
  return TRUE;
}

static void
pg_pop3_session_login_saved_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *who = NULL;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  if (!pg_pop3_session_save_finish (self, result, &error))
    {
      who = pg_state_key_to_log (self->state_key);
      pg_session_warning (self->id, "login refused: cannot store the client state of %s: %s", who,
                          error->message);
      pg_pop3_session_refuse_login (
          self, "-ERR [SYS/TEMP] Cannot record this client's state, try again later.");
      return;
    }
  pg_pop3_session_state_ready (self);
}

/* Store the state now (a first login under first_login = new, a reset, a finished QUIT),
 * then log in. */
static void
pg_pop3_session_login_save (PgPop3Session *self)
{
  pg_pop3_session_save (self, pg_pop3_session_login_saved_cb);
}

/* --- applying a delete policy: at QUIT, and for an interrupted QUIT at the next login ---
 *
 * `delete = move:MAILBOX` on a server without MOVE is done step by step so that it is
 * idempotent: UID COPY of the UIDs this client has not had copied yet, then the copied
 * UIDs go into the client's hidden set and the state is stored, then UID STORE \Deleted
 * (and UID EXPUNGE with UIDPLUS). The order is the crash-safe one: recording "copied"
 * before the COPY would, after a crash in between, flag a message that was never copied
 * (lost for the trash); recording it after means that only a crash in the instant between
 * the COPY's OK and the record makes the next login copy once more (a duplicate in the
 * trash, never a loss). Messages left flagged \Deleted (no UIDPLUS) go into the hidden
 * set too: this client is never offered them again. */

typedef struct
{
  PgDeletePolicy policy; /* what is left to do after the copy step */
  gchar *mailbox;        /* owned */
  GArray *deleted;       /* owned, guint32 */
  GArray *to_copy;       /* owned, guint32: the part of deleted that still needs a COPY */
  GArray *seen;          /* owned, guint32 */
  gchar *problem;        /* owned: a copy step that failed */
  gboolean permanent;    /* ... and it will fail again */
} PgPop3Apply;

static void
pg_pop3_apply_free (PgPop3Apply *apply)
{
  g_free (apply->mailbox);
  g_array_unref (apply->deleted);
  g_array_unref (apply->to_copy);
  g_array_unref (apply->seen);
  g_free (apply->problem);
  g_free (apply);
}

static void
pg_pop3_session_hide_uids (PgPop3Session *self, GArray *uids)
{
  for (guint i = 0; i < uids->len; i++)
    pg_uid_set_add (self->client_state->hidden, g_array_index (uids, guint32, i));
}

static void
pg_pop3_session_apply_updated_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PgPop3Session *self = g_task_get_source_object (task);
  PgPop3Apply *apply = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (GArray) flagged = NULL;
  gboolean permanent = FALSE;

  if (!pg_pop3_maildrop_update_finish (self->maildrop, result, &flagged, &permanent, &error))
    {
      if (apply->problem == NULL)
        {
          apply->problem = g_strdup (error->message);
          apply->permanent = permanent;
        }
      else
        {
          gchar *both = g_strdup_printf ("%s; %s", apply->problem, error->message);
          g_free (apply->problem);
          apply->problem = both;
          apply->permanent = apply->permanent && permanent;
        }
    }
  if (flagged->len > 0)
    {
      pg_pop3_session_hide_uids (self, flagged);
      pg_session_warning (self->id,
                          "%u messages stay flagged \\Deleted upstream (the server "
                          "lacks UIDPLUS or refused UID EXPUNGE): this client will not be "
                          "offered them again",
                          flagged->len);
    }
  if (apply->problem != NULL)
    g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM, "%s", apply->problem);
  else
    g_task_return_boolean (task, TRUE);
}

static void
pg_pop3_session_apply_update (GTask *task)
{
  PgPop3Session *self = g_task_get_source_object (task);
  PgPop3Apply *apply = g_task_get_task_data (task);

  pg_pop3_maildrop_update_async (self->maildrop, apply->policy, apply->mailbox, apply->deleted,
                                 apply->seen, self->cancellable, pg_pop3_session_apply_updated_cb,
                                 task);
}

static void
pg_pop3_session_apply_copy_saved_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgPop3Session *self = g_task_get_source_object (task);
  g_autoptr (GError) error = NULL;

  if (!pg_pop3_session_save_finish (self, result, &error))
    pg_session_warning (self->id,
                        "move: copied, but could not record it (a crash now would "
                        "copy once more): %s",
                        error->message);
  pg_pop3_session_apply_update (task);
}

static void
pg_pop3_session_apply_copied_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PgPop3Session *self = g_task_get_source_object (task);
  PgPop3Apply *apply = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;

  if (!pg_pop3_maildrop_copy_finish (self->maildrop, result, &error))
    {
      /* Nothing is flagged: the messages stay as they were (\Seen is still applied). */
      apply->problem = g_strdup_printf ("%u messages not moved to %s (%s)", apply->deleted->len,
                                        apply->mailbox, error->message);
      apply->permanent = pg_upstream_error_is_permanent (error);
      g_array_set_size (apply->deleted, 0);
      pg_pop3_session_apply_update (task);
      return;
    }
  /* hidden is this client's "copied" record: none of these is copied again. */
  pg_pop3_session_hide_uids (self, apply->to_copy);
  pg_pop3_session_save_with (self, pg_pop3_session_apply_copy_saved_cb, task);
}

/* Apply policy to deleted (and \Seen to seen), as described above. */
static void
pg_pop3_session_apply_async (PgPop3Session *self, PgDeletePolicy policy, const char *mailbox,
                             GArray *deleted, GArray *seen, GAsyncReadyCallback callback)
{
  GTask *task = g_task_new (self, NULL, callback, g_object_ref (self));
  PgPop3Apply *apply = g_new0 (PgPop3Apply, 1);

  g_task_set_source_tag (task, pg_pop3_session_apply_async);
  apply->policy = policy;
  apply->mailbox = g_strdup (mailbox);
  apply->deleted = g_array_copy (deleted);
  apply->to_copy = g_array_new (FALSE, FALSE, sizeof (guint32));
  apply->seen = g_array_ref (seen);
  g_task_set_task_data (task, apply, (GDestroyNotify) pg_pop3_apply_free);
  if (policy != PG_DELETE_MOVE || deleted->len == 0
      || pg_pop3_maildrop_has_capability (self->maildrop, "MOVE"))
    {
      pg_pop3_session_apply_update (task);
      return;
    }
  apply->policy = PG_DELETE_EXPUNGE; /* what is left after the copy */
  for (guint i = 0; i < deleted->len; i++)
    {
      guint32 uid = g_array_index (deleted, guint32, i);
      if (!pg_uid_set_contains (self->client_state->hidden, uid))
        g_array_append_val (apply->to_copy, uid);
    }
  pg_session_info (self->id,
                   "upstream lacks MOVE: UID COPY of %u messages to %s (%u copied "
                   "for this client before, not again), then flagging",
                   apply->to_copy->len, mailbox, deleted->len - apply->to_copy->len);
  if (apply->to_copy->len == 0)
    {
      pg_pop3_session_apply_update (task);
      return;
    }
  pg_pop3_maildrop_copy_async (self->maildrop, apply->to_copy, mailbox, self->cancellable,
                               pg_pop3_session_apply_copied_cb, task);
}

/* *out_permanent: on failure, whether a retry would fail the same way. */
static gboolean
pg_pop3_session_apply_finish (PgPop3Session *self, GAsyncResult *result, gboolean *out_permanent,
                              GError **error)
{
  PgPop3Apply *apply = g_task_get_task_data (G_TASK (result));

  *out_permanent = apply != NULL && apply->problem != NULL && apply->permanent;
  return g_task_propagate_boolean (G_TASK (result), error);
}

typedef struct
{
  const PgUidSet *gone; /* unowned */
} PgPop3GoneData;

static gboolean
pg_pop3_session_not_gone_cb (const PgPop3Message *msg, gint64 internaldate, gpointer user_data)
{
  PgPop3GoneData *data = user_data;
  return !pg_uid_set_contains (data->gone, msg->uid);
}

static void
pg_pop3_session_pending_done_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *who = NULL;
  gboolean permanent = FALSE;
  PgPop3GoneData gone;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  who = pg_state_key_to_log (self->state_key);
  if (!pg_pop3_session_apply_finish (self, result, &permanent, &error))
    {
      if (!permanent)
        {
          /* Still pending: the next login tries again. Showing the messages now would
           * let the client fetch what it already deleted. */
          pg_session_warning (self->id,
                              "login refused: could not finish the interrupted QUIT "
                              "of %s: %s",
                              who, error->message);
          pg_pop3_session_refuse_login (
              self, "-ERR [SYS/TEMP] Finishing the previous session failed, try again later.");
          return;
        }
      /* The server's considered answer: trying at every login would lock the client out
       * for good. What was left flagged is hidden; the rest stays as it is. */
      pg_session_warning (self->id,
                          "the interrupted QUIT of %s cannot be finished (dropped; "
                          "the messages stay upstream): %s",
                          who, error->message);
    }
  else
    {
      pg_session_message (self->id, "finished the interrupted QUIT of %s", who);
      gone.gone = self->client_state->pending_uids;
      pg_pop3_maildrop_filter (self->maildrop, pg_pop3_session_not_gone_cb, &gone);
    }
  pg_client_state_clear_pending (self->client_state);
  pg_pop3_session_login_save (self);
}

/* A QUIT was interrupted (popgate died, or the upstream went away, between recording the
 * update and the server's confirmation): apply exactly the recorded update to the UIDs
 * that still exist, then clear it. */
static void
pg_pop3_session_finish_pending (PgPop3Session *self)
{
  PgClientState *state = self->client_state;
  GArray *messages = pg_pop3_maildrop_get_messages (self->maildrop);
  g_autoptr (GArray) uids = g_array_new (FALSE, FALSE, sizeof (guint32));
  g_autoptr (GArray) none = g_array_new (FALSE, FALSE, sizeof (guint32));
  g_autofree gchar *who = pg_state_key_to_log (self->state_key);
  g_autofree gchar *set = pg_uid_set_to_string (state->pending_uids);
  PgDeletePolicy policy
      = state->pending == PG_STATE_PENDING_MOVE ? PG_DELETE_MOVE : PG_DELETE_EXPUNGE;

  for (guint i = 0; i < messages->len; i++)
    {
      guint32 uid = g_array_index (messages, PgPop3Message, i).uid;
      if (pg_uid_set_contains (state->pending_uids, uid))
        g_array_append_val (uids, uid);
    }
  pg_session_message (self->id,
                      "finishing an interrupted QUIT of %s: %s UIDs %s (%u of them "
                      "still exist)",
                      who, policy == PG_DELETE_MOVE ? "move" : "expunge", set, uids->len);
  pg_pop3_session_apply_async (self, policy, state->pending_mailbox, uids, none,
                               pg_pop3_session_pending_done_cb);
}

/* --- the UIDL ledger (pg_client_state_rebase) --- */

static void pg_pop3_session_state_settle (PgPop3Session *self);

/* The first snapshot index the ledger covers: its newest PG_STATE_MAX_LEDGER_ENTRIES. */
static guint
pg_pop3_session_ledger_window (PgPop3Session *self)
{
  GArray *messages = pg_pop3_maildrop_get_messages (self->maildrop);

  return messages->len > PG_STATE_MAX_LEDGER_ENTRIES ? messages->len - PG_STATE_MAX_LEDGER_ENTRIES
                                                     : 0;
}

static void
pg_pop3_session_identified_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  if (!pg_pop3_maildrop_identify_finish (self->maildrop, result, &error)
      && !pg_upstream_is_closed (pg_pop3_maildrop_get_upstream (self->maildrop)))
    {
      /* The server refused the FETCH but is still there: the session works without the
       * digests it did not get (those messages have no identity yet). */
      pg_session_warning (self->id, "the UIDL ledger's FETCH was refused, going on without: %s",
                          error->message);
      pg_pop3_session_state_settle (self);
      return;
    }
  if (error != NULL)
    {
      /* As with a failed snapshot: nothing was changed, the client may try again. */
      pg_session_warning (self->id, "login refused: the UIDL ledger's FETCH failed: %s",
                          error->message);
      pg_pop3_session_refuse_login (
          self, "-ERR [SYS/TEMP] The mail server is not available, try again later.");
      return;
    }
  pg_pop3_session_state_settle (self);
}

/* Digests are fetched only for what the ledger does not know yet: the messages that are
 * new since the last session, or all of them after a UIDVALIDITY change. The server's own
 * ids came with the snapshot. */
static void
pg_pop3_session_ledger_identify (PgPop3Session *self)
{
  GArray *messages = pg_pop3_maildrop_get_messages (self->maildrop);
  const PgClientState *stored = self->loaded_state;
  gboolean known
      = self->loaded_status == PG_STATE_LOAD_FOUND && stored->ledger_kind == PG_LEDGER_KIND_DIGEST;
  g_autoptr (PgUidSet) need = pg_uid_set_new ();
  g_autofree gchar *set = NULL;

  if (pg_pop3_maildrop_get_ledger_kind (self->maildrop) != PG_LEDGER_KIND_DIGEST)
    {
      pg_pop3_session_state_settle (self);
      return;
    }
  for (guint i = pg_pop3_session_ledger_window (self); i < messages->len; i++)
    {
      guint32 uid = g_array_index (messages, PgPop3Message, i).uid;

      if (!known || pg_client_state_ledger_lookup (stored, uid) == NULL)
        pg_uid_set_add (need, uid);
    }
  if (pg_uid_set_is_empty (need))
    {
      pg_pop3_session_state_settle (self);
      return;
    }
  set = pg_uid_set_to_string (need);
  /* A scattered set could make a line longer than servers take: the range that holds
   * it asks for a few known ones again, which is harmless. */
  if (strlen (set) > PG_POP3_LEDGER_MAX_SET)
    {
      guint32 first = 0, last = 0, unused = 0;

      pg_uid_set_get_range (need, 0, &first, &unused);
      pg_uid_set_get_range (need, pg_uid_set_get_n_ranges (need) - 1, &unused, &last);
      g_free (set);
      set = g_strdup_printf ("%u:%u", first, last);
    }
  pg_pop3_maildrop_identify_async (self->maildrop, set, self->cancellable,
                                   pg_pop3_session_identified_cb, g_object_ref (self));
}

/* The fresh identities of the ledger's window. */
static GArray *
pg_pop3_session_fresh_identities (PgPop3Session *self)
{
  GArray *messages = pg_pop3_maildrop_get_messages (self->maildrop);
  GArray *ids = pg_pop3_maildrop_get_identities (self->maildrop);
  guint32 first = 0;
  GArray *fresh = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));
  guint start = pg_pop3_session_ledger_window (self);

  if (start < messages->len)
    first = g_array_index (messages, PgPop3Message, start).uid;
  for (guint i = 0; i < ids->len; i++)
    if (start < messages->len && g_array_index (ids, PgLedgerEntry, i).uid >= first)
      g_array_append_val (fresh, g_array_index (ids, PgLedgerEntry, i));
  return fresh;
}

/* Bring state's ledger (this UIDVALIDITY) up to the snapshot: entries for new messages,
 * none for messages known gone; a change of kind re-identifies what is there, keeping the
 * UIDLs. */
static void
pg_pop3_session_ledger_update (PgPop3Session *self, PgClientState *state)
{
  PgLedgerKind kind = pg_pop3_maildrop_get_ledger_kind (self->maildrop);
  g_autoptr (GArray) fresh = NULL;
  GArray *messages = pg_pop3_maildrop_get_messages (self->maildrop);

  if (kind == PG_LEDGER_KIND_NONE)
    {
      state->ledger_kind = PG_LEDGER_KIND_NONE;
      g_array_set_size (state->ledger, 0);
      return;
    }
  fresh = pg_pop3_session_fresh_identities (self);
  for (guint i = 0; i < fresh->len; i++)
    {
      PgLedgerEntry entry = g_array_index (fresh, PgLedgerEntry, i);
      const PgLedgerEntry *known = pg_client_state_ledger_lookup (state, entry.uid);

      entry.uidl_uid = known != NULL ? known->uidl_uid : entry.uid;
      entry.uidl_uidvalidity = known != NULL ? known->uidl_uidvalidity : state->uidvalidity;
      if (known == NULL || state->ledger_kind != kind || memcmp (known, &entry, sizeof entry) != 0)
        pg_client_state_ledger_set (state, &entry);
    }
  if (state->ledger_kind != kind)
    {
      /* What could not be re-identified has no identity of this kind. */
      g_autoptr (GArray) uids = g_array_new (FALSE, FALSE, sizeof (guint32));

      for (guint i = 0; i < fresh->len; i++)
        g_array_append_val (uids, g_array_index (fresh, PgLedgerEntry, i).uid);
      pg_client_state_ledger_prune (state, (const guint32 *) (gpointer) uids->data, uids->len);
      state->ledger_kind = kind;
    }
  if (pg_pop3_maildrop_snapshot_is_complete (self->maildrop))
    {
      g_autofree guint32 *uids = g_new (guint32, MAX (messages->len, 1));

      for (guint i = 0; i < messages->len; i++)
        uids[i] = g_array_index (messages, PgPop3Message, i).uid;
      pg_client_state_ledger_prune (state, uids, messages->len);
    }
  pg_pop3_maildrop_clear_identities (self->maildrop);
}

/* A UIDVALIDITY change with a ledger: carry over the UIDLs, hidden and retrieved of the
 * messages that are the same (pg_client_state_rebase), and say so once. */
static void
pg_pop3_session_rebase (PgPop3Session *self, const PgClientState *stored, guint32 uidnext)
{
  g_autofree gchar *who = pg_state_key_to_log (self->state_key);
  g_autoptr (GArray) fresh = pg_pop3_session_fresh_identities (self);
  PgLedgerKind kind = pg_pop3_maildrop_get_ledger_kind (self->maildrop);
  guint carried = 0, fresh_uidls = 0;
  guint messages = pg_pop3_maildrop_get_messages (self->maildrop)->len;

  self->client_state = pg_client_state_rebase (
      stored, self->uidvalidity, uidnext, g_get_real_time () / G_USEC_PER_SEC, kind,
      (const PgLedgerEntry *) (gpointer) fresh->data, fresh->len, &carried, &fresh_uidls);
  pg_pop3_maildrop_clear_identities (self->maildrop);
  pg_session_warning (
      self->id,
      "UIDVALIDITY of %s changed from %u to %u: %u UIDLs carried over, %u "
      "new (ledger: %s, %u messages; %" G_GUINT64_FORMAT " hidden and %" G_GUINT64_FORMAT
      " retrieved carried over of %" G_GUINT64_FORMAT " and %" G_GUINT64_FORMAT "%s)",
      who, stored->uidvalidity, self->uidvalidity, carried, fresh_uidls + (messages - fresh->len),
      pg_ledger_kind_to_string (kind), stored->ledger->len,
      pg_uid_set_count (self->client_state->hidden),
      pg_uid_set_count (self->client_state->retrieved), pg_uid_set_count (stored->hidden),
      pg_uid_set_count (stored->retrieved),
      stored->pending != PG_STATE_PENDING_NONE
          ? "; an unfinished QUIT is dropped, its UIDs no longer apply"
          : "");
}

static void
pg_pop3_session_state_loaded_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgClientState) stored = NULL;
  g_autofree gchar *who = NULL;
  PgStateLoadStatus status = PG_STATE_LOAD_NEW;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  who = pg_state_key_to_log (self->state_key);
  if (!pg_state_store_load_finish (PG_STATE_STORE (source), result, &status, &stored, &error))
    {
      PgUpstream *upstream = pg_pop3_maildrop_get_upstream (self->maildrop);

      if (pg_state_store_get_backend (self->store) == PG_STATE_BACKEND_IMAP_METADATA
          && !pg_upstream_has_capability (upstream, "METADATA"))
        {
          /* Not something a retry fixes: the admin must change [state] or the server. */
          pg_session_warning (self->id, "login refused for %s: %s", who, error->message);
          pg_pop3_session_refuse_login (
              self, "-ERR [SYS/PERM] The mail server cannot store client state (no METADATA).");
          return;
        }
      /* Never "show everything again": a client that deleted under keep would download
       * its whole mailbox once more. The record is left as it is for the admin. */
      pg_session_warning (self->id,
                          "login refused: the client state of %s cannot be read (left "
                          "as it is; repair or remove it to start this client afresh): %s",
                          who, error->message);
      pg_pop3_session_refuse_login (
          self, "-ERR [SYS/TEMP] This client's state cannot be read, ask the administrator.");
      return;
    }

  self->loaded_status = status;
  g_clear_pointer (&self->loaded_state, pg_client_state_free);
  self->loaded_state = g_steal_pointer (&stored);
  pg_pop3_session_ledger_identify (self);
}

/* The load is complete and the ledger's identities are known: start from the state. */
static void
pg_pop3_session_state_settle (PgPop3Session *self)
{
  g_autoptr (PgClientState) stored = g_steal_pointer (&self->loaded_state);
  g_autofree gchar *who = pg_state_key_to_log (self->state_key);
  PgStateLoadStatus status = self->loaded_status;
  GArray *messages;
  guint32 uidnext;

  messages = pg_pop3_maildrop_get_messages (self->maildrop);
  uidnext = pg_pop3_maildrop_get_uidnext (self->maildrop);
  if (uidnext == 0 && messages->len > 0)
    uidnext = g_array_index (messages, PgPop3Message, messages->len - 1).uid + 1;
  if (uidnext == 0)
    uidnext = 1;

  switch (status)
    {
    case PG_STATE_LOAD_NEW:
      self->client_state
          = pg_client_state_new (self->uidvalidity, uidnext, g_get_real_time () / G_USEC_PER_SEC);
      pg_pop3_session_ledger_update (self, self->client_state);
      pg_session_info (self->id, "first login of %s (UIDNEXT %u)", who, uidnext);
      /* first_login = new must remember this login's UIDNEXT even if the client never
       * QUITs. A new ledger is stored now too: once stored, an idle session need not keep
       * it (pg_client_state_ledger_slim), and a later session finds it. Otherwise nothing
       * needs storing yet. */
      if (self->config->pop3.first_login == PG_FIRST_LOGIN_NEW
          || self->client_state->ledger->len > 0)
        {
          pg_pop3_session_login_save (self);
          return;
        }
      pg_pop3_session_state_ready (self);
      return;
    case PG_STATE_LOAD_UIDVALIDITY_CHANGED:
      if (pg_pop3_maildrop_get_ledger_kind (self->maildrop) != PG_LEDGER_KIND_NONE)
        {
          pg_pop3_session_rebase (self, stored, uidnext);
          pg_pop3_session_login_save (self);
          return;
        }
      pg_session_warning (self->id,
                          "UIDVALIDITY of %s changed from %u to %u: its state is "
                          "discarded (%" G_GUINT64_FORMAT " hidden, %" G_GUINT64_FORMAT
                          " retrieved%s) and its UIDLs change, so the client will see every "
                          "message as new",
                          who, stored->uidvalidity, self->uidvalidity,
                          pg_uid_set_count (stored->hidden), pg_uid_set_count (stored->retrieved),
                          stored->pending != PG_STATE_PENDING_NONE
                              ? ", and an unfinished QUIT whose UIDs no longer apply"
                              : "");
      self->client_state
          = pg_client_state_new (self->uidvalidity, uidnext, g_get_real_time () / G_USEC_PER_SEC);
      pg_pop3_session_login_save (self);
      return;
    case PG_STATE_LOAD_FOUND:
      break;
    }

  self->saved_state = pg_client_state_copy (stored);
  self->client_state = g_steal_pointer (&stored);
  pg_pop3_session_ledger_update (self, self->client_state);
  {
    PgUidSet *hidden = pg_pop3_session_compact (self, self->client_state->hidden, messages);
    PgUidSet *retrieved = pg_pop3_session_compact (self, self->client_state->retrieved, messages);

    pg_uid_set_free (self->client_state->hidden);
    self->client_state->hidden = hidden;
    pg_uid_set_free (self->client_state->retrieved);
    self->client_state->retrieved = retrieved;
  }
  if (self->client_state->pending != PG_STATE_PENDING_NONE)
    {
      pg_pop3_session_finish_pending (self);
      return;
    }
  pg_pop3_session_state_ready (self);
}

/* After the snapshot: load this client's state (user, mailbox, tag). */
static void
pg_pop3_session_state_load (PgPop3Session *self)
{
  g_autoptr (GError) error = NULL;

  self->uidvalidity = pg_pop3_maildrop_get_uidvalidity (self->maildrop);
  self->state_key = pg_state_key_new (pg_login_get_upstream_user (self->login),
                                      pg_login_get_upstream (self->login)->mailbox,
                                      pg_login_get_client_tag (self->login));
  g_clear_object (&self->store);
  self->store = pg_pop3_state_store_get (self->config, &error);
  if (self->store == NULL)
    {
      pg_session_warning (self->id, "login refused: no state store: %s", error->message);
      pg_pop3_session_refuse_login (
          self, "-ERR [SYS/TEMP] Cannot record this client's state, try again later.");
      return;
    }
  pg_state_store_load_async (self->store, pg_pop3_maildrop_get_upstream (self->maildrop),
                             self->state_key, self->uidvalidity, self->cancellable,
                             pg_pop3_session_state_loaded_cb, g_object_ref (self));
}

static void
pg_pop3_session_move_target_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  const char *mailbox = self->config->pop3.move_mailbox;
  gboolean exists = FALSE;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  if (!pg_upstream_list_finish (PG_UPSTREAM (source), result, &exists, &error))
    {
      if (!pg_upstream_error_is_permanent (error))
        {
          pg_session_warning (self->id, "login refused: upstream lost while checking %s: %s",
                              mailbox, error->message);
          pg_pop3_session_refuse_login (
              self, "-ERR [SYS/TEMP] The mail server is not available, try again later.");
          return;
        }
      /* A server that refuses this LIST may still take the move: QUIT will tell. */
      pg_session_info (self->id, "cannot check the move target %s (%s); QUIT will tell", mailbox,
                       error->message);
      exists = TRUE;
    }
  if (!exists)
    {
      /* Nothing a retry fixes, and better now than at QUIT: a client that downloads and
       * DELEs would get the same messages again at every poll, removing none. */
      pg_session_warning (self->id,
                          "login refused: the move target %s does not exist upstream "
                          "([pop3] delete = move:%s)",
                          mailbox, mailbox);
      pg_pop3_session_refuse_login (self, "-ERR [SYS/PERM] The mailbox that deleted messages "
                                          "move to does not exist, ask the administrator.");
      return;
    }
  pg_pop3_session_state_load (self);
}

/* delete = move:MAILBOX: one LIST at login says whether MAILBOX exists, so that a missing
 * one is a clear [SYS/PERM] before the client downloads anything (QUIT still checks: it
 * may be deleted meanwhile). */
static void
pg_pop3_session_check_move_target (PgPop3Session *self)
{
  if (self->config->pop3.delete_policy != PG_DELETE_MOVE)
    {
      pg_pop3_session_state_load (self);
      return;
    }
  pg_upstream_list_async (pg_pop3_maildrop_get_upstream (self->maildrop),
                          self->config->pop3.move_mailbox, self->cancellable,
                          pg_pop3_session_move_target_cb, g_object_ref (self));
}

static void
pg_pop3_session_open_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  const char *login = NULL;
  g_autofree gchar *user = NULL;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  /* Back to the pre-auth timer until the login is complete (then autologout). */
  pg_conn_set_idle_timeout (self->conn, self->config->limits.preauth_timeout_ms);
  login = pg_login_get_user (self->login);
  user = pg_log_escape (login, strlen (login), 64);
  if (!pg_pop3_maildrop_open_finish (self->maildrop, result, &error))
    {
      g_clear_pointer (&self->maildrop, pg_pop3_maildrop_free);
      pg_login_unavailable (self->login, error);
      self->busy = FALSE;
      /* RFC 3206: what a retry cannot fix (the upstream's certificate, a mailbox it
       * refuses to select, a snapshot beyond PG_MAX_SNAPSHOT_*) is SYS/PERM, so that
       * clients stop retrying. */
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE))
        pg_pop3_reply (self, "-ERR [SYS/PERM] The mailbox is too large for this gateway.");
      else if (pg_upstream_error_is_permanent (error))
        pg_pop3_reply (self, "-ERR [SYS/PERM] The mail server cannot be used, ask the "
                             "administrator.");
      else
        pg_pop3_reply (self, "-ERR [SYS/TEMP] The mail server is not available, try again later.");
      pg_pop3_session_process (self);
      return;
    }

  /* RFC 1939 §8 allows exclusive access to the maildrop, per (user, mailbox, client); off
   * by default as in Dovecot (a client whose connection dropped would otherwise be locked
   * out until the old session's autologout). Concurrent sessions each work on their own
   * snapshot, by UID only, and their state saves merge (pg_state_store_save_merge). */
  if (self->config->pop3.lock_session)
    {
      g_autofree gchar *key = g_strdup_printf (
          "%s\n%s\n%s", pg_login_get_upstream_user (self->login),
          pg_login_get_upstream (self->login)->mailbox, pg_login_get_client_tag (self->login));
      if (pg_pop3_locks == NULL)
        pg_pop3_locks = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
      if (g_hash_table_contains (pg_pop3_locks, key))
        {
          pg_session_message (self->id, "maildrop of user=%s is in use by another session", user);
          pg_metrics_login (PG_METRICS_FRONTEND_POP3, PG_METRICS_LOGIN_IN_USE);
          pg_pop3_maildrop_close (self->maildrop);
          g_clear_pointer (&self->maildrop, pg_pop3_maildrop_free);
          pg_login_clear_user (self->login);
          self->busy = FALSE;
          pg_pop3_reply (self, "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
          pg_pop3_session_process (self);
          return;
        }
      g_hash_table_insert (pg_pop3_locks, g_strdup (key), self);
      self->lock_key = g_steal_pointer (&key);
    }

  pg_pop3_session_check_move_target (self);
}

/* The login path has logged in upstream (or not): open the maildrop on it. */
static void
pg_pop3_session_login_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgUpstream) upstream = NULL;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  upstream = pg_login_authenticate_finish (self->login, result, &error);
  if (upstream == NULL)
    {
      pg_conn_set_idle_timeout (self->conn, self->config->limits.preauth_timeout_ms);
      if (g_error_matches (error, PG_ERROR, PG_ERROR_AUTH_FAILED))
        {
          pg_pop3_session_auth_failed (self, error);
          return;
        }
      pg_login_unavailable (self->login, error);
      self->busy = FALSE;
      /* RFC 3206: what a retry cannot fix (the upstream's certificate, a refusal that is
       * not about the credentials) is SYS/PERM, so that clients stop retrying. */
      if (pg_upstream_error_is_permanent (error))
        pg_pop3_reply (self, "-ERR [SYS/PERM] The mail server cannot be used, ask the "
                             "administrator.");
      else
        pg_pop3_reply (self, "-ERR [SYS/TEMP] The mail server is not available, try again later.");
      pg_pop3_session_process (self);
      return;
    }
  self->maildrop
      = pg_pop3_maildrop_new (self->config, pg_login_get_upstream (self->login), self->id);
  pg_pop3_maildrop_open_async (self->maildrop, upstream, self->cancellable, pg_pop3_session_open_cb,
                               g_object_ref (self));
}

static void
pg_pop3_session_login (PgPop3Session *self, const char *password)
{
  self->busy = TRUE;
  /* The client has said its piece and waits for us: the pre-auth timer must not end the
   * session while the upstream login queues (1,000 logins at once did). The upstream's
   * own connect and command timeouts bound the wait; the timer is re-armed when the
   * answer comes. */
  pg_conn_set_idle_timeout (self->conn, 0);
  pg_login_authenticate_async (self->login, password, FALSE, self->cancellable,
                               pg_pop3_session_login_cb, g_object_ref (self));
}

/* What the login path made of a SASL line. */
static void
pg_pop3_session_sasl_result (PgPop3Session *self, PgLoginSaslStatus status, const char *challenge,
                             const char *password, const GError *error)
{
  switch (status)
    {
    case PG_LOGIN_SASL_CONTINUE:
      pg_pop3_reply (self, "+ %s", challenge);
      return;
    case PG_LOGIN_SASL_DONE:
      pg_pop3_session_login (self, password);
      return;
    case PG_LOGIN_SASL_CANCELLED:
      pg_pop3_reply (self, "-ERR Authentication cancelled.");
      return;
    case PG_LOGIN_SASL_MALFORMED:
      pg_pop3_reply (self, "-ERR [AUTH] Malformed SASL response (%s).", error->message);
      pg_pop3_session_bad_command (self);
      return;
    case PG_LOGIN_SASL_REFUSED:
      pg_pop3_session_auth_failed (self, NULL);
      return;
    case PG_LOGIN_SASL_UNSUPPORTED:
      pg_pop3_reply (self, "-ERR [AUTH] Unsupported authentication mechanism.");
      pg_pop3_session_bad_command (self);
      return;
    }
  g_assert_not_reached ();
}

static void
pg_pop3_session_sasl_response (PgPop3Session *self, const char *line, gsize len)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgSecret) password = NULL;
  const char *challenge = NULL;
  PgLoginSaslStatus status;

  if (len > PG_POP3_MAX_SASL_LINE)
    {
      /* Ends the exchange: a step with "*" is a cancel. */
      (void) pg_login_sasl_step (self->login, "*", 1, &challenge, &password, NULL);
      pg_pop3_reply (self, "-ERR [AUTH] SASL response too long.");
      pg_pop3_session_bad_command (self);
      return;
    }
  status = pg_login_sasl_step (self->login, line, len, &challenge, &password, &error);
  pg_pop3_session_sasl_result (self, status, challenge, password, error);
}

static void
pg_pop3_session_auth (PgPop3Session *self, PgPop3Command *cmd)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgSecret) password = NULL;
  const char *challenge = NULL;
  PgLoginSaslStatus status;

  if (cmd->arg1 == NULL)
    {
      /* RFC 5034 §4 allows an AUTH without arguments to list the mechanisms. */
      pg_pop3_reply (self, "+OK");
      if (pg_pop3_session_plaintext_allowed (self))
        {
          g_auto (GStrv) mechanisms = g_strsplit (PG_LOGIN_SASL_MECHANISMS, " ", -1);
          for (gsize i = 0; mechanisms[i] != NULL; i++)
            pg_pop3_reply (self, "%s", mechanisms[i]);
        }
      pg_pop3_reply (self, ".");
      return;
    }
  if (!pg_pop3_session_plaintext_allowed (self))
    {
      pg_pop3_reply (self, "-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                           "connections; use STLS first.");
      return;
    }
  status = pg_login_sasl_start (self->login, cmd->arg1, cmd->arg2,
                                cmd->arg2 != NULL ? strlen (cmd->arg2) : 0, &challenge, &password,
                                &error);
  pg_pop3_session_sasl_result (self, status, challenge, password, error);
}

static void
pg_pop3_session_stls_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;

  if (!pg_conn_start_tls_finish (self->conn, result, &error))
    {
      if (self->state != PG_POP3_STATE_CLOSED && !pg_conn_is_closed (self->conn))
        {
          pg_session_info (self->id, "STLS handshake failed: %s", error->message);
          self->end_reason = g_strdup ("TLS handshake failed");
          pg_conn_abort (self->conn);
        }
      return;
    }
  pg_session_info (self->id, "TLS started");
  self->busy = FALSE;
  self->starting_tls = FALSE;
  pg_pop3_session_process (self);
}

/* Start the handshake once the "+OK" is out and no plaintext read is pending. */
static void
pg_pop3_session_maybe_start_tls (PgPop3Session *self)
{
  if (!self->tls_flushed || self->reading || pg_conn_is_closed (self->conn))
    return;
  self->tls_flushed = FALSE;
  pg_conn_start_tls_async (self->conn, self->cancellable, pg_pop3_session_stls_cb,
                           g_object_ref (self));
}

static void
pg_pop3_session_stls_flushed_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;

  if (!pg_conn_wait_drained_finish (self->conn, result, NULL))
    return;
  self->tls_flushed = TRUE;
  pg_pop3_session_maybe_start_tls (self);
}

static void
pg_pop3_session_stls (PgPop3Session *self)
{
  if (!pg_conn_can_start_tls (self->conn))
    {
      pg_pop3_reply (self, "-ERR TLS is not available here.");
      return;
    }
  if (pg_login_get_user (self->login) != NULL)
    {
      pg_pop3_reply (self, "-ERR STLS is not allowed after USER.");
      return;
    }
  pg_pop3_reply (self, "+OK Begin TLS negotiation now.");
  pg_pop3_session_flush (self);
  /* RFC 2595 §3.1 / CVE-2011-0411: anything the client sent after STLS in plaintext must
   * not be taken as a command inside the TLS session. */
  {
    gsize dropped = pg_line_reader_discard_buffered (self->reader);
    if (dropped > 0)
      pg_session_info (self->id, "discarded %" G_GSIZE_FORMAT " plaintext bytes after STLS",
                       dropped);
  }
  self->busy = TRUE;
  self->starting_tls = TRUE;
  if (self->reading)
    g_cancellable_cancel (self->read_cancellable);
  pg_conn_wait_drained_async (self->conn, 0, self->cancellable, pg_pop3_session_stls_flushed_cb,
                              g_object_ref (self));
}

static void
pg_pop3_session_authorization (PgPop3Session *self, PgPop3Command *cmd)
{
  switch (cmd->kind)
    {
    case PG_POP3_COMMAND_USER:
      if (!pg_pop3_session_plaintext_allowed (self))
        {
          pg_pop3_reply (self, "-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                               "connections; use STLS first.");
          return;
        }
      pg_login_set_user (self->login, cmd->arg1);
      pg_pop3_reply (self, "+OK");
      return;
    case PG_POP3_COMMAND_PASS:
      if (pg_login_get_user (self->login) == NULL)
        {
          pg_pop3_reply (self, "-ERR No user name given, send USER first.");
          pg_pop3_session_bad_command (self);
          return;
        }
      if (!pg_pop3_session_plaintext_allowed (self))
        {
          pg_pop3_reply (self, "-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                               "connections; use STLS first.");
          return;
        }
      pg_pop3_session_login (self, cmd->arg1);
      return;
    case PG_POP3_COMMAND_AUTH:
      pg_pop3_session_auth (self, cmd);
      return;
    case PG_POP3_COMMAND_APOP:
      pg_pop3_reply (self, "-ERR [AUTH] APOP is not supported.");
      return;
    case PG_POP3_COMMAND_STLS:
      pg_pop3_session_stls (self);
      return;
    case PG_POP3_COMMAND_CAPA:
      pg_pop3_session_capa (self);
      return;
    case PG_POP3_COMMAND_QUIT:
      pg_pop3_reply (self, "+OK popgate signing off.");
      pg_pop3_session_end (self, "QUIT");
      return;
    case PG_POP3_COMMAND_STAT:
    case PG_POP3_COMMAND_LIST:
    case PG_POP3_COMMAND_UIDL:
    case PG_POP3_COMMAND_RETR:
    case PG_POP3_COMMAND_TOP:
    case PG_POP3_COMMAND_DELE:
    case PG_POP3_COMMAND_RSET:
    case PG_POP3_COMMAND_NOOP:
      pg_pop3_reply (self, "-ERR Not logged in, authenticate first.");
      pg_pop3_session_bad_command (self);
      return;
    case PG_POP3_COMMAND_UTF8:
    case PG_POP3_COMMAND_UNKNOWN:
    case PG_POP3_COMMAND_COUNT:
      break;
    }
  pg_pop3_reply (self, "-ERR Unknown command.");
  pg_pop3_session_bad_command (self);
}

/* --- TRANSACTION -------------------------------------------------------------------------- */

/* The snapshot index of a POP3 message number, or FALSE after replying -ERR. */
static gboolean
pg_pop3_session_message (PgPop3Session *self, guint32 number, guint *out_index)
{
  if (number == 0 || number > self->n_messages)
    {
      pg_pop3_reply (self, "-ERR There is no message %u.", number);
      return FALSE;
    }
  if (pg_pop3_session_flagged (self, number - 1, PG_POP3_MSG_DELETED))
    {
      pg_pop3_reply (self, "-ERR Message %u is deleted.", number);
      return FALSE;
    }
  *out_index = number - 1;
  return TRUE;
}

static void
pg_pop3_session_stat (PgPop3Session *self)
{
  guint count = 0;
  guint64 octets = 0;

  for (guint i = 0; i < self->n_messages; i++)
    if (!pg_pop3_session_flagged (self, i, PG_POP3_MSG_DELETED))
      {
        count++;
        octets += pg_pop3_session_size (self, i);
      }
  pg_pop3_reply (self, "+OK %u %" G_GUINT64_FORMAT, count, octets);
}

/* UIDL is Dovecot's default pop3_uidl_format "%08Xu%08Xv": UID then UIDVALIDITY as 8 hex
 * digits each. Dovecot's %X prints lower-case hex, so we do too: a client moved from
 * Dovecot's POP3 to popgate then sees the same UIDLs and downloads nothing twice. */
static void
pg_pop3_session_list (PgPop3Session *self, PgPop3Command *cmd, gboolean uidl)
{
  if (cmd->has_message)
    {
      guint index;

      if (!pg_pop3_session_message (self, cmd->message, &index))
        return;
      if (uidl)
        {
          char text[17];

          pg_client_state_format_uidl (self->client_state,
                                       pg_pop3_maildrop_uid (self->maildrop, index), text);
          pg_pop3_reply (self, "+OK %u %s", cmd->message, text);
        }
      else
        pg_pop3_reply (self, "+OK %u %" G_GUINT64_FORMAT, cmd->message,
                       pg_pop3_session_size (self, index));
      return;
    }
  pg_pop3_reply (self, uidl ? "+OK Unique-ID listing follows" : "+OK Scan listing follows");
  for (guint i = 0; i < self->n_messages; i++)
    {
      if (pg_pop3_session_flagged (self, i, PG_POP3_MSG_DELETED))
        continue;
      if (uidl)
        {
          char text[17];

          pg_client_state_format_uidl (self->client_state, pg_pop3_maildrop_uid (self->maildrop, i),
                                       text);
          pg_pop3_reply (self, "%u %s", i + 1, text);
        }
      else
        pg_pop3_reply (self, "%u %" G_GUINT64_FORMAT, i + 1, pg_pop3_session_size (self, i));
    }
  pg_pop3_reply (self, ".");
}

/* --- RETR and TOP ------------------------------------------------------------------------
 *
 * A transfer streams one message (RETR) or its header and first lines (TOP) from the
 * upstream to the client. Chunks are dot-stuffed and queued for the client as they come;
 * while the client is behind, the upstream is paused (back-pressure both ways).
 *
 * RFC 2449 PIPELINING: when a RETR starts and the next buffered commands are RETRs too,
 * those messages are fetched at once on the same upstream connection (up to
 * PG_POP3_PREFETCH_DEPTH ahead), so a batch of RETRs costs no upstream round trip each. The server
 * sends the bodies in order, but may send the next FETCH's body before the previous command's
 * tagged OK (Dovecot does). A body literal is contiguous, so the first chunk of the prefetched
 * message proves the current one's body is complete: the current RETR is finished there
 * and then (terminator, or -ERR if no body came), the client's next command (that RETR)
 * makes the prefetched transfer current, and its chunk is sent. Until then the upstream
 * holds that chunk in its read buffer (PG_UPSTREAM_CHUNK_HOLD), paused: no copy, and
 * nothing more is read, so the read-ahead stays bounded. */

struct _PgPop3Transfer
{
  PgPop3Session *self; /* unowned: each fetch callback holds a session reference */
  guint index;         /* message index (number - 1) */
  gboolean is_top;
  PgDotStuffer *stuffer;       /* owned */
  gboolean active;             /* the transfer now being sent to the client */
  gboolean sent_ok;            /* its "+OK" line is out */
  gboolean holding;            /* the upstream holds its first chunk, not taken yet */
  gboolean finished;           /* the upstream completed the (last) fetch */
  GError *error;               /* owned: its failure, if any */
  guint64 delivered;           /* octets of the section being fetched */
  gboolean top_in_text;        /* TOP: the header is out, partials of the text follow */
  guint64 top_offset;          /* TOP: offset of the BODY[TEXT] partial being fetched */
  struct _PgPop3FetchCtx *ctx; /* unowned: the fetch in flight for it, or NULL */
};

/* One upstream fetch in flight: survives its transfer if that finished early. */
typedef struct _PgPop3FetchCtx
{
  PgPop3Session *self;      /* owned */
  PgPop3Transfer *transfer; /* unowned; NULL once the transfer is gone */
} PgPop3FetchCtx;

static void
pg_pop3_transfer_free (PgPop3Transfer *transfer)
{
  if (transfer == NULL)
    return;
  if (transfer->ctx != NULL)
    transfer->ctx->transfer = NULL;
  g_clear_pointer (&transfer->stuffer, pg_dot_stuffer_free);
  g_clear_error (&transfer->error);
  g_free (transfer);
}

static void pg_pop3_session_fetch_cb (GObject *source, GAsyncResult *result, gpointer user_data);
static PgUpstreamChunkAction pg_pop3_session_chunk_cb (const guint8 *data, gsize len,
                                                       gpointer user_data);

static void
pg_pop3_session_start_fetch (PgPop3Session *self, PgPop3Transfer *transfer, PgPop3Section section,
                             guint64 offset, guint64 length)
{
  guint32 uid = pg_pop3_maildrop_uid (self->maildrop, transfer->index);

  PgPop3FetchCtx *ctx = g_new0 (PgPop3FetchCtx, 1);

  ctx->self = g_object_ref (self);
  ctx->transfer = transfer;
  transfer->ctx = ctx;
  transfer->delivered = 0;
  transfer->finished = FALSE;
  pg_pop3_maildrop_fetch_async (self->maildrop, uid, section, offset, length,
                                pg_pop3_session_chunk_cb, ctx, self->cancellable,
                                pg_pop3_session_fetch_cb, ctx);
}

static PgPop3Transfer *
pg_pop3_session_new_transfer (PgPop3Session *self, guint index, gboolean is_top, guint32 lines)
{
  PgPop3Transfer *transfer = g_new0 (PgPop3Transfer, 1);

  transfer->self = self;
  transfer->index = index;
  transfer->is_top = is_top;
  transfer->stuffer = is_top ? pg_dot_stuffer_new_top (lines) : pg_dot_stuffer_new ();
  pg_pop3_session_start_fetch (self, transfer,
                               is_top ? PG_POP3_SECTION_HEADER : PG_POP3_SECTION_ALL, 0, 0);
  return transfer;
}

static void
pg_pop3_session_drained_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;

  if (!pg_conn_wait_drained_finish (self->conn, result, NULL))
    return; /* closed: the conn's "closed" handler cleans up */
  if (self->maildrop != NULL)
    {
      /* The upstream reads on at once while it has data: one write for what it delivers. */
      g_autoptr (PgConn) conn = g_object_ref (self->conn);

      pg_conn_cork (conn);
      pg_pop3_maildrop_resume (self->maildrop);
      pg_conn_uncork (conn);
    }
}

/* "+OK n octets", the status line of every RETR, without printf (~1,000 instructions). */
static void
pg_pop3_session_reply_octets (PgPop3Session *self, guint64 octets)
{
  char digits[PG_DECIMAL_MAX_LEN];

  g_string_append (self->reply, "+OK ");
  g_string_append_len (self->reply, digits, (gssize) pg_format_decimal (digits, octets));
  g_string_append (self->reply, " octets\r\n");
}

/* Dot-stuff data (NULL: the end of the message) straight into the client's output (no
 * scratch copy); corked here, so a chunk fed outside a cork still leaves in one write. */
static void
pg_pop3_session_stuff (PgPop3Session *self, PgPop3Transfer *transfer, const guint8 *data, gsize len)
{
  g_autoptr (PgConn) conn = g_object_ref (self->conn);
  GByteArray *out;

  pg_conn_cork (conn);
  out = pg_conn_cork_buffer (conn, data != NULL ? len : 5);
  if (out != NULL && data != NULL)
    pg_dot_stuffer_feed (transfer->stuffer, data, len, out);
  else if (out != NULL)
    pg_dot_stuffer_finish (transfer->stuffer, out);
  pg_conn_uncork (conn);
}

/* Stuff one chunk of the active transfer and queue it. Returns FALSE when the client is
 * behind: the upstream stays paused until the output has drained. */
static gboolean
pg_pop3_session_send_chunk (PgPop3Session *self, PgPop3Transfer *transfer, const guint8 *data,
                            gsize len)
{
  if (!transfer->sent_ok)
    {
      if (transfer->is_top)
        pg_pop3_reply (self, "+OK");
      else
        pg_pop3_session_reply_octets (self, pg_pop3_session_size (self, transfer->index));
      pg_pop3_session_flush (self);
      transfer->sent_ok = TRUE;
    }
  if (pg_dot_stuffer_is_done (transfer->stuffer))
    return TRUE; /* TOP has its lines: the rest of this partial is not needed */
  pg_pop3_session_stuff (self, transfer, data, len);
  if (pg_conn_get_queued (self->conn) > PG_CLIENT_OUTPUT_HIGH_WATER)
    {
      pg_conn_wait_drained_async (self->conn, PG_CLIENT_OUTPUT_HIGH_WATER / 2, self->cancellable,
                                  pg_pop3_session_drained_cb, g_object_ref (self));
      return FALSE;
    }
  return TRUE;
}

static void pg_pop3_session_transfer_done (PgPop3Session *self, PgPop3Transfer *transfer);

/* `transfer`, fetched ahead, got its first chunk: the bodies come in the order the
 * fetches were sent, so a transfer queued before it that has no chunk yet never gets one
 * (an IMAP client expunged it meanwhile, or the server left it out of a batch). Mark those
 * finished and vanished now: when the client asks for one, it gets -ERR at once instead of
 * waiting for a fetch that cannot end while the upstream is paused on this chunk. */
static void
pg_pop3_session_mark_vanished_before (PgPop3Session *self, PgPop3Transfer *transfer)
{
  for (GList *l = self->prefetch.head; l != NULL && l->data != transfer; l = l->next)
    {
      PgPop3Transfer *ahead = l->data;

      if (ahead->delivered > 0 || ahead->holding || ahead->finished || ahead->error != NULL)
        continue;
      ahead->error
          = g_error_new (G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no body came for this message");
      ahead->finished = TRUE;
    }
}

static PgUpstreamChunkAction
pg_pop3_session_chunk_cb (const guint8 *data, gsize len, gpointer user_data)
{
  PgPop3FetchCtx *ctx = user_data;
  PgPop3Transfer *transfer = ctx->transfer;
  PgPop3Session *self = ctx->self;

  if (transfer == NULL)
    return PG_UPSTREAM_CHUNK_NEXT; /* its transfer is gone: drop what a confused server sends */
  if (pg_conn_is_closed (self->conn))
    return PG_UPSTREAM_CHUNK_PAUSE;
  if (!transfer->active)
    {
      /* A prefetched message's body has begun, so every body before it is complete: finish
       * those RETRs now (one that got no chunk got no body: it vanished); the client's next
       * command, this RETR, may then make this transfer current. */
      g_autoptr (PgPop3Session) keep = g_object_ref (self);

      transfer->holding = TRUE;
      while (!pg_conn_is_closed (self->conn) && ctx->transfer != NULL && !transfer->active
             && self->transfer != NULL && !self->transfer->is_top)
        {
          PgPop3Transfer *current = self->transfer;

          if (current->delivered == 0 && current->error == NULL)
            current->error
                = g_error_new (G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no body came for this message");
          current->finished = TRUE;
          self->in_chunk_cb = TRUE;
          pg_pop3_session_transfer_done (self, current);
          self->in_chunk_cb = FALSE;
          if (self->transfer == current)
            break;
        }
      if (pg_conn_is_closed (self->conn))
        return PG_UPSTREAM_CHUNK_PAUSE;
      if (ctx->transfer == NULL)
        return PG_UPSTREAM_CHUNK_NEXT; /* the client asked for something else: dropped */
      if (!transfer->active)
        {
          pg_pop3_session_mark_vanished_before (self, transfer);
          return PG_UPSTREAM_CHUNK_HOLD; /* not asked for yet: wait (bounded: paused) */
        }
      transfer->holding = FALSE;
    }
  transfer->delivered += len;
  return pg_pop3_session_send_chunk (self, transfer, data, len) ? PG_UPSTREAM_CHUNK_NEXT
                                                                : PG_UPSTREAM_CHUNK_PAUSE;
}

/* The upstream finished the active transfer's section: next partial (TOP), or the end. */
static void
pg_pop3_session_transfer_step (PgPop3Session *self, PgPop3Transfer *transfer)
{
  if (transfer->error == NULL && transfer->is_top && !pg_dot_stuffer_is_done (transfer->stuffer))
    {
      /* TOP: the header came, or a partial of the text. Fetch the next partial unless the
       * text has ended (a partial shorter than asked for is the last one). */
      if (!transfer->top_in_text)
        {
          transfer->top_in_text = TRUE;
          transfer->top_offset = 0;
          pg_pop3_session_start_fetch (self, transfer, PG_POP3_SECTION_TEXT, 0,
                                       PG_POP3_TOP_PARTIAL);
          return;
        }
      if (transfer->delivered == PG_POP3_TOP_PARTIAL)
        {
          transfer->top_offset += PG_POP3_TOP_PARTIAL;
          pg_pop3_session_start_fetch (self, transfer, PG_POP3_SECTION_TEXT, transfer->top_offset,
                                       PG_POP3_TOP_PARTIAL);
          return;
        }
    }
  pg_pop3_session_transfer_done (self, transfer);
}

static void
pg_pop3_session_fetch_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgPop3FetchCtx *ctx = user_data;
  g_autoptr (PgPop3Session) self = ctx->self;
  PgPop3Transfer *transfer = ctx->transfer;
  GError *error = NULL;

  g_free (ctx);
  if (!pg_pop3_maildrop_fetch_finish (self->maildrop, result, &error) && transfer != NULL
      && transfer->error == NULL)
    transfer->error = error;
  else
    g_clear_error (&error);
  if (transfer == NULL)
    return; /* finished early (see "RETR and TOP") or the session is gone */
  transfer->ctx = NULL;
  /* A body completes only once its chunks are taken: a chunk still held was lost with the
   * upstream (transfer->error says so). */
  transfer->holding = FALSE;
  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  transfer->finished = TRUE;
  if (transfer->active)
    {
      /* The terminator, and what the next pipelined commands answer, in one write. */
      g_autoptr (PgConn) conn = g_object_ref (self->conn);

      pg_conn_cork (conn);
      pg_pop3_session_transfer_step (self, transfer);
      pg_conn_uncork (conn);
    }
}

static gboolean
pg_pop3_session_uid_in_flight (PgPop3Session *self, guint index)
{
  guint32 uid = pg_pop3_maildrop_uid (self->maildrop, index);

  if (self->transfer != NULL && pg_pop3_maildrop_uid (self->maildrop, self->transfer->index) == uid)
    return TRUE;
  for (GList *l = self->prefetch.head; l != NULL; l = l->next)
    if (pg_pop3_maildrop_uid (self->maildrop, ((PgPop3Transfer *) l->data)->index) == uid)
      return TRUE;
  return FALSE;
}

/* Forget what was fetched ahead: the client asked for something else. A FETCH cannot be
 * taken back, so those fetches stay in flight and their bodies are read and dropped (at
 * most PG_POP3_READAHEAD_OCTETS of them); one of them may hold a chunk and have paused the
 * upstream, so resume it. */
static void
pg_pop3_session_drop_prefetch (PgPop3Session *self)
{
  if (self->prefetch.length == 0)
    return;
  pg_session_debug (self->id, "dropping %u messages fetched ahead", self->prefetch.length);
  g_queue_clear_full (&self->prefetch, (GDestroyNotify) pg_pop3_transfer_free);
  pg_pop3_maildrop_resume (self->maildrop);
}

static void
pg_pop3_session_push_prefetch (PgPop3Session *self, guint index)
{
  pg_session_debug (self->id, "fetching message %u ahead (UID %u)", index + 1,
                    pg_pop3_maildrop_uid (self->maildrop, index));
  g_queue_push_tail (&self->prefetch, pg_pop3_session_new_transfer (self, index, FALSE, 0));
}

/* Fetch ahead the messages the client will ask for next, so RETRs cost no upstream round
 * trip each and go upstream in batches (see pg_upstream_batch_fetches):
 * - the RETRs that follow in the buffered input (RFC 2449 PIPELINING): the first lines
 *   after the current command match the queue, in order; a line that does not stops it;
 * - read-ahead: a client downloading its mailbox asks for message n+1 after n, usually
 *   one RETR at a time. Once the current RETR continues such a run, the next live
 *   messages are fetched too, up to PG_POP3_READAHEAD_OCTETS. A guess that proves wrong is
 *   dropped (pg_pop3_session_drop_prefetch) and costs those octets once.
 * A message already in flight is not fetched twice. */
static void
pg_pop3_session_maybe_prefetch (PgPop3Session *self)
{
  gsize offset = 0;
  guint seen = 0;
  guint next_index;
  guint64 octets = 0;

  if (self->transfer == NULL || self->transfer->is_top)
    return;
  while (self->prefetch.length < PG_POP3_PREFETCH_DEPTH)
    {
      const char *line = NULL;
      gsize len = 0;
      g_auto (PgPop3Command) next = { 0 };

      if (!pg_line_reader_peek_at (self->reader, &offset, &line, &len))
        break;
      if (pg_pop3_command_parse (line, len, &next) != PG_POP3_PARSE_OK
          || next.kind != PG_POP3_COMMAND_RETR || next.message == 0
          || next.message > self->n_messages
          || pg_pop3_session_flagged (self, next.message - 1, PG_POP3_MSG_DELETED))
        return;
      if (seen < self->prefetch.length)
        {
          /* Fetched ahead already? Else the guess is wrong: RETR drops it when it gets there. */
          PgPop3Transfer *ahead = g_queue_peek_nth (&self->prefetch, seen++);
          if (ahead->index != next.message - 1)
            return;
          continue;
        }
      if (pg_pop3_session_uid_in_flight (self, next.message - 1))
        return;
      seen++;
      pg_pop3_session_push_prefetch (self, next.message - 1);
    }

  if (!self->retr_run || self->prefetch.length > PG_POP3_PREFETCH_DEPTH / 2)
    return; /* not a run of RETR n, RETR n+1 (yet), or enough in flight */
  next_index = self->transfer->index + 1;
  for (GList *l = self->prefetch.head; l != NULL; l = l->next)
    {
      const PgPop3Transfer *ahead = l->data;
      octets += pg_pop3_session_size (self, ahead->index);
      next_index = ahead->index + 1;
    }
  for (; next_index < self->n_messages && self->prefetch.length < PG_POP3_PREFETCH_DEPTH;
       next_index++)
    {
      guint64 size = pg_pop3_session_size (self, next_index);

      if (pg_pop3_session_flagged (self, next_index, PG_POP3_MSG_DELETED))
        continue;
      if (octets + size > PG_POP3_READAHEAD_OCTETS
          || pg_pop3_session_uid_in_flight (self, next_index))
        break;
      octets += size;
      pg_pop3_session_push_prefetch (self, next_index);
    }
}

/* Make `transfer` the one sent to the client; send what it already holds. */
static void
pg_pop3_session_activate (PgPop3Session *self, PgPop3Transfer *transfer)
{
  self->transfer = transfer;
  transfer->active = TRUE;
  pg_pop3_session_flush (self);
  pg_pop3_session_maybe_prefetch (self);
  if (transfer->holding)
    {
      /* The upstream holds its first chunk: take it (from inside its chunk callback, that
       * callback sends it on return). */
      if (!self->in_chunk_cb)
        pg_pop3_maildrop_resume (self->maildrop);
      return;
    }
  if (transfer->finished)
    pg_pop3_session_transfer_step (self, transfer);
}

/* A whole message went out: if its octets differ from the snapshot's RFC822.SIZE (some
 * servers' sizes are approximate), LIST and STAT say what RETR really sends from now on,
 * and the log says so once per session. */
static void
pg_pop3_session_check_size (PgPop3Session *self, PgPop3Transfer *transfer)
{
  guint32 uid = pg_pop3_maildrop_uid (self->maildrop, transfer->index);
  guint64 listed = pg_pop3_session_size (self, transfer->index);
  guint64 sent = pg_dot_stuffer_get_octets_unstuffed (transfer->stuffer);

  if (sent == listed)
    return;
  if (!self->size_mismatch_logged)
    {
      self->size_mismatch_logged = TRUE;
      pg_session_warning (self->id,
                          "message %u (UID %u): the upstream said %" G_GUINT64_FORMAT
                          " octets (RFC822.SIZE), the body has %" G_GUINT64_FORMAT
                          "; LIST and STAT use the real size from now on (further mismatches "
                          "in this session are corrected without a log line)",
                          transfer->index + 1, uid, listed, sent);
    }
  pg_pop3_maildrop_set_size (self->maildrop, transfer->index, sent);
}

static void
pg_pop3_session_transfer_done (PgPop3Session *self, PgPop3Transfer *transfer)
{
  guint32 uid = pg_pop3_maildrop_uid (self->maildrop, transfer->index);
  GError *error = transfer->error;

  g_assert (transfer == self->transfer);
  if (error != NULL)
    {
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND) && !transfer->sent_ok)
        {
          /* Someone else expunged it meanwhile: this message fails, the session goes on. */
          pg_session_info (self->id, "message %u (UID %u) vanished upstream", transfer->index + 1,
                           uid);
          pg_pop3_reply (self, "-ERR Message %u no longer exists on the server.",
                         transfer->index + 1);
        }
      else
        {
          pg_session_warning (self->id, "fetching message %u failed: %s", transfer->index + 1,
                              error->message);
          pg_metrics_gerror (error);
          if (transfer->sent_ok)
            {
              /* Part of the message is out: the only honest end is to drop the connection
               * so the client sees no terminating "." and keeps its own state. */
              self->end_reason = g_strdup ("upstream failed during a message");
              pg_conn_abort (self->conn);
              return;
            }
          pg_pop3_reply (self, "-ERR [SYS/TEMP] The mail server failed, try again later.");
          pg_pop3_session_end (self, "upstream failed");
          return;
        }
    }
  else
    {
      if (!transfer->sent_ok)
        {
          pg_pop3_reply (self, transfer->is_top ? "+OK" : "+OK 0 octets");
          pg_pop3_session_flush (self);
          transfer->sent_ok = TRUE;
        }
      pg_pop3_session_stuff (self, transfer, NULL, 0);
      if (transfer->is_top)
        self->n_top++;
      else
        {
          pg_pop3_session_flag (self, transfer->index, PG_POP3_MSG_RETRIEVED);
          pg_pop3_session_check_size (self, transfer);
          /* After the check: the octets really sent, when the server's size was wrong. */
          self->n_retr++;
          self->retr_octets += pg_pop3_session_size (self, transfer->index);
        }
    }
  g_clear_pointer (&self->transfer, pg_pop3_transfer_free);
  self->busy = FALSE;
  pg_pop3_session_process (self);
}

static void
pg_pop3_session_retr (PgPop3Session *self, PgPop3Command *cmd, gboolean top)
{
  guint index;
  PgPop3Transfer *transfer;

  if (!pg_pop3_session_message (self, cmd->message, &index))
    return;
  self->busy = TRUE;
  /* Its FETCH and those fetched ahead with it leave as one command (on uncork). */
  pg_pop3_maildrop_cork (self->maildrop);
  transfer = g_queue_peek_head (&self->prefetch);
  if (transfer != NULL && !top && transfer->index == index)
    transfer = g_queue_pop_head (&self->prefetch);
  else
    {
      pg_pop3_session_drop_prefetch (self);
      transfer = pg_pop3_session_new_transfer (self, index, top, cmd->lines);
    }
  self->retr_run = !top && index > 0 && self->last_retr == index;
  if (!top)
    self->last_retr = index + 1;
  pg_pop3_session_activate (self, transfer);
  pg_pop3_maildrop_uncork (self->maildrop);
}

/* QUIT, last step: the upstream connection is logged out; answer. RFC 3206: [SYS/PERM]
 * for what the same QUIT would meet again (a client retrying it for ever gains nothing),
 * [SYS/TEMP] for what may work later. */
static void
pg_pop3_session_logout_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;

  pg_pop3_maildrop_logout_finish (self->maildrop, result);
  if (pg_conn_is_closed (self->conn))
    return;
  if (self->quit_problem != NULL)
    {
      /* Transient with the pending record kept: the next login finishes it. */
      self->quit_applied = self->quit_permanent ? "failed" : "pending";
      pg_pop3_reply (self, "-ERR [SYS/%s] %s", self->quit_permanent ? "PERM" : "TEMP",
                     self->quit_problem);
      pg_pop3_session_end (self, "QUIT, update failed");
      return;
    }
  /* What the delete policy did with the DELE'd messages (none: nothing to do). */
  if (self->quit_deleted == NULL || self->quit_deleted->len == 0)
    self->quit_applied = "none";
  else
    switch (self->config->pop3.delete_policy)
      {
      case PG_DELETE_EXPUNGE:
        self->quit_applied = "expunged";
        break;
      case PG_DELETE_MOVE:
        self->quit_applied = "moved";
        break;
      case PG_DELETE_KEEP:
        self->quit_applied = "hidden";
        break;
      }
  pg_pop3_reply (self, "+OK popgate signing off.");
  pg_pop3_session_end (self, "QUIT");
}

static void
pg_pop3_session_quit_logout (PgPop3Session *self)
{
  pg_pop3_maildrop_logout_async (self->maildrop, self->cancellable, pg_pop3_session_logout_cb,
                                 g_object_ref (self));
}

static void
pg_pop3_session_quit_cleared_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;

  if (pg_conn_is_closed (self->conn))
    return;
  /* The update is applied; a record still saying "pending" only makes the next login
   * apply it again to UIDs that no longer exist, which does nothing. */
  if (!pg_pop3_session_save_finish (self, result, &error))
    pg_session_warning (self->id,
                        "QUIT: applied, but the client state could not be stored "
                        "(the next login will find nothing left to do): %s",
                        error->message);
  pg_pop3_session_quit_logout (self);
}

static void
pg_pop3_session_update_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  gboolean permanent = FALSE;

  if (pg_conn_is_closed (self->conn))
    return;
  if (!pg_pop3_session_apply_finish (self, result, &permanent, &error))
    {
      pg_session_warning (self->id, "QUIT: update not fully applied (%s): %s",
                          permanent ? "permanent" : "transient", error->message);
      pg_metrics_gerror (error);
      self->quit_problem = g_strdup (error->message);
      self->quit_permanent = permanent;
      if (!permanent && self->client_state->pending != PG_STATE_PENDING_NONE)
        {
          /* The server did not confirm (connection lost, timeout): the messages may be
           * flagged \Deleted and not expunged. The pending record stays as stored, and
           * the next login finishes exactly those UIDs. */
          pg_session_warning (self->id, "QUIT: the pending update stays recorded; the next "
                                        "login finishes it");
          pg_pop3_session_quit_logout (self);
          return;
        }
    }
  /* The server answered every command, so the update is settled (what failed for good
   * was reported to the client and stays as it is). Only our own UIDs: a concurrent
   * session's pending update, merged in, is not ours to clear. */
  if (self->client_state->pending != PG_STATE_PENDING_NONE)
    {
      g_autoptr (PgUidSet) left = pg_uid_set_copy (self->client_state->pending_uids);
      g_autofree gchar *mailbox = g_strdup (self->client_state->pending_mailbox);

      for (guint i = 0; i < self->quit_deleted->len; i++)
        pg_uid_set_remove (left, g_array_index (self->quit_deleted, guint32, i));
      pg_client_state_set_pending (self->client_state, self->client_state->pending, mailbox, left);
    }
  if (self->saved_state == NULL || !pg_client_state_equal (self->client_state, self->saved_state))
    {
      pg_pop3_session_save (self, pg_pop3_session_quit_cleared_cb);
      return;
    }
  pg_pop3_session_quit_logout (self);
}

static void
pg_pop3_session_quit_apply (PgPop3Session *self)
{
  pg_pop3_session_apply_async (self, self->config->pop3.delete_policy,
                               self->config->pop3.move_mailbox, self->quit_deleted, self->quit_seen,
                               pg_pop3_session_update_cb);
}

static void
pg_pop3_session_quit_saved_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *who = NULL;

  if (pg_conn_is_closed (self->conn))
    return;
  if (!pg_pop3_session_save_finish (self, result, &error))
    {
      /* Nothing was touched upstream: under keep the DELEs would not be remembered, and
       * for expunge/move a crash could not be recovered. So nothing is applied. */
      who = pg_state_key_to_log (self->state_key);
      pg_session_warning (self->id,
                          "QUIT: nothing applied: cannot store the client state of "
                          "%s: %s",
                          who, error->message);
      pg_pop3_reply (self, "-ERR [SYS/TEMP] Cannot record this client's state; nothing was "
                           "deleted, try again later.");
      pg_pop3_session_end (self, "QUIT, state not stored");
      return;
    }
  pg_pop3_session_quit_apply (self);
}

/* QUIT in TRANSACTION: the UPDATE state (RFC 1939 §6). The client's state is stored first
 * (durably): under keep it holds the DELE'd UIDs; for expunge and move it records the
 * update as pending, so a crash in the middle is finished at the next login. */
static void
pg_pop3_session_quit (PgPop3Session *self)
{
  PgClientState *state = self->client_state;
  PgDeletePolicy policy = self->config->pop3.delete_policy;
  g_autoptr (PgUidSet) deleted_set = pg_uid_set_new ();

  pg_pop3_session_drop_prefetch (self); /* the update must not queue behind it */
  self->quit_deleted = g_array_new (FALSE, FALSE, sizeof (guint32));
  self->quit_seen = g_array_new (FALSE, FALSE, sizeof (guint32));
  for (guint i = 0; i < self->n_messages; i++)
    {
      guint32 uid = pg_pop3_maildrop_uid (self->maildrop, i);
      if (pg_pop3_session_flagged (self, i, PG_POP3_MSG_RETRIEVED))
        pg_uid_set_add (state->retrieved, uid);
      if (pg_pop3_session_flagged (self, i, PG_POP3_MSG_DELETED))
        {
          g_array_append_val (self->quit_deleted, uid);
          pg_uid_set_add (deleted_set, uid);
        }
      else if (pg_pop3_session_flagged (self, i, PG_POP3_MSG_RETRIEVED)
               && self->config->pop3.mark_seen)
        g_array_append_val (self->quit_seen, uid);
    }
  if (policy == PG_DELETE_KEEP)
    pg_uid_set_union (state->hidden, deleted_set);
  else if (self->quit_deleted->len > 0)
    {
      PgStatePending kind
          = policy == PG_DELETE_MOVE ? PG_STATE_PENDING_MOVE : PG_STATE_PENDING_EXPUNGE;

      /* Keep a concurrent session's pending update of the same kind beside ours: it is
       * not ours to drop (replacing it would read, at the merge, as "cleared"). */
      if (state->pending == kind
          && g_strcmp0 (state->pending_mailbox, self->config->pop3.move_mailbox) == 0)
        pg_uid_set_union (deleted_set, state->pending_uids);
      pg_client_state_set_pending (state, kind, self->config->pop3.move_mailbox, deleted_set);
    }
  pg_pop3_session_set_state (self, PG_POP3_STATE_UPDATE);
  pg_session_info (self->id, "QUIT: %u deleted (%s), %u to mark seen", self->quit_deleted->len,
                   pg_delete_policy_to_string (policy), self->quit_seen->len);
  self->busy = TRUE;
  pg_pop3_session_flush (self);
  if (self->saved_state != NULL && pg_client_state_equal (state, self->saved_state))
    {
      pg_pop3_session_quit_apply (self);
      return;
    }
  pg_pop3_session_save (self, pg_pop3_session_quit_saved_cb);
}

static void
pg_pop3_session_transaction (PgPop3Session *self, PgPop3Command *cmd)
{
  guint index;

  switch (cmd->kind)
    {
    case PG_POP3_COMMAND_STAT:
      pg_pop3_session_stat (self);
      return;
    case PG_POP3_COMMAND_LIST:
      pg_pop3_session_list (self, cmd, FALSE);
      return;
    case PG_POP3_COMMAND_UIDL:
      pg_pop3_session_list (self, cmd, TRUE);
      return;
    case PG_POP3_COMMAND_RETR:
      pg_pop3_session_retr (self, cmd, FALSE);
      return;
    case PG_POP3_COMMAND_TOP:
      pg_pop3_session_retr (self, cmd, TRUE);
      return;
    case PG_POP3_COMMAND_DELE:
      if (!pg_pop3_session_message (self, cmd->message, &index))
        return;
      pg_pop3_session_flag (self, index, PG_POP3_MSG_DELETED);
      pg_pop3_reply (self, "+OK Message %u marked for deletion.", cmd->message);
      return;
    case PG_POP3_COMMAND_RSET:
      for (guint i = 0; i < self->n_messages; i++)
        pg_pop3_session_unflag (self, i, PG_POP3_MSG_DELETED);
      pg_pop3_session_stat (self);
      return;
    case PG_POP3_COMMAND_NOOP:
      pg_pop3_reply (self, "+OK");
      return;
    case PG_POP3_COMMAND_QUIT:
      pg_pop3_session_quit (self);
      return;
    case PG_POP3_COMMAND_CAPA:
      pg_pop3_session_capa (self);
      return;
    case PG_POP3_COMMAND_USER:
    case PG_POP3_COMMAND_PASS:
    case PG_POP3_COMMAND_APOP:
    case PG_POP3_COMMAND_AUTH:
    case PG_POP3_COMMAND_STLS:
      pg_pop3_reply (self, "-ERR Already logged in.");
      pg_pop3_session_bad_command (self);
      return;
    case PG_POP3_COMMAND_UTF8:
    case PG_POP3_COMMAND_UNKNOWN:
    case PG_POP3_COMMAND_COUNT:
      break;
    }
  pg_pop3_reply (self, "-ERR Unknown command.");
  pg_pop3_session_bad_command (self);
}

static void
pg_pop3_session_handle_line (PgPop3Session *self, const char *line, gsize len)
{
  g_auto (PgPop3Command) cmd = { 0 };
  PgPop3ParseResult parsed;

  pg_pop3_session_trace (self, line, len);
  if (pg_log_get_level () >= PG_LOG_LEVEL_DEBUG)
    {
      g_autofree gchar *shown = pg_pop3_session_shown_line (self, line, len);
      pg_session_debug (self->id, "C: %s", shown);
    }
  if (pg_login_sasl_in_progress (self->login))
    {
      pg_pop3_session_sasl_response (self, line, len);
      return;
    }
  if (len > PG_POP3_MAX_COMMAND_LINE)
    {
      pg_pop3_reply (self, "-ERR Command line too long.");
      pg_pop3_session_bad_command (self);
      return;
    }
  parsed = pg_pop3_command_parse (line, len, &cmd);
  if (parsed != PG_POP3_PARSE_OK)
    {
      if (cmd.kind == PG_POP3_COMMAND_UNKNOWN)
        pg_pop3_reply (self, "-ERR Unknown command.");
      else
        pg_pop3_reply (self, "-ERR %s: %s.", pg_pop3_command_kind_to_string (cmd.kind),
                       pg_pop3_parse_result_to_string (parsed));
      pg_pop3_session_bad_command (self);
      return;
    }
  switch (self->state)
    {
    case PG_POP3_STATE_AUTHORIZATION:
      pg_pop3_session_authorization (self, &cmd);
      return;
    case PG_POP3_STATE_TRANSACTION:
      pg_pop3_session_transaction (self, &cmd);
      return;
    case PG_POP3_STATE_UPDATE:
    case PG_POP3_STATE_CLOSED:
      return;
    case PG_POP3_STATE_COUNT:
      break;
    }
  g_assert_not_reached ();
}

static void pg_pop3_session_read (PgPop3Session *self);

/* Replies queued for a client that does not read them. Pipelined commands are cheap to
 * send and some replies (CAPA, LIST, UIDL) are many times their size: without this check
 * a client that writes commands and never reads would make us queue without bound. */
static gboolean
pg_pop3_session_output_is_full (PgPop3Session *self)
{
  return pg_conn_get_queued (self->conn) + self->reply->len > PG_CLIENT_OUTPUT_HIGH_WATER;
}

static void
pg_pop3_session_output_drained_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;

  if (!pg_conn_wait_drained_finish (self->conn, result, NULL))
    return; /* closed: the conn's "closed" handler cleans up */
  self->output_full = FALSE;
  pg_pop3_session_process (self);
}

/* Handle every complete buffered line until a command needs to wait, then flush the
 * replies in one write and read more — unless the client is behind on reading them: then
 * stop handling commands and reading the socket until it has caught up (back-pressure to
 * the client, so our input and output buffers both stay bounded). */
static void
pg_pop3_session_process (PgPop3Session *self)
{
  if (self->output_full)
    return;
  while (!self->busy && !pg_conn_is_closed (self->conn) && self->state != PG_POP3_STATE_UPDATE)
    {
      if (pg_pop3_session_output_is_full (self))
        {
          pg_pop3_session_flush (self);
          self->output_full = TRUE;
          pg_conn_wait_drained_async (self->conn, PG_CLIENT_OUTPUT_HIGH_WATER / 2,
                                      self->cancellable, pg_pop3_session_output_drained_cb,
                                      g_object_ref (self));
          return;
        }
      g_autoptr (GError) error = NULL;
      const char *line = NULL;
      gsize len = 0;
      PgLineReaderStatus status = pg_line_reader_next (self->reader, &line, &len, &error);

      if (status == PG_LINE_READER_NEED_MORE)
        break;
      if (status == PG_LINE_READER_ERROR)
        {
          self->long_lines++;
          pg_metrics_error (PG_METRICS_ERROR_LINE_TOO_LONG);
          pg_pop3_reply (self, "-ERR Command line too long.");
          if (self->long_lines >= PG_POP3_MAX_LONG_LINES)
            {
              pg_pop3_session_end (self, "flood of over-long lines");
              return;
            }
          continue;
        }
      self->long_lines = 0;
      pg_pop3_session_handle_line (self, line, len);
    }
  if (self->client_eof && !self->busy && self->state != PG_POP3_STATE_UPDATE
      && !pg_conn_is_closed (self->conn))
    {
      /* Every complete command the client sent before its half-close is answered (and a
       * QUIT among them applied, as Dovecot does); a partial last line is not a command. */
      pg_pop3_session_end (self, "client disconnected");
      return;
    }
  pg_pop3_session_flush (self);
  pg_pop3_session_read (self);
}

static void
pg_pop3_session_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = pg_conn_read_finish (self->conn, result, &error);

  self->reading = FALSE;
  if (pg_conn_is_closed (self->conn))
    return;
  if (self->starting_tls)
    {
      /* Bytes that raced in after STLS are plaintext: dropped, never commands. */
      pg_pop3_session_maybe_start_tls (self);
      return;
    }
  if (n == 0)
    {
      /* EOF: the client closed or half-closed (shutdown(SHUT_WR)) after its last command.
       * What it sent is still answered; a connection that ends before QUIT applies
       * nothing, but a QUIT sent before the EOF is a QUIT. */
      self->client_eof = TRUE;
      pg_pop3_session_process (self);
      return;
    }
  if (n < 0)
    {
      /* The client went away before QUIT: nothing changes upstream. */
      if (self->end_reason == NULL)
        self->end_reason = g_strdup ("read error");
      pg_conn_abort (self->conn);
      return;
    }
  pg_line_reader_feed (self->reader, self->read_buffer, (gsize) n);
  {
    /* What the commands answer now — for a RETR fetched ahead its status line, body and
     * terminator — leaves in one write (the conn outlives an ending session's dispose). */
    g_autoptr (PgConn) conn = g_object_ref (self->conn);

    pg_conn_cork (conn);
    pg_pop3_session_process (self);
    pg_conn_uncork (conn);
  }
}

static void
pg_pop3_session_read (PgPop3Session *self)
{
  gsize space;

  if (self->reading || self->starting_tls || self->client_eof || pg_conn_is_closed (self->conn))
    return;
  space = pg_line_reader_get_space (self->reader);
  if (space == 0)
    return; /* pipelined input is full: read again once commands were handled */
  self->reading = TRUE;
  /* One per session until STLS cancels it: a new one per read cost an allocation and a
   * handler on self->cancellable that stayed connected, one more with every command. */
  if (self->read_cancellable == NULL || g_cancellable_is_cancelled (self->read_cancellable))
    {
      g_clear_object (&self->read_cancellable);
      self->read_cancellable = g_cancellable_new ();
      g_cancellable_connect (self->cancellable, G_CALLBACK (g_cancellable_cancel),
                             g_object_ref (self->read_cancellable), g_object_unref);
    }
  pg_conn_read_async (self->conn, self->read_buffer, MIN (space, PG_POP3_READ_CHUNK),
                      self->read_cancellable, pg_pop3_session_read_cb, g_object_ref (self));
}

static gboolean
pg_pop3_session_timeout_cb (PgConn *conn, gpointer user_data)
{
  PgPop3Session *self = user_data;

  /* RFC 1939 §3: an autologout timer ends the session without entering UPDATE. */
  if (self->state == PG_POP3_STATE_UPDATE)
    return TRUE; /* QUIT is being applied; its own upstream timeouts bound it */
  pg_metrics_error (PG_METRICS_ERROR_TIMEOUT);
  if (pg_conn_deadline_passed (conn))
    {
      pg_pop3_reply (self, "-ERR Disconnected: no login within the time allowed.");
      pg_pop3_session_end (self, "pre-auth deadline");
      return TRUE;
    }
  pg_pop3_reply (self, "-ERR Disconnected for inactivity.");
  pg_pop3_session_end (self, "inactivity timeout");
  return TRUE;
}

static void
pg_pop3_session_shutdown_cb (PgConn *conn, gpointer user_data)
{
  PgPop3Session *self = user_data;

  /* A logged-in client may still QUIT (and have its deletions applied) until the
   * server's deadline; one that has not logged in has nothing to lose. */
  if (self->state == PG_POP3_STATE_AUTHORIZATION && !self->busy)
    {
      pg_pop3_reply (self, "-ERR [SYS/TEMP] Server shutting down.");
      pg_pop3_session_end (self, "server shutdown");
    }
}

void
pg_pop3_session_start (PgConn *conn, gpointer user_data)
{
  PgPop3Session *self = g_object_new (PG_TYPE_POP3_SESSION, NULL);

  self->conn = g_object_ref (conn);
  self->config = pg_conn_get_config (conn);
  self->id = pg_conn_get_id (conn);
  self->login = pg_login_new (self->config, PG_METRICS_FRONTEND_POP3, self->id,
                              pg_conn_get_peer (conn), pg_conn_get_peer_ip (conn));
  self->reader = pg_line_reader_new (PG_POP3_INPUT_BUFFER);
  self->read_buffer = g_malloc (PG_POP3_READ_CHUNK);
  /* The session holds itself until the connection's "closed". */
  g_signal_connect (conn, "closed", G_CALLBACK (pg_pop3_session_conn_closed_cb), self);
  pg_metrics_session_state (PG_METRICS_FRONTEND_POP3, PG_METRICS_SESSION_NONE,
                            PG_METRICS_SESSION_PREAUTH);
  pg_status_session_update (self->id, pg_pop3_session_status_cb, self);
  g_signal_connect (conn, "timeout", G_CALLBACK (pg_pop3_session_timeout_cb), self);
  g_signal_connect (conn, "shutdown", G_CALLBACK (pg_pop3_session_shutdown_cb), self);
  pg_session_info (self->id, "pop3 session from %s%s", pg_conn_get_peer (conn),
                   pg_conn_is_tls (conn) ? " (TLS)" : "");
  pg_pop3_reply (self, "+OK popgate ready.");
  pg_pop3_session_process (self);
}
