/* pipeline.c - see pipeline.h */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/progress.h"
#include "models/prompt.h"

/* "<newN>" that no delta added would be split into "<", "new", "N", ">" and
 * silently mean something else: refuse it, naming the token. */
int cd_prompt_check_tokens(cd_sd_model *m, const char *prompt) {
  for (const char *p = prompt; (p = strstr(p, "<new")) != NULL; p++) {
    const char *q = p + 4;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p + 4 || *q != '>') continue;
    char tok[32];
    snprintf(tok, sizeof tok, "%.*s", (int)(q - p + 1), p);
    if (cd_tokenizer_lookup(m->tok, tok) < 0)
      return cd_set_error("prompt \"%s\" uses %s, which no loaded delta defines (add --delta DIR)", prompt, tok);
  }
  return 0;
}

int cd_prompt_ids(cd_sd_model *m, const char *prompt, int ids[CD_TOK_MAX_LEN]) {
  if (!m->tok) return cd_set_error("no tokenizer vocabulary for %s: pass --vocab (a tokenizer/ folder or bpe_simple_vocab_16e6.txt.gz)", m->path);
  if (prompt && cd_prompt_check_tokens(m, prompt)) return -1;
  int trunc = 0;
  if (cd_tokenize_padded(m->tok, prompt ? prompt : "", ids, &trunc)) return -1;
  if (trunc) cd_warn_once("prompt longer than 75 tokens was truncated: \"%.60s...\"", prompt); /* once: callers repeat prompts */
  return 0;
}

int cd_encode_prompts(cd_sd_model *m, const char *const *prompts, int n, float *out) {
  cd_graph *g = cd_graph_new();
  cd_node *ids = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){n, CD_TOK_MAX_LEN});
  cd_weights_clear_used(m->clip.w);
  cd_node *y = cd_clip_build(g, &m->clip, ids, NULL, NULL);
  cd_graph_output(g, y);
  int rc = -1;
  int *idv = cd_malloc((size_t)n * CD_TOK_MAX_LEN * sizeof(int));
  if (cd_graph_plan(g, NULL) || cd_weights_check_unused(m->clip.w, "text encoder", m->path)) goto done;
  for (int i = 0; i < n; i++) {
    int t[CD_TOK_MAX_LEN];
    if (cd_prompt_ids(m, prompts[i], t)) goto done;
    for (int j = 0; j < CD_TOK_MAX_LEN; j++) {
      if (t[j] >= m->clip.cfg.vocab) {
        cd_set_error("prompt \"%s\" uses token id %d but the text encoder has %d rows (load the delta that defines it)", prompts[i], t[j], m->clip.cfg.vocab);
        goto done;
      }
      idv[i * CD_TOK_MAX_LEN + j] = t[j];
    }
  }
  if (cd_graph_set_input_i32(g, ids, idv) || cd_graph_forward(g) || cd_graph_get(g, y, out)) goto done;
  rc = 0;
done:
  free(idv);
  cd_graph_free(g);
  return rc;
}

