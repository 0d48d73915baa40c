# Type stub of embedcluster._core, the native engine's bindings (csrc/bindings). Keep it equal to
# what the module exposes: tests/test_core_stub.py compares names, members and parameters.
from types import ModuleType as _ModuleType
from typing import Callable, ClassVar, Literal, TypedDict, Union, overload

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]
# progress(step, index, count, done, total) of the long calls: the step the work is in ("kNN search",
# "k-means iteration", ...), its number index of count (0 of 0 when not numbered), and the tile-driver
# blocks done of total started in the step. Called with the Ctrl-C check (main thread, at most every
# 50 ms) and once when the work returns; an exception it raises stops the work and propagates.
_Progress = Union[Callable[[str, int, int, int, int], object], None]

__version__: str

class MemoryLimitError(MemoryError):
    """A call would need more working memory than memory_limit allows (the message names the size)."""

class ThreadStartError(MemoryError):
    """The threads a call asked for (n_threads) could not be started."""

class Metric:
    """The engine's metrics: l2 (squared Euclidean distance), ip (inner product, a similarity)
    and cosine (1 - cos)."""

    l2: ClassVar[Metric]
    ip: ClassVar[Metric]
    cosine: ClassVar[Metric]
    __members__: ClassVar[dict[str, Metric]]
    def __init__(self, value: int) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __index__(self) -> int: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

# A metric: the enum or its name.
_MetricLike = Union[Metric, Literal["l2", "ip", "cosine"]]
_Precision = Literal["auto", "fp32"]
# None: default_memory_limit() when the call starts; 0: no limit; else bytes >= 1.
_MemoryLimit = Union[None, int, float]

class KMeansResult:
    """What kmeans_fit returns."""

    @property
    def centers(self) -> _F32: ...
    @property
    def labels(self) -> _I64: ...
    @property
    def inertia(self) -> float: ...
    @property
    def n_iter(self) -> int: ...
    @property
    def n_empty_repaired(self) -> int: ...
    @property
    def computed_fraction(self) -> float: ...
    @property
    def mover_fraction(self) -> float: ...

class DbscanResult:
    """What dbscan_fit returns."""

    @property
    def labels(self) -> _I64: ...
    @property
    def is_core(self) -> _U8: ...
    @property
    def counts(self) -> _I64: ...
    @property
    def n_clusters(self) -> int: ...
    @property
    def tile_pairs(self) -> int: ...
    @property
    def pairs_computed_pass1(self) -> int: ...
    @property
    def pairs_computed_pass2(self) -> int: ...
    @property
    def pairs_after_bounds(self) -> int: ...
    @property
    def projection_bounds(self) -> bool: ...
    @property
    def rows_copy(self) -> bool: ...
    @property
    def rows_computed_pass1(self) -> int: ...
    @property
    def rows_all_neighbours_pass1(self) -> int: ...
    @property
    def rows_pruned_inner_product_pass1(self) -> int: ...

class TileRate:
    """What tile_rate returns."""

    @property
    def seconds(self) -> float: ...
    @property
    def gflops(self) -> float: ...
    @property
    def kernels(self) -> str: ...

class _BuildInfo(TypedDict, total=False):
    """What build_info returns (a dict, printed as JSON by `embedcluster info`)."""

    version: str
    openmp: bool
    openmp_version: int
    max_threads: int
    cuda_compiled: bool
    build_flags: str
    march_native: bool
    compiler: str
    kernels_available: list[str]
    kernels_active: str
    cpu_features: list[str]

class _KernelSelfTest(TypedDict):
    """One kernel set's self-test (a tile and the epilogue primitives against fp64)."""

    name: str
    passed: bool
    worst_error_ratio: float  # largest |tile error| / proven bound; < 1 when it passed
    failure: str  # what disagreed, "" when it passed

class _KernelRate(TypedDict):
    """One kernel set measured on a family's tile."""

    name: str
    ns_per_tile: float
    gflops: float
    from_strip: bool  # extrapolated from a run on a strip of rows (a set ruled out early)

class _KernelFamilyChoice(TypedDict):
    """The kernel set chosen for one operation family at one depth bucket."""

    family: str  # "tile", "kmeans", "knn", "dbscan", or "fp32" (precision="fp32")
    d: int  # the depth measured at
    tile: tuple[int, int]  # rows x cols of the tile measured
    chosen: str
    rates: list[_KernelRate]  # fastest first

