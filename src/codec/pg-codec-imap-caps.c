/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-codec-imap-caps.h"

#include "popgate/pg-limits.h"

#include <string.h>

typedef struct
{
  const char *name;
  gboolean prefix;
  gboolean before_login;
} PgImapCapsWithheld;

#define PG_IMAP_CAPS_ENTRY(name, prefix, before_login, reason) { name, prefix, before_login },
static const PgImapCapsWithheld pg_imap_caps_withheld[]
    = { PG_IMAP_WITHHELD_CAPABILITIES (PG_IMAP_CAPS_ENTRY) };
#undef PG_IMAP_CAPS_ENTRY

G_STATIC_ASSERT (PG_IMAP_CAPS_LINE_PREFIX
                 >= PG_IMAP_RELAY_MAX_TAG + sizeof " PREAUTH [CAPABILITY ");

gboolean
pg_imap_caps_is_withheld (const char *cap, gsize len, gboolean after_login)
{
  for (gsize i = 0; i < G_N_ELEMENTS (pg_imap_caps_withheld); i++)
    {
      const PgImapCapsWithheld *w = &pg_imap_caps_withheld[i];
      gsize n = strlen (w->name);

      if (!after_login && !w->before_login)
        continue;
      if (w->prefix ? len >= n : len == n)
        if (g_ascii_strncasecmp (cap, w->name, n) == 0)
          return TRUE;
    }
  return FALSE;
}

/* ATOM-CHAR (RFC 9051 §9): CHAR except atom-specials; "]" is a resp-special too. */
static gboolean
pg_imap_caps_is_atom (const char *p, gsize len)
{
  if (len == 0)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    {
      guchar c = (guchar) p[i];
      if (c <= 0x20 || c >= 0x7f || strchr ("(){%*\"\\]", c) != NULL)
        return FALSE;
    }
  return TRUE;
}

void
pg_imap_caps_filter (GString *out, const char *caps, gsize len, gboolean after_login)
{
  const char *p = caps;
  const char *end = caps + len;

  while (p < end)
    {
      const char *space = memchr (p, ' ', (gsize) (end - p));
      const char *tok_end = space != NULL ? space : end;
      gsize n = (gsize) (tok_end - p);

      if (pg_imap_caps_is_atom (p, n) && !pg_imap_caps_is_withheld (p, n, after_login))
        {
          if (out->len > 0)
            g_string_append_c (out, ' ');
          g_string_append_len (out, p, (gssize) n);
        }
      p = tok_end + (space != NULL ? 1 : 0);
    }
}

PgImapCapsCommand
pg_imap_caps_command_withheld (const char *word)
{
  static const struct
  {
    const char *word;
    PgImapCapsCommand what;
  } commands[] = {
    { "LOGIN", PG_IMAP_CAPS_COMMAND_NOT_AUTH },
    { "AUTHENTICATE", PG_IMAP_CAPS_COMMAND_NOT_AUTH },
    { "STARTTLS", PG_IMAP_CAPS_COMMAND_STARTTLS },
    { "UNAUTHENTICATE", PG_IMAP_CAPS_COMMAND_UNAUTHENTICATE },
    { "COMPRESS", PG_IMAP_CAPS_COMMAND_COMPRESS },
    { "XCLIENT", PG_IMAP_CAPS_COMMAND_XCLIENT },
  };

  /* Every relayed command passes here: its first letter rules out most entries. */
  char first = g_ascii_toupper (word[0]);

  for (gsize i = 0; i < G_N_ELEMENTS (commands); i++)
    if (commands[i].word[0] == first && g_ascii_strcasecmp (word, commands[i].word) == 0)
      return commands[i].what;
  return PG_IMAP_CAPS_COMMAND_RELAYED;
}

/* Split "tag SP word" off the start of a line: FALSE when the line (len octets) does not
 * yet hold the space after the word (*out_end_seen: it ended or is too long to be one). */
static gboolean
pg_imap_caps_word (const char *line, gsize len, gsize from, gsize max, gsize *out_start,
                   gsize *out_len, gboolean *out_final)
{
  gsize i = from;

  *out_final = FALSE;
  while (i < len && i - from <= max)
    {
      if (line[i] == ' ' || line[i] == '\r' || line[i] == '\n')
        {
          *out_start = from;
          *out_len = i - from;
          *out_final = line[i] != ' ';
          return TRUE;
        }
      i++;
    }
  if (i - from > max)
    *out_final = TRUE; /* too long: no match */
  return FALSE;
}

static gboolean
pg_imap_caps_word_is (const char *line, gsize start, gsize len, const char *word)
{
  return len == strlen (word) && g_ascii_strncasecmp (line + start, word, len) == 0;
}

