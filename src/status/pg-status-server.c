/* popgate — the live status page: sessions and their audit trace over HTTP, JSON and
 * Server-Sent Events (see pg-status-server.h).
 *
 * The session registry (src/core/pg-status.c) tells us about starts, state changes, ends
 * and trace lines; we keep a bounded trace ring per session and the last description we
 * sent, and push events to the subscribers. Counters (bytes, messages) change without an
 * event, so while someone watches a tick compares every session with what was last sent.
 *
 * Each subscriber has at most one chunk in libsoup's hands and a queue behind it; libsoup
 * writes without blocking from the main loop, and "wrote-chunk" hands it the next one. A
 * subscriber whose queue passes PG_STATUS_SUBSCRIBER_QUEUE is cut off (its socket shut
 * down): a mail session never waits for a browser.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-status"

#include "popgate/pg-status-server.h"

#include "pg-build-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-metrics-server.h"
#include "popgate/pg-status.h"

#include <json-glib/json-glib.h>
#include <libsoup/soup.h>
#include <string.h>

/* Resources compiled from data/status (pg-status-resources.c, generated). */
GResource *pg_status_get_resource (void);

/* How often, while someone watches, counters are compared with what was last sent. */
#define PG_STATUS_TICK_MS 1000
/* A comment line every so many idle ticks keeps proxies and browsers from timing out. */
#define PG_STATUS_KEEPALIVE_TICKS 15

static const char *const pg_status_frontend_names[] = { "pop3", "imap" };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_status_frontend_names) == PG_METRICS_FRONTEND_COUNT);

/* What we keep per live session. */
typedef struct
{
  guint64 id;
  gchar *last_json; /* owned: the description last sent to subscribers */
  gchar **ring;     /* owned: PG_STATUS_TRACE_LINES slots (NULL until the first line) */
  guint64 seq;      /* trace lines seen so far; line n sits in ring[(n - 1) % size] */
  guint64 refused;  /* lines not kept: no ring was free (PG_STATUS_MAX_TRACED_SESSIONS) */
} PgStatusTrack;

typedef struct
{
  PgStatusServer *server; /* unowned: the server drops its subscribers before it goes */
  SoupServerMessage *msg; /* owned */
  GString *pending;       /* events not yet handed to libsoup */
  gsize in_flight;        /* bytes of the chunk libsoup is writing now */
  gint64 in_flight_since; /* g_get_monotonic_time() when that chunk was handed over */
  gboolean dropped;       /* cut off: write nothing more */
  gboolean trace_all;     /* ?trace=all: every session's trace lines */
  guint64 trace_id;       /* ?trace=ID: that session's (0: none) */
  GSource *hangup;        /* owned: notices the browser going away while nothing is written */
  GList link;             /* in server->subscribers */
} PgStatusSubscriber;

struct _PgStatusServer
{
  GObject parent_instance;

  SoupServer *soup;   /* owned; NULL when not listening */
  gchar *listen_key;  /* owned: the listen list soup is bound to, as text */
  PgConfig *config;   /* owned: the users and allow_remote in force */
  GHashTable *tracks; /* owned: guint64* id → PgStatusTrack* (owned) */
  guint n_rings;      /* tracks with a trace ring */
  GQueue recent;      /* of PgStatusTrack* (owned): ended sessions, newest first */
  GQueue subscribers; /* of PgStatusSubscriber* (owned, links inside) */
  guint n_dropped;
  GSource *tick; /* owned: while there are subscribers */
  guint idle_ticks;
};

G_DEFINE_FINAL_TYPE (PgStatusServer, pg_status_server, G_TYPE_OBJECT)

/* --- JSON -------------------------------------------------------------------------------- */

/* Peer text (login names, mailbox names) as printable ASCII for JSON. */
static void
pg_status_json_add_text (JsonBuilder *builder, const char *name, const char *value)
{
  json_builder_set_member_name (builder, name);
  if (value == NULL)
    json_builder_add_null_value (builder);
  else
    {
      g_autofree gchar *shown = pg_log_escape (value, strlen (value), 256);
      json_builder_add_string_value (builder, shown);
    }
}

