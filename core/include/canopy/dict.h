/*
 * A string-keyed hash map (open addressing, linear probing). Keys are copied
 * into the map; values are opaque pointers. Not thread safe.
 *
 * A key's hash is its string key (canopy/string_key.h), so a caller that
 * already has it, as a batch has one for each of its strings
 * (cn_batch.string_keys), passes it to the _hashed calls and the map neither
 * measures nor hashes the string. The seed differs per process, and so does
 * the order cn_dict_next visits keys in: nothing may depend on it.
 */
#ifndef CANOPY_DICT_H
#define CANOPY_DICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct cn_dict cn_dict;

cn_dict *cn_dict_new(size_t initial_capacity);
/* Calls free_value (when not NULL) on every value, then frees the map. */
void cn_dict_free(cn_dict *d, void (*free_value)(void *));
void *cn_dict_get(const cn_dict *d, const char *key);
/* cn_dict_hash(key): what the _hashed calls take. */
uint64_t cn_dict_hash(const char *key);
void *cn_dict_get_hashed(const cn_dict *d, const char *key, uint64_t hash);
/* Inserts or replaces; returns 0, or -1 when out of memory. */
int cn_dict_put(cn_dict *d, const char *key, void *value);
/* The same, returning the map's copy of the key (valid until the key is
 * removed), or NULL when out of memory. */
const char *cn_dict_put_key(cn_dict *d, const char *key, void *value);
const char *cn_dict_put_key_hashed(cn_dict *d, const char *key, uint64_t hash, void *value);
/* Removes and returns the value, or NULL. key may be the map's own copy. */
void *cn_dict_remove(cn_dict *d, const char *key);
void *cn_dict_remove_hashed(cn_dict *d, const char *key, uint64_t hash);
size_t cn_dict_size(const cn_dict *d);

/* Iteration: start with *pos = 0; returns 0 when done. Do not modify meanwhile. */
int cn_dict_next(const cn_dict *d, size_t *pos, const char **key, void **value);

#endif
