"""Decode benchmark: records/s of decode_batch, per-frame decode and a plain baseline.

    .venv/bin/python bench/decode.py [--quick] [--frames N] [--runs K] [--seed S]

Not a test: it prints figures and never asserts on times. The corpus is generated the
way real devices send (protocol notes 2.2, 4, 5, 7): TCP AVL frames of 1-10 records that
stay within the 1280-byte frame limit, about 12 IO elements per record in all four
fixed widths with full-width random values, signed coordinates and altitudes spread over
the whole range (so half are negative), Codec 8 and Codec 8 Extended with NX elements
(zero-length ones too), and a tenth Codec 16. Every frame is checked to decode before
timing starts.

Three decoders, measured in the same run, each several times (medians printed):
  decode_batch   fleetcloak.codecs.decode_batch, CRC checked, every IO element decoded,
                 in chunks of --chunk frames (a Kafka poll's worth) and in one call.
  decode         fleetcloak.codecs.decode, frame by frame, building AvlPacket objects.
  decode_avl_frame  the same C parser for one frame, building the same AvlPacket
                 objects (a fast path decode() can use for strict TCP AVL frames).
  baseline       a plain struct-based decoder written below, with the pure-Python bitwise
                 CRC of the protocol notes (2.3): what a straightforward Python decoder
                 does. Also printed: the same decoder with a table-driven pure-Python CRC,
                 so the ratio is not flattered by the slow CRC alone.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import struct
import sys
import time

from fleetcloak.codecs.crc import crc16_py

# ----------------------------------------------------------------------------- corpus

_GPS = struct.Struct(">QBiihHBH")  # timestamp, priority, lon, lat, alt, angle, sats, speed
_VAL = {1: "B", 2: "H", 4: "I", 8: "Q"}


crc16_bitwise = crc16_py  # CRC-16/IBM exactly as in the protocol notes 2.3 (the baseline's CRC)


def _make_table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _make_table()


def crc16_table(data: bytes) -> int:
    crc = 0
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc


def build_record(rng: random.Random, codec: int) -> bytes:
    c8 = codec == 0x08
    idf = "B" if c8 else "H"
    cnt = "H" if codec == 0x8E else "B"
    id_max = 255 if c8 else 2000
    out = [_GPS.pack(
        1_500_000_000_000 + rng.getrandbits(38),            # 2017 .. 2025, ms
        rng.randrange(3),
        rng.randrange(-1_800_000_000, 1_800_000_001),       # lon, half of them west
        rng.randrange(-900_000_000, 900_000_001),           # lat, half of them south
        rng.randrange(-400, 5000),                           # altitude, some below sea level
        rng.randrange(360), rng.randrange(25), rng.randrange(250))]
    counts = {1: rng.randint(3, 5), 2: rng.randint(3, 5), 4: rng.randint(1, 3), 8: rng.randint(1, 2)}
    n_nx = rng.choice((0, 1, 1, 2)) if codec == 0x8E else 0
    ids = rng.sample(range(1, id_max + 1), sum(counts.values()) + n_nx)
    event = rng.choice((0, 0, 0, ids[0]))
    head = ">" + idf + ("B" if codec == 0x10 else "") + cnt
    hv = [event] + ([rng.randrange(8)] if codec == 0x10 else []) + [len(ids)]
    out.append(struct.pack(head, *hv))
    k = 0
    for w in (1, 2, 4, 8):
        pairs = []
        for _ in range(counts[w]):
            pairs += [ids[k], rng.getrandbits(8 * w)]        # full-width values
            k += 1
        out.append(struct.pack(">" + cnt + (idf + _VAL[w]) * counts[w], counts[w], *pairs))
    if codec == 0x8E:
        out.append(struct.pack(">H", n_nx))
        for _ in range(n_nx):
            value = rng.randbytes(rng.choice((0, 8, 17, 24)))  # empty, iButton, VIN, beacon
            out.append(struct.pack(">HH", ids[k], len(value)) + value)
            k += 1
    return b"".join(out)


def build_frame(codec: int, records: list[bytes]) -> bytes:
    n = len(records)
    data = bytes((codec, n)) + b"".join(records) + bytes((n,))
    return struct.pack(">II", 0, len(data)) + data + struct.pack(">I", crc16_table(data))


def make_corpus(n_frames: int, seed: int) -> tuple[list[bytes], int]:
    rng = random.Random(seed)
    frames, n_rec = [], 0
    for _ in range(n_frames):
        codec = rng.choices((0x08, 0x8E, 0x10), (5, 4, 1))[0]
        want = rng.randint(1, 10)
        recs: list[bytes] = []
        size = 15
        while len(recs) < want:
            r = build_record(rng, codec)
            if size + len(r) > 1280:                         # the device's packet limit
                break
            recs.append(r)
            size += len(r)
        frames.append(build_frame(codec, recs))
        n_rec += len(recs)
    return frames, n_rec


# --------------------------------------------------------------------------- baseline

_HDR = struct.Struct(">IIBB")
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
_WIDTH_FMT = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I"),
              8: struct.Struct(">Q")}


def baseline_decode(frame: bytes, crc=crc16_bitwise) -> list[dict]:
    """A plain struct decoder: what most Python Teltonika parsers look like."""
    pre, length, codec, n1 = _HDR.unpack_from(frame, 0)
    if pre != 0 or len(frame) != length + 12:
        raise ValueError("bad frame")
    if _U32.unpack_from(frame, 8 + length)[0] != crc(frame[8:8 + length]):
        raise ValueError("crc")
    ext = codec == 0x8E
    idf = _U8 if codec == 0x08 else _U16
    cntf = _U16 if ext else _U8
    pos = 10
    records = []
    for _ in range(n1):
        ts, prio, lon, lat, alt, angle, sats, speed = _GPS.unpack_from(frame, pos)
        pos += 24
        event = idf.unpack_from(frame, pos)[0]
        pos += idf.size
        gen = None
        if codec == 0x10:
            gen = frame[pos]
            pos += 1
        pos += cntf.size  # N total
        io = {}
        for w in (1, 2, 4, 8):
            n = cntf.unpack_from(frame, pos)[0]
            pos += cntf.size
            vf = _WIDTH_FMT[w]
            for _ in range(n):
                i = idf.unpack_from(frame, pos)[0]
                pos += idf.size
                io[i] = vf.unpack_from(frame, pos)[0]
                pos += w
        if ext:
            n = _U16.unpack_from(frame, pos)[0]
            pos += 2
            for _ in range(n):
                i, ln = struct.unpack_from(">HH", frame, pos)
                pos += 4
                io[i] = frame[pos:pos + ln]
                pos += ln
        records.append({"timestamp_ms": ts, "priority": prio, "lon": lon / 1e7, "lat": lat / 1e7,
                        "altitude": alt, "angle": angle, "satellites": sats, "speed": speed,
                        "event_io_id": event, "generation_type": gen, "io": io})
    if frame[pos] != n1:
        raise ValueError("count")
    return records


# ------------------------------------------------------------------------------- runs

def each(fn, items, *args):
    """Call fn on every item and drop the results, as a stream consumer does (keeping
    100,000 decoded records alive would time the garbage collector, not the decoder)."""
    def run():
        for x in items:
            fn(x, *args)
    return run


def measure(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small corpus, fewer runs")
    ap.add_argument("--frames", type=int, default=None, help="corpus size (default 20000)")
    ap.add_argument("--runs", type=int, default=None, help="runs per decoder (default 7)")
    ap.add_argument("--chunk", type=int, default=1000, help="frames per decode_batch call")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    n_frames = args.frames or (2000 if args.quick else 20000)
    runs = args.runs or (3 if args.quick else 7)

    from fleetcloak.codecs import decode_batch
    try:
        from fleetcloak.codecs import decode
    except ImportError:  # pragma: no cover
        decode = None

    t0 = time.perf_counter()
    frames, n_rec = make_corpus(n_frames, args.seed)
    gen_s = time.perf_counter() - t0
    n_bytes = sum(map(len, frames))
    n_io = 0
    batch = decode_batch(frames)
    if batch.errors or len(batch) != n_rec:
        sys.exit(f"corpus does not decode: {batch.errors[:3]}")
    n_io = len(batch.io_id)
    n_nx = int((batch.io_width == 0).sum())
    codecs = {c: int((batch.frame_codec == c).sum()) for c in (0x08, 0x8E, 0x10)}
    print(f"python {platform.python_version()} on {platform.machine()}, one core")
    print(f"corpus: {n_frames} TCP frames ({codecs[8]} Codec 8, {codecs[0x8E]} Codec 8E, "
          f"{codecs[16]} Codec 16), {n_rec} records ({n_rec / n_frames:.1f}/frame), "
          f"{n_io} IO elements ({n_io / n_rec:.1f}/record, {n_nx} NX), {n_bytes} bytes "
          f"(mean frame {n_bytes / n_frames:.0f} B, max {max(map(len, frames))} B), "
          f"seed {args.seed}, built in {gen_s:.1f} s")
    # spot check: the baseline agrees with the batch decoder on the first frames
    for k in range(min(50, n_frames)):
        recs = baseline_decode(frames[k], crc16_table)
        mine = batch.select(batch.frame_index == k).records()
        assert [r["io"] for r in recs] == [r.io for r in mine], k

    results: dict[str, float] = {}

    def report(name: str, times: list[float], recs: int) -> float:
        med = statistics.median(times)
        rate = recs / med
        results[name] = rate
        print(f"  {name:<34} {rate:>12,.0f} records/s   median {med * 1e3:8.1f} ms "
              f"of {len(times)} (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
        return rate

    chunks = [frames[i:i + args.chunk] for i in range(0, n_frames, args.chunk)]
    print(f"records/s (median of {runs} runs):")
    report(f"decode_batch, {args.chunk}-frame calls",
           measure(each(decode_batch, chunks), runs), n_rec)
    report("decode_batch, one call", measure(lambda: decode_batch(frames), runs), n_rec)
    if decode is not None:
        report("decode (per frame)", measure(each(decode, frames), runs), n_rec)
    else:
        print("  decode (per frame)                 not importable")
    from fleetcloak.codecs.batch import decode_avl_frame
    report("decode_avl_frame (C, per frame)",
           measure(each(decode_avl_frame, frames), runs), n_rec)
    # The baselines are slow: time them on a slice of the corpus (the rate is what counts).
    sub = frames[: max(1, n_frames // (10 if args.quick else 5))]
    sub_rec = sum(len(baseline_decode(f, crc16_table)) for f in sub)
    report("baseline, bitwise CRC (notes 2.3)",
           measure(each(baseline_decode, sub), max(3, runs // 2)), sub_rec)
    report("baseline, table CRC",
           measure(each(baseline_decode, sub, crc16_table), runs), sub_rec)
    key = f"decode_batch, {args.chunk}-frame calls"
    print("ratios:")
    print(f"  decode_batch / baseline (bitwise CRC) = {results[key] / results['baseline, bitwise CRC (notes 2.3)']:.1f}x")
    print(f"  decode_batch / baseline (table CRC)   = {results[key] / results['baseline, table CRC']:.1f}x")
    if "decode (per frame)" in results:
        print(f"  decode / baseline (bitwise CRC)       = "
              f"{results['decode (per frame)'] / results['baseline, bitwise CRC (notes 2.3)']:.1f}x")
    print("targets: decode_batch >= 1,000,000 records/s and >= 6x baseline; decode >= 200,000 records/s")


if __name__ == "__main__":
    main()
