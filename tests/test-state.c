/* Tests for the per-client state: UID sets, the record encoding, the file store, and the
 * imap-metadata store against a real Dovecot (so this program is an integration test).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-test-cyrus.h"
#include "pg-test-dovecot.h"
#include "pg-test-imap.h"
#include "pg-test-peer.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"
#include "popgate/pg-state.h"
#include "popgate/pg-upstream.h"

#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>
#include <utime.h>
#include <sys/stat.h>

/* --- UID sets ------------------------------------------------------------------------ */

static gchar *
pg_test_state_set_string (const PgUidSet *set)
{
  return pg_uid_set_to_string (set);
}

/* Compaction against a complete snapshot (issue 19, item 4): runs merge only across UIDs
 * known not to exist; a UID of the snapshot that is not a member breaks a run, and members
 * at or above UIDNEXT are kept. */
static void
pg_test_state_uidset_compact (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgUidSet) set = pg_uid_set_parse ("2,5:7,9,12,20:22", 16, &error);
  static const guint32 snapshot[] = { 5, 7, 9, 10, 12, 14 };
  g_autoptr (PgUidSet) out = NULL;
  g_autofree gchar *text = NULL;

  g_assert_no_error (error);
  out = pg_uid_set_compact (set, snapshot, G_N_ELEMENTS (snapshot), 21);
  text = pg_test_state_set_string (out);
  /* 2 and 6 do not exist (dropped); 5..9 merge across 6 and 8 (known gone); 10 exists and
   * is not a member, so 12 starts a new run; 20 (below UIDNEXT, absent) is gone; 21:22 may
   * still come. */
  g_assert_cmpstr (text, ==, "5:9,12,21:22");
  /* An empty snapshot: everything below UIDNEXT is gone. */
  {
    g_autoptr (PgUidSet) none = pg_uid_set_compact (set, NULL, 0, 21);
    g_autofree gchar *none_text = pg_test_state_set_string (none);
    g_assert_cmpstr (none_text, ==, "21:22");
  }
  /* Random sets and complete snapshots: every UID that may exist keeps its membership. */
  for (guint round = 0; round < 2000; round++)
    {
      guint32 uidnext = (guint32) g_test_rand_int_range (1, 60);
      g_autoptr (PgUidSet) random_set = pg_uid_set_new ();
      g_autoptr (GArray) uids = g_array_new (FALSE, FALSE, sizeof (guint32));
      g_autoptr (PgUidSet) compacted = NULL;

      for (guint32 uid = 1; uid < 80; uid++)
        {
          if (g_test_rand_bit ())
            pg_uid_set_add (random_set, uid);
          if (uid < uidnext && g_test_rand_bit ())
            g_array_append_val (uids, uid);
        }
      compacted = pg_uid_set_compact (random_set, (const guint32 *) uids->data, uids->len, uidnext);
      /* At most one more range: one that spans UIDNEXT may split there. */
      g_assert_cmpuint (pg_uid_set_get_n_ranges (compacted), <=,
                        pg_uid_set_get_n_ranges (random_set) + 1);
      for (guint32 uid = 1; uid < 80; uid++)
        {
          gboolean exists = uid >= uidnext;
          for (guint i = 0; i < uids->len && !exists; i++)
            exists = g_array_index (uids, guint32, i) == uid;
          if (exists)
            g_assert_cmpint (pg_uid_set_contains (compacted, uid), ==,
                             pg_uid_set_contains (random_set, uid));
        }
    }
}

static void
pg_test_state_uidset_basic (void)
{
  g_autoptr (PgUidSet) set = pg_uid_set_new ();
  g_autofree gchar *s1 = NULL;
  g_autofree gchar *s2 = NULL;
  g_autofree gchar *s3 = NULL;
  g_autofree gchar *s4 = NULL;
  guint32 first = 0;
  guint32 last = 0;

  g_assert_true (pg_uid_set_is_empty (set));
  s1 = pg_test_state_set_string (set);
  g_assert_cmpstr (s1, ==, "");

  pg_uid_set_add (set, 5);
  pg_uid_set_add (set, 3);
  pg_uid_set_add (set, 4); /* joins 3 and 5 */
  pg_uid_set_add_range (set, 9, 12);
  pg_uid_set_add (set, 7);
  pg_uid_set_add (set, 1);
  s2 = pg_test_state_set_string (set);
  g_assert_cmpstr (s2, ==, "1,3:5,7,9:12");
  g_assert_cmpuint (pg_uid_set_count (set), ==, 9);
  g_assert_cmpuint (pg_uid_set_get_n_ranges (set), ==, 4);
  pg_uid_set_get_range (set, 1, &first, &last);
  g_assert_cmpuint (first, ==, 3);
  g_assert_cmpuint (last, ==, 5);
  g_assert_true (pg_uid_set_contains (set, 4));
  g_assert_false (pg_uid_set_contains (set, 6));
  g_assert_false (pg_uid_set_contains (set, 0));
  g_assert_false (pg_uid_set_contains (set, 13));

  /* A range swallowing several and touching the next. */
  pg_uid_set_add_range (set, 2, 8);
  s3 = pg_test_state_set_string (set);
  g_assert_cmpstr (s3, ==, "1:12");

  pg_uid_set_remove (set, 6);  /* splits */
  pg_uid_set_remove (set, 1);  /* trims the front */
  pg_uid_set_remove (set, 12); /* trims the back */
  pg_uid_set_remove (set, 40); /* absent */
  s4 = pg_test_state_set_string (set);
  g_assert_cmpstr (s4, ==, "2:5,7:11");
  g_assert_cmpuint (pg_uid_set_count (set), ==, 9);
  pg_uid_set_clear (set);
  g_assert_true (pg_uid_set_is_empty (set));
}

static void
pg_test_state_uidset_edges (void)
{
  g_autoptr (PgUidSet) set = pg_uid_set_new ();
  g_autoptr (PgUidSet) parsed = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text = NULL;

  pg_uid_set_add_range (set, 1, G_MAXUINT32);
  g_assert_cmpuint (pg_uid_set_count (set), ==, G_MAXUINT32);
  g_assert_true (pg_uid_set_contains (set, G_MAXUINT32));
  pg_uid_set_remove (set, G_MAXUINT32);
  pg_uid_set_remove (set, 1);
  text = pg_uid_set_to_string (set);
  g_assert_cmpstr (text, ==, "2:4294967294");
  pg_uid_set_add (set, G_MAXUINT32);
  pg_uid_set_add (set, 1);
  g_clear_pointer (&text, g_free);
  text = pg_uid_set_to_string (set);
  g_assert_cmpstr (text, ==, "1:4294967295");
  parsed = pg_uid_set_parse (text, strlen (text), &error);
  g_assert_no_error (error);
  g_assert_true (pg_uid_set_equal (parsed, set));
}

static void
pg_test_state_uidset_parse_bad (void)
{
  static const char *const bad[] = {
    "0",
    "1,0",
    "01",
    "1:01",
    "5:3",
    "3:3",
    "1,1",
    "2,1",
    "1:5,3",
    "1:5,6",
    "1,2",
    "1:5,5",
    ",1",
    "1,",
    "1::2",
    "1:",
    ":1",
    "1 ,2",
    " 1",
    "1 ",
    "a",
    "1,a",
    "-1",
    "+1",
    "4294967296",
    "1:4294967296",
    "99999999999999999999",
    "1,,2",
    "*",
    "1:*",
  };

  for (guint i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (PgUidSet) set = pg_uid_set_parse (bad[i], strlen (bad[i]), &error);

      g_test_message ("bad UID set \"%s\"", bad[i]);
      g_assert_null (set);
      g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      g_assert_true (g_str_has_prefix (error->message, "UID set: "));
    }
}

static void
pg_test_state_uidset_parse_good (void)
{
  static const char *const good[] = {
    "", "1", "1:2", "1,3", "1:5,7,9:12", "4294967295", "1:4294967295", "10,20:30,4294967294"
  };

  for (guint i = 0; i < G_N_ELEMENTS (good); i++)
    {
      gsize len = strlen (good[i]);
      g_autoptr (GError) error = NULL;
      g_autoptr (PgUidSet) set = pg_uid_set_parse (good[i], len, &error);
      g_autofree gchar *back = NULL;

      g_assert_no_error (error);
      g_assert_nonnull (set);
      back = pg_uid_set_to_string (set);
      g_assert_cmpstr (back, ==, good[i]);

      /* Every cut of it either fails cleanly or is another canonical set. */
      for (gsize cut = 0; cut < len; cut++)
        {
          g_autoptr (GError) cut_error = NULL;
          g_autoptr (PgUidSet) part = pg_uid_set_parse (good[i], cut, &cut_error);

          if (part == NULL)
            g_assert_error (cut_error, PG_ERROR, PG_ERROR_PROTOCOL);
          else
            {
              g_autofree gchar *part_text = pg_uid_set_to_string (part);

              g_assert_no_error (cut_error);
              g_assert_cmpmem (part_text, strlen (part_text), good[i], cut);
            }
        }
    }
}

static void
pg_test_state_uidset_parse_limit (void)
{
  gsize len = PG_STATE_MAX_ENCODED + 1;
  g_autofree gchar *big = g_malloc (len);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgUidSet) set = NULL;

  memset (big, '1', len);
  set = pg_uid_set_parse (big, len, &error);
  g_assert_null (set);
  g_assert_error (error, PG_ERROR, PG_ERROR_LIMIT);
}

static gboolean
pg_test_state_collect_cb (guint32 uid, gpointer user_data)
{
  g_array_append_val ((GArray *) user_data, uid);
  return TRUE;
}

/* Compare a set with a GHashTable model over 1..universe. */
static void
pg_test_state_uidset_check_model (const PgUidSet *set, GHashTable *model, guint32 universe)
{
  g_autoptr (GArray) uids = g_array_new (FALSE, FALSE, sizeof (guint32));
  g_autofree gchar *text = pg_uid_set_to_string (set);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgUidSet) parsed = pg_uid_set_parse (text, strlen (text), &error);
  guint32 previous = 0;

  g_assert_cmpuint (pg_uid_set_count (set), ==, g_hash_table_size (model));
  for (guint32 uid = 1; uid <= universe; uid++)
    g_assert_cmpint (pg_uid_set_contains (set, uid), ==,
                     g_hash_table_contains (model, GUINT_TO_POINTER (uid)));
  pg_uid_set_foreach (set, pg_test_state_collect_cb, uids);
  g_assert_cmpuint (uids->len, ==, g_hash_table_size (model));
  for (guint i = 0; i < uids->len; i++)
    {
      guint32 uid = g_array_index (uids, guint32, i);

      g_assert_cmpuint (uid, >, previous);
      g_assert_true (g_hash_table_contains (model, GUINT_TO_POINTER (uid)));
      previous = uid;
    }
  /* Ranges are merged: no two touch. */
  for (guint i = 1; i < pg_uid_set_get_n_ranges (set); i++)
    {
      guint32 f0, l0, f1, l1;

      pg_uid_set_get_range (set, i - 1, &f0, &l0);
      pg_uid_set_get_range (set, i, &f1, &l1);
      g_assert_cmpuint (f0, <=, l0);
      g_assert_cmpuint ((guint64) l0 + 1, <, f1);
    }
  g_assert_no_error (error);
  g_assert_true (pg_uid_set_equal (parsed, set));
}

