/* train.c - the Custom Diffusion step (see train.h for the math). */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "custom/delta.h"
#include "diffusion/scheduler.h"
#include "engine/optim.h"
#include "models/token_table.h"

void cd_train_opts_default(cd_train_opts *o) {
  memset(o, 0, sizeof *o);
  o->batch = 1;
  o->prior = 1;
  o->res = 512;
  o->train = CD_TRAIN_KV;
  o->lr = 1e-5f;
  o->beta1 = 0.9f;
  o->beta2 = 0.999f;
  o->eps = 1e-8f;
  o->weight_decay = 1e-2f;
  o->max_grad_norm = 1.0f;
  o->prior_weight = 1.0f;
  o->sample_latents = 1;
}

static const char *const mode_names[] = {[CD_TRAIN_NONE] = "token", [CD_TRAIN_KV] = "crossattn_kv",
                                         [CD_TRAIN_CROSSATTN] = "crossattn", [CD_TRAIN_FULL] = "full"};

int cd_train_mode_parse(const char *name) {
  for (int i = 0; name && i < (int)(sizeof mode_names / sizeof mode_names[0]); i++)
    if (!strcmp(name, mode_names[i])) return i;
  return -1;
}

const char *cd_train_mode_name(int train) {
  return train >= 0 && train < (int)(sizeof mode_names / sizeof mode_names[0]) ? mode_names[train] : NULL;
}

int cd_train_mode_trains(int train, const char *name) {
  switch (train) {
  case CD_TRAIN_FULL: return 1;
  case CD_TRAIN_CROSSATTN: return strstr(name, ".attn2.to_") != NULL;
  case CD_TRAIN_KV: return strstr(name, ".attn2.to_k.") || strstr(name, ".attn2.to_v.");
  default: return 0;
  }
}

