/* popgate tests — a real OAuth 2.0 authorization server for integration tests.
 *
 * Each fixture runs tests/oauth2-server.py (Authlib's AuthorizationServer on Flask, from
 * Debian's python3-authlib and python3-flask) with Debian's /usr/bin/python3, on an
 * ephemeral 127.0.0.1 port, with its own JSON config in a fresh temp dir. It speaks the
 * real grants: refresh_token (rotation switchable), client_credentials, the device grant
 * (RFC 8628) and authorization_code with PKCE S256 (RFC 7636) for loopback redirects;
 * RFC 7662 introspection (give introspection_url to the Dovecot fixture's
 * oauth2_introspection_url) and RFC 7009 revocation. A test stands in for the user's
 * browser: pg_test_oauth2_device_login() runs the whole device grant over HTTP and
 * approves it for a user. The server is stopped by PID (SIGTERM, then SIGKILL) and has
 * PR_SET_PDEATHSIG. Its request log (log_file) never holds a token, code or secret.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include "pg-test-certs.h"
#include "pg-test-imap.h"
#include "pg-test-util.h"

#include <gio/gio.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>

G_BEGIN_DECLS

#define PG_TEST_OAUTH2_DEVICE_GRANT "urn:ietf:params:oauth:grant-type:device_code"

typedef struct
{
  /* Seconds an access token lives (expires_in); 0: 3600. */
  guint access_token_lifetime;
  /* Seconds a refresh token lives from its issue; 0: until revoked. */
  guint refresh_token_lifetime;
  /* A refresh returns a new refresh token and the old one stops working. */
  gboolean rotation;
  /* The device grant's polling interval (seconds; 0: 1) and code lifetime (0: 600). */
  guint device_interval;
  guint device_code_lifetime;
  /* Serve https (certificate for 127.0.0.1 from a CA made for this fixture: ca_file)
   * instead of http. */
  gboolean tls;
} PgTestOAuth2Options;

typedef struct
{
  gchar *dir;          /* owned: the temp dir; removed by pg_test_oauth2_free() */
  gchar *config_file;  /* owned: the JSON config the server starts with */
  gchar *log_file;     /* owned: the server's request log (no token values) */
  gchar *stderr_file;  /* owned: the server's stdout/stderr (startup errors) */
  PgTestCerts *certs;  /* owned: with options.tls, else NULL */
  const char *ca_file; /* unowned: certs->ca_file (verifies the https URLs), or NULL */
  const char *host;    /* "127.0.0.1" */
  guint16 port;        /* valid after pg_test_oauth2_start() */
  /* owned; valid after pg_test_oauth2_start(): http(s)://127.0.0.1:PORT/... */
  gchar *base_url; /* the server's root: /stats and /admin live there */
  gchar *token_url;
  gchar *device_url;    /* RFC 8628 device authorization endpoint */
  gchar *authorize_url; /* authorization endpoint (approve_as=USER to consent) */
  gchar *introspection_url;
  gchar *revoke_url;
  gchar *verification_url; /* where the "user" approves a user_code */
  PgTestOAuth2Options options;
  JsonArray *clients;     /* owned: the registrations, as written to the config */
  GHashTable *secrets;    /* owned: client_id → client_secret (absent: public client) */
  GHashTable *methods;    /* owned: client_id → how this fixture authenticates it */
  PgTestProcess *process; /* owned: NULL while stopped */
  SoupSession *session;   /* owned: for the fixture's own requests */
} PgTestOAuth2;

/* NULL if this machine can run the fixture; else why not. */
const char *pg_test_oauth2_skip_reason (void);

/* Make the temp dir; no clients yet. Does not start the server. options may be NULL. */
PgTestOAuth2 *pg_test_oauth2_new (const PgTestOAuth2Options *options, GError **error);

/* Register a client (before or after start). client_secret NULL: a public client
 * (token_endpoint_auth_method none), else a confidential one the server accepts with
 * client_secret_basic and client_secret_post; `auth_method` says which of the two this
 * fixture's own requests use (NULL: client_secret_basic). `username` non-NULL also allows
 * client_credentials: its tokens are that user's. Every client may use refresh_token, the
 * device grant and authorization_code (redirect http://127.0.0.1/callback, any port). */
gboolean pg_test_oauth2_add_client (PgTestOAuth2 *oauth2, const char *client_id,
                                    const char *client_secret, const char *auth_method,
                                    const char *username, GError **error);

/* Start the server and wait (bounded) until it has written its port. A restart after
 * pg_test_oauth2_stop() binds the same port again (the URLs stay valid; tokens do not). */
gboolean pg_test_oauth2_start (PgTestOAuth2 *oauth2, GError **error);
/* The server's PID while running, else 0. */
GPid pg_test_oauth2_get_pid (PgTestOAuth2 *oauth2);
/* SIGTERM, wait (bounded), SIGKILL. FALSE if it had to be killed. Tokens are lost. */
gboolean pg_test_oauth2_stop (PgTestOAuth2 *oauth2);
/* Stop if running, remove the temp dir, free. */
void pg_test_oauth2_free (PgTestOAuth2 *oauth2);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestOAuth2, pg_test_oauth2_free)

/* POST a form to url as client_id (authenticated as registered; client_id NULL: no client
 * authentication) and parse the JSON answer. form: NULL-terminated name, value pairs.
 * *out_status gets the HTTP status; an OAuth error answer (400, 401) is not a GError. */
JsonObject *pg_test_oauth2_post (PgTestOAuth2 *oauth2, const char *url, const char *client_id,
                                 const char *const *form, guint *out_status, GError **error);

