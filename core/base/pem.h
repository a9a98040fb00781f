/*
 * Reading PEM files (certificates, keys) for TLS settings, shared by the
 * collector and the agent's C library. Dependency free: libc only.
 */
#ifndef CANOPY_BASE_PEM_H
#define CANOPY_BASE_PEM_H

#include <stdbool.h>
#include <stddef.h>

/* Largest PEM file read: a certificate chain is a few KiB, a CA bundle a few hundred. */
#define CN_PEM_MAX_SIZE (4u << 20)

/*
 * Reads a whole PEM file into a NUL-terminated buffer (its length in *len
 * when len is not NULL). Only a regular file is opened, so that a path such
 * as /dev/zero or a FIFO cannot block or never end. NULL with errno set on
 * failure: EINVAL (not a regular file), EFBIG (over CN_PEM_MAX_SIZE),
 * ENOMEM, EIO, or what open(2) said.
 */
char *cn_pem_read(const char *path, size_t *len);

/* Whether `text` has a "-----BEGIN ...-----" line whose label contains `label` ("CERTIFICATE", "PRIVATE KEY"). */
bool cn_pem_has_block(const char *text, const char *label);

/* Zeroes then frees a buffer that held a private key, so no key lingers in freed memory. NULL is fine. */
void cn_pem_free_secret(char *text);

/* Largest token file read (a bearer token, a password). */
#define CN_TOKEN_MAX_SIZE 4096u

/*
 * Reads a secret kept in a file of its own (a bearer token): a regular file
 * of at most CN_TOKEN_MAX_SIZE bytes, its trailing line breaks cut. NULL with
 * errno set: EINVAL (empty, or holds a NUL byte), EFBIG, or as cn_pem_read.
 * Free it with cn_pem_free_secret.
 */
char *cn_token_file_read(const char *path, size_t *len);

#endif
