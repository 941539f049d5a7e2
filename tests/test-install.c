/* Tests of what popgate installs: popgate.conf(5) documents exactly the keys of
 * data/popgate.conf.example (so neither drifts), and `meson install --destdir` puts the
 * binary, the units, the example config and the man pages where a distribution would.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-test-util.h"
#include "popgate/pg-config.h"

#include <glib/gstdio.h>
#include <string.h>

/* "group\nkey" for every key of the example, set or commented out ("#key = value"). */
static GHashTable *
pg_test_install_example_keys (void)
{
  g_autofree gchar *path
      = g_test_build_filename (G_TEST_DIST, "..", "data", "popgate.conf.example", NULL);
  g_autofree gchar *text = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GRegex) group_re = g_regex_new ("^\\[([a-z0-9]+)\\]", 0, 0, NULL);
  g_autoptr (GRegex) key_re = g_regex_new ("^#?([a-z0-9_]+) = ", 0, 0, NULL);
  g_auto (GStrv) lines = NULL;
  g_autofree gchar *group = NULL;
  GHashTable *keys = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  g_file_get_contents (path, &text, NULL, &error);
  g_assert_no_error (error);
  lines = g_strsplit (text, "\n", -1);
  for (gsize i = 0; lines[i] != NULL; i++)
    {
      g_autoptr (GMatchInfo) match = NULL;

      if (g_regex_match (group_re, lines[i], 0, &match))
        {
          g_free (group);
          group = g_match_info_fetch (match, 1);
          continue;
        }
      g_clear_pointer (&match, g_match_info_free);
      if (group != NULL && g_regex_match (key_re, lines[i], 0, &match))
        {
          g_autofree gchar *key = g_match_info_fetch (match, 1);
          g_hash_table_add (keys, g_strdup_printf ("%s\n%s", group, key));
        }
    }
  return keys;
}

/* The same from the man page source: "## [group]" sections, "*key* = ..." entries. */
static GHashTable *
pg_test_install_man_keys (void)
{
  g_autofree gchar *path
      = g_test_build_filename (G_TEST_DIST, "..", "data", "popgate.conf.5.scd", NULL);
  g_autofree gchar *text = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GRegex) group_re = g_regex_new ("^## \\[([a-z0-9]+)\\]$", 0, 0, NULL);
  g_autoptr (GRegex) key_re = g_regex_new ("^\\*([a-z0-9_]+)\\* = ", 0, 0, NULL);
  g_auto (GStrv) lines = NULL;
  g_autofree gchar *group = NULL;
  GHashTable *keys = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  g_file_get_contents (path, &text, NULL, &error);
  g_assert_no_error (error);
  lines = g_strsplit (text, "\n", -1);
  for (gsize i = 0; lines[i] != NULL; i++)
    {
      g_autoptr (GMatchInfo) match = NULL;

      if (g_str_has_prefix (lines[i], "#"))
        {
          /* Any other heading ends the key reference. */
          g_clear_pointer (&group, g_free);
          if (g_regex_match (group_re, lines[i], 0, &match))
            group = g_match_info_fetch (match, 1);
          continue;
        }
      if (group != NULL && g_regex_match (key_re, lines[i], 0, &match))
        {
          g_autofree gchar *key = g_match_info_fetch (match, 1);
          g_hash_table_add (keys, g_strdup_printf ("%s\n%s", group, key));
        }
    }
  return keys;
}

/* Every key in a but not in b, as "[group] key" lines. */
static gchar *
pg_test_install_missing (GHashTable *a, GHashTable *b)
{
  g_autoptr (GString) out = g_string_new (NULL);
  GHashTableIter iter;
  gpointer key;

  g_hash_table_iter_init (&iter, a);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    {
      if (!g_hash_table_contains (b, key))
        {
          g_auto (GStrv) parts = g_strsplit (key, "\n", 2);
          g_string_append_printf (out, "[%s] %s; ", parts[0], parts[1]);
        }
    }
  return g_string_free (g_steal_pointer (&out), FALSE);
}

static void
test_install_man_keys (void)
{
  g_autoptr (GHashTable) example = pg_test_install_example_keys ();
  g_autoptr (GHashTable) man = pg_test_install_man_keys ();
  g_autofree gchar *undocumented = pg_test_install_missing (example, man);
  g_autofree gchar *not_in_example = pg_test_install_missing (man, example);

  /* Both parsers found something: a format change cannot make this pass vacuously. */
  g_assert_cmpuint (g_hash_table_size (example), >=, 38);
  g_assert_true (g_hash_table_contains (example, "proxy\ntrusted"));
  g_assert_true (g_hash_table_contains (man, "upstream\nhost"));
  g_assert_cmpstr (undocumented, ==, "");
  g_assert_cmpstr (not_in_example, ==, "");

  /* And every key the docs name is one the config loader accepts. */
  {
    GHashTableIter iter;
    gpointer key;
    g_autoptr (GString) unknown = g_string_new ("");

    g_hash_table_iter_init (&iter, example);
    while (g_hash_table_iter_next (&iter, &key, NULL))
      {
        g_auto (GStrv) parts = g_strsplit (key, "\n", 2);

        if (!pg_config_is_known_key (parts[0], parts[1]))
          g_string_append_printf (unknown, " [%s] %s", parts[0], parts[1]);
      }
    g_test_message ("documented but unknown to the loader:%s", unknown->str);
    g_assert_cmpstr (unknown->str, ==, "");
  }
}

