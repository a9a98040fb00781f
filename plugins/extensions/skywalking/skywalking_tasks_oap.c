/*
 * The skywalking task source's calls to the OAP (getProfileTaskCommands,
 * reportTaskFinish), made on its thread without t->lock, through the OAP
 * client shared with the exporter: each endpoint in turn until one answers.
 * ProfileTaskQuery commands become registry tasks here.
 */
#include <string.h>

#include "canopy/config.h"
#include "skywalking/v3/profile.pb-c.h"
#include "skywalking_tasks.h"

#define SW_METHOD_QUERY "/skywalking.v3.ProfileTask/getProfileTaskCommands"
#define SW_METHOD_FINISH "/skywalking.v3.ProfileTask/reportTaskFinish"

static int64_t arg_int(const Skywalking__V3__Command *cmd, const char *key, int64_t dflt, bool *bad)
{
    for (size_t i = 0; i < cmd->n_args; i++) {
        const Skywalking__V3__KeyStringValuePair *kv = cmd->args[i];
        if (kv->key && strcmp(kv->key, key) == 0) {
            int64_t v;
            if (cn_parse_int(kv->value, &v) != 0) {
                *bad = true;
                return dflt;
            }
            return v;
        }
    }
    return dflt;
}

static char *arg_str(const Skywalking__V3__Command *cmd, const char *key)
{
    for (size_t i = 0; i < cmd->n_args; i++) {
        const Skywalking__V3__KeyStringValuePair *kv = cmd->args[i];
        if (kv->key && strcmp(kv->key, key) == 0)
            return kv->value;
    }
    return NULL;
}

/*
 * Adds one ProfileTaskQuery command to the registry. Returns its CreateTime
 * when the registry has the task afterwards (added now or earlier), else -1.
 */
static int64_t add_command(sw_tasks *t, const sw_poll *p, const Skywalking__V3__Command *cmd)
{
    bool bad = false;
    cn_task task;
    memset(&task, 0, sizeof task);
    task.id = arg_str(cmd, "TaskId");
    task.serial = arg_str(cmd, "SerialNumber");
    task.endpoint = arg_str(cmd, "EndpointName");
    task.service = p->service; /* the command does not name it: it is the service we asked for */
    /* Units as in the SkyWalking protocol: Duration in minutes, the rest ms. */
    task.duration_ms = arg_int(cmd, "Duration", 0, &bad) * 60000;
    task.min_duration_ms = arg_int(cmd, "MinDurationThreshold", 0, &bad);
    task.dump_period_ms = arg_int(cmd, "DumpPeriod", 10, &bad);
    task.max_sampling_count = arg_int(cmd, "MaxSamplingCount", 5, &bad);
    task.start_ms = arg_int(cmd, "StartTime", 0, &bad);
    task.create_ms = arg_int(cmd, "CreateTime", 0, &bad);
    task.source = CN_TASK_OAP;
    if (!task.id || !task.id[0] || bad) {
        cn_log_limited(&t->rl_poll, CN_LOG_WARN, t->c->id,
                       "task source: ignoring a ProfileTaskQuery command for %s with %s",
                       p->service, bad ? "a non-numeric argument" : "no TaskId");
        return -1;
    }
    if (task.start_ms == 0)
        task.start_ms = task.create_ms;

    cn_task have;
    if (cn_tasks_get(t->reg, task.id, &have) == 0) {
        cn_task_clear(&have); /* another instance of the service brought it already */
        return task.create_ms;
    }
    char err[256];
    if (cn_tasks_add(t->reg, &task, err, sizeof err) != 0) {
        if (cn_tasks_get(t->reg, task.id, &have) == 0) {
            cn_task_clear(&have); /* lost a race with a concurrent add: fine */
            return task.create_ms;
        }
        cn_log_limited(&t->rl_poll, CN_LOG_WARN, t->c->id,
                       "task source: the registry refused OAP task %s for %s: %s", task.id, p->service, err);
        return -1;
    }
    cn_metric_inc(t->m_commands);
    cn_info(t->c->id, "task source: OAP task %s (service %s, endpoint %s, %lld min) is now offered to agents",
            task.id, p->service, task.endpoint ? task.endpoint : "", (long long)(task.duration_ms / 60000));
    return task.create_ms;
}

