"""Take docs/browser-page.png: the page `sllm export-web` writes, in headless Chromium
(the Debian package, tests/browser.py), after a LoRA fine-tune on a short story and three
chat turns with the adapter, so the picture shows the chat, the fine-tune panel with its
adapter, and the loss curve. The site is served on 127.0.0.1 only.

    .venv/bin/python bench/page_screenshot.py runs/demo -o docs/browser-page.png

MODEL is what `make demo` trains (runs/demo) or any model that carries its tokenizer.
Sampling in the page is not seeded, so the chat's answers differ from run to run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sllm.export_web import export_site  # noqa: E402 - after the sys.path insert

TURNS = ["Hello! How are you?", "Do you have a pet?", "What do you like to eat for lunch?"]
STORY = ("Once upon a time, there was a little fox named Pip. Pip lived in a small house near "
         "the river. Every morning, Pip liked to walk to the market with his friend Tom the "
         "bear. One day, Pip lost his red hat. He looked under the bed and behind the door, "
         "but it was not there. Tom helped him look near the tree. At last, Tom found the red "
         "hat in the garden. Pip was so happy that he shared his apples with Tom. ") * 6


def wait(driver: Any, condition: Any, timeout: float = 300) -> None:
    """Poll `condition(driver)` until it holds (AssertionError after `timeout` s)."""
    end = time.monotonic() + timeout
    while not condition(driver):
        if time.monotonic() > end:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.2)


def shoot(driver: Any, url: str, out: Path, steps: int) -> None:
    """Fine-tune a LoRA adapter, chat with it (a new adapter starts a new chat), then save
    the window as `out`."""
    from selenium.webdriver.common.by import By
    driver.get(url)
    driver.execute_script("indexedDB.deleteDatabase('sllm'); localStorage.clear()")
    driver.get(url)  # a fresh page: no stored model or adapter
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    find = lambda i: driver.find_element(By.ID, i)  # noqa: E731
    driver.execute_script("arguments[0].value = arguments[1]", find("tune-text"), STORY)
    find("tune-text").send_keys(" ")  # an input event: the page checks the words
    find("adapter-name").clear()
    find("adapter-name").send_keys("pip-the-fox")
    find("steps").clear()
    find("steps").send_keys(str(steps))
    find("tune").click()
    wait(driver, lambda d: d.find_element(By.ID, "tune-status").text.startswith("done"))
    for n, turn in enumerate(TURNS, 1):
        find("chat-input").send_keys(turn)
        find("send").click()
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.bot")) == n  # noqa: B023
             and not d.find_element(By.ID, "send").get_attribute("disabled"))
    driver.execute_script("document.getElementById('tune-text').scrollTop = 0")
    driver.save_screenshot(str(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .sllm model with its tokenizer, or a run directory")
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "browser-page.png")
    p.add_argument("--steps", type=int, default=40, help="LoRA fine-tuning steps")
    args = p.parse_args()
    from browser import StaticServer, chromium, why_no_browser
    reason = why_no_browser()
    if reason:
        sys.exit(f"no browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        export_site(args.model, Path(tmp) / "site")
        server, driver = StaticServer(Path(tmp) / "site"), chromium()
        driver.set_window_size(1280, 1000)  # the whole of both cards
        try:
            shoot(driver, server.url + "index.html", args.output, args.steps)
        finally:
            driver.quit()
            server.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
