/* popgate — metrics registry and its OpenMetrics / Prometheus text rendering.
 *
 * Every series of a family is allocated when the family is registered: the hot path
 * (a session changing state, a tagged reply, a socket read) is an index and an add.
 * Histograms keep per-bucket (non-cumulative) counts and the sum in integer microseconds,
 * so the rendered text is exact and the same on every machine.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-metrics.h"

#include "pg-build-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <gio/gio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define PG_METRICS_MAX_LABELS 2

struct _PgMetricsFamily
{
  PgMetricsType type;
  const char *name; /* unowned: static */
  const char *help; /* unowned: static */
  const char *unit; /* unowned: static; NULL: none */
  PgMetricsLabel labels[PG_METRICS_MAX_LABELS];
  guint n_labels;
  guint n_values[PG_METRICS_MAX_LABELS]; /* 1 for an absent label */
  guint n_series;
  guint64 *bounds_us; /* owned: histogram bucket bounds, n_buckets of them (+Inf implied) */
  guint n_buckets;
  gint64 *values;   /* owned: counters and gauges, one per series */
  guint64 *buckets; /* owned: histograms, (n_buckets + 1) per series, not cumulative */
  guint64 *sums_us; /* owned: histograms, one per series */
};

struct _PgMetricsRegistry
{
  GPtrArray *families; /* owned, of PgMetricsFamily* */
};

static void
pg_metrics_family_free (PgMetricsFamily *family)
{
  g_free (family->bounds_us);
  g_free (family->values);
  g_free (family->buckets);
  g_free (family->sums_us);
  g_free (family);
}

PgMetricsRegistry *
pg_metrics_registry_new (void)
{
  PgMetricsRegistry *registry = g_new0 (PgMetricsRegistry, 1);

  registry->families = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_metrics_family_free);
  return registry;
}

void
pg_metrics_registry_free (PgMetricsRegistry *registry)
{
  if (registry == NULL)
    return;
  g_ptr_array_unref (registry->families);
  g_free (registry);
}

PgMetricsFamily *
pg_metrics_registry_add (PgMetricsRegistry *registry, PgMetricsType type, const char *name,
                         const char *help, const PgMetricsLabel *labels, guint n_labels,
                         const guint64 *buckets_us, guint n_buckets)
{
  PgMetricsFamily *family;

  g_return_val_if_fail (registry != NULL && name != NULL && help != NULL, NULL);
  g_return_val_if_fail (n_labels <= PG_METRICS_MAX_LABELS, NULL);
  g_return_val_if_fail (type == PG_METRICS_HISTOGRAM || n_buckets == 0, NULL);

  family = g_new0 (PgMetricsFamily, 1);
  family->type = type;
  family->name = name;
  family->help = help;
  family->n_labels = n_labels;
  family->n_series = 1;
  for (guint l = 0; l < PG_METRICS_MAX_LABELS; l++)
    {
      family->n_values[l] = 1;
      if (l < n_labels)
        {
          family->labels[l] = labels[l];
          family->n_values[l] = g_strv_length ((gchar **) labels[l].values);
          g_return_val_if_fail (family->n_values[l] > 0, NULL);
        }
      family->n_series *= family->n_values[l];
    }
  if (type == PG_METRICS_HISTOGRAM)
    {
      for (guint b = 1; b < n_buckets; b++)
        g_return_val_if_fail (buckets_us[b - 1] < buckets_us[b], NULL);
      family->n_buckets = n_buckets;
      family->bounds_us = g_memdup2 (buckets_us, sizeof (guint64) * n_buckets);
      family->buckets = g_new0 (guint64, (gsize) family->n_series * (n_buckets + 1));
      family->sums_us = g_new0 (guint64, family->n_series);
    }
  else
    family->values = g_new0 (gint64, family->n_series);
  g_ptr_array_add (registry->families, family);
  return family;
}

static gboolean
pg_metrics_family_index (PgMetricsFamily *family, guint i1, guint i2, guint *out_index)
{
  if (family == NULL || i1 >= family->n_values[0] || i2 >= family->n_values[1])
    return FALSE;
  *out_index = i1 * family->n_values[1] + i2;
  return TRUE;
}

void
pg_metrics_family_set_unit (PgMetricsFamily *family, const char *unit)
{
  g_return_if_fail (family != NULL && unit != NULL);
  g_return_if_fail (g_str_has_suffix (family->name, unit));
  family->unit = unit;
}

