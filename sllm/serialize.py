"""The SLLM binary model format (docs/binary-format.md): writer and validating reader.

Layout: a 24-byte header, then sections. Each section is a 16-byte section header (kind,
CRC32 of the payload, payload length) followed by its payload; every payload starts at a
multiple of 64 bytes from the start of the file (zero padding before the section header),
so the tensor data can be memory-mapped and viewed without copies. The reader checks every
size against the file before it allocates or reads anything, and raises FormatError
naming the section, offset, and what it expected versus found.

JavaScript twin: sllm/web/format.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import json
import mmap as mmap_module
import os
import stat
import struct
import time
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from . import budget
from ._version import __version__
from .config import ModelConfig
from .errors import ConfigError, FormatError
from .fileio import atomic_write
from .finite import check_f16_range, check_weights
from .layout import EMBEDDINGS, Layout
from .quant import BLOCKS, QK, quantized_weight_names

MAGIC = b"SLLM"
VERSION = 1
ALIGN = 64
HEADER = struct.Struct("<4sIIIII")  # magic, version, vocab_size, embedding_dim, sections, crc
SECTION = struct.Struct("<IIQ")     # kind, crc32 of payload, payload length
ENTRY_FIXED = struct.Struct("<BBH")  # dtype code, ndim, reserved (0)
ENTRY_SPAN = struct.Struct("<QQ")   # offset within the data payload, byte length
MAX_NDIM = 4


class Section(IntEnum):
    """Section kinds. Unknown kinds are skipped (after their checksum is verified)."""

    CONFIG = 1
    TOKENIZER = 2
    METADATA = 3
    TENSORS = 4
    DATA = 5


DTYPES: dict[int, tuple[str, np.dtype[Any]]] = {0: ("f32", np.dtype("<f4")), 1: ("f16", np.dtype("<f2"))}
DTYPE_CODES = {name: code for code, (name, _) in DTYPES.items()}
QDTYPES = {2: "q8_0", 3: "q4_0", 4: "q4_1"}  # ggml block formats (sllm.quant), 2-D only
QDTYPE_CODES = {name: code for code, name in QDTYPES.items()}


@dataclass
class ModelFile:
    """What a model file holds, validated: config, tokenizer and metadata dicts, and the
    tensors (read-only views into the file when memory-mapped)."""

    config: ModelConfig
    tokenizer: dict[str, Any] | None
    metadata: dict[str, Any]
    tensors: dict[str, np.ndarray]
    version: int
    dtype: str
    file_size: int
    sections: list[dict[str, Any]] = field(default_factory=list)
    quantized: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    """name -> (qtype, (rows, K)) for quantized tensors; tensors[name] is then uint8
    (rows, bytes_per_row)."""

    @property
    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors that are not model parameters (e.g. optimizer state in checkpoints)."""
        names = set(Layout(self.config).slots)
        return {k: v for k, v in self.tensors.items() if k not in names}


# ---- writer -------------------------------------------------------------------------------
def save_model(model: Any, path: str | os.PathLike[str], dtype: str = "f32",
               tokenizer: dict[str, Any] | None = None,
               metadata: dict[str, Any] | None = None,
               extra_tensors: dict[str, np.ndarray] | None = None) -> None:
    """Write `model` atomically; parameters in `dtype` ("f32" or "f16"), extras in f32.

    The quantized weights of a quantized model are written in their block format.
    tokenizer and metadata default to model.tokenizer and model.metadata.
    """
    if dtype not in DTYPE_CODES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_CODES)}, got {dtype!r}")
    np_dtype = DTYPES[DTYPE_CODES[dtype]][1]
    if dtype == "f16":
        check_f16_range(model.parameters())
    tensors = [(n, np.ascontiguousarray(p, np_dtype), DTYPE_CODES[dtype], p.shape)
               for n, p in model.parameters().items()]
    qweights: dict[str, Any] = getattr(model, "quantized_weights", dict)()
    tensors += [(n, np.ascontiguousarray(q.data), QDTYPE_CODES[q.qtype], q.shape)
                for n, q in qweights.items()]
    tensors += [(n, np.ascontiguousarray(a, "<f4"), 0, a.shape)
                for n, a in (extra_tensors or {}).items()]
    if qweights:
        dtype = "/".join(sorted({dtype} | {q.qtype for q in qweights.values()}))
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    meta = {**getattr(model, "metadata", {}),  # what a loaded model carried, refreshed below
            "sllm_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime()),
            "num_parameters": model.num_parameters(), "dtype": dtype, **(metadata or {})}
    sections = [(Section.CONFIG, _json_bytes(model.config.to_dict()))]
    if tokenizer is not None:
        sections.append((Section.TOKENIZER, _json_bytes(tokenizer)))
    sections.append((Section.METADATA, _json_bytes(meta)))
    write_container(path, model.config, sections, tensors)