static void
pg_test_state_uidset_random (void)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (0x5e7);
  const guint32 universe = 300;

  for (guint round = 0; round < 40; round++)
    {
      g_autoptr (PgUidSet) set = pg_uid_set_new ();
      g_autoptr (PgUidSet) other = pg_uid_set_new ();
      g_autoptr (PgUidSet) copy = NULL;
      g_autoptr (GHashTable) model = g_hash_table_new (NULL, NULL);
      g_autoptr (GHashTable) other_model = g_hash_table_new (NULL, NULL);

      for (guint op = 0; op < 400; op++)
        {
          guint32 a = (guint32) g_rand_int_range (rand, 1, (gint32) universe + 1);
          guint32 b = MIN (universe, a + (guint32) g_rand_int_range (rand, 0, 12));

          switch (g_rand_int_range (rand, 0, 4))
            {
            case 0:
              pg_uid_set_add (set, a);
              g_hash_table_add (model, GUINT_TO_POINTER (a));
              break;
            case 1:
              pg_uid_set_add_range (set, a, b);
              for (guint32 u = a; u <= b; u++)
                g_hash_table_add (model, GUINT_TO_POINTER (u));
              break;
            case 2:
              pg_uid_set_remove (set, a);
              g_hash_table_remove (model, GUINT_TO_POINTER (a));
              break;
            default:
              pg_uid_set_add (other, a);
              g_hash_table_add (other_model, GUINT_TO_POINTER (a));
              break;
            }
          if (op % 50 == 0)
            pg_test_state_uidset_check_model (set, model, universe);
        }
      pg_test_state_uidset_check_model (set, model, universe);
      pg_test_state_uidset_check_model (other, other_model, universe);

      copy = pg_uid_set_copy (set);
      g_assert_true (pg_uid_set_equal (copy, set));
      pg_uid_set_union (copy, other);
      {
        GHashTableIter iter;
        gpointer key;

        g_hash_table_iter_init (&iter, other_model);
        while (g_hash_table_iter_next (&iter, &key, NULL))
          g_hash_table_add (model, key);
      }
      pg_test_state_uidset_check_model (copy, model, universe);
    }
}

/* --- the record encoding ------------------------------------------------------------- */

static PgClientState *
pg_test_state_sample (void)
{
  PgClientState *state = pg_client_state_new (1234567, 42, 1767225600);
  g_autoptr (PgUidSet) pending = pg_uid_set_new ();

  pg_uid_set_add_range (state->hidden, 3, 9);
  pg_uid_set_add (state->hidden, 17);
  pg_uid_set_add_range (state->retrieved, 1, 40);
  pg_uid_set_add (pending, 41);
  pg_uid_set_add (pending, 44);
  pg_client_state_set_pending (state, PG_STATE_PENDING_MOVE, "Archive/Old mail 100%", pending);
  return state;
}

/* Set difference by ranges, at every overlap shape, and over the whole UID space. */
static void
pg_test_state_uidset_subtract (void)
{
  static const struct
  {
    const char *set, *other, *want;
  } cases[] = {
    { "1:10", "3:4", "1:2,5:10" },
    { "1:10", "1:10", "" },
    { "1:10", "0", "1:10" },
    { "1:10,20:30", "5:25", "1:4,26:30" },
    { "5", "1:4,6:9", "5" },
    { "1:4294967295", "2:4294967294", "1,4294967295" },
    { "1:3,5:7,9:11", "2,6,10", "1,3,5,7,9,11" },
    { "", "1:5", "" },
    { "3:8", "1:4,7:100", "5:6" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (PgUidSet) set = pg_uid_set_parse (cases[i].set, strlen (cases[i].set), &error);
      g_autoptr (PgUidSet) other = NULL;
      g_autofree gchar *got = NULL;

      g_assert_no_error (error);
      other = strcmp (cases[i].other, "0") == 0
                  ? pg_uid_set_new ()
                  : pg_uid_set_parse (cases[i].other, strlen (cases[i].other), &error);
      g_assert_no_error (error);
      pg_uid_set_subtract (set, other);
      got = pg_uid_set_to_string (set);
      g_assert_cmpstr (got, ==, cases[i].want);
    }
}

/* The three-way merge of concurrent sessions: unions, the earlier first login, and a
 * pending update cleared only by the session that made it. */
static void
pg_test_state_merge (void)
{
  g_autoptr (PgClientState) base = pg_client_state_new (7, 10, 1000);
  g_autoptr (PgClientState) stored = NULL;
  g_autoptr (PgClientState) ours = NULL;
  g_autoptr (PgClientState) merged = NULL;
  g_autoptr (PgClientState) other = NULL;
  g_autoptr (PgUidSet) mine = pg_uid_set_new ();
  g_autoptr (PgUidSet) theirs = pg_uid_set_new ();
  g_autofree gchar *text = NULL;

  pg_uid_set_add (base->hidden, 1);
  pg_uid_set_add (mine, 5);
  pg_uid_set_add (theirs, 6);
  /* Both loaded `base`; we recorded pending 5, they 6 and hid 2. */
  pg_client_state_set_pending (base, PG_STATE_PENDING_EXPUNGE, NULL, mine);
  ours = pg_client_state_copy (base);
  pg_uid_set_add (ours->hidden, 3);
  pg_uid_set_add (ours->retrieved, 4);
  stored = pg_client_state_copy (base);
  stored->first_uidnext = 8;
  stored->first_login = 900;
  pg_uid_set_add (stored->hidden, 2);
  pg_uid_set_union (theirs, mine);
  pg_client_state_set_pending (stored, PG_STATE_PENDING_EXPUNGE, NULL, theirs);
  /* We finished ours: pending 5 is cleared, 6 (theirs) stays. */
  pg_client_state_clear_pending (ours);
  merged = pg_client_state_merge (stored, base, ours);
  text = pg_uid_set_to_string (merged->hidden);
  g_assert_cmpstr (text, ==, "1:3");
  g_clear_pointer (&text, g_free);
  text = pg_uid_set_to_string (merged->retrieved);
  g_assert_cmpstr (text, ==, "4");
  g_clear_pointer (&text, g_free);
  g_assert_cmpint (merged->pending, ==, PG_STATE_PENDING_EXPUNGE);
  text = pg_uid_set_to_string (merged->pending_uids);
  g_assert_cmpstr (text, ==, "6");
  g_assert_cmpuint (merged->first_uidnext, ==, 8);
  g_assert_cmpint (merged->first_login, ==, 900);
  /* What this session compacted away (UIDs that no longer exist) stays away; what another
   * session hid meanwhile (20) is kept. */
  {
    g_autoptr (PgClientState) b = pg_client_state_new (7, 10, 1000);
    g_autoptr (PgClientState) o = NULL;
    g_autoptr (PgClientState) st = NULL;
    g_autoptr (PgClientState) m = NULL;
    g_autofree gchar *hidden = NULL;

    pg_uid_set_add_range (b->hidden, 1, 10);
    o = pg_client_state_copy (b);
    pg_uid_set_clear (o->hidden);
    pg_uid_set_add (o->hidden, 5);
    st = pg_client_state_copy (b);
    pg_uid_set_add (st->hidden, 20);
    m = pg_client_state_merge (st, b, o);
    hidden = pg_uid_set_to_string (m->hidden);
    g_assert_cmpstr (hidden, ==, "5,20");
  }
  /* Nothing stored: ours. Another UIDVALIDITY stored: ours too. */
  g_clear_pointer (&merged, pg_client_state_free);
  merged = pg_client_state_merge (NULL, base, ours);
  g_assert_true (pg_client_state_equal (merged, ours));
  other = pg_client_state_new (8, 1, 1);
  pg_uid_set_add (other->hidden, 9);
  g_clear_pointer (&merged, pg_client_state_free);
  merged = pg_client_state_merge (other, base, ours);
  g_assert_true (pg_client_state_equal (merged, ours));
}

static PgStateKey *
pg_test_state_sample_key (void)
{
  return pg_state_key_new ("alice@example.com", "INBOX", "lap top%\n\xc3\xa9");
}

static GBytes *
pg_test_state_sample_bytes (void)
{
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();

  return pg_client_state_encode (state, key);
}

static void
pg_test_state_encode_roundtrip (void)
{
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgClientState) plain = pg_client_state_new (7, 0, 0);
  g_autoptr (PgStateKey) plain_key = pg_state_key_new ("bob", "INBOX", "");
  g_autoptr (PgClientState) expunge = pg_client_state_copy (state);
  PgClientState *cases[] = { state, plain, expunge };
  PgStateKey *keys[] = { key, plain_key, key };
  g_autoptr (PgUidSet) uids = pg_uid_set_new ();

  pg_uid_set_add (uids, 9);
  pg_client_state_set_pending (expunge, PG_STATE_PENDING_EXPUNGE, NULL, uids);
  g_assert_false (pg_client_state_equal (expunge, state));

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GBytes) bytes = pg_client_state_encode (cases[i], keys[i]);
      g_autoptr (GBytes) again = NULL;
      g_autoptr (GError) error = NULL;
      g_autoptr (PgStateKey) got_key = NULL;
      g_autoptr (PgClientState) got = NULL;
      gsize len = 0;
      const char *data = g_bytes_get_data (bytes, &len);

      g_test_message ("record:\n%.*s", (int) len, data);
      got = pg_client_state_decode (data, len, "test", &got_key, &error);
      g_assert_no_error (error);
      g_assert_nonnull (got);
      g_assert_true (pg_client_state_equal (got, cases[i]));
      g_assert_true (pg_state_key_equal (got_key, keys[i]));
      again = pg_client_state_encode (got, got_key);
      g_assert_true (g_bytes_equal (again, bytes));
    }

  {
    g_autoptr (GBytes) bytes = pg_client_state_encode (plain, plain_key);

    g_assert_cmpmem (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes),
                     "popgate-state 1\nuser bob\nmailbox INBOX\ntag\nuidvalidity 7\n"
                     "first-uidnext 0\nfirst-login 0\nhidden\nretrieved\nend 5c9e5c0b\n",
                     strlen ("popgate-state 1\nuser bob\nmailbox INBOX\ntag\nuidvalidity 7\n"
                             "first-uidnext 0\nfirst-login 0\nhidden\nretrieved\nend 5c9e5c0b\n"));
  }

  pg_client_state_clear_pending (expunge);
  g_assert_cmpint (expunge->pending, ==, PG_STATE_PENDING_NONE);
  g_assert_true (pg_uid_set_is_empty (expunge->pending_uids));
}

/* Every proper prefix of a record is detected, with the source named. */
static void
pg_test_state_encode_truncated (void)
{
  g_autoptr (GBytes) bytes = pg_test_state_sample_bytes ();
  gsize len = 0;
  const char *data = g_bytes_get_data (bytes, &len);

  for (gsize cut = 0; cut < len; cut++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (PgClientState) got
          = pg_client_state_decode (data, cut, "state file /x", NULL, &error);

      g_assert_null (got);
      g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      g_assert_true (g_str_has_prefix (error->message, "state file /x: "));
      if (cut == 0 || data[cut - 1] != '\n')
        g_assert_nonnull (strstr (error->message, "truncated"));
    }
}

