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

#include <string.h>

/* TOP fetches the body text in partial fetches of this size until it has its lines. */
#define PG_POP3_TOP_PARTIAL (64 * 1024)
/* Socket reads go into this much stack-free scratch space per session. */
#define PG_POP3_READ_CHUNK 4096

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

typedef enum
{
  PG_POP3_SASL_NONE,
  PG_POP3_SASL_PLAIN,      /* waiting for the PLAIN response */
  PG_POP3_SASL_LOGIN_USER, /* AUTH LOGIN: waiting for the user name */
  PG_POP3_SASL_LOGIN_PASS, /* AUTH LOGIN: waiting for the password */
} PgPop3Sasl;

enum
{
  PG_POP3_MSG_DELETED = 1 << 0,
  PG_POP3_MSG_RETRIEVED = 1 << 1,
};

struct _PgPop3Session
{
  GObject parent_instance;

  PgConn *conn;            /* owned */
  PgConfig *config;        /* unowned: the conn's */
  guint64 id;
  PgPop3State state;
  gint64 started_us;
  gchar *end_reason;       /* owned: why the session ended, for the end line */

  PgLineReader *reader;    /* owned */
  guint8 *read_buffer;     /* owned, PG_POP3_READ_CHUNK bytes */
  gboolean reading;        /* a socket read is pending */
  gboolean busy;           /* a command is waiting for the upstream or a timer */
  gboolean starting_tls;   /* STLS: no socket reads until the handshake is done */
  gboolean tls_flushed;    /* STLS: the +OK is on the wire */
  gboolean output_full;    /* replies wait for the client to read: no commands, no reads */
  GCancellable *read_cancellable; /* owned: the pending socket read */
  GString *reply;          /* replies not yet handed to the connection */
  GCancellable *cancellable; /* owned: cancelled when the connection closes */

  guint long_lines;        /* consecutive over-long lines */
  guint bad_commands;
  guint auth_failures;
  GSource *delay_source;   /* owned: the failed-auth delay */

  PgPop3Sasl sasl;
  gchar *user;             /* owned: the login name as given (may carry a client tag) */
  gchar *upstream_user;    /* owned */
  gchar *client_tag;       /* owned */
  gchar *lock_key;         /* owned when this session holds the maildrop lock */

  PgPop3Maildrop *maildrop; /* owned */
  GArray *messages;        /* unowned: the maildrop's snapshot of PgPop3Message */
  guint8 *flags;           /* owned: PG_POP3_MSG_* per message */
  guint32 uidvalidity;

  /* RETR/TOP in progress */
  PgDotStuffer *stuffer;   /* owned */
  GByteArray *stuffed;     /* owned: scratch for stuffed output */
  guint current;           /* index of the message being sent */
  gboolean sent_ok;        /* the "+OK" line of the current RETR/TOP is out */
  gboolean is_top;
  gboolean top_in_text;    /* TOP: the header is out, partials of the text follow */
  guint64 top_offset;      /* TOP: offset of the BODY[TEXT] partial being fetched */
};

G_DEFINE_TYPE (PgPop3Session, pg_pop3_session, G_TYPE_OBJECT)

/* Maildrop locks of this process: "user\nmailbox\ntag" → PgPop3Session* (unowned). */
static GHashTable *pg_pop3_locks = NULL;
static guint pg_pop3_n_live = 0;

static void pg_pop3_session_process (PgPop3Session *self);
static void pg_pop3_session_end (PgPop3Session *self, const char *reason);

guint
pg_pop3_session_get_n_live (void)
{
  return pg_pop3_n_live;
}

