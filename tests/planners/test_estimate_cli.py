import json

import pytest

from tierplan.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_estimate_json_has_the_promised_keys(capsys):
    code, out, _ = _run(capsys, "estimate", "--model", "llama-3.2-1b", "--seq-len", "16K",
                        "--optimizer", "none", "--hardware", "1xH200", "--json")
    assert code == 0
    d = json.loads(out)
    for key in ("peak_allocated_bytes", "step_time_s", "mfu", "tokens_per_s", "fits", "breakdown_bytes"):
        assert key in d
    assert d["fits"] is True and 0 < d["mfu"] < 1
    assert sum(d["breakdown_bytes"].values()) == d["peak_allocated_bytes"]
    by_ck = {row["checkpointing"]: row for row in d["strategies"]}
    assert set(by_ck) == {"none", "selective", "full"}
    assert by_ck["none"]["peak_allocated_bytes"] == d["peak_allocated_bytes"]
    assert by_ck["full"]["peak_allocated_bytes"] < by_ck["none"]["peak_allocated_bytes"]
    assert by_ck["full"]["step_time_s"] > by_ck["none"]["step_time_s"]


def test_layers_override_and_length_suffixes(capsys):
    _, out4, _ = _run(capsys, "estimate", "--model", "llama-2-7b", "--layers", "4", "--seq-len", "4K",
                      "--optimizer", "none", "--json")
    _, out8, _ = _run(capsys, "estimate", "--model", "llama-2-7b", "--layers", "8", "--seq-len", "4096",
                      "--optimizer", "none", "--json")
    a, b = json.loads(out4), json.loads(out8)
    assert a["seq_len"] == b["seq_len"] == 4096
    assert b["peak_allocated_bytes"] > a["peak_allocated_bytes"]
    assert b["step_time_s"] > a["step_time_s"]


def test_checkpointing_lowers_the_peak(capsys):
    peaks = {}
    for ck in ("none", "selective", "full"):
        _, out, _ = _run(capsys, "estimate", "--model", "llama-3.1-8b", "--layers", "8", "--seq-len", "32K",
                         "--optimizer", "none", "--checkpointing", ck, "--json")
        peaks[ck] = json.loads(out)["peak_allocated_bytes"]
    assert peaks["full"] < peaks["selective"] < peaks["none"]


def test_memo_scenario_prints_breakdown_and_fit(capsys):
    code, out, _ = _run(capsys, "estimate", "--model", "memo-7b", "--seq-len", "1M", "--hardware", "8xA800",
                        "--tp", "8", "--sp", "--checkpointing", "full", "--master-weights")
    assert code == 0
    assert "peak allocated" in out and "8xA800" in out
    assert "does not fit" in out or "fits (" in out
    assert "activation checkpointing strategies" in out


def test_inference_json(capsys):
    code, out, _ = _run(capsys, "estimate", "--mode", "infer", "--model", "llama-3.1-8b", "--prompt-len", "8K",
                        "--gen-len", "256", "--batch", "2", "--json")
    assert code == 0
    d = json.loads(out)
    # KV bytes per token: 2 (K, V) * 32 layers * 8 kv heads * 128 * 2 bytes
    assert d["kv_cache_bytes_per_token"] == 2 * 32 * 8 * 128 * 2
    assert d["kv_cache_bytes_per_request"] == d["kv_cache_bytes_per_token"] * (8192 + 256)
    assert d["max_batch"] >= 2 and d["fits"]


def test_quantized_kv_cache_is_smaller(capsys):
    _, a, _ = _run(capsys, "estimate", "--mode", "infer", "--prompt-len", "8K", "--json")
    _, b, _ = _run(capsys, "estimate", "--mode", "infer", "--prompt-len", "8K", "--kv-quant", "int4", "--json")
    assert json.loads(b)["kv_cache_bytes_per_token"] < json.loads(a)["kv_cache_bytes_per_token"] / 3


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--seq-len", "banana"], "seq_len"),
        (["--model", "nope"], "nope"),
        (["--layers", "0"], "--layers"),
        (["--tp", "3", "--model", "llama-2-70b"], "tp"),
        (["--hardware", "9xH900"], "9xH900"),
        (["--prompt-len", "4K"], "--prompt-len"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = _run(capsys, "estimate", *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_config_json_missing_hidden_size(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
                               "intermediate_size": 64, "vocab_size": 100}))
    code, _, err = _run(capsys, "estimate", "--model", str(cfg), "--seq-len", "1K")
    assert code == 2 and "hidden_size" in err and len(err.strip().splitlines()) == 1


