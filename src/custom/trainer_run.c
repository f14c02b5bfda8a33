/* trainer_run.c - the `cdiff train` run loop (see trainer_run.h). */
#include "custom/trainer_run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/common.h"
#include "core/progress.h"
#include "core/sysmem.h"
#include "core/utf8.h"
#include "diffusion/sdxl_cond.h"
#include "custom/class_images.h"
#include "custom/dataset.h"
#include "custom/delta.h"
#include "custom/lr_schedule.h"
#include "custom/run_dir.h"
#include "custom/train.h"
#include "custom/train_mem.h"
#include "diffusion/pipeline.h"
#include "dist/dist.h"
#include "dist/nccl.h"
#include "engine/optim.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "io/tensor_file.h"
#include "io/writable.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "models/tokenizer.h"

#define MAX_TOK CD_DELTA_MAX_TOKENS

static const char *const default_inits[] = {"ktn", "pll", "ucd"};
/* checkpoint tensor names: prefix + parameter name, for the values and the Adam moments */
static const char *const state_prefix[3] = {"param/", "adam_m/", "adam_v/"};

void cd_run_opts_default(cd_run_opts *o) {
  memset(o, 0, sizeof *o);
  o->prior = 1;
  o->num_class_images = 200;
  o->class_steps = 50;
  o->train = "crossattn_kv";
  o->batch = 1;
  o->lr = 1e-5f;
  o->scale_lr = 1;
  o->prior_weight = 1.0f;
  o->res = 0; /* the model's native size */
  o->clip_skip = 1;
  o->aug = 1;
  o->seed = 42;
  o->grad_accum = 1;
  o->lr_scheduler = "constant";
  o->adam_beta1 = 0.9f;
  o->adam_beta2 = 0.999f;
  o->adam_eps = 1e-8f;
  o->adam_weight_decay = 1e-2f;
  o->max_grad_norm = 1.0f;
  o->num_validation_images = 2;
  o->checkpoint_every = 50;
  o->checkpoints_total_limit = 2;
}

typedef struct {
  const char *inst_prompt, *class_prompt, *inst_dir, *class_dir; /* borrowed (opts or concepts file) */
  char class_dir_buf[2048];
  char class_prompt_buf[600]; /* "photo of a {class}" for a bare class name */
  cd_item_list inst, cls;
  int ncls;                 /* class images used: min(cls.n, num_class_images) */
  cd_image_cache ic, cc;
} concept_t;

typedef struct {
  cd_run_opts o;
  cd_concept *file_concepts; /* from --concepts, owned */
  int nfile;
  concept_t *c;
  int nc;
  int ntok;
  char tok[MAX_TOK][32], init[MAX_TOK][32];
  int init_id[MAX_TOK];
  int steps;
  float lr;
  cd_lr_kind lr_kind;
  cd_sd_model *m;
  cd_trainer tr;
  int tr_ok;
  cJSON *args;
  char *args_txt;
  char ckpt_dir[2048];       /* the last checkpoint written or resumed from ("" none) */
  int last_ckpt;             /* its step, -1 none */
  /* data parallelism (src/dist): this rank takes instance examples [lo, lo+nloc)
   * of the global --batch (and their class examples); rank 0 writes every file */
  int rank, size, lo, nloc;
  float *bucket;             /* the gradients of one step, all-reduced in one piece */
  int64_t nbucket;
  int agreed_sig;            /* the stop signal the ranks agreed on after the last step */
  double t_allreduce;        /* seconds spent in the gradient all-reduce (CDIFF_VERBOSE) */
  cd_delta *init_delta;      /* --delta: the delta this run starts from (sequential training), or NULL */
  char **cls_prompts;        /* --class-prompts, owned */
  int ncls_prompts;
} run_t;

/* ---- small helpers ---- */

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static void seed_rng(cd_rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  cd_rng_seed(r, mix64(seed ^ mix64(a + 0x9e3779b97f4a7c15ULL * (mix64(b + 0x632be59bd9b4e019ULL * (c + 1)) + 1))));
}

/* Splits "a,b+c" at ',' and '+', trimming spaces; returns the count or -1. */
static int split_list(const char *s, char out[][32], int cap, const char *flag) {
  int n = 0;
  const char *p = s;
  while (*p) {
    const char *e = p;
    while (*e && *e != ',' && *e != '+') e++;
    const char *a = p, *b = e;
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
    if (b == a) return cd_set_error("%s: empty entry in '%s'", flag, s);
    if (n >= cap) return cd_set_error("%s: more than %d entries in '%s'", flag, cap, s);
    if (b - a >= 32) return cd_set_error("%s: '%.*s' is longer than 31 bytes", flag, (int)(b - a), a);
    snprintf(out[n++], 32, "%.*s", (int)(b - a), a);
    p = *e ? e + 1 : e;
  }
  if (!n) return cd_set_error("%s: empty list", flag);
  return n;
}

