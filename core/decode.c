/*
 * A direct decoder for the hot request: Request{agent, batch}. protobuf-c's
 * generic, descriptor-driven unpack was a third of the collector's CPU time;
 * this walks the wire format of our own schema (the batch's fields once to
 * count, once to fill; a snapshot's keys twice, its frames once plus a count
 * of their bytes) and places everything in one exactly sized block of the
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
        const uint8_t *prefix = r->p;
        /* protobuf-c reads a length prefix of five bytes at most (scan_length_prefix) and refuses a
         * longer one, even an overlong encoding of a small length: so do we. */
        if (!read_varint(r, &n) || r->p - prefix > 5 || n > (uint64_t)(r->end - r->p))
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

/*
 * What a batch decodes to, counted before anything is allocated: the arena
 * then takes one block of exactly the batch's size, and the strings and the
 * frames each go into one region of it. Sized from the wire length instead
 * (4x, for the worst mix of one- and two-byte ids), a batch held 98 KB of
 * which it used 55 KB, and memory_limit counted the 98.
 */
typedef struct batch_counts {
    size_t n_strings, string_bytes; /* string_bytes: without the NULs */
    size_t n_snapshots, n_frames;
} batch_counts;

/* Frame ids in a snapshot: one per varint, i.e. per byte without the
 * continuation bit. A malformed snapshot stops the count; the fill pass
 * refuses it at the same spot. */
static size_t count_frames(reader r)
{
    size_t n = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        if (!read_field(&r, &field, &wire, &f))
            break;
        if (field == 5 && wire == WT_LEN) {
            const uint8_t *p = f.p;
            /* Eight bytes at a time: the high bits moved to the bottom of each byte, then summed by
             * a multiply into the top byte (at most 8, no carry between bytes). */
            for (; f.end - p >= 8; p += 8) {
                uint64_t w;
                memcpy(&w, p, sizeof w);
                uint64_t more = (w >> 7) & 0x0101010101010101ULL;
                n += 8 - (size_t)((more * 0x0101010101010101ULL) >> 56);
            }
            for (; p < f.end; p++)
                n += !(*p & 0x80);
        } else if (!skip_value(&r, wire)) {
            break;
        }
    }
    return n;
}

static decode_result count_batch(reader r, batch_counts *c)
{
    *c = (batch_counts){0};
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        if (!read_field(&r, &field, &wire, &f))
            return DECODE_MALFORMED;
        if (wire == WT_LEN && field == 2) {
            c->n_strings++;
            c->string_bytes += (size_t)(f.end - f.p);
        } else if (wire == WT_LEN && field == 3) {
            c->n_snapshots++;
            c->n_frames += count_frames(f);
        } else if ((field == 1 && wire != WT_VARINT) || field == 2 || field == 3) {
            return DECODE_MALFORMED;
        } else if (!skip_value(&r, wire)) {
            return DECODE_MALFORMED;
        }
    }
    return DECODE_OK;
}

/* cn_arena_alloc's rounding, so that the reservation covers every allocation. */
static size_t arena_rounded(size_t n)
{
    const size_t align = sizeof(max_align_t);
    return (n + align - 1) & ~(align - 1);
}

/* A bump region inside the arena, for the strings or the frames of a batch. */
typedef struct region {
    char *next, *end;
} region;

/* Room for `bytes` more in the region. The counts and the fill pass read the
 * same bytes, so this never fails on data that decodes; it guards the writes
 * all the same. */
