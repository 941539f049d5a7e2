/* popgate — tests for the net layer: IPv4/IPv6 listeners, implicit TLS verified against a
 * generated CA, session limits (total and per address), the pre-auth timeout, reload and
 * shutdown. The server runs in-process on the test's main context; clients are async and
 * the test iterates the context until a condition holds or a watchdog fires.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-net.h"

#include "pg-test-certs.h"
#include "pg-test-util.h"

#include <string.h>
#include <sys/socket.h>

#define WATCHDOG_MS 10000

static guint16
free_port (const char *host)
{
  g_autoptr (GSocket) sock
      = g_socket_new (strchr (host, ':') ? G_SOCKET_FAMILY_IPV6 : G_SOCKET_FAMILY_IPV4,
                      G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
  g_autoptr (GInetAddress) ip = g_inet_address_new_from_string (host);
  g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (ip, 0);
  g_autoptr (GSocketAddress) bound = NULL;

  g_assert_nonnull (sock);
  g_assert_true (g_socket_bind (sock, addr, TRUE, NULL));
  bound = g_socket_get_local_address (sock, NULL);
  return g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
}

/* Run the main context until *flag is set, failing the test after the watchdog. */
static void
iterate_until (const gboolean *flag)
{
  gint64 deadline = g_get_monotonic_time () + WATCHDOG_MS * 1000;

  while (!*flag)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      g_main_context_iteration (NULL, FALSE);
      if (!*flag)
        g_usleep (1000);
    }
}

/* --- a trivial front end: greet, then echo "BYE" and close on any input --------------- */

typedef struct
{
  guint started;
  guint closed;
  guint timeouts;
  guint shutdowns;
  GPtrArray *conns; /* PgConn*, owned */
} Frontend;

static void
frontend_closed_cb (PgConn *conn, gpointer user_data)
{
  Frontend *fe = user_data;
  fe->closed++;
}

static gboolean
frontend_timeout_cb (PgConn *conn, gpointer user_data)
{
  Frontend *fe = user_data;
  fe->timeouts++;
  pg_conn_write_printf (conn, "-ERR timeout\r\n");
  pg_conn_close (conn);
  return TRUE;
}

static void
frontend_shutdown_cb (PgConn *conn, gpointer user_data)
{
  Frontend *fe = user_data;
  fe->shutdowns++;
  pg_conn_write_printf (conn, "-ERR shutting down\r\n");
  pg_conn_close (conn);
}

static void
frontend_start (PgConn *conn, gpointer user_data)
{
  Frontend *fe = user_data;

  fe->started++;
  g_ptr_array_add (fe->conns, g_object_ref (conn));
  g_signal_connect (conn, "closed", G_CALLBACK (frontend_closed_cb), fe);
  g_signal_connect (conn, "timeout", G_CALLBACK (frontend_timeout_cb), fe);
  g_signal_connect (conn, "shutdown", G_CALLBACK (frontend_shutdown_cb), fe);
  pg_conn_write_printf (conn, "+OK hello %s%s\r\n",
                        pg_frontend_to_string (pg_conn_get_frontend (conn)),
                        pg_conn_is_tls (conn) ? " tls" : "");
}

/* --- test client ------------------------------------------------------------------------ */

typedef struct
{
  gboolean done;
  GIOStream *stream; /* owned: the socket, or TLS over it */
  GError *error;
  GString *received;
  gboolean eof;
  char buf[4096];
} Client;

static void
client_free (Client *client)
{
  if (client->stream != NULL)
    g_io_stream_close (client->stream, NULL, NULL);
  g_clear_object (&client->stream);
  g_clear_error (&client->error);
  g_string_free (client->received, TRUE);
  g_free (client);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Client, client_free)

static void
client_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Client *client = user_data;
  client->stream = G_IO_STREAM (
      g_socket_client_connect_finish (G_SOCKET_CLIENT (source), result, &client->error));
  client->done = TRUE;
}

static void
client_handshake_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Client *client = user_data;
  if (!g_tls_connection_handshake_finish (G_TLS_CONNECTION (source), result, &client->error))
    g_clear_object (&client->stream);
  client->done = TRUE;
}

/* Connect (optionally from bind_ip); with ca_file, do a TLS handshake that verifies the
 * server as `identity` against that CA. On failure client->error is set. */
static Client *
client_connect (const char *host, guint16 port, const char *bind_ip, const char *ca_file,
                const char *identity)
{
  g_autoptr (GSocketClient) sc = g_socket_client_new ();
  g_autoptr (GInetAddress) ip = g_inet_address_new_from_string (host);
  g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (ip, port);
  Client *client = g_new0 (Client, 1);

  client->received = g_string_new (NULL);
  if (bind_ip != NULL)
    {
      g_autoptr (GInetAddress) local = g_inet_address_new_from_string (bind_ip);
      g_autoptr (GSocketAddress) local_addr = g_inet_socket_address_new (local, 0);
      g_socket_client_set_local_address (sc, local_addr);
    }
  g_socket_client_connect_async (sc, G_SOCKET_CONNECTABLE (addr), NULL, client_connect_cb, client);
  iterate_until (&client->done);
  if (client->stream == NULL || ca_file == NULL)
    return client;

  {
    g_autoptr (GError) error = NULL;
    g_autoptr (GTlsDatabase) db = g_tls_file_database_new (ca_file, &error);
    g_autoptr (GSocketConnectable) id = g_network_address_new (identity, port);
    GIOStream *tls;

    g_assert_no_error (error);
    tls = g_tls_client_connection_new (client->stream, id, &error);
    g_assert_no_error (error);
    g_tls_connection_set_database (G_TLS_CONNECTION (tls), db);
    g_object_unref (client->stream);
    client->stream = tls;
    client->done = FALSE;
    g_tls_connection_handshake_async (G_TLS_CONNECTION (tls), G_PRIORITY_DEFAULT, NULL,
                                      client_handshake_cb, client);
    iterate_until (&client->done);
  }
  return client;
}

