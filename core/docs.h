#ifndef CANOPY_DOCS_H
#define CANOPY_DOCS_H

#include <stdio.h>

#include "canopy/config.h"

/* Writes docs/configuration.md: every option of every compiled-in component. */
void cn_docs_write(FILE *out);

/* The option tables the core itself owns. */
const cn_option *cn_service_options(void);
const cn_option *cn_exporter_common_options(void);
const cn_option *cn_static_task_options(void);

#endif
