/* PgStateKey, PgClientState and the versioned, checksummed text encoding.
 *
 * The decoder takes a whole record, not a stream: a record always arrives whole (a file
 * of at most PG_STATE_MAX_ENCODED bytes, or one METADATA literal) and the checksum covers
 * all of it, so a resumable parser would only add states. It stays pure and bounded, and
 * the tests cut records at every offset instead of feeding them in pieces.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-state-private.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

#define PG_STATE_MAGIC "popgate-state"
/* 2: with a UIDL ledger; 1 (without) is still written when there is none, and read. */
#define PG_STATE_VERSION 2
#define PG_STATE_VERSION_NO_LEDGER 1
/* Bytes of a key field quoted in a log line. */
#define PG_STATE_LOG_FIELD 64

/* --- key --------------------------------------------------------------------------- */

PgStateKey *
pg_state_key_new (const char *user, const char *mailbox, const char *tag)
{
  PgStateKey *key;

  g_return_val_if_fail (user != NULL && mailbox != NULL && tag != NULL, NULL);

  key = g_new0 (PgStateKey, 1);
  key->user = g_strdup (user);
  key->mailbox = g_strdup (mailbox);
  key->tag = g_strdup (tag);
  return key;
}

void
pg_state_key_free (PgStateKey *key)
{
  if (key == NULL)
    return;
  g_free (key->user);
  g_free (key->mailbox);
  g_free (key->tag);
  g_free (key);
}

PgStateKey *
pg_state_key_copy (const PgStateKey *key)
{
  return pg_state_key_new (key->user, key->mailbox, key->tag);
}

gboolean
pg_state_key_equal (const PgStateKey *a, const PgStateKey *b)
{
  return g_str_equal (a->user, b->user) && g_str_equal (a->mailbox, b->mailbox)
         && g_str_equal (a->tag, b->tag);
}

gchar *
pg_state_key_to_log (const PgStateKey *key)
{
  g_autofree gchar *user = pg_log_escape (key->user, strlen (key->user), PG_STATE_LOG_FIELD);
  g_autofree gchar *mailbox
      = pg_log_escape (key->mailbox, strlen (key->mailbox), PG_STATE_LOG_FIELD);
  g_autofree gchar *tag = pg_log_escape (key->tag, strlen (key->tag), PG_STATE_LOG_FIELD);

  return g_strdup_printf ("user=%s mailbox=%s tag=%s", user, mailbox, tag);
}

/* --- state ------------------------------------------------------------------------- */

PgClientState *
pg_client_state_new (guint32 uidvalidity, guint32 first_uidnext, gint64 first_login)
{
  PgClientState *state = g_new0 (PgClientState, 1);

  state->uidvalidity = uidvalidity;
  state->first_uidnext = first_uidnext;
  state->first_login = first_login;
  state->hidden = pg_uid_set_new ();
  state->retrieved = pg_uid_set_new ();
  state->pending = PG_STATE_PENDING_NONE;
  state->pending_uids = pg_uid_set_new ();
  state->ledger_kind = PG_LEDGER_KIND_NONE;
  state->ledger = g_array_new (FALSE, FALSE, sizeof (PgLedgerEntry));
  return state;
}

void
pg_client_state_free (PgClientState *state)
{
  if (state == NULL)
    return;
  pg_uid_set_free (state->hidden);
  pg_uid_set_free (state->retrieved);
  g_free (state->pending_mailbox);
  pg_uid_set_free (state->pending_uids);
  g_array_unref (state->ledger);
  g_free (state);
}

PgClientState *
pg_client_state_copy (const PgClientState *state)
{
  PgClientState *copy
      = pg_client_state_new (state->uidvalidity, state->first_uidnext, state->first_login);

  pg_uid_set_union (copy->hidden, state->hidden);
  pg_uid_set_union (copy->retrieved, state->retrieved);
  pg_client_state_set_pending (copy, state->pending, state->pending_mailbox, state->pending_uids);
  copy->ledger_kind = state->ledger_kind;
  g_array_append_vals (copy->ledger, state->ledger->data, state->ledger->len);
  return copy;
}

