"""The article edition's English sentences (same keys as :mod:`lorafam.report.words.article_zh`).

Keys starting with ``flair_`` carry the storyteller's voice and state no fact: ``--tone plain`` drops them. A key
``k@plain`` replaces ``k`` in the plain tone. Every other sentence is filled from a rule's numbers or a cited
source (:mod:`lorafam.report.sources`); nothing here is a number of its own.
"""

from __future__ import annotations

ART: dict[str, str] = {
    "title": "The LoRA family saga: every verdict backed by a number",
    "title@plain": "The LoRA family: history, methods and measurements",
    "lede": 'This article keeps the shape of a WeChat draft ("the draft" below): it opens on full fine-tuning, gives '
    'each member a chapter, and ends with the 2025 arrivals and "the dinosaur". The difference: every verdict here '
    "comes from the lorafam arena's records ({budget} budget, {runs} runs, same data and same machine for all), or "
    'from a cited source. Where the draft got it wrong, a "the draft said / measured" box says so.',
    "cannot_rank@plain": "Note: this is the {budget} budget ({steps} steps, {seeds} seed(s), {items} test items on the main task, {task}), so "
    "accuracy carries a noise range of about ±{floor:.0f} points; gaps inside it do not count and are marked below.",
    "cannot_rank": "A warning first: this is the {budget} budget ({steps} steps, {seeds} seed(s), {items} test items on the main "
    "task, {task}), so accuracy carries a noise range of about ±{floor:.0f} points. Gaps inside that range do not count, and "
    "each one is marked below.",
    "ci_note@plain": "Note: this is the {budget} budget ({steps} steps, {seeds} seed(s), {items} test items on the main task, {task}). Every "
    "gap below carries its 95% confidence interval (a paired bootstrap over the same test items); a gap whose "
    "interval crosses 0 does not count, and each one is marked.",
    "ci_note": "The rules first: this is the {budget} budget ({steps} steps, {seeds} seed(s), {items} test items on the main "
    "task, {task}). Every gap below carries its 95% confidence interval (a paired bootstrap over the same test items); a gap "
    "whose interval crosses 0 does not count, and each one is marked.",
    "flair_lede": "Gossip is welcome; the numbers have the last word.",
    "origin": "Origin",
    "idea": "The move",
    "verdict": "Verdict",
    "box_draft": "The draft said",
    "box_measured": "Measured",
    "box_checked": "Checked",
    "box_source": "Source",
    "fig": "Figure {n}",
    "h_open": "Opening: the big spender and the craftsman",
    "h_open@plain": "Opening: full fine-tuning and parameter-efficient fine-tuning",
    "h_founder": "Chapter 1. The founder: LoRA",
    "h_founder@plain": "Chapter 1. LoRA",
    "h_saviour": "Chapter 2. The poor man's saviour: QLoRA",
    "h_saviour@plain": "Chapter 2. QLoRA",
    "h_speed": "Chapter 3. The speed demon: LoRA+",
    "h_speed@plain": "Chapter 3. LoRA+",
    "h_usurper": "Chapter 4. The usurper: DoRA",
    "h_usurper@plain": "Chapter 4. DoRA",
    "h_relatives": "Chapter 5. The odd relatives",
    "h_relatives@plain": "Chapter 5. AdaLoRA, LongLoRA and rsLoRA",
    "h_gods": "Chapter 6. The 2025 war of the gods",
    "h_gods@plain": "Chapter 6. The 2025 members",
    "h_close": "Closing: the dinosaur",
    "h_close@plain": "Closing: what full fine-tuning costs",
    "h_notes": "Where the numbers come from",
    "h_sources": "Sources",
    "flair_open": "There are two ways to fine-tune a big model. Rewrite every weight, and buy more GPUs when they run "
    "out; or freeze the model and bolt a few small parts on the side.",
    "open_cost": "On the same machine and the same data, full fine-tuning took {step:.2f}× LoRA's time per step and "
    "{rss:.2f}× its peak memory, and trained {params:.0f}× as many parameters.",
    "open_lora": "LoRA trains {trainable:,} of {total:,} parameters ({pct:.2f}%) and leaves every base weight alone.",
    "open_plugin@plain": "LoRA is a plug-in: pull it out and the model is the model it was.",
    "open_plugin": "So LoRA is not black magic but a plug-in: pull it out and the model is the model it was.",
    "open_no_full": "These records hold no successful full fine-tuning run, so the cost comparison stays empty.",
    "origin_line": "{origin}, {year}, {venue}.",
    "acc_line": "Exact match on {task}: {acc:.1f}% against LoRA's {lacc:.1f}%, a gap of {diff:+.1f} points ({ivl}).",
    "acc_line_lora": "Exact match on {task}: {acc:.1f}% against the untrained base's {base:.1f}%, a gain of "
    "{diff:+.1f} points ({ivl}).",
    "ivl_ci": "95% confidence interval {lo:+.1f} to {hi:+.1f}",
    "ivl_floor": "noise range {lo:+.1f} to {hi:+.1f}",
    "ivl_nll": "Answer NLL gap: {diff:+.3f} nats/token (95% interval {lo:+.3f} to {hi:+.3f}).",
    "ivl_inside": "the range crosses 0, so no winner",
    "ivl_above": "the whole range is above 0",
    "ivl_below": "the whole range is below 0",
    "cost_line": "{params:,} trainable parameters ({pratio:.3g}× LoRA's), {step:.2f} s per step ({sratio:.2f}× LoRA's), "
    "peak memory {rss:.0f} MB.",
    "cost_line_lora": "{params:,} trainable parameters, {step:.2f} s per step, peak memory {rss:.0f} MB, adapter file "
    "{mb:.1f} MB.",
    "no_run": "These records hold no successful run of it, so the verdict can only cite sources.",
    "not_run": "This budget does not run it (`lorafam arena --budget standard` does), so here the verdict can only "
    "cite sources.",
    "advice": "When to pick it: {text}",
    "lead_supported": "On this line, the draft holds up.",
    "lead_contradicted": "On this line, the numbers say no.",
    "lead_mixed": "Only partly right.",
    "lead_undecided": "Not settled yet: the interval still straddles the threshold.",
    "lead_nm": "This one cannot be measured here; what it needs is noted.",
    "lead_supported@plain": "Verdict: supported.",
    "lead_contradicted@plain": "Verdict: contradicted.",
    "lead_mixed@plain": "Verdict: mixed.",
    "lead_undecided@plain": "Verdict: undecided.",
    "lead_nm@plain": "Verdict: not measurable here.",
    "cited": "Elsewhere: ",
    "flair_founder": "The family tree starts here; every later member is this one with something changed.",
    "flair_saviour": "Necessity, as ever, is the mother of invention.",
    "flair_speed": "A plus sign in the name, and big promises to match.",
    "flair_usurper": "Before calling it a usurper, look at whom it was compared with.",
    "flair_relatives": "Every big family has a few relatives nobody quite understands.",
    "flair_gods": "2025 brought three newcomers, each with a loud slogan.",
    "flair_close": "The draft calls full fine-tuning a dinosaur. Whether it is dying out is a matter of accounts.",
    "close_tally": "This article checked {n} claims: {s} supported, {c} contradicted, {m} mixed, {u} undecided, {nm} not "
    "measurable here.",
    "close_size": 'The draft said adapters are "a few hundred MB".',
    "notes": "Budget {budget}: tasks {tasks}, seeds {seeds}; machine {cpu}, {cores} cores; lorafam {version} (git "
    "{commit}). These two commands rerun every number on your machine:",
    "notes_data": "Every number in the text is in report-data.json; the per-run records are the arena's result files.",
    "cap_tree": "The family tree: who came from whom, when, and what changed",
    "cap_lora": "The LoRA idea: two thin matrices beside a big frozen one",
    "cap_cost": "What full fine-tuning costs, with LoRA as 1",
    "cap_params": "Trainable parameters per member (log scale)",
    "cap_mem": "Memory for a 70B model's weights alone, against one 24 GB card",
    "cap_curve": "Training loss per step: LoRA, LoRA+ and DoRA",
    "cap_eval": "Exact match along the run (the first {n} test items; bands: 95% intervals)",
    "cap_eval_floor": "Exact match along the run ({n} test items; bands: noise range)",
    "cap_diff": "Accuracy gap to LoRA per member (bars: intervals)",
    "cap_ttft": "aLoRA's time to first token against history length",
    "cap_s2": "Training step time, S²-Attn against full attention",
}

