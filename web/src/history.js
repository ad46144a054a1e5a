// The History panel of the editor: the document's moments (GET /api/history/<name>) grouped by day, a past
// version shown read-only with how it differs from the current text, and "Restore this version"
// (POST /api/docs/<name>/restore?at=...), which makes the current document equal to it as a new change.
//
// Browsing a version changes nothing for anyone: the version lives in a read-only view of its own, shown in
// place of the live editor, which stays connected underneath and keeps every edit that arrives meanwhile.
// A restore arrives in the live editor as a normal update, like anyone's edit; the others are told who
// restored what through the awareness state (a `restored` field the restorer sets for a few seconds).

import { EditorState, StateEffect, StateField } from '@codemirror/state'
import { Decoration, EditorView, WidgetType, lineNumbers } from '@codemirror/view'
import { LanguageSupport } from '@codemirror/language'
import { markdownLanguage } from '@codemirror/lang-markdown'
import { ySyncFacet } from 'y-codemirror.next'

import { $, formatDateTime, formatSize, h } from './dom.js'
import { apiPath, apiProblem, callApi } from './names.js'
import { EQUAL, diffText, placeDifferences } from './textdiff.js'
import { editorTheme, markdownHighlighting } from './theme.js'

/** How long the live text must rest before the diff follows it. */
const DIFF_AFTER_MS = 300
/**
 * While the panel is open, the list follows the edits: once they rest this long, and at least this often
 * while they go on (a peer typing every second would otherwise keep it waiting for ever).
 */
const RELIST_AFTER_MS = 2000
const RELIST_AT_LEAST_MS = 5000
/** How long the others see "Ada restored the version of ...", and the restorer's awareness says so. */
const RESTORE_NOTICE_MS = 8000

const DAY_MS = 86400000
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' })
const dayName = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' })
const dayNameAndYear = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' })

/** `text` with every line break as "\n": what CodeMirror counts positions in, and the diff must too. */
const plainLines = (text) => text.replace(/\r\n?/g, '\n')

/** Local midnight of `date`, as a number: the key of its day. */
function dayOf (date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime()
}

/** "Today", "Yesterday", or the day's name and date (with the year when it is not this year's). */
export function dayLabel (date, now = new Date()) {
  const days = Math.round((dayOf(now) - dayOf(date)) / DAY_MS)
  if (days === 0) return 'Today'
  if (days === 1) return 'Yesterday'
  return (date.getFullYear() === now.getFullYear() ? dayName : dayNameAndYear).format(date)
}

/** A time for a person: the clock today, "yesterday" and the clock, or the date and the clock. */
export function momentTime (date, now = new Date()) {
  const days = Math.round((dayOf(now) - dayOf(date)) / DAY_MS)
  if (days === 0) return clock.format(date)
  if (days === 1) return `yesterday ${clock.format(date)}`
  return formatDateTime(date)
}

/** `moments` (newest first, as the API lists them) in runs of the same local day: [{ day, label, moments }]. */
export function groupMoments (moments, now = new Date()) {
  const groups = []
  for (const moment of moments) {
    const at = new Date(moment.at)
    const last = groups[groups.length - 1]
    if (last && last.day === dayOf(at)) last.moments.push(moment)
    else groups.push({ day: dayOf(at), label: dayLabel(at, now), moments: [moment] })
  }
  return groups
}

/** What a moment's entry in the list says: its time (a range for a run of edits) and its details. */
export function describeMoment (moment, now = new Date()) {
  const at = new Date(moment.at)
  const from = new Date(moment.from ?? moment.at)
  const end = clock.format(at)
  const start = clock.format(from)
  return {
    time: start === end || dayOf(from) !== dayOf(at) ? end : `${start} – ${end}`,
    changes: `${moment.changes} ${moment.changes === 1 ? 'change' : 'changes'}`,
    size: formatSize(moment.bytes),
    people: moment.people.join(', '),
    restore: moment.restore_of ? `Restored to ${momentTime(new Date(moment.restore_of), now)}` : null
  }
}

