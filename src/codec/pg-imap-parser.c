/* popgate — codec: bounded, resumable IMAP response parser.
 *
 * A byte-driven state machine: every piece of state lives in PgImapParser, so the caller
 * may split its input anywhere. Runs of bytes that only grow a token (an atom, a tag, a
 * quoted string, text) are appended in one go; literal data is copied in bulk; body
 * literals inside an untagged FETCH are handed out as chunks that point into the caller's
 * buffer.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-imap-parser.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

typedef enum
{
  PG_IMAP_PARSER_STATE_START,      /* first byte of a response */
  PG_IMAP_PARSER_STATE_STAR,       /* after '*': expect SP */
  PG_IMAP_PARSER_STATE_PLUS,       /* after '+': expect SP or CR */
  PG_IMAP_PARSER_STATE_CONT_TEXT,  /* continuation text up to CR */
  PG_IMAP_PARSER_STATE_TAG,        /* tag characters up to SP */
  PG_IMAP_PARSER_STATE_KEYWORD,    /* number or keyword */
  PG_IMAP_PARSER_STATE_RESP_TEXT,  /* first byte of resp-text: '[' or text */
  PG_IMAP_PARSER_STATE_CODE_ATOM,  /* the atom of a [CODE ...] */
  PG_IMAP_PARSER_STATE_CODE_END,   /* after ']' */
  PG_IMAP_PARSER_STATE_TEXT,       /* human text up to CR */
  PG_IMAP_PARSER_STATE_LF,         /* after the final CR */
  PG_IMAP_PARSER_STATE_VALUE,      /* between values */
  PG_IMAP_PARSER_STATE_ATOM,       /* inside an atom */
  PG_IMAP_PARSER_STATE_SECTION,    /* inside the [...] of BODY[...] */
  PG_IMAP_PARSER_STATE_QUOTED,     /* inside "..." */
  PG_IMAP_PARSER_STATE_QUOTED_ESC, /* after '\' inside "..." */
  PG_IMAP_PARSER_STATE_LIT_TILDE,  /* after '~': expect '{' */
  PG_IMAP_PARSER_STATE_LIT_SIZE,   /* digits of {n} */
  PG_IMAP_PARSER_STATE_LIT_CR,     /* after '}' */
  PG_IMAP_PARSER_STATE_LIT_LF,     /* after "}\r" */
  PG_IMAP_PARSER_STATE_LIT_DATA,   /* copying a small literal */
  PG_IMAP_PARSER_STATE_BODY,       /* streaming a body literal */
  PG_IMAP_PARSER_STATE_FAILED,     /* an error was reported */
  PG_IMAP_PARSER_STATE_COUNT
} PgImapParserState;

/* Longest decimal literal size we read: 2^64-1 has 20 digits. */
#define PG_IMAP_PARSER_MAX_SIZE_DIGITS 20

struct _PgImapParser
{
  PgImapParserState state;
  PgImapResponse *response; /* owned: the response being built, NULL at START */
  GString *tok;             /* owned: the token being read (bounded by the line limit) */
  gboolean code_mode;       /* values are inside "[CODE ...]" */
  GPtrArray *stack[PG_UPSTREAM_MAX_DEPTH + 1]; /* unowned: [0] root list, then open lists */
  guint depth;                                 /* open lists */
  gsize line_len;     /* bytes of the current line segment (literals excluded) */
  gsize total;        /* buffered bytes of this response (lines + small literals) */
  guint n_values;     /* values in this response */
  gboolean lit_tilde; /* the literal is a literal8 (~{n}) */
  guint lit_digits;
  guint64 lit_size;
  guint64 lit_done;       /* bytes of the literal consumed so far */
  gchar *lit_buf;         /* owned: small literal being copied */
  const gchar *body_item; /* unowned: the item name's atom of the body being streamed, in
                           * the response being built */
  guint64 body_uid;       /* UID of the FETCH whose body is being streamed, 0 if not given */
  GError *error;          /* owned: the error that killed the parser */
};

/* A value with a copy of len bytes of str (NULL: no string) in the same allocation. */
static PgImapValue *
pg_imap_parser_value_new (PgImapValueType type, const gchar *str, gsize len)
{
  PgImapValue *value;

  if (str == NULL)
    {
      value = g_new0 (PgImapValue, 1);
      value->type = type;
      return value;
    }
  /* len is bounded by the line limit: no overflow. */
  value = g_malloc (sizeof (PgImapValue) + len + 1);
  value->type = type;
  value->number = 0;
  value->len = len;
  value->str = (gchar *) (value + 1);
  value->list = NULL;
  memcpy (value->str, str, len);
  value->str[len] = '\0';
  return value;
}

void
pg_imap_value_free (PgImapValue *value)
{
  if (value == NULL)
    return;
  /* A string that came in a value's own allocation goes with it (small literals have their
   * own buffer). */
  if (value->str != (gchar *) (value + 1))
    g_free (value->str);
  if (value->list != NULL)
    g_ptr_array_unref (value->list);
  g_free (value);
}

void
pg_imap_response_free (PgImapResponse *response)
{
  if (response == NULL)
    return;
  g_free (response->tag);
  g_free (response->keyword);
  g_free (response->code);
  g_free (response->text);
  g_clear_pointer (&response->code_args, g_ptr_array_unref);
  g_clear_pointer (&response->args, g_ptr_array_unref);
  g_free (response);
}

static GPtrArray *
pg_imap_parser_new_value_array (void)
{
  return g_ptr_array_new_with_free_func ((GDestroyNotify) pg_imap_value_free);
}

/* A reference to the one empty array that every response without values or without code
 * arguments shares (most have one or the other, a tagged OK both): two GPtrArrays made and
 * freed per response otherwise. Never written to (the header makes args and code_args
 * read-only); the parser puts a real one in place before it adds a value. */
static GPtrArray *
pg_imap_parser_empty_values (void)
{
  static GPtrArray *empty = NULL;
  static gsize done = 0;

  if (g_once_init_enter (&done))
    {
      empty = pg_imap_parser_new_value_array ();
      g_once_init_leave (&done, 1);
    }
  return g_ptr_array_ref (empty);
}

const char *
pg_imap_value_get_string (const PgImapValue *value)
{
  if (value == NULL)
    return NULL;
  switch (value->type)
    {
    case PG_IMAP_VALUE_ATOM:
    case PG_IMAP_VALUE_NUMBER:
    case PG_IMAP_VALUE_STRING:
      return value->str;
    case PG_IMAP_VALUE_NIL:
    case PG_IMAP_VALUE_LIST:
    case PG_IMAP_VALUE_STREAMED:
      return NULL;
    }
  return NULL;
}

