/* popgate — upstream: asynchronous IMAP client for one upstream connection.
 *
 * Shape (after Dovecot's lib-imap-client): a queue of tagged commands, written one part at
 * a time (a literal's data waits for "+" unless LITERAL+), replies matched by tag, untagged
 * data routed to the oldest command that asked for it or emitted as signals. The I/O is
 * the connection engine's (PgConn, src/net: connect, reads, the ordered write queue, the
 * one deadline timer, TLS, compression); this file is the protocol. Reading uses a fixed
 * buffer and the pure parser in src/codec; at most one read is pending. Body chunks go to
 * the consumer, which may pause us: while paused we neither parse nor read, so memory does
 * not depend on message size.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-upstream"

#include "popgate/pg-upstream.h"

#include "popgate/pg-core.h"
#include "popgate/pg-imap-writer.h"
#include "popgate/pg-metrics.h"
#include "popgate/pg-net.h"
#include "popgate/pg-oauth2.h"
#include "popgate/pg-trace.h"
#include "popgate/pg-limits.h"

#include <json-glib/json-glib.h>
#include <string.h>

typedef enum
{
  PG_UPSTREAM_STATE_DISCONNECTED,
  PG_UPSTREAM_STATE_CONNECTING,
  PG_UPSTREAM_STATE_GREETING,
  PG_UPSTREAM_STATE_NOT_AUTHENTICATED,
  PG_UPSTREAM_STATE_AUTHENTICATED,
  PG_UPSTREAM_STATE_SELECTED,
  PG_UPSTREAM_STATE_LOGOUT,
  PG_UPSTREAM_STATE_CLOSED,
  PG_UPSTREAM_STATE_COUNT
} PgUpstreamState;

static const char *const pg_upstream_state_names[] = {
  "disconnected",  "connecting", "greeting", "not-authenticated",
  "authenticated", "selected",   "logout",   "closed",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_upstream_state_names) == PG_UPSTREAM_STATE_COUNT);

typedef enum
{
  PG_UPSTREAM_CMD_GREETING, /* pseudo-command: waits for the greeting, never sent */
  PG_UPSTREAM_CMD_SIMPLE,
  PG_UPSTREAM_CMD_SELECT,
  PG_UPSTREAM_CMD_FETCH_SIZES,
  PG_UPSTREAM_CMD_FETCH_BODY,
  PG_UPSTREAM_CMD_GETMETADATA,
  PG_UPSTREAM_CMD_LOGOUT,
  PG_UPSTREAM_CMD_LIST,
  PG_UPSTREAM_CMD_COMPRESS, /* nothing may follow it until its reply (RFC 4978 §3) */
} PgUpstreamCmdKind;

typedef struct _PgUpstreamCmd PgUpstreamCmd;

/* Called once per command: with the tagged reply, or with error (connection failed,
 * cancelled). Must complete or hand on cmd->task. */
typedef void (*PgUpstreamDoneFunc) (PgUpstream *self, PgUpstreamCmd *cmd,
                                    const PgImapResponse *tagged, const GError *error);

struct _PgUpstreamCmd
{
  PgUpstreamCmdKind kind;
  gchar *tag;       /* owned */
  gchar *name;      /* owned: "UID FETCH", for messages */
  GPtrArray *parts; /* owned, of PgImapWriterPart* */
  guint next_part;
  gboolean continued;        /* a "+" arrived for the part that waits for it */
  GTask *task;               /* owned; NULL once returned */
  PgUpstreamDoneFunc done;   /* unowned */
  PgUpstream *owner;         /* unowned */
  GCancellable *cancellable; /* owned: the caller's, while we listen to it */
  gulong cancelled_id;
  gint64 sent_us; /* monotonic time it went to the server: latency metric */
  /* AUTHENTICATE: the mechanism for popgate_upstream_logins_total (0 = PLAIN), and the
   * index of the part that answers an OAuth2 error challenge (0: none). */
  PgMetricsMechanism mechanism;
  guint challenge_part;

  /* FETCH_SIZES */
  guint n_entries;                      /* snapshot entries so far (PG_MAX_SNAPSHOT_MESSAGES) */
  PgUpstreamSizeFunc size_func;         /* NULL when snapshot_func is set */
  PgUpstreamSnapshotFunc snapshot_func; /* the snapshot entries; size_func unset */
  gpointer size_data;
  GByteArray *id_header; /* owned: BODY[HEADER.FIELDS ...] of the entry being parsed */
  /* FETCH_BODY */
  PgUpstreamChunkFunc chunk_func;
  gpointer chunk_data;
  gboolean body_watched; /* its cancellable is the upstream's body_cancellable */
  guint32 uid;
  gboolean whole_body; /* BODY.PEEK[] of the whole message: may join a batch */
  gboolean got_body;
  /* GETMETADATA */
  gchar *entry;           /* owned */
  GBytes *value;          /* owned */
  GHashTable *tree;       /* owned: DEPTH 1, entry name → GBytes; NULL for a single entry */
  gboolean tree_overflow; /* more than PG_STATE_MAX_ENTRIES entries came */
  /* LIST: entry holds the mailbox asked for */
  gboolean listed; /* an untagged LIST named it, without \NonExistent or \Noselect */
};

struct _PgUpstream
{
  GObject parent_instance;

  PgConfig *config;                        /* owned: keeps upstream_config alive */
  const PgUpstreamConfig *upstream_config; /* unowned: in config */
  guint64 sid;
  GMainContext *context; /* owned: where our sources run */
  PgUpstreamState state;

  /* owned: the connection (TCP, then TLS on it), on the one connection engine: reads,
   * the ordered write queue, the deadline timer, the TLS upgrade. NULL before the TCP
   * connect and after the connection was dropped or handed over. */
  PgConn *conn;
  gulong conn_closed_id;
  gulong conn_timeout_id;
  GCancellable *io_cancellable; /* owned: cancels the TCP connect */
  PgImapParser *parser;         /* owned */
  /* owned: the fixed read buffer (rbuf_size bytes, never grows while in use), allocated
   * only while a reply is expected or bytes wait in it. An idle connection (nothing sent
   * and unanswered) waits for input with pg_conn_wait_readable() and holds no buffer: with
   * a thousand idle POP3 sessions that is 16 MiB less (DESIGN.md: an idle session costs
   * < 32 KiB). */
  guint8 *rbuf;
  gsize rbuf_size; /* PG_UPSTREAM_READ_BUFFER, or PG_UPSTREAM_BODY_READ_BUFFER for bodies */
  gsize rpos, rlen;
  gboolean reading; /* a read on conn is pending, or (waiting) a readable wait is set */
  gboolean waiting;
  gboolean paused, upgrading, processing;
  gboolean compressing; /* COMPRESS sent, not answered: the commands after it wait */
  guint corked;         /* pg_upstream_cork() depth: commands wait in unsent */
  guint32 guessed_uid;  /* a body literal came before its UID: the UID it was routed to */
  /* A chunk its consumer held (PG_UPSTREAM_CHUNK_HOLD): delivered again on resume, before
   * anything else is parsed. held_data points into rbuf, which does not change while we
   * are paused, or into held_copy for a body sent as a quoted string (whose response is
   * gone by then; bounded by the line limit). */
  PgUpstreamCmd *held_cmd; /* unowned: in pending */
  const guint8 *held_data;
  gsize held_len;
  guint8 *held_copy; /* owned */
  /* owned: the cancellable of body fetches, watched once rather than per FETCH (a session
   * passes the same one for all its bodies); the others are watched by their command. */
  GCancellable *body_cancellable;
  gulong body_cancelled_id;
  guint sizes_outstanding; /* snapshot FETCHes submitted and not completed */
  guint64 snapshot_octets; /* octets parsed while one was (PG_MAX_SNAPSHOT_OCTETS) */

  GQueue unsent;          /* of PgUpstreamCmd*, owned */
  GQueue pending;         /* of PgUpstreamCmd*, owned: sent (or being sent), in order */
  PgUpstreamCmd *sending; /* unowned: the pending command whose parts go out now */
  guint next_tag;

  GHashTable *caps;        /* owned: upper-case capability → itself */
  GPtrArray *caps_list;    /* owned: the capabilities as the server spelt them, in order */
  gboolean caps_from_code; /* the last tagged/greeting reply carried [CAPABILITY] */
  gboolean tls;
  gchar *bye_text;         /* owned: text of a BYE received */
  gboolean hold_when_idle; /* relay hand-off: stop reading once logged in and idle */

  PgUpstreamMailbox mailbox; /* filled by the untagged data of SELECT */

  /* The deadlines (see "timers"), all monotonic; conn's one timer fires at the earliest. */
  gint64 deadline_us;                /* the server must progress by then; 0 idle */
  gint64 pause_deadline_us;          /* the consumer must resume by then; 0 */
  gint64 connect_deadline_us;        /* connecting must be done by then; 0 */
  GTask *connect_task;               /* owned while connecting */
  GCancellable *connect_cancellable; /* owned while connecting: the caller's */
  gulong connect_cancelled_id;
};

G_DEFINE_FINAL_TYPE (PgUpstream, pg_upstream, G_TYPE_OBJECT)

enum
{
  SIGNAL_EXISTS,
  SIGNAL_EXPUNGE,
  SIGNAL_VANISHED,
  SIGNAL_FETCH,
  SIGNAL_ALERT,
  SIGNAL_BYE,
  SIGNAL_CLOSED,
  N_SIGNALS
};
static guint pg_upstream_signals[N_SIGNALS];

static void pg_upstream_read (PgUpstream *self);
static void pg_upstream_flush (PgUpstream *self);
static void pg_upstream_fail (PgUpstream *self, const GError *error);
static void pg_upstream_process (PgUpstream *self);
static gboolean pg_upstream_read_nonblocking (PgUpstream *self);
static void pg_upstream_queue_capability (PgUpstream *self, GTask *task);

/* --- small helpers --------------------------------------------------------------------- */

static void
pg_upstream_set_state (PgUpstream *self, PgUpstreamState state)
{
  if (self->state == state)
    return;
  pg_session_debug (self->sid, "upstream: %s → %s", pg_upstream_state_names[self->state],
                    pg_upstream_state_names[state]);
  self->state = state;
}

static void
pg_upstream_forget_held (PgUpstream *self)
{
  self->held_cmd = NULL;
  self->held_data = NULL;
  self->held_len = 0;
  g_clear_pointer (&self->held_copy, g_free);
}

static void
pg_upstream_cmd_free (PgUpstreamCmd *cmd)
{
  if (cmd == NULL)
    return;
  if (cmd->owner != NULL && cmd->owner->held_cmd == cmd)
    pg_upstream_forget_held (cmd->owner);
  if (cmd->cancellable != NULL)
    {
      g_signal_handler_disconnect (cmd->cancellable, cmd->cancelled_id);
      g_clear_object (&cmd->cancellable);
    }
  g_free (cmd->tag);
  g_free (cmd->name);
  g_clear_pointer (&cmd->parts, g_ptr_array_unref);
  g_clear_object (&cmd->task);
  g_free (cmd->entry);
  g_clear_pointer (&cmd->value, g_bytes_unref);
  g_clear_pointer (&cmd->tree, g_hash_table_unref);
  g_clear_pointer (&cmd->id_header, g_byte_array_unref);
  g_free (cmd);
}

/* Peer text fit for an error message or a log line. */
static gchar *
pg_upstream_escape_text (const char *text)
{
  return pg_log_escape (text != NULL ? text : "", text != NULL ? strlen (text) : 0, 200);
}

/* The prefix of every refusal (tagged NO/BAD); pg_upstream_error_is_permanent() reads the
 * response code that follows the keyword (an atom the parser checked, before any peer
 * text, so the server's text cannot pose as a code). */
#define PG_UPSTREAM_REFUSED_PREFIX "upstream refused "

static GError *
pg_upstream_refused_error (const char *what, const PgImapResponse *tagged)
{
  g_autofree gchar *text = pg_upstream_escape_text (tagged->text);

  if (tagged->code != NULL)
    return g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, PG_UPSTREAM_REFUSED_PREFIX "%s: %s [%s] %s",
                        what, tagged->keyword, tagged->code, text);
  return g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, PG_UPSTREAM_REFUSED_PREFIX "%s: %s %s", what,
                      tagged->keyword, text);
}

gboolean
pg_upstream_error_is_permanent (const GError *error)
{
  /* RFC 5530 codes that say "later may work": the rest of a refusal is the server's
   * considered answer, and the same command will get it again. */
  static const char *const temporary[] = { "UNAVAILABLE", "INUSE", "EXPUNGEISSUED", NULL };
  const char *rest;
  const char *open;

  /* The certificate, or the lack of STARTTLS, will be the same on the next try. */
  if (g_error_matches (error, PG_ERROR, PG_ERROR_TLS))
    return TRUE;
  if (error == NULL || !g_error_matches (error, PG_ERROR, PG_ERROR_UPSTREAM)
      || !g_str_has_prefix (error->message, PG_UPSTREAM_REFUSED_PREFIX))
    return FALSE; /* the connection failed, timed out or broke the protocol: transient */
  rest = strstr (error->message, ": ");
  if (rest == NULL)
    return TRUE;
  rest += 2;
  open = strchr (rest, ' ');
  if (open == NULL || open[1] != '[')
    return TRUE;
  for (gsize i = 0; temporary[i] != NULL; i++)
    {
      gsize len = strlen (temporary[i]);
      if (strncmp (open + 2, temporary[i], len) == 0 && open[2 + len] == ']')
        return FALSE;
    }
  return TRUE;
}

/* Take the command's task and return an error on it (if not already returned). */
static void
pg_upstream_cmd_return_error (PgUpstreamCmd *cmd, GError *error)
{
  g_autoptr (GTask) task = g_steal_pointer (&cmd->task);

  if (task != NULL)
    g_task_return_error (task, error);
  else
    g_error_free (error);
}

static void
pg_upstream_cmd_return_boolean (PgUpstreamCmd *cmd, gboolean value)
{
  g_autoptr (GTask) task = g_steal_pointer (&cmd->task);

  if (task != NULL)
    g_task_return_boolean (task, value);
}

/* The opening of a done func: cmd's task when the command succeeded; else NULL, with the
 * failure (the error, or the NO/BAD as PG_ERROR_UPSTREAM) returned on the task. */
static GTask *
pg_upstream_cmd_take_ok (PgUpstreamCmd *cmd, const PgImapResponse *tagged, const GError *error)
{
  if (error != NULL)
    pg_upstream_cmd_return_error (cmd, g_error_copy (error));
  else if (tagged->status != PG_IMAP_STATUS_OK)
    pg_upstream_cmd_return_error (cmd, pg_upstream_refused_error (cmd->name, tagged));
  else
    return g_steal_pointer (&cmd->task);
  return NULL;
}

/* The usual done func: OK → TRUE, NO/BAD → PG_ERROR_UPSTREAM, failure → the error. */
static void
pg_upstream_done_simple_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                            const GError *error)
{
  g_autoptr (GTask) task = pg_upstream_cmd_take_ok (cmd, tagged, error);

  if (task != NULL)
    g_task_return_boolean (task, TRUE);
}

static gsize
pg_upstream_max_nonsync (PgUpstream *self)
{
  if (pg_upstream_has_capability (self, "LITERAL+"))
    return G_MAXSIZE;
  if (pg_upstream_has_capability (self, "LITERAL-"))
    return 4096; /* RFC 7888 §4 */
  return 0;
}

/* `prefix` and value in decimal into buf (at least PG_UPSTREAM_U32_TEXT bytes); returns the
 * end. A printf costs ~1,000 instructions, and every body FETCH formats two numbers. */
#define PG_UPSTREAM_U32_TEXT 16
static char *
pg_upstream_format_u32 (char *buf, char prefix, guint32 value)
{
  *buf++ = prefix;
  buf += pg_format_decimal (buf, value);
  *buf = '\0';
  return buf;
}

/* A new command with a fresh tag; the caller adds the arguments to the returned writer. */
static PgUpstreamCmd *
pg_upstream_cmd_new (PgUpstream *self, PgUpstreamCmdKind kind, const char *name, GTask *task,
                     PgUpstreamDoneFunc done)
{
  PgUpstreamCmd *cmd = g_new0 (PgUpstreamCmd, 1);

  cmd->kind = kind;
  cmd->owner = self;
  char tag[PG_UPSTREAM_U32_TEXT];

  pg_upstream_format_u32 (tag, 'p', ++self->next_tag);
  cmd->tag = g_strdup (tag);
  cmd->name = g_strdup (name);
  cmd->task = task != NULL ? g_object_ref (task) : NULL;
  cmd->done = done != NULL ? done : pg_upstream_done_simple_cb;
  return cmd;
}

