// A diff of two texts for a person to read, for the history view: what a past version has that the current
// text lacks, and the other way round. Pure (strings in, operations out), so node can test it alone.
//
// Lines first, then words: Myers' O(ND) algorithm ("An O(ND) Difference Algorithm and Its Variations",
// 1986) on whole lines finds the lines added and removed; within each run of changed lines, the lines that
// were edited rather than replaced (most of their words alike) are paired, in order, and diffed word by
// word. A word diff of the whole text would instead anchor on any "." or line break left in common, and
// mark "Monday.\nInvite Grace" as one deletion where a person sees one word changed and one line removed.
//
// Bounds keep a huge or wholly rewritten document from freezing the page: each Myers run stops after
// MAX_EDITS edits, and all of them together after MAX_WORK steps; past a bound, what is left is reported as
// deleted and inserted whole, which is still a correct diff, only a coarse one.

export const DELETE = -1
export const EQUAL = 0
export const INSERT = 1

export const MAX_EDITS = 2000
export const MAX_WORK = 4_000_000
/** Changed lines paired at most, per run of them: pairing compares each with each. */
export const MAX_PAIRED = 64
/** How alike two lines must be (shared words, Dice's coefficient) to count as one line edited. */
export const ALIKE = 0.4

const LINES = /[^\n]*\n|[^\n]+/g
const WORDS = /[\p{L}\p{N}_]+|[^\S\n]+|[^]/gu

/**
 * The operations that turn `before` into `after`: [op, text] pairs (op DELETE, EQUAL or INSERT), in order,
 * no two neighbours with the same op and no empty text. EQUAL and DELETE texts joined give `before`; EQUAL
 * and INSERT texts joined give `after`.
 */
export function diffText (before, after) {
  if (before === after) return before ? [[EQUAL, before]] : []
  const budget = { work: MAX_WORK }
  const a = before.match(LINES) ?? []
  const b = after.match(LINES) ?? []
  const ops = []
  let deleted = []
  let inserted = []
  const flush = () => {
    ops.push(...changedLines(deleted, inserted, budget))
    deleted = []
    inserted = []
  }
  for (const [op, line] of diffTokens(a, b, budget)) {
    if (op === EQUAL) {
      flush()
      ops.push([EQUAL, line])
    } else if (op === DELETE) {
      deleted.push(line)
    } else {
      inserted.push(line)
    }
  }
  flush()
  return tidy(ops)
}

/** A run of changed lines: the edited ones paired and diffed by words, the others deleted or inserted whole. */
function changedLines (deleted, inserted, budget) {
  const ops = []
  let i = 0
  let j = 0
  for (const [pairedI, pairedJ] of pairLines(deleted, inserted)) {
    for (; i < pairedI; i++) ops.push([DELETE, deleted[i]])
    for (; j < pairedJ; j++) ops.push([INSERT, inserted[j]])
    ops.push(...diffTokens(deleted[i].match(WORDS), inserted[j].match(WORDS), budget))
    i++
    j++
  }
  for (; i < deleted.length; i++) ops.push([DELETE, deleted[i]])
  for (; j < inserted.length; j++) ops.push([INSERT, inserted[j]])
  return ops
}

/** Dice's coefficient of the words (not spaces) of two lines: 1 for the same words, 0 for none shared. */
function alike (first, second) {
  const words = (line) => line.match(WORDS).filter((word) => /\S/.test(word))
  const counts = new Map()
  const ours = words(first)
  const theirs = words(second)
  if (!ours.length || !theirs.length) return 0
  for (const word of ours) counts.set(word, (counts.get(word) ?? 0) + 1)
  let shared = 0
  for (const word of theirs) {
    const left = counts.get(word)
    if (left) {
      shared++
      counts.set(word, left - 1)
    }
  }
  return (2 * shared) / (ours.length + theirs.length)
}

/**
 * Which deleted and inserted lines are one line edited: [i, j] pairs, in order, chosen to be as alike as
 * possible in all (each at least ALIKE, but one line replacing one is always an edit). Longer runs than
 * MAX_PAIRED lines are not paired.
 */
function pairLines (deleted, inserted) {
  const m = deleted.length
  const n = inserted.length
  if (!m || !n || m > MAX_PAIRED || n > MAX_PAIRED) return []
  if (m === 1 && n === 1) return [[0, 0]] // one line for one: edited, however much
  // best[i][j]: the most likeness pairing the first i deleted with the first j inserted lines can have.
  const best = Array.from({ length: m + 1 }, () => new Float64Array(n + 1))
  const score = Array.from({ length: m }, (_, i) => inserted.map((line) => alike(deleted[i], line)))
  for (let i = 1; i <= m; i++) {
    for (let j = 1; j <= n; j++) {
      const paired = score[i - 1][j - 1] >= ALIKE ? best[i - 1][j - 1] + score[i - 1][j - 1] : -1
      best[i][j] = Math.max(best[i - 1][j], best[i][j - 1], paired)
    }
  }
  const pairs = []
  for (let i = m, j = n; i > 0 && j > 0;) {
    if (best[i][j] === best[i - 1][j]) i--
    else if (best[i][j] === best[i][j - 1]) j--
    else pairs.push([--i, --j])
  }
  return pairs.reverse()
}

