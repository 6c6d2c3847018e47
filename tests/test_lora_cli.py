"""`sllm finetune` (LoRA and --full), resume, `sllm merge`, --adapter on generate/eval, the
option errors, and a fuzz test over adapter files (mutated or truncated: FormatError only)."""
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from test_distributed import needs_mpi
from typer.testing import CliRunner

import sllm
from sllm.cli import app
from sllm.corpus import write_corpus
from sllm.errors import FormatError
from sllm.lora import Adapter, LoraConfig
from sllm.serialize import ALIGN, HEADER, SECTION

runner = CliRunner()
TINY = {"vocabSize": 300, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
        "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 32}
FUZZ_RUNS = 1000


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny model trained for a few steps, and a second text to fine-tune it on."""
    d = tmp_path_factory.mktemp("lora")
    corpus = write_corpus(d / "corpus.txt", 30_000, seed=1)
    (d / "model.json").write_text(json.dumps(TINY))
    code, out = run("train", "--config", d / "model.json", "--corpus", corpus, "--steps", 20,
                    "--batch-size", 4, "--out", d / "base", "--backend", "numpy", "-q")
    assert code == 0, out
    (d / "domain.txt").write_text("the pirate sails the sea and the parrot sings . " * 200)
    return d


def finetune(d, out, *more):
    return run("finetune", d / "base", "--corpus", d / "domain.txt", "--out", d / out,
               "--steps", 12, "--batch-size", 4, "--lr", 1e-2, "--eval-every", 6,
               "--eval-batches", 2, "--warmup", 0, "--backend", "numpy", "-q", *more)


def test_finetune_trains_an_adapter_and_leaves_the_base(base):
    before = (base / "base" / "model.sllm").read_bytes()
    code, out = finetune(base, "ft", "--lora-rank", 4, "--lora-targets", "attn")
    assert code == 0, out
    assert "adapter in" in out and "adapter.sllm" in out
    metrics = [json.loads(x) for x in (base / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (base / "base" / "model.sllm").read_bytes() == before
    assert not (base / "ft" / "model.sllm").exists()
    model = sllm.load(base / "base" / "model.sllm", backend="numpy")
    adapter = Adapter.load(base / "ft" / "adapter.sllm", model)
    assert adapter.config == LoraConfig(rank=4, targets="attn")
    assert all(".attn." in t for t in adapter.targets)
    assert (base / "ft" / "adapter.sllm").stat().st_size < 0.2 * len(before)


def test_a_lora_run_given_as_a_model_says_how_to_use_its_adapter(base):
    if not (base / "ft" / "adapter.sllm").exists():
        assert finetune(base, "ft", "--lora-rank", 4, "--lora-targets", "attn")[0] == 0
    code, out = run("generate", base / "ft", "--prompt", "the", "--max-tokens", 2)
    assert code == 1
    text = " ".join(out.split())
    assert "is a LoRA fine-tuning run" in text and "--adapter" in text
    assert str(base / "base") in text  # the run's base, from its train_config.json


def test_merge_and_adapter_option_agree(base):
    if not (base / "ft" / "adapter.sllm").exists():
        assert finetune(base, "ft", "--lora-rank", 4, "--lora-targets", "attn")[0] == 0
    code, out = run("merge", base / "base", base / "ft" / "adapter.sllm", "-o", base / "m.sllm")
    assert code == 0, out
    code, merged = run("eval", base / "m.sllm", "--corpus", base / "domain.txt", "--backend",
                       "numpy")
    assert code == 0, merged
    code, attached = run("eval", base / "base", "--corpus", base / "domain.txt", "--backend",
                         "numpy", "--adapter", base / "ft" / "adapter.sllm")
    assert code == 0, attached
    ppl = [float(o.split("perplexity ")[1].split()[0]) for o in (merged, attached)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-4)
    code, plain = run("eval", base / "base", "--corpus", base / "domain.txt", "--backend", "numpy")
    assert float(plain.split("perplexity ")[1].split()[0]) > ppl[1]  # the adapter learned
    code, text = run("generate", base / "base", "--adapter", base / "ft" / "adapter.sllm",
                     "--prompt", "the", "--max-tokens", 5, "--temperature", 0, "--backend", "numpy")
    assert code == 0 and text.startswith("the"), text
    code, out = run("merge", base / "base", base / "ft" / "adapter.sllm", "-o", base / "m.sllm")
    assert code == 1 and "--overwrite" in out


def test_resumed_lora_run_equals_an_uninterrupted_one(base):
    same = ("--lora-dropout", 0.1, "--schedule", "constant")  # the plan does not depend on steps
    assert finetune(base, "whole", *same)[0] == 0
    assert finetune(base, "part", *same, "--steps", 6)[0] == 0
    code, out = run("train", "--resume", base / "part", "--steps", 12, "-q")
    assert code == 0, out
    whole = (base / "whole" / "metrics.jsonl").read_text().splitlines()
    part = (base / "part" / "metrics.jsonl").read_text().splitlines()
    losses = [[json.loads(x)["loss"] for x in lines] for lines in (whole, part)]
    assert losses[0] == losses[1]


@needs_mpi
@pytest.mark.parametrize("qtype", [None, "q4_0"], ids=["f32", "q4_0"])
def test_two_ranks_fine_tune_as_one_process(base, qtype):
    """--ranks 2 (each rank half the batch, the gradients averaged) trains the adapter of one
    process, on a float32 base and on a q4_0 one (QLoRA: each rank loads the quantized file)."""
    model = base / "base"
    if qtype:
        model = base / f"{qtype}.sllm"
        code, out = run("quantize", base / "base", "--type", qtype, "-o", model, "--overwrite")
        assert code == 0, out
    same = ("--schedule", "constant", "--lora-targets", "mlp")
    args = ["finetune", model, "--corpus", base / "domain.txt", "--steps", 12, "--batch-size",
            4, "--lr", 1e-2, "--eval-every", 6, "--eval-batches", 2, "--warmup", 0, "--backend",
            "numpy", "-q", *same]
    one, two = base / f"one-{qtype}", base / f"two-{qtype}"
    code, out = run(*args, "--out", one)
    assert code == 0, out
    two_ranks = [*args, "--out", two, "--ranks", 2]
    proc = subprocess.run([sys.executable, "-m", "sllm.cli", *map(str, two_ranks)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LoRA rank 8" in proc.stdout and "2 ranks" in proc.stdout
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    a, b = (Adapter.load(d / "adapter.sllm").tensors for d in (one, two))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=2e-3, err_msg=name)


@pytest.mark.parametrize("args, lr", [((), 1e-2), (("--full",), 1e-3), (("--lr", 3e-3), 3e-3)])
def test_finetune_default_rate_is_ten_times_higher_for_an_adapter(base, args, lr):
    out = f"rate{len(args)}"
    code, text = run("finetune", base / "base", "--corpus", base / "domain.txt", "--out", base / out,
                     "--steps", 2, "--batch-size", 2, "--eval-every", 0, "--backend", "numpy",
                     "-q", *args)
    assert code == 0, text
    assert json.loads((base / out / "train_config.json").read_text())["lr"] == lr


def test_full_fine_tuning_writes_a_model(base):
    code, out = finetune(base, "full", "--full")
    assert code == 0, out
    assert (base / "full" / "model.sllm").exists() and not (base / "full" / "adapter.sllm").exists()


def test_finetune_on_a_quantized_base(base):
    code, out = run("quantize", base / "base", "--type", "q8_0", "-o", base / "q8.sllm")
    assert code == 0, out
    code, out = run("finetune", base / "q8.sllm", "--corpus", base / "domain.txt", "--out",
                    base / "qlora", "--steps", 6, "--batch-size", 4, "--lr", 1e-2, "--warmup", 0,
                    "--backend", "numpy", "-q")
    assert code == 0 and "adapter in" in out, out
    code, out = run("eval", base / "q8.sllm", "--corpus", base / "domain.txt", "--adapter",
                    base / "qlora" / "adapter.sllm", "--backend", "numpy")
    assert code == 0 and "(q8_0, numpy)" in out, out
    code, out = run("finetune", base / "q8.sllm", "--corpus", base / "domain.txt", "--out",
                    base / "qfull", "--full", "--steps", 2)
    assert code == 1 and "only a LoRA adapter trains on it" in out, out
    code, out = run("merge", base / "q8.sllm", base / "qlora" / "adapter.sllm", "-o",
                    base / "qm.sllm")
    assert code == 1 and "merge the adapter into the float32 base" in out, out


@pytest.mark.parametrize("args,message", [
    (("--lora-rank", 0), "lora_rank (--lora-rank) must be an integer in [1,"),
    (("--lora-rank", 33), "lora_rank (--lora-rank) 33 must be between 1 and 32"),
    (("--lora-alpha", 0), "lora_alpha (--lora-alpha) must be a finite number in (0,"),
    (("--lora-dropout", 1), "lora_dropout (--lora-dropout) must be a finite number in [0, 1)"),
    (("--lora-targets", "wte"), "--lora-targets: 'wte' matches no weight"),
    (("--lora-targets", ""), "lora_targets (--lora-targets) must be attn, mlp, all"),  # was "all"
    (("--full", "--lora-rank", 4), "--full trains every weight; drop --lora-rank"),
])
def test_bad_options_are_one_line_errors(base, args, message):
    code, out = finetune(base, "bad", *args)
    assert code == 1 and message in out and len(out.strip().splitlines()) <= 2, out
    assert not (base / "bad").exists()


def test_lora_options_need_a_base(tmp_path):
    code, out = run("train", "--lora-rank", 4, "--out", tmp_path / "r", "--steps", 1)
    assert code == 1 and "init_from" in out


def test_another_base_is_refused(base, tmp_path):
    other = sllm.SLLM(sllm.ModelConfig.from_dict(TINY), backend="numpy", seed=9)
    Adapter.create(other, LoraConfig(rank=2), 0).save(tmp_path / "a.sllm")
    code, out = run("eval", base / "base", "--corpus", base / "domain.txt", "--adapter",
                    tmp_path / "a.sllm")
    assert code == 1 and "another base model" in out


# ---- fuzz: a damaged adapter file is a FormatError, never another exception ----------------
def _fix_checksums(buf):
    """Recompute the header's and each section's CRC, so mutations reach the parser."""
    struct.pack_into("<I", buf, 20, zlib.crc32(bytes(buf[:20])))
    pos, count = HEADER.size, struct.unpack_from("<I", buf, 16)[0]
    for _ in range(min(count, 16)):
        start = (pos + SECTION.size + ALIGN - 1) // ALIGN * ALIGN - SECTION.size
        if start + SECTION.size > len(buf):
            return
        _, _, length = SECTION.unpack_from(buf, start)
        begin = start + SECTION.size
        if length > len(buf) - begin:
            return
        struct.pack_into("<I", buf, start + 4, zlib.crc32(bytes(buf[begin:begin + length])))
        pos = begin + length


def test_fuzzed_adapter_files_raise_format_error_only(tmp_path):
    model = sllm.SLLM(sllm.ModelConfig.from_dict({**TINY, "architecture": "llama"}),
                      backend="numpy", seed=1)
    good = tmp_path / "good.sllm"
    Adapter.create(model, LoraConfig(rank=2, targets="attn"), 0).save(good)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    bad, loaded = tmp_path / "bad.sllm", 0
    for i in range(FUZZ_RUNS):
        buf = bytearray(data)
        if i % 4 == 0:
            buf = buf[:int(rng.integers(0, len(buf)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                # mostly the header, section heads, JSON and tensor table (the first 1 KiB)
                at = int(rng.integers(0, min(len(buf), 1024) if rng.random() < 0.8 else len(buf)))
                buf[at] = int(rng.integers(0, 256))
            if i % 2:
                _fix_checksums(buf)
        bad.write_bytes(bytes(buf))
        try:
            Adapter.load(bad, model)
            loaded += 1
        except FormatError:
            pass
        except sllm.LoraError:  # a mutated fingerprint: the right refusal for another base
            pass
    assert loaded < FUZZ_RUNS // 2


def test_lora_tokens_auto_trains_the_rows_of_characters_the_base_lacks(base):
    """The base's corpus has no ';' '~' '|': the fine-tune corpus spells them in byte-
    fallback pieces, whose rows --lora-tokens auto (the default) trains; merge and
    --adapter agree; none trains no rows; a bad list is a one-line error."""
    (base / "odd.txt").write_text("the pirate; sails ~ the sea | and the parrot sings . " * 150)
    code, out = run("finetune", base / "base", "--corpus", base / "odd.txt", "--out",
                    base / "tok", "--steps", 12, "--batch-size", 4, "--warmup", 0,
                    "--eval-every", 6, "--eval-batches", 2, "--backend", "numpy")
    assert code == 0, out
    assert "tokens (--lora-tokens) trains" in " ".join(out.split())
    model = sllm.load(base / "base" / "model.sllm", backend="numpy")
    adapter = Adapter.load(base / "tok" / "adapter.sllm", model)
    tok = sllm.tokenizer.from_dict(model.tokenizer)
    spelled = [tok.token_bytes(i) for i in adapter.token_ids]  # byte pieces only
    assert {b";", b"|", b"~"} <= set(spelled) and all(len(s) == 1 for s in spelled)
    rows = adapter.tensors["wte.token_rows"]
    assert np.abs(rows - model.parameters()["wte"][adapter.token_ids]).max() > 1e-3
    code, merged = run("merge", base / "base", base / "tok" / "adapter.sllm", "-o",
                       base / "tok.sllm")
    assert code == 0, merged
    ppl = []
    attach = ("--adapter", base / "tok" / "adapter.sllm")
    for m, more in ((base / "tok.sllm", ()), (base / "base", attach)):
        code, out = run("eval", m, "--corpus", base / "odd.txt", "--backend", "numpy", *more)
        assert code == 0, out
        ppl.append(float(out.split("perplexity ")[1].split()[0]))
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-4)
    code, out = finetune(base, "notok", "--lora-tokens", "none")
    assert code == 0 and not Adapter.load(base / "notok" / "adapter.sllm").token_ids, out
    code, out = finetune(base, "badtok", "--lora-tokens", "3,99999")
    assert code == 1 and "--lora-tokens): token id 99999 is not an integer in [0, " in " ".join(out.split())


def test_a_resumed_run_with_token_rows_equals_an_uninterrupted_one(base):
    (base / "odd2.txt").write_text("the pirate; sails ~ the sea | and the parrot sings . " * 150)
    same = ("--corpus", base / "odd2.txt", "--schedule", "constant", "--warmup", 0,
            "--batch-size", 4, "--eval-every", 6, "--eval-batches", 2, "--backend", "numpy", "-q")
    assert run("finetune", base / "base", "--out", base / "rw", "--steps", 12, *same)[0] == 0
    assert run("finetune", base / "base", "--out", base / "rp", "--steps", 6, *same)[0] == 0
    code, out = run("train", "--resume", base / "rp", "--steps", 12, "-q")
    assert code == 0, out
    cfg = json.loads((base / "rp" / "train_config.json").read_text())
    assert cfg["lora_tokens"] != "none"  # auto, resolved and recorded
    losses = [[json.loads(x)["loss"] for x in (base / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("rw", "rp")]
    assert losses[0] == losses[1]
    a, b = (Adapter.load(base / d / "adapter.sllm") for d in ("rw", "rp"))
    assert a.token_ids == b.token_ids and np.array_equal(a.tensors["wte.token_rows"],
                                                         b.tensors["wte.token_rows"])