int cd_encode_prompts_weighted(cd_sd_model *m, const char *const *prompts, int n, float **out, int *T) {
  *out = NULL;
  *T = 0;
  if (!m->tok) return cd_set_error("no tokenizer vocabulary for %s: pass --vocab (a tokenizer/ folder or bpe_simple_vocab_16e6.txt.gz)", m->path);
  /* every prompt's chunks; the rows of one encoder batch: the chunks in
   * order, then (when some prompt has fewer chunks than the longest) "" */
  int **ids = cd_calloc((size_t)n, sizeof(int *)), *nch = cd_calloc((size_t)n, sizeof(int));
  float **wt = cd_calloc((size_t)n, sizeof(float *));
  int rc = -1, K = 0, C = 1, empty_row = -1;
  int *eids = NULL;
  float *ew = NULL, *yall = NULL;
  int32_t *idv = NULL;
  cd_graph *g = NULL;
  for (int i = 0; i < n; i++) {
    const char *p = prompts[i] ? prompts[i] : "";
    if (cd_prompt_check_tokens(m, p) || cd_prompt_chunks(m->tok, p, &ids[i], &wt[i], &nch[i])) goto done;
    for (int j = 0; j < nch[i] * CD_TOK_MAX_LEN; j++)
      if (ids[i][j] >= m->clip.cfg.vocab) {
        cd_set_error("prompt \"%s\" uses token id %d but the text encoder has %d rows (load the delta that defines it)", p, ids[i][j], m->clip.cfg.vocab);
        goto done;
      }
    if (nch[i] > 1) cd_log("prompt of %d chunks (more than 75 tokens): \"%.60s...\"\n", nch[i], p);
    K += nch[i];
    C = CD_MAX(C, nch[i]);
  }
  for (int i = 0; i < n; i++)
    if (nch[i] < C && empty_row < 0) {
      int ne;
      if (cd_prompt_chunks(m->tok, "", &eids, &ew, &ne)) goto done;
      empty_row = K++;
    }
  g = cd_graph_new();
  cd_node *in = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){K, CD_TOK_MAX_LEN});
  cd_weights_clear_used(m->clip.w);
  cd_node *y = cd_clip_build(g, &m->clip, in, NULL, NULL);
  cd_graph_output(g, y);
  if (cd_graph_plan(g, NULL) || cd_weights_check_unused(m->clip.w, "text encoder", m->path)) goto done;
  idv = cd_malloc((size_t)K * CD_TOK_MAX_LEN * sizeof(int32_t));
  for (int i = 0, r = 0; i < n; i++)
    for (int j = 0; j < nch[i] * CD_TOK_MAX_LEN; j++, r++) idv[r] = ids[i][j];
  if (empty_row >= 0)
    for (int j = 0; j < CD_TOK_MAX_LEN; j++) idv[(int64_t)empty_row * CD_TOK_MAX_LEN + j] = eids[j];
  const int64_t d = y->ne[2], chunk = CD_TOK_MAX_LEN * d;
  yall = cd_malloc((size_t)K * chunk * sizeof(float));
  if (cd_graph_set_input_i32(g, in, idv) || cd_graph_forward(g) || cd_graph_get(g, y, yall)) goto done;
  float *o = cd_malloc((size_t)n * C * chunk * sizeof(float));
  for (int i = 0, r = 0; i < n; i++)
    for (int c = 0; c < C; c++) {
      float *dst = o + ((int64_t)i * C + c) * chunk;
      if (c < nch[i]) {
        memcpy(dst, yall + (int64_t)r++ * chunk, chunk * sizeof(float));
        cd_prompt_emphasis(dst, wt[i] + c * CD_TOK_MAX_LEN, CD_TOK_MAX_LEN, (int)d);
      } else {
        memcpy(dst, yall + (int64_t)empty_row * chunk, chunk * sizeof(float));
      }
    }
  *out = o;
  *T = 77 * C;
  rc = 0;
done:
  for (int i = 0; i < n; i++) {
    free(ids[i]);
    free(wt[i]);
  }
  free(ids);
  free(wt);
  free(nch);
  free(eids);
  free(ew);
  free(idv);
  free(yall);
  cd_graph_free(g);
  return rc;
}

void cd_seed_noise(uint64_t seed, int i, float *x, int64_t n) {
  cd_rng r;
  cd_rng_seed(&r, seed + (uint64_t)i);
  cd_rng_fill_normal(&r, x, (size_t)n);
}

typedef struct {
  cd_graph *g;
  cd_node *x, *t, *out;
  cd_node *text_embeds, *time_ids; /* SDXL's added conditioning, or NULL */
  float *tbuf, *obuf; /* host copies of t and of the UNet output */
  int n, guided;   /* images; 1 if the batch holds uncond then the conds */
  int k;           /* sub-prompts (AND): the batch is [uncond | cond 1 | ... | cond k], n each */
  const float *w;  /* their weights */
  int64_t per;     /* elements per image latent */
  float cfg;
  cd_progress bar;
  int quiet;
} denoiser;

int cd_guidance_passes(int k, float cfg) { return cfg > 1.0f || k > 1 ? 1 + k : 1; }

void cd_guidance_combine(const float *o, int k, const float *w, float cfg, int64_t half, float *out) {
  const float *u = o;
  for (int64_t i = 0; i < half; i++) {
    float acc = u[i];
    for (int j = 0; j < k; j++) acc += cfg * w[j] * (o[(int64_t)(j + 1) * half + i] - u[i]);
    out[i] = acc;
  }
}

