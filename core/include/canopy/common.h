/* Small shared helpers: time, errors, allocation checks. */
#ifndef CANOPY_COMMON_H
#define CANOPY_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define CN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CN_UNUSED(x) ((void)(x))

#if defined(__GNUC__)
#define CN_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#define CN_LIKELY(x) __builtin_expect(!!(x), 1)
#define CN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define CN_PRINTF(fmt_idx, arg_idx)
#define CN_LIKELY(x) (x)
#define CN_UNLIKELY(x) (x)
#endif

/* Result of handing data to a stage. */
typedef enum cn_status {
    CN_OK = 0,
    CN_RETRY = 1,  /* transient: try the same data again later */
    CN_FAIL = 2,   /* permanent: the data cannot be handled and is dropped (counted) */
} cn_status;

/* Wall clock, epoch milliseconds. */
int64_t cn_now_ms(void);
/* Monotonic clock, milliseconds; for timers and intervals. */
int64_t cn_mono_ms(void);
/* Monotonic clock, nanoseconds. */
int64_t cn_mono_ns(void);
/* `clock`'s time now plus ms (>= 0): the deadline for pthread_cond_timedwait and friends. */
struct timespec cn_deadline_after(clockid_t clock, int64_t ms);

/* strdup that returns NULL for NULL. */
char *cn_strdup(const char *s);

#endif
