/* The spool's files; see spool_files.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "spool_files.h"

uint32_t cn_spool_record_crc(const cn_spool_record_header *h, const void *payload)
{
    /* CRC of (seq, n_snapshots) then payload, chained through one buffer-free pass. */
    unsigned char head[12];
    memcpy(head, &h->seq, 8);
    memcpy(head + 8, &h->n_snapshots, 4);
    uint32_t a = cn_crc32(head, sizeof head);
    uint32_t b = cn_crc32(payload, h->len);
    return a ^ (b * 0x9E3779B1u) ^ h->len;
}

long long cn_spool_read_record(int fd, uint64_t off, uint64_t limit, cn_spool_record_header *h, void **payload)
{
    if (off == limit)
        return 0;
    if (limit - off < sizeof *h || pread(fd, h, sizeof *h, (off_t)off) != (ssize_t)sizeof *h)
        return -1;
    if (h->magic != CN_SPOOL_RECORD_MAGIC || h->len > CN_SPOOL_MAX_RECORD || limit - off - sizeof *h < h->len)
        return -1;
    void *buf = malloc(h->len ? h->len : 1);
    if (!buf)
        return -1;
    if (pread(fd, buf, h->len, (off_t)(off + sizeof *h)) != (ssize_t)h->len || cn_spool_record_crc(h, buf) != h->crc) {
        free(buf);
        return -1;
    }
    if (payload)
        *payload = buf;
    else
        free(buf);
    return (long long)(sizeof *h + h->len);
}

void cn_spool_segment_path(const char *directory, uint64_t first_seq, char *out, size_t len)
{
    snprintf(out, len, "%s/seg-%020" PRIu64 ".log", directory, first_seq);
}

static int compare_seq(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int cn_spool_list_segments(const char *directory, uint64_t **first_seqs, size_t *n)
{
    *first_seqs = NULL;
    *n = 0;
    DIR *d = opendir(directory);
    if (!d)
        return -1;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t first;
        char tail[8];
        if (sscanf(e->d_name, "seg-%20" SCNu64 ".%4s", &first, tail) != 2 || strcmp(tail, "log") != 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *grown = realloc(*first_seqs, cap * sizeof *grown);
            if (!grown) {
                free(*first_seqs);
                *first_seqs = NULL;
                *n = 0;
                closedir(d);
                errno = ENOMEM;
                return -1;
            }
            *first_seqs = grown;
        }
        (*first_seqs)[(*n)++] = first;
    }
    closedir(d);
    if (*n > 1)
        qsort(*first_seqs, *n, sizeof **first_seqs, compare_seq);
    return 0;
}

int cn_spool_scan_segment(const char *path, uint64_t first_seq, bool cut_torn_tail, cn_spool_segment_scan *out)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    *out = (cn_spool_segment_scan){0, first_seq, 0, (uint64_t)st.st_size};
    cn_spool_record_header h;
    long long n;
    while ((n = cn_spool_read_record(fd, out->bytes, out->size, &h, NULL)) > 0 && h.seq == out->end_seq) {
        out->bytes += (uint64_t)n;
        out->end_seq++;
        out->snapshots += h.n_snapshots;
    }
    int rc = 0;
    if (out->bytes < out->size && cut_torn_tail && ftruncate(fd, (off_t)out->bytes) != 0)
        rc = errno;
    close(fd);
    /* A failed cut is not a failed scan: the caller reports it, and the bytes past
     * `bytes` are never read (the next append cuts them first). */
    errno = rc;
    return 0;
}

int cn_spool_read_cursor(const char *directory, uint64_t *cursor)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/cursor", directory);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint64_t v[2];
    bool ok = read(fd, v, sizeof v) == (ssize_t)sizeof v && v[1] == (uint64_t)cn_crc32(&v[0], sizeof v[0]);
    close(fd);
    if (!ok)
        return -1;
    *cursor = v[0];
    return 1;
}

int cn_spool_sync_directory(const char *directory)
{
    int fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd), err = errno;
    close(fd);
    errno = err;
    return rc;
}

int cn_spool_write_cursor(const char *directory, uint64_t cursor, bool sync_data, bool sync_directory)
{
    char tmp[4200], path[4200];
    snprintf(tmp, sizeof tmp, "%s/cursor.tmp", directory);
    snprintf(path, sizeof path, "%s/cursor", directory);
    uint64_t v[2] = {cursor, cn_crc32(&cursor, sizeof cursor)};
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno;
    int err = 0;
    errno = 0;
    if (write(fd, v, sizeof v) != (ssize_t)sizeof v)
        err = errno ? errno : EIO;
    else if (sync_data && fdatasync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    if (!err && sync_directory && cn_spool_sync_directory(directory) != 0)
        err = errno;
    return err;
}
