/* resample.c - PAD2D and UPSAMPLE2X forward and backward on the CPU.
 *
 * Both act on the last two dims (H, W) of an NCHW tensor; the leading dims
 * are flattened into independent planes.
 *   PAD2D:      x [.., H, W] -> y [.., top+H+bottom, left+W+right], zeros around;
 *               ip = left, right, top, bottom. Backward crops dy.
 *   UPSAMPLE2X: x [.., H, W] -> y [.., Ho, Wo] (Ho = 2H or 2H-1, likewise Wo),
 *               nearest neighbour. Backward sums each (cropped) 2x2 block of dy.
 */
#include <string.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* input H, W: the last two dims of the source */
static void plane_hw(const cd_node *x, int64_t *H, int64_t *W) {
  *H = x->ndim >= 2 ? x->ne[x->ndim - 2] : 1;
  *W = x->ne[x->ndim - 1];
}

/* ---- PAD2D ---- */

void cd_cpu_pad2d_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *xn = n->src[0];
  int64_t H, W;
  plane_hw(xn, &H, &W);
  const int64_t l = n->ip[0], t = n->ip[2];
  const int64_t Ho = n->ne[n->ndim - 2], Wo = n->ne[n->ndim - 1];
  if (n->n == 0) return;
  const int64_t planes = n->n / (Ho * Wo);
  const float *x = xn->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > 32768)
  for (int64_t pl = 0; pl < planes; pl++) {
    float *yp = y + pl * Ho * Wo;
    const float *xp = x + pl * H * W;
    for (int64_t oy = 0; oy < Ho; oy++) {
      float *row = yp + oy * Wo;
      int64_t iy = oy - t;
      if (iy < 0 || iy >= H) {
        memset(row, 0, (size_t)Wo * sizeof(float));
        continue;
      }
      for (int64_t ox = 0; ox < l; ox++) row[ox] = 0;
      memcpy(row + l, xp + iy * W, (size_t)W * sizeof(float));
      for (int64_t ox = l + W; ox < Wo; ox++) row[ox] = 0;
    }
  }
}

void cd_cpu_pad2d_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *xn = n->src[0];
  if (!xn->grad || n->n == 0) return;
  int64_t H, W;
  plane_hw(xn, &H, &W);
  const int64_t l = n->ip[0], t = n->ip[2];
  const int64_t Ho = n->ne[n->ndim - 2], Wo = n->ne[n->ndim - 1];
  const int64_t planes = n->n / (Ho * Wo);
  const float *dy = n->grad;
  float *dx = xn->grad;
#pragma omp parallel for schedule(static) if (n->n > 32768)
  for (int64_t pl = 0; pl < planes; pl++)
    for (int64_t iy = 0; iy < H; iy++) {
      const float *src = dy + pl * Ho * Wo + (iy + t) * Wo + l;
      float *dst = dx + pl * H * W + iy * W;
      for (int64_t ix = 0; ix < W; ix++) dst[ix] += src[ix];
    }
}

/* ---- UPSAMPLE2X ----
 * Output [.., Ho, Wo] with Ho in {2H-1, 2H}, Wo in {2W-1, 2W}: y[oy][ox] =
 * x[oy/2][ox/2]. For Ho = 2H-1 this is exactly PyTorch's nearest
 * interpolate(size=Ho) (floor(oy * H/Ho) == oy/2 for oy < Ho), what
 * diffusers' upsampler does when it is given the skip connection's size. */

void cd_cpu_upsample2x_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  (void)ctx;
  const cd_node *xn = n->src[0];
  int64_t H, W;
  plane_hw(xn, &H, &W);
  if (n->n == 0) return;
  const int64_t Ho = n->ne[n->ndim - 2], Wo = n->ne[n->ndim - 1];
  const int64_t planes = xn->n / (H * W);
  const float *x = xn->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > 32768)
  for (int64_t r = 0; r < planes * H; r++) { /* r: one input row -> output rows 2iy, 2iy+1 (< Ho) */
    const int64_t pl = r / H, iy = r % H;
    const float *src = x + r * W;
    float *dst = y + (pl * Ho + 2 * iy) * Wo;
    for (int64_t ox = 0; ox < Wo; ox++) dst[ox] = src[ox >> 1];
    if (2 * iy + 1 < Ho) memcpy(dst + Wo, dst, (size_t)Wo * sizeof(float));
  }
}

void cd_cpu_upsample2x_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  (void)ctx;
  cd_node *xn = n->src[0];
  if (!xn->grad || n->n == 0) return;
  int64_t H, W;
  plane_hw(xn, &H, &W);
  const int64_t Ho = n->ne[n->ndim - 2], Wo = n->ne[n->ndim - 1];
  const int64_t planes = xn->n / (H * W);
  const float *dy = n->grad;
  float *dx = xn->grad;
#pragma omp parallel for schedule(static) if (n->n > 32768)
  for (int64_t r = 0; r < planes * H; r++) {
    const int64_t pl = r / H, iy = r % H;
    const float *a = dy + (pl * Ho + 2 * iy) * Wo;
    const int two_rows = 2 * iy + 1 < Ho;
    float *dst = dx + r * W;
    for (int64_t ix = 0; ix < W; ix++) {
      int64_t ox = 2 * ix;
      float s = a[ox] + (ox + 1 < Wo ? a[ox + 1] : 0.0f);
      if (two_rows) s += a[Wo + ox] + (ox + 1 < Wo ? a[Wo + ox + 1] : 0.0f);
      dst[ix] += s;
    }
  }
}
