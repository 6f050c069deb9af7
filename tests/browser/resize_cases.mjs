// Runs the app's resize (src/skinscan/app/resize.js) on raw RGBA files, for tests/test_app.py to compare
// byte for byte with Pillow (skinscan.runtime.preprocess.resize_to_input). No browser needed: plain Node.
//
//   node tests/browser/resize_cases.mjs CASES.json
//   CASES: [{rgba: path, width, height, size: [H, W], resize: "center_crop" | "stretch", out: path}, ...]

import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const resizeModule = new URL('../../src/skinscan/app/resize.js', import.meta.url);
const { PillowResizer } = await import(fileURLToPath(resizeModule));

for (const c of JSON.parse(readFileSync(process.argv[2], 'utf8'))) {
  const rgba = new Uint8ClampedArray(readFileSync(c.rgba));
  const resizer = new PillowResizer(c.size, c.resize);
  const out = new Uint8Array(c.size[0] * c.size[1] * 3);
  resizer.resize(rgba, c.width, c.height, out);
  resizer.resize(rgba, c.width, c.height, out); // reused buffers give the same answer
  writeFileSync(c.out, out);
}
