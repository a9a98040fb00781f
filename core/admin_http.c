/*
 * The admin API's HTTP/1.1 server, on a thread of its own.
 *
 * Why not nng's HTTP server, which served the admin API before: nng runs its
 * HTTP handlers and socket callbacks on the same few task threads as the nng
 * receiver, and its listener draws from the process's file descriptors with
 * no reserve. Under a hostile flood, nng 1.5.2's pipe reaper wedges
 * (docs/security.md) and every closed agent connection then keeps its
 * descriptor; the process reaches its fd limit within seconds, nng's accept
 * fails with EMFILE on every try, and /metrics, the one place that shows the
 * leak, stopped answering (tests/chaos/hostile_agent.py). This server owns
 * its thread and keeps one descriptor in reserve, which it gives up to
 * accept a client when the process has none left.
 *
 * HTTPS, when the admin API has a certificate, through admin_tls.c.
 *
 * One request per connection (Connection: close). Clients are read and
 * answered without blocking, several at once, each within CONN_DEADLINE_MS,
 * so a slow client cannot hold the others up for long.
 */
#include "admin_http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "canopy/common.h"
#include "canopy/log.h"
#include "fd_reserve.h"

#define MAX_CLIENTS 32
#define MAX_HEAD 16384 /* request line and headers */
#define MAX_HEADERS 64
#define CONN_DEADLINE_MS 10000
/* Out of descriptors and no reserve left: look at the listener again after this long. */
#define NO_FD_PAUSE_MS 100

typedef struct http_header {
    const char *name, *value;
} http_header;

struct cn_http_exchange {
    const char *method, *uri;
    http_header headers[MAX_HEADERS];
    size_t n_headers;
    const char *body;
    size_t body_len;
    char *response; /* the whole response, head and body */
    size_t response_len;
};

typedef struct http_conn {
    int fd;
    int64_t deadline_ms;
    char *in;
    size_t in_len, in_cap;
    size_t head_len;             /* bytes of request line and headers; 0 until they are complete */
    size_t body_len;             /* Content-Length */
    const cn_http_route *route;  /* NULL until the head is parsed */
    cn_http_exchange x;
    size_t out_off;              /* bytes of x.response sent */
    bool responding;
    cn_http_tls_conn *tls;       /* NULL: plain HTTP */
    bool want_write;             /* TLS must write before it can go on */
} http_conn;

struct cn_http_server {
    int listen_fd;
    int wake[2]; /* a byte on wake[1] stops the thread */
    cn_fd_reserve reserve; /* a descriptor given up to accept when the process is out of them */
    pthread_t thread;
    bool thread_started;
    const cn_http_route *routes;
    size_t n_routes;
    void *arg;
    const cn_http_tls *tls;
    http_conn clients[MAX_CLIENTS];
    size_t n_clients;
    int64_t listen_paused_until;
    cn_ratelimit no_fd_log;
};

/* ---- requests -------------------------------------------------------------------- */

const char *cn_http_method(const cn_http_exchange *x) { return x->method; }
const char *cn_http_uri(const cn_http_exchange *x) { return x->uri; }

const char *cn_http_header(const cn_http_exchange *x, const char *name)
{
    for (size_t i = 0; i < x->n_headers; i++)
        if (strcasecmp(x->headers[i].name, name) == 0)
            return x->headers[i].value;
    return NULL;
}

void cn_http_body(const cn_http_exchange *x, const void **data, size_t *len)
{
    *data = x->body;
    *len = x->body_len;
}

static const char *status_text(uint16_t status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return status >= 500 ? "Internal Server Error" : status >= 400 ? "Client Error" : "OK";
    }
}

int cn_http_respond(cn_http_exchange *x, uint16_t status, const char *content_type, const void *body, size_t len,
                    const char *extra_header, const char *extra_value)
{
    free(x->response);
    x->response = NULL;
    bool head_only = x->method && strcmp(x->method, "HEAD") == 0;
    char head[1024];
    /* Everything served is live state: never cached. */
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
                     "Connection: close\r\n%s%s%s%s\r\n",
                     (unsigned)status, status_text(status), content_type ? content_type : "text/plain", len,
                     extra_header ? extra_header : "", extra_header ? ": " : "", extra_header ? extra_value : "",
                     extra_header ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof head)
        return -1;
    size_t body_len = head_only ? 0 : len;
    if (!(x->response = malloc((size_t)n + body_len + 1)))
        return -1;
    memcpy(x->response, head, (size_t)n);
    if (body_len)
        memcpy(x->response + n, body, body_len);
    x->response_len = (size_t)n + body_len;
    return 0;
}

