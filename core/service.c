/*
 * Building the component graph from a config document, the way OpenTelemetry
 * Collector does: components are declared in receivers/processors/exporters,
 * and only those named by a pipeline under service::pipelines run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "docs.h"
#include "service.h"

static const cn_option exporter_common_options[] = {
    {CN_OPT_MAP, "sending_queue", NULL, offsetof(cn_exporter_common, sending_queue),
     "The exporter's own bounded queue; when it is full, chunks for this exporter are dropped and counted.",
     .sub = (const cn_option[]){
         {CN_OPT_INT, "queue_size", "256", 0, "Chunks waiting for this exporter.", .min = 1, .max = 1000000},
         CN_OPT_END}},
    {CN_OPT_MAP, "retry_on_failure", NULL, offsetof(cn_exporter_common, retry_on_failure),
     "Retries of a chunk the exporter could not deliver for a transient reason.",
     .sub = (const cn_option[]){
         {CN_OPT_BOOL, "enabled", "true", offsetof(cn_exporter_common, retry_on_failure.enabled) -
                                               offsetof(cn_exporter_common, retry_on_failure),
          "Retry transient failures."},
         {CN_OPT_DURATION, "initial_interval", "1s",
          offsetof(cn_exporter_common, retry_on_failure.initial_interval) -
              offsetof(cn_exporter_common, retry_on_failure),
          "Wait before the first retry; doubles each time, with jitter."},
         {CN_OPT_DURATION, "max_interval", "30s",
          offsetof(cn_exporter_common, retry_on_failure.max_interval) -
              offsetof(cn_exporter_common, retry_on_failure),
          "Longest wait between retries."},
         {CN_OPT_DURATION, "max_elapsed_time", "5m",
          offsetof(cn_exporter_common, retry_on_failure.max_elapsed_time) -
              offsetof(cn_exporter_common, retry_on_failure),
          "Give up on a chunk (drop and count it) after retrying this long; 0 retries forever. With a spool, "
          "data is never given up: it waits on disk."},
         CN_OPT_END}},
    {CN_OPT_MAP, "spool", NULL, offsetof(cn_exporter_common, spool),
     "Makes the exporter durable: its queue lives on disk, and its pipeline keeps an intake log (in "
     "<directory>/intake, with these settings) in which a batch is written before it is acked. After a crash "
     "or restart the exporter gets what it had not delivered, exactly once.",
     .sub = (const cn_option[]){
         {CN_OPT_STR, "directory", NULL, offsetof(cn_spool_options, directory),
          "Where the spool lives; setting it turns the spool on. One directory per exporter."},
         {CN_OPT_SIZE, "max_size", "1GiB", offsetof(cn_spool_options, max_size),
          "Most bytes the spool may hold; then when_full applies.", .min = 1 << 20, .max = 1LL << 50},
         {CN_OPT_ENUM, "fsync", "interval", offsetof(cn_spool_options, fsync),
          "always: fsync before acking each batch; interval: fsync every fsync_interval (a process crash "
          "loses nothing, a power loss at most that interval); never: leave it to the OS.",
          .choices = (const char *const[]){"always", "interval", "never", NULL}},
         {CN_OPT_DURATION, "fsync_interval", "200ms", offsetof(cn_spool_options, fsync_interval),
          "How often the spool is fsynced with fsync: interval.", .min = 1, .max = 60000},
         {CN_OPT_ENUM, "when_full", "block", offsetof(cn_spool_options, when_full),
          "block: refuse new batches with a retryable error, so agents keep them and resend; drop_oldest: "
          "delete the oldest records (counted) to make room.",
          .choices = (const char *const[]){"block", "drop_oldest", NULL}},
         {CN_OPT_SIZE, "segment_size", "16MiB", offsetof(cn_spool_options, segment_size),
          "Size of each spool file; whole files are deleted once delivered.", .min = 64 * 1024,
          .max = 1LL << 32},
         CN_OPT_END}},
    CN_OPT_END};

static const cn_option service_options[] = {
    {CN_OPT_DURATION, "shutdown_timeout", "10s", offsetof(cn_service_settings, shutdown_timeout),
     "On SIGINT/SIGTERM, how long to drain in-flight data into the exporters before giving up (what is left is "
     "counted as dropped)."},
    {CN_OPT_INT, "pipeline_queue_size", "1024", offsetof(cn_service_settings, pipeline_queue_size),
     "Batches waiting at each pipeline's input; when full, agents get a retryable 'overloaded' reply.",
     .min = 1, .max = 1000000},
    {CN_OPT_SIZE, "memory_limit", "16MiB", offsetof(cn_service_settings, memory_limit),
     "Most memory decoded batches may hold (queued, merging, exporting). Within a fifth of it the nng receiver "
     "pauses, taking no request for up to 250 ms; past it, agents get a retryable 'overloaded' reply and resend "
     "later. A slow exporter slows intake instead of growing the process.",
     .min = 1 << 20, .max = 1LL << 40},
    {CN_OPT_MAP, "telemetry", NULL, offsetof(cn_service_settings, telemetry), "The collector's own telemetry.",
     .sub = (const cn_option[]){
         {CN_OPT_MAP, "logs", NULL, 0, "Logging.",
          .sub = (const cn_option[]){{CN_OPT_STR, "level", "info", 0, "debug, info, warn or error."}, CN_OPT_END}},
         {CN_OPT_MAP, "http", NULL, offsetof(cn_service_settings, telemetry.http) -
                                        offsetof(cn_service_settings, telemetry),
          "Admin HTTP API (/healthz, /metrics, /api/v1/tasks).",
          .sub = cn_admin_http_options},
         CN_OPT_END}},
    CN_OPT_END};

const cn_option *cn_service_options(void) { return service_options; }
const cn_option *cn_exporter_common_options(void) { return exporter_common_options; }

/* ---- helpers ----------------------------------------------------------------- */

