/* The anvil subcommands: one file each, each returns the process exit code. */
#ifndef ANVIL_TOOLS_COMMANDS_H
#define ANVIL_TOOLS_COMMANDS_H

int anvil_cmd_run(int argc, char **argv);
int anvil_cmd_tokenize(int argc, char **argv);
int anvil_cmd_detokenize(int argc, char **argv);
int anvil_cmd_chat_template(int argc, char **argv);
int anvil_cmd_bench(int argc, char **argv);
int anvil_cmd_serve(int argc, char **argv);
int anvil_cmd_build(int argc, char **argv);
int anvil_cmd_inspect(int argc, char **argv);
int anvil_cmd_refit(int argc, char **argv);
int anvil_cmd_perplexity(int argc, char **argv);

/* anvil run's batch mode (tools/run_batch.c): many requests through the
 * executor, for --input FILE.jsonl or --beam-width. */
int anvil_run_batch_wanted(int argc, char **argv);
int anvil_run_batch(int argc, char **argv);

#endif
