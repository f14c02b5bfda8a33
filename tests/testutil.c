/* testutil.c - the harness behind test.h. */
#include "test.h"

#include "io/fsutil.h"
#include "io/image.h"

#include <errno.h>
#include <limits.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

int test_failed_flag, test_skipped_flag;
char test_msg[1024];
static int n_pass, n_fail, n_skip;

void test_run(const char *name, void (*fn)(void)) {
  test_failed_flag = test_skipped_flag = 0;
  test_msg[0] = 0;
  cd_clear_error();
  double t0 = cd_time();
  fn();
  double dt = cd_time() - t0;
  if (test_failed_flag) { printf("FAIL %s: %s\n", name, test_msg); n_fail++; }
  else if (test_skipped_flag) { printf("SKIP %s: %s\n", name, test_msg); n_skip++; }
  else { printf("PASS %s (%.2fs)\n", name, dt); n_pass++; }
  fflush(stdout);
}

int test_summary(void) { return n_fail ? 1 : 0; }

double test_rel_err(const float *a, const float *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
  }
  if (den == 0) return sqrt(num);
  return sqrt(num / den);
}
double test_rel_err_d(const double *a, const double *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (den == 0) return sqrt(num);
  return sqrt(num / den);
}

void test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed) {
  cd_rng r;
  cd_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)cd_rng_uniform(&r);
}

int test_golden_required(void) {
  const char *e = getenv("CDIFF_REQUIRE_GOLDEN");
  return e && *e && strcmp(e, "0");
}

const char *test_golden_dir(void) {
  static char dir[1024];
  const char *e = getenv("CDIFF_GOLDEN");
  snprintf(dir, sizeof dir, "%s", e && *e ? e : "../shared/golden");
  struct stat st;
  if (stat(dir, &st) || !S_ISDIR(st.st_mode)) return NULL;
  return dir;
}
int test_golden_path(char *out, size_t cap, const char *rel) {
  const char *d = test_golden_dir();
  if (!d) return -1;
  snprintf(out, cap, "%s/%s", d, rel);
  struct stat st;
  return stat(out, &st) ? -1 : 0;
}
int test_golden_need(char *out, size_t cap, const char *rel) {
  if (cap) out[0] = 0;
  const char *d = test_golden_dir();
  if (!d) {
    const char *e = getenv("CDIFF_GOLDEN");
    /* a folder named explicitly must exist; the default one may be absent, outside CI */
    int fail = test_golden_required() || (e && *e);
    snprintf(test_msg, sizeof test_msg, "golden folder %s not found (needed for %s; place ../shared/golden beside the project or set CDIFF_GOLDEN)%s",
             e && *e ? e : "../shared/golden", rel, fail && !(e && *e) ? "; CDIFF_REQUIRE_GOLDEN is set" : "");
    return fail ? -1 : 1;
  }
  snprintf(out, cap, "%s/%s", d, rel);
  struct stat st;
  if (stat(out, &st)) {
    /* the folder is there: a missing file means it is incomplete, which no test may paper over */
    snprintf(test_msg, sizeof test_msg, "golden file %s missing from %s (incomplete golden folder)", rel, d);
    return -1;
  }
  return 0;
}