/* Every single changed byte is caught (CRC-32 catches all of them). */
static void
pg_test_state_encode_bitflip (void)
{
  g_autoptr (GBytes) bytes = pg_test_state_sample_bytes ();
  gsize len = 0;
  g_autofree gchar *copy = g_bytes_unref_to_data (g_bytes_ref (bytes), &len);

  for (gsize i = 0; i < len; i++)
    for (guint bit = 0; bit < 8; bit++)
      {
        g_autoptr (GError) error = NULL;
        g_autoptr (PgClientState) got = NULL;

        copy[i] ^= (char) (1u << bit);
        got = pg_client_state_decode (copy, len, "test", NULL, &error);
        copy[i] ^= (char) (1u << bit);
        g_assert_null (got);
        g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      }
}

static guint32
pg_test_state_crc32 (const char *data, gsize len)
{
  guint32 crc = 0xffffffffu;

  for (gsize i = 0; i < len; i++)
    {
      crc ^= (guint8) data[i];
      for (guint k = 0; k < 8; k++)
        crc = (crc & 1u) ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
    }
  return crc ^ 0xffffffffu;
}

/* Records with a valid checksum but wrong content: each refused, saying what is wrong. */
static void
pg_test_state_encode_corrupt (void)
{
  static const struct
  {
    const char *body;
    const char *message;
  } cases[] = {
    { "popgate-state 3\n", "unsupported version" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\n",
      "\"ledger\" expected, the record ends" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger md5\n",
      "ledger: unknown kind" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\nl 5 00112233445566778899aabb\n"
      "l 5 00112233445566778899aabb\n",
      "UIDs not ascending" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\nl 5 00112233445566778899AABB\n",
      "not lowercase hex" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\nl 5 00112233445566778899aa\n",
      "not 24 hex digits" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\nl 5 00112233445566778899aabb 5:1\n",
      "the default" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\nl 5 00112233445566778899aabb 7\n",
      "not UID:UIDVALIDITY" },
    { "popgate-state 2\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\nl 0 00112233445566778899aabb\n",
      "0 is no UID" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nledger digest\n",
      "\"pending\" expected" },
    { "popgate-stat 1\n", "\"popgate-state\" expected" },
    { "popgate-state 1\nuser a\n", "\"mailbox\" expected, the record ends" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 0\n", "uidvalidity 0" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 4294967296\n", "out of range" },
    { "popgate-state 1\nuser a b\n", "unescaped byte 0x20" },
    { "popgate-state 1\nuser a%41\n", "needs none" },
    { "popgate-state 1\nuser a%4\n", "bad %-escape" },
    { "popgate-state 1\nuser a%00\n", "needs none" },
    { "popgate-state 1\nuser \n", "empty value" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 01\n",
      "not a canonical number" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nretrieved\nhidden\n",
      "\"hidden\" expected, got \"retrieved\"" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden 5:3\nretrieved\n",
      "hidden: UID set: range not ascending" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\npending delete 1\n",
      "unknown action" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\npending move: 1\n",
      "unknown action" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\npending expunge\n",
      "no UID set" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\nhidden\n",
      "\"pending\" expected" },
    { "popgate-state 1\nuser a\nmailbox INBOX\ntag\nuidvalidity 1\nfirst-uidnext 1\n"
      "first-login 0\nhidden\nretrieved\npending expunge 1\nhidden\n",
      "unexpected line" },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *record
          = g_strdup_printf ("%send %08x\n", cases[i].body,
                             pg_test_state_crc32 (cases[i].body, strlen (cases[i].body)));
      g_autoptr (GError) error = NULL;
      g_autoptr (PgClientState) got
          = pg_client_state_decode (record, strlen (record), "src", NULL, &error);

      g_test_message ("case %u: %s", i, error != NULL ? error->message : "(accepted)");
      g_assert_null (got);
      g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      g_assert_true (g_str_has_prefix (error->message, "src: "));
      g_assert_nonnull (strstr (error->message, cases[i].message));
    }

  /* Checksum line faults, and data after it. */
  {
    static const char *const raw[] = {
      "popgate-state 1\nend 0000000\n",
      "popgate-state 1\nend 0000000G\n",
      "popgate-state 1\nend 0000000A\n",
      "popgate-state 1\nend 00000000\n",
      "popgate-state 1\nend 00000000",
      "popgate-state 1\nend 00000000\nx\n",
      "\n",
      "end 00000000\n",
    };

    for (guint i = 0; i < G_N_ELEMENTS (raw); i++)
      {
        g_autoptr (GError) error = NULL;
        g_autoptr (PgClientState) got
            = pg_client_state_decode (raw[i], strlen (raw[i]), "src", NULL, &error);

        g_assert_null (got);
        g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
      }
  }
}

/* A million-UID history stays small: all retrieved, every thousandth hidden, a pending
 * move of a few. */
static void
pg_test_state_encode_million (void)
{
  g_autoptr (PgClientState) state = pg_client_state_new (1, 1, 1767225600);
  g_autoptr (PgStateKey) key = pg_state_key_new ("alice@example.com", "INBOX", "laptop");
  g_autoptr (GBytes) bytes = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgClientState) got = NULL;

  for (guint32 uid = 1; uid <= 1000000; uid++)
    {
      pg_uid_set_add (state->retrieved, uid);
      if (uid % 1000 == 0)
        pg_uid_set_add (state->hidden, uid);
    }
  g_assert_cmpuint (pg_uid_set_count (state->retrieved), ==, 1000000);
  bytes = pg_client_state_encode (state, key);
  g_test_message ("a million UIDs encode in %zu bytes", g_bytes_get_size (bytes));
  /* 1000 hidden UIDs of up to 7 digits and a comma, plus ~150 bytes of the rest. */
  g_assert_cmpuint (g_bytes_get_size (bytes), <, 8 * 1024 + 256);
  got = pg_client_state_decode (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes), "m", NULL,
                                &error);
  g_assert_no_error (error);
  g_assert_true (pg_client_state_equal (got, state));
}

static void
pg_test_state_decode_limit (void)
{
  gsize len = PG_STATE_MAX_ENCODED + 1;
  g_autofree gchar *big = g_malloc0 (len);
  g_autoptr (GError) error = NULL;
  g_autoptr (PgClientState) got = pg_client_state_decode (big, len, "big", NULL, &error);

  g_assert_null (got);
  g_assert_error (error, PG_ERROR, PG_ERROR_LIMIT);
}

static void
pg_test_state_metadata_entry (void)
{
  static const struct
  {
    const char *tag;
    const char *entry;
  } cases[] = {
    { "laptop", "/private/vendor/popgate/laptop" },
    { "phone-2.a_b", "/private/vendor/popgate/phone-2.a_b" },
    { "", "/private/vendor/popgate/=" },
    { "Laptop", "/private/vendor/popgate/=4c6170746f70" },
    { "a/b*%", "/private/vendor/popgate/=612f622a25" },
    { "=", "/private/vendor/popgate/=3d" },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree gchar *entry = pg_state_metadata_entry (cases[i].tag);

      g_assert_cmpstr (entry, ==, cases[i].entry);
    }
}

/* --- the file store ------------------------------------------------------------------ */

typedef struct
{
  gchar *tmp;  /* owned: the test's temporary directory */
  gchar *path; /* owned: [state] path inside it, created by the store */
} PgTestStateFixture;

static void
pg_test_state_fixture_setup (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  fx->tmp = g_dir_make_tmp ("popgate-state-XXXXXX", &error);
  g_assert_no_error (error);
  fx->path = g_build_filename (fx->tmp, "var", "state", NULL);
}

static void
pg_test_state_rm_rf (const char *path)
{
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  const char *name;

  if (dir != NULL)
    while ((name = g_dir_read_name (dir)) != NULL)
      {
        g_autofree gchar *child = g_build_filename (path, name, NULL);

        pg_test_state_rm_rf (child);
      }
  g_assert_cmpint (g_remove (path), ==, 0);
}

static void
pg_test_state_fixture_teardown (PgTestStateFixture *fx, gconstpointer data)
{
  pg_test_state_rm_rf (fx->tmp);
  g_free (fx->tmp);
  g_free (fx->path);
}

typedef struct
{
  GAsyncResult *result; /* owned */
} PgTestStateWait;

static void
pg_test_state_done_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PgTestStateWait *wait = user_data;

  wait->result = g_object_ref (result);
}

static gboolean
pg_test_state_watchdog_cb (gpointer user_data)
{
  g_error ("state store operation did not complete in time");
  return G_SOURCE_REMOVE;
}

/* Iterate the main context until the operation completes, at most 10 s. */
static GAsyncResult *
pg_test_state_wait (PgTestStateWait *wait)
{
  guint watchdog = g_timeout_add_seconds (10, pg_test_state_watchdog_cb, NULL);

  while (wait->result == NULL)
    g_main_context_iteration (NULL, TRUE);
  g_source_remove (watchdog);
  return wait->result;
}

static gboolean
pg_test_state_load_on (PgStateStore *store, PgUpstream *upstream, const PgStateKey *key,
                       guint32 uidvalidity, PgStateLoadStatus *out_status,
                       PgClientState **out_state, GError **error)
{
  PgTestStateWait wait = { NULL };
  g_autoptr (GAsyncResult) result = NULL;

  pg_state_store_load_async (store, upstream, key, uidvalidity, NULL, pg_test_state_done_cb, &wait);
  result = pg_test_state_wait (&wait);
  return pg_state_store_load_finish (store, result, out_status, out_state, error);
}

static gboolean
pg_test_state_load (PgStateStore *store, const PgStateKey *key, guint32 uidvalidity,
                    PgStateLoadStatus *out_status, PgClientState **out_state, GError **error)
{
  return pg_test_state_load_on (store, NULL, key, uidvalidity, out_status, out_state, error);
}

static gboolean
pg_test_state_save_on (PgStateStore *store, PgUpstream *upstream, const PgStateKey *key,
                       const PgClientState *state, GError **error)
{
  PgTestStateWait wait = { NULL };
  g_autoptr (GAsyncResult) result = NULL;

  pg_state_store_save_async (store, upstream, key, state, NULL, pg_test_state_done_cb, &wait);
  result = pg_test_state_wait (&wait);
  return pg_state_store_save_finish (store, result, error);
}

static gboolean
pg_test_state_save (PgStateStore *store, const PgStateKey *key, const PgClientState *state,
                    GError **error)
{
  return pg_test_state_save_on (store, NULL, key, state, error);
}

