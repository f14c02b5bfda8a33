/* test_keep_work.c - no command loses earlier work (issue 11): train refuses
 * an --out that holds a run unless --resume/--overwrite; the checkpoint set
 * (checkpoint-N, latest, pruning, leftovers of killed runs, the newest
 * complete checkpoint on resume); a stop request or SIGINT/SIGTERM checkpoints
 * and exits 130/143, and the resumed run is bit-identical; compress/merge
 * refuse an output that is an input and leave folders of agreeing files;
 * sample numbers its files and never overwrites. On the tiny SD 1.x model. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "custom/delta.h"
#include "custom/trainer_run.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "io/tensor_file.h"
#include "models/sd_model.h"
#include "test.h"

static char model[1024], images[600], bin[PATH_MAX];

/* 0 ready; else test_golden_need's status (1 skip, -1 fail) */
static int fixture(void) {
  static int state = 2;
  if (state != 2) return state;
  if ((state = test_golden_need(model, sizeof model, "tiny-sd1"))) return state;
  snprintf(images, sizeof images, "%s", test_tmpdir("images"));
  if (test_write_noise_images(images, 2, 99)) {
    snprintf(test_msg, sizeof test_msg, "cannot write images: %s", cd_last_error());
    return state = -1;
  }
  snprintf(bin, sizeof bin, "%s", test_cdiff_bin());
  return 0;
}
#define NEED_FIXTURE() GOLDEN_STATUS(fixture())
#define NEED_BIN() CHECKF(access(bin, X_OK) == 0, "%s not built", bin)

static void opts(cd_run_opts *o, const char *out, int steps) {
  cd_run_opts_default(o);
  o->model = model;
  o->images = images;
  o->prompt = "photo of a <new1> cat";
  o->prior = 0;
  o->steps = steps;
  o->lr = 1e-3f;
  o->res = 64;
  o->seed = 5;
  o->quiet = 1;
  o->out = out;
}

/* the same flags for the binary */
static void cli_flags(char *buf, size_t cap, const char *out, int steps, const char *extra) {
  snprintf(buf, cap, "train --model '%s' --images '%s' --prompt 'photo of a <new1> cat' --no-prior --lr 1e-3 --resolution 64 "
           "--seed 5 --steps %d --out '%s' %s", model, images, steps, out, extra);
}

/* 1 when two deltas have identical files; else 0 with the first difference
 * (a tensor, or a metadata key and both values) in test_msg */
static int same_delta(const char *a, const char *b) {
  if (test_same_file(a, b)) return 1;
  cd_tensor_file *fa = NULL, *fb = NULL;
  if (cd_tensor_file_open(a, &fa) || cd_tensor_file_open(b, &fb)) {
    snprintf(test_msg, sizeof test_msg, "%s", cd_last_error());
  } else {
    snprintf(test_msg, sizeof test_msg, "%s and %s differ", a, b);
    for (int i = 0; i < cd_tf_count(fa); i++) {
      const cd_tensor_info *x = cd_tf_at(fa, i), *y = cd_tf_find(fb, x->name);
      if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes)) {
        snprintf(test_msg, sizeof test_msg, "tensor %s differs between %s and %s", x->name, a, b);
        break;
      }
    }
    for (int i = 0; i < cd_tf_meta_count(fa); i++) {
      const char *k = cd_tf_meta_key(fa, i), *va = cd_tf_meta(fa, k), *vb = cd_tf_meta(fb, k);
      if (!vb || strcmp(va, vb)) {
        snprintf(test_msg, sizeof test_msg, "metadata %s differs: %.400s vs %.400s", k, va, vb ? vb : "(none)");
        break;
      }
    }
  }
  cd_tensor_file_close(fa);
  cd_tensor_file_close(fb);
  test_failed_flag = 1;
  return 0;
}

/* names in dir joined by ' ' in sorted order (ls), into buf */
static const char *ls(const char *dir, char *buf, size_t cap) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "ls '%s' | tr '\\n' ' '", dir);
  if (test_run_cmd(cmd, buf, cap) != 0) snprintf(buf, cap, "(ls failed)");
  return buf;
}