/* The sampler's model function: one UNet batch [uncond x n | cond x n | ...]. */
static int denoise(void *ctx, const float *x_in, float t, float *out, int64_t nel) {
  denoiser *d = ctx;
  int64_t half = (int64_t)d->n * d->per;
  int rows = d->guided ? 1 + d->k : 1;
  for (int r = 0; r < rows; r++)
    if (cd_graph_write(d->g, d->x, r * half, half, x_in)) return -1;
  for (int64_t i = 0; i < d->t->n; i++) d->tbuf[i] = t;
  if (cd_graph_set_input(d->g, d->t, d->tbuf) || cd_graph_forward(d->g) || cd_graph_get(d->g, d->out, d->obuf)) return -1;
  if (!d->guided) memcpy(out, d->obuf, half * sizeof(float));
  else cd_guidance_combine(d->obuf, d->k, d->w, d->cfg, half, out);
  for (int64_t i = 0; i < half; i++)
    if (!isfinite(out[i])) return cd_set_error("the UNet produced a non-finite value at t=%g", t);
  (void)nel;
  return 0;
}

static void on_progress(void *ctx, int step, int total) {
  denoiser *d = ctx;
  if (!d->quiet) cd_progress_update(&d->bar, step);
}

/* img2img start: the VAE posterior sample of the init image (seeded from
 * seed + 1000003 + i), noised with the initial noise already in latents to
 * the schedule index where denoising begins, as diffusers'
 * StableDiffusionImg2ImgPipeline does. */
static int img2img_start(cd_sd_model *m, const cd_gen_opts *o, int n, int64_t h, int64_t w, float *latents, int *begin) {
  if (!(o->strength >= 0 && o->strength <= 1)) return cd_set_error("--strength must be in [0, 1] (got %g)", o->strength);
  const int64_t per = 4 * h * w;
  cd_graph *g = cd_graph_new();
  cd_node *img = cd_input(g, "image", 4, (int64_t[]){1, 3, 8 * h, 8 * w});
  cd_node *mom = cd_vae_encode_build(g, &m->vae, img);
  cd_graph_output(g, mom);
  int rc = -1;
  cd_sampler s = {0};
  float *x0 = cd_malloc(per * sizeof(float)), *eps = cd_malloc(per * sizeof(float)), *mv = cd_malloc(cd_nbytes(mom));
  if (cd_graph_plan(g, NULL)) goto done;
  if (cd_graph_set_input(g, img, o->init_image) || cd_graph_forward(g) || cd_graph_get(g, mom, mv)) goto done;
  /* s noises one image at a time: it holds per elements, not n * per */
  if (cd_sampler_init(&s, &m->sched, &o->s, per)) goto done;
  *begin = cd_schedule_begin_for_strength(&s.sched, o->strength);
  for (int i = 0; i < n; i++) {
    cd_seed_noise(o->s.seed + 1000003u, i, eps, per);
    cd_vae_latent_sample(mv, eps, m->vae.cfg.scaling_factor, per, x0);
    float *z = latents + i * per;
    if (*begin >= s.sched.n) memcpy(z, x0, per * sizeof(float)); /* strength 0: nothing to denoise */
    else cd_sampler_add_noise(&s, *begin, x0, z, z);
  }
  rc = 0;
done:
  cd_sampler_free(&s);
  free(x0);
  free(eps);
  free(mv);
  cd_graph_free(g);
  return rc;
}

