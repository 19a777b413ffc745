#!/usr/bin/env python3
"""How a transfer ramps up on the long path: bytes sent per round trip, from its first byte.

    scripts/ramp.py [--ns hywan-a] [--dev hywan-ta] [--rtt-ms 60] [--bins 20] -- COMMAND...

Runs COMMAND (an upload from side A of `scripts/wan.sh`, e.g. `ip netns exec hywan-a iperf3 -c 10.99.0.2
-n 1G` or `ip netns exec hywan-a target/release/hyphae perf ADDR --upload 1073741824 --download 0`) and
samples the transmitted bytes of A's TUN device every 5 ms. Prints the KB sent in each round trip from
the first byte on: slow start shows as the ratio between neighbouring bins (2 when the window doubles
every round trip). Needs root (it reads the device's counters from inside the namespace).
"""
import argparse
import subprocess
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ns", default="hywan-a")
    p.add_argument("--dev", default=None, help="default: the namespace's TUN device (NS minus '-a', plus '-ta')")
    p.add_argument("--rtt-ms", type=float, default=60.0)
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        p.error("no command")
    dev = a.dev or (a.ns[:-2][:10] + "-ta")
    # A process inside the namespace, so its /proc/PID/net/dev shows the namespace's devices.
    holder = subprocess.Popen(["ip", "netns", "exec", a.ns, "sleep", "600"])
    try:
        time.sleep(0.2)
        path = "/proc/%d/net/dev" % holder.pid

        def sent():
            for line in open(path):
                if line.strip().startswith(dev + ":"):
                    return int(line.split(":", 1)[1].split()[8])
            raise SystemExit("no device %s in namespace %s" % (dev, a.ns))

        base = sent()
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        samples = []
        span = a.bins * a.rtt_ms / 1000 + 1.0
        while run.poll() is None and time.monotonic() - t0 < span:
            samples.append((time.monotonic() - t0, sent() - base))
            time.sleep(0.005)
        run.wait()
    finally:
        holder.kill()
    start = next((t for t, b in samples if b > 0), None)
    if start is None:
        raise SystemExit("nothing was sent")

    def at(t):
        return max((b for s, b in samples if s - start <= t), default=0)

    rtt = a.rtt_ms / 1000
    print(" ".join(str((at((k + 1) * rtt) - at(k * rtt)) // 1000) for k in range(a.bins)))


if __name__ == "__main__":
    main()
