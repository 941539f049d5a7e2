/* popgate benchmark — the load generator (see pg-bench-load.h).
 *
 * Latency definitions, the same for every path:
 *  - ttfb: from the start of connect() to the first byte of the first message body
 *    (so it covers greeting, login, STAT/UIDL or SELECT and the first fetch).
 *  - per-message: from the moment the server could start on this message — the later of
 *    "its RETR was sent" and "the previous message ended" — to its last byte. With
 *    pipelining (or IMAP's one FETCH for all messages) that is the message's service time,
 *    not its queueing time.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-bench-load.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* One read's worth: big enough that a 10 KB message usually arrives in one read. */
#define PG_BENCH_READ_BUFFER 32768
/* Status and response lines; message lines are scanned without being kept. The longest is
 * IMAP's `* SEARCH` of every UID (about 6 octets a message: 40,000 messages fit). */
#define PG_BENCH_MAX_LINE (256 * 1024)

typedef enum
{
  PG_BENCH_STATE_CONNECT,
  PG_BENCH_STATE_GREETING,
  PG_BENCH_STATE_CAPA,  /* POP3 */
  PG_BENCH_STATE_USER,  /* POP3 */
  PG_BENCH_STATE_LOGIN, /* POP3 PASS / IMAP LOGIN */
  PG_BENCH_STATE_IDLE,
  PG_BENCH_STATE_NOOP,   /* idle: a NOOP (pg_bench_load_noop) waits for its reply */
  PG_BENCH_STATE_STAT,   /* POP3 STAT / IMAP SELECT */
  PG_BENCH_STATE_SEARCH, /* IMAP, imap_each: UID SEARCH ALL */
  PG_BENCH_STATE_UIDL,   /* POP3 */
  PG_BENCH_STATE_FETCH,  /* POP3 RETRs / IMAP UID FETCH */
  PG_BENCH_STATE_QUIT,
  PG_BENCH_STATE_DONE,
  PG_BENCH_STATE_FAILED,
} PgBenchState;

/* POP3 multi-line data scanner (RETR bodies). */
typedef enum
{
  PG_BENCH_SCAN_LINE_START,
  PG_BENCH_SCAN_MID_LINE,
  PG_BENCH_SCAN_DOT,
  PG_BENCH_SCAN_DOT_CR,
} PgBenchScan;

typedef struct
{
  PgBenchLoad *load; /* unowned */
  guint index;
  const char *user;          /* unowned */
  gchar *login;              /* owned: the POP3 login name (user, maybe with a client tag) */
  GSocketConnection *conn;   /* owned */
  GCancellable *cancellable; /* owned */
  guint ops;                 /* async operations in flight (connect, read, write) */
  PgBenchState state;
  gboolean connecting; /* started, neither holding nor done yet (max_connecting) */
  gboolean held;       /* has been holding once (login_us recorded) */
  guint8 *buf;         /* owned: PG_BENCH_READ_BUFFER */
  GString *line;       /* owned: the response line being assembled */
  GString *outq;       /* owned: commands waiting for the current write */
  GString *writing;    /* owned: the buffer of the write in flight */
  gboolean in_data;    /* inside a multi-line response (POP3) */
  PgBenchScan scan;
  guint64 literal_left; /* IMAP: octets of the current literal still to come */
  guint64 literal_size;
  gboolean pipelining;
  guint64 n_messages; /* from STAT / EXISTS */
  guint64 n_octets;   /* from STAT (POP3) */
  guint64 uidl_lines;
  guint64 next_retr; /* POP3: next message number to send RETR for (1-based) */
  guint64 retr_done;
  GArray *sent_at; /* owned: gint64 per message, when its RETR went out */
  guint64 msg_octets;
  gint64 t_start;
  gint64 t_prev_end;
  gint64 now; /* of the read being processed */
  gboolean have_ttfb;
  guint64 got_messages;
  guint64 got_octets;
  guint tag;            /* IMAP command tag counter */
  GArray *uids;         /* owned, imap_each: guint64 UIDs from UID SEARCH ALL */
  guint next_uid;       /* imap_each: index into uids of the next UID FETCH */
  gint64 fetch_sent_at; /* imap_each: when the current UID FETCH went out */
} PgBenchSession;

struct _PgBenchLoad
{
  PgBenchLoadOptions options;
  GSocketClient *client;    /* owned */
  GSocketAddress *address;  /* owned */
  PgBenchSession *sessions; /* owned: n_sessions */
  GMainLoop *loop;          /* owned */
  guint n_pending;          /* sessions neither terminal nor holding idle */
  guint n_idle;
  guint next_start;   /* the next session to connect */
  guint n_connecting; /* sessions with connecting set */
  guint timeout_id;
  gint64 t_start;
  gint64 t_end;
  gdouble cpu_start;
  PgBenchLoadResult *result; /* owned */
};

