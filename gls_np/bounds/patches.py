"""Back-substitution coefficients as patches: one small window per neuron of a conv layer.

A neuron (o, i, j) of a convolution's output depends only on its receptive field,
so in back-substitution its row of coefficients on an earlier feature map (C, H, W)
is zero outside one square window. Storing only that window, a patch (C, p, p)
anchored at (i S + off, j S + off), costs C p^2 numbers per row instead of C H W
(auto_LiRPA's "patches" mode; GPUPoly). ``docs/relaxations.md`` ("Back-substitution
through convolutions: patches") teaches the idea with shapes.

Geometry. The rows start as the identity on the conv output map: p = 1, S = 1,
off = 0. Back through a convolution (kernel k, stride s, padding q) the window of
a row on the conv's input is

    p' = (p - 1) s + k,    S' = S s,    off' = off s - q,

and the patch itself maps as the transposed convolution of the (C_out, p, p)
patch with the kernel, padding 0: ``conv_T``. Window positions that fall outside
the map (in a convolution's padding) multiply entries that do not exist: every
consumer reads maps zero-padded (``dot``, ``window``), so those positions contribute
nothing, and a ReLU crossing (``window`` of the slopes) sets them to 0 ("clean").
Only a convolution must not see them (it would spread them onto real pixels):
``conv_T`` masks a patch that is not clean first.

Layout: ``Patches.A`` is (*lead, B or 1, O, Hk or 1, Wk or 1, C, p, p): the rows
(O, Hk, Wk) are output channels (a chunk of them) times all positions of the
target map; size-1 axes mean the patch is shared by every sample or position
(true until the first ReLU is crossed). The bias of the rows is
(*lead, B or 1, O, Hk or 1, Wk or 1).

Picked sites. DeepPoly skips the neurons that a cheap bound already proves stable
(``crown._sites_bounds``): then only some (sample, position) sites of the target map are
back-substituted, each with the picked O channels, and A is (*lead, n or 1, O, 1, 1, C, p, p)
with ``sites`` naming the site of each of its n entries. A site's windows are those of
its sample and position, copied from the strided window view of the batch (``window``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .. import ops
from ..backend import Array, get_xp
from ..layers import Conv2d
from ..tensor import data

# A convolution's transposed map on rows of shape (C_out, h, w) -> (C_in, H, W) is one GEMM
# with a (C_out h w, C_in H W) matrix shared by every row when that costs at most this many
# times the direct transposed convolution's FLOPs (C_out h w C_in k^2): measured on CNN3's
# patches (H W / k^2 = 4.8) the GEMM ran 2.2x faster than conv2d_T (``gemm_pays``).
TOEPLITZ_FLOP_RATIO = 8.0
# ... and when the matrix has at most this many entries (64 MiB in float32).
MAX_MATRIX = 1 << 24


@dataclass(frozen=True)
class Patches:
    """Coefficients of rows (O, Hk, Wk) on the windows of one feature map.

    Shapes: A (*lead, B or 1, O, Hk or 1, Wk or 1, C, p, p).
    Row (o, i, j) has the coefficient A[..., o, i, j, c, a, b] on the map entry
    (c, i stride + offset + a, j stride + offset + b); entries outside the map are
    multiplied by zeros (padding). ``clean``: those entries are 0 in A itself.
    ``sites``: None, or (n,) integers: A's axes (B, Hk, Wk) are then (n or 1, 1, 1) and
    entry r is sample b at row position (i, j) with sites[r] = (b Hk + i) Wk + j.
    """

    A: Array
    stride: int
    offset: int
    rows_hw: tuple
    clean: bool = True
    sites: Array | None = None

    @property
    def size(self) -> int:
        """Return p, the side of the window."""
        return data(self.A).shape[-1]

    def with_A(self, A, clean: bool | None = None) -> Patches:
        """Return the same geometry with new coefficients."""
        return dataclasses.replace(self, A=A, clean=self.clean if clean is None else clean)


def eye(like, nlead: int, shape: tuple, channels, sites=None):
    """Return identity rows on the neurons of ``channels`` (slice or indices) of a map (C, H, W).

    Shapes: -> Patches A (*1 x nlead, 1, n, 1, 1, C, 1, 1), bias (*1 x nlead, 1, n, 1, 1);
    ``sites``, where given, restricts them to those (sample, position) sites (``Patches``).
    """
    xp = get_xp(data(like))
    dtype = data(like).dtype
    C, H, W = shape
    rows = xp.eye(C, dtype=dtype)[channels]
    n = rows.shape[0]
    A = rows.reshape(*(1,) * nlead, 1, n, 1, 1, C, 1, 1)
    b = xp.zeros((*(1,) * nlead, 1, n, 1, 1), dtype=dtype)
    return Patches(A, 1, 0, (H, W), sites=sites), b


def grown(layer, size: int) -> int:
    """Return the window side p' on a convolution's input for a window p on its output."""
    return (size - 1) * layer.stride + layer.kernel_size


def gemm_pays(layer: Conv2d, out_hw, in_hw) -> bool:
    """Tell whether W^T of rows on a conv's output is cheaper as one GEMM with its matrix.

    Rows of shape (C_out, h, w) that reach an (H, W) map (a patch's window p' x p', or the
    whole input map): the GEMM costs C_out h w C_in H W per row, the transposed convolution
    C_out h w C_in k^2, but a GEMM of this size runs several times faster per FLOP than
    conv2d_T on tiny images. The matrix itself must stay small (MAX_MATRIX entries).
    """
    K = layer.out_channels * out_hw[0] * out_hw[1]
    M = layer.in_channels * in_hw[0] * in_hw[1]
    cheap = in_hw[0] * in_hw[1] <= TOEPLITZ_FLOP_RATIO * layer.kernel_size**2
    return cheap and K * M <= MAX_MATRIX


def conv_T(layer: Conv2d, p, P: Patches, out_shape: tuple):
    """Map patches on a convolution's output back to its input (y = W x + b).

    Shapes: A (*lead, *rows, C_out, p, p) -> (*lead, *rows, C_in, p', p'), p' = (p - 1) s + k;
    the bias term <A, b> (*lead, *rows).
    Math: A' = W^T A, the transposed convolution (stride s, padding 0) of each patch as a
    tiny image; the window moves to S' = S s, off' = off s - q. Sound because exact
    (entries in the conv's padding are zeroed first when the patch is not clean).
    """
    if not P.clean:
        P = P.with_A(ops.mul(P.A, inside(P, out_shape[-2:])), clean=True)
    W, b = p["weight"], layer.bias(p)
    size2 = grown(layer, P.size)
    if gemm_pays(layer, (P.size, P.size), (size2, size2)):
        A, shift = conv_T_gemm(P.A, W, b, layer.stride, 0, (size2, size2))
    else:
        shift = bias_dot(P, b, out_shape)
        A = ops.conv2d_T(P.A, W, layer.stride, 0, in_hw=(size2, size2))
    offset = P.offset * layer.stride - layer.padding
    moved = Patches(A, P.stride * layer.stride, offset, P.rows_hw, clean=False, sites=P.sites)
    return moved, shift


def conv_T_gemm(A, W, b, stride: int, padding: int, in_hw):
    """Compute conv2d_T of every row, and its bias dot, as one GEMM with the conv's matrix.

    Shapes: A (*lead, *rows, C_out, h, w), W (*lead, C_out, C_in, k, k), b (*lead, C_out, 1, 1)
    -> (*lead, *rows, C_in, H, W) with (H, W) = ``in_hw``, and (*lead, *rows).
    The matrix [T | b] has T = conv2d_T of the unit rows (so it is on the tape in W) and one
    more column, b[c] at every entry of channel c: the bias dot of rows that are 0 wherever
    there is no neuron (a clean patch, or a dense row).
    """
    Ad, Wd = data(A), data(W)
    xp = get_xp(Ad, Wd)
    nlead = Wd.ndim - 4
    lead = Wd.shape[:nlead]
    C_out, h, w = Ad.shape[-3:]
    C_in = Wd.shape[-3]
    K, M = C_out * h * w, C_in * in_hw[0] * in_hw[1]
    units = xp.eye(K, dtype=Wd.dtype).reshape(*(1,) * nlead, K, C_out, h, w)
    T = ops.reshape(ops.conv2d_T(units, W, stride, padding, in_hw=tuple(in_hw)), (*lead, K, M))
    column = ops.reshape(ops.broadcast_to(b, (*lead, C_out, h, w)), (*lead, K, 1))
    rows = Ad.shape[nlead:-3]
    A2 = ops.reshape(A, (*Ad.shape[:nlead], math.prod(rows), K))
    out = ops.matmul(A2, ops.concatenate([T, column], axis=-1))
    olead = data(out).shape[:-2]
    A_new = ops.reshape(ops.getitem(out, (Ellipsis, slice(0, M))), (*olead, *rows, C_in, *in_hw))
    shift = ops.reshape(ops.getitem(out, (Ellipsis, M)), (*olead, *rows))
    return A_new, shift


def bias_dot(P: Patches, b, map_shape: tuple):
    """Return <A, b> over each row's window for a per-channel bias b (a conv's (O, 1, 1)).

    Shapes: A (*lead, B or 1, O, Hk, Wk, C, p, p), b ([*lead,] C, 1, 1)
    -> (*lead, B or 1, O, Hk, Wk). A clean patch is summed over its window first (one
    pass over A); otherwise the zero-padded bias map drops the positions in the padding.
    """
    bd = data(b)
    blead = bd.shape[:-3]
    C = bd.shape[-3]
    if not P.clean:
        H, W = map_shape[-2:]
        m = ops.broadcast_to(ops.reshape(b, (*blead, 1, C, 1, 1)), (*blead, 1, C, H, W))
        return dot(P, m)
    per_channel = ops.sum(P.A, axis=(-2, -1))  # (*lead, B, O, Hk, Wk, C)
    bc = ops.reshape(b, (*blead, *(1,) * (4 if blead else 0), C))
    return ops.sum(ops.mul(per_channel, bc), axis=-1)


def window(m, P: Patches):
    """Return the window of every row position on the map m, zero outside it.

    Shapes: m (*lead, B, C, H, W) -> (*lead, B, 1, Hk, Wk, C, p, p), broadcastable with A;
    for picked sites (*lead, n, 1, 1, 1, C, p, p), the windows of those sites only (a map
    of one sample, B = 1, serves every sample).
    One primitive (``ops.patch_windows``): a strided view of the padded map copied once.
    """
    if P.sites is None:
        return ops.patch_windows(m, P.size, P.stride, P.offset, P.rows_hw)
    shape = data(m).shape
    if shape[-4] > 1:
        return ops.patch_windows(m, P.size, P.stride, P.offset, P.rows_hw, P.sites)
    w = ops.patch_windows(m, P.size, P.stride, P.offset, P.rows_hw)
    wd = data(w).shape
    nb = len(wd) - 7
    L = P.rows_hw[0] * P.rows_hw[1]
    picked = ops.take(ops.reshape(w, (*wd[:nb], L, *wd[-3:])), P.sites % L, nb)
    return ops.reshape(picked, (*wd[:nb], len(P.sites), 1, 1, 1, *wd[-3:]))


def _framed(m, P: Patches, L_h: int, L_w: int):
    """Zero-pad and crop the map to the L_h x L_w frame whose corner is row position 0's.

    Shapes: m (..., C, H, W) -> (..., C, L_h, L_w); frame pixel (a, b) is map pixel
    (a + offset, b + offset), zero outside the map.
    """
    off = P.offset
    md = data(m)
    H, W = md.shape[-2:]
    top = max(0, -off)
    width = [(0, 0)] * (md.ndim - 2)
    width += [(top, max(0, off + L_h - H)), (top, max(0, off + L_w - W))]
    if any(w != (0, 0) for w in width):
        m = ops.pad(m, width)
    start = off + top
    return ops.getitem(m, (Ellipsis, slice(start, start + L_h), slice(start, start + L_w)))


def shared(P: Patches, nlead: int) -> bool:
    """Tell whether every sample and position uses the same patch (no ReLU crossed yet)."""
    shape = data(P.A).shape
    return P.sites is None and shape[nlead] == 1 and shape[-5] == 1 and shape[-4] == 1


def dot(P: Patches, m, w=None):
    """Return <A[row], window of m at the row> for every row: a patch dotted with a map.

    Shapes: A (*lead, B or 1, O, Hk, Wk, C, p, p), m (*lead, B, C, H, W) -> (*lead, B, O, Hk, Wk).
    A patch shared by all samples and positions is a convolution kernel: then the dots
    are conv2d(m, A) with stride S. Otherwise every (sample, position) is a matrix-vector
    product (O, C p^2) @ (C p^2,), which beats a product and a sum over the window;
    ``w`` = ``window(m, P)`` when the caller has it already.
    """
    Ad = data(P.A)
    nlead = Ad.ndim - 7
    if shared(P, nlead):
        S, p = P.stride, P.size
        Hk, Wk = P.rows_hw
        q = -(-p // S)
        mr = _framed(m, P, S * (Hk - 1 + q), S * (Wk - 1 + q))
        kernel = ops.reshape(P.A, (*Ad.shape[:nlead], Ad.shape[nlead + 1], *Ad.shape[-3:]))
        if nlead and data(m).ndim == 4:
            mr = ops.reshape(mr, (1, *data(mr).shape))
        out = ops.conv2d(mr, kernel, S, 0)
        return ops.getitem(out, (Ellipsis, slice(0, Hk), slice(0, Wk)))
    w = window(m, P) if w is None else w
    K = math.prod(Ad.shape[-3:])
    out = ops.matmul(
        ops.reshape(P.A, (*Ad.shape[:-3], 1, K)),
        ops.reshape(w, (*data(w).shape[:-3], K, 1)),
    )
    return ops.reshape(out, data(out).shape[:-2])


def inside(P: Patches, map_hw: tuple):
    """Return 1 where a row's window lies on the map (H, W) and 0 in the padding.

    Shapes: -> constant (1, 1, Hk, Wk, 1, p, p), broadcastable with A.
    """
    xp = get_xp(data(P.A))
    return window(xp.ones((1, 1, *map_hw), dtype=data(P.A).dtype), P)


def to_dense(P: Patches, map_shape: tuple):
    """Return the full rows on the map: each patch placed at its anchor, its padding dropped.

    Shapes: A (*lead, B or 1, O, Hk, Wk, C, p, p) -> (*lead, B or 1, O Hk Wk, C, H, W).
    """
    if P.sites is not None:
        raise ValueError("patches of picked sites must reach the input as patches")
    Ad = data(P.A)
    C, H, W = map_shape
    S, off, p = P.stride, P.offset, P.size
    Hk, Wk = P.rows_hw
    cols = []
    for i in range(Hk):
        for j in range(Wk):
            y0, x0 = i * S + off, j * S + off
            ys, xs = max(0, -y0), max(0, -x0)
            ye, xe = min(p, H - y0), min(p, W - x0)
            idx = (
                Ellipsis,
                min(i, Ad.shape[-5] - 1),
                min(j, Ad.shape[-4] - 1),
                slice(None),
                slice(ys, ye),
                slice(xs, xe),
            )
            piece = ops.getitem(P.A, idx)  # (*lead, B, O, C, h, w)
            width = [(0, 0)] * (data(piece).ndim - 2)
            width += [(y0 + ys, H - (y0 + ye)), (x0 + xs, W - (x0 + xe))]
            piece = ops.pad(piece, width)
            cols.append(ops.reshape(piece, (*data(piece).shape[:-3], 1, C, H, W)))
    out = ops.concatenate(cols, axis=-4) if len(cols) > 1 else cols[0]
    shape = data(out).shape
    return ops.reshape(out, (*shape[:-5], shape[-5] * Hk * Wk, C, H, W))


def dense_bias(b, rows_hw: tuple, sites=None):
    """Flatten the rows' bias (*lead, B or 1, O, Hk or 1, Wk or 1) -> (*lead, B or 1, O Hk Wk).

    For picked ``sites``: (*lead, n, O, 1, 1) -> (*lead, n, O).
    """
    bd = data(b)
    if sites is not None:
        return ops.reshape(b, bd.shape[:-2])
    Hk, Wk = rows_hw
    full = (*bd.shape[:-2], Hk, Wk)
    if bd.shape != full:
        b = ops.broadcast_to(b, full)
    return ops.reshape(b, (*full[:-3], full[-3] * Hk * Wk))
