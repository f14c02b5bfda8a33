/* dataset.c - image folders, concepts JSON, and the CustomDiffusionDataset
 * preprocessing of diffusers' train_custom_diffusion.py (see dataset.h). */
#include "custom/dataset.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "io/fsutil.h"

/* ---- image folders ---- */

static int has_image_ext(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot || dot == name) return 0;
  return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".webp") ||
         !strcasecmp(dot, ".bmp");
}

static int is_caption(const char *name) {
  const char *dot = strrchr(name, '.');
  return dot && !strcasecmp(dot, ".txt");
}

/* appends name to the comma-separated list of skipped files (the first 5) */
static void note_skipped(cd_item_list *l, const char *name) {
  if (l->nskipped++ >= 5) return;
  size_t old = l->skipped_names ? strlen(l->skipped_names) : 0, n = strlen(name);
  l->skipped_names = cd_realloc(l->skipped_names, old + n + 3);
  snprintf(l->skipped_names + old, n + 3, "%s%s", old ? ", " : "", name);
}

/* Trims s in place; returns the start of the trimmed text. */
static char *trim(char *s) {
  while (*s && isspace((unsigned char)*s)) s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = 0;
  return s;
}

/* caption of image path: <stem>.txt beside it; *out NULL when none or empty. */
static int read_caption(const char *img_path, char **out) {
  *out = NULL;
  const char *dot = strrchr(img_path, '.');
  size_t stem = (size_t)(dot - img_path);
  char *txt = cd_malloc(stem + 5);
  memcpy(txt, img_path, stem);
  memcpy(txt + stem, ".txt", 5);
  if (!cd_is_file(txt)) { free(txt); return 0; }
  char *data;
  size_t n;
  if (cd_read_file(txt, &data, &n)) {
    cd_prefix_error("caption of %s", img_path);
    free(txt);
    return -1;
  }
  if (memchr(data, 0, n)) {
    cd_set_error("%s: caption contains a NUL byte (not a text file?)", txt);
    free(data);
    free(txt);
    return -1;
  }
  char *t = trim(data);
  if (*t) *out = cd_strdup(t);
  free(data);
  free(txt);
  return 0;
}

static int cmp_item(const void *a, const void *b) {
  return strcmp(((const cd_item *)a)->path, ((const cd_item *)b)->path);
}

/* The image files of dir, unsorted and without captions (may be none). */
static int scan_images(const char *dir, cd_item_list *out) {
  memset(out, 0, sizeof *out);
  DIR *d = opendir(dir);
  if (!d) return cd_set_error("image folder %s: %s", dir, strerror(errno));
  int cap = 0;
  struct dirent *e;
  errno = 0;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || is_caption(e->d_name)) continue;
    char *p = cd_path_join(dir, e->d_name);
    if (!cd_is_file(p)) { free(p); continue; }
    if (!has_image_ext(e->d_name)) {
      note_skipped(out, e->d_name);
      free(p);
      continue;
    }
    if (out->n == cap) {
      cap = cap ? 2 * cap : 16;
      out->items = cd_realloc(out->items, (size_t)cap * sizeof(cd_item));
    }
    out->items[out->n].path = p;
    out->items[out->n].caption = NULL;
    out->n++;
  }
  int rerr = errno;
  closedir(d);
  if (rerr) {
    cd_item_list_free(out);
    return cd_set_error("image folder %s: %s", dir, strerror(rerr));
  }
  return 0;
}

int cd_count_images(const char *dir, int *n) {
  cd_item_list l;
  *n = 0;
  if (scan_images(dir, &l)) return -1;
  *n = l.n;
  cd_item_list_free(&l);
  return 0;
}

int cd_list_images(const char *dir, cd_item_list *out) {
  if (scan_images(dir, out)) return -1;
  if (out->n == 0) {
    cd_item_list_free(out);
    return cd_set_error("image folder %s contains no .png/.jpg/.webp/.bmp images", dir);
  }
  /* all paths share the dir prefix, so sorting paths sorts names */
  qsort(out->items, out->n, sizeof(cd_item), cmp_item);
  for (int i = 0; i < out->n; i++)
    if (read_caption(out->items[i].path, &out->items[i].caption)) {
      cd_item_list_free(out);
      return -1;
    }
  return 0;
}

