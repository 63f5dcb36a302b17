"""`fleetcloak decode`, run as the installed console script (subprocess, real bytes)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetcloak.codecs import AvlPacket, AvlRecord, encode

BIN = Path(sys.executable).with_name("fleetcloak")
VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" /
                      "teltonika_public.json").read_text())
V = {v["id"]: v for v in VECTORS}
RECORD_KEYS = ["timestamp_ms", "priority", "lat", "lon", "altitude", "angle", "satellites",
               "speed", "event_io_id", "generation_type", "io"]


def run(*args, stdin: str | None = None):
    p = subprocess.run([str(BIN), "decode", *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, [json.loads(line) for line in p.stdout.splitlines()], p.stderr


def test_avl_contract_shape():
    rc, out, err = run("--hex", V["wiki-c8-ex1"]["hex"], V["wiki-c16-ex1-2rec"]["hex"],
                       V["wiki-c8e-beacon-nx"]["hex"])
    assert rc == 0, err
    a, b, c = out
    assert list(a) == ["codec", "imei", "records"] and a["codec"] == 8 and a["imei"] is None
    r = a["records"][0]
    assert list(r) == RECORD_KEYS
    exp = V["wiki-c8-ex1"]["expected"]["records"][0]
    assert r["io"] == exp["io"] and r["timestamp_ms"] == exp["timestamp_ms"]
    assert r["generation_type"] is None
    assert [x["generation_type"] for x in b["records"]] == [5, 5] and b["codec"] == 16
    assert c["codec"] == 142 and c["records"][0]["io"]["385"] == \
        V["wiki-c8e-beacon-nx"]["expected"]["records"][0]["io"]["385"]


def test_negative_coordinates_as_degrees():
    p = AvlPacket(8, (AvlRecord(1, 0, -58.3815591, -34.6037232, -4, 0, 7, 0, 0),))
    rc, (out,), _ = run("--hex", encode(p).hex())
    r = out["records"][0]
    assert (r["lat"], r["lon"], r["altitude"]) == (-34.6037232, -58.3815591, -4)


def test_udp_login_keepalive_gprs():
    rc, out, _ = run("--transport", "udp", "--hex", V["wiki-c8-udp"]["hex"])
    assert rc == 0 and out[0]["imei"] == "352093086403655"
    rc, out, _ = run("--hex", V["imei-login-wiki"]["hex"], "ff", V["wiki-c15-hello"]["hex"],
                     V["wiki-c14-getver-cmd"]["hex"])
    assert rc == 0
    assert out[0] == {"kind": "login", "imei": "356307042441013"}
    assert out[1] == {"kind": "keepalive"}
    assert out[2] == {"kind": "gprs", "codec": 15, "messages": [
        {"type": 11, "imei": "123456789123456", "timestamp_s": 1699440036, "text": "Hello!\n",
         "payload_hex": "48656c6c6f210a"}]}
    assert out[3]["messages"][0]["imei"] == "352093081452251"


def test_bad_input_gives_error_lines_in_order_and_exit_2():
    rc, out, _ = run("--hex", V["wiki-c8-ex2"]["hex"], "zz", V["wiki-c14-nack-published"]["hex"],
                     "000000000000")
    assert rc == 2
    assert "records" in out[0]
    assert out[1]["error"].startswith("bad_hex: ") and out[1]["offset"] == 0
    assert out[2]["error"].startswith("crc_mismatch: ") and out[2]["offset"] == 24
    assert out[3]["error"].startswith("truncated: ")
    assert all(set(o) == {"error", "offset"} for o in out[1:])


def test_stdin_blank_lines_whitespace_and_lenient():
    text = f"\n  {V['wiki-c8-ex2']['hex']}  \n\n\t{V['wiki-c12-getinfo-cmd']['hex'].lower()}\n"
    rc, out, _ = run("-", stdin=text)
    assert rc == 0 and len(out) == 2
    c13 = "00000000000000170D01050000000F0000016C0A81C320676574696E666F0100006855"
    rc, (strict,), _ = run(stdin=c13)
    rc2, (lenient,), _ = run("--lenient", stdin=c13)
    assert strict["messages"][0]["timestamp_s"] == 0x16C
    assert lenient["messages"][0]["timestamp_ms"] == 1563544372000
    assert lenient["messages"][0]["text"] == "getinfo"


def test_file_input(tmp_path):
    f = tmp_path / "packets.hex"
    f.write_bytes((V["wiki-c8-ex1"]["hex"] + "\n\xff\xfe garbage\n").encode("latin-1"))
    rc, out, _ = run(str(f))
    assert rc == 2 and "records" in out[0] and out[1]["error"].startswith("bad_hex")


@pytest.mark.parametrize("args", [["--hex", "ff"], ["-"]])
def test_decode_path_imports_no_numpy_or_faust(args):
    code = ("import sys, io; sys.stdin = io.TextIOWrapper(io.BytesIO(b'ff\\n'));"
            "from fleetcloak.cli import main; rc = main(['decode', *sys.argv[1:]]);"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'faust', 'aiokafka')];"
            "assert not bad, bad; assert rc == 0")
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr


def test_unreadable_file_is_exit_1_without_json(tmp_path):
    p = subprocess.run([str(BIN), "decode", str(tmp_path / "missing.hex")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == "" and "cannot read" in p.stderr
