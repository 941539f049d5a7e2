/* popgate — structured logging to journald or stderr, session ids, escaping, redaction.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-core.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static PgLogLevel log_level = PG_LOG_LEVEL_WARNING;
static gboolean log_to_journal = FALSE;

static gboolean
pg_log_level_enabled (GLogLevelFlags level)
{
  if (level
      & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE))
    return TRUE;
  if (level & G_LOG_LEVEL_INFO)
    return log_level >= PG_LOG_LEVEL_INFO;
  return log_level >= PG_LOG_LEVEL_DEBUG;
}

static const char *
pg_log_level_name (GLogLevelFlags level)
{
  if (level & G_LOG_LEVEL_ERROR)
    return "error";
  if (level & G_LOG_LEVEL_CRITICAL)
    return "critical";
  if (level & G_LOG_LEVEL_WARNING)
    return "warning";
  if (level & G_LOG_LEVEL_MESSAGE)
    return "notice";
  if (level & G_LOG_LEVEL_INFO)
    return "info";
  return "debug";
}

static GLogWriterOutput
pg_log_writer_cb (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  const char *message = NULL;
  const char *domain = NULL;
  g_autoptr (GDateTime) now = NULL;
  g_autofree gchar *stamp = NULL;

  if (!pg_log_level_enabled (level))
    return G_LOG_WRITER_HANDLED;
  if (log_to_journal)
    return g_log_writer_journald (level, fields, n_fields, user_data);

  for (gsize i = 0; i < n_fields; i++)
    {
      if (g_strcmp0 (fields[i].key, "MESSAGE") == 0)
        message = fields[i].value;
      else if (g_strcmp0 (fields[i].key, "GLIB_DOMAIN") == 0)
        domain = fields[i].value;
    }
  now = g_date_time_new_now_utc ();
  stamp = g_date_time_format (now, "%H:%M:%S.%f");
  /* %f prints microseconds; milliseconds are enough for a log line. */
  if (stamp != NULL && strlen (stamp) > 12)
    stamp[12] = '\0';
  fprintf (stderr, "%s %s %s: %s\n", stamp != NULL ? stamp : "?", domain ? domain : "popgate",
           pg_log_level_name (level), message ? message : "");
  fflush (stderr);
  return G_LOG_WRITER_HANDLED;
}

void
pg_log_init (PgLogLevel level)
{
  static gboolean installed = FALSE;

  log_level = level;
  if (installed)
    return;
  installed = TRUE;
  /* GLib checks JOURNAL_STREAM against stderr's device and inode for us. */
  log_to_journal = g_log_writer_is_journald (fileno (stderr));
  g_log_set_writer_func (pg_log_writer_cb, NULL, NULL);
}

void
pg_log_set_level (PgLogLevel level)
{
  log_level = level;
}

PgLogLevel
pg_log_get_level (void)
{
  return log_level;
}

void
pg_log_session (GLogLevelFlags level, guint64 sid, const char *domain, const char *format, ...)
{
  va_list args;
  g_autofree gchar *text = NULL;
  g_autofree gchar *message = NULL;
  g_autofree gchar *sid_text = NULL;

  if (!pg_log_level_enabled (level))
    return;
  va_start (args, format);
  text = g_strdup_vprintf (format, args);
  va_end (args);

  if (sid != 0)
    {
      sid_text = g_strdup_printf ("%" G_GUINT64_FORMAT, sid);
      message = g_strdup_printf ("[%s] %s", sid_text, text);
    }
  else
    message = g_steal_pointer (&text);

  {
    const GLogField fields[] = {
      { "MESSAGE", message, -1 },
      { "GLIB_DOMAIN", domain != NULL ? domain : "popgate", -1 },
      { "PRIORITY",
        level & G_LOG_LEVEL_WARNING   ? "4"
        : level & G_LOG_LEVEL_MESSAGE ? "5"
        : level & G_LOG_LEVEL_INFO    ? "6"
                                      : "7",
        -1 },
      { "POPGATE_SESSION", sid_text != NULL ? sid_text : "0", -1 },
    };
    g_log_structured_array (level, fields, G_N_ELEMENTS (fields));
  }
}

gchar *
pg_log_escape (const void *data, gsize len, gsize max_len)
{
  const guchar *p = data;
  gsize shown = MIN (len, max_len);
  GString *out = g_string_sized_new (shown + 16);

  for (gsize i = 0; i < shown; i++)
    {
      guchar c = p[i];
      /* A backslash is doubled only where it could read as one of our escapes (before
       * x, r, n, a backslash, or a byte that is itself escaped), so "(\Deleted)" stays
       * readable and "\x41" in the text cannot pass for a byte. */
      if (c == '\\')
        {
          guchar next = i + 1 < shown ? p[i + 1] : 'x';
          gboolean ambiguous = next == 'x' || next == 'r' || next == 'n' || next == '\\'
                               || next < 0x20 || next >= 0x7f;

          g_string_append (out, ambiguous ? "\\\\" : "\\");
        }
      else if (c >= 0x20 && c < 0x7f)
        g_string_append_c (out, (gchar) c);
      else if (c == '\r')
        g_string_append (out, "\\r");
      else if (c == '\n')
        g_string_append (out, "\\n");
      else
        g_string_append_printf (out, "\\x%02x", c);
    }
  if (shown < len)
    g_string_append_printf (out, "…(+%" G_GSIZE_FORMAT " bytes)", len - shown);
  return g_string_free (out, FALSE);
}

