/* popgate — IMAP relay filter (see pg-imap-filter.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-imap-filter.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

typedef enum
{
  PG_IMAP_FILTER_CMD_UNDECIDED, /* the command word is not known yet */
  PG_IMAP_FILTER_CMD_RELAY,
  PG_IMAP_FILTER_CMD_DROP, /* withheld: its bytes go nowhere */
} PgImapFilterCmd;

typedef enum
{
  PG_IMAP_FILTER_RESP_START, /* at a response start (maybe with a held prefix) */
  PG_IMAP_FILTER_RESP_COPY,  /* no capability list: copied through to its end */
  PG_IMAP_FILTER_RESP_LINE,  /* a capability list: held whole until its end */
} PgImapFilterResp;

struct _PgImapFilter
{
  PgImapFilterFuncs funcs;
  gpointer user_data;
  gchar *extra; /* owned */

  PgImapRelayScanner *client_scan; /* owned */
  PgImapFilterCmd cmd;
  PgImapCapsCommand cmd_what;
  gsize held_client; /* octets of the current command the last call held back (scanned) */

  PgImapRelayScanner *up_scan; /* owned */
  PgImapFilterResp resp;
  GString *held; /* owned, NULL unless a response start or a capability line is held */
};

PgImapFilter *
pg_imap_filter_new (const PgImapFilterFuncs *funcs, gpointer user_data, const char *extra)
{
  PgImapFilter *filter = g_new0 (PgImapFilter, 1);

  filter->funcs = *funcs;
  filter->user_data = user_data;
  filter->extra = g_strdup (extra);
  filter->client_scan = pg_imap_relay_scanner_new ();
  filter->up_scan = pg_imap_relay_scanner_new ();
  return filter;
}

void
pg_imap_filter_free (PgImapFilter *filter)
{
  if (filter == NULL)
    return;
  pg_imap_relay_scanner_free (filter->client_scan);
  pg_imap_relay_scanner_free (filter->up_scan);
  if (filter->held != NULL)
    g_string_free (filter->held, TRUE);
  g_free (filter->extra);
  g_free (filter);
}

/* --- client → upstream ------------------------------------------------------------------ */

gsize
pg_imap_filter_client (PgImapFilter *filter, guint8 *buf, gsize len, gsize *out_hold_offset,
                       gsize *out_hold_len, gboolean *out_stopped)
{
  gsize pos = 0;       /* scanned up to here */
  gsize kept = 0;      /* buf[0..kept) goes upstream */
  gsize cmd_begin = 0; /* where the current command's octets in buf begin */

  *out_hold_offset = 0;
  *out_hold_len = 0;
  *out_stopped = FALSE;
  /* Octets held back last time were scanned then: the caller put them at buf[0...], the
   * current command's start, and the scanner goes on after them. */
  pos = filter->cmd == PG_IMAP_FILTER_CMD_UNDECIDED ? MIN (len, filter->held_client) : 0;
  filter->held_client = 0;
  while (pos < len)
    {
      gboolean complete = FALSE;
      const PgImapRelayCommand *cmd = NULL;
      gsize n
          = pg_imap_relay_scanner_scan (filter->client_scan, buf + pos, len - pos, &complete, &cmd);

      pos += n;
      if (filter->cmd == PG_IMAP_FILTER_CMD_UNDECIDED)
        {
          const char *word
              = complete ? cmd->word : pg_imap_relay_scanner_peek_word (filter->client_scan);

          if (word != NULL)
            {
              filter->cmd_what = pg_imap_caps_command_withheld (word);
              filter->cmd = filter->cmd_what == PG_IMAP_CAPS_COMMAND_RELAYED
                                ? PG_IMAP_FILTER_CMD_RELAY
                                : PG_IMAP_FILTER_CMD_DROP;
            }
          else if (pos - cmd_begin <= PG_IMAP_FILTER_MAX_HOLD)
            {
              /* The chunk ended before the word: keep the start back. */
              *out_hold_offset = cmd_begin;
              *out_hold_len = pos - cmd_begin;
              filter->held_client = pos - cmd_begin;
              return kept;
            }
          else
            filter->cmd = PG_IMAP_FILTER_CMD_RELAY;
        }
      if (filter->cmd == PG_IMAP_FILTER_CMD_RELAY)
        {
          if (kept != cmd_begin)
            memmove (buf + kept, buf + cmd_begin, pos - cmd_begin);
          kept += pos - cmd_begin;
        }
      cmd_begin = pos;
      if (!complete && filter->cmd == PG_IMAP_FILTER_CMD_DROP
          && pg_imap_relay_scanner_awaits_continuation (filter->client_scan))
        {
          /* The client waits for "+" before its literal: answer now instead (the tagged
           * reply tells it not to send the literal). */
          cmd = pg_imap_relay_scanner_abandon (filter->client_scan);
          complete = TRUE;
        }
      if (!complete)
        continue;
      if (filter->cmd == PG_IMAP_FILTER_CMD_DROP)
        {
          filter->cmd = PG_IMAP_FILTER_CMD_UNDECIDED;
          if (filter->funcs.withheld (filter->user_data, filter->cmd_what, cmd))
            {
              *out_hold_offset = pos;
              *out_hold_len = len - pos;
              *out_stopped = TRUE;
              return kept;
            }
          continue;
        }
      filter->cmd = PG_IMAP_FILTER_CMD_UNDECIDED;
      filter->funcs.command (filter->user_data, cmd);
    }
  return kept;
}

