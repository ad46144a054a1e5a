// The home page, /: the documents the page's token covers (GET /api/docs, kept up to date while the page is
// visible), a field to open or create one by name (typing in it also filters the list), and, on documents
// the token may change (GET /api/access), Rename and Delete.
//
// The list is refreshed in place, row by row (keyed by name), so that a refresh every few seconds moves
// neither the focus, nor the scroll position, nor an open dialog.

import { $, formatDateTime, formatSize, formatWhen, h } from './dom.js'
import './install.js'
import { apiPath, apiProblem, callApi, editorPath, nameProblem, pageToken, withToken } from './names.js'
import { forgetCopy } from './offline.js'

const POLL_EVERY_MS = 3000
const MOST_RETRY_MS = 60000
const NOTICE_MS = 6000
const SVG = 'http://www.w3.org/2000/svg'

let documents = []
let loaded = false
let listed = false // a listing has been shown: rows that come after it are new
let access = null // GET /api/access without a doc: { access_control, access, scope } once known
let changes = 0 // deletes and renames done from this page: a listing asked for before one is stale
const rows = new Map() // document name -> its <li>, reused across refreshes
// How the listing went: failed this many times in a row (it is asked again later and later), or refused for
// good (401/403: an expired or revoked token does not start working again, so the page stops asking).
let listFailures = 0
let refused = false

/**
 * How long to wait before asking again after `failures` failed requests in a row: a poll's interval,
 * doubling with each failure up to a minute, so that a server that is away or overloaded is not asked
 * every few seconds by every open page.
 */
function retryAfter (failures) {
  return Math.min(POLL_EVERY_MS * 2 ** (failures - 1), MOST_RETRY_MS)
}

// What went wrong

/** What went wrong with a change, for a person: by status, with the server's own words. */
function problemOf ({ status, body }, { name, to }) {
  const said = body.error ? ` (${body.error})` : ''
  switch (status) {
    case 401: return `Your access link is missing, expired or revoked${said}. Open the link you were given again.`
    case 403: return `Your access link does not allow this${said}.`
    case 404: return `“${name}” no longer exists: it was deleted or renamed elsewhere.`
    case 409: return `A document named “${to}” exists already. Choose another name.`
    case 503: return `The server cannot do it right now${said}. Try again in a moment.`
    default: return `The server answered ${status}${said}.`
  }
}

// What the token allows

function covers (scope, name) {
  return name === scope || (scope.endsWith('/') && name.startsWith(scope))
}

/** Whether the page's token may delete and rename `name` (not once the server refused it). */
function canChange (name) {
  if (!access || refused) return false
  if (!access.access_control) return true
  return access.access === 'edit' && covers(access.scope, name)
}

// GET /api/access failed this many times in a row; it is asked again at the first refresh from accessDue
// (a time from Date.now()) on. Until it answers, the list shows no actions.
let accessFailures = 0
let accessDue = 0

async function loadAccess () {
  try {
    const { status, body } = await callApi('/api/access')
    if (status === 200) {
      access = body
      accessFailures = 0
      return
    }
  } catch {
    // no answer: as a refusal, asked again later
  }
  accessFailures++
  accessDue = Date.now() + retryAfter(accessFailures)
}

// The list

function icon (path) {
  const svg = document.createElementNS(SVG, 'svg')
  svg.setAttribute('viewBox', '0 0 20 20')
  svg.setAttribute('aria-hidden', 'true')
  const line = document.createElementNS(SVG, 'path')
  line.setAttribute('d', path)
  svg.append(line)
  return svg
}

const PENCIL = 'M12.5 4.5l3 3M4 16l1-4 8.5-8.5a2.1 2.1 0 0 1 3 3L8 15l-4 1z'
const BIN = 'M4 6h12M8 6V4.5h4V6M6 6l.7 9.5h6.6L14 6M8.7 9v4M11.3 9v4'

/** Rename and Delete for `row`, about the document the row names when they are pressed (a rename renames the row). */
function actionsFor (row) {
  return h('div', { class: 'doc-actions' },
    h('button', { class: 'doc-action', type: 'button', title: 'Rename', onclick: () => askRename(row.dataset.name) }, icon(PENCIL)),
    h('button', { class: 'doc-action is-danger', type: 'button', title: 'Delete', onclick: () => askDelete(row.dataset.name) }, icon(BIN))
  )
}

