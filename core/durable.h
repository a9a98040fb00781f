/*
 * The core's own on-disk forms (proto/canopy/v1/durable.proto): a batch as a
 * pipeline's intake log holds it, and a processed chunk as an exporter's
 * spool holds it. Whatever receiver a batch came from, only these reach the
 * disk, so every receiver's data is durable the same way.
 */
#ifndef CANOPY_DURABLE_H
#define CANOPY_DURABLE_H

#include <stddef.h>
#include <stdint.h>

#include "canopy/batch.h"

/* A malloc'd DurableBatch of b; NULL when out of memory. */
uint8_t *cn_durable_encode_batch(const cn_batch *b, size_t *len);
/* A batch (one reference, its own arena) of a DurableBatch; NULL when the
 * bytes are not one or out of memory (*why says which). */
cn_batch *cn_durable_decode_batch(const void *data, size_t len, const char **why);

/* A malloc'd DurableChunk of c: each source batch once, with only the strings
 * its snapshots use; NULL when out of memory. */
uint8_t *cn_durable_encode_chunk(const cn_chunk *c, size_t *len);
/*
 * A chunk (one reference) of a DurableChunk. A record of the spool format
 * before it (an agent's canopy.v1.Request) becomes a chunk of that batch, so
 * a spool written by an older collector is still delivered. NULL when the
 * bytes are neither or out of memory (*why says which).
 */
cn_chunk *cn_durable_decode_chunk(const void *data, size_t len, const char **why);

#endif
