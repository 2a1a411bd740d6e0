"""Sentences of the interval-based claim rules (:mod:`lorafam.report.claims`), in English and Chinese.

Intervals are 95 % paired bootstrap intervals over the same test items (and seeds); "pts" are exact-match points,
NLL is the answer's negative log-likelihood per token in nats (lower is better).
"""

from __future__ import annotations

VERDICTS_EN = {"undecided": "undecided"}
VERDICTS_ZH = {"undecided": "尚无定论"}

EN: dict[str, str] = {
    "forget_needs_curves": "LoRA's KL to the base is {kl:.3f} nats/token (probe floor {floor:.4f}). Judging "
    "forgetting needs full fine-tuning's learning curve beside LoRA's (matched gain): `{budget}`.",
    "forget_more": "At a matched gain of {gain:.0f} pts on {task}, LoRA's KL to the base is {kl_lora:.3f} vs full "
    "fine-tuning's {kl_full:.3f} nats/token: LoRA − full = {d:+.3f} [{lo:+.3f}, {hi:+.3f}] over {n} general "
    "texts. LoRA moves general behaviour more than full fine-tuning for the same gain.",
    "forget_less": "At a matched gain of {gain:.0f} pts on {task}, LoRA's KL to the base is {kl_lora:.3f} vs full "
    "fine-tuning's {kl_full:.3f} nats/token: LoRA − full = {d:+.3f} [{lo:+.3f}, {hi:+.3f}] over {n} general "
    "texts. For the same gain LoRA forgets less than full fine-tuning.",
    "forget_open": "At a matched gain of {gain:.0f} pts on {task}, LoRA − full fine-tuning KL = {d:+.3f} "
    "[{lo:+.3f}, {hi:+.3f}] nats/token over {n} general texts (LoRA {kl_lora:.3f}, full {kl_full:.3f}): the "
    "interval includes 0. Settled by: more general prompts (forget_prompts) or {settle}.",
    "plus_flagged": "LoRA+ is flagged, not ranked: {flag} at this setting (exact match vs LoRA {d:+.1f} "
    "[{lo:+.1f}, {hi:+.1f}] pts).",
    "plus_needs_curves": "Needs per-example training losses of LoRA and LoRA+ on the same seeds (schema-2 "
    "records); exact match vs LoRA {d:+.1f} [{lo:+.1f}, {hi:+.1f}] pts.",
    "plus_iv": "Speed: LoRA+ reached LoRA's final smoothed training loss {speed:.2f}× sooner in steps "
    "[{speed_lo:.2f}, {speed_hi:.2f}] ({seeds} seed(s), {steps} steps, same data order; {unreached} of {reps} "
    "bootstrap replicates never reached it) → against 2×: {speed_v}. Points: LoRA+ − LoRA = {d:+.1f} "
    "[{lo:+.1f}, {hi:+.1f}] pts on {task} ({n} items), NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}] → against +1 pt: "
    "{gain_v} (settled by {settle}).",
    "plus_iv_unreached": "Speed: LoRA+ never reached LoRA's final smoothed training loss within {steps} steps "
    "({seeds} seed(s), same data order; nor did {unreached} of {reps} bootstrap replicates), so it was not faster "
    "in steps at all → against 2×: {speed_v}. Points: LoRA+ − LoRA = {d:+.1f} [{lo:+.1f}, {hi:+.1f}] pts on {task} "
    "({n} items), NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}] → against +1 pt: {gain_v} (settled by {settle}).",
    "dora_iv": "DoRA − full fine-tuning, paired per task: {diffs}. Ahead on {wins}, behind on {losses} of {tasks}.",
    "ada_failed": "{failed} of {runs} AdaLoRA runs failed or diverged ({flag}).",
    "ada_spiky": "Loss spikes per run: AdaLoRA {spikes:.1f} vs LoRA {lora_spikes:.1f} (lr {lr}): spikier than LoRA.",
    "ada_needs_seeds": "{runs} AdaLoRA run(s) on {task}, none failed or diverged; loss spikes per run {spikes:.1f} "
    "vs LoRA's {lora_spikes:.1f} (lr {lr}). Instability is a statement about spread across seeds; {seeds} common "
    "seed(s) here, ≥ 3 needed: `{budget}` runs AdaLoRA and LoRA on three.",
    "ada_spread": "{seeds} seeds each on {task}, none failed or diverged; loss spikes per run {spikes:.1f} vs LoRA "
    "{lora_spikes:.1f}. Answer NLL per seed: AdaLoRA {ada_nll}, LoRA {lora_nll} (exact match % AdaLoRA "
    "{ada_em}; LoRA {lora_em}). Seed spread ratio AdaLoRA/LoRA {ratio:.2f} [{lo:.2f}, {hi:.2f}] (bootstrap over "
    "seeds and items; with 3 seeds a lower bound on the uncertainty) against 2×.",
    "needs_recall": "Needs the long-range recall task (its answer is more than one S²-Attn group away from the "
    "question): `{budget}`.",
    "needs_recall_s2": "Needs the long-range recall task (`{budget}`). Measured here ({file}): an S²-Attn "
    "training step at {seq:.0f} tokens takes {s2_ratio:.2f}× the full-attention step — the speed side, not "
    "accuracy.",
    "ll_lora_not_learned": "LoRA did not learn the recall task within the budget (gain over the base {g:+.1f} "
    "[{glo:+.1f}, {ghi:+.1f}] pts; ≥ 20 needed), so LongLoRA cannot be judged against it here (LongLoRA − LoRA "
    "{d:+.1f} [{lo:+.1f}, {hi:+.1f}] pts).",
    "ll_recall": "On recall (code word more than one S²-Attn group before the question), LongLoRA trained with "
    "S²-Attn and evaluated with full attention − LoRA = {d:+.1f} [{lo:+.1f}, {hi:+.1f}] pts ({n} items), NLL "
    "{nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}]; LoRA gained {g:+.1f} [{glo:+.1f}, {ghi:+.1f}] pts over the base. "
    "Against −10 pts (settled by {settle}).",
    "q_iv": "Trainable parameters {ratio:.3f}× LoRA's; growth exponent in the layer width {slope:.2f} (1 = linear "
    "like LoRA, near 0 = logarithmic); quality vs LoRA {d:+.1f} [{lo:+.1f}, {hi:+.1f}] pts on {task} ({n} items), "
    "NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}] → 'equal' (not more than 5 pts behind): {quality} (settled by "
    "{settle}).",
    "quarter_iv": "Measured storage of the adapted layers' frozen weights: {bits:.3f} bits/weight for {member}, "
    "{ratio:.3f}× a 16-bit base (unquantised base here: {ref_bits:.0f} bits). Its price in quality on {task}: "
    "QLoRA − LoRA = {d:+.1f} [{lo:+.1f}, {hi:+.1f}] pts, NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}].",
    "needs_mix": "Routing is judged on the two-task mix (dates + json) with a LoRA and a DoRA expert, next to each "
    "expert alone: `{budget}`.",
    "routes_flat": "On the mix the mean {e0} gate is {g_dates:.3f} [{g_dates_lo:.3f}, {g_dates_hi:.3f}] on dates "
    "and {g_json:.3f} [{g_json_lo:.3f}, {g_json_hi:.3f}] on json: a difference of {split:+.3f} [{split_lo:+.3f}, "
    "{split_hi:+.3f}], inside ±0.05 — the router does not split inputs by task.",
    "routes_open": "Mean {e0} gate: dates {g_dates:.3f} [{g_dates_lo:.3f}, {g_dates_hi:.3f}], json {g_json:.3f} "
    "[{g_json_lo:.3f}, {g_json_hi:.3f}], difference {split:+.3f} [{split_lo:+.3f}, {split_hi:+.3f}]: the interval "
    "includes 0 (more mix items would settle it).",
    "routes_no_best": "The router splits by task (mean {e0} gate dates {g_dates:.3f}, json {g_json:.3f}, difference "
    "{split:+.3f} [{split_lo:+.3f}, {split_hi:+.3f}]), but neither expert alone is better on either part "
    "(LoRA − DoRA NLL: dates {alone_dates:+.4f} [{alone_dates_lo:+.4f}, {alone_dates_hi:+.4f}], json "
    "{alone_json:+.4f} [{alone_json_lo:+.4f}, {alone_json_hi:+.4f}]), so there is no 'best' to route to.",
    "routes_best": "Mean {e0} gate: dates {g_dates:.3f} [{g_dates_lo:.3f}, {g_dates_hi:.3f}], json {g_json:.3f} "
    "[{g_json_lo:.3f}, {g_json_hi:.3f}] (difference {split:+.3f} [{split_lo:+.3f}, {split_hi:+.3f}]). Alone "
    "(LoRA − DoRA NLL): dates {alone_dates:+.4f} [{alone_dates_lo:+.4f}, {alone_dates_hi:+.4f}] → best "
    "{best_dates}; json {alone_json:+.4f} [{alone_json_lo:+.4f}, {alone_json_hi:+.4f}] → best {best_json}.",
}

