/* The harness of the whole-session fuzz targets (fuzz-pop3-session.c, fuzz-imap-session.c):
 * a scripted IMAP upstream on 127.0.0.1 in the same main loop, and the driver that feeds
 * the fuzz input to a real session over a socketpair. A target supplies the front end and
 * the upstream's script; the first input byte picks the script's mode.
 *
 * Deterministic and bounded: no timers fire (auth delay 0, long timeouts), the session is
 * driven until it has ended or gone quiet, and a wall-clock guard turns a hang into a
 * crash. Logging runs at debug level (the redaction paths are fuzzed too) into a writer
 * that drops the lines but aborts on a critical; PG_FUZZ_SESSION_LOG=1 shows them.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#pragma once

#include "popgate/pg-net.h"

#include <gio/gio.h>
#include <stdint.h>

G_BEGIN_DECLS

/* How long nothing may happen before a session counts as idle. */
#define PG_FUZZ_SESSION_QUIET_US (5 * 1000)

typedef struct
{
  guint mode;              /* the first input byte modulo the target's n_modes */
  GSocketConnection *conn; /* owned */
  GString *input;          /* owned */
  guint8 buf[4096];
  gboolean closed;
  gboolean reading;   /* a read is pending: its callback owns the struct once orphaned */
  gboolean orphaned;  /* the run is over */
  gboolean logged_in; /* for the script's use */
  gchar *idle_tag;    /* owned, for the script's use: the IDLE being answered */
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

void pg_fuzz_upstream_close (PgFuzzUpstream *up);
void pg_fuzz_upstream_send (PgFuzzUpstream *up, const char *text, gsize len);
void pg_fuzz_upstream_printf (PgFuzzUpstream *up, const char *format, ...) G_GNUC_PRINTF (2, 3);

/* One run: what LLVMFuzzerTestOneInput returns. */
int pg_fuzz_session_run (const PgFuzzSessionTarget *target, const uint8_t *data, size_t size);

G_END_DECLS
