"""planners.infer with attention off the GPU: the MIP moves attention to the CPU when the GPU's host
link is slow against the CPU; plans with KV on CXL / NVMe / CSD are replayed but refused by the
executors, in one line."""

import pytest

from hwmodels.catalog import get_link, load_node
from hwmodels.units import GiB
from planners.infer import plan_inference, replay_plan
from planners.plan import Plan
from simulator.job import InferJob
from simulator.model import get_model
from simulator.scenario import Scenario

MODEL = get_model("llama-3.2-1b").with_layers(4)
JOB = InferJob(prompt_len=65536, gen_len=4, batch=4)


def _slow_link_node():
    """The H200 node behind a PCIe Gen4 x4 link (6.9 GB/s each way, its datasheet: the measured
    copy fits dropped so the link's own rate prices the copies), the same host CPU."""
    base = load_node("1xH200")
    fits = {k: v for k, v in base.profile.fits.items() if not k.startswith("copy")}
    return base.model_copy(update={"name": "1xH200-gen4x4", "links": {**base.links, "pcie": get_link("pcie-gen4-x4")},
                                   "profile": base.profile.model_copy(update={"fits": fits})})


def _scenario(node, *, gpu=8 * GiB):
    return Scenario.build(MODEL, JOB, node, gpu_budget_bytes=int(gpu), host_budget_bytes=100 * GiB)


def test_the_mip_attends_on_the_cpu_when_the_link_is_slow_against_it():
    rep = plan_inference(_scenario(_slow_link_node()), time_limit_s=10)
    mip, kv_host = rep.result("mip"), rep.result("kv_host")
    assert rep.best == "mip" and mip.feasible and kv_host.feasible  # 8 GiB: the KV must leave HBM
    on_cpu = [lp.layer for lp in mip.plan.layers if lp.attention_on == "cpu"]
    assert on_cpu and all(mip.plan.layers[i].kv_cache.tier == "host" for i in on_cpu)
    # the link moves 6.9 GB/s, the H200 host's CPU attends over 11.3 GB/s of K,V (measured): sharing
    # the layers between the two beats fetching them all by over 1.5x
    assert mip.replay.decode_step_time_s < kv_host.replay.decode_step_time_s / 1.5
    assert mip.plan.unsupported() == "" and mip.plan.not_executable() == ""
    assert replay_plan(mip.plan).decode_step_time_s == pytest.approx(mip.plan.prediction.decode_step_time_s,
                                                                    rel=1e-6)


def test_kv_that_fits_in_hbm_keeps_attention_on_the_gpu():
    rep = plan_inference(_scenario(_slow_link_node(), gpu=100 * GiB), time_limit_s=10)
    mip = rep.result("mip")
    assert all(lp.attention_on == "gpu" and lp.kv_cache.resident_frac == 1.0 for lp in mip.plan.layers)


def _with_layers(plan: Plan, **layer_update) -> Plan:
    """``plan`` with every layer changed (and the prediction dropped: a plan edited by hand)."""
    kv = layer_update.pop("kv_cache", None)
    layers = [lp.model_copy(update={**layer_update, **({"kv_cache": lp.kv_cache.model_copy(update=kv)} if kv else {})})
              for lp in plan.layers]
    return Plan.model_validate({**plan.model_dump(), "layers": [lp.model_dump() for lp in layers], "prediction": None})


@pytest.fixture(scope="module")
def tiered_plan():
    return plan_inference(_scenario(load_node("1xH200-tiered")), time_limit_s=10).result("kv_host").plan


@pytest.mark.parametrize("tier", ["cxl", "nvme", "csd"])
def test_kv_on_cxl_nvme_csd_is_replayed_not_executed(tiered_plan, tier):
    plan = _with_layers(tiered_plan, kv_cache={"tier": tier})
    assert plan.unsupported() == ""
    assert plan.not_executable() == f"layers.0.kv_cache.tier: KV cache on {tier} is not executed yet (replayed only)"
    rep = replay_plan(plan)
    assert rep.feasible and rep.tier_peak_bytes[tier] > 0


def test_csd_attention_is_replayed_and_refused_by_the_executor(tiered_plan):
    plan = _with_layers(tiered_plan, kv_cache={"tier": "csd"}, attention_on="csd")
    assert plan.unsupported() == ""
    assert plan.not_executable() == ("layers.0.attention_on: attention inside a computational storage drive is "
                                     "replayed, not executed (no drive to run it)")
    assert replay_plan(plan).decode_link_bytes < replay_plan(_with_layers(tiered_plan, kv_cache={"tier": "csd"})
                                                             ).decode_link_bytes / 1000


@pytest.mark.parametrize(("update", "reason"), [
    ({"attention_on": "cpu", "kv_cache": {"resident_frac": 1.0}},
     "layers.0.attention_on: attention on the cpu needs the layer's KV cache on host, not hbm"),
    ({"attention_on": "csd"}, "layers.0.attention_on: attention on the csd needs the layer's KV cache on csd, not host"),
])
def test_attention_away_from_its_kv_is_refused(tiered_plan, update, reason):
    assert _with_layers(tiered_plan, **update).unsupported() == reason


