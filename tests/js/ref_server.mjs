// The reference y-websocket server (@y/websocket-server 0.1.1), in-memory only.
//
//   node ref_server.mjs [port]     (port 0 or none = ephemeral)
//
// Prints {"port": N} on stdout once listening (nothing else goes to stdout); exits when stdin
// closes or on SIGTERM/SIGINT.
import http from 'node:http'
import { WebSocketServer } from 'ws'

// utils.js reads these at import time: no LevelDB persistence, no HTTP callbacks.
delete process.env.YPERSISTENCE
delete process.env.CALLBACK_URL
const { setupWSConnection } = await import('@y/websocket-server/utils')

const port = Number.parseInt(process.argv[2] ?? '0', 10)
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' })
  res.end('okay')
})
const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection) // room name = URL path without the leading "/"
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})

const stop = () => process.exit(0)
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)
process.stdin.on('close', stop)
process.stdin.resume()

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
})
