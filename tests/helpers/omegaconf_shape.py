"""Classes that pickle the way omegaconf's ``DictConfig``/``ListConfig`` do (omegaconf 2.x), for
building Lightning checkpoints whose ``hyper_parameters`` look like real ones without omegaconf
installed: the containers pickle their ``__dict__`` (``_metadata``, ``_parent``, ``_content``), the
metadata is a dataclass holding type markers (``typing.Any``, ``builtins.dict``, ``builtins.int``) and a
``collections.defaultdict(dict)`` resolver cache, and every value sits in a node with its own metadata.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass
class Metadata:
    ref_type: Any
    object_type: Any
    optional: bool
    key: Any
    flags: dict[str, bool] | None = None
    flags_root: bool = False
    resolver_cache: dict[str, Any] = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))


@dataclasses.dataclass
class ContainerMetadata(Metadata):
    key_type: Any = None
    element_type: Any = None


class Node:
    def __init__(self, parent: Any, metadata: Metadata) -> None:
        self.__dict__["_metadata"] = metadata
        self.__dict__["_parent"] = parent

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class AnyNode(Node):
    def __init__(self, value: Any, key: Any, parent: Any) -> None:
        super().__init__(parent, Metadata(Any, None, True, key, {}))
        self.__dict__["_val"] = value


class IntegerNode(AnyNode):
    def __init__(self, value: int, key: Any, parent: Any) -> None:
        super().__init__(value, key, parent)
        self.__dict__["_metadata"] = Metadata(int, int, True, key, {})


class DictConfig(Node):
    def __init__(self, content: dict[str, Any], key: Any = None, parent: Any = None) -> None:
        super().__init__(parent, ContainerMetadata(Any, dict, True, key, {}, key_type=Any, element_type=Any))
        self.__dict__["_content"] = {k: _wrap(v, k, self) for k, v in content.items()}


class ListConfig(Node):
    def __init__(self, content: list[Any], key: Any = None, parent: Any = None) -> None:
        super().__init__(parent, ContainerMetadata(Any, list, True, key, {}, key_type=int, element_type=Any))
        self.__dict__["_content"] = [_wrap(v, i, self) for i, v in enumerate(content)]


def _wrap(value: Any, key: Any, parent: Any) -> Any:
    if isinstance(value, dict):
        return DictConfig(value, key, parent)
    if isinstance(value, list):
        return ListConfig(value, key, parent)
    if type(value) is int:
        return IntegerNode(value, key, parent)
    return AnyNode(value, key, parent)
