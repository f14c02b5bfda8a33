/* ckpt.c - PyTorch zip checkpoints (torch.save >= 1.6: .ckpt/.bin/.pt).
 *
 * A torch checkpoint is a zip archive whose entries live in one folder:
 *   <archive>/data.pkl      the pickled object (protocol 2)
 *   <archive>/data/<key>    raw little-endian bytes of each storage
 *   <archive>/byteorder     "little"     <archive>/version  "3\n"
 * Tensors in data.pkl are reduce calls
 *   torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
 * whose storage is a persistent id ('storage', torch.FloatStorage, key, 'cpu', numel).
 *
 * The pickle is read by a RESTRICTED interpreter: it knows only the opcodes
 * torch emits for state dicts and a fixed list of globals; a call is never
 * executed, it is recognised by name (tensor rebuild, OrderedDict) and
 * everything else becomes an inert value. Any other global is an error.
 * The zip central directory is parsed here (stored and deflated entries,
 * zip64), with every offset and size checked against the file. */
#define CD_TENSOR_FILE_INTERNAL
#include "io/tensor_file.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/common.h"
#include "io/fsutil.h"

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* ==================================================================== zip */

typedef struct {
  char *name;
  uint64_t lho, csize, usize;
  int method;
  uint32_t crc;
  const uint8_t *data; /* resolved lazily by zip_data() */
} zentry;

typedef struct {
  cd_tensor_file *f;
  zentry *e;
  int n;
} zarchive;

static int zentry_cmp(const void *a, const void *b) {
  return strcmp(((const zentry *)a)->name, ((const zentry *)b)->name);
}

static void zip_free(zarchive *z) {
  for (int i = 0; i < z->n; i++) free(z->e[i].name);
  free(z->e);
  z->e = NULL;
  z->n = 0;
}

/* Reads the central directory into z->e (sorted by name). */
static int zip_open(zarchive *z) {
  const char *P = z->f->path;
  const uint8_t *m = z->f->map;
  uint64_t len = z->f->map_len;
  if (len < 22) return cd_set_error("ckpt %s: file is too small to be a zip archive", P);
  int64_t eocd = -1;
  uint64_t lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
  for (uint64_t i = len - 22 + 1; i-- > lo;)
    if (rd32(m + i) == 0x06054b50 && i + 22 + rd16(m + i + 20) <= len) {
      eocd = (int64_t)i;
      break;
    }
  if (eocd < 0) return cd_set_error("ckpt %s: no zip end-of-central-directory record (truncated or not a zip)", P);
  uint64_t count = rd16(m + eocd + 10), cd_size = rd32(m + eocd + 12), cd_off = rd32(m + eocd + 16);
  if (eocd >= 20 && rd32(m + eocd - 20) == 0x07064b50) { /* zip64 locator */
    uint64_t z64 = rd64(m + eocd - 20 + 8);
    if (z64 > len - 56 || rd32(m + z64) != 0x06064b50)
      return cd_set_error("ckpt %s: bad zip64 end-of-central-directory record", P);
    count = rd64(m + z64 + 32);
    cd_size = rd64(m + z64 + 40);
    cd_off = rd64(m + z64 + 48);
  }
  if (cd_off > len || cd_size > len - cd_off)
    return cd_set_error("ckpt %s: zip central directory lies outside the file (truncated?)", P);
  if (count > cd_size / 46) return cd_set_error("ckpt %s: zip entry count %llu does not fit the central directory", P,
                                                (unsigned long long)count);
  z->e = cd_calloc(count + 1, sizeof *z->e);
  const uint8_t *p = m + cd_off, *end = m + cd_off + cd_size;
  for (uint64_t k = 0; k < count; k++) {
    if (end - p < 46 || rd32(p) != 0x02014b50)
      return cd_set_error("ckpt %s: corrupt zip central directory entry %llu", P, (unsigned long long)k);
    unsigned flags = rd16(p + 8), nlen = rd16(p + 28), xlen = rd16(p + 30), clen = rd16(p + 32);
    if ((uint64_t)(end - p) < 46u + nlen + xlen + clen)
      return cd_set_error("ckpt %s: corrupt zip central directory entry %llu", P, (unsigned long long)k);
    zentry *e = &z->e[z->n++];
    e->name = cd_malloc(nlen + 1);
    memcpy(e->name, p + 46, nlen);
    e->name[nlen] = 0;
    e->method = rd16(p + 10);
    e->crc = rd32(p + 16);
    e->csize = rd32(p + 20);
    e->usize = rd32(p + 24);
    e->lho = rd32(p + 42);
    if (flags & 1) return cd_set_error("ckpt %s: zip entry '%s' is encrypted", P, e->name);
    /* zip64 extra field: the 0xFFFFFFFF fields, in the order usize, csize, offset */
    const uint8_t *x = p + 46 + nlen, *xend = x + xlen;
    while (xend - x >= 4) {
      unsigned id = rd16(x), sz = rd16(x + 2);
      if ((unsigned)(xend - x - 4) < sz) break;
      if (id == 1) {
        const uint8_t *q = x + 4, *qend = x + 4 + sz;
        uint64_t *fields[3] = {&e->usize, &e->csize, &e->lho};
        for (int j = 0; j < 3; j++) {
          if (*fields[j] != 0xFFFFFFFFu) continue;
          if (qend - q < 8) return cd_set_error("ckpt %s: zip entry '%s': short zip64 extra field", P, e->name);
          *fields[j] = rd64(q);
          q += 8;
        }
      }
      x += 4 + sz;
    }
    p += 46 + nlen + xlen + clen;
  }
  qsort(z->e, z->n, sizeof *z->e, zentry_cmp);
  for (int i = 1; i < z->n; i++)
    if (strcmp(z->e[i].name, z->e[i - 1].name) == 0)
      return cd_set_error("ckpt %s: zip entry '%s' appears twice", P, z->e[i].name);
  return 0;
}

static zentry *zip_find(zarchive *z, const char *name) {
  zentry key = {.name = (char *)name};
  return bsearch(&key, z->e, z->n, sizeof *z->e, zentry_cmp);
}