static void
client_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Client *client = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  if (n <= 0)
    client->eof = TRUE;
  else
    g_string_append_len (client->received, client->buf, n);
  client->done = TRUE;
}

/* Read until `text` was received (or, with text NULL, until the server closes). */
static void
client_expect (Client *client, const char *text)
{
  gint64 deadline = g_get_monotonic_time () + WATCHDOG_MS * 1000;

  g_assert_nonnull (client->stream);
  while (text == NULL ? !client->eof : strstr (client->received->str, text) == NULL)
    {
      g_assert_false (client->eof && text != NULL);
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      client->done = FALSE;
      g_input_stream_read_async (g_io_stream_get_input_stream (client->stream), client->buf,
                                 sizeof client->buf, G_PRIORITY_DEFAULT, NULL, client_read_cb,
                                 client);
      iterate_until (&client->done);
    }
}

/* --- fixture ----------------------------------------------------------------------------- */

typedef struct
{
  gchar *dir;
  PgTestCerts *certs;
  Frontend fe;
  PgServer *server;
  guint16 port4, port6, tls_port;
} Fixture;

/* A plain client on the IPv4 listener, greeted; *out_conn: popgate's side of it. */
static Client *
client_greeted (Fixture *fx, PgConn **out_conn)
{
  Client *client = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);

  g_assert_no_error (client->error);
  client_expect (client, "+OK hello pop3\r\n");
  *out_conn = g_ptr_array_index (fx->fe.conns, fx->fe.conns->len - 1);
  return client;
}

static PgConfig *
make_config (Fixture *fx, const char *extra)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text
      = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\ntls = none\nport = 143\n"
                         "[pop3]\nlisten = 127.0.0.1:%u, [::1]:%u\ntls_listen = 127.0.0.1:%u\n"
                         "[tls]\ncert = %s\nkey = %s\n"
                         "%s",
                         fx->port4, fx->port6, fx->tls_port, fx->certs->cert_file,
                         fx->certs->key_file, extra != NULL ? extra : "");
  PgConfig *config = pg_config_load_data (text, strlen (text), "test.conf", &error);

  g_assert_no_error (error);
  g_assert_nonnull (config);
  return config;
}

static void
fixture_setup (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;

  fx->dir = g_dir_make_tmp ("popgate-test-net-XXXXXX", &error);
  g_assert_no_error (error);
  fx->certs = pg_test_certs_new (fx->dir, &error);
  g_assert_no_error (error);
  fx->fe.conns = g_ptr_array_new_with_free_func (g_object_unref);
  fx->port4 = free_port ("127.0.0.1");
  fx->port6 = free_port ("::1");
  fx->tls_port = free_port ("127.0.0.1");
  config = make_config (fx, data);
  fx->server = pg_server_new (config);
  pg_server_set_handler (fx->server, PG_FRONTEND_POP3, frontend_start, &fx->fe);
  g_assert_true (pg_server_start (fx->server, &error));
  g_assert_no_error (error);
}

static void
fixture_teardown (Fixture *fx, gconstpointer data)
{
  for (guint i = 0; i < fx->fe.conns->len; i++)
    pg_conn_abort (g_ptr_array_index (fx->fe.conns, i));
  g_ptr_array_unref (fx->fe.conns);
  g_clear_object (&fx->server);
  pg_test_certs_free (fx->certs);
  pg_test_rm_rf (fx->dir);
  g_free (fx->dir);
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

/* --- tests -------------------------------------------------------------------------------- */

/* Corked output stays off the socket until the last uncork, then arrives whole and in
 * order, also past PG_CLIENT_CORK_MAX; a close flushes what a cork holds. */
static void
test_cork (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) client = NULL;
  g_autoptr (GBytes) b = g_bytes_new_static ("b", 1);
  g_autoptr (GError) error = NULL;
  g_autofree gchar *big = g_malloc (PG_CLIENT_CORK_MAX + 10);
  g_autoptr (GString) expected = g_string_new ("+OK hello pop3\r\na");
  GInputStream *in = NULL;
  PgConn *conn = NULL;
  char byte = 0;

  client = client_greeted (fx, &conn);
  in = g_io_stream_get_input_stream (client->stream);

  pg_conn_cork (conn);
  pg_conn_write (conn, "a", 1);
  pg_conn_cork (conn);
  pg_conn_write_bytes (conn, b);
  pg_conn_uncork (conn); /* inner: still corked */
  pg_conn_write_printf (conn, "%s\r\n", "c");
  g_assert_cmpuint (pg_conn_get_queued (conn), ==, 5);
  while (g_main_context_iteration (NULL, FALSE))
    ;
  g_assert_cmpint (g_pollable_input_stream_read_nonblocking (G_POLLABLE_INPUT_STREAM (in), &byte, 1,
                                                             NULL, &error),
                   ==, -1);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
  pg_conn_uncork (conn);
  client_expect (client, "abc\r\n");
  g_assert_cmpstr (client->received->str, ==, "+OK hello pop3\r\nabc\r\n");

  /* More than a cork holds, between two small writes. */
  memset (big, 'y', PG_CLIENT_CORK_MAX + 10);
  pg_conn_cork (conn);
  pg_conn_write (conn, "x", 1);
  pg_conn_write (conn, big, PG_CLIENT_CORK_MAX + 10);
  pg_conn_write (conn, "z\r\n", 3);
  pg_conn_uncork (conn);
  client_expect (client, "z\r\n");
  g_string_assign (expected, "+OK hello pop3\r\nabc\r\nx");
  g_string_append_len (expected, big, PG_CLIENT_CORK_MAX + 10);
  g_string_append (expected, "z\r\n");
  g_assert_cmpuint (client->received->len, ==, expected->len);
  g_assert_true (memcmp (client->received->str, expected->str, expected->len) == 0);

  /* Closing a corked connection sends what the cork holds, then closes. */
  pg_conn_cork (conn);
  pg_conn_write (conn, "-ERR bye\r\n", 10);
  pg_conn_close (conn);
  client_expect (client, NULL);
  g_assert_true (g_str_has_suffix (client->received->str, "z\r\n-ERR bye\r\n"));
  g_assert_cmpuint (fx->fe.closed, ==, 1);
  pg_conn_uncork (conn);
}

