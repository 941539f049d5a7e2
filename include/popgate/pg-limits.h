/* popgate — every fixed limit in one place, each with why it has its value.
 * Limits an admin may want to change are config keys (see pg-config.h); their
 * defaults live here too.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

/* --- POP3 front end --- */
/* RFC 2449 §4: a command line is at most 255 octets including CRLF. We accept a little
 * more (some clients send long AUTH initial responses) and refuse with -ERR beyond it. */
#define PG_POP3_MAX_COMMAND_LINE 512
/* RFC 5034 §4: a SASL response line may be longer than 255 octets; PLAIN with long
 * user names and passwords fits easily in this. */
#define PG_POP3_MAX_SASL_LINE 2048
/* Bytes of pipelined input we hold while earlier commands are still being answered;
 * when full we stop reading the socket (back-pressure), we do not grow. */
#define PG_POP3_INPUT_BUFFER 8192
/* Consecutive over-long lines before we give up on the client: a flood. */
#define PG_POP3_MAX_LONG_LINES 3
/* The audit trace of a QUIT lists the UIDs the delete policy applies to, up to this many
 * (then "…(+N)"): one log line stays readable and bounded however much was deleted; the
 * upstream's own UID STORE/EXPUNGE lines carry the full sets. */
#define PG_POP3_TRACE_MAX_UIDS 64

/* --- IMAP front end (before login; after login we relay with bounded buffers) --- */
/* RFC 9051 recommends accepting at least 8000 octets per command line, but RFC 2971 ID
 * allows 30 field/value pairs with values of up to 1024 octets (fields up to 30), all on
 * one line: 30 * (30 + 1024 + 6 for quotes and spaces) = 31,800 octets plus the tag and
 * "ID (...)". 36 KiB takes that with room for escaped quotes. Only a pre-auth session
 * holds it (the reader grows on demand and is freed at login). */
#define PG_IMAP_MAX_PREAUTH_LINE 36864
/* A literal before login can only be a user name or a password. */
#define PG_IMAP_MAX_PREAUTH_LITERAL 4096
/* Arguments in one pre-auth command, list items included (LOGIN has two; ID a list of at
 * most 60 strings: RFC 2971's 30 pairs). */
#define PG_IMAP_MAX_PREAUTH_ARGS 64
/* Client read size, before login and for client -> upstream after it: one fixed buffer per
 * session with a read pending on it for the whole session (so it counts in an idle
 * session's cost); 16 KiB matches a TLS record, so one read is usually one record. */
#define PG_IMAP_RELAY_CHUNK 16384
/* Upstream -> client read size after login (FETCH bodies: the bulk of a relay's bytes).
 * One buffer for the whole process, used only between a readiness wakeup and the write to
 * the client, so its size costs no memory per session; 64 KiB reads make a quarter of the
 * syscalls and wakeups per MB of 16 KiB ones. What the client's socket does not take at
 * once is queued, and the relay stops reading at PG_CLIENT_OUTPUT_HIGH_WATER, so a slow
 * client holds at most that plus one chunk. */
#define PG_IMAP_RELAY_UP_CHUNK 65536
/* Upstream reads per wakeup of one relay session before the main loop serves the others
 * (the poll is level-triggered: the session is woken again at once if more is waiting). */
#define PG_IMAP_RELAY_UP_BURST 4
/* After the upstream login, the hand-off of its connection to the relay waits while the
 * write that carried the login command has not completed yet; it is retried this often
 * (a timer, so a stuck write does not spin), up to the upstream command timeout. */
#define PG_IMAP_HAND_OVER_RETRY_MS 1
/* ID values (name, version) we keep from a client's ID to forward upstream; RFC 2971
 * §3.3 limits field values to 1024 octets, real clients send a few dozen. */
#define PG_IMAP_MAX_ID_VALUE 128

/* --- upstream IMAP responses (the upstream is untrusted too) --- */
/* Longest response line we parse (without literals). Dovecot's lines are far shorter;
 * a CAPABILITY or a long FETCH of flags stays well under this. */
