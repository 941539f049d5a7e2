/* popgate — codec: line framing over a fixed-capacity buffer.
 *
 * A PgLineReader never grows. The caller feeds bytes as they arrive from the socket;
 * pg_line_reader_feed() says how many it took, so a full buffer turns into back-pressure
 * (stop reading the socket) rather than memory growth. Complete lines are taken one at a
 * time. A line ends at LF; a CR right before the LF is part of the terminator. The
 * capacity bounds a line *including* its terminator.
 *
 * When the buffer is full and holds no LF, pg_line_reader_next() fails once with
 * PG_ERROR_LINE_TOO_LONG; the reader then drops what it holds and silently discards input
 * up to and including the next LF, after which it frames lines again. So a front end can
 * answer "-ERR line too long", count the flood and carry on.
 *
 * Memory follows what is buffered, not the capacity: the buffer is allocated on the first
 * feed, doubles (up to the capacity) only when more must be held, and is released once
 * everything was taken and pg_line_reader_next() is called again (it then says NEED_MORE).
 * So an idle connection holds no input buffer, and a full one holds exactly the capacity.
 *
 * Pure: no I/O, no logging. Every buffer is wiped before it is freed (when the reader is
 * freed, told to discard, emptied or grown), because it may have held a password.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _PgLineReader PgLineReader;

typedef enum
{
  PG_LINE_READER_NEED_MORE, /* no complete line buffered: feed more bytes */
  PG_LINE_READER_LINE,      /* out_line and out_len hold one line, terminator stripped */
  PG_LINE_READER_ERROR,     /* error is set (PG_ERROR_LINE_TOO_LONG) */
} PgLineReaderStatus;

/* capacity > 0: the longest line accepted, terminator included. */
PgLineReader *pg_line_reader_new (gsize capacity);
void pg_line_reader_free (PgLineReader *reader);

gsize pg_line_reader_get_capacity (const PgLineReader *reader);
/* Bytes of buffer allocated now (0 when empty and released; never above the capacity). */
gsize pg_line_reader_get_allocated (const PgLineReader *reader);
/* Bytes held and not yet returned as a line or raw data. */
gsize pg_line_reader_get_buffered (const PgLineReader *reader);
/* Room left for pg_line_reader_feed() (bytes it would take without discarding). */
gsize pg_line_reader_get_space (const PgLineReader *reader);
/* TRUE while the rest of an over-long line is being dropped. */
gboolean pg_line_reader_is_discarding (const PgLineReader *reader);

/* Take up to len bytes; returns how many were taken (0 when full: take lines first).
 * While discarding an over-long line, the dropped bytes count as taken. */
gsize pg_line_reader_feed (PgLineReader *reader, const void *data, gsize len);

/* Take the next complete line. The line is not NUL-terminated and may contain NUL bytes;
 * it stays valid until the next call on the reader. out_line/out_len are written only
 * when PG_LINE_READER_LINE is returned; error only with PG_LINE_READER_ERROR. */
PgLineReaderStatus pg_line_reader_next (PgLineReader *reader, const char **out_line, gsize *out_len,
                                        GError **error);

/* Take up to max_len buffered bytes as they are (the octets of an IMAP literal). Returns
 * how many; *out_data stays valid until the next call on the reader. */
/* Look at the next complete line without taking it (FALSE if none is buffered, or while
 * discarding after an over-long line). The pointer is valid until the next call. */
gboolean pg_line_reader_peek (PgLineReader *reader, const char **out_line, gsize *out_len);
/* The same from *inout_offset (bytes after the next unread one; start with 0), which is
 * advanced past the line: call again for the line after it. */
gboolean pg_line_reader_peek_at (PgLineReader *reader, gsize *inout_offset, const char **out_line,
                                 gsize *out_len);
gsize pg_line_reader_take_raw (PgLineReader *reader, gsize max_len, const guint8 **out_data);
/* The buffered bytes as they are, without taking them (e.g. the start of a line that
 * pg_line_reader_next() is about to report as too long, for its tag). Returns how many;
 * *out_data stays valid until the next call on the reader. */
gsize pg_line_reader_peek_raw (const PgLineReader *reader, const guint8 **out_data);

/* Drop (and wipe) everything buffered and any discard in progress; returns how many bytes
 * were dropped. Call right after STLS/STARTTLS succeeds: anything that arrived in
 * plaintext after the command must not be read as if it came through TLS. */
gsize pg_line_reader_discard_buffered (PgLineReader *reader);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgLineReader, pg_line_reader_free)

G_END_DECLS
