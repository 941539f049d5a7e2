/* PgUidSet: sorted, merged UID ranges and their canonical sequence-set text.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-state.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <string.h>

typedef struct
{
  guint32 first;
  guint32 last;
} PgUidRange;

/* Invariant: ranges sorted, first <= last, and each range starts at least two above the
 * previous one's last (neither overlapping nor adjacent), so the form is canonical. */
struct _PgUidSet
{
  GArray *ranges; /* owned, of PgUidRange */
};

#define PG_UID_SET_RANGE(set, i) (&g_array_index ((set)->ranges, PgUidRange, (i)))

PgUidSet *
pg_uid_set_new (void)
{
  PgUidSet *set = g_new0 (PgUidSet, 1);

  set->ranges = g_array_new (FALSE, FALSE, sizeof (PgUidRange));
  return set;
}

void
pg_uid_set_free (PgUidSet *set)
{
  if (set == NULL)
    return;
  g_array_unref (set->ranges);
  g_free (set);
}

PgUidSet *
pg_uid_set_copy (const PgUidSet *set)
{
  PgUidSet *copy = pg_uid_set_new ();

  g_array_append_vals (copy->ranges, set->ranges->data, set->ranges->len);
  return copy;
}

gboolean
pg_uid_set_equal (const PgUidSet *a, const PgUidSet *b)
{
  return a->ranges->len == b->ranges->len
         && (a->ranges->len == 0
             || memcmp (a->ranges->data, b->ranges->data, a->ranges->len * sizeof (PgUidRange))
                    == 0);
}

/* Index of the first range whose last + 1 >= uid, i.e. the first range that uid could
 * touch or precede; ranges->len if none. */
static guint
pg_uid_set_lower_bound (const PgUidSet *set, guint64 uid)
{
  guint lo = 0;
  guint hi = set->ranges->len;

  while (lo < hi)
    {
      guint mid = lo + (hi - lo) / 2;

      if ((guint64) PG_UID_SET_RANGE (set, mid)->last + 1 < uid)
        lo = mid + 1;
      else
        hi = mid;
    }
  return lo;
}

void
pg_uid_set_add_range (PgUidSet *set, guint32 first, guint32 last)
{
  guint lo;
  guint hi;
  PgUidRange merged = { first, last };

  g_return_if_fail (first != 0 && first <= last);

  lo = pg_uid_set_lower_bound (set, first);
  /* Ranges [lo, hi) overlap or touch [first, last]. */
  hi = lo;
  while (hi < set->ranges->len && PG_UID_SET_RANGE (set, hi)->first <= (guint64) last + 1)
    hi++;
  if (hi > lo)
    {
      merged.first = MIN (first, PG_UID_SET_RANGE (set, lo)->first);
      merged.last = MAX (last, PG_UID_SET_RANGE (set, hi - 1)->last);
      g_array_remove_range (set->ranges, lo, hi - lo);
    }
  g_array_insert_val (set->ranges, lo, merged);
}

void
pg_uid_set_add (PgUidSet *set, guint32 uid)
{
  g_return_if_fail (uid != 0);
  pg_uid_set_add_range (set, uid, uid);
}

void
pg_uid_set_remove (PgUidSet *set, guint32 uid)
{
  guint i = pg_uid_set_lower_bound (set, (guint64) uid + 1);
  PgUidRange *r;

  if (i >= set->ranges->len)
    return;
  r = PG_UID_SET_RANGE (set, i);
  if (uid < r->first || uid > r->last)
    return;
  if (r->first == r->last)
    g_array_remove_index (set->ranges, i);
  else if (uid == r->first)
    r->first++;
  else if (uid == r->last)
    r->last--;
  else
    {
      PgUidRange upper = { uid + 1, r->last };

      r->last = uid - 1;
      g_array_insert_val (set->ranges, i + 1, upper);
    }
}

void
pg_uid_set_clear (PgUidSet *set)
{
  g_array_set_size (set->ranges, 0);
}

gboolean
pg_uid_set_contains (const PgUidSet *set, guint32 uid)
{
  /* The first range with last >= uid. */
  guint i = pg_uid_set_lower_bound (set, (guint64) uid + 1);

  return uid != 0 && i < set->ranges->len && PG_UID_SET_RANGE (set, i)->first <= uid;
}