/* The device grant as a real client and user do it: device authorization, approval of the
 * user_code at the verification endpoint as `user`, token polls (honouring interval and
 * slow_down, bounded). Returns the refresh token; *out_access_token (optional) gets the
 * access token issued with it. */
gchar *pg_test_oauth2_device_login (PgTestOAuth2 *oauth2, const char *client_id, const char *user,
                                    gchar **out_access_token, GError **error);

/* The user at the verification URI: approve user_code as `user` (NULL: deny it), as a
 * test does for popgate --oauth2-authorize after reading the code it printed.
 * G_IO_ERROR_NOT_FOUND for an unknown or expired code. */
gboolean pg_test_oauth2_approve_device (PgTestOAuth2 *oauth2, const char *user_code,
                                        const char *user, GError **error);

/* The user's browser at an authorization URL (e.g. the one popgate --oauth2-authorize
 * printed): consent as `user`; returns the redirect (redirect_uri?code=...&state=...). With
 * `follow`, the "browser" also GETs it, as it would land on a loopback client's listener. */
gchar *pg_test_oauth2_consent (PgTestOAuth2 *oauth2, const char *authorize_url, const char *user,
                               gboolean follow, GError **error);

/* The authorization-code grant with PKCE S256 as a loopback client does it: the "user"
 * consents at the authorization endpoint as `user`, the code comes back in the redirect
 * (not followed), and is exchanged with the verifier. Returns the refresh token. */
gchar *pg_test_oauth2_code_login (PgTestOAuth2 *oauth2, const char *client_id, const char *user,
                                  gchar **out_access_token, GError **error);

/* grant_type=refresh_token: the access token, and *out_refresh_token (optional) gets the
 * new refresh token when the server rotated it (else NULL). An OAuth error is a GError
 * (G_IO_ERROR_PERMISSION_DENIED) whose message starts with the error code, e.g.
 * "invalid_grant". */
gchar *pg_test_oauth2_refresh (PgTestOAuth2 *oauth2, const char *client_id,
                               const char *refresh_token, gchar **out_refresh_token,
                               GError **error);
/* grant_type=client_credentials: the access token (errors as for refresh). */
gchar *pg_test_oauth2_client_credentials (PgTestOAuth2 *oauth2, const char *client_id,
                                          GError **error);

/* RFC 7009: revoke a refresh token (and the access tokens of its grant) or, with
 * token_type_hint "access_token", just that access token. */
gboolean pg_test_oauth2_revoke (PgTestOAuth2 *oauth2, const char *client_id, const char *token,
                                const char *token_type_hint, GError **error);

/* RFC 7662 as Dovecot asks (no client authentication): TRUE if the token is active;
 * *out_username (optional) gets whose it is. */
gboolean pg_test_oauth2_introspect (PgTestOAuth2 *oauth2, const char *token, gboolean *out_active,
                                    gchar **out_username, GError **error);

/* GET /stats: the server's request counts, e.g. {"token": {"refresh_token": 2, ...},
 * "token_ok": {...}, "token_error": {...}, "introspection": 5, "introspection_active": 4,
 * "revocation": 1, "device_authorization": 1, "authorization": 0}. */
JsonObject *pg_test_oauth2_get_stats (PgTestOAuth2 *oauth2, GError **error);
/* One count from /stats: `key` alone ("introspection") or key/sub ("token",
 * "refresh_token"); 0 if absent, -1 on error. */
gint64 pg_test_oauth2_get_stat (PgTestOAuth2 *oauth2, const char *key, const char *sub);

/* Change settings of the running server (and of a later restart). */
gboolean pg_test_oauth2_set_rotation (PgTestOAuth2 *oauth2, gboolean rotation, GError **error);
gboolean pg_test_oauth2_set_access_token_lifetime (PgTestOAuth2 *oauth2, guint seconds,
                                                   GError **error);
/* Each token request waits this long before it is answered (a slow token endpoint). */
gboolean pg_test_oauth2_set_token_delay (PgTestOAuth2 *oauth2, guint delay_ms, GError **error);
/* Not 0: every token request is answered with this HTTP status (e.g. 503) and
 * {"error": "temporarily_unavailable"}; 0 serves tokens again. */
gboolean pg_test_oauth2_set_token_failure (PgTestOAuth2 *oauth2, guint http_status, GError **error);

/* The server's request log and output so far. */
gchar *pg_test_oauth2_read_log (PgTestOAuth2 *oauth2);

/* Client SASL initial responses, base64 (for AUTHENTICATE ... =IR or the continuation):
 * XOAUTH2 "user=U^Aauth=Bearer T^A^A" and OAUTHBEARER (RFC 7628)
 * "n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A" (',' and '=' in U as =2C and =3D). */
gchar *pg_test_oauth2_sasl_xoauth2 (const char *user, const char *access_token);
gchar *pg_test_oauth2_sasl_oauthbearer (const char *user, const char *host, guint16 port,
                                        const char *access_token);

/* AUTHENTICATE mechanism (XOAUTH2 or OAUTHBEARER) with the initial response inline
 * (SASL-IR). A failure's challenge (RFC 7628 3.2.3: base64 JSON with the status) is
 * answered as the RFC says, so the server sends its tagged NO. TRUE with *out_tagged (the
 * tagged line, optional) for OK and NO alike; *out_ok says which; *out_challenge
 * (optional) gets the decoded error challenge, or NULL if there was none. */
gboolean pg_test_oauth2_imap_authenticate (PgTestImap *imap, const char *mechanism,
                                           const char *initial_response, gboolean *out_ok,
                                           gchar **out_tagged, gchar **out_challenge,
                                           GError **error);

G_END_DECLS
