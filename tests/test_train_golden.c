/* test_train_golden.c - one and two Custom Diffusion steps against the golden
 * step of diffusers' train_custom_diffusion.py (golden README section 4):
 * noising, target, prediction, loss terms, every K/V gradient, the new token's
 * gradient, the clipped AdamW update. The engine's AdamW/clipping op must also
 * equal the former host implementation (kept here) bit for bit on both steps. */
#include <cjson/cJSON.h>

#include "custom/train.h"
#include "engine/optim.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

/* The trainer's clipped AdamW as it ran on the host before it moved into the
 * engine (kept verbatim as the reference the engine op must match bit for
 * bit): state of every parameter in host arrays. */
typedef struct {
  int64_t n;
  float *data, *grad, *m, *v;
} host_param;

static int host_adamw_update(host_param *p, int np, const cd_train_opts *o, int *step, double *norm, double *clip) {
  double total = 0;
  for (int i = 0; i < np; i++)
    for (int64_t k = 0; k < p[i].n; k++) total += (double)p[i].grad[k] * p[i].grad[k];
  total = sqrt(total);
  if (!isfinite(total)) return -1;
  double coef = o->max_grad_norm / (total + 1e-6);
  if (coef > 1) coef = 1;
  (*step)++;
  const double lr = o->lr, b1 = o->beta1, b2 = o->beta2, eps = o->eps;
  const double bc1 = 1 - pow(b1, *step), bc2 = 1 - pow(b2, *step);
  const double decay = 1 - lr * o->weight_decay, step_size = lr / bc1, sbc2 = sqrt(bc2);
  for (int i = 0; i < np; i++) {
    host_param *q = &p[i];
    #pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < q->n; k++) {
      double g = q->grad[k] * coef;
      double m = b1 * q->m[k] + (1 - b1) * g, v = b2 * q->v[k] + (1 - b2) * g * g;
      q->m[k] = (float)m;
      q->v[k] = (float)v;
      double x = q->data[k] * decay;
      x -= step_size * m / (sqrt(v) / sbc2 + eps);
      q->data[k] = (float)x;
    }
  }
  *norm = total;
  *clip = coef;
  return 0;
}

/* Frozen weights held in 16 bits (the trained K/V and new rows stay f32):
 * every weight of 2+ dims is rounded to nearest, relative error uniform in
 * [-u, u] (u = 2^-11 f16, 2^-8 bf16, rms u/sqrt(3)). As in test_models.c,
 * the L reads of 16-bit weights perturb values independently, adding in
 * quadrature, and a factor 4 covers the gain to the loss; a gradient passes
 * each such layer twice (forward and backward), so it counts 2L:
 * xtol = 4 u sqrt(2L/3), added to every tolerance. The AdamW update check
 * (step sizes from gradient signs) is left to the f32 run; the bit-exact
 * comparison of the engine's step with the host reference runs in all. */
static const char *wdtype; /* NULL: the checkpoint's own (f32 here) */
static double xtol;

typedef struct {
  cd_sd_model *m;
  cd_tensor_file *gf;
  cd_trainer tr;
  float *pix, *mask, *noise;
  int ids[4 * 77], ts[4];
  char layers[32][128];
  int nl;
  char model[64];
  double grad_tol; /* grad_tol_for: the README's 1e-3, or more where GroupNorm is ill-conditioned */
  host_param *hp;  /* the host reference's state, one per trainer parameter */
  int hstep;
} fixture;

static void fx_free(fixture *f) {
  for (int i = 0; f->hp && i < f->tr.np; i++) {
    free(f->hp[i].data); free(f->hp[i].grad); free(f->hp[i].m); free(f->hp[i].v);
  }
  free(f->hp);
  cd_trainer_free(&f->tr);
  cd_sd_free(f->m);
  cd_tensor_file_close(f->gf);
  free(f->pix); free(f->mask); free(f->noise);
}

