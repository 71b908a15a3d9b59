#!/usr/bin/env bash
# Builds the Python and JavaScript extensions (and the language templates) from source with
# pinned tools installed into the project-local, gitignored `.tools/`.
#
#   scripts/build-polyglot.sh            build what changed
#   scripts/build-polyglot.sh --tools    only install the pinned tools
#
# Outputs (gitignored): extensions/python-pool.wasm, extensions/js-tiered.wasm,
# target/templates/template-{python,javascript}.wasm. The Rust template is a workspace crate:
# target/templates/template-rust.wasm. Each output is rebuilt only when its sources, the WIT or
# the tool version changed (a stamp of their hash sits in .tools/stamps/).
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="$root/.tools"
wit="${SANDBOXER_WIT_DIR:-$root/wit}"
world=backend-extension
mkdir -p "$tools/stamps" target/templates

say() { printf 'build-polyglot: %s\n' "$*" >&2; }

for tool in python3 node npm; do
  if ! command -v "$tool" >/dev/null; then
    say "needs $tool on PATH (Python >= 3.10 with venv, Node.js >= 20 with npm): install it, then rerun"
    exit 1
  fi
done

install_py() {
  local have=""
  [[ -x "$tools/py/bin/componentize-py" ]] && have="$("$tools/py/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')"
  if [[ "$have" != "$COMPONENTIZE_PY_VERSION" ]]; then
    say "installing componentize-py $COMPONENTIZE_PY_VERSION into .tools/py"
    python3 -m venv "$tools/py"
    "$tools/py/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
  fi
}

install_js() {
  local pkg="$tools/js/node_modules/@bytecodealliance/componentize-js/package.json" have=""
  [[ -f "$pkg" ]] && have="$(node -p "require('$pkg').version")"
  if [[ "$have" != "$COMPONENTIZE_JS_VERSION" ]]; then
    say "installing @bytecodealliance/componentize-js $COMPONENTIZE_JS_VERSION into .tools/js"
    npm install --silent --no-audit --no-fund --prefix "$tools/js" \
      "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
  fi
}

# fresh NAME OUT INPUT... : true when OUT exists and was built from these inputs and tools.
fresh() {
  local name="$1" out="$2"; shift 2
  local sum
  sum="$( { echo "py=$COMPONENTIZE_PY_VERSION js=$COMPONENTIZE_JS_VERSION"; \
            find "$wit" "$@" -type f \( -name '*.wit' -o -name '*.py' -o -name '*.js' \) \
              -not -path '*/__pycache__/*' -not -name 'test_*' -not -path '*/test/*' -print0 \
            | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)"
  echo "$sum" > "$tools/stamps/$name.want"
  [[ -f "$out" && -f "$tools/stamps/$name" && "$(cat "$tools/stamps/$name")" == "$sum" ]]
}
stamp() { mv "$tools/stamps/$1.want" "$tools/stamps/$1"; }

# build_py NAME SRC_DIR MODULE OUT
build_py() {
  local name="$1" src="$2" module="$3" out="$4"
  # The pure logic's unit tests gate every build (they take well under a second).
  if [[ -n "$(find "$src" -maxdepth 1 -name 'test_*.py' -print -quit)" ]]; then
    say "$name: unit tests (python3 -m unittest)"
    (cd "$src" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q)
  fi
  if fresh "$name" "$out" "$src"; then say "$name: up to date"; return; fi
  say "$name: componentize-py -> $out"
  # componentize-py resolves the app module from the working directory.
  (cd "$src" && "$tools/py/bin/componentize-py" -d "$wit" -w "$world" componentize "$module" -o "$out.tmp")
  mv "$out.tmp" "$out"
  stamp "$name"
}

# build_js NAME ENTRY OUT
build_js() {
  local name="$1" entry="$2" out="$3"
  local tests
  tests="$(dirname "$(dirname "$entry")")/test"
  if [[ -d "$tests" ]]; then
    say "$name: unit tests (node --test)"
    node --test --test-reporter=dot "$tests" >&2
  fi
  if fresh "$name" "$out" "$(dirname "$entry")"; then say "$name: up to date"; return; fi
  say "$name: componentize-js -> $out"
  # -d http fetch-event: without it StarlingMonkey imports wasi:http, which no extension is
  # granted by default. No --aot: it downloads a compiler at build time and fails offline.
  "$tools/js/node_modules/.bin/componentize-js" "$entry" --wit "$wit" -n "$world" \
    -d http fetch-event -o "$out.tmp" >/dev/null
  mv "$out.tmp" "$out"
  stamp "$name"
}

install_py
install_js
[[ "${1:-}" == "--tools" ]] && exit 0

build_py python-pool "$root/extensions/python-pool" app "$root/extensions/python-pool.wasm"
build_js js-tiered "$root/extensions/js-tiered/src/index.js" "$root/extensions/js-tiered.wasm"
build_py template-python "$root/extensions/templates/python" app "$root/target/templates/template-python.wasm"
build_js template-javascript "$root/extensions/templates/javascript/src/index.js" \
  "$root/target/templates/template-javascript.wasm"

say "template-rust: cargo build --release --target wasm32-wasip2 -p template-rust"
cargo build --quiet --release --target wasm32-wasip2 -p template-rust
cp target/wasm32-wasip2/release/template_rust.wasm target/templates/template-rust.wasm

for f in extensions/python-pool.wasm extensions/js-tiered.wasm target/templates/template-*.wasm; do
  say "$(printf '%-45s %6d KiB' "$f" $(( $(stat -c %s "$f") / 1024 )))"
done
