"""`tierplan simulate --offload FRAC` replays a plan: checkpointed layers offload their input."""

import json

from tierplan.cli import main


def _sim(capsys, *flags):
    code = main(["simulate", "--model", "llama-2-7b", "--layers", "4", "--seq-len", "16K", *flags, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_a_checkpointed_layer_offloads_its_input_for_any_fraction(capsys):
    _, kept = _sim(capsys, "--checkpointing", "full")
    _, half = _sim(capsys, "--checkpointing", "full", "--offload", "0.5")
    _, whole = _sim(capsys, "--checkpointing", "full", "--offload", "1")
    assert kept["peak_bytes"].get("host", 0) == 0
    assert half["peak_bytes"]["host"] == whole["peak_bytes"]["host"] > 0


def test_selective_checkpointing_with_offload_is_refused_in_one_line(capsys):
    code, err = _sim(capsys, "--checkpointing", "selective", "--offload", "0.5")
    assert code == 2 and err.count("\n") == 1 and "--offload: " in err and "selective" in err
