"""Problems (docs/math.md §1, §9): data `X, y` and a loss `L(w) = scale · Σ_i ℓ(⟨x_i, w⟩, y_i)`, its
gradient and the curvature the structured stiff solver needs; the built-in data generators."""

from __future__ import annotations

import abc
import warnings
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import RANGES, InputError

NORMALIZATIONS = ("mean", "sum")

Margins = Float[Array, " n"]


def require_x64() -> None:
    """Refuse to solve without float64: in float32 mdflow's solves report `ok` far outside their
    tolerance (docs/design.md, "Process-wide settings"). mdflow never turns x64 on in a user's program. The data generators and loader ask too: in float32 their
    arrays would be rounded silently."""
    if not jax.config.jax_enable_x64:
        raise InputError(
            "jax_enable_x64=False: mdflow solves in float64 only; call "
            "jax.config.update(\"jax_enable_x64\", True) at the start of your program, before creating arrays "
            "(the mdflow command does this itself)")


class AbstractLoss(eqx.Module):
    """A loss of the form `Σ_i ℓ(m_i, y_i)` of the margins `m = Xw`: what the flows (its derivative),
    the structured stiff solver (its curvature, the `h` of `Xᵀ diag(h) X`), the duals (its derivative)
    and the stop rule ask of it. A loss has no array fields: it is part of a compiled program."""

    name: ClassVar[str]
    # What ends a run: `"interpolation"` (the relative residual `‖Xw − y‖/‖y‖` falls below
    # `solve.stop_rel_residual`) or `"loss"` (the loss falls below `solve.stop_loss`; a classification
    # loss never reaches 0).
    stop_rule: ClassVar[str]

    @abc.abstractmethod
    def total(self, m: Margins, y: Margins) -> Float[Array, ""]:
        """`Σ_i ℓ(m_i, y_i)`."""

    @abc.abstractmethod
    def derivative(self, m: Margins, y: Margins) -> Margins:
        """`∂ℓ/∂m` at each sample."""

    @abc.abstractmethod
    def curvature(self, m: Margins, y: Margins) -> Margins | None:
        """`∂²ℓ/∂m²` at each sample, or None where it is 1 everywhere (squared loss: the Jacobian's `XᵀX`
        needs no weights, and its programs stay those of the least-squares solver)."""

    @abc.abstractmethod
    def check_labels(self, y: np.ndarray, source: str) -> None:
        """`InputError` naming `source` unless the labels suit this loss."""


class SquaredLoss(AbstractLoss):
    """`ℓ(m, y) = ½ (m − y)²`: regression, stopped at interpolation."""

    name: ClassVar[str] = "squared"
    stop_rule: ClassVar[str] = "interpolation"

    def total(self, m, y):
        r = m - y
        return 0.5 * jnp.sum(r * r)

    def derivative(self, m, y):
        return m - y

    def curvature(self, m, y):
        return None

    def check_labels(self, y, source):
        pass


class _AbstractMarginLoss(AbstractLoss):
    """Classification losses of the margin `y·m` (labels ±1), stopped at a loss target."""

    stop_rule: ClassVar[str] = "loss"

    def check_labels(self, y, source):
        y = np.asarray(y)
        bad = ~np.isin(y, (-1.0, 1.0))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise InputError(f"{source}: the {self.name} loss needs labels y in {{-1, +1}}; y[{i}] = {float(y[i])!r}")


class LogisticLoss(_AbstractMarginLoss):
    """`ℓ(m, y) = log(1 + e^{−ym})`."""

    name: ClassVar[str] = "logistic"

    def total(self, m, y):
        return jnp.sum(jax.nn.softplus(-y * m))

    def derivative(self, m, y):
        return -y * jax.nn.sigmoid(-y * m)

    def curvature(self, m, y):
        return jax.nn.sigmoid(y * m) * jax.nn.sigmoid(-y * m)


class ExponentialLoss(_AbstractMarginLoss):
    """`ℓ(m, y) = e^{−ym}`."""

    name: ClassVar[str] = "exponential"

    def total(self, m, y):
        return jnp.sum(jnp.exp(-y * m))

    def derivative(self, m, y):
        return -y * jnp.exp(-y * m)

    def curvature(self, m, y):
        return jnp.exp(-y * m)


LOSSES: dict[str, type[AbstractLoss]] = {cls.name: cls for cls in (SquaredLoss, LogisticLoss, ExponentialLoss)}


def make_loss(name: str) -> AbstractLoss:
    """A loss by its config name (`[problem] loss`)."""
    if name not in LOSSES:
        raise InputError(f"problem.loss={name!r}: expected one of {list(LOSSES)}")
    return LOSSES[name]()


