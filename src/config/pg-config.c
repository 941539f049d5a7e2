/* popgate — configuration: GKeyFile → one immutable, refcounted PgConfig.
 *
 * Strict on purpose: an unknown group or key, a bad value or a missing required key is a
 * PG_ERROR_CONFIG naming the file, the group, the key and what is wrong, so an admin's typo
 * never silently becomes a default. Every key is documented in data/popgate.conf.example.
 *
 * Two small extensions to GKeyFile's syntax, both for admins who copy DESIGN.md's examples:
 * a '#' after whitespace inside a value starts a comment ("tls = implicit  # or starttls"),
 * and "\#" / "\\" write a literal '#' / '\'. A value that starts with '#' (the default
 * client_tag_separator) is a value, not a comment.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>
#include <string.h>
#include <unistd.h>

#define PG_CONFIG_COMMAND_LINE "(command line)"

/* --- the schema: every group and key popgate knows ------------------------------------- */

typedef struct
{
  const char *name;
  const char *const *keys;
} PgConfigGroup;

static const char *const pg_config_upstream_keys[] = { "host",
                                                       "port",
                                                       "tls",
                                                       "ca_file",
                                                       "mailbox",
                                                       "timeout",
                                                       "connect_timeout",
                                                       "provider",
                                                       "auth",
                                                       "auth_mechanism",
                                                       "compress",
                                                       "oauth2_token_url",
                                                       "oauth2_client_id",
                                                       "oauth2_client_secret_file",
                                                       "oauth2_scope",
                                                       "oauth2_grant",
                                                       "oauth2_mechanism",
                                                       "oauth2_authorize_url",
                                                       "oauth2_device_url",
                                                       "oauth2_ca_file",
                                                       NULL };
static const char *const pg_config_pop3_keys[] = { "listen",
                                                   "tls_listen",
                                                   "delete",
                                                   "mark_seen",
                                                   "lock_session",
                                                   "allow_plaintext_auth",
                                                   "autologout",
                                                   "login_delay",
                                                   "client_tag_separator",
                                                   "first_login",
                                                   "recent_days",
                                                   "proxy_protocol",
                                                   "uidl_ledger",
                                                   NULL };
static const char *const pg_config_imap_keys[]
    = { "listen",      "tls_listen", "allow_plaintext_auth", "idle_timeout", "proxy_protocol",
        "account_map", NULL };
static const char *const pg_config_tls_keys[] = { "cert", "key", "priority", NULL };
static const char *const pg_config_state_keys[] = { "backend", "path", NULL };
static const char *const pg_config_metrics_keys[] = { "listen", NULL };
static const char *const pg_config_status_keys[] = { "listen", "allow_remote", "auth_file", NULL };
static const char *const pg_config_limits_keys[]
    = { "max_sessions",      "max_sessions_per_address", "preauth_timeout",  "auth_failure_delay",
        "max_auth_failures", "max_bad_commands",         "shutdown_timeout", NULL };
static const char *const pg_config_log_keys[] = { "trace", NULL };
static const char *const pg_config_proxy_keys[] = { "trusted", NULL };
static const char *const pg_config_accounts_keys[] = { "file", NULL };

static const PgConfigGroup pg_config_groups[] = {
  { "upstream", pg_config_upstream_keys }, { "pop3", pg_config_pop3_keys },
  { "imap", pg_config_imap_keys },         { "tls", pg_config_tls_keys },
  { "state", pg_config_state_keys },       { "metrics", pg_config_metrics_keys },
  { "limits", pg_config_limits_keys },     { "log", pg_config_log_keys },
  { "proxy", pg_config_proxy_keys },       { "accounts", pg_config_accounts_keys },
  { "status", pg_config_status_keys },
};

/* [upstream:NAME] groups take the keys of [upstream]. */
#define PG_CONFIG_UPSTREAM_GROUP_PREFIX "upstream:"

gboolean
pg_config_is_known_key (const char *group, const char *key)
{
  /* [upstream:NAME] groups take the keys of [upstream]. */
  if (g_str_has_prefix (group, "upstream:"))
    group = "upstream";
  for (gsize g = 0; g < G_N_ELEMENTS (pg_config_groups); g++)
    if (strcmp (group, pg_config_groups[g].name) == 0)
      return g_strv_contains (pg_config_groups[g].keys, key);
  return FALSE;
}

/* Who may send a PROXY header unless [proxy] trusted says otherwise: a load balancer on
 * the same host. Anything wider must be written down by the admin. */
#define PG_CONFIG_DEFAULT_PROXY_TRUSTED "127.0.0.0/8, ::1/128"

static gboolean pg_config_check_secret_file (const char *path, GError **error);
static void pg_config_upstream_defaults (PgUpstreamConfig *up, const char *name);

/* --- the loader: one per load, holds what error messages need ----------------------------- */

typedef struct
{
  const char *source;           /* unowned: the file name as given, or "(command line)" */
  GKeyFile *keyfile;            /* unowned */
  gchar *base_dir;              /* owned: relative paths are resolved against it */
  GHashTable *origins;          /* owned: "group\nkey" → the command-line flag that set it */
  gboolean inherited_listeners; /* socket activation: no listen key is needed */
  gboolean missing_token_files; /* --oauth2-authorize: an oauth2:FILE may not exist yet */
} PgConfigLoader;

static void
pg_config_loader_clear (PgConfigLoader *loader)
{
  g_clear_pointer (&loader->base_dir, g_free);
  g_clear_pointer (&loader->origins, g_hash_table_unref);
}

static gchar *
pg_config_quote (const char *value)
{
  g_autofree gchar *escaped = pg_log_escape (value, strlen (value), PG_CONFIG_MAX_QUOTED);

  return g_strdup_printf ("\"%s\"", escaped);
}

/* Every config error goes through here so that all of them read
 * "FILE: [group] key: what is wrong". */
static gboolean pg_config_fail (const PgConfigLoader *loader, const char *group, const char *key,
                                GError **error, const char *format, ...) G_GNUC_PRINTF (5, 6);

static gboolean
pg_config_fail (const PgConfigLoader *loader, const char *group, const char *key, GError **error,
                const char *format, ...)
{
  g_autofree gchar *what = NULL;
  g_autofree gchar *where = NULL;
  const char *source = loader->source;
  va_list args;

  va_start (args, format);
  what = g_strdup_vprintf (format, args);
  va_end (args);

  if (key != NULL)
    {
      g_autofree gchar *origin_key = g_strdup_printf ("%s\n%s", group, key);
      const char *flag = g_hash_table_lookup (loader->origins, origin_key);

      if (flag != NULL)
        source = flag;
      where = g_strdup_printf ("[%s] %s", group, key);
    }
  else
    where = g_strdup_printf ("[%s]", group);

  g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: %s: %s", source, where, what);
  return FALSE;
}

/* Prefix a value-level error (from the public parsers) with file, group and key. */
static gboolean
pg_config_fail_from (const PgConfigLoader *loader, const char *group, const char *key,
                     GError **error, GError *cause)
{
  return pg_config_fail (loader, group, key, error, "%s", cause->message);
}

/* --- raw values -------------------------------------------------------------------------- */

/* The value of group/key with a trailing comment cut and \# and \\ unescaped, or NULL in
 * *out_value when the key is absent. */
static gboolean
pg_config_get_raw (const PgConfigLoader *loader, const char *group, const char *key,
                   gchar **out_value, GError **error)
{
  g_autofree gchar *raw = NULL;
  g_autoptr (GString) value = NULL;

  if (!g_key_file_has_key (loader->keyfile, group, key, NULL))
    {
      *out_value = NULL;
      return TRUE;
    }
  raw = g_key_file_get_value (loader->keyfile, group, key, NULL);
  if (raw == NULL)
    {
      *out_value = NULL;
      return TRUE;
    }

  value = g_string_sized_new (strlen (raw));
  for (const char *p = raw; *p != '\0'; p++)
    {
      if (*p == '\\')
        {
          if (p[1] == '\\' || p[1] == '#')
            {
              g_string_append_c (value, p[1]);
              p++;
              continue;
            }
          return pg_config_fail (loader, group, key, error,
                                 "unknown escape \"\\%c\" (only \\# and \\\\ are understood)",
                                 p[1] != '\0' ? p[1] : ' ');
        }
      if (*p == '#' && p != raw && (p[-1] == ' ' || p[-1] == '\t'))
        break;
      if ((guchar) *p < 0x20 && *p != '\t')
        return pg_config_fail (loader, group, key, error, "control characters are not allowed");
      g_string_append_c (value, *p);
    }
  g_strstrip (value->str);
  *out_value = g_strdup (value->str);
  return TRUE;
}

/* A string value; an empty one counts as not set unless `allow_empty`. */
static gboolean
pg_config_get_string (const PgConfigLoader *loader, const char *group, const char *key,
                      gboolean allow_empty, gchar **inout_value, GError **error)
{
  g_autofree gchar *value = NULL;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL || (value[0] == '\0' && !allow_empty))
    return TRUE;
  g_free (*inout_value);
  *inout_value = g_steal_pointer (&value);
  return TRUE;
}

static gboolean
pg_config_parse_uint (const char *value, guint min, guint max, guint *out_value, GError **error)
{
  guint64 number = 0;
  g_autofree gchar *quoted = pg_config_quote (value);

  if (value[0] == '\0')
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "a whole number is needed");
      return FALSE;
    }
  for (const char *p = value; *p != '\0'; p++)
    {
      if (!g_ascii_isdigit (*p))
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s is not a whole number", quoted);
          return FALSE;
        }
      number = number * 10 + (guint64) (*p - '0');
      if (number > G_MAXUINT)
        break;
    }
  if (number < min || number > max)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s is out of range (%u to %u)", quoted, min,
                   max);
      return FALSE;
    }
  *out_value = (guint) number;
  return TRUE;
}

static gboolean
pg_config_get_uint (const PgConfigLoader *loader, const char *group, const char *key, guint min,
                    guint max, guint *inout_value, GError **error)
{
  g_autofree gchar *value = NULL;
  g_autoptr (GError) local_error = NULL;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  if (!pg_config_parse_uint (value, min, max, inout_value, &local_error))
    return pg_config_fail_from (loader, group, key, error, local_error);
  return TRUE;
}

static gboolean
pg_config_get_bool (const PgConfigLoader *loader, const char *group, const char *key,
                    gboolean *inout_value, GError **error)
{
  static const char *const truths[] = { "true", "yes", "1", NULL };
  static const char *const falsehoods[] = { "false", "no", "0", NULL };
  g_autofree gchar *value = NULL;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  for (gsize i = 0; truths[i] != NULL; i++)
    {
      if (g_ascii_strcasecmp (value, truths[i]) == 0)
        {
          *inout_value = TRUE;
          return TRUE;
        }
      if (g_ascii_strcasecmp (value, falsehoods[i]) == 0)
        {
          *inout_value = FALSE;
          return TRUE;
        }
    }
  {
    g_autofree gchar *quoted = pg_config_quote (value);
    return pg_config_fail (loader, group, key, error,
                           "%s is not a boolean (use true, false, yes, no, 1 or 0)", quoted);
  }
}

