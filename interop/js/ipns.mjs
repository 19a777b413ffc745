// js-ipns (the `ipns` package js-libp2p/Helia use) for hyphae's IPNS interop tests.
//   node ipns.mjs create KEYFILE VALUE SEQ   -> the marshalled record js creates (V1+V2), in hex
//   node ipns.mjs validate KEY_HEX RECORD_HEX -> "ok SEQ VALUE" if js's validator accepts it, else "error ..."
// KEYFILE is a libp2p private-key protobuf; KEY_HEX a routing key (/ipns/ + the peer id's multihash).
import fs from 'node:fs'
import { createIPNSRecord, marshalIPNSRecord, unmarshalIPNSRecord } from 'ipns'
import { ipnsValidator } from 'ipns/validator'
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys'

const [cmd, a, b, c] = process.argv.slice(2)
try {
  if (cmd === 'create') {
    const key = privateKeyFromProtobuf(fs.readFileSync(a))
    const rec = await createIPNSRecord(key, b, BigInt(c), 3_600_000)
    console.log(Buffer.from(marshalIPNSRecord(rec)).toString('hex'))
  } else if (cmd === 'validate') {
    const bytes = new Uint8Array(Buffer.from(b, 'hex'))
    await ipnsValidator(new Uint8Array(Buffer.from(a, 'hex')), bytes)
    const rec = unmarshalIPNSRecord(bytes)
    console.log(`ok ${rec.sequence} ${rec.value}`)
  } else {
    console.error('usage: ipns.mjs create KEYFILE VALUE SEQ | validate KEY_HEX RECORD_HEX')
    process.exit(2)
  }
} catch (err) {
  console.log(`error ${err?.name ?? ''} ${err?.message ?? err}`)
  process.exit(1)
}
