/*
 * The admin HTTP API at service.telemetry.http.listen: health, metrics, the
 * task API and the web UI. Started after the pipelines, stopped first.
 */
#ifndef CANOPY_ADMIN_H
#define CANOPY_ADMIN_H

#include "canopy/config.h"

typedef struct cn_service cn_service;
typedef struct cn_http_settings cn_http_settings;

/* service.telemetry.http's options: listen, allow_insecure, tls, token, token_file. */
extern const cn_option cn_admin_http_options[];

/* `canopy validate`'s checks of service.telemetry.http (core/admin_auth.c): a
 * non-loopback listener needs TLS and a token, or allow_insecure. */
void cn_admin_validate(const cn_http_settings *http, const cn_node *service, cn_diag *d);
/* A bearer token file's one line, without its newline, for the collector
 * (token_file) and `canopy task --token-file`. NULL with errno set (EINVAL:
 * empty or holds a NUL byte). The caller frees it. */
char *cn_admin_read_token(const char *path, size_t *len);

/* Returns 0, or -1 after logging why (the collector then refuses to start). */
int cn_admin_start(cn_service *svc);
void cn_admin_stop(cn_service *svc);

/* `canopy task create|list|cancel`: argv[0] is "task". Returns the exit code. */
int cn_task_command(int argc, char **argv);

#endif
