# Tandem: every set-up step a fresh machine needs is here.
#   make rules   build the sample rules to wasm (installs the wasm32 target)
#   make run     build the rules and the daemon, start a standalone node
#   make test    build the rules and the binary, run every test
#   make bench   criterion benches (figures go to docs/performance.md)
#   make lint    rustfmt and clippy, warnings are errors
#   make demo    a primary and a secondary on loopback: kill, failover, handback

CARGO       ?= cargo
WASM_TARGET := wasm32-unknown-unknown
RULES       := panic-button failover-notify door-held-open threshold
WASM_DIR    := target/$(WASM_TARGET)/release

# Debian packages the tests run for real, installed when missing: curl and
# sqlite3 (the docs test runs them as the docs show them), and aiosmtpd, the
# SMTP server of the delivery tests, under Debian's own /usr/bin/python3.
TEST_TOOLS  := sqlite3 curl
# etcd (Debian's etcd-server, the binary `etcd`): the cluster tests start
# their own on loopback ports. protoc (protobuf-compiler) is what the
# etcd-client crate's build script needs (with the well-known types of
# libprotobuf-dev), so every target that compiles
# the host depends on build-deps.

.PHONY: all wasm-target build-deps rules build test-deps test bench lint run demo clean

all: rules build

wasm-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' \
		|| rustup target add $(WASM_TARGET)

build-deps:
	@command -v protoc >/dev/null && test -f /usr/include/google/protobuf/descriptor.proto \
		|| { echo "installing protobuf-compiler libprotobuf-dev"; apt-get update -q \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends protobuf-compiler libprotobuf-dev && apt-get clean; }

rules: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(RULES))
	@ls -1 $(WASM_DIR)/*.wasm

build: build-deps
	$(CARGO) build --release -p tandem-host

test-deps: build-deps
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing="$$missing python3-aiosmtpd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	test -d /usr/share/fonts/truetype/liberation || missing="$$missing fonts-liberation"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing && apt-get clean; \
	fi

test: rules test-deps
	$(CARGO) build -p tandem-host --bin tandem
	$(CARGO) test --workspace

bench: rules build test-deps
	$(CARGO) bench -p tandem-host --bench engine --bench node --bench failover --bench sync --bench delivery
	TANDEM_BIN=$(CURDIR)/target/release/tandem $(CARGO) bench -p tandem-tests --bench cluster

lint: build-deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

run: rules build
	@mkdir -p data/rules
	@cp $(WASM_DIR)/panic_button.wasm $(WASM_DIR)/failover_notify.wasm \
		$(WASM_DIR)/door_held_open.wasm $(WASM_DIR)/threshold.wasm data/rules/
	@echo
	@echo "Starting a standalone node on http://127.0.0.1:8080 with the sample rules (Ctrl-C stops it)."
	@echo "Send a panic signal from another terminal:"
	@echo
	@echo "  curl -s -H 'Authorization: Bearer ingest-token' http://127.0.0.1:8080/api/v1/signals \\"
	@echo "       -d '{\"name\": \"PANIC-1\", \"source\": \"button-7\", \"fields\": {\"location\": \"reception\"}}'"
	@echo
	@echo "The notification appears in this log (the log sink, target tandem::notify) and in"
	@echo "  curl -s -H 'Authorization: Bearer admin-token' http://127.0.0.1:8080/api/v1/notifications"
	@echo
	@echo "FAILOVER-* signals are raised by the host only; dry-run the FAILOVER-ON rule with:"
	@echo "  ./target/release/tandem rule run $(WASM_DIR)/failover_notify.wasm --signal FAILOVER-ON \\"
	@echo "       --field primary=dev4120 --field down_since=1763780000000"
	@echo
	./target/release/tandem serve --config examples/standalone.toml

demo: rules build
	./scripts/demo.sh

clean:
	$(CARGO) clean
