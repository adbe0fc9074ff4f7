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

# The second pass runs the conformance and client suites again against
# three-broker regions (Chronik) and three-broker Apache Kafka clusters.
test-clients:
	cd tests && python3 -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	cd tests && CHRONIK_TEST_BROKERS=3 python3 -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) \
		test_conformance.py test_bad_input.py test_clients.py test_kafkajs.py test_groups.py test_kafka_cli.py

bench: build
	bench/run.sh

fmt:
	cargo fmt --all
