/*
 * The canopy command: run, validate, components, docs, task, version.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "docs.h"
#include "notify.h"
#include "service.h"

#ifndef CANOPY_VERSION
#define CANOPY_VERSION "0.0.0"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "canopy: the per-host collector for greenlet-correct Python profiles.\n"
            "\n"
            "Usage: canopy <command> [options]\n"
            "\n"
            "Commands:\n"
            "  run [-c FILE]      run the collector (default: the embedded config)\n"
            "  validate -c FILE   check a config; errors are printed as FILE:LINE:COL: message\n"
            "  components         list the compiled-in receivers, processors and exporters\n"
            "  docs               print the configuration reference (docs/configuration.md)\n"
            "  task <create|list|cancel>  manage profiling tasks through the admin API\n"
            "  version            print the version\n"
            "\n"
            "Run 'canopy <command> --help' for a command's options.\n");
}

/* Loads -c FILE, or the embedded default when path is NULL. */
static cn_service *load_service(const char *path, cn_diag *d)
{
    cn_document *doc = path ? cn_document_load(path, d)
                            : cn_document_parse("<embedded canopy.yaml>", cn_default_config, cn_default_config_len, d);
    return doc ? cn_service_build(doc, d) : NULL;
}

static void print_diag(const cn_diag *d)
{
    for (size_t i = 0; i < d->n_errors; i++)
        fprintf(stderr, "%s\n", d->errors[i] ? d->errors[i] : "error (message lost: out of memory)");
}

typedef struct cmd_opts {
    const char *config;
    const char *log_level;
} cmd_opts;

/* Parses -c/--config, --log-level and --help for run and validate. Returns -1 to exit with *rc. */
static int parse_cmd_opts(int argc, char **argv, const char *cmd, const char *help, cmd_opts *o, int *rc)
{
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"log-level", required_argument, NULL, 'l'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:l:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            o->config = optarg;
            break;
        case 'l':
            o->log_level = optarg;
            break;
        case 'h':
            fputs(help, stdout);
            *rc = 0;
            return -1;
        default:
            fprintf(stderr, "Run 'canopy %s --help' for usage.\n", cmd);
            *rc = 2;
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "canopy %s: unexpected argument '%s'\n", cmd, argv[optind]);
        *rc = 2;
        return -1;
    }
    if (o->log_level) {
        int level = cn_log_level_parse(o->log_level);
        if (level < 0) {
            fprintf(stderr, "canopy %s: --log-level must be debug, info, warn or error\n", cmd);
            *rc = 2;
            return -1;
        }
        cn_log_set_level((cn_log_level)level);
    }
    return 0;
}

static int cmd_validate(int argc, char **argv)
{
    static const char help[] =
        "Usage: canopy validate -c FILE\n"
        "\n"
        "Builds and checks the same component graph 'canopy run' builds, without\n"
        "opening any listener or file. Exits 0 when the config is good; otherwise\n"
        "prints every error as FILE:LINE:COL: message on stderr and exits 1.\n"
        "\n"
        "  -c, --config FILE   the config to check (required)\n"
        "  -h, --help          this help\n";
    cmd_opts o = {0};
    int rc = 0;
    if (parse_cmd_opts(argc, argv, "validate", help, &o, &rc) != 0)
        return rc;
    if (!o.config) {
        fprintf(stderr, "canopy validate: -c FILE is required\n");
        return 2;
    }
    cn_diag d = {0};
    cn_service *svc = load_service(o.config, &d);
    print_diag(&d);
    rc = svc ? 0 : 1;
    if (svc)
        printf("%s: ok (%zu pipelines)\n", o.config, svc->n_pipelines);
    cn_service_free(svc);
    cn_diag_free(&d);
    return rc;
}

/*
 * SIGHUP: the running service, or the one built from the file now. A file with
 * errors changes nothing. NULL only when neither the new nor the old config
 * could be started again (then the collector exits and its service manager
 * restarts it).
 */
