#!/usr/bin/env python3
"""Protocol benchmarks; prints medians and ratios against the named anchors.

(a) encode / decode of a typical STORE frame, frames per second, as a ratio
    to raw ``msgpack.packb`` / ``msgpack.unpackb`` of the same array
    (anchor; target >= 0.5).  Decode is measured on a 64 KiB read holding
    many frames (how frames arrive) through ``FrameDecoder.iter_frames``,
    the path a link takes, each frame dropped once decoded as the anchor's
    is; for reference also through ``frames()`` (all of a read's frames
    alive at once: the cyclic GC's cost), one frame per feed, and the whole
    receive path, frame decoder + ``commands.decode`` (typed, every field
    validated).  Anchor and measured runs alternate, so that a noisy
    neighbour slows both alike.
(b) bytes on the wire per change in a stream of 100,000 STOREs and
    100,000 EXPUNGEs with zstd on (target <= 24 bytes each, amortised),
    flushing every 64 frames (the outbox batch) and after every frame.

Usage: .venv/bin/python tools/bench/bench_protocol.py [--runs N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import msgpack

from replicad.protocol import commands as c
from replicad.protocol.connection import Connection, LinkConfig
from replicad.protocol.frames import FrameDecoder, FrameEncoder
from replicad.uidset import UidSet

STORE = c.encode_command("k2p", c.Store(3, UidSet.of([48211]), ("\\Seen",), (), None))
N = 100_000
UIDVALIDITY = 1_700_000_000


def rate(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def per_second(runs: int, *fns: Callable[[], int]) -> list[float]:
    """Median rate of each of ``fns``, their runs interleaved."""
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for samples, fn in zip(rates, fns, strict=True):
            samples.append(rate(fn))
    return [statistics.median(samples) for samples in rates]


def bench_codec(runs: int) -> None:
    payload = msgpack.packb(STORE, use_bin_type=True)
    encoder = FrameEncoder()
    wire = encoder.encode(STORE)
    per_read = max(1, 65536 // len(wire))
    chunk = wire * per_read
    reads = N // per_read

    def raw_pack() -> int:
        for _ in range(N):
            msgpack.packb(STORE, use_bin_type=True)
        return N

    def our_encode() -> int:
        for _ in range(N):
            encoder.encode(STORE)
        return N

    def raw_unpack() -> int:
        unpackb = msgpack.unpackb
        for _ in range(N):
            unpackb(payload)
        return N

    def our_decode_streamed() -> int:
        decoder = FrameDecoder()
        for _ in range(reads):
            decoder.feed(chunk)
            for _frame in decoder.iter_frames():
                pass  # dropped, as the anchor drops what unpackb returns
        assert decoder.buffered == 0  # every frame of every read was decoded
        return reads * per_read

    def our_decode_listed() -> int:
        decoder = FrameDecoder()
        count = 0
        for _ in range(reads):
            decoder.feed(chunk)
            count += len(decoder.frames())
        return count

    def our_decode_single() -> int:
        decoder = FrameDecoder()
        for _ in range(N):
            decoder.feed(wire)
            decoder.next_frame()
        return N

    def typed_decode() -> int:
        for _ in range(N // 10):
            c.decode(STORE)
        return N // 10

    def full_decode() -> int:
        decoder = FrameDecoder()
        decode = c.decode
        count = 0
        for _ in range(reads // 10):
            decoder.feed(chunk)
            for frame in decoder.iter_frames():
                decode(frame)
                count += 1
        return count

    pack, enc = per_second(runs, raw_pack, our_encode)
    unpack, dec_s, dec_l, dec_1, full = per_second(
        runs, raw_unpack, our_decode_streamed, our_decode_listed, our_decode_single, full_decode
    )
    (typed,) = per_second(runs, typed_decode)
    print(f"STORE frame: {len(wire)} bytes on the wire, {STORE}")
    print(
        f"encode  {enc:12,.0f} frames/s   anchor packb   {pack:12,.0f}/s   ratio {enc / pack:.2f}"
    )
    for label, value in (
        ("(64 KiB reads, iter_frames: the link's path)", dec_s),
        ("(64 KiB reads, frames(): a read's frames held)", dec_l),
        ("(one frame per feed)", dec_1),
        ("(64 KiB reads + commands.decode: typed, validated)", full),
    ):
        print(
            f"decode  {value:12,.0f} frames/s   anchor unpackb {unpack:12,.0f}/s   ratio "
            f"{value / unpack:.2f}   {label}"
        )
    print(f"typed   {typed:12,.0f} records/s  (commands.decode alone: full field validation)")


def _link_pair() -> tuple[Connection, Connection]:
    a = Connection(LinkConfig("c1", "n1"), is_client=True)
    b = Connection(LinkConfig("c1", "n2"), is_client=False)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    a.start_compression()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    return a, b


def wire_bytes(kind: str, flush_every: int) -> float:
    """Bytes per change, master -> peer, for N changes on 20 mailboxes."""
    master, peer = _link_pair()
    for mbox in range(20):
        master.send_command(c.Mbox(mbox, "alice", f"box{mbox}", bytes(16), 1, 1, 0, 0))
    peer.receive_data(master.data_to_send())
    total = 0
    uid = [1000] * 20
    # Every message has its own random GUID (incompressible, as in life), and
    # every change its hybrid-clock stamp (milliseconds << 16 | counter).
    chance = random.Random(7)
    stamp = 1_700_000_000_000 << 16
    for seq in range(1, N + 1):
        mbox = seq * 7 % 20
        uid[mbox] += 1
        modseq = 50_000 + seq
        guid = chance.randbytes(16)
        stamp += chance.randrange(1, 3 << 16)
        if kind == "STORE":
            flag = ("\\Seen",) if seq % 3 else ("\\Flagged",)
            uids = UidSet.of([uid[mbox]])
            change: c.Untagged = c.StoreChange(
                seq, mbox, UIDVALIDITY, uids, flag, (), modseq, stamp, (guid[:8],)
            )
        else:
            change = c.ExpungeChange(
                seq, mbox, UIDVALIDITY, UidSet.of([uid[mbox]]), modseq, (guid,)
            )
        master.send_untagged(change)
        if seq % flush_every == 0:
            data = master.data_to_send()
            total += len(data)
            peer.receive_data(data)
    total += len(master.data_to_send())
    return total / N


def bench_wire(runs: int) -> None:
    for kind in ("STORE", "EXPUNGE"):
        for flush in (64, 1):
            sizes = [wire_bytes(kind, flush) for _ in range(max(1, runs // 3))]
            print(
                f"{kind:8} zstd, flush every {flush:2} frame(s): "
                f"{statistics.median(sizes):5.1f} bytes/change (target <= 24)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bench_codec(args.runs)
    bench_wire(args.runs)


if __name__ == "__main__":
    main()
