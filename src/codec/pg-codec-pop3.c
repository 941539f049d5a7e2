/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-pop3.h"

#include "popgate/pg-core.h"

#include <string.h>

typedef enum
{
  PG_POP3_ARG_NONE,
  PG_POP3_ARG_STRING,  /* copied to arg1/arg2 */
  PG_POP3_ARG_MESSAGE, /* 1..G_MAXUINT32 */
  PG_POP3_ARG_LINES,   /* 0..G_MAXUINT32 */
  PG_POP3_ARG_REST,    /* the rest of the line, verbatim (PASS) */
} PgPop3ArgType;

typedef struct
{
  const char *name;
  guint min_args;
  guint max_args;
  PgPop3ArgType types[2];
} PgPop3CommandSpec;

/* Indexed by PgPop3CommandKind. Argument counts from RFC 1939 §5-7, RFC 2449 §5 (CAPA),
 * RFC 2595 §4 (STLS), RFC 5034 §4 (AUTH: mechanism and optional initial response; a bare
 * AUTH is the common pre-RFC listing request), RFC 6856 §2 (UTF8, no argument). */
static const PgPop3CommandSpec pg_pop3_command_specs[] = {
  [PG_POP3_COMMAND_USER] = { "USER", 1, 1, { PG_POP3_ARG_STRING } },
  [PG_POP3_COMMAND_PASS] = { "PASS", 1, 1, { PG_POP3_ARG_REST } },
  [PG_POP3_COMMAND_APOP] = { "APOP", 2, 2, { PG_POP3_ARG_STRING, PG_POP3_ARG_STRING } },
  [PG_POP3_COMMAND_AUTH] = { "AUTH", 0, 2, { PG_POP3_ARG_STRING, PG_POP3_ARG_STRING } },
  [PG_POP3_COMMAND_STLS] = { "STLS", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_CAPA] = { "CAPA", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_QUIT] = { "QUIT", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_STAT] = { "STAT", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_LIST] = { "LIST", 0, 1, { PG_POP3_ARG_MESSAGE } },
  [PG_POP3_COMMAND_UIDL] = { "UIDL", 0, 1, { PG_POP3_ARG_MESSAGE } },
  [PG_POP3_COMMAND_RETR] = { "RETR", 1, 1, { PG_POP3_ARG_MESSAGE } },
  [PG_POP3_COMMAND_TOP] = { "TOP", 2, 2, { PG_POP3_ARG_MESSAGE, PG_POP3_ARG_LINES } },
  [PG_POP3_COMMAND_DELE] = { "DELE", 1, 1, { PG_POP3_ARG_MESSAGE } },
  [PG_POP3_COMMAND_RSET] = { "RSET", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_NOOP] = { "NOOP", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_UTF8] = { "UTF8", 0, 0, { PG_POP3_ARG_NONE } },
  [PG_POP3_COMMAND_UNKNOWN] = { "UNKNOWN", 0, 0, { PG_POP3_ARG_NONE } },
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_pop3_command_specs) == PG_POP3_COMMAND_COUNT);

static const char *const pg_pop3_parse_result_names[] = {
  [PG_POP3_PARSE_OK] = "OK",
  [PG_POP3_PARSE_UNKNOWN_COMMAND] = "Unknown command",
  [PG_POP3_PARSE_MISSING_ARGUMENT] = "Missing argument",
  [PG_POP3_PARSE_TOO_MANY_ARGUMENTS] = "Too many arguments",
  [PG_POP3_PARSE_BAD_NUMBER] = "Invalid message number",
  [PG_POP3_PARSE_BAD_CHARACTER] = "Invalid character in command",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_pop3_parse_result_names) == PG_POP3_PARSE_COUNT);

const char *
pg_pop3_command_kind_to_string (PgPop3CommandKind kind)
{
  g_return_val_if_fail (kind < PG_POP3_COMMAND_COUNT, "INVALID");
  return pg_pop3_command_specs[kind].name;
}

const char *
pg_pop3_parse_result_to_string (PgPop3ParseResult result)
{
  g_return_val_if_fail (result < PG_POP3_PARSE_COUNT, "INVALID");
  return pg_pop3_parse_result_names[result];
}

void
pg_pop3_command_clear (PgPop3Command *command)
{
  if (command == NULL)
    return;
  pg_secret_free (g_steal_pointer (&command->arg1));
  pg_secret_free (g_steal_pointer (&command->arg2));
  memset (command, 0, sizeof (*command));
  command->kind = PG_POP3_COMMAND_UNKNOWN;
}

/* Strict decimal: digits only, at least one, value in min..G_MAXUINT32. Leading zeros
 * are harmless ("01" is 1) and RFC 1939 does not forbid them. */
