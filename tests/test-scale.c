/* popgate — scale-out behind a load balancer (issue 9): two popgate instances (the real
 * binary) with the imap-metadata state backend behind HAProxy, which balances POP3
 * connections round-robin and announces each client with a PROXY v2 header. One real
 * Dovecot with METADATA is the upstream of both.
 *
 * Which instance served a session: every POP3 client connects from its own loopback
 * address (127.0.0.2, 127.0.0.3, …; HAProxy itself is 127.0.0.1), so the instance whose
 * log shows "pop3 connection from 127.0.0.N:" is the one HAProxy picked. A test that
 * needs a given instance connects again from the next address until round-robin lands
 * there (bounded: with two servers it takes at most two tries).
 *
 * HAProxy runs in the foreground (haproxy -db -f FILE) with its own config in a temp dir,
 * on 127.0.0.1 only, and is stopped by its PID.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-pop3.h"
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <stdio.h>
#include <string.h>

#define SCALE_USER "scale"
#define SCALE_PASSWORD "sc4le-p\"ss w0rd"
#define SCALE_WAIT_MS 20000
#define SCALE_N_MESSAGES 4
/* Round-robin over two servers reaches a chosen one within two connections; allow more
 * so a stray connection (none is expected) does not fail the test. */
#define SCALE_MAX_ATTEMPTS 4
/* HAProxy's start: tries with a new port if the one picked was taken meanwhile. */
#define SCALE_HAPROXY_STARTS 3
/* The address HAProxy's readiness probe connects from: not a client of the scenario. */
#define SCALE_PROBE_IP "127.0.0.99"

typedef struct
{
  PgTestDovecot *dovecot;      /* owned */
  PgTestPopgate *instances[2]; /* owned: A and B */
  gchar *haproxy_dir;          /* owned: temp dir with haproxy.cfg and haproxy.log */
  gchar *haproxy_config;       /* owned */
  gchar *haproxy_log;          /* owned: HAProxy's stdout + stderr */
  PgTestProcess *haproxy;      /* owned: NULL while not running */
  guint16 haproxy_port;
  guint next_client; /* last octet of the next client address */
} ScaleFixture;

static const char *const scale_instance_names[] = { "A", "B" };

/* --- HAProxy ------------------------------------------------------------------------------- */

static gchar *
scale_haproxy_config (guint16 port, guint16 port_a, guint16 port_b)
{
  /* Runs as the test's user, in the foreground, without chroot or a stats socket. Health
   * checks are left out: each would be a connection in popgate's log. */
  return g_strdup_printf ("global\n"
                          "    maxconn 256\n"
                          "    log stdout format raw local0\n"
                          "\n"
                          "defaults\n"
                          "    mode tcp\n"
                          "    log global\n"
                          "    option tcplog\n"
                          "    timeout connect 5s\n"
                          "    timeout client 2m\n"
                          "    timeout server 2m\n"
                          "\n"
                          "frontend pop3\n"
                          "    bind 127.0.0.1:%u\n"
                          "    default_backend popgate_pop3\n"
                          "\n"
                          "backend popgate_pop3\n"
                          "    balance roundrobin\n"
                          "    server a 127.0.0.1:%u send-proxy-v2\n"
                          "    server b 127.0.0.1:%u send-proxy-v2\n",
                          port, port_a, port_b);
}

typedef struct
{
  ScaleFixture *fx;
  gboolean ready;
} ScaleProbe;

/* One try: a POP3 greeting through HAProxy (from the probe address) means HAProxy listens
 * and reaches a popgate. Stops waiting if HAProxy exited. */
static gboolean
scale_haproxy_probe_cb (gpointer user_data)
{
  ScaleProbe *probe = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPop3) pop3 = NULL;

  if (pg_test_process_has_exited (probe->fx->haproxy))
    return TRUE;
  pop3 = pg_test_pop3_connect_from ("127.0.0.1", probe->fx->haproxy_port, SCALE_PROBE_IP, &error);
  if (pop3 == NULL)
    return FALSE;
  probe->ready = g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK");
  if (probe->ready)
    {
      g_autofree gchar *bye = pg_test_pop3_command (pop3, "QUIT", NULL);
    }
  return probe->ready;
}

