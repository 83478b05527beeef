// Peer under test: Hocuspocus (@hocuspocus/server) with no extensions, documents in memory.
//
//   node hocuspocus_server.mjs [PORT]    prints {"port": N} once listening on 127.0.0.1 (PORT,
//                                        else an ephemeral port)
//
// Stops on SIGTERM / SIGINT (Hocuspocus's own handlers) or when its standard input closes.
import { Server } from '@hocuspocus/server'

const server = new Server({ port: Number(process.argv[2] ?? 0), address: '127.0.0.1', quiet: true, stopOnSignals: true })
await server.listen()

process.stdin.on('close', () => process.exit(0))
process.stdin.resume()
process.stdout.write(`${JSON.stringify({ port: server.address.port })}\n`)