typedef struct
{
  gboolean done;
  gssize n;
  GError *error;
} ReadResult;

static void
read_result_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  ReadResult *r = user_data;

  r->n = pg_conn_read_finish (PG_CONN (source), result, &r->error);
  r->done = TRUE;
}

/* Reads from the connection's kept readable source: a cancelled read fails with
 * CANCELLED and the next read (same or new cancellable) still gets the client's bytes; a
 * read pending when the connection closes fails from the main loop, never inside the
 * close. */
static void
test_read_cancel_close (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) client = NULL;
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GCancellable) other = g_cancellable_new ();
  GOutputStream *out = NULL;
  ReadResult r = { 0 };
  char buf[64];
  PgConn *conn = NULL;

  client = client_greeted (fx, &conn);
  out = g_io_stream_get_output_stream (client->stream);

  pg_conn_read_async (conn, buf, sizeof buf, cancellable, read_result_cb, &r);
  g_cancellable_cancel (cancellable);
  iterate_until (&r.done);
  g_assert_cmpint (r.n, ==, -1);
  g_assert_error (r.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&r.error);

  /* The same, already cancelled cancellable fails the next read at once. */
  r.done = FALSE;
  pg_conn_read_async (conn, buf, sizeof buf, cancellable, read_result_cb, &r);
  iterate_until (&r.done);
  g_assert_error (r.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&r.error);

  /* Another cancellable: input sent before and after the read is asked for arrives. */
  g_assert_true (g_output_stream_write_all (out, "one\r\n", 5, NULL, NULL, NULL));
  for (guint i = 0; i < 2; i++)
    {
      r.done = FALSE;
      pg_conn_read_async (conn, buf, sizeof buf, other, read_result_cb, &r);
      if (i == 1)
        g_assert_true (g_output_stream_write_all (out, "two\r\n", 5, NULL, NULL, NULL));
      iterate_until (&r.done);
      g_assert_no_error (r.error);
      g_assert_cmpint (r.n, ==, 5);
      g_assert_true (memcmp (buf, i == 0 ? "one\r\n" : "two\r\n", 5) == 0);
    }

  r.done = FALSE;
  pg_conn_read_async (conn, buf, sizeof buf, other, read_result_cb, &r);
  pg_conn_abort (conn);
  g_assert_false (r.done);
  g_assert_cmpuint (fx->fe.closed, ==, 1);
  iterate_until (&r.done);
  g_assert_cmpint (r.n, ==, -1);
  g_assert_nonnull (r.error);
  g_clear_error (&r.error);
}

/* Readiness reads (the relay's upstream side): the wait's func runs when input is there,
 * reads it with pg_conn_read_nonblocking() (counted), sees "would block" once it has all
 * and waits again; not re-armed, input waits, and a new wait finds it. A half-close
 * reaches the peer as EOF while reads go on; the peer's close is a read of 0. */
typedef struct
{
  guint calls;
  GString *got;
  gboolean eof;
  gboolean unset; /* the func does not wait again after its first read */
} Readable;

static void
pump_readable_cb (PgConn *conn, gpointer user_data)
{
  Readable *r = user_data;
  char buf[64];

  r->calls++;
  for (;;)
    {
      g_autoptr (GError) error = NULL;
      gssize n = pg_conn_read_nonblocking (conn, buf, sizeof buf, &error);

      if (n < 0)
        {
          g_assert_error (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
          pg_conn_wait_readable (conn, pump_readable_cb, r);
          return;
        }
      if (n == 0)
        {
          r->eof = TRUE;
          return;
        }
      g_string_append_len (r->got, buf, n);
      if (r->unset)
        return;
    }
}

static gboolean
readable_has (Readable *r, const char *text)
{
  return strstr (r->got->str, text) != NULL;
}

static void
iterate_until_text (Readable *r, const char *text)
{
  gint64 deadline = g_get_monotonic_time () + WATCHDOG_MS * 1000;

  while (!readable_has (r, text))
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      g_main_context_iteration (NULL, TRUE);
    }
}

