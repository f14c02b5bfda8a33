/* cmd_sample.c - cdiff sample: text to image, with optional Custom Diffusion deltas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "args.h"
#include "cli_device.h"
#include "infotext.h"
#include "commands.h"
#include "core/common.h"
#include "core/utf8.h"
#include "custom/delta.h"
#include "diffusion/mem_estimate.h"
#include "diffusion/pipeline.h"
#include "models/prompt.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "io/tensor_file.h"
#include "io/writable.h"
#include "sample_out.h"

static int write_latents(const char *path, const float *x, int n, int64_t h, int64_t w) {
  cd_tensor_out t = {.name = "latents", .dtype = CD_DT_F32, .ndim = 4, .shape = {n, 4, h, w}, .data = x};
  return cd_safetensors_write(path, &t, 1, NULL, 0);
}

static int read_latents(const char *path, int *n, int64_t h, int64_t w, float **out) {
  cd_tensor_file *f;
  if (cd_tensor_file_open(path, &f)) return -1;
  const cd_tensor_info *t = cd_tf_find(f, "latents");
  int rc = -1;
  if (!t) {
    cd_set_error("--init-latents %s: no tensor named 'latents'", path);
  } else if (t->ndim != 4 || t->shape[1] != 4 || t->shape[2] != h || t->shape[3] != w || (*n > 0 && t->shape[0] != *n)) {
    cd_set_error("--init-latents %s: 'latents' has shape [%ld,%ld,%ld,%ld], expected [%d,4,%ld,%ld]", path, (long)t->shape[0],
                 (long)(t->ndim > 1 ? t->shape[1] : 0), (long)(t->ndim > 2 ? t->shape[2] : 0), (long)(t->ndim > 3 ? t->shape[3] : 0),
                 *n > 0 ? *n : 1, (long)h, (long)w);
  } else {
    *n = (int)t->shape[0];
    *out = cd_malloc(cd_tensor_numel(t) * sizeof(float));
    rc = cd_tf_read_f32(f, t, *out);
  }
  cd_tensor_file_close(f);
  return rc;
}

static int is_jpeg_name(const char *path) {
  const char *dot = strrchr(path, '.');
  return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

/* What an image's metadata records: only what was used. */
typedef struct {
  const char *prompt, *negative, *sampler, *scheduler, *model, *model_hash, *deltas, *init_latents, *init_image;
  int steps, width, height, eta_used, clip_skip;
  float cfg, eta, strength;
} sample_meta;

static const char *base_name(const char *path, char *buf, size_t cap) { /* "dir/sd15.safetensors" -> "sd15" */
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/') n--;
  const char *b = path + n;
  while (b > path && b[-1] != '/') b--;
  const char *dot = memchr(b, '.', (size_t)(path + n - b));
  snprintf(buf, cap, "%.*s", (int)((dot ? dot : path + n) - b), b);
  return buf;
}

