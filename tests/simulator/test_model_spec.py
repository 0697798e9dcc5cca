"""ModelSpec: hand-checked parameter counts, presets vs real transformers models, errors."""

import json
import pathlib

import pytest

from hwmodels.units import UserInputError
from simulator.model import (
    HF_FAMILIES,
    ModelSpec,
    get_model,
    list_models,
    load_model,
)

PRESETS = [
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.2-1b",
    "mistral-7b",
    "qwen2-7b",
    "qwen3-8b",
    "gpt2",
    "gpt2-medium",
    "memo-7b",
    "memo-13b",
    "memo-30b",
    "memo-65b",
    "probe-llama7b-stack",
    "qwen2-7b-stack",
    "mistral-7b-stack",
    "llama-3-8b-stack",
]


def test_every_named_preset_is_listed():
    assert sorted(PRESETS) == list_models()


# Published parameter counts (model cards / HF safetensors metadata), and the sums by hand.
@pytest.mark.parametrize(
    "name,expected",
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-3.2-1b", 1_235_814_400),
        ("mistral-7b", 7_241_732_096),
        ("qwen2-7b", 7_615_616_512),
        ("llama-3.1-70b", 70_553_706_496),
        ("gpt2", 124_439_808),
    ],
)
def test_num_params_published(name, expected):
    assert get_model(name).num_params() == expected


def test_llama_2_7b_by_hand():
    m = get_model("llama-2-7b")
    h, f, v, n = 4096, 11008, 32000, 32
    per_layer = 4 * h * h + 3 * h * f + 2 * h  # q k v o, gate up down, two RMSNorm weights
    assert m.num_params_per_layer() == per_layer
    assert m.embedding_params() == v * h
    assert m.lm_head_params() == v * h  # untied
    assert m.num_params() == v * h + n * per_layer + h + v * h
    assert (m.q_size, m.kv_size, m.head_dim) == (4096, 4096, 128)


def test_llama_3_2_1b_gqa_tied_by_hand():
    m = get_model("llama-3.2-1b")
    h, f, kv = 2048, 8192, 8 * 64
    assert (m.q_size, m.kv_size) == (2048, kv)
    assert m.num_params_per_layer() == 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    assert m.lm_head_params() == 0  # tied to the embedding
    assert m.embedding_params() == 128256 * h


def test_qwen2_biases_and_qwen3_qk_norm_by_hand():
    q2 = get_model("qwen2-7b")
    h, kv = 3584, 4 * 128
    assert (q2.qkv_bias, q2.o_bias, q2.mlp_bias) == (True, False, False)
    assert q2.attention_params_per_layer() == 2 * h * h + 2 * h * kv + (h + 2 * kv)
    q3 = get_model("qwen3-8b")
    h, kv = 4096, 8 * 128
    assert q3.qk_norm and not q3.qkv_bias
    assert q3.attention_params_per_layer() == 2 * h * h + 2 * h * kv + 2 * 128


def test_gpt2_by_hand():
    m = get_model("gpt2")
    h, v, p = 768, 50257, 1024
    per_layer = (
        2 * 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    )
    assert m.num_params_per_layer() == per_layer
    assert m.embedding_params() == v * h + p * h  # learned position table
    assert m.final_norm_params() == 2 * h
    assert m.lm_head_params() == 0
    assert m.qkv_fused and m.norm == "layernorm" and m.mlp == "gelu"


def test_memo_gpt_configs():
    shapes = {"memo-7b": (4096, 32, 32), "memo-13b": (5120, 40, 40)}
    shapes |= {"memo-30b": (6656, 60, 52), "memo-65b": (8192, 80, 64)}
    for name, (h, n, heads) in shapes.items():
        m = get_model(name)
        assert (m.hidden_size, m.num_layers, m.num_heads) == (h, n, heads)
        assert m.family == "gpt" and m.intermediate_size == 4 * h and m.vocab_size == 51200
        assert m.mlp == "gelu" and m.norm == "layernorm" and m.qkv_fused
        # 12 h^2 + 13 h per layer (Megatron GPT with biases), tied embedding, rotary
        assert m.num_params_per_layer() == 12 * h * h + 13 * h
        assert m.num_params() == 51200 * h + n * (12 * h * h + 13 * h) + 2 * h
        assert "MEMO" in m.source


def test_mistral_sliding_window_and_qwen_without():
    assert get_model("mistral-7b").sliding_window == 4096
    # Qwen2-7B's config carries sliding_window 131072 but use_sliding_window false
    assert get_model("qwen2-7b").sliding_window is None
    assert get_model("qwen3-8b").sliding_window is None


def _hf_model_on_meta(spec: ModelSpec):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**spec.to_hf_config())
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg)


