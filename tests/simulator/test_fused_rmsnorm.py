"""``job.rmsnorm: fused`` in the templates against the reference decoder with its fused norm
(``validate.model.HFRMSNorm.fused``) traced on meta: per layer, the same saved bytes (input,
fp32 rstd; no fp32 copies) as the eager norm's bytes do with its fp32 copies."""

import pytest

torch = pytest.importorskip("torch")

from trace_support import saved_bytes_per_layer  # noqa: E402

from simulator.job import TrainJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.templates import training_workload  # noqa: E402
from simulator.trace import trace_training_step  # noqa: E402
from validate.model import Decoder  # noqa: E402

SEQ_LEN = 8192


def _traced(spec, norm: str):
    with torch.device("meta"):
        module = Decoder(spec, device="meta", dtype=torch.bfloat16)
    module.set_rmsnorm(norm)
    return trace_training_step(module, lambda: torch.zeros(1, SEQ_LEN, dtype=torch.long),
                               loss_fn=lambda out, inp: out)


def test_template_saves_what_the_traced_fused_norm_saves():
    spec = get_model("llama-3.2-1b").with_layers(2)
    traced = {n: saved_bytes_per_layer(_traced(spec, n)) for n in ("eager", "fused")}
    templ = {n: saved_bytes_per_layer(training_workload(spec, TrainJob(seq_len=SEQ_LEN, optimizer="none",
                                                                         rmsnorm=n)))
             for n in ("eager", "fused")}
    assert templ == traced
    # two norms a layer: eager saves the fp32 copy of x (pow and mul_rstd share it) and the
    # bf16 normed tensor the weight multiplies; fused saves x itself (bf16) instead
    per_norm = SEQ_LEN * spec.hidden_size * (4 + 2 - 2)
    for layer in range(spec.num_layers):
        assert traced["eager"][layer] - traced["fused"][layer] == 2 * per_norm
