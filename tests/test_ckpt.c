/* test_ckpt.c - PyTorch zip checkpoints: cd_ckpt_write round trips, and
 * pickles/zips built by hand here (a tiny pickle + zip writer, independent
 * of src/io/ckpt.c) for the structures torch and Lightning produce and for
 * hostile input: forbidden globals, truncation, corruption, random mutation. */
#define CD_TENSOR_FILE_INTERNAL
#include <unistd.h>
#include <zlib.h>

#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "test.h"

/* ---- byte buffer ---- */
typedef struct { uint8_t *p; size_t n, cap; } buf;
static void put(buf *b, const void *s, size_t n) {
  if (b->n + n > b->cap) {
    while (b->n + n > b->cap) b->cap = b->cap ? 2 * b->cap : 1024;
    b->p = cd_realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}
static void u8(buf *b, unsigned x) { uint8_t c = (uint8_t)x; put(b, &c, 1); }
static void u16(buf *b, unsigned x) { u8(b, x & 255); u8(b, x >> 8); }
static void u32(buf *b, uint32_t x) { u16(b, x & 0xffff); u16(b, x >> 16); }

/* ---- pickle pieces (protocol 2 unless noted) ---- */
static void p_str(buf *b, const char *s) { u8(b, 'X'); u32(b, (uint32_t)strlen(s)); put(b, s, strlen(s)); }
static void p_sstr(buf *b, const char *s) { u8(b, 0x8c); u8(b, (unsigned)strlen(s)); put(b, s, strlen(s)); } /* proto 4 */
static void p_int(buf *b, int64_t x) {
  if (x >= 0 && x < 256) { u8(b, 'K'); u8(b, (unsigned)x); }
  else { u8(b, 'J'); u32(b, (uint32_t)x); }
}
static void p_global(buf *b, const char *mod, const char *name) {
  u8(b, 'c'); put(b, mod, strlen(mod)); u8(b, '\n'); put(b, name, strlen(name)); u8(b, '\n');
}
/* _rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel), off, size, stride, False, OrderedDict()) */
static void p_tensor(buf *b, const char *type, const char *key, int64_t numel, int64_t off, int nd,
                     const int64_t *size, const int64_t *stride) {
  p_global(b, "torch._utils", "_rebuild_tensor_v2");
  u8(b, '(');
  u8(b, '('); p_str(b, "storage"); p_global(b, "torch", type); p_str(b, key); p_str(b, "cpu"); p_int(b, numel); u8(b, 't');
  u8(b, 'Q');
  p_int(b, off);
  u8(b, '('); for (int i = 0; i < nd; i++) p_int(b, size[i]); u8(b, 't');
  u8(b, '('); for (int i = 0; i < nd; i++) p_int(b, stride[i]); u8(b, 't');
  u8(b, 0x89);
  p_global(b, "collections", "OrderedDict"); u8(b, ')'); u8(b, 'R');
  u8(b, 't');
  u8(b, 'R');
}

/* ---- zip writer: stored or deflated entries, no alignment (unlike torch) ---- */
typedef struct { const char *name; const void *data; size_t n; int deflate; } zent;
static void write_zip(const char *path, const zent *e, int n) {
  buf z = {0}, cd = {0};
  for (int i = 0; i < n; i++) {
    const uint8_t *d = e[i].data;
    size_t cn = e[i].n;
    uint8_t *comp = NULL;
    if (e[i].deflate) {
      z_stream s = {0};
      deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
      comp = cd_malloc(deflateBound(&s, e[i].n));
      s.next_in = (Bytef *)e[i].data; s.avail_in = (uInt)e[i].n;
      s.next_out = comp; s.avail_out = (uInt)deflateBound(&s, e[i].n);
      deflate(&s, Z_FINISH);
      cn = s.total_out;
      deflateEnd(&s);
      d = comp;
    }
    uint32_t crc = (uint32_t)crc32(0, e[i].data, (uInt)e[i].n), off = (uint32_t)z.n;
    size_t nl = strlen(e[i].name);
    u32(&z, 0x04034b50); u16(&z, 20); u16(&z, 0); u16(&z, e[i].deflate ? 8 : 0); u16(&z, 0); u16(&z, 0x21);
    u32(&z, crc); u32(&z, (uint32_t)cn); u32(&z, (uint32_t)e[i].n); u16(&z, (unsigned)nl); u16(&z, 0);
    put(&z, e[i].name, nl); put(&z, d, cn);
    u32(&cd, 0x02014b50); u16(&cd, 20); u16(&cd, 20); u16(&cd, 0); u16(&cd, e[i].deflate ? 8 : 0); u16(&cd, 0);
    u16(&cd, 0x21); u32(&cd, crc); u32(&cd, (uint32_t)cn); u32(&cd, (uint32_t)e[i].n); u16(&cd, (unsigned)nl);
    u16(&cd, 0); u16(&cd, 0); u16(&cd, 0); u16(&cd, 0); u32(&cd, 0); u32(&cd, off); put(&cd, e[i].name, nl);
    free(comp);
  }
  uint32_t cdoff = (uint32_t)z.n;
  put(&z, cd.p, cd.n);
  u32(&z, 0x06054b50); u16(&z, 0); u16(&z, 0); u16(&z, (unsigned)n); u16(&z, (unsigned)n);
  u32(&z, (uint32_t)cd.n); u32(&z, cdoff); u16(&z, 0);
  FILE *fp = fopen(path, "wb");
  fwrite(z.p, 1, z.n, fp);
  fclose(fp);
  free(z.p);
  free(cd.p);
}

/* a checkpoint with data.pkl = pk and storages "0" (f32 x 24) and "1" (f16 x 4) */
static float S0[24];
static uint16_t S1[4];
static void write_ckpt_pkl(const char *path, const buf *pk, int deflate) {
  for (int i = 0; i < 24; i++) S0[i] = 0.25f * i - 2;
  for (int i = 0; i < 4; i++) S1[i] = cd_f32_to_f16(-1.0f * i);
  zent e[] = {{"mymodel/data.pkl", pk->p, pk->n, deflate}, {"mymodel/byteorder", "little", 6, 0},
              {"mymodel/data/0", S0, sizeof S0, deflate}, {"mymodel/data/1", S1, sizeof S1, 0},
              {"mymodel/version", "3\n", 2, 0}};
  write_zip(path, e, 5);
}

static int open_expect_error(const char *path, const char *needle) {
  cd_tensor_file *f = NULL;
  int rc = cd_ckpt_open(path, &f);
  if (rc == 0) { cd_tensor_file_close(f); return 0; }
  return f == NULL && strstr(cd_last_error(), needle) != NULL && strstr(cd_last_error(), path) != NULL;
}

/* ------------------------------------------------------------------ tests */

TEST(write_roundtrip) {
  float a[2 * 3 * 4];
  test_fill_uniform(a, 24, -1, 1, 3);
  uint16_t h[5], bf[3];
  for (int i = 0; i < 5; i++) h[i] = cd_f32_to_f16(0.125f * i - 0.25f);
  for (int i = 0; i < 3; i++) bf[i] = cd_f32_to_bf16(4.0f * i - 1);
  int64_t big[2] = {-7, (int64_t)1 << 50};
  double d = -3.5;
  uint8_t flags[3] = {1, 0, 1};
  float s = 0.75f;
  cd_tensor_out t[] = {
      {"model.diffusion_model.w", CD_DT_F32, 3, {2, 3, 4}, a}, {"half", CD_DT_F16, 1, {5}, h},
      {"bf", CD_DT_BF16, 2, {1, 3}, bf}, {"ids", CD_DT_I64, 1, {2}, big}, {"dbl", CD_DT_F64, 0, {0}, &d},
      {"mask", CD_DT_BOOL, 1, {3}, flags}, {"scalar", CD_DT_F32, 0, {0}, &s}, {"empty", CD_DT_F32, 2, {0, 4}, NULL},
      {"x4", CD_DT_F32, 4, {1, 2, 3, 4}, a}, {"x5", CD_DT_F32, 5, {1, 2, 3, 4, 1}, a},
  };
  int nt = sizeof t / sizeof *t;
  for (int z64 = 0; z64 < 2; z64++) {
    const char *path = test_tmpdir(z64 ? "rt64.ckpt" : "rt.ckpt");
    CHECK_OK(cd_ckpt_write_ex(path, t, nt, z64));
    cd_tensor_file *f;
    CHECK_OK(cd_tensor_file_open(path, &f)); /* dispatch by magic */
    CHECKF(cd_tf_count(f) == nt, "count %d", cd_tf_count(f));
    for (int i = 0; i < nt; i++) {
      const cd_tensor_info *ti = cd_tf_find(f, t[i].name);
      CHECKF(ti != NULL, "missing %s", t[i].name);
      CHECK(ti->dtype == t[i].dtype && ti->ndim == t[i].ndim);
      for (int k = 0; k < ti->ndim; k++) CHECK(ti->shape[k] == t[i].shape[k]);
      CHECK(ti->nbytes == 0 || memcmp(ti->data, t[i].data, ti->nbytes) == 0);
      CHECKF(ti->nbytes == 0 || (uintptr_t)ti->data % 64 == 0, "%s not 64-byte aligned", t[i].name); /* like torch */
    }
    float x[24];
    CHECK_OK(cd_tf_read_f32(f, cd_tf_find(f, "half"), x));
    for (int i = 0; i < 5; i++) CHECK(x[i] == 0.125f * i - 0.25f);
    CHECK_OK(cd_tf_read_f32(f, cd_tf_find(f, "bf"), x));
    for (int i = 0; i < 3; i++) CHECK(x[i] == 4.0f * i - 1);
    CHECK_OK(cd_tf_read_f32(f, cd_tf_find(f, "model.diffusion_model.w"), x));
    CHECK(memcmp(x, a, sizeof a) == 0);
    int64_t r[3];
    CHECK_OK(cd_tf_read_i64(f, cd_tf_find(f, "ids"), r));
    CHECK(r[0] == -7 && r[1] == ((int64_t)1 << 50));
    CHECK_OK(cd_tf_read_i64(f, cd_tf_find(f, "mask"), r));
    CHECK(r[0] == 1 && r[1] == 0 && r[2] == 1);
    double dd;
    CHECK_OK(cd_tf_read_f64(f, cd_tf_find(f, "dbl"), &dd));
    CHECK(dd == -3.5);
    CHECK(cd_tf_meta(f, "format") == NULL);
    cd_tensor_file_close(f);
    /* the archive folder is named after the file, as torch does */
    char *raw;
    size_t n;
    CHECK_OK(cd_read_file(path, &raw, &n));
    int has = memmem(raw, n, z64 ? "rt64/data.pkl" : "rt/data.pkl", z64 ? 13 : 11) != NULL &&
              memmem(raw, n, "/byteorder", 10) != NULL && memmem(raw, n, "/version", 8) != NULL;
    free(raw);
    CHECK(has);
  }
  /* many tensors: memo indices > 255 (LONG_BINPUT/LONG_BINGET) and SETITEMS batches of 1000 */
  int nm = 1100;
  cd_tensor_out *m = cd_calloc(nm, sizeof *m);
  char(*names)[16] = cd_malloc(nm * sizeof *names);
  float *vals = cd_malloc(nm * sizeof *vals);
  for (int i = 0; i < nm; i++) {
    snprintf(names[i], 16, "p%d", i);
    vals[i] = (float)i;
    m[i] = (cd_tensor_out){names[i], CD_DT_F32, 1, {1}, &vals[i]};
  }
  const char *path = test_tmpdir("many.bin");
  int rc = cd_ckpt_write(path, m, nm);
  cd_tensor_file *f = NULL;
  if (rc == 0) rc = cd_ckpt_open(path, &f);
  int good = rc == 0 && cd_tf_count(f) == nm;
  for (int i = 0; good && i < nm; i++) {
    const cd_tensor_info *ti = cd_tf_find(f, names[i]);
    float v;
    good = ti && cd_tf_read_f32(f, ti, &v) == 0 && v == (float)i;
  }
  cd_tensor_file_close(f);
  free(m);
  free(names);
  free(vals);
  CHECKF(good, "1100-tensor round trip: %s", cd_last_error());
}

/* {'state_dict': OrderedDict(model: {diffusion_model: {x, y}}), 'global_step': 5, 'lr': 1e-4,
 *  'callbacks': {ModelCheckpoint: obj}, 'ema': {'w': param(tensor)}} */
static void build_lightning(buf *b) {
  int64_t s23[2] = {2, 3}, st23[2] = {3, 1}, s4[1] = {4}, st4[1] = {1}, s1[1] = {2}, st1[1] = {1};
  u8(b, 0x80); u8(b, 2);
  u8(b, '}'); u8(b, 'q'); u8(b, 0);
  u8(b, '(');
  p_str(b, "state_dict");
  p_global(b, "collections", "OrderedDict"); u8(b, 'q'); u8(b, 1); u8(b, ')'); u8(b, 'R');
  p_str(b, "model");
  u8(b, '}');
  p_str(b, "diffusion_model");
  u8(b, '}');
  u8(b, '(');
  p_str(b, "x"); p_tensor(b, "FloatStorage", "0", 24, 0, 2, s23, st23);
  p_str(b, "y"); p_tensor(b, "FloatStorage", "0", 24, 6, 1, s4, st4); /* a view at offset 6 of the same storage */
  p_str(b, "h"); p_tensor(b, "HalfStorage", "1", 4, 2, 1, s1, st1);
  u8(b, 'u');
  u8(b, 's');
  u8(b, 's');
  u8(b, '}'); p_str(b, "_metadata"); u8(b, '}'); u8(b, 's'); u8(b, 'b'); /* OrderedDict state via BUILD */
  p_str(b, "global_step"); p_int(b, 5);
  p_str(b, "lr"); u8(b, 'G'); { double v = 1e-4; uint64_t x; memcpy(&x, &v, 8); for (int i = 7; i >= 0; i--) u8(b, (x >> (8 * i)) & 255); }
  p_str(b, "callbacks"); u8(b, '}');
  p_global(b, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"); u8(b, ')'); u8(b, 0x81);
  u8(b, '}'); p_str(b, "best"); u8(b, 'N'); u8(b, 's'); u8(b, 'b');
  u8(b, 'q'); u8(b, 2); u8(b, '0'); p_str(b, "cb"); u8(b, 'h'); u8(b, 2); u8(b, 's'); /* POP, memo, BINGET */
  p_str(b, "ema"); u8(b, '}');
  p_str(b, "w");
  p_global(b, "torch._utils", "_rebuild_parameter");
  p_tensor(b, "FloatStorage", "0", 24, 20, 1, s4, st4); u8(b, 0x88); p_global(b, "collections", "OrderedDict");
  u8(b, ')'); u8(b, 'R'); u8(b, 0x87); u8(b, 'R');
  u8(b, 's');
  p_str(b, "opt"); u8(b, ']'); u8(b, '('); p_int(b, 1); p_int(b, 2); u8(b, 'e'); p_int(b, 3); u8(b, 'a');
  p_int(b, 7); p_str(b, "int key"); u8(b, 0x86); u8(b, '0'); /* TUPLE2 then POP */
  u8(b, 'u');
  u8(b, '.');
}

TEST(lightning_structure) {
  buf b = {0};
  build_lightning(&b);
  for (int deflate = 0; deflate < 2; deflate++) {
    const char *path = test_tmpdir("lightning.ckpt");
    write_ckpt_pkl(path, &b, deflate);
    cd_tensor_file *f;
    if (cd_ckpt_open(path, &f)) { free(b.p); FAILF("open (deflate %d): %s", deflate, cd_last_error()); }
    int n = cd_tf_count(f);
    const cd_tensor_info *x = cd_tf_find(f, "model.diffusion_model.x"), *y = cd_tf_find(f, "model.diffusion_model.y");
    const cd_tensor_info *h = cd_tf_find(f, "model.diffusion_model.h"), *w = cd_tf_find(f, "ema.w");
    float vx[6], vy[4], vh[2], vw[4];
    int ok = n == 4 && x && y && h && w && !cd_tf_find(f, "state_dict.model.diffusion_model.x") &&
             x->ndim == 2 && x->shape[0] == 2 && x->shape[1] == 3 && h->dtype == CD_DT_F16 &&
             !cd_tf_read_f32(f, x, vx) && !cd_tf_read_f32(f, y, vy) && !cd_tf_read_f32(f, h, vh) &&
             !cd_tf_read_f32(f, w, vw);
    ok = ok && vx[0] == S0[0] && vx[5] == S0[5] && vy[0] == S0[6] && vy[3] == S0[9] && vh[0] == -2.0f &&
         vh[1] == -3.0f && vw[0] == S0[20] && vw[3] == S0[23];
    cd_tensor_file_close(f);
    if (!ok) { free(b.p); FAILF("deflate %d: wrong tensors (count %d)", deflate, n); }
  }
  free(b.p);
}

/* The custom-diffusion repository's SDXL delta.bin: {'unet': {'x.attn2.to_k.weight': t},
 * 'modifier_token': {'<new1>': [row_1, row_2]}, 'n': [1, 2]}: a list of tensors flattens to
 * ".0", ".1"; a list of numbers is ignored */
TEST(list_of_tensors) {
  int64_t s23[2] = {2, 3}, st23[2] = {3, 1}, s4[1] = {4}, st4[1] = {1};
  buf b = {0};
  u8(&b, 0x80); u8(&b, 2);
  u8(&b, '}'); u8(&b, '(');
  p_str(&b, "unet"); u8(&b, '}'); p_str(&b, "x.attn2.to_k.weight"); p_tensor(&b, "FloatStorage", "0", 24, 0, 2, s23, st23); u8(&b, 's');
  p_str(&b, "modifier_token"); u8(&b, '}'); p_str(&b, "<new1>");
  u8(&b, ']'); u8(&b, '(');
  p_tensor(&b, "FloatStorage", "0", 24, 8, 1, s4, st4);
  p_tensor(&b, "FloatStorage", "0", 24, 16, 1, s4, st4);
  u8(&b, 'e'); u8(&b, 's');
  p_str(&b, "n"); u8(&b, ']'); u8(&b, '('); p_int(&b, 1); p_int(&b, 2); u8(&b, 'e');
  u8(&b, 'u'); u8(&b, '.');
  const char *path = test_tmpdir("delta_xl.bin");
  write_ckpt_pkl(path, &b, 0);
  free(b.p);
  cd_tensor_file *f;
  CHECK_OK(cd_ckpt_open(path, &f));
  const cd_tensor_info *k = cd_tf_find(f, "unet.x.attn2.to_k.weight"), *r0 = cd_tf_find(f, "modifier_token.<new1>.0"),
                       *r1 = cd_tf_find(f, "modifier_token.<new1>.1");
  float v0[4], v1[4];
  int ok = cd_tf_count(f) == 3 && k && r0 && r1 && !cd_tf_read_f32(f, r0, v0) && !cd_tf_read_f32(f, r1, v1) &&
           v0[0] == S0[8] && v0[3] == S0[11] && v1[0] == S0[16] && v1[3] == S0[19];
  int n = cd_tf_count(f);
  cd_tensor_file_close(f);
  CHECKF(ok, "%d tensors", n);
}

TEST(protocol4_frame_memoize) {
  /* what protocol 4 looks like: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL */
  buf b = {0};
  int64_t s[1] = {3}, st[1] = {1};
  u8(&b, 0x80); u8(&b, 4);
  u8(&b, 0x95); for (int i = 0; i < 8; i++) u8(&b, 0);
  u8(&b, '}'); u8(&b, 0x94);
  p_sstr(&b, "a.b"); u8(&b, 0x94);
  p_sstr(&b, "torch._utils"); p_sstr(&b, "_rebuild_tensor_v2"); u8(&b, 0x93); u8(&b, 0x94);
  u8(&b, '(');
  u8(&b, '('); p_sstr(&b, "storage"); p_sstr(&b, "torch"); p_sstr(&b, "FloatStorage"); u8(&b, 0x93);
  p_sstr(&b, "0"); p_sstr(&b, "cpu"); p_int(&b, 24); u8(&b, 't'); u8(&b, 'Q');
  p_int(&b, 1); u8(&b, '('); p_int(&b, s[0]); u8(&b, 't'); u8(&b, '('); p_int(&b, st[0]); u8(&b, 't');
  u8(&b, 0x89); u8(&b, '}'); u8(&b, '}'); /* hooks, and the 7th metadata argument */
  u8(&b, 't'); u8(&b, 'R');
  u8(&b, 's'); u8(&b, '.');
  const char *path = test_tmpdir("p4.pt");
  write_ckpt_pkl(path, &b, 0);
  free(b.p);
  cd_tensor_file *f;
  CHECK_OK(cd_tensor_file_open(path, &f));
  const cd_tensor_info *t = cd_tf_find(f, "a.b");
  float v[3];
  int ok = cd_tf_count(f) == 1 && t && t->shape[0] == 3 && !cd_tf_read_f32(f, t, v) && v[0] == S0[1] && v[2] == S0[3];
  cd_tensor_file_close(f);
  CHECK(ok);
}

/* a {'w': tensor} pickle whose global / tensor arguments can be swapped */
static void build_simple(buf *b, const char *mod, const char *name, int64_t numel, int64_t off, int nd,
                         const int64_t *size, const int64_t *stride) {
  u8(b, 0x80); u8(b, 2); u8(b, '}');
  p_str(b, "w");
  if (mod) { p_global(b, mod, name); u8(b, '('); p_str(b, "echo pwned"); u8(b, 't'); u8(b, 'R'); }
  else p_tensor(b, "FloatStorage", "0", numel, off, nd, size, stride);
  u8(b, 's'); u8(b, '.');
}

TEST(forbidden_globals) {
  static const char *bad[][2] = {{"os", "system"}, {"builtins", "eval"}, {"__builtin__", "set"},
                                 {"torch.storage", "_load_from_bytes"}, {"subprocess", "Popen"},
                                 {"torch", "load"}, {"posix", "system"}};
  const char *path = test_tmpdir("evil.ckpt");
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    buf b = {0};
    build_simple(&b, bad[i][0], bad[i][1], 0, 0, 0, NULL, NULL);
    write_ckpt_pkl(path, &b, 0);
    free(b.p);
    char want[128];
    snprintf(want, sizeof want, "pickle refers to forbidden global '%s.%s'", bad[i][0], bad[i][1]);
    CHECKF(open_expect_error(path, want), "%s.%s: %s", bad[i][0], bad[i][1], cd_last_error());
  }
  /* the same through STACK_GLOBAL */
  buf b = {0};
  u8(&b, 0x80); u8(&b, 4); p_sstr(&b, "builtins"); p_sstr(&b, "exec"); u8(&b, 0x93); u8(&b, '.');
  write_ckpt_pkl(path, &b, 0);
  free(b.p);
  CHECK(open_expect_error(path, "forbidden global 'builtins.exec'"));
}

TEST(bad_tensors) {
  const char *path = test_tmpdir("bad.ckpt");
  int64_t s[2] = {3, 2}, good[2] = {2, 1}, transposed[2] = {1, 3}, s1[1] = {30}, st1[1] = {1};
  buf b = {0};
  build_simple(&b, NULL, NULL, 24, 0, 2, s, transposed);
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "tensor 'w' is not contiguous"), "%s", cd_last_error());
  build_simple(&b, NULL, NULL, 24, 20, 2, s, good); /* offset 20 + 6 > 24 */
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "tensor 'w': offset 20"), "%s", cd_last_error());
  build_simple(&b, NULL, NULL, 24, 0, 1, s1, st1); /* 30 elements from a 24 storage */
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "exceed storage"), "%s", cd_last_error());
  build_simple(&b, NULL, NULL, 1000, 0, 1, s1, st1); /* storage claims more than its zip entry */
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "storage '0' has 96 bytes"), "%s", cd_last_error());
  /* missing storage entry */
  u8(&b, 0x80); u8(&b, 2); u8(&b, '}'); p_str(&b, "w");
  p_tensor(&b, "FloatStorage", "99", 1, 0, 1, (int64_t[]){1}, (int64_t[]){1});
  u8(&b, 's'); u8(&b, '.');
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "storage '99' is missing"), "%s", cd_last_error());
  /* top level not a dict */
  u8(&b, 0x80); u8(&b, 2); u8(&b, ']'); u8(&b, '.');
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "not a dict"), "%s", cd_last_error());
  /* a dict that contains itself */
  u8(&b, 0x80); u8(&b, 2); u8(&b, '}'); u8(&b, 'q'); u8(&b, 0); p_str(&b, "me"); u8(&b, 'h'); u8(&b, 0); u8(&b, 's');
  u8(&b, '.');
  write_ckpt_pkl(path, &b, 0);
  b.n = 0;
  CHECKF(open_expect_error(path, "nested deeper"), "%s", cd_last_error());
  /* assorted malformed pickles */
