// Prints one JSON document of wire test vectors made with the real yjs, y-protocols and lib0
// encoders. Every frame is decoded again (wire.mjs) and checked against its description, so a
// vector that the JS side itself would read differently never reaches the Python tests.
//
//   node vectors.mjs > vectors.json
import { readFileSync } from 'node:fs'
import { isDeepStrictEqual } from 'node:util'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as authProtocol from 'y-protocols/auth'
import { toHex, describeFrame, describeAwarenessUpdate } from './wire.mjs'

const BIG_ID = 5000000000 // above 2**32: client IDs are uint53 on the wire
const MAX_SAFE = Number.MAX_SAFE_INTEGER // 2**53 - 1
const PROBE_ID = 4242424242 // client ID of helper Awareness objects, used by no vector

const versionOf = (pkg) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url))).version

// Every Y.Doc gets a fixed client ID so the bytes are reproducible.
const newDoc = (clientID) => {
  const doc = new Y.Doc()
  doc.clientID = clientID
  return doc
}

// One frame = message type varUint followed by whatever `write` adds.
const frame = (messageType, write) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, messageType)
  write(encoder)
  return encoding.toUint8Array(encoder)
}
const step1 = (doc) => frame(0, (e) => syncProtocol.writeSyncStep1(e, doc))
const step2 = (doc, sv) => frame(0, (e) => syncProtocol.writeSyncStep2(e, doc, sv))
const updateMsg = (update) => frame(0, (e) => syncProtocol.writeUpdate(e, update))
const awarenessMsg = (update) => frame(1, (e) => encoding.writeVarUint8Array(e, update))
const deniedMsg = (reason) => frame(2, (e) => authProtocol.writePermissionDenied(e, reason))
const queryMsg = () => frame(3, () => {})

// Awareness update via the real encodeAwarenessUpdate. Clocks come from the public `meta` map
// (a real peer reaches large clocks only after many updates) and states from an explicit map,
// where null means "this client left".
const awarenessUpdate = (entries) => {
  const awareness = new awarenessProtocol.Awareness(newDoc(PROBE_ID))
  awareness.destroy() // stops its renewal timer; encoding still works
  const states = new Map()
  for (const { client_id: id, clock, state } of entries) {
    awareness.meta.set(id, { clock, lastUpdated: 0 })
    if (state !== null) states.set(id, state)
  }
  return awarenessProtocol.encodeAwarenessUpdate(awareness, entries.map((e) => e.client_id), states)
}

const vectors = []
const docs = []
const check = (cond, what) => {
  if (!cond) throw new Error(`self-check failed: ${what}`)
}
// Adds a vector after checking that the JS decoder reads the frame back as described.
const add = (name, bytes, ...messages) => {
  const decoded = describeFrame(bytes)
  check(isDeepStrictEqual(decoded, messages), `${name}: decoded ${JSON.stringify(decoded)}`)
  const v = { name, hex: toHex(bytes) }
  if (messages.length === 1) v.message = messages[0]
  else v.messages = messages
  vectors.push(v)
}
const sv = (doc) => ({ type: 'sync_step1', state_vector: toHex(Y.encodeStateVector(doc)) })
const s2 = (update) => ({ type: 'sync_step2', update: toHex(update) })
const up = (update) => ({ type: 'sync_update', update: toHex(update) })
// Expected description of an awareness update: decoded with lib0 but also applied to a real
// Awareness so that a clock or state the real reader disagrees with fails here.
const aw = (update, expected) => {
  const described = describeAwarenessUpdate(update)
  const probe = new awarenessProtocol.Awareness(newDoc(PROBE_ID))
  probe.destroy()
  awarenessProtocol.applyAwarenessUpdate(probe, update, 'vectors')
  for (const e of expected) {
    if (e.clock === 0) {
      // the reader treats an unknown client as clock 0 and needs a greater clock: ignored
      check(!probe.meta.has(e.client_id), `clock-0 entry of ${e.client_id} ignored`)
      continue
    }
    check(probe.meta.get(e.client_id)?.clock === e.clock, `clock of ${e.client_id}`)
    check(isDeepStrictEqual(probe.getStates().get(e.client_id) ?? null, e.state), `state of ${e.client_id}`)
  }
  check(isDeepStrictEqual(described.entries.map(({ state_json: _, ...rest }) => rest), expected), 'awareness entries')
  return described
}

