/* nccl.c - gradient all-reduce with NCCL (see nccl.h). */
#include "dist/nccl.h"

#include "core/common.h"

#if defined(CD_WITH_MPI) && defined(CD_WITH_NCCL)
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <string.h>

#include "dist/dist.h"

static ncclComm_t comm; /* of the current MPI group: dist_mpi.c closes it when the group changes */

static int nccl_fail(ncclResult_t r, const char *what) { return cd_set_error("NCCL %s failed: %s", what, ncclGetErrorString(r)); }

static int ensure_comm(void) {
  if (comm) return 0;
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  ncclResult_t r = ncclSuccess;
  if (cd_dist_rank() == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess) nccl_fail(r, "ncclGetUniqueId");
  /* rank 0's failure reaches every rank before anyone waits in ncclCommInitRank */
  if (cd_dist_agree(r == ncclSuccess) || cd_dist_bcast(&id, sizeof id, 0)) return -1;
  if ((r = ncclCommInitRank(&comm, cd_dist_size(), id, cd_dist_rank())) != ncclSuccess) {
    comm = NULL;
    return nccl_fail(r, "ncclCommInitRank");
  }
  return 0;
}

int cd_nccl_usable(const cd_optim *o) { return o && cd_optim_stream(o) && !strncmp(cd_optim_backend_name(o), "cuda", 4); }

int cd_nccl_allreduce_grads(cd_optim *o, float w) {
  if (!cd_nccl_usable(o)) return cd_set_error("NCCL all-reduce: the training graph is not on the CUDA backend");
  if (cd_dist_size() == 1) return 0;
  if (ensure_comm()) return -1;
  cudaStream_t stream = (cudaStream_t)cd_optim_stream(o);
  ncclRedOp_t op;
  ncclResult_t r = ncclRedOpCreatePreMulSum(&op, &w, ncclFloat32, ncclScalarHostImmediate, comm);
  if (r != ncclSuccess) return nccl_fail(r, "ncclRedOpCreatePreMulSum");
  if ((r = ncclGroupStart()) != ncclSuccess) return nccl_fail(r, "ncclGroupStart");
  ncclResult_t first = ncclSuccess;
  for (int i = 0; i < cd_optim_count(o); i++) {
    const cd_node *p = cd_optim_param(o, i);
    float *g = cd_optim_grad_buffer(o, i);
    if (!g) {
      ncclGroupEnd();
      ncclRedOpDestroy(op, comm);
      return cd_set_error("NCCL all-reduce: parameter %s has no gradient buffer", p->name);
    }
    r = ncclAllReduce(g, g, (size_t)p->n, ncclFloat32, op, comm, stream);
    if (r != ncclSuccess && first == ncclSuccess) first = r;
  }
  r = ncclGroupEnd();
  ncclRedOpDestroy(op, comm);
  if (first != ncclSuccess) return nccl_fail(first, "ncclAllReduce");
  return r == ncclSuccess ? 0 : nccl_fail(r, "ncclGroupEnd");
}

void cd_nccl_close(void) {
  if (comm) ncclCommDestroy(comm);
  comm = NULL;
}
#else
int cd_nccl_usable(const cd_optim *o) { return 0; }
int cd_nccl_allreduce_grads(cd_optim *o, float w) {
  return cd_set_error("NCCL all-reduce: this build has no NCCL (make MPI=1 CUDA=1 with NCCL installed)");
}
void cd_nccl_close(void) {}
#endif
