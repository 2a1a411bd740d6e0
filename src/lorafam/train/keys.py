"""The key layer of the training config: ``key=value`` overrides and the foreign spellings (LLaMA-Factory, HF
``TrainingArguments``, axolotl) mapped to lorafam's keys, before pydantic validates them (:mod:`.config`)."""

from __future__ import annotations

from typing import Any

import yaml

from lorafam.family import MEMBERS
from lorafam.helpers import closest
from lorafam.train.foreign import FOREIGN, ForeignKeyError

NEAR_MISS = 0.8
"""How close a wrong key must be to a valid one to be suggested (difflib's ratio): ``lerning_rate`` →
``learning_rate`` (0.96) is suggested, ``flash_attn`` → ``lora_rank`` (0.53) and ``deepspeed`` → ``seed`` (0.62)
are not."""

# Values of LLaMA-Factory / HF keys that lorafam implements; anything else is refused with the reason.
_ACCEPTED_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "stage": (("sft", "pt"), "lorafam trains supervised (sft) and plain-text (pt) objectives; DPO, KTO, reward "
              "models and PPO are not implemented"),
    "do_train": ((True,), "`lorafam train` always trains; use `lorafam eval` to evaluate only"),
    "quantization_method": (("bnb", "torchao", "nf4"), "4-bit NF4 is lorafam's own quantiser (no bitsandbytes, "
                            "HQQ or EETQ); bnb's 4-bit NF4 is the same format"),
}  # fmt: skip
_ACCEPTED_NOTES = {"quantization_method": "quantization_method: bitsandbytes is not used; the base is stored in "
                   "lorafam's own NF4 (QLoRA's format, double-quantised scales)"}  # fmt: skip


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a=1", "method_args.init_rank=12"]`` → ``{"a": 1, "method_args": {"init_rank": 12}}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return out


def canonicalise(
    raw: dict[str, Any], valid: list[str], source: str = "config", notes: list[str] | None = None
) -> dict[str, Any]:
    """Map foreign keys (:data:`lorafam.train.foreign.FOREIGN`) to ours (``valid``: the config's own keys);
    unknown keys raise with a near miss.

    ``notes`` (when given) receives one line per accepted key that changes nothing here.
    """

    notes = notes if notes is not None else []
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in raw.items():
        if key in _ACCEPTED_FIXED:
            allowed, why = _ACCEPTED_FIXED[key]
            if value not in allowed:
                choices = ", ".join(map(str, allowed))
                raise ConfigError(f"{source}: {key}={value!r} is not supported here (supported: {choices}): {why}")
            if key in _ACCEPTED_NOTES and value == "bnb":
                notes.append(_ACCEPTED_NOTES[key])
            continue
        if key == "adapter":
            continue
        if key in valid:
            updates = {key: value}
        elif key in FOREIGN:
            try:
                updates, note = FOREIGN[key].translate(key, value)
            except ForeignKeyError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            if note:
                notes.append(note)
        else:
            raise ConfigError(
                f"{source}: unknown key {key!r}.{closest(key, valid + list(FOREIGN), cutoff=NEAR_MISS)} "
                f"Valid keys: {', '.join(valid)}. Keys of LLaMA-Factory, HF TrainingArguments and axolotl that "
                "are accepted are listed in docs/trainer.md"
            )
        for name, v in updates.items():
            if name in out and out[name] != v:
                raise ConfigError(
                    f"{source}: {origin[name]!r} and {key!r} are the same setting with different values"
                )
            out[name] = v
            origin[name] = key
    adapter = raw.get("adapter")
    if adapter is not None:
        if adapter not in ("lora", "qlora"):
            raise ConfigError(f"{source}: adapter={adapter!r}; expected 'lora' or 'qlora'")
        if adapter == "qlora":
            bit = out.get("quantization_bit")
            if bit not in (None, 4):
                raise ConfigError(
                    f"{source}: 'adapter: qlora' needs 4-bit NF4 but 'quantization_bit' is {bit}; "
                    "remove quantization_bit or set it to 4"
                )
            out["quantization_bit"] = 4
            if "qlora" in MEMBERS and out.get("member", "lora") == "lora":
                out["member"] = "qlora"
    return out
