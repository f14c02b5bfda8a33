/* tensor_file.c - what safetensors.c and ckpt.c share: dtypes, the mapped
 * file object, the name hash, dtype conversion and format dispatch. */
#define CD_TENSOR_FILE_INTERNAL
#include "io/tensor_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cdiff tensor files assume a little-endian host"
#endif

static const struct { const char *name; size_t size; } DT[CD_DT_COUNT] = {
    [CD_DT_F32] = {"F32", 4}, [CD_DT_F16] = {"F16", 2}, [CD_DT_BF16] = {"BF16", 2},
    [CD_DT_F64] = {"F64", 8}, [CD_DT_I64] = {"I64", 8}, [CD_DT_I32] = {"I32", 4},
    [CD_DT_I16] = {"I16", 2}, [CD_DT_I8] = {"I8", 1},   [CD_DT_U8] = {"U8", 1},
    [CD_DT_BOOL] = {"BOOL", 1}};

size_t cd_dtype_size(cd_dtype dt) { return (unsigned)dt < CD_DT_COUNT ? DT[dt].size : 0; }
const char *cd_dtype_name(cd_dtype dt) { return (unsigned)dt < CD_DT_COUNT ? DT[dt].name : "?"; }

int cd_dtype_from_name(const char *s, cd_dtype *out) {
  for (int i = 0; i < CD_DT_COUNT; i++)
    if (strcmp(s, DT[i].name) == 0) {
      *out = (cd_dtype)i;
      return 0;
    }
  return -1;
}

int cd_shape_numel(const int64_t *shape, int ndim, size_t elsize, int64_t *numel, size_t *nbytes) {
  int64_t n = 1;
  const int64_t lim = (int64_t)1 << 62;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] && n > lim / shape[i]) return -1;
    n *= shape[i];
  }
  if (elsize && n > lim / (int64_t)elsize) return -1;
  if ((uint64_t)n * elsize > SIZE_MAX) return -1;
  *numel = n;
  *nbytes = (size_t)n * elsize;
  return 0;
}

int64_t cd_tensor_numel(const cd_tensor_info *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

/* ---- the file object ---- */

int cd_tf_map_file(const char *path, cd_tensor_file **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return cd_set_error("%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return cd_set_error("%s: cannot stat: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return cd_set_error("%s: not a regular file", path);
  }
  void *map = NULL;
  size_t len = (size_t)st.st_size;
  if (len > 0) {
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      int e = errno;
      close(fd);
      return cd_set_error("%s: mmap failed: %s", path, strerror(e));
    }
  }
  close(fd);
  cd_tensor_file *f = cd_calloc(1, sizeof *f);
  f->path = cd_strdup(path);
  f->map = map;
  f->map_len = len;
  *out = f;
  return 0;
}

void cd_tensor_file_close(cd_tensor_file *f) {
  if (!f) return;
  for (int i = 0; i < f->n; i++) free(f->t[i].name);
  free(f->t);
  for (int i = 0; i < 2 * f->nmeta; i++) free(f->meta[i]);
  free(f->meta);
  free(f->slots);
  for (int i = 0; i < f->nowned; i++) free(f->owned[i]);
  free(f->owned);
  if (f->map) munmap(f->map, f->map_len);
  free(f->path);
  free(f);
}

cd_tensor_info *cd_tf_add(cd_tensor_file *f, const char *name) {
  if (f->n == f->cap) {
    f->cap = f->cap ? 2 * f->cap : 64;
    f->t = cd_realloc(f->t, (size_t)f->cap * sizeof *f->t);
  }
  cd_tensor_info *t = &f->t[f->n++];
  memset(t, 0, sizeof *t);
  t->name = cd_strdup(name);
  return t;
}

void cd_tf_add_meta(cd_tensor_file *f, const char *key, const char *value) {
  f->meta = cd_realloc(f->meta, (size_t)(f->nmeta + 1) * 2 * sizeof *f->meta);
  f->meta[2 * f->nmeta] = cd_strdup(key);
  f->meta[2 * f->nmeta + 1] = cd_strdup(value);
  f->nmeta++;
}

