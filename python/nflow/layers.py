"""Building blocks of a hand-composed flow, mirroring the Rust architecture (``docs/architecture.md``).

A flow is a base distribution plus a list of layers (data -> noise order). Structures (``Coupling``,
``Autoregressive``, ...) condition an element-wise map (``Affine``, ``Additive``, ``RqSpline``,
``SinhArcsinh``) on the other features; every option left at ``None`` takes the library's default. Each object
turns into the JSON the model's ``config.json`` stores under ``"flow"``, and the Rust side checks it (an
unknown or misspelled option is a ``ValueError`` naming the layer and the field)::

    import nflow
    from nflow.layers import Coupling, Permutation, RqSpline, MLP
    flow = nflow.Flow(layers=[Coupling(map=RqSpline(bins=8), net=MLP(hidden=64)), Permutation(),
                              Coupling(map=RqSpline(bins=8), net=MLP(hidden=64))],
                      base=nflow.layers.Normal())
"""

from __future__ import annotations

from typing import Any, Dict, Optional


def _json(v: Any) -> Any:
    if isinstance(v, Spec):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _json(x) for k, x in v.items()}
    return v


class Spec:
    """A configuration object: a JSON mapping with an optional ``"type"`` tag."""

    type: Optional[str] = None

    def __init__(self, **options: Any) -> None:
        self.options = {k: v for k, v in options.items() if v is not None}

    def to_dict(self) -> Dict[str, Any]:
        d = {k: _json(v) for k, v in self.options.items()}
        if self.type is not None:
            d = {"type": self.type, **d}
        return d

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]


# ---- element-wise maps ------------------------------------------------------------------------------------


class Affine(Spec):
    """``y = x exp(s) + t`` (RealNVP / MAF). ``scale``: ``{"kind": "soft-clamp", "bound": 5.0}`` (default) or
    ``{"kind": "sigmoid"}`` (Glow)."""

    type = "affine"

    def __init__(self, scale: Optional[dict] = None) -> None:
        super().__init__(scale=scale)


class Additive(Spec):
    """``y = x + t`` (NICE): volume preserving."""

    type = "additive"


class RqSpline(Spec):
    """Monotone rational-quadratic spline on ``[-bound, bound]``, the identity outside (Durkan et al. 2019)."""

    type = "rq-spline"

    def __init__(self, bins: Optional[int] = None, bound: Optional[float] = None, **options: Any) -> None:
        super().__init__(bins=bins, bound=bound, **options)


class SinhArcsinh(Spec):
    """``y = sinh(b asinh(x) - a)`` with a location and scale (Jones & Pewsey 2009): heavy or light tails."""

    type = "sinh-arcsinh"


# ---- conditioner networks ---------------------------------------------------------------------------------


class MLP(Spec):
    """The conditioner of a coupling: ``depth`` hidden layers of ``hidden`` units."""

    def __init__(
        self, hidden: Optional[int] = None, depth: Optional[int] = None, activation: Optional[str] = None
    ) -> None:
        super().__init__(hidden=hidden, depth=depth, activation=activation)


class Made(Spec):
    """The conditioner of an autoregressive layer (Germain et al. 2015); ``residual``: ResMADE."""

    def __init__(
        self,
        hidden: Optional[int] = None,
        depth: Optional[int] = None,
        activation: Optional[str] = None,
        residual: Optional[bool] = None,
        random_degrees: Optional[bool] = None,
    ) -> None:
        super().__init__(
            hidden=hidden, depth=depth, activation=activation, residual=residual, random_degrees=random_degrees
        )


# ---- layers -----------------------------------------------------------------------------------------------


class Coupling(Spec):
    """Coupling layer (Dinh et al. 2017): half the features (``mask``: alternate | halves | random)
    condition the map of the other half. ``index`` varies the mask between layers."""

    type = "coupling"

    def __init__(
        self,
        map: Optional[Spec] = None,
        mask: Optional[str] = None,
        index: Optional[int] = None,
        net: Optional[MLP] = None,
    ) -> None:
        super().__init__(map=map, mask=mask, index=index, net=net)