static PgImapWriter *
pg_upstream_cmd_writer (PgUpstream *self, PgUpstreamCmd *cmd)
{
  PgImapWriter *writer = pg_imap_writer_new (cmd->tag, pg_upstream_max_nonsync (self));

  pg_imap_writer_add_raw (writer, " ");
  pg_imap_writer_add_raw (writer, cmd->name);
  return writer;
}

static void
pg_upstream_fail_cmd_now (PgUpstream *self, PgUpstreamCmd *cmd, const GError *error)
{
  cmd->done (self, cmd, NULL, error);
  pg_upstream_cmd_free (cmd);
}

/* Queue a finished command (takes cmd and writer). */
static void
pg_upstream_submit (PgUpstream *self, PgUpstreamCmd *cmd, PgImapWriter *writer)
{
  cmd->parts = pg_imap_writer_finish (writer);
  if (self->state == PG_UPSTREAM_STATE_CLOSED || self->state == PG_UPSTREAM_STATE_DISCONNECTED)
    {
      g_autoptr (GError) error
          = g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "upstream connection is %s",
                         self->state == PG_UPSTREAM_STATE_CLOSED ? "closed" : "not open");
      pg_upstream_fail_cmd_now (self, cmd, error);
      return;
    }
  g_queue_push_tail (&self->unsent, cmd);
  pg_upstream_flush (self);
}

/* A task for a public operation; checks the cancellable first. */
static GTask *
pg_upstream_task_new (PgUpstream *self, gpointer source_tag, GCancellable *cancellable,
                      GAsyncReadyCallback callback, gpointer user_data)
{
  GTask *task = g_task_new (self, cancellable, callback, user_data);

  g_task_set_source_tag (task, source_tag);
  g_task_set_check_cancellable (task, TRUE);
  return task;
}

/* --- timers ----------------------------------------------------------------------------
 *
 * One deadline for what is outstanding, absolute: it is set when the connection starts
 * waiting for the server, and moves only when the server makes progress on what we asked
 * (a tagged reply completes a command, body octets arrive for a FETCH, or our consumer
 * resumes us). Anything else the server sends — untagged lines, a snapshot FETCH line —
 * does not move it: a server that floods us holds a session no longer than `timeout`.
 *
 * While our consumer pauses us (its client is behind), the server is not at fault, but we
 * still have a deadline: PG_UPSTREAM_MAX_PAUSE_MS or the POP3 autologout, whichever is
 * longer — past that the client has not taken a chunk for longer than it could stay idle,
 * and the session could only hang.
 *
 * While connecting, one more: connect_timeout from the start, over TCP, TLS, greeting,
 * capabilities and STARTTLS. The connection's one timer (pg_conn_set_deadline_at) is set
 * to the earliest of them. */

static gint64
pg_upstream_timeout_us (PgUpstream *self)
{
  return (gint64) self->upstream_config->timeout_ms * 1000;
}

static gint64
pg_upstream_pause_limit_us (PgUpstream *self)
{
  return MAX ((gint64) PG_UPSTREAM_MAX_PAUSE_MS, (gint64) self->config->pop3.autologout_ms) * 1000;
}

static void pg_upstream_connect_timed_out (PgUpstream *self);

/* The server made progress on what we asked: the deadline is `timeout` from now. */
static void
pg_upstream_progress (PgUpstream *self)
{
  if (self->deadline_us != 0)
    self->deadline_us = g_get_monotonic_time () + pg_upstream_timeout_us (self);
}

/* Start the deadline when something is outstanding (if the connection was idle), or stop
 * it, and set the connection's timer to the earliest of it and the connect deadline.
 * Called on every send, read and reply: a deadline that moved later costs no new timer
 * (pg_conn_set_deadline_at), so none is made per read. */
static void
pg_upstream_update_timeout (PgUpstream *self)
{
  gint64 due_us = 0;

  if (self->state == PG_UPSTREAM_STATE_CLOSED || self->upstream_config->timeout_ms == 0
      || (g_queue_is_empty (&self->pending) && g_queue_is_empty (&self->unsent)))
    {
      self->deadline_us = 0;
      self->pause_deadline_us = 0;
    }
  else
    {
      if (self->deadline_us == 0)
        self->deadline_us = g_get_monotonic_time () + pg_upstream_timeout_us (self);
      if (self->paused)
        {
          if (self->pause_deadline_us == 0)
            self->pause_deadline_us = g_get_monotonic_time () + pg_upstream_pause_limit_us (self);
          due_us = self->pause_deadline_us;
        }
      else
        {
          self->pause_deadline_us = 0;
          due_us = self->deadline_us;
        }
    }
  if (self->connect_deadline_us != 0 && (due_us == 0 || self->connect_deadline_us < due_us))
    due_us = self->connect_deadline_us;
  if (self->conn != NULL)
    pg_conn_set_deadline_at (self->conn, due_us);
}

/* The connection's timer ran out: a deadline passed (or moved, and the timer is set anew). */
static gboolean
pg_upstream_conn_timeout_cb (PgConn *conn, gpointer user_data)
{
  PgUpstream *self = user_data;
  gint64 now_us = g_get_monotonic_time ();
  gint64 due_us = self->paused ? self->pause_deadline_us : self->deadline_us;
  g_autoptr (GError) error = NULL;

  if (self->connect_task != NULL && self->connect_deadline_us != 0
      && self->connect_deadline_us <= now_us)
    {
      pg_upstream_connect_timed_out (self);
      return TRUE;
    }
  if (due_us == 0 || due_us > now_us)
    {
      pg_upstream_update_timeout (self);
      return TRUE;
    }
  if (self->paused)
    error = g_error_new (PG_ERROR, PG_ERROR_TIMEOUT,
                         "upstream reply not taken by the client for %" G_GINT64_FORMAT " ms",
                         pg_upstream_pause_limit_us (self) / 1000);
  else
    error = g_error_new (PG_ERROR, PG_ERROR_TIMEOUT, "upstream did not answer within %u ms",
                         self->upstream_config->timeout_ms);
  pg_session_info (self->sid, "upstream: %s", error->message);
  pg_upstream_fail (self, error);
  return TRUE;
}

/* --- closing ---------------------------------------------------------------------------- */

static void pg_upstream_fail_disconnected (PgUpstream *self, const GError *io_error);

/* The connection closed under us: only a failed write does that (we let go of it before
 * we close it ourselves). */
static void
pg_upstream_conn_closed_cb (PgConn *conn, gpointer user_data)
{
  PgUpstream *self = user_data;

  pg_upstream_fail_disconnected (self, pg_conn_get_error (conn));
}

static void
pg_upstream_attach_conn (PgUpstream *self, PgConn *conn)
{
  self->conn = g_object_ref (conn);
  self->conn_closed_id
      = g_signal_connect (conn, "closed", G_CALLBACK (pg_upstream_conn_closed_cb), self);
  self->conn_timeout_id
      = g_signal_connect (conn, "timeout", G_CALLBACK (pg_upstream_conn_timeout_cb), self);
  pg_upstream_update_timeout (self);
}

/* Let go of the connection (transfer full; NULL if none): no signal, wait or timer of
 * ours stays on it. A read still pending completes later, into rbuf. */
static PgConn *
pg_upstream_release_conn (PgUpstream *self)
{
  PgConn *conn = g_steal_pointer (&self->conn);

  if (self->waiting)
    {
      self->waiting = FALSE;
      self->reading = FALSE;
    }
  if (conn == NULL)
    return NULL;
  g_clear_signal_handler (&self->conn_closed_id, conn);
  g_clear_signal_handler (&self->conn_timeout_id, conn);
  pg_conn_cancel_wait_readable (conn);
  pg_conn_set_deadline_at (conn, 0);
  return conn;
}

static void
pg_upstream_drop_connection (PgUpstream *self)
{
  g_autoptr (PgConn) conn = pg_upstream_release_conn (self);

  g_cancellable_cancel (self->io_cancellable);
  /* With TLS a close_notify first, bounded; nothing blocks (pg-net.h). */
  if (conn != NULL)
    pg_conn_abort (conn);
  self->rpos = self->rlen = 0;
  self->guessed_uid = 0;
  pg_upstream_forget_held (self);
  /* A read still pending owns the buffer until its (failed) callback. */
  if (!self->reading)
    g_clear_pointer (&self->rbuf, g_free);
}

/* Close and fail everything pending with a copy of error (NULL: a clean LOGOUT end). */
static void
pg_upstream_fail (PgUpstream *self, const GError *error)
{
  g_autoptr (PgUpstream) keep = g_object_ref (self);
  g_autoptr (GError) closed_error = NULL;
  PgUpstreamCmd *cmd;

  if (self->state == PG_UPSTREAM_STATE_CLOSED)
    return;
  if (error != NULL)
    pg_session_debug (self->sid, "upstream: connection failed: %s", error->message);
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_CLOSED);
  pg_upstream_drop_connection (self);
  self->deadline_us = self->pause_deadline_us = self->connect_deadline_us = 0;
  self->sending = NULL;
  self->paused = FALSE;
  self->compressing = FALSE;

  closed_error = error != NULL ? g_error_copy (error)
                               : g_error_new (PG_ERROR, PG_ERROR_UPSTREAM,
                                              "upstream connection closed after LOGOUT");
  while ((cmd = g_queue_pop_head (&self->pending)) != NULL)
    pg_upstream_fail_cmd_now (self, cmd, closed_error);
  while ((cmd = g_queue_pop_head (&self->unsent)) != NULL)
    pg_upstream_fail_cmd_now (self, cmd, closed_error);
  if (self->connect_task != NULL)
    {
      g_autoptr (GTask) task = g_steal_pointer (&self->connect_task);
      g_task_return_error (task, g_error_copy (closed_error));
    }
  g_signal_emit (self, pg_upstream_signals[SIGNAL_CLOSED], 0, error);
}

/* The connection ended (EOF or error) while commands were outstanding. */
static void
pg_upstream_fail_disconnected (PgUpstream *self, const GError *io_error)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *bye = self->bye_text != NULL ? pg_upstream_escape_text (self->bye_text) : NULL;

  if (self->state == PG_UPSTREAM_STATE_LOGOUT && self->bye_text != NULL)
    {
      pg_upstream_fail (self, NULL);
      return;
    }
  if (bye != NULL)
    error
        = g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "upstream closed the connection (BYE %s)", bye);
  else if (io_error != NULL)
    error = g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "upstream connection failed: %s",
                         io_error->message);
  else
    error = g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "upstream closed the connection");
  pg_upstream_fail (self, error);
}

/* --- writing ----------------------------------------------------------------------------- */

/* A part of a command going out (already redacted): the debug log and the audit trace. */
static void
pg_upstream_log_sent (PgUpstream *self, const char *text)
{
  pg_session_debug (self->sid, "upstream C: %s", text);
  pg_trace (self->sid, "U: %s", text);
}

/* A command completed: its latency, and in the trace its result. */
static void
pg_upstream_observe_reply (PgUpstream *self, const PgUpstreamCmd *cmd,
                           const PgImapResponse *response)
{
  gint64 us = g_get_monotonic_time () - cmd->sent_us;

  pg_metrics_upstream_command (cmd->name, us);
  if (pg_trace_is_enabled ())
    {
      g_autofree gchar *text = pg_log_escape (response->text, strlen (response->text), 80);
      pg_trace (self->sid, "U: %s %s %s (%" G_GINT64_FORMAT " ms) %s", response->tag, cmd->name,
                response->keyword != NULL ? response->keyword : "?", us / 1000, text);
    }
}

static void
pg_upstream_log_part (PgUpstream *self, const PgUpstreamCmd *cmd, guint index)
{
  const PgImapWriterPart *part = g_ptr_array_index (cmd->parts, index);
  const PgImapWriterPart *next
      = index + 1 < cmd->parts->len ? g_ptr_array_index (cmd->parts, index + 1) : NULL;
  gsize size = 0;
  const char *data;
  g_autofree gchar *line = NULL;

  if (pg_log_get_level () < PG_LOG_LEVEL_DEBUG && !pg_trace_is_enabled ())
    return;
  if (part->secret)
    {
      pg_upstream_log_sent (self, "<secret literal>");
      return;
    }
  if (index > 0 && next != NULL && next->secret)
    {
      /* " {12}\r\n" before a secret would give away its length. */
      pg_upstream_log_sent (self, "<literal header>");
      return;
    }
  data = g_bytes_get_data (part->bytes, &size);
  if (size >= 2 && data[size - 2] == '\r' && data[size - 1] == '\n')
    size -= 2; /* a log line, not a wire dump */
  line = pg_log_redact_line (data, size, FALSE);
  pg_upstream_log_sent (self, line);
}

/* Whole-message body FETCHes queued one after another, for ascending UIDs, go out as one
 * "UID FETCH u1,u2,… (UID BODY.PEEK[])": the server's cost is mostly per command (Dovecot
 * syncs the mailbox after each), so a batch of small messages costs about what one does.
 * Each keeps its own PgUpstreamCmd (bodies are routed by UID; the server answers in UID
 * order, which is the order of pending) and takes the leader's tag. */
static void
pg_upstream_batch_fetches (PgUpstream *self, PgUpstreamCmd *leader)
{
  g_autoptr (GString) line = NULL;
  PgUpstreamCmd *next;
  guint32 last = leader->uid;
  guint n = 1;
  PgImapWriterPart *part;

  if (leader->kind != PG_UPSTREAM_CMD_FETCH_BODY || !leader->whole_body)
    return;
  while (n < PG_UPSTREAM_FETCH_BATCH && (next = g_queue_peek_head (&self->unsent)) != NULL
         && next->kind == PG_UPSTREAM_CMD_FETCH_BODY && next->whole_body && next->uid > last)
    {
      char digits[PG_DECIMAL_MAX_LEN];

      if (line == NULL)
        {
          line = g_string_new (leader->tag);
          g_string_append (line, " UID FETCH ");
          g_string_append_len (line, digits, (gssize) pg_format_decimal (digits, leader->uid));
        }
      g_string_append_c (line, ',');
      g_string_append_len (line, digits, (gssize) pg_format_decimal (digits, next->uid));
      g_queue_pop_head (&self->unsent);
      g_free (next->tag);
      next->tag = g_strdup (leader->tag);
      g_ptr_array_set_size (next->parts, 0);
      next->sent_us = leader->sent_us;
      g_queue_push_tail (&self->pending, next);
      last = next->uid;
      n++;
    }
  if (line == NULL)
    return;
  g_string_append (line, " (UID BODY.PEEK[])\r\n");
  part = g_new0 (PgImapWriterPart, 1);
  part->bytes = g_string_free_to_bytes (g_steal_pointer (&line));
  g_ptr_array_set_size (leader->parts, 0);
  g_ptr_array_add (leader->parts, part);
}

/* Write what flush collected: the one part it holds back, and end the cork of several. */
static void
pg_upstream_flush_out (PgConn *conn, GBytes **held, gboolean *corked)
{
  if (*held != NULL)
    {
      pg_conn_write_bytes (conn, *held);
      g_clear_pointer (held, g_bytes_unref);
    }
  if (*corked)
    {
      pg_conn_uncork (conn);
      *corked = FALSE;
    }
}

/* Hand the connection every part that may go now, in order: the queued commands and, of
 * the command being sent, its parts up to one that waits for the server's "+". Several
 * parts (pipelined commands, a command and its non-synchronising literals) are corked so
 * that they leave in one write; a single one (the usual UID FETCH) goes as it is, without
 * a copy into the cork. The connection queues what the socket does not take at once. */
