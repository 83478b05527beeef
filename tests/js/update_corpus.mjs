// Prints a JSON corpus of Yjs v1 updates and state vectors made by the real yjs, for the update
// validator's tests (tests/test_update.py): every kind of struct and content yjs writes, every
// lib0 Any value kind, GC and Skip structs, subdocuments, multi-client documents.
//
//   node update_corpus.mjs > corpus.json   ({"generator": {...}, "updates": [...], "state_vectors": [...]})
//
// Each update entry: {name, hex, accept, complete}. `accept` names the validator option it needs
// ("default", or "json_content" / "xml_hooks" for the two encodings yrs misreads); `complete`
// marks whole-document updates, whose state vector (after applying them to an empty document)
// is given as `state_vector`.
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as prng from 'lib0/prng'
import { toHex } from './wire.mjs'

const versionOf = (pkg) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url))).version

const newDoc = (clientID, opts) => {
  const doc = new Y.Doc(opts)
  doc.clientID = clientID
  return doc
}

const check = (cond, what) => {
  if (!cond) throw new Error(`self-check failed: ${what}`)
}

const updates = []
const stateVectors = []
const structKinds = (update) => {
  const kinds = new Set()
  for (const s of Y.decodeUpdate(update).structs) {
    if (s instanceof Y.GC) kinds.add('gc')
    else if (s instanceof Y.Skip) kinds.add('skip')
    else kinds.add(s.content.constructor.name)
  }
  return kinds
}
// The validator option an update needs: yjs reads these two, yrs misreads them.
const acceptance = (update) => {
  for (const s of Y.decodeUpdate(update).structs) {
    if (s.content instanceof Y.ContentJSON) return 'json_content'
    if (s.content instanceof Y.ContentType && s.content.type instanceof Y.XmlHook) return 'xml_hooks'
  }
  return 'default'
}
// Every update is applied to a fresh yjs document first: the corpus holds only what yjs reads.
const add = (name, update, { complete = false } = {}) => {
  const accept = acceptance(update)
  const probe = new Y.Doc()
  Y.applyUpdate(probe, update)
  const entry = { name, hex: toHex(update), accept, complete }
  if (complete) entry.state_vector = toHex(Y.encodeStateVector(probe))
  updates.push(entry)
}
// Records every update a document emits, under `prefix/<n>`.
const record = (doc, prefix) => {
  let n = 0
  doc.on('update', (update) => add(`${prefix}/${n++}`, update))
}
const addDoc = (name, doc) => {
  add(name, Y.encodeStateAsUpdate(doc), { complete: true })
  stateVectors.push({ name, hex: toHex(Y.encodeStateVector(doc)) })
}

// --- Text: inserts and deletes, non-ASCII, astral characters, split surrogate pairs ----------
{
  const doc = newDoc(1)
  record(doc, 'text/edit')
  const t = doc.getText('t')
  t.insert(0, 'héllo wörld')
  t.insert(5, ' 😀 𝒳 👍🏽 日本語 ')
  t.insert(0, 'A')
  t.delete(2, 3)
  const emoji = t.toString().indexOf('😀')
  t.insert(emoji + 1, 'x') // between the two halves of a surrogate pair: yjs writes U+FFFD
  t.delete(t.toString().indexOf('𝒳') + 1, 1) // half of an astral character
  for (const ch of 'typed one by one: ü😀z') t.insert(t.length, ch)
  t.delete(0, t.length - 3)
  addDoc('text/state', doc)
}

// --- Rich text: formats, embeds, attributes, removed formats -----------------------------------
{
  const doc = newDoc(2)
  record(doc, 'richtext/edit')
  const t = doc.getText('rich')
  t.insert(0, 'bold and plain', { bold: true })
  t.format(0, 4, { italic: true, color: '#f00', link: { href: 'https://example.com', n: [1, 2] } })
  t.insertEmbed(5, { image: 'x.png', size: { w: 10, h: 2.5 } })
  t.insertEmbed(0, 'plain string embed')
  t.format(2, 6, { bold: null })
  t.applyDelta([{ retain: 3 }, { insert: 'δ', attributes: { code: true, level: 3 } }, { delete: 2 }])
  addDoc('richtext/state', doc)
}

