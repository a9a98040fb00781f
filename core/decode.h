#ifndef CANOPY_DECODE_H
#define CANOPY_DECODE_H

#include "canopy/batch.h"

typedef enum decode_result {
    DECODE_OK = 0,
    DECODE_FALLBACK,  /* not a plain batch request: use protobuf-c */
    DECODE_MALFORMED,
    DECODE_NO_MEMORY,
} decode_result;

/* Decodes Request{protocol_version, agent, batch} into the arena. On DECODE_OK,
 * *longest_string is the wire length of the batch's longest string, so that
 * validation need not measure them again. */
decode_result cn_decode_batch_request(const uint8_t *data, size_t len, cn_arena *a, Canopy__V1__Request **out,
                                      size_t *longest_string);

#endif
