"""Adapter checkpoints in Hugging Face PEFT's on-disk layout.

``adapter_config.json`` + ``adapter_model.safetensors`` with keys ``base_model.model.<module path>.<suffix>``
(``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``...). Writes go to a temporary directory that
is renamed into place, so an interrupted save never leaves a half-written adapter where a good one was.
Reading accepts directories PEFT wrote; unknown config keys are ignored with a warning. safetensors only.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lorafam.core.config import AdapterConfig
from lorafam.core.files import atomic_write_dir, atomic_write_text, current_umask
from lorafam.core.inject import adapted_layers, attach, configs
from lorafam.core.record import record
from lorafam.core.saved_modules import copies_state, load_copies
from lorafam.core.snapshot import ModelSnapshot

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
__all__ = ["atomic_write_dir", "atomic_write_text", "current_umask", "load_adapter", "save_adapter"]

PREFIX = "base_model.model."
SHAPES_KEY = "lorafam_layer_shapes"  # safetensors metadata: {module path: [out, in]} (PEFT ignores it)

# Keys PEFT writes that we either use, or can ignore without changing the adapter's outputs *at the values
# checked in* ``_UNFAITHFUL`` / the member's ``check_peft`` (LoRA: ``methods.lora.peft_init``; each key audited
# against PEFT 0.21.2):
# - used: peft_type, target_modules, exclude_modules, layers_to_transform, layers_pattern (the modules to adapt:
#   the file's own tensors name them), r, lora_alpha, lora_dropout, use_rslora, use_dora, rank_pattern,
#   alpha_pattern, modules_to_save, alora_invocation_tokens, init_lora_weights (see ``peft_init``);
# - metadata with no effect on the outputs: task_type, base_model_name_or_path, revision, inference_mode,
#   auto_mapping, peft_version, runtime_config (PEFT's ephemeral GPU offload), megatron_config/megatron_core
#   (tensor-parallel layout of the same weights);
# - fan_in_fan_out: GPT-2 Conv1D layers are recognised by type; the tensors have PEFT's layout either way;
# - eva_config, corda_config, loftq_config, lora_ga_config: settings of the inits, read with init_lora_weights;
# - the rest change what the adapter computes unless off, and are refused when on (``_UNFAITHFUL``).
_KNOWN_HARMLESS = {
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "target_modules",
    "exclude_modules",
    "r",
    "lora_alpha",
    "lora_dropout",
    "fan_in_fan_out",
    "bias",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "alora_invocation_tokens",
    "lora_bias",
    "megatron_config",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "layer_replication",
    "runtime_config",
    "use_qalora",
    "qalora_group_size",
    "trainable_token_indices",
    "target_parameters",
    "ensure_weight_tying",
    "lora_ga_config",
    "arrow_config",
    "use_bdlora",
    "kasa_config",
    "velora_config",
    "monteclora_config",
}


# key -> (the values that mean "off", what the key does when on). Refused when on: lorafam would ignore it and
# give other outputs than PEFT.
_UNFAITHFUL: dict[str, tuple[tuple[Any, ...], str]] = {
    "bias": (("none", None), "PEFT also trains the base layers' biases and stores them in the file"),
    "lora_bias": ((False, None), "lora_B carries a bias vector"),
    "layer_replication": ((None, []), "PEFT first duplicates base decoder layers (a deeper model)"),
    "use_qalora": ((False, None), "QA-LoRA pools the adapter input in groups"),
    "trainable_token_indices": ((None, [], {}), "PEFT also trains the embedding rows of these tokens"),
    "target_parameters": ((None, []), "LoRA on bare nn.Parameters (e.g. MoE expert weights)"),
    "arrow_config": ((None,), "Arrow routes each token between several LoRA experts"),
    "use_bdlora": ((False, None), "BD-LoRA's block-structured factors"),
    "kasa_config": ((None,), "the KaSA variant changes the update"),
    "velora_config": ((None,), "the VeLoRA variant changes the update"),
    "monteclora_config": ((None,), "the MonteCLoRA variant samples the update"),
}


def _refuse_unfaithful(d: dict[str, Any], source: str) -> None:
    """Refuse a PEFT config that sets a key lorafam would otherwise ignore at the cost of other outputs."""
    for key, (off, what) in _UNFAITHFUL.items():
        value = d.get(key)
        if value not in off:
            raise ValueError(
                f"{source}: {key}={value!r} is not supported by lorafam ({what}); loading the file without it "
                f"would give other outputs than PEFT. Load it with PEFT, or train without {key!r}."
            )
    if d.get("ensure_weight_tying") and d.get("modules_to_save"):
        raise ValueError(
            f"{source}: ensure_weight_tying=True with modules_to_save={d['modules_to_save']!r} is not supported "
            "(PEFT then shares one trained copy between tied modules; lorafam gives each its own copy)"
        )


def _targets_for_file(model: nn.Module, name: str) -> list[str] | str:
    """The narrowest PEFT ``target_modules`` that selects exactly the layers carrying adapter ``name``."""
    from lorafam.core.inject import adaptable_layers, match_targets

    carrying = sorted(p for p, layer in adapted_layers(model) if name in layer.adapters)
    suffixes = sorted({p.split(".")[-1] for p in carrying})
    if sorted(match_targets(list(adaptable_layers(model)), suffixes)) == carrying:
        return suffixes
    return "^(" + "|".join(p.replace(".", r"\.") for p in carrying) + ")$"


def adapter_state(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed exactly as PEFT writes them."""
    state: dict[str, torch.Tensor] = {}
    for path, layer in adapted_layers(model):
        if name in layer.adapters:
            for suffix, tensor in layer.adapters[name].peft_state().items():
                state[f"{PREFIX}{path}.{suffix}"] = tensor.detach().to("cpu").contiguous()
    for key, tensor in copies_state(model, name).items():  # modules_to_save copies, under the module's own key
        state[f"{PREFIX}{key}"] = tensor.detach().to("cpu").contiguous()
    extra = record(model).tensors_to_save(name)  # type: ignore[union-attr]  # LongLoRA norms (+ a tied head)
    for key, tensor in extra.items():
        state[f"{PREFIX}{key}"] = tensor.detach().to("cpu").contiguous()
    return state