int cd_generate_latents(cd_sd_model *m, const cd_gen_opts *o, float *latents) {
  const cd_unet_config *uc = &m->unet.cfg;
  int n = o->n > 0 ? o->n : 1;
  /* the VAE factor; the UNet sizes its upsampling to its skips, so any latent size works */
  const int down = 8;
  if (o->width <= 0 || o->height <= 0 || o->width % down || o->height % down)
    return cd_set_error("--width/--height must be positive multiples of %d (got %dx%d)", down, o->width, o->height);
  int64_t h = o->height / down, w = o->width / down, per = 4 * h * w;
  cd_prompt_sub *subs = NULL;
  int k = 0;
  if (cd_prompt_split_and(o->prompt, &subs, &k)) return -1;
  float wsub[CD_PROMPT_MAX_SUBS];
  for (int j = 0; j < k; j++) wsub[j] = subs[j].weight;
  const int passes = cd_guidance_passes(k, o->cfg), guided = passes > 1;
  int B = passes * n;
  int64_t ctxd = uc->context_dim;
  const int xl = m->family == CD_FAMILY_SDXL;
  float *ctx = NULL, *pooled = NULL, tid[6];
  int T = 0;
  const char **pr = cd_malloc(B * sizeof(char *));
  for (int i = 0; i < n; i++) {
    if (guided) pr[i] = o->negative ? o->negative : "";
    for (int j = 0; j < k; j++) pr[(guided ? 1 + j : 0) * n + i] = subs[j].text;
  }
  int rc;
  if (xl) {
    /* diffusers' SDXL: an empty negative prompt is zeros when the model forces it */
    unsigned char *zero = cd_calloc((size_t)B, 1);
    if (guided && !(o->negative && *o->negative) && m->force_zeros_empty) memset(zero, 1, (size_t)n);
    pooled = cd_malloc(sizeof(float) * (size_t)B * (m->clip2.cfg.proj > 0 ? m->clip2.cfg.proj : 1));
    rc = cd_sdxl_encode(m, pr, B, zero, &ctx, &T, pooled) || cd_sdxl_time_ids(&o->micro, o->width, o->height, tid);
    free(zero);
  } else {
    rc = cd_encode_prompts_weighted(m, pr, B, &ctx, &T);
  }
  free(pr);
  cd_prompt_subs_free(subs, k);
  if (rc) {
    free(ctx);
    free(pooled);
    return -1;
  }
  if (ctxd != cd_sd_context_dim(m)) {
    free(ctx);
    free(pooled);
    return cd_set_error("%s: text conditioning width %d, UNet cross-attention %ld", m->path, cd_sd_context_dim(m),
                        (long)ctxd);
  }
  denoiser d = {.n = n, .guided = guided, .k = k, .w = wsub, .per = per, .cfg = o->cfg, .quiet = o->quiet};
  d.g = cd_graph_new();
  d.x = cd_input(d.g, "x", 4, (int64_t[]){B, 4, h, w});
  d.t = cd_input(d.g, "t", 1, (int64_t[]){B});
  cd_node *c = cd_input(d.g, "ctx", 3, (int64_t[]){B, T, ctxd}); /* 77 per prompt chunk */
  cd_weights_clear_used(m->unet.w);
  cd_unet_added added = {0};
  if (xl) {
    d.text_embeds = added.text_embeds = cd_input(d.g, "text_embeds", 2, (int64_t[]){B, m->clip2.cfg.proj});
    d.time_ids = added.time_ids = cd_input(d.g, "time_ids", 2, (int64_t[]){B, 6});
  }
  d.out = cd_unet_build_cond(d.g, &m->unet, NULL, d.x, d.t, c, xl ? &added : NULL);
  cd_graph_output(d.g, d.out);
  rc = -1;
  if (cd_graph_plan(d.g, NULL) || cd_weights_check_unused(m->unet.w, "UNet", m->path)) goto done;
  d.tbuf = cd_malloc(cd_nbytes(d.t));
  d.obuf = cd_malloc(cd_nbytes(d.out));
  if (cd_graph_set_input(d.g, c, ctx)) goto done;
  if (xl) { /* constant over the steps: set once */
    float *tb = cd_malloc(sizeof(float) * 6 * (size_t)B);
    for (int i = 0; i < B; i++) memcpy(tb + 6 * i, tid, sizeof tid);
    int e = cd_graph_set_input(d.g, d.text_embeds, pooled) || cd_graph_set_input(d.g, d.time_ids, tb);
    free(tb);
    if (e) goto done;
  }
  cd_sample_opts so = o->s;
  so.begin = 0;
  for (int i = 0; i < n; i++) {
    if (o->init_latents) memcpy(latents + i * per, o->init_latents + i * per, per * sizeof(float));
    else cd_seed_noise(o->s.seed, i, latents + i * per, per);
  }
  if (o->init_image && img2img_start(m, o, n, h, w, latents, &so.begin)) goto done;
  cd_log("unet graph: %d nodes, arena %.1f MiB\n", cd_graph_nnodes(d.g), cd_graph_arena_bytes(d.g) / 1048576.0);
  cd_schedule sch;
  if (cd_schedule_make(&m->sched, o->s.kind, o->s.steps, o->s.sigma_sched, &sch)) goto done;
  int total = sch.n;
  cd_schedule_free(&sch);
  if (!o->quiet) cd_progress_start(&d.bar, "sampling", total);
  rc = cd_sample(&m->sched, &so, latents, n * per, denoise, &d, on_progress, &d);
  if (!o->quiet) cd_progress_finish(&d.bar);
done:
  cd_graph_free(d.g);
  free(d.tbuf);
  free(d.obuf);
  free(ctx);
  free(pooled);
  return rc;
}

