"""`Secret`: key material that never shows itself.

repr/str/format print a fixed placeholder, pickling is refused, and equality is
constant-time. Pass `Secret` around; call `.reveal()` only at the point of use (HKDF,
HMAC, AES-GCM), never to log or format it.
"""
from __future__ import annotations

import hmac

__all__ = ["Secret"]


class Secret:
    __slots__ = ("_value", "_label")

    def __init__(self, value: bytes, label: str = "secret"):
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError("Secret holds bytes")
        self._value = bytes(value)
        # The label names what the secret is for (e.g. "root acme/2026m11"): it is
        # metadata, never derived from the value.
        self._label = label

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret({self._label}, {len(self._value)} bytes, ******)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:  # usable as a dict key without exposing anything useful
        return hash((Secret, len(self._value)))

    def __reduce__(self):
        raise TypeError("a Secret cannot be pickled")

    def __bytes__(self) -> bytes:
        raise TypeError("use Secret.reveal() at the point of use")