/* One session; `ended_ms` (Unix ms) for an ended one, 0 for a live one. */
static void
pg_status_json_add_session (JsonBuilder *builder, const PgStatusInfo *info, gint64 ended_ms)
{
  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "id");
  json_builder_add_int_value (builder, (gint64) info->id);
  json_builder_set_member_name (builder, "frontend");
  json_builder_add_string_value (builder, info->frontend < PG_METRICS_FRONTEND_COUNT
                                              ? pg_status_frontend_names[info->frontend]
                                              : "?");
  pg_status_json_add_text (builder, "client", info->client);
  json_builder_set_member_name (builder, "tls");
  json_builder_add_boolean_value (builder, info->tls);
  pg_status_json_add_text (builder, "user", info->user);
  pg_status_json_add_text (builder, "tag", info->tag);
  pg_status_json_add_text (builder, "state", info->state);
  pg_status_json_add_text (builder, "mailbox", info->mailbox);
  json_builder_set_member_name (builder, "idle");
  json_builder_add_boolean_value (builder, info->idle);
  json_builder_set_member_name (builder, "retrieved");
  json_builder_add_int_value (builder, info->retrieved);
  json_builder_set_member_name (builder, "deleted");
  json_builder_add_int_value (builder, info->deleted);
  json_builder_set_member_name (builder, "bytes_in");
  json_builder_add_int_value (builder, (gint64) MIN (info->bytes_in, (guint64) G_MAXINT64));
  json_builder_set_member_name (builder, "bytes_out");
  json_builder_add_int_value (builder, (gint64) MIN (info->bytes_out, (guint64) G_MAXINT64));
  json_builder_set_member_name (builder, "started_ms");
  json_builder_add_int_value (builder, info->started_us / 1000);
  if (ended_ms > 0)
    {
      json_builder_set_member_name (builder, "ended_ms");
      json_builder_add_int_value (builder, ended_ms);
    }
  json_builder_end_object (builder);
}

static gchar *
pg_status_json_finish (JsonBuilder *builder, gsize *out_len)
{
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  g_autoptr (JsonNode) root = json_builder_get_root (builder);

  json_generator_set_root (generator, root);
  return json_generator_to_data (generator, out_len);
}

static gchar *
pg_status_json_session (const PgStatusInfo *info, gint64 ended_ms)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();

  pg_status_json_add_session (builder, info, ended_ms);
  return pg_status_json_finish (builder, NULL);
}

static void
pg_status_json_add_session_cb (const PgStatusInfo *info, gpointer user_data)
{
  pg_status_json_add_session (user_data, info, 0);
}

/* {"now_ms":…, "sessions":[…], "recent":[…]}: the live sessions, oldest first, and the
 * ended ones kept (`recent`, of PgStatusTrack*), newest first. */
static gchar *
pg_status_json_sessions (GQueue *recent, gsize *out_len)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "now_ms");
  json_builder_add_int_value (builder, g_get_real_time () / 1000);
  json_builder_set_member_name (builder, "sessions");
  json_builder_begin_array (builder);
  pg_status_foreach (pg_status_json_add_session_cb, builder);
  json_builder_end_array (builder);
  json_builder_set_member_name (builder, "recent");
  json_builder_begin_array (builder);
  for (GList *l = recent->head; l != NULL; l = l->next)
    {
      const PgStatusTrack *track = l->data;
      JsonNode *node = json_from_string (track->last_json, NULL);
      if (node != NULL)
        json_builder_add_value (builder, node);
    }
  json_builder_end_array (builder);
  json_builder_end_object (builder);
  return pg_status_json_finish (builder, out_len);
}

static void
pg_status_json_add_line (JsonBuilder *builder, guint64 seq, const char *line)
{
  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "seq");
  json_builder_add_int_value (builder, (gint64) seq);
  json_builder_set_member_name (builder, "line");
  json_builder_add_string_value (builder, line);
  json_builder_end_object (builder);
}

/* --- per-session tracks and trace rings ---------------------------------------------- */

static void
pg_status_track_free (PgStatusTrack *track)
{
  if (track->ring != NULL)
    for (guint i = 0; i < PG_STATUS_TRACE_LINES; i++)
      g_free (track->ring[i]);
  g_free (track->ring);
  g_free (track->last_json);
  g_free (track);
}

