/* Fuzz target: the accounts file ([accounts] file). The input is the whole file; it is
 * written (mode 0600) next to a password file and a refresh-token file and loaded through
 * a config with a password upstream and two OAuth2 upstreams. It must never crash, leak or
 * log; an error must be PG_ERROR_CONFIG naming the file, and a loaded config must answer
 * lookups and secret checks.
 *
 * Inputs with a '/' are skipped: a credential path then names files outside the
 * target's own directory, and no run may depend on the machine's files.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"

#include <glib/gstdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* An accounts file is a line per user; more than this says nothing new per run. */
#define PG_FUZZ_ACCOUNTS_MAX_INPUT (16 * 1024)

static gchar *pg_fuzz_accounts_dir = NULL;

static GLogWriterOutput
pg_fuzz_accounts_log_writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields,
                             gpointer user_data)
{
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
    abort ();
  return G_LOG_WRITER_HANDLED;
}

static void
pg_fuzz_accounts_remove_file (const char *name)
{
  g_autofree gchar *path = g_build_filename (pg_fuzz_accounts_dir, name, NULL);

  (void) g_unlink (path);
}

static void
pg_fuzz_accounts_cleanup (void)
{
  pg_fuzz_accounts_remove_file ("accounts");
  pg_fuzz_accounts_remove_file ("pw");
  pg_fuzz_accounts_remove_file ("tok");
  (void) g_rmdir (pg_fuzz_accounts_dir);
  g_clear_pointer (&pg_fuzz_accounts_dir, g_free);
}

static void
pg_fuzz_accounts_write (const char *name, const void *data, gsize size)
{
  g_autofree gchar *path = g_build_filename (pg_fuzz_accounts_dir, name, NULL);

  if (!g_file_set_contents_full (path, data, (gssize) size, G_FILE_SET_CONTENTS_CONSISTENT, 0600,
                                 NULL))
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;
  g_autofree gchar *text = NULL;

  if (pg_fuzz_accounts_dir == NULL)
    {
      g_log_set_writer_func (pg_fuzz_accounts_log_writer, NULL, NULL);
      pg_fuzz_accounts_dir = g_dir_make_tmp ("popgate-fuzz-accounts-XXXXXX", NULL);
      if (pg_fuzz_accounts_dir == NULL)
        abort ();
      atexit (pg_fuzz_accounts_cleanup);
      pg_fuzz_accounts_write ("pw", "upstream-secret\n", 16);
      pg_fuzz_accounts_write ("tok", "refresh-token\n", 14);
    }
  if (size > PG_FUZZ_ACCOUNTS_MAX_INPUT || memchr (data, '/', size) != NULL)
    return 0;
  pg_fuzz_accounts_write ("accounts", data, size);
  text = g_strdup_printf ("[upstream]\nhost = h\n"
                          "[upstream:o]\nhost = h\nauth = oauth2\noauth2_token_url = "
                          "https://t/\noauth2_client_id = c\n"
                          "[upstream:c]\nhost = h\nauth = oauth2\noauth2_token_url = "
                          "https://t/\noauth2_client_id = c\noauth2_grant = "
                          "client_credentials\n"
                          "[pop3]\nlisten = 127.0.0.1:1110\n[accounts]\nfile = %s/accounts\n",
                          pg_fuzz_accounts_dir);
  config = pg_config_load_data (text, strlen (text), "fuzz.conf", &error);
  if (config == NULL)
    {
      if (error == NULL || error->domain != PG_ERROR || error->code != PG_ERROR_CONFIG
          || strstr (error->message, "[accounts] file: ") == NULL)
        abort ();
      return 0;
    }
  if (error != NULL)
    abort ();
  {
    static const char *const users[] = { "", "alice", "u", "bob#tag", "x" };

    for (gsize i = 0; i < G_N_ELEMENTS (users); i++)
      {
        const PgAccount *account = pg_config_find_account (config, users[i]);

        if (account == NULL)
          continue;
        if (account->upstream == NULL || account->local_user == NULL
            || account->upstream_user == NULL
            || (account->credential == PG_CREDENTIAL_PASSWORD) != (account->password != NULL)
            || (account->credential == PG_CREDENTIAL_OAUTH2) != (account->token_file != NULL))
          abort ();
        (void) pg_config_account_check (account, "not-the-secret");
      }
  }
  return 0;
}
