// A real y-websocket client driven by JSON lines, for interop tests.
//
//   node client.mjs <serverUrl> <room> [--name NAME] [--params JSON]
//
// --params: URL parameters for every connection (y-websocket's params option: { token }).
//
// stdin commands (one JSON object per line; "id" is echoed in the reply):
//   insert {index,text} | insert_big {bytes} | get_text | set_awareness {state} |
//   clear_awareness | wait_text {text} | wait_awareness_count {count} | disconnect | connect | close
// stdout events (one JSON object per line):
//   hello {name,client_id} (first), status, synced, text, awareness, connection_close, closed,
//   connection_error, permission_denied, result {id,ok,...}, error {id,message}
import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as authProtocol from 'y-protocols/auth'
import { WebsocketProvider, messageAuth } from 'y-websocket'

const args = process.argv.slice(2)
const nameAt = args.indexOf('--name')
const name = nameAt >= 0 ? args.splice(nameAt, 2)[1] : 'client'
const paramsAt = args.indexOf('--params')
const params = paramsAt >= 0 ? JSON.parse(args.splice(paramsAt, 2)[1]) : {}
const [serverUrl, room] = args
if (!serverUrl || !room) {
  process.stderr.write('usage: node client.mjs <serverUrl> <room> [--name NAME]\n')
  process.exit(2)
}

// Pipes are written synchronously on Linux, so a line is out before the next one is made.
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const log = (msg) => process.stderr.write(`[js ${name}] ${msg}\n`)

const doc = new Y.Doc()
const text = doc.getText('t')
// disableBc: Node 20 has a global BroadcastChannel; keep all traffic on the WebSocket under test.
// connect: false so the first "connecting" status is seen by the listeners below.
const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket, disableBc: true, connect: false, params
})
const awareness = provider.awareness

const awarenessStates = () => Object.fromEntries(awareness.getStates())

// Waiters for wait_text / wait_awareness_count, re-checked after every change.
let waiters = []
const settle = () => {
  waiters = waiters.filter((w) => {
    const reply = w.check()
    if (reply === undefined) return true
    emit({ event: 'result', id: w.id, ok: true, ...reply })
    return false
  })
}

provider.on('status', ({ status }) => emit({ event: 'status', status }))
provider.on('sync', (synced) => { if (synced) emit({ event: 'synced' }) })
provider.on('connection-close', (ev) =>
  emit({ event: 'connection_close', code: ev?.code ?? null, reason: ev?.reason ?? null }))
// Only emitted for close codes the provider treats as permanent (4400-4499 by default).
provider.on('closed', ({ code, reason }) => emit({ event: 'closed', code, reason }))
provider.on('connection-error', (ev) => emit({ event: 'connection_error', message: String(ev?.message ?? ev?.type ?? ev) }))
// The stock handler only console.warns; report permission-denied messages as events instead.
provider.messageHandlers[messageAuth] = (_encoder, decoder, prov) =>
  authProtocol.readAuthMessage(decoder, prov.doc, (_doc, reason) => emit({ event: 'permission_denied', reason }))
doc.on('update', () => { emit({ event: 'text', text: text.toString() }); settle() })
awareness.on('change', () => {
  emit({ event: 'awareness', self: doc.clientID, states: awarenessStates() })
  settle()
})

let closing = false
const shutdown = (code) => {
  if (closing) return
  closing = true
  const ws = provider.ws // destroy() detaches it; keep it to wait for the close handshake
  provider.destroy() // announces our awareness removal, then closes the socket
  const exit = () => process.exit(code)
  if (ws && ws.readyState !== WebSocket.CLOSED) {
    ws.once('close', exit)
    setTimeout(exit, 2000).unref() // the server may never answer the close frame
  } else {
    exit()
  }
}

const commands = {
  insert: ({ index, text: s }) => { text.insert(index, s); return { text: text.toString() } },
  insert_big: ({ bytes }) => { text.insert(text.length, 'x'.repeat(bytes)); return { length: text.length } },
  get_text: () => ({ text: text.toString() }),
  set_awareness: ({ state }) => { awareness.setLocalState(state); return {} },
  clear_awareness: () => { awareness.setLocalState(null); return {} },
  wait_text: ({ id, text: want }) => {
    waiters.push({ id, check: () => (text.toString() === want ? { text: want } : undefined) })
  },
  wait_awareness_count: ({ id, count }) => {
    waiters.push({
      id,
      check: () => (awareness.getStates().size === count ? { self: doc.clientID, states: awarenessStates() } : undefined)
    })
  },
  disconnect: () => { provider.disconnect(); return {} },
  connect: () => { provider.connect(); return {} },
  close: () => { shutdown(0) }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (line.trim() === '' || closing) return
  let msg
  try {
    msg = JSON.parse(line)
    const handler = commands[msg.cmd]
    if (!handler) throw new Error(`unknown command ${JSON.stringify(msg.cmd)}`)
    const reply = handler(msg)
    if (reply !== undefined && msg.id !== undefined) emit({ event: 'result', id: msg.id, ok: true, ...reply })
    settle() // a wait_* may already be satisfied
  } catch (err) {
    emit({ event: 'error', id: msg?.id ?? null, message: String(err?.stack ?? err) })
  }
})
lines.on('close', () => shutdown(0)) // the test process went away or closed our stdin

process.on('SIGTERM', () => shutdown(0))
emit({ event: 'hello', name, client_id: doc.clientID })
provider.connect()
process.on('uncaughtException', (err) => {
  log(`uncaught: ${err?.stack ?? err}`)
  emit({ event: 'error', id: null, message: String(err?.stack ?? err) })
  shutdown(1)
})
