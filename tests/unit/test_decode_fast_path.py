"""The decoding fast paths (batch 1, no autograd, one adapter per layer) equal the general rule.

LoRA and DoRA add their low-rank term into the base output in place there (``add_output_``), on cached constants
(Aᵀ, s·Bᵀ; DoRA's g = m / ‖W0 + s·BA‖_c folded into g·s·B). Every cache must follow what can change between
tokens: an optimizer step, ``load_state_dict``, new storage, the scale, the base weight, merge/unmerge,
train/eval, inference mode. Where the adapter has a decode function (``Adapter.decode_call``: the layer's
``__call__`` goes straight to it, skipping ``nn.Module.__call__`` and ``forward``), that function must also notice
hooks, a deep copy, a replaced parameter, another active adapter and a dtype change.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorafam as lf
from lorafam.core.adapter import AdaptedLayer, Adapter
from lorafam.core.inject import adapted_layers
from tests.conftest import perturb_adapters


class Block(nn.Module):
    """A Llama-shaped block: q/k/v read one input, o another; gate/up one, down another."""

    def __init__(self, bias: bool):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(24, n, bias=bias) for n in (16, 8, 8))
        self.o_proj = nn.Linear(16, 24, bias=bias)
        self.gate_proj, self.up_proj = nn.Linear(24, 20, bias=bias), nn.Linear(24, 20, bias=bias)
        self.down_proj = nn.Linear(20, 24, bias=bias)

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        h = x + self.o_proj(q + torch.cat([k, v], -1))
        return h + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


def _block(cfg, bias: bool = False):
    torch.manual_seed(0)
    block = Block(bias)
    lf.attach(block, cfg)
    perturb_adapters(block, std=0.2)
    return block.eval()


def _general(layer, x):
    """One layer through the unfused definition: base output + ``Adapter.add_output`` (the base class's rule)."""
    base_out = layer.base_layer(x)
    if layer.disabled or "default" in layer.merged:
        return base_out
    return Adapter.add_output(layer.adapters["default"], x, base_out, base_out, layer.base_layer)


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {
    "lora": lambda: lf.LoraConfig(rank=4, alpha=8, targets=ALL),
    "rslora": lambda: lf.LoraConfig(rank=4, alpha=7, targets=ALL, use_rslora=True),
    "dora": lambda: lf.DoraConfig(rank=4, alpha=8, targets=ALL),
    "dora-rank-pattern": lambda: lf.DoraConfig(rank=4, alpha=8, targets=ALL, rank_pattern={"k_proj": 2}),
}


def _inputs(block, x):
    """Each adapted layer with the input it gets in one run of the block (captured by hooks, then removed)."""
    seen = []
    handles = [
        layer.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].clone())))
        for _, layer in adapted_layers(block)
    ]
    try:
        with torch.no_grad():
            block(x)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 7
    return seen


def _check(block, x):
    """Each adapted layer, called as a decoding loop calls it (no autograd, no hooks: the path of
    ``Adapter.decode_call`` where the layer has one), twice, equals the general rule on its own input; so
    does the whole block."""
    seen = _inputs(block, x)
    with torch.no_grad():
        for layer, inp in seen:
            expected = _general(layer, inp)
            for _ in range(2):  # the first call may build the decode function, the second uses it
                torch.testing.assert_close(layer(inp), expected, atol=1e-5, rtol=1e-5)


def _adapter(block, name):
    return getattr(block, name).adapters["default"]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_path_equals_general(name, bias):
    block = _block(CONFIGS[name](), bias)
    for x in (torch.randn(1, 1, 24), torch.randn(1, 5, 24), torch.randn(1, 3, 24)[:, 1:2]):  # token, prefill, view
        _check(block, x)
    with torch.inference_mode():
        _check(block, torch.randn(1, 1, 24))
    _check(block, torch.randn(1, 1, 24))  # leaving inference mode rebuilds the inference-tensor caches


