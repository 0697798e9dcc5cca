"""tierplan hardware models: what the machine is, and how long moving and computing take.

Models: devices and links as frozen pydantic specs (`specs`: GpuSpec, HostMemorySpec,
CxlMemorySpec, NvmeSpec, CsdSpec, LinkSpec, NodeSpec with an explicit topology graph,
ClusterSpec, AchievedProfile); a preset catalog of JSON data files with a source for every
number (`catalog`: list_presets, get_gpu, get_node, load_node_file, get_cluster); pure time
functions (`transfer`: transfer_time_s, effective_bandwidth_bytes_per_s, host_transfer_time_s,
tier_transfer_time_s for CXL / NVMe / computational storage along the node topology;
`compute`: compute_time_s, peak_flops_per_s, mfu_frac, with the op classes in `op_classes`;
`collectives`: collective_time_s); and
`calibrate`, which fits an AchievedProfile from measurement files and reports residuals.
Assumes: one time model everywhere, ``latency_s + work / rate`` (alpha-beta); datasheet rates
in specs, achieved rates only in profiles; MFU always against the datasheet peak.
Ignores: models, plans and schedules (those live in kernels, simulator and planners).
Source: vendor datasheets and validate/measurements/ (reference probes and microbenchmarks).
Units: `units` holds every constant and parser (bytes, seconds, FLOPs and their rates).
"""
