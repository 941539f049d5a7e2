/* popgate — codec: a bounded, resumable parser for IMAP *responses* (RFC 3501, RFC 9051).
 *
 * Pure: no I/O, no logging. The caller feeds whatever bytes it has; the parser consumes
 * up to the next event and says how many bytes it took, so it can be resumed at any byte
 * boundary and the caller can stop feeding after any event (back-pressure).
 *
 * Message bodies (the literal value of BODY[...], BINARY[...], RFC822, RFC822.HEADER and
 * RFC822.TEXT inside an untagged FETCH) are never buffered: they come out as BODY_BEGIN,
 * BODY_CHUNK* (each at most PG_UPSTREAM_BODY_CHUNK bytes, pointing into the caller's
 * buffer) and BODY_END, and the finished FETCH response holds a PG_IMAP_VALUE_STREAMED
 * placeholder in their place. Everything else is bounded by the PG_UPSTREAM_* limits in
 * pg-limits.h; exceeding one is a PG_ERROR, never an allocation.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum
{
  PG_IMAP_VALUE_ATOM,     /* str: the atom as sent (flags, BODY[...]<n> items included) */
  PG_IMAP_VALUE_NUMBER,   /* number; str holds the digits too */
  PG_IMAP_VALUE_STRING,   /* quoted string or literal; str/len (may contain NUL if literal) */
  PG_IMAP_VALUE_NIL,      /* NIL */
  PG_IMAP_VALUE_LIST,     /* list of PgImapValue* */
  PG_IMAP_VALUE_STREAMED, /* a body literal already delivered as chunks; number = its size */
} PgImapValueType;

typedef struct _PgImapValue PgImapValue;
struct _PgImapValue
{
  PgImapValueType type;
  guint64 number;  /* NUMBER: the value; STREAMED: the literal's size */
  gsize len;       /* ATOM, NUMBER, STRING: bytes in str (without the NUL) */
  gchar *str;      /* owned, NUL-terminated; NULL for NIL, LIST, STREAMED. May share the
                    * value's allocation: freed only by pg_imap_value_free(), never alone */
  GPtrArray *list; /* owned, of PgImapValue*; LIST only */
};

typedef enum
{
  PG_IMAP_RESPONSE_TAGGED,       /* "tag OK|NO|BAD ..." */
  PG_IMAP_RESPONSE_UNTAGGED,     /* "* ..." */
  PG_IMAP_RESPONSE_CONTINUATION, /* "+ ..." */
} PgImapResponseKind;

typedef enum
{
  PG_IMAP_STATUS_NONE, /* a data response: CAPABILITY, FETCH, EXISTS, METADATA, ... */
  PG_IMAP_STATUS_OK,
  PG_IMAP_STATUS_NO,
  PG_IMAP_STATUS_BAD,
  PG_IMAP_STATUS_PREAUTH,
  PG_IMAP_STATUS_BYE,
} PgImapStatus;

/* One complete response line (with its literals). */
typedef struct
{
  PgImapResponseKind kind;
  gchar *tag;          /* owned; TAGGED only, else NULL */
  gboolean has_number; /* "* 23 EXISTS", "* 5 FETCH (...)" */
  guint64 number;
  gchar *keyword;       /* owned, upper case ("OK", "FETCH", "CAPABILITY"); NULL for "+" */
  PgImapStatus status;  /* for OK/NO/BAD/PREAUTH/BYE, else NONE */
  gchar *code;          /* owned, upper case: the atom of a "[CODE ...]"; NULL if none */
  GPtrArray *code_args; /* owned ref, of PgImapValue*: the rest of the code; empty if none.
                         * Read-only, as args: an empty one is shared between responses */
  gchar *text;          /* owned: the human text of a status or continuation; "" if none.
                         * For a continuation this is the raw text (e.g. base64). */
  GPtrArray *args;      /* owned ref, of PgImapValue*: the values of a data response (read-only) */
} PgImapResponse;

void pg_imap_response_free (PgImapResponse *response);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapResponse, pg_imap_response_free)