void
pg_metrics_family_add (PgMetricsFamily *family, guint i1, guint i2, gint64 delta)
{
  guint index = 0;

  g_return_if_fail (pg_metrics_family_index (family, i1, i2, &index));
  g_return_if_fail (family->type != PG_METRICS_HISTOGRAM);
  family->values[index] += delta;
}

void
pg_metrics_family_set (PgMetricsFamily *family, guint i1, guint i2, gint64 value)
{
  guint index = 0;

  g_return_if_fail (pg_metrics_family_index (family, i1, i2, &index));
  g_return_if_fail (family->type != PG_METRICS_HISTOGRAM);
  family->values[index] = value;
}

gint64
pg_metrics_family_get (PgMetricsFamily *family, guint i1, guint i2)
{
  guint index = 0;

  g_return_val_if_fail (pg_metrics_family_index (family, i1, i2, &index), 0);
  g_return_val_if_fail (family->type != PG_METRICS_HISTOGRAM, 0);
  return family->values[index];
}

void
pg_metrics_family_observe_us (PgMetricsFamily *family, guint i1, guint i2, guint64 us)
{
  guint index = 0;
  guint b = 0;

  g_return_if_fail (pg_metrics_family_index (family, i1, i2, &index));
  g_return_if_fail (family->type == PG_METRICS_HISTOGRAM);
  while (b < family->n_buckets && us > family->bounds_us[b])
    b++;
  family->buckets[(gsize) index * (family->n_buckets + 1) + b]++;
  family->sums_us[index] += us;
}

void
pg_metrics_family_get_histogram (PgMetricsFamily *family, guint i1, guint i2, guint64 *out_count,
                                 guint64 *out_sum_us)
{
  guint index = 0;
  guint64 count = 0;

  g_return_if_fail (pg_metrics_family_index (family, i1, i2, &index));
  g_return_if_fail (family->type == PG_METRICS_HISTOGRAM);
  for (guint b = 0; b <= family->n_buckets; b++)
    count += family->buckets[(gsize) index * (family->n_buckets + 1) + b];
  if (out_count != NULL)
    *out_count = count;
  if (out_sum_us != NULL)
    *out_sum_us = family->sums_us[index];
}

/* --- rendering ------------------------------------------------------------------------- */

const char *
pg_metrics_format_content_type (PgMetricsFormat format)
{
  switch (format)
    {
    case PG_METRICS_FORMAT_OPENMETRICS:
      return "application/openmetrics-text; version=1.0.0; charset=utf-8";
    case PG_METRICS_FORMAT_PROMETHEUS:
      return "text/plain; version=0.0.4; charset=utf-8";
    }
  g_return_val_if_reached (NULL);
}

void
pg_metrics_escape_label_value (GString *out, const char *value)
{
  for (const char *p = value; *p != '\0'; p++)
    {
      if (*p == '\\')
        g_string_append (out, "\\\\");
      else if (*p == '"')
        g_string_append (out, "\\\"");
      else if (*p == '\n')
        g_string_append (out, "\\n");
      else
        g_string_append_c (out, *p);
    }
}

/* HELP text: OpenMetrics escapes like a label value; Prometheus 0.0.4 leaves '"' alone. */
static void
pg_metrics_escape_help (GString *out, const char *help, PgMetricsFormat format)
{
  for (const char *p = help; *p != '\0'; p++)
    {
      if (*p == '\\')
        g_string_append (out, "\\\\");
      else if (*p == '\n')
        g_string_append (out, "\\n");
      else if (*p == '"' && format == PG_METRICS_FORMAT_OPENMETRICS)
        g_string_append (out, "\\\"");
      else
        g_string_append_c (out, *p);
    }
}

/* Seconds from microseconds, exactly: "0.0025", "1.0", "0.0". */
static void
pg_metrics_append_seconds (GString *out, guint64 us)
{
  char frac[8];
  int len;

  g_snprintf (frac, sizeof frac, "%06u", (guint) (us % G_USEC_PER_SEC));
  len = 6;
  while (len > 1 && frac[len - 1] == '0')
    len--;
  frac[len] = '\0';
  g_string_append_printf (out, "%" G_GUINT64_FORMAT ".%s", us / G_USEC_PER_SEC, frac);
}