/* Points e->data at the entry's bytes (inflating deflated entries into a buffer owned by f). */
static int zip_data(zarchive *z, zentry *e) {
  if (e->data || e->usize == 0) {
    if (!e->data) e->data = (const uint8_t *)"";
    return 0;
  }
  const char *P = z->f->path;
  const uint8_t *m = z->f->map;
  uint64_t len = z->f->map_len;
  if (e->lho > len || len - e->lho < 30 || rd32(m + e->lho) != 0x04034b50)
    return cd_set_error("ckpt %s: zip entry '%s': bad local header (truncated?)", P, e->name);
  uint64_t start = e->lho + 30 + rd16(m + e->lho + 26) + rd16(m + e->lho + 28);
  if (start > len || e->csize > len - start)
    return cd_set_error("ckpt %s: zip entry '%s': data runs past the end of the file (truncated?)", P, e->name);
  if (e->method == 0) {
    if (e->csize != e->usize)
      return cd_set_error("ckpt %s: zip entry '%s': stored entry with differing sizes", P, e->name);
    e->data = m + start;
    return 0;
  }
  if (e->method != 8)
    return cd_set_error("ckpt %s: zip entry '%s': unsupported compression method %d", P, e->name, e->method);
  /* deflate cannot expand more than ~1032:1; refuse claims beyond that (zip bombs) */
  if (e->usize / 1032 > e->csize + 1 || e->usize > SIZE_MAX / 2)
    return cd_set_error("ckpt %s: zip entry '%s': implausible uncompressed size", P, e->name);
  uint8_t *buf = cd_tf_own(z->f, (size_t)e->usize);
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return cd_set_error("ckpt %s: zlib init failed", P);
  const uint8_t *in = m + start;
  uint64_t in_left = e->csize, out_done = 0;
  int zr = Z_OK;
  while (zr == Z_OK) {
    uInt ci = (uInt)CD_MIN(in_left, (uint64_t)1 << 30);
    uInt co = (uInt)CD_MIN(e->usize - out_done, (uint64_t)1 << 30);
    zs.next_in = (Bytef *)in;
    zs.avail_in = ci;
    zs.next_out = buf + out_done;
    zs.avail_out = co;
    zr = inflate(&zs, Z_NO_FLUSH);
    in += ci - zs.avail_in;
    in_left -= ci - zs.avail_in;
    out_done += co - zs.avail_out;
    if (zr == Z_BUF_ERROR && (in_left == 0 || out_done == e->usize)) break;
  }
  inflateEnd(&zs);
  if (zr != Z_STREAM_END || out_done != e->usize)
    return cd_set_error("ckpt %s: zip entry '%s': corrupt deflate data", P, e->name);
  if ((uint32_t)crc32_z(0, buf, (z_size_t)e->usize) != e->crc)
    return cd_set_error("ckpt %s: zip entry '%s': CRC mismatch", P, e->name);
  e->data = buf;
  return 0;
}

/* ================================================================ pickle */

typedef enum {
  V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_BYTES, V_TUPLE, V_LIST, V_DICT,
  V_GLOBAL, V_STORAGE, V_TENSOR, V_OPAQUE
} vtype;

/* the globals the interpreter knows; anything else is refused */
enum { G_ORDERED_DICT, G_REBUILD_TENSOR_V2, G_REBUILD_PARAMETER, G_STORAGE, G_INERT };

typedef struct val val;
struct val {
  vtype type;
  int64_t i;      /* V_INT, V_BOOL; V_GLOBAL: G_* */
  double f;       /* V_FLOAT */
  char *s;        /* V_STR, V_BYTES (NUL-terminated copy); V_STORAGE: key */
  size_t slen;
  val **items;    /* V_TUPLE, V_LIST; V_DICT: key0, val0, key1, val1, ... */
  int n, cap;
  cd_dtype dt;    /* V_GLOBAL (G_STORAGE), V_STORAGE */
  const uint8_t *sdata; /* V_STORAGE: bytes and their count */
  uint64_t sbytes;
  val *storage;   /* V_TENSOR */
  int64_t offset;
  int ndim;
  int64_t size[CD_TF_MAX_DIMS], stride[CD_TF_MAX_DIMS];
};

typedef struct {
  zarchive *z;
  const char *path, *prefix; /* prefix: "<archive>/" */
  const uint8_t *p;
  size_t len, pos;
  val **all; /* every value made, for freeing */
  size_t nall, capall;
  val **stack;
  size_t sp, capstack;
  size_t *marks;
  size_t nmarks, capmarks;
  val **memo;
  size_t nmemo;
} unpickler;

#define PKL_MAX_DEPTH 64

static int perr(unpickler *u, const char *what) {
  return cd_set_error("ckpt %s: pickle: %s at byte %zu of data.pkl", u->path, what, u->pos);
}

static val *newval(unpickler *u, vtype t) {
  if (u->nall == u->capall) {
    u->capall = u->capall ? 2 * u->capall : 256;
    u->all = cd_realloc(u->all, u->capall * sizeof *u->all);
  }
  val *v = cd_calloc(1, sizeof *v);
  v->type = t;
  u->all[u->nall++] = v;
  return v;
}

static void additem(val *c, val *x) {
  if (c->n == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 8;
    c->items = cd_realloc(c->items, (size_t)c->cap * sizeof *c->items);
  }
  c->items[c->n++] = x;
}

static void push(unpickler *u, val *v) {
  if (u->sp == u->capstack) {
    u->capstack = u->capstack ? 2 * u->capstack : 256;
    u->stack = cd_realloc(u->stack, u->capstack * sizeof *u->stack);
  }
  u->stack[u->sp++] = v;
}

static size_t floor_of_stack(const unpickler *u) { return u->nmarks ? u->marks[u->nmarks - 1] : 0; }

static val *pop(unpickler *u) {
  if (u->sp <= floor_of_stack(u)) return NULL;
  return u->stack[--u->sp];
}

/* Pops to the last MARK; returns the index of the first item above it, or -1. */
static int64_t pop_mark(unpickler *u) {
  if (!u->nmarks) return -1;
  return (int64_t)u->marks[--u->nmarks];
}

static int need(unpickler *u, size_t n) {
  if (u->len - u->pos < n) return perr(u, "truncated data");
  return 0;
}

static val *mkstr(unpickler *u, vtype t, const uint8_t *s, size_t n) {
  val *v = newval(u, t);
  v->s = cd_malloc(n + 1);
  memcpy(v->s, s, n);
  v->s[n] = 0;
  v->slen = n;
  return v;
}

static val *mkint(unpickler *u, int64_t x) {
  val *v = newval(u, V_INT);
  v->i = x;
  return v;
}

static const struct { const char *name; cd_dtype dt; } STORAGES[] = {
    {"FloatStorage", CD_DT_F32}, {"HalfStorage", CD_DT_F16},  {"BFloat16Storage", CD_DT_BF16},
    {"DoubleStorage", CD_DT_F64}, {"LongStorage", CD_DT_I64}, {"IntStorage", CD_DT_I32},
    {"ShortStorage", CD_DT_I16}, {"CharStorage", CD_DT_I8},   {"ByteStorage", CD_DT_U8},
    {"BoolStorage", CD_DT_BOOL}};

