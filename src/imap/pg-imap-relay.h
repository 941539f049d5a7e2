/* popgate — the IMAP relay after login: a pump between two PgConns, the client's and the
 * upstream's.
 *
 * Client → upstream: a read of the client into one fixed buffer (PG_IMAP_RELAY_CHUNK),
 * observed and filtered (pg-imap-filter.h), handed to the upstream connection's write
 * queue (which copies only what its socket does not take at once); the client is read
 * again while that queue holds at most PG_CLIENT_OUTPUT_HIGH_WATER. Upstream → client: on
 * the upstream's readiness, reads into one process-wide buffer (PG_IMAP_RELAY_UP_CHUNK),
 * observed and filtered, handed to the client's write queue; reading stops while that
 * queue holds more than PG_CLIENT_OUTPUT_HIGH_WATER. A relay waiting for the upstream holds
 * no buffer for that direction. No timers of its own: the client connection's idle timer
 * covers inactivity, as before login.
 *
 * The session keeps the bookkeeping: it sees every command and response start through
 * the hooks, answers withheld commands, and writes its own lines when the relay says the
 * client stream is between two responses.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "pg-imap-filter.h"
#include "popgate/pg-codec-line.h"
#include "popgate/pg-net.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* Why the relay cannot go on (the session ends; the relay has logged the details). */
typedef enum
{
  PG_IMAP_RELAY_END_CLIENT_ERROR,     /* reading the client failed: abort */
  PG_IMAP_RELAY_END_HALF_CLOSE,       /* the client half-closed and that cannot be passed on */
  PG_IMAP_RELAY_END_UPSTREAM_CLOSED,  /* the upstream ended its stream */
  PG_IMAP_RELAY_END_UPSTREAM_READ,    /* reading the upstream failed */
  PG_IMAP_RELAY_END_UPSTREAM_WRITE,   /* writing to the upstream failed */
  PG_IMAP_RELAY_END_UPSTREAM_INVALID, /* the upstream broke the protocol (the filter said) */
  PG_IMAP_RELAY_END_COMPRESS_FAILED,  /* COMPRESS could not start */
  PG_IMAP_RELAY_END_COUNT,
} PgImapRelayEnd;

typedef struct
{
  /* The filter's hooks (pg-imap-filter.h), as it calls them. After `withheld` returned
   * FALSE the relay offers the session's own lines a flush. */
  void (*command) (gpointer user_data, const PgImapRelayCommand *cmd);
  gboolean (*withheld) (gpointer user_data, PgImapCapsCommand what, const PgImapRelayCommand *cmd);
  void (*response) (gpointer user_data, const PgImapRelayCommand *resp);
  /* `len` octets came from the client (before filtering) / went to it (before COMPRESS). */
  void (*from_client) (gpointer user_data, gsize len);
  void (*to_client) (gpointer user_data, gsize len);
  /* The client stream is between two upstream responses: popgate's own lines may go out. */
  void (*flush) (gpointer user_data);
  /* The relay is over; it writes and reads nothing more. */
  void (*ended) (gpointer user_data, PgImapRelayEnd end);
} PgImapRelayFuncs;

#define PG_TYPE_IMAP_RELAY (pg_imap_relay_get_type ())
G_DECLARE_FINAL_TYPE (PgImapRelay, pg_imap_relay, PG, IMAP_RELAY, GObject)

/* `own_capabilities`: popgate's additions to every upstream capability list. `client`
 * and `upstream` are referenced; `upstream` is the relay's to close. `cancellable` (the
 * session's) is used for the relay's client reads and waits. */
PgImapRelay *pg_imap_relay_new (PgConn *client, PgConn *upstream, GCancellable *cancellable,
                                const char *own_capabilities, const PgImapRelayFuncs *funcs,
                                gpointer user_data);

/* Start pumping. `client_buf` (PG_IMAP_RELAY_CHUNK octets, transfer full) is the session's
 * read buffer; `pipelined` (transfer full, may be NULL) holds what the client sent behind
 * its login, which goes upstream first; `up_buffered` what the upstream sent behind the
 * login reply; `client_eof`: the client half-closed before the login completed. */
void pg_imap_relay_start (PgImapRelay *relay, guint8 *client_buf, PgLineReader *pipelined,
                          GBytes *up_buffered, gboolean client_eof);

/* No more hooks, no more I/O; the upstream connection is closed now. */
void pg_imap_relay_stop (PgImapRelay *relay);

/* COMPRESS=DEFLATE (RFC 4978) toward the client: FALSE when it is active or about to be.
 * pg_imap_relay_compress(): the session has produced COMPRESS's OK (for its next flush);
 * the client stream is compressed from the octet after it. */
gboolean pg_imap_relay_can_compress (PgImapRelay *relay);
void pg_imap_relay_compress (PgImapRelay *relay);

G_END_DECLS
