"""The docs are executed: every marked shell and Python block of README.md and docs/*.md runs,
in a fresh directory per page, and prints what the page shows. The marker syntax is in
tests/doc_blocks.py (and docs/CONTRIBUTING.md); an unmarked command block fails."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import Block, Expectation, blocks, commands, mismatch

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 300


def _env() -> dict[str, str]:
    """The environment of a reader who activated .venv: this interpreter's `sllm` and
    `python` first on PATH, unbuffered output (warnings stay in order), 100 columns."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="100", NO_COLOR="1", TERM="dumb")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _expectation(block: Block) -> Expectation:
    return Expectation(tolerance=float(block.option("tolerance", "0")),
                       timing="timing" in block.options,
                       illustrative=tuple(block.options.get("illustrative", ())))


@functools.cache
def _importable(module: str) -> bool:
    """Whether the page's commands can import `module`: asked of a fresh interpreter in their
    environment, not of this process, where another test may have left it imported from a
    path it has since removed (tests/test_plugin_example.py's example plugin)."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([sys.executable, "-c", probe], env=_env(), timeout=TIMEOUT).returncode == 0


def _skip_reason(block: Block) -> str | None:
    missing = [m for m in block.option("requires").split(",") if m and not _importable(m)]
    if missing:
        return f"needs {', '.join(missing)}"
    if "slow" in block.options and os.environ.get("SLLM_DOCS_SLOW") != "1":
        return "slow: runs when SLLM_DOCS_SLOW=1 (.ci/run)"
    return None


def _substitute(text: str, block: Block) -> str:
    """The block's commands with the marker's sub=OLD=>NEW rules applied."""
    for rule in block.options.get("sub", ()):
        old, _, new = rule.partition("=>")
        assert old in block.text, f"{block.where}: sub={rule!r} matches nothing in the block"
        text = text.replace(old, new)
    return text


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    return done.stdout


def _run_shell(block: Block, cwd: Path) -> list[str]:
    failures = []
    for command, expected in commands(block.text):
        command = _substitute(command, block)
        output = _run(["bash", "-c", command], cwd)
        why = mismatch(expected, output, _expectation(block))
        if why:
            failures.append(f"{block.where}: $ {command}\n{why}")
    return failures


def _run_python(block: Block, output: Block | None, cwd: Path) -> list[str]:
    script = cwd / f"doc_block_{block.line}.py"
    script.write_text(_substitute(block.text, block), encoding="utf-8")
    printed = _run([sys.executable, script.name], cwd)
    expected = output.text.splitlines() if output else []
    why = mismatch(expected, printed, _expectation(block))
    return [f"{block.where}: python block\n{why}"] if why else []


def run_page(page: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """Run a page's marked blocks in order in `cwd`; (failures, skipped blocks with why)."""
    found = blocks(page)
    for block in found:
        if block.action == "write":
            (cwd / block.argument).write_text(block.text + "\n", encoding="utf-8")
    failures, skipped = [], []
    for i, block in enumerate(found):
        if block.action != "run":
            continue
        reason = _skip_reason(block)
        if reason:
            skipped.append(f"{block.where}: {reason}")
        elif block.lang == "python":
            following = found[i + 1] if i + 1 < len(found) else None
            output = following if following and following.action == "output" else None
            failures += _run_python(block, output, cwd)
        else:
            failures += _run_shell(block, cwd)
    return failures, skipped


def _has_runs(page: Path) -> bool:
    return any(b.action == "run" for b in blocks(page))


@pytest.mark.parametrize("page", [p for p in PAGES if _has_runs(p)], ids=lambda p: p.name)
def test_page_prints_what_it_shows(page, tmp_path):
    """Every marked block of the page runs and prints the output the page shows."""
    # The shipped configs and the examples, as seen from the repository root where the
    # README starts.
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    failures, skipped = run_page(page, tmp_path)
    assert not failures, "\n\n".join(failures)
    if skipped:
        print("not run here:", *skipped, sep="\n  ")


def test_every_command_block_is_marked():
    """A shell or Python block without a doc-test marker fails: each example is either run
    or says why not, so none is forgotten."""
    unmarked = [b.where for page in PAGES for b in blocks(page) if b.is_command and not b.action]
    bad = [f"{b.where}: unknown doc-test action {b.action!r}" for page in PAGES
           for b in blocks(page) if b.action not in ("", "run", "output", "write", "skip")]
    assert not unmarked, f"code blocks without a <!-- doc-test: ... --> marker: {unmarked}"
    assert not bad, bad


def test_output_blocks_follow_a_python_block():
    """An `output` marker belongs right after the python block it is the output of."""
    for page in PAGES:
        found = blocks(page)
        for prev, block in zip([None, *found], found, strict=False):
            if block.action == "output":
                assert prev is not None and prev.lang == "python", f"{block.where}: output of what?"


# The comparison itself, on made-up output: it must accept what the page shows and refuse
# what it does not.
SHOWN = ["model: 115,072 parameters, backend cpp", "...", "done: step 300, loss 1.8883, 1.6s",
         "━━━ 300/300 eta 00:00"]


def test_matching_accepts_equal_output_and_timing_differences():
    how = Expectation(tolerance=0.01, timing=True, illustrative=("━",))
    out = "model: 115,072 parameters, backend cpp\nextra\nlines\ndone: step 300, loss 1.8890, 42.0s\n"
    assert mismatch(SHOWN, out, how) is None


def test_matching_refuses_changed_numbers_and_text():
    how = Expectation(tolerance=0.01, timing=True, illustrative=("━",))
    assert "1.8883" in mismatch(SHOWN, "model: 115,072 parameters, backend cpp\n"
                                "done: step 300, loss 2.5, 1.6s\n", how)
    assert "does not match" in mismatch(SHOWN, "model: 115,072 parameters, backend numpy\n"
                                        "done: step 300, loss 1.8883, 1.6s\n", how)
    assert mismatch(["1.6s"], "9.9s", Expectation()) is not None  # timing is opt-in
    assert mismatch(["a", "b"], "a\n", Expectation()) is not None  # a missing line


def test_a_page_runs_with_its_options(tmp_path):
    """run_page on a made-up page: sub= shrinks a size, requires= skips, a wrong output fails."""
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-test: run sub=1000=>3 -->\n```\n$ seq 1000 | wc -l\n3\n```\n\n"
                    "<!-- doc-test: run requires=no_such_module -->\n```\n$ false\nx\n```\n\n"
                    "<!-- doc-test: run -->\n```\n$ echo 41\n42\n```\n")
    failures, skipped = run_page(page, tmp_path)
    assert skipped == ["page.md:8: needs no_such_module"]
    assert len(failures) == 1 and failures[0].startswith("page.md:14: $ echo 41")


def test_transcripts_split_into_commands_and_outputs():
    text = '$ sllm a \\\n    --b 1\nout 1\n$ sllm c "x\ny"\nout 2\nout 3'
    assert commands(text) == [("sllm a \\\n    --b 1", ["out 1"]),
                              ('sllm c "x\ny"', ["out 2", "out 3"])]


def test_links_point_inside_the_repository():
    """Every relative link of README.md and docs/*.md names a file of the repository (the
    README once linked ../shared/CONTRACT.md, outside it)."""
    link = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
    broken = []
    for page in PAGES:
        for target in link.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            path = (page.parent / target).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