#define B(lit) lit, sizeof(lit) - 1
  static const struct { const char *bytes; size_t n; const char *expect; } cases[] = {
      {B("\x80\x02}"), "no STOP"},
      {B("\x80\x02}s."), "stack underflow"},
      {B("\x80\x02h\x05."), "memo get"},
      {B("\x80\x02t."), "TUPLE without MARK"},
      {B("\x80\x02}(K\x01u."), "odd item count"},
      {B("\x80\x02}X\xff\xff\xff\x7f"), "runs past the end"},
      {B("\x80\x02}}."), "exactly one value"},
      {B("\x80\x02\xff."), "unsupported opcode 0xff"},
      {B("\x80\x02K\x01K\x02R."), "REDUCE on a value"},
      {B("\x80\x02" "ctorch\nFloatStorage\n)R."), "storage type called directly"},
      {B("\x80\x02(X\x07\x00\x00\x00storageK\x01X\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x01tQ."), "non-storage type"},
      {B("\x80\x02\x8a\x09\x01\x01\x01\x01\x01\x01\x01\x01\x01."), "wider than 64"},
      {B("\x80\x02q"), "truncated"},
      {B("\x80\x02}r\xff\xff\xff\xff."), "memo index"},
      {B("\x80\x02" "cos\nsys"), "truncated GLOBAL"},
      /* the classic exploits through other opcodes: INST and OBJ never run */
      {B("\x80\x02(S'echo pwned'\nios\nsystem\n."), "opcode"},
      {B("\x80\x02(cos\nsystem\nS'echo pwned'\no."), "forbidden global 'os.system'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    b.n = 0;
    put(&b, cases[i].bytes, cases[i].n);
    write_ckpt_pkl(path, &b, 0);
    CHECKF(open_expect_error(path, cases[i].expect), "case %zu: %s", i, cd_last_error());
  }
  free(b.p);
}

