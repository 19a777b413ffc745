// A js-libp2p peer for hyphae's interop tests.
//   node --import ./polyfill.mjs peer.mjs listen [noise|tls] [yamux|mplex]
//       -> prints {"peerId","addrs"}, then one JSON line per identify
//   node --import ./polyfill.mjs peer.mjs dial ADDR COUNT [noise|tls] [yamux|mplex]
//       -> pings ADDR COUNT times, prints {"peerId","connectMs","rtts","agent","protocols"}
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tls } from '@libp2p/tls'
import { mplex } from '@libp2p/mplex'
import { identify, identifyPush } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'

const args = process.argv.slice(2)
const mode = args[0]
const rest = mode === 'dial' ? args.slice(3) : args.slice(1)
const security = rest[0] ?? 'noise'
const muxer = rest[1] ?? 'yamux'
const node = await createLibp2p({
  addresses: { listen: mode === 'listen' ? ['/ip4/127.0.0.1/tcp/0'] : [] },
  transports: [tcp()],
  connectionEncrypters: [security === 'tls' ? tls() : noise()],
  streamMuxers: [muxer === 'mplex' ? mplex() : yamux()],
  services: { identify: identify(), identifyPush: identifyPush(), ping: ping() }
})

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

if (mode === 'listen') {
  // signedPeerRecord is set only when the peer's signed envelope verified (js opens and certifies it).
  node.addEventListener('peer:identify', (e) => out({
    event: 'identify',
    peer: e.detail.peerId.toString(),
    agent: e.detail.agentVersion,
    protocols: e.detail.protocols,
    certified: e.detail.signedPeerRecord == null ? null : e.detail.signedPeerRecord.addresses.map(String)
  }))
  out({ peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })
  process.on('SIGTERM', async () => { await node.stop(); process.exit(0) })
} else if (mode === 'dial') {
  const ma = multiaddr(args[1])
  const identified = new Promise((resolve) => node.addEventListener('peer:identify', (e) => resolve(e.detail)))
  const rtts = []
  try {
    const n = Number(args[2] ?? 3)
    const t0 = performance.now()
    await node.dial(ma)
    for (let i = 0; i < n; i++) {
      rtts.push(await node.services.ping.ping(ma))
      if (i === 0) rtts.connectMs = performance.now() - t0
    }
    const info = await Promise.race([identified, new Promise((_, rej) => setTimeout(() => rej(new Error('identify timeout')), 10000))])
    out({ peerId: info.peerId.toString(), connectMs: rtts.connectMs, rtts, agent: info.agentVersion, protocols: info.protocols })
    await node.stop()
    process.exit(0)
  } catch (err) {
    out({ error: String(err?.stack ?? err) })
    process.exit(1)
  }
} else {
  console.error('usage: peer.mjs listen [noise|tls] [yamux|mplex] | dial ADDR COUNT [noise|tls] [yamux|mplex]')
  process.exit(2)
}
