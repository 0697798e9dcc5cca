"""The reference decoder: parameter counts equal ModelSpec's, deterministic from a seed, and the
Llama variant computes what transformers' LlamaForCausalLM computes."""

import pytest
import torch

from hwmodels.units import UserInputError
from simulator.model import ModelSpec, get_model
from validate.model import build_model, make_batch
from validate.run_plan import SMOKE_SHAPE


def tiny(preset: str, **over) -> ModelSpec:
    s = get_model(preset)
    kv = 2 if s.num_kv_heads != s.num_heads else 4
    return ModelSpec.model_validate(
        {**s.model_dump(), **SMOKE_SHAPE, "num_layers": 2, "num_kv_heads": kv, **over}
    )


@pytest.mark.parametrize(
    "preset", ["llama-3.2-1b", "probe-llama7b-stack", "qwen2-7b", "qwen3-8b", "mistral-7b",
               "qwen2-7b-stack", "mistral-7b-stack", "llama-3-8b-stack"]
)
def test_parameter_count_equals_spec(preset):
    over = {"sliding_window": None} if preset == "mistral-7b" else {}
    spec = tiny(preset, **over)
    model = build_model(spec, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    assert len(model.layers) == 2


def test_seed_decides_the_weights():
    spec = tiny("llama-3.2-1b")
    a, b, c = (build_model(spec, dtype=torch.float32, seed=s) for s in (7, 7, 8))
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_llama_matches_transformers():
    transformers = pytest.importorskip("transformers")
    spec = tiny("llama-3.2-1b")
    ours = build_model(spec, dtype=torch.float32, seed=1)
    cfg = transformers.LlamaConfig(
        **{k: v for k, v in spec.to_hf_config().items() if not k.startswith("_")}
    )
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    cfg.rms_norm_eps = spec.norm_eps
    cfg.tie_word_embeddings = spec.tie_word_embeddings
    cfg._attn_implementation = "sdpa"
    hf = transformers.LlamaForCausalLM(cfg).eval()

    def hf_name(k: str) -> str:
        for proj, block in (
            ("q_proj", "self_attn"),
            ("k_proj", "self_attn"),
            ("v_proj", "self_attn"),
            ("o_proj", "self_attn"),
            ("gate_proj", "mlp"),
            ("up_proj", "mlp"),
            ("down_proj", "mlp"),
        ):
            k = k.replace(f".{proj}.", f".{block}.{proj}.")
        return k if k.startswith("lm_head") else "model." + k

    missing = hf.load_state_dict(
        {hf_name(k): v for k, v in ours.state_dict().items()}, strict=False
    )
    assert not [k for k in missing.missing_keys if "rotary" not in k and k != "lm_head.weight"]
    ids = make_batch(spec, seq_len=12)
    ref = hf(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(ours(ids), ref, rtol=1e-5, atol=1e-5)


def test_gpt_family_is_refused():
    with pytest.raises(UserInputError, match="^model.family: 'gpt2'"):
        build_model(get_model("gpt2").with_layers(1), dtype=torch.float32)
