// The editor page, /d/<name>: CodeMirror 6 bound to the document's Y.Text "content" through the stock
// y-websocket provider, with presence (names, colours, remote cursors), a connection status and
// undo/redo of one's own edits only.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { Compartment, EditorState, Prec } from '@codemirror/state'
import {
  EditorView, drawSelection, dropCursor, highlightActiveLine, highlightActiveLineGutter, highlightSpecialChars,
  keymap, lineNumbers, placeholder
} from '@codemirror/view'
import { defaultKeymap } from '@codemirror/commands'
import { LanguageSupport } from '@codemirror/language'
import { markdownKeymap, markdownLanguage } from '@codemirror/lang-markdown'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'

import { h, initials } from './dom.js'
import { askIdentity, awarenessUser, loadIdentity } from './identity.js'
import { nameFromEditorPath, pageToken, roomPath, websocketServer, withToken } from './names.js'
import { editorTheme, markdownHighlighting } from './theme.js'

/** The root Y.Text every collab client edits; other clients and the export script use the same name. */
export const CONTENT = 'content'

const $ = (selector) => document.querySelector(selector)

/**
 * Markdown (CommonMark with GitHub's extensions) and its list-continuing Enter/Backspace keys. This is what
 * lang-markdown's markdown() sets up, less highlighting inside embedded HTML, whose parsers would triple
 * the bundle.
 */
function markdownSupport () {
  return new LanguageSupport(markdownLanguage, [Prec.high(keymap.of(markdownKeymap))])
}

function main () {
  let name
  try {
    name = nameFromEditorPath(window.location.pathname)
  } catch {
    showRefusal('This link is broken: the document name in it is not valid percent-encoded text.')
    setStatus('refused', 'Broken link')
    return
  }
  if (!name) {
    window.location.replace('/')
    return
  }
  document.title = `${name} · collab`
  $('#doc-name').textContent = name
  $('#doc-name').title = name

  const doc = new Y.Doc()
  const text = doc.getText(CONTENT)
  // With access control on, the page's ?token= goes to the server as the provider's URL parameter.
  const token = pageToken()
  const provider = new WebsocketProvider(websocketServer(), roomPath(name), doc, { params: token ? { token } : {} })
  const undoManager = new Y.UndoManager(text)
  const editable = new Compartment()
  const hint = new Compartment()

  const view = new EditorView({
    parent: $('#editor'),
    state: EditorState.create({
      doc: text.toString(),
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightSpecialChars(),
        drawSelection(),
        dropCursor(),
        highlightActiveLine(),
        EditorView.lineWrapping,
        EditorView.contentAttributes.of({ 'aria-label': `Text of ${name}` }),
        // Undo and redo go through the Y.UndoManager: they revert only edits made in this page.
        // (CodeMirror's own history() is left out on purpose; it would undo other people's edits too.)
        keymap.of([...yUndoManagerKeymap, ...defaultKeymap]),
        markdownSupport(),
        markdownHighlighting,
        editorTheme,
        editable.of([]),
        hint.of(placeholder('Loading…')),
        yCollab(text, provider.awareness, { undoManager })
      ]
    })
  })

  // For the browser console and the end-to-end tests: the live objects behind the page.
  window.collab = { name, doc, text, provider, view, undoManager }

  trackConnection(provider, doc, {
    onSynced: () => view.dispatch({ effects: hint.reconfigure(placeholder('Start writing… (Markdown works)')) }),
    onRefused: () => view.dispatch({
      effects: [editable.reconfigure([EditorState.readOnly.of(true), EditorView.editable.of(false)]), hint.reconfigure([])]
    })
  })
  setUpPresence(provider, view)
  setUpShareButton()
}

// Connection status: connected / connecting / offline, and a permanent refusal (close codes 4400-4499).

function setStatus (state, label, detail = '') {
  const status = $('#status')
  status.dataset.state = state
  status.querySelector('.status-label').textContent = label
  status.title = detail || label
}

function showBanner (kind, ...content) {
  const banner = $('#banner')
  banner.className = `banner banner-${kind}`
  banner.replaceChildren(...content)
  banner.hidden = false
}

function hideBanner () {
  $('#banner').hidden = true
}

function showRefusal (message) {
  showBanner('error',
    h('strong', {}, 'This document can’t be opened. '),
    message, ' ',
    h('a', { href: withToken('/') }, 'Back to all documents')
  )
}