def test_the_tier_table_shares_the_nvme_layers_with_the_csd_and_its_attention():
    """Past host DRAM and the CXL card (20 GiB host budget, batch 300 at 64K: 16 layers of 36 GiB),
    the drive attends some of the layers the NVMe drive would hold while the NVMe fetches the
    others: the step is faster than with the NVMe alone."""
    from planners.infer import _fill
    from simulator.inference import replay_placement

    model = get_model("llama-3.2-1b")  # 16 layers
    sc = Scenario.build(model, JOB, load_node("1xH200-tiered"), gpu_budget_bytes=100 * GiB,
                        host_budget_bytes=20 * GiB)
    job = JOB.model_copy(update={"batch": 300})
    nvme = _fill(sc, job, ("hbm", "host", "cxl", "nvme"))
    csd = _fill(sc, job, ("hbm", "host", "cxl", "nvme", "csd"))
    assert nvme.count(kv="nvme") == csd.count(kv="nvme") + csd.count(kv="csd", attention="csd") > csd.count(kv="nvme")
    assert csd.count(kv="csd", attention="csd") > 0

    def step_s(pl):
        return replay_placement(model, job, sc.node, pl, gpu_budget_bytes=sc.gpu_budget_bytes,
                                host_budget_bytes=sc.host_budget_bytes, decode_only=True).decode_step_time_s
    assert step_s(csd) < 0.9 * step_s(nvme)


@pytest.mark.parametrize(("gpu", "expect"), [(8.0, "cpu"), (8.4, "hbm:int8")])
def test_a_job_accepting_int8_chooses_between_cpu_attention_and_quantized_kv(gpu, expect):
    """Over the slow link, int8 accepted: at 8 GiB the KV must leave HBM and the CPU attends most
    of it (bf16: attention off the GPU reads unquantized KV; the CPU's 11.3 GB/s beats the link's
    6.9, the rest shares the link); at 8.4 GiB int8 keeps it all in HBM, attended on the GPU. The
    MIP over both kinds of choice equals the best count enumeration."""
    from planners.infer.mip import coefficients, enumerate_counts, solve_placement

    job = JOB.model_copy(update={"kv_quant": "int8"})
    sc = Scenario.build(MODEL, job, _slow_link_node(), gpu_budget_bytes=int(gpu * GiB), host_budget_bytes=100 * GiB)
    c = coefficients(sc, num_staging_buffers=2)
    best, counts = enumerate_counts(c, objective="throughput")
    sol = solve_placement(sc, time_limit_s=10)
    assert sol.status == "optimal" and sol.objective == pytest.approx(best, rel=1e-6)
    if expect == "cpu":
        assert MODEL.num_layers > counts["cpu"] >= MODEL.num_layers // 2 and sol.counts["cpu"] == counts["cpu"]
    else:
        assert counts[expect] == MODEL.num_layers and sol.counts[expect] == MODEL.num_layers
    mip = plan_inference(sc, time_limit_s=10).result("mip")
    assert mip.feasible and mip.plan.unsupported() == ""
    on_cpu = [lp for lp in mip.plan.layers if lp.attention_on == "cpu"]
    assert len(on_cpu) == (counts["cpu"] if expect == "cpu" else 0)
    for lp in mip.plan.layers:
        assert lp.kv_cache.dtype == ("int8" if expect != "cpu" else lp.kv_cache.dtype)
    assert all(lp.kv_cache.dtype == "bf16" for lp in on_cpu)
    assert replay_plan(mip.plan).decode_step_time_s == pytest.approx(mip.plan.prediction.decode_step_time_s,
                                                                    rel=1e-6)


def test_counts_of_both_kinds_make_one_placement():
    from planners.infer.mip import placement_of_counts

    pl = placement_of_counts({"host:int8": 2, "cpu": 2, "stream": 0}, num_layers=4, num_staging_buffers=2,
                             lookahead=1)
    assert sorted((lp.kv_tier, lp.kv_quant, lp.attention_on) for lp in pl.layers) == [
        ("host", "int8", "gpu"), ("host", "int8", "gpu"), ("host", "none", "cpu"), ("host", "none", "cpu")]


def test_cpu_attention_over_a_quantized_kv_is_unsupported(tiered_plan):
    sc = tiered_plan.scenario
    sc = sc.model_copy(update={"job": sc.job.model_copy(update={"kv_quant": "int8"})})
    quant = {"dtype": "int8", "resident_frac": 0.0, "tier": "host", "group_size": MODEL.head_dim}
    layers = [lp.model_copy(update={"kv_cache": lp.kv_cache.model_copy(update=quant)}) for lp in tiered_plan.layers]
    plan = Plan.for_scenario(sc, layers=layers, provenance=tiered_plan.provenance)
    assert plan.unsupported() == ""
    on_cpu = Plan.for_scenario(sc, layers=[lp.model_copy(update={"attention_on": "cpu"}) for lp in layers],
                               provenance=tiered_plan.provenance)
    assert on_cpu.unsupported() == "layers.0.attention_on: attention off the GPU reads an unquantized KV cache, not int8"
