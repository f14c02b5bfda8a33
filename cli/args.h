/* args.h - declarative flag parsing for the cdiff subcommands.
 *
 *   const char *model = NULL; int steps = 30;
 *   cli_opt opts[] = {{"--model", CLI_STR, &model, "PATH", "checkpoint"},
 *                     {"--steps", CLI_INT, &steps, "N", "sampling steps"}, {0}};
 *   if (cli_parse(argc, argv, opts, "sample")) return 2;
 *
 * Unknown flags, missing values and malformed numbers are errors naming the flag.
 */
#ifndef CD_CLI_ARGS_H
#define CD_CLI_ARGS_H

#include <stdint.h>

typedef enum { CLI_STR, CLI_INT, CLI_FLOAT, CLI_U64, CLI_FLAG, CLI_MULTI } cli_type;

#define CLI_MAX_MULTI 16
typedef struct {
  const char *v[CLI_MAX_MULTI];
  int n;
} cli_multi;

typedef struct {
  const char *name;
  cli_type type;
  void *dest;        /* const char**, int*, float*, uint64_t*, int* (flag: set to 1), cli_multi* */
  const char *metavar;
  const char *help;
} cli_opt;

/* Parses argv[0..argc): flags from opts; bare words go to *positional (may be NULL:
 * then they are errors). Returns 0, or -1 after printing the error. */
int cli_parse(int argc, char **argv, cli_opt *opts, const char *cmd, const char **positional);
void cli_usage(const cli_opt *opts, const char *cmd, const char *synopsis);

#endif