def write_container(path: str | os.PathLike[str], config: ModelConfig,
                    sections: list[tuple[Section, bytes]],
                    tensors: list[tuple[str, np.ndarray, int, tuple[int, ...]]]) -> None:
    """Write the header, the JSON `sections`, the tensor table and the data, atomically.

    tensors are (name, contiguous array, dtype code, shape); model files and LoRA adapter
    files (sllm.lora) are both this container."""
    table, spans = _tensor_table(tensors)
    sections = [*sections, (Section.TENSORS, table)]
    with atomic_write(path) as f:
        head = HEADER.pack(MAGIC, VERSION, config.vocab_size, config.embedding_dim,
                           len(sections) + 1, 0)[:20]
        f.write(head + struct.pack("<I", zlib.crc32(head)))  # the header's own checksum
        for kind, payload in sections:
            _write_section(f, kind, zlib.crc32(payload), len(payload))
            f.write(payload)
        _write_data(f, tensors, spans)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _tensor_table(tensors: list[tuple[str, np.ndarray, int, tuple[int, ...]]]
                  ) -> tuple[bytes, list[tuple[int, int]]]:
    parts, spans, offset = [struct.pack("<I", len(tensors))], [], 0
    for name, arr, code, shape in tensors:
        raw = name.encode("utf-8")
        parts += [struct.pack("<H", len(raw)), raw, ENTRY_FIXED.pack(code, len(shape), 0),
                  struct.pack(f"<{len(shape)}I", *shape), ENTRY_SPAN.pack(offset, arr.nbytes)]
        spans.append((offset, arr.nbytes))
        offset = _align(offset + arr.nbytes)
    return b"".join(parts), spans


def _write_section(f: Any, kind: int, crc: int, length: int) -> None:
    pad = _align(f.tell() + SECTION.size) - SECTION.size - f.tell()
    f.write(b"\0" * pad)
    f.write(SECTION.pack(kind, crc, length))


def _write_data(f: Any, tensors: list[tuple[Any, ...]], spans: list[tuple[int, int]]) -> None:
    length = spans[-1][0] + spans[-1][1] if spans else 0
    crc, pos = 0, 0
    for (_, arr, *_), (offset, _) in zip(tensors, spans, strict=True):  # first pass: the checksum
        crc = zlib.crc32(memoryview(arr).cast("B"), zlib.crc32(b"\0" * (offset - pos), crc))
        pos = offset + arr.nbytes
    _write_section(f, Section.DATA, crc, length)
    pos = 0
    for (_, arr, *_), (offset, _) in zip(tensors, spans, strict=True):
        f.write(b"\0" * (offset - pos))
        f.write(memoryview(arr).cast("B"))
        pos = offset + arr.nbytes


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ---- reader -------------------------------------------------------------------------------
def read_model_file(path: str | os.PathLike[str], mmap: bool = True,
                    verify: bool = True) -> ModelFile:
    """Read and validate a model file. Any malformation raises FormatError."""
    return _parse(memoryview(_open(path, mmap)), path, verify)