/* returns 1 = skip (no golden folder), 0 = ok, -1 = fail (test_msg set) */
static int fx_open(fixture *f, const char *model, const char *golden) {
  memset(f, 0, sizeof *f);
  snprintf(f->model, sizeof f->model, "%s", model);
  char mp[1024], gp[1024];
  int g = test_golden_need(mp, sizeof mp, model);
  if (!g) g = test_golden_need(gp, sizeof gp, golden);
  if (g) return g;
  cd_load_opts lo = {.weights_dtype = wdtype};
  if (cd_sd_load(mp, &lo, &f->m) || cd_safetensors_open(gp, &f->gf)) {
    snprintf(test_msg, sizeof test_msg, "%s: %s", model, cd_last_error());
    return -1;
  }
  int64_t n;
  if (!(f->pix = test_read_f32(f->gf, "cd.pixel_values", &n)) || !(f->mask = test_read_f32(f->gf, "cd.mask", &n)) ||
      !(f->noise = test_read_f32(f->gf, "cd.noise", &n)))
    return -1;
  int64_t v[4 * 77];
  cd_tf_read_i64(f->gf, cd_tf_find(f->gf, "cd.input_ids"), v);
  for (int i = 0; i < 4 * 77; i++) f->ids[i] = (int)v[i];
  cd_tf_read_i64(f->gf, cd_tf_find(f->gf, "cd.timesteps"), v);
  for (int i = 0; i < 4; i++) f->ts[i] = (int)v[i];
  cJSON *j = cJSON_Parse(cd_tf_meta(f->gf, "cd.kv_layers"));
  cJSON *it;
  cJSON_ArrayForEach(it, j) if (f->nl < 32) snprintf(f->layers[f->nl++], 128, "%s", it->valuestring);
  cJSON_Delete(j);
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.batch = 2;
  o.prior = 1;
  o.res = 64;
  o.lr = 1e-3f;
  o.sample_latents = 0;
  o.ntok = 1; /* <new1> = id 49408, from the row of "ktn" (42170), as the golden run */
  if (cd_sd_add_tokens(f->m, 1, (const char *[]){"<new1>"}, (int[]){42170}, NULL, o.tok_id) || cd_trainer_init(&f->tr, f->m, &o)) {
    snprintf(test_msg, sizeof test_msg, "%s: trainer: %s", model, cd_last_error());
    return -1;
  }
  return 0;
}

static int param(fixture *f, const char *name) {
  for (int i = 0; i < f->tr.np; i++)
    if (!strcmp(f->tr.p[i].name, name)) return i;
  return -1;
}

/* host copy of parameter i's state (freed by the caller) */
static float *pstate(fixture *f, int i, cd_optim_what what) {
  float *x = cd_malloc(f->tr.p[i].n * sizeof(float));
  if (cd_optim_read(f->tr.opt, i, what, x)) {
    free(x);
    return NULL;
  }
  return x;
}

/* The engine's AdamW step against the host reference, bit for bit: values and
 * both moments of every parameter, the norm and the clipping factor. */
static int check_bitwise(fixture *f, double norm, double clip) {
  double hn, hc;
  if (host_adamw_update(f->hp, f->tr.np, &f->tr.o, &f->hstep, &hn, &hc)) {
    snprintf(test_msg, sizeof test_msg, "%s: host reference: gradient not finite", f->model);
    return -1;
  }
  if (memcmp(&hn, &norm, sizeof hn) || memcmp(&hc, &clip, sizeof hc) || f->hstep != f->tr.step) {
    snprintf(test_msg, sizeof test_msg, "%s: engine norm %.17g clip %.17g step %d, host %.17g %.17g %d", f->model, norm, clip,
             f->tr.step, hn, hc, f->hstep);
    return -1;
  }
  for (int i = 0; i < f->tr.np; i++) {
    const cd_optim_what what[] = {CD_OPTIM_VALUE, CD_OPTIM_M, CD_OPTIM_V};
    const float *ref[] = {f->hp[i].data, f->hp[i].m, f->hp[i].v};
    for (int k = 0; k < 3; k++) {
      float *x = pstate(f, i, what[k]);
      int same = x && !memcmp(x, ref[k], f->tr.p[i].n * sizeof(float));
      free(x);
      if (!same) {
        snprintf(test_msg, sizeof test_msg, "%s %s: engine AdamW %s differs from the host reference", f->model, f->tr.p[i].name,
                 k == 0 ? "value" : k == 1 ? "m" : "v");
        return -1;
      }
    }
  }
  return 0;
}