void *cd_tf_own(cd_tensor_file *f, size_t n) {
  f->owned = cd_realloc(f->owned, (size_t)(f->nowned + 1) * sizeof *f->owned);
  void *p = cd_malloc(n);
  f->owned[f->nowned++] = p;
  return p;
}

int cd_tf_index(cd_tensor_file *f) {
  free(f->slots);
  uint32_t ns = 16;
  while (ns < 2u * (uint32_t)f->n) ns *= 2;
  f->slots = cd_calloc(ns, sizeof *f->slots);
  f->nslots = ns;
  for (int i = 0; i < f->n; i++) {
    uint32_t h = (uint32_t)cd_fnv1a(f->t[i].name, strlen(f->t[i].name)) & (ns - 1);
    while (f->slots[h]) {
      if (strcmp(f->t[f->slots[h] - 1].name, f->t[i].name) == 0)
        return cd_set_error("%s: tensor '%s' appears twice", f->path, f->t[i].name);
      h = (h + 1) & (ns - 1);
    }
    f->slots[h] = (uint32_t)i + 1;
  }
  return 0;
}

int cd_tf_count(const cd_tensor_file *f) { return f->n; }
const cd_tensor_info *cd_tf_at(const cd_tensor_file *f, int i) {
  return i >= 0 && i < f->n ? &f->t[i] : NULL;
}
const char *cd_tf_path(const cd_tensor_file *f) { return f->path; }

const cd_tensor_info *cd_tf_find(const cd_tensor_file *f, const char *name) {
  if (!f->nslots) return NULL;
  uint32_t h = (uint32_t)cd_fnv1a(name, strlen(name)) & (f->nslots - 1);
  while (f->slots[h]) {
    const cd_tensor_info *t = &f->t[f->slots[h] - 1];
    if (strcmp(t->name, name) == 0) return t;
    h = (h + 1) & (f->nslots - 1);
  }
  return NULL;
}

const char *cd_tf_meta(const cd_tensor_file *f, const char *key) {
  for (int i = 0; i < f->nmeta; i++)
    if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
  return NULL;
}
int cd_tf_meta_count(const cd_tensor_file *f) { return f->nmeta; }
const char *cd_tf_meta_key(const cd_tensor_file *f, int i) {
  return i >= 0 && i < f->nmeta ? f->meta[2 * i] : NULL;
}

/* ---- conversion; memcpy per element because data may be unaligned ---- */

#define DEF_LOAD(T, NAME) \
  static inline T NAME(const void *p, int64_t i) { T v; memcpy(&v, (const char *)p + (size_t)i * sizeof v, sizeof v); return v; }
DEF_LOAD(float, ld_f32)
DEF_LOAD(double, ld_f64)
DEF_LOAD(uint16_t, ld_u16)
DEF_LOAD(int64_t, ld_i64)
DEF_LOAD(int32_t, ld_i32)
DEF_LOAD(int16_t, ld_i16)
DEF_LOAD(int8_t, ld_i8)
DEF_LOAD(uint8_t, ld_u8)

static double elem_f64(cd_dtype dt, const void *p, int64_t i) {
  switch (dt) {
  case CD_DT_F32: return ld_f32(p, i);
  case CD_DT_F16: return cd_f16_to_f32(ld_u16(p, i));
  case CD_DT_BF16: return cd_bf16_to_f32(ld_u16(p, i));
  case CD_DT_F64: return ld_f64(p, i);
  case CD_DT_I64: return (double)ld_i64(p, i);
  case CD_DT_I32: return ld_i32(p, i);
  case CD_DT_I16: return ld_i16(p, i);
  case CD_DT_I8: return ld_i8(p, i);
  case CD_DT_U8: return ld_u8(p, i);
  case CD_DT_BOOL: return ld_u8(p, i) != 0;
  }
  return 0;
}