/* Split off the next space-separated word of [*pos, end). */
static gboolean
pg_log_next_word (const char **pos, const char *end, const char **out_start, gsize *out_len)
{
  const char *p = *pos;

  while (p < end && *p == ' ')
    p++;
  if (p >= end)
    return FALSE;
  *out_start = p;
  while (p < end && *p != ' ' && *p != '\r' && *p != '\n')
    p++;
  *out_len = (gsize) (p - *out_start);
  *pos = p;
  return *out_len > 0;
}

static gboolean
pg_log_word_is (const char *word, gsize len, const char *keyword)
{
  return strlen (keyword) == len && g_ascii_strncasecmp (word, keyword, len) == 0;
}

#define PG_LOG_MAX_LINE 200

gchar *
pg_log_redact_line (const void *line, gsize len, gboolean is_sasl_data)
{
  const char *start = line;
  const char *end = start + len;
  const char *pos = start;
  const char *w1 = NULL, *w2 = NULL, *w3 = NULL;
  gsize l1 = 0, l2 = 0, l3 = 0;
  gsize keep = 0; /* bytes of the line shown before "<redacted>"; 0 = no redaction */

  if (is_sasl_data)
    return g_strdup ("<redacted>");

  if (!pg_log_next_word (&pos, end, &w1, &l1))
    return pg_log_escape (line, len, PG_LOG_MAX_LINE);
  gboolean has2 = pg_log_next_word (&pos, end, &w2, &l2);
  const char *after2 = pos;
  gboolean has3 = has2 && pg_log_next_word (&pos, end, &w3, &l3);

  /* POP3: PASS secret | AUTH MECH [initial-response] | APOP user digest */
  if (pg_log_word_is (w1, l1, "PASS") && has2)
    keep = (gsize) (w1 + l1 - start);
  else if ((pg_log_word_is (w1, l1, "AUTH") || pg_log_word_is (w1, l1, "APOP")) && has3)
    keep = (gsize) (w2 + l2 - start);
  /* IMAP: tag LOGIN user pass | tag AUTHENTICATE MECH [initial-response] */
  else if (has2 && pg_log_word_is (w2, l2, "LOGIN") && after2 < end)
    keep = (gsize) (w2 + l2 - start);
  else if (has3 && pg_log_word_is (w2, l2, "AUTHENTICATE") && pos < end
           && pg_log_next_word (&pos, end, &w3, &l3))
    keep = (gsize) (w3 - 1 - start);

  if (keep == 0)
    return pg_log_escape (line, len, PG_LOG_MAX_LINE);

  g_autofree gchar *head = pg_log_escape (line, keep, PG_LOG_MAX_LINE);
  return g_strconcat (head, " <redacted>", NULL);
}

gchar *
pg_log_redact_preauth_line (const void *line, gsize len, gboolean tagged, const char *const *known)
{
  const char *start = line;
  const char *end = start + len;
  const char *pos = start;
  const char *tag = NULL, *word = NULL, *arg = NULL;
  gsize tag_len = 0, word_len = 0, arg_len = 0;
  gboolean is_known = FALSE;
  g_autofree gchar *head = NULL;

  if (tagged && !pg_log_next_word (&pos, end, &tag, &tag_len))
    return g_strdup ("");
  if (!pg_log_next_word (&pos, end, &word, &word_len))
    return tagged ? pg_log_escape (tag, tag_len, PG_LOG_MAX_LINE) : g_strdup ("");
  for (gsize i = 0; known != NULL && known[i] != NULL && !is_known; i++)
    is_known = pg_log_word_is (word, word_len, known[i]);
  if (is_known && !tagged && pg_log_word_is (word, word_len, "USER"))
    return pg_log_escape (line, len, PG_LOG_MAX_LINE);
  if (is_known && tagged && pg_log_word_is (word, word_len, "LOGIN"))
    return pg_log_redact_line (line, len, FALSE);
  if (is_known)
    {
      const char *shown_end = word + word_len;

      /* AUTH/AUTHENTICATE: the mechanism is shown when it looks like one (RFC 4422
       * §3.1: up to 20 of A-Z 0-9 - _), never what follows it. */
      if ((pg_log_word_is (word, word_len, "AUTH")
           || pg_log_word_is (word, word_len, "AUTHENTICATE"))
          && pg_log_next_word (&pos, end, &arg, &arg_len))
        {
          gboolean mechanism = arg_len <= 20;
          for (gsize i = 0; i < arg_len && mechanism; i++)
            mechanism = g_ascii_isupper (arg[i]) || g_ascii_isdigit (arg[i]) || arg[i] == '-'
                        || arg[i] == '_';
          if (mechanism)
            shown_end = arg + arg_len;
          else
            pos = arg; /* not a mechanism: redacted with the rest */
        }
      head = pg_log_escape (start, (gsize) (shown_end - start), PG_LOG_MAX_LINE);
    }
  else if (tagged)
    {
      g_autofree gchar *shown_tag = pg_log_escape (tag, tag_len, PG_LOG_MAX_LINE);
      head = g_strconcat (shown_tag, " <unknown command>", NULL);
    }
  else
    head = g_strdup ("<unknown command>");
  if (!pg_log_next_word (&pos, end, &arg, &arg_len))
    return g_steal_pointer (&head);
  return g_strconcat (head, " <redacted>", NULL);
}