/* "{a="x",b="y"" without the closing brace, so a caller can add le; `open` says whether
 * anything was written. */
static gboolean
pg_metrics_append_labels (GString *out, const PgMetricsFamily *family, guint i1, guint i2)
{
  const guint idx[PG_METRICS_MAX_LABELS] = { i1, i2 };

  for (guint l = 0; l < family->n_labels; l++)
    {
      g_string_append (out, l == 0 ? "{" : ",");
      g_string_append (out, family->labels[l].name);
      g_string_append (out, "=\"");
      pg_metrics_escape_label_value (out, family->labels[l].values[idx[l]]);
      g_string_append_c (out, '"');
    }
  return family->n_labels > 0;
}

static void
pg_metrics_render_header (GString *out, const PgMetricsFamily *family, PgMetricsFormat format)
{
  static const char *const type_names[] = { "counter", "gauge", "histogram", "info" };
  const char *suffix = "";
  const char *type = type_names[family->type];
  const char *unit = family->unit;

  /* Prometheus 0.0.4 names a counter family by its sample name, and has no info type. */
  if (format == PG_METRICS_FORMAT_PROMETHEUS && family->type == PG_METRICS_COUNTER)
    suffix = "_total";
  if (format == PG_METRICS_FORMAT_PROMETHEUS && family->type == PG_METRICS_INFO)
    {
      suffix = "_info";
      type = "gauge";
    }
  if (unit == NULL && family->type == PG_METRICS_HISTOGRAM
      && g_str_has_suffix (family->name, "_seconds"))
    unit = "seconds";
  g_string_append_printf (out, "# TYPE %s%s %s\n", family->name, suffix, type);
  if (format == PG_METRICS_FORMAT_OPENMETRICS && unit != NULL)
    g_string_append_printf (out, "# UNIT %s %s\n", family->name, unit);
  g_string_append_printf (out, "# HELP %s%s ", family->name, suffix);
  pg_metrics_escape_help (out, family->help, format);
  g_string_append_c (out, '\n');
}

static void
pg_metrics_render_histogram_series (GString *out, const PgMetricsFamily *family, guint i1, guint i2,
                                    guint index)
{
  const guint64 *counts = family->buckets + (gsize) index * (family->n_buckets + 1);
  guint64 cumulative = 0;

  for (guint b = 0; b <= family->n_buckets; b++)
    {
      cumulative += counts[b];
      g_string_append_printf (out, "%s_bucket", family->name);
      g_string_append (out, pg_metrics_append_labels (out, family, i1, i2) ? ",le=\"" : "{le=\"");
      if (b < family->n_buckets)
        pg_metrics_append_seconds (out, family->bounds_us[b]);
      else
        g_string_append (out, "+Inf");
      g_string_append_printf (out, "\"} %" G_GUINT64_FORMAT "\n", cumulative);
    }
  g_string_append_printf (out, "%s_sum", family->name);
  if (pg_metrics_append_labels (out, family, i1, i2))
    g_string_append_c (out, '}');
  g_string_append_c (out, ' ');
  pg_metrics_append_seconds (out, family->sums_us[index]);
  g_string_append_printf (out, "\n%s_count", family->name);
  if (pg_metrics_append_labels (out, family, i1, i2))
    g_string_append_c (out, '}');
  g_string_append_printf (out, " %" G_GUINT64_FORMAT "\n", cumulative);
}

void
pg_metrics_registry_render (PgMetricsRegistry *registry, PgMetricsFormat format, GString *out)
{
  for (guint f = 0; f < registry->families->len; f++)
    {
      const PgMetricsFamily *family = g_ptr_array_index (registry->families, f);

      pg_metrics_render_header (out, family, format);
      for (guint i1 = 0; i1 < family->n_values[0]; i1++)
        for (guint i2 = 0; i2 < family->n_values[1]; i2++)
          {
            guint index = i1 * family->n_values[1] + i2;

            if (family->type == PG_METRICS_HISTOGRAM)
              {
                pg_metrics_render_histogram_series (out, family, i1, i2, index);
                continue;
              }
            g_string_append (out, family->name);
            if (family->type == PG_METRICS_COUNTER)
              g_string_append (out, "_total");
            else if (family->type == PG_METRICS_INFO)
              g_string_append (out, "_info");
            if (pg_metrics_append_labels (out, family, i1, i2))
              g_string_append_c (out, '}');
            if (g_strcmp0 (family->unit, "seconds") == 0 && family->values[index] >= 0)
              {
                g_string_append_c (out, ' ');
                pg_metrics_append_seconds (out, (guint64) family->values[index]);
                g_string_append_c (out, '\n');
              }
            else
              g_string_append_printf (out, " %" G_GINT64_FORMAT "\n", family->values[index]);
          }
    }
  g_string_append (out, "# EOF\n");
}