class _KernelChoice(TypedDict):
    """What kernel_choice returns."""

    forced: str | None  # the set forced by EMBEDCLUSTER_ISA or select_kernels, else None
    manual_only: list[str]  # sets never chosen automatically (only when forced)
    self_tests: list[_KernelSelfTest]
    families: list[_KernelFamilyChoice]  # the choices measured so far, in order

@overload
def knn_search(
    database: _F32,
    queries: _F32,
    k: int,
    metric: _MetricLike = "l2",
    exclude_self: bool = False,
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
    self_join: bool = True,
    exact_values: Literal[False] = False,
    progress: _Progress = None,
) -> tuple[_F32, _I64]: ...
@overload
def knn_search(
    database: _F32,
    queries: _F32,
    k: int,
    metric: _MetricLike = "l2",
    exclude_self: bool = False,
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
    self_join: bool = True,
    *,
    exact_values: Literal[True],
    progress: _Progress = None,
) -> tuple[_F64, _I64]: ...
def radius_search(
    database: _F32,
    queries: _F32,
    radius: float,
    metric: _MetricLike = "l2",
    exclude_self: bool = False,
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
    progress: _Progress = None,
) -> tuple[_I64, _I64, _F32]: ...
def radius_count(
    database: _F32,
    queries: _F32,
    radius: float,
    metric: _MetricLike = "l2",
    exclude_self: bool = False,
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
) -> _I64: ...
def radius_count_both(
    database: _F32,
    queries: _F32,
    radius: float,
    metric: _MetricLike = "l2",
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
) -> tuple[_I64, _I64]: ...
def radius_pair_links(
    database: _F32,
    queries: _F32,
    radius: float,
    queries_core: npt.ArrayLike,
    database_core: npt.ArrayLike,
    metric: _MetricLike = "l2",
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
) -> tuple[_I64, _I64, _F32, _I64, _F32]: ...
def kmeans_fit(
    X: _F32,
    n_clusters: int,
    max_iter: int = 300,
    tol: float = 1e-4,
    n_init: int = 1,
    metric: _MetricLike = "l2",
    init: Union[Literal["k-means++", "k-means||", "random"], _F32] = "k-means++",
    seed: int = 0,
    sample_weight: Union[_F32, None] = None,
    n_local_trials: int = 0,
    n_threads: int = 0,
    precision: _Precision = "auto",
    prune: Union[Literal["auto"], bool] = "auto",
    memory_limit: _MemoryLimit = None,
    movers: int = -1,
    progress: _Progress = None,
) -> KMeansResult: ...
def kmeans_init(
    X: _F32,
    n_clusters: int,
    metric: _MetricLike = "l2",
    init: Literal["k-means++", "k-means||", "random"] = "k-means++",
    seed: int = 0,
    sample_weight: Union[_F32, None] = None,
    n_local_trials: int = 0,
    n_threads: int = 0,
    memory_limit: _MemoryLimit = None,
    progress: _Progress = None,
) -> _F32: ...
def kmeans_assign(
    centers: _F32,
    X: _F32,
    metric: _MetricLike = "l2",
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
    progress: _Progress = None,
) -> tuple[_I64, _F32]: ...
# ---- k-means over chunks (csrc/core/kmeans_chunk.hpp): per-chunk calls and exact reductions.
_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]

KMEANS_PRUNE_MIN_K: int
KMEANS_PARALLEL_ROUNDS: int

class KMeansChunkStats:
    """What kmeans_chunk_stats returns: merge n by sum, the rest by maximum."""

    @property
    def n(self) -> int: ...
    @property
    def colmax(self) -> _F64: ...
    @property
    def absmax(self) -> _F64: ...
    @property
    def wmax(self) -> float: ...

class KMeansChunkState:
    """A chunk's labels, pruning bounds and centre sums between passes."""

    def __init__(self) -> None: ...
    @property
    def labels(self) -> _I64: ...
    @property
    def sums(self) -> _U64: ...
    @property
    def valid(self) -> bool: ...
    @property
    def rows_computed(self) -> int: ...
    def copy(self) -> KMeansChunkState: ...

class KMeansSeedState:
    """A chunk's distances to the nearest k-means|| candidate so far."""

    def __init__(self) -> None: ...
    @property
    def closest(self) -> _F32: ...
    def copy(self) -> KMeansSeedState: ...

