/* popgate — network layer: listeners, per-connection I/O with a bounded write queue,
 * timeouts, TLS upgrade, and the session limits.
 *
 * One PgServer owns every listening socket (one GSocketService per listen address, so a
 * reload can open and close addresses one by one) and counts the sessions. Each accepted
 * connection becomes a PgConn handed to the front end's start function; the front end
 * owns the session and calls pg_conn_close() when it ends.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

#include "popgate/pg-config.h"

G_BEGIN_DECLS

typedef enum
{
  PG_FRONTEND_POP3,
  PG_FRONTEND_IMAP,
  PG_FRONTEND_COUNT,
} PgFrontend;

const char *pg_frontend_to_string (PgFrontend frontend);

/* --- PgConn: one connection, a client's or popgate's own to an upstream ------------- */

#define PG_TYPE_CONN (pg_conn_get_type ())
G_DECLARE_FINAL_TYPE (PgConn, pg_conn, PG, CONN, GObject)

/* Signals:
 *   "closed"  (void)  — emitted once, when the connection is closed for any reason
 *                       (pg_conn_close, a write error, or the server forcing it).
 *   "timeout" (void)  — the idle timer or the deadline ran out; the session decides what to say,
 * then closes. If nobody handles it the connection is closed. "shutdown" (void) — the server is
 * stopping; the session should finish soon. */

/* A connection over any stream: a GSocketConnection, or a GTlsConnection (TLS from the
 * start) whose base stream is one; anything else (a pipe pair in a fuzzer) has no socket
 * and peer "unknown". It gets a new session id and counts its bytes for `frontend`. For
 * the relay's upstream side, tests and fuzzers; the server makes its own. */
PgConn *pg_conn_new (PgFrontend frontend, PgConfig *config, GIOStream *stream);

/* The same for a connection popgate made to an upstream server: its bytes are not the
 * client bytes of the metrics, it has no front end of its own, and it takes no session id
 * (pg_conn_get_id() is 0: its lines carry the id of the session it serves). */
PgConn *pg_conn_new_upstream (PgConfig *config, GIOStream *stream);
gboolean pg_conn_is_upstream (PgConn *conn);

/* Connect to `host`:`port` over TCP (no proxy settings, TCP_NODELAY) and make an upstream
 * connection of it (pg_conn_new_upstream). `deadline_us` (monotonic, 0: none) bounds the
 * name lookup and the connect: past it, PG_ERROR_TIMEOUT. Other errors are GIO's. */
void pg_conn_connect_async (PgConfig *config, const char *host, guint16 port, gint64 deadline_us,
                            GCancellable *cancellable, GAsyncReadyCallback callback,
                            gpointer user_data);
PgConn *pg_conn_connect_finish (GAsyncResult *result, GError **error);

guint64 pg_conn_get_id (PgConn *conn);
PgFrontend pg_conn_get_frontend (PgConn *conn);
/* The config the connection was accepted under: sessions keep it for their lifetime even
 * when the server reloads. */
PgConfig *pg_conn_get_config (PgConn *conn);
/* "1.2.3.4:5678" / "[::1]:5678". On a proxy_protocol listener: the client the PROXY
 * header named (the proxy's own address when it sent LOCAL/UNKNOWN). */
const char *pg_conn_get_peer (PgConn *conn);
/* The peer's address without port, for limits and the upstream ID x-originating-ip. */
const char *pg_conn_get_peer_ip (PgConn *conn);
gboolean pg_conn_is_loopback (PgConn *conn);
/* The proxy's own "host:port" when a PROXY header named the client, else NULL. */
const char *pg_conn_get_proxy (PgConn *conn);
gboolean pg_conn_is_tls (PgConn *conn);
gboolean pg_conn_is_closed (PgConn *conn);
/* The listener was a plain one on which STARTTLS/STLS may be offered (a certificate is
 * configured and the connection is not yet TLS). */
gboolean pg_conn_can_start_tls (PgConn *conn);
guint64 pg_conn_get_bytes_in (PgConn *conn);
guint64 pg_conn_get_bytes_out (PgConn *conn);

/* Read up to `len` bytes into `buffer` (at most one read pending). Returns the byte count,
 * 0 at end of stream, -1 with error. Each completed read restarts the idle timer. */
void pg_conn_read_async (PgConn *conn, void *buffer, gsize len, GCancellable *cancellable,
                         GAsyncReadyCallback callback, gpointer user_data);
gssize pg_conn_read_finish (PgConn *conn, GAsyncResult *result, GError **error);
/* Read what is there without waiting (no read may be pending): the byte count, 0 at end
 * of stream, -1 with an error — G_IO_ERROR_WOULD_BLOCK when nothing is there yet or the
 * stream cannot be read that way (then read with pg_conn_read_async()). Counts as a read. */