/* Globals found in real training checkpoints next to the state dict (numpy
 * scalars, Lightning callback state). They are never called: a REDUCE or
 * NEWOBJ on them yields an inert value that the flattener ignores. */
static const char *const INERT[] = {
    "numpy.core.multiarray.scalar", "numpy.core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray",
    "_codecs.encode", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"};

static int op_global(unpickler *u, const char *mod, const char *name) {
  char full[600];
  snprintf(full, sizeof full, "%s.%s", mod, name);
  val *g = newval(u, V_GLOBAL);
  if (strcmp(full, "collections.OrderedDict") == 0) g->i = G_ORDERED_DICT;
  else if (strcmp(full, "torch._utils._rebuild_tensor_v2") == 0) g->i = G_REBUILD_TENSOR_V2;
  else if (strcmp(full, "torch._utils._rebuild_parameter") == 0) g->i = G_REBUILD_PARAMETER;
  else {
    g->i = -1;
    if (strcmp(mod, "torch") == 0)
      for (size_t k = 0; k < sizeof STORAGES / sizeof *STORAGES; k++)
        if (strcmp(name, STORAGES[k].name) == 0) {
          g->i = G_STORAGE;
          g->dt = STORAGES[k].dt;
        }
    for (size_t k = 0; k < sizeof INERT / sizeof *INERT; k++)
      if (strcmp(full, INERT[k]) == 0) g->i = G_INERT;
    if (g->i < 0) return cd_set_error("ckpt %s: pickle refers to forbidden global '%s'", u->path, full);
  }
  push(u, g);
  return 0;
}

/* ('storage', torch.XStorage, key, location, numel) -> V_STORAGE backed by <prefix>data/<key> */
static int op_persid(unpickler *u, val *pid) {
  if (!pid || pid->type != V_TUPLE || pid->n != 5 || pid->items[0]->type != V_STR ||
      strcmp(pid->items[0]->s, "storage") != 0)
    return perr(u, "persistent id is not ('storage', type, key, location, numel)");
  val *ty = pid->items[1], *key = pid->items[2], *numel = pid->items[4];
  if (ty->type != V_GLOBAL || ty->i != G_STORAGE) return perr(u, "persistent id with a non-storage type");
  if (key->type != V_STR || numel->type != V_INT || numel->i < 0) return perr(u, "malformed persistent id");
  size_t es = cd_dtype_size(ty->dt);
  if ((uint64_t)numel->i > UINT64_MAX / 16) return perr(u, "storage size overflows");
  char name[1024];
  snprintf(name, sizeof name, "%sdata/%s", u->prefix, key->s);
  zentry *e = zip_find(u->z, name);
  if (!e) return cd_set_error("ckpt %s: storage '%s' is missing from the archive (entry %s)", u->path, key->s, name);
  if (e->usize < (uint64_t)numel->i * es)
    return cd_set_error("ckpt %s: storage '%s' has %llu bytes, needs %llu (%lld x %s)", u->path, key->s,
                        (unsigned long long)e->usize, (unsigned long long)((uint64_t)numel->i * es),
                        (long long)numel->i, cd_dtype_name(ty->dt));
  if (zip_data(u->z, e)) return -1;
  val *s = newval(u, V_STORAGE);
  s->dt = ty->dt;
  s->s = cd_strdup(key->s);
  s->sdata = e->data;
  s->sbytes = (uint64_t)numel->i * es;
  push(u, s);
  return 0;
}

static int int_tuple(val *t, int64_t *out, int *n) {
  if (t->type != V_TUPLE || t->n > CD_TF_MAX_DIMS) return -1;
  for (int i = 0; i < t->n; i++) {
    if (t->items[i]->type != V_INT) return -1;
    out[i] = t->items[i]->i;
  }
  *n = t->n;
  return 0;
}

/* REDUCE: recognise the callable by name; nothing is executed. */
static int op_reduce(unpickler *u) {
  val *args = pop(u), *fn = pop(u);
  if (!args || !fn) return perr(u, "stack underflow in REDUCE");
  if (fn->type != V_GLOBAL) return perr(u, "REDUCE on a value that is not an allowed global");
  if (args->type != V_TUPLE) return perr(u, "REDUCE arguments are not a tuple");
  switch (fn->i) {
  case G_ORDERED_DICT:
    if (args->n != 0) return perr(u, "OrderedDict with constructor arguments is not supported");
    push(u, newval(u, V_DICT));
    return 0;
  case G_REBUILD_PARAMETER: /* (tensor, requires_grad, backward_hooks) -> tensor */
    if (args->n < 1 || args->items[0]->type != V_TENSOR) return perr(u, "_rebuild_parameter without a tensor");
    push(u, args->items[0]);
    return 0;
  case G_REBUILD_TENSOR_V2: { /* (storage, offset, size, stride, requires_grad, hooks[, metadata]) */
    if (args->n < 4 || args->n > 7) return perr(u, "_rebuild_tensor_v2 with a wrong number of arguments");
    val *st = args->items[0], *off = args->items[1];
    val *t = newval(u, V_TENSOR);
    int nd_stride = 0;
    if (st->type != V_STORAGE || off->type != V_INT || int_tuple(args->items[2], t->size, &t->ndim) ||
        int_tuple(args->items[3], t->stride, &nd_stride) || nd_stride != t->ndim)
      return perr(u, "_rebuild_tensor_v2 with malformed storage/offset/size/stride (or more than 8 dims)");
    t->storage = st;
    t->offset = off->i;
    push(u, t);
    return 0;
  }
  case G_STORAGE:
    return perr(u, "a storage type called directly (only persistent ids are supported)");
  default:
    push(u, newval(u, V_OPAQUE));
    return 0;
  }
}

static int run_pickle(unpickler *u, val **result) {
  *result = NULL;
  while (u->pos < u->len) {
    size_t at = u->pos;
    uint8_t op = u->p[u->pos++];
    val *v, *w;
    int64_t mk;
    switch (op) {
    case 0x80: /* PROTO */
      if (need(u, 1)) return -1;
      if (u->p[u->pos++] > 5) return perr(u, "unsupported pickle protocol");
      break;
    case 0x95: /* FRAME: framing is only a hint for buffered readers */
      if (need(u, 8)) return -1;
      u->pos += 8;
      break;
    case '}': push(u, newval(u, V_DICT)); break;
    case ']': push(u, newval(u, V_LIST)); break;
    case ')': push(u, newval(u, V_TUPLE)); break;
    case 'N': push(u, newval(u, V_NONE)); break;
    case 0x88: case 0x89: /* NEWTRUE, NEWFALSE */
      v = newval(u, V_BOOL);
      v->i = op == 0x88;
      push(u, v);
      break;
    case '(': /* MARK */
      if (u->nmarks == u->capmarks) {
        u->capmarks = u->capmarks ? 2 * u->capmarks : 64;
        u->marks = cd_realloc(u->marks, u->capmarks * sizeof *u->marks);
      }
      u->marks[u->nmarks++] = u->sp;
      break;
    case 't': /* TUPLE */
      if ((mk = pop_mark(u)) < 0) return perr(u, "TUPLE without MARK");
      v = newval(u, V_TUPLE);
      for (size_t i = (size_t)mk; i < u->sp; i++) additem(v, u->stack[i]);
      u->sp = (size_t)mk;
      push(u, v);
      break;
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
      int k = op - 0x84;
      if (u->sp < floor_of_stack(u) + (size_t)k) return perr(u, "stack underflow in TUPLEn");
      v = newval(u, V_TUPLE);
      for (int i = 0; i < k; i++) additem(v, u->stack[u->sp - k + i]);
      u->sp -= k;
      push(u, v);
      break;
    }
    case 'X': case 0x8c: case 0x8d: case 'T': case 'U': case 'B': case 'C': { /* strings and bytes */
      int lb = (op == 0x8c || op == 'U' || op == 'C') ? 1 : op == 0x8d ? 8 : 4;
      if (need(u, lb)) return -1;
      uint64_t n = lb == 1 ? u->p[u->pos] : lb == 4 ? rd32(u->p + u->pos) : rd64(u->p + u->pos);
      u->pos += lb;
      if (op == 'T' && (n & 0x80000000u)) return perr(u, "negative string length");
      if (n > u->len - u->pos) return perr(u, "string runs past the end of the pickle");
      push(u, mkstr(u, (op == 'B' || op == 'C') ? V_BYTES : V_STR, u->p + u->pos, (size_t)n));
      u->pos += n;
      break;
    }
    case 'J': /* BININT */
      if (need(u, 4)) return -1;
      push(u, mkint(u, (int32_t)rd32(u->p + u->pos)));
      u->pos += 4;
      break;
    case 'K': /* BININT1 */
      if (need(u, 1)) return -1;
      push(u, mkint(u, u->p[u->pos++]));
      break;
    case 'M': /* BININT2 */
      if (need(u, 2)) return -1;
      push(u, mkint(u, rd16(u->p + u->pos)));
      u->pos += 2;
      break;
    case 0x8a: { /* LONG1: little-endian two's complement, n bytes */
      if (need(u, 1)) return -1;
      size_t n = u->p[u->pos++];
      if (need(u, n)) return -1;
      if (n > 8) return perr(u, "integer wider than 64 bits");
      uint64_t x = 0;
      for (size_t i = 0; i < n; i++) x |= (uint64_t)u->p[u->pos + i] << (8 * i);
      if (n > 0 && n < 8 && (u->p[u->pos + n - 1] & 0x80)) x |= ~(uint64_t)0 << (8 * n);
      u->pos += n;
      push(u, mkint(u, (int64_t)x));
      break;
    }
    case 'G': { /* BINFLOAT: big-endian double */
      if (need(u, 8)) return -1;
      uint64_t x = 0;
      for (int i = 0; i < 8; i++) x = x << 8 | u->p[u->pos + i];
      u->pos += 8;
      v = newval(u, V_FLOAT);
      memcpy(&v->f, &x, 8);
      push(u, v);
      break;
    }
    case 'q': case 'r': case 0x94: { /* BINPUT, LONG_BINPUT, MEMOIZE */
      uint64_t idx;
      if (op == 0x94) idx = u->nmemo;
      else {
        int lb = op == 'q' ? 1 : 4;
        if (need(u, lb)) return -1;
        idx = lb == 1 ? u->p[u->pos] : rd32(u->p + u->pos);
        u->pos += lb;
      }
      if (u->sp <= floor_of_stack(u)) return perr(u, "memo store from an empty stack");
      /* a pickle of L bytes never needs more than L memo slots */
      if (idx > u->len) return perr(u, "memo index out of range");
      if (idx >= u->nmemo) {
        u->memo = cd_realloc(u->memo, (idx + 1) * sizeof *u->memo);
        memset(u->memo + u->nmemo, 0, (idx + 1 - u->nmemo) * sizeof *u->memo);
        u->nmemo = idx + 1;
      }
      u->memo[idx] = u->stack[u->sp - 1];
      break;
    }
    case 'h': case 'j': { /* BINGET, LONG_BINGET */
      int lb = op == 'h' ? 1 : 4;
      if (need(u, lb)) return -1;
      uint64_t idx = lb == 1 ? u->p[u->pos] : rd32(u->p + u->pos);
      u->pos += lb;
      if (idx >= u->nmemo || !u->memo[idx]) return perr(u, "memo get of an unset index");
      push(u, u->memo[idx]);
      break;
    }
    case 's': /* SETITEM */
      v = pop(u);
      w = pop(u);
      if (!v || !w || u->sp <= floor_of_stack(u)) return perr(u, "stack underflow in SETITEM");
      if (u->stack[u->sp - 1]->type != V_DICT) return perr(u, "SETITEM on a non-dict");
      additem(u->stack[u->sp - 1], w);
      additem(u->stack[u->sp - 1], v);
      break;
    case 'u': case 'e': { /* SETITEMS, APPENDS */
      if ((mk = pop_mark(u)) < 0) return perr(u, "SETITEMS/APPENDS without MARK");
      size_t n = u->sp - (size_t)mk;
      if ((size_t)mk <= floor_of_stack(u)) return perr(u, "stack underflow in SETITEMS/APPENDS");
      val *c = u->stack[mk - 1];
      if (op == 'u' && (c->type != V_DICT || n % 2)) return perr(u, "SETITEMS on a non-dict or odd item count");
      if (op == 'e' && c->type != V_LIST) return perr(u, "APPENDS on a non-list");
      for (size_t i = (size_t)mk; i < u->sp; i++) additem(c, u->stack[i]);
      u->sp = (size_t)mk;
      break;
    }
    case 'a': /* APPEND */
      v = pop(u);
      if (!v || u->sp <= floor_of_stack(u)) return perr(u, "stack underflow in APPEND");
      if (u->stack[u->sp - 1]->type != V_LIST) return perr(u, "APPEND on a non-list");
      additem(u->stack[u->sp - 1], v);
      break;
    case 'c': { /* GLOBAL "module\nname\n" */
      char s[2][256];
      for (int k = 0; k < 2; k++) {
        const uint8_t *nl = memchr(u->p + u->pos, '\n', u->len - u->pos);
        if (!nl) return perr(u, "truncated GLOBAL");
        size_t n = (size_t)(nl - (u->p + u->pos));
        if (n >= sizeof s[k]) return perr(u, "GLOBAL name too long");
        memcpy(s[k], u->p + u->pos, n);
        s[k][n] = 0;
        u->pos += n + 1;
      }
      if (op_global(u, s[0], s[1])) return -1;
      break;
    }
    case 0x93: /* STACK_GLOBAL */
      w = pop(u);
      v = pop(u);
      if (!v || !w || v->type != V_STR || w->type != V_STR) return perr(u, "STACK_GLOBAL needs two strings");
      if (op_global(u, v->s, w->s)) return -1;
      break;
    case 'R': /* REDUCE */
      if (op_reduce(u)) return -1;
      break;
    case 0x81: /* NEWOBJ: cls, args -> an inert object (never constructed) */
      v = pop(u);
      w = pop(u);
      if (!v || !w) return perr(u, "stack underflow in NEWOBJ");
      if (w->type != V_GLOBAL || w->i != G_INERT) return perr(u, "NEWOBJ on a class that is not allowed");
      push(u, newval(u, V_OPAQUE));
      break;
    case 'b': /* BUILD: object state (e.g. an OrderedDict's _metadata) is not needed */
      if (!pop(u) || u->sp <= floor_of_stack(u)) return perr(u, "stack underflow in BUILD");
      break;
    case 'Q': /* BINPERSID */
      if (op_persid(u, pop(u))) return -1;
      break;
    case '0': /* POP */
      if (!pop(u)) return perr(u, "stack underflow in POP");
      break;
    case '1': /* POP_MARK */
      if ((mk = pop_mark(u)) < 0) return perr(u, "POP_MARK without MARK");
      u->sp = (size_t)mk;
      break;
    case '2': /* DUP */
      if (u->sp <= floor_of_stack(u)) return perr(u, "stack underflow in DUP");
      push(u, u->stack[u->sp - 1]);
      break;
    case '.': /* STOP */
      if (u->sp != 1 || u->nmarks) return perr(u, "STOP with a stack that does not hold exactly one value");
      *result = u->stack[0];
      return 0;
    default: {
      char msg[64];
      u->pos = at;
      snprintf(msg, sizeof msg, "unsupported opcode 0x%02x", op);
      return perr(u, msg);
    }
    }
  }
  return perr(u, "no STOP opcode (truncated)");
}

