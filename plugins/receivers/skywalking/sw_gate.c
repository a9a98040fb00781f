/*
 * The skywalking receiver's connection gate.
 *
 * Why it exists: the issue asks for a cap on agent connections, and the gRPC
 * C core Debian ships (1.51) has none. It has no
 * GRPC_ARG_MAX_ALLOWED_INCOMING_CONNECTIONS (added in later releases), its
 * resource quota bounds memory and threads but not connections, and
 * grpc_server_add_channel_from_fd, the one way to hand it a socket we
 * accepted ourselves, only takes insecure credentials: TLS (and client
 * certificates) would be lost. So canopy accepts the agents' connections on
 * `listen` itself, closes those past max_connections at once (counted and
 * logged), and relays every other one, byte for byte, to the gRPC server,
 * which listens on a port of its own on 127.0.0.1 with the receiver's
 * credentials: TLS is still end to end between the agent and gRPC, and
 * gRPC's handshake_timeout and max_connection_idle still apply; when gRPC
 * closes its side, the gate closes the agent's.
 *
 * One thread, one epoll set, level triggered. Memory stays bounded with
 * thousands of connections: bytes are read into one shared scratch buffer
 * and written straight to the other side; only what a full socket buffer
 * does not take is kept, per direction, and its source is not read again
 * until that is written (backpressure). So a connection holds at most
 * 2 x GATE_SCRATCH, and only while one side is not reading.
 *
 * The receiver names calls by gRPC's peer, which is now the gate's inner
 * connection (127.0.0.1:<ephemeral port>, still one per agent connection);
 * swrx_gate_peer maps it back to the agent's address for logs and metrics.
 */
#include "sw_gate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "canopy/common.h"
#include "canopy/dict.h"
#include "fd_reserve.h"

#define GATE_SCRATCH (32 * 1024)
#define MAX_LISTENERS 4
#define ACCEPT_BURST 64
#define READS_PER_EVENT 4 /* then the other connections get a turn */
#define MAX_EVENTS 256
/* Out of descriptors and no reserve left: look at the listeners again after this long. */
#define NO_FD_PAUSE_MS 100
#define INNER_PREFIX "ipv4:127.0.0.1:"

enum { K_LISTEN = 1, K_WAKE, K_END };
enum { OUTER = 0, INNER = 1 }; /* the agent's side, the gRPC server's side */

typedef struct gate_conn gate_conn;

/* One side of a connection, as epoll sees it. */
typedef struct gate_end {
    int kind; /* K_END; first, as the loop reads it */
    gate_conn *c;
    int side;
    uint32_t mask; /* events registered */
} gate_end;

struct gate_conn {
    int fd[2];
    gate_end end[2];
    char *out[2];     /* bytes not yet written to side i (NULL: none) */
    size_t out_off[2], out_len[2];
    bool eof[2];      /* side i sent its FIN */
    bool connecting;  /* the inner connect is under way */
    bool linked, dead;
    char key[8];      /* the inner connection's local port (the peer map's key), or "" */
    gate_conn *prev, *next;
};

typedef struct gate_listener {
    int kind; /* K_LISTEN */
    int fd;
} gate_listener;

struct swrx_gate {
    swrx_gate_config cfg;
    char id[64];
    int ep, wake_fd;
    cn_fd_reserve reserve; /* given up to accept (and refuse) when the process is out of descriptors */
    int wake_kind; /* K_WAKE; its address is the eventfd's epoll data */
    gate_listener ls[MAX_LISTENERS];
    size_t n_ls;
    int64_t paused_until; /* listeners off (out of descriptors) until then; 0: on */
    struct sockaddr_in inner;
    pthread_t thread;
    bool thread_started;
    gate_conn *conns, *dead;
    int64_t n_open;
    char *scratch;
    /* Inner local port -> the agent's address (gRPC's peer form); the gRPC thread reads it. */
    pthread_mutex_t lock;
    bool lock_ok;
    cn_dict *peers;
    cn_ratelimit fd_log, inner_log;
};

