"""Sliding-window inference over videos longer than a model's window (numpy only, no model code).

A model that maps a window of W frames to W frames (DiffHDR: W = 4k+1, the Wan VAE's frame count) converts a video
of N frames as follows:

* :func:`plan_windows` -- window starts: every ``W - overlap`` frames from 0, the last window aligned to the last
  frame (so it may overlap its neighbour by more than ``overlap``); a video shorter than W is one window at 0,
  padded by repeating its last frame (:func:`pad_frames`), the padding dropped from the output.
* :func:`blend_weights` -- per window and frame, a linear cross-fade across each overlap: in an overlap of L frames
  the earlier window's weight falls (L, ..., 1) / (L + 1) while the later one's rises (1, ..., L) / (L + 1), so two
  windows' weights sum to 1 frame by frame; where three windows meet (a short last step) the weights are
  normalised to sum to 1. Outside overlaps a window's weight is exactly 1.
* :class:`WindowBlender` -- streaming accumulation: feed window outputs in plan order, get each frame back exactly
  once, as soon as no later window touches it (memory: one window plus its overlap, not the whole video).

DiffHDR inference uses this (``train.diffhdr.infer``); HDR-V-Diff predicts one frame per window (the window is
centred on it) and needs no blending.
"""
from __future__ import annotations

import numpy as np


class WindowPlanError(ValueError):
    pass


def plan_windows(n_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of the windows that cover ``n_frames`` frames with windows of ``window`` frames, consecutive
    windows overlapping by at least ``overlap`` frames, the last one ending at the last frame (or, for a video
    shorter than a window, one window at 0 that runs past the end: pad the input)."""
    n_frames, window, overlap = int(n_frames), int(window), int(overlap)
    if n_frames < 1:
        raise WindowPlanError(f"no frames to convert ({n_frames})")
    if window < 1:
        raise WindowPlanError(f"window must be at least 1 frame, got {window}")
    if not 0 <= overlap < window:
        raise WindowPlanError(f"overlap must be in [0, window - 1 = {window - 1}], got {overlap}")
    if n_frames <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, n_frames - window, stride))
    starts.append(n_frames - window)            # aligned to the end; > starts[-1], at most `stride` after it
    return starts


def blend_weights(starts: list[int], window: int, n_frames: int | None = None) -> np.ndarray:
    """(len(starts), window) float64 weights: linear cross-fade over every overlap of consecutive windows, summing
    to 1 at every covered frame. ``n_frames`` (default: the end of the last window) zeroes frames past the end
    (padding of a short video)."""
    starts = [int(s) for s in starts]
    if not starts or any(b <= a for a, b in zip(starts, starts[1:])):
        raise WindowPlanError(f"window starts must be increasing, got {starts}")
    k = len(starts)
    end = starts[-1] + window if n_frames is None else int(n_frames)
    t = np.arange(window, dtype=np.float64)
    w = np.ones((k, window))
    for i, s in enumerate(starts):
        if i > 0:                                   # overlap with the previous window: [s, prev_end)
            lin = starts[i - 1] + window - s
            if lin > 0:
                w[i] = np.minimum(w[i], np.clip((t + 1) / (lin + 1), 0, 1))
        if i < k - 1:                               # overlap with the next window: [next_start, s + window)
            lout = s + window - starts[i + 1]
            if lout > 0:
                w[i] = np.minimum(w[i], np.clip((window - t) / (lout + 1), 0, 1))
        w[i, t + s >= end] = 0.0
    total = np.zeros(starts[-1] + window)
    for i, s in enumerate(starts):
        total[s:s + window] += w[i]
    if (total[:end] <= 0).any():
        raise WindowPlanError(f"windows {starts} of {window} frames leave frames of 0..{end - 1} uncovered")
    for i, s in enumerate(starts):
        covered = total[s:s + window] > 0
        w[i, covered] /= total[s:s + window][covered]
    return w


def pad_frames(frames: np.ndarray, length: int) -> np.ndarray:
    """``frames`` (T, ...) extended to ``length`` by repeating the last frame (unchanged if already long enough)."""
    if len(frames) >= length:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], length - len(frames), axis=0)])


class WindowBlender:
    """Accumulate window outputs (in plan order) into frames; each finished frame is returned exactly once.

    ``b = WindowBlender(plan_windows(n, W, overlap), W, n)``, then for each window i at start s:
    ``for t, frame in b.add(i, model(pad_frames(x[s:s + W], W))): write(t, frame)``.
    """

    def __init__(self, starts: list[int], window: int, n_frames: int, first: int = 0):
        """``first`` > 0 starts at that window (resuming): frames before ``starts[first] + window`` that earlier
        windows also cover come out incomplete -- use only frames >= :func:`resume_window`'s frame."""
        self.starts, self.window, self.n_frames = [int(s) for s in starts], int(window), int(n_frames)
        self.weights = blend_weights(self.starts, self.window, self.n_frames)
        self._acc: dict[int, np.ndarray] = {}
        self._next = int(first)                   # next window expected
        self._done = self.starts[self._next]      # frames [.., _done) have been returned

    def add(self, index: int, frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add window ``index``'s output (window, ...); returns [(frame index, blended frame)] of every frame no
        later window covers, in order (each frame is returned by exactly one call)."""
        if index != self._next:
            raise WindowPlanError(f"window {index} added, expected window {self._next} (add windows in order)")
        frames = np.asarray(frames)
        if len(frames) != self.window:
            raise WindowPlanError(f"window {index} has {len(frames)} frames, expected {self.window}")
        s = self.starts[index]
        for j in range(self.window):
            t = s + j
            if t >= self.n_frames:
                break
            contrib = frames[j].astype(np.float64) * self.weights[index, j]
            self._acc[t] = self._acc[t] + contrib if t in self._acc else contrib
        self._next += 1
        final = self.starts[index + 1] if index + 1 < len(self.starts) else self.n_frames
        dtype = frames.dtype if frames.dtype.kind == "f" else np.float32
        out = [(t, self._acc.pop(t).astype(dtype)) for t in range(self._done, final)]
        self._done = max(self._done, final)
        return out

    @property
    def finished(self) -> bool:
        return self._done == self.n_frames


def resume_window(starts: list[int], window: int, n_done: int) -> int:
    """The first window to rerun when frames [0, n_done) are finished: the earliest one that covers a frame
    >= n_done (every window that contributes to a later frame starts at or after it, so the later frames come out
    exactly as in an uninterrupted run)."""
    for i, s in enumerate(starts):
        if s + window > n_done:
            return i
    return len(starts)


def blend_all(starts: list[int], window: int, n_frames: int, outputs: list[np.ndarray]) -> np.ndarray:
    """All frames at once (for small inputs and tests): the blend of ``outputs[i]`` (window, ...) over the plan."""
    b = WindowBlender(starts, window, n_frames)
    got = [f for i, out in enumerate(outputs) for _, f in b.add(i, out)]
    return np.stack(got)