def kmeans_chunk_stats(
    X: _F32, metric: _MetricLike = "l2", sample_weight: Union[_F32, None] = None, row_offset: int = 0,
    n_threads: int = 0,
) -> KMeansChunkStats: ...
def kmeans_fixed_scales(n_total: int, colmax: _F64, wmax: float, weighted: bool) -> tuple[_F64, float]: ...
def kmeans_chunk_moments(
    X: _F32, absmax: _F64, n_total: int, metric: _MetricLike = "l2", n_threads: int = 0
) -> _U64: ...
def kmeans_mean_variance(limbs: _U64, absmax: _F64, n_total: int) -> float: ...
def kmeans_chunk_pass(
    state: KMeansChunkState, centers: _F32, X: _F32, qscale: _F64, wscale: float, metric: _MetricLike = "l2",
    sample_weight: Union[_F32, None] = None, prune: bool = True, n_threads: int = 0, precision: _Precision = "auto",
) -> int: ...
def kmeans_chunk_farthest(
    centers: _F32, X: _F32, labels: _I64, count: int, metric: _MetricLike = "l2", n_threads: int = 0,
) -> tuple[_F32, _I64]: ...
def kmeans_update_centres(
    centers: _F32, sums: _U64, qscale: _F64, wscale: float, metric: _MetricLike = "l2",
    repair_X: Union[_F32, None] = None, repair_weight: Union[_F32, None] = None,
    repair_labels: Union[_I64, None] = None,
) -> tuple[_F32, float, _I64]: ...
def kmeans_start_centres(centers: _F32, metric: _MetricLike = "l2") -> _F32: ...
def kmeans_objective_scale(
    n_total: int, absmax: _F64, wmax: float, centers: _F32, metric: _MetricLike = "l2"
) -> float: ...
def kmeans_chunk_objective(
    centers: _F32, X: _F32, labels: _I64, scale: float, metric: _MetricLike = "l2",
    sample_weight: Union[_F32, None] = None, n_threads: int = 0,
) -> _U64: ...
def kmeans_objective_total(limbs: _U64, scale: float) -> float: ...
def kmeans_seed_units(X: _F32, wscale: float, sample_weight: Union[_F32, None] = None) -> int: ...
def kmeans_seed_pick(X: _F32, target: int, wscale: float, sample_weight: Union[_F32, None] = None) -> int: ...
def kmeans_seed_potential_scale(n_total: int, absmax: _F64, wmax: float, metric: _MetricLike = "l2") -> float: ...
def kmeans_seed_draws(seed: int, total_units: int) -> tuple[int, int]: ...
def kmeans_seed_nearer(
    state: KMeansSeedState, batch: _F32, X: _F32, pscale: float, metric: _MetricLike = "l2",
    sample_weight: Union[_F32, None] = None, n_threads: int = 0, precision: _Precision = "auto",
) -> _U64: ...
def kmeans_seed_sample(
    state: KMeansSeedState, X: _F32, pot: float, n_clusters: int, seed: int, round: int, row_offset: int = 0,
    sample_weight: Union[_F32, None] = None,
) -> _F32: ...
def kmeans_seed_candidate_units(
    candidates: _F32, X: _F32, wscale: float, metric: _MetricLike = "l2", sample_weight: Union[_F32, None] = None,
    n_threads: int = 0, precision: _Precision = "auto",
) -> _U64: ...
def kmeans_parallel_finish(
    candidates: _F32, units: _U64, wscale: float, n_clusters: int, seed: int, metric: _MetricLike = "l2",
    tol: float = 1e-4, n_local_trials: int = 0, n_threads: int = 0, precision: _Precision = "auto",
) -> _F32: ...
def dbscan_fit(
    X: _F32,
    eps: float,
    min_samples: int = 5,
    metric: _MetricLike = "l2",
    prune: bool = True,
    n_threads: int = 0,
    memory_limit: _MemoryLimit = None,
    progress: _Progress = None,
) -> DbscanResult: ...
def default_memory_limit() -> float: ...
def build_info() -> _BuildInfo: ...
def tile_rate(rows: int, cols: int, d: int, precision: _Precision = "auto", n_threads: int = 0) -> TileRate: ...
def select_kernels(name: str) -> None: ...
def kernel_choice(d: int = 0) -> _KernelChoice: ...
def kernel_warnings() -> list[str]: ...
def active_kernels() -> str: ...
def _kernel_product(name: str, a: _F32, b: _F32, gathered: bool = False) -> _F32: ...
def _amx_tile_peak(iterations: int) -> float: ...
def _stop_native_work_at_exit() -> int: ...
def _set_exit_wait(seconds: float) -> None: ...
def _set_poll_interval(seconds: float) -> float: ...

# The host model of the CUDA engine (csrc/cuda; embedcluster.cuda with engine="model").
cuda_model: _ModuleType