guint64
pg_uid_set_count (const PgUidSet *set)
{
  guint64 count = 0;

  for (guint i = 0; i < set->ranges->len; i++)
    count += (guint64) PG_UID_SET_RANGE (set, i)->last - PG_UID_SET_RANGE (set, i)->first + 1;
  return count;
}

gboolean
pg_uid_set_is_empty (const PgUidSet *set)
{
  return set->ranges->len == 0;
}

/* A linear merge of both range lists, so a union of two long histories costs O(n + m). */
void
pg_uid_set_union (PgUidSet *set, const PgUidSet *other)
{
  g_autoptr (GArray) out = NULL;
  guint i = 0;
  guint j = 0;

  if (other->ranges->len == 0)
    return;
  out = g_array_sized_new (FALSE, FALSE, sizeof (PgUidRange),
                           set->ranges->len + other->ranges->len);
  while (i < set->ranges->len || j < other->ranges->len)
    {
      PgUidRange next;
      PgUidRange *tail;

      if (j >= other->ranges->len
          || (i < set->ranges->len
              && PG_UID_SET_RANGE (set, i)->first <= PG_UID_SET_RANGE (other, j)->first))
        next = *PG_UID_SET_RANGE (set, i++);
      else
        next = *PG_UID_SET_RANGE (other, j++);

      tail = out->len > 0 ? &g_array_index (out, PgUidRange, out->len - 1) : NULL;
      if (tail != NULL && next.first <= (guint64) tail->last + 1)
        tail->last = MAX (tail->last, next.last);
      else
        g_array_append_val (out, next);
    }
  g_array_unref (set->ranges);
  set->ranges = g_steal_pointer (&out);
}

PgUidSet *
pg_uid_set_compact (const PgUidSet *set, const guint32 *uids, gsize n_uids, guint32 uidnext)
{
  PgUidSet *out = pg_uid_set_new ();
  guint32 run_first = 0, run_last = 0;

  for (gsize i = 0; i < n_uids && uids[i] < uidnext; i++)
    {
      if (pg_uid_set_contains (set, uids[i]))
        {
          if (run_first == 0)
            run_first = uids[i];
          run_last = uids[i];
        }
      else if (run_first != 0)
        {
          /* An existing non-member ends the run. */
          pg_uid_set_add_range (out, run_first, run_last);
          run_first = 0;
        }
    }
  if (run_first != 0)
    pg_uid_set_add_range (out, run_first, run_last);
  /* UIDs from uidnext on may still come: their membership is kept whatever it is. */
  for (guint i = 0; uidnext > 0 && i < set->ranges->len; i++)
    {
      const PgUidRange *range = PG_UID_SET_RANGE (set, i);
      if (range->last >= uidnext)
        pg_uid_set_add_range (out, MAX (range->first, uidnext), range->last);
    }
  return out;
}

/* A linear walk of both range lists: O(n + m) whatever the number of UIDs. */
void
pg_uid_set_subtract (PgUidSet *set, const PgUidSet *other)
{
  g_autoptr (GArray) out = NULL;
  guint j = 0;

  if (other->ranges->len == 0 || set->ranges->len == 0)
    return;
  out = g_array_sized_new (FALSE, FALSE, sizeof (PgUidRange), set->ranges->len + 1);
  for (guint i = 0; i < set->ranges->len; i++)
    {
      PgUidRange r = *PG_UID_SET_RANGE (set, i);
      gboolean left = TRUE; /* something of r is still to be placed */

      while (j < other->ranges->len && PG_UID_SET_RANGE (other, j)->last < r.first)
        j++;
      while (left && j < other->ranges->len && PG_UID_SET_RANGE (other, j)->first <= r.last)
        {
          const PgUidRange *cut = PG_UID_SET_RANGE (other, j);

          if (cut->first > r.first)
            {
              PgUidRange piece = { r.first, cut->first - 1 };
              g_array_append_val (out, piece);
            }
          if (cut->last >= r.last)
            left = FALSE; /* the rest of r is cut; cut may reach into the next range */
          else
            {
              r.first = cut->last + 1;
              j++;
            }
        }
      if (left)
        g_array_append_val (out, r);
    }
  g_array_unref (set->ranges);
  set->ranges = g_steal_pointer (&out);
}

