"""Camera response curves: how a camera maps linear light in [0, 1] to an encoded value in [0, 1] before the 8-bit
quantiser, named by a short spec string that aug.json records (``masks.linearisation``, ``params.transfer``).

    srgb                the sRGB OETF (DiffHDR's LDR)                       hdr.color.srgb_oetf
    gamma2.2            x^(1/2.2) (alternating-exposure LDR)               hdr.color.gamma_oetf
    gamma:<g>           x^(1/g)
    sigmoid:<n>:<a>     y = (1 + a) x^n / (x^n + a): the family HDRCNN's virtual camera samples
                        (gabrieleilertsen/hdrcnn, training/virtualcamera: n ~ N(0.9, 0.1), a ~ N(0.6, 0.1))
    table:<sha256[:16]> a measured curve from a file the user supplies (one block of DoRF ``dorfCurves.txt``,
                        which holds many, or two columns x y), registered with :func:`load_curve_file`; the
                        databases are never shipped

Every curve is monotone, maps 0 to 0 and 1 to 1, and has an exact inverse (``decode``), which the quantiser uses
to put the 8-bit code boundaries in linear light and the masks use to linearise: the LDR frames and their masks
always use the curve the clip was made with.
"""
from __future__ import annotations

import hashlib
import functools
from pathlib import Path

import numpy as np

from hdr.color import TRANSFERS

_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # spec -> (x, y) samples of a measured curve


class CurveError(ValueError):
    """A curve spec or a curve file that cannot be used (one line naming it)."""


def gamma_spec(g: float) -> str:
    return f"gamma:{float(g):.6g}"


def sigmoid_spec(n: float, a: float) -> str:
    return f"sigmoid:{float(n):.6g}:{float(a):.6g}"


def _parse(spec: str) -> tuple[str, list[float]]:
    kind, _, rest = str(spec).partition(":")
    if kind in TRANSFERS and not rest:
        return kind, []
    if kind == "table":
        if spec not in _TABLES:
            raise CurveError(f"curve {spec!r}: a measured curve that was not loaded (pass its file again: "
                             "--set step.curve.file=PATH)")
        return kind, []
    try:
        values = [float(v) for v in rest.split(":")] if rest else []
    except ValueError:
        raise CurveError(f"curve {spec!r}: parameters must be numbers") from None
    if kind == "gamma" and len(values) == 1 and values[0] > 0:
        return kind, values
    if kind == "sigmoid" and len(values) == 2 and values[0] > 0 and values[1] > 0:
        return kind, values
    raise CurveError(f"curve {spec!r}: expected srgb, gamma2.2, gamma:<g>, sigmoid:<n>:<a> (n, a > 0) or table:<id>")


def encode(spec: str, x):
    """Linear [0, 1] -> encoded [0, 1] (numpy, float64 inside)."""
    kind, p = _parse(spec)
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    if kind in TRANSFERS:
        return np.asarray(TRANSFERS[kind][0](x), np.float64)
    if kind == "gamma":
        return x ** (1.0 / p[0])
    if kind == "sigmoid":
        n, a = p
        xn = x**n
        return (1.0 + a) * xn / (xn + a)
    xs, ys = _TABLES[spec]
    return np.interp(x, xs, ys)


def decode(spec: str, y):
    """Encoded [0, 1] -> linear [0, 1]: the exact inverse of :func:`encode` (numpy, float64)."""
    kind, p = _parse(spec)
    y = np.clip(np.asarray(y, np.float64), 0.0, 1.0)
    if kind in TRANSFERS:
        return np.asarray(TRANSFERS[kind][1](y), np.float64)
    if kind == "gamma":
        return y ** p[0]
    if kind == "sigmoid":  # y (x^n + a) = (1 + a) x^n  =>  x = (a y / (1 + a - y))^(1/n)
        n, a = p
        return (a * y / (1.0 + a - y)) ** (1.0 / n)
    xs, ys = _TABLES[spec]
    return np.interp(y, ys, xs)


def check(spec: str) -> str:
    _parse(spec)
    return spec


@functools.lru_cache(maxsize=64)
def luma_of_code(spec: str) -> np.ndarray:
    """(3, 256) float32: the Rec.709 luminance contribution of every 8-bit code per channel, linearised with the
    curve (the masks' exact lookup: Y = T[0][r] + T[1][g] + T[2][b])."""
    from hdr.color import REC709_LUMA

    lin = decode(spec, np.arange(256, dtype=np.float64) / 255.0)
    return np.stack([(lin * w).astype(np.float32) for w in REC709_LUMA])


DORF_URL = "https://cave.cs.columbia.edu/repository/DoRF"  # Columbia CAVE's Database of Response Functions


