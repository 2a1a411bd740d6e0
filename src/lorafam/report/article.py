"""Assembly of the article edition: the draft's chapters, in its order, filled from the same verdicts and advice as
the lab report.

Chapters (``shared/ARTICLE-DRAFT.md``): an opening on full fine-tuning against the craftsman's path; one chapter
per member with 出身 (origin), 绝学 (the idea) and 评价 (the verdict); the odd relatives; the 2025 newcomers; a
closing. Where the draft's claim differs from what was measured or found, a box shows both with the source.
Sentences come from :mod:`lorafam.report.words` (``article_zh`` / ``article_en``); every number passes through
:meth:`Article.num`, which records it, so ``report-data.json`` holds each number the article prints.
"""

from __future__ import annotations

from typing import Any

from lorafam.report import advice as A
from lorafam.report import article_figures as AF
from lorafam.report import claims as C
from lorafam.report import figures as F
from lorafam.report.advice import gap
from lorafam.report.blocks import named
from lorafam.report.data import ReportData, Row
from lorafam.report.edition import DISPLAY, TONES, WORDS, Article, _p, cite
from lorafam.report.render import Block
from lorafam.report.sources import SOURCES
from lorafam.report.style import figure_lang
from lorafam.report.text import CLAIMS, REASONS, _Safe

# The draft's chapters: (heading key, flourish key, members). Members the draft does not name join the relatives.
CHAPTERS: list[tuple[str, list[str]]] = [
    ("founder", ["lora"]),
    ("saviour", ["qlora"]),
    ("speed", ["loraplus"]),
    ("usurper", ["dora"]),
    ("relatives", ["adalora", "longlora", "rslora"]),
    ("gods", ["quantum", "mopeft", "alora"]),
]
UNDECIDED = getattr(C, "UNDECIDED", "undecided")  # an interval that still straddles the claim's threshold
LEADS = {
    C.SUPPORTED: "lead_supported",
    C.CONTRADICTED: "lead_contradicted",
    C.MIXED: "lead_mixed",
    UNDECIDED: "lead_undecided",
}
MEMBER_CLAIMS: dict[str, list[str]] = {
    "lora": ["lora_two_matrices", "lora_forgets"],
    "qlora": ["qlora_quarter", "qlora_70b"],
    "loraplus": ["loraplus"],
    "dora": ["dora_vs_full"],
    "adalora": ["adalora_unstable"],
    "longlora": ["longlora", "b_longlora_plus"],
    "quantum": ["quantum"],
    "mopeft": ["mopeft"],
    "alora": ["alora"],
}
ORIGIN_CHECK = {"mopeft": "b_mopeft_venue", "alora": "b_alora_venue", "longlora": "b_longlora_100k"}
ORIGIN_NOTE = {"quantum": "b_quantum_code"}
CITED: dict[str, list[tuple[str, str]]] = {  # member → [(sentence key, source key)]
    "loraplus": [("loraplus_paper", "loraplus_paper")],
    "dora": [("peft_dora", "peft_bench"), ("dora_speed", "dora_speed"), ("dora_infer", "dora_infer")],
    "adalora": [("peft_adalora", "peft_bench"), ("adalora_repo", "adalora_repo")],
    "longlora": [("longlora_readme", "longlora_readme")],
    "rslora": [("peft_rslora", "peft_bench")],
    "alora": [("alora_serving", "alora_serving")],
    "closing": [("peft_full", "peft_bench")],
}


def build_article(
    lang: str, tone: str, data: ReportData, verdicts: list[C.Verdict], command: str
) -> tuple[list[Block], Article]:
    """The whole article for ``lang`` and ``tone``: blocks in order, and the :class:`Article` (facts, figures)."""
    if tone not in TONES:
        raise ValueError(f"unknown tone {tone!r}; valid: {', '.join(TONES)}")
    art = Article(lang, tone, data, {v.claim: v for v in verdicts})
    b = [Block("h1", art.t("title"))] + _lede(art) + _opening(art)
    from lorafam.family import family

    members = {m.name: m for m in family()}
    placed = {n for _, names in CHAPTERS for n in names}
    for key, names in CHAPTERS:
        names = names + ([n for n in members if n not in placed] if key == "relatives" else [])
        names = [n for n in names if n in members]
        b += [Block("h2", art.t(f"h_{key}"))] + _p(art.t(f"flair_{key}"))
        for n in names:
            b += member_section(art, members[n], heading=len(names) > 1)
    b += _closing(art) + _notes(art, command)
    return b, art