static void
pg_upstream_flush (PgUpstream *self)
{
  g_autoptr (PgConn) conn = NULL;
  GBytes *held = NULL; /* owned: the first part, written alone if no other follows */
  gboolean corked = FALSE;

  if (self->conn == NULL || self->upgrading || self->state == PG_UPSTREAM_STATE_CLOSED)
    return;
  conn = g_object_ref (self->conn);
  while (self->corked == 0 || self->sending != NULL)
    {
      PgUpstreamCmd *cmd = self->sending;
      PgImapWriterPart *part;

      if (cmd == NULL)
        {
          if (self->compressing)
            break; /* they go out deflated, after the OK */
          cmd = g_queue_pop_head (&self->unsent);
          if (cmd == NULL)
            break;
          if (cmd->kind == PG_UPSTREAM_CMD_COMPRESS)
            self->compressing = TRUE;
          g_queue_push_tail (&self->pending, cmd);
          self->sending = cmd;
          cmd->sent_us = g_get_monotonic_time ();
          pg_upstream_batch_fetches (self, cmd);
          pg_upstream_update_timeout (self);
        }
      if (cmd->next_part >= cmd->parts->len)
        {
          self->sending = NULL;
          continue;
        }
      part = g_ptr_array_index (cmd->parts, cmd->next_part);
      if (part->wait_continuation && !cmd->continued)
        break;
      cmd->continued = FALSE;
      pg_upstream_log_part (self, cmd, cmd->next_part);
      cmd->next_part++;
      if (part->secret)
        {
          /* Never copied into the cork's buffer, which is reused and not wiped: the
           * socket takes a secret from the part itself, or the queue keeps a reference. */
          pg_upstream_flush_out (conn, &held, &corked);
          pg_conn_write_bytes (conn, part->bytes);
        }
      else if (held == NULL && !corked)
        held = g_bytes_ref (part->bytes);
      else
        {
          if (!corked)
            {
              /* A second part: from here on, corked, behind the first. */
              pg_conn_cork (conn);
              corked = TRUE;
              pg_conn_write_bytes (conn, held);
              g_clear_pointer (&held, g_bytes_unref);
            }
          pg_conn_write_bytes (conn, part->bytes);
        }
    }
  pg_upstream_flush_out (conn, &held, &corked);
}

/* --- capabilities ------------------------------------------------------------------------ */

static void
pg_upstream_set_caps (PgUpstream *self, const GPtrArray *values)
{
  g_hash_table_remove_all (self->caps);
  g_ptr_array_set_size (self->caps_list, 0);
  for (guint i = 0; i < values->len; i++)
    {
      const char *cap = pg_imap_value_get_string (g_ptr_array_index (values, i));
      if (cap != NULL)
        {
          gchar *upper = g_ascii_strup (cap, -1);
          if (g_hash_table_add (self->caps, upper))
            g_ptr_array_add (self->caps_list, g_strdup (cap));
        }
    }
}

gboolean
pg_upstream_has_capability (PgUpstream *self, const char *capability)
{
  g_autofree gchar *upper = NULL;

  g_return_val_if_fail (PG_IS_UPSTREAM (self), FALSE);
  upper = g_ascii_strup (capability, -1);
  return g_hash_table_contains (self->caps, upper);
}

/* --- reading and dispatch --------------------------------------------------------------- */

/* The oldest pending command of a kind (untagged data belongs to it). */
static PgUpstreamCmd *
pg_upstream_find_pending (PgUpstream *self, PgUpstreamCmdKind kind)
{
  for (GList *l = self->pending.head; l != NULL; l = l->next)
    {
      PgUpstreamCmd *cmd = l->data;
      if (cmd->kind == kind)
        return cmd;
    }
  return NULL;
}

/* The FETCH response is complete, and the body with it: the message ends here. The tagged
 * reply may be far behind (a batch answers once for all its UIDs), and a server that goes
 * quiet after a whole body must not hold that body's RETR; the tagged reply then finds no
 * task (fetch_body_done_cb). A body its consumer holds ends once it is taken. */
static void
pg_upstream_body_complete (PgUpstreamCmd *cmd)
{
  if (cmd->got_body && cmd->task != NULL)
    {
      g_autoptr (GTask) task = g_steal_pointer (&cmd->task);

      g_task_return_int (task, 1);
    }
}

/* Hand a body chunk to cmd's consumer, and do what it says. */
static void
pg_upstream_deliver_chunk (PgUpstream *self, PgUpstreamCmd *cmd, const guint8 *data, gsize len)
{
  PgUpstreamChunkAction action = cmd->chunk_func (data, len, cmd->chunk_data);

  if (self->state == PG_UPSTREAM_STATE_CLOSED)
    return; /* the consumer closed us: the buffer is gone */
  switch (action)
    {
    case PG_UPSTREAM_CHUNK_NEXT:
      break;
    case PG_UPSTREAM_CHUNK_PAUSE:
      self->paused = TRUE;
      break;
    case PG_UPSTREAM_CHUNK_HOLD:
      self->paused = TRUE;
      self->held_cmd = cmd;
      self->held_data = data;
      self->held_len = len;
      break;
    }
}

/* Resumed with a held chunk: deliver it again, unless its fetch was cancelled meanwhile. */
static void
pg_upstream_deliver_held (PgUpstream *self)
{
  PgUpstreamCmd *cmd = self->held_cmd;
  const guint8 *data = self->held_data;
  gsize len = self->held_len;
  g_autofree guint8 *copy = g_steal_pointer (&self->held_copy);

  self->held_cmd = NULL;
  self->held_data = NULL;
  self->held_len = 0;
  if (cmd->chunk_func != NULL)
    pg_upstream_deliver_chunk (self, cmd, data, len);
  if (self->held_cmd == cmd)
    {
      if (self->held_data == copy)
        self->held_copy = g_steal_pointer (&copy); /* held again */
      return;
    }
  if (self->state != PG_UPSTREAM_STATE_CLOSED)
    pg_upstream_body_complete (cmd); /* a quoted body, taken now */
}

/* The pending body FETCH a response or body belongs to: the first one for that UID whose
 * body has not come yet. Servers may send the data of a pipelined FETCH before the tagged
 * OK of the one before it (Dovecot does), and one batch holds several UIDs, so "the oldest"
 * is not enough; the same UID may be in flight twice (a read-ahead dropped, then asked for),
 * and its bodies come in command order. Without a UID, the oldest still waiting. */
static PgUpstreamCmd *
pg_upstream_find_body_cmd (PgUpstream *self, guint64 uid)
{
  for (GList *l = self->pending.head; l != NULL; l = l->next)
    {
      PgUpstreamCmd *cmd = l->data;
      if (cmd->kind == PG_UPSTREAM_CMD_FETCH_BODY && !cmd->got_body
          && (uid == 0 || cmd->uid == uid))
        return cmd;
    }
  return NULL;
}

static guint32
pg_upstream_clamp_u32 (guint64 value)
{
  return value > G_MAXUINT32 ? G_MAXUINT32 : (guint32) value;
}

static void
pg_upstream_handle_code (PgUpstream *self, const PgImapResponse *response)
{
  guint64 n = 0;
  const PgImapValue *arg
      = response->code_args->len > 0 ? g_ptr_array_index (response->code_args, 0) : NULL;

  if (response->code == NULL)
    return;
  if (strcmp (response->code, "CAPABILITY") == 0)
    {
      pg_upstream_set_caps (self, response->code_args);
      self->caps_from_code = TRUE;
    }
  else if (strcmp (response->code, "ALERT") == 0)
    g_signal_emit (self, pg_upstream_signals[SIGNAL_ALERT], 0, response->text);
  else if (strcmp (response->code, "UIDVALIDITY") == 0 && pg_imap_value_get_number (arg, &n))
    self->mailbox.uidvalidity = pg_upstream_clamp_u32 (n);
  else if (strcmp (response->code, "UIDNEXT") == 0 && pg_imap_value_get_number (arg, &n))
    self->mailbox.uidnext = pg_upstream_clamp_u32 (n);
  else if (strcmp (response->code, "READ-ONLY") == 0)
    self->mailbox.read_only = TRUE;
  else if (strcmp (response->code, "READ-WRITE") == 0)
    self->mailbox.read_only = FALSE;
}

/* INTERNALDATE as UNIX time, or PG_UPSTREAM_NO_DATE. */
static gint64
pg_upstream_fetch_date (const PgImapResponse *response)
{
  const char *date
      = pg_imap_value_get_string (pg_imap_response_get_fetch_item (response, "INTERNALDATE"));
  gint64 when = PG_UPSTREAM_NO_DATE;

  if (date == NULL || !pg_imap_parse_date_time (date, strlen (date), &when))
    return PG_UPSTREAM_NO_DATE;
  return when;
}

/* A snapshot entry of pg_upstream_fetch_snapshot_async: the server's id (EMAILID's
 * "(id)" list, X-GM-MSGID's number) and the header fields, as a quoted string in the
 * response or streamed before it into cmd->id_header. */
static void
pg_upstream_snapshot_entry (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *response,
                            guint64 uid, guint64 size)
{
  PgUpstreamSnapshotEntry entry = {
    .seq = pg_upstream_clamp_u32 (response->number),
    .uid = pg_upstream_clamp_u32 (uid),
    .size = size,
    .internaldate = pg_upstream_fetch_date (response),
  };
  const PgImapValue *list = g_ptr_array_index (response->args, 0);
  const PgImapValue *id = pg_imap_response_get_fetch_item (response, "EMAILID");

  if (id != NULL && id->type == PG_IMAP_VALUE_LIST && id->list->len == 1)
    id = g_ptr_array_index (id->list, 0);
  else if (id == NULL)
    id = pg_imap_response_get_fetch_item (response, "X-GM-MSGID");
  if (id != NULL
      && (id->type == PG_IMAP_VALUE_ATOM || id->type == PG_IMAP_VALUE_NUMBER
          || id->type == PG_IMAP_VALUE_STRING)
      && id->len > 0)
    {
      entry.object_id = id->str;
      entry.object_id_len = id->len;
    }
  for (guint i = 0; i + 1 < list->list->len; i += 2)
    {
      const PgImapValue *name = g_ptr_array_index (list->list, i);
      const PgImapValue *value = g_ptr_array_index (list->list, i + 1);

      if (name->type != PG_IMAP_VALUE_ATOM
          || g_ascii_strncasecmp (name->str, "BODY[HEADER.FIELDS", 18) != 0)
        continue;
      if (value->type == PG_IMAP_VALUE_STRING)
        {
          entry.header = (const guint8 *) value->str;
          entry.header_len = MIN (value->len, PG_UPSTREAM_MAX_ID_HEADER);
        }
      else if (value->type == PG_IMAP_VALUE_STREAMED && cmd->id_header != NULL)
        {
          entry.header = cmd->id_header->data;
          entry.header_len = cmd->id_header->len;
        }
      else if (value->type == PG_IMAP_VALUE_NIL)
        entry.header = (const guint8 *) "";
    }
  cmd->snapshot_func (&entry, cmd->size_data);
  if (cmd->id_header != NULL)
    g_byte_array_set_size (cmd->id_header, 0);
}

static void
pg_upstream_handle_fetch (PgUpstream *self, const PgImapResponse *response)
{
  const PgImapValue *uid_value = pg_imap_response_get_fetch_item (response, "UID");
  const PgImapValue *size_value = pg_imap_response_get_fetch_item (response, "RFC822.SIZE");
  guint64 uid = 0, size = 0;
  PgUpstreamCmd *cmd;
  guint32 guessed = self->guessed_uid;

  self->guessed_uid = 0;
  if (guessed != 0 && (!pg_imap_value_get_number (uid_value, &uid) || uid != guessed))
    {
      /* The body went to the oldest FETCH waiting for one, but it was another message's
       * (a server sending UID after the literal and skipping an expunged one). What went
       * to the consumer is wrong: fail, so a POP3 client sees no end of that message. */
      g_autoptr (GError) error
          = g_error_new (PG_ERROR, PG_ERROR_PROTOCOL,
                         "upstream sent a body for UID %" G_GUINT64_FORMAT " where UID %u was "
                         "expected",
                         uid, guessed);
      pg_upstream_fail (self, error);
      return;
    }
  cmd = pg_upstream_find_pending (self, PG_UPSTREAM_CMD_FETCH_SIZES);
  if (cmd != NULL
      && (size_value != NULL
          || (pg_imap_response_get_fetch_item (response, "FLAGS") == NULL
              && pg_upstream_find_body_cmd (self,
                                            pg_imap_value_get_number (uid_value, &uid) ? uid : 0)
                     == NULL)))
    {
      /* A snapshot entry: anything but an unsolicited flag update (FLAGS, no size) or a
       * body. One without a UID or a size would be a message we could neither list nor
       * count: the snapshot is wrong, and a login on it would be too. */
      g_autoptr (GError) error = NULL;

      gboolean uid_ok = pg_imap_value_get_number (uid_value, &uid) && uid > 0 && uid <= G_MAXUINT32;

      if (!uid_ok || !pg_imap_value_get_number (size_value, &size))
        error = g_error_new (PG_ERROR, PG_ERROR_PROTOCOL,
                             "upstream sent a snapshot FETCH (message %" G_GUINT64_FORMAT
                             ") without a valid %s",
                             response->number, uid_ok ? "RFC822.SIZE" : "UID");
      else if (++cmd->n_entries > PG_MAX_SNAPSHOT_MESSAGES)
        error = g_error_new (G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE,
                             "upstream snapshot has more than %u messages (the limit)",
                             (guint) PG_MAX_SNAPSHOT_MESSAGES);
      if (error != NULL)
        {
          pg_session_warning (self->sid, "upstream: %s", error->message);
          pg_upstream_fail (self, error);
          return;
        }
      if (cmd->snapshot_func != NULL)
        {
          pg_upstream_snapshot_entry (self, cmd, response, uid, size);
          return;
        }
      cmd->size_func (pg_upstream_clamp_u32 (response->number), pg_upstream_clamp_u32 (uid), size,
                      cmd->size_data);
      return;
    }

  if (pg_imap_value_get_number (uid_value, &uid))
    cmd = pg_upstream_find_body_cmd (self, uid);
  else
    cmd = NULL;
  if (cmd != NULL && uid == cmd->uid)
    {
      const PgImapValue *list = g_ptr_array_index (response->args, 0);
      for (guint i = 0; i + 1 < list->list->len; i += 2)
        {
          const PgImapValue *name = g_ptr_array_index (list->list, i);
          const PgImapValue *value = g_ptr_array_index (list->list, i + 1);
          if (name->type != PG_IMAP_VALUE_ATOM
              || (g_ascii_strncasecmp (name->str, "BODY[", 5) != 0
                  && g_ascii_strncasecmp (name->str, "BINARY[", 7) != 0))
            continue;
          if (value->type == PG_IMAP_VALUE_STRING && value->len > 0 && cmd->chunk_func != NULL)
            {
              /* A body sent as a quoted string: one chunk. */
              if (self->held_cmd != NULL)
                {
                  /* A second body item after one the consumer holds: it could only be
                   * held too, and one chunk is held at a time. */
                  g_autoptr (GError) error = g_error_new_literal (
                      PG_ERROR, PG_ERROR_PROTOCOL, "upstream sent two bodies in one FETCH");
                  pg_upstream_fail (self, error);
                  return;
                }
              pg_upstream_deliver_chunk (self, cmd, (const guint8 *) value->str, value->len);
              if (self->state == PG_UPSTREAM_STATE_CLOSED)
                return;
              if (self->held_cmd == cmd)
                {
                  self->held_copy = g_memdup2 (value->str, value->len);
                  self->held_data = self->held_copy;
                }
            }
          if (value->type != PG_IMAP_VALUE_NIL)
            cmd->got_body = TRUE;
        }
      if (self->held_cmd != cmd)
        pg_upstream_body_complete (cmd);
      return;
    }
  if (response->has_number)
    g_signal_emit (self, pg_upstream_signals[SIGNAL_FETCH], 0,
                   pg_upstream_clamp_u32 (response->number), response);
}

/* The entry itself or one level below it (entry names compare without case). */
static gboolean
pg_upstream_entry_in_tree (const char *root, const char *entry)
{
  gsize len = strlen (root);

  if (g_ascii_strncasecmp (root, entry, len) != 0)
    return FALSE;
  if (entry[len] == '\0')
    return TRUE;
  return entry[len] == '/' && entry[len + 1] != '\0' && strchr (entry + len + 1, '/') == NULL;
}

static void pg_upstream_handle_list (PgUpstream *self, const PgImapResponse *response);