TEST(truncated_and_corrupt_files) {
  float a[300];
  test_fill_uniform(a, 300, -1, 1, 5);
  cd_tensor_out t[] = {{"a", CD_DT_F32, 2, {10, 30}, a}, {"b", CD_DT_F32, 1, {7}, a}};
  const char *path = test_tmpdir("full.ckpt");
  CHECK_OK(cd_ckpt_write(path, t, 2));
  char *raw;
  size_t n;
  CHECK_OK(cd_read_file(path, &raw, &n));
  const char *cut = test_tmpdir("cut.ckpt");
  int opened = 0;
  for (size_t len = 0; len < n; len += (len < 64 ? 1 : 7)) {
    FILE *fp = fopen(cut, "wb");
    fwrite(raw, 1, len, fp);
    fclose(fp);
    cd_tensor_file *f = NULL;
    if (cd_tensor_file_open(cut, &f) == 0) { opened++; cd_tensor_file_close(f); }
    else if (!strstr(cd_last_error(), cut) && !strstr(cd_last_error(), "unknown tensor file")) {
      free(raw);
      FAILF("len %zu: error does not name the file: %s", len, cd_last_error());
    }
  }
  /* a corrupted data.pkl is caught by its CRC */
  uint8_t *pk = memmem(raw, n, "\x80\x02}", 3);
  CHECK(pk != NULL);
  pk[2] = ']';
  FILE *fp = fopen(cut, "wb");
  fwrite(raw, 1, n, fp);
  fclose(fp);
  free(raw);
  CHECK(opened == 0);
  CHECKF(open_expect_error(cut, "CRC mismatch"), "%s", cd_last_error());
  /* legacy (non-zip) torch files and plain junk */
  fp = fopen(cut, "wb");
  fwrite("\x80\x02\x8a\x0al\xfc\x9c" "F\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.", 1, 22, fp);
  fclose(fp);
  CHECK(open_expect_error(cut, "legacy torch format not supported, re-save with torch>=1.6"));
  cd_tensor_file *f = NULL;
  CHECK(cd_tensor_file_open(cut, &f) == -1 && strstr(cd_last_error(), "legacy torch format"));
  fp = fopen(cut, "wb");
  fwrite("PK\x03\x04 this is not really a zip file at all, no central directory", 1, 64, fp);
  fclose(fp);
  CHECK(open_expect_error(cut, "end-of-central-directory"));
}

