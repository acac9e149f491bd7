/* The anvil subcommands: one file each, each returns the process exit code. */
#ifndef ANVIL_TOOLS_COMMANDS_H
#define ANVIL_TOOLS_COMMANDS_H

int anvil_cmd_run(int argc, char **argv);
int anvil_cmd_tokenize(int argc, char **argv);
int anvil_cmd_detokenize(int argc, char **argv);
int anvil_cmd_chat_template(int argc, char **argv);

#endif
