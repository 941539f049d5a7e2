/* popgate — codec: building IMAP command lines for the upstream (pure, no I/O).
 *
 * A command is built into parts. A literal's data is always a part of its own, so the
 * sender can wait for the server's "+" before it (synchronising literal) and so a part
 * holding a secret is never logged and is wiped when freed.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* How an astring goes on the wire. */
typedef enum
{
  PG_IMAP_ASTRING_ATOM,    /* as is */
  PG_IMAP_ASTRING_QUOTED,  /* "..." with '"' and '\' escaped: printable ASCII only */
  PG_IMAP_ASTRING_LITERAL, /* {n}: empty is quoted, so only CR, LF, NUL, 8-bit or controls */
} PgImapAstringForm;

/* The form a non-secret astring of len bytes takes. "NIL" and "" are quoted. */
PgImapAstringForm pg_imap_writer_astring_form (const char *str, gsize len);

typedef struct
{
  GBytes *bytes;              /* owned */
  gboolean wait_continuation; /* wait for the server's "+" before sending this part */
  gboolean secret;            /* never log; wiped when freed */
} PgImapWriterPart;

void pg_imap_writer_part_free (PgImapWriterPart *part);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapWriterPart, pg_imap_writer_part_free)

typedef struct _PgImapWriter PgImapWriter;

/* Start "tag ". `max_nonsync` is the largest literal sent without waiting for "+":
 * 0 without LITERAL+/LITERAL-, 4096 with LITERAL- (RFC 7888), G_MAXSIZE with LITERAL+. */
PgImapWriter *pg_imap_writer_new (const char *tag, gsize max_nonsync);
void pg_imap_writer_free (PgImapWriter *writer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapWriter, pg_imap_writer_free)

/* Append text verbatim (command names, UID sets, flag lists): the caller vouches for it. */
void pg_imap_writer_add_raw (PgImapWriter *writer, const char *text);
/* SP + an astring (atom, quoted or literal, see pg_imap_writer_astring_form). */
void pg_imap_writer_add_astring (PgImapWriter *writer, const char *str, gsize len);
/* SP + a string: quoted when printable ASCII, else a literal (never an atom). */
void pg_imap_writer_add_string (PgImapWriter *writer, const char *data, gsize len);
/* SP + a secret (password, user name) as a literal, always: never spliced into a quoted
 * string. Its data part is marked secret and wiped when freed. */
void pg_imap_writer_add_secret (PgImapWriter *writer, const char *data, gsize len);

/* SP + "(" and ")": the first item after "(" gets no SP. */
void pg_imap_writer_begin_list (PgImapWriter *writer);
void pg_imap_writer_end_list (PgImapWriter *writer);

/* Length of the command's current line (since the last literal), for splitting decisions. */
gsize pg_imap_writer_get_line_length (const PgImapWriter *writer);

/* Append CRLF and return the parts (of PgImapWriterPart*, owned, free func set). The
 * writer is consumed. */
GPtrArray *pg_imap_writer_finish (PgImapWriter *writer);

/* Compact UID sets ("1:5,7,9:12") for `uids` (any order, duplicates and 0 ignored), split so
 * that no set is longer than max_len bytes (max_len >= 21: "4294967295:4294967295").
 * Returns an array of owned strings (free func set); empty if there is no UID. */
GPtrArray *pg_imap_writer_format_uid_sets (const guint32 *uids, gsize n_uids, gsize max_len);

/* The room left for a UID set in "<tag> <before> <set> <after>\r\n" so that the whole line
 * stays within PG_UPSTREAM_MAX_COMMAND_LINE. */
gsize pg_imap_writer_uid_set_room (const char *tag, const char *before, const char *after);

G_END_DECLS