/* --- popgate's metrics ------------------------------------------------------------------- */

static const char *const pg_metrics_frontend_values[] = { "pop3", "imap", NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_frontend_values) == PG_METRICS_FRONTEND_COUNT + 1);
static const char *const pg_metrics_state_values[]
    = { "preauth", "authenticated", "idle", "update", NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_state_values) == PG_METRICS_SESSION_COUNT + 1);
static const char *const pg_metrics_login_values[]
    = { "ok", "auth_failed", "upstream_unavailable", "in_use", NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_login_values) == PG_METRICS_LOGIN_COUNT + 1);
static const char *const pg_metrics_direction_values[] = { "in", "out", NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_direction_values) == PG_METRICS_DIRECTION_COUNT + 1);
static const char *const pg_metrics_dele_values[] = { "expunged", "moved", "kept", "failed", NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_dele_values) == PG_METRICS_DELE_COUNT + 1);
static const char *const pg_metrics_error_values[]
    = { "protocol", "line_too_long", "limit", "auth_failed", "upstream", "tls",
        "config",   "timeout",       "io",    "other",       NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_error_values) == PG_METRICS_ERROR_COUNT + 1);
static const char *const pg_metrics_version_values[] = { PG_VERSION, NULL };
static const char *const pg_metrics_mechanism_values[]
    = { "plain", "login", "xoauth2", "oauthbearer", NULL };
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_mechanism_values) == PG_METRICS_MECHANISM_COUNT + 1);
static const char *const pg_metrics_result_values[] = { "ok", "failed", NULL };

/* Upstream commands by the name popgate sends them under, "UID " dropped. */
typedef enum
{
  PG_METRICS_CMD_CAPABILITY,
  PG_METRICS_CMD_STARTTLS,
  PG_METRICS_CMD_ID,
  PG_METRICS_CMD_LOGIN,
  PG_METRICS_CMD_AUTHENTICATE,
  PG_METRICS_CMD_SELECT,
  PG_METRICS_CMD_EXAMINE,
  PG_METRICS_CMD_FETCH,
  PG_METRICS_CMD_STORE,
  PG_METRICS_CMD_EXPUNGE,
  PG_METRICS_CMD_MOVE,
  PG_METRICS_CMD_COPY,
  PG_METRICS_CMD_GETMETADATA,
  PG_METRICS_CMD_SETMETADATA,
  PG_METRICS_CMD_NOOP,
  PG_METRICS_CMD_LOGOUT,
  PG_METRICS_CMD_OTHER,
  PG_METRICS_CMD_COUNT,
} PgMetricsCommand;

static const char *const pg_metrics_command_values[] = {
  "CAPABILITY",  "STARTTLS",    "ID",    "LOGIN",   "AUTHENTICATE", "SELECT",
  "EXAMINE",     "FETCH",       "STORE", "EXPUNGE", "MOVE",         "COPY",
  "GETMETADATA", "SETMETADATA", "NOOP",  "LOGOUT",  "OTHER",        NULL,
};
G_STATIC_ASSERT (G_N_ELEMENTS (pg_metrics_command_values) == PG_METRICS_CMD_COUNT + 1);

/* From 1 ms (a LAN round trip) to 30 s (the edge of the default command timeout). */
static const guint64 pg_metrics_latency_buckets_us[] = {
  1000,   2500,   5000,    10000,   25000,   50000,    100000,
  250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
};

