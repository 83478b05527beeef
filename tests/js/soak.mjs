// Soak traffic: many real y-websocket clients (yjs + y-websocket, one Y.Doc each) in one Node
// process, doing what a deployment sees, until told to stop. Driven by tests/soak/soak.py.
//
//   node soak.mjs '<json config>'
//
// config: url (ws://127.0.0.1:PORT), rooms (names), clients (per room), type_every,
// cursor_every, churn_every, ephemeral_every (seconds; 0 turns a kind of traffic off),
// ephemeral_prefix, seed, time_limit (seconds: a hard deadline for the whole process).
//
// Traffic: each client inserts 1-4 characters at a random place about every `type_every` s and
// moves its cursor (an awareness change) about every `cursor_every` s; every `churn_every` s one
// client per room leaves and a new one joins; every `ephemeral_every` s a short-lived client
// opens a new room, writes, a second client checks the server has the text, and both leave.
//
// stdin commands (JSON lines):
//   {"cmd": "snapshot", "path": P}  write {room: base64 Yjs update} of every room to P
//   {"cmd": "stop", "path": P}      stop the traffic, check convergence (every client of a room
//                                   holds the same text and a fresh client joining gets it),
//                                   write the rooms' final states to P, report and exit
// stdout events (JSON lines): ready {joined}, stats {...} every 10 s, snapshot {rooms, bytes},
//   result {...}. Progress and errors go to stderr.
import { writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const cfg = JSON.parse(process.argv[2] ?? '{}')
const ROOMS = cfg.rooms ?? []
const CLIENTS = cfg.clients ?? 8
const SYNC_TIMEOUT = 20000
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const log = (msg) => process.stderr.write(`[soak.mjs] ${msg}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// A deterministic generator, so two runs (or two servers in one run) see the same traffic.
let seed = (cfg.seed ?? 1) >>> 0
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const jitter = (seconds) => seconds * 1000 * (0.5 + random())
const LETTERS = 'abcdefghijklmnopqrstuvwxyz     '
const word = () => Array.from({ length: 1 + Math.floor(random() * 4) },
  () => LETTERS[Math.floor(random() * LETTERS.length)]).join('')

// Every provider listens for the process's exit: hundreds of them are expected here.
process.setMaxListeners(0)

const hardDeadline = setTimeout(() => {
  log(`time limit of ${cfg.time_limit}s reached`)
  process.exit(3)
}, (cfg.time_limit ?? 600) * 1000)

const stats = {
  inserts: 0,
  cursor_moves: 0,
  joins: 0,
  leaves: 0,
  join_failures: 0,
  unexpected_disconnects: 0,
  ephemeral_ok: 0,
  ephemeral_failed: 0,
  errors: []
}
const fail = (what, err) => {
  if (stats.errors.length < 20) stats.errors.push(`${what}: ${err?.message ?? err}`)
  log(`${what}: ${err?.stack ?? err}`)
}

let clientCount = 0

class Client {
  constructor (room) {
    this.room = room
    this.name = `c${++clientCount}`
    this.doc = new Y.Doc()
    this.text = this.doc.getText('t')
    this.timers = []
    this.closing = false
    this.provider = new WebsocketProvider(cfg.url, room, this.doc, {
      WebSocketPolyfill: WebSocket, disableBc: true
    })
    this.provider.on('status', ({ status }) => {
      if (status === 'disconnected' && !this.closing) stats.unexpected_disconnects++
    })
    this.provider.awareness.setLocalState({
      user: { name: this.name, color: `#${Math.floor(random() * 0xffffff).toString(16)}` },
      cursor: null
    })
  }

  synced () {
    if (this.provider.synced) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.provider.off('sync', onSync)
        reject(new Error(`${this.name} in ${this.room} not synced after ${SYNC_TIMEOUT} ms`))
      }, SYNC_TIMEOUT)
      const onSync = (synced) => {
        if (!synced) return
        clearTimeout(timer)
        this.provider.off('sync', onSync)
        resolve()
      }
      this.provider.on('sync', onSync)
    })
  }

  /** Resolves once `condition()` holds (checked after every update), rejects after `ms`. */
  until (condition, ms, what) {
    if (condition()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.doc.off('update', check)
        reject(new Error(`${this.name} in ${this.room}: ${what} after ${ms} ms`))
      }, ms)
      const check = () => {
        if (!condition()) return
        clearTimeout(timer)
        this.doc.off('update', check)
        resolve()
      }
      this.doc.on('update', check)
    })
  }

  /** Whether this document has seen everything `target` (client -> clock) counts. */
  covers (target) {
    const own = Y.decodeStateVector(Y.encodeStateVector(this.doc))
    for (const [client, clock] of target) if ((own.get(client) ?? 0) < clock) return false
    return true
  }

  type () {
    this.text.insert(Math.floor(random() * (this.text.length + 1)), word())
    stats.inserts++
  }

  moveCursor () {
    const at = (index) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(this.text, index))
    const anchor = Math.floor(random() * (this.text.length + 1))
    this.provider.awareness.setLocalStateField('cursor', { anchor: at(anchor), head: at(anchor) })
    stats.cursor_moves++
  }

  /** Type and move the cursor on jittered timers until stopped. */
  startTraffic () {
    const every = (seconds, action) => {
      if (!seconds) return
      const step = () => {
        action()
        this.timers.push(setTimeout(step, jitter(seconds)))
      }
      this.timers.push(setTimeout(step, jitter(seconds)))
    }
    every(cfg.type_every, () => this.type())
    every(cfg.cursor_every, () => this.moveCursor())
  }

  stopTraffic () {
    for (const timer of this.timers) clearTimeout(timer)
    this.timers = []
  }

  destroy () {
    this.closing = true
    this.stopTraffic()
    this.provider.destroy() // announces the awareness removal, then closes the socket
    this.doc.destroy()
  }
}

