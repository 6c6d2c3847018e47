"""The SLLM binary format: round trips, cross-backend loads, every malformation, fuzzing,
and atomic saves under a kill."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sllm
from sllm import FormatError, backends
from sllm.serialize import SECTION, ModelFile, read_model_file

CFG = sllm.ModelConfig(vocab_size=37, embedding_dim=16, num_layers=2, num_heads=2,
                       ffn_hidden_dim=24, max_seq_len=8, dropout=0.0)
X = np.array([[1, 2, 3, 36], [0, 5, 5, 9]])


@pytest.fixture(scope="module")
def model():
    m = sllm.SLLM(CFG, backend="numpy", seed=5).eval()
    m.tokenizer = sllm.tokenizer.CharTokenizer.train("ab").to_dict()
    return m


@pytest.fixture(scope="module")
def good_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.sllm"
    model.save(path, metadata={"step": 12})
    return path


@pytest.fixture(scope="module")
def good_bytes(good_file):
    return good_file.read_bytes()


def test_header_is_the_roadmaps(good_bytes):
    assert good_bytes[:4] == b"SLLM"
    assert struct.unpack_from("<III", good_bytes, 4) == (1, 37, 16)


@pytest.mark.parametrize("name", backends.available())
def test_round_trip_every_backend(model, tmp_path, name):
    saved_on = sllm.SLLM(CFG, backend=name, seed=5).eval()
    path = tmp_path / "m.sllm"
    saved_on.save(path)
    for load_on in {name, "numpy"}:  # and across backends
        loaded = sllm.load(path, backend=load_on)
        assert loaded.backend.name == load_on and not loaded.training
        if load_on == name:  # bit for bit on the same backend; kernels differ in rounding
            np.testing.assert_array_equal(loaded.forward(X), saved_on.forward(X))
        else:
            np.testing.assert_allclose(loaded.forward(X), saved_on.forward(X), rtol=1e-4, atol=1e-5)


def test_metadata_tokenizer_and_extras(model, tmp_path):
    path = tmp_path / "ckpt.sllm"
    extra = {"optim.m": np.arange(5, dtype=np.float32)}
    sllm.serialize.save_model(model, path, metadata={"step": 7}, extra_tensors=extra)
    mf = read_model_file(path)
    assert mf.metadata["step"] == 7 and mf.tokenizer == model.tokenizer
    np.testing.assert_array_equal(mf.extra_tensors["optim.m"], extra["optim.m"])
    assert sllm.load(path).tokenizer == model.tokenizer


@pytest.mark.parametrize("mmap", [True, False])
def test_f16_within_tolerance(model, tmp_path, mmap):
    path = tmp_path / "m16.sllm"
    model.save(path, dtype="f16")
    model.save(tmp_path / "m32.sllm")
    # f16 saves 2 bytes a parameter (the tokenizer and header are the same in both files)
    saved = (tmp_path / "m32.sllm").stat().st_size - path.stat().st_size
    assert saved >= 1.9 * model.num_parameters()
    loaded = sllm.load(path, mmap=mmap)
    # f16 keeps ~3 decimal digits: logits of this small model move by well under 1e-3
    np.testing.assert_allclose(loaded.forward(X), model.forward(X), atol=2e-3)
    assert read_model_file(path).dtype == "f16"


def test_mmap_views_the_file(good_file):
    mf = read_model_file(good_file, mmap=True)
    wte = mf.tensors["wte"]
    assert not wte.flags.writeable and not wte.flags.owndata


def test_json_interchange(model, tmp_path):
    path = tmp_path / "m.json"
    model.save_json(path)
    loaded = sllm.load_json(path, backend="numpy")
    np.testing.assert_array_equal(loaded.forward(X), model.forward(X))
    assert loaded.tokenizer == model.tokenizer


def _rewrite(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _fix_header_crc(data: bytes) -> bytes:
    return _rewrite(data, 20, "<I", zlib.crc32(data[:20]))


def _sections(data: bytes) -> list[dict]:
    return read_model_file_bytes(data).sections


def read_model_file_bytes(data: bytes) -> ModelFile:
    from sllm.serialize import _parse
    return _parse(memoryview(data), "<bytes>", True)


def _replace_section(data: bytes, kind: str, payload: bytes) -> bytes:
    """Rebuild the file with one section's payload replaced (valid checksums)."""
    sec = next(s for s in _sections(data) if s["kind"] == kind)
    start, length = sec["offset"], sec["length"]
    head = _rewrite(data[:start + SECTION.size], start, "<IIQ",
                    struct.unpack_from("<I", data, start)[0], zlib.crc32(payload), len(payload))
    rest = data[start + SECTION.size + length:]
    if len(payload) != length:  # re-pad the following sections
        nxt = [s for s in _sections(data) if s["offset"] > start]
        return _pad_join(head + payload, nxt, data)
    return head + payload + rest


