"""Loaded at interpreter start in processes run by canopy-run (PYTHONPATH).

It only arms a hook for gunicorn (canopy_agent.run.arm_gunicorn) and then
hands over to the sitecustomize it shadows (Debian ships one), so the
interpreter starts as it would without canopy-run.
"""

import os
import sys


def _canopy_run_bootstrap():
    here = os.path.dirname(os.path.abspath(__file__))
    # The interpreter running gunicorn may not be the one canopy-run was
    # installed for (a venv's canopy-run, Debian's /usr/bin/gunicorn): let it
    # find canopy_agent where canopy-run found it, after its own paths.
    package_path = os.environ.get("CANOPY_RUN_PACKAGE_PATH")
    if package_path and package_path not in sys.path:
        sys.path.append(package_path)
    try:
        from canopy_agent import run
        run.arm_gunicorn()
    except Exception as e:  # never stop the program from starting (e.g. libnng missing)
        print("canopy-run: the agent cannot load (%s); the app runs unprofiled" % e, file=sys.stderr)
    # Hand over to the sitecustomize this one shadows.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass


_canopy_run_bootstrap()
