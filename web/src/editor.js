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

import { h } from './dom.js'
import { setUpHistory } from './history.js'
import { askIdentity, awarenessUser, loadIdentity } from './identity.js'
import { apiProblem, callApi, editorPath, nameFromEditorPath, nameProblem, pageToken, roomPath, websocketServer, withToken } from './names.js'
import { keepOffline, tokenDigest } from './offline.js'
import { avatar, checkPeople, setUpPeople } from './people.js'
import { setUpShare } from './share.js'
import { editorTheme, markdownHighlighting } from './theme.js'

/** The root Y.Text every collab client edits; other clients and the export script use the same name. */
export const CONTENT = 'content'

/** Close codes the server ends a document's connections with (collab/errors.py). */
const DOCUMENT_DELETED = 4410
const DOCUMENT_RENAMED = 4411
const ACCESS_REFUSED = new Set([4401, 4403]) // no valid token; a token for other documents

/** How the server's auth message starts when it refuses the connection, which it closes next (collab/sync). */
const PERMISSION_DENIED = 'permission denied'

/** How long the page waits for GET /api/access before it goes by what it remembers (or edits, as offline). */
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

// A viewer's editor (and one waiting to learn its access) changes with nothing typed, pasted or dropped, but
// takes focus, a caret and selections: keyboard and screen reader users read and copy with them.
const TAKES_NO_EDIT = EditorState.readOnly.of(true)
// An ended document's editor: nothing is left to work on.
const ENDED = [EditorState.readOnly.of(true), EditorView.editable.of(false)]

/**
 * What this page may do with its document, as `access.level`:
 *   'asking'   online, waiting for GET /api/access: nothing can be typed, and the offline copy is not applied
 *              (it would be sent, or shown to someone who may not see it);
 *   'edit'     the server said so, or said so last time and cannot be asked now;
 *   'view'     likewise: read only;
 *   'none'     likewise: the token is refused, and nothing of the document is shown;
 *   'unknown'  offline (or no answer) and never told for this token: the page edits as it always did, and
 *              what is typed is kept as typed with unknown access, sent only once an editor's page opens it.
 */
