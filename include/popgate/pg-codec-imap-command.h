/* popgate — codec: the IMAP front end's client command parser (before login), and a
 * cheap relay scanner for the client→server stream after login.
 *
 * Pre-auth parser. Driven by the caller one line at a time (terminator stripped, e.g.
 * from a PgLineReader of PG_IMAP_MAX_PREAUTH_LINE octets) plus the octets of literals:
 *
 *   feed_line() ─┬─ COMPLETE      → take_command()
 *                ├─ NEED_LITERAL  → if is_literal_sync(): send "+ Ready\r\n" first; then
 *                │                  feed_literal() with get_literal_remaining() octets
 *                │                  (from pg_line_reader_take_raw()); it returns
 *                │                  NEED_LITERAL until all arrived, then NEED_LINE
 *                ├─ NEED_LINE     → feed_line() with the rest of the command
 *                └─ ERROR         → reply "<tag> BAD" (get_tag(), or "*" if NULL); the
 *                                   parser is ready for the next command. A
 *                                   non-synchronising literal over the limit (LIMIT
 *                                   error) leaves octets in flight: close the connection.
 * If the line reader reports PG_ERROR_LINE_TOO_LONG in the middle of a command, call
 * pg_imap_command_parser_reset() before going on.
 *
 * Syntax (RFC 9051 §9): tag SP command [SP arguments]; arguments are atoms (astring
 * chars), quoted strings (\" and \\ escapes only), literals {n} and {n+} (RFC 7888; the
 * limit PG_IMAP_MAX_PREAUTH_LITERAL = 4096 is LITERAL-'s), and parenthesised lists.
 * Commands known before login are checked for their arguments: CAPABILITY, NOOP, LOGOUT,
 * STARTTLS take none; LOGIN takes two astrings; AUTHENTICATE a mechanism atom and an
 * optional initial response (RFC 4959); ID a list of strings/NIL or NIL (RFC 2971).
 * Anything else parses generically as PG_IMAP_COMMAND_UNKNOWN.
 * Bounded by PG_IMAP_MAX_PREAUTH_{LITERAL,ARGS,DEPTH,COMMAND}. Argument values are wiped
 * when freed (LOGIN's password, AUTHENTICATE's initial response).
 *
 * Pure: no I/O, no logging.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum
{
  PG_IMAP_COMMAND_CAPABILITY,
  PG_IMAP_COMMAND_NOOP,
  PG_IMAP_COMMAND_LOGOUT,
  PG_IMAP_COMMAND_STARTTLS,
  PG_IMAP_COMMAND_AUTHENTICATE,
  PG_IMAP_COMMAND_LOGIN,
  PG_IMAP_COMMAND_ID,
  PG_IMAP_COMMAND_UNKNOWN,
  PG_IMAP_COMMAND_COUNT,
} PgImapCommandKind;

typedef enum
{
  PG_IMAP_ARG_ATOM,    /* includes NIL: see pg_imap_arg_is_nil() */
  PG_IMAP_ARG_QUOTED,  /* value unescaped */
  PG_IMAP_ARG_LITERAL, /* value may hold NUL bytes: use len */
  PG_IMAP_ARG_LIST,
} PgImapArgType;

typedef struct _PgImapArg PgImapArg;
struct _PgImapArg
{
  PgImapArgType type;
  gchar *value;    /* owned; NUL-terminated; NULL for a list */
  gsize len;       /* octets in value */
  GPtrArray *list; /* owned, of PgImapArg; NULL unless a list */
};

typedef struct
{
  gchar *tag;  /* owned */
  gchar *name; /* owned, upper-cased */
  PgImapCommandKind kind;
  GPtrArray *args; /* owned, of PgImapArg; never NULL */
} PgImapCommand;

void pg_imap_arg_free (PgImapArg *arg);
gboolean pg_imap_arg_is_nil (const PgImapArg *arg);
/* An astring's value (atom, quoted or literal), or NULL for a list. */
const char *pg_imap_arg_get_string (const PgImapArg *arg, gsize *out_len);

void pg_imap_command_free (PgImapCommand *command);
const char *pg_imap_command_kind_to_string (PgImapCommandKind kind);

typedef enum
{
  PG_IMAP_PARSE_NEED_LINE,
  PG_IMAP_PARSE_NEED_LITERAL,
  PG_IMAP_PARSE_COMPLETE,
  PG_IMAP_PARSE_ERROR,
} PgImapParseStatus;

typedef struct _PgImapCommandParser PgImapCommandParser;