#define PG_UPSTREAM_MAX_LINE 65536
/* A literal that is not a message body (a header field, a METADATA value...). */
#define PG_UPSTREAM_MAX_SMALL_LITERAL (1024 * 1024)
/* Nesting depth of parenthesised lists in a response. */
#define PG_UPSTREAM_MAX_DEPTH 16
/* Items in one list / arguments in one response. */
#define PG_UPSTREAM_MAX_ITEMS 4096
/* Our command lines to the upstream stay below this; long UID sets are split. RFC 7162
 * §4 advises clients to keep lines under 8192 octets. */
#define PG_UPSTREAM_MAX_COMMAND_LINE 8000
/* Bytes one response may hold in memory: its lines plus its small literals (streamed
 * bodies excluded). Without it, MAX_ITEMS small literals could add up to gigabytes; four
 * small literals' worth covers a METADATA reply or an ID with long values. */
#define PG_UPSTREAM_MAX_RESPONSE (4 * PG_UPSTREAM_MAX_SMALL_LITERAL)
/* The upstream connection reads into a fixed buffer (never a growing one), allocated only
 * while a reply is expected: this size for logins, snapshots and the like (16 KiB matches
 * a TLS record)... */
#define PG_UPSTREAM_READ_BUFFER 16384
/* ...and this one while message bodies stream: a few 10 KB messages per read (16 KiB cost
 * one read, and one main-loop turn, per message). */
#define PG_UPSTREAM_BODY_READ_BUFFER 65536
/* Body chunks handed to a consumer while a literal streams. */
#define PG_UPSTREAM_BODY_CHUNK 32768
/* Upstream reads done at once, without the main loop, before an async read (fairness:
 * other sessions get their turn after this much). */
#define PG_UPSTREAM_READS_AT_ONCE 4
/* Whole-message body FETCHes sent as one UID FETCH: the POP3 read-ahead keeps at most
 * PG_POP3_PREFETCH_DEPTH in flight, so this only bounds the command line (11 octets a UID). */
#define PG_UPSTREAM_FETCH_BATCH 32
/* The longest our consumer may keep the upstream paused (its client not taking a chunk)
 * before the upstream connection gives up; the POP3 autologout when that is longer. RFC
 * 1939's 10-minute autologout: past it the client could not even stay idle. */
#define PG_UPSTREAM_MAX_PAUSE_MS (10 * 60 * 1000)
/* The POP3 snapshot (UID FETCH 1:* (UID RFC822.SIZE)): at most this many messages, 9 octets
 * each in memory (snapshot entry and session flags), so 9 MB per session at most. A POP3
 * client cannot use a maildrop near this size (its UIDL alone would be 20 MB); a reply
 * beyond it is a broken or hostile server, and the login fails with [SYS/PERM]. */
#define PG_MAX_SNAPSHOT_MESSAGES 1000000
/* ...and at most this many octets of reply lines while it is outstanding: ~64 per message
 * from a real server, so this allows the largest snapshot with padding to spare, and bounds
 * the work a server can make us do with lines that carry no new message (duplicates,
 * padding, unrelated untagged data). */
#define PG_MAX_SNAPSHOT_OCTETS (256 * 1024 * 1024)

/* Listening sockets: the kernel's accept queue (nginx's default backlog), how many
 * connections one wake-up accepts before other sessions get a turn, and how long a
 * listener waits when the process is out of descriptors before it tries again. */
#define PG_LISTEN_BACKLOG 511
#define PG_ACCEPT_BATCH 16
#define PG_ACCEPT_PAUSE_MS 100
/* At most one "cannot accept" warning per listener in this many seconds. */
#define PG_ACCEPT_LOG_INTERVAL_S 60

/* --- sessions and abuse (defaults of [limits] keys) --- */
#define PG_DEFAULT_MAX_SESSIONS 4096
#define PG_DEFAULT_MAX_SESSIONS_PER_ADDRESS 256
#define PG_DEFAULT_PREAUTH_TIMEOUT_S 60
#define PG_DEFAULT_AUTH_FAILURE_DELAY_MS 2000
/* Failed logins from one client address make the next failure's delay grow, as Dovecot's
 * auth penalty does: auth_failure_delay × 2^(failures − 1), at most this much. One
 * connection's own retries are bounded by max_auth_failures; this bounds an address that
 * reconnects (180 guesses in 9.6 s from one address before). */