static void
test_readable_func (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) client = NULL;
  g_autoptr (GError) error = NULL;
  Readable r = { 0, g_string_new (NULL), FALSE, TRUE };
  GOutputStream *out = NULL;
  PgConn *conn = NULL;
  guint64 in_before;
  char buf[8];

  client = client_greeted (fx, &conn);
  out = g_io_stream_get_output_stream (client->stream);
  in_before = pg_conn_get_bytes_in (conn);

  /* Nothing there yet: "would block", no EOF. */
  g_assert_cmpint (pg_conn_read_nonblocking (conn, buf, sizeof buf, &error), ==, -1);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
  g_clear_error (&error);

  pg_conn_wait_readable (conn, pump_readable_cb, &r);
  g_assert_true (g_output_stream_write_all (out, "one\r\n", 5, NULL, NULL, NULL));
  iterate_until_text (&r, "one\r\n");
  g_assert_cmpuint (r.calls, ==, 1);
  g_assert_cmpuint (pg_conn_get_bytes_in (conn), ==, in_before + 5);

  /* Not re-armed (the func did not wait again): what comes now waits for the next wait. */
  g_assert_true (g_output_stream_write_all (out, "two\r\n", 5, NULL, NULL, NULL));
  /* On loopback the octets are in popgate's socket when the write returns: an armed wait
   * would run in these iterations. */
  while (g_main_context_iteration (NULL, FALSE))
    ;
  g_assert_cmpuint (r.calls, ==, 1);
  g_assert_false (readable_has (&r, "two"));
  r.unset = FALSE;
  pg_conn_wait_readable (conn, pump_readable_cb, &r);
  iterate_until_text (&r, "two\r\n");

  /* Half-close toward the peer: it reads EOF, and can still send. */
  g_assert_true (pg_conn_shutdown_write (conn, &error));
  g_assert_no_error (error);
  client_expect (client, NULL);
  g_assert_true (g_output_stream_write_all (out, "three\r\n", 7, NULL, NULL, NULL));
  iterate_until_text (&r, "three\r\n");
  g_assert_cmpstr (r.got->str, ==, "one\r\ntwo\r\nthree\r\n");
  g_assert_false (r.eof);

  /* The peer closes: a read of 0, the func waits no more; the connection is still ours
   * to close. */
  g_io_stream_close (client->stream, NULL, NULL);
  {
    gint64 deadline = g_get_monotonic_time () + WATCHDOG_MS * 1000;
    while (!r.eof)
      {
        g_assert_cmpint (g_get_monotonic_time (), <, deadline);
        g_main_context_iteration (NULL, TRUE);
      }
  }
  g_assert_false (pg_conn_is_closed (conn));
  pg_conn_abort (conn);
  g_assert_cmpint (pg_conn_read_nonblocking (conn, buf, sizeof buf, &error), ==, -1);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CLOSED);
  g_clear_error (&error);
  g_assert_false (pg_conn_shutdown_write (conn, &error));
  g_clear_error (&error);
  g_string_free (r.got, TRUE);
}

/* The sources named `name` attached to the default context (ids are handed out in
 * order: a fresh source's id bounds them). */
static guint
count_sources_named (const char *name)
{
  g_autoptr (GSource) probe = g_idle_source_new ();
  guint last = g_source_attach (probe, NULL);
  guint n = 0;

  g_source_destroy (probe);
  for (guint id = 1; id < last; id++)
    {
      GSource *source = g_main_context_find_source_by_id (NULL, id);

      if (source != NULL && g_strcmp0 (g_source_get_name (source), name) == 0)
        n++;
    }
  return n;
}

/* A readiness wait after a read with a cancellable (the relay after the login's reads)
 * leaves no cancellable source behind for the main loop to prepare and check every turn;
 * a later read with that cancellable makes it again and still fails when cancelled. */
static void
test_wait_drops_cancel_source (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) client = NULL;
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  Readable r = { 0, g_string_new (NULL), FALSE, TRUE };
  ReadResult rr = { 0 };
  GOutputStream *out = NULL;
  guint before;
  char buf[64];
  PgConn *conn = NULL;

  client = client_greeted (fx, &conn);
  out = g_io_stream_get_output_stream (client->stream);
  before = count_sources_named ("GCancellable");

  g_assert_true (g_output_stream_write_all (out, "one\r\n", 5, NULL, NULL, NULL));
  pg_conn_read_async (conn, buf, sizeof buf, cancellable, read_result_cb, &rr);
  iterate_until (&rr.done);
  g_assert_cmpint (rr.n, ==, 5);
  g_assert_cmpuint (count_sources_named ("GCancellable"), ==, before + 1);

  pg_conn_wait_readable (conn, pump_readable_cb, &r);
  g_assert_cmpuint (count_sources_named ("GCancellable"), ==, before);
  g_assert_true (g_output_stream_write_all (out, "two\r\n", 5, NULL, NULL, NULL));
  iterate_until_text (&r, "two\r\n");

  rr.done = FALSE;
  pg_conn_read_async (conn, buf, sizeof buf, cancellable, read_result_cb, &rr);
  g_assert_cmpuint (count_sources_named ("GCancellable"), ==, before + 1);
  g_cancellable_cancel (cancellable);
  iterate_until (&rr.done);
  g_assert_cmpint (rr.n, ==, -1);
  g_assert_error (rr.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&rr.error);
  g_string_free (r.got, TRUE);
}

