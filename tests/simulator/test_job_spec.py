"""TrainJob / InferJob / Parallelism / Scenario: parsing, validators, YAML and JSON loading."""

import json

import pytest
import yaml
from pydantic import ValidationError

from hwmodels.units import UserInputError
from simulator.job import (
    DEFAULT_SCENARIO,
    DTYPE_BYTES,
    InferJob,
    Parallelism,
    ScenarioFile,
    TrainJob,
    default_scenario,
    dtype_bytes,
    load_scenario,
    parse_job,
    scenario_from_dict,
    tensor_bytes,
)
from simulator.model import get_model


def test_dtype_table():
    assert DTYPE_BYTES == {
        "fp32": 4,
        "tf32": 4,
        "bf16": 2,
        "fp16": 2,
        "fp8": 1,
        "int8": 1,
        "int4": 0.5,
    }
    assert dtype_bytes("bf16") == 2 and dtype_bytes("int4") == 0.5
    with pytest.raises(UserInputError, match="dtype: unknown dtype 'fp64'"):
        dtype_bytes("fp64")
    assert tensor_bytes(4096, "bf16") == 8192
    assert tensor_bytes(3, "int4") == 2  # two elements per byte, rounded up
    assert tensor_bytes(1, "fp8") == 1


def test_train_job_lengths_and_defaults():
    job = TrainJob(seq_len="128K")
    assert job.seq_len == 131072 and job.micro_batch == 1
    assert (job.param_dtype, job.grad_dtype, job.optimizer_state_dtype) == ("bf16", "bf16", "fp32")
    assert job.optimizer == "adamw" and job.num_optimizer_states == 2
    assert not job.grads_persist and not job.master_weights  # HF Trainer / plain bf16 training
    assert TrainJob(seq_len="1M", micro_batch=2).num_tokens == 2 * 1024 * 1024
    assert TrainJob(seq_len=4096, param_dtype="fp32").grad_dtype == "fp32"
    assert TrainJob(seq_len=4096, param_dtype="bf16", grad_dtype="fp32").grad_dtype == "fp32"
    assert TrainJob(seq_len=8, optimizer="sgd").num_optimizer_states == 0


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"seq_len": 0}, "at least 1"),
        ({"seq_len": "64Q"}, "unknown suffix"),
        ({"seq_len": "1.5"}, "not a whole number"),
        ({"seq_len": 8, "micro_batch": 0}, "greater than or equal to 1"),
        ({"seq_len": 8, "param_dtype": "fp64"}, "fp32"),
        ({"seq_len": 8, "optimizer": "adam"}, "adamw"),
        ({"seq_len": 8, "checkpointing": "some"}, "selective"),
        ({"seq_len": 8, "param_dtype": "fp32", "master_weights": True}, "already fp32"),
        ({"seq_len": 8, "schema_version": 2}, "1"),
        ({"seq_len": 8, "colour": "red"}, "Extra inputs"),
    ],
)
def test_train_job_rejects(kw, needle):
    with pytest.raises(ValidationError) as info:
        TrainJob(**kw)
    assert needle in str(info.value)


def test_infer_job():
    job = InferJob(prompt_len="32K", gen_len="1K", batch=4)
    assert job.max_seq_len == 33 * 1024 and job.kv_storage_dtype == "bf16"
    assert job.kv_group_size is None
    q = InferJob(prompt_len=100, kv_quant="int4")
    assert q.kv_group_size is None and q.kv_storage_dtype == "int4" and q.gen_len == 0
    assert InferJob(prompt_len=100, kv_quant="int8", kv_group_size=32).kv_group_size == 32
    assert InferJob(prompt_len=100, kv_quant="fp8").kv_group_size is None
    with pytest.raises(ValidationError, match="kv_group_size needs kv_quant"):
        InferJob(prompt_len=100, kv_group_size=64)
    with pytest.raises(ValidationError, match="kv_quant"):
        InferJob(prompt_len=100, kv_quant="int2")
    with pytest.raises(ValidationError, match="at least 1"):
        InferJob(prompt_len=0)


def test_job_union_is_tagged_by_mode():
    assert isinstance(parse_job({"mode": "train", "seq_len": "8K"}), TrainJob)
    assert isinstance(parse_job({"mode": "infer", "prompt_len": "8K"}), InferJob)
    with pytest.raises(ValidationError, match="mode"):
        parse_job({"mode": "serve", "prompt_len": 8})
    with pytest.raises(ValidationError, match="prompt_len"):
        parse_job({"mode": "infer", "seq_len": 8})