def _lede(art: Article) -> list[Block]:
    d = art.data
    runs = art.num("runs", sum(len(r.runs) for r in d.rows))
    b = _p(art.t("lede", budget=d.budget, runs=runs), art.sp, art.t("flair_lede"))
    task = C.primary_task(d)
    g = A.gap(d.row("lorafam", "lora"), d.row("base", "base"), task)
    args = {
        "budget": d.budget,
        "steps": art.num("steps", d.settings.get("steps")),
        "seeds": art.num("n_seeds", len(d.seeds)),
        "items": art.num("items", _items(d, task)),
        "task": task,
    }
    if g is not None and g[3] == "ci":  # per-item records: every gap below carries its own 95 % interval
        b += _p(art.t("ci_note", **args))
    elif d.budget == "quick" or len(d.seeds) < 2:
        b += _p(art.t("cannot_rank", floor=art.num("floor_points", A.floor_points(d)), **args))
    return b


def _items(d: Any, task: str) -> Any:
    """The main task's number of test items (budgets may score other tasks on fewer)."""
    from lorafam.report.data import paired

    p = paired(d.row("lorafam", "lora"), d.row("base", "base"), task, "em")
    return p.n_items if p is not None else d.settings.get("eval_items")


def _opening(art: Article) -> list[Block]:
    from lorafam.family import family

    b = [Block("h2", art.t("h_open"))] + _p(art.t("flair_open"))
    d = art.data
    full, lora = d.row("full", "full-ft"), d.row("lorafam", "lora")
    ratios = _ratios(full, lora) if full and lora and full.ok_runs() and lora.ok_runs() else None
    if ratios:
        args = {k: art.num(f"full_ft.{k}", v) for k, v in ratios.items()}
        b += _p(art.t("open_cost", **args))
        fw = art.fw
        items = [(fw[f"cost_{k}"], args[k]) for k in ("step", "rss", "params")]
        b += art.figure("cost", "cap_cost", F.ratio_bars(items, fw, figure_lang(art.lang), fw["cost_title"]))
    else:
        b += _p(art.t("open_no_full"))
    if lora and lora.ok_runs() and lora.mean("total_params"):
        trainable, total = lora.mean("trainable_params") or 0, lora.mean("total_params")
        args = {"trainable": int(trainable), "total": int(total), "pct": 100 * trainable / total}
        args = {k: art.num(f"lora.{k}", v) for k, v in args.items()}
        b += _p(art.t("open_lora", **args), art.sp, art.t("open_plugin"))
    changes = {m.name: art.w.CHANGES.get(m.name, "") for m in family()}
    if figure_lang(art.lang) != art.lang:
        changes = {m.name: WORDS["en"].CHANGES.get(m.name, "") for m in family()}
    return b + art.figure("tree", "cap_tree", F.family_tree(family(), changes, art.fw, figure_lang(art.lang)))


def _ratios(full: Row, lora: Row) -> dict[str, float] | None:
    """Full fine-tuning over LoRA: time per step, peak memory, trainable parameters (None if one is missing)."""
    pairs = {
        "step": (full.mean("seconds_per_step"), lora.mean("seconds_per_step")),
        "rss": (full.mean_run("peak_rss_mb"), lora.mean_run("peak_rss_mb")),
        "params": (full.mean("trainable_params"), lora.mean("trainable_params")),
    }
    if not all(a and b for a, b in pairs.values()):
        return None
    return {k: a / b for k, (a, b) in pairs.items()}


def member_section(art: Article, m: Any, heading: bool) -> list[Block]:
    """出身, 绝学, 评价 for one member (a h3 heading when its chapter holds several members)."""
    b = [Block("h3", DISPLAY.get(m.name, m.name))] if heading else []
    b += _origin(art, m) + _idea(art, m) + _verdict(art, m)
    return b


def _origin(art: Article, m: Any) -> list[Block]:
    w = art.w
    origin = w.ORIGINS.get(m.name, m.origin)
    venue = w.VENUES.get(m.name, m.venue)
    year = art.num(f"{m.name}.year", m.year)
    art.num(f"{m.name}.venue", venue)
    ref = cite(art.num(f"{m.name}.cite", f"{m.title}; {m.authors}; arXiv {m.arxiv}"))
    b = _p(f"**{art.t('origin')}** ", art.t("origin_line", origin=origin, year=year, venue=venue), art.sp, ref)
    if m.name in ORIGIN_CHECK and m.name in w.DRAFT_ORIGIN:
        v = art.verdicts.get(ORIGIN_CHECK[m.name])
        if v:
            b.append(_box(art, w.DRAFT_ORIGIN[m.name], _reason(art, v), v.cite, checked=True))
    if m.name in ORIGIN_NOTE and ORIGIN_NOTE[m.name] in art.verdicts:
        v = art.verdicts[ORIGIN_NOTE[m.name]]
        b += _p(_reason(art, v), art.sp, cite(v.cite))
    return b