static void
pg_pop3_session_set_state (PgPop3Session *self, PgPop3State state)
{
  if (self->state == state)
    return;
  pg_session_debug (self->id, "state %s -> %s", pg_pop3_state_names[self->state],
                    pg_pop3_state_names[state]);
  self->state = state;
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
  if (self->delay_source != NULL)
    {
      g_source_destroy (self->delay_source);
      g_clear_pointer (&self->delay_source, g_source_unref);
    }
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
  g_clear_pointer (&self->stuffer, pg_dot_stuffer_free);
  g_clear_pointer (&self->stuffed, g_byte_array_unref);
  g_clear_object (&self->cancellable);
  g_clear_object (&self->read_cancellable);
  g_string_free (self->reply, TRUE);
  g_free (self->read_buffer);
  g_free (self->flags);
  g_free (self->user);
  g_free (self->upstream_user);
  g_free (self->client_tag);
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

static void
pg_pop3_reply (PgPop3Session *self, const char *format, ...) G_GNUC_PRINTF (2, 3);

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
  g_autofree gchar *user = self->user != NULL ? pg_log_escape (self->user, strlen (self->user), 64)
                                              : g_strdup ("-");

  pg_session_message (self->id,
                      "pop3 session ended: user=%s client=%s state=%s duration=%" G_GINT64_FORMAT
                      "ms in=%" G_GUINT64_FORMAT " out=%" G_GUINT64_FORMAT " reason=%s",
                      user, pg_conn_get_peer (self->conn), pg_pop3_state_names[self->state], ms,
                      pg_conn_get_bytes_in (self->conn), pg_conn_get_bytes_out (self->conn),
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
  self->bad_commands++;
  if (self->bad_commands >= self->config->limits.max_bad_commands)
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
          pg_pop3_reply (self, "SASL PLAIN LOGIN");
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
pg_pop3_session_auth_failed_delay_done (PgPop3Session *self)
{
  self->busy = FALSE;
  pg_pop3_reply (self, "-ERR [AUTH] Authentication failed.");
  if (self->auth_failures >= self->config->limits.max_auth_failures)
    {
      pg_pop3_reply (self, "-ERR [AUTH] Too many authentication failures, closing");
      pg_pop3_session_end (self, "too many authentication failures");
      return;
    }
  pg_pop3_session_process (self);
}

static gboolean
pg_pop3_session_delay_cb (gpointer user_data)
{
  PgPop3Session *self = user_data;

  g_clear_pointer (&self->delay_source, g_source_unref);
  pg_pop3_session_auth_failed_delay_done (self);
  return G_SOURCE_REMOVE;
}

/* One uniform answer for an unknown user and a wrong password, after a delay. */
static void
pg_pop3_session_auth_failed (PgPop3Session *self)
{
  self->auth_failures++;
  self->busy = TRUE;
  g_clear_pointer (&self->user, g_free);
  g_clear_pointer (&self->upstream_user, g_free);
  g_clear_pointer (&self->client_tag, g_free);
  if (self->config->limits.auth_failure_delay_ms == 0)
    {
      pg_pop3_session_auth_failed_delay_done (self);
      return;
    }
  self->delay_source = g_timeout_source_new (self->config->limits.auth_failure_delay_ms);
  g_source_set_callback (self->delay_source, pg_pop3_session_delay_cb, self, NULL);
  g_source_attach (self->delay_source, g_main_context_get_thread_default ());
}

static void
pg_pop3_session_open_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *user = NULL;
  guint64 total = 0;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  user = pg_log_escape (self->user, strlen (self->user), 64);
  if (!pg_pop3_maildrop_open_finish (self->maildrop, result, &error))
    {
      g_clear_pointer (&self->maildrop, pg_pop3_maildrop_free);
      if (g_error_matches (error, PG_ERROR, PG_ERROR_AUTH_FAILED))
        {
          pg_session_message (self->id, "login failed: user=%s client=%s", user,
                              pg_conn_get_peer (self->conn));
          pg_pop3_session_auth_failed (self);
          return;
        }
      pg_session_warning (self->id, "login for user=%s: upstream unavailable: %s", user,
                          error->message);
      self->busy = FALSE;
      g_clear_pointer (&self->user, g_free);
      pg_pop3_reply (self, "-ERR [SYS/TEMP] The mail server is not available, try again later.");
      pg_pop3_session_process (self);
      return;
    }

  /* RFC 1939 §8: exclusive access to the maildrop, per (user, mailbox, client). */
  {
    g_autofree gchar *key = g_strdup_printf ("%s\n%s\n%s", self->upstream_user,
                                             self->config->upstream.mailbox, self->client_tag);
    if (pg_pop3_locks == NULL)
      pg_pop3_locks = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
    if (g_hash_table_contains (pg_pop3_locks, key))
      {
        pg_session_message (self->id, "maildrop of user=%s is in use by another session", user);
        pg_pop3_maildrop_close (self->maildrop);
        g_clear_pointer (&self->maildrop, pg_pop3_maildrop_free);
        g_clear_pointer (&self->user, g_free);
        self->busy = FALSE;
        pg_pop3_reply (self, "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
        pg_pop3_session_process (self);
        return;
      }
    g_hash_table_insert (pg_pop3_locks, g_strdup (key), self);
    self->lock_key = g_steal_pointer (&key);
  }

  self->messages = pg_pop3_maildrop_get_messages (self->maildrop);
  self->uidvalidity = pg_pop3_maildrop_get_uidvalidity (self->maildrop);
  self->flags = g_malloc0 (MAX (self->messages->len, 1));
  for (guint i = 0; i < self->messages->len; i++)
    total += g_array_index (self->messages, PgPop3Message, i).size;
  pg_pop3_session_set_state (self, PG_POP3_STATE_TRANSACTION);
  pg_conn_set_idle_timeout (self->conn, self->config->pop3.autologout_ms);
  pg_session_message (self->id, "login: user=%s client=%s messages=%u octets=%" G_GUINT64_FORMAT,
                      user, pg_conn_get_peer (self->conn), self->messages->len, total);
  self->busy = FALSE;
  pg_pop3_reply (self, "+OK Logged in.");
  pg_pop3_session_process (self);
}

/* Split "user#tag" into the upstream user and the client tag ("default" without one). */
static void
pg_pop3_session_set_user (PgPop3Session *self, const char *login)
{
  const char *sep = self->config->pop3.client_tag_separator;
  const char *at = NULL;

  g_free (self->user);
  g_free (self->upstream_user);
  g_free (self->client_tag);
  self->user = g_strdup (login);
  if (sep != NULL && *sep != '\0')
    at = g_strrstr (login, sep);
  if (at != NULL && at != login && at[strlen (sep)] != '\0')
    {
      self->upstream_user = g_strndup (login, (gsize) (at - login));
      self->client_tag = g_strdup (at + strlen (sep));
    }
  else
    {
      self->upstream_user = g_strdup (login);
      self->client_tag = g_strdup ("default");
    }
}

static void
pg_pop3_session_login (PgPop3Session *self, const char *password)
{
  self->busy = TRUE;
  self->maildrop = pg_pop3_maildrop_new (self->config, self->id, pg_conn_get_peer_ip (self->conn));
  pg_pop3_maildrop_open_async (self->maildrop, self->upstream_user, password, self->cancellable,
                               pg_pop3_session_open_cb, g_object_ref (self));
}

/* Decode strict base64 into a NUL-terminated buffer (wiped and freed by the caller). */
static gchar *
pg_pop3_sasl_decode (const char *text, gsize len, gsize *out_len)
{
  gchar *out;
  gint state = 0;
  guint save = 0;

  if (len % 4 != 0)
    return NULL;
  for (gsize i = 0; i < len; i++)
    {
      char c = text[i];
      if (!(g_ascii_isalnum (c) || c == '+' || c == '/' || (c == '=' && i + 2 >= len)))
        return NULL;
    }
  out = g_malloc0 (len / 4 * 3 + 4);
  *out_len = g_base64_decode_step (text, len, (guchar *) out, &state, &save);
  out[*out_len] = '\0';
  return out;
}

/* RFC 4616: [authzid] NUL authcid NUL passwd; an authzid must be empty or the authcid. */
static void
pg_pop3_session_sasl_plain (PgPop3Session *self, const char *response, gsize len)
{
  gsize n = 0;
  g_autoptr (PgSecret) decoded = NULL;
  const char *authzid, *authcid, *passwd;
  gsize zlen, clen;

  self->sasl = PG_POP3_SASL_NONE;
  decoded = pg_pop3_sasl_decode (response, len, &n);
  if (decoded == NULL)
    {
      pg_pop3_reply (self, "-ERR [AUTH] Invalid base64 data.");
      pg_pop3_session_bad_command (self);
      return;
    }
  authzid = decoded;
  zlen = strnlen (authzid, n);
  if (zlen >= n)
    goto malformed;
  authcid = authzid + zlen + 1;
  clen = strnlen (authcid, n - zlen - 1);
  if (zlen + 1 + clen >= n)
    goto malformed;
  passwd = authcid + clen + 1;
  if (clen == 0 || strlen (passwd) != n - zlen - clen - 2)
    goto malformed;
  if (zlen > 0 && strcmp (authzid, authcid) != 0)
    {
      /* Acting as another user is not something a gateway can grant. */
      pg_pop3_session_auth_failed (self);
      return;
    }
  pg_pop3_session_set_user (self, authcid);
  pg_pop3_session_login (self, passwd);
  return;

malformed:
  pg_pop3_reply (self, "-ERR [AUTH] Malformed PLAIN response.");
  pg_pop3_session_bad_command (self);
}

static void
pg_pop3_session_sasl_response (PgPop3Session *self, const char *line, gsize len)
{
  if (len == 1 && line[0] == '*')
    {
      self->sasl = PG_POP3_SASL_NONE;
      g_clear_pointer (&self->user, g_free);
      pg_pop3_reply (self, "-ERR Authentication cancelled.");
      return;
    }
  if (len > PG_POP3_MAX_SASL_LINE)
    {
      self->sasl = PG_POP3_SASL_NONE;
      pg_pop3_reply (self, "-ERR [AUTH] SASL response too long.");
      pg_pop3_session_bad_command (self);
      return;
    }
  switch (self->sasl)
    {
    case PG_POP3_SASL_PLAIN:
      pg_pop3_session_sasl_plain (self, line, len);
      return;
    case PG_POP3_SASL_LOGIN_USER:
    case PG_POP3_SASL_LOGIN_PASS:
      {
        gsize n = 0;
        g_autoptr (PgSecret) decoded = pg_pop3_sasl_decode (line, len, &n);

        if (decoded == NULL || strlen (decoded) != n
            || (self->sasl == PG_POP3_SASL_LOGIN_USER && n == 0))
          {
            self->sasl = PG_POP3_SASL_NONE;
            pg_pop3_reply (self, "-ERR [AUTH] Invalid base64 data.");
            pg_pop3_session_bad_command (self);
            return;
          }
        if (self->sasl == PG_POP3_SASL_LOGIN_USER)
          {
            pg_pop3_session_set_user (self, decoded);
            self->sasl = PG_POP3_SASL_LOGIN_PASS;
            pg_pop3_reply (self, "+ UGFzc3dvcmQ6"); /* "Password:" */
            return;
          }
        self->sasl = PG_POP3_SASL_NONE;
        pg_pop3_session_login (self, decoded);
        return;
      }
    case PG_POP3_SASL_NONE:
      break;
    }
  g_assert_not_reached ();
}

static void
pg_pop3_session_auth (PgPop3Session *self, PgPop3Command *cmd)
{
  if (cmd->arg1 == NULL)
    {
      /* RFC 5034 §4 allows an AUTH without arguments to list the mechanisms. */
      pg_pop3_reply (self, "+OK");
      if (pg_pop3_session_plaintext_allowed (self))
        {
          pg_pop3_reply (self, "PLAIN");
          pg_pop3_reply (self, "LOGIN");
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
  if (g_ascii_strcasecmp (cmd->arg1, "PLAIN") == 0)
    {
      if (cmd->arg2 == NULL)
        {
          self->sasl = PG_POP3_SASL_PLAIN;
          pg_pop3_reply (self, "+ ");
          return;
        }
      self->sasl = PG_POP3_SASL_PLAIN;
      /* "=" is an empty initial response (RFC 5034 §4). */
      if (strcmp (cmd->arg2, "=") == 0)
        pg_pop3_session_sasl_response (self, "", 0);
      else
        pg_pop3_session_sasl_response (self, cmd->arg2, strlen (cmd->arg2));
      return;
    }
  if (g_ascii_strcasecmp (cmd->arg1, "LOGIN") == 0)
    {
      self->sasl = PG_POP3_SASL_LOGIN_USER;
      if (cmd->arg2 == NULL)
        {
          pg_pop3_reply (self, "+ VXNlcm5hbWU6"); /* "Username:" */
          return;
        }
      pg_pop3_session_sasl_response (self, cmd->arg2, strlen (cmd->arg2));
      return;
    }
  pg_pop3_reply (self, "-ERR [AUTH] Unsupported authentication mechanism.");
  pg_pop3_session_bad_command (self);
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
  if (self->user != NULL)
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
      pg_pop3_session_set_user (self, cmd->arg1);
      pg_pop3_reply (self, "+OK");
      return;
    case PG_POP3_COMMAND_PASS:
      if (self->user == NULL)
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

/* The message for a POP3 message number, or NULL after replying -ERR. */
static const PgPop3Message *
pg_pop3_session_message (PgPop3Session *self, guint32 number, guint *out_index)
{
  if (number == 0 || number > self->messages->len)
    {
      pg_pop3_reply (self, "-ERR There is no message %u.", number);
      return NULL;
    }
  if (self->flags[number - 1] & PG_POP3_MSG_DELETED)
    {
      pg_pop3_reply (self, "-ERR Message %u is deleted.", number);
      return NULL;
    }
  *out_index = number - 1;
  return &g_array_index (self->messages, PgPop3Message, number - 1);
}

static void
pg_pop3_session_stat (PgPop3Session *self)
{
  guint count = 0;
  guint64 octets = 0;

  for (guint i = 0; i < self->messages->len; i++)
    if (!(self->flags[i] & PG_POP3_MSG_DELETED))
      {
        count++;
        octets += g_array_index (self->messages, PgPop3Message, i).size;
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
      const PgPop3Message *msg = pg_pop3_session_message (self, cmd->message, &index);
      if (msg == NULL)
        return;
      if (uidl)
        pg_pop3_reply (self, "+OK %u %08x%08x", cmd->message, msg->uid, self->uidvalidity);
      else
        pg_pop3_reply (self, "+OK %u %" G_GUINT64_FORMAT, cmd->message, msg->size);
      return;
    }
  pg_pop3_reply (self, uidl ? "+OK Unique-ID listing follows" : "+OK Scan listing follows");
  for (guint i = 0; i < self->messages->len; i++)
    {
      const PgPop3Message *msg = &g_array_index (self->messages, PgPop3Message, i);
      if (self->flags[i] & PG_POP3_MSG_DELETED)
        continue;
      if (uidl)
        pg_pop3_reply (self, "%u %08x%08x", i + 1, msg->uid, self->uidvalidity);
      else
        pg_pop3_reply (self, "%u %" G_GUINT64_FORMAT, i + 1, msg->size);
    }
  pg_pop3_reply (self, ".");
}

static void pg_pop3_session_fetch_cb (GObject *source, GAsyncResult *result, gpointer user_data);
static void pg_pop3_session_chunk_cb (const guint8 *data, gsize len, gpointer user_data);

static void
pg_pop3_session_fetch_text (PgPop3Session *self)
{
  const PgPop3Message *msg = &g_array_index (self->messages, PgPop3Message, self->current);

  pg_pop3_maildrop_fetch_async (self->maildrop, msg->uid, PG_POP3_SECTION_TEXT,
                                self->top_offset, PG_POP3_TOP_PARTIAL,
                                pg_pop3_session_chunk_cb, self, self->cancellable,
                                pg_pop3_session_fetch_cb, g_object_ref (self));
}

static void
pg_pop3_session_drained_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;

  if (!pg_conn_wait_drained_finish (self->conn, result, NULL))
    return; /* closed: the conn's "closed" handler cleans up */
  if (self->maildrop != NULL)
    pg_pop3_maildrop_resume (self->maildrop);
}

/* A chunk of the message arrives from the upstream: stuff it and queue it for the client;
 * pause the upstream while the client is behind (back-pressure). */
static void
pg_pop3_session_chunk_cb (const guint8 *data, gsize len, gpointer user_data)
{
  PgPop3Session *self = user_data;
  const PgPop3Message *msg = &g_array_index (self->messages, PgPop3Message, self->current);

  if (pg_conn_is_closed (self->conn))
    return;
  if (!self->sent_ok)
    {
      if (self->is_top)
        pg_pop3_reply (self, "+OK");
      else
        pg_pop3_reply (self, "+OK %" G_GUINT64_FORMAT " octets", msg->size);
      pg_pop3_session_flush (self);
      self->sent_ok = TRUE;
    }
  if (pg_dot_stuffer_is_done (self->stuffer))
    return;
  g_byte_array_set_size (self->stuffed, 0);
  pg_dot_stuffer_feed (self->stuffer, data, len, self->stuffed);
  if (self->stuffed->len > 0)
    pg_conn_write (self->conn, self->stuffed->data, self->stuffed->len);
  if (pg_conn_get_queued (self->conn) > PG_CLIENT_OUTPUT_HIGH_WATER)
    {
      pg_pop3_maildrop_pause (self->maildrop);
      pg_conn_wait_drained_async (self->conn, PG_CLIENT_OUTPUT_HIGH_WATER / 2, self->cancellable,
                                  pg_pop3_session_drained_cb, g_object_ref (self));
    }
}

static void
pg_pop3_session_send_finished (PgPop3Session *self)
{
  if (!self->sent_ok)
    {
      if (self->is_top)
        pg_pop3_reply (self, "+OK");
      else
        pg_pop3_reply (self, "+OK 0 octets");
      pg_pop3_session_flush (self);
      self->sent_ok = TRUE;
    }
  g_byte_array_set_size (self->stuffed, 0);
  pg_dot_stuffer_finish (self->stuffer, self->stuffed);
  pg_conn_write (self->conn, self->stuffed->data, self->stuffed->len);
  if (!self->is_top)
    self->flags[self->current] |= PG_POP3_MSG_RETRIEVED;
  g_clear_pointer (&self->stuffer, pg_dot_stuffer_free);
  self->busy = FALSE;
  pg_pop3_session_process (self);
}

static void
pg_pop3_session_fetch_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;
  guint64 total = 0;

  if (self->state == PG_POP3_STATE_CLOSED || pg_conn_is_closed (self->conn))
    return;
  if (!pg_pop3_maildrop_fetch_finish (self->maildrop, result, &total, &error))
    {
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND) && !self->sent_ok)
        {
          /* Someone else expunged it meanwhile: this message fails, the session goes on. */
          pg_session_info (self->id, "message %u (UID %u) vanished upstream", self->current + 1,
                           g_array_index (self->messages, PgPop3Message, self->current).uid);
          g_clear_pointer (&self->stuffer, pg_dot_stuffer_free);
          pg_pop3_reply (self, "-ERR Message %u no longer exists on the server.",
                         self->current + 1);
          self->busy = FALSE;
          pg_pop3_session_process (self);
          return;
        }
      pg_session_warning (self->id, "fetching message %u failed: %s", self->current + 1,
                          error->message);
      if (self->sent_ok)
        {
          /* Part of the message is out: the only honest end is to drop the connection so
           * the client sees no terminating "." and keeps its own state. */
          self->end_reason = g_strdup ("upstream failed during a message");
          pg_conn_abort (self->conn);
          return;
        }
      pg_pop3_reply (self, "-ERR [SYS/TEMP] The mail server failed, try again later.");
      pg_pop3_session_end (self, "upstream failed");
      return;
    }
  if (self->is_top && !pg_dot_stuffer_is_done (self->stuffer))
    {
      /* TOP: the header came, or a partial of the text. Fetch the next partial unless the
       * text has ended (a partial shorter than asked for is the last one). */
      if (!self->top_in_text)
        {
          self->top_in_text = TRUE;
          self->top_offset = 0;
          pg_pop3_session_fetch_text (self);
          return;
        }
      if (total == PG_POP3_TOP_PARTIAL)
        {
          self->top_offset += PG_POP3_TOP_PARTIAL;
          pg_pop3_session_fetch_text (self);
          return;
        }
    }
  pg_pop3_session_send_finished (self);
}

static void
pg_pop3_session_retr (PgPop3Session *self, PgPop3Command *cmd, gboolean top)
{
  guint index;
  const PgPop3Message *msg = pg_pop3_session_message (self, cmd->message, &index);

  if (msg == NULL)
    return;
  self->current = index;
  self->sent_ok = FALSE;
  self->is_top = top;
  self->busy = TRUE;
  g_clear_pointer (&self->stuffer, pg_dot_stuffer_free);
  self->stuffer = top ? pg_dot_stuffer_new_top (cmd->lines) : pg_dot_stuffer_new ();
  if (self->stuffed == NULL)
    self->stuffed = g_byte_array_sized_new (PG_UPSTREAM_BODY_CHUNK * 2);
  pg_pop3_session_flush (self);
  self->top_in_text = FALSE;
  self->top_offset = 0;
  pg_pop3_maildrop_fetch_async (self->maildrop, msg->uid,
                                top ? PG_POP3_SECTION_HEADER : PG_POP3_SECTION_ALL, 0, 0,
                                pg_pop3_session_chunk_cb, self, self->cancellable,
                                pg_pop3_session_fetch_cb, g_object_ref (self));
}

static void
pg_pop3_session_update_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (PgPop3Session) self = user_data;
  g_autoptr (GError) error = NULL;

  if (pg_conn_is_closed (self->conn))
    return;
  if (!pg_pop3_maildrop_update_finish (self->maildrop, result, &error))
    {
      pg_session_warning (self->id, "QUIT: update not fully applied: %s", error->message);
      pg_pop3_reply (self, "-ERR [SYS/TEMP] %s", error->message);
      pg_pop3_session_end (self, "QUIT, update failed");
      return;
    }
  pg_pop3_reply (self, "+OK popgate signing off.");
  pg_pop3_session_end (self, "QUIT");
}

