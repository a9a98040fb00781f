/*
 * core/base: PEM files (regular files only, bounded, labels) and mkdir -p,
 * on real files in a temporary directory. Linked with canopy_base alone, as
 * the agent's Python build compiles pem.c: it must need nothing else.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fsutil.h"
#include "pem.h"

static char dir[64];

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/canopy-base-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *write_file(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_pem_read_and_labels(void **state)
{
    (void)state;
    static const char cert[] = "subject=CN = agent\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    size_t len = 0;
    char *text = cn_pem_read(write_file("cert.pem", cert), &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(cert));
    assert_string_equal(text, cert);
    assert_true(cn_pem_has_block(text, "CERTIFICATE"));
    assert_false(cn_pem_has_block(text, "PRIVATE KEY"));
    free(text);

    text = cn_pem_read(write_file("key.pem", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----"), NULL);
    assert_non_null(text);
    assert_true(cn_pem_has_block(text, "PRIVATE KEY"));
    assert_false(cn_pem_has_block(text, "CERTIFICATE"));
    cn_pem_free_secret(text);
    cn_pem_free_secret(NULL);

    /* A label in the body or on an END line does not count. */
    text = cn_pem_read(write_file("odd.pem", "CERTIFICATE\n-----END CERTIFICATE-----\n"), NULL);
    assert_non_null(text);
    assert_false(cn_pem_has_block(text, "CERTIFICATE"));
    free(text);

    text = cn_pem_read(write_file("empty.pem", ""), &len);
    assert_non_null(text);
    assert_int_equal(len, 0);
    free(text);
}

/* Paths that would block, never end or are too big are refused at once. */
static void test_pem_refuses_non_files(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    errno = 0;
    assert_null(cn_pem_read(path, NULL));
    assert_int_equal(errno, EINVAL);

    assert_null(cn_pem_read("/dev/zero", NULL));
    assert_int_equal(errno, EINVAL);
    assert_null(cn_pem_read(dir, NULL));
    assert_int_equal(errno, EINVAL);

    snprintf(path, sizeof path, "%s/missing.pem", dir);
    assert_null(cn_pem_read(path, NULL));
    assert_int_equal(errno, ENOENT);

    snprintf(path, sizeof path, "%s/huge.pem", dir);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)CN_PEM_MAX_SIZE + 1), 0); /* sparse: no disk used */
    close(fd);
    assert_null(cn_pem_read(path, NULL));
    assert_int_equal(errno, EFBIG);
}

static void test_mkdirs(void **state)
{
    (void)state;
    char path[160];
    snprintf(path, sizeof path, "%s/a/b/c", dir);
    assert_int_equal(cn_mkdirs(path, 0750), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777 & ~0750, 0);
    assert_int_equal(cn_mkdirs(path, 0750), 0); /* already there: fine */

    write_file("file", "x");
    snprintf(path, sizeof path, "%s/file/sub", dir);
    assert_int_equal(cn_mkdirs(path, 0755), -1);
    assert_int_equal(errno, ENOTDIR);

    char long_path[5000];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[sizeof long_path - 1] = '\0';
    assert_int_equal(cn_mkdirs(long_path, 0755), -1);
    assert_int_equal(errno, ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pem_read_and_labels),
        cmocka_unit_test(test_pem_refuses_non_files),
        cmocka_unit_test(test_mkdirs),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
