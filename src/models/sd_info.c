/* sd_info.c - `cdiff info`: what was loaded and how it was understood. */
#include "models/sd_info.h"

#include "core/common.h"

int64_t cd_sd_params(const cd_weights *w) { return w ? cd_weights_numel(w) : 0; }

/* 1234567 -> "1,234,567" */
static const char *grouped(int64_t v, char buf[32]) {
  char raw[32];
  int n = snprintf(raw, sizeof raw, "%lld", (long long)v), k = 0;
  for (int i = 0; i < n; i++) {
    if (i && raw[i - 1] != '-' && (n - i) % 3 == 0) buf[k++] = ',';
    buf[k++] = raw[i];
  }
  buf[k] = 0;
  return buf;
}

static void ints(FILE *o, const int *v, int n) {
  for (int i = 0; i < n; i++) fprintf(o, "%s%d", i ? "," : "", v[i]);
}

/* storage types of the weights with 2+ dims, e.g. "f16" or "f16+f32" */
static const char *resident_types(const cd_sd_model *m, char buf[32]) {
  int seen[4] = {0};
  const cd_weights *cw[4] = {m->clip.w, m->unet.w, m->vae.w, m->clip2.w};
  for (int c = 0; c < 4; c++)
    for (int i = 0; cw[c] && i < cd_weights_count(cw[c]); i++) {
      const cd_weight *x = cd_weights_at(cw[c], i);
      if (x->ndim >= 2) seen[x->type] = 1;
    }
  int k = 0;
  buf[0] = 0;
  for (int t = 0; t < 4; t++)
    if (seen[t]) k += snprintf(buf + k, 32 - k, "%s%s", k ? "+" : "", cd_type_name((cd_type)t));
  return k ? buf : "none";
}

int cd_sd_info(const cd_sd_model *m, FILE *o) {
  char b[32];
  const cd_unet_config *u = &m->unet.cfg;
  const cd_vae_config *v = &m->vae.cfg;
  const cd_clip_config *t = &m->clip.cfg;
  fprintf(o, "model:        %s\n", m->path);
  fprintf(o, "family:       %s\n", cd_family_name(m->family));
  fprintf(o, "layout:       %s\n", m->layout);
  fprintf(o, "prediction:   %s\n", m->sched.pred == CD_PRED_V ? "v_prediction" : "epsilon");
  if (m->clip.w)
    fprintf(o, "text encoder: %s parameters (%s); width %d, %d layers, %d heads, MLP %d, %s, "
               "vocab %d, %d positions, pad %d\n",
            grouped(cd_sd_params(m->clip.w), b), m->dtype[0], t->width, t->layers, t->heads, t->mlp,
            t->quick_gelu ? "quick_gelu" : "gelu", t->vocab, t->max_pos, t->pad_id);
  else
    fprintf(o, "text encoder: not loaded\n");
  if (m->family == CD_FAMILY_SDXL) { /* SDXL's second encoder, with its pooled projection */
    const cd_clip_config *t2 = &m->clip2.cfg;
    if (m->clip2.w)
      fprintf(o, "text encoder 2: %s parameters (%s); width %d, %d layers, %d heads, MLP %d, %s, "
                 "projection %d, vocab %d, %d positions, pad %d\n",
              grouped(cd_sd_params(m->clip2.w), b), m->dtype[3], t2->width, t2->layers, t2->heads, t2->mlp,
              t2->quick_gelu ? "quick_gelu" : "gelu", t2->proj, t2->vocab, t2->max_pos, t2->pad_id);
    else
      fprintf(o, "text encoder 2: not loaded\n");
  }
  if (m->unet.w) {
    fprintf(o, "unet:         %s parameters (%s); %d levels, channels ",
            grouped(cd_sd_params(m->unet.w), b), m->dtype[1], u->nlevels);
    ints(o, u->block_out, u->nlevels);
    fprintf(o, ", heads ");
    ints(o, u->heads, u->nlevels);
    fprintf(o, ", cross-attention down ");
    ints(o, u->down_attn, u->nlevels);
    fprintf(o, " up ");
    ints(o, u->up_attn, u->nlevels);
    int deep = u->mid_attn && cd_unet_mid_depth(u) > 1;
    for (int i = 0; i < u->nlevels; i++) deep |= cd_unet_depth(u, i) > 1;
    if (deep) { /* transformer_layers_per_block */
      int d[CD_UNET_MAX_LEVELS];
      for (int i = 0; i < u->nlevels; i++) d[i] = cd_unet_depth(u, i);
      fprintf(o, ", transformer depth ");
      ints(o, d, u->nlevels);
      fprintf(o, " mid %d", cd_unet_mid_depth(u));
    }
    fprintf(o, ", %d layers per block, context %d, %s projections, %d groups, default %d px",
            u->layers_per_block, u->context_dim, u->linear_proj ? "linear" : "1x1-conv", u->norm_groups, 8 * u->sample_size);
    if (u->add_time_dim > 0)
      fprintf(o, ", added conditioning text_time (pooled %d + %d time ids x %d)", u->add_text_dim, u->add_time_ids,
              u->add_time_dim);
    fprintf(o, "\n");
  } else {
    fprintf(o, "unet:         not loaded\n");
  }
  if (m->vae.w) {
    fprintf(o, "vae:          %s parameters (%s); %d levels, channels ",
            grouped(cd_sd_params(m->vae.w), b), m->dtype[2], v->nlevels);
    ints(o, v->block_out, v->nlevels);
    fprintf(o, ", latent %d, %d groups, scaling factor %g\n", v->latent_channels, v->norm_groups,
            (double)v->scaling_factor);
  } else {
    fprintf(o, "vae:          not loaded\n");
  }
  const cd_weights *cw[4] = {m->clip.w, m->unet.w, m->vae.w, m->clip2.w};
  size_t res[4], tot = 0;
  char types[32];
  for (int c = 0; c < 4; c++) tot += res[c] = cw[c] ? cd_weights_bytes(cw[c]) : 0;
  fprintf(o, "resident:     %.1f MiB of weights in memory (text encoder %.1f, unet %.1f, vae %.1f", tot / 1048576.0,
          (res[0] + res[3]) / 1048576.0, res[1] / 1048576.0, res[2] / 1048576.0);
  fprintf(o, "; 2+-dim weights in %s)\n", resident_types(m, types));
  fprintf(o, "tokenizer:    %s\n", m->tok ? "loaded" : "none (pass --vocab)");
  if (m->family == CD_FAMILY_SDXL)
    fprintf(o, "tokenizer 2:  %s\n", m->tok2 ? "loaded" : "none (pass --vocab)");
  fprintf(o, "hash:         %s\n", m->hash);
  return ferror(o) ? cd_set_error("cannot write the model summary") : 0;
}
