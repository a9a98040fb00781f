/*
 * The persistent spool (core/spool.c): group commit with fsync: always, its
 * failure contract, drop_oldest accounting and the saved cursor.
 *
 * This executable defines fdatasync() and writev() itself, so the spool (linked
 * in statically) calls these, and they call the C library's. They record, per
 * file, the last write that had completed when each successful fdatasync began:
 * a record is durable once such an fdatasync covers its write. That lets the
 * tests check, without any hook in the spool, that an append returns success only
 * after its record is durable, that the reader never sees a record that is not,
 * and how many fdatasyncs the appends needed. The Nth fdatasync of a segment can
 * be made to fail with EIO, and each can be made slower (a real disk's flush).
 * A failed fdatasync loses the writes it was to cover for good, as Linux may
 * (their pages are marked clean): a later successful one does not make them
 * durable.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "canopy/metrics.h"
#include "spool.h"
#include "testutil.h"

/* ---- the fdatasync / writev shim --------------------------------------------- */

#define MAX_IDS 8192 /* payload ids of one test */
#define MAX_FILES 1024

static int (*real_fdatasync)(int);
static ssize_t (*real_writev)(int, const struct iovec *, int);

static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    ino_t ino;
    uint64_t last_write;   /* id of the last completed write */
    uint64_t durable_upto; /* writes up to this id are covered by a successful fdatasync */
    uint64_t lost_lo, lost_hi; /* writes in (lo, hi] were lost by a failed fdatasync */
} files[MAX_FILES];
static size_t n_files;
static uint64_t write_ids;                   /* guarded by shim_lock */
static uint64_t write_of[MAX_IDS];           /* payload id -> write id (0: not written) */
static ino_t ino_of[MAX_IDS];                /* payload id -> file */
static atomic_long seg_syncs;                /* fdatasyncs of segment files */
static atomic_long fail_at;                  /* fail this segment fdatasync (1-based), 0: none */
static atomic_int sync_delay_us;
static _Thread_local uint64_t my_write;      /* this thread's last write */
static _Thread_local ino_t my_ino;

