"""Cited evidence the article states beside the arena's measurements, and the draft's own numbers.

Each entry is checked against public sources (``shared/ARTICLE-DRAFT.md``, "External evidence"): a citation and
the numbers it gives. Figures seen only in secondary copies are left out. The article's sentences about these
sources are in :mod:`lorafam.report.words` and take their numbers from here, so that ``report-data.json`` holds
every number the article prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    cite: str
    numbers: dict[str, float] = field(default_factory=dict)


SOURCES: dict[str, Source] = {
    "peft_bench": Source(
        "huggingface/peft method_comparison/MetaMathQA (Llama-3.2-3B, GSM8K; re-run July 2026, commit 51c2ff666)",
        {
            "lora_acc": 0.478,
            "dora_acc": 0.469,
            "rslora_acc": 0.513,
            "adalora_acc": 0.373,
            "full_acc": 0.472,
            "lora_s": 942,
            "dora_s": 1191,
            "full_s": 2147,
            "lora_gib": 20.8,
            "full_gib": 36.2,
            "lora_rerun_lo": 0.478,
            "lora_rerun_hi": 0.491,
            "ada_gap_lo": 9,
            "ada_gap_hi": 11,
            "snapshots": 5,
            "rank": 32,
            "rslora_rank": 64,
        },
    ),
    "qlora_paper": Source("arXiv 2305.14314 (NeurIPS 2023)", {"model_b": 65, "gpu_gb": 48}),
    "loraplus_paper": Source("arXiv 2402.12354 (ICML 2024), abstract", {"speedup": 2, "gain_lo": 1, "gain_hi": 2}),
    "dora_speed": Source(
        "huggingface/peft PR #1474; modelscope/ms-swift #3033",
        {"per_step": 2, "total": 1.7, "pr": 1474, "issue": 3033},
    ),
    "dora_infer": Source("PEFT docs, DoRA variant (Llama-3.1-8B inference)", {"unmerged_pct": 139}),
    "adalora_repo": Source("QingruZhang/AdaLoRA issue #19", {"issue": 19}),
    "longlora_readme": Source(
        "dvlab-research/LongLoRA README; issues #30, #48, #76", {"i1": 30, "i2": 48, "i3": 76, "group_den": 4}
    ),
    "alora_serving": Source("arXiv 2512.17910", {"e2e": 58, "ttft": 100}),
    "quantum_paper": Source("ICLR 2025 poster, OpenReview dgR6i4TSng; arXiv 2503.05431"),
    "mopeft_venue": Source(
        "arXiv 2405.00293 (comment: CVPR 2024 workshop); CVPRW 2025 proceedings pp. 6500–6510",
        {"page_lo": 6500, "page_hi": 6510, "arxiv_year": 2024, "proc_year": 2025},
    ),
    "alora_venue": Source("arXiv 2504.12397 (IBM Research, 2025)", {"year": 2025}),
    "longlora_100k": Source("LongLoRA README model table (dvlab-research/LongLoRA)", {"ctx_k": 100}),
}

# The numbers of the draft's own claims (shared/ARTICLE-DRAFT.md), quoted in the 原稿说 boxes.
DRAFT_NUMBERS: dict[str, float] = {
    "gpu_gb": 24,
    "gpu_model": 4090,
    "big_model_b": 70,
    "quarter_den": 4,
    "bits_ref": 16,
    "bits_nominal": 4,
    "points_lo": 1,
    "points_hi": 2,
    "speed": 2,
    "tenth_den": 10,
    "iterations": 10,
    "venue_year": 2025,
    "one": 1,
}
