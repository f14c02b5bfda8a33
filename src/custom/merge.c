/* merge.c - closed-form multi-concept merge of Custom Diffusion deltas (see merge.h). */
#include "merge.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "diffusion/sdxl_cond.h"
#include "diffusion/pipeline.h"
#include "io/fsutil.h"

#define ENCODE_BATCH 16 /* prompts per text-encoder run: bounds activation memory */

/* ---- features ---- */

int cd_merge_features(cd_sd_model *m, const char *const *prompts, int n, double **F, int *rows, int *per_prompt) {
  return cd_merge_features_pad(m, prompts, n, 0, F, rows, per_prompt);
}

int cd_merge_features_pad(cd_sd_model *m, const char *const *prompts, int n, int pad, double **F, int *rows,
                          int *per_prompt) {
  *F = NULL;
  *rows = 0;
  if (pad < 0) return cd_set_error("merge: negative padding row count %d", pad);
  if (!m->tok) return cd_set_error("no tokenizer vocabulary for %s: pass --vocab", m->path);
  if (n <= 0) return cd_set_error("merge: no prompts to encode");
  const int D = cd_sd_context_dim(m); /* SDXL: both encoders' penultimate states side by side */
  /* "photo of a" prefix as token ids (any missing: the rule never fires) */
  int photo = cd_tokenizer_lookup(m->tok, "photo</w>"), of = cd_tokenizer_lookup(m->tok, "of</w>"),
      a = cd_tokenizer_lookup(m->tok, "a</w>");
  int *first = cd_malloc(sizeof(int) * n), *count = cd_malloc(sizeof(int) * n);
  int total = 0;
  for (int i = 0; i < n; i++) {
    int ids[CD_TOK_MAX_LEN - 2], k;
    if (cd_tokenize(m->tok, prompts[i], ids, CD_TOK_MAX_LEN - 2, &k, NULL)) goto fail; /* cd_encode_prompts warns if truncated */
    int skip = k >= 3 && photo >= 0 && ids[0] == photo && ids[1] == of && ids[2] == a ? 3 : 0;
    first[i] = 1 + skip;  /* row 0 is SOS */
    count[i] = k + 1 - skip; /* content rows after the skipped ones, plus EOS at k + 1 */
    count[i] += CD_MIN(pad, CD_TOK_MAX_LEN - 2 - k); /* padding rows k + 2 .. 76 */
    total += count[i];
  }
  double *out = cd_malloc(sizeof(double) * (size_t)total * D);
  float *buf = cd_malloc(sizeof(float) * (size_t)ENCODE_BATCH * CD_TOK_MAX_LEN * D);
  int row = 0;
  for (int b0 = 0; b0 < n; b0 += ENCODE_BATCH) {
    int nb = CD_MIN(ENCODE_BATCH, n - b0);
    if (m->family == CD_FAMILY_SDXL ? cd_sdxl_encode_literal(m, prompts + b0, nb, buf, NULL)
                                    : cd_encode_prompts(m, prompts + b0, nb, buf)) {
      free(out);
      free(buf);
      goto fail;
    }
    for (int i = 0; i < nb; i++) {
      const float *src = buf + ((size_t)i * CD_TOK_MAX_LEN + first[b0 + i]) * D;
      for (size_t j = 0; j < (size_t)count[b0 + i] * D; j++) out[(size_t)row * D + j] = src[j];
      row += count[b0 + i];
    }
  }
  free(buf);
  if (per_prompt) memcpy(per_prompt, count, sizeof(int) * n);
  free(first);
  free(count);
  *F = out;
  *rows = total;
  return 0;
fail:
  free(first);
  free(count);
  return -1;
}

/* A --delta's categories: "toy" or, one per modifier token, "toy,pattern".
 * The count, or -1 when one is empty (after trimming spaces). */
static int count_categories(const char *s) {
  int n = 1, len = 0;
  for (const char *p = s;; p++) {
    if (*p == ',' || !*p) {
      if (!len) return -1;
      if (!*p) return n;
      n++, len = 0;
    } else if (*p != ' ') len++;
  }
}