static gboolean
pg_imap_parser_parse_number (const char *s, gsize len, guint64 *out_number)
{
  guint64 n = 0;

  if (len == 0 || len > PG_IMAP_PARSER_MAX_SIZE_DIGITS)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    {
      guint d;
      if (!g_ascii_isdigit (s[i]))
        return FALSE;
      d = (guint) (s[i] - '0');
      if (n > (G_MAXUINT64 - d) / 10)
        return FALSE;
      n = n * 10 + d;
    }
  *out_number = n;
  return TRUE;
}

gboolean
pg_imap_value_get_number (const PgImapValue *value, guint64 *out_number)
{
  if (value == NULL)
    return FALSE;
  if (value->type == PG_IMAP_VALUE_NUMBER)
    {
      *out_number = value->number;
      return TRUE;
    }
  if (value->type == PG_IMAP_VALUE_STRING)
    return pg_imap_parser_parse_number (value->str, value->len, out_number);
  return FALSE;
}

gboolean
pg_imap_value_is_atom (const PgImapValue *value, const char *name)
{
  return value != NULL && value->type == PG_IMAP_VALUE_ATOM
         && g_ascii_strcasecmp (value->str, name) == 0;
}

const PgImapValue *
pg_imap_response_get_fetch_item (const PgImapResponse *response, const char *name)
{
  const PgImapValue *list;

  if (response == NULL || response->kind != PG_IMAP_RESPONSE_UNTAGGED
      || g_strcmp0 (response->keyword, "FETCH") != 0 || response->args->len < 1)
    return NULL;
  list = g_ptr_array_index (response->args, 0);
  if (list->type != PG_IMAP_VALUE_LIST)
    return NULL;
  for (guint i = 0; i + 1 < list->list->len; i += 2)
    {
      if (pg_imap_value_is_atom (g_ptr_array_index (list->list, i), name))
        return g_ptr_array_index (list->list, i + 1);
    }
  return NULL;
}

static void pg_imap_parser_dump_values (GString *out, const GPtrArray *values);

static void
pg_imap_parser_dump_value (GString *out, const PgImapValue *value)
{
  switch (value->type)
    {
    case PG_IMAP_VALUE_ATOM:
      g_string_append (out, value->str);
      return;
    case PG_IMAP_VALUE_NUMBER:
      g_string_append_printf (out, "#%" G_GUINT64_FORMAT, value->number);
      return;
    case PG_IMAP_VALUE_STRING:
      {
        g_autofree gchar *escaped = pg_log_escape (value->str, value->len, G_MAXSIZE);
        g_string_append_printf (out, "\"%s\"", escaped);
        return;
      }
    case PG_IMAP_VALUE_NIL:
      g_string_append (out, "NIL");
      return;
    case PG_IMAP_VALUE_LIST:
      g_string_append_c (out, '(');
      pg_imap_parser_dump_values (out, value->list);
      g_string_append_c (out, ')');
      return;
    case PG_IMAP_VALUE_STREAMED:
      g_string_append_printf (out, "<body %" G_GUINT64_FORMAT ">", value->number);
      return;
    }
}

static void
pg_imap_parser_dump_values (GString *out, const GPtrArray *values)
{
  for (guint i = 0; i < values->len; i++)
    {
      if (i > 0)
        g_string_append_c (out, ' ');
      pg_imap_parser_dump_value (out, g_ptr_array_index (values, i));
    }
}

gchar *
pg_imap_response_dump (const PgImapResponse *response)
{
  GString *out = g_string_new (NULL);

  switch (response->kind)
    {
    case PG_IMAP_RESPONSE_TAGGED:
      g_string_append_printf (out, "TAG:%s", response->tag);
      break;
    case PG_IMAP_RESPONSE_UNTAGGED:
      g_string_append (out, "*");
      break;
    case PG_IMAP_RESPONSE_CONTINUATION:
      g_string_append (out, "+");
      break;
    }
  if (response->has_number)
    g_string_append_printf (out, " #%" G_GUINT64_FORMAT, response->number);
  if (response->keyword != NULL)
    g_string_append_printf (out, " %s", response->keyword);
  if (response->code != NULL)
    {
      g_string_append_printf (out, " [%s", response->code);
      if (response->code_args->len > 0)
        {
          g_string_append_c (out, ' ');
          pg_imap_parser_dump_values (out, response->code_args);
        }
      g_string_append_c (out, ']');
    }
  if (response->args->len > 0)
    {
      g_string_append_c (out, ' ');
      pg_imap_parser_dump_values (out, response->args);
    }
  if (response->text != NULL)
    {
      g_autofree gchar *escaped
          = pg_log_escape (response->text, strlen (response->text), G_MAXSIZE);
      g_string_append_printf (out, " |%s|", escaped);
    }
  return g_string_free (out, FALSE);
}

/* --- the parser ---------------------------------------------------------------------- */

static void pg_imap_parser_init_run_classes (void);

PgImapParser *
pg_imap_parser_new (void)
{
  PgImapParser *parser = g_new0 (PgImapParser, 1);

  pg_imap_parser_init_run_classes ();
  parser->tok = g_string_sized_new (64);
  parser->state = PG_IMAP_PARSER_STATE_START;
  return parser;
}

void
pg_imap_parser_reset (PgImapParser *parser)
{
  g_clear_pointer (&parser->response, pg_imap_response_free);
  g_string_truncate (parser->tok, 0);
  g_clear_pointer (&parser->lit_buf, g_free);
  parser->body_item = NULL;
  g_clear_error (&parser->error);
  memset (parser->stack, 0, sizeof parser->stack);
  parser->depth = 0;
  parser->code_mode = FALSE;
  parser->line_len = 0;
  parser->total = 0;
  parser->n_values = 0;
  parser->lit_tilde = FALSE;
  parser->lit_digits = 0;
  parser->lit_size = 0;
  parser->lit_done = 0;
  parser->state = PG_IMAP_PARSER_STATE_START;
}

void
pg_imap_parser_free (PgImapParser *parser)
{
  if (parser == NULL)
    return;
  pg_imap_parser_reset (parser);
  g_string_free (parser->tok, TRUE);
  g_free (parser);
}

static gboolean pg_imap_parser_fail (PgImapParser *parser, GError **error, gint code,
                                     const char *format, ...) G_GNUC_PRINTF (4, 5);

