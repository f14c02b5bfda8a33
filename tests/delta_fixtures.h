/* delta_fixtures.h - pieces shared by the tests that build synthetic deltas on
 * the tiny golden models (test_compress.c, test_merge.c). Header-only, static:
 * each tests/test_*.c is its own binary and only testutil.c is linked into all. */
#ifndef CD_TEST_DELTA_FIXTURES_H
#define CD_TEST_DELTA_FIXTURES_H

#include "custom/delta.h"
#include "models/sd_model.h"
#include "test.h"

/* a golden tiny model (no VAE) by folder name; NULL when absent or unreadable */
/* golden model name without its VAE; NULL with test_msg set and
 * load_tiny_status 1 (skip: no golden folder) or -1 (fail) otherwise */
static int load_tiny_status;
static inline cd_sd_model *load_tiny(const char *name) {
  char path[1024];
  int g = test_golden_need(path, sizeof path, name);
  if (g) {
    load_tiny_status = g;
    return NULL;
  }
  cd_load_opts lo = {.no_vae = 1};
  cd_sd_model *m = NULL;
  if (cd_sd_load(path, &lo, &m)) {
    snprintf(test_msg, sizeof test_msg, "load %s: %s", path, cd_last_error());
    load_tiny_status = -1;
    return NULL;
  }
  return m;
}
/* after a load_tiny that gave NULL: skip or fail the test */
#define TINY_MISSING() GOLDEN_STATUS(load_tiny_status)

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
