"""Keyed pseudonyms: `<prefix>_<epoch>_<26 base32 chars>` (128 bits of HMAC-SHA256).

    dev_2026m11_5k3q9x0a7mfd2c4wzt1h8rnb6e     an IMEI, processor route, Nov 2026 epoch

One `Pseudonymizer` serves one (tenant, route). It computes each pseudonym once per
epoch and caches it: a dict per epoch keyed by (kind, canonical bytes), bounded
(`max_entries` per epoch) and dropped with the epoch (at most `max_epochs` epochs are
held; older ones are evicted first) or when the keyring reports a destroy/erase.

Vectorised entry points (`imeis`, `u64`, `canonicals`) take one value and one
timestamp per record and return an object array, computing HMACs only for distinct
values (np.unique + inverse) and reading the cache for the rest.

There is no reverse function: a pseudonym can only be recomputed from the identifier
with the key, never turned back into it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .canonical import canonical_imei
from .epochs import epoch_id, epoch_ids
from .keys import SERVICE, Keyring, SubjectErased, b32, b32_many
from .policy import KIND_PREFIX

class Pseudonymizer:
    def __init__(
        self,
        keyring: Keyring,
        *,
        tenant: str,
        route: str = "processor",
        rotation: str = "monthly",
        max_entries: int = 1_000_000,
        max_epochs: int = 3,
    ):
        if route not in ("processor", "controller"):
            raise ValueError(f"route is 'processor' or 'controller', not {route!r}")
        self.keyring = keyring
        self.tenant = tenant
        self.route = route
        self.scope = tenant if route == "processor" else SERVICE
        self.rotation = rotation
        self.max_entries = max_entries
        self.max_epochs = max_epochs
        self._cache: dict[str, dict[tuple[str, bytes], str]] = {}
        self._gen = keyring.generation
        self._imei_canon: dict = {}  # raw IMEI value -> canonical bytes
        self._fast: dict[str, dict[str, dict[int, str]]] = {}  # epoch -> kind -> int id -> pseudonym
        self.computed = 0  # HMACs computed (cache misses), for tests and the bench
        self._last_epochs: tuple | None = None  # (timestamps array, its epoch_ids)

    def __repr__(self) -> str:
        return f"Pseudonymizer(tenant={self.tenant!r}, route={self.route!r}, rotation={self.rotation!r})"

    # --- one value ---------------------------------------------------------------
    def _epoch_cache(self, epoch: str) -> dict[tuple[str, bytes], str]:
        if self._gen != self.keyring.generation:
            self._cache.clear()
            self._fast.clear()
            self._gen = self.keyring.generation
        c = self._cache.get(epoch)
        if c is None:
            while len(self._cache) >= self.max_epochs:
                old = min(self._cache)  # epoch ids of one schedule sort by time
                del self._cache[old]
                self._fast.pop(old, None)
            c = self._cache[epoch] = {}
        elif len(c) >= self.max_entries:
            c.clear()
            self._fast.pop(epoch, None)
        return c

    def _int_lookup(self, kind: str, keys: list[int], epoch: str, to_canon, on_erased: str) -> list:
        """Pseudonyms of distinct integer-coded ids (IMEIs, 8-byte ids), through a
        per-epoch int-keyed dict in front of the canonical cache (no bytes built for
        a hit). to_canon(k) -> canonical bytes or None (absent)."""
        self._epoch_cache(epoch)
        fast = self._fast.setdefault(epoch, {}).setdefault(kind, {})
        get = fast.get
        res = [get(k) for k in keys]
        miss = [i for i, r in enumerate(res) if r is None]
        if miss:
            canon = [to_canon(keys[i]) for i in miss]
            got = self._lookup_unique(kind, canon, epoch, on_erased)
            for i, c, g in zip(miss, canon, got):
                if c is None:
                    res[i] = None
                elif g is not None:
                    res[i] = fast[keys[i]] = g
        return res

    def _compute(self, kind: str, canonical: bytes, epoch: str) -> str:
        if self.route == "controller":
            salt = self.keyring.subject_salt(self.tenant, kind, canonical).reveal()
            msg = salt + canonical
        else:
            msg = canonical
        digest = self.keyring.mac(self.scope, self.route, kind, epoch)(msg)
        self.computed += 1
        return f"{KIND_PREFIX[kind]}_{epoch}_{b32(digest)}"

    def pseudonym(self, kind: str, canonical: bytes, epoch: str) -> str:
        """The pseudonym of one canonical identifier in one epoch.

        Raises EpochDestroyed for a shredded epoch and, on the controller route,
        SubjectErased for an erased subject."""
        if kind not in KIND_PREFIX:
            raise ValueError(f"unknown identifier kind {kind!r}")
        c = self._epoch_cache(epoch)
        k = (kind, canonical)
        p = c.get(k)
        if p is None:
            p = c[k] = self._compute(kind, canonical, epoch)
        return p

    def at(self, kind: str, canonical: bytes, timestamp_ms: int) -> str:
        return self.pseudonym(kind, canonical, epoch_id(timestamp_ms, self.rotation))

    def imei(self, imei: str | int, timestamp_ms: int) -> str:
        return self.at("device", canonical_imei(imei), timestamp_ms)

    # --- vectorised ----------------------------------------------------------------
    def _epoch_ids(self, ts: np.ndarray) -> tuple[list[str], np.ndarray]:
        """epoch_ids(ts), the last array's kept: an identifier pass hands every group of a
        family the same timestamps array (which it never changes in place)."""
        last = self._last_epochs
        if last is not None and last[0] is ts:
            return last[1]
        got = epoch_ids(ts, self.rotation)
        self._last_epochs = (ts, got)
        return got

    def _by_epoch(self, timestamps_ms: np.ndarray, n: int):
        labels, inv = self._epoch_ids(timestamps_ms)
        if len(labels) == 1:
            yield labels[0], None
        else:
            for i, lab in enumerate(labels):
                yield lab, np.flatnonzero(inv == i)
        if n and not labels:
            raise ValueError("timestamps and values differ in length")

    def _lookup_unique(self, kind: str, uniq_canon: list[bytes | None], epoch: str, on_erased: str) -> list:
        """Pseudonyms for distinct canonical ids: cache hits, then the misses in one go
        (HMAC per miss, base32 vectorised)."""
        c = self._epoch_cache(epoch)
        get = c.get
        out = [None if canon is None else get((kind, canon)) for canon in uniq_canon]
        miss = [i for i, (canon, p) in enumerate(zip(uniq_canon, out)) if p is None and canon is not None]
        if not miss:
            return out
        if kind not in KIND_PREFIX:
            raise ValueError(f"unknown identifier kind {kind!r}")
        mac = self.keyring.mac(self.scope, self.route, kind, epoch)
        if self.route == "controller":
            msgs, done = [], []
            salts = self.keyring.subject_salts(self.tenant, kind, [uniq_canon[i] for i in miss])
            for i, salt in zip(miss, salts):
                if salt is None:
                    if on_erased == "raise":
                        raise SubjectErased(self.keyring.subject_key(self.tenant, kind, uniq_canon[i]))
                    continue
                msgs.append(salt.reveal() + uniq_canon[i])
                done.append(i)
        else:
            msgs, done = [uniq_canon[i] for i in miss], miss
        macs = mac.many(msgs)
        prefix = f"{KIND_PREFIX[kind]}_{epoch}_"
        self.computed += len(done)
        for i, tail in zip(done, b32_many(macs)):
            p = out[i] = prefix + tail
            c[(kind, uniq_canon[i])] = p
        return out

    def u64(self, kind: str, values: np.ndarray, timestamps_ms: np.ndarray, *, on_erased: str = "raise",
            codes: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Pseudonyms of 8-byte identifiers (iButton, RFID): uint64 in, object array out.

        A zero value (no key present) stays 0: it is not a person. codes:
        `np.unique(values, return_inverse=True)` when the caller has it."""
        vals = np.asarray(values).astype(np.uint64, copy=False)
        ts = np.asarray(timestamps_ms)
        out = np.empty(vals.shape[0], dtype=object)
        for epoch, idx in self._by_epoch(ts, vals.shape[0]):
            sub = vals if idx is None else vals[idx]
            uniq, inv = codes if idx is None and codes is not None else np.unique(sub, return_inverse=True)
            keys = uniq.tolist()
            res = self._int_lookup(kind, keys, epoch, _raw8_bytes, on_erased)
            res_arr = np.empty(len(res), dtype=object)
            res_arr[:] = [0 if k == 0 else r for k, r in zip(keys, res)]
            if idx is None:
                out[:] = res_arr[inv]
            else:
                out[idx] = res_arr[inv]
        return out

    def imeis(self, imeis: np.ndarray | Sequence, timestamps_ms: np.ndarray, *, on_erased: str = "raise") -> np.ndarray:
        """Device pseudonyms for a column of IMEIs (15-digit str, or integers)."""
        return self.imeis_coded(imeis, timestamps_ms, on_erased=on_erased)[0]

    def imeis_coded(self, imeis: np.ndarray | Sequence, timestamps_ms: np.ndarray, *,
                    on_erased: str = "raise", distinct: tuple[np.ndarray, np.ndarray] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`imeis`, and the distinct pseudonyms with an index into them per record
        (what `unique_objects` of the result gives, up to order, without another pass
        over the records; an erased device's None may appear more than once).

        distinct: `unique_objects(imeis)` when the caller has it (used for an object
        column of one epoch)."""
        arr = _imeis_as_ints(np.asarray(imeis))
        given = distinct if arr.dtype == object else None
        ts = np.asarray(timestamps_ms)
        out = np.empty(arr.shape[0], dtype=object)
        codes = np.empty(arr.shape[0], dtype=np.intp)
        distinct: list[np.ndarray] = []
        base = 0
        for epoch, idx in self._by_epoch(ts, arr.shape[0]):
            sub = arr if idx is None else arr[idx]
            if sub.dtype.kind in "iu":
                uniq, inv = np.unique(sub, return_inverse=True)
                inv = inv.reshape(-1)
                if uniq.size and (uniq.min() < 0 or uniq.max() >= 10**15):
                    raise ValueError("an IMEI is 15 ASCII digits")
                res_arr = np.empty(uniq.size, dtype=object)
                res_arr[:] = self._int_lookup("device", uniq.tolist(), epoch, _imei_bytes, on_erased)
            else:
                uniq, inv = unique_objects(sub) if idx is not None or given is None else given
                known = self._imei_canon
                if len(known) > self.max_entries:
                    known.clear()
                canon = []
                for u in uniq.tolist():
                    c = known.get(u)
                    if c is None:
                        c = known[u] = canonical_imei(u)
                    canon.append(c)
                res_arr = np.empty(len(canon), dtype=object)
                res_arr[:] = self._lookup_unique("device", canon, epoch, on_erased)
            if idx is None:
                out[:] = res_arr[inv]
                codes[:] = inv
            else:
                out[idx] = res_arr[inv]
                codes[idx] = inv + base
            distinct.append(res_arr)
            base += res_arr.shape[0]
        uniq_all = distinct[0] if len(distinct) == 1 else np.concatenate(distinct) if distinct else np.empty(0, dtype=object)
        return out, uniq_all, codes

    def canonicals_indexed(self, kind: str, values: Sequence[bytes | None], index: np.ndarray,
                           timestamps_ms: np.ndarray, *, on_erased: str = "raise") -> np.ndarray:
        """`canonicals(kind, [values[i] for i in index], timestamps_ms)` without building
        the per-record list: when the records share one epoch (the usual batch), one
        lookup per distinct canonical; otherwise the per-record path."""
        ts = np.asarray(timestamps_ms)
        labels, _ = self._epoch_ids(ts)
        index = np.asarray(index, dtype=np.intp)
        if len(labels) != 1 or index.shape[0] != ts.shape[0]:
            arr = np.empty(len(values), dtype=object)
            arr[:] = list(values)
            return self.canonicals(kind, arr[index].tolist(), ts, on_erased=on_erased)
        uniq, inv = _canon_index(list(values))  # equal canonicals of different raw values: once
        res = np.empty(len(uniq), dtype=object)
        res[:] = self._lookup_unique(kind, uniq, labels[0], on_erased)
        return res[inv][index]

    def canonicals(self, kind: str, canonicals: Sequence[bytes | None], timestamps_ms: np.ndarray, *, on_erased: str = "raise") -> np.ndarray:
        """Pseudonyms of already-canonical identifiers; None (absent) stays None."""
        arr = np.empty(len(canonicals), dtype=object)
        arr[:] = list(canonicals)
        ts = np.asarray(timestamps_ms)
        out = np.empty(arr.shape[0], dtype=object)
        for epoch, idx in self._by_epoch(ts, arr.shape[0]):
            sub = arr if idx is None else arr[idx]
            uniq, inv = unique_objects(sub)
            res_arr = np.empty(len(uniq), dtype=object)
            res_arr[:] = self._lookup_unique(kind, list(uniq), epoch, on_erased)
            if idx is None:
                out[:] = res_arr[inv]
            else:
                out[idx] = res_arr[inv]
        return out


def _canon_index(canon: list) -> tuple[list, np.ndarray]:
    index = {c: i for i, c in enumerate(dict.fromkeys(canon))}
    return list(index), np.fromiter(map(index.__getitem__, canon), dtype=np.intp, count=len(canon))


def unique_objects(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique for hashable objects (None allowed), by a dict: O(n), no sorting."""
    vals = arr.tolist()
    index = {v: i for i, v in enumerate(dict.fromkeys(vals))}  # first-seen order
    inv = np.fromiter(map(index.__getitem__, vals), dtype=np.intp, count=len(vals))
    uniq = np.empty(len(index), dtype=object)
    uniq[:] = list(index)
    return uniq, inv


_POW10 = 10 ** np.arange(14, -1, -1, dtype=np.int64)


def _imeis_as_ints(arr: np.ndarray) -> np.ndarray:
    """A column of 15-digit IMEI strings (numpy U15 or S15) as int64, vectorised, so a
    batch dedupes with one integer np.unique; anything else comes back unchanged."""
    if arr.ndim != 1 or arr.size == 0:
        return arr
    if arr.dtype.kind == "U" and arr.dtype.itemsize == 60:
        digits = arr.view(np.uint32).reshape(-1, 15).astype(np.int64) - 48
    elif arr.dtype.kind == "S" and arr.dtype.itemsize == 15:
        digits = arr.view(np.uint8).reshape(-1, 15).astype(np.int64) - 48
    else:
        return arr
    if digits.min() < 0 or digits.max() > 9:
        return arr  # not all digits: the per-value path raises the clear error
    return digits @ _POW10


def _raw8_bytes(v: int) -> bytes | None:
    return v.to_bytes(8, "big") if v else None


def _imei_bytes(v: int) -> bytes:
    return b"%015d" % v