static void
pg_test_state_file_roundtrip (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = pg_state_store_new_file (fx->path, &error);
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgStateKey) other_tag = pg_state_key_new ("alice@example.com", "INBOX", "phone");
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgClientState) got = NULL;
  g_autofree gchar *file = NULL;
  g_autofree gchar *base = NULL;
  PgStateLoadStatus status = PG_STATE_LOAD_FOUND;
  GStatBuf st;

  g_assert_no_error (error);
  g_assert_cmpint (pg_state_store_get_backend (store), ==, PG_STATE_BACKEND_FILE);
  g_assert_cmpint (g_stat (fx->path, &st), ==, 0);
  g_assert_cmphex (st.st_mode & 0777, ==, 0700);

  /* Nothing stored yet. */
  g_assert_true (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_NEW);
  g_assert_null (got);

  g_assert_true (pg_test_state_save (store, key, state, &error));
  g_assert_no_error (error);
  file = pg_state_store_get_file_path (store, key);
  base = g_path_get_basename (file);
  g_assert_cmpuint (strlen (base), ==, 64 + strlen (".state"));
  g_assert_cmpint (g_stat (file, &st), ==, 0);
  g_assert_cmphex (st.st_mode & 0777, ==, 0600);

  /* A new store instance, as after a restart. */
  g_clear_object (&store);
  store = pg_state_store_new_file (fx->path, &error);
  g_assert_no_error (error);
  g_assert_true (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_FOUND);
  g_assert_true (pg_client_state_equal (got, state));
  g_clear_pointer (&got, pg_client_state_free);

  /* Overwrite: QUIT done, the pending update cleared. */
  pg_client_state_clear_pending (state);
  pg_uid_set_add_range (state->hidden, 41, 44);
  g_assert_true (pg_test_state_save (store, key, state, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_cmpint (status, ==, PG_STATE_LOAD_FOUND);
  g_assert_true (pg_client_state_equal (got, state));
  g_clear_pointer (&got, pg_client_state_free);
  g_assert_cmpint (g_stat (file, &st), ==, 0);
  g_assert_cmphex (st.st_mode & 0777, ==, 0600);

  /* Another tag is another client. */
  g_assert_true (pg_test_state_load (store, other_tag, state->uidvalidity, &status, &got, &error));
  g_assert_cmpint (status, ==, PG_STATE_LOAD_NEW);
  g_assert_null (got);

  /* The mailbox was recreated: a distinct result, the old state handed back. */
  g_assert_true (pg_test_state_load (store, key, state->uidvalidity + 1, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_UIDVALIDITY_CHANGED);
  g_assert_nonnull (got);
  g_assert_cmpuint (got->uidvalidity, ==, state->uidvalidity);
}

static void
pg_test_state_file_corrupt (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = pg_state_store_new_file (fx->path, &error);
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgStateKey) bob = pg_state_key_new ("bob", "INBOX", "");
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgClientState) got = NULL;
  g_autofree gchar *file = NULL;
  g_autofree gchar *bob_file = NULL;
  g_autofree gchar *contents = NULL;
  gsize len = 0;
  PgStateLoadStatus status = PG_STATE_LOAD_NEW;

  g_assert_no_error (error);
  g_assert_true (pg_test_state_save (store, key, state, &error));
  g_assert_no_error (error);
  file = pg_state_store_get_file_path (store, key);
  g_assert_true (g_file_get_contents (file, &contents, &len, &error));

  /* Cut short, as by a crash in a writer that was not crash-safe. */
  g_assert_true (g_file_set_contents (file, contents, (gssize) len / 2, &error));
  g_assert_false (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_null (got);
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, file));
  g_assert_nonnull (strstr (error->message, "truncated"));
  g_clear_error (&error);

  /* Empty. */
  g_assert_true (g_file_set_contents (file, "", 0, &error));
  g_assert_false (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, file));
  g_clear_error (&error);

  /* Bit rot in the middle. */
  contents[len / 2] ^= 0x01;
  g_assert_true (g_file_set_contents (file, contents, (gssize) len, &error));
  g_assert_false (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, "MAC mismatch"));
  g_clear_error (&error);
  contents[len / 2] ^= 0x01;

  /* Alice's record under Bob's name: the key inside is checked. */
  bob_file = pg_state_store_get_file_path (store, bob);
  g_assert_true (g_file_set_contents (bob_file, contents, (gssize) len, &error));
  g_assert_false (pg_test_state_load (store, bob, state->uidvalidity, &status, &got, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, "belongs to user=alice@example.com"));
  g_clear_error (&error);

  /* Too large to be a record. */
  {
    g_autofree gchar *big = g_malloc0 (PG_STATE_MAX_ENCODED + 1);

    g_assert_true (g_file_set_contents (file, big, PG_STATE_MAX_ENCODED + 1, &error));
    g_assert_false (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_LIMIT);
    g_clear_error (&error);
  }

  /* Writing again repairs it. */
  g_assert_true (pg_test_state_save (store, key, state, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_FOUND);
}

/* Issue 19 item 9: a record forged by someone who can write the file but not read the key
 * is refused, whatever its checksum; a legacy (unkeyed) record older than the key is read. */
static void
pg_test_state_file_forged (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = pg_state_store_new_file (fx->path, &error);
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgClientState) got = NULL;
  g_autoptr (GBytes) forged = NULL;
  g_autofree gchar *file = NULL;
  g_autofree gchar *key_file = g_build_filename (fx->path, "state.key", NULL);
  PgStateLoadStatus status = PG_STATE_LOAD_NEW;
  GStatBuf st;

  g_assert_no_error (error);
  /* The key: made at the first start, 32 bytes, 0600. */
  g_assert_cmpint (g_stat (key_file, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  g_assert_cmpint (st.st_size, ==, 32);
  file = pg_state_store_get_file_path (store, key);

  /* "pending expunge 1:100" with a valid CRC-32: the old format's "checksum". */
  pg_client_state_set_pending (state, PG_STATE_PENDING_EXPUNGE, NULL, NULL);
  {
    g_autoptr (PgUidSet) all = pg_uid_set_new ();
    pg_uid_set_add_range (all, 1, 100);
    pg_client_state_set_pending (state, PG_STATE_PENDING_EXPUNGE, NULL, all);
  }
  forged = pg_client_state_encode (state, key);
  g_assert_true (g_file_set_contents (file, g_bytes_get_data (forged, NULL),
                                      (gssize) g_bytes_get_size (forged), &error));
  g_assert_false (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_null (got);
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, "without a MAC"));
  g_clear_error (&error);

  /* A keyed record from another key (another installation) does not pass either. */
  {
    g_autoptr (GBytes) other_key = g_bytes_new_static ("0123456789abcdef0123456789abcdef", 32);
    g_autoptr (GBytes) other = pg_client_state_encode_keyed (state, key, other_key);
    g_assert_true (g_file_set_contents (file, g_bytes_get_data (other, NULL),
                                        (gssize) g_bytes_get_size (other), &error));
    g_assert_false (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
    g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
    g_assert_nonnull (strstr (error->message, "MAC mismatch"));
    g_clear_error (&error);
  }

  /* Legacy: the same unkeyed record, written before the key existed, is read. */
  g_assert_true (g_file_set_contents (file, g_bytes_get_data (forged, NULL),
                                      (gssize) g_bytes_get_size (forged), &error));
  {
    struct utimbuf old = { st.st_mtime - 3600, st.st_mtime - 3600 };
    g_assert_cmpint (g_utime (file, &old), ==, 0);
  }
  g_assert_true (pg_test_state_load (store, key, state->uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_FOUND);
  g_assert_true (pg_client_state_equal (got, state));
}

/* A state directory that others can write, or that belongs to someone else, is refused
 * (at start and by --check); a missing one passes the check (it is created 0700). */
static void
pg_test_state_file_unsafe_dir (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = NULL;
  g_autofree gchar *missing = g_build_filename (fx->tmp, "not-yet", NULL);

  g_assert_true (pg_state_store_check_dir (missing, FALSE, &error));
  g_assert_no_error (error);
  g_assert_cmpint (g_mkdir_with_parents (fx->path, 0700), ==, 0);
  g_assert_cmpint (g_chmod (fx->path, 0777), ==, 0);
  store = pg_state_store_new_file (fx->path, &error);
  g_assert_null (store);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  g_assert_nonnull (strstr (error->message, "writable by group or others"));
  g_clear_error (&error);
  g_assert_false (pg_state_store_check_dir (fx->path, FALSE, &error));
  g_clear_error (&error);
  g_assert_cmpint (g_chmod (fx->path, 0720), ==, 0);
  g_assert_false (pg_state_store_check_dir (fx->path, FALSE, &error));
  g_clear_error (&error);
  g_assert_cmpint (g_chmod (fx->path, 0700), ==, 0);
  if (geteuid () == 0)
    {
      /* Another owner (root can make one; as a user this part cannot be set up). */
      g_assert_cmpint (chown (fx->path, 65534, 65534), ==, 0);
      g_assert_false (pg_state_store_check_dir (fx->path, FALSE, &error));
      g_assert_nonnull (strstr (error->message, "not by the service user"));
      g_clear_error (&error);
      g_assert_cmpint (chown (fx->path, 0, 0), ==, 0);
    }
  g_assert_true (pg_state_store_check_dir (fx->path, FALSE, &error));
  g_assert_no_error (error);
}

/* The layout systemd's DynamicUser=yes makes (/var/lib/popgate -> private/popgate) is a
 * usable state path: the checks apply to the directory the symlink names. */
static void
pg_test_state_file_symlinked_dir (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = NULL;
  g_autofree gchar *private = g_build_filename (fx->tmp, "var", "private", NULL);
  g_autofree gchar *target = g_build_filename (private, "popgate", NULL);

  g_assert_cmpint (g_mkdir_with_parents (target, 0700), ==, 0);
  g_assert_cmpint (g_chmod (private, 0700), ==, 0);
  g_assert_cmpint (symlink ("private/popgate", fx->path), ==, 0);
  g_assert_true (pg_state_store_check_dir (fx->path, FALSE, &error));
  g_assert_no_error (error);
  store = pg_state_store_new_file (fx->path, &error);
  g_assert_no_error (error);
  g_assert_nonnull (store);
  g_clear_object (&store);
  /* The target's own mode still counts. */
  g_assert_cmpint (g_chmod (target, 0777), ==, 0);
  g_assert_false (pg_state_store_check_dir (fx->path, FALSE, &error));
  g_assert_nonnull (strstr (error->message, "writable by group or others"));
}

/* Temp files a crash left in the middle of a save are removed at start; a fresh one (a
 * save in progress in another process) and anything else are left alone. */
static void
pg_test_state_file_stale_temp (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgStateStore) store = NULL;
  g_autofree gchar *hash = g_strnfill (64, 'a');
  g_autofree gchar *stale = NULL;
  g_autofree gchar *fresh = NULL;
  g_autofree gchar *other = g_build_filename (fx->path, "notes.txt.ABCDEF", NULL);
  struct utimbuf old;

  g_assert_cmpint (g_mkdir_with_parents (fx->path, 0700), ==, 0);
  stale = g_strdup_printf ("%s/%s.state.Q1w2E3", fx->path, hash);
  fresh = g_strdup_printf ("%s/%s.state.R4t5Y6", fx->path, hash);
  g_assert_true (g_file_set_contents (stale, "half", 4, &error));
  g_assert_true (g_file_set_contents (fresh, "half", 4, &error));
  g_assert_true (g_file_set_contents (other, "x", 1, &error));
  old.actime = old.modtime = (time_t) (g_get_real_time () / G_USEC_PER_SEC - 3 * 3600);
  g_assert_cmpint (g_utime (stale, &old), ==, 0);
  g_assert_cmpint (g_utime (other, &old), ==, 0);
  store = pg_state_store_new_file (fx->path, &error);
  g_assert_no_error (error);
  g_assert_false (g_file_test (stale, G_FILE_TEST_EXISTS));
  g_assert_true (g_file_test (fresh, G_FILE_TEST_EXISTS));
  g_assert_true (g_file_test (other, G_FILE_TEST_EXISTS));
}

static void
pg_test_state_file_bad_path (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *file = g_build_filename (fx->tmp, "plain-file", NULL);
  g_autofree gchar *below = g_build_filename (file, "state", NULL);
  g_autoptr (PgStateStore) store = NULL;

  g_assert_true (g_file_set_contents (file, "x", 1, &error));
  store = pg_state_store_new_file (file, &error);
  g_assert_null (store);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
  g_assert_nonnull (strstr (error->message, file));
  g_clear_error (&error);
  store = pg_state_store_new_file (below, &error);
  g_assert_null (store);
  g_assert_error (error, PG_ERROR, PG_ERROR_CONFIG);
}

static void
pg_test_state_file_from_config (PgTestStateFixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text = g_strdup_printf ("[upstream]\nhost = 127.0.0.1\n[pop3]\nlisten = "
                                            "127.0.0.1:1110\n[state]\nbackend = file\npath = %s\n",
                                            fx->path);
  g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "test", &error);
  g_autoptr (PgStateStore) store = NULL;

  g_assert_no_error (error);
  store = pg_state_store_new (config, &error);
  g_assert_no_error (error);
  g_assert_cmpint (pg_state_store_get_backend (store), ==, PG_STATE_BACKEND_FILE);
  g_assert_true (g_file_test (fx->path, G_FILE_TEST_IS_DIR));
}

