/* clip.h - CLIP text encoder (SD 1.x: OpenAI CLIP ViT-L/14 text tower;
 * SD 2.x: OpenCLIP ViT-H/14 text tower up to the penultimate block).
 *
 * Weight names are Hugging Face transformers' CLIPTextModel names:
 *   text_model.embeddings.token_embedding.weight      [vocab, d]
 *   text_model.embeddings.position_embedding.weight   [77, d]
 *   text_model.encoder.layers.N.{layer_norm1,layer_norm2}.{weight,bias}
 *   text_model.encoder.layers.N.self_attn.{q,k,v,out}_proj.{weight,bias}
 *   text_model.encoder.layers.N.mlp.{fc1,fc2}.{weight,bias}
 *   text_model.final_layer_norm.{weight,bias}
 *
 * forward: x = tok_emb[ids] + pos_emb; per layer x += attn(LN1(x)) (causal);
 * x += fc2(act(fc1(LN2(x)))); out = final_LN(x). act = quick_gelu (SD1) or
 * gelu (SD2). All LayerNorm eps 1e-5.
 *
 * SDXL (two encoders, cd_clip_build_sdxl): each gives hidden_states[-2], the
 * output of its penultimate layer WITHOUT the final LayerNorm; the second
 * (CLIPTextModelWithProjection, OpenCLIP ViT-bigG) also gives the pooled
 * output final_LN(x_last)[pos] @ text_projection^T, pos = argmax of the ids:
 *   text_projection.weight                             [proj, d] (a Linear, no bias)
 */
#ifndef CD_CLIP_H
#define CD_CLIP_H

#include "engine/graph.h"
#include "models/weights.h"

#define CD_CLIP_MAX_LAYERS 64

typedef struct {
  int vocab;      /* 49408 */
  int width;      /* d: 768 (SD1), 1024 (SD2) */
  int layers;     /* layers actually run (SD2: the penultimate rule already applied) */
  int heads;
  int mlp;        /* intermediate size */
  int max_pos;    /* 77 */
  int quick_gelu; /* 1: quick_gelu (SD1), 0: exact gelu (SD2) */
  int pad_id;     /* 49407 (SD1) or 0 (SD2) */
  int skip;       /* --clip-skip N minus 1: trailing layers left out (then the final LayerNorm) */
  int proj;       /* text_projection width (SDXL text_encoder_2: 1280); 0: none */
  int pool_id;    /* pooled position: 0 = argmax of the ids (configs with eos_token_id 2, as
                     SDXL's, and SGM); else the first position holding this id */
} cd_clip_config;

typedef struct {
  cd_clip_config cfg;
  cd_weights *w;
} cd_clip;

/* A1111's "CLIP skip" (CLIP_stop_at_last_layers): 1 = the encoder's output as
 * the model was trained with it (SD 1.x: the last layer; SD 2.x: OpenCLIP's
 * penultimate layer, the last of its diffusers text encoder), N = the output
 * of the layer N-1 before that, followed by the final LayerNorm as A1111 does.
 * diffusers' clip_skip argument is N-1. Error (naming the flag) unless
 * 1 <= N <= layers. */
int cd_clip_set_skip(cd_clip *m, int clip_skip);

/* ids: [B, 77] (i32 or float ids). extra: NULL, or the last E rows of the token table
 * as a node of their own ([E, d], e.g. cd_w_rows, trainable: the modifier tokens a
 * training graph learns); ids vocab-E..vocab-1 then read it, the rest the other rows. hidden: if non-NULL, receives the per-layer outputs (hidden[0] = embeddings,
 * hidden[i] = output of layer i, before the final LayerNorm), up to layers+1 entries.
 * Returns [B, 77, d]. */
cd_node *cd_clip_build(cd_graph *g, cd_clip *m, cd_node *ids, cd_node *extra, cd_node **hidden);

/* SDXL conditioning from one encoder: returns hidden_states[-2-skip] ([B, 77, d], the
 * output of layer layers-1-skip, no final LayerNorm; diffusers' SDXL clip_skip rule).
 * pooled != NULL (cfg.proj > 0): *pooled = final_LN(last layer output) at the position
 * sel selects, times text_projection^T: [B, proj]. sel: [B, 1, 77] one-hot rows, filled by
 * cd_clip_pool_select. Layers (and the final LayerNorm) no output needs are not run. */
cd_node *cd_clip_build_sdxl(cd_graph *g, cd_clip *m, cd_node *ids, cd_node *extra, cd_node *sel,
                            cd_node **pooled);
/* sel[b, 0, :] = one-hot of the pooled position of ids[b, :] (T ids per row). With
 * pool_id 0 it is the first position of the largest id: transformers' CLIPTextModel-
 * WithProjection (eos_token_id 2 configs, SDXL's) and SGM's OpenCLIP embedder pool at
 * ids.argmax(-1), the end token unless an added token (id >= 49408) is in the prompt,
 * which both references then pool at; cdiff does the same. No match: position T-1. */
void cd_clip_pool_select(const cd_clip_config *c, const int *ids, int B, int T, float *sel);

#endif
