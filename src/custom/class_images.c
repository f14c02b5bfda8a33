/* class_images.c - generate the missing prior-preservation images (see class_images.h). */
#include "custom/class_images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/progress.h"
#include "custom/dataset.h"
#include "diffusion/pipeline.h"
#include "dist/dist.h"
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

/* the prompt of class image index i */
static const char *prompt_of(const cd_class_gen_opts *o, int i) {
  return o->nprompts > 0 ? o->prompts[i % o->nprompts] : o->prompt;
}

/* Image `seed` of prompt, as 8-bit RGB. */
static int render_one(cd_sd_model *m, const cd_class_gen_opts *o, const char *prompt, uint64_t seed, uint8_t *rgb) {
  const int res = o->res;
  const int64_t h = res / 8, w = res / 8;
  cd_gen_opts g = {.prompt = prompt, .negative = "", .cfg = o->cfg, .width = res, .height = res, .n = 1, .quiet = 1};
  g.s.kind = CD_SAMPLER_DDIM;
  g.s.steps = o->steps;
  g.s.eta = o->eta;
  g.s.seed = seed;
  float *lat = cd_malloc(4 * h * w * sizeof(float)), *img = cd_malloc(3 * (size_t)res * res * sizeof(float));
  int rc = -1;
  if (!cd_generate_latents(m, &g, lat) && !cd_decode_latents(m, lat, 1, (int)h, (int)w, 0, img)) {
    cd_image im;
    cd_chw_to_image(img, 3, res, res, &im);
    memcpy(rgb, im.px, (size_t)res * res * 3);
    cd_image_free(&im);
    rc = 0;
  }
  free(lat);
  free(img);
  return rc;
}

/* path, written atomically, with the generation parameters as PNG text */
static int save_one(cd_sd_model *m, const cd_class_gen_opts *o, const char *prompt, const char *path, uint64_t seed,
                    uint8_t *rgb) {
  char sseed[32], ssteps[16], scfg[32], seta[32];
  snprintf(sseed, sizeof sseed, "%llu", (unsigned long long)seed);
  snprintf(ssteps, sizeof ssteps, "%d", o->steps);
  snprintf(scfg, sizeof scfg, "%g", o->cfg);
  snprintf(seta, sizeof seta, "%g", o->eta);
  const char *kv[] = {"prompt", prompt, "negative_prompt", "", "seed", sseed, "sampler", "ddim", "steps", ssteps,
                      "cfg_scale", scfg, "eta", seta, "model_hash", m->hash, "software", "cdiff (class image)"};
  cd_image im = {.w = o->res, .h = o->res, .c = 3, .px = rgb};
  return cd_image_save_png(path, &im, kv, (int)(sizeof kv / sizeof kv[0]) / 2);
}

/* Under MPI (src/dist) the missing images are shared by the ranks in rounds:
 * in round k rank r renders missing image k*size + r, rank 0 gathers the
 * pixels and writes the files. An image depends only on its index (seed + i),
 * so the folder is byte for byte the one a single process makes; every rank
 * returns the same status (the failures are agreed on). */
