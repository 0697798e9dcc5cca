"""Upper bounds on every count and size a user may give: the one place they are written.

Models: the largest values tierplan accepts anywhere (schemas, CLI flags, files). Each bound is
far above anything real, so a legitimate input never meets it, and low enough that arithmetic on
it stays in int64 / float64 and a loop or array sized by it ends in bounded time and memory.
Assumes: the largest models and clusters of 2025 (~2^10 GPUs per job axis, 2^20-token
contexts, 2^18-entry vocabularies) times a margin of 20x to 1000x.
Ignores: per-field physical limits (HBM of a real GPU): those are the presets' business.
"""

from __future__ import annotations

# --- model shapes -------------------------------------------------------------------------------
MAX_LAYERS = 4096  # decoder layers: the deepest published LLMs have ~200
MAX_HIDDEN = 1 << 20  # hidden / intermediate / head widths: today's widest are ~2^15 (dense FFN)
MAX_HEADS = 1 << 14  # attention heads (query or KV)
MAX_VOCAB = 1 << 24  # vocabulary entries: the largest are ~2^18

# --- job shapes ---------------------------------------------------------------------------------
MAX_SEQ_LEN = 1 << 26  # tokens per sequence: 64M, 64x the longest contexts trained so far
MAX_BATCH = 1 << 20  # sequences per (micro-)batch
MAX_PARALLEL_DEGREE = 1 << 20  # tp, cp, dp, pp, ep: a million GPUs along one axis

# --- hardware -----------------------------------------------------------------------------------
MAX_GPUS = 1 << 16  # GPUs in one node file (topology checks walk every GPU's path)
MAX_HW_COUNT = 1 << 20  # SMs, sockets, lanes, queue depth: real parts have at most thousands
MAX_BYTES = 1 << 60  # any memory size or byte count (1 EiB)
MAX_RATE = 1e18  # bytes/s or FLOP/s of one device or link (1 EB/s, 1 EFLOP/s)
MAX_SECONDS = 1e9  # any duration (about 30 years)

# --- files --------------------------------------------------------------------------------------
MAX_FILE_BYTES = 256 * 1024**2  # a scenario, config, node or measurement file
MAX_SNAPSHOT_BYTES = 4 * 1024**3  # a PyTorch memory snapshot (a pickle of plain data)
MAX_NESTING = 64  # JSON/YAML nesting depth: real files nest fewer than 10 levels
MAX_YAML_ALIASES = 32  # YAML alias uses per file: a few anchors are fine, a billion-laughs bomb is not
MAX_LAYOUT_BUFFERS = 1 << 22  # buffers in one layout instance (CSV rows, snapshot allocations)

# --- run controls -------------------------------------------------------------------------------
MAX_TIME_LIMIT_S = 7 * 24 * 3600.0  # a solver's or heuristic's time limit: one week
MAX_REPEATS = 1 << 16  # timed repeats of a measurement
MAX_ECHO_CHARS = 40  # characters of a bad value echoed back in an error message


def echo(value: object) -> str:
    """``repr(value)`` cut to ``MAX_ECHO_CHARS`` characters, for error messages."""
    text = repr(value)
    if len(text) <= MAX_ECHO_CHARS:
        return text
    return f"{text[:MAX_ECHO_CHARS - 12]}... ({len(text):,} chars)"
