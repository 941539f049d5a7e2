/* popgate tests — a scripted IMAP upstream for the real popgate binary, for faults that
 * Dovecot will not produce on cue: a hang or a drop at an exact step, a line or a literal
 * beyond popgate's limits, a server that answers STORE and then never EXPUNGE.
 *
 * Unlike the in-process peer of test-upstream.c this one runs in its own thread with
 * blocking sockets (every wait bounded), so a test can drive popgate with the synchronous
 * POP3 client while the peer answers popgate. It listens on 127.0.0.1 and serves one
 * connection per script; later connections are closed at once. Never "accept anything":
 * a line that does not match the script ends it with a recorded mismatch.
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
  /* Close the connection (the upstream is killed). */
  PG_TEST_PEER_CLOSE,
  /* Stay connected and read (discarding) until popgate closes or the peer is freed: the
   * upstream is paused. The script is finished once this step is reached. */
  PG_TEST_PEER_HANG,
  /* Send `text` over and over, every "%u" in it replaced by a counter from 1, at most
   * `repeat` times, until popgate closes the connection: a server that floods or never
   * ends a reply. The script is finished when popgate closed; reaching `repeat` first is a
   * mismatch ("flood not stopped"). */
  PG_TEST_PEER_FLOOD,
} PgTestPeerAction;

typedef struct
{
  PgTestPeerAction action;
  const char *text;
  gsize repeat;
} PgTestPeerStep;

typedef struct _PgTestPeer PgTestPeer;

/* Start listening and serving `steps` (which must end with CLOSE or HANG and must outlive
 * the peer) in a thread. */
PgTestPeer *pg_test_peer_new (const PgTestPeerStep *steps, GError **error);
guint16 pg_test_peer_get_port (PgTestPeer *peer);

/* Wait (bounded) until the script reached its CLOSE or HANG step (or failed). */
gboolean pg_test_peer_wait_finished (PgTestPeer *peer, guint timeout_ms);
/* Wait (bounded) until the connection is gone: popgate closed it (EOF seen, during HANG or
 * after the script) or the script's CLOSE did. */
gboolean pg_test_peer_wait_client_closed (PgTestPeer *peer, guint timeout_ms);
/* The first script mismatch, or NULL (owned by the peer). */
const char *pg_test_peer_get_mismatch (PgTestPeer *peer);
/* Every line popgate sent so far, each followed by "\n" (a copy). */
gchar *pg_test_peer_get_received (PgTestPeer *peer);

void pg_test_peer_free (PgTestPeer *peer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestPeer, pg_test_peer_free)

G_END_DECLS