/**
 * The row of `doc`, made once and updated in place: its name (a rename done here keeps the row), size and
 * time, and its actions when what the token allows changed.
 */
function rowFor (doc) {
  let row = rows.get(doc.name)
  if (!row) {
    row = h('li', { class: 'doc-item' },
      h('a', { class: 'doc-row' },
        h('span', { class: 'doc-title' }, h('span', { class: 'doc-icon', 'aria-hidden': 'true' }), h('span', { class: 'doc-name-text' })),
        h('span', { class: 'doc-size' }),
        h('time', { class: 'doc-when' })
      )
    )
    if (listed) row.classList.add('is-new') // appeared since the page loaded: created elsewhere, or renamed to
    rows.set(doc.name, row)
  }
  row.dataset.name = doc.name
  row.querySelector('.doc-row').href = withToken(editorPath(doc.name))
  row.querySelector('.doc-name-text').textContent = doc.name
  row.querySelector('.doc-size').textContent = formatSize(doc.size)
  const when = row.querySelector('.doc-when')
  when.dateTime = doc.updated_at
  when.title = formatDateTime(doc.updated_at)
  when.textContent = formatWhen(doc.updated_at)
  let actions = row.querySelector('.doc-actions')
  if (canChange(doc.name) && !actions) row.append(actions = actionsFor(row))
  if (!canChange(doc.name) && actions) actions.remove()
  for (const button of row.querySelectorAll('.doc-action')) button.setAttribute('aria-label', `${button.title} ${doc.name}`)
  return row
}

/**
 * Put `wanted` in `list` in this order, moving only rows out of place, and keep the focus where it was.
 * When the row that had it goes (deleted, here or elsewhere, or filtered away), the focus goes to the row
 * that takes its place, else the one before it, else the list's heading: not back to the start of the page.
 */
function reconcile (list, wanted) {
  const focused = list.contains(document.activeElement) ? document.activeElement : null
  const before = [...list.children]
  const keep = new Set(wanted)
  for (const child of before) if (!keep.has(child)) child.remove()
  wanted.forEach((row, index) => {
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] ?? null)
  })
  if (!focused) return
  if (focused.isConnected) {
    if (document.activeElement !== focused) focused.focus({ preventScroll: true })
    return
  }
  const at = before.findIndex((row) => row.contains(focused))
  const stays = (row) => row.parentNode === list
  const next = before.slice(at + 1).find(stays) ?? before.slice(0, at).reverse().find(stays)
  ;(next?.querySelector('.doc-row') ?? $('#list-title')).focus()
}

function emptyMessage () {
  const scope = access?.access_control ? access.scope : null
  const reads = access?.access === 'view'
  if (documents.length > 0) return 'No document matches that name yet. Press Create to start it.'
  if (scope === null) return 'No documents yet. Type a name above to create the first one.'
  if (scope.endsWith('/')) {
    return reads
      ? `No documents under “${scope}” yet. Your link can read them once someone writes one.`
      : `No documents under “${scope}” yet. Type a name starting with ${scope} above to create one.`
  }
  return reads
    ? `Your link opens “${scope}” only, and nobody has written it yet.`
    : `Your link opens “${scope}” only, and it is still empty: type its name above to start it.`
}

function render () {
  const query = $('#open-name').value.trim().toLowerCase()
  const shown = documents.filter((doc) => !query || doc.name.toLowerCase().includes(query))
  const names = new Set(documents.map((doc) => doc.name))
  for (const name of rows.keys()) if (!names.has(name)) rows.delete(name)
  reconcile($('#documents'), shown.map(rowFor))
  listed = loaded
  $('#documents').setAttribute('aria-busy', String(!loaded))
  $('.list-card').classList.toggle('has-actions', documents.some((doc) => canChange(doc.name)))
  $('#doc-count').textContent = loaded ? String(documents.length) : ''
  $('#empty').hidden = !loaded || shown.length > 0
  $('#empty').textContent = emptyMessage()
  const scope = access?.access_control ? access.scope : null
  $('#list-title').textContent = scope === null ? 'All documents' : scope.endsWith('/') ? `Documents in ${scope}` : 'Your document'
  if (scope?.endsWith('/')) $('#open-name').placeholder = `Name, e.g. ${scope}meeting-notes`
  const exists = documents.some((doc) => doc.name === $('#open-name').value.trim())
  $('#open-button').textContent = exists || !query ? 'Open' : 'Create'
}

