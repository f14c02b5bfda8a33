/* test_gen_random.c - tools/gen_sd_random writes loadable checkpoints of the
 * SD architectures in both layouts: same weights (same hash) either way, for
 * SD 1.x and SD 2.x, and the UNet runs. (--tiny: small widths, same structure.) */
#include <sys/wait.h>

#include "io/fsutil.h"
#include "models/sd_model.h"
#include "test.h"

static void family_case(const char *family) {
  const char *gen = test_build_path("tools/gen_sd_random");
  if (access(gen, X_OK)) FAILF("%s was not built", gen);
  char dir[256], cmd[1024], folder[300], single[300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir(family));
  if (cd_mkdir_p(dir)) FAILF("%s", cd_last_error());
  snprintf(folder, sizeof folder, "%s/model", dir);
  snprintf(single, sizeof single, "%s/model.safetensors", dir);
  snprintf(cmd, sizeof cmd, "'%s' --tiny --family %s --seed 3 --out %s --single-file %s >/dev/null 2>&1",
           gen, family, folder, single);
  int st = system(cmd);
  cd_sd_model *a = NULL, *b = NULL;
  cd_load_opts lo = {0};
  int ok = st == 0 && !cd_sd_load(folder, &lo, &a) && !cd_sd_load(single, &lo, &b);
  char err[512];
  snprintf(err, sizeof err, "%s", ok ? "" : cd_last_error());
  int same = ok && !strcmp(a->hash, b->hash) && a->family == b->family && a->sched.pred == b->sched.pred;
  int fam = ok && a->family == (!strcmp(family, "sd2") ? CD_FAMILY_SD2 : CD_FAMILY_SD1);
  /* one UNet evaluation is finite */
  int finite = 0;
  if (ok) {
    cd_graph *g = cd_graph_new();
    cd_node *x = cd_input(g, "x", 4, (int64_t[]){1, 4, 8, 8}), *t = cd_input(g, "t", 1, (int64_t[]){1});
    cd_node *c = cd_input(g, "c", 3, (int64_t[]){1, 77, b->unet.cfg.context_dim});
    cd_node *y = cd_unet_build(g, &b->unet, NULL, x, t, c);
    cd_graph_output(g, y);
    if (!cd_graph_plan(g, NULL)) {
      test_fill_uniform(x->data, x->n, -1, 1, 1);
      test_fill_uniform(c->data, c->n, -1, 1, 2);
      t->data[0] = 500;
      finite = !cd_graph_forward(g);
      for (int64_t i = 0; finite && i < y->n; i++) finite = isfinite(y->data[i]);
    }
    cd_graph_free(g);
  }
  cd_sd_free(a);
  cd_sd_free(b);
  test_rmtree(dir);
  CHECKF(ok, "generate/load %s: %s", family, err);
  CHECK(same);
  CHECK(fam);
  CHECK(finite);
}

TEST(sd1_both_layouts) { family_case("sd1"); }
TEST(sd2_both_layouts) { family_case("sd2"); }

int main(void) {
  RUN(sd1_both_layouts);
  RUN(sd2_both_layouts);
  test_tmp_cleanup();
  return test_summary();
}
