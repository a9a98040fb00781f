/*
 * Tells systemd (Type=notify, packaging/canopy.service.in) that the collector
 * is ready or stopping. The one place canopy talks to the service manager:
 * without NOTIFY_SOCKET (a shell, a test, a container) it does nothing, and a
 * build without libsystemd compiles it to nothing.
 */
#include <stdlib.h>

#include "canopy/log.h"
#include "notify.h"

#ifdef CANOPY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

void cn_notify_service_manager(const char *state)
{
    if (!getenv("NOTIFY_SOCKET"))
        return;
#ifdef CANOPY_HAVE_SYSTEMD
    /* Keep NOTIFY_SOCKET set: READY=1 at start is followed by STOPPING=1 at shutdown. */
    int rv = sd_notify(0, state);
    if (rv < 0)
        cn_warn("canopy", "sd_notify(\"%s\") failed: error %d; systemd may time the start out", state, -rv);
#else
    cn_warn("canopy", "NOTIFY_SOCKET is set but canopy was built without libsystemd; use Type=exec");
#endif
}