static int has_tmp_leftover(const char *dir) {
  char cmd[1200], out[4096];
  snprintf(cmd, sizeof cmd, "find '%s' -name '*.tmp.*'", dir);
  return test_run_cmd(cmd, out, sizeof out) != 0 || out[0] != 0;
}

static int run_bin(const char *args, char *out, size_t cap) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "CDIFF_QUIET=1 %s %s 2>&1", bin, args);
  return test_run_cmd(cmd, out, cap);
}

/* ---- train --out that holds a run ---- */

TEST(train_out_with_a_run_needs_resume_or_overwrite) {
  NEED_FIXTURE();
  const char *x = test_tmpdir("run_x");
  cd_run_opts o;
  opts(&o, x, 2); /* default cadence: a checkpoint at the end */
  CHECK_OK(cd_train_run(&o));
  CHECKF(cd_file_exists(test_path_in(x, "checkpoint-2/state.safetensors")), "no checkpoint at the end of a run with default flags");
  char *state = cd_strdup(test_path_in(x, "checkpoint-2/state.safetensors")), *delta = cd_strdup(test_path_in(x, CD_DELTA_FILE));
  char keep_state[1200], keep_delta[1200];
  snprintf(keep_state, sizeof keep_state, "%s", test_tmpdir("keep_state"));
  snprintf(keep_delta, sizeof keep_delta, "%s", test_tmpdir("keep_delta"));
  char cmd[4000], out[8192];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s' && cp '%s' '%s'", state, keep_state, delta, keep_delta);
  int cp = test_run_cmd(cmd, out, sizeof out);
  /* a new run into it is refused and touches nothing */
  opts(&o, x, 3);
  int rc = cd_train_run(&o);
  char err[1024];
  snprintf(err, sizeof err, "%s", cd_last_error());
  int untouched = test_same_file(state, keep_state) && test_same_file(delta, keep_delta) && test_count_lines(test_path_in(x, "log.jsonl")) == 2;
  free(state);
  free(delta);
  CHECK(cp == 0);
  CHECKF(rc != 0, "a second run replaced the run in --out");
  CHECKF(strstr(err, "--resume") && strstr(err, "--overwrite") && strstr(err, x), "error: %s", err);
  CHECK(untouched);
  /* --resume and --overwrite of the same folder contradict each other */
  opts(&o, x, 3);
  o.resume = "latest";
  o.overwrite = 1;
  CHECK(cd_train_run(&o) != 0 && strstr(cd_last_error(), "--overwrite"));
  /* --resume latest continues it */
  opts(&o, x, 3);
  o.resume = "latest";
  CHECK_OK(cd_train_run(&o));
  CHECKF(test_count_lines(test_path_in(x, "log.jsonl")) == 3, "log has %d lines after resuming to 3", test_count_lines(test_path_in(x, "log.jsonl")));
  /* --overwrite replaces it: one fresh step, the old checkpoints gone */
  opts(&o, x, 1);
  o.overwrite = 1;
  CHECK_OK(cd_train_run(&o));
  char names[2048];
  CHECKF(test_count_lines(test_path_in(x, "log.jsonl")) == 1, "log has %d lines after --overwrite", test_count_lines(test_path_in(x, "log.jsonl")));
  CHECKF(!cd_file_exists(test_path_in(x, "checkpoint-2")) && !cd_file_exists(test_path_in(x, "checkpoint-3")) && cd_file_exists(test_path_in(x, "checkpoint-1")),
         "after --overwrite: %s", ls(x, names, sizeof names));
  /* and the binary says so, exit 1, before loading anything */
  NEED_BIN();
  char args[4096];
  cli_flags(args, sizeof args, x, 2, "");
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 1 && strstr(out, "already holds a training run") && strstr(out, "--overwrite"), "exit %d: %s", rc, out);
}

/* ---- the checkpoint set ---- */

static long dead_pid(void) {
  pid_t p = fork();
  if (p == 0) _exit(0);
  if (p < 0) return 999999;
  waitpid(p, NULL, 0);
  return (long)p;
}

