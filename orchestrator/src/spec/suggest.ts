/** "Did you mean" hints for unknown fields, enum values, preset and stage names. */

/**
 * Optimal string alignment distance (Damerau-Levenshtein restricted to
 * adjacent transpositions): a swapped pair of letters counts as one typo.
 */
export function editDistance(a: string, b: string): number {
  // Three rolling rows: the transposition rule looks two rows back.
  let prev2: number[] = [];
  let prev: number[] = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, prev2[j - 2]! + 1);
      cur.push(d);
    }
    prev2 = prev;
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The candidate the user most likely meant: the closest one within 2 edits
 * (case-insensitive, and fewer edits than the input has letters, so "x" does
 * not match everything), else one the input is a prefix of (3+ letters).
 * Ties go to the earlier candidate, so list candidates in a sensible order.
 */
export function didYouMean(input: string, candidates: readonly string[]): string | null {
  const needle = input.toLowerCase();
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const d = editDistance(needle, candidate.toLowerCase());
    if (d <= 2 && d < needle.length && d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  if (best !== null) return best;
  if (needle.length >= 3) return candidates.find((c) => c.toLowerCase().startsWith(needle)) ?? null;
  return null;
}
