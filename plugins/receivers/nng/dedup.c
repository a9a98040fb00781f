#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup.h"

/* Highest watermark: the window [watermark, watermark + DEDUP_WINDOW) then ends at UINT64_MAX. */
#define WATERMARK_MAX (UINT64_MAX - DEDUP_WINDOW + 1)

typedef struct dedup_session {
    uint64_t watermark; /* every seq < watermark has been accepted */
    uint64_t bits[DEDUP_WINDOW / 64]; /* bit i: watermark + i accepted */
    int64_t last_seen_ms;
} dedup_session;

int dedup_init(dedup_table *t, size_t max_sessions)
{
    t->sessions = cn_dict_new(64);
    if (!t->sessions)
        return -1;
    pthread_mutex_init(&t->lock, NULL);
    t->max_sessions = max_sessions ? max_sessions : 10000;
    t->evicted = 0;
    return 0;
}

void dedup_destroy(dedup_table *t)
{
    if (!t->sessions)
        return;
    cn_dict_free(t->sessions, free);
    t->sessions = NULL;
    pthread_mutex_destroy(&t->lock);
}

static void make_key(char *buf, size_t len, const char *instance, uint64_t session)
{
    snprintf(buf, len, "%016llx/%s", (unsigned long long)session, instance);
}

static bool bit_get(const dedup_session *s, uint64_t i) { return s->bits[i / 64] >> (i % 64) & 1; }
static void bit_set(dedup_session *s, uint64_t i, bool on)
{
    if (on)
        s->bits[i / 64] |= 1ULL << (i % 64);
    else
        s->bits[i / 64] &= ~(1ULL << (i % 64));
}

/* Moves the window forward by n, dropping the lowest n bits (a multi-word shift). */
static void slide(dedup_session *s, uint64_t n)
{
    const size_t words = DEDUP_WINDOW / 64;
    if (n >= DEDUP_WINDOW) {
        memset(s->bits, 0, sizeof s->bits);
    } else {
        size_t skip = (size_t)(n / 64), shift = (size_t)(n % 64);
        for (size_t i = 0; i < words; i++) {
            uint64_t lo = i + skip < words ? s->bits[i + skip] : 0;
            uint64_t hi = i + skip + 1 < words ? s->bits[i + skip + 1] : 0;
            s->bits[i] = shift ? (lo >> shift) | (hi << (64 - shift)) : lo;
        }
    }
    s->watermark += n;
}

/* Number of consecutive accepted sequences at the bottom of the window. */
static uint64_t accepted_run(const dedup_session *s)
{
    uint64_t run = 0;
    for (size_t i = 0; i < DEDUP_WINDOW / 64; i++) {
        if (s->bits[i] == UINT64_MAX) {
            run += 64;
            continue;
        }
        return run + (uint64_t)__builtin_ctzll(~s->bits[i]);
    }
    return run;
}

/* Evicts the session seen longest ago; its agent would have resent long since. */
static void evict_oldest(dedup_table *t)
{
    size_t pos = 0;
    const char *key, *oldest_key = NULL;
    void *value;
    int64_t oldest = INT64_MAX;
    while (cn_dict_next(t->sessions, &pos, &key, &value)) {
        dedup_session *s = value;
        if (s->last_seen_ms < oldest) {
            oldest = s->last_seen_ms;
            oldest_key = key;
        }
    }
    if (oldest_key) {
        char copy[512];
        snprintf(copy, sizeof copy, "%s", oldest_key);
        free(cn_dict_remove(t->sessions, copy));
        t->evicted++;
    }
}

dedup_result dedup_claim(dedup_table *t, const char *instance, uint64_t session, uint64_t seq, int64_t now_ms)
{
    char key[512];
    make_key(key, sizeof key, instance, session);
    pthread_mutex_lock(&t->lock);
    dedup_result result = DEDUP_NEW;
    dedup_session *s = cn_dict_get(t->sessions, key);
    if (!s) {
        if (cn_dict_size(t->sessions) >= t->max_sessions)
            evict_oldest(t);
        s = calloc(1, sizeof *s);
        if (!s || cn_dict_put(t->sessions, key, s) != 0) {
            free(s);
            pthread_mutex_unlock(&t->lock);
            return DEDUP_NO_MEMORY;
        }
    }
    s->last_seen_ms = now_ms;
    /* Offsets from the watermark, never watermark + n: batch_seq is the agent's
     * to choose, and a sum near UINT64_MAX would wrap (found by fuzz_dedup). */
    if (seq < s->watermark) {
        result = DEDUP_SEEN;
    } else {
        uint64_t i = seq - s->watermark;
        if (i >= DEDUP_WINDOW) {
            slide(s, i - DEDUP_WINDOW + 1);
            i = DEDUP_WINDOW - 1;
        }
        if (bit_get(s, i)) {
            result = DEDUP_SEEN;
        } else {
            bit_set(s, i, true);
            /* Keep the window anchored at the first gap, but never past
             * WATERMARK_MAX, so the window's last bit stays <= UINT64_MAX. */
            uint64_t run = accepted_run(s);
            if (run > WATERMARK_MAX - s->watermark)
                run = WATERMARK_MAX - s->watermark;
            if (run)
                slide(s, run);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return result;
}

void dedup_release(dedup_table *t, const char *instance, uint64_t session, uint64_t seq)
{
    char key[512];
    make_key(key, sizeof key, instance, session);
    pthread_mutex_lock(&t->lock);
    dedup_session *s = cn_dict_get(t->sessions, key);
    if (s) {
        if (seq >= s->watermark && seq - s->watermark < DEDUP_WINDOW) {
            bit_set(s, seq - s->watermark, false);
        } else if (seq < s->watermark && s->watermark - seq <= DEDUP_WINDOW) {
            /* The watermark already moved past seq: move it back to seq. */
            uint64_t back = s->watermark - seq;
            dedup_session moved = *s;
            memset(moved.bits, 0, sizeof moved.bits);
            moved.watermark = seq;
            for (uint64_t i = 1; i < back; i++)
                bit_set(&moved, i, true);
            for (uint64_t i = 0; i + back < DEDUP_WINDOW; i++)
                if (bit_get(s, i))
                    bit_set(&moved, i + back, true);
            *s = moved;
        }
    }
    pthread_mutex_unlock(&t->lock);
}

size_t dedup_sessions(dedup_table *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = cn_dict_size(t->sessions);
    pthread_mutex_unlock(&t->lock);
    return n;
}

uint64_t dedup_evicted(dedup_table *t)
{
    pthread_mutex_lock(&t->lock);
    uint64_t n = t->evicted;
    pthread_mutex_unlock(&t->lock);
    return n;
}
