/* Integration tests of the PROXY protocol through the real binary: v1 and v2 headers on
 * plain and implicit-TLS POP3 listeners, the real client address in the log and in the
 * per-address limit, and refusals (no header, a broken one, an untrusted proxy).
 *
 * The POP3 greeting needs no upstream, so [upstream] points at a closed port.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <string.h>

#define V2_SIG "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
#define PG_TEST_PROXY_TIMEOUT_MS 10000

typedef struct
{
  PgTestPopgate *popgate; /* owned */
} ProxyFixture;

static void
proxy_setup (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 closed_port = pg_test_free_port ("127.0.0.1", &error);

  g_assert_no_error (error);
  fixture->popgate = pg_test_popgate_new (NULL, "none", &error);
  g_assert_no_error (error);
  g_assert_nonnull (fixture->popgate);
  {
    g_autofree gchar *port = g_strdup_printf ("%u", closed_port);
    pg_test_popgate_set (fixture->popgate, "upstream", "host", "127.0.0.1");
    pg_test_popgate_set (fixture->popgate, "upstream", "port", port);
    pg_test_popgate_set (fixture->popgate, "upstream", "tls", "none");
  }
  pg_test_popgate_set (fixture->popgate, "pop3", "proxy_protocol", "true");
  pg_test_popgate_set (fixture->popgate, "limits", "max_sessions_per_address", "1");
  pg_test_popgate_set (fixture->popgate, "proxy", "trusted", "127.0.0.0/8, ::1/128");
}

static void
proxy_teardown (ProxyFixture *fixture, gconstpointer data)
{
  g_clear_pointer (&fixture->popgate, pg_test_popgate_free);
}

/* A connection to popgate as a load balancer makes it: connect, then send raw bytes. */
static GIOStream *
proxy_connect (guint16 port, GError **error)
{
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  GSocketConnection *conn;

  g_socket_client_set_timeout (client, PG_TEST_PROXY_TIMEOUT_MS / 1000);
  conn = g_socket_client_connect_to_host (client, "127.0.0.1", port, NULL, error);
  return conn != NULL ? G_IO_STREAM (conn) : NULL;
}

static void
proxy_send (GIOStream *stream, const void *data, gsize len)
{
  g_autoptr (GError) error = NULL;

  g_output_stream_write_all (g_io_stream_get_output_stream (stream), data, len, NULL, NULL, &error);
  g_assert_no_error (error);
}

/* One line without CRLF; NULL at EOF. Reads byte by byte: the socket has a timeout. */
static gchar *
proxy_read_line (GIOStream *stream)
{
  g_autoptr (GString) line = g_string_new (NULL);
  GInputStream *in = g_io_stream_get_input_stream (stream);

  while (line->len < 1024)
    {
      char c;
      g_autoptr (GError) error = NULL;
      gssize n = g_input_stream_read (in, &c, 1, NULL, &error);

      if (n <= 0)
        return line->len > 0 ? g_string_free (g_steal_pointer (&line), FALSE) : NULL;
      if (c == '\n')
        break;
      if (c != '\r')
        g_string_append_c (line, c);
    }
  return g_string_free (g_steal_pointer (&line), FALSE);
}

static gchar *
proxy_v1 (const char *src, guint16 src_port, guint16 dst_port)
{
  return g_strdup_printf ("PROXY TCP4 %s 127.0.0.1 %u %u\r\n", src, src_port, dst_port);
}

/* A v2 PROXY TCP over IPv4 header with one TLV (as HAProxy's unique-id). */
static GBytes *
proxy_v2 (const guint8 src[4], guint16 src_port, guint16 dst_port)
{
  GByteArray *out = g_byte_array_new ();
  static const guint8 tlv[] = { 0x05, 0x00, 0x03, 'a', 'b', 'c' };
  guint8 addr[12] = { 0 };
  guint16 len = sizeof addr + sizeof tlv;
  guint8 head[4] = { 0x21, 0x11, (guint8) (len >> 8), (guint8) (len & 0xFF) };

  memcpy (addr, src, 4);
  addr[4] = 127;
  addr[7] = 1;
  addr[8] = (guint8) (src_port >> 8);
  addr[9] = (guint8) (src_port & 0xFF);
  addr[10] = (guint8) (dst_port >> 8);
  addr[11] = (guint8) (dst_port & 0xFF);
  g_byte_array_append (out, (const guint8 *) V2_SIG, 12);
  g_byte_array_append (out, head, sizeof head);
  g_byte_array_append (out, addr, sizeof addr);
  g_byte_array_append (out, tlv, sizeof tlv);
  return g_byte_array_free_to_bytes (out);
}

