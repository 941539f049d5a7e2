/* popgate — core: error domain, logging with session ids and redaction, secrets.
 *
 * Copyright 2026 the popgate authors
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* One error domain for the whole project; GIO's own errors pass through as they are. */
#define PG_ERROR (pg_error_quark ())
GQuark pg_error_quark (void);

typedef enum
{
  PG_ERROR_PROTOCOL,      /* the peer (client or upstream) broke the protocol */
  PG_ERROR_LINE_TOO_LONG, /* a line did not fit its limit */
  PG_ERROR_LIMIT,         /* another limit: literal size, depth, count, sessions */
  PG_ERROR_AUTH_FAILED,   /* the credentials were refused */
  PG_ERROR_UPSTREAM,      /* the upstream failed, refused or went away */
  PG_ERROR_TLS,           /* certificate or handshake trouble */
  PG_ERROR_CONFIG,        /* a configuration error; the message names file/group/key */
  PG_ERROR_TIMEOUT,       /* a deadline passed */
} PgError;

/* --- logging ----------------------------------------------------------------------
 * Structured logging through g_log_structured(). Sessions log with their id in the
 * POPGATE_SESSION field and as a "[sid]" prefix in the message, so both journald
 * queries and plain stderr readers can follow one session. */

typedef enum
{
  PG_LOG_LEVEL_WARNING = 0, /* default: warnings and the session start/end lines */
  PG_LOG_LEVEL_INFO = 1,    /* -v */
  PG_LOG_LEVEL_DEBUG = 2,   /* -vv: protocol detail (secrets still redacted) */
} PgLogLevel;

void pg_log_init (PgLogLevel level);
void pg_log_set_level (PgLogLevel level);
PgLogLevel pg_log_get_level (void);

/* Log one line for a session (sid 0 = not a session). Messages at G_LOG_LEVEL_MESSAGE
 * are always shown (session start/end, lifecycle); INFO needs -v; DEBUG needs -vv. */
void pg_log_session (GLogLevelFlags level, guint64 sid, const char *domain, const char *format, ...)
    G_GNUC_PRINTF (4, 5);

#define pg_session_message(sid, ...)                                                               \
  pg_log_session (G_LOG_LEVEL_MESSAGE, (sid), G_LOG_DOMAIN, __VA_ARGS__)
#define pg_session_info(sid, ...)                                                                  \
  pg_log_session (G_LOG_LEVEL_INFO, (sid), G_LOG_DOMAIN, __VA_ARGS__)
#define pg_session_debug(sid, ...)                                                                 \
  pg_log_session (G_LOG_LEVEL_DEBUG, (sid), G_LOG_DOMAIN, __VA_ARGS__)
#define pg_session_warning(sid, ...)                                                               \
  pg_log_session (G_LOG_LEVEL_WARNING, (sid), G_LOG_DOMAIN, __VA_ARGS__)

/* Peer text made safe for a log line: at most max_len input bytes are shown, control and
 * non-ASCII bytes are escaped as \xNN, and "…(+N bytes)" marks a cut. Never NULL. */
gchar *pg_log_escape (const void *data, gsize len, gsize max_len);

/* The one redaction helper. Given a client or upstream command line (POP3 or IMAP), return
 * a copy fit to log: the arguments of PASS, AUTH/AUTHENTICATE, LOGIN and any SASL
 * continuation are replaced by "<redacted>", then escaped and truncated as above.
 * `is_sasl_data` says the line is a bare SASL response (no command word) and must be
 * redacted whole. */
gchar *pg_log_redact_line (const void *line, gsize len, gboolean is_sasl_data);
/* For a client line before login, stricter: a client that mistyped a command ("PASSS
 * secret") or sent its password as a line can have put a secret anywhere. Only the command
 * word is shown, and only if it is one of `known` (NULL-terminated, any case; else
 * "<unknown command>"), with `tagged` (IMAP) the tag before it; every argument becomes
 * "<redacted>" but those of POP3 USER (a login name, shown in logs anyway); an IMAP LOGIN
 * goes through pg_log_redact_line(). */
gchar *pg_log_redact_preauth_line (const void *line, gsize len, gboolean tagged,
                                   const char *const *known);

/* --- secrets ----------------------------------------------------------------------- */

/* Wipe memory so the compiler cannot drop the write. */
void pg_secret_wipe (void *data, gsize len);
/* Wipe then free a NUL-terminated secret (NULL allowed). */
void pg_secret_free (gchar *secret);
/* Constant-time comparison of two buffers of the same length. */
gboolean pg_secret_equal (const void *a, const void *b, gsize len);

/* A string holding a secret: g_autoptr(PgSecret) wipes it on scope exit. */
typedef gchar PgSecret;
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgSecret, pg_secret_free)

/* --- small helpers -------------------------------------------------------------------- */

/* Next process-wide session id (1, 2, 3, …). */
guint64 pg_session_id_next (void);

/* Format a socket address as "1.2.3.4:port" or "[::1]:port". */
gchar *pg_address_to_string (gpointer gsocketaddress);
/* "host:port", with an IPv6 literal in brackets ("[::1]:143"): the one formatter of
 * addresses for logs and messages. */
gchar *pg_host_port_to_string (const char *host, guint port);

/* value in decimal, as "%" G_GUINT64_FORMAT prints it, into out (at least
 * PG_DECIMAL_MAX_LEN bytes, no NUL added); returns the length. For hot paths: a printf
 * costs ~1,000 instructions. */
#define PG_DECIMAL_MAX_LEN 20
gsize pg_format_decimal (char *out, guint64 value);

G_END_DECLS
