"""The article edition's Chinese sentences (same keys as :mod:`lorafam.report.words.article_en`).

Keys starting with ``flair_`` carry the storyteller's voice and state no fact: ``--tone plain`` drops them. A key
``k@plain`` replaces ``k`` in the plain tone. Every other sentence is filled from a rule's numbers or a cited
source (:mod:`lorafam.report.sources`); nothing here is a number of its own.
"""

from __future__ import annotations

ART: dict[str, str] = {
    "title": "LoRA 家族演义：每一句点评，都拿数字说话",
    "title@plain": "LoRA 家族：历史、方法与实测",
    "lede": "这篇文章的骨架来自一份公众号草稿（下文称“原稿”）：从全量微调讲起，一章一位成员，最后以 2025 年的新人和"
    "“恐龙”收尾。不同的是，这里每一句评价都来自 lorafam 竞技场的实测记录（{budget} 预算，{runs} 次运行，在同一台机器上用"
    "同样的数据训练），或者注明了出处。原稿说得不对的地方，用“原稿说 / 实测”的方框标出来。",
    "cannot_rank@plain": "说明：这是 {budget} 预算（{steps} 步、{seeds} 个种子、主任务 {task} 上 {items} 道题），准确率的噪声范围约为 "
    "±{floor:.0f} 个百分点；落在这个范围里的差距不算数，下文逐一标明。",
    "cannot_rank": "先打个预防针：这是 {budget} 预算（{steps} 步、{seeds} 个种子、主任务 {task} 上 {items} 道题），准确率的噪声范围"
    "大约 ±{floor:.0f} 个百分点。落在这个范围里的差距不算数，下文会逐一标明。",
    "ci_note@plain": "说明：这是 {budget} 预算（{steps} 步、{seeds} 个种子、主任务 {task} 上 {items} 道题）。文中每个差距都配有 95% "
    "置信区间（在同一批题目上配对自助法重采样得到）；区间跨过 0 的差距不算数，下文逐一标明。",
    "ci_note": "先交代规矩：这是 {budget} 预算（{steps} 步、{seeds} 个种子、主任务 {task} 上 {items} 道题）。文中每个差距都配有 95% "
    "置信区间（在同一批题目上配对自助法重采样得到）；区间跨过 0 的差距不算数，下文会逐一标明。",
    "flair_lede": "八卦可以讲，但数字说了算。",
    # labels
    "origin": "出身",
    "idea": "绝学",
    "verdict": "评价",
    "box_draft": "原稿说",
    "box_measured": "实测",
    "box_checked": "查证",
    "box_source": "来源",
    "fig": "图 {n}",
    # chapter headings
    "h_open": "开场：土豪路线与手艺人路线",
    "h_open@plain": "开场：全量微调与参数高效微调",
    "h_founder": "第一章 祖师爷：LoRA",
    "h_founder@plain": "第一章 LoRA",
    "h_saviour": "第二章 穷鬼救星：QLoRA",
    "h_saviour@plain": "第二章 QLoRA",
    "h_speed": "第三章 速度狂魔：LoRA+",
    "h_speed@plain": "第三章 LoRA+",
    "h_usurper": "第四章 篡位者：DoRA",
    "h_usurper@plain": "第四章 DoRA",
    "h_relatives": "第五章 奇奇怪怪的亲戚",
    "h_relatives@plain": "第五章 AdaLoRA、LongLoRA 与 rsLoRA",
    "h_gods": "第六章 2025 年的诸神之战",
    "h_gods@plain": "第六章 2025 年的新成员",
    "h_close": "尾声：恐龙",
    "h_close@plain": "结语：全量微调的成本",
    "h_notes": "数据从哪里来",
    "h_sources": "出处",
    # opening
    "flair_open": "微调一个大模型，有两条路。一条是把每个权重都重写一遍，显卡不够就再买；另一条是把大模型冻住，"
    "只在旁边装几个小插件。",
    "open_cost": "在同一台机器、同一份数据上，全量微调每步耗时是 LoRA 的 {step:.2f} 倍，峰值内存是 {rss:.2f} 倍，"
    "要训练的参数是 {params:.0f} 倍。",
    "open_lora": "LoRA 这边，{total:,} 个参数里只训练 {trainable:,} 个（{pct:.2f}%），基座一个不动。",
    "open_plugin@plain": "LoRA 是一个插件：拔掉它，模型就是原来的模型。",
    "open_plugin": "所以 LoRA 不是黑魔法，而是一个插件：拔掉它，模型还是原来的模型。",
    "open_no_full": "这次的记录里没有全量微调的成功运行，成本对比留空。",
    # member sections
    "origin_line": "{origin}，{year} 年，{venue}。",
    "acc_line": "在 {task} 上完全匹配率 {acc:.1f}%，LoRA 为 {lacc:.1f}%，差 {diff:+.1f} 个百分点（{ivl}）。",
    "acc_line_lora": "在 {task} 上完全匹配率 {acc:.1f}%，未训练的基座为 {base:.1f}%，提高 {diff:+.1f} 个百分点（{ivl}）。",
    "ivl_ci": "95% 置信区间 {lo:+.1f} 到 {hi:+.1f}",
    "ivl_floor": "噪声范围 {lo:+.1f} 到 {hi:+.1f}",
    "ivl_nll": "答案的负对数似然差 {diff:+.3f} nats/token（95% 区间 {lo:+.3f} 到 {hi:+.3f}）。",
    "ivl_inside": "区间跨过 0，分不出高下",
    "ivl_above": "整个区间都在 0 以上",
    "ivl_below": "整个区间都在 0 以下",
    "cost_line": "可训练参数 {params:,} 个（LoRA 的 {pratio:.3g} 倍），每步 {step:.2f} 秒（LoRA 的 {sratio:.2f} 倍），"
    "峰值内存 {rss:.0f} MB。",
    "cost_line_lora": "可训练参数 {params:,} 个，每步 {step:.2f} 秒，峰值内存 {rss:.0f} MB，适配器文件 {mb:.1f} MB。",
    "no_run": "这次的记录里没有它的成功运行，评价只能引用出处。",
    "not_run": "这个预算没有运行它（`lorafam arena --budget standard` 会运行），这里的评价只能引用出处。",
    "advice": "什么时候选它：{text}",
    "lead_supported": "原稿这一句，实测站得住。",
    "lead_contradicted": "这一句，数字不答应。",
    "lead_mixed": "只对了一部分。",
    "lead_undecided": "还没有定论：区间还跨在门槛两边。",
    "lead_nm": "这一句这里测不了，先记下需要什么条件。",
    "lead_supported@plain": "结论：成立。",
    "lead_contradicted@plain": "结论：不成立。",
    "lead_mixed@plain": "结论：部分成立。",
    "lead_undecided@plain": "结论：尚无定论。",
    "lead_nm@plain": "结论：此处无法测量。",
    "cited": "旁证：",
    # flourishes per chapter (no facts)
    "flair_founder": "家谱从这里开始，后面每一位都在它身上改了一刀。",
    "flair_saviour": "穷，是第一生产力。",
    "flair_speed": "名字里带个加号，口气也不小。",
    "flair_usurper": "说它篡位，先看看它跟谁比。",
    "flair_relatives": "每个大家族都有几位让人摸不透的亲戚。",
    "flair_gods": "2025 年，家族里来了三位新人，个个口号响亮。",
    "flair_close": "原稿把全量微调比作恐龙。恐龙是不是要灭绝，看账本。",
    # closing
    "close_tally": "本文核对了 {n} 条说法：成立 {s} 条，不成立 {c} 条，部分成立 {m} 条，尚无定论 {u} 条，这里测不了的 {nm} 条。",
    "close_size": "原稿说适配器有“几百 MB”。",
    # notes
    "notes": "预算 {budget}：任务 {tasks}，种子 {seeds}；机器 {cpu}，{cores} 核；lorafam {version}（git {commit}）。"
    "下面两条命令可以在你的机器上重跑全部数字：",
    "notes_data": "文中每个数字都在 report-data.json 里；逐项的实验记录是竞技场的结果文件。",
    # figure captions
    "cap_tree": "家谱：谁出自谁、哪一年、改了什么",
    "cap_lora": "LoRA 的想法：冻结的大矩阵旁边加两个细长的小矩阵",
    "cap_cost": "全量微调的代价，以 LoRA 为 1",
    "cap_params": "各成员要训练的参数量（对数坐标）",
    "cap_mem": "70B 模型仅权重需要的内存，对比一张 24 GB 显卡",
    "cap_curve": "训练损失随步数的变化：LoRA、LoRA+ 与 DoRA",
    "cap_eval": "训练过程中的完全匹配率（前 {n} 道测试题，阴影为 95% 区间）",
    "cap_eval_floor": "训练过程中的完全匹配率（{n} 道测试题，阴影为噪声范围）",
    "cap_diff": "各成员与 LoRA 的准确率差（横条为区间）",
    "cap_ttft": "aLoRA 的首 token 延迟随历史长度的变化",
    "cap_s2": "S²-Attn 与完整注意力的每步训练时间",
}