const char *cn_component_id(const cn_component *c) { return c->id; }
const cn_node *cn_component_node(const cn_component *c) { return c->node; }
const char *cn_component_labels(const cn_component *c) { return c->labels; }
cn_task_registry *cn_component_tasks(const cn_component *c) { return c->svc->tasks; }

const char *cn_kind_name(cn_kind k)
{
    static const char *const names[CN_N_KINDS] = {"receiver", "processor", "exporter", "extension"};
    return k < CN_N_KINDS ? names[k] : "component";
}
#define kind_name cn_kind_name

bool cn_component_peer(const cn_component *self, cn_kind kind, const char *id, const cn_node **node,
                       const char **type)
{
    const cn_service *svc = self->svc;
    for (size_t i = 0; i < svc->n_components; i++) {
        const cn_component *c = svc->components[i];
        if (c->kind == kind && strcmp(c->id, id) == 0) {
            *node = c->node;
            *type = c->type;
            return true;
        }
    }
    return false;
}

void cn_component_free(cn_component *c)
{
    if (!c)
        return;
    if (c->ctx) {
        if (c->plugin && c->plugin->cb_destroy)
            c->plugin->cb_destroy(c->ctx);
        cn_options_free(c->options, c->ctx);
        free(c->ctx);
    }
    if (c->rt) {
        cn_exporter_spool_free(c);
        cn_exporter_runtime_free(c);
        cn_options_free(exporter_common_options, &c->rt->common);
        free(c->rt);
    }
    free(c->feeds);
    free(c->id);
    free(c->type);
    free(c);
}

/* "type" or "type/name" of [A-Za-z0-9_.-]: ids appear in metric labels, paths and logs. */
static int valid_id(const char *id)
{
    const char *slash = strchr(id, '/');
    if (!id[0] || id[0] == '/' || (slash && (!slash[1] || strchr(slash + 1, '/'))))
        return 0;
    for (const char *p = id; *p; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                  ch == '-' || ch == '.' || ch == '/';
        if (!ok)
            return 0;
    }
    return 1;
}

