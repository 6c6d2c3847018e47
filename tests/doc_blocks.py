"""The executed-docs machinery of tests/test_docs.py: find the marked code blocks of a
Markdown page, and compare a command's output with the output the page shows.

A code block is marked by an HTML comment on the line just before its opening fence
(invisible on the rendered page):

    <!-- doc-test: run [OPTIONS] -->      run it (shell: each `$ ` line; python: the block)
    <!-- doc-test: output -->             the output of the python block just above
    <!-- doc-test: write NAME -->         written to NAME in the page's directory first
    <!-- doc-test: skip REASON -->        not run, and why

Every block that holds commands (a fence tagged console/sh/bash/shell, or any line that
starts with `$ `) and every python block must carry a marker: an unmarked one fails the
test, so a new example cannot be left out by accident. Options of `run`:

    tolerance=R        numbers in the output may differ by a relative R (default: exact)
    timing             times, rates and speed-ups (`1.6s`, `9,850 tok/s`, `1.48x`) are not compared
    illustrative=TEXT  an expected line containing TEXT stands for any one line, or none
                       (repeatable: progress bars, ids, dates)
    sub=OLD=>NEW       run the commands with OLD replaced by NEW (smaller sizes; repeatable)
    requires=A,B       skip unless the Python modules A and B import
    slow               run only when SLLM_DOCS_SLOW=1 (.ci/run sets it)

In an expected output a line `...` stands for any number of lines. Everything else must
match exactly, number by number (after removing thousands separators).
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")
SHELL_LANGS = {"console", "sh", "bash", "shell", "shell-session"}
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
# A unit after a number, or a rate's name before it, marks a time or a rate (option `timing`).
TIMING_UNIT = re.compile(r"\s?(?:ms|us|µs|s|min|tok/s|tokens/s|GFLOP/s|GB/s|x)(?![\w/])")
TIMING_NAME = re.compile(r'(?:"tokens_per_s": |eta )$')


@dataclass
class Block:
    """One fenced code block of a page, with its marker (if any)."""
    page: Path
    line: int                # 1-based line of the opening fence
    lang: str
    text: str
    action: str = ""         # run, output, write, skip, or "" when unmarked
    argument: str = ""       # write: the file name; skip: the reason
    options: dict[str, list[str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def is_command(self) -> bool:
        return (self.lang in SHELL_LANGS or self.lang == "python"
                or any(line.startswith("$ ") for line in self.text.splitlines()))

    def option(self, name: str, default: str = "") -> str:
        return self.options.get(name, [default])[-1]


def parse_marker(body: str) -> tuple[str, str, dict[str, list[str]]]:
    """`run timing tolerance=0.05` -> ("run", "", {"timing": [""], "tolerance": ["0.05"]})."""
    action, _, rest = body.partition(" ")
    if action in ("skip", "write"):
        return action, rest.strip(), {}
    options: dict[str, list[str]] = {}
    for word in shlex.split(rest):
        key, _, value = word.partition("=")
        options.setdefault(key, []).append(value)
    return action, "", options


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == opening[1]), None)
        if end is None:
            raise ValueError(f"{page.name}:{i + 1}: code fence never closed")
        block = Block(page, i + 1, opening[2], "\n".join(lines[i + 1:end]))
        marker = MARKER.match(lines[i - 1]) if i else None
        if marker:
            block.action, block.argument, block.options = parse_marker(marker[1])
        found.append(block)
        i = end + 1
    return found


def commands(text: str) -> list[tuple[str, list[str]]]:
    """A console transcript as (command, expected output lines): a command is a `$ ` line
    and its continuation lines (a trailing backslash, or a quote still open)."""
    result: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if result:
                result[-1][1].append(lines[i])
            i += 1
            continue
        command = lines[i][2:]
        while i + 1 < len(lines) and (command.endswith("\\") or not _complete(command)):
            i += 1
            command += "\n" + lines[i]
        result.append((command, []))
        i += 1
    return result


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


@dataclass
class Expectation:
    """How to compare: relative tolerance, timing numbers free, illustrative lines."""
    tolerance: float = 0.0
    timing: bool = False
    illustrative: tuple[str, ...] = ()


def mismatch(expected: list[str], actual: str, how: Expectation) -> str | None:
    """None when `actual` (a program's output) is what the page shows, else why not."""
    want = _trim(expected)
    got = _trim(actual.splitlines())
    pattern, numbers = _pattern(want, how)
    found = re.fullmatch(pattern, "\n".join(got) + "\n")
    if not found:
        return "the output does not match the page:\n" + _diff(want, got)
    for k, (shown, free) in enumerate(numbers):
        printed = found.group(f"n{k}")
        if not free and not _close(shown, printed, how.tolerance):
            return (f"the page shows {shown} where the output has {printed} (tolerance "
                    f"{how.tolerance}):\n" + _diff(want, got))
    return None


def _pattern(lines: list[str], how: Expectation) -> tuple[str, list[tuple[str, bool]]]:
    """A regex over the whole output and, for each number group n0, n1, ..., the number the
    page shows and whether it is free (timing)."""
    parts: list[str] = []
    numbers: list[tuple[str, bool]] = []
    for line in lines:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        elif any(mark in line for mark in how.illustrative):
            parts.append(r"(?:[^\n]*\n)?")
        else:
            parts.append(_line_pattern(line, how, numbers) + r"\n")
    return "".join(parts), numbers


def _line_pattern(line: str, how: Expectation, numbers: list[tuple[str, bool]]) -> str:
    out, pos = [], 0
    for number in NUMBER.finditer(line):
        out.append(re.escape(line[pos:number.start()]))
        free = how.timing and bool(TIMING_UNIT.match(line, number.end())
                                   or TIMING_NAME.search(line, 0, number.start()))
        out.append(f"(?P<n{len(numbers)}>{NUMBER.pattern})")
        numbers.append((number[0], free))
        pos = number.end()
    out.append(re.escape(line[pos:]))
    return "".join(out)


def _close(shown: str, printed: str, tolerance: float) -> bool:
    if tolerance == 0:
        return shown == printed
    a, b = float(shown.replace(",", "")), float(printed.replace(",", ""))
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=0.0)


def _trim(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _diff(want: list[str], got: list[str]) -> str:
    return ("--- the page shows\n" + "\n".join(want) + "\n--- the command printed\n"
            + "\n".join(got))
