/* popgate — the PROXY protocol header parser (v1 text, v2 binary).
 *
 * One byte at a time through a small state machine, so a header cut anywhere parses the
 * same, an invalid one is refused as soon as a byte proves it, and the parser never uses
 * a byte past the header's end.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-codec-proxy.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <arpa/inet.h>
#include <string.h>

static const char pg_proxy_v1_prefix[] = "PROXY ";
static const guint8 pg_proxy_v2_signature[12]
    = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

#define PG_PROXY_V2_HEADER 16
/* Address block sizes of v2 (proxy-protocol.txt §2.2). */
#define PG_PROXY_V2_ADDR_INET 12
#define PG_PROXY_V2_ADDR_INET6 36

typedef enum
{
  PG_PROXY_STATE_START,   /* nothing seen: the first byte picks the version */
  PG_PROXY_STATE_V1,      /* inside the v1 line */
  PG_PROXY_STATE_V2_HEAD, /* inside the 16-octet v2 header */
  PG_PROXY_STATE_V2_BODY, /* inside the v2 payload */
  PG_PROXY_STATE_DONE,
  PG_PROXY_STATE_FAILED,
} PgProxyState;

struct _PgProxyParser
{
  PgProxyState state;
  /* The v1 line, or the v2 header followed by the address block we keep. */
  guint8 buf[MAX (PG_PROXY_V1_MAX_LINE, PG_PROXY_V2_HEADER + PG_PROXY_V2_ADDR_INET6)];
  gsize len;        /* bytes in buf */
  gsize v2_payload; /* payload length announced by the v2 header */
  gsize v2_seen;    /* payload bytes consumed so far */
  gsize v2_keep;    /* payload bytes worth storing (the addresses we read) */
  PgProxyHeader header;
};

PgProxyParser *
pg_proxy_parser_new (void)
{
  return g_new0 (PgProxyParser, 1);
}

void
pg_proxy_parser_free (PgProxyParser *parser)
{
  g_free (parser);
}

const PgProxyHeader *
pg_proxy_parser_get_header (const PgProxyParser *parser)
{
  return parser->state == PG_PROXY_STATE_DONE ? &parser->header : NULL;
}

gchar *
pg_proxy_header_source_to_string (const PgProxyHeader *header)
{
  char text[INET6_ADDRSTRLEN];

  switch (header->family)
    {
    case PG_PROXY_FAMILY_NONE:
      return NULL;
    case PG_PROXY_FAMILY_INET:
      if (inet_ntop (AF_INET, header->src_addr, text, sizeof text) == NULL)
        return NULL;
      return g_strdup (text);
    case PG_PROXY_FAMILY_INET6:
      if (inet_ntop (AF_INET6, header->src_addr, text, sizeof text) == NULL)
        return NULL;
      return g_strdup (text);
    }
  return NULL;
}

static PgProxyParserStatus
pg_proxy_parser_fail (PgProxyParser *parser, GError **error, gint code, const char *what)
{
  parser->state = PG_PROXY_STATE_FAILED;
  g_set_error (error, PG_ERROR, code, "invalid PROXY protocol header: %s", what);
  return PG_PROXY_PARSER_ERROR;
}

/* --- v1 ------------------------------------------------------------------------------- */

/* A port: 1 to 5 decimal digits, at most 65535. */
static gboolean
pg_proxy_parse_port (const char *text, guint16 *out_port)
{
  gsize n = strlen (text);
  guint value = 0;

  if (n == 0 || n > 5)
    return FALSE;
  for (gsize i = 0; i < n; i++)
    {
      if (!g_ascii_isdigit (text[i]))
        return FALSE;
      value = value * 10 + (guint) (text[i] - '0');
    }
  if (value > G_MAXUINT16)
    return FALSE;
  *out_port = (guint16) value;
  return TRUE;
}

