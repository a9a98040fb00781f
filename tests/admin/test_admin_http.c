/*
 * The admin API's HTTP server (core/admin_http.c) over real sockets:
 * routing, bodies and their limit, HEAD, malformed requests, and answering
 * when the process is out of file descriptors (its reserve one).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin_http.h"
#include "testutil.h"

static void echo(cn_http_exchange *x, void *arg)
{
    (void)arg;
    char out[512];
    const void *body;
    size_t len;
    cn_http_body(x, &body, &len);
    const char *ct = cn_http_header(x, "content-type");
    int n = snprintf(out, sizeof out, "%s %s ct=%s body=%.*s", cn_http_method(x), cn_http_uri(x), ct ? ct : "-",
                     (int)len, (const char *)body);
    cn_http_respond(x, 200, "text/plain", out, (size_t)n, "X-Test", "yes");
}

static const cn_http_route routes[] = {
    {"/echo", false, 0, echo},
    {"/tree", true, 64, echo},
};

/* Sends `req` on a new connection and returns everything the server sent before closing. */
static char *exchange(int port, const char *req)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    static char buf[8192];
    size_t len = 0;
    ssize_t n;
    while (len + 1 < sizeof buf && (n = recv(fd, buf + len, sizeof buf - 1 - len, 0)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    return buf;
}

static cn_http_server *start(int *port)
{
    cn_http_server *s;
    char err[256];
    assert_int_equal(cn_http_server_start(&s, "127.0.0.1:0", NULL, routes, 2, NULL, err, sizeof err), 0);
    *port = cn_http_server_port(s);
    assert_true(*port > 0);
    return s;
}

static void test_routes_and_bodies(void **state)
{
    (void)state;
    int port;
    cn_http_server *s = start(&port);
    char *r = exchange(port, "GET /echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "X-Test: yes\r\n"));
    assert_non_null(strstr(r, "Connection: close\r\n"));
    assert_non_null(strstr(r, "\r\n\r\nGET /echo?x=1 ct=- body="));

    r = exchange(port, "POST /tree/a/b HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}");
    assert_non_null(strstr(r, "POST /tree/a/b ct=application/json body={\"a\":1}"));

    r = exchange(port, "HEAD /echo HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "Content-Length: 21\r\n")); /* of the GET body, which HEAD does not send */
    assert_null(strstr(r, "HEAD /echo ct"));

    assert_non_null(strstr(exchange(port, "GET /echoes HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 "));
    assert_non_null(strstr(exchange(port, "GET /treex HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 "));
    assert_non_null(strstr(exchange(port, "POST /tree HTTP/1.1\r\nContent-Length: 65\r\n\r\n"), "HTTP/1.1 413 "));
    assert_non_null(strstr(exchange(port, "POST /echo HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"), "HTTP/1.1 413 "));
    assert_non_null(strstr(exchange(port, "GARBAGE\r\n\r\n"), "HTTP/1.1 400 "));
    assert_non_null(strstr(exchange(port, "GET /echo HTTP/1.1\r\nno colon\r\n\r\n"), "HTTP/1.1 400 "));
    assert_non_null(strstr(exchange(port, "GET /echo SPDY/3\r\n\r\n"), "HTTP/1.1 505 "));
    assert_non_null(
        strstr(exchange(port, "POST /tree HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), "HTTP/1.1 411 "));
    cn_http_server_stop(s);
}

/* Another part of the process used every descriptor: the server still answers, from its reserve one. */
static void test_answers_when_out_of_fds(void **state)
{
    (void)state;
    int port;
    cn_http_server *s = start(&port);
    struct rlimit saved, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = 256;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    /* Fill the table but one, which the client's socket takes. */
    int held[256], n_held = 0, fd;
    while (n_held < 256 && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        held[n_held++] = fd;
    assert_int_equal(errno, EMFILE);
    close(held[--n_held]);
    for (int i = 0; i < 3; i++) {
        char *r = exchange(port, "GET /echo HTTP/1.1\r\n\r\n");
        assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    }
    while (n_held > 0)
        close(held[--n_held]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    cn_http_server_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_and_bodies),
        cmocka_unit_test(test_answers_when_out_of_fds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
