// @libp2p/daemon-client driving two daemons (control sockets A and B, both with -dhtServer -pubsub)
// through the calls @libp2p/interop does not make: identify, connect, listPeers, DHT getClosestPeers,
// getPublicKey, pubsub getTopics, getSubscribers, publish and subscribe. Prints one "ok ..." line per step; exits
// non-zero on the first failure.
//   node client.mjs SOCK_A SOCK_B
import { createClient } from '@libp2p/daemon-client'
import { multiaddr } from '@multiformats/multiaddr'
import { publicKeyFromProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'

const [sockA, sockB] = process.argv.slice(2)
const client = (s) => createClient(multiaddr(`/unix/${encodeURIComponent(s)}`))
const a = client(sockA)
const b = client(sockB)
const ok = (s) => console.log(`ok ${s}`)
const until = async (what, f, ms = 10000) => {
  const end = Date.now() + ms
  for (;;) {
    const v = await f()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

try {
  const ia = await a.identify()
  const ib = await b.identify()
  if (ib.addrs.length === 0) throw new Error('B has no addresses')
  ok(`identify ${ia.peerId} ${ib.peerId}`)
  await a.connect(ib.peerId, ib.addrs)
  const peers = await a.listPeers()
  if (!peers.some((p) => p.equals(ib.peerId))) throw new Error('A does not list B')
  ok('connect listPeers')
  await until('B lists A', async () => (await b.listPeers()).some((p) => p.equals(ia.peerId)))
  const closest = []
  for await (const p of a.dht.getClosestPeers(ib.peerId.toMultihash().bytes)) closest.push(p)
  if (!closest.some((p) => p.id.equals(ib.peerId))) throw new Error(`getClosestPeers lacks B: ${closest.map((p) => p.id.toString())}`)
  ok('dht getClosestPeers')
  const pk = await a.dht.getPublicKey(ib.peerId)
  // The key's protobuf bytes, as go's daemon answers; it must be B's.
  const key = publicKeyFromProtobuf(pk)
  if (!peerIdFromPublicKey(key).equals(ib.peerId)) throw new Error('getPublicKey: not B\'s key')
  ok(`dht getPublicKey ${key.type}`)
  const topic = 'hyphae-js-client'
  const sub = await b.pubsub.subscribe(topic)
  const topics = await b.pubsub.getTopics()
  if (!topics.includes(topic)) throw new Error(`getTopics: ${topics}`)
  ok('pubsub getTopics')
  await until('A sees B subscribed', async () => (await a.pubsub.getSubscribers(topic)).some((p) => p.equals(ib.peerId)))
  ok('pubsub getSubscribers')
  const data = new TextEncoder().encode('hello from the js client')
  const got = (async () => {
    for await (const m of sub.messages()) return m
  })()
  await until('delivered', async () => {
    await a.pubsub.publish(topic, data)
    return Promise.race([got, new Promise((resolve) => setTimeout(() => resolve(null), 500))])
  })
  ok('pubsub publish subscribe')
  await sub.close?.()
  process.exit(0)
} catch (err) {
  console.log(`error ${err?.stack ?? err}`)
  process.exit(1)
}