/* QUIT in TRANSACTION: the UPDATE state (RFC 1939 §6). */
static void
pg_pop3_session_quit (PgPop3Session *self)
{
  g_autoptr (GArray) deleted = g_array_new (FALSE, FALSE, sizeof (guint32));
  g_autoptr (GArray) seen = g_array_new (FALSE, FALSE, sizeof (guint32));

  for (guint i = 0; i < self->messages->len; i++)
    {
      guint32 uid = g_array_index (self->messages, PgPop3Message, i).uid;
      if (self->flags[i] & PG_POP3_MSG_DELETED)
        g_array_append_val (deleted, uid);
      else if ((self->flags[i] & PG_POP3_MSG_RETRIEVED) && self->config->pop3.mark_seen)
        g_array_append_val (seen, uid);
    }
  pg_pop3_session_set_state (self, PG_POP3_STATE_UPDATE);
  pg_session_info (self->id, "QUIT: %u deleted (%s), %u to mark seen", deleted->len,
                   pg_delete_policy_to_string (self->config->pop3.delete_policy), seen->len);
  self->busy = TRUE;
  pg_pop3_session_flush (self);
  pg_pop3_maildrop_update_async (self->maildrop, deleted, seen, self->cancellable,
                                 pg_pop3_session_update_cb, g_object_ref (self));
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
      if (pg_pop3_session_message (self, cmd->message, &index) == NULL)
        return;
      self->flags[index] |= PG_POP3_MSG_DELETED;
      pg_pop3_reply (self, "+OK Message %u marked for deletion.", cmd->message);
      return;
    case PG_POP3_COMMAND_RSET:
      for (guint i = 0; i < self->messages->len; i++)
        self->flags[i] &= (guint8) ~PG_POP3_MSG_DELETED;
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

  if (pg_log_get_level () >= PG_LOG_LEVEL_DEBUG)
    {
      g_autofree gchar *shown = pg_log_redact_line (line, len, self->sasl != PG_POP3_SASL_NONE);
      pg_session_debug (self->id, "C: %s", shown);
    }
  if (self->sasl != PG_POP3_SASL_NONE)
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
  if (n <= 0)
    {
      /* The client went away before QUIT: nothing changes upstream. */
      if (self->end_reason == NULL)
        self->end_reason = g_strdup (n == 0 ? "client disconnected" : "read error");
      pg_conn_abort (self->conn);
      return;
    }
  pg_line_reader_feed (self->reader, self->read_buffer, (gsize) n);
  pg_pop3_session_process (self);
}

