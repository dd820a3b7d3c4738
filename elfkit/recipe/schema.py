"""The recipe: pydantic models for every section. Components are chosen by registry name.

Validation is two-phase (see :func:`elfkit.recipe.load.resolve`): first this schema
(strict keys everywhere except inside a component reference), then each component's
own config model, whose errors are re-rooted under the recipe path.

Defaults are not repeated here: a default component slot is built from that component's
config class (:func:`default_ref`) and the path section reads :mod:`elfkit.core.flow`'s
constants, so a default changes in one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from elfkit.components.guidance.self_cond import SelfCondConfig
from elfkit.components.objectives.elf import ElfObjectiveConfig
from elfkit.components.samplers.sde import SdeConfig
from elfkit.components.targets import TargetConfig
from elfkit.components.time import LogitNormalConfig
from elfkit.config import StrictModel
from elfkit.core.flow import NOISE_SCALE, T_EPS, T_MIN, FlowPath


class ComponentRef(BaseModel):
    """``{name: <registry name>, ...that component's config keys}``."""

    model_config = ConfigDict(extra="allow")
    name: str
    _config: Any = PrivateAttr(default=None)
    _source: Any = PrivateAttr(default=None)     # the registry's PluginSource; None for built-ins

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `sampler: euler` is shorthand for `sampler: {name: euler}`
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def config(self) -> Any:
        """The component's validated config model (set by ``resolve``)."""
        if self._config is None:
            raise RuntimeError(f"component '{self.name}' was not resolved against a registry")
        return self._config


def ref(name: str, **params: Any) -> ComponentRef:
    return ComponentRef(name=name, **params)


def default_ref(name: str, config: type[BaseModel]) -> ComponentRef:
    """The slot ``{name, ...}`` filled with ``config``'s own defaults (which stay their only source)."""
    return ref(name, **config().model_dump())


class PathSection(StrictModel):
    """The flow path shared by training and sampling."""

    noise_scale: float = Field(default=NOISE_SCALE, gt=0)
    """s in z = t·x + (1−t)·s·ε (ELF: 2.0). Also scales sampling's initial and SDE noise."""
    t_eps: float = Field(default=T_EPS, gt=0, lt=1)
    """Clamp for 1−t in x→v (ELF: 0.05)."""
    t_min: float = Field(default=T_MIN, gt=0, lt=1)
    """Clamp for t in ε→x (ε-prediction only)."""

    def flow_path(self) -> FlowPath:
        """This section as the :class:`FlowPath` value the target is bound to."""
        return FlowPath(self.noise_scale, self.t_eps, self.t_min)


class MuonSection(StrictModel):
    momentum: float = Field(default=0.95, ge=0, lt=1, allow_inf_nan=False)
    ns_steps: int = Field(default=5, ge=1)
    implementation: Literal["reference", "torch"] = "reference"
    """'reference': optax-style Muon as ELF trains it (bias-corrected Nesterov, √max(1,out/in)
    scaling). 'torch': torch.optim.Muon (differs: see docs/optimisation.md)."""
    ns_dtype: Literal["fp32", "bf16"] = "fp32"
    """Precision of the reference implementation's Newton–Schulz iterations: 'fp32' as optax
    (ELF); 'bf16' as Keller Jordan's original Muon, ~3× faster on CPUs with bf16 matmuls."""
    ns_method: Literal["direct", "gram"] = "direct"
    """'direct': the five steps on the matrix itself, as optax (ELF). 'gram': the same polynomial
    through the r×r Gram matrix for matrices whose long side is ≥ 2× the short one (the
    unembedding): ~5× fewer FLOPs there, different rounding (docs/optimisation.md)."""


class TrainSection(StrictModel):
    steps: int = Field(default=1000, gt=0)
    """Optimiser steps."""
    batch_size: int = Field(default=32, gt=0)
    """Global batch (all ranks, one accumulation step counts once)."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-steps per optimiser step; the LR uses blr·batch_size·grad_accum/256."""
    blr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    """Base LR; the LR is blr·batch_size·grad_accum/256 (ELF: 1e-3 → 2e-3 at 512)."""
    lr: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Explicit LR (overrides the blr rule)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warmup from 0, then constant (ELF)."""
    optimizer: Literal["muon", "adamw"] = "muon"
    """'muon': Muon on 2-D params + Nesterov-Adam on the rest (ELF). 'adamw': AdamW on all."""
    muon: MuonSection = MuonSection()
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    clip_grad: float | None = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Global-norm clip (None = off)."""
    ema_decay: float = Field(default=0.9999, ge=0, lt=1, allow_inf_nan=False)
    """EMA of the weights, used for sampling when sample.use_ema."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'bf16': autocast for the blocks; heads, norms and losses stay fp32 (reference)."""
    compile: bool = False
    activation_checkpointing: bool = False
    checkpoint_every: int = Field(default=200, gt=0)
    """Steps between checkpoints (also written at the end and on Ctrl-C)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, gt=0)
    max_minutes: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Wall-time budget: when reached, training ends with a checkpoint and the run moves on to
    sampling (the step reached is recorded in stages.json and the report)."""
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    """Under torchrun: DDP ('auto' for B-size models) or FSDP2 fully_shard."""
    max_bad_steps: int = Field(default=3, ge=1)
    """Consecutive steps with a non-finite loss or gradient norm (each is skipped: no optimiser,
    EMA or scheduler update) after which the run stops as diverged."""
    spike_factor: float | None = Field(default=5.0, gt=1, allow_inf_nan=False)
    """A loss above this × the median of the last `spike_window` healthy losses is a spike
    (a warning in the log and report). None = no spike detection."""
    spike_window: int = Field(default=50, ge=1)
    max_spike_steps: int | None = Field(default=50, ge=1)
    """Consecutive spiking steps after which the run stops as diverged (None = only warn)."""
    log_to: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["jsonl"])
    """Where training metrics go: train_log.jsonl (always: the report reads it), TensorBoard
    event files (`pip install 'elfkit[tracking]'`) and offline W&B, both inside the run directory."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True): on CUDA, kernels without a deterministic version
    raise instead of running (see docs/reproducibility.md). CPU training is deterministic without it."""

    @model_validator(mode="after")
    def _jsonl_always(self) -> TrainSection:
        if "jsonl" not in self.log_to:
            raise ValueError("train.log_to must include 'jsonl': the report reads train_log.jsonl "
                             f"(got {self.log_to})")
        return self


