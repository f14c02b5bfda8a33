/* delta_fixtures.h - pieces shared by the tests that build synthetic deltas on
 * the tiny golden models (test_compress.c, test_merge.c). Header-only, static:
 * each tests/test_*.c is its own binary and only testutil.c is linked into all. */
#ifndef CD_TEST_DELTA_FIXTURES_H
#define CD_TEST_DELTA_FIXTURES_H

#include "custom/delta.h"
#include "models/sd_model.h"
#include "test.h"

/* a golden tiny model (no VAE) by folder name; NULL when absent or unreadable */
static inline cd_sd_model *load_tiny(const char *name) {
  char path[1024];
  if (test_golden_path(path, sizeof path, name)) return NULL;
  cd_load_opts lo = {.no_vae = 1};
  cd_sd_model *m = NULL;
  if (cd_sd_load(path, &lo, &m)) {
    fprintf(stderr, "load %s: %s\n", path, cd_last_error());
    return NULL;
  }
  return m;
}

/* a cross-attention K or V projection: what Custom Diffusion trains */
static inline int is_kv(const char *s) { return strstr(s, ".attn2.to_k.weight") || strstr(s, ".attn2.to_v.weight"); }

/* the delta's base-model fields as training on m sets them; train names what was trained */
static inline void delta_set_base(cd_delta *d, const cd_sd_model *m, const char *train) {
  d->family = m->family;
  d->ctx = m->unet.cfg.context_dim;
  snprintf(d->base_hash, sizeof d->base_hash, "%s", m->hash);
  snprintf(d->train, sizeof d->train, "%s", train);
}

#endif
