/*
 * Tasks as agent commands (canopy/tasks.h): SkyWalking's ProfileTaskQuery
 * form, which canopy's own agent reads too. Every receiver that answers
 * command queries turns tasks into commands here, so the two agents can never
 * be told different things.
 */
#include <stdio.h>
#include <stdlib.h>

#include "canopy/common.h"
#include "canopy/tasks.h"

void cn_agent_command_from_task(const cn_task *t, cn_agent_command *out)
{
    static const char *const keys[CN_AGENT_COMMAND_MAX_ARGS] = {
        "SerialNumber", "TaskId",    "EndpointName", "Duration",   "MinDurationThreshold", "DumpPeriod",
        "MaxSamplingCount", "StartTime", "CreateTime", "Continuous", "Window",
    };
    out->name = "ProfileTaskQuery";
    /* SkyWalking's Duration is whole minutes; rounded up so the agent never stops early. A continuous
     * task says 0 (see canopy/tasks.h): an agent that knows no Continuous then runs nothing. */
    int64_t minutes = t->continuous ? 0 : (t->duration_ms + 59999) / 60000;
    int64_t nums[7] = {minutes,         t->min_duration_ms, t->dump_period_ms, t->max_sampling_count,
                       t->start_ms,     t->create_ms,       t->window_ms};
    for (size_t i = 0; i < 7; i++)
        snprintf(out->numbers[i], sizeof out->numbers[i], "%lld", (long long)nums[i]);
    const char *values[CN_AGENT_COMMAND_MAX_ARGS] = {
        t->serial,       t->id,           t->endpoint,     out->numbers[0], out->numbers[1], out->numbers[2],
        out->numbers[3], out->numbers[4], out->numbers[5], "true",          out->numbers[6],
    };
    out->n_args = t->continuous ? CN_AGENT_COMMAND_MAX_ARGS : CN_AGENT_COMMAND_ARGS;
    for (size_t i = 0; i < out->n_args; i++) {
        out->keys[i] = keys[i];
        out->values[i] = values[i];
    }
}

void cn_task_commands_clear(cn_task_commands *c)
{
    for (size_t i = 0; i < c->n; i++)
        cn_task_clear(&c->tasks[i]);
    free(c->tasks);
    free(c->commands);
    *c = (cn_task_commands){0};
}

int cn_task_commands_query(cn_task_registry *r, const char *service, const char *instance,
                            int64_t last_command_time, unsigned flags, cn_task_adjust_fn adjust, void *arg,
                            cn_task_commands *out)
{
    *out = (cn_task_commands){0};
    out->n = cn_tasks_query(r, service, instance, last_command_time, cn_now_ms(), flags, &out->tasks);
    if (out->n == 0)
        return 0;
    out->commands = calloc(out->n, sizeof *out->commands);
    if (!out->commands) {
        cn_task_commands_clear(out);
        return -1;
    }
    for (size_t i = 0; i < out->n; i++) {
        if (adjust)
            adjust(arg, &out->tasks[i]);
        cn_agent_command_from_task(&out->tasks[i], &out->commands[i]);
    }
    return 0;
}