static void
pg_upstream_handle_untagged (PgUpstream *self, const PgImapResponse *response)
{
  const char *keyword = response->keyword;

  if (self->state == PG_UPSTREAM_STATE_GREETING)
    {
      PgUpstreamCmd *cmd = g_queue_pop_head (&self->pending);
      /* The greeting pseudo-command completes with this response as its "tagged" reply. */
      if (cmd != NULL)
        {
          pg_upstream_handle_code (self, response);
          cmd->done (self, cmd, response, NULL);
          pg_upstream_cmd_free (cmd);
        }
      return;
    }

  pg_upstream_handle_code (self, response);
  switch (response->status)
    {
    case PG_IMAP_STATUS_BYE:
      g_free (self->bye_text);
      self->bye_text = g_strdup (response->text);
      g_signal_emit (self, pg_upstream_signals[SIGNAL_BYE], 0, response->text);
      if (self->state != PG_UPSTREAM_STATE_LOGOUT)
        pg_upstream_fail_disconnected (self, NULL);
      return;
    case PG_IMAP_STATUS_OK:
    case PG_IMAP_STATUS_NO:
    case PG_IMAP_STATUS_BAD:
    case PG_IMAP_STATUS_PREAUTH:
      return;
    case PG_IMAP_STATUS_NONE:
      break;
    }

  if (strcmp (keyword, "CAPABILITY") == 0)
    pg_upstream_set_caps (self, response->args);
  else if (strcmp (keyword, "EXISTS") == 0 && response->has_number)
    {
      self->mailbox.exists = pg_upstream_clamp_u32 (response->number);
      g_signal_emit (self, pg_upstream_signals[SIGNAL_EXISTS], 0, self->mailbox.exists);
    }
  else if (strcmp (keyword, "EXPUNGE") == 0 && response->has_number)
    {
      if (self->mailbox.exists > 0)
        self->mailbox.exists--;
      g_signal_emit (self, pg_upstream_signals[SIGNAL_EXPUNGE], 0,
                     pg_upstream_clamp_u32 (response->number));
    }
  else if (strcmp (keyword, "VANISHED") == 0 && response->args->len > 0)
    {
      const PgImapValue *first = g_ptr_array_index (response->args, 0);
      gboolean earlier = first->type == PG_IMAP_VALUE_LIST;
      const PgImapValue *set = g_ptr_array_index (response->args, response->args->len - 1);
      const char *text = pg_imap_value_get_string (set);
      if (text != NULL)
        g_signal_emit (self, pg_upstream_signals[SIGNAL_VANISHED], 0, text, earlier);
    }
  else if (strcmp (keyword, "FETCH") == 0 && response->args->len == 1
           && ((const PgImapValue *) g_ptr_array_index (response->args, 0))->type
                  == PG_IMAP_VALUE_LIST)
    pg_upstream_handle_fetch (self, response);
  else if (strcmp (keyword, "LIST") == 0)
    pg_upstream_handle_list (self, response);
  else if (strcmp (keyword, "METADATA") == 0 && response->args->len == 2)
    {
      PgUpstreamCmd *cmd = pg_upstream_find_pending (self, PG_UPSTREAM_CMD_GETMETADATA);
      const PgImapValue *list = g_ptr_array_index (response->args, 1);
      if (cmd != NULL && list->type == PG_IMAP_VALUE_LIST)
        for (guint i = 0; i + 1 < list->list->len; i += 2)
          {
            const char *entry = pg_imap_value_get_string (g_ptr_array_index (list->list, i));
            const PgImapValue *value = g_ptr_array_index (list->list, i + 1);
            if (entry != NULL && cmd->tree != NULL && value->type == PG_IMAP_VALUE_STRING
                && pg_upstream_entry_in_tree (cmd->entry, entry))
              {
                if (g_hash_table_size (cmd->tree) >= PG_STATE_MAX_ENTRIES)
                  cmd->tree_overflow = TRUE;
                else
                  g_hash_table_replace (cmd->tree, g_strdup (entry),
                                        g_bytes_new (value->str, value->len));
              }
            else if (entry != NULL && g_ascii_strcasecmp (entry, cmd->entry) == 0
                     && value->type == PG_IMAP_VALUE_STRING)
              {
                g_clear_pointer (&cmd->value, g_bytes_unref);
                cmd->value = g_bytes_new (value->str, value->len);
              }
          }
    }
}

static void
pg_upstream_handle_tagged (PgUpstream *self, const PgImapResponse *response)
{
  PgUpstreamCmd *cmd = NULL;
  GList *l = self->pending.head;

  while (l != NULL && cmd == NULL)
    {
      PgUpstreamCmd *candidate = l->data;
      if (candidate->tag != NULL && strcmp (candidate->tag, response->tag) == 0)
        cmd = candidate;
      else
        l = l->next;
    }
  if (cmd == NULL)
    {
      g_autoptr (GError) error
          = g_error_new (PG_ERROR, PG_ERROR_PROTOCOL, "upstream answered a tag we did not send");
      pg_upstream_fail (self, error);
      return;
    }
  if (self->sending == cmd)
    self->sending = NULL; /* e.g. NO instead of "+" for a literal: drop the rest */
  self->caps_from_code = FALSE;
  pg_upstream_handle_code (self, response);
  /* A batch (see pg_upstream_batch_fetches) shares one tag: its commands follow each other
   * in pending, and the one reply completes them all. It was one command on the wire: one
   * latency sample and one trace line. */
  pg_upstream_observe_reply (self, cmd, response);
  while (l != NULL)
    {
      GList *next = l->next;

      cmd = l->data;
      if (cmd->tag == NULL || strcmp (cmd->tag, response->tag) != 0)
        break;
      g_queue_delete_link (&self->pending, l);
      cmd->done (self, cmd, response, NULL);
      pg_upstream_cmd_free (cmd);
      if (self->state == PG_UPSTREAM_STATE_CLOSED)
        return; /* a done func closed us: pending was emptied */
      l = next;
    }
  /* Relay hand-off: stop right after the reply that left us logged in and idle, so the
   * bytes that follow stay unparsed in rbuf for pg_upstream_steal_stream(). */
  if (self->hold_when_idle
      && (self->state == PG_UPSTREAM_STATE_AUTHENTICATED
          || self->state == PG_UPSTREAM_STATE_SELECTED)
      && g_queue_is_empty (&self->pending) && g_queue_is_empty (&self->unsent))
    self->paused = TRUE;
  pg_upstream_progress (self);
  pg_upstream_update_timeout (self);
  pg_upstream_flush (self);
}

static void pg_upstream_log_oauth2_challenge (PgUpstream *self, const char *text);

static void
pg_upstream_handle_continuation (PgUpstream *self, const PgImapResponse *response)
{
  PgUpstreamCmd *cmd = self->sending;

  if (cmd != NULL && cmd->challenge_part != 0 && cmd->next_part == cmd->challenge_part)
    pg_upstream_log_oauth2_challenge (self, response->text);
  if (cmd == NULL || cmd->next_part >= cmd->parts->len
      || !((PgImapWriterPart *) g_ptr_array_index (cmd->parts, cmd->next_part))->wait_continuation)
    {
      g_autoptr (GError) error
          = g_error_new (PG_ERROR, PG_ERROR_PROTOCOL, "upstream sent an unexpected continuation");
      pg_upstream_fail (self, error);
      return;
    }
  cmd->continued = TRUE;
  pg_upstream_flush (self);
}

static void
pg_upstream_log_response (PgUpstream *self, const PgImapResponse *response)
{
  g_autofree gchar *dump = NULL;
  g_autofree gchar *escaped = NULL;

  if (pg_log_get_level () < PG_LOG_LEVEL_DEBUG)
    return;
  dump = pg_imap_response_dump (response);
  escaped = pg_log_escape (dump, strlen (dump), 200);
  pg_session_debug (self->sid, "upstream S: %s", escaped);
}

static void
pg_upstream_handle_body_chunk (PgUpstream *self, const PgImapEvent *event)
{
  PgUpstreamCmd *cmd = pg_upstream_find_body_cmd (self, event->uid);

  if (cmd != NULL && event->uid == 0)
    self->guessed_uid = cmd->uid; /* checked when the FETCH response ends */
  if (cmd != NULL)
    pg_upstream_progress (self); /* octets of a body we asked for */
  if (cmd == NULL)
    {
      /* The header fields of a ledger snapshot: kept (bounded) for its entry. */
      PgUpstreamCmd *snapshot = pg_upstream_find_pending (self, PG_UPSTREAM_CMD_FETCH_SIZES);

      if (snapshot != NULL && snapshot->id_header != NULL
          && snapshot->id_header->len < PG_UPSTREAM_MAX_ID_HEADER)
        g_byte_array_append (
            snapshot->id_header, event->data,
            (guint) MIN (event->len, PG_UPSTREAM_MAX_ID_HEADER - snapshot->id_header->len));
      return;
    }
  if (cmd->chunk_func == NULL)
    return; /* a body nobody asked for (or cancelled): skip it */
  pg_upstream_deliver_chunk (self, cmd, event->data, event->len);
}

/* Parse what is buffered, dispatch, and read more when it is all used. */
static void
pg_upstream_process (PgUpstream *self)
{
  g_autoptr (PgUpstream) keep = g_object_ref (self);
  guint reads_now = 0;

  if (self->processing)
    return; /* resume() from inside a callback: the running loop goes on */
  self->processing = TRUE;
  while (!self->paused && !self->upgrading && self->state != PG_UPSTREAM_STATE_CLOSED)
    {
      PgImapEvent event;
      gsize consumed = 0;
      g_autoptr (GError) error = NULL;
      PgImapParseResult result;

      if (G_UNLIKELY (self->held_cmd != NULL))
        {
          pg_upstream_deliver_held (self);
          continue;
        }
      result = pg_imap_parser_feed (
          self->parser, self->rpos < self->rlen ? self->rbuf + self->rpos : (const guint8 *) "",
          self->rlen - self->rpos, &consumed, &event, &error);

      if (result == PG_IMAP_PARSE_ERROR)
        {
          g_autoptr (GError) wrapped
              = g_error_new (PG_ERROR, error->code, "upstream sent %s", error->message);
          pg_upstream_fail (self, wrapped);
          break;
        }
      self->rpos += consumed;
      if (G_UNLIKELY (self->sizes_outstanding > 0))
        {
          self->snapshot_octets += consumed;
          if (self->snapshot_octets > PG_MAX_SNAPSHOT_OCTETS)
            {
              g_autoptr (GError) limit
                  = g_error_new (G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE,
                                 "upstream snapshot reply exceeds %u octets (the limit)",
                                 (guint) PG_MAX_SNAPSHOT_OCTETS);
              pg_session_warning (self->sid, "upstream: %s", limit->message);
              pg_upstream_fail (self, limit);
              break;
            }
        }
      if (result == PG_IMAP_PARSE_NEED_MORE)
        {
          self->rpos = self->rlen = 0;
          if (reads_now < PG_UPSTREAM_READS_AT_ONCE && pg_upstream_read_nonblocking (self))
            {
              reads_now++;
              continue;
            }
          self->processing = FALSE;
          pg_upstream_read (self);
          return;
        }
      if (result == PG_IMAP_PARSE_BODY_CHUNK)
        pg_upstream_handle_body_chunk (self, &event);
      else if (result == PG_IMAP_PARSE_RESPONSE)
        {
          g_autoptr (PgImapResponse) response = event.response;
          pg_upstream_log_response (self, response);
          switch (response->kind)
            {
            case PG_IMAP_RESPONSE_TAGGED:
              pg_upstream_handle_tagged (self, response);
              break;
            case PG_IMAP_RESPONSE_UNTAGGED:
              pg_upstream_handle_untagged (self, response);
              break;
            case PG_IMAP_RESPONSE_CONTINUATION:
              pg_upstream_handle_continuation (self, response);
              break;
            }
        }
      /* BODY_BEGIN / BODY_END need nothing: the FETCH response says the body came. */
    }
  self->processing = FALSE;
  pg_upstream_update_timeout (self);
}

/* A read's result: bytes to process, or EOF or an error, which end the connection. */
static void
pg_upstream_got (PgUpstream *self, gssize n, const GError *error)
{
  if (n <= 0)
    {
      pg_upstream_fail_disconnected (self, error);
      return;
    }
  self->rpos = 0;
  self->rlen = (gsize) n;
  pg_upstream_update_timeout (self);
  pg_upstream_process (self);
}

static void
pg_upstream_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgUpstream) self = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = pg_conn_read_finish (PG_CONN (source), result, &error);

  self->reading = FALSE;
  if (self->state == PG_UPSTREAM_STATE_CLOSED || self->conn != PG_CONN (source))
    {
      if (self->conn == NULL)
        g_clear_pointer (&self->rbuf, g_free); /* the connection was dropped */
      return;
    }
  pg_upstream_got (self, n, error);
}

/* The read buffer for what is expected next (the buffer is empty here): the large one while
 * message bodies stream, else the small one. Sessions free it when idle, but a heap keeps
 * what 1,000 concurrent logins once took, so logins must not take the large one. */
static void
pg_upstream_ensure_rbuf (PgUpstream *self)
{
  gsize want = pg_upstream_find_pending (self, PG_UPSTREAM_CMD_FETCH_BODY) != NULL
                   ? PG_UPSTREAM_BODY_READ_BUFFER
                   : PG_UPSTREAM_READ_BUFFER;

  if (self->rbuf != NULL && self->rbuf_size >= want)
    return;
  if (self->rbuf != NULL)
    pg_secret_wipe (self->rbuf, self->rbuf_size); /* it may have held a login reply */
  g_free (self->rbuf);
  self->rbuf = g_malloc (want);
  self->rbuf_size = want;
}

static gboolean
pg_upstream_can_read (PgUpstream *self)
{
  return !self->reading && !self->paused && !self->upgrading && self->conn != NULL
         && self->state != PG_UPSTREAM_STATE_CLOSED && self->rpos >= self->rlen;
}

/* While replies stream in, read what is already there without the main loop (an async
 * read costs a GTask and a main loop turn). TRUE when bytes came; EOF, errors and
 * "nothing yet" are left to the async read, which reports them. */
static gboolean
pg_upstream_read_nonblocking (PgUpstream *self)
{
  gssize n;

  if (!pg_upstream_can_read (self)
      || (g_queue_is_empty (&self->pending) && g_queue_is_empty (&self->unsent)))
    return FALSE;
  pg_upstream_ensure_rbuf (self);
  n = pg_conn_read_nonblocking (self->conn, self->rbuf, self->rbuf_size, NULL);
  if (n <= 0)
    return FALSE;
  self->rpos = 0;
  self->rlen = (gsize) n;
  pg_upstream_update_timeout (self);
  return TRUE;
}

/* The asynchronous read into the buffer (a GTask), allocating it: for compressed input,
 * and for a readiness that had nothing whole to read yet (pg_upstream_readable_cb). */
static void
pg_upstream_read_now (PgUpstream *self)
{
  self->reading = TRUE;
  pg_upstream_ensure_rbuf (self);
  pg_conn_read_async (self->conn, self->rbuf, self->rbuf_size, NULL, pg_upstream_read_cb,
                      g_object_ref (self));
}

/* Input (or EOF, or an error) is there: one non-blocking read, with no GTask of its own
 * (issue 16; the relay reads the same way). */
static void
pg_upstream_readable_cb (PgConn *conn, gpointer user_data)
{
  PgUpstream *self = user_data; /* unowned: release_conn() cancels the wait first */
  g_autoptr (PgUpstream) keep = NULL;
  g_autoptr (GError) error = NULL;
  gssize n;

  self->waiting = FALSE;
  self->reading = FALSE;
  /* Read now, whether or not a command is outstanding (an idle wait may have seen EXISTS,
   * BYE or EOF), or the wait would end again at once. */
  if (!pg_upstream_can_read (self))
    return;
  pg_upstream_ensure_rbuf (self);
  n = pg_conn_read_nonblocking (self->conn, self->rbuf, self->rbuf_size, &error);
  if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    {
      /* Readable, but nothing whole yet (a TLS record cut short), or a stream that cannot
       * be read without waiting (compressed, not pollable): this read waits the
       * asynchronous way, never in a busy loop. */
      pg_upstream_read_now (self);
      return;
    }
  keep = g_object_ref (self);
  pg_upstream_got (self, n, error);
}

