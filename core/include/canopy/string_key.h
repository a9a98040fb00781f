/*
 * A string's key: a seeded 64-bit hash of its bytes, the identity under which
 * the stages that merge frames (call trees, pprof and Pyroscope profiles)
 * look strings up without reading them again.
 *
 * Every batch carries the keys of its string table (cn_batch.string_keys),
 * computed when the batch is made, while its strings are still in cache. A
 * stage that holds a batch's snapshots seconds later then finds a frame's
 * signature by its key alone: reading the string again was a cache miss per
 * new string per batch, the largest part of what the live call trees cost.
 *
 * Two different strings with the same key would be taken for one. For the
 * 20,000 signatures of a large tree the chance is about 1 in 10^11; the seed
 * is drawn at random per process, so a client cannot choose strings that
 * collide (nor flood one hash slot), and a client could only ever merge its
 * own frames: it can send any frame names it likes already.
 */
#ifndef CANOPY_STRING_KEY_H
#define CANOPY_STRING_KEY_H

#include <stddef.h>
#include <stdint.h>

uint64_t cn_string_key(const char *s, size_t len);

#endif
