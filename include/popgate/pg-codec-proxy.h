/* popgate — codec: the PROXY protocol header (HAProxy's proxy-protocol.txt, v1 and v2).
 *
 * A load balancer in front of popgate opens each connection with one header naming the
 * real client. PgProxyParser takes the bytes as they arrive and says when the header is
 * complete and exactly how many of the last chunk it used, so the caller can leave
 * whatever follows (a TLS ClientHello, a pipelined command) unread.
 *
 * v1 is one text line ("PROXY TCP4 src dst sport dport\r\n", at most 107 octets);
 * v2 is a 16-octet binary header and a payload: the addresses, then TLVs, which are
 * skipped without being stored. The payload is bounded (PG_PROXY_V2_MAX_PAYLOAD). A
 * LOCAL command (v2), "PROXY UNKNOWN" (v1), or an address family without an IP (UNSPEC,
 * UNIX) yields a header with `local` set: use the connection's own addresses.
 *
 * Pure: no I/O, no logging, constant memory, resumable at any byte.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _PgProxyParser PgProxyParser;

typedef enum
{
  PG_PROXY_FAMILY_NONE,  /* local: no address carried */
  PG_PROXY_FAMILY_INET,  /* 4-byte addresses */
  PG_PROXY_FAMILY_INET6, /* 16-byte addresses */
} PgProxyFamily;

typedef struct
{
  guint version;        /* 1 or 2 */
  gboolean local;       /* no client address: keep the connection's own */
  PgProxyFamily family; /* PG_PROXY_FAMILY_NONE exactly when local */
  guint8 src_addr[16];  /* network order; the first 4 bytes for INET */
  guint8 dst_addr[16];
  guint16 src_port; /* host order */
  guint16 dst_port;
} PgProxyHeader;

typedef enum
{
  PG_PROXY_PARSER_NEED_MORE, /* every byte fed was used; feed more */
  PG_PROXY_PARSER_DONE,      /* the header is complete: pg_proxy_parser_get_header() */
  PG_PROXY_PARSER_ERROR,     /* not a valid header; error is set (PG_ERROR_PROTOCOL or
                              * PG_ERROR_LINE_TOO_LONG / PG_ERROR_LIMIT) */
} PgProxyParserStatus;

PgProxyParser *pg_proxy_parser_new (void);
void pg_proxy_parser_free (PgProxyParser *parser);

/* Feed up to len bytes. With NEED_MORE all len bytes were used; with DONE *out_consumed
 * says how many (the rest belongs to the session). out_consumed is written only on DONE,
 * error only on ERROR. Once DONE or ERROR, the parser takes nothing more. */
PgProxyParserStatus pg_proxy_parser_feed (PgProxyParser *parser, const void *data, gsize len,
                                          gsize *out_consumed, GError **error);

/* The header, valid after DONE (NULL before). */
const PgProxyHeader *pg_proxy_parser_get_header (const PgProxyParser *parser);

/* The source address as text ("192.0.2.1", "2001:db8::1"), NULL when local. */
gchar *pg_proxy_header_source_to_string (const PgProxyHeader *header);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgProxyParser, pg_proxy_parser_free)

G_END_DECLS