# 绝学: each member's idea in plain words (facts from its paper, cited in 出身).
IDEAS: dict[str, str] = {
    "lora": "把预训练权重 W0 冻住，在旁边学一个低秩的更新 ΔW = B·A：B 很高很瘦，A 很矮很宽，秩 r 远小于矩阵的边长。"
    "训练完可以把 B·A 加回 W0，推理时没有额外开销。",
    "rslora": "LoRA 把更新乘以 α/r，秩一大，更新就被压得太小。rsLoRA 改成乘以 α/√r，让大秩也能继续学。",
    "qlora": "把冻结的基座存成 4 比特的 NormalFloat（NF4），连量化用的缩放因子也再量化一次，然后在上面照常训练 LoRA。"
    "要训练的还是 LoRA 那两个小矩阵，省下的是基座占的内存。",
    "longlora": "想把上下文拉长又不想付完整注意力的账：训练时把序列切成组，一半注意力头在组内看，另一半错开半组再看"
    "（S²-Attn）；LoRA 之外，嵌入层和归一化层也参与训练；推理时换回完整注意力。",
    "adalora": "把更新写成 P·Λ·Q 的奇异值分解形式，训练中给每个奇异值打重要性分数，把秩从不重要的矩阵挪给重要的矩阵。",
    "loraplus": "适配器一模一样，只改优化器：B 的学习率是 A 的 λ 倍（本文 λ = {ratio:.0f}）。",
    "dora": "把每一行权重拆成“长度”和“方向”：方向交给 LoRA 更新，长度 m 单独训练。",
    "alora": "只从一段“调用序列”开始才生效的 LoRA。调用之前的历史对话，K/V 和基座模型完全一样，所以基座的缓存可以原样复用。",
    "quantum": "更新写成 U·Λ·Vᵀ，但 U、V 不是直接训练的矩阵，而是由少量旋转角度经一个“量子线路”式的正交映射生成，"
    "参数量随维度按对数增长。",
    "mopeft": "在每一层同时放好几种 PEFT 模块，由一个学出来的门控给它们加权，像混合专家那样。",
}

