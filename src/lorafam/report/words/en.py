"""English wording of the lab report: one template per key, numbers filled in by :func:`lorafam.report.text.say`."""

from __future__ import annotations

VERDICTS: dict[str, str] = {
    "supported": "supported",
    "contradicted": "contradicted",
    "mixed": "mixed",
    "not measurable here": "not measurable here",
}


SERIES_NAMES: dict[str, str] = {
    "reuse": "aLoRA on the shared base cache",
    "peft_reuse": "PEFT's aLoRA reusing the cache",
    "reprefill": "aLoRA re-reading the whole history",
    "peft_reprefill": "PEFT's aLoRA re-reading the history",
    "lora": "plain LoRA (it must re-read the history)",
    "base_decode": "one base decode step",
}


UI: dict[str, str] = {
    "col_acc": "exact match {task} (%)",
    "sep": "; ",
    "end": ".",
    "but": " But ",
    "no_bench_file": "no results file",
    "title": "The LoRA family, measured: a history with numbers",
    "lede": "Every member of the LoRA family was trained on the same tasks, with the same budget, on the same "
    "machine, and measured. Each comment below is computed from those records by explicit rules, or cites a "
    "source. Budget: **{budget}** — {runs} runs ({ok} ok, {failed} failed, {skipped} skipped).",
    "cannot_rank": "**Read this first.** This is the *{budget}* budget: {steps} steps, {seeds} seed(s), "
    "{items} test items per task. At this size the noise floor is about ±{floor:.0f} points of accuracy, so "
    "the league table below **cannot rank the members**; differences inside the floor are noise. Run "
    "`lorafam arena --budget standard` for a ranking.",
    "tree": "The family tree",
    "tree_intro": "Who came from whom, from the registry (year, origin, venue, idea).",
    "chapters": "The members, one by one",
    "league": "The league table",
    "league_intro": "Mean over seeds; ± is the seed spread (sample standard deviation) when there are two or "
    "more seeds. Accuracy is exact match on held-out items. KL is the forgetting probe (nats/token, base ‖ "
    "tuned, on {n} fixed general prompts); the base row's KL is the noise floor of the probe itself (the numeric regime vs the fp32 reference).",
    "plots": "Plots",
    "claims": "Claims check",
    "notes": "Method notes",
    "failed": "Failed and skipped runs",
    "kept": "Runs kept apart",
    "kept_intro": "These result files come from another lorafam version or machine "
    "and are not mixed into any table:",
    "col_member": "member",
    "col_params": "trainable params",
    "col_rss": "peak RSS (MB)",
    "col_step": "s/step",
    "col_tok": "tokens/s",
    "col_kl": "KL",
    "col_size": "adapter (MB)",
    "col_decode": "decode tok/s (vs base)",
    "col_merge": "merge (s)",
    "col_year": "year",
    "col_origin": "origin",
    "col_venue": "venue",
    "col_idea": "idea",
    "col_parent": "parent",
    "col_claim": "claim",
    "col_verdict": "verdict",
    "col_evidence": "numbers behind it",
    "col_source": "source",
    "col_status": "status",
    "col_error": "error",
    "col_run": "run",
    "fig_tree": "Family timeline (registry)",
    "fig_curve": "Exact match vs training steps",
    "fig_pareto": "Trainable parameters vs accuracy (Pareto front dashed)",
    "fig_mem": "Peak memory per run",
    "fig_ttft": "aLoRA time-to-first-token vs history (from {file})",
    "fig_s2": "S²-Attn step time vs context length (from {file})",
    "no_fig": "Not plotted: {why}.",
    "chapter_what": "**What it changes.** {idea} ({origin}, {venue}; arXiv {arxiv}).",
    "chapter_nums": "**Measured here.** {acc_text}; {params:,} trainable parameters ({pct:.2f}% of the "
    "model); {step:.2f} s/step ({step_ratio:.2f}× LoRA); peak RSS {rss:.0f} MB; forgetting KL {kl:.3f}; "
    "adapter file {mb:.2f} MB; {merge}.",
    "chapter_peft": "The same member through Hugging Face PEFT, same harness: {acc_text}, {step:.2f} s/step "
    "(ours/PEFT step-time ratio {ratio:.2f}).",
    "chapter_kl_start": "Of its forgetting KL ({kl:.3f}), {start:.3f} was already there before the first step: "
    "the base model as this member stores it, not something training did.",
    "acc_text": "exact match {tasks}",
    "merge_yes": "merges in {s:.3f} s",
    "merge_no": "cannot be merged ({why})",
    "merge_failed": "the merge probe failed ({why})",
    "probe_errors": "Probe errors (the run's accuracy stands; only these numbers are missing):",
    "not_run": "not run",
    "not_run_why": "planned by the last arena but no result file (interrupted?); `lorafam arena` again resumes it",
    "pick_intro": "**When to pick it.** ",
    "pick_params": "when adapter storage matters: {ratio:.2g}× LoRA's parameters",
    "pick_acc": "it beat LoRA by {diff:+.1f} points on {task} (beyond the ±{floor:.1f} floor)",
    "pick_acc_ci": "it beat LoRA by {diff:+.1f} points on {task} (95% interval {lo:+.1f} to {hi:+.1f})",
    "pick_worse_ci": "not for accuracy at this budget: {diff:+.1f} points vs LoRA on {task} (95% interval {lo:+.1f} to "
    "{hi:+.1f})",
    "pick_forget": "when keeping general behaviour matters: KL {kl:.3f} vs LoRA's {lkl:.3f}",
    "pick_worse": "not for accuracy at this budget: {diff:+.1f} points vs LoRA on {task} (floor ±{floor:.1f})",
    "pick_nothing": "At this budget nothing separated it from LoRA beyond noise; its case rests on its paper's "
    "setting (arXiv {arxiv}).",
    "pick_reference": "It is the reference the others are measured against.",
    "pick_slow": "it costs {ratio:.2f}× LoRA's step time",
    "pick_s2_short": "not for short tasks: its training loss at step 1, before any update, was {first:.2f} vs "
    "LoRA's {lfirst:.2f} on {task}, because S²-Attn cuts every training sequence into groups of {ratio} of its "
    "length, so on short examples the answer cannot see the question while training (it is built to extend "
    "long contexts)",
    "pick_first_loss": "its training loss at step 1, before any update, was {first:.2f} vs LoRA's {lfirst:.2f} "
    "on {task}: its training-time forward differs from the model's",
    "pick_unmoved": "its low forgetting (KL {kl:.3f}) is not a merit yet: it gained only {gain:+.1f} points over "
    "the untrained base on {task} (floor ±{floor:.1f}), so it has barely moved the model at this budget",
    "pick_nomerge": "it cannot be merged, so serving keeps the adapter's extra compute",
    "no_results": "No successful run of this member in these records.",
    "chapter_not_run": "Not run in this budget; `lorafam arena --budget standard` runs every member.",
    "notes_budget": "Budget **{budget}**: tasks {tasks}; seeds {seeds}; settings shared by the adapter runs: "
    "{settings}.",
    "notes_machine": "Machine: {cpu}, {cores} cores, {ram} GiB RAM; threads per run: {threads}; "
    "device: {device}. Versions: lorafam {version} (git {commit}{dirty}), {packages}, Python {python}.",
    "notes_cmd": "Reproduce:",
    "notes_wall": "The arena took {seconds:.0f} s of wall time.",
    "notes_harness": "All implementations share one harness (same data order, warm-up, clipping, numeric "
    "regime, batched greedy decoding); they differ only in how the model is built. Numeric regime here: "
    "{regime}. Each run is its own process; peak RSS is that process's kernel-reported maximum.",
    "regime_bf16": "bf16 autocast with the frozen base stored in bf16, adapters and optimizer state in fp32",
    "regime_fp32": "fp32 throughout ({why})",
    "regime_why": "a bf16 matmul measured {ratio:.1f}× slower than fp32 on this CPU",
    "notes_bench": "Probe files reused from benchmarks/results: {files}.",
    "dirty": ", uncommitted changes",
    "pareto_none": "no accuracy above zero yet",
    "estimates": "Memory estimates for larger models from `lorafam estimate` (no weights loaded; LoRA r=16 on "
    "all linear layers, bf16, batch 1 × 512 tokens, gradient checkpointing, CUDA runtime):",
    "col_model": "model",
    "col_bits": "base bits",
    "col_weights": "weights (GiB)",
    "col_total": "total (GiB)",
}


