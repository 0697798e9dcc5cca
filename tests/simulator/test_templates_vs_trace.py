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


def _traced(model_spec, checkpointing="none", model_output="freed"):
    cfg = transformers.AutoConfig.for_model(**model_spec.to_hf_config())
    with torch.device("meta"):
        module = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")

    def inputs():
        ids = torch.zeros(1, SEQ_LEN, dtype=torch.long)
        return {"input_ids": ids, "labels": ids}

    return trace_training_step(module, inputs, checkpointing=checkpointing, model_output=model_output)


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3.2-1b", "mistral-7b", "qwen2-7b"])
@pytest.mark.parametrize("checkpointing", ["none", "full"])
@pytest.mark.parametrize("model_output", ["freed", "kept"])
def test_templates_equal_trace(name, checkpointing, model_output):
    spec = get_model(name).with_layers(2)
    traced = _traced(spec, checkpointing, model_output)
    analytic = training_workload(spec, TrainJob(seq_len=SEQ_LEN, optimizer="none", checkpointing=checkpointing,
                                                model_output=model_output))
    assert _saved_activation_bytes(analytic) == _saved_activation_bytes(traced)
    assert flops_by_phase(analytic) == pytest.approx(flops_by_phase(traced), rel=1e-12)
    traced_peak = walk_memory(traced).peak_bytes
    analytic_peak = walk_memory(analytic).peak_bytes + RUNTIME_WORKSPACE_BYTES
    assert analytic_peak == pytest.approx(traced_peak, rel=1e-4)


def test_a_kept_output_holds_the_bf16_logits_through_backward():
    """Both the tracer and the templates: the kept loop's peak (in the loss's backward) is the
    freed loop's plus the bf16 logits, tokens x vocab x 2 bytes."""
    spec = get_model("llama-3.2-1b").with_layers(2)
    logits_bytes = SEQ_LEN * spec.vocab_size * 2
    peaks = {}
    for form in ("freed", "kept"):
        traced = walk_memory(_traced(spec, model_output=form))
        job = TrainJob(seq_len=SEQ_LEN, optimizer="none", model_output=form)
        analytic = walk_memory(training_workload(spec, job))
        assert traced.peak_phase == analytic.peak_phase == Phase.BWD
        peaks[form] = (traced.peak_bytes, analytic.peak_bytes)
    assert peaks["kept"][0] - peaks["freed"][0] == logits_bytes
    assert peaks["kept"][1] - peaks["freed"][1] == logits_bytes
