/*
 * Levelled logging. One line per call, written with a single fputs so lines
 * from different threads do not interleave.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "canopy/log.h"

static _Atomic int log_level = CN_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void cn_log_set_level(cn_log_level level) { atomic_store(&log_level, (int)level); }
cn_log_level cn_log_get_level(void) { return (cn_log_level)atomic_load(&log_level); }

int cn_log_level_parse(const char *name)
{
    for (size_t i = 0; i < CN_ARRAY_LEN(level_names); i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return (int)i;
    if (strcasecmp(name, "warning") == 0)
        return CN_LOG_WARN;
    return -1;
}

static void log_line(cn_log_level level, const char *component, const char *suffix, const char *fmt,
                     va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level], component ? component : "canopy");
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    size_t len = m < 0 ? (size_t)n : strnlen(line, sizeof line - 1);
    if (suffix && len < sizeof line - 1)
        len += (size_t)snprintf(line + len, sizeof line - len, "%s", suffix);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len] = '\n';
    line[len + 1] = '\0';
    fputs(line, stderr);
}

void cn_log(cn_log_level level, const char *component, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&log_level, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, component, NULL, fmt, ap);
    va_end(ap);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cn_log_limited(cn_ratelimit *rl, cn_log_level level, const char *component, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&log_level, memory_order_relaxed))
        return;
    int64_t now = mono_ms();
    int64_t next = atomic_load(&rl->next_ms);
    int64_t interval = rl->interval_ms > 0 ? rl->interval_ms : 10000;
    if (now < next || !atomic_compare_exchange_strong(&rl->next_ms, &next, now + interval)) {
        atomic_fetch_add(&rl->suppressed, 1);
        return;
    }
    uint64_t suppressed = atomic_exchange(&rl->suppressed, 0);
    char suffix[96] = "";
    if (suppressed)
        snprintf(suffix, sizeof suffix, " (%llu more like this in the last %llds)",
                 (unsigned long long)suppressed, (long long)(interval / 1000));
    va_list ap;
    va_start(ap, fmt);
    log_line(level, component, suffix, fmt, ap);
    va_end(ap);
}