def test_parallelism_fields():
    p = Parallelism(tp=2, cp=4, dp=8, zero_stage=3)
    assert p.num_gpus == 64
    # allowed no-ops: nothing to split
    assert Parallelism(sequence_parallel=True).sequence_parallel
    assert Parallelism(zero_stage=2, dp=1).zero_stage == 2
    for bad in ({"tp": 0}, {"cp": 0}, {"dp": -1}, {"zero_stage": 4}, {"cp_kind": "star"}):
        with pytest.raises(ValidationError):
            Parallelism(**bad)


def test_parallelism_check_against_model():
    llama70 = get_model("llama-2-70b")  # 64 heads, 8 kv heads, f 28672
    Parallelism(tp=8).check(llama70, seq_len=4096)
    Parallelism(tp=16).check(llama70)  # kv heads replicated over pairs of ranks
    with pytest.raises(UserInputError, match=r"^parallelism\.tp: 3 does not divide .* 64 heads"):
        Parallelism(tp=3).check(llama70)
    memo30 = get_model("memo-30b")  # 52 heads
    with pytest.raises(UserInputError, match=r"^parallelism\.tp: 8 does not divide"):
        Parallelism(tp=8).check(memo30)
    qwen2 = get_model("qwen2-7b")  # 28 heads, 4 kv heads, f 18944
    with pytest.raises(UserInputError, match=r"^parallelism\.tp: 7 neither divides nor .* 4 kv"):
        Parallelism(tp=7).check(qwen2)
    with pytest.raises(UserInputError, match=r"^parallelism\.tp: 5 .* intermediate_size 13824"):
        Parallelism(tp=5).check(get_model("llama-2-13b"))  # 40 heads split, f does not
    with pytest.raises(UserInputError, match=r"^parallelism\.cp: ulysses needs tp\*cp = 8"):
        Parallelism(cp=8, cp_kind="ulysses").check(qwen2)
    Parallelism(cp=8, cp_kind="ring").check(qwen2, seq_len=8192)
    with pytest.raises(UserInputError, match=r"^parallelism\.cp: 3 does not divide seq_len 8192"):
        Parallelism(cp=3).check(qwen2, seq_len=8192)
    with pytest.raises(UserInputError, match=r"^parallelism\.sequence_parallel: tp\*cp = 4"):
        Parallelism(tp=4, sequence_parallel=True).check(get_model("llama-2-7b"), seq_len=4098)


def test_train_job_check_loss_and_positions():
    probe = get_model("probe-llama7b-stack")
    TrainJob(seq_len="64K", loss="mean_square_fp32", optimizer="none").check(probe)
    with pytest.raises(UserInputError, match=r"^job\.loss: cross_entropy needs an LM head"):
        TrainJob(seq_len="64K").check(probe)
    with pytest.raises(UserInputError, match=r"^job\.loss: mean_square_fp32 is for bare"):
        TrainJob(seq_len=64, loss="mean_square_fp32").check(get_model("gpt2"))
    with pytest.raises(UserInputError, match=r"^job\.seq_len: 2048 tokens exceed gpt2's learned"):
        TrainJob(seq_len=2048).check(get_model("gpt2"))
    TrainJob(seq_len="1M").check(get_model("llama-2-7b"))  # rotary: no table to overrun
    with pytest.raises(UserInputError, match=r"^job\.prompt_len \+ job\.gen_len: 1025 tokens"):
        InferJob(prompt_len=1000, gen_len=25).check(get_model("gpt2"))
    with pytest.raises(
        UserInputError, match=r"^job\.parallelism\.cp: 3 does not divide prompt_len"
    ):
        InferJob(prompt_len=1000, parallelism=Parallelism(cp=3)).check(get_model("llama-2-7b"))


def test_default_scenario():
    s = default_scenario()
    assert s is DEFAULT_SCENARIO
    assert s.model == "llama-3.1-8b" and s.hardware == "1xH200"
    assert isinstance(s.job, TrainJob)
    assert s.job.seq_len == 131072 and s.job.optimizer == "adamw"
    assert s.job.param_dtype == "bf16" and s.job.checkpointing == "none"
    assert s.model_spec() == get_model("llama-3.1-8b")


