/* test_fault_injection.c - a full disk (or a kill) at every write of a
 * checkpoint. libfailwrite.so (tests/failwrite.c, LD_PRELOAD) makes the Nth
 * write event on a checkpoint file (fwrite, write, fflush, fclose, fsync,
 * rename of OUT/checkpoint-* and OUT/latest) and every later one fail with
 * ENOSPC, or kills the process there. For every N: a run resumed from
 * checkpoint-1 trains step 2 and fails while writing checkpoint-2; the error
 * names the file and the errno text; every checkpoint-K folder left is
 * complete and `latest` names one; then the run resumed without the fault
 * finishes with a delta bit-identical to the uninterrupted run's, and no
 * temporary file is left. The same for the files of a delta (cdiff merge
 * --overwrite over an earlier delta, failing at every write into its folder):
 * they appear as a set (custom/delta.c).
 *
 * The binaries are those of this test's build (BUILD/cdiff,
 * BUILD/tests/libfailwrite.so), so each pass of `make check` checks its own
 * build; under ASan every 5th index is checked (the sanitized runs are slow)
 * and ASan is told that the preloaded library comes first. */
#include <errno.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "custom/delta.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "io/tensor_file.h"
#include "test.h"

static char root[512], model[1024], bin[PATH_MAX], lib[PATH_MAX];

/* runs `cdiff train` into root/out with env prefix; 0..255 exit status, -1 not run */
static int train(const char *env, const char *out, int steps, const char *extra, char *log, size_t cap) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd,
           "%s CDIFF_QUIET=1 CDIFF_THREADS=1 %s train --model '%s' --images '%s/images' --prompt 'photo of a <new1> cat' --no-prior "
           "--resolution 64 --lr 1e-3 --seed 9 --checkpoint-every 1 --checkpoints-total-limit 1 --steps %d --out '%s/%s' %s 2>&1",
           env, bin, model, root, steps, root, out, extra);
  return test_run_cmd(cmd, log, cap);
}

static int sh(const char *fmt, const char *a, const char *b) {
  char cmd[4096], out[4096];
  snprintf(cmd, sizeof cmd, fmt, a, b);
  return test_run_cmd(cmd, out, sizeof out);
}

/* every checkpoint-K folder of dir is complete (its state opens and holds
 * step K) and latest names one of them; else a message in why */
static int checkpoints_sound(const char *dir, char *why, size_t cap) {
  char cmd[1200], names[4096];
  snprintf(cmd, sizeof cmd, "cd '%s' && ls -d checkpoint-* 2>/dev/null | grep -v '\\.tmp\\.' | tr '\\n' ' '", dir);
  test_run_cmd(cmd, names, sizeof names);
  int n = 0;
  for (char *s = strtok(names, " "); s; s = strtok(NULL, " ")) {
    char p[1500];
    snprintf(p, sizeof p, "%s/%s/state.safetensors", dir, s);
    cd_tensor_file *f;
    if (cd_safetensors_open(p, &f)) return snprintf(why, cap, "%s is not complete: %s", s, cd_last_error()), 0;
    const char *st = cd_tf_meta(f, "step");
    int ok = st && !strcmp(st, s + strlen("checkpoint-"));
    cd_tensor_file_close(f);
    if (!ok) return snprintf(why, cap, "%s holds step %s", s, st ? st : "(none)"), 0;
    n++;
  }
  char lp[1200], *latest = NULL;
  size_t len;
  snprintf(lp, sizeof lp, "%s/latest", dir);
  if (cd_read_file(lp, &latest, &len)) return snprintf(why, cap, "no latest pointer"), 0;
  latest[strcspn(latest, "\n")] = 0;
  char p[1500];
  snprintf(p, sizeof p, "%s/%s/state.safetensors", dir, latest);
  int ok = cd_file_exists(p);
  if (!ok) snprintf(why, cap, "latest names %s, which is not there (%d checkpoints)", latest, n);
  free(latest);
  return ok;
}

static int has_tmp_leftover(const char *dir) {
  char cmd[1200], out[4096];
  snprintf(cmd, sizeof cmd, "find '%s' -name '*.tmp.*'", dir);
  return test_run_cmd(cmd, out, sizeof out) != 0 || out[0] != 0;
}

static const char *const delta_files[] = {CD_DELTA_FILE, CD_DIFFUSERS_DELTA_FILE, "<new1>.safetensors"};