#define PG_LOGIN_PENALTY_MAX_MS 15000
/* An address's failure count is forgotten this long after its last failure (and at once
 * on a successful login from it). */
#define PG_LOGIN_PENALTY_EXPIRE_S 3600
/* Addresses remembered at once: bounded memory under a spray from many addresses; when
 * full, expired entries go, then the oldest. */
#define PG_LOGIN_PENALTY_MAX_ADDRESSES 65536
/* Process-wide: more failed logins than this in one minute, from whatever addresses (a
 * distributed guesser), and every failure waits PG_LOGIN_PENALTY_MAX_MS until the minute
 * is over. */
#define PG_LOGIN_PENALTY_GLOBAL_PER_MINUTE 600
#define PG_DEFAULT_MAX_AUTH_FAILURES 3
#define PG_DEFAULT_MAX_BAD_COMMANDS 10
/* RFC 1939 §3: the autologout timer must be at least 10 minutes. */
#define PG_DEFAULT_POP3_AUTOLOGOUT_S (10 * 60)
#define PG_MIN_POP3_AUTOLOGOUT_S (10 * 60)
/* RFC 9051 §5.4: at least 30 minutes of inactivity before an autologout. */
#define PG_DEFAULT_IMAP_IDLE_TIMEOUT_S (30 * 60)
#define PG_DEFAULT_UPSTREAM_TIMEOUT_S 60
#define PG_DEFAULT_UPSTREAM_CONNECT_TIMEOUT_S 30
/* How long SIGTERM waits for sessions to end before closing them. */
#define PG_DEFAULT_SHUTDOWN_TIMEOUT_S 30
/* Output queued to a client before we stop reading the upstream (back-pressure); the IMAP
 * relay uses it the other way too: output queued to the upstream before it stops reading
 * the client (an APPEND faster than the server takes it). */
#define PG_CLIENT_OUTPUT_HIGH_WATER 65536
/* Output a corked connection holds before it goes out anyway (pg_conn_cork): a 10 KB
 * message with its status line and terminator is one write; a bigger one leaves in pieces
 * of this size. At most one such buffer is kept spare for the whole process. */
#define PG_CLIENT_CORK_MAX 65536

/* --- TLS --- */
/* How long a closing TLS connection may take to send its close_notify (RFC 8446 §6.1)
 * before the socket is closed anyway: a write into a socket the peer does not read would
 * otherwise hold the connection. One alert record takes a round trip at most. */
#define PG_TLS_CLOSE_TIMEOUT_MS 2000
/* GnuTLS priority when [tls] priority is not set (and G_TLS_GNUTLS_PRIORITY is not in the
 * environment): GnuTLS's defaults without TLS 1.0 and 1.1, which RFC 8996 deprecates and
 * which Debian's NORMAL still enables. Applies to clients and to the upstream alike. */
#define PG_TLS_DEFAULT_PRIORITY "NORMAL:-VERS-TLS1.1:-VERS-TLS1.0"

/* --- config validation --- */
/* Config values quoted in error messages are escaped and cut to this many bytes, so a
 * binary blob pasted into a file cannot flood the terminal. */
#define PG_CONFIG_MAX_QUOTED 80
/* A client tag separator is a short marker such as "#" or "+". */
#define PG_CONFIG_MAX_TAG_SEPARATOR 8
/* NAME of an [upstream:NAME] group: a short label that accounts file lines repeat. */
#define PG_CONFIG_MAX_UPSTREAM_NAME 64
/* Lines of an accounts file: one per local user; more is a mistake (a wrong file). */
#define PG_CONFIG_MAX_ACCOUNTS 100000
/* Upper bounds of [limits] counts and recent_days: they only catch typos (an extra zero
 * or three), they are not tuning advice. */