async function main () {
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
  const copy = keepOffline(name, doc, await tokenDigest(token))
  // A name the server refuses (close code 4400, its reason shown) has no access to ask about, nor a copy.
  const askable = !nameProblem(name)
  const provider = new WebsocketProvider(websocketServer(), roomPath(name), doc, { params: token ? { token } : {} })
  const undoManager = new Y.UndoManager(text)
  const editable = new Compartment()
  const hint = new Compartment()
  const access = { level: askable ? 'asking' : 'unknown', answer: null, ended: false }
  checkPeople(provider.awareness)

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
        editable.of(TAKES_NO_EDIT),
        hint.of(placeholder('Loading…')),
        yCollab(text, provider.awareness, { undoManager })
      ]
    })
  })

  // The copy is opened once, when the access is first known; one left alone for a viewer, again for an editor.
  let copyOpening = null
  let copyLoaded = false
  let copyLeft = false

  // For the browser console and the end-to-end tests: the live objects behind the page, and the promise of
  // the offline copy's opening (null until the access is known).
  window.collab = {
    name, doc, text, provider, view, undoManager, offline: copy, access,
    get copyOpening () { return copyOpening }
  }

  const history = setUpHistory({ name, text, live: view })
  let connection = null

  // What the page's document holds that the server may not keep: typed here and not yet sent with edit
  // access, or applied from the copy, which held unsent edits (`copyHeld`), or refused by the server.
  let typedHere = false
  let copyHeld = null
  let editsRefused = false
  const holdsUnsaved = () => typedHere || copyHeld !== null || editsRefused
  const unsaved = trackUnsaved(access)

  /** Apply what is known of this page's access: the editor, the badge, the Restore button. */
  const applyAccess = () => {
    const canEdit = !access.ended && (access.level === 'edit' || access.level === 'unknown')
    view.dispatch({ effects: editable.reconfigure(access.ended ? ENDED : canEdit ? [] : TAKES_NO_EDIT) })
    $('#readonly-badge').hidden = access.level !== 'view' || access.ended
    $('#editor').hidden = access.level === 'none'
    history.setWritable(canEdit)
    connection?.render()
  }

  /** The server has all this page's document holds, once it may edit, is connected and synced, and the copy is in. */
  const checkSaved = () => {
    if (access.answer?.access !== 'edit' || !provider.wsconnected || !provider.synced || !copyLoaded) return
    copy.synced()
    typedHere = false
    unsaved.clear()
  }

  const openCopy = (level) => {
    if (copyOpening && !(copyLeft && level !== 'view')) return
    copyLeft = false
    copyOpening = copy.open(level).then(({ open, held }) => {
      copyLeft = !open && held !== null
      copyLoaded = true
      if (open && held !== null) {
        copyHeld = held
        settle(access.level) // the access may have been learned while the copy was opening
      } else {
        checkSaved()
      }
    })
  }

  /**
   * Forget what the server will not keep and show what it has: the copy is deleted (unless it holds only
   * edits typed with edit access, which wait there for an editor's page) and the page loads again, once.
   */
  const rebuildFromServer = async () => {
    if (window.history.state?.collabRebuilt) {
      // Loaded again already, and still holding something refused: take back what can be, and stop keeping it.
      copy.stop()
      takeBackUnsavedEdits(undoManager)
      return
    }
    unsaved.leaving = true
    if (copy.unsent === 'edit') copy.stop()
    else await copy.discard()
    window.history.replaceState({ ...window.history.state, collabRebuilt: 'to say' }, '')
    window.location.reload()
  }

  let rebuilding = false
  /** Act on the access now known (or guessed): the editor, and what is done with the copy. */
  const settle = (level) => {
    access.level = level
    if ((level === 'view' || level === 'none') && holdsUnsaved()) {
      if (level === 'none') {
        // Nothing is shown; what was typed with a refused token is not kept either.
        if (copy.unsent === 'unknown') copy.discard()
        else copy.stop()
      } else if (!rebuilding) {
        rebuilding = true
        rebuildFromServer()
      }
    } else if (level === 'none') {
      copy.stop()
    } else if (level !== 'asking' && askable) {
      openCopy(level)
    }
    if (level === 'edit' && access.answer?.access === 'edit') copy.mayEdit()
    applyAccess()
    checkSaved()
  }

  /**
   * The server said what this page may do: remember it for the next time it cannot be asked. Refused, the
   * page keeps nothing of the document on it (the connection is closed for good, 4401 or 4403).
   */
  const learned = (level) => {
    copy.remember(level)
    settle(level)
    if (level === 'none' && view.dom.isConnected) view.destroy()
  }

  // `holdEdits`: the editor takes no input and the copy waits until the answer (the first time, online);
  // asked again once connected after an unanswered first time, the person may be typing already.
  let asked = null // the question in flight
  const askAccess = (holdEdits) => {
    asked ??= (async () => {
      if (access.level === 'asking' && (!holdEdits || !navigator.onLine)) settle(copy.remembered ?? 'unknown')
      const answer = await whatAccess(name)
      asked = null
      if (answer && !access.ended) {
        access.answer = answer
        learned(answer.access)
      } else if (access.level === 'asking') {
        settle(copy.remembered ?? 'unknown')
      }
    })()
  }

  // The server's auth message: either a refusal about to close the connection, or (a read-only token)
  // "your edits are not saved": from then on the editor takes no input. Stock y-websocket only logs it.
  provider.messageHandlers[messageAuth] = (_encoder, decoder) => {
    readAuthMessage(decoder, doc, (_doc, reason) => {
      if (reason.startsWith(PERMISSION_DENIED)) {
        learned('none')
        return
      }
      console.info(`collab: the server refuses edits here: ${reason}`)
      editsRefused = true
      learned('view')
    })
  }

  doc.on('update', (_update, origin) => {
    if (origin === provider || copy.isCopy(origin)) return // from the server, another tab, or the copy
    // Typed here (or undone): sent at once when connected with edit access, else kept for later.
    if (access.answer?.access === 'edit' && provider.wsconnected && provider.synced) return
    typedHere = true
    copy.typed(access.level === 'edit' ? 'edit' : 'unknown')
    unsaved.add(copy)
  })

  connection = trackConnection(provider, access, {
    onConnected: () => {
      if (askable && !access.answer) askAccess(false) // asked while offline, or no answer then
    },
    onSynced: () => {
      view.dispatch({ effects: hint.reconfigure(placeholder('Start writing… (Markdown works)')) })
      checkSaved()
    },
    onEnded: (code) => {
      access.ended = true
      if (ACCESS_REFUSED.has(code)) learned('none')
      view.dispatch({ effects: hint.reconfigure([]) })
      applyAccess()
      history.close()
      // There is no history to browse nor link to share of a document that is gone.
      $('#history-button').disabled = true
      $('#share').disabled = true
      // A deleted or renamed document must not come back from this browser's copy on a later visit.
      if (code === DOCUMENT_DELETED || code === DOCUMENT_RENAMED) copy.forget()
    }
  })
  if (window.history.state?.collabRebuilt === 'to say') {
    window.history.replaceState({ ...window.history.state, collabRebuilt: 'said' }, '')
    sayTakenBack()
  }
  if (askable) askAccess(true)
  else settle('unknown')
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
 * Take back what was typed here that the server will not keep: undo this page's own edits, so that the text
 * shown is what the server has, and say so. (For when the page cannot load again from the server.)
 */
