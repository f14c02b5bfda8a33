/* cmd_judge.c - cdiff judge: trains the world-attribute classifier
 * (src/world/judge.h) on rendered ground truth, or reads images with it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "io/image.h"
#include "world/judge.h"

int cmd_judge(int argc, char **argv) {
  const char *judge = "models/world-judge.safetensors", *out = NULL;
  int train = 0, steps = 1500, batch = 32;
  float lr = 2e-3f;
  uint64_t seed = 1;
  cli_opt opts[] = {
      {"--train", CLI_FLAG, &train, "", "train a judge from scratch into --out"},
      {"--out", CLI_STR, &out, "FILE", "where --train writes the judge (.safetensors)"},
      {"--steps", CLI_INT, &steps, "N", "training steps (default 1500)"},
      {"--batch", CLI_INT, &batch, "N", "images per step (default 32)"},
      {"--lr", CLI_FLOAT, &lr, "X", "peak learning rate (default 2e-3)"},
      {"--seed", CLI_U64, &seed, "N", "seed of the weights and the images (default 1)"},
      {"--judge", CLI_STR, &judge, "FILE", "the judge that reads images (default models/world-judge.safetensors)"},
      {0}};
  /* images are the bare words */
  const char **pos = cd_calloc((size_t)argc + 1, sizeof *pos);
  char **rest = cd_calloc((size_t)argc + 1, sizeof *rest);
  int np = 0, rc = 2, nr = cli_split_words(argc, argv, opts, rest, pos, &np);
  static const cli_cmd cmd = {"judge", "--train --out FILE [--steps N] | [--judge FILE] IMAGE..."};
  int pr = cli_parse(nr, rest, opts, &cmd, NULL);
  if (pr != CLI_GO) { rc = pr; goto done; }
  if (train) {
    if (!out) { fprintf(stderr, "cdiff judge: --train needs --out FILE\n"); goto done; }
    if (steps < 1 || batch < 1 || !(lr > 0)) { fprintf(stderr, "cdiff judge: --steps, --batch and --lr must be positive\n"); goto done; }
    cd_judge *j;
    cd_judge_new(seed, &j);
    cd_judge_accuracy acc;
    rc = 1;
    if (cd_judge_train(j, steps, batch, lr, seed, getenv("CDIFF_QUIET") != NULL) || cd_judge_test(j, 1000, seed + 1000003, &acc) ||
        cd_judge_save(j, out)) {
      fprintf(stderr, "cdiff judge: %s\n", cd_last_error());
      cd_judge_free(j);
      goto done;
    }
    printf("judge %s: on 1000 fresh images, kinds %.1f%%, object colours %.1f%%, background %.1f%%, pattern %.1f%% exactly right; "
           "%.1f%% of the objects' kinds seen; robot toy seen in %.1f%% of the images with one, %.1f%% of those without; "
           "duck toy %.1f%% and %.1f%%\n",
           out, 100 * acc.kinds, 100 * acc.colours, 100 * acc.bg, 100 * acc.pattern, 100 * acc.kind_recall, 100 * acc.robot_hit,
           100 * acc.robot_false, 100 * acc.duck_hit, 100 * acc.duck_false);
    cd_judge_free(j);
    rc = 0;
    goto done;
  }
  if (!np) { fprintf(stderr, "cdiff judge: give images to read, or --train --out FILE\n"); goto done; }
  cd_judge *j;
  rc = 1;
  if (cd_judge_load(judge, &j)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); goto done; }
  for (int i = 0; i < np; i++) {
    cd_image im;
    float px[3 * CD_WORLD_RES * CD_WORLD_RES];
    if (cd_image_load(pos[i], &im)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); cd_judge_free(j); goto done; }
    if (im.w != CD_WORLD_RES || im.h != CD_WORLD_RES) {
      fprintf(stderr, "cdiff judge: %s is %dx%d, the judge reads %dx%d images\n", pos[i], im.w, im.h, CD_WORLD_RES, CD_WORLD_RES);
      cd_image_free(&im);
      cd_judge_free(j);
      goto done;
    }
    cd_image_to_chw(&im, px);
    cd_image_free(&im);
    cd_judge_verdict v;
    if (cd_judge_classify(j, px, 1, &v)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); cd_judge_free(j); goto done; }
    printf("%s:", pos[i]);
    for (int k = 0; k < CD_WORLD_NKINDS; k++)
      if (v.kind[k]) printf(" %s", cd_world_kind_name(k));
    printf(" | colours");
    for (int k = 0; k < CD_WORLD_NCOLOURS; k++)
      if (v.colour[k]) printf(" %s", cd_world_colour_name(k));
    printf(" | background %s %s\n", cd_world_colour_name(v.bg), cd_world_pattern_name(v.pattern));
  }
  cd_judge_free(j);
  rc = 0;
done:
  free(pos);
  free(rest);
  return rc;
}
