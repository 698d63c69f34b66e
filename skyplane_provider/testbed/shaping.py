"""Rate caps on the testbed's veths, as ``tc`` arguments: ``tbf`` on the shared links of a ``link``
testbed, ``htb`` classes on the NICs of a ``vm`` testbed's gateway VMs.

Every rate given here is *payload* (TCP goodput), as the throughput grid measured it (iperf3 reports
the bytes its application moved). The shapers count whole Ethernet frames, so each cap is set to the
payload rate times ``WIRE_OVERHEAD``: a full 1,514-byte frame carries 1,448 bytes of payload (Ethernet
14 + IP 20 + TCP 20 + timestamps 12 bytes of headers at MTU 1,500). Measured before this correction:
91.08 MB crossed a capped veth for 87.11 MB of payload (4.6%), and one TCP stream topped out at 94-97%
of the cap.

A NIC (``nic_batch``) is one HTB tree on the device that carries a VM's traffic in one direction:

    1:1   the VM's own cap (egress, or ingress on the core's end of the veth)
    1:2   everything not classified below (VMs of the same region, ARP), within 1:1
    1:X   one class per other region, capped at the VM's rate to (from) that region, within 1:1;
          packets are sorted by destination (source) address; X = 0x10 + the region's index

Children are guaranteed only an equal share of 1:1 and borrow up to their own cap: HTB lets a class
below its guaranteed rate send without asking its parent, so guarantees that add up to more than the
parent's rate would break the parent's cap.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Ethernet frame bytes per byte of TCP payload in full-size segments (MTU 1,500, TCP timestamps on).
WIRE_OVERHEAD = 1514 / 1448
#: Header bytes of one TCP packet here (Ethernet 14, IP 20, TCP 20 + 12 of timestamps). A device's
#: ``rx_bytes`` counts them once per packet it received, and a GSO packet (up to 64 KiB of payload) is
#: one: payload is ``rx_bytes - HEADER_BYTES * rx_packets``, not ``rx_bytes / WIRE_OVERHEAD`` (measured:
#: 16 MiB over one stream arrived as 320 packets, 1.0013 rx bytes per payload byte; the shapers, which
#: count every segment, 1.0456).
HEADER_BYTES = 1514 - 1448
#: Bucket: 2 ms worth of the rate, at least 32 KiB (tbf undershoots with a tiny bucket).
MIN_BURST = 32 * 1024
BURST_SECONDS = 0.002
#: Queue: 50 ms worth of the rate, at least 256 KiB. With a 50 ms queue alone, a 10.9 Mbit/s link
#: dropped a third of its packets and one TCP stream got 83% of the cap; with 256 KiB, 97%.
MIN_LIMIT = 256 * 1024
QUEUE_SECONDS = 0.05
#: HTB's round-robin quantum between classes that borrow: two full frames.
QUANTUM = 2 * 1514
#: First class id of the per-region classes (1:10, 1:11, ... in tc's hexadecimal).
REGION_CLASS_BASE = 0x10


def wire_bits(payload_mbit: float) -> int:
    """The shaper's rate, in frame bits per second, for ``payload_mbit`` Mbit/s of payload."""
    return round(payload_mbit * 1e6 * WIRE_OVERHEAD)


def _burst(bits: int) -> int:
    return max(MIN_BURST, int(bits / 8 * BURST_SECONDS))


def _limit(bits: int) -> int:
    return max(MIN_LIMIT, int(bits / 8 * QUEUE_SECONDS))


def tbf_args(payload_mbit: float) -> list[str]:
    """``tc`` arguments of a tbf qdisc that carries ``payload_mbit`` Mbit/s of payload."""
    bits = wire_bits(payload_mbit)
    return ["tbf", "rate", f"{bits}bit", "burst", str(_burst(bits)), "limit", str(_limit(bits))]


@dataclass(frozen=True)
class RegionClass:
    """One per-region class of a NIC: its index (in the scenario), its cap and the addresses it matches."""

    index: int
    payload_mbit: float
    addresses: tuple[str, ...]


def region_class_id(index: int) -> str:
    """The HTB class of region ``index`` on a NIC, as tc writes it (``1:10`` for region 0)."""
    return f"1:{REGION_CLASS_BASE + index:x}"


def nic_batch(device: str, cap_mbit: float | None, classes: list[RegionClass], *, match: str) -> list[str]:
    """``tc -batch`` lines for one NIC direction on ``device``: at most ``cap_mbit`` (None: the sum of
    the region classes, i.e. no cap of its own), and at most each class's cap towards (``match`` =
    ``dst``) or from (``src``) the addresses of that class's region."""
    if match not in ("src", "dst"):
        raise ValueError(f"match must be src or dst, not {match!r}")
    total = wire_bits(cap_mbit if cap_mbit is not None else sum(c.payload_mbit for c in classes))
    share = max(1, total // (len(classes) + 1))  # guaranteed rate of each child (see the module docstring)

    def htb(classid: str, parent: str, rate: int, ceil: int) -> str:
        return (f"class add dev {device} parent {parent} classid {classid} htb rate {rate}bit ceil {ceil}bit "
                f"burst {_burst(rate)} cburst {_burst(ceil)} quantum {QUANTUM}")

    lines = [f"qdisc add dev {device} root handle 1: htb default 2",
             htb("1:1", "1:", total, total),
             htb("1:2", "1:1", share, total),
             f"qdisc add dev {device} parent 1:2 handle 2: bfifo limit {_limit(total)}"]
    for c in classes:
        ceil = min(total, wire_bits(c.payload_mbit))
        classid = region_class_id(c.index)
        minor = classid.split(":")[1]
        lines += [htb(classid, "1:1", min(share, ceil), ceil),
                  f"qdisc add dev {device} parent {classid} handle {minor}: bfifo limit {_limit(ceil)}"]
        lines += [f"filter add dev {device} parent 1: protocol ip prio 1 u32 match ip {match} {address}/32 "
                  f"flowid {classid}" for address in c.addresses]
    return lines