static void pg_bench_session_read (PgBenchSession *session);
static void pg_bench_load_start_more (PgBenchLoad *load);
static void pg_bench_session_flush (PgBenchSession *session);

gdouble
pg_bench_cpu_seconds (void)
{
  struct rusage usage;

  getrusage (RUSAGE_SELF, &usage);
  return (gdouble) usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6
         + (gdouble) usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

void
pg_bench_load_result_free (PgBenchLoadResult *result)
{
  if (result == NULL)
    return;
  g_clear_pointer (&result->ttfb_us, g_array_unref);
  g_clear_pointer (&result->retr_us, g_array_unref);
  g_clear_pointer (&result->login_us, g_array_unref);
  g_free (result->first_error);
  g_free (result);
}

static gint
pg_bench_compare_int64 (gconstpointer a, gconstpointer b)
{
  gint64 x = *(const gint64 *) a;
  gint64 y = *(const gint64 *) b;

  return x < y ? -1 : x > y ? 1 : 0;
}

gint64
pg_bench_percentile (GArray *values, gdouble p)
{
  gsize index = 0;

  if (values == NULL || values->len == 0)
    return 0;
  g_array_sort (values, pg_bench_compare_int64);
  index = (gsize) (p / 100.0 * (values->len - 1) + 0.5);
  return g_array_index (values, gint64, MIN (index, values->len - 1));
}

/* `session` got to a point the load waits for: holding, done or failed. */
static void
pg_bench_load_session_ended (PgBenchSession *session)
{
  PgBenchLoad *load = session->load;

  if (session->connecting)
    {
      session->connecting = FALSE;
      load->n_connecting--;
      pg_bench_load_start_more (load);
    }
  g_assert_cmpuint (load->n_pending, >, 0);
  if (--load->n_pending == 0)
    {
      load->t_end = g_get_monotonic_time ();
      g_main_loop_quit (load->loop);
    }
}

/* Drop the connection once nothing is in flight on it any more. */
static void
pg_bench_session_maybe_close (PgBenchSession *session)
{
  if (session->ops == 0
      && (session->state == PG_BENCH_STATE_DONE || session->state == PG_BENCH_STATE_FAILED))
    g_clear_object (&session->conn);
}

static void G_GNUC_PRINTF (2, 3)
    pg_bench_session_fail (PgBenchSession *session, const char *format, ...)
{
  PgBenchLoad *load = session->load;
  gboolean was_idle = session->state == PG_BENCH_STATE_IDLE;
  va_list args;

  if (session->state == PG_BENCH_STATE_DONE || session->state == PG_BENCH_STATE_FAILED)
    return;
  if (load->result->first_error == NULL)
    {
      g_autofree gchar *what = NULL;

      va_start (args, format);
      what = g_strdup_vprintf (format, args);
      va_end (args);
      load->result->first_error = g_strdup_printf ("session %u (%s, state %d): %s", session->index,
                                                   session->user, (int) session->state, what);
    }
  session->state = PG_BENCH_STATE_FAILED;
  load->result->sessions_failed++;
  g_cancellable_cancel (session->cancellable);
  if (was_idle)
    load->n_idle--;
  else
    pg_bench_load_session_ended (session);
  pg_bench_session_maybe_close (session);
}

static void
pg_bench_session_done (PgBenchSession *session)
{
  PgBenchLoad *load = session->load;
  const PgBenchLoadOptions *options = &load->options;

  if (!options->idle && options->expect_messages != 0
      && session->got_messages != options->expect_messages)
    {
      pg_bench_session_fail (session,
                             "got %" G_GUINT64_FORMAT " messages, expected %" G_GUINT64_FORMAT,
                             session->got_messages, options->expect_messages);
      return;
    }
  if (!options->idle && options->expect_octets != 0
      && session->got_octets != options->expect_octets)
    {
      pg_bench_session_fail (session,
                             "got %" G_GUINT64_FORMAT " octets, expected %" G_GUINT64_FORMAT,
                             session->got_octets, options->expect_octets);
      return;
    }
  session->state = PG_BENCH_STATE_DONE;
  load->result->sessions_ok++;
  load->result->messages += session->got_messages;
  load->result->octets += session->got_octets;
  pg_bench_load_session_ended (session);
  pg_bench_session_maybe_close (session);
}

static void
pg_bench_session_write_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgBenchSession *session = user_data;
  g_autoptr (GError) error = NULL;

  session->ops--;
  if (!g_output_stream_write_all_finish (G_OUTPUT_STREAM (source), result, NULL, &error))
    {
      pg_bench_session_fail (session, "write: %s", error->message);
      pg_bench_session_maybe_close (session);
      return;
    }
  g_string_truncate (session->writing, 0);
  if (session->state == PG_BENCH_STATE_DONE || session->state == PG_BENCH_STATE_FAILED)
    {
      pg_bench_session_maybe_close (session);
      return;
    }
  pg_bench_session_flush (session);
}

