/*
 * YAML to a node tree with positions, using libyaml's event parser. Only what
 * configs need: maps, lists and scalars. Anchors/aliases and duplicate keys
 * are rejected so that what a user reads is what canopy runs.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "canopy/config.h"

/* ---- diagnostics ----------------------------------------------------------- */

static void diag_addv(cn_diag *d, const char *file, int line, int col, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t need = strlen(file ? file : "<config>") + strlen(msg) + 48;
    char *text = malloc(need);
    char **grown = realloc(d->errors, (d->n_errors + 1) * sizeof *d->errors);
    if (!grown) {
        /* Out of memory even for the list: the message is lost, and so would be the
         * failure; keep the error in the last slot there is, or count one. */
        free(text);
        if (d->n_errors == 0 && (d->errors = malloc(sizeof *d->errors))) {
            d->errors[0] = NULL;
            d->n_errors = 1;
        }
        return;
    }
    d->errors = grown;
    if (!text) {
        /* Still fail validation even when the message cannot be kept. */
        d->errors[d->n_errors++] = NULL;
        return;
    }
    snprintf(text, need, "%s:%d:%d: %s", file ? file : "<config>", line, col, msg);
    d->errors[d->n_errors++] = text;
}

void cn_diag_error(cn_diag *d, const cn_node *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_addv(d, at ? at->file : NULL, at ? at->line : 1, at ? at->col : 1, fmt, ap);
    va_end(ap);
}

void cn_diag_error_at(cn_diag *d, const char *file, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_addv(d, file, line, col, fmt, ap);
    va_end(ap);
}

void cn_diag_free(cn_diag *d)
{
    for (size_t i = 0; i < d->n_errors; i++)
        free(d->errors[i]);
    free(d->errors);
    d->errors = NULL;
    d->n_errors = 0;
}

/* ---- nodes ------------------------------------------------------------------ */

static void node_free(cn_node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys)
            node_free(n->keys[i]);
        node_free(n->items[i]);
    }
    free(n->keys);
    free(n->items);
    free(n->scalar);
    free(n);
}

const cn_node *cn_node_get(const cn_node *map, const char *key)
{
    if (!map || map->kind != CN_NODE_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i]->scalar, key) == 0)
            return map->items[i];
    return NULL;
}

const char *cn_node_kind_name(const cn_node *n)
{
    if (!n)
        return "nothing";
    switch (n->kind) {
    case CN_NODE_MAP:
        return "a map";
    case CN_NODE_SEQ:
        return "a list";
    default:
        return n->plain_null ? "empty" : "a scalar";
    }
}

static int node_append(cn_node *parent, cn_node *key, cn_node *item)
{
    size_t n = parent->n + 1;
    cn_node **items = realloc(parent->items, n * sizeof *items);
    if (!items)
        return -1;
    parent->items = items;
    if (parent->kind == CN_NODE_MAP) {
        cn_node **keys = realloc(parent->keys, n * sizeof *keys);
        if (!keys)
            return -1;
        parent->keys = keys;
        keys[parent->n] = key;
    }
    items[parent->n] = item;
    parent->n = n;
    return 0;
}

/* ---- parsing ------------------------------------------------------------------ */

typedef struct parse_state {
    yaml_parser_t parser;
    const char *file;
    cn_diag *diag;
    int depth;
} parse_state;

static cn_node *node_new(parse_state *st, cn_node_kind kind, const yaml_mark_t *mark)
{
    cn_node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->kind = kind;
    n->file = st->file;
    n->line = (int)mark->line + 1;
    n->col = (int)mark->column + 1;
    return n;
}

static int next_event(parse_state *st, yaml_event_t *ev)
{
    if (yaml_parser_parse(&st->parser, ev))
        return 0;
    const yaml_parser_t *p = &st->parser;
    const yaml_mark_t *m = p->problem_mark.line || p->problem_mark.column ? &p->problem_mark : &p->context_mark;
    cn_diag_error_at(st->diag, st->file, (int)m->line + 1, (int)m->column + 1, "invalid YAML: %s%s%s",
                     p->problem ? p->problem : "syntax error", p->context ? " " : "",
                     p->context ? p->context : "");
    return -1;
}

static cn_node *parse_node(parse_state *st, yaml_event_t *ev);

static cn_node *parse_scalar(parse_state *st, yaml_event_t *ev)
{
    cn_node *n = node_new(st, CN_NODE_SCALAR, &ev->start_mark);
    if (!n)
        return NULL;
    const char *raw = (const char *)ev->data.scalar.value;
    bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    n->plain_null = plain && (raw[0] == '\0' || strcmp(raw, "~") == 0 || strcmp(raw, "null") == 0);
    const char *err = NULL;
    n->scalar = cn_env_expand(raw, &err);
    if (!n->scalar) {
        cn_diag_error(st->diag, n, "%s in \"%s\"", err ? err : "out of memory", raw);
        node_free(n);
        return NULL;
    }
    return n;
}

