// The demo editor of `trio-ysync serve --demo`: CodeMirror 6 bound to a Y.Text with
// y-codemirror.next, synced through y-websocket with the server that served this page.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { EditorState } from '@codemirror/state'
import {
  EditorView, keymap, lineNumbers, drawSelection, highlightActiveLine, highlightSpecialChars
} from '@codemirror/view'
import { defaultKeymap, indentWithTab } from '@codemirror/commands'

// Cursor colours: [caret and name tag, selection background].
const COLORS = [
  ['#1565c0', '#1565c033'], ['#2e7d32', '#2e7d3233'], ['#6a1b9a', '#6a1b9a33'],
  ['#c62828', '#c6282833'], ['#ef6c00', '#ef6c0033'], ['#00838f', '#00838f33'],
  ['#ad1457', '#ad145733'], ['#4e342e', '#4e342e33']
]

/** The room named after `#` (or `?room=`); a new random room is written into the address. */
function chooseRoom () {
  const params = new URLSearchParams(location.search)
  let room = location.hash.slice(1)
  try {
    room = decodeURIComponent(room)
  } catch (_) {} // a stray '%': take the name as it is
  room = room || params.get('room') || ''
  if (!room) {
    room = 'demo-' + Math.random().toString(36).slice(2, 8)
    history.replaceState(null, '', '#' + encodeURIComponent(room))
  }
  return room
}

/** The name shown to others: `?name=`, the last one typed here, or a random guest name. */
function chooseName () {
  const fromUrl = new URLSearchParams(location.search).get('name')
  if (fromUrl) return fromUrl
  try {
    const saved = localStorage.getItem('trio-ysync-demo-name')
    if (saved) return saved
  } catch (_) {}
  return 'Guest ' + Math.floor(100 + Math.random() * 900)
}

const room = chooseRoom()
const doc = new Y.Doc()
const text = doc.getText('t')
// The same host and port that served this page; y-websocket appends '/' + the room name.
const serverUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host
const provider = new WebsocketProvider(serverUrl, encodeURIComponent(room), doc)
const color = COLORS[doc.clientID % COLORS.length]
const nameInput = document.getElementById('name')
nameInput.value = chooseName()

function announce () {
  provider.awareness.setLocalStateField('user', {
    name: nameInput.value.trim() || 'anonymous', color: color[0], colorLight: color[1]
  })
}
announce()
nameInput.addEventListener('input', () => {
  announce()
  try { localStorage.setItem('trio-ysync-demo-name', nameInput.value.trim()) } catch (_) {}
})

document.getElementById('room').textContent = room
document.title = room + ' · trio-ysync demo'
window.addEventListener('hashchange', () => location.reload())

const statusBadge = document.getElementById('status')
function showStatus (status) {
  const label = status === 'connected' && !provider.synced ? 'syncing' : status
  statusBadge.dataset.status = status
  statusBadge.textContent = label
}
provider.on('status', ({ status }) => showStatus(status))
provider.on('sync', () => showStatus(provider.wsconnected ? 'connected' : 'connecting'))

const people = document.getElementById('people')
function showPeople () {
  const items = []
  provider.awareness.getStates().forEach((state, clientId) => {
    if (!state.user) return
    const item = document.createElement('li')
    item.textContent = state.user.name + (clientId === doc.clientID ? ' (you)' : '')
    item.style.background = state.user.color
    items.push(item)
  })
  people.replaceChildren(...items)
}
provider.awareness.on('change', showPeople)
showPeople()

const undoManager = new Y.UndoManager(text)
const view = new EditorView({
  parent: document.getElementById('editor'),
  state: EditorState.create({
    doc: text.toString(),
    extensions: [
      lineNumbers(),
      highlightSpecialChars(),
      drawSelection(),
      highlightActiveLine(),
      EditorView.lineWrapping,
      keymap.of([...yUndoManagerKeymap, ...defaultKeymap, indentWithTab]),
      yCollab(text, provider.awareness, { undoManager })
    ]
  })
})

// Handles for the browser test and for curious people with a console open.
window.demo = { doc, text, provider, view, room }
