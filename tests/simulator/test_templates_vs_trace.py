"""The analytical templates and a real Hugging Face model traced on the meta device agree.

The traced workload (simulator.trace: every aten op, storage lifetimes, saved-tensor hooks,
FlopCounterMode's FLOP registry) is the reference; the templates must reproduce its saved bytes
per layer and its FLOPs exactly, and its peak up to the cuBLAS workspaces the estimator adds as a
constant.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from simulator.estimator import RUNTIME_WORKSPACE_BYTES  # noqa: E402
from simulator.job import TrainJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.templates import training_workload  # noqa: E402
from simulator.trace import trace_training_step  # noqa: E402
from simulator.workload import Phase, flops_by_phase, walk_memory  # noqa: E402

SEQ_LEN = 2048


def _saved_activation_bytes(workload):
    """Bytes of distinct non-persistent storages saved in the forward, per layer."""
    index = {t.tid: t for t in workload.tensors}
    seen, out = set(), {}
    for op in workload.ops:
        if op.phase != Phase.FWD:
            continue
        for tid in op.saves:
            t = index[tid]
            if tid in seen or t.persistent:
                continue
            seen.add(tid)
            out[op.layer] = out.get(op.layer, 0) + t.num_bytes
    return out


def _traced(model_spec, checkpointing="none"):
    cfg = transformers.AutoConfig.for_model(**model_spec.to_hf_config())
    with torch.device("meta"):
        module = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")

    def inputs():
        ids = torch.zeros(1, SEQ_LEN, dtype=torch.long)
        return {"input_ids": ids, "labels": ids}

    return trace_training_step(module, inputs, checkpointing=checkpointing)


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3.2-1b", "mistral-7b", "qwen2-7b"])
@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_templates_equal_trace(name, checkpointing):
    spec = get_model(name).with_layers(2)
    traced = _traced(spec, checkpointing)
    analytic = training_workload(spec, TrainJob(seq_len=SEQ_LEN, optimizer="none", checkpointing=checkpointing))
    assert _saved_activation_bytes(analytic) == _saved_activation_bytes(traced)
    assert flops_by_phase(analytic) == pytest.approx(flops_by_phase(traced), rel=1e-12)
    traced_peak = walk_memory(traced).peak_bytes
    analytic_peak = walk_memory(analytic).peak_bytes + RUNTIME_WORKSPACE_BYTES
    assert analytic_peak == pytest.approx(traced_peak, rel=1e-4)
