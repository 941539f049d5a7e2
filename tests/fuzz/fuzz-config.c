/* Fuzz target: the config loader. The input is a whole config file given to
 * pg_config_load_data(); it must never crash, leak or log a critical. Errors are fine, but
 * every error must be PG_ERROR_CONFIG with a message, and never come with a config.
 *
 * File paths in the input are resolved against the current directory and are stat()ed and
 * read like in popgate (regular files only): inputs naming /dev, /proc or /sys are skipped
 * so that no run depends on the machine's special files.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-config.h"
#include "popgate/pg-core.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Larger than any sensible config file; GKeyFile's cost grows with the input. */
#define PG_FUZZ_CONFIG_MAX_INPUT (64 * 1024)

static GLogWriterOutput
pg_fuzz_config_log_writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields,
                           gpointer user_data)
{
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
    abort ();
  return G_LOG_WRITER_HANDLED;
}

static gboolean
pg_fuzz_config_names_special_file (const uint8_t *data, size_t size)
{
  static const char *const prefixes[] = { "/dev", "/proc", "/sys" };

  for (gsize i = 0; i < G_N_ELEMENTS (prefixes); i++)
    if (memmem (data, size, prefixes[i], strlen (prefixes[i])) != NULL)
      return TRUE;
  return FALSE;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static gboolean initialised = FALSE;
  g_autoptr (GError) error = NULL;
  g_autoptr (PgConfig) config = NULL;

  if (!initialised)
    {
      g_log_set_writer_func (pg_fuzz_config_log_writer, NULL, NULL);
      initialised = TRUE;
    }
  if (size > PG_FUZZ_CONFIG_MAX_INPUT || pg_fuzz_config_names_special_file (data, size))
    return 0;

  config = pg_config_load_data ((const char *) data, size, "fuzz.conf", &error);
  if (config == NULL)
    {
      if (error == NULL || error->message == NULL || error->message[0] == '\0')
        abort ();
      if (error->domain != PG_ERROR || error->code != PG_ERROR_CONFIG)
        abort ();
      return 0;
    }
  if (error != NULL)
    abort ();
  /* A loaded config is usable: look a few names up in the accounts file, and take and drop
   * a reference as a reload does. */
  {
    static const char *const logins[] = { "", "alice", "alice@example.com", "bob#laptop" };

    for (gsize i = 0; i < G_N_ELEMENTS (logins); i++)
      {
        const PgAccount *account = pg_config_find_account (config, logins[i]);
        if (account != NULL)
          (void) pg_config_account_check (account, "not-the-password");
      }
    pg_config_unref (pg_config_ref (config));
  }
  return 0;
}