# What each child changed, for the family tree (short).
CHANGES: dict[str, str] = {
    "lora": "冻结基座，训练 B·A",
    "rslora": "缩放改为 α/√r",
    "qlora": "基座压成 4 比特",
    "longlora": "分组注意力训练长上下文",
    "adalora": "训练中重新分配秩",
    "loraplus": "B 的学习率更高",
    "dora": "拆成长度与方向",
    "mopeft": "门控混合多种模块",
    "alora": "调用后才生效，复用缓存",
    "quantum": "量子线路生成 U、V",
}

# Names in Chinese where they are not proper names kept in English.
ORIGINS: dict[str, str] = {
    "lora": "微软",
    "rslora": "Tenyx",
    "qlora": "华盛顿大学（Tim Dettmers 等）",
    "longlora": "香港中文大学、麻省理工学院",
    "adalora": "佐治亚理工、普林斯顿、微软",
    "loraplus": "加州大学伯克利分校",
    "dora": "英伟达、香港科技大学",
    "mopeft": "罗切斯特理工学院",
    "alora": "IBM 研究院",
    "quantum": "MERL、洛桑联邦理工（LIONS）",
}
VENUES: dict[str, str] = {
    "lora": "ICLR 2022",
    "rslora": "arXiv 预印本",
    "qlora": "NeurIPS 2023",
    "longlora": "ICLR 2024 口头报告",
    "adalora": "ICLR 2023",
    "loraplus": "ICML 2024",
    "dora": "ICML 2024 口头报告",
    "mopeft": "CVPR 研讨会论文（arXiv 备注为 2024 年研讨会，论文集收录于 CVPRW 2025）",
    "alora": "arXiv 预印本",
    "quantum": "ICLR 2025",
}

# What the draft said where it was wrong about an origin (shown in a 原稿说 box beside the 出身).
DRAFT_ORIGIN: dict[str, str] = {
    "mopeft": "MoPEFT 是 CVPR 2025 的论文。",
    "alora": "aLoRA 发表于 NeurIPS 2025。",
    "longlora": "LongLoRA 靠“切片注意力”把上下文拉长。",
}