static void
pg_bench_session_flush (PgBenchSession *session)
{
  GString *swap = NULL;

  if (session->writing->len > 0 || session->outq->len == 0 || session->conn == NULL)
    return;
  swap = session->writing;
  session->writing = session->outq;
  session->outq = swap;
  session->ops++;
  g_output_stream_write_all_async (g_io_stream_get_output_stream (G_IO_STREAM (session->conn)),
                                   session->writing->str, session->writing->len, G_PRIORITY_DEFAULT,
                                   session->cancellable, pg_bench_session_write_cb, session);
}

static void G_GNUC_PRINTF (2, 3)
    pg_bench_session_send (PgBenchSession *session, const char *format, ...)
{
  va_list args;

  va_start (args, format);
  g_string_append_vprintf (session->outq, format, args);
  va_end (args);
  g_string_append (session->outq, "\r\n");
  pg_bench_session_flush (session);
}

static void
pg_bench_session_first_byte (PgBenchSession *session)
{
  gint64 ttfb = 0;

  if (session->have_ttfb)
    return;
  session->have_ttfb = TRUE;
  ttfb = session->now - session->t_start;
  g_array_append_val (session->load->result->ttfb_us, ttfb);
}

static void
pg_bench_session_message_done (PgBenchSession *session, guint64 octets, gint64 ready_at)
{
  gint64 latency = session->now - MAX (ready_at, session->t_prev_end);

  g_array_append_val (session->load->result->retr_us, latency);
  session->t_prev_end = session->now;
  session->got_messages++;
  session->got_octets += octets;
}

/* Idle mode: logged in (and selected), or a NOOP answered: hold. */
static void
pg_bench_session_hold (PgBenchSession *session)
{
  PgBenchLoad *load = session->load;

  if (!session->held)
    {
      gint64 login = g_get_monotonic_time () - session->t_start;

      session->held = TRUE;
      g_array_append_val (load->result->login_us, login);
    }
  session->state = PG_BENCH_STATE_IDLE;
  load->n_idle++;
  pg_bench_load_session_ended (session);
}

/* --- POP3 ----------------------------------------------------------------------------- */

static void
pg_bench_pop3_pump (PgBenchSession *session)
{
  guint window = session->pipelining ? MAX (session->load->options.pipeline, 1) : 1;

  while (session->next_retr <= session->n_messages
         && session->next_retr - 1 - session->retr_done < window)
    {
      g_array_index (session->sent_at, gint64, session->next_retr - 1) = g_get_monotonic_time ();
      g_string_append_printf (session->outq, "RETR %" G_GUINT64_FORMAT "\r\n", session->next_retr);
      session->next_retr++;
    }
  pg_bench_session_flush (session);
}

static void
pg_bench_pop3_quit (PgBenchSession *session)
{
  session->state = PG_BENCH_STATE_QUIT;
  pg_bench_session_send (session, "QUIT");
}

static void
pg_bench_pop3_retr_done (PgBenchSession *session)
{
  gint64 sent = g_array_index (session->sent_at, gint64, session->retr_done);

  pg_bench_session_message_done (session, session->msg_octets, sent);
  session->retr_done++;
  session->in_data = FALSE;
  if (session->retr_done == session->n_messages)
    pg_bench_pop3_quit (session);
  else
    pg_bench_pop3_pump (session);
}

static void
pg_bench_pop3_start_fetch (PgBenchSession *session)
{
  session->state = PG_BENCH_STATE_FETCH;
  if (session->n_messages == 0)
    {
      pg_bench_pop3_quit (session);
      return;
    }
  g_array_set_size (session->sent_at, (guint) session->n_messages);
  session->next_retr = 1;
  session->t_prev_end = 0;
  pg_bench_pop3_pump (session);
}