/* A duration of at least `min_ms`; the message shows the minimum the way an admin writes
 * it (whole minutes or seconds). */
static gboolean
pg_config_get_duration (const PgConfigLoader *loader, const char *group, const char *key,
                        guint min_ms, guint *inout_ms, GError **error)
{
  g_autofree gchar *value = NULL;
  g_autoptr (GError) local_error = NULL;
  guint ms = 0;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  if (!pg_config_parse_duration (value, &ms, &local_error))
    return pg_config_fail_from (loader, group, key, error, local_error);
  if (ms < min_ms)
    {
      g_autofree gchar *quoted = pg_config_quote (value);
      if (min_ms % 60000 == 0)
        return pg_config_fail (loader, group, key, error, "%s is too short: the minimum is %um",
                               quoted, min_ms / 60000);
      if (min_ms % 1000 == 0)
        return pg_config_fail (loader, group, key, error, "%s is too short: the minimum is %us",
                               quoted, min_ms / 1000);
      return pg_config_fail (loader, group, key, error, "%s is too short: the minimum is %ums",
                             quoted, min_ms);
    }
  *inout_ms = ms;
  return TRUE;
}

static gboolean
pg_config_get_listen (const PgConfigLoader *loader, const char *group, const char *key,
                      GPtrArray **inout_list, GError **error)
{
  g_autofree gchar *value = NULL;
  g_autoptr (GError) local_error = NULL;
  g_autoptr (GPtrArray) list = NULL;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL || value[0] == '\0')
    return TRUE;
  list = pg_config_parse_listen (value, &local_error);
  if (list == NULL)
    return pg_config_fail_from (loader, group, key, error, local_error);
  g_ptr_array_unref (*inout_list);
  *inout_list = g_steal_pointer (&list);
  return TRUE;
}

/* A file path, resolved against the config file's directory; `must_read` checks at load
 * time that it is a readable regular file, so a typo fails at --check, not at the first
 * TLS handshake. */
static gboolean
pg_config_get_path (const PgConfigLoader *loader, const char *group, const char *key,
                    gboolean must_read, gchar **inout_path, GError **error)
{
  g_autofree gchar *value = NULL;
  g_autofree gchar *path = NULL;
  GStatBuf st;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL || value[0] == '\0')
    return TRUE;
  path = g_canonicalize_filename (value, loader->base_dir);
  if (must_read)
    {
      if (g_stat (path, &st) != 0)
        {
          int saved_errno = errno;
          return pg_config_fail (loader, group, key, error, "%s: %s", path,
                                 g_strerror (saved_errno));
        }
      if (!S_ISREG (st.st_mode))
        return pg_config_fail (loader, group, key, error, "%s: not a regular file", path);
      if (g_access (path, R_OK) != 0)
        {
          int saved_errno = errno;
          return pg_config_fail (loader, group, key, error, "%s: %s", path,
                                 g_strerror (saved_errno));
        }
    }
  g_free (*inout_path);
  *inout_path = g_steal_pointer (&path);
  return TRUE;
}

/* One of a fixed set of words, case-insensitive. Returns the index or -1 (error set). */
static gint
pg_config_match_word (const PgConfigLoader *loader, const char *group, const char *key,
                      const char *value, const char *const *words, const char *choices,
                      GError **error)
{
  g_autofree gchar *quoted = NULL;

  for (gint i = 0; words[i] != NULL; i++)
    {
      if (g_ascii_strcasecmp (value, words[i]) == 0)
        return i;
    }
  quoted = pg_config_quote (value);
  pg_config_fail (loader, group, key, error, "%s is not one of %s", quoted, choices);
  return -1;
}

/* --- public value parsers ---------------------------------------------------------------- */

gboolean
pg_config_parse_duration (const char *value, guint *out_ms, GError **error)
{
  static const struct
  {
    const char *suffix;
    guint64 factor;
  } units[] = { { "", 1000 }, { "s", 1000 }, { "ms", 1 }, { "m", 60000 }, { "h", 3600000 } };
  guint64 number = 0;
  const char *p = value;
  g_autofree gchar *quoted = pg_config_quote (value);

  g_return_val_if_fail (value != NULL, FALSE);

  for (; g_ascii_isdigit (*p); p++)
    {
      number = number * 10 + (guint64) (*p - '0');
      /* Stay far below G_MAXUINT64 so the multiplication below cannot overflow. */
      if (number > G_MAXUINT)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s is too long", quoted);
          return FALSE;
        }
    }
  if (p == value)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "%s is not a duration (use 90, 90s, 500ms, 10m or 2h)", quoted);
      return FALSE;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (units); i++)
    {
      if (strcmp (p, units[i].suffix) == 0)
        {
          guint64 ms = number * units[i].factor;

          if (ms > G_MAXUINT)
            {
              g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s is too long (at most %u days)",
                           quoted, G_MAXUINT / (24u * 3600000u));
              return FALSE;
            }
          *out_ms = (guint) ms;
          return TRUE;
        }
    }
  g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
               "%s is not a duration (use 90, 90s, 500ms, 10m or 2h)", quoted);
  return FALSE;
}

void
pg_listen_addr_free (PgListenAddr *addr)
{
  if (addr == NULL)
    return;
  g_free (addr->host);
  g_free (addr);
}

gchar *
pg_listen_addr_to_string (const PgListenAddr *addr)
{
  if (addr->any)
    return g_strdup_printf ("*:%u", addr->port);
  return pg_host_port_to_string (addr->host, addr->port);
}

static PgListenAddr *
pg_config_parse_listen_entry (const char *entry, GError **error)
{
  g_autofree gchar *quoted = pg_config_quote (entry);
  g_autofree gchar *host = NULL;
  g_autoptr (GInetAddress) address = NULL;
  g_autoptr (PgListenAddr) addr = g_new0 (PgListenAddr, 1);
  const char *port_text = NULL;
  GSocketFamily family = G_SOCKET_FAMILY_IPV4;
  guint port = 0;

  if (entry[0] == '[')
    {
      const char *close = strchr (entry, ']');

      if (close == NULL || close[1] != ':')
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "%s: an IPv6 address is written [ADDR]:PORT, like [::1]:110", quoted);
          return NULL;
        }
      host = g_strndup (entry + 1, (gsize) (close - entry - 1));
      port_text = close + 2;
      family = G_SOCKET_FAMILY_IPV6;
    }
  else
    {
      const char *colon = strrchr (entry, ':');

      if (colon == NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: missing :PORT", quoted);
          return NULL;
        }
      host = g_strndup (entry, (gsize) (colon - entry));
      port_text = colon + 1;
      if (strchr (host, ':') != NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "%s: an IPv6 address needs brackets, like [::1]:110", quoted);
          return NULL;
        }
    }

  if (port_text[0] == '\0')
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: missing port after ':'", quoted);
      return NULL;
    }
  for (const char *p = port_text; *p != '\0'; p++)
    {
      if (!g_ascii_isdigit (*p))
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: the port is not a number", quoted);
          return NULL;
        }
      port = port * 10 + (guint) (*p - '0');
      if (port > 65535)
        break;
    }
  if (port == 0 || port > 65535)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: the port must be 1 to 65535", quoted);
      return NULL;
    }
  addr->port = (guint16) port;

  if (family == G_SOCKET_FAMILY_IPV4 && g_strcmp0 (host, "*") == 0)
    {
      addr->any = TRUE;
      addr->host = g_strdup ("::");
      return g_steal_pointer (&addr);
    }

  address = g_inet_address_new_from_string (host);
  if (address == NULL || g_inet_address_get_family (address) != family)
    {
      g_autofree gchar *quoted_host = pg_config_quote (host);

      if (family == G_SOCKET_FAMILY_IPV6)
        g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: %s is not an IPv6 address", quoted,
                     quoted_host);
      else
        g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                     "%s: %s is not a literal IPv4 address (host names are not allowed; "
                     "use [ADDR]:PORT for IPv6 and *:PORT for all addresses)",
                     quoted, quoted_host);
      return NULL;
    }
  addr->host = g_inet_address_to_string (address);
  return g_steal_pointer (&addr);
}

GPtrArray *
pg_config_parse_listen (const char *value, GError **error)
{
  g_auto (GStrv) entries = NULL;
  g_autoptr (GPtrArray) list
      = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_listen_addr_free);

  g_return_val_if_fail (value != NULL, NULL);

  /* g_strsplit ("") gives no entries at all; an empty list is still an empty entry. */
  entries = g_strsplit (value[0] != '\0' ? value : " ", ",", -1);
  for (gsize i = 0; entries[i] != NULL; i++)
    {
      PgListenAddr *addr = NULL;
      const char *entry = g_strstrip (entries[i]);

      if (entry[0] == '\0')
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "empty entry in the list (entry %" G_GSIZE_FORMAT ")", i + 1);
          return NULL;
        }
      addr = pg_config_parse_listen_entry (entry, error);
      if (addr == NULL)
        return NULL;
      g_ptr_array_add (list, addr);
    }
  return g_steal_pointer (&list);
}

GPtrArray *
pg_config_parse_networks (const char *value, GError **error)
{
  g_auto (GStrv) entries = NULL;
  g_autoptr (GPtrArray) list = g_ptr_array_new_with_free_func (g_object_unref);

  g_return_val_if_fail (value != NULL, NULL);

  entries = g_strsplit (value[0] != '\0' ? value : " ", ",", -1);
  for (gsize i = 0; entries[i] != NULL; i++)
    {
      const char *entry = g_strstrip (entries[i]);
      g_autoptr (GInetAddressMask) mask = NULL;
      g_autoptr (GInetAddress) address = NULL;

      if (entry[0] == '\0')
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "empty entry in the list (entry %" G_GSIZE_FORMAT ")", i + 1);
          return NULL;
        }
      const char *slash = strchr (entry, '/');
      g_autofree gchar *host
          = g_strndup (entry, slash != NULL ? (gsize) (slash - entry) : strlen (entry));

      /* Parsed here rather than by g_inet_address_mask_new_from_string(): an out-of-range
       * prefix there is a GObject property warning, not an error. */
      address = g_inet_address_new_from_string (host);
      if (address != NULL)
        {
          guint bits = g_inet_address_get_native_size (address) * 8;
          guint prefix = bits;
          gboolean ok = TRUE;

          if (slash != NULL)
            {
              const char *p = slash + 1;

              prefix = 0;
              ok = *p != '\0' && strlen (p) <= 3;
              for (; ok && *p != '\0'; p++)
                {
                  ok = g_ascii_isdigit (*p);
                  prefix = prefix * 10 + (guint) (*p - '0');
                }
              ok = ok && prefix <= bits;
            }
          if (ok)
            mask = g_inet_address_mask_new (address, prefix, NULL);
        }
      if (mask == NULL)
        {
          g_autofree gchar *quoted = pg_config_quote (entry);
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "%s is not a network (write ADDR/PREFIX like 10.0.0.0/8 or "
                       "fd00::/8, with no bits set past the prefix, or one address)",
                       quoted);
          return NULL;
        }
      g_ptr_array_add (list, g_steal_pointer (&mask));
    }
  return g_steal_pointer (&list);
}

