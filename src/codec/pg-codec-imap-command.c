/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-imap-command.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

/* --- values ------------------------------------------------------------------------ */

static const char *const pg_imap_command_kind_names[] = {
  [PG_IMAP_COMMAND_CAPABILITY] = "CAPABILITY",
  [PG_IMAP_COMMAND_NOOP] = "NOOP",
  [PG_IMAP_COMMAND_LOGOUT] = "LOGOUT",
  [PG_IMAP_COMMAND_STARTTLS] = "STARTTLS",
  [PG_IMAP_COMMAND_AUTHENTICATE] = "AUTHENTICATE",
  [PG_IMAP_COMMAND_LOGIN] = "LOGIN",
  [PG_IMAP_COMMAND_ID] = "ID",
  [PG_IMAP_COMMAND_UNKNOWN] = "UNKNOWN",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_imap_command_kind_names) == PG_IMAP_COMMAND_COUNT);

const char *
pg_imap_command_kind_to_string (PgImapCommandKind kind)
{
  g_return_val_if_fail (kind < PG_IMAP_COMMAND_COUNT, "INVALID");
  return pg_imap_command_kind_names[kind];
}

void
pg_imap_arg_free (PgImapArg *arg)
{
  if (arg == NULL)
    return;
  /* Any argument may be a password or a SASL response: wipe them all. */
  if (arg->value != NULL)
    pg_secret_wipe (arg->value, arg->len);
  g_free (arg->value);
  g_clear_pointer (&arg->list, g_ptr_array_unref);
  g_free (arg);
}

gboolean
pg_imap_arg_is_nil (const PgImapArg *arg)
{
  return arg->type == PG_IMAP_ARG_ATOM && g_ascii_strcasecmp (arg->value, "NIL") == 0;
}

const char *
pg_imap_arg_get_string (const PgImapArg *arg, gsize *out_len)
{
  if (arg->type == PG_IMAP_ARG_LIST)
    return NULL;
  if (out_len != NULL)
    *out_len = arg->len;
  return arg->value;
}

void
pg_imap_command_free (PgImapCommand *command)
{
  if (command == NULL)
    return;
  g_free (command->tag);
  g_free (command->name);
  g_clear_pointer (&command->args, g_ptr_array_unref);
  g_free (command);
}

/* --- character classes (RFC 9051 §9) ------------------------------------------------ */

/* ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ] */
static gboolean
pg_imap_command_is_atom_char (guchar c)
{
  if (c <= 0x1f || c >= 0x7f)
    return FALSE;
  return strchr ("(){ %*\"\\]", c) == NULL;
}

/* ASTRING-CHAR: ATOM-CHAR or "]" */
static gboolean
pg_imap_command_is_astring_char (guchar c)
{
  return c == ']' || pg_imap_command_is_atom_char (c);
}

/* --- pre-auth parser ---------------------------------------------------------------- */

struct _PgImapCommandParser
{
  PgImapCommand *command;  /* owned; NULL until a tag was read */
  PgImapCommand *complete; /* owned; waiting for take_command() */
  GPtrArray *stack;        /* unowned GPtrArray pointers: [0] = command->args, top = open list */
  gboolean need_space;     /* an argument just ended: SP, ")" or the line end must follow */
  PgImapArg *literal;      /* unowned (lives in the tree); being filled */
  gsize literal_filled;
  gboolean literal_sync;
  gsize total; /* octets of the command so far, for PG_IMAP_MAX_PREAUTH_COMMAND */
  guint n_args;
  gchar *failed_tag; /* owned: the tag of the command that just failed */
};

PgImapCommandParser *
pg_imap_command_parser_new (void)
{
  PgImapCommandParser *parser = g_new0 (PgImapCommandParser, 1);

  parser->stack = g_ptr_array_new ();
  return parser;
}

void
pg_imap_command_parser_reset (PgImapCommandParser *parser)
{
  g_return_if_fail (parser != NULL);

  g_clear_pointer (&parser->command, pg_imap_command_free);
  g_clear_pointer (&parser->complete, pg_imap_command_free);
  g_clear_pointer (&parser->failed_tag, g_free);
  g_ptr_array_set_size (parser->stack, 0);
  parser->need_space = FALSE;
  parser->literal = NULL;
  parser->literal_filled = 0;
  parser->literal_sync = FALSE;
  parser->total = 0;
  parser->n_args = 0;
}