TEST(checkpoints_are_atomic_pruned_and_resumed_newest_complete) {
  NEED_FIXTURE();
  const char *ref = test_tmpdir("ckpt_ref"), *x = test_tmpdir("ckpt_x"), *all = test_tmpdir("ckpt_all");
  cd_run_opts o;
  opts(&o, ref, 5); /* uninterrupted reference, same flags */
  o.checkpoint_every = 1;
  CHECK_OK(cd_train_run(&o));
  opts(&o, x, 3);
  o.checkpoint_every = 1; /* default limit 2: checkpoint-2 and -3 stay */
  CHECK_OK(cd_train_run(&o));
  char names[2048], *latest = NULL;
  size_t n;
  CHECKF(!strcmp(ls(x, names, sizeof names), "<new1>.safetensors cdiff_delta.safetensors checkpoint-2 checkpoint-3 latest log.jsonl "
                                             "pytorch_custom_diffusion_weights.safetensors "),
         "run folder: %s", names);
  CHECK_OK(cd_read_file(test_path_in(x, "latest"), &latest, &n));
  int ok = !strcmp(latest, "checkpoint-3\n");
  free(latest);
  CHECK(ok);
  CHECKF(!strcmp(ls(test_path_in(x, "checkpoint-3"), names, sizeof names), "cdiff_delta.safetensors state.safetensors "), "checkpoint: %s", names);
  /* --checkpoints-total-limit 0 keeps them all */
  opts(&o, all, 2);
  o.checkpoint_every = 1;
  o.checkpoints_total_limit = 0;
  CHECK_OK(cd_train_run(&o));
  CHECK(cd_is_dir(test_path_in(all, "checkpoint-1")) && cd_is_dir(test_path_in(all, "checkpoint-2")));
  /* what killed runs leave behind, and a damaged newer checkpoint */
  long dead = dead_pid();
  char p1[1300], p2[1300], p3[1300], live[1300], foreign[1300];
  snprintf(p1, sizeof p1, "%s/checkpoint-9.tmp.%ld", x, dead);
  snprintf(p2, sizeof p2, "%s/%s.tmp.%ld", x, CD_DELTA_FILE, dead);
  snprintf(p3, sizeof p3, "%s/checkpoint-3/state.safetensors.tmp.%ld", x, dead);
  snprintf(live, sizeof live, "%s/%s.tmp.1", x, CD_DELTA_FILE); /* pid 1 is alive: its writer may still be at work */
  snprintf(foreign, sizeof foreign, "%s/notes.txt.tmp.%ld", x, dead);      /* not a file a run writes */
  CHECK_OK(cd_mkdir_p(p1));
  CHECK_OK(cd_write_file_atomic(test_path_in(p1, "state.safetensors"), "garbage", 7));
  CHECK_OK(cd_write_file_atomic(p2, "half a file", 11));
  CHECK_OK(cd_write_file_atomic(p3, "half a file", 11));
  CHECK_OK(cd_write_file_atomic(live, "x", 1));
  CHECK_OK(cd_write_file_atomic(foreign, "x", 1));
  CHECK_OK(cd_mkdir_p(test_path_in(x, "checkpoint-4")));
  CHECK_OK(cd_write_file_atomic(test_path_in(x, "checkpoint-4/state.safetensors"), "\x10\0\0\0\0\0\0\0{\"a\":", 13));
  opts(&o, x, 5);
  o.checkpoint_every = 1;
  o.resume = "latest";
  CHECK_OK(cd_train_run(&o));
  CHECKF(!cd_file_exists(p1) && !cd_file_exists(p2) && !cd_file_exists(p3), "leftovers of a killed run remain: %s", ls(x, names, sizeof names));
  CHECK(cd_file_exists(live) && cd_file_exists(foreign));
  remove(live);
  remove(foreign);
  CHECKF(!has_tmp_leftover(x), "temporary files remain in %s", x);
  if (!same_delta(test_path_in(x, CD_DELTA_FILE), test_path_in(ref, CD_DELTA_FILE))) return; /* resumed past a damaged checkpoint-4 */
  CHECKF(test_count_lines(test_path_in(x, "log.jsonl")) == 5, "log has %d lines", test_count_lines(test_path_in(x, "log.jsonl")));
  CHECKF(!strcmp(ls(x, names, sizeof names), "<new1>.safetensors cdiff_delta.safetensors checkpoint-4 checkpoint-5 latest log.jsonl "
                                             "pytorch_custom_diffusion_weights.safetensors "),
         "run folder: %s", names);
  /* a resume from a folder with nothing complete names the problem */
  const char *bad = test_tmpdir("ckpt_bad");
  CHECK_OK(cd_mkdir_p(test_path_in(bad, "checkpoint-3")));
  opts(&o, test_tmpdir("ckpt_bad_out"), 4);
  o.resume = bad;
  CHECK(cd_train_run(&o) != 0);
  CHECKF(strstr(cd_last_error(), "complete") && strstr(cd_last_error(), bad), "error: %s", cd_last_error());
}