static void
proxy_assert_greeting (GIOStream *stream)
{
  g_autofree gchar *line = proxy_read_line (stream);

  g_assert_nonnull (line);
  g_assert_true (g_str_has_prefix (line, "+OK"));
}

static void
proxy_assert_closed (GIOStream *stream)
{
  g_autofree gchar *line = proxy_read_line (stream);
  g_autofree gchar *more = NULL;

  /* Nothing, or one refusal line, then EOF. */
  if (line != NULL)
    g_assert_true (g_str_has_prefix (line, "-ERR"));
  more = proxy_read_line (stream);
  g_assert_null (more);
}

static gboolean
proxy_log_has (ProxyFixture *fixture, const char *needle)
{
  return pg_test_popgate_wait_log (fixture->popgate, needle, PG_TEST_PROXY_TIMEOUT_MS);
}

/* v1 and v2 name the client; the log shows it, the per-address limit counts it (not the
 * proxy's own address, which all these connections share). */
static void
test_proxy_plain (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 port = 0;
  g_autofree gchar *v1 = NULL;
  g_autofree gchar *v1_again = NULL;
  static const guint8 other[4] = { 198, 51, 100, 20 };
  static const guint8 same[4] = { 192, 0, 2, 10 };
  g_autoptr (GBytes) v2_other = NULL;
  g_autoptr (GBytes) v2_same = NULL;
  g_autoptr (GIOStream) first = NULL;
  g_autoptr (GIOStream) second = NULL;
  g_autoptr (GIOStream) third = NULL;
  g_autoptr (GIOStream) fourth = NULL;

  /* Ports are known once started: the helper picks new ones if one was taken. */
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fixture->popgate, &error), error);
  port = fixture->popgate->pop3_port;
  v1 = proxy_v1 ("192.0.2.10", 40001, port);
  v1_again = proxy_v1 ("192.0.2.10", 40002, port);
  v2_other = proxy_v2 (other, 50001, port);
  v2_same = proxy_v2 (same, 50002, port);

  /* v1: the greeting comes, the log names 192.0.2.10 and the proxy. */
  first = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (first, v1, strlen (v1));
  proxy_assert_greeting (first);
  g_assert_true (proxy_log_has (fixture, "pop3 connection from 192.0.2.10:40001"));

  /* v2 from another client through the same proxy: accepted (max 1 per address). */
  second = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (second, g_bytes_get_data (v2_other, NULL), g_bytes_get_size (v2_other));
  proxy_assert_greeting (second);
  g_assert_true (proxy_log_has (fixture, "pop3 connection from 198.51.100.20:50001"));

  /* 192.0.2.10 again, v1 and v2: over its limit of 1, refused with a reason. */
  third = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (third, v1_again, strlen (v1_again));
  {
    g_autofree gchar *line = proxy_read_line (third);
    g_assert_nonnull (line);
    g_assert_true (g_str_has_prefix (line, "-ERR [SYS/TEMP] too many sessions from this address"));
  }
  g_assert_true (proxy_log_has (fixture, "refusing pop3 connection from 192.0.2.10:40002: too "
                                         "many sessions from this address"));
  fourth = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (fourth, g_bytes_get_data (v2_same, NULL), g_bytes_get_size (v2_same));
  proxy_assert_closed (fourth);
  g_assert_true (proxy_log_has (fixture, "refusing pop3 connection from 192.0.2.10:50002"));

  /* When the first session ends its address is free again. */
  proxy_send (first, "QUIT\r\n", 6);
  {
    g_autofree gchar *bye = proxy_read_line (first);
    g_assert_nonnull (bye);
  }
  g_assert_true (proxy_log_has (fixture, "connection from 192.0.2.10:40001 closed"));
  g_clear_object (&third);
  third = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (third, v1_again, strlen (v1_again));
  proxy_assert_greeting (third);
}

/* Without a header, with a broken one, with a pipelined command right behind a valid
 * one, and with the LOCAL command (a health check). */