// -- the long-lived rooms -----------------------------------------------------------------

/** room name -> its clients */
const rooms = new Map(ROOMS.map((room) => [room, []]))
const roomTimers = []
let running = false

async function join (room) {
  const client = new Client(room)
  rooms.get(room).push(client)
  try {
    await client.synced()
    stats.joins++
    if (running) client.startTraffic()
  } catch (err) {
    stats.join_failures++
    fail('join', err)
  }
  return client
}

function churn (room) {
  const clients = rooms.get(room)
  if (clients.length) {
    const [leaving] = clients.splice(Math.floor(random() * clients.length), 1)
    leaving.destroy()
    stats.leaves++
  }
  join(room)
}

// -- short-lived rooms --------------------------------------------------------------------

let ephemeralCount = 0
const ephemeralInFlight = new Set()

async function ephemeral () {
  const n = ++ephemeralCount
  const room = `${cfg.ephemeral_prefix ?? 'eph'}-${n}`
  const words = `short-lived room ${n}`
  const writer = new Client(room)
  let reader = null
  try {
    await writer.synced()
    writer.text.insert(0, words)
    reader = new Client(room)
    await reader.synced()
    await reader.until(() => reader.text.toString() === words, SYNC_TIMEOUT, 'text not read back')
    stats.ephemeral_ok++
  } catch (err) {
    stats.ephemeral_failed++
    fail(`short-lived room ${room}`, err)
  } finally {
    writer.destroy()
    reader?.destroy()
  }
}

function startEphemeral () {
  if (!cfg.ephemeral_every) return
  roomTimers.push(setInterval(() => {
    const task = ephemeral()
    ephemeralInFlight.add(task)
    task.finally(() => ephemeralInFlight.delete(task))
  }, cfg.ephemeral_every * 1000))
}

// -- commands -----------------------------------------------------------------------------

function writeStates (path, chooseClient) {
  const states = {}
  let bytes = 0
  for (const [room, clients] of rooms) {
    const client = chooseClient(clients)
    if (!client) continue
    const update = Y.encodeStateAsUpdate(client.doc)
    bytes += update.length
    states[room] = Buffer.from(update).toString('base64')
  }
  writeFileSync(path, JSON.stringify(states))
  return { rooms: Object.keys(states).length, bytes }
}

/** The client that has seen the most (for snapshots while the traffic runs). */
const fullest = (clients) => clients.reduce((best, c) => (!best || c.text.length > best.text.length ? c : best), null)

