// The service worker (served at /sw.js, scope /): once a page was visited, the pages load with no network.
//
//   /, /d/<name>   network first; offline, no answer within NETWORK_WAIT_MS, or a proxy's 502-504 -> the
//                  page kept from last time.
//                  Every editor page is the same file (its script reads the name from the URL), so one copy,
//                  under /d/, serves all documents; the home page is kept under /.
//   /assets/*      cache first: their names carry a content hash, so a kept copy is never stale.
//   anything else  not touched: /api/* always goes to the server (its answers are live and need the token),
//                  and a service worker never sees WebSocket traffic.
//
// web/build.mjs fills in COLLAB_CACHE (a name carrying a hash of every kept file) and COLLAB_PRECACHE (the
// pages and every asset of the build). A new build gives a new sw.js, which the browser installs at the next
// visit: it fetches the new build's files into a new cache, then removes the old caches when it takes over.

/* global COLLAB_CACHE, COLLAB_PRECACHE */

const CACHE = COLLAB_CACHE
const PRECACHE = COLLAB_PRECACHE
const OWN_CACHES = /^collab-/
const HOME = '/'
const EDITOR = '/d/'
// A proxy in front of a stopped server answers these; for a page, that is offline too.
const GATEWAY_DOWN = new Set([502, 503, 504])
// A network that takes longer than this to answer with a page (a page is a few KB) is as good as none: a
// train in a tunnel, a captive portal. The page kept from last time is served, and the answer, if it comes,
// is kept for next time.
const NETWORK_WAIT_MS = 4000

self.addEventListener('install', (event) => {
  // 'no-cache': revalidate with the server rather than trust the browser's HTTP cache for the pages.
  const requests = PRECACHE.map((path) => new Request(path, { cache: 'no-cache' }))
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(requests)).then(() => self.skipWaiting()))
})

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    const stale = (await caches.keys()).filter((name) => OWN_CACHES.test(name) && name !== CACHE)
    await Promise.all(stale.map((name) => caches.delete(name)))
    // Pages opened before this worker took over are served by it from now on (a first visit included).
    await self.clients.claim()
  })())
})

self.addEventListener('fetch', (event) => {
  const request = event.request
  if (request.method !== 'GET') return
  const url = new URL(request.url)
  if (url.origin !== self.location.origin) return
  if (url.pathname.startsWith('/assets/')) {
    event.respondWith(cacheFirst(event))
  } else if (request.mode === 'navigate') {
    const page = pageOf(url.pathname)
    if (page) event.respondWith(networkFirst(event, page))
  }
})

/** The cache key of the page at `pathname`: HOME or EDITOR, or null for a path that is not a page. */
function pageOf (pathname) {
  if (pathname === HOME) return HOME
  if (pathname.startsWith(EDITOR)) return EDITOR
  return null
}

async function networkFirst (event, page) {
  const fromNetwork = fetch(event.request).then((response) => {
    if (response.ok) {
      // Kept under the page's key, never the URL: no copy per document. And a new Response, not the one
      // fetched: that one keeps its URL (response.url), ?token= and all, in Cache Storage for anyone to read.
      event.waitUntil(keepPage(page, response.clone()))
    }
    return response
  })
  event.waitUntil(fromNetwork.catch(() => {})) // the worker lives until the answer is kept, if it is late
  const first = await Promise.race([fromNetwork.catch(() => null), delay(NETWORK_WAIT_MS)])
  if (first && !GATEWAY_DOWN.has(first.status)) return first
  const kept = await caches.match(page, { cacheName: CACHE })
  // With nothing kept, the network's answer (or its error) whenever it comes, as without this worker.
  return kept ?? fromNetwork
}

/** Keep the page `fetched` under `page`: its body, status and headers, with no URL. */
async function keepPage (page, fetched) {
  const copy = new Response(await fetched.blob(), {
    status: fetched.status,
    statusText: fetched.statusText,
    headers: fetched.headers
  })
  const cache = await caches.open(CACHE)
  await cache.put(page, copy)
}

function delay (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

async function cacheFirst (event) {
  const kept = await caches.match(event.request)
  if (kept) return kept
  const response = await fetch(event.request)
  if (response.ok) {
    const copy = response.clone()
    event.waitUntil(caches.open(CACHE).then((cache) => cache.put(event.request, copy)))
  }
  return response
}
