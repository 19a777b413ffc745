// Runs @libp2p/interop (the suite js-libp2p and go-libp2p run against each other through their
// daemons) with `hyphae daemon` as the "go" node and, as the "js" node, go's p2pd (INTEROP_PEER=p2pd,
// the default) or js-libp2p behind @libp2p/daemon-server (INTEROP_PEER=js: interop/js/daemon.mjs, as
// js-libp2p's own interop runner builds it), and prints the counts. All are driven by
// @libp2p/daemon-client over their control sockets.
//   HYPHAE_BIN=... P2PD_BIN=... [INTEROP_PEER=js] [INTEROP_ALL=1] node runner.mjs [grep]
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import Mocha from 'mocha'
import { createClient } from '@libp2p/daemon-client'
import { multiaddr } from '@multiformats/multiaddr'

const { interopTests, UnsupportedError } = await import('@libp2p/interop')
const HYPHAE = process.env.HYPHAE_BIN
const P2PD = process.env.P2PD_BIN
const PEER = process.env.INTEROP_PEER ?? 'p2pd'
const JS_DIR = new URL('../js/', import.meta.url).pathname
let n = 0

async function start (kind, options) {
  if (options.encryption === 'plaintext') throw new UnsupportedError(`no plaintext in ${kind === 'hyphae' ? 'hyphae' : 'this ' + kind + ' daemon'}`)
  if (options.transport != null && options.transport !== 'tcp') throw new UnsupportedError('tcp only')
  if (options.relay === true && kind !== 'p2pd') throw new UnsupportedError(kind === 'hyphae' ? 'hyphae has no relay yet' : 'the js daemon here has no circuit relay')
  // A relay test's source and destination ({ encryption: 'noise', noListen: true }, no transport; the
  // connect tests always name one) dial or listen through /p2p-circuit: hyphae has no relay client yet.
  if (options.noListen === true && options.transport == null && kind === 'hyphae') throw new UnsupportedError('hyphae has no circuit relay client yet')
  if (options.muxer === 'mplex' && kind === 'p2pd') throw new UnsupportedError("hivemind's p2pd has no mplex")
  const sock = `/tmp/hyphae-interop-${process.pid}-${n++}.sock`
  const args = kind === 'hyphae' ? ['daemon'] : []
  args.push('-listen', `/unix${sock}`, '-hostAddrs', '/ip4/127.0.0.1/tcp/0')
  if (options.encryption === 'noise') args.push('-tls=false')
  if (options.encryption === 'tls') args.push('-noise=false')
  if (options.muxer != null) args.push('-muxer', options.muxer)
  if (options.dht === true) args.push('-dhtServer')
  if (options.pubsub === true) args.push('-pubsub', '-pubsubRouter', options.pubsubRouter ?? 'gossipsub')
  if (options.key != null && fs.existsSync(options.key)) args.push('-id', options.key)
  const child = kind === 'hyphae'
    ? spawn(HYPHAE, args, { stdio: ['ignore', 'pipe', 'ignore'] })
    : kind === 'js'
      ? spawn('node', ['--import', './polyfill.mjs', 'daemon.mjs', ...args], { cwd: JS_DIR, stdio: ['ignore', 'pipe', 'ignore'] })
      : spawn(P2PD, args, { stdio: ['ignore', 'pipe', 'ignore'] })
  await new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d.toString()
      if (/\n\/ip4\//.test(out)) resolve()
    })
    child.on('exit', (code) => reject(new Error(`${kind} exited ${code}`)))
  })
  const client = createClient(multiaddr(`/unix/${encodeURIComponent(sock)}`))
  return {
    client,
    async stop () {
      child.kill()
      await new Promise((resolve) => child.once('exit', resolve))
      fs.rmSync(sock, { force: true })
    }
  }
}

const factory = { spawn: (options) => start(options.type === 'go' ? 'hyphae' : PEER, options) }
// The suite also pairs its "js" node with itself (js sender to js listener, js peer to js peer): those test
// the peer against itself, not hyphae, and cost a third of the run (two Node daemons each), so they are
// left out unless INTEROP_ALL is set. A grep argument selects tests as given.
const selfPairs = /\bjs (sender|peer) to js (listener|peer)\b/
const all = process.env.INTEROP_ALL != null || process.argv[2] != null
const mocha = new Mocha({ timeout: 60000, grep: process.argv[2] ?? (all ? undefined : selfPairs), invert: !all, reporter: 'dot' })
mocha.suite.emit('pre-require', globalThis, 'interop', mocha)
await interopTests(factory)
const runner = mocha.run()
// A test whose daemon cannot be started as asked (UnsupportedError: plaintext, relay) is not a failure
// of the implementation under test: it is reported as unsupported, with the reason.
const failed = []
const unsupported = []
runner.on('fail', (t, err) => {
  const line = `${t.fullTitle()}: ${err.message.split('\n')[0]}`
  if (err instanceof UnsupportedError || err?.name === 'UnsupportedError') unsupported.push(line)
  else failed.push(line)
})
if (process.env.INTEROP_LIST != null) runner.on('pass', (t) => console.log(`\nPASS ${t.fullTitle()}`))
if (process.env.INTEROP_LIST != null) runner.on('pending', (t) => console.log(`\nPENDING ${t.fullTitle()}`))
runner.on('end', () => {
  const s = runner.stats
  for (const u of unsupported) console.log(`UNSUPPORTED ${u}`)
  for (const f of failed) console.log(`FAIL ${f}`)
  console.log(`interop: ${s.passes} passing, ${failed.length} failing, ${unsupported.length} unsupported, ${s.pending} pending`)
  process.exit(0)
})