int cd_trainer_init(cd_trainer *t, cd_sd_model *m, const cd_train_opts *o) {
  memset(t, 0, sizeof *t);
  t->m = m;
  t->o = *o;
  if (o->res <= 0 || o->res % 64) return cd_set_error("--resolution must be a positive multiple of 64 (got %d)", o->res);
  if (o->batch < 1) return cd_set_error("--batch must be at least 1");
  if (o->ntok < 0 || o->ntok > 16) return cd_set_error("between 0 and 16 modifier tokens are supported");
  if (!cd_train_mode_name(o->train)) return cd_set_error("unknown training mode %d", o->train);
  if (o->train == CD_TRAIN_NONE && !o->ntok) return cd_set_error("--train token needs a modifier token: it trains only the new token's embedding");
  t->B = o->batch * (o->prior ? 2 : 1);
  t->h = t->w = o->res / 8;
  const int B = t->B;
  const int64_t h = t->h, w = t->w, C = m->unet.cfg.in_channels;

  t->ac = cd_malloc(m->sched.num_train_timesteps * sizeof(float));
  cd_sched_alphas_cumprod(&m->sched, t->ac);

  /* the modifier tokens are the table's last ntok rows (cd_sd_add_tokens put
   * them there as copies of their initializers); the graph trains them in place */
  const int xl = m->family == CD_FAMILY_SDXL;
  t->p_rows = t->p_rows2 = -1;
  for (int k = 0; k < cd_sd_ntext(m); k++) {
    const cd_clip *c = cd_sd_text(m, k);
    cd_weight *table = c->w ? cd_weights_get(c->w, CD_TOKEN_TABLE) : NULL;
    if (!table) return cd_set_error("%s: %s has no token embedding", m->path, k ? "text_encoder_2" : "the text encoder");
    for (int i = 0; i < o->ntok; i++)
      if (o->tok_id[i] != c->cfg.vocab - o->ntok + i)
        return cd_set_error("modifier token %d has id %d, expected %d (add the tokens with cd_sd_add_tokens first)", i,
                            o->tok_id[i], c->cfg.vocab - o->ntok + i);
    if (o->ntok && table->type != CD_TYPE_F32) return cd_set_error("%s: the token table of the modifier tokens must be f32", m->path);
  }

  /* VAE encoder, inference only */
  t->enc = cd_graph_new();
  t->enc_in = cd_input(t->enc, "pixels", 4, (int64_t[]){1, 3, o->res, o->res});
  t->enc_out = cd_vae_encode_build(t->enc, &m->vae, t->enc_in);
  cd_graph_output(t->enc, t->enc_out);
  if (cd_graph_plan(t->enc, NULL)) return cd_prefix_error("VAE encoder");

  /* text encoder + UNet + loss, with gradients */
  cd_graph *g = t->g = cd_graph_new();
  t->ids = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){B, CD_TOK_MAX_LEN});
  cd_node *extra = NULL;
  if (o->ntok) {
    extra = cd_w_rows(g, m->clip.w, m->clip.cfg.vocab - o->ntok, m->clip.cfg.vocab, CD_TOKEN_TABLE);
    cd_set_trainable(extra);
  }
  cd_node *ctx, *extra2 = NULL, *pooled = NULL;
  if (xl) {
    /* SDXL: [penultimate(text_encoder) | penultimate(text_encoder_2)], and the second's pooled output */
    t->ids2 = cd_input_typed(g, "ids_2", CD_TYPE_I32, 2, (int64_t[]){B, CD_TOK_MAX_LEN});
    t->pool_sel = cd_input(g, "pooled_position", 3, (int64_t[]){B, 1, CD_TOK_MAX_LEN});
    t->time_ids = cd_input(g, "time_ids", 2, (int64_t[]){B, 6});
    if (o->ntok) {
      extra2 = cd_w_rows(g, m->clip2.w, m->clip2.cfg.vocab - o->ntok, m->clip2.cfg.vocab, CD_TOKEN_TABLE);
      cd_set_trainable(extra2);
    }
    cd_node *h1 = cd_clip_build_sdxl(g, &m->clip, t->ids, extra, NULL, NULL);
    cd_node *h2 = cd_clip_build_sdxl(g, &m->clip2, t->ids2, extra2, t->pool_sel, &pooled);
    ctx = cd_concat(g, h1, h2, 2);
  } else {
    ctx = cd_clip_build(g, &m->clip, t->ids, extra, NULL);
  }
  t->noisy = cd_input(g, "noisy", 4, (int64_t[]){B, C, h, w});
  t->t = cd_input(g, "t", 1, (int64_t[]){B});
  cd_weights_clear_used(m->unet.w);
  for (int i = 0; i < cd_weights_count(m->unet.w); i++) {
    cd_weight *x = cd_weights_at(m->unet.w, i);
    x->node = NULL;
    /* trainable weights are the optimizer's f32 master weights, whatever the storage of the rest */
    if (cd_train_mode_trains(o->train, x->name)) cd_weight_f32(x);
  }
  /* Custom Diffusion detaches the start token's k/v (it is the same for every
   * prompt); the full fine-tuning baseline trains as DreamBooth does, without */
  const cd_unet_mode mode = {.train = o->train, .detach_rows = o->train == CD_TRAIN_FULL ? 0 : 1};
  const cd_unet_added added = {.text_embeds = pooled, .time_ids = t->time_ids};
  t->pred = cd_unet_build_cond(g, &m->unet, &mode, t->noisy, t->t, ctx, xl ? &added : NULL);
  if (o->train == CD_TRAIN_FULL) /* the builder marks attn2; every other weight the graph uses trains too */
    for (int i = 0; i < cd_weights_count(m->unet.w); i++) {
      cd_weight *x = cd_weights_at(m->unet.w, i);
      if (x->node) cd_set_trainable(x->node);
    }
  t->target = cd_input(g, "target", 4, (int64_t[]){B, C, h, w});
  t->mask_i = cd_input(g, "mask_instance", 4, (int64_t[]){B, 1, h, w});
  t->inst = cd_mse(g, t->pred, t->target, t->mask_i);
  if (o->prior) {
    /* Both terms over the whole batch with complementary masks; the scales undo
     * the mean over 2x the samples and, for the class term, the channel sum. */
    t->mask_c = cd_input(g, "mask_class", 4, (int64_t[]){B, 1, h, w});
    t->prior_loss = cd_mse(g, t->pred, t->target, t->mask_c);
    t->loss = cd_add(g, cd_scale(g, t->inst, 2.0f), cd_scale(g, t->prior_loss, 2.0f * o->prior_weight / (float)C));
  } else {
    t->loss = t->inst;
  }
  cd_graph_output(g, t->loss);
  cd_graph_output(g, t->inst);
  if (t->prior_loss) cd_graph_output(g, t->prior_loss);
  cd_graph_output(g, t->pred);
  cd_graph_output(g, t->noisy); /* inputs stay readable after backward (tests, logging) */
  cd_graph_output(g, t->target);
  cd_plan_opts po = {.training = 1, .loss = t->loss, .checkpoint = o->grad_ckpt};
  if (cd_graph_plan(g, &po)) return cd_prefix_error("training graph");
  cd_log("training graph: %d nodes, arena %.1f MiB (unplanned %.1f MiB)%s\n", cd_graph_nnodes(g),
         cd_graph_arena_bytes(g) / 1048576.0, cd_graph_naive_bytes(g) / 1048576.0,
         o->grad_ckpt ? ", gradient checkpointing" : "");

  /* parameters: the trainable UNet weights in diffusers order, then the new rows */
  int nw = cd_weights_count(m->unet.w);
  t->p = cd_calloc(nw + 2, sizeof *t->p);
  t->opt = cd_optim_new(g);
  for (int i = 0; i < nw; i++) {
    cd_weight *x = cd_weights_at(m->unet.w, i);
    if (!x->node || !(x->node->flags & CD_FLAG_TRAINABLE)) continue;
    t->p[t->np++] = (cd_train_param){.name = x->name, .node = x->node, .n = x->node->n};
  }
  if (extra) {
    t->p_rows = t->np;
    t->p[t->np++] = (cd_train_param){.name = "token_embedding.extra", .node = extra, .n = extra->n};
  }
  if (extra2) {
    t->p_rows2 = t->np;
    t->p[t->np++] = (cd_train_param){.name = "token_embedding_2.extra", .node = extra2, .n = extra2->n};
  }
  for (int i = 0; i < t->np; i++)
    if (cd_optim_add(t->opt, t->p[i].node)) return -1;
  if (o->train != CD_TRAIN_NONE && t->np == (extra != NULL) + (extra2 != NULL)) return cd_set_error("nothing to train: the UNet has no cross-attention layers");
  return 0;
}