/* one fault at event n (kill: a SIGKILL there) in root/work<slot>; 0 ok, -1 with test_msg */
static int one_fault(long n, int kill_mode, const char *pre, int slot) {
  char work[600], name[32], log[16384], env[2048], why[1024];
  snprintf(name, sizeof name, "work%d", slot);
  snprintf(work, sizeof work, "%s/%s", root, name);
  if (sh("rm -rf '%s'%s", work, "") || sh("cp -a '%s/base' '%s'", root, work))
    return snprintf(test_msg, sizeof test_msg, "cannot copy the base run"), -1;
  snprintf(env, sizeof env, "%s LD_PRELOAD='%s' FAILWRITE_PATHS='checkpoint-:latest' FAILWRITE_AT=%ld FAILWRITE_MODE=%s", pre, lib, n,
           kill_mode ? "kill" : "enospc");
  int rc = train(env, name, 2, "--resume latest", log, sizeof log);
  if (kill_mode ? rc != 137 && rc != -1 : rc != 1) /* -1: the shell exec'd cdiff, which died of the signal */
    return snprintf(test_msg, sizeof test_msg, "event %ld (%s): exit %d:\n%.2000s", n, kill_mode ? "kill" : "ENOSPC", rc, log), -1;
  if (!kill_mode && (!strstr(log, "No space left on device") || !strstr(log, work)))
    return snprintf(test_msg, sizeof test_msg, "event %ld: the error does not name the file and the errno text:\n%.2000s", n, log), -1;
  if (!checkpoints_sound(work, why, sizeof why))
    return snprintf(test_msg, sizeof test_msg, "event %ld (%s): after the failure %s", n, kill_mode ? "kill" : "ENOSPC", why), -1;
  rc = train("", name, 2, "--resume latest", log, sizeof log);
  if (rc != 0) return snprintf(test_msg, sizeof test_msg, "event %ld: the resume failed, exit %d:\n%.2000s", n, rc, log), -1;
  for (size_t i = 0; i < sizeof delta_files / sizeof delta_files[0]; i++) {
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/%s", work, delta_files[i]);
    snprintf(b, sizeof b, "%s/ref/%s", root, delta_files[i]);
    if (!test_same_file(a, b))
      return snprintf(test_msg, sizeof test_msg, "event %ld (%s): %s differs from the uninterrupted run's", n, kill_mode ? "kill" : "ENOSPC",
                      delta_files[i]), -1;
  }
  if (has_tmp_leftover(work)) return snprintf(test_msg, sizeof test_msg, "event %ld: temporary files remain after the resume", n), -1;
  return 0;
}

/* Checks events first, first+stride, ... (< 0 stride: kill mode) in nw
 * worker processes (the cases are independent); 0, or -1 with test_msg. */
static int all_faults(long events, long stride, int kill_mode, const char *pre, int nw) {
  pid_t pid[16];
  for (int w = 0; w < nw; w++) {
    pid[w] = fork();
    if (pid[w] < 0) return snprintf(test_msg, sizeof test_msg, "fork failed"), -1;
    if (pid[w] == 0) {
      for (long e = 1 + w * stride; e <= events; e += nw * stride)
        if (one_fault(e, kill_mode, pre, w)) {
          char f[700];
          snprintf(f, sizeof f, "%s/failed%d", root, w);
          cd_write_file_atomic(f, test_msg, strlen(test_msg));
          _exit(1);
        }
      _exit(0);
    }
  }
  int bad = -1;
  for (int w = 0; w < nw; w++) {
    int st;
    if (waitpid(pid[w], &st, 0) != pid[w] || !WIFEXITED(st) || WEXITSTATUS(st)) bad = bad < 0 ? w : bad;
  }
  if (bad < 0) return 0;
  char f[700], *msg = NULL;
  size_t n;
  snprintf(f, sizeof f, "%s/failed%d", root, bad);
  if (cd_read_file(f, &msg, &n)) snprintf(test_msg, sizeof test_msg, "worker %d died", bad);
  else snprintf(test_msg, sizeof test_msg, "%s", msg);
  free(msg);
  return -1;
}

/* ASan reports the preloaded library as out of order unless told */
static const char *const pre = TEST_SANITIZED ? "ASAN_OPTIONS=verify_asan_link_order=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" : "";

/* once: the tool, the preload library, root with two training images, the
 * run folders ref (2 steps) and base (1 step); 0 ready, 1 skip, -1 fail
 * (test_msg says why for both) */
