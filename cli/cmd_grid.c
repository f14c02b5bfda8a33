/* cmd_grid.c - cdiff grid: tiles PNG/JPEG images (same size) into one PNG,
 * row by row, with a 2-pixel white gap: before/after comparisons. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "io/image.h"

#define GAP 2

int cmd_grid(int argc, char **argv) {
  const char *out = NULL;
  int cols = 0;
  cli_opt opts[] = {
      {"--out", CLI_STR, &out, "FILE.png", "the grid (required)", NULL, CLI_REQUIRED},
      {"--cols", CLI_INT, &cols, "N", "images per row (default: all in one row)"},
      {0}};
  /* the images are the bare words */
  const char **pos = cd_calloc((size_t)argc + 1, sizeof *pos);
  char **rest = cd_calloc((size_t)argc + 1, sizeof *rest);
  int np = 0, nr = cli_split_words(argc, argv, opts, rest, pos, &np);
  int rc = 2;
  static const cli_cmd cmd = {"grid", "--out FILE.png [--cols N] IMAGE..."};
  int pr = cli_parse(nr, rest, opts, &cmd, NULL);
  if (pr != CLI_GO) { rc = pr; goto done; }
  if (np == 0) { rc = cli_error(opts, &cmd, NULL, "at least one image is required"); goto done; }
  if (cols <= 0 || cols > np) cols = np;
  int rows = (np + cols - 1) / cols;
  cd_image first = {0}, g = {0};
  rc = 1;
  if (cd_image_load(pos[0], &first)) { fprintf(stderr, "cdiff grid: %s\n", cd_last_error()); goto done; }
  int w = first.w, h = first.h;
  cd_image_free(&first);
  g.w = cols * w + (cols - 1) * GAP;
  g.h = rows * h + (rows - 1) * GAP;
  g.c = 3;
  g.px = cd_malloc((size_t)g.w * g.h * 3);
  memset(g.px, 255, (size_t)g.w * g.h * 3);
  for (int i = 0; i < np; i++) {
    cd_image im;
    if (cd_image_load(pos[i], &im)) { fprintf(stderr, "cdiff grid: %s\n", cd_last_error()); cd_image_free(&g); goto done; }
    if (im.w != w || im.h != h) {
      fprintf(stderr, "cdiff grid: %s is %dx%d, the first image %dx%d\n", pos[i], im.w, im.h, w, h);
      cd_image_free(&im);
      cd_image_free(&g);
      goto done;
    }
    int x0 = (i % cols) * (w + GAP), y0 = (i / cols) * (h + GAP);
    for (int y = 0; y < h; y++) memcpy(g.px + ((size_t)(y0 + y) * g.w + x0) * 3, im.px + (size_t)y * w * 3, (size_t)w * 3);
    cd_image_free(&im);
  }
  if (cd_image_save_png(out, &g, NULL, 0)) { fprintf(stderr, "cdiff grid: %s\n", cd_last_error()); cd_image_free(&g); goto done; }
  cd_image_free(&g);
  rc = 0;
done:
  free(pos);
  free(rest);
  return rc;
}
