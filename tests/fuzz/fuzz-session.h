/* The harness of the whole-session fuzz targets (fuzz-pop3-session.c, fuzz-imap-session.c):
 * the tests' scripted IMAP upstream (tests/pg-test-peer.h) in the same main loop, answering
 * through the target's responder, and the driver that feeds the fuzz input to a real
 * session over a socketpair. A target supplies the front end and the upstream's answers;
 * the first input byte picks the upstream's mode.
 *
 * Deterministic and bounded: no timers fire (auth delay 0, long timeouts), the session is
 * driven until it has ended or gone quiet, and a wall-clock guard turns a hang into a
 * crash. Logging runs at debug level (the redaction paths are fuzzed too) into a writer
 * that drops the lines but aborts on a critical; PG_FUZZ_SESSION_LOG=1 shows them.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#pragma once

#include "pg-test-peer.h"
#include "popgate/pg-net.h"

#include <gio/gio.h>
#include <stdint.h>

G_BEGIN_DECLS

/* How long nothing may happen before a session counts as idle. */
#define PG_FUZZ_SESSION_QUIET_US (5 * 1000)

/* One run's upstream: the peer and what the target's answers remember. */
typedef struct
{
  guint mode;         /* the first input byte modulo the target's n_modes */
  PgTestPeer *peer;   /* unowned: answer with pg_test_peer_send() and friends */
  gboolean logged_in; /* for the target's use */
  gchar *idle_tag;    /* owned, for the target's use: the IDLE being answered */
} PgFuzzUpstream;

typedef struct
{
  PgFrontend frontend;
  guint n_modes;
  /* The front end's part of the config (after [upstream] and [limits]). */
  const char *config;
  /* Trace on as well as debug logging. */
  gboolean trace;
  /* The greeting, once popgate has connected. */
  void (*greet) (PgFuzzUpstream *up);
  /* One line from popgate (CRLF removed). */
  void (*command) (PgFuzzUpstream *up, const char *line);
  void (*start) (PgConn *conn, gpointer user_data);
  guint (*n_live) (void);
  /* How long the session must be quiet before the client half-closes; NULL:
   * PG_FUZZ_SESSION_QUIET_US. */
  gint64 (*quiet_us) (void);
} PgFuzzSessionTarget;

/* One run: what LLVMFuzzerTestOneInput returns. */
int pg_fuzz_session_run (const PgFuzzSessionTarget *target, const uint8_t *data, size_t size);

G_END_DECLS
