#!/usr/bin/env bash
# Tests of the Python client (clients/python) against a real `sandboxer-host run`: makes a
# venv under target/python-venv with the pinned test dependencies (requirements-test.txt),
# installs the package into it, and runs pytest. Needs target/debug/sandboxer-host,
# sandboxer and sandboxer-agent (built by `cargo test` / `make test`) and the built
# extensions (extensions/saas-stub.wasm, extensions/local.wasm: `make extensions`).
# SANDBOXER_BIN_DIR overrides where the binaries are; extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/python-venv"
stamp="$venv/.requirements"

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements-test.txt" "$stamp"; then
    echo "python client: making $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-test.txt"
    cp "$here/requirements-test.txt" "$stamp"
fi
# The package itself, reinstalled every run (it is small): what the tests import is what
# a user would install, not the source folder.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --force-reinstall "$here"
rm -rf "$here/build" "$here"/src/*.egg-info

cd "$here"
export PYTHONDONTWRITEBYTECODE=1
# The package is typed (py.typed): its hints must hold under mypy --strict.
"$venv/bin/python" -m mypy --strict --cache-dir "$repo/target/python-mypy-cache" src/sandboxer
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