/* PNG with cdiff's text keys plus A1111's "parameters"; JPEG (by extension) with the parameters as EXIF UserComment */
static int save_image(const char *path, const cd_image *im, const sample_meta *s, uint64_t seed) {
  char sseed[32], ssteps[16], scfg[32], seta[32], ssize[32], sstr[32], sclip[16], name[256];
  snprintf(sclip, sizeof sclip, "%d", s->clip_skip);
  snprintf(sseed, sizeof sseed, "%llu", (unsigned long long)seed);
  snprintf(ssteps, sizeof ssteps, "%d", s->steps);
  snprintf(scfg, sizeof scfg, "%g", s->cfg);
  snprintf(seta, sizeof seta, "%g", s->eta);
  snprintf(ssize, sizeof ssize, "%dx%d", s->width, s->height);
  snprintf(sstr, sizeof sstr, "%g", s->strength);
  cli_infotext t;
  cli_infotext_init(&t, s->prompt, s->negative);
  cli_infotext_add(&t, "Steps", "%d", s->steps);
  cli_infotext_add(&t, "Sampler", "%s", cli_a1111_sampler(s->sampler));
  if (strcmp(s->scheduler, "discrete")) cli_infotext_add(&t, "Schedule type", "%c%s", s->scheduler[0] - 'a' + 'A', s->scheduler + 1);
  cli_infotext_add(&t, "CFG scale", "%g", s->cfg);
  cli_infotext_add(&t, "Seed", "%s", sseed);
  cli_infotext_add(&t, "Size", "%s", ssize);
  cli_infotext_add(&t, "Model hash", "%s", s->model_hash);
  cli_infotext_add(&t, "Model", "%s", base_name(s->model, name, sizeof name));
  if (s->clip_skip > 1) cli_infotext_add(&t, "Clip skip", "%d", s->clip_skip);
  if (s->eta_used && s->eta > 0) cli_infotext_add(&t, "Eta", "%g", s->eta); /* A1111 names a non-default eta only */
  if (s->init_image) cli_infotext_add(&t, "Denoising strength", "%g", s->strength);
  if (*s->deltas) cli_infotext_add(&t, "Custom Diffusion deltas", "%s", s->deltas);
  cli_infotext_add(&t, "Version", "cdiff");
  const char *kv[40];
  int n = 0;
#define KV(k, v) (kv[n++] = (k), kv[n++] = (v))
  KV("prompt", s->prompt);
  KV("negative_prompt", s->negative);
  KV("seed", sseed);
  KV("sampler", s->sampler);
  KV("steps", ssteps);
  KV("cfg_scale", scfg);
  if (s->eta_used) KV("eta", seta);
  KV("size", ssize);
  KV("model", s->model);
  KV("model_hash", s->model_hash);
  if (*s->deltas) KV("deltas", s->deltas);
  KV("scheduler", s->scheduler);
  KV("clip_skip", sclip);
  if (!strcmp(s->scheduler, "karras")) KV("karras", "1");
  if (s->init_latents) KV("init_latents", s->init_latents);
  if (s->init_image) KV("init_image", s->init_image), KV("strength", sstr);
  KV("software", "cdiff");
  KV("parameters", t.s);
#undef KV
  int rc = is_jpeg_name(path) ? cd_image_save_jpeg(path, im, 95, t.s) : cd_image_save_png(path, im, kv, n / 2);
  cli_infotext_free(&t);
  return rc;
}

static const cli_cmd spec = {"sample", "--model PATH --prompt TEXT --out FILE.png|FILE.jpg|DIR [flags]"};

/* The sampler's fit with the sigma schedule and the step count (usage errors). */
static int check_sampler(cli_opt *opts, cd_sampler_kind kind, cd_sigma_sched sigsched, int steps) {
  if (sigsched != CD_SIGMAS_DISCRETE && !cd_sampler_sigma_based(kind)) {
    cli_error(opts, &spec, "--scheduler",
              "%s needs a sigma sampler (euler, euler_a, dpmpp_2m, heun, dpm2, dpmpp_2s_a, dpmpp_sde), not %s",
              cd_sigma_sched_name(sigsched), cd_sampler_name(kind));
    return -1;
  }
  if (kind == CD_SAMPLER_LCM && steps > 50) {
    cli_error(opts, &spec, "--steps", "must be in 1..50 for lcm (its original_inference_steps; got %d)", steps);
    return -1;
  }
  return 0;
}

/* "A,B": two integers, positive (or >= 0 when !positive) */
static int parse_pair(const char *s, int positive, int *a, int *b) {
  char *e1, *e2 = NULL;
  long x = strtol(s, &e1, 10);
  long y = e1 != s && *e1 == ',' ? strtol(e1 + 1, &e2, 10) : 0;
  if (e1 == s || *e1 != ',' || e2 == e1 + 1 || *e2 || x < !!positive || y < !!positive || x > 1 << 20 || y > 1 << 20)
    return cd_set_error("expects two %s integers A,B (got '%s')", positive ? "positive" : "non-negative", s);
  *a = (int)x;
  *b = (int)y;
  return 0;
}


