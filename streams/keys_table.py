"""anonymize's KeyStore over the compacted `fleetcloak.keys` topic, for the worker.

Reads come from the table the control plane keeps (streams/control.py). Writes (a root
secret minted on first use, a new subject's controller salt) cannot be Kafka I/O from
inside the pure pipeline, so they are buffered here and `drain()`ed by the pipeline
into the outputs of the batch that needed them: they reach `fleetcloak.keys` before
that batch's offsets are committed, exactly like its records (streams/loop.py).

Several workers can mint the same entry at once (two workers meeting one driver for
the first time). Compaction keeps the last write, so every worker adopts the value the
topic holds once it sees it (`sync`), and the Keyring drops its caches: the few
records emitted under the losing value carry a pseudonym nobody can link to later
ones, which fails safe (unlinkable), never open. Roots are minted ahead of time by
`fleetcloak policy apply` (Keyring.prepare) so this race is confined to subject salts.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping


class TableKeyStore:
    """KeyStore (anonymize/keystore.py) over a key -> wrapped-value table.

    Entry names are the message keys (UTF-8); values are the wrapped bytes. Deletes
    (crypto-shredding) are tombstones.
    """

    def __init__(self, entries: Mapping[bytes, bytes] | None = None) -> None:
        self._d: dict[str, bytes] = {}
        self._unseen: dict[str, bytes | None] = {}  # our writes not yet back from the topic
        self._pending: list[tuple[str, bytes | None]] = []
        if entries:
            self.sync(entries)

    def __repr__(self) -> str:
        return f"TableKeyStore({len(self._d)} entries, {len(self._pending)} pending)"

    # --- KeyStore -----------------------------------------------------------------
    def get(self, name: str) -> bytes | None:
        return self._d.get(name)

    def put(self, name: str, value: bytes) -> None:
        self._write(name, bytes(value))

    def delete(self, name: str) -> None:
        if name in self._d:
            self._write(name, None)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._d if n.startswith(prefix))

    def put_if_absent(self, name: str, value: bytes) -> bytes:
        have = self._d.get(name)
        if have is not None:
            return have
        self._write(name, bytes(value))
        return value

    def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        d = self._d
        return {n: d[n] for n in names if n in d}

    def put_many_if_absent(self, entries: Mapping[str, bytes]) -> dict[str, bytes]:
        return {n: self.put_if_absent(n, v) for n, v in entries.items()}

    # --- the worker's side ------------------------------------------------------------
    def _write(self, name: str, value: bytes | None) -> None:
        if value is None:
            self._d.pop(name, None)
        else:
            self._d[name] = value
        self._unseen[name] = value
        self._pending.append((name, value))

    def drain(self) -> list[tuple[bytes, bytes | None]]:
        """The writes made since the last drain, as (message key, value or None)."""
        out = [(n.encode(), v) for n, v in self._pending]
        self._pending.clear()
        return out

    def sync(self, entries: Mapping[bytes, bytes]) -> bool:
        """Adopt the topic's table. True when a value we were using changed or vanished
        (another writer won, an epoch was shredded, a subject erased): the Keyring must
        drop its caches then."""
        topic = {k.decode(): v for k, v in entries.items()}
        changed = False
        for name, mine in list(self._unseen.items()):
            theirs = topic.get(name)
            if theirs == mine:
                del self._unseen[name]  # our write came back: the topic agrees
            elif theirs is not None:
                del self._unseen[name]  # someone else's write for the same name won
                changed = True
            elif mine is not None:
                topic[name] = mine      # ours is still on its way: keep using it
        for name, value in self._d.items():
            if topic.get(name) != value:
                changed = True
                break
        self._d = topic
        return changed