static int near_scalar(fixture *f, const char *name, double x, double tol) {
  int64_t n;
  float *r = test_read_f32(f->gf, name, &n);
  if (!r) return -1;
  tol += xtol;
  double e = fabs(x - r[0]) / fabs(r[0]);
  if (e > tol) snprintf(test_msg, sizeof test_msg, "%s %s: %.7g vs golden %.7g (rel %.2g)", f->model, name, x, r[0], e);
  free(r);
  return e > tol ? -1 : 0;
}

static int near_array(fixture *f, const char *name, const float *x, int64_t nx, double tol) {
  int64_t n;
  float *r = test_read_f32(f->gf, name, &n);
  if (!r) return -1;
  tol += xtol;
  double e = n == nx ? test_rel_err(x, r, n) : 1e9;
  if (getenv("CDIFF_TEST_VERBOSE")) printf("  %s %s %s: %.3g of %.3g\n", wdtype ? wdtype : "f32", f->model, name, e, tol);
  if (e > tol) snprintf(test_msg, sizeof test_msg, "%s %s: rel err %.3g > %.3g", f->model, name, e, tol);
  free(r);
  return e > tol ? -1 : 0;
}

/* AdamW updates are about lr*sign(g) at step 1 and a ratio of moments at
 * step 2, so where the golden gradient is tiny (below 1e-3 of its RMS; our
 * float32 gradient error is ~1e-3 relative) sign and size are ill-defined:
 * such elements are counted, must be rare, and are left out. Of the others
 * at most 0.5% may be off by more than 5*tol*lr (a gradient entry within its
 * float32 error of 0 flips sign: ill-conditioned gradients have a few); the
 * rest must match in relative L2 within tol. */
static int check_update(fixture *f, const char *after_name, const char *grad_name, const float *before, const float *now, int64_t n, double lr,
                        double tol) {
  int64_t k;
  double tiny_frac = 1e-3;
  float *ga = test_read_f32(f->gf, after_name, &k), *gg = test_read_f32(f->gf, grad_name, &k);
  if (!ga || !gg) { free(ga); free(gg); return -1; }
  float *gb = NULL; /* golden values before this step (step 2: golden after step 1) */
  if (!strncmp(grad_name, "cd.step2.", 9)) {
    /* At step 2, compare update against update: our step-1 result may differ
     * on elements whose step-1 gradient was tiny, and those stay excluded.
     * What decides sign and size now is the first moment 0.9*c1*g1 + c2*g2. */
    char g1n[256], a1n[256];
    snprintf(g1n, sizeof g1n, "cd.%s", grad_name + 9);
    snprintf(a1n, sizeof a1n, "cd.%s", after_name + 9);
    float *g1 = test_read_f32(f->gf, g1n, &k), *c1 = test_read_f32(f->gf, "cd.clip_coef", &k),
          *c2 = test_read_f32(f->gf, "cd.step2.clip_coef", &k);
    gb = test_read_f32(f->gf, a1n, &k);
    if (!g1 || !c1 || !c2 || !gb) { free(ga); free(gg); free(g1); free(c1); free(c2); free(gb); return -1; }
    double r1 = 0, r2 = 0, ra = 0;
    for (int64_t i = 0; i < n; i++) r1 += (double)g1[i] * g1[i];
    r1 = sqrt(r1 / n);
    for (int64_t i = 0; i < n; i++) {
      double a = fabs(0.9 * c1[0] * g1[i]) + fabs((double)c2[0] * gg[i]);
      ra += a * a;
      gg[i] = 0.9f * c1[0] * g1[i] + c2[0] * gg[i];
      r2 += (double)gg[i] * gg[i];
    }
    /* the moment is a sum of the two steps' gradients, each within tol: where
     * they cancel, its relative error grows by sum|terms| / |sum| (in L2) */
    tol *= sqrt(ra / r2);
    if (getenv("CDIFF_TEST_VERBOSE")) printf("  %s: step-2 moment cancellation %.3g\n", after_name, sqrt(ra / r2));
    r2 = sqrt(r2 / n);
    for (int64_t i = 0; i < n; i++) /* mark step-1-tiny elements as tiny */
      if (fabs(g1[i]) < tiny_frac * r1) gg[i] = 0;
    (void)r2;
    free(g1); free(c1); free(c2);
  }
  double rms = 0;
  for (int64_t i = 0; i < n; i++) rms += (double)gg[i] * gg[i];
  rms = sqrt(rms / n);
  int64_t bad = 0, tiny = 0;
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double du = (double)now[i] - before[i], dg = (double)ga[i] - (gb ? gb[i] : before[i]);
    if (fabs(gg[i]) < tiny_frac * rms) { tiny++; continue; }
    den += dg * dg;
    if (fabs(du - dg) > 5 * tol * lr) { /* counted and limited, not in the L2: a sign flip alone is 2/sqrt(n) of it */
      bad++;
      if (getenv("CDIFF_TEST_VERBOSE")) printf("  %s[%ld]: update %.4g vs %.4g, moment %.3g (rms %.3g)\n", after_name, (long)i, du, dg, gg[i], rms);
    } else
      num += (du - dg) * (du - dg);
  }
  free(ga);
  free(gg);
  free(gb);
  double e = sqrt(num / (den > 0 ? den : 1));
  if (getenv("CDIFF_TEST_VERBOSE")) printf("  %s %s: update rel err %.3g of tol %.3g, %ld bad, %ld tiny of %ld\n", f->model, after_name, e, tol, (long)bad, (long)tiny, (long)n);
  if (e > tol || bad * 200 > n || tiny * 100 > n) {
    snprintf(test_msg, sizeof test_msg, "%s %s: update rel err %.3g, %ld of %ld elements off by > 5 tol lr, %ld tiny-gradient elements",
             f->model, after_name, e, (long)bad, (long)n, (long)tiny);
    return -1;
  }
  return 0;
}

