# The one task runner: CI runs `make test` (through .ci/run), and so can you.
#
#   make serve   run the server, memory-only on 127.0.0.1:50051
#   make test    the whole suite: setup, lint, tests, SDKs, generated clients, cargo deny,
#                alert rules, deploy checks
#   make setup   install what the tests need (scripts/setup.sh)
#   make lint    rustfmt check, clippy, buf lint, buf format check and the buf breaking gate
#   make clients the generated Go and Java clients: generate, compile, run against the server
#   make api-release   rewrite the released-API image the breaking gate compares with (on purpose)
#   make fmt     format Rust and proto files in place
#   make nextest / make python / make typescript / make deny   single steps of `make test`
#   make bench-typescript   the TypeScript client's get against ioredis GET (release build)
#   make faults  the long fault suite (tests/tests/faults.rs, FAULTS_ROUNDS rounds per scenario)
#   make soak    the soak of docs/performance.md (SOAK_MINUTES, default 20; release build)
#   make bench   the full `tiercache bench` run of docs/performance.md (release build, minutes;
#                the bench is a cargo feature of tiercache-cli, off in the shipped binary)
#   make image   the OCI image from the stripped release binary, no Docker (dist/image, docs/deploy.md)
#   make deploy-check   the image run with runc, the Helm chart's checks and the kubelet check
#   make alerts  the Prometheus alerting rules: promtool check rules and their unit tests
#   make fuzz    every cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default 60) each (nightly;
#                installs cargo-fuzz when missing); not part of `make test`

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

export CARGO_TARGET_DIR ?= $(HOME)/.cache/tiercache-target
export PATH := $(HOME)/.cargo/bin:$(PATH)

BUF := .tools/node/node_modules/.bin/buf
ifeq ($(CI),true)
NEXTEST_PROFILE := ci
# CI must build exactly what Cargo.lock says.
LOCKED := --locked
else
NEXTEST_PROFILE := default
LOCKED :=
endif

# `tiercache bench` is behind tiercache-cli's `bench` feature. Tests and lints turn it on so the
# harness is linted and its smoke test (crates/tiercache-cli/tests/bench.rs) runs.
BENCH_FEATURE := --features tiercache-cli/bench

# Runs one target in a sub-make and prints how long it took.
step = @start=$$(date +%s); echo "==> make $(1)"; \
	$(MAKE) --no-print-directory $(1); \
	echo "<== make $(1) ok ($$(( $$(date +%s) - start ))s)"

.PHONY: serve test setup alerts fuzz lint fmt fmt-check clippy buf-lint buf-breaking api-release nextest deny bench image deploy-check faults soak

serve:
	cargo run -p tiercache-cli --release -- serve

test:
	$(call step,setup)
	$(call step,lint)
	$(call step,nextest)
	$(call step,python)
	$(call step,clients)
	$(call step,typescript)
	$(call step,deny)
	$(call step,alerts)
	$(call step,deploy-check)

setup:
	bash scripts/setup.sh

# `make test` runs a seconds-long smoke of the same command (crates/tiercache-cli/tests/bench.rs).
bench:
	cargo run -p tiercache-cli --release --features bench -- bench $(BENCH_ARGS)

# The fault suite's long version: each scenario injects its fault FAULTS_ROUNDS times in one
# fleet (`make nextest` runs one round). TIERCACHE_FAULTS_SEED replays an operation sequence.
FAULTS_ROUNDS ?= 5
faults:
	TIERCACHE_FAULTS_ROUNDS=$(FAULTS_ROUNDS) cargo nextest run -p tiercache-e2e $(LOCKED) --test faults --profile $(NEXTEST_PROFILE) --no-fail-fast

# The soak: the release binary under a mixed workload for SOAK_MINUTES, RSS sampled; prints the
# table and verdict and writes $(SOAK_OUT).json and .md. `make nextest` runs a 30-second version
# (crates/tiercache-cli/tests/soak.rs).
SOAK_MINUTES ?= 20
SOAK_OUT ?= $(CARGO_TARGET_DIR)/soak
soak:
	cargo build --release -p tiercache-cli $(LOCKED)
	cargo run --release -p tiercache-e2e $(LOCKED) --example soak -- \
		--minutes $(SOAK_MINUTES) --binary $(CARGO_TARGET_DIR)/release/tiercache --out $(SOAK_OUT) $(SOAK_ARGS)