static PgStatusTrack *
pg_status_server_track (PgStatusServer *self, guint64 id)
{
  PgStatusTrack *track = g_hash_table_lookup (self->tracks, &id);

  if (track != NULL)
    return track;
  track = g_new0 (PgStatusTrack, 1);
  track->id = id;
  g_hash_table_insert (self->tracks, &track->id, track);
  return track;
}

/* A session ended: keep its last description and trace among the recent ones. */
static void
pg_status_server_retire (PgStatusServer *self, guint64 id, gchar *final_json)
{
  PgStatusTrack *track = pg_status_server_track (self, id);

  g_hash_table_steal (self->tracks, &id);
  if (track->ring != NULL)
    self->n_rings--;
  g_free (track->last_json);
  track->last_json = final_json;
  g_queue_push_head (&self->recent, track);
  while (self->recent.length > PG_STATUS_RECENT_SESSIONS)
    pg_status_track_free (g_queue_pop_tail (&self->recent));
}

/* The track of a live session (made if need be) or of a recent one; NULL if neither. */
static PgStatusTrack *
pg_status_server_find_track (PgStatusServer *self, guint64 id)
{
  PgStatusInfo info;

  if (pg_status_session_get (id, &info))
    return pg_status_server_track (self, id);
  for (GList *l = self->recent.head; l != NULL; l = l->next)
    if (((PgStatusTrack *) l->data)->id == id)
      return l->data;
  return NULL;
}

/* Keep a (cut, valid UTF-8) copy of the line; FALSE when the session gets no ring. */
static gboolean
pg_status_track_add_line (PgStatusServer *self, PgStatusTrack *track, const char *line)
{
  gchar **slot;

  if (track->ring == NULL)
    {
      if (self->n_rings >= PG_STATUS_MAX_TRACED_SESSIONS)
        {
          track->refused++;
          return FALSE;
        }
      track->ring = g_new0 (gchar *, PG_STATUS_TRACE_LINES);
      self->n_rings++;
    }
  slot = &track->ring[track->seq % PG_STATUS_TRACE_LINES];
  g_free (*slot);
  *slot = g_utf8_make_valid (line, MIN (strlen (line), PG_STATUS_TRACE_LINE_MAX));
  track->seq++;
  return TRUE;
}

/* {"id":…, "seq":N, "lines":[{"seq":…,"line":…}, …]}: the last lines, oldest first. */
static gchar *
pg_status_json_trace (PgStatusTrack *track, gsize *out_len)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  guint64 first = track->seq > PG_STATUS_TRACE_LINES ? track->seq - PG_STATUS_TRACE_LINES : 0;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "id");
  json_builder_add_int_value (builder, (gint64) track->id);
  json_builder_set_member_name (builder, "seq");
  json_builder_add_int_value (builder, (gint64) track->seq);
  json_builder_set_member_name (builder, "traced");
  json_builder_add_boolean_value (builder, track->refused == 0);
  json_builder_set_member_name (builder, "lines");
  json_builder_begin_array (builder);
  for (guint64 n = first; track->ring != NULL && n < track->seq; n++)
    pg_status_json_add_line (builder, n + 1, track->ring[n % PG_STATUS_TRACE_LINES]);
  json_builder_end_array (builder);
  json_builder_end_object (builder);
  return pg_status_json_finish (builder, out_len);
}

/* --- subscribers ------------------------------------------------------------------------ */

static void
pg_status_subscriber_free (PgStatusSubscriber *sub)
{
  if (sub->hangup != NULL)
    {
      g_source_destroy (sub->hangup);
      g_source_unref (sub->hangup);
    }
  g_signal_handlers_disconnect_by_data (sub->msg, sub);
  g_object_unref (sub->msg);
  g_string_free (sub->pending, TRUE);
  g_free (sub);
}

static void
pg_status_server_stop_tick (PgStatusServer *self)
{
  if (self->tick == NULL)
    return;
  g_source_destroy (self->tick);
  g_clear_pointer (&self->tick, g_source_unref);
}

static void
pg_status_server_remove_subscriber (PgStatusServer *self, PgStatusSubscriber *sub)
{
  g_queue_unlink (&self->subscribers, &sub->link);
  pg_status_subscriber_free (sub);
  if (self->subscribers.length == 0)
    pg_status_server_stop_tick (self);
}