static gboolean
scale_haproxy_start (ScaleFixture *fx, GError **error)
{
  for (guint attempt = 0; attempt < SCALE_HAPROXY_STARTS; attempt++)
    {
      const char *argv[] = { "haproxy", "-db", "-f", fx->haproxy_config, NULL };
      g_autofree gchar *config = NULL;
      ScaleProbe probe = { fx, FALSE };

      fx->haproxy_port = pg_test_free_port ("127.0.0.1", error);
      if (fx->haproxy_port == 0)
        return FALSE;
      config = scale_haproxy_config (fx->haproxy_port, fx->instances[0]->pop3_port,
                                     fx->instances[1]->pop3_port);
      if (!g_file_set_contents (fx->haproxy_config, config, -1, error))
        return FALSE;
      fx->haproxy = pg_test_process_spawn (argv, fx->haproxy_log, error);
      if (fx->haproxy == NULL)
        return FALSE;
      if (!pg_test_wait_until (scale_haproxy_probe_cb, &probe, SCALE_WAIT_MS))
        {
          g_autofree gchar *log = pg_test_read_file (fx->haproxy_log);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                       "HAProxy did not pass a connection through within %u ms:\n%s", SCALE_WAIT_MS,
                       log);
          return FALSE;
        }
      if (probe.ready)
        return TRUE;
      /* It exited: most likely the port was taken; try another. */
      g_clear_pointer (&fx->haproxy, pg_test_process_free);
    }
  {
    g_autofree gchar *log = pg_test_read_file (fx->haproxy_log);
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "HAProxy did not start:\n%s", log);
  }
  return FALSE;
}

/* --- fixture ------------------------------------------------------------------------------- */

static gchar *
scale_message (guint i)
{
  return g_strdup_printf ("From: a@example.org\r\nSubject: scale %u\r\n\r\nBody %u.\r\n", i, i);
}

static void
scale_setup (ScaleFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  PgTestDovecotOptions options = { .metadata = TRUE };

  fx->next_client = 2;
  if (pg_test_dovecot_skip_reason () != NULL)
    return;
  fx->dovecot = pg_test_dovecot_new (&options, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_add_user (fx->dovecot, SCALE_USER, SCALE_PASSWORD, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (fx->dovecot, &error), error);
  for (guint i = 1; i <= SCALE_N_MESSAGES; i++)
    {
      g_autofree gchar *msg = scale_message (i);
      PG_TEST_ASSERT_OK (
          pg_test_dovecot_append (fx->dovecot, SCALE_USER, "INBOX", msg, strlen (msg), &error),
          error);
    }

  for (guint i = 0; i < G_N_ELEMENTS (fx->instances); i++)
    {
      PgTestPopgate *popgate = pg_test_popgate_new (fx->dovecot, "none", &error);

      g_assert_no_error (error);
      fx->instances[i] = popgate;
      pg_test_popgate_set (popgate, "limits", "auth_failure_delay", "10ms");
      pg_test_popgate_set (popgate, "pop3", "delete", "keep");
      pg_test_popgate_set (popgate, "pop3", "proxy_protocol", "true");
      /* Only HAProxy may speak for clients; a client connecting directly is refused. */
      pg_test_popgate_set (popgate, "proxy", "trusted", "127.0.0.1/32");
      pg_test_popgate_set (popgate, "state", "backend", "imap-metadata");
      PG_TEST_ASSERT_OK (pg_test_popgate_start (popgate, &error), error);
    }

  fx->haproxy_dir = g_dir_make_tmp ("popgate-haproxy-XXXXXX", &error);
  g_assert_no_error (error);
  fx->haproxy_config = g_build_filename (fx->haproxy_dir, "haproxy.cfg", NULL);
  fx->haproxy_log = g_build_filename (fx->haproxy_dir, "haproxy.log", NULL);
  {
    g_autofree gchar *haproxy = g_find_program_in_path ("haproxy");
    if (haproxy == NULL)
      return;
  }
  PG_TEST_ASSERT_OK (scale_haproxy_start (fx, &error), error);
}

/* FALSE (and the test failed: a missing dependency is a failure, never a skip) if this
 * machine cannot run the scenario. */
static gboolean
scale_available (ScaleFixture *fx)
{
  if (fx->dovecot == NULL)
    {
      g_test_fail_printf ("%s", pg_test_dovecot_skip_reason ());
      return FALSE;
    }
  if (fx->haproxy == NULL)
    {
      g_test_fail_printf ("HAProxy is not installed (apt-get install haproxy)");
      return FALSE;
    }
  return TRUE;
}

static void
scale_popgate_check_and_free (PgTestPopgate *popgate)
{
  g_autofree gchar *log = NULL;

  if (popgate == NULL)
    return;
  pg_test_popgate_stop (popgate);
  log = pg_test_popgate_read_log (popgate);
  /* Never a password in popgate's output; under the sanitizers, no report from popgate
   * itself (LSan runs when it exits). */
  g_assert_null (strstr (log, SCALE_PASSWORD));
  if (strstr (log, "Sanitizer") != NULL || strstr (log, "runtime error") != NULL)
    g_error ("popgate's sanitizer report:\n%s", log);
  pg_test_popgate_free (popgate);
}

static void
scale_teardown (ScaleFixture *fx, gconstpointer data)
{
  /* HAProxy first: nothing new reaches the instances while they stop. */
  if (fx->haproxy != NULL)
    g_assert_true (pg_test_process_stop (fx->haproxy, SCALE_WAIT_MS));
  g_clear_pointer (&fx->haproxy, pg_test_process_free);
  for (guint i = 0; i < G_N_ELEMENTS (fx->instances); i++)
    scale_popgate_check_and_free (g_steal_pointer (&fx->instances[i]));
  if (fx->haproxy_dir != NULL)
    pg_test_rm_rf (fx->haproxy_dir);
  g_free (fx->haproxy_dir);
  g_free (fx->haproxy_config);
  g_free (fx->haproxy_log);
  g_clear_pointer (&fx->dovecot, pg_test_dovecot_free);
}

/* --- sessions through HAProxy -------------------------------------------------------------- */

typedef struct
{
  ScaleFixture *fx;
  gchar *needle; /* owned */
  gint served_by;
} ScaleServed;

static gboolean
scale_served_cb (gpointer user_data)
{
  ScaleServed *served = user_data;

  for (guint i = 0; i < G_N_ELEMENTS (served->fx->instances); i++)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (served->fx->instances[i]);
      if (strstr (log, served->needle) != NULL)
        {
          served->served_by = (gint) i;
          return TRUE;
        }
    }
  return FALSE;
}

