/*
 * The pyroscope exporter's HTTP side, on libcurl: one easy handle for the
 * exporter's life, so the connection to Pyroscope stays open between pushes
 * (keep-alive), with TLS (CA file, client certificate), basic auth or a
 * bearer token, X-Scope-OrgID for a multi-tenant server, and a timeout.
 *
 * And the /ingest URL, as grafana/pyroscope's ingest handler parses it:
 * name=<app>{k=v,...} (the app name may hold [A-Za-z0-9_./-], label names
 * [A-Za-z0-9_.], values anything but ',' and '}'), from and until in Unix
 * seconds, format=pprof.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyroscope.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

/* curl_global_init is not thread safe and must run once per process: the first exporter started does it. */
static void curl_init(void) { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); }

static size_t keep_answer(char *data, size_t size, size_t nmemb, void *arg)
{
    pyro_response *r = arg;
    size_t n = size * nmemb, room = sizeof r->body - 1 - r->body_len;
    size_t take = n < room ? n : room;
    memcpy(r->body + r->body_len, data, take);
    r->body_len += take;
    r->body[r->body_len] = '\0';
    return n; /* the rest is read and ignored: only the start goes into logs */
}

/* Lets cb_interrupt abort a push that a hanging server holds past shutdown_timeout. */
static int progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return atomic_load(&((pyro_ctx *)arg)->interrupted) ? 1 : 0;
}

static struct curl_slist *add_header(struct curl_slist *list, const char *name, const char *value, bool *ok)
{
    char line[4200];
    if (!*ok)
        return list;
    int n = snprintf(line, sizeof line, "%s: %s", name, value);
    struct curl_slist *l = n > 0 && (size_t)n < sizeof line ? curl_slist_append(list, line) : NULL;
    if (!l) {
        *ok = false;
        return list;
    }
    return l;
}

int pyro_http_open(pyro_ctx *p)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_result != CURLE_OK) {
        cn_error(p->id, "cannot initialise libcurl: %s", curl_easy_strerror(curl_init_result));
        return -1;
    }
    if (!(p->curl = curl_easy_init())) {
        cn_error(p->id, "cannot create a libcurl handle");
        return -1;
    }
    bool ok = true;
    p->headers = add_header(p->headers, "Content-Type", "application/octet-stream", &ok);
    /* libcurl would send "Expect: 100-continue" for large bodies and wait for the server's go-ahead. */
    p->headers = add_header(p->headers, "Expect", "", &ok);
    if (p->tenant_id && p->tenant_id[0])
        p->headers = add_header(p->headers, "X-Scope-OrgID", p->tenant_id, &ok);
    if (p->token) {
        char value[4200];
        snprintf(value, sizeof value, "Bearer %s", p->token);
        p->headers = add_header(p->headers, "Authorization", value, &ok);
    }
    if (!ok) {
        cn_error(p->id, "out of memory");
        return -1;
    }
    CURL *c = p->curl;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                                              \
    do {                                                                                                           \
        if (rc == CURLE_OK)                                                                                        \
            rc = curl_easy_setopt(c, opt, val);                                                                    \
    } while (0)
    SET(CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for DNS timeouts */
    SET(CURLOPT_HTTPHEADER, p->headers);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)p->timeout_ms);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_USERAGENT, "canopy-pyroscope-exporter");
    SET(CURLOPT_WRITEFUNCTION, keep_answer);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, progress);
    SET(CURLOPT_XFERINFODATA, p);
    /* Only the configured server: no redirects that would carry the credentials elsewhere. */
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    if (p->basic_auth.username) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERNAME, p->basic_auth.username);
        SET(CURLOPT_PASSWORD, p->basic_auth.password ? p->basic_auth.password : "");
    }
    if (p->tls.ca_file)
        SET(CURLOPT_CAINFO, p->tls.ca_file);
    if (p->tls.cert_file)
        SET(CURLOPT_SSLCERT, p->tls.cert_file);
    if (p->tls.key_file)
        SET(CURLOPT_SSLKEY, p->tls.key_file);
    if (p->tls.insecure_skip_verify) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
