/* progress.h - a one-line progress bar on stderr: [####....] 12/50 3.1 it/s ETA 0:12 loss 0.1234
 * Redrawn at most 10 times a second; plain lines when stderr is not a terminal. */
#ifndef CD_PROGRESS_H
#define CD_PROGRESS_H

typedef struct {
  const char *label;
  int total, done;
  double t0, last_draw;
  int tty, quiet;
  double loss; /* shown when has_loss */
  int has_loss;
} cd_progress;

void cd_progress_start(cd_progress *p, const char *label, int total);
void cd_progress_update(cd_progress *p, int done);
void cd_progress_set_loss(cd_progress *p, double loss);
void cd_progress_finish(cd_progress *p);

#endif
