/*
 * Fork tracking. This is the only process-wide state in the library, and it
 * has to be: fork() is a process-wide event. An atfork child handler bumps an
 * epoch; every agent remembers the epoch its state was made in and, on its
 * next use, starts afresh when the epoch moved (see agent.c). Comparing an
 * integer is cheaper on the snapshot hot path than calling getpid().
 */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "internal.h"

static atomic_uint fork_epoch;
/* pid of the process in which this library started nng, 0 if none. */
static atomic_int nng_started_pid;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int atfork_rv;

static void on_fork_child(void)
{
    atomic_fetch_add(&fork_epoch, 1);
}

static void register_atfork(void)
{
    atfork_rv = pthread_atfork(NULL, NULL, on_fork_child);
}

int cn_ag_fork_init(void)
{
    pthread_once(&atfork_once, register_atfork);
    return atfork_rv == 0 ? 0 : -1;
}

unsigned cn_ag_fork_epoch(void)
{
    return atomic_load_explicit(&fork_epoch, memory_order_acquire);
}

void cn_ag_nng_mark_started(void)
{
    int zero = 0;
    int me = (int)getpid();
    if (!atomic_compare_exchange_strong(&nng_started_pid, &zero, me) && zero != me)
        atomic_store(&nng_started_pid, me);
}

bool cn_ag_nng_inherited(void)
{
    int pid = atomic_load(&nng_started_pid);
    return pid != 0 && pid != (int)getpid();
}