static void shim_init(void)
{
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_writev = (ssize_t(*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    if (!real_fdatasync || !real_writev) { /* before any test runs: no cmocka assert */
        fprintf(stderr, "test_spool: cannot find the C library's fdatasync/writev: %s\n", dlerror());
        exit(1);
    }
}

static void shim_reset(void)
{
    pthread_mutex_lock(&shim_lock);
    n_files = 0;
    write_ids = 0;
    memset(write_of, 0, sizeof write_of);
    memset(ino_of, 0, sizeof ino_of);
    pthread_mutex_unlock(&shim_lock);
    atomic_store(&seg_syncs, 0);
    atomic_store(&fail_at, 0);
    atomic_store(&sync_delay_us, 0);
}

/* Caller holds shim_lock. */
static size_t file_slot(ino_t ino)
{
    for (size_t i = 0; i < n_files; i++)
        if (files[i].ino == ino)
            return i;
    if (n_files == MAX_FILES)
        abort(); /* any thread gets here: cmocka's asserts belong to the test's own */
    files[n_files].ino = ino;
    files[n_files].last_write = files[n_files].durable_upto = 0;
    files[n_files].lost_lo = files[n_files].lost_hi = 0;
    return n_files++;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    ssize_t n = real_writev(fd, iov, iovcnt);
    struct stat st;
    if (n <= 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return n;
    pthread_mutex_lock(&shim_lock);
    size_t f = file_slot(st.st_ino);
    uint64_t id = ++write_ids;
    files[f].last_write = id;
    /* The spool writes (header, payload); the tests' payloads start with their id. */
    if (iovcnt == 2 && iov[1].iov_len >= 8) {
        uint64_t pid;
        memcpy(&pid, iov[1].iov_base, 8);
        if (pid < MAX_IDS) {
            write_of[pid] = id;
            ino_of[pid] = st.st_ino;
        }
    }
    pthread_mutex_unlock(&shim_lock);
    my_write = id;
    my_ino = st.st_ino;
    return n;
}

static bool is_segment(int fd)
{
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return false;
    path[n] = '\0';
    return strstr(path, "/seg-") != NULL;
}

int fdatasync(int fd)
{
    struct stat st;
    bool seg = is_segment(fd);
    bool known = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    uint64_t covers = 0;
    pthread_mutex_lock(&shim_lock);
    if (known)
        covers = files[file_slot(st.st_ino)].last_write; /* completed before this call began */
    pthread_mutex_unlock(&shim_lock);
    long nth = seg ? atomic_fetch_add(&seg_syncs, 1) + 1 : 0;
    int delay = atomic_load(&sync_delay_us);
    if (delay > 0) {
        struct timespec t = {0, (long)delay * 1000};
        nanosleep(&t, NULL);
    }
    if (seg && nth == atomic_load(&fail_at)) {
        pthread_mutex_lock(&shim_lock);
        if (known) {
            size_t f = file_slot(st.st_ino);
            files[f].lost_lo = files[f].durable_upto;
            files[f].lost_hi = covers;
        }
        pthread_mutex_unlock(&shim_lock);
        errno = EIO;
        return -1;
    }
    int rc = real_fdatasync(fd);
    if (rc == 0 && known) {
        pthread_mutex_lock(&shim_lock);
        size_t f = file_slot(st.st_ino);
        if (covers > files[f].durable_upto)
            files[f].durable_upto = covers;
        pthread_mutex_unlock(&shim_lock);
    }
    return rc;
}

/* True when a successful fdatasync that began after the write covers it. */
static bool write_durable(ino_t ino, uint64_t write)
{
    pthread_mutex_lock(&shim_lock);
    size_t f = file_slot(ino);
    bool ok = write > 0 && files[f].durable_upto >= write && !(write > files[f].lost_lo && write <= files[f].lost_hi);
    pthread_mutex_unlock(&shim_lock);
    return ok;
}

static bool payload_durable(uint64_t pid)
{
    pthread_mutex_lock(&shim_lock);
    uint64_t w = write_of[pid];
    ino_t ino = ino_of[pid];
    pthread_mutex_unlock(&shim_lock);
    return write_durable(ino, w);
}

/* ---- helpers ----------------------------------------------------------------- */

static char *make_dir(void)
{
    char tmpl[] = "/tmp/canopy-test-spool-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    char *copy = strdup(d);
    assert_non_null(copy);
    return copy;
}

static void remove_dir(char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (unlink(p) != 0)
                rmdir(p);
        }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

static cn_spool *open_spool(char *dir, int fsync, int when_full, int64_t max_size, int64_t segment_size,
                            const char *labels)
{
    cn_spool_options o = {dir, max_size, fsync, 200, when_full, segment_size};
    cn_spool *s = cn_spool_open(&o, "test", labels);
    assert_non_null(s);
    return s;
}

/* A payload: its id, then bytes derived from it. */
static size_t make_payload(uint64_t id, unsigned char *buf, size_t cap)
{
    size_t len = 200 + (size_t)(id * 7919 % 1200);
    if (len > cap)
        abort();
    memcpy(buf, &id, 8);
    for (size_t i = 8; i < len; i++)
        buf[i] = (unsigned char)(id * 31 + i);
    return len;
}

/* The payload's id, or -1 when the bytes are not what was appended. No cmocka
 * asserts: the reader thread calls it. */
static int64_t payload_id(const void *data, size_t len)
{
    unsigned char want[2048];
    uint64_t id;
    if (len < 8)
        return -1;
    memcpy(&id, data, 8);
    if (id >= MAX_IDS || make_payload(id, want, sizeof want) != len || memcmp(want, data, len) != 0)
        return -1;
    return (int64_t)id;
}

static uint64_t check_payload(const void *data, size_t len)
{
    int64_t id = payload_id(data, len);
    assert_true(id >= 0);
    return (uint64_t)id;
}

/* ---- concurrent appenders and a reader ------------------------------------------ */

#define THREADS 8
#define PER_THREAD 150

enum { OUT_NONE, OUT_OK, OUT_REFUSED };

typedef struct run {
    cn_spool *spool;
    atomic_int outcome[MAX_IDS];
    atomic_int not_durable_acks; /* appends that returned OK before their record was durable */
    atomic_int unexpected;       /* results other than OK and CN_SPOOL_IO */
    atomic_int appenders_left;
    /* reader */
    uint8_t seen[MAX_IDS];
    int seen_not_durable; /* records the reader got before they were durable */
    int seen_twice;
    int seen_garbled;
    size_t n_seen;
} run;

typedef struct appender {
    run *r;
    int index;
} appender;

static void *append_main(void *arg)
{
    appender *a = arg;
    unsigned char buf[2048];
    for (int i = 0; i < PER_THREAD; i++) {
        uint64_t id = (uint64_t)a->index * PER_THREAD + (uint64_t)i;
        size_t len = make_payload(id, buf, sizeof buf);
        cn_spool_result res = cn_spool_append(a->r->spool, buf, len, (uint32_t)(id % 5 + 1));
        if (res == CN_SPOOL_OK) {
            /* The contract: success only once an fdatasync begun after the write returned 0. */
            if (!write_durable(my_ino, my_write) || !payload_durable(id))
                atomic_fetch_add(&a->r->not_durable_acks, 1);
            atomic_store(&a->r->outcome[id], OUT_OK);
        } else {
            if (res != CN_SPOOL_IO)
                atomic_fetch_add(&a->r->unexpected, 1);
            atomic_store(&a->r->outcome[id], OUT_REFUSED);
        }
    }
    atomic_fetch_sub(&a->r->appenders_left, 1);
    return NULL;
}

static void *read_main(void *arg)
{
    run *r = arg;
    int idle_after_done = 0;
    for (;;) {
        uint64_t seq;
        void *data;
        size_t len;
        int rc = cn_spool_read(r->spool, &seq, &data, &len, 20);
        if (rc < 0)
            break;
        if (rc == 0) {
            /* Every append returned: stop once nothing more comes. */
            if (atomic_load(&r->appenders_left) == 0 && ++idle_after_done >= 10)
                break;
            continue;
        }
        /* Not marked done: the segments stay, for check_reopened to read them all again. */
        int64_t id = payload_id(data, len);
        free(data);
        if (id < 0) {
            r->seen_garbled++;
            continue;
        }
        if (!payload_durable((uint64_t)id))
            r->seen_not_durable++;
        if (r->seen[id])
            r->seen_twice++;
        r->seen[id] = 1;
        r->n_seen++;
    }
    return NULL;
}

static void run_concurrent(run *r)
{
    pthread_t t[THREADS], reader;
    appender a[THREADS];
    atomic_store(&r->appenders_left, THREADS);
    assert_int_equal(pthread_create(&reader, NULL, read_main, r), 0);
    for (int i = 0; i < THREADS; i++) {
        a[i] = (appender){r, i};
        assert_int_equal(pthread_create(&t[i], NULL, append_main, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_join(reader, NULL);
    assert_int_equal(atomic_load(&r->unexpected), 0);
    assert_int_equal(r->seen_garbled, 0);
}

/* Reopens the spool (nothing was marked done: all of it is replayed) and checks
 * that exactly the acked records are in it, once each, with nothing cut. */
static void check_reopened(char *dir, run *r, const char *labels)
{
    cn_spool *s = open_spool(dir, CN_SPOOL_FSYNC_ALWAYS, CN_SPOOL_BLOCK, 1 << 30, 64 << 10, labels);
    static uint8_t found[MAX_IDS];
    memset(found, 0, sizeof found);
    assert_true(cn_spool_has_replay(s));
    uint64_t seq, expect = 0;
    void *data;
    size_t len;
    while (cn_spool_read(s, &seq, &data, &len, 0) == 1) {
        assert_int_equal(seq, expect++); /* dense: no sequence lost or repeated */
        uint64_t id = check_payload(data, len);
        free(data);
        assert_int_equal(found[id], 0);
        found[id] = 1;
    }
    assert_int_equal(expect, cn_spool_replay_end(s));
    cn_spool_close(s);
    assert_int_equal(cn_metric_value("canopy_spool_corrupt_records_total", labels), 0);
    for (uint64_t id = 0; id < THREADS * PER_THREAD; id++) {
        int out = atomic_load(&r->outcome[id]);
        if (out == OUT_OK && !found[id])
            fail_msg("acked record %llu is missing after a reopen", (unsigned long long)id);
        if (out != OUT_OK && found[id])
            fail_msg("refused record %llu is in the spool after a reopen", (unsigned long long)id);
    }
}

/* Many appenders with fsync: always and a 1 ms flush: every append returns
 * success only once its record is durable, the reader sees only durable records,
 * and the appends share fdatasyncs (fewer syncs than appends). Small segments make
 * rotations happen under load. */
static void test_group_commit(void **state)
{
    (void)state;
    shim_reset();
    char *dir = make_dir();
    const char *labels = "exporter=\"group_commit\"";
    static run r;
    memset(&r, 0, sizeof r);
    r.spool = open_spool(dir, CN_SPOOL_FSYNC_ALWAYS, CN_SPOOL_BLOCK, 1 << 30, 64 << 10, labels);
    atomic_store(&sync_delay_us, 1000);
    run_concurrent(&r);
    long syncs = atomic_load(&seg_syncs);
    atomic_store(&sync_delay_us, 0);
    cn_spool_close(r.spool);
    long appends = THREADS * PER_THREAD;
    print_message("group commit: %ld appends, %ld segment fdatasyncs (%.1f appends per fdatasync)\n", appends, syncs,
                  (double)appends / (double)(syncs ? syncs : 1));
    for (long id = 0; id < appends; id++)
        assert_int_equal(atomic_load(&r.outcome[id]), OUT_OK);
    assert_int_equal(atomic_load(&r.not_durable_acks), 0);
    assert_int_equal(r.seen_not_durable, 0);
    assert_int_equal(r.seen_twice, 0);
    assert_int_equal(r.n_seen, appends);
    assert_int_equal(cn_metric_value("canopy_spool_records_total", labels), appends);
    assert_true(syncs < appends);
    check_reopened(dir, &r, "exporter=\"group_commit_reopen\"");
    remove_dir(dir);
}

/* One segment fdatasync fails (EIO) under concurrent appends: every append it was
 * to cover is refused, none is acked without a later successful fdatasync, the
 * reader never sees a refused record, and after a reopen the spool holds exactly
 * the acked records (nothing cut as a torn tail, nothing stray). */
static void test_group_commit_fdatasync_failure(void **state)
{
    (void)state;
    shim_reset();
    char *dir = make_dir();
    const char *labels = "exporter=\"group_commit_eio\"";
    static run r;
    memset(&r, 0, sizeof r);
    r.spool = open_spool(dir, CN_SPOOL_FSYNC_ALWAYS, CN_SPOOL_BLOCK, 1 << 30, 64 << 10, labels);
    atomic_store(&sync_delay_us, 1000);
    atomic_store(&fail_at, 7);
    run_concurrent(&r);
    atomic_store(&sync_delay_us, 0);
    cn_spool_close(r.spool);
    long appends = THREADS * PER_THREAD, ok = 0, refused = 0;
    for (long id = 0; id < appends; id++) {
        int out = atomic_load(&r.outcome[id]);
        assert_int_not_equal(out, OUT_NONE);
        if (out == OUT_OK)
            ok++;
        else {
            refused++;
            if (r.seen[id])
                fail_msg("the reader got record %ld, whose append was refused", id);
        }
    }
    print_message("fdatasync failure: %ld acked, %ld refused\n", ok, refused);
    assert_true(refused >= 1);
    assert_true(ok > 0);
    assert_int_equal(atomic_load(&r.not_durable_acks), 0);
    assert_int_equal(r.seen_not_durable, 0);
    assert_int_equal(r.seen_twice, 0);
    assert_int_equal((long)r.n_seen, ok);
    assert_int_equal(cn_metric_value("canopy_spool_records_total", labels), ok);
    assert_int_equal(cn_metric_value("canopy_spool_write_errors_total", labels), refused);
    check_reopened(dir, &r, "exporter=\"group_commit_eio_reopen\"");
    remove_dir(dir);
}

/* drop_oldest counts what the exporter had not delivered: records neither below
 * the cursor nor done, with their own snapshot counts. */
static void test_drop_oldest_counts(void **state)
{
    (void)state;
    shim_reset();
    char *dir = make_dir();
    const char *labels = "exporter=\"drop_counts\"";
    /* 1000-byte records: 4 per 4 KiB segment, 12 fill max_size. */
    cn_spool *s = open_spool(dir, CN_SPOOL_FSYNC_NEVER, CN_SPOOL_DROP_OLDEST, 12000, 4096, labels);
    unsigned char buf[1000 - 24];
    memset(buf, 7, sizeof buf);
    for (uint32_t k = 0; k < 12; k++)
        assert_int_equal(cn_spool_append(s, buf, sizeof buf, k + 1), CN_SPOOL_OK); /* record k: k+1 snapshots */
    assert_int_equal(cn_metric_value("canopy_spool_bytes", labels), 12000);
    uint64_t seq[3];
    for (int i = 0; i < 3; i++) {
        void *data;
        size_t len;
        assert_int_equal(cn_spool_read(s, &seq[i], &data, &len, 0), 1);
        assert_int_equal(seq[i], (uint64_t)i);
        free(data);
    }
    /* Record 0 delivered (the cursor passes it), 2 delivered (the cursor waits for 1),
     * 1 in flight, 3 not read. */
    cn_spool_done(s, 0);
    cn_spool_done(s, 2);
    assert_int_equal(cn_spool_cursor(s), 1);
    assert_int_equal(cn_spool_append(s, buf, sizeof buf, 100), CN_SPOOL_OK); /* drops segment 0 */
    assert_int_equal(cn_metric_value("canopy_spool_dropped_records_total", labels), 2);       /* 1 and 3 */
    assert_int_equal(cn_metric_value("canopy_spool_dropped_snapshots_total", labels), 2 + 4); /* their own */
    assert_int_equal(cn_spool_cursor(s), 4);
    /* The in-flight record completes as usual; the reader goes on with segment 1. */
    cn_spool_done(s, 1);
    void *data;
    size_t len;
    uint64_t next;
    assert_int_equal(cn_spool_read(s, &next, &data, &len, 0), 1);
    assert_int_equal(next, 4);
    free(data);
    cn_spool_close(s);
    remove_dir(dir);
}

/* The saved cursor follows only saves that succeeded, and a failed save is retried. */
static void test_saved_cursor(void **state)
{
    (void)state;
    shim_reset();
    char *dir = make_dir();
    const char *labels = "exporter=\"saved_cursor\"";
    cn_spool *s = open_spool(dir, CN_SPOOL_FSYNC_ALWAYS, CN_SPOOL_BLOCK, 1 << 20, 64 << 10, labels);
    unsigned char buf[100] = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(cn_spool_append(s, buf, sizeof buf, 1), CN_SPOOL_OK);
    /* A directory where the cursor file goes: the rename that saves it fails. */
    char p[4200];
    snprintf(p, sizeof p, "%s/cursor", dir);
    assert_int_equal(mkdir(p, 0700), 0);
    for (int i = 0; i < 3; i++) {
        uint64_t seq;
        void *data;
        size_t len;
        assert_int_equal(cn_spool_read(s, &seq, &data, &len, 0), 1);
        free(data);
        cn_spool_done(s, seq);
    }
    assert_int_equal(cn_spool_cursor(s), 3);
    cn_spool_sync(s);
    assert_int_equal(cn_spool_saved_cursor(s), 0);
    assert_int_equal(rmdir(p), 0);
    cn_spool_sync(s); /* the failed save left the cursor to be saved again */
    assert_int_equal(cn_spool_saved_cursor(s), 3);
    cn_spool_close(s);
    s = open_spool(dir, CN_SPOOL_FSYNC_ALWAYS, CN_SPOOL_BLOCK, 1 << 20, 64 << 10, labels);
    assert_int_equal(cn_spool_cursor(s), 3);
    assert_int_equal(cn_spool_saved_cursor(s), 3);
    assert_false(cn_spool_has_replay(s));
    cn_spool_close(s);
    remove_dir(dir);
}

int main(void)
{
    shim_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_commit),
        cmocka_unit_test(test_group_commit_fdatasync_failure),
        cmocka_unit_test(test_drop_oldest_counts),
        cmocka_unit_test(test_saved_cursor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
