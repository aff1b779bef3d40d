"""The probes harness's evidence document (schema v1) as pydantic models.

The harness (`torchdoctor.sandbox.probes`,
torch and the standard library only) writes plain JSON; this
module is its typed mirror on the audit side. Every section is optional with a default, so
a run that ended early (a crash before the first step, a harness error) still validates.
Unknown fields are rejected: a harness change that is not mirrored here fails loudly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.sandbox.probes.outcome import OutcomeKind

PROBES_SCHEMA_VERSION: Literal[1] = 1


class _Model(BaseModel):
    # Built on first use: only an audit that runs code reads a probe document, and building
    # these 38 models' validators costs a static audit more than analysing a file.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Outcome(_Model):
    kind: OutcomeKind
    detail: str = ""
    exit_code: int | None = None
    error_type: str | None = None
    traceback: str | None = None
    file: str | None = None
    line: int | None = None
    entry_line: int | None = None
    """The script's own line that led to `line` when that is in another file of the tree
    (the import of a local package that raised while being imported)."""
    script_outcome: str | None = None


class RunConfig(_Model):
    steps: int
    time_budget_s: float
    sample_every: int
    flush_every: int
    probes: list[str] = Field(default_factory=list)
    determinism_steps: int = 0
    export: bool = False
    int8: bool = False
    seed: int | None = None


class Device(_Model):
    cuda_available: bool = False
    cuda_used: bool = False
    name: str = "cpu"


class Timing(_Model):
    wall_s: float = 0.0
    step_ms: list[float | None] = Field(
        default_factory=list, description="indexed by step; None for a step without a time"
    )
    median_step_ms: float | None = None
    source: Literal["cuda-events", "wall-clock"] = "wall-clock"


class TensorInfo(_Model):
    shape: list[int]
    dtype: str
    device: str


class ModelSummary(_Model):
    class_: str = Field(alias="class")
    file: str | None = None
    line: int | None = None
    forward_line: int | None = None
    parameters: int = 0
    captured_input: list[TensorInfo] = Field(default_factory=list)
    roots: list[str] = Field(default_factory=list)


class Loss(_Model):
    steps: list[int] = Field(default_factory=list)
    values: list[float | None] = Field(default_factory=list)
    nonfinite_steps: list[int] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)


class NamedLocation(_Model):
    name: str
    file: str | None = None
    line: int | None = None


class Gradients(_Model):
    steps: list[int] = Field(default_factory=list)
    global_norm: list[float | None] = Field(default_factory=list)
    group_norms: list[list[float | None]] = Field(default_factory=list)
    optimizers: int = 0
    exploding: bool = False
    vanishing: bool = False
    never_received_grad: list[NamedLocation] = Field(default_factory=list)
    grad_not_in_optimizer: list[NamedLocation] = Field(default_factory=list)
    first_nonfinite: dict[str, Any] | None = None


class NonFinite(_Model):
    step: int
    phase: Literal["input", "forward", "loss", "backward"]
    module: str | None = None
    parameter: str | None = None
    file: str | None = None
    line: int | None = None


class Activation(_Model):
    module: str
    type: str
    calls_sampled: int
    mean_abs: float | None = None
    max_abs: float | None = None
    dead_fraction: float | None = None
    nonfinite_calls: int = 0


class GraphScan(_Model):
    step: int
    tensors: int
    nodes: int


class Retention(_Model):
    nodes_per_step: float
    variable: str | None = None
    file: str | None = None
    line: int | None = None
    graph_nodes: int | None = None


class Memory(_Model):
    source: Literal["rss", "cuda-allocated"] = "rss"
    steps: list[int] = Field(default_factory=list)
    bytes: list[int] = Field(default_factory=list)
    slope_bytes_per_step: float | None = 0.0
    graph_scans: list[GraphScan] = Field(default_factory=list)
    retention: Retention | None = None


class Vram(_Model):
    reserved_bytes: int
    allocated_bytes: int
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    inactive_split_bytes: int
    num_alloc_retries: int
    num_ooms: int
    expandable_segments: bool
    fragmented: bool
    advice: str = ""


class SyncCall(_Model):
    file: str
    line: int
    kind: str
    count: int


class CudaSync(_Model):
    file: str
    line: int
    count: int


class Syncs(_Model):
    per_step: float = 0.0
    calls: list[SyncCall] = Field(default_factory=list)
    cuda_sync_debug: bool = False
    cuda_syncs_per_step: float = 0.0
    cuda_syncs: list[CudaSync] = Field(default_factory=list)


class Loader(_Model):
    file: str | None = None
    line: int | None = None
    dataset: str
    batch_size: int | None = None
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None = None
    batches_per_epoch: int | None = None
    batches: int
    iterators: int = 0
    """Epochs begun: iterators made over it (a persistent loader's first is reset instead)."""
    wait_s: float


class DataLoaders(_Model):
    loaders: list[Loader] = Field(default_factory=list)
    wait_share: float | None = None
    first_step_wait_s: float | None = 0.0


class FlowCall(_Model):
    index: int
    module: str
    type: str
    depth: int
    parent: int | None = None
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    sources: list[int] = Field(default_factory=list)
    external: bool = False
    output_sources: list[int] = Field(default_factory=list)
    output_external: bool = False
    end: int | None = None
    param_dtypes: list[str] = Field(default_factory=list)
    autocast: bool = False
    grad_enabled: bool = True


class DataFlow(_Model):
    step: int | None = None
    calls: list[FlowCall] = Field(default_factory=list)
    truncated: bool = False


class RootSignature(_Model):
    """One distinct signature of a root model's forward over the run, and how often it ran."""

    type: str
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    calls: int = 0


class TensorValues(_Model):
    """One tensor position's values over the sampled steps (min/max over the samples whose
    values were all finite)."""

    index: int
    dtype: str
    shape: list[int] = Field(description="the first observation's shape")
    min: float | None = None
    max: float | None = None
    finite: bool = True
    integral: bool = Field(True, description="an integer dtype: whole numbers (labels, indices)")
    samples: int = 0


class BoundaryValues(_Model):
    """The tensors crossing one data boundary: a batch leaving the DataLoader built at
    file:line (name: its dataset class), or a root model's forward arguments (name: its class)."""

    boundary: Literal["batch", "model-input"]
    name: str
    file: str | None = None
    line: int | None = None
    tensors: list[TensorValues] = Field(default_factory=list)


class ReturnedValue(_Model):
    """One element of what a data function returned: a tensor's shape and dtype, or a type."""

    kind: Literal["tensor", "int", "float", "bool", "str", "other"]
    shape: list[int] | None = None
    dtype: str | None = None
    type: str | None = None


class DataFunctionSignature(_Model):
    """One distinct return of a user's `Dataset.__getitem__` (one item) or `collate_fn` (one
    batch), on sampled fetches in the main process."""

    role: Literal["getitem", "collate"]
    name: str = Field(description="the function's qualified name")
    file: str
    line: int = Field(description="its `def` line")
    container: Literal["tuple", "list", "dict", "single"]
    elements: list[ReturnedValue] = Field(default_factory=list)
    calls: int = 0


class GroupScore(_Model):
    group: int | float = Field(description="the column's value: a whole number, or to 4 decimals")
    rows: int
    accuracy: float
    positive_rate: float


class GroupMetricsReport(_Model):
    """Per-group metrics over the script's evaluation outputs, for the declared group column."""

    spec: str = Field(description="where the groups and labels were read: batch:G:L, feature:C:L")
    batches: int = 0
    groups: list[GroupScore] = Field(default_factory=list)
    accuracy_gap: float | None = None
    skipped: str = Field("", description="why an evaluation output could not be scored")


class DtypeMixing(_Model):
    module: str
    type: str
    reason: str


class Flops(_Model):
    step: int | None = None
    flops_per_step: int | None = None
    median_step_s: float | None = None
    achieved_tflops: float | None = None
    device_name: str | None = None
    peak_bf16_tflops: float | None = None
    mfu: float | None = None
    error: str | None = None


class Energy(_Model):
    """GPU board power sampled through NVML over the steady steps."""

    source: str
    samples: int
    mean_watts: float | None = None
    max_watts: float | None = None
    joules_per_step: float | None = None
    error: str | None = None


class ModeIssue(_Model):
    kind: Literal["train-mode-at-inference", "eval-with-grad"]
    module: str
    file: str | None = None
    line: int | None = None
    count: int


class Attempt(_Model):
    """One post-run try (export, ONNX, INT8, compile): `ok`, then what it measured or why
    it failed."""

    model_config = ConfigDict(extra="allow")
    ok: bool
    error: str | None = None
    error_type: str | None = None


class Export(_Model):
    torch_export: Attempt | None = None
    onnx: Attempt | None = None


class Determinism(_Model):
    ok: bool
    seed: int
    error: str | None = None
    outcomes: list[str] = Field(default_factory=list)
    losses: list[list[float | None]] = Field(default_factory=list)
    steps_compared: int = 0
    bitwise_equal: bool = False
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    tolerance: float = 0.0
    deterministic: bool = False
    first_divergent_step: int | None = None
    cause: Literal["hash-order"] | None = None
    """'hash-order': a run repeating the first one's PYTHONHASHSEED agreed with it."""


class SyntheticDataset(_Model):
    dataset: str
    root: str
    train: bool
    shape: list[int]
    dtype: str
    classes: int
    length: int
    reason: str


class CapturedWarning(_Model):
    category: str
    message: str
    file: str | None = None
    line: int | None = None
    count: int
    internal: bool = False
    """The warned-about call was a library's own (torch deprecating an API torch calls)."""


class CollectiveStats(_Model):
    count: int = 0
    bytes: int = 0
    wait_s: float = 0.0


class DdpSettings(_Model):
    find_unused_parameters: bool = False
    file: str | None = None
    line: int | None = None
    extra_sync_file: str | None = Field(
        None, description="the forward whose backward synchronised a second time in one step"
    )
    extra_sync_line: int | None = None


class SamplerEpoch(_Model):
    sampler: int
    epoch: int
    shuffle: bool = True
    set_epoch_calls: int = 0
    head: list[int] = Field(default_factory=list)
    file: str | None = None
    line: int | None = None


class FileEvent(_Model):
    path: str
    step: int
    collectives: int = Field(description="collectives this rank had passed when it acted")
    file: str | None = None
    line: int | None = None


class DistributedRank(_Model):
    """One rank's view of a run under torchrun (the harness's `distributed` section)."""

    rank: int = Field(ge=0)
    world_size: int = Field(ge=2)
    backend: str | None = None
    collectives: dict[str, CollectiveStats] = Field(default_factory=dict)
    ddp: DdpSettings | None = None
    syncs_by_step: dict[int, int] = Field(default_factory=dict)
    unused_parameters: list[str] = Field(default_factory=list)
    samplers: list[SamplerEpoch] = Field(default_factory=list)
    writes: list[FileEvent] = Field(default_factory=list)
    reads: list[FileEvent] = Field(default_factory=list)
    param_checksum: float | None = None


class ProbeDocument(_Model):
    schema_version: Literal[1] = PROBES_SCHEMA_VERSION
    tool: str
    script: str
    outcome: Outcome
    torch_version: str | None = None
    python_version: str | None = None
    argv: list[str] = Field(default_factory=list)
    config: RunConfig | None = None
    mode: Literal["train", "inference", "none"] = "none"
    steps_completed: int = 0
    forward_passes: int = 0
    updated_by_hand: bool = False
    """Trained with no optimizer (`p.data.add_(p.grad, alpha=-lr)`): each backward was a step."""
    root_forwards: int = 0
    """Every top-level forward of the run, those of an evaluation before the first step too."""
    device: Device = Field(default_factory=Device)
    timing: Timing = Field(default_factory=Timing)
    model: ModelSummary | None = None
    loss: Loss = Field(default_factory=Loss)
    gradients: Gradients = Field(default_factory=Gradients)
    nonfinite: NonFinite | None = None
    activations: list[Activation] = Field(default_factory=list)
    memory: Memory = Field(default_factory=Memory)
    vram: Vram | None = None
    syncs: Syncs = Field(default_factory=Syncs)
    dataloader: DataLoaders = Field(default_factory=DataLoaders)
    dataflow: DataFlow = Field(default_factory=DataFlow)
    root_signatures: list[RootSignature] = Field(default_factory=list)
    value_ranges: list[BoundaryValues] = Field(default_factory=list)
    data_functions: list[DataFunctionSignature] = Field(default_factory=list)
    group_metrics: GroupMetricsReport | None = None
    dtype_mixing: list[DtypeMixing] = Field(default_factory=list)
    flops: Flops | None = None
    energy: Energy | None = None
    mode_issues: list[ModeIssue] = Field(default_factory=list)
    export: Export | None = None
    int8: Attempt | None = None
    compile: Attempt | None = None
    determinism: Determinism | None = None
    executed_lines: dict[str, list[int]] = Field(default_factory=dict)
    """Lines the run executed in the files named by `--trace-lines` (fix verification)."""
    synthetic_datasets: list[SyntheticDataset] = Field(default_factory=list)
    warnings: list[CapturedWarning] = Field(default_factory=list)
    probe_errors: list[str] = Field(default_factory=list)
    worker_processes_left: int = 0
    distributed: DistributedRank | None = None
