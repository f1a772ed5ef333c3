# The two commands a newcomer needs:
#   make run   release build into build/, then the specification's examples
#   make test  ASan+UBSan build into build-test/, then the whole suite (ctest)
# Both install missing Debian packages first (apt-get, only when missing).

BUILD      ?= build
TEST_BUILD ?= build-test
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PACKAGES   := cmake make gcc pkg-config libcriterion-dev libssl-dev openssl python3 clang \
              python3-dev python3-pytest libpython3.11-testsuite liburing-dev
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all run test deps build build-test examples clean install

all: build

deps:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing missing packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DTPIO_BUILD_TESTS=OFF
	cmake --build $(BUILD) -j $(JOBS)

run: build
	@sh examples/run-examples.sh $(BUILD)/examples
	@if TPIO_BACKEND=io_uring PYTHONPATH=$(BUILD)/python /usr/bin/python3 -c \
	    "import tpio; tpio.new_event_loop().close()" 2>/dev/null; then \
	  echo "==== again, every loop on the io_uring backend (TPIO_BACKEND=io_uring) ===="; \
	  TPIO_BACKEND=io_uring sh examples/run-examples.sh $(BUILD)/examples; \
	else echo "(this machine refuses io_uring: the examples ran on epoll only)"; fi

build-test: deps
	cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTPIO_SANITIZE=ON
	cmake --build $(TEST_BUILD) -j $(JOBS)

# halt_on_error / detect_leaks make any sanitizer report or leak fail the run.
test: build-test
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=86 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	ctest --test-dir $(TEST_BUILD) --output-on-failure -j 2

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(TEST_BUILD)

# ---- benchmarks (bench/, docs/performance.md) -------------------------------
#   make bench        the whole matrix, counts and memory, plain and TLS, and the
#                     Python event loops (< 15 min); writes bench/results/ and the
#                     generated part of docs/performance.md
#   make bench-quick  smoke check (< 3 min); writes build-bench/results-quick/
BENCH_BUILD    ?= build-bench
BENCH_PACKAGES := cmake make gcc pkg-config python3 libuv1-dev libevent-dev \
                  libssl-dev openssl valgrind strace gnuplot-nox util-linux \
                  python3-dev python3-uvloop liburing-dev

.PHONY: bench bench-quick bench-build bench-deps

bench-deps:
	@missing=""; for p in $(BENCH_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing missing packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

bench-build: bench-deps
	cmake -S bench -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BENCH_BUILD) -j $(JOBS)

bench: bench-build
	/usr/bin/python3 bench/run.py --build $(BENCH_BUILD) --out bench/results --doc docs/performance.md

bench-quick: bench-build
	/usr/bin/python3 bench/run.py --quick --build $(BENCH_BUILD) --out $(BENCH_BUILD)/results-quick

# ---- mutation testing (tests/mutants/) ---------------------------------------
#   make mutate   plant each bug of tests/mutants/mutants.txt in src/, one at a
#                 time, and list those the suite misses; about a minute per
#                 mutant, so by hand (before resolving an issue that reshapes
#                 code), not in CI. MUTATE_ARGS="--only 3,7" runs a few;
#                 MUTATE_ARGS=--check only checks, in seconds, that every
#                 mutant applies and compiles (after editing the list or src/).
#                 Report: build-mutate/mutants-report.txt
MUTATE_BUILD ?= build-mutate
MUTATE_ARGS  ?=

.PHONY: mutate

mutate: deps
	cmake -S . -B $(MUTATE_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTPIO_SANITIZE=ON \
	      -DTPIO_BUILD_EXAMPLES=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=86 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	/usr/bin/python3 tests/mutants/run.py --build $(MUTATE_BUILD) $(MUTATE_ARGS)

# ---- fuzzing (tests/fuzz/) --------------------------------------------------
#   make fuzz   build the libFuzzer harnesses with clang (ASan + UBSan) into
#               build-fuzz/ and run each for FUZZ_SECONDS (default 60); fails
#               on any crash, leak or timeout (what failed: build-fuzz/artifacts/).
#               The corpus grows in build-fuzz/corpus/ from run to run. ctest
#               runs a 20 s pass of the same script (the `fuzz` test).
FUZZ_BUILD    ?= build-fuzz
FUZZ_SECONDS  ?= 60
FUZZ_PACKAGES := cmake make clang libssl-dev

.PHONY: fuzz fuzz-deps

fuzz-deps:
	@missing=""; for p in $(FUZZ_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing missing packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

fuzz: fuzz-deps
	sh tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)
