/* popgate tests — a tiny synchronous IMAP client.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-imap.h"

#include "popgate/pg-core.h"

#include <stdlib.h>

#define PG_TEST_IMAP_READ_CHUNK 16384

struct _PgTestImap
{
  GIOStream *stream;     /* owned: GSocketConnection or GTlsConnection */
  GInputStream *input;   /* unowned: of stream */
  GOutputStream *output; /* unowned: of stream */
  guint8 buffer[PG_TEST_IMAP_READ_CHUNK];
  gsize start; /* unread bytes are buffer[start..end) */
  gsize end;
  guint tag;
  gchar *greeting; /* owned */
};

/* One response: its text with any literals inline, and where the literals are. */
typedef struct
{
  GByteArray *text; /* owned: no trailing CRLF */
  GArray *literals; /* owned: of PgTestImapSpan */
} PgTestImapResponse;

typedef struct
{
  gsize offset;
  gsize len;
} PgTestImapSpan;

static void
pg_test_imap_response_free (PgTestImapResponse *response)
{
  g_byte_array_unref (response->text);
  g_array_unref (response->literals);
  g_free (response);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestImapResponse, pg_test_imap_response_free)

static gboolean
pg_test_imap_fill (PgTestImap *imap, GError **error)
{
  gssize n;

  if (imap->start == imap->end)
    imap->start = imap->end = 0;
  if (imap->end == sizeof imap->buffer)
    {
      memmove (imap->buffer, imap->buffer + imap->start, imap->end - imap->start);
      imap->end -= imap->start;
      imap->start = 0;
    }
  n = g_input_stream_read (imap->input, imap->buffer + imap->end, sizeof imap->buffer - imap->end,
                           NULL, error);
  if (n < 0)
    return FALSE;
  if (n == 0)
    {
      g_set_error_literal (error, PG_ERROR, PG_ERROR_UPSTREAM, "IMAP server closed the connection");
      return FALSE;
    }
  imap->end += (gsize) n;
  return TRUE;
}

/* Append one line (without CRLF) to `line`. Bounded by PG_TEST_IMAP_MAX_LINE. */
static gboolean
pg_test_imap_read_line_into (PgTestImap *imap, GByteArray *line, GError **error)
{
  gsize limit = line->len + PG_TEST_IMAP_MAX_LINE;

  for (;;)
    {
      for (gsize i = imap->start; i < imap->end; i++)
        if (imap->buffer[i] == '\n')
          {
            g_byte_array_append (line, imap->buffer + imap->start, (guint) (i - imap->start));
            imap->start = i + 1;
            if (line->len > 0 && line->data[line->len - 1] == '\r')
              g_byte_array_set_size (line, line->len - 1);
            return TRUE;
          }
      g_byte_array_append (line, imap->buffer + imap->start, (guint) (imap->end - imap->start));
      imap->start = imap->end;
      if (line->len > limit)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_LINE_TOO_LONG, "IMAP line over %d bytes",
                       PG_TEST_IMAP_MAX_LINE);
          return FALSE;
        }
      if (!pg_test_imap_fill (imap, error))
        return FALSE;
    }
}

static gboolean
pg_test_imap_read_exact (PgTestImap *imap, GByteArray *into, gsize len, GError **error)
{
  while (len > 0)
    {
      gsize chunk;

      if (imap->start == imap->end && !pg_test_imap_fill (imap, error))
        return FALSE;
      chunk = MIN (len, imap->end - imap->start);
      g_byte_array_append (into, imap->buffer + imap->start, (guint) chunk);
      imap->start += chunk;
      len -= chunk;
    }
  return TRUE;
}

/* If the text ends in "{N}" or "{N+}", the literal's size. */
static gboolean
pg_test_imap_literal_size (const GByteArray *text, gsize from, gsize *out_size)
{
  gsize end = text->len;
  gsize digits_end;
  gsize i;
  guint64 size = 0;

  if (end <= from || text->data[end - 1] != '}')
    return FALSE;
  digits_end = end - 1;
  if (digits_end > from && text->data[digits_end - 1] == '+')
    digits_end--;
  i = digits_end;
  while (i > from && g_ascii_isdigit (text->data[i - 1]))
    i--;
  if (i == digits_end || i == from || text->data[i - 1] != '{' || digits_end - i > 12)
    return FALSE;
  for (gsize j = i; j < digits_end; j++)
    size = size * 10 + (guint64) (text->data[j] - '0');
  *out_size = (gsize) size;
  return TRUE;
}

