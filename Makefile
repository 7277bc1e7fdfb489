CARGO ?= cargo

.PHONY: build release test deps demo bench clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

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

clean:
	$(CARGO) clean