class SampleSection(StrictModel):
    sampler: ComponentRef = Field(default_factory=lambda: default_ref("sde", SdeConfig))
    grid: ComponentRef | None = None
    """Time component giving the grid; None = the recipe's training `time` (ELF)."""
    guidance: ComponentRef = Field(default_factory=lambda: default_ref("self-cond", SelfCondConfig))
    num_samples: int = Field(default=64, gt=0)
    batch_size: int = Field(default=32, gt=0)
    use_ema: bool = True
    seeds: list[int] = Field(default_factory=lambda: [0])
    """One sample set per seed; metrics are reported as mean ± standard error."""


class EvalSection(StrictModel):
    evaluators: list[ComponentRef] = Field(default_factory=list)
    references: bool = True
    """Also score held-out real text and a token-shuffled copy of it, as reference rows."""
    num_references: int = Field(default=64, gt=0)


class SweepSection(StrictModel):
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Dotted recipe key → values; the sweep is the cartesian product."""


class PluginProvenance(StrictModel):
    """Which plugin provided a component of a run (written by elfkit into the resolved recipe)."""

    component: str
    """``kind/name``, e.g. ``sampler/my-sampler``."""
    file: str | None = None
    sha256: str | None = None
    distribution: str | None = None
    version: str | None = None


class DistillRound(StrictModel):
    """One round of progressive distillation: the student learns spans of 1/student_steps."""

    student_steps: int = Field(gt=0)
    """The student's sampling steps after this round (Δ = 1/student_steps)."""
    teacher_substeps: int = Field(gt=0)
    """K: teacher Euler sub-steps per student span."""
    steps: int | None = Field(default=None, gt=0)
    """Optimiser steps of this round (None = train.steps)."""