static void list_types(cn_kind kind, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; cn_plugins[i] && used < len; i++)
        if (cn_plugins[i]->kind == kind)
            used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? ", " : "", cn_plugins[i]->type);
}

/* Creates a component from `id: {options}` and checks its options. */
static cn_component *component_build(cn_service *svc, cn_kind kind, const cn_node *key, const cn_node *value,
                                     cn_diag *d)
{
    if (!valid_id(key->scalar)) {
        cn_diag_error(d, key, "%s id \"%s\" must be \"type\" or \"type/name\" (letters, digits, _ . -)",
                      kind_name(kind), key->scalar);
        return NULL;
    }
    if (value->kind != CN_NODE_MAP && !(value->kind == CN_NODE_SCALAR && value->plain_null)) {
        cn_diag_error(d, value, "%s \"%s\" must be a map of options, not %s", kind_name(kind), key->scalar,
                      cn_node_kind_name(value));
        return NULL;
    }
    cn_component *c = calloc(1, sizeof *c);
    if (!c || !(c->id = strdup(key->scalar)) || !(c->type = strdup(key->scalar))) {
        cn_component_free(c);
        cn_diag_error(d, key, "out of memory");
        return NULL;
    }
    char *slash = strchr(c->type, '/');
    if (slash)
        *slash = '\0';
    c->kind = kind;
    c->svc = svc;
    c->id_node = key;
    c->node = value;
    snprintf(c->labels, sizeof c->labels, "component=\"%s\"", c->id);

    c->plugin = cn_find_plugin(kind, c->type);
    if (!c->plugin) {
        char types[256];
        list_types(kind, types, sizeof types);
        cn_diag_error(d, key, "unknown %s type \"%s\" (compiled in: %s)", kind_name(kind), c->type, types);
        cn_component_free(c);
        return NULL;
    }
    size_t ctx_size = c->plugin->ctx_size;
    c->options = c->plugin->options;
    static const cn_option no_options[] = {CN_OPT_END};
    if (!c->options)
        c->options = no_options;
    if (!(c->ctx = calloc(1, ctx_size ? ctx_size : 1))) {
        cn_diag_error(d, key, "out of memory");
        cn_component_free(c);
        return NULL;
    }

    size_t errors_before = d->n_errors;
    if (kind == CN_EXPORTER) {
        cn_node core_view, plugin_view;
        if (!(c->rt = calloc(1, sizeof *c->rt)) || cn_node_view(&core_view, value, exporter_common_options, true) ||
            cn_node_view(&plugin_view, value, exporter_common_options, false)) {
            cn_diag_error(d, key, "out of memory");
            cn_component_free(c);
            return NULL;
        }
        cn_options_apply(exporter_common_options, &c->rt->common, &core_view, d);
        cn_options_apply(c->options, c->ctx, &plugin_view, d);
        cn_node_view_free(&core_view);
        cn_node_view_free(&plugin_view);
    } else {
        cn_options_apply(c->options, c->ctx, value, d);
    }
    /*
     * A receiver may name an exporter (the skywalking receiver's `upstream`),
     * and receivers are built first so that components keep their config
     * order: its check runs once the exporters exist (build_receiver_checks).
     */
    if (d->n_errors == errors_before && c->plugin->cb_check) {
        if (kind == CN_RECEIVER)
            c->check_pending = true;
        else
            c->plugin->cb_check(c->ctx, c, d);
    }
    return c;
}

static int add_component(cn_service *svc, cn_component *c)
{
    cn_component **grown = realloc(svc->components, (svc->n_components + 1) * sizeof *grown);
    if (!grown)
        return -1;
    svc->components = grown;
    svc->components[svc->n_components++] = c;
    return 0;
}

static void build_receiver_checks(cn_service *svc, cn_diag *d)
{
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        if (c->check_pending) {
            c->check_pending = false;
            c->plugin->cb_check(c->ctx, c, d);
        }
    }
}