def _open(path: str | os.PathLike[str], mmap: bool) -> Any:
    """The file's bytes: a memory map, a read within the memory budget, or a stream's."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                buf: Any = _read_stream(f, path)
            elif mmap and info.st_size > 0:
                buf = mmap_module.mmap(f.fileno(), 0, access=mmap_module.ACCESS_READ)
            else:
                budget.check_read(path, info.st_size, what="model file")
                buf = f.read()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a model file") from None
    return buf


def _read_stream(f: Any, path: Any) -> bytes:
    """A pipe or device (no size to check first): read the header, and only when it is a
    model file's, the rest, within the memory budget (`sllm info /dev/zero` fails fast)."""
    head = f.read(HEADER.size)
    if len(head) == HEADER.size and head[:4] != MAGIC:
        raise FormatError(f"{path}: not an SLLM model file: magic {head[:4]!r} at offset 0, "
                          f"expected {MAGIC!r}")
    limit, _ = budget.available()
    rest = f.read(limit + 1) if len(head) == HEADER.size else b""
    if len(rest) > limit:
        raise FormatError(f"{path}: a stream longer than the memory budget ({limit:,} bytes) "
                          f"is not a model file this machine can load")
    return head + rest


def _parse(buf: memoryview, path: Any, verify: bool) -> ModelFile:
    version, config, payloads, sections = parse_container(buf, path, verify)
    tokenizer = _read_json(payloads, Section.TOKENIZER, path) if Section.TOKENIZER in payloads \
        else None
    metadata = _read_json(payloads, Section.METADATA, path) \
        if Section.METADATA in payloads else {}
    if tokenizer is not None:
        _check_tokenizer(tokenizer, path)
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: metadata section: expected a JSON object")
    _check_config_fits(config, len(payloads[Section.DATA]), path)
    tensors, dtype, quantized = _read_tensors(payloads, path, config)
    if verify:  # as the checksums: every byte is read; NaN weights never reach a model
        check_weights(tensors, path, quantized)
    return ModelFile(config, tokenizer, metadata, tensors, version, dtype, len(buf), sections,
                     quantized)


def parse_container(buf: memoryview, path: Any, verify: bool = True
                    ) -> tuple[int, ModelConfig, dict[int, memoryview], list[dict[str, Any]]]:
    """The version, config, section payloads by kind and section list of an SLLM container,
    its header, checksums and config validated (FormatError otherwise)."""
    size = len(buf)
    if size < HEADER.size:
        raise FormatError(f"{path}: truncated header: file has {size} bytes, "
                          f"the header needs {HEADER.size}")
    magic, version, vocab, emb, count, header_crc = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"{path}: not an SLLM model file: magic {bytes(magic)!r} at offset 0, "
                          f"expected {MAGIC!r}")
    if version == 0 or version > VERSION:
        raise FormatError(f"{path}: file format version {version} is not supported: this sllm "
                          f"reads versions 1 to {VERSION}; upgrade sllm to read it")
    if zlib.crc32(buf[:20]) != header_crc:
        raise FormatError(f"{path}: header checksum mismatch at offset 20")
    payloads, sections = _read_sections(buf, path, count, verify)
    return version, _read_config(payloads, path, vocab, emb), payloads, sections


def _check_tokenizer(doc: Any, path: Any) -> None:
    """Refuse a tokenizer section sllm cannot build (a wrong type inside it would pass
    `info` and then fail every command that encodes text)."""
    from . import tokenizer as tokenizers
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: tokenizer section: expected a JSON object")
    try:
        tokenizers.from_dict(doc)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise FormatError(f"{path}: tokenizer section: {e}") from None


