/*
 * Fuzz target: a config file, as `canopy validate` and `canopy run` read it.
 * cn_document_parse + cn_service_build (the whole component graph: every
 * plugin's options and cb_check, pipelines, tasks) + cn_service_free.
 * cn_service_build starts nothing (no listener, thread or file), which is
 * what makes this safe to run millions of times; cn_service_start is never
 * called here.
 *
 * Invariants beyond "no crash, no leak, no UB":
 *  - a config is refused only with at least one error, and every error
 *    reads "FILE:LINE:COL: message" with LINE and COL >= 1 (the validate
 *    contract);
 *  - every node of a parsed document has a position, and map keys are scalars.
 */
#include <stdbool.h>
#include <string.h>

#include "canopy/log.h"
#include "fuzz.h"
#include "service.h"

#define FUZZ_FILE "fuzz.yaml"
/* Configs are small; larger inputs only slow the search down. */
#define FUZZ_MAX_CONFIG (64 * 1024)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cn_log_set_level(CN_LOG_OFF); /* "configured but not used" warnings */
    /* A fixed environment for ${env:...}: what the fuzzer finds must replay anywhere. */
    setenv("CANOPY_FUZZ_DIR", "/tmp/canopy-fuzz", 1);
    setenv("CANOPY_FUZZ_EMPTY", "", 1);
    return 0;
}

static void check_node(const cn_node *n, int depth)
{
    FUZZ_CHECK(n != NULL);
    FUZZ_CHECK(depth <= 70);
    FUZZ_CHECK(n->file && strcmp(n->file, FUZZ_FILE) == 0);
    FUZZ_CHECK(n->line >= 1 && n->col >= 1);
    switch (n->kind) {
    case CN_NODE_SCALAR:
        FUZZ_CHECK(n->scalar != NULL);
        break;
    case CN_NODE_MAP:
        for (size_t i = 0; i < n->n; i++) {
            FUZZ_CHECK(n->keys[i] && n->keys[i]->kind == CN_NODE_SCALAR);
            check_node(n->keys[i], depth + 1);
            check_node(n->items[i], depth + 1);
        }
        break;
    case CN_NODE_SEQ:
        for (size_t i = 0; i < n->n; i++)
            check_node(n->items[i], depth + 1);
        break;
    default:
        FUZZ_CHECK(!"unknown node kind");
    }
}

/* "fuzz.yaml:LINE:COL: message" */
static void check_error(const char *e)
{
    FUZZ_CHECK(e != NULL);
    const char *p = e;
    FUZZ_CHECK(strncmp(p, FUZZ_FILE ":", strlen(FUZZ_FILE) + 1) == 0);
    p += strlen(FUZZ_FILE) + 1;
    char *end;
    long line = strtol(p, &end, 10);
    FUZZ_CHECK(end != p && *end == ':' && line >= 1);
    p = end + 1;
    long col = strtol(p, &end, 10);
    FUZZ_CHECK(end != p && end[0] == ':' && end[1] == ' ' && col >= 1);
    FUZZ_CHECK(end[2] != '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_CONFIG)
        return 0;
    cn_diag d = {0};
    cn_document *doc = cn_document_parse(FUZZ_FILE, (const char *)data, size, &d);
    bool built = false;
    if (doc) {
        FUZZ_CHECK(doc->root && doc->root->kind == CN_NODE_MAP);
        check_node(doc->root, 0);
        size_t errors_before = d.n_errors;
        cn_service *svc = cn_service_build(doc, &d); /* takes doc */
        if (svc) {
            built = true;
            FUZZ_CHECK(d.n_errors == errors_before);
            FUZZ_CHECK(svc->tasks != NULL);
            for (size_t i = 0; i < svc->n_pipelines; i++) {
                const cn_pipeline *p = svc->pipelines[i];
                FUZZ_CHECK(p->name && p->n_receivers > 0 && p->n_exporters > 0);
            }
            cn_service_free(svc);
        }
    }
    if (!built)
        FUZZ_CHECK(d.n_errors > 0);
    for (size_t i = 0; i < d.n_errors; i++)
        check_error(d.errors[i]);
    cn_diag_free(&d);
    return 0;
}
