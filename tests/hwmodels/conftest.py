"""Shared toy hardware for hwmodels tests: numbers chosen so results can be checked by hand."""

from __future__ import annotations

import pytest

from hwmodels.specs import GpuSpec, HostMemorySpec, LinkSpec, NodeSpec

TOY_SOURCES = {"*": "toy"}


@pytest.fixture
def toy_gpu() -> GpuSpec:
    return GpuSpec(
        name="toy-gpu",
        hbm_capacity_bytes="80GiB",
        hbm_bandwidth_bytes_per_s="1TB/s",
        num_sms=100,
        sram_per_sm_bytes="200KiB",
        l2_bytes="40MiB",
        register_file_per_sm_bytes="256KiB",
        peak_flops_per_s={"bf16": "100TFLOP/s", "fp32": "10TFLOP/s", "fp8": "200TFLOP/s"},
        kernel_launch_overhead_s="5us",
    )


@pytest.fixture
def toy_pcie() -> LinkSpec:
    # 63.015 GB/s is PCIe Gen5 x16 after encoding: the default efficiency maps it to 54.8 GB/s.
    return LinkSpec(
        name="toy-pcie",
        kind="pcie",
        per_direction_bandwidth_bytes_per_s="63.015GB/s",
        bidirectional_bandwidth_bytes_per_s="126.03GB/s",
        latency_s="10us",
    )


@pytest.fixture
def toy_node(toy_gpu, toy_pcie) -> NodeSpec:
    host = HostMemorySpec(
        name="toy-host",
        capacity_bytes="1TB",
        bandwidth_bytes_per_s="100GB/s",
        num_sockets=1,
        latency_s="100ns",
    )
    return NodeSpec(
        name="toy",
        num_gpus=2,
        gpu=toy_gpu,
        host_memory=host,
        links={"pcie": toy_pcie},
        switches=["sw0"],
        topology=[
            {"a": "gpu0", "b": "sw0", "link": "pcie"},
            {"a": "gpu1", "b": "sw0", "link": "pcie"},
            {"a": "sw0", "b": "cpu0", "link": "pcie"},
        ],
    )
