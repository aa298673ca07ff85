"""Build the compiled core of fastq.

Switches (environment variables):
  FASTQ_DEBUG=1     asserts on, Cython bounds/wraparound checks on, -O0 -g
  FASTQ_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (implies debug flags);
                    run Python with LD_PRELOAD of libasan to load the modules
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTQ_DEBUG") == "1"
SANITIZE = os.environ.get("FASTQ_SANITIZE") == "1"

compile_args = []
link_args = []
macros = []
if sys.platform != "win32":
    compile_args += ["-std=c11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    if DEBUG or SANITIZE:
        compile_args += ["-O0", "-g3", "-UNDEBUG"]
        macros += [("FASTQ_DEBUG", "1")]
    else:
        # -g0: Python's own CFLAGS carry -g, and debug info for Cython's large output costs
        # ~60% of the compile time (_storage.c: 39 s with -g, 25 s without). FASTQ_DEBUG=1
        # builds keep full debug info; perf and py-spy still see every function symbol.
        compile_args += ["-O3", "-g0"]
        macros += [("NDEBUG", "1")]
    if SANITIZE:
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        compile_args += san
        link_args += san
else:
    compile_args += ["/O2"]

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG or SANITIZE,
    "wraparound": DEBUG or SANITIZE,
    "cdivision": True,
    "initializedcheck": DEBUG or SANITIZE,
}


def ext(name, sources):
    return Extension(
        name,
        sources=sources,
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


CORE_C = [
    "csrc/fq_crc32c.c", "csrc/fq_varint.c", "csrc/fq_batch.c", "csrc/fq_os.c", "csrc/fq_index.c", "csrc/fq_log.c",
    "csrc/fq_hash.c", "csrc/fq_producer.c",
]

CORE = "src/fastq/_core/"
extensions = [
    ext("fastq._core._codec", [CORE + "_codec.pyx"] + CORE_C),
    ext("fastq._core._storage", [CORE + "_storage.pyx", "csrc/fq_queue.c", "csrc/fq_limiter.c"] + CORE_C),
    ext("fastq._core._ring", [CORE + "_ring.pyx", "csrc/fq_ring.c", "csrc/fq_os.c"]),
    # the producer's hot path bridges the ring and the log. It calls the ring through
    # fastq._core._ring's methods: fq_ring.c keeps per-copy state (its pid cache), so it is
    # linked into that module only. fq_batch.c (stateless) sizes a record for send's check.
    ext("fastq._core._producer", [CORE + "_producer.pyx", "csrc/fq_hash.c", "csrc/fq_batch.c",
                                  "csrc/fq_varint.c", "csrc/fq_crc32c.c"]),
]

# Cython regenerates a .c only when its .pyx changes, so switching between debug,
# sanitizer and release builds must force it, or a release build could keep bounds
# checks (or lose them) silently. Remember the flags of the last generation.
_FLAGS = f"debug={int(DEBUG)} sanitize={int(SANITIZE)}"
_FLAGS_FILE = os.path.join("build", "fastq-cython-flags")
try:
    with open(_FLAGS_FILE) as f:
        _force = f.read().strip() != _FLAGS
except OSError:
    _force = DEBUG or SANITIZE
os.makedirs("build", exist_ok=True)
with open(_FLAGS_FILE, "w") as f:
    f.write(_FLAGS)

# FASTQ_ONLY=fastq._core._ring,fastq._core._codec builds just those modules (handy while one is broken)
only = [n for n in os.environ.get("FASTQ_ONLY", "").split(",") if n]
if only:
    extensions = [e for e in extensions if e.name in only]

# Both steps use every core: Cython translates the modules in parallel, and build_ext
# compiles the extensions in parallel (_storage alone is most of the time; the other three
# fit beside it on a second core).
_jobs = max(1, min(len(extensions), os.cpu_count() or 1))

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("FASTQ_ANNOTATE") == "1",
        force=_force,
        gdb_debug=False,
        # a process pool: only where it forks, so setup.py is never re-imported by a child
        nthreads=_jobs if _jobs > 1 and sys.platform.startswith("linux") else 0,
    ),
    options={"build_ext": {"parallel": _jobs}},
)