def _section_bytes(data, s):
    return data[s["offset"]:s["offset"] + SECTION.size + s["length"]]


def _pad_join(prefix, sections, data):
    out = bytearray(prefix)
    for s in sections:
        start = -(-(len(out) + SECTION.size) // 64) * 64 - SECTION.size
        out += b"\0" * (start - len(out)) + _section_bytes(data, s)
    return bytes(out)


def _bad(data: bytes, tmp_path: Path, match: str) -> None:
    path = tmp_path / "bad.sllm"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match):
        sllm.load(path)


def test_wrong_magic(good_bytes, tmp_path):
    _bad(b"GGUF" + good_bytes[4:], tmp_path, "magic")


def test_newer_version_names_both(good_bytes, tmp_path):
    _bad(_fix_header_crc(_rewrite(good_bytes, 4, "<I", 9)), tmp_path, "version 9 .* 1 to 1")


def test_header_checksum(good_bytes, tmp_path):
    _bad(_rewrite(good_bytes, 8, "<I", 38), tmp_path, "header checksum")


def test_header_disagrees_with_config(good_bytes, tmp_path):
    _bad(_fix_header_crc(_rewrite(good_bytes, 8, "<I", 38)), tmp_path, "vocab_size 38")


@pytest.mark.parametrize("cut", [0, 3, 23, 47, 60, 300, -1])
def test_truncated(good_bytes, tmp_path, cut):
    _bad(good_bytes[:cut], tmp_path, "truncated|declares|unexpected")


def test_bad_checksum(good_bytes, tmp_path):
    data = bytearray(good_bytes)
    data[-10] ^= 0xFF
    _bad(bytes(data), tmp_path, "bad checksum in the data section")


def test_trailing_garbage(good_bytes, tmp_path):
    _bad(good_bytes + b"x", tmp_path, "unexpected bytes")


def test_invalid_json_and_utf8(good_bytes, tmp_path):
    _bad(_replace_section(good_bytes, "config", b"{nope"), tmp_path, "config section is not valid JSON")
    _bad(_replace_section(good_bytes, "metadata", b"\xff\xfe"), tmp_path, "not valid UTF-8")
    _bad(_replace_section(good_bytes, "metadata", b"[1]"), tmp_path, "metadata section: expected")


def test_config_section_invalid(good_bytes, tmp_path):
    bad_cfg = json.dumps({**CFG.to_dict(), "numHeads": 3}).encode()
    _bad(_replace_section(good_bytes, "config", bad_cfg), tmp_path, "config section: .*divisible")


def _table_with(good_bytes, mutate):
    """Re-encode the tensor table after `mutate(entries)`; entries are dicts."""
    mf = read_model_file_bytes(good_bytes)
    table = bytes(memoryview(good_bytes)[
        next(s for s in mf.sections if s["kind"] == "tensors")["offset"] + SECTION.size:][
        :next(s for s in mf.sections if s["kind"] == "tensors")["length"]])
    entries, pos = [], 4
    for _ in range(struct.unpack_from("<I", table)[0]):
        (n,) = struct.unpack_from("<H", table, pos)
        name = table[pos + 2:pos + 2 + n]
        pos += 2 + n
        dtype, ndim, res = struct.unpack_from("<BBH", table, pos)
        shape = list(struct.unpack_from(f"<{ndim}I", table, pos + 4))
        pos += 4 + 4 * ndim
        off, nb = struct.unpack_from("<QQ", table, pos)
        pos += 16
        entries.append({"name": name, "dtype": dtype, "shape": shape, "offset": off, "nbytes": nb})
    mutate(entries)
    out = [struct.pack("<I", len(entries))]
    for e in entries:
        out += [struct.pack("<H", len(e["name"])), e["name"],
                struct.pack("<BBH", e["dtype"], len(e["shape"]), 0),
                struct.pack(f"<{len(e['shape'])}I", *e["shape"]),
                struct.pack("<QQ", e["offset"], e["nbytes"])]
    return _replace_section(good_bytes, "tensors", b"".join(out))


def _set(index, **changes):
    def mutate(entries):
        entries[index].update(changes)
    return mutate


