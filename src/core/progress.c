/* progress.c - see progress.h */
#include "progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

void cd_progress_start(cd_progress *p, const char *label, int total) {
  p->label = label;
  p->total = total;
  p->done = 0;
  p->t0 = cd_time();
  p->last_draw = 0;
  p->tty = isatty(2);
  p->quiet = getenv("CDIFF_QUIET") != NULL || cd_silent;
  p->has_loss = 0;
}

static void fmt_time(double s, char *buf, size_t cap) {
  if (s < 0 || s > 1e7) { snprintf(buf, cap, "?"); return; }
  int t = (int)(s + 0.5);
  if (t >= 3600) snprintf(buf, cap, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, cap, "%d:%02d", t / 60, t % 60);
}

static void draw(cd_progress *p, int final) {
  double now = cd_time(), el = now - p->t0;
  double rate = el > 0 ? p->done / el : 0;
  char eta[32], elapsed[32], loss[48] = "";
  fmt_time(rate > 0 ? (p->total - p->done) / rate : -1, eta, sizeof eta);
  fmt_time(el, elapsed, sizeof elapsed);
  if (p->has_loss) snprintf(loss, sizeof loss, " loss %.4f", p->loss);
  int width = 30, fill = p->total > 0 ? (int)((double)width * p->done / p->total) : width;
  char bar[64];
  for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
  bar[width] = 0;
  const char *speed_unit = rate >= 1 || rate == 0 ? "it/s" : "s/it";
  double speed = rate >= 1 || rate == 0 ? rate : 1 / rate;
  fprintf(stderr, "%s%s [%s] %d/%d %.2f %s %s %s%s%s", p->tty ? "\r" : "", p->label, bar, p->done, p->total, speed,
          speed_unit, final ? "elapsed" : "ETA", final ? elapsed : eta, loss, p->tty ? "\x1b[K" : "\n");
  if (final && p->tty) fputc('\n', stderr);
  fflush(stderr);
  p->last_draw = now;
}

void cd_progress_update(cd_progress *p, int done) {
  p->done = done;
  if (p->quiet) return;
  double now = cd_time();
  if (p->tty ? now - p->last_draw >= 0.1 : (now - p->last_draw >= 5 || done == p->total)) draw(p, 0);
}
void cd_progress_set_loss(cd_progress *p, double loss) {
  p->loss = loss;
  p->has_loss = 1;
}
void cd_progress_finish(cd_progress *p) {
  /* a terminal gets the final state with the elapsed time; a log already has its last line */
  if (!p->quiet && (p->tty || p->last_draw == 0)) draw(p, 1);
}
