import socket

from fleetcloak.streams.broker import EmbeddedBroker


def test_embedded_broker_starts_answers_and_stops():
    b = EmbeddedBroker().start()
    try:
        with socket.create_connection((b.host, b.port), timeout=2):
            pass
    finally:
        b.stop()
    try:
        socket.create_connection((b.host, b.port), timeout=1).close()
        still_listening = True
    except OSError:
        still_listening = False
    assert not still_listening


def test_tansu_is_recognised_by_its_cluster_id():
    from fleetcloak.streams.broker import is_tansu

    assert is_tansu("tansu_cluster")
    assert not is_tansu("xTN8tH1gWM-GUGBFrup4jA") and not is_tansu(None)