gboolean
pg_config_networks_contain (GPtrArray *networks, GInetAddress *address)
{
  g_autoptr (GInetAddress) v4 = NULL;

  /* A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d. */
  if (g_inet_address_get_family (address) == G_SOCKET_FAMILY_IPV6)
    {
      const guint8 *bytes = g_inet_address_to_bytes (address);
      static const guint8 mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

      if (memcmp (bytes, mapped_prefix, sizeof mapped_prefix) == 0)
        v4 = g_inet_address_new_from_bytes (bytes + 12, G_SOCKET_FAMILY_IPV4);
    }
  for (guint i = 0; i < networks->len; i++)
    {
      GInetAddressMask *mask = g_ptr_array_index (networks, i);

      if (g_inet_address_mask_matches (mask, address)
          || (v4 != NULL && g_inet_address_mask_matches (mask, v4)))
        return TRUE;
    }
  return FALSE;
}

const char *
pg_delete_policy_to_string (PgDeletePolicy policy)
{
  switch (policy)
    {
    case PG_DELETE_EXPUNGE:
      return "expunge";
    case PG_DELETE_MOVE:
      return "move";
    case PG_DELETE_KEEP:
      return "keep";
    }
  return "?";
}

const char *
pg_upstream_tls_to_string (PgUpstreamTls tls)
{
  switch (tls)
    {
    case PG_UPSTREAM_TLS_NONE:
      return "none";
    case PG_UPSTREAM_TLS_STARTTLS:
      return "starttls";
    case PG_UPSTREAM_TLS_IMPLICIT:
      return "implicit";
    }
  return "?";
}

const char *
pg_state_backend_to_string (PgStateBackend backend)
{
  switch (backend)
    {
    case PG_STATE_BACKEND_FILE:
      return "file";
    case PG_STATE_BACKEND_IMAP_METADATA:
      return "imap-metadata";
    }
  return "?";
}

const char *
pg_first_login_to_string (PgFirstLogin first_login)
{
  switch (first_login)
    {
    case PG_FIRST_LOGIN_ALL:
      return "all";
    case PG_FIRST_LOGIN_NEW:
      return "new";
    }
  return "?";
}

const char *
pg_uidl_ledger_to_string (PgUidlLedger ledger)
{
  switch (ledger)
    {
    case PG_UIDL_LEDGER_AUTO:
      return "auto";
    case PG_UIDL_LEDGER_DIGEST:
      return "digest";
    case PG_UIDL_LEDGER_OFF:
      return "off";
    }
  return "?";
}

/* --- the config object ------------------------------------------------------------------- */

static GPtrArray *
pg_config_listen_list_new (void)
{
  return g_ptr_array_new_with_free_func ((GDestroyNotify) pg_listen_addr_free);
}

void
pg_upstream_config_clear (PgUpstreamConfig *upstream)
{
  g_free (upstream->name);
  g_free (upstream->provider);
  g_free (upstream->host);
  g_free (upstream->ca_file);
  g_free (upstream->mailbox);
  g_free (upstream->oauth2.token_url);
  g_free (upstream->oauth2.client_id);
  g_free (upstream->oauth2.client_secret_file);
  g_free (upstream->oauth2.scope);
  g_free (upstream->oauth2.authorize_url);
  g_free (upstream->oauth2.device_url);
  g_free (upstream->oauth2.ca_file);
  memset (upstream, 0, sizeof *upstream);
}

void
pg_upstream_config_free (PgUpstreamConfig *upstream)
{
  if (upstream == NULL)
    return;
  pg_upstream_config_clear (upstream);
  g_free (upstream);
}

const PgUpstreamConfig *
pg_config_find_upstream (const PgConfig *config, const char *name)
{
  if (name == NULL || g_strcmp0 (name, "default") == 0)
    return &config->upstream;
  for (guint i = 0; i < config->upstreams->len; i++)
    {
      const PgUpstreamConfig *upstream = g_ptr_array_index (config->upstreams, i);

      if (g_strcmp0 (upstream->name, name) == 0)
        return upstream;
    }
  return NULL;
}

static PgConfig *
pg_config_new_defaults (const char *source)
{
  PgConfig *config = g_new0 (PgConfig, 1);

  config->ref_count = 1;
  config->source = g_strdup (source);

  pg_config_upstream_defaults (&config->upstream, "default");
  config->upstreams = g_ptr_array_new_with_free_func ((GDestroyNotify) pg_upstream_config_free);

  config->pop3.listen = pg_config_listen_list_new ();
  config->pop3.tls_listen = pg_config_listen_list_new ();
  config->pop3.delete_policy = PG_DELETE_EXPUNGE;
  config->pop3.mark_seen = TRUE;
  config->pop3.allow_plaintext_auth = FALSE;
  config->pop3.autologout_ms = PG_DEFAULT_POP3_AUTOLOGOUT_S * 1000;
  config->pop3.login_delay_s = 0;
  config->pop3.client_tag_separator = g_strdup ("#");
  config->pop3.first_login = PG_FIRST_LOGIN_ALL;
  config->pop3.uidl_ledger = PG_UIDL_LEDGER_AUTO;
  config->pop3.recent_days = 0;

  config->imap.listen = pg_config_listen_list_new ();
  config->imap.tls_listen = pg_config_listen_list_new ();
  config->imap.allow_plaintext_auth = FALSE;
  config->imap.idle_timeout_ms = PG_DEFAULT_IMAP_IDLE_TIMEOUT_S * 1000;

  config->state.backend = PG_STATE_BACKEND_FILE;
  config->state.path = g_strdup ("/var/lib/popgate");

  config->metrics.listen = pg_config_listen_list_new ();
  config->status.listen = pg_config_listen_list_new ();

  config->limits.max_sessions = PG_DEFAULT_MAX_SESSIONS;
  config->limits.max_sessions_per_address = PG_DEFAULT_MAX_SESSIONS_PER_ADDRESS;
  config->limits.preauth_timeout_ms = PG_DEFAULT_PREAUTH_TIMEOUT_S * 1000;
  config->limits.auth_failure_delay_ms = PG_DEFAULT_AUTH_FAILURE_DELAY_MS;
  config->limits.max_auth_failures = PG_DEFAULT_MAX_AUTH_FAILURES;
  config->limits.max_bad_commands = PG_DEFAULT_MAX_BAD_COMMANDS;
  config->limits.shutdown_timeout_ms = PG_DEFAULT_SHUTDOWN_TIMEOUT_S * 1000;

  config->log.trace = FALSE;
  config->proxy.trusted = pg_config_parse_networks (PG_CONFIG_DEFAULT_PROXY_TRUSTED, NULL);
  g_assert (config->proxy.trusted != NULL);
  return config;
}

PgConfig *
pg_config_ref (PgConfig *config)
{
  g_return_val_if_fail (config != NULL, NULL);
  g_return_val_if_fail (config->ref_count > 0, NULL);

  g_atomic_int_inc (&config->ref_count);
  return config;
}

void
pg_config_unref (PgConfig *config)
{
  if (config == NULL)
    return;
  g_return_if_fail (config->ref_count > 0);
  if (!g_atomic_int_dec_and_test (&config->ref_count))
    return;

  g_free (config->source);
  pg_upstream_config_clear (&config->upstream);
  g_ptr_array_unref (config->upstreams);
  g_ptr_array_unref (config->pop3.listen);
  g_ptr_array_unref (config->pop3.tls_listen);
  g_free (config->pop3.move_mailbox);
  g_free (config->pop3.client_tag_separator);
  g_ptr_array_unref (config->imap.listen);
  g_ptr_array_unref (config->imap.tls_listen);
  g_free (config->imap.account_map);
  g_free (config->accounts.file);
  g_clear_pointer (&config->accounts.table, g_hash_table_unref);
  g_free (config->tls.cert);
  g_free (config->tls.key);
  g_free (config->tls.priority);
  g_free (config->state.path);
  g_ptr_array_unref (config->metrics.listen);
  g_ptr_array_unref (config->status.listen);
  g_free (config->status.auth_file);
  g_clear_pointer (&config->status.users, g_hash_table_unref);
  g_ptr_array_unref (config->proxy.trusted);
  g_free (config);
}

/* --- loading ----------------------------------------------------------------------------- */

/* NAME of [upstream:NAME]: what an accounts file line can name, and not "default". */
static gboolean
pg_config_check_upstream_name (const PgConfigLoader *loader, const char *group, GError **error)
{
  const char *name = group + strlen (PG_CONFIG_UPSTREAM_GROUP_PREFIX);

  if (name[0] == '\0' || strlen (name) > PG_CONFIG_MAX_UPSTREAM_NAME)
    return pg_config_fail (loader, group, NULL, error, "an upstream name is 1 to %u characters",
                           PG_CONFIG_MAX_UPSTREAM_NAME);
  for (const char *p = name; *p != '\0'; p++)
    {
      if (!g_ascii_isalnum (*p) && *p != '-' && *p != '_' && *p != '.')
        return pg_config_fail (loader, group, NULL, error,
                               "an upstream name has only letters, digits, '-', '_' and '.'");
    }
  if (g_ascii_strcasecmp (name, "default") == 0)
    return pg_config_fail (loader, group, NULL, error,
                           "\"default\" is [upstream] itself; pick another name");
  return TRUE;
}