int test_run_cmd(const char *cmd, char *out, size_t cap) {
  if (cap) out[0] = 0;
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t n = cap ? fread(out, 1, cap - 1, p) : 0;
  if (cap) out[n] = 0;
  int st = pclose(p);
  /* a sanitized tool exits 1 on a finding, as it does on bad input: a test
   * expecting failure would pass, so the report itself fails the test */
  static const char *const reports[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", ": runtime error: "};
  for (size_t i = 0; cap && i < sizeof reports / sizeof reports[0]; i++)
    if (strstr(out, reports[i])) {
      snprintf(test_msg, sizeof test_msg, "sanitizer report from `%.200s`:\n%.700s", cmd, strstr(out, reports[i]));
      test_failed_flag = 1;
    }
  return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *test_build_path(const char *rel) {
  static char out[4][PATH_MAX + 64];
  static int k;
  char *bin = out[k++ % 4];
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  exe[n > 0 ? n : 0] = 0;
  char *s = strrchr(exe, '/'); /* <build>/tests/test_x -> <build> */
  if (s) *s = 0;
  s = strrchr(exe, '/');
  if (n > 0 && s && !strcmp(s, "/tests")) *s = 0;
  else snprintf(exe, sizeof exe, "build"); /* not run from a build folder */
  snprintf(bin, sizeof out[0], "%s/%s", exe, rel);
  return bin;
}

const char *test_cdiff_bin(void) {
  const char *e = getenv("CDIFF_BIN");
  return e && *e ? e : test_build_path("cdiff");
}

static char tmp_root[256];
const char *test_tmpdir(const char *sub) {
  static char p[8][512];
  static int k;
  if (!tmp_root[0]) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/cdiff_%s_XXXXXX", program_invocation_short_name);
    if (!mkdtemp(tmp_root)) snprintf(tmp_root, sizeof tmp_root, "/nonexistent/cdiff_tmp");
  }
  char *s = p[k++ % 8];
  snprintf(s, sizeof p[0], "%s/%s", tmp_root, sub);
  return s;
}
void test_tmp_cleanup(void) {
  if (tmp_root[0] && strncmp(tmp_root, "/nonexistent", 12)) test_rmtree(tmp_root);
}

int test_rmtree(const char *dir) {
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) {
    fprintf(stderr, "could not remove %s\n", dir);
    return -1;
  }
  return 0;
}

/* ---- op checking ---- */
static double ref_loss(const op_check *c, double **src, double *out, const double *r, int64_t ny) {
  c->ref(src, out, c->ctx);
  double L = 0;
  for (int64_t i = 0; i < ny; i++) L += r[i] * out[i];
  return L;
}

int test_check_op(const op_check *c) {
  double fwd_tol = c->fwd_tol > 0 ? c->fwd_tol : 1e-5;
  double grad_tol = c->grad_tol > 0 ? c->grad_tol : 1e-3;
  double eps = c->fd_eps > 0 ? c->fd_eps : 1e-4;
  int max_fd = c->max_fd > 0 ? c->max_fd : 64;
  int rc = -1;
  float *fdata[4] = {0};
  double *ddata[4] = {0};
  int frozen[4] = {0};
  int64_t nn[4];
  cd_graph *g = cd_graph_new();
  cd_node *src[4];
  for (int i = 0; i < c->nsrc; i++) {
    nn[i] = cd_numel(c->ndim[i], c->ne[i]);
    fdata[i] = cd_malloc(nn[i] * sizeof(float));
    ddata[i] = cd_malloc(nn[i] * sizeof(double));
    int iv = c->init ? c->init(i, fdata[i], nn[i], c->ctx) : -1;
    if (iv == -1) test_fill_uniform(fdata[i], nn[i], -1, 1, 1234 + i);
    frozen[i] = iv == 1;
    for (int64_t j = 0; j < nn[i]; j++) ddata[i][j] = fdata[i][j];
    char nm[32];
    snprintf(nm, sizeof nm, "src%d", i);
    src[i] = cd_param(g, nm, fdata[i], c->ndim[i], c->ne[i]);
    if (c->trainable_mask & (1u << i)) cd_set_trainable(src[i]);
  }
  cd_node *y = c->build(g, src, c->ctx);
  int64_t ny = y->n;
  float *r = cd_malloc(ny * sizeof(float));
  double *rd = cd_malloc(ny * sizeof(double)), *yref = cd_malloc(ny * sizeof(double));
  test_fill_uniform(r, ny, -1, 1, 99);
  for (int64_t j = 0; j < ny; j++) rd[j] = r[j];
  cd_node *rn = cd_param(g, "r", r, y->ndim, y->ne);
  cd_node *loss = cd_sum(g, cd_mul(g, y, rn));
  cd_graph_output(g, y);
  cd_plan_opts po = {.training = c->trainable_mask != 0, .loss = loss};
  if (cd_graph_plan(g, &po) || cd_graph_forward(g)) {
    snprintf(test_msg, sizeof test_msg, "%s: %s", c->name, cd_last_error());
    goto done;
  }
  ref_loss(c, ddata, yref, rd, ny);
  double num = 0, den = 0;
  for (int64_t j = 0; j < ny; j++) { double d = y->data[j] - yref[j]; num += d * d; den += yref[j] * yref[j]; }
  double fe = den > 0 ? sqrt(num / den) : sqrt(num);
  if (!(fe <= fwd_tol)) {
    snprintf(test_msg, sizeof test_msg, "%s: forward rel err %.3g > %.3g", c->name, fe, fwd_tol);
    goto done;
  }
  if (c->trainable_mask) {
    if (cd_graph_backward(g)) {
      snprintf(test_msg, sizeof test_msg, "%s: backward: %s", c->name, cd_last_error());
      goto done;
    }
    double *tmp = cd_malloc(ny * sizeof(double));
    for (int i = 0; i < c->nsrc; i++) {
      if (!(c->trainable_mask & (1u << i)) || frozen[i]) continue;
      double gn = 0, gd = 0;
      int64_t stride = nn[i] > max_fd ? nn[i] / max_fd : 1;
      for (int64_t j = (stride > 1 ? stride / 2 : 0); j < nn[i]; j += stride) {
        double x0 = ddata[i][j];
        ddata[i][j] = x0 + eps;
        double lp = ref_loss(c, ddata, tmp, rd, ny);
        ddata[i][j] = x0 - eps;
        double lm = ref_loss(c, ddata, tmp, rd, ny);
        ddata[i][j] = x0;
        double fd = (lp - lm) / (2 * eps), an = src[i]->grad[j];
        gn += (an - fd) * (an - fd);
        gd += fd * fd;
      }
      double ge = gd > 0 ? sqrt(gn / gd) : sqrt(gn);
      if (!(ge <= grad_tol)) {
        snprintf(test_msg, sizeof test_msg, "%s: grad of src%d rel err %.3g > %.3g", c->name, i, ge, grad_tol);
        free(tmp);
        goto done;
      }
    }
    free(tmp);
  }
  rc = 0;
done:
  cd_graph_free(g);
  for (int i = 0; i < c->nsrc; i++) { free(fdata[i]); free(ddata[i]); }
  free(r); free(rd); free(yref);
  return rc;
}

