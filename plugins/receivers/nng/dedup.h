/*
 * Batch deduplication by (instance, session, batch_seq). Agents resend a
 * batch whose ack they did not see, so the same batch can arrive twice; only
 * the first copy may enter the pipeline. Each agent session keeps a watermark
 * (every sequence below it was accepted) plus a bitmap of the next window,
 * since batches in flight at once may arrive out of order.
 */
#ifndef CANOPY_NNG_DEDUP_H
#define CANOPY_NNG_DEDUP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "canopy/dict.h"

#define DEDUP_WINDOW 1024

typedef struct dedup_table {
    pthread_mutex_t lock;
    cn_dict *sessions;
    size_t max_sessions;
    uint64_t evicted;
} dedup_table;

typedef enum dedup_result {
    DEDUP_NEW = 0,   /* claimed: the caller must dedup_commit or dedup_release */
    DEDUP_SEEN,      /* accepted before: ack it again, do not submit */
    DEDUP_NO_MEMORY, /* could not track: treat as retryable */
} dedup_result;

int dedup_init(dedup_table *t, size_t max_sessions);
void dedup_destroy(dedup_table *t);
/* Claims (instance, session, seq); NEW means the batch has not been accepted before. */
dedup_result dedup_claim(dedup_table *t, const char *instance, uint64_t session, uint64_t seq, int64_t now_ms);
/* The claimed batch could not be accepted (pipeline full): let a resend through. */
void dedup_release(dedup_table *t, const char *instance, uint64_t session, uint64_t seq);
size_t dedup_sessions(dedup_table *t);
/* Sessions forgotten so far because max_sessions was reached. */
uint64_t dedup_evicted(dedup_table *t);

#endif
