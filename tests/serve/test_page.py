"""The try-it page at GET /, driven in headless Chromium (the system chromium, through Playwright)."""

from __future__ import annotations

import shutil

import openai
import pytest

from tests.serve.conftest import start_server

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)"
)


def test_page_picks_an_adapter_streams_side_by_side_and_shows_reuse(tiny_dir, adapter_dir, tokenizer, tmp_path):
    engine, server = start_server(tiny_dir, tokenizer, adapter_dir)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model-a option').length >= 3")
            options = page.eval_on_selector_all("#model-a option", "els => els.map(e => e.value)")
            assert set(options) >= {"tiny", "dora", "alora", "mopeft"}  # fed by /v1/models
            page.select_option("#model-a", "dora")
            page.check("#side")
            page.select_option("#model-b", "tiny")
            page.fill("#max-tokens", "12")
            for turn, message in enumerate(["Tell me about cats.", "And dogs?"], start=1):
                page.fill("#input", message)
                page.click("#send")
                page.wait_for_function(
                    f"document.querySelectorAll('.stats[data-tokens]').length == {2 * turn}", timeout=60_000
                )
            page.screenshot(path=str(tmp_path / "page.png"))
            replies = {
                side: page.eval_on_selector_all(
                    f"section[data-side={side}] .msg.assistant", "els => els.map(e => e.textContent)"
                )
                for side in ("a", "b")
            }
            reused = page.eval_on_selector_all(
                "section[data-side=a] .stats", "els => els.map(e => Number(e.dataset.reused))"
            )
            stats = page.inner_text("section[data-side=a] .stats")
            browser.close()
        # the streamed replies are what the API answers for the same conversation
        history = [{"role": "user", "content": "Tell me about cats."}]
        for side, model in (("a", "dora"), ("b", "tiny")):
            want = client.chat.completions.create(model=model, messages=history, max_tokens=12, temperature=0)
            assert replies[side][0] == want.choices[0].message.content
        assert replies["a"][0] != replies["b"][0]
        assert reused[0] == 0 and reused[1] >= 16  # the second turn reused the first from the prefix cache
        assert "tokens/s" in stats and "reused prefix" in stats
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        server.stop()
        engine.close()