CLAIMS: dict[str, str] = {
    "lora_two_matrices": "LoRA freezes the base model and trains two small matrices.",
    "lora_forgets": "LoRA makes the model forget general knowledge.",
    "qlora_quarter": "QLoRA's 4-bit base takes 1/4 of the memory of a 16-bit base.",
    "qlora_70b": "QLoRA lets a 24 GB card fine-tune a 70B model.",
    "loraplus": "LoRA+ doubles training speed and adds 1–2 points.",
    "dora_vs_full": "DoRA beats full fine-tuning on many tasks.",
    "adalora_unstable": "AdaLoRA is very unstable.",
    "longlora": "LongLoRA's sliced attention breaks long-range reasoning.",
    "quantum": "Quantum-PEFT uses 1/10 of LoRA's parameters at equal quality, and grows logarithmically.",
    "mopeft": "MoPEFT routes each input to the best module.",
    "alora": "aLoRA keeps latency constant however long the chat.",
    "full_ft": "Full fine-tuning is slow and expensive.",
    "adapter_size": "Adapters are a few hundred MB.",
    "b_longlora_plus": "LongLoRA's “LoRA+” is the LoRA+ of Hayou et al.",
    "b_longlora_100k": "LongLoRA extended Llama-2 7B to 100k context with LoRA.",
    "b_mopeft_venue": "MoPEFT is a CVPR paper.",
    "b_alora_venue": "aLoRA (IBM) is a peer-reviewed conference paper.",
    "b_quantum_code": "Quantum-PEFT (ICLR 2025) comes with public code.",
}