static int fixture(void) {
  static int state = 2; /* not made yet */
  if (state != 2) return state;
  state = -1;
  int g = test_golden_need(model, sizeof model, "tiny-sd1");
  if (g) return state = g;
  snprintf(lib, sizeof lib, "%s", test_build_path("tests/libfailwrite.so"));
  snprintf(bin, sizeof bin, "%s", test_cdiff_bin());
  if (access(bin, X_OK)) return snprintf(test_msg, sizeof test_msg, "%s not built", bin), -1;
  if (access(lib, R_OK)) return snprintf(test_msg, sizeof test_msg, "%s not built (make builds it from tests/failwrite.c)", lib), -1;
  /* tmpfs when there is one: fsync there costs nothing, and this test fsyncs a lot */
  snprintf(root, sizeof root, "%s/cdiff_fault_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  if (!mkdtemp(root)) return snprintf(test_msg, sizeof test_msg, "cannot make %s", root), root[0] = 0, -1;
  char path[700], log[16384];
  snprintf(path, sizeof path, "%s/images", root);
  if (test_write_noise_images(path, 2, 3)) return snprintf(test_msg, sizeof test_msg, "%s", cd_last_error()), -1;
  int rc = train("", "ref", 2, "", log, sizeof log);
  if (rc) return snprintf(test_msg, sizeof test_msg, "uninterrupted run: exit %d:\n%.2000s", rc, log), -1;
  rc = train("", "base", 1, "", log, sizeof log);
  if (rc) return snprintf(test_msg, sizeof test_msg, "one-step run: exit %d:\n%.2000s", rc, log), -1;
  return state = 0;
}

TEST(full_disk_or_kill_at_every_checkpoint_write) {
  GOLDEN_STATUS(fixture());
  char log[16384], cnt[700];
  int rc;
  /* how many checkpoint write events step 2 makes (and the preload changes nothing) */
  snprintf(cnt, sizeof cnt, "%s/count", root);
  CHECK(sh("cp -a '%s/base' '%s/counted'", root, root) == 0);
  char env[2048];
  snprintf(env, sizeof env, "%s LD_PRELOAD='%s' FAILWRITE_PATHS='checkpoint-:latest' FAILWRITE_COUNT='%s'", pre, lib, cnt);
  rc = train(env, "counted", 2, "--resume latest", log, sizeof log);
  CHECKF(rc == 0, "counting run: exit %d:\n%s", rc, log);
  char *txt = NULL;
  size_t n;
  CHECK_OK(cd_read_file(cnt, &txt, &n));
  long events = atol(txt);
  free(txt);
  CHECKF(events >= 10, "only %ld write events counted: the preload does not work", events);
  for (size_t i = 0; i < sizeof delta_files / sizeof delta_files[0]; i++) {
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/counted/%s", root, delta_files[i]);
    snprintf(b, sizeof b, "%s/ref/%s", root, delta_files[i]);
    CHECKF(test_same_file(a, b), "the resumed run's %s differs from the uninterrupted run's", delta_files[i]);
  }
  const long stride = TEST_SANITIZED ? 5 : 1, kill_stride = TEST_SANITIZED ? 23 : 7;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int nw = cpus < 2 ? 1 : cpus > 8 ? 8 : (int)cpus;
  double t0 = cd_time();
  if (all_faults(events, stride, 0, pre, nw) || all_faults(events, kill_stride, 1, pre, nw)) {
    test_failed_flag = 1;
    goto done;
  }
  printf("  %ld write events per checkpoint: a full disk at %ld of them, a kill at %ld; each resumed bit-identically (%d workers, %.0f s)\n",
         events, (events + stride - 1) / stride, (events + kill_stride - 1) / kill_stride, nw, cd_time() - t0);
done:;
}

/* ---- the files of a delta appear as a set ---- */

/* `cdiff merge` of base's delta into root/out (extra: --overwrite, ...) under env */
static int merge(const char *env, const char *out, char *log, size_t cap) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "%s CDIFF_QUIET=1 CDIFF_THREADS=1 %s merge --model '%s' --delta '%s/base:cat' --reg-count 20 --out '%s/%s' --overwrite 2>&1",
           env, bin, model, root, root, out);
  return test_run_cmd(cmd, log, cap);
}

/* which delta files[i] of root/dir is: 'O' the old one's (ref's), 'N' the
 * new one's (root/mref's), '-' absent, '?' anything else */
static void set_state(const char *dir, char st[3]) {
  for (int i = 0; i < 3; i++) {
    char p[1200], o[1200], n[1200];
    snprintf(p, sizeof p, "%s/%s/%s", root, dir, delta_files[i]);
    snprintf(o, sizeof o, "%s/ref/%s", root, delta_files[i]);
    snprintf(n, sizeof n, "%s/mref/%s", root, delta_files[i]);
    st[i] = !cd_file_exists(p) ? '-' : test_same_file(p, o) ? 'O' : test_same_file(p, n) ? 'N' : '?';
  }
}

/* A merge --overwrite over an earlier delta (ref's), failing with a full disk
 * or killed at every write event of its output folder: each entry point of
 * the folder still reads one whole delta, old or new (the primary
 * cdiff_delta.safetensors; diffusers' weights file with the token file beside
 * it), and the primary is the new one only once all files are; the merge run
 * again without the fault writes the new delta and leaves no temporary file. */
