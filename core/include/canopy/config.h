/*
 * Configuration: a YAML document parsed with libyaml into a tree of nodes that
 * remember file, line and column, with ${env:VAR} and ${env:VAR:-default}
 * substituted in scalars. Components declare their options once, as a config
 * map (an array of cn_option, as Fluent Bit does); the core uses that map to
 * parse, default, validate and document every option.
 */
#ifndef CANOPY_CONFIG_H
#define CANOPY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/common.h"

typedef enum cn_node_kind {
    CN_NODE_SCALAR,
    CN_NODE_MAP,
    CN_NODE_SEQ,
} cn_node_kind;

typedef struct cn_node cn_node;
struct cn_node {
    cn_node_kind kind;
    const char *file;  /* shared, owned by the document */
    int line, col;     /* 1-based */
    char *scalar;      /* SCALAR: value after env substitution */
    bool plain_null;   /* SCALAR: an unquoted "", "~" or "null" */
    size_t n;          /* MAP: pairs; SEQ: items */
    cn_node **keys;    /* MAP: scalar key nodes */
    cn_node **items;   /* MAP: values; SEQ: items */
};

/* Errors are collected, not printed, so validate can show all of them. */
typedef struct cn_diag {
    size_t n_errors;
    char **errors;  /* each "FILE:LINE:COL: message" */
} cn_diag;

void cn_diag_error(cn_diag *d, const cn_node *at, const char *fmt, ...) CN_PRINTF(3, 4);
/* For errors with no node (a file that cannot be opened). */
void cn_diag_error_at(cn_diag *d, const char *file, int line, int col, const char *fmt, ...)
    CN_PRINTF(5, 6);
/*
 * For a TLS option `tls.<key>` naming a PEM file: an error at `at` unless the
 * file is readable and holds a block whose label contains `what`
 * ("CERTIFICATE", "PRIVATE KEY"). Returns 0 or -1. Shared by every component
 * with TLS files, so they all refuse the same mistakes the same way.
 */
int cn_diag_check_pem(cn_diag *d, const cn_node *at, const char *key, const char *path, const char *what);
void cn_diag_free(cn_diag *d);

typedef struct cn_document {
    char *file;
    cn_node *root;
} cn_document;

/* Parses YAML text; `file` names it in errors. Returns NULL after adding errors. */
cn_document *cn_document_parse(const char *file, const char *text, size_t len, cn_diag *d);
cn_document *cn_document_load(const char *path, cn_diag *d);
/* A deep copy (NULL when out of memory), e.g. to rebuild a config that is about to be replaced. */
cn_document *cn_document_copy(const cn_document *doc);
void cn_document_free(cn_document *doc);

/* Looks up a key in a MAP node; NULL when absent or node is not a map. */
const cn_node *cn_node_get(const cn_node *map, const char *key);
/* Describes a node's kind for messages: "a map", "a list", "a scalar". */
const char *cn_node_kind_name(const cn_node *n);

/*
 * Expands ${env:VAR} and ${env:VAR:-default} in text. "$$" is a literal "$".
 * Returns a new string, or NULL with *err set to a static message.
 */
char *cn_env_expand(const char *text, const char **err);

/* "10ms", "1s", "2.5s", "10m", "1h"; a bare number is milliseconds. */
int cn_parse_duration_ms(const char *text, int64_t *out_ms);
/* "512", "4KiB", "4MiB", "1GiB", "4KB", "4MB"; bytes. */
int cn_parse_size(const char *text, int64_t *out_bytes);
int cn_parse_bool(const char *text, bool *out);
int cn_parse_int(const char *text, int64_t *out);

/* ---- config maps ---------------------------------------------------------- */

typedef enum cn_opt_type {
    CN_OPT_STR,       /* char *, owned; NULL when unset and no default */
    CN_OPT_INT,       /* int64_t */
    CN_OPT_BOOL,      /* bool */
    CN_OPT_DURATION,  /* int64_t milliseconds */
    CN_OPT_SIZE,      /* int64_t bytes */
    CN_OPT_MODE,      /* int, an octal file mode such as "0660" */
    CN_OPT_ENUM,      /* int, index into choices */
    CN_OPT_STRLIST,   /* cn_strlist; a scalar is taken as a one-item list */
    CN_OPT_MAP,       /* a nested struct at offset, described by `sub` */
    /*
     * cn_strlist of key, value, key, value...: a map of scalars taken as they
     * are, for settings passed to a library unchanged (e.g. librdkafka's
     * properties). The plugin checks the keys; cn_node_get on the option's
     * node finds a key's place for errors.
     */
    CN_OPT_STRMAP,
} cn_opt_type;

typedef struct cn_strlist {
    size_t n;
    char **v;
} cn_strlist;

typedef struct cn_option {
    cn_opt_type type;
    const char *name;
    const char *default_value;  /* text, parsed like YAML input; NULL = no default */
    size_t offset;              /* into the context struct */
    const char *description;
    const char *const *choices; /* ENUM: NULL-terminated */
    const struct cn_option *sub;/* MAP: nested option table */
    int64_t min, max;           /* INT/DURATION/SIZE bounds when min < max */
    bool required;
} cn_option;

#define CN_OPT_END {0}

/*
 * Fills ctx from a MAP node (or from defaults only, when node is NULL).
 * Unknown keys, wrong types and out-of-range values are errors in d.
 * Returns 0 when no error was added.
 */
int cn_options_apply(const cn_option *opts, void *ctx, const cn_node *node, cn_diag *d);
/* Frees what cn_options_apply allocated (strings, lists); safe on zeroed ctx. */
void cn_options_free(const cn_option *opts, void *ctx);
/*
 * A shallow copy of a map node with only the keys that `opts` names
 * (keep_listed) or only those it does not: for applying part of a map, such
 * as the settings one component shares with another. Free with
 * cn_node_view_free. Returns -1 when out of memory.
 */
int cn_node_view(cn_node *view, const cn_node *map, const cn_option *opts, bool keep_listed);
void cn_node_view_free(cn_node *view);
/* Node of an option inside a component's map, for errors in cb_check. */
const cn_node *cn_options_node(const cn_node *map, const char *name);

#endif
