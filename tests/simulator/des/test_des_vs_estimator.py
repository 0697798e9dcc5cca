"""With no transfers and no contention the replay equals the analytical estimator exactly."""

from __future__ import annotations

import pytest

from simulator.des import schedule_from_workload, simulate
from simulator.estimator import estimate_training
from simulator.templates import training_workload

CASES = [
    ("gpt2", 1024, "1xH200", None, {}),
    ("gpt2-medium", 1024, "1xH200", None, {"checkpointing": "full"}),
    ("llama-3.2-1b", 8192, "1xH200", None, {}),
    ("llama-3.2-1b", 32768, "1xH200", None, {"checkpointing": "selective"}),
    ("llama-2-7b", 65536, "1xH200", 4, {}),
    ("probe-llama7b-stack", 16384, "1xH200", None, {"loss": "mean_square_fp32"}),
    ("llama-2-7b", 131072, "8xH200", 2, {"parallelism": {"tp": 2, "sequence_parallel": True}}),
    ("llama-3.1-8b", 262144, "8xH200", 2, {"parallelism": {"cp": 4, "cp_kind": "ulysses"}}),
    ("llama-3.2-1b", 16384, "8xH200", None, {"parallelism": {"dp": 2, "zero_stage": 1}}),
]


@pytest.mark.parametrize(("model", "seq_len", "hardware", "layers", "job"), CASES)
def test_replay_equals_estimate(scenario, model, seq_len, hardware, layers, job):
    m, j, node = scenario(model, seq_len, hardware, layers=layers, **job)
    wl = training_workload(m, j, node)
    est = estimate_training(m, j, node, workload=wl)
    gpus = j.parallelism.num_gpus
    r = simulate(schedule_from_workload(wl, node, num_gpus=gpus))
    assert r.step_time_s == est.step_time_s  # same additions in the same order: bit-identical
    for g in range(gpus):
        hbm = r.pool(f"gpu{g}.hbm")
        assert hbm.peak_bytes == est.peak_allocated_bytes
        assert hbm.peak_task == est.peak_op
        assert hbm.peak_at_s == est.peak_at_s
    assert r.peak_bytes_by_tier()["hbm"] == est.peak_allocated_bytes
    assert r.stall_s == 0.0
    assert r.num_events == 2 * len(wl.ops) * gpus + len(r.oom)
    compute = r.stream("gpu0.compute")
    assert compute.busy_s == pytest.approx(est.step_time_s) and compute.idle_s == pytest.approx(0.0, abs=1e-9)
    assert all(s.collective_wait_s == 0.0 for s in r.streams)


@pytest.mark.parametrize("par", [{"tp": 2, "sequence_parallel": True}, {"dp": 2, "zero_stage": 1}])
def test_comm_ops_become_collectives_over_the_simulated_gpus(scenario, par):
    m, j, node = scenario("llama-3.2-1b", 16384, "8xH200", layers=2, parallelism=par)
    wl = training_workload(m, j, node)
    sched = schedule_from_workload(wl, node, num_gpus=2)
    comm = [i for i, op in enumerate(wl.ops) if op.op_class == "comm"]
    assert comm
    for i in comm:  # the same op on both GPUs is one group, with the workload's duration
        a, b = sched.tasks[sched.compute_tids[0][i]], sched.tasks[sched.compute_tids[1][i]]
        assert a.group == b.group is not None and a.duration_s == b.duration_s == wl.ops[i].time_s