def _idea(art: Article, m: Any) -> list[Block]:
    ratio = m.train_options.get("loraplus_ratio")
    text = art.w.IDEAS.get(m.name)
    if text is None:  # a member added later: its registry sentence, in English until someone words it
        text = m.idea
    b = _p(
        f"**{art.t('idea')}** ", _Safe().format(text, ratio=art.num(f"{m.name}.ratio", ratio) if ratio else None)
    )
    if m.name == "lora":
        b += art.figure("lora-idea", "cap_lora", F.lora_picture(art.fw, figure_lang(art.lang)))
    return b


def _verdict(art: Article, m: Any) -> list[Block]:
    d = art.data
    row, lora = d.row("lorafam", m.name), d.row("lorafam", "lora")
    head = f"**{art.t('verdict')}** "
    if row and row.ok_runs():
        b = _p(head, _headline(art, m.name, row, lora))
    else:  # never planned in this budget, or every run of it failed
        b = _p(head, art.t("not_run" if row is None else "no_run"))
    for claim in MEMBER_CLAIMS.get(m.name, []):
        if claim in art.verdicts:
            b += _claim(art, art.verdicts[claim])
    b += AF.for_member(art, m.name)
    for key, src in CITED.get(m.name, []):
        b += _cited(art, key, src)
    if row and row.ok_runs() and m.name != "lora":
        from lorafam.report.blocks import pick

        for i, item in enumerate(A.advise(d, m.name)):
            for k, v in item.args.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    art.num(f"{m.name}.advice{i}.{k}", v)
        art.num(f"{m.name}.arxiv", m.arxiv)
        b += _p(art.t("advice", text=pick(art.lang, d, m)))
    return b


def _headline(art: Article, member: str, row: Row, lora: Row | None) -> str:
    d, task = art.data, C.primary_task(art.data)
    acc = row.accuracies(task)
    parts = []
    if acc and member == "lora":
        base = d.row("base", "base")
        ivl = interval(art, member, row, base, task)
        if ivl:
            base_acc = art.num("base.acc", 100 * sum(base.accuracies(task)) / len(base.accuracies(task)))
            extra = ivl.pop("extra")
            parts.append(
                art.t("acc_line_lora", task=task, acc=_acc(art, member, acc), base=base_acc, **ivl) + extra
            )
    elif acc and lora and lora.accuracies(task):
        ivl = interval(art, member, row, lora, task)
        if ivl:
            lacc = art.num("lora.acc", 100 * sum(lora.accuracies(task)) / len(lora.accuracies(task)))
            extra = ivl.pop("extra")
            parts.append(art.t("acc_line", task=task, acc=_acc(art, member, acc), lacc=lacc, **ivl) + extra)
    parts.append(_cost(art, member, row, lora))
    return art.sp.join(p for p in parts if p)


def _acc(art: Article, member: str, acc: list[float]) -> float:
    return art.num(f"{member}.acc", 100 * sum(acc) / len(acc))


def _cost(art: Article, member: str, row: Row, lora: Row | None) -> str:
    params = art.num(f"{member}.params", int(row.mean("trainable_params") or 0))
    step = art.num(f"{member}.step", row.mean("seconds_per_step"))
    rss = art.num(f"{member}.rss", row.mean_run("peak_rss_mb"))
    if member == "lora" or lora is None:
        size = row.mean("adapter_bytes")
        mb = art.num(f"{member}.mb", size / 1e6 if size else None)
        return art.t("cost_line_lora", params=params, step=step, rss=rss, mb=mb)
    lp, ls = lora.mean("trainable_params"), lora.mean("seconds_per_step")
    pratio = art.num(f"{member}.params_ratio", params / lp if lp else None)
    sratio = art.num(f"{member}.step_ratio", step / ls if step and ls else None)
    return art.t("cost_line", params=params, pratio=pratio, step=step, sratio=sratio, rss=rss)


