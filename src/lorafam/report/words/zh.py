"""Chinese wording of the lab report (same keys as :mod:`lorafam.report.words.en`)."""

from __future__ import annotations

VERDICTS: dict[str, str] = {
    "supported": "成立",
    "contradicted": "不成立",
    "mixed": "部分成立",
    "not measurable here": "此处无法测量",
}


SERIES_NAMES: dict[str, str] = {
    "reuse": "复用共享基座缓存的 aLoRA",
    "peft_reuse": "复用缓存的 PEFT aLoRA",
    "reprefill": "重新读入全部历史的 aLoRA",
    "peft_reprefill": "重新读入历史的 PEFT aLoRA",
    "lora": "普通 LoRA（必须重新读入历史）",
    "base_decode": "基座模型的一步解码",
}


UI: dict[str, str] = {
    "col_acc": "完全匹配率 {task} (%)",
    "sep": "；",
    "end": "。",
    "but": "但",
    "no_bench_file": "没有结果文件",
    "title": "LoRA 家族实测：一部带数字的历史",
    "lede": "LoRA 家族的每一位成员都在同一台机器上、用同样的任务和同样的预算训练并测量。下文每一句评论都由这些记录"
    "按明确的规则计算得出，或者注明了出处。预算：**{budget}** —— 共 {runs} 次运行（成功 {ok}，失败 {failed}，"
    "跳过 {skipped}）。",
    "cannot_rank": "**请先读这一段。** 这是 *{budget}* 预算：{steps} 步、{seeds} 个随机种子、每个任务 {items} "
    "道测试题。在这个规模下，噪声下限约为 ±{floor:.0f} 个百分点的准确率，因此下面的排行榜**无法给成员排名**；"
    "落在噪声下限以内的差异只是噪声。要排名请运行 `lorafam arena --budget standard`。",
    "tree": "家族谱系",
    "tree_intro": "谁源自谁，数据取自注册表（年份、机构、发表处、核心想法）。",
    "chapters": "成员逐一介绍",
    "league": "排行榜",
    "league_intro": "数值为各种子的平均；有两个及以上种子时，± 为种子间的样本标准差。准确率是留出题目上的完全匹配率。"
    "KL 为遗忘探针（每 token 的 nats，基座 ‖ 微调后，在 {n} 条固定的通用提示上）；基座一行的 KL 是探针本身的噪声下限（数值方案相对 fp32 参考）。",
    "plots": "图表",
    "claims": "说法核查",
    "notes": "方法说明",
    "failed": "失败与跳过的运行",
    "kept": "单独存放的运行",
    "kept_intro": "以下结果文件来自其他 lorafam 版本或其他机器，没有混入任何表格：",
    "col_member": "成员",
    "col_params": "可训练参数",
    "col_rss": "峰值内存 RSS (MB)",
    "col_step": "秒/步",
    "col_tok": "tokens/秒",
    "col_kl": "KL",
    "col_size": "适配器 (MB)",
    "col_decode": "解码 tok/s（相对基座）",
    "col_merge": "合并 (秒)",
    "col_year": "年份",
    "col_origin": "机构",
    "col_venue": "发表处",
    "col_idea": "核心想法",
    "col_parent": "父方法",
    "col_claim": "说法",
    "col_verdict": "结论",
    "col_evidence": "背后的数字",
    "col_source": "出处",
    "col_status": "状态",
    "col_error": "错误",
    "col_run": "运行",
    "fig_tree": "家族时间线（注册表）",
    "fig_curve": "完全匹配率随训练步数的变化",
    "fig_pareto": "可训练参数与准确率（虚线为帕累托前沿）",
    "fig_mem": "每次运行的峰值内存",
    "fig_ttft": "aLoRA 首 token 延迟随历史长度的变化（来自 {file}）",
    "fig_s2": "S²-Attn 每步时间随上下文长度的变化（来自 {file}）",
    "no_fig": "未绘制：{why}。",
    "chapter_what": "**它改变了什么。** {idea}（{origin}，{venue}；arXiv {arxiv}）。",
    "chapter_nums": "**本次实测。** {acc_text}；可训练参数 {params:,} 个（占模型 {pct:.2f}%）；每步 {step:.2f} 秒"
    "（LoRA 的 {step_ratio:.2f} 倍）；峰值内存 {rss:.0f} MB；遗忘 KL {kl:.3f}；适配器文件 {mb:.2f} MB；{merge}。",
    "chapter_peft": "同一成员通过 Hugging Face PEFT、在同一套测试框架下运行：{acc_text}，每步 {step:.2f} 秒"
    "（我们与 PEFT 的每步时间之比 {ratio:.2f}）。",
    "chapter_kl_start": "它的遗忘 KL（{kl:.3f}）中，有 {start:.3f} 在第一步训练之前就已存在：来自该成员存储基座模型的方式，"
    "而不是训练造成的。",
    "acc_text": "完全匹配率 {tasks}",
    "merge_yes": "合并耗时 {s:.3f} 秒",
    "merge_no": "无法合并（{why}）",
    "merge_failed": "合并探针出错（{why}）",
    "probe_errors": "探针出错（该运行的准确率有效，只缺这些数字）：",
    "not_run": "未运行",
    "not_run_why": "上一次竞技场计划了它，但没有结果文件（被中断？）；再次运行 `lorafam arena` 会接着跑",
    "pick_intro": "**什么时候选它。** ",
    "pick_params": "在意适配器存储时：参数量是 LoRA 的 {ratio:.2g} 倍",
    "pick_acc": "它在 {task} 上比 LoRA 高 {diff:+.1f} 个百分点（超出 ±{floor:.1f} 的噪声下限）",
    "pick_acc_ci": "它在 {task} 上比 LoRA 高 {diff:+.1f} 个百分点（95% 置信区间 {lo:+.1f} 到 {hi:+.1f}）",
    "pick_worse_ci": "在这个预算下不适合追求准确率：在 {task} 上比 LoRA {diff:+.1f} 个百分点（95% 置信区间 {lo:+.1f} 到 "
    "{hi:+.1f}）",
    "pick_forget": "在意保留通用能力时：KL 为 {kl:.3f}，LoRA 为 {lkl:.3f}",
    "pick_worse": "在这个预算下不适合追求准确率：在 {task} 上比 LoRA {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）",
    "pick_nothing": "在这个预算下，它与 LoRA 的差别都没有超出噪声；它的优势要看论文里的设定（arXiv {arxiv}）。",
    "pick_reference": "它是其他成员比较的基准。",
    "pick_slow": "每步时间是 LoRA 的 {ratio:.2f} 倍",
    "pick_s2_short": "不适合短任务：在 {task} 上，它第一步（尚未更新参数）的训练损失是 {first:.2f}，LoRA 是 {lfirst:.2f}。"
    "原因是 S²-Attn 训练时把每条序列切成长度占 {ratio} 的若干组，短样本里答案看不到问题（它本来是为扩展长上下文设计的）",
    "pick_first_loss": "在 {task} 上，它第一步（尚未更新参数）的训练损失是 {first:.2f}，LoRA 是 {lfirst:.2f}："
    "它训练时的前向计算与原模型不同",
    "pick_unmoved": "它遗忘少（KL {kl:.3f}）暂时算不上优点：在 {task} 上相对未训练的基座只提高了 {gain:+.1f} 个百分点"
    "（噪声下限 ±{floor:.1f}），这个预算下它几乎还没改动模型",
    "pick_nomerge": "它无法合并，部署时适配器的额外计算一直存在",
    "no_results": "这些记录里没有该成员的成功运行。",
    "chapter_not_run": "这个预算没有运行它；`lorafam arena --budget standard` 会运行每个成员。",
    "notes_budget": "预算 **{budget}**：任务 {tasks}；种子 {seeds}；适配器运行共用的设置：{settings}。",
    "notes_machine": "机器：{cpu}，{cores} 核，{ram} GiB 内存；每次运行的线程数：{threads}；设备：{device}。"
    "版本：lorafam {version}（git {commit}{dirty}），{packages}，Python {python}。",
    "notes_cmd": "复现命令：",
    "notes_wall": "整个竞技场耗时 {seconds:.0f} 秒。",
    "notes_harness": "所有实现共用同一套测试框架（相同的数据顺序、预热、梯度裁剪、数值方案、批量贪心解码）；区别只在于"
    "模型如何构建。本次的数值方案：{regime}。每次运行是一个独立进程；峰值内存取自内核对该进程的统计。",
    "regime_bf16": "bf16 autocast，冻结的基座以 bf16 存储，适配器和优化器状态为 fp32",
    "regime_fp32": "全程 fp32（{why}）",
    "regime_why": "在这颗 CPU 上 bf16 矩阵乘法实测比 fp32 慢 {ratio:.1f} 倍",
    "notes_bench": "复用了 benchmarks/results 中的探针结果文件：{files}。",
    "dirty": "，有未提交的修改",
    "pareto_none": "目前没有高于零的准确率",
    "estimates": "来自 `lorafam estimate` 的大模型内存估算（不加载权重；LoRA r=16 作用于全部线性层，bf16，batch 1 × 512 "
    "token，梯度检查点，CUDA 运行时）：",
    "col_model": "模型",
    "col_bits": "基座比特",
    "col_weights": "权重 (GiB)",
    "col_total": "总计 (GiB)",
}


