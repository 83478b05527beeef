// trio-ysync benchmark load generator: one Node process simulating many y-websocket clients.
//
//   node loadgen.mjs '<json config>'
//
// The config names the workload ("fanout", "connect", "bigdoc", "rooms", "presence",
// "restart"), the
// server's base URL (ws://127.0.0.1:PORT), the wire dialect ("y-websocket" or "hocuspocus"),
// the server's PID (its RSS and CPU time are read from /proc) and the workload's sizes. For a
// cluster, "urls" lists the base URL of each server (a room's clients take them in turn, so a
// writer's update reaches receivers on every server) and "pids" every process of it. With
// "checkpoints", the fan-out stops after connecting and after each phase: it prints
// {"checkpoint": NAME} and waits for a line on stdin (the bench reads Redis's counters); the
// restart workload stops at "restart" while the bench restarts the server. Progress
// goes to stderr; the last line on stdout is one JSON object with the figures. Every workload is
// bounded in count and in time: a hard deadline ("time_limit", seconds) ends the process.
//
// Clients speak the protocol directly with lib0 encoding: one Yjs message per WebSocket frame.
// Most clients keep no Y.Doc (the load generator must not be the bottleneck); writers and one
// observer per room keep real documents, and receivers recognise each insert by a marker
// "<writer.seq>" in its text, so latency is measured per delivery without decoding updates.
import { readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

const cfg = JSON.parse(process.argv[2] ?? '{}')
const DIALECT = cfg.dialect ?? 'y-websocket'
const HOCUSPOCUS = DIALECT === 'hocuspocus'
const CLK_TCK = cfg.clk_tck ?? 100
const now = () => performance.now()
const log = (...args) => process.stderr.write(`[loadgen] ${args.join(' ')}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// -- bounded run ---------------------------------------------------------------------------

const deadline = setTimeout(() => {
  finish({ error: `time limit of ${cfg.time_limit}s reached` }, 2)
}, (cfg.time_limit ?? 120) * 1000)

const allClients = new Set()

const stdinLines = cfg.checkpoints ? createInterface({ input: process.stdin })[Symbol.asyncIterator]() : null

/** With cfg.checkpoints: tell the bench where the run is and wait until it says go on. */
async function checkpoint (name) {
  if (!stdinLines) return
  process.stdout.write(JSON.stringify({ checkpoint: name }) + '\n')
  const { value } = await stdinLines.next()
  // The bench may answer with news instead of "go": the server's new processes.
  const news = value?.startsWith('{') ? JSON.parse(value) : {}
  if (news.pids) PIDS.splice(0, PIDS.length, ...news.pids)
}

function finish (result, code = 0) {
  clearTimeout(deadline)
  for (const client of allClients) client.close()
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code))
}

// -- server process figures ----------------------------------------------------------------

const URLS = cfg.urls ?? [cfg.url]
const PIDS = cfg.pids ?? (cfg.pid ? [cfg.pid] : [])

/** RSS and CPU time of the server, summed over its processes. */
function serverStats () {
  if (!PIDS.length) return { rss_kib: null, cpu_s: null }
  try {
    let rss = 0
    let ticks = 0
    for (const pid of PIDS) {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8')
      rss += Number(/VmRSS:\s+(\d+)\s+kB/.exec(status)?.[1] ?? NaN)
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      ticks += Number(fields[11]) + Number(fields[12]) // utime + stime
    }
    return { rss_kib: rss, cpu_s: ticks / CLK_TCK }
  } catch (err) {
    return { rss_kib: null, cpu_s: null, error: String(err) }
  }
}

/** CPU use of this process and of the server between two calls, as fractions of one core. */
function cpuMeter () {
  const t0 = now()
  const self0 = process.cpuUsage()
  const server0 = serverStats().cpu_s
  return () => {
    const wall = (now() - t0) / 1000
    const self = process.cpuUsage(self0)
    const server1 = serverStats().cpu_s
    return {
      wall_s: wall,
      generator_cpu: (self.user + self.system) / 1e6 / wall,
      server_cpu: server0 == null || server1 == null ? null : (server1 - server0) / wall
    }
  }
}

// -- deterministic randomness --------------------------------------------------------------

function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const random = prng(cfg.seed ?? 42)

// -- wire messages -------------------------------------------------------------------------

const EMPTY_UPDATE = Y.encodeStateAsUpdate(new Y.Doc())
const EMPTY_STATE_VECTOR = Y.encodeStateVector(new Y.Doc())

function message (prefix, write) {
  const encoder = encoding.createEncoder()
  if (prefix) encoding.writeUint8Array(encoder, prefix)
  write(encoder)
  return encoding.toUint8Array(encoder)
}
const syncMessage = (prefix, subtype, payload) => message(prefix, (e) => {
  encoding.writeVarUint(e, 0)
  encoding.writeVarUint(e, subtype)
  encoding.writeVarUint8Array(e, payload)
})
function awarenessMessage (prefix, clientID, clock, state) {
  const entries = encoding.createEncoder()
  encoding.writeVarUint(entries, 1)
  encoding.writeVarUint(entries, clientID)
  encoding.writeVarUint(entries, clock)
  encoding.writeVarString(entries, JSON.stringify(state))
  return message(prefix, (e) => {
    encoding.writeVarUint(e, 1)
    encoding.writeVarUint8Array(e, encoding.toUint8Array(entries))
  })
}

// Insert markers: "<writer.seq>" in ASCII, found in the raw update bytes (ContentString).
const LT = 0x3c
const GT = 0x3e
const DOT = 0x2e
const FILLER = ' the quick brown fox jumps'

function scanMarkers (bytes, found) {
  let i = bytes.indexOf(LT)
  while (i !== -1) {
    let j = i + 1
    let writer = 0
    let digits = 0
    while (j < bytes.length && bytes[j] >= 0x30 && bytes[j] <= 0x39) {
      writer = writer * 10 + bytes[j] - 0x30
      j++
      digits++
    }
    if (digits && bytes[j] === DOT) {
      j++
      let seq = 0
      digits = 0
      while (j < bytes.length && bytes[j] >= 0x30 && bytes[j] <= 0x39) {
        seq = seq * 10 + bytes[j] - 0x30
        j++
        digits++
      }
      if (digits && bytes[j] === GT) found(writer, seq)
    }
    i = bytes.indexOf(LT, i + 1)
  }
}

// -- a client ------------------------------------------------------------------------------

const REMOTE = Symbol('remote')
const roomGates = new Map()

class Client {
  /**
   * @param {string} room
   * @param {{doc?: Y.Doc, onUpdate?: Function, onAwareness?: Function}} options
   */
  constructor (room, { doc = null, onUpdate = null, onAwareness = null, applyRemote = true, server = 0 } = {}) {
    this.room = room
    this.server = server % URLS.length // which of the cluster's servers it connects to
    this.doc = doc
    this.applyRemote = applyRemote
    this.onUpdate = onUpdate
    this.onAwareness = onAwareness
    this.prefix = HOCUSPOCUS ? message(null, (e) => encoding.writeVarString(e, room)) : null
    this.synced = false
    this.step2Waiters = []
    this.closed = false
    this.clientID = doc ? doc.clientID : Math.floor(random() * 0x7fffffff)
    this.awarenessClock = 0
    this.awarenessIn = 0
    this.writerId = -1
    this.reconnect = false // on close: open again after y-websocket's back-off
    this.failedReconnects = 0
    this.opened = false
    this.onSynced = null
    this.serverVector = null // the state vector of the server's last SyncStep1
    if (doc) {
      doc.on('update', (update, origin) => {
        if (origin !== REMOTE) this.send(syncMessage(this.prefix, 2, update))
      })
    }
  }

  /**
   * Open the connection; resolves once the server's SyncStep2 has arrived.
   *
   * The first connection to a room completes its sync before any other connection to that room
   * starts: pycrdt-websocket 0.16 leaves the second of two racing first connections to a new
   * room hanging for ever, and a room that exists is the usual case anyway.
   */
  connect (timeoutMs = 30000) {
    const gate = roomGates.get(this.room)
    if (gate) return gate.then(() => this.open(timeoutMs))
    const opened = this.open(timeoutMs)
    roomGates.set(this.room, opened.then(() => {}, () => {}))
    return opened
  }

  open (timeoutMs) {
    const base = URLS[this.server]
    const url = HOCUSPOCUS ? `${base}/` : `${base}/${encodeURIComponent(this.room)}`
    allClients.add(this)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sync timeout in ${this.room}`)), timeoutMs)
      this.step2Waiters.push(() => { clearTimeout(timer); resolve(this) })
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 512 * 1024 * 1024 })
      this.ws = ws
      ws.binaryType = 'nodebuffer'
      ws.on('open', () => {
        this.opened = true
        this.failedReconnects = 0
        if (HOCUSPOCUS) {
          this.send(message(this.prefix, (e) => {
            encoding.writeVarUint(e, 2) // Auth
            encoding.writeVarUint(e, 0) // Token
            encoding.writeVarString(e, '')
          }))
        }
        this.send(syncMessage(this.prefix, 0,
          this.doc ? Y.encodeStateVector(this.doc) : EMPTY_STATE_VECTOR))
      })
      ws.on('message', (data) => this.receive(data))
      ws.on('error', (err) => { clearTimeout(timer); reject(err) })
      ws.on('close', () => {
        clearTimeout(timer)
        if (!this.synced) reject(new Error(`closed before sync in ${this.room}`))
        if (this.reconnect && !this.closed) {
          this.reopen()
        } else {
          this.closed = true
        }
      })
    })
  }

  /**
   * Open again after y-websocket's back-off: 100 ms doubling per failed attempt up to 2.5 s
   * (the provider's defaults), reset by a connection that opened; resolves on sync.
   */
  reopen () {
    if (!this.opened) this.failedReconnects++
    this.opened = false
    this.synced = false
    const delay = Math.min(2 ** this.failedReconnects * 100, 2500)
    setTimeout(() => {
      this.open(30000).then(() => {
        if (this.onSynced) this.onSynced(this)
      }, () => {}) // a refused attempt: its close event schedules the next one
    }, delay)
  }

  /** Ask for a SyncStep2 again: resolves once the server has handled everything sent before. */
  roundTrip (timeoutMs = 60000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`round trip timeout in ${this.room}`)), timeoutMs)
      this.step2Waiters.push(() => { clearTimeout(timer); resolve() })
      this.send(syncMessage(this.prefix, 0,
        this.doc ? Y.encodeStateVector(this.doc) : EMPTY_STATE_VECTOR))
    })
  }

  send (bytes) {
    if (!this.closed && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes)
  }

  sendAwareness (state) {
    this.awarenessClock++
    this.send(awarenessMessage(this.prefix, this.clientID, this.awarenessClock, state))
  }

  close () {
    if (this.closed || !this.ws) return
    this.closed = true
    this.reconnect = false
    try { this.ws.terminate() } catch {}
  }

  receive (data) {
    const decoder = decoding.createDecoder(data)
    while (decoding.hasContent(decoder)) {
      if (HOCUSPOCUS) decoding.readVarString(decoder)
      const type = decoding.readVarUint(decoder)
      if (type === 0 || type === 4) { // sync (4: Hocuspocus's SyncReply)
        const subtype = decoding.readVarUint(decoder)
        const payload = decoding.readVarUint8Array(decoder)
        if (subtype === 0) {
          this.serverVector = payload
          const update = this.doc ? Y.encodeStateAsUpdate(this.doc, payload) : EMPTY_UPDATE
          this.send(syncMessage(this.prefix, 1, update))
        } else {
          if (this.doc && (this.applyRemote || subtype === 1)) Y.applyUpdate(this.doc, payload, REMOTE)
          if (subtype === 2) {
            if (this.onUpdate) this.onUpdate(this, payload)
          } else {
            this.synced = true
            const waiters = this.step2Waiters
            this.step2Waiters = []
            for (const waiter of waiters) waiter()
          }
        }
      } else if (type === 1) { // awareness
        const entries = decoding.readVarUint8Array(decoder)
        this.awarenessIn++
        if (this.onAwareness) this.onAwareness(this, entries)
      } else {
        return // auth, query awareness, Hocuspocus's sync status...: nothing to do
      }
      if (HOCUSPOCUS) return // one message per frame
    }
  }
}

