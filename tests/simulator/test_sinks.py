"""Sinks: Kafka against the real embedded broker; TCP and UDP device behaviour against
small in-test servers built on fleetcloak.codecs' framer and ACK encoders."""
from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import pytest

from fleetcloak.cli import main
from fleetcloak.codecs import (AvlPacket, DecodeError, ImeiLogin, TcpFramer, decode, encode_tcp_ack,
                               encode_udp_ack, login_reply)


class _Server:
    """A TCP + UDP Teltonika server in a thread. Stores every decodable AVL packet.

    `drop_acks`: the first N data packets are stored but never acknowledged (a lost ACK),
    so the device must time out and send the same packet again.
    `reject`: IMEIs whose TCP login is refused.
    """

    def __init__(self, drop_acks: int = 0, reject: frozenset[str] = frozenset()):
        self.drop_acks, self.reject = drop_acks, reject
        self.stored: list[tuple[str, AvlPacket]] = []
        self.bad = 0
        self.logins = Counter()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _shutdown(self):
        self.tcp.close()
        self.udp.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.tcp = await asyncio.start_server(self._tcp, "127.0.0.1", 0)
            self.tcp_port = self.tcp.sockets[0].getsockname()[1]
            srv = self

            class Udp(asyncio.DatagramProtocol):
                def connection_made(self, transport):
                    self.t = transport

                def datagram_received(self, data, addr):
                    try:
                        pkt = decode(data, "udp")
                    except DecodeError:
                        srv.bad += 1
                        return
                    srv.stored.append((pkt.imei, pkt))
                    if srv._take_drop():
                        return
                    self.t.sendto(encode_udp_ack(pkt.packet_id, pkt.avl_packet_id, len(pkt.records)), addr)

            self.udp, _ = await self.loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            self.udp_port = self.udp.get_extra_info("sockname")[1]
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()
        self.loop.close()

    def _take_drop(self) -> bool:
        if self.drop_acks > 0:
            self.drop_acks -= 1
            return True
        return False

    async def _tcp(self, reader, writer):
        framer, imei = TcpFramer(), None
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    if isinstance(frame, DecodeError):
                        self.bad += 1
                        writer.close()
                        return
                    try:
                        pkt = decode(frame, "tcp")
                    except DecodeError:
                        self.bad += 1
                        writer.write(encode_tcp_ack(0))
                        continue
                    if isinstance(pkt, ImeiLogin):
                        imei = pkt.imei
                        self.logins[imei] += 1
                        writer.write(login_reply(imei not in self.reject))
                        continue
                    self.stored.append((imei, pkt))
                    if not self._take_drop():
                        writer.write(encode_tcp_ack(len(pkt.records)))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _run(tmp_path, url, *extra, faults="0.1", days="1"):
    truth = tmp_path / "truth.json"
    assert main(["simulate", "--tenants", "2", "--vehicles", "3", "--days", days, "--seed", "3",
                 "--start", "2026-03-02", "--faults", faults, "--sink", url, "--truth", str(truth),
                 "--timeout", "0.3", "--attempts", "3", "--quiet", *extra]) == 0
    return json.loads(truth.read_text())