IDEAS: dict[str, str] = {
    "lora": "Freeze the pretrained weight W0 and learn a low-rank update ΔW = B·A beside it: B tall and thin, A short "
    "and wide, the rank r far below the matrix size. After training, B·A can be added into W0, so inference costs "
    "nothing extra.",
    "rslora": "LoRA scales its update by α/r, which shrinks the update as the rank grows. rsLoRA scales by α/√r so "
    "that larger ranks keep learning.",
    "qlora": "Store the frozen base in 4-bit NormalFloat (NF4), quantise the quantisation scales once more, and train "
    "LoRA on top as usual. The trained part is still LoRA's two small matrices; what shrinks is the base.",
    "longlora": "Stretch the context without paying for full attention in training: cut the sequence into groups, "
    "let half the heads attend within groups and the other half within groups shifted by half a group (S²-Attn); "
    "train embeddings and norms besides LoRA; switch back to full attention for inference.",
    "adalora": "Write the update as P·Λ·Q, an SVD-like form, score each singular value's importance while training, "
    "and move rank from unimportant matrices to important ones.",
    "loraplus": "The adapter is unchanged; only the optimizer is: B's learning rate is λ times A's (λ = {ratio:.0f} "
    "here).",
    "dora": "Split each row of the weight into a length and a direction: LoRA updates the direction, and the length m "
    "is trained on its own.",
    "alora": "A LoRA that switches on only from an invocation sequence onward. Before the invocation, the keys and "
    "values are exactly the base model's, so the base model's cache of the history can be reused as it is.",
    "quantum": "The update is U·Λ·Vᵀ, but U and V are not trained matrices: a few rotation angles generate them "
    "through an orthogonal, quantum-circuit-style map, so the parameter count grows with the log of the dimension.",
    "mopeft": "Put several kinds of PEFT module in each layer and let a learned gate weight them, mixture-of-experts "
    "style.",
}

