# sandboxer-host: the two commands of the README are `make run` and `make test`.
# Guests (WebAssembly components) are built by scripts/build-extensions.sh; the host by cargo.

# Rust crates with native tests besides the host: the guests' pure logic, the crates they
# share, and the provider fakes (driven by native clients).
NATIVE_TEST_PACKAGES := -p saas-stub -p local -p e2b -p modal -p modal-proto -p guest-kit \
	-p fake-worker -p fake-e2b -p fake-modal
# Everything `make test`, `make lint` and `make bench` build natively, in one invocation.
ALL_TEST_PACKAGES := -p sandboxer-host -p sandboxer-agent $(NATIVE_TEST_PACKAGES)

.PHONY: extensions run test bench lint

## Build every extension and test guest (wasm32-wasip2; installs the target if missing).
extensions:
	bash scripts/build-extensions.sh

## Build the shipped extensions and the agent, then serve the HTTP API with the defaults
## (the host starts its own sandboxer-agent for the `local` extension: docs/agent.md).
run: extensions
	cargo build -p sandboxer-agent -p sandboxer-host
	cargo run --bin sandboxer-host -- run

## Build the extensions, then run the whole test suite (Rust, the dashboard in Chromium, the
## Python client against the real host, schemathesis fuzzing the API from its OpenAPI document).
## One cargo invocation for every crate: features resolve once, so shared dependencies are
## built once (separate invocations rebuilt serde, tokio and friends with other features).
## The agent binary the host tests start is built by it too (the agent's own tests need it).
test: extensions
	cargo test $(ALL_TEST_PACKAGES)
	bash tests/browser/run.sh
	bash clients/python/run-tests.sh
	bash tests/contract/run.sh

## Run the benchmarks (dev profile: dependencies optimised, see Cargo.toml).
bench: extensions
	cargo bench --profile dev $(ALL_TEST_PACKAGES)

## Formatting and clippy, host and guests, warnings denied.
lint:
	cargo fmt --all --check
	cargo clippy --all-targets $(ALL_TEST_PACKAGES) -- -D warnings
	cargo clippy --target wasm32-wasip2 $$(bash scripts/build-extensions.sh --packages) -- -D warnings