def test_unknown_family(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "mamba", "hidden_size": 64}))
    code, _, err = _run(capsys, "estimate", "--model", str(cfg))
    assert code == 2 and "mamba" in err


def test_scenario_file_with_override(tmp_path, capsys):
    sc = tmp_path / "s.yaml"
    sc.write_text("model: probe-llama7b-stack\nhardware: 1xH200\njob:\n  mode: train\n  seq_len: 8K\n"
                  "  optimizer: none\n  loss: mean_square_fp32\n  grads_persist: true\n")
    code, out, _ = _run(capsys, "estimate", str(sc), "--seq-len", "32K", "--json")
    assert code == 0
    assert json.loads(out)["seq_len"] == 32768


def test_the_loop_form_is_a_flag_and_the_json_says_which_was_assumed(capsys):
    """Llama-3.1-8B + AdamW + gradient checkpointing at 48K on one H200: the loop that keeps
    ``out.logits`` through backward does not fit the HBM, HF Trainer's loop (the default) does in
    allocated bytes; the difference is the bf16 logits, 48K x 128256 x 2 bytes. Under the native
    caching allocator (the job's default) the freed loop still does not fit: it ran out of memory
    in fragments on the H200 (steps-loopform-h200-2026-12-02.json), and the fit replays that."""
    common = ("estimate", "--model", "llama-3.1-8b", "--seq-len", "48K", "--optimizer", "adamw",
              "--optimizer-state-dtype", "bf16", "--checkpointing", "full", "--json")
    by_form = {}
    for extra in ((), ("--model-output", "freed"), ("--model-output", "kept")):
        code, out, _ = _run(capsys, *common, *extra)
        assert code == 0
        d = json.loads(out)
        by_form[extra[-1] if extra else "default"] = d
    assert by_form["default"] == by_form["freed"]
    assert by_form["freed"]["model_output"] == "freed" and by_form["kept"]["model_output"] == "kept"
    freed = by_form["freed"]
    assert freed["peak_allocated_bytes"] < freed["hbm_capacity_bytes"] < by_form["kept"]["peak_allocated_bytes"]
    assert freed["fits"] is False and by_form["kept"]["fits"] is False
    assert freed["allocator"] == "caching" and freed["peak_reserved_bytes"] > freed["hbm_capacity_bytes"] - 1.34 * 2**30
    diff = by_form["kept"]["peak_allocated_bytes"] - by_form["freed"]["peak_allocated_bytes"]
    assert diff == 48 * 1024 * 128256 * 2
    assert by_form["kept"]["step_time_s"] == by_form["freed"]["step_time_s"]


def test_a_bare_stack_has_both_loop_forms(capsys):
    """A bare stack's output is freed with its loss (the executor's Decoder) or held by the
    caller (the reference probe): the two differ by exactly that output, 8K x 4096 bf16."""
    outs = []
    for form in ("freed", "kept"):
        code, out, _ = _run(capsys, "estimate", "--model", "probe-llama7b-stack", "--seq-len", "8K",
                            "--optimizer", "none", "--model-output", form, "--json")
        assert code == 0
        outs.append(json.loads(out))
    assert [o["model_output"] for o in outs] == ["freed", "kept"]
    for freed, kept in zip(outs[0]["strategies"], outs[1]["strategies"], strict=True):
        assert kept["peak_allocated_bytes"] - freed["peak_allocated_bytes"] == 8192 * 4096 * 2


def test_the_loop_form_is_for_training_only(capsys):
    code, _, err = _run(capsys, "estimate", "--mode", "infer", "--model", "llama-3.2-1b",
                        "--prompt-len", "4K", "--model-output", "kept")
    assert code == 2 and "--model-output: only for mode train" in err


def test_the_loop_form_choices_are_the_schemas():
    from simulator.job import MODEL_OUTPUTS
    from tierplan.commands import estimate

    assert estimate.MODEL_OUTPUTS == MODEL_OUTPUTS and set(estimate.MODEL_OUTPUT_ROW) == set(MODEL_OUTPUTS)