/* the k-th category of s (as counted above), spaces around it trimmed */
static void nth_category(const char *s, int k, char *out, size_t cap) {
  for (; k > 0; s++)
    if (*s == ',') k--;
  while (*s == ' ') s++;
  size_t n = strcspn(s, ",");
  while (n && s[n - 1] == ' ') n--;
  snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), s);
}

int cd_merge_concept_prompts(const char *tok, const char *category, char out[2][512]) {
  char s[512];
  int k = tok && tok[0] ? snprintf(s, sizeof s, "%s %s", tok, category) : snprintf(s, sizeof s, "%s", category);
  if (k < 0 || k >= (int)sizeof s) return cd_set_error("merge: category too long: \"%.60s...\"", category);
  /* the original checks "art" in the whole string; tokens <newN> never contain it */
  const char *pre = strstr(category, "art") ? "painting in the style of" : "photo of a";
  snprintf(out[0], 512, "%s", s);
  k = snprintf(out[1], 512, "%s %s", pre, s);
  if (k < 0 || k >= 512) return cd_set_error("merge: category too long: \"%.60s...\"", category);
  return 0;
}

/* ---- one matrix ---- */

int cd_merge_matrix(const double *W0, const double *const *W, int n, int rows, int d, const double *const *Ci,
                    const int *mi, const double *Creg, int r, double ridge, double *W_hat, cd_merge_report *rep,
                    int *m_used) {
  if (n <= 0 || rows <= 0 || d <= 0) return cd_set_error("merge: bad sizes (%d concepts, [%d, %d])", n, rows, d);
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (mi[i] <= 0 || !W[i] || !Ci[i]) return cd_set_error("merge: concept %d has no constraint rows", i + 1);
    m += mi[i];
  }
  double *C = cd_malloc(sizeof(double) * (size_t)m * d), *V = cd_malloc(sizeof(double) * (size_t)m * rows);
  for (int i = 0, off = 0; i < n; off += mi[i], i++) {
    memcpy(C + (size_t)off * d, Ci[i], sizeof(double) * (size_t)mi[i] * d);
    /* V_i = C_i W_iᵀ = (W_i C_iᵀ)ᵀ   [mi, rows] */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mi[i], rows, d, 1.0, Ci[i], d, W[i], d, 0.0,
                V + (size_t)off * rows, rows);
  }
  /* causal attention makes rows of shared prefixes identical: such rows make S singular */
  m = cd_dedup_rows_with(C, m, d, V, rows, CD_MERGE_DEDUP_TOL);
  if (m_used) *m_used = m;
  int rc = cd_merge_solve(W0, rows, d, C, m, V, Creg, r, ridge, W_hat, rep);
  free(C);
  free(V);
  return rc;
}

/* ---- whole deltas ---- */

void cd_merge_info_free(cd_merge_info *info) {
  if (!info) return;
  free(info->layers);
  memset(info, 0, sizeof *info);
}

static int is_kv(const char *name) {
  size_t L = strlen(name);
  static const char *tails[] = {".attn2.to_k.weight", ".attn2.to_v.weight"};
  for (int i = 0; i < 2; i++) {
    size_t t = strlen(tails[i]);
    if (L >= t && !strcmp(name + L - t, tails[i])) return 1;
  }
  return 0;
}

static double *to_f64(const float *x, size_t n) {
  double *y = cd_malloc(sizeof(double) * (n ? n : 1));
  for (size_t i = 0; i < n; i++) y[i] = x[i];
  return y;
}