/* The route serving `uri`'s path, NULL if none. */
static const cn_http_route *find_route(const cn_http_server *s, const char *uri)
{
    size_t path_len = strcspn(uri, "?");
    for (size_t i = 0; i < s->n_routes; i++) {
        const cn_http_route *r = &s->routes[i];
        size_t n = strlen(r->path);
        if (path_len == n && strncmp(uri, r->path, n) == 0)
            return r;
        if (r->tree && path_len > n && strncmp(uri, r->path, n) == 0 && uri[n] == '/')
            return r;
    }
    return NULL;
}

/* Splits the head in place into method, target and headers. Returns an HTTP status: 0 when well formed. */
static uint16_t parse_head(http_conn *c)
{
    cn_http_exchange *x = &c->x;
    char *p = c->in, *end = c->in + c->head_len - 4; /* before the blank line */
    *end = '\0';
    char *line_end = strstr(p, "\r\n");
    if (line_end)
        *line_end = '\0';
    char *sp1 = strchr(p, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || sp1 == p || sp2 == sp1 + 1 || sp1[1] != '/')
        return 400;
    *sp1 = *sp2 = '\0';
    if (strncmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return 505;
    x->method = p;
    x->uri = sp1 + 1;
    for (p = line_end ? line_end + 2 : end; p < end;) {
        char *eol = strstr(p, "\r\n");
        if (!eol)
            eol = end;
        *eol = '\0';
        char *colon = strchr(p, ':');
        if (!colon || colon == p)
            return 400;
        if (x->n_headers == MAX_HEADERS)
            return 431;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        for (char *t = v + strlen(v); t > v && (t[-1] == ' ' || t[-1] == '\t');)
            *--t = '\0';
        x->headers[x->n_headers++] = (http_header){p, v};
        p = eol + 2;
    }
    if (cn_http_header(x, "Transfer-Encoding"))
        return 411; /* no chunked bodies: every client of this API sends Content-Length */
    const char *cl = cn_http_header(x, "Content-Length");
    if (cl) {
        char *e;
        errno = 0;
        unsigned long long v = strtoull(cl, &e, 10);
        if (errno || e == cl || *e || cl[0] == '-')
            return 400;
        c->body_len = (size_t)v;
    }
    return 0;
}

/* ---- connections ---------------------------------------------------------------------- */

static void close_client(cn_http_server *s, size_t i)
{
    http_conn *c = &s->clients[i];
    cn_http_tls_close(c->tls);
    close(c->fd);
    free(c->in);
    free(c->x.response);
    s->clients[i] = s->clients[--s->n_clients];
    memset(&s->clients[s->n_clients], 0, sizeof s->clients[0]);
    if (i < s->n_clients && s->clients[i].tls)
        cn_http_tls_rebind(s->clients[i].tls, &s->clients[i].fd); /* TLS reads the descriptor where it was */
}

/* recv or send, through TLS when the connection has it. */
static ssize_t conn_recv(http_conn *c, void *buf, size_t len)
{
    return c->tls ? cn_http_tls_recv(c->tls, buf, len, &c->want_write) : recv(c->fd, buf, len, 0);
}

static ssize_t conn_send(http_conn *c, const void *buf, size_t len)
{
    return c->tls ? cn_http_tls_send(c->tls, buf, len, &c->want_write) : send(c->fd, buf, len, MSG_NOSIGNAL);
}

/* Answers without a handler: errors found while reading the request. */
static void respond_plain(http_conn *c, uint16_t status, const char *text)
{
    if (cn_http_respond(&c->x, status, "text/plain; charset=utf-8", text, strlen(text), NULL, NULL) != 0)
        c->x.response_len = 0; /* out of memory: the connection is just closed */
    c->out_off = 0;
    c->responding = true;
}

static void dispatch(cn_http_server *s, http_conn *c)
{
    c->x.body = c->in + c->head_len;
    c->x.body_len = c->body_len;
    c->route->cb(&c->x, s->arg);
    if (!c->x.response)
        respond_plain(c, 500, "internal error (out of memory)\n");
    c->out_off = 0;
    c->responding = true;
}

/* After more bytes came in: parses the head once complete, dispatches once the body is in. */
static void advance_request(cn_http_server *s, http_conn *c)
{
    if (!c->head_len) {
        char *blank = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!blank) {
            if (c->in_len >= MAX_HEAD)
                respond_plain(c, 431, "request head too large\n");
            return;
        }
        c->head_len = (size_t)(blank - c->in) + 4;
        uint16_t status = parse_head(c);
        if (status) {
            respond_plain(c, status, status == 411 ? "send a Content-Length body\n" : "malformed request\n");
            return;
        }
        if (!(c->route = find_route(s, c->x.uri))) {
            respond_plain(c, 404, "not found\n");
            return;
        }
        if (c->body_len > c->route->body_max) {
            respond_plain(c, 413, "request body too large\n");
            return;
        }
    }
    if (c->in_len - c->head_len >= c->body_len)
        dispatch(s, c);
}