/* --- the imap-metadata store ----------------------------------------------------------
 * Against a real Dovecot with METADATA (tests/pg-test-dovecot.h), one per test, checked
 * with the synchronous IMAP client; the refusal Dovecot does not make from a real Cyrus
 * (tests/pg-test-cyrus.h) and, with its exact text, from the scripted peer
 * (tests/pg-test-peer.h), which also plays the replies no server sends. */

#define PG_TEST_STATE_USER "alice@example.com"
#define PG_TEST_STATE_PASSWORD "st4te-p\"ss w0rd"
/* A server with METADATA that does not advertise it: any command popgate sent anyway would
 * work, and the checker would see what it stored. */
#define PG_TEST_STATE_NO_METADATA_CAPABILITY "IMAP4rev1 LITERAL+ UIDPLUS"

typedef struct
{
  PgTestDovecot *dovecot; /* owned */
} PgTestStateDovecot;

static void
pg_test_state_dovecot_setup (PgTestStateDovecot *fx, gconstpointer data)
{
  static const char message[] = "Subject: x\r\n\r\nx\r\n";
  g_autoptr (GError) error = NULL;

  /* No skip: a missing Dovecot fails here, saying what is missing. */
  fx->dovecot = pg_test_dovecot_new (data, &error);
  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (
      pg_test_dovecot_add_user (fx->dovecot, PG_TEST_STATE_USER, PG_TEST_STATE_PASSWORD, &error),
      error);
  PG_TEST_ASSERT_OK (pg_test_dovecot_start (fx->dovecot, &error), error);
  /* The user's INBOX exists from the first delivery on. */
  PG_TEST_ASSERT_OK (pg_test_dovecot_append (fx->dovecot, PG_TEST_STATE_USER, "INBOX", message,
                                             sizeof message - 1, &error),
                     error);
}

static void
pg_test_state_dovecot_teardown (PgTestStateDovecot *fx, gconstpointer data)
{
  g_clear_pointer (&fx->dovecot, pg_test_dovecot_free);
}

/* A connected upstream on port, logged in (when user is not NULL) with INBOX selected;
 * *out_uidvalidity gets INBOX's. */
static PgUpstream *
pg_test_state_upstream (guint16 port, const char *user, guint32 *out_uidvalidity)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *text = g_strdup_printf (
      "[pop3]\nlisten = 127.0.0.1:1110\n[upstream]\nhost = 127.0.0.1\nport = %u\ntls = none\n"
      "[state]\nbackend = imap-metadata\n",
      port);
  g_autoptr (PgConfig) config = pg_config_load_data (text, strlen (text), "test", &error);
  g_autoptr (PgUpstream) upstream = NULL;
  PgUpstreamMailbox mailbox = { 0 };

  g_assert_no_error (error);
  upstream = pg_upstream_new (config, &config->upstream, 0);
  {
    PgTestStateWait wait = { NULL };
    g_autoptr (GAsyncResult) result = NULL;

    pg_upstream_connect_async (upstream, NULL, pg_test_state_done_cb, &wait);
    result = pg_test_state_wait (&wait);
    PG_TEST_ASSERT_OK (pg_upstream_connect_finish (upstream, result, &error), error);
  }
  if (user != NULL)
    {
      PgTestStateWait wait = { NULL };
      g_autoptr (GAsyncResult) result = NULL;

      pg_upstream_login_async (upstream, user, PG_TEST_STATE_PASSWORD, NULL, pg_test_state_done_cb,
                               &wait);
      result = pg_test_state_wait (&wait);
      PG_TEST_ASSERT_OK (pg_upstream_login_finish (upstream, result, &error), error);
    }
  {
    PgTestStateWait wait = { NULL };
    g_autoptr (GAsyncResult) result = NULL;

    pg_upstream_select_async (upstream, "INBOX", FALSE, NULL, pg_test_state_done_cb, &wait);
    result = pg_test_state_wait (&wait);
    PG_TEST_ASSERT_OK (pg_upstream_select_finish (upstream, result, &mailbox, &error), error);
  }
  *out_uidvalidity = mailbox.uidvalidity;
  return g_steal_pointer (&upstream);
}

/* The synchronous IMAP client, logged in as the test's user. */
static PgTestImap *
pg_test_state_checker (PgTestDovecot *dovecot)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestImap) imap
      = pg_test_imap_connect (dovecot->host, dovecot->imap_port, NULL, &error);

  g_assert_no_error (error);
  PG_TEST_ASSERT_OK (pg_test_imap_login (imap, PG_TEST_STATE_USER, PG_TEST_STATE_PASSWORD, &error),
                     error);
  return g_steal_pointer (&imap);
}

/* What the server holds under entry and below it: the whole GETMETADATA (DEPTH 1) response. */
static gchar *
pg_test_state_stored (PgTestImap *imap, const char *entry)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *command = g_strdup_printf ("GETMETADATA (DEPTH 1) INBOX %s", entry);
  gchar *reply = pg_test_imap_command (imap, command, &error);

  g_assert_no_error (error);
  g_test_message ("%s: %s", command, reply);
  return reply;
}

