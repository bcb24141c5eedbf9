"""A model's layout, read from the model transformers builds on the meta device (no weights, no memory).

Everything is read from the modules themselves (which ModuleList holds the layers, which leaf
modules of a layer's attention and MLP are projections and of what shape), not from a table of
names per family; the config is read only for what modules do not show (soft-capping, the
parallel residual, the sliding window).
"""

from __future__ import annotations

import json
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftpipe.model_layout import ModelLayout, Projection

ATTENTION_NAMES = ("self_attn", "attention", "self_attention", "attn")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")


class UnsupportedModel(ValueError):
    """transformers cannot build this model as a causal LM, or it has no decoder layers peftpipe recognises."""


def inspect_model_dir(model_dir: Path) -> ModelLayout:
    return inspect_config(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))


# transformers' lazy top-level module is not safe to import from several threads at once (a thread can see
# "cannot import name 'AutoConfig'" while another is mid-import), and validation runs in Prefect's task
# threads and in thread pools; one thread at a time builds a layout.
_INSPECT_LOCK = threading.Lock()


def inspect_config(config: dict[str, Any]) -> ModelLayout:
    with _INSPECT_LOCK:
        return _inspect_cached(json.dumps(config, sort_keys=True))


@lru_cache(maxsize=8)
def _inspect_cached(config_json: str) -> ModelLayout:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(config_json)
    model_type = raw.get("model_type")
    try:
        config = AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k != "model_type"})
    except (KeyError, ValueError) as error:
        raise UnsupportedModel(f"model_type {model_type!r} is not a model this transformers version knows"
                               f" ({error}); peftpipe does not run models that need trust_remote_code") from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    except ValueError as error:
        raise UnsupportedModel(f"{model_type!r} has no causal-LM class in transformers ({error})") from None
    return layout_of(model)


def _decoder_layers(model: Any, count: int) -> Any:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and count > 0:
            return module
    raise UnsupportedModel(f"no stack of {count} decoder layers found in {type(model).__name__}")


def _child(layer: Any, names: tuple[str, ...], hints: tuple[str, ...]) -> tuple[str, Any] | None:
    children = dict(layer.named_children())
    for name in names:
        if name in children:
            return name, children[name]
    return next(((n, c) for n, c in children.items() if any(h in n for h in hints)), None)


def _projections(block: tuple[str, Any], role: str, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 intermediate: int) -> list[Projection]:
    import torch

    found: dict[str, Projection] = {}
    block_name, block_module = block
    for path, module in block_module.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if not path or leaf == "gate" or leaf.endswith("_gate") or "router" in leaf:
            continue  # MoE routers: tiny, and not what an adapter should change
        if isinstance(module, torch.nn.Linear):
            kind, fan_in, fan_out = "linear", module.in_features, module.out_features
        elif type(module).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
            kind, (fan_in, fan_out) = "conv1d", tuple(module.weight.shape)
        else:
            continue
        fused = ""
        if role == "attention" and fan_in == hidden and fan_out == (heads + 2 * kv_heads) * head_dim:
            fused = "qkv"
        elif role == "mlp" and fan_in == hidden and fan_out == 2 * intermediate:
            fused = "gate_up"
        previous = found.get(leaf)
        found[leaf] = Projection(leaf, role, fan_in, fan_out, kind, fused, 1 + (previous.count if previous else 0),
                                block_name)
    return list(found.values())


def layout_of(model: Any) -> ModelLayout:
    """The layout of a built causal LM (on the meta device or loaded)."""
    config = model.config
    layers = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    layer = _decoder_layers(model, layers)[0]
    attention = _child(layer, ATTENTION_NAMES, ("attn", "attention"))
    mlp = _child(layer, MLP_NAMES, ("mlp", "moe", "ffn"))
    if attention is None or mlp is None:
        raise UnsupportedModel(f"{type(layer).__name__} has no attention or MLP block peftpipe recognises")
    # Key/value heads from the modules: a separate key projection, or what a fused q/k/v leaves over.
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    linears = {p.name: p for p in _projections(attention, "attention", hidden, heads, heads, head_dim, 0)}
    key = next((p for n, p in linears.items() if n in ("k_proj", "key", "k")), None)
    if key is not None:
        kv_heads = key.out_features // head_dim
    else:
        widest = max((p.out_features for p in linears.values() if p.in_features == hidden), default=0)
        if widest > heads * head_dim:
            kv_heads = (widest // head_dim - heads) // 2
    # The intermediate size is what the MLP's down projection reads (Falcon's config has none; Phi-3's
    # gate_up_proj writes twice as much); an MLP of experts only has no nn.Linear: the config says.
    mlp_linear = _projections(mlp, "mlp", hidden, heads, kv_heads, head_dim, 0)
    down = [p.in_features for p in mlp_linear if p.out_features == hidden and p.in_features != hidden]
    intermediate = down[0] if down else int(getattr(config, "intermediate_size", None) or 4 * hidden)
    projections = (_projections(attention, "attention", hidden, heads, kv_heads, head_dim, intermediate)
                   + _projections(mlp, "mlp", hidden, heads, kv_heads, head_dim, intermediate))
    experts = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    up_like = [p for p in projections if p.role == "mlp" and p.in_features == hidden and p.fused != "gate_up"]
    gated = any(p.fused == "gate_up" for p in projections) or len({p.out_features for p in up_like}) < len(up_like) \
        or (experts > 0 and len(up_like) in (0, 2))
    embeddings = model.get_input_embeddings()
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embeddings.weight
    embedding_parameters = embeddings.weight.numel() + (0 if tied or output is None else output.weight.numel())
    names = tuple(dict.fromkeys(re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)
                                for name, _ in model.named_modules() if name))
    softcap = getattr(config, "attn_logit_softcapping", None)
    return ModelLayout(
        model_type=config.model_type,
        architecture=type(model).__name__,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        vocab_size=int(embeddings.weight.shape[0]),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        parameters=sum(p.numel() for p in model.parameters()),
        embedding_parameters=embedding_parameters,
        tied_embeddings=tied,
        gated_mlp=bool(gated),
        parallel_residual=bool(getattr(config, "use_parallel_residual", False) or getattr(config, "parallel_attn", False)
                               or getattr(config, "new_decoder_architecture", False)),
        experts=experts,
        attention_softcap=float(softcap) if softcap else None,
        sliding_window=getattr(config, "sliding_window", None) or None,
        supports_attention_backend=bool(getattr(type(model), "_supports_attention_backend", False)),
        projections=tuple(projections),
        module_names=names,
        # Exactly nn.LayerNorm, as the hf engine's keep_layer_norms_in_storage_dtype matches it.
        layer_norm=any(type(m).__name__ == "LayerNorm" and type(m).__module__.startswith("torch.nn")
                       for m in layer.modules()),
    )