/* ‖Ci Wfᵀ − Ci W_iᵀ‖_F over all concepts / ‖Ci W_iᵀ‖_F: the residual of the weights as saved */
static double stored_residual(const float *Wf, const double *const *W, int n, int rows, int d, const double *const *Ci,
                              const int *mi) {
  double num = 0, den = 0;
  double *Wd = to_f64(Wf, (size_t)rows * d);
  for (int i = 0; i < n; i++) {
    double *A = cd_malloc(sizeof(double) * (size_t)mi[i] * rows), *B = cd_malloc(sizeof(double) * (size_t)mi[i] * rows);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mi[i], rows, d, 1.0, Ci[i], d, Wd, d, 0.0, A, rows);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mi[i], rows, d, 1.0, Ci[i], d, W[i], d, 0.0, B, rows);
    for (size_t k = 0; k < (size_t)mi[i] * rows; k++) {
      num += (A[k] - B[k]) * (A[k] - B[k]);
      den += B[k] * B[k];
    }
    free(A);
    free(B);
  }
  free(Wd);
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static char *merge_args_json(const cd_delta *out, const char *const *categories, int n, int nreg, double ridge,
                             int pad_rows) {
  cJSON *j = cJSON_CreateObject(), *c = cJSON_CreateArray();
  cJSON_AddStringToObject(j, "merge", "closed-form");
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(c, cJSON_CreateString(categories[i]));
  cJSON_AddItemToObject(j, "categories", c);
  cJSON_AddNumberToObject(j, "reg_count", nreg);
  cJSON_AddNumberToObject(j, "ridge", ridge);
  cJSON_AddNumberToObject(j, "pad_rows", pad_rows);
  cJSON_AddNumberToObject(j, "tokens", out->ntok);
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return s;
}

/* name list in first-seen order over all deltas */
static int collect_names(cd_delta *const *deltas, int n, const char ***names) {
  int cnt = 0, cap = 0;
  const char **v = NULL;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < cd_weights_count(deltas[i]->w); k++) {
      const char *s = cd_weights_at(deltas[i]->w, k)->name;
      int dup = 0;
      for (int j = 0; j < cnt && !dup; j++) dup = !strcmp(v[j], s);
      if (dup) continue;
      if (cnt == cap) {
        cap = cap ? 2 * cap : 64;
        v = cd_realloc(v, sizeof(*v) * cap);
      }
      v[cnt++] = s;
    }
  *names = v;
  return cnt;
}

