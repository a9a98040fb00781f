/*
 * A tiny in-process nng REP server for the agent tests. It decodes every
 * request, records it, and answers according to a script: drop the first N
 * replies, answer the first M with a retryable OVERLOADED, or reject with a
 * non-retryable reason; command queries get the configured commands.
 */
#ifndef CN_TEST_REP_SERVER_H
#define CN_TEST_REP_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>

#include "canopy/v1/canopy.pb-c.h"

#define TS_MAX_RECORDS 4096

typedef struct ts_record {
    int body;            /* Canopy__V1__Request__BodyCase */
    uint64_t batch_seq;
    uint64_t session;
    uint32_t pid;
    char instance[300];
    char task_id[64];    /* task finish */
    int64_t last_command_time;
    size_t n_snapshots;
    size_t n_strings;
    char first_task[32];     /* task id of the first snapshot */
    char first_segment[32];
    int32_t first_sequence;
    char first_frames[256];  /* its frames, root first, joined by '|' */
    uint32_t digest;     /* FNV-1a of the request bytes */
    size_t len;
} ts_record;

typedef struct ts_server {
    nng_socket sock;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    /* script (set before start or under mu) */
    int drop_first;        /* requests left to leave unanswered */
    int overload_first;    /* requests left to answer OVERLOADED, retryable */
    int reject_reason;     /* if non-zero: batches get this, retryable=false */
    int n_commands;        /* ProfileTaskQuery commands to answer queries with */
    int64_t command_create_base;
    /* results */
    ts_record rec[TS_MAX_RECORDS];
    size_t n_rec;
    size_t replies;
} ts_server;

/* Listens on url and starts the thread; 0 on success. */
int ts_server_start(ts_server *s, const char *url);
void ts_server_stop(ts_server *s);
/* Copies the records under the lock; returns how many. */
size_t ts_server_records(ts_server *s, ts_record *out, size_t cap);
/* A URL unique to this process and tag. */
void ts_url(char *buf, size_t cap, const char *tag);

#endif