#undef SET
    if (rc != CURLE_OK) {
        cn_error(p->id, "libcurl refused a setting: %s", curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

void pyro_http_close(pyro_ctx *p)
{
    if (p->curl) {
        curl_easy_cleanup(p->curl);
        p->curl = NULL;
    }
    curl_slist_free_all(p->headers);
    p->headers = NULL;
}

int pyro_http_post(pyro_ctx *p, const char *url, const uint8_t *body, size_t len, pyro_response *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = p->curl;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, (const char *)body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->error);
    int64_t started = cn_mono_ms();
    r->curl_code = curl_easy_perform(c);
    r->elapsed_ms = cn_mono_ms() - started;
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL); /* r goes away */
    if (r->curl_code != CURLE_OK) {
        if (!r->error[0])
            snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(r->curl_code));
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    /* One line for logs. */
    for (size_t i = 0; i < r->body_len; i++)
        if (r->body[i] == '\n' || r->body[i] == '\r')
            r->body[i] = ' ';
    return 0;
}

/* ---- the /ingest URL -------------------------------------------------------------- */

typedef struct url_buf {
    char *data;
    size_t len, cap;
    bool oom;
} url_buf;

static void put(url_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256) + n;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void put_str(url_buf *b, const char *s) { put(b, s, strlen(s)); }

/* Percent-encodes one character of the query's name parameter. */
static void put_encoded_char(url_buf *b, unsigned char ch)
{
    bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                 ch == '_' || ch == '.' || ch == '~';
    if (plain) {
        char c = (char)ch;
        put(b, &c, 1);
    } else {
        char hex[4];
        snprintf(hex, sizeof hex, "%%%02X", ch);
        put(b, hex, 3);
    }
}

/* The app name: characters Pyroscope refuses in it become '_'. */
static void put_app(url_buf *b, const char *s)
{
    if (!*s)
        s = "unknown";
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        unsigned char ch = *q;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                  ch == '.' || ch == '-' || ch == '/';
        put_encoded_char(b, ok ? ch : '_');
    }
}

/* A label value: ',' and '}' end a value in Pyroscope's parser, so they become '_'; an empty value drops the label there. */
static void put_label(url_buf *b, bool *first, const char *key, const char *value)
{
    if (!*first)
        put_encoded_char(b, ',');
    *first = false;
    for (const char *q = key; *q; q++)
        put_encoded_char(b, (unsigned char)*q);
    put_encoded_char(b, '=');
    if (!value || !*value)
        value = "unknown";
    for (const unsigned char *q = (const unsigned char *)value; *q; q++)
        put_encoded_char(b, *q == ',' || *q == '}' ? '_' : *q);
}

char *pyro_ingest_url(const pyro_ctx *p, const pyro_profile *prof, int64_t until_ms)
{
    url_buf b = {0};
    put_str(&b, p->base_url);
    put_str(&b, "/ingest?name=");
    put_app(&b, p->name && p->name[0] ? p->name : prof->service);
    put_encoded_char(&b, '{');
    bool first = true;
    put_label(&b, &first, "service_name", prof->service);
    put_label(&b, &first, "endpoint", prof->endpoint);
    put_label(&b, &first, "task_id", prof->task_id);
    put_label(&b, &first, "mode", prof->mode);
    for (size_t i = 0; i + 1 < p->labels.n; i += 2)
        put_label(&b, &first, p->labels.v[i], p->labels.v[i + 1]);
    put_encoded_char(&b, '}');
    char tail[128];
    /* Intervals are whole seconds (the interval option is), so from and until are exact. */
    snprintf(tail, sizeof tail, "&from=%lld&until=%lld&format=pprof&spyName=canopy",
             (long long)(prof->from_ms / 1000), (long long)(until_ms / 1000));
    put_str(&b, tail);
    if (b.oom) {
        free(b.data);
        return NULL;
    }
    return b.data;
}
