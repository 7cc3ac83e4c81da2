# Two entry points for a fresh Debian 12 machine (as root): `make demo` and `make test`.
# Both run scripts/setup first, which is quick when everything is already installed.
# Recipes are sequential on purpose, so `make -j` cannot lint before setup has finished.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
CONFIG ?= config/callveil.toml

.PHONY: setup demo test bench
.DEFAULT_GOAL := test

setup:
	scripts/setup

# Runs the proxy until Ctrl-C. (Becomes the end-to-end `callveil demo` when that lands.)
demo: setup
	scripts/make-prompts   # IVR consent prompts (var/prompts/{en,es,pt}.wav)
	$(CARGO) run --release -- run --config $(CONFIG)

# fmt, clippy, compile every target (benches included, in the test profile, not run), then run
# the library, binary and integration tests.
test: setup
	scripts/make-prompts   # IVR consent prompts (var/prompts/{en,es,pt}.wav)
	scripts/provision-model tiny.en >/dev/null   # the real-model redaction test (tests/redact_cli.rs)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets --no-run
	$(CARGO) test --lib --bins --tests

bench: setup
	$(CARGO) bench
