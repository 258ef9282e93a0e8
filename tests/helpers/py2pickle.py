"""Pickles as Python 2 wrote them, made on Python 3: every ``bytes`` value and every ASCII ``str`` is a
Python 2 ``str`` (STRING, BINSTRING or SHORT_BINSTRING opcodes), the way sklearn-era numpy pickles hold
array bytes that are not UTF-8, and numpy's globals carry their Python 2 module names.

Only pickling happens here (no unpickling): the test process may use it freely.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, ClassVar


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc, name-defined]
    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes, original: Any) -> None:
        n = len(obj)
        if self.proto == 0:
            self.write(b"S" + repr(obj)[1:].encode("ascii") + b"\n")
        elif n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(original)

    def save_bytes(self, obj: bytes) -> None:
        self.save_py2_str(obj, obj)

    def save_str(self, obj: str) -> None:
        if obj.isascii():
            # Python 2's native str.
            self.save_py2_str(obj.encode("ascii"), obj)
        else:
            pickle._Pickler.save_str(self, obj)  # type: ignore[attr-defined]

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_dumps(obj: Any, protocol: int = 2) -> bytes:
    """``obj`` pickled as Python 2's ``cPickle.dump(obj, f, protocol)`` would have written it."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=protocol).dump(obj)
    raw = buf.getvalue()
    # numpy 1.x module names, which numpy 2 still reads; GLOBAL operands end at a newline.
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n").replace(
        b"cnumpy._core.numeric\n", b"cnumpy.core.numeric\n"
    )