static cn_node *parse_collection(parse_state *st, yaml_event_t *start, cn_node_kind kind)
{
    cn_node *n = node_new(st, kind, &start->start_mark);
    if (!n)
        return NULL;
    yaml_event_type_t end = kind == CN_NODE_MAP ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT;
    for (;;) {
        yaml_event_t ev;
        if (next_event(st, &ev) != 0)
            goto fail;
        if (ev.type == end) {
            yaml_event_delete(&ev);
            return n;
        }
        cn_node *key = NULL;
        if (kind == CN_NODE_MAP) {
            key = parse_node(st, &ev);
            yaml_event_delete(&ev);
            if (!key)
                goto fail;
            if (key->kind != CN_NODE_SCALAR) {
                cn_diag_error(st->diag, key, "a map key must be a plain name, not %s", cn_node_kind_name(key));
                node_free(key);
                goto fail;
            }
            if (cn_node_get(n, key->scalar)) {
                cn_diag_error(st->diag, key, "duplicate key \"%s\"", key->scalar);
                node_free(key);
                goto fail;
            }
            if (next_event(st, &ev) != 0) {
                node_free(key);
                goto fail;
            }
        }
        cn_node *item = parse_node(st, &ev);
        yaml_event_delete(&ev);
        if (!item || node_append(n, key, item) != 0) {
            node_free(key);
            node_free(item);
            goto fail;
        }
    }
fail:
    node_free(n);
    return NULL;
}

static cn_node *parse_node(parse_state *st, yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return parse_scalar(st, ev);
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        /* Deep nesting only comes from hostile input; keep the recursion bounded. */
        if (++st->depth > 64) {
            cn_diag_error_at(st->diag, st->file, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                             "nesting deeper than 64 levels");
            return NULL;
        }
        cn_node *n = parse_collection(st, ev, ev->type == YAML_MAPPING_START_EVENT ? CN_NODE_MAP : CN_NODE_SEQ);
        st->depth--;
        return n;
    }
    case YAML_ALIAS_EVENT:
        cn_diag_error_at(st->diag, st->file, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                         "YAML aliases (*name) are not supported; repeat the value");
        return NULL;
    default:
        cn_diag_error_at(st->diag, st->file, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                         "unexpected YAML event");
        return NULL;
    }
}

cn_document *cn_document_parse(const char *file, const char *text, size_t len, cn_diag *d)
{
    cn_document *doc = calloc(1, sizeof *doc);
    if (!doc || !(doc->file = strdup(file))) {
        free(doc);
        cn_diag_error_at(d, file, 1, 1, "out of memory");
        return NULL;
    }
    parse_state st = {.file = doc->file, .diag = d};
    if (!yaml_parser_initialize(&st.parser)) {
        cn_document_free(doc);
        cn_diag_error_at(d, file, 1, 1, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&st.parser, (const unsigned char *)text, len);
    size_t errors_before = d->n_errors;
    yaml_event_t ev;
    bool done = false;
    while (!done && next_event(&st, &ev) == 0) {
        switch (ev.type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_START_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            if (doc->root) {
                cn_diag_error_at(d, file, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                                 "only one YAML document is allowed");
                done = true;
                break;
            }
            doc->root = parse_node(&st, &ev);
            if (!doc->root)
                done = true;
            else if (doc->root->kind != CN_NODE_MAP && !doc->root->plain_null) {
                cn_diag_error(d, doc->root, "the config must be a map, not %s", cn_node_kind_name(doc->root));
                done = true;
            }
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&st.parser);
    if (d->n_errors > errors_before) {
        cn_document_free(doc);
        return NULL;
    }
    if (!doc->root || doc->root->kind != CN_NODE_MAP) {
        /* An empty file is an empty map. */
        yaml_mark_t m = {0};
        node_free(doc->root);
        doc->root = node_new(&st, CN_NODE_MAP, &m);
        if (!doc->root) {
            cn_document_free(doc);
            cn_diag_error_at(d, file, 1, 1, "out of memory");
            return NULL;
        }
    }
    return doc;
}

cn_document *cn_document_load(const char *path, cn_diag *d)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cn_diag_error_at(d, path, 1, 1, "cannot open config: %s", strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                cn_diag_error_at(d, path, 1, 1, "config is larger than 16 MiB");
                goto fail;
            }
            char *grown = realloc(text, cap);
            if (!grown) {
                cn_diag_error_at(d, path, 1, 1, "out of memory");
                goto fail;
            }
            text = grown;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        cn_diag_error_at(d, path, 1, 1, "cannot read config: %s", strerror(errno));
        goto fail;
    }
    fclose(f);
    cn_document *doc = cn_document_parse(path, text ? text : "", len, d);
    free(text);
    return doc;
fail:
    fclose(f);
    free(text);
    return NULL;
}

void cn_document_free(cn_document *doc)
{
    if (!doc)
        return;
    node_free(doc->root);
    free(doc->file);
    free(doc);
}

static cn_node *node_copy(const cn_node *n, const char *file)
{
    cn_node *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    *c = *n;
    c->file = file;
    c->scalar = NULL;
    c->keys = NULL;
    c->items = NULL;
    c->n = 0;
    if ((n->scalar && !(c->scalar = strdup(n->scalar))) ||
        (n->n && !(c->items = calloc(n->n, sizeof *c->items))) ||
        (n->keys && !(c->keys = calloc(n->n ? n->n : 1, sizeof *c->keys))))
        goto fail;
    for (; c->n < n->n; c->n++) {
        if ((n->keys && !(c->keys[c->n] = node_copy(n->keys[c->n], file))) ||
            !(c->items[c->n] = node_copy(n->items[c->n], file))) {
            if (c->keys)
                node_free(c->keys[c->n]);
            goto fail;
        }
    }
    return c;
fail:
    node_free(c);
    return NULL;
}

cn_document *cn_document_copy(const cn_document *doc)
{
    cn_document *c = calloc(1, sizeof *c);
    if (!c || !(c->file = strdup(doc->file)) || !(c->root = node_copy(doc->root, c->file))) {
        cn_document_free(c);
        return NULL;
    }
    return c;
}