static int run_step(fixture *f, const char *pre) {
  cd_batch b = {.pixels = f->pix, .mask = f->mask, .ids = f->ids, .noise = f->noise, .timesteps = f->ts};
  cd_step_report r;
  char nm[256];
  if (cd_trainer_grad(&f->tr, &b, &r)) { snprintf(test_msg, sizeof test_msg, "%s", cd_last_error()); return -1; }
  if (!*pre) { /* forward values: the golden README's 1e-4 */
    if (near_array(f, "cd.latents", f->tr.latents, f->tr.noisy->n, 1e-4) ||
        near_array(f, "cd.noisy_latents", f->tr.noisy->data, f->tr.noisy->n, 1e-4) ||
        near_array(f, "cd.target", f->tr.target->data, f->tr.target->n, 1e-4) ||
        near_array(f, "cd.model_pred", f->tr.pred->data, f->tr.pred->n, 1e-4))
      return -1;
  }
  snprintf(nm, sizeof nm, "cd.%sloss_instance", pre);
  if (near_scalar(f, nm, r.loss_inst, 1e-4)) return -1;
  snprintf(nm, sizeof nm, "cd.%sloss_prior", pre);
  if (near_scalar(f, nm, r.loss_prior, 1e-4)) return -1;
  snprintf(nm, sizeof nm, "cd.%sloss", pre);
  if (near_scalar(f, nm, r.loss, 1e-4)) return -1;
  /* gradients of every K/V weight and of the new row */
  for (int l = 0; l < f->nl; l++)
    for (int kv = 0; kv < 2; kv++) {
      char pn[200];
      snprintf(pn, sizeof pn, "%s.to_%c.weight", f->layers[l], kv ? 'v' : 'k');
      int pi = param(f, pn);
      if (pi < 0) { snprintf(test_msg, sizeof test_msg, "%s: %s is not trainable", f->model, pn); return -1; }
      snprintf(nm, sizeof nm, "cd.%sgrad.%s", pre, pn);
      float *grad = pstate(f, pi, CD_OPTIM_GRAD);
      if (!grad) return -1;
      double tol = f->grad_tol;
      if (getenv("CDIFF_TEST_VERBOSE")) {
        int64_t k;
        float *r = test_read_f32(f->gf, nm, &k);
        if (r) printf("  %s %s rel %.3g (tol %.3g)\n", f->model, nm, test_rel_err(grad, r, k), tol);
        free(r);
      }
      int bad = near_array(f, nm, grad, f->tr.p[pi].n, tol);
      free(grad);
      if (bad) return -1;
    }
  if (f->tr.np != 2 * f->nl + 1) { snprintf(test_msg, sizeof test_msg, "%d trainable tensors, expected %d", f->tr.np, 2 * f->nl + 1); return -1; }
  int e = param(f, "token_embedding.extra");
  snprintf(nm, sizeof nm, "cd.%sgrad.token_embedding.row49408", pre);
  float *eg = e >= 0 ? pstate(f, e, CD_OPTIM_GRAD) : NULL;
  int ebad = !eg || near_array(f, nm, eg, f->tr.p[e].n, f->grad_tol);
  free(eg);
  if (ebad) return -1;
  /* update; the host reference starts from the same state (its own moments) */
  if (!f->hp) {
    f->hp = cd_calloc(f->tr.np, sizeof *f->hp);
    for (int i = 0; i < f->tr.np; i++) {
      f->hp[i].n = f->tr.p[i].n;
      f->hp[i].m = cd_calloc(f->hp[i].n, sizeof(float));
      f->hp[i].v = cd_calloc(f->hp[i].n, sizeof(float));
    }
  }
  float **before = cd_malloc(f->tr.np * sizeof(float *));
  for (int i = 0; i < f->tr.np; i++) {
    before[i] = pstate(f, i, CD_OPTIM_VALUE);
    free(f->hp[i].data);
    free(f->hp[i].grad);
    f->hp[i].data = pstate(f, i, CD_OPTIM_VALUE);
    f->hp[i].grad = pstate(f, i, CD_OPTIM_GRAD);
  }
  int rc = cd_trainer_update(&f->tr, &r);
  if (!rc) rc = check_bitwise(f, r.grad_norm, r.clip_coef);
  snprintf(nm, sizeof nm, "cd.%sgrad_norm_total", pre);
  if (!rc) rc = near_scalar(f, nm, r.grad_norm, 1e-3); /* of the gradients: the README's 1e-3 */
  snprintf(nm, sizeof nm, "cd.%sclip_coef", pre);
  if (!rc) rc = near_scalar(f, nm, r.clip_coef, 1e-3);
  for (int i = 0; i < f->tr.np && !rc; i++) {
    cd_train_param *p = &f->tr.p[i];
    char an[256], gn[256];
    if (i == e) {
      snprintf(an, sizeof an, "cd.%safter.token_embedding.row49408", pre);
      snprintf(gn, sizeof gn, "cd.%sgrad.token_embedding.row49408", pre);
    } else {
      snprintf(an, sizeof an, "cd.%safter.%s", pre, p->name);
      snprintf(gn, sizeof gn, "cd.%sgrad.%s", pre, p->name);
    }
    /* step 2: check_update widens tol by the cancellation of the two steps' moments */
    float *now = pstate(f, i, CD_OPTIM_VALUE);
    rc = !now ? -1 : wdtype ? 0 : check_update(f, an, gn, before[i], now, p->n, 1e-3, f->grad_tol);
    free(now);
  }
  for (int i = 0; i < f->tr.np; i++) free(before[i]);
  free(before);
  return rc;
}

