CARGO ?= cargo

.PHONY: build release test deps demo bench fleet-bench fuzz man assets dist deb rpm walkthrough clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## man: the man page, generated from the release binary's flags, in
## target/assets/stretcher.1 (`man -l target/assets/stretcher.1`)
## assets: the man page and bash, zsh and fish completions in target/assets
## (scripts/assets.sh; dist and deb generate the same files the same way)
ASSETS := target/assets
STRETCHER_BIN ?= target/release/stretcher
man assets: release
	sh scripts/assets.sh $(STRETCHER_BIN) $(ASSETS)

## dist: the release binary built against glibc 2.17 with cargo-zigbuild
## (zig from PyPI into target/dist-venv, cargo-zigbuild from crates.io, both
## installed when missing), checked with objdump -T, and
## target/dist/stretcher-<version>-x86_64-linux-gnu.tar.gz plus its .sha256
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
DIST_BIN := target/x86_64-unknown-linux-gnu/release/stretcher
dist:
	sh scripts/dist.sh

## deb: target/dist/stretcher_<version>-1_amd64.deb from dist's binary, with
## cargo-deb (installed when missing) and [package.metadata.deb] in Cargo.toml;
## DEB_FLAGS go to cargo-deb (e.g. --maintainer "Ops <ops@example.com>")
DEB := target/dist/stretcher_$(VERSION)-1_amd64.deb
DEB_FLAGS ?=
deb: dist
	cargo deb --version >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked
	sh scripts/deb.sh $(DIST_BIN) $(DEB) $(DEB_FLAGS)
	@ls -l $(DEB)

## rpm: target/dist/stretcher-<version>-1.x86_64.rpm from dist's binary, for
## CentOS 7, Amazon Linux 2 and later (rpm 4.11 and newer), with
## cargo-generate-rpm 0.14.1 (installed into target/rpm-tools when missing)
## and [package.metadata.generate-rpm] in Cargo.toml
RPM := target/dist/stretcher-$(VERSION)-1.x86_64.rpm
rpm: dist
	sh scripts/test-deps.sh rpm
	sh scripts/rpm.sh $(DIST_BIN) $(RPM)
	@ls -l $(RPM)

## walkthrough: examples/walkthrough/walkthrough.sh with the release binary:
## an archive, a signed manifest on a local HTTP server, deploys by hand,
## by Serf agents and by a Consul event, then the reports and status
walkthrough: release
	sh scripts/test-deps.sh walkthrough
	sh examples/walkthrough/walkthrough.sh target/release/stretcher

## deps: install what the tests run for real (rsync, serf, bsdtar, rpm;
## cargo-deb, cargo-generate-rpm; moto and fake-gcs-server into
## target/test-venv), when missing
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

## fleet-bench: 100 real Serf agents on 127.0.0.1, each deploying its own
## dest from one local HTTP origin: serf event (all at once), serf query,
## stretcher fleet query, a rollout in batches of 10; writes its section of
## bench/results.md (FLEET_AGENTS, FLEET_BATCH to change the sizes)
FLEET_AGENTS ?= 100
FLEET_BATCH ?= 10
fleet-bench: release
	sh scripts/test-deps.sh fleet-bench
	python3 bench/fleet_bench.py --agents $(FLEET_AGENTS) --batch $(FLEET_BATCH)

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