/** Everything the clients of a room have seen: the union of their state vectors. */
function unionOfStates (clients) {
  const union = new Map()
  for (const client of clients) {
    for (const [id, clock] of Y.decodeStateVector(Y.encodeStateVector(client.doc))) {
      union.set(id, Math.max(union.get(id) ?? 0, clock))
    }
  }
  return union
}

async function stop (path) {
  running = false
  for (const timer of roomTimers) clearInterval(timer)
  for (const clients of rooms.values()) for (const client of clients) client.stopTraffic()
  await Promise.allSettled([...ephemeralInFlight])
  const report = {}
  const diverged = []
  await Promise.all([...rooms].map(async ([room, clients]) => {
    const entry = report[room] = { clients: clients.length, connected: 0, converged: false, fresh_ok: false }
    entry.connected = clients.filter((c) => c.provider.wsconnected).length
    // Nobody types any more: once every client has seen every edit any of them made, all
    // must hold the same text, and so must a client that joins now.
    const target = unionOfStates(clients)
    const settled = (client) => client.until(() => client.covers(target), SYNC_TIMEOUT, 'missing edits')
    try {
      await Promise.all(clients.map(settled))
      const texts = new Set(clients.map((c) => c.text.toString()))
      if (texts.size !== 1) throw new Error(`${texts.size} different texts`)
      entry.converged = true
    } catch (err) {
      fail(`convergence of ${room}`, err)
    }
    const expected = clients[0]?.text.toString() ?? ''
    const fresh = new Client(room)
    try {
      await fresh.synced()
      await settled(fresh)
      if (fresh.text.toString() !== expected) throw new Error('a fresh client got another text')
      entry.fresh_ok = true
    } catch (err) {
      fail(`fresh client of ${room}`, err)
    }
    entry.length = expected.length
    clients.push(fresh)
    if (!entry.converged || !entry.fresh_ok) diverged.push(room)
  }))
  const written = writeStates(path, (clients) => clients[clients.length - 1]) // the fresh one
  emit({ event: 'result', rooms: report, diverged, stats, states: written })
  for (const clients of rooms.values()) for (const client of clients) client.destroy()
  clearTimeout(hardDeadline)
  await sleep(500) // let the close frames go out
  process.exit(0)
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (!line.trim()) return
  let msg
  try {
    msg = JSON.parse(line)
    if (msg.cmd === 'snapshot') {
      emit({ event: 'snapshot', ...writeStates(msg.path, fullest) })
    } else if (msg.cmd === 'stop') {
      stop(msg.path).catch((err) => { fail('stop', err); process.exit(1) })
    } else {
      throw new Error(`unknown command ${JSON.stringify(msg.cmd)}`)
    }
  } catch (err) {
    fail('command', err)
  }
})
lines.on('close', () => process.exit(0)) // the orchestrator went away
process.on('SIGTERM', () => process.exit(0))
process.on('uncaughtException', (err) => { fail('uncaught', err); process.exit(1) })

// -- start: everyone joins (a few at a time), then the traffic starts ---------------------

const start = async () => {
  const all = []
  for (const room of ROOMS) for (let i = 0; i < CLIENTS; i++) all.push(room)
  for (let i = 0; i < all.length; i += 20) await Promise.all(all.slice(i, i + 20).map(join))
  running = true
  for (const clients of rooms.values()) for (const client of clients) client.startTraffic()
  if (cfg.churn_every) {
    ROOMS.forEach((room, i) => {
      // Spread the rooms' churn evenly over the interval.
      const offset = (cfg.churn_every * 1000 * i) / ROOMS.length
      roomTimers.push(setTimeout(() => {
        churn(room)
        roomTimers.push(setInterval(() => churn(room), cfg.churn_every * 1000))
      }, offset))
    })
  }
  startEphemeral()
  setInterval(() => {
    const { errors, ...counts } = stats
    emit({ event: 'stats', ...counts, errors: errors.length })
  }, 10000).unref()
  emit({ event: 'ready', joined: stats.joins })
}
start().catch((err) => { fail('start', err); process.exit(1) })