typedef struct
{
  PgMetricsRegistry *registry; /* owned */
  PgMetricsFamily *build_info; /* unowned: the registry's, as are the rest */
  PgMetricsFamily *sessions;
  PgMetricsFamily *sessions_started;
  PgMetricsFamily *logins;
  PgMetricsFamily *client_bytes;
  PgMetricsFamily *dele;
  PgMetricsFamily *errors;
  PgMetricsFamily *upstream_latency;
  /* The process_* families of the Prometheus client libraries, read at each render. */
  PgMetricsFamily *process_cpu;
  PgMetricsFamily *process_resident;
  PgMetricsFamily *process_virtual;
  PgMetricsFamily *process_open_fds;
  PgMetricsFamily *process_max_fds;
  PgMetricsFamily *process_start_time;
  PgMetricsFamily *upstream_logins;
  PgMetricsFamily *login_penalties;
  /* NULL until the first refresh: its upstream label takes the names as they come. */
  PgMetricsFamily *oauth2_refreshes;
  gchar *oauth2_upstreams[PG_METRICS_MAX_UPSTREAMS + 1]; /* owned, NULL-terminated */
  guint n_oauth2_upstreams;
} PgMetricsDefault;

static PgMetricsDefault pg_metrics_default;

static void
pg_metrics_default_init (void)
{
  PgMetricsDefault *m = &pg_metrics_default;
  const PgMetricsLabel version[] = { { "version", pg_metrics_version_values } };
  const PgMetricsLabel frontend_state[]
      = { { "frontend", pg_metrics_frontend_values }, { "state", pg_metrics_state_values } };
  const PgMetricsLabel frontend[] = { { "frontend", pg_metrics_frontend_values } };
  const PgMetricsLabel frontend_result[]
      = { { "frontend", pg_metrics_frontend_values }, { "result", pg_metrics_login_values } };
  const PgMetricsLabel frontend_direction[] = { { "frontend", pg_metrics_frontend_values },
                                                { "direction", pg_metrics_direction_values } };
  const PgMetricsLabel outcome[] = { { "outcome", pg_metrics_dele_values } };
  const PgMetricsLabel kind[] = { { "kind", pg_metrics_error_values } };
  const PgMetricsLabel command[] = { { "command", pg_metrics_command_values } };
  const PgMetricsLabel mechanism[] = { { "mechanism", pg_metrics_mechanism_values } };
  static const char *const scope_values[] = { "address", "global", NULL };
  const PgMetricsLabel penalty_scope[] = { { "scope", scope_values } };

  m->registry = pg_metrics_registry_new ();
  m->build_info = pg_metrics_registry_add (m->registry, PG_METRICS_INFO, "popgate_build",
                                           "popgate's version.", version, 1, NULL, 0);
  pg_metrics_family_set (m->build_info, 0, 0, 1);
  m->sessions = pg_metrics_registry_add (m->registry, PG_METRICS_GAUGE, "popgate_sessions",
                                         "Client sessions now, by front end and state.",
                                         frontend_state, 2, NULL, 0);
  m->sessions_started
      = pg_metrics_registry_add (m->registry, PG_METRICS_COUNTER, "popgate_sessions_started",
                                 "Client sessions started, by front end.", frontend, 1, NULL, 0);
  m->logins = pg_metrics_registry_add (m->registry, PG_METRICS_COUNTER, "popgate_logins",
                                       "Login attempts, by front end and result.", frontend_result,
                                       2, NULL, 0);
  m->client_bytes = pg_metrics_registry_add (
      m->registry, PG_METRICS_COUNTER, "popgate_client_bytes",
      "Bytes from (in) and to (out) clients, by front end.", frontend_direction, 2, NULL, 0);
  pg_metrics_family_set_unit (m->client_bytes, "bytes");
  m->dele = pg_metrics_registry_add (m->registry, PG_METRICS_COUNTER, "popgate_pop3_dele_messages",
                                     "Messages POP3 clients deleted, by what QUIT did with them.",
                                     outcome, 1, NULL, 0);
  m->errors = pg_metrics_registry_add (m->registry, PG_METRICS_COUNTER, "popgate_errors",
                                       "Errors, by kind.", kind, 1, NULL, 0);
  m->upstream_latency = pg_metrics_registry_add (
      m->registry, PG_METRICS_HISTOGRAM, "popgate_upstream_command_duration_seconds",
      "Upstream IMAP command latency, from sending to the tagged reply, by command.", command, 1,
      pg_metrics_latency_buckets_us, G_N_ELEMENTS (pg_metrics_latency_buckets_us));
  m->login_penalties = pg_metrics_registry_add (
      m->registry, PG_METRICS_COUNTER, "popgate_login_penalties",
      "Failed logins answered later than auth_failure_delay: the address had failed before "
      "(address), or the process-wide failure rate was over its limit (global).",
      penalty_scope, 1, NULL, 0);
  m->upstream_logins = pg_metrics_registry_add (
      m->registry, PG_METRICS_COUNTER, "popgate_upstream_logins",
      "Successful upstream logins, by SASL mechanism (or LOGIN).", mechanism, 1, NULL, 0);

  m->process_cpu
      = pg_metrics_registry_add (m->registry, PG_METRICS_COUNTER, "process_cpu_seconds",
                                 "User and system CPU time spent, in seconds.", NULL, 0, NULL, 0);
  pg_metrics_family_set_unit (m->process_cpu, "seconds");
  m->process_resident
      = pg_metrics_registry_add (m->registry, PG_METRICS_GAUGE, "process_resident_memory_bytes",
                                 "Resident memory size in bytes.", NULL, 0, NULL, 0);
  pg_metrics_family_set_unit (m->process_resident, "bytes");
  m->process_virtual
      = pg_metrics_registry_add (m->registry, PG_METRICS_GAUGE, "process_virtual_memory_bytes",
                                 "Virtual memory size in bytes.", NULL, 0, NULL, 0);
  pg_metrics_family_set_unit (m->process_virtual, "bytes");
  m->process_open_fds = pg_metrics_registry_add (m->registry, PG_METRICS_GAUGE, "process_open_fds",
                                                 "Open file descriptors.", NULL, 0, NULL, 0);
  m->process_max_fds
      = pg_metrics_registry_add (m->registry, PG_METRICS_GAUGE, "process_max_fds",
                                 "The limit of open file descriptors.", NULL, 0, NULL, 0);
  m->process_start_time = pg_metrics_registry_add (
      m->registry, PG_METRICS_GAUGE, "process_start_time_seconds",
      "Start time of the process since the Unix epoch, in seconds.", NULL, 0, NULL, 0);
  pg_metrics_family_set_unit (m->process_start_time, "seconds");
}

