"""The article edition: the draft's chapters with origin / idea / verdict, the corrections with sources, the
tone switch, WeChat-ready HTML, and the self-check in headless Chromium at 375 px and at desktop width."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from lorafam.report import selfcheck as S
from lorafam.report.build import build_report
from tests.unit.test_report_build import fake

ARTICLE_KEYS = ("article.zh.html", "article.zh.md", "article.en.html", "article.en.md")


def _results(root: Path) -> Path:
    from lorafam.arena import results as R

    fake(root, "base", "base", 0.0, params=0, kl=0.001, size=None)
    for seed, acc in ((0, 0.58), (1, 0.54)):
        fake(
            root,
            "lorafam",
            "lora",
            acc,
            seed=seed,
            kl=1.2,
            params=4_884_480,
            curve=[[s, 3.0 / s] for s in range(1, 25)],
        )
    fake(root, "lorafam", "loraplus", 0.60, curve=[[s, 2.0 / s] for s in range(1, 25)])
    fake(root, "lorafam", "dora", 0.62, params=5_040_000, step=3.0)
    fake(root, "lorafam", "quantum", 0.50, params=15_030)
    fake(root, "full", "full-ft", 0.30, params=135_000_000, step=3.8, rss=1500.0, kl=0.14, size=None)
    R.atomic_write_json(root / "latest.json", {"budget": "quick"})
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("article")
    return build_report(_results(tmp / "res"), tmp / "out", bench_dir=None)


def test_every_chapter_with_origin_idea_and_verdict(built: dict[str, Path]) -> None:
    zh, en = built["article.zh.md"].read_text(), built["article.en.md"].read_text()
    chapters = [
        "开场",
        "祖师爷：LoRA",
        "穷鬼救星：QLoRA",
        "速度狂魔：LoRA+",
        "篡位者：DoRA",
        "奇奇怪怪的亲戚",
        "2025 年的诸神之战",
        "尾声",
    ]
    positions = [zh.index(f"## {c}" if c in ("开场", "尾声") else c) for c in chapters]
    assert positions == sorted(positions)  # the draft's order
    for name in ("AdaLoRA", "LongLoRA", "rsLoRA", "Quantum-PEFT", "MoPEFT", "aLoRA"):
        assert f"### {name}" in zh and f"### {name}" in en
    assert zh.count("**出身**") == zh.count("**绝学**") == zh.count("**评价**") == 10  # one each per member
    assert en.count("**Origin**") == en.count("**The move**") == en.count("**Verdict**") == 10
    # each correction of the draft, with its source
    for draft, source in (
        ("MoPEFT 是 CVPR 2025 的论文", "CVPRW 2025 proceedings"),
        ("aLoRA 发表于 NeurIPS 2025", "arXiv 2504.12397"),
        ("24 GB 的显卡就能微调 70B", "arXiv 2305.14314"),
        ("7B-100k 模型是全量微调", "LongLoRA README"),
    ):
        box = next(b for b in zh.split("\n\n") if draft in b)
        assert "**原稿说**" in box and source in box, (draft, box)
    assert "没有找到官方公开代码" in zh  # Quantum-PEFT
    # a measured verdict: the number with its interval
    assert re.search(r"差 \+?-?\d+\.\d 个百分点（(噪声范围|95% 置信区间) -?\+?\d+\.\d 到 [-+]\d+\.\d", zh)


def test_the_zh_edition_says_each_idea_in_chinese(built: dict[str, Path]) -> None:
    from lorafam.family import family

    zh = built["article.zh.md"].read_text()
    for m in family():
        assert m.idea not in zh, m.name  # the registry's English sentence


def test_wechat_html_is_inline_only_with_numbered_figures(built: dict[str, Path], tmp_path: Path) -> None:
    record = json.loads(built["data"].read_text())
    for lang in ("zh", "en"):
        page = built[f"article.{lang}.html"].read_text()
        for banned in ("<style", "class=", "<script", "<link", "@font-face", "url(", "<table"):
            assert banned not in page, (lang, banned)
        srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
        assert srcs == record["article"]["figures"][lang]  # the upload order is the order of appearance
        assert srcs and all(re.fullmatch(rf"article-{lang}/\d\d-[a-z0-9-]+\.png", s) for s in srcs)
        assert [int(s.split("/")[1][:2]) for s in srcs] == list(range(1, len(srcs) + 1))
        for s in srcs:
            assert (built["data"].parent / s).read_bytes().startswith(b"\x89PNG")
    inline = build_report(
        built["data"].parent.parent / "res",
        tmp_path / "inline",
        bench_dir=None,
        inline_images=True,
        editions=("article",),
    )
    page = inline["article.zh.html"].read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_plain_tone_drops_the_flourishes_not_the_facts(built: dict[str, Path], tmp_path: Path) -> None:
    from lorafam.report.words import article_zh

    plain = build_report(
        built["data"].parent.parent / "res",
        tmp_path / "plain",
        bench_dir=None,
        tone="plain",
        editions=("article",),
    )
    lively_zh, plain_zh = built["article.zh.md"].read_text(), plain["article.zh.md"].read_text()
    flair = [v for k, v in article_zh.ART.items() if k.startswith("flair_")]
    assert any(f in lively_zh for f in flair)
    assert not any(f in plain_zh for f in flair)
    assert "祖师爷" in lively_zh and "祖师爷" not in plain_zh
    # fake() runs carry per-item records, so the lede is the interval note (ci_note), not the noise-floor warning
    assert "先交代规矩" in lively_zh and "先交代规矩" not in plain_zh and "说明：这是 quick 预算" in plain_zh
    facts = json.loads(built["data"].read_text())["article"]["facts"]
    assert json.loads(plain["data"].read_text())["article"]["facts"] == facts  # same numbers either way
    with pytest.raises(ValueError, match="unknown tone 'loud'.*lively, plain"):
        build_report(
            built["data"].parent.parent / "res", tmp_path / "x", bench_dir=None, tone="loud", editions=("article",)
        )


def test_self_check_catches_english_sentences_and_invented_numbers() -> None:
    zh = ["LoRA 冻结基座，只训练两个小矩阵。", "This sentence is plainly English.", "Hugging Face PEFT 的基准"]
    assert S.english_sentences(zh, {"Hugging Face PEFT"}) == ["This sentence is plainly English"]
    values = {0.0625, 4884480.0, 1.77, -6.25}
    written = S.numbers(["完全匹配率 6.2%，参数 4,884,480 个，1.77 倍，差 -6.2，另有 42.42"])
    assert written == ["6.2", "4,884,480", "1.77", "-6.2", "42.42"]
    assert S.unfound_numbers(written, values) == ["42.42"]
    assert S.numbers(["SmolLM2-135M, GSM8K, W0"]) == []  # digits inside names are not numbers


def test_member_styles_are_distinct_in_colour_and_marker() -> None:
    from lorafam.family import family
    from lorafam.report.style import member_style

    styles = [member_style(m.name) for m in family()] + [member_style("full-ft")]
    assert len({c for c, _ in styles}) == len(styles)
    assert len({m for _, m in styles}) == len(styles)


@pytest.mark.skipif(S.chromium() is None, reason="chromium not found (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_article_in_chromium_at_phone_and_desktop_width(built: dict[str, Path], lang: str, tmp_path: Path) -> None:
    from lorafam.family import family

    page = built[f"article.{lang}.html"]
    record = json.loads(built["data"].read_text())
    n_figures = len(record["article"]["figures"][lang])
    for width in (375, 1280):
        r = S.render(page, width)
        assert r["client"] == width
        assert r["scroll"] <= r["client"], (width, r["wide"])  # no horizontal overflow
        assert not r["wide"], (width, r["wide"])
        assert len(r["imgs"]) == n_figures and all(i["ok"] for i in r["imgs"]), r["imgs"]  # every figure present
        assert all(i["width"] <= r["client"] for i in r["imgs"])
    texts = r["texts"]
    if lang == "zh":
        names = {m.title for m in family()} | {m.name for m in family()}
        assert S.english_sentences(texts["text"], names) == []
    assert S.unfound_numbers(S.numbers(texts["text"] + texts["cite"]), S.data_values(record)) == []
    shots = Path(os.environ.get("LORAFAM_SHOTS", tmp_path))  # set it to keep the screenshots and look at them
    shots.mkdir(parents=True, exist_ok=True)
    for width, height in ((375, 2400), (1280, 1400)):
        out = shots / f"article-{lang}-{width}.png"
        S.screenshot(page, out, width, height)
        assert out.stat().st_size > 10_000


def test_article_is_deterministic(built: dict[str, Path], tmp_path: Path) -> None:
    again = build_report(
        built["data"].parent.parent / "res", tmp_path / "again", bench_dir=None, editions=("article",)
    )
    for key in ARTICLE_KEYS:
        assert again[key].read_bytes() == built[key].read_bytes(), key
    for rel in json.loads(built["data"].read_text())["article"]["figures"]["zh"]:
        assert (again["data"].parent / rel).read_bytes() == (built["data"].parent / rel).read_bytes(), rel


def _with_items(root: Path, member: str, em: list[list[int]], seed: int = 0, impl: str = "lorafam") -> None:
    """A run whose result file carries per-item records at several evaluation points (arena schema 2)."""
    from lorafam.arena import results as R

    n = len(em[-1])
    steps = [8 * (j + 1) for j in range(len(em))]
    # along the run the arena scores a fixed prefix of the items (here 8), at the end all of them
    em = [e[:8] for e in em[:-1]] + [em[-1]]
    evals = [
        {"step": s, "items": len(e), "em": e, "nll": [0.5 + 0.1 * (1 - v) for v in e], "tokens": [2] * len(e)}
        for s, e in zip(steps, em)
    ]
    run = R.RunInfo(f"{impl}--{member}--add3--s{seed}", impl, member, "add3", seed, "quick", "h", status="ok")
    run.started_at, run.peak_rss_mb = f"2026-01-01T00:00:{seed:02d}", 900.0
    info = R.TrainInfo(
        settings={"steps": steps[-1], "eval_items": n, "rank": 16, "forget_prompts": 8, "threads": 2},
        trainable_params=15_030 if member == "quantum" else 4_884_480,
        total_params=135_000_000,
        steps=steps[-1],
        seconds_per_step=2.0,
        loss_curve=[[s, 3.0 / s] for s in range(1, steps[-1] + 1)],
        eval_curve=[[s, sum(e) / n] for s, e in zip(steps, em)],
        accuracy=sum(em[-1]) / n,
        test_items=n,
        forgetting_kl=0.1,
        adapter_bytes=19_000_000,
        evals=evals,
        item_keys=[f"item{i}" for i in range(n)],
    )
    R.write_result(root / "quick" / f"{run.run_id}.json", R.RunResult(run, info, R.collect_meta()))


def test_intervals_come_from_the_per_item_records(tmp_path: Path) -> None:
    from dataclasses import fields

    from lorafam.arena import results as R

    if "evals" not in {f.name for f in fields(R.TrainInfo)}:
        pytest.skip("the arena's result files carry no per-item records yet")
    from lorafam.arena import stats

    root = tmp_path / "res"
    lora = [[1, 0, 0, 1] * 10, [1, 1, 0, 1] * 10, [1, 1, 1, 1] * 9 + [1, 0, 1, 1]]
    dora = [[0, 0, 0, 1] * 10, [1, 0, 0, 1] * 10, [1, 1, 0, 1] * 10]
    _with_items(root, "lora", lora)
    _with_items(root, "dora", dora)
    _with_items(root, "base", [[0] * 40], impl="base")
    R.atomic_write_json(root / "latest.json", {"budget": "quick"})
    paths = build_report(root, tmp_path / "out", bench_dir=None, editions=("article",))
    zh = paths["article.zh.md"].read_text()
    ci = stats.paired_difference(dora[-1], lora[-1])
    dora_part = zh.split("## 第四章")[1].split("## 第五章")[0]
    expected = f"95% 置信区间 {100 * ci.low:+.1f} 到 {100 * ci.high:+.1f}"
    assert f"差 {100 * ci.estimate:+.1f} 个百分点（{expected}" in dora_part
    assert "答案的负对数似然差" in dora_part  # the NLL gap beside the exact-match gap
    assert "配对自助法" in zh.split("## 开场")[0] and "噪声范围" not in zh  # the lede explains the intervals
    figures = json.loads(paths["data"].read_text())["article"]["figures"]["zh"]
    assert any("eval-curves" in f for f in figures)  # three evaluation points per run: a curve with bands
    assert "训练过程中的完全匹配率（前 8 道测试题，阴影为 95% 区间）" in zh  # the same items at every point
