"""The probe-set signals of one trial (``grok/probe/<set>/<stat>``, see ``contract``), read
over a recent window: is a held-out set showing progress the target does not show yet?

A language model that is about to generalize often shows it on its probe sets before its
validation accuracy moves: exact-match rising on a harder set, or the confidence on the
examples it answers right rising while the probe loss falls ("unsure, then confident and
right"). Confident and wrong (confidence on wrong answers high, exact-match flat) is the
memorizer's signature and counts for nothing here. The policy withholds a never-grok stop
while ``progress`` is non-empty; a trial that reports no probe signals holds an empty watch and
is decided exactly as before. A few windows per probe set, bounded.
"""

from __future__ import annotations

import math

from grokschedule.core.contract import (
    HELD_OUT_SET,
    PROBE_CONF_CORRECT,
    PROBE_CONF_WRONG,
    PROBE_EXACT_MATCH,
    PROBE_LOSS,
    Observation,
    parse_probe_metric,
)
from grokschedule.core.signals import FLAT, MetricWindow, Trend, log_trend, robust_trend

WATCHED = (PROBE_EXACT_MATCH, PROBE_CONF_CORRECT, PROBE_LOSS)  # the trends progress reads


class ProbeWatch:
    """Windows of the watched probe-set stats and the latest value of every probe stat.

    Progress on a set: exact-match rising by at least ``min_match_change`` (absolute), or the
    confidence on correct answers rising by at least ``min_conf_change`` (absolute) while the
    probe loss falls by at least ``min_loss_change`` (relative) — each a robust trend over the
    last ``window`` reports with Kendall's tau ≥ 0.5, as the phase detector reads its evidence.
    """

    def __init__(
        self,
        window: int = 10,
        min_match_change: float = 0.02,
        min_conf_change: float = 0.02,
        min_loss_change: float = 0.05,
    ) -> None:
        if window < 3:
            raise ValueError(f"probe window must be >= 3 reports, got {window}")
        for name, value in (
            ("min_match_change", min_match_change),
            ("min_conf_change", min_conf_change),
            ("min_loss_change", min_loss_change),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        self.window = window
        self.min_match_change = min_match_change
        self.min_conf_change = min_conf_change
        self.min_loss_change = min_loss_change
        self._windows: dict[tuple[str, str], MetricWindow] = {}
        self.latest: dict[tuple[str, str], float] = {}

    @property
    def present(self) -> bool:
        return bool(self.latest)

    def held_out_exact_match(self) -> float | None:
        """The held-out set's latest exact-match (``grok/probe/val/exact_match``), or None."""
        return self.latest.get((HELD_OUT_SET, PROBE_EXACT_MATCH))

    def update(self, obs: Observation) -> None:
        """Fold in the probe-set stats of one observation (finite values only)."""
        for key, value in obs.extras.items():
            parsed = parse_probe_metric(key)
            if parsed is None or not math.isfinite(value):
                continue
            self.latest[parsed] = float(value)
            if parsed[1] in WATCHED:
                if parsed not in self._windows:
                    self._windows[parsed] = MetricWindow(self.window)
                self._windows[parsed].append(obs.step, float(value))

    def _trend(self, probe_set: str, stat: str) -> Trend:
        window = self._windows.get((probe_set, stat))
        if window is None or len(window) < 3:
            return FLAT
        estimator = log_trend if stat == PROBE_LOSS else robust_trend
        return estimator(window.times(), window.values())

    def sets(self) -> list[str]:
        return list(dict.fromkeys(probe_set for probe_set, _ in self.latest))

    def progress(self) -> list[str]:
        """What shows progress, one phrase per set that does (empty: none does)."""
        found = []
        for probe_set in self.sets():
            match = self._trend(probe_set, PROBE_EXACT_MATCH)
            conf = self._trend(probe_set, PROBE_CONF_CORRECT)
            loss = self._trend(probe_set, PROBE_LOSS)
            if match.rising(self.min_match_change):
                found.append(f"{probe_set} exact-match rising {match.change:+.3f}")
            elif conf.rising(self.min_conf_change) and loss.falling(self.min_loss_change):
                found.append(
                    f"{probe_set} confidence on correct answers rising {conf.change:+.3f} "
                    f"while its loss falls {loss.change:+.1%}"
                )
        return found

    def signals(self) -> dict[str, float]:
        """``probe/<set>/<stat>`` latest values and ``probe/<set>/<stat>_change`` trends of
        the watched stats, for a decision's signals (empty without probe signals)."""
        out = {f"probe/{s}/{stat}": round(v, 6) for (s, stat), v in self.latest.items()}
        for probe_set, stat in self._windows:
            change = self._trend(probe_set, stat).change
            out[f"probe/{probe_set}/{stat}_change"] = round(change, 6)
        return out

    def describe(self) -> str:
        """The latest exact-match, confidences and loss per set, for a reason."""
        parts = []
        for probe_set in self.sets():
            values = [
                f"{label} {self.latest[(probe_set, stat)]:.3g}"
                for stat, label in (
                    (PROBE_EXACT_MATCH, "EM"),
                    (PROBE_CONF_CORRECT, "conf right"),
                    (PROBE_CONF_WRONG, "conf wrong"),
                    (PROBE_LOSS, "loss"),
                )
                if (probe_set, stat) in self.latest
            ]
            parts.append(f"{probe_set}: " + " ".join(values))
        return "probe sets " + "; ".join(parts)
