/* run_dir.h - the folder of a training run (`cdiff train --out OUT`) and its
 * checkpoint set, kept so that no crash, full disk or kill loses a complete
 * checkpoint:
 *
 *   OUT/checkpoint-N/   state.safetensors + cdiff_delta.safetensors of step N,
 *                       written in full as OUT/checkpoint-N.tmp.PID/ (every
 *                       file fsynced) and then renamed: a checkpoint-N folder
 *                       is complete or absent.
 *   OUT/latest          "checkpoint-N\n", switched by a rename after the
 *                       folder is in place; only then are old checkpoints
 *                       pruned (the newest `keep` stay).
 *   OUT/log.jsonl, the final delta files, validation/, class_images/.
 *
 * Leftovers "*.tmp.PID" of killed runs are removed by cd_run_dir_clean_stale.
 */
#ifndef CD_RUN_DIR_H
#define CD_RUN_DIR_H

#include <stddef.h>

#define CD_RUN_LATEST_FILE "latest"
#define CD_RUN_CKPT_PREFIX "checkpoint-"

/* 1 when out already holds a run (a log, a checkpoint, a latest pointer or a
 * delta); what gets the first thing found. 0 otherwise. */
int cd_run_dir_holds_run(const char *out, char *what, size_t cap);
/* --overwrite: removes the previous run's checkpoints, pointer, log, delta
 * files and validation images (class images stay: they are reusable). */
int cd_run_dir_clear(const char *out);
/* Removes "*.tmp.PID" leftovers of dead processes in out and its subfolders. */
int cd_run_dir_clean_stale(const char *out);

/* Steps of the checkpoint-N folders in dir, newest first (at most cap);
 * returns the count, or -1. */
int cd_ckpt_list(const char *dir, int *steps, int cap);
/* Starts checkpoint `step`: makes the empty folder OUT/checkpoint-N.tmp.PID
 * (path in tmp). */
int cd_ckpt_begin(const char *out, int step, char *tmp, size_t cap);
/* Finishes it: fsyncs tmp, renames it to OUT/checkpoint-N, points latest at
 * it, then removes all but the newest keep checkpoints (keep <= 0: none
 * removed). On failure tmp is removed and the earlier checkpoints stay. */
int cd_ckpt_commit(const char *out, int step, const char *tmp, int keep);
/* Gives up on a started checkpoint (removes tmp). */
void cd_ckpt_abort(const char *tmp);

#endif
