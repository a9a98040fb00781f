/*
 * Config maps: every component declares its options once, as an array of
 * cn_option. This file turns a YAML map into the component's context struct
 * using that array: defaults, types, bounds and unknown keys.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/config.h"
#include "pem.h"

#define FIELD(ctx, opt, type) ((type *)((char *)(ctx) + (opt)->offset))

static const char *type_name(cn_opt_type t)
{
    switch (t) {
    case CN_OPT_STR: return "a string";
    case CN_OPT_INT: return "an integer";
    case CN_OPT_BOOL: return "true or false";
    case CN_OPT_DURATION: return "a duration such as 500ms, 10s or 5m";
    case CN_OPT_SIZE: return "a size such as 512KiB or 4MiB";
    case CN_OPT_MODE: return "an octal file mode such as 0660";
    case CN_OPT_ENUM: return "one of the listed choices";
    case CN_OPT_STRLIST: return "a list of strings";
    case CN_OPT_MAP: return "a map";
    case CN_OPT_STRMAP: return "a map of strings";
    }
    return "a value";
}

static void list_choices(const cn_option *opt, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; opt->choices && opt->choices[i] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", opt->choices[i]);
}

static void list_known(const cn_option *opts, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (const cn_option *o = opts; o->name && used < len; o++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", o == opts ? "" : ", ", o->name);
}

static int apply_given(const cn_option *opts, void *ctx, const cn_node *node, cn_diag *d);

static int check_bounds(const cn_option *opt, int64_t v, const cn_node *at, cn_diag *d)
{
    if (opt->min < opt->max && (v < opt->min || v > opt->max)) {
        cn_diag_error(d, at, "%s must be between %lld and %lld", opt->name, (long long)opt->min,
                      (long long)opt->max);
        return -1;
    }
    return 0;
}

/* Sets one option from text (a scalar from YAML, or the declared default). */
static int set_scalar(const cn_option *opt, void *ctx, const char *text, const cn_node *at, cn_diag *d)
{
    int64_t v = 0;
    switch (opt->type) {
    case CN_OPT_STR: {
        char *copy = strdup(text);
        if (!copy) {
            cn_diag_error(d, at, "out of memory");
            return -1;
        }
        free(*FIELD(ctx, opt, char *));
        *FIELD(ctx, opt, char *) = copy;
        return 0;
    }
    case CN_OPT_BOOL:
        if (cn_parse_bool(text, FIELD(ctx, opt, bool)) == 0)
            return 0;
        break;
    case CN_OPT_INT:
        if (cn_parse_int(text, &v) == 0) {
            if (check_bounds(opt, v, at, d))
                return -1;
            *FIELD(ctx, opt, int64_t) = v;
            return 0;
        }
        break;
    case CN_OPT_DURATION:
    case CN_OPT_SIZE:
        if ((opt->type == CN_OPT_DURATION ? cn_parse_duration_ms(text, &v) : cn_parse_size(text, &v)) == 0) {
            if (check_bounds(opt, v, at, d))
                return -1;
            *FIELD(ctx, opt, int64_t) = v;
            return 0;
        }
        break;
    case CN_OPT_MODE: {
        char *end;
        long mode = strtol(text, &end, 8);
        if (*text && !*end && mode >= 0 && mode <= 07777) {
            *FIELD(ctx, opt, int) = (int)mode;
            return 0;
        }
        break;
    }
    case CN_OPT_ENUM:
        for (int i = 0; opt->choices[i]; i++) {
            if (strcmp(opt->choices[i], text) == 0) {
                *FIELD(ctx, opt, int) = i;
                return 0;
            }
        }
        {
            char choices[256];
            list_choices(opt, choices, sizeof choices);
            cn_diag_error(d, at, "%s: \"%s\" is not one of: %s", opt->name, text, choices);
        }
        return -1;
    case CN_OPT_STRLIST: {
        cn_strlist *l = FIELD(ctx, opt, cn_strlist);
        char **v1 = malloc(sizeof *v1);
        char *copy = strdup(text);
        if (!v1 || !copy) {
            free(v1);
            free(copy);
            cn_diag_error(d, at, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < l->n; i++)
            free(l->v[i]);
        free(l->v);
        v1[0] = copy;
        l->v = v1;
        l->n = 1;
        return 0;
    }
    case CN_OPT_MAP:
    case CN_OPT_STRMAP:
        break;
    }
    cn_diag_error(d, at, "%s: \"%s\" is not %s", opt->name, text, type_name(opt->type));
    return -1;
}

static void strlist_clear(cn_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int set_list(const cn_option *opt, void *ctx, const cn_node *seq, cn_diag *d)
{
    cn_strlist *l = FIELD(ctx, opt, cn_strlist);
    strlist_clear(l);
    if (seq->n == 0)
        return 0;
    l->v = calloc(seq->n, sizeof *l->v);
    if (!l->v) {
        cn_diag_error(d, seq, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < seq->n; i++) {
        const cn_node *item = seq->items[i];
        if (item->kind != CN_NODE_SCALAR) {
            cn_diag_error(d, item, "%s: list items must be strings, not %s", opt->name, cn_node_kind_name(item));
            return -1;
        }
        if (!(l->v[i] = strdup(item->scalar))) {
            cn_diag_error(d, item, "out of memory");
            return -1;
        }
        l->n = i + 1;
    }
    return 0;
}

/* key, value, key, value... of a map of scalars, replacing what was there. */
static int set_strmap(const cn_option *opt, void *ctx, const cn_node *map, cn_diag *d)
{
    cn_strlist *l = FIELD(ctx, opt, cn_strlist);
    strlist_clear(l);
    if (map->n == 0)
        return 0;
    if (!(l->v = calloc(2 * map->n, sizeof *l->v))) {
        cn_diag_error(d, map, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < map->n; i++) {
        const cn_node *item = map->items[i];
        if (item->kind != CN_NODE_SCALAR) {
            cn_diag_error(d, item, "%s.%s must be a string, not %s", opt->name, map->keys[i]->scalar,
                          cn_node_kind_name(item));
            return -1;
        }
        if (!(l->v[2 * i] = strdup(map->keys[i]->scalar)) || !(l->v[2 * i + 1] = strdup(item->scalar))) {
            l->n = 2 * i + 2; /* frees what was copied */
            cn_diag_error(d, item, "out of memory");
            return -1;
        }
        l->n = 2 * i + 2;
    }
    return 0;
}

static int apply_one(const cn_option *opt, void *ctx, const cn_node *value, cn_diag *d)
{
    if (opt->type == CN_OPT_STRMAP) {
        if (value->kind != CN_NODE_MAP && !value->plain_null) {
            cn_diag_error(d, value, "%s must be a map, not %s", opt->name, cn_node_kind_name(value));
            return -1;
        }
        return value->kind == CN_NODE_MAP ? set_strmap(opt, ctx, value, d) : 0;
    }
    if (opt->type == CN_OPT_MAP) {
        if (value->kind != CN_NODE_MAP && !value->plain_null) {
            cn_diag_error(d, value, "%s must be a map, not %s", opt->name, cn_node_kind_name(value));
            return -1;
        }
        /* Defaults are already set; only what the map gives is applied (and its required keys checked). */
        return value->kind == CN_NODE_MAP ? apply_given(opt->sub, (char *)ctx + opt->offset, value, d) : 0;
    }
    if (opt->type == CN_OPT_STRLIST && value->kind == CN_NODE_SEQ)
        return set_list(opt, ctx, value, d);
    if (value->kind != CN_NODE_SCALAR) {
        cn_diag_error(d, value, "%s must be %s, not %s", opt->name, type_name(opt->type), cn_node_kind_name(value));
        return -1;
    }
    if (value->plain_null && opt->type != CN_OPT_STR) {
        cn_diag_error(d, value, "%s is empty; it must be %s", opt->name, type_name(opt->type));
        return -1;
    }
    return set_scalar(opt, ctx, value->scalar, value, d);
}

static void apply_defaults(const cn_option *opts, void *ctx, const cn_node *at, cn_diag *d)
{
    for (const cn_option *o = opts; o->name; o++) {
        if (o->type == CN_OPT_MAP)
            apply_defaults(o->sub, (char *)ctx + o->offset, at, d);
        else if (o->default_value)
            set_scalar(o, ctx, o->default_value, at, d);
    }
}

int cn_options_apply(const cn_option *opts, void *ctx, const cn_node *node, cn_diag *d)
{
    size_t errors_before = d->n_errors;
    /* Defaults first, so an option given in YAML simply overrides. */
    apply_defaults(opts, ctx, node, d);
    apply_given(opts, ctx, node, d);
    return d->n_errors > errors_before ? -1 : 0;
}

/* Applies the keys a map gives, then checks required keys. */
static int apply_given(const cn_option *opts, void *ctx, const cn_node *node, cn_diag *d)
{
    size_t errors_before = d->n_errors;
    if (node) {
        for (size_t i = 0; i < node->n; i++) {
            const char *key = node->keys[i]->scalar;
            const cn_option *o = opts;
            while (o->name && strcmp(o->name, key) != 0)
                o++;
            if (!o->name) {
                char known[512];
                list_known(opts, known, sizeof known);
                cn_diag_error(d, node->keys[i], "unknown option \"%s\" (known: %s)", key, known);
                continue;
            }
            apply_one(o, ctx, node->items[i], d);
        }
    }
    for (const cn_option *o = opts; o->name; o++) {
        if (!o->required)
            continue;
        const cn_node *given = cn_node_get(node, o->name);
        if (!given || (given->kind == CN_NODE_SCALAR && given->plain_null))
            cn_diag_error(d, node, "missing required option \"%s\"", o->name);
    }
    return d->n_errors > errors_before ? -1 : 0;
}

void cn_options_free(const cn_option *opts, void *ctx)
{
    for (const cn_option *o = opts; o->name; o++) {
        switch (o->type) {
        case CN_OPT_STR:
            free(*FIELD(ctx, o, char *));
            *FIELD(ctx, o, char *) = NULL;
            break;
        case CN_OPT_STRLIST:
        case CN_OPT_STRMAP:
            strlist_clear(FIELD(ctx, o, cn_strlist));
            break;
        case CN_OPT_MAP:
            cn_options_free(o->sub, (char *)ctx + o->offset);
            break;
        default:
            break;
        }
    }
}

const cn_node *cn_options_node(const cn_node *map, const char *name)
{
    const cn_node *n = cn_node_get(map, name);
    return n ? n : map;
}

int cn_node_view(cn_node *view, const cn_node *map, const cn_option *opts, bool keep_listed)
{
    memset(view, 0, sizeof *view);
    view->kind = CN_NODE_MAP;
    if (!map || map->kind != CN_NODE_MAP) {
        if (map) {
            view->file = map->file;
            view->line = map->line;
            view->col = map->col;
        }
        return 0;
    }
    *view = *map;
    view->n = 0;
    view->keys = calloc(map->n + 1, sizeof *view->keys);
    view->items = calloc(map->n + 1, sizeof *view->items);
    if (!view->keys || !view->items) {
        cn_node_view_free(view);
        return -1;
    }
    for (size_t i = 0; i < map->n; i++) {
        bool listed = false;
        for (const cn_option *o = opts; o->name; o++)
            listed |= strcmp(o->name, map->keys[i]->scalar) == 0;
        if (listed == keep_listed) {
            view->keys[view->n] = map->keys[i];
            view->items[view->n++] = map->items[i];
        }
    }
    return 0;
}

void cn_node_view_free(cn_node *view)
{
    free(view->keys);
    free(view->items);
    view->keys = NULL;
    view->items = NULL;
    view->n = 0;
}

int cn_diag_check_pem(cn_diag *d, const cn_node *at, const char *key, const char *path, const char *what)
{
    char *text = cn_pem_read(path, NULL);
    if (!text) {
        cn_diag_error(d, at, "tls.%s: cannot read %s: %s", key, path,
                      errno == EINVAL ? "not a regular file" : strerror(errno));
        return -1;
    }
    bool found = cn_pem_has_block(text, what);
    cn_pem_free_secret(text); /* it may be the private key */
    if (!found) {
        cn_diag_error(d, at, "tls.%s: %s holds no PEM \"%s\" block", key, path, what);
        return -1;
    }
    return 0;
}
