/* class_images.c - generate the missing prior-preservation images (see class_images.h). */
#include "custom/class_images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/progress.h"
#include "custom/dataset.h"
#include "diffusion/pipeline.h"
#include "io/fsutil.h"
#include "io/image.h"

void cd_class_gen_opts_default(cd_class_gen_opts *o) {
  memset(o, 0, sizeof *o);
  o->n = 200;
  o->steps = 50;
  o->cfg = 6.0f;
  o->eta = 1.0f;
  o->res = 512;
  o->seed = 0;
}

static int generate_one(cd_sd_model *m, const cd_class_gen_opts *o, const char *path, uint64_t seed) {
  const int res = o->res;
  const int64_t h = res / 8, w = res / 8;
  cd_gen_opts g = {.prompt = o->prompt, .negative = "", .cfg = o->cfg, .width = res, .height = res, .n = 1, .quiet = 1};
  g.s.kind = CD_SAMPLER_DDIM;
  g.s.steps = o->steps;
  g.s.eta = o->eta;
  g.s.seed = seed;
  float *lat = cd_malloc(4 * h * w * sizeof(float)), *img = cd_malloc(3 * (size_t)res * res * sizeof(float));
  int rc = -1;
  if (!cd_generate_latents(m, &g, lat) && !cd_decode_latents(m, lat, 1, (int)h, (int)w, 0, img)) {
    char sseed[32], ssteps[16], scfg[32], seta[32];
    snprintf(sseed, sizeof sseed, "%llu", (unsigned long long)seed);
    snprintf(ssteps, sizeof ssteps, "%d", o->steps);
    snprintf(scfg, sizeof scfg, "%g", o->cfg);
    snprintf(seta, sizeof seta, "%g", o->eta);
    const char *kv[] = {"prompt", o->prompt, "negative_prompt", "", "seed", sseed, "sampler", "ddim", "steps", ssteps,
                        "cfg_scale", scfg, "eta", seta, "model_hash", m->hash, "software", "cdiff (class image)"};
    cd_image im;
    cd_chw_to_image(img, 3, res, res, &im);
    rc = cd_image_save_png(path, &im, kv, (int)(sizeof kv / sizeof kv[0]) / 2);
    cd_image_free(&im);
  }
  free(lat);
  free(img);
  return rc;
}

int cd_class_images_ensure(cd_sd_model *m, const cd_class_gen_opts *o, int *generated) {
  if (generated) *generated = 0;
  if (!o->prompt || !*o->prompt) return cd_set_error("class images for %s: no class prompt to generate them from", o->dir);
  if (o->n < 0 || o->steps < 1 || o->res <= 0 || o->res % 8)
    return cd_set_error("class images: bad options (n %d, steps %d, resolution %d)", o->n, o->steps, o->res);
  if (cd_mkdir_p(o->dir)) return -1;
  int have;
  if (cd_count_images(o->dir, &have)) return -1;
  if (have >= o->n) return 0;
  int need = o->n - have, made = 0;
  cd_log("class images: %s has %d of %d, generating %d for \"%s\"\n", o->dir, have, o->n, need, o->prompt);
  cd_progress bar;
  cd_progress_start(&bar, "class images", need);
  if (o->quiet) bar.quiet = 1;
  /* index i <-> class_%05d.png <-> seed + i; existing names are skipped, so a
   * restarted generation fills exactly the gaps an interruption left */
  for (int i = 0; made < need; i++) {
    char path[2048];
    snprintf(path, sizeof path, "%s/class_%05d.png", o->dir, i);
    if (cd_file_exists(path)) continue;
    if (generate_one(m, o, path, o->seed + (uint64_t)i)) {
      cd_progress_finish(&bar);
      return cd_prefix_error("generating class image %s", path);
    }
    made++;
    if (generated) *generated = made;
    cd_progress_update(&bar, made);
  }
  cd_progress_finish(&bar);
  return 0;
}
