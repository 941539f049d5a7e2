/* popgate tests — OpenMetrics / Prometheus text checker (see pg-test-openmetrics.h).
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "pg-test-openmetrics.h"

#include <string.h>

typedef struct
{
  PgMetricsFormat format;
  GHashTable *types;      /* family name → "counter" | "gauge" | "histogram" (owned strings) */
  GHashTable *samples;    /* series → gdouble* */
  GHashTable *cumulative; /* histogram series without le → last bucket value (gdouble*) */
  GHashTable *inf;        /* histogram series without le → +Inf bucket value (gdouble*) */
  gchar *family;          /* owned: the family of the last TYPE line */
  const char *type;       /* unowned: its type */
} PgTestChecker;

static gboolean
pg_test_om_name_char (char c, gboolean first)
{
  return g_ascii_isalpha (c) || c == '_' || c == ':' || (!first && g_ascii_isdigit (c));
}

/* Parse a metric or label name at *p; NULL if there is none. */
static gchar *
pg_test_om_name (const char **p)
{
  const char *start = *p;

  if (!pg_test_om_name_char (**p, TRUE))
    return NULL;
  while (pg_test_om_name_char (**p, FALSE))
    (*p)++;
  return g_strndup (start, (gsize) (*p - start));
}

static gdouble *
pg_test_om_double (gdouble value)
{
  gdouble *v = g_new (gdouble, 1);
  *v = value;
  return v;
}

static gboolean
pg_test_om_value (const char *text, gdouble *out_value)
{
  gchar *end = NULL;

  if (strcmp (text, "+Inf") == 0)
    *out_value = G_MAXDOUBLE;
  else if (strcmp (text, "NaN") == 0)
    *out_value = 0;
  else
    {
      *out_value = g_ascii_strtod (text, &end);
      if (end == text || *end != '\0')
        return FALSE;
    }
  return TRUE;
}

/* A sample line: name{l="v",...} value. */
static gboolean
pg_test_om_sample (PgTestChecker *checker, const char *line, GError **error)
{
  const char *p = line;
  g_autofree gchar *name = pg_test_om_name (&p);
  g_autoptr (GString) base_labels = g_string_new (NULL); /* without le */
  g_autofree gchar *le = NULL;
  g_autofree gchar *series = NULL;
  const char *suffix = NULL;
  gdouble value = 0;

  if (name == NULL)
    goto bad;
  if (*p == '{')
    {
      p++;
      while (*p != '}')
        {
          g_autofree gchar *label = pg_test_om_name (&p);
          g_autoptr (GString) label_value = g_string_new (NULL);

          if (label == NULL || *p++ != '=' || *p++ != '"')
            goto bad;
          while (*p != '"')
            {
              if (*p == '\0' || *p == '\n')
                goto bad;
              if (*p == '\\')
                {
                  p++;
                  if (*p != '\\' && *p != '"' && *p != 'n')
                    goto bad;
                }
              g_string_append_c (label_value, *p++);
            }
          p++;
          if (strcmp (label, "le") == 0)
            le = g_strdup (label_value->str);
          else
            {
              /* Keep the written form (escapes and all) for the key. */
              g_string_append_printf (base_labels, "%s%s=\"", base_labels->len ? "," : "", label);
              for (const char *v = label_value->str; *v; v++)
                {
                  if (*v == '\\' || *v == '"')
                    g_string_append_c (base_labels, '\\');
                  if (*v == '\n')
                    g_string_append (base_labels, "\\n");
                  else
                    g_string_append_c (base_labels, *v);
                }
              g_string_append_c (base_labels, '"');
            }
          if (*p == ',')
            {
              p++;
              if (*p == '}')
                goto bad;
            }
          else if (*p != '}')
            goto bad;
        }
      p++;
    }
  if (*p++ != ' ' || !pg_test_om_value (p, &value))
    goto bad;
  series = g_strndup (line, (gsize) (strchr (line, ' ') - line));
  /* The sample belongs to the family of the TYPE line before it. */
  if (checker->family == NULL)
    goto unknown;
  if (strcmp (checker->type, "counter") == 0)
    suffix = checker->format == PG_METRICS_FORMAT_OPENMETRICS ? "_total" : "";
  else if (strcmp (checker->type, "gauge") == 0)
    suffix = "";
  else if (strcmp (checker->type, "info") == 0)
    suffix = "_info";
  else if (g_str_has_prefix (name, checker->family))
    suffix = name + strlen (checker->family);
  if (suffix == NULL || !g_str_has_prefix (name, checker->family)
      || strcmp (name + strlen (checker->family), suffix) != 0)
    goto unknown;
  if (strcmp (checker->type, "histogram") == 0)
    {
      g_autofree gchar *base = g_strdup_printf ("%s{%s}", checker->family, base_labels->str);
      gdouble *last = g_hash_table_lookup (checker->cumulative, base);

      if (strcmp (suffix, "_bucket") == 0)
        {
          if (le == NULL || (last != NULL && value < *last))
            {
              g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                           "bucket without le or not cumulative: %s", line);
              return FALSE;
            }
          g_hash_table_insert (checker->cumulative, g_strdup (base), pg_test_om_double (value));
          if (strcmp (le, "+Inf") == 0)
            g_hash_table_insert (checker->inf, g_strdup (base), pg_test_om_double (value));
        }
      else if (strcmp (suffix, "_count") == 0)
        {
          gdouble *inf = g_hash_table_lookup (checker->inf, base);
          if (inf == NULL || *inf != value)
            {
              g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                           "_count differs from the +Inf bucket: %s", line);
              return FALSE;
            }
        }
      else if (strcmp (suffix, "_sum") != 0)
        goto unknown;
    }
  if (g_hash_table_contains (checker->samples, series))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "duplicate series: %s", line);
      return FALSE;
    }
  g_hash_table_insert (checker->samples, g_steal_pointer (&series), pg_test_om_double (value));
  return TRUE;