static PgTestImapResponse *
pg_test_imap_read_response (PgTestImap *imap, GError **error)
{
  g_autoptr (PgTestImapResponse) response = g_new0 (PgTestImapResponse, 1);
  gsize line_start = 0;
  gsize size = 0;

  response->text = g_byte_array_new ();
  response->literals = g_array_new (FALSE, FALSE, sizeof (PgTestImapSpan));
  for (;;)
    {
      PgTestImapSpan span;

      if (!pg_test_imap_read_line_into (imap, response->text, error))
        return NULL;
      if (!pg_test_imap_literal_size (response->text, line_start, &size))
        return g_steal_pointer (&response);
      if (size > PG_TEST_IMAP_MAX_LITERAL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_LIMIT,
                       "IMAP literal of %" G_GSIZE_FORMAT " bytes is over the limit", size);
          return NULL;
        }
      g_byte_array_append (response->text, (const guint8 *) "\r\n", 2);
      span.offset = response->text->len;
      span.len = size;
      if (!pg_test_imap_read_exact (imap, response->text, size, error))
        return NULL;
      g_array_append_val (response->literals, span);
      line_start = response->text->len;
    }
}

/* The response's text as a C string: a NUL is kept just past its length. */
static const char *
pg_test_imap_response_str (PgTestImapResponse *response)
{
  g_byte_array_append (response->text, (const guint8 *) "", 1);
  g_byte_array_set_size (response->text, response->text->len - 1);
  return (const char *) response->text->data;
}

static gboolean
pg_test_imap_write (PgTestImap *imap, const void *data, gsize len, GError **error)
{
  return g_output_stream_write_all (imap->output, data, len, NULL, NULL, error);
}

PgTestImap *
pg_test_imap_connect_full (const char *host, guint16 port, const char *ca_file,
                           const char *tls_identity, guint timeout_s, GError **error)
{
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GSocketConnection) connection = NULL;
  g_autoptr (PgTestImap) imap = g_new0 (PgTestImap, 1);
  g_autoptr (GByteArray) greeting = g_byte_array_new ();

  g_socket_client_set_timeout (client, timeout_s);
  connection = g_socket_client_connect_to_host (client, host, port, NULL, error);
  if (connection == NULL)
    return NULL;
  if (ca_file != NULL)
    {
      g_autoptr (GTlsDatabase) database = g_tls_file_database_new (ca_file, error);
      g_autoptr (GSocketConnectable) identity = NULL;
      g_autoptr (GInetAddress) inet = NULL;
      g_autoptr (GIOStream) tls = NULL;

      if (database == NULL)
        return NULL;
      if (tls_identity == NULL)
        tls_identity = host;
      inet = g_inet_address_new_from_string (tls_identity);
      if (inet != NULL)
        identity = G_SOCKET_CONNECTABLE (g_inet_socket_address_new (inet, port));
      else
        identity = g_network_address_new (tls_identity, port);
      tls = g_tls_client_connection_new (G_IO_STREAM (connection), identity, error);
      if (tls == NULL)
        return NULL;
      g_tls_connection_set_database (G_TLS_CONNECTION (tls), database);
      if (!g_tls_connection_handshake (G_TLS_CONNECTION (tls), NULL, error))
        return NULL;
      imap->stream = g_steal_pointer (&tls);
    }
  else
    imap->stream = G_IO_STREAM (g_steal_pointer (&connection));
  imap->input = g_io_stream_get_input_stream (imap->stream);
  imap->output = g_io_stream_get_output_stream (imap->stream);

  if (!pg_test_imap_read_line_into (imap, greeting, error))
    return NULL;
  g_byte_array_append (greeting, (const guint8 *) "", 1);
  imap->greeting = g_strdup ((const char *) greeting->data);
  if (!g_str_has_prefix (imap->greeting, "* OK"))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_UPSTREAM, "IMAP greeting is not OK: %s",
                   imap->greeting);
      return NULL;
    }
  return g_steal_pointer (&imap);
}

PgTestImap *
pg_test_imap_connect (const char *host, guint16 port, const char *ca_file, GError **error)
{
  return pg_test_imap_connect_full (host, port, ca_file, NULL, PG_TEST_IMAP_TIMEOUT_S, error);
}

void
pg_test_imap_free (PgTestImap *imap)
{
  if (imap == NULL)
    return;
  if (imap->stream != NULL)
    g_io_stream_close (imap->stream, NULL, NULL);
  g_clear_object (&imap->stream);
  g_free (imap->greeting);
  g_free (imap);
}

