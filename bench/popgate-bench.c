/* popgate benchmark — one command that starts an upstream Dovecot seeded with mail, popgate
 * in front of it and, as the anchor, Dovecot's own POP3 gateway over imapc; then measures
 * throughput, latency and memory through each and writes a table (see bench/README.md).
 *
 * Correctness decides the exit code (every session must get every message and every
 * octet); timing never does.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-bench-load.h"
#include "pg-test-certs.h"
#include "pg-test-dovecot.h"
#include "pg-test-popgate.h"
#include "pg-test-util.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#define PG_BENCH_PASSWORD "bench-password"
/* Sessions per user: below both Dovecots' mail_max_userip_connections (256, as shipped). */
#define PG_BENCH_SESSIONS_PER_USER 100
#define PG_BENCH_START_TIMEOUT_MS 30000
#define PG_BENCH_STOP_TIMEOUT_MS 15000

/* The rows. POP3 clients (fetchmail, getmail, poplib) send one RETR after the other: that
 * is the main POP3 dialogue, the pipelined one is a second row. IMAP clients that download
 * message by message send one UID FETCH each; one UID FETCH 1:* is the streaming limit. */
typedef enum
{
  PG_BENCH_PATH_POPGATE,           /* popgate's POP3, sequential RETR */
  PG_BENCH_PATH_NATIVE,            /* the upstream Dovecot's own POP3 on the same Maildir */
  PG_BENCH_PATH_ANCHOR,            /* Dovecot's POP3 over imapc, sequential RETR */
  PG_BENCH_PATH_POPGATE_PIPELINED, /* popgate's POP3, RETRs pipelined */
  PG_BENCH_PATH_NATIVE_PIPELINED,
  PG_BENCH_PATH_DIRECT_EACH, /* the upstream's IMAP, one UID FETCH per message */
  PG_BENCH_PATH_RELAY_EACH,  /* popgate's IMAP relay, one UID FETCH per message */
  PG_BENCH_PATH_DIRECT,      /* the upstream's IMAP, one UID FETCH 1:* */
  PG_BENCH_PATH_RELAY,       /* popgate's IMAP relay, one UID FETCH 1:* */
  PG_BENCH_PATH_COUNT,
} PgBenchPath;

static const char *const pg_bench_path_names[] = {
  "popgate POP3",
  "Dovecot native POP3",
  "Dovecot POP3/imapc",
  "popgate POP3, pipelined",
  "Dovecot native POP3, pipelined",
  "direct IMAP, FETCH per message",
  "popgate IMAP relay, FETCH per message",
  "direct IMAP, one FETCH 1:*",
  "popgate IMAP relay, one FETCH 1:*",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_bench_path_names) == PG_BENCH_PATH_COUNT);

/* --paths: short names of the rows, in the same order. */
static const char *const pg_bench_path_keys[] = {
  "pop3",        "native",     "imapc",  "pop3-pipelined", "native-pipelined",
  "direct-each", "relay-each", "direct", "relay",
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_bench_path_keys) == PG_BENCH_PATH_COUNT);

static gboolean
pg_bench_path_is_imap (PgBenchPath path)
{
  return path == PG_BENCH_PATH_DIRECT_EACH || path == PG_BENCH_PATH_RELAY_EACH
         || path == PG_BENCH_PATH_DIRECT || path == PG_BENCH_PATH_RELAY;
}

static gboolean
pg_bench_path_is_relay (PgBenchPath path)
{
  return path == PG_BENCH_PATH_RELAY_EACH || path == PG_BENCH_PATH_RELAY;
}

/* Command line. */
static gboolean pg_bench_smoke = FALSE;
static gint pg_bench_messages = 2000;
static gint pg_bench_message_kb = 10;
static gchar *pg_bench_large_mb = NULL;
static gint pg_bench_huge_mb = 100;
static gchar *pg_bench_ks = NULL;
static gint pg_bench_bulk_k = 64;
static gint pg_bench_bulk_messages = 100;
static gint pg_bench_reps = 3;
static gint pg_bench_pipeline = 8;
static gint pg_bench_idle_sessions = 1000;
static gint pg_bench_timeout_s = 600;
static gchar *pg_bench_paths = NULL;
static gboolean pg_bench_path_enabled[PG_BENCH_PATH_COUNT];
static gchar *pg_bench_output = NULL;
static gboolean pg_bench_keep = FALSE;
static gint pg_bench_scale = 0;
static gchar *pg_bench_scale_mailbox = NULL;
static gint pg_bench_scale_hold_s = 30;
static gint pg_bench_scale_connecting = 100;

typedef struct
{
  const char *kind; /* "full", "bulk", "huge" */
  GPtrArray *users; /* owned: gchar* */
  GArray *files;    /* owned: guint indices into the pool */
  guint64 messages;
  guint64 octets; /* RFC822.SIZE sum (CRLF) */
} PgBenchMailbox;

typedef struct
{
  gchar *path;   /* owned: the pool file (LF line ends, as Dovecot stores it) */
  guint64 size;  /* file size */
  guint64 vsize; /* with CRLF: RFC822.SIZE */
} PgBenchPoolFile;

typedef struct
{
  gchar *dir;         /* owned */
  gchar *config_file; /* owned */
  PgTestCerts *certs; /* owned */
  guint16 pop3_port;
  PgTestProcess *process; /* owned */
} PgBenchAnchor;

typedef struct
{
  gboolean ran;
  guint failed;
  gchar *error; /* owned: the first failure */
  gdouble msgs_s;
  gdouble mb_s;
  gdouble ttfb_p50_ms;
  gdouble ttfb_p99_ms;
  gdouble retr_p50_ms;
  gdouble retr_p99_ms;
  gdouble load_cpu;     /* load generator CPU / wall (1.0 = one core) */
  gdouble gw_cpu;       /* gateway CPU / wall: popgate, or the anchor's processes */
  gdouble upstream_cpu; /* the upstream Dovecot's processes' CPU / wall */
  gdouble load_us;      /* the same three as CPU µs per message */
  gdouble gw_us;
  gdouble upstream_us;
  gdouble reads; /* the load generator's socket reads per message */
} PgBenchFigures;

typedef struct
{
  PgTestDovecot *upstream; /* owned */
  PgTestPopgate *popgate;  /* owned */
  PgBenchAnchor *anchor;   /* owned */
  GArray *pool;            /* owned: PgBenchPoolFile */
  PgBenchMailbox full;
  PgBenchMailbox bulk;
  PgBenchMailbox huge;
  gboolean relay;  /* popgate's IMAP front end answers */
  guint failures;  /* sessions that failed in the whole run */
  GString *report; /* owned */
} PgBench;

/* --- small helpers --------------------------------------------------------------------- */

static gboolean pg_bench_fail (GError **error, const char *format, ...) G_GNUC_PRINTF (2, 3);
static gboolean
pg_bench_fail (GError **error, const char *format, ...)
{
  va_list args;

  va_start (args, format);
  g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "");
  g_free ((*error)->message);
  (*error)->message = g_strdup_vprintf (format, args);
  va_end (args);
  return FALSE;
}

/* A "VmRSS:"-style field of /proc/PID/status, in KiB; 0 if gone. */
static guint64
pg_bench_proc_status_kb (GPid pid, const char *field)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/status", (int) pid);
  g_autofree gchar *contents = NULL;
  const char *at = NULL;

  if (!g_file_get_contents (path, &contents, NULL, NULL) || (at = strstr (contents, field)) == NULL)
    return 0;
  return g_ascii_strtoull (at + strlen (field), NULL, 10);
}

/* Proportional set size (shared pages split among their users), in KiB. */
static guint64
pg_bench_proc_pss_kb (GPid pid)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/smaps_rollup", (int) pid);
  g_autofree gchar *contents = NULL;
  const char *at = NULL;

  if (!g_file_get_contents (path, &contents, NULL, NULL)
      || (at = strstr (contents, "\nPss:")) == NULL)
    return 0;
  return g_ascii_strtoull (at + 5, NULL, 10);
}

/* utime + stime of a process (with its reaped children's: cutime + cstime), in seconds. */
static gdouble
pg_bench_proc_cpu_s (GPid pid, gboolean with_children)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/stat", (int) pid);
  g_autofree gchar *contents = NULL;
  const char *close = NULL;
  unsigned long utime = 0;
  unsigned long stime = 0;
  long cutime = 0;
  long cstime = 0;

  if (!g_file_get_contents (path, &contents, NULL, NULL)
      || (close = strrchr (contents, ')')) == NULL
      || sscanf (close + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld", &utime,
                 &stime, &cutime, &cstime)
             != 4)
    return 0;
  if (!with_children)
    cutime = cstime = 0;
  return (gdouble) (utime + stime + (unsigned long) MAX (cutime, 0)
                    + (unsigned long) MAX (cstime, 0))
         / (gdouble) sysconf (_SC_CLK_TCK);
}

static GPid
pg_bench_proc_ppid (const char *pid)
{
  g_autofree gchar *path = g_build_filename ("/proc", pid, "stat", NULL);
  g_autofree gchar *contents = NULL;
  const char *close = NULL;
  int ppid = 0;

  if (!g_file_get_contents (path, &contents, NULL, NULL)
      || (close = strrchr (contents, ')')) == NULL || sscanf (close + 2, "%*c %d", &ppid) != 1)
    return 0;
  return (GPid) ppid;
}

/* `root` and all its descendants (of PID). */
static GArray *
pg_bench_tree_pids (GPid root)
{
  g_autoptr (GHashTable) parent = g_hash_table_new (g_direct_hash, g_direct_equal);
  g_autoptr (GDir) proc = g_dir_open ("/proc", 0, NULL);
  GArray *pids = g_array_new (FALSE, FALSE, sizeof (GPid));
  GHashTableIter iter;
  gpointer key = NULL;
  gpointer value = NULL;
  const char *name = NULL;

  while (proc != NULL && (name = g_dir_read_name (proc)) != NULL)
    {
      GPid pid = (GPid) atoi (name);

      if (pid > 0)
        g_hash_table_insert (parent, GINT_TO_POINTER (pid),
                             GINT_TO_POINTER (pg_bench_proc_ppid (name)));
    }
  g_hash_table_iter_init (&iter, parent);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      GPid pid = GPOINTER_TO_INT (key);
      gboolean inside = FALSE;

      for (GPid p = pid; p > 1 && !inside;
           p = GPOINTER_TO_INT (g_hash_table_lookup (parent, GINT_TO_POINTER (p))))
        inside = p == root;
      if (inside)
        g_array_append_val (pids, pid);
    }
  return pids;
}