/* A complete line (with its CRLF) while not scanning a RETR body. */
static void
pg_bench_pop3_line (PgBenchSession *session, const char *line, gsize len)
{
  PgBenchLoad *load = session->load;
  gboolean ok = g_str_has_prefix (line, "+OK");

  if (session->in_data)
    {
      /* CAPA or UIDL data lines */
      if (strcmp (line, ".\r\n") == 0)
        {
          session->in_data = FALSE;
          if (session->state == PG_BENCH_STATE_CAPA)
            {
              session->state = PG_BENCH_STATE_USER;
              pg_bench_session_send (session, "USER %s", session->login);
            }
          else if (session->uidl_lines != session->n_messages)
            pg_bench_session_fail (
                session, "UIDL listed %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " messages",
                session->uidl_lines, session->n_messages);
          else
            pg_bench_pop3_start_fetch (session);
        }
      else if (session->state == PG_BENCH_STATE_CAPA)
        {
          if (g_ascii_strncasecmp (line, "PIPELINING", 10) == 0)
            session->pipelining = TRUE;
        }
      else
        session->uidl_lines++;
      return;
    }

  if (!ok && session->state != PG_BENCH_STATE_IDLE)
    {
      g_autofree gchar *shown = g_strndup (line, MIN (len, 200));
      g_strchomp (shown);
      pg_bench_session_fail (session, "server said: %s", shown);
      return;
    }
  switch (session->state)
    {
    case PG_BENCH_STATE_GREETING:
      session->state = PG_BENCH_STATE_CAPA;
      pg_bench_session_send (session, "CAPA");
      break;
    case PG_BENCH_STATE_CAPA:
      session->in_data = TRUE;
      break;
    case PG_BENCH_STATE_USER:
      session->state = PG_BENCH_STATE_LOGIN;
      pg_bench_session_send (session, "PASS %s", load->options.password);
      break;
    case PG_BENCH_STATE_LOGIN:
      if (load->options.idle && !load->options.idle_selected)
        {
          pg_bench_session_hold (session);
          break;
        }
      session->state = PG_BENCH_STATE_STAT;
      pg_bench_session_send (session, "STAT");
      break;
    case PG_BENCH_STATE_STAT:
      {
        guint64 n = 0;
        guint64 octets = 0;

        if (sscanf (line, "+OK %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT, &n, &octets) != 2)
          {
            pg_bench_session_fail (session, "bad STAT reply");
            return;
          }
        if ((load->options.expect_messages != 0 && n != load->options.expect_messages)
            || (load->options.expect_octets != 0 && octets != load->options.expect_octets))
          {
            pg_bench_session_fail (session,
                                   "STAT %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT
                                   ", expected %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT,
                                   n, octets, load->options.expect_messages,
                                   load->options.expect_octets);
            return;
          }
        session->n_messages = n;
        session->n_octets = octets;
        if (load->options.idle)
          {
            pg_bench_session_hold (session);
            break;
          }
        session->state = PG_BENCH_STATE_UIDL;
        pg_bench_session_send (session, "UIDL");
        break;
      }
    case PG_BENCH_STATE_UIDL:
      session->in_data = TRUE;
      session->uidl_lines = 0;
      break;
    case PG_BENCH_STATE_FETCH:
      /* +OK of the next RETR: its body follows. */
      session->in_data = TRUE;
      session->scan = PG_BENCH_SCAN_LINE_START;
      session->msg_octets = 0;
      break;
    case PG_BENCH_STATE_QUIT:
      /* Idle sessions held after STAT and fetched nothing. */
      if (!load->options.idle && session->got_octets != session->n_octets)
        pg_bench_session_fail (
            session, "RETR bodies held %" G_GUINT64_FORMAT " octets, STAT said %" G_GUINT64_FORMAT,
            session->got_octets, session->n_octets);
      else
        pg_bench_session_done (session);
      break;
    case PG_BENCH_STATE_NOOP:
      pg_bench_session_hold (session);
      break;
    case PG_BENCH_STATE_IDLE:
      break;
    case PG_BENCH_STATE_CONNECT:
    case PG_BENCH_STATE_SEARCH:
    case PG_BENCH_STATE_DONE:
    case PG_BENCH_STATE_FAILED:
      pg_bench_session_fail (session, "unexpected reply");
      break;
    }
}

/* Scan a RETR body: count octets without the stuffing dots, stop at the final ".".
 * Returns how much of data was consumed; session->in_data turns FALSE at the end. */
static gsize
pg_bench_pop3_scan (PgBenchSession *session, const guint8 *data, gsize len)
{
  gsize i = 0;

  pg_bench_session_first_byte (session);
  while (i < len)
    {
      switch (session->scan)
        {
        case PG_BENCH_SCAN_LINE_START:
          if (data[i] == '.')
            {
              session->scan = PG_BENCH_SCAN_DOT;
              i++;
            }
          else
            session->scan = PG_BENCH_SCAN_MID_LINE;
          break;
        case PG_BENCH_SCAN_MID_LINE:
          {
            const guint8 *nl = memchr (data + i, '\n', len - i);

            if (nl == NULL)
              {
                session->msg_octets += len - i;
                i = len;
              }
            else
              {
                session->msg_octets += (gsize) (nl - (data + i)) + 1;
                i = (gsize) (nl - data) + 1;
                session->scan = PG_BENCH_SCAN_LINE_START;
              }
            break;
          }
        case PG_BENCH_SCAN_DOT:
          /* The dot was stuffing unless CRLF follows. */
          if (data[i] == '\r')
            {
              session->scan = PG_BENCH_SCAN_DOT_CR;
              i++;
            }
          else
            session->scan = PG_BENCH_SCAN_MID_LINE;
          break;
        case PG_BENCH_SCAN_DOT_CR:
          if (data[i] == '\n')
            {
              pg_bench_pop3_retr_done (session);
              return i + 1;
            }
          session->msg_octets++; /* the CR */
          session->scan = PG_BENCH_SCAN_MID_LINE;
          break;
        }
    }
  return i;
}

/* --- IMAP ----------------------------------------------------------------------------- */

static void G_GNUC_PRINTF (2, 3)
    pg_bench_imap_command (PgBenchSession *session, const char *format, ...)
{
  g_autofree gchar *command = NULL;
  va_list args;

  va_start (args, format);
  command = g_strdup_vprintf (format, args);
  va_end (args);
  session->tag++;
  pg_bench_session_send (session, "a%u %s", session->tag, command);
}

/* imap_each: the next UID FETCH, or LOGOUT after the last one. */
static void
pg_bench_imap_fetch_next (PgBenchSession *session)
{
  if (session->next_uid >= session->uids->len)
    {
      session->state = PG_BENCH_STATE_QUIT;
      pg_bench_imap_command (session, "LOGOUT");
      return;
    }
  session->fetch_sent_at = g_get_monotonic_time ();
  pg_bench_imap_command (session, "UID FETCH %" G_GUINT64_FORMAT " BODY.PEEK[]",
                         g_array_index (session->uids, guint64, session->next_uid));
  session->next_uid++;
}

/* `* SEARCH 1 2 3 …`: the mailbox's UIDs, in order. */
static void
pg_bench_imap_search_line (PgBenchSession *session, const char *line)
{
  const char *p = line + strlen ("* SEARCH");

  while (*p == ' ')
    {
      gchar *end = NULL;
      guint64 uid = g_ascii_strtoull (p + 1, &end, 10);

      if (end == p + 1)
        break;
      g_array_append_val (session->uids, uid);
      p = end;
    }
}

/* When the server could start on the literal being read (see the top of the file). */
static gint64
pg_bench_imap_ready_at (PgBenchSession *session)
{
  return session->load->options.imap_each ? session->fetch_sent_at : session->t_prev_end;
}

static void
pg_bench_imap_line (PgBenchSession *session, const char *line, gsize len)
{
  PgBenchLoad *load = session->load;
  g_autofree gchar *tag = g_strdup_printf ("a%u ", session->tag);
  const char *brace = NULL;

  if (session->state == PG_BENCH_STATE_GREETING)
    {
      if (!g_str_has_prefix (line, "* OK"))
        {
          g_autofree gchar *shown = g_strndup (line, MIN (len, 200));
          pg_bench_session_fail (session, "greeting: %s", g_strchomp (shown));
          return;
        }
      session->state = PG_BENCH_STATE_LOGIN;
      pg_bench_imap_command (session, "LOGIN \"%s\" \"%s\"", session->user, load->options.password);
      return;
    }
  if (line[0] == '*')
    {
      guint64 n = 0;

      /* sscanf alone would also take "* 0 RECENT": its count ignores the literal tail. */
      if (session->state == PG_BENCH_STATE_STAT && g_str_has_suffix (line, " EXISTS\r\n")
          && sscanf (line, "* %" G_GUINT64_FORMAT " EXISTS", &n) == 1)
        session->n_messages = n;
      if (session->state == PG_BENCH_STATE_SEARCH && g_str_has_prefix (line, "* SEARCH"))
        pg_bench_imap_search_line (session, line);
      /* A FETCH response line ends with the literal's announcement: {N}CRLF. */
      if (session->state == PG_BENCH_STATE_FETCH && len >= 4
          && strcmp (line + len - 3, "}\r\n") == 0 && (brace = strrchr (line, '{')) != NULL)
        {
          session->literal_size = g_ascii_strtoull (brace + 1, NULL, 10);
          session->literal_left = session->literal_size;
          pg_bench_session_first_byte (session);
          if (session->literal_left == 0)
            pg_bench_session_message_done (session, 0, pg_bench_imap_ready_at (session));
        }
      return;
    }
  if (!g_str_has_prefix (line, tag))
    return; /* the rest of a FETCH line after its literal, or noise */
  if (strncmp (line + strlen (tag), "OK", 2) != 0)
    {
      g_autofree gchar *shown = g_strndup (line, MIN (len, 200));
      pg_bench_session_fail (session, "server said: %s", g_strchomp (shown));
      return;
    }
  switch (session->state)
    {
    case PG_BENCH_STATE_LOGIN:
      if (load->options.idle && !load->options.idle_selected)
        {
          pg_bench_session_hold (session);
          break;
        }
      session->state = PG_BENCH_STATE_STAT;
      pg_bench_imap_command (session, "SELECT INBOX");
      break;
    case PG_BENCH_STATE_STAT:
      if (load->options.expect_messages != 0
          && session->n_messages != load->options.expect_messages)
        {
          pg_bench_session_fail (session,
                                 "EXISTS %" G_GUINT64_FORMAT ", expected %" G_GUINT64_FORMAT,
                                 session->n_messages, load->options.expect_messages);
          return;
        }
      if (load->options.idle)
        {
          pg_bench_session_hold (session);
          break;
        }
      session->t_prev_end = g_get_monotonic_time ();
      if (load->options.imap_each)
        {
          session->state = PG_BENCH_STATE_SEARCH;
          g_array_set_size (session->uids, 0);
          pg_bench_imap_command (session, "UID SEARCH ALL");
          break;
        }
      session->state = PG_BENCH_STATE_FETCH;
      pg_bench_imap_command (session, "UID FETCH 1:* BODY.PEEK[]");
      break;
    case PG_BENCH_STATE_SEARCH:
      if (session->uids->len != session->n_messages)
        {
          pg_bench_session_fail (session, "SEARCH found %u UIDs, EXISTS said %" G_GUINT64_FORMAT,
                                 session->uids->len, session->n_messages);
          return;
        }
      session->state = PG_BENCH_STATE_FETCH;
      session->next_uid = 0;
      pg_bench_imap_fetch_next (session);
      break;
    case PG_BENCH_STATE_FETCH:
      if (load->options.imap_each)
        {
          if (session->got_messages != session->next_uid)
            {
              pg_bench_session_fail (session, "UID FETCH %" G_GUINT64_FORMAT " returned no body",
                                     g_array_index (session->uids, guint64, session->next_uid - 1));
              return;
            }
          pg_bench_imap_fetch_next (session);
          break;
        }
      session->state = PG_BENCH_STATE_QUIT;
      pg_bench_imap_command (session, "LOGOUT");
      break;
    case PG_BENCH_STATE_QUIT:
      pg_bench_session_done (session);
      break;
    case PG_BENCH_STATE_NOOP:
      pg_bench_session_hold (session);
      break;
    case PG_BENCH_STATE_CONNECT:
    case PG_BENCH_STATE_GREETING:
    case PG_BENCH_STATE_CAPA:
    case PG_BENCH_STATE_USER:
    case PG_BENCH_STATE_IDLE:
    case PG_BENCH_STATE_UIDL:
    case PG_BENCH_STATE_DONE:
    case PG_BENCH_STATE_FAILED:
      break;
    }
}

/* --- reading -------------------------------------------------------------------------- */

static void
pg_bench_session_feed (PgBenchSession *session, const guint8 *data, gsize len)
{
  gboolean imap = session->load->options.proto == PG_BENCH_PROTO_IMAP;
  gsize i = 0;

  while (i < len && session->state != PG_BENCH_STATE_FAILED
         && session->state != PG_BENCH_STATE_DONE)
    {
      if (imap && session->literal_left > 0)
        {
          gsize take = (gsize) MIN ((guint64) (len - i), session->literal_left);

          session->literal_left -= take;
          i += take;
          if (session->literal_left == 0)
            pg_bench_session_message_done (session, session->literal_size,
                                           pg_bench_imap_ready_at (session));
          continue;
        }
      if (!imap && session->in_data && session->state == PG_BENCH_STATE_FETCH)
        {
          i += pg_bench_pop3_scan (session, data + i, len - i);
          continue;
        }
      {
        const guint8 *nl = memchr (data + i, '\n', len - i);
        gsize take = nl != NULL ? (gsize) (nl - (data + i)) + 1 : len - i;

        if (session->line->len + take > PG_BENCH_MAX_LINE)
          {
            pg_bench_session_fail (session, "response line longer than %d", PG_BENCH_MAX_LINE);
            return;
          }
        g_string_append_len (session->line, (const char *) data + i, (gssize) take);
        i += take;
        if (nl == NULL)
          continue;
        if (imap)
          pg_bench_imap_line (session, session->line->str, session->line->len);
        else
          pg_bench_pop3_line (session, session->line->str, session->line->len);
        g_string_truncate (session->line, 0);
      }
    }
}

static void
pg_bench_session_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgBenchSession *session = user_data;
  g_autoptr (GError) error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  session->ops--;
  if (session->state == PG_BENCH_STATE_FAILED || session->state == PG_BENCH_STATE_DONE)
    {
      pg_bench_session_maybe_close (session);
      return;
    }
  if (n < 0)
    {
      pg_bench_session_fail (session, "read: %s", error->message);
      return;
    }
  if (n == 0)
    {
      pg_bench_session_fail (session, "the server closed the connection");
      return;
    }
  session->load->result->wire_bytes += (guint64) n;
  session->load->result->reads++;
  session->now = g_get_monotonic_time ();
  pg_bench_session_feed (session, session->buf, (gsize) n);
  if (session->state != PG_BENCH_STATE_FAILED && session->state != PG_BENCH_STATE_DONE)
    pg_bench_session_read (session);
  else
    pg_bench_session_maybe_close (session);
}

static void
pg_bench_session_read (PgBenchSession *session)
{
  session->ops++;
  g_input_stream_read_async (g_io_stream_get_input_stream (G_IO_STREAM (session->conn)),
                             session->buf, PG_BENCH_READ_BUFFER, G_PRIORITY_DEFAULT,
                             session->cancellable, pg_bench_session_read_cb, session);
}

static void
pg_bench_session_connect_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgBenchSession *session = user_data;
  g_autoptr (GError) error = NULL;
  GSocketConnection *conn
      = g_socket_client_connect_finish (G_SOCKET_CLIENT (source), result, &error);

  session->ops--;
  if (conn == NULL)
    {
      pg_bench_session_fail (session, "connect: %s", error->message);
      return;
    }
  session->conn = conn;
  if (session->state == PG_BENCH_STATE_FAILED)
    {
      pg_bench_session_maybe_close (session);
      return;
    }
  g_socket_set_option (g_socket_connection_get_socket (conn), IPPROTO_TCP, TCP_NODELAY, 1, NULL);
  session->state = PG_BENCH_STATE_GREETING;
  pg_bench_session_read (session);
}