/* The complete line (CRLF included) is in parser->buf. */
static PgProxyParserStatus
pg_proxy_parser_finish_v1 (PgProxyParser *parser, GError **error)
{
  char line[PG_PROXY_V1_MAX_LINE + 1];
  g_auto (GStrv) fields = NULL;
  int af;

  g_assert (parser->len >= 2 && parser->len <= PG_PROXY_V1_MAX_LINE);
  memcpy (line, parser->buf, parser->len - 2);
  line[parser->len - 2] = '\0';
  if (memchr (line, '\0', parser->len - 2) != NULL)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "NUL in the v1 line");

  fields = g_strsplit (line, " ", 0);
  /* fields[0] is "PROXY": the prefix was checked byte by byte. */
  if (fields[1] == NULL)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "no protocol in the v1 line");
  if (strcmp (fields[1], "UNKNOWN") == 0)
    {
      /* §2.1: the rest of an UNKNOWN line is to be ignored. */
      parser->header.version = 1;
      parser->header.local = TRUE;
      parser->header.family = PG_PROXY_FAMILY_NONE;
      parser->state = PG_PROXY_STATE_DONE;
      return PG_PROXY_PARSER_DONE;
    }
  if (strcmp (fields[1], "TCP4") == 0)
    {
      af = AF_INET;
      parser->header.family = PG_PROXY_FAMILY_INET;
    }
  else if (strcmp (fields[1], "TCP6") == 0)
    {
      af = AF_INET6;
      parser->header.family = PG_PROXY_FAMILY_INET6;
    }
  else
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "unknown v1 protocol");

  if (g_strv_length (fields) != 6)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                 "a v1 line has six fields separated by single spaces");
  if (inet_pton (af, fields[2], parser->header.src_addr) != 1
      || inet_pton (af, fields[3], parser->header.dst_addr) != 1)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bad v1 address");
  if (!pg_proxy_parse_port (fields[4], &parser->header.src_port)
      || !pg_proxy_parse_port (fields[5], &parser->header.dst_port))
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "bad v1 port");
  parser->header.version = 1;
  parser->header.local = FALSE;
  parser->state = PG_PROXY_STATE_DONE;
  return PG_PROXY_PARSER_DONE;
}

/* --- v2 ------------------------------------------------------------------------------- */

/* The 16-octet header is complete: check it and decide how much of the payload to keep. */
static PgProxyParserStatus
pg_proxy_parser_check_v2_head (PgProxyParser *parser, GError **error)
{
  guint8 ver_cmd = parser->buf[12];
  guint8 fam = parser->buf[13];
  guint family = fam >> 4;
  guint proto = fam & 0x0F;
  gsize need = 0;

  if ((ver_cmd >> 4) != 2)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "v2 version is not 2");
  if ((ver_cmd & 0x0F) > 1)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL, "unknown v2 command");
  if (family > 3 || proto > 2)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                 "unknown v2 address family or protocol");
  parser->v2_payload = ((gsize) parser->buf[14] << 8) | parser->buf[15];
  if (parser->v2_payload > PG_PROXY_V2_MAX_PAYLOAD)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_LIMIT, "v2 payload too long");

  parser->header.version = 2;
  parser->header.local = TRUE;
  parser->header.family = PG_PROXY_FAMILY_NONE;
  if ((ver_cmd & 0x0F) == 0)
    return PG_PROXY_PARSER_NEED_MORE; /* LOCAL: the payload is skipped whatever it is */

  if (proto == 2)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                 "a datagram PROXY header on a stream connection");
  if (family == 1)
    need = PG_PROXY_V2_ADDR_INET;
  else if (family == 2)
    need = PG_PROXY_V2_ADDR_INET6;
  else
    return PG_PROXY_PARSER_NEED_MORE; /* UNSPEC or UNIX: no IP to take */
  if (proto != 1)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                 "an IP PROXY header without a stream protocol");
  if (parser->v2_payload < need)
    return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                 "v2 payload shorter than its addresses");
  parser->v2_keep = need;
  parser->header.local = FALSE;
  parser->header.family = family == 1 ? PG_PROXY_FAMILY_INET : PG_PROXY_FAMILY_INET6;
  return PG_PROXY_PARSER_NEED_MORE;
}

