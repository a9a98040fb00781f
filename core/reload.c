/*
 * Config reload (SIGHUP): the new file is built and checked exactly as
 * `validate` does; when it has errors they are logged and the running config
 * stays. Otherwise the running service hands over:
 *
 *   - receivers whose config did not change keep running, with their
 *     listeners and agents' connections: while the pipelines swap they answer
 *     SHUTTING_DOWN (retryable), so agents resend and nothing acked is lost;
 *   - every other component of the old service stops as at shutdown: the
 *     pipelines drain, exporters flush within service.shutdown_timeout, and
 *     what durable exporters still hold stays in their spools and intake logs,
 *     which the new service (on the same directories) replays;
 *   - the task registry is kept (admin API and proxied tasks survive); the new
 *     file's static tasks are added to it;
 *   - the new service starts; kept receivers then feed its pipelines.
 */
#include <stdlib.h>
#include <string.h>

#include "service.h"

/* Whether two config subtrees say the same (positions aside). */
static bool same_node(const cn_node *a, const cn_node *b)
{
    if (!a || !b)
        return a == b;
    if (a->kind != b->kind || a->n != b->n || a->plain_null != b->plain_null)
        return false;
    if (a->kind == CN_NODE_SCALAR)
        return strcmp(a->scalar ? a->scalar : "", b->scalar ? b->scalar : "") == 0;
    for (size_t i = 0; i < a->n; i++) {
        if (a->kind == CN_NODE_MAP && !same_node(a->keys[i], b->keys[i]))
            return false;
        if (!same_node(a->items[i], b->items[i]))
            return false;
    }
    return true;
}

static cn_component *find(cn_service *svc, cn_kind kind, const char *id, size_t *index)
{
    for (size_t i = 0; i < svc->n_components; i++) {
        if (svc->components[i]->kind == kind && strcmp(svc->components[i]->id, id) == 0) {
            if (index)
                *index = i;
            return svc->components[i];
        }
    }
    return NULL;
}

/* Logs what the new file adds, removes and changes, component by component. */
static void log_changes(cn_service *old, cn_service *new)
{
    size_t changes = 0;
    for (size_t i = 0; i < new->n_components; i++) {
        cn_component *n = new->components[i], *o = find(old, n->kind, n->id, NULL);
        if (!o || !same_node(o->node, n->node)) {
            cn_info("reload", "%s %s %s", cn_kind_name(n->kind), n->id, o ? "changed" : "added");
            changes++;
        }
    }
    for (size_t i = 0; i < old->n_components; i++) {
        cn_component *o = old->components[i];
        if (!find(new, o->kind, o->id, NULL)) {
            cn_info("reload", "%s %s removed", cn_kind_name(o->kind), o->id);
            changes++;
        }
    }
    if (!same_node(cn_node_get(old->doc->root, "service"), cn_node_get(new->doc->root, "service")))
        cn_info("reload", "service settings or pipelines changed"), changes++;
    if (!same_node(cn_node_get(old->doc->root, "processors"), cn_node_get(new->doc->root, "processors")))
        cn_info("reload", "processors changed"), changes++;
    if (changes == 0)
        cn_info("reload", "no component changed; pipelines restart on the same config");
}

/* Moves a running receiver of the old service into the new one, in place of its unstarted twin. */
static void transplant(cn_service *old, cn_service *new, cn_component *running, size_t old_at, cn_component *twin,
                       size_t new_at)
{
    cn_pipeline **feeds = running->feeds;
    size_t n_feeds = running->n_feeds;
    running->feeds = twin->feeds;
    running->n_feeds = twin->n_feeds;
    twin->feeds = feeds;
    twin->n_feeds = n_feeds;
    running->node = twin->node; /* the old document goes with the old service */
    running->id_node = twin->id_node;
    running->svc = new;
    twin->svc = old;
    new->components[new_at] = running;
    old->components[old_at] = twin;
    for (size_t p = 0; p < new->n_pipelines; p++)
        for (size_t r = 0; r < new->pipelines[p]->n_receivers; r++)
            if (new->pipelines[p]->receivers[r] == twin)
                new->pipelines[p]->receivers[r] = running;
}

/* The running registry goes on, with the new file's static tasks added. */
static void keep_registry(cn_service *old, cn_service *new)
{
    cn_task *tasks = NULL;
    size_t n = cn_tasks_list(new->tasks, &tasks);
    for (size_t i = 0; i < n; i++) {
        char err[256];
        cn_tasks_add(old->tasks, &tasks[i], err, sizeof err); /* a task already known stays as it is */
        cn_task_clear(&tasks[i]);
    }
    free(tasks);
    cn_task_registry *kept = old->tasks;
    old->tasks = new->tasks;
    new->tasks = kept;
}

cn_service *cn_service_reload(cn_service *old, cn_service *new)
{
    log_changes(old, new);
    /* Receivers with unchanged config keep their listeners and connections. */
    size_t kept = 0;
    for (size_t i = 0; i < new->n_components; i++) {
        cn_component *twin = new->components[i];
        size_t old_at;
        cn_component *running = twin->kind == CN_RECEIVER ? find(old, CN_RECEIVER, twin->id, &old_at) : NULL;
        if (!running || !running->started || !same_node(running->node, twin->node) || twin->n_feeds == 0)
            continue;
        running->keep = true;
        kept++;
    }
    int64_t t0 = cn_mono_ms();
    cn_service_stop(old); /* kept receivers are not stopped: they answer SHUTTING_DOWN meanwhile */
    cn_service_swap_begin();
    for (size_t i = 0; i < new->n_components; i++) {
        cn_component *twin = new->components[i];
        size_t old_at;
        cn_component *running = twin->kind == CN_RECEIVER ? find(old, CN_RECEIVER, twin->id, &old_at) : NULL;
        if (running && running->keep) {
            running->keep = false;
            transplant(old, new, running, old_at, twin, i);
        }
    }
    cn_service_swap_end();
    keep_registry(old, new);
    cn_service_free(old);
    cn_info("reload", "old pipelines drained in %lld ms; %zu receiver%s kept their connections",
            (long long)(cn_mono_ms() - t0), kept, kept == 1 ? "" : "s");
    return new;
}
