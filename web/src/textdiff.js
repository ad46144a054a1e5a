// A diff of two texts for a person to read, for the history view: what a past version has that the current
// text lacks, and the other way round. Pure (strings in, operations out), so node can test it alone.
//
// Lines first, then words: the lines are compared without their line breaks (a last line without one is
// still the same line), anchored on the lines that occur once in each text (as in Bram Cohen's "patience
// diff"), and Myers' O(ND) algorithm ("An O(ND) Difference Algorithm and Its Variations", 1986) finds the
// lines added and removed between the anchors. Within each run of changed lines, the lines that were edited
// rather than replaced (most of their words alike) are paired, in order, and diffed word by word. A word
// diff of the whole text would instead anchor on any "." or line break left in common, and mark
// "Monday.\nInvite Grace" as one deletion where a person sees one word changed and one line removed.
//
// Words are made of graphemes, what a person sees as one character: "👨‍👩‍👧", "🇫🇷", "👍🏽" or "é" written
// as "e" and a combining accent are never split, so a change never shows half of one.
//
// Bounds keep a huge or wholly rewritten document from freezing the page: each Myers run stops after
// MAX_EDITS edits, and all of them together after MAX_WORK steps; past a bound, what is left of a run is
// reported as deleted and inserted whole, which is still a correct diff, only a coarse one, and the answer
// says so (`coarse`) for the page to tell the reader.

export const DELETE = -1
export const EQUAL = 0
export const INSERT = 1

export const MAX_EDITS = 2000
export const MAX_WORK = 4_000_000
/** Changed lines paired at most, per run of them: pairing compares each with each. */
export const MAX_PAIRED = 64
/** How deep the stretches between anchors are searched for anchors of their own. */
export const MAX_DEPTH = 8
/** How alike two lines must be (shared words, Dice's coefficient) to count as one line edited. */
export const ALIKE = 0.4

/**
 * One grapheme, for where Intl.Segmenter is missing (Firefox before 125): a pair of regional indicators (a
 * flag), an emoji with its modifiers, variation selectors and tags, joined to more by zero-width joiners,
 * or any other character with the combining marks after it.
 */
export const GRAPHEMES = /\r\n|\p{RI}\p{RI}|\p{Extended_Pictographic}[\p{M}\p{EMod}\u{E0020}-\u{E007F}]*(?:\u200D\p{Extended_Pictographic}[\p{M}\p{EMod}\u{E0020}-\u{E007F}]*)*|[^][\p{M}\p{EMod}\u200D]*/gu

const segmenter = typeof Intl.Segmenter === 'function' ? new Intl.Segmenter(undefined, { granularity: 'grapheme' }) : null

/** The graphemes of `text`, in order. */
function graphemes (text) {
  if (segmenter) return Array.from(segmenter.segment(text), (part) => part.segment)
  return text.match(GRAPHEMES) ?? []
}

// A word: letters, digits and what joins them (combining marks, joiners); a run of spaces; or a run of
// anything else, cut into graphemes (only runs with more than ASCII in them need the segmenter: it is slow).
const TOKENS = /[\p{L}\p{N}_][\p{L}\p{N}_\p{M}\p{EMod}\u200C\u200D]*|\s+|[^\p{L}\p{N}_\s]+/gu
const WORD_OR_SPACE = /^[\p{L}\p{N}_\s]/u
const ASCII = /^[\x21-\x7e]+$/

/** The tokens of one line (no line break in it): words, runs of spaces, and every other grapheme alone. */
function words (line) {
  const tokens = []
  for (const [token] of line.matchAll(TOKENS)) {
    if (WORD_OR_SPACE.test(token)) tokens.push(token)
    else if (ASCII.test(token)) tokens.push(...token)
    else tokens.push(...graphemes(token))
  }
  return tokens
}

/**
 * The operations that turn `before` into `after` as `{ ops, coarse }`. `ops`: [op, text] pairs (op DELETE,
 * EQUAL or INSERT), in order, no two neighbours with the same op and no empty text; EQUAL and DELETE texts
 * joined give `before`, EQUAL and INSERT texts joined give `after`. `coarse`: a bound was reached, and some
 * of what is marked deleted and inserted may be alike.
 */
