#include <stdio.h>

#include "commands.h"

int anvil_cmd_run(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: run is not built yet\n");
    return 1;
}
