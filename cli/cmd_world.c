/* cmd_world.c - cdiff world: renders scenes of the synthetic world (src/world)
 * as PNGs with their captions: pretraining samples, the held-out concepts'
 * instance images, or labelled data for the judge. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "world/world.h"

int cmd_world(int argc, char **argv) {
  const char *out = NULL, *mode_s = "pretrain", *new_toy = NULL, *new_pattern = NULL, *new_toy2 = NULL,
             *pat_colours = NULL;
  int n = 8, caption_files = 0;
  uint64_t seed = 1;
  cli_opt opts[] = {
      {"--out", CLI_STR, &out, "DIR", "output folder: 0000.png ... and captions.txt (required)", NULL, CLI_REQUIRED},
      {"--mode", CLI_STR, &mode_s, "M", "pretrain (default), toy (the held-out <new1> toy), pattern (the held-out <new2> pattern), pattern-scenes (that pattern as the background of pretraining objects), toy2 (the held-out <new3> toy), any, sprites (generic part-built objects: the autoencoder's extra data)"},
      {"--n", CLI_INT, &n, "N", "number of scenes (default 8)", NULL, CLI_RANGE(1, 100000)},
      {"--seed", CLI_U64, &seed, "N", "seed (default 1)"},
      {"--toy-word", CLI_STR, &new_toy, "W", "caption word of the held-out toy (default \"robot\", e.g. \"<new1>\")"},
      {"--toy2-word", CLI_STR, &new_toy2, "W", "caption word of the held-out second toy (default \"duck\", e.g. \"<new3>\")"},
      {"--pattern-word", CLI_STR, &new_pattern, "W", "caption word of the held-out pattern (default \"zigzag\", e.g. \"<new2>\")"},
      {"--pattern-colours", CLI_STR, &pat_colours, "LIST", "--mode pattern|pattern-scenes: the held-out pattern in these colours, image i in the (i mod n)-th, e.g. green,blue,red (default: its own green)"},
      {"--caption-files", CLI_FLAG, &caption_files, "", "also write each image's caption beside it (0000.txt ...): the per-image captions cdiff train --images reads"},
      {0}};
  static const cli_cmd cmd = {"world", "--out DIR [--mode pretrain|toy|pattern|pattern-scenes|toy2|any|sprites] [--n N] [--seed N]"};
  int pr = cli_parse(argc, argv, opts, &cmd, NULL);
  if (pr != CLI_GO) return pr;
  cd_world_mode mode;
  if (!strcmp(mode_s, "pretrain")) mode = CD_WORLD_PRETRAIN;
  else if (!strcmp(mode_s, "toy")) mode = CD_WORLD_NEW_TOY;
  else if (!strcmp(mode_s, "pattern")) mode = CD_WORLD_NEW_PATTERN;
  else if (!strcmp(mode_s, "pattern-scenes")) mode = CD_WORLD_NEW_PATTERN_SCENES;
  else if (!strcmp(mode_s, "toy2")) mode = CD_WORLD_NEW_TOY2;
  else if (!strcmp(mode_s, "any")) mode = CD_WORLD_ANY;
  else if (!strcmp(mode_s, "sprites")) mode = CD_WORLD_SPRITES;
  else { fprintf(stderr, "cdiff world: --mode %s: expected pretrain, toy, pattern, pattern-scenes, toy2, any or sprites\n", mode_s); return 2; }
  int pcol[CD_WORLD_NCOLOURS * 4], npcol = 0; /* --pattern-colours, in order (repeats allowed) */
  if (pat_colours) {
    if (mode != CD_WORLD_NEW_PATTERN && mode != CD_WORLD_NEW_PATTERN_SCENES) {
      return cli_error(opts, &cmd, "--pattern-colours", "needs --mode pattern or pattern-scenes (got %s)", mode_s);
    }
    for (const char *p = pat_colours;;) {
      size_t k = strcspn(p, ",");
      char w[32];
      snprintf(w, sizeof w, "%.*s", (int)(k < sizeof w ? k : sizeof w - 1), p);
      int c = k < sizeof w ? cd_world_colour_index(w) : -1;
      if (c < 0 || npcol == (int)(sizeof pcol / sizeof pcol[0])) {
        return cli_error(opts, &cmd, "--pattern-colours", "'%.*s' in '%s' is not one of red, orange, yellow, green, "
                         "blue, purple, white, black%s", (int)k, p, pat_colours, c < 0 ? "" : " (or the list is too long)");
      }
      pcol[npcol++] = c;
      if (!p[k]) break;
      p += k + 1;
    }
  }
  if (cd_mkdir_p(out)) { fprintf(stderr, "cdiff world: %s\n", cd_last_error()); return 1; }
  float *px = cd_malloc(3 * CD_WORLD_RES * CD_WORLD_RES * sizeof(float));
  char *caps = NULL;
  size_t ncaps = 0;
  FILE *cf = open_memstream(&caps, &ncaps);
  cd_rng r;
  cd_rng_seed(&r, seed);
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    cd_world_scene s;
    cd_world_sample(&r, mode, &s);
    if (npcol) cd_world_set_pattern_colour(&r, &s, pcol[i % npcol]);
    cd_world_render(&s, px);
    char cap[256], path[4096], name[32];
    cd_world_names nm = {.toy = new_toy, .pattern = new_pattern, .toy2 = new_toy2};
    if (cd_world_caption_names(&s, &nm, cap, sizeof cap) < 0) { rc = cd_set_error("caption too long"); break; }
    snprintf(name, sizeof name, "%04d.png", i);
    snprintf(path, sizeof path, "%s/%s", out, name);
    cd_image img;
    cd_chw_to_image(px, 3, CD_WORLD_RES, CD_WORLD_RES, &img);
    const char *kv[] = {"prompt", cap};
    rc = cd_image_save_png(path, &img, kv, 1);
    cd_image_free(&img);
    if (!rc && caption_files) {
      char line[260];
      int len = snprintf(line, sizeof line, "%s\n", cap);
      snprintf(path, sizeof path, "%s/%04d.txt", out, i);
      rc = cd_write_file_atomic(path, line, (size_t)len);
    }
    /* ground truth for the judge: bg colour, pattern, object count, then kind and colour of each object */
    fprintf(cf, "%s\t%s\t%d\t%d\t%d", name, cap, s.bg_colour, s.pattern, s.nobj);
    for (int k = 0; k < s.nobj; k++) fprintf(cf, "\t%d\t%d", s.sprites ? -1 : s.obj[k].kind, s.obj[k].colour); /* a sprite has no kind */
    fputc('\n', cf);
  }
  fclose(cf);
  char cpath[4096];
  snprintf(cpath, sizeof cpath, "%s/captions.txt", out);
  if (!rc) rc = cd_write_file_atomic(cpath, caps, ncaps);
  free(caps);
  free(px);
  if (rc) { fprintf(stderr, "cdiff world: %s\n", cd_last_error()); return 1; }
  return 0;
}
