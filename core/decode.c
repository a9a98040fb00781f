/*
 * A direct decoder for the hot request: Request{agent, batch}. protobuf-c's
 * generic, descriptor-driven unpack was a third of the collector's CPU time;
 * this walks the wire format of our own schema (the batch's fields once to
 * count, once to fill; each snapshot once) and places everything in the
 * batch's arena. It produces the same protobuf-c structs, so nothing
 * downstream changes. Requests it does not cover (command queries, finish
 * reports, frames not sent as one packed field) return DECODE_FALLBACK and go
 * through protobuf-c. tests/unit/test_batch.c checks it against protobuf-c.
 */
#include <string.h>

#include "decode.h"

typedef struct reader {
    const uint8_t *p, *end;
} reader;

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static bool read_varint_slow(reader *r, uint64_t *out)
{
    if (r->end - r->p >= 10) { /* no bounds check per byte: times and sequences are long */
        const uint8_t *p = r->p;
        uint64_t v = 0;
        for (int i = 0; i < 10; i++) {
            v |= (uint64_t)(p[i] & 0x7F) << (7 * i);
            if (!(p[i] & 0x80)) {
                *out = v;
                r->p = p + i + 1;
                return true;
            }
        }
        return false; /* more than 10 bytes */
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return false;
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false; /* more than 10 bytes */
}

/* Keys, indices and frame ids are almost always one or two bytes long. */
static inline bool read_varint(reader *r, uint64_t *out)
{
    if (r->end - r->p >= 2) {
        uint8_t b0 = r->p[0];
        if (!(b0 & 0x80)) {
            *out = b0;
            r->p += 1;
            return true;
        }
        uint8_t b1 = r->p[1];
        if (!(b1 & 0x80)) {
            *out = (uint64_t)(b0 & 0x7F) | (uint64_t)b1 << 7;
            r->p += 2;
            return true;
        }
    }
    return read_varint_slow(r, out);
}

/* Reads a field key; *len_field is set for length-delimited fields. */
static inline bool read_field(reader *r, uint32_t *field, int *wire, reader *len_field)
{
    uint64_t key;
    const uint8_t *start = r->p;
    /* Field numbers past 2^29 - 1 break the protobuf spec, but protobuf-c takes
     * any key of up to five bytes (as an unknown field), and both decoders must
     * give the same verdict: so do we. */
    if (!read_varint(r, &key) || r->p - start > 5 || key >> 3 == 0)
        return false;
    *field = (uint32_t)(key >> 3);
    *wire = (int)(key & 7);
    if (*wire == WT_LEN) {
        uint64_t n;
        if (!read_varint(r, &n) || n > (uint64_t)(r->end - r->p))
            return false;
        len_field->p = r->p;
        len_field->end = r->p + n;
        r->p += n;
    }
    return true;
}

/* Skips the value of a field we do not read. */
static inline bool skip_value(reader *r, int wire)
{
    uint64_t v;
    switch (wire) {
    case WT_VARINT:
        return read_varint(r, &v);
    case WT_I64:
        if (r->end - r->p < 8)
            return false;
        r->p += 8;
        return true;
    case WT_I32:
        if (r->end - r->p < 4)
            return false;
        r->p += 4;
        return true;
    case WT_LEN:
        return true; /* already consumed by read_field */
    default:
        return false; /* groups are not part of proto3 */
    }
}

static char *arena_string(cn_arena *a, const reader *f)
{
    size_t n = (size_t)(f->end - f->p);
    char *s = cn_arena_alloc(a, n + 1);
    if (s) {
        memcpy(s, f->p, n);
        s[n] = '\0';
    }
    return s;
}

static decode_result decode_agent(reader r, cn_arena *a, Canopy__V1__AgentIdentity *out)
{
    canopy__v1__agent_identity__init(out);
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        if (!read_field(&r, &field, &wire, &f))
            return DECODE_MALFORMED;
        uint64_t v = 0;
        if (wire == WT_LEN && (field == 1 || field == 2 || field == 3 || field == 5 || field == 7)) {
            char *s = arena_string(a, &f);
            if (!s)
                return DECODE_NO_MEMORY;
            if (field == 1)
                out->service = s;
            else if (field == 2)
                out->instance = s;
            else if (field == 3)
                out->host = s;
            else if (field == 5)
                out->agent_version = s;
            else
                out->mode = s;
        } else if (wire == WT_VARINT && (field == 4 || field == 6)) {
            if (!read_varint(&r, &v))
                return DECODE_MALFORMED;
            if (field == 4)
                out->pid = (uint32_t)v;
            else
                out->session = v;
        } else if (field <= 7) {
            return DECODE_MALFORMED; /* a known field with the wrong wire type, as protobuf-c says */
        } else if (!skip_value(&r, wire)) {
            return DECODE_MALFORMED;
        }
    }
    return DECODE_OK;
}