/* --- upstream → client ------------------------------------------------------------------ */

gboolean
pg_imap_filter_at_response_boundary (const PgImapFilter *filter)
{
  return filter->resp == PG_IMAP_FILTER_RESP_START && filter->held == NULL;
}

static void
pg_imap_filter_release_held (PgImapFilter *filter, gboolean rewrite)
{
  g_autoptr (GString) out = NULL;
  GString *held = g_steal_pointer (&filter->held);

  if (rewrite)
    {
      out = g_string_sized_new (held->len + 32);
      pg_imap_caps_rewrite_line (out, held->str, held->len, filter->extra);
      filter->funcs.to_client (filter->user_data, (const guint8 *) out->str, out->len);
    }
  else
    filter->funcs.to_client (filter->user_data, (const guint8 *) held->str, held->len);
  g_string_free (held, TRUE);
}

static void
pg_imap_filter_hold (PgImapFilter *filter, const guint8 *data, gsize len)
{
  if (filter->held == NULL)
    filter->held = g_string_sized_new (MAX (len, 128));
  g_string_append_len (filter->held, (const char *) data, (gssize) len);
}

gboolean
pg_imap_filter_upstream (PgImapFilter *filter, const guint8 *data, gsize len, GError **error)
{
  gsize pos = 0;
  gsize run = 0; /* data[run..pos) is to be copied as it is */

  while (pos < len)
    {
      gboolean complete = FALSE;
      const PgImapRelayCommand *resp = NULL;
      gsize seg = pos;
      gsize n
          = pg_imap_relay_scanner_scan (filter->up_scan, data + pos, len - pos, &complete, &resp);

      pos += n;
      if (filter->resp == PG_IMAP_FILTER_RESP_START)
        {
          PgImapCapsLine match;

          if (filter->held == NULL)
            match = pg_imap_caps_line_match ((const char *) data + seg, pos - seg);
          else
            {
              pg_imap_filter_hold (filter, data + seg, pos - seg);
              run = pos;
              seg = pos;
              match = pg_imap_caps_line_match (filter->held->str, filter->held->len);
            }
          switch (match)
            {
            case PG_IMAP_CAPS_LINE_NO:
              filter->resp = PG_IMAP_FILTER_RESP_COPY;
              if (filter->held != NULL)
                pg_imap_filter_release_held (filter, FALSE);
              break;
            case PG_IMAP_CAPS_LINE_YES:
            case PG_IMAP_CAPS_LINE_MORE: /* only at the chunk's end: a line end decides */
              if (match == PG_IMAP_CAPS_LINE_YES)
                filter->resp = PG_IMAP_FILTER_RESP_LINE;
              if (filter->held == NULL)
                {
                  /* What precedes goes out; this response's start is held. */
                  if (seg > run)
                    filter->funcs.to_client (filter->user_data, data + run, seg - run);
                  pg_imap_filter_hold (filter, data + seg, pos - seg);
                  run = pos;
                }
              break;
            }
        }
      else if (filter->resp == PG_IMAP_FILTER_RESP_LINE)
        {
          pg_imap_filter_hold (filter, data + seg, pos - seg);
          run = pos;
        }
      if (filter->resp == PG_IMAP_FILTER_RESP_LINE && filter->held->len > PG_UPSTREAM_MAX_LINE)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_LINE_TOO_LONG,
                       "capability line from the upstream longer than %d octets",
                       PG_UPSTREAM_MAX_LINE);
          return FALSE;
        }
      if (!complete)
        continue;
      if (filter->resp == PG_IMAP_FILTER_RESP_LINE)
        pg_imap_filter_release_held (filter, TRUE);
      else if (filter->held != NULL)
        pg_imap_filter_release_held (filter, FALSE);
      filter->resp = PG_IMAP_FILTER_RESP_START;
      /* Tracking only stores state: the copy of data[run..) can wait for the chunk's end. */
      filter->funcs.response (filter->user_data, resp);
    }
  if (pos > run)
    filter->funcs.to_client (filter->user_data, data + run, pos - run);
  return TRUE;
}