static cn_service *reload(cn_service *running, const char *path)
{
    cn_info("canopy", "SIGHUP: reloading %s", path ? path : "the embedded default config");
    cn_diag d = {0};
    cn_service *next = load_service(path, &d);
    for (size_t i = 0; i < d.n_errors; i++)
        cn_error("reload", "%s", d.errors[i] ? d.errors[i] : "error");
    cn_diag_free(&d);
    if (!next) {
        cn_error("reload", "the new config has errors; still running the previous one");
        return running;
    }
    /* What the old service ran on, to fall back to if the new one cannot start. */
    cn_document *previous = cn_document_copy(running->doc);
    next = cn_service_reload(running, next);
    if (cn_service_start(next) == 0) {
        cn_document_free(previous);
        cn_info("canopy", "reloaded");
        return next;
    }
    cn_error("reload", "the new config failed to start; going back to the previous one");
    cn_service_stop(next);
    cn_service_free(next);
    cn_diag_free(&d);
    cn_service *back = previous ? cn_service_build(previous, &d) : NULL;
    cn_diag_free(&d);
    if (back && cn_service_start(back) == 0)
        return back;
    cn_error("reload", "the previous config failed to start again; exiting");
    if (back) {
        cn_service_stop(back);
        cn_service_free(back);
    }
    return NULL;
}

static int cmd_run(int argc, char **argv)
{
    static const char help[] =
        "Usage: canopy run [-c FILE] [--log-level LEVEL]\n"
        "\n"
        "Runs the collector until SIGINT or SIGTERM, then drains in-flight data into\n"
        "the exporters for up to service.shutdown_timeout. SIGHUP reloads the config:\n"
        "a file with errors is logged (FILE:LINE:COL) and the running config stays;\n"
        "a good one takes over without losing acked data, and receivers whose config\n"
        "did not change keep their agents' connections.\n"
        "\n"
        "  -c, --config FILE    config to run; without it, the embedded default\n"
        "                       (config/canopy.yaml in the source tree)\n"
        "  -l, --log-level LVL  debug, info, warn or error; overrides\n"
        "                       service.telemetry.logs.level\n"
        "  -h, --help           this help\n";
    cmd_opts o = {0};
    int rc = 0;
    if (parse_cmd_opts(argc, argv, "run", help, &o, &rc) != 0)
        return rc;
    /* Signals are taken synchronously by this thread; every other thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    cn_diag d = {0};
    cn_service *svc = load_service(o.config, &d);
    print_diag(&d);
    cn_diag_free(&d);
    if (!svc)
        return 1;
    if (!o.log_level && svc->settings.telemetry.logs.level)
        cn_log_set_level((cn_log_level)cn_log_level_parse(svc->settings.telemetry.logs.level));
    cn_info("canopy", "canopy %s starting with %s (%zu pipelines)", CANOPY_VERSION,
            o.config ? o.config : "the embedded default config", svc->n_pipelines);
    if (cn_service_start(svc) != 0) {
        cn_error("canopy", "start failed; shutting down");
        cn_service_stop(svc);
        cn_service_free(svc);
        return 1;
    }
    cn_info("canopy", "ready");
    cn_notify_service_manager("READY=1");
    int sig = 0;
    while (sigwait(&sigs, &sig) == 0 && sig == SIGHUP) {
        svc = reload(svc, o.config);
        if (!svc)
            return 1;
    }
    cn_info("canopy", "%s received: draining (up to %lld ms)", sig == SIGINT ? "SIGINT" : "SIGTERM",
            (long long)svc->settings.shutdown_timeout);
    cn_notify_service_manager("STOPPING=1");
    int64_t started = cn_mono_ms();
    cn_service_stop(svc);
    cn_info("canopy", "stopped in %lld ms", (long long)(cn_mono_ms() - started));
    cn_service_free(svc);
    cn_metrics_reset();
    return 0;
}

static int cmd_components(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        puts("Usage: canopy components\n\nLists the compiled-in receivers, processors, exporters and extensions.");
        return 0;
    }
    for (cn_kind kind = 0; kind < CN_N_KINDS; kind++) {
        printf("%ss:\n", cn_kind_name(kind));
        for (size_t i = 0; cn_plugins[i]; i++)
            if (cn_plugins[i]->kind == kind)
                printf("  %-16s %s\n", cn_plugins[i]->type, cn_plugins[i]->description);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("canopy %s\n", CANOPY_VERSION);
        return 0;
    }
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "validate") == 0)
        return cmd_validate(argc - 1, argv + 1);
    if (strcmp(cmd, "components") == 0)
        return cmd_components(argc - 1, argv + 1);
    if (strcmp(cmd, "task") == 0)
        return cn_task_command(argc - 1, argv + 1);
    if (strcmp(cmd, "docs") == 0) {
        if (argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            puts("Usage: canopy docs\n\nPrints the configuration reference, generated from every compiled-in\n"
                 "component's declared options, as Markdown (docs/configuration.md).");
            return 0;
        }
        cn_docs_write(stdout);
        return 0;
    }
    fprintf(stderr, "canopy: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