#define PG_CONFIG_MAX_COUNT 1000000
#define PG_CONFIG_MAX_RECENT_DAYS 36500

/* --- IMAP front end, pre-auth command parser (src/codec/pg-codec-imap-command.c) --- */
/* Nesting of parenthesised lists before login: only ID takes a list, and it is flat. */
#define PG_IMAP_MAX_PREAUTH_DEPTH 2
/* A whole pre-auth command (its lines and literals together): a longest line (an ID at
 * RFC 2971's maxima) or LOGIN with a user name and a password as literals of
 * PG_IMAP_MAX_PREAUTH_LITERAL each; without this, ARGS literals of LITERAL size each would
 * let one command hold 256 KiB. */
#define PG_IMAP_MAX_PREAUTH_COMMAND (PG_IMAP_MAX_PREAUTH_LINE + 2 * PG_IMAP_MAX_PREAUTH_LITERAL)
/* Tag, command word and first argument the relay scanner keeps per command for
 * tracking (SELECT's mailbox name); longer ones are cut (and flagged), never grown. */
#define PG_IMAP_RELAY_MAX_TAG 64
#define PG_IMAP_RELAY_MAX_WORD 32
#define PG_IMAP_RELAY_MAX_ARGUMENT 1024

/* --- per-client state (src/state) --- */
/* One encoded state record (file or METADATA value). The imap-metadata backend reads it
 * back as one literal, so it cannot exceed PG_UPSTREAM_MAX_SMALL_LITERAL; ranges keep a
 * real history far below this (a million contiguous UIDs is "1:1000000"). */
#define PG_STATE_MAX_ENCODED PG_UPSTREAM_MAX_SMALL_LITERAL
/* User, mailbox and tag as stored in a record: login names and mailbox names are far
 * shorter (a POP3 command line is at most PG_POP3_MAX_COMMAND_LINE). */
#define PG_STATE_MAX_KEY_FIELD 1024
/* METADATA entries of one client's state (imap-metadata): the record plus one per save
 * that ran concurrently with another (each save folds all it read into one again). Two
 * or three is the real worst case; more is a misbehaving server, and each may be up to
 * PG_STATE_MAX_ENCODED, so this bounds what one load holds. */
#define PG_STATE_MAX_ENTRIES 16
/* UIDL ledger entries in one client's record: a line is at most 60 bytes ("l", a UID,
 * 24 hex digits, a UIDL pair), so a full ledger stays under 600 KB, within
 * PG_STATE_MAX_ENCODED with room for the UID sets. A bigger mailbox keeps the ledger of
 * its newest messages; older ones get new UIDLs after a UIDVALIDITY change. */
#define PG_STATE_MAX_LEDGER_ENTRIES 10000
/* Octets of BODY[HEADER.FIELDS (MESSAGE-ID DATE)] a snapshot keeps per message for the
 * ledger's digest: real fields are well under 1 KB; a longer reply is cut here (the same
 * message is cut the same way, so its digest stays the same). */
#define PG_UPSTREAM_MAX_ID_HEADER 2048
/* The UID set of one ledger FETCH as written: a scattered set longer than this is asked
 * as the one range that holds it (servers take lines of 8 KB and more: Dovecot 64 KB). */
#define PG_POP3_LEDGER_MAX_SET 4000

/* --- PROXY protocol (src/codec/pg-codec-proxy.c) --- */
/* proxy-protocol.txt §2.1: the longest v1 line, "PROXY TCP6" with two full IPv6 addresses
 * and ports, is 107 octets including CRLF; a receiver may refuse anything longer. */
#define PG_PROXY_V1_MAX_LINE 107
/* v2 payload (addresses and TLVs) we accept. The addresses take at most 216 octets (UNIX);
 * HAProxy's TLVs (ALPN, authority, unique id ≤ 128, SSL details) stay far below this. The
 * TLVs are skipped, never stored, so this bounds time, not memory. */
#define PG_PROXY_V2_MAX_PAYLOAD 4096
/* The net layer peeks at most this much per read while looking for the header, then
 * consumes exactly what the parser used: the bytes after the header stay in the socket. */