def _read_sections(buf: memoryview, path: Any, count: int, verify: bool
                   ) -> tuple[dict[int, memoryview], list[dict[str, Any]]]:
    size, pos = len(buf), HEADER.size
    payloads: dict[int, memoryview] = {}
    sections = []
    for i in range(count):
        start = _align(pos + SECTION.size) - SECTION.size
        if start + SECTION.size > size:
            raise FormatError(f"{path}: truncated: section {i + 1} of {count} should start at "
                              f"offset {start}, but the file ends at {size}")
        if any(buf[pos:start]):
            raise FormatError(f"{path}: non-zero padding before section {i + 1} at offset {pos}")
        kind, crc, length = SECTION.unpack_from(buf, start)
        name = Section(kind).name.lower() if kind in Section._value2member_map_ else f"#{kind}"
        begin = start + SECTION.size
        if length > size - begin:
            raise FormatError(f"{path}: truncated: {name} section at offset {start} declares "
                              f"{length} bytes, only {size - begin} remain in the file")
        payload = buf[begin:begin + length]
        if verify and zlib.crc32(payload) != crc:
            raise FormatError(f"{path}: bad checksum in the {name} section (offset {start}): "
                              f"stored {crc:#010x}, computed {zlib.crc32(payload):#010x}")
        if kind in payloads:
            raise FormatError(f"{path}: duplicate {name} section at offset {start}")
        if kind in Section._value2member_map_:
            payloads[kind] = payload
        sections.append({"kind": name, "offset": start, "length": length, "crc32": crc})
        pos = begin + length
    if pos != size:
        raise FormatError(f"{path}: {size - pos} unexpected bytes after the last section "
                          f"(offset {pos})")
    for required in (Section.CONFIG, Section.TENSORS, Section.DATA):
        if required not in payloads:
            raise FormatError(f"{path}: missing the {required.name.lower()} section")
    return payloads, sections


def _read_json(payloads: dict[int, memoryview], kind: Section, path: Any) -> Any:
    try:
        return json.loads(bytes(payloads[kind]).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: {kind.name.lower()} section is not valid UTF-8 "
                          f"(byte {e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: {kind.name.lower()} section is not valid JSON: "
                          f"{e or 'nested too deeply'}") from None


def _read_config(payloads: dict[int, memoryview], path: Any, vocab: int, emb: int) -> ModelConfig:
    try:
        config = ModelConfig.from_dict(_read_json(payloads, Section.CONFIG, path))
    except ConfigError as e:
        raise FormatError(f"{path}: config section: {e}") from None
    except TypeError as e:
        raise FormatError(f"{path}: config section: {e}") from None
    if (config.vocab_size, config.embedding_dim) != (vocab, emb):
        raise FormatError(f"{path}: header says vocab_size {vocab}, embedding_dim {emb}; the "
                          f"config section says {config.vocab_size}, {config.embedding_dim}")
    return config


def _check_config_fits(config: ModelConfig, data_len: int, path: Any) -> None:
    """Refuse a config whose parameters cannot be in the data section, before building its
    layout (a forged numLayers of 10^7 would otherwise allocate a huge table)."""
    count = config.num_parameters()
    if count * 9 // 16 > data_len:  # the smallest element: q4_0's 18 bytes per 32
        raise FormatError(f"{path}: the config needs {count:,} parameters, but the data "
                          f"section holds only {data_len:,} bytes")


class _Cursor:
    """Bounds-checked reads from the tensor table."""

    def __init__(self, buf: memoryview, path: Any):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> tuple:
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.buf):
            raise FormatError(f"{self.path}: tensor table truncated at byte {self.pos} of "
                              f"{len(self.buf)} (needs {n} more)")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return values

    def name(self) -> str:
        (n,) = self.take("<H")
        raw = bytes(self.take(f"<{n}s")[0])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: tensor name at table byte {self.pos - n} is not "
                              f"valid UTF-8") from None