void cd_trainer_free(cd_trainer *t) {
  cd_graph_free(t->enc);
  for (int i = 0; i < t->mcount; i++) free(t->mval[i]);
  free(t->mkey);
  free(t->mval);
  free(t->moments);
  cd_optim_free(t->opt);
  cd_graph_free(t->g);
  free(t->p);
  free(t->ac);
  free(t->latents);
  free(t->stage);
  memset(t, 0, sizeof *t);
}

#define MOMENT_CACHE_BYTES ((size_t)1 << 30)

/* moments of every example, one image at a time; class examples from the cache */
static int encode_examples(cd_trainer *t, const cd_batch *b) {
  const int B = t->B, ninst = t->o.prior ? B / 2 : B;
  const int64_t px = t->enc_in->n, mn = t->enc_out->n;
  if (!t->moments) t->moments = cd_malloc((size_t)B * mn * sizeof(float));
  for (int i = 0; i < B; i++) {
    const float *pix = b->pixels + (int64_t)i * px;
    float *dst = t->moments + (int64_t)i * mn;
    uint64_t key = 0;
    int hit = -1;
    if (i >= ninst) {
      key = cd_hash64(pix, (size_t)px * sizeof(float), NULL);
      for (int k = 0; k < t->mcount && hit < 0; k++)
        if (t->mkey[k] == key) hit = k;
    }
    if (hit >= 0) {
      memcpy(dst, t->mval[hit], mn * sizeof(float));
      continue;
    }
    if (cd_graph_set_input(t->enc, t->enc_in, pix) || cd_graph_forward(t->enc) || cd_graph_get(t->enc, t->enc_out, dst)) return -1;
    if (i >= ninst && (size_t)(t->mcount + 1) * mn * sizeof(float) <= MOMENT_CACHE_BYTES) {
      if (t->mcount == t->mcap) {
        t->mcap = t->mcap ? 2 * t->mcap : 64;
        t->mkey = cd_realloc(t->mkey, t->mcap * sizeof *t->mkey);
        t->mval = cd_realloc(t->mval, t->mcap * sizeof *t->mval);
      }
      t->mkey[t->mcount] = key;
      t->mval[t->mcount] = cd_malloc(mn * sizeof(float));
      memcpy(t->mval[t->mcount++], dst, mn * sizeof(float));
    }
  }
  return 0;
}