static gboolean
pg_config_check_keys (const PgConfigLoader *loader, GError **error)
{
  g_auto (GStrv) groups = g_key_file_get_groups (loader->keyfile, NULL);

  for (gsize i = 0; groups[i] != NULL; i++)
    {
      const PgConfigGroup *group = NULL;
      g_auto (GStrv) keys = NULL;

      for (gsize g = 0; g < G_N_ELEMENTS (pg_config_groups); g++)
        {
          if (strcmp (groups[i], pg_config_groups[g].name) == 0)
            group = &pg_config_groups[g];
        }
      if (g_str_has_prefix (groups[i], PG_CONFIG_UPSTREAM_GROUP_PREFIX))
        {
          if (!pg_config_check_upstream_name (loader, groups[i], error))
            return FALSE;
          group = &pg_config_groups[0];
        }
      if (group == NULL)
        return pg_config_fail (loader, groups[i], NULL, error,
                               "unknown group (the groups are upstream, upstream:NAME, pop3, "
                               "imap, tls, state, metrics, status, limits, log, proxy and "
                               "accounts)");

      keys = g_key_file_get_keys (loader->keyfile, groups[i], NULL, NULL);
      for (gsize k = 0; keys != NULL && keys[k] != NULL; k++)
        {
          if (g_strv_contains (group->keys, keys[k]))
            continue;
          /* A key put in the wrong group is the likeliest mistake: say where it lives. */
          for (gsize g = 0; g < G_N_ELEMENTS (pg_config_groups); g++)
            {
              if (g_strv_contains (pg_config_groups[g].keys, keys[k]))
                return pg_config_fail (loader, groups[i], keys[k], error,
                                       "unknown key in this group (did you mean [%s] %s?)",
                                       pg_config_groups[g].name, keys[k]);
            }
          return pg_config_fail (loader, groups[i], keys[k], error, "unknown key");
        }
    }
  return TRUE;
}

/* No control characters (checked already) and nothing an IMAP mailbox name cannot be. */
static gboolean
pg_config_check_mailbox (const PgConfigLoader *loader, const char *group, const char *key,
                         const char *mailbox, GError **error)
{
  if (mailbox[0] == '\0')
    return pg_config_fail (loader, group, key, error, "the mailbox name is empty");
  if (!g_utf8_validate (mailbox, -1, NULL))
    return pg_config_fail (loader, group, key, error, "the mailbox name is not valid UTF-8");
  return TRUE;
}

/* Provider presets ([upstream] provider): what a generic admin would otherwise copy from
 * the provider's documentation. Any key in the group overrides them. */
typedef struct
{
  const char *name;
  const char *host;
  const char *token_url;
  const char *authorize_url;
  const char *device_url;
  const char *scope;
} PgConfigProvider;

static const PgConfigProvider pg_config_providers[] = {
  { "generic", NULL, NULL, NULL, NULL, NULL },
  /* No device URL: Google's device flow does not grant the Gmail scope, so
   * --oauth2-authorize uses the authorization code with PKCE and a loopback redirect. */
  { "gmail", "imap.gmail.com", "https://oauth2.googleapis.com/token",
    "https://accounts.google.com/o/oauth2/v2/auth", NULL, "https://mail.google.com/" },
  { "outlook", "outlook.office365.com",
    "https://login.microsoftonline.com/common/oauth2/v2.0/token",
    "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
    "https://outlook.office.com/IMAP.AccessAsUser.All offline_access" },
};

/* An OAuth2 endpoint: https://, or http:// only to a loopback host (a test server, a local
 * token broker): a token or client secret never crosses a network in clear. */