# Cited evidence, per member (numbers from lorafam.report.sources).
CITED: dict[str, str] = {
    "peft_dora": "Hugging Face PEFT 自己的基准（Llama-3.2-3B，MetaMathQA 训练、GSM8K 测试，每个配置一个种子）："
    "DoRA r{rank:.0f} 为 {dora_acc:.3f}，LoRA r{rank:.0f} 为 {lora_acc:.3f}，全量微调为 {full_acc:.3f}；"
    "LoRA 自己重跑就在 {lora_rerun_lo:.3f} 到 {lora_rerun_hi:.3f} 之间浮动，"
    "{snapshots:.0f} 次结果快照里 DoRA 从没赢过 LoRA r{rank:.0f}。",
    "dora_speed": "用户报告 DoRA 每步耗时约为 LoRA 的 {per_step:.0f} 倍（PEFT PR #{pr:.0f}），总训练时间约 {total:.1f} 倍"
    "（ms-swift #{issue:.0f}）。",
    "dora_infer": "PEFT 文档给出：不合并时 DoRA 推理比 LoRA 多花 {unmerged_pct:.0f}% 的时间。",
    "peft_adalora": "同一个 PEFT 基准里 AdaLoRA 为 {adalora_acc:.3f}，{snapshots:.0f} 次快照中比 LoRA r{rank:.0f} 低 "
    "{ada_gap_lo:.0f} 到 {ada_gap_hi:.0f} 个点。",
    "adalora_repo": "作者确认它收敛较慢（AdaLoRA 仓库 #{issue:.0f}）；我们没有找到发散或出现 NaN 的公开报告，"
    "“非常不稳定”没有公开证据支撑。",
    "loraplus_paper": "论文摘要说的是最多约 {speedup:.0f} 倍的收敛加速、{gain_lo:.0f} 到 {gain_hi:.0f}% 的提升，"
    "而且每步计算量相同：快的是收敛，不是每一步。",
    "qlora_paper": "QLoRA 论文自己的说法是：单张 {gpu_gb:.0f} GB 显卡微调 {model_b:.0f}B 模型。",
    "longlora_readme": "作者在 README 里说全量微调“好一点”，在 issue #{i1:.0f}、#{i2:.0f}、#{i3:.0f} 里说它只是接近全量微调。",
    "peft_rslora": "PEFT 基准里 rsLoRA r{rslora_rank:.0f} 为 {rslora_acc:.3f}（LoRA r{rank:.0f} 为 {lora_acc:.3f}）；"
    "但 rsLoRA 的缩放同时抬高了有效学习率，秩也翻了倍。",
    "alora_serving": "后续的服务论文报告：在多轮、多适配器的流水线里，端到端延迟最多低 {e2e:.0f} 倍，首 token 延迟好 "
    "{ttft:.0f} 倍以上。",
    "peft_full": "PEFT 基准里全量微调用时 {full_s:.0f} 秒、显存 {full_gib:.1f} GiB，LoRA r{rank:.0f} 为 {lora_s:.0f} 秒、"
    "{lora_gib:.1f} GiB；准确率 {full_acc:.3f} 对 {lora_acc:.3f}。",
}

# Labels drawn inside the figures.
FIG: dict[str, str] = {
    "tree_title": "LoRA 家谱",
    "pic_title": "LoRA：W = W0 + B·A",
    "pic_w0": "W0（冻结）",
    "pic_ba": "只训练 B 和 A",
    "pic_frozen": "d × d，一个不动",
    "times_lora": "相对 LoRA 的倍数（对数）",
    "cost_title": "全量微调 ÷ LoRA",
    "cost_step": "每步时间",
    "cost_rss": "峰值内存",
    "cost_params": "可训练参数",
    "steps": "训练步数",
    "loss": "训练损失（对数）",
    "curve_title": "训练损失",
    "acc": "完全匹配率 (%)",
    "eval_title": "训练中的准确率",
    "diff_points": "与 LoRA 的差（百分点）",
    "diff_title": "谁和 LoRA 拉开了差距？",
    "params": "可训练参数（对数）",
    "params_title": "要训练多少参数",
    "gib": "GiB",
    "card": "24 GB 显卡",
    "mem_title": "70B 模型，仅权重",
    "mem_16": "16 比特",
    "mem_q": "实测 {bits:.2f} 比特",
    "history": "历史长度（token）",
    "ttft": "首 token 延迟（秒）",
    "ttft_title": "aLoRA：历史越长越慢吗？",
    "context": "上下文长度（token）",
    "step_s": "每步训练时间（秒）",
    "s2_title": "S²-Attn 与完整注意力：每步时间",
    "s2_full": "完整注意力",
}