static gboolean
pg_imap_parser_fail (PgImapParser *parser, GError **error, gint code, const char *format, ...)
{
  va_list args;
  g_autofree gchar *message = NULL;

  va_start (args, format);
  message = g_strdup_vprintf (format, args);
  va_end (args);
  g_clear_error (&parser->error);
  parser->error = g_error_new (PG_ERROR, code, "IMAP response: %s", message);
  parser->state = PG_IMAP_PARSER_STATE_FAILED;
  g_propagate_error (error, g_error_copy (parser->error));
  return FALSE;
}

/* Bytes that may appear in an atom here. Stricter than nothing, looser than RFC 3501's
 * ATOM-CHAR: '\' (flags), '%' and '*' (LIST, "\*") and ']' outside codes are accepted, as
 * real servers send them unquoted. */
static gboolean
pg_imap_parser_is_atom_char (guchar c, gboolean code_mode)
{
  if (c <= 0x20 || c >= 0x7f)
    return FALSE;
  switch (c)
    {
    case '(':
    case ')':
    case '{':
    case '"':
      return FALSE;
    case ']':
      return !code_mode;
    default:
      return TRUE;
    }
}

static gboolean
pg_imap_parser_is_tag_char (guchar c)
{
  return pg_imap_parser_is_atom_char (c, FALSE) && c != '+' && c != '*' && c != '%' && c != '\\';
}

/* Byte classes for the runs that only grow the token: a byte of class X in a state that
 * takes runs of X is appended to tok and leaves the state as it is, exactly as the
 * byte-at-a-time path would (pg_imap_parser_run_class says which state takes which). */
enum
{
  PG_IMAP_PARSER_RUN_ATOM = 1 << 0,      /* ATOM outside a code: an atom byte but '[' */
  PG_IMAP_PARSER_RUN_ATOM_CODE = 1 << 1, /* ATOM in a code, KEYWORD, CODE_ATOM */
  PG_IMAP_PARSER_RUN_TAG = 1 << 2,       /* TAG */
  PG_IMAP_PARSER_RUN_TEXT = 1 << 3,      /* TEXT, CONT_TEXT: all but CR, LF, NUL */
  PG_IMAP_PARSER_RUN_QUOTED = 1 << 4,    /* QUOTED: all but '"', '\\', CR, LF, NUL */
  PG_IMAP_PARSER_RUN_SECTION = 1 << 5,   /* SECTION: all but '[', ']', CR, LF, NUL */
};

static guint8 pg_imap_parser_run_classes[256];

static void
pg_imap_parser_init_run_classes (void)
{
  static gsize done = 0;

  if (!g_once_init_enter (&done))
    return;
  for (guint c = 0; c < 256; c++)
    {
      guint8 classes = 0;
      gboolean line_end = c == '\r' || c == '\n' || c == '\0';

      if (pg_imap_parser_is_atom_char ((guchar) c, FALSE) && c != '[')
        classes |= PG_IMAP_PARSER_RUN_ATOM;
      if (pg_imap_parser_is_atom_char ((guchar) c, TRUE))
        classes |= PG_IMAP_PARSER_RUN_ATOM_CODE;
      if (pg_imap_parser_is_tag_char ((guchar) c))
        classes |= PG_IMAP_PARSER_RUN_TAG;
      if (!line_end)
        classes |= PG_IMAP_PARSER_RUN_TEXT;
      if (!line_end && c != '"' && c != '\\')
        classes |= PG_IMAP_PARSER_RUN_QUOTED;
      if (!line_end && c != '[' && c != ']')
        classes |= PG_IMAP_PARSER_RUN_SECTION;
      pg_imap_parser_run_classes[c] = classes;
    }
  g_once_init_leave (&done, 1);
}

/* g_string_append_len() without its overlap and position checks when tok has room, as
 * g_string_append_c() does inline: most tokens are a few bytes. */
static inline void
pg_imap_parser_tok_append (PgImapParser *parser, const guint8 *data, gsize n)
{
  GString *tok = parser->tok;

  if (tok->len + n < tok->allocated_len)
    {
      memcpy (tok->str + tok->len, data, n);
      tok->len += n;
      tok->str[tok->len] = '\0';
    }
  else
    g_string_append_len (tok, (const gchar *) data, (gssize) n);
}

/* The byte class whose runs the current state takes in bulk; 0 if it takes none. */
static guint8
pg_imap_parser_run_class (const PgImapParser *parser)
{
  switch (parser->state)
    {
    case PG_IMAP_PARSER_STATE_ATOM:
      return parser->code_mode ? PG_IMAP_PARSER_RUN_ATOM_CODE : PG_IMAP_PARSER_RUN_ATOM;
    case PG_IMAP_PARSER_STATE_KEYWORD:
    case PG_IMAP_PARSER_STATE_CODE_ATOM:
      return PG_IMAP_PARSER_RUN_ATOM_CODE;
    case PG_IMAP_PARSER_STATE_TAG:
      return PG_IMAP_PARSER_RUN_TAG;
    case PG_IMAP_PARSER_STATE_CONT_TEXT:
    case PG_IMAP_PARSER_STATE_TEXT:
      return PG_IMAP_PARSER_RUN_TEXT;
    case PG_IMAP_PARSER_STATE_QUOTED:
      return PG_IMAP_PARSER_RUN_QUOTED;
    case PG_IMAP_PARSER_STATE_SECTION:
      return PG_IMAP_PARSER_RUN_SECTION;
    case PG_IMAP_PARSER_STATE_START:
    case PG_IMAP_PARSER_STATE_STAR:
    case PG_IMAP_PARSER_STATE_PLUS:
    case PG_IMAP_PARSER_STATE_RESP_TEXT:
    case PG_IMAP_PARSER_STATE_CODE_END:
    case PG_IMAP_PARSER_STATE_LF:
    case PG_IMAP_PARSER_STATE_VALUE:
    case PG_IMAP_PARSER_STATE_QUOTED_ESC:
    case PG_IMAP_PARSER_STATE_LIT_TILDE:
    case PG_IMAP_PARSER_STATE_LIT_SIZE:
    case PG_IMAP_PARSER_STATE_LIT_CR:
    case PG_IMAP_PARSER_STATE_LIT_LF:
    case PG_IMAP_PARSER_STATE_LIT_DATA:
    case PG_IMAP_PARSER_STATE_BODY:
    case PG_IMAP_PARSER_STATE_FAILED:
    case PG_IMAP_PARSER_STATE_COUNT:
      break;
    }
  return 0;
}

static PgImapStatus
pg_imap_parser_status_from_keyword (const char *keyword)
{
  static const struct
  {
    const char *name;
    PgImapStatus status;
  } table[] = {
    { "OK", PG_IMAP_STATUS_OK },   { "NO", PG_IMAP_STATUS_NO },
    { "BAD", PG_IMAP_STATUS_BAD }, { "PREAUTH", PG_IMAP_STATUS_PREAUTH },
    { "BYE", PG_IMAP_STATUS_BYE },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (table); i++)
    if (strcmp (keyword, table[i].name) == 0)
      return table[i].status;
  return PG_IMAP_STATUS_NONE;
}