static cn_component *find_component(cn_service *svc, cn_kind kind, const char *id)
{
    for (size_t i = 0; i < svc->n_components; i++)
        if (svc->components[i]->kind == kind && strcmp(svc->components[i]->id, id) == 0)
            return svc->components[i];
    return NULL;
}

static void build_section(cn_service *svc, cn_kind kind, const cn_node *section, cn_diag *d)
{
    if (!section || (section->kind == CN_NODE_SCALAR && section->plain_null))
        return;
    if (section->kind != CN_NODE_MAP) {
        cn_diag_error(d, section, "%ss must be a map of component ids, not %s", kind_name(kind),
                      cn_node_kind_name(section));
        return;
    }
    for (size_t i = 0; i < section->n; i++) {
        /* Processors are instantiated per pipeline; here they are only checked. */
        cn_component *c = component_build(svc, kind, section->keys[i], section->items[i], d);
        if (!c)
            continue;
        if (add_component(svc, c) != 0) {
            cn_component_free(c);
            cn_diag_error(d, section->keys[i], "out of memory");
        }
    }
}

/* ---- pipelines ------------------------------------------------------------------ */

static void pipeline_free(cn_pipeline *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_processors; i++)
        cn_component_free(p->processors[i]);
    free(p->receivers);
    free(p->processors);
    free(p->exporters);
    free(p->emitters);
    free(p->processor_batches);
    cn_intake_close(p->intake);
    free(p->intake_options.directory);
    cn_queue_destroy(&p->input);
    free(p->name);
    free(p);
}

static int append_ptr(void *array_ptr, size_t *n, void *item)
{
    void ***array = array_ptr;
    void **grown = realloc(*array, (*n + 1) * sizeof *grown);
    if (!grown)
        return -1;
    *array = grown;
    grown[(*n)++] = item;
    return 0;
}

static void build_pipeline_refs(cn_service *svc, cn_pipeline *p, cn_kind kind, const cn_node *pnode,
                                const cn_node *sections_root, cn_diag *d)
{
    const char *key = kind == CN_RECEIVER ? "receivers" : kind == CN_PROCESSOR ? "processors" : "exporters";
    const cn_node *list = cn_node_get(pnode, key);
    if (!list || (list->kind == CN_NODE_SCALAR && list->plain_null))
        return;
    if (list->kind != CN_NODE_SEQ) {
        cn_diag_error(d, list, "service::pipelines::%s: %s must be a list of ids, not %s", p->name, key,
                      cn_node_kind_name(list));
        return;
    }
    for (size_t i = 0; i < list->n; i++) {
        const cn_node *ref = list->items[i];
        if (ref->kind != CN_NODE_SCALAR) {
            cn_diag_error(d, ref, "service::pipelines::%s: %s must list ids, not %s", p->name, key,
                          cn_node_kind_name(ref));
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (list->items[j]->kind == CN_NODE_SCALAR && strcmp(list->items[j]->scalar, ref->scalar) == 0) {
                cn_diag_error(d, ref, "service::pipelines::%s: %s \"%s\" is listed twice", p->name,
                              kind_name(kind), ref->scalar);
                goto next;
            }
        }
        if (kind == CN_PROCESSOR) {
            const cn_node *section = cn_node_get(sections_root, "processors");
            const cn_node *decl = NULL, *decl_key = NULL;
            for (size_t k = 0; section && section->kind == CN_NODE_MAP && k < section->n; k++) {
                if (strcmp(section->keys[k]->scalar, ref->scalar) == 0) {
                    decl = section->items[k];
                    decl_key = section->keys[k];
                }
            }
            if (!decl) {
                cn_diag_error(d, ref, "service::pipelines::%s: references processor \"%s\" which is not configured",
                              p->name, ref->scalar);
                continue;
            }
            /* Each pipeline gets its own instance, as in OpenTelemetry Collector. */
            cn_diag scratch = {0};
            cn_component *c = component_build(svc, CN_PROCESSOR, decl_key, decl, &scratch);
            cn_diag_free(&scratch); /* the declaration was already checked once */
            if (!c)
                continue;
            if (append_ptr(&p->processors, &p->n_processors, c) != 0) {
                cn_component_free(c);
                cn_diag_error(d, ref, "out of memory");
            }
            continue;
        }
        cn_component *c = find_component(svc, kind, ref->scalar);
        if (!c) {
            cn_diag_error(d, ref, "service::pipelines::%s: references %s \"%s\" which is not configured", p->name,
                          kind_name(kind), ref->scalar);
            continue;
        }
        if (kind == CN_RECEIVER) {
            if (append_ptr(&p->receivers, &p->n_receivers, c) != 0 || append_ptr(&c->feeds, &c->n_feeds, p) != 0)
                cn_diag_error(d, ref, "out of memory");
        } else if (append_ptr(&p->exporters, &p->n_exporters, c) != 0) {
            cn_diag_error(d, ref, "out of memory");
        } else {
            c->rt->pipeline = p;
            if (++c->rt->n_pipelines > 1 && c->rt->common.spool.directory)
                cn_diag_error(d, ref,
                              "service::pipelines::%s: exporter \"%s\" has a spool and is already in pipeline "
                              "\"%s\"; a spooled exporter may be in one pipeline only",
                              p->name, c->id, c->rt->pipeline->name);
        }
    next:;
    }
}

