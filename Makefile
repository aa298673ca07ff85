# fastq — two commands set everything up on a fresh machine:
#   make run    build, install and run the main job (an end-to-end throughput run)
#   make test   build, install and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastq-built
SOURCES := $(wildcard csrc/*.c csrc/*.h src/fastq/_core/*.pyx src/fastq/_core/*.pxd src/fastq/_core/*.pxi) setup.py pyproject.toml

.PHONY: run test bench build clean debug sanitize sanitize-test torture

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "setuptools>=77" wheel "Cython>=3.1"
	$(PIP) install -q "pytest>=8" "pytest-timeout>=2" "hypothesis>=6.100" "google-crc32c>=1.5" "kafka-python>=2.0.2" \
	    "pytest-benchmark>=4" "faster-fifo>=1.4" "jsonschema>=4" "matplotlib>=3.7" \
	    "psutil>=5.9"
	touch $@

$(STAMP): $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

build: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fastq bench --quick

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=300 tests

torture: $(STAMP)
	FASTQ_TORTURE=1 $(PY) -m pytest -q -p no:cacheprovider --timeout=3600 tests

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

# Rebuilds with debug or sanitizer flags; the stamp is removed so the next plain
# `make build/test` rebuilds optimized.
debug: $(VENV)/.deps
	rm -rf build && FASTQ_DEBUG=1 $(PIP) install -q --no-build-isolation -e . && rm -f $(STAMP)

sanitize: $(VENV)/.deps
	rm -rf build && FASTQ_SANITIZE=1 $(PIP) install -q --no-build-isolation -e . && rm -f $(STAMP)

sanitize-test: sanitize
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
	    $(PY) -m pytest -q -p no:cacheprovider --timeout=600 tests

clean:
	rm -rf build $(VENV) src/*.egg-info src/fastq/_core/*.c src/fastq/_core/*.so src/fastq/_core/*.html