CHANGES: dict[str, str] = {
    "lora": "freeze the base, train B·A",
    "rslora": "scale by α/√r",
    "qlora": "4-bit base",
    "longlora": "grouped attention, long context",
    "adalora": "moves rank while training",
    "loraplus": "faster learning rate for B",
    "dora": "length and direction apart",
    "mopeft": "gated mix of modules",
    "alora": "on after invocation, cache reuse",
    "quantum": "U, V from a circuit",
}

ORIGINS: dict[str, str] = {"qlora": "University of Washington (Tim Dettmers et al.)"}
VENUES: dict[str, str] = {
    "mopeft": "a CVPR workshop paper (the arXiv comment says the 2024 workshop; the proceedings list it in CVPRW 2025)",
}

DRAFT_ORIGIN: dict[str, str] = {
    "mopeft": "MoPEFT is a CVPR 2025 paper.",
    "alora": "aLoRA appeared at NeurIPS 2025.",
    "longlora": 'LongLoRA stretches the context with "sliced attention".',
}

CITED: dict[str, str] = {
    "peft_dora": "Hugging Face PEFT's own benchmark (Llama-3.2-3B trained on MetaMathQA, tested on GSM8K, one seed "
    "per config): DoRA r{rank:.0f} {dora_acc:.3f}, LoRA r{rank:.0f} {lora_acc:.3f}, full fine-tuning {full_acc:.3f}. "
    "LoRA alone moved between {lora_rerun_lo:.3f} and {lora_rerun_hi:.3f} across re-runs, and in {snapshots:.0f} "
    "result snapshots DoRA never beat LoRA r{rank:.0f}.",
    "dora_speed": "Users report DoRA at about {per_step:.0f}× LoRA's time per step (PEFT PR #{pr:.0f}) and "
    "{total:.1f}× the total training time (ms-swift #{issue:.0f}).",
    "dora_infer": "PEFT's docs: unmerged DoRA inference takes {unmerged_pct:.0f}% more time than LoRA.",
    "peft_adalora": "In the same PEFT benchmark AdaLoRA scored {adalora_acc:.3f}, {ada_gap_lo:.0f} to "
    "{ada_gap_hi:.0f} points below LoRA r{rank:.0f} across {snapshots:.0f} snapshots.",
    "adalora_repo": "The author confirms slower convergence (AdaLoRA repo #{issue:.0f}); we found no public report of "
    'divergence or NaNs, so "very unstable" has no public evidence behind it.',
    "loraplus_paper": "The abstract claims up to about {speedup:.0f}× faster convergence and {gain_lo:.0f} to "
    "{gain_hi:.0f}% better results at the same compute per step: faster convergence, not faster steps.",
    "qlora_paper": "The QLoRA paper's own claim: a {model_b:.0f}B model fine-tuned on one {gpu_gb:.0f} GB GPU.",
    "longlora_readme": 'Its authors say in the README that full fine-tuning is "a bit better", and in issues '
    "#{i1:.0f}, #{i2:.0f} and #{i3:.0f} that LongLoRA only approaches it.",
    "peft_rslora": "In PEFT's benchmark rsLoRA r{rslora_rank:.0f} scored {rslora_acc:.3f} (LoRA r{rank:.0f} "
    "{lora_acc:.3f}), but rsLoRA's scaling also raises the effective learning rate, and the rank was doubled.",
    "alora_serving": "A follow-up serving paper reports up to {e2e:.0f}× lower end-to-end latency and more than "
    "{ttft:.0f}× better time to first token in multi-turn, multi-adapter pipelines.",
    "peft_full": "In PEFT's benchmark full fine-tuning took {full_s:.0f} s and {full_gib:.1f} GiB, LoRA r{rank:.0f} "
    "{lora_s:.0f} s and {lora_gib:.1f} GiB; accuracy {full_acc:.3f} against {lora_acc:.3f}.",
}