/* Sum VmRSS and PSS over `root` and all its descendants; *out_n gets how many. */
static void
pg_bench_tree_memory (GPid root, guint64 *out_rss_kb, guint64 *out_pss_kb, guint *out_n)
{
  g_autoptr (GArray) pids = pg_bench_tree_pids (root);
  guint64 rss = 0;
  guint64 pss = 0;

  for (guint i = 0; i < pids->len; i++)
    {
      GPid pid = g_array_index (pids, GPid, i);
      rss += pg_bench_proc_status_kb (pid, "VmRSS:");
      pss += pg_bench_proc_pss_kb (pid);
    }
  *out_rss_kb = rss;
  *out_pss_kb = pss;
  *out_n = pids->len;
}

static guint
pg_bench_tree_size (GPid root)
{
  g_autoptr (GArray) pids = pg_bench_tree_pids (root);
  return pids->len;
}

/* After a load, wait (up to a second) until the sessions' processes have ended and been
 * reaped: only then is their CPU in the master's cutime. Not timed. */
static void
pg_bench_wait_tree_settled (GPid root, guint n_before)
{
  for (guint i = 0; i < 50 && pg_bench_tree_size (root) > n_before; i++)
    g_usleep (20 * 1000);
}

/* CPU seconds used so far by a Dovecot: the master with the children it has reaped (its
 * imap/pop3/login processes end with their sessions), plus those still running. */
static gdouble
pg_bench_tree_cpu_s (GPid root)
{
  g_autoptr (GArray) pids = pg_bench_tree_pids (root);
  gdouble total = pg_bench_proc_cpu_s (root, TRUE);

  for (guint i = 0; i < pids->len; i++)
    if (g_array_index (pids, GPid, i) != root)
      total += pg_bench_proc_cpu_s (g_array_index (pids, GPid, i), FALSE);
  return total;
}

static gint
pg_bench_compare_double (gconstpointer a, gconstpointer b)
{
  gdouble x = *(const gdouble *) a;
  gdouble y = *(const gdouble *) b;

  return x < y ? -1 : x > y ? 1 : 0;
}

static gdouble
pg_bench_median (GArray *values)
{
  if (values->len == 0)
    return 0;
  g_array_sort (values, pg_bench_compare_double);
  if (values->len % 2 == 1)
    return g_array_index (values, gdouble, values->len / 2);
  return (g_array_index (values, gdouble, values->len / 2 - 1)
          + g_array_index (values, gdouble, values->len / 2))
         / 2;
}

/* --- mail ------------------------------------------------------------------------------ */

/* Write one message of about `size` octets (LF line ends) to the pool; some body lines
 * start with "." so that dot-stuffing is exercised. */
static gboolean
pg_bench_pool_add (PgBench *bench, const char *dir, guint index, guint64 size, GError **error)
{
  static gchar *text = NULL;
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
  const gsize text_len = 65536;
  g_autoptr (GString) message = g_string_sized_new (size + 1024);
  PgBenchPoolFile file = { NULL, 0, 0 };
  guint32 seed = index * 2654435761u + 1;
  guint line = 0;
  struct passwd *nobody = getpwnam ("nobody");

  if (text == NULL)
    {
      g_autoptr (GRand) rand = g_rand_new_with_seed (7);

      text = g_malloc (text_len);
      for (gsize i = 0; i < text_len; i++)
        text[i] = alphabet[g_rand_int_range (rand, 0, (gint32) sizeof alphabet - 1)];
    }
  g_string_append_printf (message,
                          "From: Bench Sender <sender@bench.example>\n"
                          "To: Bench Reader <reader@bench.example>\n"
                          "Subject: popgate benchmark message %u\n"
                          "Message-ID: <bench-%u@bench.example>\n"
                          "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
                          "MIME-Version: 1.0\n"
                          "Content-Type: text/plain; charset=us-ascii\n"
                          "\n",
                          index, index);
  while (message->len < size)
    {
      gsize width = MIN ((gsize) 72, (gsize) (size - message->len));
      gsize offset = 0;

      seed = seed * 1103515245u + 12345u;
      offset = (seed >> 8) % (text_len - 80);
      if (++line % 40 == 0)
        g_string_append_c (message, '.');
      g_string_append_len (message, text + offset, (gssize) (width > 1 ? width - 1 : 0));
      g_string_append_c (message, '\n');
    }
  file.path = g_strdup_printf ("%s/%u", dir, index);
  file.size = message->len;
  file.vsize = message->len;
  for (gsize i = 0; i < message->len; i++)
    if (message->str[i] == '\n')
      file.vsize++;
  if (!g_file_set_contents (file.path, message->str, (gssize) message->len, error))
    {
      g_free (file.path);
      return FALSE;
    }
  if (chown (file.path, nobody->pw_uid, (gid_t) -1) != 0)
    {
      g_free (file.path);
      return pg_bench_fail (error, "chown: %s", g_strerror (errno));
    }
  g_array_append_val (bench->pool, file);
  return TRUE;
}

static void
pg_bench_mailbox_init (PgBenchMailbox *mailbox, const char *kind)
{
  mailbox->kind = kind;
  mailbox->users = g_ptr_array_new_with_free_func (g_free);
  mailbox->files = g_array_new (FALSE, FALSE, sizeof (guint));
}

static void
pg_bench_mailbox_clear (PgBenchMailbox *mailbox)
{
  g_clear_pointer (&mailbox->users, g_ptr_array_unref);
  g_clear_pointer (&mailbox->files, g_array_unref);
}

static void
pg_bench_mailbox_add_file (PgBench *bench, PgBenchMailbox *mailbox, guint pool_index)
{
  const PgBenchPoolFile *file = &g_array_index (bench->pool, PgBenchPoolFile, pool_index);

  g_array_append_val (mailbox->files, pool_index);
  mailbox->messages++;
  mailbox->octets += file->vsize;
}

static gboolean
pg_bench_mkdir_nobody (const char *path, GError **error)
{
  struct passwd *nobody = getpwnam ("nobody");
  struct group *nogroup = getgrnam ("nogroup");

  if (g_mkdir_with_parents (path, 0700) != 0 || chown (path, nobody->pw_uid, nogroup->gr_gid) != 0)
    return pg_bench_fail (error, "mkdir %s: %s", path, g_strerror (errno));
  return TRUE;
}

/* Users `<kind>0`.. with the mailbox's messages hard-linked into their Maildir/cur, named
 * with S= (file size) and W= (RFC822.SIZE) so Dovecot need not read them to know sizes. */
static gboolean
pg_bench_mailbox_seed (PgBench *bench, PgBenchMailbox *mailbox, guint n_users, GError **error)
{
  for (guint u = 0; u < n_users; u++)
    {
      g_autofree gchar *user = g_strdup_printf ("%s%u", mailbox->kind, u);
      g_autofree gchar *home = g_build_filename (bench->upstream->dir, "mail", user, NULL);
      g_autofree gchar *maildir = g_build_filename (home, "Maildir", NULL);
      const char *subdirs[] = { "cur", "new", "tmp" };

      if (!pg_test_dovecot_add_user (bench->upstream, user, PG_BENCH_PASSWORD, error)
          || !pg_bench_mkdir_nobody (home, error) || !pg_bench_mkdir_nobody (maildir, error))
        return FALSE;
      for (gsize s = 0; s < G_N_ELEMENTS (subdirs); s++)
        {
          g_autofree gchar *sub = g_build_filename (maildir, subdirs[s], NULL);
          if (!pg_bench_mkdir_nobody (sub, error))
            return FALSE;
        }
      for (guint i = 0; i < mailbox->files->len; i++)
        {
          guint index = g_array_index (mailbox->files, guint, i);
          const PgBenchPoolFile *file = &g_array_index (bench->pool, PgBenchPoolFile, index);
          g_autofree gchar *name = g_strdup_printf (
              "%s/cur/%u.M%uP1.bench,S=%" G_GUINT64_FORMAT ",W=%" G_GUINT64_FORMAT ":2,", maildir,
              1700000000u + i, i, file->size, file->vsize);

          if (link (file->path, name) != 0)
            return pg_bench_fail (error, "link %s: %s", name, g_strerror (errno));
        }
      g_ptr_array_add (mailbox->users, g_steal_pointer (&user));
    }
  return TRUE;
}

static gboolean
pg_bench_seed (PgBench *bench, guint n_users, GError **error)
{
  g_autofree gchar *pool = g_build_filename (bench->upstream->dir, "pool", NULL);
  g_auto (GStrv) large = g_strsplit (pg_bench_large_mb, ",", -1);
  guint index = 0;

  if (g_mkdir (pool, 0755) != 0)
    return pg_bench_fail (error, "mkdir %s: %s", pool, g_strerror (errno));
  pg_bench_mailbox_init (&bench->full, "full");
  pg_bench_mailbox_init (&bench->bulk, "bulk");
  pg_bench_mailbox_init (&bench->huge, "huge");
  for (gint i = 0; i < pg_bench_messages; i++, index++)
    {
      if (!pg_bench_pool_add (bench, pool, index, (guint64) pg_bench_message_kb * 1024, error))
        return FALSE;
      pg_bench_mailbox_add_file (bench, &bench->full, index);
      if (i < pg_bench_bulk_messages)
        pg_bench_mailbox_add_file (bench, &bench->bulk, index);
    }
  for (gsize i = 0; large[i] != NULL; i++, index++)
    {
      guint64 mb = g_ascii_strtoull (large[i], NULL, 10);

      if (*large[i] == '\0')
        {
          index--;
          continue;
        }
      if (!pg_bench_pool_add (bench, pool, index, mb * 1024 * 1024, error))
        return FALSE;
      pg_bench_mailbox_add_file (bench, &bench->full, index);
    }
  if (pg_bench_huge_mb > 0)
    {
      if (!pg_bench_pool_add (bench, pool, index, (guint64) pg_bench_huge_mb * 1024 * 1024, error))
        return FALSE;
      pg_bench_mailbox_add_file (bench, &bench->huge, index);
    }
  return pg_bench_mailbox_seed (bench, &bench->full, n_users, error)
         && pg_bench_mailbox_seed (bench, &bench->bulk, n_users, error)
         && (pg_bench_huge_mb == 0 || pg_bench_mailbox_seed (bench, &bench->huge, 1, error));
}

/* --- the three servers ----------------------------------------------------------------- */