int cd_merge_deltas(cd_sd_model *m, cd_delta *const *deltas, const char *const *categories, int n,
                    const cd_merge_opts *o, cd_delta **out, cd_merge_info *info) {
  *out = NULL;
  if (info) memset(info, 0, sizeof *info);
  if (n < 1) return cd_set_error("merge: no deltas given");
  if (!o || !o->reg || o->nreg < 1) return cd_set_error("merge: no regularisation captions (--reg-prompts / --reg-count)");
  if (!(o->ridge >= 0) || !isfinite(o->ridge)) return cd_set_error("merge: --ridge must be a finite number >= 0 (got %g)", o->ridge);
  if (m->ndeltas) return cd_set_error("merge: %s already has %d delta(s) applied; the merge needs the base model", m->path, m->ndeltas);
  if (!m->tok) return cd_set_error("merge: %s has no tokenizer vocabulary (pass --vocab)", m->path);
  FILE *log = o->log;

  /* 1. check every delta against the base model and expand low-rank factors */
  int ntok = 0;
  for (int i = 0; i < n; i++) {
    if (!categories[i] || !categories[i][0]) return cd_set_error("merge: concept %d has an empty category", i + 1);
    if (cd_delta_resolve(deltas[i], m)) return cd_prefix_error("merge: concept %d (%s)", i + 1, categories[i]);
    if (deltas[i]->base_hash[0] && m->hash[0] && strcmp(deltas[i]->base_hash, m->hash))
      cd_warn("merge: concept %d (%s) was trained on a model with hash %s, %s has %s", i + 1, categories[i],
              deltas[i]->base_hash, m->path, m->hash);
    const int ncat = count_categories(categories[i]);
    if (ncat < 0) return cd_set_error("merge: concept %d: empty category in \"%s\"", i + 1, categories[i]);
    if (ncat > 1 && ncat != deltas[i]->ntok)
      return cd_set_error("merge: concept %d: %d categories \"%s\" for a delta with %d modifier token(s): give one "
                          "per token, in the delta's token order", i + 1, ncat, categories[i], deltas[i]->ntok);
    if (ncat == 1 && deltas[i]->ntok > 1)
      cd_warn("merge: concept %d (%s) has %d tokens: its constraint prompts use the first one only (give one "
              "category per token, comma-separated, to constrain each)", i + 1, categories[i], deltas[i]->ntok);
    ntok += deltas[i]->ntok;
  }
  if (ntok > CD_DELTA_MAX_TOKENS) return cd_set_error("merge: %d modifier tokens in all (at most %d)", ntok, CD_DELTA_MAX_TOKENS);

  /* 2. renumbered tokens <new1>, <new2>, … in argument order; added to the text encoder */
  cd_delta *res = cd_delta_new();
  int *first_tok = cd_malloc(sizeof(int) * n); /* index into res->tok of concept i's first token, -1 none */
  res->d = m->clip.cfg.width;
  res->d2 = m->family == CD_FAMILY_SDXL ? m->clip2.cfg.width : 0;
  if (ntok) res->embeds = cd_malloc(sizeof(float) * (size_t)ntok * res->d);
  if (ntok && res->d2) res->embeds2 = cd_malloc(sizeof(float) * (size_t)ntok * res->d2);
  if (log && ntok) fprintf(log, "modifier tokens:\n");
  for (int i = 0; i < n; i++) {
    first_tok[i] = deltas[i]->ntok ? res->ntok : -1;
    for (int k = 0; k < deltas[i]->ntok; k++) {
      int t = res->ntok++;
      snprintf(res->tok[t], sizeof res->tok[t], "<new%d>", t + 1);
      snprintf(res->init[t], sizeof res->init[t], "%s", deltas[i]->init[k]);
      memcpy(res->embeds + (size_t)t * res->d, deltas[i]->embeds + (size_t)k * res->d, sizeof(float) * res->d);
      if (res->d2) /* resolve checked that SDXL deltas carry the second encoder's rows */
        memcpy(res->embeds2 + (size_t)t * res->d2, deltas[i]->embeds2 + (size_t)k * res->d2, sizeof(float) * res->d2);
      if (log) fprintf(log, "  concept %d (%s): %s -> %s\n", i + 1, categories[i], deltas[i]->tok[k], res->tok[t]);
    }
  }
  const char **names = NULL;
  double *Creg = NULL, **Ci = cd_calloc(n, sizeof(double *)), **Wi = cd_calloc(n, sizeof(double *));
  int *mi = cd_calloc(n, sizeof(int)), nreg_rows = 0, rc = -1, nnames = 0, nlayers = 0, navg = 0;
  cd_merge_layer *layers = NULL;
  double maxres = 0, maxres_st = 0, minrc = INFINITY;
  char minrc_name[192] = "";
  if (ntok && cd_delta_apply(m, res)) goto done; /* tokens only: res has no weights yet */

  /* 3. features: C_reg from the captions, C_i from each concept's prompts */
  if (cd_merge_features_pad(m, o->reg, o->nreg, o->pad_rows, &Creg, &nreg_rows, NULL)) goto done;
  int m_total = 0;
  for (int i = 0; i < n; i++) {
    /* two prompts per category; with several categories, token k's with category k */
    const int ncat = count_categories(categories[i]);
    char(*pr)[512] = cd_malloc(sizeof(char[512]) * 2 * (size_t)ncat);
    const char **pp = cd_malloc(sizeof(char *) * 2 * (size_t)ncat);
    int bad = 0;
    for (int k = 0; k < ncat && !bad; k++) {
      char cat[512];
      nth_category(categories[i], k, cat, sizeof cat);
      bad = cd_merge_concept_prompts(first_tok[i] >= 0 ? res->tok[first_tok[i] + k] : NULL, cat, pr + 2 * k);
      pp[2 * k] = pr[2 * k], pp[2 * k + 1] = pr[2 * k + 1];
    }
    if (!bad) bad = cd_merge_features_pad(m, pp, 2 * ncat, o->pad_rows, &Ci[i], &mi[i], NULL);
    if (!bad && log) {
      fprintf(log, "concept %d:", i + 1);
      for (int k = 0; k < 2 * ncat; k++) fprintf(log, "%s \"%s\"", k ? "," : "", pp[k]);
      fprintf(log, ": %d constraint rows\n", mi[i]);
    }
    free(pr);
    free(pp);
    if (bad) goto done;
    m_total += mi[i];
  }
  if (log)
    fprintf(log, "regularisation: %d captions, %d feature rows; constraints: %d rows, context dim %d\n", o->nreg,
            nreg_rows, m_total, cd_sd_context_dim(m));

  /* 4. every weight any delta changes */
  nnames = collect_names(deltas, n, &names);
  layers = cd_calloc(nnames ? nnames : 1, sizeof *layers);
  int warned = 0;
  for (int j = 0; j < nnames; j++) {
    const char *name = names[j];
    cd_weight *b = cd_weights_get(m->unet.w, name);
    if (!b) { cd_set_error("merge: weight '%s' is not in the UNet of %s", name, m->path); goto done; }
    int64_t ne = cd_numel(b->ndim, b->ne);
    cd_weight_f32(b);
    float *Wout = cd_malloc(sizeof(float) * ne);
    if (!is_kv(name) || b->ndim != 2) {
      /* no closed form for to_q / to_out: average of the fine-tuned weights */
      if (!warned++)
        cd_warn("merge: weights other than attn2 to_k/to_v (e.g. '%s') are averaged over the concepts", name);
      for (int64_t k = 0; k < ne; k++) {
        double s = 0;
        for (int i = 0; i < n; i++) {
          cd_weight *x = cd_weights_get(deltas[i]->w, name);
          s += x ? x->data[k] : b->data[k];
        }
        Wout[k] = (float)(s / n);
      }
      navg++;
    } else {
      int rows = (int)b->ne[0], d = (int)b->ne[1];
      if (d != cd_sd_context_dim(m)) {
        free(Wout);
        cd_set_error("merge: '%s' has context dim %d but the text conditioning width is %d", name, d, cd_sd_context_dim(m));
        goto done;
      }
      double *W0 = to_f64(b->data, ne), *Wh = cd_malloc(sizeof(double) * ne);
      for (int i = 0; i < n; i++) {
        cd_weight *x = cd_weights_get(deltas[i]->w, name);
        Wi[i] = to_f64(x ? x->data : b->data, ne); /* a concept that did not train it keeps W0 */
      }
      cd_merge_layer *L = &layers[nlayers];
      snprintf(L->name, sizeof L->name, "%s", name);
      L->rows = rows;
      L->d = d;
      int r = cd_merge_matrix(W0, (const double *const *)Wi, n, rows, d, (const double *const *)Ci, mi, Creg,
                              nreg_rows, o->ridge, Wh, &L->rep, &L->m);
      if (!r) {
        for (int64_t k = 0; k < ne; k++) Wout[k] = (float)Wh[k];
        L->rel_residual_stored = stored_residual(Wout, (const double *const *)Wi, n, rows, d, (const double *const *)Ci, mi);
      }
      for (int i = 0; i < n; i++) {
        free(Wi[i]);
        Wi[i] = NULL;
      }
      free(W0);
      free(Wh);
      if (r) {
        free(Wout);
        cd_prefix_error("merging %s ([%d, %d], %d constraint rows)", name, rows, d, m_total);
        goto done;
      }
      if (log)
        fprintf(log, "  %-64s m=%-3d rel residual %.2e (float32 %.2e) rcond %.2e\n", name, L->m, L->rep.rel_residual,
                L->rel_residual_stored, L->rep.rcond);
      maxres = CD_MAX(maxres, L->rep.rel_residual);
      if (L->rep.rcond < minrc) minrc = L->rep.rcond, snprintf(minrc_name, sizeof minrc_name, "%s", name);
      maxres_st = CD_MAX(maxres_st, L->rel_residual_stored);
      nlayers++;
    }
    if (cd_weights_put(res->w, name, b->ndim, b->ne, Wout)) goto done;
  }
  if (!nlayers) { cd_set_error("merge: the deltas hold no attn2 to_k/to_v weights"); goto done; }
  if (log)
    fprintf(log, "merged %d K/V matrices (max rel residual %.2e, float32 %.2e)%s\n", nlayers, maxres, maxres_st,
            navg ? ", other weights averaged" : "");

  /* Met exactly, nearly dependent constraints (concepts sharing a category word, on a narrow
   * context) take huge weights: the world model's three-concept merge drew noise at 5e-6. */
  if (o->ridge == 0 && minrc < CD_MERGE_WARN_RCOND)
    cd_warn("merge: the constraint system of %s is ill-conditioned (rcond %.1e): concepts whose prompts nearly "
            "coincide (a shared category word?) are met exactly with large weights; --ridge 0.01 trades exactness "
            "for stability%s (docs/merge.md)", minrc_name, minrc,
            o->pad_rows > 0 ? "; with --pad-rows the padding rows of a concept's two prompts nearly coincide too, "
                              "and on the world model the exact solve did better than a ridge" : "");

  /* 5. the merged delta's metadata */
  res->family = m->family;
  res->ctx = m->unet.cfg.context_dim;
  snprintf(res->base_hash, sizeof res->base_hash, "%s", m->hash);
  snprintf(res->train, sizeof res->train, "%s", navg ? "crossattn" : "crossattn_kv");
  snprintf(res->layout, sizeof res->layout, "cdiff");
  res->args = merge_args_json(res, categories, n, o->nreg, o->ridge, o->pad_rows);
  if (info) {
    info->layers = layers;
    layers = NULL;
    info->nlayers = nlayers;
    info->naveraged = navg;
    info->m_total = m_total;
    info->reg_rows = nreg_rows;
    info->max_rel_residual = maxres;
    info->max_rel_residual_stored = maxres_st;
  }
  *out = res;
  res = NULL;
  rc = 0;
done:
  for (int i = 0; i < n; i++) {
    free(Ci[i]);
    free(Wi[i]);
  }
  free(Ci);
  free(Wi);
  free(mi);
  free(Creg);
  free(names);
  free(layers);
  free(first_tok);
  cd_delta_free(res);
  return rc;
}

