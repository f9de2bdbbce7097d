"""Per-epoch metrics through dvclive, rebuilt from the history so that a resumed run logs
exactly what an uninterrupted one would."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dvclive import Live

log = logging.getLogger(__name__)

NOT_PLOTTED = ("epoch", "stage")


class EpochLogger:
    """Wraps a dvclive ``Live`` whose step is the epoch index (0-based).

    Args:
        live_dir: dvclive directory (a stage output in dvc.yaml).
        history: epochs already run (from a resumed checkpoint); replayed into a fresh directory.
        extra_params: values derived at run time (device, effective batch size, class weights),
            written to ``<live_dir>/params.yaml``; the settings themselves are DVC params.
    """

    def __init__(self, live_dir: Path, history: list[dict[str, float]], extra_params: dict[str, Any]) -> None:
        # dvcyaml=None: dvc.yaml declares metrics and plots itself; save_dvc_exp=False: DVC runs us.
        self.live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=False)
        self.live.log_params(extra_params)
        for row in history:
            self.log_epoch(row)
        if history:
            log.info("replayed %d finished epochs into %s", len(history), live_dir)

    def log_epoch(self, row: dict[str, float]) -> None:
        for key, value in row.items():
            self.live.log_metric(key, value, plot=key not in NOT_PLOTTED)
        self.live.next_step()

    def finish(self, summary: dict[str, Any]) -> None:
        """Record the best epoch explicitly: dvclive keeps only the last value of a metric."""
        self.live.summary["best"] = {"epoch": summary["best_epoch"],
                                     summary["monitor"].replace("/", "_"): summary["best_value"]}
        self.live.end()
