/*
 * String keys (canopy/string_key.h): two 64-bit lanes of the string folded
 * through one 64x64->128-bit multiply per 16 bytes (the construction of
 * wyhash), so a 60-byte signature costs a handful of multiplies.
 */
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "canopy/string_key.h"

__extension__ typedef unsigned __int128 key_u128;

static uint64_t seed[3];

/* At load, before any thread can ask for a key: nothing to check on the hot path (every string of
 * every batch, every dict lookup). */
__attribute__((constructor)) static void seed_init(void)
{
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        /* No entropy yet (early boot): the clock still differs between processes. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed[0] ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (uint64_t)ts.tv_sec;
    }
    /* Odd constants mixed in, so that no seed word is zero (a zero operand would erase the state). */
    seed[0] ^= 0xA0761D6478BD642FULL;
    seed[1] ^= 0xE7037ED1A0B428DBULL;
    seed[2] ^= 0x8EBC6AF09C88C6E3ULL;
}

static inline uint64_t fold_mul(uint64_t a, uint64_t b)
{
    key_u128 p = (key_u128)a * b;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
}

static inline uint64_t load64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

uint64_t cn_string_key(const char *s, size_t len)
{
    uint64_t h = seed[0] ^ fold_mul((uint64_t)len ^ seed[1], seed[2]);
    size_t i = 0;
    for (; i + 16 <= len; i += 16)
        h = fold_mul(load64(s + i) ^ seed[1], load64(s + i + 8) ^ h);
    /* The last 1 to 15 bytes, zero-padded (the length went in first, so padding cannot collide). */
    uint64_t a = 0, b = 0;
    size_t rest = len - i;
    if (rest > 8) {
        a = load64(s + i);
        memcpy(&b, s + i + 8, rest - 8);
    } else {
        memcpy(&a, s + i, rest);
    }
    h = fold_mul(a ^ seed[1], b ^ h);
    return fold_mul(h ^ seed[2], (uint64_t)len ^ seed[0]);
}
