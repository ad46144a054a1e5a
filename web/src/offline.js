// The offline copy of a document: its Y.Doc kept in this browser's IndexedDB (y-indexeddb), so that edits
// made offline survive closing the tab and are sent when a page of the document connects again; and, beside
// it in localStorage, what this browser knows of the copy: when the document was last opened here, whether
// the copy holds edits the server may not have and with what access they were typed, and the access each of
// the last few tokens was given for it (a hash of each token: never the token).
//
// One IndexedDB database per document, named KEY_PREFIX + the document name. IndexedDB is per origin (scheme,
// host and port), so the origin is part of the key already, and a database name may be any string, so the
// document name goes in as it is, slashes and all, with no encoding to get wrong.
//
// The copy is a cache, never the authority: the server merges it like any client's update (a CRDT, so
// nothing is overwritten), and a page works the same without it. Whatever goes wrong with IndexedDB
// (missing, private mode, blocked, closed under us by "clear site data") only turns the copy off.
//
// A copy is applied to a page's document only once the page knows (or, offline, has to guess) its access,
// because applying it is also sending it: the WebSocket provider sends whatever the document holds. So:
//   - edit, or not known (offline and never told): the copy is applied, and what is typed goes into it;
//   - view: the copy is applied only when it holds nothing unsent (it is then what the server sent); a copy
//     holding edits typed before the access was known is deleted (nothing a viewer typed is kept); one
//     holding edits typed with edit access is left alone for the next page that may edit;
//   - none: the copy is not touched (editor.js shows nothing).

import { IndexeddbPersistence } from 'y-indexeddb'

const KEY_PREFIX = 'collab-doc:'
/** localStorage: ENTRY_PREFIX + document name -> what this browser knows of that document's copy (JSON). */
const ENTRY_PREFIX = 'collab.copy:'

/**
 * How many documents' copies are kept once every edit in them reached the server. A copy is one database of
 * a few KB to a few MB; past this many, opening a document deletes the least recently opened such copies. A
 * copy holding edits only this browser has is never deleted to make room.
 */
export const MAX_COPIES = 200

/** How many tokens' access is remembered per document (the last ones used). */
const REMEMBERED_TOKENS = 8

/** Access levels (GET /api/access) worth remembering, and the ways a copy's unsent edits were typed. */
const ACCESS_LEVELS = new Set(['edit', 'view', 'none'])
const TYPED_WITH = new Set(['edit', 'unknown'])

/**
 * How long `open()` waits for IndexedDB before it resolves anyway. A copy is open and applied 0.1-0.9 s
 * after the page starts (headless Chromium, page load included); one much slower is stuck (another tab's
 * upgrade or delete blocking it), and the editor must not wait on it. A copy that comes later is still
 * merged when it comes.
 */
const LOAD_TIMEOUT_MS = 2000

/**
 * The offline copy of document `name` for the Y.Doc `doc` of a page opened with the token `tokenId` names
 * (tokenDigest: '' for none, null when it cannot be named). Nothing is opened until `open(access)`.
 *
 * - `remembered`: the access this token was last given for this document ('edit' | 'view' | 'none'), or null
 *   (never told, or the token cannot be named).
 * - `remember(access)`: keep the access this token was just given.
 * - `open(access)`: apply the copy to `doc` and keep `doc` in it from then on, as the rules above say for
 *   `access` ('edit' | 'view' | 'unknown'); resolves, never rejects, once the copy is applied (or after
 *   LOAD_TIMEOUT_MS), with whether it is open and what it held unsent when applied (null, 'edit' or 'unknown').
 *   Called again, with a copy left alone for a viewer, it opens it for an editor; otherwise it does nothing.
 * - `isCopy(origin)`: whether a Y.Doc update of that origin came from the copy (it is not typing).
 * - `typed(access)`: edits the server may not have yet were typed, with access 'edit' or 'unknown'.
 * - `mayEdit()`: the server said this page may edit: what the copy holds unsent is edits to send.
 * - `synced()`: the server has everything `doc` holds.
 * - `unsent`: what the copy holds that the server may not have: null, 'edit' or 'unknown'.
 * - `whenStored()`: resolves true once every change made to `doc` so far is in IndexedDB, false if the copy
 *   is not kept (IndexedDB unavailable, not opened, stopped); never rejects.
 * - `stop()`: stop keeping `doc`, leaving the copy as it is.
 * - `discard()`: stop, and delete the copy (it holds what the server refused); never rejects.
 * - `forget()`: discard, and what is known of the document too (close codes 4410 and 4411: it is gone, and a
 *   later visit must not bring it back); never rejects.
 */
