"""The optional native Avro engine: a record schema compiled to a small node program that C code runs.

``schemas._avrocodec`` (C, built by ``pip install`` when a compiler is present) holds one generic engine: a
``Program`` built from a flat tuple of nodes, with ``encode(record, prefix=b"") -> bytes`` and
``decode(buf, pos) -> (record, end)``. This module turns a schema into that tuple. It covers exactly what
``schemas.compiled`` covers (records, arrays, ``["null", X]`` unions, the primitives, field defaults on encode),
plus *sparse* records, named by the caller: every field ``["null", <primitive>]`` with default null, an absent or
None key encodes as null and a null field is left out of the decoded dict (SecurityEvent rows).

``decode_json(buf, pos, project, float_json) -> (record, end, projections)`` decodes like ``decode`` except that
each sparse record comes out as its JSON (bytes): exactly ``orjson.dumps`` of the dict ``decode`` would return
with its empty values (None and "") left out, as the sink sends rows (``sinks.row_json``). ``project`` names up to
8 fields whose values are also returned, per sparse record, as a small dict (``projections``); ``float_json`` is
``orjson.dumps``, which writes float values (its format is not ``repr``'s). It accepts and refuses exactly the input
``decode`` does (strings are checked as UTF-8 by the same decoder).

Records of the types named in ``tuples`` decode as the tuple of their field values in schema order instead of a dict
(the stream stage's EventData items: a 2-tuple costs a fraction of a dict to make, read and free). Encoding takes
dicts only.

When the extension is missing (no compiler at install time) or ``SECSTREAM_NATIVE_CODEC=0`` is set, the codec
(``schemas.codec``) uses the pure-Python codecs, which write the same bytes.

A node is ``(kind, flags, key, default, label, first, count)``: ``key`` is the field name when the node is a
record field, ``label`` names the value in error messages, ``first``/``count`` locate a record's fields (which are
contiguous) or an array's item node. Children always come after their parent; node 0 is the root record. The C
side checks the structure when it loads a program (indices, kinds, sparse records of nullable primitives only, no
array of items that can take zero bytes), so a malformed program is a ValueError, never a crash.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Collection
from typing import Any, Protocol

from schemas.compiled import Unsupported, check_supported


def optional_extension(name: str) -> tuple[Any, str | None]:
    """A C extension that is built optionally (none without a compiler at install time): the module, or None and
    why it could not be imported. The callers keep a pure-Python path for the second case."""
    try:
        return importlib.import_module(name), None
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


_avrocodec, IMPORT_ERROR = optional_extension("schemas._avrocodec")

DISABLE_ENV = "SECSTREAM_NATIVE_CODEC"  # "0": use the pure-Python codecs even when the extension is built

KINDS = {"null": 0, "boolean": 1, "int": 2, "long": 3, "float": 4, "double": 5, "string": 6, "bytes": 7,
         "record": 8, "array": 9}
NULLABLE, DEFAULT, SPARSE, COLUMN, TUPLE = 1, 2, 4, 8, 16
_SPARSE_KINDS = ("boolean", "int", "long", "float", "double", "string", "bytes")

Node = tuple[int, int, str | None, Any, str, int, int]


class NativeProgram(Protocol):
    """``schemas._avrocodec.Program``."""

    @property
    def encode(self) -> Callable[..., bytes]: ...

    @property
    def decode(self) -> Callable[[Any, int], tuple[dict[str, Any], int]]: ...  # any bytes-like buffer

    @property
    def decode_json(self) -> Callable[[Any, int, tuple[str, ...], Callable[[float], bytes]],
                                      tuple[dict[str, Any], int, list[dict[str, Any]]]]: ...


def available() -> bool:
    """True when the extension is importable (whatever ``SECSTREAM_NATIVE_CODEC`` says)."""
    return _avrocodec is not None


def switched_on(env: str) -> bool:
    """False when the environment variable ``env`` turns a native path off (``0``, ``false`` or ``no``)."""
    return os.environ.get(env, "1").strip().lower() not in ("0", "false", "no")


def enabled() -> bool:
    """True when codecs built now use the extension: it is importable and ``SECSTREAM_NATIVE_CODEC`` is not 0."""
    return _avrocodec is not None and switched_on(DISABLE_ENV)


class _Builder:
    def __init__(self, sparse: Collection[str], tuples: Collection[str] = ()) -> None:
        self.nodes: list[Node | None] = []
        self.sparse = sparse
        self.tuples = tuples

    def reserve(self, count: int) -> int:
        first = len(self.nodes)
        self.nodes.extend([None] * count)
        return first

    def fill(self, at: int, kind: Any, key: str | None, default: tuple[bool, Any], label: str, column: bool,
             child_label: str) -> None:
        flags = DEFAULT if default[0] else 0
        if column:
            flags |= COLUMN
        if isinstance(kind, list):  # ["null", X], checked by check_supported
            flags |= NULLABLE
            kind = kind[1]
        name = kind if isinstance(kind, str) else kind["type"]
        first = count = 0
        if name == "record":
            fields = kind["fields"]
            count = len(fields)
            first = self.reserve(count)
            sparse = kind["name"] in self.sparse
            if sparse:
                flags |= SPARSE
            elif kind["name"] in self.tuples:
                flags |= TUPLE
            for i, field in enumerate(fields):
                if sparse and not _sparse_field(field):
                    raise Unsupported(f"sparse record {kind['name']}: field {field['name']} is not a nullable "
                                      "primitive with default null")
                if "default" in field and _type_name(field["type"]) == "bytes":
                    raise Unsupported("bytes default")  # a JSON string of code points, not bytes
                field_label = f"column {field['name']}" if sparse else f"{child_label}.{field['name']}".lstrip(".")
                self.fill(first + i, field["type"], field["name"], ("default" in field, field.get("default")),
                          field_label, sparse, field_label)
        elif name == "array":
            first = self.reserve(1)
            self.fill(first, kind["items"], None, (False, None), f"{label}[]", False, f"{child_label}[]")
        self.nodes[at] = (KINDS[name], flags, key, default[1], label, first, count)


def _type_name(kind: Any) -> str:
    if isinstance(kind, list):
        kind = kind[-1]
    return kind if isinstance(kind, str) else str(kind.get("type"))


def _sparse_field(field: dict[str, Any]) -> bool:
    kind = field["type"]
    return (isinstance(kind, list) and len(kind) == 2 and kind[0] == "null" and kind[1] in _SPARSE_KINDS
            and "default" in field and field["default"] is None)


def compile_nodes(schema: dict[str, Any], sparse: Collection[str] = (),
                  tuples: Collection[str] = ()) -> tuple[Node, ...] | None:
    """The node program of a self-contained record schema, or None when it uses what the engine leaves out.

    ``sparse``: names of record types (``"SecurityEvent"``) to encode/decode as sparse records; ``tuples``: names of
    record types (``"EventDataItem"``) to decode as tuples.
    """
    try:
        check_supported(schema)
        if schema.get("type") != "record":
            raise Unsupported("the root must be a record")
        builder = _Builder(sparse, tuples)
        builder.reserve(1)
        builder.fill(0, schema, None, (False, None), str(schema.get("name")), False, "")
    except Unsupported:
        return None
    nodes = tuple(node for node in builder.nodes if node is not None)
    assert len(nodes) == len(builder.nodes), "every reserved node is filled"
    return nodes


def build(schema: dict[str, Any], sparse: Collection[str] = (), tuples: Collection[str] = ()) -> NativeProgram | None:
    """The native codec of ``schema``, or None when the extension is not built or the schema is not covered
    (arrays whose items can take zero bytes are refused too: their counts could not be bounded)."""
    if _avrocodec is None:
        return None
    nodes = compile_nodes(schema, sparse, tuples)
    if nodes is None:
        return None
    try:
        built: NativeProgram = _avrocodec.Program(nodes)
    except ValueError:
        return None
    return built