gboolean
pg_client_state_equal (const PgClientState *a, const PgClientState *b)
{
  return a->uidvalidity == b->uidvalidity && a->first_uidnext == b->first_uidnext
         && a->first_login == b->first_login && pg_uid_set_equal (a->hidden, b->hidden)
         && pg_uid_set_equal (a->retrieved, b->retrieved) && a->pending == b->pending
         && g_strcmp0 (a->pending_mailbox, b->pending_mailbox) == 0
         && pg_uid_set_equal (a->pending_uids, b->pending_uids) && a->ledger_kind == b->ledger_kind
         && a->ledger->len == b->ledger->len
         && (a->ledger->len == 0
             || memcmp (a->ledger->data, b->ledger->data, a->ledger->len * sizeof (PgLedgerEntry))
                    == 0);
}

void
pg_client_state_clear_pending (PgClientState *state)
{
  state->pending = PG_STATE_PENDING_NONE;
  g_clear_pointer (&state->pending_mailbox, g_free);
  pg_uid_set_clear (state->pending_uids);
}

void
pg_client_state_set_pending (PgClientState *state, PgStatePending pending, const char *mailbox,
                             const PgUidSet *uids)
{
  g_return_if_fail (pending != PG_STATE_PENDING_MOVE || (mailbox != NULL && *mailbox != '\0'));

  pg_client_state_clear_pending (state);
  /* An update of nothing is no update: the encoding has no empty pending line. */
  if (pending == PG_STATE_PENDING_NONE || uids == NULL || pg_uid_set_is_empty (uids))
    return;
  state->pending = pending;
  if (pending == PG_STATE_PENDING_MOVE)
    state->pending_mailbox = g_strdup (mailbox);
  pg_uid_set_union (state->pending_uids, uids);
}

/* Three-way merge of one set: what `stored` holds, minus what this session took out of
 * its base (compaction drops UIDs that no longer exist; a cleared pending update), plus
 * what it holds now. A UID another session added (in stored, not in base) stays. */
static void
pg_client_state_merge_set (PgUidSet *ours_out, const PgUidSet *stored, const PgUidSet *base,
                           const PgUidSet *ours)
{
  g_autoptr (PgUidSet) theirs = pg_uid_set_copy (stored);

  if (base != NULL)
    {
      g_autoptr (PgUidSet) taken = pg_uid_set_copy (base);

      pg_uid_set_subtract (taken, ours);
      pg_uid_set_subtract (theirs, taken);
    }
  pg_uid_set_union (ours_out, theirs);
}

PgClientState *
pg_client_state_merge (const PgClientState *stored, const PgClientState *base,
                       const PgClientState *ours)
{
  PgClientState *merged;
  gboolean same_base = base != NULL && base->uidvalidity == ours->uidvalidity;

  /* Another UIDVALIDITY: the UIDs do not compare. The newer mailbox wins; both sides
   * know only their own, so ours (the session that saw the server last) it is. */
  if (stored == NULL || stored->uidvalidity != ours->uidvalidity)
    return pg_client_state_copy (ours);
  merged = pg_client_state_copy (ours);
  /* The first login is the earlier of the two (first_login = new hides what was there). */
  if (stored->first_uidnext != 0
      && (merged->first_uidnext == 0 || stored->first_uidnext < merged->first_uidnext))
    merged->first_uidnext = stored->first_uidnext;
  merged->first_login = MIN (merged->first_login, stored->first_login);
  /* Hidden and retrieved: a UID hidden or retrieved in any session stays so. */
  pg_client_state_merge_set (merged->hidden, stored->hidden, same_base ? base->hidden : NULL,
                             ours->hidden);
  pg_client_state_merge_set (merged->retrieved, stored->retrieved,
                             same_base ? base->retrieved : NULL, ours->retrieved);
  /* Pending: ours, plus what another session recorded and we did not finish ourselves.
   * What we cleared (in base, no longer in ours) is settled; finishing an update twice
   * is harmless anyway (the UIDs are gone, or hidden and flagged again). */
  if (stored->pending != PG_STATE_PENDING_NONE)
    {
      g_autoptr (PgUidSet) theirs = pg_uid_set_new ();

      pg_client_state_merge_set (theirs, stored->pending_uids,
                                 same_base ? base->pending_uids : NULL, ours->pending_uids);
      pg_uid_set_subtract (theirs, ours->pending_uids);
      if (merged->pending == PG_STATE_PENDING_NONE)
        pg_client_state_set_pending (merged, stored->pending, stored->pending_mailbox, theirs);
      else if (merged->pending == stored->pending
               && g_strcmp0 (merged->pending_mailbox, stored->pending_mailbox) == 0)
        /* One record holds one kind of update: ours stands, theirs joins it when it is
         * the same kind (it is, unless [pop3] delete changed in between). */
        pg_uid_set_union (merged->pending_uids, theirs);
    }
  pg_state_ledger_merge (merged, stored, same_base ? base : NULL);
  return merged;
}