gssize pg_conn_read_nonblocking (PgConn *conn, void *buffer, gsize len, GError **error);

/* Call `func (conn, data)` once, from the main loop, when input (or end of stream, or an
 * error) waits to be read — without reading it, so an idle connection that may hear
 * something (an IMAP server's EXISTS or BYE) needs no read buffer meanwhile. At most one
 * wait, and no read while it is set; pg_conn_cancel_wait_readable() forgets it at once,
 * and so does closing (func is then not called). */
typedef void (*PgConnReadableFunc) (PgConn *conn, gpointer user_data);
void pg_conn_wait_readable (PgConn *conn, PgConnReadableFunc func, gpointer user_data);
void pg_conn_cancel_wait_readable (PgConn *conn);
gboolean pg_conn_is_reading (PgConn *conn);

/* Queue bytes for the client. Writes happen one at a time in order; a failed write closes
 * the connection. Use pg_conn_get_queued() and pg_conn_wait_drained_async() for
 * back-pressure: a producer stops when queued bytes pass PG_CLIENT_OUTPUT_HIGH_WATER. */
void pg_conn_write_bytes (PgConn *conn, GBytes *bytes);
void pg_conn_write (PgConn *conn, const void *data, gsize len);
void pg_conn_write_printf (PgConn *conn, const char *format, ...) G_GNUC_PRINTF (2, 3);
/* Output queued or corked, not yet handed to the socket. */
gsize pg_conn_get_queued (PgConn *conn);
/* Hold what is written until the matching pg_conn_uncork(), so that replies produced in
 * one go (a RETR's status line, body and terminator) leave in one write instead of one
 * each: the client then reads, and wakes up, once. Corks nest; past PG_CLIENT_CORK_MAX
 * bytes the held output goes out at once. pg_conn_close() sends what is held first. */
void pg_conn_cork (PgConn *conn);
void pg_conn_uncork (PgConn *conn);
/* While corked: the cork buffer itself, to append output to in place (no copy), about
 * `room` bytes (what is held goes out first when they would pass PG_CLIENT_CORK_MAX; more
 * still fits, the buffer grows). What is appended goes out as pg_conn_write()'s would.
 * NULL when the connection is closing or closed: write nothing then. */
GByteArray *pg_conn_cork_buffer (PgConn *conn, gsize room);
/* Completes when the write queue holds at most `low_water` bytes (0: fully flushed), or
 * with an error when the connection closes first. */