/* `max_k`: the most sessions a case opens at once (the largest K or the idle count). */
static gboolean
pg_bench_start_popgate (PgBench *bench, guint max_k, GError **error)
{
  const char *bin = g_getenv ("POPGATE_BIN");
  /* From the largest K, not the idle count alone: with --idle-sessions=0 the limit was 68,
   * and K=1000 failed on "too many sessions" rather than measuring anything. */
  g_autofree gchar *pid_limit = g_strdup_printf ("%u", MAX (max_k, 1) * 4 + 64);
  const char *argv[] = { bin, "--config", NULL, NULL };
  g_autofree gchar *connect_timeout = g_strdup_printf ("%ds", pg_bench_timeout_s);

  bench->popgate = pg_test_popgate_new (bench->upstream, "none", error);
  if (bench->popgate == NULL)
    return FALSE;
  /* Every bench session comes from 127.0.0.1. */
  pg_test_popgate_set (bench->popgate, "limits", "max_sessions", pid_limit);
  pg_test_popgate_set (bench->popgate, "limits", "max_sessions_per_address", pid_limit);
  /* As patient with the upstream as the load generator is with every server. At K=1000 the
   * upstream's greeting can take over 30 s (popgate's default connect timeout): Dovecot's
   * login processes run one per connection and its master starts them one after another,
   * so a burst of 1,000 connects waits in the listen queue. A direct client waits that out;
   * popgate gave up, and those sessions were counted as failures of popgate's paths. */
  pg_test_popgate_set (bench->popgate, "upstream", "connect_timeout", connect_timeout);
  /* The scale run holds its first POP3 sessions while the rest log in: on a busy machine
   * that can take longer than the 10-minute autologout, which would count them as failed. */
  if (pg_bench_scale > 0)
    {
      pg_test_popgate_set (bench->popgate, "pop3", "autologout", "1h");
      pg_test_popgate_set (bench->popgate, "imap", "idle_timeout", "1h");
    }
  if (!pg_test_popgate_write_config (bench->popgate, error))
    return FALSE;
  argv[2] = bench->popgate->config_file;
  /* Started here rather than by pg_test_popgate_start(), which adds -v: the benchmark
   * measures popgate at its default log level. */
  bench->popgate->process = pg_test_process_spawn (argv, bench->popgate->log_file, error);
  if (bench->popgate->process == NULL)
    return FALSE;
  /* Both listeners: the relay probe must not race a slow start (popgate under valgrind). */
  if (!pg_test_wait_port (bench->popgate->host, bench->popgate->pop3_port, bench->popgate->process,
                          PG_BENCH_START_TIMEOUT_MS, error)
      || !pg_test_wait_port (bench->popgate->host, bench->popgate->imap_port,
                             bench->popgate->process, PG_BENCH_START_TIMEOUT_MS, error))
    {
      g_autofree gchar *log = pg_test_popgate_read_log (bench->popgate);
      g_prefix_error (error, "popgate did not start (%s): ", log);
      return FALSE;
    }
  return TRUE;
}

static void
pg_bench_anchor_free (PgBenchAnchor *anchor)
{
  if (anchor == NULL)
    return;
  if (anchor->process != NULL)
    {
      GPid master = pg_test_process_get_pid (anchor->process);
      g_autoptr (GDir) proc = g_dir_open ("/proc", 0, NULL);
      const char *name = NULL;

      /* Its children by PID too: the master alone takes seconds to wind them down. */
      pg_test_process_kill (anchor->process, SIGTERM);
      while (proc != NULL && (name = g_dir_read_name (proc)) != NULL)
        if (atoi (name) > 0 && pg_bench_proc_ppid (name) == master)
          kill ((pid_t) atoi (name), SIGTERM);
      pg_test_process_stop (anchor->process, PG_BENCH_STOP_TIMEOUT_MS);
      g_clear_pointer (&anchor->process, pg_test_process_free);
    }
  pg_test_certs_free (anchor->certs);
  if (anchor->dir != NULL && !pg_bench_keep)
    pg_test_rm_rf (anchor->dir);
  g_free (anchor->dir);
  g_free (anchor->config_file);
  g_free (anchor);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgBenchAnchor, pg_bench_anchor_free)

static gboolean
pg_bench_anchor_pidfile_cb (gpointer user_data)
{
  PgBenchAnchor *anchor = user_data;
  g_autofree gchar *path = g_build_filename (anchor->dir, "run", "master.pid", NULL);
  g_autofree gchar *contents = pg_test_read_file (path);

  return pg_test_process_has_exited (anchor->process)
         || atoi (contents) == (int) pg_test_process_get_pid (anchor->process);
}

/* The anchor: bench/dovecot-imapc-gateway.conf.in as shipped, plus only the limits that
 * let it accept 1,000 sessions (see the README). */
static gboolean
pg_bench_start_anchor (PgBench *bench, GError **error)
{
  g_autoptr (PgBenchAnchor) anchor = g_new0 (PgBenchAnchor, 1);
  g_autofree gchar *template_path
      = g_build_filename (PG_BENCH_SRCDIR, "dovecot-imapc-gateway.conf.in", NULL);
  g_autofree gchar *template = NULL;
  g_autofree gchar *home = NULL;
  g_autofree gchar *log = NULL;
  g_autofree gchar *stderr_file = NULL;
  g_autoptr (GString) config = NULL;
  guint16 ports[4] = { 0, 0, 0, 0 };
  const char *names[] = { "@POP3_PORT@", "@POP3S_PORT@", "@IMAP_PORT@", "@IMAPS_PORT@" };
  g_autofree gchar *upstream_port = g_strdup_printf ("%u", bench->upstream->imap_port);
  const char *argv[] = { "/usr/sbin/dovecot", "-F", "-c", NULL, NULL };

  if (!g_file_get_contents (template_path, &template, NULL, error))
    return FALSE;
  anchor->dir = g_dir_make_tmp ("popgate-bench-anchor-XXXXXX", error);
  if (anchor->dir == NULL)
    return FALSE;
  if (chmod (anchor->dir, 0755) != 0)
    return pg_bench_fail (error, "chmod %s: %s", anchor->dir, g_strerror (errno));
  home = g_build_filename (anchor->dir, "home", NULL);
  log = g_build_filename (anchor->dir, "log", NULL);
  stderr_file = g_build_filename (anchor->dir, "log", "stderr.log", NULL);
  if (!pg_bench_mkdir_nobody (home, error) || g_mkdir (log, 0755) != 0)
    return FALSE;
  anchor->certs = pg_test_certs_new (anchor->dir, error);
  if (anchor->certs == NULL)
    return FALSE;
  config = g_string_new (template);
  for (gsize i = 0; i < G_N_ELEMENTS (ports); i++)
    {
      g_autofree gchar *port = NULL;
      gboolean fresh = FALSE;

      while (!fresh)
        {
          ports[i] = pg_test_free_port ("127.0.0.1", error);
          if (ports[i] == 0)
            return FALSE;
          fresh = ports[i] != bench->upstream->imap_port;
          for (gsize j = 0; j < i; j++)
            fresh = fresh && ports[j] != ports[i];
        }
      port = g_strdup_printf ("%u", ports[i]);
      g_string_replace (config, names[i], port, 0);
    }
  anchor->pop3_port = ports[0];
  g_string_replace (config, "@DIR@", anchor->dir, 0);
  g_string_replace (config, "@UPSTREAM_IMAP_PORT@", upstream_port, 0);
  g_string_append (config,
                   "\n# --- added by popgate-bench: only what it takes to accept 1,000 POP3\n"
                   "# sessions at once (the shipped defaults allow 100 login processes) ---\n"
                   "service pop3-login {\n  process_limit = 1100\n}\n"
                   "service pop3 {\n  process_limit = 1100\n}\n"
                   "service auth {\n  client_limit = 2200\n}\n"
                   "service anvil {\n  client_limit = 2200\n}\n");
  anchor->config_file = g_build_filename (anchor->dir, "dovecot.conf", NULL);
  if (!g_file_set_contents (anchor->config_file, config->str, (gssize) config->len, error))
    return FALSE;
  argv[3] = anchor->config_file;
  anchor->process = pg_test_process_spawn (argv, stderr_file, error);
  if (anchor->process == NULL)
    return FALSE;
  if (!pg_test_wait_until (pg_bench_anchor_pidfile_cb, anchor, PG_BENCH_START_TIMEOUT_MS)
      || pg_test_process_has_exited (anchor->process)
      || !pg_test_wait_port ("127.0.0.1", anchor->pop3_port, anchor->process,
                             PG_BENCH_START_TIMEOUT_MS, error))
    {
      g_autofree gchar *out = pg_test_read_file (stderr_file);
      g_autofree gchar *log_file = g_build_filename (log, "dovecot.log", NULL);
      g_autofree gchar *logged = pg_test_read_file (log_file);

      g_clear_error (error);
      return pg_bench_fail (error, "the anchor Dovecot did not start: %s %s", out, logged);
    }
  bench->anchor = g_steal_pointer (&anchor);
  return TRUE;
}

/* --- running loads --------------------------------------------------------------------- */

/* The load generator's options for K sessions on `path`, spread over the mailbox's users
 * PG_BENCH_SESSIONS_PER_USER at a time. */
static void
pg_bench_load_options (PgBench *bench, PgBenchPath path, const PgBenchMailbox *mailbox, guint k,
                       gboolean idle, PgBenchLoadOptions *options_out)
{
  PgBenchLoadOptions options = { 0 };
  guint n_users = MIN (mailbox->users->len,
                       (k + PG_BENCH_SESSIONS_PER_USER - 1) / PG_BENCH_SESSIONS_PER_USER);

  options.proto = pg_bench_path_is_imap (path) ? PG_BENCH_PROTO_IMAP : PG_BENCH_PROTO_POP3;
  options.host = "127.0.0.1";
  options.pipeline = 1;
  switch (path)
    {
    case PG_BENCH_PATH_POPGATE_PIPELINED:
      options.pipeline = (guint) pg_bench_pipeline;
      G_GNUC_FALLTHROUGH;
    case PG_BENCH_PATH_POPGATE:
      options.port = bench->popgate->pop3_port;
      /* popgate locks a maildrop per (user, client tag), as RFC 1939 asks; Dovecot's POP3
       * does not lock (pop3_lock_session = no). Each session is its own client. */
      options.client_tag_separator = "#";
      break;
    case PG_BENCH_PATH_NATIVE_PIPELINED:
      options.pipeline = (guint) pg_bench_pipeline;
      G_GNUC_FALLTHROUGH;
    case PG_BENCH_PATH_NATIVE:
      options.port = bench->upstream->pop3_port;
      break;
    case PG_BENCH_PATH_ANCHOR:
      options.port = bench->anchor->pop3_port;
      break;
    case PG_BENCH_PATH_DIRECT_EACH:
      options.imap_each = TRUE;
      G_GNUC_FALLTHROUGH;
    case PG_BENCH_PATH_DIRECT:
      options.port = bench->upstream->imap_port;
      break;
    case PG_BENCH_PATH_RELAY_EACH:
      options.imap_each = TRUE;
      G_GNUC_FALLTHROUGH;
    case PG_BENCH_PATH_RELAY:
      options.port = bench->popgate->imap_port;
      break;
    case PG_BENCH_PATH_COUNT:
      g_return_if_reached ();
    }
  options.n_sessions = k;
  options.users = (const char *const *) mailbox->users->pdata;
  options.n_users = MAX (n_users, 1);
  options.password = PG_BENCH_PASSWORD;
  options.idle = idle;
  options.expect_messages = mailbox->messages;
  options.expect_octets = mailbox->octets;
  options.timeout_s = (guint) pg_bench_timeout_s;
  *options_out = options;
}