REASONS: dict[str, str] = {
    "no_run": "No successful {member} run in these records.",
    "lora_frozen": "{trainable:,} of {total:,} parameters train ({pct:.2f}%): the rank-{rank} A and B of each "
    "adapted layer; every base weight is frozen.",
    "no_drift": "KL to the base is {kl:.4f} nats/token against a probe floor of {floor:.4f}: no measurable "
    "forgetting at this budget (full fine-tuning: {full_kl:.4f}).",
    "drift_more_than_full": "KL {kl:.3f} nats/token (top-1 agreement {top1:.2f}) — more drift than full "
    "fine-tuning's {full_kl:.3f} on the same data. It does move general behaviour.",
    "drift": "KL {kl:.3f} nats/token (top-1 agreement {top1:.2f}), full fine-tuning {full_kl:.3f}: LoRA moves "
    "general behaviour, but not more than full fine-tuning here.",
    "small_drift": "KL {kl:.3f} nats/token (top-1 agreement {top1:.2f}) above a floor of {floor:.4f}: a small "
    "drift, not wholesale forgetting.",
    "quarter": "Measured storage of the adapted layers' frozen weights: {bits:.3f} bits/weight for {member}, "
    "{ratio:.3f}× a 16-bit base (the unquantised base in these runs is stored at {ref_bits:.0f} bits). The "
    "block scales cost the extra fraction of a bit; embeddings and norms are not quantised.",
    "weights_alone": "At the measured {bits:.3f} bits/weight, the 70B weights alone need {weights_gib:.1f} GiB "
    "— more than 24 GB before activations or optimizer state (estimator total: {estimate_gib:.1f} GiB). The "
    "QLoRA paper's own claim is 65B on one 48 GB GPU.",
    "plus_both": "{diff:+.1f} points on {task} (floor ±{floor:.1f}); it reached LoRA's final loss "
    "{speedup:.1f}× sooner in steps; per-step time ratio {step_ratio:.2f}.",
    "plus_worse": "{diff:+.1f} points vs LoRA on {task} (floor ±{floor:.1f}): worse here.",
    "plus_within_noise": "{diff:+.1f} points vs LoRA on {task}, inside the ±{floor:.1f} noise floor; steps to "
    "LoRA's final loss: {speedup:.2f}× faster; per-step time ratio {step_ratio:.2f} (LoRA+ changes only learning rates, so a step computes the same thing: the ratio is timing noise). "
    "Not separable at {steps:.0f} steps.",
    "plus_partial": "{diff:+.1f} points on {task} (floor ±{floor:.1f}); reached LoRA's final loss {speedup:.2f}× "
    "sooner; per-step time ratio {step_ratio:.2f}. Part of the claim holds.",
    "plus_within_noise_noreach": "{diff:+.1f} points vs LoRA on {task}, inside the ±{floor:.1f} noise floor; "
    "it did not reach LoRA's final (smoothed) loss within the run; per-step time ratio {step_ratio:.2f} (LoRA+ "
    "changes only learning rates, so a step computes the same thing: the ratio is timing noise). Not separable at {steps:.0f} steps.",
    "plus_partial_noreach": "{diff:+.1f} points on {task} (floor ±{floor:.1f}), but it did not reach LoRA's "
    "final (smoothed) loss within the run; per-step time ratio {step_ratio:.2f}. Part of the claim holds.",
    "dora_wins": "DoRA − full fine-tuning per task (points, ± floor): {diffs}. Ahead on {wins} of {tasks}.",
    "dora_loses": "DoRA − full fine-tuning per task (points, ± floor): {diffs}. Behind on {losses} of {tasks}.",
    "dora_ties": "DoRA − full fine-tuning per task (points, ± floor): {diffs}. No task separates them.",
    "ada_failed": "{failed} of {runs} AdaLoRA runs failed or diverged.",
    "ada_calm": "{runs} AdaLoRA run(s), none failed; loss spikes per run {spikes:.1f} vs LoRA's {lora_spikes:.1f}; "
    "seed spread {sd:.3f} vs LoRA's {lora_sd:.3f} (lr {lr}). Not unstable here.",
    "ada_one_run": "{runs} AdaLoRA run(s), none failed; loss spikes per run {spikes:.1f} vs LoRA's "
    "{lora_spikes:.1f} (lr {lr}). Calm here, but instability is about variation across seeds and longer runs, "
    "which one short run cannot show; the standard budget (two seeds) judges it.",
    "ada_noisy": "No failures, but loss spikes per run {spikes:.1f} vs LoRA's {lora_spikes:.1f} and seed spread "
    "{sd:.3f} vs {lora_sd:.3f}: noisier than LoRA.",
    "needs_kv": "Needs the long-context kv task (not in this budget); run `lorafam arena --budget standard`.",
    "needs_kv_s2": "Needs the long-context kv task (not in this budget; run `lorafam arena --budget standard`). "
    "What was measured ({file}): an S²-Attn training step at {seq:.0f} tokens takes {s2_ratio:.2f}× the full-"
    "attention step — the speed side of the trade, not its accuracy.",
    "ll_kv": "On kv retrieval, evaluated with full attention: LongLoRA − LoRA = {diff:+.1f} points (floor "
    "±{floor:.1f}).",
    "q_params": "Trainable parameters {ratio:.3f}× LoRA's; accuracy {diff:+.1f} points vs LoRA (floor "
    "±{floor:.1f}); growth exponent of the parameter count in the layer width: {slope:.2f} (1 = linear like "
    "LoRA, near 0 = logarithmic).",
    "q_params_noquality": "Trainable parameters {ratio:.3f}× LoRA's; growth exponent of the parameter count "
    "in the layer width: {slope:.2f} (1 = linear like LoRA, near 0 = logarithmic). Equal quality cannot be "
    "judged at this budget: LoRA itself gained only {lora_gain:+.1f} points over the untrained base (floor "
    "±{gain_floor:.1f}), so there is no quality yet to be equal to.",
    "soft_gates": "Our MoPEFT gates ({router} router, no top-k) weight every submodule softly rather than "
    "picking one, as the paper describes learned gates that activate or weight submodules; vs LoRA "
    "{diff:+.1f} points (floor ±{floor:.1f}).",
    "topk_gates": "Gates keep the top {top_k} submodules ({router} router) — learned, not an oracle 'best'; vs "
    "LoRA {diff:+.1f} points (floor ±{floor:.1f}).",
    "needs_bench": "Needs the TTFT probe results file ({script}); none found.",
    "ttft": "From {file}: from history {x0:.0f} to {x1:.0f} tokens, TTFT grows {flat:.2f}× for "
    "{flat_name} and {steep:.2f}× for {steep_name}.",
    "ft_cost": "Full fine-tuning vs LoRA, same data: {step:.2f}× the step time, {rss:.2f}× the peak memory, "
    "{params:.0f}× the trainable parameters, checkpoint {ckpt_ratio:.0f}× the adapter file.",
    "size": "Measured LoRA r={rank} adapter on {model}: {mb:.1f} MB ({per_param:.1f} bytes/param). The same "
    "rank on all 7 projections of Llama-2-7B would be ≈{mb7:.0f} MB: tens of MB for small models, hundreds only "
    "at 7B and above.",
    "b_longlora_plus": "No: LongLoRA's “LoRA+” means LoRA plus trainable embeddings and norms; Hayou et al.'s "
    "LoRA+ is a learning-rate ratio. Same name, different idea.",
    "b_longlora_100k": "The 7B-100k model in LongLoRA's release is a full fine-tune; the LoRA+ checkpoints go up to "
    "13B-64k and 70B-32k.",
    "b_mopeft_venue": "It is a CVPR *workshop* paper, and the year is ambiguous: arXiv says the 2024 workshop, "
    "the proceedings list it in CVPRW 2025.",
    "b_alora_venue": "Our registry records it as an arXiv preprint (2025); we found no peer-reviewed venue.",
    "b_quantum_code": "The paper is at ICLR 2025, but we found no official public code; our implementation "
    "follows the abstract and secondary descriptions.",
}
