/* PEM files for TLS settings: see pem.h. */
#include "pem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *cn_pem_read(const char *path, size_t *len)
{
    /* Non-blocking, so that opening a FIFO does not wait for a writer; fstat then refuses it. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0)
        err = errno;
    else if (!S_ISREG(st.st_mode))
        err = EINVAL;
    else if ((unsigned long long)st.st_size > CN_PEM_MAX_SIZE)
        err = EFBIG;
    /* The size is a hint: the file may grow while read, so reading stops at the limit anyway. */
    size_t cap = err ? 0 : (size_t)st.st_size + 1, used = 0;
    char *buf = err ? NULL : malloc(cap);
    if (!err && !buf)
        err = ENOMEM;
    while (!err) {
        if (used + 1 == cap) {
            if (cap > CN_PEM_MAX_SIZE) {
                err = EFBIG;
                break;
            }
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                err = ENOMEM;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + used, cap - used - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            err = EIO;
        else if (got == 0)
            break;
        else
            used += (size_t)got;
    }
    close(fd);
    if (err) {
        cn_pem_free_secret(buf); /* it may hold part of a key */
        errno = err;
        return NULL;
    }
    buf[used] = '\0';
    if (len)
        *len = used;
    return buf;
}

bool cn_pem_has_block(const char *text, const char *label)
{
    static const char begin[] = "-----BEGIN ";
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        if (n > sizeof begin - 1 && strncmp(line, begin, sizeof begin - 1) == 0) {
            const char *l = line + sizeof begin - 1, *end = line + n;
            size_t want = strlen(label);
            for (; l + want <= end; l++)
                if (strncmp(l, label, want) == 0)
                    return true;
        }
        line = eol ? eol + 1 : NULL;
    }
    return false;
}

void cn_pem_free_secret(char *text)
{
    if (!text)
        return;
    /* volatile: the compiler must not drop a store to memory that is freed next. */
    for (volatile char *p = text; *p; p++)
        *p = '\0';
    free(text);
}

char *cn_token_file_read(const char *path, size_t *len)
{
    size_t n = 0;
    /* The PEM reader: a regular file only, bounded, read whole. */
    char *t = cn_pem_read(path, &n);
    if (!t)
        return NULL;
    if (n > CN_TOKEN_MAX_SIZE) {
        cn_pem_free_secret(t);
        errno = EFBIG;
        return NULL;
    }
    while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r'))
        t[--n] = '\0';
    if (n == 0 || strlen(t) != n) {
        free(t);
        errno = EINVAL;
        return NULL;
    }
    if (len)
        *len = n;
    return t;
}
