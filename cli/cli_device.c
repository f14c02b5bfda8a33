/* cli_device.c - --device cpu|cuda (cli_device.h). */
#include "cli_device.h"

#include <string.h>

#include "engine/device.h"

int cli_device(const cli_opt *opts, const cli_cmd *cmd, const char *device) {
  const cd_backend *be = NULL;
  if (!device || !strcmp(device, "cpu")) return CLI_GO;
  if (!cd_backend_have_cuda()) /* what the user can fix by rebuilding: a usage error */
    return cli_error(opts, cmd, "--device", "%s: built without CUDA (make CUDA=1)", device);
  if (cd_backend_open(device, &be)) {
    fprintf(stderr, "cdiff %s: %s\n", cmd->name, cd_last_error());
    return 1;
  }
  cd_backend_set_default(be);
  cd_log("device: %s", device);
  return CLI_GO;
}
