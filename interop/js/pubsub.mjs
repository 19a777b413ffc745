// A js-libp2p gossipsub peer (@libp2p/gossipsub 17, meshsub 1.2) for hyphae's interop tests.
//   node --import ./polyfill.mjs pubsub.mjs
//     -> prints {"peerId","addrs"}, then answers one command per stdin line with one JSON line (the same
//        commands as `rust-peer pubsub`): connect ADDR | subscribe TOPIC | publish TOPIC DATA_HEX |
//        mesh TOPIC | peers
//     Every received message is printed as it comes:
//        {"event":"message","topic":..,"from":..,"source":..,"data":"<hex>"}
//     Errors: {"error": "..."}.
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { createInterface } from 'node:readline'

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, heartbeatInterval: 500 })
  }
})

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => Buffer.from(b).toString('hex')
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'))
const ps = node.services.pubsub

out({ peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

ps.addEventListener('gossipsub:message', (e) => {
  const { msg, propagationSource } = e.detail
  out({ event: 'message', topic: msg.topic, from: msg.type === 'signed' ? msg.from.toString() : '', source: propagationSource.toString(), data: hex(msg.data) })
})

async function run (cmd, a, b) {
  switch (cmd) {
    case 'connect':
      await node.dial(multiaddr(a), { signal: AbortSignal.timeout(20000) })
      return { ok: true }
    case 'subscribe':
      ps.subscribe(a)
      return { ok: true }
    case 'publish': {
      const r = await ps.publish(a, unhex(b))
      return { ok: true, recipients: r.recipients.length }
    }
    case 'mesh':
      return { peers: ps.getMeshPeers(a) }
    case 'peers':
      return { peers: ps.getPeers().map(String) }
    default:
      throw new Error(`unknown command ${cmd}`)
  }
}

// One command at a time, in order.
let chain = Promise.resolve()
createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, a, b] = line.trim().split(/\s+/)
  chain = chain.then(() => run(cmd, a, b).then(out, (e) => out({ error: String(e.message ?? e) })))
}).on('close', async () => { await chain; await node.stop(); process.exit(0) })