static void unpickler_free(unpickler *u) {
  for (size_t i = 0; i < u->nall; i++) {
    free(u->all[i]->s);
    free(u->all[i]->items);
    free(u->all[i]);
  }
  free(u->all);
  free(u->stack);
  free(u->marks);
  free(u->memo);
}

/* ============================================================ flattening */

static int add_tensor(cd_tensor_file *f, const char *name, const val *t) {
  const val *s = t->storage;
  size_t es = cd_dtype_size(s->dt);
  int64_t numel;
  size_t nbytes;
  if (cd_shape_numel(t->size, t->ndim, es, &numel, &nbytes))
    return cd_set_error("ckpt %s: tensor '%s': invalid size (negative or overflowing)", f->path, name);
  if (numel > 0) {
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
      if (t->size[d] != 1 && t->stride[d] != expect)
        return cd_set_error("ckpt %s: tensor '%s' is not contiguous (stride[%d] = %lld, expected %lld); only "
                            "contiguous tensors are supported", f->path, name, d, (long long)t->stride[d],
                            (long long)expect);
      expect *= t->size[d];
    }
  }
  if (t->offset < 0 || (uint64_t)t->offset > s->sbytes / es || nbytes > s->sbytes - (uint64_t)t->offset * es)
    return cd_set_error("ckpt %s: tensor '%s': offset %lld + %lld elements exceed storage '%s' (%llu bytes)", f->path,
                        name, (long long)t->offset, (long long)numel, s->s, (unsigned long long)s->sbytes);
  cd_tensor_info *ti = cd_tf_add(f, name);
  ti->dtype = s->dt;
  ti->ndim = t->ndim;
  memcpy(ti->shape, t->size, sizeof(int64_t) * t->ndim);
  ti->data = s->sdata + (uint64_t)t->offset * es;
  ti->nbytes = nbytes;
  return 0;
}