/* --- encoding ---------------------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, as zlib): it detects truncation and bit rot, not tampering (who can
 * write the file can write the checksum too). Bitwise: records are small. */
static guint32
pg_state_crc32 (const guint8 *data, gsize len)
{
  guint32 crc = 0xffffffffu;

  for (gsize i = 0; i < len; i++)
    {
      crc ^= data[i];
      for (guint k = 0; k < 8; k++)
        crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
  return crc ^ 0xffffffffu;
}

static gboolean
pg_state_needs_escape (guchar c)
{
  return c <= 0x20 || c >= 0x7f || c == '%';
}

static void
pg_state_append_escaped (GString *out, const char *text)
{
  for (const guchar *p = (const guchar *) text; *p != '\0'; p++)
    {
      if (pg_state_needs_escape (*p))
        g_string_append_printf (out, "%%%02X", *p);
      else
        g_string_append_c (out, (char) *p);
    }
}

/* "word value\n", or the bare "word\n" for an empty value. */
static void
pg_state_append_field (GString *out, const char *word, const char *text)
{
  g_string_append (out, word);
  if (*text != '\0')
    {
      g_string_append_c (out, ' ');
      pg_state_append_escaped (out, text);
    }
  g_string_append_c (out, '\n');
}

static void
pg_state_append_set (GString *out, const char *word, const PgUidSet *set)
{
  g_autofree gchar *text = pg_uid_set_to_string (set);

  g_string_append (out, word);
  if (*text != '\0')
    {
      g_string_append_c (out, ' ');
      g_string_append (out, text);
    }
  g_string_append_c (out, '\n');
}

static void
pg_state_append_uint (GString *out, guint32 n)
{
  char digits[PG_DECIMAL_MAX_LEN];

  g_string_append_len (out, digits, (gssize) pg_format_decimal (digits, n));
}

/* "l UID ID[ UIDL-UID:UIDL-UIDVALIDITY]": one line per message, so a large mailbox's
 * record is written at every store; no printf per field or per hex digit. */
static void
pg_state_append_ledger_line (GString *out, const PgLedgerEntry *entry, guint32 uidvalidity)
{
  static const char hex[] = "0123456789abcdef";
  char id[2 * PG_LEDGER_ID_LEN];

  g_string_append (out, "l ");
  pg_state_append_uint (out, entry->uid);
  g_string_append_c (out, ' ');
  for (guint k = 0; k < PG_LEDGER_ID_LEN; k++)
    {
      id[2 * k] = hex[entry->id[k] >> 4];
      id[2 * k + 1] = hex[entry->id[k] & 0x0f];
    }
  g_string_append_len (out, id, sizeof id);
  if (entry->uidl_uid != entry->uid || entry->uidl_uidvalidity != uidvalidity)
    {
      g_string_append_c (out, ' ');
      pg_state_append_uint (out, entry->uidl_uid);
      g_string_append_c (out, ':');
      pg_state_append_uint (out, entry->uidl_uidvalidity);
    }
  g_string_append_c (out, '\n');
}

/* "hmac-sha256:" and 64 lowercase hex digits: the end line of a keyed record. */
#define PG_STATE_MAC_PREFIX "hmac-sha256:"

static gchar *
pg_state_hmac (GBytes *mac_key, const void *data, gsize len)
{
  gsize key_len = 0;
  const guchar *key = g_bytes_get_data (mac_key, &key_len);
  g_autoptr (GHmac) hmac = g_hmac_new (G_CHECKSUM_SHA256, key, key_len);

  g_hmac_update (hmac, data, (gssize) len);
  return g_strdup (g_hmac_get_string (hmac));
}

GBytes *
pg_client_state_encode (const PgClientState *state, const PgStateKey *key)
{
  return pg_client_state_encode_keyed (state, key, NULL);
}

GBytes *
pg_client_state_encode_keyed (const PgClientState *state, const PgStateKey *key, GBytes *mac_key)
{
  GString *out = g_string_new (NULL);

  g_string_append_printf (out, PG_STATE_MAGIC " %d\n",
                          state->ledger_kind != PG_LEDGER_KIND_NONE ? PG_STATE_VERSION
                                                                    : PG_STATE_VERSION_NO_LEDGER);
  pg_state_append_field (out, "user", key->user);
  pg_state_append_field (out, "mailbox", key->mailbox);
  pg_state_append_field (out, "tag", key->tag);
  g_string_append_printf (out,
                          "uidvalidity %" G_GUINT32_FORMAT "\nfirst-uidnext %" G_GUINT32_FORMAT
                          "\nfirst-login %" G_GINT64_FORMAT "\n",
                          state->uidvalidity, state->first_uidnext, state->first_login);
  pg_state_append_set (out, "hidden", state->hidden);
  pg_state_append_set (out, "retrieved", state->retrieved);
  if (state->ledger_kind != PG_LEDGER_KIND_NONE)
    {
      g_string_append_printf (out, "ledger %s\n", pg_ledger_kind_to_string (state->ledger_kind));
      for (guint i = 0; i < state->ledger->len; i++)
        {
          const PgLedgerEntry *entry = &g_array_index (state->ledger, PgLedgerEntry, i);

          pg_state_append_ledger_line (out, entry, state->uidvalidity);
        }
    }
  switch (state->pending)
    {
    case PG_STATE_PENDING_NONE:
      break;
    case PG_STATE_PENDING_EXPUNGE:
      pg_state_append_set (out, "pending expunge", state->pending_uids);
      break;
    case PG_STATE_PENDING_MOVE:
      {
        g_autoptr (GString) word = g_string_new ("pending move:");

        pg_state_append_escaped (word, state->pending_mailbox);
        pg_state_append_set (out, word->str, state->pending_uids);
      }
      break;
    }
  if (mac_key != NULL)
    {
      g_autofree gchar *mac = pg_state_hmac (mac_key, out->str, out->len);
      g_string_append_printf (out, "end " PG_STATE_MAC_PREFIX "%s\n", mac);
    }
  else
    g_string_append_printf (out, "end %08x\n",
                            pg_state_crc32 ((const guint8 *) out->str, out->len));
  return g_string_free_to_bytes (out);
}

/* --- decoding ---------------------------------------------------------------------- */

typedef struct
{
  const char *data;
  gsize len; /* up to the end line */
  gsize pos;
  guint line_no;
  const char *source;
  /* the current line, without its LF */
  const char *line;
  gsize line_len;
} PgStateReader;

static gboolean pg_state_fail (PgStateReader *r, GError **error, const char *format, ...)
    G_GNUC_PRINTF (3, 4);

static gboolean
pg_state_fail (PgStateReader *r, GError **error, const char *format, ...)
{
  va_list args;
  g_autofree gchar *what = NULL;

  va_start (args, format);
  what = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "%s: corrupt state record, line %u: %s",
               r->source, r->line_no, what);
  return FALSE;
}

