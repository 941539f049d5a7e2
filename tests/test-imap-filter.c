/* popgate — the IMAP relay filter and the one capability filter, fed whole and at every
 * split point: withheld capabilities never reach the client, withheld commands never
 * reach the upstream, literals pass untouched.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "popgate/pg-codec-imap-caps.h"
#include "src/imap/pg-imap-filter.h"

#include <string.h>

typedef struct
{
  GString *to_client;
  GString *withheld; /* "tag word\n" per withheld command */
  GString *commands; /* "tag word\n" per relayed command */
  guint responses;
} Sink;

static void
sink_command_cb (gpointer user_data, const PgImapRelayCommand *cmd)
{
  Sink *sink = user_data;
  g_string_append_printf (sink->commands, "%s %s\n", cmd->tag, cmd->word);
}

static gboolean
sink_withheld_cb (gpointer user_data, PgImapCapsCommand what, const PgImapRelayCommand *cmd)
{
  Sink *sink = user_data;
  g_string_append_printf (sink->withheld, "%s %s %d\n", cmd->tag, cmd->word, (int) what);
  return FALSE;
}

static void
sink_response_cb (gpointer user_data, const PgImapRelayCommand *resp)
{
  Sink *sink = user_data;
  sink->responses++;
}

static void
sink_to_client_cb (gpointer user_data, const guint8 *data, gsize len)
{
  Sink *sink = user_data;
  g_string_append_len (sink->to_client, (const char *) data, (gssize) len);
}

static const PgImapFilterFuncs sink_funcs = {
  .command = sink_command_cb,
  .withheld = sink_withheld_cb,
  .response = sink_response_cb,
  .to_client = sink_to_client_cb,
};

static void
test_caps_filter (void)
{
  g_autoptr (GString) out = g_string_new (NULL);
  static const char caps[] = "IMAP4rev1 STARTTLS AUTH=PLAIN auth=xoauth2 SASL-IR IDLE "
                             "COMPRESS=DEFLATE UNAUTHENTICATE LOGIN-REFERRALS LITERAL+ X\"Y";

  pg_imap_caps_filter (out, caps, strlen (caps), TRUE);
  g_assert_cmpstr (out->str, ==, "IMAP4rev1 IDLE LITERAL+");
  g_string_truncate (out, 0);
  /* Before login popgate's own STARTTLS, AUTH=PLAIN and SASL-IR stand. */
  pg_imap_caps_filter (out, caps, strlen (caps), FALSE);
  g_assert_cmpstr (out->str, ==,
                   "IMAP4rev1 STARTTLS AUTH=PLAIN auth=xoauth2 SASL-IR IDLE LITERAL+");
  g_assert_cmpint (pg_imap_caps_command_withheld ("UNAUTHENTICATE"), ==,
                   PG_IMAP_CAPS_COMMAND_UNAUTHENTICATE);
  g_assert_cmpint (pg_imap_caps_command_withheld ("UID FETCH"), ==, PG_IMAP_CAPS_COMMAND_RELAYED);
}

static void
test_caps_line (void)
{
  static const struct
  {
    const char *in;
    const char *out;
  } cases[] = {
    { "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\n",
      "* CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE\r\n" },
    { "* capability STARTTLS\r\n", "* capability IMAP4rev1 COMPRESS=DEFLATE\r\n" },
    { "* CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE\r\n" },
    { "a1 OK [CAPABILITY IMAP4rev1 UNAUTHENTICATE IDLE] Logged in\r\n",
      "a1 OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] Logged in\r\n" },
    { "* OK [CAPABILITY UNAUTHENTICATE]\r\n", "* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE]\r\n" },
    { "* ENABLED UTF8=ACCEPT COMPRESS=DEFLATE\r\n", "* ENABLED UTF8=ACCEPT\r\n" },
    { "* ENABLED UNAUTHENTICATE\r\n", "* ENABLED\r\n" },
    { "* OK [CAPABILITYX a] hi\r\n", NULL },
    { "* 1 FETCH (FLAGS ())\r\n", NULL },
    { "a OK done\r\n", NULL },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GString) out = g_string_new (NULL);
      gboolean rewritten
          = pg_imap_caps_rewrite_line (out, cases[i].in, strlen (cases[i].in), "COMPRESS=DEFLATE");

      g_assert_cmpint (rewritten, ==, cases[i].out != NULL);
      g_assert_cmpstr (out->str, ==, cases[i].out != NULL ? cases[i].out : cases[i].in);
      /* Every prefix gives MORE or the final verdict, never the other one. */
      for (gsize n = 0; n < strlen (cases[i].in); n++)
        {
          PgImapCapsLine m = pg_imap_caps_line_match (cases[i].in, n);
          g_assert_true (m == PG_IMAP_CAPS_LINE_MORE
                         || m == (rewritten ? PG_IMAP_CAPS_LINE_YES : PG_IMAP_CAPS_LINE_NO));
        }
    }
}

/* An upstream stream with capability lists in every form, one inside a literal (which
 * must pass untouched), fed in pieces split at `split` and then `step` octets each. */