ZH: dict[str, str] = {
    "forget_needs_curves": "LoRA 与基座的 KL 为每 token {kl:.3f} nats（探针下限 {floor:.4f}）。判断遗忘需要全量微调的学习曲线"
    "与 LoRA 的放在一起（在相同收益处比较）：`{budget}`。",
    "forget_more": "在 {task} 上收益同为 {gain:.0f} 分时，LoRA 与基座的 KL 为 {kl_lora:.3f}，全量微调为 {kl_full:.3f} "
    "nats/token：LoRA − 全量 = {d:+.3f} [{lo:+.3f}, {hi:+.3f}]（{n} 段通用文本）。同样的收益下 LoRA 改变通用行为更多。",
    "forget_less": "在 {task} 上收益同为 {gain:.0f} 分时，LoRA 与基座的 KL 为 {kl_lora:.3f}，全量微调为 {kl_full:.3f} "
    "nats/token：LoRA − 全量 = {d:+.3f} [{lo:+.3f}, {hi:+.3f}]（{n} 段通用文本）。同样的收益下 LoRA 遗忘得比全量微调少。",
    "forget_open": "在 {task} 上收益同为 {gain:.0f} 分时，LoRA − 全量微调的 KL = {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
    "nats/token（{n} 段通用文本；LoRA {kl_lora:.3f}，全量 {kl_full:.3f}）：区间包含 0。需要更多通用提示（forget_prompts）"
    "或 {settle} 才能定论。",
    "plus_flagged": "LoRA+ 被标记而不参与排名：在这个设置下 {flag}（与 LoRA 的完全匹配差 {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分）。",
    "plus_needs_curves": "需要 LoRA 与 LoRA+ 在相同种子上的逐样本训练损失（第 2 版记录）；与 LoRA 的完全匹配差 {d:+.1f} "
    "[{lo:+.1f}, {hi:+.1f}] 分。",
    "plus_iv": "速度：LoRA+ 达到 LoRA 最终平滑训练损失所需步数少 {speed:.2f} 倍 [{speed_lo:.2f}, {speed_hi:.2f}]"
    "（{seeds} 个种子，{steps} 步，相同数据顺序；{reps} 次自助重采样中 {unreached} 次没有达到）→ 对照 2 倍：{speed_v}。"
    "分数：LoRA+ − LoRA = {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分（{task}，{n} 题），NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}] "
    "→ 对照 +1 分：{gain_v}（定论所需：{settle}）。",
    "plus_iv_unreached": "速度：在 {steps} 步内 LoRA+ 始终没有达到 LoRA 的最终平滑训练损失（{seeds} 个种子，相同数据顺序；"
    "{reps} 次自助重采样中 {unreached} 次也没有达到），按步数并不更快 → 对照 2 倍：{speed_v}。"
    "分数：LoRA+ − LoRA = {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分（{task}，{n} 题），NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}] "
    "→ 对照 +1 分：{gain_v}（定论所需：{settle}）。",
    "dora_iv": "DoRA − 全量微调，逐任务配对：{diffs}。领先 {wins} 个、落后 {losses} 个，共 {tasks} 个任务。",
    "ada_failed": "{runs} 次 AdaLoRA 运行中有 {failed} 次失败或发散（{flag}）。",
    "ada_spiky": "每次运行的损失尖峰：AdaLoRA {spikes:.1f}，LoRA {lora_spikes:.1f}（学习率 {lr}）：比 LoRA 更不平稳。",
    "ada_needs_seeds": "{task} 上 {runs} 次 AdaLoRA 运行，无一失败或发散；每次运行的损失尖峰 {spikes:.1f}，LoRA 为 "
    "{lora_spikes:.1f}（学习率 {lr}）。“不稳定”说的是种子间的离散程度；这里共同种子只有 {seeds} 个，至少需要 3 个："
    "`{budget}` 会在三个种子上运行 AdaLoRA 和 LoRA。",
    "ada_spread": "{task} 上各 {seeds} 个种子，无一失败或发散；每次运行的损失尖峰 {spikes:.1f}，LoRA {lora_spikes:.1f}。"
    "各种子的答案 NLL：AdaLoRA {ada_nll}，LoRA {lora_nll}（完全匹配率 % AdaLoRA {ada_em}；LoRA {lora_em}）。"
    "种子离散度之比 AdaLoRA/LoRA = {ratio:.2f} [{lo:.2f}, {hi:.2f}]（对种子和题目自助重采样；只有 3 个种子时这是不确定性"
    "的下限），对照 2 倍。",
    "needs_recall": "需要长程回忆任务（答案与问题相隔超过一个 S²-Attn 分组）：`{budget}`。",
    "needs_recall_s2": "需要长程回忆任务（`{budget}`）。这里测到的（{file}）：{seq:.0f} token 时一步 S²-Attn 训练耗时是"
    "完整注意力的 {s2_ratio:.2f} 倍——这是速度一侧，不是准确率。",
    "ll_lora_not_learned": "在这个预算内 LoRA 没有学会回忆任务（比基座提升 {g:+.1f} [{glo:+.1f}, {ghi:+.1f}] 分；至少需要 "
    "20 分），因此这里无法拿它来评判 LongLoRA（LongLoRA − LoRA {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分）。",
    "ll_recall": "在回忆任务上（口令与问题相隔超过一个 S²-Attn 分组），用 S²-Attn 训练、用完整注意力评测的 LongLoRA − LoRA "
    "= {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分（{n} 题），NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}]；LoRA 比基座提升 {g:+.1f} "
    "[{glo:+.1f}, {ghi:+.1f}] 分。对照 −10 分（定论所需：{settle}）。",
    "q_iv": "可训练参数是 LoRA 的 {ratio:.3f} 倍；参数量随层宽的增长指数 {slope:.2f}（1 = 与 LoRA 一样线性，接近 0 = "
    "对数）；与 LoRA 的质量差 {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分（{task}，{n} 题），NLL {nd:+.4f} [{nlo:+.4f}, "
    "{nhi:+.4f}] →“同等”（落后不超过 5 分）：{quality}（定论所需：{settle}）。",
    "quarter_iv": "被适配层冻结权重的实测存储：{member} 为每个权重 {bits:.3f} 比特，是 16 比特基座的 {ratio:.3f} 倍"
    "（这里未量化的基座为 {ref_bits:.0f} 比特）。{task} 上的质量代价：QLoRA − LoRA = {d:+.1f} [{lo:+.1f}, {hi:+.1f}] 分，"
    "NLL {nd:+.4f} [{nlo:+.4f}, {nhi:+.4f}]。",
    "needs_mix": "路由要在两任务混合（日期 + json）上、用一个 LoRA 专家和一个 DoRA 专家来判断，并与每个专家单独训练的结果"
    "对照：`{budget}`。",
    "routes_flat": "在混合任务上，{e0} 门控的平均值在日期题上为 {g_dates:.3f} [{g_dates_lo:.3f}, {g_dates_hi:.3f}]，"
    "在 json 题上为 {g_json:.3f} [{g_json_lo:.3f}, {g_json_hi:.3f}]：相差 {split:+.3f} [{split_lo:+.3f}, "
    "{split_hi:+.3f}]，在 ±0.05 之内——路由器并没有按任务区分输入。",
    "routes_open": "{e0} 门控平均值：日期 {g_dates:.3f} [{g_dates_lo:.3f}, {g_dates_hi:.3f}]，json {g_json:.3f} "
    "[{g_json_lo:.3f}, {g_json_hi:.3f}]，差 {split:+.3f} [{split_lo:+.3f}, {split_hi:+.3f}]：区间包含 0（更多混合题目"
    "才能定论）。",
    "routes_no_best": "路由器按任务区分（{e0} 门控平均值：日期 {g_dates:.3f}，json {g_json:.3f}，差 {split:+.3f} "
    "[{split_lo:+.3f}, {split_hi:+.3f}]），但单独训练时两个专家在两部分上都分不出高下（LoRA − DoRA 的 NLL：日期 "
    "{alone_dates:+.4f} [{alone_dates_lo:+.4f}, {alone_dates_hi:+.4f}]，json {alone_json:+.4f} [{alone_json_lo:+.4f}, "
    "{alone_json_hi:+.4f}]），所以谈不上路由到“最合适”的模块。",
    "routes_best": "{e0} 门控平均值：日期 {g_dates:.3f} [{g_dates_lo:.3f}, {g_dates_hi:.3f}]，json {g_json:.3f} "
    "[{g_json_lo:.3f}, {g_json_hi:.3f}]（差 {split:+.3f} [{split_lo:+.3f}, {split_hi:+.3f}]）。单独训练（LoRA − DoRA "
    "的 NLL）：日期 {alone_dates:+.4f} [{alone_dates_lo:+.4f}, {alone_dates_hi:+.4f}] → 更好的是 {best_dates}；json "
    "{alone_json:+.4f} [{alone_json_lo:+.4f}, {alone_json_hi:+.4f}] → 更好的是 {best_json}。",
}

