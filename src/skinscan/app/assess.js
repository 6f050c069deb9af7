// The package's "cannot assess" rule (metadata `skinscan.assess`), judged exactly as skinscan/runtime/assess.py judges
// it: every check is evaluated (and "too_small", the picture's shorter side below `min_side`), and the answer
// is the failing reason that comes first in the precedence list: what the user must do first ("not a lesion
// photo" before "too dark"). The list is the package's optional `precedence`, else PRECEDENCE below, which a
// test keeps equal to Python's. Plain module, no DOM: tests/browser/assess_cases.mjs runs it in Node.

export const PRECEDENCE = ['not_a_lesion', 'not_dermoscopic', 'too_small', 'too_blurry', 'too_dark', 'too_bright'];

/** {reason, message, scores} (reason null: assessable), or null for packages without the gate. */
export function judge(spec, scores, width, height) {
  if (!spec || !scores) return null;
  const named = Object.fromEntries(spec.scores.map((name, i) => [name, scores[i]]));
  const message = (reason) => (spec.messages && spec.messages[reason]) || reason;
  const failing = Math.min(width, height) < (spec.min_side || 0) ? ['too_small'] : [];
  for (const check of spec.checks) {
    const value = named[check.score];
    const fails = Number.isNaN(value) || (check.below != null && value < check.below)
      || (check.above != null && value > check.above);
    if (fails) failing.push(check.reason);
  }
  if (failing.length === 0) return { reason: null, message: null, scores: named };
  const precedence = spec.precedence || PRECEDENCE;
  const rank = (reason) => (precedence.includes(reason) ? precedence.indexOf(reason) : precedence.length);
  const reason = failing.reduce((best, r) => (rank(r) < rank(best) ? r : best)); // the first of equals wins
  return { reason, message: message(reason), scores: named };
}