const char *
pg_test_imap_get_greeting (PgTestImap *imap)
{
  return imap->greeting;
}

/* A command is a sequence of text pieces and literals. */
typedef struct
{
  const void *data;
  gsize len;
  gboolean literal;
} PgTestImapPart;

/* Send a command made of parts and read up to its tagged reply. Returns all responses;
 * *out_status gets "OK", "NO" or "BAD" (the tagged one is the last response). */
static GPtrArray *
pg_test_imap_exec_parts (PgTestImap *imap, const PgTestImapPart *parts, gsize n_parts,
                         gchar **out_status, GError **error)
{
  g_autoptr (GPtrArray) responses
      = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_test_imap_response_free);
  g_autofree gchar *tag = g_strdup_printf ("T%u", ++imap->tag);
  gsize tag_len = strlen (tag);
  PgTestImapResponse *last = NULL;
  const char *status = NULL;
  /* What goes out in one write: the command up to the next literal's head, then that
   * literal and the text after it. Many small writes would each wait for the server's
   * delayed ACK (Nagle's algorithm), 40 ms per command on loopback. */
  g_autoptr (GString) out = g_string_new (tag);

  g_string_append_c (out, ' ');
  for (gsize i = 0; i < n_parts; i++)
    {
      if (parts[i].literal)
        {
          g_string_append_printf (out, "{%" G_GSIZE_FORMAT "}\r\n", parts[i].len);
          if (!pg_test_imap_write (imap, out->str, out->len, error))
            return NULL;
          g_string_truncate (out, 0);
          /* Synchronising literal: wait for the continuation, keep untagged responses. */
          for (;;)
            {
              PgTestImapResponse *response = pg_test_imap_read_response (imap, error);

              if (response == NULL)
                return NULL;
              if (response->text->len > 0 && response->text->data[0] == '+')
                {
                  pg_test_imap_response_free (response);
                  break;
                }
              g_ptr_array_add (responses, response);
              if (response->text->len > tag_len && memcmp (response->text->data, tag, tag_len) == 0
                  && response->text->data[tag_len] == ' ')
                {
                  g_set_error (error, PG_ERROR, PG_ERROR_UPSTREAM, "literal refused: %.*s",
                               (int) MIN (response->text->len, 200),
                               (const char *) response->text->data);
                  return NULL;
                }
            }
        }
      g_string_append_len (out, parts[i].data, (gssize) parts[i].len);
    }
  g_string_append (out, "\r\n");
  if (!pg_test_imap_write (imap, out->str, out->len, error)
      || !g_output_stream_flush (imap->output, NULL, error))
    return NULL;

  for (;;)
    {
      last = pg_test_imap_read_response (imap, error);
      if (last == NULL)
        return NULL;
      g_ptr_array_add (responses, last);
      if (last->text->len > tag_len && memcmp (last->text->data, tag, tag_len) == 0
          && last->text->data[tag_len] == ' ')
        break;
    }
  status = pg_test_imap_response_str (last) + tag_len + 1;
  if (g_str_has_prefix (status, "OK"))
    *out_status = g_strdup ("OK");
  else if (g_str_has_prefix (status, "NO"))
    *out_status = g_strdup ("NO");
  else if (g_str_has_prefix (status, "BAD"))
    *out_status = g_strdup ("BAD");
  else
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "bad tagged response: %s", status);
      return NULL;
    }
  return g_steal_pointer (&responses);
}

/* As above, but anything but OK is an error (NO: `no_code`). */
static GPtrArray *
pg_test_imap_exec_ok (PgTestImap *imap, const PgTestImapPart *parts, gsize n_parts, PgError no_code,
                      GError **error)
{
  g_autofree gchar *status = NULL;
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_parts (imap, parts, n_parts, &status, error);
  PgTestImapResponse *last = NULL;

  if (responses == NULL)
    return NULL;
  if (g_strcmp0 (status, "OK") != 0)
    {
      last = g_ptr_array_index (responses, responses->len - 1);
      g_set_error (error, PG_ERROR, g_strcmp0 (status, "NO") == 0 ? no_code : PG_ERROR_UPSTREAM,
                   "IMAP: %.*s", (int) MIN (last->text->len, 500), (const char *) last->text->data);
      return NULL;
    }
  return g_steal_pointer (&responses);
}