export function diffText (before, after) {
  if (before === after) return { ops: before ? [[EQUAL, before]] : [], coarse: false }
  const budget = { work: MAX_WORK, coarse: false }
  const a = before.split('\n')
  const b = after.split('\n')
  // The line break after line i, if it has one (the last line has none).
  const breakA = (i) => (i < a.length - 1 ? '\n' : '')
  const breakB = (j) => (j < b.length - 1 ? '\n' : '')
  const ops = []
  const emit = (op, text) => {
    const last = ops[ops.length - 1]
    if (!text) return
    if (last && last[0] === op) last[1] += text
    else ops.push([op, text])
  }
  const lineBreaks = (i, j) => {
    if (breakA(i) && breakB(j)) emit(EQUAL, '\n')
    else if (breakA(i)) emit(DELETE, '\n')
    else if (breakB(j)) emit(INSERT, '\n')
  }
  let deleted = []
  let inserted = []
  const flush = () => {
    const pairs = pairLines(deleted.map((i) => a[i]), inserted.map((j) => b[j]))
    let d = 0
    let n = 0
    for (const [pairedD, pairedN] of pairs) {
      for (; d < pairedD; d++) emit(DELETE, a[deleted[d]] + breakA(deleted[d]))
      for (; n < pairedN; n++) emit(INSERT, b[inserted[n]] + breakB(inserted[n]))
      for (const [op, word] of diffTokens(words(a[deleted[d]]), words(b[inserted[n]]), budget)) emit(op, word)
      lineBreaks(deleted[d++], inserted[n++])
    }
    for (; d < deleted.length; d++) emit(DELETE, a[deleted[d]] + breakA(deleted[d]))
    for (; n < inserted.length; n++) emit(INSERT, b[inserted[n]] + breakB(inserted[n]))
    deleted = []
    inserted = []
  }
  let i = 0
  let j = 0
  for (const op of diffLines(a, b, budget)) {
    if (op === EQUAL) {
      if (deleted.length || inserted.length) flush()
      emit(EQUAL, a[i])
      lineBreaks(i++, j++)
    } else if (op === DELETE) {
      deleted.push(i++)
    } else {
      inserted.push(j++)
    }
  }
  flush()
  return { ops: tidy(ops), coarse: budget.coarse }
}

/**
 * Where `ops` (from diffText) show on the text they turn into, the after text: `insertions`, its [from, to)
 * ranges only in it; `insertedLines`, the start of each of its lines that is wholly new; `deletions`, what
 * only the before text has, each at the position `at` where it would be: `{ at, text, lines }`, where
 * `lines` is null for a part of a line, or the whole lines deleted there, shown before the line at `at`
 * (`side` -1) or, at the end, after the last line (`side` 1).
 */
export function placeDifferences (ops) {
  const after = ops.filter(([op]) => op !== DELETE).map(([, text]) => text).join('')
  const insertions = []
  const insertedLines = []
  const deletions = []
  let position = 0
  for (const [op, text] of ops) {
    if (op === EQUAL) {
      position += text.length
    } else if (op === INSERT) {
      insertions.push([position, position + text.length])
      insertedLines.push(...newLines(after, position, position + text.length))
      position += text.length
    } else {
      deletions.push(deletedAt(after, position, text))
    }
  }
  return { insertions, insertedLines, deletions }
}

/**
 * The lines of `after` that the insertion [from, to) makes: those whose text it covers with a line break
 * next to them. Each line break counts for one line: "a\n" inserted after "a\n" makes one empty line, not
 * the one after it too; a line with text is new whenever a break next to it is.
 */
function newLines (after, from, to) {
  const lines = []
  let claimed = -1 // the line break that the line before counted as its own
  const first = from === 0 || after[from - 1] === '\n' ? from : after.indexOf('\n', from) + 1 || -1
  for (let start = first; start !== -1;) {
    const end = after.indexOf('\n', start)
    const textEnd = end === -1 ? after.length : end
    if (start > to || textEnd > to) break
    const breakBefore = start > from ? start - 1 : -1
    const breakAfter = end !== -1 && end < to ? end : -1
    const own = breakBefore !== -1 && breakBefore !== claimed ? breakBefore : breakAfter
    if (own !== -1 || (textEnd > start && breakBefore !== -1)) lines.push(start)
    if (own !== -1) claimed = own
    if (end === -1) break
    start = end + 1
  }
  return lines
}

/** A deletion at `at` in `after`: whole lines (shown as lines of their own) or part of one. */
function deletedAt (after, at, text) {
  const lineStart = at === 0 || after[at - 1] === '\n'
  if (lineStart && text.endsWith('\n')) return { at, text, lines: text.slice(0, -1).split('\n'), side: -1 }
  if (lineStart && at === after.length) return { at, text, lines: text.split('\n'), side: -1 }
  if (at === after.length && text.startsWith('\n')) return { at, text, lines: text.slice(1).split('\n'), side: 1 }
  return { at, text, lines: null, side: -1 }
}

