/*
 * accept(2) for a server that must keep answering when the process is out of
 * file descriptors (ulimit -n). A listener whose queue cannot be accepted
 * stays readable, so poll/epoll would spin, and the peer waits for nothing.
 * The server keeps one descriptor in reserve (/dev/null): out of descriptors,
 * it gives the reserve up to take the connection off the queue, and the
 * caller then serves it (the admin API, so /metrics can show what holds the
 * descriptors) or closes it (a receiver at its limit). Dependency free.
 */
#ifndef CANOPY_BASE_FD_RESERVE_H
#define CANOPY_BASE_FD_RESERVE_H

#include <stdbool.h>
#include <sys/socket.h>

typedef struct cn_fd_reserve {
    int fd; /* -1 while given up and not taken back yet */
} cn_fd_reserve;

/* Takes the reserve descriptor. 0, or -1 with errno set (the reserve is then empty). */
int cn_fd_reserve_init(cn_fd_reserve *r);
/* Takes the reserve back if it was given up; call it where the server looks
 * at its listeners again. False while the process is still out of descriptors. */
bool cn_fd_reserve_refill(cn_fd_reserve *r);
void cn_fd_reserve_close(cn_fd_reserve *r);

/*
 * accept4(lfd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC), retried on EINTR.
 * Out of descriptors (EMFILE, ENFILE) with the reserve in hand, gives it up,
 * accepts, sets *from_reserve and takes it back if it can. Returns the
 * connection, or -1 with errno set: EAGAIN when nothing waits, EMFILE or
 * ENFILE when the process is out of descriptors and the reserve is spent
 * (pause the listener for a while rather than poll it).
 */
int cn_accept_reserved(cn_fd_reserve *r, int lfd, struct sockaddr *addr, socklen_t *len, bool *from_reserve);

#endif