/* ---- regularisation captions ---- */

void cd_merge_free_lines(char **lines, int n) {
  if (!lines) return;
  for (int i = 0; i < n; i++) free(lines[i]);
  free(lines);
}

int cd_merge_read_lines(const char *path, int max, char ***lines, int *n) {
  *lines = NULL;
  *n = 0;
  char *txt;
  size_t len;
  if (cd_read_file(path, &txt, &len)) return -1;
  if (memchr(txt, 0, len)) {
    free(txt);
    return cd_set_error("%s: not a text file (NUL byte)", path);
  }
  char **v = NULL;
  int cnt = 0, cap = 0;
  for (char *p = txt; *p && (max <= 0 || cnt < max);) {
    char *e = strchr(p, '\n');
    char *next = e ? e + 1 : p + strlen(p);
    if (!e) e = p + strlen(p);
    while (p < e && isspace((unsigned char)*p)) p++;
    while (e > p && isspace((unsigned char)e[-1])) e--;
    if (e > p) {
      if (cnt == cap) {
        cap = cap ? 2 * cap : 256;
        v = cd_realloc(v, sizeof(char *) * cap);
      }
      v[cnt] = cd_malloc((size_t)(e - p) + 1);
      memcpy(v[cnt], p, (size_t)(e - p));
      v[cnt][e - p] = 0;
      cnt++;
    }
    p = next;
  }
  free(txt);
  if (!cnt) {
    free(v);
    return cd_set_error("%s: no captions (the file has no non-empty lines)", path);
  }
  *lines = v;
  *n = cnt;
  return 0;
}

int cd_merge_default_reg_file(char *out, size_t cap) {
  const char *env = getenv("CDIFF_DATA");
  if (env && env[0]) {
    if (!cd_is_dir(env) && cd_file_exists(env)) {
      snprintf(out, cap, "%s", env);
      return 0;
    }
    snprintf(out, cap, "%s/%s", env, CD_MERGE_REG_FILE);
    if (cd_file_exists(out)) return 0;
  }
  char exe[2048];
  ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (k > 0) {
    exe[k] = 0;
    char *sl = strrchr(exe, '/');
    if (sl) {
      *sl = 0;
      char cand[2200], *real;
      snprintf(cand, sizeof cand, "%s/../data/%s", exe, CD_MERGE_REG_FILE);
      if (cd_file_exists(cand) && (real = realpath(cand, NULL))) {
        snprintf(out, cap, "%s", real);
        free(real);
        return 0;
      }
    }
  }
  return cd_set_error("cannot find the regularisation captions %s (looked in $CDIFF_DATA and ../data next to the "
                      "cdiff binary): pass --reg-prompts FILE",
                      CD_MERGE_REG_FILE);
}