/* The line of `log` that contains `needle` (NULL if none). */
static gchar *
scale_log_line (const char *log, const char *needle)
{
  const char *hit = strstr (log, needle);
  const char *start;
  const char *end;

  if (hit == NULL)
    return NULL;
  start = hit;
  while (start > log && start[-1] != '\n')
    start--;
  end = strchr (hit, '\n');
  return end != NULL ? g_strndup (start, (gsize) (end - start)) : g_strdup (start);
}

/* Connect through HAProxy from fresh client addresses until instance `want` serves the
 * session. *out_client_ip gets the address it came from. */
static PgTestPop3 *
scale_connect (ScaleFixture *fx, guint want, gchar **out_client_ip)
{
  for (guint attempt = 0; attempt < SCALE_MAX_ATTEMPTS; attempt++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *ip = g_strdup_printf ("127.0.0.%u", fx->next_client++);
      g_autoptr (PgTestPop3) pop3 = NULL;
      ScaleServed served = { fx, NULL, -1 };
      gboolean found;

      g_assert_cmpuint (fx->next_client, <, 255);
      pop3 = pg_test_pop3_connect_from ("127.0.0.1", fx->haproxy_port, ip, &error);
      g_assert_no_error (error);
      g_assert_true (g_str_has_prefix (pg_test_pop3_get_greeting (pop3), "+OK"));
      served.needle = g_strdup_printf ("pop3 connection from %s:", ip);
      found = pg_test_wait_until (scale_served_cb, &served, SCALE_WAIT_MS);
      g_free (served.needle);
      if (!found)
        g_error ("no popgate instance logged the connection from %s", ip);
      g_test_message ("client %s: served by instance %s", ip,
                      scale_instance_names[served.served_by]);
      if ((guint) served.served_by == want)
        {
          *out_client_ip = g_steal_pointer (&ip);
          return g_steal_pointer (&pop3);
        }
      /* Still in AUTHORIZATION: QUIT changes nothing. */
      {
        g_autofree gchar *bye = pg_test_pop3_command (pop3, "QUIT", &error);
        g_assert_no_error (error);
      }
    }
  g_error ("HAProxy did not send a connection to instance %s in %u tries",
           scale_instance_names[want], SCALE_MAX_ATTEMPTS);
  return NULL;
}

static gchar *
scale_cmd (PgTestPop3 *pop3, const char *command)
{
  g_autoptr (GError) error = NULL;
  gchar *status = pg_test_pop3_command (pop3, command, &error);

  g_assert_no_error (error);
  g_assert_nonnull (status);
  return status;
}