/* One pass for what every agent sends: scalars and a single packed frames
 * field. Frames sent unpacked or split over several fields are valid protobuf
 * that no agent sends: protobuf-c takes the request (DECODE_FALLBACK). */
static decode_result decode_snapshot(reader r, cn_arena *a, Canopy__V1__Snapshot *out)
{
    canopy__v1__snapshot__init(out);
    bool have_frames = false;
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        uint64_t v;
        if (!read_field(&r, &field, &wire, &f))
            return DECODE_MALFORMED;
        if (field == 5) {
            if (wire != WT_LEN || have_frames)
                return DECODE_FALLBACK;
            have_frames = true;
            /* Each id takes at least one byte: allocate for that many, then give
             * the unused tail back to the arena (it is the newest allocation). */
            size_t max = (size_t)(f.end - f.p);
            uint32_t *frames = max ? cn_arena_alloc(a, max * sizeof *frames) : NULL;
            if (max && !frames)
                return DECODE_NO_MEMORY;
            /* Locals: through out-> the compiler reloads both on every store. */
            size_t filled = 0;
            /* Ids of one and two bytes mix at random (below and above 128), so a
             * branch on the length mispredicts half the time; decode both without
             * one. A longer id leaves the rest to read_varint. */
            const uint8_t *p = f.p;
            while (f.end - p >= 2) {
                uint32_t b0 = p[0], b1 = p[1], two = b0 >> 7;
                if (two & (b1 >> 7))
                    break;
                frames[filled++] = (b0 & 0x7F) | ((b1 << 7) & (0u - two));
                p += 1 + two;
            }
            f.p = p;
            while (f.p < f.end) {
                if (!read_varint(&f, &v))
                    return DECODE_MALFORMED;
                frames[filled++] = (uint32_t)v;
            }
            if (max)
                cn_arena_shrink_last(a, frames, max * sizeof *frames, filled * sizeof *frames);
            out->frames = filled ? frames : NULL;
            out->n_frames = filled;
        } else if (field < 5) {
            if (wire != WT_VARINT || !read_varint(&r, &v))
                return DECODE_MALFORMED;
            switch (field) {
            case 1: out->task = (uint32_t)v; break;
            case 2: out->segment = (uint32_t)v; break;
            case 3: out->time_ms = (int64_t)v; break;
            default: out->sequence = (int32_t)v; break;
            }
        } else if (!skip_value(&r, wire)) {
            return DECODE_MALFORMED;
        }
    }
    return DECODE_OK;
}