// --- Maps with every Any value kind -------------------------------------------------------------
const deep = (levels) => {
  let v = 'bottom'
  for (let i = 0; i < levels; i++) v = i % 2 ? [v] : { k: v }
  return v
}
const anyValues = {
  null: null,
  undefined,
  true: true,
  false: false,
  zero: 0,
  small: 42,
  negative: -7,
  int32: 2147483647,
  int40: 2 ** 40 + 3,
  max_safe: Number.MAX_SAFE_INTEGER,
  min_safe: Number.MIN_SAFE_INTEGER,
  float32: 0.5,
  float64: 0.1,
  negative_float: -1e300,
  nan: NaN,
  infinity: Infinity,
  bigint: 2n ** 60n,
  negative_bigint: -(2n ** 62n),
  string: 'héllo 😀',
  empty_string: '',
  bytes_in_object: { data: new Uint8Array([0, 1, 254, 255]) },
  object: { a: 1, b: [true, null, 'x', 1.5, { c: {} }], 'kéy 🔑': [] },
  array: [1, [2, [3, [4]]], {}, [], ''],
  deep_40: deep(40),
  wide: Array.from({ length: 300 }, (_, i) => (i % 3 ? i : { i })),
  long_string: 'x'.repeat(5000)
}
{
  const doc = newDoc(3)
  record(doc, 'map/edit')
  const m = doc.getMap('m')
  for (const [key, value] of Object.entries(anyValues)) m.set(key, value)
  m.set('binary', new Uint8Array([1, 2, 3])) // ContentBinary
  m.set('small', 43) // overwrite: an item with an origin and no parent info
  m.delete('negative')
  const nested = m.set('nested', new Y.Map())
  nested.set('inner', new Y.Array())
  nested.get('inner').push([1, 'two', { three: 3 }])
  nested.set('text', new Y.Text('inner text'))
  addDoc('map/state', doc)
}

// --- Arrays: inserts, deletes, nested types, binary items -----------------------------------------
{
  const doc = newDoc(4)
  record(doc, 'array/edit')
  const a = doc.getArray('a')
  a.push([1, 2, 3, 'four', { five: 5, u: undefined, big: 2n ** 55n }, [6], null, true])
  a.insert(2, [new Uint8Array([9, 9]), new Uint8Array(0)])
  a.delete(1, 3)
  const inner = new Y.Array()
  a.insert(0, [inner])
  inner.push(['nested'])
  const map = new Y.Map()
  a.push([map])
  map.set('x', 'y')
  a.unshift(['first'])
  addDoc('array/state', doc)
}

// --- XML: fragments, elements with attributes, text with formats, deletes ------------------------
{
  const doc = newDoc(5)
  record(doc, 'xml/edit')
  const f = doc.getXmlFragment('prosemirror')
  const p = new Y.XmlElement('paragraph')
  const h = new Y.XmlElement('heading')
  f.insert(0, [p, h])
  p.setAttribute('align', 'center')
  p.setAttribute('data', { nested: ['attr', 1] })
  h.setAttribute('level', 2)
  const text = new Y.XmlText()
  p.insert(0, [text])
  text.insert(0, 'xml text 😀', { strong: true })
  text.format(0, 3, { em: {} })
  text.insertEmbed(2, { mention: 'u1' })
  h.insert(0, [new Y.XmlText('title'), new Y.XmlElement('img')])
  p.removeAttribute('data')
  f.delete(1, 1)
  const frag = new Y.XmlFragment()
  f.insert(1, [frag])
  frag.insert(0, [new Y.XmlText('in fragment')])
  doc.getXmlElement('element_root').setAttribute('k', 'v')
  addDoc('xml/state', doc)
}

// --- XmlHook: valid yjs, refused by default (yrs does not read the hook name) ------------------------
{
  const doc = newDoc(6)
  record(doc, 'xmlhook/edit')
  const f = doc.getXmlFragment('x')
  const hook = new Y.XmlHook('custom-hook')
  f.insert(0, [hook])
  hook.set('key', 'value')
  f.insert(1, [new Y.XmlText('after the hook')])
  addDoc('xmlhook/state', doc)
}

// --- Subdocuments -------------------------------------------------------------------------------------
{
  const doc = newDoc(7)
  record(doc, 'subdoc/edit')
  const m = doc.getMap('docs')
  m.set('plain', new Y.Doc({ guid: 'guid-plain' }))
  m.set('options', new Y.Doc({ guid: 'guid-opts', autoLoad: true, meta: { title: 'ö', tags: [1] } }))
  doc.getArray('list').insert(0, [new Y.Doc({ guid: 'in-array', shouldLoad: false, gc: false })])
  m.delete('plain')
  addDoc('subdoc/state', doc)
}

// --- GC: deleted nested types leave GC structs; deleted text leaves Deleted content --------------------
{
  const doc = newDoc(8)
  record(doc, 'gc/edit')
  const a = doc.getArray('a')
  const victim = new Y.Map()
  a.push([victim, 'stay'])
  victim.set('a', 'will be collected')
  victim.set('b', new Y.Text('also collected'))
  doc.getText('t').insert(0, 'to be deleted and kept')
  a.delete(0, 1)
  doc.getText('t').delete(0, 13)
  const update = Y.encodeStateAsUpdate(doc)
  check(structKinds(update).has('gc'), 'gc/state has GC structs')
  check(structKinds(update).has('ContentDeleted'), 'gc/state has deleted content')
  addDoc('gc/state', doc)
}

