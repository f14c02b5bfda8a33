/* safetensors.c - reader (mmap + strict header validation) and atomic writer.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"k": "v", ...},
 *    "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 * then the data area; offsets are relative to the start of the data area. */
#define CD_TENSOR_FILE_INTERNAL
#include "io/tensor_file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "io/fsutil.h"

#define ST_MAX_HEADER (100u << 20) /* as the reference implementation */

/* A JSON number that is an exact non-negative integer up to 2^53. */
static int json_uint(const cJSON *j, int64_t *out) {
  if (!cJSON_IsNumber(j)) return -1;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(int64_t)d) return -1;
  *out = (int64_t)d;
  return 0;
}

typedef struct { uint64_t begin, end; int idx; } span;
static int span_cmp(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int parse_tensor(cd_tensor_file *f, const cJSON *e, const uint8_t *data, uint64_t data_len, span *sp) {
  const char *P = f->path, *name = e->string;
  if (!cJSON_IsObject(e)) return cd_set_error("safetensors %s: tensor '%s': entry is not a JSON object", P, name);
  const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  cd_dtype dt;
  if (!cJSON_IsString(jd)) return cd_set_error("safetensors %s: tensor '%s': missing or non-string 'dtype'", P, name);
  if (cd_dtype_from_name(jd->valuestring, &dt))
    return cd_set_error("safetensors %s: tensor '%s': unsupported dtype '%s'", P, name, jd->valuestring);
  if (!cJSON_IsArray(js)) return cd_set_error("safetensors %s: tensor '%s': missing or non-array 'shape'", P, name);
  int ndim = cJSON_GetArraySize(js);
  if (ndim > CD_TF_MAX_DIMS)
    return cd_set_error("safetensors %s: tensor '%s': %d dimensions (at most %d supported)", P, name, ndim, CD_TF_MAX_DIMS);
  int64_t shape[CD_TF_MAX_DIMS];
  int d = 0;
  for (const cJSON *x = js->child; x; x = x->next, d++)
    if (json_uint(x, &shape[d]))
      return cd_set_error("safetensors %s: tensor '%s': shape[%d] is not a non-negative integer", P, name, d);
  int64_t numel;
  size_t nbytes;
  if (cd_shape_numel(shape, ndim, cd_dtype_size(dt), &numel, &nbytes))
    return cd_set_error("safetensors %s: tensor '%s': shape product overflows", P, name);
  int64_t off[2];
  if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(jo->child, &off[0]) ||
      json_uint(jo->child->next, &off[1]))
    return cd_set_error("safetensors %s: tensor '%s': 'data_offsets' must be [begin, end] non-negative integers", P, name);
  if (off[0] > off[1])
    return cd_set_error("safetensors %s: tensor '%s': data_offsets begin %lld > end %lld", P, name, (long long)off[0],
                        (long long)off[1]);
  if ((uint64_t)off[1] > data_len)
    return cd_set_error("safetensors %s: tensor '%s': data_offsets end %lld is past the data area (%llu bytes; file "
                        "truncated?)", P, name, (long long)off[1], (unsigned long long)data_len);
  if ((uint64_t)(off[1] - off[0]) != (uint64_t)nbytes)
    return cd_set_error("safetensors %s: tensor '%s': data_offsets span %lld bytes but shape x %s needs %zu", P, name,
                        (long long)(off[1] - off[0]), cd_dtype_name(dt), nbytes);
  cd_tensor_info *t = cd_tf_add(f, name);
  t->dtype = dt;
  t->ndim = ndim;
  memcpy(t->shape, shape, sizeof(int64_t) * ndim);
  t->data = data + off[0];
  t->nbytes = nbytes;
  sp->begin = (uint64_t)off[0];
  sp->end = (uint64_t)off[1];
  sp->idx = f->n - 1;
  return 0;
}

