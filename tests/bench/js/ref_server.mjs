// Peer under test: the reference y-websocket server (@y/websocket-server), documents in memory.
//
//   node ref_server.mjs [PORT]    prints {"port": N} once listening on 127.0.0.1 (PORT, else an
//                                 ephemeral port)
//
// Stops on SIGTERM / SIGINT or when its standard input closes.

// The package reads these when it is imported: keep it in memory, with no HTTP callbacks.
delete process.env.YPERSISTENCE
delete process.env.CALLBACK_URL

const http = await import('node:http')
const { WebSocketServer } = await import('ws')
const { setupWSConnection } = await import('@y/websocket-server/utils')

const httpServer = http.createServer((_request, response) => {
  response.writeHead(200, { 'content-type': 'text/plain' })
  response.end('y-websocket reference server\n')
})
const sockets = new WebSocketServer({ noServer: true })
// The room is the URL path without its leading slash (setupWSConnection's default).
sockets.on('connection', (socket, request) => setupWSConnection(socket, request))
httpServer.on('upgrade', (request, socket, head) => {
  sockets.handleUpgrade(request, socket, head, (ws) => sockets.emit('connection', ws, request))
})

const exit = () => process.exit(0)
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, exit)
process.stdin.on('close', exit)
process.stdin.resume()

httpServer.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: httpServer.address().port })}\n`)
})
