#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "canopy/common.h"
#include "queue.h"

int cn_queue_init(cn_queue *q, size_t capacity)
{
    q->items = calloc(capacity ? capacity : 1, sizeof *q->items);
    if (!q->items)
        return -1;
    q->cap = capacity ? capacity : 1;
    q->head = q->len = q->reserved = 0;
    q->closed = false;
    pthread_mutex_init(&q->lock, NULL);
    /* Timed waits use the monotonic clock so wall-clock jumps do not stall them. */
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&q->not_empty, &attr);
    pthread_condattr_destroy(&attr);
    return 0;
}

void cn_queue_destroy(cn_queue *q)
{
    if (!q->items)
        return;
    free(q->items);
    q->items = NULL;
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->not_empty);
}

static void push_locked(cn_queue *q, void *item)
{
    q->items[(q->head + q->len) % q->cap] = item;
    q->len++;
    pthread_cond_signal(&q->not_empty);
}

int cn_queue_try_push(cn_queue *q, void *item)
{
    pthread_mutex_lock(&q->lock);
    int rc = -1;
    if (!q->closed && q->len + q->reserved < q->cap) {
        push_locked(q, item);
        rc = 0;
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

int cn_queue_reserve(cn_queue *q)
{
    pthread_mutex_lock(&q->lock);
    int rc = -1;
    if (!q->closed && q->len + q->reserved < q->cap) {
        q->reserved++;
        rc = 0;
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

void cn_queue_unreserve(cn_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->reserved--;
    pthread_mutex_unlock(&q->lock);
}

void cn_queue_push_reserved(cn_queue *q, void *item)
{
    /* A reserved slot is honoured even if the queue closed meanwhile: the
     * producer already promised the item to its sender. */
    pthread_mutex_lock(&q->lock);
    q->reserved--;
    push_locked(q, item);
    pthread_mutex_unlock(&q->lock);
}

void *cn_queue_pop(cn_queue *q, int64_t timeout_ms)
{
    struct timespec deadline = cn_deadline_after(CLOCK_MONOTONIC, timeout_ms);
    pthread_mutex_lock(&q->lock);
    /* A closed queue still waits for reserved items: they are on their way. */
    while (q->len == 0 && (!q->closed || q->reserved > 0)) {
        if (pthread_cond_timedwait(&q->not_empty, &q->lock, &deadline) == ETIMEDOUT)
            break;
    }
    void *item = NULL;
    if (q->len > 0) {
        item = q->items[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
    }
    pthread_mutex_unlock(&q->lock);
    return item;
}

void cn_queue_close(cn_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->closed = true;
    pthread_cond_broadcast(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

bool cn_queue_drained(cn_queue *q)
{
    pthread_mutex_lock(&q->lock);
    bool drained = q->closed && q->len == 0 && q->reserved == 0;
    pthread_mutex_unlock(&q->lock);
    return drained;
}

size_t cn_queue_len(cn_queue *q)
{
    pthread_mutex_lock(&q->lock);
    size_t len = q->len;
    pthread_mutex_unlock(&q->lock);
    return len;
}
