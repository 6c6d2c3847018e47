"""Render a pytest-benchmark JSON file as a markdown table: per group, each backend's
median, GFLOP/s, and speed-up over numpy and over the previous roadmap phase."""
import json
import sys

PREVIOUS = {"wasm": "numpy", "wasm-simd": "wasm", "cpp": "numpy"}


def summarize(path: str) -> str:
    """Markdown for the benchmark file at `path`."""
    data = json.load(open(path))
    groups: dict[str, dict[str, dict]] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[b["extra_info"]["backend"]] = b
    lines = [f"Benchmarks of {data['datetime']} on {data['machine_info']['cpu'].get('brand_raw', '?')}",
             "", "| group | backend | phase | median | GFLOP/s | tokens/s | vs numpy | vs previous phase |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group, by_backend in groups.items():
        for name, b in by_backend.items():
            med = b["stats"]["median"]
            info = b["extra_info"]
            gflops = f"{info['flops'] / med / 1e9:.1f}" if "flops" in info else ""
            tokens = f"{info['tokens'] / med:,.0f}" if "tokens" in info else ""
            ratio = _ratio(by_backend, "numpy", med)
            prev = _ratio(by_backend, PREVIOUS.get(name), med)
            lines.append(f"| {group} | {name} | {info['phase']} | {med * 1e3:.2f} ms | {gflops} "
                         f"| {tokens} | {ratio} | {prev} |")
    return "\n".join(lines) + "\n"


def _ratio(by_backend, other, median):
    if other is None or other not in by_backend:
        return ""
    return f"{by_backend[other]['stats']['median'] / median:.2f}x"


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
