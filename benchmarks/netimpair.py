"""A shaped link between two network namespaces, for calls on bad networks.

Three namespaces: ``A`` and ``B`` hold the two peers, ``M`` between them holds the signaling
server and routes A↔B through a TUN device read by a small userspace relay::

    A (10.77.1.1) ── veth ── M (10.77.1.254 | 10.77.2.254) ── veth ── B (10.77.2.1)
                             └─ ip rule: what comes in on either veth goes to the TUN;
                                the relay writes it back after its delay, or drops it

Which mechanism shapes what (recorded with each cell):

- rate caps: ``tc`` tbf on M's two veths (each direction capped apart, its queue the tbf's);
- random loss: iptables' ``statistic`` match in M's FORWARD chain (UDP from either veth);
- delay, jitter, Gilbert–Elliott burst loss and outages: the relay (this module's ``relay``).

The signaling server sits in M, so it reaches both peers without the relay: the impairment
is on the media path (everything A and B send each other), not on signaling.

Every namespace is named with a per-run prefix (``fcimp`` + 6 hex digits) and removed on
exit, on SIGINT/SIGTERM and on failure (:meth:`Link.close`; deleting a namespace removes its
veths, qdiscs, TUN and iptables rules with it).

    python -m benchmarks.netimpair relay --tun TUN --a-net 10.77.1.0/24 ... (run by Link)
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import ipaddress
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

A_ADDR, A_GW, B_ADDR, B_GW = "10.77.1.1", "10.77.1.254", "10.77.2.1", "10.77.2.254"
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
TBF_BURST_BYTES = 1600  # one full packet at a time: the cap holds at every time scale
TBF_LATENCY = "1s"  # the bottleneck's queue: up to 1 s of data waits in it, beyond that it drops


class LinkUnavailable(RuntimeError):
    """The namespaces or one of the shaping tools were refused here (the reason says which)."""


@dataclass
class Impairment:
    """What one cell does to the A↔B path (both directions alike)."""

    loss: float = 0.0  # random loss fraction (iptables statistic)
    burst_loss: float = 0.0  # mean loss of the Gilbert–Elliott channel (relay)
    burst_packets: float = 8.0  # mean length of a loss burst in packets (relay, Gilbert–Elliott)
    delay_ms: float = 0.0  # one-way delay (relay)
    jitter_ms: float = 0.0  # σ of a normal delay variation, FIFO kept (relay)
    rate_kbps: float = 0.0  # rate cap each way (tbf); 0: none
    outage_s: float = 0.0  # the link goes away for this long (relay drops everything), once

    def mechanisms(self) -> dict[str, str]:
        """Which mechanism shapes each impairment this cell uses."""
        used = {}
        if self.rate_kbps:
            used["rate"] = f"tc tbf on M's veths: rate {self.rate_kbps:g}kbit burst {TBF_BURST_BYTES} " \
                           f"latency {TBF_LATENCY}"
        if self.loss:
            used["random_loss"] = f"iptables statistic --mode random --probability {self.loss:g} (M FORWARD, udp)"
        if self.burst_loss:
            used["burst_loss"] = (f"relay: Gilbert–Elliott, mean loss {self.burst_loss:g}, mean burst "
                                  f"{self.burst_packets:g} packets (bad state drops all, good none)")
        if self.delay_ms or self.jitter_ms:
            used["delay"] = f"relay: {self.delay_ms:g} ms one way, normal jitter σ {self.jitter_ms:g} ms, FIFO"
        if self.outage_s:
            used["outage"] = f"relay: drops every packet both ways for {self.outage_s:g} s"
        return used


def _run(command: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LinkUnavailable(f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")
    return result


def tools_missing() -> str | None:
    """Why a shaped link cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's {package})"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the relay needs a TUN device)"
    return None