/* decode one latent [1,4,h,w] -> [1,3,8h,8w] */
static int decode_one(cd_sd_model *m, const float *z, int64_t h, int64_t w, float *img) {
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "z", 4, (int64_t[]){1, 4, h, w});
  cd_node *y = cd_vae_decode_build(g, &m->vae, x);
  cd_graph_output(g, y);
  int rc = -1;
  float *zs = cd_malloc(cd_nbytes(x));
  if (cd_graph_plan(g, NULL)) goto done;
  float s = 1.0f / m->vae.cfg.scaling_factor;
  for (int64_t i = 0; i < x->n; i++) zs[i] = z[i] * s;
  if (cd_graph_set_input(g, x, zs) || cd_graph_forward(g) || cd_graph_get(g, y, img)) goto done;
  rc = 0;
done:
  free(zs);
  cd_graph_free(g);
  return rc;
}

int cd_decode_latents(cd_sd_model *m, const float *latents, int n, int h, int w, int tile, float *images) {
  int64_t per = 4 * (int64_t)h * w, iper = 3 * (int64_t)64 * h * w;
  for (int i = 0; i < n; i++) {
    const float *z = latents + i * per;
    float *img = images + i * iper;
    if (tile <= 0 || (h <= tile && w <= tile)) {
      if (decode_one(m, z, h, w, img)) return -1;
      continue;
    }
    /* Tiled: overlapping latent tiles, blended with linear ramps over the overlap. */
    int ov = tile / 4, stride = tile - ov;
    int64_t H = 8 * (int64_t)h, W = 8 * (int64_t)w;
    float *acc = cd_calloc(3 * H * W, sizeof(float)), *wsum = cd_calloc(H * W, sizeof(float));
    float *zt = cd_malloc(4 * (size_t)tile * tile * sizeof(float)), *it = cd_malloc(3 * (size_t)64 * tile * tile * sizeof(float));
    int rc = 0;
    for (int y0 = 0; y0 < h && !rc; y0 += stride) {
      int ty = y0 + tile > h ? (h > tile ? h - tile : 0) : y0, th = CD_MIN(tile, h);
      for (int x0 = 0; x0 < w && !rc; x0 += stride) {
        int tx = x0 + tile > w ? (w > tile ? w - tile : 0) : x0, tw = CD_MIN(tile, w);
        for (int c = 0; c < 4; c++)
          for (int yy = 0; yy < th; yy++)
            memcpy(zt + ((int64_t)c * th + yy) * tw, z + ((int64_t)c * h + ty + yy) * w + tx, tw * sizeof(float));
        if (decode_one(m, zt, th, tw, it)) { rc = -1; break; }
        int64_t PH = 8 * (int64_t)th, PW = 8 * (int64_t)tw, ramp = 8 * (int64_t)ov;
        for (int64_t yy = 0; yy < PH; yy++)
          for (int64_t xx = 0; xx < PW; xx++) {
            float wy = 1, wx = 1;
            if (ramp > 0) {
              if (ty > 0 && yy < ramp) wy = (yy + 0.5f) / ramp;
              if (ty + th < h && PH - 1 - yy < ramp) wy = CD_MIN(wy, (PH - yy - 0.5f) / ramp);
              if (tx > 0 && xx < ramp) wx = (xx + 0.5f) / ramp;
              if (tx + tw < w && PW - 1 - xx < ramp) wx = CD_MIN(wx, (PW - xx - 0.5f) / ramp);
            }
            float wt = wy * wx;
            int64_t Y = 8 * (int64_t)ty + yy, X = 8 * (int64_t)tx + xx;
            for (int c = 0; c < 3; c++) acc[(c * H + Y) * W + X] += wt * it[(c * PH + yy) * PW + xx];
            wsum[Y * W + X] += wt;
          }
        if (x0 + tile >= w) break;
      }
      if (y0 + tile >= h) break;
    }
    if (!rc)
      for (int c = 0; c < 3; c++)
        for (int64_t p = 0; p < H * W; p++) img[c * H * W + p] = acc[c * H * W + p] / (wsum[p] > 0 ? wsum[p] : 1);
    free(acc); free(wsum); free(zt); free(it);
    if (rc) return -1;
  }
  return 0;
}
