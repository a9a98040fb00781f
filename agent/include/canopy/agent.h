/*
 * canopy agent client library: the native half of the agent.
 *
 * Three layers, each usable on its own:
 *
 *   cn_builder  one batch of snapshots with a per-batch string table, encoded
 *               to canopy.v1.Request bytes. No threads, no nng, not thread
 *               safe (one owner at a time).
 *   cn_sender   a native pthread that ships encoded requests over nng REQ with
 *               a window of contexts in flight, waits for acks and resends
 *               what was not acked. Bounded memory, drops counted.
 *   cn_agent    what a worker process embeds: builder + flush policy +
 *               sender + command polling + task-finish reports, behind one
 *               mutex, safe to call from the greenlet switch callback.
 *
 * All functions return 0 (or a pointer) on success and a negative CN_E* code
 * (or NULL) on failure; none of them aborts or prints.
 *
 * FORK AND NNG. nng 1.5 panics (or hangs) in a child forked after the parent
 * started nng. So nothing here touches nng before it is needed:
 *   - cn_agent_new() starts no thread and no nng; an agent made in a gunicorn
 *     master and inherited by its workers is fine, as long as the master
 *     never starts it (never calls cn_agent_start/add/poll/report on it).
 *   - cn_agent_start() (or the first add/poll/report) starts the agent's
 *     native thread; nng is started by that thread on the first send.
 *   - In a child of fork() the agent starts afresh on first use: new session
 *     id, batch_seq from 0, empty queues, new threads, new socket, and, when
 *     CN_AGENT_INSTANCE was defaulted, a new "<pid>@<host>" instance. The
 *     parent's threads and sockets are never touched in the child (their
 *     memory is abandoned, not freed, because it may be mid-update).
 *   - If the parent had already started nng (through this library), the
 *     child agent refuses to send rather than crash: cn_agent_add returns
 *     -CN_ECLOSED and every snapshot is counted in snapshots_dropped.
 *   - cn_sender_new() starts nng immediately: only call it after fork.
 */
#ifndef CANOPY_AGENT_H
#define CANOPY_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CN_AGENT_VERSION "0.1.0"
/* The collector's default nng receiver URL (config/canopy.yaml). */
#define CN_AGENT_DEFAULT_URL "ipc:///tmp/canopy.sock"
/* The packaged collector's socket (docs/deploy.md): cn_agent_options_init
 * picks it over CN_AGENT_DEFAULT_URL whenever CN_AGENT_SERVICE_SOCKET exists. */
#define CN_AGENT_SERVICE_SOCKET "/run/canopy/canopy.sock"
#define CN_AGENT_SERVICE_URL "ipc://" CN_AGENT_SERVICE_SOCKET
#define CN_PROTOCOL_VERSION 1

/* Error codes (returned negated). */
enum {
    CN_EOK = 0,
    CN_ENOMEM = 1,   /* allocation failed */
    CN_EINVAL = 2,   /* bad argument */
    CN_EFULL = 3,    /* memory or queue bound reached; the data was dropped and counted */
    CN_ETIMEDOUT = 4,
    CN_ECLOSED = 5,  /* shutting down, or disabled after an unsafe fork */
    CN_ENNG = 6,     /* nng failed (socket/dial) */
    CN_ELIMIT = 7,   /* a builder limit was hit (batch full) */
};
const char *cn_agent_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Identity: sent in every Request.                                          */

typedef struct cn_identity {
    const char *service;
    const char *instance;
    const char *host;
    uint32_t pid;
    const char *agent_version;
    uint64_t session;  /* random per process start, see cn_session_random */
    const char *mode;  /* "greenlet", "sampling", "thread"; NULL: not said (see cn_agent_set_mode) */
} cn_identity;

/* A random 64-bit session id (getrandom, with a clock/pid fallback); never 0. */
uint64_t cn_session_random(void);

/* ------------------------------------------------------------------------ */
/* Batch builder with string interning.                                       */

typedef struct cn_builder cn_builder;

