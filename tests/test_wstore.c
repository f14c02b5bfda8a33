/* test_wstore.c - the weight store (engine/wstore.h) through a test backend
 * that wraps the CPU one and keeps its own "device" copies: it counts uploads
 * and bytes, so the test sees that a store is uploaded once as one block,
 * that graphs of different shapes share it, and that only the weights whose
 * version changed are uploaded again. */
#include "engine/backend.h"
#include "engine/wstore.h"
#include "test.h"

static cd_backend counting;
static long uploads, upload_bytes;

static void count_upload(const cd_kernel_ctx *ctx, void *dst, const void *host, size_t bytes) {
  uploads++;
  upload_bytes += (long)bytes;
  cd_backend_cpu()->upload(ctx, dst, host, bytes);
}

static const cd_backend *test_backend(void) {
  counting = *cd_backend_cpu();
  counting.name = "counting-cpu";
  counting.upload = count_upload;
  return &counting;
}

/* y = linear(linear(x, w0, b0), w1) for x [rows, 8] */
static cd_node *mlp(cd_graph *g, cd_wstore *s, int rows, cd_node **x) {
  *x = cd_input(g, "x", 2, (int64_t[]){rows, 8});
  cd_node *h = cd_linear(g, *x, cd_wstore_param(g, s, 0), cd_wstore_param(g, s, 1));
  cd_node *y = cd_linear(g, h, cd_wstore_param(g, s, 2), NULL);
  cd_graph_output(g, y);
  return y;
}

/* the same network in double on the host values, row r */
static void ref_row(const float *w0, const float *b0, const uint16_t *w1, const float *x, double *y) {
  double h[6];
  for (int i = 0; i < 6; i++) {
    h[i] = b0[i];
    for (int k = 0; k < 8; k++) h[i] += (double)w0[i * 8 + k] * x[k];
  }
  for (int o = 0; o < 4; o++) {
    y[o] = 0;
    for (int i = 0; i < 6; i++) y[o] += (double)cd_f16_to_f32(w1[o * 6 + i]) * h[i];
  }
}

static int matches(const cd_graph *g, const cd_node *y, int rows, const float *w0, const float *b0, const uint16_t *w1, const float *x) {
  float out[5 * 4];
  if (cd_graph_get(g, y, out)) return 0;
  for (int r = 0; r < rows; r++) {
    double ref[4];
    ref_row(w0, b0, w1, x + r * 8, ref);
    for (int o = 0; o < 4; o++)
      if (fabs(out[r * 4 + o] - ref[o]) > 1e-5 * (1 + fabs(ref[o]))) return 0;
  }
  return 1;
}

