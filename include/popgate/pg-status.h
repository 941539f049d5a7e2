/* popgate — the live session registry behind the status page (src/status).
 *
 * The front ends register each session with a fill function that describes it on demand
 * (pg_status_session_update); nothing is copied on the hot path. The status server
 * installs one observer and hears about sessions starting, changing state and ending, and
 * about every audit-trace line (pg-trace.c hands them over after the same redaction as
 * the log). Without an observer the registry still knows the live sessions (a hash table
 * entry each), so a status page enabled by a reload sees them too.
 *
 * Counters (bytes, messages retrieved) change without an event: the status server asks
 * the fill functions again when it renders and, while someone watches, once a tick.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

#include "popgate/pg-metrics.h"

G_BEGIN_DECLS

/* One session as the status page shows it. Strings belong to the session and are valid
 * only until the callback that received them returns. */
typedef struct
{
  guint64 id;
  PgMetricsFrontend frontend;
  const char *client;  /* "1.2.3.4:5678" / "[::1]:5678" */
  gboolean tls;        /* the client connection is TLS (implicit or STARTTLS/STLS) */
  const char *user;    /* the login, client tag removed (upstream user); NULL before login */
  const char *tag;     /* the POP3 client tag ("laptop" of alice#laptop), or NULL */
  const char *state;   /* "AUTHORIZATION", "TRANSACTION", "UPDATE" / "PREAUTH", "RELAY", ... */
  const char *mailbox; /* the mailbox the session works on, or NULL */
  gboolean idle;       /* IMAP IDLE is running */
  guint retrieved;     /* POP3: messages RETR'd this session */
  guint deleted;       /* POP3: messages marked with DELE (not yet applied before QUIT) */
  guint64 bytes_in;    /* from the client */
  guint64 bytes_out;   /* to the client */
  gint64 started_us;   /* g_get_real_time() when the session was registered */
} PgStatusInfo;

/* Fill `info` (id, started_us are set already) from the session `owner`. */
typedef void (*PgStatusFillFunc) (gpointer owner, PgStatusInfo *info);

/* Register a session or tell that it changed (`fill` non-NULL), or that it ended
 * (`fill` NULL: the observer gets the last description first, so call this while the
 * owner can still be asked). */
void pg_status_session_update (guint64 sid, PgStatusFillFunc fill, gpointer owner);

/* Describe session `sid` into `out_info` now. FALSE when there is no such session. */
gboolean pg_status_session_get (guint64 sid, PgStatusInfo *out_info);

typedef void (*PgStatusInfoFunc) (const PgStatusInfo *info, gpointer user_data);
/* Every live session, oldest first. `func` must not end sessions. */
void pg_status_foreach (PgStatusInfoFunc func, gpointer user_data);
guint pg_status_get_n_sessions (void);

typedef enum
{
  PG_STATUS_EVENT_START,
  PG_STATUS_EVENT_CHANGE,
  PG_STATUS_EVENT_END,
  PG_STATUS_EVENT_TRACE,
} PgStatusEvent;

/* `info` for START/CHANGE/END; `line` for TRACE (already redacted and escaped). */
typedef void (*PgStatusObserver) (PgStatusEvent event, guint64 sid, const PgStatusInfo *info,
                                  const char *line, gpointer user_data);

/* One observer at a time (the status server); NULL removes it. */
void pg_status_set_observer (PgStatusObserver observer, gpointer user_data);
/* An observer is installed: the audit trace must be produced even when it is not logged. */
gboolean pg_status_is_observed (void);
/* A trace line of session `sid` (pg-trace.c calls this). */
void pg_status_trace (guint64 sid, const char *line);

/* Forget every session (at exit, so leak checkers stay quiet). */
void pg_status_shutdown (void);

G_END_DECLS