/*
 * A caller-owned cache of one string's index in the current batch, for the
 * hot path: keep one slot per distinct string (e.g. per code object and line
 * number). When slot->gen equals the builder's generation the index is used
 * as is (no hashing, no string compare); otherwise the string is interned by
 * hash and the slot refreshed. Zero-initialise new slots (generation 0 is
 * never used). A slot must always be used with the same string, and with one
 * builder or one agent only.
 */
typedef struct cn_intern_slot {
    uint32_t gen;
    uint32_t index;
} cn_intern_slot;

/* A string reference: ptr/len (need not be NUL-terminated), optional slot. */
typedef struct cn_str {
    const char *ptr;
    size_t len;
    cn_intern_slot *slot;  /* may be NULL */
} cn_str;

/* One snapshot to add. frames[0] is the root (outermost) frame. */
typedef struct cn_snapshot_in {
    cn_str task;     /* profiling task id */
    cn_str segment;  /* trace segment id */
    int64_t time_ms; /* epoch ms */
    int32_t sequence;/* dense from 0 within the segment, made by the caller */
    const cn_str *frames;
    size_t n_frames;
} cn_snapshot_in;

typedef struct cn_builder_limits {
    size_t max_snapshots;  /* per batch; 0 = unlimited */
    size_t max_bytes;      /* estimated encoded size; 0 = unlimited */
    size_t max_frames;     /* per snapshot; deeper stacks keep the LEAF frames; 0 = unlimited */
    size_t max_string_len; /* bytes; longer strings are cut at a UTF-8 boundary; 0 = unlimited */
    size_t max_strings;    /* string table size; a snapshot that could overflow it makes
                              the batch full; 0 = unlimited */
} cn_builder_limits;

cn_builder *cn_builder_new(const cn_builder_limits *limits /* may be NULL */);
void cn_builder_free(cn_builder *b);
/* Empties the batch and moves to the next generation (invalidating slots). */
void cn_builder_reset(cn_builder *b);
/* Empties the batch and sets the generation (for a pool of builders sharing
 * slots: the pool owner hands out generations that are unique; 0 is skipped). */
void cn_builder_reset_gen(cn_builder *b, uint32_t gen);
uint32_t cn_builder_generation(const cn_builder *b);
size_t cn_builder_snapshots(const cn_builder *b);
size_t cn_builder_strings(const cn_builder *b);
/* Estimated encoded size in bytes (an upper bound within a few percent). */
size_t cn_builder_size(const cn_builder *b);
/* True when max_snapshots or max_bytes is reached. */
bool cn_builder_full(const cn_builder *b);

/* Interns one string; *index receives its string-table index. A string is
 * cut at its first NUL byte (protobuf strings on the wire are C strings). */
int cn_builder_intern(cn_builder *b, cn_str s, uint32_t *index);
/* The string at index (NUL-terminated, valid until the next add/reset). */
const char *cn_builder_string(const cn_builder *b, uint32_t index, size_t *len);

/* Adds a snapshot. Fails with -CN_ELIMIT when the batch is full (nothing is
 * added) and -CN_ENOMEM on allocation failure (nothing is added). */
int cn_builder_add(cn_builder *b, const cn_snapshot_in *s);
/* Same with pre-interned indices (from cn_builder_intern, same generation). */
int cn_builder_add_indices(cn_builder *b, uint32_t task, uint32_t segment, int64_t time_ms,
                           int32_t sequence, const uint32_t *frames, size_t n_frames);

/* Encodes Request{protocol_version=1, agent=id, batch{batch_seq, strings,
 * snapshots}} into a malloc'd buffer the caller frees with free(). */
int cn_builder_encode(const cn_builder *b, const cn_identity *id, uint64_t batch_seq,
                      uint8_t **out, size_t *out_len);

/* The two control requests, same buffer convention. */
int cn_encode_command_query(const cn_identity *id, int64_t last_command_time, uint8_t **out,
                            size_t *out_len);
int cn_encode_task_finish(const cn_identity *id, const char *task_id, uint8_t **out,
                          size_t *out_len);

/* ------------------------------------------------------------------------ */
/* Sender: encoded requests over nng REQ, acked and resent.                  */

