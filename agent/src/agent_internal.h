/*
 * The agent's layout, shared by agent.c (the API, called from the app's
 * threads) and agent_thread.c (the native flush/poll thread).
 *
 * Everything that belongs to one process lives in a cn_ag_state. After a
 * fork the child makes a new state and abandons the inherited one: its
 * threads do not exist in the child and its mutex or lists may have been
 * mid-update in another parent thread at the moment of the fork.
 */
#ifndef CANOPY_AGENT_AGENT_INTERNAL_H
#define CANOPY_AGENT_AGENT_INTERNAL_H

#include <stdatomic.h>
#include <sys/types.h>

#include "internal.h"

#define CN_AG_SEALED_MAX 16  /* full batches waiting to be encoded */
#define CN_AG_SPARE_MAX 2    /* emptied builders kept for reuse */
#define CN_AG_FINISH_MAX 64  /* task-finish reports waiting to be queued */

typedef struct cn_ag_state {
    struct cn_agent *agent;
    pid_t pid;
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* wakes the agent thread */
    bool mu_ok, cv_ok;
    pthread_t thread;
    bool thread_ok;
    bool stopping;
    bool disabled;      /* nng was started in a parent: never touch it here */

    char *host, *instance;
    cn_identity id;     /* immutable once made */
    uint64_t next_seq;

    cn_builder *cur;    /* NULL only after an allocation failure */
    int64_t cur_since;  /* monotonic ms of cur's first snapshot */
    cn_builder *sealed[CN_AG_SEALED_MAX]; /* FIFO */
    size_t n_sealed;
    size_t sealed_bytes;
    cn_builder *spare[CN_AG_SPARE_MAX];
    size_t n_spare;
    char *finish[CN_AG_FINISH_MAX];
    size_t n_finish;
    bool poll_now;
    int64_t next_poll;  /* monotonic ms */

    cn_sender *sender;  /* made by the agent thread on the first send */
    int64_t sender_retry_at;

    cn_command cmds[CN_AGENT_MAX_COMMANDS];
    size_t n_cmds;
    uint64_t cmd_version;
    int64_t last_command_time;

    /* agent-level counters; cn_agent_stats_get adds the sender's */
    uint64_t snapshots_added, snapshots_dropped, batches_sealed, batches_dropped, errors;
    uint64_t command_queries, commands_received, finish_reports;
} cn_ag_state;

struct cn_agent {
    cn_agent_options o;  /* strings point at the copies below */
    char *url, *service, *instance, *host;
    char *tls_ca_file, *tls_cert_file, *tls_key_file, *tls_server_name;
    atomic_uint gen;     /* builder generations; kept across forks so a
                            caller's slots never match a stale batch */
    atomic_uint epoch;   /* fork epoch the state belongs to */
    atomic_int resetting;
    _Atomic(cn_ag_state *) st;
    /* cn_agent_set_mode: a string that outlives the agent (a literal), read when a batch is encoded. */
    _Atomic(const char *) mode;
};

/* agent_thread.c */
void *cn_ag_agent_main(void *arg);
/* Encodes and queues the sealed batches and finish reports, and a command
 * query when poll is set. Called by the agent thread, or by cn_agent_free
 * when that thread could never start. */
void cn_ag_agent_work(cn_ag_state *st, bool poll);

/* agent.c */
uint32_t cn_ag_next_gen(struct cn_agent *a);
/* Hands cur to the agent thread (or drops it, counted, over the memory
 * bound) and puts an empty builder in its place. Lock held. */
void cn_ag_seal_locked(cn_ag_state *st);
/* Gives an encoded builder back for reuse. Lock held. */
void cn_ag_recycle_locked(cn_ag_state *st, cn_builder *b);

#endif