float *test_read_f32(const cd_tensor_file *f, const char *name, int64_t *n) {
  const cd_tensor_info *t = cd_tf_find(f, name);
  if (!t) {
    snprintf(test_msg, sizeof test_msg, "golden tensor %s missing", name);
    return NULL;
  }
  int64_t k = cd_tensor_numel(t);
  float *x = cd_malloc((k ? k : 1) * sizeof(float));
  if (cd_tf_read_f32(f, t, x)) {
    snprintf(test_msg, sizeof test_msg, "%s", cd_last_error());
    free(x);
    return NULL;
  }
  if (n) *n = k;
  return x;
}

int test_write_noise_images(const char *dir, int n, uint64_t seed) {
  if (cd_mkdir_p(dir)) return -1;
  cd_rng r;
  cd_rng_seed(&r, seed);
  for (int i = 0; i < n; i++) {
    cd_image im = {.w = 64, .h = 64, .c = 3};
    im.px = cd_malloc(64 * 64 * 3);
    for (int p = 0; p < 64 * 64 * 3; p++) im.px[p] = (uint8_t)(cd_rng_u64(&r) % 256);
    char path[1024];
    snprintf(path, sizeof path, "%s/img%d.png", dir, i);
    int rc = cd_image_save_png(path, &im, NULL, 0);
    cd_image_free(&im);
    if (rc) return -1;
  }
  return 0;
}

void test_pin_threads(void) { setenv("CDIFF_THREADS", "1", 1); }

int test_count_lines(const char *path) {
  char *t;
  size_t n;
  if (cd_read_file(path, &t, &n)) return -1;
  int k = 0;
  for (size_t i = 0; i < n; i++) k += t[i] == '\n';
  free(t);
  return k;
}

const char *test_path_in(const char *dir, const char *name) {
  static char buf[8][1200];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

int test_same_file(const char *a, const char *b) {
  char *x = NULL, *y = NULL;
  size_t nx = 0, ny = 0;
  int ok = !cd_read_file(a, &x, &nx) && !cd_read_file(b, &y, &ny) && nx == ny && !memcmp(x, y, nx);
  free(x);
  free(y);
  return ok;
}
