"""StreamingMonitor: tumbling or sliding event-time windows over feature/prediction
records, checked against a reference profile, in bounded memory.

Records arrive in batches (Polars frames with an event-time column). Each row
lands in a *pane* of length ``slide`` (a tumbling window is one pane). A pane
keeps only summaries - a quantile sketch per numeric column, capped value
counts per categorical column, a bottom-k uniform row sample for the
multivariate test and a score histogram for performance - so memory is
O(panes x columns x sketch_size), independent of traffic. A window of
``size = m x slide`` merges its m panes. Windows close in event-time order
when the watermark (latest event time seen minus ``allowed_lateness``) passes
their end; rows for panes whose windows have all closed are counted as late and
dropped. Windows with no rows are skipped.

The result does not depend on how records are cut into batches: a batch is applied as if
row by row (it is split where the watermark closes a window), nothing is late before the
first window closes, and the multivariate sample keeps the rows with the smallest hash of
``id_column`` (when set) rather than of a random draw. ``snapshot()``/``restore()`` carry the
whole state (panes, history, RNG), so a consumer that commits the snapshot with its progress
resumes exactly where it stopped.

Every closed window yields a :class:`ReportWindow`: the drift result, the
policy decision (stepped with the monitor's history), and performance figures
(label-free estimate; realised metrics from labels received so far).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from keel.drift._check import CheckOptions, DriftResult, compare_summaries, quality_issues
from keel.drift._errors import InvalidInputError
from keel.drift._multivariate import domain_classifier_test
from keel.drift._performance import ScoreHistogram
from keel.drift._policy import DriftPolicy, PolicyDecision
from keel.drift._profile import (
    ColumnSummary,
    NumericSummary,
    ReferenceProfile,
    is_numeric_dtype,
    merge_summaries,
    summarise_column,
)
from keel.drift._report import ReportWindow

_US = 1_000_000


@dataclass(frozen=True)
class WindowConfig:
    """Window shape and the columns that carry time, predicted probability and label."""

    size: timedelta
    slide: timedelta | None = None  # None: tumbling (slide = size)
    allowed_lateness: timedelta = timedelta(0)
    time_column: str = "event_time"
    score_column: str | None = None
    id_column: str | None = None  # record id: deterministic sampling, late ids reported
    score_threshold: float = 0.5
    sketch_size: int = 1024
    sample_size: int = 1000
    score_bins: int = 200
    label_retention_panes: int = 256  # panes whose score histograms stay for late labels

    def __post_init__(self) -> None:
        slide = self.slide or self.size
        if self.size <= timedelta(0) or slide <= timedelta(0):
            raise InvalidInputError("window size and slide must be positive")
        if self.size % slide:
            raise InvalidInputError(
                f"window size {self.size} must be a whole multiple of slide {slide}"
            )
        if self.allowed_lateness < timedelta(0):
            raise InvalidInputError("allowed_lateness must be >= 0")
        if not 16 <= self.sketch_size <= 1_000_000:
            raise InvalidInputError("sketch_size must be in [16, 1e6]")

    @property
    def slide_us(self) -> int:
        return int((self.slide or self.size) / timedelta(microseconds=1))

    @property
    def panes_per_window(self) -> int:
        return int(self.size / (self.slide or self.size))


@dataclass
class _Pane:
    rows: int = 0
    columns: dict[str, ColumnSummary] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    seen_columns: set[str] = field(default_factory=set)
    sample_keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    sample_rows: np.ndarray | None = None
    scores: ScoreHistogram | None = None
    buffer: pl.DataFrame | None = None  # rows not yet summarised (less than one chunk)


@dataclass(frozen=True)
class MonitorStats:
    rows_seen: int
    late_rows: int
    open_panes: int
    windows_emitted: int


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / _US, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StreamingMonitor:
    """Windowed drift monitor. ``observe`` returns the windows that the batch closed."""

    def __init__(
        self,
        profile: ReferenceProfile,
        config: WindowConfig,
        *,
        policy: DriftPolicy | None = None,
        check_options: CheckOptions | None = None,
        rng: np.random.Generator | None = None,
        on_window: Callable[[ReportWindow], None] | None = None,
        max_history: int = 10_000,
    ) -> None:
        self.profile = profile
        self.config = config
        self.policy = policy or DriftPolicy()
        self.options = check_options or CheckOptions()
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._on_window = on_window
        self._panes: dict[int, _Pane] = {}
        self._retained: dict[int, ScoreHistogram] = {}  # evicted panes' scores, for late labels
        self._next_end: int | None = None  # pane index at which the next window ends (exclusive)
        self._max_time_us: int | None = None
        self._rows_seen = 0
        self._late_rows = 0
        self._emitted = 0
        self._decisions: list[PolicyDecision] = []
        self._max_history = max_history
        self._closing = False  # a window has closed: _next_end only moves forward from here
        #: Ids (``id_column``) of the rows the last ``observe`` dropped as late.
        self.last_late_ids: list[str] = []
        js = profile.joint_sample
        self._sample_cols = list(js.columns) if js is not None and self.options.multivariate else []

    # -- state --------------------------------------------------------------------------
    @property
    def stats(self) -> MonitorStats:
        return MonitorStats(self._rows_seen, self._late_rows, len(self._panes), self._emitted)

    @property
    def history(self) -> Sequence[PolicyDecision]:
        return tuple(self._decisions)

    @property
    def watermark(self) -> datetime | None:
        if self._max_time_us is None:
            return None
        lateness = int(self.config.allowed_lateness / timedelta(microseconds=1))
        return datetime.fromtimestamp((self._max_time_us - lateness) / _US, tz=UTC)

    # -- input --------------------------------------------------------------------------
    def _times(self, frame: pl.DataFrame) -> np.ndarray:
        col = self.config.time_column
        if col not in frame.columns:
            raise InvalidInputError(
                f"batch has no event-time column {col!r} (columns: {frame.columns})"
            )
        dtype = frame.schema[col]
        if not isinstance(dtype, pl.Datetime):
            raise InvalidInputError(f"event-time column {col!r} must be a Datetime, got {dtype}")
        if frame[col].null_count():
            raise InvalidInputError(f"event-time column {col!r} has nulls")
        return frame[col].dt.epoch("us").to_numpy()

    def observe(self, frame: pl.DataFrame) -> list[ReportWindow]:
        """Add a batch of records (in arrival order); returns the windows it closed (oldest
        first). The same rows give the same windows however they are cut into batches."""
        if not isinstance(frame, pl.DataFrame):
            raise InvalidInputError(f"expected a polars.DataFrame, got {type(frame).__name__}")
        self.last_late_ids = []
        if not frame.height:
            return []
        t = self._times(frame)
        out: list[ReportWindow] = []
        start = 0
        while start < len(t):
            end = self._segment_end(t, start)
            out.extend(self._observe_segment(frame[start:end], t[start:end]))
            start = end
        return out

    def _segment_end(self, t: np.ndarray, start: int) -> int:
        """End (exclusive) of the rows from ``start`` that can be added before a window
        closes: just after the first row whose time moves the watermark past the end of the
        next window to close."""
        slide, m = self.config.slide_us, self.config.panes_per_window
        lateness = int(self.config.allowed_lateness / timedelta(microseconds=1))
        tt = t[start:]
        panes = tt // slide
        prior = self._max_time_us if self._max_time_us is not None else np.iinfo(np.int64).min
        if self._closing:
            assert self._next_end is not None
            keep = panes >= self._next_end - m
            ends = np.full(len(tt), self._next_end, dtype=np.int64)
        else:
            keep = np.ones(len(tt), dtype=bool)
            first = self._next_end - m if self._next_end is not None else int(panes[0])
            ends = np.minimum.accumulate(np.minimum(panes, first)) + m
        cm = np.maximum.accumulate(np.where(keep, tt, np.iinfo(np.int64).min))
        cm = np.maximum(cm, prior)
        hit = np.flatnonzero(keep & (cm - lateness >= ends * slide))
        return start + int(hit[0]) + 1 if len(hit) else len(t)

    def _observe_segment(self, frame: pl.DataFrame, t: np.ndarray) -> list[ReportWindow]:
        slide = self.config.slide_us
        pane_ids = t // slide
        m = self.config.panes_per_window
        if not self._closing:  # before the first close the earliest pane seen starts it all
            lo = int(pane_ids.min())
            self._next_end = lo + m if self._next_end is None else min(self._next_end, lo + m)
        assert self._next_end is not None
        oldest_open = self._next_end - m
        keep = pane_ids >= oldest_open
        self._late_rows += int((~keep).sum())
        self._rows_seen += frame.height
        if not keep.all():
            idc = self.config.id_column
            if idc is not None and idc in frame.columns:
                self.last_late_ids.extend(
                    str(x) for x in frame.filter(pl.Series(~keep))[idc].to_list()
                )
            frame, pane_ids, t = frame.filter(pl.Series(keep)), pane_ids[keep], t[keep]
        if frame.height:
            mx = int(t.max())
            self._max_time_us = mx if self._max_time_us is None else max(self._max_time_us, mx)
            tagged = frame.with_columns(pl.Series("__pane", pane_ids))
            parts = tagged.partition_by("__pane", as_dict=True, maintain_order=True)
            for key, part in sorted(parts.items(), key=lambda kv: int(kv[0][0])):
                self._add_to_pane(int(key[0]), part.drop("__pane"))
        return self._close_ready()

    def observe_labels(self, frame: pl.DataFrame, label_column: str = "label") -> int:
        """Add labels for earlier predictions: rows with the prediction's event time, its
        score (``score_column``) and the 0/1 label. Labels for panes already evicted are
        dropped (returned count = labels kept)."""
        score_col = self.config.score_column
        if score_col is None:
            raise InvalidInputError("labels need WindowConfig.score_column")
        for c in (score_col, label_column):
            if c not in frame.columns:
                raise InvalidInputError(f"label batch has no column {c!r}")
        if not frame.height:
            return 0
        pane_ids = self._times(frame) // self.config.slide_us
        kept = 0
        tagged = frame.with_columns(pl.Series("__pane", pane_ids))
        for key, part in tagged.partition_by("__pane", as_dict=True).items():
            pid = int(key[0]) if isinstance(key, tuple) else int(key)
            pane = self._panes.get(pid)
            hist = pane.scores if pane is not None else self._retained.get(pid)
            if pane is not None and hist is None:
                hist = pane.scores = ScoreHistogram(self.config.score_bins)
            if hist is None:
                continue
            hist.add_labels(
                part[score_col].cast(pl.Float64).to_numpy(),
                part[label_column].cast(pl.Float64).to_numpy(),
            )
            kept += part.height
        return kept

    def flush(self, *, partial: bool = True) -> list[ReportWindow]:
        """Close the open windows (end of stream). With ``partial=False`` windows that end
        after the pane holding the latest event are dropped: with sliding windows those
        cover only the stream's tail and would compare a fraction of a day with a whole one."""
        out: list[ReportWindow] = []
        last_end = None
        if not partial and self._max_time_us is not None:
            last_end = self._max_time_us // self.config.slide_us + 1
        while self._panes and self._next_end is not None:
            if last_end is not None and self._next_end > last_end:
                self._panes.clear()
                break
            self._closing = True
            out.extend(self._emit_next())
        return out

    def realised_performance(self, start: datetime, end: datetime) -> dict[str, float | None]:
        """Realised metrics (AUC, Brier, ECE) over ``[start, end)`` from labels received so far,
        for panes still open or retained (``label_retention_panes``)."""
        slide = self.config.slide_us
        lo = int(start.timestamp() * _US) // slide
        hi = int(end.timestamp() * _US) // slide
        hists = [h for pid, h in self._retained.items() if lo <= pid < hi]
        hists += [
            p.scores for pid, p in self._panes.items() if lo <= pid < hi and p.scores is not None
        ]
        if not hists:
            return ScoreHistogram(self.config.score_bins).realised()
        h = hists[0]
        for other in hists[1:]:
            h = h.merge(other)
        return h.realised()

    # -- internals ----------------------------------------------------------------------
    def _add_to_pane(self, pid: int, part: pl.DataFrame) -> None:
        """Buffer ``part``'s rows in the pane and summarise them a chunk (``sketch_size``
        rows, in arrival order) at a time: summaries then do not depend on batch cuts."""
        pane = self._panes.setdefault(pid, _Pane())
        pane.rows += part.height
        idc = self.config.id_column
        pane.seen_columns.update(c for c in part.columns if c != idc)
        buf = (
            part if pane.buffer is None else pl.concat([pane.buffer, part], how="diagonal_relaxed")
        )
        n = self.config.sketch_size
        while buf.height >= n:
            self._summarise_into(pane, buf[:n])
            buf = buf[n:]
        pane.buffer = buf if buf.height else None

    def _settled(self, pane: _Pane) -> _Pane:
        """``pane`` with its buffered rows summarised too (a copy; the pane is unchanged)."""
        if pane.buffer is None:
            return pane
        tmp = _Pane(
            rows=pane.rows,
            columns=dict(pane.columns),
            out_of_range=dict(pane.out_of_range),
            seen_columns=pane.seen_columns,
            sample_keys=pane.sample_keys,
            sample_rows=pane.sample_rows,
            scores=None if pane.scores is None else pane.scores.merge(_empty_like(pane.scores)),
        )
        self._summarise_into(tmp, pane.buffer)
        return tmp

    def _summarise_into(self, pane: _Pane, part: pl.DataFrame) -> None:
        idc = self.config.id_column
        sketch_opts = self.profile.options
        for name, ref in self.profile.columns.items():
            if name not in part.columns:
                continue
            series = part[name]
            kind = ref.kind
            if kind == "numeric" and not is_numeric_dtype(series.dtype):
                kind = "categorical"
            summary = summarise_column(
                series,
                kind,
                sketch_opts,
                sketch_size=self.config.sketch_size,
                max_categories=max(sketch_opts.max_categories * 4, 64),
            )
            prev = pane.columns.get(name)
            # a kind change mid-pane keeps the latest view
            pane.columns[name] = (
                summary if prev is None else merge_summaries(prev, summary) or summary
            )
            if (
                isinstance(ref, NumericSummary)
                and isinstance(summary, NumericSummary)
                and ref.count
            ):
                vals = series.cast(pl.Float64).to_numpy()
                vals = vals[np.isfinite(vals)]
                pane.out_of_range[name] = pane.out_of_range.get(name, 0) + int(
                    np.count_nonzero((vals < ref.min) | (vals > ref.max))
                )
        if self._sample_cols and all(c in part.columns for c in self._sample_cols):
            rows = part.select([pl.col(c).cast(pl.Float64) for c in self._sample_cols]).to_numpy()
            if idc is not None and idc in part.columns:  # order-independent: a hash of the id
                keys = part[idc].cast(pl.String).hash(seed=0).to_numpy() / 2.0**64
            else:
                keys = self._rng.random(len(rows))
            self._bottom_k(pane, keys, rows)
        score_col = self.config.score_column
        if score_col is not None and score_col in part.columns:
            if pane.scores is None:
                pane.scores = ScoreHistogram(self.config.score_bins)
            pane.scores.add_scores(part[score_col].cast(pl.Float64).drop_nulls().to_numpy())

    def _bottom_k(self, pane: _Pane, keys: np.ndarray, rows: np.ndarray) -> None:
        k = self.config.sample_size
        all_keys = np.concatenate([pane.sample_keys, keys])
        all_rows = rows if pane.sample_rows is None else np.vstack([pane.sample_rows, rows])
        if len(all_keys) > k:
            idx = np.argpartition(all_keys, k - 1)[:k]
            all_keys, all_rows = all_keys[idx], all_rows[idx]
        pane.sample_keys, pane.sample_rows = all_keys, all_rows

    def _close_ready(self) -> list[ReportWindow]:
        out: list[ReportWindow] = []
        if self._max_time_us is None or self._next_end is None:
            return out
        lateness = int(self.config.allowed_lateness / timedelta(microseconds=1))
        watermark = self._max_time_us - lateness
        while self._next_end * self.config.slide_us <= watermark and self._panes:
            self._closing = True
            out.extend(self._emit_next())
        return out

    def _emit_next(self) -> list[ReportWindow]:
        assert self._next_end is not None
        m = self.config.panes_per_window
        end = self._next_end
        start = end - m
        panes = [self._panes[p] for p in range(start, end) if p in self._panes]
        out: list[ReportWindow] = []
        if panes:
            out.append(self._evaluate([self._settled(p) for p in panes], start, end))
        # advance; drop panes no later window needs; skip empty stretches
        self._next_end = end + 1
        for p in [p for p in self._panes if p < self._next_end - m]:
            scores = self._settled(self._panes.pop(p)).scores
            if scores is not None and self.config.label_retention_panes:
                self._retained[p] = scores
        while len(self._retained) > self.config.label_retention_panes:
            del self._retained[min(self._retained)]
        if self._panes and not any(p < self._next_end for p in self._panes):
            self._next_end = min(self._panes) + 1
        return out

    def _evaluate(self, panes: list[_Pane], start: int, end: int) -> ReportWindow:
        slide = self.config.slide_us
        rows = sum(p.rows for p in panes)
        current: dict[str, ColumnSummary] = {}
        oor: dict[str, int] = {}
        seen: set[str] = set()
        for p in panes:
            seen |= p.seen_columns
            for name, s in p.columns.items():
                prev = current.get(name)
                current[name] = s if prev is None else merge_summaries(prev, s) or prev
            for name, c in p.out_of_range.items():
                oor[name] = oor.get(name, 0) + c
        missing = [c for c in self.profile.columns if c not in seen]
        unexpected = sorted(
            seen
            - set(self.profile.columns)
            - {self.config.time_column, self.config.score_column or "", self.config.id_column or ""}
        )
        features = compare_summaries(self.profile, current)
        issues = quality_issues(self.profile, current, oor, self.options, missing, unexpected)
        multi = None
        js = self.profile.joint_sample
        samples = [p.sample_rows for p in panes if p.sample_rows is not None]
        if js is not None and samples:
            keys = np.concatenate([p.sample_keys for p in panes if p.sample_rows is not None])
            allrows = np.vstack(samples)
            k = min(self.config.sample_size, len(keys))
            idx = np.argsort(keys, kind="stable")[:k]  # a fixed order: the test is order-sensitive
            sub = allrows[idx]
            sub = np.where(np.isfinite(sub), sub, np.nan)
            multi = domain_classifier_test(
                js.values, sub, list(js.columns), self._rng, self.options.multivariate_alpha
            )
        result = DriftResult(rows, features, issues, multi, _iso(start * slide), _iso(end * slide))
        decision = self.policy.decide(result, self._decisions)
        self._decisions.append(decision)
        if len(self._decisions) > self._max_history:
            del self._decisions[: -self._max_history]
        perf: dict[str, float | None] = {}
        hists = [p.scores for p in panes if p.scores is not None]
        if hists:
            h = hists[0]
            for other in hists[1:]:
                h = h.merge(other)
            perf = {**h.estimated(self.config.score_threshold), **h.realised()}
        window = ReportWindow(result, decision, perf)
        self._emitted += 1
        if self._on_window is not None:
            self._on_window(window)
        return window

    # -- snapshot -----------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The monitor's whole state as bytes (JSON): panes, retained score histograms, the
        window cursor, counters, decision history and the RNG."""
        state = {
            "version": 1,
            "panes": {str(p): _pane_to_dict(pane, self.profile) for p, pane in self._panes.items()},
            "retained": {str(p): _hist_to_dict(h) for p, h in self._retained.items()},
            "next_end": self._next_end,
            "max_time_us": self._max_time_us,
            "closing": self._closing,
            "rows_seen": self._rows_seen,
            "late_rows": self._late_rows,
            "emitted": self._emitted,
            "decisions": [d.to_dict() for d in self._decisions],
            "rng": self._rng.bit_generator.state,
        }
        return json.dumps(state, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> None:
        """Replace this monitor's state by a ``snapshot()`` of a monitor with the same
        profile and window config."""
        try:
            state = json.loads(data)
            if state.get("version") != 1:
                raise ValueError(f"unknown monitor snapshot version {state.get('version')!r}")
            panes = {int(p): _pane_from_dict(d) for p, d in state["panes"].items()}
            retained = {int(p): _hist_from_dict(d) for p, d in state["retained"].items()}
            decisions = [PolicyDecision.from_dict(d) for d in state["decisions"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"cannot restore the monitor from its snapshot: {exc}") from exc
        self._panes, self._retained, self._decisions = panes, retained, decisions
        self._next_end = state["next_end"]
        self._max_time_us = state["max_time_us"]
        self._closing = bool(state["closing"])
        self._rows_seen = int(state["rows_seen"])
        self._late_rows = int(state["late_rows"])
        self._emitted = int(state["emitted"])
        self._rng.bit_generator.state = state["rng"]


def _hist_to_dict(h: ScoreHistogram) -> dict[str, object]:
    return {
        "bins": h.bins,
        "count": h.count.tolist(),
        "psum": h.psum.tolist(),
        "pos": h.pos.tolist(),
        "neg": h.neg.tolist(),
        "brier_sum": h.brier_sum,
        "labelled_p": h.labelled_p.tolist(),
    }


def _hist_from_dict(d: dict[str, object]) -> ScoreHistogram:
    arr = {k: np.asarray(d[k], dtype=np.float64) for k in ("count", "psum", "pos", "neg")}
    return ScoreHistogram(
        int(d["bins"]),  # type: ignore[call-overload]
        arr["count"],
        arr["psum"],
        arr["pos"],
        arr["neg"],
        float(d["brier_sum"]),  # type: ignore[arg-type]
        np.asarray(d["labelled_p"], dtype=np.float64),
    )


def _pane_to_dict(pane: _Pane, profile: ReferenceProfile) -> dict[str, object]:
    summaries = ReferenceProfile(dict(pane.columns), pane.rows, profile.options)
    return {
        "rows": pane.rows,
        "columns": summaries.to_json().decode(),
        "out_of_range": pane.out_of_range,
        "seen_columns": sorted(pane.seen_columns),
        "sample_keys": pane.sample_keys.tolist(),
        "sample_rows": None if pane.sample_rows is None else pane.sample_rows.tolist(),
        "scores": None if pane.scores is None else _hist_to_dict(pane.scores),
        "buffer": None if pane.buffer is None else _frame_to_text(pane.buffer),
    }


def _pane_from_dict(d: dict[str, object]) -> _Pane:
    cols = ReferenceProfile.from_json(str(d["columns"])).columns
    rows = d["sample_rows"]
    return _Pane(
        rows=int(d["rows"]),  # type: ignore[call-overload]
        columns=dict(cols),
        out_of_range={str(k): int(v) for k, v in dict(d["out_of_range"]).items()},  # type: ignore[call-overload]
        seen_columns=set(d["seen_columns"]),  # type: ignore[call-overload]
        sample_keys=np.asarray(d["sample_keys"], dtype=np.float64),
        sample_rows=None if rows is None else np.asarray(rows, dtype=np.float64),
        scores=None if d["scores"] is None else _hist_from_dict(d["scores"]),  # type: ignore[arg-type]
        buffer=None if d.get("buffer") is None else _frame_from_text(str(d["buffer"])),
    )


def _frame_to_text(frame: pl.DataFrame) -> str:
    import base64
    import io

    out = io.BytesIO()
    frame.write_ipc(out)
    return base64.b64encode(out.getvalue()).decode()


def _frame_from_text(text: str) -> pl.DataFrame:
    import base64
    import io

    return pl.read_ipc(io.BytesIO(base64.b64decode(text)))


def _empty_like(h: ScoreHistogram) -> ScoreHistogram:
    return ScoreHistogram(h.bins)