static void
test_proxy_invalid (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 port = 0;
  g_autoptr (GIOStream) conn = NULL;

  PG_TEST_ASSERT_OK (pg_test_popgate_start (fixture->popgate, &error), error);
  port = fixture->popgate->pop3_port;

  conn = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (conn, "CAPA\r\n", 6);
  proxy_assert_closed (conn);
  g_assert_true (proxy_log_has (fixture, "invalid PROXY protocol header"));
  g_clear_object (&conn);

  conn = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (conn, "PROXY TCP4 192.0.2.1 nope 1 2\r\n", 31);
  proxy_assert_closed (conn);
  g_assert_true (proxy_log_has (fixture, "bad v1 address"));
  g_clear_object (&conn);

  /* The header and a command in one write: the command is the session's. */
  {
    g_autofree gchar *both
        = g_strdup_printf ("PROXY TCP6 2001:db8::7 ::1 1234 %u\r\nCAPA\r\n", port);
    conn = proxy_connect (port, &error);
    g_assert_no_error (error);
    proxy_send (conn, both, strlen (both));
    proxy_assert_greeting (conn);
    {
      g_autofree gchar *capa = proxy_read_line (conn);
      g_assert_nonnull (capa);
      g_assert_true (g_str_has_prefix (capa, "+OK"));
    }
    g_assert_true (proxy_log_has (fixture, "pop3 connection from [2001:db8::7]:1234"));
    g_clear_object (&conn);
  }

  /* LOCAL: the proxy speaks for itself. */
  conn = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (conn, V2_SIG "\x20\x00\x00\x00", 16);
  proxy_assert_greeting (conn);
  g_clear_object (&conn);
}

/* A proxy_protocol listener refuses peers outside [proxy] trusted; a reload changes who
 * is trusted. */
static void
test_proxy_untrusted (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 port = 0;
  g_autofree gchar *v1 = NULL;
  g_autoptr (GIOStream) conn = NULL;

  pg_test_popgate_set (fixture->popgate, "proxy", "trusted", "10.0.0.0/8");
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fixture->popgate, &error), error);
  port = fixture->popgate->pop3_port;
  v1 = proxy_v1 ("192.0.2.99", 1, port);

  conn = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (conn, v1, strlen (v1));
  proxy_assert_closed (conn);
  g_assert_true (proxy_log_has (fixture, "not a trusted proxy"));
  g_clear_object (&conn);

  pg_test_popgate_set (fixture->popgate, "proxy", "trusted", "127.0.0.1");
  PG_TEST_ASSERT_OK (pg_test_popgate_write_config (fixture->popgate, &error), error);
  pg_test_popgate_reload (fixture->popgate);
  g_assert_true (proxy_log_has (fixture, "configuration reloaded"));
  conn = proxy_connect (port, &error);
  g_assert_no_error (error);
  proxy_send (conn, v1, strlen (v1));
  proxy_assert_greeting (conn);
  g_assert_true (proxy_log_has (fixture, "pop3 connection from 192.0.2.99:1"));
}

/* On an implicit-TLS listener the header comes first, then the TLS handshake. */
static void
test_proxy_tls (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 port = 0;
  static const guint8 src[4] = { 203, 0, 113, 5 };
  g_autoptr (GBytes) v2 = NULL;
  g_autoptr (GIOStream) conn = NULL;
  g_autoptr (GIOStream) tls = NULL;
  g_autoptr (GTlsDatabase) ca = NULL;
  g_autoptr (GSocketConnectable) identity = NULL;

  PG_TEST_ASSERT_OK (pg_test_popgate_start (fixture->popgate, &error), error);
  /* start waits for the first listener only; the TLS one is bound a moment later. */
  g_assert_true (proxy_log_has (fixture, "listening for pop3 (implicit TLS)"));
  port = fixture->popgate->pop3s_port;
  v2 = proxy_v2 (src, 60000, port);
  identity = g_network_address_new ("localhost", port);
  conn = proxy_connect (port, &error);
  if (error != NULL)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fixture->popgate);
      g_test_message ("popgate log:\n%s", log);
    }
  g_assert_no_error (error);
  proxy_send (conn, g_bytes_get_data (v2, NULL), g_bytes_get_size (v2));

  ca = g_tls_file_database_new (fixture->popgate->certs->ca_file, &error);
  g_assert_no_error (error);
  tls = g_tls_client_connection_new (conn, identity, &error);
  g_assert_no_error (error);
  g_tls_connection_set_database (G_TLS_CONNECTION (tls), ca);
  g_tls_connection_handshake (G_TLS_CONNECTION (tls), NULL, &error);
  g_assert_no_error (error);
  proxy_assert_greeting (tls);
  g_assert_true (proxy_log_has (fixture, "pop3 connection from 203.0.113.5:60000 (TLS)"));
}