/* Splits text into lines in place (\n or \r\n), dropping trailing blank lines. */
static int split_lines(char *text, char ***lines) {
  int n = 0, cap = 0;
  *lines = NULL;
  for (char *p = text; *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    size_t len = strlen(p);
    if (len && p[len - 1] == '\r') p[len - 1] = 0;
    if (n == cap) *lines = cd_realloc(*lines, (size_t)(cap = cap ? 2 * cap : 64) * sizeof(char *));
    (*lines)[n++] = p;
    if (!nl) break;
    p = nl + 1;
  }
  while (n > 0 && !*trim((*lines)[n - 1])) n--;
  return n;
}

int cd_list_file_images(const char *dir, cd_item_list *out) {
  memset(out, 0, sizeof *out);
  char *ip = cd_path_join(dir, "images.txt"), *cp = cd_path_join(dir, "caption.txt");
  char *itxt = NULL, *ctxt = NULL, **il = NULL, **cl = NULL;
  size_t n;
  int rc = -1;
  if (cd_read_file(ip, &itxt, &n) || cd_read_file(cp, &ctxt, &n)) {
    cd_prefix_error("--real_prior needs images.txt and caption.txt in the class folder");
    goto done;
  }
  int ni = split_lines(itxt, &il), nc = split_lines(ctxt, &cl);
  if (ni == 0) {
    cd_set_error("%s lists no images", ip);
    goto done;
  }
  if (ni != nc) {
    cd_set_error("%s lists %d images but %s has %d captions (one per line each)", ip, ni, cp, nc);
    goto done;
  }
  out->items = cd_calloc((size_t)ni, sizeof(cd_item));
  for (int i = 0; i < ni; i++, out->n++) {
    const char *path = trim(il[i]);
    char *p = NULL;
    if (*path && cd_is_file(path)) p = cd_strdup(path);
    else if (*path && path[0] != '/') {
      p = cd_path_join(dir, path);
      if (!cd_is_file(p)) { free(p); p = NULL; }
    }
    if (!p) {
      cd_set_error("%s line %d: no such image file '%s'", ip, i + 1, path);
      cd_item_list_free(out);
      goto done;
    }
    out->items[i].path = p;
    const char *c = trim(cl[i]);
    out->items[i].caption = *c ? cd_strdup(c) : NULL;
  }
  rc = 0;
done:
  free(il);
  free(cl);
  free(itxt);
  free(ctxt);
  free(ip);
  free(cp);
  return rc;
}

void cd_item_list_free(cd_item_list *l) {
  if (!l) return;
  for (int i = 0; i < l->n; i++) {
    free(l->items[i].path);
    free(l->items[i].caption);
  }
  free(l->items);
  free(l->skipped_names);
  memset(l, 0, sizeof *l);
}

void cd_item_list_report(const cd_item_list *l, const char *what, const char *dir, int used) {
  if (cd_silent) return;
  fprintf(stderr, "%s %s: %d of %d images used", what, dir, used, l->n);
  if (l->nskipped)
    fprintf(stderr, "; skipped %d file%s that %s not PNG, JPEG, WebP or BMP: %s%s", l->nskipped, l->nskipped > 1 ? "s" : "",
            l->nskipped > 1 ? "are" : "is", l->skipped_names ? l->skipped_names : "", l->nskipped > 5 ? ", ..." : "");
  fputc('\n', stderr);
}

int cd_item_list_verify(const cd_item_list *l, int used) {
  for (int i = 0; i < used && i < l->n; i++) {
    cd_image im;
    if (cd_load_example_image(l->items[i].path, &im)) return -1;
    cd_image_free(&im);
  }
  return 0;
}

/* ---- concepts ---- */

/* String member key of entry i: *out NULL when absent/null (error if required). */
static int concept_str(const char *path, int i, const cJSON *obj, const char *key, int required,
                       char **out) {
  *out = NULL;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) {
    if (required) return cd_set_error("%s: concept %d: missing key \"%s\"", path, i, key);
    return 0;
  }
  if (!cJSON_IsString(v) || !v->valuestring)
    return cd_set_error("%s: concept %d: key \"%s\" must be a string", path, i, key);
  if (required && !v->valuestring[0])
    return cd_set_error("%s: concept %d: key \"%s\" is empty", path, i, key);
  *out = cd_strdup(v->valuestring);
  return 0;
}