/* "ipv4:10.1.2.3:51234" / "ipv6:[::1]:51234", as gRPC names peers. */
static void format_peer(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(buf, len, "ipv4:%s:%u", ip, (unsigned)ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(buf, len, "ipv6:[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    } else {
        snprintf(buf, len, "an agent");
    }
}

static void refuse(swrx_gate *g, const char *peer, const char *why)
{
    cn_metric_inc(g->cfg.refused);
    cn_metric_inc(g->cfg.conns_refused);
    cn_log_limited(g->cfg.refuse_log, CN_LOG_WARN, g->id, "refused a connection from %s: connections: %s", peer,
                   why);
}

static int set_mask(swrx_gate *g, gate_conn *c, int side, uint32_t mask)
{
    gate_end *e = &c->end[side];
    if (e->mask == mask)
        return 0;
    struct epoll_event ev = {.events = mask, .data.ptr = e};
    if (epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd[side], &ev) != 0)
        return -1;
    e->mask = mask;
    return 0;
}

/* What each side waits for: reads only while the other side has nothing queued (backpressure). */
static int update(swrx_gate *g, gate_conn *c)
{
    uint32_t m[2];
    m[OUTER] = (!c->eof[OUTER] && !c->connecting && !c->out[INNER] ? EPOLLIN : 0) | (c->out[OUTER] ? EPOLLOUT : 0);
    m[INNER] = (!c->eof[INNER] && !c->connecting && !c->out[OUTER] ? EPOLLIN : 0) |
               (c->connecting || c->out[INNER] ? EPOLLOUT : 0);
    return set_mask(g, c, OUTER, m[OUTER]) == 0 && set_mask(g, c, INNER, m[INNER]) == 0 ? 0 : -1;
}

static void forget_peer(swrx_gate *g, gate_conn *c)
{
    if (!c->key[0])
        return;
    pthread_mutex_lock(&g->lock);
    free(cn_dict_remove(g->peers, c->key));
    pthread_mutex_unlock(&g->lock);
    c->key[0] = '\0';
}

/* Closes both sides; the memory goes at the end of the loop turn (events of this turn may still name it). */
static void conn_close(swrx_gate *g, gate_conn *c)
{
    if (c->dead)
        return;
    if (c->linked) {
        if (c->prev)
            c->prev->next = c->next;
        else
            g->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        c->linked = false;
        cn_metric_set(g->cfg.conns_open, --g->n_open);
    }
    forget_peer(g, c); /* before the close: the port cannot be reused while it is mapped */
    for (int s = 0; s < 2; s++) {
        if (c->fd[s] >= 0)
            close(c->fd[s]);
        c->fd[s] = -1;
        free(c->out[s]);
        c->out[s] = NULL;
    }
    c->dead = true;
    c->next = g->dead;
    g->dead = c;
}

static void free_dead(swrx_gate *g)
{
    while (g->dead) {
        gate_conn *c = g->dead;
        g->dead = c->next;
        free(c);
    }
}