class Problem(eqx.Module):
    """Data and a loss: `L(w) = scale · Σ_i ℓ(⟨x_i, w⟩, y_i)` with `scale = 1/n` ("mean") or 1 ("sum"),
    least squares by default.

    `X` and `y` are arrays (so one compiled solver serves every problem of the same shape and loss);
    `w_star` is the planted solution when the data were generated, else `None`.
    """

    X: Float[Array, "n d"]
    y: Float[Array, " n"]
    normalization: str = eqx.field(static=True, default="mean")
    w_star: Float[Array, " d"] | None = None
    loss_function: AbstractLoss = eqx.field(default=SquaredLoss(), kw_only=True)

    def __check_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"normalization={self.normalization!r}: expected one of {NORMALIZATIONS}")
        if not isinstance(self.loss_function, AbstractLoss):
            raise InputError(f"loss_function: expected a loss (e.g. mdflow.LogisticLoss()), got "
                             f"{type(self.loss_function).__name__}")
        # Shapes (tracers have them too): a mismatch would surface as an error deep inside a solve.
        X, y = np.shape(self.X), np.shape(self.y)
        if len(X) != 2:
            raise InputError(f"X: must be 2-D (n, d), got shape {X} (y shape {y})")
        if len(y) != 1 or y[0] != X[0]:
            raise InputError(f"y: must have shape ({X[0]},) to match X of shape {X}, got shape {y}")
        if self.w_star is not None and np.shape(self.w_star) != (X[1],):
            raise InputError(f"w_star: must have shape ({X[1]},) to match X of shape {X}, got shape "
                             f"{np.shape(self.w_star)}")
        if not isinstance(self.y, jax.core.Tracer):
            self.loss_function.check_labels(self.y, "y")

    def as_data(self) -> Problem:
        """The data alone (`w_star` dropped): what a solve receives, so that generated and loaded data of
        one shape share one compiled program."""
        if self.w_star is None:
            return self
        return Problem(self.X, self.y, self.normalization, loss_function=self.loss_function)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def scale(self) -> float:
        return 1.0 / self.n if self.normalization == "mean" else 1.0

    @property
    def stop_rule(self) -> str:
        """What ends a run of this problem (`AbstractLoss.stop_rule`)."""
        return self.loss_function.stop_rule

    def margins(self, w: Float[Array, " d"]) -> Margins:
        # Row-vector form (`w Xᵀ`, `r X`): under `vmap` these become plain GEMMs on the stacked
        # members; `X @ w` under vmap lowers to a transposing batched dot, 2.4× slower at B = 4.
        return w @ self.X.T

    def residual(self, w: Float[Array, " d"]) -> Margins:
        return self.margins(w) - self.y

    def loss(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        return self.scale * self.loss_function.total(self.margins(w), self.y)

    def loss_derivative(self, w: Float[Array, " d"]) -> Margins:
        """`∂ℓ/∂m` at the margins of `w` (the squared loss's residual)."""
        return self.loss_function.derivative(self.margins(w), self.y)

    def grad(self, w: Float[Array, " d"]) -> Float[Array, " d"]:
        """`g(w) = scale · Xᵀ ℓ'(Xw, y)` (`scale · Xᵀ(Xw − y)` for squared loss)."""
        return self.scale * (self.loss_derivative(w) @ self.X)

    def curvature(self, w: Float[Array, " d"]) -> Margins | None:
        """`ℓ''(Xw, y)`, the `h` of the Hessian `scale · Xᵀ diag(h) X` (None: 1 everywhere)."""
        return self.loss_function.curvature(self.margins(w), self.y)

    def rel_residual(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """`||Xw − y|| / ||y||`: the interpolation error, scale-free."""
        return jnp.linalg.norm(self.residual(w)) / jnp.linalg.norm(self.y)

    def stop_value(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """What the stop tolerance is compared with: the relative residual (stop at interpolation) or
        the loss (stop at a loss target)."""
        return self.rel_residual(w) if self.stop_rule == "interpolation" else self.loss(w)


def _check_values(source: str, name: str, arr: np.ndarray) -> None:
    """A data array holds finite real numbers of at least single precision (float16 keeps 3 digits,
    too few for float64 flows, and numpy's linear algebra refuses it)."""
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{source}: {name} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype == np.float16:
        raise InputError(f"{source}: {name} has dtype float16 (3 significant digits); save it as float32 or float64")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise InputError(f"{source}: {name} has {bad} non-finite value(s)")


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
        _check_values(source, name, arr)
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
    require_x64()
    for key, value in (("n", n), ("d", d), ("k", k), ("noise", noise), ("seed", seed)):
        RANGES[f"problem.{key}"].check(key, value)  # the config's ranges
    if k > d:
        raise InputError(f"k={k}: must be <= d={d}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_star = np.zeros(d)
    support = rng.choice(d, size=k, replace=False)
    values = np.full(k, 1.0 / np.sqrt(k))
    if signs:
        values *= rng.choice([-1.0, 1.0], size=k)
    w_star[support] = values
    with np.errstate(over="ignore", invalid="ignore"):
        y = X @ w_star + noise * rng.standard_normal(n)
    if not np.all(np.isfinite(y)):
        raise InputError(f"noise={noise!r}: y = Xw* + noise·z has {int(np.sum(~np.isfinite(y)))} non-finite value(s)")
    with warnings.catch_warnings():
        if n < d:
            warnings.simplefilter("ignore")
        X, y = validate_data(X, y, source="sparse_gaussian")
    return Problem(jnp.asarray(X), jnp.asarray(y), normalization, jnp.asarray(w_star))


def separable_gaussian(
    n: int, d: int, k: int, *, noise: float = 0.0, margin: float = 0.0, seed: int = 0,
    normalization: str = "mean", loss: str = "logistic",
) -> Problem:
    """Separable classification data beside `sparse_gaussian`: `X_ij ~ N(0, 1)`, a k-sparse teacher `w*`
    with entries `±1/√k` (random signs; `‖w*‖ = 1`), labels `y = sign(Xw* + noise·z)` in ±1 (0 counts as
    +1), under the classification `loss` (or `"squared"`: least squares on the labels). With `noise = 0`
    the teacher separates the data; noise flips the labels of small margins. `w_star` is the teacher.

    `margin > 0` keeps only points at distance ≥ `margin` from the teacher's hyperplane: each point's
    component `s = ⟨x_i, w*⟩` is redrawn from the normal law conditioned on `|s| ≥ margin` (a monotone
    map of `|s|`, so `margin = 0` changes nothing and a seed gives the same points otherwise): Gaussian
    points with the closer ones dropped, exactly n of them."""
    require_x64()
    for key, value in (("n", n), ("d", d), ("k", k), ("noise", noise), ("seed", seed), ("margin", margin)):
        RANGES[f"problem.{key}"].check(key, value)  # the config's ranges
    if k > d:
        raise InputError(f"k={k}: must be <= d={d}")
    loss_function = make_loss(loss)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_star = np.zeros(d)
    support = rng.choice(d, size=k, replace=False)
    w_star[support] = rng.choice([-1.0, 1.0], size=k) / np.sqrt(k)
    if margin > 0:
        import scipy.special  # only here: `import mdflow` does not pay for scipy

        s = X @ w_star
        # P(|S| > t | |S| ≥ m) = Φ(−t)/Φ(−m) for S ~ N(0, 1); matching it to P(|s| > |s_i|) = 2Φ(−|s_i|)
        # in log space (`log_ndtr`, `ndtri_exp`) stays exact in the far tails.
        tail = scipy.special.log_ndtr(-float(margin))
        log_tail = np.log(2.0) + scipy.special.log_ndtr(-np.abs(s)) + tail
        new = -scipy.special.ndtri_exp(np.minimum(log_tail, tail))
        X += np.outer(np.where(s >= 0, 1.0, -1.0) * new - s, w_star)
    with np.errstate(over="ignore", invalid="ignore"):
        margins = X @ w_star + noise * rng.standard_normal(n)
    if not np.all(np.isfinite(margins)):
        raise InputError(f"noise={noise!r}: Xw* + noise·z has {int(np.sum(~np.isfinite(margins)))} non-finite value(s)")
    y = np.where(margins >= 0, 1.0, -1.0)
    with warnings.catch_warnings():  # n >= d is an ordinary classification setting
        warnings.simplefilter("ignore")
        X, y = validate_data(X, y, source="separable_gaussian")
    return Problem(jnp.asarray(X), jnp.asarray(y), normalization, jnp.asarray(w_star), loss_function=loss_function)


def load_npz(path: str | Path, *, normalization: str = "mean", loss: str = "squared") -> Problem:
    """User data from an `.npz` with arrays `X` (n, d) and `y` (n,), optionally `w_star` (d,), under the
    loss named `loss` (`LOSSES`; a classification loss needs labels ±1: `InputError` naming the file)."""
    require_x64()
    loss_function = make_loss(loss)
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
    with warnings.catch_warnings():
        if loss_function.stop_rule == "loss":  # n >= d is an ordinary classification setting
            warnings.simplefilter("ignore")
        X, y = validate_data(arrays["X"], arrays["y"], source=name)
    loss_function.check_labels(y, name)
    w_star = None
    if "w_star" in arrays:
        w_star = np.asarray(arrays["w_star"])
        if w_star.shape != (X.shape[1],):
            raise InputError(f"{name}: w_star has shape {w_star.shape}, expected ({X.shape[1]},) (X shape {X.shape})")
        _check_values(name, "w_star", w_star)
        w_star = jnp.asarray(w_star.astype(np.float64))
    return Problem(jnp.asarray(X), jnp.asarray(y), normalization, w_star, loss_function=loss_function)


def npz_shape(path: str | Path) -> tuple[int, int]:
    """The (n, d) of an `.npz` data file's `X`, read from its header alone; a file whose header cannot
    be read is loaded (`load_npz`), which names what is wrong with it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive, archive.open("X.npy") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape = read[version](f)[0]
        if len(shape) == 2:
            return int(shape[0]), int(shape[1])
    except Exception:  # noqa: BLE001 - anything unusual: the full reader says what
        pass
    problem = load_npz(path)
    return problem.n, problem.d
