"""Does a GEMM's rate depend on what ran before it (boost clocks vs sustained power)?

Times the same bf16 GEMMs (Llama-7B qkv / o / gate_up at 4K tokens) three ways: right after the
GPU idled 5 s ("cold"), right after 10 s of sustained large GEMMs ("warm"), and interleaved
with a large GEMM between repeats. Writes JSON with provenance to --out.
Run on the GPU machine: python3 validate/scripts/gemm_warm_vs_cold.py --out gemm-warm-cold.json
"""

import argparse
import datetime
import json
import socket
import subprocess
import sys
import time

import torch


def timed(fn, reps=50):
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def smi(q):
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return str(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = "cuda"
    shapes = {"qkv": (4096, 12288, 4096), "o": (4096, 4096, 4096), "gate_up": (4096, 22016, 4096),
              "qkv_64k": (65536, 12288, 4096)}
    mats = {k: (torch.randn(m, kk, device=dev, dtype=torch.bfloat16),
                torch.randn(kk, n, device=dev, dtype=torch.bfloat16)) for k, (m, n, kk) in shapes.items()}
    big = (torch.randn(16384, 8192, device=dev, dtype=torch.bfloat16),
           torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16))
    for x, w in mats.values():
        x @ w
    torch.cuda.synchronize()
    recs = []
    for state in ("cold", "warm", "cold", "warm"):
        if state == "cold":
            time.sleep(5.0)
        else:
            t0 = time.time()
            while time.time() - t0 < 10.0:
                for _ in range(20):
                    big[0] @ big[1]
                torch.cuda.synchronize()
        clocks = smi("clocks.sm,power.draw,temperature.gpu")
        for name, (x, w) in mats.items():
            m, n, k = shapes[name]
            t = timed(lambda x=x, w=w: x @ w)
            recs.append({"op": "gemm", "layer": name, "state": state, "m": m, "n": n, "k": k, "dtype": "bf16",
                         "time_s": t, "tflops": 2 * m * n * k / t / 1e12, "smi_before": clocks})
            print(state, name, f"{2 * m * n * k / t / 1e12:.0f} TFLOP/s", clocks, flush=True)
    prov = {"date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python3 " + " ".join(sys.argv), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0), "driver": smi("driver_version"), "hostname": socket.gethostname()}
    with open(args.out, "w") as f:
        json.dump({"provenance": prov, "records": recs}, f, indent=1)


if __name__ == "__main__":
    main()
