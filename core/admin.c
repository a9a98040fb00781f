/* Admin HTTP API: not served yet; see core/admin.h. */
#include "admin.h"
#include "service.h"

int cn_admin_start(cn_service *svc)
{
    (void)svc;
    return 0;
}

void cn_admin_stop(cn_service *svc) { (void)svc; }