export function keepOffline (name, doc, tokenId) {
  const key = KEY_PREFIX + name // the IndexedDB database of the copy
  const indexedDB = availableIndexedDB()
  let persistence = null
  let state = 'closed' // 'opening' | 'open' | 'left' (kept for an editor) | 'stopped'
  let opened = null // the promise of the first open: { open, held }
  let persistRequested = false

  const start = (held) => {
    persistence = new IndexeddbPersistence(key, doc)
    // Stop writing before the connection goes away: y-indexeddb would go on opening transactions on a closed
    // database, and the exception, thrown inside the doc's update event, would keep the WebSocket provider's
    // own handler from sending the edit. A delete from another tab (its forget()) or "clear site data" does this.
    const loaded = persistence.whenSynced.then(({ db }) => {
      db.onversionchange = stop
      db.onclose = () => {
        console.warn(`collab: the browser closed the offline copy of “${name}”; it is no longer kept`)
        stop()
      }
    })
    noteOpened(name)
    evictCopies(indexedDB, name)
    state = 'open'
    return withTimeout(loaded, LOAD_TIMEOUT_MS).then(() => ({ open: true, held }))
  }

  const openNow = async (access) => {
    const found = await canOpen(indexedDB, key)
    if (found === 'broken') {
      console.warn(`collab: IndexedDB refused to open, so no offline copy of “${name}” is kept`)
      state = 'stopped'
      return { open: false, held: null }
    }
    if (state === 'stopped') return { open: false, held: null }
    const held = found === 'new' ? null : heldBy(readEntry(name))
    if (found === 'new') updateEntry(name, (entry) => { entry.unsent = null })
    if (access === 'view' && held === 'edit') {
      state = 'left'
      return { open: false, held }
    }
    if (access === 'view' && held === 'unknown') {
      await deleteDatabase(indexedDB, key)
      updateEntry(name, (entry) => { entry.unsent = null })
      if (state === 'stopped') return { open: false, held: null }
      return start(null)
    }
    return start(held)
  }

  const open = (access) => {
    if (!indexedDB) return Promise.resolve({ open: false, held: null })
    if (state === 'closed') {
      state = 'opening'
      opened = openNow(access)
      return opened
    }
    if (state === 'left' && access !== 'view') {
      state = 'opening'
      opened = start(heldBy(readEntry(name)))
    }
    return opened ?? Promise.resolve({ open: false, held: null })
  }

  const stop = () => {
    state = 'stopped'
    persistence?.destroy().catch(() => {}) // it rejects only when the database never opened
    persistence = null
  }

  const isOpen = () => state === 'open' && persistence !== null
  const isOpening = () => isOpen() || state === 'opening'

  return {
    get remembered () {
      if (tokenId === null) return null
      return readEntry(name)?.tokens.find(([id]) => id === tokenId)?.[1] ?? null
    },
    remember (access) {
      if (tokenId === null || !ACCESS_LEVELS.has(access)) return
      updateEntry(name, (entry) => {
        entry.tokens = [...entry.tokens.filter(([id]) => id !== tokenId), [tokenId, access]].slice(-REMEMBERED_TOKENS)
      })
    },
    open,
    isCopy: (origin) => origin !== null && origin === persistence,
    typed (access) {
      if (!isOpening()) return
      const unsent = readEntry(name)?.unsent ?? null
      const now = unsent === 'unknown' || access !== 'edit' ? 'unknown' : 'edit'
      if (now !== unsent) updateEntry(name, (entry) => { entry.unsent = now })
      if (!persistRequested) {
        persistRequested = true
        askToPersist()
      }
    },
    mayEdit () {
      if (isOpen() && readEntry(name)?.unsent === 'unknown') updateEntry(name, (entry) => { entry.unsent = 'edit' })
    },
    synced () {
      if (isOpen() && readEntry(name)?.unsent !== null) updateEntry(name, (entry) => { entry.unsent = null })
    },
    get unsent () {
      return readEntry(name)?.unsent ?? null
    },
    async whenStored () {
      await null // after the doc's other update listeners, y-indexeddb's write among them
      await opened
      const kept = persistence
      if (!isOpen()) return false
      await withTimeout(kept.whenSynced, LOAD_TIMEOUT_MS)
      return persistence === kept && kept.db !== null && committed(kept.db)
    },
    stop,
    discard () {
      stop()
      updateEntry(name, (entry) => { entry.unsent = null })
      // The database closes as soon as it is open, and the delete, queued behind that, runs then.
      return indexedDB ? deleteDatabase(indexedDB, key) : Promise.resolve()
    },
    forget () {
      const deleted = this.discard()
      forgetEntry(name)
      return deleted
    }
  }
}