#define scale_assert_reply(pop3, command, prefix)                                                  \
  G_STMT_START                                                                                     \
  {                                                                                                \
    g_autofree gchar *reply_ = scale_cmd ((pop3), (command));                                      \
    if (!g_str_has_prefix (reply_, (prefix)))                                                      \
      g_error ("%s: expected \"%s…\", got \"%s\"", (command), (prefix), reply_);                   \
  }                                                                                                \
  G_STMT_END

/* Log in as SCALE_USER#tag through instance `want`. */
static PgTestPop3 *
scale_login (ScaleFixture *fx, guint want, const char *tag, gchar **out_client_ip)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *login = g_strconcat (SCALE_USER, "#", tag, NULL);
  g_autofree gchar *status = NULL;
  g_autofree gchar *client_ip = NULL;
  g_autoptr (PgTestPop3) pop3 = scale_connect (fx, want, &client_ip);

  if (!pg_test_pop3_login (pop3, login, SCALE_PASSWORD, &status, &error))
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->instances[want]);
      g_error ("login as %s through instance %s: %s\npopgate log:\n%s", login,
               scale_instance_names[want], error != NULL ? error->message : status, log);
    }
  *out_client_ip = g_steal_pointer (&client_ip);
  return g_steal_pointer (&pop3);
}

/* The UIDs the client sees, in message-number order (UIDL: UID is the first 8 hex digits). */
static GArray *
scale_pop3_uids (PgTestPop3 *pop3)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *status = scale_cmd (pop3, "UIDL");
  g_autoptr (GBytes) body = NULL;
  g_autofree gchar *text = NULL;
  g_auto (GStrv) lines = NULL;
  GArray *uids = g_array_new (FALSE, FALSE, sizeof (guint32));

  g_assert_true (g_str_has_prefix (status, "+OK"));
  body = pg_test_pop3_read_multiline (pop3, &error);
  g_assert_no_error (error);
  text = g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body));
  lines = g_strsplit (text, "\r\n", -1);
  for (guint i = 0; lines[i] != NULL; i++)
    {
      guint n = 0;
      gchar hex[9] = { 0 };
      guint32 uid;

      if (*lines[i] == '\0')
        continue;
      g_assert_cmpint (sscanf (lines[i], "%u %8s", &n, hex), ==, 2);
      uid = (guint32) g_ascii_strtoull (hex, NULL, 16);
      g_array_append_val (uids, uid);
    }
  return uids;
}

static void
scale_assert_uids (GArray *uids, const guint32 *expected, guint n)
{
  g_assert_cmpmem (uids->data, uids->len * sizeof (guint32), expected, n * sizeof (guint32));
}

/* The instance's log shows the session's real client (from the PROXY v2 header), with
 * HAProxy as the proxy, on its connection and its login line. */
static void
scale_assert_logged_client (ScaleFixture *fx, guint instance, const char *client_ip,
                            const char *tag)
{
  g_autofree gchar *log = pg_test_popgate_read_log (fx->instances[instance]);
  g_autofree gchar *conn_needle = g_strdup_printf ("pop3 connection from %s:", client_ip);
  g_autofree gchar *login_needle
      = g_strdup_printf ("login: user=%s#%s tag=%s client=%s:", SCALE_USER, tag, tag, client_ip);
  g_autofree gchar *conn_line = scale_log_line (log, conn_needle);

  g_assert_nonnull (conn_line);
  g_assert_nonnull (strstr (conn_line, " via proxy 127.0.0.1:"));
  if (strstr (log, login_needle) == NULL)
    g_error ("instance %s's log has no \"%s\":\n%s", scale_instance_names[instance], login_needle,
             log);
}

static GArray *
scale_upstream_uids (ScaleFixture *fx, gchar **out_laptop_metadata)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap
      = pg_test_imap_connect (fx->dovecot->host, fx->dovecot->imap_port, NULL, &error);
  GArray *uids;

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, SCALE_USER, SCALE_PASSWORD, &error), error);
  PG_TEST_ASSERT_OK (pg_test_imap_select (imap, "INBOX", TRUE, NULL, NULL, &error), error);
  uids = pg_test_imap_uid_search_all (imap, &error);
  g_assert_no_error (error);
  *out_laptop_metadata
      /* DEPTH 1: each save writes its merged state as an entry below the client's. */
      = pg_test_imap_command (imap, "GETMETADATA (DEPTH 1) INBOX /private/vendor/popgate/laptop",
                              &error);
  g_assert_no_error (error);
  pg_test_imap_logout (imap, NULL);
  return uids;
}