/* Gradient tolerance: the golden README's 1e-3 for float32 gradients, unless
 * the step is worse conditioned than that covers. A gradient entry carries
 * the rounding of ~100 reductions forward and backward, each ~sqrt(K) u
 * relative (K <= K_max, the longest dot product of the graph; test.h's
 * typical bound). GroupNorm divides by its group's spread: an input error
 * e |x| leaves it as e |x| / sigma, so a group amplifies the error by kappa =
 * rms(x) / sqrt(var + eps). Groups of 2-8 values (small4's 32 groups of 2
 * channels at 2x2 and 1x1 px) have spreads down to ~1e-3 of the typical one,
 * and what they amplify reaches the K/V gradients through every later layer.
 * Counting each GroupNorm as an independent source (errors add in quadrature
 * over the N of them) gives
 *   grad_tol = max(1e-3, sqrt(N) kappa_max sqrt(K_max) u),
 * kappa_max and K_max read off the forward graph of the step's own inputs
 * (they describe the data, not a CPU: every machine computes them to ~1e-6).
 * The tiny models (groups of 4-8 channels x 16-64 px) stay at 1e-3; small4
 * gets ~1e-2. A wrong gradient is off by O(0.1-1). */
static double grad_tol_for(fixture *f) {
  cd_sd_model *m = f->m;
  const int64_t B = 4, h = m->unet.cfg.sample_size, C = m->unet.cfg.in_channels;
  int64_t n;
  float *noisy = test_read_f32(f->gf, "cd.noisy_latents", &n);
  if (!noisy || n != B * C * 8 * 8) { free(noisy); snprintf(test_msg, sizeof test_msg, "%s: cd.noisy_latents", f->model); return -1; }
  (void)h;
  cd_graph *g = cd_graph_new();
  cd_node *ids = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){B, 77});
  cd_node *x = cd_input(g, "noisy", 4, (int64_t[]){B, C, 8, 8}), *t = cd_input(g, "t", 1, (int64_t[]){B});
  cd_node *y = cd_unet_build(g, &m->unet, NULL, x, t, cd_clip_build(g, &m->clip, ids, NULL, NULL));
  cd_graph_output(g, y);
  int64_t kmax = 1;
  int ngn = 0;
  for (int i = 0; i < cd_graph_nnodes(g); i++) {
    const cd_node *nd = cd_graph_node(g, i);
    if (nd->op == CD_OP_GROUP_NORM) cd_graph_output(g, nd->src[0]), ngn++;
    if (nd->op == CD_OP_CONV2D) kmax = CD_MAX(kmax, nd->src[1]->ne[1] * nd->src[1]->ne[2] * nd->src[1]->ne[3]);
    if (nd->op == CD_OP_LINEAR) kmax = CD_MAX(kmax, nd->src[1]->ne[1]);
  }
  int32_t id32[4 * 77];
  float tf[4];
  for (int i = 0; i < 4 * 77; i++) id32[i] = f->ids[i];
  for (int i = 0; i < 4; i++) tf[i] = (float)f->ts[i];
  double kappa = 0;
  int rc = cd_graph_plan(g, NULL) || cd_graph_set_input_i32(g, ids, id32) || cd_graph_set_input(g, x, noisy) ||
           cd_graph_set_input(g, t, tf) || cd_graph_forward(g);
  for (int i = 0; !rc && i < cd_graph_nnodes(g); i++) {
    const cd_node *nd = cd_graph_node(g, i);
    if (nd->op != CD_OP_GROUP_NORM) continue;
    const cd_node *in = nd->src[0];
    float *v = cd_malloc(in->n * sizeof(float));
    if ((rc = cd_graph_get(g, in, v))) { free(v); break; }
    const int G = nd->ip[0];
    const int64_t per = in->n / (in->ne[0] * G); /* a group: C/G channels x spatial */
    for (int64_t k = 0; k < in->ne[0] * G; k++) {
      double s = 0, s2 = 0;
      for (int64_t j = 0; j < per; j++) s += v[k * per + j], s2 += (double)v[k * per + j] * v[k * per + j];
      double mean = s / per, var = fmax(s2 / per - mean * mean, 0);
      kappa = fmax(kappa, sqrt(s2 / per) / sqrt(var + nd->fp[0]));
    }
    free(v);
  }
  cd_graph_free(g);
  free(noisy);
  if (rc) { snprintf(test_msg, sizeof test_msg, "%s: conditioning graph: %s", f->model, cd_last_error()); return -1; }
  double tol = fmax(1e-3, sqrt((double)ngn) * kappa * test_typical((double)kmax));
  if (getenv("CDIFF_TEST_VERBOSE"))
    printf("  %s: %d GroupNorms, kappa_max %.3g, K_max %ld: grad_tol %.3g\n", f->model, ngn, kappa, (long)kmax, tol);
  return tol;
}