static inline bool region_fits(const region *g, size_t bytes)
{
    return g->next && (size_t)(g->end - g->next) >= bytes; /* an empty region is NULL: no pointer arithmetic */
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
static decode_result decode_snapshot(reader r, region *frame_region, Canopy__V1__Snapshot *out)
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
            /* The batch's frames region holds exactly the ids the count found. */
            uint32_t *frames = (uint32_t *)frame_region->next;
            size_t room = frames ? (size_t)(frame_region->end - frame_region->next) / sizeof *frames : 0;
            /* Locals: through out-> the compiler reloads both on every store. */
            size_t filled = 0;
            /* Ids of one and two bytes mix at random (below and above 128), so a
             * branch on the length mispredicts half the time; decode both without
             * one. A longer id leaves the rest to read_varint. */
            const uint8_t *p = f.p;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* Eight bytes at a time: the bytes without a continuation bit end the ids, so the ids
             * in a word are found from its bits, and the next word's address waits on one sum per
             * word, not on a load per id (that chain was half of the decoder's time). */
            while (f.end - p >= 8 && room - filled >= 8) {
                uint64_t w;
                memcpy(&w, p, sizeof w);
                uint64_t ends = ~w & 0x8080808080808080ULL;
                unsigned start = 0; /* byte where the next id starts */
                bool longer = false;
                for (; ends; ends &= ends - 1) {
                    unsigned last = (unsigned)__builtin_ctzll(ends) >> 3;
                    if (last - start > 1) {
                        longer = true; /* three bytes or more */
                        break;
                    }
                    uint32_t low = (uint32_t)(w >> (8 * start)) & 0x7F, high = (uint32_t)(w >> (8 * last)) & 0x7F;
                    frames[filled++] = low | ((high << 7) & (0u - (last - start)));
                    start = last + 1;
                }
                p += start;
                if (longer || start == 0)
                    break;
            }
#endif
            while (f.end - p >= 2 && filled < room) {
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
                if (filled == room)
                    return DECODE_FALLBACK; /* more ids than counted: cannot happen; protobuf-c decides */
                frames[filled++] = (uint32_t)v;
            }
            if (filled) /* NULL + 0 is undefined too (the region is NULL when the batch counted no ids) */
                frame_region->next += filled * sizeof *frames;
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

static decode_result decode_batch(reader r, const batch_counts *c, cn_arena *a, Canopy__V1__SnapshotBatch *out,
                                  size_t *longest_string)
{
    canopy__v1__snapshot_batch__init(out);
    region text = {NULL, NULL}, frames = {NULL, NULL};
    if (c->n_strings) {
        size_t bytes = c->string_bytes + c->n_strings;
        if (!(out->strings = cn_arena_alloc(a, c->n_strings * sizeof *out->strings)) ||
            !(text.next = cn_arena_alloc(a, bytes)))
            return DECODE_NO_MEMORY;
        text.end = text.next + bytes;
    }
    Canopy__V1__Snapshot *snaps = NULL;
    if (c->n_snapshots && (!(out->snapshots = cn_arena_alloc(a, c->n_snapshots * sizeof *out->snapshots)) ||
                           !(snaps = cn_arena_alloc(a, c->n_snapshots * sizeof *snaps))))
        return DECODE_NO_MEMORY;
    if (c->n_frames) {
        size_t bytes = c->n_frames * sizeof(uint32_t);
        if (!(frames.next = cn_arena_alloc(a, bytes)))
            return DECODE_NO_MEMORY;
        frames.end = frames.next + bytes;
    }
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        reader f = {NULL, NULL};
        uint64_t v = 0;
        if (!read_field(&r, &field, &wire, &f))
            return DECODE_MALFORMED;
        if (wire == WT_LEN && field == 2) {
            /* Packed one after another, not each rounded up to the arena's alignment. */
            size_t n = (size_t)(f.end - f.p);
            if (!region_fits(&text, n + 1))
                return DECODE_FALLBACK;
            memcpy(text.next, f.p, n);
            text.next[n] = '\0';
            out->strings[out->n_strings++] = text.next;
            text.next += n + 1;
            if (n > *longest_string)
                *longest_string = n;
        } else if (wire == WT_LEN && field == 3) {
            Canopy__V1__Snapshot *s = &snaps[out->n_snapshots];
            decode_result rc = decode_snapshot(f, &frames, s);
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

/* The arena bytes a request decodes to: its structs, the agent's strings, the
 * batch's regions, and the cn_batch that cn_batch_wrap places in the same arena. */
static size_t request_bytes(size_t agent_wire_bytes, const batch_counts *c)
{
    return arena_rounded(sizeof(Canopy__V1__Request)) + arena_rounded(sizeof(Canopy__V1__AgentIdentity)) +
           arena_rounded(sizeof(Canopy__V1__SnapshotBatch)) +
           agent_wire_bytes + 5 * arena_rounded(1) /* its five strings, each with a NUL */ +
           arena_rounded(c->n_strings * sizeof(char *)) + arena_rounded(c->string_bytes + c->n_strings) +
           arena_rounded(c->n_snapshots * sizeof(Canopy__V1__Snapshot *)) +
           arena_rounded(c->n_snapshots * sizeof(Canopy__V1__Snapshot)) +
           arena_rounded(c->n_frames * sizeof(uint32_t)) + arena_rounded(sizeof(cn_batch)) +
           arena_rounded(c->n_strings * sizeof(uint64_t)) /* the batch's string keys */;
}

decode_result cn_decode_batch_request(const uint8_t *data, size_t len, cn_arena *a, Canopy__V1__Request **out,
                                      size_t *longest_string)
{
    *longest_string = 0;
    reader r = {data, data + len};
    uint32_t protocol_version = 0;
    reader agent_field = {NULL, NULL}, batch_field = {NULL, NULL};
    bool have_agent = false, have_batch = false;
    /* The top level first: the arena is sized from what agent and batch hold. */
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
            protocol_version = (uint32_t)v;
        } else if (wire == WT_LEN && field == 2) {
            agent_field = f;
            have_agent = true;
        } else if (wire == WT_LEN && field == 3) {
            batch_field = f;
            have_batch = true;
        } else if ((field <= 3 && wire != WT_LEN && field != 1) || (field == 1 && wire != WT_VARINT)) {
            return DECODE_MALFORMED; /* a known field with the wrong wire type */
        } else if (!skip_value(&r, wire)) {
            return DECODE_MALFORMED;
        }
    }
    if (!have_batch)
        return DECODE_FALLBACK;
    batch_counts counts;
    decode_result rc = count_batch(batch_field, &counts);
    if (rc != DECODE_OK)
        return rc;
    size_t agent_bytes = have_agent ? (size_t)(agent_field.end - agent_field.p) : 0;
    if (cn_arena_reserve(a, request_bytes(agent_bytes, &counts)) != 0)
        return DECODE_NO_MEMORY;
    Canopy__V1__Request *req = cn_arena_alloc(a, sizeof *req);
    Canopy__V1__AgentIdentity *agent = cn_arena_alloc(a, sizeof *agent);
    Canopy__V1__SnapshotBatch *batch = cn_arena_alloc(a, sizeof *batch);
    if (!req || !agent || !batch)
        return DECODE_NO_MEMORY;
    canopy__v1__request__init(req);
    req->protocol_version = protocol_version;
    if (have_agent) {
        if ((rc = decode_agent(agent_field, a, agent)) != DECODE_OK)
            return rc;
        req->agent = agent;
    }
    if ((rc = decode_batch(batch_field, &counts, a, batch, longest_string)) != DECODE_OK)
        return rc;
    req->body_case = CANOPY__V1__REQUEST__BODY_BATCH;
    req->batch = batch;
    *out = req;
    return DECODE_OK;
}
