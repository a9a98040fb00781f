/* Levelled logging to stderr: "2026-11-22T10:00:00.123Z info  [nng] message". */
#ifndef CANOPY_LOG_H
#define CANOPY_LOG_H

#include <stdint.h>

#include "canopy/common.h"

typedef enum cn_log_level {
    CN_LOG_DEBUG = 0,
    CN_LOG_INFO,
    CN_LOG_WARN,
    CN_LOG_ERROR,
    CN_LOG_OFF,
} cn_log_level;

void cn_log_set_level(cn_log_level level);
cn_log_level cn_log_get_level(void);
/* Parses "debug", "info", "warn", "error", "off"; returns -1 when unknown. */
int cn_log_level_parse(const char *name);

void cn_log(cn_log_level level, const char *component, const char *fmt, ...) CN_PRINTF(3, 4);

#define cn_debug(comp, ...) cn_log(CN_LOG_DEBUG, comp, __VA_ARGS__)
#define cn_info(comp, ...) cn_log(CN_LOG_INFO, comp, __VA_ARGS__)
#define cn_warn(comp, ...) cn_log(CN_LOG_WARN, comp, __VA_ARGS__)
#define cn_error(comp, ...) cn_log(CN_LOG_ERROR, comp, __VA_ARGS__)

/*
 * A log line that repeats (a drop, a refused batch) is printed at most once per
 * interval; the lines suppressed meanwhile are counted and reported with the
 * next one. One cn_ratelimit per call site; it is thread safe.
 */
typedef struct cn_ratelimit {
    int64_t interval_ms;      /* 0 means 10 s */
    _Atomic int64_t next_ms;  /* monotonic time the next line may print */
    _Atomic uint64_t suppressed;
} cn_ratelimit;

void cn_log_limited(cn_ratelimit *rl, cn_log_level level, const char *component, const char *fmt, ...)
    CN_PRINTF(4, 5);

#endif
