""" The run folder of one train/train.py run, and its protocol.

OUT/last.pth.tar (every epoch: the run's record, which holds summary.csv's rows and the best epoch),
OUT/model_best.pth.tar (the best epoch by the selecting metric), OUT/summary.csv (timm's columns),
OUT/args.yaml (written before the first epoch) and OUT/results.json (at the end). An epoch is committed as one:
its files are written to temporary files and renamed in that order, so the files agree whenever no temporary
file is left; a start after a kill removes those and rebuilds the others from last.pth.tar.
"""
import csv
import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch
import yaml

from timm_cada.checkpoint import TMP_SUFFIX, atomic_file, atomic_files, copy_checkpoint, link_or_copy, read_checkpoint

_logger = logging.getLogger('train')

LAST, BEST, SUMMARY, RESULTS, ARGS = 'last.pth.tar', 'model_best.pth.tar', 'summary.csv', 'results.json', 'args.yaml'
# The files that make a folder hold a run (args.yaml alone is written before the first epoch).
RUN_FILES = (LAST, BEST, SUMMARY, RESULTS)


class RunError(RuntimeError):
    """A run that cannot go on (e.g. a full disk); the run folder still holds its last finished epoch."""


def held_run_files(folder: str) -> List[str]:
    """The files of `folder` that make it hold a run (none: a new run may start there)."""
    return [f for f in RUN_FILES if os.path.exists(os.path.join(folder, f))]


@dataclasses.dataclass
class RunFolder:
    """The run folder `path` of a run whose model_best is selected by `selected` (lower is better for a loss),
    with the run's record: `history` (summary.csv's rows, one per finished epoch) and the best epoch and its
    metric (None until an epoch was selected in this run)."""
    path: str
    selected: str
    lower_is_better: bool = False
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    best_epoch: Optional[int] = None
    best_metric: Optional[float] = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def open(self, args: Dict[str, Any], resume: Optional[str] = None, state: Optional[Dict[str, Any]] = None,
             ) -> None:
        """Create the folder, clear the temporary files a kill left and write args.yaml. On resume of checkpoint
        `resume` (read as `state`), take its record and rebuild the folder's other files from it: summary.csv
        from its history, model_best.pth.tar from it when its epoch was the best and the copy was not made."""
        try:
            os.makedirs(self.path, exist_ok=True)
            for name in (*RUN_FILES, ARGS):
                if os.path.exists(self.file(name + TMP_SUFFIX)):
                    os.remove(self.file(name + TMP_SUFFIX))
            with atomic_file(self.file(ARGS)) as f:
                f.write(yaml.safe_dump(args, sort_keys=False).encode())
            if state is not None:
                self._restore(resume, state)
        except OSError as e:
            raise RunError(f'cannot prepare the run folder {self.path}: {e.strerror or e} ({e.filename}); free space '
                           f'and start again.') from e

    def _restore(self, resume: str, state: Dict[str, Any]) -> None:
        epoch, best_path = state['epoch'], self.file(BEST)
        self.history = list(state.get('history') or [])
        best = state.get('best') or {}
        if state.get('eval_metric') == self.selected:
            self.best_metric, self.best_epoch = best.get('metric'), best.get('epoch')
        if 'history' not in state:  # written before version 4: the record is summary.csv and model_best
            self.history = _read_history(self.file(SUMMARY), epoch)
            if os.path.isfile(best_path):
                best = read_checkpoint(best_path)
                if best.get('eval_metric') == self.selected and best.get('epoch', epoch + 1) <= epoch:
                    self.best_metric, self.best_epoch = best['metric'], best['epoch']
        elif self.best_epoch == epoch:
            best = read_checkpoint(best_path) if os.path.isfile(best_path) else {}
            if best.get('epoch') != epoch or best.get('metric') != self.best_metric:
                copy_checkpoint(resume, best_path)
                _logger.info(f'{BEST}: restored from epoch {epoch} of {resume}, the best epoch.')
        if self.best_metric is None and os.path.isfile(best_path):
            _logger.info(f'{BEST} was not selected by {self.selected!r} in this run: the next epoch replaces it.')
        with atomic_files(self.file(SUMMARY)) as (tmp,):
            _write_summary(tmp, self.history)

    def commit_epoch(self, epoch: int, row: Dict[str, float], metric: float, state: Dict[str, Any]) -> None:
        """Commit `epoch`: its checkpoint `state` with the record (history with `row`, the best epoch) as
        last.pth.tar, then model_best.pth.tar when `metric` is the best yet, then summary.csv. A failed write (a
        full disk) is a RunError, and the folder keeps the previous epoch."""
        better = self.best_metric is None or (
            metric < self.best_metric if self.lower_is_better else metric > self.best_metric)
        history = self.history + [row]
        best_epoch, best_metric = (epoch, metric) if better else (self.best_epoch, self.best_metric)
        state = {**state, 'history': history, 'best': {'epoch': best_epoch, 'metric': best_metric}}
        last, best, summary = self.file(LAST), self.file(BEST), self.file(SUMMARY)
        try:
            # One commit: every file written in full first, then renamed in this order. A kill leaves the previous
            # epoch's files, or leaves .tmp files that the next start removes after rebuilding from last.pth.tar.
            with atomic_files(last, *([best] if better else []), summary) as tmps:
                torch.save(state, tmps[0])
                if better:
                    link_or_copy(tmps[0], tmps[1])
                _write_summary(tmps[-1], history)
        except OSError as e:
            done = f'epoch {self.history[-1]["epoch"]}' if self.history else 'no finished epoch'
            where = e.filename or 'while writing'
            raise RunError(f'cannot save epoch {epoch} in {self.path}: {e.strerror or e} ({where}). The run folder '
                           f'still holds {done}; free space and continue with --resume {last}') from e
        self.history, self.best_epoch, self.best_metric = history, best_epoch, best_metric
        _logger.info(f'Epoch {epoch}: saved {last}' + (f' and {BEST} ({self.selected} {metric:.3f})' if better else ''))

    def write_results(self, results: Dict[str, Any]) -> None:
        """results.json, with the best epoch and its metric added."""
        results = {**results, 'best_metric': self.best_metric, 'best_epoch': self.best_epoch,
                   'eval_metric': self.selected}
        path = self.file(RESULTS)
        try:
            with atomic_file(path) as f:
                f.write(json.dumps(results, indent=2).encode())
        except OSError as e:
            raise RunError(f'cannot write {path}: {e.strerror or e}. The run\'s epochs are saved; free space and '
                           f'rerun with --resume {self.file(LAST)} to write it.') from e


def _read_history(path: str, epoch: int) -> List[Dict[str, float]]:
    """The rows of an old summary.csv for epochs 0..epoch (a row written twice counts once, the last time)."""
    if not os.path.isfile(path):
        return []
    rows = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            try:
                row = {k: int(v) if k == 'epoch' else float(v) for k, v in row.items()}
            except (TypeError, ValueError):
                continue
            if row['epoch'] <= epoch:
                rows[row['epoch']] = row
    return [rows[e] for e in sorted(rows)]


def _write_summary(path: str, history: List[Dict[str, float]]) -> None:
    """summary.csv (timm's columns: epoch, train_*, eval_*, lr), one row per epoch of `history`."""
    with open(path, 'w', newline='') as f:
        if history:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