static void build_pipelines(cn_service *svc, const cn_node *root, const cn_node *service, cn_diag *d)
{
    const cn_node *pipelines = cn_node_get(service, "pipelines");
    if (!pipelines || pipelines->kind != CN_NODE_MAP || pipelines->n == 0) {
        cn_diag_error(d, pipelines ? pipelines : service ? service : root,
                      "service::pipelines: at least one pipeline is required");
        return;
    }
    static const char *const pipeline_keys[] = {"receivers", "processors", "exporters"};
    for (size_t i = 0; i < pipelines->n; i++) {
        const cn_node *key = pipelines->keys[i], *pnode = pipelines->items[i];
        if (pnode->kind != CN_NODE_MAP) {
            cn_diag_error(d, pnode, "service::pipelines::%s must be a map, not %s", key->scalar,
                          cn_node_kind_name(pnode));
            continue;
        }
        for (size_t k = 0; k < pnode->n; k++) {
            bool known = false;
            for (size_t j = 0; j < 3; j++)
                known |= strcmp(pnode->keys[k]->scalar, pipeline_keys[j]) == 0;
            if (!known)
                cn_diag_error(d, pnode->keys[k],
                              "service::pipelines::%s: unknown key \"%s\" (known: receivers, processors, exporters)",
                              key->scalar, pnode->keys[k]->scalar);
        }
        cn_pipeline *p = calloc(1, sizeof *p);
        if (!p || !(p->name = strdup(key->scalar)) || append_ptr(&svc->pipelines, &svc->n_pipelines, p) != 0) {
            pipeline_free(p);
            cn_diag_error(d, key, "out of memory");
            return;
        }
        p->node = pnode;
        p->svc = svc;
        build_pipeline_refs(svc, p, CN_RECEIVER, pnode, root, d);
        build_pipeline_refs(svc, p, CN_PROCESSOR, pnode, root, d);
        build_pipeline_refs(svc, p, CN_EXPORTER, pnode, root, d);
        if (p->n_receivers == 0)
            cn_diag_error(d, pnode, "service::pipelines::%s: must have at least one receiver", p->name);
        if (p->n_exporters == 0)
            cn_diag_error(d, pnode, "service::pipelines::%s: must have at least one exporter", p->name);
    }
}

/*
 * A pipeline with a durable exporter keeps an intake log. It lives in the first
 * such exporter's spool directory and takes its size settings; its fsync is the
 * strictest any of them asks for, and it never drops: a full log refuses
 * (retryable), and agents resend.
 */