/* Hand the queue to libsoup as one chunk (only when it holds none of ours). */
static void
pg_status_subscriber_flush (PgStatusSubscriber *sub)
{
  SoupMessageBody *body;
  gsize len = sub->pending->len;

  if (sub->dropped || sub->in_flight > 0 || len == 0)
    return;
  body = soup_server_message_get_response_body (sub->msg);
  soup_message_body_append_bytes (body, g_string_free_to_bytes (g_steal_pointer (&sub->pending)));
  sub->pending = g_string_new (NULL);
  sub->in_flight = len;
  sub->in_flight_since = g_get_monotonic_time ();
  soup_server_message_unpause (sub->msg);
}

/* Too far behind: shut the socket down; libsoup's pending write fails and "finished"
 * frees the subscriber. */
static void
pg_status_subscriber_drop (PgStatusSubscriber *sub)
{
  GSocket *socket = soup_server_message_get_socket (sub->msg);

  sub->dropped = TRUE;
  g_string_truncate (sub->pending, 0);
  sub->server->n_dropped++;
  g_message ("status: events subscriber %s dropped: it does not keep up with the events",
             soup_server_message_get_remote_host (sub->msg) != NULL
                 ? soup_server_message_get_remote_host (sub->msg)
                 : "?");
  if (socket != NULL)
    g_socket_shutdown (socket, TRUE, TRUE, NULL);
}

static void
pg_status_subscriber_send (PgStatusSubscriber *sub, const char *event, const char *data)
{
  if (sub->dropped)
    return;
  g_string_append_printf (sub->pending, "event: %s\ndata: %s\n\n", event, data);
  if (sub->in_flight == 0)
    pg_status_subscriber_flush (sub);
  /* Not counting the chunk in flight: the first one is a snapshot of every session,
   * larger than the bound on a busy server. */
  else if (sub->pending->len > PG_STATUS_SUBSCRIBER_QUEUE)
    pg_status_subscriber_drop (sub);
}

static void
pg_status_server_broadcast (PgStatusServer *self, const char *event, const char *data)
{
  for (GList *l = self->subscribers.head; l != NULL; l = l->next)
    pg_status_subscriber_send (l->data, event, data);
  self->idle_ticks = 0;
}

static void
pg_status_subscriber_wrote_chunk_cb (SoupServerMessage *msg, gpointer user_data)
{
  PgStatusSubscriber *sub = user_data;

  sub->in_flight = 0;
  pg_status_subscriber_flush (sub);
}

/* An event stream's client sends nothing after its request: readable means it closed (or
 * broke the protocol). libsoup does not read while our response is paused, so without
 * this a closed browser would hold its slot until the next event. */
static gboolean
pg_status_subscriber_hangup_cb (GSocket *socket, GIOCondition condition, gpointer user_data)
{
  PgStatusSubscriber *sub = user_data;

  g_clear_pointer (&sub->hangup, g_source_unref);
  g_socket_shutdown (socket, TRUE, TRUE, NULL);
  /* libsoup learns it at its next write: give it one. */
  if (!sub->dropped && sub->in_flight == 0)
    {
      g_string_assign (sub->pending, ": bye\n\n");
      pg_status_subscriber_flush (sub);
    }
  sub->dropped = TRUE;
  return G_SOURCE_REMOVE;
}

static void
pg_status_subscriber_finished_cb (SoupServerMessage *msg, gpointer user_data)
{
  PgStatusSubscriber *sub = user_data;

  pg_status_server_remove_subscriber (sub->server, sub);
}

/* Send the session's description when it differs from the last one sent. */
static void
pg_status_server_send_if_changed (PgStatusServer *self, const PgStatusInfo *info, const char *event)
{
  PgStatusTrack *track = pg_status_server_track (self, info->id);
  g_autofree gchar *json = pg_status_json_session (info, 0);

  if (g_strcmp0 (json, track->last_json) == 0)
    return;
  g_free (track->last_json);
  track->last_json = g_steal_pointer (&json);
  pg_status_server_broadcast (self, event, track->last_json);
}

static void
pg_status_server_tick_session_cb (const PgStatusInfo *info, gpointer user_data)
{
  pg_status_server_send_if_changed (user_data, info, "change");
}