void pg_imap_value_free (PgImapValue *value);

/* The string of an ATOM, NUMBER or STRING value; NULL for anything else (NIL included). */
const char *pg_imap_value_get_string (const PgImapValue *value);
/* TRUE and *out_number for a NUMBER (or an all-digit STRING, as some servers quote numbers). */
gboolean pg_imap_value_get_number (const PgImapValue *value, guint64 *out_number);
/* TRUE if value is an ATOM equal to name, ignoring ASCII case. */
gboolean pg_imap_value_is_atom (const PgImapValue *value, const char *name);

/* For an untagged "n FETCH (name value ...)": the value after the item called `name`
 * (ASCII case ignored, e.g. "UID", "RFC822.SIZE", "FLAGS", "BODY[]"); NULL if absent or if
 * this is not a FETCH. */
const PgImapValue *pg_imap_response_get_fetch_item (const PgImapResponse *response,
                                                    const char *name);

/* An RFC 3501 date-time as INTERNALDATE sends it: "dd-Mon-yyyy hh:mm:ss +zzzz" (the day
 * may be space-padded: " 1-Jan-2024"; month names in ASCII case ignored), without the
 * quotes. On success *out_unix is seconds since the epoch (UTC). Anything else, a field out
 * of range or a year outside 1900..9999, is FALSE. Pure and bounded by len. */
gboolean pg_imap_parse_date_time (const char *text, gsize len, gint64 *out_unix);

/* A canonical one-line rendering (tests, fuzzing, debug logs after pg_log_escape). */
gchar *pg_imap_response_dump (const PgImapResponse *response);

typedef enum
{
  PG_IMAP_PARSE_NEED_MORE,  /* everything fed was consumed; feed more */
  PG_IMAP_PARSE_RESPONSE,   /* event.response is complete and now the caller's */
  PG_IMAP_PARSE_BODY_BEGIN, /* a body literal starts: event.seq, .item, .size */
  PG_IMAP_PARSE_BODY_CHUNK, /* event.data/.len at event.offset of the body */
  PG_IMAP_PARSE_BODY_END,   /* the body literal is complete (offset == size) */
  PG_IMAP_PARSE_ERROR,      /* error is set; the parser is dead, drop the connection */
} PgImapParseResult;

typedef struct
{
  PgImapResponse *response; /* RESPONSE: owned by the caller; else NULL */
  guint64 seq;              /* BODY_*: the FETCH's message sequence number */
  guint64 uid;              /* BODY_*: the UID if the FETCH gave "UID n" before the body
                             * (it does when asked for UID first), else 0 */
  const char *item;         /* BODY_*: item name as sent ("BODY[]", "BODY[TEXT]<0>");
                             * unowned, valid until the next feed */
  guint64 size;             /* BODY_*: total size of the literal */
  guint64 offset;           /* BODY_CHUNK: where data starts; BODY_END: == size */
  const guint8 *data;       /* BODY_CHUNK: unowned, points into the fed buffer */
  gsize len;                /* BODY_CHUNK: 1..PG_UPSTREAM_BODY_CHUNK bytes */
} PgImapEvent;

typedef struct _PgImapParser PgImapParser;

PgImapParser *pg_imap_parser_new (void);
void pg_imap_parser_free (PgImapParser *parser);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgImapParser, pg_imap_parser_free)

/* Forget any partial response (e.g. after a STARTTLS handshake). */
void pg_imap_parser_reset (PgImapParser *parser);

/* Feed `len` bytes (len may be 0 to collect a pending BODY_END). Consumes up to and including
 * the bytes of the next event, sets *out_consumed and fills *out_event. Call again with the
 * rest of the data until NEED_MORE. On PG_IMAP_PARSE_ERROR the error is set (PG_ERROR_PROTOCOL,
 * _LINE_TOO_LONG or _LIMIT) and every later call fails the same way. */
PgImapParseResult pg_imap_parser_feed (PgImapParser *parser, const guint8 *data, gsize len,
                                       gsize *out_consumed, PgImapEvent *out_event, GError **error);

G_END_DECLS