static gboolean
pg_config_get_oauth2_url (const PgConfigLoader *loader, const char *group, const char *key,
                          gchar **inout_url, GError **error)
{
  g_autofree gchar *value = NULL;
  g_autofree gchar *quoted = NULL;
  g_autoptr (GUri) uri = NULL;
  const char *scheme;
  const char *host;

  if (!pg_config_get_string (loader, group, key, FALSE, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  quoted = pg_config_quote (value);
  uri = g_uri_parse (value, G_URI_FLAGS_NONE, NULL);
  if (uri == NULL || g_uri_get_host (uri) == NULL || g_uri_get_host (uri)[0] == '\0')
    return pg_config_fail (loader, group, key, error, "%s is not a URL", quoted);
  scheme = g_uri_get_scheme (uri);
  host = g_uri_get_host (uri);
  if (g_ascii_strcasecmp (scheme, "http") == 0)
    {
      g_autoptr (GInetAddress) address = g_inet_address_new_from_string (host);

      if (g_ascii_strcasecmp (host, "localhost") != 0
          && (address == NULL || !g_inet_address_get_is_loopback (address)))
        return pg_config_fail (loader, group, key, error,
                               "%s: http:// is allowed only to a loopback host (127.0.0.1, "
                               "[::1], localhost); use https://",
                               quoted);
    }
  else if (g_ascii_strcasecmp (scheme, "https") != 0)
    return pg_config_fail (loader, group, key, error, "%s: use an https:// URL", quoted);
  g_free (*inout_url);
  *inout_url = g_steal_pointer (&value);
  return TRUE;
}

/* A word from `words` into *inout_index; absent keys leave it alone. */
static gboolean
pg_config_get_word (const PgConfigLoader *loader, const char *group, const char *key,
                    const char *const *words, const char *choices, gint *inout_index,
                    GError **error)
{
  g_autofree gchar *value = NULL;
  gint index;

  if (!pg_config_get_raw (loader, group, key, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  index = pg_config_match_word (loader, group, key, value, words, choices, error);
  if (index < 0)
    return FALSE;
  *inout_index = index;
  return TRUE;
}

static gboolean
pg_config_load_oauth2 (const PgConfigLoader *loader, const char *group, PgUpstreamConfig *up,
                       GError **error)
{
  static const char *const grant_words[] = { "refresh_token", "client_credentials", NULL };
  static const char *const mechanism_words[] = { "auto", "xoauth2", "oauthbearer", NULL };
  gint grant = (gint) up->oauth2.grant;
  gint mechanism = (gint) up->oauth2.mechanism;

  if (!pg_config_get_oauth2_url (loader, group, "oauth2_token_url", &up->oauth2.token_url, error)
      || !pg_config_get_oauth2_url (loader, group, "oauth2_authorize_url",
                                    &up->oauth2.authorize_url, error)
      || !pg_config_get_oauth2_url (loader, group, "oauth2_device_url", &up->oauth2.device_url,
                                    error))
    return FALSE;
  if (!pg_config_get_string (loader, group, "oauth2_client_id", FALSE, &up->oauth2.client_id,
                             error))
    return FALSE;
  if (!pg_config_get_string (loader, group, "oauth2_scope", FALSE, &up->oauth2.scope, error))
    return FALSE;
  if (!pg_config_get_path (loader, group, "oauth2_client_secret_file", TRUE,
                           &up->oauth2.client_secret_file, error))
    return FALSE;
  if (up->oauth2.client_secret_file != NULL)
    {
      g_autoptr (GError) cause = NULL;

      if (!pg_config_check_secret_file (up->oauth2.client_secret_file, &cause))
        return pg_config_fail_from (loader, group, "oauth2_client_secret_file", error, cause);
    }
  if (!pg_config_get_path (loader, group, "oauth2_ca_file", TRUE, &up->oauth2.ca_file, error))
    return FALSE;
  if (!pg_config_get_word (loader, group, "oauth2_grant", grant_words,
                           "refresh_token, client_credentials", &grant, error))
    return FALSE;
  up->oauth2.grant = (PgOAuth2Grant) grant;
  if (!pg_config_get_word (loader, group, "oauth2_mechanism", mechanism_words,
                           "auto, xoauth2, oauthbearer", &mechanism, error))
    return FALSE;
  up->oauth2.mechanism = (PgOAuth2Mechanism) mechanism;

  if (up->auth == PG_UPSTREAM_AUTH_OAUTH2)
    {
      if (up->oauth2.token_url == NULL)
        return pg_config_fail (loader, group, "oauth2_token_url", error,
                               "missing: auth = oauth2 needs the token endpoint");
      if (up->oauth2.client_id == NULL)
        return pg_config_fail (loader, group, "oauth2_client_id", error,
                               "missing: auth = oauth2 needs the client id");
    }
  return TRUE;
}

/* [upstream] or one [upstream:NAME] (same keys) into `up`, which holds the defaults. */
static gboolean
pg_config_load_upstream_group (const PgConfigLoader *loader, const char *group,
                               PgUpstreamConfig *up, GError **error)
{
  static const char *const tls_words[] = { "none", "starttls", "implicit", NULL };
  static const char *const provider_words[] = { "generic", "gmail", "outlook", NULL };
  static const char *const auth_words[] = { "password", "oauth2", NULL };
  static const char *const mechanism_words[] = { "auto", "plain", "login", NULL };
  static const char *const compress_words[] = { "off", "auto", NULL };
  g_autofree gchar *host = NULL;
  gint provider = 0;
  gint tls = (gint) up->tls;
  gint auth = (gint) up->auth;
  gint mechanism = (gint) up->auth_mechanism;
  gint compress = up->compress ? 1 : 0;
  const PgConfigProvider *preset;
  guint port = 0;

  G_STATIC_ASSERT (G_N_ELEMENTS (pg_config_providers) == G_N_ELEMENTS (provider_words) - 1);
  if (!pg_config_get_word (loader, group, "provider", provider_words, "generic, gmail, outlook",
                           &provider, error))
    return FALSE;
  preset = &pg_config_providers[provider];
  g_free (up->provider);
  up->provider = g_strdup (preset->name);
  if (preset->host != NULL)
    {
      up->tls = PG_UPSTREAM_TLS_IMPLICIT;
      tls = (gint) up->tls;
      host = g_strdup (preset->host);
      g_free (up->oauth2.token_url);
      up->oauth2.token_url = g_strdup (preset->token_url);
      g_free (up->oauth2.authorize_url);
      up->oauth2.authorize_url = g_strdup (preset->authorize_url);
      g_free (up->oauth2.device_url);
      up->oauth2.device_url = g_strdup (preset->device_url);
      g_free (up->oauth2.scope);
      up->oauth2.scope = g_strdup (preset->scope);
    }

  if (!pg_config_get_string (loader, group, "host", FALSE, &host, error))
    return FALSE;
  if (host == NULL)
    return pg_config_fail (loader, group, "host", error,
                           "missing: the upstream IMAP server's name or address is required");
  if (host[0] == '[' && host[strlen (host) - 1] == ']')
    {
      gchar *inner = g_strndup (host + 1, strlen (host) - 2);
      g_free (host);
      host = inner;
    }
  if (strpbrk (host, " \t/") != NULL)
    {
      g_autofree gchar *quoted = pg_config_quote (host);
      return pg_config_fail (loader, group, "host", error, "%s is not a host name or address",
                             quoted);
    }
  if (strchr (host, ':') != NULL && !g_hostname_is_ip_address (host))
    {
      g_autofree gchar *quoted = pg_config_quote (host);
      return pg_config_fail (loader, group, "host", error,
                             "%s: put the port in [%s] port, not in the host", quoted, group);
    }
  g_free (up->host);
  up->host = g_steal_pointer (&host);

  if (!pg_config_get_word (loader, group, "tls", tls_words, "none, starttls, implicit", &tls,
                           error))
    return FALSE;
  up->tls = (PgUpstreamTls) tls;
  if (!pg_config_get_uint (loader, group, "port", 1, 65535, &port, error))
    return FALSE;
  if (port == 0)
    port = up->tls == PG_UPSTREAM_TLS_IMPLICIT ? 993 : 143;
  up->port = (guint16) port;

  if (!pg_config_get_path (loader, group, "ca_file", TRUE, &up->ca_file, error))
    return FALSE;
  if (!pg_config_get_string (loader, group, "mailbox", TRUE, &up->mailbox, error))
    return FALSE;
  if (!pg_config_check_mailbox (loader, group, "mailbox", up->mailbox, error))
    return FALSE;
  if (!pg_config_get_duration (loader, group, "timeout", 1, &up->timeout_ms, error))
    return FALSE;
  if (!pg_config_get_duration (loader, group, "connect_timeout", 1, &up->connect_timeout_ms, error))
    return FALSE;
  if (!pg_config_get_word (loader, group, "auth", auth_words, "password, oauth2", &auth, error))
    return FALSE;
  up->auth = (PgUpstreamAuth) auth;
  if (!pg_config_get_word (loader, group, "auth_mechanism", mechanism_words, "auto, plain, login",
                           &mechanism, error))
    return FALSE;
  up->auth_mechanism = (PgAuthMechanism) mechanism;
  if (!pg_config_get_word (loader, group, "compress", compress_words, "off, auto", &compress,
                           error))
    return FALSE;
  up->compress = compress == 1;
  return pg_config_load_oauth2 (loader, group, up, error);
}

static void
pg_config_upstream_defaults (PgUpstreamConfig *up, const char *name)
{
  up->name = g_strdup (name);
  up->provider = g_strdup ("generic");
  up->port = 0; /* chosen from tls once that is known */
  up->tls = PG_UPSTREAM_TLS_IMPLICIT;
  up->mailbox = g_strdup ("INBOX");
  up->timeout_ms = PG_DEFAULT_UPSTREAM_TIMEOUT_S * 1000;
  up->connect_timeout_ms = PG_DEFAULT_UPSTREAM_CONNECT_TIMEOUT_S * 1000;
  up->auth = PG_UPSTREAM_AUTH_PASSWORD;
  up->auth_mechanism = PG_AUTH_MECHANISM_AUTO;
  up->oauth2.grant = PG_OAUTH2_GRANT_REFRESH_TOKEN;
  up->oauth2.mechanism = PG_OAUTH2_MECHANISM_AUTO;
}

static gboolean
pg_config_load_upstream (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  g_auto (GStrv) groups = g_key_file_get_groups (loader->keyfile, NULL);

  if (!pg_config_load_upstream_group (loader, "upstream", &config->upstream, error))
    return FALSE;
  for (gsize i = 0; groups[i] != NULL; i++)
    {
      PgUpstreamConfig *up;

      if (!g_str_has_prefix (groups[i], PG_CONFIG_UPSTREAM_GROUP_PREFIX))
        continue;
      up = g_new0 (PgUpstreamConfig, 1);
      pg_config_upstream_defaults (up, groups[i] + strlen (PG_CONFIG_UPSTREAM_GROUP_PREFIX));
      g_ptr_array_add (config->upstreams, up);
      if (!pg_config_load_upstream_group (loader, groups[i], up, error))
        return FALSE;
    }
  return TRUE;
}

static gboolean
pg_config_load_pop3 (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  static const char *const first_login_words[] = { "all", "new", NULL };
  static const char *const uidl_ledger_words[] = { "auto", "digest", "off", NULL };
  g_autofree gchar *delete_value = NULL;
  g_autofree gchar *first_login = NULL;
  g_autofree gchar *uidl_ledger = NULL;
  guint login_delay_ms = config->pop3.login_delay_s * 1000;

  if (!pg_config_get_listen (loader, "pop3", "listen", &config->pop3.listen, error))
    return FALSE;
  if (!pg_config_get_listen (loader, "pop3", "tls_listen", &config->pop3.tls_listen, error))
    return FALSE;

  if (!pg_config_get_raw (loader, "pop3", "delete", &delete_value, error))
    return FALSE;
  if (delete_value != NULL)
    {
      if (g_ascii_strcasecmp (delete_value, "expunge") == 0)
        config->pop3.delete_policy = PG_DELETE_EXPUNGE;
      else if (g_ascii_strcasecmp (delete_value, "keep") == 0)
        config->pop3.delete_policy = PG_DELETE_KEEP;
      else if (g_ascii_strncasecmp (delete_value, "move", 4) == 0
               && (delete_value[4] == ':' || delete_value[4] == '\0'))
        {
          const char *mailbox = delete_value[4] == ':' ? delete_value + 5 : "";

          while (*mailbox == ' ' || *mailbox == '\t')
            mailbox++;
          if (mailbox[0] == '\0')
            return pg_config_fail (loader, "pop3", "delete", error,
                                   "move needs a mailbox name, like move:Trash");
          if (!pg_config_check_mailbox (loader, "pop3", "delete", mailbox, error))
            return FALSE;
          config->pop3.delete_policy = PG_DELETE_MOVE;
          config->pop3.move_mailbox = g_strdup (mailbox);
        }
      else
        {
          g_autofree gchar *quoted = pg_config_quote (delete_value);
          return pg_config_fail (loader, "pop3", "delete", error,
                                 "%s is not one of expunge, move:MAILBOX, keep", quoted);
        }
    }

  if (!pg_config_get_bool (loader, "pop3", "mark_seen", &config->pop3.mark_seen, error))
    return FALSE;
  if (!pg_config_get_bool (loader, "pop3", "lock_session", &config->pop3.lock_session, error))
    return FALSE;
  if (!pg_config_get_bool (loader, "pop3", "allow_plaintext_auth",
                           &config->pop3.allow_plaintext_auth, error))
    return FALSE;
  if (!pg_config_get_duration (loader, "pop3", "autologout", PG_MIN_POP3_AUTOLOGOUT_S * 1000,
                               &config->pop3.autologout_ms, error))
    return FALSE;
  if (!pg_config_get_duration (loader, "pop3", "login_delay", 0, &login_delay_ms, error))
    return FALSE;
  if (login_delay_ms % 1000 != 0)
    return pg_config_fail (loader, "pop3", "login_delay", error,
                           "LOGIN-DELAY is advertised in whole seconds");
  config->pop3.login_delay_s = login_delay_ms / 1000;

  if (!pg_config_get_string (loader, "pop3", "client_tag_separator", TRUE,
                             &config->pop3.client_tag_separator, error))
    return FALSE;
  if (strlen (config->pop3.client_tag_separator) > PG_CONFIG_MAX_TAG_SEPARATOR
      || strpbrk (config->pop3.client_tag_separator, " \t") != NULL)
    return pg_config_fail (loader, "pop3", "client_tag_separator", error,
                           "use a short marker without spaces, like # or + (empty: no tags)");

  if (!pg_config_get_raw (loader, "pop3", "first_login", &first_login, error))
    return FALSE;
  if (first_login != NULL)
    {
      gint index = pg_config_match_word (loader, "pop3", "first_login", first_login,
                                         first_login_words, "all, new", error);
      if (index < 0)
        return FALSE;
      config->pop3.first_login = (PgFirstLogin) index;
    }
  if (!pg_config_get_uint (loader, "pop3", "recent_days", 0, PG_CONFIG_MAX_RECENT_DAYS,
                           &config->pop3.recent_days, error))
    return FALSE;
  if (!pg_config_get_bool (loader, "pop3", "proxy_protocol", &config->pop3.proxy_protocol, error))
    return FALSE;
  if (!pg_config_get_raw (loader, "pop3", "uidl_ledger", &uidl_ledger, error))
    return FALSE;
  if (uidl_ledger != NULL)
    {
      gint index = pg_config_match_word (loader, "pop3", "uidl_ledger", uidl_ledger,
                                         uidl_ledger_words, "auto, digest, off", error);
      if (index < 0)
        return FALSE;
      config->pop3.uidl_ledger = (PgUidlLedger) index;
    }
  return TRUE;
}

/* --- the accounts file ------------------------------------------------------------------- */

static void
pg_account_free (PgAccount *account)
{
  g_free (account->local_user);
  pg_secret_free (account->local_secret);
  g_free (account->upstream_user);
  pg_secret_free (account->password);
  g_free (account->token_file);
  g_free (account);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgAccount, pg_account_free)

/* A file that holds secrets: a regular file nobody but its owner may read or write. */
static gboolean
pg_config_check_secret_file (const char *path, GError **error)
{
  GStatBuf st;

  if (g_stat (path, &st) != 0)
    {
      int saved_errno = errno;
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: %s", path, g_strerror (saved_errno));
      return FALSE;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: not a regular file", path);
      return FALSE;
    }
  if ((st.st_mode & 077) != 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "%s: holds secrets but is accessible by group or others (mode %04o; use "
                   "chmod 600)",
                   path, (guint) (st.st_mode & 07777));
      return FALSE;
    }
  return TRUE;
}

static gboolean
pg_config_check_local_secret (const char *secret)
{
  /* An empty {PLAIN} secret would let anybody in with an empty password. */
  if (g_str_has_prefix (secret, "{PLAIN}"))
    return secret[strlen ("{PLAIN}")] != '\0';
  if (g_str_has_prefix (secret, "{PBKDF2-SHA256}"))
    {
      g_auto (GStrv) parts = g_strsplit (secret + strlen ("{PBKDF2-SHA256}"), "$", -1);
      guint64 iterations = 0;

      return g_strv_length (parts) == 3
             && g_ascii_string_to_unsigned (parts[0], 10, 1000, 100000000, &iterations, NULL)
             && parts[1][0] != '\0' && parts[2][0] != '\0';
    }
  return FALSE;
}

/* The first line of a 0600 file (a final newline is not part of it), wiped copy. */
static gchar *
pg_config_read_password_file (const char *path, GError **error)
{
  g_autofree gchar *text = NULL;
  gsize len = 0;
  gchar *password;

  if (!pg_config_check_secret_file (path, error) || !g_file_get_contents (path, &text, &len, error))
    return NULL;
  text[strcspn (text, "\r\n")] = '\0';
  password = g_strdup (text);
  pg_secret_wipe (text, len);
  if (password[0] == '\0')
    {
      pg_secret_free (password);
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: the password file is empty", path);
      return NULL;
    }
  return password;
}

/* The credential field of a line, for the account on `account->upstream`. */
static gboolean
pg_config_parse_credential (PgAccount *account, const char *field, const char *dir,
                            gboolean missing_token_ok, GError **error)
{
  const PgUpstreamConfig *up = account->upstream;
  gboolean oauth2 = up->auth == PG_UPSTREAM_AUTH_OAUTH2;

  if (strcmp (field, "-") == 0)
    {
      if (oauth2)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "\"-\" passes the client's password through, but upstream %s has auth "
                       "= oauth2",
                       up->name);
          return FALSE;
        }
      account->credential = PG_CREDENTIAL_PASS_THROUGH;
      return TRUE;
    }
  if (g_str_has_prefix (field, "password:") && field[strlen ("password:")] != '\0')
    {
      g_autofree gchar *path = g_canonicalize_filename (field + strlen ("password:"), dir);

      if (oauth2)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "password:FILE, but upstream %s has auth = oauth2 (use oauth2:FILE or "
                       "oauth2)",
                       up->name);
          return FALSE;
        }
      account->password = pg_config_read_password_file (path, error);
      if (account->password == NULL)
        return FALSE;
      account->credential = PG_CREDENTIAL_PASSWORD;
      return TRUE;
    }
  if (g_str_has_prefix (field, "oauth2:") && field[strlen ("oauth2:")] != '\0')
    {
      g_autofree gchar *path = g_canonicalize_filename (field + strlen ("oauth2:"), dir);

      if (!oauth2)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "oauth2:FILE, but upstream %s has auth = password", up->name);
          return FALSE;
        }
      /* --oauth2-authorize writes the first token: before it, the file need not exist. */
      if (!(missing_token_ok && !g_file_test (path, G_FILE_TEST_EXISTS))
          && !pg_config_check_secret_file (path, error))
        return FALSE;
      account->credential = PG_CREDENTIAL_OAUTH2;
      account->token_file = g_steal_pointer (&path);
      return TRUE;
    }
  if (strcmp (field, "oauth2") == 0)
    {
      if (!oauth2 || up->oauth2.grant != PG_OAUTH2_GRANT_CLIENT_CREDENTIALS)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "oauth2 (no token file) needs auth = oauth2 and oauth2_grant = "
                       "client_credentials in upstream %s",
                       up->name);
          return FALSE;
        }
      account->credential = PG_CREDENTIAL_OAUTH2_CLIENT;
      return TRUE;
    }
  g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
               "the credential must be password:FILE, oauth2:FILE, oauth2 or -");
  return FALSE;
}