static gboolean
pg_status_server_tick_cb (gpointer user_data)
{
  PgStatusServer *self = user_data;

  pg_status_foreach (pg_status_server_tick_session_cb, self);
  for (GList *l = self->subscribers.head; l != NULL; l = l->next)
    {
      PgStatusSubscriber *sub = l->data;
      if (!sub->dropped && sub->in_flight > 0
          && g_get_monotonic_time () - sub->in_flight_since
                 > (gint64) PG_STATUS_SUBSCRIBER_STALL_S * G_USEC_PER_SEC)
        pg_status_subscriber_drop (sub);
    }
  if (++self->idle_ticks >= PG_STATUS_KEEPALIVE_TICKS)
    {
      for (GList *l = self->subscribers.head; l != NULL; l = l->next)
        {
          PgStatusSubscriber *sub = l->data;
          if (!sub->dropped)
            {
              g_string_append (sub->pending, ": keepalive\n\n");
              pg_status_subscriber_flush (sub);
            }
        }
      self->idle_ticks = 0;
    }
  return G_SOURCE_CONTINUE;
}

/* --- the registry's observer ------------------------------------------------------------ */

static gboolean
pg_status_server_wants_trace (PgStatusServer *self, guint64 sid)
{
  for (GList *l = self->subscribers.head; l != NULL; l = l->next)
    {
      PgStatusSubscriber *sub = l->data;
      if (sub->trace_all || sub->trace_id == sid)
        return TRUE;
    }
  return FALSE;
}

static void
pg_status_server_observe_cb (PgStatusEvent event, guint64 sid, const PgStatusInfo *info,
                             const char *line, gpointer user_data)
{
  PgStatusServer *self = user_data;

  switch (event)
    {
    case PG_STATUS_EVENT_START:
      pg_status_server_send_if_changed (self, info, "start");
      return;
    case PG_STATUS_EVENT_CHANGE:
      pg_status_server_send_if_changed (self, info, "change");
      return;
    case PG_STATUS_EVENT_END:
      {
        gchar *json = pg_status_json_session (info, g_get_real_time () / 1000);
        pg_status_server_broadcast (self, "end", json);
        pg_status_server_retire (self, sid, json);
        return;
      }
    case PG_STATUS_EVENT_TRACE:
      {
        PgStatusTrack *track = pg_status_server_track (self, sid);
        g_autoptr (JsonBuilder) builder = NULL;
        g_autofree gchar *json = NULL;

        if (!pg_status_track_add_line (self, track, line)
            || !pg_status_server_wants_trace (self, sid))
          return;
        builder = json_builder_new ();
        json_builder_begin_object (builder);
        json_builder_set_member_name (builder, "id");
        json_builder_add_int_value (builder, (gint64) sid);
        json_builder_set_member_name (builder, "seq");
        json_builder_add_int_value (builder, (gint64) track->seq);
        json_builder_set_member_name (builder, "line");
        json_builder_add_string_value (builder,
                                       track->ring[(track->seq - 1) % PG_STATUS_TRACE_LINES]);
        json_builder_end_object (builder);
        json = pg_status_json_finish (builder, NULL);
        for (GList *l = self->subscribers.head; l != NULL; l = l->next)
          {
            PgStatusSubscriber *sub = l->data;
            if (sub->trace_all || sub->trace_id == sid)
              pg_status_subscriber_send (sub, "trace", json);
          }
        return;
      }
    }
}

/* --- HTTP ----------------------------------------------------------------------------- */

static void
pg_status_server_respond (SoupServerMessage *msg, guint status, const char *type, gchar *body,
                          gsize len)
{
  SoupMessageHeaders *headers = soup_server_message_get_response_headers (msg);

  soup_message_headers_replace (headers, "Cache-Control", "no-store");
  soup_message_headers_replace (headers, "X-Content-Type-Options", "nosniff");
  soup_server_message_set_status (msg, status, NULL);
  if (body != NULL)
    soup_server_message_set_response (msg, type, SOUP_MEMORY_TAKE, body, len);
}

static void
pg_status_server_error (SoupServerMessage *msg, guint status)
{
  gchar *body = g_strdup_printf ("{\"error\":\"%s\"}", soup_status_get_phrase (status));

  pg_status_server_respond (msg, status, "application/json", body, strlen (body));
}