TEST(uploads_only_changed_weights) {
  const cd_backend *be = test_backend();
  float w0[6 * 8], b0[6], x[5 * 8];
  uint16_t w1[4 * 6]; /* a 16-bit weight: the store keeps each weight's own type */
  test_fill_uniform(w0, 48, -1, 1, 1);
  test_fill_uniform(b0, 6, -1, 1, 2);
  test_fill_uniform(x, 40, -1, 1, 3);
  for (int i = 0; i < 24; i++) w1[i] = cd_f32_to_f16(0.1f * (float)(i % 7) - 0.3f);
  cd_wstore *s = cd_wstore_new(be);
  CHECK(cd_wstore_add(s, "l0.weight", CD_TYPE_F32, 2, (int64_t[]){6, 8}, w0) == 0);
  CHECK(cd_wstore_add(s, "l0.bias", CD_TYPE_F32, 1, (int64_t[]){6}, b0) == 1);
  CHECK(cd_wstore_add(s, "l1.weight", CD_TYPE_F16, 2, (int64_t[]){4, 6}, w1) == 2);
  CHECK(cd_wstore_add(s, "l0.bias", CD_TYPE_F32, 1, (int64_t[]){6}, b0) == -1);
  uploads = upload_bytes = 0;
  CHECK_OK(cd_wstore_commit(s));
  CHECKF(uploads == 1 && (size_t)upload_bytes == cd_wstore_bytes(s), "commit: %ld uploads, %ld bytes", uploads, upload_bytes);

  /* two graphs of different shapes share the backend copies */
  cd_graph *g1 = cd_graph_new_on(be), *g2 = cd_graph_new_on(be);
  cd_node *x1, *x2, *y1 = mlp(g1, s, 2, &x1), *y2 = mlp(g2, s, 5, &x2);
  CHECK_OK(cd_graph_plan(g1, NULL));
  CHECK_OK(cd_graph_plan(g2, NULL));
  uploads = upload_bytes = 0;
  CHECK_OK(cd_graph_set_input(g1, x1, x));
  CHECK_OK(cd_graph_set_input(g2, x2, x));
  long inputs = uploads;
  CHECK_OK(cd_graph_forward(g1));
  CHECK_OK(cd_graph_forward(g2));
  CHECKF(uploads == inputs, "runs without changes uploaded %ld weights", uploads - inputs);
  CHECK(matches(g1, y1, 2, w0, b0, w1, x) && matches(g2, y2, 5, w0, b0, w1, x));

  /* a delta changes one weight's host values: only it goes up, once for both graphs */
  for (int i = 0; i < 6; i++) b0[i] += 0.5f;
  uint64_t v = cd_wstore_version(s, 1);
  cd_wstore_touch(s, 1, NULL);
  CHECK(cd_wstore_version(s, 1) == v + 1 && cd_wstore_version(s, 0) == 1);
  uploads = upload_bytes = 0;
  CHECK_OK(cd_graph_forward(g1));
  CHECK_OK(cd_graph_forward(g2));
  CHECKF(uploads == 1 && upload_bytes == 6 * (long)sizeof(float), "after touching l0.bias: %ld uploads, %ld bytes", uploads, upload_bytes);
  CHECK(matches(g1, y1, 2, w0, b0, w1, x) && matches(g2, y2, 5, w0, b0, w1, x));

  /* the backend changed a weight itself (an optimizer step): nothing to upload,
   * and the host gets the new values by download */
  float w0b[48];
  cd_wstore_touch_backend(s, 0);
  uploads = 0;
  CHECK_OK(cd_graph_forward(g1));
  CHECK(uploads == 0);
  CHECK_OK(cd_wstore_download(s, 0, w0b));
  CHECK(!memcmp(w0b, w0, sizeof w0));

  /* a weight replaced by new host memory (a merge writing a fresh array) */
  uint16_t w1b[24];
  for (int i = 0; i < 24; i++) w1b[i] = cd_f32_to_f16(-0.05f * (float)(i % 5));
  cd_wstore_touch(s, 2, w1b);
  uploads = upload_bytes = 0;
  CHECK_OK(cd_graph_forward(g2));
  CHECKF(uploads == 1 && upload_bytes == 24 * 2, "after replacing l1.weight: %ld uploads, %ld bytes", uploads, upload_bytes);
  CHECK(matches(g2, y2, 5, w0, b0, w1b, x));
  uploads = 0;
  CHECK_OK(cd_graph_forward(g1)); /* g1 reads the same copy: nothing more to upload */
  CHECK(uploads == 0 && matches(g1, y1, 2, w0, b0, w1b, x));

  cd_graph_free(g1);
  cd_graph_free(g2);
  /* a graph on another backend cannot take the store's weights */
  cd_graph *g3 = cd_graph_new();
  cd_node *xx;
  mlp(g3, s, 1, &xx);
  CHECK(cd_graph_plan(g3, NULL) == -1 && strstr(cd_last_error(), "another backend"));
  cd_graph_free(g3);
  cd_wstore_free(s);
}

int main(void) {
  RUN(uploads_only_changed_weights);
  return test_summary();
}