/* Take the next line, which must start with `word` followed by a space and a non-empty
 * value, or (allow_bare) by nothing. *out_value is then the rest after the space. */
static gboolean
pg_state_expect (PgStateReader *r, const char *word, gboolean allow_bare, const char **out_value,
                 gsize *out_value_len, GError **error)
{
  const char *nl;
  gsize wlen = strlen (word);

  r->line_no++;
  if (r->pos >= r->len)
    return pg_state_fail (r, error, "\"%s\" expected, the record ends", word);
  nl = memchr (r->data + r->pos, '\n', r->len - r->pos);
  /* The end line was found first, so every line before it ends with LF. */
  g_assert_nonnull (nl);
  r->line = r->data + r->pos;
  r->line_len = (gsize) (nl - r->line);
  r->pos += r->line_len + 1;

  if (r->line_len < wlen || memcmp (r->line, word, wlen) != 0
      || (r->line_len > wlen && r->line[wlen] != ' '))
    {
      g_autofree gchar *got = pg_log_escape (r->line, r->line_len, 40);

      return pg_state_fail (r, error, "\"%s\" expected, got \"%s\"", word, got);
    }
  if (r->line_len == wlen)
    {
      if (!allow_bare)
        return pg_state_fail (r, error, "\"%s\" has no value", word);
      *out_value = r->line + wlen;
      *out_value_len = 0;
      return TRUE;
    }
  if (r->line_len == wlen + 1)
    return pg_state_fail (r, error, "\"%s\" has an empty value", word);
  *out_value = r->line + wlen + 1;
  *out_value_len = r->line_len - wlen - 1;
  return TRUE;
}