static GPtrArray *
pg_test_imap_exec_text (PgTestImap *imap, const char *command, GError **error)
{
  PgTestImapPart part = { command, strlen (command), FALSE };

  return pg_test_imap_exec_ok (imap, &part, 1, PG_ERROR_UPSTREAM, error);
}

static gchar *
pg_test_imap_join (GPtrArray *responses)
{
  g_autoptr (GByteArray) all = g_byte_array_new ();

  for (guint i = 0; i < responses->len; i++)
    {
      PgTestImapResponse *response = g_ptr_array_index (responses, i);

      g_byte_array_append (all, response->text->data, response->text->len);
      g_byte_array_append (all, (const guint8 *) "\r\n", 2);
    }
  g_byte_array_append (all, (const guint8 *) "", 1);
  return (gchar *) g_byte_array_free (g_steal_pointer (&all), FALSE);
}

gchar *
pg_test_imap_command_status (PgTestImap *imap, const char *command, gchar **out_status,
                             GError **error)
{
  PgTestImapPart part = { command, strlen (command), FALSE };
  g_autofree gchar *status = NULL;
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_parts (imap, &part, 1, &status, error);

  if (responses == NULL)
    return NULL;
  if (out_status != NULL)
    *out_status = g_steal_pointer (&status);
  return pg_test_imap_join (responses);
}

gchar *
pg_test_imap_command (PgTestImap *imap, const char *command, GError **error)
{
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, command, error);

  return responses != NULL ? pg_test_imap_join (responses) : NULL;
}

gboolean
pg_test_imap_send_raw (PgTestImap *imap, const void *data, gsize len, GError **error)
{
  return pg_test_imap_write (imap, data, len, error)
         && g_output_stream_flush (imap->output, NULL, error);
}

gchar *
pg_test_imap_read_line (PgTestImap *imap, GError **error)
{
  g_autoptr (GByteArray) line = g_byte_array_new ();

  if (!pg_test_imap_read_line_into (imap, line, error))
    return NULL;
  g_byte_array_append (line, (const guint8 *) "", 1);
  return (gchar *) g_byte_array_free (g_steal_pointer (&line), FALSE);
}

gboolean
pg_test_imap_login (PgTestImap *imap, const char *user, const char *password, GError **error)
{
  const PgTestImapPart parts[] = {
    { "LOGIN ", 6, FALSE },
    { user, strlen (user), TRUE },
    { " ", 1, FALSE },
    { password, strlen (password), TRUE },
  };
  g_autoptr (GPtrArray) responses
      = pg_test_imap_exec_ok (imap, parts, G_N_ELEMENTS (parts), PG_ERROR_AUTH_FAILED, error);

  return responses != NULL;
}

/* A mailbox name as an IMAP quoted string. */
static gchar *
pg_test_imap_quote (const char *text)
{
  GString *quoted = g_string_new ("\"");

  for (const char *p = text; *p != '\0'; p++)
    {
      if (*p == '"' || *p == '\\')
        g_string_append_c (quoted, '\\');
      g_string_append_c (quoted, *p);
    }
  g_string_append_c (quoted, '"');
  return g_string_free (quoted, FALSE);
}

/* The number after `key` in `text`, if any. */
static gboolean
pg_test_imap_find_number (const char *text, const char *key, guint32 *out_value)
{
  const char *p = strstr (text, key);
  guint64 value = 0;
  char *end = NULL;

  if (p == NULL)
    return FALSE;
  p += strlen (key);
  if (!g_ascii_isdigit (*p))
    return FALSE;
  value = g_ascii_strtoull (p, &end, 10);
  if (value > G_MAXUINT32)
    return FALSE;
  *out_value = (guint32) value;
  return TRUE;
}

gboolean
pg_test_imap_select (PgTestImap *imap, const char *mailbox, gboolean read_only,
                     guint32 *out_uidvalidity, guint32 *out_exists, GError **error)
{
  g_autofree gchar *quoted = pg_test_imap_quote (mailbox);
  g_autofree gchar *command = g_strdup_printf ("%s %s", read_only ? "EXAMINE" : "SELECT", quoted);
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, command, error);
  guint32 uidvalidity = 0;
  guint32 exists = 0;

  if (responses == NULL)
    return FALSE;
  for (guint i = 0; i < responses->len; i++)
    {
      const char *text = pg_test_imap_response_str (g_ptr_array_index (responses, i));
      guint32 value = 0;

      if (pg_test_imap_find_number (text, "* OK [UIDVALIDITY ", &value))
        uidvalidity = value;
      else if (g_str_has_prefix (text, "* ") && g_str_has_suffix (text, " EXISTS")
               && pg_test_imap_find_number (text, "* ", &value))
        exists = value;
    }
  if (out_uidvalidity != NULL)
    *out_uidvalidity = uidvalidity;
  if (out_exists != NULL)
    *out_exists = exists;
  return TRUE;
}