static int check_info(const cd_tensor_file *f, const cd_tensor_info *t) {
  int64_t numel;
  size_t nbytes;
  if (!t || (unsigned)t->dtype >= CD_DT_COUNT || t->ndim < 0 || t->ndim > CD_TF_MAX_DIMS ||
      cd_shape_numel(t->shape, t->ndim, cd_dtype_size(t->dtype), &numel, &nbytes) || nbytes != t->nbytes ||
      (nbytes && !t->data))
    return cd_set_error("%s: tensor '%s': invalid tensor info", f ? f->path : "?", t && t->name ? t->name : "?");
  return 0;
}

int cd_tf_read_f32(const cd_tensor_file *f, const cd_tensor_info *t, float *dst) {
  if (check_info(f, t)) return -1;
  int64_t n = cd_tensor_numel(t);
  if (t->dtype == CD_DT_F32) {
    memcpy(dst, t->data, t->nbytes);
    return 0;
  }
  /* fast paths for the half types of fp16/bf16 checkpoints */
  if (t->dtype == CD_DT_F16) {
    for (int64_t i = 0; i < n; i++) dst[i] = cd_f16_to_f32(ld_u16(t->data, i));
    return 0;
  }
  if (t->dtype == CD_DT_BF16) {
    for (int64_t i = 0; i < n; i++) dst[i] = cd_bf16_to_f32(ld_u16(t->data, i));
    return 0;
  }
  for (int64_t i = 0; i < n; i++) dst[i] = (float)elem_f64(t->dtype, t->data, i);
  return 0;
}

int cd_tf_read_f64(const cd_tensor_file *f, const cd_tensor_info *t, double *dst) {
  if (check_info(f, t)) return -1;
  int64_t n = cd_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) dst[i] = elem_f64(t->dtype, t->data, i);
  return 0;
}

int cd_tf_read_i64(const cd_tensor_file *f, const cd_tensor_info *t, int64_t *dst) {
  if (check_info(f, t)) return -1;
  int64_t n = cd_tensor_numel(t);
  switch (t->dtype) {
  case CD_DT_I64: memcpy(dst, t->data, t->nbytes); return 0;
  case CD_DT_I32: for (int64_t i = 0; i < n; i++) dst[i] = ld_i32(t->data, i); return 0;
  case CD_DT_I16: for (int64_t i = 0; i < n; i++) dst[i] = ld_i16(t->data, i); return 0;
  case CD_DT_I8: for (int64_t i = 0; i < n; i++) dst[i] = ld_i8(t->data, i); return 0;
  case CD_DT_U8: for (int64_t i = 0; i < n; i++) dst[i] = ld_u8(t->data, i); return 0;
  case CD_DT_BOOL: for (int64_t i = 0; i < n; i++) dst[i] = ld_u8(t->data, i) != 0; return 0;
  default:
    return cd_set_error("%s: tensor '%s' has dtype %s, expected an integer dtype", f->path, t->name,
                        cd_dtype_name(t->dtype));
  }
}

/* ---- dispatch by magic bytes ---- */

int cd_tensor_file_open(const char *path, cd_tensor_file **out) {
  *out = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) return cd_set_error("%s: cannot open: %s", path, strerror(errno));
  uint8_t m[9] = {0};
  size_t k = fread(m, 1, sizeof m, fp);
  fclose(fp);
  if (k >= 2 && m[0] == 'P' && m[1] == 'K') return cd_ckpt_open(path, out);
  /* safetensors before the pickle test: a header length such as 0x0c80 starts with 0x80 too
   * (a legacy torch pickle has its magic number's bytes at 8, never '{') */
  if (k == 9 && m[8] == '{') return cd_safetensors_open(path, out);
  if (k >= 1 && m[0] == 0x80) return cd_ckpt_open(path, out); /* a bare pickle: legacy torch */
  return cd_set_error("%s: unknown tensor file format (neither safetensors nor a torch zip checkpoint)", path);
}