// --- The DESIGN.md table (client ID 300) ---------------------------------------------------
{
  const empty = newDoc(300)
  add('design/sync_step1_empty', step1(empty), sv(empty))
  const one = newDoc(300)
  one.getText('t').insert(0, 'a')
  add('design/sync_step1_one_insert', step1(one), sv(one))
  add('design/sync_step2_empty', step2(empty), s2(Y.encodeStateAsUpdate(empty)))
  add('design/update_empty', updateMsg(Y.encodeStateAsUpdate(empty)), up(Y.encodeStateAsUpdate(empty)))
  // A client that sets its state to null: clock goes 0 -> 1 and the entry carries "null".
  const awareness = new awarenessProtocol.Awareness(newDoc(300))
  awareness.setLocalState(null)
  const removal = awarenessProtocol.encodeAwarenessUpdate(awareness, [300])
  awareness.destroy()
  add('design/awareness_removal', awarenessMsg(removal), aw(removal, [{ client_id: 300, clock: 1, state: null }]))
  add('design/query_awareness', queryMsg(), { type: 'query_awareness' })
  add('design/permission_denied_no', deniedMsg('no'), { type: 'permission_denied', reason: 'no' })
}

// --- Sync messages from docs with content --------------------------------------------------
{
  const doc = newDoc(300)
  const text = doc.getText('t')
  const updates = []
  doc.on('update', (u) => updates.push(u))
  text.insert(0, 'héllo')
  add('sync/update_insert_non_ascii', updateMsg(updates[0]), up(updates[0]))
  const svBefore = Y.encodeStateVector(doc)
  text.insert(5, ' 😀 wörld')
  add('sync/update_insert_emoji', updateMsg(updates[1]), up(updates[1]))
  text.delete(0, 1)
  add('sync/update_delete', updateMsg(updates[2]), up(updates[2]))
  add('sync/sync_step1_content', step1(doc), sv(doc))
  add('sync/sync_step2_full', step2(doc), s2(Y.encodeStateAsUpdate(doc)))
  add('sync/sync_step2_diff', step2(doc, svBefore), s2(Y.encodeStateAsUpdate(doc, svBefore)))

  // Client ID above 2**32: yjs must accept it and round-trip it through its own decoder.
  const big = newDoc(BIG_ID)
  big.getText('t').insert(0, 'big id ✓')
  const bigUpdate = Y.encodeStateAsUpdate(big)
  const again = new Y.Doc()
  Y.applyUpdate(again, bigUpdate)
  check(again.getText('t').toString() === 'big id ✓', 'big client id text')
  check(Y.decodeStateVector(Y.encodeStateVector(again)).get(BIG_ID) === 8, 'big client id clock')
  add('sync/sync_step1_big_client_id', step1(big), sv(big))
  add('sync/sync_step2_big_client_id', step2(big), s2(bigUpdate))

  // Two clients merged: a state vector with two entries.
  Y.applyUpdate(big, Y.encodeStateAsUpdate(doc))
  add('sync/sync_step1_two_clients', step1(big), sv(big))
  add('sync/update_two_clients', updateMsg(Y.encodeStateAsUpdate(big)), up(Y.encodeStateAsUpdate(big)))
}