SCENARIO_YAML = """\
name: probe-64k
model: probe-llama7b-stack
hardware: 1xH200
job:
  mode: train
  seq_len: 64K
  optimizer: none
  loss: mean_square_fp32
  parallelism: {tp: 1}
"""


def test_load_scenario_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO_YAML)
    s = load_scenario(path)
    assert s.name == "probe-64k" and s.job.seq_len == 65536 and s.job.optimizer == "none"
    assert s.model_spec().num_layers == 4


def test_scenario_round_trips_through_json_and_yaml(tmp_path):
    s = DEFAULT_SCENARIO.model_copy(update={"name": "rt"})
    (tmp_path / "s.json").write_text(json.dumps(s.model_dump(mode="json")))
    (tmp_path / "s.yml").write_text(yaml.safe_dump(s.model_dump(mode="json")))
    assert load_scenario(tmp_path / "s.json") == s
    assert load_scenario(tmp_path / "s.yml") == s


def test_scenario_inline_model_and_relative_config_path(tmp_path):
    inline = get_model("gpt2").with_layers(2).model_dump(mode="json")
    data = {"model": inline, "hardware": "1xH200", "job": {"mode": "infer", "prompt_len": 512}}
    s = scenario_from_dict(data)
    assert s.model_spec().num_layers == 2 and isinstance(s.job, InferJob)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "m.json").write_text(json.dumps(get_model("qwen3-8b").to_hf_config()))
    path = tmp_path / "s.yaml"
    path.write_text("model: cfgs/m.json\nhardware: 1xH200\njob: {mode: train, seq_len: 4K}\n")
    assert load_scenario(path).model_spec().family == "qwen3"


@pytest.mark.parametrize(
    "text,needle",
    [
        (
            "model: llama-2-7b\nhardware: 1xH200\njob: {mode: train, seq_len: 64Q}\n",
            "job.seq_len: ",
        ),
        ("model: llama-2-7b\nhardware: 1xH200\njob: {mode: train, seq_len: 8, tp: 2}\n", "job.tp"),
        (
            "model: llama-2-7b\nhardware: 1xH200\njob: {mode: train, seq_len: 8,"
            " parallelism: {tp: 3}}\n",
            "job.parallelism.tp: 3 does not divide",
        ),
        (
            "model: {name: x, family: llama}\nhardware: x\njob: {mode: train, seq_len: 8}\n",
            "model.num_layers: Field required",
        ),
        ("model: llama-9\nhardware: 1xH200\njob: {mode: train, seq_len: 8}\n", "unknown preset"),
        ("model: llama-2-7b\njob: {mode: train, seq_len: 8}\n", "hardware: Field required"),
        ("model: gpt2\nhardware: x\njob: {mode: train, seq_len: 4K}\n", "job.seq_len: 4096 tokens"),
        ("model: [llama\n", "malformed YAML at line"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_scenario_errors_name_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert needle in msg


def test_scenario_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        load_scenario(tmp_path / "none.yaml")
    bad = tmp_path / "s.toml"
    bad.write_text("x = 1")
    with pytest.raises(UserInputError, match="unknown scenario format '.toml'"):
        load_scenario(bad)
    broken = tmp_path / "s.json"
    broken.write_text("{")
    with pytest.raises(UserInputError, match=r"s\.json: malformed JSON at line 1"):
        load_scenario(broken)


def test_scenario_validates_when_built_in_python():
    with pytest.raises(ValidationError, match="cross_entropy needs an LM head"):
        ScenarioFile(model="probe-llama7b-stack", job=TrainJob(seq_len=8), hardware="1xH200")


def test_model_output_defaults_to_freed_and_is_dumped_only_when_kept():
    """Files and content hashes written before the field existed (every committed plan) read the
    same: the default form is left out of dumps."""
    freed = TrainJob(seq_len=4096)
    kept = TrainJob(seq_len=4096, model_output="kept")
    assert freed.model_output == "freed"
    assert "model_output" not in freed.model_dump() and "model_output" not in freed.model_dump_json()
    assert kept.model_dump()["model_output"] == "kept"
    assert parse_job(kept.model_dump(mode="json")) == kept
    assert TrainJob.model_validate_json(freed.model_dump_json()) == freed
    with pytest.raises(ValidationError, match="model_output"):
        TrainJob(seq_len=4096, model_output="held")