/* One non-comment line, split into `words`. `legacy`: the [imap] account_map format
 * "local-user local-secret upstream-user upstream-password-file". */
static PgAccount *
pg_config_parse_account (const PgConfig *config, GPtrArray *words, gboolean legacy, const char *dir,
                         gboolean missing_token_ok, GError **error)
{
  g_autoptr (PgAccount) account = g_new0 (PgAccount, 1);
  const char *upstream_name = NULL;

  if (words->len != (legacy ? 4u : 5u))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "expected \"%s\"",
                   legacy ? "local-user local-secret upstream-user upstream-password-file"
                          : "local-user local-secret upstream upstream-user credential");
      return NULL;
    }
  /* Only now: a short line has no third field (found by fuzz-accounts). */
  upstream_name = legacy ? "default" : g_ptr_array_index (words, 2);
  if (!pg_config_check_local_secret (g_ptr_array_index (words, 1)))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "the local secret must be {PLAIN}password (not empty) or "
                   "{PBKDF2-SHA256}iterations$salt$hash (base64)");
      return NULL;
    }
  account->local_user = g_strdup (g_ptr_array_index (words, 0));
  account->local_secret = g_strdup (g_ptr_array_index (words, 1));
  account->upstream = pg_config_find_upstream (config, upstream_name);
  if (account->upstream == NULL)
    {
      g_autofree gchar *quoted = pg_config_quote (upstream_name);
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "unknown upstream %s (use default or the NAME of an [upstream:NAME] group)",
                   quoted);
      return NULL;
    }
  account->upstream_user = g_strdup (g_ptr_array_index (words, legacy ? 2 : 3));
  if (legacy)
    {
      g_autofree gchar *path = g_canonicalize_filename (g_ptr_array_index (words, 3), dir);

      account->password = pg_config_read_password_file (path, error);
      if (account->password == NULL)
        return NULL;
      account->credential = PG_CREDENTIAL_PASSWORD;
    }
  else if (!pg_config_parse_credential (account, g_ptr_array_index (words, 4), dir,
                                        missing_token_ok, error))
    return NULL;
  return g_steal_pointer (&account);
}

/* A 0600 file of secrets as lines: the file's text is wiped once split; the caller wipes
 * each line when done with it. */
static GStrv
pg_config_read_secret_lines (const char *path, GError **error)
{
  g_autofree gchar *text = NULL;
  gsize len = 0;
  GStrv lines;

  if (!pg_config_check_secret_file (path, error) || !g_file_get_contents (path, &text, &len, error))
    return NULL;
  lines = g_strsplit (text, "\n", -1);
  pg_secret_wipe (text, len);
  return lines;
}

/* The accounts file (see data/popgate.conf.example). Errors name the file and the line;
 * every copy of the file's text is wiped (it holds the local secrets). */
static GHashTable *
pg_config_load_accounts_file (const PgConfig *config, const char *path, gboolean legacy,
                              gboolean missing_token_ok, GError **error)
{
  g_autofree gchar *dir = g_path_get_dirname (path);
  g_autoptr (GHashTable) accounts = NULL;
  g_auto (GStrv) lines = NULL;

  lines = pg_config_read_secret_lines (path, error);
  if (lines == NULL)
    return NULL;
  accounts
      = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) pg_account_free);
  for (guint i = 0; lines[i] != NULL; i++)
    {
      g_auto (GStrv) fields = NULL;
      g_autoptr (GPtrArray) words = g_ptr_array_new ();
      g_autoptr (GError) cause = NULL;
      PgAccount *account;
      char *line = g_strstrip (lines[i]);

      if (line[0] == '\0' || line[0] == '#')
        {
          pg_secret_wipe (lines[i], strlen (lines[i]));
          continue;
        }
      fields = g_strsplit_set (line, " \t", -1);
      pg_secret_wipe (lines[i], strlen (lines[i]));
      for (guint f = 0; fields[f] != NULL; f++)
        if (fields[f][0] != '\0')
          g_ptr_array_add (words, fields[f]);
      account = g_hash_table_size (accounts) < PG_CONFIG_MAX_ACCOUNTS
                    ? pg_config_parse_account (config, words, legacy, dir, missing_token_ok, &cause)
                    : NULL;
      for (guint f = 0; fields[f] != NULL; f++)
        pg_secret_wipe (fields[f], strlen (fields[f]));
      if (account == NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s line %u: %s", path, i + 1,
                       cause != NULL ? cause->message : "too many accounts");
          return NULL;
        }
      if (g_hash_table_contains (accounts, account->local_user))
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "%s line %u: the local user is listed "
                       "twice",
                       path, i + 1);
          pg_account_free (account);
          return NULL;
        }
      g_hash_table_insert (accounts, account->local_user, account);
    }
  return g_steal_pointer (&accounts);
}

/* [status] auth_file: lines "user:{PLAIN}secret" or "user:{PBKDF2-SHA256}n$salt$hash",
 * checked like the accounts' local secrets. Errors name the file and line, never a secret. */
static GHashTable *
pg_config_load_status_users (const char *path, GError **error)
{
  g_autoptr (GHashTable) users = NULL;
  g_auto (GStrv) lines = NULL;

  lines = pg_config_read_secret_lines (path, error);
  if (lines == NULL)
    return NULL;
  users = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify) pg_secret_free);
  for (guint i = 0; lines[i] != NULL; i++)
    {
      char *line = g_strstrip (lines[i]);
      char *colon = strchr (line, ':');
      gboolean ok = FALSE;

      if (line[0] == '\0' || line[0] == '#')
        {
          pg_secret_wipe (lines[i], strlen (lines[i]));
          continue;
        }
      if (colon != NULL && colon != line && pg_config_check_local_secret (colon + 1))
        {
          *colon = '\0';
          ok = !g_hash_table_contains (users, line);
        }
      if (ok)
        g_hash_table_insert (users, g_strdup (line), g_strdup (colon + 1));
      pg_secret_wipe (lines[i], strlen (lines[i]));
      if (!ok)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                       "%s line %u: expected \"user:{PLAIN}password\" or "
                       "\"user:{PBKDF2-SHA256}iterations$salt$hash\", each user once",
                       path, i + 1);
          return NULL;
        }
    }
  if (g_hash_table_size (users) == 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: no user", path);
      return NULL;
    }
  return g_steal_pointer (&users);
}

gboolean
pg_config_status_check_user (const PgConfig *config, const char *user, const char *password)
{
  const char *secret;

  g_return_val_if_fail (config != NULL && user != NULL && password != NULL, FALSE);
  if (config->status.users == NULL)
    return FALSE;
  secret = g_hash_table_lookup (config->status.users, user);
  return secret != NULL && pg_config_secret_matches (secret, password);
}

const PgAccount *
pg_config_find_account (const PgConfig *config, const char *local_user)
{
  g_return_val_if_fail (config != NULL && local_user != NULL, NULL);
  if (config->accounts.table == NULL)
    return NULL;
  return g_hash_table_lookup (config->accounts.table, local_user);
}

gboolean
pg_config_account_check (const PgAccount *account, const char *password)
{
  return pg_config_secret_matches (account->local_secret, password);
}

gboolean
pg_config_secret_matches (const char *secret, const char *password)
{
  if (g_str_has_prefix (secret, "{PLAIN}"))
    {
      const char *expected = secret + strlen ("{PLAIN}");
      gsize len = strlen (expected);
      /* Same length first (the length of the stored secret is not the secret). */
      return len > 0 && strlen (password) == len && pg_secret_equal (expected, password, len);
    }
  if (g_str_has_prefix (secret, "{PBKDF2-SHA256}"))
    {
      g_auto (GStrv) parts = g_strsplit (secret + strlen ("{PBKDF2-SHA256}"), "$", -1);
      guint64 iterations = g_ascii_strtoull (parts[0], NULL, 10);
      gsize salt_len = 0, hash_len = 0;
      g_autofree guchar *salt = g_base64_decode (parts[1], &salt_len);
      g_autofree guchar *hash = g_base64_decode (parts[2], &hash_len);
      g_autofree guchar *derived = NULL;
      gnutls_datum_t key = { (unsigned char *) password, (unsigned int) strlen (password) };
      gnutls_datum_t salt_datum = { salt, (unsigned int) salt_len };
      gboolean ok;

      if (hash_len == 0 || hash_len > 64)
        return FALSE;
      derived = g_malloc (hash_len);
      if (gnutls_pbkdf2 (GNUTLS_MAC_SHA256, &key, &salt_datum, (unsigned) iterations, derived,
                         hash_len)
          != 0)
        return FALSE;
      ok = pg_secret_equal (derived, hash, hash_len);
      pg_secret_wipe (derived, hash_len);
      return ok;
    }
  return FALSE;
}

const char *
pg_credential_kind_to_string (PgCredentialKind kind)
{
  switch (kind)
    {
    case PG_CREDENTIAL_PASSWORD:
      return "password";
    case PG_CREDENTIAL_OAUTH2:
      return "oauth2-token-file";
    case PG_CREDENTIAL_OAUTH2_CLIENT:
      return "oauth2-client-credentials";
    case PG_CREDENTIAL_PASS_THROUGH:
      return "pass-through";
    }
  return "?";
}