static gint
pg_test_imap_compare_uid (gconstpointer a, gconstpointer b)
{
  guint32 x = *(const guint32 *) a;
  guint32 y = *(const guint32 *) b;

  return x < y ? -1 : x > y;
}

GArray *
pg_test_imap_uid_search_all (PgTestImap *imap, GError **error)
{
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, "UID SEARCH ALL", error);
  g_autoptr (GArray) uids = NULL;

  if (responses == NULL)
    return NULL;
  uids = g_array_new (FALSE, FALSE, sizeof (guint32));
  for (guint i = 0; i < responses->len; i++)
    {
      const char *text = pg_test_imap_response_str (g_ptr_array_index (responses, i));
      g_auto (GStrv) words = NULL;

      if (!g_str_has_prefix (text, "* SEARCH"))
        continue;
      words = g_strsplit (text + strlen ("* SEARCH"), " ", -1);
      for (gsize w = 0; words[w] != NULL; w++)
        {
          guint64 uid = 0;

          if (words[w][0] == '\0')
            continue;
          if (!g_ascii_string_to_unsigned (words[w], 10, 1, G_MAXUINT32, &uid, error))
            return NULL;
          g_array_append_vals (uids, &(guint32){ (guint32) uid }, 1);
        }
    }
  g_array_sort (uids, pg_test_imap_compare_uid);
  return g_steal_pointer (&uids);
}

/* The untagged FETCH response for `uid`, if the server sent one. */
static PgTestImapResponse *
pg_test_imap_find_fetch (GPtrArray *responses, guint32 uid)
{
  g_autofree gchar *needle = g_strdup_printf ("UID %u", uid);

  for (guint i = 0; i < responses->len; i++)
    {
      PgTestImapResponse *response = g_ptr_array_index (responses, i);
      const char *text = pg_test_imap_response_str (response);
      const char *paren = strstr (text, " FETCH (");
      gsize len = 0;
      const char *found = NULL;

      if (!g_str_has_prefix (text, "* ") || paren == NULL)
        continue;
      /* Look only at the text before the first literal (the UID item precedes it in
       * Dovecot's replies, and literal bytes could contain anything). */
      len = response->literals->len > 0
                ? g_array_index (response->literals, PgTestImapSpan, 0).offset
                : response->text->len;
      found = g_strstr_len (paren, (gssize) (len - (gsize) (paren - text)), needle);
      if (found != NULL && !g_ascii_isdigit (found[strlen (needle)]))
        return response;
    }
  return NULL;
}

GBytes *
pg_test_imap_fetch_body (PgTestImap *imap, guint32 uid, GError **error)
{
  g_autofree gchar *command = g_strdup_printf ("UID FETCH %u BODY.PEEK[]", uid);
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, command, error);
  PgTestImapResponse *response = NULL;

  if (responses == NULL)
    return NULL;
  response = pg_test_imap_find_fetch (responses, uid);
  if (response == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no message with UID %u", uid);
      return NULL;
    }
  for (guint i = 0; i < response->literals->len; i++)
    {
      PgTestImapSpan span = g_array_index (response->literals, PgTestImapSpan, i);
      const char *text = (const char *) response->text->data;
      gsize brace = span.offset - 2; /* the literal follows "{N}" CRLF */

      /* It is the BODY[] literal if "BODY[] " comes right before its "{N}". */
      while (brace > 0 && text[brace] != '{')
        brace--;
      if (brace >= 7 && memcmp (text + brace - 7, "BODY[] ", 7) == 0)
        return g_bytes_new (response->text->data + span.offset, span.len);
    }
  g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "FETCH for UID %u has no BODY[] literal", uid);
  return NULL;
}