/* Writes what side `to` still has queued: 0 (all or some written), -1 on error. */
static int flush(gate_conn *c, int to)
{
    while (c->out[to] && c->out_off[to] < c->out_len[to]) {
        ssize_t w = send(c->fd[to], c->out[to] + c->out_off[to], c->out_len[to] - c->out_off[to],
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
        c->out_off[to] += (size_t)w;
    }
    free(c->out[to]);
    c->out[to] = NULL;
    return 0;
}

/*
 * Reads side `from` and writes to the other: 0, 1 when the connection is
 * done (gRPC closed its side), -1 on error.
 */
static int relay(swrx_gate *g, gate_conn *c, int from)
{
    int to = 1 - from;
    for (int i = 0; i < READS_PER_EVENT && !c->out[to]; i++) {
        ssize_t n = recv(c->fd[from], g->scratch, GATE_SCRATCH, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        if (n == 0) {
            c->eof[from] = true;
            /*
             * gRPC never half-closes: its side ending means the connection is over
             * (handshake_timeout, max_connection_idle, GOAWAY), and an agent that
             * never reads would otherwise hold its slot. The agent's FIN is passed on.
             */
            if (from == INNER)
                return 1;
            /* Nothing is queued for gRPC (this side is read only then), so the FIN goes on at once. */
            return shutdown(c->fd[INNER], SHUT_WR) == 0 ? 0 : -1;
        }
        ssize_t w = send(c->fd[to], g->scratch, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return -1;
            w = 0;
        }
        if (w < n) {
            size_t rest = (size_t)(n - w);
            if (!(c->out[to] = malloc(rest)))
                return -1;
            memcpy(c->out[to], g->scratch + w, rest);
            c->out_off[to] = 0;
            c->out_len[to] = rest;
        }
        /* A short read took all there was: no recv just to hear EAGAIN (epoll reports what comes next). */
        if (n < GATE_SCRATCH)
            break;
    }
    return 0;
}

/* The inner connect finished (or failed). */
static int connected(swrx_gate *g, gate_conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd[INNER], SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err) {
        cn_log_limited(&g->inner_log, CN_LOG_WARN, g->id, "cannot reach the gRPC server on 127.0.0.1:%u: %s",
                       (unsigned)ntohs(g->inner.sin_port), strerror(err));
        return -1;
    }
    c->connecting = false;
    return 0;
}

static void on_end(swrx_gate *g, gate_end *e, uint32_t ev)
{
    gate_conn *c = e->c;
    if (c->dead)
        return;
    int side = e->side, rc = 0;
    bool may_read = (e->mask & EPOLLIN) != 0;
    if (side == INNER && c->connecting) {
        rc = connected(g, c);
    } else if (ev & EPOLLERR) {
        rc = -1;
    } else {
        if (ev & EPOLLOUT)
            rc = flush(c, side);
        if (rc == 0 && (ev & (EPOLLIN | EPOLLHUP)) && may_read && !c->out[1 - side])
            rc = relay(g, c, side);
        /*
         * Shut down both ways: gRPC closed after the agent's FIN (or the agent
         * reset). What could be read was passed on; level-triggered epoll
         * would report the hang-up again and again.
         */
        if (rc == 0 && (ev & EPOLLHUP))
            rc = 1;
    }
    if (rc != 0 || update(g, c) != 0)
        conn_close(g, c);
}

/* Takes an accepted agent connection: connects its inner side and registers both. */
static int conn_open(swrx_gate *g, int fd, const char *peer, const char **why)
{
    gate_conn *c = calloc(1, sizeof *c);
    char *name = NULL;
    if (!c) {
        close(fd);
        *why = "out of memory";
        return -1;
    }
    c->fd[OUTER] = fd;
    c->fd[INNER] = -1;
    for (int s = 0; s < 2; s++) {
        c->end[s].kind = K_END;
        c->end[s].c = c;
        c->end[s].side = s;
    }
    *why = "out of file descriptors";
    if ((c->fd[INNER] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
        goto fail;
    int one = 1;
    /* gRPC sets TCP_NODELAY on its sockets; the relay must not hold small frames back either. */
    setsockopt(c->fd[OUTER], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd[INNER], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *why = "cannot connect to the gRPC server";
    if (connect(c->fd[INNER], (struct sockaddr *)&g->inner, sizeof g->inner) == 0)
        c->connecting = false;
    else if (errno == EINPROGRESS)
        c->connecting = true;
    else
        goto fail;
    struct sockaddr_in local;
    socklen_t len = sizeof local;
    if (getsockname(c->fd[INNER], (struct sockaddr *)&local, &len) != 0)
        goto fail;
    *why = "out of memory";
    char key[8];
    snprintf(key, sizeof key, "%u", (unsigned)ntohs(local.sin_port));
    if (!(name = strdup(peer)))
        goto fail;
    pthread_mutex_lock(&g->lock);
    free(cn_dict_remove(g->peers, key)); /* a stale one, should a port come back before its close */
    int put = cn_dict_put(g->peers, key, name);
    pthread_mutex_unlock(&g->lock);
    if (put != 0)
        goto fail;
    name = NULL;
    memcpy(c->key, key, sizeof key);
    *why = "cannot watch the connection";
    for (int s = 0; s < 2; s++) {
        struct epoll_event ev = {.events = 0, .data.ptr = &c->end[s]};
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, c->fd[s], &ev) != 0)
            goto fail;
    }
    c->linked = true;
    c->next = g->conns;
    if (c->next)
        c->next->prev = c;
    g->conns = c;
    cn_metric_set(g->cfg.conns_open, ++g->n_open);
    if (update(g, c) != 0) {
        conn_close(g, c);
        return 0; /* counted as accepted: it was, and went away at once */
    }
    cn_metric_inc(g->cfg.conns_accepted);
    return 0;
fail:
    free(name);
    conn_close(g, c);
    return -1;
}

static void pause_listeners(swrx_gate *g, bool on)
{
    for (size_t i = 0; i < g->n_ls; i++) {
        struct epoll_event ev = {.events = on ? 0 : EPOLLIN, .data.ptr = &g->ls[i]};
        epoll_ctl(g->ep, EPOLL_CTL_MOD, g->ls[i].fd, &ev);
    }
    g->paused_until = on ? cn_mono_ms() + NO_FD_PAUSE_MS : 0;
}

/*
 * Accepts waiting agents. Out of descriptors, the reserve one is given up to
 * take the connection off the queue and close it (counted), as the admin
 * API's server does; a listener left unaccepted would make epoll spin.
 */
static void accept_conns(swrx_gate *g, int lfd)
{
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char peer[80];
        bool from_reserve;
        int fd = cn_accept_reserved(&g->reserve, lfd, (struct sockaddr *)&ss, &sl, &from_reserve);
        if (from_reserve) {
            format_peer(&ss, peer, sizeof peer);
            refuse(g, peer, "the process is out of file descriptors (ulimit -n)");
            close(fd);
            continue;
        }
        if (fd < 0) {
            int err = errno;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                cn_log_limited(&g->fd_log, CN_LOG_WARN, g->id, "cannot accept connections: %s; trying again in %d ms",
                               strerror(err), NO_FD_PAUSE_MS);
                pause_listeners(g, true);
            }
            return; /* EAGAIN: all taken; ECONNABORTED and the like: epoll says again */
        }
        format_peer(&ss, peer, sizeof peer);
        if (g->n_open >= g->cfg.max_connections) {
            close(fd);
            char why[96];
            snprintf(why, sizeof why, "max_connections (%lld) reached", (long long)g->cfg.max_connections);
            refuse(g, peer, why);
            continue;
        }
        const char *why = NULL;
        if (conn_open(g, fd, peer, &why) != 0)
            refuse(g, peer, why);
    }
}

