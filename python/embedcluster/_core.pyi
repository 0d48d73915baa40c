# Type stub of embedcluster._core, the native engine's bindings (csrc/bindings). Keep it equal to
# what the module exposes: tests/test_core_stub.py compares names, members and parameters.
from typing import ClassVar, Literal, TypedDict, Union

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]

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
) -> tuple[_F32, _I64]: ...
def radius_search(
    database: _F32,
    queries: _F32,
    radius: float,
    metric: _MetricLike = "l2",
    exclude_self: bool = False,
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
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
) -> _F32: ...
def kmeans_assign(
    centers: _F32,
    X: _F32,
    metric: _MetricLike = "l2",
    n_threads: int = 0,
    precision: _Precision = "auto",
    memory_limit: _MemoryLimit = None,
) -> tuple[_I64, _F32]: ...
def dbscan_fit(
    X: _F32,
    eps: float,
    min_samples: int = 5,
    metric: _MetricLike = "l2",
    prune: bool = True,
    n_threads: int = 0,
    memory_limit: _MemoryLimit = None,
) -> DbscanResult: ...
def default_memory_limit() -> float: ...
def build_info() -> _BuildInfo: ...
def tile_rate(rows: int, cols: int, d: int, precision: _Precision = "auto", n_threads: int = 0) -> TileRate: ...
def select_kernels(name: str) -> None: ...
def active_kernels() -> str: ...
def _stop_native_work_at_exit() -> int: ...
def _set_exit_wait(seconds: float) -> None: ...