/* Reads what the client sent. Returns false when the connection is to be closed. */
static bool read_client(cn_http_server *s, http_conn *c)
{
    for (;;) {
        size_t want = c->head_len ? c->head_len + c->body_len : MAX_HEAD;
        if (c->in_len >= want)
            return true;
        if (c->in_len + 1 >= c->in_cap) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 4096;
            if (cap > want + 1)
                cap = want + 1;
            char *grown = realloc(c->in, cap);
            if (!grown)
                return false;
            c->in = grown;
            c->in_cap = cap;
        }
        ssize_t n = conn_recv(c, c->in + c->in_len, c->in_cap - 1 - c->in_len);
        if (n == 0)
            return false;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        c->in_len += (size_t)n;
        c->in[c->in_len] = '\0';
        advance_request(s, c);
        if (c->responding)
            return true;
    }
}

/* Sends the rest of the response. Returns false when done (or failed): close it. */
static bool write_client(http_conn *c)
{
    while (c->out_off < c->x.response_len) {
        ssize_t n = conn_send(c, c->x.response + c->out_off, c->x.response_len - c->out_off);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        c->out_off += (size_t)n;
    }
    return false;
}

/*
 * Accepts waiting clients. When the process is out of descriptors (another
 * part of it leaks them), the reserve one is given up for the client and
 * taken back after; a listener left unaccepted would make poll spin.
 */
static void accept_clients(cn_http_server *s)
{
    while (s->n_clients < MAX_CLIENTS) {
        bool from_reserve;
        int fd = cn_accept_reserved(&s->reserve, s->listen_fd, NULL, NULL, &from_reserve);
        int err = fd < 0 ? errno : 0;
        if (from_reserve) {
            cn_log_limited(&s->no_fd_log, CN_LOG_WARN, "admin",
                           "the process is out of file descriptors (ulimit -n); the admin API answers from its "
                           "reserve one, so /metrics can still show what holds them");
        }
        if (fd < 0) {
            if (err == EMFILE || err == ENFILE)
                s->listen_paused_until = cn_mono_ms() + NO_FD_PAUSE_MS;
            return; /* EAGAIN, or a client that went away: poll again */
        }
        http_conn *c = &s->clients[s->n_clients++];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->deadline_ms = cn_mono_ms() + CONN_DEADLINE_MS;
        if (s->tls && !(c->tls = cn_http_tls_accept(s->tls, &c->fd)))
            close_client(s, s->n_clients - 1); /* out of memory: the client sees the connection close */
    }
}