/* Connect the next sessions, up to max_connecting in progress at once. */
static void
pg_bench_load_start_more (PgBenchLoad *load)
{
  guint limit = load->options.max_connecting > 0 ? load->options.max_connecting : G_MAXUINT;

  while (load->next_start < load->options.n_sessions && load->n_connecting < limit)
    {
      PgBenchSession *session = &load->sessions[load->next_start++];

      if (session->state != PG_BENCH_STATE_CONNECT)
        continue; /* failed before it started (the load timed out) */
      session->connecting = TRUE;
      load->n_connecting++;
      session->t_start = g_get_monotonic_time ();
      session->ops++;
      g_socket_client_connect_async (load->client, G_SOCKET_CONNECTABLE (load->address),
                                     session->cancellable, pg_bench_session_connect_cb, session);
    }
}

static gboolean
pg_bench_load_timeout_cb (gpointer user_data)
{
  PgBenchLoad *load = user_data;

  load->timeout_id = 0;
  for (guint i = 0; i < load->options.n_sessions; i++)
    if (load->sessions[i].state != PG_BENCH_STATE_IDLE)
      pg_bench_session_fail (&load->sessions[i], "timed out after %u s", load->options.timeout_s);
  if (load->n_pending > 0)
    g_main_loop_quit (load->loop);
  return G_SOURCE_REMOVE;
}