/* A list or tuple of tensors only (the custom-diffusion repository's SDXL delta.bin keeps each
 * modifier token's two rows as [row_1, row_2]); other lists hold no model tensors. */
static int tensor_list(const val *v) {
  if ((v->type != V_LIST && v->type != V_TUPLE) || v->n < 1) return 0;
  for (int i = 0; i < v->n; i++)
    if (v->items[i]->type != V_TENSOR) return 0;
  return 1;
}

/* Adds every tensor reachable through nested dicts as "prefix.key.key" (the items of a
 * list of tensors as "prefix.key.0", "prefix.key.1", ...). */
static int flatten(cd_tensor_file *f, const val *d, const char *prefix, int depth, const char *skip_key) {
  if (depth > PKL_MAX_DEPTH) return cd_set_error("ckpt %s: dicts nested deeper than %d (cyclic?)", f->path, PKL_MAX_DEPTH);
  for (int i = 0; i + 1 < d->n; i += 2) {
    const val *k = d->items[i], *v = d->items[i + 1];
    char kbuf[32];
    const char *ks;
    if (k->type == V_STR) ks = k->s;
    else if (k->type == V_INT) {
      snprintf(kbuf, sizeof kbuf, "%lld", (long long)k->i);
      ks = kbuf;
    } else continue;
    if (skip_key && strcmp(ks, skip_key) == 0) continue;
    if (v->type != V_TENSOR && v->type != V_DICT && !tensor_list(v)) continue; /* non-tensor values are ignored */
    size_t n = strlen(prefix) + strlen(ks) + 24;
    if (n > 4096) return cd_set_error("ckpt %s: tensor name longer than 4096 bytes", f->path);
    char *name = cd_malloc(n);
    int nl = snprintf(name, n, "%s%s%s", prefix, *prefix ? "." : "", ks);
    int rc = 0;
    if (v->type == V_TENSOR) rc = add_tensor(f, name, v);
    else if (v->type == V_DICT) rc = flatten(f, v, name, depth + 1, NULL);
    else
      for (int j = 0; j < v->n && !rc; j++) {
        snprintf(name + nl, n - (size_t)nl, ".%d", j);
        rc = add_tensor(f, name, v->items[j]);
      }
    free(name);
    if (rc) return -1;
  }
  return 0;
}

