/* nccl.h - the data-parallel gradient all-reduce on GPUs: NCCL, device to
 * device, bootstrapped by MPI (rank 0 makes the ncclUniqueId, MPI_Bcast
 * hands it to the group). Built with `make MPI=1 CUDA=1` where nccl.h
 * exists (CD_WITH_NCCL); every other build has the stubs below, which say
 * "not available", and the trainer then all-reduces through one host
 * bucket (dist.h), which works on any backend.
 */
#ifndef CD_NCCL_H
#define CD_NCCL_H

#include "engine/optim.h"

/* 1 when this build has NCCL and o's graph runs on the CUDA backend (it has
 * a stream), so that cd_nccl_allreduce_grads applies; else 0. */
int cd_nccl_usable(const cd_optim *o);
/* Every trainable gradient of o becomes the sum over the
 * current MPI group of w times each rank's: one ncclAllReduce per parameter
 * inside one ncclGroupStart/End (NCCL fuses them), with w applied by a
 * pre-multiplying reduction (ncclRedOpCreatePreMulSum), on the backend's
 * stream, so the optimizer step that follows on that stream sees the sums.
 * The communicator is made on first use for the current group (collective:
 * every rank of the group must call), and again after cd_dist_split.
 * 0 or -1 + cd_last_error. */
int cd_nccl_allreduce_grads(cd_optim *o, float w);
/* Destroys the communicator (cd_dist_finalize calls it). */
void cd_nccl_close(void);

#endif
