"""ModelSpec: the shape of a decoder-only transformer, and where it comes from.

Models: the architecture facts that decide memory and time of a step: layer count, widths,
heads (GQA/MQA via ``num_kv_heads``, explicit ``head_dim``), vocabulary, norm and MLP kinds,
biases, Qwen3's per-head q/k norms, sliding windows, whether the token embedding and the LM
head are present (a bare stack of decoder layers has neither), and two implementation details
that change which tensors get allocated: one fused Linear for q, k, v (Megatron, GPT-2) and one
fused Linear for gate and up (Megatron with SwiGLU).
Sources of a ModelSpec: a Hugging Face ``config.json`` (model_type llama, mistral, qwen2,
qwen3, gpt2), a preset in ``simulator/presets/models/`` (HF-style config files with a
``_source``), a Megatron-style GPT config (model_type ``gpt``, keys below), a Hugging Face hub
id (``org/name``: only its ``config.json``, through ``huggingface_hub`` and its local cache), or
a ``transformers.PreTrainedModel``.
Assumes:
- The final norm belongs to the head: it is counted when ``has_lm_head`` (Megatron's
  ``post_process`` convention). A bare layer stack has no final norm.
- Tied embeddings share one matrix only when both the embedding and the head are present.
- Sliding windows apply to every layer. Mistral keeps ``sliding_window`` as written (v0.1:
  4096, later versions null). Qwen2/Qwen3 keep it only when ``use_sliding_window`` is true, as
  transformers does; a config whose layers mix sliding and full attention (``layer_types`` or
  ``0 < max_window_layers < num_hidden_layers``) is rejected rather than approximated.
- Keys a family cannot express in its HF keys (e.g. ``qkv_fused`` for a Llama-shaped probe
  stack) go in a ``"tierplan"`` block of overrides; keys starting with ``_`` are metadata
  (``_source`` is recorded, ``_name_or_path`` names the model, others are ignored).
- A config with a key that changes the math but has no field here (``UNMODELLED_KEYS``: experts,
  latent attention; ``moe_*``) is refused in one line, whatever its ``model_type`` says.
Ignores: rotary base and scaling, dropout, initializer ranges, token ids: none of them changes
the bytes or FLOPs of a step. ``to_hf_config`` therefore builds a model of the same shape, not
the same numerics.
Source: transformers 5.x configuration_{llama,mistral,qwen2,qwen3,gpt2}.py and modeling code
(which layers carry biases); Megatron-LM ``arguments.py`` for the ``gpt`` keys.

Megatron-style ``gpt`` config keys (Megatron-LM argument names):
``num_layers``, ``hidden_size``, ``ffn_hidden_size``, ``num_attention_heads``,
``num_query_groups`` (default: heads), ``kv_channels`` (default: hidden/heads),
``padded_vocab_size``, ``max_position_embeddings``, ``position_embedding_type``
("learned_absolute" | "rope" | "none"), ``normalization`` ("LayerNorm" | "RMSNorm"),
``norm_epsilon``, ``swiglu`` (bool), ``add_bias_linear`` (bool: o, mlp and qkv biases),
``add_qkv_bias`` (bool: qkv bias even without add_bias_linear), ``qk_layernorm`` (bool),
``untie_embeddings_and_output_weights`` (bool), ``window_size`` (int | null).
"""

from __future__ import annotations

import math
import pathlib
import re
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodels.limits import MAX_HEADS, MAX_HIDDEN, MAX_LAYERS, MAX_SEQ_LEN, MAX_VOCAB, echo
from hwmodels.units import UserInputError, validation_error_line
from hwmodels.userfile import read_user_json

PRESET_DIR = pathlib.Path(__file__).resolve().parent / "presets" / "models"

Family = Literal["llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt"]
SUPPORTED_FAMILIES: tuple[str, ...] = ("gpt", "gpt2", "llama", "mistral", "qwen2", "qwen3")
HF_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
OVERRIDE_KEY = "tierplan"  # config block for ModelSpec fields a family's own keys cannot express


