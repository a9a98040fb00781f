/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of the
 * spool's records. Castagnoli rather than the gzip polynomial because x86's
 * SSE4.2 computes it in hardware, eight bytes an instruction; a byte-wise
 * table was a quarter of the collector's CPU with the spool on.
 */
#include <pthread.h>

#include "spool.h"

static uint32_t crc_table[256];
static bool crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_sw(uint32_t c, const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw8(uint32_t c, const unsigned char *p, size_t len)
{
    uint64_t c64 = c;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t word;
        __builtin_memcpy(&word, p, 8);
        c64 = __builtin_ia32_crc32di(c64, word);
    }
    c = (uint32_t)c64;
    for (; len; p++, len--)
        c = __builtin_ia32_crc32qi(c, *p);
    return c;
}
#endif

uint32_t cn_crc32(const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    uint32_t c = 0xFFFFFFFFu;
#if defined(__x86_64__) && defined(__GNUC__)
    if (crc_hw)
        return crc_hw8(c, data, len) ^ 0xFFFFFFFFu;
#endif
    return crc_sw(c, data, len) ^ 0xFFFFFFFFu;
}