static void
pg_bench_load_wait (PgBenchLoad *load)
{
  if (load->n_pending == 0)
    return;
  load->timeout_id
      = g_timeout_add_seconds (MAX (load->options.timeout_s, 1), pg_bench_load_timeout_cb, load);
  g_main_loop_run (load->loop);
  if (load->timeout_id != 0)
    g_source_remove (load->timeout_id);
  load->timeout_id = 0;
}

PgBenchLoad *
pg_bench_load_run (const PgBenchLoadOptions *options)
{
  PgBenchLoad *load = g_new0 (PgBenchLoad, 1);
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (options->host);

  g_return_val_if_fail (inet != NULL && options->n_users > 0, NULL);
  load->options = *options;
  load->client = g_socket_client_new ();
  /* Loopback only: no proxy resolver lookups in the way. */
  g_socket_client_set_enable_proxy (load->client, FALSE);
  load->address = g_inet_socket_address_new (inet, options->port);
  load->loop = g_main_loop_new (NULL, FALSE);
  load->result = g_new0 (PgBenchLoadResult, 1);
  load->result->ttfb_us = g_array_sized_new (FALSE, FALSE, sizeof (gint64), options->n_sessions);
  load->result->retr_us = g_array_new (FALSE, FALSE, sizeof (gint64));
  load->result->login_us = g_array_new (FALSE, FALSE, sizeof (gint64));
  load->sessions = g_new0 (PgBenchSession, options->n_sessions);
  load->n_pending = options->n_sessions;
  load->cpu_start = pg_bench_cpu_seconds ();
  load->t_start = g_get_monotonic_time ();

  for (guint i = 0; i < options->n_sessions; i++)
    {
      PgBenchSession *session = &load->sessions[i];

      session->load = load;
      session->index = i;
      session->user = options->users[i % options->n_users];
      session->login
          = options->client_tag_separator != NULL
                ? g_strdup_printf ("%s%ss%u", session->user, options->client_tag_separator, i)
                : g_strdup (session->user);
      session->cancellable = g_cancellable_new ();
      session->buf = g_malloc (PG_BENCH_READ_BUFFER);
      session->line = g_string_sized_new (256);
      session->outq = g_string_sized_new (256);
      session->writing = g_string_sized_new (256);
      session->sent_at = g_array_new (FALSE, TRUE, sizeof (gint64));
      session->uids = g_array_new (FALSE, FALSE, sizeof (guint64));
      session->state = PG_BENCH_STATE_CONNECT;
    }
  pg_bench_load_start_more (load);
  pg_bench_load_wait (load);
  if (load->t_end == 0)
    load->t_end = g_get_monotonic_time ();
  load->result->wall_s = (gdouble) (load->t_end - load->t_start) / 1e6;
  load->result->cpu_s = pg_bench_cpu_seconds () - load->cpu_start;
  return load;
}