static void
pg_test_state_metadata_shared (PgTestStateDovecot *fx, gconstpointer data)
{
  guint32 uidvalidity = 0;
  guint32 uidvalidity_b = 0;
  g_autoptr (PgUpstream) up_a
      = pg_test_state_upstream (fx->dovecot->imap_port, PG_TEST_STATE_USER, &uidvalidity);
  g_autoptr (PgUpstream) up_b
      = pg_test_state_upstream (fx->dovecot->imap_port, PG_TEST_STATE_USER, &uidvalidity_b);
  g_autoptr (PgTestImap) checker = pg_test_state_checker (fx->dovecot);
  g_autoptr (PgStateStore) store_a = pg_state_store_new_imap_metadata ();
  g_autoptr (PgStateStore) store_b = pg_state_store_new_imap_metadata ();
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgStateKey) phone = pg_state_key_new ("alice@example.com", "INBOX", "phone");
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgClientState) got = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *entry = pg_state_metadata_entry (key->tag);
  g_autofree gchar *stored = NULL;
  g_autoptr (GBytes) encoded = NULL;
  g_autofree gchar *record = NULL;
  PgStateLoadStatus status = PG_STATE_LOAD_FOUND;

  g_assert_cmpuint (uidvalidity, !=, 0);
  g_assert_cmpuint (uidvalidity_b, ==, uidvalidity);
  g_assert_cmpint (pg_state_store_get_backend (store_a), ==, PG_STATE_BACKEND_IMAP_METADATA);
  g_assert_null (pg_state_store_get_file_path (store_a, key));
  state->uidvalidity = uidvalidity;

  g_assert_true (pg_test_state_load_on (store_a, up_a, key, uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_NEW);
  g_assert_null (got);

  /* Saved through one instance: on the server, as one entry holding the record. */
  g_assert_true (pg_test_state_save_on (store_a, up_a, key, state, &error));
  g_assert_no_error (error);
  encoded = pg_client_state_encode (state, key);
  stored = pg_test_state_stored (checker, entry);
  g_assert_cmpuint (pg_test_count (stored, "/private/vendor/popgate/"), ==, 1);
  g_assert_nonnull (strstr (stored, entry));
  record = g_strndup (g_bytes_get_data (encoded, NULL), g_bytes_get_size (encoded));
  g_assert_nonnull (strstr (stored, record));
  /* ... and read through the other. */
  g_assert_true (pg_test_state_load_on (store_b, up_b, key, uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_FOUND);
  g_assert_true (pg_client_state_equal (got, state));
  g_clear_pointer (&got, pg_client_state_free);

  /* And back. */
  pg_client_state_clear_pending (state);
  pg_uid_set_add (state->hidden, 99);
  g_assert_true (pg_test_state_save_on (store_b, up_b, key, state, &error));
  g_assert_no_error (error);
  g_assert_true (pg_test_state_load_on (store_a, up_a, key, uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_FOUND);
  g_assert_true (pg_client_state_equal (got, state));
  g_clear_pointer (&got, pg_client_state_free);

  g_assert_true (pg_test_state_load_on (store_a, up_a, phone, uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_NEW);
  g_assert_true (
      pg_test_state_load_on (store_a, up_a, key, uidvalidity + 1, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_UIDVALIDITY_CHANGED);
  g_clear_pointer (&got, pg_client_state_free);

  /* A damaged value (written by someone else) is an error naming the entry, never
   * "nothing stored". */
  {
    g_autofree gchar *set
        = g_strdup_printf ("d1 SETMETADATA INBOX (%s {16+}\r\npopgate-state 1\n)\r\n", entry);
    g_autofree gchar *line = NULL;

    PG_TEST_ASSERT_OK (pg_test_imap_send_raw (checker, set, strlen (set), &error), error);
    line = pg_test_imap_read_line (checker, &error);
    g_assert_no_error (error);
    g_assert_true (g_str_has_prefix (line, "d1 OK "));
  }
  g_assert_false (pg_test_state_load_on (store_b, up_b, key, uidvalidity, &status, &got, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, entry));
  g_assert_nonnull (strstr (error->message, "truncated"));

  pg_upstream_close (up_a);
  pg_upstream_close (up_b);
}

/* The peer's start: a PREAUTH server with METADATA, and INBOX selected (UIDVALIDITY 42). */
/* clang-format off */
#define PG_TEST_STATE_PEER_SELECTED                                                                \
  { PG_TEST_PEER_SEND, "* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+ METADATA] ready\r\n", 0 },      \
  { PG_TEST_PEER_EXPECT, "SELECT INBOX", 0 },                                                      \
  { PG_TEST_PEER_SEND, "* FLAGS (\\Seen \\Deleted)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n"                \
                       "* OK [UIDVALIDITY 42] UIDs valid\r\n* OK [UIDNEXT 9] next\r\n"           \
                       "$ OK [READ-WRITE] Select completed.\r\n", 0 }
/* clang-format on */
/* The sample key's entry (pg_test_state_sample_key). */
#define PG_TEST_STATE_SAMPLE_ENTRY "/private/vendor/popgate/=6c617020746f70250ac3a9"

/* A peer serving script (which starts with PG_TEST_STATE_PEER_SELECTED) in this context,
 * and an upstream on it with INBOX selected. */
static PgUpstream *
pg_test_state_peer_upstream (const PgTestPeerStep *script, PgTestPeer **out_peer)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestPeer) peer = pg_test_peer_new_in_context (script, &error);
  guint32 uidvalidity = 0;
  PgUpstream *upstream;

  g_assert_no_error (error);
  upstream = pg_test_state_upstream (pg_test_peer_get_port (peer), NULL, &uidvalidity);
  g_assert_cmpuint (uidvalidity, ==, 42);
  *out_peer = g_steal_pointer (&peer);
  return upstream;
}

/* The script ran to its end: popgate sent exactly what it expected. */
static void
pg_test_state_peer_assert_done (PgTestPeer *peer)
{
  g_assert_true (pg_test_peer_wait_finished (peer, 10000));
  g_assert_cmpstr (pg_test_peer_get_mismatch (peer), ==, NULL);
}

/* A server that refuses the write (Cyrus without annotation_allow_undefined, whose exact
 * reply the peer plays): the save fails with an error that names the entry and still reads
 * as the server's considered refusal, so QUIT answers [SYS/PERM], not [SYS/TEMP] that
 * clients retry for ever. */
static void
pg_test_state_metadata_refused (void)
{
  static const PgTestPeerStep script[] = {
    PG_TEST_STATE_PEER_SELECTED,
    /* The record as a non-synchronising literal, then ")". */
    { PG_TEST_PEER_EXPECT, "SETMETADATA INBOX (" PG_TEST_STATE_SAMPLE_ENTRY " {*+}", 0 },
    { PG_TEST_PEER_EXPECT_RAW, "popgate-state *)", 0 },
    { PG_TEST_PEER_SEND, "$ NO Permission denied\r\n", 0 },
    { PG_TEST_PEER_HANG, NULL, 0 },
  };
  g_autoptr (PgTestPeer) peer = NULL;
  g_autoptr (PgUpstream) upstream = pg_test_state_peer_upstream (script, &peer);
  g_autoptr (PgStateStore) store = pg_state_store_new_imap_metadata ();
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (GError) error = NULL;
  g_autofree gchar *entry = pg_state_metadata_entry (key->tag);

  g_assert_cmpstr (entry, ==, PG_TEST_STATE_SAMPLE_ENTRY);
  g_assert_false (pg_test_state_save_on (store, upstream, key, state, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_nonnull (strstr (error->message, "Permission denied"));
  g_assert_nonnull (strstr (error->message, entry));
  g_assert_true (pg_upstream_error_is_permanent (error));
  /* One SETMETADATA, as the peer expected it. */
  pg_test_state_peer_assert_done (peer);
  pg_upstream_close (upstream);
}

/* The same refusal from a real Cyrus without annotation_allow_undefined (its default). */
static void
pg_test_state_metadata_refused_cyrus (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgTestCyrus) cyrus = pg_test_cyrus_new (&error);
  guint32 uidvalidity = 0;
  g_autoptr (PgUpstream) upstream = NULL;
  g_autoptr (PgStateStore) store = pg_state_store_new_imap_metadata ();
  g_autoptr (PgStateKey) key = pg_state_key_new ("alice", "INBOX", "laptop");
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgClientState) got = NULL;
  g_autofree gchar *entry = pg_state_metadata_entry (key->tag);
  PgStateLoadStatus status = PG_STATE_LOAD_FOUND;

  g_assert_no_error (error);
  cyrus->refuse_undefined_annotations = TRUE;
  PG_TEST_ASSERT_OK (pg_test_cyrus_add_user (cyrus, "alice", PG_TEST_STATE_PASSWORD, &error),
                     error);
  PG_TEST_ASSERT_OK (pg_test_cyrus_start (cyrus, &error), error);
  upstream = pg_test_state_upstream (cyrus->port, "alice", &uidvalidity);
  g_assert_true (pg_upstream_has_capability (upstream, "METADATA"));
  state->uidvalidity = uidvalidity;
  g_assert_false (pg_test_state_save_on (store, upstream, key, state, &error));
  g_test_message ("Cyrus: %s", error->message);
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_nonnull (strstr (error->message, "Permission denied"));
  g_assert_nonnull (strstr (error->message, entry));
  g_assert_true (pg_upstream_error_is_permanent (error));
  g_clear_error (&error);
  /* Nothing was stored. */
  g_assert_true (pg_test_state_load_on (store, upstream, key, uidvalidity, &status, &got, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, PG_STATE_LOAD_NEW);
  pg_upstream_close (upstream);
}

/* Loads against replies no real server sends: each fails with an error, never as "nothing
 * stored" (which would show the client deleted mail again) and never by reading without
 * bound or waiting for ever (the wait's watchdog). */
/* PG_STATE_MAX_ENTRIES + 1 entries under the sample's, then the tagged OK. */
static gchar *
pg_test_state_too_many_entries (void)
{
  GString *reply = g_string_new (NULL);

  for (guint i = 0; i <= PG_STATE_MAX_ENTRIES; i++)
    g_string_append_printf (reply, "* METADATA INBOX (%s/%u {1}\r\nx)\r\n",
                            PG_TEST_STATE_SAMPLE_ENTRY, i);
  g_string_append (reply, "$ OK done\r\n");
  return g_string_free (reply, FALSE);
}

static void
pg_test_state_metadata_bad_replies (void)
{
  g_autofree gchar *many = pg_test_state_too_many_entries ();
  g_autofree gchar *large
      = g_strdup_printf ("* METADATA INBOX (%s {%u}\r\n", PG_TEST_STATE_SAMPLE_ENTRY,
                         (guint) PG_UPSTREAM_MAX_SMALL_LITERAL + 1);
  const struct
  {
    const char *name;
    const char *reply;     /* after GETMETADATA (DEPTH 1) */
    PgTestPeerAction then; /* CLOSE or HANG */
    GQuark domain;         /* 0: any error */
    gint code;
  } cases[] = {
    /* The connection drops in the middle of the value. */
    { "truncated", "* METADATA INBOX (" PG_TEST_STATE_SAMPLE_ENTRY " {100}\r\npopgate-state 1\n",
      PG_TEST_PEER_CLOSE, 0, 0 },
    /* The entry list never closes. */
    { "malformed", "* METADATA INBOX (" PG_TEST_STATE_SAMPLE_ENTRY " {5}\r\nhello\r\n$ OK done\r\n",
      PG_TEST_PEER_HANG, PG_ERROR, PG_ERROR_PROTOCOL },
    /* A value beyond any record popgate writes: refused at its size, before its bytes. */
    { "too-large", large, PG_TEST_PEER_HANG, PG_ERROR, PG_ERROR_LIMIT },
    /* More entries under ours than concurrent saves leave. */
    { "too-many", many, PG_TEST_PEER_HANG, PG_ERROR, PG_ERROR_LIMIT },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      const PgTestPeerStep script[] = {
        PG_TEST_STATE_PEER_SELECTED,
        { PG_TEST_PEER_EXPECT, "GETMETADATA (DEPTH 1) INBOX " PG_TEST_STATE_SAMPLE_ENTRY, 0 },
        { PG_TEST_PEER_SEND, cases[i].reply, 0 },
        { cases[i].then, NULL, 0 },
      };
      g_autoptr (PgTestPeer) peer = NULL;
      g_autoptr (PgUpstream) upstream = pg_test_state_peer_upstream (script, &peer);
      g_autoptr (PgStateStore) store = pg_state_store_new_imap_metadata ();
      g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
      g_autoptr (PgClientState) got = NULL;
      g_autoptr (GError) error = NULL;
      PgStateLoadStatus status = PG_STATE_LOAD_NEW;

      g_assert_false (pg_test_state_load_on (store, upstream, key, 42, &status, &got, &error));
      g_assert_nonnull (error);
      g_test_message ("%s: %s", cases[i].name, error->message);
      if (cases[i].domain != 0)
        g_assert_error (error, cases[i].domain, cases[i].code);
      g_assert_null (got);
      pg_test_state_peer_assert_done (peer);
      pg_upstream_close (upstream);
    }
}

/* A server that does not advertise METADATA: load and save fail without sending anything.
 * This Dovecot has METADATA but does not list it, so a command sent anyway would have
 * stored the record where the checker sees it. */
static void
pg_test_state_metadata_unsupported (PgTestStateDovecot *fx, gconstpointer data)
{
  guint32 uidvalidity = 0;
  g_autoptr (PgUpstream) upstream
      = pg_test_state_upstream (fx->dovecot->imap_port, PG_TEST_STATE_USER, &uidvalidity);
  g_autoptr (PgTestImap) checker = pg_test_state_checker (fx->dovecot);
  g_autoptr (PgStateStore) store = pg_state_store_new_imap_metadata ();
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgClientState) got = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *entry = pg_state_metadata_entry (key->tag);
  g_autofree gchar *stored = NULL;
  PgStateLoadStatus status = PG_STATE_LOAD_FOUND;

  g_assert_false (pg_upstream_has_capability (upstream, "METADATA"));
  state->uidvalidity = uidvalidity;
  g_assert_false (pg_test_state_load_on (store, upstream, key, uidvalidity, &status, &got, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_nonnull (strstr (error->message, "does not support METADATA"));
  g_clear_error (&error);
  g_assert_false (pg_test_state_save_on (store, upstream, key, state, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  g_assert_nonnull (strstr (error->message, "does not support METADATA"));
  g_clear_error (&error);
  /* Nothing went to the server: no entry at or below ours (Dovecot lists none). */
  stored = pg_test_state_stored (checker, entry);
  g_assert_cmpuint (pg_test_count (stored, "/private/vendor/popgate/"), ==, 0);
  /* Without an upstream at all. */
  g_assert_false (pg_test_state_load_on (store, NULL, key, uidvalidity, &status, &got, &error));
  g_assert_error (error, PG_ERROR, PG_ERROR_UPSTREAM);
  pg_upstream_close (upstream);
}

/* --- the UIDL ledger ------------------------------------------------------------------------ */

static PgLedgerEntry
pg_test_ledger_entry (guint32 uid, guint8 id, guint32 uidl_uid, guint32 uidl_uidvalidity)
{
  PgLedgerEntry entry = { .uid = uid, .uidl_uid = uidl_uid, .uidl_uidvalidity = uidl_uidvalidity };

  memset (entry.id, id, sizeof entry.id);
  return entry;
}

/* A ledger survives its record byte for byte, carried UIDLs included; a record without
 * one stays version 1 (what older popgates read). */
static void
pg_test_state_ledger_roundtrip (void)
{
  g_autoptr (PgClientState) state = pg_test_state_sample ();
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (GBytes) bytes = NULL;
  g_autoptr (GBytes) again = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgClientState) got = NULL;
  g_autoptr (PgStateKey) got_key = NULL;
  PgLedgerEntry a = pg_test_ledger_entry (3, 0xab, 3, state->uidvalidity);
  PgLedgerEntry b = pg_test_ledger_entry (9, 0x01, 4, 77);
  gsize len = 0;
  const char *data;
  char uidl[17];

  pg_client_state_ledger_set (state, &b);
  pg_client_state_ledger_set (state, &a);
  g_assert_cmpuint (state->ledger->len, ==, 0 + 2);
  g_assert_cmpuint (g_array_index (state->ledger, PgLedgerEntry, 0).uid, ==, 3);
  state->ledger_kind = PG_LEDGER_KIND_DIGEST;
  bytes = pg_client_state_encode (state, key);
  data = g_bytes_get_data (bytes, &len);
  g_test_message ("record:\n%.*s", (int) len, data);
  g_assert_true (g_str_has_prefix (data, "popgate-state 2\n"));
  g_assert_nonnull (g_strstr_len (data, (gssize) len,
                                  "\nledger digest\nl 3 abababababababababababab\n"
                                  "l 9 010101010101010101010101 4:77\n"));
  got = pg_client_state_decode (data, len, "test", &got_key, &error);
  g_assert_no_error (error);
  g_assert_true (pg_client_state_equal (got, state));
  again = pg_client_state_encode (got, got_key);
  g_assert_true (g_bytes_equal (again, bytes));

  /* The UIDL: the ledger's pair, else UID and UIDVALIDITY. */
  pg_client_state_format_uidl (got, 9, uidl);
  g_assert_cmpstr (uidl, ==, "000000040000004d");
  g_snprintf (uidl, sizeof uidl, "%08x%08x", 3u, state->uidvalidity);
  {
    char three[17];
    pg_client_state_format_uidl (got, 3, three);
    g_assert_cmpstr (three, ==, uidl);
  }

  /* Every cut is refused (the checksum covers the ledger too). */
  for (gsize cut = 0; cut < len; cut++)
    {
      g_autoptr (GError) cut_error = NULL;
      g_autoptr (PgClientState) cut_state
          = pg_client_state_decode (data, cut, "test", NULL, &cut_error);
      g_assert_null (cut_state);
      g_assert_nonnull (cut_error);
    }
}

/* The ledger holds at most PG_STATE_MAX_LEDGER_ENTRIES, the newest; a full one fits a
 * record, and a record with one entry more is refused. */
static void
pg_test_state_ledger_bound (void)
{
  g_autoptr (PgClientState) state = pg_client_state_new (G_MAXUINT32, 1, 0);
  g_autoptr (PgStateKey) key = pg_test_state_sample_key ();
  g_autoptr (GBytes) bytes = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgClientState) got = NULL;
  g_autoptr (GString) over = NULL;
  guint32 top = G_MAXUINT32 - 1;
  const char *ledger_line;

  state->ledger_kind = PG_LEDGER_KIND_EMAILID;
  for (guint i = 0; i < PG_STATE_MAX_LEDGER_ENTRIES + 5; i++)
    {
      /* The longest lines: ten-digit UIDs, each with a carried UIDL. */
      PgLedgerEntry entry = pg_test_ledger_entry (top - PG_STATE_MAX_LEDGER_ENTRIES - 5 + i + 1,
                                                  (guint8) i, G_MAXUINT32 - 1, G_MAXUINT32 - 1);
      pg_client_state_ledger_set (state, &entry);
    }
  g_assert_cmpuint (state->ledger->len, ==, PG_STATE_MAX_LEDGER_ENTRIES);
  /* The lowest five went. */
  g_assert_cmpuint (g_array_index (state->ledger, PgLedgerEntry, 0).uid, ==,
                    top - PG_STATE_MAX_LEDGER_ENTRIES + 1);
  g_assert_null (pg_client_state_ledger_lookup (state, top - PG_STATE_MAX_LEDGER_ENTRIES));
  g_assert_nonnull (pg_client_state_ledger_lookup (state, top));
  bytes = pg_client_state_encode (state, key);
  g_test_message ("a full ledger of %u entries: %zu bytes encoded",
                  (guint) PG_STATE_MAX_LEDGER_ENTRIES, g_bytes_get_size (bytes));
  g_assert_cmpuint (g_bytes_get_size (bytes), <=, PG_STATE_MAX_ENCODED);
  got = pg_client_state_decode (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes), "test",
                                NULL, &error);
  g_assert_no_error (error);
  g_assert_true (pg_client_state_equal (got, state));

  /* One more line, checksum fixed: refused as corrupt. */
  over = g_string_new_len (g_bytes_get_data (bytes, NULL), (gssize) g_bytes_get_size (bytes));
  g_string_truncate (over, (gsize) (strstr (over->str, "\nend ") - over->str) + 1);
  ledger_line = strstr (over->str, "\nledger emailid\n");
  g_assert_nonnull (ledger_line);
  g_string_insert (over, (gssize) (ledger_line - over->str) + strlen ("\nledger emailid\n"),
                   "l 1 000000000000000000000001\n");
  g_string_append_printf (over, "end %08x\n", pg_test_state_crc32 (over->str, over->len));
  g_clear_pointer (&got, pg_client_state_free);
  got = pg_client_state_decode (over->str, over->len, "test", NULL, &error);
  g_assert_null (got);
  g_assert_error (error, PG_ERROR, PG_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, "more than"));
}

/* After a UIDVALIDITY change: identities once on each side carry UIDL, hidden and
 * retrieved; ambiguous ones, ones without identity, new ones and ones of another kind
 * do not. */
static void
pg_test_state_ledger_rebase (void)
{
  g_autoptr (PgClientState) old = pg_client_state_new (100, 1, 5);
  g_autoptr (PgClientState) state = NULL;
  g_autoptr (PgClientState) other = NULL;
  PgLedgerEntry fresh[6];
  guint carried = 0, fresh_uidls = 0;
  const PgLedgerEntry *e;

  old->ledger_kind = PG_LEDGER_KIND_DIGEST;
  /* 1: unique; 2 and 3: the same identity; 4: no identity; 5: carried once already. */
  for (guint i = 1; i <= 5; i++)
    {
      guint8 id = i == 3 ? 2 : i == 4 ? 0 : (guint8) i;
      PgLedgerEntry entry = pg_test_ledger_entry (i, id, i == 5 ? 50 : i, i == 5 ? 90 : 100);
      pg_client_state_ledger_set (old, &entry);
    }
  pg_uid_set_add_range (old->hidden, 1, 5);
  pg_uid_set_add (old->retrieved, 5);
  pg_client_state_set_pending (old, PG_STATE_PENDING_EXPUNGE, NULL, old->hidden);

  /* New UIDs 11..16: 11 is old 1, 12 and 13 the pair, 14 no identity, 15 old 5, 16 new. */
  fresh[0] = pg_test_ledger_entry (11, 1, 0, 0);
  fresh[1] = pg_test_ledger_entry (12, 2, 0, 0);
  fresh[2] = pg_test_ledger_entry (13, 2, 0, 0);
  fresh[3] = pg_test_ledger_entry (14, 0, 0, 0);
  fresh[4] = pg_test_ledger_entry (15, 5, 0, 0);
  fresh[5] = pg_test_ledger_entry (16, 6, 0, 0);
  state = pg_client_state_rebase (old, 200, 17, 9, PG_LEDGER_KIND_DIGEST, fresh,
                                  G_N_ELEMENTS (fresh), &carried, &fresh_uidls);
  g_assert_cmpuint (carried, ==, 2);
  g_assert_cmpuint (fresh_uidls, ==, 4);
  g_assert_cmpuint (state->uidvalidity, ==, 200);
  g_assert_cmpuint (state->ledger->len, ==, 6);
  e = pg_client_state_ledger_lookup (state, 11);
  g_assert_cmpuint (e->uidl_uid, ==, 1);
  g_assert_cmpuint (e->uidl_uidvalidity, ==, 100);
  e = pg_client_state_ledger_lookup (state, 15);
  g_assert_cmpuint (e->uidl_uid, ==, 50);
  g_assert_cmpuint (e->uidl_uidvalidity, ==, 90);
  for (guint32 uid = 12; uid <= 16; uid += (uid == 14 ? 2 : 1))
    {
      e = pg_client_state_ledger_lookup (state, uid);
      g_assert_cmpuint (e->uidl_uid, ==, uid);
      g_assert_cmpuint (e->uidl_uidvalidity, ==, 200);
    }
  {
    g_autofree gchar *hidden = pg_uid_set_to_string (state->hidden);
    g_autofree gchar *retrieved = pg_uid_set_to_string (state->retrieved);
    g_assert_cmpstr (hidden, ==, "11,15");
    g_assert_cmpstr (retrieved, ==, "15");
  }
  g_assert_cmpint (state->pending, ==, PG_STATE_PENDING_NONE);

  /* The old ledger of another kind: nothing compares. */
  old->ledger_kind = PG_LEDGER_KIND_EMAILID;
  other = pg_client_state_rebase (old, 200, 17, 9, PG_LEDGER_KIND_DIGEST, fresh,
                                  G_N_ELEMENTS (fresh), &carried, &fresh_uidls);
  g_assert_cmpuint (carried, ==, 0);
  g_assert_cmpuint (fresh_uidls, ==, 6);
  g_assert_true (pg_uid_set_is_empty (other->hidden));
}

/* Concurrent sessions: entries another session added stay, what this one pruned stays
 * pruned, and of two carry-overs of one message the stored one stands. */
static void
pg_test_state_ledger_merge (void)
{
  g_autoptr (PgClientState) base = pg_client_state_new (7, 1, 0);
  g_autoptr (PgClientState) ours = NULL;
  g_autoptr (PgClientState) stored = NULL;
  g_autoptr (PgClientState) merged = NULL;
  PgLedgerEntry e1 = pg_test_ledger_entry (1, 1, 1, 7);
  PgLedgerEntry e2 = pg_test_ledger_entry (2, 2, 2, 7);
  PgLedgerEntry e3 = pg_test_ledger_entry (3, 3, 3, 7);
  PgLedgerEntry e3_carried = pg_test_ledger_entry (3, 3, 30, 5);
  PgLedgerEntry e4 = pg_test_ledger_entry (4, 4, 4, 7);

  base->ledger_kind = PG_LEDGER_KIND_DIGEST;
  pg_client_state_ledger_set (base, &e1);
  pg_client_state_ledger_set (base, &e2);
  ours = pg_client_state_copy (base);
  stored = pg_client_state_copy (base);
  /* Ours: 1 is gone (pruned), 3 is new. Theirs: 3 carried over, 4 new. */
  {
    static const guint32 left[] = { 2 };
    pg_client_state_ledger_prune (ours, left, G_N_ELEMENTS (left));
  }
  g_assert_null (pg_client_state_ledger_lookup (ours, 1));
  pg_client_state_ledger_set (ours, &e3);
  pg_client_state_ledger_set (stored, &e3_carried);
  pg_client_state_ledger_set (stored, &e4);
  merged = pg_client_state_merge (stored, base, ours);
  g_assert_cmpint (merged->ledger_kind, ==, PG_LEDGER_KIND_DIGEST);
  g_assert_null (pg_client_state_ledger_lookup (merged, 1));
  g_assert_nonnull (pg_client_state_ledger_lookup (merged, 2));
  g_assert_cmpuint (pg_client_state_ledger_lookup (merged, 3)->uidl_uid, ==, 30);
  g_assert_nonnull (pg_client_state_ledger_lookup (merged, 4));
  g_assert_cmpuint (merged->ledger->len, ==, 3);
}

/* a and b give every UID from 1 to last the same UIDL. */
static void
assert_same_uidls (const PgClientState *a, const PgClientState *b, guint32 last)
{
  for (guint32 uid = 1; uid <= last; uid++)
    {
      char uidl_a[17];
      char uidl_b[17];

      pg_client_state_format_uidl (a, uid, uidl_a);
      pg_client_state_format_uidl (b, uid, uidl_b);
      g_assert_cmpstr (uidl_a, ==, uidl_b);
    }
}

/* A stored state of UIDVALIDITY 7 with a digest ledger of UIDs 1..500, each UIDL its own,
 * except UID 3's, carried over a UIDVALIDITY change (UIDL 30:5). */
static PgClientState *
pg_test_state_ledger_500 (void)
{
  PgClientState *stored = pg_client_state_new (7, 1, 0);
  PgLedgerEntry carried = pg_test_ledger_entry (3, 3, 30, 5);

  stored->ledger_kind = PG_LEDGER_KIND_DIGEST;
  for (guint32 uid = 1; uid <= 500; uid++)
    {
      PgLedgerEntry e = pg_test_ledger_entry (uid, (guint8) uid, uid, 7);
      pg_client_state_ledger_set (stored, uid == 3 ? &carried : &e);
    }
  return stored;
}

/* An idle session slims its ledger (and its saved copy) to what differs from the stored
 * record or carries a UIDL over; UIDLs read the same, and the save's merge gives back
 * exactly the stored entries plus ours. */
static void
pg_test_state_ledger_slim (void)
{
  g_autoptr (PgClientState) stored = pg_test_state_ledger_500 ();
  g_autoptr (PgClientState) base = NULL;
  g_autoptr (PgClientState) ours = NULL;
  g_autoptr (PgClientState) full = NULL;
  g_autoptr (PgClientState) merged = NULL;
  PgLedgerEntry fresh = pg_test_ledger_entry (900, 9, 900, 7);

  base = pg_client_state_copy (stored);
  ours = pg_client_state_copy (stored);
  pg_client_state_ledger_set (ours, &fresh); /* identified this login, not stored yet */
  pg_uid_set_add (ours->hidden, 5);          /* a DELE at QUIT */
  full = pg_client_state_copy (ours);

  pg_client_state_ledger_slim (ours, base);
  g_assert_cmpuint (ours->ledger->len, ==, 2); /* the carried one and the fresh one */
  g_assert_cmpuint (base->ledger->len, ==, 1); /* the carried one */
  assert_same_uidls (full, ours, 900);
  merged = pg_client_state_merge (stored, base, ours);
  g_assert_cmpuint (merged->ledger->len, ==, 501);
  g_assert_true (pg_client_state_equal (merged, full));

  /* Different UIDVALIDITY (a rebase pending): left alone. */
  base->uidvalidity = 8;
  pg_client_state_ledger_slim (ours, base);
  g_assert_cmpuint (ours->ledger->len, ==, 2);
}

/* A state just saved is its own base: slim_saved() keeps what slim() against an equal copy
 * keeps, in the state and so in the copy made afterwards, and every UIDL stays. */
static void
pg_test_state_ledger_slim_saved (void)
{
  g_autoptr (PgClientState) saved = pg_test_state_ledger_500 ();
  g_autoptr (PgClientState) full = pg_client_state_copy (saved);
  g_autoptr (PgClientState) ours = NULL;
  g_autoptr (PgClientState) base = NULL;
  g_autoptr (PgClientState) merged = NULL;

  ours = pg_client_state_copy (saved);
  base = pg_client_state_copy (saved);
  pg_client_state_ledger_slim (ours, base);

  pg_client_state_ledger_slim_saved (saved);
  g_assert_cmpuint (saved->ledger->len, ==, 1); /* the carried one */
  g_assert_true (pg_client_state_equal (saved, ours));
  g_assert_true (pg_client_state_equal (saved, base));
  assert_same_uidls (full, saved, 600);
  /* The next save merges against the stored record and gets the whole ledger back. */
  merged = pg_client_state_merge (full, saved, saved);
  g_assert_true (pg_client_state_equal (merged, full));
}

/* The digest: header case and folding do not matter; Message-ID, Date and size do; no
 * Message-ID is no identity. */
static void
pg_test_state_ledger_digest (void)
{
  static const char one[]
      = "Message-ID: <a@example.org>\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\n\r\n";
  static const char folded[]
      = "date: Mon, 1 Dec 2026\r\n\t10:00:00 +0000\r\nMESSAGE-ID:\r\n <a@example.org>\r\n\r\n";
  static const char other_date[]
      = "Message-ID: <a@example.org>\r\nDate: Mon, 1 Dec 2026 10:00:01 +0000\r\n\r\n";
  static const char no_id[] = "Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n\r\n";
  static const char x_id[] = "X-Message-ID: <a@example.org>\r\n\r\n";
  guint8 a[PG_LEDGER_ID_LEN], b[PG_LEDGER_ID_LEN], c[PG_LEDGER_ID_LEN], d[PG_LEDGER_ID_LEN];
  guint8 e[PG_LEDGER_ID_LEN];

  g_assert_true (pg_ledger_digest ((const guint8 *) one, strlen (one), 100, a));
  g_assert_true (pg_ledger_digest ((const guint8 *) folded, strlen (folded), 100, b));
  g_assert_cmpmem (a, sizeof a, b, sizeof b);
  g_assert_true (pg_ledger_digest ((const guint8 *) one, strlen (one), 101, c));
  g_assert_true (memcmp (a, c, sizeof a) != 0);
  g_assert_true (pg_ledger_digest ((const guint8 *) other_date, strlen (other_date), 100, d));
  g_assert_true (memcmp (a, d, sizeof a) != 0);
  g_assert_false (pg_ledger_digest ((const guint8 *) no_id, strlen (no_id), 100, e));
  g_assert_false (pg_ledger_digest ((const guint8 *) x_id, strlen (x_id), 100, e));
  g_assert_false (pg_ledger_digest ((const guint8 *) "", 0, 100, e));
  /* Cut anywhere: never a crash, never a read past len. */
  for (gsize cut = 0; cut <= strlen (folded); cut++)
    {
      g_autofree guint8 *copy = g_memdup2 (folded, cut);
      (void) pg_ledger_digest (copy, cut, 100, e);
    }
  /* An EMAILID is not a digest of the same bytes. */
  pg_ledger_identity (PG_LEDGER_KIND_EMAILID, "x", 1, d);
  pg_ledger_identity (PG_LEDGER_KIND_X_GM_MSGID, "x", 1, e);
  g_assert_true (memcmp (d, e, sizeof d) != 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/popgate/state/uidset/basic", pg_test_state_uidset_basic);
  g_test_add_func ("/popgate/state/uidset/compact", pg_test_state_uidset_compact);
  g_test_add_func ("/popgate/state/uidset/edges", pg_test_state_uidset_edges);
  g_test_add_func ("/popgate/state/uidset/parse-bad", pg_test_state_uidset_parse_bad);
  g_test_add_func ("/popgate/state/uidset/parse-good", pg_test_state_uidset_parse_good);
  g_test_add_func ("/popgate/state/uidset/parse-limit", pg_test_state_uidset_parse_limit);
  g_test_add_func ("/popgate/state/uidset/random", pg_test_state_uidset_random);
  g_test_add_func ("/popgate/state/encode/roundtrip", pg_test_state_encode_roundtrip);
  g_test_add_func ("/popgate/state/encode/truncated", pg_test_state_encode_truncated);
  g_test_add_func ("/popgate/state/encode/bitflip", pg_test_state_encode_bitflip);
  g_test_add_func ("/popgate/state/encode/corrupt", pg_test_state_encode_corrupt);
  g_test_add_func ("/popgate/state/encode/million", pg_test_state_encode_million);
  g_test_add_func ("/popgate/state/encode/limit", pg_test_state_decode_limit);
  g_test_add_func ("/popgate/state/metadata/entry", pg_test_state_metadata_entry);
  g_test_add_func ("/popgate/state/merge", pg_test_state_merge);
  g_test_add_func ("/popgate/state/ledger/roundtrip", pg_test_state_ledger_roundtrip);
  g_test_add_func ("/popgate/state/ledger/bound", pg_test_state_ledger_bound);
  g_test_add_func ("/popgate/state/ledger/rebase", pg_test_state_ledger_rebase);
  g_test_add_func ("/popgate/state/ledger/merge", pg_test_state_ledger_merge);
  g_test_add_func ("/popgate/state/ledger/slim", pg_test_state_ledger_slim);
  g_test_add_func ("/popgate/state/ledger/slim-saved", pg_test_state_ledger_slim_saved);
  g_test_add_func ("/popgate/state/ledger/digest", pg_test_state_ledger_digest);
  g_test_add_func ("/popgate/state/uidset/subtract", pg_test_state_uidset_subtract);
  g_test_add ("/popgate/state/file/roundtrip", PgTestStateFixture, NULL,
              pg_test_state_fixture_setup, pg_test_state_file_roundtrip,
              pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/forged", PgTestStateFixture, NULL, pg_test_state_fixture_setup,
              pg_test_state_file_forged, pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/unsafe-dir", PgTestStateFixture, NULL,
              pg_test_state_fixture_setup, pg_test_state_file_unsafe_dir,
              pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/symlinked-dir", PgTestStateFixture, NULL,
              pg_test_state_fixture_setup, pg_test_state_file_symlinked_dir,
              pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/stale-temp", PgTestStateFixture, NULL,
              pg_test_state_fixture_setup, pg_test_state_file_stale_temp,
              pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/corrupt", PgTestStateFixture, NULL, pg_test_state_fixture_setup,
              pg_test_state_file_corrupt, pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/bad-path", PgTestStateFixture, NULL, pg_test_state_fixture_setup,
              pg_test_state_file_bad_path, pg_test_state_fixture_teardown);
  g_test_add ("/popgate/state/file/from-config", PgTestStateFixture, NULL,
              pg_test_state_fixture_setup, pg_test_state_file_from_config,
              pg_test_state_fixture_teardown);

  {
    static const PgTestDovecotOptions with_metadata = { .metadata = TRUE };
    static const PgTestDovecotOptions unlisted = {
      .metadata = TRUE,
      .capability = PG_TEST_STATE_NO_METADATA_CAPABILITY,
    };

    g_test_add ("/popgate/state/metadata/shared", PgTestStateDovecot, &with_metadata,
                pg_test_state_dovecot_setup, pg_test_state_metadata_shared,
                pg_test_state_dovecot_teardown);
    g_test_add ("/popgate/state/metadata/unsupported", PgTestStateDovecot, &unlisted,
                pg_test_state_dovecot_setup, pg_test_state_metadata_unsupported,
                pg_test_state_dovecot_teardown);
  }
  g_test_add_func ("/popgate/state/metadata/refused", pg_test_state_metadata_refused);
  g_test_add_func ("/popgate/state/metadata/bad-replies", pg_test_state_metadata_bad_replies);
  g_test_add_func ("/popgate/state/metadata/refused-cyrus", pg_test_state_metadata_refused_cyrus);

  return g_test_run ();
}
