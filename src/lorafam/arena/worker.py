"""Arena runs, one after another in one long-lived process: ``python -m lorafam.arena.worker --serve``.

The runner writes one job per line on the worker's stdin (the experiment, where its result and log go); the worker
loads the base, builds the implementation, trains, evaluates, probes, writes the result file (also when the run
fails: status "failed" with the error) and answers ``@@done <status>``. Progress goes to stdout as
``@@progress <fraction>`` lines that the runner turns into the arena-wide progress bar.

One process for the whole arena saves the interpreter start, the torch/transformers imports and the first model
load (about 8 s a run on a 2-core CPU; later loads of the cached base take 0.25 s). A run still cannot disturb the
next: each one loads a fresh base and seeds its own generators, and a run that kills the process (segfault, OOM,
``--timeout``) is recorded as failed by the runner, which starts a new worker for the next run. Per run, CPU time
is the process's own delta and peak RSS the kernel's high-water mark after a reset (``/proc/self/clear_refs``).

``python -m lorafam.arena.worker EXPERIMENT.json RESULT.json`` runs a single experiment (debugging).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import random
import resource
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any

from lorafam.arena.results import RunResult, TrainInfo, collect_meta, write_result
from lorafam.arena.spec import Experiment


def progress(fraction: float) -> None:
    print(f"@@progress {fraction:.4f}", flush=True)


def run_experiment(exp: Experiment, device_name: str = "cpu") -> TrainInfo:
    """Do the run and return its ``train_info`` (raises on failure)."""
    run = _Run(exp, device_name)
    if run.steps:
        run.train()
    run.lap("train")
    run.evaluate(run.steps, final=True)
    _generated(run.info, run.model, run.fmt, run.task, run.test_items, run.s, run.device)
    run.lap("eval")
    progress(0.85)
    if run.s.get("probes", True):
        _probes(
            run.info, run.built, run.fmt, run.gen_ids, run.reference, run.test_items, run.s, run.device, run.lap
        )
    run.lap("probes")
    run.info.extra["phase_seconds"] = {k: round(v, 2) for k, v in run.phases.items()}  # for `--dry-run`
    progress(1.0)
    return run.info


_REFERENCES: dict[tuple[Any, ...], list] = {}


def _reference(model: Any, gen_ids: list, pad_id: int, device: Any, s: dict[str, Any]) -> list:
    """The forgetting probe's reference: the pristine fp32 base's next-token log-probabilities on the general
    texts. Every run of a worker loads the same base, so it is computed once per (model, texts) and kept."""
    from lorafam.arena import probes

    key = (s.get("model", "default"), str(device), tuple(tuple(x) for x in gen_ids))
    if key not in _REFERENCES:
        _REFERENCES[key] = probes.next_token_logprobs(model, gen_ids, pad_id, device)
    return _REFERENCES[key]


class _Run:
    """One run's state, phase by phase: setup (here), training with curve points, the final evaluation."""

    def __init__(self, exp: Experiment, device_name: str) -> None:
        import torch

        from lorafam.arena import harness, probes
        from lorafam.arena.tasks import make_task
        from lorafam.core.inject import count_params
        from lorafam.core.precision import cast_frozen

        self.exp, s = exp, exp.settings
        self.s, self.device = s, torch.device(device_name)
        self.phases: dict[str, float] = dict.fromkeys(
            ("load", "build", "train", "eval", "forgetting", "probes"), 0.0
        )
        self.phases.update(evals=0, eval_items=0)
        self.clock = time.perf_counter()
        torch.manual_seed(exp.seed)
        random.seed(exp.seed)
        self.task = make_task(exp.task, {exp.task: s["user_task"]} if "user_task" in s else None)
        self.steps = 0 if exp.impl == "base" else int(s["steps"])
        n_train = min(max(self.steps * int(s["batch_size"]), 1), 4000)
        self.train_items, self.test_items = self.task.split(
            n_train, int(s["eval_items"]), exp.seed, int(s.get("data_seed", 1234))
        )
        model, fmt = harness.load_base(s, self.device)
        self.fmt = fmt
        self.lap("load")
        progress(0.04)
        info = TrainInfo(settings=dict(s), steps=self.steps, test_items=len(self.test_items))
        info.extra["member"] = exp.member
        info.item_keys = [ex.key for ex in self.test_items]
        info.eval_metric = "teacher-forced"
        self.info = info
        self.test_enc = [fmt.encode(ex) for ex in self.test_items]
        self.gen_ids = probes.general_inputs(fmt, int(s.get("forget_prompts", 8))) if s.get("probes", True) else []
        self.reference = _reference(model, self.gen_ids, fmt.pad_id, self.device, s) if self.gen_ids else []
        self.built = harness.build(exp.impl, exp.member, model, s, fmt, self.steps)
        if s.get("bf16", True) is True:
            cast_frozen(self.built.model)
        self.model = self.built.model
        info.adapter_config = self.built.adapter_config
        info.trainable_params, info.total_params = count_params(self.model)
        if self.reference and self.steps:  # the probe before any training: the base as this member stores it (NF4)
            per_text = self._forgetting()
            info.extra["forgetting_kl_start"] = per_text[0]
            info.extra["forgetting_kl_texts_start"] = per_text[2]
        self.lap("build")
        progress(0.08)

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] += now - self.clock
        self.clock = now

    def _forgetting(self) -> tuple[float, float, list[float]]:
        """(KL, top-1 agreement, KL per general text) of the model now against the pristine base."""
        from lorafam.arena import probes

        tuned = probes.next_token_logprobs(self.model, self.gen_ids, self.fmt.pad_id, self.device, self.s)
        kl, top1 = probes.forgetting(self.reference, tuned)
        return kl, top1, [round(v, 5) for v in probes.forgetting_per_text(self.reference, tuned)]

    def evaluate(self, step: int, final: bool) -> None:
        """Score the test items teacher-forced (a fixed prefix of them at curve points), then the forgetting
        probe, and append the per-item record to ``info.evals``."""
        from lorafam.arena.evaluate import score_items

        model, info, s = self.model, self.info, self.s
        was_training = model.training
        model.eval()
        curve_items = min(int(s.get("curve_items") or len(self.test_enc)), len(self.test_enc))
        items = self.test_enc if final else self.test_enc[:curve_items]
        t0 = time.perf_counter()
        sc = score_items(model, items, self.fmt.pad_id, s, self.device, int(s.get("eval_batch", 32)))
        rec: dict[str, Any] = {
            "step": step,
            "items": len(items),
            "em": sc.em,
            "nll": [round(v, 4) for v in sc.nll],
            "tokens": sc.tokens,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if sc.gates is not None:
            rec["gates"] = sc.gates
        self.lap("eval")
        self.phases["evals"] += 1
        self.phases["eval_items"] += len(items)
        if self.reference:
            rec["forgetting_kl"], rec["forgetting_top1"], rec["forgetting_kl_texts"] = self._forgetting()
        self.lap("forgetting")
        info.evals.append(rec)
        info.eval_curve.append([step, sc.exact_match])
        if final:
            info.accuracy, info.correct, info.answer_nll = sc.exact_match, sum(sc.em), sc.mean_nll
            if self.reference:
                info.forgetting_kl, info.forgetting_top1 = rec["forgetting_kl"], rec["forgetting_top1"]
        if was_training:
            model.train()

    def train(self) -> None:
        """The shared training loop, with the curve points scored (in eval mode, untimed) after their steps."""
        from lorafam.arena import harness
        from lorafam.arena.eta import eval_points
        from lorafam.arena.prompts import batches, collate

        s, info, steps = self.s, self.info, self.steps
        encoded = [self.fmt.encode(ex) for ex in self.train_items]
        data = [collate(b, self.fmt.pad_id) for b in batches(encoded, int(s["batch_size"]), steps, self.exp.seed)]
        at = set(eval_points(s, steps))

        def on_step(step: int, loss: float) -> None:
            progress(0.08 + 0.62 * step / steps)
            if step in at and step < steps:
                self.lap("train")
                self.evaluate(step, final=False)

        timing = harness.train(self.built, data, s, self.device, on_step)
        info.loss_curve = timing["loss_curve"]
        info.example_losses = timing["example_losses"]
        info.final_loss = info.loss_curve[-1][1]
        info.train_seconds = timing["train_seconds"]  # curve evaluations are timed apart (phase "eval")
        info.seconds_per_step = info.train_seconds / steps
        tokens = (timing["tokens_per_second"] or 0.0) * timing["train_seconds"]
        info.tokens_per_second = tokens / info.train_seconds if info.train_seconds else None


def _generated(
    info: TrainInfo, model: Any, fmt: Any, task: Any, items: list, s: dict[str, Any], device: Any
) -> None:
    """Greedy answers for a few items: samples for the report and, where the checker normalises (json, number,
    a user function), the generated score of the first ``gen_items`` items beside their teacher-forced one."""
    from lorafam.arena import harness

    strict = task.checker == "exact"
    k = min(len(items), int(s.get("samples", 3)) if strict else max(int(s.get("gen_items", 32)), 3))
    if k <= 0:
        return
    preds = harness.generate(
        model, fmt, [ex.prompt for ex in items[:k]], task.max_new_tokens, s, device, int(s.get("eval_batch", 32))
    )
    info.samples = [{"prompt": ex.prompt[-160:], "gold": ex.answer, "pred": p} for ex, p in zip(items[:3], preds)]
    if not strict:
        tf = info.evals[-1]["em"][:k]
        info.generated = {
            "items": k,
            "checker": task.checker,
            "correct": [int(task.check(p, ex.answer)) for p, ex in zip(preds, items)],
            "tf_em": tf,
            "preds": preds,
        }


def _probes(
    info: TrainInfo,
    built: Any,
    fmt: Any,
    gen_ids: list,
    reference: list,
    test_items: list,
    s: dict[str, Any],
    device: Any,
    lap: Any = None,
) -> None:
    """Each probe on its own: a probe that raises is recorded under ``extra["probe_errors"]`` (the run stays ok;
    its accuracy is already measured) and its number stays ``None``."""
    from lorafam.arena import probes

    model = built.model
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - recorded, shown in the report
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            return None

    if s.get("probes") == "forgetting":  # the seed-independent probes ran on another seed of this budget
        if errors:
            info.extra["probe_errors"] = errors
        return
    prompt = fmt.encode_prompt(test_items[0].prompt)
    n = int(s.get("decode_tokens", 16))
    info.decode_tokens_per_s = attempt(
        "decode", lambda: probes.decode_speed(model, prompt, n, fmt.pad_id, device, s)
    )
    if built.disabled is not None:

        def base_speed() -> float:
            with built.disabled():
                return probes.decode_speed(model, prompt, n, fmt.pad_id, device, s)

        info.decode_tokens_per_s_base = attempt("decode_base", base_speed)
    info.adapter_bytes = attempt("adapter_bytes", lambda: probes.adapter_bytes(built))
    if built.save is None and info.trainable_params == info.total_params and info.total_params:
        info.extra["checkpoint_bytes_bf16_computed"] = 2 * info.total_params  # full FT: the whole model, bf16
    storage = attempt("base_storage", lambda: probes.base_weight_storage(built.adapted_bases))
    if storage is not None:
        info.base_weight_bytes = storage[0]
        info.extra["base_weight_numel"] = storage[1]
    info.mergeable = built.mergeable
    if built.not_mergeable_reason:
        info.extra["not_mergeable_reason"] = built.not_mergeable_reason
    info.merge_seconds = attempt("merge", lambda: probes.merge_seconds(built))
    if info.settings and built.adapter_config and "peft_type" not in built.adapter_config:
        info.extra["param_scaling"] = attempt(
            "param_scaling", lambda: probes.param_scaling(info.extra.get("member", ""), s, fmt)
        )
    if errors:
        info.extra["probe_errors"] = errors


def run_job(job: dict[str, Any]) -> str:
    """One run: its result file is written (ok, skipped or failed) before this returns its status."""
    import torch

    exp = Experiment.from_dict(job["experiment"])
    device = job.get("device", "cpu")
    threads = int(exp.settings.get("threads", 2))
    torch.set_num_threads(threads)
    run = exp.run_info(
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        threads=threads,
        device=device,
        command=job.get("command", []),
    )
    reset_peak_rss()
    cpu0, start = _cpu_seconds(), time.perf_counter()
    try:
        info = run_experiment(exp, device)
        run.status = "ok"
    except Exception as exc:  # noqa: BLE001 - a failed run is a result, recorded with its error
        from lorafam.arena.peers import PeerUnavailable

        info = TrainInfo(settings=dict(exp.settings))
        run.status = "skipped" if isinstance(exc, PeerUnavailable) else "failed"
        run.error = f"{type(exc).__name__}: {exc}"
        if run.status == "failed":
            info.extra["traceback"] = traceback.format_exc()[-4000:]
    run.duration_s = time.perf_counter() - start
    run.cpu_s = round(_cpu_seconds() - cpu0, 2)
    run.peak_rss_mb = round(peak_rss_mb(), 1)
    write_result(job["result"], RunResult(run, info, collect_meta(device)))
    return run.status


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def reset_peak_rss() -> None:
    """Give memory back to the OS, then restart the kernel's peak-RSS count at the current RSS, so the next reading
    is this run's own peak (Linux; elsewhere the process's lifetime peak is what is left)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss_mb() -> float:
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve_jobs(stdin: Any = None) -> int:
    """Read jobs (JSON lines) until stdin closes; each run's stderr goes to its own log file."""
    stdin = stdin or sys.stdin
    for line in stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        with open(job["log"], "a", encoding="utf-8") as log:
            sys.stderr.flush()
            os.dup2(log.fileno(), 2)  # native libraries' stderr too
        status = run_job(job)
        sys.stderr.flush()
        print(f"@@done {status}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from lorafam.core.allocator import tune_allocator

    tune_allocator()  # each member trains in this process: as `lorafam train` does (docs/performance.md)
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve_jobs()
    if len(argv) != 2:
        print("usage: python -m lorafam.arena.worker --serve | EXPERIMENT.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        d = json.load(fh)
    status = run_job({**d, "result": argv[1]})
    return 1 if status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
