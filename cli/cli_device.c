/* cli_device.c - --device cpu|cuda (cli_device.h). */
#include "cli_device.h"

#include <stdio.h>
#include <string.h>

#include "dist/dist.h"
#include "engine/device.h"

int cli_device(const cli_opt *opts, const cli_cmd *cmd, const char *device) {
  const cd_backend *be = NULL;
  if (!device || !strcmp(device, "cpu")) return CLI_GO;
  if (!cd_backend_have_cuda()) /* what the user can fix by rebuilding: a usage error */
    return cli_error(opts, cmd, "--device", "%s: built without CUDA (make CUDA=1)", device);
  /* under mpirun/srun, plain "cuda" means one GPU per rank of a node: the
   * rank's local index (cuda:N still picks a device explicitly) */
  char per_rank[32];
  if (!strcmp(device, "cuda") && cd_dist_local_size() > 1) {
    snprintf(per_rank, sizeof per_rank, "cuda:%d", cd_dist_local_rank());
    device = per_rank;
  }
  if (cd_backend_open(device, &be)) {
    fprintf(stderr, "cdiff %s: %s\n", cmd->name, cd_last_error());
    return 1;
  }
  cd_backend_set_default(be);
  cd_log("device: %s", device);
  return CLI_GO;
}