CLAIMS: dict[str, str] = {
    "lora_two_matrices": "LoRA 冻结基座模型，只训练两个小矩阵。",
    "lora_forgets": "LoRA 会让模型遗忘通用知识。",
    "qlora_quarter": "QLoRA 的 4 比特基座只占 16 比特基座 1/4 的内存。",
    "qlora_70b": "QLoRA 让一张 24 GB 的显卡就能微调 70B 模型。",
    "loraplus": "LoRA+ 让训练速度翻倍，还能多涨 1–2 个点。",
    "dora_vs_full": "DoRA 在许多任务上胜过全量微调。",
    "adalora_unstable": "AdaLoRA 非常不稳定。",
    "longlora": "LongLoRA 的分片注意力会破坏长程推理。",
    "quantum": "Quantum-PEFT 只用 LoRA 1/10 的参数就达到同等质量，且参数量按对数增长。",
    "mopeft": "MoPEFT 会把每个输入路由到最合适的模块。",
    "alora": "无论对话多长，aLoRA 都能保持延迟不变。",
    "full_ft": "全量微调又慢又贵。",
    "adapter_size": "适配器文件有几百 MB。",
    "b_longlora_plus": "LongLoRA 里的“LoRA+”就是 Hayou 等人提出的 LoRA+。",
    "b_longlora_100k": "LongLoRA 用 LoRA 把 Llama-2 7B 扩展到了 100k 上下文。",
    "b_mopeft_venue": "MoPEFT 是一篇 CVPR 论文。",
    "b_alora_venue": "aLoRA（IBM）是经过同行评审的会议论文。",
    "b_quantum_code": "Quantum-PEFT（ICLR 2025）公开了代码。",
}