int cd_trainer_grad(cd_trainer *t, const cd_batch *b, cd_step_report *r) {
  const int B = t->B;
  const int64_t C = t->m->unet.cfg.in_channels, per = C * t->h * t->w, hw = t->h * t->w;
  if (encode_examples(t, b)) return -1;
  /* latents = (mean [+ std * eps]) * scaling_factor */
  if (!t->latents) t->latents = cd_malloc(B * per * sizeof(float));
  float *lat = t->latents;
  const int sample = t->o.sample_latents && b->latent_noise;
  for (int i = 0; i < B; i++)
    cd_vae_latent_sample(t->moments + (int64_t)i * 2 * per, sample ? b->latent_noise + (int64_t)i * per : NULL,
                         t->m->vae.cfg.scaling_factor, per, lat + (int64_t)i * per);
  /* the graph's inputs, each staged on the host and copied in */
  if (!t->stage) t->stage = cd_malloc((size_t)(B * per > B * CD_TOK_MAX_LEN ? B * per : B * CD_TOK_MAX_LEN) * sizeof(float));
  float *st = t->stage;
  cd_graph *g = t->g;
  int tt[256];
  for (int i = 0; i < B && i < 256; i++) {
    if (b->timesteps[i] < 0 || b->timesteps[i] >= t->m->sched.num_train_timesteps) {
      return cd_set_error("timestep %d out of range", b->timesteps[i]);
    }
    tt[i] = b->timesteps[i];
    st[i] = (float)tt[i];
  }
  if (cd_graph_set_input(g, t->t, st)) return -1;
  cd_add_noise(t->ac, lat, b->noise, tt, B, per, st);
  if (cd_graph_set_input(g, t->noisy, st)) return -1;
  if (t->m->sched.pred == CD_PRED_V) cd_get_velocity(t->ac, lat, b->noise, tt, B, per, st);
  else memcpy(st, b->noise, B * per * sizeof(float));
  if (cd_graph_set_input(g, t->target, st)) return -1;
  int ninst = t->o.prior ? B / 2 : B;
  for (int i = 0; i < B; i++)
    for (int64_t k = 0; k < hw; k++) st[i * hw + k] = i < ninst ? b->mask[i * hw + k] : 0.0f;
  if (cd_graph_set_input(g, t->mask_i, st)) return -1;
  if (t->mask_c) {
    for (int i = 0; i < B; i++)
      for (int64_t k = 0; k < hw; k++) st[i * hw + k] = i < ninst ? 0.0f : 1.0f;
    if (cd_graph_set_input(g, t->mask_c, st)) return -1;
  }
  if (cd_graph_set_input_i32(g, t->ids, b->ids)) return -1; /* ids stay integers (49408 is not a bf16) */
  if (t->ids2) {
    if (!b->ids2 || !b->time_ids) return cd_set_error("an SDXL training batch needs tokenizer_2's ids and the time ids");
    float *sel = cd_malloc(sizeof(float) * (size_t)B * CD_TOK_MAX_LEN);
    cd_clip_pool_select(&t->m->clip2.cfg, b->ids2, B, CD_TOK_MAX_LEN, sel);
    int e = cd_graph_set_input_i32(g, t->ids2, b->ids2) || cd_graph_set_input(g, t->pool_sel, sel) ||
            cd_graph_set_input(g, t->time_ids, b->time_ids);
    free(sel);
    if (e) return -1;
  }
  if (cd_graph_forward(g)) return -1;
  double loss = cd_graph_get_scalar(g, t->loss);
  if (r) {
    r->loss = loss;
    r->loss_inst = cd_graph_get_scalar(g, t->inst) * (t->o.prior ? 2.0 : 1.0);
    r->loss_prior = t->prior_loss ? cd_graph_get_scalar(g, t->prior_loss) * 2.0 / C : 0;
  }
  if (!isfinite(loss)) return cd_set_error("the loss is not finite (%g) at step %d: lower --lr or check the data", loss, t->step + 1);
  return cd_graph_backward(g); /* the gradients stay in the backend for cd_optim_adamw_step */
}

