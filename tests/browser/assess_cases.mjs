// Runs the app's "cannot assess" rule (src/skinscan/app/assess.js) on cases, for tests/test_gate.py to compare
// with skinscan/runtime/assess.py fed the same scores. No browser needed: plain Node.
//
//   node tests/browser/assess_cases.mjs CASES.json   ->  {"precedence": [...], "verdicts": [{reason, message}, ...]}
//   CASES: [{spec, scores, width, height}, ...]

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const { PRECEDENCE, judge } = await import(fileURLToPath(new URL('../../src/skinscan/app/assess.js', import.meta.url)));

const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const verdicts = cases.map((c) => {
  const verdict = judge(c.spec, c.scores.map((s) => (s === null ? NaN : s)), c.width, c.height);
  return verdict && { reason: verdict.reason, message: verdict.message };
});
console.log(JSON.stringify({ precedence: PRECEDENCE, verdicts }));
