/* cuda.h - the CUDA backend's C interface (src/engine/cuda/, built with
 * make CUDA=1). Code outside src/engine reaches it through device.h. */
#ifndef CD_CUDA_H
#define CD_CUDA_H

#include "engine/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The backend on CUDA device `device` (one per process: the first call picks
 * the device). NULL + cd_last_error when there is no driver, no such device,
 * or a library handle could not be made. */
const cd_backend *cd_backend_cuda_open(int device);

/* The kernel table without opening a device (tests check that it is
 * complete on machines without a GPU; never run its kernels). */
const cd_backend *cd_backend_cuda_table(void);

/* Matrix products' arithmetic: "fp32" (the default: exact float32 FMA),
 * "tf32" (tensor cores on float32 inputs rounded to 10-bit mantissas) or
 * "bf16" (inputs rounded to bfloat16, float32 accumulation). Read from
 * CDIFF_CUDA_MATH when the backend opens; 0, or -1 on an unknown name. */
int cd_backend_cuda_set_math(const char *mode);
const char *cd_backend_cuda_math(void);

/* A one-line description of the device (name, memory, compute capability) */
const char *cd_backend_cuda_describe(void);
/* device memory: peak bytes allocated through the backend since open or reset */
size_t cd_backend_cuda_peak_bytes(void);
void cd_backend_cuda_reset_peak(void);

#ifdef __cplusplus
}
#endif

#endif
