#!/usr/bin/env bash
# Browser tests of the dashboard (docs/dashboard.md): headless Debian Chromium driven by
# playwright-core against a real `sandboxer-host run`. Needs /usr/bin/chromium (CHROMIUM
# overrides) and target/debug/sandboxer-host (built by `cargo test`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
exec node dashboard.test.mjs
