#ifndef CN_NOTIFY_H
#define CN_NOTIFY_H

/* Sends a state ("READY=1", "STOPPING=1") to systemd when it started canopy
 * with Type=notify (NOTIFY_SOCKET set); otherwise does nothing. */
void cn_notify_service_manager(const char *state);

#endif