static void
pg_upstream_read (PgUpstream *self)
{
  if (!pg_upstream_can_read (self))
    return;
  if (g_queue_is_empty (&self->pending) && g_queue_is_empty (&self->unsent))
    {
      /* Idle: all that may come is unsolicited (EXISTS, BYE) or EOF. Wait for it without
       * a buffer; a command sent meanwhile is answered through the same wait. */
      g_clear_pointer (&self->rbuf, g_free);
    }
  else if (pg_conn_is_compressed (self->conn))
    {
      /* A reply is due and inflated input can only be read the asynchronous way. */
      pg_upstream_read_now (self);
      return;
    }
  self->reading = TRUE;
  self->waiting = TRUE;
  pg_conn_wait_readable (self->conn, pg_upstream_readable_cb, self);
}

void
pg_upstream_cork (PgUpstream *self)
{
  g_return_if_fail (PG_IS_UPSTREAM (self));
  self->corked++;
}

void
pg_upstream_uncork (PgUpstream *self)
{
  g_return_if_fail (PG_IS_UPSTREAM (self));
  g_return_if_fail (self->corked > 0);
  if (--self->corked == 0)
    pg_upstream_flush (self);
}

void
pg_upstream_resume (PgUpstream *self)
{
  g_return_if_fail (PG_IS_UPSTREAM (self));
  if (!self->paused)
    return;
  self->paused = FALSE;
  pg_upstream_progress (self); /* the pause was our consumer's, not the server's */
  pg_upstream_update_timeout (self);
  if (!self->processing)
    pg_upstream_process (self);
}

/* --- connecting ------------------------------------------------------------------------ */

static void
pg_upstream_connect_done (PgUpstream *self, GError *error)
{
  g_autoptr (PgUpstream) keep = g_object_ref (self);
  g_autoptr (GTask) task = g_steal_pointer (&self->connect_task);

  if (self->connect_cancellable != NULL)
    {
      g_cancellable_disconnect (self->connect_cancellable, self->connect_cancelled_id);
      g_clear_object (&self->connect_cancellable);
    }
  self->connect_deadline_us = 0;
  pg_upstream_update_timeout (self);
  if (task == NULL)
    {
      g_clear_error (&error);
      return;
    }
  if (error != NULL)
    {
      g_task_return_error (task, g_error_copy (error));
      pg_upstream_fail (self, error);
      g_error_free (error);
      return;
    }
  g_task_return_boolean (task, TRUE);
}

static void
pg_upstream_connect_timed_out (PgUpstream *self)
{
  pg_upstream_connect_done (self, g_error_new (PG_ERROR, PG_ERROR_TIMEOUT,
                                               "upstream connect timed out after %u ms",
                                               self->upstream_config->connect_timeout_ms));
}

static void pg_upstream_start_session (PgUpstream *self);

static void
pg_upstream_tls_done_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgUpstream) self = user_data;
  g_autoptr (GError) error = NULL;
  gboolean starttls = self->state != PG_UPSTREAM_STATE_CONNECTING;

  if (!pg_conn_start_client_tls_finish (PG_CONN (source), result, &error))
    {
      g_prefix_error (&error, "upstream ");
      pg_upstream_connect_done (self, g_steal_pointer (&error));
      return;
    }
  if (self->state == PG_UPSTREAM_STATE_CLOSED || self->conn != PG_CONN (source))
    return;
  pg_session_debug (self->sid, "upstream: TLS established");
  self->tls = TRUE;
  self->upgrading = FALSE;
  if (starttls)
    {
      /* Never trust what the server said before TLS: ask again. */
      g_hash_table_remove_all (self->caps);
      pg_upstream_read (self);
      pg_upstream_queue_capability (self, NULL);
      return;
    }
  pg_upstream_start_session (self);
}

/* TLS on the connection, implicit or after STARTTLS: the certificate must chain to
 * ca_file (or the system store) and name the configured host (src/tls). */
static void
pg_upstream_start_tls (PgUpstream *self)
{
  self->upgrading = TRUE;
  pg_conn_start_client_tls_async (self->conn, self->upstream_config->host,
                                  self->upstream_config->port, self->upstream_config->ca_file, NULL,
                                  pg_upstream_tls_done_cb, g_object_ref (self));
}

/* The connect step after CAPABILITY: check what we need and finish (or STARTTLS). */
static void pg_upstream_connect_after_caps (PgUpstream *self);

static void
pg_upstream_starttls_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                              const GError *error)
{
  if (error != NULL)
    return; /* pg_upstream_fail() fails connect_task */
  if (tagged->status != PG_IMAP_STATUS_OK)
    {
      pg_upstream_connect_done (self, pg_upstream_refused_error ("STARTTLS", tagged));
      return;
    }
  /* Whatever came after the OK in plaintext could be injected: discard it. */
  self->rpos = self->rlen;
  pg_imap_parser_reset (self->parser);
  pg_upstream_start_tls (self);
}

/* --- COMPRESS=DEFLATE (RFC 4978), [upstream] compress = auto ------------------------ */

static void
pg_upstream_compress_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                              const GError *error)
{
  g_autoptr (GError) local = NULL;

  self->compressing = FALSE;
  if (error != NULL)
    {
      pg_upstream_cmd_return_error (cmd, g_error_copy (error));
      return;
    }
  if (tagged->status != PG_IMAP_STATUS_OK)
    {
      /* An optimisation the server declined: the session goes on uncompressed. */
      g_autofree gchar *text = pg_upstream_escape_text (tagged->text);

      pg_session_info (self->sid, "upstream: COMPRESS refused: %s %s", tagged->keyword, text);
      pg_upstream_cmd_return_boolean (cmd, TRUE);
      pg_upstream_flush (self);
      return;
    }
  /* Everything after the OK is deflated: what is buffered behind it goes to the inflater,
   * before anyone (the login's caller) can send the next command. */
  if (!pg_conn_start_compress (self->conn, self->rbuf + self->rpos, self->rlen - self->rpos,
                               &local))
    {
      g_autoptr (GError) failed = g_error_new (
          PG_ERROR, PG_ERROR_PROTOCOL, "upstream compression did not start: %s", local->message);

      pg_upstream_cmd_return_error (cmd, g_error_copy (failed));
      pg_upstream_fail (self, failed);
      return;
    }
  self->rpos = self->rlen;
  pg_session_debug (self->sid, "upstream: COMPRESS=DEFLATE on");
  pg_upstream_cmd_return_boolean (cmd, TRUE);
  pg_upstream_flush (self);
}

/* A login succeeded and the capabilities are current: complete cmd's task, after
 * COMPRESS DEFLATE when configured and offered. Not for a connection the relay will take
 * over (hold_when_idle): it forwards the upstream's bytes as they are. */
static void
pg_upstream_logged_in (PgUpstream *self, PgUpstreamCmd *cmd)
{
  g_autoptr (GTask) task = g_steal_pointer (&cmd->task);
  PgUpstreamCmd *compress;

  if (!self->upstream_config->compress || self->hold_when_idle || self->conn == NULL
      || pg_conn_is_compressed (self->conn) || !g_queue_is_empty (&self->pending)
      || !pg_upstream_has_capability (self, "COMPRESS=DEFLATE"))
    {
      if (task != NULL)
        g_task_return_boolean (task, TRUE);
      return;
    }
  compress = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_COMPRESS, "COMPRESS", task,
                                  pg_upstream_compress_done_cb);
  {
    PgImapWriter *writer = pg_upstream_cmd_writer (self, compress);

    pg_imap_writer_add_raw (writer, " DEFLATE");
    /* First in line: a command the caller queued meanwhile must follow it. */
    compress->parts = pg_imap_writer_finish (writer);
    g_queue_push_head (&self->unsent, compress);
    pg_upstream_flush (self);
  }
}

static void
pg_upstream_capability_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                                const GError *error)
{
  if (error != NULL)
    {
      pg_upstream_cmd_return_error (cmd, g_error_copy (error));
      return;
    }
  if (tagged->status != PG_IMAP_STATUS_OK)
    {
      GError *refused = pg_upstream_refused_error ("CAPABILITY", tagged);
      if (cmd->task != NULL)
        pg_upstream_cmd_return_error (cmd, refused);
      else
        pg_upstream_connect_done (self, refused);
      return;
    }
  if (cmd->task != NULL)
    pg_upstream_logged_in (self, cmd); /* the refresh after a login */
  else if (self->connect_task != NULL)
    pg_upstream_connect_after_caps (self);
}

/* CAPABILITY; completes the login task (if any) or goes on with connecting. */
static void
pg_upstream_queue_capability (PgUpstream *self, GTask *task)
{
  PgUpstreamCmd *cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "CAPABILITY", task,
                                            pg_upstream_capability_done_cb);

  pg_upstream_submit (self, cmd, pg_upstream_cmd_writer (self, cmd));
}

static void
pg_upstream_connect_after_caps (PgUpstream *self)
{
  if (self->upstream_config->tls == PG_UPSTREAM_TLS_STARTTLS && !self->tls)
    {
      PgUpstreamCmd *cmd;

      if (!pg_upstream_has_capability (self, "STARTTLS"))
        {
          pg_upstream_connect_done (
              self, g_error_new (PG_ERROR, PG_ERROR_TLS, "upstream does not offer STARTTLS"));
          return;
        }
      cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "STARTTLS", NULL,
                                 pg_upstream_starttls_done_cb);
      pg_upstream_submit (self, cmd, pg_upstream_cmd_writer (self, cmd));
      return;
    }
  pg_session_debug (self->sid, "upstream: connected%s", self->tls ? " with TLS" : "");
  pg_upstream_connect_done (self, NULL);
}

static void
pg_upstream_greeting_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *greeting,
                              const GError *error)
{
  if (error != NULL)
    return;
  if (greeting->kind != PG_IMAP_RESPONSE_UNTAGGED
      || (greeting->status != PG_IMAP_STATUS_OK && greeting->status != PG_IMAP_STATUS_PREAUTH
          && greeting->status != PG_IMAP_STATUS_BYE))
    {
      pg_upstream_connect_done (
          self, g_error_new (PG_ERROR, PG_ERROR_PROTOCOL, "upstream sent no IMAP greeting"));
      return;
    }
  if (greeting->status == PG_IMAP_STATUS_BYE)
    {
      g_autofree gchar *text = pg_upstream_escape_text (greeting->text);
      pg_upstream_connect_done (self,
                                g_error_new (PG_ERROR, PG_ERROR_UPSTREAM,
                                             "upstream refused the connection: BYE %s", text));
      return;
    }
  if (greeting->status == PG_IMAP_STATUS_PREAUTH)
    {
      if (self->upstream_config->tls == PG_UPSTREAM_TLS_STARTTLS && !self->tls)
        {
          /* RFC 9051 §11.1: PREAUTH on a connection that should get STARTTLS is an attack
           * or a misconfiguration; either way we must not go on in plaintext. */
          pg_upstream_connect_done (
              self, g_error_new (PG_ERROR, PG_ERROR_TLS, "upstream sent PREAUTH before STARTTLS"));
          return;
        }
      pg_upstream_set_state (self, PG_UPSTREAM_STATE_AUTHENTICATED);
    }
  else
    pg_upstream_set_state (self, PG_UPSTREAM_STATE_NOT_AUTHENTICATED);

  if (!self->caps_from_code || g_hash_table_size (self->caps) == 0)
    pg_upstream_queue_capability (self, NULL);
  else
    pg_upstream_connect_after_caps (self);
}

/* TCP (and implicit TLS) is up: wait for the greeting. */
static void
pg_upstream_start_session (PgUpstream *self)
{
  PgUpstreamCmd *greeting = g_new0 (PgUpstreamCmd, 1);

  greeting->kind = PG_UPSTREAM_CMD_GREETING;
  greeting->name = g_strdup ("greeting");
  greeting->parts = g_ptr_array_new ();
  greeting->done = pg_upstream_greeting_done_cb;
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_GREETING);
  self->caps_from_code = FALSE;
  g_queue_push_tail (&self->pending, greeting);
  pg_upstream_update_timeout (self);
  pg_upstream_read (self);
}

static void
pg_upstream_tcp_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgUpstream) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConn) conn = pg_conn_connect_finish (result, &error);

  if (conn == NULL)
    {
      if (g_error_matches (error, PG_ERROR, PG_ERROR_TIMEOUT))
        {
          pg_upstream_connect_timed_out (self);
          return;
        }
      /* GIO names the host but not the port: an admin needs both to find the listener. */
      {
        g_autofree gchar *where
            = pg_host_port_to_string (self->upstream_config->host, self->upstream_config->port);

        g_prefix_error (&error, "upstream %s: ", where);
      }
      pg_upstream_connect_done (self, g_steal_pointer (&error));
      return;
    }
  if (self->state == PG_UPSTREAM_STATE_CLOSED)
    return; /* dropping conn closes the socket */
  pg_upstream_attach_conn (self, conn);
  if (self->upstream_config->tls == PG_UPSTREAM_TLS_IMPLICIT)
    pg_upstream_start_tls (self);
  else
    pg_upstream_start_session (self);
}

static gboolean
pg_upstream_connect_cancelled_idle_cb (gpointer user_data)
{
  PgUpstream *self = user_data;

  if (self->connect_task != NULL)
    pg_upstream_connect_done (
        self, g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED, "upstream connect cancelled"));
  return G_SOURCE_REMOVE;
}

static void
pg_upstream_connect_cancelled_cb (GCancellable *cancellable, gpointer user_data)
{
  PgUpstream *self = user_data;

  /* Runs in the thread that cancelled: we are single-threaded, so this is ours. The TCP
   * connect fails with the cancellation; past it (TLS, greeting), the connect ends from
   * the main loop, not from inside the caller's g_cancellable_cancel(). */
  g_cancellable_cancel (self->io_cancellable);
  if (self->conn != NULL)
    {
      g_autoptr (GSource) idle = g_idle_source_new ();

      g_source_set_callback (idle, pg_upstream_connect_cancelled_idle_cb, g_object_ref (self),
                             g_object_unref);
      g_source_attach (idle, self->context);
    }
}

void
pg_upstream_connect_async (PgUpstream *self, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_connect_async, cancellable, callback, user_data);
  if (self->state != PG_UPSTREAM_STATE_DISCONNECTED)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "upstream connection already used");
      return;
    }
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_CONNECTING);
  self->connect_task = g_steal_pointer (&task);
  if (cancellable != NULL)
    {
      self->connect_cancellable = g_object_ref (cancellable);
      self->connect_cancelled_id = g_cancellable_connect (
          cancellable, G_CALLBACK (pg_upstream_connect_cancelled_cb), self, NULL);
    }
  /* One deadline for all of connecting: TCP, TLS, greeting, capabilities, STARTTLS. */
  if (self->upstream_config->connect_timeout_ms > 0)
    self->connect_deadline_us
        = g_get_monotonic_time () + (gint64) self->upstream_config->connect_timeout_ms * 1000;
  pg_session_debug (self->sid, "upstream: connecting to %s:%u (%s)", self->upstream_config->host,
                    self->upstream_config->port,
                    pg_upstream_tls_to_string (self->upstream_config->tls));
  pg_conn_connect_async (self->config, self->upstream_config->host, self->upstream_config->port,
                         self->connect_deadline_us, self->io_cancellable,
                         pg_upstream_tcp_connect_cb, g_object_ref (self));
}

gboolean
pg_upstream_connect_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == pg_upstream_connect_async,
                        FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- authentication ----------------------------------------------------------------------- */

static void
pg_upstream_login_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                           const GError *error)
{
  if (error != NULL)
    {
      pg_upstream_cmd_return_error (cmd, g_error_copy (error));
      return;
    }
  if (tagged->status != PG_IMAP_STATUS_OK)
    {
      g_autofree gchar *text = pg_upstream_escape_text (tagged->text);
      pg_session_info (self->sid, "upstream: %s refused: %s %s", cmd->name, tagged->keyword, text);
      /* BAD to AUTHENTICATE is about the exchange, not the credentials (a mechanism the
       * server lists but will not run): the login path may still try LOGIN. */
      if (tagged->status == PG_IMAP_STATUS_BAD && g_str_equal (cmd->name, "AUTHENTICATE"))
        pg_upstream_cmd_return_error (
            cmd, g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "upstream rejected AUTHENTICATE (BAD)"));
      else
        pg_upstream_cmd_return_error (
            cmd, g_error_new (PG_ERROR, PG_ERROR_AUTH_FAILED, "upstream refused the credentials"));
      return;
    }
  pg_metrics_upstream_login (strcmp (cmd->name, "LOGIN") == 0 ? PG_METRICS_MECHANISM_LOGIN
                                                              : cmd->mechanism);
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_AUTHENTICATED);
  if (self->caps_from_code)
    pg_upstream_logged_in (self, cmd);
  else
    {
      /* Capabilities change after login; the server did not tell us, so ask. */
      g_autoptr (GTask) task = g_steal_pointer (&cmd->task);
      pg_upstream_queue_capability (self, task);
    }
}