/* Send a command, return the status line. */
static gchar *
proxy_command (GIOStream *stream, const char *command)
{
  g_autofree gchar *line = g_strconcat (command, "\r\n", NULL);
  gchar *reply;

  proxy_send (stream, line, strlen (line));
  reply = proxy_read_line (stream);
  g_assert_nonnull (reply);
  return reply;
}

/* CAPA's lines (without the +OK and the "."). */
static GStrv
proxy_capa (GIOStream *stream)
{
  g_autofree gchar *status = proxy_command (stream, "CAPA");
  g_autoptr (GStrvBuilder) lines = g_strv_builder_new ();

  g_assert_true (g_str_has_prefix (status, "+OK"));
  for (guint i = 0; i < 64; i++)
    {
      g_autofree gchar *line = proxy_read_line (stream);
      g_assert_nonnull (line);
      if (strcmp (line, ".") == 0)
        return g_strv_builder_end (lines);
      g_strv_builder_add (lines, line);
    }
  g_assert_not_reached ();
}

static gboolean
proxy_strv_has_prefix (const char *const *lines, const char *prefix)
{
  for (gsize i = 0; lines[i] != NULL; i++)
    if (g_str_has_prefix (lines[i], prefix))
      return TRUE;
  return FALSE;
}

/* A connection on the plain listener whose PROXY header names `client`. */
static GIOStream *
proxy_connect_as (guint16 port, const char *client, guint16 client_port)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *v1 = proxy_v1 (client, client_port, port);
  GIOStream *conn = proxy_connect (port, &error);

  g_assert_no_error (error);
  proxy_send (conn, v1, strlen (v1));
  proxy_assert_greeting (conn);
  return conn;
}

#define PROXY_SECRET "pl4in-s3cret"
/* AUTH PLAIN's initial response: base64 of "\0user\0" PROXY_SECRET. */
#define PROXY_SECRET_PLAIN "AHVzZXIAcGw0aW4tczNjcmV0"

#define proxy_assert_reply(stream, command, prefix)                                                \
  G_STMT_START                                                                                     \
  {                                                                                                \
    g_autofree gchar *reply_ = proxy_command ((stream), (command));                                \
    if (!g_str_has_prefix (reply_, (prefix)))                                                      \
      g_error ("%s: expected \"%s…\", got \"%s\"", (command), (prefix), reply_);                   \
  }                                                                                                \
  G_STMT_END

/* The STLS refusal: [AUTH] and the way out. */
static void
proxy_assert_use_stls (GIOStream *stream, const char *command)
{
  g_autofree gchar *reply = proxy_command (stream, command);

  if (!g_str_has_prefix (reply, "-ERR [AUTH]") || strstr (reply, "use STLS") == NULL)
    g_error ("%s: expected \"-ERR [AUTH] … use STLS …\", got \"%s\"", command, reply);
}

/* Plaintext authentication depends on the real client, not on the proxy's socket (which
 * is loopback here): from 192.0.2.10 on a plain listener CAPA offers no USER or SASL, and
 * USER, PASS and AUTH are refused with a pointer to STLS; from a loopback client (as the
 * header says) they are offered. */