/* ================================================================= open */

int cd_ckpt_open(const char *path, cd_tensor_file **out) {
  *out = NULL;
  cd_tensor_file *f;
  if (cd_tf_map_file(path, &f)) return cd_prefix_error("ckpt");
  const uint8_t *m = f->map;
  zarchive z = {.f = f};
  unpickler u = {0};
  char *prefix = NULL;
  if (f->map_len >= 1 && m[0] == 0x80) {
    cd_set_error("ckpt %s: legacy torch format not supported, re-save with torch>=1.6", path);
    goto fail;
  }
  if (f->map_len >= 262 && memcmp(m + 257, "ustar", 5) == 0) {
    cd_set_error("ckpt %s: legacy torch (tar) format not supported, re-save with torch>=1.6", path);
    goto fail;
  }
  if (f->map_len < 4 || rd32(m) != 0x04034b50) {
    cd_set_error("ckpt %s: not a torch zip checkpoint (no zip signature)", path);
    goto fail;
  }
  if (zip_open(&z)) goto fail;
  /* the archive folder is whatever holds data.pkl: "<name>/data.pkl" */
  zentry *pk = NULL;
  for (int i = 0; i < z.n; i++) {
    const char *s = z.e[i].name, *slash = strchr(s, '/');
    if (slash && strcmp(slash + 1, "data.pkl") == 0) {
      pk = &z.e[i];
      prefix = cd_malloc((size_t)(slash - s) + 2);
      memcpy(prefix, s, (size_t)(slash - s) + 1);
      prefix[slash - s + 1] = 0;
      break;
    }
  }
  if (!pk) {
    cd_set_error("ckpt %s: no <archive>/data.pkl entry: not a torch.save checkpoint", path);
    goto fail;
  }
  char bo_name[1024];
  snprintf(bo_name, sizeof bo_name, "%sbyteorder", prefix);
  zentry *bo = zip_find(&z, bo_name);
  if (bo) {
    if (zip_data(&z, bo)) goto fail;
    if (bo->usize != 6 || memcmp(bo->data, "little", 6) != 0) {
      cd_set_error("ckpt %s: big-endian checkpoints are not supported", path);
      goto fail;
    }
  }
  if (zip_data(&z, pk)) goto fail;
  if (pk->method == 0 && (uint32_t)crc32_z(0, pk->data, (z_size_t)pk->usize) != pk->crc) {
    cd_set_error("ckpt %s: data.pkl CRC mismatch (corrupt file)", path);
    goto fail;
  }
  u.z = &z;
  u.path = path;
  u.prefix = prefix;
  u.p = pk->data;
  u.len = (size_t)pk->usize;
  val *root;
  if (run_pickle(&u, &root)) goto fail;
  if (root->type != V_DICT) {
    cd_set_error("ckpt %s: the pickled object is not a dict of tensors", path);
    goto fail;
  }
  /* Lightning/LDM checkpoints: {'state_dict': {...}, 'global_step': ...} -> strip 'state_dict.' */
  const val *sd = NULL;
  for (int i = 0; i + 1 < root->n; i += 2)
    if (root->items[i]->type == V_STR && strcmp(root->items[i]->s, "state_dict") == 0 &&
        root->items[i + 1]->type == V_DICT)
      sd = root->items[i + 1];
  if (sd && flatten(f, sd, "", 1, NULL)) goto fail;
  if (flatten(f, root, "", 0, sd ? "state_dict" : NULL)) goto fail;
  if (cd_tf_index(f)) goto fail;
  unpickler_free(&u);
  zip_free(&z);
  free(prefix);
  *out = f;
  return 0;
fail:
  unpickler_free(&u);
  zip_free(&z);
  free(prefix);
  cd_tensor_file_close(f);
  return -1;
}

/* ================================================================ writer */