static gint
pg_state_hex_digit (char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Strict: only the encoder's own form (escapes exactly where needed, uppercase hex). */
static gboolean
pg_state_unescape (PgStateReader *r, const char *what, const char *value, gsize len,
                   gchar **out_text, GError **error)
{
  g_autoptr (GString) text = g_string_sized_new (len);

  for (gsize i = 0; i < len; i++)
    {
      guchar c = (guchar) value[i];

      if (c == '%')
        {
          gint hi = i + 2 < len ? pg_state_hex_digit (value[i + 1]) : -1;
          gint lo = i + 2 < len ? pg_state_hex_digit (value[i + 2]) : -1;

          if (hi < 0 || lo < 0)
            return pg_state_fail (r, error, "%s: bad %%-escape", what);
          c = (guchar) (hi * 16 + lo);
          if (c == 0 || !pg_state_needs_escape (c))
            return pg_state_fail (r, error, "%s: %%-escape of a byte that needs none", what);
          i += 2;
        }
      else if (pg_state_needs_escape (c))
        return pg_state_fail (r, error, "%s: unescaped byte 0x%02x", what, c);
      g_string_append_c (text, (char) c);
      if (text->len > PG_STATE_MAX_KEY_FIELD)
        return pg_state_fail (r, error, "%s longer than %u bytes", what,
                              (guint) PG_STATE_MAX_KEY_FIELD);
    }
  *out_text = g_string_free (g_steal_pointer (&text), FALSE);
  return TRUE;
}

/* Decimal, no sign, no leading zero, at most max. */
static gboolean
pg_state_number (PgStateReader *r, const char *what, const char *value, gsize len, guint64 max,
                 guint64 *out_value, GError **error)
{
  guint64 n = 0;

  if (len == 0 || (value[0] == '0' && len > 1))
    return pg_state_fail (r, error, "%s: not a canonical number", what);
  for (gsize i = 0; i < len; i++)
    {
      if (!g_ascii_isdigit (value[i]))
        return pg_state_fail (r, error, "%s: not a number", what);
      if (n > (max - (guint64) (value[i] - '0')) / 10)
        return pg_state_fail (r, error, "%s: out of range", what);
      n = n * 10 + (guint64) (value[i] - '0');
    }
  *out_value = n;
  return TRUE;
}

static gboolean
pg_state_field_number (PgStateReader *r, const char *word, guint64 max, guint64 *out_value,
                       GError **error)
{
  const char *value = NULL;
  gsize len = 0;

  return pg_state_expect (r, word, FALSE, &value, &len, error)
         && pg_state_number (r, word, value, len, max, out_value, error);
}

static gboolean
pg_state_field_text (PgStateReader *r, const char *word, gboolean allow_empty, gchar **out_text,
                     GError **error)
{
  const char *value = NULL;
  gsize len = 0;

  return pg_state_expect (r, word, allow_empty, &value, &len, error)
         && pg_state_unescape (r, word, value, len, out_text, error);
}

static PgUidSet *
pg_state_set (PgStateReader *r, const char *what, const char *value, gsize len, GError **error)
{
  g_autoptr (GError) local_error = NULL;
  PgUidSet *set = pg_uid_set_parse (value, len, &local_error);

  if (set == NULL)
    pg_state_fail (r, error, "%s: %s", what, local_error->message);
  return set;
}

static PgUidSet *
pg_state_field_set (PgStateReader *r, const char *word, GError **error)
{
  const char *value = NULL;
  gsize len = 0;

  if (!pg_state_expect (r, word, TRUE, &value, &len, error))
    return NULL;
  return pg_state_set (r, word, value, len, error);
}

static gboolean
pg_state_pending (PgStateReader *r, PgClientState *state, GError **error)
{
  const char *value = NULL;
  gsize len = 0;
  const char *space;
  g_autoptr (PgUidSet) uids = NULL;
  g_autofree gchar *mailbox = NULL;
  PgStatePending pending;

  if (!pg_state_expect (r, "pending", FALSE, &value, &len, error))
    return FALSE;
  space = memchr (value, ' ', len);
  if (space == NULL)
    return pg_state_fail (r, error, "pending: no UID set");
  if ((gsize) (space - value) == strlen ("expunge") && memcmp (value, "expunge", 7) == 0)
    pending = PG_STATE_PENDING_EXPUNGE;
  else if ((gsize) (space - value) > strlen ("move:") && memcmp (value, "move:", 5) == 0)
    {
      pending = PG_STATE_PENDING_MOVE;
      if (!pg_state_unescape (r, "pending move mailbox", value + 5, (gsize) (space - value) - 5,
                              &mailbox, error))
        return FALSE;
    }
  else
    return pg_state_fail (r, error, "pending: unknown action");
  len -= (gsize) (space - value) + 1;
  uids = pg_state_set (r, "pending", space + 1, len, error);
  if (uids == NULL)
    return FALSE;
  if (pg_uid_set_is_empty (uids))
    return pg_state_fail (r, error, "pending: empty UID set");
  pg_client_state_set_pending (state, pending, mailbox, uids);
  return TRUE;
}

/* One number of a ledger entry: canonical decimal, 1..G_MAXUINT32. */
static gboolean
pg_state_ledger_number (PgStateReader *r, const char *value, gsize len, guint32 *out_n,
                        GError **error)
{
  guint64 n = 0;

  if (!pg_state_number (r, "ledger entry", value, len, G_MAXUINT32, &n, error))
    return FALSE;
  if (n == 0)
    return pg_state_fail (r, error, "ledger entry: 0 is no UID or UIDVALIDITY");
  *out_n = (guint32) n;
  return TRUE;
}

/* "l UID ID [UIDL-UID:UIDL-UIDVALIDITY]" */
static gboolean
pg_state_ledger_entry (PgStateReader *r, const PgClientState *state, const char *value, gsize len,
                       PgLedgerEntry *out_entry, GError **error)
{
  const char *space = memchr (value, ' ', len);
  const char *id;
  gsize rest;

  if (space == NULL)
    return pg_state_fail (r, error, "ledger entry: no identity");
  if (!pg_state_ledger_number (r, value, (gsize) (space - value), &out_entry->uid, error))
    return FALSE;
  id = space + 1;
  rest = len - (gsize) (id - value);
  if (rest < 2 * PG_LEDGER_ID_LEN
      || (rest > 2 * PG_LEDGER_ID_LEN && id[2 * PG_LEDGER_ID_LEN] != ' '))
    return pg_state_fail (r, error, "ledger entry: the identity is not %d hex digits",
                          2 * PG_LEDGER_ID_LEN);
  for (guint k = 0; k < PG_LEDGER_ID_LEN; k++)
    {
      gint hi = g_ascii_xdigit_value (id[2 * k]);
      gint lo = g_ascii_xdigit_value (id[2 * k + 1]);

      if (hi < 0 || lo < 0 || g_ascii_isupper (id[2 * k]) || g_ascii_isupper (id[2 * k + 1]))
        return pg_state_fail (r, error, "ledger entry: the identity is not lowercase hex");
      out_entry->id[k] = (guint8) (hi * 16 + lo);
    }
  out_entry->uidl_uid = out_entry->uid;
  out_entry->uidl_uidvalidity = state->uidvalidity;
  if (rest > 2 * PG_LEDGER_ID_LEN)
    {
      const char *pair = id + 2 * PG_LEDGER_ID_LEN + 1;
      gsize pair_len = rest - 2 * PG_LEDGER_ID_LEN - 1;
      const char *colon = memchr (pair, ':', pair_len);

      if (colon == NULL)
        return pg_state_fail (r, error, "ledger entry: the UIDL is not UID:UIDVALIDITY");
      if (!pg_state_ledger_number (r, pair, (gsize) (colon - pair), &out_entry->uidl_uid, error)
          || !pg_state_ledger_number (r, colon + 1, pair_len - (gsize) (colon - pair) - 1,
                                      &out_entry->uidl_uidvalidity, error))
        return FALSE;
      /* The encoder leaves the default out: only one spelling per record. */
      if (out_entry->uidl_uid == out_entry->uid
          && out_entry->uidl_uidvalidity == state->uidvalidity)
        return pg_state_fail (r, error, "ledger entry: a UIDL pair that is the default");
    }
  return TRUE;
}

/* "ledger KIND" and its entries, ascending by UID, at most PG_STATE_MAX_LEDGER_ENTRIES. */
static gboolean
pg_state_ledger (PgStateReader *r, PgClientState *state, GError **error)
{
  const char *value = NULL;
  gsize len = 0;

  if (!pg_state_expect (r, "ledger", FALSE, &value, &len, error))
    return FALSE;
  if (!pg_ledger_kind_from_string (value, len, &state->ledger_kind))
    return pg_state_fail (r, error, "ledger: unknown kind");
  while (r->pos + 2 <= r->len && memcmp (r->data + r->pos, "l ", 2) == 0)
    {
      PgLedgerEntry entry = { 0 };

      if (!pg_state_expect (r, "l", FALSE, &value, &len, error)
          || !pg_state_ledger_entry (r, state, value, len, &entry, error))
        return FALSE;
      if (state->ledger->len > 0
          && g_array_index (state->ledger, PgLedgerEntry, state->ledger->len - 1).uid >= entry.uid)
        return pg_state_fail (r, error, "ledger entry: UIDs not ascending");
      if (state->ledger->len >= PG_STATE_MAX_LEDGER_ENTRIES)
        return pg_state_fail (r, error, "ledger: more than %u entries",
                              (guint) PG_STATE_MAX_LEDGER_ENTRIES);
      g_array_append_val (state->ledger, entry);
    }
  return TRUE;
}

PgClientState *
pg_client_state_decode (const void *data, gsize len, const char *source, PgStateKey **out_key,
                        GError **error)
{
  return pg_client_state_decode_keyed (data, len, source, NULL, TRUE, out_key, error);
}

/* The end line: a MAC under mac_key, or (when accept_crc) the CRC-32 of unkeyed records. */
static gboolean
pg_state_check_end (const char *text, gsize end_start, gsize len, const char *source,
                    GBytes *mac_key, gboolean accept_crc, GError **error)
{
  const char *line = text + end_start + 4;
  gsize line_len = len - 1 - (end_start + 4);
  guint32 crc = 0;

  if (line_len == strlen (PG_STATE_MAC_PREFIX) + 64
      && memcmp (line, PG_STATE_MAC_PREFIX, strlen (PG_STATE_MAC_PREFIX)) == 0)
    {
      g_autofree gchar *want = NULL;
      guint diff = 0;

      if (mac_key == NULL)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                       "%s: keyed state record, but no key to check it", source);
          return FALSE;
        }
      want = pg_state_hmac (mac_key, text, end_start);
      /* Constant time: a forger learns nothing from how long the comparison took. */
      for (gsize i = 0; i < 64; i++)
        diff |= (guchar) want[i] ^ (guchar) line[strlen (PG_STATE_MAC_PREFIX) + i];
      if (diff != 0)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                       "%s: forged or corrupt state record (MAC mismatch)", source);
          return FALSE;
        }
      return TRUE;
    }
  if (line_len != 8)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                   "%s: truncated state record (no \"end\" checksum line)", source);
      return FALSE;
    }
  if (!accept_crc)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                   "%s: state record without a MAC (forged, or from an older popgate and "
                   "newer than its key)",
                   source);
      return FALSE;
    }
  for (gsize i = 0; i < line_len; i++)
    {
      gint d = g_ascii_xdigit_value (line[i]);

      if (d < 0 || g_ascii_isupper (line[i]))
        {
          g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                       "%s: corrupt state record (bad \"end\" checksum line)", source);
          return FALSE;
        }
      crc = crc << 4 | (guint32) d;
    }
  if (crc != pg_state_crc32 ((const guint8 *) text, end_start))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                   "%s: corrupt state record (checksum mismatch)", source);
      return FALSE;
    }
  return TRUE;
}