// --- Awareness -------------------------------------------------------------------------------
{
  // A fresh client announcing itself: state {} at clock 0, as y-websocket does on connect.
  const fresh = new awarenessProtocol.Awareness(newDoc(300))
  const hello = awarenessProtocol.encodeAwarenessUpdate(fresh, [300])
  fresh.setLocalState({ user: { name: 'alice', color: '#30bced' }, cursor: null })
  const named = awarenessProtocol.encodeAwarenessUpdate(fresh, [300])
  fresh.destroy()
  add('awareness/fresh_client', awarenessMsg(hello), aw(hello, [{ client_id: 300, clock: 0, state: {} }]))
  add('awareness/named_client', awarenessMsg(named),
    aw(named, [{ client_id: 300, clock: 1, state: { user: { name: 'alice', color: '#30bced' }, cursor: null } }]))

  const cases = {
    'awareness/empty_update': [],
    'awareness/multiple_entries': [
      { client_id: 300, clock: 3, state: { user: { name: 'ann' } } },
      { client_id: BIG_ID, clock: 7, state: { user: { name: 'bob' }, selection: { anchor: 1, head: 4 } } },
      { client_id: 12, clock: 2, state: null }
    ],
    'awareness/nested_json': [
      { client_id: 1, clock: 1, state: { a: [1, 2.5, -3, true, false, null, 'x', [], {}], b: { c: { d: { e: [{ f: 'g' }] } } } } }
    ],
    'awareness/unicode_strings': [
      { client_id: 2, clock: 1, state: { name: 'héllo 😀 日本語', quote: 'a"b\\c\n\t', ctrl: '\u0001', 'kéy 🔑': 'v' } }
    ],
    'awareness/null_removal': [{ client_id: 300, clock: 5, state: null }],
    'awareness/large_clocks': [
      { client_id: 1, clock: 2 ** 32, state: { n: 1 } },
      { client_id: MAX_SAFE, clock: MAX_SAFE, state: { n: 2 } },
      { client_id: BIG_ID, clock: 2 ** 40 + 5, state: null }
    ],
    // JS orders integer-like keys first, so the JSON text differs from insertion order.
    'awareness/integer_like_keys': [{ client_id: 3, clock: 1, state: { b: 1, 10: 'ten', a: 2, 2: 'two' } }]
  }
  for (const [name, entries] of Object.entries(cases)) {
    const update = awarenessUpdate(entries)
    add(name, awarenessMsg(update), aw(update, entries))
  }
}

// --- Auth ------------------------------------------------------------------------------------
add('auth/permission_denied_empty', deniedMsg(''), { type: 'permission_denied', reason: '' })
add('auth/permission_denied_unicode', deniedMsg('accès refusé 🚫'), { type: 'permission_denied', reason: 'accès refusé 🚫' })

// --- Several messages in one frame -----------------------------------------------------------
{
  const doc = newDoc(300)
  doc.getText('t').insert(0, 'multi')
  const update = Y.encodeStateAsUpdate(doc)
  const concat = (...parts) => Buffer.concat(parts.map((p) => Buffer.from(p)))
  const awUpdate = awarenessUpdate([{ client_id: 300, clock: 1, state: { user: 'x' } }])
  add('multi/step1_and_awareness', concat(step1(doc), awarenessMsg(awUpdate)),
    sv(doc), aw(awUpdate, [{ client_id: 300, clock: 1, state: { user: 'x' } }]))
  add('multi/step2_and_update', concat(step2(doc), updateMsg(update)), s2(update), up(update))
  add('multi/awareness_and_query', concat(awarenessMsg(awUpdate), queryMsg()),
    aw(awUpdate, [{ client_id: 300, clock: 1, state: { user: 'x' } }]), { type: 'query_awareness' })
}

// --- Whole documents, for apply-and-compare checks ---------------------------------------------
{
  const addDoc = (name, doc) => {
    const text = doc.getText('t').toString()
    const update = Y.encodeStateAsUpdate(doc)
    const copy = new Y.Doc()
    Y.applyUpdate(copy, update)
    check(copy.getText('t').toString() === text, `${name}: text round-trip`)
    docs.push({ name, doc_update: toHex(update), state_vector: toHex(Y.encodeStateVector(doc)), text_name: 't', text })
  }
  const a = newDoc(300)
  a.getText('t').insert(0, 'héllo wörld')
  addDoc('doc/single_client', a)
  const b = newDoc(BIG_ID)
  Y.applyUpdate(b, Y.encodeStateAsUpdate(a))
  b.getText('t').insert(5, ' 😀')
  b.getText('t').delete(0, 1)
  b.getText('t').insert(0, 'H')
  addDoc('doc/two_clients_with_deletes', b)
  addDoc('doc/empty', newDoc(300))
}

const out = {
  generator: { yjs: versionOf('yjs'), 'y-protocols': versionOf('y-protocols'), lib0: versionOf('lib0') },
  vectors,
  docs
}
process.stdout.write(JSON.stringify(out, null, 1) + '\n')