// --- Skip: merged and diffed updates with gaps --------------------------------------------------------
{
  const doc = newDoc(9)
  const own = []
  doc.on('update', (u) => own.push(u))
  const t = doc.getText('t')
  t.insert(0, 'one ')
  t.insert(4, 'two ')
  t.insert(8, 'three ')
  t.insert(0, 'zero ')
  const merged = Y.mergeUpdates([own[0], own[2], own[3]])
  check(structKinds(merged).has('skip'), 'merged update with a gap has a Skip struct')
  add('skip/merged_gap', merged)
  const other = newDoc(10)
  other.getText('t').insert(0, 'other client ')
  const otherUpdate = Y.encodeStateAsUpdate(other)
  add('skip/merged_two_clients', Y.mergeUpdates([merged, otherUpdate]))
  const sv = Y.encodeStateVectorFromUpdate(own[0])
  add('skip/diff_of_merged', Y.diffUpdate(merged, sv))
  add('skip/merged_all', Y.mergeUpdates([...own, otherUpdate]))
  stateVectors.push({ name: 'skip/state_vector_from_update', hex: toHex(Y.encodeStateVectorFromUpdate(merged)) })
}

// --- Client IDs beyond 32 bits --------------------------------------------------------------------------
for (const id of [2 ** 32 + 5, Number.MAX_SAFE_INTEGER]) {
  const doc = newDoc(id)
  doc.getText('t').insert(0, `client ${id}`)
  doc.getMap('m').set('k', id)
  addDoc(`client_id/${id}`, doc)
}

// --- Empty document and empty updates ---------------------------------------------------------------
addDoc('empty/state', newDoc(11))
add('empty/merged_nothing', Y.mergeUpdates([]))

// --- Legacy JSON content (yjs < 13 wrote it; yjs 13 still reads it) ----------------------------------
{
  const doc = newDoc(12)
  doc.getArray('legacy').insert(0, [1, 'two', { three: [3] }, null])
  // Rewrite the Any content as JSON content (the "undefined" literal included), then encode.
  const { structs } = Y.decodeUpdate(Y.encodeStateAsUpdate(doc))
  structs[0].content = new Y.ContentJSON([1, 'two', { three: [3] }, undefined])
  const encoder = new Y.UpdateEncoderV1()
  encoding.writeVarUint(encoder.restEncoder, 1)
  encoding.writeVarUint(encoder.restEncoder, structs.length)
  encoder.writeClient(12)
  encoding.writeVarUint(encoder.restEncoder, 0)
  for (const s of structs) s.write(encoder, 0)
  encoding.writeVarUint(encoder.restEncoder, 0) // empty delete set
  const update = encoder.toUint8Array()
  check(structKinds(update).has('ContentJSON'), 'legacy update holds JSON content')
  add('json_content/legacy_array', update)
}

const randomEdits = (docs, gen, edits) => {
  for (let i = 0; i < edits; i++) {
    const doc = prng.oneOf(gen, docs)
    const t = doc.getText('t')
    const op = prng.int31(gen, 0, 9)
    if (op < 6 || t.length === 0) {
      const text = prng.oneOf(gen, ['a', 'bc', 'é', '😀', ' word', '\n', prng.word(gen, 1, 8)])
      t.insert(prng.int31(gen, 0, t.length), text, op === 5 ? { bold: true } : undefined)
    } else if (op < 8) {
      const at = prng.int31(gen, 0, t.length - 1)
      t.delete(at, Math.min(prng.int31(gen, 1, 5), t.length - at))
    } else if (op === 8) {
      doc.getMap('m').set(prng.word(gen, 1, 3), prng.oneOf(gen, [1, 'v', [1, 2], { k: true }, null]))
    } else {
      doc.getArray('a').insert(0, [prng.int31(gen, 0, 1000)])
    }
    if (prng.int31(gen, 0, 20) === 0) {
      const [a, b] = [prng.oneOf(gen, docs), prng.oneOf(gen, docs)]
      Y.applyUpdate(b, Y.encodeStateAsUpdate(a, Y.encodeStateVector(b)))
    }
  }
  for (const a of docs) for (const b of docs) Y.applyUpdate(b, Y.encodeStateAsUpdate(a, Y.encodeStateVector(b)))
}

// --- Several clients editing the same document, synced now and then -----------------------------
{
  const gen = prng.create(42)
  const docs = [21, 22, 23, 2 ** 40].map((id) => newDoc(id))
  record(docs[0], 'multi/edit')
  const before = Y.encodeStateVector(docs[1])
  randomEdits(docs, gen, 3000)
  addDoc('multi/state', docs[0])
  add('multi/diff', Y.encodeStateAsUpdate(docs[2], before))
  add('multi/merged', Y.mergeUpdates(docs.map((d) => Y.encodeStateAsUpdate(d))))
}

const generator = { yjs: versionOf('yjs'), lib0: versionOf('lib0') }
process.stdout.write(JSON.stringify({ generator, updates, state_vectors: stateVectors }) + '\n')