function showListError (message) {
  $('#list-error').textContent = message
  $('#list-error').hidden = false
}

async function load () {
  if (!access && Date.now() >= accessDue) await loadAccess()
  const asked = changes
  let answer
  try {
    answer = await callApi('/api/docs')
  } catch (error) {
    answer = error
  }
  if (asked !== changes) return // the refresh queued by the change follows
  if (answer.status === 200) {
    documents = answer.body.documents
      .sort((a, b) => b.updated_at.localeCompare(a.updated_at) || a.name.localeCompare(b.name))
    loaded = true
    listFailures = 0
    $('#list-error').hidden = true
  } else if ((answer.status === 401 || answer.status === 403) && !pageToken()) {
    refused = true
    showListError('Couldn’t load the document list: this server needs an access token. Open the link with ?token=… you were given.')
  } else if (answer.status === 401 || answer.status === 403) {
    refused = true
    showListError(`Couldn’t load the document list (the server refused this page’s access link: ${answer.body.error}). ` +
      'An expired or revoked link does not start working again, so this page stopped asking: ask whoever gave it to you for a new one.')
  } else {
    listFailures++
    const why = answer.body?.error ? `the server answered ${answer.status}: ${answer.body.error}` : apiProblem(answer)
    showListError(`Couldn’t load the document list (${why}). Trying again in ${retryAfter(listFailures) / 1000} s…`)
  }
  render()
}

// Refreshing: every few seconds while the page is visible (later and later while it fails, never again
// once refused), at once when it becomes visible; one request at a time (a refresh asked for meanwhile runs
// once the current one is done).

let refreshing = false
let again = false
let timer = null

async function refresh () {
  if (refused) return
  if (refreshing) {
    again = true
    return
  }
  refreshing = true
  clearTimeout(timer)
  try {
    await load()
  } finally {
    refreshing = false
    if (again) {
      again = false
      refresh()
    } else if (!refused && document.visibilityState === 'visible') {
      timer = setTimeout(refresh, listFailures > 0 ? retryAfter(listFailures) : POLL_EVERY_MS)
    }
  }
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') refresh()
  else clearTimeout(timer)
})

let noticeTimer = null

function notify (message) {
  const notice = $('#list-notice')
  notice.textContent = message
  notice.hidden = false
  clearTimeout(noticeTimer)
  noticeTimer = setTimeout(() => { notice.hidden = true }, NOTICE_MS)
}

// Dialogs: delete (confirm, naming the document) and rename (asking the new name).

/**
 * A modal dialog with `content`, a Cancel button and a submit button labelled `action`. On submit,
 * `run(form)` does the change and returns a problem to show in the dialog, or null when done: the dialog
 * closes (the focus goes back to the button it was opened from), then `done()` shows the change in the list.
 * It cannot be closed while the change is running.
 */
function openDialog ({ title, content, action, danger = false, run, done }) {
  const problem = h('p', { class: 'form-error', role: 'alert', hidden: true })
  const submit = h('button', { class: `button ${danger ? 'danger' : 'primary'}`, type: 'submit' }, action)
  const cancel = h('button', { class: 'button ghost', type: 'button', onclick: () => dialog.close() }, 'Cancel')
  const form = h('form', { class: 'doc-dialog-form', method: 'dialog', novalidate: true },
    h('h2', { id: 'doc-dialog-title' }, title),
    ...content,
    problem,
    h('div', { class: 'dialog-actions' }, cancel, submit)
  )
  const dialog = h('dialog', { class: 'dialog doc-dialog', 'aria-labelledby': 'doc-dialog-title' }, form)
  let busy = false
  dialog.addEventListener('cancel', (event) => { if (busy) event.preventDefault() })
  dialog.addEventListener('close', () => dialog.remove())
  form.addEventListener('input', () => { problem.hidden = true })
  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    if (busy) return
    busy = true
    submit.disabled = cancel.disabled = true
    dialog.setAttribute('aria-busy', 'true')
    let result
    try {
      result = await run(form)
    } catch (error) {
      result = `Nothing was changed: ${apiProblem(error)}. Try again.`
    }
    busy = false
    submit.disabled = cancel.disabled = false
    dialog.removeAttribute('aria-busy')
    if (result === null) {
      dialog.close()
      done()
      return
    }
    problem.textContent = result
    problem.hidden = false
  })
  document.body.append(dialog)
  dialog.showModal()
  return dialog
}