/* Plain TCP reads and writes go to the descriptor (pg_conn_plain_fd): a peer that resets
 * the connection gives a read error, not "would block" or EOF, and a write after it closes
 * the connection through the write queue with the error kept. */
static void
test_plain_reset (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) client = NULL;
  g_autoptr (GError) error = NULL;
  GSocket *socket = NULL;
  PgConn *conn = NULL;
  char buf[64];
  gssize n;

  client = client_greeted (fx, &conn);
  g_assert_false (pg_conn_is_tls (conn));

  /* SO_LINGER 0: the close sends a reset, not a FIN. */
  socket = g_socket_connection_get_socket (G_SOCKET_CONNECTION (client->stream));
  {
    struct linger lin = { 1, 0 };
    g_assert_cmpint (setsockopt (g_socket_get_fd (socket), SOL_SOCKET, SO_LINGER, &lin, sizeof lin),
                     ==, 0);
  }
  g_assert_true (g_io_stream_close (client->stream, NULL, NULL));
  {
    gint64 deadline = g_get_monotonic_time () + WATCHDOG_MS * 1000;

    for (;;)
      {
        g_clear_error (&error);
        n = pg_conn_read_nonblocking (conn, buf, sizeof buf, &error);
        if (n != -1 || !g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
          break;
        g_assert_cmpint (g_get_monotonic_time (), <, deadline);
        g_usleep (1000);
      }
  }
  g_assert_cmpint (n, ==, -1);
  g_assert_nonnull (error);
  g_assert_false (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK));
  g_assert_false (pg_conn_is_closed (conn));

  /* The socket is gone: the direct write takes nothing, the queued one fails and closes. */
  g_assert_cmpuint (fx->fe.closed, ==, 0);
  pg_conn_write (conn, "late\r\n", 6);
  {
    gint64 deadline = g_get_monotonic_time () + WATCHDOG_MS * 1000;

    while (!pg_conn_is_closed (conn))
      {
        g_assert_cmpint (g_get_monotonic_time (), <, deadline);
        g_main_context_iteration (NULL, TRUE);
      }
  }
  g_assert_cmpuint (fx->fe.closed, ==, 1);
}

static void
test_ipv4_ipv6 (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) c4 = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  g_autoptr (Client) c6 = client_connect ("::1", fx->port6, NULL, NULL, NULL);

  g_assert_no_error (c4->error);
  g_assert_no_error (c6->error);
  client_expect (c4, "+OK hello pop3\r\n");
  client_expect (c6, "+OK hello pop3\r\n");
  g_assert_cmpuint (fx->fe.started, ==, 2);
  g_assert_cmpuint (pg_server_get_n_sessions (fx->server), ==, 2);
}

static void
test_tls_verified (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) good
      = client_connect ("127.0.0.1", fx->tls_port, NULL, fx->certs->ca_file, "localhost");
  g_autoptr (Client) untrusted
      = client_connect ("127.0.0.1", fx->tls_port, NULL, fx->certs->untrusted_ca_file, "localhost");
  g_autoptr (Client) wrong_name
      = client_connect ("127.0.0.1", fx->tls_port, NULL, fx->certs->ca_file, "mail.example.org");

  g_assert_no_error (good->error);
  client_expect (good, "+OK hello pop3 tls\r\n");
  g_assert_error (untrusted->error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
  g_assert_error (wrong_name->error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
}

static void
test_limit_total (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) a = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  g_autoptr (Client) b = client_connect ("::1", fx->port6, NULL, NULL, NULL);
  g_autoptr (Client) c = NULL;

  client_expect (a, "+OK hello");
  client_expect (b, "+OK hello");
  c = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  client_expect (c, NULL);
  g_assert_nonnull (strstr (c->received->str, "-ERR [SYS/TEMP] too many sessions"));
  g_assert_cmpuint (fx->fe.started, ==, 2);

  /* A slot frees up when a session ends. */
  pg_conn_abort (g_ptr_array_index (fx->fe.conns, 0));
  {
    g_autoptr (Client) d = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
    client_expect (d, "+OK hello");
  }
}

static void
test_limit_per_address (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) a = client_connect ("127.0.0.1", fx->port4, "127.0.0.1", NULL, NULL);
  g_autoptr (Client) b = client_connect ("127.0.0.1", fx->port4, "127.0.0.1", NULL, NULL);
  g_autoptr (Client) other = NULL;

  client_expect (a, "+OK hello");
  client_expect (b, NULL);
  g_assert_nonnull (strstr (b->received->str, "too many sessions from this address"));
  /* Another loopback address is another client. */
  other = client_connect ("127.0.0.1", fx->port4, "127.0.0.2", NULL, NULL);
  client_expect (other, "+OK hello");
}

static void
test_preauth_timeout (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) a = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);

  client_expect (a, NULL);
  g_assert_nonnull (strstr (a->received->str, "-ERR timeout\r\n"));
  g_assert_cmpuint (fx->fe.timeouts, ==, 1);
  g_assert_cmpuint (fx->fe.closed, ==, 1);
}