static void
pg_pop3_session_read (PgPop3Session *self)
{
  gsize space;

  if (self->reading || self->starting_tls || pg_conn_is_closed (self->conn))
    return;
  space = pg_line_reader_get_space (self->reader);
  if (space == 0)
    return; /* pipelined input is full: read again once commands were handled */
  self->reading = TRUE;
  g_clear_object (&self->read_cancellable);
  self->read_cancellable = g_cancellable_new ();
  g_cancellable_connect (self->cancellable, G_CALLBACK (g_cancellable_cancel),
                         g_object_ref (self->read_cancellable), g_object_unref);
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
  self->reader = pg_line_reader_new (PG_POP3_INPUT_BUFFER);
  self->read_buffer = g_malloc (PG_POP3_READ_CHUNK);
  /* The session holds itself until the connection's "closed". */
  g_signal_connect (conn, "closed", G_CALLBACK (pg_pop3_session_conn_closed_cb), self);
  g_signal_connect (conn, "timeout", G_CALLBACK (pg_pop3_session_timeout_cb), self);
  g_signal_connect (conn, "shutdown", G_CALLBACK (pg_pop3_session_shutdown_cb), self);
  pg_session_info (self->id, "pop3 session from %s%s", pg_conn_get_peer (conn),
                   pg_conn_is_tls (conn) ? " (TLS)" : "");
  pg_pop3_reply (self, "+OK popgate ready.");
  pg_pop3_session_process (self);
}
