"""Builds canopy_agent's C extension without the collector's build tree.

The extension (agent/python/src) is compiled together with the agent's C
client library (agent/src) and the protocol code protoc-c generates from
proto/canopy/v1/canopy.proto, and linked with the system's libnng and
libprotobuf-c (Debian: libnng-dev, libprotobuf-c-dev, protobuf-c-compiler).
Nothing from the collector's dependencies (grpc, zlib, yaml, jansson) is used.

    pip install --no-build-isolation ./agent/python     (docs/agent.md)
    python3 -m build --wheel --no-isolation agent/python

The sources outside this directory are found relative to it, so build from a
checkout of the repository (in place: pip >= 21.3 and build do that).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.dirname(HERE)
ROOT = os.path.dirname(AGENT)
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = "canopy/v1/canopy.proto"

# Files of core/base/ (the collector's small shared library, e.g. "pem.c")
# that the agent's client library uses; compiled into the extension, by name.
CORE_BASE_SOURCES = ["pem.c"]


def _sources(folder):
    """The .c files of folder, relative to this directory (setuptools wants that)."""
    return sorted(os.path.relpath(os.path.join(folder, f), HERE) for f in os.listdir(folder) if f.endswith(".c"))


def _agent_version():
    with open(os.path.join(AGENT, "include", "canopy", "agent.h")) as f:
        m = re.search(r'#define CN_AGENT_VERSION "([^"]+)"', f.read())
    if not m:
        sys.exit("setup.py: CN_AGENT_VERSION not found in agent/include/canopy/agent.h")
    return m.group(1)


def _pkg_config(packages, default):
    """Link flags from pkg-config, or the plain library names when a package
    ships no .pc file (Debian 12's libnng-dev has none)."""
    flags = []
    for pkg, fallback in zip(packages, default):
        try:
            out = subprocess.run(["pkg-config", "--libs", pkg], capture_output=True, text=True, check=True)
            flags += shlex.split(out.stdout)
        except (OSError, subprocess.CalledProcessError):
            flags.append(fallback)
    return flags


class BuildExt(build_ext):
    """Generates the protocol code with protoc-c before compiling."""

    def run(self):
        gen = os.path.join(os.path.abspath(self.build_temp), "gen")
        os.makedirs(gen, exist_ok=True)
        protoc = shutil.which("protoc-c")
        if not protoc:
            sys.exit("setup.py: protoc-c not found (Debian: apt-get install protobuf-c-compiler)")
        subprocess.run([protoc, "--proto_path=" + PROTO_DIR, "--c_out=" + gen, os.path.join(PROTO_DIR, PROTO)],
                       check=True)
        for ext in self.extensions:
            # Absolute, so objects land under build_temp (one per interpreter)
            # rather than next to ../src, outside the build folder.
            ext.sources = [os.path.join(HERE, src) for src in ext.sources]
            ext.include_dirs.append(gen)
            ext.sources.append(os.path.join(gen, PROTO.replace(".proto", ".pb-c.c")))
        super().run()


for name in CORE_BASE_SOURCES:
    if not os.path.exists(os.path.join(ROOT, "core", "base", name)):
        sys.exit("setup.py: core/base/%s not found" % name)

extension = Extension(
    "canopy_agent._canopy",
    sources=_sources(os.path.join(HERE, "src")) + _sources(os.path.join(AGENT, "src"))
    + [os.path.relpath(os.path.join(ROOT, "core", "base", n), HERE) for n in CORE_BASE_SOURCES],
    # core/ and core/base/ so that both "base/pem.h" and "pem.h" resolve.
    include_dirs=[os.path.join(AGENT, "include"), os.path.join(AGENT, "src")]
    + ([os.path.join(ROOT, "core"), os.path.join(ROOT, "core", "base")] if CORE_BASE_SOURCES else []),
    define_macros=[("_GNU_SOURCE", None)],
    extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"],
    extra_link_args=_pkg_config(["nng", "libprotobuf-c"], ["-lnng", "-lprotobuf-c"]) + ["-pthread"],
)

setup(version=_agent_version(), ext_modules=[extension], cmdclass={"build_ext": BuildExt})