void
pg_imap_command_parser_free (PgImapCommandParser *parser)
{
  if (parser == NULL)
    return;
  pg_imap_command_parser_reset (parser);
  g_ptr_array_unref (parser->stack);
  g_free (parser);
}

const char *
pg_imap_command_parser_get_tag (const PgImapCommandParser *parser)
{
  if (parser->command != NULL)
    return parser->command->tag;
  return parser->failed_tag;
}

gsize
pg_imap_command_parser_get_literal_remaining (const PgImapCommandParser *parser)
{
  if (parser->literal == NULL)
    return 0;
  return parser->literal->len - parser->literal_filled;
}

gboolean
pg_imap_command_parser_is_literal_sync (const PgImapCommandParser *parser)
{
  return parser->literal != NULL && parser->literal_sync;
}

PgImapCommand *
pg_imap_command_parser_take_command (PgImapCommandParser *parser)
{
  g_return_val_if_fail (parser != NULL, NULL);
  return g_steal_pointer (&parser->complete);
}

/* Drop the partial command, keeping its tag for the BAD reply. */
static PgImapParseStatus
pg_imap_command_parser_fail (PgImapCommandParser *parser, GError **error, gint code,
                             const char *message)
{
  g_autofree gchar *tag = NULL;

  if (parser->command != NULL)
    tag = g_steal_pointer (&parser->command->tag);
  pg_imap_command_parser_reset (parser);
  parser->failed_tag = g_steal_pointer (&tag);
  g_set_error_literal (error, PG_ERROR, code, message);
  return PG_IMAP_PARSE_ERROR;
}

static PgImapCommandKind
pg_imap_command_lookup (const char *name)
{
  for (guint i = 0; i < PG_IMAP_COMMAND_UNKNOWN; i++)
    if (strcmp (pg_imap_command_kind_names[i], name) == 0)
      return (PgImapCommandKind) i;
  return PG_IMAP_COMMAND_UNKNOWN;
}

static gboolean
pg_imap_command_is_string (const PgImapArg *arg)
{
  return arg->type != PG_IMAP_ARG_LIST;
}

/* The argument rules of the commands a client may send before login. */
static const char *
pg_imap_command_validate (const PgImapCommand *command)
{
  GPtrArray *args = command->args;

  switch (command->kind)
    {
    case PG_IMAP_COMMAND_CAPABILITY:
    case PG_IMAP_COMMAND_NOOP:
    case PG_IMAP_COMMAND_LOGOUT:
    case PG_IMAP_COMMAND_STARTTLS:
      return args->len == 0 ? NULL : "Unexpected arguments";
    case PG_IMAP_COMMAND_LOGIN:
      if (args->len != 2)
        return "LOGIN needs a user name and a password";
      if (!pg_imap_command_is_string (args->pdata[0])
          || !pg_imap_command_is_string (args->pdata[1]))
        return "LOGIN arguments must be strings";
      return NULL;
    case PG_IMAP_COMMAND_AUTHENTICATE:
      if (args->len < 1 || args->len > 2)
        return "AUTHENTICATE needs a mechanism and at most an initial response";
      for (guint i = 0; i < args->len; i++)
        if (((PgImapArg *) args->pdata[i])->type != PG_IMAP_ARG_ATOM)
          return "AUTHENTICATE arguments must be atoms";
      return NULL;
    case PG_IMAP_COMMAND_ID:
      {
        const PgImapArg *arg;

        if (args->len != 1)
          return "ID needs one argument";
        arg = args->pdata[0];
        if (pg_imap_arg_is_nil (arg))
          return NULL;
        if (arg->type != PG_IMAP_ARG_LIST || arg->list->len % 2 != 0)
          return "ID needs a list of field/value pairs or NIL";
        for (guint i = 0; i < arg->list->len; i++)
          if (!pg_imap_command_is_string (arg->list->pdata[i]))
            return "ID fields and values must be strings";
        return NULL;
      }
    case PG_IMAP_COMMAND_UNKNOWN:
      return NULL;
    case PG_IMAP_COMMAND_COUNT:
      break;
    }
  g_assert_not_reached ();
}

static PgImapArg *
pg_imap_command_parser_add_arg (PgImapCommandParser *parser, PgImapArgType type)
{
  PgImapArg *arg = g_new0 (PgImapArg, 1);
  GPtrArray *top = g_ptr_array_index (parser->stack, parser->stack->len - 1);

  arg->type = type;
  g_ptr_array_add (top, arg);
  parser->n_args++;
  return arg;
}

