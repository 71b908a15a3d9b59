#!/usr/bin/env bash
# Builds every WebAssembly guest of the repository for wasm32-wasip2 and copies the
# components where the host and the tests look for them:
#   shipped extensions -> extensions/NAME.wasm
#   test guests        -> tests/guests/NAME.wasm
# Idempotent and quick when nothing changed (cargo's incremental build; files are only
# rewritten when their content changed). Run from anywhere: `bash scripts/build-extensions.sh`.
#
#   scripts/build-extensions.sh              build every guest, print what was built
#   scripts/build-extensions.sh --packages   print `-p NAME` for each Rust guest (for clippy)
set -euo pipefail

# ---- the guests: add yours here (cargo package names, built with one cargo invocation) ----
EXTENSIONS=(saas-stub e2b local modal)
TEST_GUESTS=(misbehave wrong-world)
# Guests built by their own scripts (componentize-py, componentize-js, ...): each is run
# after the Rust guests, from the repository root.
EXTRA_SCRIPTS=(scripts/build-polyglot.sh)
# --------------------------------------------------------------------------------------------

TARGET=wasm32-wasip2
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=()
for name in "${EXTENSIONS[@]}" "${TEST_GUESTS[@]}"; do
    packages+=(-p "$name")
done
if [ "${1:-}" = --packages ]; then
    echo "${packages[*]}"
    exit 0
fi

if ! command -v cargo >/dev/null; then
    echo "build-extensions: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
if ! rustc --print target-libdir --target "$TARGET" >/dev/null 2>&1 \
    || [ ! -d "$(rustc --print target-libdir --target "$TARGET")" ]; then
    if ! command -v rustup >/dev/null; then
        echo "build-extensions: the $TARGET target is missing and rustup is not installed" >&2
        exit 1
    fi
    rustup target add "$TARGET"
fi

# Everything written after this stamp is reported as "updated".
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

cargo build --release --target "$TARGET" "${packages[@]}"

out="${CARGO_TARGET_DIR:-target}/$TARGET/release"

# install SRC DEST: copy only when the content changed, so repeated runs touch nothing.
install_component() {
    local src=$1 dest=$2
    if [ ! -f "$src" ]; then
        echo "build-extensions: $src was not produced (is the crate a cdylib?)" >&2
        exit 1
    fi
    if ! cmp -s "$src" "$dest"; then
        cp "$src" "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest"
    fi
}

for name in "${EXTENSIONS[@]}"; do
    install_component "$out/${name//-/_}.wasm" "extensions/$name.wasm"
done
for name in "${TEST_GUESTS[@]}"; do
    install_component "$out/${name//-/_}.wasm" "tests/guests/$name.wasm"
done

for script in "${EXTRA_SCRIPTS[@]}"; do
    bash "$script"
done

# Every component in place, whoever built it, with its size.
echo "build-extensions: components"
shopt -s nullglob
for f in extensions/*.wasm tests/guests/*.wasm; do
    note=unchanged
    [ "$f" -nt "$stamp" ] && note=updated
    printf '  %-36s %9s bytes  %s\n' "$f" "$(wc -c <"$f" | tr -d ' ')" "$note"
done
