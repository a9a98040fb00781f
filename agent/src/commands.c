/* ProfileTaskQuery commands: args (all strings) into a cn_command. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

static int64_t to_i64(const char *s)
{
    if (!s || !*s)
        return 0;
    return strtoll(s, NULL, 10);
}

bool cn_ag_command_parse(const Canopy__V1__Command *c, cn_command *out)
{
    if (!c || !c->command || strcmp(c->command, "ProfileTaskQuery") != 0)
        return false;
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < c->n_args; i++) {
        const Canopy__V1__KeyStringValuePair *kv = c->args[i];
        if (!kv || !kv->key)
            continue;
        const char *k = kv->key, *v = kv->value;
        if (strcmp(k, "TaskId") == 0)
            copy_str(out->task_id, sizeof(out->task_id), v);
        else if (strcmp(k, "SerialNumber") == 0)
            copy_str(out->serial, sizeof(out->serial), v);
        else if (strcmp(k, "EndpointName") == 0)
            copy_str(out->endpoint, sizeof(out->endpoint), v);
        else if (strcmp(k, "Duration") == 0)
            out->duration_min = to_i64(v);
        else if (strcmp(k, "MinDurationThreshold") == 0)
            out->min_duration_ms = to_i64(v);
        else if (strcmp(k, "DumpPeriod") == 0)
            out->dump_period_ms = to_i64(v);
        else if (strcmp(k, "MaxSamplingCount") == 0)
            out->max_sampling_count = to_i64(v);
        else if (strcmp(k, "StartTime") == 0)
            out->start_time_ms = to_i64(v);
        else if (strcmp(k, "CreateTime") == 0)
            out->create_time_ms = to_i64(v);
        else if (strcmp(k, "Continuous") == 0)
            out->continuous = v && strcmp(v, "true") == 0;
        else if (strcmp(k, "Window") == 0)
            out->window_ms = to_i64(v);
    }
    /* A task without an id cannot be profiled or reported as finished; a continuous one without a
     * window could not be limited. */
    return out->task_id[0] != '\0' && (!out->continuous || out->window_ms > 0);
}

static int by_create_time(const void *x, const void *y)
{
    const cn_command *a = x, *b = y;
    return (a->create_time_ms > b->create_time_ms) - (a->create_time_ms < b->create_time_ms);
}

bool cn_ag_commands_merge(cn_command *cmds, size_t *n, size_t cap, const Canopy__V1__Reply *r,
                          int64_t *last_command_time, uint64_t *received)
{
    bool changed = false;
    for (size_t i = 0; i < r->n_commands; i++) {
        cn_command c;
        if (!cn_ag_command_parse(r->commands[i], &c))
            continue;
        (*received)++;
        if (c.create_time_ms > *last_command_time)
            *last_command_time = c.create_time_ms;
        size_t j = 0;
        while (j < *n && strcmp(cmds[j].task_id, c.task_id) != 0)
            j++;
        if (j == *n) {
            if (*n < cap) {
                (*n)++;
            } else {
                /* Full: the list is sorted, so slot 0 is the oldest. */
                if (c.create_time_ms < cmds[0].create_time_ms)
                    continue;
                j = 0;
            }
        } else if (memcmp(&cmds[j], &c, sizeof(c)) == 0) {
            continue;
        }
        cmds[j] = c;
        changed = true;
    }
    if (changed)
        qsort(cmds, *n, sizeof(*cmds), by_create_time);
    return changed;
}