/* ---- stopping: a stop request in the API, then SIGINT/SIGTERM in the binary ---- */

TEST(stop_request_checkpoints_and_resume_is_bit_exact) {
  NEED_FIXTURE();
  const char *ref = test_tmpdir("stop_ref"), *x = test_tmpdir("stop_x");
  cd_run_opts o;
  opts(&o, ref, 5);
  CHECK_OK(cd_train_run(&o));
  opts(&o, x, 5);
  o.stop_after = 3; /* default cadence (50): the stop alone writes the checkpoint */
  int sig = -1;
  o.stopped_by = &sig;
  int rc = cd_train_run(&o);
  CHECKF(rc != 0 && sig == 0 && strstr(cd_last_error(), "--resume") && strstr(cd_last_error(), "checkpoint-3"), "rc %d sig %d: %s", rc, sig,
         cd_last_error());
  CHECK(cd_is_dir(test_path_in(x, "checkpoint-3")) && !cd_file_exists(test_path_in(x, CD_DELTA_FILE)));
  opts(&o, x, 5);
  o.resume = x;
  CHECK_OK(cd_train_run(&o));
  if (!same_delta(test_path_in(x, CD_DELTA_FILE), test_path_in(ref, CD_DELTA_FILE))) return;
  CHECK(test_same_file(test_path_in(x, "log.jsonl"), test_path_in(ref, "log.jsonl")));
}

/* Starts a long run of the binary, waits for its first logged steps, sends
 * sig; returns the exit status (or -1), and the step count logged in *steps. */
static int interrupt_run(const char *out, int sig, int *steps) {
  char args[4096];
  cli_flags(args, sizeof args, out, 100000, "");
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "exec %s %s 2>/dev/null", bin, args);
  pid_t p = fork();
  if (p == 0) {
    setenv("CDIFF_QUIET", "1", 1);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  if (p < 0) return -1;
  const char *log = test_path_in(out, "log.jsonl");
  for (int i = 0; i < 6000 && test_count_lines(log) < 2; i++) usleep(10000); /* up to a minute */
  kill(p, sig);
  int st;
  if (waitpid(p, &st, 0) != p) return -1;
  *steps = test_count_lines(log);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(sigint_and_sigterm_checkpoint_and_exit_130_143) {
  NEED_FIXTURE();
  NEED_BIN();
  const char *x = test_tmpdir("sig_int"), *y = test_tmpdir("sig_term"), *ref = test_tmpdir("sig_ref");
  int kx = 0, ky = 0;
  int rx = interrupt_run(x, SIGINT, &kx), ry = interrupt_run(y, SIGTERM, &ky);
  CHECKF(rx == 130 && ry == 143, "exit statuses %d after SIGINT, %d after SIGTERM (want 130, 143)", rx, ry);
  char want[64], *latest = NULL;
  size_t n;
  snprintf(want, sizeof want, "checkpoint-%d\n", kx);
  CHECK_OK(cd_read_file(test_path_in(x, "latest"), &latest, &n));
  int ok = !strcmp(latest, want);
  free(latest);
  CHECKF(ok && kx >= 2, "SIGINT after %d logged steps, latest is not %s", kx, want);
  /* the interrupted run, resumed to 2 more steps, is the uninterrupted one */
  char args[4096], out[8192], extra[1400];
  snprintf(extra, sizeof extra, "--resume '%s'", x);
  cli_flags(args, sizeof args, x, kx + 2, extra);
  int rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0, "resume: exit %d: %s", rc, out);
  /* the reference through the binary too: its OpenBLAS kernels are the ones
   * cd_env_tune picks, which may round differently from this process's */
  cli_flags(args, sizeof args, ref, kx + 2, "");
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0, "reference: exit %d: %s", rc, out);
  if (!same_delta(test_path_in(x, CD_DELTA_FILE), test_path_in(ref, CD_DELTA_FILE))) return;
  CHECK(!has_tmp_leftover(x) && !has_tmp_leftover(y));
}