class ModelSpec(BaseModel):
    """Shape of a decoder-only transformer (one replica, before any parallel sharding)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    """Human name, e.g. a preset name ("llama-3.1-8b") or the HF repo id."""
    family: Family
    """Model code family; ``gpt`` is Megatron-LM's GPT (MEMO's models)."""
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    """Number of decoder layers."""
    hidden_size: int = Field(ge=1, le=MAX_HIDDEN)
    """Residual stream width h."""
    intermediate_size: int = Field(ge=1, le=MAX_HIDDEN)
    """MLP inner width f (for SwiGLU, the width of each of gate and up)."""
    num_heads: int = Field(ge=1, le=MAX_HEADS)
    """Query heads."""
    num_kv_heads: int = Field(ge=1, le=MAX_HEADS)
    """Key/value heads (== num_heads: MHA; 1: MQA; otherwise GQA). Must divide num_heads."""
    head_dim: int = Field(ge=1, le=MAX_HIDDEN)
    """Width of one head; defaults to hidden_size // num_heads (which must then divide)."""
    vocab_size: int = Field(ge=1, le=MAX_VOCAB)
    """Rows of the embedding and of the LM head."""
    max_position_embeddings: int = Field(ge=1, le=MAX_SEQ_LEN)
    """Longest position the model was built for (rows of a learned position table)."""
    tie_word_embeddings: bool = False
    """The LM head reuses the embedding matrix."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """Norm kind: RMSNorm has a weight (h params), LayerNorm weight and bias (2h)."""
    norm_eps: float = Field(default=1e-5, gt=0)
    """Norm epsilon (numerics only)."""
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    """swiglu: down(silu(gate(x)) * up(x)), three h x f matrices; gelu: two h x f matrices."""
    gelu_composite: bool = False
    """The GeLU is HF's Python-level tanh formula (``gelu_new``: NewGELUActivation), one aten op
    per term, each allocating (and several saving) a full [tokens, f] tensor; False: one fused
    ``aten.gelu`` kernel (``gelu``, ``gelu_pytorch_tanh``)."""
    dropout_frac: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout probability on embeddings and on each residual branch while training (HF GPT-2's
    embd_pdrop / resid_pdrop); a dropout saves a bool mask and allocates its output."""
    attention_dropout_frac: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on attention probabilities (inside the fused attention kernel: no stored mask)."""
    position: Literal["rope", "learned", "none"] = "rope"
    """Position encoding: rotary, a learned absolute table (max_position x h params), or none."""
    qkv_bias: bool = False
    """q, k, v projections carry biases."""
    o_bias: bool = False
    """The attention output projection carries a bias."""
    mlp_bias: bool = False
    """MLP projections carry biases."""
    qk_norm: bool = False
    """RMSNorm over head_dim on q and on k before rotary (Qwen3)."""
    sliding_window: int | None = Field(default=None, ge=1, le=MAX_SEQ_LEN)
    """Tokens a query attends back to, on every layer; None: full causal attention."""
    has_embedding: bool = True
    """A token embedding (and learned position table) feeds layer 0."""
    has_lm_head: bool = True
    """The final norm and the vocabulary projection follow the last layer."""
    qkv_fused: bool = False
    """q, k, v come from one Linear (one output tensor of q_size + 2 kv_size columns)."""
    gate_up_fused: bool = False
    """gate and up come from one Linear of 2f columns (SwiGLU only)."""
    source: str | None = None
    """Provenance of the numbers: HF repo id, paper, or file."""

    @model_validator(mode="before")
    @classmethod
    def _default_head_dim(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("head_dim") is None:
            hidden, heads = data.get("hidden_size"), data.get("num_heads")
            if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
                if hidden % heads:
                    raise ValueError(
                        f"num_heads {heads} does not divide hidden_size {hidden}"
                        " (give head_dim explicitly)"
                    )
                data = {**data, "head_dim": hidden // heads}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads {self.num_kv_heads} does not divide num_heads {self.num_heads}"
            )
        if self.gate_up_fused and self.mlp != "swiglu":
            raise ValueError("gate_up_fused needs mlp 'swiglu' (a GeLU MLP has no gate)")
        return self

    # ---- derived sizes (elements, not bytes) ------------------------------------------------

    @property
    def q_size(self) -> int:
        """Columns of the query projection: num_heads * head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Columns of the key (and of the value) projection: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    def norm_params(self, dim: int) -> int:
        """Parameters of one norm over ``dim`` features."""
        return dim * (2 if self.norm == "layernorm" else 1)

    def attention_params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.q_size, self.kv_size
        n = h * (q + 2 * kv) + q * h
        n += (q + 2 * kv) if self.qkv_bias else 0
        n += h if self.o_bias else 0
        n += 2 * self.norm_params(self.head_dim) if self.qk_norm else 0
        return n

    def mlp_params_per_layer(self) -> int:
        h, f = self.hidden_size, self.intermediate_size
        if self.mlp == "swiglu":
            return 3 * h * f + ((2 * f + h) if self.mlp_bias else 0)
        return 2 * h * f + ((f + h) if self.mlp_bias else 0)

    def num_params_per_layer(self) -> int:
        """Parameters of one decoder layer: two norms, attention, MLP."""
        return (
            2 * self.norm_params(self.hidden_size)
            + self.attention_params_per_layer()
            + self.mlp_params_per_layer()
        )

    def embedding_params(self) -> int:
        """Token embedding plus a learned position table; 0 without an embedding."""
        if not self.has_embedding:
            return 0
        n = self.vocab_size * self.hidden_size
        if self.position == "learned":
            n += self.max_position_embeddings * self.hidden_size
        return n

    def final_norm_params(self) -> int:
        """The norm before the LM head; part of the head (0 without one)."""
        return self.norm_params(self.hidden_size) if self.has_lm_head else 0

    def lm_head_params(self) -> int:
        """Vocabulary projection; 0 without a head or when tied to a present embedding."""
        if not self.has_lm_head or (self.tie_word_embeddings and self.has_embedding):
            return 0
        return self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """All parameters, counting a tied matrix once."""
        return (
            self.embedding_params()
            + self.num_layers * self.num_params_per_layer()
            + self.final_norm_params()
            + self.lm_head_params()
        )

    def with_layers(self, n: int) -> ModelSpec:
        """A copy with ``num_layers = n`` (validated)."""
        return ModelSpec.model_validate({**self.model_dump(), "num_layers": n})

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def from_hf_config(
        cls, cfg: dict | str | pathlib.Path, *, name: str | None = None
    ) -> ModelSpec:
        """Read a Hugging Face ``config.json`` (dict or path) or a Megatron-style ``gpt`` config.

        ``name`` defaults to ``_name_or_path`` in the config, then the file's parent folder (HF
        checkouts keep ``config.json`` in a folder named after the model) or stem.
        Raises UserInputError naming the file and the field.
        """
        where = "config"
        default_name = None
        if isinstance(cfg, str | pathlib.Path):
            path = pathlib.Path(cfg)
            where = str(path)
            cfg = read_user_json(path)
            default_name = path.parent.name if path.stem == "config" else path.stem
        if not isinstance(cfg, dict):
            raise UserInputError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
        reader = _Reader(cfg, where)
        _refuse_unmodelled(cfg, where)
        model_type = cfg.get("model_type")
        parser = _PARSERS.get(model_type) if isinstance(model_type, str) else None
        if parser is None:
            raise UserInputError(
                f"unknown family {model_type!r} in {where} field model_type"
                f" (supported: {', '.join(SUPPORTED_FAMILIES)})"
            )
        fields = parser(reader)
        fields.update(_overrides(cfg, where))
        fields["name"] = name or cfg.get("_name_or_path") or default_name or model_type
        fields["source"] = cfg.get("_source", fields.get("source"))
        return _build(fields, where)

    def to_hf_config(self) -> dict:
        """A config dict in this family's own keys; ``from_hf_config`` of it gives ``self`` back.

        For HF families ``transformers.AutoConfig.for_model(**cfg)`` builds the same shape.
        Fields the family's keys cannot express go in a ``"tierplan"`` block, which
        transformers keeps as an unused attribute (the real model then differs there).
        """
        cfg = _WRITERS[self.family](self)
        cfg["_name_or_path"] = self.name
        if self.source is not None:
            cfg["_source"] = self.source
        plain = ModelSpec.from_hf_config(cfg)
        extra = {
            k: v
            for k, v in self.model_dump().items()
            if k not in ("name", "source") and getattr(plain, k) != v
        }
        if extra:
            cfg[OVERRIDE_KEY] = extra
        return cfg

    @classmethod
    def from_module(cls, module: Any, *, name: str | None = None) -> ModelSpec:
        """ModelSpec of a ``transformers.PreTrainedModel`` (read from its ``.config``).

        The config describes the causal-LM shape; a base model without a head is described as
        the full model. Any other module raises UserInputError: trace it instead.
        """
        config = getattr(module, "config", None)
        to_dict = getattr(config, "to_dict", None)
        if not callable(to_dict):
            raise UserInputError(
                f"module {type(module).__name__}: has no Hugging Face .config; use the traced "
                "workload (simulator.trace) for arbitrary torch modules"
            )
        cfg = dict(to_dict())
        default = cfg.get("_name_or_path") or type(module).__name__
        return cls.from_hf_config(cfg, name=name or default)