static PgBenchLoadResult *
pg_bench_run_load (PgBench *bench, PgBenchPath path, const PgBenchMailbox *mailbox, guint k,
                   gboolean idle, PgBenchLoad **out_load)
{
  PgBenchLoadOptions options = { 0 };
  g_autoptr (PgBenchLoad) load = NULL;

  pg_bench_load_options (bench, path, mailbox, k, idle, &options);
  load = pg_bench_load_run (&options);
  if (out_load != NULL)
    {
      *out_load = g_steal_pointer (&load);
      return NULL;
    }
  return pg_bench_load_take_result (load);
}

static GPid
pg_bench_gateway_pid (PgBench *bench, PgBenchPath path)
{
  if (path == PG_BENCH_PATH_POPGATE || path == PG_BENCH_PATH_POPGATE_PIPELINED
      || pg_bench_path_is_relay (path))
    return pg_test_popgate_get_pid (bench->popgate);
  if (path == PG_BENCH_PATH_ANCHOR)
    return pg_test_process_get_pid (bench->anchor->process);
  return 0;
}

/* CPU seconds so far of the gateway on `path` (0 for direct IMAP and native POP3):
 * popgate, or the anchor's whole process tree. */
static gdouble
pg_bench_gateway_cpu_s (PgBench *bench, PgBenchPath path)
{
  GPid gw = pg_bench_gateway_pid (bench, path);

  if (gw <= 0)
    return 0;
  if (path == PG_BENCH_PATH_ANCHOR)
    return pg_bench_tree_cpu_s (gw);
  return pg_bench_proc_cpu_s (gw, FALSE);
}

static void
pg_bench_figures_clear (PgBenchFigures *figures)
{
  g_clear_pointer (&figures->error, g_free);
}

/* Run one case `reps` times and keep the median of each figure. */
static void
pg_bench_case (PgBench *bench, PgBenchPath path, const PgBenchMailbox *mailbox, guint k,
               PgBenchFigures *out)
{
  GArray *v[13] = { NULL };
  GPid upstream = pg_test_dovecot_get_pid (bench->upstream);

  for (gsize i = 0; i < G_N_ELEMENTS (v); i++)
    v[i] = g_array_new (FALSE, FALSE, sizeof (gdouble));
  memset (out, 0, sizeof *out);
  out->ran = TRUE;
  for (gint rep = 0; rep < pg_bench_reps; rep++)
    {
      gdouble gw_cpu0 = pg_bench_gateway_cpu_s (bench, path);
      guint up_n0 = pg_bench_tree_size (upstream);
      gdouble up_cpu0 = pg_bench_tree_cpu_s (upstream);
      g_autoptr (PgBenchLoadResult) r = pg_bench_run_load (bench, path, mailbox, k, FALSE, NULL);
      gdouble fig[13];
      gdouble messages = (gdouble) MAX (r->messages, 1);

      fig[0] = (gdouble) r->messages / r->wall_s;
      fig[1] = (gdouble) r->octets / r->wall_s / 1e6;
      fig[2] = (gdouble) pg_bench_percentile (r->ttfb_us, 50) / 1000;
      fig[3] = (gdouble) pg_bench_percentile (r->ttfb_us, 99) / 1000;
      fig[4] = (gdouble) pg_bench_percentile (r->retr_us, 50) / 1000;
      fig[5] = (gdouble) pg_bench_percentile (r->retr_us, 99) / 1000;
      fig[6] = r->cpu_s / r->wall_s;
      fig[7] = (pg_bench_gateway_cpu_s (bench, path) - gw_cpu0) / r->wall_s;
      pg_bench_wait_tree_settled (upstream, up_n0);
      fig[8] = (pg_bench_tree_cpu_s (upstream) - up_cpu0) / r->wall_s;
      /* The same CPU per message, in µs; and socket reads per message. */
      fig[9] = fig[6] * r->wall_s * 1e6 / messages;
      fig[10] = fig[7] * r->wall_s * 1e6 / messages;
      fig[11] = fig[8] * r->wall_s * 1e6 / messages;
      fig[12] = (gdouble) r->reads / messages;
      for (gsize i = 0; i < G_N_ELEMENTS (v); i++)
        g_array_append_val (v[i], fig[i]);
      out->failed += r->sessions_failed;
      bench->failures += r->sessions_failed;
      if (r->first_error != NULL && out->error == NULL)
        out->error = g_strdup (r->first_error);
      g_print ("  K=%-4u %-38s rep %d: %8.0f msgs/s %8.1f MB/s  %u ok %u failed  "
               "(CPU µs/msg: load gen %.1f, gateway %.1f, upstream %.1f; %.2f reads/msg)%s%s\n",
               k, pg_bench_path_names[path], rep + 1, fig[0], fig[1], r->sessions_ok,
               r->sessions_failed, fig[9], fig[10], fig[11], fig[12],
               r->first_error != NULL ? ": " : "", r->first_error != NULL ? r->first_error : "");
    }
  out->msgs_s = pg_bench_median (v[0]);
  out->mb_s = pg_bench_median (v[1]);
  out->ttfb_p50_ms = pg_bench_median (v[2]);
  out->ttfb_p99_ms = pg_bench_median (v[3]);
  out->retr_p50_ms = pg_bench_median (v[4]);
  out->retr_p99_ms = pg_bench_median (v[5]);
  out->load_cpu = pg_bench_median (v[6]);
  out->gw_cpu = pg_bench_median (v[7]);
  out->upstream_cpu = pg_bench_median (v[8]);
  out->load_us = pg_bench_median (v[9]);
  out->gw_us = pg_bench_median (v[10]);
  out->upstream_us = pg_bench_median (v[11]);
  out->reads = pg_bench_median (v[12]);
  for (gsize i = 0; i < G_N_ELEMENTS (v); i++)
    g_array_unref (v[i]);
}

/* Warm every user once on every path (indexes, caches, page cache); not measured. */
static gboolean
pg_bench_warm (PgBench *bench, const PgBenchMailbox *mailbox, GError **error)
{
  for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
    {
      g_autoptr (PgBenchLoadResult) r = NULL;
      guint k = mailbox->users->len * PG_BENCH_SESSIONS_PER_USER;

      if (!pg_bench_path_enabled[path]
          || (pg_bench_path_is_relay ((PgBenchPath) path) && !bench->relay))
        continue;
      /* One session per user: user i % n_users with n_users = K / 100. */
      r = pg_bench_run_load (bench, (PgBenchPath) path, mailbox, k > 0 ? mailbox->users->len : 1,
                             FALSE, NULL);
      (void) k;
      if (r->sessions_failed > 0)
        return pg_bench_fail (error, "warming %s up (%s mailbox): %s", pg_bench_path_names[path],
                              mailbox->kind, r->first_error);
    }
  return TRUE;
}

/* --- memory cases ---------------------------------------------------------------------- */

typedef struct
{
  GPid pid;
  guint64 max_rss_kb;
} PgBenchSampler;

static gboolean
pg_bench_sample_cb (gpointer user_data)
{
  PgBenchSampler *sampler = user_data;
  guint64 rss = pg_bench_proc_status_kb (sampler->pid, "VmRSS:");

  sampler->max_rss_kb = MAX (sampler->max_rss_kb, rss);
  return G_SOURCE_CONTINUE;
}

/* popgate's peak RSS growth while one client RETRs the huge message, in KiB (median). */
static gdouble
pg_bench_huge (PgBench *bench, guint64 *out_before_kb, gdouble *out_mb_s)
{
  g_autoptr (GArray) growth = g_array_new (FALSE, FALSE, sizeof (gdouble));
  g_autoptr (GArray) speed = g_array_new (FALSE, FALSE, sizeof (gdouble));
  GPid pid = pg_test_popgate_get_pid (bench->popgate);

  for (gint rep = 0; rep < pg_bench_reps; rep++)
    {
      g_autofree gchar *clear_refs = g_strdup_printf ("/proc/%d/clear_refs", (int) pid);
      PgBenchSampler sampler = { pid, 0 };
      guint64 before = pg_bench_proc_status_kb (pid, "VmRSS:");
      guint64 hwm = 0;
      guint source = 0;
      gdouble grew = 0;
      gdouble mb_s = 0;
      g_autoptr (PgBenchLoadResult) r = NULL;

      /* "5" resets VmHWM to the current RSS (Linux ≥ 4.0), so the peak is this run's. */
      g_file_set_contents (clear_refs, "5", 1, NULL);
      source = g_timeout_add (2, pg_bench_sample_cb, &sampler);
      r = pg_bench_run_load (bench, PG_BENCH_PATH_POPGATE, &bench->huge, 1, FALSE, NULL);
      g_source_remove (source);
      hwm = pg_bench_proc_status_kb (pid, "VmHWM:");
      grew = (gdouble) MAX (hwm, sampler.max_rss_kb) - (gdouble) before;
      mb_s = (gdouble) r->octets / r->wall_s / 1e6;
      g_array_append_val (growth, grew);
      g_array_append_val (speed, mb_s);
      bench->failures += r->sessions_failed;
      *out_before_kb = before;
      g_print ("  %d MB RETR rep %d: RSS %" G_GUINT64_FORMAT " KiB before, peak %" G_GUINT64_FORMAT
               " KiB (VmHWM) / %" G_GUINT64_FORMAT " KiB (sampled); %.0f MB/s"
               "%s%s\n",
               pg_bench_huge_mb, rep + 1, before, hwm, sampler.max_rss_kb, mb_s,
               r->first_error != NULL ? "; " : "", r->first_error != NULL ? r->first_error : "");
    }
  *out_mb_s = pg_bench_median (speed);
  return pg_bench_median (growth);
}

typedef struct
{
  guint held;        /* sessions logged in and idle at the measurement */
  guint64 before_kb; /* the gateway's RSS before (sum for Dovecot) */
  guint64 with_kb;   /* with the idle sessions */
  guint64 pss_kb;    /* PSS with the sessions (sum) */
  guint processes;   /* processes summed */
} PgBenchIdle;

static void
pg_bench_idle (PgBench *bench, PgBenchPath path, PgBenchIdle *out)
{
  g_autoptr (PgBenchLoad) load = NULL;
  g_autoptr (PgBenchLoadResult) r = NULL;
  GPid root = path == PG_BENCH_PATH_POPGATE ? pg_test_popgate_get_pid (bench->popgate)
                                            : pg_test_process_get_pid (bench->anchor->process);
  guint64 pss = 0;
  guint n = 0;

  memset (out, 0, sizeof *out);
  if (path == PG_BENCH_PATH_POPGATE)
    out->before_kb = pg_bench_proc_status_kb (root, "VmRSS:");
  else
    pg_bench_tree_memory (root, &out->before_kb, &pss, &n);
  pg_bench_run_load (bench, path, &bench->full, (guint) pg_bench_idle_sessions, TRUE, &load);
  out->held = pg_bench_load_get_n_idle (load);
  if (path == PG_BENCH_PATH_POPGATE)
    {
      out->with_kb = pg_bench_proc_status_kb (root, "VmRSS:");
      out->pss_kb = pg_bench_proc_pss_kb (root);
      out->processes = 1;
    }
  else
    pg_bench_tree_memory (root, &out->with_kb, &out->pss_kb, &out->processes);
  pg_bench_load_release (load);
  r = pg_bench_load_take_result (load);
  bench->failures += r->sessions_failed;
  g_print ("  idle %s: %u/%d sessions held; RSS %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT
           " KiB over %u processes (PSS %" G_GUINT64_FORMAT " KiB)%s%s\n",
           pg_bench_path_names[path], out->held, pg_bench_idle_sessions, out->before_kb,
           out->with_kb, out->processes, out->pss_kb, r->first_error != NULL ? "; " : "",
           r->first_error != NULL ? r->first_error : "");
}