GStrv
pg_test_imap_fetch_flags (PgTestImap *imap, guint32 uid, GError **error)
{
  g_autofree gchar *command = g_strdup_printf ("UID FETCH %u (FLAGS)", uid);
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, command, error);
  PgTestImapResponse *response = NULL;
  const char *flags = NULL;
  const char *end = NULL;
  g_autofree gchar *list = NULL;
  g_autoptr (GStrvBuilder) builder = g_strv_builder_new ();
  g_auto (GStrv) words = NULL;

  if (responses == NULL)
    return NULL;
  response = pg_test_imap_find_fetch (responses, uid);
  if (response == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no message with UID %u", uid);
      return NULL;
    }
  flags = strstr (pg_test_imap_response_str (response), "FLAGS (");
  end = flags != NULL ? strchr (flags, ')') : NULL;
  if (end == NULL)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "FETCH for UID %u has no FLAGS", uid);
      return NULL;
    }
  flags += strlen ("FLAGS (");
  list = g_strndup (flags, (gsize) (end - flags));
  words = g_strsplit (list, " ", -1);
  for (gsize i = 0; words[i] != NULL; i++)
    if (words[i][0] != '\0')
      g_strv_builder_add (builder, words[i]);
  return g_strv_builder_end (builder);
}

gboolean
pg_test_imap_append (PgTestImap *imap, const char *mailbox, const char *flags, const void *data,
                     gsize len, guint32 *out_uid, GError **error)
{
  g_autofree gchar *quoted = pg_test_imap_quote (mailbox);
  g_autofree gchar *head = g_strdup_printf ("APPEND %s%s%s%s ", quoted, flags ? " (" : "",
                                            flags ? flags : "", flags ? ")" : "");
  const PgTestImapPart parts[] = {
    { head, strlen (head), FALSE },
    { data, len, TRUE },
  };
  g_autoptr (GPtrArray) responses
      = pg_test_imap_exec_ok (imap, parts, G_N_ELEMENTS (parts), PG_ERROR_UPSTREAM, error);
  const char *tagged = NULL;
  const char *appenduid = NULL;
  guint32 uid = 0;

  if (responses == NULL)
    return FALSE;
  tagged = pg_test_imap_response_str (g_ptr_array_index (responses, responses->len - 1));
  appenduid = strstr (tagged, "[APPENDUID ");
  if (appenduid != NULL)
    {
      const char *space = strchr (appenduid + strlen ("[APPENDUID "), ' ');

      if (space != NULL)
        uid = (guint32) g_ascii_strtoull (space + 1, NULL, 10);
    }
  if (out_uid != NULL)
    *out_uid = uid;
  return TRUE;
}

gboolean
pg_test_imap_uid_store (PgTestImap *imap, guint32 uid, const char *item, GError **error)
{
  g_autofree gchar *command = g_strdup_printf ("UID STORE %u %s", uid, item);
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, command, error);

  return responses != NULL;
}

gboolean
pg_test_imap_expunge_uid (PgTestImap *imap, guint32 uid, GError **error)
{
  g_autofree gchar *command = g_strdup_printf ("UID EXPUNGE %u", uid);
  g_autoptr (GPtrArray) responses = NULL;

  if (!pg_test_imap_uid_store (imap, uid, "+FLAGS.SILENT (\\Deleted)", error))
    return FALSE;
  responses = pg_test_imap_exec_text (imap, command, error);
  return responses != NULL;
}

gboolean
pg_test_imap_logout (PgTestImap *imap, GError **error)
{
  g_autoptr (GPtrArray) responses = pg_test_imap_exec_text (imap, "LOGOUT", error);

  return responses != NULL;
}

gboolean
pg_test_imap_read_bytes (PgTestImap *imap, GByteArray *into, gsize len, GError **error)
{
  return pg_test_imap_read_exact (imap, into, len, error);
}

gssize
pg_test_imap_send_until_stuck (PgTestImap *imap, const void *data, gsize len, guint stuck_ms,
                               GError **error)
{
  GSocket *socket;
  gsize sent = 0;

  if (!G_IS_SOCKET_CONNECTION (imap->stream))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "plain TCP only");
      return -1;
    }
  socket = g_socket_connection_get_socket (G_SOCKET_CONNECTION (imap->stream));
  while (sent < len)
    {
      g_autoptr (GError) local = NULL;
      gssize n = g_socket_send_with_blocking (socket, (const gchar *) data + sent, len - sent,
                                              FALSE, NULL, &local);

      if (n > 0)
        {
          sent += (gsize) n;
          continue;
        }
      if (!g_error_matches (local, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        {
          g_propagate_error (error, g_steal_pointer (&local));
          return -1;
        }
      if (!g_socket_condition_timed_wait (socket, G_IO_OUT, (gint64) stuck_ms * 1000, NULL, NULL))
        break;
    }
  return (gssize) sent;
}