/* Ctrl-C while the model loads (here: its UNet weights are a FIFO nobody
 * writes, so the loader waits in open() for as long as needed): the run ends
 * at once, as SIGINT ends a process (the shell reports 130), and leaves no
 * file in --out: nothing but the run's checkpoints and final delta is
 * written, each under a temporary name and renamed. */
TEST(sigint_while_loading_stops_at_once_and_writes_nothing) {
  NEED_FIXTURE();
  NEED_BIN();
  const char *mdir = test_tmpdir("fifo_model"), *out = test_tmpdir("fifo_out");
  char cmd[4096], log[4096], fifo[1200];
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", model, mdir);
  CHECK(test_run_cmd(cmd, log, sizeof log) == 0);
  snprintf(fifo, sizeof fifo, "%s/unet/diffusion_pytorch_model.safetensors", mdir);
  CHECK(remove(fifo) == 0 && mkfifo(fifo, 0600) == 0);
  char args[4096];
  snprintf(args, sizeof args, "train --model '%s' --images '%s' --prompt 'photo of a <new1> cat' --no-prior --resolution 64 --steps 2 --out '%s'",
           mdir, images, out);
  snprintf(cmd, sizeof cmd, "exec %s %s >/dev/null 2>&1", bin, args);
  pid_t p = fork();
  if (p == 0) {
    setenv("CDIFF_QUIET", "1", 1);
    /* the default action, as in a terminal: a test run started in the background by a
     * non-interactive shell inherits SIGINT ignored, and cdiff rightly keeps that */
    signal(SIGINT, SIG_DFL);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  CHECK(p > 0);
  /* wait until it blocks on the FIFO (up to a minute; without /proc, 3 s) */
  char wchan_path[64], wchan[64] = "";
  snprintf(wchan_path, sizeof wchan_path, "/proc/%ld/wchan", (long)p);
  for (int i = 0; i < 6000 && !strstr(wchan, "wait_for_partner"); i++) {
    usleep(10000);
    FILE *f = fopen(wchan_path, "r");
    if (!f) { if (i >= 300) break; continue; }
    size_t k = fread(wchan, 1, sizeof wchan - 1, f);
    wchan[k] = 0;
    fclose(f);
  }
  const double t0 = cd_time();
  kill(p, SIGINT);
  int st = 0, done = 0;
  while (!(done = waitpid(p, &st, WNOHANG) == p) && cd_time() - t0 < 20) usleep(10000);
  if (!done) { /* still waiting: not stopped by the Ctrl-C */
    kill(p, SIGKILL);
    waitpid(p, &st, 0);
    FAILF("train did not stop within 20 s of SIGINT while loading (it was in %s)", wchan[0] ? wchan : "?");
  }
  const double dt = cd_time() - t0;
  const int by130 = (WIFSIGNALED(st) && WTERMSIG(st) == SIGINT) || (WIFEXITED(st) && WEXITSTATUS(st) == 130);
  CHECKF(by130, "after SIGINT while loading: %s %d (want SIGINT or exit 130)", WIFSIGNALED(st) ? "signal" : "exit",
         WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
  snprintf(cmd, sizeof cmd, "find '%s' -type f 2>/dev/null", out);
  log[0] = 0;
  test_run_cmd(cmd, log, sizeof log);
  CHECKF(!log[0], "files left in --out after SIGINT while loading:\n%s", log);
  printf("  stopped %.2f s after SIGINT while loading (blocked in %s)\n", dt, wchan[0] ? wchan : "?");
}

/* ---- compress and merge outputs ---- */

TEST(compress_and_merge_never_write_over_an_input) {
  NEED_FIXTURE();
  NEED_BIN();
  const char *d = test_tmpdir("cm_delta"), *y = test_tmpdir("cm_other"), *keep = test_tmpdir("cm_keep");
  cd_run_opts o;
  opts(&o, d, 1);
  o.checkpoint_every = 0;
  CHECK_OK(cd_train_run(&o));
  char cmd[4096], out[16384], args[4096];
  snprintf(cmd, sizeof cmd, "cp '%s/%s' '%s'", d, CD_DELTA_FILE, keep);
  CHECK(test_run_cmd(cmd, out, sizeof out) == 0);
  const char *bad[] = {"compress --model '%s' --delta '%s' --out '%s'", "compress --model '%s' --delta '%s/" CD_DELTA_FILE "' --out '%s/.'",
                       "merge --model '%s' --delta '%s:cat' --out '%s/'"};
  for (int i = 0; i < 3; i++) {
    snprintf(args, sizeof args, bad[i], model, d, d);
    int rc = run_bin(args, out, sizeof out);
    CHECKF(rc == 2 && strstr(out, "--out") && strstr(out, "input"), "'%s': exit %d: %s", args, rc, out);
  }
  CHECK(test_same_file(test_path_in(d, CD_DELTA_FILE), keep));
  /* an earlier full delta with two tokens in the output folder */
  cd_sd_model *m;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(model, &lo, &m));
  cd_delta *two = NULL, *back = NULL;
  int rc = cd_delta_load(d, m, &two);
  if (!rc) {
    two->embeds = cd_realloc(two->embeds, 2 * (size_t)two->d * sizeof(float));
    memcpy(two->embeds + two->d, two->embeds, (size_t)two->d * sizeof(float));
    snprintf(two->tok[1], 32, "<new2>");
    snprintf(two->init[1], 32, "pll");
    two->ntok = 2;
    rc = cd_delta_save(y, two);
  }
  /* saving a one-token delta over it leaves no <new2> file behind */
  if (!rc) {
    two->ntok = 1;
    rc = cd_delta_save(y, two);
  }
  int stale = cd_file_exists(test_path_in(y, "<new2>.safetensors"));
  if (!rc) rc = cd_delta_load(test_path_in(y, CD_DIFFUSERS_DELTA_FILE), m, &back);
  int ntok = back ? back->ntok : -1;
  cd_delta_free(two);
  cd_delta_free(back);
  cd_sd_free(m);
  CHECK_OK(rc);
  CHECKF(!stale && ntok == 1, "a stale token file remains (%d tokens read back)", ntok);
  /* compress into it: refused without --overwrite, then a folder of one low-rank file */
  snprintf(args, sizeof args, "compress --model '%s' --delta '%s' --out '%s'", model, d, y);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 1 && strstr(out, "--overwrite"), "exit %d: %s", rc, out);
  snprintf(args, sizeof args, "compress --model '%s' --delta '%s' --out '%s' --overwrite", model, d, y);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  char names[2048];
  CHECKF(!strcmp(ls(y, names, sizeof names), CD_DELTA_FILE " "), "compress left: %s", names);
}