REASONS: dict[str, str] = {
    "no_run": "这些记录中没有 {member} 的成功运行。",
    "lora_frozen": "{total:,} 个参数中只有 {trainable:,} 个参与训练（{pct:.2f}%）：即每个被适配层的秩为 {rank} 的 A "
    "和 B；所有基座权重都被冻结。",
    "no_drift": "与基座的 KL 为每 token {kl:.4f} nats，探针噪声下限为 {floor:.4f}：在这个预算下测不到遗忘"
    "（全量微调：{full_kl:.4f}）。",
    "drift_more_than_full": "KL 为每 token {kl:.3f} nats（top-1 一致率 {top1:.2f}），比同样数据上全量微调的 "
    "{full_kl:.3f} 漂移更大。它确实改变了通用行为。",
    "drift": "KL 为每 token {kl:.3f} nats（top-1 一致率 {top1:.2f}），全量微调为 {full_kl:.3f}：LoRA 会改变通用行为，"
    "但这里并不比全量微调更多。",
    "small_drift": "KL 为每 token {kl:.3f} nats（top-1 一致率 {top1:.2f}），噪声下限 {floor:.4f}：有小幅漂移，"
    "谈不上大面积遗忘。",
    "quarter": "实测被适配层冻结权重的存储：{member} 为每个权重 {bits:.3f} 比特，是 16 比特基座的 {ratio:.3f} 倍"
    "（本次未量化的基座以 {ref_bits:.0f} 比特存储）。多出来的零头来自分块缩放因子；嵌入层和归一化层不量化。",
    "weights_alone": "按实测的每权重 {bits:.3f} 比特，70B 模型仅权重就需要 {weights_gib:.1f} GiB——还没算激活值和"
    "优化器状态就已超过 24 GB（估算器总计：{estimate_gib:.1f} GiB）。QLoRA 论文自己的说法是单张 48 GB 显卡微调 65B。",
    "plus_both": "在 {task} 上 {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）；达到 LoRA 最终损失所需步数快 "
    "{speedup:.1f} 倍；每步时间之比 {step_ratio:.2f}。",
    "plus_worse": "在 {task} 上比 LoRA {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）：这里反而更差。",
    "plus_within_noise": "在 {task} 上比 LoRA {diff:+.1f} 个百分点，落在 ±{floor:.1f} 的噪声下限以内；达到 LoRA "
    "最终损失的步数快 {speedup:.2f} 倍；每步时间之比 {step_ratio:.2f}（LoRA+ 只改学习率，每步计算相同，这个比值反映的是计时噪声）。{steps:.0f} 步时无法区分。",
    "plus_partial": "在 {task} 上 {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）；达到 LoRA 最终损失快 {speedup:.2f} 倍；"
    "每步时间之比 {step_ratio:.2f}。说法部分成立。",
    "plus_within_noise_noreach": "在 {task} 上比 LoRA {diff:+.1f} 个百分点，落在 ±{floor:.1f} 的噪声下限以内；"
    "训练结束时仍未达到 LoRA 的最终（平滑后）损失；每步时间之比 {step_ratio:.2f}（LoRA+ 只改学习率，每步计算相同，这个比值反映的是计时噪声）。"
    "{steps:.0f} 步时无法区分。",
    "plus_partial_noreach": "在 {task} 上 {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}），但训练结束时仍未达到 LoRA "
    "的最终（平滑后）损失；每步时间之比 {step_ratio:.2f}。说法部分成立。",
    "dora_wins": "各任务上 DoRA − 全量微调（百分点，± 噪声下限）：{diffs}。{tasks} 个任务中领先 {wins} 个。",
    "dora_loses": "各任务上 DoRA − 全量微调（百分点，± 噪声下限）：{diffs}。{tasks} 个任务中落后 {losses} 个。",
    "dora_ties": "各任务上 DoRA − 全量微调（百分点，± 噪声下限）：{diffs}。没有任务能区分两者。",
    "ada_failed": "{runs} 次 AdaLoRA 运行中有 {failed} 次失败或发散。",
    "ada_calm": "{runs} 次 AdaLoRA 运行，无一失败；每次运行的损失尖峰 {spikes:.1f} 次，LoRA 为 {lora_spikes:.1f} 次；"
    "种子间波动 {sd:.3f}，LoRA 为 {lora_sd:.3f}（学习率 {lr}）。这里并不不稳定。",
    "ada_one_run": "{runs} 次 AdaLoRA 运行，无一失败；每次运行的损失尖峰 {spikes:.1f} 次，LoRA 为 {lora_spikes:.1f} 次"
    "（学习率 {lr}）。这里很平稳，但“不稳定”说的是不同种子、更长训练之间的波动，一次短训练看不出来；标准预算（两个种子）"
    "才能判断。",
    "ada_noisy": "没有失败，但每次运行的损失尖峰 {spikes:.1f} 次（LoRA {lora_spikes:.1f} 次），种子间波动 {sd:.3f}"
    "（LoRA {lora_sd:.3f}）：比 LoRA 更嘈杂。",
    "needs_kv": "需要长上下文 kv 任务（本预算未包含）；请运行 `lorafam arena --budget standard`。",
    "needs_kv_s2": "需要长上下文 kv 任务（本预算未包含；请运行 `lorafam arena --budget standard`）。已测到的（{file}）："
    "{seq:.0f} token 时 S²-Attn 的训练步耗时是完整注意力的 {s2_ratio:.2f} 倍——这是速度一侧的取舍，不是准确率。",
    "ll_kv": "在 kv 检索任务上、用完整注意力评测：LongLoRA − LoRA = {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）。",
    "q_params": "可训练参数是 LoRA 的 {ratio:.3f} 倍；准确率比 LoRA {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）；"
    "参数量随层宽增长的指数为 {slope:.2f}（1 表示像 LoRA 那样线性，接近 0 表示对数增长）。",
    "q_params_noquality": "可训练参数是 LoRA 的 {ratio:.3f} 倍；参数量随层宽增长的指数为 {slope:.2f}（1 表示像 LoRA "
    "那样线性，接近 0 表示对数增长）。这个预算下无法判断“质量相当”：LoRA 自己相对未训练的基座只提高了 "
    "{lora_gain:+.1f} 个百分点（噪声下限 ±{gain_floor:.1f}），还没有可供比较的质量。",
    "soft_gates": "我们的 MoPEFT 门控（{router} 路由，不取 top-k）对所有子模块做软加权，而不是挑出一个；论文描述的"
    "也是学习得到的、激活或加权子模块的门控。相对 LoRA {diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）。",
    "topk_gates": "门控保留前 {top_k} 个子模块（{router} 路由）——是学出来的，不是预知“最佳”；相对 LoRA "
    "{diff:+.1f} 个百分点（噪声下限 ±{floor:.1f}）。",
    "needs_bench": "需要首 token 延迟探针的结果文件（{script}）；未找到。",
    "ttft": "来自 {file}：历史从 {x0:.0f} 增加到 {x1:.0f} 个 token 时，{flat_name} 的首 token 延迟增长 {flat:.2f} 倍，"
    "{steep_name} 增长 {steep:.2f} 倍。",
    "ft_cost": "同样数据下全量微调与 LoRA 相比：每步时间 {step:.2f} 倍，峰值内存 {rss:.2f} 倍，可训练参数 {params:.0f} "
    "倍，检查点大小是适配器文件的 {ckpt_ratio:.0f} 倍。",
    "size": "实测 {model} 上 r={rank} 的 LoRA 适配器：{mb:.1f} MB（每参数 {per_param:.1f} 字节）。同样的秩放到 "
    "Llama-2-7B 的全部 7 个投影上约为 {mb7:.0f} MB：小模型是几十 MB，7B 及以上才到几百 MB。",
    "b_longlora_plus": "不是：LongLoRA 的“LoRA+”指 LoRA 加上可训练的嵌入层和归一化层；Hayou 等人的 LoRA+ 是学习率"
    "比例。名字相同，想法不同。",
    "b_longlora_100k": "LongLoRA 发布的 7B-100k 模型是全量微调；LoRA+ 检查点最高到 13B-64k 和 70B-32k。",
    "b_mopeft_venue": "它是 CVPR 的*研讨会（workshop）*论文，且年份有歧义：arXiv 写的是 2024 年研讨会，论文集把它"
    "列在 CVPRW 2025。",
    "b_alora_venue": "我们的注册表记录它为 arXiv 预印本（2025）；没有找到同行评审的发表处。",
    "b_quantum_code": "论文发表于 ICLR 2025，但我们没有找到官方公开代码；我们的实现依据摘要和二手描述。",
}