int cd_class_images_ensure(cd_sd_model *m, const cd_class_gen_opts *o, int *generated) {
  if (generated) *generated = 0;
  if ((!o->prompt || !*o->prompt) && o->nprompts < 1)
    return cd_set_error("class images for %s: no class prompt to generate them from", o->dir);
  for (int i = 0; i < o->nprompts; i++)
    if (!o->prompts[i] || !*o->prompts[i]) return cd_set_error("class images for %s: class prompt %d is empty", o->dir, i + 1);
  if (o->n < 0 || o->steps < 1 || o->res <= 0 || o->res % 8)
    return cd_set_error("class images: bad options (n %d, steps %d, resolution %d)", o->n, o->steps, o->res);
  const int rank = cd_dist_rank(), size = cd_dist_size();
  /* rank 0 finds the gaps (index i <-> class_%05d.png <-> seed + i; existing
   * names are skipped, so a restarted generation fills exactly the gaps an
   * interruption left) and tells the others */
  int need = 0, have = 0;
  int *todo = NULL;
  int rc = 0;
  if (rank == 0) {
    rc = cd_mkdir_p(o->dir) || cd_count_images(o->dir, &have) ? -1 : 0;
    if (!rc && have < o->n) {
      need = o->n - have;
      todo = cd_malloc((size_t)need * sizeof(int));
      for (int i = 0, k = 0; k < need; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/class_%05d.png", o->dir, i);
        if (!cd_file_exists(path)) todo[k++] = i;
      }
    }
  }
  if (cd_dist_agree(rc == 0) || cd_dist_bcast(&need, sizeof need, 0)) {
    free(todo);
    return -1;
  }
  if (!need) return 0;
  if (rank) todo = cd_malloc((size_t)need * sizeof(int));
  if (cd_dist_bcast(todo, (size_t)need * sizeof(int), 0)) {
    free(todo);
    return -1;
  }
  if (o->nprompts > 0)
    cd_log("class images: %s has %d of %d, generating %d from %d class prompts (\"%s\", ...)%s\n", o->dir, o->n - need, o->n,
           need, o->nprompts, o->prompts[0], size > 1 ? " (shared by the ranks)" : "");
  else
    cd_log("class images: %s has %d of %d, generating %d for \"%s\"%s\n", o->dir, o->n - need, o->n, need, o->prompt,
           size > 1 ? " (shared by the ranks)" : "");
  cd_progress bar;
  cd_progress_start(&bar, "class images", need);
  if (o->quiet) bar.quiet = 1;
  const size_t px = (size_t)o->res * o->res * 3;
  uint8_t *mine = cd_calloc(px, 1), *all = rank == 0 ? cd_malloc(px * size) : NULL;
  int made = 0;
  for (int base = 0; base < need && !rc; base += size) {
    const int j = base + rank;
    int ok = j >= need || !render_one(m, o, prompt_of(o, todo[j]), o->seed + (uint64_t)todo[j], mine);
    if (!ok) cd_prefix_error("generating class image %s/class_%05d.png", o->dir, todo[j]);
    if (cd_dist_agree(ok) || cd_dist_gather(mine, px, all)) {
      rc = -1;
      break;
    }
    for (int q = 0; rank == 0 && q < size && base + q < need && !rc; q++) {
      char path[2048];
      const int idx = todo[base + q];
      const char *p = prompt_of(o, idx);
      /* the caption first: an image on disk always has its caption (a caption
       * left without its image by an interruption is rewritten next time) */
      if (o->nprompts > 0) {
        char cap[2048];
        snprintf(path, sizeof path, "%s/class_%05d.txt", o->dir, idx);
        int len = snprintf(cap, sizeof cap, "%s\n", p);
        if (len < 0 || len >= (int)sizeof cap) rc = cd_set_error("class prompt %d is longer than %d bytes", idx % o->nprompts + 1, (int)sizeof cap - 2);
        else if (cd_write_file_atomic(path, cap, (size_t)len)) rc = cd_prefix_error("writing class caption %s", path);
        if (rc) break;
      }
      snprintf(path, sizeof path, "%s/class_%05d.png", o->dir, idx);
      if (save_one(m, o, p, path, o->seed + (uint64_t)idx, all + q * px)) rc = cd_prefix_error("writing class image %s", path);
      else made++;
    }
    if (cd_dist_agree(rc == 0)) rc = -1; /* rank 0's write failure stops every rank */
    if (generated) *generated = made;
    cd_progress_update(&bar, CD_MIN(base + size, need));
  }
  cd_progress_finish(&bar);
  /* rank 0 checks that the folder now holds the set */
  if (!rc && rank == 0) {
    int now = 0;
    if (cd_count_images(o->dir, &now)) rc = -1;
    else if (now < o->n) rc = cd_set_error("class images: %s holds %d images after generation, expected %d", o->dir, now, o->n);
  }
  if (cd_dist_agree(rc == 0)) rc = -1;
  free(mine);
  free(all);
  free(todo);
  return rc;
}