unknown:
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
               "sample of no declared family (last TYPE: %s): %s",
               checker->family ? checker->family : "none", line);
  return FALSE;
bad:
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "malformed sample line: %s", line);
  return FALSE;
}

static gboolean
pg_test_om_metadata (PgTestChecker *checker, const char *line, GError **error)
{
  g_auto (GStrv) words = g_strsplit (line, " ", 4);

  if (g_strv_length (words) >= 3 && strcmp (words[1], "TYPE") == 0)
    {
      if (g_strv_length (words) != 4 || g_hash_table_contains (checker->types, words[2])
          || (strcmp (words[3], "counter") != 0 && strcmp (words[3], "gauge") != 0
              && strcmp (words[3], "histogram") != 0
              && (strcmp (words[3], "info") != 0
                  || checker->format != PG_METRICS_FORMAT_OPENMETRICS)))
        goto bad;
      g_free (checker->family);
      checker->family = g_strdup (words[2]);
      checker->type = g_intern_string (words[3]);
      g_hash_table_insert (checker->types, g_strdup (words[2]), g_strdup (words[3]));
      return TRUE;
    }
  if (g_strv_length (words) >= 3
      && (strcmp (words[1], "HELP") == 0 || strcmp (words[1], "UNIT") == 0))
    {
      if (checker->family == NULL || strcmp (words[2], checker->family) != 0)
        goto bad;
      /* OpenMetrics: a UNIT is the family name's suffix, and only OpenMetrics has it. */
      if (strcmp (words[1], "UNIT") == 0)
        {
          g_autofree gchar *suffix = g_strconcat ("_", words[3] != NULL ? words[3] : "", NULL);
          if (checker->format != PG_METRICS_FORMAT_OPENMETRICS || words[3] == NULL
              || !g_str_has_suffix (words[2], suffix))
            goto bad;
        }
      return TRUE;
    }
bad:
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "bad metadata line: %s", line);
  return FALSE;
}

GHashTable *
pg_test_openmetrics_parse (const char *text, PgMetricsFormat format, GError **error)
{
  g_auto (GStrv) lines = NULL;
  g_autoptr (GHashTable) types = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (GHashTable) cumulative
      = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (GHashTable) inf = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (GHashTable) samples = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  PgTestChecker checker = { format, types, samples, cumulative, inf, NULL, NULL };
  guint n;

  if (!g_str_has_suffix (text, "\n# EOF\n") && strcmp (text, "# EOF\n") != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "does not end with # EOF");
      return NULL;
    }
  lines = g_strsplit (text, "\n", -1);
  n = g_strv_length (lines);
  /* The last two are "# EOF" and the empty string after its newline. */
  for (guint i = 0; i + 2 < n; i++)
    {
      gboolean ok;
      if (lines[i][0] == '#')
        ok = pg_test_om_metadata (&checker, lines[i], error);
      else
        ok = pg_test_om_sample (&checker, lines[i], error);
      if (!ok)
        {
          g_free (checker.family);
          return NULL;
        }
    }
  g_free (checker.family);
  return g_steal_pointer (&samples);
}

gdouble
pg_test_openmetrics_get (GHashTable *samples, const char *series)
{
  const gdouble *value = g_hash_table_lookup (samples, series);

  if (value == NULL)
    g_error ("metrics: no series %s", series);
  return *value;
}
