"""The measurements behind ``python -m benchmarks.speed`` (issue 16), one function per part.

Every timed comparison is interleaved in one process (A B A B …, the order reversed every other round, see
:func:`benchmarks.common.interleaved`) and reported as per-round paired ratios (:func:`benchmarks.common.paired`).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import child_report, count_flops, interleaved, paired, python, run_child

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARMS = ("lora", "dora", "qlora", "peft-lora")
BF16_ARMS = ("lora bf16", "lora bf16 compiled")


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------
def load_base(tiny: bool) -> torch.nn.Module:
    import lorafam as lf

    if tiny:  # Llama architecture, small enough for a smoke run
        return lf.tiny_llama(vocab_size=256, hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256)
    return lf.load_model()


def build(arm: str, tiny: bool, rank: int = 16, alpha: float = 32.0, seed: int = 0) -> torch.nn.Module:
    """A fresh model for one arm: ``base``, lorafam ``lora`` / ``dora`` / ``qlora`` (NF4 base), or ``peft-lora``."""
    import lorafam as lf

    torch.manual_seed(seed)
    model = load_base(tiny)
    if arm == "base":
        return model
    if arm == "peft-lora":
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS)))
    if arm not in ("lora", "dora", "qlora"):
        raise ValueError(f"unknown arm {arm!r}; choose from base, {', '.join(ARMS)}")
    cls = lf.DoraConfig if arm == "dora" else lf.LoraConfig
    cfg = cls(rank=rank, alpha=alpha, targets=list(TARGETS), quantize="nf4" if arm == "qlora" else None)
    lf.attach(model, cfg)
    return model


class Stepper:
    """One arm's training: model + AdamW over its trainable parameters; ``step()`` = forward + backward + update."""

    def __init__(self, model: torch.nn.Module, batch: torch.Tensor):
        self.model = model.train()
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.batch = batch

    def step(self) -> None:
        self.model(input_ids=self.batch, labels=self.batch).loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Bf16Stepper:
    """lorafam's bf16 regime as ``lorafam train`` runs it (``bf16: true``): the frozen base stored in bf16
    (``cast_frozen``), adapters and AdamW state in fp32, each forward under bf16 autocast, the trainer's loss
    (:func:`lorafam.train.loss.causal_lm_loss`: the head and cross-entropy in chunks), optionally with the body
    compiled as ``torch_compile: true`` does (:func:`lorafam.train.compile.compile_for_training`).
    ``precision="fp32"`` is the same step without the cast and autocast (the loss comparison's reference)."""

    def __init__(self, tiny: bool, batch: torch.Tensor, compiled: bool, precision: str = "bf16", seed: int = 0):
        import lorafam as lf
        from lorafam.train.compile import compile_for_training

        self.model = build("lora", tiny, seed=seed)
        self.bf16 = precision == "bf16"
        if self.bf16:
            lf.cast_frozen(self.model, torch.bfloat16)
        if compiled:
            compile_for_training(self.model)
        self.model.train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.batch = batch
        self.first_step_s: float | None = None

    def step(self) -> float:
        from lorafam.train.loss import causal_lm_loss

        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            nll, n = causal_lm_loss(self.model, {"input_ids": self.batch, "labels": self.batch})
            loss = nll / n
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - t
        return float(loss.detach())


def bf16_skipped(args: Any) -> str | None:
    """Why the bf16 arms are not run here, or None when they are: they need bf16 matmuls native to this CPU
    (AMX or AVX512-BF16; emulated bf16 is 5-7x slower than fp32 and the target is about AMX machines)."""
    from lorafam.core.precision import native_bf16

    if args.no_bf16:
        return "--no-bf16"
    return None if native_bf16("cpu") else "no native bf16 matmuls on this CPU"


