// The offline copy of a document: its Y.Doc kept in this browser's IndexedDB (y-indexeddb), so that edits
// made offline survive closing the tab and are sent when a page of the document connects again.
//
// One IndexedDB database per document, named KEY_PREFIX + the document name. IndexedDB is per origin (scheme,
// host and port), so the origin is part of the key already, and a database name may be any string, so the
// document name goes in as it is, slashes and all, with no encoding to get wrong.
//
// The copy is a cache, never the authority: the server merges it like any client's update (a CRDT, so
// nothing is overwritten), and a page works the same without it. Whatever goes wrong with IndexedDB
// (missing, private mode, blocked, closed under us by "clear site data") only turns the copy off.

import { IndexeddbPersistence } from 'y-indexeddb'

const KEY_PREFIX = 'collab-doc:'

/**
 * How long `whenLoaded` waits for IndexedDB before it resolves anyway. A copy is open and applied 0.1-0.9 s
 * after the page starts (headless Chromium, page load included); one much slower is stuck (another tab's
 * upgrade or delete blocking it), and the editor must not wait on it. A copy that comes later is still
 * merged when it comes.
 */
const LOAD_TIMEOUT_MS = 2000

/**
 * Keep `doc` (the Y.Doc of document `name`) in IndexedDB from now on, and merge the copy kept before, if any.
 *
 * Returns `{ whenLoaded, forget }`. `whenLoaded` resolves once the kept copy is applied to `doc`, at once if
 * IndexedDB is unavailable, and after LOAD_TIMEOUT_MS at the latest; it never rejects. `forget()` stops
 * keeping `doc` and deletes the copy (call it when the server says the document is gone, close codes 4410
 * and 4411, so that a later visit does not bring it back); it never rejects either.
 *
 * A read-only viewer keeps a copy too: it holds what the server sent (the viewer's editor takes no input), so
 * the document can be read offline.
 */
export function keepOffline (name, doc) {
  const key = KEY_PREFIX + name // the IndexedDB database of the copy
  const indexedDB = availableIndexedDB()
  if (!indexedDB) return { whenLoaded: Promise.resolve(), forget: async () => {} }

  let persistence = null
  let forgotten = false
  const start = () => {
    if (forgotten) return
    // Edits made before this point are kept too: y-indexeddb stores the whole state of doc when it opens.
    persistence = new IndexeddbPersistence(key, doc)
    // Stop writing before the connection goes away: y-indexeddb would go on opening transactions on a closed
    // database, and the exception, thrown inside the doc's update event, would keep the WebSocket provider's
    // own handler from sending the edit. A delete from another tab (its forget()) or "clear site data" does this.
    persistence.whenSynced.then(({ db }) => {
      db.onversionchange = () => persistence.destroy()
      db.onclose = () => {
        console.warn(`collab: the browser closed the offline copy of “${name}”; it is no longer kept`)
        persistence.destroy()
      }
    })
    return persistence.whenSynced
  }
  const loaded = canOpen(indexedDB, key).then((works) => {
    if (works) return start()
    console.warn(`collab: IndexedDB refused to open, so no offline copy of “${name}” is kept`)
  })

  let timer
  const whenLoaded = Promise.race([
    loaded,
    new Promise((resolve) => { timer = setTimeout(resolve, LOAD_TIMEOUT_MS) })
  ]).then(() => clearTimeout(timer))

  const forget = () => {
    forgotten = true
    // destroy() stops keeping doc at once; the database closes as soon as it is open, and the delete, queued
    // behind that, runs then.
    persistence?.destroy().catch(() => {}) // it rejects only when the database never opened
    return deleteDatabase(indexedDB, key)
  }

  return { whenLoaded, forget }
}

/**
 * Whether database `key` opens. y-indexeddb has no way to report that it does not (its promise rejects
 * unhandled, an error on the page, and whenSynced never settles), so this asks first: it opens the database
 * and closes it, or, when there is none yet, aborts the creation (nothing is left behind) once it has got
 * that far. Resolves false for any other outcome; never rejects.
 */
function canOpen (indexedDB, key) {
  return new Promise((resolve) => {
    let request
    try {
      request = indexedDB.open(key)
    } catch {
      resolve(false)
      return
    }
    let creating = false
    request.onupgradeneeded = () => {
      creating = true
      request.transaction.abort()
    }
    request.onsuccess = () => {
      request.result.close()
      resolve(true)
    }
    request.onerror = (event) => {
      event.preventDefault()
      resolve(creating)
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