static gboolean
pg_upstream_check_state (PgUpstream *self, GTask *task, gboolean need_auth)
{
  /* connect_task: nothing may be pipelined behind STARTTLS in plaintext. */
  if (self->state == PG_UPSTREAM_STATE_CLOSED || self->state == PG_UPSTREAM_STATE_DISCONNECTED
      || self->state == PG_UPSTREAM_STATE_CONNECTING || self->state == PG_UPSTREAM_STATE_GREETING
      || self->connect_task != NULL)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "upstream connection is not open");
      return FALSE;
    }
  if (need_auth && self->state == PG_UPSTREAM_STATE_NOT_AUTHENTICATED)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM, "not logged in upstream");
      return FALSE;
    }
  return TRUE;
}

void
pg_upstream_login_async (PgUpstream *self, const char *user, const char *password,
                         GCancellable *cancellable, GAsyncReadyCallback callback,
                         gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_login_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, FALSE))
    return;
  if (pg_upstream_has_capability (self, "LOGINDISABLED"))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "upstream disabled LOGIN (LOGINDISABLED)");
      return;
    }
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "LOGIN", task,
                             pg_upstream_login_done_cb);
  writer = pg_upstream_cmd_writer (self, cmd);
  pg_imap_writer_add_secret (writer, user, strlen (user));
  pg_imap_writer_add_secret (writer, password, strlen (password));
  pg_upstream_submit (self, cmd, writer);
}

gboolean
pg_upstream_login_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

void
pg_upstream_authenticate_plain_async (PgUpstream *self, const char *user, const char *password,
                                      GCancellable *cancellable, GAsyncReadyCallback callback,
                                      gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;
  gsize user_len, pass_len, raw_len;
  g_autofree guchar *raw = NULL;
  g_autofree gchar *b64 = NULL;
  g_autofree gchar *head = NULL;
  g_autoptr (GString) line = NULL;
  gboolean ir;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_authenticate_plain_async, cancellable, callback,
                               user_data);
  if (!pg_upstream_check_state (self, task, FALSE))
    return;
  if (!pg_upstream_has_capability (self, "AUTH=PLAIN"))
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "upstream does not offer AUTH=PLAIN");
      return;
    }
  /* authzid NUL authcid NUL passwd (RFC 4616) */
  user_len = strlen (user);
  pass_len = strlen (password);
  raw_len = user_len + pass_len + 2;
  raw = g_malloc (raw_len);
  raw[0] = '\0';
  memcpy (raw + 1, user, user_len);
  raw[1 + user_len] = '\0';
  memcpy (raw + 2 + user_len, password, pass_len);
  b64 = g_base64_encode (raw, raw_len);
  pg_secret_wipe (raw, raw_len);

  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "AUTHENTICATE", task,
                             pg_upstream_login_done_cb);
  ir = pg_upstream_has_capability (self, "SASL-IR");
  head = g_strdup_printf ("%s AUTHENTICATE PLAIN%s", cmd->tag, ir ? " " : "\r\n");
  cmd->parts = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_imap_writer_part_free);
  {
    PgImapWriterPart *part = g_new0 (PgImapWriterPart, 1);
    part->bytes = g_bytes_new (head, strlen (head));
    g_ptr_array_add (cmd->parts, part);
  }
  {
    /* The SASL response: a secret part (never logged), wiped when freed. */
    g_autoptr (PgImapWriter) writer = pg_imap_writer_new ("", 0);
    g_autoptr (GPtrArray) secret_parts = NULL;
    PgImapWriterPart *part;
    g_autofree gchar *response = g_strconcat (b64, "\r\n", NULL);

    pg_imap_writer_add_secret (writer, response, strlen (response));
    pg_secret_wipe (response, strlen (response));
    secret_parts = pg_imap_writer_finish (g_steal_pointer (&writer));
    /* parts: "{n}\r\n" header, the secret data, "\r\n": keep only the data. */
    part = g_ptr_array_steal_index (secret_parts, 1);
    part->wait_continuation = !ir;
    g_ptr_array_add (cmd->parts, part);
  }
  pg_secret_wipe (b64, strlen (b64));
  g_queue_push_tail (&self->unsent, cmd);
  pg_upstream_flush (self);
}

gboolean
pg_upstream_authenticate_plain_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- OAuth2: XOAUTH2 and OAUTHBEARER -------------------------------------------------- */

/* RFC 7628 §3.2.2: a failed OAUTHBEARER (and Google's XOAUTH2) first sends a "+" with a
 * base64 JSON object: {"status":"invalid_token","scope":"...","openid-configuration":...}.
 * Only status and scope are logged, escaped: the rest is the server's business. */
static void
pg_upstream_log_oauth2_challenge (PgUpstream *self, const char *text)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autofree guchar *json = NULL;
  gsize len = 0;
  JsonNode *root;
  JsonObject *object;
  const char *status = NULL;
  const char *scope = NULL;
  g_autofree gchar *status_text = NULL;
  g_autofree gchar *scope_text = NULL;

  if (text != NULL && *text != '\0')
    json = g_base64_decode (text, &len);
  if (json == NULL || len == 0
      || !json_parser_load_from_data (parser, (const gchar *) json, (gssize) len, NULL)
      || (root = json_parser_get_root (parser)) == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      pg_session_info (self->sid, "upstream: OAuth2 error challenge is not base64 JSON");
      return;
    }
  object = json_node_get_object (root);
  if (json_object_has_member (object, "status")
      && JSON_NODE_HOLDS_VALUE (json_object_get_member (object, "status")))
    status = json_object_get_string_member (object, "status");
  if (json_object_has_member (object, "scope")
      && JSON_NODE_HOLDS_VALUE (json_object_get_member (object, "scope")))
    scope = json_object_get_string_member (object, "scope");
  status_text = pg_upstream_escape_text (status);
  scope_text = pg_upstream_escape_text (scope);
  pg_session_info (self->sid, "upstream: OAuth2 refused: status=%s scope=%s", status_text,
                   scope_text);
}

/* Like a login, except that NO [UNAVAILABLE] (the server could not check the token, e.g.
 * its introspection endpoint is down) is a temporary failure, not a refused token. */
static void
pg_upstream_oauth2_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                            const GError *error)
{
  if (error == NULL && tagged->status != PG_IMAP_STATUS_OK && tagged->code != NULL
      && strcmp (tagged->code, "UNAVAILABLE") == 0)
    {
      g_autofree gchar *text = pg_upstream_escape_text (tagged->text);

      pg_session_info (self->sid, "upstream: AUTHENTICATE refused: %s %s", tagged->keyword, text);
      pg_upstream_cmd_return_error (
          cmd,
          g_error_new (PG_ERROR, PG_ERROR_UPSTREAM, "upstream cannot check tokens now: %s", text));
      return;
    }
  pg_upstream_login_done_cb (self, cmd, tagged, error);
}

static void
pg_upstream_cmd_add_part (PgUpstreamCmd *cmd, gchar *data, gboolean secret, gboolean wait)
{
  PgImapWriterPart *part = g_new0 (PgImapWriterPart, 1);
  gsize len = strlen (data);

  part->bytes = secret
                    ? g_bytes_new_with_free_func (data, len, (GDestroyNotify) pg_secret_free, data)
                    : g_bytes_new_take (data, len);
  part->secret = secret;
  part->wait_continuation = wait;
  g_ptr_array_add (cmd->parts, part);
}

void
pg_upstream_authenticate_oauth2_async (PgUpstream *self, PgOAuth2Mechanism mechanism,
                                       const char *user, const char *token,
                                       GCancellable *cancellable, GAsyncReadyCallback callback,
                                       gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  g_autoptr (PgSecret) response = NULL;
  PgUpstreamCmd *cmd;
  const char *name = NULL;
  gboolean ir;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  g_return_if_fail (user != NULL && token != NULL);
  task = pg_upstream_task_new (self, pg_upstream_authenticate_oauth2_async, cancellable, callback,
                               user_data);
  if (!pg_upstream_check_state (self, task, FALSE))
    return;
  switch (mechanism)
    {
    case PG_OAUTH2_MECHANISM_AUTO:
      name = pg_upstream_has_capability (self, "AUTH=OAUTHBEARER") ? "OAUTHBEARER"
             : pg_upstream_has_capability (self, "AUTH=XOAUTH2")   ? "XOAUTH2"
                                                                   : NULL;
      break;
    case PG_OAUTH2_MECHANISM_XOAUTH2:
      name = "XOAUTH2";
      break;
    case PG_OAUTH2_MECHANISM_OAUTHBEARER:
      name = "OAUTHBEARER";
      break;
    }
  if (name == NULL)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "upstream offers neither AUTH=OAUTHBEARER nor AUTH=XOAUTH2");
      return;
    }
  {
    g_autofree gchar *cap = g_strconcat ("AUTH=", name, NULL);
    if (!pg_upstream_has_capability (self, cap))
      {
        g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM, "upstream does not offer %s",
                                 cap);
        return;
      }
  }
  if (strcmp (name, "OAUTHBEARER") == 0)
    response = pg_oauth2_sasl_oauthbearer (user, self->upstream_config->host,
                                           self->upstream_config->port, token);
  else
    response = pg_oauth2_sasl_xoauth2 (user, token);

  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "AUTHENTICATE", task,
                             pg_upstream_oauth2_done_cb);
  cmd->mechanism = strcmp (name, "OAUTHBEARER") == 0 ? PG_METRICS_MECHANISM_OAUTHBEARER
                                                     : PG_METRICS_MECHANISM_XOAUTH2;
  ir = pg_upstream_has_capability (self, "SASL-IR");
  cmd->parts = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_imap_writer_part_free);
  pg_upstream_cmd_add_part (
      cmd, g_strdup_printf ("%s AUTHENTICATE %s%s", cmd->tag, name, ir ? " " : "\r\n"), FALSE,
      FALSE);
  /* The response: without SASL-IR it waits for the server's empty "+". */
  pg_upstream_cmd_add_part (cmd, g_strconcat (response, "\r\n", NULL), TRUE, !ir);
  /* RFC 7628 §3.2.3: a failure comes as a "+" error challenge first; the client answers
   * with a dummy %x01 (OAUTHBEARER) or an empty line (XOAUTH2, as Google documents),
   * then the server sends the tagged NO. A success never sends that "+", and the tagged
   * reply drops this part unsent. */
  cmd->challenge_part = 2;
  pg_upstream_cmd_add_part (
      cmd, g_strdup (cmd->mechanism == PG_METRICS_MECHANISM_OAUTHBEARER ? "AQ==\r\n" : "\r\n"),
      FALSE, TRUE);
  g_queue_push_tail (&self->unsent, cmd);
  pg_upstream_flush (self);
}

gboolean
pg_upstream_authenticate_oauth2_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

gboolean
pg_upstream_is_authenticated (PgUpstream *self)
{
  g_return_val_if_fail (PG_IS_UPSTREAM (self), FALSE);
  return self->state == PG_UPSTREAM_STATE_AUTHENTICATED
         || self->state == PG_UPSTREAM_STATE_SELECTED;
}

gboolean
pg_upstream_is_tls (PgUpstream *self)
{
  g_return_val_if_fail (PG_IS_UPSTREAM (self), FALSE);
  return self->tls;
}

gboolean
pg_upstream_is_closed (PgUpstream *self)
{
  g_return_val_if_fail (PG_IS_UPSTREAM (self), TRUE);
  return self->state == PG_UPSTREAM_STATE_CLOSED;
}

/* --- ID, SELECT, NOOP, LOGOUT -------------------------------------------------------------- */

void
pg_upstream_id_async (PgUpstream *self, const char *name, const char *version,
                      const char *originating_ip, GCancellable *cancellable,
                      GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_id_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, FALSE))
    return;
  if (!pg_upstream_has_capability (self, "ID"))
    {
      g_task_return_boolean (task, TRUE);
      return;
    }
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "ID", task, NULL);
  writer = pg_upstream_cmd_writer (self, cmd);
  pg_imap_writer_begin_list (writer);
  pg_imap_writer_add_string (writer, "name", 4);
  pg_imap_writer_add_string (writer, name, strlen (name));
  pg_imap_writer_add_raw (writer, " \"version\"");
  pg_imap_writer_add_string (writer, version, strlen (version));
  if (originating_ip != NULL)
    {
      pg_imap_writer_add_raw (writer, " \"x-originating-ip\"");
      pg_imap_writer_add_string (writer, originating_ip, strlen (originating_ip));
    }
  pg_imap_writer_end_list (writer);
  pg_upstream_submit (self, cmd, writer);
}

gboolean
pg_upstream_id_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

static void
pg_upstream_select_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                            const GError *error)
{
  g_autoptr (GTask) task = NULL;

  if (error == NULL && tagged->status != PG_IMAP_STATUS_OK)
    pg_upstream_set_state (self, PG_UPSTREAM_STATE_AUTHENTICATED); /* nothing selected */
  task = pg_upstream_cmd_take_ok (cmd, tagged, error);
  if (task == NULL)
    return;
  if (self->mailbox.uidvalidity == 0)
    {
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_PROTOCOL, "upstream %s gave no UIDVALIDITY",
                               cmd->name);
      return;
    }
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_SELECTED);
  g_task_return_pointer (task, g_memdup2 (&self->mailbox, sizeof self->mailbox), g_free);
}

void
pg_upstream_select_async (PgUpstream *self, const char *mailbox, gboolean read_only,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_select_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  memset (&self->mailbox, 0, sizeof self->mailbox);
  self->mailbox.read_only = read_only;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SELECT, read_only ? "EXAMINE" : "SELECT", task,
                             pg_upstream_select_done_cb);
  writer = pg_upstream_cmd_writer (self, cmd);
  pg_imap_writer_add_astring (writer, mailbox, strlen (mailbox));
  pg_upstream_submit (self, cmd, writer);
}

gboolean
pg_upstream_select_finish (PgUpstream *self, GAsyncResult *result, PgUpstreamMailbox *out_mailbox,
                           GError **error)
{
  g_autofree PgUpstreamMailbox *mailbox = NULL;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  mailbox = g_task_propagate_pointer (G_TASK (result), error);
  if (mailbox == NULL)
    return FALSE;
  if (out_mailbox != NULL)
    *out_mailbox = *mailbox;
  return TRUE;
}

void
pg_upstream_noop_async (PgUpstream *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                        gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_noop_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, FALSE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "NOOP", task, NULL);
  pg_upstream_submit (self, cmd, pg_upstream_cmd_writer (self, cmd));
}

gboolean
pg_upstream_noop_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

static void
pg_upstream_logout_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                            const GError *error)
{
  /* Whatever the reply (or a close before it), the session is over. */
  pg_upstream_cmd_return_boolean (cmd, TRUE);
  if (tagged != NULL)
    pg_upstream_fail (self, NULL);
}

void
pg_upstream_logout_async (PgUpstream *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_logout_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, FALSE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_LOGOUT, "LOGOUT", task,
                             pg_upstream_logout_done_cb);
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_LOGOUT);
  pg_upstream_submit (self, cmd, pg_upstream_cmd_writer (self, cmd));
}

gboolean
pg_upstream_logout_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- FETCH -------------------------------------------------------------------------------- */

static void
pg_upstream_fetch_sizes_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                                 const GError *error)
{
  if (--self->sizes_outstanding == 0)
    self->snapshot_octets = 0;
  pg_upstream_done_simple_cb (self, cmd, tagged, error);
}