static int derive_intake_options(cn_pipeline *p)
{
    const cn_spool_options *first = NULL;
    int fsync = CN_SPOOL_FSYNC_NEVER;
    int64_t fsync_interval = 60000;
    for (size_t i = 0; i < p->n_exporters; i++) {
        const cn_spool_options *o = &p->exporters[i]->rt->common.spool;
        if (!o->directory)
            continue;
        if (!first)
            first = o;
        if (o->fsync < fsync)
            fsync = o->fsync;
        if (o->fsync_interval < fsync_interval)
            fsync_interval = o->fsync_interval;
    }
    if (!first)
        return 0;
    p->intake_options = *first;
    p->intake_options.fsync = fsync;
    p->intake_options.fsync_interval = fsync_interval;
    p->intake_options.when_full = CN_SPOOL_BLOCK;
    size_t len = strlen(first->directory) + sizeof "/intake";
    if (!(p->intake_options.directory = malloc(len)))
        return -1;
    snprintf(p->intake_options.directory, len, "%s/intake", first->directory);
    return 0;
}

/* ---- tasks section --------------------------------------------------------------- */

static void build_tasks(cn_service *svc, const cn_node *tasks, cn_diag *d)
{
    svc->max_tasks = 256;
    const cn_node *static_list = NULL;
    if (tasks && !(tasks->kind == CN_NODE_SCALAR && tasks->plain_null)) {
        if (tasks->kind != CN_NODE_MAP) {
            cn_diag_error(d, tasks, "tasks must be a map, not %s", cn_node_kind_name(tasks));
            tasks = NULL;
        }
    } else {
        tasks = NULL;
    }
    for (size_t i = 0; tasks && i < tasks->n; i++) {
        const char *key = tasks->keys[i]->scalar;
        const cn_node *value = tasks->items[i];
        if (strcmp(key, "static") == 0) {
            static_list = value;
        } else if (strcmp(key, "max_tasks") == 0) {
            if (value->kind != CN_NODE_SCALAR || cn_parse_int(value->scalar, &svc->max_tasks) != 0 ||
                svc->max_tasks < 1 || svc->max_tasks > 100000)
                cn_diag_error(d, value, "tasks::max_tasks must be an integer between 1 and 100000");
        } else if (cn_find_plugin(CN_EXTENSION, key)) {
            /* A task source: an extension whose id is its type, configured right here. */
            cn_component *c = component_build(svc, CN_EXTENSION, tasks->keys[i], value, d);
            if (c && add_component(svc, c) != 0) {
                cn_component_free(c);
                cn_diag_error(d, tasks->keys[i], "out of memory");
            }
        } else {
            char types[256];
            list_types(CN_EXTENSION, types, sizeof types);
            cn_diag_error(d, tasks->keys[i], "tasks: unknown key \"%s\" (known: static, max_tasks, and the task sources %s)",
                          key, types);
        }
    }
    svc->tasks = cn_tasks_new((size_t)svc->max_tasks);
    if (!svc->tasks) {
        cn_diag_error(d, tasks, "out of memory");
        return;
    }
    if (static_list)
        cn_static_tasks_load(svc->tasks, static_list, cn_now_ms(), d);
}

/* ---- build --------------------------------------------------------------------- */