# The fuzz targets (fuzz/, docs/testing.md "Fuzzing"), each for FUZZ_SECONDS, then a table of
# executions, coverage and crashes. CI does not fuzz; it replays the committed corpus on stable
# (tests/tests/fuzz_corpus.rs).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

lint: fmt-check clippy buf-lint buf-breaking

fmt:
	cargo fmt --all
	$(BUF) format -w

fmt-check:
	cargo fmt --all -- --check

# Twice: the default build (what ships, with the `tiercache bench` stub) and with the bench.
clippy:
	cargo clippy --workspace --all-targets $(LOCKED) -- -D warnings
	cargo clippy --workspace --all-targets $(LOCKED) $(BENCH_FEATURE) -- -D warnings

buf-lint:
	$(BUF) lint
	$(BUF) format -d --exit-code

# buf breaking of proto/ against the committed image of the released API, plus a self-test that a
# renumbered or deleted field fails it (scripts/check-buf-breaking.sh, docs/clients.md).
RELEASED_API := proto/released/tiercache-v1.binpb
buf-breaking:
	bash scripts/check-buf-breaking.sh

# Makes the current proto/ the released API the gate compares with. Run it on purpose when an
# API version ships (or to accept a deliberate break), and commit the image with the change.
api-release:
	$(BUF) build --exclude-source-info -o $(RELEASED_API)
	@echo "wrote $(RELEASED_API); commit it"

nextest:
	cargo nextest run --workspace $(LOCKED) $(BENCH_FEATURE) --profile $(NEXTEST_PROFILE)

# The Python SDK (sdks/python): generated code current, ruff, mypy --strict, pytest. The tests
# run the debug server binary against their own redis-server processes.
.PHONY: python
python:
	cargo build -p tiercache-cli $(LOCKED)
	bash sdks/python/check.sh

# The generated Go and Java clients (docs/clients.md): generated with Debian's local plugins into
# build/clients, compiled, and run against the debug server binary (scripts/check-clients.sh).
.PHONY: clients
clients:
	cargo build -p tiercache-cli $(LOCKED)
	bash scripts/check-clients.sh

# The TypeScript SDK (sdks/typescript): generated code current, tsc --strict, node:test against
# real servers (the debug server binary and redis-server).
.PHONY: typescript
typescript:
	cargo build -p tiercache-cli $(LOCKED)
	bash sdks/typescript/check.sh

# One run of sdks/typescript/bench/get.ts against the release server binary; not part of `make test`.
.PHONY: bench-typescript
bench-typescript:
	cargo build --release -p tiercache-cli $(LOCKED)
	bash scripts/setup-typescript.sh
	cd sdks/typescript && rm -rf build && node_modules/.bin/tsc -p tsconfig.json \
		&& node build/bench/get.js --bin $(CARGO_TARGET_DIR)/release/tiercache $(BENCH_ARGS)

# cargo-deny runs offline against the advisory database that setup cloned from the vendored bundle
# (vendor/rustsec-advisory-db); it fails, naming the fix, if that clone is missing or older than the
# recorded commit. `cargo fetch` makes sure every crate of the lock file (all platforms) is in the
# local cache for `cargo metadata`.
deny:
	bash scripts/advisory-db.sh check
	cargo fetch --locked --quiet
	cargo deny --offline check

# The image: dist/image/tiercache.oci.tar (and .docker.tar for `docker load -i`), built by umoci
# and skopeo from the stripped release binary; the same binary gives the same digest.
image:
	cargo build --release -p tiercache-cli $(LOCKED)
	bash scripts/build-image.sh

# The alerting rules shipped with the chart (helm/tiercache/alerts, docs/observability.md "Alerts
# and runbooks"): promtool (Debian package prometheus, installed by setup) checks them and runs
# their unit tests, input series -> the alerts that fire and those that do not.
ALERT_RULES := helm/tiercache/alerts/tiercache-alerts.yaml
alerts:
	@command -v promtool >/dev/null || { echo "promtool missing: sudo apt-get install -y prometheus (or make setup)" >&2; exit 1; }
	promtool check rules $(ALERT_RULES)
	promtool test rules tests/alerts/tiercache-alerts.test.yaml

# The deploy checks (tests/deploy, pytest in the venv of scripts/setup-deploy.sh; runc needs root):
# the image run locked down with runc, the chart linted, rendered and validated offline, and the
# kubelet check running the rendered pod with the image.
DEPLOY_VENV ?= $(HOME)/.cache/tiercache-deploy-venv
deploy-check: image
	cd tests/deploy && $(DEPLOY_VENV)/bin/python -m pytest -q -p no:cacheprovider
