import json

import pytest

from hwmodels.catalog import REPO_ROOT, get_link, get_node
from hwmodels.collectives import (
    COLLECTIVES,
    bus_bandwidth_bytes_per_s,
    bus_factor,
    collective_time_s,
    nccl_tuning,
    num_steps,
    protocol_times,
)
from hwmodels.specs import LinkSpec, missing_sources
from hwmodels.units import GB, GiB, KiB, MiB, UserInputError

P2P = REPO_ROOT / "validate/measurements/reference/h200x2-p2p-probe-2026-11-28.json"


@pytest.fixture
def toy_net() -> LinkSpec:  # network kind: default efficiency 0.9 -> 90 GB/s bus bandwidth
    return LinkSpec(
        name="net",
        kind="network",
        per_direction_bandwidth_bytes_per_s="100GB/s",
        bidirectional_bandwidth_bytes_per_s="200GB/s",
        latency_s="10us",
    )


@pytest.mark.parametrize(
    "op,n,factor,steps",
    [
        ("all_reduce", 8, 2 * 7 / 8, 14),
        ("all_gather", 8, 7 / 8, 7),
        ("reduce_scatter", 4, 3 / 4, 3),
        ("all_to_all", 8, 7 / 8, 7),
        ("send_recv", 2, 1.0, 1),
        ("all_reduce", 2, 1.0, 2),
    ],
)
def test_factors_and_steps(op, n, factor, steps):
    assert bus_factor(op, n) == pytest.approx(factor)
    assert num_steps(op, n) == steps


def test_tree_all_reduce_steps():
    assert num_steps("all_reduce", 8, "tree") == 6
    with pytest.raises(UserInputError, match="ring only"):
        num_steps("all_gather", 8, "tree")


def test_tuning_preset_cites_every_number():
    assert missing_sources(nccl_tuning()) == []


def test_ring_all_reduce_by_hand(toy_net):
    # network hops (NCCL hwLat NET, ring): LL 2.7 us, LL128 4.0 us, Simple 14 us per step;
    # 90 GB/s Simple, LL128 0.92x, LL min(0.5x, 35 GB/s)
    bus = 2 * 7 / 8 * 1e9
    simple = 8.4e-6 + 14 * 14e-6 + bus / 90e9
    ll128 = 14e-6 + 14 * 4e-6 + bus / (0.92 * 90e9)
    ll = 6.6e-6 + 14 * 2.7e-6 + bus / 35e9
    t = collective_time_s("all_reduce", num_bytes=1e9, num_gpus=8, link=toy_net)
    assert t == pytest.approx(min(simple, ll128, ll)) and t == pytest.approx(simple)
    small = collective_time_s("all_reduce", num_bytes=8, num_gpus=8, link=toy_net)
    assert small == pytest.approx(6.6e-6 + 14 * 2.7e-6 + 14 / 35e9)  # LL: latency-bound
    assert collective_time_s("all_reduce", num_bytes=1e9, num_gpus=1, link=toy_net) == 0.0
    assert bus_bandwidth_bytes_per_s("all_reduce", num_bytes=1e9, num_gpus=8, time_s=t) < 90e9


def test_pcie_has_no_ll128():
    protos = {p.protocol for p in protocol_times("all_reduce", num_bytes=1 * MiB, num_gpus=4,
                                                 link=get_link("pcie-gen5-x16"))}
    assert protos == {"LL", "Simple"}


def test_bad_collective(toy_net):
    with pytest.raises(UserInputError, match="unknown 'broadcast'"):
        collective_time_s("broadcast", num_bytes=1, num_gpus=2, link=toy_net)
    with pytest.raises(UserInputError, match="num_gpus"):
        collective_time_s("send_recv", num_bytes=1, num_gpus=3, link=toy_net)
    with pytest.raises(UserInputError, match="num_bytes"):
        collective_time_s("all_reduce", num_bytes=-1, num_gpus=2, link=toy_net)


def _nccl_points():
    nccl = json.loads(P2P.read_text())["nccl"]
    for key, row in nccl.items():
        op, size = key.rsplit("_", 1)
        per_rank = int(size.removesuffix("MiB")) * MiB
        num_bytes = (
            2 * per_rank if op == "all_gather" else per_rank
        )  # our all_gather bytes = output
        yield op, num_bytes, row


def test_fitted_profile_within_10pct_of_2xh200_nccl():
    node = get_node("8xH200")
    points = list(_nccl_points())
    assert len(points) == 9  # three collectives at 16 MiB, 256 MiB, 1 GiB
    for op, num_bytes, row in points:
        t = collective_time_s(
            op, num_bytes=num_bytes, num_gpus=2, link=node.gpu_peer_link(), profile=node.profile
        )
        assert t == pytest.approx(row["time_s"], rel=0.10), op
        # at the count it was fitted at, the Simple line is the profile's fit itself
        fit = node.profile.fits[op]
        assert t == pytest.approx(fit.time_s(bus_factor(op, 2) * num_bytes,
                                             num_latency_units=num_steps(op, 2)), rel=1e-9)
        busbw = bus_bandwidth_bytes_per_s(op, num_bytes=num_bytes, num_gpus=2, time_s=row["time_s"])
        assert busbw == pytest.approx(row["busbw_GBps"] * GB, rel=1e-6)  # same busbw convention


