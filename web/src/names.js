// Document names, the URLs that carry them and the API requests about them. The server is the authority on
// what a valid name is (collab/names.py, close code 4400); `nameProblem` mirrors its rules so the open field
// can say why early.

export const MAX_NAME_LENGTH = 255

/** Why `name` is not an acceptable document name, or null if it is. */
export function nameProblem (name) {
  if (name === '') return 'Type a name for the document.'
  if ([...name].length > MAX_NAME_LENGTH) return `A name is at most ${MAX_NAME_LENGTH} characters.`
  if (name !== name.trim()) return 'A name cannot start or end with a space.'
  // Unicode categories Cc (control) and Cs (lone surrogate), as the server checks.
  if (/[\u0000-\u001f\u007f-\u009f]|\p{Cs}/u.test(name)) return 'A name cannot contain control characters.'
  return null
}

/**
 * The editor page's path for a document: /d/ then the name, percent-encoded segment by segment so that a
 * name with slashes reads naturally (/d/team/plan%201). A name with a "." or ".." segment would be folded
 * away by URL normalisation, so such a name is encoded whole, its slashes as %2F.
 */
export function editorPath (name) {
  const segments = name.split('/')
  if (segments.some((segment) => segment === '.' || segment === '..')) return '/d/' + encodeURIComponent(name)
  return '/d/' + segments.map(encodeURIComponent).join('/')
}

/**
 * The document name an editor page's path names; throws URIError if it is not valid percent-encoded UTF-8.
 * The server percent-decodes the whole path the same way, %2F included.
 */
export function nameFromEditorPath (pathname) {
  return decodeURIComponent(pathname.replace(/^\/d\//, ''))
}

/** The WebSocket server that served this page: ws(s)://<same host>. */
export function websocketServer (where = window.location) {
  return `${where.protocol === 'https:' ? 'wss:' : 'ws:'}//${where.host}`
}

/**
 * A document's room as the last part of its WebSocket URL (the provider joins server + '/' + room).
 * Encoded whole, slashes too: no dot segment can be normalised away, and the server decodes %2F to "/".
 */
export function roomPath (name) {
  return encodeURIComponent(name)
}

/** The access token this page was opened with (`?token=...`), or null when the server needs none. */
export function pageToken (where = window.location) {
  return new URLSearchParams(where.search).get('token')
}

/** `path` with the page's access token carried along, for links and API requests. */
export function withToken (path, token = pageToken()) {
  if (!token) return path
  return `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`
}

/**
 * The API path of document `name` under `prefix` ('/api/docs', '/api/history'), with `tail` after it: the
 * name percent-encoded whole, slashes too (the server decodes %2F back to "/").
 */
export function apiPath (prefix, name, tail = '') {
  return `${prefix}/${encodeURIComponent(name)}${tail}`
}

/** How long an API request may take before the page gives up on it and says so. */
export const API_TIMEOUT_MS = 15000

/**
 * Call the API with the page's token (as a Bearer header: it stays out of the request line). Resolves with
 * `{ status, body }`: body is the JSON answer (`as: 'json'`) or, for a 200 with `as: 'text'`, its text; an
 * answer that is not what was asked for comes as `{ error }`. Rejects only when no answer came (offline, the
 * server away, `timeout` passed).
 */
export async function callApi (path, { method = 'GET', as = 'json', token = pageToken(), timeout = API_TIMEOUT_MS } = {}) {
  const response = await fetch(path, {
    method,
    cache: 'no-store',
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    signal: AbortSignal.timeout(timeout)
  })
  const answer = await response.text()
  if (as === 'text' && response.status === 200) return { status: 200, body: answer }
  let body
  try {
    body = JSON.parse(answer)
  } catch {
    body = { error: answer.trim() || `the server answered ${response.status}` }
  }
  return { status: response.status, body }
}

/** Why an API call failed, for a person: the server's own words when it answered, else what happened. */
export function apiProblem (answerOrError) {
  if (answerOrError instanceof Error) {
    return answerOrError.name === 'TimeoutError' ? 'the server did not answer in time' : 'the server could not be reached'
  }
  return answerOrError.body?.error || `the server answered ${answerOrError.status}`
}