static void
pg_status_server_serve_file (SoupServerMessage *msg, const char *name, const char *type)
{
  g_autofree gchar *path = g_strconcat ("/org/popgate/status/", name, NULL);
  g_autoptr (GBytes) bytes = g_resource_lookup_data (pg_status_get_resource (), path,
                                                     G_RESOURCE_LOOKUP_FLAGS_NONE, NULL);
  SoupMessageHeaders *headers = soup_server_message_get_response_headers (msg);
  gsize len = 0;
  const char *data;

  if (bytes == NULL)
    {
      pg_status_server_error (msg, SOUP_STATUS_NOT_FOUND);
      return;
    }
  data = g_bytes_get_data (bytes, &len);
  /* Everything the page needs is served from here: nothing external may load. */
  soup_message_headers_replace (headers, "Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
  soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
  soup_server_message_set_response (msg, type, SOUP_MEMORY_COPY, data, len);
}

/* ?trace=all or ?trace=ID: which trace lines the stream carries (none without). */
static void
pg_status_server_serve_events (PgStatusServer *self, SoupServerMessage *msg, GHashTable *query)
{
  const char *trace = query != NULL ? g_hash_table_lookup (query, "trace") : NULL;
  SoupMessageHeaders *headers = soup_server_message_get_response_headers (msg);
  PgStatusSubscriber *sub;
  g_autofree gchar *snapshot = NULL;

  if (self->subscribers.length >= PG_STATUS_MAX_SUBSCRIBERS)
    {
      soup_message_headers_replace (headers, "Retry-After", "10");
      pg_status_server_error (msg, SOUP_STATUS_SERVICE_UNAVAILABLE);
      return;
    }
  soup_message_headers_set_encoding (headers, SOUP_ENCODING_CHUNKED);
  soup_message_headers_set_content_type (headers, "text/event-stream", NULL);
  soup_message_headers_replace (headers, "Cache-Control", "no-store");
  soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
  soup_message_body_set_accumulate (soup_server_message_get_response_body (msg), FALSE);

  sub = g_new0 (PgStatusSubscriber, 1);
  sub->server = self;
  sub->msg = g_object_ref (msg);
  sub->pending = g_string_new ("retry: 2000\n\n");
  sub->trace_all = g_strcmp0 (trace, "all") == 0;
  if (trace != NULL && !sub->trace_all)
    g_ascii_string_to_unsigned (trace, 10, 1, G_MAXUINT64, &sub->trace_id, NULL);
  sub->link.data = sub;
  g_queue_push_tail_link (&self->subscribers, &sub->link);
  g_signal_connect (msg, "wrote-chunk", G_CALLBACK (pg_status_subscriber_wrote_chunk_cb), sub);
  g_signal_connect (msg, "finished", G_CALLBACK (pg_status_subscriber_finished_cb), sub);
  if (soup_server_message_get_socket (msg) != NULL)
    {
      sub->hangup = g_socket_create_source (soup_server_message_get_socket (msg),
                                            G_IO_IN | G_IO_HUP | G_IO_ERR, NULL);
      g_source_set_callback (sub->hangup, G_SOURCE_FUNC (pg_status_subscriber_hangup_cb), sub,
                             NULL);
      g_source_attach (sub->hangup, NULL);
    }
  /* The stream starts with every session as it is now, then follows the changes. */
  snapshot = pg_status_json_sessions (&self->recent, NULL);
  pg_status_subscriber_send (sub, "sessions", snapshot);
  if (self->tick == NULL)
    {
      self->tick = g_timeout_source_new (PG_STATUS_TICK_MS);
      g_source_set_callback (self->tick, pg_status_server_tick_cb, self, NULL);
      g_source_attach (self->tick, NULL);
    }
}

/* "/api/sessions/ID/trace" → ID */
static gboolean
pg_status_server_parse_trace_path (const char *path, guint64 *out_id)
{
  const char *rest;
  const char *slash;
  g_autofree gchar *number = NULL;

  if (!g_str_has_prefix (path, "/api/sessions/"))
    return FALSE;
  rest = path + strlen ("/api/sessions/");
  slash = strchr (rest, '/');
  if (slash == NULL || strcmp (slash, "/trace") != 0)
    return FALSE;
  number = g_strndup (rest, (gsize) (slash - rest));
  return g_ascii_string_to_unsigned (number, 10, 1, G_MAXUINT64, out_id, NULL);
}

static gboolean
pg_status_server_is_loopback_client (SoupServerMessage *msg)
{
  GSocketAddress *remote = soup_server_message_get_remote_address (msg);
  GInetAddress *inet;

  if (!G_IS_INET_SOCKET_ADDRESS (remote))
    return FALSE;
  inet = g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (remote));
  if (g_inet_address_get_is_loopback (inet))
    return TRUE;
  /* ::ffff:127.0.0.1 on a dual-stack socket */
  if (g_inet_address_get_family (inet) == G_SOCKET_FAMILY_IPV6)
    {
      const guint8 *b = g_inet_address_to_bytes (inet);
      static const guint8 mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
      return memcmp (b, mapped, sizeof mapped) == 0 && b[12] == 127;
    }
  return FALSE;
}

