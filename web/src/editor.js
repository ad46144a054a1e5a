// The editor page, /d/<name>: CodeMirror 6 bound to the document's Y.Text "content" through the stock
// y-websocket provider, with presence (names, colours, remote cursors), a connection status, undo/redo of
// one's own edits only, an offline copy in IndexedDB, read-only access shown as such, the History panel,
// the Share dialog, and what the server says when it ends the document (deleted, renamed, refused).

import './install.js'
import * as Y from 'yjs'
import { WebsocketProvider, messageAuth } from 'y-websocket'
import { readAuthMessage } from 'y-protocols/auth'
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
import { setUpHistory } from './history.js'
import { askIdentity, awarenessUser, loadIdentity } from './identity.js'
import { apiProblem, callApi, editorPath, nameFromEditorPath, nameProblem, pageToken, roomPath, websocketServer, withToken } from './names.js'
import { keepOffline } from './offline.js'
import { setUpPeople } from './people.js'
import { setUpShare } from './share.js'
import { editorTheme, markdownHighlighting } from './theme.js'

/** The root Y.Text every collab client edits; other clients and the export script use the same name. */
export const CONTENT = 'content'

/** Close codes the server ends a document's connections with (collab/errors.py). */
const DOCUMENT_DELETED = 4410
const DOCUMENT_RENAMED = 4411

/** How long the page waits for GET /api/access before it takes the answer as unknown (editable, as offline). */
const ACCESS_TIMEOUT_MS = 8000

const $ = (selector) => document.querySelector(selector)

/**
 * Markdown (CommonMark with GitHub's extensions) and its list-continuing Enter/Backspace keys. This is what
 * lang-markdown's markdown() sets up, less highlighting inside embedded HTML, whose parsers would triple
 * the bundle.
 */
function markdownSupport () {
  return new LanguageSupport(markdownLanguage, [Prec.high(keymap.of(markdownKeymap))])
}

const READ_ONLY = [EditorState.readOnly.of(true), EditorView.editable.of(false)]

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
  const offline = keepOffline(name, doc)
  const text = doc.getText(CONTENT)
  // With access control on, the page's ?token= goes to the server as the provider's URL parameter.
  const token = pageToken()
  const provider = new WebsocketProvider(websocketServer(), roomPath(name), doc, { params: token ? { token } : {} })
  const undoManager = new Y.UndoManager(text)
  const editable = new Compartment()
  const hint = new Compartment()
  // Online, nothing can be typed until the server says this page may edit: a viewer's keystrokes must never
  // look saved. Offline there is no one to ask, and the page edits as it always did.
  const access = { answer: null, asking: navigator.onLine, editsRefused: false, ended: false }

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
        editable.of(access.asking ? READ_ONLY : []),
        hint.of(placeholder('Loading…')),
        yCollab(text, provider.awareness, { undoManager })
      ]
    })
  })

  // For the browser console and the end-to-end tests: the live objects behind the page.
  window.collab = { name, doc, text, provider, view, undoManager, offline, access }

  const history = setUpHistory({ name, text, live: view })
  let connection = null

  /** Apply what is known of this page's access: the editor, the badge, the Restore button. */
  const applyAccess = () => {
    const viewOnly = access.editsRefused || access.answer?.access === 'view'
    const canEdit = !access.ended && !viewOnly && !access.asking && access.answer?.access !== 'none'
    const couldEdit = view.state.facet(EditorView.editable)
    view.dispatch({ effects: editable.reconfigure(canEdit ? [] : READ_ONLY) })
    // The page focused the editor while it waited for the answer, which a read-only editor does not take.
    if (canEdit && !couldEdit && document.activeElement === document.body) view.focus()
    $('#readonly-badge').hidden = !viewOnly || access.ended
    document.body.classList.toggle('is-read-only', viewOnly)
    history.setWritable(canEdit)
    if (viewOnly) takeBackUnsavedEdits(undoManager)
    connection?.render()
  }

  // `holdEdits`: the editor takes no input until the answer (the first time, before anything is typed);
  // asked again once connected after an unanswered first time, the person may be typing already.
  let asked = null // the question in flight
  // A name the server refuses (close code 4400, its reason shown) has no access to ask about.
  const askable = !nameProblem(name)
  const askAccess = (holdEdits) => {
    asked ??= (async () => {
      access.asking = holdEdits && navigator.onLine
      applyAccess()
      access.answer = await whatAccess(name)
      access.asking = false
      asked = null
      applyAccess()
    })()
  }

  // The server's auth message: either a refusal about to close the connection, or (a read-only token)
  // "your edits are not saved": from then on the editor takes no input. Stock y-websocket only logs it.
  provider.messageHandlers[messageAuth] = (_encoder, decoder) => {
    readAuthMessage(decoder, doc, (_doc, reason) => {
      console.info(`collab: the server refuses edits here: ${reason}`)
      access.editsRefused = true
      applyAccess()
    })
  }

  connection = trackConnection(provider, doc, access, {
    onConnected: () => {
      if (askable && !access.answer) askAccess(false) // asked while offline, or no answer then
    },
    onSynced: () => view.dispatch({ effects: hint.reconfigure(placeholder('Start writing… (Markdown works)')) }),
    onEnded: (code) => {
      access.ended = true
      view.dispatch({ effects: hint.reconfigure([]) })
      applyAccess()
      history.close()
      // There is no history to browse nor link to share of a document that is gone.
      $('#history-button').disabled = true
      $('#share').disabled = true
      // A deleted or renamed document must not come back from this browser's copy on a later visit.
      if (code === DOCUMENT_DELETED || code === DOCUMENT_RENAMED) offline.forget()
    }
  })
  if (askable) {
    askAccess(true)
  } else {
    access.asking = false
    applyAccess()
  }
  setUpPresence(provider, view)
  setUpShare({ name, button: $('#share'), getAccess: () => access.answer })
}

