/*
 * The admin HTTP API at service.telemetry.http.listen: health, metrics, the
 * task API and the web UI. Started after the pipelines, stopped first.
 */
#ifndef CANOPY_ADMIN_H
#define CANOPY_ADMIN_H

typedef struct cn_service cn_service;

/* Returns 0, or -1 after logging why (the collector then refuses to start). */
int cn_admin_start(cn_service *svc);
void cn_admin_stop(cn_service *svc);

/* `canopy task create|list|cancel`: argv[0] is "task". Returns the exit code. */
int cn_task_command(int argc, char **argv);

#endif