static decode_result decode_batch(reader r, cn_arena *a, Canopy__V1__SnapshotBatch *out, size_t *longest_string)
{
    canopy__v1__snapshot_batch__init(out);
    size_t n_strings = 0, n_snapshots = 0;
    reader scan = r;
    while (scan.p < scan.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        if (!read_field(&scan, &field, &wire, &f))
            return DECODE_MALFORMED;
        if (wire == WT_LEN && field == 2)
            n_strings++;
        else if (wire == WT_LEN && field == 3)
            n_snapshots++;
        else if ((field == 1 && wire != WT_VARINT) || field == 2 || field == 3)
            return DECODE_MALFORMED;
        else if (!skip_value(&scan, wire))
            return DECODE_MALFORMED;
    }
    if (n_strings && !(out->strings = cn_arena_alloc(a, n_strings * sizeof *out->strings)))
        return DECODE_NO_MEMORY;
    Canopy__V1__Snapshot *snaps = NULL;
    if (n_snapshots && (!(out->snapshots = cn_arena_alloc(a, n_snapshots * sizeof *out->snapshots)) ||
                        !(snaps = cn_arena_alloc(a, n_snapshots * sizeof *snaps))))
        return DECODE_NO_MEMORY;
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        uint64_t v = 0;
        if (!read_field(&r, &field, &wire, &f))
            return DECODE_MALFORMED;
        if (wire == WT_LEN && field == 2) {
            if (!(out->strings[out->n_strings++] = arena_string(a, &f)))
                return DECODE_NO_MEMORY;
            if ((size_t)(f.end - f.p) > *longest_string)
                *longest_string = (size_t)(f.end - f.p);
        } else if (wire == WT_LEN && field == 3) {
            Canopy__V1__Snapshot *s = &snaps[out->n_snapshots];
            decode_result rc = decode_snapshot(f, a, s);
            if (rc != DECODE_OK)
                return rc;
            out->snapshots[out->n_snapshots++] = s;
        } else if (wire == WT_VARINT && field == 1) {
            read_varint(&r, &v);
            out->batch_seq = v;
        } else {
            skip_value(&r, wire);
        }
    }
    return DECODE_OK;
}

decode_result cn_decode_batch_request(const uint8_t *data, size_t len, cn_arena *a, Canopy__V1__Request **out,
                                      size_t *longest_string)
{
    *longest_string = 0;
    reader r = {data, data + len};
    Canopy__V1__Request *req = cn_arena_alloc(a, sizeof *req);
    Canopy__V1__AgentIdentity *agent = cn_arena_alloc(a, sizeof *agent);
    Canopy__V1__SnapshotBatch *batch = cn_arena_alloc(a, sizeof *batch);
    if (!req || !agent || !batch)
        return DECODE_NO_MEMORY;
    canopy__v1__request__init(req);
    bool have_agent = false, have_batch = false;
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        uint64_t v = 0;
        if (!read_field(&r, &field, &wire, &f))
            return DECODE_MALFORMED;
        /* Other bodies, or a message repeated (to be merged): protobuf-c's job. */
        if (field == 4 || field == 5 || (field == 2 && have_agent) || (field == 3 && have_batch))
            return DECODE_FALLBACK;
        if (wire == WT_VARINT && field == 1) {
            if (!read_varint(&r, &v))
                return DECODE_MALFORMED;
            req->protocol_version = (uint32_t)v;
        } else if (wire == WT_LEN && field == 2) {
            decode_result rc = decode_agent(f, a, agent);
            if (rc != DECODE_OK)
                return rc;
            req->agent = agent;
            have_agent = true;
        } else if (wire == WT_LEN && field == 3) {
            decode_result rc = decode_batch(f, a, batch, longest_string);
            if (rc != DECODE_OK)
                return rc;
            req->body_case = CANOPY__V1__REQUEST__BODY_BATCH;
            req->batch = batch;
            have_batch = true;
        } else if ((field <= 3 && wire != WT_LEN && field != 1) || (field == 1 && wire != WT_VARINT)) {
            return DECODE_MALFORMED; /* a known field with the wrong wire type */
        } else if (!skip_value(&r, wire)) {
            return DECODE_MALFORMED;
        }
    }
    if (!have_batch)
        return DECODE_FALLBACK;
    *out = req;
    return DECODE_OK;
}
