// Real Yjs v1 updates from the stock yjs, one JSON line each: {"name": ..., "update": hex}, for
// tests/test_yupdate.py to check that collab's walk of the format accepts everything yjs writes.
//   node updates.mjs
import * as Y from 'yjs'

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const emit = (name, update) => process.stdout.write(JSON.stringify({ name, update: hex(update) }) + '\n')

// Every incremental update a document emits while it is edited, then the whole document.
const recorded = (name, edit) => {
  const doc = new Y.Doc()
  let step = 0
  doc.on('update', (update) => emit(`${name} step ${step++}`, update))
  edit(doc)
  emit(`${name} whole`, Y.encodeStateAsUpdate(doc))
  emit(`${name} merged`, Y.mergeUpdates([Y.encodeStateAsUpdate(doc), Y.encodeStateAsUpdate(new Y.Doc())]))
  return doc
}

recorded('text', (doc) => {
  const text = doc.getText('content')
  for (const ch of 'hello, world') text.insert(text.length, ch)
  text.insert(0, 'é😀漢')
  text.delete(2, 3)
  text.format(0, 4, { bold: true, link: { href: 'https://example.com' } })
  text.insertEmbed(1, { image: 'cat.png', size: [1, 2] })
  text.insert(3, 'x', { italic: true })
})

recorded('map and array', (doc) => {
  const map = doc.getMap('map')
  map.set('number', 42)
  map.set('negative', -7)
  map.set('big', 2 ** 40)
  map.set('float', 1.5)
  map.set('string', 'ünïcödé')
  map.set('null', null)
  map.set('bool', true)
  map.set('false', false)
  map.set('bytes', new Uint8Array([0, 1, 255]))
  map.set('nested', { a: [1, { b: [[], {}] }], c: 'd' })
  map.set('bigint', 12345678901234567890n)
  map.set('undefined', undefined)
  const array = doc.getArray('array')
  array.push([1, 'two', { three: 3 }, [4], null])
  array.insert(1, [new Y.Map(), new Y.Array(), new Y.Text('t')])
  array.get(1).set('inner', 'value')
  array.delete(0, 2)
  map.delete('number')
})

recorded('xml', (doc) => {
  const fragment = doc.getXmlFragment('prosemirror')
  const paragraph = new Y.XmlElement('paragraph')
  paragraph.setAttribute('class', 'intro')
  const text = new Y.XmlText('hello')
  paragraph.insert(0, [text])
  fragment.insert(0, [paragraph, new Y.XmlText('tail')])
  text.format(0, 2, { strong: {} })
})

recorded('subdocuments', (doc) => {
  const folder = doc.getMap('folder')
  folder.set('a', new Y.Doc({ guid: 'sub-a' }))
  folder.set('b', new Y.Doc({ guid: 'sub-b', autoLoad: true, meta: { title: 'B' }, gc: false }))
  folder.delete('a')
})

// Two clients' concurrent edits, merged: several clients and delete set entries in one update.
const one = new Y.Doc()
const two = new Y.Doc()
one.getText('content').insert(0, 'one two three')
Y.applyUpdate(two, Y.encodeStateAsUpdate(one))
one.getText('content').delete(0, 4)
two.getText('content').insert(13, ' four')
two.getText('content').delete(4, 4)
emit('two clients merged', Y.mergeUpdates([Y.encodeStateAsUpdate(one), Y.encodeStateAsUpdate(two)]))
emit('two clients diff', Y.encodeStateAsUpdate(two, Y.encodeStateVector(one)))

// Updates merged across a gap: yjs writes a Skip struct for the missing clocks.
const gappy = new Y.Doc()
const steps = []
gappy.on('update', (update) => steps.push(update))
for (const ch of 'abc') gappy.getText('content').insert(gappy.getText('content').length, ch)
emit('merged across a gap', Y.mergeUpdates([steps[0], steps[2]]))
