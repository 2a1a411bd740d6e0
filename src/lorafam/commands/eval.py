"""``lorafam eval``: an adapter (or the base model) on a held-out file — generation, exact match, a text metric and
the arena's checkers, as LLaMA-Factory's ``do_predict`` does.

Each record of the file (any format ``train`` reads) gives a prompt (the conversation up to its last assistant
turn, rendered with the chat template; a plain prompt for prompt/completion strings) and a reference (that
turn). The model decodes greedily by default; every output is scored with the arena's ``exact`` checker, a
SQuAD-style token F1, and (``--checker``) any arena checker (``json``, ``number``, ``module:function``).
``predictions.jsonl`` and ``eval_results.json`` go to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

EPILOG = """examples:
  lorafam eval --adapter runs/lora --data src/lorafam/data/bundled/reverse_words_test.jsonl
  lorafam eval --data held.jsonl --checker number --max-new-tokens 8        the base model
  lorafam eval my_llamafactory.yaml --limit 50     model, adapter_name_or_path, eval_dataset from the YAML"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lorafam.commands._generation import add_sampling_arguments

    p.add_argument(
        "config", nargs="?", default=None, help="training YAML (model, adapter, eval_dataset, template)"
    )
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides for the YAML")
    p.add_argument("--model", default=None, help="base model folder (default: the YAML's, or the embedded one)")
    p.add_argument("--adapter", default=None, help="adapter folder (default: the YAML's adapter_name_or_path)")
    p.add_argument("--data", default=None, help="held-out file (default: the YAML's eval_dataset, else dataset)")
    p.add_argument("--dataset-dir", default=None, help="folder of dataset_info.json for dataset names")
    p.add_argument("--template", default=None, help="chat template setting (as in the YAML; default auto)")
    p.add_argument("--checker", default="exact", help="arena checker: exact, json, number or module:function")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per item (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records only")
    p.add_argument("--output-dir", default=None, help="where to write predictions.jsonl and eval_results.json")
    p.add_argument("--ignore-base-mismatch", action="store_true", help="load an adapter recorded for another base")
    p.add_argument("--device", default=None, help="cpu or cuda (default: best available)")
    add_sampling_arguments(p)


def _normalise_text(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(pred: str, gold: str) -> float:
    """Bag-of-words F1 between prediction and reference (SQuAD's answer normalisation: lower case, no
    punctuation, no articles)."""
    p, g = _normalise_text(pred), _normalise_text(gold)
    if not p and not g:
        return 1.0
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def eval_items(records: list[tuple[str, dict]], tok: Any, template: str) -> list[dict[str, Any]]:
    """(prompt text, reference, source) of each record, rendered as training renders prompts."""
    from lorafam.data.encode import _render, set_template
    from lorafam.data.formats import DatasetError, Example, normalise

    mode = set_template(tok, template)
    items = []
    for where, rec in records:
        ex = rec if isinstance(rec, Example) else normalise(rec, where)
        if ex.messages is not None:
            last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
            prompt = _render(tok, ex.messages[:last], mode, True, ex.tools)
            reference = ex.messages[last]["content"]
        elif ex.prompt:
            prompt, reference = ex.prompt, ex.completion
        else:
            raise DatasetError(f"{where}: a plain 'text' record has no reference answer to evaluate against")
        items.append({"source": where, "prompt": prompt, "reference": reference})
    return items


def _records(spec: str, dataset_dir: str) -> list[tuple[str, Any]]:
    from lorafam.data import dataset_info
    from lorafam.data.dataset import _looks_like_name, resolve_path
    from lorafam.data.formats import read_records

    path = resolve_path(spec)
    if not path.exists() and _looks_like_name(spec):
        examples, _ = dataset_info.examples(dataset_info.entry(spec, dataset_dir))
        return [(ex.source, ex) for ex in examples]
    return read_records(path)[0]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    import lorafam as lf
    from lorafam.arena.checkers import check_exact, resolve_checker
    from lorafam.commands._generation import (
        AdapterMismatchError,
        check_adapter_base,
        generate_batch,
        sampling_from_args,
    )
    from lorafam.data.formats import DatasetError
    from lorafam.train.config import ConfigError, load_config

    err = Console(stderr=True, soft_wrap=True)
    try:
        cfg = load_config(args.config, args.overrides) if args.config else None
        model_name = args.model or (cfg.model_name_or_path if cfg else None)
        adapter = args.adapter or (cfg.adapter_name_or_path[-1] if cfg and cfg.adapter_name_or_path else None)
        data = args.data or (",".join(cfg.eval_dataset or cfg.dataset) if cfg else None)
        if not data:
            raise ConfigError("nothing to evaluate: pass --data FILE (or a YAML with eval_dataset / dataset)")
        dataset_dir = args.dataset_dir or (cfg.dataset_dir if cfg else "data")
        template = args.template or (cfg.template if cfg else "auto")
        checker = resolve_checker(args.checker)
        sampling = sampling_from_args(args)
        tok = lf.load_tokenizer(model_name)
        records = [r for spec in data.split(",") if spec.strip() for r in _records(spec.strip(), dataset_dir)]
        items = eval_items(records[: args.limit] if args.limit else records, tok, template)
        if not items:
            raise DatasetError(f"{data}: no record to evaluate")
        model = lf.load_model(model_name, device=args.device)
        if adapter:
            if not args.ignore_base_mismatch:
                check_adapter_base(adapter, model, model_name)
            lf.load_adapter(model, adapter)
        model.eval()
    except (ConfigError, DatasetError, AdapterMismatchError, FileNotFoundError, ValueError, KeyError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 2 if isinstance(exc, ConfigError) else 1
    outputs = generate_batch(
        model,
        tok,
        [it["prompt"] for it in items],
        args.max_new_tokens,
        batch_size=args.batch_size,
        sampling=sampling,
    )
    for it, out in zip(items, outputs):
        it["output"] = out
        it["exact_match"] = bool(check_exact(out, it["reference"]))
        it["token_f1"] = round(token_f1(out, it["reference"]), 4)
        it[f"checker_{args.checker}"] = bool(checker(out, it["reference"]))
    n = len(items)
    results = {
        "model": model_name or "embedded SmolLM2-135M-Instruct",
        "adapter": adapter,
        "data": data,
        "items": n,
        "exact_match": sum(it["exact_match"] for it in items) / n,
        "token_f1": sum(it["token_f1"] for it in items) / n,
        f"checker_{args.checker}": sum(it[f"checker_{args.checker}"] for it in items) / n,
        "max_new_tokens": args.max_new_tokens,
        "temperature": sampling.temperature,
    }
    if args.output_dir:
        from lorafam.core.checkpoint import atomic_write_text

        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(it) + "\n" for it in items))
        atomic_write_text(out_dir / "eval_results.json", json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0