def interval(art: Article, member: str, row: Row, ref: Row | None, task: str) -> dict[str, Any] | None:
    """The gap ``row − ref`` in points with its interval, worded (the arena's 95 % paired interval when the runs
    carry per-item records, else the noise floor; see :func:`lorafam.report.edition.gap`), and the answer-NLL
    gap beside it when there is one."""
    g = gap(row, ref, task)
    if g is None:
        return None
    diff, lo, hi, kind = g
    art.num(f"{member}.diff", diff)
    lo, hi = art.num(f"{member}.lo", lo), art.num(f"{member}.hi", hi)
    where = "ivl_above" if lo > 0 else "ivl_below" if hi < 0 else "ivl_inside"
    sep = "，" if art.lang == "zh" else "; "
    ivl = art.t("ivl_ci" if kind == "ci" else "ivl_floor", lo=lo, hi=hi) + sep + art.t(where)
    nll = gap(row, ref, task, "nll")
    extra = ""
    if nll is not None:
        est, nlo, nhi = (art.num(f"{member}.nll_{k}", v) for k, v in zip(("diff", "lo", "hi"), nll[:3]))
        extra = art.sp + art.t("ivl_nll", diff=est, lo=nlo, hi=nhi)
    return {"diff": diff, "ivl": ivl, "extra": extra}


def _reason(art: Article, v: C.Verdict) -> str:
    for k, val in v.args.items():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            art.num(f"claim.{v.claim}.{k}", val)
    return _Safe().format(REASONS[art.lang][v.reason], **named(art.lang, v.args))


def _claim(art: Article, v: C.Verdict) -> list[Block]:
    lead = art.t(LEADS.get(v.verdict, "lead_nm"))
    if v.verdict == C.SUPPORTED:
        sp = art.sp
        return _p(lead, sp, CLAIMS[art.lang][v.claim], sp, _reason(art, v), sp, cite(v.cite) if v.cite else "")
    return _p(lead) + [_box(art, CLAIMS[art.lang][v.claim], _reason(art, v), v.cite)]


def _box(art: Article, draft: str, found: str, source: str, checked: bool = False) -> Block:
    """A 原稿说 / 实测 (or 查证) box: what the draft said, what was measured or found, and the source."""
    rows = [[art.t("box_draft"), draft], [art.t("box_checked" if checked else "box_measured"), found]]
    if source:
        rows.append([art.t("box_source"), cite(source)])
    return Block("box", rows=rows)


def _cited(art: Article, key: str, src: str) -> list[Block]:
    s = SOURCES[src]
    nums = {k: art.num(f"src.{src}.{k}", v) for k, v in s.numbers.items()}
    return _p(art.t("cited"), _Safe().format(art.w.CITED[key], **nums), art.sp, cite(s.cite))


def _closing(art: Article) -> list[Block]:
    b = [Block("h2", art.t("h_close"))] + _p(art.t("flair_close"))
    for claim in ("full_ft", "adapter_size"):
        v = art.verdicts.get(claim)
        if v:
            b += _claim(art, v)
    b += _cited(art, "peft_full", "peft_bench")
    b += AF.gaps(art)
    count = {s: sum(v.verdict == s for v in art.verdicts.values()) for s in (*LEADS, C.NM)}
    args = {"n": len(art.verdicts), "s": count[C.SUPPORTED], "c": count[C.CONTRADICTED], "m": count[C.MIXED]}
    args |= {"u": count[UNDECIDED], "nm": count[C.NM]}
    return b + _p(art.t("close_tally", **{k: art.num(f"tally.{k}", v) for k, v in args.items()}))


def _notes(art: Article, command: str) -> list[Block]:
    d, m = art.data, art.data.meta
    machine = m.get("machine", {})
    args = {
        "budget": d.budget,
        "tasks": ", ".join(d.tasks),
        "seeds": ", ".join(map(str, d.seeds)),
        "cpu": machine.get("cpu"),
        "cores": art.num("cores", machine.get("cores")),
        "version": m.get("lorafam_version"),
        "commit": (m.get("git_commit") or "?")[:10],
    }
    b = [Block("h2", art.t("h_notes"))] + _p(art.t("notes", **args)) + [Block("code", command)]
    b += _p(art.t("notes_data"))
    sources = _sources(art)
    return b + [Block("h2", art.t("h_sources")), Block("list", items=[cite(s) for s in sources])]


def _sources(art: Article) -> list[str]:
    """Every cited source once: the verdicts' citations split at ";", those that a longer one contains dropped."""
    parts = {p.strip() for v in art.verdicts.values() for p in v.cite.split(";") if p.strip()}
    parts |= {p.strip() for s in SOURCES.values() for p in s.cite.split(";") if p.strip()}
    return sorted(p for p in parts if not any(p != q and q.startswith(p) for q in parts))
