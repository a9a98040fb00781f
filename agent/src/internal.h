/*
 * Internal declarations shared by the agent library's files. Everything not
 * public is prefixed cn_ag_ so the library can be linked next to the
 * collector core (which owns the plain cn_ helpers) without clashes.
 */
#ifndef CANOPY_AGENT_INTERNAL_H
#define CANOPY_AGENT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "canopy/agent.h"
#include "canopy/v1/canopy.pb-c.h"

#if defined(__GNUC__)
#define CN_AG_LIKELY(x) __builtin_expect(!!(x), 1)
#define CN_AG_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define CN_AG_LIKELY(x) (x)
#define CN_AG_UNLIKELY(x) (x)
#endif

/* ---- clocks (clock.c) ---- */
int64_t cn_ag_mono_ms(void);
int64_t cn_ag_wall_ms(void);
/* Absolute CLOCK_MONOTONIC deadline for pthread_cond_timedwait. */
struct timespec cn_ag_deadline(int64_t mono_ms);
/* Initialises a condition variable that waits on CLOCK_MONOTONIC, so a wall
 * clock jump never stretches a flush or a timeout. */
int cn_ag_cond_init(pthread_cond_t *cv);

/* ---- fork tracking (fork.c): the only process-wide state of the library ---- */
/* Registers the atfork handler once; 0, or -1 when it could not be. */
int cn_ag_fork_init(void);
/* The current fork epoch: bumped in every child of fork(). */
unsigned cn_ag_fork_epoch(void);
/* Marks that this process started nng (a child of it must not use nng). */
void cn_ag_nng_mark_started(void);
/* True when nng was started by this library in a parent of this process. */
bool cn_ag_nng_inherited(void);

/* ---- requests in the sender (sender.c) ---- */
typedef enum cn_ag_kind {
    CN_AG_BATCH = 0,
    CN_AG_QUERY,   /* command query: one attempt; the next poll asks again */
    CN_AG_FINISH,  /* task finish report: acked and resent like a batch */
} cn_ag_kind;

typedef enum cn_ag_outcome {
    CN_AG_ACKED = 0,
    CN_AG_DROPPED,  /* non-retryable reply, attempts exhausted, shutdown */
} cn_ag_outcome;

/* Called on the sender thread, with no sender lock held, once per request
 * when it is finished. reply is NULL unless a reply was decoded. */
typedef void (*cn_ag_done_fn)(void *arg, cn_ag_kind kind, cn_ag_outcome outcome, uint32_t count,
                              const Canopy__V1__Reply *reply);

int cn_ag_sender_new(const cn_sender_options *o, cn_ag_done_fn done, void *arg, cn_sender **out);
/* Queues a request; takes ownership of bytes (malloc'd) in every case.
 * count is handed back to done (the agent passes the snapshot count). */
int cn_ag_sender_submit(cn_sender *s, cn_ag_kind kind, uint8_t *bytes, size_t len, uint64_t seq,
                        uint32_t count);
/* Queued + in-flight bytes, read without the sender lock. */
uint64_t cn_ag_sender_buffered(cn_sender *s);

/* ---- commands (commands.c) ---- */
/* Fills out from a Command; false when it is not a usable ProfileTaskQuery. */
bool cn_ag_command_parse(const Canopy__V1__Command *c, cn_command *out);
/* Merges the ProfileTaskQuery commands of a reply into cmds (kept sorted by
 * create time, one per task id, at most cap); raises *last_command_time and
 * counts them in *received. True when the list changed. */
bool cn_ag_commands_merge(cn_command *cmds, size_t *n, size_t cap, const Canopy__V1__Reply *r,
                          int64_t *last_command_time, uint64_t *received);

/* ---- identity helpers (identity.c) ---- */
/* "<pid>@<host>" into a malloc'd string, or NULL. */
char *cn_ag_default_instance(uint32_t pid, const char *host);
/* gethostname() into a malloc'd string ("localhost" if it fails), or NULL. */
char *cn_ag_hostname(void);
char *cn_ag_strdup(const char *s);

#endif