static gboolean
pg_imap_caps_is_cond (const char *line, gsize start, gsize len)
{
  return pg_imap_caps_word_is (line, start, len, "OK")
         || pg_imap_caps_word_is (line, start, len, "NO")
         || pg_imap_caps_word_is (line, start, len, "BAD")
         || pg_imap_caps_word_is (line, start, len, "BYE")
         || pg_imap_caps_word_is (line, start, len, "PREAUTH");
}

PgImapCapsLine
pg_imap_caps_line_match (const char *line, gsize len)
{
  static const char code[] = "[CAPABILITY";
  gsize tag_start = 0, tag_len = 0, word_start = 0, word_len = 0, rest;
  gboolean final = FALSE;

  if (!pg_imap_caps_word (line, len, 0, PG_IMAP_RELAY_MAX_TAG, &tag_start, &tag_len, &final))
    return final ? PG_IMAP_CAPS_LINE_NO : PG_IMAP_CAPS_LINE_MORE;
  if (final || tag_len == 0)
    return PG_IMAP_CAPS_LINE_NO;
  if (!pg_imap_caps_word (line, len, tag_len + 1, 12, &word_start, &word_len, &final))
    return final ? PG_IMAP_CAPS_LINE_NO : PG_IMAP_CAPS_LINE_MORE;
  if (tag_len == 1 && line[0] == '*'
      && (pg_imap_caps_word_is (line, word_start, word_len, "CAPABILITY")
          || pg_imap_caps_word_is (line, word_start, word_len, "ENABLED")))
    return PG_IMAP_CAPS_LINE_YES;
  if (final || !pg_imap_caps_is_cond (line, word_start, word_len))
    return PG_IMAP_CAPS_LINE_NO;
  /* "<tag> OK [CAPABILITY" and then a space or "]". */
  rest = word_start + word_len + 1;
  for (gsize i = 0; i < sizeof code; i++)
    {
      if (rest + i >= len)
        return PG_IMAP_CAPS_LINE_MORE;
      if (i == sizeof code - 1)
        return line[rest + i] == ' ' || line[rest + i] == ']' ? PG_IMAP_CAPS_LINE_YES
                                                              : PG_IMAP_CAPS_LINE_NO;
      if (g_ascii_toupper (line[rest + i]) != code[i])
        return PG_IMAP_CAPS_LINE_NO;
    }
  return PG_IMAP_CAPS_LINE_NO;
}

gboolean
pg_imap_caps_rewrite_line (GString *out, const char *line, gsize len, const char *extra)
{
  g_autoptr (GString) list = NULL;
  gsize tag_start, tag_len, word_start, word_len, word_end, head_end, body, body_end, eol = len;
  gboolean final;
  gboolean is_enabled;

  if (pg_imap_caps_line_match (line, len) != PG_IMAP_CAPS_LINE_YES)
    {
      g_string_append_len (out, line, (gssize) len);
      return FALSE;
    }
  while (eol > 0 && (line[eol - 1] == '\n' || line[eol - 1] == '\r'))
    eol--;
  pg_imap_caps_word (line, len, 0, PG_IMAP_RELAY_MAX_TAG, &tag_start, &tag_len, &final);
  pg_imap_caps_word (line, len, tag_len + 1, 12, &word_start, &word_len, &final);
  word_end = word_start + word_len;
  is_enabled = pg_imap_caps_word_is (line, word_start, word_len, "ENABLED");
  if (tag_len == 1 && line[0] == '*'
      && (is_enabled || pg_imap_caps_word_is (line, word_start, word_len, "CAPABILITY")))
    {
      /* "* CAPABILITY a b c": the list runs to the line end. */
      head_end = word_end;
      body = word_end < eol ? word_end + 1 : eol;
      body_end = eol;
    }
  else
    {
      /* "<tag> OK [CAPABILITY a b c] text": the list runs to the "]" (the match saw
       * "[CAPABILITY" and a space or "]" after it, all before the line end). */
      const char *close;

      head_end = word_end + 1 + strlen ("[CAPABILITY");
      body = line[head_end] == ' ' ? head_end + 1 : head_end;
      close = memchr (line + body, ']', eol - body);
      body_end = close != NULL ? (gsize) (close - line) : eol;
    }
  list = g_string_new (NULL);
  pg_imap_caps_filter (list, line + body, body_end - body, TRUE);
  /* A capability list names the protocol at least (RFC 9051 §7.2.2). */
  if (list->len == 0 && !is_enabled)
    g_string_append (list, "IMAP4rev1");
  /* popgate's own capabilities are not subject to the filter. */
  if (extra != NULL && extra[0] != '\0' && !is_enabled)
    g_string_append_printf (list, " %s", extra);
  g_string_append_len (out, line, (gssize) head_end);
  if (list->len > 0)
    {
      g_string_append_c (out, ' ');
      g_string_append_len (out, list->str, (gssize) list->len);
    }
  g_string_append_len (out, line + body_end, (gssize) (len - body_end));
  return TRUE;
}