/* --- report ---------------------------------------------------------------------------- */

static gchar *
pg_bench_ratio (gdouble a, gdouble b)
{
  if (b <= 0)
    return g_strdup ("–");
  return g_strdup_printf ("%.2f×", a / b);
}

static void pg_bench_emit (PgBench *bench, const char *format, ...) G_GNUC_PRINTF (2, 3);
static void
pg_bench_emit (PgBench *bench, const char *format, ...)
{
  va_list args;

  va_start (args, format);
  g_string_append_vprintf (bench->report, format, args);
  va_end (args);
}

static gchar *
pg_bench_command_line (int argc, char **argv)
{
  g_autoptr (GString) line = g_string_new ("bash scripts/bench.sh");

  for (int i = 1; i < argc; i++)
    g_string_append_printf (line, " %s", argv[i]);
  return g_string_free (g_steal_pointer (&line), FALSE);
}

/* --- scale: 10,000 authenticated idle sessions (issue 16 item 4) ----------------------- */

/* One measurement of the servers while the scale scenario holds its sessions. */
typedef struct
{
  const char *what;    /* the moment, as the report's column names it */
  guint64 rss_kb;      /* popgate's VmRSS */
  guint64 pss_kb;      /* popgate's PSS */
  guint fds;           /* popgate's open file descriptors */
  gdouble cpu_s;       /* popgate's CPU time so far */
  guint64 up_rss_kb;   /* the upstream Dovecot's VmRSS summed over its processes */
  guint64 up_pss_kb;   /* ...and PSS */
  guint up_processes;  /* how many processes that is */
  gdouble up_cpu_s;    /* its CPU time so far (pg_bench_tree_cpu_s) */
  guint64 self_rss_kb; /* the load generator's VmRSS */
  gdouble self_cpu_s;
} PgBenchScalePoint;

/* One front end's half of the sessions. */
typedef struct
{
  const char *name;  /* "POP3" or "IMAP" */
  PgBenchLoad *load; /* owned: the held sessions */
  guint asked;       /* sessions started */
  guint held;        /* logged in (and selected) */
  gdouble wall_s;    /* first connect → last one holding */
  gdouble login_p50_ms;
  gdouble login_p99_ms;
  guint noop_ok;      /* sessions that answered the final NOOP */
  gdouble noop_s;     /* that round of NOOPs */
  guint failed;       /* sessions that failed at any point, release included */
  gchar *first_error; /* owned */
} PgBenchScaleHalf;

static guint
pg_bench_proc_fd_count (GPid pid)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/fd", (int) pid);
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  guint n = 0;

  while (dir != NULL && g_dir_read_name (dir) != NULL)
    n++;
  return n;
}

static void
pg_bench_scale_measure (PgBench *bench, const char *what, PgBenchScalePoint *out)
{
  GPid popgate = pg_test_popgate_get_pid (bench->popgate);
  GPid upstream = pg_test_dovecot_get_pid (bench->upstream);

  memset (out, 0, sizeof *out);
  out->what = what;
  out->rss_kb = pg_bench_proc_status_kb (popgate, "VmRSS:");
  out->pss_kb = pg_bench_proc_pss_kb (popgate);
  out->fds = pg_bench_proc_fd_count (popgate);
  out->cpu_s = pg_bench_proc_cpu_s (popgate, FALSE);
  pg_bench_tree_memory (upstream, &out->up_rss_kb, &out->up_pss_kb, &out->up_processes);
  out->up_cpu_s = pg_bench_tree_cpu_s (upstream);
  out->self_rss_kb = pg_bench_proc_status_kb (getpid (), "VmRSS:");
  out->self_cpu_s = pg_bench_cpu_seconds ();
  g_print ("  %-28s popgate RSS %" G_GUINT64_FORMAT " KiB, PSS %" G_GUINT64_FORMAT
           " KiB, %u fds; Dovecot RSS %" G_GUINT64_FORMAT " KiB over %u processes; "
           "load generator RSS %" G_GUINT64_FORMAT " KiB\n",
           what, out->rss_kb, out->pss_kb, out->fds, out->up_rss_kb, out->up_processes,
           out->self_rss_kb);
}

/* Open one half's sessions through popgate and leave them holding. */
static void
pg_bench_scale_open (PgBench *bench, PgBenchPath path, const PgBenchMailbox *mailbox,
                     PgBenchScaleHalf *half)
{
  PgBenchLoadOptions options = { 0 };
  const PgBenchLoadResult *r = NULL;

  pg_bench_load_options (bench, path, mailbox, half->asked, TRUE, &options);
  options.idle_selected = TRUE;
  options.max_connecting = (guint) MAX (pg_bench_scale_connecting, 0);
  half->load = pg_bench_load_run (&options);
  /* Still the load's: its figures so far (login times, wall time) without taking it. */
  r = pg_bench_load_peek_result (half->load);
  half->held = pg_bench_load_get_n_idle (half->load);
  half->wall_s = r->wall_s;
  half->login_p50_ms = (gdouble) pg_bench_percentile (r->login_us, 50) / 1000;
  half->login_p99_ms = (gdouble) pg_bench_percentile (r->login_us, 99) / 1000;
  g_print ("  %s: %u/%u sessions held after %.1f s (%.0f sessions/s; login p50 %.1f ms, "
           "p99 %.1f ms)%s%s\n",
           half->name, half->held, half->asked, half->wall_s, half->held / MAX (half->wall_s, 1e-6),
           half->login_p50_ms, half->login_p99_ms,
           r->first_error != NULL ? "; first failure: " : "",
           r->first_error != NULL ? r->first_error : "");
}

static gboolean
pg_bench_scale_hold_cb (gpointer user_data)
{
  g_main_loop_quit (user_data);
  return G_SOURCE_REMOVE;
}

/* Keep every session open for `seconds` with the main loop running, so a session that
 * popgate or the upstream drops meanwhile is seen (and counted) as failed. */
static void
pg_bench_scale_hold (guint seconds)
{
  g_autoptr (GMainLoop) loop = g_main_loop_new (NULL, FALSE);

  if (seconds == 0)
    return;
  g_timeout_add_seconds (seconds, pg_bench_scale_hold_cb, loop);
  g_main_loop_run (loop);
}

/* The upstream's settings for N sessions (bench/data/dovecot-scale.conf). */
static gchar *
pg_bench_scale_dovecot_extra (GError **error)
{
  g_autofree gchar *path = g_build_filename (PG_BENCH_SRCDIR, "data", "dovecot-scale.conf", NULL);
  gchar *contents = NULL;

  if (!g_file_get_contents (path, &contents, NULL, error))
    return NULL;
  return contents;
}

static gchar *
pg_bench_loadavg (void)
{
  g_autofree gchar *contents = NULL;
  g_auto (GStrv) fields = NULL;

  if (!g_file_get_contents ("/proc/loadavg", &contents, NULL, NULL))
    return g_strdup ("?");
  fields = g_strsplit (contents, " ", 4);
  return g_strdup_printf ("%s %s %s", fields[0], fields[1] != NULL ? fields[1] : "",
                          fields[1] != NULL && fields[2] != NULL ? fields[2] : "");
}

/* The scale scenario: N/2 POP3 sessions (USER, PASS, STAT) and N/2 IMAP sessions (LOGIN,
 * SELECT INBOX) through one popgate, all held at once, then a NOOP on each; reports
 * popgate's memory and fds per session, the accept rate and the upstream's memory. */