/* Parse the arguments on (the rest of) a line, from pos. */
static PgImapParseStatus
pg_imap_command_parser_parse_args (PgImapCommandParser *parser, const char *line, gsize len,
                                   gsize pos, GError **error)
{
  for (;;)
    {
      guchar c;

      if (pos == len)
        {
          const char *problem;

          if (parser->stack->len > 1)
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                "Unterminated list");
          problem = pg_imap_command_validate (parser->command);
          if (problem != NULL)
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL, problem);
          parser->complete = g_steal_pointer (&parser->command);
          g_ptr_array_set_size (parser->stack, 0);
          parser->need_space = FALSE;
          parser->total = 0;
          parser->n_args = 0;
          return PG_IMAP_PARSE_COMPLETE;
        }

      c = (guchar) line[pos];
      if (c == ')')
        {
          if (parser->stack->len <= 1)
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                "Unexpected \")\"");
          g_ptr_array_set_size (parser->stack, parser->stack->len - 1);
          parser->need_space = TRUE;
          pos++;
          continue;
        }
      if (parser->need_space)
        {
          if (c != ' ')
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                "Missing space between arguments");
          parser->need_space = FALSE;
          pos++;
          if (pos == len)
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL, "Trailing space");
          continue;
        }

      if (parser->n_args >= PG_IMAP_MAX_PREAUTH_ARGS)
        return pg_imap_command_parser_fail (parser, error, PG_ERROR_LIMIT, "Too many arguments");

      if (c == '(')
        {
          PgImapArg *arg;

          /* The stack holds the top-level args too, hence the + 1. */
          if (parser->stack->len >= PG_IMAP_MAX_PREAUTH_DEPTH + 1)
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_LIMIT,
                                                "Lists nested too deeply");
          arg = pg_imap_command_parser_add_arg (parser, PG_IMAP_ARG_LIST);
          arg->list = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_imap_arg_free);
          g_ptr_array_add (parser->stack, arg->list);
          pos++;
          continue;
        }

      if (c == '"')
        {
          /* Sized for the rest of the line, so it never reallocates and leaves no
           * unwiped copy of a password behind. */
          g_autoptr (GString) value = g_string_sized_new (len - pos);
          PgImapArg *arg;
          gboolean closed = FALSE;

          for (pos++; pos < len; pos++)
            {
              guchar q = (guchar) line[pos];

              if (q == '"')
                {
                  closed = TRUE;
                  pos++;
                  break;
                }
              if (q == '\\')
                {
                  if (pos + 1 == len || (line[pos + 1] != '"' && line[pos + 1] != '\\'))
                    {
                      pg_secret_wipe (value->str, value->len);
                      return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                          "Invalid escape in quoted string");
                    }
                  q = (guchar) line[++pos];
                }
              else if (q == '\0' || q == '\r' || q == '\n')
                {
                  pg_secret_wipe (value->str, value->len);
                  return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                      "Invalid character in quoted string");
                }
              g_string_append_c (value, (gchar) q);
            }
          if (!closed)
            {
              pg_secret_wipe (value->str, value->len);
              return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                  "Unterminated quoted string");
            }
          arg = pg_imap_command_parser_add_arg (parser, PG_IMAP_ARG_QUOTED);
          arg->len = value->len;
          arg->value = g_string_free (g_steal_pointer (&value), FALSE);
          parser->need_space = TRUE;
          continue;
        }

      if (c == '{')
        {
          guint64 size = 0;
          gsize digits = 0;
          gboolean sync = TRUE;
          gsize total = 0;
          PgImapArg *arg;

          for (pos++; pos < len && g_ascii_isdigit (line[pos]); pos++, digits++)
            {
              size = size * 10 + (guint64) (line[pos] - '0');
              if (size > PG_IMAP_MAX_PREAUTH_LITERAL)
                return pg_imap_command_parser_fail (parser, error, PG_ERROR_LIMIT,
                                                    "Literal too large");
            }
          if (pos < len && line[pos] == '+')
            {
              sync = FALSE;
              pos++;
            }
          if (digits == 0 || pos + 1 != len || line[pos] != '}')
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                                "Invalid literal");
          if (!g_size_checked_add (&total, parser->total, (gsize) size)
              || total > PG_IMAP_MAX_PREAUTH_COMMAND)
            return pg_imap_command_parser_fail (parser, error, PG_ERROR_LIMIT, "Command too long");
          parser->total = total;

          arg = pg_imap_command_parser_add_arg (parser, PG_IMAP_ARG_LITERAL);
          arg->len = (gsize) size;
          arg->value = g_malloc0 ((gsize) size + 1);
          parser->literal = arg;
          parser->literal_filled = 0;
          parser->literal_sync = sync;
          parser->need_space = TRUE;
          return PG_IMAP_PARSE_NEED_LITERAL;
        }

      if (pg_imap_command_is_astring_char (c))
        {
          gsize start = pos;
          PgImapArg *arg;

          while (pos < len && pg_imap_command_is_astring_char ((guchar) line[pos]))
            pos++;
          arg = pg_imap_command_parser_add_arg (parser, PG_IMAP_ARG_ATOM);
          arg->len = pos - start;
          arg->value = g_strndup (line + start, pos - start);
          parser->need_space = TRUE;
          continue;
        }

      return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                          "Invalid character in arguments");
    }
}

