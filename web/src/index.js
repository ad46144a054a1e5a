// The home page, /: the documents that exist (from GET /api/docs) and a field to open or create one by name.
// Typing in the field also filters the list.

import { h } from './dom.js'
import { editorPath, nameProblem, withToken } from './names.js'

const $ = (selector) => document.querySelector(selector)
const REFRESH_EVERY_MS = 15000

let documents = []
let loaded = false

function formatSize (bytes) {
  if (bytes < 1024) return `${bytes} B`
  const units = ['KB', 'MB', 'GB']
  let value = bytes
  let unit = -1
  do {
    value /= 1024
    unit++
  } while (value >= 1024 && unit < units.length - 1)
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' })

function formatWhen (iso) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000
  const steps = [[60, 'second'], [60, 'minute'], [24, 'hour'], [7, 'day'], [4.35, 'week'], [12, 'month'], [Infinity, 'year']]
  let value = seconds
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) {
      return unit === 'second' && Math.abs(value) < 45 ? 'just now' : relative.format(Math.round(value), unit)
    }
    value /= size
  }
}

function render () {
  const query = $('#open-name').value.trim().toLowerCase()
  const shown = documents.filter((doc) => !query || doc.name.toLowerCase().includes(query))
  $('#documents').replaceChildren(...shown.map((doc) =>
    h('li', {},
      h('a', { class: 'doc-row', href: withToken(editorPath(doc.name)) },
        h('span', { class: 'doc-title' }, h('span', { class: 'doc-icon', 'aria-hidden': 'true' }), h('span', { class: 'doc-name-text' }, doc.name)),
        h('span', { class: 'doc-size' }, formatSize(doc.size)),
        h('time', { class: 'doc-when', datetime: doc.updated_at, title: absolute.format(new Date(doc.updated_at)) }, formatWhen(doc.updated_at))
      )
    )
  ))
  $('#documents').setAttribute('aria-busy', String(!loaded))
  $('#doc-count').textContent = loaded ? String(documents.length) : ''
  $('#empty').hidden = !loaded || shown.length > 0
  $('#empty').textContent = documents.length === 0
    ? 'No documents yet. Type a name above to create the first one.'
    : 'No document matches that name yet. Press Create to start it.'
  const exists = documents.some((doc) => doc.name === $('#open-name').value.trim())
  $('#open-button').textContent = exists || !query ? 'Open' : 'Create'
}

async function load () {
  try {
    const response = await fetch(withToken('/api/docs'), { cache: 'no-store' })
    if (response.status === 401 || response.status === 403) {
      const { error } = await response.json()
      throw new Error(`this server needs an access token: open the link with ?token=… you were given (${error})`)
    }
    if (!response.ok) throw new Error(`the server answered ${response.status}`)
    documents = (await response.json()).documents
      .sort((a, b) => b.updated_at.localeCompare(a.updated_at) || a.name.localeCompare(b.name))
    loaded = true
    $('#list-error').hidden = true
  } catch (error) {
    $('#list-error').textContent = `Couldn’t load the document list (${error.message}). Retrying…`
    $('#list-error').hidden = false
  }
  render()
}

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
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') load()
})
setInterval(() => {
  if (document.visibilityState === 'visible') load()
}, REFRESH_EVERY_MS)

render()
load()