guint
pg_bench_load_get_n_idle (PgBenchLoad *load)
{
  return load->n_idle;
}

/* Idle mode: send every holding session `imap_command` or `pop3_command`, moving it to
 * `state`, and wait until each has its reply (or failed). */
static void
pg_bench_load_send_idle (PgBenchLoad *load, PgBenchState state, const char *imap_command,
                         const char *pop3_command)
{
  gboolean imap = load->options.proto == PG_BENCH_PROTO_IMAP;

  for (guint i = 0; i < load->options.n_sessions; i++)
    {
      PgBenchSession *session = &load->sessions[i];

      if (session->state != PG_BENCH_STATE_IDLE)
        continue;
      load->n_idle--;
      load->n_pending++;
      session->state = state;
      if (imap)
        pg_bench_imap_command (session, "%s", imap_command);
      else
        pg_bench_session_send (session, "%s", pop3_command);
    }
  pg_bench_load_wait (load);
}

void
pg_bench_load_release (PgBenchLoad *load)
{
  pg_bench_load_send_idle (load, PG_BENCH_STATE_QUIT, "LOGOUT", "QUIT");
}

guint
pg_bench_load_noop (PgBenchLoad *load)
{
  pg_bench_load_send_idle (load, PG_BENCH_STATE_NOOP, "NOOP", "NOOP");
  return load->n_idle;
}