/* Every file a document links to (markdown "](path)", or a path the example config
 * names in a comment like "(README.md, ...)" or "docs/x.md") exists in the tree. */
static void
test_install_doc_links (void)
{
  static const char *const docs[] = { "README.md", "bench/README.md", "data/popgate.conf.example",
                                      "data/popgate.8.scd", "data/popgate.conf.5.scd" };
  g_autoptr (GRegex) link_re = NULL;
  g_autoptr (GError) error = NULL;
  guint checked = 0;

  link_re = g_regex_new ("\\]\\(([^)#: ]+)\\)|(?<![\\w/.-])((?:docs|data|bench|tests|scripts)/"
                         "[A-Za-z0-9_./-]*[A-Za-z0-9_])",
                         0, 0, &error);
  g_assert_no_error (error);
  for (gsize d = 0; d < G_N_ELEMENTS (docs); d++)
    {
      g_autofree gchar *path = g_test_build_filename (G_TEST_DIST, "..", docs[d], NULL);
      g_autofree gchar *dir = g_path_get_dirname (path);
      g_autofree gchar *text = NULL;
      g_autoptr (GMatchInfo) match = NULL;

      g_file_get_contents (path, &text, NULL, &error);
      g_assert_no_error (error);
      g_regex_match (link_re, text, 0, &match);
      while (g_match_info_matches (match))
        {
          g_autofree gchar *rel = g_match_info_fetch (match, 1);
          g_autofree gchar *top = g_match_info_fetch (match, 2);
          /* A markdown link is relative to its document; a bare tree path to the top. */
          g_autofree gchar *target = rel != NULL && rel[0] != '\0'
                                         ? g_build_filename (dir, rel, NULL)
                                         : g_test_build_filename (G_TEST_DIST, "..", top, NULL);

          if (!g_file_test (target, G_FILE_TEST_EXISTS))
            g_error ("%s links to %s, which does not exist", docs[d],
                     rel != NULL && rel[0] != '\0' ? rel : top);
          checked++;
          g_match_info_next (match, NULL);
        }
    }
  g_test_message ("%u links checked", checked);
  g_assert_cmpuint (checked, >, 3);
}