/**
 * Delete this browser's copy of document `name`, if any, and what is known of it: for a page that deleted or
 * renamed the document (the index page), so that opening the name again does not bring the old text back. A
 * tab of this browser that has the document open stops writing to the copy first. Never rejects.
 */
export async function forgetCopy (name) {
  forgetEntry(name)
  const indexedDB = availableIndexedDB()
  if (indexedDB) await deleteDatabase(indexedDB, KEY_PREFIX + name)
}

/**
 * A short, one-way name for `token`, to remember its access by (SHA-256, 128 bits in hex; '' for no token),
 * or null where the browser computes no digest (crypto.subtle is there on secure origins only: https, and
 * http on localhost), and nothing is remembered. Never rejects.
 */
export async function tokenDigest (token) {
  if (!token) return ''
  if (!globalThis.crypto?.subtle) return null
  try {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(token))
    return [...new Uint8Array(digest).slice(0, 16)].map((byte) => byte.toString(16).padStart(2, '0')).join('')
  } catch {
    return null
  }
}

/** What an existing copy holds unsent, by its `entry`; with none, it was kept by an earlier version of collab. */
function heldBy (entry) {
  return entry ? entry.unsent : 'unknown'
}

// What is known of each copy: { opened: ms since the epoch, unsent: null | 'edit' | 'unknown',
// tokens: [[token digest, access], ...] oldest first }. Unreadable or unwritable storage reads as nothing known.

function readEntry (name) {
  let stored
  try {
    stored = JSON.parse(globalThis.localStorage.getItem(ENTRY_PREFIX + name))
  } catch {
    return null
  }
  if (!stored || typeof stored !== 'object') return null
  return {
    opened: Number.isFinite(stored.opened) ? stored.opened : 0,
    unsent: TYPED_WITH.has(stored.unsent) ? stored.unsent : null,
    tokens: Array.isArray(stored.tokens)
      ? stored.tokens.filter((pair) => Array.isArray(pair) && typeof pair[0] === 'string' && ACCESS_LEVELS.has(pair[1]))
      : []
  }
}

function updateEntry (name, change) {
  const entry = readEntry(name) ?? { opened: 0, unsent: null, tokens: [] }
  change(entry)
  try {
    globalThis.localStorage.setItem(ENTRY_PREFIX + name, JSON.stringify(entry))
  } catch { /* no storage: nothing is remembered */ }
}

function forgetEntry (name) {
  try {
    globalThis.localStorage.removeItem(ENTRY_PREFIX + name)
  } catch { /* no storage: nothing was remembered */ }
}

function noteOpened (name) {
  updateEntry(name, (entry) => { entry.opened = Date.now() })
}

