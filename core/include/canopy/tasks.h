/*
 * The task registry: the profiling tasks agents are told about. Tasks come
 * from sources (the static config list, later the admin API and an OAP
 * proxy); agents read them through command queries, SkyWalking style.
 * All functions are thread safe.
 */
#ifndef CANOPY_TASKS_H
#define CANOPY_TASKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum cn_task_source {
    CN_TASK_STATIC = 0,
    CN_TASK_ADMIN,
    CN_TASK_OAP,
} cn_task_source;

typedef struct cn_task {
    char *id;
    char *serial;            /* SerialNumber of the command; defaults to id */
    char *service;
    char *endpoint;
    int64_t start_ms;        /* epoch ms */
    int64_t duration_ms;
    int64_t min_duration_ms; /* min_duration_threshold */
    int64_t dump_period_ms;
    int64_t max_sampling_count;
    int64_t create_ms;       /* epoch ms; agents track the largest they saw */
    cn_task_source source;
    bool cancelled;
    /* A continuous task never ends (duration_ms is 0 and unused) until it is
     * cancelled; canopy's agents profile at most max_sampling_count requests
     * in each window_ms instead of in the whole task. SkyWalking agents and
     * the OAP never see one: an OAP task must end. */
    bool continuous;
    int64_t window_ms;
} cn_task;

typedef enum cn_task_state {
    CN_TASK_UNKNOWN = 0,
    CN_TASK_PENDING,  /* start_time in the future */
    CN_TASK_RUNNING,
    CN_TASK_ENDED,    /* duration elapsed or cancelled */
} cn_task_state;

typedef struct cn_task_registry cn_task_registry;

/* Called (outside the registry lock) when an agent asks or reports; must not call cn_tasks_listen. */
typedef struct cn_task_listener {
    void *arg;
    void (*on_query)(void *arg, const char *service, const char *instance, int64_t last_command_time);
    void (*on_finish)(void *arg, const char *service, const char *instance, const char *task_id);
    struct cn_task_listener *next; /* owned by the registry */
} cn_task_listener;

cn_task_registry *cn_tasks_new(size_t max_tasks);
void cn_tasks_free(cn_task_registry *r);

/* Copies t. Fails (-1, message in err) on a duplicate id, a missing field or the limit. */
int cn_tasks_add(cn_task_registry *r, const cn_task *t, char *err, size_t err_len);
/* Marks a task cancelled; it ends now. Returns -1 when unknown. */
int cn_tasks_cancel(cn_task_registry *r, const char *id);
cn_task_state cn_tasks_state(cn_task_registry *r, const char *id, int64_t now_ms);
/* Fills a copy of the task; free with cn_task_clear. Returns -1 when unknown. */
int cn_tasks_get(cn_task_registry *r, const char *id, cn_task *out);
void cn_task_clear(cn_task *t);
/* True when the registry holds a continuous task with this id (no copy: exporters ask per chunk). */
bool cn_tasks_is_continuous(cn_task_registry *r, const char *id);
/*
 * cn_tasks_is_continuous for exporters that walk a chunk's snapshots: asks
 * once per run of one task (snapshots come grouped by task, so that is rare).
 * Every exporter that writes for the OAP (skywalking, kafka's skywalking
 * format) leaves continuous tasks out with it: the OAP's tasks must end.
 */
typedef struct cn_continuous_filter {
    cn_task_registry *reg;
    const char *last; /* the last task asked about, and its answer */
    bool last_continuous;
} cn_continuous_filter;
bool cn_continuous_filter_skips(cn_continuous_filter *f, const char *task_id);
/* Copies of all tasks, oldest first; free each with cn_task_clear, then the array. */
size_t cn_tasks_list(cn_task_registry *r, cn_task **out);
const char *cn_task_state_name(cn_task_state s);

/* cn_tasks_query flags. */
#define CN_TASKS_WITH_CONTINUOUS 1u /* the asker is canopy's agent, which runs continuous tasks */

/*
 * The tasks for `service` with create_ms > last_command_time that have not
 * ended, as copies (see cn_tasks_list). Continuous tasks only with
 * CN_TASKS_WITH_CONTINUOUS: a SkyWalking agent would run one as an ordinary
 * task and report it to the OAP. Also tells the listeners an agent asked.
 */
size_t cn_tasks_query(cn_task_registry *r, const char *service, const char *instance,
                      int64_t last_command_time, int64_t now_ms, unsigned flags, cn_task **out);
/* An agent reports a task finished; passed on to the listeners. */
void cn_tasks_report_finish(cn_task_registry *r, const char *service, const char *instance,
                            const char *task_id);
/* Registers a listener (copied). */
int cn_tasks_listen(cn_task_registry *r, const cn_task_listener *l);
/* Removes the listeners whose arg is `arg`; none of their callbacks runs after it returns. */
void cn_tasks_unlisten(cn_task_registry *r, void *arg);

/*
 * A task as the command agents run: SkyWalking's ProfileTaskQuery with its
 * nine arguments (SerialNumber, TaskId, EndpointName, Duration in minutes,
 * MinDurationThreshold, DumpPeriod, MaxSamplingCount, StartTime,
 * CreateTime), all as strings. Both canopy's agent and SkyWalking's read it.
 *
 * A continuous task adds two (n_args is 11): Continuous ("true") and
 * Window (milliseconds), and says Duration 0, so that an agent too old to
 * know them sees a task that is already over and profiles nothing, rather
 * than profiling without a window.
 */
#define CN_AGENT_COMMAND_ARGS 9
#define CN_AGENT_COMMAND_MAX_ARGS 11
typedef struct cn_agent_command {
    const char *name;
    size_t n_args;
    const char *keys[CN_AGENT_COMMAND_MAX_ARGS];
    const char *values[CN_AGENT_COMMAND_MAX_ARGS]; /* into the task and into numbers */
    char numbers[7][24];
} cn_agent_command;
/* Fills out from t; out points into t, which must outlive it. */
void cn_agent_command_from_task(const cn_task *t, cn_agent_command *out);

/*
 * One agent's command query answered: cn_tasks_query's tasks and their
 * commands. Every receiver answers through it and only wraps the commands in
 * its own protocol's messages. `adjust` (NULL for none) may change each task
 * copy before its command is formed: the SkyWalking receiver clamps there.
 */
typedef struct cn_task_commands {
    size_t n;
    cn_task *tasks;
    cn_agent_command *commands; /* n of them, pointing into tasks */
} cn_task_commands;
typedef void (*cn_task_adjust_fn)(void *arg, cn_task *t);
/* 0, or -1 out of memory (out is then empty). Free with cn_task_commands_clear. */
int cn_task_commands_query(cn_task_registry *r, const char *service, const char *instance,
                            int64_t last_command_time, unsigned flags, cn_task_adjust_fn adjust, void *arg,
                            cn_task_commands *out);
void cn_task_commands_clear(cn_task_commands *c);

/* Removes ended tasks older than keep_ms after their end; returns how many. */
size_t cn_tasks_expire(cn_task_registry *r, int64_t now_ms, int64_t keep_ms);

#endif