def test_small_all_reduce_on_8_nvlink_gpus_is_tens_of_microseconds():
    """The 2-GPU fit's 14.7 us per ring step put a 128 KiB all-reduce on 8 GPUs at 207 us;
    NCCL's LL protocol does it in 6.6 + 14 x 0.6 us plus its bytes. Published 8xH100
    nccl-tests: 13.7 us at 8 B, 19.9 us at 128 KiB, 27.4 us at 1 MiB."""
    pub = nccl_tuning().published
    for name in ("8xH200", "8xH100"):
        node = get_node(name)
        link, prof = node.gpu_peer_link(), node.profile
        for size, key in ((8, "8B"), (128 * KiB, "128KiB"), (1 * MiB, "1MiB")):
            t = collective_time_s("all_reduce", num_bytes=size, num_gpus=8, link=link, profile=prof)
            assert t == pytest.approx(pub[f"8xH100.all_reduce.{key}.time_s"], rel=0.20), (name, key)
        t128 = collective_time_s("all_reduce", num_bytes=128 * KiB, num_gpus=8, link=link, profile=prof)
        assert 10e-6 < t128 < 30e-6


def test_large_message_bus_bandwidth_near_published():
    """NVLS off, 2 GiB on 8 GPUs. 8xH100 (no profile): NCCL's ~370 GB/s of the 450 GB/s line.
    8xH200: the rate fitted on our 2xH200 runs (320.7 GB/s asymptote of 16 MiB-1 GiB; 326 GB/s
    measured at 1 GiB), 14% under the published H100 ring figure until a sweep to 2 GiB lands."""
    pub = nccl_tuning().published
    ring = pub["8xH100.all_reduce.ring.busbw_bytes_per_s"]
    rs = pub["8xH100.reduce_scatter.ring.2GiB.busbw_bytes_per_s"]
    for name, tol in (("8xH100", 0.02), ("8xH200", 0.15)):
        node = get_node(name)
        kw = {"num_gpus": 8, "link": node.gpu_peer_link(), "profile": node.profile}
        t = collective_time_s("all_reduce", num_bytes=2 * GiB, **kw)
        busbw = bus_bandwidth_bytes_per_s("all_reduce", num_bytes=2 * GiB, num_gpus=8, time_s=t)
        assert busbw == pytest.approx(ring, rel=tol), name
        t = collective_time_s("reduce_scatter", num_bytes=2 * GiB, **kw)
        busbw = bus_bandwidth_bytes_per_s("reduce_scatter", num_bytes=2 * GiB, num_gpus=8, time_s=t)
        assert busbw < rs * 1.05
    t = collective_time_s("reduce_scatter", num_bytes=2 * GiB, num_gpus=8,
                          link=get_node("8xH100").gpu_peer_link())
    assert bus_bandwidth_bytes_per_s("reduce_scatter", num_bytes=2 * GiB, num_gpus=8,
                                     time_s=t) == pytest.approx(rs, rel=0.05)


@pytest.mark.parametrize("op", COLLECTIVES)
@pytest.mark.parametrize("kind", ["8xH200", "8xH100", "pcie"])
def test_monotone_in_size_and_latency_then_bandwidth_bound(op, kind):
    if kind == "pcie":
        link, prof = get_link("pcie-gen5-x16"), None
    else:
        node = get_node(kind)
        link, prof = node.gpu_peer_link(), node.profile
    n = 2 if op == "send_recv" else 8
    sizes = [8 * 4**i for i in range(15)]  # 8 B .. 2 GiB
    times = [collective_time_s(op, num_bytes=s, num_gpus=n, link=link, profile=prof) for s in sizes]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False)), times
    # small: under 2x of the 8-byte time up to 64 KiB; large: time ~ linear in bytes
    assert times[sizes.index(32 * KiB)] < 2 * times[0]
    assert times[-1] / times[-2] == pytest.approx(4, rel=0.05)
    best = [min(protocol_times(op, num_bytes=s, num_gpus=n, link=link, profile=prof),
                key=lambda p: p.time_s).protocol for s in (sizes[0], sizes[-1])]
    assert best == ["LL", "Simple"]


def test_more_gpus_cost_more_hops():
    node = get_node("8xH200")
    kw = {"link": node.gpu_peer_link(), "profile": node.profile}
    t = [collective_time_s("all_gather", num_bytes=8 * KiB, num_gpus=n, **kw) for n in (2, 4, 8)]
    assert t[0] < t[1] < t[2]
    assert t[2] - t[1] == pytest.approx(4 * 0.6e-6, rel=0.05)  # 4 more LL steps on NVLink


def test_link_default_residual_against_2xh200_nccl():
    """Documented residual: NVLink datasheet x NCCL's ring bus fraction (370/450), NCCL's table
    latencies, no fit. Always optimistic: at 1 GiB 10-25% fast (our 2xH200 NCCL reached 280-330
    GB/s bus bandwidth, NCCL's H100 rings 370), at 16 MiB 25-45% fast (the 2xH200 calls cost
    30-34 us beyond their bytes, NCCL's table 12-15 us). This is why a measured profile carries
    collective fits."""
    link = get_link("nvlink4-x18")
    errs = {}
    for op, num_bytes, row in _nccl_points():
        t = collective_time_s(op, num_bytes=num_bytes, num_gpus=2, link=link)
        errs[(op, num_bytes)] = t / row["time_s"] - 1
    big = [e for (op, n), e in errs.items() if n >= 1024 * MiB]
    assert all(-0.30 < e < 0 for e in big), errs
    assert all(-0.50 < e < 0 for e in errs.values()), errs