HF_PRESETS = [
    n for n in PRESETS if get_model(n).family in HF_FAMILIES and get_model(n).has_lm_head
]  # the bare stacks (probe-llama7b-stack, the bench's *-stack) have no transformers twin


@pytest.mark.parametrize("name", HF_PRESETS)
def test_num_params_matches_real_transformers_model(name):
    spec = get_model(name)
    model = _hf_model_on_meta(spec)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    assert ModelSpec.from_module(model, name=name) == spec


@pytest.mark.parametrize("name", HF_PRESETS)
def test_hf_transformers_config_matches_layer_by_layer(name):
    """Per-layer count and sliding window as the real modules see them."""
    spec = get_model(name)
    model = _hf_model_on_meta(spec)
    layer = model.base_model.h[0] if spec.family == "gpt2" else model.base_model.layers[0]
    assert sum(p.numel() for p in layer.parameters()) == spec.num_params_per_layer()
    if spec.family != "gpt2":
        assert getattr(model.config, "sliding_window", None) == spec.sliding_window


def test_probe_stack_matches_the_probe_layer_module():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    # Same module as /work/shared/reference/hwprobe.py `Layer` (the measured probe).
    class Layer(nn.Module):
        def __init__(self, h=4096, f=11008, nh=32):
            super().__init__()
            self.nh = nh
            self.n1 = nn.RMSNorm(h)
            self.n2 = nn.RMSNorm(h)
            self.qkv = nn.Linear(h, 3 * h, bias=False)
            self.o = nn.Linear(h, h, bias=False)
            self.gu = nn.Linear(h, 2 * f, bias=False)
            self.d = nn.Linear(f, h, bias=False)

        def forward(self, x):  # pragma: no cover - shapes only
            return F.silu(x)

    spec = get_model("probe-llama7b-stack")
    with torch.device("meta"):
        layers = nn.ModuleList([Layer() for _ in range(4)])
    assert spec.num_layers == 4
    assert sum(p.numel() for p in layers.parameters()) == spec.num_params()
    assert spec.num_params() == 4 * spec.num_params_per_layer()
    assert spec.qkv_fused and spec.gate_up_fused and spec.position == "none"
    assert not spec.has_embedding and not spec.has_lm_head
    assert spec.embedding_params() == spec.lm_head_params() == spec.final_norm_params() == 0


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip(name):
    spec = get_model(name)
    assert ModelSpec.from_hf_config(spec.to_hf_config()) == spec


def test_round_trip_non_default_fields():
    base = get_model("qwen2-7b")
    odd = base.model_copy(update={"sliding_window": 4096, "mlp_bias": True, "name": "odd"})
    odd = ModelSpec.model_validate(odd.model_dump())
    cfg = odd.to_hf_config()
    assert cfg["use_sliding_window"] is True and cfg["tierplan"] == {"mlp_bias": True}
    assert ModelSpec.from_hf_config(cfg) == odd


def test_lookup_case_insensitive_and_load_model(tmp_path):
    assert get_model("Llama-3.1-8B") == get_model("llama-3.1-8b")
    assert get_model("LLAMA-3.1-8B").name == "llama-3.1-8b"
    assert get_model("llama-3.1-8b").source.startswith("huggingface.co/meta-llama/")
    folder = tmp_path / "my-model"
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(get_model("mistral-7b").to_hf_config() | {"_name_or_path": None}))
    m = load_model(str(path))
    assert m.name == "my-model" and m.sliding_window == 4096
    assert load_model("gpt2").num_params() == 124_439_808


def test_with_layers():
    m = get_model("llama-2-7b").with_layers(2)
    assert m.num_layers == 2 and m.hidden_size == 4096
    assert m.num_params() == get_model("llama-2-7b").num_params() - 30 * m.num_params_per_layer()
    with pytest.raises(ValueError):
        m.with_layers(0)


def test_from_module_rejects_plain_torch_module():
    torch = pytest.importorskip("torch")
    with pytest.raises(UserInputError, match="Linear.*traced workload"):
        ModelSpec.from_module(torch.nn.Linear(2, 2))


def test_frozen_and_extra_forbid():
    m = get_model("gpt2")
    with pytest.raises(ValueError):
        m.num_layers = 3
    with pytest.raises(ValueError):
        ModelSpec.model_validate({**m.model_dump(), "colour": "blue"})


# ---- errors: one line, naming the file and the field ------------------------------------------


def _write(tmp_path, cfg, text=None):
    path = tmp_path / "cfg.json"
    path.write_text(text if text is not None else json.dumps(cfg))
    return path


def _llama(**kw):
    cfg = get_model("llama-2-7b").to_hf_config()
    cfg.update(kw)
    return {k: v for k, v in cfg.items() if v is not ...}