static void
pg_imap_parser_begin_response (PgImapParser *parser, PgImapResponseKind kind)
{
  PgImapResponse *response = g_new0 (PgImapResponse, 1);

  response->kind = kind;
  response->args = pg_imap_parser_empty_values ();
  response->code_args = pg_imap_parser_empty_values ();
  parser->response = response;
  parser->depth = 0;
  parser->n_values = 0;
  parser->total = 0;
  g_string_truncate (parser->tok, 0);
}

/* Append a value to the innermost open list, enforcing the count limits. Takes value. */
static gboolean
pg_imap_parser_add_value (PgImapParser *parser, PgImapValue *value, GError **error)
{
  GPtrArray *list = parser->stack[parser->depth];

  if (parser->n_values >= PG_UPSTREAM_MAX_ITEMS || list->len >= PG_UPSTREAM_MAX_ITEMS)
    {
      pg_imap_value_free (value);
      return pg_imap_parser_fail (parser, error, PG_ERROR_LIMIT, "more than %d values",
                                  PG_UPSTREAM_MAX_ITEMS);
    }
  parser->n_values++;
  g_ptr_array_add (list, value);
  return TRUE;
}

static gboolean
pg_imap_parser_finish_atom (PgImapParser *parser, GError **error)
{
  PgImapValue *value;
  guint64 number;

  if (g_ascii_strcasecmp (parser->tok->str, "NIL") == 0)
    value = pg_imap_parser_value_new (PG_IMAP_VALUE_NIL, NULL, 0);
  else if (pg_imap_parser_parse_number (parser->tok->str, parser->tok->len, &number))
    {
      value = pg_imap_parser_value_new (PG_IMAP_VALUE_NUMBER, parser->tok->str, parser->tok->len);
      value->number = number;
    }
  else
    value = pg_imap_parser_value_new (PG_IMAP_VALUE_ATOM, parser->tok->str, parser->tok->len);
  g_string_truncate (parser->tok, 0);
  return pg_imap_parser_add_value (parser, value, error);
}

/* Is the literal that starts now a message body inside an untagged FETCH's item list? */
static gboolean
pg_imap_parser_literal_is_body (PgImapParser *parser)
{
  const PgImapResponse *response = parser->response;
  const GPtrArray *list;
  const PgImapValue *name;

  if (parser->code_mode || parser->depth != 1 || response->kind != PG_IMAP_RESPONSE_UNTAGGED
      || !response->has_number || g_strcmp0 (response->keyword, "FETCH") != 0)
    return FALSE;
  list = parser->stack[1];
  if (list->len % 2 != 1)
    return FALSE;
  name = g_ptr_array_index (list, list->len - 1);
  if (name->type != PG_IMAP_VALUE_ATOM)
    return FALSE;
  return g_ascii_strncasecmp (name->str, "BODY[", 5) == 0
         || g_ascii_strncasecmp (name->str, "BINARY[", 7) == 0
         || g_ascii_strcasecmp (name->str, "RFC822") == 0
         || g_ascii_strcasecmp (name->str, "RFC822.HEADER") == 0
         || g_ascii_strcasecmp (name->str, "RFC822.TEXT") == 0;
}

static gboolean
pg_imap_parser_add_to_total (PgImapParser *parser, guint64 bytes, GError **error)
{
  if (bytes > PG_UPSTREAM_MAX_RESPONSE || parser->total > PG_UPSTREAM_MAX_RESPONSE - bytes)
    return pg_imap_parser_fail (parser, error, PG_ERROR_LIMIT, "response larger than %d bytes",
                                PG_UPSTREAM_MAX_RESPONSE);
  parser->total += (gsize) bytes;
  return TRUE;
}

/* Process one byte of a value context (lists, atoms, strings, literal headers). Returns
 * FALSE on error. Sets *out_reprocess when the byte ended an atom and must be looked at
 * again in the VALUE state. */