# ---- config readers and writers per family ----------------------------------------------------


class _Reader:
    """Typed access to config keys with one-line errors naming the file and the key."""

    def __init__(self, cfg: dict, where: str):
        self.cfg, self.where = cfg, where

    def _fail(self, key: str, reason: str) -> UserInputError:
        return UserInputError(f"{self.where}: {key}: {reason}")

    @overload
    def get_int(self, key: str, *, minimum: int = 1) -> int: ...
    @overload
    def get_int(self, key: str, default: int, *, minimum: int = 1) -> int: ...
    @overload
    def get_int(self, key: str, default: None, *, minimum: int = 1) -> int | None: ...

    def get_int(self, key: str, default: Any = ..., *, minimum: int = 1) -> int | None:
        value = self.cfg.get(key, default)
        if value is ...:
            raise self._fail(key, "missing")
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"expected an integer, got {echo(value)}")
        if value < minimum:
            raise self._fail(key, f"must be at least {minimum}, got {value}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, f"expected true or false, got {echo(value)}")
        return value

    def get_float(self, key: str, default: float) -> float:
        value = self.cfg.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise self._fail(key, f"expected a positive number, got {echo(value)}")
        return float(value)

    def get_choice(self, key: str, default: str, table: dict[str, str]) -> str:
        value = self.cfg.get(key, default)
        if not isinstance(value, str) or value not in table:
            raise self._fail(key, f"unsupported value {echo(value)} (supported: {', '.join(table)})")
        return table[value]

    def heads(self, hidden_key: str, heads_key: str, head_dim_key: str) -> tuple[int, int]:
        hidden, heads = self.get_int(hidden_key), self.get_int(heads_key)
        head_dim = self.get_int(head_dim_key, None)
        if head_dim is None:
            if hidden % heads:
                raise self._fail(heads_key, f"{heads} heads do not divide {hidden_key} {hidden}")
            head_dim = hidden // heads
        return heads, head_dim

    def kv_heads(self, key: str, num_heads: int) -> int:
        kv = self.get_int(key, None) or num_heads
        if num_heads % kv:
            raise self._fail(key, f"{kv} kv heads do not divide {num_heads} attention heads")
        return kv


_SWIGLU_ACTS = {"silu": "swiglu", "swish": "swiglu"}
_GELU_ACTS = {a: "gelu" for a in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")}
_COMPOSITE_GELU_ACTS = ("gelu_new", "gelu_fast")  # transformers activations.py: Python formulas


def _dropout(r: _Reader, key: str) -> float:
    """A dropout probability (GPT-2's resid_pdrop, embd_pdrop, attn_pdrop; default 0.1)."""
    value = r.get_float(key, 0.1)
    if not 0.0 <= value < 1.0:
        raise r._fail(key, f"must be in [0, 1), got {value}")
    return value


def _hf_decoder(r: _Reader, family: str) -> dict:
    """Keys shared by llama, mistral, qwen2, qwen3 (LlamaConfig and its descendants)."""
    heads, head_dim = r.heads("hidden_size", "num_attention_heads", "head_dim")
    return {
        "family": family,
        "num_layers": r.get_int("num_hidden_layers"),
        "hidden_size": r.get_int("hidden_size"),
        "intermediate_size": r.get_int("intermediate_size"),
        "num_heads": heads,
        "num_kv_heads": r.kv_heads("num_key_value_heads", heads),
        "head_dim": head_dim,
        "vocab_size": r.get_int("vocab_size"),
        "max_position_embeddings": r.get_int("max_position_embeddings"),
        "tie_word_embeddings": r.get_bool("tie_word_embeddings", False),
        "norm": "rmsnorm",
        "norm_eps": r.get_float("rms_norm_eps", 1e-6),
        "mlp": r.get_choice("hidden_act", "silu", _SWIGLU_ACTS),
        "position": "rope",
    }


def _qwen_window(r: _Reader, num_layers: int) -> int | None:
    """Qwen2/Qwen3: with use_sliding_window, layers >= max_window_layers use the window."""
    if not r.get_bool("use_sliding_window", False):
        return None
    window = r.get_int("sliding_window", None)
    if window is None:
        return None
    first_sliding = r.get_int("max_window_layers", 28, minimum=0)  # transformers' default
    if first_sliding >= num_layers:
        return None
    if first_sliding > 0:
        raise r._fail(
            "max_window_layers",
            f"{first_sliding} of {num_layers} layers use full attention and the rest a sliding"
            " window; mixed layers are not supported",
        )
    return window


def _check_uniform_layer_types(r: _Reader) -> None:
    types = r.cfg.get("layer_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise r._fail("layer_types", f"expected a list of strings, got {echo(types)}")
    kinds = set(types)
    if len(kinds) > 1:
        raise r._fail("layer_types", f"mixed attention kinds {sorted(kinds)} are not supported")


def _parse_llama(r: _Reader) -> dict:
    out = _hf_decoder(r, "llama")
    bias = r.get_bool("attention_bias", False)
    out.update(qkv_bias=bias, o_bias=bias, mlp_bias=r.get_bool("mlp_bias", False))
    return out


def _parse_mistral(r: _Reader) -> dict:
    out = _hf_decoder(r, "mistral")
    out["sliding_window"] = r.get_int("sliding_window", None)
    return out


def _parse_qwen2(r: _Reader) -> dict:
    out = _hf_decoder(r, "qwen2")
    _check_uniform_layer_types(r)
    # Qwen2Attention: q/k/v always carry a bias, o_proj never; the MLP has none.
    out.update(qkv_bias=True, sliding_window=_qwen_window(r, out["num_layers"]))
    return out


def _parse_qwen3(r: _Reader) -> dict:
    out = _hf_decoder(r, "qwen3")
    _check_uniform_layer_types(r)
    bias = r.get_bool("attention_bias", False)
    out.update(
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=True,
        sliding_window=_qwen_window(r, out["num_layers"]),
    )
    return out


def _parse_gpt2(r: _Reader) -> dict:
    hidden = r.get_int("n_embd")
    heads, head_dim = r.heads("n_embd", "n_head", "head_dim")
    return {
        "family": "gpt2",
        "num_layers": r.get_int("n_layer"),
        "hidden_size": hidden,
        "intermediate_size": r.get_int("n_inner", None) or 4 * hidden,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": head_dim,
        "vocab_size": r.get_int("vocab_size"),
        "max_position_embeddings": r.get_int("n_positions"),
        "tie_word_embeddings": r.get_bool("tie_word_embeddings", True),
        "norm": "layernorm",
        "norm_eps": r.get_float("layer_norm_epsilon", 1e-5),
        "mlp": r.get_choice("activation_function", "gelu_new", _GELU_ACTS),
        "gelu_composite": r.cfg.get("activation_function", "gelu_new") in _COMPOSITE_GELU_ACTS,
        "dropout_frac": _dropout(r, "resid_pdrop"),
        "attention_dropout_frac": _dropout(r, "attn_pdrop"),
        "position": "learned",
        "qkv_bias": True,
        "o_bias": True,
        "mlp_bias": True,
        "qkv_fused": True,  # Conv1D c_attn produces q, k, v in one tensor
    }


_MEGATRON_POSITIONS = {"learned_absolute": "learned", "rope": "rope", "none": "none"}
_MEGATRON_NORMS = {"LayerNorm": "layernorm", "RMSNorm": "rmsnorm"}


def _parse_gpt(r: _Reader) -> dict:
    heads, head_dim = r.heads("hidden_size", "num_attention_heads", "kv_channels")
    bias = r.get_bool("add_bias_linear", True)
    swiglu = r.get_bool("swiglu", False)
    hidden = r.get_int("hidden_size")
    return {
        "family": "gpt",
        "num_layers": r.get_int("num_layers"),
        "hidden_size": hidden,
        "intermediate_size": r.get_int("ffn_hidden_size", None) or 4 * hidden,
        "num_heads": heads,
        "num_kv_heads": r.kv_heads("num_query_groups", heads),
        "head_dim": head_dim,
        "vocab_size": r.get_int("padded_vocab_size"),
        "max_position_embeddings": r.get_int("max_position_embeddings"),
        "tie_word_embeddings": not r.get_bool("untie_embeddings_and_output_weights", False),
        "norm": r.get_choice("normalization", "LayerNorm", _MEGATRON_NORMS),
        "norm_eps": r.get_float("norm_epsilon", 1e-5),
        "mlp": "swiglu" if swiglu else "gelu",
        "position": r.get_choice(
            "position_embedding_type", "learned_absolute", _MEGATRON_POSITIONS
        ),
        "qkv_bias": bias or r.get_bool("add_qkv_bias", False),
        "o_bias": bias,
        "mlp_bias": bias,
        "qk_norm": r.get_bool("qk_layernorm", False),
        "sliding_window": r.get_int("window_size", None),
        "qkv_fused": True,  # Megatron's linear_qkv
        "gate_up_fused": swiglu,  # Megatron's linear_fc1 holds gate and up
    }


UNMODELLED_KEYS: tuple[str, ...] = (
    "num_local_experts",  # Mixtral
    "num_experts",  # Qwen2-MoE, Qwen3-MoE, OLMoE
    "num_experts_per_tok",
    "n_routed_experts",  # DeepSeek-V2/V3
    "n_shared_experts",
    "shared_expert_intermediate_size",
    "first_k_dense_replace",
    "decoder_sparse_step",
    "kv_lora_rank",  # DeepSeek's multi-head latent attention
    "q_lora_rank",
)
"""Config keys that change a step's bytes or FLOPs in ways no ModelSpec field holds (mixtures of
experts, latent attention); with a value set (not null, 0 or false) the config is refused
rather than read as the dense model it is not. So are keys starting with ``moe_``."""


def _refuse_unmodelled(cfg: dict, where: str) -> None:
    for key, value in cfg.items():
        if (key in UNMODELLED_KEYS or key.startswith("moe_")) and value not in (None, 0, False, "", [], {}):
            raise UserInputError(
                f"{where}: {key}: {echo(value)} is not modelled (mixture-of-experts or latent "
                f"attention); tierplan reads {cfg.get('model_type')!r} configs as dense models "
                "and would drop it")


_PARSERS = {
    "llama": _parse_llama,
    "mistral": _parse_mistral,
    "qwen2": _parse_qwen2,
    "qwen3": _parse_qwen3,
    "gpt2": _parse_gpt2,
    "gpt": _parse_gpt,
}


def _hf_decoder_keys(m: ModelSpec) -> dict:
    return {
        "model_type": m.family,
        "num_hidden_layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "head_dim": m.head_dim,
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "tie_word_embeddings": m.tie_word_embeddings,
        "rms_norm_eps": m.norm_eps,
        "hidden_act": "silu",
    }


def _write_llama(m: ModelSpec) -> dict:
    return {**_hf_decoder_keys(m), "attention_bias": m.qkv_bias, "mlp_bias": m.mlp_bias}


def _write_mistral(m: ModelSpec) -> dict:
    return {**_hf_decoder_keys(m), "sliding_window": m.sliding_window}


def _qwen_window_keys(m: ModelSpec) -> dict:
    if m.sliding_window is None:
        return {"use_sliding_window": False, "sliding_window": None}
    return {"use_sliding_window": True, "sliding_window": m.sliding_window, "max_window_layers": 0}


def _write_qwen2(m: ModelSpec) -> dict:
    return {**_hf_decoder_keys(m), **_qwen_window_keys(m)}


def _write_qwen3(m: ModelSpec) -> dict:
    return {**_hf_decoder_keys(m), **_qwen_window_keys(m), "attention_bias": m.qkv_bias}


def _write_gpt2(m: ModelSpec) -> dict:
    return {
        "model_type": "gpt2",
        "n_layer": m.num_layers,
        "n_embd": m.hidden_size,
        "n_inner": m.intermediate_size,
        "n_head": m.num_heads,
        "vocab_size": m.vocab_size,
        "n_positions": m.max_position_embeddings,
        "tie_word_embeddings": m.tie_word_embeddings,
        "layer_norm_epsilon": m.norm_eps,
        "activation_function": "gelu_new" if m.gelu_composite else "gelu_pytorch_tanh",
        "resid_pdrop": m.dropout_frac,
        "embd_pdrop": m.dropout_frac,
        "attn_pdrop": m.attention_dropout_frac,
    }


def _write_gpt(m: ModelSpec) -> dict:
    positions = {v: k for k, v in _MEGATRON_POSITIONS.items()}
    norms = {v: k for k, v in _MEGATRON_NORMS.items()}
    return {
        "model_type": "gpt",
        "num_layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "ffn_hidden_size": m.intermediate_size,
        "num_attention_heads": m.num_heads,
        "num_query_groups": m.num_kv_heads,
        "kv_channels": m.head_dim,
        "padded_vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "position_embedding_type": positions[m.position],
        "normalization": norms[m.norm],
        "norm_epsilon": m.norm_eps,
        "swiglu": m.mlp == "swiglu",
        "add_bias_linear": m.o_bias,
        "add_qkv_bias": m.qkv_bias,
        "qk_layernorm": m.qk_norm,
        "untie_embeddings_and_output_weights": not m.tie_word_embeddings,
        "window_size": m.sliding_window,
    }


_WRITERS = {
    "llama": _write_llama,
    "mistral": _write_mistral,
    "qwen2": _write_qwen2,
    "qwen3": _write_qwen3,
    "gpt2": _write_gpt2,
    "gpt": _write_gpt,
}

_OVERRIDABLE = frozenset(ModelSpec.model_fields) - {"name", "family", "source"}


def _overrides(cfg: dict, where: str) -> dict:
    block = cfg.get(OVERRIDE_KEY)
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise UserInputError(f"{where}: {OVERRIDE_KEY}: expected an object of ModelSpec fields")
    unknown = sorted(set(block) - _OVERRIDABLE)
    if unknown:
        raise UserInputError(
            f"{where}: {OVERRIDE_KEY}.{unknown[0]}: unknown field"
            f" (allowed: {', '.join(sorted(_OVERRIDABLE))})"
        )
    return dict(block)


def _build(fields: dict, where: str) -> ModelSpec:
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as err:
        raise UserInputError(validation_error_line(err, where, whole="model")) from None


# ---- presets ----------------------------------------------------------------------------------


def list_models() -> list[str]:
    """Names of the model presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def get_model(name: str) -> ModelSpec:
    """A preset by name, case-insensitive (``"Llama-3.1-8B"``)."""
    key = name.strip().lower()
    for preset in list_models():
        if preset.lower() == key:
            return ModelSpec.from_hf_config(PRESET_DIR / f"{preset}.json", name=preset)
    raise UserInputError(f"model: unknown preset {echo(name)} (presets: {', '.join(list_models())})")


# A hub repository id: "org/name" (the hub's own rule: letters, digits, "-", "_", ".")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def load_model(name_or_path: str | pathlib.Path) -> ModelSpec:
    """A ``config.json`` path (anything ending in .json), a preset name, or a Hugging Face hub
    id (``org/name`` that is neither a preset nor an existing path; see ``hub_config_path``)."""
    text = str(name_or_path)
    if text.lower().endswith(".json"):
        return ModelSpec.from_hf_config(text)
    if _HUB_ID.fullmatch(text) and text.lower() not in {m.lower() for m in list_models()} \
            and not pathlib.Path(text).exists():
        return ModelSpec.from_hf_config(hub_config_path(text), name=text)
    return get_model(text)


def hub_config_path(repo_id: str) -> pathlib.Path:
    """The local path of ``config.json`` of the hub model ``repo_id`` (only that file is
    fetched): from the Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME``) when it is there or
    the hub is offline (``HF_HUB_OFFLINE=1``), else downloaded into it. Every failure is one
    UserInputError line saying what to do."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ModuleNotFoundError:
        raise UserInputError(f"model: {echo(repo_id)} is a Hugging Face hub id, which needs "
                             "huggingface_hub: pip install huggingface_hub") from None
    where = f"model: {echo(repo_id)}"
    try:
        return pathlib.Path(hf_hub_download(repo_id, "config.json"))
    except LocalEntryNotFoundError:
        offline = "offline, " if constants.HF_HUB_OFFLINE else ""
        raise UserInputError(
            f"{where} is not in the Hugging Face cache ({offline}{constants.HF_HUB_CACHE}): "
            f"run `hf download {repo_id} config.json` where the hub is reachable, point "
            "HF_HUB_CACHE at a cache that has it, or pass the path of its config.json"
        ) from None
    except RepositoryNotFoundError:
        raise UserInputError(f"{where}: no such model on the Hugging Face hub, or it is gated "
                             "(`hf auth login` with an account that has access)") from None
    except EntryNotFoundError:
        raise UserInputError(f"{where}: the hub repository has no config.json") from None
    except HFValidationError as err:
        raise UserInputError(f"{where}: not a valid hub id ({str(err).splitlines()[0]})") from None
    except (HfHubHTTPError, OSError) as err:
        raise UserInputError(f"{where}: cannot read its config.json from the Hugging Face hub: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