static int parse_metadata(cd_tensor_file *f, const cJSON *m) {
  if (!cJSON_IsObject(m)) return cd_set_error("safetensors %s: '__metadata__' is not a JSON object", f->path);
  for (const cJSON *x = m->child; x; x = x->next) {
    if (!cJSON_IsString(x))
      return cd_set_error("safetensors %s: __metadata__ value of '%s' is not a string", f->path, x->string);
    cd_tf_add_meta(f, x->string, x->valuestring);
  }
  return 0;
}

int cd_safetensors_open(const char *path, cd_tensor_file **out) {
  *out = NULL;
  cd_tensor_file *f;
  if (cd_tf_map_file(path, &f)) return cd_prefix_error("safetensors");
  const uint8_t *m = f->map;
  size_t len = f->map_len;
  cJSON *root = NULL;
  span *sp = NULL;
  if (len < 8) {
    cd_set_error("safetensors %s: file is %zu bytes, too small for a header", path, len);
    goto fail;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | m[i];
  if (hlen == 0) {
    cd_set_error("safetensors %s: header length is 0", path);
    goto fail;
  }
  if (hlen > ST_MAX_HEADER || hlen > len - 8) {
    cd_set_error("safetensors %s: header length %llu is larger than %s (file size %zu)", path,
                 (unsigned long long)hlen, hlen > ST_MAX_HEADER ? "the 100 MB limit" : "the file", len);
    goto fail;
  }
  const char *hend = NULL;
  root = cJSON_ParseWithLengthOpts((const char *)m + 8, (size_t)hlen, &hend, 0);
  /* after the object only padding may follow (spaces; NULs from some writers) */
  for (const char *q = hend; root && q < (const char *)m + 8 + hlen; q++)
    if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r' && *q != 0) {
      cJSON_Delete(root);
      root = NULL;
    }
  if (!root) {
    cd_set_error("safetensors %s: header is not valid JSON", path);
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    cd_set_error("safetensors %s: header is not a JSON object", path);
    goto fail;
  }
  const uint8_t *data = m + 8 + hlen;
  uint64_t data_len = len - 8 - hlen;
  int nent = cJSON_GetArraySize(root);
  sp = cd_malloc((size_t)(nent + 1) * sizeof *sp);
  int nsp = 0;
  for (const cJSON *e = root->child; e; e = e->next) {
    if (!e->string) continue;
    if (strcmp(e->string, "__metadata__") == 0) {
      if (parse_metadata(f, e)) goto fail;
      continue;
    }
    if (parse_tensor(f, e, data, data_len, &sp[nsp])) goto fail;
    if (sp[nsp].end > sp[nsp].begin) nsp++; /* empty tensors overlap nothing */
  }
  qsort(sp, nsp, sizeof *sp, span_cmp);
  for (int i = 1; i < nsp; i++)
    if (sp[i].begin < sp[i - 1].end) {
      cd_set_error("safetensors %s: tensors '%s' and '%s' have overlapping data_offsets", path,
                   f->t[sp[i - 1].idx].name, f->t[sp[i].idx].name);
      goto fail;
    }
  if (cd_tf_index(f)) goto fail;
  free(sp);
  cJSON_Delete(root);
  *out = f;
  return 0;
fail:
  free(sp);
  cJSON_Delete(root);
  cd_tensor_file_close(f);
  return -1;
}

/* ---- writer ---- */

typedef struct { char *p; size_t n, cap; } sbuf;
static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    while (b->n + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
    b->p = cd_realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_json(sbuf *b, const char *s) { /* quoted and escaped; UTF-8 passes through */
  sb_put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char e[8];
    if (c == '"' || c == '\\') { e[0] = '\\'; e[1] = (char)c; sb_put(b, e, 2); }
    else if (c == '\n') sb_str(b, "\\n");
    else if (c == '\t') sb_str(b, "\\t");
    else if (c == '\r') sb_str(b, "\\r");
    else if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", c); sb_str(b, e); }
    else sb_put(b, (const char *)&c, 1);
  }
  sb_put(b, "\"", 1);
}