static gboolean
pg_pop3_command_parse_number (const char *p, gsize len, guint32 min, guint32 *out_value)
{
  guint64 value = 0;

  if (len == 0)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    {
      if (!g_ascii_isdigit (p[i]))
        return FALSE;
      value = value * 10 + (guint64) (p[i] - '0');
      if (value > G_MAXUINT32)
        return FALSE;
    }
  if (value < min)
    return FALSE;
  *out_value = (guint32) value;
  return TRUE;
}

static PgPop3CommandKind
pg_pop3_command_lookup (const char *keyword, gsize len)
{
  for (guint i = 0; i < PG_POP3_COMMAND_UNKNOWN; i++)
    {
      const char *name = pg_pop3_command_specs[i].name;

      /* The first letter first: a RETR, one per message, passed ten strlen()s. */
      if (len > 0 && g_ascii_toupper (keyword[0]) == name[0] && strlen (name) == len
          && g_ascii_strncasecmp (name, keyword, len) == 0)
        return (PgPop3CommandKind) i;
    }
  return PG_POP3_COMMAND_UNKNOWN;
}

PgPop3ParseResult
pg_pop3_command_parse (const char *line, gsize len, PgPop3Command *out_command)
{
  const PgPop3CommandSpec *spec;
  PgPop3CommandKind kind;
  const char *args[3] = { NULL, NULL, NULL };
  gsize arg_lens[3] = { 0, 0, 0 };
  guint n_args = 0;
  gsize keyword_len = 0;
  gsize pos;
  guint32 numbers[2] = { 0, 0 };

  g_return_val_if_fail (line != NULL || len == 0, PG_POP3_PARSE_UNKNOWN_COMMAND);
  g_return_val_if_fail (out_command != NULL, PG_POP3_PARSE_UNKNOWN_COMMAND);

  memset (out_command, 0, sizeof (*out_command));
  out_command->kind = PG_POP3_COMMAND_UNKNOWN;

  while (keyword_len < len && line[keyword_len] != ' ')
    keyword_len++;
  kind = pg_pop3_command_lookup (line, keyword_len);
  out_command->kind = kind;

  /* Control bytes never belong in a command; a NUL would also cut a password short. */
  for (gsize i = 0; i < len; i++)
    {
      guchar c = (guchar) line[i];

      if (c < 0x20 || c == 0x7f)
        return PG_POP3_PARSE_BAD_CHARACTER;
    }

  if (kind == PG_POP3_COMMAND_UNKNOWN)
    return PG_POP3_PARSE_UNKNOWN_COMMAND;
  spec = &pg_pop3_command_specs[kind];

  if (spec->types[0] == PG_POP3_ARG_REST)
    {
      /* Exactly one space after the keyword; everything after it is the argument. */
      if (keyword_len + 1 >= len)
        return PG_POP3_PARSE_MISSING_ARGUMENT;
      out_command->arg1 = g_strndup (line + keyword_len + 1, len - keyword_len - 1);
      return PG_POP3_PARSE_OK;
    }

  pos = keyword_len;
  for (;;)
    {
      gsize start;

      while (pos < len && line[pos] == ' ')
        pos++;
      if (pos == len)
        break;
      start = pos;
      while (pos < len && line[pos] != ' ')
        pos++;
      if (n_args == spec->max_args)
        return PG_POP3_PARSE_TOO_MANY_ARGUMENTS;
      args[n_args] = line + start;
      arg_lens[n_args] = pos - start;
      n_args++;
    }
  if (n_args < spec->min_args)
    return PG_POP3_PARSE_MISSING_ARGUMENT;

  for (guint i = 0; i < n_args; i++)
    {
      switch (spec->types[i])
        {
        case PG_POP3_ARG_MESSAGE:
          if (!pg_pop3_command_parse_number (args[i], arg_lens[i], 1, &numbers[i]))
            return PG_POP3_PARSE_BAD_NUMBER;
          break;
        case PG_POP3_ARG_LINES:
          if (!pg_pop3_command_parse_number (args[i], arg_lens[i], 0, &numbers[i]))
            return PG_POP3_PARSE_BAD_NUMBER;
          break;
        case PG_POP3_ARG_STRING:
        case PG_POP3_ARG_NONE:
        case PG_POP3_ARG_REST:
          break;
        }
    }

  for (guint i = 0; i < n_args; i++)
    {
      switch (spec->types[i])
        {
        case PG_POP3_ARG_MESSAGE:
          out_command->has_message = TRUE;
          out_command->message = numbers[i];
          break;
        case PG_POP3_ARG_LINES:
          out_command->lines = numbers[i];
          break;
        case PG_POP3_ARG_STRING:
          if (i == 0)
            out_command->arg1 = g_strndup (args[i], arg_lens[i]);
          else
            out_command->arg2 = g_strndup (args[i], arg_lens[i]);
          break;
        case PG_POP3_ARG_NONE:
        case PG_POP3_ARG_REST:
          break;
        }
    }
  return PG_POP3_PARSE_OK;
}
