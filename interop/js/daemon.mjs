// js-libp2p behind @libp2p/daemon-server, started with p2pd's flags: the "js" node of @libp2p/interop
// as js-libp2p's own interop runner builds it (packages/integration-tests/test/interop.ts), as a
// process of its own so the runner spawns it like a p2pd.
//   node --import ./polyfill.mjs daemon.mjs -listen /unix/PATH|/ip4/... [-hostAddrs ADDR] [-noListenAddrs]
//        [-id KEYFILE] [-noise=false|-tls=false] [-muxer yamux|mplex] [-dhtServer]
//        [-pubsub] [-pubsubRouter gossipsub|floodsub]
// Prints "Control socket: ...", "Peer ID: ...", "Peer Addrs:" and one address per line, as p2pd does.
import fs from 'node:fs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tls } from '@libp2p/tls'
import { mplex } from '@libp2p/mplex'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { gossipsub } from '@libp2p/gossipsub'
import { floodsub } from '@libp2p/floodsub'
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys'
import { createServer } from '@libp2p/daemon-server'
import { multiaddr } from '@multiformats/multiaddr'

const flags = {}
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const a = argv[i].replace(/^--?/, '')
  const eq = a.indexOf('=')
  if (eq >= 0) flags[a.slice(0, eq)] = a.slice(eq + 1)
  else if (['listen', 'hostAddrs', 'id', 'muxer', 'pubsubRouter'].includes(a)) flags[a] = argv[++i]
  else flags[a] = 'true'
}
const on = (f, dflt) => (flags[f] ?? String(dflt)) !== 'false'

const encrypters = []
if (on('noise', true)) encrypters.push(noise())
if (on('tls', true)) encrypters.push(tls())
const services = { identify: identify(), ping: ping() }
if (on('pubsub', false)) services.pubsub = flags.pubsubRouter === 'floodsub' ? floodsub() : gossipsub()
if (on('dhtServer', false) || on('dht', false)) {
  services.dht = kadDHT({ protocol: '/ipfs/kad/1.0.0', peerInfoMapper: passthroughMapper, clientMode: false })
}
const node = await createLibp2p({
  privateKey: flags.id != null && fs.existsSync(flags.id) ? privateKeyFromProtobuf(fs.readFileSync(flags.id)) : undefined,
  addresses: { listen: on('noListenAddrs', false) ? [] : (flags.hostAddrs ?? '/ip4/127.0.0.1/tcp/0').split(',') },
  transports: [tcp()],
  connectionEncrypters: encrypters,
  streamMuxers: [flags.muxer === 'mplex' ? mplex() : yamux()],
  services
})
const listen = flags.listen ?? '/unix/tmp/p2pd.sock'
const unix = listen.startsWith('/unix/') ? listen.slice('/unix'.length) : null
if (unix != null) fs.rmSync(unix, { force: true })
// The multiaddr library wants a unix path as one URI-encoded component.
const server = createServer(multiaddr(unix != null ? `/unix/${encodeURIComponent(unix)}` : listen), node)
await server.start()
process.stdout.write(`Control socket: ${listen}\nPeer ID: ${node.peerId}\nPeer Addrs:\n${node.getMultiaddrs().map((a) => a.decapsulateCode(421)).join('\n')}\n`)
const stop = async () => {
  await server.stop()
  await node.stop()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