UI_EN: dict[str, str] = {
    "lede_iv": "**How to read this.** This is the *{budget}* budget: {steps} steps × batch {batch}, {seeds} seed(s), "
    "{items} test items on the main task ({task}), each scored teacher-forced (one forward pass: its answer NLL, and whether every "
    "answer token is the model's arg-max, which is greedy decoding's exact match). Every difference below is "
    "paired — the same items (and seeds) on both sides — and shown with its 95 % bootstrap interval. On {task}, "
    "LoRA gained {gain:+.1f} [{gain_lo:+.1f}, {gain_hi:+.1f}] points of exact match over the untrained base.",
    "diff_h": "Differences from LoRA (paired, 95 % intervals)",
    "diff_intro": "Each row minus LoRA on {task}: exact match in points and answer NLL in nats per token (negative "
    "NLL = better than LoRA), over the same {items} test items. An interval that excludes 0 separates the member "
    "from LoRA; one that straddles 0 bounds the difference. A flagged setting diverged and is not ranked.",
    "col_em_diff": "EM − LoRA (pts) [95 %]",
    "col_nll_diff": "NLL − LoRA [95 %]",
    "col_flag": "flag",
}
UI_ZH: dict[str, str] = {
    "lede_iv": "**阅读说明。** 这是 *{budget}* 预算：{steps} 步 × 批量 {batch}、{seeds} 个随机种子、主任务 {task} 上 {items} "
    "道测试题，每道题用教师强制打分（一次前向：答案的 NLL，以及答案的每个 token 是否都是模型的 arg-max，即贪心解码的"
    "完全匹配）。下面的每个差值都是配对的——两边是同样的题目（和种子）——并给出 95% 自助法区间。在 {task} 上，LoRA "
    "比未训练的基座提高了 {gain:+.1f} [{gain_lo:+.1f}, {gain_hi:+.1f}] 个百分点的完全匹配率。",
    "diff_h": "与 LoRA 的差值（配对，95% 区间）",
    "diff_intro": "每一行减去 LoRA（{task} 上）：完全匹配率以百分点计，答案 NLL 以每 token nats 计（NLL 为负 = 比 LoRA "
    "好），题目都是同样的 {items} 道。区间不含 0 说明与 LoRA 有差别；跨过 0 则给出差别的上下界。被标记的设置发散了，"
    "不参与排名。",
    "col_em_diff": "完全匹配 − LoRA（百分点）[95%]",
    "col_nll_diff": "NLL − LoRA [95%]",
    "col_flag": "标记",
}