/**
 * The operations between token lists `a` and `b`, as [op, token] pairs: the common ends set aside, then
 * Myers on the middle; the middle deleted and inserted whole past the bounds.
 */
function diffTokens (a, b, budget) {
  let start = 0
  while (start < a.length && start < b.length && a[start] === b[start]) start++
  let endA = a.length
  let endB = b.length
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--
    endB--
  }
  const head = a.slice(0, start).map((token) => [EQUAL, token])
  const tail = a.slice(endA).map((token) => [EQUAL, token])
  const middleA = a.slice(start, endA)
  const middleB = b.slice(start, endB)
  const middle = myers(middleA, middleB, budget) ??
    [...middleA.map((token) => [DELETE, token]), ...middleB.map((token) => [INSERT, token])]
  return [...head, ...middle, ...tail]
}

/** Myers' greedy forward search, its trace kept for the way back; null past MAX_EDITS or the budget. */
function myers (a, b, budget) {
  const n = a.length
  const m = b.length
  const max = Math.min(n + m, MAX_EDITS)
  const offset = max + 1
  // v[offset + k]: the furthest x reached on diagonal k (y = x - k). Step d writes the diagonals of d's
  // parity and reads only the others, so one array serves every step.
  const v = new Int32Array(2 * max + 3)
  const trace = []
  for (let d = 0; d <= max; d++) {
    trace.push(v.slice(offset - d - 1, offset + d + 2)) // step d reads only diagonals -d-1 .. d+1
    for (let k = -d; k <= d; k += 2) {
      const start = k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? v[offset + k + 1] : v[offset + k - 1] + 1
      let x = start
      let y = x - k
      while (x < n && y < m && a[x] === b[y]) {
        x++
        y++
      }
      budget.work -= 1 + x - start
      v[offset + k] = x
      if (x >= n && y >= m) return backtrack(a, b, trace, d, k)
    }
    if (budget.work < 0) return null
  }
  return null
}

/** Walk the trace from the end (step `d`, diagonal `k`) back to the start, collecting the operations. */
function backtrack (a, b, trace, d, k) {
  const ops = []
  let x = a.length
  for (; d > 0; d--) {
    const before = trace[d] // V as it was at the start of step d, diagonals -d-1 .. d+1
    const at = (diagonal) => before[diagonal + d + 1]
    const down = k === -d || (k !== d && at(k - 1) < at(k + 1)) // came from diagonal k+1: an insertion
    const previousK = down ? k + 1 : k - 1
    const previousX = at(previousK)
    for (const startX = down ? previousX : previousX + 1; x > startX; x--) ops.push([EQUAL, a[x - 1]])
    if (down) ops.push([INSERT, b[previousX - previousK]])
    else ops.push([DELETE, a[previousX]])
    x = previousX
    k = previousK
  }
  for (; x > 0; x--) ops.push([EQUAL, a[x - 1]])
  return ops.reverse()
}

/**
 * Merge neighbours with the same op, fold a run of spaces between two changes into them ("the quick fox"
 * -> "a slow fox" reads as one replaced phrase, not two replaced words), and write each run of changes as
 * its deletions, then its insertions.
 */
function tidy (ops) {
  const merged = []
  for (const [op, text] of ops) {
    if (!text) continue
    const last = merged[merged.length - 1]
    if (last && last[0] === op) last[1] += text
    else merged.push([op, text])
  }
  const result = []
  for (let i = 0; i < merged.length;) {
    const spaces = (at) => merged[at][0] === EQUAL && at > 0 && at < merged.length - 1 && /^[^\S\n]+$/.test(merged[at][1])
    if (merged[i][0] === EQUAL && !spaces(i)) {
      result.push(merged[i++])
      continue
    }
    let deleted = ''
    let inserted = ''
    for (; i < merged.length && (merged[i][0] !== EQUAL || spaces(i)); i++) {
      const [op, text] = merged[i]
      if (op !== INSERT) deleted += text
      if (op !== DELETE) inserted += text
    }
    if (deleted) result.push([DELETE, deleted])
    if (inserted) result.push([INSERT, inserted])
  }
  return result
}
