/* Tests for the sealed POP3 snapshot (src/pop3/pg-pop3-maildrop.h, PgPop3Snapshot): what an
 * idle POP3 session keeps of its maildrop. Every message number must give back the UID and
 * size it was built from, and the octets it takes are a computed figure (issue 16: an idle
 * session on a 2,003-message mailbox held 16 KiB of snapshot in a doubling GArray).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "../src/pop3/pg-pop3-maildrop.h"

#include <string.h>

/* The octets of a snapshot of n messages in `runs` runs (0: a plain UID array). */
static gsize
pg_test_snapshot_expected_bytes (guint n, guint runs)
{
  return 2 * sizeof (guint) + sizeof (guint32) * ((gsize) n + (runs > 0 ? 2 * (gsize) runs : n));
}

/* Build a snapshot of msgs and check every message, the run count and the octets. */
static PgPop3Snapshot *
pg_test_snapshot_check (const PgPop3Message *msgs, guint n, guint expect_runs)
{
  PgPop3Snapshot *snapshot = pg_pop3_snapshot_new (msgs, n);

  g_assert_cmpuint (pg_pop3_snapshot_count (snapshot), ==, n);
  for (guint i = 0; i < n; i++)
    {
      g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, i), ==, msgs[i].uid);
      g_assert_cmpuint (pg_pop3_snapshot_size (snapshot, i), ==, msgs[i].size);
    }
  g_assert_cmpuint (pg_pop3_snapshot_n_runs (snapshot), ==, expect_runs);
  g_assert_cmpuint (pg_pop3_snapshot_bytes (snapshot), ==,
                    pg_test_snapshot_expected_bytes (n, expect_runs));
  /* Never more than the 8 octets per message the array of PgPop3Message took. */
  g_assert_cmpuint (pg_pop3_snapshot_bytes (snapshot), <=,
                    2 * sizeof (guint) + (gsize) n * sizeof (PgPop3Message));
  return snapshot;
}

/* The bench's mailbox: 2,003 messages with consecutive UIDs take one run: 4 octets a
 * message (8,028 octets, against the 16,384 of the GArray it replaces). */
static void
pg_test_snapshot_consecutive (void)
{
  g_autofree PgPop3Message *msgs = g_new (PgPop3Message, 2003);
  g_autoptr (PgPop3Snapshot) snapshot = NULL;

  for (guint i = 0; i < 2003; i++)
    {
      msgs[i].uid = i + 1;
      msgs[i].size = 10387 + i % 7;
    }
  msgs[2002].size = G_MAXUINT32; /* a size kept aside (the maildrop's big sizes) */
  snapshot = pg_test_snapshot_check (msgs, 2003, 1);
  g_assert_cmpuint (pg_pop3_snapshot_bytes (snapshot), ==, 8 + 4 * 2003 + 8);
  g_assert_cmpuint (pg_pop3_snapshot_bytes (snapshot), <, 8100);
}

/* Deleted messages leave gaps: one run per stretch of consecutive UIDs, found by binary
 * search, including the first and last message of each run. */
static void
pg_test_snapshot_gaps (void)
{
  static const PgPop3Message msgs[] = {
    { 3, 100 },  { 4, 101 },  { 5, 102 },  { 9, 103 },    { 10, 104 }, { 11, 105 },
    { 12, 106 }, { 40, 107 }, { 41, 108 }, { 1000, 109 }, { 1001, 0 }, { 1002, 111 },
  };
  g_autoptr (PgPop3Snapshot) snapshot = pg_test_snapshot_check (msgs, G_N_ELEMENTS (msgs), 4);

  g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, 0), ==, 3);
  g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, 3), ==, 9);
  g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, 8), ==, 41);
  g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, 11), ==, 1002);
}

/* Every other UID gone: runs would take 12 octets a message, so the UIDs are a plain array
 * (8 a message, as before). Also the edges: none, one, and a UID near G_MAXUINT32. */
static void
pg_test_snapshot_sparse (void)
{
  g_autofree PgPop3Message *msgs = g_new (PgPop3Message, 500);
  static const PgPop3Message one[] = { { G_MAXUINT32 - 1, 7 } };
  static const PgPop3Message top[]
      = { { G_MAXUINT32 - 3, 1 }, { G_MAXUINT32 - 2, 2 }, { G_MAXUINT32 - 1, 3 } };
  g_autoptr (PgPop3Snapshot) sparse = NULL;
  g_autoptr (PgPop3Snapshot) empty = NULL;
  g_autoptr (PgPop3Snapshot) single = NULL;
  g_autoptr (PgPop3Snapshot) high = NULL;

  for (guint i = 0; i < 500; i++)
    {
      msgs[i].uid = 2 * i + 2;
      msgs[i].size = i;
    }
  sparse = pg_test_snapshot_check (msgs, 500, 0);
  empty = pg_test_snapshot_check (NULL, 0, 0);
  single = pg_test_snapshot_check (one, 1, 0); /* one run of one would be 2 words: no */
  high = pg_test_snapshot_check (top, 3, 1);
}

/* Random mailboxes: runs of random length with random gaps, each checked message by
 * message against what it was built from. */
static void
pg_test_snapshot_random (void)
{
  for (guint round = 0; round < 50; round++)
    {
      guint n = (guint) g_test_rand_int_range (1, 3000);
      g_autofree PgPop3Message *msgs = g_new (PgPop3Message, n);
      g_autoptr (PgPop3Snapshot) snapshot = NULL;
      guint32 uid = (guint32) g_test_rand_int_range (1, 1000);
      guint runs = 0;

      for (guint i = 0; i < n; i++)
        {
          if (i > 0 && g_test_rand_int_range (0, 100) < (gint) (round % 10) * 10)
            uid += (guint32) g_test_rand_int_range (2, 50); /* a gap: a new run */
          else if (i > 0)
            uid++;
          runs += i == 0 || uid != msgs[i - 1].uid + 1;
          msgs[i].uid = uid;
          msgs[i].size = (guint32) g_test_rand_int ();
        }
      snapshot = pg_test_snapshot_check (msgs, n, (gsize) runs * 2 >= n ? 0 : runs);
    }
}

/* A RETR that sent another size than RFC822.SIZE corrects that message only. */
static void
pg_test_snapshot_set_size (void)
{
  static const PgPop3Message msgs[] = { { 1, 10 }, { 2, 20 }, { 3, 30 } };
  g_autoptr (PgPop3Snapshot) snapshot = pg_pop3_snapshot_new (msgs, 3);

  pg_pop3_snapshot_set_size (snapshot, 1, 25);
  g_assert_cmpuint (pg_pop3_snapshot_size (snapshot, 0), ==, 10);
  g_assert_cmpuint (pg_pop3_snapshot_size (snapshot, 1), ==, 25);
  g_assert_cmpuint (pg_pop3_snapshot_size (snapshot, 2), ==, 30);
  g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, 1), ==, 2);
  g_assert_cmpuint (pg_pop3_snapshot_uid (snapshot, 2), ==, 3);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/pop3-snapshot/consecutive", pg_test_snapshot_consecutive);
  g_test_add_func ("/popgate/pop3-snapshot/gaps", pg_test_snapshot_gaps);
  g_test_add_func ("/popgate/pop3-snapshot/sparse", pg_test_snapshot_sparse);
  g_test_add_func ("/popgate/pop3-snapshot/random", pg_test_snapshot_random);
  g_test_add_func ("/popgate/pop3-snapshot/set-size", pg_test_snapshot_set_size);
  return g_test_run ();
}