/** Dice's coefficient of the words (not spaces) of two lines: 1 for the same words, 0 for none shared. */
function alike (ours, theirs) {
  if (!ours.length || !theirs.length) return 0
  const counts = new Map()
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
  const wordsOf = (line) => words(line).filter((word) => /\S/u.test(word))
  const ours = deleted.map(wordsOf)
  const theirs = inserted.map(wordsOf)
  // best[i][j]: the most likeness pairing the first i deleted with the first j inserted lines can have.
  const best = Array.from({ length: m + 1 }, () => new Float64Array(n + 1))
  const score = ours.map((line) => theirs.map((other) => alike(line, other)))
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
 * The operations (op codes only: each line is the next of its side) between line lists `a` and `b`: the
 * common ends set aside, the lines found exactly once in each (and in the same order) kept as anchors, and
 * the stretches between them diffed the same way, down to MAX_DEPTH, then by Myers. Anchors keep a long
 * text with changes all over it from reaching the bounds: each stretch between two is diffed on its own.
 */
function diffLines (a, b, budget) {
  const out = []
  const walk = (startA, endA, startB, endB, depth) => {
    for (; startA < endA && startB < endB && a[startA] === b[startB]; startA++, startB++) out.push(EQUAL)
    let tail = 0
    for (; endA > startA && endB > startB && a[endA - 1] === b[endB - 1]; endA--, endB--) tail++
    const found = depth < MAX_DEPTH ? anchors(a, startA, endA, b, startB, endB) : []
    if (found.length) {
      for (const [anchorA, anchorB] of found) {
        walk(startA, anchorA, startB, anchorB, depth + 1)
        out.push(EQUAL)
        startA = anchorA + 1
        startB = anchorB + 1
      }
      walk(startA, endA, startB, endB, depth + 1)
    } else {
      for (const [op] of myersOrWhole(a.slice(startA, endA), b.slice(startB, endB), budget)) out.push(op)
    }
    for (; tail > 0; tail--) out.push(EQUAL)
  }
  walk(0, a.length, 0, b.length, 0)
  return out
}

/**
 * The lines of a[startA, endA) found exactly once there and once in b[startB, endB), as [i, j] pairs: the
 * longest list of them in the same order in both (patience sorting, O(K log K)).
 */
function anchors (a, startA, endA, b, startB, endB) {
  const seen = new Map() // line -> [count in a, index in a, count in b, index in b]
  for (let i = startA; i < endA; i++) {
    const entry = seen.get(a[i])
    if (entry) entry[0]++
    else seen.set(a[i], [1, i, 0, 0])
  }
  for (let j = startB; j < endB; j++) {
    const entry = seen.get(b[j])
    if (entry && entry[2]++ === 0) entry[3] = j
  }
  const unique = []
  for (const [countA, i, countB, j] of seen.values()) if (countA === 1 && countB === 1) unique.push([i, j])
  // unique is in the order of a already (a Map keeps the order of insertion).
  // tops[k]: the pair ending the best increasing run of length k + 1 (the one with the smallest j).
  const tops = []
  const previous = new Map()
  for (const pair of unique) {
    let low = 0
    let high = tops.length
    while (low < high) {
      const middle = (low + high) >> 1
      if (tops[middle][1] < pair[1]) low = middle + 1
      else high = middle
    }
    previous.set(pair, low > 0 ? tops[low - 1] : null)
    tops[low] = pair
  }
  const run = []
  for (let pair = tops[tops.length - 1] ?? null; pair; pair = previous.get(pair)) run.push(pair)
  return run.reverse()
}

/** The operations between token lists `a` and `b`, as [op, token] pairs: the common ends set aside, Myers between. */
function diffTokens (a, b, budget) {
  let start = 0
  while (start < a.length && start < b.length && a[start] === b[start]) start++
  let endA = a.length
  let endB = b.length
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--
    endB--
  }
  return [
    ...a.slice(0, start).map((token) => [EQUAL, token]),
    ...myersOrWhole(a.slice(start, endA), b.slice(start, endB), budget),
    ...a.slice(endA).map((token) => [EQUAL, token])
  ]
}

/** Myers' answer, or (past the bounds) `a` deleted and `b` inserted whole. */
function myersOrWhole (a, b, budget) {
  const ops = a.length && b.length ? myers(a, b, budget) : null
  if (ops) return ops
  if (a.length && b.length) budget.coarse = true
  return [...a.map((token) => [DELETE, token]), ...b.map((token) => [INSERT, token])]
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
 * Fold a run of spaces between two changes into them ("the quick fox" -> "a slow fox" reads as one replaced
 * phrase, not two replaced words), and write each run of changes as its deletions, then its insertions.
 * `ops` has no two neighbours with the same op.
 */
function tidy (ops) {
  const result = []
  const spaces = (at) => ops[at][0] === EQUAL && at > 0 && at < ops.length - 1 && /^[^\S\n]+$/.test(ops[at][1])
  for (let i = 0; i < ops.length;) {
    if (ops[i][0] === EQUAL && !spaces(i)) {
      result.push(ops[i++])
      continue
    }
    let deleted = ''
    let inserted = ''
    for (; i < ops.length && (ops[i][0] !== EQUAL || spaces(i)); i++) {
      const [op, text] = ops[i]
      if (op !== INSERT) deleted += text
      if (op !== DELETE) inserted += text
    }
    if (deleted) result.push([DELETE, deleted])
    if (inserted) result.push([INSERT, inserted])
  }
  return result
}
