/* commands.h - the cdiff subcommands; each returns the process exit status. */
#ifndef CD_CLI_COMMANDS_H
#define CD_CLI_COMMANDS_H

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_compress(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_world(int argc, char **argv);
int cmd_grid(int argc, char **argv);
int cmd_judge(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