/* The process_* families from /proc/self (Linux), as the Prometheus client libraries
 * compute them. /proc is in memory: reading it does not block like a disk. Values that
 * cannot be read stay as they were. */
static void
pg_metrics_collect_process (PgMetricsDefault *m)
{
  g_autofree gchar *stat = NULL;
  g_autofree gchar *statm = NULL;
  g_autofree gchar *proc_stat = NULL;
  g_autoptr (GDir) fds = NULL;
  struct rlimit limit;
  long ticks = sysconf (_SC_CLK_TCK);
  long page = sysconf (_SC_PAGESIZE);

  /* Fields after the command name, which is in parentheses and may hold anything. */
  if (ticks > 0 && g_file_get_contents ("/proc/self/stat", &stat, NULL, NULL)
      && strrchr (stat, ')') != NULL)
    {
      g_auto (GStrv) f = g_strsplit (strrchr (stat, ')') + 2, " ", -1);

      /* f[0] is field 3 (state): utime is field 14, stime 15, starttime 22. */
      if (g_strv_length (f) > 19)
        {
          guint64 cpu_ticks
              = g_ascii_strtoull (f[11], NULL, 10) + g_ascii_strtoull (f[12], NULL, 10);
          guint64 start_ticks = g_ascii_strtoull (f[19], NULL, 10);
          const char *btime = NULL;

          pg_metrics_family_set (m->process_cpu, 0, 0,
                                 (gint64) (cpu_ticks * G_USEC_PER_SEC / (guint64) ticks));
          if (g_file_get_contents ("/proc/stat", &proc_stat, NULL, NULL)
              && (btime = strstr (proc_stat, "\nbtime ")) != NULL)
            pg_metrics_family_set (m->process_start_time, 0, 0,
                                   (gint64) (g_ascii_strtoull (btime + 7, NULL, 10) * G_USEC_PER_SEC
                                             + start_ticks * G_USEC_PER_SEC / (guint64) ticks));
        }
    }
  if (page > 0 && g_file_get_contents ("/proc/self/statm", &statm, NULL, NULL))
    {
      g_auto (GStrv) f = g_strsplit (statm, " ", -1);

      if (g_strv_length (f) >= 2)
        {
          pg_metrics_family_set (m->process_virtual, 0, 0,
                                 (gint64) g_ascii_strtoull (f[0], NULL, 10) * page);
          pg_metrics_family_set (m->process_resident, 0, 0,
                                 (gint64) g_ascii_strtoull (f[1], NULL, 10) * page);
        }
    }
  fds = g_dir_open ("/proc/self/fd", 0, NULL);
  if (fds != NULL)
    {
      gint64 n = 0;

      while (g_dir_read_name (fds) != NULL)
        n++;
      /* Not counting the one GDir holds open to list them. */
      pg_metrics_family_set (m->process_open_fds, 0, 0, MAX (n - 1, 0));
    }
  if (getrlimit (RLIMIT_NOFILE, &limit) == 0)
    pg_metrics_family_set (m->process_max_fds, 0, 0,
                           limit.rlim_cur == RLIM_INFINITY ? G_MAXINT64 : (gint64) limit.rlim_cur);
}

