/* writable.h - "can we write there?" checks for the validation pass that runs
 * before any model is loaded, so that an unwritable output is reported in a
 * second rather than after hours of compute.
 *
 * Both probe by creating (and removing) a file, which is the only test that
 * is right for root, read-only mounts, full quotas and ACLs alike (access(2)
 * says yes to root everywhere). 0, or -1 with a message naming `flag` and the
 * path and the system's reason. */
#ifndef CD_WRITABLE_H
#define CD_WRITABLE_H

/* dir (created with its parents when missing) accepts new files. */
int cd_check_writable_dir(const char *flag, const char *dir);
/* A file can be written at path: its folder exists and accepts new files,
 * and path is not a folder. (The file itself is not touched.) */
int cd_check_writable_file(const char *flag, const char *path);

#endif