static void *gate_main(void *arg)
{
    swrx_gate *g = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (bool stop = false; !stop;) {
        int timeout = -1;
        if (g->paused_until) {
            int64_t left = g->paused_until - cn_mono_ms();
            if (left <= 0) {
                cn_fd_reserve_refill(&g->reserve);
                pause_listeners(g, false);
            } else {
                timeout = (int)left;
            }
        }
        int n = epoll_wait(g->ep, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            cn_error(g->id, "epoll_wait failed: %s; no more agent connections are taken", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            int kind = *(int *)evs[i].data.ptr;
            if (kind == K_WAKE)
                stop = true;
            else if (kind == K_LISTEN)
                accept_conns(g, ((gate_listener *)evs[i].data.ptr)->fd);
            else
                on_end(g, evs[i].data.ptr, evs[i].events);
        }
        free_dead(g);
    }
    return NULL;
}

/* Binds every address `listen` names (one for an IP, both loopbacks for localhost): 0, or -1 after logging. */
static int open_listeners(swrx_gate *g)
{
    const char *listen_on = g->cfg.listen;
    char host[256];
    const char *port;
    if (listen_on[0] == '[') {
        const char *br = strchr(listen_on, ']');
        if (!br || br[1] != ':' || (size_t)(br - listen_on) > sizeof host)
            goto bad;
        snprintf(host, sizeof host, "%.*s", (int)(br - listen_on - 1), listen_on + 1);
        port = br + 2;
    } else {
        const char *colon = strrchr(listen_on, ':');
        if (!colon || (size_t)(colon - listen_on) >= sizeof host)
            goto bad;
        snprintf(host, sizeof host, "%.*s", (int)(colon - listen_on), listen_on);
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rv = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rv != 0) {
        cn_error(g->id, "cannot listen on %s: %s", listen_on, gai_strerror(rv));
        return -1;
    }
    int saved = 0;
    unsigned bound_port = 0; /* port 0: every address gets the port the first one got */
    for (struct addrinfo *ai = res; ai && g->n_ls < MAX_LISTENERS; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (bound_port && ai->ai_family == AF_INET)
            ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)bound_port);
        else if (bound_port)
            ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)bound_port);
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1, zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6) /* [::] takes IPv4 agents too, as gRPC's listener did */
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0 ||
            getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
            saved = errno;
            close(fd);
            continue;
        }
        bound_port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                   : ((struct sockaddr_in6 *)&ss)->sin6_port);
        g->ls[g->n_ls].kind = K_LISTEN;
        g->ls[g->n_ls].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g->ls[g->n_ls]};
        g->n_ls++;
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            saved = errno;
            freeaddrinfo(res);
            cn_error(g->id, "cannot listen on %s: %s", listen_on, strerror(saved));
            return -1;
        }
    }
    freeaddrinfo(res);
    /* Some of several addresses may fail (no IPv6 here), as gRPC's own listener allowed. */
    if (g->n_ls == 0) {
        cn_error(g->id, "cannot listen on %s: %s", listen_on,
                 strerror(saved ? saved : EADDRNOTAVAIL));
        return -1;
    }
    return 0;