static void golden_case(const char *model, const char *golden) {
  fixture f;
  int r = fx_open(&f, model, golden);
  if (r > 0) { fx_free(&f); GOLDEN_STATUS(r); }
  if (r == 0 && (f.grad_tol = grad_tol_for(&f)) < 0) r = -1;
  xtol = 0;
  if (r == 0 && wdtype) {
    const double u = !strcmp(wdtype, "f16") ? 0x1p-11 : 0x1p-8;
    int L = 0;
    const cd_graph *gs[2] = {f.tr.g, f.tr.enc};
    for (int k = 0; k < 2; k++)
      for (int i = 0; i < cd_graph_nnodes(gs[k]); i++) {
        const cd_node *x = cd_graph_node(gs[k], i);
        for (int s = 0; s < x->nsrc; s++) L += x->src[s] && (x->src[s]->type == CD_TYPE_F16 || x->src[s]->type == CD_TYPE_BF16);
      }
    if (!L) {
      snprintf(test_msg, sizeof test_msg, "%s: --weights-dtype %s left no 16-bit weight in the graphs", model, wdtype);
      r = -1;
    }
    xtol = 4 * u * sqrt(2.0 * L / 3);
  }
  if (r == 0) {
    /* the new row starts as the initializer's row */
    float *row = pstate(&f, param(&f, "token_embedding.extra"), CD_OPTIM_VALUE);
    if (!row || near_array(&f, "cd.before.token_embedding.row49408", row, f.m->clip.cfg.width, 0)) r = -1;
    free(row);
  }
  if (r == 0) r = run_step(&f, "");
  /* Step 2 starts from the golden step-1 weights. Ours differ where a step-1
   * gradient entry was within its float32 error of 0 and AdamW's ~lr*sign(g)
   * went the other way (2 lr on that weight; check_update allows a few);
   * continuing from there would compare step-2 gradients at different points. */
  for (int i = 0; r == 0 && i < f.tr.np; i++) {
    char an[256];
    if (!strcmp(f.tr.p[i].name, "token_embedding.extra")) snprintf(an, sizeof an, "cd.after.token_embedding.row49408");
    else snprintf(an, sizeof an, "cd.after.%s", f.tr.p[i].name);
    int64_t n;
    float *w = test_read_f32(f.gf, an, &n);
    if (!w || n != f.tr.p[i].n || cd_optim_write(f.tr.opt, i, CD_OPTIM_VALUE, w)) r = -1;
    free(w);
  }
  if (r == 0) r = run_step(&f, "step2.");
  if (r == 0) { /* base rows are not parameters here: row 42170 stays exact (diffusers decays it) */
    cd_weight *tab = cd_weights_get(f.m->clip.w, "text_model.embeddings.token_embedding.weight");
    int64_t n;
    float *gold_after = test_read_f32(f.gf, "cd.after.token_embedding.row42170", &n);
    float *before = test_read_f32(f.gf, "cd.before.token_embedding.row49408", &n);
    float *now = cd_malloc(n * sizeof(float));
    if (tab) cd_weight_row_f32(tab, 42170, now);
    /* exact in f32; in 16 bits the stored row is the golden one rounded (within u) */
    int same = tab && (wdtype ? test_rel_err(now, before, n) <= xtol : !memcmp(now, before, n * sizeof(float)));
    free(now);
    if (!gold_after || !before || !same) {
      if (!test_msg[0]) snprintf(test_msg, sizeof test_msg, "row 42170 changed");
      r = -1;
    }
    free(gold_after); free(before);
  }
  fx_free(&f);
  if (r) test_failed_flag = 1;
}