static void
pg_status_server_handle_cb (SoupServer *server, SoupServerMessage *msg, const char *path,
                            GHashTable *query, gpointer user_data)
{
  PgStatusServer *self = user_data;
  const char *method = soup_server_message_get_method (msg);
  guint64 id = 0;

  if (!self->config->status.allow_remote && !pg_status_server_is_loopback_client (msg))
    {
      pg_status_server_error (msg, SOUP_STATUS_FORBIDDEN);
      return;
    }
  if (method != SOUP_METHOD_GET && method != SOUP_METHOD_HEAD)
    {
      soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Allow",
                                    "GET, HEAD");
      pg_status_server_error (msg, SOUP_STATUS_METHOD_NOT_ALLOWED);
      return;
    }
  if (strcmp (path, "/") == 0 || strcmp (path, "/index.html") == 0)
    pg_status_server_serve_file (msg, "index.html", "text/html; charset=utf-8");
  else if (strcmp (path, "/status.css") == 0)
    pg_status_server_serve_file (msg, "status.css", "text/css; charset=utf-8");
  else if (strcmp (path, "/status.js") == 0)
    pg_status_server_serve_file (msg, "status.js", "text/javascript; charset=utf-8");
  else if (strcmp (path, "/api/sessions") == 0)
    {
      gsize len = 0;
      gchar *body = pg_status_json_sessions (&self->recent, &len);
      pg_status_server_respond (msg, SOUP_STATUS_OK, "application/json", body, len);
    }
  else if (pg_status_server_parse_trace_path (path, &id))
    {
      PgStatusTrack *track = pg_status_server_find_track (self, id);
      gsize len = 0;
      gchar *body;

      if (track == NULL)
        {
          pg_status_server_error (msg, SOUP_STATUS_NOT_FOUND);
          return;
        }
      body = pg_status_json_trace (track, &len);
      pg_status_server_respond (msg, SOUP_STATUS_OK, "application/json", body, len);
    }
  else if (strcmp (path, "/api/events") == 0 && method == SOUP_METHOD_GET)
    pg_status_server_serve_events (self, msg, query);
  else
    pg_status_server_error (msg, SOUP_STATUS_NOT_FOUND);
}

/* Basic auth applies only when [status] auth_file names users. */
static gboolean
pg_status_server_auth_filter_cb (SoupAuthDomain *domain, SoupServerMessage *msg, gpointer user_data)
{
  PgStatusServer *self = user_data;

  return self->config != NULL && self->config->status.users != NULL;
}

static gboolean
pg_status_server_auth_cb (SoupAuthDomain *domain, SoupServerMessage *msg, const char *username,
                          const char *password, gpointer user_data)
{
  PgStatusServer *self = user_data;

  return pg_config_status_check_user (self->config, username, password);
}

/* --- lifecycle ------------------------------------------------------------------------ */

static void
pg_status_server_close (PgStatusServer *self)
{
  /* Subscribers first: disconnecting the server finishes their messages. */
  while (self->subscribers.head != NULL)
    pg_status_server_remove_subscriber (self, self->subscribers.head->data);
  if (self->soup != NULL)
    {
      soup_server_disconnect (self->soup);
      g_clear_object (&self->soup);
      pg_status_set_observer (NULL, NULL);
    }
  g_clear_pointer (&self->listen_key, g_free);
  g_hash_table_remove_all (self->tracks);
  self->n_rings = 0;
  g_queue_clear_full (&self->recent, (GDestroyNotify) pg_status_track_free);
}

