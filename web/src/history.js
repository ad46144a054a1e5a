// The History panel of the editor: the document's moments (GET /api/history/<name>) grouped by day, a past
// version shown read-only with how it differs from the current text, and "Restore this version"
// (POST /api/docs/<name>/restore?at=...), which makes the current document equal to it as a new change.
//
// Browsing a version changes nothing for anyone: the version lives in a read-only view of its own, shown in
// place of the live editor, which stays connected underneath and keeps every edit that arrives meanwhile.
// A restore arrives in the live editor as a normal update, like anyone's edit.

import { EditorState, StateEffect, StateField } from '@codemirror/state'
import { Decoration, EditorView, WidgetType, lineNumbers } from '@codemirror/view'
import { LanguageSupport } from '@codemirror/language'
import { markdownLanguage } from '@codemirror/lang-markdown'

import { h } from './dom.js'
import { apiPath, apiProblem, callApi } from './names.js'
import { DELETE, EQUAL, INSERT, diffText } from './textdiff.js'
import { editorTheme, markdownHighlighting } from './theme.js'

const $ = (selector) => document.querySelector(selector)

/** How long the live text must rest before the diff (while browsing) or the list (otherwise) follows it. */
const DIFF_AFTER_MS = 300
const RELIST_AFTER_MS = 2000

const DAY_MS = 86400000
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' })
const dayAndClock = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' })
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
  return dayAndClock.format(date)
}

/** `moments` (newest first, as the API lists them) in runs of the same local day: [{ label, moments }]. */
export function groupMoments (moments, now = new Date()) {
  const groups = []
  for (const moment of moments) {
    const at = new Date(moment.at)
    const last = groups[groups.length - 1]
    if (last && last.day === dayOf(at)) last.moments.push(moment)
    else groups.push({ day: dayOf(at), label: dayLabel(at, now), moments: [moment] })
  }
  return groups.map(({ label, moments }) => ({ label, moments }))
}

