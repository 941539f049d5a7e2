/* popgate benchmark — the load generator: many POP3 or IMAP sessions on one GMainLoop.
 *
 * Every session is a small state machine over one GSocketConnection with async reads into
 * a fixed buffer and one pending write at a time: 1,000 sessions cost 1,000 sockets and a
 * few KiB each, no threads. POP3: greeting, CAPA, USER, PASS, STAT, UIDL, RETR 1..n (one
 * after the other as fetchmail, getmail and poplib do, or `pipeline` deep when the server
 * offers PIPELINING), QUIT. IMAP: greeting, LOGIN, SELECT INBOX, then UID FETCH 1:*
 * BODY.PEEK[] (one command for all) or, with `imap_each`, UID SEARCH ALL and one
 * UID FETCH uid BODY.PEEK[] per message, each after the last one's tagged reply; LOGOUT.
 * Message bytes are counted
 * without dot-stuffing (POP3) or as literal octets (IMAP) and checked against what the
 * mailbox holds, so a session that lost or mangled a byte counts as failed.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef enum
{
  PG_BENCH_PROTO_POP3,
  PG_BENCH_PROTO_IMAP,
} PgBenchProto;

typedef struct
{
  PgBenchProto proto;
  const char *host; /* unowned */
  guint16 port;
  guint n_sessions;         /* K */
  const char *const *users; /* unowned: session i logs in as users[i % n_users] */
  guint n_users;
  const char *password; /* unowned: the same for every user */
  /* POP3: log in as USER<sep>s<i> (a client tag per session), for gateways that lock the
   * maildrop per (user, client) as RFC 1939 asks; NULL: plain user names. */
  const char *client_tag_separator;
  guint pipeline;     /* POP3 RETRs in flight (1 = no pipelining) */
  gboolean imap_each; /* IMAP: one UID FETCH per message instead of one for all */
  gboolean idle;      /* stop after login; pg_bench_load_release() ends them */
  /* idle: hold after STAT (POP3: the maildrop snapshot is taken) or SELECT INBOX (IMAP)
   * rather than right after the login. */
  gboolean idle_selected;
  /* Sessions between connect() and holding (or done) at once; the next one starts when one
   * gets there. 0: all connect at once. A burst of 10,000 SYNs overflows any listen queue
   * and turns into SYN retransmits 1, 3, 7 s later: that measures the kernel's backoff,
   * not the server's accept rate. */
  guint max_connecting;
  guint64 expect_messages; /* per session; 0 = do not check */
  guint64 expect_octets;   /* per session, RFC822.SIZE sum; 0 = do not check */
  guint timeout_s;         /* whole run; sessions still going then fail */
} PgBenchLoadOptions;

typedef struct
{
  guint sessions_ok;
  guint sessions_failed;
  guint64 messages;   /* message bodies received in full */
  guint64 octets;     /* their octets (without dot-stuffing) */
  guint64 wire_bytes; /* everything read from the sockets */
  guint64 reads;      /* socket reads that returned data (all sessions) */
  gdouble wall_s;     /* first connect → last session done */
  gdouble cpu_s;      /* this process's user+sys CPU over wall_s */
  GArray *ttfb_us;    /* owned: gint64 per session, connect → first message byte */
  GArray *retr_us;    /* owned: gint64 per message, service time (see .c) */
  GArray *login_us;   /* owned, idle: gint64 per session, connect → holding */
  gchar *first_error; /* owned: NULL if none failed */
} PgBenchLoadResult;

void pg_bench_load_result_free (PgBenchLoadResult *result);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgBenchLoadResult, pg_bench_load_result_free)

typedef struct _PgBenchLoad PgBenchLoad;

/* Start every session at once and run the default main context until all are done (or,
 * with options->idle, logged in). Returns the load; take its result with
 * pg_bench_load_take_result() after pg_bench_load_release() (idle) or at once. */
PgBenchLoad *pg_bench_load_run (const PgBenchLoadOptions *options);
/* Idle mode: how many sessions are logged in and holding. */
guint pg_bench_load_get_n_idle (PgBenchLoad *load);
/* Idle mode: NOOP on every holding session and wait for the replies; returns how many
 * answered +OK / OK (the others count as failed sessions). */
guint pg_bench_load_noop (PgBenchLoad *load);
/* Idle mode: QUIT/LOGOUT every holding session and wait for them. */
void pg_bench_load_release (PgBenchLoad *load);
PgBenchLoadResult *pg_bench_load_take_result (PgBenchLoad *load);
/* The result so far, still the load's (NULL once taken). */
const PgBenchLoadResult *pg_bench_load_peek_result (PgBenchLoad *load);
void pg_bench_load_free (PgBenchLoad *load);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgBenchLoad, pg_bench_load_free)

/* This process's user + system CPU time so far, in seconds. */
gdouble pg_bench_cpu_seconds (void);

/* Percentile p (0..100) of a gint64 array (sorts it); 0 if empty. */
gint64 pg_bench_percentile (GArray *values, gdouble p);

G_END_DECLS
