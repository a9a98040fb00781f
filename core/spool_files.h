/*
 * The spool's files, apart from the spool's state: how a record is framed and
 * checked, what a segment file is called, how a segment is scanned after a
 * restart, and the cursor file. spool.c owns the locking and the queue; this
 * layer only reads and writes bytes, so it can be read (and changed) on its own.
 *
 * A spool directory holds seg-<first seq, 20 digits>.log files of records, each
 * a cn_spool_record_header then its payload, and a `cursor` file: the first
 * record not yet exported, followed by its CRC.
 */
#ifndef CANOPY_SPOOL_FILES_H
#define CANOPY_SPOOL_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CN_SPOOL_RECORD_MAGIC 0x50534E43u /* "CNSP" read as little endian */
#define CN_SPOOL_MAX_RECORD (1u << 30)

/* On-disk record header; host byte order (the spool never moves between machines). */
typedef struct cn_spool_record_header {
    uint32_t magic;
    uint32_t len;
    uint64_t seq;
    uint32_t n_snapshots;
    uint32_t crc; /* over seq, n_snapshots and the payload */
} cn_spool_record_header;

/* What a scan of one segment file found: its whole records from first_seq on. */
typedef struct cn_spool_segment_scan {
    uint64_t bytes;     /* valid bytes: the whole records in sequence */
    uint64_t end_seq;   /* one past the last valid record */
    uint64_t snapshots; /* in the valid records */
    uint64_t size;      /* the file's size when scanned; more than bytes when torn or corrupt */
} cn_spool_segment_scan;

uint32_t cn_spool_record_crc(const cn_spool_record_header *h, const void *payload);

/* Reads and checks the record at off, below limit. Returns its total size, 0 at
 * a clean end, -1 when torn or corrupt. With payload, *payload is the record's
 * malloc'ed payload for the caller to free. */
long long cn_spool_read_record(int fd, uint64_t off, uint64_t limit, cn_spool_record_header *h, void **payload);

void cn_spool_segment_path(const char *directory, uint64_t first_seq, char *out, size_t len);

/* The first sequences of the directory's segment files, ascending, in a
 * malloc'ed array (NULL when there are none). Returns -1 with errno set. */
int cn_spool_list_segments(const char *directory, uint64_t **first_seqs, size_t *n);

/* Scans the records of a segment file from first_seq on; with cut_torn_tail, bytes
 * after the last whole record are cut off (the last segment, after a crash).
 * Returns -1 with errno set when the file cannot be opened. */
int cn_spool_scan_segment(const char *path, uint64_t first_seq, bool cut_torn_tail, cn_spool_segment_scan *out);

/* 1 with *cursor read, 0 when the directory has no cursor file, -1 when it is unreadable or corrupt. */
int cn_spool_read_cursor(const char *directory, uint64_t *cursor);

/* Saves the cursor: writes cursor.tmp (fdatasync'ed with sync_data) and renames
 * it over `cursor` (and fsyncs the directory with sync_directory, so the rename
 * survives a power loss). Returns 0, or the errno of what failed. */
int cn_spool_write_cursor(const char *directory, uint64_t cursor, bool sync_data, bool sync_directory);

/* fsyncs a directory, so that a file created or renamed in it survives a power loss. */
int cn_spool_sync_directory(const char *directory);

#endif
