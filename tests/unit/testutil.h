/* Helpers shared by the unit tests: config from text, request encoding. */
#ifndef CANOPY_TESTUTIL_H
#define CANOPY_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "service.h"

/* Builds a service from YAML text; NULL with errors in *d. */
cn_service *test_service(const char *yaml, cn_diag *d);
/* True when some error in d contains `needle`. */
int diag_has(const cn_diag *d, const char *needle);
/* Prints the errors (for failing tests). */
void diag_print(const cn_diag *d);

/* A snapshot for test_encode_batch: strings, not indices. */
typedef struct test_snap {
    const char *task, *segment;
    int64_t time_ms;
    int32_t sequence;
    const char *frames[8]; /* NULL-terminated, root first */
} test_snap;

/* Packs Request{agent "shop"/instance, batch}. Caller frees *out. */
size_t test_pack_batch(Canopy__V1__SnapshotBatch *batch, const char *instance, uint8_t **out);
/* Encodes a Request{batch} with an interned string table. Caller frees *out. */
size_t test_encode_batch(const char *instance, uint64_t batch_seq, const test_snap *snaps, size_t n, uint8_t **out);
/* Decodes an encoded batch request into a cn_batch (asserts success). */
cn_batch *test_decode_batch(const uint8_t *data, size_t len);

#endif