int cd_trainer_accumulate(cd_trainer *t, int k, int K) { return cd_optim_accumulate(t->opt, k, K); }

int cd_trainer_update(cd_trainer *t, cd_step_report *r) {
  const cd_adamw_opts hp = {.lr = t->o.lr, .beta1 = t->o.beta1, .beta2 = t->o.beta2, .eps = t->o.eps,
                            .weight_decay = t->o.weight_decay, .max_grad_norm = t->o.max_grad_norm};
  cd_optim_report rep;
  int rc = cd_optim_adamw_step(t->opt, &hp, &rep);
  t->step = cd_optim_steps(t->opt);
  if (r) {
    r->grad_norm = rep.grad_norm;
    r->clip_coef = rep.clip_coef;
  }
  if (rc) return -1;
  /* a huge learning rate overflows the weights before the loss turns NaN */
  if (rep.nonfinite)
    return cd_set_error("the update made the parameters non-finite (gradient norm %g): the loss diverges, lower --lr", rep.grad_norm);
  return 0;
}

void cd_trainer_set_step(cd_trainer *t, int step) {
  cd_optim_set_steps(t->opt, step);
  t->step = step;
}

int cd_trainer_step(cd_trainer *t, const cd_batch *b, cd_step_report *r) {
  if (cd_trainer_grad(t, b, r)) return -1;
  return cd_trainer_update(t, r);
}

int cd_trainer_to_delta(const cd_trainer *t, const char (*tokens)[32], const char (*inits)[32], cd_delta **out) {
  cd_delta *d = cd_delta_new();
  const cd_sd_model *m = t->m;
  for (int i = 0; i < t->np; i++) {
    const cd_train_param *p = &t->p[i];
    if (i == t->p_rows || i == t->p_rows2) continue;
    cd_weight *x = cd_weights_get(m->unet.w, p->name);
    float *c = cd_malloc(p->n * sizeof(float));
    if (cd_optim_read(t->opt, i, CD_OPTIM_VALUE, c)) {
      free(c);
      cd_delta_free(d);
      return -1;
    }
    if (cd_weights_put(d->w, p->name, x->ndim, x->ne, c)) {
      cd_delta_free(d);
      return -1;
    }
  }
  d->d = m->clip.cfg.width;
  d->ctx = m->unet.cfg.context_dim;
  d->family = m->family;
  d->ntok = t->o.ntok;
  if (d->ntok) {
    d->embeds = cd_malloc((size_t)d->ntok * d->d * sizeof(float));
    if (cd_optim_read(t->opt, t->p_rows, CD_OPTIM_VALUE, d->embeds)) {
      cd_delta_free(d);
      return -1;
    }
  }
  if (d->ntok && t->p_rows2 >= 0) { /* SDXL: the same tokens' rows in text_encoder_2 */
    d->d2 = m->clip2.cfg.width;
    d->embeds2 = cd_malloc((size_t)d->ntok * d->d2 * sizeof(float));
    if (cd_optim_read(t->opt, t->p_rows2, CD_OPTIM_VALUE, d->embeds2)) {
      cd_delta_free(d);
      return -1;
    }
  }
  for (int i = 0; i < d->ntok; i++) {
    snprintf(d->tok[i], sizeof d->tok[i], "%s", tokens[i]);
    snprintf(d->init[i], sizeof d->init[i], "%s", inits ? inits[i] : "");
  }
  snprintf(d->base_hash, sizeof d->base_hash, "%s", m->hash);
  snprintf(d->train, sizeof d->train, "%s", cd_train_mode_name(t->o.train));
  *out = d;
  return 0;
}