static gchar *
run_upstream (const char *in, gsize split, gsize step)
{
  Sink sink = { g_string_new (NULL), g_string_new (NULL), g_string_new (NULL), 0 };
  g_autoptr (PgImapFilter) filter = pg_imap_filter_new (&sink_funcs, &sink, "COMPRESS=DEFLATE");
  gsize len = strlen (in);
  gsize pos = 0;

  while (pos < len)
    {
      gsize n = pos == 0 && split > 0 ? split : step > 0 ? step : len - pos;

      n = MIN (n, len - pos);
      g_assert_true (pg_imap_filter_upstream (filter, (const guint8 *) in + pos, n, NULL));
      pos += n;
    }
  g_assert_true (pg_imap_filter_at_response_boundary (filter));
  g_assert_cmpuint (sink.responses, ==, 6);
  g_string_free (sink.withheld, TRUE);
  g_string_free (sink.commands, TRUE);
  return g_string_free (sink.to_client, FALSE);
}

static void
test_upstream_stream (void)
{
  static const char in[] = "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"
                           "* 1 FETCH (BODY[] {50}\r\n"
                           "* CAPABILITY COMPRESS=DEFLATE\r\n"
                           "a OK [CAPABILITY)\r\n"
                           ")\r\n"
                           "* CAPABILITY IDLE UNAUTHENTICATE\r\n"
                           "a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] done\r\n"
                           "* ENABLED CONDSTORE COMPRESS=DEFLATE\r\n"
                           "+ idling\r\n";
  static const char expected[] = "* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] ready\r\n"
                                 "* 1 FETCH (BODY[] {50}\r\n"
                                 "* CAPABILITY COMPRESS=DEFLATE\r\n"
                                 "a OK [CAPABILITY)\r\n"
                                 ")\r\n"
                                 "* CAPABILITY IDLE COMPRESS=DEFLATE\r\n"
                                 "a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] done\r\n"
                                 "* ENABLED CONDSTORE\r\n"
                                 "+ idling\r\n";

  for (gsize split = 0; split < strlen (in); split++)
    {
      g_autofree gchar *got = run_upstream (in, split, 0);
      g_assert_cmpstr (got, ==, expected);
    }
  for (gsize step = 1; step < 8; step++)
    {
      g_autofree gchar *got = run_upstream (in, 0, step);
      g_assert_cmpstr (got, ==, expected);
    }
}

/* Client commands: withheld ones cut out wherever the chunks split them, the rest sent
 * on byte for byte (an APPEND literal that holds "UNAUTHENTICATE" included). */
static void
test_client_stream (void)
{
  static const char in[] = "a1 NOOP\r\n"
                           "a2 UNAUTHENTICATE\r\n"
                           "a3 APPEND INBOX {20+}\r\nb UNAUTHENTICATE\r\n\r\n\r\n"
                           "a4 compress DEFLATE\r\n"
                           "a5 UID FETCH 1 FLAGS\r\n"
                           "a6 STARTTLS\r\n"
                           "DONE\r\n"
                           /* The client waits for "+" here: nothing may follow. */
                           "a7 LOGIN {3}\r\n";
  static const char sent[] = "a1 NOOP\r\n"
                             "a3 APPEND INBOX {20+}\r\nb UNAUTHENTICATE\r\n\r\n\r\n"
                             "a5 UID FETCH 1 FLAGS\r\n"
                             "DONE\r\n";

  for (gsize split = 0; split <= strlen (in); split++)
    for (gsize step = 0; step < 4; step++)
      {
        Sink sink = { g_string_new (NULL), g_string_new (NULL), g_string_new (NULL), 0 };
        g_autoptr (PgImapFilter) filter = pg_imap_filter_new (&sink_funcs, &sink, NULL);
        g_autoptr (GString) upstream = g_string_new (NULL);
        guint8 buf[256];
        gsize held = 0;
        gsize pos = 0;
        gsize len = strlen (in);

        while (pos < len)
          {
            gsize n = pos == 0 && split > 0 ? split : step > 0 ? step : len - pos;
            gsize hold_off = 0, hold_len = 0, kept;
            gboolean stopped = TRUE;

            n = MIN (n, len - pos);
            memcpy (buf + held, in + pos, n);
            pos += n;
            kept = pg_imap_filter_client (filter, buf, held + n, &hold_off, &hold_len, &stopped);
            g_assert_false (stopped);
            g_string_append_len (upstream, (const char *) buf, (gssize) kept);
            memmove (buf, buf + hold_off, hold_len);
            held = hold_len;
          }
        g_assert_cmpuint (held, ==, 0);
        g_assert_cmpstr (upstream->str, ==, sent);
        g_assert_cmpstr (sink.withheld->str, ==,
                         "a2 UNAUTHENTICATE 3\na4 COMPRESS 4\na6 STARTTLS 2\na7 LOGIN 1\n");
        g_assert_cmpstr (sink.commands->str, ==, "a1 NOOP\na3 APPEND\na5 UID FETCH\nDONE \n");
        g_string_free (sink.to_client, TRUE);
        g_string_free (sink.withheld, TRUE);
        g_string_free (sink.commands, TRUE);
      }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/popgate/imap-filter/caps-filter", test_caps_filter);
  g_test_add_func ("/popgate/imap-filter/caps-line", test_caps_line);
  g_test_add_func ("/popgate/imap-filter/upstream-stream", test_upstream_stream);
  g_test_add_func ("/popgate/imap-filter/client-stream", test_client_stream);
  return g_test_run ();
}
