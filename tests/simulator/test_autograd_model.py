"""Hand-checked toy programs for the autograd memory model."""

from simulator.autograd_model import Cost, ProgramBuilder
from simulator.workload import Phase, Role, walk_memory


def _chain(checkpoint: bool, grads_persist: bool = False):
    """x -> linear(w) -> y -> relu -> z -> loss ; sizes chosen as multiples of 512."""
    b = ProgramBuilder(grads_persist=grads_persist)
    x = b.input("x", 1024, requires_grad=False)
    w = b.param("w", 2048)
    if checkpoint:
        b.begin_checkpoint([x])
    y = b.tensor("y", 4096, Role.MLP_HIDDEN)
    b.op("lin", "linear", 0, inputs=[x, w], outputs=[y], saves=[x, w])
    z = b.tensor("z", 4096, Role.MLP_HIDDEN)
    b.op("relu", "relu", 0, inputs=[y], outputs=[z], saves=[z])
    if checkpoint:
        b.end_checkpoint()
    loss = b.tensor("loss", 512, Role.LOSS)
    b.op("loss", "loss_sum", None, inputs=[z], outputs=[loss])
    b.hold(loss)
    return b.build()


def test_forward_frees_unsaved_and_backward_order():
    wl = _chain(checkpoint=False)
    names = [op.name for op in wl.ops]
    assert names == ["lin", "relu", "loss", "backward.start", "loss.backward", "relu.backward", "lin.backward"]
    walk = walk_memory(wl)
    # y is consumed by relu and not saved (relu saves its output): freed after relu.
    lin, relu = wl.ops[0], wl.ops[1]
    assert wl.tensor(relu.frees[0]).name == "y"
    assert lin.saves == (0, 1)
    # Peak: in relu backward: x, w, z (saved), grad(z), grad(y) -> 1024+2048+4096+4096+4096 (+loss, +1 scalar grad freed)
    assert walk.peak_op_name == "relu.backward"
    assert walk.peak_bytes == 1024 + 2048 + 4096 + 4096 + 4096 + 512
    # After the step only weights, held tensors and the new weight grad remain.
    assert walk.final_bytes == 1024 + 2048 + 512 + 2048


def test_checkpoint_saves_only_region_inputs_and_recomputes():
    wl = _chain(checkpoint=True)
    phases = [op.phase for op in wl.ops]
    assert Phase.RECOMPUTE in phases
    # In forward, z is freed after the loss consumes it (the region saves only x).
    fwd_loss = next(op for op in wl.ops if op.name == "loss")
    assert any(wl.tensor(t).name == "z" for t in fwd_loss.frees)
    rec = [op for op in wl.ops if op.phase == Phase.RECOMPUTE]
    assert [op.name for op in rec] == ["lin.recompute", "relu.recompute"]
    walk = walk_memory(wl)
    # Recompute re-allocates z (saved by relu) while y is freed after relu.recompute.
    assert walk.peak_bytes <= 1024 + 2048 + 4096 + 4096 + 4096 + 512


def test_grads_persist_accumulates_into_existing_grad():
    wl = _chain(checkpoint=False, grads_persist=True)
    walk = walk_memory(wl)
    assert walk.initial_bytes == 1024 + 2048 + 2048  # x, w, w.grad
    lin_bwd = next(op for op in wl.ops if op.name == "lin.backward")
    # the weight grad is computed into a temporary and added in place
    assert [wl.tensor(t).name for t in lin_bwd.allocs] == ["w.grad_tmp"]
    assert walk.final_bytes == walk.initial_bytes + 512  # plus the held loss


def test_view_keeps_base_alive_until_last_view_dies():
    b = ProgramBuilder()
    x = b.input("x", 1024, requires_grad=True)
    gu = b.tensor("gu", 8192, Role.MLP_HIDDEN)
    b.op("proj", "linear", 0, inputs=[x], outputs=[gu])
    g = b.view("g", gu, 4096, Role.MLP_HIDDEN)
    u = b.view("u", gu, 4096, Role.MLP_HIDDEN)
    b.op("chunk", "split", 0, inputs=[gu], outputs=[g, u])
    a = b.tensor("a", 4096, Role.MLP_HIDDEN)
    b.op("act", "silu", 0, inputs=[g], outputs=[a], saves=[g])
    p = b.tensor("p", 4096, Role.MLP_HIDDEN)
    b.op("mul", "mul", 0, inputs=[a, u], outputs=[p], saves=[a, u])
    loss = b.tensor("loss", 512, Role.LOSS)
    b.op("loss", "loss_sum", None, inputs=[p], outputs=[loss])
    b.hold(loss)
    wl = b.build()
    walk = walk_memory(wl)
    # gu's storage must be live through the forward (views g, u are saved).
    fwd_end = next(p for p in walk.timeline if p.op_name == "loss")
    assert fwd_end.live_bytes == 1024 + 8192 + 4096 + 4096 + 512
    # chunk backward allocates the 8192-byte gradient of gu, from the 4096-byte grads of g, u
    chunk_bwd = next(op for op in wl.ops if op.name == "chunk.backward")
    assert sorted(wl.tensor(t).num_bytes for t in chunk_bwd.allocs) == [8192]
    assert walk.final_bytes == 1024 + 512 + 1024  # x, loss, x.grad (leaf)


def test_second_gradient_contribution_is_accumulated_and_timed():
    """x feeds a branch and a residual add: its gradient arrives twice, the second time into a
    temporary added in place (autograd's InputBuffer); that add_ reads 2n and writes n bytes and
    its time is charged to the backward op that produced the second contribution."""

    def build(accumulate):
        b = ProgramBuilder(accumulate_time_s=accumulate)
        x0 = b.input("x0", 1024, requires_grad=True)
        w = b.param("w", 2048)
        x = b.tensor("x", 1024, Role.LAYER_INPUT)
        b.op("scale", "mul", 0, inputs=[x0], outputs=[x], grad_inputs=[x0])
        y = b.tensor("y", 1024, Role.MLP_HIDDEN)
        b.op("lin", "linear", 0, inputs=[x, w], outputs=[y], saves=[x, w], grad_inputs=[x],
             bwd_cost=Cost(hbm_bytes=100, time_s=1.0))
        z = b.tensor("z", 1024, Role.LAYER_INPUT)
        b.op("res", "add", 0, inputs=[x, y], outputs=[z], passthrough=[x, y])
        loss = b.tensor("loss", 512, Role.LOSS)
        b.op("loss", "loss_sum", None, inputs=[z], outputs=[loss])
        b.hold(loss)
        return b.build()

    seen = []
    wl = build(lambda n: seen.append(n) or 0.25)
    lin_bwd = next(op for op in wl.ops if op.name == "lin.backward")
    assert any(wl.tensor(t).name == "x.grad_part" for t in lin_bwd.allocs)
    assert seen == [1024]
    assert lin_bwd.time_s == 1.25 and lin_bwd.hbm_bytes == 100 + 3 * 1024
    untimed = next(op for op in build(None).ops if op.name == "lin.backward")
    assert untimed.time_s == 1.0 and untimed.hbm_bytes == 100
