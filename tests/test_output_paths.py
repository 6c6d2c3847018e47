"""One output-path policy for every writer: each command that writes a
model, a site or a run directory goes through the same table of bad outputs, and for each
one exits 1 with an error, without a traceback, leaving its input and the target as they
were. `sllm quantize RUN -o RUN/model.sllm` used to exit 0 having replaced the float
weights; `export-web -o /` wrote 14 files into `/`."""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sllm
from sllm import tokenizer as tokenizers
from sllm.cli import app
from sllm.outputs import OutputError, check_output

TEXT = "the cat sat on the mat. the dog sat on the log. " * 20
CFG = dict(vocab_size=40, embedding_dim=16, num_layers=1, num_heads=2, ffn_hidden_dim=32,
           dropout=0.0, max_seq_len=16)


def _tree_digest(root: Path) -> dict[str, str]:
    """Every regular file under root with its SHA-256 (what must not change)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A run directory with a model, its HF and GGUF exports, a corpus, and the targets."""
    root = tmp_path_factory.mktemp("outputs")
    tok = tokenizers.WordTokenizer.train(TEXT, 12, byte_fallback=False)
    model = sllm.SLLM(sllm.ModelConfig(**{**CFG, "vocab_size": tok.vocab_size}), backend="numpy")
    model.tokenizer = tok.to_dict()
    (root / "run").mkdir()
    model.save(root / "run" / "model.sllm")
    (root / "corpus.txt").write_text(TEXT)
    runner = CliRunner()
    for to, out in (("hf", "hf"), ("gguf", "m.gguf")):
        result = runner.invoke(app, ["export", str(root / "run"), "--to", to, "-o",
                                     str(root / out)])
        assert result.exit_code == 0, result.output
    return root


# name -> (the input given, a file inside it the writer reads, args before the output)
WRITERS = {
    "quantize": ("run", "run/model.sllm", ["quantize", "{src}", "-t", "q8_0", "-o"]),
    "export-hf": ("run", "run/model.sllm", ["export", "{src}", "--to", "hf", "-o"]),
    "export-gguf": ("run", "run/model.sllm", ["export", "{src}", "--to", "gguf", "-o"]),
    "export-web": ("run", "run/model.sllm", ["export-web", "{src}", "-o"]),
    "convert": ("run/model.sllm", "run/model.sllm", ["convert", "{src}", "{out}"]),
    "import-hf": ("hf", "hf/model.safetensors", ["import", "{src}", "-o"]),
    "import-gguf": ("m.gguf", "m.gguf", ["import", "{src}", "-o"]),
    "train": ("run/model.sllm", "run/model.sllm", ["train", "--init-from", "{src}", "--corpus",
                                        "{root}/corpus.txt", "--steps", "1", "--batch-size", "2",
                                        "--eval-every", "0", "--backend", "numpy", "-q", "--out"]),
}


def _bad_outputs(root: Path, src: str, read: str) -> dict[str, Path]:
    """The table of outputs every writer must refuse (made fresh for each writer)."""
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    link = scratch / "link-to-input"
    link.unlink(missing_ok=True)
    link.symlink_to(root / read)
    sock = scratch / "a.sock"
    if not sock.exists():
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock))
        s.close()
    existing = scratch / "existing.sllm"
    existing.write_bytes(b"not yours to replace")
    full = scratch / "full"
    full.mkdir(exist_ok=True)
    for name in ("model.sllm", "index.html", "config.json"):
        (full / name).write_bytes(b"keep me")
    table = {"the file it reads": root / read, "a link to that file": link,
             "the input itself": root / src, "the root directory": Path("/"),
             "a device": Path("/dev/null"), "a socket": sock,
             "an existing file": existing, "a non-empty directory": full}
    if (root / src).is_dir():
        table["a new file inside the input directory"] = root / src / "new-output"
    return table


def _args(writer: str, root: Path, out: Path, overwrite: bool = False) -> list[str]:
    src, _, template = WRITERS[writer]
    args = [a.format(src=root / src, out=out, root=root) for a in template]
    if "{out}" not in template:
        args.append(str(out))
    return args + (["--overwrite"] if overwrite else [])


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_refuses_every_bad_output(world, writer):
    src, read, _ = WRITERS[writer]
    runner = CliRunner()
    for case, out in _bad_outputs(world, src, read).items():
        before = _tree_digest(world)
        dev = os.stat("/dev/null") if case == "a device" else None
        result = runner.invoke(app, _args(writer, world, out))
        assert result.exit_code == 1, f"{writer} -o {case}: {result.output}"
        assert "error:" in result.output and "Traceback" not in result.output, result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                         SystemExit)
        assert _tree_digest(world) == before, f"{writer} -o {case} changed files"
        if dev is not None:
            assert os.stat("/dev/null").st_rdev == dev.st_rdev
        assert not (Path("/") / "index.html").exists() or writer != "export-web"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_overwrite_replaces_an_existing_output_but_never_the_input(world, writer):
    src, read, _ = WRITERS[writer]
    runner = CliRunner()
    target = world / "replaced" / writer
    target.parent.mkdir(exist_ok=True)
    if writer in ("export-hf", "export-web", "train"):
        target.mkdir(exist_ok=True)
        (target / "model.sllm").write_bytes(b"old")
    else:
        target.write_bytes(b"old")
    result = runner.invoke(app, _args(writer, world, target, overwrite=True))
    assert result.exit_code == 0, result.output
    written = target / ("config.json" if writer == "export-hf" else "model.sllm") \
        if target.is_dir() else target
    assert written.read_bytes() != b"old"
    again = runner.invoke(app, _args(writer, world, world / read, overwrite=True))
    assert again.exit_code == 1 and "input" in again.output


def test_the_policy_as_a_function(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.sllm").write_bytes(b"x")
    assert check_output(tmp_path / "new.sllm", [tmp_path / "run"]) == tmp_path / "new.sllm"
    with pytest.raises(OutputError, match="inside the input directory"):
        check_output(tmp_path / "run" / "q.sllm", [tmp_path / "run"])
    with pytest.raises(OutputError, match="holds the input"):
        check_output(tmp_path, [tmp_path / "run" / "model.sllm"], overwrite=True, kind="dir")
    with pytest.raises(OutputError, match="root"):
        check_output("/", [], overwrite=True, kind="dir")
    with pytest.raises(ValueError, match="kind"):
        check_output(tmp_path / "x", kind="folder")


def test_atomic_write_never_replaces_a_device_or_a_socket(tmp_path):
    from sllm.fileio import atomic_write
    sock = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    for dest in (sock, Path("/dev/null"), tmp_path):
        with pytest.raises(OutputError, match="never replaces"), atomic_write(dest) as f:
            f.write(b"x")
    assert sock.is_socket() and not list(tmp_path.glob(".*tmp-*"))


def test_an_output_where_no_file_can_be_made_is_one_line_naming_it(world):
    """/proc/self/mem is a "regular" file: the atomic write's temp file beside it cannot exist."""
    result = CliRunner().invoke(app, ["export", str(world / "run"), "--to", "gguf", "-o",
                                      "/proc/self/mem", "--overwrite"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "/proc/self/mem: cannot write there" in result.output and "Errno" not in result.output


def test_a_positional_output_is_named_as_typed(world):
    src = str(world / "run" / "model.sllm")
    result = CliRunner().invoke(app, ["convert", src, src])
    assert result.exit_code == 1 and f"DEST {src} is the input" in result.output
