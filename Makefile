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

# One consented, redacted call on loopback (`callveil demo`): the speech model, the IVR prompts,
# the caller's and agent's voices, then the release binary
# (debug builds transcribe too slowly for the one-minute budget).
demo: setup
	scripts/provision-model tiny.en >/dev/null
	scripts/make-prompts   # IVR consent prompts (var/prompts/{en,es,pt}.wav)
	scripts/make-demo-audio
	$(CARGO) run --release -- demo

# fmt, clippy, compile every target (benches included, in the test profile, not run), then run
# the library, binary and integration tests.
test: setup
	scripts/make-prompts   # IVR consent prompts (var/prompts/{en,es,pt}.wav)
	scripts/provision-model tiny.en >/dev/null   # the real-model tests (redact_cli, demo)
	scripts/make-demo-audio   # the caller's and agent's voices for tests/demo.rs
	scripts/make-corpus   # the redaction corpus (testdata/redaction/corpus) for tests/recording_path.rs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets --no-run
	$(CARGO) test --lib --bins --tests

bench: setup
	$(CARGO) bench