static gboolean
pg_imap_parser_value_byte (PgImapParser *parser, guchar c, gboolean *out_reprocess, GError **error)
{
  *out_reprocess = FALSE;

  switch (parser->state)
    {
    case PG_IMAP_PARSER_STATE_VALUE:
      if (c == ' ')
        return TRUE;
      if (c == '(')
        {
          PgImapValue *value;
          if (parser->depth >= PG_UPSTREAM_MAX_DEPTH)
            return pg_imap_parser_fail (parser, error, PG_ERROR_LIMIT,
                                        "lists nested deeper than %d", PG_UPSTREAM_MAX_DEPTH);
          value = pg_imap_parser_value_new (PG_IMAP_VALUE_LIST, NULL, 0);
          value->list = pg_imap_parser_new_value_array ();
          if (!pg_imap_parser_add_value (parser, value, error))
            return FALSE;
          parser->stack[++parser->depth] = value->list;
          return TRUE;
        }
      if (c == ')')
        {
          if (parser->depth == 0)
            return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "unbalanced ')'");
          parser->stack[parser->depth--] = NULL;
          return TRUE;
        }
      if (c == '"')
        {
          parser->state = PG_IMAP_PARSER_STATE_QUOTED;
          return TRUE;
        }
      if (c == '{' || c == '~')
        {
          if (parser->code_mode)
            return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                        "literal inside a response code");
          parser->lit_tilde = (c == '~');
          parser->lit_digits = 0;
          parser->lit_size = 0;
          parser->state = c == '~' ? PG_IMAP_PARSER_STATE_LIT_TILDE : PG_IMAP_PARSER_STATE_LIT_SIZE;
          return TRUE;
        }
      if (c == '\r')
        {
          if (parser->code_mode)
            return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                        "response code without ']'");
          if (parser->depth > 0)
            return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                        "line ends inside a list");
          parser->state = PG_IMAP_PARSER_STATE_LF;
          return TRUE;
        }
      if (c == ']' && parser->code_mode)
        {
          if (parser->depth > 0)
            return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                        "response code ends inside a list");
          parser->code_mode = FALSE;
          parser->state = PG_IMAP_PARSER_STATE_CODE_END;
          return TRUE;
        }
      if (pg_imap_parser_is_atom_char (c, parser->code_mode))
        {
          g_string_append_c (parser->tok, (gchar) c);
          parser->state = (c == '[' && !parser->code_mode) ? PG_IMAP_PARSER_STATE_SECTION
                                                           : PG_IMAP_PARSER_STATE_ATOM;
          return TRUE;
        }
      return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "unexpected byte 0x%02x", c);

    case PG_IMAP_PARSER_STATE_ATOM:
      if (pg_imap_parser_is_atom_char (c, parser->code_mode))
        {
          g_string_append_c (parser->tok, (gchar) c);
          if (c == '[' && !parser->code_mode)
            parser->state = PG_IMAP_PARSER_STATE_SECTION;
          return TRUE;
        }
      if (!pg_imap_parser_finish_atom (parser, error))
        return FALSE;
      parser->state = PG_IMAP_PARSER_STATE_VALUE;
      *out_reprocess = TRUE;
      return TRUE;

    case PG_IMAP_PARSER_STATE_SECTION:
      /* BODY[HEADER.FIELDS (FROM TO)]: spaces and parentheses belong to the atom. */
      if (c == '\r' || c == '\n' || c == '\0')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "line ends inside a section");
      if (c == '[')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "nested '[' in a section");
      g_string_append_c (parser->tok, (gchar) c);
      if (c == ']')
        parser->state = PG_IMAP_PARSER_STATE_ATOM;
      return TRUE;

    case PG_IMAP_PARSER_STATE_QUOTED:
      if (c == '"')
        {
          PgImapValue *value
              = pg_imap_parser_value_new (PG_IMAP_VALUE_STRING, parser->tok->str, parser->tok->len);
          g_string_truncate (parser->tok, 0);
          parser->state = PG_IMAP_PARSER_STATE_VALUE;
          return pg_imap_parser_add_value (parser, value, error);
        }
      if (c == '\\')
        {
          parser->state = PG_IMAP_PARSER_STATE_QUOTED_ESC;
          return TRUE;
        }
      if (c == '\r' || c == '\n' || c == '\0')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                    "line ends inside a quoted string");
      g_string_append_c (parser->tok, (gchar) c);
      return TRUE;

    case PG_IMAP_PARSER_STATE_QUOTED_ESC:
      if (c != '"' && c != '\\')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                    "bad escape in a quoted string");
      g_string_append_c (parser->tok, (gchar) c);
      parser->state = PG_IMAP_PARSER_STATE_QUOTED;
      return TRUE;

    case PG_IMAP_PARSER_STATE_LIT_TILDE:
      if (c != '{')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "'~' without '{'");
      parser->state = PG_IMAP_PARSER_STATE_LIT_SIZE;
      return TRUE;

    case PG_IMAP_PARSER_STATE_LIT_SIZE:
      if (g_ascii_isdigit (c))
        {
          guint d = (guint) (c - '0');
          if (parser->lit_size > (G_MAXUINT64 - d) / 10)
            return pg_imap_parser_fail (parser, error, PG_ERROR_LIMIT, "literal size overflows");
          parser->lit_size = parser->lit_size * 10 + d;
          parser->lit_digits++;
          return TRUE;
        }
      if (c == '}' && parser->lit_digits > 0)
        {
          parser->state = PG_IMAP_PARSER_STATE_LIT_CR;
          return TRUE;
        }
      return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bad literal size");

    case PG_IMAP_PARSER_STATE_LIT_CR:
      if (c != '\r')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                    "literal size not followed by CRLF");
      parser->state = PG_IMAP_PARSER_STATE_LIT_LF;
      return TRUE;

    case PG_IMAP_PARSER_STATE_START:
    case PG_IMAP_PARSER_STATE_STAR:
    case PG_IMAP_PARSER_STATE_PLUS:
    case PG_IMAP_PARSER_STATE_CONT_TEXT:
    case PG_IMAP_PARSER_STATE_TAG:
    case PG_IMAP_PARSER_STATE_KEYWORD:
    case PG_IMAP_PARSER_STATE_RESP_TEXT:
    case PG_IMAP_PARSER_STATE_CODE_ATOM:
    case PG_IMAP_PARSER_STATE_CODE_END:
    case PG_IMAP_PARSER_STATE_TEXT:
    case PG_IMAP_PARSER_STATE_LF:
    case PG_IMAP_PARSER_STATE_LIT_LF:
    case PG_IMAP_PARSER_STATE_LIT_DATA:
    case PG_IMAP_PARSER_STATE_BODY:
    case PG_IMAP_PARSER_STATE_FAILED:
    case PG_IMAP_PARSER_STATE_COUNT:
      break;
    }
  g_assert_not_reached ();
}

/* The keyword (or leading number) in parser->tok ended with byte c (SP or CR). */
static gboolean
pg_imap_parser_finish_keyword (PgImapParser *parser, guchar c, GError **error)
{
  PgImapResponse *response = parser->response;
  guint64 number;

  if (parser->tok->len == 0)
    return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "missing keyword");
  if (response->kind == PG_IMAP_RESPONSE_UNTAGGED && !response->has_number
      && pg_imap_parser_parse_number (parser->tok->str, parser->tok->len, &number))
    {
      if (c != ' ')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "number without keyword");
      response->has_number = TRUE;
      response->number = number;
      g_string_truncate (parser->tok, 0);
      return TRUE; /* stay in KEYWORD for the word after the number */
    }

  response->keyword = g_ascii_strup (parser->tok->str, (gssize) parser->tok->len);
  g_string_truncate (parser->tok, 0);
  response->status = pg_imap_parser_status_from_keyword (response->keyword);
  if (response->kind == PG_IMAP_RESPONSE_TAGGED
      && (response->status == PG_IMAP_STATUS_NONE || response->status == PG_IMAP_STATUS_PREAUTH
          || response->status == PG_IMAP_STATUS_BYE))
    return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                "tagged response must be OK, NO or BAD");
  if (response->status != PG_IMAP_STATUS_NONE && response->has_number)
    return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "numbered status response");

  if (response->status != PG_IMAP_STATUS_NONE)
    parser->state = c == ' ' ? PG_IMAP_PARSER_STATE_RESP_TEXT : PG_IMAP_PARSER_STATE_LF;
  else
    {
      g_ptr_array_unref (response->args);
      response->args = pg_imap_parser_new_value_array ();
      parser->stack[0] = response->args;
      parser->code_mode = FALSE;
      parser->state = c == ' ' ? PG_IMAP_PARSER_STATE_VALUE : PG_IMAP_PARSER_STATE_LF;
    }
  return TRUE;
}

/* The text of a status or continuation, once: a response without any gets "" when it ends
 * (pg_imap_parser_end_response). */
static void
pg_imap_parser_take_text (PgImapParser *parser)
{
  parser->response->text = g_strndup (parser->tok->str, parser->tok->len);
  g_string_truncate (parser->tok, 0);
}