typedef struct { uint8_t *p; size_t n, cap; } bbuf;
static void bb_put(bbuf *b, const void *s, size_t n) {
  if (b->n + n > b->cap) {
    while (b->n + n > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
    b->p = cd_realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}
static void bb_u8(bbuf *b, unsigned x) { uint8_t c = (uint8_t)x; bb_put(b, &c, 1); }
static void bb_u16(bbuf *b, unsigned x) { bb_u8(b, x & 0xff); bb_u8(b, (x >> 8) & 0xff); }
static void bb_u32(bbuf *b, uint32_t x) { bb_u16(b, x & 0xffff); bb_u16(b, x >> 16); }
static void bb_u64(bbuf *b, uint64_t x) { bb_u32(b, (uint32_t)x); bb_u32(b, (uint32_t)(x >> 32)); }

/* ---- pickle emitter: what Python's pickler (protocol 2) writes for torch.save ---- */

typedef struct {
  bbuf b;
  uint32_t next_memo;
  int64_t memo_rebuild, memo_ordered, memo_storage_str, memo_cpu, memo_type[CD_DT_COUNT];
} pkl_writer;

static void pk_put(pkl_writer *w) { /* memoize the value just written */
  if (w->next_memo < 256) { bb_u8(&w->b, 'q'); bb_u8(&w->b, w->next_memo); }
  else { bb_u8(&w->b, 'r'); bb_u32(&w->b, w->next_memo); }
  w->next_memo++;
}
static void pk_get(pkl_writer *w, int64_t idx) {
  if (idx < 256) { bb_u8(&w->b, 'h'); bb_u8(&w->b, (unsigned)idx); }
  else { bb_u8(&w->b, 'j'); bb_u32(&w->b, (uint32_t)idx); }
}
static void pk_str(pkl_writer *w, const char *s, int64_t *memo) {
  if (memo && *memo >= 0) { pk_get(w, *memo); return; }
  size_t n = strlen(s);
  bb_u8(&w->b, 'X');
  bb_u32(&w->b, (uint32_t)n);
  bb_put(&w->b, s, n);
  if (memo) *memo = w->next_memo;
  pk_put(w);
}
static void pk_global(pkl_writer *w, const char *mod, const char *name, int64_t *memo) {
  if (*memo >= 0) { pk_get(w, *memo); return; }
  bb_u8(&w->b, 'c');
  bb_put(&w->b, mod, strlen(mod));
  bb_u8(&w->b, '\n');
  bb_put(&w->b, name, strlen(name));
  bb_u8(&w->b, '\n');
  *memo = w->next_memo;
  pk_put(w);
}
static void pk_int(pkl_writer *w, int64_t x) {
  if (x >= 0 && x < 256) { bb_u8(&w->b, 'K'); bb_u8(&w->b, (unsigned)x); }
  else if (x >= 0 && x < 65536) { bb_u8(&w->b, 'M'); bb_u16(&w->b, (unsigned)x); }
  else if (x >= INT32_MIN && x <= INT32_MAX) { bb_u8(&w->b, 'J'); bb_u32(&w->b, (uint32_t)(int32_t)x); }
  else { /* LONG1: minimal two's complement */
    uint8_t by[8];
    int n = 8;
    for (int i = 0; i < 8; i++) by[i] = (uint8_t)((uint64_t)x >> (8 * i));
    while (n > 1 && ((by[n - 1] == 0 && !(by[n - 2] & 0x80)) || (by[n - 1] == 0xff && (by[n - 2] & 0x80)))) n--;
    bb_u8(&w->b, 0x8a);
    bb_u8(&w->b, (unsigned)n);
    bb_put(&w->b, by, (size_t)n);
  }
}
static void pk_int_tuple(pkl_writer *w, const int64_t *x, int n) {
  if (n == 0) { bb_u8(&w->b, ')'); return; } /* the empty tuple is a singleton: not memoized */
  if (n > 3) bb_u8(&w->b, '(');
  for (int i = 0; i < n; i++) pk_int(w, x[i]);
  bb_u8(&w->b, n > 3 ? 't' : 0x84 + n);
  pk_put(w);
}

static const char *storage_name(cd_dtype dt) {
  for (size_t k = 0; k < sizeof STORAGES / sizeof *STORAGES; k++)
    if (STORAGES[k].dt == dt) return STORAGES[k].name;
  return NULL;
}

/* {name: _rebuild_tensor_v2(storage i, 0, shape, contiguous stride, False, OrderedDict())} */
static void pk_state_dict(pkl_writer *w, const cd_tensor_out *t, int n) {
  bb_u8(&w->b, 0x80);
  bb_u8(&w->b, 2);
  bb_u8(&w->b, '}');
  pk_put(w);
  for (int i = 0; i < n; i++) {
    if (i % 1000 == 0) bb_u8(&w->b, '('); /* Python batches SETITEMS by 1000 */
    pk_str(w, t[i].name, NULL);
    pk_global(w, "torch._utils", "_rebuild_tensor_v2", &w->memo_rebuild);
    bb_u8(&w->b, '(');
    {
      int64_t numel = 1, stride[CD_TF_MAX_DIMS];
      for (int d = t[i].ndim - 1; d >= 0; d--) {
        stride[d] = numel;
        numel *= t[i].shape[d];
      }
      char key[32];
      snprintf(key, sizeof key, "%d", i);
      bb_u8(&w->b, '(');
      pk_str(w, "storage", &w->memo_storage_str);
      pk_global(w, "torch", storage_name(t[i].dtype), &w->memo_type[t[i].dtype]);
      pk_str(w, key, NULL);
      pk_str(w, "cpu", &w->memo_cpu);
      pk_int(w, numel);
      bb_u8(&w->b, 't');
      pk_put(w);
      bb_u8(&w->b, 'Q');
      pk_int(w, 0);
      pk_int_tuple(w, t[i].shape, t[i].ndim);
      pk_int_tuple(w, stride, t[i].ndim);
      bb_u8(&w->b, 0x89);
      pk_global(w, "collections", "OrderedDict", &w->memo_ordered);
      bb_u8(&w->b, ')');
      bb_u8(&w->b, 'R');
      pk_put(w);
    }
    bb_u8(&w->b, 't');
    pk_put(w);
    bb_u8(&w->b, 'R');
    pk_put(w);
    if (i % 1000 == 999 || i == n - 1) bb_u8(&w->b, 'u');
  }
  bb_u8(&w->b, '.');
}

/* ---- zip writer: stored entries, data 64-byte aligned via an "FB" extra field as torch does ---- */

typedef struct {
  FILE *fp;
  uint64_t pos;
  int force64, err;
  bbuf cd; /* central directory */
  uint64_t count;
} zip_writer;

static void zw_write(zip_writer *zw, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, zw->fp) != n) zw->err = 1;
  zw->pos += n;
}

static void zw_entry(zip_writer *zw, const char *name, const void *data, uint64_t size) {
  size_t nlen = strlen(name);
  uint32_t crc = (uint32_t)crc32_z(0, data, (z_size_t)size);
  int big = zw->force64 || size >= 0xFFFFFFFFu;
  int bigoff = zw->force64 || zw->pos >= 0xFFFFFFFFu;
  bbuf h = {0};
  bb_u32(&h, 0x04034b50);
  bb_u16(&h, big ? 45 : 20);
  bb_u16(&h, 0);
  bb_u16(&h, 0); /* stored */
  bb_u16(&h, 0);      /* time 00:00 */
  bb_u16(&h, 0x21);   /* date 1980-01-01 */
  bb_u32(&h, crc);
  bb_u32(&h, big ? 0xFFFFFFFFu : (uint32_t)size);
  bb_u32(&h, big ? 0xFFFFFFFFu : (uint32_t)size);
  bb_u16(&h, (unsigned)nlen);
  size_t xlen_at = h.n;
  bb_u16(&h, 0);
  bb_put(&h, name, nlen);
  if (big) {
    bb_u16(&h, 1);
    bb_u16(&h, 16);
    bb_u64(&h, size);
    bb_u64(&h, size);
  }
  size_t pad = (64 - (zw->pos + h.n + 4) % 64) % 64;
  bb_u8(&h, 'F');
  bb_u8(&h, 'B');
  bb_u16(&h, (unsigned)pad);
  for (size_t i = 0; i < pad; i++) bb_u8(&h, 'Z');
  size_t xlen = h.n - 30 - nlen;
  h.p[xlen_at] = (uint8_t)xlen;
  h.p[xlen_at + 1] = (uint8_t)(xlen >> 8);
  uint64_t lho = zw->pos;
  zw_write(zw, h.p, h.n);
  free(h.p);
  zw_write(zw, data, (size_t)size);

  bbuf *c = &zw->cd;
  int need64 = big || bigoff;
  bb_u32(c, 0x02014b50);
  bb_u16(c, need64 ? 45 : 20);
  bb_u16(c, need64 ? 45 : 20);
  bb_u16(c, 0);
  bb_u16(c, 0);
  bb_u16(c, 0);
  bb_u16(c, 0x21);
  bb_u32(c, crc);
  bb_u32(c, big ? 0xFFFFFFFFu : (uint32_t)size);
  bb_u32(c, big ? 0xFFFFFFFFu : (uint32_t)size);
  bb_u16(c, (unsigned)nlen);
  bb_u16(c, need64 ? 4 + (big ? 16 : 0) + (bigoff ? 8 : 0) : 0);
  bb_u16(c, 0);
  bb_u16(c, 0);
  bb_u16(c, 0);
  bb_u32(c, 0);
  bb_u32(c, bigoff ? 0xFFFFFFFFu : (uint32_t)lho);
  bb_put(c, name, nlen);
  if (need64) {
    bb_u16(c, 1);
    bb_u16(c, (big ? 16 : 0) + (bigoff ? 8 : 0));
    if (big) { bb_u64(c, size); bb_u64(c, size); }
    if (bigoff) bb_u64(c, lho);
  }
  zw->count++;
}