def _read_tensors(payloads: dict[int, memoryview], path: Any, config: ModelConfig
                  ) -> tuple[dict[str, np.ndarray], str, dict[str, tuple[str, tuple[int, ...]]]]:
    entries, data = _table_entries(payloads, path)
    tensors: dict[str, np.ndarray] = {}
    quantized: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, dtype, shape, offset, nbytes in entries:
        if name in tensors:
            raise FormatError(f"{path}: tensor {name!r} appears twice in the tensor table")
        if dtype in QDTYPES:
            arr = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset)
            tensors[name] = arr.reshape(shape[0], nbytes // shape[0])
            quantized[name] = (QDTYPES[dtype], shape)
            continue
        arr = np.frombuffer(data, dtype=DTYPES[dtype][1], count=nbytes // DTYPES[dtype][1].itemsize,
                            offset=offset)
        tensors[name] = arr.reshape(shape)
    param_dtypes = _check_shapes(tensors, entries, config, path, quantized)
    return tensors, param_dtypes, quantized


def _table_entries(payloads: dict[int, memoryview], path: Any
                   ) -> tuple[list[tuple[str, int, tuple[int, ...], int, int]], memoryview]:
    """The tensor table's entries (name, dtype code, shape, offset, bytes), each checked
    against the data section, and the data section."""
    table, data = _Cursor(payloads[Section.TENSORS], path), payloads[Section.DATA]
    (count,) = table.take("<I")
    min_entry = 2 + ENTRY_FIXED.size + ENTRY_SPAN.size
    if count * min_entry > len(table.buf):
        raise FormatError(f"{path}: tensor table declares {count} tensors but holds only "
                          f"{len(table.buf)} bytes")
    entries = [_read_entry(table, path, len(data)) for _ in range(count)]
    _check_overlaps(entries, path)
    return entries, data


def read_float_tensors(path: str | os.PathLike[str]
                       ) -> tuple[ModelConfig, dict[str, Any], dict[str, np.ndarray]]:
    """The config, metadata object and float32 tensors (copies; f16 ones widened) of a
    container that holds no model weights, e.g. a LoRA adapter (sllm.lora). FormatError on
    any malformation."""
    buf = memoryview(_open(path, mmap=False))
    _, config, payloads, _ = parse_container(buf, path)
    metadata = _read_json(payloads, Section.METADATA, path) \
        if Section.METADATA in payloads else None
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: metadata section: expected a JSON object")
    entries, data = _table_entries(payloads, path)
    tensors: dict[str, np.ndarray] = {}
    for name, dtype, shape, offset, nbytes in entries:
        if name in tensors:
            raise FormatError(f"{path}: tensor {name!r} appears twice in the tensor table")
        if dtype not in DTYPES:
            raise FormatError(f"{path}: tensor {name!r} is not float32 or float16")
        kind = DTYPES[dtype][1]
        tensors[name] = np.frombuffer(data, kind, nbytes // kind.itemsize, offset
                                      ).reshape(shape).astype(np.float32)
    check_weights(tensors, path, {})
    return config, metadata, tensors


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata object of an SLLM container ({} when it has none), its tensors left
    unread (a memory map): what a command reads to tell an adapter from a model file."""
    _, _, payloads, _ = parse_container(memoryview(_open(path, mmap=True)), path, verify=False)
    metadata = _read_json(payloads, Section.METADATA, path) \
        if Section.METADATA in payloads else {}
    return metadata if isinstance(metadata, dict) else {}


def _read_entry(table: _Cursor, path: Any, data_len: int) -> tuple[str, int, tuple[int, ...], int, int]:
    name = table.name()
    dtype, ndim, reserved = table.take(ENTRY_FIXED.format)
    if dtype not in DTYPES and dtype not in QDTYPES:
        raise FormatError(f"{path}: tensor {name!r} has unknown dtype code {dtype}")
    if not 1 <= ndim <= MAX_NDIM or reserved:
        raise FormatError(f"{path}: tensor {name!r} has invalid ndim {ndim} (1..{MAX_NDIM})")
    shape = table.take(f"<{ndim}I")
    offset, nbytes = table.take(ENTRY_SPAN.format)
    if dtype in QDTYPES:
        _check_quantized_entry(name, QDTYPES[dtype], shape, nbytes, path)
    else:
        elements = 1
        for d in shape:
            elements *= d
        if elements * DTYPES[dtype][1].itemsize != nbytes:
            raise FormatError(f"{path}: tensor {name!r}: shape {tuple(shape)} of "
                              f"{DTYPES[dtype][0]} needs {elements * DTYPES[dtype][1].itemsize} "
                              f"bytes, the table says {nbytes}")
    if offset % ALIGN or offset + nbytes > data_len:
        raise FormatError(f"{path}: tensor {name!r} at data offset {offset} with {nbytes} bytes "
                          f"is misaligned or runs past the end of the data ({data_len} bytes)")
    return name, dtype, tuple(shape), offset, nbytes


def _check_quantized_entry(name: str, qtype: str, shape: tuple[int, ...], nbytes: int,
                           path: Any) -> None:
    """A quantized tensor is (rows, K) stored as rows of ceil(K / 32) blocks."""
    if len(shape) != 2 or 0 in shape:
        raise FormatError(f"{path}: tensor {name!r}: a {qtype} tensor must have 2 non-zero "
                          f"dimensions (rows, K), got shape {tuple(shape)}")
    rows, K = shape
    blocks, size = -(-K // QK), BLOCKS[qtype].itemsize
    if rows * blocks * size != nbytes:
        raise FormatError(f"{path}: tensor {name!r}: {rows} rows of K={K} in {qtype} are "
                          f"{rows} x {blocks} blocks of {size} bytes = {rows * blocks * size} "
                          f"bytes, the table says {nbytes}")


def _check_overlaps(entries: list[tuple[str, int, tuple[int, ...], int, int]], path: Any) -> None:
    spans = sorted((offset, offset + nbytes, name) for name, _, _, offset, nbytes in entries)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):  # neighbours
        if start < end:
            raise FormatError(f"{path}: tensors {a!r} and {b!r} overlap in the data section")


def _check_shapes(tensors: dict[str, np.ndarray], entries: list[tuple[str, int, tuple[int, ...], int, int]],
                  config: ModelConfig, path: Any, quantized: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    layout = Layout(config)
    matmuls = set(quantized_weight_names(config))
    for name, slot in layout.slots.items():
        if name not in tensors:
            raise FormatError(f"{path}: tensor {name!r} is missing")
        shape, need = tensors[name].shape, slot.shape
        if name in quantized:
            shape = quantized[name][1]
            need = slot.shape if name in EMBEDDINGS else slot.shape[::-1]
            if name not in matmuls:
                raise FormatError(f"{path}: tensor {name!r} is {quantized[name][0]}, but only "
                                  f"matmul weights and the token embedding may be quantized")
        if shape != need:
            raise FormatError(f"{path}: tensor {name!r} has shape {shape}, the config needs "
                              f"{need}" + (" (quantized rows run along K)" if name in quantized
                                           else ""))
    extra = sorted(set(quantized) - set(layout.slots))
    if extra:
        raise FormatError(f"{path}: tensor {extra[0]!r} is quantized but not a model weight")
    codes = {dtype for name, dtype, *_ in entries if name in layout.slots}
    return "/".join(sorted(DTYPES[c][0] if c in DTYPES else QDTYPES[c] for c in codes))


# ---- inspection ----------------------------------------------------------------------------
def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What `sllm info` shows: config, parameter count, dtype, sizes and checksum status."""
    mf = read_model_file(path, mmap=True)
    return {"path": str(path), "version": mf.version, "file_size": mf.file_size,
            "dtype": mf.dtype, "num_parameters": Layout(mf.config).num_parameters,
            "config": mf.config.to_dict(), "vocab_size": mf.config.vocab_size,
            "tokenizer": (mf.tokenizer or {}).get("type"), "checksums": "ok",
            "sections": mf.sections, "extra_tensors": sorted(mf.extra_tensors),
            "metadata": mf.metadata, "tensors": _tensor_sizes(mf)}


def _tensor_sizes(mf: ModelFile) -> list[dict[str, Any]]:
    """Each parameter's stored type, shape and bytes, and the bytes it saves against f32."""
    rows = []
    for name in Layout(mf.config).slots:
        arr = mf.tensors[name]
        if name in mf.quantized:
            dtype, shape = mf.quantized[name]
        else:
            dtype, shape = {"<f4": "f32", "<f2": "f16"}[arr.dtype.str], arr.shape
        f32_bytes = int(np.prod(shape)) * 4
        rows.append({"name": name, "dtype": dtype, "shape": list(shape),
                     "bytes": int(arr.nbytes), "saved": f32_bytes - int(arr.nbytes)})
    return rows
