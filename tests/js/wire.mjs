// Shared by vectors.mjs and decode.mjs: turn one WebSocket frame into JSON message
// descriptions using the real lib0 decoders and the y-protocols readers, so the Python side
// compares against what the JS ecosystem actually understands.
import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import * as authProtocol from 'y-protocols/auth'

export const toHex = (bytes) => Buffer.from(bytes).toString('hex')
export const fromHex = (hex) => new Uint8Array(Buffer.from(hex, 'hex'))

const SYNC_SUBTYPES = ['sync_step1', 'sync_step2', 'sync_update']

// Mirrors y-protocols' awareness decoding loop (applyAwarenessUpdate) but keeps every entry,
// including null entries an Awareness instance would drop for clients it never saw.
export const describeAwarenessUpdate = (update) => {
  const decoder = decoding.createDecoder(update)
  const n = decoding.readVarUint(decoder)
  const entries = []
  for (let i = 0; i < n; i++) {
    const clientId = decoding.readVarUint(decoder)
    const clock = decoding.readVarUint(decoder)
    const stateJson = decoding.readVarString(decoder)
    entries.push({ client_id: clientId, clock, state: JSON.parse(stateJson), state_json: stateJson })
  }
  if (decoding.hasContent(decoder)) throw new Error('trailing bytes inside awareness update')
  return { type: 'awareness', entries }
}

// Reads one message from the decoder. Unknown types cannot be skipped (no length prefix),
// so they end the frame.
const readOne = (decoder) => {
  const messageType = decoding.readVarUint(decoder)
  switch (messageType) {
    case 0: {
      const subtype = decoding.readVarUint(decoder)
      const payload = decoding.readVarUint8Array(decoder)
      if (subtype === 0) {
        Y.decodeStateVector(payload) // throws on a malformed state vector
        return { type: 'sync_step1', state_vector: toHex(payload) }
      }
      if (subtype === 1 || subtype === 2) {
        Y.decodeUpdate(payload) // throws on a malformed v1 update
        return { type: SYNC_SUBTYPES[subtype], update: toHex(payload) }
      }
      throw new Error(`unknown sync subtype ${subtype}`)
    }
    case 1:
      return describeAwarenessUpdate(decoding.readVarUint8Array(decoder))
    case 2: {
      let reason = null
      authProtocol.readAuthMessage(decoder, null, (_y, r) => { reason = r })
      if (reason === null) return { type: 'auth_unknown', stop: true }
      return { type: 'permission_denied', reason }
    }
    case 3:
      return { type: 'query_awareness' }
    default:
      return { type: 'unknown', message_type: messageType, stop: true }
  }
}

// Decodes a whole frame: messages back to back until no bytes are left. Pass `messages` to
// keep what was decoded before an error is thrown.
export const describeFrame = (bytes, messages = []) => {
  const decoder = decoding.createDecoder(bytes)
  while (decoding.hasContent(decoder)) {
    const message = readOne(decoder)
    if (message.stop) {
      delete message.stop
      messages.push(message)
      break
    }
    messages.push(message)
  }
  return messages
}
