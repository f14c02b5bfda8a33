/* cli_device.h - the --device flag of sample, train and merge (and the benches'). */
#ifndef CD_CLI_CLI_DEVICE_H
#define CD_CLI_CLI_DEVICE_H

#include "args.h"

/* the flag's table line, for a command's cli_opt list */
#define CLI_DEVICE_OPT(dest) \
  {"--device", CLI_STR, (dest), "cpu|cuda", "where the model runs (default cpu; cuda needs a build made with make CUDA=1)", NULL, CLI_CHOICES("cpu|cuda")}

/* Makes `device` (NULL: cpu) the backend of every graph the command builds.
 * CLI_GO, or 2 after a usage error (a build without CUDA asked for cuda), or
 * 1 after an error (no usable GPU or driver), the message printed. */
int cli_device(const cli_opt *opts, const cli_cmd *cmd, const char *device);

#endif
