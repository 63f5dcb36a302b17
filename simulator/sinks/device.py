"""tcp://HOST:PORT and udp://HOST:PORT — behave as the devices do (protocol notes 2, 3).

TCP, one connection per device (IMEI), opened on its first packet:
  login `00 0F <IMEI>`, wait for the one-byte answer (01 accept / 00 reject); then per
  packet: send the frame, wait for the 4-byte ACK count. No ACK within the timeout, or a
  count other than the packet's record count: close the link (the newer wiki's device
  behaviour), reconnect, log in and send the same frame again, up to `attempts` times.
UDP, one socket per device: send the datagram (it carries the IMEI and the AVL packet
  id), wait for `00 05 <packet id> 01 <AVL packet id> <count>`; resend the same datagram
  on timeout. ACKs for other AVL packet ids (late ones) are skipped.

What the truth can know (a device never learns whether an unacknowledged copy was
stored): the copy the server acknowledged is counted with its planned fates; every
copy sent without a matching ACK is counted `unacked` (the server may or may not hold
it; if it does, it duplicates the acknowledged copy); a refused login counts the
packet's records `rejected`. Corrupt copies (faults) are sent once, not retried (the
clean resend is already the next emission of the plan), and the TCP link is closed
after them, because a truncated or garbled frame leaves the server's framer out of
step: that is what a device's dropped connection looks like.
Sends are sequential in received_at order, which keeps runs deterministic and is far
faster than any gateway test needs; use --speed / --realtime to pace them.
"""
from __future__ import annotations

import socket

from ...codecs import decode_udp_ack, encode
from ...codecs.packets import ImeiLogin
from ..packetiser import Emission


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


class DeviceSink:
    def __init__(self, transport: str, host: str, port: int, timeout: float = 5.0, attempts: int = 3):
        if transport not in ("tcp", "udp"):
            raise ValueError(transport)
        self.transport, self.addr = transport, (host, port)
        self.timeout, self.attempts = timeout, max(1, attempts)
        self._tcp: dict[str, socket.socket] = {}
        self._udp: dict[str, socket.socket] = {}
        self.stats = {"attempts": 0, "timeouts": 0, "reconnects": 0, "rejected_logins": 0}

    # -- TCP -----------------------------------------------------------------------
    def _tcp_conn(self, imei: str) -> socket.socket | None:
        s = self._tcp.get(imei)
        if s is not None:
            return s
        s = socket.create_connection(self.addr, timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.sendall(encode(ImeiLogin(imei)))
            ok = _recv_exact(s, 1) == b"\x01"
        except (OSError, ConnectionError):
            ok = False
        if not ok:
            s.close()
            self.stats["rejected_logins"] += 1
            return None
        self._tcp[imei] = s
        return s

    def _tcp_drop(self, imei: str) -> None:
        s = self._tcp.pop(imei, None)
        if s is not None:
            self.stats["reconnects"] += 1
            try:
                s.close()
            except OSError:
                pass

    def _send_tcp(self, em: Emission) -> dict[str, int]:
        n = em.n_records
        if em.copy == "corrupt":
            try:
                s = self._tcp_conn(em.imei)
            except OSError:
                return {"undelivered": n}
            if s is None:
                return {"rejected": n}
            try:
                s.sendall(em.frame)
            except OSError:
                pass
            self._tcp_drop(em.imei)
            return {"corrupt": n}
        unacked = 0
        for _ in range(self.attempts):
            try:
                s = self._tcp_conn(em.imei)
            except OSError:  # no server: nothing was sent in this attempt
                continue
            if s is None:
                return {"rejected": n, **({"unacked": unacked} if unacked else {})}
            self.stats["attempts"] += 1
            try:
                s.sendall(em.frame)
                count = int.from_bytes(_recv_exact(s, 4), "big")
            except (OSError, ConnectionError):
                self.stats["timeouts"] += 1
                self._tcp_drop(em.imei)
                unacked += n
                continue
            if count == n:
                return {**em.fates, **({"unacked": unacked} if unacked else {})}
            self._tcp_drop(em.imei)
            unacked += n
        return {"unacked": unacked} if unacked else {"undelivered": n}

    # -- UDP -----------------------------------------------------------------------
    def _udp_sock(self, imei: str) -> socket.socket:
        s = self._udp.get(imei)
        if s is None:
            s = self._udp[imei] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(self.addr)
        return s

    def _send_udp(self, em: Emission) -> dict[str, int]:
        n = em.n_records
        s = self._udp_sock(em.imei)
        s.setblocking(False)
        try:
            while s.recv(64):  # drop late ACKs of earlier packets
                pass
        except OSError:
            pass
        s.settimeout(self.timeout)
        if em.copy == "corrupt":
            try:
                s.send(em.frame)
            except OSError:
                return {"undelivered": n}
            return {"corrupt": n}
        want = em.avl_packet_id or 0
        unacked = 0
        for _ in range(self.attempts):
            self.stats["attempts"] += 1
            try:
                s.send(em.frame)
                while True:
                    ack = decode_udp_ack(s.recv(64))
                    if ack.avl_packet_id == want:
                        break
            except (OSError, ValueError):
                self.stats["timeouts"] += 1
                unacked += n
                continue
            if ack.count == n:
                return {**em.fates, **({"unacked": unacked} if unacked else {})}
            unacked += n
        return {"unacked": unacked}

    # -- Sink ----------------------------------------------------------------------
    def send(self, em: Emission):
        if em.transport != self.transport:
            raise ValueError(f"a {em.transport} packet cannot go to a {self.transport}:// sink "
                             "(the simulation should run with every device on that transport)")
        fates = self._send_tcp(em) if self.transport == "tcp" else self._send_udp(em)
        return ((em, fates),)

    def close(self):
        for s in list(self._tcp.values()) + list(self._udp.values()):
            try:
                s.close()
            except OSError:
                pass
        self._tcp.clear()
        self._udp.clear()
        return ()
