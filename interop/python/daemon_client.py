"""Drives two libp2p daemons with p2pclient 0.3.0, unchanged: the way its users do.

usage: daemon_client.py CONTROL_A CONTROL_B WORKDIR [B_HANDLER] [dht-pubsub]
(control sockets as filesystem paths; A and B are any mix of `hyphae daemon` and go's p2pd). With
B_HANDLER=0 no handler is registered on B: go's p2pd from hivemind requires `balanced`, which
p2pclient 0.3.0 never sends (see shared/PEERS.md); hyphae takes it as optional. With `dht-pubsub`
(daemons started with -dhtServer -pubsub) it then runs the DHT and pubsub requests too.
Prints one `ok <step>` line per step that passed; exits non-zero on the first failure.
"""
import sys

import anyio
from multiaddr import Multiaddr
from p2pclient import Client

ECHO = "/hyphae/echo/1.0.0"


async def echo(_info, stream):
    data = await stream.receive(65536)
    await stream.send(data)
    await stream.aclose()


async def roundtrip(opener, target_id, payload):
    _info, s = await opener.stream_open(target_id, [ECHO])
    await s.send(payload)
    got = b""
    while len(got) < len(payload):
        got += await s.receive(65536)
    await s.aclose()
    return got


async def dht_and_pubsub(a, b, a_id, b_id):
    from p2pclient.pb import p2pd_pb2 as pb
    from p2pclient.utils import read_pbmsg_safe

    # Peer routing: each finds the other, and its key.
    with anyio.fail_after(20):
        info = await a.dht.find_peer(b_id)
    assert info.peer_id == b_id and info.addrs, info
    key = await a.dht.get_public_key(b_id)
    assert key.data, key  # p2pclient names the fields key_type and data
    closest = await a.dht.get_closest_peers(b"/some/key")
    assert b_id in closest, closest
    print("ok dht find_peer get_public_key get_closest_peers", flush=True)
    # Records: b's /pk/ record (its key) put by a, read back by b.
    record_key = b"/pk/" + b_id.to_bytes()
    await a.dht.put_value(record_key, key.SerializeToString())
    with anyio.fail_after(20):
        got = await b.dht.get_value(record_key)
    assert got == key.SerializeToString()
    values = await b.dht.search_value(record_key)
    assert got in values, values
    print("ok dht put_value get_value search_value", flush=True)
    # Content routing: b provides a CID (v0: sha2-256 multihash of 32 bytes), a finds it.
    cid = bytes([0x12, 0x20]) + bytes(range(32))
    await b.dht.provide(cid)
    with anyio.fail_after(20):
        providers = await a.dht.find_providers(cid, 5)
    assert b_id in [p.peer_id for p in providers], providers
    print("ok dht provide find_providers", flush=True)

    # Pubsub: both subscribe; b publishes; a's subscription stream carries it.
    sub = await a.pubsub.subscribe("hyphae-daemon")
    sub_b = await b.pubsub.subscribe("hyphae-daemon")
    with anyio.fail_after(20):
        while b_id not in await a.pubsub.list_peers("hyphae-daemon"):
            await anyio.sleep(0.1)
    assert "hyphae-daemon" in await a.pubsub.get_topics()
    await anyio.sleep(1.5)  # a heartbeat: the mesh forms
    await b.pubsub.publish("hyphae-daemon", b"hello over the daemons")
    msg = pb.PSMessage()
    with anyio.fail_after(20):
        await read_pbmsg_safe(sub, msg)
    assert msg.data == b"hello over the daemons" and "hyphae-daemon" in msg.topicIDs, msg
    assert getattr(msg, "from") == b_id.to_bytes(), msg
    await sub.aclose()
    await sub_b.aclose()
    print("ok pubsub subscribe list_peers get_topics publish", flush=True)


async def main(a_sock, b_sock, work, b_handler, dht_pubsub):
    a = Client(Multiaddr(f"/unix{a_sock}"), Multiaddr(f"/unix{work}/a-handlers.sock"))
    b = Client(Multiaddr(f"/unix{b_sock}"), Multiaddr(f"/unix{work}/b-handlers.sock"))
    a_id, a_addrs = await a.identify()
    b_id, b_addrs = await b.identify()
    assert a_addrs and b_addrs, (a_addrs, b_addrs)
    print("ok identify", a_id, b_id, flush=True)

    await a.connect(b_id, b_addrs)
    assert b_id in [p.peer_id for p in await a.list_peers()]
    # The other side may list the connection a moment after the dialer's CONNECT returned.
    with anyio.fail_after(5):
        while a_id not in [p.peer_id for p in await b.list_peers()]:
            await anyio.sleep(0.05)
    print("ok connect list_peers", flush=True)

    async with a.listen(), b.listen():
        if b_handler:
            await b.stream_handler(ECHO, echo)
            assert await roundtrip(a, b_id, b"from a to b") == b"from a to b"
            print("ok stream a->b", flush=True)
        await a.stream_handler(ECHO, echo)
        assert await roundtrip(b, a_id, b"from b to a") == b"from b to a"
        print("ok stream b->a", flush=True)

    if dht_pubsub:
        await dht_and_pubsub(a, b, a_id, b_id)

    await a.connmgr.tag_peer(b_id, "p2pclient", 42)
    await a.connmgr.untag_peer(b_id, "p2pclient")
    await a.connmgr.trim()
    print("ok connmgr", flush=True)

    await a.disconnect(b_id)
    with anyio.fail_after(5):
        while b_id in [p.peer_id for p in await a.list_peers()]:
            await anyio.sleep(0.05)
    print("ok disconnect", flush=True)


if __name__ == "__main__":
    b_handler = len(sys.argv) < 5 or sys.argv[4] != "0"
    dht_pubsub = len(sys.argv) > 5 and sys.argv[5] == "dht-pubsub"
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], b_handler, dht_pubsub)