static void
pg_status_server_finalize (GObject *object)
{
  PgStatusServer *self = PG_STATUS_SERVER (object);

  pg_status_server_close (self);
  g_hash_table_unref (self->tracks);
  g_clear_pointer (&self->config, pg_config_unref);
  G_OBJECT_CLASS (pg_status_server_parent_class)->finalize (object);
}

static void
pg_status_server_class_init (PgStatusServerClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pg_status_server_finalize;
}

static void
pg_status_server_init (PgStatusServer *self)
{
  self->tracks = g_hash_table_new_full (g_int64_hash, g_int64_equal, NULL,
                                        (GDestroyNotify) pg_status_track_free);
  g_queue_init (&self->subscribers);
}

PgStatusServer *
pg_status_server_new (void)
{
  return g_object_new (PG_TYPE_STATUS_SERVER, NULL);
}

static gchar *
pg_status_server_listen_key (PgConfig *config)
{
  GString *key = g_string_new (NULL);

  for (guint i = 0; i < config->status.listen->len; i++)
    {
      g_autofree gchar *addr
          = pg_listen_addr_to_string (g_ptr_array_index (config->status.listen, i));
      g_string_append_printf (key, "%s,", addr);
    }
  return g_string_free (key, FALSE);
}

gboolean
pg_status_server_apply (PgStatusServer *self, PgConfig *config, GError **error)
{
  g_autofree gchar *key = NULL;
  g_autoptr (SoupServer) soup = NULL;
  g_autoptr (SoupAuthDomain) domain = NULL;

  g_return_val_if_fail (PG_IS_STATUS_SERVER (self), FALSE);
  key = pg_status_server_listen_key (config);
  if (self->soup != NULL && g_strcmp0 (key, self->listen_key) == 0)
    {
      pg_config_unref (self->config);
      self->config = pg_config_ref (config);
      return TRUE;
    }
  if (config->status.listen->len > 0)
    {
      soup = soup_server_new ("server-header", "popgate/" PG_VERSION, NULL);
      for (guint i = 0; i < config->status.listen->len; i++)
        if (!pg_metrics_server_listen_on (soup, g_ptr_array_index (config->status.listen, i),
                                          "status", error))
          {
            soup_server_disconnect (soup);
            return FALSE;
          }
      domain = soup_auth_domain_basic_new ("realm", "popgate status", NULL);
      soup_auth_domain_add_path (domain, "/");
      soup_auth_domain_set_filter (domain, pg_status_server_auth_filter_cb, self, NULL);
      soup_auth_domain_basic_set_auth_callback (domain, pg_status_server_auth_cb, self, NULL);
      soup_server_add_auth_domain (soup, domain);
      soup_server_add_handler (soup, "/", pg_status_server_handle_cb, self, NULL);
    }
  pg_status_server_close (self);
  g_clear_pointer (&self->config, pg_config_unref);
  self->config = pg_config_ref (config);
  if (soup == NULL)
    return TRUE;
  self->soup = g_steal_pointer (&soup);
  self->listen_key = g_steal_pointer (&key);
  pg_status_set_observer (pg_status_server_observe_cb, self);
  return TRUE;
}

GPtrArray *
pg_status_server_get_bound_addresses (PgStatusServer *self)
{
  GPtrArray *bound = g_ptr_array_new_with_free_func (g_free);

  g_return_val_if_fail (PG_IS_STATUS_SERVER (self), bound);
  if (self->soup != NULL)
    pg_metrics_server_append_addresses (self->soup, bound);
  return bound;
}

guint
pg_status_server_get_n_subscribers (PgStatusServer *self)
{
  g_return_val_if_fail (PG_IS_STATUS_SERVER (self), 0);
  return self->subscribers.length;
}

guint
pg_status_server_get_n_dropped (PgStatusServer *self)
{
  g_return_val_if_fail (PG_IS_STATUS_SERVER (self), 0);
  return self->n_dropped;
}