def file_config(model: nn.Module, name: str, peft_cfg: dict[str, Any]) -> dict[str, Any]:
    """A member's PEFT config dict completed with the keys every adapter file carries."""
    peft_cfg = dict(peft_cfg)
    peft_cfg.update(
        {
            "target_modules": _targets_for_file(model, name),
            "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
            "task_type": "CAUSAL_LM",
            "inference_mode": True,
            "revision": None,
        }
    )
    if configs(model)[name].modules_to_save:
        peft_cfg["modules_to_save"] = list(configs(model)[name].modules_to_save)
    return peft_cfg


def save_adapter(model: nn.Module, path: str | os.PathLike[str], name: str = "default") -> Path:
    """Write adapter ``name`` to ``path`` in PEFT's layout (atomically). Returns the directory."""
    cfgs = configs(model)
    if name not in cfgs:
        raise ValueError(f"no adapter named {name!r} on this model; attached: {sorted(cfgs)}")
    config = cfgs[name]
    peft_cfg = file_config(model, name, config.to_peft())
    from lorafam.family import spec_for_config

    if not spec_for_config(config).peft_compatible or config.quantize is not None:
        # our own peft_type: keep the full config; PEFT-known types get only PEFT's keys (vLLM/PEFT-clean).
        # A quantised base (QLoRA) is recorded too, so loading reproduces the trained model exactly.
        peft_cfg["lorafam_config"] = config.to_dict()
    state = adapter_state(model, name)
    extra = record(model).peft_config(name)  # type: ignore[union-attr]
    if extra:
        if peft_cfg.get("modules_to_save") and extra.get("modules_to_save"):
            extra["modules_to_save"] = sorted({*peft_cfg["modules_to_save"], *extra["modules_to_save"]})
        peft_cfg.update(extra)

    shapes = {p: [ly.out_features, ly.in_features] for p, ly in adapted_layers(model) if name in ly.adapters}
    metadata = {"format": "pt", SHAPES_KEY: json.dumps(shapes, sort_keys=True)}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(peft_cfg, indent=2, sort_keys=True, default=str) + "\n")

    atomic_write_dir(Path(path), write)
    return Path(path)