static void
test_reload (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) next = NULL;
  g_autoptr (Client) kept = NULL;
  g_autoptr (Client) before = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  guint16 added = free_port ("127.0.0.1");
  g_autofree gchar *extra = g_strdup_printf ("[imap]\nlisten = 127.0.0.1:%u\n", added);
  g_autoptr (GPtrArray) imap = NULL;

  client_expect (before, "+OK hello");
  next = make_config (fx, extra);
  g_assert_true (pg_server_reload (fx->server, next, &error));
  g_assert_no_error (error);
  g_assert_true (pg_server_get_config (fx->server) == next);
  imap = pg_server_get_bound_addresses (fx->server, PG_FRONTEND_IMAP, FALSE);
  g_assert_cmpuint (imap->len, ==, 1);
  /* The POP3 listener stayed (same socket) and the session that ran keeps going. */
  kept = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  client_expect (kept, "+OK hello");
  g_assert_false (pg_conn_is_closed (g_ptr_array_index (fx->fe.conns, 0)));

  /* A reload that cannot bind changes nothing. */
  {
    g_autoptr (GError) bind_error = NULL;
    g_autoptr (GSocket) blocker = NULL;
    g_autoptr (PgConfig) bad = NULL;
    guint16 taken = free_port ("127.0.0.1");
    g_autofree gchar *taken_extra
        = g_strdup_printf ("[imap]\nlisten = 127.0.0.1:%u, 127.0.0.1:%u\n", added, taken);
    g_autoptr (GInetAddress) ip = g_inet_address_new_from_string ("127.0.0.1");
    g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (ip, taken);

    blocker
        = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
    g_assert_true (g_socket_bind (blocker, addr, FALSE, NULL));
    g_assert_true (g_socket_listen (blocker, NULL));
    bad = make_config (fx, taken_extra);
    g_assert_false (pg_server_reload (fx->server, bad, &bind_error));
    g_assert_nonnull (bind_error);
    g_assert_true (pg_server_get_config (fx->server) == next);
    g_clear_pointer (&imap, g_ptr_array_unref);
    imap = pg_server_get_bound_addresses (fx->server, PG_FRONTEND_IMAP, FALSE);
    g_assert_cmpuint (imap->len, ==, 1);
  }
}

static void
on_idle_cb (PgServer *server, gpointer user_data)
{
  *(gboolean *) user_data = TRUE;
}

static void
test_shutdown (Fixture *fx, gconstpointer data)
{
  g_autoptr (Client) a = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  g_autoptr (Client) late = NULL;
  gboolean idle = FALSE;

  client_expect (a, "+OK hello");
  g_signal_connect (fx->server, "idle", G_CALLBACK (on_idle_cb), &idle);
  pg_server_shutdown (fx->server);
  client_expect (a, NULL);
  g_assert_nonnull (strstr (a->received->str, "-ERR shutting down"));
  iterate_until (&idle);
  g_assert_cmpuint (fx->fe.shutdowns, ==, 1);
  /* No longer accepting. */
  late = client_connect ("127.0.0.1", fx->port4, NULL, NULL, NULL);
  g_assert_nonnull (late->error);
}

/* --- the engine as a client: connect, client TLS, deadline, readable wait, hand-over --- */

typedef struct
{
  gboolean done;
  PgConn *conn; /* owned */
  GError *error;
} ConnectResult;

static void
connect_result_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  ConnectResult *r = user_data;

  r->conn = pg_conn_connect_finish (result, &r->error);
  r->done = TRUE;
}

/* A connection of popgate's own to one of the fixture's listeners. */
static PgConn *
connect_conn (Fixture *fx, guint16 port)
{
  g_autoptr (PgConfig) config = make_config (fx, NULL);
  ConnectResult r = { 0 };

  pg_conn_connect_async (config, "127.0.0.1", port, g_get_monotonic_time () + WATCHDOG_MS * 1000,
                         NULL, connect_result_cb, &r);
  iterate_until (&r.done);
  g_assert_no_error (r.error);
  g_assert_nonnull (r.conn);
  g_assert_true (pg_conn_is_upstream (r.conn));
  g_assert_cmpuint (pg_conn_get_id (r.conn), ==, 0); /* it takes no session id */
  return r.conn;
}

typedef struct
{
  gboolean done;
  gboolean ok;
  GError *error;
} TlsResult;

static void
client_tls_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  TlsResult *r = user_data;

  r->ok = pg_conn_start_client_tls_finish (PG_CONN (source), result, &r->error);
  r->done = TRUE;
}

/* TLS as the client on a connection made with pg_conn_connect_async(): the server's
 * certificate is checked against the CA and the name; a name it does not carry fails the
 * handshake with PG_ERROR_TLS saying so. */