static void
pg_bench_scale_run (PgBench *bench, const char *command, const char *date)
{
  const PgBenchMailbox *mailbox
      = g_strcmp0 (pg_bench_scale_mailbox, "bulk") == 0 ? &bench->bulk : &bench->full;
  PgBenchScaleHalf halves[2] = { { .name = "POP3" }, { .name = "IMAP" } };
  const PgBenchPath paths[2] = { PG_BENCH_PATH_POPGATE, PG_BENCH_PATH_RELAY };
  PgBenchScalePoint p[6];
  g_autofree gchar *load_before = pg_bench_loadavg ();
  g_autofree gchar *load_after = NULL;
  g_autofree gchar *dovecot_extra = pg_bench_scale_dovecot_extra (NULL);
  guint held = 0;
  guint failed = 0;
  gdouble per_session = 0;
  struct utsname uts;
  struct rlimit nofile = { 0, 0 };

  halves[0].asked = (guint) pg_bench_scale / 2;
  halves[1].asked = (guint) pg_bench_scale - halves[0].asked;

  /* Warm the upstream's indexes: one direct SELECT per user, not measured. */
  {
    PgBenchLoadOptions options = { 0 };
    g_autoptr (PgBenchLoad) warm = NULL;
    g_autoptr (PgBenchLoadResult) r = NULL;

    pg_bench_load_options (bench, PG_BENCH_PATH_DIRECT, mailbox, mailbox->users->len, TRUE,
                           &options);
    options.idle_selected = TRUE;
    options.n_users = mailbox->users->len;
    options.max_connecting = (guint) MAX (pg_bench_scale_connecting, 0);
    warm = pg_bench_load_run (&options);
    pg_bench_load_release (warm);
    r = pg_bench_load_take_result (warm);
    g_print ("popgate-bench: scale: warmed %u users' indexes (%u failed)\n", r->sessions_ok,
             r->sessions_failed);
    bench->failures += r->sessions_failed;
  }

  g_print ("popgate-bench: scale: %u POP3 + %u IMAP sessions, at most %d connecting at once\n",
           halves[0].asked, halves[1].asked, pg_bench_scale_connecting);
  pg_bench_scale_measure (bench, "before", &p[0]);
  pg_bench_scale_open (bench, paths[0], mailbox, &halves[0]);
  pg_bench_scale_measure (bench, "with the POP3 sessions", &p[1]);
  pg_bench_scale_open (bench, paths[1], mailbox, &halves[1]);
  pg_bench_scale_measure (bench, "with all sessions", &p[2]);
  g_print ("  holding them for %d s\n", pg_bench_scale_hold_s);
  pg_bench_scale_hold ((guint) MAX (pg_bench_scale_hold_s, 0));
  pg_bench_scale_measure (bench, "after holding", &p[3]);
  for (gsize i = 0; i < G_N_ELEMENTS (halves); i++)
    {
      gint64 t0 = g_get_monotonic_time ();

      halves[i].noop_ok = pg_bench_load_noop (halves[i].load);
      halves[i].noop_s = (gdouble) (g_get_monotonic_time () - t0) / 1e6;
      g_print ("  %s: %u sessions answered NOOP in %.2f s\n", halves[i].name, halves[i].noop_ok,
               halves[i].noop_s);
    }
  pg_bench_scale_measure (bench, "after the NOOPs", &p[4]);
  for (gsize i = 0; i < G_N_ELEMENTS (halves); i++)
    {
      g_autoptr (PgBenchLoadResult) r = NULL;

      pg_bench_load_release (halves[i].load);
      r = pg_bench_load_take_result (halves[i].load);
      halves[i].failed = r->sessions_failed;
      halves[i].first_error = g_strdup (r->first_error);
      bench->failures += r->sessions_failed;
      held += halves[i].noop_ok;
      failed += r->sessions_failed;
      g_clear_pointer (&halves[i].load, pg_bench_load_free);
    }
  pg_bench_scale_measure (bench, "after QUIT/LOGOUT", &p[5]);
  load_after = pg_bench_loadavg ();
  getrlimit (RLIMIT_NOFILE, &nofile);

  /* The report. */
  uname (&uts);
  per_session
      = ((gdouble) p[2].rss_kb - (gdouble) p[0].rss_kb) / MAX (halves[0].held + halves[1].held, 1);
  pg_bench_emit (bench, "# popgate benchmark: %d authenticated idle sessions\n\n", pg_bench_scale);
  pg_bench_emit (bench,
                 "- Date: %s\n- Machine: %ld cores (%s %s), %s; load average %s before, %s "
                 "after\n- Command: `%s`\n",
                 date, sysconf (_SC_NPROCESSORS_ONLN), uts.sysname, uts.release, uts.machine,
                 load_before, load_after, command);
  pg_bench_emit (
      bench,
      "- Sessions: %u POP3 (CAPA, USER, PASS, STAT: the maildrop snapshot is taken) and %u "
      "IMAP (LOGIN, SELECT INBOX) through one popgate on 127.0.0.1, plain TCP; each of them "
      "is one upstream IMAP session of popgate's on the same Dovecot\n"
      "- Mailbox of every session: \"%s\", %" G_GUINT64_FORMAT " messages, %.1f MB; %u users, "
      "%d sessions per user per front end\n"
      "- Load generator: one thread, one GMainLoop, non-blocking sockets; at most %d sessions "
      "connecting or logging in at once, the next starts when one holds\n"
      "- Held %d s, then one NOOP per session; a session that popgate or the upstream closed, "
      "or that did not answer, counts as failed\n"
      "- RLIMIT_NOFILE %lu (popgate-bench raises it for itself, to 4 × N + 4096 = %d if it "
      "may exceed the hard limit; popgate and Dovecot inherit it). popgate needs 2 × N + 10\n"
      "- Upstream Dovecot: bench/data/dovecot-upstream.conf.in plus "
      "bench/data/dovecot-scale.conf (process reuse: imap and imap-login serve up to 1,000 "
      "clients per process)\n\n",
      halves[0].asked, halves[1].asked, mailbox->kind, mailbox->messages,
      (gdouble) mailbox->octets / 1e6,
      MIN (mailbox->users->len,
           (halves[1].asked + PG_BENCH_SESSIONS_PER_USER - 1) / PG_BENCH_SESSIONS_PER_USER),
      PG_BENCH_SESSIONS_PER_USER, pg_bench_scale_connecting, pg_bench_scale_hold_s,
      (unsigned long) nofile.rlim_cur, pg_bench_scale * 4 + 4096);
  pg_bench_emit (bench,
                 "## Result\n\n"
                 "| figure | value |\n|---|---:|\n"
                 "| sessions held at once | %u of %d |\n"
                 "| sessions that answered the final NOOP | %u |\n"
                 "| failed sessions | %u |\n"
                 "| popgate RSS growth per session, all %u (KiB; target < 32) | %.1f |\n",
                 halves[0].held + halves[1].held, pg_bench_scale, held, failed,
                 halves[0].held + halves[1].held, per_session);
  pg_bench_emit (bench,
                 "| ... per POP3 session (KiB) | %.1f |\n| ... per IMAP session (KiB) | %.1f |\n",
                 ((gdouble) p[1].rss_kb - (gdouble) p[0].rss_kb) / MAX (halves[0].held, 1),
                 ((gdouble) p[2].rss_kb - (gdouble) p[1].rss_kb) / MAX (halves[1].held, 1));
  pg_bench_emit (
      bench,
      "| popgate PSS growth per session (KiB) | %.1f |\n"
      "| popgate fds with all sessions (before: %u) | %u |\n"
      "| Dovecot RSS with all sessions (KiB, sum over %u processes; before %" G_GUINT64_FORMAT
      " over %u) | %" G_GUINT64_FORMAT " |\n"
      "| Dovecot PSS with all sessions (KiB) | %" G_GUINT64_FORMAT " |\n"
      "| Dovecot RSS growth per session (KiB) | %.1f |\n"
      "| load generator RSS with all sessions (KiB) | %" G_GUINT64_FORMAT " |\n",
      ((gdouble) p[2].pss_kb - (gdouble) p[0].pss_kb) / MAX (halves[0].held + halves[1].held, 1),
      p[0].fds, p[2].fds, p[2].up_processes, p[0].up_rss_kb, p[0].up_processes, p[2].up_rss_kb,
      p[2].up_pss_kb,
      ((gdouble) p[2].up_rss_kb - (gdouble) p[0].up_rss_kb)
          / MAX (halves[0].held + halves[1].held, 1),
      p[2].self_rss_kb);
  pg_bench_emit (bench, "\n## Accept rate\n\n"
                        "| front end | sessions held | wall s (first connect → last holding) "
                        "| sessions/s | login p50 / p99 ms | CPU µs per session: popgate · "
                        "Dovecot · load gen | NOOP round s |\n"
                        "|---|---:|---:|---:|---:|---:|---:|\n");
  for (gsize i = 0; i < G_N_ELEMENTS (halves); i++)
    {
      const PgBenchScaleHalf *h = &halves[i];
      gdouble n = MAX (h->held, 1);

      pg_bench_emit (bench, "| %s | %u | %.1f | %.0f | %.1f / %.1f | %.0f · %.0f · %.0f | %.2f |\n",
                     h->name, h->held, h->wall_s, h->held / MAX (h->wall_s, 1e-6), h->login_p50_ms,
                     h->login_p99_ms, (p[i + 1].cpu_s - p[i].cpu_s) * 1e6 / n,
                     (p[i + 1].up_cpu_s - p[i].up_cpu_s) * 1e6 / n,
                     (p[i + 1].self_cpu_s - p[i].self_cpu_s) * 1e6 / n, h->noop_s);
    }
  pg_bench_emit (bench, "\n## Measurements\n\n"
                        "| moment | popgate RSS KiB | popgate PSS KiB | popgate fds | Dovecot "
                        "RSS KiB | Dovecot PSS KiB | Dovecot processes | load gen RSS KiB |\n"
                        "|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (gsize i = 0; i < G_N_ELEMENTS (p); i++)
    pg_bench_emit (bench,
                   "| %s | %" G_GUINT64_FORMAT " | %" G_GUINT64_FORMAT " | %u | %" G_GUINT64_FORMAT
                   " | %" G_GUINT64_FORMAT " | %u | %" G_GUINT64_FORMAT " |\n",
                   p[i].what, p[i].rss_kb, p[i].pss_kb, p[i].fds, p[i].up_rss_kb, p[i].up_pss_kb,
                   p[i].up_processes, p[i].self_rss_kb);
  pg_bench_emit (bench, "\n%u sessions failed in this run.\n", bench->failures);
  for (gsize i = 0; i < G_N_ELEMENTS (halves); i++)
    {
      if (halves[i].first_error != NULL)
        pg_bench_emit (bench, "- %s: %s\n", halves[i].name, halves[i].first_error);
      g_free (halves[i].first_error);
    }
  if (dovecot_extra != NULL)
    pg_bench_emit (bench, "\n## The upstream's scale settings\n\n```\n%s```\n", dovecot_extra);
}

/* --- main ------------------------------------------------------------------------------ */

static gboolean
pg_bench_parse_paths (const char *list, GError **error)
{
  g_auto (GStrv) keys = NULL;

  for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
    pg_bench_path_enabled[path] = list == NULL;
  if (list == NULL)
    return TRUE;
  keys = g_strsplit (list, ",", -1);
  for (gsize i = 0; keys[i] != NULL; i++)
    {
      gboolean known = FALSE;

      for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
        if (strcmp (keys[i], pg_bench_path_keys[path]) == 0)
          known = pg_bench_path_enabled[path] = TRUE;
      if (!known)
        return pg_bench_fail (error, "--paths: unknown path \"%s\"", keys[i]);
    }
  return TRUE;
}

/* Ratio a / b of one figure between two rows of one K, or "–" if either did not run. */
static gchar *
pg_bench_row_ratio (const PgBenchFigures *f, PgBenchPath a, PgBenchPath b, gsize offset)
{
  if (!f[a].ran || !f[b].ran)
    return g_strdup ("–");
  return pg_bench_ratio (G_STRUCT_MEMBER (gdouble, &f[a], offset),
                         G_STRUCT_MEMBER (gdouble, &f[b], offset));
}

/* To the hard limit, and at least to `want` if we may raise that (root: the bench runs as
 * root). 1,000 sessions on each side of a gateway, plus Dovecot's processes, inherit this;
 * the scale run's popgate holds two descriptors per session. */
static void
pg_bench_raise_nofile (rlim_t want)
{
  struct rlimit limit;
  g_autofree gchar *nr_open = NULL;

  if (getrlimit (RLIMIT_NOFILE, &limit) != 0)
    return;
  if (want > limit.rlim_max && g_file_get_contents ("/proc/sys/fs/nr_open", &nr_open, NULL, NULL))
    {
      struct rlimit raised = { 0, 0 };

      raised.rlim_cur = raised.rlim_max = MIN (want, (rlim_t) g_ascii_strtoull (nr_open, NULL, 10));
      if (raised.rlim_max > limit.rlim_max && setrlimit (RLIMIT_NOFILE, &raised) == 0)
        return;
    }
  if (limit.rlim_cur < limit.rlim_max)
    {
      limit.rlim_cur = limit.rlim_max;
      setrlimit (RLIMIT_NOFILE, &limit);
    }
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GOptionContext) context = g_option_context_new ("— popgate benchmark");
  g_autofree gchar *command = pg_bench_command_line (argc, argv);
  g_auto (GStrv) ks = NULL;
  PgBench bench = { 0 };
  guint max_k = 1;
  guint n_users = 1;
  GOptionEntry entries[] = {
    { "smoke", 0, 0, G_OPTION_ARG_NONE, &pg_bench_smoke,
      "A tiny run that only checks the benchmark works (CI)", NULL },
    { "messages", 0, 0, G_OPTION_ARG_INT, &pg_bench_messages, "Small messages (2000)", "N" },
    { "message-kb", 0, 0, G_OPTION_ARG_INT, &pg_bench_message_kb, "Their size (10)", "KB" },
    { "large-mb", 0, 0, G_OPTION_ARG_STRING, &pg_bench_large_mb,
      "Large messages, comma-separated sizes (1,5,20)", "MB,..." },
    { "huge-mb", 0, 0, G_OPTION_ARG_INT, &pg_bench_huge_mb,
      "The message for the RSS-growth case (100; 0 = skip)", "MB" },
    { "k", 0, 0, G_OPTION_ARG_STRING, &pg_bench_ks, "Concurrent sessions (1,8,64,1000)", "K,..." },
    { "bulk-k", 0, 0, G_OPTION_ARG_INT, &pg_bench_bulk_k,
      "From this K on, sessions download the bulk mailbox (64)", "K" },
    { "bulk-messages", 0, 0, G_OPTION_ARG_INT, &pg_bench_bulk_messages,
      "Messages in the bulk mailbox (100)", "N" },
    { "reps", 0, 0, G_OPTION_ARG_INT, &pg_bench_reps, "Repetitions per case (3)", "N" },
    { "pipeline", 0, 0, G_OPTION_ARG_INT, &pg_bench_pipeline,
      "POP3 RETRs in flight when PIPELINING is offered (8)", "N" },
    { "idle-sessions", 0, 0, G_OPTION_ARG_INT, &pg_bench_idle_sessions,
      "Idle sessions for the memory case (1000; 0 = skip)", "N" },
    { "timeout", 0, 0, G_OPTION_ARG_INT, &pg_bench_timeout_s, "Per-load timeout (600)", "S" },
    { "paths", 0, 0, G_OPTION_ARG_STRING, &pg_bench_paths,
      "Rows to run, comma-separated (all): pop3, native, imapc, pop3-pipelined, "
      "native-pipelined, direct-each, relay-each, direct, relay",
      "PATH,..." },
    { "output", 'o', 0, G_OPTION_ARG_FILENAME, &pg_bench_output,
      "Markdown results file (bench/results/RESULTS.md)", "FILE" },
    { "keep", 0, 0, G_OPTION_ARG_NONE, &pg_bench_keep, "Keep the anchor's temp dir", NULL },
    { "scale", 0, 0, G_OPTION_ARG_INT, &pg_bench_scale,
      "Only the scale scenario: N idle sessions held at once, half POP3, half IMAP (0 = off; "
      "issue 16: 10000)",
      "N" },
    { "scale-mailbox", 0, 0, G_OPTION_ARG_STRING, &pg_bench_scale_mailbox,
      "The scale sessions' mailbox: full or bulk (full)", "KIND" },
    { "scale-hold", 0, 0, G_OPTION_ARG_INT, &pg_bench_scale_hold_s,
      "Seconds the scale sessions are held before the NOOPs (30)", "S" },
    { "scale-connecting", 0, 0, G_OPTION_ARG_INT, &pg_bench_scale_connecting,
      "Scale sessions connecting or logging in at once (100; 0 = all at once)", "N" },
    { NULL },
  };
  PgBenchFigures *figures = NULL;
  PgBenchIdle idle[2];
  PgTestDovecotOptions scale_options = { 0 };
  g_autofree gchar *scale_extra = NULL;
  gdouble huge_growth_kb = 0;
  gdouble huge_mb_s = 0;
  guint64 huge_before_kb = 0;
  struct utsname uts;
  g_autoptr (GDateTime) now = g_date_time_new_now_utc ();
  g_autofree gchar *date = g_date_time_format (now, "%Y-%m-%d %H:%M UTC");

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      g_printerr ("popgate-bench: %s\n", error->message);
      return 2;
    }
  if (pg_bench_smoke)
    {
      pg_bench_messages = 20;
      pg_bench_message_kb = 4;
      g_free (pg_bench_large_mb);
      pg_bench_large_mb = g_strdup ("1");
      pg_bench_huge_mb = 2;
      g_free (pg_bench_ks);
      pg_bench_ks = g_strdup ("1,2");
      pg_bench_bulk_k = 2;
      pg_bench_bulk_messages = 5;
      pg_bench_reps = 1;
      pg_bench_idle_sessions = 2;
      pg_bench_timeout_s = MIN (pg_bench_timeout_s, 120);
    }
  if (pg_bench_scale > 0)
    {
      /* Nothing else runs: no downloads, no anchor, no 100 MB message. */
      pg_bench_huge_mb = 0;
      pg_bench_idle_sessions = 0;
      g_free (pg_bench_ks);
      pg_bench_ks = g_strdup ("1");
      if (g_strcmp0 (pg_bench_scale_mailbox, "bulk") != 0
          && g_strcmp0 (pg_bench_scale_mailbox, "full") != 0 && pg_bench_scale_mailbox != NULL)
        {
          g_printerr ("popgate-bench: --scale-mailbox: full or bulk\n");
          return 2;
        }
      if (pg_bench_output == NULL)
        pg_bench_output = g_build_filename (PG_BENCH_SRCDIR, "results", "scale.md", NULL);
    }
  if (pg_bench_large_mb == NULL)
    pg_bench_large_mb = g_strdup ("1,5,20");
  if (pg_bench_ks == NULL)
    pg_bench_ks = g_strdup ("1,8,64,1000");
  if (!pg_bench_parse_paths (pg_bench_paths, &error))
    {
      g_printerr ("popgate-bench: %s\n", error->message);
      return 2;
    }
  if (pg_bench_output == NULL)
    pg_bench_output = g_build_filename (PG_BENCH_SRCDIR, "results", "RESULTS.md", NULL);
  if (g_getenv ("POPGATE_BIN") == NULL)
    g_setenv ("POPGATE_BIN", PG_BENCH_POPGATE_BIN, TRUE);
  /* The Dovecot fixture reads its template from $G_TEST_SRCDIR/data: the bench's copy. */
  g_setenv ("G_TEST_SRCDIR", PG_BENCH_SRCDIR, TRUE);
  /* Scale: popgate's two descriptors per session, and room. */
  pg_bench_raise_nofile ((rlim_t) MAX (pg_bench_scale, 0) * 4 + 4096);
  signal (SIGPIPE, SIG_IGN);

  ks = g_strsplit (pg_bench_ks, ",", -1);
  for (gsize i = 0; ks[i] != NULL; i++)
    max_k = MAX (max_k, (guint) atoi (ks[i]));
  max_k = MAX (max_k, (guint) pg_bench_idle_sessions);
  n_users = (max_k + PG_BENCH_SESSIONS_PER_USER - 1) / PG_BENCH_SESSIONS_PER_USER;
  if (pg_bench_scale > 0)
    {
      /* Each front end's half spread over the same users, 100 sessions each: 200 upstream
       * sessions per user, within mail_max_userip_connections (256). */
      max_k = (guint) pg_bench_scale;
      n_users = ((max_k + 1) / 2 + PG_BENCH_SESSIONS_PER_USER - 1) / PG_BENCH_SESSIONS_PER_USER;
      scale_options.extra = scale_extra = pg_bench_scale_dovecot_extra (&error);
      if (scale_extra == NULL)
        {
          g_printerr ("popgate-bench: %s\n", error->message);
          return 2;
        }
    }
  bench.pool = g_array_new (FALSE, FALSE, sizeof (PgBenchPoolFile));
  bench.report = g_string_new (NULL);

  g_print ("popgate-bench: seeding %d x %d KB + [%s] MB for %u users, starting servers\n",
           pg_bench_messages, pg_bench_message_kb, pg_bench_large_mb, n_users);
  bench.upstream = pg_test_dovecot_new (pg_bench_scale > 0 ? &scale_options : NULL, &error);
  if (bench.upstream == NULL || !pg_bench_seed (&bench, n_users, &error)
      || !pg_test_dovecot_start (bench.upstream, &error)
      || !pg_bench_start_popgate (&bench, max_k, &error)
      || (pg_bench_scale == 0 && !pg_bench_start_anchor (&bench, &error)))
    {
      g_printerr ("popgate-bench: %s\n", error->message);
      bench.failures++;
      goto out;
    }
  /* Relay throughput needs popgate's IMAP front end; until it exists, the listener only
   * answers "not available" and the case is reported as pending. */
  {
    g_autoptr (PgBenchLoad) probe = NULL;

    pg_bench_run_load (&bench, PG_BENCH_PATH_RELAY, &bench.full, 1, TRUE, &probe);
    bench.relay = pg_bench_load_get_n_idle (probe) == 1;
    pg_bench_load_release (probe);
  }
  if (pg_bench_scale > 0)
    {
      if (!bench.relay)
        {
          g_printerr ("popgate-bench: scale: popgate's IMAP front end does not answer\n");
          bench.failures++;
          goto out;
        }
      pg_bench_scale_run (&bench, command, date);
      goto report;
    }
  g_print ("popgate-bench: warming up (relay %s)\n", bench.relay ? "available" : "pending");
  if (!pg_bench_warm (&bench, &bench.full, &error) || !pg_bench_warm (&bench, &bench.bulk, &error))
    {
      g_printerr ("popgate-bench: %s\n", error->message);
      bench.failures++;
      goto out;
    }

  /* Idle sessions first, on a fresh popgate: after the K=1000 downloads its RSS holds
   * freed memory the allocator keeps, which would inflate the per-session figure. */
  if (pg_bench_idle_sessions > 0)
    {
      pg_bench_idle (&bench, PG_BENCH_PATH_POPGATE, &idle[0]);
      pg_bench_idle (&bench, PG_BENCH_PATH_ANCHOR, &idle[1]);
    }

  if (pg_bench_huge_mb > 0)
    huge_growth_kb = pg_bench_huge (&bench, &huge_before_kb, &huge_mb_s);

  figures = g_new0 (PgBenchFigures, g_strv_length (ks) * PG_BENCH_PATH_COUNT);
  for (gsize i = 0; ks[i] != NULL; i++)
    {
      guint k = (guint) atoi (ks[i]);
      const PgBenchMailbox *mailbox = (gint) k >= pg_bench_bulk_k ? &bench.bulk : &bench.full;

      for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
        {
          if (!pg_bench_path_enabled[path]
              || (pg_bench_path_is_relay ((PgBenchPath) path) && !bench.relay))
            continue;
          pg_bench_case (&bench, (PgBenchPath) path, mailbox, k,
                         &figures[i * PG_BENCH_PATH_COUNT + (gsize) path]);
        }
    }

  /* The report. */
  uname (&uts);
  pg_bench_emit (&bench, "# popgate benchmark results\n\n");
  pg_bench_emit (&bench, "- Date: %s\n- Machine: %ld cores (%s %s), %s\n- Command: `%s`\n", date,
                 sysconf (_SC_NPROCESSORS_ONLN), uts.sysname, uts.release, uts.machine, command);
  pg_bench_emit (
      &bench,
      "- Mailbox (K < %d): %" G_GUINT64_FORMAT " messages, %.1f MB (%d × %d KB + [%s] MB)\n"
      "- Mailbox (K ≥ %d): %" G_GUINT64_FORMAT " messages, %.1f MB (the first %d small ones)\n"
      "- Sessions spread over users of identical mailboxes, %d per user; POP3 RETRs one "
      "after the other (as fetchmail, getmail and poplib send them), %d deep in the "
      "pipelined rows; IMAP one UID FETCH per message, or one UID FETCH 1:*\n"
      "- Every figure is the median of %d runs; all paths talk plain TCP on 127.0.0.1 "
      "to the same upstream Dovecot (native POP3 is its own pop3 service on the same "
      "Maildir)\n"
      "- CPU µs per message: utime+stime (/proc/PID/stat; getrusage for the load "
      "generator) over the run, divided by the messages received; gateway = popgate or "
      "the anchor's processes, upstream = the upstream Dovecot's processes\n\n",
      pg_bench_bulk_k, bench.full.messages, (gdouble) bench.full.octets / 1e6, pg_bench_messages,
      pg_bench_message_kb, pg_bench_large_mb, pg_bench_bulk_k, bench.bulk.messages,
      (gdouble) bench.bulk.octets / 1e6, pg_bench_bulk_messages, PG_BENCH_SESSIONS_PER_USER,
      pg_bench_pipeline, pg_bench_reps);
  pg_bench_emit (&bench, "## Full-mailbox download\n\n"
                         "| K | path | msgs/s | MB/s | login→first byte p50 / p99 ms | "
                         "per message p50 / p99 ms | failed sessions | CPU µs per message: "
                         "load gen · gateway · upstream | client reads per message | load gen "
                         "CPU | gateway CPU | upstream Dovecot CPU |\n"
                         "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (gsize i = 0; ks[i] != NULL; i++)
    for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
      {
        PgBenchFigures *f = &figures[i * PG_BENCH_PATH_COUNT + (gsize) path];
        gboolean has_gw = pg_bench_gateway_pid (&bench, (PgBenchPath) path) > 0;
        g_autofree gchar *gw_cpu = NULL;
        g_autofree gchar *gw_us = NULL;

        if (!f->ran)
          {
            if (pg_bench_path_enabled[path] && pg_bench_path_is_relay ((PgBenchPath) path))
              pg_bench_emit (&bench,
                             "| %s | %s | pending: the IMAP front end is not on this "
                             "branch yet | | | | | | | | | |\n",
                             ks[i], pg_bench_path_names[path]);
            continue;
          }
        gw_cpu = has_gw ? g_strdup_printf ("%.0f%%", f->gw_cpu * 100) : g_strdup ("");
        gw_us = has_gw ? g_strdup_printf ("%.1f", f->gw_us) : g_strdup ("–");
        pg_bench_emit (&bench,
                       "| %s | %s | %.0f | %.1f | %.1f / %.1f | %.2f / %.2f | %u | "
                       "%.1f · %s · %.1f | %.2f | %.0f%% | %s | %.0f%% |\n",
                       ks[i], pg_bench_path_names[path], f->msgs_s, f->mb_s, f->ttfb_p50_ms,
                       f->ttfb_p99_ms, f->retr_p50_ms, f->retr_p99_ms, f->failed, f->load_us, gw_us,
                       f->upstream_us, f->reads, f->load_cpu * 100, gw_cpu, f->upstream_cpu * 100);
      }
  pg_bench_emit (&bench,
                 "\n## Ratios (issue 16's targets in the header)\n\n"
                 "| K | POP3 msgs/s popgate / native (≥ 0.9×) | pipelined popgate / native | "
                 "popgate / Dovecot-imapc | load gen CPU per message popgate / native (≤ 1.2×) | "
                 "login→first byte p50 popgate / native (≤ 1.3×) | relay / direct msgs/s, FETCH "
                 "per message (≥ 0.95×) | upstream CPU per message relay / direct, FETCH per "
                 "message (≤ 1.1×) | relay / direct msgs/s, one FETCH 1:* (≥ 0.95×) |\n"
                 "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (gsize i = 0; ks[i] != NULL; i++)
    {
      const PgBenchFigures *f = &figures[i * PG_BENCH_PATH_COUNT];
      gsize msgs = G_STRUCT_OFFSET (PgBenchFigures, msgs_s);
      g_autofree gchar *a
          = pg_bench_row_ratio (f, PG_BENCH_PATH_POPGATE, PG_BENCH_PATH_NATIVE, msgs);
      g_autofree gchar *b = pg_bench_row_ratio (f, PG_BENCH_PATH_POPGATE_PIPELINED,
                                                PG_BENCH_PATH_NATIVE_PIPELINED, msgs);
      g_autofree gchar *c
          = pg_bench_row_ratio (f, PG_BENCH_PATH_POPGATE, PG_BENCH_PATH_ANCHOR, msgs);
      g_autofree gchar *d = pg_bench_row_ratio (f, PG_BENCH_PATH_POPGATE, PG_BENCH_PATH_NATIVE,
                                                G_STRUCT_OFFSET (PgBenchFigures, load_us));
      g_autofree gchar *e = pg_bench_row_ratio (f, PG_BENCH_PATH_POPGATE, PG_BENCH_PATH_NATIVE,
                                                G_STRUCT_OFFSET (PgBenchFigures, ttfb_p50_ms));
      g_autofree gchar *g
          = pg_bench_row_ratio (f, PG_BENCH_PATH_RELAY_EACH, PG_BENCH_PATH_DIRECT_EACH, msgs);
      g_autofree gchar *h
          = pg_bench_row_ratio (f, PG_BENCH_PATH_RELAY_EACH, PG_BENCH_PATH_DIRECT_EACH,
                                G_STRUCT_OFFSET (PgBenchFigures, upstream_us));
      g_autofree gchar *j = pg_bench_row_ratio (f, PG_BENCH_PATH_RELAY, PG_BENCH_PATH_DIRECT, msgs);

      pg_bench_emit (&bench, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", ks[i], a, b, c, d,
                     e, g, h, j);
    }
  pg_bench_emit (
      &bench, "\n## Memory\n\n| case | popgate | Dovecot-imapc | ratio |\n|---|---:|---:|---:|\n");
  if (pg_bench_idle_sessions > 0)
    {
      g_autofree gchar *ratio
          = pg_bench_ratio ((gdouble) idle[0].with_kb, (gdouble) idle[1].with_kb);
      g_autofree gchar *pss_ratio
          = pg_bench_ratio ((gdouble) idle[0].pss_kb, (gdouble) idle[1].pss_kb);

      pg_bench_emit (
          &bench,
          "| %d authenticated idle sessions held | %u | %u | |\n"
          "| RSS with them (KiB; Dovecot: sum over %u processes) | %" G_GUINT64_FORMAT
          " | %" G_GUINT64_FORMAT " | %s |\n"
          "| PSS with them (KiB) | %" G_GUINT64_FORMAT " | %" G_GUINT64_FORMAT " | %s |\n"
          "| RSS before them (KiB) | %" G_GUINT64_FORMAT " | %" G_GUINT64_FORMAT " | |\n"
          "| growth per session (KiB) | %.1f | %.1f | |\n",
          pg_bench_idle_sessions, idle[0].held, idle[1].held, idle[1].processes, idle[0].with_kb,
          idle[1].with_kb, ratio, idle[0].pss_kb, idle[1].pss_kb, pss_ratio, idle[0].before_kb,
          idle[1].before_kb,
          ((gdouble) idle[0].with_kb - (gdouble) idle[0].before_kb) / MAX (idle[0].held, 1),
          ((gdouble) idle[1].with_kb - (gdouble) idle[1].before_kb) / MAX (idle[1].held, 1));
    }
  if (pg_bench_huge_mb > 0)
    pg_bench_emit (&bench,
                   "| peak RSS growth while one client RETRs a %d MB message (KiB; VmHWM "
                   "after reset vs RSS before %" G_GUINT64_FORMAT " KiB) | %.0f | | |\n"
                   "| that RETR's speed (MB/s) | %.0f | | |\n",
                   pg_bench_huge_mb, huge_before_kb, huge_growth_kb, huge_mb_s);
  pg_bench_emit (&bench, "\n%u sessions failed in this run.\n", bench.failures);
  for (gsize i = 0; figures != NULL && ks[i] != NULL; i++)
    for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
      if (figures[i * PG_BENCH_PATH_COUNT + (gsize) path].error != NULL)
        pg_bench_emit (&bench, "- K=%s %s: %s\n", ks[i], pg_bench_path_names[path],
                       figures[i * PG_BENCH_PATH_COUNT + (gsize) path].error);

report:
  /* Raw bytes: the report is UTF-8 whatever the locale says. */
  fputs ("\n", stdout);
  fwrite (bench.report->str, 1, bench.report->len, stdout);
  if (!g_file_set_contents (pg_bench_output, bench.report->str, (gssize) bench.report->len, &error))
    {
      g_printerr ("popgate-bench: %s\n", error->message);
      bench.failures++;
    }
  else
    g_print ("\nwritten to %s\n", pg_bench_output);

out:
  if (g_getenv ("PG_BENCH_DEBUG_PAUSE") != NULL)
    g_usleep ((gulong) atoi (g_getenv ("PG_BENCH_DEBUG_PAUSE")) * G_USEC_PER_SEC);
  for (gsize i = 0; figures != NULL && ks[i] != NULL; i++)
    for (int path = 0; path < PG_BENCH_PATH_COUNT; path++)
      pg_bench_figures_clear (&figures[i * PG_BENCH_PATH_COUNT + (gsize) path]);
  g_free (figures);
  g_clear_pointer (&bench.anchor, pg_bench_anchor_free);
  g_clear_pointer (&bench.popgate, pg_test_popgate_free);
  g_clear_pointer (&bench.upstream, pg_test_dovecot_free);
  for (guint i = 0; i < bench.pool->len; i++)
    g_free (g_array_index (bench.pool, PgBenchPoolFile, i).path);
  g_array_unref (bench.pool);
  pg_bench_mailbox_clear (&bench.full);
  pg_bench_mailbox_clear (&bench.bulk);
  pg_bench_mailbox_clear (&bench.huge);
  g_string_free (bench.report, TRUE);
  g_free (pg_bench_large_mb);
  g_free (pg_bench_ks);
  g_free (pg_bench_paths);
  g_free (pg_bench_output);
  g_free (pg_bench_scale_mailbox);
  return bench.failures == 0 ? 0 : 1;
}