void pg_conn_wait_drained_async (PgConn *conn, gsize low_water, GCancellable *cancellable,
                                 GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_conn_wait_drained_finish (PgConn *conn, GAsyncResult *result, GError **error);

/* Upgrade to TLS as the server (STLS/STARTTLS). The caller must have written and flushed
 * its "+OK"/"OK" and must discard anything it had buffered from the plaintext stream.
 * While either handshake runs, what is written waits and goes out over TLS once it is up
 * (never in clear: a failed handshake drops it); a read fails with G_IO_ERROR_PENDING. */
void pg_conn_start_tls_async (PgConn *conn, GCancellable *cancellable, GAsyncReadyCallback callback,
                              gpointer user_data);
gboolean pg_conn_start_tls_finish (PgConn *conn, GAsyncResult *result, GError **error);

/* Upgrade to TLS as the client: at the start of an implicit-TLS connection, or after the
 * server accepted STARTTLS. The certificate is checked as pg_tls_client_handshake_async()
 * says (`ca_file` NULL: the system trust store; the name `host`), with its errors. No read
 * may be pending and nothing queued; the caller discards what it read in plaintext. */
void pg_conn_start_client_tls_async (PgConn *conn, const char *host, guint16 port,
                                     const char *ca_file, GCancellable *cancellable,
                                     GAsyncReadyCallback callback, gpointer user_data);
gboolean pg_conn_start_client_tls_finish (PgConn *conn, GAsyncResult *result, GError **error);

/* COMPRESS=DEFLATE (RFC 4978): from now on everything read from the client is inflated
 * and everything written to it deflated (raw deflate, GZlibCompressor/Decompressor),
 * each write flushed so it reaches the client at once; output already queued goes out as
 * it was. `input` (len octets, maybe 0) is compressed data that arrived behind the
 * command. No read may be pending. FALSE when already compressed. */
gboolean pg_conn_start_compress (PgConn *conn, const void *input, gsize len, GError **error);
gboolean pg_conn_is_compressed (PgConn *conn);
/* Idle timer in milliseconds (0 = off). Restarted by every completed read. */
void pg_conn_set_idle_timeout (PgConn *conn, guint timeout_ms);
/* A deadline `after_accept_ms` after the connection was accepted (0 = off), that no
 * activity moves: the pre-auth deadline (a client trickling bytes is still cut). When it
 * passes, "timeout" is emitted as for the idle timer and pg_conn_deadline_passed() is
 * TRUE from then on. */
void pg_conn_set_deadline (PgConn *conn, guint after_accept_ms);
/* The same deadline at an absolute monotonic time (0 = off), which may be set again at any
 * time, later or earlier (a per-command deadline that moves with the peer's progress):
 * moving it later costs no new timer. It replaces what pg_conn_set_deadline() set. */
void pg_conn_set_deadline_at (PgConn *conn, gint64 at_us);
gboolean pg_conn_deadline_passed (PgConn *conn);

/* A source that calls `func (data)` while `stream` has input (or EOF, or an error), meant
 * to stay attached from one read to the next; it may recurse. On a plain socket it is the
 * socket's own source: GLib's pollable wrapper adds a child source that GLib 2.74 blocks
 * and unblocks around every dispatch, writing its wake-up eventfd twice each time. */
GSource *pg_net_readable_source_new (GIOStream *stream, GSourceFunc func, gpointer data);

/* Half-close: tell the peer nothing more will come (shutdown(SHUT_WR) of the TCP
 * connection, under TLS too); reads go on. Call with nothing queued
 * (pg_conn_wait_drained_async() with 0). FALSE when there is no socket. */
gboolean pg_conn_shutdown_write (PgConn *conn, GError **error);
/* Why the connection closed itself (a write failed), or NULL. */
const GError *pg_conn_get_error (PgConn *conn);

/* Hand the stream (transfer full; TLS included) over to the caller, who owns the
 * connection from now on: the PgConn lets go of it without closing it and is closed
 * ("closed" is not emitted). Fails (G_IO_ERROR_BUSY) while a read is pending or output
 * is queued: those bytes could not be handed over. */
GIOStream *pg_conn_steal_stream (PgConn *conn, GError **error);

/* Close after the queued output has been written (bounded by a short deadline). */
void pg_conn_close (PgConn *conn);
/* Close now, dropping queued output. */
void pg_conn_abort (PgConn *conn);

/* Close a connection's stream for good: a GTlsConnection sends its close_notify first
 * (g_io_stream_close_async), bounded by PG_TLS_CLOSE_TIMEOUT_MS, then `socket` (the TCP
 * connection under it; may be NULL) is closed whatever happened; anything else closes
 * `socket` at once. Never blocks; holds its own references until done. */
void pg_net_close_stream (GIOStream *stream, GSocketConnection *socket);

/* --- PgServer: listeners and limits ------------------------------------------------ */

#define PG_TYPE_SERVER (pg_server_get_type ())
G_DECLARE_FINAL_TYPE (PgServer, pg_server, PG, SERVER, GObject)

/* Called for each accepted connection that passed the limits (and, on a TLS listener,
 * the TLS handshake). The front end keeps a reference to conn for the session's life. */
typedef void (*PgSessionStartFunc) (PgConn *conn, gpointer user_data);

PgServer *pg_server_new (PgConfig *config);
void pg_server_set_handler (PgServer *server, PgFrontend frontend, PgSessionStartFunc func,
                            gpointer user_data);
/* Open every listener of the config. Fails (and opens none) when one cannot be bound. */
gboolean pg_server_start (PgServer *server, GError **error);
/* Apply a new config: listeners that stay are kept, new ones opened, old ones closed;
 * running sessions keep their config. On error nothing changes. */
gboolean pg_server_reload (PgServer *server, PgConfig *config, GError **error);
/* Stop accepting and tell every session to finish ("shutdown"); after the config's
 * shutdown_timeout the remaining connections are closed. */
void pg_server_shutdown (PgServer *server);
PgConfig *pg_server_get_config (PgServer *server);
guint pg_server_get_n_sessions (PgServer *server);
/* Socket activation: serve `socket` (bound and listening, e.g. from systemd) for
 * `frontend`, plain or implicit TLS. Call before pg_server_start(). The config's listen
 * list for that front end and kind is then not opened, at start or on reload; the
 * inherited socket stays until the server stops. Fails when the socket cannot be used. */
gboolean pg_server_adopt_socket (PgServer *server, PgFrontend frontend, gboolean tls,
                                 GSocket *socket, GError **error);
/* TRUE when an inherited socket serves `frontend` (plain or TLS as `tls`). */
gboolean pg_server_has_inherited (PgServer *server, PgFrontend frontend, gboolean tls);
/* The addresses actually bound (useful with port 0 in tests), as "host:port" strings. */
GPtrArray *pg_server_get_bound_addresses (PgServer *server, PgFrontend frontend, gboolean tls);

/* Signals on PgServer:
 *   "idle" (void) — after shutdown, emitted when the last session has ended. */

G_END_DECLS
