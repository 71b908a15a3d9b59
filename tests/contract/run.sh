#!/usr/bin/env bash
# Contract fuzzing of the HTTP API: schemathesis (pinned, requirements.txt, installed into
# the gitignored .tools/contract venv) generates requests from the OpenAPI document a real
# `sandboxer-host run` serves at /v1/openapi.json, on a free loopback port, with a temp
# state folder, the shipped extensions and profiles, a tenant with credits and the admin.
# Checks (schemathesis.toml): no 5xx, every answer matches its schema, every status is
# documented. Bounded run time (max-examples, deterministic). Needs
# target/debug/sandboxer-host and sandboxer-agent (`cargo build -p sandboxer-host -p
# sandboxer-agent`, or `make test`) and the built extensions (`make extensions`).
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
cleanup() {
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
printf '[tenants.fuzz]\ntoken = "%s"\n[admin]\ntoken = "%s"\n' "$tenant" "$admin" >"$work/sandboxer.toml"

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
# Credits enough for every create the run makes, and one running sandbox for exec/files.
api POST /v1/tenants/fuzz/credits "$admin" '{"amount":"1000000","note":"contract fuzzing"}' >/dev/null
sandbox="$(api POST /v1/sandboxes "$tenant" '{"profile":"saas-stub"}' | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')"
[[ -n "$sandbox" ]] || { say "cannot create the sandbox for exec/files"; cat "$work/host.log" >&2; exit 1; }
say "tenant fuzz with credits, sandbox $sandbox"

export SANDBOXER_CONTRACT_TENANT_TOKEN="$tenant" SANDBOXER_CONTRACT_ADMIN_TOKEN="$admin" \
    SANDBOXER_CONTRACT_SANDBOX="$sandbox"
status=0
"$venv/bin/st" --config-file "$here/schemathesis.toml" run "$url/v1/openapi.json" \
    --url "$url" --workers 2 --request-timeout 30 --no-color "$@" || status=$?
if [[ $status -ne 0 ]]; then
    say "schemathesis failed (exit $status); the host's log (last 100 lines):"
    tail -n 100 "$work/host.log" >&2
fi
exit $status
