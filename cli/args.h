/* args.h - the flag language of every cdiff subcommand, from one table per command.
 *
 *   static const cli_cmd cmd = {"sample", "--model PATH --prompt TEXT --out FILE.png|DIR [flags]"};
 *   const char *model = NULL; int steps = 30;
 *   cli_opt opts[] = {
 *       {"--model", CLI_STR, &model, "PATH", "checkpoint", "-m", CLI_REQUIRED},
 *       {"--steps", CLI_INT, &steps, "N", "sampling steps (default 30)", NULL, CLI_RANGE(1, 1000)},
 *       {0}};
 *   int r = cli_parse(argc, argv, opts, &cmd, NULL);
 *   if (r != CLI_GO) return r;   // 0 after --help, 2 after a usage error
 *
 * A flag is one table line: its spellings (name + space-separated aliases),
 * type, destination, metavar, help text and value checks (ranges of numbers,
 * CLI_CHOICES of strings). The help screen,
 * the usage-error line, the aliases and the docs test (tests/test_cli.c diffs
 * every command's --help against docs/cli.md) all come from that line.
 *
 * Language: `--flag value` and `--flag=value`; `--` ends the flags. Every
 * command also takes -h/--help (help on stdout, exit 0), -v/--verbose and
 * -t/--threads N. Numbers are strict: no trailing garbage, no NaN/inf, and
 * out-of-range values (CLI_MIN/CLI_MAX/...) are usage errors, so a zero or
 * nonsense value never silently becomes a default. A usage error prints
 * "cdiff CMD: FLAG why", then that flag's own help line, and exits 2.
 * CLI_SEED takes -1 for a random seed, which is chosen and printed here.
 */
#ifndef CD_CLI_ARGS_H
#define CD_CLI_ARGS_H

#include <stdint.h>
#include <stdio.h>

#include "core/common.h"

typedef enum { CLI_STR, CLI_INT, CLI_FLOAT, CLI_U64, CLI_SEED, CLI_FLAG, CLI_MULTI } cli_type;

#define CLI_MAX_MULTI 16
typedef struct {
  const char *v[CLI_MAX_MULTI];
  int n;
} cli_multi;

typedef struct {
  const char *name;  /* canonical spelling, "--steps" */
  cli_type type;
  void *dest;        /* const char**, int*, float*, uint64_t* (U64, SEED), int* (FLAG: set to 1), cli_multi* */
  const char *metavar;
  const char *help;
  const char *alias; /* other spellings, space-separated ("-s" or "-n --negative-prompt"), or NULL */
  /* value checks of numbers (given values only; defaults are not checked) */
  double lo, hi;
  unsigned char has_lo; /* 1: value >= lo; 2: value > lo */
  unsigned char has_hi; /* 1: value <= hi */
  unsigned char required;
  int seen;          /* set by cli_parse: how many times the flag was given */
  const char *choices; /* CLI_STR: the values allowed, '|'-separated (CLI_CHOICES), or NULL: any */
} cli_opt;

#define CLI_MIN(x) .lo = (x), .has_lo = 1
#define CLI_ABOVE(x) .lo = (x), .has_lo = 2
#define CLI_MAX(x) .hi = (x), .has_hi = 1
#define CLI_RANGE(a, b) CLI_MIN(a), CLI_MAX(b)
#define CLI_REQUIRED .required = 1
#define CLI_CHOICES(list) .choices = (list)

typedef struct {
  const char *name;     /* "sample" */
  const char *synopsis; /* what follows "usage: cdiff sample " */
} cli_cmd;

#define CLI_GO (-1)
#define CLI_EXIT_USAGE 2

/* Parses argv[0..argc) against opts (then the common flags); bare words go to
 * *positional (NULL: they are errors; a second one is an error). Returns CLI_GO
 * to carry on, 0 after printing --help to stdout, or 2 after a usage error.
 * On CLI_GO it has applied -v and -t and initialised the thread pools. */
int cli_parse(int argc, char **argv, cli_opt *opts, const cli_cmd *cmd, const char **positional);

/* For commands whose bare words are a list (images): copies argv's flags, with
 * the values of those that take one (per opts and the common flags), into
 * flags[] and the other words into words[] (both sized argc). Unknown flags go
 * to flags[] so that cli_parse names them. Returns the number of flags; *nwords
 * gets the number of words. After "--" everything is a word. */
int cli_split_words(int argc, char **argv, cli_opt *opts, char **flags, const char **words, int *nwords);

/* The help screen (usage line, then one line per flag). */
void cli_help(FILE *f, const cli_opt *opts, const cli_cmd *cmd);

/* A usage error found after parsing: "cdiff CMD: FLAG <message>" and the flag's
 * help line (flag may be NULL: then the usage line). Returns 2. */
int cli_error(const cli_opt *opts, const cli_cmd *cmd, const char *flag, const char *fmt, ...) CD_PRINTF(4, 5);

/* A usage error whose message (from a library check) names the flag: prints
 * "cdiff CMD: msg" and the help line of the first of the command's flags it
 * mentions. Returns 2. */
int cli_error_msg(const cli_opt *opts, const cli_cmd *cmd, const char *msg);

/* 1 if the flag (any spelling) was given on the command line. */
int cli_given(const cli_opt *opts, const char *flag);

/* "warning: FLAG has no effect <why>" when the flag was given. */
void cli_warn_unused(const cli_opt *opts, const char *flag, const char *why);

#endif