static void
test_client_tls (Fixture *fx, gconstpointer data)
{
  for (guint good = 0; good < 2; good++)
    {
      g_autoptr (PgConn) conn = connect_conn (fx, fx->tls_port);
      g_autoptr (GString) got = g_string_new (NULL);
      TlsResult t = { 0 };

      g_assert_false (pg_conn_is_tls (conn));
      pg_conn_start_client_tls_async (conn, good ? "localhost" : "wrong.example", fx->tls_port,
                                      fx->certs->ca_file, NULL, client_tls_cb, &t);
      iterate_until (&t.done);
      if (!good)
        {
          g_assert_false (t.ok);
          g_assert_error (t.error, PG_ERROR, PG_ERROR_TLS);
          g_assert_nonnull (strstr (t.error->message, "does not match the host name"));
          g_clear_error (&t.error);
          g_assert_false (pg_conn_is_tls (conn));
          pg_conn_abort (conn);
          continue;
        }
      g_assert_no_error (t.error);
      g_assert_true (t.ok);
      g_assert_true (pg_conn_is_tls (conn));
      pg_test_conn_read_until (conn, got, "+OK hello pop3 tls\r\n");
      pg_conn_abort (conn);
    }
}

/* What is written while a TLS handshake runs waits for it and goes out over TLS (written
 * to the socket at once, it would land inside the handshake in clear and break it); a read
 * in that window is refused; a failed handshake drops what waited. */
static void
test_tls_handshake_window (Fixture *fx, gconstpointer data)
{
  for (guint good = 0; good < 2; good++)
    {
      g_autoptr (PgConn) conn = connect_conn (fx, fx->tls_port);
      g_autoptr (GString) got = g_string_new (NULL);
      g_autoptr (GError) error = NULL;
      TlsResult t = { 0 };
      ReadResult r = { 0 };
      char buf[16];

      pg_conn_start_client_tls_async (conn, good ? "localhost" : "wrong.example", fx->tls_port,
                                      fx->certs->ca_file, NULL, client_tls_cb, &t);
      pg_conn_write (conn, "abc\r\n", 5);
      g_assert_cmpuint (pg_conn_get_queued (conn), ==, 5);
      g_assert_cmpint (pg_conn_read_nonblocking (conn, buf, sizeof buf, &error), ==, -1);
      g_assert_error (error, G_IO_ERROR, G_IO_ERROR_PENDING);
      pg_conn_read_async (conn, buf, sizeof buf, NULL, read_result_cb, &r);
      iterate_until (&r.done);
      g_assert_cmpint (r.n, ==, -1);
      g_assert_error (r.error, G_IO_ERROR, G_IO_ERROR_PENDING);
      g_clear_error (&r.error);
      iterate_until (&t.done);
      if (!good)
        {
          g_assert_false (t.ok);
          g_assert_error (t.error, PG_ERROR, PG_ERROR_TLS);
          g_clear_error (&t.error);
          g_assert_cmpuint (pg_conn_get_queued (conn), ==, 0);
          pg_conn_abort (conn);
          continue;
        }
      g_assert_no_error (t.error);
      g_assert_true (t.ok);
      pg_test_conn_read_until (conn, got, "+OK hello pop3 tls\r\n");
      g_assert_cmpuint (pg_conn_get_queued (conn), ==, 0);
      g_assert_cmpuint (pg_conn_get_bytes_out (conn), ==, 5);
      pg_conn_abort (conn);
    }
}

typedef struct
{
  gboolean fired;
  gint64 fired_us;
} DeadlineProbe;

static gboolean
deadline_probe_cb (PgConn *conn, gpointer user_data)
{
  DeadlineProbe *p = user_data;

  p->fired = TRUE;
  p->fired_us = g_get_monotonic_time ();
  return TRUE;
}

static gboolean
set_flag_cb (gpointer user_data)
{
  *(gboolean *) user_data = TRUE;
  return G_SOURCE_REMOVE;
}

/* pg_conn_set_deadline_at(): moved later, "timeout" does not come before the new time;
 * moved earlier, it comes at the earlier one; 0 turns it off. */
static void
test_deadline_at (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgConn) conn = connect_conn (fx, fx->port4);
  DeadlineProbe p = { 0 };
  gboolean marker = FALSE;
  gint64 at_us;

  g_signal_connect (conn, "timeout", G_CALLBACK (deadline_probe_cb), &p);
  at_us = g_get_monotonic_time () + 150 * 1000;
  pg_conn_set_deadline_at (conn, at_us - 100 * 1000);
  pg_conn_set_deadline_at (conn, at_us);
  iterate_until (&p.fired);
  g_assert_cmpint (p.fired_us, >=, at_us);
  g_assert_true (pg_conn_deadline_passed (conn));

  p.fired = FALSE;
  pg_conn_set_deadline_at (conn, g_get_monotonic_time () + (gint64) 3600 * G_USEC_PER_SEC);
  g_assert_false (pg_conn_deadline_passed (conn));
  at_us = g_get_monotonic_time () + 50 * 1000;
  pg_conn_set_deadline_at (conn, at_us);
  iterate_until (&p.fired);
  g_assert_cmpint (p.fired_us, >=, at_us);

  /* Off: a deadline set and cleared never comes (a later timer of our own does). */
  p.fired = FALSE;
  pg_conn_set_deadline_at (conn, g_get_monotonic_time () + 20 * 1000);
  pg_conn_set_deadline_at (conn, 0);
  g_timeout_add (100, set_flag_cb, &marker);
  iterate_until (&marker);
  g_assert_false (p.fired);
  g_assert_false (pg_conn_is_closed (conn));
  pg_conn_abort (conn);
}

static void
readable_cb (PgConn *conn, gpointer user_data)
{
  *(gboolean *) user_data = TRUE;
}

