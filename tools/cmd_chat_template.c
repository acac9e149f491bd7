/* Placeholder until the tokenizer lands: replaced by its implementation. */
#include <stdio.h>

#include "commands.h"

int anvil_cmd_chat_template(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: this command is not built yet\n");
    return 1;
}