class Autoregressive(Spec):
    """Masked autoregressive layer (MAF, Papamakarios et al. 2017): fast density, sequential sampling.
    ``order``: alternate | natural | reversed | random."""

    type = "autoregressive"

    def __init__(
        self,
        map: Optional[Spec] = None,
        order: Optional[str] = None,
        index: Optional[int] = None,
        made: Optional[Made] = None,
    ) -> None:
        super().__init__(map=map, order=order, index=index, made=made)


class Iaf(Autoregressive):
    """Inverse autoregressive layer (Kingma et al. 2016): fast sampling, sequential density."""

    type = "iaf"


class Permutation(Spec):
    """Fixed permutation: ``rule`` reverse | random, or explicit ``indices``."""

    type = "permutation"

    def __init__(self, rule: Optional[str] = None, indices: Optional[list] = None) -> None:
        super().__init__(rule=rule, indices=indices)


class LuLinear(Spec):
    """Learned invertible linear map in LU form (Kingma & Dhariwal 2018)."""

    type = "lu-linear"

    def __init__(self, random_permutation: Optional[bool] = None) -> None:
        super().__init__(random_permutation=random_permutation)


class ActNorm(Spec):
    """Per-feature affine map initialised from the first batch (Glow)."""

    type = "act-norm"


class BatchNorm(Spec):
    """Batch normalisation as a bijector (RealNVP)."""

    type = "batch-norm"


class Scaling(Spec):
    """Learned diagonal scaling (NICE's last layer)."""

    type = "scaling"


class Layer(Spec):
    """Any layer by its type name and options, including types registered from Rust (``register_layer``)."""

    def __init__(self, type: str, **options: Any) -> None:  # noqa: A002 - the config's own field name
        super().__init__(**options)
        self.type = type


# ---- base distributions -----------------------------------------------------------------------------------


class Normal(Spec):
    """``N(0, I)``."""

    type = "normal"


class DiagNormal(Spec):
    """Diagonal normal with learned mean and scale."""

    type = "diag-normal"


class Logistic(Spec):
    """Standard logistic (NICE's prior)."""

    type = "logistic"


class StudentT(Spec):
    """Independent Student-t marginals with learned degrees of freedom per feature (tail-adaptive flows,
    Jaini et al. 2020): rows far from the training data get a density logarithmic, not quadratic, in their
    distance."""

    type = "student-t"


class Mixture(Spec):
    """Gaussian mixture with learned weights, means and scales (initialised from the first batch:
    ``init`` kmeans | data)."""

    type = "mixture"

    def __init__(self, components: int = 10, init: Optional[str] = None) -> None:
        super().__init__(components=components, init=init)


class MadeMog(Spec):
    """Autoregressive mixture of Gaussians (MADE MoG, the base of MAF MoG)."""

    type = "made-mog"

    def __init__(self, components: int = 10, made: Optional[Made] = None, order: Optional[str] = None) -> None:
        super().__init__(components=components, made=made, order=order)


class Embedding(Spec):
    """Learned context embedding: the context goes through an MLP to ``features`` features."""

    def __init__(
        self,
        features: int,
        hidden: Optional[int] = None,
        depth: Optional[int] = None,
        activation: Optional[str] = None,
    ) -> None:
        super().__init__(features=features, hidden=hidden, depth=depth, activation=activation)


__all__ = [
    "Spec",
    "Affine",
    "Additive",
    "RqSpline",
    "SinhArcsinh",
    "MLP",
    "Made",
    "Coupling",
    "Autoregressive",
    "Iaf",
    "Permutation",
    "LuLinear",
    "ActNorm",
    "BatchNorm",
    "Scaling",
    "Layer",
    "Normal",
    "DiagNormal",
    "Logistic",
    "StudentT",
    "Mixture",
    "MadeMog",
    "Embedding",
]
