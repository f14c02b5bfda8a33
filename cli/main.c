/* main.c - cdiff: Custom Diffusion in C. Dispatches to the subcommands. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "core/common.h"
#include "dist/dist.h"

/* The Makefile writes build/git_commit.h (CD_GIT_COMMIT) from `git rev-parse --short HEAD`. */
#if defined(__has_include)
#if __has_include("git_commit.h")
#include "git_commit.h"
#endif
#endif
#ifndef CD_GIT_COMMIT
#define CD_GIT_COMMIT "unknown"
#endif
#define CDIFF_VERSION "0.1.0"

extern char *openblas_get_config(void) __attribute__((weak));
extern char *openblas_get_corename(void) __attribute__((weak));

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} cmds[] = {
    {"sample", cmd_sample, "generate images (txt2img, img2img) with an SD 1.x/2.x checkpoint and optional deltas"},
    {"train", cmd_train, "Custom Diffusion fine-tuning of one or several concepts"},
    {"merge", cmd_merge, "closed-form merge of concepts trained apart"},
    {"compress", cmd_compress, "low-rank (SVD) compression of a delta"},
    {"info", cmd_info, "describe a checkpoint, a delta or a PNG's parameters"},
    {"tokenize", cmd_tokenize, "print the CLIP token ids of a text"},
    {"pretrain", cmd_pretrain, "train cdiff's own small model on the synthetic world (docs/world.md)"},
    {"world", cmd_world, "render scenes of the synthetic world (PNGs + captions)"},
    {"grid", cmd_grid, "tile images into one PNG"},
    {"judge", cmd_judge, "train or run the world judge (attributes of world images)"},
    {"eval", cmd_eval, "score generations of a prompt set with the world judge"},
};

static void usage(FILE *f) {
  fprintf(f, "cdiff %s - Custom Diffusion in C\nusage: cdiff <command> [flags]   (cdiff <command> --help for its flags)\n\n",
          CDIFF_VERSION);
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) fprintf(f, "  %-10s %s\n", cmds[i].name, cmds[i].help);
  fprintf(f, "\n  --version  version, git commit, backend and BLAS\n"
             "\nenvironment: CDIFF_THREADS (CPU threads), CDIFF_VOCAB (CLIP vocabulary for single-file checkpoints),\n"
             "             CDIFF_QUIET (no progress bars), CDIFF_VERBOSE, CDIFF_PROFILE\n"
             "exit status: 0 done, 1 failed, 2 usage error\n");
}

static int version(void) {
  printf("cdiff %s\ncommit %s\nbackend cpu (%d threads)\n", CDIFF_VERSION, CD_GIT_COMMIT, cd_threads());
  if (openblas_get_config) {
    const char *core = openblas_get_corename ? openblas_get_corename() : NULL;
    printf("BLAS %s%s%s\n", openblas_get_config(), core ? ", core " : "", core ? core : "");
  } else {
    printf("BLAS unknown (not OpenBLAS)\n");
  }
  return fflush(stdout) == 0 ? 0 : 1;
}

static int run(int argc, char **argv);

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  /* under mpirun/srun every rank runs the same command (make MPI=1); alone it is rank 0 of 1 */
  if (cd_dist_init(&argc, &argv)) {
    fprintf(stderr, "cdiff: %s\n", cd_last_error());
    return 1;
  }
  cd_silent = cd_dist_world_rank() != 0;
  /* the ranks on a node share its cores unless CDIFF_THREADS (or --threads) says otherwise */
  if (cd_dist_local_size() > 1 && !getenv("CDIFF_THREADS")) {
    cpu_set_t set;
    long online = sysconf(_SC_NPROCESSORS_ONLN), mine = sched_getaffinity(0, sizeof set, &set) ? online : CPU_COUNT(&set);
    long n = online / cd_dist_local_size();
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", n < 1 ? 1 : n > mine ? mine : n);
    setenv("CDIFF_THREADS", buf, 1);
  }
  /* only `train` shares its work over ranks; any other command runs on rank 0
   * alone (the others would repeat it and write the same files) */
  int rc = 0;
  if (cd_dist_world_size() > 1 && (argc < 2 || strcmp(argv[1], "train"))) {
    if (cd_dist_world_rank() == 0) {
      cd_warn("only `cdiff train` is distributed: this command runs on rank 0, the other %d rank(s) wait", cd_dist_world_size() - 1);
      rc = run(argc, argv);
    }
  } else {
    rc = run(argc, argv);
  }
  cd_dist_finalize();
  return rc;
}

static int run(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (getenv("CDIFF_VERBOSE")) cd_verbose = 1;
  const char *c = argv[1];
  if (!strcmp(c, "--version") || !strcmp(c, "version")) return version();
  if (!strcmp(c, "help") && argc > 2) { /* cdiff help CMD = cdiff CMD --help */
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
      if (!strcmp(argv[2], cmds[i].name)) {
        char *h[] = {"--help", NULL};
        return cmds[i].fn(1, h);
      }
  }
  if (!strcmp(c, "help") || !strcmp(c, "--help") || !strcmp(c, "-h")) {
    usage(stdout);
    return fflush(stdout) == 0 ? 0 : 1;
  }
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (!strcmp(c, cmds[i].name)) return cmds[i].fn(argc - 2, argv + 2);
  fprintf(stderr, "cdiff: unknown command '%s'\n\n", c);
  usage(stderr);
  return 2;
}
