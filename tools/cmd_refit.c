/* anvil refit: an engine with new weights of the same shapes, without a rebuild (docs/engine.md, "Refit"). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "cli_progress.h"
#include "commands.h"
#include "exec_cli.h"

#define TOOL "anvil refit"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil refit FILE --weights DIR|ENGINE [--output NEW] [options]\n\n"
            "Puts new weights of the same shapes (a fine-tuned checkpoint) into the engine FILE without a\n"
            "rebuild: the manifest (config, network, plan, tokenizer, chat template, build options) is\n"
            "kept, the weights come from a Hugging Face folder (converted and fused as FILE stores them)\n"
            "or another engine, and the manifest's build records the refit. The new weights must fit\n"
            "exactly: the same config (every value but the dtype and the generation defaults) and every\n"
            "tensor of the shape the config implies; the first difference is named otherwise.\n\n"
            "  -w, --weights PATH      the new weights: a Hugging Face folder or an engine file\n"
            "  -o, --output NEW        the engine to write (default: FILE is replaced, only when the\n"
            "                          refit succeeds)\n"
            "      --threads N         threads reading and writing (default: the CPUs, at most 16)\n"
            "      --no-progress       no progress bar (it shows only on a terminal)\n"
            "  -h, --help              this help\n");
}

int anvil_cmd_refit(int argc, char **argv)
{
    enum { OPT_THREADS = 256, OPT_NO_PROGRESS };
    static const struct option longopts[] = {
        {"weights", required_argument, 0, 'w'},
        {"output", required_argument, 0, 'o'},
        {"threads", required_argument, 0, OPT_THREADS},
        {"no-progress", no_argument, 0, OPT_NO_PROGRESS},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    anvil_refit_options o = {0};
    const char *weights = NULL, *output = NULL;
    int no_progress = 0;
    long v;
    optind = 1;
    int c;
    while ((c = cli_getopt(argc, argv, "w:o:h", longopts)) != -1) {
        switch (c) {
        case 'w':
            weights = optarg;
            break;
        case 'o':
            output = optarg;
            break;
        case OPT_THREADS:
            if (exec_cli_int(optarg, "--threads", 0, 1024, &v, TOOL))
                return 2;
            o.n_threads = (int)v;
            break;
        case OPT_NO_PROGRESS:
            no_progress = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default: return cli_bad_flag(TOOL, argv, "w:o:h", longopts);
        }
    }
    if (optind >= argc) {
        fprintf(stderr, TOOL ": the engine FILE to refit is required (see anvil refit --help)\n");
        return 2;
    }
    const char *engine = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, TOOL ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (weights == NULL) {
        fprintf(stderr, TOOL ": --weights DIR|ENGINE is required (see anvil refit --help)\n");
        return 2;
    }
    cli_progress b;
    cli_progress_start(&b, TOOL, !no_progress);
    o.progress = cli_progress_cb;
    o.progress_user = &b;
    anvil_status st = anvil_refit_engine(engine, weights, output, &o);
    cli_progress_end(&b);
    if (st != ANVIL_OK) {
        anvil_cli_report(TOOL);
        return st == ANVIL_ERR_CANCELLED ? 130 : 1;
    }
    fprintf(stderr, TOOL ": wrote %s in %.2f s\n", output ? output : engine, cli_progress_elapsed(&b));
    return 0;
}
