/* popgate — codec: the one capability filter of the IMAP front end.
 *
 * Every capability list a client sees passes through pg_imap_caps_filter(): popgate's
 * own greeting and pre-auth CAPABILITY, the tagged OK of LOGIN/AUTHENTICATE, and after
 * login every upstream "* CAPABILITY", "[CAPABILITY ...]" response code and "* ENABLED"
 * that the relay carries (pg_imap_caps_rewrite_line()). What popgate withholds is the
 * table below, in this one place, each entry with its reason. A command for a withheld
 * capability is answered by popgate itself and never reaches the upstream
 * (pg_imap_caps_command_withheld()).
 *
 * Pure: no I/O, no logging, bounded by the input.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* X (NAME, IS_PREFIX, ALSO_BEFORE_LOGIN, REASON): NAME is matched case-insensitively, as a
 * prefix when IS_PREFIX ("AUTH=" withholds AUTH=PLAIN, AUTH=XOAUTH2...). Before login
 * popgate speaks for itself (STARTTLS, AUTH=PLAIN, LOGINDISABLED and SASL-IR are its own
 * and honoured there), so only entries with ALSO_BEFORE_LOGIN apply to that list. */
#define PG_IMAP_WITHHELD_CAPABILITIES(X)                                                           \
  /* TLS with the client is popgate's, set up before login; an upstream STARTTLS would             \
   * change the upstream's stream under the relay. */                                              \
  X ("STARTTLS", FALSE, FALSE, "the client's TLS is popgate's, negotiated before login")           \
  /* The client is logged in already: no mechanisms, no second login. */                           \
  X ("AUTH=", TRUE, FALSE, "the client is already logged in, by popgate")                          \
  X ("LOGINDISABLED", FALSE, FALSE, "the client is already logged in, by popgate")                 \
  /* SASL-IR (RFC 4959) only concerns AUTHENTICATE, which is over after login. */                  \
  X ("SASL-IR", FALSE, FALSE, "AUTHENTICATE is over after login")                                  \
  /* RFC 8437: a new login upstream would bypass popgate's account map, checks and its             \
   * per-user accounting (the upstream session would belong to another user). */                   \
  X ("UNAUTHENTICATE", FALSE, TRUE, "a second upstream login would bypass popgate's checks")       \
  /* RFC 4978 with the upstream would make the relayed stream opaque to popgate's tracking,        \
   * its log, its trace and its own BYE lines; popgate offers its own COMPRESS=DEFLATE.     */     \
  X ("COMPRESS=", TRUE, TRUE, "popgate compresses the client stream itself")                       \
  /* RFC 2221 / RFC 2193: referrals send the client to another server to log in or to reach        \
   * a mailbox, around popgate; popgate never follows or rewrites them. */                         \
  X ("LOGIN-REFERRALS", FALSE, TRUE, "a referral would send the client around popgate")            \
  X ("MAILBOX-REFERRALS", FALSE, TRUE, "a referral would send the client around popgate")          \
  /* Dovecot/nginx proxy command: it sets the address the upstream logs and rate-limits;           \
   * popgate sends the real one in its own ID. */                                                  \
  X ("XCLIENT", FALSE, TRUE, "only popgate tells the upstream who the client is")

/* TRUE when the capability `cap` (len octets, not NUL-terminated) is withheld from the
 * client; `after_login` selects the list of the authenticated state. */
gboolean pg_imap_caps_is_withheld (const char *cap, gsize len, gboolean after_login);

/* Append to `out` the atoms of the space-separated list `caps` (len octets) that are not
 * withheld, each preceded by a space when out is not empty. Tokens that are no atom
 * (quotes, brackets, controls: nothing a real server sends) are dropped too. */
void pg_imap_caps_filter (GString *out, const char *caps, gsize len, gboolean after_login);

/* The commands popgate answers itself after login (they never reach the upstream). */
typedef enum
{
  PG_IMAP_CAPS_COMMAND_RELAYED,        /* not withheld: relay it */
  PG_IMAP_CAPS_COMMAND_NOT_AUTH,       /* LOGIN, AUTHENTICATE: BAD, already logged in */
  PG_IMAP_CAPS_COMMAND_STARTTLS,       /* BAD: TLS is negotiated before login */
  PG_IMAP_CAPS_COMMAND_UNAUTHENTICATE, /* BAD: not offered (RFC 8437) */
  PG_IMAP_CAPS_COMMAND_COMPRESS,       /* popgate's own COMPRESS (RFC 4978) */
  PG_IMAP_CAPS_COMMAND_XCLIENT,        /* BAD: not offered */
} PgImapCapsCommand;

/* What to do with a client command after login, from the relay scanner's upper-cased
 * command word. */
PgImapCapsCommand pg_imap_caps_command_withheld (const char *word);

/* --- upstream response lines carrying capability lists ------------------------------ */
typedef enum
{
  PG_IMAP_CAPS_LINE_MORE, /* the prefix does not decide yet: give more of the line */
  PG_IMAP_CAPS_LINE_NO,   /* no capability list: relay the response as it is */
  PG_IMAP_CAPS_LINE_YES,  /* "* CAPABILITY", "* ENABLED" or "<tag> <cond> [CAPABILITY" */
} PgImapCapsLine;

/* Longest response-line prefix pg_imap_caps_line_match() needs: a tag of
 * PG_IMAP_RELAY_MAX_TAG, "PREAUTH" and "[CAPABILITY" with their spaces. */
#define PG_IMAP_CAPS_LINE_PREFIX 96

/* Look at the start of an upstream response (the first len octets of it, len may be
 * anything): is it one that carries a capability list? Decides within
 * PG_IMAP_CAPS_LINE_PREFIX octets or at the line end. */
PgImapCapsLine pg_imap_caps_line_match (const char *line, gsize len);

/* Rewrite one whole response line (CRLF included) that pg_imap_caps_line_match() said
 * YES to, with its list filtered (after login) and `extra` (space-separated, popgate's own
 * capabilities such as "COMPRESS=DEFLATE"; may be NULL) added to CAPABILITY lists, into
 * `out` (appended). Returns FALSE when the line is not such a response after all (it is
 * then appended unchanged). */
gboolean pg_imap_caps_rewrite_line (GString *out, const char *line, gsize len, const char *extra);

G_END_DECLS