/* Random mutations of a valid pickle: every outcome is fine except a crash
 * (run under SAN=1 to catch memory errors). */
TEST(fuzz_pickle) {
  buf b = {0};
  build_lightning(&b);
  cd_rng r;
  cd_rng_seed(&r, 1234);
  const char *path = test_tmpdir("fuzz.ckpt");
  uint8_t *orig = cd_malloc(b.n);
  memcpy(orig, b.p, b.n);
  int ok = 0, fail = 0;
  for (int it = 0; it < 1500; it++) {
    memcpy(b.p, orig, b.n);
    int nmut = 1 + (int)(cd_rng_u64(&r) % 4);
    for (int k = 0; k < nmut; k++) {
      size_t pos = cd_rng_u64(&r) % b.n;
      uint64_t kind = cd_rng_u64(&r) % 3;
      if (kind == 0) b.p[pos] = (uint8_t)cd_rng_u64(&r);
      else if (kind == 1) b.p[pos] ^= (uint8_t)(1u << (cd_rng_u64(&r) % 8));
      else b.p[pos] = "()tRsuQq.h0"[cd_rng_u64(&r) % 11];
    }
    size_t keep = b.n;
    if (it % 5 == 0) b.n = cd_rng_u64(&r) % b.n;
    write_ckpt_pkl(path, &b, 0);
    b.n = keep;
    cd_tensor_file *f = NULL;
    if (cd_ckpt_open(path, &f) == 0) {
      for (int i = 0; i < cd_tf_count(f); i++) { /* whatever opened must be readable */
        const cd_tensor_info *t = cd_tf_at(f, i);
        double *d = cd_malloc((size_t)cd_tensor_numel(t) * sizeof *d + 8);
        CHECK_OK(cd_tf_read_f64(f, t, d));
        free(d);
      }
      cd_tensor_file_close(f);
      ok++;
    } else fail++;
  }
  free(orig);
  free(b.p);
  CHECK(ok + fail == 1500 && fail > 0);
}

