# vnest developer entry points. `make help` lists them.
SHELL := bash
.DEFAULT_GOAL := help

.PHONY: help up down test test-unit test-e2e lint fmt tools build bench image k3s-image test-k3s-image schema

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

up: ## build what is missing, start a host cluster + a vcluster in namespace vnest-demo, print next steps
	@hack/up.sh

down: ## stop everything `make up` started (by PID) and remove its state
	@hack/down.sh

test: ## every check: fmt, clippy -D warnings, unit tests, e2e against its own local control planes
	@hack/test.sh

test-unit: ## fmt, clippy and unit tests only (no control planes)
	@hack/test.sh --unit-only

test-e2e: ## e2e tests against an already running `make up`
	@VNEST_E2E_ENV=$(CURDIR)/.e2e/env cargo test --workspace --test "*" -- --test-threads=4

lint: ## cargo fmt --check and clippy -D warnings
	@cargo fmt --all -- --check && cargo clippy --all-targets -- -D warnings

fmt: ## format the Rust code
	@cargo fmt --all

tools: ## build the upstream control-plane binaries into the version-keyed cache
	@hack/build-tools.sh

# Where cargo puts release binaries (CARGO_TARGET_DIR when set, as cargo itself does).
RELEASE_DIR = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release

bench: ## measure vnest vs direct on the host with a release syncer (starts `make up` in process mode if needed), rewrite docs/performance.md; PODS=N (1000), RESTART_PODS=N (10000; 0 skips the restart at scale), QUICK=1, KUBE_BURNER=1, NO_DOCS=1
	@[ -f .e2e/env ] || VNEST_RUNTIME=processes hack/up.sh
	@cargo build --quiet --release -p vnest --bin vnest -p vnest-e2e --bin bench
	@VNEST_OVERRIDE=$(RELEASE_DIR)/vnest hack/syncer.sh restart
	@VNEST_OVERRIDE=$(RELEASE_DIR)/vnest $(RELEASE_DIR)/bench \
		$(if $(QUICK),--quick,--pods $${PODS:-1000}) $(if $(RESTART_PODS),--restart-pods $(RESTART_PODS)) $(if $(KUBE_BURNER),--kube-burner) $(if $(NO_DOCS),--no-docs)

image: ## build the image vnest/vnest:<version> FROM scratch with podman (release binary) and its OCI archive under target/image/
	@hack/image.sh

schema: ## regenerate vnest.schema.json from the configuration type (the keys table for docs/reference.md: vnest schema --markdown)
	@cargo run --quiet --bin vnest -- schema > vnest.schema.json

build: ## build the vnest binary (debug)
	@cargo build --bin vnest

k3s-image: ## build the test-only rancher/k3s stand-in image with podman (hack/k3s-standin)
	@hack/k3s-standin/build-image.sh

test-k3s-image: ## go test the k3s stand-in, then run its image the way the vnest pod does
	@hack/build-tools.sh
	@cd hack/k3s-standin && K3S_STANDIN_BIN_DIR=$$($(CURDIR)/hack/build-tools.sh --print-dir) go test -count=1 .
	@hack/k3s-standin/test-image.sh