static PgProxyParserStatus
pg_proxy_parser_finish_v2 (PgProxyParser *parser)
{
  const guint8 *addr = parser->buf + PG_PROXY_V2_HEADER;

  if (parser->header.family == PG_PROXY_FAMILY_INET)
    {
      memcpy (parser->header.src_addr, addr, 4);
      memcpy (parser->header.dst_addr, addr + 4, 4);
      parser->header.src_port = (guint16) ((addr[8] << 8) | addr[9]);
      parser->header.dst_port = (guint16) ((addr[10] << 8) | addr[11]);
    }
  else if (parser->header.family == PG_PROXY_FAMILY_INET6)
    {
      memcpy (parser->header.src_addr, addr, 16);
      memcpy (parser->header.dst_addr, addr + 16, 16);
      parser->header.src_port = (guint16) ((addr[32] << 8) | addr[33]);
      parser->header.dst_port = (guint16) ((addr[34] << 8) | addr[35]);
    }
  parser->state = PG_PROXY_STATE_DONE;
  return PG_PROXY_PARSER_DONE;
}

/* --- feeding ----------------------------------------------------------------------------- */

PgProxyParserStatus
pg_proxy_parser_feed (PgProxyParser *parser, const void *data, gsize len, gsize *out_consumed,
                      GError **error)
{
  const guint8 *bytes = data;

  g_return_val_if_fail (parser->state != PG_PROXY_STATE_DONE
                            && parser->state != PG_PROXY_STATE_FAILED,
                        PG_PROXY_PARSER_ERROR);

  for (gsize i = 0; i < len; i++)
    {
      guint8 b = bytes[i];
      PgProxyParserStatus status = PG_PROXY_PARSER_NEED_MORE;

      switch (parser->state)
        {
        case PG_PROXY_STATE_START:
          if (b == (guint8) pg_proxy_v1_prefix[0])
            parser->state = PG_PROXY_STATE_V1;
          else if (b == pg_proxy_v2_signature[0])
            parser->state = PG_PROXY_STATE_V2_HEAD;
          else
            return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                         "the connection does not start with one");
          parser->buf[parser->len++] = b;
          break;

        case PG_PROXY_STATE_V1:
          if (parser->len >= PG_PROXY_V1_MAX_LINE)
            return pg_proxy_parser_fail (parser, error, PG_ERROR_LINE_TOO_LONG, "v1 line too long");
          if (parser->len < strlen (pg_proxy_v1_prefix)
              && b != (guint8) pg_proxy_v1_prefix[parser->len])
            return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                         "the connection does not start with one");
          if (b == '\n' && parser->buf[parser->len - 1] != '\r')
            return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                         "v1 line ends without CRLF");
          parser->buf[parser->len++] = b;
          if (b == '\n')
            status = pg_proxy_parser_finish_v1 (parser, error);
          break;

        case PG_PROXY_STATE_V2_HEAD:
          if (parser->len < sizeof pg_proxy_v2_signature && b != pg_proxy_v2_signature[parser->len])
            return pg_proxy_parser_fail (parser, error, PG_ERROR_PROTOCOL,
                                         "the connection does not start with one");
          parser->buf[parser->len++] = b;
          if (parser->len == PG_PROXY_V2_HEADER)
            {
              status = pg_proxy_parser_check_v2_head (parser, error);
              if (status == PG_PROXY_PARSER_NEED_MORE)
                {
                  parser->state = PG_PROXY_STATE_V2_BODY;
                  if (parser->v2_payload == 0)
                    status = pg_proxy_parser_finish_v2 (parser);
                }
            }
          break;

        case PG_PROXY_STATE_V2_BODY:
          if (parser->v2_seen < parser->v2_keep)
            parser->buf[parser->len++] = b;
          parser->v2_seen++;
          if (parser->v2_seen == parser->v2_payload)
            status = pg_proxy_parser_finish_v2 (parser);
          break;

        case PG_PROXY_STATE_DONE:
        case PG_PROXY_STATE_FAILED:
          g_assert_not_reached ();
        }

      if (status == PG_PROXY_PARSER_ERROR)
        return status;
      if (status == PG_PROXY_PARSER_DONE)
        {
          *out_consumed = i + 1;
          return status;
        }
    }
  return PG_PROXY_PARSER_NEED_MORE;
}
