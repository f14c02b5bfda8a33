/* writable.c - output-location probes (see writable.h). */
#include "io/writable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "io/fsutil.h"

static int probe(const char *flag, const char *dir) {
  char p[4200];
  snprintf(p, sizeof p, "%s/.cdiff-write-test.%ld", dir, (long)getpid());
  int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return cd_set_error("%s %s: cannot create files there: %s", flag, dir, strerror(errno));
  close(fd);
  unlink(p);
  return 0;
}

int cd_check_writable_dir(const char *flag, const char *dir) {
  if (!dir || !*dir) return cd_set_error("%s: empty path", flag);
  if (cd_file_exists(dir) && !cd_is_dir(dir)) return cd_set_error("%s %s: exists and is not a folder", flag, dir);
  if (cd_mkdir_p(dir)) return cd_prefix_error("%s", flag);
  return probe(flag, dir);
}

int cd_check_writable_file(const char *flag, const char *path) {
  if (!path || !*path) return cd_set_error("%s: empty path", flag);
  if (cd_is_dir(path)) return cd_set_error("%s %s: is a folder, expected a file name", flag, path);
  char dir[4096];
  cd_parent_dir(path, dir, sizeof dir);
  if (!cd_is_dir(dir)) return cd_set_error("%s %s: folder %s does not exist", flag, path, dir);
  return probe(flag, dir);
}