int cd_concepts_load(const char *path, cd_concept **out, int *n) {
  *out = NULL;
  *n = 0;
  char *text;
  size_t len;
  if (cd_read_file(path, &text, &len)) return cd_prefix_error("concepts file");
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  if (!root) return cd_set_error("%s: not valid JSON", path);
  if (!cJSON_IsArray(root)) {
    cJSON_Delete(root);
    return cd_set_error("%s: expected a JSON list of concept objects", path);
  }
  int cnt = cJSON_GetArraySize(root);
  if (cnt <= 0) {
    cJSON_Delete(root);
    return cd_set_error("%s: the concept list is empty", path);
  }
  cd_concept *c = cd_calloc((size_t)cnt, sizeof(cd_concept));
  int i = 0, rc = 0;
  const cJSON *obj;
  cJSON_ArrayForEach(obj, root) {
    if (!cJSON_IsObject(obj)) {
      rc = cd_set_error("%s: concept %d: expected an object", path, i);
      break;
    }
    if (concept_str(path, i, obj, "instance_prompt", 1, &c[i].instance_prompt) ||
        concept_str(path, i, obj, "class_prompt", 0, &c[i].class_prompt) ||
        concept_str(path, i, obj, "instance_data_dir", 1, &c[i].instance_data_dir) ||
        concept_str(path, i, obj, "class_data_dir", 0, &c[i].class_data_dir)) {
      rc = -1;
      break;
    }
    if (c[i].class_data_dir && !c[i].class_data_dir[0]) {
      free(c[i].class_data_dir);
      c[i].class_data_dir = NULL;
    }
    i++;
  }
  cJSON_Delete(root);
  if (rc) {
    cd_concepts_free(c, cnt);
    return -1;
  }
  *out = c;
  *n = cnt;
  return 0;
}

void cd_concepts_free(cd_concept *c, int n) {
  if (!c) return;
  for (int i = 0; i < n; i++) {
    free(c[i].instance_prompt);
    free(c[i].class_prompt);
    free(c[i].instance_data_dir);
    free(c[i].class_data_dir);
  }
  free(c);
}

/* ---- one example ---- */

/* numpy randint(lo, hi): lo <= x < hi (requires hi > lo) */
static int randint(cd_rng *r, int lo, int hi) {
  return lo + (int)(cd_rng_u64(r) % (uint64_t)(hi - lo));
}

static int check_res(int res) {
  if (res <= 0 || res % CD_LATENT_FACTOR)
    return cd_set_error("resolution %d must be a positive multiple of %d", res, CD_LATENT_FACTOR);
  return 0;
}

static int check_rgb(const cd_image *img) {
  if (!img || !img->px || img->w <= 0 || img->h <= 0 || img->c != 3)
    return cd_set_error("example image must be a non-empty 3-channel RGB image");
  return 0;
}

int cd_load_example_image(const char *path, cd_image *out) {
  memset(out, 0, sizeof *out);
  cd_image im;
  if (cd_image_load(path, &im)) return cd_prefix_error("training image"); /* names path */
  if (im.w <= 0 || im.h <= 0 || !im.px || im.c < 1 || im.c > 4) {
    cd_image_free(&im);
    return cd_set_error("training image %s: unsupported layout", path);
  }
  if (im.c == 3) {
    *out = im;
    return 0;
  }
  /* PIL convert("RGB"): L/LA replicate the grey value, RGBA drops alpha */
  size_t np = (size_t)im.w * im.h;
  uint8_t *px = cd_malloc(np * 3);
  for (size_t i = 0; i < np; i++)
    for (int k = 0; k < 3; k++) px[3 * i + k] = im.px[(size_t)im.c * i + (im.c >= 3 ? k : 0)];
  out->w = im.w;
  out->h = im.h;
  out->c = 3;
  out->px = px;
  cd_image_free(&im);
  return 0;
}

