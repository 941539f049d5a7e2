/* popgate — configuration: a GKeyFile parsed strictly into one immutable, refcounted
 * object. Every key is documented with its default in data/popgate.conf.example.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef enum
{
  PG_UPSTREAM_TLS_NONE,
  PG_UPSTREAM_TLS_STARTTLS,
  PG_UPSTREAM_TLS_IMPLICIT,
} PgUpstreamTls;

typedef enum
{
  PG_DELETE_EXPUNGE,
  PG_DELETE_MOVE,
  PG_DELETE_KEEP,
} PgDeletePolicy;

typedef enum
{
  PG_STATE_BACKEND_FILE,
  PG_STATE_BACKEND_IMAP_METADATA,
} PgStateBackend;

typedef enum
{
  PG_FIRST_LOGIN_ALL,
  PG_FIRST_LOGIN_NEW,
} PgFirstLogin;

/* [pop3] uidl_ledger: what names a message across a UIDVALIDITY change. */
typedef enum
{
  PG_UIDL_LEDGER_AUTO,   /* the server's EMAILID or X-GM-MSGID, else DIGEST */
  PG_UIDL_LEDGER_DIGEST, /* Message-ID, Date and RFC822.SIZE, whatever the server offers */
  PG_UIDL_LEDGER_OFF,    /* no ledger: a UIDVALIDITY change gives every message a new UIDL */
} PgUidlLedger;

/* One listening address from a "ADDR:PORT, [V6]:PORT, *:PORT" list. Host names are not
 * accepted, only literal addresses. "*:PORT" means every IPv4 and IPv6 address: `any` is
 * set and `host` is "::"; bind it with g_socket_listener_add_inet_port(), which copes with
 * hosts without IPv6 and with v6-only sockets. */
typedef struct
{
  gchar *host; /* owned: literal address in canonical form, no brackets */
  guint16 port;
  gboolean any; /* "*:PORT" */
} PgListenAddr;

void pg_listen_addr_free (PgListenAddr *addr);
/* "1.2.3.4:110", "[::1]:110" or "*:110", for logs and messages. */
gchar *pg_listen_addr_to_string (const PgListenAddr *addr);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgListenAddr, pg_listen_addr_free)

typedef enum
{
  PG_UPSTREAM_AUTH_PASSWORD, /* the client's (or the account's) password */
  PG_UPSTREAM_AUTH_OAUTH2,   /* an OAuth 2.0 access token (XOAUTH2 / OAUTHBEARER) */
} PgUpstreamAuth;

/* How a password goes upstream ([upstream] auth_mechanism). */
typedef enum
{
  PG_AUTH_MECHANISM_AUTO, /* AUTHENTICATE PLAIN when advertised, else LOGIN; falls back to
                           * LOGIN once when AUTHENTICATE fails for another reason than
                           * bad credentials */
  PG_AUTH_MECHANISM_PLAIN,
  PG_AUTH_MECHANISM_LOGIN,
} PgAuthMechanism;

typedef enum
{
  PG_OAUTH2_GRANT_REFRESH_TOKEN,      /* delegated: a per-account refresh token file */
  PG_OAUTH2_GRANT_CLIENT_CREDENTIALS, /* app-only: no per-account file */
} PgOAuth2Grant;

typedef enum
{
  PG_OAUTH2_MECHANISM_AUTO, /* OAUTHBEARER if the upstream offers it, else XOAUTH2 */
  PG_OAUTH2_MECHANISM_XOAUTH2,
  PG_OAUTH2_MECHANISM_OAUTHBEARER,
} PgOAuth2Mechanism;

/* The oauth2_* keys of an upstream group (meaningful with auth = oauth2). */
typedef struct
{
  gchar *token_url;            /* owned: https://, or http:// to a loopback host only */
  gchar *client_id;            /* owned */
  gchar *client_secret_file;   /* owned; NULL for a public client */
  gchar *scope;                /* owned; NULL: none sent */
  PgOAuth2Grant grant;         /* default refresh_token */
  PgOAuth2Mechanism mechanism; /* default auto */
  gchar *authorize_url;        /* owned; for --oauth2-authorize (code + PKCE) */
  gchar *device_url;           /* owned; for --oauth2-authorize (device grant, RFC 8628) */
  gchar *ca_file;              /* owned; NULL: the system trust store. Always verified */
} PgOAuth2Config;

/* One upstream: [upstream] (name "default") or an [upstream:NAME] group. */
typedef struct
{
  gchar *name;     /* owned: "default" or NAME */
  gchar *provider; /* owned: "generic", "gmail" or "outlook" (presets applied) */
  gchar *host;
  guint16 port;                   /* default 993 for implicit, else 143 */
  PgUpstreamTls tls;              /* default implicit */
  gchar *ca_file;                 /* NULL: the system trust store */
  gchar *mailbox;                 /* default "INBOX" */
  guint timeout_ms;               /* per command; default 60 s */
  guint connect_timeout_ms;       /* default 30 s */
  PgUpstreamAuth auth;            /* default password */
  PgAuthMechanism auth_mechanism; /* default auto */
  gboolean compress; /* compress = auto: COMPRESS=DEFLATE after login when offered; default off */
  PgOAuth2Config oauth2;
} PgUpstreamConfig;