/* [accounts] file, or the deprecated [imap] account_map (not both): after the upstreams,
 * which the lines name. */
static gboolean
pg_config_load_accounts (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  g_autoptr (GError) cause = NULL;
  const char *group = "accounts";
  const char *key = "file";

  if (!pg_config_get_path (loader, "accounts", "file", TRUE, &config->accounts.file, error))
    return FALSE;
  if (config->imap.account_map != NULL)
    {
      if (config->accounts.file != NULL)
        return pg_config_fail (loader, "imap", "account_map", error,
                               "[accounts] file replaces it: set only one of the two");
      config->accounts.file = g_strdup (config->imap.account_map);
      config->accounts.deprecated_map = TRUE;
      group = "imap";
      key = "account_map";
    }
  if (config->accounts.file == NULL)
    return TRUE;
  config->accounts.table = pg_config_load_accounts_file (config, config->accounts.file,
                                                         config->accounts.deprecated_map,
                                                         loader->missing_token_files, &cause);
  if (config->accounts.table == NULL)
    return pg_config_fail_from (loader, group, key, error, cause);
  return TRUE;
}

static gboolean
pg_config_load_imap (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  if (!pg_config_get_listen (loader, "imap", "listen", &config->imap.listen, error))
    return FALSE;
  if (!pg_config_get_listen (loader, "imap", "tls_listen", &config->imap.tls_listen, error))
    return FALSE;
  if (!pg_config_get_bool (loader, "imap", "allow_plaintext_auth",
                           &config->imap.allow_plaintext_auth, error))
    return FALSE;
  if (!pg_config_get_duration (loader, "imap", "idle_timeout",
                               PG_DEFAULT_IMAP_IDLE_TIMEOUT_S * 1000, &config->imap.idle_timeout_ms,
                               error))
    return FALSE;
  if (!pg_config_get_bool (loader, "imap", "proxy_protocol", &config->imap.proxy_protocol, error))
    return FALSE;
  if (!pg_config_get_path (loader, "imap", "account_map", TRUE, &config->imap.account_map, error))
    return FALSE;
  return TRUE;
}

static gboolean
pg_config_load_tls (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  gboolean any_tls_listen = config->pop3.tls_listen->len > 0 || config->imap.tls_listen->len > 0;

  if (!pg_config_get_path (loader, "tls", "cert", TRUE, &config->tls.cert, error))
    return FALSE;
  if (!pg_config_get_path (loader, "tls", "key", TRUE, &config->tls.key, error))
    return FALSE;
  if (!pg_config_get_string (loader, "tls", "priority", FALSE, &config->tls.priority, error))
    return FALSE;

  if (config->tls.cert == NULL && any_tls_listen)
    return pg_config_fail (loader, "tls", "cert", error,
                           "missing: a tls_listen address is set, so popgate needs a "
                           "certificate to present");
  if (config->tls.key == NULL && (any_tls_listen || config->tls.cert != NULL))
    return pg_config_fail (loader, "tls", "key", error,
                           "missing: cert is set, so its private key is needed too");
  if (config->tls.cert == NULL && config->tls.key != NULL)
    return pg_config_fail (loader, "tls", "cert", error,
                           "missing: key is set, so its certificate is needed too");

  if (config->tls.priority != NULL)
    {
      gnutls_priority_t priority = NULL;
      const char *error_pos = NULL;
      int rc = gnutls_priority_init (&priority, config->tls.priority, &error_pos);

      if (rc != GNUTLS_E_SUCCESS)
        {
          g_autofree gchar *quoted = pg_config_quote (config->tls.priority);
          g_autofree gchar *at
              = pg_config_quote (error_pos != NULL ? error_pos : config->tls.priority);
          return pg_config_fail (loader, "tls", "priority", error,
                                 "%s is not a GnuTLS priority string (%s, at %s)", quoted,
                                 gnutls_strerror (rc), at);
        }
      gnutls_priority_deinit (priority);
    }
  return TRUE;
}

/* The status page shows who is connected from where: loopback only unless the admin
 * says otherwise, and then never without a password. */
static gboolean
pg_config_load_status (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  g_autoptr (GError) local_error = NULL;

  if (!pg_config_get_listen (loader, "status", "listen", &config->status.listen, error))
    return FALSE;
  if (!pg_config_get_bool (loader, "status", "allow_remote", &config->status.allow_remote, error))
    return FALSE;
  if (!pg_config_get_path (loader, "status", "auth_file", FALSE, &config->status.auth_file, error))
    return FALSE;
  if (config->status.auth_file != NULL)
    {
      config->status.users = pg_config_load_status_users (config->status.auth_file, &local_error);
      if (config->status.users == NULL)
        return pg_config_fail_from (loader, "status", "auth_file", error,
                                    g_steal_pointer (&local_error));
    }
  if (config->status.allow_remote && config->status.users == NULL)
    return pg_config_fail (loader, "status", "allow_remote", error,
                           "allow_remote = true needs [status] auth_file (HTTP basic auth)");
  if (config->status.allow_remote)
    return TRUE;
  for (guint i = 0; i < config->status.listen->len; i++)
    {
      const PgListenAddr *addr = g_ptr_array_index (config->status.listen, i);
      g_autoptr (GInetAddress) inet
          = addr->any ? NULL : g_inet_address_new_from_string (addr->host);

      if (inet == NULL || !g_inet_address_get_is_loopback (inet))
        {
          g_autofree gchar *where = pg_listen_addr_to_string (addr);
          return pg_config_fail (loader, "status", "listen", error,
                                 "%s is not a loopback address: set allow_remote = true and "
                                 "auth_file to serve the status page beyond this host",
                                 where);
        }
    }
  return TRUE;
}

static gboolean
pg_config_load_rest (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  static const char *const backend_words[] = { "file", "imap-metadata", NULL };
  g_autofree gchar *backend = NULL;

  if (!pg_config_get_raw (loader, "state", "backend", &backend, error))
    return FALSE;
  if (backend != NULL)
    {
      gint index = pg_config_match_word (loader, "state", "backend", backend, backend_words,
                                         "file, imap-metadata", error);
      if (index < 0)
        return FALSE;
      config->state.backend = (PgStateBackend) index;
    }
  /* The state directory is created by the state module; it need not exist yet. */
  if (!pg_config_get_path (loader, "state", "path", FALSE, &config->state.path, error))
    return FALSE;

  if (!pg_config_get_listen (loader, "metrics", "listen", &config->metrics.listen, error))
    return FALSE;
  if (!pg_config_load_status (loader, config, error))
    return FALSE;

  if (!pg_config_get_uint (loader, "limits", "max_sessions", 1, PG_CONFIG_MAX_COUNT,
                           &config->limits.max_sessions, error))
    return FALSE;
  if (!pg_config_get_uint (loader, "limits", "max_sessions_per_address", 1, PG_CONFIG_MAX_COUNT,
                           &config->limits.max_sessions_per_address, error))
    return FALSE;
  if (!pg_config_get_duration (loader, "limits", "preauth_timeout", 1,
                               &config->limits.preauth_timeout_ms, error))
    return FALSE;
  if (!pg_config_get_duration (loader, "limits", "auth_failure_delay", 0,
                               &config->limits.auth_failure_delay_ms, error))
    return FALSE;
  if (!pg_config_get_uint (loader, "limits", "max_auth_failures", 1, PG_CONFIG_MAX_COUNT,
                           &config->limits.max_auth_failures, error))
    return FALSE;
  if (!pg_config_get_uint (loader, "limits", "max_bad_commands", 1, PG_CONFIG_MAX_COUNT,
                           &config->limits.max_bad_commands, error))
    return FALSE;
  if (!pg_config_get_duration (loader, "limits", "shutdown_timeout", 0,
                               &config->limits.shutdown_timeout_ms, error))
    return FALSE;

  if (!pg_config_get_bool (loader, "log", "trace", &config->log.trace, error))
    return FALSE;

  {
    g_autofree gchar *trusted = NULL;
    g_autoptr (GError) local_error = NULL;
    g_autoptr (GPtrArray) networks = NULL;

    if (!pg_config_get_raw (loader, "proxy", "trusted", &trusted, error))
      return FALSE;
    if (trusted != NULL)
      {
        /* An empty list is allowed: a proxy_protocol listener then refuses everybody,
         * which is what "trust nobody" means. */
        networks = trusted[0] != '\0' ? pg_config_parse_networks (trusted, &local_error)
                                      : g_ptr_array_new_with_free_func (g_object_unref);
        if (networks == NULL)
          return pg_config_fail_from (loader, "proxy", "trusted", error, local_error);
        g_ptr_array_unref (config->proxy.trusted);
        config->proxy.trusted = g_steal_pointer (&networks);
      }
  }
  return TRUE;
}

/* Two listeners that could not both be bound. "::" counts as dual-stack (GLib's IPv6
 * sockets accept IPv4 too), so it overlaps every address on its port. */
static gboolean
pg_config_listen_overlaps (const PgListenAddr *a, const PgListenAddr *b)
{
  g_autoptr (GInetAddress) ia = NULL;
  g_autoptr (GInetAddress) ib = NULL;

  if (a->port != b->port)
    return FALSE;
  if (a->any || b->any || g_str_equal (a->host, b->host))
    return TRUE;
  ia = g_inet_address_new_from_string (a->host);
  ib = g_inet_address_new_from_string (b->host);
  if (ia == NULL || ib == NULL)
    return FALSE;
  for (guint swap = 0; swap < 2; swap++)
    {
      GInetAddress *x = swap ? ib : ia;
      GInetAddress *y = swap ? ia : ib;

      if (g_inet_address_get_is_any (x)
          && (g_inet_address_get_family (x) == G_SOCKET_FAMILY_IPV6
              || g_inet_address_get_family (x) == g_inet_address_get_family (y)))
        return TRUE;
    }
  return FALSE;
}