PgClientState *
pg_client_state_decode_keyed (const void *data, gsize len, const char *source, GBytes *mac_key,
                              gboolean accept_crc, PgStateKey **out_key, GError **error)
{
  PgStateReader r = { .data = data, .source = source };
  const char *text = data;
  gsize end_start;
  guint64 n = 0;
  g_autofree gchar *user = NULL;
  g_autofree gchar *mailbox = NULL;
  g_autofree gchar *tag = NULL;
  guint32 uidvalidity;
  guint32 first_uidnext;
  g_autoptr (PgClientState) state = NULL;
  g_autoptr (PgUidSet) hidden = NULL;
  g_autoptr (PgUidSet) retrieved = NULL;
  const char *value = NULL;
  gsize value_len = 0;
  gint version;

  if (len > PG_STATE_MAX_ENCODED)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_LIMIT, "%s: state record of %zu bytes, more than %u",
                   source, len, (guint) PG_STATE_MAX_ENCODED);
      return NULL;
    }
  if (len == 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "%s: empty state record (truncated?)",
                   source);
      return NULL;
    }
  if (text[len - 1] != '\n')
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                   "%s: truncated state record (no final line end)", source);
      return NULL;
    }

  /* The last line is the checksum over everything before it. */
  end_start = len - 1;
  while (end_start > 0 && text[end_start - 1] != '\n')
    end_start--;
  if (len - end_start < strlen ("end 01234567\n") || memcmp (text + end_start, "end ", 4) != 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                   "%s: truncated state record (no \"end\" checksum line)", source);
      return NULL;
    }
  if (!pg_state_check_end (text, end_start, len, source, mac_key, accept_crc, error))
    return NULL;
  r.len = end_start;

  if (!pg_state_expect (&r, PG_STATE_MAGIC, FALSE, &value, &value_len, error))
    return NULL;
  if (value_len != 1
      || (value[0] != '0' + PG_STATE_VERSION && value[0] != '0' + PG_STATE_VERSION_NO_LEDGER))
    {
      g_autofree gchar *got = pg_log_escape (value, value_len, 20);

      pg_state_fail (&r, error, "unsupported version \"%s\" (this is version %d)", got,
                     PG_STATE_VERSION);
      return NULL;
    }
  version = value[0] - '0';
  if (!pg_state_field_text (&r, "user", FALSE, &user, error)
      || !pg_state_field_text (&r, "mailbox", FALSE, &mailbox, error)
      || !pg_state_field_text (&r, "tag", TRUE, &tag, error))
    return NULL;
  if (!pg_state_field_number (&r, "uidvalidity", G_MAXUINT32, &n, error))
    return NULL;
  if (n == 0)
    {
      pg_state_fail (&r, error, "uidvalidity 0");
      return NULL;
    }
  uidvalidity = (guint32) n;
  if (!pg_state_field_number (&r, "first-uidnext", G_MAXUINT32, &n, error))
    return NULL;
  first_uidnext = (guint32) n;
  if (!pg_state_field_number (&r, "first-login", G_MAXINT64, &n, error))
    return NULL;
  state = pg_client_state_new (uidvalidity, first_uidnext, (gint64) n);

  hidden = pg_state_field_set (&r, "hidden", error);
  if (hidden == NULL)
    return NULL;
  pg_uid_set_union (state->hidden, hidden);
  retrieved = pg_state_field_set (&r, "retrieved", error);
  if (retrieved == NULL)
    return NULL;
  pg_uid_set_union (state->retrieved, retrieved);
  if (version == PG_STATE_VERSION && !pg_state_ledger (&r, state, error))
    return NULL;

  if (r.pos < r.len && !pg_state_pending (&r, state, error))
    return NULL;
  if (r.pos < r.len)
    {
      r.line_no++;
      pg_state_fail (&r, error, "unexpected line before \"end\"");
      return NULL;
    }

  if (out_key != NULL)
    *out_key = pg_state_key_new (user, mailbox, tag);
  return g_steal_pointer (&state);
}