/* Counters (monotonic) and gauges, shared by cn_sender and cn_agent. */
typedef struct cn_send_stats {
    uint64_t batches_sent;     /* first attempts */
    uint64_t batches_acked;    /* Reply OK or DUPLICATE */
    uint64_t batches_duplicate;/* of which DUPLICATE */
    uint64_t batches_resent;   /* further attempts */
    uint64_t batches_dropped;  /* memory bound, non-retryable reply, attempts exhausted, shutdown */
    uint64_t requests_sent;    /* every attempt of every request kind */
    uint64_t errors;           /* timeouts, transport errors, undecodable replies, error replies */
    uint64_t bytes_sent;       /* every attempt */
    uint64_t bytes_buffered;   /* gauge: queued + in flight */
    uint64_t requests_pending; /* gauge: queued + in flight */
    uint64_t socket_resets;    /* socket reopened after attempts in a row went unanswered */
} cn_send_stats;

typedef struct cn_sender_options {
    const char *url;             /* required */
    unsigned window;             /* nng contexts in flight; default 4 */
    uint32_t timeout_ms;         /* reply timeout per attempt; default 5000 */
    uint32_t backoff_min_ms;     /* first resend delay; default 50 */
    uint32_t backoff_max_ms;     /* cap of the doubling delay; default 5000 */
    uint32_t max_attempts;       /* per request; 0 = unlimited (default) */
    size_t max_buffered_bytes;   /* queued + in flight; default 8 MiB */
    /* TLS, for tls+tcp:// URLs only (all NULL: none). The server's certificate
     * must chain to tls_ca_file and match tls_server_name (default: the URL's
     * host). tls_cert_file + tls_key_file: the client certificate a collector
     * with client_auth: required asks for. PEM files, read by cn_sender_new. */
    const char *tls_ca_file;
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_server_name;
} cn_sender_options;

/* Fills the defaults (url NULL). */
void cn_sender_options_init(cn_sender_options *o);

typedef struct cn_sender cn_sender;

/* All cn_sender functions are thread safe.
 * Starts the sender thread, opens the REQ socket and dials (non-blocking:
 * the dial is retried in the background until the collector is up). */
int cn_sender_new(const cn_sender_options *o, cn_sender **out);
/* Queues an encoded Request carrying a batch (copied). batch_seq is the
 * value inside the bytes, used for logs and to check the Reply echo; a
 * resend sends the very same bytes, so the collector can deduplicate.
 * Returns -CN_EFULL (counted as dropped) when the memory bound is reached. */
int cn_sender_submit(cn_sender *s, const void *bytes, size_t len, uint64_t batch_seq);
/* Waits until nothing is queued or in flight. 0, or -CN_ETIMEDOUT. */
int cn_sender_wait_idle(cn_sender *s, uint32_t timeout_ms);
void cn_sender_stats(cn_sender *s, cn_send_stats *out);
/* Stops the thread, closes the socket, drops (and counts) what is left. */
void cn_sender_free(cn_sender *s);

/* ------------------------------------------------------------------------ */
/* Agent.                                                                     */

typedef struct cn_agent_options {
    const char *url;              /* default CN_AGENT_DEFAULT_URL */
    const char *service;          /* required */
    const char *instance;         /* NULL: "<pid>@<host>", recomputed after fork */
    const char *host;             /* NULL: gethostname() */
    size_t max_batch_snapshots;   /* default 256 */
    uint32_t max_batch_age_ms;    /* a non-empty batch is flushed this old; default 200 */
    size_t max_batch_bytes;       /* estimated encoded size; default 1 MiB */
    size_t max_frames;            /* per snapshot, leaf frames kept; default 1024; 0 = unlimited */
    unsigned window;              /* default 4 */
    uint32_t timeout_ms;          /* reply timeout per attempt; default 5000 */
    uint32_t backoff_min_ms;      /* default 50 */
    uint32_t backoff_max_ms;      /* default 5000 */
    size_t max_buffered_bytes;    /* encoded + sealed batches; default 8 MiB */
    uint32_t command_poll_ms;     /* default 5000; 0 = only cn_agent_poll_now */
    uint32_t shutdown_timeout_ms; /* cn_agent_free waits this long for acks; default 2000 */
    /* The collector rejects a whole batch over its limits (non-retryable),
     * so the defaults below match the collector's nng receiver defaults. */
    size_t max_string_len;        /* bytes, cut at a UTF-8 boundary; default 4096 */
    size_t max_strings;           /* per batch string table; default 65536 */
    /* TLS for a tls+tcp:// url; see cn_sender_options. Copied. */
    const char *tls_ca_file;
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_server_name;
} cn_agent_options;

