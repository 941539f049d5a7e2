/* popgate tests — THE scripted IMAP upstream, for faults that Dovecot will not produce on
 * cue: a hang or a drop at an exact step, a line or a literal beyond popgate's limits, a
 * server that answers STORE and then never EXPUNGE, a STARTTLS or implicit-TLS server
 * that shows how popgate closed it, and a scriptable responder for the whole-session
 * fuzzers.
 *
 * One engine, non-blocking, on a GMainContext. pg_test_peer_new() runs it in its own
 * thread (with a context of its own), so a test can drive the real popgate binary with
 * the synchronous POP3 client while the peer answers popgate; pg_test_peer_new_in_context()
 * runs it in the caller's thread-default context, for in-process code under test (the
 * PgUpstream tests, the fuzzers) that needs that context iterated anyway. It listens on
 * 127.0.0.1 and serves one connection per script; later connections are closed at once
 * (pg_test_peer_restart() serves the next). Never "accept anything": a line that does not
 * match the script is a recorded mismatch (the peer then only reads until popgate closes).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef enum
{
  /* Send `text` `repeat` times (0 counts as once). "$" is the tag of the last EXPECT,
   * "$^" the tag of the one before it (two pipelined commands). */
  PG_TEST_PEER_SEND,
  /* Read one line "<tag> <rest>"; `rest` must match the glob `text`. */
  PG_TEST_PEER_EXPECT,
  /* Read one line; the whole line must match the glob `text` (literal continuations). */
  PG_TEST_PEER_EXPECT_RAW,
  /* TLS server handshake with the peer's certificate (pg_test_peer_set_certificate()),
   * then go on over TLS: after "OK Begin TLS" for STARTTLS, or as the first step for an
   * implicit-TLS server. */
  PG_TEST_PEER_TLS,
  /* Close the connection (the upstream is killed: no TLS close_notify, a plain FIN). */
  PG_TEST_PEER_CLOSE,
  /* Stay connected and read (discarding) until popgate closes or the peer is freed: the
   * upstream is paused. The script is finished once this step is reached. */
  PG_TEST_PEER_HANG,
  /* Send `text` over and over, every "%u" in it replaced by a counter from 1, at most
   * `repeat` times, until popgate closes the connection: a server that floods or never
   * ends a reply. The script is finished when popgate closed; reaching `repeat` first is a
   * mismatch ("flood not stopped"). */
  PG_TEST_PEER_FLOOD,
  /* From here on the responder (pg_test_peer_set_responder()) answers: it is called once
   * with NULL when the step is reached, then with every line popgate sends, until popgate
   * closes. The script is finished once this step is reached. */
  PG_TEST_PEER_RESPOND,
} PgTestPeerAction;

typedef struct
{
  PgTestPeerAction action;
  const char *text;
  gsize repeat;
} PgTestPeerStep;

/* How the connection ended, as the peer saw it. */
typedef enum
{
  PG_TEST_PEER_END_OPEN,            /* not (yet) ended by popgate */
  PG_TEST_PEER_END_EOF,             /* popgate closed a plain connection */
  PG_TEST_PEER_END_CLOSE_NOTIFY,    /* popgate closed TLS with a close_notify */
  PG_TEST_PEER_END_NO_CLOSE_NOTIFY, /* popgate closed the socket under TLS */
  PG_TEST_PEER_END_ERROR,           /* a reset or another read/write error */
} PgTestPeerEnd;

typedef struct _PgTestPeer PgTestPeer;

/* Called in the peer's context: `line` is NULL once at the RESPOND step, then each line
 * popgate sent (without CRLF). Answer with pg_test_peer_send() and friends. */
typedef void (*PgTestPeerRespondFunc) (PgTestPeer *peer, const char *line, gpointer user_data);

/* Start listening and serving `steps` (which must end with CLOSE, HANG or RESPOND and must
 * outlive the peer) in a thread of its own. */
PgTestPeer *pg_test_peer_new (const PgTestPeerStep *steps, GError **error);
/* The same, served from the caller's thread-default main context; the waits below then
 * iterate that context. */
PgTestPeer *pg_test_peer_new_in_context (const PgTestPeerStep *steps, GError **error);
guint16 pg_test_peer_get_port (PgTestPeer *peer);

/* The certificate (with its key) for the TLS step; set it before popgate connects. */
void pg_test_peer_set_certificate (PgTestPeer *peer, GTlsCertificate *certificate);
/* The responder for the RESPOND step; set it before popgate connects. */
void pg_test_peer_set_responder (PgTestPeer *peer, PgTestPeerRespondFunc respond,
                                 gpointer user_data);

/* For the responder only (the peer's context): queue `text` for popgate. */
void pg_test_peer_send (PgTestPeer *peer, const char *text, gsize len);
void pg_test_peer_printf (PgTestPeer *peer, const char *format, ...) G_GNUC_PRINTF (2, 3);
/* For the responder only: once what is queued has gone out, send a FIN but go on reading
 * (shutdown), or reset the connection (abort: a killed server; no TIME_WAIT piles up). */
void pg_test_peer_shutdown (PgTestPeer *peer);
void pg_test_peer_abort (PgTestPeer *peer);

/* Only for a peer in the caller's context: reset the connection if there is one, wait for
 * its I/O to end, and serve the next connection from the first step with a clean record. */
void pg_test_peer_restart (PgTestPeer *peer);

/* Wait (bounded) until the script reached its CLOSE, HANG or RESPOND step (or failed). */
gboolean pg_test_peer_wait_finished (PgTestPeer *peer, guint timeout_ms);
/* Wait (bounded) until the connection is gone: popgate closed it (EOF seen, during HANG or
 * after the script) or the script's CLOSE did. */
gboolean pg_test_peer_wait_client_closed (PgTestPeer *peer, guint timeout_ms);
/* The first script mismatch, or NULL (owned by the peer; stays valid until it is freed or
 * restarted). */
const char *pg_test_peer_get_mismatch (PgTestPeer *peer);
/* Every line popgate sent so far, each followed by "\n", then what came during HANG as it
 * came (a copy). */
gchar *pg_test_peer_get_received (PgTestPeer *peer);
/* How popgate ended the connection. */
PgTestPeerEnd pg_test_peer_get_end (PgTestPeer *peer);

void pg_test_peer_free (PgTestPeer *peer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestPeer, pg_test_peer_free)

G_END_DECLS