@dataclass
class Link:
    """Namespaces A, M, B and the relay, shaped by one :class:`Impairment`. Use as a context
    manager; :meth:`close` is idempotent and also runs on SIGINT/SIGTERM via :func:`cleanup_on_signals`."""

    impairment: Impairment
    relay_stats_path: str = ""
    prefix: str = field(default_factory=lambda: "fcimp" + uuid.uuid4().hex[:6])
    relay: subprocess.Popen | None = None
    _made: list[str] = field(default_factory=list)

    @property
    def ns_a(self) -> str:
        return self.prefix + "a"

    @property
    def ns_m(self) -> str:
        return self.prefix + "m"

    @property
    def ns_b(self) -> str:
        return self.prefix + "b"

    def __enter__(self) -> Link:
        _LIVE.append(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        reason = tools_missing()
        if reason:
            raise LinkUnavailable(reason)
        p, ns_a, ns_m, ns_b = self.prefix, self.ns_a, self.ns_m, self.ns_b
        for ns in (ns_a, ns_m, ns_b):
            _run(["ip", "netns", "add", ns])
            self._made.append(ns)
        va, vma, vmb, vb, tun = f"{p}va", f"{p}ma", f"{p}mb", f"{p}vb", f"{p}t"
        m = ["ip", "-n", ns_m]
        for command in (
            ["ip", "link", "add", va, "netns", ns_a, "type", "veth", "peer", "name", vma, "netns", ns_m],
            ["ip", "link", "add", vb, "netns", ns_b, "type", "veth", "peer", "name", vmb, "netns", ns_m],
            ["ip", "-n", ns_a, "addr", "add", f"{A_ADDR}/24", "dev", va],
            [*m, "addr", "add", f"{A_GW}/24", "dev", vma],
            [*m, "addr", "add", f"{B_GW}/24", "dev", vmb],
            ["ip", "-n", ns_b, "addr", "add", f"{B_ADDR}/24", "dev", vb],
            *[["ip", "-n", ns, "link", "set", "lo", "up"] for ns in (ns_a, ns_m, ns_b)],
            ["ip", "-n", ns_a, "link", "set", va, "up"], ["ip", "-n", ns_b, "link", "set", vb, "up"],
            [*m, "link", "set", vma, "up"], [*m, "link", "set", vmb, "up"],
            ["ip", "-n", ns_a, "route", "add", "default", "via", A_GW],
            ["ip", "-n", ns_b, "route", "add", "default", "via", B_GW],
            [*m, "tuntap", "add", "dev", tun, "mode", "tun"],
            [*m, "link", "set", tun, "up"],
            # What comes in on either veth is routed into the TUN (to the relay); what the relay
            # writes back comes in on the TUN and takes the main table's direct routes.
            [*m, "route", "add", "default", "dev", tun, "table", "100"],
            [*m, "rule", "add", "iif", vma, "lookup", "100", "priority", "100"],
            [*m, "rule", "add", "iif", vmb, "lookup", "100", "priority", "100"],
        ):
            _run(command)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0", f"net.ipv4.conf.{tun}.rp_filter=0"):
            _run(["ip", "netns", "exec", ns_m, "sysctl", "-q", "-w", key])
        imp = self.impairment
        if imp.rate_kbps:
            for dev in (vma, vmb):  # each direction's egress from M: A→B leaves on vmb
                _run([*m[:0], "ip", "netns", "exec", ns_m, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                      "rate", f"{imp.rate_kbps:g}kbit", "burst", str(TBF_BURST_BYTES), "latency", TBF_LATENCY])
        if imp.loss:
            for dev in (vma, vmb):
                _run(["ip", "netns", "exec", ns_m, "iptables", "-A", "FORWARD", "-i", dev, "-p", "udp",
                      "-m", "statistic", "--mode", "random", "--probability", f"{imp.loss:g}", "-j", "DROP"])
        self.tun, self.veths = tun, (vma, vmb)
        command = ["ip", "netns", "exec", ns_m, sys.executable, "-m", "benchmarks.netimpair", "relay",
                   "--tun", tun, "--b-net", "10.77.2.0/24", "--stats", self.relay_stats_path,
                   "--burst-loss", str(imp.burst_loss), "--burst-packets", str(imp.burst_packets),
                   "--delay-ms", str(imp.delay_ms), "--jitter-ms", str(imp.jitter_ms)]
        self.relay = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        if self.relay.poll() is not None:
            raise LinkUnavailable(f"the relay did not start: {self.relay.stderr.read()[-500:]}")

    def netns_exec(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def outage(self, start: bool) -> None:
        """The link goes away (``start``) or comes back: the relay drops every packet meanwhile."""
        if self.relay is not None and self.relay.poll() is None:
            self.relay.send_signal(signal.SIGUSR1 if start else signal.SIGUSR2)

    def qdisc_backlog(self) -> dict[str, dict[str, int]]:
        """Each tbf's backlog now (bytes, packets) and its drops so far, from ``tc -s``."""
        out = {}
        for dev in getattr(self, "veths", ()):
            result = _run(["ip", "netns", "exec", self.ns_m, "tc", "-s", "-j", "qdisc", "show", "dev", dev],
                          check=False)
            try:
                rows = json.loads(result.stdout or "[]")
            except ValueError:
                continue
            for row in rows:
                if row.get("kind") == "tbf":
                    out["to_b" if dev.endswith("mb") else "to_a"] = {
                        "backlog_bytes": int(row.get("backlog", 0)), "backlog_packets": int(row.get("qlen", 0)),
                        "drops": int(row.get("drops", 0)), "sent_bytes": int(row.get("bytes", 0))}
        return out

    def close(self) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
        while self._made:
            _run(["ip", "netns", "del", self._made.pop()], check=False)
        if self in _LIVE:
            _LIVE.remove(self)


_LIVE: list[Link] = []


def cleanup_on_signals() -> None:
    """Close every open Link on SIGINT/SIGTERM (then exit 130/143) and at interpreter exit."""
    import atexit

    def close_all() -> None:
        for link in list(_LIVE):
            link.close()

    def handler(signum, frame) -> None:
        close_all()
        raise SystemExit(128 + signum)

    atexit.register(close_all)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------- the relay (runs in M)

@dataclass
class DirectionStats:
    forwarded: int = 0
    burst_dropped: int = 0
    outage_dropped: int = 0
    bursts: int = 0


class GilbertElliott:
    """Two states: good (no loss) and bad (every packet lost). ``mean_loss`` = P(bad);
    ``mean_burst`` = mean packets per stay in bad = 1 / P(bad → good)."""

    def __init__(self, mean_loss: float, mean_burst: float, rng: random.Random) -> None:
        self.r = 1.0 / max(mean_burst, 1.0)
        self.p = mean_loss * self.r / max(1.0 - mean_loss, 1e-9)
        self.bad = False
        self.rng = rng

    def drop(self) -> tuple[bool, bool]:
        """(this packet is lost, a new burst began with it)."""
        began = False
        if self.bad:
            if self.rng.random() < self.r:
                self.bad = False
        elif self.rng.random() < self.p:
            self.bad = began = True
        return self.bad, began


def relay_main(args: argparse.Namespace) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", args.tun.encode(), IFF_TUN | IFF_NO_PI))
    b_net = ipaddress.ip_network(args.b_net)
    rng = random.Random(args.seed)
    stats = {"to_b": DirectionStats(), "to_a": DirectionStats()}
    channels = {k: GilbertElliott(args.burst_loss, args.burst_packets, rng) for k in stats} \
        if args.burst_loss > 0 else {}
    state = {"outage": False, "outages": [], "stop": False}
    started = time.monotonic()

    def outage_on(*_):
        state["outage"] = True
        state["outages"].append([round(time.monotonic() - started, 3), None])

    def outage_off(*_):
        state["outage"] = False
        if state["outages"]:
            state["outages"][-1][1] = round(time.monotonic() - started, 3)

    def stop(*_):
        state["stop"] = True

    signal.signal(signal.SIGUSR1, outage_on)
    signal.signal(signal.SIGUSR2, outage_off)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queue: list[tuple[float, int, bytes]] = []  # (due, order, packet)
    last_due = {"to_b": 0.0, "to_a": 0.0}
    order = 0
    while not state["stop"]:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, packet = heapq.heappop(queue)
            try:
                os.write(fd, packet)
            except OSError:
                pass
        timeout = max(0.0, queue[0][0] - now) if queue else 0.2
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            packet = os.read(fd, 65536)
        except OSError:
            continue
        if len(packet) < 20 or packet[0] >> 4 != 4:
            continue
        direction = "to_b" if ipaddress.ip_address(packet[16:20]) in b_net else "to_a"
        d = stats[direction]
        if state["outage"]:
            d.outage_dropped += 1
            continue
        if channels:
            lost, began = channels[direction].drop()
            d.bursts += int(began)
            if lost:
                d.burst_dropped += 1
                continue
        d.forwarded += 1
        now = time.monotonic()
        delay = args.delay_ms + (rng.gauss(0.0, args.jitter_ms) if args.jitter_ms else 0.0)
        due = max(now + max(delay, 0.0) / 1000.0, last_due[direction])  # FIFO: no reordering
        last_due[direction] = due
        if due <= now:
            try:
                os.write(fd, packet)
            except OSError:
                pass
        else:
            order += 1
            heapq.heappush(queue, (due, order, packet))
    if args.stats:
        with open(args.stats, "w", encoding="utf-8") as out:
            json.dump({"directions": {k: asdict(v) for k, v in stats.items()},
                       "outages_s": state["outages"]}, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.netimpair")
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="the userspace relay (run inside M by Link)")
    relay.add_argument("--tun", required=True)
    relay.add_argument("--b-net", required=True, help="B's subnet: packets to it go A→B")
    relay.add_argument("--stats", default="")
    relay.add_argument("--burst-loss", type=float, default=0.0)
    relay.add_argument("--burst-packets", type=float, default=8.0)
    relay.add_argument("--delay-ms", type=float, default=0.0)
    relay.add_argument("--jitter-ms", type=float, default=0.0)
    relay.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return relay_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