class DistillSection(StrictModel):
    """Progressive distillation (the official distillation branch): rounds of a frozen teacher
    teaching a student with fewer steps; see docs/distillation.md."""

    teacher: str
    """An elfkit run directory (or its checkpoint file), an official checkpoint file or folder, or a
    hub id (embedded-language-flows/ELF-B-owt-torch); relative paths are from the working directory."""
    rounds: list[DistillRound] = Field(min_length=1)
    """The curriculum, in order; each round starts from the previous round's student."""
    teacher_steps: int | None = Field(default=64, gt=0)
    """student_steps × teacher_substeps of every round: the teacher's step resolution, Δ/K = 1/teacher_steps
    (official: 64, e.g. 16 × 4 … 1 × 64). Checked when ``strict``."""
    strict: bool = True
    """Refuse a round whose student_steps × teacher_substeps ≠ teacher_steps."""
    teacher_use_ema: bool = True
    """Teacher weights: its EMA (official) or its raw weights."""
    init_from_teacher: bool = True
    """Round 1's student starts from the teacher's weights (official); else from the backbone's init."""
    student_use_ema: bool = True
    """Round k>1 starts from round k−1's EMA weights (official), else its raw weights."""
    compare_steps: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    """Sampling steps at which the report compares teacher and student (the sampler's own settings)."""

    @model_validator(mode="after")
    def _curriculum(self) -> DistillSection:
        prev: DistillRound | None = None
        for i, r in enumerate(self.rounds, 1):
            if prev is not None and prev.student_steps % r.student_steps:
                raise ValueError(f"rounds[{i}].student_steps={r.student_steps} does not divide the previous round's "
                                 f"{prev.student_steps}: each round halves (or divides) the student's steps")
            product = r.student_steps * r.teacher_substeps
            fit = self.teacher_steps // r.student_steps if self.teacher_steps and not \
                self.teacher_steps % r.student_steps else "?"
            if self.strict and self.teacher_steps is not None and product != self.teacher_steps:
                raise ValueError(f"rounds[{i}]: student_steps × teacher_substeps = {r.student_steps} × "
                                 f"{r.teacher_substeps} = {product}, but distill.teacher_steps = {self.teacher_steps} "
                                 f"(Δ/K must be 1/{self.teacher_steps} in every round); set teacher_substeps to "
                                 f"{fit}, or strict: false")
            prev = r
        if any(n < 1 for n in self.compare_steps):
            raise ValueError(f"compare_steps must be positive, got {self.compare_steps}")
        return self


class Recipe(StrictModel):
    """A whole run: data → embedder → backbone/target/objective → train → sample → eval."""

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    """Seeds everything random: initial weights, data order, training noise (sampling has sample.seeds)."""
    plugins: list[str] = Field(default_factory=list)
    """One-file plugins (paths relative to the recipe file) loaded before validation."""
    provenance: list[PluginProvenance] = Field(default_factory=list)
    """Written, not typed: the plugin (file + sha256, or distribution + version) behind each
    non-built-in component of a run's resolved recipe; validation says which one is missing."""
    data: ComponentRef
    embedder: ComponentRef
    backbone: ComponentRef
    target: ComponentRef = Field(default_factory=lambda: default_ref("x", TargetConfig))
    time: ComponentRef = Field(default_factory=lambda: default_ref("logit-normal", LogitNormalConfig))
    objective: ComponentRef = Field(default_factory=lambda: default_ref("elf", ElfObjectiveConfig))
    path: PathSection = PathSection()
    train: TrainSection = TrainSection()
    sample: SampleSection = SampleSection()
    eval: EvalSection = EvalSection()
    sweep: SweepSection | None = None
    distill: DistillSection | None = None
    """Progressive distillation of a trained teacher (objective: progressive-distillation)."""

    @model_validator(mode="after")
    def _distill_objective(self) -> Recipe:
        if self.distill is not None and self.objective.name != "progressive-distillation":
            raise ValueError(f"a `distill:` section trains with objective 'progressive-distillation', "
                             f"not '{self.objective.name}'; set objective.name: progressive-distillation")
        return self


# (path in the recipe, kind) for every component slot, used by resolve()
COMPONENT_SLOTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("data",), "dataset"), (("embedder",), "embedder"), (("backbone",), "backbone"),
    (("target",), "target"), (("time",), "time"), (("objective",), "objective"),
    (("sample", "sampler"), "sampler"), (("sample", "grid"), "time"),
    (("sample", "guidance"), "guidance"),
)
