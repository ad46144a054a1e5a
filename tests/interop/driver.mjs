// A stock Yjs client (yjs + y-websocket provider + ws) that a Python test drives over stdin/stdout.
// One JSON object per line each way. Commands: insert, delete, setMap, pushArray, snapshot, awareness,
// disconnect, connect, exit. Events: status, synced, closed, snapshot, error.
//   node driver.mjs ws://127.0.0.1:PORT ROOM
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as readline from 'node:readline'

const [serverUrl, room] = process.argv.slice(2)
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')

const doc = new Y.Doc()
const text = doc.getText('content')
// Node has a global BroadcastChannel: without disableBc, clients in one process would sync without the server.
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.on('status', ({ status }) => emit({ event: 'status', status }))
provider.on('sync', (synced) => { if (synced) emit({ event: 'synced' }) })
provider.on('closed', ({ code, reason }) => emit({ event: 'closed', code, reason }))
provider.on('connection-close', (event) => { if (event) emit({ event: 'connection-close', code: event.code, reason: event.reason }) })

const snapshot = () => ({
  event: 'snapshot',
  text: text.toString(),
  map: doc.getMap('map').toJSON(),
  array: doc.getArray('array').toJSON(),
  clientID: doc.clientID,
  synced: provider.synced,
  awareness: Object.fromEntries([...provider.awareness.getStates()].map(([id, state]) => [id, state]))
})

const commands = {
  insert: ({ index, value }) => text.insert(index ?? text.length, value),
  delete: ({ index, length }) => text.delete(index, length),
  setMap: ({ key, value }) => doc.getMap('map').set(key, value),
  pushArray: ({ values }) => doc.getArray('array').push(values),
  awareness: ({ state }) => provider.awareness.setLocalState(state),
  snapshot: () => emit(snapshot()),
  disconnect: () => provider.disconnect(),
  connect: () => provider.connect(),
  exit: () => { provider.destroy(); process.exit(0) }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line)
  try {
    commands[command.cmd](command)
    if (command.id !== undefined) emit({ event: 'done', id: command.id })
  } catch (error) {
    emit({ event: 'error', message: String(error), id: command.id })
  }
}).on('close', () => { provider.destroy(); process.exit(0) })