@pytest.mark.parametrize("name", list(CONFIGS))
def test_caches_follow_updates_between_tokens(name):
    """The same input object again after each change: nothing computed before the change may be reused."""
    block = _block(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    _check(block, x)
    with torch.no_grad():
        _adapter(block, "k_proj").lora_A.add_(0.3)  # an in-place update of one layer's A
    _check(block, x)
    opt = torch.optim.AdamW([p for p in block.parameters() if p.requires_grad], lr=0.05)
    block.train()
    block(torch.randn(2, 3, 24)).square().mean().backward()
    opt.step()  # a real training step between two decoding calls
    block.eval()
    _check(block, x)
    block.load_state_dict({k: v * 1.1 for k, v in block.state_dict().items()})
    _check(block, x)
    ad = _adapter(block, "v_proj")
    ad.lora_A.data = ad.lora_A.data.flip(0).contiguous()  # new storage, version counter untouched
    _check(block, x)
    ad.scaling = ad.scaling / 2
    _check(block, x)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_dora_and_lora_caches_follow_base_and_magnitude_changes(name):
    block = _block(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    _check(block, x)
    with torch.no_grad():
        block.q_proj.base_layer.weight.mul_(1.5)  # DoRA's norm and g depend on W0
        if name == "dora":
            _adapter(block, "up_proj").lora_magnitude_vector.mul_(0.7)
    _check(block, x)
    w = block.gate_proj.base_layer.weight
    w.data = w.data * 0.5  # new storage for W0
    _check(block, x)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_merge_unmerge_disable_and_train_mode_between_tokens(name):
    block = _block(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    with torch.no_grad():
        expected = block(x).clone()
    lf.merge(block)
    _check(block, x)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    lf.unmerge(block)
    _check(block, x)
    with lf.disabled(block):
        _check(block, x)
    block.train()  # no dropout configured: train-mode no-grad forwards may take the fast path, and equal it
    _check(block, x)
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)  # unmerge rounds W0 a little


def test_dropout_in_training_never_takes_the_fast_path():
    block = _block(lf.LoraConfig(rank=4, alpha=8, targets=ALL, dropout=0.5)).train()
    layer, x = block.q_proj, torch.randn(1, 1, 24)
    torch.manual_seed(3)
    with torch.no_grad():
        a = layer(x)
    torch.manual_seed(3)
    with torch.no_grad():
        b = _general(layer, x)  # the same dropout mask
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.equal(layer(x), layer(x))  # masks are drawn: the cached, mask-free path was not taken
    block.eval()
    _check(block, x)


def _fast_path_taken(layer, x) -> bool:
    """Whether a no-grad call of ``layer`` skips its ``forward`` (the decode function answered)."""
    calls = []
    real = layer.forward
    layer.forward = lambda *a, **k: calls.append(1) or real(*a, **k)  # instance attribute: what __call__ runs
    try:
        with torch.no_grad():
            layer(x)
    finally:
        del layer.forward
    return not calls


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_decoding_calls_skip_the_module_machinery(name):
    block = _block(CONFIGS[name](), bias=True)
    x = torch.randn(1, 1, 24)
    keys = list(block.state_dict())
    with torch.no_grad():
        block(x)  # builds each layer's decode function
    assert list(block.state_dict()) == keys and len(list(block.modules())) == len(set(block.modules()))
    for layer, inp in _inputs(block, x):
        assert isinstance(layer, AdaptedLayer) and layer._decode_call is not None
        assert _fast_path_taken(layer, inp)
    layer = block.q_proj
    assert not _fast_path_taken(layer, torch.randn(2, 1, 24))  # batch 2: the general path
    with torch.enable_grad():
        out = layer(x)
    assert out.requires_grad and out.grad_fn is not None  # autograd on: never the decode function


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_hooks_added_after_the_decode_function_still_run(name):
    block = _block(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    _check(block, x)
    fired = []
    layer = block.v_proj
    h1 = layer.register_forward_hook(lambda *a: fired.append("layer"))
    h2 = layer.base_layer.register_forward_hook(lambda *a: fired.append("base"))
    h3 = torch.nn.modules.module.register_module_forward_hook(lambda *a: fired.append("global"))
    try:
        with torch.no_grad():
            layer(x)
    finally:
        h1.remove(), h2.remove(), h3.remove()
    assert {"layer", "base", "global"} <= set(fired)
    assert _fast_path_taken(layer, x)  # hooks gone: the decode function again


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_a_deep_copy_or_a_pickled_model_computes_with_its_own_weights(name):
    import copy
    import io

    block = _block(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    _check(block, x)
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if "lora_B" in n:
                p.mul_(-2.0)
    _check(twin, x)
    _check(block, x)
    with torch.no_grad():
        assert not torch.allclose(twin(x), block(x))
    buf = io.BytesIO()
    torch.save(block, buf)  # the decode functions are closures: a pickled layer drops them
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), block(x))
    _check(loaded, x)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_a_replaced_parameter_another_adapter_or_dtype_is_seen(name):
    block = _block(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    _check(block, x)
    ad = _adapter(block, "o_proj")
    ad.lora_B = nn.Parameter(ad.lora_B.detach() * 3)  # a new Parameter object, not new storage of the old one
    _check(block, x)
    block.q_proj.base_layer.weight = nn.Parameter(block.q_proj.base_layer.weight.detach() * 0.5)
    _check(block, x)
    lf.attach(block, CONFIGS[name](), name="other")
    perturb_adapters(block, std=0.3)
    lf.set_active(block, ["other"])
    seen = _inputs(block, x)
    with torch.no_grad():
        for layer, inp in seen:
            base_out = layer.base_layer(inp)
            ad = layer.adapters["other"]
            expected = Adapter.add_output(ad, inp, base_out, base_out, layer.base_layer)
            for _ in range(2):
                torch.testing.assert_close(layer(inp), expected, atol=1e-5, rtol=1e-5)
    lf.set_active(block, ["default"])
    _check(block, x)
    layer = block.k_proj
    old = layer.base_layer
    layer.base_layer = nn.Linear(old.in_features, old.out_features, bias=False)  # another base module
    _check(block, x)
    layer.base_layer = old
    block.double()
    _check(block, x.double())


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_decode_functions_make_no_reference_cycle(name):
    """A dropped model is freed at once (reference counting), not when the garbage collector next runs."""
    import gc
    import weakref

    block = _block(CONFIGS[name]())
    _check(block, torch.randn(1, 1, 24))
    assert block.q_proj._decode_call is not None
    ref = weakref.ref(block.q_proj)
    gc.disable()
    try:
        del block
        assert ref() is None
    finally:
        gc.enable()
