// A webhook endpoint in Node that verifies each request with the `standardwebhooks` package,
// as the Integration page tells receivers to.
//
//   WEBHOOK_SECRET=whsec_... node webhook_receiver.mjs [raw]
//
// With `raw`, the secret's characters are the key as they are (Webhook(secret, {format: "raw"})).
// Prints {"port": N} once listening, then one line per request: {"verified": true, "id": ...,
// "event": {...}} or {"verified": false, "error": ...} (answered 204 or 400). Exits when stdin
// closes.
import http from 'node:http'
import { Webhook } from 'standardwebhooks'

const secret = process.env.WEBHOOK_SECRET
const webhook = process.argv[2] === 'raw' ? new Webhook(secret, { format: 'raw' }) : new Webhook(secret)

const report = (line) => process.stdout.write(JSON.stringify(line) + '\n')

const server = http.createServer((req, res) => {
  const chunks = []
  req.on('data', (chunk) => chunks.push(chunk))
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8')
    try {
      const event = webhook.verify(body, req.headers)
      report({ verified: true, id: req.headers['webhook-id'], event })
      res.writeHead(204).end()
    } catch (error) {
      report({ verified: false, error: String(error) })
      res.writeHead(400).end()
    }
  })
})

const stop = () => process.exit(0)
process.stdin.on('end', stop)
process.stdin.on('close', stop)
process.stdin.resume()

server.listen(0, '127.0.0.1', () => report({ port: server.address().port }))
