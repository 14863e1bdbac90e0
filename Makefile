# valepipe — `make demo`, `make test`, `make bench` each set up what they need first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OFAPPS := build/openflow-apps
NATIVE_SRC := $(wildcard ring/*.c ring/*.h pipeline/*.c pipeline/*.h pipeline/stages/*.c pipeline/stages/*.h \
                          bindings/*.c bindings/*.h bindings/*/*.c bindings/*/*.h tools/*.c tools/*.h) pipeline/native_build.py

.PHONY: demo test test-vm soak bench bench-veth bench-vm fuzz diff-ovs native install check-freebsd clean help
help:
	@echo "make demo   - set up, then run gen -> pipeline -> sink on shm: ports and print Mpps"
	@echo "make test   - set up, then run the test suite"
	@echo "make test-vm - two QEMU guests (TCG, offloads on) through the pipeline on packet:, afxdp:, tap: (root; minutes)"
	@echo "make soak   - SOAK_SECONDS (180) of traffic under random kills/stops, a hostile peer, bad clients; exact books per port"
	@echo "make bench  - set up, then run perf/bench_shm.py (Mpps by flows and batch, ns/packet by stage)"
	@echo "make bench-veth - valepipe vs Linux bridge vs Open vSwitch on veth with trafgen (root)"
	@echo "make bench-vm - guest-to-guest TCP and ping through valepipe, the Linux bridge and Open vSwitch (root)"
	@echo "make fuzz   - libFuzzer+ASan on extract, atheris on the parsers, FUZZ_SECONDS each (default 120)"
	@echo "make diff-ovs - every frame through a running pipeline against Open vSwitch, DIFF_FRAMES (default 50000)"
	@echo "make install - set up, then link valepipe into PREFIX/bin (default /usr/local, ~/.local as non-root)"
	@echo "make check-freebsd - compile and link the native build for x86_64-freebsd (zig cc, ~400 MB into the venv)"

$(VENV)/.installed: pyproject.toml setup.py
	tools/system-packages --build
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "setuptools>=64" wheel "cffi>=1.15"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# the extension is rebuilt in place whenever a C kernel or header changes
pipeline/.native-stamp: $(VENV)/.installed $(NATIVE_SRC)
	$(PY) pipeline/native_build.py >/dev/null
	touch $@

native: pipeline/.native-stamp

# `valepipe` on PATH: a link to the venv's entry point (the venv stays where it is)
PREFIX ?= $(if $(filter 0,$(shell id -u)),/usr/local,$(HOME)/.local)
install: native
	mkdir -p $(PREFIX)/bin
	ln -sf $(abspath $(VENV))/bin/valepipe $(PREFIX)/bin/valepipe
	@echo "valepipe -> $(PREFIX)/bin/valepipe ($$($(PREFIX)/bin/valepipe --version))"

demo: native
	$(PY) -m pipeline.cli demo

# the tests' own packages (Open vSwitch, ping, ethtool, clang, ...) are installed here, not
# only by CI: `make test` alone on a fresh machine runs every test
test: native $(OFAPPS)/simple_switch_13.py
	tools/system-packages --test
	$(PY) -m pytest tests

# os-ken's simple_switch_13.py, unmodified, for tests/test_openflow_controllers.py: os-ken
# 1.4.1 is the last release whose wheel ships its sample apps (the one installed has none)
$(OFAPPS)/simple_switch_13.py: | $(VENV)/.installed
	mkdir -p $(OFAPPS)
	$(PY) -m pip download -q --no-deps --disable-pip-version-check -d $(OFAPPS) "os-ken==1.4.1"
	$(PY) -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('os_ken/app/simple_switch_13.py'))" \
	    $(OFAPPS)/os_ken-1.4.1-py3-none-any.whl > $@.tmp
	mv $@.tmp $@

# Real QEMU guests: the kernel and a busybox initramfs are built from Debian packages on first
# use and cached in /var/cache/valepipe-vm (VALEPIPE_VM_CACHE); a few minutes under TCG
test-vm: native
	tools/system-packages --test
	VALEPIPE_VM_TESTS=1 $(PY) -m pytest tests/test_vm.py

# the soak of tests/soak.py for minutes (make test runs it for seconds); SOAK_SEED repeats a run
SOAK_SECONDS ?= 180
soak: native
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/test_soak.py -s -q

bench: native
	$(PY) perf/bench_shm.py

bench-vm: native
	tools/system-packages --bench
	$(PY) perf/bench_vm.py

bench-veth: native
	tools/system-packages --bench
	$(PY) perf/bench_veth.py

# The differential test against Open vSwitch at length (make test runs 3,000 frames);
# DIFF_SEED=N replays a run
DIFF_FRAMES ?= 50000
diff-ovs: native
	tools/system-packages --test
	VP_DIFF_FRAMES=$(DIFF_FRAMES) VP_DIFF_SETS=$$(( $(DIFF_FRAMES) / 800 + 1 )) VP_DIFF_SEED=$(DIFF_SEED) \
	    $(PY) -m pytest tests/test_ovs_pipeline.py -q -s -k every_frame

# Longer fuzzing than `make test` does; corpora grow in build/fuzz; a finding stops the run
# and is written to build/fuzz/crash-* (keep it in tests/fuzz/regressions/TARGET/).
FUZZ_SECONDS ?= 120
FUZZ_TARGETS := flowtext config slowpath_message worker_message
fuzz: native
	tools/system-packages --test
	mkdir -p build/fuzz/corpus-extract
	$(PY) tests/fuzz/seeds.py build/fuzz/seeds
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. \
	    tests/fuzz/fuzz_extract.c pipeline/stages/extract.c -o build/fuzz/fuzz_extract
	build/fuzz/fuzz_extract -max_total_time=$(FUZZ_SECONDS) -max_len=65535 -artifact_prefix=build/fuzz/ \
	    build/fuzz/corpus-extract build/fuzz/seeds/extract
	mkdir -p build/fuzz/corpus-vnet
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. \
	    tests/fuzz/fuzz_vnet.c bindings/vnet.c -o build/fuzz/fuzz_vnet
	build/fuzz/fuzz_vnet -max_total_time=$(FUZZ_SECONDS) -max_len=65545 -artifact_prefix=build/fuzz/ \
	    build/fuzz/corpus-vnet build/fuzz/seeds/vnet
	for t in $(FUZZ_TARGETS); do mkdir -p build/fuzz/corpus-$$t; \
	    VP_FUZZ_TAG=fzmake $(PY) tests/fuzz/fuzz_parsers.py $$t -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build/fuzz/ \
	        build/fuzz/corpus-$$t build/fuzz/seeds/$$t $$(ls -d tests/fuzz/regressions/$$t 2>/dev/null) \
	        || { rm -f /dev/shm/valepipe.fzmake*; exit 1; }; done; rm -f /dev/shm/valepipe.fzmake*

# The FreeBSD cross-check (not in `make test`: it installs PyPI's ziglang, ~400 MB, into the
# venv): the FreeBSD build compiled and linked against FreeBSD's libc and compared with its
# <net/netmap.h> (tools/freebsd_check.py), then shown to fail on broken copies of the tree
$(VENV)/.ziglang: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check "ziglang==0.17.1"
	touch $@

check-freebsd: native $(VENV)/.ziglang
	$(PY) tools/freebsd_check.py
	$(PY) -m pytest -q tests/test_freebsd_check.py

clean:
	rm -rf $(VENV) build *.egg-info pipeline/_native* pipeline/*.o pipeline/.native-stamp