bad:
    cn_error(g->id, "cannot listen on %s: not host:port", listen_on);
    return -1;
}

int swrx_gate_start(swrx_gate **out, const swrx_gate_config *cfg)
{
    *out = NULL;
    swrx_gate *g = calloc(1, sizeof *g);
    if (!g) {
        cn_error(cfg->id, "out of memory starting the connection gate");
        return -1;
    }
    g->cfg = *cfg;
    snprintf(g->id, sizeof g->id, "%s", cfg->id);
    g->ep = g->wake_fd = g->reserve.fd = -1;
    g->wake_kind = K_WAKE;
    g->fd_log.interval_ms = 10000;
    g->inner_log.interval_ms = 10000;
    g->inner.sin_family = AF_INET;
    g->inner.sin_port = htons((uint16_t)cfg->inner_port);
    g->inner.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g->lock_ok = pthread_mutex_init(&g->lock, NULL) == 0;
    if (!g->lock_ok || !(g->peers = cn_dict_new(64)) || !(g->scratch = malloc(GATE_SCRATCH))) {
        cn_error(g->id, "out of memory starting the connection gate");
        goto fail;
    }
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g->wake_kind};
    if (g->ep < 0 || g->wake_fd < 0 || cn_fd_reserve_init(&g->reserve) != 0 || epoll_ctl(g->ep, EPOLL_CTL_ADD, g->wake_fd, &ev) != 0) {
        cn_error(g->id, "cannot start the connection gate: %s", strerror(errno));
        goto fail;
    }
    if (open_listeners(g) != 0)
        goto fail;
    int rv = pthread_create(&g->thread, NULL, gate_main, g);
    if (rv != 0) {
        cn_error(g->id, "cannot start the connection gate's thread: %s", strerror(rv));
        goto fail;
    }
    g->thread_started = true;
    *out = g;
    return 0;
fail:
    swrx_gate_stop(g);
    return -1;
}

void swrx_gate_stop(swrx_gate *g)
{
    if (!g)
        return;
    if (g->thread_started) {
        uint64_t one = 1;
        while (write(g->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
        pthread_join(g->thread, NULL);
    }
    while (g->conns)
        conn_close(g, g->conns);
    free_dead(g);
    for (size_t i = 0; i < g->n_ls; i++)
        close(g->ls[i].fd);
    if (g->ep >= 0)
        close(g->ep);
    if (g->wake_fd >= 0)
        close(g->wake_fd);
    cn_fd_reserve_close(&g->reserve);
    cn_metric_set(g->cfg.conns_open, 0);
    cn_dict_free(g->peers, free);
    free(g->scratch);
    if (g->lock_ok)
        pthread_mutex_destroy(&g->lock);
    free(g);
}

bool swrx_gate_peer(swrx_gate *g, const char *grpc_peer, char *buf, size_t len)
{
    size_t n = strlen(INNER_PREFIX);
    if (!g || strncmp(grpc_peer, INNER_PREFIX, n) != 0)
        return false;
    bool found = false;
    pthread_mutex_lock(&g->lock);
    const char *name = cn_dict_get(g->peers, grpc_peer + n);
    if (name) {
        snprintf(buf, len, "%s", name);
        found = true;
    }
    pthread_mutex_unlock(&g->lock);
    return found;
}
