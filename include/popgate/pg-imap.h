/* popgate — the IMAP front end: an authenticating bridge. Before login popgate answers
 * the client itself (CAPABILITY, NOOP, LOGOUT, STARTTLS, ID, LOGIN, AUTHENTICATE PLAIN);
 * LOGIN/AUTHENTICATE log in upstream with the client's (or mapped) credentials, and from
 * then on the session is a byte relay with back-pressure that observes, without copying,
 * what goes through: the per-session state below.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "popgate/pg-net.h"

G_BEGIN_DECLS

#define PG_TYPE_IMAP_SESSION (pg_imap_session_get_type ())
G_DECLARE_FINAL_TYPE (PgImapSession, pg_imap_session, PG, IMAP_SESSION, GObject)

typedef enum
{
  PG_IMAP_STATE_PREAUTH,        /* answered by popgate */
  PG_IMAP_STATE_AUTHENTICATING, /* logging in upstream */
  PG_IMAP_STATE_RELAY,          /* logged in: bytes relayed both ways */
  PG_IMAP_STATE_CLOSED,
  PG_IMAP_STATE_COUNT,
} PgImapState;

const char *pg_imap_state_to_string (PgImapState state);

/* What popgate tracks of one live session. Kept up to date by the session itself with
 * plain stores (counters per relayed chunk; mailbox and IDLE from command starts only), so
 * reading it costs nothing in the relay path. Strings are owned by the session and valid
 * until the session changes them: copy what you keep beyond the callback. */
typedef struct
{
  guint64 id;         /* the session id (the connection's) */
  const char *client; /* "1.2.3.4:5678" */
  gboolean tls;       /* the client connection is TLS (implicit or STARTTLS) */
  PgImapState state;
  const char *user;          /* login name as the client sent it; NULL before login */
  const char *upstream_user; /* the name used upstream (differs when mapped); or NULL */
  const char *mailbox;       /* selected mailbox (as the client named it); NULL if none */
  gboolean read_only;        /* selected with EXAMINE (or the server said READ-ONLY) */
  gboolean idling;           /* an IDLE is running */
  guint64 commands;          /* client commands, before and after login */
  guint64 bytes_from_client; /* octets read from the client */
  guint64 bytes_to_client;   /* octets queued to the client */
  gint64 started_us;         /* g_get_real_time() at accept */
  gint64 last_activity_us;   /* g_get_real_time() of the last client input */
} PgImapSessionInfo;

/* A PgSessionStartFunc for PG_FRONTEND_IMAP: the session keeps itself alive until the
 * connection closes. */
void pg_imap_session_start (PgConn *conn, gpointer user_data);

/* The process-wide registry of live IMAP sessions (oldest first). */
typedef void (*PgImapSessionInfoFunc) (const PgImapSessionInfo *info, gpointer user_data);
void pg_imap_session_foreach (PgImapSessionInfoFunc func, gpointer user_data);
guint pg_imap_session_get_n_live (void);
const PgImapSessionInfo *pg_imap_session_get_info (PgImapSession *self);

G_END_DECLS
