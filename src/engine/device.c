/* device.c - backends by name (device.h). The CUDA backend's entry point is
 * a weak reference: it exists only in a build with CUDA=1, which adds the
 * objects of src/engine/cuda/ to the library, so this file is the same in
 * both builds. */
#include "engine/device.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* defined in src/engine/cuda/backend.cu (CUDA=1 builds only) */
__attribute__((weak)) const cd_backend *cd_backend_cuda_open(int device);

int cd_backend_have_cuda(void) { return cd_backend_cuda_open != NULL; }

int cd_backend_open(const char *name, const cd_backend **out) {
  *out = NULL;
  if (!name || !strcmp(name, "cpu")) {
    *out = cd_backend_cpu();
    return 0;
  }
  if (strncmp(name, "cuda", 4) || (name[4] && name[4] != ':'))
    return cd_set_error("device '%s': expected cpu, cuda or cuda:N", name);
  int dev = 0;
  if (name[4] == ':') {
    char *end;
    long v = strtol(name + 5, &end, 10);
    if (end == name + 5 || *end || v < 0 || v > 255) return cd_set_error("device '%s': N in cuda:N must be a device number", name);
    dev = (int)v;
  }
  if (!cd_backend_cuda_open) return cd_set_error("device %s: built without CUDA (make CUDA=1)", name);
  const cd_backend *be = cd_backend_cuda_open(dev);
  if (!be) return cd_prefix_error("device %s", name);
  *out = be;
  return 0;
}