def _check_stored(server: _Server, truth: dict):
    tot = truth["totals"]
    stored = [(imei, r) for imei, p in server.stored for r in p.records]
    # Our server stores every decodable copy, acknowledged or not.
    assert len(stored) == (tot["valid"] + tot["too_old"] + tot["future"] + tot["duplicate"]
                           + tot["unknown_device"] + tot["unacked"])
    known = {d["imei"] for t in truth["tenants"] for d in t["devices"]}
    lo, hi = truth["reference"]["too_old_before_ms"], truth["reference"]["future_after_ms"]
    in_window = {(imei, r.timestamp_ms, r.lat, r.lon, r.event_io_id) for imei, r in stored
                 if imei in known and lo <= r.timestamp_ms <= hi}
    assert len(in_window) == tot["valid"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_device_sink_with_a_lost_ack_retransmits(tmp_path, transport):
    with _Server(drop_acks=2) as srv:
        port = srv.tcp_port if transport == "tcp" else srv.udp_port
        truth = _run(tmp_path, f"{transport}://127.0.0.1:{port}")
    assert all(d["transport"] == transport for t in truth["tenants"] for d in t["devices"])
    tot = truth["totals"]
    assert tot["unacked"] > 0 and tot["rejected"] == 0 and tot["valid"] > 100
    assert truth["sink_stats"]["timeouts"] >= 2 and truth["sink_stats"]["attempts"] > truth["totals"]["messages"] / 2
    _check_stored(srv, truth)
    if transport == "tcp":
        assert srv.bad > 0 and sum(srv.logins.values()) > len(srv.logins)  # reconnects after faults


def test_tcp_refused_login_counts_rejected(tmp_path):
    with _Server() as probe:  # learn an IMEI of the fleet first
        truth0 = _run(tmp_path, f"tcp://127.0.0.1:{probe.tcp_port}", faults="0")
    victim = truth0["tenants"][0]["devices"][0]["imei"]
    with _Server(reject=frozenset({victim})) as srv:
        truth = _run(tmp_path, f"tcp://127.0.0.1:{srv.tcp_port}", faults="0")
    assert truth["counts"][victim]["rejected"] > 0 and truth["counts"][victim]["valid"] == 0
    assert victim not in {imei for imei, _ in srv.stored}


def test_device_sink_without_a_server_counts_undelivered(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    truth = _run(tmp_path, f"tcp://127.0.0.1:{port}", "--vehicles", "2", faults="0.2")
    assert truth["totals"]["undelivered"] > 0 and truth["totals"]["valid"] == 0


@pytest.mark.broker
def test_kafka_sink_round_trip(broker, tmp_path):
    from aiokafka import AIOKafkaConsumer

    topic = "sim.test.raw"
    truth = _run(tmp_path, f"kafka://{broker}", "--topic", topic, faults="0.1")
    _run_file = tmp_path / "same.jsonl"
    assert main(["simulate", "--tenants", "2", "--vehicles", "3", "--days", "1", "--seed", "3",
                 "--start", "2026-03-02", "--faults", "0.1", "--sink", f"file:{_run_file}",
                 "--quiet"]) == 0
    want = [json.loads(x) for x in _run_file.read_text().splitlines()]
    assert len(want) == truth["totals"]["messages"]

    async def consume():
        c = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
        await c.start()
        got = []
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while len(got) < len(want) and asyncio.get_running_loop().time() < deadline:
                for msgs in (await c.getmany(timeout_ms=1000)).values():
                    got.extend(msgs)
        finally:
            await c.stop()
        return got

    got = asyncio.run(consume())
    assert len(got) == len(want)
    as_tuples = lambda ms: sorted((m["imei"], m["frame_hex"], str(m["received_at"]), m["transport"]) for m in ms)
    back = [{"imei": m.key.decode(), "frame_hex": m.value.hex(),
             "received_at": dict(m.headers)["received_at"].decode(),
             "transport": dict(m.headers)["transport"].decode()} for m in got]
    assert as_tuples(back) == as_tuples(want)
    # Per device (= per partition key) the order is the stream's order.
    by_imei = lambda ms: {i: [m["frame_hex"] for m in ms if m["imei"] == i] for i in {m["imei"] for m in ms}}
    assert by_imei(back) == by_imei(want)


def test_replay_to_a_tcp_server(tmp_path):
    out = tmp_path / "tcp.jsonl"
    truth = _run(tmp_path, f"file:{out}", "--transport", "tcp", faults="0")
    with _Server() as srv:
        assert main(["simulate", "--replay", str(out), "--sink", f"tcp://127.0.0.1:{srv.tcp_port}",
                     "--timeout", "0.3", "--quiet"]) == 0
    assert sum(len(p.records) for _, p in srv.stored) == truth["totals"]["valid"]
