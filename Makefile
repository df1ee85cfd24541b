# reapi: one entry point for people and CI. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

NODE_TEST := node --test --test-concurrency=1
LISTEN ?= 127.0.0.1:8980
DATA ?= .data
TOOLCHAIN_IMAGE ?= reapi-toolchain:bookworm

.PHONY: help deps build test run bench toolchain-image dockerd clean

help:
	@echo "make run    - install, build and start the embedded server on $(LISTEN)"
	@echo "make test   - install everything needed and run the test suite"
	@echo "make bench  - print benchmark ratios measured in one run"

deps:
	@bash deploy/install-deps.sh

build: deps
	@npm run --silent build

dockerd: deps
	@bash deploy/start-dockerd.sh

toolchain-image: dockerd
	@bash deploy/toolchain/build-image.sh $(TOOLCHAIN_IMAGE)

test: build toolchain-image
	@$(NODE_TEST) dist/test/

run: build toolchain-image
	@node dist/bin/reapi.js serve --listen $(LISTEN) --data $(DATA)

BENCHES := proto-codec storage sandbox-overhead execution scheduler-throughput s3-tier

bench: build toolchain-image
	@for b in $(BENCHES); do node dist/bench/$$b.js || exit 1; done

clean:
	rm -rf dist apis/generated

# reapi-cc on a real kernel (Linux 6.1 tinyconfig): the timing table, and the bit-identical check.
.PHONY: bench-kernel test-kernel
bench-kernel: build toolchain-image
	@node dist/bench/kernel.js

test-kernel: build toolchain-image
	@node dist/bench/kernel.js --only-check