PgImapCommandParser *pg_imap_command_parser_new (void);
void pg_imap_command_parser_free (PgImapCommandParser *parser);

/* Feed one line (without CRLF). error (PG_ERROR_PROTOCOL or PG_ERROR_LIMIT) is set only
 * with PG_IMAP_PARSE_ERROR. Not valid while a literal is still awaited. */
PgImapParseStatus pg_imap_command_parser_feed_line (PgImapCommandParser *parser, const char *line,
                                                    gsize len, GError **error);
/* Feed literal octets; at most get_literal_remaining() are taken, the rest is left to the
 * caller (*out_taken says how many were taken; it may be NULL). */
PgImapParseStatus pg_imap_command_parser_feed_literal (PgImapCommandParser *parser,
                                                       const void *data, gsize len,
                                                       gsize *out_taken);
gsize pg_imap_command_parser_get_literal_remaining (const PgImapCommandParser *parser);
/* TRUE when the literal awaited is synchronising ({n}): the client waits for "+ ". */
gboolean pg_imap_command_parser_is_literal_sync (const PgImapCommandParser *parser);

/* After COMPLETE: the command (transfer full); the parser is ready for the next one. */
PgImapCommand *pg_imap_command_parser_take_command (PgImapCommandParser *parser);
/* The tag of the command being parsed or that just failed, NULL if none was read. Valid
 * until the next feed. */
const char *pg_imap_command_parser_get_tag (const PgImapCommandParser *parser);
/* Drop a partial command (e.g. after STARTTLS). */
void pg_imap_command_parser_reset (PgImapCommandParser *parser);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapArg, pg_imap_arg_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapCommand, pg_imap_command_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapCommandParser, pg_imap_command_parser_free)

/* --- relay scanner (after login) ---------------------------------------------------
 * Looks at the client→server byte stream as it is relayed, without copying it: finds
 * line ends, literal announcements {n} / {n+} at the end of a line (and skips the n
 * literal octets without scanning them), and so the end of each command, with its tag,
 * command word and first argument (bounded copies, for tracking SELECT/EXAMINE, IDLE,
 * DONE, LOGOUT). "DONE" ending an IDLE arrives as a command whose tag is "DONE" and whose
 * word is empty; the relay, which knows it is idling, interprets it.
 * It never fails: what it cannot parse, it relays and reports as best it can. */

typedef struct
{
  const char *tag;      /* as sent, cut at PG_IMAP_RELAY_MAX_TAG */
  const char *word;     /* upper-cased; "UID" commands give "UID FETCH" etc. */
  const char *argument; /* the first argument after the word, unquoted, or NULL if none or
                         * if longer than PG_IMAP_RELAY_MAX_ARGUMENT or a list */
  guint64 octets;       /* octets of the whole command, literals and CRLF included */
  guint n_literals;
} PgImapRelayCommand;

typedef struct _PgImapRelayScanner PgImapRelayScanner;

PgImapRelayScanner *pg_imap_relay_scanner_new (void);
void pg_imap_relay_scanner_free (PgImapRelayScanner *scanner);

/* Scan data from the start up to the end of the next complete command. Returns the
 * octets scanned; when a command ended at the last of them, *out_command (valid until the
 * next call) describes it and TRUE is stored in *out_complete. Call again with the rest. */
gsize pg_imap_relay_scanner_scan (PgImapRelayScanner *scanner, const void *data, gsize len,
                                  gboolean *out_complete, const PgImapRelayCommand **out_command);
/* TRUE while inside a literal's octets. */
gboolean pg_imap_relay_scanner_in_literal (const PgImapRelayScanner *scanner);
/* TRUE when the last line announced a synchronising literal: the client now waits for
 * the server's "+" (the relay must keep reading the upstream). */
gboolean pg_imap_relay_scanner_awaits_continuation (const PgImapRelayScanner *scanner);
/* The command word (upper-cased, "UID FETCH" etc.) of the command being scanned as soon
 * as it is complete (the space or line end after it was scanned), else NULL: lets the
 * relay decide on a command before its line is whole. Valid until the next scan. */
const char *pg_imap_relay_scanner_peek_word (PgImapRelayScanner *scanner);
/* End the command being scanned here, as if it were complete (its awaited literal will not
 * come: the relay answered it with a tagged BAD instead of "+", RFC 9051 §7.5), and
 * describe it (valid until the next scan). */
const PgImapRelayCommand *pg_imap_relay_scanner_abandon (PgImapRelayScanner *scanner);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapRelayScanner, pg_imap_relay_scanner_free)

G_END_DECLS
