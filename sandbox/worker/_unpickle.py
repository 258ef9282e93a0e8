"""An inert unpickler: reads every opcode of pickle protocols 0-5 and never calls a global.

The opcode loop is written out instead of subclassing ``pickle.Unpickler`` so that REDUCE, BUILD, NEWOBJ,
INST and OBJ are fully under control: an allowlisted global (torch's tensor rebuild functions, OrderedDict,
numpy's array reconstruction, ...) turns into a plain data description; every other global turns into a
:class:`Stub` that records what the pickle asked for. Nothing is imported, nothing is called.

Where each part is (read them in this order):

- ``_values.py``: the values it builds (:class:`Global`, :class:`Stub`, :class:`Tensor`, ...);
- ``_allowlist.py``: ``ALLOWLIST``, one table from a global's ``(module, name)`` to the builder of its data;
  its keys are the allowlist. Also what GLOBAL, NEWOBJ and BUILD do with the allowlisted values;
- ``_numpy.py``: the numpy builders and the BUILD state of numpy dtypes and arrays;
- ``_machine.py``: the opcode machine, one implementation per opcode, and the budgets;
- this module: :func:`unpickle`, the entry point the format readers (:mod:`._formats`) call.
"""

from __future__ import annotations

from ._common import Budgets, LimitError
from ._machine import Machine
from ._values import Stub, Unpickled

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from typing import Any

__all__ = ["unpickle"]


def unpickle(
    data: bytes | mmap.mmap,
    *,
    persistent_load: Callable[[Any], Any] | None = None,
    budgets: Budgets | None = None,
    encoding: str = "utf-8",
    start: int = 0,
    build_hook: Callable[[Any, Stub], Any] | None = None,
    nested: Callable[[bytes, int | None], Any] | None = None,
) -> tuple[Unpickled, int]:
    """Read one pickle from ``data[start:]`` without calling anything.

    Returns the result and the offset just past the STOP opcode (legacy torch files and joblib put more
    data after a pickle). ``build_hook(machine, stub)`` runs after each BUILD on a stub; a non-None
    result replaces the stub (joblib's array wrappers are followed by the array's bytes, which the hook
    reads by advancing ``machine.pos``). ``nested(raw, offset)`` reads the torch.save file ``raw`` a
    ``torch.storage._load_from_bytes`` call carries (``offset``: where ``raw`` sits in ``data``, or None
    when it does not appear there verbatim); without it such calls stay stubs.

    Raises:
        FormatError: the bytes are not a well-formed pickle.
        LimitError: a budget ran out.
    """
    m = Machine(data, persistent_load, budgets or Budgets(), encoding)
    m.pos = start
    m.build_hook = build_hook
    m.nested = nested
    try:
        root = m.run()
    except RecursionError:
        raise LimitError("pickle nests too deeply") from None
    return Unpickled(root, m.globals_seen), m.pos