/** Run ``fn`` over ``items`` with at most ``limit`` in flight; returns [results, failures]. */
async function pool (items, limit, fn) {
  const results = []
  const failures = []
  let next = 0
  async function worker () {
    while (next < items.length) {
      const index = next++
      try {
        results[index] = await fn(items[index], index)
      } catch (err) {
        failures.push(String(err.message ?? err))
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return [results, failures]
}

function percentile (sorted, p) {
  if (!sorted.length) return null
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index]
}

const round = (x, digits = 3) => (x == null ? null : Number(x.toFixed(digits)))

// -- fanout --------------------------------------------------------------------------------

async function fanout () {
  const R = cfg.rooms ?? 4
  const C = cfg.clients ?? 25
  const S = Math.min(cfg.writers ?? 2, C - 1)
  const receiversPerUpdate = C - 1
  const writers = []
  const rooms = []

  // Shared delivery bookkeeping; the measurement window is [windowStart, windowEnd).
  let windowStart = Infinity
  let windowEnd = Infinity
  let deliveriesInWindow = 0
  let duplicates = 0
  let latencies = []
  // In a cluster, the deliveries to a client of another server than the writer's.
  let crossLatencies = []

  const onUpdate = (client, payload) => {
    const t = now()
    scanMarkers(payload, (writerId, seq) => {
      const writer = writers[writerId]
      if (!writer || writerId === client.writerId || seq >= writer.sentAt.length) return
      if (writer.room !== client.room) return
      const count = ++writer.deliveries[seq]
      if (count > receiversPerUpdate) { duplicates++; return }
      if (t >= windowStart && t < windowEnd) deliveriesInWindow++
      const sent = writer.sentAt[seq]
      if (sent >= windowStart && sent < windowEnd) {
        latencies.push(t - sent)
        if (client.server !== writer.client.server) crossLatencies.push(t - sent)
      }
      if (count === receiversPerUpdate) {
        writer.inflight--
        if (writer.pump) writer.pump()
      }
    })
  }

  for (let r = 0; r < R; r++) {
    const name = `fanout-${r}`
    const clients = []
    for (let c = 0; c < C; c++) {
      const isWriter = c < S
      const isObserver = c === C - 1
      const doc = isWriter || isObserver ? new Y.Doc() : null
      // Writers type into their own copy without applying the others' inserts (that work would
      // load the generator, not the server); the observer applies everything.
      const client = new Client(name, { doc, onUpdate, applyRemote: !isWriter, server: c })
      if (isWriter) {
        client.writerId = writers.length
        writers.push({
          client,
          room: name,
          text: doc.getText('content'),
          sentAt: [],
          deliveries: [],
          inflight: 0,
          pump: null
        })
      }
      clients.push(client)
    }
    rooms.push({ name, clients, observer: clients[C - 1] })
  }

  const connectStart = now()
  const [, failures] = await pool(rooms.flatMap((room) => room.clients), cfg.concurrency ?? 50,
    (client) => client.connect())
  if (failures.length) throw new Error(`${failures.length} clients failed to connect: ${failures[0]}`)
  log(`fanout: ${R * C} clients synced in ${((now() - connectStart) / 1000).toFixed(2)}s`)

  const insert = (writer) => {
    const seq = writer.sentAt.length
    writer.sentAt.push(now())
    writer.deliveries.push(0)
    writer.inflight++
    // Every insert has the same length, so a random multiple of it is a random place in the
    // writer's own text that is never inside an earlier insert: markers stay whole.
    const text = `<${String(writer.client.writerId).padStart(3, '0')}.${String(seq).padStart(7, '0')}>${FILLER}`
    const pos = text.length * Math.floor(random() * (seq + 1))
    writer.text.insert(pos, text)
  }

  const maxUpdates = cfg.max_updates_per_writer ?? 20000
  const warmupMs = (cfg.warmup ?? 1) * 1000

  async function phase (kind) {
    const durationMs = (kind === 'rate' ? cfg.rate_duration ?? 8 : cfg.window_duration ?? 8) * 1000
    let sending = true
    const timers = []
    const begin = now()
    windowStart = begin + warmupMs
    windowEnd = windowStart + durationMs
    deliveriesInWindow = 0
    latencies = []
    crossLatencies = []
    const sentBefore = writers.reduce((n, w) => n + w.sentAt.length, 0)
    if (kind === 'rate') {
      const period = 1000 / (cfg.rate ?? 10)
      writers.forEach((writer, i) => {
        const start = setTimeout(() => {
          const timer = setInterval(() => {
            if (sending && writer.sentAt.length < maxUpdates) insert(writer)
          }, period)
          timers.push(timer)
        }, (i * period) / writers.length)
        timers.push(start)
      })
    } else {
      const window = cfg.window ?? 4
      for (const writer of writers) {
        writer.pump = () => {
          while (sending && writer.inflight < window && writer.sentAt.length < maxUpdates) {
            insert(writer)
          }
        }
        writer.pump()
      }
    }
    await sleep(warmupMs)
    const meter = cpuMeter()
    await sleep(durationMs)
    const usage = meter()
    sending = false
    for (const timer of timers) { clearTimeout(timer); clearInterval(timer) }
    for (const writer of writers) writer.pump = null
    // Drain: wait until every update reached every receiver (bounded).
    const drainStart = now()
    while (writers.some((w) => w.inflight > 0) && now() - drainStart < (cfg.drain ?? 10) * 1000) {
      await sleep(50)
    }
    latencies.sort((a, b) => a - b)
    crossLatencies.sort((a, b) => a - b)
    const sent = writers.reduce((n, w) => n + w.sentAt.length, 0) - sentBefore
    const result = {
      deliveries_per_s: round(deliveriesInWindow / (durationMs / 1000), 1),
      updates_sent: sent,
      latency_samples: latencies.length,
      p50_ms: round(percentile(latencies, 50)),
      p99_ms: round(percentile(latencies, 99)),
      max_ms: round(latencies[latencies.length - 1] ?? null),
      generator_cpu: round(usage.generator_cpu),
      server_cpu: round(usage.server_cpu),
      server_cpu_us_per_delivery: usage.server_cpu == null || !deliveriesInWindow
        ? null
        : round((usage.server_cpu * usage.wall_s * 1e6) / deliveriesInWindow, 2),
      undelivered: writers.reduce((n, w) => n + Math.max(0, w.inflight), 0),
      drain_s: round((now() - drainStart) / 1000)
    }
    if (URLS.length > 1) {
      result.cross_server_samples = crossLatencies.length
      result.cross_server_p50_ms = round(percentile(crossLatencies, 50))
      result.cross_server_p99_ms = round(percentile(crossLatencies, 99))
    }
    log(`fanout ${kind}: ${JSON.stringify(result)}`)
    return result
  }

  await checkpoint('connected')
  const latency = await phase('rate')
  latency.rate_per_writer = cfg.rate ?? 10
  await checkpoint('rate')
  const throughput = await phase('window')
  throughput.window_per_writer = cfg.window ?? 4
  await checkpoint('window')

  // Convergence: every update reached every receiver exactly once; the observer's copy of each
  // room is the same text as a fresh client's, and holds every insert every writer sent.
  let missing = 0
  for (const writer of writers) {
    for (const count of writer.deliveries) if (count < receiversPerUpdate) missing++
  }
  let converged = missing === 0 && duplicates === 0
  const mismatches = []
  for (const room of rooms) {
    const checker = new Client(room.name, { doc: new Y.Doc() })
    await checker.connect()
    const expected = checker.doc.getText('content').toString()
    const seen = new Map()
    for (const match of expected.matchAll(/<(\d+)\.(\d+)>/g)) {
      seen.set(Number(match[1]), (seen.get(Number(match[1])) ?? 0) + 1)
    }
    const complete = writers
      .filter((w) => w.room === room.name)
      .every((w) => seen.get(w.client.writerId) === w.sentAt.length)
    if (!complete || room.observer.doc.getText('content').toString() !== expected) {
      converged = false
      mismatches.push(room.name)
    }
    checker.close()
  }
  const stats = serverStats()
  return {
    rooms: R,
    clients: C,
    writers: S,
    servers: URLS.length,
    latency,
    throughput,
    converged,
    missing,
    duplicates,
    mismatched_rooms: [...new Set(mismatches)],
    server_rss_kib: stats.rss_kib
  }
}

// -- connect -------------------------------------------------------------------------------

async function connect () {
  const N = cfg.clients ?? 1000
  const R = cfg.rooms || N // 0: every client in a room of its own
  const K = cfg.concurrency ?? 50
  // With warm_rooms: one client per room first, so the rooms exist before the baseline is
  // taken and the figures are about connections; without, each client also opens its room.
  if (cfg.warm_rooms ?? true) {
    const [, warmFailures] = await pool(Array.from({ length: R }, (_, r) => r), K,
      (r) => new Client(`connect-${r}`).connect())
    if (warmFailures.length) throw new Error(`warm-up failed: ${warmFailures[0]}`)
  }
  await sleep(cfg.settle_ms ?? 1000)
  const base = serverStats().rss_kib
  const meter = cpuMeter()
  const start = now()
  const [, failures] = await pool(Array.from({ length: N }, (_, i) => i), K,
    (i) => new Client(`connect-${i % R}`).connect())
  const elapsed = (now() - start) / 1000
  const usage = meter()
  await sleep(cfg.settle_ms ?? 1000)
  const after = serverStats().rss_kib
  const synced = N - failures.length
  return {
    rooms: R,
    clients: N,
    concurrency: K,
    synced,
    failures: failures.length,
    first_failure: failures[0] ?? null,
    connect_s: round(elapsed),
    connections_per_s: round(synced / elapsed, 1),
    rss_base_kib: base,
    rss_kib: after,
    rss_per_connection_kib: synced ? round((after - base) / synced, 2) : null,
    warm_rooms: cfg.warm_rooms ?? true,
    generator_cpu: round(usage.generator_cpu),
    server_cpu: round(usage.server_cpu)
  }
}

// -- bigdoc --------------------------------------------------------------------------------

function bigDocument (megabytes) {
  const dir = cfg.cache_dir
  const file = dir ? join(dir, `bigdoc-${megabytes}mb.bin`) : null
  const meta = file ? `${file}.json` : null
  if (file && existsSync(file) && existsSync(meta)) {
    return { update: new Uint8Array(readFileSync(file)), ...JSON.parse(readFileSync(meta, 'utf8')) }
  }
  // Many edits at random places, as typing builds a document (not one big insert).
  const rand = prng(megabytes * 7919)
  const doc = new Y.Doc()
  doc.clientID = 123456789
  const text = doc.getText('content')
  const target = megabytes * 1024 * 1024
  const chunk = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod ' +
    'tempor incididunt ut labore. '
  let written = 0
  while (written < target) {
    const pos = Math.floor(rand() * (text.length + 1))
    text.insert(pos, chunk)
    written += chunk.length
    if (rand() < 0.05 && text.length > 200) {
      text.delete(Math.floor(rand() * (text.length - 20)), 10)
    }
  }
  const update = Y.encodeStateAsUpdate(doc)
  const info = { text_length: text.length, update_bytes: update.length }
  if (file) {
    mkdirSync(dir, { recursive: true })
    writeFileSync(file, update)
    writeFileSync(meta, JSON.stringify(info))
  }
  return { update, ...info }
}

async function bigdoc () {
  const sizes = cfg.sizes_mb ?? [1, 10]
  const results = []
  for (const mb of sizes) {
    const generated = now()
    const { update, text_length: textLength, update_bytes: updateBytes } = bigDocument(mb)
    log(`bigdoc: ${mb} MB document ready (${updateBytes} bytes, ${((now() - generated) / 1000).toFixed(1)}s)`)
    const room = `bigdoc-${mb}`
    const seeder = new Client(room)
    await seeder.connect()
    const before = serverStats().rss_kib
    const meter = cpuMeter()
    const uploadStart = now()
    seeder.send(syncMessage(seeder.prefix, 2, update))
    await seeder.roundTrip(cfg.round_trip_timeout_ms ?? 120000)
    const upload = (now() - uploadStart) / 1000
    const reader = new Client(room, { doc: new Y.Doc() })
    const syncStart = now()
    await reader.connect(cfg.round_trip_timeout_ms ?? 120000)
    const sync = (now() - syncStart) / 1000
    const usage = meter()
    const gotLength = reader.doc.getText('content').length
    await sleep(500)
    const after = serverStats().rss_kib
    results.push({
      size_mb: mb,
      update_bytes: updateBytes,
      upload_s: round(upload),
      sync_s: round(sync),
      complete: gotLength === textLength,
      rss_before_kib: before,
      rss_kib: after,
      generator_cpu: round(usage.generator_cpu),
      server_cpu: round(usage.server_cpu)
    })
    reader.close()
    log(`bigdoc: ${JSON.stringify(results[results.length - 1])}`)
  }
  return { sizes_mb: sizes, docs: results }
}

// -- rooms ---------------------------------------------------------------------------------

async function rooms () {
  const M = cfg.rooms ?? 500
  const K = cfg.concurrency ?? 50
  const edits = cfg.edits ?? 10
  const populate = async (name) => {
    const client = new Client(name, { doc: new Y.Doc() })
    await client.connect()
    const text = client.doc.getText('content')
    for (let i = 0; i < edits; i++) {
      text.insert(Math.floor(random() * (text.length + 1)), `edit ${i} of a small document; `)
    }
    await client.roundTrip()
    return client
  }
  await populate('rooms-warmup')
  await sleep(cfg.settle_ms ?? 1000)
  const base = serverStats().rss_kib
  const meter = cpuMeter()
  const start = now()
  const [, failures] = await pool(Array.from({ length: M }, (_, i) => `rooms-${i}`), K, populate)
  const elapsed = (now() - start) / 1000
  const usage = meter()
  await sleep(cfg.settle_ms ?? 1000)
  const after = serverStats().rss_kib
  const loaded = M - failures.length
  return {
    rooms: M,
    edits_per_room: edits,
    loaded,
    failures: failures.length,
    first_failure: failures[0] ?? null,
    populate_s: round(elapsed),
    rss_base_kib: base,
    rss_kib: after,
    rss_per_room_kib: loaded ? round((after - base) / loaded, 2) : null,
    generator_cpu: round(usage.generator_cpu),
    server_cpu: round(usage.server_cpu)
  }
}

// -- presence ------------------------------------------------------------------------------

/** Each entry of an awareness update: fn(clientID, state) (state null when removed). */
function forEachAwarenessEntry (entries, fn) {
  const decoder = decoding.createDecoder(entries)
  const count = decoding.readVarUint(decoder)
  for (let i = 0; i < count; i++) {
    const clientID = decoding.readVarUint(decoder)
    decoding.readVarUint(decoder) // clock
    fn(clientID, JSON.parse(decoding.readVarString(decoder)))
  }
}

async function presence () {
  const C = cfg.clients ?? 50
  const seconds = cfg.duration ?? 10
  const hz = cfg.hz ?? 1
  // Latency: each state carries the time it was sent (one process, one clock); every
  // receiver other than its sender records when it arrived, however the server batched it.
  let measuring = false
  const latencies = []
  let entriesIn = 0
  const onAwareness = (client, entries) => {
    if (!measuring) return
    const at = now()
    forEachAwarenessEntry(entries, (clientID, state) => {
      if (clientID === client.clientID || state == null) return
      entriesIn++
      if (state.sent != null) latencies.push(at - state.sent)
    })
  }
  const clients = Array.from({ length: C }, () => new Client('presence', { onAwareness }))
  const [, failures] = await pool(clients, cfg.concurrency ?? 50, (c) => c.connect())
  if (failures.length) throw new Error(`${failures.length} clients failed: ${failures[0]}`)
  const state = (client, i) => ({
    user: { name: `user ${i}`, color: '#30bced' },
    cursor: { anchor: Math.floor(random() * 1000), head: Math.floor(random() * 1000) },
    sent: now()
  })
  clients.forEach((c, i) => c.sendAwareness(state(c, i)))
  await sleep(1000)
  const inBefore = clients.reduce((n, c) => n + c.awarenessIn, 0)
  const timers = []
  let sent = 0
  let running = true
  measuring = true
  clients.forEach((client, i) => {
    timers.push(setTimeout(() => {
      const tick = () => {
        if (!running) return
        client.sendAwareness(state(client, i))
        sent++
      }
      tick()
      timers.push(setInterval(tick, 1000 / hz))
    }, (i * 1000) / hz / C))
  })
  const meter = cpuMeter()
  await sleep(seconds * 1000)
  const usage = meter()
  running = false
  for (const timer of timers) { clearTimeout(timer); clearInterval(timer) }
  await sleep(500) // the last states arrive
  measuring = false
  const received = clients.reduce((n, c) => n + c.awarenessIn, 0) - inBefore
  latencies.sort((a, b) => a - b)
  return {
    clients: C,
    hz,
    duration_s: seconds,
    awareness_sent: sent,
    // Of sent x (C - 1) states that should reach another client.
    states_expected: sent * (C - 1),
    states_received: entriesIn,
    messages_received_per_s: round(received / usage.wall_s, 1),
    latency_p50_ms: round(percentile(latencies, 50)),
    latency_p99_ms: round(percentile(latencies, 99)),
    server_cpu: round(usage.server_cpu),
    generator_cpu: round(usage.generator_cpu),
    server_rss_kib: serverStats().rss_kib
  }
}

// -- restart -------------------------------------------------------------------------------

/** Whether a state vector (lib0 encoded) holds at least one change by clientID. */
function vectorHas (vector, clientID) {
  if (!vector) return false
  const decoder = decoding.createDecoder(vector)
  const count = decoding.readVarUint(decoder)
  for (let i = 0; i < count; i++) {
    const client = decoding.readVarUint(decoder)
    const clock = decoding.readVarUint(decoder)
    if (client === clientID && clock > 0) return true
  }
  return false
}

async function restart () {
  const N = cfg.clients ?? 2000
  const K = cfg.concurrency ?? 50
  // Each client edits a room of its own, then stays connected across the restart.
  const clients = Array.from({ length: N }, (_, i) => new Client(`restart-${i}`, { doc: new Y.Doc() }))
  const [, failures] = await pool(clients, K, async (client, i) => {
    await client.connect()
    client.doc.getText('content').insert(0, `edit by client ${i} before the restart; `)
    await client.roundTrip()
  })
  if (failures.length) throw new Error(`${failures.length} clients failed: ${failures[0]}`)
  let resynced = 0
  let firstAt = null
  let lastAt = 0
  let allSynced = null
  const done = new Promise((resolve) => { allSynced = resolve })
  for (const client of clients) {
    client.reconnect = true
    client.serverVector = null
    client.onSynced = () => {
      resynced++
      lastAt = now()
      firstAt ??= lastAt
      if (resynced === N) allSynced()
    }
  }
  await sleep(cfg.settle_ms ?? 1000)
  const stopping = now()
  await checkpoint('restart') // the bench stops the server and starts it again on its port
  const back = now()
  const meter = cpuMeter()
  const limit = sleep((cfg.resync_timeout_s ?? 60) * 1000).then(() => 'timeout')
  const outcome = await Promise.race([done, limit])
  const usage = meter()
  const restored = clients.filter((c) => vectorHas(c.serverVector, c.doc.clientID)).length
  return {
    clients: N,
    resynced,
    timed_out: outcome === 'timeout',
    // The storm: from the first client synced again to the last. The outage clients see
    // also holds the restart and where their back-off schedule happened to be.
    resync_s: resynced === N ? round((lastAt - firstAt) / 1000) : null,
    outage_s: resynced === N ? round((lastAt - stopping) / 1000) : null,
    restart_s: round((back - stopping) / 1000),
    // Rooms whose document came back with the client's edit before the client sent it again.
    restored,
    server_cpu: round(usage.server_cpu),
    generator_cpu: round(usage.generator_cpu),
    server_rss_kib: serverStats().rss_kib
  }
}

// -- main ----------------------------------------------------------------------------------

const workloads = { fanout, connect, bigdoc, rooms, presence, restart }

try {
  const run = workloads[cfg.workload]
  if (!run) throw new Error(`unknown workload ${cfg.workload}`)
  const started = now()
  const result = await run()
  finish({ workload: cfg.workload, dialect: DIALECT, elapsed_s: round((now() - started) / 1000), ...result })
} catch (err) {
  log(err.stack ?? String(err))
  finish({ workload: cfg.workload, error: String(err.message ?? err) }, 1)
}