/* The states in which a line may end: a bare LF there stands for CRLF. */
static gboolean
pg_imap_parser_lf_ends_line (PgImapParserState state)
{
  switch (state)
    {
    case PG_IMAP_PARSER_STATE_PLUS:
    case PG_IMAP_PARSER_STATE_CONT_TEXT:
    case PG_IMAP_PARSER_STATE_KEYWORD:
    case PG_IMAP_PARSER_STATE_RESP_TEXT:
    case PG_IMAP_PARSER_STATE_CODE_END:
    case PG_IMAP_PARSER_STATE_TEXT:
    case PG_IMAP_PARSER_STATE_VALUE:
    case PG_IMAP_PARSER_STATE_ATOM:
      return TRUE;
    case PG_IMAP_PARSER_STATE_START:
    case PG_IMAP_PARSER_STATE_STAR:
    case PG_IMAP_PARSER_STATE_TAG:
    case PG_IMAP_PARSER_STATE_CODE_ATOM:
    case PG_IMAP_PARSER_STATE_LF:
    case PG_IMAP_PARSER_STATE_SECTION:
    case PG_IMAP_PARSER_STATE_QUOTED:
    case PG_IMAP_PARSER_STATE_QUOTED_ESC:
    case PG_IMAP_PARSER_STATE_LIT_TILDE:
    case PG_IMAP_PARSER_STATE_LIT_SIZE:
    case PG_IMAP_PARSER_STATE_LIT_CR:
    case PG_IMAP_PARSER_STATE_LIT_LF:
    case PG_IMAP_PARSER_STATE_LIT_DATA:
    case PG_IMAP_PARSER_STATE_BODY:
    case PG_IMAP_PARSER_STATE_FAILED:
    case PG_IMAP_PARSER_STATE_COUNT:
      return FALSE;
    }
  return FALSE;
}

/* One byte of a response line outside literals. */
static gboolean
pg_imap_parser_line_byte (PgImapParser *parser, guchar c, gboolean *out_reprocess, GError **error)
{
  *out_reprocess = FALSE;

  switch (parser->state)
    {
    case PG_IMAP_PARSER_STATE_START:
      if (c == '*')
        {
          pg_imap_parser_begin_response (parser, PG_IMAP_RESPONSE_UNTAGGED);
          parser->state = PG_IMAP_PARSER_STATE_STAR;
          return TRUE;
        }
      if (c == '+')
        {
          pg_imap_parser_begin_response (parser, PG_IMAP_RESPONSE_CONTINUATION);
          parser->state = PG_IMAP_PARSER_STATE_PLUS;
          return TRUE;
        }
      if (pg_imap_parser_is_tag_char (c))
        {
          pg_imap_parser_begin_response (parser, PG_IMAP_RESPONSE_TAGGED);
          g_string_append_c (parser->tok, (gchar) c);
          parser->state = PG_IMAP_PARSER_STATE_TAG;
          return TRUE;
        }
      return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                  "response starts with byte 0x%02x", c);

    case PG_IMAP_PARSER_STATE_STAR:
      if (c != ' ')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "'*' not followed by SP");
      parser->state = PG_IMAP_PARSER_STATE_KEYWORD;
      return TRUE;

    case PG_IMAP_PARSER_STATE_PLUS:
      if (c == '\r')
        {
          parser->state = PG_IMAP_PARSER_STATE_LF;
          return TRUE;
        }
      if (c != ' ')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "'+' not followed by SP");
      parser->state = PG_IMAP_PARSER_STATE_CONT_TEXT;
      return TRUE;

    case PG_IMAP_PARSER_STATE_CONT_TEXT:
    case PG_IMAP_PARSER_STATE_TEXT:
      if (c == '\r')
        {
          pg_imap_parser_take_text (parser);
          parser->state = PG_IMAP_PARSER_STATE_LF;
          return TRUE;
        }
      if (c == '\n' || c == '\0')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bare LF or NUL in text");
      g_string_append_c (parser->tok, (gchar) c);
      return TRUE;

    case PG_IMAP_PARSER_STATE_TAG:
      if (c == ' ')
        {
          parser->response->tag = g_strndup (parser->tok->str, parser->tok->len);
          g_string_truncate (parser->tok, 0);
          parser->state = PG_IMAP_PARSER_STATE_KEYWORD;
          return TRUE;
        }
      if (!pg_imap_parser_is_tag_char (c))
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bad byte in tag");
      g_string_append_c (parser->tok, (gchar) c);
      return TRUE;

    case PG_IMAP_PARSER_STATE_KEYWORD:
      if (c == ' ' || c == '\r')
        return pg_imap_parser_finish_keyword (parser, c, error);
      if (!pg_imap_parser_is_atom_char (c, TRUE))
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bad byte in keyword");
      g_string_append_c (parser->tok, (gchar) c);
      return TRUE;

    case PG_IMAP_PARSER_STATE_RESP_TEXT:
      if (c == '[')
        {
          parser->state = PG_IMAP_PARSER_STATE_CODE_ATOM;
          return TRUE;
        }
      parser->state = PG_IMAP_PARSER_STATE_TEXT;
      *out_reprocess = TRUE;
      return TRUE;

    case PG_IMAP_PARSER_STATE_CODE_ATOM:
      if (c == ']' || c == ' ')
        {
          if (parser->tok->len == 0)
            return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "empty response code");
          parser->response->code = g_ascii_strup (parser->tok->str, (gssize) parser->tok->len);
          g_string_truncate (parser->tok, 0);
          if (c == ']')
            parser->state = PG_IMAP_PARSER_STATE_CODE_END;
          else
            {
              parser->code_mode = TRUE;
              parser->depth = 0;
              g_ptr_array_unref (parser->response->code_args);
              parser->response->code_args = pg_imap_parser_new_value_array ();
              parser->stack[0] = parser->response->code_args;
              parser->state = PG_IMAP_PARSER_STATE_VALUE;
            }
          return TRUE;
        }
      if (!pg_imap_parser_is_atom_char (c, TRUE))
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bad byte in response code");
      g_string_append_c (parser->tok, (gchar) c);
      return TRUE;

    case PG_IMAP_PARSER_STATE_CODE_END:
      if (c == ' ')
        {
          parser->state = PG_IMAP_PARSER_STATE_TEXT;
          return TRUE;
        }
      /* "[ALERT]text" without SP, or "[CODE]\r\n" without text. */
      parser->state = PG_IMAP_PARSER_STATE_TEXT;
      *out_reprocess = TRUE;
      return TRUE;

    case PG_IMAP_PARSER_STATE_LF:
      if (c != '\n')
        return pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL, "CR not followed by LF");
      parser->state = PG_IMAP_PARSER_STATE_START;
      return TRUE;

    case PG_IMAP_PARSER_STATE_VALUE:
    case PG_IMAP_PARSER_STATE_ATOM:
    case PG_IMAP_PARSER_STATE_SECTION:
    case PG_IMAP_PARSER_STATE_QUOTED:
    case PG_IMAP_PARSER_STATE_QUOTED_ESC:
    case PG_IMAP_PARSER_STATE_LIT_TILDE:
    case PG_IMAP_PARSER_STATE_LIT_SIZE:
    case PG_IMAP_PARSER_STATE_LIT_CR:
      return pg_imap_parser_value_byte (parser, c, out_reprocess, error);

    case PG_IMAP_PARSER_STATE_LIT_LF:
    case PG_IMAP_PARSER_STATE_LIT_DATA:
    case PG_IMAP_PARSER_STATE_BODY:
    case PG_IMAP_PARSER_STATE_FAILED:
    case PG_IMAP_PARSER_STATE_COUNT:
      break;
    }
  g_assert_not_reached ();
}