static void
test_proxy_plaintext_refused (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 port = 0;
  g_autoptr (GIOStream) remote = NULL;
  g_autoptr (GIOStream) local = NULL;
  g_auto (GStrv) capa = NULL;
  g_auto (GStrv) local_capa = NULL;
  g_autofree gchar *log = NULL;

  pg_test_popgate_set (fixture->popgate, "limits", "auth_failure_delay", "10ms");
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fixture->popgate, &error), error);
  port = fixture->popgate->pop3_port;

  remote = proxy_connect_as (port, "192.0.2.10", 40100);
  capa = proxy_capa (remote);
  g_assert_false (g_strv_contains ((const char *const *) capa, "USER"));
  g_assert_false (proxy_strv_has_prefix ((const char *const *) capa, "SASL"));
  g_assert_true (g_strv_contains ((const char *const *) capa, "STLS"));
  /* AUTH without arguments lists no mechanism. */
  proxy_assert_reply (remote, "AUTH", "+OK");
  {
    g_autofree gchar *end = proxy_read_line (remote);
    g_assert_cmpstr (end, ==, ".");
  }
  proxy_assert_use_stls (remote, "USER user");
  /* USER was refused, so PASS has no user to go with: refused too, never tried. */
  proxy_assert_reply (remote, "PASS " PROXY_SECRET, "-ERR");
  proxy_assert_use_stls (remote, "AUTH PLAIN " PROXY_SECRET_PLAIN);
  proxy_assert_use_stls (remote, "AUTH PLAIN");
  proxy_assert_use_stls (remote, "AUTH LOGIN");
  /* The session goes on. */
  proxy_assert_reply (remote, "NOOP", "-ERR");
  proxy_assert_reply (remote, "QUIT", "+OK");
  g_assert_true (proxy_log_has (fixture, "connection from 192.0.2.10:40100 closed"));

  /* The same proxy socket, but a loopback client behind it. */
  local = proxy_connect_as (port, "127.0.0.5", 40101);
  local_capa = proxy_capa (local);
  g_assert_true (g_strv_contains ((const char *const *) local_capa, "USER"));
  g_assert_true (g_strv_contains ((const char *const *) local_capa, "SASL PLAIN LOGIN"));
  proxy_assert_reply (local, "USER user", "+OK");

  log = pg_test_popgate_read_log (fixture->popgate);
  g_assert_null (strstr (log, "login failed"));
  g_assert_null (strstr (log, PROXY_SECRET));
  g_assert_null (strstr (log, PROXY_SECRET_PLAIN));
}

/* With [pop3] allow_plaintext_auth = true the same non-loopback client may log in over
 * plaintext: USER/PASS and AUTH reach the login (which fails here: the upstream is down). */
static void
test_proxy_plaintext_allowed (ProxyFixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  guint16 port = 0;
  g_autoptr (GIOStream) remote = NULL;
  g_auto (GStrv) capa = NULL;
  g_autofree gchar *log = NULL;

  pg_test_popgate_set (fixture->popgate, "pop3", "allow_plaintext_auth", "true");
  pg_test_popgate_set (fixture->popgate, "limits", "auth_failure_delay", "10ms");
  PG_TEST_ASSERT_OK (pg_test_popgate_start (fixture->popgate, &error), error);
  port = fixture->popgate->pop3_port;

  remote = proxy_connect_as (port, "192.0.2.10", 40200);
  capa = proxy_capa (remote);
  g_assert_true (g_strv_contains ((const char *const *) capa, "USER"));
  g_assert_true (g_strv_contains ((const char *const *) capa, "SASL PLAIN LOGIN"));
  proxy_assert_reply (remote, "USER user", "+OK");
  proxy_assert_reply (remote, "PASS " PROXY_SECRET, "-ERR [SYS/TEMP]");
  proxy_assert_reply (remote, "AUTH PLAIN " PROXY_SECRET_PLAIN, "-ERR [SYS/TEMP]");
  proxy_assert_reply (remote, "QUIT", "+OK");
  g_assert_true (proxy_log_has (fixture, "connection from 192.0.2.10:40200 closed"));

  log = pg_test_popgate_read_log (fixture->popgate);
  g_assert_null (strstr (log, PROXY_SECRET));
  g_assert_null (strstr (log, PROXY_SECRET_PLAIN));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/popgate/proxy/plain", ProxyFixture, NULL, proxy_setup, test_proxy_plain,
              proxy_teardown);
  g_test_add ("/popgate/proxy/invalid", ProxyFixture, NULL, proxy_setup, test_proxy_invalid,
              proxy_teardown);
  g_test_add ("/popgate/proxy/untrusted", ProxyFixture, NULL, proxy_setup, test_proxy_untrusted,
              proxy_teardown);
  g_test_add ("/popgate/proxy/tls", ProxyFixture, NULL, proxy_setup, test_proxy_tls,
              proxy_teardown);
  g_test_add ("/popgate/proxy/plaintext-refused", ProxyFixture, NULL, proxy_setup,
              test_proxy_plaintext_refused, proxy_teardown);
  g_test_add ("/popgate/proxy/plaintext-allowed", ProxyFixture, NULL, proxy_setup,
              test_proxy_plaintext_allowed, proxy_teardown);
  return g_test_run ();
}