guint
pg_uid_set_get_n_ranges (const PgUidSet *set)
{
  return set->ranges->len;
}

void
pg_uid_set_get_range (const PgUidSet *set, guint index, guint32 *out_first, guint32 *out_last)
{
  g_return_if_fail (index < set->ranges->len);
  *out_first = PG_UID_SET_RANGE (set, index)->first;
  *out_last = PG_UID_SET_RANGE (set, index)->last;
}

void
pg_uid_set_foreach (const PgUidSet *set, PgUidSetFunc func, gpointer user_data)
{
  for (guint i = 0; i < set->ranges->len; i++)
    {
      PgUidRange r = *PG_UID_SET_RANGE (set, i);

      /* guint64: last may be G_MAXUINT32. */
      for (guint64 uid = r.first; uid <= r.last; uid++)
        if (!func ((guint32) uid, user_data))
          return;
    }
}

gchar *
pg_uid_set_to_string (const PgUidSet *set)
{
  GString *out = g_string_sized_new (set->ranges->len * 8 + 1);

  for (guint i = 0; i < set->ranges->len; i++)
    {
      const PgUidRange *r = PG_UID_SET_RANGE (set, i);

      if (i > 0)
        g_string_append_c (out, ',');
      if (r->first == r->last)
        g_string_append_printf (out, "%" G_GUINT32_FORMAT, r->first);
      else
        g_string_append_printf (out, "%" G_GUINT32_FORMAT ":%" G_GUINT32_FORMAT, r->first, r->last);
    }
  return g_string_free (out, FALSE);
}

/* One UID at text[*pos]: digits, no leading zero, 1..G_MAXUINT32. */
static gboolean
pg_uid_set_parse_number (const char *text, gsize len, gsize *pos, guint32 *out_uid, GError **error)
{
  gsize p = *pos;
  guint64 value = 0;

  if (p >= len || !g_ascii_isdigit (text[p]))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "UID set: a number expected at offset %zu",
                   p);
      return FALSE;
    }
  if (text[p] == '0')
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "UID set: 0 or a leading zero at offset %zu",
                   p);
      return FALSE;
    }
  while (p < len && g_ascii_isdigit (text[p]))
    {
      value = value * 10 + (guint64) (text[p] - '0');
      if (value > G_MAXUINT32)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                       "UID set: number too large at offset %zu", *pos);
          return FALSE;
        }
      p++;
    }
  *pos = p;
  *out_uid = (guint32) value;
  return TRUE;
}

PgUidSet *
pg_uid_set_parse (const char *text, gsize len, GError **error)
{
  g_autoptr (PgUidSet) set = pg_uid_set_new ();
  gsize pos = 0;

  if (len > PG_STATE_MAX_ENCODED)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_LIMIT, "UID set: %zu bytes, more than %u", len,
                   (guint) PG_STATE_MAX_ENCODED);
      return NULL;
    }
  while (pos < len)
    {
      PgUidRange r;

      if (pos > 0)
        {
          if (text[pos] != ',')
            {
              g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                           "UID set: ',' expected at offset %zu", pos);
              return NULL;
            }
          pos++;
        }
      if (!pg_uid_set_parse_number (text, len, &pos, &r.first, error))
        return NULL;
      r.last = r.first;
      if (pos < len && text[pos] == ':')
        {
          gsize at = pos;

          pos++;
          if (!pg_uid_set_parse_number (text, len, &pos, &r.last, error))
            return NULL;
          if (r.last <= r.first)
            {
              g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                           "UID set: range not ascending at offset %zu", at);
              return NULL;
            }
        }
      if (set->ranges->len > 0
          && r.first <= (guint64) PG_UID_SET_RANGE (set, set->ranges->len - 1)->last + 1)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL,
                       "UID set: ranges out of order, overlapping or adjacent before offset %zu",
                       pos);
          return NULL;
        }
      g_array_append_val (set->ranges, r);
    }
  return g_steal_pointer (&set);
}