static void zw_finish(zip_writer *zw) {
  uint64_t cd_off = zw->pos, cd_size = zw->cd.n;
  zw_write(zw, zw->cd.p, zw->cd.n);
  int z64 = zw->force64 || zw->count >= 0xFFFF || cd_off >= 0xFFFFFFFFu || cd_size >= 0xFFFFFFFFu;
  bbuf e = {0};
  if (z64) {
    uint64_t z64_off = zw->pos;
    bb_u32(&e, 0x06064b50);
    bb_u64(&e, 44);
    bb_u16(&e, 45);
    bb_u16(&e, 45);
    bb_u32(&e, 0);
    bb_u32(&e, 0);
    bb_u64(&e, zw->count);
    bb_u64(&e, zw->count);
    bb_u64(&e, cd_size);
    bb_u64(&e, cd_off);
    bb_u32(&e, 0x07064b50); /* locator */
    bb_u32(&e, 0);
    bb_u64(&e, z64_off);
    bb_u32(&e, 1);
  }
  bb_u32(&e, 0x06054b50);
  bb_u16(&e, 0);
  bb_u16(&e, 0);
  bb_u16(&e, z64 ? 0xFFFF : (unsigned)zw->count);
  bb_u16(&e, z64 ? 0xFFFF : (unsigned)zw->count);
  bb_u32(&e, z64 ? 0xFFFFFFFFu : (uint32_t)cd_size);
  bb_u32(&e, z64 ? 0xFFFFFFFFu : (uint32_t)cd_off);
  bb_u16(&e, 0);
  zw_write(zw, e.p, e.n);
  free(e.p);
}

static int keycmp(const void *a, const void *b) { /* torch writes storages in sorted key order */
  char x[16], y[16];
  snprintf(x, sizeof x, "%d", *(const int *)a);
  snprintf(y, sizeof y, "%d", *(const int *)b);
  return strcmp(x, y);
}

/* torch names the archive folder after the file (basename without extension) */
static void archive_name(const char *path, char *out, size_t cap) {
  const char *b = strrchr(path, '/');
  b = b ? b + 1 : path;
  const char *dot = strrchr(b, '.');
  size_t n = dot && dot > b ? (size_t)(dot - b) : strlen(b);
  int ok = n > 0 && n < cap;
  for (size_t i = 0; ok && i < n; i++)
    ok = (b[i] >= 'a' && b[i] <= 'z') || (b[i] >= 'A' && b[i] <= 'Z') || (b[i] >= '0' && b[i] <= '9') || b[i] == '_' ||
         b[i] == '-';
  if (ok) snprintf(out, cap, "%.*s", (int)n, b);
  else snprintf(out, cap, "archive");
}

int cd_ckpt_write_ex(const char *path, const cd_tensor_out *t, int n, int force_zip64) {
  if (n < 0) return cd_set_error("ckpt write %s: negative tensor count", path);
  for (int i = 0; i < n; i++) {
    int64_t numel;
    size_t nb;
    if (!t[i].name || !t[i].name[0]) return cd_set_error("ckpt write %s: tensor %d has no name", path, i);
    if ((unsigned)t[i].dtype >= CD_DT_COUNT || t[i].ndim < 0 || t[i].ndim > CD_TF_MAX_DIMS ||
        cd_shape_numel(t[i].shape, t[i].ndim, cd_dtype_size(t[i].dtype), &numel, &nb))
      return cd_set_error("ckpt write %s: tensor '%s': invalid dtype or shape", path, t[i].name);
    if (nb && !t[i].data) return cd_set_error("ckpt write %s: tensor '%s': no data", path, t[i].name);
    for (int j = 0; j < i; j++)
      if (strcmp(t[i].name, t[j].name) == 0)
        return cd_set_error("ckpt write %s: tensor name '%s' given twice", path, t[i].name);
  }
  pkl_writer pw = {.memo_rebuild = -1, .memo_ordered = -1, .memo_storage_str = -1, .memo_cpu = -1};
  for (int k = 0; k < CD_DT_COUNT; k++) pw.memo_type[k] = -1;
  pk_state_dict(&pw, t, n);

  char arch[256], name[512], tmp[4096];
  archive_name(path, arch, sizeof arch);
  zip_writer zw = {.force64 = force_zip64};
  zw.fp = cd_atomic_open(path, tmp, sizeof tmp);
  if (!zw.fp) {
    free(pw.b.p);
    return -1;
  }
  snprintf(name, sizeof name, "%s/data.pkl", arch);
  zw_entry(&zw, name, pw.b.p, pw.b.n);
  free(pw.b.p);
  snprintf(name, sizeof name, "%s/byteorder", arch);
  zw_entry(&zw, name, "little", 6);
  int *order = cd_malloc((size_t)(n + 1) * sizeof *order);
  for (int i = 0; i < n; i++) order[i] = i;
  qsort(order, n, sizeof *order, keycmp);
  for (int k = 0; k < n; k++) {
    const cd_tensor_out *x = &t[order[k]];
    int64_t numel;
    size_t nb;
    cd_shape_numel(x->shape, x->ndim, cd_dtype_size(x->dtype), &numel, &nb);
    snprintf(name, sizeof name, "%s/data/%d", arch, order[k]);
    zw_entry(&zw, name, nb ? x->data : "", nb);
  }
  free(order);
  snprintf(name, sizeof name, "%s/version", arch);
  zw_entry(&zw, name, "3\n", 2);
  zw_finish(&zw);
  free(zw.cd.p);
  if (zw.err) {
    cd_atomic_abort(zw.fp, tmp);
    return cd_set_error("ckpt write %s: write failed", path);
  }
  return cd_atomic_commit(zw.fp, tmp, path);
}

int cd_ckpt_write(const char *path, const cd_tensor_out *t, int n) { return cd_ckpt_write_ex(path, t, n, 0); }