/* The response is complete: hand it out, with "" as the text of a status or continuation
 * that had none. */
static PgImapResponse *
pg_imap_parser_end_response (PgImapParser *parser)
{
  PgImapResponse *response = g_steal_pointer (&parser->response);

  if (response->text == NULL
      && (response->status != PG_IMAP_STATUS_NONE
          || response->kind == PG_IMAP_RESPONSE_CONTINUATION))
    response->text = g_strdup ("");
  return response;
}

static void
pg_imap_parser_event_clear (PgImapEvent *event)
{
  memset (event, 0, sizeof *event);
}

/* The LF after "{n}\r" arrived: start a small literal or a streamed body. Returns TRUE and
 * sets *out_begin_body when a BODY_BEGIN event must be reported. */
static gboolean
pg_imap_parser_start_literal (PgImapParser *parser, gboolean *out_begin_body, GError **error)
{
  *out_begin_body = FALSE;
  parser->lit_done = 0;
  if (pg_imap_parser_literal_is_body (parser))
    {
      const GPtrArray *list = parser->stack[1];
      const PgImapValue *name = g_ptr_array_index (list, list->len - 1);

      parser->body_item = name->str;
      /* The UID, when it came before the body, tells a client with several pipelined
       * FETCHes which one this body answers (servers may interleave their output). */
      parser->body_uid = 0;
      for (guint i = 0; i + 1 < list->len; i += 2)
        {
          const PgImapValue *item = g_ptr_array_index (list, i);
          const PgImapValue *value = g_ptr_array_index (list, i + 1);
          if (pg_imap_value_is_atom (item, "UID") && value->type == PG_IMAP_VALUE_NUMBER)
            parser->body_uid = value->number;
        }
      parser->state = PG_IMAP_PARSER_STATE_BODY;
      *out_begin_body = TRUE;
      return TRUE;
    }
  if (parser->lit_size > PG_UPSTREAM_MAX_SMALL_LITERAL)
    return pg_imap_parser_fail (parser, error, PG_ERROR_LIMIT,
                                "literal of %" G_GUINT64_FORMAT " bytes (limit %d)",
                                parser->lit_size, PG_UPSTREAM_MAX_SMALL_LITERAL);
  if (!pg_imap_parser_add_to_total (parser, parser->lit_size, error))
    return FALSE;
  parser->lit_buf = g_malloc ((gsize) parser->lit_size + 1);
  parser->state = PG_IMAP_PARSER_STATE_LIT_DATA;
  return TRUE;
}

static gboolean
pg_imap_parser_finish_small_literal (PgImapParser *parser, GError **error)
{
  PgImapValue *value = g_new0 (PgImapValue, 1);

  value->type = PG_IMAP_VALUE_STRING;
  value->len = (gsize) parser->lit_size;
  value->str = g_steal_pointer (&parser->lit_buf);
  value->str[value->len] = '\0';
  parser->state = PG_IMAP_PARSER_STATE_VALUE;
  parser->line_len = 0;
  return pg_imap_parser_add_value (parser, value, error);
}

