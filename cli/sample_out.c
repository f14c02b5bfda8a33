/* sample_out.c - output names of cdiff sample (see sample_out.h). */
#include "sample_out.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/common.h"
#include "io/fsutil.h"
#include "io/writable.h"

static int has_image_ext(const char *path) {
  const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
  if (!dot || (slash && dot < slash)) return 0;
  return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg");
}

void sample_out_slug(const char *prompt, char *slug, size_t cap) {
  size_t k = 0;
  int dash = 0;
  for (const unsigned char *p = (const unsigned char *)prompt; *p && k + 1 < cap; p++) {
    if (isalnum(*p) && *p < 128) {
      if (dash && k) slug[k++] = '-';
      if (k + 1 < cap) slug[k++] = (char)tolower(*p);
      dash = 0;
    } else {
      dash = 1;
    }
  }
  slug[k] = 0;
}

/* The highest NNNNN of the "NNNNN-..." names in dir, or -1. */
static long highest_counter(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  long hi = -1;
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *s = e->d_name;
    if (!isdigit((unsigned char)s[0])) continue;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!errno && *end == '-' && v > hi) hi = v;
  }
  closedir(d);
  return hi;
}

/* FILE.png, or FILE_i.png for one of several images */
static void file_path(const char *out, int i, int n, char *buf, size_t cap) {
  if (n == 1) {
    snprintf(buf, cap, "%s", out);
    return;
  }
  const char *slash = strrchr(out, '/'), *dot = strrchr(out, '.');
  if (dot && slash && dot < slash) dot = NULL;
  int stem = dot ? (int)(dot - out) : (int)strlen(out);
  snprintf(buf, cap, "%.*s_%d%s", stem, out, i, dot ? dot : ".png");
}

int sample_out_check(const sample_out *so, int n) {
  if (so->is_dir || so->overwrite) return 0;
  for (int i = 0; i < n; i++) {
    char p[4096];
    file_path(so->out, i, n, p, sizeof p);
    if (cd_file_exists(p)) return cd_set_error("--out %s: %s already exists: pass --overwrite to replace it, or give a folder (DIR/) to add numbered images", so->out, p);
  }
  return 0;
}

int sample_out_init(sample_out *so, const char *out, int n, int overwrite, const char *prompt) {
  memset(so, 0, sizeof *so);
  so->out = out;
  so->overwrite = overwrite;
  size_t L = strlen(out);
  if (!L) return cd_set_error("--out is empty");
  so->is_dir = cd_is_dir(out) || out[L - 1] == '/' || (n > 1 && !has_image_ext(out));
  sample_out_slug(prompt, so->slug, 49);
  if (so->is_dir) { /* made now, and probed */
    if (cd_check_writable_dir("--out", out)) return -1;
    /* an image of a run killed while writing it (Ctrl-C) is left as NAME.png.tmp.PID */
    if (cd_remove_stale_tmp(out, 0, has_image_ext) < 0) return -1;
    so->next = highest_counter(out) + 1;
    return 0;
  }
  /* a file: its folder must exist and accept files, and the file must be new */
  if (cd_check_writable_file("--out", out)) return cd_prefix_error("(end --out with '/' to write into a new folder)");
  char dir[4096];
  cd_parent_dir(out, dir, sizeof dir);
  if (cd_remove_stale_tmp(dir, 0, has_image_ext) < 0) return -1;
  return sample_out_check(so, n);
}

int sample_out_path(sample_out *so, int i, int n, uint64_t seed, char *buf, size_t cap) {
  if (!so->is_dir) {
    file_path(so->out, i, n, buf, cap);
    return 0;
  }
  for (;;) { /* another writer may have taken the number meanwhile: never overwrite */
    char name[128];
    snprintf(name, sizeof name, "%05ld-%llu%s%s.png", so->next++, (unsigned long long)seed, so->slug[0] ? "-" : "", so->slug);
    char *p = cd_path_join(so->out, name);
    int taken = cd_file_exists(p);
    snprintf(buf, cap, "%s", p);
    free(p);
    if (!taken) return 0;
  }
}