def read_adapter_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    cfg_file = Path(path) / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no adapter config here (expected PEFT's {CONFIG_NAME})")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_file}: not valid JSON ({exc})") from exc


def config_from_peft(d: dict[str, Any], source: str = "adapter_config.json") -> AdapterConfig:
    """Turn a PEFT (or lorafam) adapter config dict into one of our member configs."""
    from lorafam.family import METHODS

    ours = d.get("lorafam_config")
    if ours is not None:
        method = ours.get("method")
        if method in METHODS:
            return METHODS[method].config_cls.from_dict(ours)
    peft_type = d.get("peft_type")
    if peft_type is None:
        raise ValueError(f"{source}: missing 'peft_type'")
    _refuse_unfaithful(d, source)
    unknown = sorted(set(d) - _KNOWN_HARMLESS - {"lorafam_config"} - _method_keys(d))
    if unknown:
        warnings.warn(f"{source}: ignoring config keys lorafam does not use: {unknown}", stacklevel=3)
    for spec in METHODS.values():
        cls = spec.config_cls
        if cls.accepts_peft(d):
            targets = d.get("target_modules")
            if targets is None:
                raise ValueError(f"{source}: 'target_modules' is missing")
            if isinstance(targets, (list, set, tuple)):
                targets = sorted(targets)
            cls.check_peft(d, source)
            config = cls.from_peft(d, targets)
            if d.get("modules_to_save"):
                config.modules_to_save = sorted(d["modules_to_save"])
            return config
    supported = sorted({s.peft_type for s in METHODS.values()})
    raise ValueError(
        f"{source}: peft_type {peft_type!r} (use_dora={d.get('use_dora')}) is not supported by lorafam. "
        f"Supported peft_type values: {', '.join(supported)}"
    )


def _method_keys(d: dict[str, Any]) -> set[str]:
    from lorafam.family import METHODS

    keys: set[str] = set()
    for spec in METHODS.values():
        keys |= set(spec.config_cls.peft_keys)
    return keys


def read_adapter_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    path = Path(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise ValueError(
                f"{path / 'adapter_model.bin'}: pickled weights are not loaded (unsafe). Convert it to "
                f"{WEIGHTS_NAME} with PEFT (save_pretrained(safe_serialization=True))."
            )
        raise FileNotFoundError(f"{weights}: adapter weights not found")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{weights}: cannot read safetensors file ({exc})") from exc


def read_layer_shapes(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """The (out, in) shape of every layer the adapter was saved from, as lorafam records it ({} for PEFT files).

    Needed for members whose tensor shapes do not pin the layer's shape: Quantum-PEFT's angle vectors have one
    length for every width between two powers of two, so a 96-wide adapter would load onto a 128-wide layer.
    """
    try:
        with safe_open(str(Path(path) / WEIGHTS_NAME), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(SHAPES_KEY)
        return json.loads(raw) if raw else {}
    except (SafetensorError, OSError, ValueError):
        return {}


def load_adapter(
    model: nn.Module, path: str | os.PathLike[str], name: str = "default", trainable: bool = False
) -> nn.Module:
    """Attach the adapter stored at ``path`` (written by lorafam or by PEFT) to ``model``. Returns the model.

    Raises:
        FileNotFoundError / ValueError: missing or corrupt files, an unsupported ``peft_type``, or tensors whose
            shapes do not fit this base model (the message names the module and the file).
    """
    d = read_adapter_config(path)
    config = config_from_peft(d, source=str(Path(path) / CONFIG_NAME))
    state = read_adapter_weights(path)
    config.check_load(d, state)
    if "lorafam_config" not in d and (d.get("exclude_modules") or d.get("layers_to_transform") is not None):
        config.targets = _targets_in_state(state)  # PEFT adapted exactly the modules the file has tensors for
    rewrites = getattr(config, "init", None) in ("pissa", "olora")
    before = ModelSnapshot(
        model, in_place=getattr(config, "trainable_embeddings_and_norms", False), base_weights=rewrites
    )
    try:
        attach(model, config, name=name, trainable=trainable)
        load_adapter_state(
            model, state, name, source=str(Path(path) / WEIGHTS_NAME), shapes=read_layer_shapes(path)
        )
    except BaseException:
        before.restore(model, config, name)  # the adapters already attached stay, untouched
        raise
    return model


def _targets_in_state(state: dict[str, torch.Tensor]) -> str:
    """A full-match regex of the module paths that carry adapter tensors in a PEFT state dict."""
    import re

    paths = set()
    for key in state:
        m = re.match(rf"^{re.escape(PREFIX)}(.+?)\.(lora_[A-Za-z_]+|lora_magnitude_vector)(\.|$)", key)
        if m:
            paths.add(m.group(1))
    return "^(" + "|".join(re.escape(p) for p in sorted(paths)) + ")$"


def load_adapter_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    name: str,
    source: str,
    shapes: dict[str, list[int]] | None = None,
) -> None:
    """Copy PEFT-keyed tensors into adapter ``name``; every tensor must be used and every slot filled.

    ``shapes`` (module path → [out, in], from :func:`read_layer_shapes`) is checked against the model first.
    """
    remaining = dict(state)
    for path, layer in adapted_layers(model):
        if name not in layer.adapters:
            continue
        want = (shapes or {}).get(path)
        if want is not None and list(want) != [layer.out_features, layer.in_features]:
            raise ValueError(
                f"{source}: {path}: the adapter was saved from a {want[0]}×{want[1]} layer but this model's is "
                f"{layer.out_features}×{layer.in_features} — was this adapter trained on a different base model?"
            )
        prefix = f"{PREFIX}{path}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        sub = {k.replace(".default.", ".").removesuffix(".default"): v for k, v in sub.items()}
        for k in list(remaining):
            if k.startswith(prefix):
                remaining.pop(k)
        sub.pop("ranknum", None)  # AdaLoRA: PEFT never writes it, third-party files may
        layer.adapters[name].load_peft_state(sub, where=f"{source}: {path}")
    remaining = load_copies(model, name, remaining, PREFIX, source)
    remaining = record(model).load_rest(name, remaining, PREFIX)  # type: ignore[union-attr]
    if remaining:
        raise KeyError(f"{source}: tensors that match no adapted module of this model: {sorted(remaining)[:8]}")