function askDelete (name) {
  openDialog({
    title: `Delete “${name}”?`,
    content: [
      h('p', { class: 'doc-dialog-text' },
        'The document and its whole history are removed for everyone, and whoever has it open is disconnected. This cannot be undone.')
    ],
    action: 'Delete',
    danger: true,
    run: async () => {
      const answer = await callApi(apiPath('/api/docs', name), { method: 'DELETE' })
      if (answer.status !== 200 && answer.status !== 404) return problemOf(answer, { name })
      changes++
      // Gone on the server (404: already): this browser's offline copy goes too, or opening the name again
      // would bring the old text back. Not waited for: the deletion is queued at once, before any later open.
      forgetCopy(name)
      notify(answer.status === 200 ? `Deleted “${name}”.` : `“${name}” was already gone.`)
      return null
    },
    done: () => {
      // Gone at once (the refresh confirms it); the focus, back on its Delete button, goes to the next row.
      documents = documents.filter((doc) => doc.name !== name)
      render()
      refresh()
    }
  })
}

/** Why `to` cannot be the new name of `name`, as far as the page knows (the server has the last word), or null. */
function renameProblem (name, to) {
  const problem = nameProblem(to)
  if (problem) return problem
  if (to === name) return 'That is its name already.'
  if (access?.access_control && !covers(access.scope, to)) {
    return access.scope.endsWith('/')
      ? `Your link can only name documents under “${access.scope}”.`
      : `Your link covers “${access.scope}” only, so it cannot give it another name.`
  }
  if (documents.some((doc) => doc.name === to)) return `A document named “${to}” exists already. Choose another name.`
  return null
}

function askRename (name) {
  const field = h('input', {
    id: 'rename-to', name: 'to', type: 'text', value: name,
    autocomplete: 'off', autocapitalize: 'off', spellcheck: 'false', enterkeyhint: 'done'
  })
  let to
  const dialog = openDialog({
    title: `Rename “${name}”`,
    content: [
      h('p', { class: 'doc-dialog-text' }, 'Its history goes with it. Whoever has it open is told the new name.'),
      h('label', { class: 'doc-dialog-label', for: 'rename-to' }, 'New name'),
      field
    ],
    action: 'Rename',
    run: async () => {
      to = field.value.trim()
      const problem = renameProblem(name, to)
      field.setAttribute('aria-invalid', String(Boolean(problem)))
      if (problem) return problem
      const answer = await callApi(apiPath('/api/docs', name, `/rename?to=${encodeURIComponent(to)}`), { method: 'POST' })
      if (answer.status !== 200) return problemOf(answer, { name, to })
      changes++
      forgetCopy(name) // the text lives on under the new name; a copy under the old one would bring it back there
      notify(`Renamed “${name}” to “${to}”.`)
      return null
    },
    done: () => {
      // The row takes the new name in place, so the focus stays in it (the refresh confirms the name).
      documents = documents.map((doc) => doc.name === name ? { ...doc, name: to } : doc)
      const row = rows.get(name)
      rows.delete(name)
      if (row) rows.set(to, row)
      render()
      refresh()
    }
  })
  dialog.addEventListener('input', () => field.setAttribute('aria-invalid', 'false'))
  field.select()
}

// The open field

function showProblem (problem) {
  $('#open-error').textContent = problem ?? ''
  $('#open-error').hidden = !problem
  $('#open-name').setAttribute('aria-invalid', String(Boolean(problem)))
}

$('#open-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const name = $('#open-name').value.trim()
  const problem = nameProblem(name)
  showProblem(problem)
  if (!problem) window.location.assign(withToken(editorPath(name)))
})
$('#open-name').addEventListener('input', () => {
  showProblem(null)
  render()
})

render()
refresh()