TEST(delta_files_appear_as_a_set) {
  GOLDEN_STATUS(fixture());
  char log[16384], cnt[700], env[2048], st[4] = "";
  int rc = merge("", "mref", log, sizeof log);
  CHECKF(rc == 0, "merge: exit %d:\n%s", rc, log);
  set_state("mref", st);
  CHECKF(!strcmp(st, "NNN"), "the merge wrote %s", st);
  for (int i = 0; i < 3; i++) { /* else a mixed folder could not be told from a whole one */
    char o[1200], nw[1200];
    snprintf(o, sizeof o, "%s/ref/%s", root, delta_files[i]);
    snprintf(nw, sizeof nw, "%s/mref/%s", root, delta_files[i]);
    CHECKF(!test_same_file(o, nw), "the old and the new delta have the same %s", delta_files[i]);
  }
  /* how many write events the merge makes in its output folder */
  CHECK(sh("rm -rf '%s/dset'; mkdir '%s/dset'", root, root) == 0);
  char cp[4096];
  snprintf(cp, sizeof cp, "cp '%s/ref/%s' '%s/ref/%s' '%s/ref/%s' '%s/dset/'", root, delta_files[0], root, delta_files[1], root,
           delta_files[2], root);
  CHECK(test_run_cmd(cp, log, sizeof log) == 0);
  snprintf(cnt, sizeof cnt, "%s/count_merge", root);
  snprintf(env, sizeof env, "%s LD_PRELOAD='%s' FAILWRITE_PATHS='/dset/' FAILWRITE_COUNT='%s'", pre, lib, cnt);
  rc = merge(env, "dset", log, sizeof log);
  CHECKF(rc == 0, "counting merge: exit %d:\n%s", rc, log);
  char *txt = NULL;
  size_t n;
  CHECK_OK(cd_read_file(cnt, &txt, &n));
  const long events = atol(txt);
  free(txt);
  set_state("dset", st);
  CHECKF(events >= 10 && !strcmp(st, "NNN"), "%ld write events; the merged folder is %s", events, st);
  const long stride = TEST_SANITIZED ? 7 : 2, kill_stride = TEST_SANITIZED ? 17 : 5;
  for (int kill_mode = 0; kill_mode < 2; kill_mode++)
    for (long e = 1; e <= events; e += kill_mode ? kill_stride : stride) {
      CHECK(sh("rm -rf '%s/dset'; mkdir '%s/dset'", root, root) == 0 && test_run_cmd(cp, log, sizeof log) == 0);
      snprintf(env, sizeof env, "%s LD_PRELOAD='%s' FAILWRITE_PATHS='/dset/' FAILWRITE_AT=%ld FAILWRITE_MODE=%s", pre, lib, e,
               kill_mode ? "kill" : "enospc");
      rc = merge(env, "dset", log, sizeof log);
      const char *how = kill_mode ? "kill" : "ENOSPC";
      CHECKF(kill_mode ? rc == 137 || rc == -1 : rc == 1, "event %ld (%s): exit %d:\n%.2000s", e, how, rc, log);
      set_state("dset", st);
      /* the primary is whole (old or new); diffusers' file, when there, agrees with the token file beside it;
       * a new primary means a new set */
      const int ok = (st[0] == 'O' || st[0] == 'N') && (st[2] == 'O' || st[2] == 'N') && (st[1] == '-' || st[1] == st[2]) &&
                     (st[0] == 'O' || (st[1] == 'N' && st[2] == 'N'));
      CHECKF(ok, "event %ld (%s): the folder holds %c%c%c (cdiff, diffusers, token file: O old, N new)", e, how, st[0], st[1], st[2]);
      char d[700];
      snprintf(d, sizeof d, "%s/dset", root);
      CHECKF(kill_mode || !has_tmp_leftover(d), "event %ld (ENOSPC): the failed merge left temporary files", e);
      rc = merge("", "dset", log, sizeof log);
      set_state("dset", st);
      CHECKF(rc == 0 && !strcmp(st, "NNN"), "event %ld (%s): the merge again: exit %d, folder %s:\n%.2000s", e, how, rc, st, log);
      CHECKF(!has_tmp_leftover(d), "event %ld (%s): temporary files remain after the merge again", e, how);
    }
}

int main(void) {
  RUN(full_disk_or_kill_at_every_checkpoint_write);
  RUN(delta_files_appear_as_a_set);
  if (root[0] && !getenv("CDIFF_KEEP_TMP")) test_rmtree(root);
  return test_summary();
}
