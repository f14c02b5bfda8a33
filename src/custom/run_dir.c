/* run_dir.c - a training run's folder and its atomic checkpoint set (see run_dir.h). */
#include "custom/run_dir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "custom/delta.h"
#include "custom/trainer_run.h"
#include "io/fsutil.h"

/* N of a name "checkpoint-N" (digits only, nothing after), else -1 */
static int ckpt_step(const char *name) {
  size_t L = strlen(CD_RUN_CKPT_PREFIX);
  if (strncmp(name, CD_RUN_CKPT_PREFIX, L) || !name[L]) return -1;
  long v = 0;
  for (const char *p = name + L; *p; p++) {
    if (*p < '0' || *p > '9' || v > 100000000L) return -1;
    v = v * 10 + (*p - '0');
  }
  return (int)v;
}

static int cmp_desc(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x < y) - (x > y);
}

int cd_ckpt_list(const char *dir, int *steps, int cap) {
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? 0 : cd_set_error("cannot read folder %s: %s", dir, strerror(errno));
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    int s = ckpt_step(e->d_name);
    if (s < 0) continue;
    char *p = cd_path_join(dir, e->d_name);
    int isdir = cd_is_dir(p);
    free(p);
    if (!isdir) continue;
    if (n == cap) { /* keep the newest cap */
      qsort(steps, n, sizeof *steps, cmp_desc);
      if (s > steps[n - 1]) steps[n - 1] = s;
      continue;
    }
    steps[n++] = s;
  }
  closedir(d);
  qsort(steps, n, sizeof *steps, cmp_desc);
  return n;
}

int cd_run_dir_holds_run(const char *out, char *what, size_t cap) {
  static const char *const files[] = {CD_RUN_LOG_FILE, CD_RUN_LATEST_FILE, CD_RUN_CHECKPOINT_DIR, CD_DELTA_FILE};
  if (!cd_is_dir(out)) return 0;
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char *p = cd_path_join(out, files[i]);
    int e = cd_file_exists(p);
    free(p);
    if (e) {
      snprintf(what, cap, "%s", files[i]);
      return 1;
    }
  }
  int s;
  if (cd_ckpt_list(out, &s, 1) > 0) {
    snprintf(what, cap, "%s%d", CD_RUN_CKPT_PREFIX, s);
    return 1;
  }
  cd_clear_error();
  return 0;
}

/* names of what a run writes (before ".tmp.PID"): checkpoint folders, the
 * pointer, tensor files, images. Anything else in OUT is not ours to remove. */
static int run_file(const char *name) {
  return !strncmp(name, CD_RUN_CKPT_PREFIX, strlen(CD_RUN_CKPT_PREFIX)) || !strcmp(name, CD_RUN_LATEST_FILE) ||
         cd_ends_with(name, ".safetensors") || cd_ends_with(name, ".png");
}

int cd_run_dir_clean_stale(const char *out) {
  /* OUT, OUT/checkpoint-N, OUT/validation, OUT/class_images/<k> */
  int n = cd_remove_stale_tmp(out, 2, run_file);
  if (n > 0) cd_warn("removed %d unfinished file(s) left in %s by a run that was killed", n, out);
  return n < 0 ? -1 : 0;
}

int cd_run_dir_clear(const char *out) {
  DIR *d = opendir(out);
  if (!d) return errno == ENOENT ? 0 : cd_set_error("cannot read folder %s: %s", out, strerror(errno));
  int rc = 0;
  struct dirent *e;
  while (!rc && (e = readdir(d))) {
    const char *s = e->d_name;
    int mine = !strcmp(s, CD_RUN_LOG_FILE) || !strcmp(s, CD_RUN_LATEST_FILE) || !strcmp(s, CD_RUN_CHECKPOINT_DIR) ||
               !strcmp(s, "validation") || !strncmp(s, CD_RUN_CKPT_PREFIX, strlen(CD_RUN_CKPT_PREFIX));
    if (!mine) continue;
    char *p = cd_path_join(out, s);
    rc = cd_rmtree(p);
    free(p);
  }
  closedir(d);
  if (rc) return -1;
  return rc ? -1 : cd_delta_remove(out);
}

int cd_ckpt_begin(const char *out, int step, char *tmp, size_t cap) {
  int k = snprintf(tmp, cap, "%s/%s%d.tmp.%ld", out, CD_RUN_CKPT_PREFIX, step, (long)getpid());
  if (k < 0 || (size_t)k >= cap) return cd_set_error("%s: path too long", out);
  if (cd_rmtree(tmp)) return -1;
  return cd_mkdir_p(tmp);
}

void cd_ckpt_abort(const char *tmp) {
  char keep[1024];
  snprintf(keep, sizeof keep, "%s", cd_last_error()); /* the error that made us give up stays the one reported */
  cd_rmtree(tmp);
  cd_set_error("%s", keep);
}

static int prune(const char *out, int keep, int newest) {
  int steps[4096];
  int n = cd_ckpt_list(out, steps, 4096);
  if (n < 0) return -1;
  for (int i = keep; i < n; i++) {
    if (steps[i] == newest) continue;
    /* renamed first: a prune cut short leaves a "*.tmp.PID" leftover, never a
     * half-removed checkpoint-N that looks like a checkpoint */
    char name[64], gone[96];
    snprintf(name, sizeof name, "%s%d", CD_RUN_CKPT_PREFIX, steps[i]);
    snprintf(gone, sizeof gone, "%s.old.tmp.%ld", name, (long)getpid());
    char *p = cd_path_join(out, name), *q = cd_path_join(out, gone);
    int rc = rename(p, q) != 0 ? cd_set_error("cannot remove old checkpoint %s: %s", p, strerror(errno)) : cd_rmtree(q);
    free(p);
    free(q);
    if (rc) return -1;
  }
  return 0;
}

int cd_ckpt_commit(const char *out, int step, const char *tmp, int keep) {
  char final[4096], aside[4200], ptr[64];
  snprintf(final, sizeof final, "%s/%s%d", out, CD_RUN_CKPT_PREFIX, step);
  snprintf(aside, sizeof aside, "%s.old.tmp.%ld", final, (long)getpid());
  if (cd_fsync_dir(tmp)) {
    cd_ckpt_abort(tmp);
    return -1;
  }
  /* a folder of this step from an earlier pass (a resume from an older
   * checkpoint) is set aside, not merged into */
  int had = cd_file_exists(final);
  if (had && rename(final, aside) != 0) {
    cd_set_error("cannot move %s aside: %s", final, strerror(errno));
    cd_ckpt_abort(tmp);
    return -1;
  }
  if (rename(tmp, final) != 0) {
    cd_set_error("cannot rename %s to %s: %s", tmp, final, strerror(errno));
    cd_ckpt_abort(tmp);
    if (had) rename(aside, final);
    return -1;
  }
  if (had && cd_rmtree(aside)) return -1;
  if (cd_fsync_dir(out)) return -1;
  /* only now does the pointer move, and only after that are old ones pruned */
  snprintf(ptr, sizeof ptr, "%s%d\n", CD_RUN_CKPT_PREFIX, step);
  char *lp = cd_path_join(out, CD_RUN_LATEST_FILE);
  int rc = cd_write_file_atomic(lp, ptr, strlen(ptr));
  free(lp);
  if (rc) return -1;
  return keep > 0 ? prune(out, keep, step) : 0;
}