function trackConnection (provider, doc, { onSynced, onRefused }) {
  let status = 'connecting'
  let lostConnection = false // true from a failed or closed connection until the next successful one
  let unsentEdits = false // local edits made while not connected, which only this tab holds
  let refused = false

  const render = () => {
    if (refused) return
    if (status === 'connected' && provider.synced) {
      setStatus('connected', 'Connected', 'Connected: your edits are shared as you type.')
      hideBanner()
    } else if (lostConnection) {
      setStatus('offline', 'Offline', 'Offline: retrying the connection with backoff.')
      showBanner('offline',
        h('strong', {}, 'You’re offline. '),
        'Keep typing: your changes stay in this tab and are sent when the connection comes back.'
      )
    } else {
      setStatus('connecting', status === 'connected' ? 'Syncing…' : 'Connecting…')
    }
  }

  provider.on('status', (event) => {
    status = event.status
    if (status === 'connected') lostConnection = false
    if (status === 'disconnected') lostConnection = true
    render()
  })
  provider.on('connection-close', () => {
    // Also fires when an attempt fails before ever connecting (then no 'disconnected' status comes).
    lostConnection = true
    render()
  })
  provider.on('sync', (synced) => {
    if (synced) {
      unsentEdits = false
      onSynced()
    }
    render()
  })
  provider.on('closed', ({ code, reason }) => {
    refused = true
    setStatus('refused', 'Refused', `The server refused this document (close code ${code}).`)
    showRefusal(`The server said: “${reason || 'no reason given'}” (close code ${code}).`)
    onRefused()
  })
  doc.on('update', (update, origin) => {
    if (origin !== provider && !(status === 'connected' && provider.synced)) unsentEdits = true
  })
  window.addEventListener('beforeunload', (event) => {
    if (unsentEdits && !refused) {
      // The browser asks before edits that only this tab holds are lost.
      event.preventDefault()
      event.returnValue = ''
    }
  })
  render()
}

// Presence: my name and colour in the awareness state, the list of people here now.

function setUpPresence (provider, view) {
  const awareness = provider.awareness
  let identity = loadIdentity()

  const apply = (chosen) => {
    identity = chosen
    awareness.setLocalStateField('user', awarenessUser(chosen))
    document.documentElement.style.setProperty('--me', chosen.color)
    const me = $('#me')
    me.replaceChildren(
      h('span', { class: 'avatar', style: { '--person': chosen.color }, 'aria-hidden': 'true' }, initials(chosen.name)),
      h('span', { class: 'me-name' }, chosen.name)
    )
    me.setAttribute('aria-label', `You are ${chosen.name}. Change your name or colour`)
    me.hidden = false
  }

  $('#me').addEventListener('click', async () => {
    const changed = await askIdentity(identity)
    if (changed) apply(changed)
    view.focus()
  })

  const renderPeople = () => {
    // One entry per person (same name and colour), however many tabs they have open; me first.
    const people = new Map()
    for (const [clientID, state] of awareness.getStates()) {
      const user = state.user
      const isMe = clientID === awareness.clientID
      if (!user && isMe) continue
      const name = typeof user?.name === 'string' && user.name ? user.name : 'Anonymous'
      const color = typeof user?.color === 'string' ? user.color : '#8c959f'
      const key = `${name}\u0000${color}`
      const person = people.get(key) ?? { name, color, isMe: false }
      person.isMe ||= isMe
      people.set(key, person)
    }
    const sorted = [...people.values()].sort((a, b) => (b.isMe - a.isMe) || a.name.localeCompare(b.name))
    $('#people').replaceChildren(...sorted.map((person) =>
      h('li', { class: person.isMe ? 'person is-me' : 'person', title: person.isMe ? `${person.name} (you)` : person.name },
        h('span', { class: 'avatar', style: { '--person': person.color }, 'aria-hidden': 'true' }, initials(person.name)),
        h('span', { class: 'person-name' }, person.name),
        person.isMe ? h('span', { class: 'sr-only' }, ' (you)') : null
      )
    ))
    $('#people').setAttribute('aria-label', `${sorted.length} ${sorted.length === 1 ? 'person' : 'people'} in this document`)
  }
  awareness.on('change', renderPeople)

  if (identity) {
    apply(identity)
    view.focus()
  } else {
    askIdentity().then((chosen) => {
      apply(chosen)
      view.focus()
    })
  }
  renderPeople()
}

function setUpShareButton () {
  const button = $('#share')
  const label = button.querySelector('.button-label')
  button.addEventListener('click', async () => {
    const url = window.location.href
    let copied = false
    try {
      await navigator.clipboard.writeText(url)
      copied = true
    } catch {
      // No clipboard API (plain http on a LAN address is not a secure context): the old way.
      const field = h('textarea', { readonly: true, style: { position: 'fixed', opacity: '0' } }, url)
      document.body.append(field)
      field.select()
      copied = document.execCommand('copy')
      field.remove()
    }
    if (!copied) {
      window.prompt('Copy this link to share the document:', url)
      return
    }
    label.textContent = 'Link copied'
    button.classList.add('is-done')
    setTimeout(() => {
      label.textContent = 'Share'
      button.classList.remove('is-done')
    }, 2000)
  })
}

main()