/* A snapshot FETCH of `items`, counted while outstanding (PG_MAX_SNAPSHOT_OCTETS). */
static void
pg_upstream_submit_fetch_sizes (PgUpstream *self, PgUpstreamCmd *cmd, const char *items)
{
  PgImapWriter *writer = pg_upstream_cmd_writer (self, cmd);

  cmd->done = pg_upstream_fetch_sizes_done_cb;
  self->sizes_outstanding++;
  pg_imap_writer_add_raw (writer, items);
  pg_upstream_submit (self, cmd, writer);
}

void
pg_upstream_fetch_sizes_async (PgUpstream *self, PgUpstreamSizeFunc func, gpointer func_data,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  g_return_if_fail (func != NULL);
  task = pg_upstream_task_new (self, pg_upstream_fetch_sizes_async, cancellable, callback,
                               user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_FETCH_SIZES, "UID FETCH", task, NULL);
  cmd->size_func = func;
  cmd->size_data = func_data;
  pg_upstream_submit_fetch_sizes (self, cmd, " 1:* (UID RFC822.SIZE)");
}

void
pg_upstream_fetch_snapshot_async (PgUpstream *self, const char *uid_set, gboolean dated,
                                  PgUpstreamIds ids, PgUpstreamSnapshotFunc func,
                                  gpointer func_data, GCancellable *cancellable,
                                  GAsyncReadyCallback callback, gpointer user_data)
{
  static const char *const id_items[] = {
    [PG_UPSTREAM_IDS_NONE] = "",
    [PG_UPSTREAM_IDS_EMAILID] = " EMAILID",
    [PG_UPSTREAM_IDS_X_GM_MSGID] = " X-GM-MSGID",
    [PG_UPSTREAM_IDS_HEADER] = " BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)]",
  };
  g_autoptr (GTask) task = NULL;
  g_autofree gchar *items = NULL;
  PgUpstreamCmd *cmd;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  g_return_if_fail (func != NULL && uid_set != NULL && *uid_set != '\0');
  g_return_if_fail (ids < G_N_ELEMENTS (id_items));
  task = pg_upstream_task_new (self, pg_upstream_fetch_sizes_async, cancellable, callback,
                               user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_FETCH_SIZES, "UID FETCH", task, NULL);
  cmd->snapshot_func = func;
  cmd->size_data = func_data;
  if (ids == PG_UPSTREAM_IDS_HEADER)
    cmd->id_header = g_byte_array_new ();
  items = g_strdup_printf (" %s (UID RFC822.SIZE%s%s)", uid_set, dated ? " INTERNALDATE" : "",
                           id_items[ids]);
  pg_upstream_submit_fetch_sizes (self, cmd, items);
}

gboolean
pg_upstream_fetch_sizes_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

static void
pg_upstream_fetch_body_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                                const GError *error)
{
  g_autoptr (GTask) task = g_steal_pointer (&cmd->task);

  if (task == NULL)
    return;
  if (error != NULL)
    g_task_return_error (task, g_error_copy (error));
  else if (tagged->status == PG_IMAP_STATUS_BAD)
    g_task_return_error (task, pg_upstream_refused_error (cmd->name, tagged));
  else
    /* OK without a body, or NO (Dovecot: expunged meanwhile): the message vanished. */
    g_task_return_int (task, tagged->status == PG_IMAP_STATUS_OK && cmd->got_body ? 1 : 0);
}

static gboolean
pg_upstream_resume_idle_cb (gpointer user_data)
{
  pg_upstream_resume (user_data);
  return G_SOURCE_REMOVE;
}

/* A body fetch was cancelled: its chunks stopped. A consumer that paused us will not
 * resume, so resume ourselves (from the main loop, not from inside the caller's
 * g_cancellable_cancel()); the rest of the body is read and dropped. */
static void
pg_upstream_resume_cancelled (PgUpstream *self)
{
  if (self->paused)
    {
      g_autoptr (GSource) idle = g_idle_source_new ();
      g_source_set_callback (idle, pg_upstream_resume_idle_cb, g_object_ref (self), g_object_unref);
      g_source_attach (idle, self->context);
    }
}

static void
pg_upstream_body_cancelled_cb (GCancellable *cancellable, gpointer user_data)
{
  PgUpstreamCmd *cmd = user_data;

  cmd->chunk_func = NULL;
  pg_upstream_resume_cancelled (cmd->owner);
}

static void
pg_upstream_bodies_cancelled_cb (GCancellable *cancellable, gpointer user_data)
{
  PgUpstream *self = user_data; /* unowned: dispose disconnects us */
  GQueue *queues[] = { &self->pending, &self->unsent };

  for (guint i = 0; i < G_N_ELEMENTS (queues); i++)
    for (GList *l = queues[i]->head; l != NULL; l = l->next)
      {
        PgUpstreamCmd *cmd = l->data;

        if (cmd->body_watched)
          cmd->chunk_func = NULL;
      }
  pg_upstream_resume_cancelled (self);
}

void
pg_upstream_fetch_body_async (PgUpstream *self, guint32 uid, const char *section, guint64 offset,
                              guint64 length, PgUpstreamChunkFunc func, gpointer func_data,
                              GCancellable *cancellable, GAsyncReadyCallback callback,
                              gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  char args[PG_UPSTREAM_U32_TEXT + 48]; /* " UID FETCH uid (UID BODY.PEEK[HEADER]" at most */
  char *end;
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  g_return_if_fail (func != NULL && uid > 0);
  g_return_if_fail (strcmp (section, "") == 0 || strcmp (section, "HEADER") == 0
                    || strcmp (section, "TEXT") == 0);
  task
      = pg_upstream_task_new (self, pg_upstream_fetch_body_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_FETCH_BODY, "UID FETCH", task,
                             pg_upstream_fetch_body_done_cb);
  cmd->uid = uid;
  cmd->whole_body = section[0] == '\0' && length == 0 && offset == 0;
  cmd->chunk_func = func;
  cmd->chunk_data = func_data;
  if (cancellable != NULL && self->body_cancellable == NULL)
    {
      self->body_cancellable = g_object_ref (cancellable);
      self->body_cancelled_id = g_signal_connect (
          cancellable, "cancelled", G_CALLBACK (pg_upstream_bodies_cancelled_cb), self);
    }
  if (cancellable != NULL && cancellable == self->body_cancellable)
    cmd->body_watched = TRUE;
  else if (cancellable != NULL)
    {
      cmd->cancellable = g_object_ref (cancellable);
      cmd->cancelled_id = g_signal_connect (cancellable, "cancelled",
                                            G_CALLBACK (pg_upstream_body_cancelled_cb), cmd);
    }
  end = stpcpy (args, " UID FETCH");
  end = pg_upstream_format_u32 (end, ' ', uid);
  end = stpcpy (end, " (UID BODY.PEEK[");
  stpcpy (end, section);
  /* The writer without pg_upstream_cmd_writer(): no literal, so LITERAL+/- do not matter. */
  writer = pg_imap_writer_new (cmd->tag, 0);
  pg_imap_writer_add_raw (writer, args);
  if (length > 0)
    {
      g_autofree gchar *partial
          = g_strdup_printf ("]<%" G_GUINT64_FORMAT ".%" G_GUINT64_FORMAT ">)", offset, length);
      pg_imap_writer_add_raw (writer, partial);
    }
  else
    pg_imap_writer_add_raw (writer, "])");
  pg_upstream_submit (self, cmd, writer);
}

gboolean
pg_upstream_fetch_body_finish (PgUpstream *self, GAsyncResult *result, gboolean *out_vanished,
                               GError **error)
{
  g_autoptr (GError) local = NULL;
  gssize found;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  found = g_task_propagate_int (G_TASK (result), &local);
  if (local != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&local));
      return FALSE;
    }
  if (out_vanished != NULL)
    *out_vanished = found == 0;
  return TRUE;
}

/* --- UID set commands: STORE, EXPUNGE, MOVE (with fallback) -------------------------------- */

typedef enum
{
  PG_UPSTREAM_STEP_STORE,
  PG_UPSTREAM_STEP_EXPUNGE,
  PG_UPSTREAM_STEP_MOVE,
  PG_UPSTREAM_STEP_COPY,
} PgUpstreamStep;

/* Task data of a multi-command operation: for each UID set, each step in order. */
typedef struct
{
  GPtrArray *sets; /* owned, of gchar* */
  guint set_index;
  PgUpstreamStep steps[3];
  guint n_steps;
  guint step_index;
  gchar *flags;     /* owned: for STORE */
  gchar *mailbox;   /* owned: for MOVE/COPY */
  gboolean removed; /* the messages leave the mailbox */
} PgUpstreamBatch;

static void
pg_upstream_batch_free (PgUpstreamBatch *batch)
{
  g_clear_pointer (&batch->sets, g_ptr_array_unref);
  g_free (batch->flags);
  g_free (batch->mailbox);
  g_free (batch);
}

static void pg_upstream_batch_next (PgUpstream *self, GTask *task);

static void
pg_upstream_batch_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                           const GError *error)
{
  g_autoptr (GTask) task = pg_upstream_cmd_take_ok (cmd, tagged, error);
  PgUpstreamBatch *batch;

  if (task == NULL)
    return;
  if (g_task_return_error_if_cancelled (task))
    return;
  batch = g_task_get_task_data (task);
  if (++batch->step_index == batch->n_steps)
    {
      batch->step_index = 0;
      batch->set_index++;
    }
  pg_upstream_batch_next (self, task);
}

static void
pg_upstream_batch_next (PgUpstream *self, GTask *task)
{
  PgUpstreamBatch *batch = g_task_get_task_data (task);
  const char *set;
  PgUpstreamCmd *cmd = NULL;
  PgImapWriter *writer = NULL;

  if (batch->set_index >= batch->sets->len)
    {
      g_task_return_boolean (task, TRUE);
      return;
    }
  set = g_ptr_array_index (batch->sets, batch->set_index);
  switch (batch->steps[batch->step_index])
    {
    case PG_UPSTREAM_STEP_STORE:
      cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "UID STORE", task,
                                 pg_upstream_batch_done_cb);
      writer = pg_upstream_cmd_writer (self, cmd);
      pg_imap_writer_add_raw (writer, " ");
      pg_imap_writer_add_raw (writer, set);
      pg_imap_writer_add_raw (writer, " +FLAGS.SILENT (");
      pg_imap_writer_add_raw (writer, batch->flags);
      pg_imap_writer_add_raw (writer, ")");
      break;
    case PG_UPSTREAM_STEP_EXPUNGE:
      cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "UID EXPUNGE", task,
                                 pg_upstream_batch_done_cb);
      writer = pg_upstream_cmd_writer (self, cmd);
      pg_imap_writer_add_raw (writer, " ");
      pg_imap_writer_add_raw (writer, set);
      break;
    case PG_UPSTREAM_STEP_MOVE:
    case PG_UPSTREAM_STEP_COPY:
      cmd = pg_upstream_cmd_new (
          self, PG_UPSTREAM_CMD_SIMPLE,
          batch->steps[batch->step_index] == PG_UPSTREAM_STEP_MOVE ? "UID MOVE" : "UID COPY", task,
          pg_upstream_batch_done_cb);
      writer = pg_upstream_cmd_writer (self, cmd);
      pg_imap_writer_add_raw (writer, " ");
      pg_imap_writer_add_raw (writer, set);
      pg_imap_writer_add_astring (writer, batch->mailbox, strlen (batch->mailbox));
      break;
    }
  g_return_if_fail (cmd != NULL && writer != NULL);
  pg_upstream_submit (self, cmd, writer);
}

/* Start a batch over uids; `after` is the longest text that follows the set. */
static void
pg_upstream_batch_start (PgUpstream *self, GTask *task, PgUpstreamBatch *batch, const guint32 *uids,
                         gsize n_uids, const char *after)
{
  /* "p4294967295" is the longest tag we make; "UID EXPUNGE" the longest verb. */
  gsize room = pg_imap_writer_uid_set_room ("p4294967295", "UID EXPUNGE", after);

  batch->sets = pg_imap_writer_format_uid_sets (uids, n_uids, room);
  g_task_set_task_data (task, batch, (GDestroyNotify) pg_upstream_batch_free);
  pg_upstream_batch_next (self, task);
}

void
pg_upstream_add_flags_async (PgUpstream *self, const guint32 *uids, gsize n_uids, const char *flags,
                             GCancellable *cancellable, GAsyncReadyCallback callback,
                             gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  g_autofree gchar *after = NULL;
  PgUpstreamBatch *batch;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_add_flags_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  batch = g_new0 (PgUpstreamBatch, 1);
  batch->steps[0] = PG_UPSTREAM_STEP_STORE;
  batch->n_steps = 1;
  batch->flags = g_strdup (flags);
  after = g_strdup_printf ("+FLAGS.SILENT (%s)", flags);
  pg_upstream_batch_start (self, task, batch, uids, n_uids, after);
}

gboolean
pg_upstream_add_flags_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

void
pg_upstream_expunge_async (PgUpstream *self, const guint32 *uids, gsize n_uids,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamBatch *batch;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_expunge_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  if (!pg_upstream_has_capability (self, "UIDPLUS"))
    {
      /* Never fall back to a plain EXPUNGE: it would remove other \Deleted messages. */
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_UPSTREAM,
                               "upstream lacks UIDPLUS: cannot expunge by UID");
      return;
    }
  batch = g_new0 (PgUpstreamBatch, 1);
  batch->steps[0] = PG_UPSTREAM_STEP_EXPUNGE;
  batch->n_steps = 1;
  pg_upstream_batch_start (self, task, batch, uids, n_uids, "");
}

gboolean
pg_upstream_expunge_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* What MOVE and COPY share: their task and, when the session can take the command, a
 * batch naming `mailbox` (else NULL: the task has already returned its error). */
static PgUpstreamBatch *
pg_upstream_mailbox_batch_new (PgUpstream *self, gpointer source_tag, const char *mailbox,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data, GTask **out_task)
{
  PgUpstreamBatch *batch;

  *out_task = pg_upstream_task_new (self, source_tag, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, *out_task, TRUE))
    return NULL;
  batch = g_new0 (PgUpstreamBatch, 1);
  batch->mailbox = g_strdup (mailbox);
  return batch;
}

void
pg_upstream_move_async (PgUpstream *self, const guint32 *uids, gsize n_uids, const char *mailbox,
                        GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  g_autofree gchar *after = NULL;
  PgUpstreamBatch *batch;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  batch = pg_upstream_mailbox_batch_new (self, pg_upstream_move_async, mailbox, cancellable,
                                         callback, user_data, &task);
  if (batch == NULL)
    return;
  batch->flags = g_strdup ("\\Deleted");
  batch->removed = TRUE;
  if (pg_upstream_has_capability (self, "MOVE"))
    batch->steps[batch->n_steps++] = PG_UPSTREAM_STEP_MOVE;
  else
    {
      batch->steps[batch->n_steps++] = PG_UPSTREAM_STEP_COPY;
      batch->steps[batch->n_steps++] = PG_UPSTREAM_STEP_STORE;
      if (pg_upstream_has_capability (self, "UIDPLUS"))
        batch->steps[batch->n_steps++] = PG_UPSTREAM_STEP_EXPUNGE;
      else
        {
          batch->removed = FALSE;
          pg_session_info (self->sid, "upstream lacks MOVE and UIDPLUS: moved messages are "
                                      "copied and left flagged \\Deleted");
        }
    }
  /* The mailbox may go as a quoted string of up to twice its length, or a literal. */
  after = g_strnfill (MAX (strlen (mailbox) * 2 + 2, strlen ("+FLAGS.SILENT (\\Deleted)")), 'x');
  pg_upstream_batch_start (self, task, batch, uids, n_uids, after);
}

void
pg_upstream_copy_async (PgUpstream *self, const guint32 *uids, gsize n_uids, const char *mailbox,
                        GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  g_autofree gchar *after = NULL;
  PgUpstreamBatch *batch;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  batch = pg_upstream_mailbox_batch_new (self, pg_upstream_copy_async, mailbox, cancellable,
                                         callback, user_data, &task);
  if (batch == NULL)
    return;
  batch->steps[batch->n_steps++] = PG_UPSTREAM_STEP_COPY;
  after = g_strnfill (strlen (mailbox) * 2 + 2, 'x');
  pg_upstream_batch_start (self, task, batch, uids, n_uids, after);
}

gboolean
pg_upstream_copy_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