@pytest.mark.parametrize(
    "cfg,field,reason",
    [
        (_llama(hidden_size=...), "hidden_size", "missing"),
        (_llama(num_hidden_layers=0), "num_hidden_layers", "at least 1"),
        (_llama(num_hidden_layers=-3), "num_hidden_layers", "at least 1"),
        (_llama(num_attention_heads=30, head_dim=None), "num_attention_heads", "do not divide"),
        (_llama(num_key_value_heads=5), "num_key_value_heads", "do not divide"),
        (_llama(hidden_act="relu"), "hidden_act", "unsupported value 'relu'"),
        (_llama(vocab_size="big"), "vocab_size", "expected an integer"),
        (_llama(tierplan={"colour": 1}), "tierplan.colour", "unknown field"),
        (_llama(tierplan={"gate_up_fused": True, "mlp": "gelu"}), "model", "gate_up_fused"),
        (
            get_model("qwen2-7b").to_hf_config()
            | {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 14},
            "max_window_layers",
            "mixed",
        ),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, cfg, field, reason):
    path = _write(tmp_path, cfg)
    with pytest.raises(UserInputError) as info:
        ModelSpec.from_hf_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {field}: ")
    assert reason in msg


def test_unknown_family_message(tmp_path):
    path = _write(tmp_path, _llama(model_type="foo"))
    with pytest.raises(UserInputError) as info:
        load_model(str(path))
    assert str(info.value) == (
        f"unknown family 'foo' in {path} field model_type"
        " (supported: gpt, gpt2, llama, mistral, qwen2, qwen3)"
    )


def test_malformed_json_and_missing_file(tmp_path):
    path = _write(tmp_path, None, text='{"model_type": "llama",')
    with pytest.raises(UserInputError, match=r"cfg\.json: malformed JSON at line 1"):
        ModelSpec.from_hf_config(path)
    with pytest.raises(UserInputError, match="file not found"):
        ModelSpec.from_hf_config(tmp_path / "nope.json")
    with pytest.raises(UserInputError, match="expected a JSON object"):
        ModelSpec.from_hf_config(_write(tmp_path, [1, 2]))


def test_unknown_preset_lists_presets():
    with pytest.raises(UserInputError, match="unknown preset 'llama-9'.*llama-2-7b"):
        get_model("llama-9")


def test_direct_construction_validates():
    base = get_model("llama-2-7b").model_dump()
    with pytest.raises(ValueError, match="does not divide hidden_size"):
        ModelSpec.model_validate({**base, "num_heads": 30, "head_dim": None})
    with pytest.raises(ValueError, match="does not divide num_heads"):
        ModelSpec.model_validate({**base, "num_kv_heads": 3})
    # an explicit head_dim need not divide hidden (Qwen3-0.6B: h 1024, 16 heads of 128)
    ok = ModelSpec.model_validate({**base, "num_heads": 16, "num_kv_heads": 8, "head_dim": 128})
    assert ok.q_size == 2048


def test_mixed_layer_types_rejected(tmp_path):
    cfg = get_model("qwen3-8b").to_hf_config()
    cfg["layer_types"] = ["full_attention"] * 35 + ["sliding_attention"]
    path = _write(tmp_path, cfg)
    with pytest.raises(UserInputError, match=r"cfg\.json: layer_types: mixed attention kinds"):
        ModelSpec.from_hf_config(path)
    cfg["layer_types"] = ["full_attention"] * 36  # uniform (transformers writes this) is fine
    assert ModelSpec.from_hf_config(cfg).sliding_window is None


def test_qwen2_sliding_window_on_every_layer_matches_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = get_model("qwen2-7b").to_hf_config()
    cfg.update(use_sliding_window=True, sliding_window=4096, max_window_layers=0)
    spec = ModelSpec.from_hf_config(cfg)
    assert spec.sliding_window == 4096
    hf = transformers.AutoConfig.for_model(**spec.to_hf_config())
    assert set(hf.layer_types) == {"sliding_attention"} and hf.sliding_window == 4096
    cfg["max_window_layers"] = 28  # every layer below the first sliding one: full attention
    assert ModelSpec.from_hf_config(cfg).sliding_window is None


def test_megatron_gpt_keys_swiglu_rmsnorm_gqa():
    cfg = {
        "model_type": "gpt",
        "num_layers": 2,
        "hidden_size": 1024,
        "ffn_hidden_size": 2816,
        "num_attention_heads": 16,
        "num_query_groups": 4,
        "padded_vocab_size": 32000,
        "max_position_embeddings": 4096,
        "position_embedding_type": "rope",
        "normalization": "RMSNorm",
        "swiglu": True,
        "add_bias_linear": False,
        "untie_embeddings_and_output_weights": True,
    }
    m = ModelSpec.from_hf_config(cfg, name="tiny")
    assert (m.mlp, m.norm, m.gate_up_fused, m.qkv_fused) == ("swiglu", "rmsnorm", True, True)
    assert (m.num_kv_heads, m.head_dim, m.qkv_bias, m.tie_word_embeddings) == (4, 64, False, False)
    h, f, kv = 1024, 2816, 4 * 64
    assert m.num_params_per_layer() == 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    assert ModelSpec.from_hf_config(m.to_hf_config()) == m
    with pytest.raises(UserInputError, match="position_embedding_type: unsupported value 'alibi'"):
        ModelSpec.from_hf_config({**cfg, "position_embedding_type": "alibi"})


def test_bare_stack_keeps_head_when_only_embedding_is_missing():
    """A last pipeline stage: no embedding, so a tied head owns its own matrix."""
    m = get_model("llama-3.2-1b").model_copy(update={"has_embedding": False})
    assert m.embedding_params() == 0
    assert m.lm_head_params() == 128256 * 2048
    assert m.final_norm_params() == 2048


MEASURED = pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"


def test_num_params_match_models_measured_on_h200():
    """Every step record holds the exact config it ran and the parameter count torch reported."""
    data = json.loads((MEASURED / "steps-h200-2026-11-28.json").read_text())
    checked = {}
    for rec in data["records"]:
        if "config" in rec and "num_params" in rec:
            spec = ModelSpec.from_hf_config(rec["config"], name=rec["case"])
            assert spec.num_params() == rec["num_params"], rec["case"]
            checked[rec["case"]] = rec["num_params"]
    assert len(checked) >= 6  # llama, mistral v0.1/v0.3, qwen2, gpt2 cases


def test_presets_agree_with_independently_recorded_configs():
    models = json.loads((MEASURED / "hf_configs.json").read_text())["models"]
    same = {"llama-3.2-1b": "llama-3.2-1b", "llama-2-7b": "llama-2-7b"}
    same |= {"mistral-7b-v0.1": "mistral-7b", "qwen2-7b": "qwen2-7b", "gpt2-medium": "gpt2-medium"}
    for key, preset in same.items():
        spec = get_model(preset)
        recorded = ModelSpec.from_hf_config(models[key]["config"], name=preset)
        assert recorded == spec.model_copy(update={"source": None}), key


MIXTRAL_AS_MISTRAL = {  # huggingface.co/mistralai/Mixtral-8x7B-v0.1 config.json, model_type edited
    "model_type": "mistral", "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "num_experts_per_tok": 2, "output_router_logits": False, "rms_norm_eps": 1e-05,
    "rope_theta": 1e6, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "vocab_size": 32000,
}


@pytest.mark.parametrize("key,value", [
    ("num_local_experts", 8), ("num_experts", 64), ("n_routed_experts", 256),
    ("moe_intermediate_size", 1408), ("num_experts_per_tok", 2), ("kv_lora_rank", 512),
])
def test_a_config_with_keys_that_change_the_math_is_refused_in_one_line(key, value):
    cfg = {k: v for k, v in MIXTRAL_AS_MISTRAL.items()
           if k not in ("num_local_experts", "num_experts_per_tok")}
    with pytest.raises(UserInputError) as err:
        ModelSpec.from_hf_config({**cfg, key: value})
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "not modelled" in msg


def test_mixtral_written_as_mistral_does_not_lose_its_experts():
    with pytest.raises(UserInputError, match="num_local_experts"):
        ModelSpec.from_hf_config(MIXTRAL_AS_MISTRAL)
    # the same keys set to nothing (a dense model's config written by a generic tool) are fine
    dense = {**MIXTRAL_AS_MISTRAL, "num_local_experts": None, "num_experts_per_tok": 0}
    assert ModelSpec.from_hf_config(dense).num_layers == 32


@pytest.mark.parametrize("name,per_layer", [
    # q (h x h + h bias), k and v (h x 512 + 512 bias each), o (h x h), gate/up/down (3 h f),
    # two RMSNorm weights; no embedding, no final norm, no head
    ("qwen2-7b-stack", 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3584 * 3584
     + 3 * 3584 * 18944 + 2 * 3584),
    ("mistral-7b-stack", 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096),
    ("llama-3-8b-stack", 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096),
])
def test_bench_stacks_count_eight_bare_layers_by_hand(name, per_layer):
    spec = get_model(name)
    assert spec.num_layers == 8 and not spec.has_embedding and not spec.has_lm_head
    assert spec.num_params() == 8 * per_layer
    assert spec.sliding_window is None and spec.position == "rope"