PgImapParseStatus
pg_imap_command_parser_feed_line (PgImapCommandParser *parser, const char *line, gsize len,
                                  GError **error)
{
  gsize pos = 0;
  gsize total = 0;

  g_return_val_if_fail (parser != NULL, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (line != NULL || len == 0, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (error == NULL || *error == NULL, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (parser->literal == NULL, PG_IMAP_PARSE_ERROR);

  g_clear_pointer (&parser->complete, pg_imap_command_free);
  g_clear_pointer (&parser->failed_tag, g_free);

  /* A line and its CRLF count towards the whole command's size. */
  if (!g_size_checked_add (&total, parser->total, len) || !g_size_checked_add (&total, total, 2)
      || total > PG_IMAP_MAX_PREAUTH_COMMAND)
    return pg_imap_command_parser_fail (parser, error, PG_ERROR_LIMIT, "Command too long");
  parser->total = total;

  if (parser->command != NULL)
    return pg_imap_command_parser_parse_args (parser, line, len, 0, error);

  /* tag = 1*<ASTRING-CHAR except "+"> */
  while (pos < len && line[pos] != '+' && pg_imap_command_is_astring_char ((guchar) line[pos]))
    pos++;
  if (pos == 0)
    return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                        len == 0 ? "Empty command line" : "Invalid tag");
  parser->command = g_new0 (PgImapCommand, 1);
  parser->command->tag = g_strndup (line, pos);
  parser->command->args = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_imap_arg_free);
  g_ptr_array_add (parser->stack, parser->command->args);

  if (pos == len || line[pos] != ' ')
    return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                        pos == len ? "Missing command" : "Invalid tag");
  pos++;

  {
    gsize start = pos;

    while (pos < len && g_ascii_isalnum (line[pos]))
      pos++;
    if (pos == start || (pos < len && line[pos] != ' '))
      return pg_imap_command_parser_fail (parser, error, PG_ERROR_PROTOCOL, "Invalid command name");
    parser->command->name = g_ascii_strup (line + start, (gssize) (pos - start));
    parser->command->kind = pg_imap_command_lookup (parser->command->name);
  }

  /* Let parse_args see " arg ..." exactly as after any other argument. */
  parser->need_space = TRUE;
  return pg_imap_command_parser_parse_args (parser, line, len, pos, error);
}

