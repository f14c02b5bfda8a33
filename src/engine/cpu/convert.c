/* convert.c - storage types on the CPU: CAST (any type -> f32) and the
 * blockwise conversion of 16-bit weights that LINEAR, CONV2D and EMBEDDING
 * use. The CPU keeps f32 activations and f32 accumulation; a 16-bit weight is
 * widened a panel of rows at a time into scratch right before sgemm reads it,
 * so the resident copy stays 16-bit. Widening f16/bf16 to f32 is exact. */
#include <string.h>
#include <stdint.h>
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* Bytes of f32 per converted panel. Each panel is one sgemm that packs the
 * other operand again, so panels of a few rows cost more than the widening
 * itself: measured on SD 1.5 shapes (2 threads), 2 MiB panels made a 3x3 conv
 * 1.5-2.7x slower than with f32 weights, while widening the whole weight once
 * per call costs a few percent. 64 MiB holds every SD 1.x/2.x weight (the
 * largest, 1280x1280x3x3, is 59 MB in f32) as one panel: the resident copy
 * stays 16-bit, the f32 one lives only during its kernel. Not static: tests
 * shrink it to exercise panel edges. */
size_t cd_cpu_panel_bytes = (size_t)64 << 20;

/* Widening is memory-bound: per value 2 bytes read and 4 written, plus the
 * 4 that a normal store first reads into the cache. A destination far larger
 * than what stays cached until sgemm reads it is written with non-temporal
 * stores instead, which skip that read: measured on this project's shared
 * 2-core machine (load ~17), widening a 1280x1280x3x3 weight and reading it
 * once took 95-102 ms this way against 123-134 ms with normal stores; at
 * 3.7 M values (14.7 MB) the two were within the noise, so only panels from
 * CD_STREAM_BYTES up stream. The values are the same either way. */
#define CD_STREAM_BYTES ((int64_t)24 << 20)

static void f16_to_f32(const uint16_t *s, float *d, int64_t n, int stream) {
  int64_t i = 0;
#ifdef __F16C__
  if (stream && !((uintptr_t)d & 31)) {
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    _mm_sfence(); /* non-temporal stores are weakly ordered: visible before sgemm reads them */
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
#else
  (void)stream;
#endif
  for (; i < n; i++) d[i] = cd_f16_to_f32(s[i]);
}

static void bf16_to_f32(const uint16_t *s, float *d, int64_t n, int stream) {
  int64_t i = 0;
#ifdef __AVX2__
  if (stream && !((uintptr_t)d & 31)) { /* bf16 is the top half of an f32: widen by a 16-bit shift */
    for (; i + 8 <= n; i += 8) {
      __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i))), 16);
      _mm256_stream_ps(d + i, _mm256_castsi256_ps(w));
    }
    _mm_sfence();
  }
#else
  (void)stream;
#endif
  for (; i < n; i++) {
    uint32_t b = (uint32_t)s[i] << 16;
    memcpy(d + i, &b, 4);
  }
}

void cd_cpu_to_f32(const void *src, cd_type t, int64_t off, int64_t n, float *dst) {
  const int64_t CH = 16384;
  const int stream = n * (int64_t)sizeof(float) >= CD_STREAM_BYTES;
#pragma omp parallel for schedule(static) if (n > 4 * CH)
  for (int64_t c = 0; c < n; c += CH) {
    int64_t k = CD_MIN(CH, n - c), at = off + c;
    switch (t) {
    case CD_TYPE_F32: memcpy(dst + c, (const float *)src + at, (size_t)k * sizeof(float)); break;
    case CD_TYPE_F16: f16_to_f32((const uint16_t *)src + at, dst + c, k, stream); break;
    case CD_TYPE_BF16: bf16_to_f32((const uint16_t *)src + at, dst + c, k, stream); break;
    case CD_TYPE_I32:
      for (int64_t i = 0; i < k; i++) dst[c + i] = (float)((const int32_t *)src)[at + i];
      break;
    }
  }
}

static int64_t panel_rows(int64_t rowlen) {
  return CD_MAX(1, (int64_t)(cd_cpu_panel_bytes / sizeof(float)) / CD_MAX(1, rowlen));
}

static int64_t panel_per(const cd_node *w, int64_t rows, int64_t rowlen) {
  return w->type == CD_TYPE_F32 ? CD_MAX(1, rows) : CD_MIN(CD_MAX(1, rows), panel_rows(rowlen));
}

size_t cd_cpu_panels_scratch(const cd_node *w, int64_t rows, int64_t rowlen) {
  if (w->type == CD_TYPE_F32) return 0;
  return cd_cpu_align((size_t)panel_per(w, rows, rowlen) * CD_MAX(1, rowlen) * sizeof(float));
}

void cd_cpu_panels_init(cd_cpu_panels *p, const cd_node *w, int64_t rows, int64_t rowlen, void *sc, const cd_node *n) {
  *p = (cd_cpu_panels){.w = w, .rows = rows, .rowlen = rowlen, .r0 = -1};
  p->per = panel_per(w, rows, rowlen);
  if (w->type != CD_TYPE_F32) p->buf = cd_cpu_take(sc, (size_t)p->per * CD_MAX(1, rowlen) * sizeof(float), n);
}

/* the same buffer size unaligned, and an init over a caller's buffer */
size_t cd_cpu_panels_bytes(const cd_node *w, int64_t rows, int64_t rowlen) {
  return w->type == CD_TYPE_F32 ? 0 : (size_t)panel_per(w, rows, rowlen) * CD_MAX(1, rowlen) * sizeof(float);
}
void cd_cpu_panels_init_buf(cd_cpu_panels *p, const cd_node *w, int64_t rows, int64_t rowlen, float *buf) {
  *p = (cd_cpu_panels){.w = w, .rows = rows, .rowlen = rowlen, .r0 = -1, .buf = buf};
  p->per = panel_per(w, rows, rowlen);
}

const float *cd_cpu_panels_get(cd_cpu_panels *p, int64_t r0, int64_t nr) {
  if (p->w->type == CD_TYPE_F32) return p->w->data + r0 * p->rowlen;
  if (r0 != p->r0 || nr != p->nr) {
    cd_cpu_to_f32(p->w->data, p->w->type, r0 * p->rowlen, nr * p->rowlen, p->buf);
    p->r0 = r0;
    p->nr = nr;
  }
  return p->buf;
}

void cd_cpu_cast_fwd(const cd_kernel_ctx *ctx, cd_node *n) { cd_cpu_to_f32(n->src[0]->data, n->src[0]->type, 0, n->n, n->data); }