cn_service *cn_service_build(cn_document *doc, cn_diag *d)
{
    size_t errors_before = d->n_errors;
    cn_service *svc = calloc(1, sizeof *svc);
    if (!svc) {
        cn_document_free(doc);
        cn_diag_error_at(d, NULL, 1, 1, "out of memory");
        return NULL;
    }
    svc->doc = doc;
    const cn_node *root = doc->root;
    static const char *const top_keys[] = {"receivers", "processors", "exporters", "service", "tasks"};
    for (size_t i = 0; i < root->n; i++) {
        bool known = false;
        for (size_t k = 0; k < CN_ARRAY_LEN(top_keys); k++)
            known |= strcmp(root->keys[i]->scalar, top_keys[k]) == 0;
        if (!known)
            cn_diag_error(d, root->keys[i],
                          "unknown top-level key \"%s\" (known: receivers, processors, exporters, service, tasks)",
                          root->keys[i]->scalar);
    }
    build_section(svc, CN_RECEIVER, cn_node_get(root, "receivers"), d);
    build_section(svc, CN_EXPORTER, cn_node_get(root, "exporters"), d);
    build_receiver_checks(svc, d);
    /* Declared processors are checked once here; pipelines make their own instances. */
    cn_service tmp = {0};
    const cn_node *procs = cn_node_get(root, "processors");
    build_section(&tmp, CN_PROCESSOR, procs, d);
    for (size_t i = 0; i < tmp.n_components; i++)
        cn_component_free(tmp.components[i]);
    free(tmp.components);

    const cn_node *service = cn_node_get(root, "service");
    if (service && service->kind != CN_NODE_MAP) {
        cn_diag_error(d, service, "service must be a map, not %s", cn_node_kind_name(service));
        service = NULL;
    }
    static const cn_option pipelines_only[] = {{CN_OPT_STR, "pipelines", NULL, 0, ""}, CN_OPT_END};
    cn_node settings_view;
    if (cn_node_view(&settings_view, service, pipelines_only, false) == 0)
        cn_options_apply(service_options, &svc->settings, service ? &settings_view : NULL, d);
    cn_node_view_free(&settings_view);
    if (svc->settings.telemetry.logs.level && cn_log_level_parse(svc->settings.telemetry.logs.level) < 0)
        cn_diag_error(d, cn_node_get(cn_node_get(cn_node_get(service, "telemetry"), "logs"), "level"),
                      "service::telemetry::logs::level: \"%s\" is not one of debug, info, warn, error",
                      svc->settings.telemetry.logs.level);
    cn_admin_validate(&svc->settings.telemetry.http, service, d);

    build_pipelines(svc, root, service, d);
    for (size_t i = 0; i < svc->n_pipelines; i++)
        if (derive_intake_options(svc->pipelines[i]) != 0)
            cn_diag_error(d, svc->pipelines[i]->node, "out of memory");
    build_tasks(svc, cn_node_get(root, "tasks"), d);
    for (size_t i = 0; i < svc->n_components; i++) {
        const cn_component *a = svc->components[i];
        if (a->kind != CN_EXPORTER || !a->rt->common.spool.directory)
            continue;
        for (size_t j = 0; j < i; j++) {
            const cn_component *b = svc->components[j];
            if (b->kind == CN_EXPORTER && b->rt->common.spool.directory &&
                strcmp(a->rt->common.spool.directory, b->rt->common.spool.directory) == 0)
                cn_diag_error(d, cn_options_node(cn_node_get(a->node, "spool"), "directory"),
                              "exporter \"%s\": spool directory %s is already used by exporter \"%s\"", a->id,
                              a->rt->common.spool.directory, b->id);
        }
    }

    if (d->n_errors > errors_before) {
        cn_service_free(svc);
        return NULL;
    }
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        /* An extension (a task source) serves the whole service, not a pipeline. */
        bool used = c->kind == CN_RECEIVER ? c->n_feeds > 0 : c->kind == CN_EXTENSION;
        for (size_t p = 0; c->kind == CN_EXPORTER && p < svc->n_pipelines; p++)
            for (size_t e = 0; e < svc->pipelines[p]->n_exporters; e++)
                used |= svc->pipelines[p]->exporters[e] == c;
        if (!used)
            cn_warn("config", "%s:%d:%d: %s \"%s\" is configured but not used by any pipeline", c->id_node->file,
                    c->id_node->line, c->id_node->col, kind_name(c->kind), c->id);
    }
    return svc;
}

void cn_service_free(cn_service *svc)
{
    if (!svc)
        return;
    for (size_t i = 0; i < svc->n_pipelines; i++)
        pipeline_free(svc->pipelines[i]);
    free(svc->pipelines);
    for (size_t i = 0; i < svc->n_components; i++)
        cn_component_free(svc->components[i]);
    free(svc->components);
    cn_tasks_free(svc->tasks);
    cn_options_free(service_options, &svc->settings);
    cn_document_free(svc->doc);
    free(svc);
}