TEST(writer_rejects_bad_input) {
  float a[2] = {0};
  const char *path = test_tmpdir("w.ckpt");
  cd_tensor_out dup[] = {{"x", CD_DT_F32, 1, {2}, a}, {"x", CD_DT_F32, 1, {2}, a}};
  CHECK(cd_ckpt_write(path, dup, 2) == -1 && strstr(cd_last_error(), "'x'"));
  cd_tensor_out nodata[] = {{"y", CD_DT_F32, 1, {2}, NULL}};
  CHECK(cd_ckpt_write(path, nodata, 1) == -1);
  CHECK(cd_ckpt_write("/nonexistent/dir/w.ckpt", dup, 1) == -1);
  CHECK(!cd_file_exists(path));
  /* an empty state dict is valid */
  CHECK_OK(cd_ckpt_write(path, NULL, 0));
  cd_tensor_file *f;
  CHECK_OK(cd_ckpt_open(path, &f));
  CHECK(cd_tf_count(f) == 0);
  cd_tensor_file_close(f);
}

int main(void) {
  RUN(write_roundtrip);
  RUN(lightning_structure);
  RUN(list_of_tensors);
  RUN(protocol4_frame_memoize);
  RUN(forbidden_globals);
  RUN(bad_tensors);
  RUN(truncated_and_corrupt_files);
  RUN(fuzz_pickle);
  RUN(writer_rejects_bad_input);
  test_tmp_cleanup();
  return test_summary();
}