PgImapParseStatus
pg_imap_command_parser_feed_literal (PgImapCommandParser *parser, const void *data, gsize len,
                                     gsize *out_taken)
{
  gsize n;

  g_return_val_if_fail (parser != NULL, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (parser->literal != NULL, PG_IMAP_PARSE_ERROR);
  g_return_val_if_fail (data != NULL || len == 0, PG_IMAP_PARSE_ERROR);

  n = MIN (len, parser->literal->len - parser->literal_filled);
  if (n > 0)
    memcpy (parser->literal->value + parser->literal_filled, data, n);
  parser->literal_filled += n;
  if (out_taken != NULL)
    *out_taken = n;
  if (parser->literal_filled < parser->literal->len)
    return PG_IMAP_PARSE_NEED_LITERAL;
  parser->literal = NULL;
  parser->literal_filled = 0;
  return PG_IMAP_PARSE_NEED_LINE;
}

/* --- relay scanner ---------------------------------------------------------------- */

/* "{" 20 digits "+}" and a CR fit in this: the longest literal announcement we read. */
#define PG_IMAP_RELAY_TAIL 25

typedef enum
{
  PG_IMAP_RELAY_FIELD_TAG,
  PG_IMAP_RELAY_FIELD_WORD,
  PG_IMAP_RELAY_FIELD_UID_WORD,
  PG_IMAP_RELAY_FIELD_ARG,
  PG_IMAP_RELAY_FIELD_DONE,
} PgImapRelayField;

struct _PgImapRelayScanner
{
  /* literal octets being skipped */
  gboolean in_literal;
  guint64 literal_left;
  gboolean literal_sync;
  gboolean literal_started;
  gboolean literal_is_arg; /* the first argument is this literal: copy (a bounded prefix) */

  /* the current line's last octets, to spot "{n}" / "{n+}" at its end */
  char tail[PG_IMAP_RELAY_TAIL];
  gsize tail_len;

  /* the current command */
  gboolean reset_pending;
  PgImapRelayField field;
  char tag[PG_IMAP_RELAY_MAX_TAG + 1];
  gsize tag_len;
  char word[2 * PG_IMAP_RELAY_MAX_WORD + 2]; /* "UID FETCH" */
  gsize word_len;
  char arg[PG_IMAP_RELAY_MAX_ARGUMENT + 1];
  gsize arg_len;
  gboolean arg_present;
  gboolean arg_unusable; /* too long, or a list */
  gboolean arg_quoted;
  gboolean arg_escape;
  gboolean arg_literal;
  guint64 octets;
  guint n_literals;

  PgImapRelayCommand result;
};

PgImapRelayScanner *
pg_imap_relay_scanner_new (void)
{
  PgImapRelayScanner *scanner = g_new0 (PgImapRelayScanner, 1);

  scanner->reset_pending = TRUE;
  return scanner;
}

void
pg_imap_relay_scanner_free (PgImapRelayScanner *scanner)
{
  g_free (scanner);
}

gboolean
pg_imap_relay_scanner_in_literal (const PgImapRelayScanner *scanner)
{
  return scanner->in_literal;
}

gboolean
pg_imap_relay_scanner_awaits_continuation (const PgImapRelayScanner *scanner)
{
  return scanner->in_literal && scanner->literal_sync && !scanner->literal_started;
}

const char *
pg_imap_relay_scanner_peek_word (PgImapRelayScanner *scanner)
{
  if (scanner->reset_pending
      || (scanner->field != PG_IMAP_RELAY_FIELD_ARG && scanner->field != PG_IMAP_RELAY_FIELD_DONE))
    return NULL;
  scanner->word[scanner->word_len] = '\0';
  return scanner->word;
}

static void
pg_imap_relay_scanner_reset_command (PgImapRelayScanner *scanner)
{
  scanner->reset_pending = FALSE;
  scanner->field = PG_IMAP_RELAY_FIELD_TAG;
  scanner->tag_len = 0;
  scanner->word_len = 0;
  scanner->arg_len = 0;
  scanner->arg_present = FALSE;
  scanner->arg_unusable = FALSE;
  scanner->arg_quoted = FALSE;
  scanner->arg_escape = FALSE;
  scanner->arg_literal = FALSE;
  scanner->octets = 0;
  scanner->n_literals = 0;
  scanner->tail_len = 0;
}

static void
pg_imap_relay_scanner_arg_append (PgImapRelayScanner *scanner, const char *data, gsize len)
{
  if (scanner->arg_len + len > PG_IMAP_RELAY_MAX_ARGUMENT)
    {
      scanner->arg_unusable = TRUE;
      return;
    }
  memcpy (scanner->arg + scanner->arg_len, data, len);
  scanner->arg_len += len;
}

/* One octet of the first argument: the tokeniser's per-octet path. */
static inline void
pg_imap_relay_scanner_arg_push (PgImapRelayScanner *scanner, char c)
{
  if (scanner->arg_len >= PG_IMAP_RELAY_MAX_ARGUMENT)
    {
      scanner->arg_unusable = TRUE;
      return;
    }
  scanner->arg[scanner->arg_len++] = c;
}

/* Tokenise the start of a command: tag, word(s), first argument. Stops caring (returns
 * the segment's end at once) when the first argument is done. */
static void
pg_imap_relay_scanner_tokenise (PgImapRelayScanner *scanner, const char *p, const char *end)
{
  for (; p < end && scanner->field != PG_IMAP_RELAY_FIELD_DONE; p++)
    {
      char c = *p;

      switch (scanner->field)
        {
        case PG_IMAP_RELAY_FIELD_TAG:
          if (c == ' ')
            scanner->field = PG_IMAP_RELAY_FIELD_WORD;
          else if (c != '\r' && scanner->tag_len < PG_IMAP_RELAY_MAX_TAG)
            scanner->tag[scanner->tag_len++] = c;
          break;
        case PG_IMAP_RELAY_FIELD_WORD:
        case PG_IMAP_RELAY_FIELD_UID_WORD:
          if (c == ' ')
            {
              if (scanner->field == PG_IMAP_RELAY_FIELD_WORD && scanner->word_len == 3
                  && memcmp (scanner->word, "UID", 3) == 0)
                {
                  scanner->word[scanner->word_len++] = ' ';
                  scanner->field = PG_IMAP_RELAY_FIELD_UID_WORD;
                }
              else
                scanner->field = PG_IMAP_RELAY_FIELD_ARG;
            }
          else if (c != '\r' && scanner->word_len < sizeof (scanner->word) - 1
                   && (scanner->field == PG_IMAP_RELAY_FIELD_UID_WORD
                       || scanner->word_len < PG_IMAP_RELAY_MAX_WORD))
            scanner->word[scanner->word_len++] = c >= 'a' && c <= 'z' ? (char) (c - 'a' + 'A') : c;
          break;
        case PG_IMAP_RELAY_FIELD_ARG:
          if (!scanner->arg_present)
            {
              scanner->arg_present = TRUE;
              if (c == '"')
                scanner->arg_quoted = TRUE;
              else if (c == '{')
                scanner->arg_literal = TRUE;
              else if (c == '(' || c == '\r')
                {
                  scanner->arg_unusable = c == '(';
                  scanner->arg_present = c == '(';
                  scanner->field = PG_IMAP_RELAY_FIELD_DONE;
                }
              else
                pg_imap_relay_scanner_arg_push (scanner, c);
              break;
            }
          if (scanner->arg_literal)
            break; /* "{n}": the literal itself becomes the argument at the line end */
          if (scanner->arg_quoted)
            {
              if (scanner->arg_escape)
                {
                  scanner->arg_escape = FALSE;
                  pg_imap_relay_scanner_arg_push (scanner, c);
                }
              else if (c == '\\')
                scanner->arg_escape = TRUE;
              else if (c == '"')
                scanner->field = PG_IMAP_RELAY_FIELD_DONE;
              else
                pg_imap_relay_scanner_arg_push (scanner, c);
              break;
            }
          if (c == ' ' || c == '\r' || c == '(' || c == ')')
            scanner->field = PG_IMAP_RELAY_FIELD_DONE;
          else
            pg_imap_relay_scanner_arg_push (scanner, c);
          break;
        case PG_IMAP_RELAY_FIELD_DONE:
          break;
        }
    }
}

static void
pg_imap_relay_scanner_tail_append (PgImapRelayScanner *scanner, const char *p, gsize len)
{
  if (len >= PG_IMAP_RELAY_TAIL)
    {
      memcpy (scanner->tail, p + len - PG_IMAP_RELAY_TAIL, PG_IMAP_RELAY_TAIL);
      scanner->tail_len = PG_IMAP_RELAY_TAIL;
      return;
    }
  if (scanner->tail_len + len > PG_IMAP_RELAY_TAIL)
    {
      gsize drop = scanner->tail_len + len - PG_IMAP_RELAY_TAIL;

      memmove (scanner->tail, scanner->tail + drop, scanner->tail_len - drop);
      scanner->tail_len -= drop;
    }
  memcpy (scanner->tail + scanner->tail_len, p, len);
  scanner->tail_len += len;
}

/* Does the line (whose end is in tail) end with "{n}" or "{n+}"? */
static gboolean
pg_imap_relay_scanner_tail_literal (const PgImapRelayScanner *scanner, guint64 *out_size,
                                    gboolean *out_sync)
{
  gsize end = scanner->tail_len;
  gsize digits_end;
  gsize i;
  guint64 size = 0;
  gboolean sync = TRUE;

  if (end > 0 && scanner->tail[end - 1] == '\r')
    end--;
  if (end < 3 || scanner->tail[end - 1] != '}')
    return FALSE;
  end--;
  if (scanner->tail[end - 1] == '+')
    {
      sync = FALSE;
      end--;
    }
  digits_end = end;
  i = end;
  while (i > 0 && g_ascii_isdigit (scanner->tail[i - 1]))
    i--;
  if (i == digits_end || i == 0 || scanner->tail[i - 1] != '{')
    return FALSE;
  for (; i < digits_end; i++)
    {
      /* Overflowing sizes are no literal to us; the upstream will refuse the line. */
      if (!g_uint64_checked_mul (&size, size, 10)
          || !g_uint64_checked_add (&size, size, (guint64) (scanner->tail[i] - '0')))
        return FALSE;
    }
  *out_size = size;
  *out_sync = sync;
  return TRUE;
}

static void
pg_imap_relay_scanner_finish (PgImapRelayScanner *scanner)
{
  scanner->tag[scanner->tag_len] = '\0';
  scanner->word[scanner->word_len] = '\0';
  scanner->arg[scanner->arg_len] = '\0';
  scanner->result.tag = scanner->tag;
  scanner->result.word = scanner->word;
  scanner->result.argument = scanner->arg_present && !scanner->arg_unusable ? scanner->arg : NULL;
  scanner->result.octets = scanner->octets;
  scanner->result.n_literals = scanner->n_literals;
  scanner->reset_pending = TRUE;
}

const PgImapRelayCommand *
pg_imap_relay_scanner_abandon (PgImapRelayScanner *scanner)
{
  scanner->in_literal = FALSE;
  scanner->literal_left = 0;
  scanner->literal_is_arg = FALSE;
  scanner->arg_present = scanner->arg_present && !scanner->arg_literal;
  pg_imap_relay_scanner_finish (scanner);
  return &scanner->result;
}

gsize
pg_imap_relay_scanner_scan (PgImapRelayScanner *scanner, const void *data, gsize len,
                            gboolean *out_complete, const PgImapRelayCommand **out_command)
{
  const char *start = data;
  const char *p = start;
  const char *end = start + len;

  g_return_val_if_fail (scanner != NULL, 0);
  g_return_val_if_fail (data != NULL || len == 0, 0);
  g_return_val_if_fail (out_complete != NULL, 0);

  *out_complete = FALSE;
  if (scanner->reset_pending)
    pg_imap_relay_scanner_reset_command (scanner);

  while (p < end)
    {
      const char *lf;
      const char *seg_end;
      guint64 size = 0;
      gboolean sync = TRUE;

      if (scanner->in_literal)
        {
          gsize n = (gsize) MIN (scanner->literal_left, (guint64) (end - p));

          if (scanner->literal_is_arg)
            pg_imap_relay_scanner_arg_append (scanner, p, MIN (n, PG_IMAP_RELAY_MAX_ARGUMENT + 1));
          p += n;
          scanner->octets += n;
          scanner->literal_left -= n;
          scanner->literal_started = TRUE;
          if (scanner->literal_left == 0)
            {
              scanner->in_literal = FALSE;
              scanner->literal_is_arg = FALSE;
            }
          continue;
        }

      lf = memchr (p, '\n', (gsize) (end - p));
      seg_end = lf != NULL ? lf : end;
      if (scanner->field != PG_IMAP_RELAY_FIELD_DONE)
        pg_imap_relay_scanner_tokenise (scanner, p, seg_end);
      pg_imap_relay_scanner_tail_append (scanner, p, (gsize) (seg_end - p));
      scanner->octets += (guint64) (seg_end - p);
      if (lf == NULL)
        {
          p = end;
          break;
        }
      scanner->octets++;
      p = lf + 1;

      if (pg_imap_relay_scanner_tail_literal (scanner, &size, &sync))
        {
          scanner->tail_len = 0;
          scanner->n_literals++;
          scanner->in_literal = size > 0;
          scanner->literal_left = size;
          scanner->literal_sync = sync;
          scanner->literal_started = FALSE;
          if (scanner->field == PG_IMAP_RELAY_FIELD_ARG && scanner->arg_literal)
            {
              scanner->arg_len = 0;
              scanner->literal_is_arg = size > 0;
            }
          scanner->field = PG_IMAP_RELAY_FIELD_DONE;
          continue;
        }

      /* The command is complete. */
      pg_imap_relay_scanner_finish (scanner);
      *out_complete = TRUE;
      if (out_command != NULL)
        *out_command = &scanner->result;
      break;
    }

  return (gsize) (p - start);
}
