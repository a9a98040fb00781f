/*
 * Fuzz target: the nng receiver's batch deduplication (dedup.c), against a
 * model of what it promises. Input: one byte choosing max_sessions, then
 * records of 10 bytes: [op][who][8 bytes]. op bit 0: claim (else release the
 * most recent NEW claim of that agent); op bit 1: the 8 bytes are the raw
 * batch_seq (else a small signed step from the agent's last seq, the common
 * case of batches in flight out of order). who picks one of 4 instances x 4
 * sessions.
 *
 * Invariants:
 *  - a batch_seq claimed NEW and not released is SEEN on every later claim:
 *    a batch never enters the pipeline twice (one documented exception,
 *    see the release below);
 *  - a batch_seq above every one the agent claimed so far is NEW;
 *  - a released batch_seq is NEW again when claimed next, as long as the
 *    agent has not moved a whole window (DEDUP_WINDOW) past it meanwhile:
 *    a batch refused as OVERLOADED must not be acked as DUPLICATE on resend.
 * The model forgets everything when a session is evicted (max_sessions).
 */
#include <string.h>

#include "canopy/log.h"
#include "dedup.h"
#include "fuzz.h"

#define N_AGENTS 16
/* Model bound: beyond it an input only slows the search down. */
#define MAX_ACCEPTED 512

typedef struct agent_model {
    bool stale;                      /* the table may hold state the model never saw */
    bool any;
    uint64_t last, max;              /* last claimed, highest claimed */
    uint64_t accepted[MAX_ACCEPTED]; /* claimed NEW, not released */
    size_t n_accepted;
    bool has_released;
    uint64_t released;               /* must be NEW when claimed next */
    bool has_new;
    uint64_t last_new;               /* the claim a release undoes */
} agent_model;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cn_log_set_level(CN_LOG_OFF);
    return 0;
}

static bool accepted(const agent_model *m, uint64_t seq)
{
    for (size_t i = 0; i < m->n_accepted; i++)
        if (m->accepted[i] == seq)
            return true;
    return false;
}

static void unaccept(agent_model *m, uint64_t seq)
{
    for (size_t i = 0; i < m->n_accepted; i++)
        if (m->accepted[i] == seq) {
            m->accepted[i] = m->accepted[--m->n_accepted];
            return;
        }
}

/* After an eviction: the sessions still in the table keep state the model no longer has. */
static void forget_all(agent_model *models)
{
    memset(models, 0, N_AGENTS * sizeof *models);
    for (size_t i = 0; i < N_AGENTS; i++)
        models[i].stale = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    dedup_table t;
    /* 16 is the receiver's minimum max_agent_sessions; 4 makes eviction common. */
    FUZZ_CHECK(dedup_init(&t, data[0] & 1 ? 4 : 16) == 0);
    static agent_model models[N_AGENTS];
    memset(models, 0, sizeof models);
    uint64_t evicted = 0;
    int64_t now = 1000;
    for (size_t pos = 1; pos + 10 <= size; pos += 10) {
        const uint8_t op = data[pos], who = data[pos + 1] % N_AGENTS;
        uint64_t raw = 0;
        for (int i = 0; i < 8; i++)
            raw |= (uint64_t)data[pos + 2 + i] << (8 * i);
        char instance[16];
        snprintf(instance, sizeof instance, "agent-%u", who % 4u);
        const uint64_t session = 1 + who / 4u;
        agent_model *m = &models[who];
        now++;
        if (t.evicted != evicted) {
            evicted = t.evicted;
            forget_all(models); /* which session went is unknown */
        }
        if (!(op & 1)) {
            if (m->has_new) {
                dedup_release(&t, instance, session, m->last_new);
                unaccept(m, m->last_new);
                /* Moving the window back to last_new loses what lies a window or more
                 * above it: those may be accepted once more (at least once; the merge
                 * processor drops the repeated snapshots). Only an agent with more
                 * than DEDUP_WINDOW batches in flight gets there. */
                for (size_t i = 0; i < m->n_accepted;)
                    if (m->accepted[i] > m->last_new && m->accepted[i] - m->last_new >= DEDUP_WINDOW)
                        m->accepted[i] = m->accepted[--m->n_accepted];
                    else
                        i++;
                m->has_new = false;
                /* Within a window of every claim since, a resend must get through. */
                m->has_released = !m->stale && m->max - m->last_new < DEDUP_WINDOW;
                m->released = m->last_new;
            }
            continue;
        }
        uint64_t seq = op & 2 ? raw : m->last + (uint64_t)(int64_t)(int8_t)data[pos + 2];
        dedup_result r = dedup_claim(&t, instance, session, seq, now);
        FUZZ_CHECK(r == DEDUP_NEW || r == DEDUP_SEEN);
        if (t.evicted != evicted) {
            /* This claim evicted a session (maybe this agent's own): no model claims. */
            evicted = t.evicted;
            forget_all(models);
        } else {
            if (m->any && accepted(m, seq))
                FUZZ_CHECK(r == DEDUP_SEEN);
            if (!m->stale && (!m->any || seq > m->max))
                FUZZ_CHECK(r == DEDUP_NEW);
            if (m->has_released && seq == m->released && m->max - seq < DEDUP_WINDOW)
                FUZZ_CHECK(r == DEDUP_NEW);
        }
        if (m->has_released && seq == m->released)
            m->has_released = false;
        if (!m->any || seq > m->max)
            m->max = seq;
        m->any = true;
        m->last = seq;
        if (r == DEDUP_NEW) {
            if (m->n_accepted < MAX_ACCEPTED)
                m->accepted[m->n_accepted++] = seq;
            m->has_new = true;
            m->last_new = seq;
        }
    }
    dedup_destroy(&t);
    return 0;
}
