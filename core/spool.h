/*
 * A persistent spool: an append-only log of records (encoded agent requests)
 * in segment files, each record framed with its sequence number, length and a
 * CRC32, plus a committed read cursor. It is an exporter's queue on disk:
 * the receiver appends a batch before it acks the agent, and the exporter's
 * worker reads records back, so a crash, a restart or a long backend outage
 * loses nothing that was acked.
 *
 * Files in the spool directory:
 *   seg-<first seq, 20 digits>.log   records; a new segment every segment_size
 *   cursor                           the first record not yet fully exported
 *
 * Durability of appends follows the fsync policy: always (an append returns
 * CN_SPOOL_OK only after an fdatasync that began after its record was written
 * returned 0; concurrent appends share one fdatasync, a group commit; if it
 * fails, every append it was to cover is refused and its record cut off, and the
 * reader only ever sees durable records), interval (a flusher fsyncs every
 * fsync_interval; an ack may precede the fsync, so a power loss can lose that
 * much, a process crash cannot), never (left to the OS).
 */
#ifndef CANOPY_SPOOL_H
#define CANOPY_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { CN_SPOOL_FSYNC_ALWAYS = 0, CN_SPOOL_FSYNC_INTERVAL, CN_SPOOL_FSYNC_NEVER };
enum { CN_SPOOL_BLOCK = 0, CN_SPOOL_DROP_OLDEST };

typedef struct cn_spool_options {
    char *directory;
    int64_t max_size;
    int fsync;
    int64_t fsync_interval;
    int when_full;
    int64_t segment_size;
} cn_spool_options;

typedef struct cn_spool cn_spool;

typedef enum cn_spool_result {
    CN_SPOOL_OK = 0,
    CN_SPOOL_FULL,   /* max_size reached with when_full: block; retryable */
    CN_SPOOL_IO,     /* write failed; retryable */
    CN_SPOOL_NO_SPACE, /* write failed for lack of room on the disk (ENOSPC); retryable */
} cn_spool_result;

/* Opens (creating) the spool and recovers it: finds the head, cuts a torn
 * tail, reads the cursor. `name` labels metrics and logs. NULL on failure. */
cn_spool *cn_spool_open(const cn_spool_options *opts, const char *name, const char *labels);
void cn_spool_close(cn_spool *s);

/*
 * With when_full: drop_oldest, drops the oldest segment not being written
 * (counted and logged as a full spool's drops are), to make room on a disk
 * this spool shares: the pipeline's intake log calls it when its own write
 * fails with CN_SPOOL_NO_SPACE, so that drop_oldest keeps batches acked on a
 * full disk. False when the policy is block or nothing can be dropped.
 */
bool cn_spool_make_room(cn_spool *s);

/* Appends one record; thread safe. n_snapshots is kept for drop accounting. */
cn_spool_result cn_spool_append(cn_spool *s, const void *data, size_t len, uint32_t n_snapshots);
/* The same, telling the record's sequence number. */
cn_spool_result cn_spool_append_at(cn_spool *s, const void *data, size_t len, uint32_t n_snapshots, uint64_t *seq);

/*
 * Write-ahead use (a pipeline's intake log): records are read back only to
 * replay them after a restart, and the caller tracks which are done. Once the
 * replay is read, cn_spool_park_reader; from then on cn_spool_set_cursor says
 * every record below `seq` is done (cn_spool_done is not used).
 */
void cn_spool_park_reader(cn_spool *s);
void cn_spool_set_cursor(cn_spool *s, uint64_t seq);

/*
 * Reads the next unread record, waiting up to timeout_ms. Returns 1 with a
 * malloc'd copy in *data (caller frees), 0 when none arrived, -1 when closed.
 * Records come back in order, starting at the cursor after a restart.
 */
int cn_spool_read(cn_spool *s, uint64_t *seq, void **data, size_t *len, int64_t timeout_ms);
/* Marks a record fully handled; the cursor moves over every handled prefix. */
void cn_spool_done(cn_spool *s, uint64_t seq);
/* Records written before this spool was opened (replayed after a restart). */
uint64_t cn_spool_replay_end(const cn_spool *s);
/* The committed cursor, and the next record the reader will return. */
uint64_t cn_spool_cursor(cn_spool *s);
uint64_t cn_spool_read_position(cn_spool *s);
/* The cursor as last saved (where a restart would replay from; it lags the
 * committed cursor by up to a sync interval, or more while saves fail). What
 * protects records from being delivered twice after a replay must be kept
 * until this cursor, not the committed one, has passed them. */
uint64_t cn_spool_saved_cursor(cn_spool *s);
/* True when records from before the restart wait to be replayed. */
bool cn_spool_has_replay(cn_spool *s);
/* Persists the cursor and fsyncs per policy; called periodically and at close. */
void cn_spool_sync(cn_spool *s);
/* Wakes readers blocked in cn_spool_read (shutdown). */
void cn_spool_wake(cn_spool *s);

/* CRC-32C of data (hardware-accelerated where the CPU has it). */
uint32_t cn_crc32(const void *data, size_t len);

#endif
