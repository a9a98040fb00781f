/*
 * Makes the main thread run our pending call at its next bytecode boundary.
 *
 * CPython 3.11's Py_AddPendingCall, called from a thread other than the main
 * one, does not set the interpreter's eval_breaker: it recomputes it with
 * "can this thread handle pending calls?", which is false for the caller.
 * The main thread then notices the call only the next time it takes the GIL,
 * which in a gevent server means right after socket calls and the event
 * loop: samples would land next to I/O instead of where the CPU time goes.
 * Setting eval_breaker ourselves is what the main thread would have done.
 *
 * A spurious eval_breaker only sends the main thread once through its
 * pending-work check, which recomputes the flag when it runs our call.
 *
 * Internal API, so this file alone is built with Py_BUILD_CORE_MODULE, and
 * only for 3.11 (where the layout is known). 3.13 needs none of it: its
 * Py_AddPendingCall signals the main thread itself. Elsewhere it does
 * nothing and samples are taken when the main thread next takes the GIL.
 */
#ifndef Py_BUILD_CORE_MODULE
#define Py_BUILD_CORE_MODULE 1
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && defined(Py_BUILD_CORE)
#include <internal/pycore_interp.h>

int cx_poke_eval_breaker(void)
{
    PyInterpreterState *interp = PyInterpreterState_Main();
    if (!interp)
        return -1;
    _Py_atomic_store_relaxed(&interp->ceval.eval_breaker, 1);
    return 0;
}
#else
int cx_poke_eval_breaker(void)
{
    return -1;
}
#endif
