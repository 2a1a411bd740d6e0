"""The arena's PEFT peers: the same member built through Hugging Face PEFT, inside the arena's harness.

Which members PEFT implements is a registry fact (``FamilyMember.in_peft``); the member's config is translated by
its own ``to_peft()``; LoRA+ uses ``peft.optimizers.create_loraplus_optimizer``
and AdaLoRA calls ``update_and_allocate`` after each step. Everything else (data, loop, evaluation, probes) is the
harness's, so a lorafam-vs-PEFT ratio compares implementations, not harnesses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lorafam.arena.built import Built, member_config


class PeerUnavailable(RuntimeError):
    """PEFT cannot run this member here (the run is recorded as skipped, with the reason)."""


def build_peft(member_name: str, model: nn.Module, settings: dict[str, Any], formatter: Any, steps: int) -> Built:
    import peft

    from lorafam.core.inject import adaptable_layers, match_targets
    from lorafam.family import MEMBERS

    cfg = member_config(member_name, settings, formatter, steps)
    if cfg.quantize:
        raise PeerUnavailable(
            f"PEFT's 4-bit base needs bitsandbytes' CUDA/CPU kernels (quantize={cfg.quantize!r}); not run here"
        )
    if not MEMBERS[member_name].in_peft:
        raise PeerUnavailable(f"Hugging Face PEFT does not implement {member_name} (registry: in_peft=False)")
    d = dict(cfg.to_peft())
    peft_type = d.pop("peft_type")
    config_cls = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    known = {f.name for f in dataclasses.fields(config_cls)}
    kw = {k: v for k, v in d.items() if k in known}
    kw["target_modules"] = match_targets(list(adaptable_layers(model)), cfg.targets, cfg.exclude)
    kw["task_type"] = "CAUSAL_LM"
    pm = peft.get_peft_model(model, config_cls(**kw))
    ratio = MEMBERS[member_name].train.loraplus_ratio
    if ratio:
        from peft.optimizers import create_loraplus_optimizer

        opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=settings["lr"], loraplus_lr_ratio=ratio)
    else:
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=settings["lr"])
    after = None
    if peft_type == "ADALORA":
        after = lambda step: pm.base_model.update_and_allocate(step)  # noqa: E731
    mergeable = not kw.get("alora_invocation_tokens")
    bases = [m.base_layer for m in pm.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    return Built(
        pm,
        opt,
        adapter_config={"peft_type": peft_type, **{k: v for k, v in kw.items() if k != "target_modules"}},
        disabled=pm.disable_adapter,
        merge=pm.merge_adapter,
        unmerge=pm.unmerge_adapter,
        save=lambda path: pm.save_pretrained(path),
        after_backward=after,
        mergeable=mergeable,
        not_mergeable_reason="" if mergeable else "aLoRA's token mask cannot be folded into W",
        adapted_bases=bases,
    )