static void
test_install_destdir (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *destdir = g_dir_make_tmp ("popgate-install-XXXXXX", &error);
  const char *build_root = g_getenv ("PG_BUILD_ROOT");
  const char *installed = g_getenv ("PG_INSTALLED");
  g_autofree gchar *output = NULL;
  g_auto (GStrv) expected = NULL;
  static const char *const suffixes[] = {
    "/sbin/popgate",
    "/lib/systemd/system/popgate.service",
    "/lib/systemd/system/popgate.socket",
    "/lib/systemd/system/popgate-pop3s.socket",
    "/lib/systemd/system/popgate-imap.socket",
    "/lib/systemd/system/popgate-imaps.socket",
    "/share/doc/popgate/popgate.conf.example",
    "/man/man8/popgate.8",
    "/man/man5/popgate.conf.5",
  };

  g_assert_no_error (error);
  g_assert_nonnull (build_root);
  g_assert_nonnull (installed);
  {
    const char *argv[] = { "meson",   "install",   "-C",    build_root, "--no-rebuild",
                           "--quiet", "--destdir", destdir, NULL };
    pg_test_run (argv, NULL, 60000, &output, &error);
    g_assert_no_error (error);
  }

  /* Each file is where the build says, and that is where a distribution puts it. */
  expected = g_strsplit (installed, ":", -1);
  g_assert_cmpuint (g_strv_length (expected), ==, G_N_ELEMENTS (suffixes));
  for (gsize i = 0; expected[i] != NULL; i++)
    {
      g_autofree gchar *path = g_build_filename (destdir, expected[i], NULL);

      g_test_message ("installed: %s", expected[i]);
      g_assert_true (g_str_has_suffix (expected[i], suffixes[i]));
      g_assert_true (g_file_test (path, G_FILE_TEST_IS_REGULAR));
      if (i == 0)
        g_assert_true (g_file_test (path, G_FILE_TEST_IS_EXECUTABLE));
    }

  /* The installed service runs the installed binary with the installed config. */
  {
    g_autofree gchar *service_path = g_build_filename (destdir, expected[1], NULL);
    g_autofree gchar *service = NULL;
    g_autofree gchar *exec = g_strdup_printf ("\nExecStart=%s --config ", expected[0]);

    g_file_get_contents (service_path, &service, NULL, &error);
    g_assert_no_error (error);
    g_assert_nonnull (strstr (service, exec));
    g_assert_nonnull (strstr (service, "/popgate/popgate.conf\n"));

    /* The config is checked before start and before a reload, as nginx's unit does. */
    {
      g_autofree gchar *pre = g_strdup_printf ("\nExecStartPre=%s --config ", expected[0]);
      g_autofree gchar *reload = g_strdup_printf ("\nExecReload=%s --config ", expected[0]);
      const char *line = strstr (service, pre);

      g_assert_nonnull (line);
      g_assert_nonnull (strstr (line + 1, " --check"));
      g_assert_nonnull (strstr (service, reload));
    }

    /* ConfigurationDirectory= creates /etc/popgate: the unit names it exactly when that
     * is where it reads the config (so --prefix=/usr/local does not create one directory
     * and read another). */
    {
      gboolean in_etc = strstr (service, " --config /etc/popgate/popgate.conf") != NULL;
      gboolean creates_etc = strstr (service, "\nConfigurationDirectory=popgate\n") != NULL;

      g_test_message ("config in /etc: %d, ConfigurationDirectory: %d", in_etc, creates_etc);
      g_assert_cmpint (in_etc, ==, creates_etc);
    }
  }

  /* The installed units load the way the manager would load them (systemd-analyze
   * verify). It checks that each Exec command exists, and the installed binary is in the
   * destdir, not yet at its final path: point the commands there, change nothing else. */
  {
    g_autofree gchar *units = g_build_filename (destdir, "verify", NULL);
    g_autofree gchar *bin = g_build_filename (destdir, expected[0], NULL);
    g_autofree gchar *replacement = g_strdup_printf ("\\1%s ", bin);
    g_autoptr (GRegex) exec
        = g_regex_new ("^(Exec[A-Za-z]*=)\\S*/popgate ", G_REGEX_MULTILINE, 0, &error);
    g_autoptr (GPtrArray) argv = g_ptr_array_new_with_free_func (g_free);
    g_autofree gchar *verify_output = NULL;
    int rc = -1;

    g_assert_no_error (error);
    g_assert_cmpint (g_mkdir (units, 0700), ==, 0);
    g_ptr_array_add (argv, g_strdup ("systemd-analyze"));
    g_ptr_array_add (argv, g_strdup ("verify"));
    g_ptr_array_add (argv, g_strdup ("--man=no"));
    for (gsize i = 1; i <= 5; i++)
      {
        g_autofree gchar *installed_unit = g_build_filename (destdir, expected[i], NULL);
        g_autofree gchar *base = g_path_get_basename (expected[i]);
        g_autofree gchar *copy = g_build_filename (units, base, NULL);
        g_autofree gchar *text = NULL;
        g_autofree gchar *patched = NULL;

        g_file_get_contents (installed_unit, &text, NULL, &error);
        g_assert_no_error (error);
        patched = g_regex_replace (exec, text, -1, 0, replacement, 0, &error);
        g_assert_no_error (error);
        g_file_set_contents (copy, patched, -1, &error);
        g_assert_no_error (error);
        g_ptr_array_add (argv, g_steal_pointer (&copy));
      }
    g_ptr_array_add (argv, NULL);
    g_assert_true (pg_test_run_status ((const char *const *) argv->pdata, NULL, 60000, &rc,
                                       &verify_output, &error));
    g_assert_no_error (error);
    g_test_message ("systemd-analyze verify (installed units): rc %d: %s", rc, verify_output);
    g_assert_cmpint (rc, ==, 0);
    g_assert_cmpstr (verify_output != NULL ? verify_output : "", ==, "");
  }

  /* The man pages are roff that starts with their title. */
  {
    g_autofree gchar *man_path = g_build_filename (destdir, expected[8], NULL);
    g_autofree gchar *man = NULL;

    g_file_get_contents (man_path, &man, NULL, &error);
    g_assert_no_error (error);
    g_assert_nonnull (strstr (man, ".TH \"popgate.conf\" \"5\""));
    g_assert_nonnull (strstr (man, "proxy_protocol"));
  }
  g_assert_true (pg_test_rm_rf (destdir));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/install/man-keys", test_install_man_keys);
  g_test_add_func ("/popgate/install/destdir", test_install_destdir);
  g_test_add_func ("/popgate/install/doc-links", test_install_doc_links);
  return g_test_run ();
}