static inline PgMetricsDefault *
pg_metrics_default_get (void)
{
  if (G_UNLIKELY (pg_metrics_default.registry == NULL))
    pg_metrics_default_init ();
  return &pg_metrics_default;
}

PgMetricsRegistry *
pg_metrics_get_default (void)
{
  return pg_metrics_default_get ()->registry;
}

void
pg_metrics_shutdown (void)
{
  g_clear_pointer (&pg_metrics_default.registry, pg_metrics_registry_free);
  for (guint i = 0; i < pg_metrics_default.n_oauth2_upstreams; i++)
    g_free (pg_metrics_default.oauth2_upstreams[i]);
  memset (&pg_metrics_default, 0, sizeof pg_metrics_default);
}

void
pg_metrics_reset (void)
{
  pg_metrics_shutdown ();
  pg_metrics_default_init ();
}

gchar *
pg_metrics_render (PgMetricsFormat format, gsize *out_len)
{
  GString *out = g_string_sized_new (16384);
  PgMetricsDefault *m = pg_metrics_default_get ();

  pg_metrics_collect_process (m);
  pg_metrics_registry_render (m->registry, format, out);
  if (out_len != NULL)
    *out_len = out->len;
  return g_string_free (out, FALSE);
}

void
pg_metrics_session_state (PgMetricsFrontend frontend, PgMetricsSessionState from,
                          PgMetricsSessionState to)
{
  PgMetricsDefault *m = pg_metrics_default_get ();

  if (from == to)
    return;
  if (from == PG_METRICS_SESSION_NONE)
    pg_metrics_family_add (m->sessions_started, frontend, 0, 1);
  else
    pg_metrics_family_add (m->sessions, frontend, (guint) from, -1);
  if (to != PG_METRICS_SESSION_NONE)
    pg_metrics_family_add (m->sessions, frontend, (guint) to, 1);
}

void
pg_metrics_login (PgMetricsFrontend frontend, PgMetricsLogin result)
{
  pg_metrics_family_add (pg_metrics_default_get ()->logins, frontend, result, 1);
}

void
pg_metrics_client_bytes (PgMetricsFrontend frontend, PgMetricsDirection direction, guint64 n)
{
  pg_metrics_family_add (pg_metrics_default_get ()->client_bytes, frontend, direction,
                         (gint64) MIN (n, (guint64) G_MAXINT64));
}

void
pg_metrics_dele (PgMetricsDele outcome, guint n)
{
  pg_metrics_family_add (pg_metrics_default_get ()->dele, outcome, 0, n);
}

void
pg_metrics_error (PgMetricsError kind)
{
  pg_metrics_family_add (pg_metrics_default_get ()->errors, kind, 0, 1);
}

void
pg_metrics_gerror (const GError *error)
{
  PgMetricsError kind = PG_METRICS_ERROR_OTHER;

  if (error == NULL)
    return;
  if (error->domain == PG_ERROR)
    {
      switch ((PgError) error->code)
        {
        case PG_ERROR_PROTOCOL:
          kind = PG_METRICS_ERROR_PROTOCOL;
          break;
        case PG_ERROR_LINE_TOO_LONG:
          kind = PG_METRICS_ERROR_LINE_TOO_LONG;
          break;
        case PG_ERROR_LIMIT:
          kind = PG_METRICS_ERROR_LIMIT;
          break;
        case PG_ERROR_AUTH_FAILED:
          kind = PG_METRICS_ERROR_AUTH_FAILED;
          break;
        case PG_ERROR_UPSTREAM:
          kind = PG_METRICS_ERROR_UPSTREAM;
          break;
        case PG_ERROR_TLS:
          kind = PG_METRICS_ERROR_TLS;
          break;
        case PG_ERROR_CONFIG:
          kind = PG_METRICS_ERROR_CONFIG;
          break;
        case PG_ERROR_TIMEOUT:
          kind = PG_METRICS_ERROR_TIMEOUT;
          break;
        }
    }
  else if (error->domain == G_TLS_ERROR)
    kind = PG_METRICS_ERROR_TLS;
  else if (error->domain == G_IO_ERROR)
    kind = g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT) ? PG_METRICS_ERROR_TIMEOUT
                                                                     : PG_METRICS_ERROR_IO;
  pg_metrics_error (kind);
}