function takeBackUnsavedEdits (undoManager) {
  for (let left = undoManager.undoStack.length; left > 0 && undoManager.undoStack.length; left--) undoManager.undo()
  undoManager.clear()
  sayTakenBack()
}

function sayTakenBack () {
  const notice = $('#notice')
  notice.replaceChildren(
    h('strong', {}, 'This link can only view the document. '),
    'What you typed was not saved, and has been taken back.'
  )
  notice.hidden = false
}

/**
 * Whether edits typed here exist only in this tab: typed while not connected with edit access, and not yet
 * in the offline copy. The browser asks before such a tab is closed ("Leave site?"); once the copy holds
 * them, or the server does, it need not. Updates from the server or applied from the copy never count.
 */
function trackUnsaved (access) {
  let pending = 0 // edits typed and not yet known to be in the copy or on the server
  let typed = 0 // to tell a stored write from a later one
  const tracker = {
    leaving: false,
    add (copy) {
      const mine = ++typed
      pending = mine
      copy.whenStored().then((stored) => {
        if (stored && pending === mine) pending = 0
      })
    },
    clear () {
      pending = 0
    }
  }
  window.addEventListener('beforeunload', (event) => {
    if (pending && !tracker.leaving && !access.ended && (access.level === 'edit' || access.level === 'unknown')) {
      event.preventDefault()
      event.returnValue = ''
    }
  })
  return tracker
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

/** What the offline banner says after "You're offline.", by what the page may do (access.level). */
const OFFLINE_SAYS = {
  edit: 'Keep typing: your changes stay in this browser and are sent when the connection comes back.',
  view: 'This link can only view the document: what you see is this browser’s copy of it.',
  none: 'This link was refused the last time it was used, so nothing of the document is shown.'
}

function trackConnection (provider, access, { onConnected, onSynced, onEnded }) {
  let status = 'connecting'
  let lostConnection = false // true from a failed or closed connection until the next successful one
  let ended = false
  let shown = null // the state drawn last: each retry while offline changes nothing on the page

  // "Connected" once this page can work with the document: synced, and its access known (or unknowable).
  const render = () => {
    if (ended) return
    const state = status === 'connected' && provider.synced && access.level !== 'asking'
      ? 'connected'
      : lostConnection ? 'offline' : status === 'connected' ? 'syncing' : 'connecting'
    if (`${state} ${access.level}` === shown) return
    shown = `${state} ${access.level}`
    if (state === 'connected') {
      setStatus('connected', 'Connected', 'Connected: your edits are shared as you type.')
      hideBanner()
    } else if (state === 'offline') {
      setStatus('offline', 'Offline', 'Offline: retrying the connection with backoff.')
      showBanner('offline', h('strong', {}, 'You’re offline. '), OFFLINE_SAYS[access.level] ?? OFFLINE_SAYS.edit)
    } else {
      setStatus('connecting', state === 'syncing' ? 'Syncing…' : 'Connecting…')
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
    if (synced) onSynced()
    render()
  })
  provider.on('closed', ({ code, reason }) => {
    ended = true
    showEnd(code, reason)
    onEnded(code)
  })
  render()
  return { render }
}

// Presence: my name and colour in the awareness state; the people here now are drawn by people.js.

function setUpPresence (provider, view) {
  const awareness = provider.awareness
  let identity = loadIdentity()
  // A refused page's editor is gone (destroyed): there is nothing to focus.
  const focusEditor = () => {
    if (view.dom.isConnected) view.focus()
  }

  const apply = (chosen) => {
    identity = chosen
    awareness.setLocalStateField('user', awarenessUser(chosen))
    document.documentElement.style.setProperty('--me', chosen.color)
    const me = $('#me')
    me.replaceChildren(avatar(chosen), h('span', { class: 'me-name' }, chosen.name))
    me.setAttribute('aria-label', `You are ${chosen.name}. Change your name or colour`)
    me.hidden = false
  }

  $('#me').addEventListener('click', async () => {
    const changed = await askIdentity(identity)
    if (changed) apply(changed)
    focusEditor()
  })

  setUpPeople(awareness)
  if (identity) {
    apply(identity)
    focusEditor()
  } else {
    askIdentity().then((chosen) => {
      apply(chosen)
      focusEditor()
    })
  }
}

main()
