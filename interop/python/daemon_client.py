"""Drives two libp2p daemons with p2pclient 0.3.0, unchanged: the way its users do.

usage: daemon_client.py CONTROL_A CONTROL_B WORKDIR [B_HANDLER]
(control sockets as filesystem paths; A and B are any mix of `hyphae daemon` and go's p2pd). With
B_HANDLER=0 no handler is registered on B: go's p2pd from hivemind requires `balanced`, which
p2pclient 0.3.0 never sends (see shared/PEERS.md); hyphae takes it as optional.
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


async def main(a_sock, b_sock, work, b_handler):
    a = Client(Multiaddr(f"/unix{a_sock}"), Multiaddr(f"/unix{work}/a-handlers.sock"))
    b = Client(Multiaddr(f"/unix{b_sock}"), Multiaddr(f"/unix{work}/b-handlers.sock"))
    a_id, a_addrs = await a.identify()
    b_id, b_addrs = await b.identify()
    assert a_addrs and b_addrs, (a_addrs, b_addrs)
    print("ok identify", a_id, b_id, flush=True)

    await a.connect(b_id, b_addrs)
    assert b_id in [p.peer_id for p in await a.list_peers()]
    assert a_id in [p.peer_id for p in await b.list_peers()]
    print("ok connect list_peers", flush=True)

    async with a.listen(), b.listen():
        if b_handler:
            await b.stream_handler(ECHO, echo)
            assert await roundtrip(a, b_id, b"from a to b") == b"from a to b"
            print("ok stream a->b", flush=True)
        await a.stream_handler(ECHO, echo)
        assert await roundtrip(b, a_id, b"from b to a") == b"from b to a"
        print("ok stream b->a", flush=True)

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
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], b_handler)
