/*
 * One canopy snapshot as a skywalking.v3.ThreadSnapshot, the message that the
 * OAP takes both over gRPC (ProfileTask/collectSnapshot) and from Kafka (the
 * kafka-fetcher's profiling topic). Shared by the skywalking and kafka
 * exporters, so both send byte-identical snapshots.
 *
 * Two steps, so the caller packs straight into its own buffer (a gRPC slice,
 * a Kafka message) without a copy: prepare, then pack.
 */
#ifndef CN_COMMON_SW_SNAPSHOT_H
#define CN_COMMON_SW_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "canopy/batch.h"
#include "skywalking/v3/profile.pb-c.h"

/* Per thread of use; zero-initialise, free with cn_sw_snapshot_encoder_free. */
typedef struct cn_sw_snapshot_encoder {
    char **signatures;  /* scratch: the frame strings as protobuf-c wants them */
    size_t cap;
    Skywalking__V3__ThreadStack stack;
    Skywalking__V3__ThreadSnapshot msg;
} cn_sw_snapshot_encoder;

/*
 * Sets the encoder's message to the snapshot r points at (root frame first,
 * as canopy keeps them). The message points into r's batch, which must stay
 * alive until cn_sw_snapshot_pack. Returns the packed size, or 0 when out of
 * memory (a packed message is never empty: it always holds its stack).
 */
size_t cn_sw_snapshot_prepare(cn_sw_snapshot_encoder *e, const cn_snap_ref *r);
/* Writes the prepared message to out, which has room for the prepared size. */
void cn_sw_snapshot_pack(const cn_sw_snapshot_encoder *e, uint8_t *out);
void cn_sw_snapshot_encoder_free(cn_sw_snapshot_encoder *e);

#endif