/* ---- sample file names ---- */

TEST(sample_numbers_files_and_never_overwrites) {
  NEED_FIXTURE();
  NEED_BIN();
  const char *dir = test_tmpdir("samples/new"), *multi = test_tmpdir("samples/multi");
  char args[4096], out[8192], names[2048];
  const char *common = "--width 64 --height 64 --steps 2";
  /* a missing folder given with '/' is made, before any sampling */
  snprintf(args, sizeof args, "sample --model '%s' %s --prompt 'A cat, on a mat!' --out '%s/'", model, common, dir);
  int rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  snprintf(args, sizeof args, "sample --model '%s' %s --seed 7 --prompt 'a dog' --out '%s'", model, common, dir);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  CHECKF(!strcmp(ls(dir, names, sizeof names), "00000-42-a-cat-on-a-mat.png 00001-7-a-dog.png "), "folder: %s", names);
  /* the image a killed run was writing (NAME.png.tmp.PID) is swept by the next run into the
   * folder; a live writer's (this test's PID) and other files' temporaries stay */
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  CHECK(dead > 0 && waitpid(dead, NULL, 0) == dead);
  char t1[1400], t2[1400], t3[1400];
  snprintf(t1, sizeof t1, "%s/00002-1-x.png.tmp.%ld", dir, (long)dead);
  snprintf(t2, sizeof t2, "%s/00003-1-x.png.tmp.%ld", dir, (long)getpid());
  snprintf(t3, sizeof t3, "%s/notes.txt.tmp.%ld", dir, (long)dead);
  const char *tmps[3] = {t1, t2, t3};
  for (int i = 0; i < 3; i++) {
    FILE *f = fopen(tmps[i], "wb");
    CHECK(f && fclose(f) == 0);
  }
  snprintf(args, sizeof args, "sample --model '%s' %s --seed 9 --prompt 'a dog' --out '%s'", model, common, dir);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0 && !cd_file_exists(t1) && cd_file_exists(t2) && cd_file_exists(t3), "exit %d: %s", rc, out);
  remove(t2), remove(t3);
  /* numbered after the live writer's 00003 */
  CHECKF(!strcmp(ls(dir, names, sizeof names), "00000-42-a-cat-on-a-mat.png 00001-7-a-dog.png 00004-9-a-dog.png "), "folder: %s", names);
  /* --n 2 into a new path without an image extension: a folder */
  snprintf(args, sizeof args, "sample --model '%s' %s --n 2 --prompt 'x' --out '%s'", model, common, multi);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0 && !strcmp(ls(multi, names, sizeof names), "00000-42-x.png 00001-43-x.png "), "exit %d: %s / %s", rc, out, names);
  /* an existing file needs --overwrite, and that is known before the model loads */
  const char *png = test_path_in(dir, "00001-7-a-dog.png");
  char keep[1300];
  snprintf(keep, sizeof keep, "%s", test_tmpdir("keep.png"));
  char cmd[4000];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", png, keep);
  CHECK(test_run_cmd(cmd, out, sizeof out) == 0);
  snprintf(args, sizeof args, "sample --model /nonexistent/model %s --prompt 'a dog' --out '%s'", common, png);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 1 && strstr(out, "--overwrite") && !strstr(out, "nonexistent"), "exit %d: %s", rc, out);
  CHECK(test_same_file(png, keep));
  snprintf(args, sizeof args, "sample --model '%s' %s --prompt 'a dog' --out '%s' --overwrite", model, common, png);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 0 && !test_same_file(png, keep), "exit %d: %s", rc, out);
  /* an impossible folder fails before the model loads too */
  snprintf(args, sizeof args, "sample --model /nonexistent/model %s --prompt x --out /proc/cdiff_no/", common);
  rc = run_bin(args, out, sizeof out);
  CHECKF(rc == 1 && strstr(out, "/proc/cdiff_no") && !strstr(out, "nonexistent/model"), "exit %d: %s", rc, out);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(train_out_with_a_run_needs_resume_or_overwrite);
  RUN(checkpoints_are_atomic_pruned_and_resumed_newest_complete);
  RUN(stop_request_checkpoints_and_resume_is_bit_exact);
  RUN(sigint_while_loading_stops_at_once_and_writes_nothing);
  RUN(sigint_and_sigterm_checkpoint_and_exit_130_143);
  RUN(compress_and_merge_never_write_over_an_input);
  RUN(sample_numbers_files_and_never_overwrites);
  if (!getenv("CDIFF_KEEP_TMP")) test_tmp_cleanup();
  return test_summary();
}
