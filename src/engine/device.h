/* device.h - choosing a compute backend by name (the CLI's --device).
 *
 *   const cd_backend *be;
 *   if (cd_backend_open("cuda", &be)) die(cd_last_error());
 *   cd_backend_set_default(be);   // cd_graph_new() now builds graphs on it
 *
 * Names: "cpu"; "cuda" (device 0) or "cuda:N". A build without CUDA answers
 * "cuda" with "built without CUDA (make CUDA=1)"; a CUDA build on a machine
 * without a usable GPU or driver answers with what the CUDA runtime said.
 * Neither ever crashes. */
#ifndef CD_DEVICE_H
#define CD_DEVICE_H

#include "engine/backend.h"

int cd_backend_open(const char *name, const cd_backend **out); /* 0, or -1 + cd_last_error */
int cd_backend_have_cuda(void); /* 1 when this build has the CUDA backend (make CUDA=1) */

#endif
