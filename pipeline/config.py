"""Typed configs of the commands above the stages, which read runs of any kind: ``pipeline``,
``evaluate``, ``compare``, ``export-logits``, ``recommend`` and ``serve`` (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.config import MAX_COUNT, check, option, parse_metric
from student.config import TEMPERATURES

RUNS_HELP = (
    "A run (student or teacher); repeat it for several runs that score as one: the K runs of a "
    "cross-fit (--folds K) give each user's scores from the run that held that user out, any other "
    "mix is an ensemble (the mean of the members' probabilities)."
)
WEIGHTS_HELP = "Ensemble weights: equal, or fit (EM on the likelihood of the validation targets)."
ITEM_BLOCK_HELP = (
    "Score the catalogue N items at a time: memory grows with N, not with the catalogue, for the same "
    "results. 0: the whole catalogue at once. Default: blocks only when a batch's scores would pass "
    "2**26 values (256 MiB)."
)


@dataclass(frozen=True)
class PipelineConfig:
    """``distill pipeline``: every stage in order, with the knobs that matter for a first run.

    prepare (the synthetic data unless ``data`` names a prepared directory) → the teacher's SASRec
    (``teacher_hidden`` wide) → the teacher (an LLM teacher on it, or that SASRec itself with
    ``teacher = "sasrec"``) → export-logits → students ``student_hidden`` wide: the plain one (α = 0)
    and one per point of ``kd`` × ``alphas`` × ``temperatures`` (``rank`` has no temperature), each
    over ``seeds`` paired seeds, one point picked on the mean validation NDCG@10; none when the teacher
    ranks below the plain student on validation. Each stage's full config is written to its own run
    directory; run the stages one by one for every option.
    """

    output: str = option("", "Directory for every stage's output.", "--output", "-o")
    data: str | None = option(None, "A prepared dataset directory (default: the synthetic data).")
    num_users: int = option(1000, "Synthetic data: number of users.")
    num_items: int = option(500, "Synthetic data: number of items.")
    llm: str = option("tiny", "Teacher backbone: 'tiny', a .gguf file, a model directory or a hub id.")
    teacher: Literal["moe-lora", "e4srec", "sasrec", "ensemble", "cross-fit"] = option(
        "moe-lora",
        "Teacher: an LLM teacher on the teacher's SASRec; that SASRec alone (compression); an ensemble of "
        "--members SASRec seeds; or the --members folds of a cross-fit of SASRecs.",
    )
    members: int = option(3, "--teacher ensemble: SASRec seeds; --teacher cross-fit: folds.")
    teacher_hidden: int = option(64, "Width of the teacher's SASRec (the LLM teacher's ID encoder).")
    student_hidden: int = option(16, "Width of the students, plain and distilled.")
    seeds: int = option(1, "Paired seeds per student; the grid point is picked on their mean validation.")
    student_epochs: int = option(30, "Maximum epochs of each student and of the teacher's SASRecs.")
    teacher_epochs: int = option(1, "Maximum epochs of an LLM teacher (moe-lora, e4srec).")
    max_len: int = 50
    length_group: int = 8  # every SASRec's batches: users of similar length (student-train --length-group)
    teacher_prompt_items: int = 10
    positions: int | None = None  # every training target gets soft labels (dense KD); N: each user's last N
    top_k: int = 100
    kd: tuple[Literal["kl", "rank"], ...] = option(
        ("kl",), "Distillation losses to try (comma-separated: kl, rank)."
    )
    alphas: tuple[float, ...] = option(
        (0.5,), "KD weights to try (comma-separated); alpha 0, the plain student, is always a candidate."
    )
    temperatures: tuple[float, ...] = option((0.5, 1.0), "KD temperatures to try with kl (comma-separated).")
    seed: int = option(0, "Random seed of every stage.")
    device: str = option("auto")
    overwrite: bool = option(False, "Replace the runs of an earlier pipeline.")

    def __post_init__(self) -> None:
        check(
            self,
            required={"output": "--output DIR"},
            at_least_one=(
                "num_users",
                "num_items",
                "student_epochs",
                "teacher_epochs",
                "max_len",
                "length_group",
                "teacher_prompt_items",
                "teacher_hidden",
                "student_hidden",
                "seeds",
                "members",
                "positions",
                "top_k",
            ),
            seeds=("seed",),
        )
        if self.data is None and self.num_items < 10:
            raise ValueError(f"synthetic data needs num_items >= 10, got {self.num_items}")
        if self.teacher == "cross-fit" and self.members < 2:
            raise ValueError(f"a cross-fit teacher needs --members (folds) >= 2, got {self.members}")
        if self.teacher == "ensemble" and self.members < 2:
            raise ValueError(
                f"an ensemble teacher needs --members (SASRec seeds) >= 2, got {self.members}; "
                "--teacher sasrec is one SASRec"
            )
        last = self.seed + max(self.seeds, self.members if self.teacher == "ensemble" else 1) - 1
        if last > 2**32 - 1:
            raise ValueError(
                f"--seed {self.seed} with --seeds {self.seeds}"
                + (f" and --members {self.members}" if self.teacher == "ensemble" else "")
                + f" runs seeds up to {last}, past the largest seed, {2**32 - 1}"
            )
        if not self.kd or not self.alphas:
            raise ValueError("the grid needs at least one --kd loss and one --alphas value")
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError(f"alphas must be in [0, 1], got {self.alphas}")
        low, high = TEMPERATURES
        if not self.temperatures or any(not low <= t <= high for t in self.temperatures):
            raise ValueError(f"temperatures must be in [{low:g}, {high:g}], got {self.temperatures}")
        for name, values in (("alphas", self.alphas), ("temperatures", self.temperatures)):
            # Each value names its students' run directories (`:g`): two values, one name, one directory.
            if len({f"{v:g}" for v in values}) != len(set(values)):
                raise ValueError(
                    f"--{name} {','.join(map(str, values))}: values that differ only past 6 significant "
                    "digits would share their runs' directories; give distinct values"
                )


@dataclass(frozen=True)
class EvaluateConfig:
    """``distill evaluate``: full-ranking metrics of a saved run (a student or either teacher), or of
    several scoring as one (a cross-fit, an ensemble)."""

    runs: tuple[str, ...] = option((), RUNS_HELP, "--run", multiple=True)
    data: str = option("", "The dataset directory the run was trained on.")
    split: Literal["valid", "test", "both"] = option("both", "Which held-out target to rank.")
    weights: Literal["equal", "fit"] = option("equal", WEIGHTS_HELP)
    batch_size: int = option(256, "Users per scoring batch.")
    item_block: int | None = option(None, ITEM_BLOCK_HELP)
    device: str = option("auto")

    def __post_init__(self) -> None:
        check(self, required={"runs": "--run RUN", "data": "--data DIR"}, at_least_one=("batch_size",))
        check_item_block(self)


@dataclass(frozen=True)
class CompareConfig:
    """``distill compare``: several runs side by side on one split of one dataset, with per-user paired
    differences of a metric against the first run and a bootstrap 95% interval of their mean."""

    runs: tuple[str, ...] = ()
    data: str = option("", "The dataset directory the runs were trained on.")
    split: Literal["valid", "test"] = option("test", "Which held-out target to rank.")
    weights: Literal["equal", "fit"] = option("equal", WEIGHTS_HELP)
    metric: str = option("ndcg@10", "Metric of the paired differences: hr@K, ndcg@K or mrr.")
    samples: int = option(10000, "Bootstrap resamples of the users (at least 200).")
    seed: int = option(0, "Seed of the bootstrap.")
    batch_size: int = option(256, "Users per scoring batch.")
    item_block: int | None = option(None, ITEM_BLOCK_HELP)
    device: str = option("auto")

    def __post_init__(self) -> None:
        check(self, required={"data": "--data DIR"}, at_least_one=("samples", "batch_size"), seeds=("seed",))
        check_item_block(self)
        if len(self.runs) < 2:
            raise ValueError("compare needs at least two runs: RUN RUN [RUN …]")
        if self.samples < 200:  # 2.5% of fewer resamples is a handful: the interval is noise
            raise ValueError(f"--samples must be at least 200 for a 95% interval, got {self.samples}")
        parse_metric(self.metric)


@dataclass(frozen=True)
class ExportConfig:
    """``distill export-logits``: a scorer's soft labels over the catalogue, as a score directory.

    The scorer is a ``teacher-train`` run or a ``student-train`` run (any scorer is a teacher), or
    several of them scoring as one (a cross-fit, an ensemble: :func:`pipeline.runs.open_runs`).

    ``positions`` is how many of each user's last training targets get a row (None: every one);
    ``top_k`` how many items each row keeps (None: the whole catalogue). ``all_positions`` and
    ``full`` are the same as ``positions = None`` and ``top_k = None``, and win over them.
    """

    runs: tuple[str, ...] = option((), RUNS_HELP, "--run", multiple=True)
    weights: Literal["equal", "fit"] = option("equal", WEIGHTS_HELP)
    data: str = option("", "The dataset directory the run was trained on.")
    output: str = option("", "Score directory to write.", "--output", "-o")
    top_k: int | None = option(100, "Items kept per row (--full keeps the whole catalogue).")
    full: bool = option(False, "Keep every item: full distributions (overrides --top-k).")
    positions: int | None = option(
        4, "Score each user's last N training targets (--all-positions: every one)."
    )
    all_positions: bool = option(False, "Score every training target (overrides --positions).")
    per_prefix: bool = option(
        False, "One forward per scored position instead of one per window (the anchors' way; for comparison)."
    )
    batch_size: int = option(16, "Windows per scoring batch.")
    item_block: int | None = option(None, ITEM_BLOCK_HELP + " With --top-k only: --full keeps every score.")
    device: str = option("auto")
    overwrite: bool = option(False)

    def __post_init__(self) -> None:
        check(  # before the flags override them: --full --top-k -5 is still nonsense
            self,
            required={"runs": "--run RUN", "data": "--data DIR", "output": "--output SCORES"},
            at_least_one=("top_k", "positions", "batch_size"),
        )
        for flag, key in (("full", "top_k"), ("all_positions", "positions")):
            if getattr(self, flag):
                object.__setattr__(self, key, None)
        check_item_block(self)


INDEX_HELP = (
    "none: score every item; exact or hnsw: a student's top-k from a faiss inner-product index of its "
    "item vectors (hnsw: approximate, for large catalogues; needs the index extra)."
)


@dataclass(frozen=True)
class RecommendConfig:
    """``distill recommend``: top-k items for one user of the dataset or for a history of raw item ids."""

    run: str = option("", "A run of `distill student-train` or `teacher-train`.")
    data: str | None = option(None, "Dataset directory (default: the one the run was trained on).")
    user: str | None = option(None, "Raw id of a user in the dataset: recommend after their whole history.")
    history: str | None = option(None, "Raw item ids, oldest first, separated by spaces or commas.")
    k: int = option(10, "Number of items to recommend.")
    include_seen: bool = option(False, "Also recommend items the history already holds.")
    json: bool = option(False, "Print JSON instead of a table.")
    index: Literal["none", "exact", "hnsw"] = option("none", INDEX_HELP)
    device: str = option("cpu")

    def __post_init__(self) -> None:
        check(self, required={"run": "--run RUN"}, at_least_one=("k",))
        if (self.user is None) == (self.history is None):
            raise ValueError("give either --user RAW_USER or --history 'RAW RAW ...', not both or neither")


@dataclass(frozen=True)
class ServeConfig:
    """``distill serve``: a student behind HTTP (``POST /recommend``, ``GET /health``) under uvicorn."""

    run: str = option("", "A run of `distill student-train` or `teacher-train`.")
    data: str | None = option(None, "Dataset directory (default: the one the run was trained on).")
    host: str = option("127.0.0.1", "Interface to listen on.")
    port: int = option(8000, "Port to listen on.")
    max_k: int = option(100, "Largest k a request may ask for.")
    max_history: int = option(2000, "Longest history a request may send (raw item ids).")
    max_batch: int = option(
        32, "Score up to N requests that arrived while another was scored in one call (1: no batching)."
    )
    threads: int = option(1, "Torch threads for scoring (one request is small: more threads mostly wait).")
    index: Literal["none", "exact", "hnsw"] = option("none", INDEX_HELP)
    device: str = option("cpu")

    def __post_init__(self) -> None:
        check(
            self,
            required={"run": "--run RUN"},
            at_least_one=("max_k", "max_history", "max_batch", "threads"),
        )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


def check_item_block(cfg) -> None:
    """``--item-block``: unset, 0 (the whole catalogue at once) or a block of up to MAX_COUNT items."""
    if cfg.item_block is not None and not 0 <= cfg.item_block <= MAX_COUNT:
        raise ValueError(
            f"item_block must be in 0..{MAX_COUNT} (0: the whole catalogue at once), got {cfg.item_block}"
        )