/**
 * What another page's awareness state says it restored just now, as the notice to show, or null. The field
 * comes from any client, so only a well-formed one is shown.
 */
export function restoreNotice (state, now = new Date()) {
  const restored = state?.restored
  if (!restored || typeof restored.at !== 'string' || typeof restored.by !== 'string') return null
  const at = new Date(restored.at)
  if (Number.isNaN(at.getTime())) return null
  const by = restored.by.trim().slice(0, 64) || 'Someone'
  return `${by} restored the version of ${momentTime(at, now)}`
}

// The differences against the current text, drawn on the version: what only the version has is
// highlighted (whole new lines too, so that a new blank line shows), what only the current text has is
// shown struck through where it would be (whole lines as lines of their own).

class DeletedText extends WidgetType {
  constructor (text, lines) {
    super()
    this.text = text
    this.lines = lines
  }

  eq (other) {
    return other.text === this.text && Boolean(other.lines) === Boolean(this.lines)
  }

  toDOM () {
    if (!this.lines) return h('del', { class: 'cm-diff-delete', title: 'Only in the current text' }, this.text)
    return h('div', { class: 'cm-diff-deleted-lines', title: 'Only in the current text' },
      this.lines.map((line) => h('del', { class: `cm-diff-delete cm-diff-deleted-line${line ? '' : ' is-blank'}` }, line)))
  }
}

const setDifferences = StateEffect.define()

const differences = StateField.define({
  create: () => Decoration.none,
  update: (decorations, transaction) => {
    for (const effect of transaction.effects) if (effect.is(setDifferences)) return effect.value
    return decorations
  },
  provide: (field) => EditorView.decorations.from(field)
})

const inserted = Decoration.mark({ tagName: 'ins', class: 'cm-diff-insert', attributes: { title: 'Only in this version' } })
const insertedLine = Decoration.line({ class: 'cm-diff-inserted-line' })

/** The decorations that show `ops` (current text -> version) on the version's text. */
function decorationsFor (ops) {
  const { insertions, insertedLines, deletions } = placeDifferences(ops)
  const ranges = [
    ...insertions.map(([from, to]) => inserted.range(from, to)),
    ...insertedLines.map((start) => insertedLine.range(start)),
    ...deletions.map(({ at, text, lines, side }) =>
      Decoration.widget({ widget: new DeletedText(text, lines), side, block: Boolean(lines) }).range(at))
  ]
  return Decoration.set(ranges, true)
}

/**
 * Put `children` in `parent`, in order, moving as few as possible: an element kept in place keeps the
 * focus (a moved or replaced one loses it), so a list redrawn while someone moves through it with the
 * keyboard leaves them where they were.
 */
function placeChildren (parent, children) {
  const wanted = new Set(children)
  for (const child of [...parent.children]) if (!wanted.has(child)) child.remove()
  let next = parent.firstElementChild
  for (const child of children) {
    if (child === next) next = next.nextElementSibling
    else parent.insertBefore(child, next)
  }
}

/**
 * Set up the History button and panel. `text` is the live Y.Text (the diff follows it), `live` the live
 * EditorView (hidden while a version is shown; its awareness carries the restore notices). Returns
 * `{ setWritable, close }`: restore is offered only while `setWritable(true)` says this page may change
 * the document; `close()` ends browsing and hides the panel.
 */