static gboolean
pg_config_check_listeners (const PgConfigLoader *loader, PgConfig *config, GError **error)
{
  const struct
  {
    const char *group;
    const char *key;
    GPtrArray *list;
  } lists[] = {
    { "pop3", "listen", config->pop3.listen },
    { "pop3", "tls_listen", config->pop3.tls_listen },
    { "imap", "listen", config->imap.listen },
    { "imap", "tls_listen", config->imap.tls_listen },
    { "metrics", "listen", config->metrics.listen },
    { "status", "listen", config->status.listen },
  };
  guint mail_listeners = 0;

  for (gsize l = 0; l < G_N_ELEMENTS (lists); l++)
    {
      if (g_strcmp0 (lists[l].group, "metrics") != 0 && g_strcmp0 (lists[l].group, "status") != 0)
        mail_listeners += lists[l].list->len;
    }
  if (mail_listeners == 0 && !loader->inherited_listeners)
    return pg_config_fail (loader, "pop3", "listen", error,
                           "no listener: set at least one of [pop3] listen, [pop3] tls_listen, "
                           "[imap] listen, [imap] tls_listen");

  /* Every address against every earlier one, across all lists: a handful of entries. */
  for (gsize l = 0; l < G_N_ELEMENTS (lists); l++)
    {
      for (guint i = 0; i < lists[l].list->len; i++)
        {
          const PgListenAddr *addr = g_ptr_array_index (lists[l].list, i);

          for (gsize m = 0; m <= l; m++)
            {
              guint end = m == l ? i : lists[m].list->len;

              for (guint j = 0; j < end; j++)
                {
                  const PgListenAddr *other = g_ptr_array_index (lists[m].list, j);
                  g_autofree gchar *a = NULL;
                  g_autofree gchar *b = NULL;

                  if (!pg_config_listen_overlaps (addr, other))
                    continue;
                  a = pg_listen_addr_to_string (addr);
                  b = pg_listen_addr_to_string (other);
                  return pg_config_fail (loader, lists[l].group, lists[l].key, error,
                                         "%s overlaps %s in [%s] %s: one address, one "
                                         "listener",
                                         a, b, lists[m].group, lists[m].key);
                }
            }
        }
    }
  return TRUE;
}

/* What GKeyFile's API hides: a key set twice (GKeyFile keeps the last one silently) and a
 * localised key "name[de]" (g_key_file_get_keys() skips them). Both would let a setting
 * the admin wrote be ignored, so both are errors. `data` has already parsed as a key file. */
static gboolean
pg_config_scan_text (const PgConfigLoader *loader, const char *data, gsize len, GError **error)
{
  g_autoptr (GHashTable) seen = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autofree gchar *text = g_strndup (data, len);
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);
  g_autofree gchar *group = NULL;

  for (gsize i = 0; lines[i] != NULL; i++)
    {
      gchar *line = g_strstrip (lines[i]);
      gchar *equals = NULL;
      g_autofree gchar *seen_key = NULL;
      gsize line_no = i + 1;

      if (line[0] == '\0' || line[0] == '#')
        continue;
      if (line[0] == '[')
        {
          gchar *close = strrchr (line, ']');
          g_free (group);
          group = g_strndup (line + 1, close != NULL ? (gsize) (close - line - 1) : 0);
          continue;
        }
      equals = strchr (line, '=');
      if (equals == NULL || group == NULL)
        continue; /* cannot happen after GKeyFile accepted the text */
      *equals = '\0';
      g_strchomp (line);
      if (strchr (line, '[') != NULL)
        return pg_config_fail (loader, group, line, error,
                               "unknown key (localised keys are not supported)");
      seen_key = g_strdup_printf ("%s\n%s", group, line);
      if (g_hash_table_contains (seen, seen_key))
        return pg_config_fail (loader, group, line, error,
                               "set twice (again on line %" G_GSIZE_FORMAT ")%s", line_no,
                               g_str_has_suffix (line, "listen")
                                   ? "; list several addresses in one value, comma-separated"
                                   : "");
      g_hash_table_add (seen, g_steal_pointer (&seen_key));
    }
  return TRUE;
}

static PgConfig *
pg_config_build (const PgConfigLoader *loader, GError **error)
{
  g_autoptr (PgConfig) config = pg_config_new_defaults (loader->source);

  if (!pg_config_check_keys (loader, error))
    return NULL;
  if (!pg_config_load_upstream (loader, config, error))
    return NULL;
  if (!pg_config_load_pop3 (loader, config, error))
    return NULL;
  if (!pg_config_load_imap (loader, config, error))
    return NULL;
  if (!pg_config_load_accounts (loader, config, error))
    return NULL;
  if (!pg_config_load_tls (loader, config, error))
    return NULL;
  if (!pg_config_load_rest (loader, config, error))
    return NULL;
  if (!pg_config_check_listeners (loader, config, error))
    return NULL;
  return g_steal_pointer (&config);
}

static void
pg_config_note_origin (PgConfigLoader *loader, const char *group, const char *key, const char *flag)
{
  g_hash_table_replace (loader->origins, g_strdup_printf ("%s\n%s", group, key),
                        g_strdup_printf (PG_CONFIG_COMMAND_LINE " %s", flag));
}

static void
pg_config_set_override (PgConfigLoader *loader, const char *group, const char *key,
                        const char *value, const char *flag)
{
  g_key_file_set_value (loader->keyfile, group, key, value);
  pg_config_note_origin (loader, group, key, flag);
}

/* "[imaps://|imap://]HOST[:PORT]" with HOST a name, an IPv4 address or [IPv6]. */
static gboolean
pg_config_apply_upstream_override (PgConfigLoader *loader, const char *value, GError **error)
{
  g_autofree gchar *host = NULL;
  g_autofree gchar *port = NULL;
  g_autoptr (GError) local_error = NULL;

  /* So that a malformed flag is reported as the flag's error, not the file's. */
  pg_config_note_origin (loader, "upstream", "host", "--upstream");
  if (g_ascii_strncasecmp (value, "imaps://", 8) == 0
      || g_ascii_strncasecmp (value, "imap://", 7) == 0)
    {
      g_autofree gchar *scheme = NULL;
      g_autofree gchar *uri = g_strdup (value);
      gsize len = strlen (uri);
      gint uri_port = -1;

      if (len > 0 && uri[len - 1] == '/')
        uri[len - 1] = '\0';
      /* Certificates are always verified; a plaintext upstream: --upstream-tls none. */
      if (!g_uri_split_network (uri, G_URI_FLAGS_NONE, &scheme, &host, &uri_port, &local_error))
        return pg_config_fail (loader, "upstream", "host", error, "%s", local_error->message);
      pg_config_set_override (loader, "upstream", "tls",
                              g_ascii_strcasecmp (scheme, "imaps") == 0 ? "implicit" : "starttls",
                              "--upstream");
      if (uri_port > 0)
        port = g_strdup_printf ("%d", uri_port);
    }
  else
    {
      g_autoptr (GSocketConnectable) address = g_network_address_parse (value, 0, &local_error);

      if (address == NULL)
        return pg_config_fail (loader, "upstream", "host", error,
                               "%s (write HOST, HOST:PORT, [ADDR]:PORT or imaps://HOST:PORT)",
                               local_error->message);
      host = g_strdup (g_network_address_get_hostname (G_NETWORK_ADDRESS (address)));
      if (g_network_address_get_port (G_NETWORK_ADDRESS (address)) != 0)
        port = g_strdup_printf ("%u", g_network_address_get_port (G_NETWORK_ADDRESS (address)));
    }
  if (host == NULL || host[0] == '\0')
    return pg_config_fail (loader, "upstream", "host", error, "missing host name");
  pg_config_set_override (loader, "upstream", "host", host, "--upstream");
  if (port != NULL)
    pg_config_set_override (loader, "upstream", "port", port, "--upstream");
  return TRUE;
}

static PgConfig *
pg_config_load_keyfile (GKeyFile *keyfile, const char *data, gsize len, const char *source,
                        const char *base_dir, const PgConfigOverrides *overrides, GError **error)
{
  PgConfigLoader loader = {
    .source = source,
    .keyfile = keyfile,
    .base_dir = g_strdup (base_dir),
    .origins = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free),
  };
  PgConfig *config = NULL;

  if (data != NULL && !pg_config_scan_text (&loader, data, len, error))
    {
      pg_config_loader_clear (&loader);
      return NULL;
    }
  if (overrides != NULL)
    {
      gboolean ok = TRUE;

      loader.inherited_listeners = overrides->inherited_listeners;
      loader.missing_token_files = overrides->missing_token_files;
      if (overrides->upstream != NULL)
        ok = pg_config_apply_upstream_override (&loader, overrides->upstream, error);
      /* After --upstream, whose scheme implies a tls mode: the explicit flag wins. */
      if (ok && overrides->upstream_tls != NULL)
        pg_config_set_override (&loader, "upstream", "tls", overrides->upstream_tls,
                                "--upstream-tls");
      if (ok && overrides->upstream_ca != NULL)
        pg_config_set_override (&loader, "upstream", "ca_file", overrides->upstream_ca,
                                "--upstream-ca");
      if (ok && overrides->pop3_listen != NULL)
        pg_config_set_override (&loader, "pop3", "listen", overrides->pop3_listen, "--pop3-listen");
      if (ok && overrides->imap_listen != NULL)
        pg_config_set_override (&loader, "imap", "listen", overrides->imap_listen, "--imap-listen");
      if (!ok)
        {
          pg_config_loader_clear (&loader);
          return NULL;
        }
    }
  config = pg_config_build (&loader, error);
  pg_config_loader_clear (&loader);
  return config;
}

PgConfig *
pg_config_load (const char *path, const PgConfigOverrides *overrides, GError **error)
{
  g_autoptr (GKeyFile) keyfile = g_key_file_new ();
  g_autoptr (GError) local_error = NULL;
  g_autofree gchar *contents = NULL;
  g_autofree gchar *absolute = NULL;
  g_autofree gchar *base_dir = NULL;
  gsize len = 0;

  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (path == NULL)
    {
      base_dir = g_get_current_dir ();
      return pg_config_load_keyfile (keyfile, NULL, 0, PG_CONFIG_COMMAND_LINE, base_dir, overrides,
                                     error);
    }

  if (!g_file_get_contents (path, &contents, &len, &local_error))
    {
      /* GLib's message already names the file. */
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s", local_error->message);
      return NULL;
    }
  if (!g_key_file_load_from_data (keyfile, contents, len, G_KEY_FILE_NONE, &local_error))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: syntax error: %s", path,
                   local_error->message);
      return NULL;
    }
  absolute = g_canonicalize_filename (path, NULL);
  base_dir = g_path_get_dirname (absolute);
  return pg_config_load_keyfile (keyfile, contents, len, path, base_dir, overrides, error);
}

PgConfig *
pg_config_load_file (const char *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  return pg_config_load (path, NULL, error);
}

PgConfig *
pg_config_load_data (const char *data, gsize len, const char *source, GError **error)
{
  g_autoptr (GKeyFile) keyfile = g_key_file_new ();
  g_autoptr (GError) local_error = NULL;
  g_autofree gchar *base_dir = NULL;

  g_return_val_if_fail (data != NULL, NULL);
  g_return_val_if_fail (source != NULL, NULL);

  if (!g_key_file_load_from_data (keyfile, data, len, G_KEY_FILE_NONE, &local_error))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "%s: syntax error: %s", source,
                   local_error->message);
      return NULL;
    }
  base_dir = g_get_current_dir ();
  return pg_config_load_keyfile (keyfile, data, len, source, base_dir, NULL, error);
}
