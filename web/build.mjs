// Bundle web/src into collab/web: what collab serves, committed so that running collab needs no Node.js.
// It lives inside the Python package so that a wheel ships it as package data (collab/http/static.py).
//
//   node build.mjs [--outdir DIR]      (scripts/build-web installs the pinned packages, then runs this)
//
// collab/web/ holds:
//   index.html, editor.html        the pages, pointing at the hashed assets below
//   assets/<name>-<hash>.js|.css   content-hashed bundles (the server may cache them forever)
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
    target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
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
  for (const page of PAGES) {
    const html = readFileSync(join(SRC, page), 'utf8').replace(/\{\{([\w.]+)\}\}/g, (_, entry) => {
      if (!served[entry]) throw new Error(`${page}: no built asset for {{${entry}}}`)
      return served[entry]
    })
    writeFileSync(join(staging, page), html)
  }
  writeFileSync(join(staging, 'third-party-licenses.txt'), licensesText(result.metafile))
  writeFileSync(join(staging, 'SOURCES.sha256'), inputsDigest() + '\n')

  // Swap in the new build whole, so no stale hashed asset survives and a failed build leaves the old one alone.
  if (existsSync(outdir)) rmSync(outdir, { recursive: true })
  renameSync(staging, outdir)
  return served
}

const { outdir } = parseArgs(process.argv.slice(2))
const served = await build(outdir)
for (const [entry, path] of Object.entries(served)) console.log(`${entry.padEnd(10)} -> ${path}`)
