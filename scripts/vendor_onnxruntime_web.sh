#!/usr/bin/env bash
# Vendor onnxruntime-web (the WASM backend only) into the app, from npm, at a pinned version.
#
# Why vendored: the app must work offline and load nothing from a CDN, so the runtime ships inside the
# Python package (src/skinscan/app/vendor/onnxruntime-web/). Only what the WASM backend with SIMD +
# threads needs is copied: the ES-module API (ort.wasm.min.mjs), its Emscripten loader
# (ort-wasm-simd-threaded.mjs) and the .wasm binary; no WebGPU/WebGL/JSPI variants, no source maps.
# The tarball is checked against the pinned sha512 (npm's `integrity`) before anything is copied.
#
# Usage: bash scripts/vendor_onnxruntime_web.sh            (re-run after changing VERSION/INTEGRITY)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="1.30.0"
INTEGRITY="sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
FILES=(ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)
DEST="src/skinscan/app/vendor/onnxruntime-web"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null)
tarball="$work/onnxruntime-web-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$INTEGRITY" ]]; then
  echo "onnxruntime-web $VERSION tarball does not match the pinned integrity ($actual); refusing to vendor it" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"

rm -rf "$DEST"
mkdir -p "$DEST"
for name in "${FILES[@]}"; do
  cp "$work/package/dist/$name" "$DEST/$name"
done
# The npm tarball carries no LICENSE file; its package.json says MIT and the upstream repository's
# LICENSE is the MIT text below (https://github.com/microsoft/onnxruntime/blob/main/LICENSE).
cat > "$DEST/LICENSE" <<'EOF'
MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
EOF
printf '{"package": "onnxruntime-web", "version": "%s", "integrity": "%s", "files": [%s]}\n' \
  "$VERSION" "$INTEGRITY" "$(printf '"%s",' "${FILES[@]}" | sed 's/,$//')" > "$DEST/VERSION.json"
du -ch "$DEST"/* | tail -1 | sed "s|total|onnxruntime-web $VERSION vendored into $DEST|"
