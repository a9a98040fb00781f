/* accept(2) with a descriptor in reserve: see fd_reserve.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include "fd_reserve.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int cn_fd_reserve_init(cn_fd_reserve *r)
{
    r->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return r->fd < 0 ? -1 : 0;
}

bool cn_fd_reserve_refill(cn_fd_reserve *r)
{
    if (r->fd < 0)
        r->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return r->fd >= 0;
}

void cn_fd_reserve_close(cn_fd_reserve *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

static int accept_once(int lfd, struct sockaddr *addr, socklen_t *len)
{
    socklen_t cap = len ? *len : 0;
    for (;;) {
        if (len)
            *len = cap;
        int fd = accept4(lfd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0 || errno != EINTR)
            return fd;
    }
}

int cn_accept_reserved(cn_fd_reserve *r, int lfd, struct sockaddr *addr, socklen_t *len, bool *from_reserve)
{
    *from_reserve = false;
    int fd = accept_once(lfd, addr, len);
    if (fd >= 0 || (errno != EMFILE && errno != ENFILE) || r->fd < 0)
        return fd;
    close(r->fd);
    r->fd = -1;
    fd = accept_once(lfd, addr, len);
    int err = errno;
    *from_reserve = fd >= 0;
    cn_fd_reserve_refill(r);
    errno = err;
    return fd;
}
