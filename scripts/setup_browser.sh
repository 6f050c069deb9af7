#!/usr/bin/env bash
# Install what the browser tests (tests/test_app.py) and benchmarks/app_frame_time.py need: Debian's
# Chromium and Node.js (apt), and playwright-core from tests/browser/package-lock.json (npm ci). Idempotent:
# does nothing that is already done. playwright-core drives the system Chromium and never downloads one.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then SUDO="sudo"; fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup_browser: installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 20)); then
  echo "setup_browser: playwright-core needs Node.js 20 or newer, found $(node --version)" >&2
  exit 1
fi

# npm ci only when node_modules is missing or older than the lock file.
lock="tests/browser/package-lock.json"
installed="tests/browser/node_modules/.package-lock.json"
if [[ ! -f "$installed" || "$lock" -nt "$installed" ]]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup_browser: $(chromium --version 2>/dev/null | head -1), node $(node --version), playwright-core" \
  "$(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version')"