FIG: dict[str, str] = {
    "tree_title": "The LoRA family tree",
    "pic_title": "LoRA: W = W0 + B·A",
    "pic_w0": "W0 (frozen)",
    "pic_ba": "only B and A train",
    "pic_frozen": "d × d, untouched",
    "times_lora": "× LoRA (log scale)",
    "cost_title": "Full fine-tuning ÷ LoRA",
    "cost_step": "time per step",
    "cost_rss": "peak memory",
    "cost_params": "trainable params",
    "steps": "training steps",
    "loss": "training loss (log)",
    "curve_title": "Training loss",
    "acc": "exact match (%)",
    "eval_title": "Accuracy along the run",
    "diff_points": "gap to LoRA (points)",
    "diff_title": "Who is apart from LoRA?",
    "params": "trainable parameters (log)",
    "params_title": "How many parameters train",
    "gib": "GiB",
    "card": "24 GB card",
    "mem_title": "A 70B model, weights only",
    "mem_16": "16-bit",
    "mem_q": "measured {bits:.2f}-bit",
    "history": "history (tokens)",
    "ttft": "time to first token (s)",
    "ttft_title": "aLoRA: slower as the chat grows?",
    "context": "context length (tokens)",
    "step_s": "training step (s)",
    "s2_title": "S²-Attn against full attention: step time",
    "s2_full": "full attention",
}