int cd_instance_draw(int res, int aug, int hflip, cd_rng *rng, cd_instance_aug *a) {
  if (check_res(res)) return -1;
  if (!rng && (aug || hflip)) return cd_set_error("instance augmentation: no random generator given");
  a->flip = hflip ? cd_rng_uniform(rng) < 0.5 : 0;
  a->scale = res;
  a->top = a->left = 0;
  a->prefix = "";
  if (!aug) return 0;
  if (cd_rng_uniform(rng) < 0.66)
    a->scale = randint(rng, res / 3, res + 1);
  else
    a->scale = randint(rng, (int)(1.2 * res), (int)(1.4 * res));
  int outer = res, inner = a->scale;
  if (a->scale > res) outer = a->scale, inner = res;
  a->top = randint(rng, 0, outer - inner + 1);
  a->left = randint(rng, 0, outer - inner + 1);
  int coin;
  if (a->scale < 0.6 * res) {
    coin = randint(rng, 0, 2);
    a->prefix = coin ? "very small " : "a far away ";
  } else if (a->scale > res) {
    coin = randint(rng, 0, 2);
    a->prefix = coin ? "close up " : "zoomed in ";
  }
  return 0;
}

/* ---- PIL's Image.resize(..., BILINEAR) ----
 * The script resizes with PIL (directly, and through torchvision's Resize),
 * whose bilinear filter is a triangle widened by the shrink factor (an
 * antialiasing filter) with coefficients normalised over the in-range pixels
 * and applied in 22-bit fixed point, horizontal pass first, rounding to 8 bits
 * after each pass. cd_image_resize (box filter for shrinking) differs, so
 * this file has its own copy of PIL's algorithm (libImaging/Resample.c). */

#define PIL_PRECISION_BITS (32 - 8 - 2)