TEST(train_step_tiny_sd1) { golden_case("tiny-sd1", "golden_tiny-sd1.safetensors"); }
TEST(train_step_small4_sd1) { golden_case("small4-sd1", "golden_small4-sd1.safetensors"); }
TEST(train_step_tiny_sd2_vpred) { golden_case("tiny-sd2", "golden_tiny-sd2.safetensors"); }
TEST(train_step_f16_weights) {
  wdtype = "f16";
  golden_case("tiny-sd1", "golden_tiny-sd1.safetensors");
  if (!test_failed_flag) golden_case("tiny-sd2", "golden_tiny-sd2.safetensors");
  wdtype = NULL;
}
/* tiny models only: small4-sd1's GroupNorms over 2 channels at 1x1-2x2 pixels
 * amplify relative gradient errors beyond the gain of 4 (its f32 run already
 * needs 10x the README's tolerance), and bf16's rounding is 8x f16's */
TEST(train_step_bf16_weights) {
  wdtype = "bf16";
  golden_case("tiny-sd1", "golden_tiny-sd1.safetensors");
  if (!test_failed_flag) golden_case("tiny-sd2", "golden_tiny-sd2.safetensors");
  wdtype = NULL;
}

int main(void) {
  RUN(train_step_tiny_sd1);
  RUN(train_step_small4_sd1);
  RUN(train_step_tiny_sd2_vpred);
  RUN(train_step_f16_weights);
  RUN(train_step_bf16_weights);
  return test_summary();
}