/* Fisher-Yates permutation of 0..n-1 for one epoch of one image list. */
static void epoch_perm(int *perm, int n, uint64_t seed, int concept, int kind, int epoch) {
  cd_rng r;
  seed_rng(&r, seed, 0x5eed0000ULL + (uint64_t)kind, (uint64_t)concept, (uint64_t)epoch);
  for (int i = 0; i < n; i++) perm[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(cd_rng_u64(&r) % (uint64_t)(i + 1));
    int t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

/* ---- set-up ---- */

int cd_run_opts_check(const cd_run_opts *o) {
  if (!o->model) return cd_set_error("--model is required");
  if (!o->out) return cd_set_error("--out is required");
  if (o->each && !o->concepts) return cd_set_error("--each needs --concepts FILE.json (it trains each concept of the list apart)");
  if (o->each_index && !o->each) return cd_set_error("--each-index needs --each");
  if (o->each_index < 0) return cd_set_error("--each-index must be positive (got %d)", o->each_index);
  if (o->concepts && (o->images || o->prompt || o->class_prompt || o->class_images))
    return cd_set_error("--concepts cannot be combined with --images/--prompt/--class-prompt/--class-images");
  if (!o->concepts && (!o->images || !o->prompt))
    return cd_set_error("give either --concepts FILE.json or --images DIR with --prompt TEXT");
  if (o->class_prompts && o->concepts)
    return cd_set_error("--class-prompts works with --images (one concept); with --concepts put captions beside the class images");
  if (o->class_prompts && o->real_prior) return cd_set_error("--class-prompts generates class images; --real_prior uses real ones");
  if (!o->concepts && o->prior && !o->real_prior && !o->class_prompt && !o->class_prompts)
    return cd_set_error("--class-prompt is required with prior preservation (or --class-prompts FILE; or pass --no-prior)");
  /* prompts go into PNG text and the delta's JSON, which are UTF-8; checked
   * here only (a --concepts file's prompts and captions: verify_data) */
  static const char *const pflag[3] = {"--prompt", "--class-prompt", "--validation-prompt"};
  const char *const ptext[3] = {o->prompt, o->class_prompt, o->validation_prompt};
  for (int i = 0; i < 3; i++)
    if (ptext[i] && cd_text_check_utf8(pflag[i], ptext[i])) return -1;
  if (o->res < 0 || o->res % 64) return cd_set_error("--resolution must be a positive multiple of 64 (got %d)", o->res);
  if (o->batch < 1 || o->batch > 64) return cd_set_error("--batch must be in 1..64 (got %d)", o->batch);
  if (o->clip_skip < 1) return cd_set_error("--clip-skip must be >= 1 (got %d; 1 = the text encoder's default layer)", o->clip_skip);
  if (o->steps < 0) return cd_set_error("--steps must be positive (got %d)", o->steps);
  if (!(o->lr > 0) || !isfinite(o->lr)) return cd_set_error("--lr must be a positive number (got %g)", o->lr);
  if (!(o->prior_weight >= 0)) return cd_set_error("--prior-loss-weight must be non-negative (got %g)", o->prior_weight);
  if (o->prior && o->num_class_images < 1) return cd_set_error("--num-class-images must be at least 1 (got %d)", o->num_class_images);
  if (o->class_steps < 1 || o->class_steps > 1000) return cd_set_error("--class-steps must be in 1..1000 (got %d)", o->class_steps);
  if (o->checkpoint_every < 0) return cd_set_error("--checkpoint-every must be non-negative (got %d)", o->checkpoint_every);
  if (o->checkpoints_total_limit < 0)
    return cd_set_error("--checkpoints-total-limit must be non-negative (got %d)", o->checkpoints_total_limit);
  if (o->validate_every < 0) return cd_set_error("--validate-every must be non-negative (got %d)", o->validate_every);
  if (o->validate_every > 0 && (!o->validation_prompt || !*o->validation_prompt))
    return cd_set_error("--validate-every needs --validation-prompt");
  if (o->grad_accum < 1 || o->grad_accum > 1024)
    return cd_set_error("--gradient_accumulation_steps must be in 1..1024 (got %d)", o->grad_accum);
  if (o->lr_warmup_steps < 0) return cd_set_error("--lr_warmup_steps must be non-negative (got %d)", o->lr_warmup_steps);
  if (!(o->adam_beta1 >= 0 && o->adam_beta1 < 1)) return cd_set_error("--adam_beta1 must be in [0, 1) (got %g)", o->adam_beta1);
  if (!(o->adam_beta2 >= 0 && o->adam_beta2 < 1)) return cd_set_error("--adam_beta2 must be in [0, 1) (got %g)", o->adam_beta2);
  if (!(o->adam_eps > 0)) return cd_set_error("--adam_epsilon must be positive (got %g)", o->adam_eps);
  if (!(o->adam_weight_decay >= 0)) return cd_set_error("--adam_weight_decay must be non-negative (got %g)", o->adam_weight_decay);
  if (!(o->max_grad_norm > 0)) return cd_set_error("--max_grad_norm must be positive (got %g)", o->max_grad_norm);
  if (o->num_validation_images < 1 || o->num_validation_images > 16)
    return cd_set_error("--num_validation_images must be in 1..16 (got %d)", o->num_validation_images);
  if (o->real_prior && !o->prior) return cd_set_error("--real_prior needs prior preservation (it conflicts with --no-prior)");
  if (cd_train_mode_parse(o->train) < 0)
    return cd_set_error("--train must be crossattn_kv, crossattn, token or full (got '%s')", o->train ? o->train : "");
  return 0;
}

/* --class-prompts FILE: one prompt per line, trimmed; blank lines and lines
 * starting with '#' are skipped. At least one. */
static int read_class_prompts(run_t *r, const char *path) {
  char *txt = NULL;
  size_t n = 0;
  if (cd_read_file(path, &txt, &n)) return cd_prefix_error("--class-prompts");
  if (memchr(txt, 0, n)) {
    free(txt);
    return cd_set_error("--class-prompts %s: contains a NUL byte (not a text file?)", path);
  }
  int cap = 0, line = 0, rc = 0;
  for (char *p = txt; p < txt + n && !rc;) {
    char *e = memchr(p, '\n', (size_t)(txt + n - p));
    if (!e) e = txt + n;
    *e = 0;
    line++;
    char *a = p, *b = e;
    while (a < b && (*a == ' ' || *a == '\t' || *a == '\r')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r')) b--;
    *b = 0;
    p = e + 1;
    if (a == b || *a == '#') continue;
    char what[2200];
    snprintf(what, sizeof what, "--class-prompts %s, line %d", path, line);
    if (b - a > 1000) rc = cd_set_error("%s: longer than 1000 bytes", what);
    else if (cd_text_check_utf8(what, a)) rc = -1;
    if (rc) break;
    if (r->ncls_prompts == cap) {
      cap = cap ? 2 * cap : 16;
      r->cls_prompts = cd_realloc(r->cls_prompts, (size_t)cap * sizeof *r->cls_prompts);
    }
    r->cls_prompts[r->ncls_prompts++] = cd_strdup(a);
  }
  free(txt);
  if (!rc && !r->ncls_prompts) rc = cd_set_error("--class-prompts %s: no prompts in it (one per line)", path);
  return rc;
}

static int setup_concepts(run_t *r) {
  const cd_run_opts *o = &r->o;
  if (o->concepts) {
    if (cd_concepts_load(o->concepts, &r->file_concepts, &r->nfile)) return cd_prefix_error("--concepts");
    r->nc = r->nfile;
  } else {
    r->nc = 1;
  }
  if (r->nc > MAX_TOK) return cd_set_error("--concepts %s: at most %d concepts are supported", o->concepts, MAX_TOK);
  r->c = cd_calloc(r->nc, sizeof *r->c);
  for (int k = 0; k < r->nc; k++) {
    concept_t *c = &r->c[k];
    if (o->concepts) {
      cd_concept *f = &r->file_concepts[k];
      c->inst_prompt = f->instance_prompt;
      c->class_prompt = f->class_prompt;
      c->inst_dir = f->instance_data_dir;
      c->class_dir = f->class_data_dir;
      if (o->prior && !o->real_prior && !c->class_prompt)
        return cd_set_error("--concepts %s: concept %d has no class_prompt (needed for prior preservation; or pass --no-prior)", o->concepts, k + 1);
    } else {
      c->inst_prompt = o->prompt;
      c->class_prompt = o->class_prompt;
      if (o->class_prompts && o->prior) {
        if (read_class_prompts(r, o->class_prompts)) return -1;
        /* class images without a caption of their own (given by the user) take the first */
        if (!c->class_prompt) c->class_prompt = r->cls_prompts[0];
      }
      c->inst_dir = o->images;
      c->class_dir = o->class_images;
    }
    /* A bare class name ("cat", "teddy bear") becomes the reference recipe's
     * prompt "photo of a {class}"; a phrase that already starts with an
     * article or "photo" is used as given. Generation and captions use it. */
    if (c->class_prompt) {
      const char *cp = c->class_prompt;
      int phrase = !strncasecmp(cp, "photo", 5) || !strncasecmp(cp, "a ", 2) || !strncasecmp(cp, "an ", 3) ||
                   !strncasecmp(cp, "the ", 4) || !strncasecmp(cp, "image", 5) || !strncasecmp(cp, "picture", 7) ||
                   !strncasecmp(cp, "painting", 8);
      if (!phrase) {
        snprintf(c->class_prompt_buf, sizeof c->class_prompt_buf, "photo of a %.500s", cp);
        c->class_prompt = c->class_prompt_buf;
      }
    }
    cd_image_cache_init(&c->ic, 0);
    cd_image_cache_init(&c->cc, 0);
  }
  /* modifier tokens: one per concept unless given */
  if (o->modifier_tokens) {
    r->ntok = split_list(o->modifier_tokens, r->tok, MAX_TOK, "--modifier-token");
    if (r->ntok < 0) return -1;
  } else {
    r->ntok = r->nc;
    for (int i = 0; i < r->ntok; i++) snprintf(r->tok[i], 32, "<new%d>", i + 1);
  }
  for (int i = 0; i < r->ntok; i++)
    for (int j = 0; j < i; j++)
      if (!strcmp(r->tok[i], r->tok[j])) return cd_set_error("--modifier-token: %s is given twice", r->tok[i]);
  if (o->initializers) {
    int n = split_list(o->initializers, r->init, MAX_TOK, "--initializer-token");
    if (n < 0) return -1;
    if (n < r->ntok) return cd_set_error("--initializer-token: %d given for %d modifier tokens (one each, comma-separated)", n, r->ntok);
  } else {
    if (r->ntok > 3) return cd_set_error("%d modifier tokens but only 3 default initializers (ktn, pll, ucd): pass --initializer-token", r->ntok);
    for (int i = 0; i < r->ntok; i++) snprintf(r->init[i], 32, "%s", default_inits[i]);
  }
  /* every concept's prompt names a token, and every token trains */
  for (int k = 0; k < r->nc; k++) {
    const char *p = r->c[k].inst_prompt;
    int any = 0;
    for (int i = 0; i < r->ntok; i++) any |= strstr(p, r->tok[i]) != NULL;
    if (any) continue;
    const char *want = r->tok[k < r->ntok ? k : 0];
    if (!o->concepts) return cd_set_error("--prompt must contain %s (got \"%s\")", want, p);
    return cd_set_error("--concepts %s: concept %d: instance_prompt must contain %s (got \"%s\")", o->concepts, k + 1, want, p);
  }
  for (int i = 0; i < r->ntok; i++) {
    int used = 0;
    for (int k = 0; k < r->nc; k++) used |= strstr(r->c[k].inst_prompt, r->tok[i]) != NULL;
    if (!used) return cd_set_error("modifier token %s appears in no instance prompt, so it would never train", r->tok[i]);
  }
  /* instance images (decoded later, when the model is loaded) */
  for (int k = 0; k < r->nc; k++) {
    concept_t *c = &r->c[k];
    if (cd_list_images(c->inst_dir, &c->inst)) {
      if (o->concepts) return cd_prefix_error("--concepts %s: concept %d: instance_data_dir", o->concepts, k + 1);
      return cd_prefix_error("--images");
    }
    for (int i = 0; i < c->inst.n; i++) { /* a caption replaces the prompt: it should name a token too */
      const char *cap = c->inst.items[i].caption;
      int any = !cap;
      for (int t = 0; t < r->ntok && !any; t++) any = strstr(cap, r->tok[t]) != NULL;
      if (!any) cd_warn("caption of %s contains no modifier token: \"%s\"", c->inst.items[i].path, cap);
    }
  }
  return 0;
}

static cJSON *make_args(const run_t *r) {
  const cd_run_opts *o = &r->o;
  cJSON *a = cJSON_CreateObject();
  cJSON_AddStringToObject(a, "model", o->model);
  cJSON_AddStringToObject(a, "model_hash", r->m ? r->m->hash : "");
  if (o->init_delta) cJSON_AddStringToObject(a, "init_delta", o->init_delta);
  if (o->vocab) cJSON_AddStringToObject(a, "vocab", o->vocab);
  if (o->weights_dtype) cJSON_AddStringToObject(a, "weights_dtype", o->weights_dtype);
  if (o->concepts) cJSON_AddStringToObject(a, "concepts_list", o->concepts);
  cJSON *cs = cJSON_AddArrayToObject(a, "concepts");
  for (int k = 0; k < r->nc; k++) {
    const concept_t *c = &r->c[k];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "instance_prompt", c->inst_prompt);
    if (c->class_prompt) cJSON_AddStringToObject(x, "class_prompt", c->class_prompt);
    else cJSON_AddNullToObject(x, "class_prompt");
    cJSON_AddStringToObject(x, "instance_data_dir", c->inst_dir);
    cJSON_AddStringToObject(x, "class_data_dir", c->class_dir ? c->class_dir : c->class_dir_buf);
    cJSON_AddItemToArray(cs, x);
  }
  cJSON_AddBoolToObject(a, "with_prior_preservation", o->prior);
  cJSON_AddNumberToObject(a, "num_class_images", o->num_class_images);
  cJSON_AddNumberToObject(a, "class_steps", o->class_steps);
  if (r->ncls_prompts) { /* only when given, so that older checkpoints still resume */
    cJSON *cp = cJSON_AddArrayToObject(a, "class_prompts");
    for (int i = 0; i < r->ncls_prompts; i++) cJSON_AddItemToArray(cp, cJSON_CreateString(r->cls_prompts[i]));
  }
  cJSON_AddStringToObject(a, "freeze_model", o->train);
  cJSON *t = cJSON_AddArrayToObject(a, "modifier_token"), *in = cJSON_AddArrayToObject(a, "initializer_token"),
        *ii = cJSON_AddArrayToObject(a, "initializer_ids");
  for (int i = 0; i < r->ntok; i++) {
    cJSON_AddItemToArray(t, cJSON_CreateString(r->tok[i]));
    cJSON_AddItemToArray(in, cJSON_CreateString(r->init[i]));
    cJSON_AddItemToArray(ii, cJSON_CreateNumber(r->init_id[i]));
  }
  cJSON_AddNumberToObject(a, "max_train_steps", r->steps);
  cJSON_AddNumberToObject(a, "train_batch_size", o->batch);
  cJSON_AddNumberToObject(a, "learning_rate", o->lr);
  cJSON_AddBoolToObject(a, "scale_lr", o->scale_lr);
  cJSON_AddNumberToObject(a, "lr", r->lr);
  cJSON_AddNumberToObject(a, "prior_loss_weight", o->prior_weight);
  cJSON_AddNumberToObject(a, "resolution", o->res);
  cJSON_AddBoolToObject(a, "gradient_checkpointing", o->grad_ckpt);
  cJSON_AddBoolToObject(a, "hflip", o->hflip);
  cJSON_AddBoolToObject(a, "augment", o->aug);
  char seed[32];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed); /* a string: JSON numbers lose bits past 2^53 */
  cJSON_AddStringToObject(a, "seed", seed);
  cJSON_AddNumberToObject(a, "adam_beta1", o->adam_beta1);
  cJSON_AddNumberToObject(a, "adam_beta2", o->adam_beta2);
  cJSON_AddNumberToObject(a, "adam_epsilon", o->adam_eps);
  cJSON_AddNumberToObject(a, "adam_weight_decay", o->adam_weight_decay);
  cJSON_AddNumberToObject(a, "max_grad_norm", o->max_grad_norm);
  cJSON_AddNumberToObject(a, "gradient_accumulation_steps", o->grad_accum);
  cJSON_AddStringToObject(a, "lr_scheduler", cd_lr_name(r->lr_kind));
  cJSON_AddNumberToObject(a, "lr_warmup_steps", o->lr_warmup_steps);
  cJSON_AddBoolToObject(a, "center_crop", o->center_crop);
  cJSON_AddBoolToObject(a, "real_prior", o->real_prior);
  cJSON_AddNumberToObject(a, "num_validation_images", o->num_validation_images);
  cJSON_AddNumberToObject(a, "checkpoint_every", o->checkpoint_every);
  cJSON_AddNumberToObject(a, "validate_every", o->validate_every);
  if (o->validation_prompt) cJSON_AddStringToObject(a, "validation_prompt", o->validation_prompt);
  cJSON_AddStringToObject(a, "software", "cdiff");
  return a;
}

/* What must match between a checkpoint's run and the resuming one: everything
 * that shapes the trajectory. Paths, step count, checkpoint/validation
 * cadence may differ (the data behind a path is the user's responsibility). */
static int same_run(const cJSON *stored, const cJSON *cur, const char *src) {
  static const char *const ignore[] = {"model", "vocab", "concepts_list", "max_train_steps", "checkpoint_every",
                                       "validate_every", "validation_prompt", "num_validation_images", "software"};
  const cJSON *it;
  cJSON_ArrayForEach(it, cur) {
    int skip = 0;
    for (size_t i = 0; i < sizeof ignore / sizeof ignore[0]; i++) skip |= !strcmp(it->string, ignore[i]);
    if (skip) continue;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(stored, it->string);
    if (!strcmp(it->string, "concepts")) {
      int ok = s && cJSON_GetArraySize(s) == cJSON_GetArraySize(it);
      for (int k = 0; ok && k < cJSON_GetArraySize(it); k++) {
        const cJSON *a = cJSON_GetArrayItem(it, k), *b = cJSON_GetArrayItem(s, k);
        ok = cJSON_Compare(cJSON_GetObjectItem(a, "instance_prompt"), cJSON_GetObjectItem(b, "instance_prompt"), 1) &&
             cJSON_Compare(cJSON_GetObjectItem(a, "class_prompt"), cJSON_GetObjectItem(b, "class_prompt"), 1);
      }
      if (!ok) return cd_set_error("--resume %s: the checkpoint was made with other concepts/prompts", src);
      continue;
    }
    if (!s || !cJSON_Compare(s, it, 1)) {
      char *a = s ? cJSON_PrintUnformatted(s) : NULL, *b = cJSON_PrintUnformatted(it);
      cd_set_error("--resume %s: the checkpoint was made with %s = %s, this run has %s (resume with the same settings)", src, it->string,
                   a ? a : "(absent)", b);
      free(a);
      free(b);
      return -1;
    }
  }
  /* keys written only when set: a run without them cannot resume one made with them */
  if (cJSON_GetObjectItemCaseSensitive(stored, "class_prompts") && !cJSON_GetObjectItemCaseSensitive(cur, "class_prompts"))
    return cd_set_error("--resume %s: the checkpoint was made with --class-prompts (resume with the same settings)", src);
  return 0;
}

/* step of a complete checkpoint folder (its state file opens and says which
 * step it holds), else -1 with the reason in cd_last_error() */
static int ckpt_complete(const char *dir) {
  char *p = cd_path_join(dir, CD_RUN_STATE_FILE);
  cd_tensor_file *f;
  int step = -1;
  if (!cd_safetensors_open(p, &f)) {
    const char *fmt = cd_tf_meta(f, "format"), *st = cd_tf_meta(f, "step");
    char *end = NULL;
    long v = st ? strtol(st, &end, 10) : -1;
    if (fmt && !strcmp(fmt, "cdiff-train-state") && st && !*end && v >= 0 && v <= 100000000) step = (int)v;
    else cd_set_error("%s: not a cdiff training checkpoint", p);
    cd_tensor_file_close(f);
  }
  free(p);
  return step;
}

/* The checkpoint to resume from, into path (folder of state.safetensors):
 * a checkpoint folder itself, or the newest complete checkpoint-N (or the
 * older single checkpoint/) of a run folder. *none = 1 when a run folder
 * holds no checkpoint at all. */
static int find_state(const char *dir, char *path, size_t cap, int *none) {
  *none = 0;
  if (!cd_is_dir(dir)) return cd_set_error("--resume %s: no such folder", dir);
  char *sp = cd_path_join(dir, CD_RUN_STATE_FILE);
  int direct = cd_file_exists(sp);
  free(sp);
  if (direct) {
    if (ckpt_complete(dir) < 0) return cd_prefix_error("--resume %s", dir);
    snprintf(path, cap, "%s", dir);
    return 0;
  }
  int steps[64], n = cd_ckpt_list(dir, steps, 63);
  if (n < 0) return cd_prefix_error("--resume");
  steps[n++] = -1; /* the older layout's checkpoint/ last */
  int tried = 0;
  for (int i = 0; i < n; i++) {
    char name[64];
    if (steps[i] >= 0) snprintf(name, sizeof name, "%s%d", CD_RUN_CKPT_PREFIX, steps[i]);
    else snprintf(name, sizeof name, "%s", CD_RUN_CHECKPOINT_DIR);
    char *c = cd_path_join(dir, name);
    if (cd_is_dir(c)) {
      tried++;
      int st = ckpt_complete(c);
      if (st >= 0 && (steps[i] < 0 || st == steps[i])) {
        snprintf(path, cap, "%s", c);
        free(c);
        return 0;
      }
      cd_warn("skipping checkpoint %s: %s", c, st >= 0 ? "its state holds another step" : cd_last_error());
    }
    free(c);
  }
  if (!tried) {
    *none = 1;
    return cd_set_error("--resume %s: no checkpoint there (%sN/ or %s/)", dir, CD_RUN_CKPT_PREFIX, CD_RUN_CHECKPOINT_DIR);
  }
  return cd_set_error("--resume %s: none of its %d checkpoint(s) is complete", dir, tried);
}

/* Loads parameters, Adam moments and the step count into the trainer. */
static int load_state(run_t *r, const char *dir) {
  char path[2300];
  snprintf(path, sizeof path, "%s/%s", dir, CD_RUN_STATE_FILE);
  cd_tensor_file *f;
  if (cd_safetensors_open(path, &f)) return cd_prefix_error("--resume");
  int rc = -1;
  const char *fmt = cd_tf_meta(f, "format"), *step = cd_tf_meta(f, "step"), *args = cd_tf_meta(f, "args");
  cJSON *stored = NULL;
  if (!fmt || strcmp(fmt, "cdiff-train-state") || !step || !args) {
    cd_set_error("--resume %s: not a cdiff training checkpoint (metadata format/step/args missing)", path);
    goto done;
  }
  if (!(stored = cJSON_Parse(args))) {
    cd_set_error("--resume %s: metadata 'args' is not JSON", path);
    goto done;
  }
  if (same_run(stored, r->args, path)) goto done;
  char *end;
  long s = strtol(step, &end, 10);
  if (*end || s < 0 || s > 100000000) {
    cd_set_error("--resume %s: bad step '%s'", path, step);
    goto done;
  }
  for (int i = 0; i < r->tr.np; i++) {
    const cd_train_param *p = &r->tr.p[i];
    const cd_optim_what what[] = {CD_OPTIM_VALUE, CD_OPTIM_M, CD_OPTIM_V};
    for (int k = 0; k < 3; k++) {
      char nm[512];
      snprintf(nm, sizeof nm, "%s%s", state_prefix[k], p->name);
      const cd_tensor_info *t = cd_tf_find(f, nm);
      if (!t || t->dtype != CD_DT_F32 || cd_tensor_numel(t) != p->n) {
        cd_set_error("--resume %s: tensor '%s' missing or not F32 with %lld elements", path, nm, (long long)p->n);
        goto done;
      }
      float *buf = cd_malloc(p->n * sizeof(float));
      int bad = cd_tf_read_f32(f, t, buf) || cd_optim_write(r->tr.opt, i, what[k], buf);
      free(buf);
      if (bad) goto done;
    }
  }
  cd_trainer_set_step(&r->tr, (int)s);
  r->last_ckpt = (int)s;
  snprintf(r->ckpt_dir, sizeof r->ckpt_dir, "%s", dir);
  rc = 0;
done:
  cJSON_Delete(stored);
  cd_tensor_file_close(f);
  return rc;
}

/* Sequential training (--delta): the result holds the starting delta's
 * tokens first (their rows did not train: the run trains only its own, the
 * table's last rows) and every weight it changed that this run did not train,
 * so that applying the result alone gives the model the run ended with. */
static int fold_init_delta(const run_t *r, cd_delta *d) {
  const cd_delta *s = r->init_delta;
  if (!s) return 0;
  for (int i = 0; i < cd_weights_count(s->w); i++) {
    const cd_weight *x = cd_weights_at(s->w, i);
    if (cd_weights_get(d->w, x->name)) continue;
    const int64_t n = cd_numel(x->ndim, x->ne);
    float *c = cd_malloc((size_t)n * sizeof(float));
    memcpy(c, x->data, (size_t)n * sizeof(float));
    if (cd_weights_put(d->w, x->name, x->ndim, x->ne, c)) return -1;
  }
  if (!s->ntok) return 0;
  if (s->ntok + d->ntok > CD_DELTA_MAX_TOKENS) return cd_set_error("--delta: more than %d tokens in all", CD_DELTA_MAX_TOKENS);
  float *e = cd_malloc((size_t)(s->ntok + d->ntok) * d->d * sizeof(float));
  memcpy(e, s->embeds, (size_t)s->ntok * d->d * sizeof(float));
  if (d->ntok) memcpy(e + (size_t)s->ntok * d->d, d->embeds, (size_t)d->ntok * d->d * sizeof(float));
  free(d->embeds);
  d->embeds = e;
  for (int i = d->ntok - 1; i >= 0; i--) {
    memcpy(d->tok[i + s->ntok], d->tok[i], sizeof d->tok[i]);
    memcpy(d->init[i + s->ntok], d->init[i], sizeof d->init[i]);
  }
  for (int i = 0; i < s->ntok; i++) {
    memcpy(d->tok[i], s->tok[i], sizeof d->tok[i]);
    memcpy(d->init[i], s->init[i], sizeof d->init[i]);
  }
  d->ntok += s->ntok;
  return 0;
}

/* The current weights as a delta with the run's arguments, saved to dir. */
static int write_delta(const run_t *r, const char *dir) {
  cd_delta *d;
  if (cd_trainer_to_delta(&r->tr, (const char(*)[32])r->tok, (const char(*)[32])r->init, &d)) return -1;
  if (fold_init_delta(r, d)) {
    cd_delta_free(d);
    return -1;
  }
  d->args = cd_strdup(r->args_txt);
  int rc = cd_delta_save(dir, d);
  cd_delta_free(d);
  return rc;
}

/* checkpoint-N: the delta of this step and the state, written in full into a
 * temporary folder, then renamed into place (custom/run_dir.h) */
static int save_checkpoint(run_t *r) {
  const cd_trainer *t = &r->tr;
  char tmp[2300];
  if (cd_ckpt_begin(r->o.out, t->step, tmp, sizeof tmp)) return -1;
  cd_delta *d = NULL;
  if (cd_trainer_to_delta(t, (const char(*)[32])r->tok, (const char(*)[32])r->init, &d) || fold_init_delta(r, d)) {
    if (d) cd_delta_free(d);
    cd_ckpt_abort(tmp);
    return -1;
  }
  d->args = cd_strdup(r->args_txt);
  char path[2400];
  snprintf(path, sizeof path, "%s/%s", tmp, CD_DELTA_FILE);
  int rc = cd_delta_write_cdiff(path, d); /* a loadable delta of this step, beside the state */
  cd_delta_free(d);
  if (rc) {
    cd_ckpt_abort(tmp);
    return -1;
  }
  cd_tensor_out *to = cd_calloc(3 * t->np, sizeof *to);
  char(*names)[512] = cd_calloc(3 * t->np, 512);
  float **host = cd_calloc(3 * t->np, sizeof *host); /* the backend's state, copied down for the file */
  rc = 0;
  for (int i = 0; i < t->np; i++) {
    const cd_train_param *p = &t->p[i];
    const cd_optim_what what[] = {CD_OPTIM_VALUE, CD_OPTIM_M, CD_OPTIM_V};
    for (int k = 0; k < 3; k++) {
      int j = 3 * i + k;
      snprintf(names[j], 512, "%s%s", state_prefix[k], p->name);
      host[j] = cd_malloc(p->n * sizeof(float));
      if (!rc) rc = cd_optim_read(t->opt, i, what[k], host[j]);
      to[j] = (cd_tensor_out){.name = names[j], .dtype = CD_DT_F32, .ndim = 1, .shape = {p->n}, .data = host[j]};
    }
  }
  char step[32];
  snprintf(step, sizeof step, "%d", t->step);
  snprintf(path, sizeof path, "%s/%s", tmp, CD_RUN_STATE_FILE);
  const char *meta[] = {"format", "cdiff-train-state", "version", "1", "step", step, "args", r->args_txt};
  if (!rc) rc = cd_safetensors_write(path, to, 3 * t->np, meta, 4);
  for (int j = 0; j < 3 * t->np; j++) free(host[j]);
  free(host);
  free(to);
  free(names);
  if (rc) {
    cd_ckpt_abort(tmp);
    return -1;
  }
  if (cd_ckpt_commit(r->o.out, t->step, tmp, r->o.checkpoints_total_limit)) return -1;
  r->last_ckpt = t->step;
  snprintf(r->ckpt_dir, sizeof r->ckpt_dir, "%s/%s%d", r->o.out, CD_RUN_CKPT_PREFIX, t->step);
  return 0;
}

/* Keeps the log lines of steps <= keep (a resumed run rewrites what follows). */
static FILE *open_log(const char *path, int keep) {
  char *txt = NULL;
  size_t n = 0;
  if (keep > 0 && cd_file_exists(path) && !cd_read_file(path, &txt, &n)) {
    FILE *fp = fopen(path, "w");
    if (!fp) {
      free(txt);
      cd_set_error("cannot write %s", path);
      return NULL;
    }
    for (char *line = txt; line && *line;) {
      char *nl = strchr(line, '\n');
      if (nl) *nl = 0;
      cJSON *j = cJSON_Parse(line);
      const cJSON *s = j ? cJSON_GetObjectItem(j, "step") : NULL;
      if (cJSON_IsNumber(s) && s->valueint <= keep) fprintf(fp, "%s\n", line);
      cJSON_Delete(j);
      line = nl ? nl + 1 : NULL;
    }
    free(txt);
    return fp;
  }
  FILE *fp = fopen(path, keep > 0 ? "a" : "w");
  if (!fp) cd_set_error("cannot write %s", path);
  return fp;
}

/* Samples the validation prompt with the current weights: the UNet's and the
 * modifier tokens' rows of the token table, both trained in place. Writes
 * OUT/validation/step_%06d.png, the images side by side. */
static int validate(run_t *r, int step) {
  cd_sd_model *m = r->m;
  const int nimg = r->o.num_validation_images, res = r->o.res;
  const int64_t h = res / 8, w = res / 8;
  float *lat = cd_malloc((size_t)nimg * 4 * h * w * sizeof(float)), *img = cd_malloc((size_t)nimg * 3 * res * res * sizeof(float));
  cd_gen_opts g = {.prompt = r->o.validation_prompt, .negative = "", .cfg = 6.0f, .width = res, .height = res, .n = nimg, .quiet = 1};
  g.s.kind = CD_SAMPLER_DPMPP_2M;
  g.s.steps = 25;
  g.s.seed = r->o.seed;
  int rc = cd_generate_latents(m, &g, lat);
  if (!rc) rc = cd_decode_latents(m, lat, nimg, (int)h, (int)w, 0, img);
  if (!rc) {
    cd_image grid = {.w = nimg * res, .h = res, .c = 3};
    grid.px = cd_malloc((size_t)grid.w * grid.h * 3);
    for (int i = 0; i < nimg; i++) {
      cd_image im;
      cd_chw_to_image(img + (size_t)i * 3 * res * res, 3, res, res, &im);
      for (int y = 0; y < res; y++) memcpy(grid.px + ((size_t)y * grid.w + (size_t)i * res) * 3, im.px + (size_t)y * res * 3, (size_t)res * 3);
      cd_image_free(&im);
    }
    char dir[2100], path[2200], sstep[16];
    snprintf(dir, sizeof dir, "%s/validation", r->o.out);
    snprintf(path, sizeof path, "%s/step_%06d.png", dir, step);
    snprintf(sstep, sizeof sstep, "%d", step);
    const char *kv[] = {"prompt", r->o.validation_prompt, "step", sstep, "sampler", "dpmpp_2m", "steps", "25", "cfg_scale", "6", "software", "cdiff"};
    rc = cd_mkdir_p(dir) || cd_image_save_png(path, &grid, kv, 6) ? -1 : 0;
    cd_image_free(&grid);
  }
  free(lat);
  free(img);
  return rc ? cd_prefix_error("validation at step %d", step) : 0;
}

/* ---- one step's batch ---- */

typedef struct {
  float *pixels, *mask, *noise, *lnoise;
  int *ids, *ts, *perm;
  int *ids2;   /* SDXL: tokenizer_2's ids */
  float *tids; /* SDXL: [B, 6] time ids */
} batch_buf;

/* Balanced batches: example i of step s is the (s*batch + i)-th example
 * overall, drawn from concept (s*batch + i) mod n: with batch >= n every batch
 * holds each concept equally often, with batch 1 the concepts alternate. Each
 * concept walks its own images (kind 0: instance, 1: class) in a per-epoch
 * shuffle. Returns the image index; *concept gets the concept. */
static int pick(const run_t *r, int s, int i, int kind, int *perm, concept_t **concept) {
  const int64_t gidx = (int64_t)s * r->o.batch + i;
  const int k = (int)(gidx % r->nc);
  concept_t *c = *concept = &r->c[k];
  const int64_t e = gidx / r->nc, n = kind ? c->ncls : c->inst.n;
  epoch_perm(perm, (int)n, r->o.seed, k, kind, (int)(e / n));
  return perm[e % n];
}

/* The random draws of one example come from its own stream, seeded by
 * (seed, step, kind, global example index): its augmentation, then its
 * timestep, noise and posterior noise. So the examples of a step do not
 * depend on how the global batch is split over ranks (src/dist). */
static int draw_example_noise(run_t *r, cd_rng *rng, batch_buf *bb, int slot) {
  const int T = r->m->sched.num_train_timesteps;
  const int64_t per = 4 * (int64_t)(r->o.res / 8) * (r->o.res / 8);
  int t = (int)(cd_rng_uniform(rng) * T);
  bb->ts[slot] = t < T ? t : T - 1;
  cd_rng_fill_normal(rng, bb->noise + slot * per, (size_t)per);
  cd_rng_fill_normal(rng, bb->lnoise + slot * per, (size_t)per);
  return 0;
}

/* SDXL's time ids of a training example: the training resolution as original and target
 * size (as the original repository's SDXL script), the crop given */
static int sdxl_time_ids(int res, int top, int left, float *out) {
  const cd_sdxl_micro mc = {.orig_w = res, .orig_h = res, .crop_top = top, .crop_left = left, .target_w = res, .target_h = res};
  return cd_sdxl_time_ids(&mc, res, res, out);
}

/* The text of batch slot j: its ids (both tokenizers for SDXL) and SDXL's
 * time ids with the crop given. Long prompts were warned about once, up front. */
static int example_text(run_t *r, batch_buf *bb, int j, const char *text, int top, int left) {
  if (cd_tokenize_padded(r->m->tok, text, bb->ids + j * CD_TOK_MAX_LEN, NULL)) return -1;
  if (bb->ids2 && (cd_tokenize_padded(r->m->tok2, text, bb->ids2 + j * CD_TOK_MAX_LEN, NULL) ||
                   sdxl_time_ids(r->o.res, top, left, bb->tids + 6 * j)))
    return -1;
  return 0;
}

/* This rank's examples of step s: instance examples lo..lo+nloc-1 of the
 * global batch in slots 0..nloc-1, then their class examples. */
static int make_batch(run_t *r, int s, batch_buf *bb, cd_batch *b) {
  const cd_run_opts *o = &r->o;
  const int nl = r->nloc, res = o->res;
  const int64_t px = 3 * (int64_t)res * res, hw = (int64_t)(res / 8) * (res / 8);
  for (int j = 0; j < nl; j++) {
    const int i = r->lo + j;
    cd_rng rng;
    seed_rng(&rng, o->seed, 0x57e9ULL, (uint64_t)s, (uint64_t)i);
    concept_t *c;
    int idx = pick(r, s, i, 0, bb->perm, &c);
    const cd_image *img;
    cd_instance_aug a;
    if (cd_image_cache_get(&c->ic, &c->inst, idx, &img) || cd_instance_draw(res, o->aug, o->hflip, &rng, &a) ||
        cd_instance_render(img, res, &a, bb->pixels + j * px, bb->mask + j * hw))
      return -1;
    const char *cap = c->inst.items[idx].caption ? c->inst.items[idx].caption : c->inst_prompt;
    char prompt[4096];
    snprintf(prompt, sizeof prompt, "%s%s", a.prefix ? a.prefix : "", cap);
    /* SDXL: the crop of a zoom-in (scale > res) is the micro-conditioning's crop */
    if (example_text(r, bb, j, prompt, a.scale > res ? a.top : 0, a.scale > res ? a.left : 0)) return -1;
    draw_example_noise(r, &rng, bb, j);
  }
  if (o->prior)
    for (int j = 0; j < nl; j++) {
      const int i = r->lo + j;
      cd_rng rng;
      seed_rng(&rng, o->seed, 0x57eaULL, (uint64_t)s, (uint64_t)i);
      concept_t *c;
      int idx = pick(r, s, i, 1, bb->perm, &c);
      const cd_image *img;
      if (cd_image_cache_get(&c->cc, &c->cls, idx, &img) ||
          cd_class_example(img, res, o->center_crop, o->hflip, &rng, bb->pixels + (nl + j) * px, bb->mask + (nl + j) * hw))
        return -1;
      const char *cap = c->cls.items[idx].caption ? c->cls.items[idx].caption : c->class_prompt ? c->class_prompt : "";
      if (example_text(r, bb, nl + j, cap, 0, 0)) return -1;
      draw_example_noise(r, &rng, bb, nl + j);
    }
  *b = (cd_batch){.pixels = bb->pixels, .mask = bb->mask, .ids = bb->ids, .noise = bb->noise, .latent_noise = bb->lnoise, .timesteps = bb->ts,
                  .ids2 = bb->ids2, .time_ids = bb->tids};
  return 0;
}

/* ---- the run ---- */

static int setup_model(run_t *r) {
  const cd_run_opts *o = &r->o;
  cd_load_opts lo = {.vocab = o->vocab, .weights_dtype = o->weights_dtype};
  if (cd_sd_load(o->model, &lo, &r->m)) return cd_prefix_error("--model");
  cd_sd_model *m = r->m;
  if (!r->o.res) { /* the size the model was trained at, as cdiff sample's default */
    const int ss = m->unet.cfg.sample_size;
    r->o.res = ss > 0 && ss % 8 == 0 ? 8 * ss : 512;
    cd_log("resolution: %d (the model's native size; --resolution to change)\n", r->o.res);
  }
  for (int k = 0; k < cd_sd_ntext(m); k++) /* SDXL: one clip skip for both encoders, as diffusers' clip_skip */
    if (cd_clip_set_skip(cd_sd_text(m, k), o->clip_skip)) return -1;
  if (!m->tok) return cd_set_error("--model %s: no tokenizer vocabulary found: pass --vocab (a tokenizer/ folder or bpe_simple_vocab_16e6.txt.gz)", o->model);
  if (cd_tokenizer_vocab_size(m->tok) != m->clip.cfg.vocab)
    return cd_set_error("--model %s: tokenizer has %d tokens but the text encoder %d rows", o->model, cd_tokenizer_vocab_size(m->tok), m->clip.cfg.vocab);
  if (o->init_delta) { /* sequential training: start from a trained delta (its tokens become vocabulary) */
    if (cd_delta_load(o->init_delta, m, &r->init_delta)) return cd_prefix_error("--delta");
    char what[1100];
    snprintf(what, sizeof what, "--delta %s", o->init_delta);
    cd_delta_check_base(r->init_delta, m, what);
    if (cd_delta_resolve(r->init_delta, m) || cd_delta_apply(m, r->init_delta)) return cd_prefix_error("--delta %s", o->init_delta);
  }
  for (int i = 0; i < r->ntok; i++) /* checked now, added after the class images are made */
    if (cd_tokenizer_lookup(m->tok, r->tok[i]) >= 0)
      return cd_set_error("--modifier-token: '%s' is already a token of the vocabulary%s; choose a new string such as <new%d>", r->tok[i],
                          o->init_delta ? " or of the --delta" : "", i + 1 + (r->init_delta ? r->init_delta->ntok : 0));
  /* initializers: the token STRING looked up in the vocabulary (transformers 4's
   * tokenizer.encode([word]) does this), then the word-final form "<w></w>" */
  for (int i = 0; i < r->ntok; i++) {
    int id = cd_tokenizer_lookup(m->tok, r->init[i]);
    if (id < 0) {
      char wf[40];
      snprintf(wf, sizeof wf, "%s</w>", r->init[i]);
      id = cd_tokenizer_lookup(m->tok, wf);
    }
    if (id < 0 || id >= m->clip.cfg.vocab)
      return cd_set_error("--initializer-token: '%s' is not a single token of the vocabulary (try a short word such as 'ktn' or 'dog')", r->init[i]);
    r->init_id[i] = id;
  }
  return 0;
}

/* Part of the validation pass, once the tokenizer is loaded: a modifier token
 * past the 75-token limit of an instance prompt (with the longest
 * augmentation prefix) is cut off by the truncation and would never train;
 * that is an error naming the prompt. A prompt longer than the limit is
 * otherwise a warning, once. */
/* Tokens of prefix + text[0, len): the modifier tokens are not in the
 * vocabulary yet, so each counts as the one token it will be (" a "). */
static int count_tokens(const run_t *r, const char *prefix, const char *text, size_t len, int *total) {
  char buf[4200];
  size_t o = (size_t)snprintf(buf, sizeof buf, "%s", prefix);
  for (const char *p = text; p < text + len && *p && o + 4 < sizeof buf;) {
    int hit = -1;
    for (int i = 0; i < r->ntok && hit < 0; i++)
      if (!strncmp(p, r->tok[i], strlen(r->tok[i]))) hit = i;
    if (hit >= 0) {
      memcpy(buf + o, " a ", 3), o += 3;
      p += strlen(r->tok[hit]);
    } else {
      buf[o++] = *p++;
    }
  }
  buf[o] = 0;
  int n;
  return cd_tokenize(r->m->tok, buf, NULL, 0, &n, total);
}

static int check_one_prompt(run_t *r, const char *text, const char *where) {
  const char *prefix = r->o.aug ? "a far away " : ""; /* the longest augmentation prefix */
  const int limit = CD_TOK_MAX_LEN - 2;
  int total;
  if (count_tokens(r, prefix, text, strlen(text), &total)) return cd_prefix_error("%s", where);
  if (total <= limit) return 0;
  for (int i = 0; i < r->ntok; i++)
    for (const char *p = strstr(text, r->tok[i]); p; p = strstr(p + 1, r->tok[i])) {
      if (count_tokens(r, prefix, text, (size_t)(p - text), &total)) return cd_prefix_error("%s", where);
      if (total >= limit)
        return cd_set_error("%s \"%.80s...\": %s comes after the %d-token limit, so it would be cut off and never train; shorten the prompt",
                            where, text, r->tok[i], limit);
    }
  cd_warn("%s is longer than %d tokens and is truncated, as in diffusers: \"%.60s...\"", where, limit, text);
  return 0;
}

/* Class captions (real ones from LAION can be long) are truncated like the
 * prompts: one warning for the folder instead of one per step. */
static int warn_long_captions(const run_t *r, const cd_item_list *l, int used, const char *dir) {
  int nlong = 0, total;
  for (int i = 0; i < used && i < l->n; i++) {
    if (!l->items[i].caption) continue;
    if (count_tokens(r, "", l->items[i].caption, strlen(l->items[i].caption), &total)) return cd_prefix_error("caption of %s", l->items[i].path);
    nlong += total > CD_TOK_MAX_LEN - 2;
  }
  if (nlong) cd_warn("%s: %d caption%s longer than %d tokens and truncated, as in diffusers", dir, nlong, nlong > 1 ? "s are" : " is", CD_TOK_MAX_LEN - 2);
  return 0;
}

static int check_prompts(run_t *r) {
  char where[2200];
  for (int k = 0; k < r->nc; k++) {
    concept_t *c = &r->c[k];
    snprintf(where, sizeof where, r->o.concepts ? "concept %d: instance_prompt" : "--prompt", k + 1);
    if (check_one_prompt(r, c->inst_prompt, where)) return -1;
    for (int i = 0; i < c->inst.n; i++)
      if (c->inst.items[i].caption) {
        snprintf(where, sizeof where, "caption of %s", c->inst.items[i].path);
        if (check_one_prompt(r, c->inst.items[i].caption, where)) return -1;
      }
  }
  return 0;
}

static int setup_class_images(run_t *r) {
  const cd_run_opts *o = &r->o;
  for (int k = 0; k < r->nc && o->prior; k++) {
    concept_t *c = &r->c[k];
    const char *dir = c->class_dir;
    if (!dir) {
      snprintf(c->class_dir_buf, sizeof c->class_dir_buf, "%s/class_images/%d", o->out, k);
      dir = c->class_dir_buf;
    }
    if (o->real_prior) { /* real photos with their captions: nothing to generate */
      if (cd_dist_agree(!cd_list_file_images(dir, &c->cls))) return cd_prefix_error("class images of concept %d", k + 1);
      c->ncls = CD_MIN(c->cls.n, o->num_class_images);
      char what[64];
      snprintf(what, sizeof what, "real class images of concept %d:", k + 1);
      cd_item_list_report(&c->cls, what, dir, c->ncls);
      if (cd_dist_agree(!warn_long_captions(r, &c->cls, c->ncls, dir))) return -1;
      continue;
    }
    cd_class_gen_opts g;
    cd_class_gen_opts_default(&g);
    g.prompt = c->class_prompt;
    g.prompts = (const char *const *)r->cls_prompts;
    g.nprompts = r->ncls_prompts;
    g.dir = dir;
    g.n = o->num_class_images;
    g.steps = o->class_steps;
    g.res = o->res;
    g.seed = o->seed;
    g.quiet = o->quiet;
    /* generation is shared by the ranks (and agreed on inside); so is every failure after it */
    if (cd_class_images_ensure(r->m, &g, NULL)) return cd_prefix_error("class images of concept %d", k + 1);
    if (cd_dist_agree(!cd_list_images(dir, &c->cls))) return cd_prefix_error("class images of concept %d", k + 1);
    c->ncls = CD_MIN(c->cls.n, o->num_class_images);
    char what[64];
    snprintf(what, sizeof what, "class images of concept %d:", k + 1);
    cd_item_list_report(&c->cls, what, dir, c->ncls);
    if (cd_dist_agree(!warn_long_captions(r, &c->cls, c->ncls, dir))) return -1;
  }
  return 0;
}

/* The validation pass, before the model is loaded: the output folder accepts
 * files, every instance image decodes (and stays decoded for training), and
 * so does every class image already on disk that will be used, so that a
 * corrupt file stops the run before hours of class-image generation. */
static int verify_data(run_t *r) {
  const cd_run_opts *o = &r->o;
  if (r->rank == 0 && cd_check_writable_dir("--out", o->out)) return -1;
  for (int k = 0; k < r->nc; k++) {
    concept_t *c = &r->c[k];
    const cd_image *img;
    for (int i = 0; i < c->inst.n; i++)
      if (cd_image_cache_get(&c->ic, &c->inst, i, &img)) {
        if (o->concepts) return cd_prefix_error("--concepts %s: concept %d: instance_data_dir", o->concepts, k + 1);
        return cd_prefix_error("--images");
      }
    char what[2200];
    if (o->concepts) { /* the flags' prompts were checked with the options (cd_run_opts_check) */
      snprintf(what, sizeof what, "concept %d: instance_prompt", k + 1);
      if (cd_text_check_utf8(what, c->inst_prompt)) return -1;
      snprintf(what, sizeof what, "concept %d: class_prompt", k + 1);
      if (c->class_prompt && cd_text_check_utf8(what, c->class_prompt)) return -1;
    }
    for (int i = 0; i < c->inst.n; i++) {
      snprintf(what, sizeof what, "caption of %s", c->inst.items[i].path);
      if (c->inst.items[i].caption && cd_text_check_utf8(what, c->inst.items[i].caption)) return -1;
    }
    snprintf(what, sizeof what, "instance images of concept %d:", k + 1);
    cd_item_list_report(&c->inst, what, c->inst_dir, c->inst.n);
    const char *dir = c->class_dir;
    char def[2100];
    if (!dir) {
      snprintf(def, sizeof def, "%s/class_images/%d", o->out, k);
      dir = def;
    }
    int have = 0;
    if (!o->prior || (!o->real_prior && (!cd_is_dir(dir) || cd_count_images(dir, &have) || !have))) continue;
    cd_item_list cls;
    if ((o->real_prior ? cd_list_file_images(dir, &cls) : cd_list_images(dir, &cls)))
      return cd_prefix_error("class images of concept %d", k + 1);
    int rc = cd_item_list_verify(&cls, o->num_class_images);
    for (int i = 0; !rc && i < cls.n && i < o->num_class_images; i++) {
      snprintf(what, sizeof what, "caption of %s", cls.items[i].path);
      if (cls.items[i].caption) rc = cd_text_check_utf8(what, cls.items[i].caption);
    }
    cd_item_list_free(&cls);
    if (rc) return cd_prefix_error("class images of concept %d", k + 1);
  }
  return 0;
}

static void fill_train_opts(const run_t *r, cd_train_opts *to_) {
  const cd_run_opts *o = &r->o;
  cd_train_opts to;
  cd_train_opts_default(&to);
  to.batch = r->nloc; /* this rank's share of the global --batch */
  to.prior = o->prior;
  to.res = o->res;
  to.train = cd_train_mode_parse(o->train);
  to.lr = r->lr;
  to.beta1 = o->adam_beta1;
  to.beta2 = o->adam_beta2;
  to.eps = o->adam_eps;
  to.weight_decay = o->adam_weight_decay;
  to.max_grad_norm = o->max_grad_norm;
  to.prior_weight = o->prior_weight;
  to.sample_latents = 1;
  to.grad_ckpt = o->grad_ckpt;
  *to_ = to;
}

/* The memory check of the validation pass, once the model's shapes are known
 * and before class images are generated or any step runs. */
static int check_memory(run_t *r) {
  cd_train_opts to;
  fill_train_opts(r, &to);
  char what[160];
  snprintf(what, sizeof what, "training at --resolution %d with --batch %d%s", r->o.res, r->nloc, r->o.prior ? " (+ as many class images)" : "");
  if (to.train == CD_TRAIN_FULL) {
    /* every UNet parameter needs an f32 value, a gradient and two AdamW moments */
    double n = 0, nkv = 0;
    for (int i = 0; i < cd_weights_count(r->m->unet.w); i++) {
      const cd_weight *x = cd_weights_at(r->m->unet.w, i);
      n += (double)cd_numel(x->ndim, x->ne);
      if (cd_train_mode_trains(CD_TRAIN_KV, x->name)) nkv += (double)cd_numel(x->ndim, x->ne);
    }
    char a[32], b[32];
    cd_warn("--train full trains all %.1f M UNet parameters: their f32 values, gradients and AdamW moments alone take %s "
            "(SD 1.5: about 14 GB), besides the activations; Custom Diffusion (crossattn_kv) trains %.1f M of them (%s)",
            n / 1e6, cd_mem_fmt(16 * n, a, sizeof a), nkv / 1e6, cd_mem_fmt(16 * nkv, b, sizeof b));
  }
  double need;
  int fits;
  if (cd_train_mem_fits(r->m, &to, r->o.grad_accum, &need, &fits)) return -1;
  if (!fits && !to.grad_ckpt) { /* it may fit when the UNet's blocks recompute their activations */
    const double plain = need;
    to.grad_ckpt = 1;
    if (cd_train_mem_estimate(r->m, &to, r->o.grad_accum, &need)) return -1;
    char a[32], b[32];
    cd_warn("training at --resolution %d needs about %s without gradient checkpointing, more than this machine allows: "
            "turning on --gradient-checkpointing (about %s; each step runs the UNet's blocks forward a second time)",
            r->o.res, cd_mem_fmt(plain, a, sizeof a), cd_mem_fmt(need, b, sizeof b));
    r->o.grad_ckpt = 1;
  }
  return cd_train_mem_check_bytes(r->m, &to, need, r->o.prior && !r->o.real_prior, what);
}

static int setup_trainer(run_t *r) {
  cd_sd_model *m = r->m;
  cd_train_opts to;
  fill_train_opts(r, &to);
  to.ntok = r->ntok;
  const char *toks[MAX_TOK];
  for (int i = 0; i < r->ntok; i++) toks[i] = r->tok[i];
  if (cd_sd_add_tokens(m, r->ntok, toks, r->init_id, NULL, to.tok_id)) return cd_prefix_error("--modifier-token");
  if (cd_trainer_init(&r->tr, m, &to)) return -1;
  r->tr_ok = 1;
  return 0;
}

static int preload_images(run_t *r) {
  for (int k = 0; k < r->nc; k++) {
    concept_t *c = &r->c[k];
    const cd_image *img;
    for (int i = 0; i < c->inst.n; i++)
      if (cd_image_cache_get(&c->ic, &c->inst, i, &img)) return -1;
    for (int i = 0; i < c->ncls; i++)
      if (cd_image_cache_get(&c->cc, &c->cls, i, &img)) return -1;
  }
  return 0;
}

static void run_free(run_t *r) {
  if (r->tr_ok) cd_trainer_free(&r->tr);
  cd_delta_free(r->init_delta);
  for (int k = 0; k < r->nc && r->c; k++) {
    cd_image_cache_free(&r->c[k].ic);
    cd_image_cache_free(&r->c[k].cc);
    cd_item_list_free(&r->c[k].inst);
    cd_item_list_free(&r->c[k].cls);
  }
  free(r->c);
  for (int i = 0; i < r->ncls_prompts; i++) free(r->cls_prompts[i]);
  free(r->cls_prompts);
  if (r->file_concepts) cd_concepts_free(r->file_concepts, r->nfile);
  cd_sd_free(r->m);
  cJSON_Delete(r->args);
  free(r->args_txt);
  free(r->bucket);
}

/* The signal that asked the run to stop (SIGINT, SIGTERM), 0 none. */
static volatile sig_atomic_t stop_sig;
/* Under MPI a rank that waits for the others when a signal comes cannot
 * finish its step: the job is ending because a rank died (mpirun/srun then
 * terminate the rest) or was cancelled. It prints the message prepared for
 * this step (where the last complete checkpoint is) and exits at once. */
static volatile sig_atomic_t dist_waiting;
static char dist_msg[3000];
static size_t dist_msg_len;
static void on_stop_signal(int sig) {
  if (dist_waiting) {
    ssize_t w = write(2, dist_msg, dist_msg_len);
    (void)w;
    _exit(128 + sig);
  }
  stop_sig = sig;
}

/* Test hook of the dying-rank test: CDIFF_TEST_DIE_AT=RANK:STEP makes that
 * world rank exit in the middle of that step (after its backward pass,
 * before the all-reduce), as a crashed node would. */
static void maybe_die(int s) {
  const char *e = getenv("CDIFF_TEST_DIE_AT");
  int rank, step;
  if (e && sscanf(e, "%d:%d", &rank, &step) == 2 && rank == cd_dist_world_rank() && step == s + 1) {
    fprintf(stderr, "cdiff: exiting in step %d as CDIFF_TEST_DIE_AT asks\n", step);
    _exit(3);
  }
}

/* Data parallelism: each rank holds the gradient of the mean loss over its
 * own nloc examples. Every loss term is a mean over examples (train.h), so
 * the gradient of the mean over the global batch is the sum over the ranks
 * of nloc / batch times theirs (uneven splits included). One bucket, one
 * in-place all-reduce; then every rank takes the same optimizer step. */
static int reduce_grads(run_t *r) {
  const float w = (float)r->nloc / (float)r->o.batch;
  if (cd_nccl_usable(r->tr.opt)) { /* GPUs: device to device, on the backend's stream (the time is the enqueueing) */
    double t0 = cd_time();
    int rc = cd_nccl_allreduce_grads(r->tr.opt, w);
    r->t_allreduce += cd_time() - t0;
    return rc;
  }
  if (!r->bucket) {
    r->nbucket = cd_optim_numel(r->tr.opt);
    r->bucket = cd_malloc((size_t)r->nbucket * sizeof(float));
  }
  if (cd_optim_grads_get(r->tr.opt, r->bucket)) return -1;
  for (int64_t i = 0; i < r->nbucket; i++) r->bucket[i] *= w;
  double t0 = cd_time();
  if (cd_dist_allreduce_sum_f32(r->bucket, r->nbucket)) return -1;
  r->t_allreduce += cd_time() - t0;
  return cd_optim_grads_set(r->tr.opt, r->bucket);
}

/* One optimizer step s: --gradient_accumulation_steps micro-batches of --batch
 * examples (micro-batch k is drawn as virtual step s*K + k, so K = 1 is the
 * plain run, and the images are those of one batch K times as large), their
 * mean gradient, and the update at the scheduled learning rate. Under MPI the
 * ranks first agree that all of them got this far (else all stop with the
 * failed rank's message), then sum the losses, the stop requests and the
 * gradients. Returns 0, 1 when a batch could not be made, -1 when the step
 * failed (message set). */
static int run_step(run_t *r, int s, batch_buf *bb, cd_step_report *rep) {
  const int K = r->o.grad_accum;
  double loss = 0, li = 0, lp = 0;
  int rc = 0;
  for (int k = 0; k < K && !rc; k++) {
    cd_batch b;
    if (make_batch(r, s * K + k, bb, &b)) rc = 1;
    else if (cd_trainer_grad(&r->tr, &b, rep) || cd_trainer_accumulate(&r->tr, k, K)) rc = -1;
    else loss += rep->loss, li += rep->loss_inst, lp += rep->loss_prior;
  }
  loss /= K, li /= K, lp /= K;
  r->agreed_sig = stop_sig;
  if (r->size > 1) {
    maybe_die(s);
    char where[2200];
    if (r->last_ckpt >= 0) snprintf(where, sizeof where, "the last complete checkpoint is %s: continue with --resume %s", r->ckpt_dir, r->o.out);
    else snprintf(where, sizeof where, "no checkpoint was written yet");
    dist_msg_len = (size_t)snprintf(dist_msg, sizeof dist_msg,
                                    "cdiff train: rank %d of %d: terminated in step %d while waiting for the other ranks: a rank died "
                                    "(see the launcher's report) or the job was cancelled; %s\n", r->rank, r->size, s + 1, where);
    if (dist_msg_len >= sizeof dist_msg) dist_msg_len = sizeof dist_msg - 1;
    dist_waiting = 1;
    if (cd_dist_agree(rc == 0)) {
      dist_waiting = 0;
      return rc ? rc : -1;
    }
    const double w = (double)r->nloc / r->o.batch;
    double d[5] = {w * loss, w * li, w * lp, stop_sig != 0, stop_sig};
    int bad = cd_dist_allreduce_sum_f64(d, 5) || reduce_grads(r);
    dist_waiting = 0;
    if (bad) return -1;
    loss = d[0], li = d[1], lp = d[2];
    r->agreed_sig = d[3] > 0 ? (stop_sig ? stop_sig : (int)lround(d[4] / d[3])) : 0;
  } else if (rc) {
    return rc;
  }
  r->tr.o.lr = (float)(r->lr * cd_lr_factor(r->lr_kind, r->o.lr_warmup_steps, r->steps, s));
  if (cd_trainer_update(&r->tr, rep)) return -1;
  rep->loss = loss, rep->loss_inst = li, rep->loss_prior = lp;
  return 0;
}

/* Rank 0 wrote (ok) or failed to write a file all ranks wait for: they agree,
 * and a failure on rank 0 becomes every rank's error. */
static int rank0_did(run_t *r, int rc) { return cd_dist_agree(rc == 0); }

static int train_loop(run_t *r, FILE *log) {
  const cd_run_opts *o = &r->o;
  const int B = r->tr.B, res = o->res, start = r->tr.step;
  const int64_t px = 3 * (int64_t)res * res, hw = (int64_t)(res / 8) * (res / 8);
  int maxn = 1;
  for (int k = 0; k < r->nc; k++) maxn = CD_MAX(maxn, CD_MAX(r->c[k].inst.n, r->c[k].ncls));
  batch_buf bb = {.pixels = cd_malloc(B * px * sizeof(float)), .mask = cd_malloc(B * hw * sizeof(float)),
                  .noise = cd_malloc(B * 4 * hw * sizeof(float)), .lnoise = cd_malloc(B * 4 * hw * sizeof(float)),
                  .ids = cd_malloc(B * CD_TOK_MAX_LEN * sizeof(int)), .ts = cd_malloc(B * sizeof(int)), .perm = cd_malloc(maxn * sizeof(int))};
  if (r->m->family == CD_FAMILY_SDXL) {
    bb.ids2 = cd_malloc(B * CD_TOK_MAX_LEN * sizeof(int));
    bb.tids = cd_malloc(B * 6 * sizeof(float));
  }
  cd_progress bar;
  cd_progress_start(&bar, start ? "training (resumed)" : "training", r->steps - start);
  if (o->quiet) bar.quiet = 1;
  int rc = 0;
  for (int s = start; s < r->steps; s++) {
    cd_step_report rep = {0};
    int bad = run_step(r, s, &bb, &rep); /* the update refuses a non-finite loss, gradient or result */
    if (bad > 0) { rc = cd_prefix_error("step %d", s + 1); break; }
    if (bad) {
      char where[2200];
      if (r->last_ckpt >= 0) snprintf(where, sizeof where, "the last good checkpoint (step %d) is in %s", r->last_ckpt, r->ckpt_dir);
      else snprintf(where, sizeof where, "no checkpoint was written yet (--checkpoint-every N)");
      char why[1024];
      snprintf(why, sizeof why, "%s", cd_last_error());
      rc = cd_set_error("training stopped at step %d: %s; %s", s + 1, why, where);
      break;
    }
    if (log) {
      fprintf(log, "{\"step\": %d, \"loss\": %.9g, \"loss_instance\": %.9g, \"loss_prior\": %.9g, \"lr\": %.7g, \"grad_norm\": %.9g}\n", s + 1,
              rep.loss, rep.loss_inst, rep.loss_prior, (double)r->tr.o.lr, rep.grad_norm);
      fflush(log);
    }
    cd_progress_set_loss(&bar, rep.loss);
    cd_progress_update(&bar, s + 1 - start);
    int last = s + 1 == r->steps;
    /* a stop request (signal, or stop_after in tests) ends the run after this
     * step with a checkpoint; at the last step the run simply completes */
    int sig = r->size > 1 ? r->agreed_sig : stop_sig, stop = !last && (sig || s + 1 == o->stop_after);
    if ((o->checkpoint_every > 0 && ((s + 1) % o->checkpoint_every == 0 || last)) || stop) {
      if (rank0_did(r, r->rank == 0 ? save_checkpoint(r) : 0)) {
        rc = cd_prefix_error("checkpoint at step %d", s + 1);
        break;
      }
      r->last_ckpt = r->tr.step; /* the other ranks know where rank 0 wrote it */
      snprintf(r->ckpt_dir, sizeof r->ckpt_dir, "%s/%s%d", r->o.out, CD_RUN_CKPT_PREFIX, r->tr.step);
    }
    if (stop) {
      if (o->stopped_by) *o->stopped_by = sig;
      rc = cd_set_error("%s after step %d of %d; the checkpoint is %s: continue with --resume %s", sig == SIGINT ? "interrupted (SIGINT)" :
                        sig == SIGTERM ? "terminated (SIGTERM)" : sig ? "stopped by a signal" : "stopped", s + 1, r->steps, r->ckpt_dir, o->out);
      break;
    }
    if (o->validate_every > 0 && (s + 1) % o->validate_every == 0 && rank0_did(r, r->rank == 0 ? validate(r, s + 1) : 0)) {
      rc = -1;
      break;
    }
  }
  cd_progress_finish(&bar);
  free(bb.pixels); free(bb.mask); free(bb.noise); free(bb.lnoise); free(bb.ids); free(bb.ts); free(bb.perm);
  free(bb.ids2); free(bb.tids);
  return rc;
}

/* 1 when path is dir or lies inside it (real paths), else 0 */
static int path_within(const char *path, const char *dir) {
  char rp[PATH_MAX], rd[PATH_MAX];
  if (!realpath(path, rp) || !realpath(dir, rd)) return 0;
  size_t n = strlen(rd);
  return !strncmp(rp, rd, n) && (rp[n] == 0 || rp[n] == '/' || (n == 1 && rd[0] == '/'));
}

/* Settles OUT before any work: an earlier run there is continued (--resume),
 * replaced (--overwrite) or an error; leftovers of killed runs go; the
 * checkpoint to resume from, if any, goes to state_dir ("" none). */
static int prepare_out(run_t *r, char *state_dir, size_t cap) {
  const cd_run_opts *o = &r->o;
  const char *res = o->resume && !strcmp(o->resume, "latest") ? o->out : o->resume;
  int in_place = res && path_within(res, o->out);
  char what[64];
  *state_dir = 0;
  if (r->rank != 0) { /* rank 0 settled the folder already: only find the checkpoint */
    int none;
    if (res && find_state(res, state_dir, cap, &none)) {
      if (!(none && (in_place || !strcmp(o->resume, "latest")))) return -1;
      *state_dir = 0;
    }
    return 0;
  }
  if (o->overwrite && in_place) return cd_set_error("--overwrite would remove the run in %s that --resume continues: give only one of them", o->out);
  if (!o->overwrite && !in_place && cd_run_dir_holds_run(o->out, what, sizeof what))
    return cd_set_error("--out %s already holds a training run (%s): continue it with --resume %s, replace it with --overwrite, "
                        "or choose another --out", o->out, what, o->out);
  if (cd_mkdir_p(o->out) || cd_run_dir_clean_stale(o->out)) return cd_prefix_error("--out");
  if (res) {
    int none;
    if (find_state(res, state_dir, cap, &none)) {
      if (!(none && (in_place || !strcmp(o->resume, "latest")))) return -1;
      cd_warn("--resume %s: %s holds no checkpoint yet; starting from step 0", o->resume, res);
      *state_dir = 0;
    }
  }
  if (o->overwrite && cd_run_dir_clear(o->out)) return cd_prefix_error("--overwrite");
  return 0;
}

/* This rank's contiguous share [lo, lo+nloc) of the global --batch: balanced,
 * the first ranks taking one more when the split is uneven. */
static int split_batch(run_t *r) {
  if (r->o.batch < r->size)
    return cd_set_error("--batch %d is smaller than the %d ranks: every rank needs at least one example of the global batch", r->o.batch,
                        r->size);
  r->lo = (int)((int64_t)r->rank * r->o.batch / r->size);
  r->nloc = (int)((int64_t)(r->rank + 1) * r->o.batch / r->size) - r->lo;
  return 0;
}

/* --each: the concepts of the file as independent runs. The ranks form
 * min(ranks, concepts) groups (MPI_Comm_split; rank w joins group w % groups),
 * and group g trains concepts g, g + groups, ... one after the other, each
 * data-parallel over the group's ranks into OUT/concept-K with its own
 * modifier token (<newK> by default) so that the deltas combine later. */
static int train_each(const cd_run_opts *o) {
  cd_concept *cs = NULL;
  int n = 0;
  if (cd_concepts_load(o->concepts, &cs, &n)) return cd_prefix_error("--concepts");
  if (o->each_index > n) {
    cd_concepts_free(cs, n);
    return cd_set_error("--each-index %d: %s lists only %d concept(s)", o->each_index, o->concepts, n);
  }
  char toks[MAX_TOK][32], inits[MAX_TOK][32];
  int ntok = 0, ninit = 0, rc = 0;
  if (o->modifier_tokens && (ntok = split_list(o->modifier_tokens, toks, MAX_TOK, "--modifier-token")) < 0) rc = -1;
  if (!rc && o->initializers && (ninit = split_list(o->initializers, inits, MAX_TOK, "--initializer-token")) < 0) rc = -1;
  if (!rc && ntok > 1 && ntok != n) rc = cd_set_error("--modifier-token: with --each give one token, or one per concept (%d)", n);
  if (!rc && ninit > 1 && ninit != n) rc = cd_set_error("--initializer-token: with --each give one token, or one per concept (%d)", n);
  if (rc) {
    cd_concepts_free(cs, n);
    return -1;
  }
  const int first = o->each_index ? o->each_index - 1 : 0, count = o->each_index ? 1 : n;
  const int size = cd_dist_size(), groups = CD_MIN(size, count), g = cd_dist_rank() % groups;
  if (cd_dist_split(g)) {
    cd_concepts_free(cs, n);
    return -1;
  }
  if (!cd_silent && groups > 1) fprintf(stderr, "--each: %d concepts over %d rank groups\n", count, groups);
  for (int j = g; j < count && !rc; j += groups) {
    const int k = first + j;
    cd_run_opts c = *o;
    char out[2200], tok[40], init[40];
    snprintf(out, sizeof out, "%s/concept-%d", o->out, k + 1);
    snprintf(tok, sizeof tok, "%s", ntok > 1 ? toks[k] : ntok == 1 ? toks[0] : "");
    if (!ntok) snprintf(tok, sizeof tok, "<new%d>", k + 1);
    snprintf(init, sizeof init, "%s", ninit > 1 ? inits[k] : ninit == 1 ? inits[0] : default_inits[k % 3]);
    c.each = 0, c.each_index = 0, c.concepts = NULL;
    c.images = cs[k].instance_data_dir;
    c.prompt = cs[k].instance_prompt;
    c.class_prompt = cs[k].class_prompt;
    c.class_images = cs[k].class_data_dir;
    c.modifier_tokens = tok;
    c.initializers = init;
    c.out = out;
    /* each group's rank 0 names its concept; the rest of the output is the world rank 0's */
    if (cd_dist_rank() == 0) fprintf(stderr, "--each: concept %d (%s) on %d rank(s) -> %s\n", k + 1, c.prompt, cd_dist_size(), out);
    rc = cd_train_run(&c);
    if (rc) cd_prefix_error("--each: concept %d (%s)", k + 1, out);
  }
  cd_dist_unsplit();
  cd_concepts_free(cs, n);
  return cd_dist_agree(rc == 0); /* every group's outcome, for every rank */
}

int cd_train_run(const cd_run_opts *opts) {
  if (opts->each) {
    if (cd_run_opts_check(opts)) return -1;
    return train_each(opts);
  }
  run_t r;
  memset(&r, 0, sizeof r);
  r.o = *opts;
  r.last_ckpt = -1;
  FILE *log = NULL;
  char resume_state[2300] = "", log_path[2200];
  if (opts->stopped_by) *opts->stopped_by = 0;
  int rc = -1;
  /* Under MPI every phase ends with the ranks' agreement (cd_dist_agree), so
   * that one rank's failure stops all of them, with its message. */
  r.rank = cd_dist_rank();
  r.size = cd_dist_size();
  if (cd_dist_agree(!cd_run_opts_check(&r.o) && !split_batch(&r) && !cd_lr_parse(r.o.lr_scheduler, &r.lr_kind) &&
                    !setup_concepts(&r) && !verify_data(&r)))
    goto done;
  if (r.lr_kind == CD_LR_CONSTANT && r.o.lr_warmup_steps > 0)
    cd_warn("--lr_warmup_steps %d has no effect with --lr_scheduler constant (as in diffusers; use constant_with_warmup)", r.o.lr_warmup_steps);
  r.steps = r.o.steps > 0 ? r.o.steps : r.nc > 1 ? 500 : 250;
  /* --scale_lr as the script: × batch × accumulation steps (× 2 with prior preservation) */
  r.lr = r.o.lr * (r.o.scale_lr ? (float)(r.o.batch * r.o.grad_accum * (r.o.prior ? 2 : 1)) : 1.0f);
  /* rank 0 settles --out first; then the others find the checkpoint in it */
  if (rank0_did(&r, r.rank == 0 ? prepare_out(&r, resume_state, sizeof resume_state) : 0)) goto done;
  if (cd_dist_agree(r.rank == 0 || !prepare_out(&r, resume_state, sizeof resume_state))) goto done;
  if (cd_dist_agree(!setup_model(&r) && !check_prompts(&r) && !check_memory(&r))) goto done;
  if (setup_class_images(&r) || cd_dist_agree(!setup_trainer(&r))) goto done; /* class images agree inside */
  r.args = make_args(&r);
  r.args_txt = cJSON_PrintUnformatted(r.args);
  if (cd_dist_agree(!(*resume_state && load_state(&r, resume_state)) && !preload_images(&r))) goto done;
  snprintf(log_path, sizeof log_path, "%s/%s", r.o.out, CD_RUN_LOG_FILE);
  if (rank0_did(&r, r.rank == 0 && !(log = open_log(log_path, r.tr.step)) ? -1 : 0)) goto done;
  cd_log("training: %d concept(s), %d token(s), %d steps from step %d, batch %d+%d, lr %g%s\n", r.nc, r.ntok, r.steps, r.tr.step,
         r.o.batch, r.o.prior ? r.o.batch : 0, r.lr, r.size > 1 ? " (data-parallel)" : "");
  if (r.size > 1) cd_log("data-parallel: %d ranks, rank 0 takes instance examples %d..%d of %d\n", r.size, r.lo, r.lo + r.nloc - 1, r.o.batch);
  struct sigaction sa, old_int, old_term;
  if (r.o.handle_signals) { /* a second signal kills at once (SA_RESETHAND) */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    stop_sig = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  int trained = train_loop(&r, log);
  if (r.o.handle_signals) {
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
  }
  if (trained) goto done;
  if (r.size > 1 && r.tr.step > 0)
    cd_log("data-parallel: gradient all-reduce %.3f s per step (%lld floats)\n", r.t_allreduce / r.steps, (long long)r.nbucket);
  rc = rank0_did(&r, r.rank == 0 ? write_delta(&r, r.o.out) : 0);
  if (!rc && !r.o.quiet && !cd_silent) fprintf(stderr, "wrote %s/%s (%d steps)\n", r.o.out, CD_DELTA_FILE, r.tr.step);
done:
  if (log) fclose(log);
  run_free(&r);
  return rc;
}
