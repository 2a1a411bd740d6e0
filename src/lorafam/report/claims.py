"""Claims check: each claim of the seed article gets a verdict from explicit rules over measured numbers.

Verdicts: "supported", "contradicted", "undecided", "mixed", "not measurable here". Every difference a rule uses is
a **paired** difference on the same test items (and seeds) with its 95 % bootstrap interval, computed from the
per-item records in the result files (:func:`lorafam.report.data.paired`, :mod:`lorafam.arena.stats`). A claim is
"supported" or "contradicted" only when its interval excludes the threshold the claim implies; otherwise it is
"undecided", and the evidence names the interval and the budget that would settle it. "mixed" is kept for claims
with several parts that go different ways. No language model writes anything; each rule returns a reason key and
the numbers, and :mod:`lorafam.report.text` turns them into zh / en sentences.

Runs from result files without per-item records (schema 1) fall back to the old binomial noise floor.

This module runs the rules (:func:`check_all`) and holds the bibliographic checks; the rules live in
:mod:`lorafam.report.claims_cost` and :mod:`lorafam.report.claims_quality`, what they share in
:mod:`lorafam.report.verdicts`. Their names are re-exported here, so ``claims.compare`` and the like keep working.
"""

from __future__ import annotations

from lorafam.report.claims_cost import (
    ESTIMATE_SETUP,
    LLAMA2_7B_LORA_R16_PARAMS,
    LLAMA2_70B_PARAMS,
    _ttft_series,
    adapter_size,
    alora_latency,
    estimate,
    estimates_table,
    full_ft_cost,
    lora_two_matrices,
    qlora_70b,
    qlora_quarter,
    s2_series,
)
from lorafam.report.claims_quality import (
    adalora_unstable,
    dora_vs_full,
    longlora_long_range,
    lora_forgets,
    loraplus_claim,
    mopeft_routes,
    quantum_tenth,
)
from lorafam.report.data import ReportData
from lorafam.report.verdicts import (
    CONTRADICTED,
    MIXED,
    NM,
    STANDARD,
    SUPPORTED,
    UNDECIDED,
    Verdict,
    compare,
    differences,
    diverged,
    learned,
    primary_task,
    settle,
    spikes,
    steps_to_reach,
)

__all__ = [
    "BIBLIO",
    "CONTRADICTED",
    "ESTIMATE_SETUP",
    "LLAMA2_70B_PARAMS",
    "LLAMA2_7B_LORA_R16_PARAMS",
    "MIXED",
    "NM",
    "STANDARD",
    "SUPPORTED",
    "UNDECIDED",
    "Verdict",
    "_ttft_series",
    "adalora_unstable",
    "adapter_size",
    "alora_latency",
    "check_all",
    "compare",
    "differences",
    "diverged",
    "dora_vs_full",
    "estimate",
    "estimates_table",
    "full_ft_cost",
    "learned",
    "longlora_long_range",
    "lora_forgets",
    "lora_two_matrices",
    "loraplus_claim",
    "mopeft_routes",
    "primary_task",
    "qlora_70b",
    "qlora_quarter",
    "quantum_tenth",
    "s2_series",
    "settle",
    "spikes",
    "steps_to_reach",
]


def check_all(data: ReportData) -> list[Verdict]:
    rules = [
        lora_two_matrices,
        lora_forgets,
        qlora_quarter,
        qlora_70b,
        loraplus_claim,
        dora_vs_full,
        adalora_unstable,
        longlora_long_range,
        quantum_tenth,
        mopeft_routes,
        alora_latency,
        full_ft_cost,
        adapter_size,
    ]
    return [rule(data) for rule in rules]


# Bibliographic checks: facts from the registry and shared/FAMILY.md (sources cited in each entry).
BIBLIO: list[tuple[str, str, str]] = [
    ("b_longlora_plus", CONTRADICTED, "arXiv 2309.12307; arXiv 2402.12354"),
    ("b_longlora_100k", CONTRADICTED, "LongLoRA README model table (dvlab-research/LongLoRA)"),
    (
        "b_mopeft_venue",
        MIXED,
        "arXiv 2405.00293 (comment: CVPR 2024 workshop); CVPRW 2025 proceedings pp. 6500–6510",
    ),
    ("b_alora_venue", NM, "arXiv 2504.12397 (preprint, IBM Research, 2025)"),
    ("b_quantum_code", CONTRADICTED, "ICLR 2025 poster, OpenReview dgR6i4TSng; arXiv 2503.05431"),
]
