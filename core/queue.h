/*
 * A bounded FIFO of pointers shared by threads (mutex + condition variables).
 * Producers never block: a full queue is reported so the caller can refuse or
 * count. Reservations let a producer make an all-or-nothing push into several
 * queues.
 */
#ifndef CANOPY_QUEUE_H
#define CANOPY_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cn_queue {
    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    void **items;
    size_t cap, head, len, reserved;
    bool closed;
} cn_queue;

int cn_queue_init(cn_queue *q, size_t capacity);
void cn_queue_destroy(cn_queue *q);
/* Returns 0, or -1 when full or closed. */
int cn_queue_try_push(cn_queue *q, void *item);
/* Holds one slot for a later cn_queue_push_reserved; -1 when full or closed. */
int cn_queue_reserve(cn_queue *q);
void cn_queue_unreserve(cn_queue *q);
void cn_queue_push_reserved(cn_queue *q, void *item);
/*
 * Pops the oldest item, waiting up to timeout_ms. Returns NULL on timeout, or
 * when the queue is closed and empty (check cn_queue_drained).
 */
void *cn_queue_pop(cn_queue *q, int64_t timeout_ms);
/* After close, pushes fail and pop returns what is left, then NULL. */
void cn_queue_close(cn_queue *q);
bool cn_queue_drained(cn_queue *q);
size_t cn_queue_len(cn_queue *q);

#endif