export function setUpHistory ({ name, text, live }) {
  const button = $('#history-button')
  const panel = $('#history-panel')
  const list = $('#history-list')
  const note = $('#history-note')
  const paper = $('#paper')
  const version = $('#version')
  const restoreButton = $('#version-restore')
  const problem = $('#version-problem')
  const awareness = live.state.facet(ySyncFacet).awareness

  let writable = false
  let moments = []
  let listing = null // the list request in flight
  let listAgain = false // the text changed while it was in flight: ask again once it is answered
  let relistTimer = 0
  let relistBy = 0 // when the list is fetched at the latest while edits go on
  let browsing = null // { moment, view, versionText, timer, same }
  let choosing = 0 // the latest choice: an older answer that comes late is dropped
  let restoring = false

  // The list's elements, kept from one drawing to the next: a moment's item by the time it starts (its `at`
  // moves on while a sitting goes on), a day's section by the day.
  let entries = new Map()
  let days = new Map()
  const drawn = new WeakMap() // a moment's button -> what it says

  const say = (message) => {
    note.textContent = message
    note.hidden = !message
  }

  const keyOf = (moment) => moment.from ?? moment.at
  const isBrowsed = (moment) => browsing !== null && keyOf(browsing.moment) === keyOf(moment)

  /** The list item of `moment`: the one drawn before if any, brought up to date (its text only if it changed). */
  const entryFor = (moment, now) => {
    const item = entries.get(keyOf(moment)) ?? h('li', {}, h('button', { type: 'button', class: 'moment' }))
    const entry = item.firstElementChild
    const about = { ...describeMoment(moment, now), latest: moment === moments[0] }
    entry.dataset.at = moment.at
    entry.setAttribute('aria-current', isBrowsed(moment) ? 'true' : 'false')
    entry.onclick = () => choose(moment)
    const says = JSON.stringify(about)
    if (drawn.get(entry) === says) return item
    drawn.set(entry, says)
    entry.replaceChildren(...[
      h('span', { class: 'moment-head' },
        h('span', { class: 'moment-time' }, about.time),
        about.latest ? h('span', { class: 'moment-latest' }, 'Latest') : null
      ),
      about.restore ? h('span', { class: 'moment-restore' }, about.restore) : null,
      h('span', { class: 'moment-detail' }, `${about.changes} · ${about.size}`),
      about.people ? h('span', { class: 'moment-people' }, about.people) : null
    ].filter(Boolean))
    return item
  }

  const sectionFor = (day, label) => {
    const section = days.get(day) ??
      h('section', { class: 'history-day' }, h('h3', { class: 'history-day-title' }), h('ol', { class: 'history-moments' }))
    section.firstElementChild.textContent = label
    return section
  }

  const renderList = () => {
    if (!moments.length) {
      entries = new Map()
      days = new Map()
      list.replaceChildren(h('p', { class: 'history-empty' }, 'No history yet: it starts with the first change.'))
      return
    }
    const buttons = () => [...list.querySelectorAll('.moment')]
    const focused = list.contains(document.activeElement) ? buttons().indexOf(document.activeElement) : -1
    const now = new Date()
    const nextEntries = new Map()
    const nextDays = new Map()
    placeChildren(list, groupMoments(moments, now).map(({ day, label, moments: ofDay }) => {
      const section = sectionFor(day, label)
      nextDays.set(day, section)
      placeChildren(section.lastElementChild, ofDay.map((moment) => {
        const item = entryFor(moment, now)
        nextEntries.set(keyOf(moment), item)
        return item
      }))
      return section
    }))
    entries = nextEntries
    days = nextDays
    // The focused moment is gone (thinned out of the history): its neighbour takes the focus.
    if (focused !== -1 && !list.contains(document.activeElement)) {
      const left = buttons()
      left[Math.min(focused, left.length - 1)]?.focus()
    }
  }

  const load = async () => {
    if (listing) {
      listAgain = true
      return listing
    }
    listing = (async () => {
      if (!moments.length) list.replaceChildren(h('p', { class: 'history-empty' }, 'Loading the history…'))
      try {
        const answer = await callApi(apiPath('/api/history', name))
        if (answer.status === 404) moments = []
        else if (answer.status !== 200) throw new Error(apiProblem(answer))
        else moments = answer.body.moments
        renderList()
      } catch (error) {
        entries = new Map()
        days = new Map()
        list.replaceChildren(h('p', { class: 'history-empty', role: 'alert' },
          `Couldn’t load the history: ${error.name === 'Error' ? error.message : apiProblem(error)}.`))
      } finally {
        listing = null
      }
      const again = listAgain
      listAgain = false
      if (again && !panel.hidden) load()
    })()
    return listing
  }

  const showVersion = (shown) => {
    paper.classList.toggle('is-browsing', shown)
    version.hidden = !shown
    if (!shown) live.requestMeasure()
  }

  /** Restore is offered for a version shown, different from the current text, while none is under way. */
  const renderRestore = () => {
    restoreButton.hidden = !writable || !browsing?.view || browsing.same
    restoreButton.disabled = restoring
  }

  const choose = async (moment) => {
    if (browsing) stopBrowsing()
    const choice = ++choosing
    showVersion(true)
    browsing = { moment, view: null, versionText: null, timer: 0, same: false }
    version.focus() // the keyboard goes on from the version: its buttons, Escape back to the list
    $('#version-when').textContent = `${dayLabel(new Date(moment.at))}, ${clock.format(new Date(moment.at))}`
    $('#version-legend').hidden = true
    problem.hidden = true
    renderRestore()
    $('#version-text').replaceChildren(h('p', { class: 'version-loading' }, 'Loading this version…'))
    renderList()
    let answer
    try {
      answer = await callApi(apiPath('/api/docs', name, `?format=txt&at=${encodeURIComponent(moment.at)}`), { as: 'text' })
    } catch (error) {
      answer = { status: 0, body: { error: apiProblem(error) } }
    }
    if (choice !== choosing || !browsing) return
    if (answer.status !== 200) {
      $('#version-text').replaceChildren()
      problem.textContent = `Couldn’t show this version: ${apiProblem(answer)}.`
      problem.hidden = false
      return
    }
    browsing.versionText = plainLines(answer.body)
    browsing.view = new EditorView({
      parent: $('#version-text'),
      state: EditorState.create({
        doc: browsing.versionText,
        extensions: [
          EditorState.readOnly.of(true),
          EditorView.editable.of(false),
          EditorView.contentAttributes.of({ 'aria-label': `${name} as it was then (read only)` }),
          lineNumbers(),
          EditorView.lineWrapping,
          new LanguageSupport(markdownLanguage),
          markdownHighlighting,
          editorTheme,
          differences
        ]
      })
    })
    $('#version-text').querySelector('.version-loading')?.remove()
    compare()
    text.observe(onLiveChange)
  }

  // The differences against the live text as it is now; again whenever it rests after a change.
  const compare = () => {
    if (!browsing?.view) return
    const { ops, coarse } = diffText(plainLines(text.toString()), browsing.versionText)
    browsing.view.dispatch({ effects: setDifferences.of(decorationsFor(ops)) })
    browsing.same = ops.every(([op]) => op === EQUAL)
    $('#version-summary').textContent = browsing.same
      ? 'Same as the current text.'
      : coarse
        ? 'Too many changes to mark word by word: whole passages are marked. Compared with the current text:'
        : 'Compared with the current text:'
    $('#version-legend').hidden = false
    $('#version-key').hidden = browsing.same
    renderRestore()
  }

  const onLiveChange = () => {
    if (!browsing) return
    clearTimeout(browsing.timer)
    browsing.timer = setTimeout(compare, DIFF_AFTER_MS)
  }

  /** Hide the version and forget it; whether the focus was in it. */
  const stopBrowsing = () => {
    const hadFocus = version.contains(document.activeElement)
    clearTimeout(browsing.timer)
    if (browsing.view) {
      text.unobserve(onLiveChange) // observed once the view was made
      browsing.view.destroy()
    }
    browsing = null
    choosing++
    $('#version-text').replaceChildren()
    showVersion(false)
    renderRestore()
    return hadFocus
  }

  /** Back to the live document, the panel left open: the focus, if it was in the version, to its moment. */
  const endBrowsing = () => {
    if (!browsing) return
    const key = keyOf(browsing.moment)
    const hadFocus = stopBrowsing()
    renderList()
    if (hadFocus) (entries.get(key)?.firstElementChild ?? list.querySelector('.moment') ?? button).focus()
    load() // what happened meanwhile
  }

  const restore = async () => {
    const moment = browsing?.moment
    if (!moment || restoring) return
    restoring = true
    renderRestore()
    problem.hidden = true
    const when = momentTime(new Date(moment.at))
    let answer
    try {
      answer = await callApi(apiPath('/api/docs', name, `/restore?at=${encodeURIComponent(moment.at)}`), { method: 'POST' })
    } catch (error) {
      answer = { status: 0, body: { error: apiProblem(error) } }
    } finally {
      restoring = false
    }
    const stillShown = browsing?.moment === moment // or another was chosen meanwhile: it stays open
    renderRestore()
    if (answer.status !== 200) {
      const message = `Couldn’t restore the version of ${when}: ${apiProblem(answer)}.`
      if (stillShown) {
        problem.textContent = message
        problem.hidden = false
      } else {
        say(message)
      }
      return
    }
    tellOthers(moment)
    say(`Restored the version of ${when}. Everyone sees it now; it can be undone by restoring the moment before it.`)
    if (stillShown) {
      endBrowsing()
      live.focus()
    } else {
      load()
    }
  }

  // The others' pages show who restored what (restoreNotice), for as long as this page's awareness says so.
  let tellingTimer = 0
  const tellOthers = (moment) => {
    const by = awareness.getLocalState()?.user?.name ?? ''
    awareness.setLocalStateField('restored', { at: moment.at, by })
    clearTimeout(tellingTimer)
    tellingTimer = setTimeout(() => awareness.setLocalStateField('restored', null), RESTORE_NOTICE_MS)
  }

  const notice = h('p', { class: 'restore-notice', role: 'status', hidden: true })
  document.body.append(notice)
  let noticeTimer = 0
  const told = new Map() // client id -> the restore it was last shown for
  awareness.on('change', ({ updated, removed }) => {
    for (const id of removed) told.delete(id)
    // Only changes: a page arriving later is not told of a restore made before it came.
    for (const id of updated) {
      if (id === awareness.clientID) continue
      const state = awareness.getStates().get(id)
      const seen = JSON.stringify(state?.restored ?? null)
      if (told.get(id) === seen) continue
      told.set(id, seen)
      const message = restoreNotice(state)
      if (!message) continue
      notice.textContent = message
      notice.hidden = false
      clearTimeout(noticeTimer)
      noticeTimer = setTimeout(() => { notice.hidden = true }, RESTORE_NOTICE_MS)
    }
  })

  // While the panel is open, the list follows the document: a restore, or others' edits, make new moments.
  const relist = () => {
    relistTimer = 0
    load()
  }
  const onTextChange = () => {
    if (panel.hidden) return
    const now = Date.now()
    if (!relistTimer) relistBy = now + RELIST_AT_LEAST_MS
    clearTimeout(relistTimer)
    relistTimer = setTimeout(relist, Math.max(0, Math.min(RELIST_AFTER_MS, relistBy - now)))
  }

  const open = () => {
    panel.hidden = false
    document.body.classList.add('history-open')
    button.setAttribute('aria-expanded', 'true')
    say('')
    load()
    text.observe(onTextChange)
  }

  const close = () => {
    if (browsing) stopBrowsing()
    if (panel.hidden) return
    clearTimeout(relistTimer)
    relistTimer = 0
    text.unobserve(onTextChange)
    panel.hidden = true
    document.body.classList.remove('history-open')
    button.setAttribute('aria-expanded', 'false')
  }

  version.tabIndex = -1
  button.addEventListener('click', () => (panel.hidden ? open() : close()))
  $('#history-close').addEventListener('click', () => {
    close()
    button.focus()
  })
  $('#version-back').addEventListener('click', () => {
    endBrowsing()
    live.focus()
  })
  restoreButton.addEventListener('click', restore)
  version.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return
    event.preventDefault()
    endBrowsing()
  })
  panel.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return
    event.preventDefault()
    if (browsing) {
      endBrowsing()
    } else {
      close()
      button.focus()
    }
  })

  return {
    setWritable (canWrite) {
      writable = canWrite
      renderRestore()
    },
    close
  }
}
