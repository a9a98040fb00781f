"""Which interpreters and libraries the agent runs on, and what it found.

The fast frame walker reads CPython's internal frame layout, which changes
with every minor version. It is compiled only for the versions it was written
and tested against; on any other interpreter the agent refuses to start
rather than read frames wrongly. CANOPY_ALLOW_UNTESTED_PYTHON=1 starts it
anyway with the public frame API walker (correct everywhere, slower).

docs/agent.md has the table of tested versions; keep it and TESTED in step.
"""

import importlib.util
import os
import platform
import sys

# CPython minor version -> where it is tested (docs/agent.md, "Versions").
TESTED = {
    (3, 11): "Debian 12: greenlet 2.0, gevent 22.10, gunicorn 20.1",
    (3, 13): "Debian 13: greenlet 3.1, gevent 24.11, gunicorn 23.0",
}


class Unsupported(RuntimeError):
    """The agent cannot run in this process; the message is one line for the user."""


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true", "on")


def python_version():
    """The interpreter's version as "X.Y.Z". CANOPY_TEST_PYTHON_VERSION
    replaces it, so tests can show what an untested interpreter gets."""
    simulated = os.environ.get("CANOPY_TEST_PYTHON_VERSION")
    if simulated:
        return simulated
    return platform.python_version()


def _minor(version):
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def check_interpreter(extension):
    """Chooses the frame walker for this interpreter: "fast" or "public".
    Raises Unsupported on an implementation or version that is not tested,
    unless CANOPY_ALLOW_UNTESTED_PYTHON is set (then "public")."""
    version = python_version()
    implementation = platform.python_implementation()
    tested = implementation == "CPython" and _minor(version) in TESTED
    walk = os.environ.get("CANOPY_FRAME_WALK", "fast").strip().lower() or "fast"
    if walk not in ("fast", "public"):
        raise Unsupported("CANOPY_FRAME_WALK must be fast or public, not %r" % walk)
    if not tested:
        if not _flag("CANOPY_ALLOW_UNTESTED_PYTHON"):
            raise Unsupported(
                "%s %s is not a tested interpreter (tested: CPython %s); set CANOPY_ALLOW_UNTESTED_PYTHON=1 "
                "to profile with the public frame API" % (
                    implementation, version, ", ".join("%d.%d" % v for v in sorted(TESTED))))
        walk = "public"
    if walk == "fast" and not extension.FAST_FRAMES:
        walk = "public"
    return walk


def check_mode(mode):
    """Greenlet and sampling modes follow greenlets: they need gevent's hub
    (gevent installed) to be of any use. Looked up, not imported: importing
    gevent is the app's business."""
    if mode in ("greenlet", "sampling"):
        try:
            found = sys.modules.get("gevent") is not None or importlib.util.find_spec("gevent") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise Unsupported("mode %s needs gevent, which is not installed" % mode)


def _module_version(name):
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None) if module is not None else None
    if version:
        return str(version)
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:
        return None


def versions_line(agent_version):
    """One line for the start log: the agent and what it runs on."""
    parts = ["canopy_agent %s" % agent_version,
             "%s %s" % (platform.python_implementation(), python_version())]
    for name in ("greenlet", "gevent", "gunicorn"):
        parts.append("%s %s" % (name, _module_version(name) or "absent"))
    return ", ".join(parts)