/**
 * What GET /api/access says this page may do with document `name`: its answer, `{ access: 'none' }` when
 * the token is refused (the WebSocket is refused too, and says why), or null when no answer came.
 */
async function whatAccess (name) {
  try {
    const answer = await callApi(`/api/access?doc=${encodeURIComponent(name)}`, { timeout: ACCESS_TIMEOUT_MS })
    if (answer.status === 200) return answer.body
    if (answer.status === 401 || answer.status === 403) return { access: 'none', access_control: true, can_share: false }
    console.warn(`collab: could not learn this page's access: ${apiProblem(answer)}`)
  } catch (error) {
    console.warn(`collab: could not learn this page's access: ${apiProblem(error)}`)
  }
  return null
}

/**
 * Take back what was typed here that the server will not keep (typed offline, then the access turned out to
 * be view only): undo this page's own edits, so that the text shown is what the server has, and say so.
 */
function takeBackUnsavedEdits (undoManager) {
  if (!undoManager.undoStack.length) return
  for (let left = undoManager.undoStack.length; left > 0 && undoManager.undoStack.length; left--) undoManager.undo()
  undoManager.clear()
  const notice = $('#notice')
  notice.replaceChildren(
    h('strong', {}, 'This link can only view the document. '),
    'What you typed was not saved, and has been taken back.'
  )
  notice.hidden = false
}

// Connection status: connected / connecting / offline, and a permanent end (close codes 4400-4499).

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

/** The new name in a 4411 close reason ("renamed to NEW"), or null if the reason says none. */
function renamedTo (reason) {
  const match = /^renamed to (.+)$/s.exec(reason ?? '')
  return match ? match[1] : null
}

/** What the page says when the server ends the document for good: deleted, renamed, or refused. */
function showEnd (code, reason) {
  const newName = code === DOCUMENT_RENAMED ? renamedTo(reason) : null
  if (code === DOCUMENT_DELETED) {
    setStatus('refused', 'Deleted', 'This document was deleted.')
    showBanner('error',
      h('strong', {}, 'This document was deleted. '),
      `The server said: “${reason || 'no reason given'}”. `,
      h('a', { href: withToken('/') }, 'See all documents')
    )
  } else if (newName) {
    setStatus('refused', 'Renamed', `This document is now called ${newName}.`)
    showBanner('info',
      h('strong', {}, `This document was renamed to “${newName}”. `),
      h('a', { href: withToken(editorPath(newName)) }, `Open “${newName}”`),
      ' · ',
      h('a', { href: withToken('/') }, 'All documents')
    )
  } else {
    setStatus('refused', 'Refused', `The server refused this document (close code ${code}).`)
    showRefusal(`The server said: “${reason || 'no reason given'}” (close code ${code}).`)
  }
}

function trackConnection (provider, doc, access, { onConnected, onSynced, onEnded }) {
  let status = 'connecting'
  let lostConnection = false // true from a failed or closed connection until the next successful one
  let unsentEdits = false // local edits made while not connected, which only this tab holds
  let ended = false

  // "Connected" once this page can work with the document: synced, and its access known (or unknowable).
  const render = () => {
    if (ended) return
    if (status === 'connected' && provider.synced && !access.asking) {
      setStatus('connected', 'Connected', 'Connected: your edits are shared as you type.')
      hideBanner()
    } else if (lostConnection) {
      setStatus('offline', 'Offline', 'Offline: retrying the connection with backoff.')
      showBanner('offline',
        h('strong', {}, 'You’re offline. '),
        'Keep typing: your changes stay in this browser and are sent when the connection comes back.'
      )
    } else {
      setStatus('connecting', status === 'connected' ? 'Syncing…' : 'Connecting…')
    }
  }

  provider.on('status', (event) => {
    status = event.status
    if (status === 'connected') {
      lostConnection = false
      onConnected()
    }
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
    ended = true
    showEnd(code, reason)
    onEnded(code)
  })
  doc.on('update', (update, origin) => {
    if (origin !== provider && !(status === 'connected' && provider.synced)) unsentEdits = true
  })
  window.addEventListener('beforeunload', (event) => {
    if (unsentEdits && !ended && !access.editsRefused) {
      // The browser asks before edits that only this tab holds are lost.
      event.preventDefault()
      event.returnValue = ''
    }
  })
  render()
  return { render }
}

// Presence: my name and colour in the awareness state; the people here now are drawn by people.js.

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

  setUpPeople(awareness)
  if (identity) {
    apply(identity)
    view.focus()
  } else {
    askIdentity().then((chosen) => {
      apply(chosen)
      view.focus()
    })
  }
}

main()