void
pg_metrics_upstream_command (const char *command, gint64 us)
{
  guint index = PG_METRICS_CMD_OTHER;

  if (g_str_has_prefix (command, "UID "))
    command += 4;
  for (guint i = 0; i < PG_METRICS_CMD_OTHER; i++)
    if (strcmp (command, pg_metrics_command_values[i]) == 0)
      {
        index = i;
        break;
      }
  pg_metrics_family_observe_us (pg_metrics_default_get ()->upstream_latency, index, 0,
                                us > 0 ? (guint64) us : 0);
}

void
pg_metrics_login_penalty (gboolean global)
{
  pg_metrics_family_add (pg_metrics_default_get ()->login_penalties, global ? 1 : 0, 0, 1);
}

void
pg_metrics_upstream_login (PgMetricsMechanism mechanism)
{
  pg_metrics_family_add (pg_metrics_default_get ()->upstream_logins, mechanism, 0, 1);
}

/* The index of `upstream` among the refresh family's label values; a new name is added
 * and the family registered again with it (its counts carried over, its place kept), so
 * that series exist only for upstreams that use OAuth2. */
static guint
pg_metrics_oauth2_upstream_index (PgMetricsDefault *m, const char *upstream, gboolean add)
{
  const PgMetricsLabel labels[] = { { "upstream", (const char *const *) m->oauth2_upstreams },
                                    { "result", pg_metrics_result_values } };
  PgMetricsFamily *old = m->oauth2_refreshes;
  PgMetricsFamily *family;
  guint index = 0;
  guint n = m->n_oauth2_upstreams;

  for (guint i = 0; i < n; i++)
    if (strcmp (m->oauth2_upstreams[i], upstream) == 0)
      return i;
  if (n == PG_METRICS_MAX_UPSTREAMS)
    return n - 1; /* the last value is "other" */
  if (!add)
    return G_MAXUINT;
  m->oauth2_upstreams[n] = g_strdup (n + 1 == PG_METRICS_MAX_UPSTREAMS ? "other" : upstream);
  m->n_oauth2_upstreams = n + 1;
  family = pg_metrics_registry_add (
      m->registry, PG_METRICS_COUNTER, "popgate_oauth2_refreshes",
      "OAuth 2.0 access-token requests to the token endpoint, by upstream and result.", labels, 2,
      NULL, 0);
  if (old != NULL && g_ptr_array_find (m->registry->families, old, &index))
    {
      /* Same label order: the old series are the first n of the new upstream label. */
      memcpy (family->values, old->values, sizeof (gint64) * old->n_series);
      g_ptr_array_steal_index (m->registry->families, m->registry->families->len - 1);
      g_ptr_array_index (m->registry->families, index) = family;
      pg_metrics_family_free (old);
    }
  m->oauth2_refreshes = family;
  return n;
}

void
pg_metrics_oauth2_refresh (const char *upstream, gboolean ok)
{
  PgMetricsDefault *m = pg_metrics_default_get ();
  guint index = pg_metrics_oauth2_upstream_index (m, upstream, TRUE);

  pg_metrics_family_add (m->oauth2_refreshes, index, ok ? 0 : 1, 1);
}

gint64
pg_metrics_oauth2_refresh_count (const char *upstream, gboolean ok)
{
  PgMetricsDefault *m = pg_metrics_default_get ();
  guint index = pg_metrics_oauth2_upstream_index (m, upstream, FALSE);

  if (index == G_MAXUINT)
    return 0;
  return pg_metrics_family_get (m->oauth2_refreshes, index, ok ? 0 : 1);
}