def tokens(vocab: int, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def model_gemm_shapes(config: Any, n_tokens: int) -> tuple[dict[str, tuple[int, int, int]], dict[str, float]]:
    """The (tokens, in, out) shapes of one forward's GEMMs and how often each occurs (Llama layout)."""
    d, ff, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * hd
    shapes = {
        "q/o proj": (n_tokens, d, config.num_attention_heads * hd),
        "k/v proj": (n_tokens, d, kv),
        "gate/up proj": (n_tokens, d, ff),
        "down proj": (n_tokens, ff, d),
        "lm head": (n_tokens, d, v),
    }
    counts = {"q/o proj": 2.0 * layers, "k/v proj": 2.0 * layers, "gate/up proj": 2.0 * layers}
    counts |= {"down proj": float(layers), "lm head": 1.0}
    return shapes, counts


# ---------------------------------------------------------------------------------------------------------------
# part: train (LoRA, DoRA, QLoRA, PEFT LoRA steps; QLoRA also at the arena's short-sequence shape)
# ---------------------------------------------------------------------------------------------------------------
def part_train(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    vocab = 256 if args.tiny else 49152
    main = tokens(vocab, args.batch, args.seq)
    arena = tokens(vocab, args.arena_batch, args.arena_seq, seed=1)
    issue = tokens(vocab, args.issue_batch, args.issue_seq, seed=2)
    steppers = {arm: Stepper(build(arm, args.tiny), main) for arm in ARMS}
    contenders: dict[str, Callable[[], None]] = {arm: s.step for arm, s in steppers.items()}
    # the same models on other batch shapes (same weights, own input): the arena's (QLoRA's target holds "in the
    # arena and in the benchmark alike") and the issue's own DoRA measurement (4 x 256)
    for arm, shape, batch in (("lora", "arena", arena), ("qlora", "arena", arena),
                              ("lora", "issue", issue), ("dora", "issue", issue)):  # fmt: skip
        s = steppers[arm]
        contenders[f"{arm} {shape}-shape"] = lambda s=s, b=batch: (
            setattr(s, "batch", b),
            s.step(),
            setattr(s, "batch", main),
        )
    skipped = bf16_skipped(args)
    bf16 = skipped is None
    arms = ARMS + (BF16_ARMS if bf16 else ())
    if bf16:  # AMX: lorafam's bf16 regime, eager and with torch_compile, against PEFT's fp32 step
        for arm in BF16_ARMS:
            steppers[arm] = Bf16Stepper(args.tiny, main, compiled=arm.endswith("compiled"))  # type: ignore[assignment]
            contenders[arm] = steppers[arm].step
    log(f"[train] warm-up + flop count: {list(contenders)}")
    flops = {arm: count_flops(steppers[arm].step) for arm in arms if arm != "lora bf16 compiled"}
    if bf16:  # compiling runs in the first call (timed apart); its FLOPs are the eager regime's
        steppers["lora bf16 compiled"].step()
        flops["lora bf16 compiled"] = flops["lora bf16"]
    for name in contenders:
        if name not in flops:
            contenders[name]()
    timing = interleaved(contenders, repeats=args.rounds, warmup=0, log=lambda m: log("[train]" + m))
    raw = {k: v["raw_s"] for k, v in timing.items()}
    med = {k: v["median_s"] for k, v in timing.items()}
    extra: dict[str, Any] = {}
    if bf16:
        extra["bf16"] = {
            "regime": "cast_frozen (frozen base in bf16) + bf16 autocast + causal_lm_loss, adapters/AdamW fp32",
            "compile_first_step_s": steppers["lora bf16 compiled"].first_step_s,
            "ratios": {
                "lora bf16 / peft-lora": paired(raw["lora bf16"], raw["peft-lora"]),
                "lora bf16 compiled / peft-lora": paired(raw["lora bf16 compiled"], raw["peft-lora"]),
                "lora bf16 compiled / lora bf16": paired(raw["lora bf16 compiled"], raw["lora bf16"]),
            },
        }
    else:
        extra["bf16"] = {"skipped": skipped}
    return extra | {
        "shape": {
            "batch": args.batch,
            "seq": args.seq,
            "arena_batch": args.arena_batch,
            "arena_seq": args.arena_seq,
            "issue_batch": args.issue_batch,
            "issue_seq": args.issue_seq,
        },
        "timing": timing,
        "flops_per_step": flops,
        "achieved_gflops": {arm: flops[arm] / med[arm] / 1e9 for arm in arms},
        "ratios": {
            "dora / lora": paired(raw["dora"], raw["lora"]),
            "dora / lora, issue shape": paired(raw["dora issue-shape"], raw["lora issue-shape"]),
            "lora / peft-lora": paired(raw["lora"], raw["peft-lora"]),
            "qlora / lora": paired(raw["qlora"], raw["lora"]),
            "qlora / lora, arena shape": paired(raw["qlora arena-shape"], raw["lora arena-shape"]),
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# part: bf16loss (AMX: the bf16 regime's first steps against fp32's, same init, same text)
# ---------------------------------------------------------------------------------------------------------------
def part_bf16loss(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``--bf16-loss-steps`` steps of fp32, bf16 and bf16 compiled LoRA from the same initialisation on the same
    batches of real English text (the train part's shape); per step, the relative loss difference to fp32."""
    skipped = bf16_skipped(args)
    if skipped:
        return {"skipped": skipped}
    import lorafam as lf
    from benchmarks.train_step_parts import text_batches

    tok = None if args.tiny else lf.load_tokenizer()
    vocab = 256 if args.tiny else 49152
    batches = text_batches(tok, vocab, args.batch, args.seq, args.bf16_loss_steps)
    curves: dict[str, list[float]] = {}
    for name, precision, compiled in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                      ("bf16 compiled", "bf16", True)):  # fmt: skip
        s = Bf16Stepper(args.tiny, batches[0], compiled=compiled, precision=precision)  # same seed: same init
        for g in s.opt.param_groups:
            g["lr"] = args.bf16_loss_lr
        t = time.perf_counter()
        curves[name] = []
        for b in batches:
            s.batch = b
            curves[name].append(s.step())
        log(
            f"[bf16loss] {name}: {curves[name][0]:.4f} -> {curves[name][-1]:.4f} ({time.perf_counter() - t:.0f} s)"
        )
        del s
    rel = {k: [abs(a - b) / b for a, b in zip(curves[k], curves["fp32"])] for k in ("bf16", "bf16 compiled")}
    return {
        "steps": args.bf16_loss_steps,
        "lr": args.bf16_loss_lr,
        "shape": {"batch": args.batch, "seq": args.seq},
        "curves": curves,
        "rel_diff_per_step": rel,
        "max_rel_diff": {k: max(v) for k, v in rel.items()},
    }


# ---------------------------------------------------------------------------------------------------------------
# part: rss (each arm trains in its own process; the child's own VmHWM)
# ---------------------------------------------------------------------------------------------------------------
def child_rss(args: Any) -> None:
    vocab = 256 if args.tiny else 49152
    s = Stepper(build(args.child_rss, args.tiny), tokens(vocab, args.batch, args.seq))
    times = []
    for _ in range(args.rss_steps):
        t = time.perf_counter()
        s.step()
        times.append(time.perf_counter() - t)
    child_report({"arm": args.child_rss, "step_s": times})


def part_rss(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ARMS:
        argv = [python(), "-m", "benchmarks.speed", "--child-rss", arm, "--batch", str(args.batch)]
        argv += ["--seq", str(args.seq), "--rss-steps", str(args.rss_steps), "--threads", str(args.threads)]
        r = run_child(argv + (["--tiny"] if args.tiny else []))
        if r["returncode"] != 0:
            raise RuntimeError(f"rss child {arm} failed:\n{r['stderr_tail']}")
        out[arm] = {
            "peak_rss_mib": r["peak_rss_mib"],
            "source": r["peak_rss_source"],
            "step_s": r["result"]["step_s"],
        }
        log(f"[rss] {arm:<10} peak {r['peak_rss_mib']:8.0f} MiB")
    peak = {arm: out[arm]["peak_rss_mib"] for arm in ARMS}
    ratios = {"qlora / lora": peak["qlora"] / peak["lora"], "dora / lora": peak["dora"] / peak["lora"]}
    ratios["lora / peft-lora"] = peak["lora"] / peak["peft-lora"]
    return {"steps": args.rss_steps, "arms": out, "ratios": ratios}


# ---------------------------------------------------------------------------------------------------------------
# part: gen (batch 1, KV cache, greedy; unmerged adapters with non-zero B)
# ---------------------------------------------------------------------------------------------------------------
def _perturb(model: torch.nn.Module, std: float = 0.02) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * std)


def _gen_models(args: Any) -> dict[str, torch.nn.Module]:
    from peft import set_peft_model_state_dict

    from lorafam.core.checkpoint import adapter_state

    models = {arm: build(arm, args.tiny) for arm in ("base", "lora", "dora", "peft-lora")}
    for arm in ("lora", "dora"):
        _perturb(models[arm])
    set_peft_model_state_dict(models["peft-lora"], adapter_state(models["lora"]))  # the very same adapter
    for m in models.values():
        m.eval()
        m.generation_config.pad_token_id = m.generation_config.eos_token_id
    return models


def _decode_state(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return {"cache": out.cache, "next": out.logits[:, -1:].argmax(-1), "tokens": []}


def _decode_one(model: torch.nn.Module, st: dict[str, Any]) -> tuple[float, float]:
    """One greedy token with the KV cache: the forward a decoding loop runs per token. Returns (wall seconds,
    this thread's CPU seconds): CPU time leaves out the time other processes took the core from us."""
    t, c = time.perf_counter(), time.thread_time()
    with torch.no_grad():
        out = model(input_ids=st["next"], cache=st["cache"], use_cache=True)
        st["cache"], st["next"] = out.cache, out.logits[:, -1:].argmax(-1)
    dt, dc = time.perf_counter() - t, time.thread_time() - c
    st["tokens"].append(int(st["next"]))
    return dt, dc


def part_gen(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy decoding interleaved *per token*: each round prefills every model, then token after token runs
    base, LoRA, DoRA, PEFT LoRA in turn (order reversed every other token), so load changes hit all alike."""
    models = _gen_models(args)
    names = list(models)
    vocab = models["base"].config.vocab_size
    ids = torch.randint(3, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    produced: dict[str, list[int]] = {}
    for r in range(args.rounds + 1):  # round 0 is the warm-up
        states = {k: _decode_state(models[k], ids) for k in names}
        for t in range(args.gen_tokens):
            for k in names if (r + t) % 2 == 0 else names[::-1]:
                dt, dc = _decode_one(models[k], states[k])
                if r:
                    times[k].append(dt)
                    cpu[k].append(dc)
        produced = {k: st["tokens"] for k, st in states.items()}
        if r:
            log(
                f"[gen] round {r}/{args.rounds}: "
                + ", ".join(f"{k} {sum(times[k][-args.gen_tokens :]):.2f} s" for k in names)
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "prompt_tokens": args.prompt,
        "new_tokens": args.gen_tokens,
        "per_token_s": {k: {"median_s": med[k], "raw_s": times[k]} for k in names},
        "tokens_per_s": {k: 1 / med[k] for k in names},
        # tokens/s ratio vs base = base time / arm time, paired token by token
        "x_base": {k: paired(times["base"], times[k]) for k in names if k != "base"},
        # diagnostic: the same pairs in thread CPU time (memory stalls count, being descheduled does not)
        "x_base_cpu": {k: paired(cpu["base"], cpu[k]) for k in names if k != "base"},
        "lora_equals_peft_tokens": produced["lora"] == produced["peft-lora"],
    }


# ---------------------------------------------------------------------------------------------------------------
# part: s2 (S²-Attn vs full attention: the attention call of one SmolLM2 layer, forward + backward)
# ---------------------------------------------------------------------------------------------------------------
def part_s2(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lorafam.attention import s2attn

    cfg = load_base(args.tiny).config if args.tiny else _smollm_config()
    h, hk = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // h

    class Attn(torch.nn.Module):  # what the two functions read from the attention module
        is_causal = True
        num_key_value_groups = h // hk

    module = Attn().train()
    setattr(module, s2attn.SETTINGS_ATTR, s2attn.S2AttnSettings(0.25))
    out: dict[str, Any] = {"heads": h, "kv_heads": hk, "head_dim": d, "group_size_ratio": 0.25}
    for n in args.s2_seqs:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, n, c, d, generator=g, requires_grad=True) for c in (h, hk, hk))

        def call(fn: Callable[..., Any], q=q, k=k, v=v) -> Callable[[], None]:
            def run() -> None:  # the model hands (B, H, N, D) views of (B, N, H, D) projections
                o, _ = fn(module, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, 0.0, d**-0.5)
                o.sum().backward()

            return run

        t = interleaved(
            {"s2attn": call(s2attn.s2attn_forward), "full": call(sdpa_attention_forward)},
            repeats=args.rounds, warmup=1, log=lambda m, n=n: log(f"[s2 {n}]" + m),
        )  # fmt: skip
        out[str(n)] = {"timing": t, "s2 / full": paired(t["s2attn"]["raw_s"], t["full"]["raw_s"])}
    return out


# ---------------------------------------------------------------------------------------------------------------
# part: s2step (the whole LongLoRA training step with S²-Attn vs with full attention, same model)
# ---------------------------------------------------------------------------------------------------------------
def part_s2step(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """One LongLoRA model (the member's defaults: r=8 on q/k/v/o, trainable embeddings and norms, group ratio
    1/4), one AdamW; the attention implementation is switched between steps (S²-Attn, full SDPA, interleaved).
    Both arms are warmed up once at a short length, and each length starts with one untimed step of each arm:
    the first step at a new length allocates that length's buffers (measured: the first timed step at a length
    ran 10–25 % slower than the same arm's next one), and which arm took it depended on the round order."""
    import lorafam as lf
    from lorafam.attention import s2attn

    threads = torch.get_num_threads()
    torch.set_num_threads(args.s2_threads)
    torch.manual_seed(0)
    model = load_base(args.tiny)
    lf.attach(model, lf.LongLoraConfig(rank=8, alpha=16))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    vocab = model.config.vocab_size

    def arm(impl: str, batch: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            model.set_attn_implementation(impl)
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    warm = tokens(vocab, 1, 256, seed=2)
    arm(s2attn.ATTN_NAME, warm)()
    arm("sdpa", warm)()
    out: dict[str, Any] = {"threads": args.s2_threads, "member": "longlora (r=8, alpha=16, defaults)"}
    budget = args.s2_step_budget_s
    deadline = time.perf_counter() + budget if budget else None
    out["budget_s"] = budget
    previous: tuple[int, float] | None = None  # (tokens, seconds of one round there)
    for n in args.s2_seqs:
        batch = tokens(vocab, 1, n, seed=n)
        # a longer sequence's first round: the last length's round scaled by (n / n')² (attention's growth,
        # an upper bound for the whole step, whose linear layers grow only as n)
        first = 0.0 if previous is None else previous[1] * (n / previous[0]) ** 2
        t = interleaved(
            {"s2attn": arm(s2attn.ATTN_NAME, batch), "full": arm("sdpa", batch)},
            repeats=args.s2_step_rounds, warmup=1, log=lambda m, n=n: log(f"[s2step {n}]" + m),
            deadline=deadline, first_round_s=first,
        )  # fmt: skip
        if not t:
            out[str(n)] = {"not_measured": f"the part's time budget ({budget:.0f} s) ended before its first round"}
            continue
        out[str(n)] = {"timing": t, "s2 / full": paired(t["s2attn"]["raw_s"], t["full"]["raw_s"])}
        previous = (n, t["s2attn"]["raw_s"][-1] + t["full"]["raw_s"][-1])
    torch.set_num_threads(threads)
    return out


def s2step_lengths(part: dict[str, Any]) -> list[str]:
    """The sequence lengths of an s2step part that have timings (a budgeted run may have skipped some)."""
    return [n for n in part if n.isdigit() and "timing" in part[n]]


def s2attn_file(data: dict[str, Any]) -> dict[str, Any]:
    """The s2step part in ``benchmarks/results/s2attn.json``'s layout (what ``lorafam report`` reads)."""
    part = data["s2step"]
    seqs = s2step_lengths(part)
    return {
        "source": "python -m benchmarks.speed (part s2step); see speed.json for the paired ratios",
        "machine": data["machine"],
        "setup": {"model": data["model"], "threads": part["threads"], "member": part["member"]},
        "time": {
            n: {
                "step_s": {k: part[n]["timing"][k]["raw_s"] for k in ("s2attn", "full")},
                "median_step_s": {k: part[n]["timing"][k]["median_s"] for k in ("s2attn", "full")},
                "paired_ratio_s2_over_full": part[n]["s2 / full"],
            }
            for n in seqs
        },
    }


def _smollm_config() -> Any:
    from transformers import AutoConfig

    from lorafam.models import default_model_dir

    return AutoConfig.from_pretrained(default_model_dir())


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