/**
 * Delete the copies beyond the MAX_COPIES most recently opened whose edits all reached the server, least
 * recently opened first; never `keep` (the document being opened), never a copy holding unsent edits.
 * Copies kept before this index existed are not in it, and stay.
 */
function evictCopies (indexedDB, keep) {
  let names
  try {
    const storage = globalThis.localStorage
    names = Array.from({ length: storage.length }, (_, index) => storage.key(index))
  } catch {
    return
  }
  const known = names
    .filter((key) => key?.startsWith(ENTRY_PREFIX))
    .map((key) => key.slice(ENTRY_PREFIX.length))
    .map((name) => ({ name, entry: readEntry(name) }))
    .filter(({ entry }) => entry !== null)
    .sort((a, b) => b.entry.opened - a.entry.opened)
  for (const { name, entry } of known.slice(MAX_COPIES)) {
    if (name !== keep && entry.unsent === null) {
      forgetEntry(name)
      deleteDatabase(indexedDB, KEY_PREFIX + name)
    }
  }
}

/**
 * Ask the browser to keep this site's storage under disk pressure (Chrome and Safari decide silently, Firefox
 * asks the person), once the copy holds edits only this browser has: that is when losing it loses work.
 */
function askToPersist () {
  const storage = globalThis.navigator?.storage
  if (!storage?.persist) return
  storage.persisted().then((already) => already || storage.persist()).catch(() => {})
}

/** `promise`, or nothing after `ms`: resolves either way, never rejects. */
function withTimeout (promise, ms) {
  let timer
  return Promise.race([
    promise.catch(() => {}),
    new Promise((resolve) => { timer = setTimeout(resolve, ms) })
  ]).then((value) => {
    clearTimeout(timer)
    return value
  })
}

/**
 * Resolves true once the writes made so far to `db`'s updates have committed: a read-only transaction on a
 * store starts only after the read-write ones created before it finished. False if it cannot tell.
 */
function committed (db) {
  return new Promise((resolve) => {
    try {
      const transaction = db.transaction(['updates'], 'readonly')
      transaction.oncomplete = () => resolve(true)
      transaction.onerror = () => resolve(false)
      transaction.onabort = () => resolve(false)
    } catch {
      resolve(false) // closed under us
    }
  })
}

/**
 * Whether database `key` opens: 'exists', 'new' (there is none; its creation is aborted, so nothing is left
 * behind), or 'broken' (anything else). y-indexeddb has no way to report that it does not open (its promise
 * rejects unhandled, an error on the page, and whenSynced never settles), so this asks first. Never rejects.
 */
function canOpen (indexedDB, key) {
  return new Promise((resolve) => {
    let request
    try {
      request = indexedDB.open(key)
    } catch {
      resolve('broken')
      return
    }
    let creating = false
    request.onupgradeneeded = () => {
      creating = true
      request.transaction.abort()
    }
    request.onsuccess = () => {
      request.result.close()
      resolve('exists')
    }
    request.onerror = (event) => {
      event.preventDefault()
      resolve(creating ? 'new' : 'broken')
    }
  })
}

/** This page's IndexedDB factory, or null where there is none (or touching it throws, as some sandboxes do). */
function availableIndexedDB () {
  try {
    return globalThis.indexedDB ?? null
  } catch {
    return null
  }
}

/**
 * Delete database `key`; resolves once it is deleted, once the deletion failed, or once it is queued behind
 * a tab that keeps it open (it happens when that tab lets go). Never rejects.
 */
function deleteDatabase (indexedDB, key) {
  return new Promise((resolve) => {
    let request
    try {
      request = indexedDB.deleteDatabase(key)
    } catch (error) {
      console.warn('collab: cannot delete the offline copy:', error)
      resolve()
      return
    }
    request.onsuccess = () => resolve()
    request.onblocked = () => resolve()
    request.onerror = () => {
      console.warn('collab: cannot delete the offline copy:', request.error)
      resolve()
    }
  })
}
