CARGO ?= cargo

.PHONY: build release test deps demo bench fuzz man assets clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## man: the man page, generated from the release binary's flags, in
## target/assets/stretcher.1 (`man -l target/assets/stretcher.1`)
## assets: the man page and bash, zsh and fish completions in target/assets,
## where packages take them from
ASSETS := target/assets
STRETCHER_BIN ?= target/release/stretcher
man: release
	mkdir -p $(ASSETS)
	$(STRETCHER_BIN) man > $(ASSETS)/stretcher.1.tmp
	mv $(ASSETS)/stretcher.1.tmp $(ASSETS)/stretcher.1

assets: man
	mkdir -p $(ASSETS)/completions
	$(STRETCHER_BIN) completions bash > $(ASSETS)/completions/stretcher.bash
	$(STRETCHER_BIN) completions zsh > $(ASSETS)/completions/_stretcher
	$(STRETCHER_BIN) completions fish > $(ASSETS)/completions/stretcher.fish

## deps: install what the tests run for real (rsync, serf, bsdtar; moto and
## fake-gcs-server into target/test-venv), when missing
deps:
	sh scripts/test-deps.sh

## test: format and lint checks, then unit and black-box tests
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test
	$(CARGO) test --no-default-features --lib

## demo: build, pack examples/app, deploy it with `echo file://… | stretcher`
demo: release
	sh scripts/test-deps.sh demo
	sh examples/demo.sh target/release/stretcher

## bench: the default deploy path against Go stretcher's steps; writes bench/results.md
bench: release
	sh scripts/test-deps.sh bench
	python3 bench/bench.py

## fuzz: run each cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS
## (default 60); fails if one finds a crash, a panic or an input that takes
## over 10 s. Installs cargo-fuzz when missing. cargo-fuzz passes nightly-only
## flags (-Zsanitizer): RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
## New inputs go to fuzz/corpus/ (not committed); seeds are in fuzz/seeds/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= event template manifest units archive
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1; \
	done

clean:
	$(CARGO) clean