@pytest.mark.parametrize("mutate,match", [
    (_set(0, dtype=2), "q8_0"), (_set(0, dtype=77), "unknown dtype code 77"),
    (_set(1, offset=0), "overlap"), (_set(0, offset=1 << 40), "past the end"),
    (_set(0, shape=[37, 15], nbytes=37 * 15 * 4), "shape \\(37, 15\\)"),
    (_set(0, shape=[2 ** 31, 2 ** 31]), "needs .* bytes"),
    (_set(0, name=b"h.0.ln_1.bias"), "twice"), (_set(0, name=b"\xff"), "UTF-8"),
    (lambda e: e.pop(0), "'wte' is missing"), (_set(0, shape=[1, 2, 3, 4, 5, 6]), "ndim"),
])
def test_tensor_table_errors(good_bytes, tmp_path, mutate, match):
    _bad(_table_with(good_bytes, mutate), tmp_path, match)


def test_absurd_tensor_count_is_refused_before_allocation(good_bytes, tmp_path):
    sec = next(s for s in _sections(good_bytes) if s["kind"] == "tensors")
    table = good_bytes[sec["offset"] + SECTION.size:][:sec["length"]]
    forged = struct.pack("<I", 2 ** 32 - 1) + table[4:]
    _bad(_replace_section(good_bytes, "tensors", forged), tmp_path, "declares 4294967295 tensors")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        sllm.load(tmp_path / "nope.sllm")
    with pytest.raises(FormatError, match="directory"):
        sllm.load(tmp_path)


def test_json_errors(tmp_path, model):
    path = tmp_path / "m.json"
    for text, match in [("{", "not valid"), ('{"format": "other"}', "not an sllm JSON"),
                        ('{"config": {"vocabSize": -1}}', "vocab_size"),
                        (json.dumps({"config": CFG.to_dict(), "weights": {}}), "missing")]:
        path.write_text(text)
        with pytest.raises(FormatError, match=match):
            sllm.load_json(path)
    model.save_json(path)
    doc = json.loads(path.read_text())
    doc["weights"]["wte"] = [[1.0, 2.0]]
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="'wte' has shape"):
        sllm.load_json(path)


FUZZ = settings(max_examples=int(os.environ.get("SLLM_FUZZ_EXAMPLES", 1500)), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=True)


def load_or_format_error(data: bytes, path: Path, original: Any) -> str:
    """What loading `data` gives: "format error" (FormatError, the only exception allowed)
    or "loaded", once the model passes its checks: the original's config and parameters,
    bit for bit (a file that loads is the file that was written), and finite logits."""
    path.write_bytes(data)
    try:
        loaded = sllm.load(path, backend="numpy", mmap=False)
    except FormatError:
        return "format error"
    assert loaded.config == original.config
    for name, param in original.parameters().items():
        assert np.array_equal(loaded.parameters()[name], param), name
    assert np.isfinite(loaded.forward([[0, 1, 2]])).all()
    return "loaded"


def fuzz(good_bytes: bytes, mutate: Any, path: Path, original: Any) -> Counter:
    """Run `mutate(blob, data)` (hypothesis draws) on copies of good_bytes; count outcomes."""
    outcomes: Counter = Counter()

    @FUZZ
    @given(st.data())
    def one(data: Any) -> None:
        blob = mutate(bytearray(good_bytes), data)
        outcomes["skipped" if blob is None else load_or_format_error(bytes(blob), path, original)] += 1

    one()
    return outcomes



def test_fuzz_only_format_error(good_bytes, model, tmp_path):
    """Truncations at section boundaries, random byte flips, and forged header fields: each
    file raises FormatError or loads the original model."""
    boundaries = [0, 4, 8, 16, 20, 24] + [p for s in _sections(good_bytes) for p in (
        s["offset"], s["offset"] + SECTION.size, s["offset"] + SECTION.size + s["length"])]

    def mutate(blob: bytearray, data: Any) -> bytearray:
        action = data.draw(st.sampled_from(["truncate", "flip", "forge", "section"]))
        if action == "truncate":
            cut = data.draw(st.sampled_from(boundaries) | st.integers(0, len(blob)))
            cut += data.draw(st.integers(-2, 2))
            return blob[:max(cut, 0)]
        if action == "flip":
            for _ in range(data.draw(st.integers(1, 8))):
                blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
        elif action == "forge":
            field = data.draw(st.sampled_from([4, 8, 12, 16]))
            struct.pack_into("<I", blob, field, data.draw(st.integers(0, 2 ** 32 - 1)))
            blob = bytearray(_fix_header_crc(bytes(blob)))
        else:  # forge a section header field, then fix nothing: lengths and checksums
            sec = data.draw(st.sampled_from(_sections(good_bytes)))
            off = sec["offset"] + data.draw(st.sampled_from([0, 4, 8]))
            struct.pack_into("<I", blob, off, data.draw(st.integers(0, 2 ** 32 - 1)))
        return blob

    outcomes = fuzz(good_bytes, mutate, tmp_path / "m.sllm", model)
    assert outcomes["format error"] > outcomes["loaded"] > 0, outcomes  # both paths ran