/* Fills the defaults (service NULL). */
void cn_agent_options_init(cn_agent_options *o);

typedef struct cn_agent cn_agent;

/* Copies the options. Starts no thread and no nng (see FORK AND NNG). */
int cn_agent_new(const cn_agent_options *o, cn_agent **out);
/*
 * The profiling mode sent with every later batch ("greenlet", "sampling",
 * "thread"), so the collector can label profiles with it. `mode` must outlive
 * the agent (a string literal): it is not copied. Thread safe.
 */
void cn_agent_set_mode(cn_agent *a, const char *mode);
/* Starts the native thread (flush timer, command polling, sender; nng on the
 * first send). Idempotent; implied by add/poll/report. Call it in the worker. */
int cn_agent_start(cn_agent *a);

/*
 * Adds one snapshot to the current batch. Never blocks on I/O: it takes the
 * agent mutex for the interning and copying only; when the batch is full it
 * is handed to the native thread, which encodes and sends it. Slots in s are
 * read and refreshed under the agent mutex. Returns 0 when the snapshot was
 * taken; a whole batch may still be dropped later over the memory bound
 * (counted in batches_dropped and snapshots_dropped, never silently).
 * Fails with -CN_ENOMEM, -CN_EINVAL or -CN_ECLOSED (counted as dropped).
 */
int cn_agent_add(cn_agent *a, const cn_snapshot_in *s);
/* Hands the current batch to the native thread now (not waiting for it). */
int cn_agent_flush(cn_agent *a);

/* A ProfileTaskQuery command, copied out. Strings longer than the fields
 * are truncated (and still NUL-terminated). */
typedef struct cn_command {
    char task_id[128];
    char serial[128];
    char endpoint[512];
    int64_t duration_min;
    int64_t min_duration_ms;
    int64_t dump_period_ms;
    int64_t max_sampling_count;
    int64_t start_time_ms;
    int64_t create_time_ms;
    /* canopy's own args: a continuous task never ends (Duration is 0) and
     * allows max_sampling_count requests per window_ms. */
    bool continuous;
    int64_t window_ms;
} cn_command;

/* Most commands kept; a newer command for a known task id replaces it, and
 * beyond this the oldest (by create time) is forgotten. */
#define CN_AGENT_MAX_COMMANDS 64

/* Asks for commands now (next loop of the native thread). */
int cn_agent_poll_now(cn_agent *a);
/*
 * Copies up to cap commands (oldest create time first) into out and returns
 * how many are kept in total. *version (may be NULL) changes whenever new
 * commands arrived; compare it with the last value seen to skip the copy:
 * cn_agent_commands(a, NULL, 0, &v) only reads the version.
 */
size_t cn_agent_commands(cn_agent *a, cn_command *out, size_t cap, uint64_t *version);
/* Largest CreateTime seen: the lastCommandTime of the next query. */
int64_t cn_agent_last_command_time(cn_agent *a);

/* Queues Request{task_finish{task_id}}; acked and resent like batches. */
int cn_agent_report_finish(cn_agent *a, const char *task_id);

typedef struct cn_agent_stats {
    cn_send_stats send;
    uint64_t snapshots_added;
    uint64_t snapshots_dropped;   /* memory bound, encode failure, dropped batches */
    uint64_t batches_sealed;
    uint64_t command_queries;     /* sent */
    uint64_t commands_received;
    uint64_t finish_reports;      /* queued */
    uint64_t session;             /* current session id */
    uint64_t next_batch_seq;
} cn_agent_stats;

void cn_agent_stats_get(cn_agent *a, cn_agent_stats *out);

/* Flushes the current batch, waits up to shutdown_timeout_ms for every ack,
 * stops the threads, closes nng and frees. NULL is fine. In a forked child
 * that never used the agent, it frees only what the child owns. */
void cn_agent_free(cn_agent *a);

#ifdef __cplusplus
}
#endif

#endif