/* The whole configuration. Immutable once loaded: share it with pg_config_ref(). All
 * durations are in milliseconds. Strings are owned by the config; NULL = not set. */
typedef struct
{
  gint ref_count; /* private */
  gchar *source;  /* owned: the file it came from, or "(command line)" */

  /* [upstream]: the default upstream (name "default"). */
  PgUpstreamConfig upstream;
  /* [upstream:NAME] groups, of PgUpstreamConfig* (owned, in file order); may be empty.
   * Find one with pg_config_find_upstream(). */
  GPtrArray *upstreams;

  struct
  {
    GPtrArray *listen;            /* owned, of PgListenAddr*; may be empty */
    GPtrArray *tls_listen;        /* owned, of PgListenAddr*; may be empty */
    PgDeletePolicy delete_policy; /* default expunge */
    gchar *move_mailbox;          /* the MAILBOX of "move:MAILBOX", else NULL */
    gboolean mark_seen;           /* default true */
    gboolean lock_session;        /* a second session of one user+mailbox+tag gets [IN-USE]; default
                                   * false (Dovecot's pop3_lock_session = no) */
    gboolean allow_plaintext_auth; /* plaintext auth off-loopback without TLS; default false */
    guint autologout_ms;           /* RFC 1939 autologout; default and minimum 10 min */
    guint login_delay_s;           /* LOGIN-DELAY to advertise; 0 = not advertised */
    gchar *client_tag_separator;   /* default "#"; "" disables tags */
    PgFirstLogin first_login;      /* default all */
    guint recent_days;             /* 0 = no age window */
    PgUidlLedger uidl_ledger;      /* default auto */
    gboolean proxy_protocol;       /* every pop3 listener expects a PROXY header; default false */
  } pop3;

  struct
  {
    GPtrArray *listen;
    GPtrArray *tls_listen;
    gboolean allow_plaintext_auth; /* default false */
    guint idle_timeout_ms;         /* default and minimum 30 min */
    gboolean proxy_protocol;       /* every imap listener expects a PROXY header; default false */
    gchar *account_map;            /* deprecated alias of [accounts] file (its 4-field lines) */
  } imap;

  struct
  {
    gchar *file;             /* owned: the accounts file ([accounts] file, or the deprecated
                              * [imap] account_map); NULL: every login goes to [upstream] */
    gboolean deprecated_map; /* it came from [imap] account_map: main warns about it */
    GHashTable *table;       /* owned: local user → PgAccount*; NULL without a file */
  } accounts;

  struct
  {
    gchar *cert;     /* PEM certificate (chain) presented to clients */
    gchar *key;      /* PEM private key */
    gchar *priority; /* GnuTLS priority string; NULL = the backend's default */
  } tls;

  struct
  {
    PgStateBackend backend; /* default file */
    gchar *path;            /* default /var/lib/popgate */
  } state;

  struct
  {
    GPtrArray *listen; /* empty: no metrics endpoint */
  } metrics;

  struct
  {
    GPtrArray *listen;     /* empty (default): no status page */
    gboolean allow_remote; /* FALSE: listen must be loopback, clients must be loopback */
    gchar *auth_file;      /* HTTP basic auth users; required with allow_remote */
    GHashTable *users;     /* owned: user → secret (wiped), from auth_file; or NULL */
  } status;

  struct
  {
    guint max_sessions;             /* all front ends together */
    guint max_sessions_per_address; /* per client IP address */
    guint preauth_timeout_ms;
    guint auth_failure_delay_ms;
    guint max_auth_failures;   /* then disconnect */
    guint max_bad_commands;    /* then disconnect */
    guint shutdown_timeout_ms; /* SIGTERM: how long sessions may still run */
  } limits;

  struct
  {
    gboolean trace; /* audit trace of client ↔ upstream commands */
  } log;

  struct
  {
    /* owned, of GInetAddressMask*: the peers allowed to send a PROXY header; a
     * connection from elsewhere to a proxy_protocol listener is refused. Default
     * 127.0.0.0/8 and ::1/128. */
    GPtrArray *trusted;
  } proxy;
} PgConfig;

/* The upstream called `name` ("default" or NULL: [upstream]), or NULL when there is none. */
const PgUpstreamConfig *pg_config_find_upstream (const PgConfig *config, const char *name);
void pg_upstream_config_clear (PgUpstreamConfig *upstream);
void pg_upstream_config_free (PgUpstreamConfig *upstream);