int cmd_sample(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *negative = "", *sampler = NULL, *out = NULL, *init = NULL, *save = NULL;
  const char *orig_size = NULL, *crop = NULL, *target_size = NULL;
  const char *prediction = NULL, *vocab = NULL, *init_image = NULL, *scheduler = NULL, *weights_dtype = NULL;
  float strength = 0.75f;
  int steps = 30, width = 0, height = 0, n = 0, karras = 0, tile = 0, clip_skip = 1, overwrite = 0;
  float cfg = 7.5f, eta = 0.0f;
  uint64_t seed = 42;
  cli_multi deltas = {0};
  const char *device = NULL;
  cli_opt opts[] = {
      {"--model", CLI_STR, &model, "PATH", "diffusers folder or single-file .safetensors/.ckpt (required)", "-m", CLI_REQUIRED},
      {"--prompt", CLI_STR, &prompt, "TEXT", "the prompt (required; (word:1.2) weights, BREAK, sub-prompts joined by AND)", "-p", CLI_REQUIRED},
      {"--negative", CLI_STR, &negative, "TEXT", "negative prompt (default empty)", "-n --negative-prompt"},
      {"--sampler", CLI_STR, &sampler, "NAME",
       "ddim|ddpm|pndm|euler|euler_a|dpmpp_2m|heun|dpm2|dpmpp_2s_a|dpmpp_sde|lcm (default ddim; SDXL: euler, its scheduler; aliases plms, dpm++2m, dpm++2s_a, dpm++sde)",
       "--sampling-method"},
      {"--steps", CLI_INT, &steps, "N", "sampling steps (default 30)", NULL, CLI_RANGE(1, 1000)},
      {"--cfg", CLI_FLOAT, &cfg, "S", "classifier-free guidance scale (default 7.5; <= 1 disables)", "--cfg-scale", CLI_MIN(0)},
      {"--eta", CLI_FLOAT, &eta, "E", "DDIM eta (default 0)", NULL, CLI_RANGE(0, 10)},
      {"--scheduler", CLI_STR, &scheduler, "NAME", "sigma schedule of the sigma samplers: discrete|karras|exponential (default discrete)", "--schedule"},
      {"--karras", CLI_FLAG, &karras, "", "same as --scheduler karras"},
      {"--clip-skip", CLI_INT, &clip_skip, "N", "text-encoder layer: 1 = the model's default (SD 1.x last, SD 2.x penultimate), 2 = one before, ... (default 1)", NULL, CLI_MIN(1)},
      {"--seed", CLI_SEED, &seed, "N", "seed of the initial noise; image i uses seed+i (default 42; -1: random)", "-s"},
      {"--width", CLI_INT, &width, "W", "image width in pixels (default: the model's resolution, 512 for SD 1.x, 1024 for SDXL)", "-W", CLI_MIN(8)},
      {"--height", CLI_INT, &height, "H", "image height in pixels (default: --width)", "-H", CLI_MIN(8)},
      {"--n", CLI_INT, &n, "N", "number of images (default 1)", "-b --batch-count", CLI_RANGE(1, 64)},
      {"--original-size", CLI_STR, &orig_size, "W,H", "SDXL micro-conditioning: the original image size (default: the image size)"},
      {"--crop", CLI_STR, &crop, "T,L", "SDXL micro-conditioning: crop top-left (default 0,0)"},
      {"--target-size", CLI_STR, &target_size, "W,H", "SDXL micro-conditioning: the target size (default: the image size)"},
      {"--init-latents", CLI_STR, &init, "F", "safetensors with 'latents' [N,4,H/8,W/8] replacing the seeded noise"},
      {"--init-image", CLI_STR, &init_image, "F", "img2img: start from this PNG/JPEG (resized to --width x --height)", "-i --init-img"},
      {"--strength", CLI_FLOAT, &strength, "S", "img2img: 1 = ignore the image, 0 = keep it (default 0.75)", NULL, CLI_RANGE(0, 1)},
      {"--save-latents", CLI_STR, &save, "F", "write the final latents (before decoding)"},
      {"--delta", CLI_MULTI, &deltas, "DIR|FILE", "Custom Diffusion delta to apply (repeatable)"},
      {"--prediction", CLI_STR, &prediction, "eps|v", "override the model's prediction type", NULL, CLI_CHOICES("eps|v|epsilon|v_prediction")},
      {"--vocab", CLI_STR, &vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
      {"--weights-dtype", CLI_STR, &weights_dtype, "f32|f16|bf16", "storage of the weights in memory (default: the checkpoint's own)", NULL, CLI_CHOICES("f32|f16|bf16")},
      CLI_DEVICE_OPT(&device),
      {"--tile", CLI_INT, &tile, "N", "VAE-decode in latent tiles of N (large images)", NULL, CLI_MIN(4)},
      {"--out", CLI_STR, &out, "FILE.png|FILE.jpg|DIR/", "output image (PNG; JPEG for .jpg/.jpeg), or folder (made if missing) of NNNNN-SEED-prompt.png files (required)", "-o --output", CLI_REQUIRED},
      {"--overwrite", CLI_FLAG, &overwrite, "", "replace an existing --out FILE"},
      {0}};
  int r = cli_parse(argc, argv, opts, &spec, NULL);
  if (r != CLI_GO) return r;
  if ((r = cli_device(opts, &spec, device)) != CLI_GO) return r;
  cd_gen_opts go = {.prompt = prompt, .negative = negative, .cfg = cfg};
  if (cd_sampler_parse(sampler ? sampler : "ddim", &go.s.kind)) return cli_error(opts, &spec, "--sampler", "%s", cd_last_error());
  if (orig_size && parse_pair(orig_size, 1, &go.micro.orig_w, &go.micro.orig_h))
    return cli_error(opts, &spec, "--original-size", "%s", cd_last_error());
  if (crop && parse_pair(crop, 0, &go.micro.crop_top, &go.micro.crop_left))
    return cli_error(opts, &spec, "--crop", "%s", cd_last_error());
  if (target_size && parse_pair(target_size, 1, &go.micro.target_w, &go.micro.target_h))
    return cli_error(opts, &spec, "--target-size", "%s", cd_last_error());
  cd_sigma_sched sigsched = karras ? CD_SIGMAS_KARRAS : CD_SIGMAS_DISCRETE;
  if (scheduler && cd_sigma_sched_parse(scheduler, &sigsched)) return cli_error(opts, &spec, "--scheduler", "%s", cd_last_error());
  if (karras && sigsched != CD_SIGMAS_KARRAS) return cli_error(opts, &spec, "--karras", "contradicts --scheduler %s", scheduler);
  /* without --sampler the model's own scheduler decides (SDXL: euler), checked after loading */
  if (sampler && check_sampler(opts, go.s.kind, sigsched, steps)) return CLI_EXIT_USAGE;
  if (!init_image) cli_warn_unused(opts, "--strength", "without --init-image; not recorded");
  go.s.steps = steps;
  go.s.eta = eta;
  go.s.sigma_sched = sigsched;
  for (int i = 0; i < 2; i++) { /* weighting syntax errors before anything is loaded */
    cd_prompt_frag *pf;
    int npf;
    if (cd_text_check_utf8("value", i ? negative : prompt) || cd_prompt_parse(i ? negative : prompt, &pf, &npf))
      return cli_error(opts, &spec, i ? "--negative" : "--prompt", "%s", cd_last_error());
    cd_prompt_frags_free(pf, npf);
  }
  cd_prompt_sub *subs;
  int nsub; /* sub-prompts joined by AND: each one more UNet pass per image */
  if (cd_prompt_split_and(prompt, &subs, &nsub)) return cli_error(opts, &spec, "--prompt", "%s", cd_last_error());
  cd_prompt_subs_free(subs, nsub);
  go.s.seed = seed;

  /* the validation pass, before the model is loaded: where the images go is
   * settled (the folder made, nothing that would be overwritten), other
   * outputs writable, inputs readable */
  sample_out so;
  cd_image src = {0};
  if (sample_out_init(&so, out, n > 0 ? n : 1, overwrite, prompt) || (save && cd_check_writable_file("--save-latents", save)) ||
      (init && !cd_is_file(init) && cd_set_error("--init-latents %s: no such file", init)) ||
      (init_image && cd_image_load(init_image, &src) && cd_prefix_error("--init-image"))) {
    fprintf(stderr, "cdiff sample: %s\n", cd_last_error());
    return 1;
  }
  cd_load_opts lo = {.prediction = prediction, .vocab = vocab, .weights_dtype = weights_dtype};
  cd_sd_model *m = NULL;
  if (cd_sd_load(model, &lo, &m)) {
    fprintf(stderr, "cdiff sample: %s\n", cd_last_error());
    cd_image_free(&src);
    return 1;
  }
  if (!sampler && m->family == CD_FAMILY_SDXL) go.s.kind = CD_SAMPLER_EULER; /* SDXL base's scheduler */
  if (!sampler && check_sampler(opts, go.s.kind, sigsched, steps)) {
    cd_image_free(&src);
    cd_sd_free(m);
    return CLI_EXIT_USAGE;
  }
  int eta_used = go.s.kind == CD_SAMPLER_DDIM; /* the only sampler with a free eta (DDPM's is 1) */
  if (!eta_used) cli_warn_unused(opts, "--eta", "with this sampler (only ddim takes an eta); not recorded");
  if (m->family != CD_FAMILY_SDXL) {
    static const char *const mc[3] = {"--original-size", "--crop", "--target-size"};
    for (int i = 0; i < 3; i++) cli_warn_unused(opts, mc[i], "on SD 1.x/2.x (no micro-conditioning): no effect");
  }
  /* SDXL: both encoders take the same clip skip (diffusers' clip_skip applies to both) */
  if (m->family == CD_FAMILY_SDXL && cd_clip_set_skip(&m->clip2, clip_skip)) {
    cd_image_free(&src);
    cd_sd_free(m);
    return cli_error_msg(opts, &spec, cd_last_error());
  }
  if (cd_clip_set_skip(&m->clip, clip_skip)) { /* the range depends on the model's text encoder */
    cd_image_free(&src);
    cd_sd_free(m);
    return cli_error_msg(opts, &spec, cd_last_error());
  }
  for (int i = 0; i < deltas.n; i++) {
    if (cd_delta_apply_path(m, deltas.v[i])) {
      fprintf(stderr, "cdiff sample: --delta %s: %s\n", deltas.v[i], cd_last_error());
      cd_image_free(&src);
      cd_sd_free(m);
      return 1;
    }
  }
  int def = 8 * (m->unet.cfg.sample_size > 0 ? m->unet.cfg.sample_size : 64); /* the model's training resolution */
  float *init_px = NULL;
  if (init_image) {
    if (!width && !height) { /* the image's size, down to a multiple of 8 */
      width = src.w / 8 * 8;
      height = src.h / 8 * 8;
      if (!width || !height) width = height = def;
    }
  }
  if (!width) width = height ? height : def;
  if (!height) height = width;
  go.width = width;
  go.height = height;
  int64_t h = height / 8, w = width / 8;
  float *init_buf = NULL, *lat = NULL, *img = NULL;
  int rc = 1;
  if (init_image) {
    cd_image rs;
    if (cd_image_resize(&src, width, height, &rs)) goto fail;
    init_px = cd_malloc((size_t)3 * width * height * sizeof(float));
    cd_image_to_chw(&rs, init_px);
    cd_image_free(&rs);
    go.init_image = init_px;
    go.strength = strength;
  }
  if (init) {
    if (read_latents(init, &n, h, w, &init_buf)) goto fail;
    go.init_latents = init_buf;
  }
  go.n = n > 0 ? n : 1;
  if (sample_out_check(&so, go.n)) goto fail;
  if (width > 0 && height > 0) { /* refuse what cannot fit before allocating it (an OOM abort otherwise) */
    char what[128];
    snprintf(what, sizeof what, "--width %d --height %d (%d image%s)", width, height, go.n, go.n > 1 ? "s" : "");
    if (cd_sample_mem_check(m, go.n, cd_guidance_passes(nsub, cfg), width, height, tile, init_image != NULL, what)) goto fail;
  }
  lat = cd_malloc((size_t)go.n * 4 * h * w * sizeof(float));
  if (cd_generate_latents(m, &go, lat)) goto fail;
  if (save && write_latents(save, lat, go.n, h, w)) goto fail;
  img = cd_malloc((size_t)go.n * 3 * height * width * sizeof(float));
  if (cd_decode_latents(m, lat, go.n, (int)h, (int)w, tile, img)) goto fail;
  char dl[1024] = "";
  for (int d = 0, k = 0; d < deltas.n && k < (int)sizeof dl; d++) k += snprintf(dl + k, sizeof dl - k, "%s%s", d ? ";" : "", deltas.v[d]);
  sample_meta meta = {.prompt = prompt, .negative = negative, .sampler = cd_sampler_name(go.s.kind),
                      .scheduler = cd_sigma_sched_name(sigsched), .model = model, .model_hash = m->hash, .deltas = dl,
                      .init_latents = init, .init_image = init_image, .steps = steps, .width = width, .height = height,
                      .eta_used = eta_used, .clip_skip = clip_skip, .cfg = cfg, .eta = eta, .strength = strength};
  for (int i = 0; i < go.n; i++) {
    char path[2048];
    sample_out_path(&so, i, go.n, seed + i, path, sizeof path);
    cd_image im;
    cd_chw_to_image(img + (size_t)i * 3 * height * width, 3, height, width, &im);
    int r = save_image(path, &im, &meta, seed + i);
    cd_image_free(&im);
    if (r) goto fail;
    fprintf(stderr, "wrote %s\n", path);
  }
  fprintf(stderr, "peak memory %.0f MiB\n", cd_peak_rss_bytes() / 1048576.0);
  rc = 0;
fail:
  if (rc) fprintf(stderr, "cdiff sample: %s\n", cd_last_error());
  free(init_buf);
  free(init_px);
  cd_image_free(&src);
  free(lat);
  free(img);
  cd_sd_free(m);
  return rc;
}