static void *server_main(void *arg)
{
    cn_http_server *s = arg;
    struct pollfd fds[MAX_CLIENTS + 2];
    for (;;) {
        int64_t now = cn_mono_ms();
        cn_fd_reserve_refill(&s->reserve);
        for (size_t i = s->n_clients; i-- > 0;)
            if (now >= s->clients[i].deadline_ms)
                close_client(s, i);
        int timeout = 1000;
        for (size_t i = 0; i < s->n_clients; i++)
            if (s->clients[i].deadline_ms - now < timeout)
                timeout = (int)(s->clients[i].deadline_ms - now);
        bool listening = s->n_clients < MAX_CLIENTS && now >= s->listen_paused_until;
        if (!listening && s->listen_paused_until > now && s->listen_paused_until - now < timeout)
            timeout = (int)(s->listen_paused_until - now);
        fds[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        fds[1] = (struct pollfd){.fd = listening ? s->listen_fd : -1, .events = POLLIN};
        size_t n_clients = s->n_clients;
        for (size_t i = 0; i < n_clients; i++)
            fds[i + 2] = (struct pollfd){.fd = s->clients[i].fd,
                                         .events = s->clients[i].responding || s->clients[i].want_write ? POLLOUT
                                                                                                        : POLLIN};
        if (poll(fds, n_clients + 2, timeout < 0 ? 0 : timeout) < 0 && errno != EINTR)
            break;
        if (fds[0].revents)
            break;
        /* Backwards, since closing moves the last client into the freed slot. */
        for (size_t i = n_clients; i-- > 0;) {
            http_conn *c = &s->clients[i];
            if (!fds[i + 2].revents)
                continue;
            bool keep = c->responding ? write_client(c) : read_client(s, c);
            if (keep && c->responding && !(fds[i + 2].events & POLLOUT))
                keep = write_client(c); /* just answered: most responses fit the socket buffer */
            if (!keep)
                close_client(s, i);
        }
        if (fds[1].revents)
            accept_clients(s);
    }
    return NULL;
}

/* ---- start and stop ---------------------------------------------------------------------- */

/* A listening socket on "host:port" or "[v6]:port"; -1 (or CN_HTTP_BAD_ADDRESS) with err set. */
static int open_listener(const char *listen_on, char *err, size_t err_len)
{
    char host[256];
    const char *port;
    if (listen_on[0] == '[') {
        const char *close_br = strchr(listen_on, ']');
        if (!close_br || close_br[1] != ':' || (size_t)(close_br - listen_on) > sizeof host) {
            snprintf(err, err_len, "\"%s\" is not host:port", listen_on);
            return CN_HTTP_BAD_ADDRESS;
        }
        snprintf(host, sizeof host, "%.*s", (int)(close_br - listen_on - 1), listen_on + 1);
        port = close_br + 2;
    } else {
        const char *colon = strrchr(listen_on, ':');
        if (!colon || (size_t)(colon - listen_on) >= sizeof host) {
            snprintf(err, err_len, "\"%s\" is not host:port", listen_on);
            return CN_HTTP_BAD_ADDRESS;
        }
        snprintf(host, sizeof host, "%.*s", (int)(colon - listen_on), listen_on);
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rv = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rv != 0) {
        snprintf(err, err_len, "\"%s\" is not host:port (%s)", listen_on, gai_strerror(rv));
        return CN_HTTP_BAD_ADDRESS;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, err_len, "%s", strerror(saved ? saved : EADDRNOTAVAIL));
    return fd;
}

int cn_http_server_start(cn_http_server **out, const char *listen_on, const cn_http_tls *tls,
                         const cn_http_route *routes, size_t n_routes, void *arg, char *err, size_t err_len)
{
    *out = NULL;
    cn_http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    s->wake[0] = s->wake[1] = s->reserve.fd = -1;
    s->routes = routes;
    s->n_routes = n_routes;
    s->arg = arg;
    s->tls = tls;
    s->no_fd_log.interval_ms = 10000;
    if ((s->listen_fd = open_listener(listen_on, err, err_len)) < 0) {
        int rv = s->listen_fd;
        cn_http_server_stop(s);
        return rv;
    }
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0 || cn_fd_reserve_init(&s->reserve) != 0) {
        snprintf(err, err_len, "%s", strerror(errno));
        cn_http_server_stop(s);
        return -1;
    }
    int rv = pthread_create(&s->thread, NULL, server_main, s);
    if (rv != 0) {
        snprintf(err, err_len, "cannot start its thread: %s", strerror(rv));
        cn_http_server_stop(s);
        return -1;
    }
    s->thread_started = true;
    *out = s;
    return 0;
}

int cn_http_server_port(const cn_http_server *s)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(s->listen_fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

void cn_http_server_stop(cn_http_server *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        char b = 0;
        while (write(s->wake[1], &b, 1) < 0 && errno == EINTR)
            ;
        pthread_join(s->thread, NULL);
    }
    while (s->n_clients)
        close_client(s, s->n_clients - 1);
    cn_fd_reserve_close(&s->reserve);
    int fds[] = {s->listen_fd, s->wake[0], s->wake[1]};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(s);
}