/* --- the scenario -------------------------------------------------------------------------- */

/* Under `delete = keep`, the laptop's DELE+QUIT through instance A is honoured by
 * instance B (the state is on the upstream), the phone still sees everything, the
 * upstream keeps every message, and both instances log the real client addresses. */
static void
test_scale_keep_shared (ScaleFixture *fx, gconstpointer data)
{
  static const guint32 all[] = { 1, 2, 3, 4 };
  static const guint32 laptop_after[] = { 3, 4 };
  static const guint32 phone_after[] = { 1, 2, 3 };
  g_autofree gchar *ip_laptop_a = NULL;
  g_autofree gchar *ip_laptop_b = NULL;
  g_autofree gchar *ip_phone_b = NULL;
  g_autofree gchar *ip_phone_a = NULL;
  g_autofree gchar *metadata = NULL;
  g_autoptr (GArray) upstream = NULL;

  if (!scale_available (fx))
    return;

  /* Through A: the laptop sees all four, deletes the first two, QUIT. */
  {
    g_autoptr (PgTestPop3) pop3 = scale_login (fx, 0, "laptop", &ip_laptop_a);
    g_autoptr (GArray) uids = scale_pop3_uids (pop3);

    scale_assert_uids (uids, all, G_N_ELEMENTS (all));
    scale_assert_reply (pop3, "DELE 1", "+OK");
    scale_assert_reply (pop3, "DELE 2", "+OK");
    scale_assert_reply (pop3, "QUIT", "+OK");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }

  /* Through B: the laptop no longer sees them; the phone still sees all four and hides
   * one of its own. */
  {
    g_autoptr (PgTestPop3) pop3 = scale_login (fx, 1, "laptop", &ip_laptop_b);
    g_autoptr (GArray) uids = scale_pop3_uids (pop3);

    scale_assert_uids (uids, laptop_after, G_N_ELEMENTS (laptop_after));
    scale_assert_reply (pop3, "STAT", "+OK 2 ");
    scale_assert_reply (pop3, "QUIT", "+OK");
  }
  {
    g_autoptr (PgTestPop3) pop3 = scale_login (fx, 1, "phone", &ip_phone_b);
    g_autoptr (GArray) uids = scale_pop3_uids (pop3);

    scale_assert_uids (uids, all, G_N_ELEMENTS (all));
    scale_assert_reply (pop3, "DELE 4", "+OK");
    scale_assert_reply (pop3, "QUIT", "+OK");
    g_assert_true (pg_test_pop3_wait_closed (pop3));
  }

  /* And back through A: the phone's deletion made on B holds there too. */
  {
    g_autoptr (PgTestPop3) pop3 = scale_login (fx, 0, "phone", &ip_phone_a);
    g_autoptr (GArray) uids = scale_pop3_uids (pop3);

    scale_assert_uids (uids, phone_after, G_N_ELEMENTS (phone_after));
    scale_assert_reply (pop3, "QUIT", "+OK");
  }

  /* The upstream still holds every message; the laptop's state is on the mailbox. */
  upstream = scale_upstream_uids (fx, &metadata);
  scale_assert_uids (upstream, all, G_N_ELEMENTS (all));
  g_assert_nonnull (strstr (metadata, "hidden 1:2"));

  /* Neither instance keeps state of its own. */
  for (guint i = 0; i < G_N_ELEMENTS (fx->instances); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GDir) dir = g_dir_open (fx->instances[i]->state_dir, 0, &error);

      g_assert_no_error (error);
      g_assert_null (g_dir_read_name (dir));
    }

  /* The logs show each real client (PROXY v2), never HAProxy's own address as a client. */
  scale_assert_logged_client (fx, 0, ip_laptop_a, "laptop");
  scale_assert_logged_client (fx, 1, ip_laptop_b, "laptop");
  scale_assert_logged_client (fx, 1, ip_phone_b, "phone");
  scale_assert_logged_client (fx, 0, ip_phone_a, "phone");
  for (guint i = 0; i < G_N_ELEMENTS (fx->instances); i++)
    {
      g_autofree gchar *log = pg_test_popgate_read_log (fx->instances[i]);

      g_assert_null (strstr (log, "connection from 127.0.0.1:"));
      g_assert_null (strstr (log, "client=127.0.0.1:"));
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/popgate/scale/keep-shared", ScaleFixture, NULL, scale_setup, test_scale_keep_shared,
              scale_teardown);
  return g_test_run ();
}
