"""``job.mlp_activation: recomputed`` in the templates against the reference decoder traced on
meta (``validate.model.SwiGLUDown``): per layer, two activations fewer saved and the same drop
of the step's peak; the recompute is timed in the down projection's backward."""

import pytest

torch = pytest.importorskip("torch")

from trace_support import saved_bytes_per_layer  # noqa: E402

from hwmodels.catalog import load_node  # noqa: E402
from hwmodels.units import UserInputError  # noqa: E402
from simulator.job import TrainJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.templates import training_workload  # noqa: E402
from simulator.trace import trace_training_step  # noqa: E402
from simulator.workload import walk_memory  # noqa: E402
from validate.model import Decoder  # noqa: E402

SEQ_LEN = 32768


def _traced(spec, recompute: bool):
    with torch.device("meta"):
        module = Decoder(spec, device="meta", dtype=torch.bfloat16)
    for layer in module.layers:
        layer.recompute_mlp_act = recompute

    def inputs():
        if spec.has_embedding:
            return torch.zeros(1, SEQ_LEN, dtype=torch.long)
        return torch.zeros(1, SEQ_LEN, spec.hidden_size, dtype=torch.bfloat16, requires_grad=True)

    return trace_training_step(module, inputs, loss_fn=lambda out, inp: out)


def _job(spec, act):
    loss = "cross_entropy" if spec.has_lm_head else "mean_square_fp32"
    return TrainJob(seq_len=SEQ_LEN, optimizer="none", loss=loss, mlp_activation=act)


@pytest.mark.parametrize("name", ["probe-llama7b-stack", "llama-3.2-1b"])
def test_template_drops_what_the_traced_decoder_drops(name):
    spec = get_model(name).with_layers(2)
    io = SEQ_LEN * spec.intermediate_size * 2
    traced = {act: _traced(spec, act == "recomputed") for act in ("saved", "recomputed")}
    templ = {act: training_workload(spec, _job(spec, act)) for act in ("saved", "recomputed")}
    for layer in range(spec.num_layers):
        t_saved = saved_bytes_per_layer(traced["saved"])[layer]
        t_rec = saved_bytes_per_layer(traced["recomputed"])[layer]
        assert t_saved - t_rec == 2 * io
    if not spec.gate_up_fused:  # the templates save the very same bytes as the trace
        assert saved_bytes_per_layer(templ["recomputed"]) == saved_bytes_per_layer(traced["recomputed"])
    drop_traced = walk_memory(traced["saved"]).peak_bytes - walk_memory(traced["recomputed"]).peak_bytes
    drop_templ = walk_memory(templ["saved"]).peak_bytes - walk_memory(templ["recomputed"]).peak_bytes
    assert drop_templ == drop_traced > 0


def test_the_recompute_is_timed_in_the_down_projections_backward():
    node = load_node("1xH200")
    spec = get_model("probe-llama7b-stack").with_layers(1)
    ops = {act: {op.name: op for op in training_workload(spec, _job(spec, act), node).ops}
           for act in ("saved", "recomputed")}
    down = "layers.0.mlp.down_proj.backward"
    fwd = ops["recomputed"]["layers.0.mlp.silu_mul"].time_s
    assert fwd > 0
    assert ops["recomputed"][down].time_s == pytest.approx(ops["saved"][down].time_s + fwd)
    total = {act: sum(op.time_s or 0.0 for op in o.values()) for act, o in ops.items()}
    assert total["saved"] < total["recomputed"] < total["saved"] * 1.03


def test_only_swiglu_models_recompute_the_activation():
    with pytest.raises(UserInputError, match="job.mlp_activation"):
        _job(get_model("gpt2"), "recomputed").check(get_model("gpt2"))