gboolean
pg_upstream_move_finish (PgUpstream *self, GAsyncResult *result, gboolean *out_removed,
                         GError **error)
{
  PgUpstreamBatch *batch;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  batch = g_task_get_task_data (G_TASK (result));
  if (!g_task_propagate_boolean (G_TASK (result), error))
    return FALSE;
  if (out_removed != NULL)
    *out_removed = batch != NULL ? batch->removed : TRUE;
  return TRUE;
}

/* --- METADATA ----------------------------------------------------------------------------- */

static void
pg_upstream_getmetadata_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                                 const GError *error)
{
  g_autoptr (GTask) task = pg_upstream_cmd_take_ok (cmd, tagged, error);

  if (task == NULL)
    return;
  /* "Not set" is an empty GBytes plus a flag in the task data (set before returning: the
   * callback may run at once). */
  g_task_set_task_data (task, GINT_TO_POINTER (cmd->value == NULL), NULL);
  g_task_return_pointer (task,
                         cmd->value != NULL ? g_bytes_ref (cmd->value) : g_bytes_new (NULL, 0),
                         (GDestroyNotify) g_bytes_unref);
}

/* GETMETADATA [(DEPTH 1)] mailbox entry: one command for both forms. */
static void
pg_upstream_getmetadata_submit (PgUpstream *self, GTask *task, const char *mailbox,
                                const char *entry, gboolean tree, PgUpstreamDoneFunc done)
{
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_GETMETADATA, "GETMETADATA", task, done);
  cmd->entry = g_strdup (entry);
  writer = pg_upstream_cmd_writer (self, cmd);
  if (tree)
    {
      cmd->tree
          = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_bytes_unref);
      pg_imap_writer_add_raw (writer, " (DEPTH 1)");
    }
  pg_imap_writer_add_astring (writer, mailbox, strlen (mailbox));
  pg_imap_writer_add_astring (writer, entry, strlen (entry));
  pg_upstream_submit (self, cmd, writer);
}

void
pg_upstream_get_metadata_async (PgUpstream *self, const char *mailbox, const char *entry,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data)
{
  g_autoptr (GTask) task = NULL;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_get_metadata_async, cancellable, callback,
                               user_data);
  pg_upstream_getmetadata_submit (self, task, mailbox, entry, FALSE,
                                  pg_upstream_getmetadata_done_cb);
}

static void
pg_upstream_getmetadata_tree_done_cb (PgUpstream *self, PgUpstreamCmd *cmd,
                                      const PgImapResponse *tagged, const GError *error)
{
  g_autoptr (GTask) task = pg_upstream_cmd_take_ok (cmd, tagged, error);

  if (task == NULL)
    return;
  if (cmd->tree_overflow)
    g_task_return_new_error (task, PG_ERROR, PG_ERROR_LIMIT,
                             "GETMETADATA: more than %u entries under %s", PG_STATE_MAX_ENTRIES,
                             cmd->entry);
  else
    g_task_return_pointer (task, g_hash_table_ref (cmd->tree), (GDestroyNotify) g_hash_table_unref);
}

void
pg_upstream_get_metadata_tree_async (PgUpstream *self, const char *mailbox, const char *entry,
                                     GCancellable *cancellable, GAsyncReadyCallback callback,
                                     gpointer user_data)
{
  g_autoptr (GTask) task = NULL;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_get_metadata_tree_async, cancellable, callback,
                               user_data);
  pg_upstream_getmetadata_submit (self, task, mailbox, entry, TRUE,
                                  pg_upstream_getmetadata_tree_done_cb);
}

GHashTable *
pg_upstream_get_metadata_tree_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

gboolean
pg_upstream_get_metadata_finish (PgUpstream *self, GAsyncResult *result, GBytes **out_value,
                                 GError **error)
{
  g_autoptr (GBytes) value = NULL;
  gboolean unset;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  value = g_task_propagate_pointer (G_TASK (result), error);
  if (value == NULL)
    return FALSE;
  unset = GPOINTER_TO_INT (g_task_get_task_data (G_TASK (result)));
  if (out_value != NULL)
    *out_value = unset ? NULL : g_steal_pointer (&value);
  return TRUE;
}

void
pg_upstream_set_metadata_async (PgUpstream *self, const char *mailbox, const char *entry,
                                GBytes *value, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_set_metadata_async, cancellable, callback,
                               user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_SIMPLE, "SETMETADATA", task, NULL);
  writer = pg_upstream_cmd_writer (self, cmd);
  pg_imap_writer_add_astring (writer, mailbox, strlen (mailbox));
  pg_imap_writer_begin_list (writer);
  pg_imap_writer_add_astring (writer, entry, strlen (entry));
  if (value != NULL)
    {
      gsize size = 0;
      const char *data = g_bytes_get_data (value, &size);
      pg_imap_writer_add_string (writer, data != NULL ? data : "", size);
    }
  else
    pg_imap_writer_add_raw (writer, " NIL");
  pg_imap_writer_end_list (writer);
  pg_upstream_submit (self, cmd, writer);
}

gboolean
pg_upstream_set_metadata_finish (PgUpstream *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- LIST "" mailbox: does a mailbox exist ---------------------------------------------- */

/* "* LIST (flags) delimiter name": only the exact name asked for counts (the name could
 * hold LIST's wildcards), INBOX in any case (RFC 3501 5.1). */
static void
pg_upstream_handle_list (PgUpstream *self, const PgImapResponse *response)
{
  PgUpstreamCmd *cmd = pg_upstream_find_pending (self, PG_UPSTREAM_CMD_LIST);
  const PgImapValue *flags;
  const PgImapValue *name;
  gboolean inbox;

  if (cmd == NULL || response->args->len != 3)
    return;
  flags = g_ptr_array_index (response->args, 0);
  name = g_ptr_array_index (response->args, 2);
  if (flags->type != PG_IMAP_VALUE_LIST || pg_imap_value_get_string (name) == NULL
      || name->len != strlen (cmd->entry))
    return;
  inbox = g_ascii_strcasecmp (cmd->entry, "INBOX") == 0;
  if (inbox ? g_ascii_strncasecmp (name->str, cmd->entry, name->len) != 0
            : memcmp (name->str, cmd->entry, name->len) != 0)
    return;
  for (guint i = 0; i < flags->list->len; i++)
    {
      const char *flag = pg_imap_value_get_string (g_ptr_array_index (flags->list, i));
      if (flag != NULL
          && (g_ascii_strcasecmp (flag, "\\NonExistent") == 0
              || g_ascii_strcasecmp (flag, "\\Noselect") == 0))
        return;
    }
  cmd->listed = TRUE;
}

static void
pg_upstream_list_done_cb (PgUpstream *self, PgUpstreamCmd *cmd, const PgImapResponse *tagged,
                          const GError *error)
{
  g_autoptr (GTask) task = pg_upstream_cmd_take_ok (cmd, tagged, error);

  if (task != NULL)
    g_task_return_int (task, cmd->listed);
}

void
pg_upstream_list_async (PgUpstream *self, const char *mailbox, GCancellable *cancellable,
                        GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgUpstreamCmd *cmd;
  PgImapWriter *writer;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  task = pg_upstream_task_new (self, pg_upstream_list_async, cancellable, callback, user_data);
  if (!pg_upstream_check_state (self, task, TRUE))
    return;
  cmd = pg_upstream_cmd_new (self, PG_UPSTREAM_CMD_LIST, "LIST", task, pg_upstream_list_done_cb);
  cmd->entry = g_strdup (mailbox);
  writer = pg_upstream_cmd_writer (self, cmd);
  pg_imap_writer_add_raw (writer, " \"\"");
  pg_imap_writer_add_astring (writer, mailbox, strlen (mailbox));
  pg_upstream_submit (self, cmd, writer);
}

gboolean
pg_upstream_list_finish (PgUpstream *self, GAsyncResult *result, gboolean *out_exists,
                         GError **error)
{
  gssize listed;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  listed = g_task_propagate_int (G_TASK (result), error);
  if (listed < 0)
    return FALSE;
  if (out_exists != NULL)
    *out_exists = listed > 0;
  return TRUE;
}

/* --- relay hand-off ------------------------------------------------------------------------ */

void
pg_upstream_hold_when_idle (PgUpstream *self)
{
  g_return_if_fail (PG_IS_UPSTREAM (self));
  self->hold_when_idle = TRUE;
}

GStrv
pg_upstream_dup_capabilities (PgUpstream *self)
{
  GStrvBuilder *builder;
  GStrv caps;

  g_return_val_if_fail (PG_IS_UPSTREAM (self), NULL);
  builder = g_strv_builder_new ();
  for (guint i = 0; i < self->caps_list->len; i++)
    g_strv_builder_add (builder, g_ptr_array_index (self->caps_list, i));
  caps = g_strv_builder_end (builder);
  g_strv_builder_unref (builder);
  return caps;
}

/* Whether the connection can be handed over now (see pg_upstream_steal_stream). */
static gboolean
pg_upstream_check_hand_over (PgUpstream *self, GError **error)
{
  if (self->state != PG_UPSTREAM_STATE_AUTHENTICATED && self->state != PG_UPSTREAM_STATE_SELECTED)
    {
      g_set_error_literal (error, PG_ERROR, PG_ERROR_UPSTREAM,
                           "upstream connection is not open and logged in");
      return FALSE;
    }
  /* A pending read or write, or a command in flight, would own bytes we cannot hand
   * over: the caller must steal at a response boundary with nothing outstanding. (The
   * wait of an idle connection owns none: it is simply dropped.) */
  if ((self->reading && !self->waiting) || self->upgrading || self->conn == NULL
      || pg_conn_get_queued (self->conn) > 0 || !g_queue_is_empty (&self->pending)
      || !g_queue_is_empty (&self->unsent))
    {
      g_set_error_literal (error, PG_ERROR, PG_ERROR_UPSTREAM,
                           "upstream connection is busy; cannot hand it over");
      return FALSE;
    }
  return TRUE;
}

PgConn *
pg_upstream_steal_conn (PgUpstream *self, GBytes **out_buffered, GError **error)
{
  g_return_val_if_fail (PG_IS_UPSTREAM (self), NULL);
  g_return_val_if_fail (out_buffered != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!pg_upstream_check_hand_over (self, error))
    return NULL;
  pg_session_debug (self->sid,
                    "upstream: connection handed over (%" G_GSIZE_FORMAT " bytes buffered)",
                    self->rlen - self->rpos);
  *out_buffered = self->rbuf != NULL
                      ? g_bytes_new (self->rbuf + self->rpos, self->rlen - self->rpos)
                      : g_bytes_new (NULL, 0);
  if (self->rbuf != NULL)
    pg_secret_wipe (self->rbuf, self->rbuf_size);
  g_clear_pointer (&self->rbuf, g_free);
  self->rpos = self->rlen = 0;
  /* Inert from here: CLOSED without "closed" (nothing failed; the connection lives on in
   * the caller's hands). */
  self->paused = FALSE;
  pg_upstream_set_state (self, PG_UPSTREAM_STATE_CLOSED);
  self->deadline_us = self->pause_deadline_us = 0;
  return pg_upstream_release_conn (self);
}

GIOStream *
pg_upstream_steal_stream (PgUpstream *self, GBytes **out_buffered, GError **error)
{
  g_autoptr (PgConn) conn = NULL;
  g_autoptr (GBytes) buffered = NULL;
  GIOStream *stream;

  g_return_val_if_fail (PG_IS_UPSTREAM (self), NULL);
  g_return_val_if_fail (out_buffered != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!pg_upstream_check_hand_over (self, error))
    return NULL;
  if (pg_conn_is_compressed (self->conn))
    {
      /* The zlib state cannot go with a bare stream: a relay takes the PgConn. */
      g_set_error_literal (error, PG_ERROR, PG_ERROR_UPSTREAM,
                           "upstream connection is compressed; hand over its connection");
      return NULL;
    }
  conn = pg_upstream_steal_conn (self, &buffered, error);
  stream = pg_conn_steal_stream (conn, error);
  if (stream == NULL)
    return NULL; /* cannot be: nothing was pending (checked above) */
  *out_buffered = g_steal_pointer (&buffered);
  return stream;
}

/* --- object --------------------------------------------------------------------------------- */

void
pg_upstream_close (PgUpstream *self)
{
  g_autoptr (GError) error = NULL;

  g_return_if_fail (PG_IS_UPSTREAM (self));
  if (self->state == PG_UPSTREAM_STATE_CLOSED)
    return;
  error = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED, "upstream connection closed");
  pg_upstream_fail (self, error);
}

PgUpstream *
pg_upstream_new (PgConfig *config, const PgUpstreamConfig *upstream, guint64 sid)
{
  PgUpstream *self;

  g_return_val_if_fail (config != NULL, NULL);
  self = g_object_new (PG_TYPE_UPSTREAM, NULL);
  self->config = pg_config_ref (config);
  self->upstream_config = upstream != NULL ? upstream : &config->upstream;
  self->sid = sid;
  return self;
}

static void
pg_upstream_dispose (GObject *object)
{
  PgUpstream *self = PG_UPSTREAM (object);

  /* Commands hold references to us through their tasks, so by now none is pending. */
  if (self->state != PG_UPSTREAM_STATE_CLOSED && self->state != PG_UPSTREAM_STATE_DISCONNECTED)
    pg_upstream_close (self);
  pg_upstream_drop_connection (self);
  /* The caller's cancellable outlives us: its handler must not call into a freed upstream
   * (found by fuzz-pop3-session: a session cancelled after its upstream was dropped
   * while still connecting). */
  if (self->connect_cancellable != NULL)
    {
      g_cancellable_disconnect (self->connect_cancellable, self->connect_cancelled_id);
      g_clear_object (&self->connect_cancellable);
    }
  if (self->body_cancellable != NULL)
    {
      g_signal_handler_disconnect (self->body_cancellable, self->body_cancelled_id);
      g_clear_object (&self->body_cancellable);
    }
  G_OBJECT_CLASS (pg_upstream_parent_class)->dispose (object);
}

static void
pg_upstream_finalize (GObject *object)
{
  PgUpstream *self = PG_UPSTREAM (object);

  g_queue_clear_full (&self->unsent, (GDestroyNotify) pg_upstream_cmd_free);
  g_queue_clear_full (&self->pending, (GDestroyNotify) pg_upstream_cmd_free);
  g_clear_object (&self->io_cancellable);
  g_clear_pointer (&self->rbuf, g_free);
  g_clear_pointer (&self->parser, pg_imap_parser_free);
  g_clear_pointer (&self->caps, g_hash_table_unref);
  g_clear_pointer (&self->caps_list, g_ptr_array_unref);
  g_clear_pointer (&self->config, pg_config_unref);
  g_clear_pointer (&self->context, g_main_context_unref);
  g_free (self->bye_text);
  G_OBJECT_CLASS (pg_upstream_parent_class)->finalize (object);
}

static void
pg_upstream_class_init (PgUpstreamClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pg_upstream_dispose;
  object_class->finalize = pg_upstream_finalize;

  pg_upstream_signals[SIGNAL_EXISTS]
      = g_signal_new ("exists", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 1, G_TYPE_UINT);
  pg_upstream_signals[SIGNAL_EXPUNGE]
      = g_signal_new ("expunge", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 1, G_TYPE_UINT);
  pg_upstream_signals[SIGNAL_VANISHED]
      = g_signal_new ("vanished", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 2, G_TYPE_STRING, G_TYPE_BOOLEAN);
  pg_upstream_signals[SIGNAL_FETCH]
      = g_signal_new ("fetch", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 2, G_TYPE_UINT, G_TYPE_POINTER);
  pg_upstream_signals[SIGNAL_ALERT]
      = g_signal_new ("alert", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 1, G_TYPE_STRING);
  pg_upstream_signals[SIGNAL_BYE]
      = g_signal_new ("bye", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 1, G_TYPE_STRING);
  pg_upstream_signals[SIGNAL_CLOSED]
      = g_signal_new ("closed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 1, G_TYPE_POINTER);
}

static void
pg_upstream_init (PgUpstream *self)
{
  self->context = g_main_context_ref_thread_default ();
  self->io_cancellable = g_cancellable_new ();
  self->parser = pg_imap_parser_new ();
  self->caps = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  self->caps_list = g_ptr_array_new_with_free_func (g_free);
  g_queue_init (&self->unsent);
  g_queue_init (&self->pending);
}
