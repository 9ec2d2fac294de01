"""``nflow.Flow``: a normalizing flow you fit, score, sample and save from numpy or pandas.

Direction convention (as in the Rust library): ``forward`` maps data to noise (the log-density direction),
``inverse`` maps noise to data. Log-densities are in nats, in the units of the data you give (the
standardisation's Jacobian and every layer's are counted).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _nflow
from .layers import Embedding, Spec, _json

ArrayLike = Any  # numpy arrays, pandas DataFrames, nested lists

# The CLI's `nflow train` defaults: the same options give the same numbers from Python and from the CLI.
TRAIN_DEFAULTS: Dict[str, Any] = dict(
    steps=None,
    epochs=None,
    batch_size=256,
    lr=1e-3,
    validation=0.1,
    patience=10,
    eval_every=None,
    max_seconds=None,
    optimizer="adam",
    weight_decay=0.0,
    schedule=None,
    decays=3,
    warmup=0,
    clip=None,
)


def _is_frame(x: Any) -> bool:
    return hasattr(x, "columns") and hasattr(x, "to_numpy") and hasattr(x, "iloc")


def _matrix(x: ArrayLike, name: str) -> Tuple[np.ndarray, Optional[List[str]]]:
    """A C-contiguous float64 matrix (and the column names of a DataFrame)."""
    columns = None
    if _is_frame(x):
        columns = [str(c) for c in x.columns]
        x = x.to_numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{name}: not an array of numbers ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name}: expected numbers, got an array of dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise ValueError(f"{name}: complex values are not supported")
    if a.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D array (rows x features), got {a.ndim}-D with shape {a.shape}; "
            "reshape a single feature with x.reshape(-1, 1) or a single row with x.reshape(1, -1)"
        )
    return np.ascontiguousarray(a, dtype=np.float64), columns


def _uint(v: Any, name: str, least: int = 0) -> int:
    """``v`` as a Python int in ``[least, 2**64)`` (what the binding takes as an unsigned integer), or a
    ValueError / TypeError naming the argument (instead of the binding's OverflowError)."""
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    try:
        i = int(v)
    except (OverflowError, ValueError) as e:  # inf, nan
        raise ValueError(f"{name} must be an integer, got {v!r}") from e
    if not least <= i < 2**64:
        raise ValueError(f"{name} must be an integer from {least} to 2**64 - 1, got {i}")
    return i


class Flow:
    """A normalizing flow: a preset by name with its options, or a hand-composed list of layers.

    Presets (``nflow.presets()``): auto (the default: the flow ``nflow train`` chooses from the data's shape,
    nsf-ar up to 16 columns, nsf-c beyond, conditioners wider for wider data), nice, realnvp, maf, iaf, maf-mog,
    nsf-c, nsf-ar, glow, realnvp-multiscale;
    options are those of ``nflow train`` (``layers``, ``hidden``, ``depth``, ``activation``, ``mask``,
    ``order``, ``batch_norm``, ``actnorm``, ``permute``, ``residual``, ``base``, ``components``, ``bins``,
    ``tail_bound``, ``map``, ``context_embed``, ...)::

        flow = nflow.Flow("nsf-ar", layers=5, hidden=128)
        flow = nflow.Flow(layers=[nflow.layers.Coupling(), nflow.layers.Permutation()], base=nflow.layers.Normal())

    ``dim`` may be given or taken from the data at ``fit``. ``seed`` seeds the initial weights and training.
    """

    def __init__(
        self,
        flow: Optional[str] = None,
        dim: Optional[int] = None,
        *,
        layers: Union[int, Sequence[Spec], None] = None,
        base: Optional[Spec] = None,
        embedding: Optional[Embedding] = None,
        seed: int = 0,
        scale_bound: Optional[float] = None,
        sigmoid_scale: bool = False,
        **options: Any,
    ) -> None:
        self._model: Optional[_nflow.Model] = None
        self.vi_diagnostics: Optional[Dict[str, Any]] = None
        self.seed = _uint(seed, "seed")
        self.dim = dim
        if isinstance(layers, (list, tuple)):
            if flow is not None:
                raise ValueError("give a preset name or a list of layers, not both")
            if options or scale_bound is not None or sigmoid_scale:
                raise ValueError(
                    f"preset options ({', '.join(sorted(options))}) do not apply to a composed flow: "
                    "set them on its layers"
                )
            for i, l in enumerate(layers):
                if not isinstance(l, Spec):
                    raise ValueError(f"layers[{i}]: expected an nflow.layers object, got {type(l).__name__}")
            self._kind = "composed"
            d: Dict[str, Any] = {"layers": [l.to_dict() for l in layers]}
            if base is not None:
                d["base"] = base.to_dict()
            if embedding is not None:
                d["embedding"] = embedding.to_dict()
            self._def = d
        else:
            if embedding is not None:
                raise ValueError("a preset takes context_embed / embed_hidden / embed_depth, not embedding=")
            name = "auto" if flow is None else str(flow)
            if name not in _nflow.presets():
                raise ValueError(f"unknown flow '{name}' (presets: {', '.join(_nflow.presets())})")
            opts = dict(options)
            if layers is not None:
                opts["layers"] = _uint(layers, "layers")
            if base is not None:
                opts["base"] = base.type if isinstance(base, Spec) else str(base)
                # a preset takes the base's options it has a field for; others would be dropped silently
                for k, v in (base.options.items() if isinstance(base, Spec) else ()):
                    key = {"components": "components", "init": "mixture_init"}.get(k)
                    if key is None:
                        raise ValueError(
                            f"base={base!r}: a preset's base takes components and init only; compose the "
                            f"flow (layers=[...]) to set its {k}"
                        )
                    if key in opts and opts[key] != v:
                        raise ValueError(f"base={base!r} and {key}={opts[key]!r} disagree")
                    opts[key] = v
            if isinstance(opts.get("map"), str):
                opts["map"] = {"type": opts["map"]}
            if "image_shape" in opts:
                c, h, w = opts.pop("image_shape")
                opts["image"] = {"c": int(c), "h": int(h), "w": int(w)}
            if sigmoid_scale:
                opts["scale"] = {"kind": "sigmoid"}
            elif scale_bound is not None:
                opts["scale"] = {"kind": "soft-clamp", "bound": float(scale_bound)}
            self._kind = "preset"
            self._def = {"flow": name, **{k: _json(v) for k, v in opts.items()}}
        if dim is not None:
            # check the options now rather than at fit time
            self.dim = dim = _uint(dim, "dim", 1)
            self.architecture_for(dim)

    # ---- architecture -------------------------------------------------------------------------------------

    def architecture_for(self, dim: int, context_dim: int = 0) -> Dict[str, Any]:
        """The layer list this definition gives for ``dim`` features (what ``config.json`` stores)."""
        dim, context_dim = _uint(dim, "dim", 1), _uint(context_dim, "context_dim")
        return json.loads(_nflow.architecture(self._kind, json.dumps(self._def), dim, context_dim, self.seed))

    @property
    def architecture(self) -> Dict[str, Any]:
        """The fitted flow's architecture (base, layers, embedding) as a dict."""
        return json.loads(self._fitted().architecture)

    # ---- training -----------------------------------------------------------------------------------------

    def fit(
        self,
        X: ArrayLike,
        context: Union[ArrayLike, Sequence[str], None] = None,
        *,
        validation: float = 0.1,
        steps: Optional[int] = None,
        epochs: Optional[int] = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: Optional[int] = None,
        patience: int = 10,
        eval_every: Optional[int] = None,
        max_seconds: Optional[float] = None,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        schedule: Optional[str] = None,
        decays: int = 3,
        warmup: int = 0,
        clip: Optional[float] = None,
        context_one_hot: bool = False,
        sample_weight: Optional[ArrayLike] = None,
        bounds: Optional[Dict[Any, Tuple[float, float]]] = None,
        positive: Optional[Sequence[Any]] = None,
        integer: Optional[Sequence[Any]] = None,
        callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
        verbose: bool = True,
    ) -> "Flow":
        """Fit by maximum likelihood, exactly as ``nflow train`` does with the same options and seed.

        Without ``steps`` and ``epochs`` the budget is the one ``nflow train`` chooses for the number of rows (a
        step cap that grows with them, and the ``"plateau"`` schedule: the learning rate halves after ``patience``
        evaluations without a better validation figure, and the run stops at the plateau after ``decays``
        halvings); image flows train 50 epochs. ``schedule``: constant | warmup | cosine | plateau (the default
        then; constant otherwise).

        ``bounds={col: (a, b)}``, ``positive=[col, ...]``, ``integer=[col, ...]``: columns (by DataFrame name or
        by index) with values in ``[a, b]`` (a logit map), above 0 (a log map), or integers (dequantised; with
        bounds the integers ``a..=b``, with positive counts from 0), as ``nflow train --bounds / --positive /
        --integer``: every log-density includes the maps' Jacobians, samples come back inside the support.

        ``sample_weight``: a weight per row of ``X`` (finite, at least 0): the weighted likelihood is fitted and
        the validation figures are weighted means (``nflow train --weights COL``).

        ``context``: an array with a row per row of ``X``, or (with a DataFrame ``X``) the names of its
        context columns. ``validation``: the fraction held out for early stopping (``patience`` evaluations
        without improvement) and for keeping the best weights. ``callback(info)`` runs at every evaluation
        with ``info = {"step", "total", "train_nll", "val_log_prob"}``; returning True stops training (the best
        weights are kept). Ctrl-C stops within a fraction of a second, keeps the best weights in this flow and
        then raises KeyboardInterrupt. Returns ``self``.
        """
        seed = self.seed if seed is None else _uint(seed, "seed")
        source = "DataFrame" if _is_frame(X) else "array"
        ctx_cols: List[str] = []
        if context is not None and isinstance(context, (list, tuple)) and all(isinstance(c, str) for c in context):
            if not _is_frame(X):
                raise ValueError("context given by column names needs X as a DataFrame")
            missing = [c for c in context if c not in X.columns]
            if missing:
                raise ValueError(f"context columns not in X: {', '.join(missing)}")
            ctx_cols = list(context)
            context = X[ctx_cols]
            X = X.drop(columns=ctx_cols)
        x, cols = _matrix(X, "X")
        c = None
        if context is not None:
            c, cc = _matrix(context, "context")
            ctx_cols = cc or ctx_cols or [f"c{j}" for j in range(c.shape[1])]
            if c.shape[0] != x.shape[0]:
                raise ValueError(f"context has {c.shape[0]} rows, X has {x.shape[0]}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"X has {x.shape[1]} columns, the flow was defined with dim = {self.dim}")
        w = None
        if sample_weight is not None:
            w = np.ascontiguousarray(np.asarray(sample_weight, dtype=np.float64).reshape(-1))
            if w.shape[0] != x.shape[0]:
                raise ValueError(f"sample_weight has {w.shape[0]} values, X has {x.shape[0]} rows")
        names = cols or [f"x{j}" for j in range(x.shape[1])]

        def name(col: Any) -> str:
            if isinstance(col, (int, np.integer)) and not isinstance(col, bool):
                if not 0 <= int(col) < len(names):
                    raise ValueError(f"column {col}: X has {len(names)} columns")
                return names[int(col)]
            if str(col) not in names:
                raise ValueError(f"column {col!r} is not a column of X ({', '.join(names)})")
            return str(col)

        support: Dict[str, Dict[str, Any]] = {}
        for col, ab in (bounds or {}).items():
            lo, hi = ab
            support.setdefault(name(col), {})["bounds"] = [float(lo), float(hi)]
        for col in positive or []:
            support.setdefault(name(col), {})["positive"] = True
        for col in integer or []:
            support.setdefault(name(col), {})["integer"] = True
        options = dict(
            support=json.dumps([{"column": k, **v} for k, v in support.items()]) if support else None,
            sample_weight=w,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            validation=validation,
            patience=patience,
            eval_every=eval_every,
            max_seconds=max_seconds,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            decays=decays,
            warmup=warmup,
            clip=clip,
            seed=seed,
        )
        hook = _Hook(callback, verbose, x.shape[1])
        model, stopped_by = _nflow.Model.fit(
            self._kind,
            json.dumps(self._def),
            x,
            cols or [],
            c,
            ctx_cols,
            bool(context_one_hot),
            options,
            hook,
            source,
        )
        hook.close()
        self._model = model
        self.dim = model.dim
        if stopped_by is not None:
            raise stopped_by
        return self

    def fit_vi(
        self,
        target: Union[str, Callable[..., Any]],
        dim: Optional[int] = None,
        *,
        contexts: ArrayLike = None,
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        schedule: str = "constant",
        warmup: int = 0,
        clip: Optional[float] = None,
        eval_every: Optional[int] = None,
        eval_samples: int = 4096,
        seed: Optional[int] = None,
        callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
        verbose: bool = True,
    ) -> "Flow":
        """Fit by reverse KL to an unnormalised density (variational inference), as ``nflow vi`` does.

        ``target``: a built-in name (``"u1"``..``"u4"``, ``"gauss:D[:RHO[:SCALE]]"``, ``"mix:D:K[:RADIUS[:SCALE]]"``) or a function
        ``f(x) -> (log_p, grad)`` of float64 ``x`` of shape ``(n, dim)`` returning ``log p~(x)`` ``(n,)`` and
        ``d log p~ / dx`` ``(n, dim)``; with ``contexts`` (amortised inference: a conditional flow over these
        rows, each step drawing contexts from them) it is called as ``f(x, c)``. The best weights by the ELBO on
        a fixed set of ``eval_samples`` draws are kept; ``self.vi_diagnostics`` holds the ELBO, importance-
        sampling ``log Z`` (each with its standard error), the effective sample size and, for built-in targets,
        ``kl = log Z - ELBO``. ``callback(info)`` at every evaluation (``step``, ``total``, ``loss``, ``elbo``)
        stops training by returning True; Ctrl-C stops it keeping the best weights. Returns ``self``.
        """
        from .vi import checked_target

        seed = self.seed if seed is None else _uint(seed, "seed")
        dim = _uint(dim, "dim", 1) if dim is not None else self.dim
        c = None
        if contexts is not None:
            c, _ = _matrix(contexts, "contexts")
        if not isinstance(target, str):
            if not callable(target):
                raise ValueError("target must be a built-in target's name or a function f(x) -> (log_p, grad)")
            if dim is None:
                raise ValueError("a target given as a function needs dim (its number of dimensions)")
            target = checked_target(target, int(dim))
        options = dict(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            schedule=schedule,
            warmup=warmup,
            clip=clip,
            eval_every=eval_every,
            eval_samples=eval_samples,
            seed=seed,
        )
        hook = _Hook(callback, verbose, 0, labels=("loss", "ELBO", "elbo"))
        model, diag, stopped_by = _nflow.Model.fit_vi(
            self._kind, json.dumps(self._def), target, None if dim is None else int(dim), c, options, hook
        )
        hook.close()
        self._model = model
        self.dim = model.dim
        self.vi_diagnostics = json.loads(diag)
        if stopped_by is not None:
            raise stopped_by
        return self

    # ---- using a fitted flow ------------------------------------------------------------------------------

    def _fitted(self) -> "_nflow.Model":
        if self._model is None:
            raise RuntimeError("this flow is not fitted yet: call fit(X) or nflow.load(path)")
        return self._model

    # Each method below reads `self._model` once and uses that model throughout: another thread's `fit` may
    # replace it meanwhile (the call then finishes on the model it started with).

    def _rows(self, X: ArrayLike, m: "_nflow.Model", name: str = "X") -> np.ndarray:
        if _is_frame(X):
            want = m.columns
            have = [str(c) for c in X.columns]
            if all(c in have for c in want):
                X = X[want] if have != want else X
            elif len(have) == len(want):
                raise ValueError(f"{name}: columns {have} are not the model's {want}")
        x, _ = _matrix(X, name)
        if x.shape[1] != m.dim:
            raise ValueError(f"{name}: has {x.shape[1]} columns, the model expects {m.dim} ({', '.join(m.columns)})")
        return x

    def _context(self, m: "_nflow.Model", context: Any, X: Any = None) -> Optional[np.ndarray]:
        if context is None and X is not None and _is_frame(X) and m.context_columns:
            if all(c in X.columns for c in m.context_columns):
                context = X[m.context_columns]
        if context is None:
            return None
        if _is_frame(context) and m.context_columns and all(c in context.columns for c in m.context_columns):
            context = context[m.context_columns]
        c, _ = _matrix(context, "context")
        return c

    def log_prob(self, X: ArrayLike, context: ArrayLike = None) -> np.ndarray:
        """``log p(x)`` of every row (nats, data units), float64. A DataFrame's columns are matched by name
        (a conditional model also finds its context columns there)."""
        m = self._fitted()
        c = self._context(m, context, X)
        return m.log_prob(self._rows(X, m), c)

    def sample(self, n: int, context: ArrayLike = None, seed: Optional[int] = None, temperature: float = 1.0) -> np.ndarray:
        """``n`` draws (a conditional model: one per context row), float64 ``(n, dim)``. ``seed=None`` draws a
        fresh seed; the same seed gives the same samples."""
        return self._sample(self._fitted(), n, context, seed, temperature)

    def _sample(self, m: "_nflow.Model", n: int, context: ArrayLike, seed: Optional[int], temperature: float = 1.0) -> np.ndarray:
        seed = secrets.randbits(63) if seed is None else _uint(seed, "seed")
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        return m.sample(_uint(n, "n"), seed, self._context(m, context), float(temperature))

    def sample_and_log_prob(
        self, n: int, context: ArrayLike = None, seed: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Samples and their log-densities."""
        m = self._fitted()
        c = self._context(m, context)
        x = self._sample(m, n, c, seed)
        return x, m.log_prob(x, c)

    def grad_log_prob(self, X: ArrayLike, context: ArrayLike = None) -> np.ndarray:
        """The score ``d log p(x) / dx`` of every row (data units), float64 ``(n, dim)``: for HMC, Langevin
        or MAP on the learned density."""
        m = self._fitted()
        c = self._context(m, context, X)
        return m.grad_log_prob(self._rows(X, m), c)[1]

    def transform_to_noise(self, X: ArrayLike, context: ArrayLike = None) -> np.ndarray:
        """``z = f(x)``: the rows mapped to the base distribution's space."""
        m = self._fitted()
        c = self._context(m, context, X)
        return m.transform_to_noise(self._rows(X, m), c)

    def percentile(self, X: ArrayLike, context: ArrayLike = None) -> np.ndarray:
        """Where each row's log-density falls among the held-out validation rows kept at fitting time, in
        percent (``nflow score``): 1 means lower than 99% of rows like the training data. Flag unusual rows with
        ``flow.percentile(X) < 100 * fpr``."""
        m = self._fitted()
        c = self._context(m, context, X)
        lp = np.ascontiguousarray(m.log_prob(self._rows(X, m), c), dtype=np.float64)
        return m.percentiles(lp)

    def score(self, X: ArrayLike, context: ArrayLike = None) -> float:
        """Mean log-likelihood of the rows."""
        return float(np.mean(self.log_prob(X, context)))

    # ---- saving, loading, pickling ------------------------------------------------------------------------

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the model folder (``config.json`` + ``weights.safetensors`` + ``train_log.jsonl``), the same
        as ``nflow train`` writes: ``nflow eval`` reads it and gives the same numbers."""
        self._fitted().save(os.fspath(path))

    @classmethod
    def _from_model(cls, model: "_nflow.Model") -> "Flow":
        f = cls.__new__(cls)
        f._model = model
        f.vi_diagnostics = None
        f.dim = model.dim
        preset = model.preset
        if preset is not None:
            p = json.loads(preset)
            f._kind = "preset"
            f.seed = int(p.get("seed", 0))
            f._def = {"flow": p["kind"], **{k: v for k, v in p.items() if k not in ("kind", "dim", "context_dim", "seed")}}
        else:
            a = json.loads(model.architecture)
            f._kind = "composed"
            f.seed = int(a.get("seed", 0))
            f._def = {k: v for k, v in a.items() if k not in ("dim", "context_dim", "seed")}
        return f

    def to_bytes(self) -> bytes:
        """The whole fitted model as bytes (what pickling sends to worker processes)."""
        return self._fitted().to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Flow":
        return cls._from_model(_nflow.Model.from_bytes(bytes(data)))

    def __reduce__(self):  # pickles by the model's bytes
        if self._model is None:
            return (_unfitted, (self._kind, self._def, self.dim, self.seed))
        return (Flow.from_bytes, (self.to_bytes(),))

    # ---- information --------------------------------------------------------------------------------------

    @property
    def columns(self) -> List[str]:
        return list(self._fitted().columns)

    @property
    def context_columns(self) -> List[str]:
        return list(self._fitted().context_columns)

    @property
    def history(self) -> List[Dict[str, Any]]:
        """One dict per evaluation of the last fit (step, train_nll, val_nll, seconds, ...)."""
        return [json.loads(l) for l in self._fitted().log]

    @property
    def summary(self) -> Optional[Dict[str, Any]]:
        s = self._fitted().summary
        return None if s is None else json.loads(s)

    @property
    def num_params(self) -> int:
        return self._fitted().num_params

    def describe(self) -> str:
        """One line per layer with its parameter count."""
        return "\n".join(self._fitted().describe())

    def __repr__(self) -> str:
        what = self._def.get("flow") if self._kind == "preset" else f"{len(self._def['layers'])} layers"
        state = f"fitted, dim={self.dim}, {self.num_params} parameters" if self._model is not None else "not fitted"
        return f"nflow.Flow({what!r}, {state})"


def _unfitted(kind: str, d: Dict[str, Any], dim: Optional[int], seed: int) -> Flow:
    f = Flow.__new__(Flow)
    f._model, f._kind, f._def, f.dim, f.seed = None, kind, d, dim, seed
    f.vi_diagnostics = None
    return f


def load(path: Union[str, "os.PathLike[str]"]) -> Flow:
    """Load a model folder written by ``Flow.save`` or ``nflow train``."""
    return Flow._from_model(_nflow.Model.load(os.fspath(path)))


class _Hook:
    """Progress display and the user's callback, called by the trainer on the calling thread."""

    def __init__(
        self,
        callback: Optional[Callable[[Dict[str, Any]], Any]],
        verbose: bool,
        dim: int,
        labels: Tuple[str, str, str] = ("train nll", "val log-lik", "val_log_prob"),
    ) -> None:
        self.labels = labels
        self.callback = callback
        self.verbose = verbose
        self.tty = verbose and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.val: Optional[float] = None
        self.shown = False
        self.last_line = -1e9

    def __call__(self, step: int, total: int, loss: float, val_log_prob: Optional[float]) -> bool:
        if val_log_prob is not None:
            self.val = val_log_prob
        now = time.monotonic()
        # a terminal gets a live line; a log file an evaluation's line at most every 5 s, and the last
        logged = val_log_prob is not None and (now - self.last_line >= 5.0 or step == total)
        if self.verbose and (self.tty or logged):
            self.last_line = now
            width = 30
            done = int(width * step / max(total, 1))
            val = f"  {self.labels[1]} {self.val:.4f}" if self.val is not None else ""
            line = (
                f"[{'#' * done}{'.' * (width - done)}] {step}/{total} steps "
                f"{time.monotonic() - self.t0:.0f}s  {self.labels[0]} {loss:.4f}{val}"
            )
            sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
            sys.stderr.flush()
            self.shown = True
        if self.callback is not None and val_log_prob is not None:
            loss_key = "train_nll" if self.labels[2] == "val_log_prob" else "loss"
            info = {"step": step, "total": total, loss_key: loss, self.labels[2]: val_log_prob}
            return bool(self.callback(info))
        return False

    def close(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
