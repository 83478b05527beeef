// Decodes frames produced elsewhere (the Python side) with the real lib0 / y-protocols readers.
// stdin: one JSON object per line, {"hex": "..."}; stdout: one JSON line per input,
// {"messages": [...]} or, for a malformed frame, {"error": "...", "messages": [read before it]}.
//
//   printf '{"hex":"03"}\n' | node decode.mjs
import { createInterface } from 'node:readline'
import { fromHex, describeFrame } from './wire.mjs'

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (line.trim() === '') continue
  const messages = []
  let out
  try {
    out = { messages: describeFrame(fromHex(JSON.parse(line).hex), messages) }
  } catch (err) {
    out = { error: String(err?.message ?? err), messages }
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}
