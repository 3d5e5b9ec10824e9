"""Alignment of a two-camera pair: a homography from the RAW's packed grid to the target image, fitted
where the images support it, and the residual that remains, per scene and per place.

1. Features: SIFT on reduced previews (at most ``max_side`` pixels a side), ratio-tested matches,
   MAGSAC++ on a projective model — an affine one when the matches cover too little of the frame
   to say anything about perspective.
2. Refinement, twice: the target is warped into the preview's frame and compared in windows on a
   grid over the whole frame. Each window's shift comes from phase correlation, then Lucas–Kanade
   steps on the window normalised to zero mean and unit variance (the cameras render tones
   differently), and keeps its structure tensor: a textured window constrains both directions, a
   gradient (sky, a wall's shading) only the one across it, a flat one nothing. The correction is
   the weighted least-squares homography under those directional weights (iteratively reweighted,
   so a moving subject does not pull it), with a weak prior towards no perspective that only
   matters where nothing in the frame constrains it.
3. Residuals: each window's remaining shift along its reliable directions, in target pixels —
   their RMS and 95th percentile describe the scene; the median inside a patch is that patch's
   local residual, which ``--max-shift`` compares against (parallax, a moving subject).

Everything runs on OpenCV primitives at the packed resolution; the target is warped once, at the
resolution the patches need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from raw2rgb.errors import UserError
from raw2rgb.pipeline.develop import luma

WINDOW = 32  # packed pixels
PERSPECTIVE_PRIOR = 0.25  # px: a priori std of what perspective moves the frame's edge (only felt where unmeasured)
OUTLIER = 2.0  # target px
MAX_SIGMA = 0.2  # px: a window whose best-known direction is less certain than this is not used
NOISE_FLOOR = 0.002  # luma: 8-bit quantisation and JPEG noise of a target, after the smoothing
TUKEY = 1.0  # px: windows this far off the fit have no weight
FLOOR = 0.05  # px: error every window shift has at least (interpolation, rendering differences)


class AlignError(UserError):
    """A pair that cannot be aligned; the message says why, with the counts."""


@dataclass
class Alignment:
    """A homography from packed coordinates to target coordinates, and how well it is supported."""

    matrix: np.ndarray  # (3, 3)
    inliers: int
    matches: int
    model: str = "projective"  # of the feature fit: "projective" or "affine"
    residual_median: float = float("nan")  # target pixels, over the measured windows
    residual_p95: float = float("nan")
    windows: int = 0
    outliers: int = 0  # windows left more than OUTLIER px off (parallax, motion, failed measurements)
    # per window: x, y (packed centre), residual (target px), weight; for the per-patch residual
    window_residuals: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)), repr=False)
    snapped: bool = False  # the target was used as it is: it matched better unwarped (pairs._as_good_unwarped)

    def to_json(self) -> dict:
        return {"matrix": [[round(float(v), 9) for v in row] for row in self.matrix], "inliers": self.inliers,
                "matches": self.matches, "model": self.model, **({"snapped": True} if self.snapped else {}),
                "residual_px": {"median": round(self.residual_median, 4), "p95": round(self.residual_p95, 4),
                                "windows": self.windows, "outliers": self.outliers}}

    def local_residual(self, y: int, x: int, size: int) -> float | None:
        """Median residual (target px) of the windows centred inside the patch, or None without any."""
        r = self.window_residuals
        inside = (r[:, 0] >= x) & (r[:, 0] < x + size) & (r[:, 1] >= y) & (r[:, 1] < y + size)
        return float(np.median(r[inside, 2])) if inside.sum() >= 2 else None


def _to_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
    return np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)


def _features(img: np.ndarray, scale: float, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    keypoints, desc = cv2.SIFT_create(nfeatures=n).detectAndCompute(_to_uint8(img, scale), None)
    if desc is None or not keypoints:
        return np.zeros((0, 2)), None
    xy = np.array([k.pt for k in keypoints], np.float64)
    return (xy + 0.5) / scale - 0.5, desc  # centres on integers, at full scale


def _hull_fraction(points: np.ndarray, shape: tuple[int, int]) -> float:
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32))
    return float(cv2.contourArea(hull)) / (shape[0] * shape[1])


def feature_homography(preview: np.ndarray, target: np.ndarray, *, min_inliers: int = 25, max_side: int = 800,
                       n_features: int = 4000, name: str = "pair") -> Alignment:
    """The homography from matched features (step 1 of the module's docstring).

    Raises:
        AlignError: too few features, matches or inliers (the message gives the counts).
    """
    sp = min(1.0, max_side / max(preview.shape))
    st = min(1.0, max_side / max(target.shape))
    xy_p, d_p = _features(preview, sp, n_features)
    xy_t, d_t = _features(target, st, n_features)
    if len(xy_p) < 4 or len(xy_t) < 4:
        raise AlignError(f"{name}: too few features to align ({len(xy_p)} in the RAW, {len(xy_t)} in the RGB)")
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d_p, d_t, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < min_inliers:
        raise AlignError(f"{name}: not the same scene? {len(good)} feature matches, need {min_inliers}")
    src = xy_p[[m.queryIdx for m in good]]
    dst = xy_t[[m.trainIdx for m in good]]
    threshold = 2.0 / min(sp, st)
    cv2.setRNGSeed(0)  # MAGSAC samples with OpenCV's process-wide RNG: same pair, same answer, any worker
    matrix, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold, maxIters=5000, confidence=0.999)
    inliers = mask.ravel().astype(bool) if mask is not None else np.zeros(len(src), bool)
    model = "projective"
    if matrix is not None and _hull_fraction(src[inliers], preview.shape) < 0.25:
        # the matches sit in a small part of the frame: perspective would be extrapolated, not measured
        cv2.setRNGSeed(0)
        affine, amask = cv2.estimateAffine2D(src, dst, method=cv2.USAC_MAGSAC, ransacReprojThreshold=threshold)
        if affine is not None:
            matrix, inliers, model = np.vstack([affine, [0, 0, 1]]), amask.ravel().astype(bool), "affine"
    n = int(inliers.sum())
    if matrix is None or n < min_inliers:
        raise AlignError(f"{name}: not the same scene? {n} of {len(good)} matches agree on a homography, "
                         f"need {min_inliers}")
    return Alignment(matrix / matrix[2, 2], n, len(good), model)


# -- refinement -------------------------------------------------------------------------------------

@dataclass
class _Windows:
    centres: np.ndarray  # (N, 2) x, y in the preview
    shifts: np.ndarray  # (N, 2) preview point c corresponds to the moved target at c + shift
    tensors: np.ndarray  # (N, 2, 2) structure tensors (information about the shift)


def _normalised(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    m = (a * w).sum() / w.sum()
    s = np.sqrt(((a - m) ** 2 * w).sum() / w.sum())
    return (a - m) / max(s, 1e-3)


def _window_shift(a: np.ndarray, b_full: np.ndarray, y: int, x: int, win: int, hann: np.ndarray,
                  iterations: int = 5) -> tuple[np.ndarray, np.ndarray] | None:
    """The shift d (x, y) with moved(c + d) ≈ gain·preview(c) + offset over one window, and the moved
    window resampled there.

    Gauss–Newton on (d, gain, offset) jointly: the cameras render tones differently, so a shift
    that a change of brightness could explain as well is not measured. The information about d
    is the Schur complement of the 4×4 normal matrix — zero along a linear gradient (a shifted ramp
    is a brighter ramp), full in texture."""
    wv = hann.reshape(-1)
    an = _normalised(a, hann)
    gy, gx = np.gradient(an)
    jac = np.stack([gx, gy, an, np.ones_like(an)], -1).reshape(-1, 4)  # fixed regressors
    normal = (jac * wv[:, None]).T @ jac
    try:
        inv4 = np.linalg.inv(normal + 1e-9 * np.eye(4))
    except np.linalg.LinAlgError:
        return None
    b = b_full[y : y + win, x : x + win]
    (dx, dy), response = cv2.phaseCorrelate(an.astype(np.float64), _normalised(b, hann).astype(np.float64),
                                            hann.astype(np.float64))
    d = np.array([dx, dy]) if response > 0.2 and max(abs(dx), abs(dy)) < win / 4 else np.zeros(2)
    xs, ys = np.meshgrid(np.arange(win, dtype=np.float32) + x, np.arange(win, dtype=np.float32) + y)
    for _ in range(iterations):
        bw = cv2.remap(b_full, xs + np.float32(d[0]), ys + np.float32(d[1]), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
        # an ≈ gain·bn + offset  ⇔  bn ≈ (an − offset)/gain: regress the resampled window on the fixed
        # regressors; its shift part moves d
        e = _normalised(bw, hann).reshape(-1) - an.reshape(-1)
        step = (inv4 @ ((jac * wv[:, None]).T @ e))[:2]
        d = d - step
        if np.abs(step).max() < 0.005 or np.abs(d).max() > win / 4:
            break
    if not np.all(np.isfinite(d)) or np.abs(d).max() > win / 4:
        return None
    return d, bw


def _information(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What a window says about its shift, in its own units: the Schur complement of the normal
    matrix of (shift, gain, offset) — zero along a linear gradient, large in texture."""
    gy, gx = np.gradient(a)
    jac = np.stack([gx, gy, a - a.mean(), np.ones_like(a)], -1).reshape(-1, 4)
    n = (jac * w.reshape(-1)[:, None]).T @ jac
    return n[:2, :2] - n[:2, 2:] @ _inv2(n[2:, 2:]) @ n[2:, :2]


def _inv2(m: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric 2×2 matrix (a pseudo-inverse when singular), without LAPACK's overhead."""
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if abs(det) > 1e-12 * max(float(np.abs(m).max()) ** 2, 1e-300):
        return np.array([[m[1, 1], -m[0, 1]], [-m[1, 0], m[0, 0]]]) / det
    return np.linalg.pinv(m, hermitian=True)


def measure_windows(preview: np.ndarray, moved: np.ndarray, valid: np.ndarray, win: int = WINDOW,
                    max_windows: int = 350) -> _Windows:
    """Shifts and structure tensors of windows on a grid over the whole frame."""
    h, w = preview.shape
    # Smoothed a little: bilinear resampling of sharp detail during the Lucas–Kanade steps would
    # otherwise bias the shifts by a tenth of a pixel or more.
    preview = cv2.GaussianBlur(preview.astype(np.float32), (0, 0), 1.0)
    moved = cv2.GaussianBlur(moved.astype(np.float32), (0, 0), 1.0)
    step = max(win // 2, int(np.ceil(np.sqrt(h * w / max_windows))))
    hann = np.outer(np.hanning(win + 2)[1:-1], np.hanning(win + 2)[1:-1]).astype(np.float32)
    noise_p, noise_m = _noise(preview), _noise(moved)
    floor = np.eye(2) * FLOOR**2
    centres, shifts, tensors = [], [], []
    for y in range(0, h - win + 1, step):
        for x in range(0, w - win + 1, step):
            if not valid[y : y + win, x : x + win].all():
                continue
            a = preview[y : y + win, x : x + win]
            if a.std() < 0.002:  # flat to the noise: nothing to measure
                continue
            got = _window_shift(a, moved, y, x, win, hann)
            if got is None:
                continue
            # A shift is known as well as both windows allow: noise in one (say the RAW) is texture
            # to the eye but has no counterpart in the other. Covariances add; a floor stays.
            cov = floor.copy()
            for img, noise in ((a, noise_p), (got[1], noise_m)):
                cov += _inv2(_information(img, hann) / noise**2)
            if np.linalg.eigvalsh(cov)[0] > MAX_SIGMA**2:
                continue  # no direction known to better than MAX_SIGMA
            centres.append((x + (win - 1) / 2, y + (win - 1) / 2))
            shifts.append(got[0])
            tensors.append(_inv2(cov))
    if not centres:
        return _Windows(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2, 2)))
    return _Windows(np.array(centres), np.array(shifts), np.array(tensors))


def _noise(img: np.ndarray) -> float:
    """The noise of an image, robustly: the median absolute difference of horizontal neighbours."""
    rows = img[:: max(1, img.shape[0] // 256)]  # a few hundred rows say it as well as all
    return max(float(np.median(np.abs(np.diff(rows, axis=1)))) / 0.6745 / np.sqrt(2), NOISE_FLOOR)


def _normaliser(shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """T: pixel → normalised coordinates (centre 0, half the larger side 1), and that half side."""
    h, w = shape
    s = max(h, w) / 2
    return np.array([[1 / s, 0, -(w - 1) / 2 / s], [0, 1 / s, -(h - 1) / 2 / s], [0, 0, 1]]), s


def fit_correction(win: _Windows, shape: tuple[int, int], base: np.ndarray, iterations: int = 4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The correction C (pixel homography, preview → preview) with C(c) ≈ c + shift under the windows'
    directional weights, IRLS-robust, with a prior pulling the perspective of ``base @ C`` to zero.
    Returns C and each window's residual vector (pixels)."""
    t, s = _normaliser(shape)
    uv = np.c_[win.centres, np.ones(len(win.centres))] @ t.T
    u, v = uv[:, 0], uv[:, 1]
    zero = np.zeros_like(u)
    one = np.ones_like(u)
    jac = s * np.stack([np.stack([u, v, one, zero, zero, zero, -u * u, -u * v], 1),
                        np.stack([zero, zero, zero, u, v, one, -u * v, -v * v], 1)], 1)  # (N, 2, 8)
    # prior: the perspective row of base in normalised coordinates, plus p7, p8, towards 0
    bn = base @ np.linalg.inv(t)
    q = bn[2, :2] / bn[2, 2]
    lam = 1.0 / (PERSPECTIVE_PRIOR / s) ** 2
    robust = np.ones(len(u))
    p = np.zeros(8)
    for _ in range(iterations):
        a = win.tensors * robust[:, None, None]  # precisions, 1/px²
        normal = np.einsum("nki,nkl,nlj->ij", jac, a, jac)
        rhs = np.einsum("nki,nkl,nl->i", jac, a, win.shifts)
        normal[6, 6] += lam
        normal[7, 7] += lam
        rhs[6:] -= lam * q
        p = np.linalg.solve(normal + 1e-9 * np.eye(8), rhs)
        resid = np.einsum("nki,i->nk", jac, p) - win.shifts
        # Tukey's biweight on the residual along the reliable directions: a window 1 px off (parallax,
        # motion, a border in view) stops pulling the fit
        mag = _directional(resid, win.tensors)
        robust = np.clip(1 - (mag / TUKEY) ** 2, 0, 1) ** 2
    c_norm = np.array([[1 + p[0], p[1], p[2]], [p[3], 1 + p[4], p[5]], [p[6], p[7], 1.0]])
    correction = np.linalg.inv(t) @ c_norm @ t
    return correction, resid


def _directional(resid: np.ndarray, tensors: np.ndarray) -> np.ndarray:
    """|r| along each window's reliable directions: sqrt(rᵀ Â r), Â the tensor over its largest eigenvalue."""
    top = np.linalg.eigvalsh(tensors)[:, -1]
    a = tensors / np.maximum(top, 1e-12)[:, None, None]
    return np.sqrt(np.maximum(np.einsum("nk,nkl,nl->n", resid, a, resid), 0))


def warp_to_preview(target: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The target luma resampled on the preview's grid (bilinear, low-passed first when the target is
    sampled more finely), and where that is inside the target."""
    h, w = shape
    ratio = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2] / matrix[2, 2]))))
    src = cv2.GaussianBlur(target, (0, 0), 0.5 * ratio) if ratio > 1.2 else target
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpPerspective(src.astype(np.float32), matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
    inside = cv2.warpPerspective(np.ones(target.shape, np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST |
                                 cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return moved, cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)


def refine(preview: np.ndarray, target: np.ndarray, alignment: Alignment, rounds: int = 2) -> Alignment:
    """Steps 2 and 3 of the module's docstring: ``rounds`` corrections, then the residuals."""
    matrix = alignment.matrix
    win = None
    for _ in range(rounds):
        moved, valid = warp_to_preview(target, matrix, preview.shape)
        win = measure_windows(preview, moved, valid)
        if len(win.centres) < 8:
            break
        correction, resid = fit_correction(win, preview.shape, matrix)
        matrix = matrix @ correction
        matrix = matrix / matrix[2, 2]
        if _largest_move(correction, preview.shape) < 0.2:
            break  # the windows were measured within a fifth of a pixel: another round changes nothing
    if win is None or len(win.centres) < 8:
        return Alignment(matrix, alignment.inliers, alignment.matches, alignment.model)
    # residuals after the last correction, in target pixels
    to_target = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    mag = _directional(resid, win.tensors) * to_target
    weight = np.trace(win.tensors, axis1=1, axis2=2)
    table = np.c_[win.centres, mag, weight]
    return Alignment(matrix, alignment.inliers, alignment.matches, alignment.model,
                     residual_median=float(np.median(mag)), residual_p95=float(np.percentile(mag, 95)),
                     windows=len(mag), outliers=int((mag > OUTLIER).sum()), window_residuals=table)


def _largest_move(correction: np.ndarray, shape: tuple[int, int]) -> float:
    """How far a correction moves the frame's corners, at most (pixels)."""
    h, w = shape
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
    m = correction @ c
    return float(np.abs(m[:2] / m[2] - c[:2]).max())


def align(preview: np.ndarray, target: np.ndarray, *, min_inliers: int = 25, rounds: int = 2,
          name: str = "pair") -> Alignment:
    """The homography from a RAW preview luma (h, w) in [0, 1] to a target luma (H, W) in [0, 1].

    Raises:
        AlignError: the pair cannot be aligned (too few features, matches or inliers).
    """
    return refine(preview, target, feature_homography(preview, target, min_inliers=min_inliers, name=name), rounds)


def align_target(preview: np.ndarray, target: np.ndarray, *, min_inliers: int = 25, name: str = "pair") -> Alignment:
    """:func:`align` of a preview (h, w) and an RGB target (H, W, 3) uint8. A target sampled at least
    twice as finely as the preview is aligned at half its size (a 2×2 mean: what the preview can
    resolve anyway, a quarter of the work); the result is in the full target's pixels."""
    if min(target.shape[0] / preview.shape[0], target.shape[1] / preview.shape[1]) < 2:
        return align(preview, luma(target), min_inliers=min_inliers, name=name)
    hh, ww = target.shape[0] // 2, target.shape[1] // 2
    small = cv2.resize(target[: 2 * hh, : 2 * ww], (ww, hh), interpolation=cv2.INTER_AREA)
    found = align(preview, luma(small), min_inliers=min_inliers, name=name)
    up = np.array([[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1.0]])  # half-size pixel centres → full-size coordinates
    table = found.window_residuals.copy()
    table[:, 2] *= 2
    return Alignment(up @ found.matrix, found.inliers, found.matches, found.model, 2 * found.residual_median,
                     2 * found.residual_p95, found.windows, found.outliers, table)


def packed_to_output(scale: int) -> np.ndarray:
    """Matrix from output-grid coordinates (scale s) to packed coordinates."""
    s = float(scale)
    return np.array([[1 / s, 0, (0.5 / s) - 0.5], [0, 1 / s, (0.5 / s) - 0.5], [0, 0, 1]])


def warp_target(target: np.ndarray, matrix: np.ndarray, packed_shape: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Warp the target onto the sensor grid (2h, 2w) once; return (image float [0, 1], coverage)."""
    h, w = packed_shape
    m = matrix @ packed_to_output(2)
    img = target.astype(np.float32) / 255.0 if target.dtype == np.uint8 else target.astype(np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpPerspective(img, m, (2 * w, 2 * h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    cover = cv2.warpPerspective(np.ones(target.shape[:2], np.float32), m, (2 * w, 2 * h), flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, cover


def area_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` (H, W[, C]) resampled down to ``size`` (h, w) by area averaging (OpenCV's INTER_AREA: each
    output pixel the mean of the input area it covers), in the input's dtype; the input as is when it
    already has that size."""
    if img.shape[:2] == tuple(size):
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
