/* anvil: the command-line entry point; dispatches to one file per subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli_env.h"
#include "cli_flags.h"
#include "commands.h"

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"run", anvil_cmd_run, "generate text from a prompt with a model"},
    {"tokenize", anvil_cmd_tokenize, "print the token ids of a text"},
    {"detokenize", anvil_cmd_detokenize, "print the text of token ids"},
    {"chat-template", anvil_cmd_chat_template, "render chat messages with a model's template"},
    {"bench", anvil_cmd_bench, "measure throughput and latency of batched serving"},
    {"serve", anvil_cmd_serve, "serve models over HTTP with OpenAI's API"},
    {"build", anvil_cmd_build, "build a model folder into one engine file"},
    {"inspect", anvil_cmd_inspect, "show what an engine file holds; --verify checks every byte"},
    {"refit", anvil_cmd_refit, "put new weights of the same shapes into an engine file"},
    {"perplexity", anvil_cmd_perplexity, "score a text: perplexity, and KL divergence against a base model"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: anvil <command> [options]\n\n"
                 "anvil compiles and runs large language models on the CPU and NVIDIA GPUs.\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'anvil <command> --help' describes a command's options.\n"
                 "Set ANVIL_LOG=info (or debug) for more detail on stderr, ANVIL_DEBUG=1 to see\n"
                 "where in anvil's source an error was raised.\n");
}

int main(int argc, char **argv)
{
    cli_env_log();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
#ifndef ANVIL_VERSION_STRING
#define ANVIL_VERSION_STRING "0.0.0-dev"
#endif
        printf("anvil %s\n", ANVIL_VERSION_STRING); /* engines record it (anvil inspect) */
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            /* getopt names argv[0] in its messages: "anvil run: unrecognized
             * option '--bogus'", like the commands' own errors */
            char name[64];
            snprintf(name, sizeof name, "anvil %s", commands[i].name);
            argv[1] = name;
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    /* one line, not the usage: the line would scroll away */
    const char *names[sizeof commands / sizeof commands[0]];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        names[i] = commands[i].name;
    const char *best = cli_closest(argv[1], names, sizeof names / sizeof names[0]);
    if (argv[1][0] == '-')
        fprintf(stderr, "anvil: %s: the command comes first (anvil <command> [options]); anvil --help lists the "
                        "commands\n",
                argv[1]);
    else if (best)
        fprintf(stderr, "anvil: unknown command '%s' (did you mean %s?); anvil --help lists the commands\n", argv[1],
                best);
    else
        fprintf(stderr, "anvil: unknown command '%s'; anvil --help lists the commands\n", argv[1]);
    return 2;
}
