/* String-keyed open-addressing hash map with linear probing and tombstones. */
#include <stdlib.h>
#include <string.h>

#include "canopy/dict.h"
#include "canopy/string_key.h"

typedef struct dict_slot {
    char *key; /* NULL: empty; TOMBSTONE: deleted */
    void *value;
    uint64_t hash;
} dict_slot;

struct cn_dict {
    dict_slot *slots;
    size_t cap;   /* power of two */
    size_t size;  /* live keys */
    size_t used;  /* live keys + tombstones */
};

static char tombstone_marker;
#define TOMBSTONE (&tombstone_marker)

/* Seeded per process, so no client can pick keys that all land in one probe run. */
uint64_t cn_dict_hash(const char *key) { return cn_string_key(key, strlen(key)); }

cn_dict *cn_dict_new(size_t initial_capacity)
{
    cn_dict *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    size_t cap = 16;
    while (cap < initial_capacity * 2)
        cap <<= 1;
    d->slots = calloc(cap, sizeof *d->slots);
    if (!d->slots) {
        free(d);
        return NULL;
    }
    d->cap = cap;
    return d;
}

void cn_dict_free(cn_dict *d, void (*free_value)(void *))
{
    if (!d)
        return;
    for (size_t i = 0; i < d->cap; i++) {
        dict_slot *s = &d->slots[i];
        if (s->key && s->key != TOMBSTONE) {
            if (free_value)
                free_value(s->value);
            free(s->key);
        }
    }
    free(d->slots);
    free(d);
}

static dict_slot *find_slot(const cn_dict *d, const char *key, uint64_t hash)
{
    size_t mask = d->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        dict_slot *s = &d->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMBSTONE && s->hash == hash && strcmp(s->key, key) == 0)
            return s;
    }
}

void *cn_dict_get_hashed(const cn_dict *d, const char *key, uint64_t hash)
{
    dict_slot *s = find_slot(d, key, hash);
    return s ? s->value : NULL;
}

void *cn_dict_get(const cn_dict *d, const char *key) { return cn_dict_get_hashed(d, key, cn_dict_hash(key)); }

/*
 * Called when keys and tombstones fill 3/4 of the table. It doubles only when
 * the live keys alone would fill more than 5/8 of it; otherwise it rehashes in
 * place, dropping the tombstones, which leaves at least 1/8 of the table for
 * inserts before the next rehash (at most 8 slot moves per insert, amortized).
 * Doubling already at 1/4 live made a map that evicts as it inserts (segments
 * at max_segments_per_task) double twice past its size: 131,072 slots (3 MiB)
 * for 20,000 segments, per task.
 */
static int grow(cn_dict *d)
{
    size_t new_cap = d->size * 8 > d->cap * 5 ? d->cap * 2 : d->cap;
    dict_slot *slots = calloc(new_cap, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < d->cap; i++) {
        dict_slot *s = &d->slots[i];
        if (!s->key || s->key == TOMBSTONE)
            continue;
        size_t j = s->hash & (new_cap - 1);
        while (slots[j].key)
            j = (j + 1) & (new_cap - 1);
        slots[j] = *s;
    }
    free(d->slots);
    d->slots = slots;
    d->cap = new_cap;
    d->used = d->size;
    return 0;
}

const char *cn_dict_put_key_hashed(cn_dict *d, const char *key, uint64_t hash, void *value)
{
    dict_slot *s = find_slot(d, key, hash);
    if (s) {
        s->value = value;
        return s->key;
    }
    if ((d->used + 1) * 4 > d->cap * 3 && grow(d) != 0)
        return NULL;
    char *copy = strdup(key);
    if (!copy)
        return NULL;
    size_t mask = d->cap - 1;
    size_t i = hash & mask;
    while (d->slots[i].key && d->slots[i].key != TOMBSTONE)
        i = (i + 1) & mask;
    if (!d->slots[i].key)
        d->used++;
    d->slots[i] = (dict_slot){copy, value, hash};
    d->size++;
    return copy;
}

const char *cn_dict_put_key(cn_dict *d, const char *key, void *value)
{
    return cn_dict_put_key_hashed(d, key, cn_dict_hash(key), value);
}

int cn_dict_put(cn_dict *d, const char *key, void *value) { return cn_dict_put_key(d, key, value) ? 0 : -1; }

void *cn_dict_remove(cn_dict *d, const char *key) { return cn_dict_remove_hashed(d, key, cn_dict_hash(key)); }

void *cn_dict_remove_hashed(cn_dict *d, const char *key, uint64_t hash)
{
    dict_slot *s = find_slot(d, key, hash);
    if (!s)
        return NULL;
    void *value = s->value;
    free(s->key);
    s->key = TOMBSTONE;
    s->value = NULL;
    d->size--;
    return value;
}

size_t cn_dict_size(const cn_dict *d) { return d->size; }

int cn_dict_next(const cn_dict *d, size_t *pos, const char **key, void **value)
{
    while (*pos < d->cap) {
        dict_slot *s = &d->slots[(*pos)++];
        if (s->key && s->key != TOMBSTONE) {
            if (key)
                *key = s->key;
            if (value)
                *value = s->value;
            return 1;
        }
    }
    return 0;
}