/* An idle connection waits for input without a buffer; what came is then read without
 * waiting. A cancelled wait is never called. The stream handed over (not while a read is
 * pending) stays open when the PgConn goes, and works in the new owner's hands. */
static void
test_wait_and_steal (Fixture *fx, gconstpointer data)
{
  g_autoptr (PgConn) conn = connect_conn (fx, fx->port4);
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GError) error = NULL;
  g_autoptr (GIOStream) stream = NULL;
  g_autoptr (GString) got = g_string_new (NULL);
  gboolean woke = FALSE;
  ReadResult r = { 0 };
  char buf[64];
  gssize n;
  PgConn *server_side;

  pg_conn_wait_readable (conn, readable_cb, &woke);
  g_assert_true (pg_conn_is_reading (conn));
  iterate_until (&woke);
  g_assert_false (pg_conn_is_reading (conn));
  n = pg_conn_read_nonblocking (conn, buf, sizeof buf, &error);
  g_assert_no_error (error);
  g_assert_cmpint (n, >, 0);
  g_string_append_len (got, buf, (gsize) n);
  pg_test_conn_read_until (conn, got, "+OK hello pop3\r\n");
  g_assert_cmpstr (got->str, ==, "+OK hello pop3\r\n");
  g_assert_cmpuint (pg_conn_get_bytes_in (conn), ==, got->len);
  g_assert_cmpint (pg_conn_read_nonblocking (conn, buf, sizeof buf, &error), ==, -1);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
  g_clear_error (&error);

  woke = FALSE;
  pg_conn_wait_readable (conn, readable_cb, &woke);
  pg_conn_cancel_wait_readable (conn);
  g_assert_false (pg_conn_is_reading (conn));

  pg_conn_read_async (conn, buf, sizeof buf, cancellable, read_result_cb, &r);
  g_assert_null (pg_conn_steal_stream (conn, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_BUSY);
  g_clear_error (&error);
  g_cancellable_cancel (cancellable);
  iterate_until (&r.done);
  g_clear_error (&r.error);

  stream = pg_conn_steal_stream (conn, &error);
  g_assert_no_error (error);
  g_assert_nonnull (stream);
  g_assert_true (pg_conn_is_closed (conn));
  g_clear_object (&conn);
  g_assert_false (woke);
  g_assert_false (g_io_stream_is_closed (stream));
  g_assert_true (g_output_stream_write_all (g_io_stream_get_output_stream (stream), "ping\r\n", 6,
                                            NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (fx->fe.conns->len, ==, 1);
  server_side = g_ptr_array_index (fx->fe.conns, 0);
  g_string_truncate (got, 0);
  pg_test_conn_read_until (server_side, got, "ping\r\n");
  g_assert_cmpuint (fx->fe.closed, ==, 0);
  g_io_stream_close (stream, NULL, NULL);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  pg_log_init (PG_LOG_LEVEL_WARNING);

  g_test_add ("/popgate/net/ipv4-ipv6", Fixture, NULL, fixture_setup, test_ipv4_ipv6,
              fixture_teardown);
  g_test_add ("/popgate/net/read-cancel-close", Fixture, NULL, fixture_setup,
              test_read_cancel_close, fixture_teardown);
  g_test_add ("/popgate/net/client-tls", Fixture, NULL, fixture_setup, test_client_tls,
              fixture_teardown);
  g_test_add ("/popgate/net/tls-handshake-window", Fixture, NULL, fixture_setup,
              test_tls_handshake_window, fixture_teardown);
  g_test_add ("/popgate/net/deadline-at", Fixture, NULL, fixture_setup, test_deadline_at,
              fixture_teardown);
  g_test_add ("/popgate/net/wait-and-steal", Fixture, NULL, fixture_setup, test_wait_and_steal,
              fixture_teardown);
  g_test_add ("/popgate/net/cork", Fixture, NULL, fixture_setup, test_cork, fixture_teardown);
  g_test_add ("/popgate/net/wait-drops-cancel-source", Fixture, NULL, fixture_setup,
              test_wait_drops_cancel_source, fixture_teardown);
  g_test_add ("/popgate/net/plain-reset", Fixture, NULL, fixture_setup, test_plain_reset,
              fixture_teardown);
  g_test_add ("/popgate/net/readable-func", Fixture, NULL, fixture_setup, test_readable_func,
              fixture_teardown);
  g_test_add ("/popgate/net/tls-verified", Fixture, NULL, fixture_setup, test_tls_verified,
              fixture_teardown);
  g_test_add ("/popgate/net/limit-total", Fixture, "[limits]\nmax_sessions = 2\n", fixture_setup,
              test_limit_total, fixture_teardown);
  g_test_add ("/popgate/net/limit-per-address", Fixture, "[limits]\nmax_sessions_per_address = 1\n",
              fixture_setup, test_limit_per_address, fixture_teardown);
  g_test_add ("/popgate/net/preauth-timeout", Fixture, "[limits]\npreauth_timeout = 200ms\n",
              fixture_setup, test_preauth_timeout, fixture_teardown);
  g_test_add ("/popgate/net/reload", Fixture, NULL, fixture_setup, test_reload, fixture_teardown);
  g_test_add ("/popgate/net/shutdown", Fixture, NULL, fixture_setup, test_shutdown,
              fixture_teardown);
  return g_test_run ();
}
