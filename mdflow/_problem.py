"""Regression problems (docs/math.md §1): data `X, y`, the loss and its gradient."""

from __future__ import annotations

import warnings
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError

NORMALIZATIONS = ("mean", "sum")


class Problem(eqx.Module):
    """Least squares `L(w) = scale/2 ||Xw - y||²` with `scale = 1/n` ("mean") or 1 ("sum").

    `X` and `y` are arrays (so one compiled solver serves every problem of the same shape);
    `w_star` is the planted solution when the data were generated, else `None`.
    """

    X: Float[Array, "n d"]
    y: Float[Array, " n"]
    normalization: str = eqx.field(static=True, default="mean")
    w_star: Float[Array, " d"] | None = None

    def __check_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"normalization={self.normalization!r}: expected one of {NORMALIZATIONS}")

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def scale(self) -> float:
        return 1.0 / self.n if self.normalization == "mean" else 1.0

    def residual(self, w: Float[Array, " d"]) -> Float[Array, " n"]:
        # Row-vector form (`w Xᵀ`, `r X`): under `vmap` these become plain GEMMs on the stacked
        # members; `X @ w` under vmap lowers to a transposing batched dot, 2.4× slower at B = 4.
        return w @ self.X.T - self.y

    def loss(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        r = self.residual(w)
        return 0.5 * self.scale * jnp.sum(r * r)

    def grad(self, w: Float[Array, " d"]) -> Float[Array, " d"]:
        """`g(w) = scale · Xᵀ(Xw − y)`."""
        return self.scale * (self.residual(w) @ self.X)

    def rel_residual(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """`||Xw − y|| / ||y||`: the interpolation error, scale-free."""
        return jnp.linalg.norm(self.residual(w)) / jnp.linalg.norm(self.y)


def validate_data(X, y, *, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values of user data; raise `InputError` naming the problem."""
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise InputError(f"{source}: X must be 2-D (n, d), got shape {X.shape}")
    if y.ndim != 1:
        raise InputError(f"{source}: y must be 1-D (n,), got shape {y.shape}")
    if X.size == 0 or y.size == 0:
        raise InputError(f"{source}: empty array (X shape {X.shape}, y shape {y.shape})")
    if X.shape[0] != y.shape[0]:
        raise InputError(f"{source}: X has {X.shape[0]} rows but y has {y.shape[0]} entries")
    for name, arr in (("X", X), ("y", y)):
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise InputError(f"{source}: {name} must be real numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise InputError(f"{source}: {name} has {bad} non-finite value(s)")
    if not np.any(y):
        raise InputError(f"{source}: y is all zeros (w = 0 already interpolates; nothing to study)")
    n, d = X.shape
    if n >= d:
        warnings.warn(f"{source}: n={n} >= d={d}: not over-parameterized, the implicit bias is moot", stacklevel=2)
    rank = np.linalg.matrix_rank(X)
    if rank < min(n, d):
        warnings.warn(f"{source}: X has rank {rank} < {min(n, d)}: interpolation may be ill-posed", stacklevel=2)
    return X.astype(np.float64), y.astype(np.float64)


def sparse_gaussian(
    n: int, d: int, k: int, *, noise: float = 0.0, seed: int = 0, signs: bool = False, normalization: str = "mean"
) -> Problem:
    """Woodworth et al. (2020) data: `X_ij ~ N(0, 1)`, `w*` k-sparse with entries `±1/√k`, `y = Xw* + noise`."""
    for key, value, lo in (("n", n, 1), ("d", d, 1), ("k", k, 1)):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise InputError(f"{key}={value!r}: expected an integer >= {lo}")
    if k > d:
        raise InputError(f"k={k}: must be <= d={d}")
    if not noise >= 0:
        raise InputError(f"noise={noise!r}: must be >= 0")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_star = np.zeros(d)
    support = rng.choice(d, size=k, replace=False)
    values = np.full(k, 1.0 / np.sqrt(k))
    if signs:
        values *= rng.choice([-1.0, 1.0], size=k)
    w_star[support] = values
    y = X @ w_star + noise * rng.standard_normal(n)
    with warnings.catch_warnings():
        if n < d:
            warnings.simplefilter("ignore")
        X, y = validate_data(X, y, source="sparse_gaussian")
    return Problem(jnp.asarray(X), jnp.asarray(y), normalization, jnp.asarray(w_star))


def load_npz(path: str | Path, *, normalization: str = "mean") -> Problem:
    """User data from an `.npz` with arrays `X` (n, d) and `y` (n,), optionally `w_star` (d,)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"problem.path={str(path)!r}: no such file")
    name = f"problem.path={str(path)!r}"
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise InputError(f"{name}: a single .npy array, not an .npz archive of X and y (save with np.savez)")
    if not magic.startswith(b"PK"):
        raise InputError(f"{name}: not an .npz archive (no zip header; save with np.savez)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in ("X", "y"):
                if key not in data.files:
                    raise InputError(f"{name}: missing array {key!r} (has {data.files})")
            for key in ("X", "y", "w_star"):
                if key in data.files:
                    arrays[key] = data[key]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        why = "holds object arrays (pickled Python objects), not numbers" if "pickle" in str(exc) else str(exc)
        raise InputError(f"{name}: cannot read as .npz ({why})") from None
    X, y = validate_data(arrays["X"], arrays["y"], source=str(path))
    w_star = None
    if "w_star" in arrays:
        w_star = np.asarray(arrays["w_star"], dtype=np.float64)
        if w_star.shape != (X.shape[1],):
            raise InputError(f"{path}: w_star has shape {w_star.shape}, expected ({X.shape[1]},)")
        w_star = jnp.asarray(w_star)
    return Problem(jnp.asarray(X), jnp.asarray(y), normalization, w_star)
