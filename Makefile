# The two commands the README promises:
#   make dev   - install build prerequisites, build, run `chronik dev`
#   make test  - install test prerequisites, build, run every test
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
CHRONIK_BIN := $(TARGET_DIR)/release/chronik
export CHRONIK_BIN
DEV_ARGS ?=

.PHONY: dev build test test-unit test-clients setup setup-test bench fmt

setup:
	@deploy/setup-host.sh

build: setup
	cargo build --release --locked

dev: build
	$(CHRONIK_BIN) dev $(DEV_ARGS)

setup-test: setup
	@tests/setup.sh

test: build setup-test test-unit test-clients

test-unit:
	cargo test --release --locked --workspace

# Two lanes at once (tests/run-lanes.sh): the Kafka side-by-side suites, and
# beside them every multi-region test; then, in the first lane free, the
# second pass against three-broker regions (Chronik) and three-broker Apache
# Kafka clusters.
test-clients:
	PYTEST_ARGS="$(PYTEST_ARGS)" tests/run-lanes.sh

bench: build
	bench/run.sh

fmt:
	cargo fmt --all
