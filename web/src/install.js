// Register the service worker (web/src/sw.js, served at /sw.js) that lets the pages load with no network once
// visited; imported for its effect by every page's script.
//
// Browsers offer service workers on secure origins only (https, or http on localhost): on plain http from
// another address there is none, and the pages simply need the network, as before.

function register () {
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((error) => {
    console.warn('collab: the pages will not load offline (no service worker):', error)
  })
}

if ('serviceWorker' in navigator) {
  // After the page has loaded, so that fetching the files to keep does not slow down the first visit.
  if (document.readyState === 'complete') register()
  else window.addEventListener('load', register, { once: true })
}