#define PG_PROXY_READ_CHUNK 256

/* --- status page (src/status) --- */
/* Live /api/events subscribers at once. Each costs a socket and up to
 * PG_STATUS_SUBSCRIBER_QUEUE of memory; a status page has a few viewers, and a cap keeps a
 * script that opens streams in a loop from holding memory or file descriptors. More get
 * 503. */
#define PG_STATUS_MAX_SUBSCRIBERS 16
/* Event bytes one subscriber may have queued behind the chunk libsoup is writing to it
 * (one chunk at a time: the snapshot first, then what gathered meanwhile). A browser that
 * falls this far behind is dropped (it reconnects and starts from a fresh snapshot); mail
 * sessions never wait for it. */
#define PG_STATUS_SUBSCRIBER_QUEUE (256 * 1024)
/* A subscriber whose chunk has not been taken by its socket for this long is dropped even
 * when few events come: otherwise streams that never read would hold every subscriber
 * slot for good. Generous, so a slow link still gets a large snapshot through. */
#define PG_STATUS_SUBSCRIBER_STALL_S 60
/* Recent trace lines kept per session for /api/sessions/ID/trace: a ring, oldest lines
 * dropped (the log has the whole trace when [log] trace is on). */
#define PG_STATUS_TRACE_LINES 200
/* A trace line is cut to this many bytes in the ring and in events. */
#define PG_STATUS_TRACE_LINE_MAX 512
/* Sessions with a trace ring at once: at most this × PG_STATUS_TRACE_LINES ×
 * PG_STATUS_TRACE_LINE_MAX (26 MiB) however many sessions run; later sessions are listed
 * without a trace until older traced ones end. */
#define PG_STATUS_MAX_TRACED_SESSIONS 256
/* Ended sessions kept (last description and trace ring) so the page can still show what a
 * short session did (a demo's POP3 session lasts a fraction of a second): the newest
 * ones, at most this × one ring. */
#define PG_STATUS_RECENT_SESSIONS 16

/* --- OAuth 2.0 (src/oauth2) --- */
/* A token endpoint reply (RFC 6749 §5.1 JSON: tokens, expiry, scope). Real ones are under
 * 4 KiB (Microsoft's JWT access tokens are the longest, about 2-3 KiB); anything larger is
 * refused before it is parsed, so a broken endpoint cannot make us buffer without end. */
#define PG_OAUTH2_MAX_RESPONSE 65536
/* A refresh-token file or a client-secret file: one line. Google's refresh tokens are
 * ~100 octets, Microsoft's ~1.5 KiB. */
#define PG_OAUTH2_MAX_FILE 16384
/* The cache margin: an access token is dropped min(lifetime / 10, this) before expires_in. */
#define PG_OAUTH2_MAX_MARGIN_S 60
/* expires_in when the endpoint sends none (RFC 6749 §5.1 makes it optional): one hour, what
 * the big providers issue; an upstream refusal before then still forces a refresh. */
#define PG_OAUTH2_DEFAULT_LIFETIME_S 3600
/* expires_in beyond this is clamped (a day): a bogus huge value must not pin a token. */
#define PG_OAUTH2_MAX_LIFETIME_S 86400
/* Device grant (RFC 8628): the poll interval when the server names none (§3.2), and the
 * bounds on what it may ask for. */
#define PG_OAUTH2_DEVICE_DEFAULT_INTERVAL_S 5
#define PG_OAUTH2_DEVICE_MAX_INTERVAL_S 60
#define PG_OAUTH2_DEVICE_MAX_EXPIRES_S 3600
/* --oauth2-authorize with a browser: how long the loopback redirect is awaited. */
#define PG_OAUTH2_AUTHORIZE_TIMEOUT_S 600
/* Upstream names tracked as label values of popgate_oauth2_refreshes_total; more share
 * the value "other" (the label set is allocated up front, see pg-metrics.h). */
#define PG_METRICS_MAX_UPSTREAMS 32
