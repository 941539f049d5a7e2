/* popgate — codec: POP3 command parser (RFC 1939, 2449, 2595, 5034, 6856).
 *
 * One line (terminator already stripped, e.g. by PgLineReader) in, one PgPop3Command
 * out. Keywords are case-insensitive; each command takes exactly the arguments its RFC
 * allows. Arguments are separated by one or more spaces (trailing spaces are ignored),
 * except PASS, whose argument is the rest of the line after "PASS " verbatim: passwords
 * may contain spaces. Message numbers are strict decimal (no sign, no "+", no spaces,
 * overflow-checked) in 1..G_MAXUINT32; TOP's line count may be 0.
 *
 * Pure: no I/O, no logging. Arguments are copied; pg_pop3_command_clear() wipes them
 * (PASS, APOP and AUTH arguments are secrets).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum
{
  PG_POP3_COMMAND_USER,
  PG_POP3_COMMAND_PASS,
  PG_POP3_COMMAND_APOP,
  PG_POP3_COMMAND_AUTH,
  PG_POP3_COMMAND_STLS,
  PG_POP3_COMMAND_CAPA,
  PG_POP3_COMMAND_QUIT,
  PG_POP3_COMMAND_STAT,
  PG_POP3_COMMAND_LIST,
  PG_POP3_COMMAND_UIDL,
  PG_POP3_COMMAND_RETR,
  PG_POP3_COMMAND_TOP,
  PG_POP3_COMMAND_DELE,
  PG_POP3_COMMAND_RSET,
  PG_POP3_COMMAND_NOOP,
  PG_POP3_COMMAND_UTF8,
  PG_POP3_COMMAND_UNKNOWN,
  PG_POP3_COMMAND_COUNT,
} PgPop3CommandKind;

typedef enum
{
  PG_POP3_PARSE_OK,
  PG_POP3_PARSE_UNKNOWN_COMMAND,  /* empty line or unknown keyword */
  PG_POP3_PARSE_MISSING_ARGUMENT, /* fewer arguments than the command needs */
  PG_POP3_PARSE_TOO_MANY_ARGUMENTS,
  PG_POP3_PARSE_BAD_NUMBER,    /* a message number / line count that is not valid */
  PG_POP3_PARSE_BAD_CHARACTER, /* NUL, CR, LF or another control byte in the line */
  PG_POP3_PARSE_COUNT,
} PgPop3ParseResult;

typedef struct
{
  PgPop3CommandKind kind;
  /* Present for LIST n, UIDL n, RETR, DELE, TOP: the message number (1..G_MAXUINT32). */
  gboolean has_message;
  guint32 message;
  /* TOP's line count (0..G_MAXUINT32). */
  guint32 lines;
  /* Owned, NUL-terminated, NULL when absent:
   *   USER name; PASS password; APOP name digest; AUTH [mechanism [initial-response]]. */
  gchar *arg1;
  gchar *arg2;
} PgPop3Command;

/* Parse one command line. out_command is always reset: its kind says which command was
 * recognised (PG_POP3_COMMAND_UNKNOWN if none), so a front end can name it in a -ERR;
 * its arguments are set only when PG_POP3_PARSE_OK is returned. Call
 * pg_pop3_command_clear() on it afterwards in every case. */
PgPop3ParseResult pg_pop3_command_parse (const char *line, gsize len, PgPop3Command *out_command);

/* Wipe and free the arguments; the struct can be reused. */
void pg_pop3_command_clear (PgPop3Command *command);

/* "USER", "PASS", …, "UNKNOWN". */
const char *pg_pop3_command_kind_to_string (PgPop3CommandKind kind);
/* A short English text for a -ERR reply, e.g. "Unknown command". */
const char *pg_pop3_parse_result_to_string (PgPop3ParseResult result);

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (PgPop3Command, pg_pop3_command_clear)

G_END_DECLS
