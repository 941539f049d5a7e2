/* popgate tests — a small synchronous POP3 client.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-test-pop3.h"

#include <string.h>

#define PG_TEST_POP3_TIMEOUT_S 30
#define PG_TEST_POP3_MAX_LINE (64 * 1024)

struct _PgTestPop3
{
  GSocketConnection *socket; /* owned */
  GIOStream *stream;         /* owned: socket or TLS */
  GByteArray *buffer;        /* owned: received, not yet consumed */
  gchar *greeting;           /* owned */
};

void
pg_test_pop3_free (PgTestPop3 *pop3)
{
  if (pop3 == NULL)
    return;
  if (pop3->socket != NULL)
    g_io_stream_close (G_IO_STREAM (pop3->socket), NULL, NULL);
  g_clear_object (&pop3->stream);
  g_clear_object (&pop3->socket);
  g_byte_array_unref (pop3->buffer);
  g_free (pop3->greeting);
  g_free (pop3);
}

static gboolean
pg_test_pop3_handshake (PgTestPop3 *pop3, const char *ca_file, GError **error)
{
  g_autoptr (GTlsDatabase) db = g_tls_file_database_new (ca_file, error);
  g_autoptr (GSocketConnectable) identity = g_network_address_new ("localhost", 0);
  GIOStream *tls;

  if (db == NULL)
    return FALSE;
  tls = g_tls_client_connection_new (pop3->stream, identity, error);
  if (tls == NULL)
    return FALSE;
  g_tls_connection_set_database (G_TLS_CONNECTION (tls), db);
  if (!g_tls_connection_handshake (G_TLS_CONNECTION (tls), NULL, error))
    {
      g_object_unref (tls);
      return FALSE;
    }
  g_object_unref (pop3->stream);
  pop3->stream = tls;
  return TRUE;
}

static PgTestPop3 *
pg_test_pop3_connect_internal (const char *host, guint16 port, const char *bind_ip,
                               const char *ca_file, GError **error)
{
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GInetAddress) ip = g_inet_address_new_from_string (host);
  g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (ip, port);
  g_autoptr (PgTestPop3) pop3 = g_new0 (PgTestPop3, 1);

  pop3->buffer = g_byte_array_new ();
  g_socket_client_set_timeout (client, PG_TEST_POP3_TIMEOUT_S);
  if (bind_ip != NULL)
    {
      g_autoptr (GInetAddress) local = g_inet_address_new_from_string (bind_ip);
      g_autoptr (GSocketAddress) local_addr = g_inet_socket_address_new (local, 0);
      g_socket_client_set_local_address (client, local_addr);
    }
  pop3->socket = g_socket_client_connect (client, G_SOCKET_CONNECTABLE (addr), NULL, error);
  if (pop3->socket == NULL)
    return NULL;
  pop3->stream = G_IO_STREAM (g_object_ref (pop3->socket));
  if (ca_file != NULL && !pg_test_pop3_handshake (pop3, ca_file, error))
    return NULL;
  pop3->greeting = pg_test_pop3_read_line (pop3, error);
  if (pop3->greeting == NULL)
    {
      if (error != NULL && *error == NULL)
        g_set_error (error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED, "closed before greeting");
      return NULL;
    }
  return g_steal_pointer (&pop3);
}

PgTestPop3 *
pg_test_pop3_connect (const char *host, guint16 port, const char *ca_file, GError **error)
{
  return pg_test_pop3_connect_internal (host, port, NULL, ca_file, error);
}

PgTestPop3 *
pg_test_pop3_connect_from (const char *host, guint16 port, const char *bind_ip, GError **error)
{
  return pg_test_pop3_connect_internal (host, port, bind_ip, NULL, error);
}

const char *
pg_test_pop3_get_greeting (PgTestPop3 *pop3)
{
  return pop3->greeting;
}

gboolean
pg_test_pop3_send (PgTestPop3 *pop3, const void *data, gsize len, GError **error)
{
  return g_output_stream_write_all (g_io_stream_get_output_stream (pop3->stream), data, len, NULL,
                                    NULL, error);
}

/* Read more into the buffer; FALSE at EOF (error unset) or error. */
static gboolean
pg_test_pop3_fill (PgTestPop3 *pop3, GError **error)
{
  guint8 chunk[65536];
  gssize n;

  g_socket_set_timeout (g_socket_connection_get_socket (pop3->socket), PG_TEST_POP3_TIMEOUT_S);
  n = g_input_stream_read (g_io_stream_get_input_stream (pop3->stream), chunk, sizeof chunk, NULL,
                           error);
  if (n <= 0)
    return FALSE;
  g_byte_array_append (pop3->buffer, chunk, (guint) n);
  return TRUE;
}

gchar *
pg_test_pop3_read_line (PgTestPop3 *pop3, GError **error)
{
  gsize scanned = 0;

  for (;;)
    {
      /* An empty GByteArray may have no data at all: memchr (NULL, ...) is undefined. */
      const guint8 *lf = pop3->buffer->len > scanned ? memchr (pop3->buffer->data + scanned, '\n',
                                                               pop3->buffer->len - scanned)
                                                     : NULL;
      if (lf != NULL)
        {
          gsize len = (gsize) (lf - pop3->buffer->data);
          gchar *line = g_strndup ((const gchar *) pop3->buffer->data,
                                   len > 0 && lf[-1] == '\r' ? len - 1 : len);
          g_byte_array_remove_range (pop3->buffer, 0, (guint) len + 1);
          return line;
        }
      scanned = pop3->buffer->len;
      if (scanned > PG_TEST_POP3_MAX_LINE)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE, "line too long");
          return NULL;
        }
      if (!pg_test_pop3_fill (pop3, error))
        return NULL;
    }
}