IDEAS: dict[str, str] = {
    "lora": "冻结 W0，在旁边学习一个低秩更新 BA；推理前可合并回去，零额外开销。",
    "rslora": "把缩放因子从 α/r 改为 α/√r，让大秩也能继续学习。",
    "qlora": "把基座冻结为 4 比特 NormalFloat（缩放因子再做一次量化），在其上训练 LoRA。",
    "longlora": "低成本扩展上下文：训练时用移位分组注意力（S²-Attn），LoRA 加上可训练的嵌入层和归一化层，推理时用完整注意力。",
    "adalora": "把 ΔW 写成 PΛQ（SVD 形式），训练中把秩从不重要的矩阵挪给重要的矩阵。",
    "loraplus": "适配器不变，只让 B 的学习率是 A 的 λ 倍（只改优化器）。",
    "dora": "把 W 拆成逐行的幅度和方向；LoRA 更新方向，幅度 m 直接训练。",
    "alora": "只从调用序列开始才生效的 LoRA，因此历史对话的基座 KV 缓存可以原样复用。",
    "quantum": "用少量角度经“量子线路”式的正交映射生成 U、V，ΔW = UΛVᵀ，参数量随维度按对数增长。",
    "mopeft": "在模型里同时放入多种 PEFT 子模块（LoRA、前缀、适配器），由学习到的门控加权组合。",
}
