"""Builds tpio's Python extension: the C library's sources and python/src in
one module, tpio._tpio, linked with OpenSSL (libssl-dev)."""
import glob
import re

from setuptools import Extension, setup

with open("include/tpio.h") as f:
    _v = dict(re.findall(r"#define TPIO_VERSION_(MAJOR|MINOR|PATCH) (\d+)", f.read()))
VERSION = "%s.%s.%s" % (_v["MAJOR"], _v["MINOR"], _v["PATCH"])

sources = sorted(s for s in glob.glob("src/*/*.c") if not s.endswith("src/tls/none.c"))
sources += sorted(glob.glob("python/src/*.c"))

setup(
    version=VERSION,
    packages=["tpio"],
    package_dir={"tpio": "python/tpio"},
    ext_modules=[Extension(
        "tpio._tpio",
        sources=sources,
        include_dirs=["include", "src"],
        define_macros=[("_GNU_SOURCE", None), ("TPIO_HAVE_TLS", None)],
        extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-O2"],
        libraries=["ssl", "crypto"],
    )],
)