gchar *
pg_test_pop3_command (PgTestPop3 *pop3, const char *command, GError **error)
{
  g_autofree gchar *line = g_strconcat (command, "\r\n", NULL);

  if (!pg_test_pop3_send (pop3, line, strlen (line), error))
    return NULL;
  return pg_test_pop3_read_line (pop3, error);
}

GBytes *
pg_test_pop3_read_multiline (PgTestPop3 *pop3, GError **error)
{
  GByteArray *out = g_byte_array_new ();
  gsize pos = 0; /* start of the current line in buffer */

  for (;;)
    {
      const guint8 *lf = pop3->buffer->len > pos
                             ? memchr (pop3->buffer->data + pos, '\n', pop3->buffer->len - pos)
                             : NULL;
      if (lf == NULL)
        {
          /* Keep the partial line, drop what was consumed, read more. */
          g_byte_array_remove_range (pop3->buffer, 0, (guint) pos);
          pos = 0;
          if (!pg_test_pop3_fill (pop3, error))
            {
              if (error != NULL && *error == NULL)
                g_set_error (error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                             "closed inside a multi-line response");
              g_byte_array_unref (out);
              return NULL;
            }
          continue;
        }
      {
        const guint8 *line = pop3->buffer->data + pos;
        gsize len = (gsize) (lf - line) + 1;
        if (len == 3 && line[0] == '.' && line[1] == '\r')
          {
            g_byte_array_remove_range (pop3->buffer, 0, (guint) (pos + len));
            return g_byte_array_free_to_bytes (out);
          }
        if (line[0] == '.')
          g_byte_array_append (out, line + 1, (guint) len - 1);
        else
          g_byte_array_append (out, line, (guint) len);
        pos += len;
      }
    }
}

GBytes *
pg_test_pop3_retr (PgTestPop3 *pop3, guint n, gchar **out_status, GError **error)
{
  g_autofree gchar *command = g_strdup_printf ("RETR %u", n);
  g_autofree gchar *status = pg_test_pop3_command (pop3, command, error);

  if (status == NULL)
    return NULL;
  if (!g_str_has_prefix (status, "+OK"))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s", status);
      if (out_status != NULL)
        *out_status = g_steal_pointer (&status);
      return NULL;
    }
  if (out_status != NULL)
    *out_status = g_steal_pointer (&status);
  return pg_test_pop3_read_multiline (pop3, error);
}

gboolean
pg_test_pop3_login (PgTestPop3 *pop3, const char *user, const char *password, gchar **out_status,
                    GError **error)
{
  g_autofree gchar *user_cmd = g_strdup_printf ("USER %s", user);
  g_autofree gchar *pass_cmd = g_strdup_printf ("PASS %s", password);
  g_autofree gchar *status = pg_test_pop3_command (pop3, user_cmd, error);
  gboolean ok;

  if (status == NULL)
    return FALSE;
  if (!g_str_has_prefix (status, "+OK"))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "USER: %s", status);
      return FALSE;
    }
  g_free (status);
  status = pg_test_pop3_command (pop3, pass_cmd, error);
  if (status == NULL)
    return FALSE;
  ok = g_str_has_prefix (status, "+OK");
  if (!ok)
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "PASS: %s", status);
  if (out_status != NULL)
    *out_status = g_steal_pointer (&status);
  return ok;
}

gboolean
pg_test_pop3_stls (PgTestPop3 *pop3, const char *ca_file, GError **error)
{
  g_autofree gchar *status = pg_test_pop3_command (pop3, "STLS", error);

  if (status == NULL)
    return FALSE;
  if (!g_str_has_prefix (status, "+OK"))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "STLS: %s", status);
      return FALSE;
    }
  return pg_test_pop3_start_tls (pop3, ca_file, error);
}

gboolean
pg_test_pop3_start_tls (PgTestPop3 *pop3, const char *ca_file, GError **error)
{
  g_byte_array_set_size (pop3->buffer, 0);
  return pg_test_pop3_handshake (pop3, ca_file, error);
}

gboolean
pg_test_pop3_wait_closed (PgTestPop3 *pop3)
{
  for (int i = 0; i < 1000; i++)
    {
      g_autoptr (GError) error = NULL;
      g_byte_array_set_size (pop3->buffer, 0);
      if (!pg_test_pop3_fill (pop3, &error))
        return error == NULL || !g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT);
    }
  return FALSE;
}

GStrv
pg_test_pop3_cmd_lines (PgTestPop3 *pop3, const char *command)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *status = pg_test_pop3_cmd (pop3, command);
  g_autoptr (GBytes) body = NULL;
  g_autofree gchar *text = NULL;
  g_auto (GStrv) lines = NULL;
  guint n;

  g_assert_true (g_str_has_prefix (status, "+OK"));
  body = pg_test_pop3_read_multiline (pop3, &error);
  g_assert_no_error (error);
  text = g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body));
  lines = g_strsplit (text, "\r\n", -1);
  n = g_strv_length (lines);
  if (n > 0 && *lines[n - 1] == '\0')
    g_clear_pointer (&lines[n - 1], g_free);
  return g_steal_pointer (&lines);
}

gchar *
pg_test_pop3_cmd (PgTestPop3 *pop3, const char *command)
{
  g_autoptr (GError) error = NULL;
  gchar *status = pg_test_pop3_command (pop3, command, &error);

  g_assert_no_error (error);
  g_assert_nonnull (status);
  return status;
}