/* Tries each endpoint once until one answers or refuses for good. */
static int call_with_failover(sw_tasks *t, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                              sw_rpc_status *st, sw_endpoint **ep_out)
{
    sw_client *c = t->c;
    for (size_t i = 0; i < c->n_eps; i++) {
        sw_endpoint *ep = sw_pick_endpoint(c);
        *ep_out = ep;
        int rc = sw_unary(c, ep, method, req, resp_desc, resp, &t->slot, st);
        sw_endpoint_result(c, ep, st);
        if (rc == 0 || !sw_status_retryable(st) || st->cancelled_by_us)
            return rc;
    }
    return -1;
}

/* Returns the new cursor (largest CreateTime now in the registry), or -1. */
int64_t sw_tasks_poll_instance(sw_tasks *t, const sw_poll *p)
{
    Skywalking__V3__ProfileTaskCommandQuery q = SKYWALKING__V3__PROFILE_TASK_COMMAND_QUERY__INIT;
    q.service = p->service;
    q.serviceinstance = p->instance;
    q.lastcommandtime = p->cursor;
    ProtobufCMessage *resp = NULL;
    sw_rpc_status st;
    sw_endpoint *ep = NULL;
    cn_metric_inc(t->m_polls);
    if (call_with_failover(t, SW_METHOD_QUERY, &q.base, &skywalking__v3__commands__descriptor, &resp, &st,
                           &ep) != 0) {
        if (!st.cancelled_by_us) {
            cn_metric_inc(t->m_poll_errors);
            cn_log_limited(&t->rl_poll, CN_LOG_WARN, t->c->id,
                           "task source: getProfileTaskCommands for %s (%s) at %s failed: %s: %s",
                           p->instance, p->service, ep ? ep->target : "?", sw_status_name(st.code), st.detail);
        }
        return -1;
    }
    int64_t cursor = p->cursor;
    Skywalking__V3__Commands *cmds = (Skywalking__V3__Commands *)resp;
    for (size_t i = 0; i < cmds->n_commands; i++) {
        const Skywalking__V3__Command *cmd = cmds->commands[i];
        if (!cmd->command || strcmp(cmd->command, "ProfileTaskQuery") != 0) {
            cn_debug(t->c->id, "task source: ignoring OAP command %s", cmd->command ? cmd->command : "?");
            continue;
        }
        int64_t created = add_command(t, p, cmd);
        if (created > cursor)
            cursor = created;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return cursor;
}

/* 0: sent; 1: retry later; -1: dropped for good. */
int sw_tasks_send_finish(sw_tasks *t, const sw_finish *f)
{
    Skywalking__V3__ProfileTaskFinishReport r = SKYWALKING__V3__PROFILE_TASK_FINISH_REPORT__INIT;
    r.service = f->service;
    r.serviceinstance = f->instance;
    r.taskid = f->task_id;
    sw_rpc_status st;
    sw_endpoint *ep = NULL;
    if (call_with_failover(t, SW_METHOD_FINISH, &r.base, &skywalking__v3__commands__descriptor, NULL, &st, &ep) == 0) {
        cn_metric_inc(t->m_finish_sent);
        cn_debug(t->c->id, "task source: reported task %s finished by %s", f->task_id, f->instance);
        return 0;
    }
    if (st.cancelled_by_us)
        return 1;
    if (sw_status_retryable(&st)) {
        cn_log_limited(&t->rl_finish, CN_LOG_WARN, t->c->id,
                       "task source: reportTaskFinish (task %s, %s) at %s failed: %s: %s; will retry",
                       f->task_id, f->instance, ep ? ep->target : "?", sw_status_name(st.code), st.detail);
        return 1;
    }
    cn_log_limited(&t->rl_finish, CN_LOG_ERROR, t->c->id,
                   "task source: OAP %s refused the finish report of task %s by %s: %s: %s%s",
                   ep ? ep->target : "?", f->task_id, f->instance, sw_status_name(st.code), st.detail,
                   st.code == GRPC_STATUS_UNAUTHENTICATED ? " (the OAP refused the authentication token)" : "");
    return -1;
}
