"""A reverse-mode tape: micrograd lifted to arrays.

A ``Tensor`` wraps an array (``data``) and, when it was produced by a primitive
of ``gls_np.ops`` from other tensors, remembers its ``parents`` and for each the
vector-Jacobian product (VJP) that maps the output cotangent ``g`` to the
parent's cotangent. ``backward`` walks the graph once in reverse topological
order and accumulates ``grad`` on every tensor that requires it.

Bare arrays never record anything: the same code runs untaped on arrays (PGPE
fitness, certification) and taped on tensors (GRAD, RGS, PGD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .backend import Array, get_xp


class Tensor:
    """An array on the tape.

    Parameters
    ----------
    data : array
        The value (NumPy or CuPy).
    parents : sequence of (Tensor, vjp)
        For each input that requires a gradient, the function ``vjp(g) -> dx``.
    requires_grad : bool
        True for leaves we want gradients of; derived tensors require a
        gradient exactly when they have parents.
    """

    __slots__ = ("data", "parents", "requires_grad", "grad")
    # NOTE: makes ``ndarray <op> Tensor`` defer to the Tensor's reflected operator
    # instead of building an object array.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(
        self,
        data: Array,
        parents: Sequence[tuple[Tensor, Callable[[Array], Array]]] = (),
        requires_grad: bool = False,
    ):
        self.data = data
        self.parents = tuple(parents)
        self.requires_grad = requires_grad or bool(self.parents)
        self.grad = None

    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"

    def __len__(self) -> int:
        return len(self.data)

    # Operators route through gls_np.ops so that they are recorded; imported
    # lazily because ops imports this module.
    def __add__(self, o):
        return _ops().add(self, o)

    def __radd__(self, o):
        return _ops().add(o, self)

    def __sub__(self, o):
        return _ops().sub(self, o)

    def __rsub__(self, o):
        return _ops().sub(o, self)

    def __mul__(self, o):
        return _ops().mul(self, o)

    def __rmul__(self, o):
        return _ops().mul(o, self)

    def __truediv__(self, o):
        return _ops().div(self, o)

    def __rtruediv__(self, o):
        return _ops().div(o, self)

    def __matmul__(self, o):
        return _ops().matmul(self, o)

    def __rmatmul__(self, o):
        return _ops().matmul(o, self)

    def __neg__(self):
        return _ops().neg(self)

    def __getitem__(self, idx):
        return _ops().getitem(self, idx)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().transpose(self, axes or None)

    def detach(self) -> Array:
        """The bare array, off the tape."""
        return self.data

    def backward(self, g: Array | None = None) -> None:
        """Accumulate g . d(self)/d(leaf) into ``grad`` of every leaf that requires it.

        ``g`` defaults to ones (so a scalar output gets d out / d leaf).
        """
        backward(self, g)


def _ops():
    from . import ops

    return ops


def data(a) -> Array:
    """The array under ``a`` (a Tensor's data, or ``a`` itself)."""
    return a.data if isinstance(a, Tensor) else a


def needs_grad(a) -> bool:
    """True when ``a`` is a Tensor on the tape."""
    return isinstance(a, Tensor) and a.requires_grad


def record(out: Array, *inputs: tuple[object, Callable[[Array], Array]]):
    """Wrap ``out`` as a Tensor whose parents are the inputs that need gradients.

    ``inputs`` are ``(input, vjp)`` pairs; returns the bare array when no input
    is on the tape, so untaped code pays nothing.
    """
    parents = [(a, vjp) for a, vjp in inputs if needs_grad(a)]
    if not parents:
        return out
    return Tensor(out, parents)


def _topological_order(root: Tensor) -> list[Tensor]:
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for parent, _ in node.parents:
            if id(parent) not in seen:
                stack.append((parent, False))
    return order


def backward(root: Tensor, g: Array | None = None) -> None:
    """Reverse sweep from ``root`` with upstream cotangent ``g`` (ones by default).

    Gradients accumulate into ``.grad`` of the leaves (tensors without parents);
    intermediate cotangents are freed as soon as they have been propagated.
    """
    xp = get_xp(root.data)
    if g is None:
        g = xp.ones_like(root.data)
    if g.shape != root.shape:
        raise ValueError(f"cotangent shape {g.shape} does not match output shape {root.shape}")
    grads = {id(root): g}
    for node in reversed(_topological_order(root)):
        gn = grads.pop(id(node), None)
        if gn is None:
            continue
        if not node.parents:
            node.grad = gn if node.grad is None else node.grad + gn
            continue
        for parent, vjp in node.parents:
            dp = vjp(gn)
            key = id(parent)
            grads[key] = dp if key not in grads else grads[key] + dp


def value_and_grad(fn: Callable, *args: Array):
    """Evaluate ``fn(*args)`` (a scalar) and its gradient w.r.t. every argument.

    Returns ``(value, grads)`` with ``value`` a 0-d array and ``grads`` a tuple of
    arrays shaped like ``args``.
    """
    leaves = [Tensor(a, requires_grad=True) for a in args]
    out = fn(*leaves)
    if not isinstance(out, Tensor):
        xp = get_xp(*args)
        return out, tuple(xp.zeros_like(a) for a in args)
    if out.size != 1:
        raise ValueError(f"value_and_grad needs a scalar output, got shape {out.shape}")
    backward(out)
    xp = get_xp(*args)
    grads = tuple(
        leaf.grad if leaf.grad is not None else xp.zeros_like(leaf.data) for leaf in leaves
    )
    return out.data, grads