PgBenchLoadResult *
pg_bench_load_take_result (PgBenchLoad *load)
{
  return g_steal_pointer (&load->result);
}

const PgBenchLoadResult *
pg_bench_load_peek_result (PgBenchLoad *load)
{
  return load->result;
}

static gboolean
pg_bench_load_quiet_cb (gpointer user_data)
{
  PgBenchLoad *load = user_data;

  for (guint i = 0; i < load->options.n_sessions; i++)
    if (load->sessions[i].ops > 0)
      return FALSE;
  return TRUE;
}

void
pg_bench_load_free (PgBenchLoad *load)
{
  gint64 deadline = 0;

  if (load == NULL)
    return;
  for (guint i = 0; i < load->options.n_sessions; i++)
    g_cancellable_cancel (load->sessions[i].cancellable);
  /* Cancelled operations still call back: let them, before the sessions go. */
  deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (!pg_bench_load_quiet_cb (load) && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, TRUE);
  for (guint i = 0; i < load->options.n_sessions; i++)
    {
      PgBenchSession *session = &load->sessions[i];

      g_clear_object (&session->conn);
      g_clear_object (&session->cancellable);
      g_free (session->buf);
      g_free (session->login);
      g_string_free (session->line, TRUE);
      g_string_free (session->outq, TRUE);
      g_string_free (session->writing, TRUE);
      g_array_unref (session->sent_at);
      g_array_unref (session->uids);
    }
  g_free (load->sessions);
  g_clear_object (&load->client);
  g_clear_object (&load->address);
  g_main_loop_unref (load->loop);
  pg_bench_load_result_free (load->result);
  g_free (load);
}