export function formatSize (bytes) {
  if (bytes < 1024) return `${bytes} B`
  const kilo = bytes / 1024
  if (kilo < 1024) return `${kilo < 10 ? kilo.toFixed(1) : Math.round(kilo)} KB`
  const mega = kilo / 1024
  return `${mega < 10 ? mega.toFixed(1) : Math.round(mega)} MB`
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

// The differences against the current text, drawn on the version: what only the version has is
// highlighted, what only the current text has is shown struck through where it would be.

class DeletedText extends WidgetType {
  constructor (text) {
    super()
    this.text = text
  }

  eq (other) {
    return other.text === this.text
  }

  toDOM () {
    return h('del', { class: 'cm-diff-delete', title: 'Only in the current text' }, this.text)
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

const inserted = Decoration.mark({ class: 'cm-diff-insert', attributes: { title: 'Only in this version' } })

/** The decorations that show `ops` (current text -> version) on the version's text; and their counts. */
function decorationsFor (ops) {
  const ranges = []
  let position = 0
  let insertions = 0
  let deletions = 0
  for (const [op, text] of ops) {
    if (op === EQUAL) {
      position += text.length
    } else if (op === INSERT) {
      ranges.push(inserted.range(position, position + text.length))
      position += text.length
      insertions++
    } else if (op === DELETE) {
      ranges.push(Decoration.widget({ widget: new DeletedText(text), side: -1 }).range(position))
      deletions++
    }
  }
  return { decorations: Decoration.set(ranges, true), insertions, deletions }
}

/**
 * Set up the History button and panel. `text` is the live Y.Text (the diff follows it), `live` the live
 * EditorView (hidden while a version is shown). Returns `{ setWritable, close }`: restore is offered only
 * while `setWritable(true)` says this page may change the document; `close()` ends browsing and hides it.
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

  let writable = false
  let moments = []
  let listing = null // the list request in flight
  let relistTimer = 0
  let browsing = null // { moment, view, versionText, timer }
  let choosing = 0 // the latest choice: an older answer that comes late is dropped

  const say = (message) => {
    note.textContent = message
    note.hidden = !message
  }

  const renderList = () => {
    if (!moments.length) {
      list.replaceChildren(h('p', { class: 'history-empty' }, 'No history yet: it starts with the first change.'))
      return
    }
    const now = new Date()
    list.replaceChildren(...groupMoments(moments, now).map(({ label, moments: ofDay }) =>
      h('section', { class: 'history-day' },
        h('h3', { class: 'history-day-title' }, label),
        h('ol', { class: 'history-moments' }, ofDay.map((moment) => {
          const about = describeMoment(moment, now)
          const isLatest = moment === moments[0]
          return h('li', {},
            h('button', {
              type: 'button',
              class: 'moment',
              'data-at': moment.at,
              'aria-current': browsing?.moment.at === moment.at ? 'true' : false,
              onclick: () => choose(moment)
            },
            h('span', { class: 'moment-head' },
              h('span', { class: 'moment-time' }, about.time),
              isLatest ? h('span', { class: 'moment-latest' }, 'Latest') : null
            ),
            about.restore ? h('span', { class: 'moment-restore' }, about.restore) : null,
            h('span', { class: 'moment-detail' }, `${about.changes} · ${about.size}`),
            about.people ? h('span', { class: 'moment-people' }, about.people) : null
            )
          )
        }))
      )
    ))
  }

  const load = async () => {
    if (listing) return listing
    listing = (async () => {
      if (!moments.length) list.replaceChildren(h('p', { class: 'history-empty' }, 'Loading the history…'))
      try {
        const answer = await callApi(apiPath('/api/history', name))
        if (answer.status === 404) moments = []
        else if (answer.status !== 200) throw new Error(apiProblem(answer))
        else moments = answer.body.moments
        renderList()
      } catch (error) {
        list.replaceChildren(h('p', { class: 'history-empty', role: 'alert' },
          `Couldn’t load the history: ${error.name === 'Error' ? error.message : apiProblem(error)}.`))
      } finally {
        listing = null
      }
    })()
    return listing
  }

  const showVersion = (shown) => {
    paper.classList.toggle('is-browsing', shown)
    version.hidden = !shown
    if (!shown) live.requestMeasure()
  }

  const choose = async (moment) => {
    endBrowsing()
    const choice = ++choosing
    say('')
    showVersion(true)
    browsing = { moment, view: null, versionText: null, timer: 0 }
    $('#version-when').textContent = `${dayLabel(new Date(moment.at))}, ${clock.format(new Date(moment.at))}`
    $('#version-legend').hidden = true
    problem.hidden = true
    restoreButton.hidden = true
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
    restoreButton.hidden = !writable
    compare()
    text.observe(onLiveChange)
  }

  // The differences against the live text as it is now; again whenever it rests after a change.
  const compare = () => {
    if (!browsing?.view) return
    const { decorations, insertions, deletions } = decorationsFor(diffText(plainLines(text.toString()), browsing.versionText))
    browsing.view.dispatch({ effects: setDifferences.of(decorations) })
    $('#version-summary').textContent = insertions || deletions
      ? 'Compared with the current text:'
      : 'The same as the current text.'
    $('#version-legend').hidden = false
    $('#version-key').hidden = !(insertions || deletions)
  }

  const onLiveChange = () => {
    if (!browsing) return
    clearTimeout(browsing.timer)
    browsing.timer = setTimeout(compare, DIFF_AFTER_MS)
  }

  const endBrowsing = () => {
    if (!browsing) return
    clearTimeout(browsing.timer)
    if (browsing.view) {
      text.unobserve(onLiveChange) // observed once the view was made
      browsing.view.destroy()
    }
    browsing = null
    choosing++
    $('#version-text').replaceChildren()
    showVersion(false)
    renderList()
  }

  const restore = async () => {
    const moment = browsing?.moment
    if (!moment) return
    restoreButton.disabled = true
    problem.hidden = true
    let answer
    try {
      answer = await callApi(apiPath('/api/docs', name, `/restore?at=${encodeURIComponent(moment.at)}`), { method: 'POST' })
    } catch (error) {
      answer = { status: 0, body: { error: apiProblem(error) } }
    } finally {
      restoreButton.disabled = false
    }
    if (answer.status !== 200) {
      problem.textContent = `Couldn’t restore this version: ${apiProblem(answer)}.`
      problem.hidden = false
      return
    }
    endBrowsing()
    say(`Restored the version of ${momentTime(new Date(moment.at))}. Everyone sees it now; it can be undone by restoring the moment before it.`)
    live.focus()
    load()
  }

  // While the panel is open, the list follows the document: a restore, or others' edits, make new moments.
  const onTextChange = () => {
    if (panel.hidden || browsing) return
    clearTimeout(relistTimer)
    relistTimer = setTimeout(load, RELIST_AFTER_MS)
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
    endBrowsing()
    if (panel.hidden) return
    clearTimeout(relistTimer)
    text.unobserve(onTextChange)
    panel.hidden = true
    document.body.classList.remove('history-open')
    button.setAttribute('aria-expanded', 'false')
  }

  button.addEventListener('click', () => (panel.hidden ? open() : close()))
  $('#history-close').addEventListener('click', () => {
    close()
    button.focus()
  })
  $('#version-back').addEventListener('click', () => {
    close()
    live.focus()
  })
  restoreButton.addEventListener('click', restore)
  panel.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') browsing ? endBrowsing() : close()
  })

  return {
    setWritable (canWrite) {
      writable = canWrite
      restoreButton.hidden = !canWrite || !browsing?.view
    },
    close
  }
}
