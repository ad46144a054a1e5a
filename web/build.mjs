// Bundle web/src into collab/web: what collab serves, committed so that running collab needs no Node.js.
// It lives inside the Python package so that a wheel ships it as package data (collab/http/static.py).
//
//   node build.mjs [--outdir DIR]      (scripts/build-web installs the pinned packages, then runs this)
//
// collab/web/ holds:
//   index.html, editor.html        the pages, pointing at the hashed assets below
//   assets/<name>-<hash>.js|.css   content-hashed bundles (the server may cache them forever)
//   assets/<name>-<hash>.svg|...   the web app manifest and its icon, content-hashed too
//   sw.js                          the service worker, with the list of files it keeps for offline use
//   third-party-licenses.txt       the licenses of every package inside the bundles
//   SOURCES.sha256                 a hash of everything the build reads (see inputsDigest)
//
// The build is deterministic: the same sources and lock file give the same bytes, so a test can rebuild
// into a temporary directory and compare, and another can recompute SOURCES.sha256 without Node.

import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const WEB = dirname(fileURLToPath(import.meta.url))
const SRC = join(WEB, 'src')
const PAGES = ['index.html', 'editor.html']
const ENTRIES = ['index.js', 'editor.js', 'style.css']
// Copied into assets/ under content-hashed names, in this order: each may name the ones before it ({{icon.svg}}).
const FILES = ['icon.svg', 'manifest.webmanifest']
// Not hashed: a service worker's URL is its identity (the browser checks it for updates at every visit).
const SERVICE_WORKER = 'sw.js'
// What the service worker keeps: the two pages (every /d/<name> is editor.html) and every asset.
const PAGE_URLS = { 'index.html': '/', 'editor.html': '/d/' }
const TARGETS = ['es2020', 'chrome100', 'firefox100', 'safari15']
const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'

function parseArgs (argv) {
  const at = argv.indexOf('--outdir')
  return { outdir: resolve(at >= 0 ? argv[at + 1] : join(WEB, '..', 'collab', 'web')) }
}

function listFiles (dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? listFiles(join(dir, entry.name)) : [join(dir, entry.name)]
  )
}

/**
 * The digest of every input of the build: this script, package.json, package-lock.json and all of src/.
 * One line per file, sorted by path relative to web/: "<path> <sha256 of its bytes>\n"; the digest is the
 * sha256 of those lines. tests/test_web_bundle.py computes the same in Python.
 */
function inputsDigest () {
  const files = [join(WEB, 'build.mjs'), join(WEB, 'package.json'), join(WEB, 'package-lock.json'), ...listFiles(SRC)]
  const lines = files
    .map((file) => relative(WEB, file).split('\\').join('/'))
    .sort()
    .map((path) => `${path} ${createHash('sha256').update(readFileSync(join(WEB, path))).digest('hex')}\n`)
  return createHash('sha256').update(lines.join('')).digest('hex')
}

/** The package a bundled file came from: its directory under node_modules, or null for our own sources. */
function packageDir (input) {
  const parts = input.split('/')
  const at = parts.lastIndexOf('node_modules')
  if (at < 0) return null
  const length = parts[at + 1].startsWith('@') ? 3 : 2
  return parts.slice(0, at + length).join('/')
}

/** Eight base32 characters of the sha256 of `bytes`: the shape of esbuild's [hash] (collab/http/static.py). */
function contentHash (bytes) {
  const bits = createHash('sha256').update(bytes).digest().readUIntBE(0, 5) // 40 bits: 8 characters of 5
  return Array.from({ length: 8 }, (_, i) => BASE32[Math.floor(bits / 2 ** (35 - 5 * i)) % 32]).join('')
}

/** `text` with every {{file}} replaced by the served path of that file; `where` names it in the error. */
function fillIn (text, served, where) {
  return text.replace(/\{\{([\w.]+)\}\}/g, (_, file) => {
    if (!served[file]) throw new Error(`${where}: no built asset for {{${file}}}`)
    return served[file]
  })
}