/* For each of out outputs: first source index, count, and ksize fixed-point weights. */
static int pil_coeffs(int in, int out, int **bounds, int32_t **kk) {
  double scale = (double)in / out, fscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * fscale; /* bilinear support 1 */
  int ksize = (int)ceil(support) * 2 + 1;
  int *b = cd_malloc(sizeof(int) * 2 * out);
  int32_t *k = cd_calloc((size_t)out * ksize, sizeof(int32_t));
  double *w = cd_malloc(sizeof(double) * ksize);
  for (int xx = 0; xx < out; xx++) {
    double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / fscale;
    int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
    if (xmin < 0) xmin = 0;
    if (xmax > in) xmax = in;
    xmax -= xmin;
    for (int x = 0; x < xmax; x++) {
      double t = fabs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (int x = 0; x < xmax; x++) {
      double v = ww != 0.0 ? w[x] / ww : w[x];
      v *= (double)(1 << PIL_PRECISION_BITS);
      k[(size_t)xx * ksize + x] = (int32_t)(v < 0 ? -0.5 + v : 0.5 + v);
    }
    b[2 * xx] = xmin;
    b[2 * xx + 1] = xmax;
  }
  free(w);
  *bounds = b;
  *kk = k;
  return ksize;
}

static uint8_t pil_clip8(int64_t v) {
  v >>= PIL_PRECISION_BITS;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One pass along x (horiz) or y: src (sw x sh) -> dst (dw x dh), 3 channels. */
static void pil_pass(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh, int horiz) {
  int *b;
  int32_t *k;
  int ksize = pil_coeffs(horiz ? sw : sh, horiz ? dw : dh, &b, &k);
  for (int y = 0; y < dh; y++)
    for (int x = 0; x < dw; x++) {
      int o = horiz ? x : y, lo = b[2 * o], cnt = b[2 * o + 1];
      const int32_t *kw = k + (size_t)o * ksize;
      for (int c = 0; c < 3; c++) {
        int64_t acc = (int64_t)1 << (PIL_PRECISION_BITS - 1);
        for (int i = 0; i < cnt; i++) {
          size_t at = horiz ? ((size_t)y * sw + lo + i) : ((size_t)(lo + i) * sw + x);
          acc += (int64_t)src[at * 3 + c] * kw[i];
        }
        dst[((size_t)y * dw + x) * 3 + c] = pil_clip8(acc);
      }
    }
  free(b);
  free(k);
}

/* RGB src -> w x h into dst (allocated). */
static void pil_resize(const cd_image *src, int w, int h, cd_image *dst) {
  const uint8_t *cur = src->px;
  uint8_t *tmp = NULL;
  int cw = src->w;
  if (w != src->w) {
    tmp = cd_malloc((size_t)w * src->h * 3);
    pil_pass(src->px, src->w, src->h, tmp, w, src->h, 1);
    cur = tmp;
    cw = w;
  }
  dst->w = w;
  dst->h = h;
  dst->c = 3;
  if (h != src->h) {
    dst->px = cd_malloc((size_t)w * h * 3);
    pil_pass(cur, cw, src->h, dst->px, w, h, 0);
    free(tmp);
  } else if (tmp) {
    dst->px = tmp;
  } else {
    dst->px = cd_malloc((size_t)w * h * 3);
    memcpy(dst->px, src->px, (size_t)w * h * 3);
  }
}

/* Python slice [lo:hi] of a length-n axis: clamps to [0, n], negative counts from the end. */
static void py_slice(int lo, int hi, int n, int *a, int *b) {
  if (lo < 0) lo += n;
  if (hi < 0) hi += n;
  *a = CD_MAX(0, CD_MIN(lo, n));
  *b = CD_MAX(0, CD_MIN(hi, n));
}

/* uint8 -> [-1, 1] exactly as the script computes it: instances in float64,
 * (x / 127.5 - 1).astype(float32); class images through torchvision's
 * ToTensor + Normalize([0.5], [0.5]) in float32, ((x / 255) - 0.5) / 0.5
 * (they differ in the last bit for half of the values). */
static void pixel_lut(int class_image, float lut[256]) {
  for (int v = 0; v < 256; v++) {
    if (class_image) {
      float t = (float)v / 255.0f;
      lut[v] = (t - 0.5f) / 0.5f;
    } else {
      lut[v] = (float)(v / 127.5 - 1.0);
    }
  }
}

/* Copies src rows [sy, sy+nh) x cols [sx, sx+nw) to pixels [3, res, res] at
 * (dy, dx) through lut. */
static void put_pixels(const cd_image *src, int sy, int sx, int nh, int nw, const float lut[256], float *pixels,
                       int res, int dy, int dx) {
  size_t plane = (size_t)res * res;
  for (int y = 0; y < nh; y++) {
    const uint8_t *p = src->px + ((size_t)(sy + y) * src->w + sx) * 3;
    float *o = pixels + (size_t)(dy + y) * res + dx;
    for (int x = 0; x < nw; x++, p += 3)
      for (int k = 0; k < 3; k++) o[k * plane + x] = lut[p[k]];
  }
}

/* The script flips before resizing; so do we (mirroring afterwards could
 * differ by PIL's fixed-point rounding). Returns img itself when !flip. */
static const cd_image *maybe_flip(const cd_image *img, int flip, cd_image *tmp) {
  if (!flip) return img;
  tmp->w = img->w;
  tmp->h = img->h;
  tmp->c = 3;
  tmp->px = cd_malloc((size_t)img->w * img->h * 3);
  for (int y = 0; y < img->h; y++) {
    const uint8_t *s = img->px + (size_t)y * img->w * 3;
    uint8_t *d = tmp->px + (size_t)y * img->w * 3;
    for (int x = 0; x < img->w; x++) memcpy(d + 3 * x, s + 3 * (img->w - 1 - x), 3);
  }
  return tmp;
}

int cd_instance_render(const cd_image *img, int res, const cd_instance_aug *a, float *pixels, float *mask) {
  if (check_res(res) || check_rgb(img)) return -1;
  int s = a->scale;
  int outer = res, inner = s;
  if (s > res) outer = s, inner = res;
  if (s <= 0 || a->top < 0 || a->left < 0 || a->top > outer - inner || a->left > outer - inner)
    return cd_set_error("instance augmentation: scale %d at (%d, %d) does not fit resolution %d", s, a->top,
                        a->left, res);
  cd_image r, fl = {0};
  pil_resize(maybe_flip(img, a->flip, &fl), s, s, &r);
  cd_image_free(&fl);
  int m = res / CD_LATENT_FACTOR;
  float lut[256];
  pixel_lut(0, lut);
  if (s > res) {
    put_pixels(&r, a->top, a->left, res, res, lut, pixels, res, 0, 0);
    for (int i = 0; i < m * m; i++) mask[i] = 1.0f;
  } else {
    memset(pixels, 0, sizeof(float) * 3 * res * res);
    put_pixels(&r, 0, 0, s, s, lut, pixels, res, a->top, a->left);
    memset(mask, 0, sizeof(float) * m * m);
    int f = CD_LATENT_FACTOR, r0, r1, c0, c1;
    py_slice(a->top / f + 1, (a->top + s) / f - 1, m, &r0, &r1);
    py_slice(a->left / f + 1, (a->left + s) / f - 1, m, &c0, &c1);
    for (int y = r0; y < r1; y++)
      for (int x = c0; x < c1; x++) mask[y * m + x] = 1.0f;
  }
  cd_image_free(&r);
  return 0;
}

int cd_instance_example(const cd_image *img, int res, int aug, int hflip, cd_rng *rng, float *pixels,
                        float *mask, const char **prefix) {
  cd_instance_aug a;
  if (cd_instance_draw(res, aug, hflip, rng, &a) || cd_instance_render(img, res, &a, pixels, mask)) return -1;
  if (prefix) *prefix = a.prefix;
  return 0;
}

/* Python round() of k/2 (half to even), as torchvision's CenterCrop offset. */
static int half_round_even(int k) {
  int q = k / 2;
  return (k % 2 && q % 2) ? q + 1 : q;
}

int cd_class_example(const cd_image *img, int res, int center_crop, int hflip, cd_rng *rng, float *pixels,
                     float *mask) {
  if (check_res(res) || check_rgb(img)) return -1;
  if (!rng && (hflip || !center_crop)) return cd_set_error("class example: no random generator given");
  int flip = hflip ? cd_rng_uniform(rng) < 0.5 : 0;
  /* torchvision Resize(int): shorter side -> res, longer side int(res * long / short) */
  int w, h;
  if (img->w <= img->h) {
    w = res;
    h = (int)((double)res * img->h / img->w);
  } else {
    h = res;
    w = (int)((double)res * img->w / img->h);
  }
  int top, left;
  if (center_crop) {
    top = half_round_even(h - res);
    left = half_round_even(w - res);
  } else {
    top = h > res ? randint(rng, 0, h - res + 1) : 0;
    left = w > res ? randint(rng, 0, w - res + 1) : 0;
  }
  cd_image r, fl = {0};
  pil_resize(maybe_flip(img, flip, &fl), w, h, &r);
  cd_image_free(&fl);
  float lut[256];
  pixel_lut(1, lut);
  put_pixels(&r, top, left, res, res, lut, pixels, res, 0, 0);
  cd_image_free(&r);
  int m = res / CD_LATENT_FACTOR;
  for (int i = 0; i < m * m; i++) mask[i] = 1.0f;
  return 0;
}

/* ---- decoded-image cache ---- */

void cd_image_cache_init(cd_image_cache *c, size_t limit_bytes) {
  memset(c, 0, sizeof *c);
  c->limit = limit_bytes ? limit_bytes : CD_IMAGE_CACHE_DEFAULT_LIMIT;
}

int cd_image_cache_get(cd_image_cache *c, const cd_item_list *l, int i, const cd_image **out) {
  *out = NULL;
  if (!c->list) {
    c->list = l;
    c->n = l->n;
    c->img = cd_calloc((size_t)CD_MAX(l->n, 1), sizeof(cd_image));
  } else if (c->list != l || c->n != l->n) {
    return cd_set_error("image cache: used with a different image list");
  }
  if (i < 0 || i >= l->n) return cd_set_error("image cache: index %d out of range [0, %d)", i, l->n);
  if (c->img[i].px) {
    *out = &c->img[i];
    return 0;
  }
  cd_image_free(&c->scratch);
  cd_image im;
  if (cd_load_example_image(l->items[i].path, &im)) return -1;
  size_t sz = (size_t)im.w * im.h * im.c;
  if (c->bytes + sz <= c->limit) {
    c->img[i] = im;
    c->bytes += sz;
    *out = &c->img[i];
  } else {
    c->scratch = im;
    *out = &c->scratch;
  }
  return 0;
}

void cd_image_cache_free(cd_image_cache *c) {
  if (c->img)
    for (int i = 0; i < c->n; i++) cd_image_free(&c->img[i]);
  free(c->img);
  cd_image_free(&c->scratch);
  memset(c, 0, sizeof *c);
}
