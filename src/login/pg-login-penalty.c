/* popgate — login: the failed-login penalty per client address and process-wide.
 *
 * Dovecot's anvil keeps an auth penalty per address and delays the next failure's answer
 * by 2^n seconds (at most 15); popgate does the same from [limits] auth_failure_delay, so
 * an address that reconnects for every guess slows down as fast as one that stays. A
 * delay only answers a failure later: the check of the credentials is the same, and a
 * right password is never refused because of a penalty.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "popgate-login"

#include "pg-login-private.h"

#include "popgate/pg-limits.h"
#include "popgate/pg-metrics.h"

typedef struct
{
  guint failures;
  gint64 last_us; /* monotonic: the last failure */
} PgLoginPenalty;

static GHashTable *pg_login_penalties = NULL; /* address (owned) → PgLoginPenalty (owned) */
static gint64 pg_login_global_minute_us = 0;  /* start of the current minute's count */
static guint pg_login_global_failures = 0;

static gboolean
pg_login_penalty_expired_cb (gpointer key, gpointer value, gpointer user_data)
{
  const PgLoginPenalty *penalty = value;
  const gint64 *now_us = user_data;

  return *now_us - penalty->last_us > (gint64) PG_LOGIN_PENALTY_EXPIRE_S * G_USEC_PER_SEC;
}

/* Room for one more address: expired ones go first, then the one idle longest. */
static void
pg_login_penalty_make_room (gint64 now_us)
{
  GHashTableIter iter;
  gpointer key, value;
  gpointer oldest = NULL;
  gint64 oldest_us = G_MAXINT64;

  g_hash_table_foreach_remove (pg_login_penalties, pg_login_penalty_expired_cb, &now_us);
  if (g_hash_table_size (pg_login_penalties) < PG_LOGIN_PENALTY_MAX_ADDRESSES)
    return;
  g_hash_table_iter_init (&iter, pg_login_penalties);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (((PgLoginPenalty *) value)->last_us < oldest_us)
      {
        oldest_us = ((PgLoginPenalty *) value)->last_us;
        oldest = key;
      }
  if (oldest != NULL)
    g_hash_table_remove (pg_login_penalties, oldest);
}

guint
pg_login_penalty_fail (const char *address, guint base_ms)
{
  gint64 now_us = g_get_monotonic_time ();
  PgLoginPenalty *penalty = NULL;
  guint64 delay_ms = base_ms;
  gboolean global = FALSE;

  if (pg_login_penalties == NULL)
    pg_login_penalties = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  if (now_us - pg_login_global_minute_us >= 60 * G_USEC_PER_SEC)
    {
      pg_login_global_minute_us = now_us;
      pg_login_global_failures = 0;
    }
  pg_login_global_failures++;
  if (address != NULL)
    {
      penalty = g_hash_table_lookup (pg_login_penalties, address);
      if (penalty != NULL
          && now_us - penalty->last_us > (gint64) PG_LOGIN_PENALTY_EXPIRE_S * G_USEC_PER_SEC)
        penalty->failures = 0;
      if (penalty == NULL)
        {
          if (g_hash_table_size (pg_login_penalties) >= PG_LOGIN_PENALTY_MAX_ADDRESSES)
            pg_login_penalty_make_room (now_us);
          penalty = g_new0 (PgLoginPenalty, 1);
          g_hash_table_insert (pg_login_penalties, g_strdup (address), penalty);
        }
      penalty->failures++;
      penalty->last_us = now_us;
      /* base × 2^(n−1): the shift is bounded long before it could overflow. */
      delay_ms = (guint64) base_ms << MIN (penalty->failures - 1, 16u);
    }
  if (pg_login_global_failures > PG_LOGIN_PENALTY_GLOBAL_PER_MINUTE && base_ms > 0)
    {
      delay_ms = PG_LOGIN_PENALTY_MAX_MS;
      global = TRUE;
    }
  delay_ms = MIN (delay_ms, (guint64) MAX (base_ms, PG_LOGIN_PENALTY_MAX_MS));
  if (delay_ms > base_ms)
    pg_metrics_login_penalty (global);
  return (guint) delay_ms;
}

void
pg_login_penalty_clear (const char *address)
{
  if (pg_login_penalties != NULL && address != NULL)
    g_hash_table_remove (pg_login_penalties, address);
}

void
pg_login_penalty_reset (void)
{
  g_clear_pointer (&pg_login_penalties, g_hash_table_unref);
  pg_login_global_minute_us = 0;
  pg_login_global_failures = 0;
}
