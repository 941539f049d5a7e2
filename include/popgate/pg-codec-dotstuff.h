/* popgate — codec: streaming POP3 dot-stuffer (RFC 1939 §3) with CRLF repair.
 *
 * Feed message chunks of any size as they arrive from the upstream; the POP3 bytes for
 * the client are appended to a caller-provided GByteArray (reuse one per session and
 * truncate it after each write, so there is no per-chunk allocation in steady state).
 * Work per chunk is a memchr scan and a few appends, never per-byte allocation.
 *
 * Output rules:
 *  - every line ends with CRLF: CRLF stays and a bare LF becomes CRLF. A bare CR (one not
 *    followed by LF) is content and passes through unchanged, as Dovecot's POP3 sends it:
 *    the octets RETR sends then equal the upstream's RFC822.SIZE, which LIST shows (it
 *    counts a bare CR as one octet; rewriting it to CRLF made RETR longer than LIST
 *    said). Only a CRLF or a bare LF starts a new line, for stuffing as for TOP.
 *  - a line starting with "." gets a second "." in front.
 *  - pg_dot_stuffer_finish() ends an unterminated last line with CRLF and adds ".\r\n".
 * State carries across chunks (a chunk may end between CR and LF, or right after a line
 * end).
 *
 * TOP mode (pg_dot_stuffer_new_top): output stops after the header, the blank line and
 * k body lines; pg_dot_stuffer_is_done() then turns TRUE and feed() takes no more, so
 * the caller can stop fetching. A message without a blank line is sent whole.
 *
 * Counters: octets taken in, and octets sent before stuffing (the message as the client
 * sees it after CRLF repair, without the added dots and without the final ".\r\n"). For a
 * CRLF message fed whole these equal the message size, i.e. the LIST size.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _PgDotStuffer PgDotStuffer;

/* RETR: the whole message. */
PgDotStuffer *pg_dot_stuffer_new (void);
/* TOP n k: the header, the blank line and the first body_lines lines of the body. */
PgDotStuffer *pg_dot_stuffer_new_top (guint64 body_lines);
void pg_dot_stuffer_free (PgDotStuffer *stuffer);

/* Append the stuffed form of data to out. Returns how many input bytes were taken: all of
 * them, except in TOP mode once the wanted lines are out (then fewer, and 0 after). */
gsize pg_dot_stuffer_feed (PgDotStuffer *stuffer, const void *data, gsize len, GByteArray *out);

/* End of message: append CRLF if the last line was not terminated, then ".\r\n". Call
 * once; the stuffer then takes no more input. */
void pg_dot_stuffer_finish (PgDotStuffer *stuffer, GByteArray *out);

/* TOP mode: all wanted lines have been produced. Always FALSE in RETR mode. */
gboolean pg_dot_stuffer_is_done (const PgDotStuffer *stuffer);

/* Input octets taken so far. */
guint64 pg_dot_stuffer_get_octets_in (const PgDotStuffer *stuffer);
/* Output octets so far, not counting the dots added by stuffing nor the ".\r\n" end. */
guint64 pg_dot_stuffer_get_octets_unstuffed (const PgDotStuffer *stuffer);

/* Convenience for tests and small messages: stuff a whole message (finish included). */
GBytes *pg_dot_stuffer_stuff_all (const void *data, gsize len);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgDotStuffer, pg_dot_stuffer_free)

G_END_DECLS
