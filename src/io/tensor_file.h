/* tensor_file.h - one read API over safetensors and PyTorch zip checkpoints
 * (.ckpt/.bin/.pt written by torch.save >= 1.6), plus writers for both.
 *
 * Files are memory-mapped; cd_tensor_info.data points into the mapping (or,
 * for deflated zip entries, into a buffer owned by the file) and stays valid
 * until cd_tensor_file_close(). The data pointer may be UNALIGNED (safetensors
 * only guarantees byte offsets): read through cd_tf_read_* or memcpy. All
 * data is little-endian, as on every host cdiff supports.
 *
 *   cd_tensor_file *f;
 *   if (cd_tensor_file_open(path, &f)) { puts(cd_last_error()); ... }
 *   const cd_tensor_info *t = cd_tf_find(f, "model.diffusion_model.out.2.bias");
 *   float *w = cd_malloc(cd_tensor_numel(t) * sizeof(float));
 *   cd_tf_read_f32(f, t, w);
 *   cd_tensor_file_close(f);
 */
#ifndef CD_TENSOR_FILE_H
#define CD_TENSOR_FILE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  CD_DT_F32, CD_DT_F16, CD_DT_BF16, CD_DT_F64, CD_DT_I64,
  CD_DT_I32, CD_DT_I16, CD_DT_I8, CD_DT_U8, CD_DT_BOOL
} cd_dtype;
#define CD_DT_COUNT 10
#define CD_TF_MAX_DIMS 8

size_t cd_dtype_size(cd_dtype dt);
const char *cd_dtype_name(cd_dtype dt); /* safetensors spelling: "F32", "BF16", ... */

typedef struct {
  char *name;
  cd_dtype dtype;
  int ndim; /* 0 for a scalar (numel 1) */
  int64_t shape[CD_TF_MAX_DIMS];
  const void *data; /* nbytes bytes, possibly unaligned */
  size_t nbytes;    /* numel * cd_dtype_size(dtype) */
} cd_tensor_info;

typedef struct cd_tensor_file cd_tensor_file;

int cd_safetensors_open(const char *path, cd_tensor_file **out);
int cd_ckpt_open(const char *path, cd_tensor_file **out); /* torch zip (.ckpt/.bin/.pt) */
int cd_tensor_file_open(const char *path, cd_tensor_file **out); /* picks by magic bytes */
void cd_tensor_file_close(cd_tensor_file *f); /* NULL is fine */

int cd_tf_count(const cd_tensor_file *f);
const cd_tensor_info *cd_tf_at(const cd_tensor_file *f, int i); /* file order; NULL if out of range */
const cd_tensor_info *cd_tf_find(const cd_tensor_file *f, const char *name); /* NULL if absent */
const char *cd_tf_meta(const cd_tensor_file *f, const char *key); /* safetensors __metadata__; NULL if absent */
int cd_tf_meta_count(const cd_tensor_file *f);
const char *cd_tf_meta_key(const cd_tensor_file *f, int i); /* NULL if out of range */
const char *cd_tf_path(const cd_tensor_file *f);

int64_t cd_tensor_numel(const cd_tensor_info *t);
/* Convert to f32/f64 (any dtype; bool/ints by value) into dst[numel]. */
int cd_tf_read_f32(const cd_tensor_file *f, const cd_tensor_info *t, float *dst);
int cd_tf_read_f64(const cd_tensor_file *f, const cd_tensor_info *t, double *dst);
/* Integer and bool dtypes only (a float tensor is an error naming it). */
int cd_tf_read_i64(const cd_tensor_file *f, const cd_tensor_info *t, int64_t *dst);

/* ---- writers ---- */
typedef struct {
  const char *name;
  cd_dtype dtype;
  int ndim;
  int64_t shape[CD_TF_MAX_DIMS];
  const void *data; /* numel * cd_dtype_size(dtype) bytes, little-endian */
} cd_tensor_out;

/* Atomic (PATH.tmp.<pid>, fsync, rename). Header keys sorted by name,
 * "__metadata__" first, header padded with spaces to a multiple of 8.
 * meta_kv: key,value,key,value... (n_meta_pairs pairs; may be NULL). */
int cd_safetensors_write(const char *path, const cd_tensor_out *t, int n,
                         const char *const *meta_kv, int n_meta_pairs);
/* A torch.save-compatible zip (protocol-2 pickle of a plain dict name ->
 * tensor, one storage per tensor, entries stored and 64-byte aligned),
 * loadable with torch.load(path, weights_only=True). Atomic. */
int cd_ckpt_write(const char *path, const cd_tensor_out *t, int n);

/* ---- internals shared by tensor_file.c, safetensors.c, ckpt.c ---- */
#ifdef CD_TENSOR_FILE_INTERNAL
struct cd_tensor_file {
  char *path;
  int n, cap;
  cd_tensor_info *t;
  int nmeta;
  char **meta; /* key,value pairs: 2*nmeta strings */
  uint32_t *slots; /* open-addressing table of tensor index + 1 (0 = empty) */
  uint32_t nslots; /* power of two */
  void *map;       /* mmap of the whole file (NULL if empty) */
  size_t map_len;
  void **owned;    /* heap buffers (inflated zip entries) */
  int nowned;
};
int cd_tf_map_file(const char *path, cd_tensor_file **out); /* allocate f, mmap path */
/* Appends a tensor (name copied); returns its index. Shape checked by caller. */
cd_tensor_info *cd_tf_add(cd_tensor_file *f, const char *name);
/* Builds the name hash; fails naming the first duplicate. */
int cd_tf_index(cd_tensor_file *f);
void cd_tf_add_meta(cd_tensor_file *f, const char *key, const char *value);
void *cd_tf_own(cd_tensor_file *f, size_t n); /* buffer freed with the file */
int cd_dtype_from_name(const char *s, cd_dtype *out); /* "F32" -> CD_DT_F32 */
/* numel of shape[ndim] and numel*elsize; -1 on negative dims or overflow (> 2^62). */
int cd_shape_numel(const int64_t *shape, int ndim, size_t elsize, int64_t *numel, size_t *nbytes);
/* For tests of the zip64 code paths: write zip64 records even when small. */
int cd_ckpt_write_ex(const char *path, const cd_tensor_out *t, int n, int force_zip64);
#endif

#endif