def _numbers(lines: list[str], i: int, tag: str) -> tuple[np.ndarray, int]:
    """The values after ``tag`` on line i (or on the next line) and the index of the line after them."""
    rest = lines[i][len(tag):].strip()
    text, nxt = (rest, i + 1) if rest else (lines[i + 1] if i + 1 < len(lines) else "", i + 2)
    return np.array([float(v) for v in text.replace(",", " ").split()], np.float64), nxt


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    if any(ln.startswith("I =") for ln in lines) and any(ln.startswith("B =") for ln in lines):
        # DoRF (CAVE dorfCurves.txt): blocks of name / type / "I =" / values / "B =" / values, one per curve
        out = []
        try:
            for i, ln in enumerate(lines):
                if ln.startswith("I ="):
                    xs, j = _numbers(lines, i, "I =")
                    if j >= len(lines) or not lines[j].startswith("B ="):
                        raise ValueError
                    ys, _ = _numbers(lines, j, "B =")
                    out.append((lines[i - 2] if i >= 2 else f"curve {len(out)}", xs, ys))
        except ValueError:
            raise CurveError(f"{path}: a DoRF block is not 'I =' values then 'B =' values") from None
        return tuple(out)
    rows = [ln.replace(",", " ").split() for ln in lines if not ln.startswith("#")]
    try:
        arr = np.array([[float(v) for v in r[:2]] for r in rows], np.float64)
    except (ValueError, IndexError):
        raise CurveError(f"{path}: not a curve file (DoRF dorfCurves.txt, or two numeric columns x y)") from None
    return ((Path(path).stem, arr[:, 0], arr[:, 1]),)


def read_curve_file(path: str | Path) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """Every curve of a file as (name, x, y): all the DoRF blocks, or the one curve of a two-column file (cached
    while the file is unchanged)."""
    p = Path(path)
    if not p.is_file():
        raise CurveError(f"{path}: curve file not found (measured curves such as DoRF/EMoR cannot be shipped: "
                         f"download them yourself, e.g. DoRF dorfCurves.txt from Columbia CAVE {DORF_URL}, and give "
                         "the path)")
    st = p.stat()
    return _read_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def curve_names(path: str | Path) -> list[str]:
    """The names of the curves in a file (DoRF: the camera or film of each block), in file order."""
    return [name for name, _, _ in read_curve_file(path)]


def load_curve_file(path: str | Path, index: int = 0) -> str:
    """Read curve ``index`` of a measured response-curve file (irradiance x -> brightness y, both in [0, 1]) and
    register it; returns its spec ``table:<sha256[:16]>``. One-line CurveError unless it is monotone from (0, 0)
    to (1, 1)."""
    found = read_curve_file(path)
    if not 0 <= int(index) < len(found):
        raise CurveError(f"{path}: curve index {index} out of range (the file holds {len(found)} curves)")
    name, xs, ys = found[int(index)]
    where = f"{path}" + (f" curve {index} ({name})" if len(found) > 1 else "")
    if len(xs) < 2 or len(xs) != len(ys):
        raise CurveError(f"{where}: a curve needs as many x as y values, at least two")
    if not (np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0) and ys[-1] > ys[0]):
        raise CurveError(f"{where}: the curve must increase (x strictly, y monotone)")
    if abs(xs[0]) > 1e-6 or abs(ys[0]) > 1e-6 or abs(xs[-1] - 1) > 1e-6 or abs(ys[-1] - 1) > 1e-6:
        raise CurveError(f"{where}: the curve must run from (0, 0) to (1, 1), got ({xs[0]:g}, {ys[0]:g}) .. "
                         f"({xs[-1]:g}, {ys[-1]:g})")
    # strictly increasing y so the inverse is a function: lift flat runs by a negligible ramp
    ys = np.maximum.accumulate(ys + np.linspace(0.0, 1e-9, len(ys)))
    ys = (ys - ys[0]) / (ys[-1] - ys[0])
    digest = hashlib.sha256(np.concatenate([xs, ys]).tobytes()).hexdigest()[:16]
    spec = f"table:{digest}"
    if spec not in _TABLES:
        _TABLES[spec] = (xs, ys)
        luma_of_code.cache_clear()
    return spec


def write_dorf_gammas(path: str | Path, gammas=(1.6, 2.0, 2.4, 3.0)) -> list[str]:
    """A synthetic curve file in the DoRF text format (name / type / "I =" / values / "B =" / values per curve) of
    monotone gamma curves, for tests and benchmarks (the real database cannot be shipped). Returns the names."""
    x = np.linspace(0.0, 1.0, 1024)
    names = [f"synthetic-gamma-{g}" for g in gammas]
    Path(path).write_text("".join(f"{n}\ngraph\nI =\n{' '.join(f'{v:.6f}' for v in x)}\nB =\n"
                                  f"{' '.join(f'{v:.6f}' for v in x ** (1.0 / g))}\n" for n, g in zip(names, gammas)))
    return names
