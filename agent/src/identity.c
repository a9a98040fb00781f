/* Identity helpers: hostname, default instance name, session ids, errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "internal.h"

char *cn_ag_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *cn_ag_hostname(void)
{
    char buf[256];
    if (gethostname(buf, sizeof(buf)) != 0 || buf[0] == '\0')
        return cn_ag_strdup("localhost");
    buf[sizeof(buf) - 1] = '\0';
    return cn_ag_strdup(buf);
}

char *cn_ag_default_instance(uint32_t pid, const char *host)
{
    size_t n = strlen(host) + 16;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%u@%s", (unsigned)pid, host);
    return s;
}

/* splitmix64 finaliser: spreads the fallback inputs over all 64 bits. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t cn_session_random(void)
{
    uint64_t v = 0;
    /* getrandom never blocks once the pool is initialised (long before any
     * gunicorn worker runs); GRND_NONBLOCK keeps early boot from hanging. */
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40) ^
                  (uint64_t)(uintptr_t)&v);
    }
    return v ? v : 1;
}

const char *cn_agent_strerror(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case CN_EOK: return "ok";
    case CN_ENOMEM: return "out of memory";
    case CN_EINVAL: return "invalid argument";
    case CN_EFULL: return "memory bound reached, dropped";
    case CN_ETIMEDOUT: return "timed out";
    case CN_ECLOSED: return "closed";
    case CN_ENNG: return "nng error";
    case CN_ELIMIT: return "batch full";
    default: return "unknown error";
    }
}
