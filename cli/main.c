/* main.c - cdiff: Custom Diffusion in C. Dispatches to the subcommands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "core/common.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} cmds[] = {
    {"sample", cmd_sample, "generate images (txt2img) with an SD 1.x/2.x checkpoint and optional deltas"},
    {"train", cmd_train, "Custom Diffusion fine-tuning of one or several concepts"},
    {"merge", cmd_merge, "closed-form merge of concepts trained apart"},
    {"compress", cmd_compress, "low-rank (SVD) compression of a delta"},
    {"info", cmd_info, "describe a checkpoint: family, prediction, parameters, dtypes"},
    {"tokenize", cmd_tokenize, "print the CLIP token ids of a text"},
};

static void usage(void) {
  fprintf(stderr, "cdiff - Custom Diffusion in C\nusage: cdiff <command> [flags]   (cdiff <command> --help for its flags)\n\n");
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) fprintf(stderr, "  %-10s %s\n", cmds[i].name, cmds[i].help);
  fprintf(stderr, "\nenvironment: CDIFF_THREADS (CPU threads), CDIFF_VOCAB (CLIP vocabulary for single-file checkpoints), CDIFF_QUIET\n");
}

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  if (getenv("CDIFF_VERBOSE")) cd_verbose = 1;
  cd_threads_init();
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 2, argv + 2);
  fprintf(stderr, "cdiff: unknown command '%s'\n\n", argv[1]);
  usage();
  return 2;
}