def test_fuzz_valid_checksums_bad_table(good_bytes, model, tmp_path):
    """Forged tensor tables with recomputed checksums fail cleanly or load the original."""
    def mutate(blob: bytearray, data: Any) -> bytes | None:
        def forge(entries):
            e = entries[data.draw(st.integers(0, len(entries) - 1))]
            key = data.draw(st.sampled_from(["dtype", "offset", "nbytes", "shape"]))
            if key == "shape":
                e["shape"] = data.draw(st.lists(st.integers(0, 2 ** 32 - 1), min_size=0, max_size=6))
            else:
                e[key] = data.draw(st.integers(0, 255 if key == "dtype" else 2 ** 64 - 1))
        try:
            return _table_with(bytes(blob), forge)
        except struct.error:
            return None  # the forged value does not fit its field; nothing to test

    outcomes = fuzz(good_bytes, mutate, tmp_path / "m.sllm", model)
    assert outcomes["format error"] > 0, outcomes


WRITER = """
import sys, numpy as np, sllm
cfg = sllm.ModelConfig(vocab_size=5000, embedding_dim=256, num_layers=6, num_heads=8,
                       ffn_hidden_dim=1024, max_seq_len=256)
m = sllm.SLLM(cfg, backend="numpy", init=None)
import sllm.fileio as fio
real_write = None
class Slow:
    def __init__(self, f): self.f = f
    def write(self, b):
        n = self.f.write(b); self.f.flush(); print("wrote", flush=True); return n
    def tell(self): return self.f.tell()
orig = fio.atomic_write
import contextlib
@contextlib.contextmanager
def slow(path):
    with orig(path) as f:
        yield Slow(f)
        import time; time.sleep(30)
import sllm.serialize as s
s.atomic_write = slow
m.save(sys.argv[1])
"""


def test_kill_mid_save_keeps_the_old_file(model, tmp_path):
    path = tmp_path / "m.sllm"
    model.save(path)
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(path)],
                             stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # wait until the child is mid-write
        assert child.stdout.readline().startswith("wrote")
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert path.read_bytes() == before  # the old file is intact
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.sllm"]
    assert leftovers and all(".tmp-" in n for n in leftovers)  # only the dead writer's temp
    model.save(path)  # the next save removes what the killed writer left
    assert [p.name for p in tmp_path.iterdir()] == ["m.sllm"]
    np.testing.assert_array_equal(sllm.load(path, backend="numpy").forward(X), model.forward(X))


def test_failed_save_leaves_nothing(model, tmp_path):
    path = tmp_path / "m.sllm"
    with pytest.raises(ValueError, match="dtype"):
        model.save(path, dtype="q3")
    assert list(tmp_path.iterdir()) == []


def test_cli_info_and_convert(model, tmp_path):
    from typer.testing import CliRunner

    from sllm.cli import app
    runner = CliRunner()
    binary, js, back = tmp_path / "m.sllm", tmp_path / "m.json", tmp_path / "back.sllm"
    model.save(binary)
    result = runner.invoke(app, ["info", str(binary)])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and f"{model.num_parameters():,}" in result.output
    assert "checksums" in result.output and "ok" in result.output
    assert runner.invoke(app, ["convert", str(binary), str(js)]).exit_code == 0
    result = runner.invoke(app, ["convert", str(js), str(back), "--dtype", "f16"])
    assert result.exit_code == 0 and "smaller" in result.output
    np.testing.assert_allclose(sllm.load(back).forward(X), model.forward(X), atol=2e-3)
    binary.write_bytes(binary.read_bytes()[:100])
    result = runner.invoke(app, ["info", str(binary)])
    assert result.exit_code == 1 and "truncated" in result.output


def test_resave_refreshes_metadata(model, tmp_path):
    model.save(tmp_path / "a.sllm")
    sllm.load(tmp_path / "a.sllm").save(tmp_path / "b.sllm", dtype="f16")
    assert read_model_file(tmp_path / "b.sllm").metadata["dtype"] == "f16"


def test_forged_huge_config_is_refused_before_building_it(good_bytes, tmp_path):
    import time
    forged = json.dumps({**CFG.to_dict(), "numLayers": 10 ** 7}).encode()
    start = time.perf_counter()
    _bad(_replace_section(good_bytes, "config", forged), tmp_path, "needs .* parameters")
    assert time.perf_counter() - start < 2


def test_deeply_nested_json_is_a_format_error(good_bytes, tmp_path):
    _bad(_replace_section(good_bytes, "metadata", b"[" * 100000 + b"]" * 100000), tmp_path,
         "metadata section is not valid JSON")
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100000 + b"]" * 100000)
    with pytest.raises(FormatError):
        sllm.load_json(path)
