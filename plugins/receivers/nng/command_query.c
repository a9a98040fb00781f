/*
 * The nng receiver's answer to a command query: the registry's tasks for the
 * agent's service as SkyWalking ProfileTaskQuery commands. Its own file: it
 * is to be replaced by one core function that turns tasks into commands.
 */
#include <stdio.h>
#include <stdlib.h>

#include "nng_receiver.h"

#define N_TASK_ARGS 9

static void set_kv(Canopy__V1__KeyStringValuePair *kv, Canopy__V1__KeyStringValuePair **slot, const char *key,
                   char *value)
{
    canopy__v1__key_string_value_pair__init(kv);
    kv->key = (char *)key;
    kv->value = value;
    *slot = kv;
}

/* Replies to a command query with SkyWalking ProfileTaskQuery commands. */
nng_msg *nngrx_handle_command_query(nng_receiver *rx, const Canopy__V1__Request *req)
{
    cn_task *tasks = NULL;
    size_t n = cn_tasks_query(cn_component_tasks(rx->self), req->agent->service, req->agent->instance,
                              req->command_query->last_command_time, cn_now_ms(), &tasks);
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    Canopy__V1__Command *cmds = n ? calloc(n, sizeof *cmds) : NULL;
    Canopy__V1__Command **cmd_ptrs = n ? calloc(n, sizeof *cmd_ptrs) : NULL;
    Canopy__V1__KeyStringValuePair *kvs = n ? calloc(n * N_TASK_ARGS, sizeof *kvs) : NULL;
    Canopy__V1__KeyStringValuePair **kv_ptrs = n ? calloc(n * N_TASK_ARGS, sizeof *kv_ptrs) : NULL;
    char (*nums)[6][24] = n ? calloc(n, sizeof *nums) : NULL;
    nng_msg *msg = NULL;
    if (n && (!cmds || !cmd_ptrs || !kvs || !kv_ptrs || !nums)) {
        msg = nngrx_refuse(rx, CANOPY__V1__REASON__REASON_INTERNAL, LIMIT_OTHER, 0, "out of memory",
                           req->agent->instance);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const cn_task *t = &tasks[i];
        canopy__v1__command__init(&cmds[i]);
        cmds[i].command = "ProfileTaskQuery";
        cmds[i].n_args = N_TASK_ARGS;
        cmds[i].args = &kv_ptrs[i * N_TASK_ARGS];
        Canopy__V1__KeyStringValuePair *kv = &kvs[i * N_TASK_ARGS];
        Canopy__V1__KeyStringValuePair **slot = &kv_ptrs[i * N_TASK_ARGS];
        /* SkyWalking's Duration is whole minutes; round up so the agent never stops early. */
        snprintf(nums[i][0], 24, "%lld", (long long)((t->duration_ms + 59999) / 60000));
        snprintf(nums[i][1], 24, "%lld", (long long)t->min_duration_ms);
        snprintf(nums[i][2], 24, "%lld", (long long)t->dump_period_ms);
        snprintf(nums[i][3], 24, "%lld", (long long)t->max_sampling_count);
        snprintf(nums[i][4], 24, "%lld", (long long)t->start_ms);
        snprintf(nums[i][5], 24, "%lld", (long long)t->create_ms);
        set_kv(&kv[0], &slot[0], "SerialNumber", t->serial);
        set_kv(&kv[1], &slot[1], "TaskId", t->id);
        set_kv(&kv[2], &slot[2], "EndpointName", t->endpoint);
        set_kv(&kv[3], &slot[3], "Duration", nums[i][0]);
        set_kv(&kv[4], &slot[4], "MinDurationThreshold", nums[i][1]);
        set_kv(&kv[5], &slot[5], "DumpPeriod", nums[i][2]);
        set_kv(&kv[6], &slot[6], "MaxSamplingCount", nums[i][3]);
        set_kv(&kv[7], &slot[7], "StartTime", nums[i][4]);
        set_kv(&kv[8], &slot[8], "CreateTime", nums[i][5]);
        cmd_ptrs[i] = &cmds[i];
    }
    reply.n_commands = n;
    reply.commands = cmd_ptrs;
    msg = nngrx_reply_msg(&reply);
    /* Agents ask every few seconds: a cheap moment to refresh this gauge. */
    cn_metric_set(rx->agent_sessions, (int64_t)dedup_sessions(&rx->dedup));
done:
    for (size_t i = 0; i < n; i++)
        cn_task_clear(&tasks[i]);
    free(tasks);
    free(cmds);
    free(cmd_ptrs);
    free(kvs);
    free(kv_ptrs);
    free(nums);
    return msg;
}