static int by_name(const void *a, const void *b, void *base) {
  const cd_tensor_out *t = base;
  return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

int cd_safetensors_write(const char *path, const cd_tensor_out *t, int n, const char *const *meta_kv,
                         int n_meta_pairs) {
  if (n < 0 || n_meta_pairs < 0) return cd_set_error("safetensors write %s: negative count", path);
  size_t *nb = cd_malloc((size_t)(n + 1) * sizeof *nb);
  int *order = cd_malloc((size_t)(n + 1) * sizeof *order);
  sbuf h = {0};
  int rc = -1;
  for (int i = 0; i < n; i++) {
    int64_t numel;
    if (!t[i].name || !t[i].name[0] || strcmp(t[i].name, "__metadata__") == 0) {
      cd_set_error("safetensors write %s: tensor %d has an invalid name", path, i);
      goto done;
    }
    if ((unsigned)t[i].dtype >= CD_DT_COUNT || t[i].ndim < 0 || t[i].ndim > CD_TF_MAX_DIMS ||
        cd_shape_numel(t[i].shape, t[i].ndim, cd_dtype_size(t[i].dtype), &numel, &nb[i])) {
      cd_set_error("safetensors write %s: tensor '%s': invalid dtype or shape", path, t[i].name);
      goto done;
    }
    if (nb[i] && !t[i].data) {
      cd_set_error("safetensors write %s: tensor '%s': no data", path, t[i].name);
      goto done;
    }
    order[i] = i;
  }
  qsort_r(order, n, sizeof *order, by_name, (void *)t);
  for (int i = 1; i < n; i++)
    if (strcmp(t[order[i]].name, t[order[i - 1]].name) == 0) {
      cd_set_error("safetensors write %s: tensor name '%s' given twice", path, t[order[i]].name);
      goto done;
    }
  sb_str(&h, "{");
  if (n_meta_pairs > 0) {
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; i < n_meta_pairs; i++) {
      if (!meta_kv[2 * i] || !meta_kv[2 * i + 1]) {
        cd_set_error("safetensors write %s: metadata pair %d has a NULL key or value", path, i);
        goto done;
      }
      if (i) sb_str(&h, ",");
      sb_json(&h, meta_kv[2 * i]);
      sb_str(&h, ":");
      sb_json(&h, meta_kv[2 * i + 1]);
    }
    sb_str(&h, n ? "}," : "}");
  }
  uint64_t off = 0;
  for (int k = 0; k < n; k++) {
    const cd_tensor_out *x = &t[order[k]];
    char num[64];
    if (k) sb_str(&h, ",");
    sb_json(&h, x->name);
    sb_str(&h, ":{\"dtype\":\"");
    sb_str(&h, cd_dtype_name(x->dtype));
    sb_str(&h, "\",\"shape\":[");
    for (int d = 0; d < x->ndim; d++) {
      snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)x->shape[d]);
      sb_str(&h, num);
    }
    snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
             (unsigned long long)(off + nb[order[k]]));
    sb_str(&h, num);
    off += nb[order[k]];
  }
  sb_str(&h, "}");
  while (h.n % 8) sb_str(&h, " ");

  char tmp[4096];
  FILE *fp = cd_atomic_open(path, tmp, sizeof tmp);
  if (!fp) goto done;
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
  errno = 0;
  int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(h.p, 1, h.n, fp) == h.n;
  for (int k = 0; ok && k < n; k++)
    if (nb[order[k]]) ok = fwrite(t[order[k]].data, 1, nb[order[k]], fp) == nb[order[k]];
  if (!ok) {
    int e = errno ? errno : EIO;
    cd_atomic_abort(fp, tmp);
    cd_set_error("%s: write failed: %s", path, strerror(e));
    goto done;
  }
  rc = cd_atomic_commit(fp, tmp, path);
done:
  free(h.p);
  free(nb);
  free(order);
  return rc;
}