PgImapParseResult
pg_imap_parser_feed (PgImapParser *parser, const guint8 *data, gsize len, gsize *out_consumed,
                     PgImapEvent *out_event, GError **error)
{
  gsize pos = 0;

  g_return_val_if_fail (parser != NULL, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (data != NULL || len == 0, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (out_consumed != NULL && out_event != NULL, PG_IMAP_PARSE_ERROR);

  if (parser->state == PG_IMAP_PARSER_STATE_FAILED)
    {
      g_propagate_error (error, g_error_copy (parser->error));
      return PG_IMAP_PARSE_ERROR;
    }

  for (;;)
    {
      guchar c;
      gboolean reprocess = FALSE;
      guint8 run_class;
      gboolean lf_as_crlf;

      if (parser->state == PG_IMAP_PARSER_STATE_BODY)
        {
          guint64 left = parser->lit_size - parser->lit_done;
          gsize n;

          if (left == 0)
            {
              PgImapValue *value = g_new0 (PgImapValue, 1);

              value->type = PG_IMAP_VALUE_STREAMED;
              value->number = parser->lit_size;
              parser->state = PG_IMAP_PARSER_STATE_VALUE;
              parser->line_len = 0;
              if (!pg_imap_parser_add_value (parser, value, error))
                return PG_IMAP_PARSE_ERROR;
              pg_imap_parser_event_clear (out_event);
              out_event->seq = parser->response->number;
              out_event->uid = parser->body_uid;
              out_event->item = parser->body_item;
              out_event->size = parser->lit_size;
              out_event->offset = parser->lit_size;
              *out_consumed = pos;
              return PG_IMAP_PARSE_BODY_END;
            }
          if (pos == len)
            break;
          n = (gsize) MIN ((guint64) (len - pos), MIN (left, (guint64) PG_UPSTREAM_BODY_CHUNK));
          pg_imap_parser_event_clear (out_event);
          out_event->seq = parser->response->number;
          out_event->uid = parser->body_uid;
          out_event->item = parser->body_item;
          out_event->size = parser->lit_size;
          out_event->offset = parser->lit_done;
          out_event->data = data + pos;
          out_event->len = n;
          parser->lit_done += n;
          *out_consumed = pos + n;
          return PG_IMAP_PARSE_BODY_CHUNK;
        }

      if (parser->state == PG_IMAP_PARSER_STATE_LIT_DATA)
        {
          guint64 left = parser->lit_size - parser->lit_done;
          gsize n = (gsize) MIN ((guint64) (len - pos), left);

          memcpy (parser->lit_buf + parser->lit_done, data + pos, n);
          parser->lit_done += n;
          pos += n;
          if (parser->lit_done < parser->lit_size)
            break;
          if (!pg_imap_parser_finish_small_literal (parser, error))
            return PG_IMAP_PARSE_ERROR;
          continue;
        }

      if (pos == len)
        break;

      /* A run of bytes that only grows the token goes into it in one append; it stops
       * short of the line and response limits, so the byte that would cross one takes the
       * byte-at-a-time path below and fails there, with the same error as ever. */
      run_class = pg_imap_parser_run_class (parser);
      if (run_class != 0)
        {
          gsize max = MIN (len - pos, MIN (PG_UPSTREAM_MAX_LINE - parser->line_len,
                                           PG_UPSTREAM_MAX_RESPONSE - parser->total));
          gsize n = 0;

          while (n < max && (pg_imap_parser_run_classes[data[pos + n]] & run_class) != 0)
            n++;
          pg_imap_parser_tok_append (parser, data + pos, n);
          parser->line_len += n;
          parser->total += n;
          pos += n;
          if (pos == len)
            break;
        }

      c = data[pos++];
      parser->line_len++;
      if (parser->line_len > PG_UPSTREAM_MAX_LINE)
        {
          pg_imap_parser_fail (parser, error, PG_ERROR_LINE_TOO_LONG, "line longer than %d bytes",
                               PG_UPSTREAM_MAX_LINE);
          return PG_IMAP_PARSE_ERROR;
        }
      if (parser->state != PG_IMAP_PARSER_STATE_START)
        {
          if (G_UNLIKELY (parser->total >= PG_UPSTREAM_MAX_RESPONSE))
            {
              pg_imap_parser_add_to_total (parser, 1, error); /* fails, with its message */
              return PG_IMAP_PARSE_ERROR;
            }
          parser->total++;
        }

      if (parser->state == PG_IMAP_PARSER_STATE_LIT_LF)
        {
          gboolean begin_body = FALSE;

          if (c != '\n')
            {
              pg_imap_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                   "literal size not followed by CRLF");
              return PG_IMAP_PARSE_ERROR;
            }
          if (!pg_imap_parser_start_literal (parser, &begin_body, error))
            return PG_IMAP_PARSE_ERROR;
          if (begin_body)
            {
              pg_imap_parser_event_clear (out_event);
              out_event->seq = parser->response->number;
              out_event->uid = parser->body_uid;
              out_event->item = parser->body_item;
              out_event->size = parser->lit_size;
              *out_consumed = pos;
              return PG_IMAP_PARSE_BODY_BEGIN;
            }
          continue;
        }

      /* A bare LF ends a response line as CRLF does (GNU mailutils imap4d ends some
       * replies so; Dovecot's imapc accepts it too): it is handled as if a CR came first,
       * so every rule about where a line may end still holds. Never inside a literal
       * (counted octets, not lines) or a quoted string, and a NUL is still an error. */
      lf_as_crlf = c == '\n' && pg_imap_parser_lf_ends_line (parser->state);
      /* One call site, so that the compiler may inline the state machine. */
      for (guchar b = lf_as_crlf ? '\r' : c;;)
        {
          if (!pg_imap_parser_line_byte (parser, b, &reprocess, error))
            return PG_IMAP_PARSE_ERROR;
          if (reprocess)
            continue;
          if (b == c)
            break;
          b = c;
        }

      if (parser->state == PG_IMAP_PARSER_STATE_START)
        {
          /* The LF of a complete response. */
          pg_imap_parser_event_clear (out_event);
          out_event->response = pg_imap_parser_end_response (parser);
          parser->line_len = 0;
          *out_consumed = pos;
          return PG_IMAP_PARSE_RESPONSE;
        }
    }

  pg_imap_parser_event_clear (out_event);
  *out_consumed = len;
  return PG_IMAP_PARSE_NEED_MORE;
}

/* --- INTERNALDATE ------------------------------------------------------------------------ */

static gboolean
pg_imap_date_digits (const char *p, guint n, guint *out_value)
{
  guint value = 0;

  for (guint i = 0; i < n; i++)
    {
      if (!g_ascii_isdigit (p[i]))
        return FALSE;
      value = value * 10 + (guint) (p[i] - '0');
    }
  *out_value = value;
  return TRUE;
}

gboolean
pg_imap_parse_date_time (const char *text, gsize len, gint64 *out_unix)
{
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  char day_text[2];
  guint day, month = 0, year, hour, minute, second, zone_h, zone_m;
  g_autoptr (GDateTime) utc = NULL;
  gint64 zone;

  /* "dd-Mon-yyyy hh:mm:ss +zzzz" is exactly 26 bytes. */
  if (text == NULL || len != 26)
    return FALSE;
  day_text[0] = text[0] == ' ' ? '0' : text[0];
  day_text[1] = text[1];
  if (!pg_imap_date_digits (day_text, 2, &day) || text[2] != '-' || text[6] != '-'
      || !pg_imap_date_digits (text + 7, 4, &year) || text[11] != ' '
      || !pg_imap_date_digits (text + 12, 2, &hour) || text[14] != ':'
      || !pg_imap_date_digits (text + 15, 2, &minute) || text[17] != ':'
      || !pg_imap_date_digits (text + 18, 2, &second) || text[20] != ' '
      || (text[21] != '+' && text[21] != '-') || !pg_imap_date_digits (text + 22, 2, &zone_h)
      || !pg_imap_date_digits (text + 24, 2, &zone_m))
    return FALSE;
  for (guint i = 0; i < 12; i++)
    if (g_ascii_strncasecmp (text + 3, months + 3 * i, 3) == 0)
      month = i + 1;
  /* RFC 5322 allows a leap second (:60); minutes of a zone stop at 59. */
  if (month == 0 || year < 1900
      || !g_date_valid_dmy ((GDateDay) day, (GDateMonth) month, (GDateYear) year) || hour > 23
      || minute > 59 || second > 60 || zone_m > 59)
    return FALSE;
  /* GDateTime has no :60; a leap second is the second after :59. */
  utc = g_date_time_new_utc ((gint) year, (gint) month, (gint) day, (gint) hour, (gint) minute,
                             second == 60 ? 59 : second);
  if (utc == NULL)
    return FALSE;
  zone = ((gint64) zone_h * 60 + zone_m) * 60;
  if (text[21] == '-')
    zone = -zone;
  *out_unix = g_date_time_to_unix (utc) + (second == 60 ? 1 : 0) - zone;
  return TRUE;
}