function licensesText (metafile) {
  // Only files that contributed bytes: metafile.inputs also lists modules that tree shaking dropped.
  const used = Object.values(metafile.outputs).flatMap((output) =>
    Object.entries(output.inputs).filter(([, { bytesInOutput }]) => bytesInOutput > 0).map(([input]) => input)
  )
  const dirs = [...new Set(used.map(packageDir).filter(Boolean))]
  const sections = dirs.map((dir) => {
    const manifest = JSON.parse(readFileSync(join(WEB, dir, 'package.json'), 'utf8'))
    const licenseFile = readdirSync(join(WEB, dir)).sort().find((name) => /^(licen[cs]e|copying)(\.|$)/i.test(name))
    const text = licenseFile ? readFileSync(join(WEB, dir, licenseFile), 'utf8').trim() : `License: ${manifest.license}`
    return { title: `${manifest.name}@${manifest.version} (${manifest.license})`, text }
  }).sort((a, b) => a.title.localeCompare(b.title))
  return 'The collab web editor bundles these packages. Their licenses follow.\n\n' +
    sections.map(({ title, text }) => `${'='.repeat(78)}\n${title}\n${'='.repeat(78)}\n\n${text}\n`).join('\n')
}

async function build (outdir) {
  const staging = `${outdir}.tmp-${process.pid}`
  rmSync(staging, { recursive: true, force: true })
  mkdirSync(staging, { recursive: true })

  const result = await esbuild.build({
    absWorkingDir: WEB,
    entryPoints: ENTRIES.map((entry) => join('src', entry)),
    outdir: join(staging, 'assets'),
    entryNames: '[name]-[hash]',
    bundle: true,
    minify: true,
    format: 'esm',
    target: TARGETS,
    charset: 'utf8',
    legalComments: 'none', // collected whole into third-party-licenses.txt instead
    metafile: true,
    logLevel: 'warning'
  })

  // entry file (src/editor.js) -> served path (/assets/editor-HASH.js)
  const served = {}
  for (const [output, meta] of Object.entries(result.metafile.outputs)) {
    if (meta.entryPoint) served[meta.entryPoint.replace(/^src\//, '')] = '/assets/' + output.split('/').pop()
  }
  for (const file of FILES) {
    const bytes = Buffer.from(fillIn(readFileSync(join(SRC, file), 'utf8'), served, file))
    const [stem, extension] = file.split(/\.(?=[^.]+$)/)
    const name = `${stem}-${contentHash(bytes)}.${extension}`
    writeFileSync(join(staging, 'assets', name), bytes)
    served[file] = `/assets/${name}`
  }
  for (const page of PAGES) {
    writeFileSync(join(staging, page), fillIn(readFileSync(join(SRC, page), 'utf8'), served, page))
  }
  served[SERVICE_WORKER] = await buildServiceWorker(staging)
  writeFileSync(join(staging, 'third-party-licenses.txt'), licensesText(result.metafile))
  writeFileSync(join(staging, 'SOURCES.sha256'), inputsDigest() + '\n')

  // Swap in the new build whole, so no stale hashed asset survives and a failed build leaves the old one alone.
  if (existsSync(outdir)) rmSync(outdir, { recursive: true })
  renameSync(staging, outdir)
  return served
}

/**
 * src/sw.js into sw.js, told what to keep: the pages and every asset written so far, under a cache name that
 * carries a hash of all their bytes, so that any change to them gives a new worker with a new cache.
 */
async function buildServiceWorker (staging) {
  const assets = readdirSync(join(staging, 'assets')).sort()
  const kept = [
    ...PAGES.map((page) => ({ url: PAGE_URLS[page], file: join(staging, page) })),
    ...assets.map((name) => ({ url: `/assets/${name}`, file: join(staging, 'assets', name) }))
  ]
  const digest = createHash('sha256')
  for (const { url, file } of kept) digest.update(`${url}\n`).update(readFileSync(file))
  await esbuild.build({
    absWorkingDir: WEB,
    entryPoints: [join('src', SERVICE_WORKER)],
    outfile: join(staging, SERVICE_WORKER),
    bundle: true,
    minify: true,
    format: 'iife', // a classic worker script: module service workers are newer than the targets
    target: TARGETS,
    charset: 'utf8',
    legalComments: 'none',
    define: {
      COLLAB_CACHE: JSON.stringify(`collab-${digest.digest('hex').slice(0, 16)}`),
      COLLAB_PRECACHE: JSON.stringify(kept.map(({ url }) => url))
    },
    logLevel: 'warning'
  })
  return `/${SERVICE_WORKER}`
}

const { outdir } = parseArgs(process.argv.slice(2))
const served = await build(outdir)
for (const [entry, path] of Object.entries(served)) console.log(`${entry.padEnd(20)} -> ${path}`)
