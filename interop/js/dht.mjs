// A js-libp2p DHT peer (@libp2p/kad-dht, server mode) for hyphae's interop tests.
//   node --import ./polyfill.mjs dht.mjs
//     -> prints {"peerId","addrs"}, then answers one command per stdin line with one JSON line:
//        connect ADDR | find-peer PEER_ID | closest KEY_HEX | provide MULTIHASH_HEX |
//        find-providers MULTIHASH_HEX | put KEY_HEX VALUE_HEX | get KEY_HEX
//     Errors: {"error": "..."}. Every query is aborted after 20 s (an empty table waits forever).
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, identifyPush } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { createInterface } from 'node:readline'

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    identifyPush: identifyPush(),
    ping: ping(),
    dht: kadDHT({ protocol: '/ipfs/kad/1.0.0', clientMode: false, peerInfoMapper: passthroughMapper })
  }
})

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => Buffer.from(b).toString('hex')
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'))
const signal = () => AbortSignal.timeout(20000)

out({ peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

async function run (cmd, a, b) {
  switch (cmd) {
    case 'connect':
      await node.dial(multiaddr(a), { signal: signal() })
      return { ok: true }
    case 'find-peer': {
      const info = await node.peerRouting.findPeer(peerIdFromString(a), { signal: signal() })
      return { peer: info.id.toString(), addrs: info.multiaddrs.map(String) }
    }
    case 'closest': {
      const peers = []
      for await (const p of node.peerRouting.getClosestPeers(unhex(a), { signal: signal() })) peers.push(p.id.toString())
      return { peers }
    }
    case 'provide':
      await node.contentRouting.provide(CID.createV1(0x55, Digest.decode(unhex(a))), { signal: signal() })
      return { ok: true }
    case 'find-providers': {
      const providers = []
      for await (const p of node.contentRouting.findProviders(CID.createV1(0x55, Digest.decode(unhex(a))), { signal: signal() })) {
        providers.push(p.id.toString())
        break
      }
      return { providers }
    }
    case 'put':
      await node.contentRouting.put(unhex(a), unhex(b), { signal: signal() })
      return { ok: true }
    case 'get':
      return { value: hex(await node.contentRouting.get(unhex(a), { signal: signal() })) }
    default:
      return { error: `unknown command ${cmd}` }
  }
}

const rl = createInterface({ input: process.stdin })
for await (const line of rl) {
  const [cmd, a, b] = line.trim().split(/\s+/)
  try {
    out(await run(cmd, a, b))
  } catch (err) {
    out({ error: String(err?.message ?? err) })
  }
}
await node.stop()
process.exit(0)