/* How popgate proves itself upstream for an account (the accounts file's last field). */
typedef enum
{
  PG_CREDENTIAL_PASSWORD,      /* password:FILE: the upstream password, read at load */
  PG_CREDENTIAL_OAUTH2,        /* oauth2:FILE: a refresh-token file (auth = oauth2) */
  PG_CREDENTIAL_OAUTH2_CLIENT, /* oauth2: client_credentials, no per-account file */
  PG_CREDENTIAL_PASS_THROUGH,  /* -: the client's own password (auth = password) */
} PgCredentialKind;

/* One line of the accounts file ([accounts] file): a local login that popgate checks
 * itself and logs in upstream with the account's credential. */
typedef struct
{
  gchar *local_user;   /* owned */
  gchar *local_secret; /* owned, wiped: "{PLAIN}text" or "{PBKDF2-SHA256}n$salt$hash" */
  const PgUpstreamConfig *upstream; /* unowned: the config's [upstream] or [upstream:NAME] */
  gchar *upstream_user;             /* owned */
  PgCredentialKind credential;
  gchar *password;   /* owned, wiped: PG_CREDENTIAL_PASSWORD only, else NULL */
  gchar *token_file; /* owned: absolute path, PG_CREDENTIAL_OAUTH2 only, else NULL */
} PgAccount;

/* The accounts file's entry for a local user (no client tag), or NULL: the login then
 * goes to [upstream] with the client's own credentials. */
const PgAccount *pg_config_find_account (const PgConfig *config, const char *local_user);
/* Does `password` match the account's local secret? Constant time in the password. */
gboolean pg_config_account_check (const PgAccount *account, const char *password);
const char *pg_credential_kind_to_string (PgCredentialKind kind);

/* Is `key` a key of `group` (tests check the docs against the code's key table)? */
gboolean pg_config_is_known_key (const char *group, const char *key);
/* Does `password` match a stored "{PLAIN}text" or "{PBKDF2-SHA256}n$salt$hash" secret?
 * Constant time in the password. */
gboolean pg_config_secret_matches (const char *secret, const char *password);
/* HTTP basic auth for the status page: is user:password in [status] auth_file? */
gboolean pg_config_status_check_user (const PgConfig *config, const char *user,
                                      const char *password);

/* Load and validate a config file. On error the message names the file, the group, the
 * key and what is wrong (PG_ERROR_CONFIG). */
PgConfig *pg_config_load_file (const char *path, GError **error);
/* The same from a string (tests); `source` names it in error messages. Relative paths
 * are resolved against the current directory. */
PgConfig *pg_config_load_data (const char *data, gsize len, const char *source, GError **error);

/* Command-line short-cuts that override the file (popgate --upstream ...). NULL members
 * are not set. */
typedef struct
{
  const char *upstream;     /* "HOST[:PORT]", "[V6]:PORT", "imaps://HOST[:PORT]" (implicit
                             * TLS) or "imap://HOST[:PORT]" (STARTTLS) */
  const char *upstream_tls; /* "none", "starttls" or "implicit": replaces [upstream] tls
                             * (also the one --upstream's scheme implies) */
  const char *upstream_ca;  /* a CA file (absolute path): replaces [upstream] ca_file */
  const char *pop3_listen;  /* a listen list, replaces [pop3] listen */
  const char *imap_listen;  /* a listen list, replaces [imap] listen */
  /* Listeners come from systemd (socket activation): the config may then name none. */
  gboolean inherited_listeners;
  /* --oauth2-authorize: an account's oauth2:FILE need not exist yet (it writes it). */
  gboolean missing_token_files;
} PgConfigOverrides;

/* Load `path` (NULL: start from the defaults), apply `overrides` (NULL: none), then
 * validate the result. Errors in an overridden value name the command-line flag. */
PgConfig *pg_config_load (const char *path, const PgConfigOverrides *overrides, GError **error);

PgConfig *pg_config_ref (PgConfig *config);
void pg_config_unref (PgConfig *config);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgConfig, pg_config_unref)

/* Parse "ADDR:PORT, [V6]:PORT" into PgListenAddr* (owned array, free func set). */
GPtrArray *pg_config_parse_listen (const char *value, GError **error);
/* Parse "ADDR/PREFIX, ADDR" (a bare address is one host) into GInetAddressMask* (owned
 * array). */
GPtrArray *pg_config_parse_networks (const char *value, GError **error);
/* TRUE when `address` is in one of `networks` (GInetAddressMask*); an IPv4-mapped IPv6
 * address (::ffff:a.b.c.d) also matches as its IPv4 address. */
gboolean pg_config_networks_contain (GPtrArray *networks, GInetAddress *address);
/* Parse a duration: "90", "90s", "500ms", "10m", "2h" → milliseconds. */
gboolean pg_config_parse_duration (const char *value, guint *out_ms, GError **error);

const char *pg_delete_policy_to_string (PgDeletePolicy policy);
const char *pg_upstream_tls_to_string (PgUpstreamTls tls);
const char *pg_state_backend_to_string (PgStateBackend backend);
const char *pg_first_login_to_string (PgFirstLogin first_login);
const char *pg_uidl_ledger_to_string (PgUidlLedger ledger);

G_END_DECLS
