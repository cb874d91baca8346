"""Run directories, their one owner: identity, per-fold artifacts, completion, OOF assembly, metrics.

Layout (docs/architecture.md "Runs")::

    RUN_DIR/run.json               written first: run id, kind, identity, command to re-run
    RUN_DIR/config.yaml            resolved config
    RUN_DIR/fold_<k>/...           weights, history, oof.parquet, test.parquet
    RUN_DIR/fold_<k>/DONE          written last in the fold: run id + sha256 of the fold's files
    RUN_DIR/oof.parquet            merged from the folds
    RUN_DIR/test.parquet           fold-averaged
    RUN_DIR/metrics.json           carries the run id too
    RUN_DIR/blend.json             (blends) the recipe: method, fitted state, input runs
    RUN_DIR/COMPLETE               written last of all: run id + sha256 of every artifact

A run's id is a hash of what decides its result (the comparable config and a
fingerprint of its input data), so a re-run with the same inputs is the same
run (``--resume`` continues it, separate ``--folds`` jobs add to it) and
anything else is a different run. :meth:`RunDir.begin` refuses to start a
different run in a folder holding one unless ``overwrite``; with it, the old
run's files are removed first, behind a run.json that marks the folder as
being cleared, so a kill can never leave two runs' files that a reader would
accept together. Readers call :func:`check_run` (or :func:`read_run`): a
folder without ``COMPLETE``, or whose markers name different runs, or whose
files changed since, is refused with one line naming the command to re-run.
Model files are verified against their recorded sha256 before loading
(:meth:`RunRecord.verify`).

Reading what a run was made from is here too, once: :func:`read_config` (its
``config.yaml``), :func:`read_recipe` and :func:`blend_inputs` (a blend's
``blend.json`` and input runs), :func:`training_data_dir` (the data folder it
was trained on). See docs/architecture.md for who writes each file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanet import metrics as M
from melanet.config import build_config
from melanet.errors import ArtifactError, InputDataError, MelanetError, did_you_mean
from melanet.io import check_out_dir, read_json, read_table, read_yaml_mapping, write_json, write_parquet

ID_COLUMNS = ["image_id", "patient_id", "fold", "target"]
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
BLEND_FILE = "blend.json"
COMPARISON_FILE = "comparison.csv"
COMPLETE_FILE = "COMPLETE"
DONE_FILE = "DONE"
KINDS = ("fusion", "gbdt", "blend")
RUN_TABLES = ["oof.parquet", "test.parquet", "metrics.json"]
# Top-level files a run writer leaves; ``--overwrite`` removes these and the fold_* folders, nothing else
# (an --out folder may hold the user's own files too).
RUN_ARTIFACTS = (
    COMPLETE_FILE, "config.yaml", "oof.parquet", "test.parquet", "metrics.json", "features.json",
    "feature_importance.csv", "feature_importance.png", "tune.json", "tune_trials.csv", "blend.json",
    "comparison.csv", "report.html", "training_curves.png", "suspects.csv", "suspects.html",
    "roc.png", "precision_recall.png", "score_histogram.png", "calibration.png", "blend_weights.png",
    "model_correlation.png",
)


@dataclass
class TargetSpec:
    """What is predicted: a binary 0/1 column, or a multiclass column scored on one class.

    ``classes`` is None for binary targets. For multiclass targets
    ``positive_class`` (if set) names the class whose probability is the binary
    score used by AUC/pAUC and by the blend (the 2020 winners scored melanoma
    out of 9 diagnoses).
    """

    column: str = "target"
    classes: list[str] | None = None
    positive_class: str | None = None

    @property
    def is_binary(self) -> bool:
        return self.classes is None

    @property
    def pred_columns(self) -> list[str]:
        return ["pred"] if self.is_binary else [f"pred_{c}" for c in self.classes]

    @property
    def score_column(self) -> str | None:
        if self.is_binary:
            return "pred"
        return f"pred_{self.positive_class}" if self.positive_class is not None else None

    def encode(self, values: pd.Series) -> np.ndarray:
        """Labels as int: 0/1 (binary) or class index (multiclass)."""
        if self.is_binary:
            return values.astype(float).astype(int).to_numpy()
        index = {c: i for i, c in enumerate(self.classes)}
        return values.astype(str).map(index).to_numpy().astype(int)

    def binary_labels(self, values: pd.Series) -> np.ndarray | None:
        """0/1 labels for the scored class (None for multiclass without positive_class)."""
        if self.is_binary:
            return self.encode(values)
        if self.positive_class is None:
            return None
        return (values.astype(str) == str(self.positive_class)).astype(int).to_numpy()


def resolve_target(labels: pd.Series, column: str, positive_class: str | None = None,
                   target_type: str = "auto") -> TargetSpec:
    """Binary vs multiclass from the labelled values of ``column``, validated (rules: :mod:`melanet.targets`)."""
    from melanet.targets import target_kind

    kind, classes, positive = target_kind(labels, column, target_type, positive_class,
                                          where="cohort.parquet")
    if kind == "binary":
        return TargetSpec(column=column)
    return TargetSpec(column=column, classes=classes, positive_class=positive)


def predictions_frame(rows: pd.DataFrame, prob: np.ndarray, spec: TargetSpec) -> pd.DataFrame:
    """``image_id, patient_id, fold, target`` of ``rows`` plus the prediction columns."""
    prob = np.asarray(prob, dtype=float)
    if not spec.is_binary and len(rows) == 0:
        prob = prob.reshape(0, len(spec.classes))
    if spec.is_binary:
        prob = prob.reshape(len(rows), -1)[:, -1:] if len(rows) else prob.reshape(0, 1)
    out = pd.DataFrame({
        "image_id": rows["image_id"].astype(str).to_numpy(),
        "patient_id": rows["patient_id"].astype(str).to_numpy(),
        "fold": rows["fold"].astype(int).to_numpy(),
        "target": rows[spec.column].to_numpy(),
    })
    for j, col in enumerate(spec.pred_columns):
        out[col] = prob[:, j]
    return out


def evaluate(oof: pd.DataFrame, spec: TargetSpec) -> dict:
    """Overall and per-fold metrics of an OOF table (docs/architecture.md "Metrics")."""

    def one(df: pd.DataFrame) -> dict:
        out: dict = {}
        if not spec.is_binary:
            out.update(M.multiclass_metrics(spec.encode(df["target"]), df[spec.pred_columns].to_numpy(),
                                            spec.classes))
        y_bin = spec.binary_labels(df["target"])
        if y_bin is not None:
            out.update(M.binary_metrics(y_bin, df[spec.score_column].to_numpy()))
        return out

    per_fold = {str(int(k)): one(g) for k, g in oof.groupby("fold")}
    primary = "auc" if spec.score_column else "macro_auc"
    return {
        "task": "binary" if spec.is_binary else "multiclass",
        "target": spec.column,
        "classes": spec.classes,
        "positive_class": spec.positive_class,
        "primary_metric": primary,
        "overall": one(oof),
        "per_fold": per_fold,
    }


# --------------------------------------------------------------------------- identity and file records


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict:
    """``{"sha256", "bytes"}`` of a file, as DONE and COMPLETE record it."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def fingerprint(path: str | Path | None) -> str | None:
    """sha256 of an input file (cohort.parquet, an exclude list), or None without one."""
    if path is None:
        return None
    path = Path(path)
    return sha256_file(path) if path.is_file() else None


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def comparable_config(cfg_dump: dict, operational: set[str]) -> dict[str, Any]:
    """The flattened config without keys that do not change a run's result (paths, threads, tracking...).

    A key is dropped when it, or a section above it, is in ``operational``.
    """
    def kept(key: str) -> bool:
        parts = key.split(".")
        return not any(".".join(parts[:i]) in operational for i in range(1, len(parts) + 1))

    return {k: v for k, v in flatten(cfg_dump).items() if kept(k)}


def run_identity(kind: str, config: dict[str, Any], inputs: dict[str, Any]) -> tuple[str, dict]:
    """A run's id (16 hex digits) and the identity it hashes: kind, comparable config, input fingerprints."""
    identity = {"kind": kind, "config": config, "inputs": inputs}
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)


def _differences(old: dict, new: dict, limit: int = 3) -> str:
    a, b = flatten(old or {}), flatten(new or {})
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = ", ".join(f"{k.removeprefix('config.')}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:limit])
    return shown + (f" (+{len(changed) - limit} more)" if len(changed) > limit else "")


# --------------------------------------------------------------------------- writing a run


@dataclass
class RunDir:
    """A run directory and its per-fold artifacts, written by one run (``run_id``, set by :meth:`begin`)."""

    path: Path
    folds: list[int] = field(default_factory=list)
    run_id: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold_{k}"

    @classmethod
    def open(cls, path: str | Path, kind: str, command: str) -> "RunDir":
        """The run being written in ``path`` (from its run.json), to add to or finish it (``melanet merge``)."""
        path = Path(path)
        marker = _read_marker(path / RUN_FILE)
        if not path.is_dir() or not marker:
            raise ArtifactError(f"{path} is not a melanet {kind} run folder (no {RUN_FILE}); {command} needs one")
        if marker.get("kind") != kind:
            raise ArtifactError(f"{path} is a {marker.get('kind')} run, not a {kind} run; {command} applies to "
                                f"{kind} runs only")
        if marker.get("clearing"):
            raise ArtifactError(f"{path} was being replaced when it stopped; re-run "
                                f"`{str(marker.get('command')).replace('{run}', str(path))}`")
        return cls(path, run_id=marker.get("run_id"), kind=kind)

    def begin(self, kind: str, identity: tuple[str, dict], command: str, overwrite: bool = False) -> "RunDir":
        """Claim the folder for the run ``identity`` (from :func:`run_identity`) before writing anything else.

        The same run may continue (finished folds of it are kept); a different
        run, complete or not, is refused unless ``overwrite``, which removes
        the old run's files first. The folder is incomplete (no COMPLETE)
        from here until :meth:`complete`.
        """
        run_id, ident = identity
        command = _template(command, self.path)
        check_out_dir(self.path)
        old = _read_marker(self.path / RUN_FILE)
        old_id = old.get("run_id") if old else None
        clearing = bool(old and old.get("clearing"))
        has_run = old is not None or _has_run_files(self.path)
        if has_run and (old_id != run_id or clearing):
            if not overwrite and not clearing:
                what = "a complete" if (self.path / COMPLETE_FILE).is_file() else "an unfinished"
                why = (f"different settings or data: {_differences(old.get('identity', {}), ident)}"
                       if old else "no run.json: an older melanet or files written by hand")
                raise ArtifactError(f"{self.path} holds {what} other run ({why}); choose a new --out, or pass "
                                    f"--overwrite to replace it")
            self._clear(kind, run_id, ident, command)
        (self.path / COMPLETE_FILE).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.run_id, self.kind = run_id, kind
        write_json(self.path / RUN_FILE, {"run_id": run_id, "kind": kind, "command": command, "identity": ident})
        # a fold left by another run (only possible after a kill while clearing) is not this run's
        for done in self.path.glob(f"fold_*/{DONE_FILE}"):
            if (_read_marker(done) or {}).get("run_id") != run_id:
                shutil.rmtree(done.parent)
        return self

    def _clear(self, kind: str, run_id: str, ident: dict, command: str) -> None:
        (self.path / COMPLETE_FILE).unlink(missing_ok=True)
        # Marked first: a kill during the removal leaves a folder every reader refuses and the next begin clears.
        write_json(self.path / RUN_FILE, {"run_id": run_id, "kind": kind, "command": command, "identity": ident,
                                          "clearing": True})
        for name in RUN_ARTIFACTS:
            (self.path / name).unlink(missing_ok=True)
        for fold in self.path.glob("fold_*"):
            if fold.is_dir():
                shutil.rmtree(fold)

    def _fold_marker(self, k: int) -> dict | None:
        marker = _read_marker(self.fold_dir(k) / DONE_FILE)
        if marker is None or (self.run_id is not None and marker.get("run_id") != self.run_id):
            return None
        return marker

    def is_done(self, k: int) -> bool:
        """Fold ``k`` finished in this run: its DONE names this run's id and its recorded files are all there."""
        marker = self._fold_marker(k)
        if marker is None:
            return False
        fold = self.fold_dir(k)
        return all((fold / n).is_file() and (fold / n).stat().st_size == r.get("bytes")
                   for n, r in marker.get("files", {}).items())

    def unmark_done(self, k: int) -> None:
        """Fold ``k`` is being (re)trained: unfinished until :meth:`mark_done`."""
        (self.fold_dir(k) / DONE_FILE).unlink(missing_ok=True)

    def mark_done(self, k: int, info: dict | None = None, files: list[str] = ()) -> None:
        """Write ``fold_<k>/DONE`` (last in the fold) with this run's id and the sha256 of ``files``."""
        fold = self.fold_dir(k)
        names = list(files) + [n for n in ("oof.parquet", "test.parquet") if (fold / n).is_file() and n not in files]
        records = {n: file_record(fold / n) for n in names}
        write_json(fold / DONE_FILE, {**(info or {}), "run_id": self.run_id, "files": records})

    def write_fold_predictions(self, k: int, oof: pd.DataFrame, test: pd.DataFrame) -> None:
        """Write the fold's validation (OOF) and test predictions (before :meth:`mark_done`)."""
        write_parquet(self.fold_dir(k) / "oof.parquet", oof)
        write_parquet(self.fold_dir(k) / "test.parquet", test)

    def done_folds(self) -> list[int]:
        return sorted(int(p.parent.name.split("_")[1]) for p in self.path.glob(f"fold_*/{DONE_FILE}")
                      if self.is_done(int(p.parent.name.split("_")[1])))

    def complete(self, files: list[str], folds: list[int] | None = None) -> dict:
        """Write ``COMPLETE`` (last of all): run id, kind, and the sha256 of ``files`` and of every fold file.

        ``files`` are paths relative to the run folder; fold files come from the folds' DONE records.
        """
        record: dict[str, dict] = {n: file_record(self.path / n) for n in files}
        for k in (self.folds if folds is None else folds):
            marker = self._fold_marker(k)
            if marker is None:
                raise ArtifactError(f"{self.fold_dir(k)} is not a finished fold of run {self.run_id}")
            record.update({f"fold_{k}/{n}": r for n, r in marker.get("files", {}).items()})
            record[f"fold_{k}/{DONE_FILE}"] = file_record(self.fold_dir(k) / DONE_FILE)
        marker = {"run_id": self.run_id, "kind": self.kind, "files": record}
        write_json(self.path / COMPLETE_FILE, marker)
        return marker


def finish_run(run_dir: str | Path, kind: str, files: list[str] | None = None, command: str | None = None,
               identity: dict | None = None) -> dict:
    """Mark a run folder whose files were written by other means (a Python caller, a test) as one complete run.

    ``files`` default to those of ``config.yaml, oof.parquet, test.parquet, metrics.json`` that exist. The
    id is the hash of ``identity`` (default: the files' sha256), so the same files give the same id.
    """
    run_dir = Path(run_dir)
    if files is None:
        files = [n for n in ("config.yaml", *RUN_TABLES) if (run_dir / n).is_file()]
    command = command or f"the {kind} stage that wrote {run_dir}"
    ident = identity if identity is not None else {n: sha256_file(run_dir / n) for n in files}
    run_id, ident_full = run_identity(kind, ident, {})
    run = RunDir(run_dir, run_id=run_id, kind=kind)
    write_json(run_dir / RUN_FILE, {"run_id": run_id, "kind": kind, "command": command, "identity": ident_full})
    return run.complete(files, folds=[])


def _template(command: str, run_dir: Path) -> str:
    """``command`` with the run folder as ``{run}``, so the hint names the folder wherever it is later read."""
    base = str(run_dir)
    return " ".join("{run}" + tok[len(base):] if tok == base or tok.startswith(base + "/") else tok
                    for tok in command.split(" "))


def _read_marker(path: Path) -> dict | None:
    """A JSON marker (run.json, DONE, COMPLETE), or None when absent or unreadable (a foreign or torn file)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _has_run_files(path: Path) -> bool:
    return path.is_dir() and (any((path / n).exists() for n in RUN_ARTIFACTS) or any(path.glob(f"fold_*/{DONE_FILE}")))


# --------------------------------------------------------------------------- reading a run


@dataclass
class RunRecord:
    """A complete run as its COMPLETE marker describes it (see :func:`check_run`)."""

    path: Path
    run_id: str
    kind: str
    command: str
    files: dict[str, dict]
    identity: dict = field(default_factory=dict)

    def verify(self, name: str) -> Path:
        """``RUN_DIR/name`` after checking it against its recorded sha256; one line if missing or changed."""
        path = self.path / name
        record = self.files.get(name)
        if record is None:
            raise ArtifactError(f"{path}: not recorded in {self.path / COMPLETE_FILE}, so it is not part of the "
                                f"run; re-run `{self.command}`")
        if not path.is_file():
            raise ArtifactError(f"{path} is missing; the run folder was changed after it completed - "
                                f"restore it or re-run `{self.command}`")
        size = path.stat().st_size
        if size != record["bytes"] or sha256_file(path) != record["sha256"]:
            how = (f"{size} of {record['bytes']} bytes, truncated" if size < record["bytes"] else
                   f"{size} bytes, {record['bytes']} recorded" if size != record["bytes"] else "sha256 differs")
            raise ArtifactError(f"{path} is damaged or was replaced since the run completed ({how}); "
                                f"restore it or re-run `{self.command}`")
        return path

    def verify_all(self) -> None:
        """:meth:`verify` every recorded file (before work that would be wasted on a damaged run)."""
        for name in self.files:
            self.verify(name)


def check_run(run_dir: str | Path, kinds: tuple[str, ...] = KINDS, reader: str = "this command") -> RunRecord:
    """The run in ``run_dir`` if it is complete and consistent; else one-line ArtifactError with the re-run command.

    Complete: ``COMPLETE`` exists and names the same run as ``run.json`` and as
    every ``fold_<k>/DONE``, and every recorded file is there with its size.
    (sha256 is checked by :meth:`RunRecord.verify` when a file is loaded.)
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ArtifactError(f"run folder {run_dir} not found; check the path")
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is a file, not a run folder; give the folder a melanet stage wrote")
    started = _read_marker(run_dir / RUN_FILE)
    done = _read_marker(run_dir / COMPLETE_FILE)
    command = ((started or {}).get("command") or "the stage that wrote it").replace("{run}", str(run_dir))
    if done is None:
        if started is None and run_dir.name.startswith("fold_") and (run_dir.parent / RUN_FILE).is_file():
            raise ArtifactError(f"{run_dir} is one fold of the run {run_dir.parent}; give the run folder")
        if started is None:
            what = ("was written by an older melanet or by hand" if _has_run_files(run_dir) else
                    "is not a melanet run folder")
            raise ArtifactError(f"{run_dir} {what} (no {COMPLETE_FILE} marker); {reader} needs a complete run - "
                                f"re-run the stage that writes it")
        folds = sorted(p.parent.name for p in run_dir.glob(f"fold_*/{DONE_FILE}")
                       if (_read_marker(p) or {}).get("run_id") == started.get("run_id"))
        detail = ("the previous run's files were being removed" if started.get("clearing") else
                  f"finished: {', '.join(folds)}" if folds else "no fold finished")
        raise ArtifactError(f"{run_dir} is an incomplete {started.get('kind', '')} run ({detail}): it was "
                            f"interrupted or is still running; {reader} refuses it - finish it with `{command}`")
    run_id = done.get("run_id")
    if started is None or started.get("run_id") != run_id or started.get("clearing"):
        raise ArtifactError(f"{run_dir} mixes two runs (run.json names {(started or {}).get('run_id')}, "
                            f"{COMPLETE_FILE} names {run_id}); re-run `{command}` with --overwrite")
    for marker in run_dir.glob(f"fold_*/{DONE_FILE}"):
        fold_id = (_read_marker(marker) or {}).get("run_id")
        if fold_id != run_id:
            raise ArtifactError(f"{run_dir} mixes two runs: {marker.parent.name} belongs to run {fold_id}, the "
                                f"folder to run {run_id}; re-run `{command}` with --overwrite")
    files = done.get("files", {})
    for name, record in files.items():
        path = run_dir / name
        if not path.is_file() or path.stat().st_size != record.get("bytes"):
            change = "is missing" if not path.is_file() else "changed size"
            raise ArtifactError(f"{path} {change} since the run completed; restore it or re-run `{command}`")
    kind = started.get("kind", done.get("kind", ""))
    if kind not in kinds:
        raise ArtifactError(f"{run_dir} is a {kind} run; {reader} needs a {' or '.join(kinds)} run")
    return RunRecord(run_dir, run_id, kind, command, files, started.get("identity", {}))


def merge_folds(run: RunDir, all_folds: list[int], spec: TargetSpec) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Merge per-fold predictions into ``oof.parquet``, ``test.parquet`` and ``metrics.json``.

    Refuses while any of ``all_folds`` is unfinished, naming the folds to run.
    """
    missing = [k for k in all_folds if not run.is_done(k)]
    if missing:
        raise ArtifactError(
            f"{run.path}: fold(s) {missing} are not finished; run them "
            f"(e.g. --folds {','.join(map(str, missing))}) before merging"
        )
    oofs = [read_table(run.fold_dir(k) / "oof.parquet", ID_COLUMNS, "fold OOF") for k in all_folds]
    oof = pd.concat(oofs, ignore_index=True).sort_values("image_id", kind="stable").reset_index(drop=True)
    if oof["image_id"].duplicated().any():
        raise ArtifactError(f"{run.path}: an image appears in two folds' OOF; the run mixes fold assignments")
    tests = [read_table(run.fold_dir(k) / "test.parquet", ["image_id"], "fold test") for k in all_folds]
    if tests and len(tests[0]):
        stacked = pd.concat(tests, ignore_index=True)
        keys = ["image_id", "patient_id", "fold", "target"]
        test = stacked.groupby(keys, sort=True, dropna=False)[spec.pred_columns].mean().reset_index()
    else:
        test = tests[0] if tests else pd.DataFrame(columns=ID_COLUMNS + spec.pred_columns)
    metrics = {**evaluate(oof, spec), "run_id": run.run_id}
    write_parquet(run.path / "oof.parquet", oof)
    write_parquet(run.path / "test.parquet", test)
    write_json(run.path / "metrics.json", metrics)
    return oof, test, metrics


def read_run(run_dir: str | Path, reader: str = "this command") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Read a complete run's ``oof.parquet``, ``test.parquet`` and ``metrics.json`` (checked, see :func:`check_run`)."""
    record = check_run(run_dir, reader=reader)
    for name in RUN_TABLES:
        record.verify(name)
    run_dir = Path(run_dir)
    oof = read_table(run_dir / "oof.parquet", ID_COLUMNS, "OOF predictions")
    test = read_table(run_dir / "test.parquet", ["image_id"], "test predictions")
    metrics = read_json(run_dir / "metrics.json")
    if metrics.get("run_id", record.run_id) != record.run_id:
        raise ArtifactError(f"{run_dir} mixes two runs: metrics.json belongs to run {metrics.get('run_id')}, the "
                            f"folder to run {record.run_id}; re-run `{record.command}` with --overwrite")
    return oof, test, metrics


def spec_from_metrics(metrics: dict) -> TargetSpec:
    """Rebuild the TargetSpec a run used from its ``metrics.json``."""
    return TargetSpec(column=metrics.get("target", "target"), classes=metrics.get("classes"),
                      positive_class=metrics.get("positive_class"))


def read_exclude(path: str | Path | None, cohort: pd.DataFrame) -> np.ndarray:
    """Rows of ``cohort`` listed (by ``image_id``) in the CSV at ``path``; all False without one."""
    if path is None:
        return np.zeros(len(cohort), bool)
    listed = read_table(path, ["image_id"], "exclude list")["image_id"].astype(str)
    ids = cohort["image_id"].astype(str)
    unknown = sorted(set(listed) - set(ids))
    if unknown:
        raise InputDataError(f"exclude list {path}: {len(unknown)} image_id(s) are not in the cohort, e.g. "
                             f"{unknown[0]!r}{did_you_mean(unknown[0], ids)}; fix or remove them")
    return ids.isin(set(listed)).to_numpy()


# --------------------------------------------------------------------------- what a run was made from


def read_config(run_dir: str | Path, model_cls: type | None = None):
    """The resolved ``config.yaml`` a run wrote: a dict, or with ``model_cls`` (a StageConfig) that stage's config."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: is {run_dir} a melanet run directory?")
    data = read_yaml_mapping(path, ArtifactError, "restore it or re-run the stage that wrote it")
    return data if model_cls is None else build_config(model_cls, data, str(path))


def read_recipe(run_dir: str | Path, reader: str = "this command") -> dict:
    """The recipe (``blend.json``) of a complete blend run, checked against its recorded sha256."""
    path = Path(run_dir) / BLEND_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: is {run_dir} a `melanet blend` run?")
    return read_json(check_run(run_dir, ("blend",), reader=reader).verify(BLEND_FILE))


def recipe_inputs(recipe: dict) -> list[dict]:
    """``name, path, relative_path, score_column, run_id`` per input run of a recipe.

    Recipes written before the inputs were stored once also listed them as flat ``runs`` /
    ``runs_relative`` lists; those fill what an ``inputs`` entry lacks.
    """
    inputs = [i if isinstance(i, dict) else {"name": str(i)} for i in recipe.get("inputs") or []]
    flat, flat_rel = recipe.get("runs") or [], recipe.get("runs_relative") or []
    out = []
    for i in range(max(len(inputs), len(flat))):
        old = {"name": str(i), "path": flat[i] if i < len(flat) else None,
               "relative_path": flat_rel[i] if i < len(flat_rel) else None}
        out.append({**old, **{k: v for k, v in (inputs[i] if i < len(inputs) else {}).items() if v is not None}})
    return out


def blend_inputs(run_dir: str | Path, reader: str = "this command") -> list[Path]:
    """A blend's input run folders, each a complete run holding the run the blend was fitted on.

    Where the input is looked for: beside the blend as recorded (``relative_path``: folders moved
    together), then at its absolute ``path``. A folder that now holds another run is refused, naming
    the blend command to re-run.
    """
    run_dir = Path(run_dir)
    recipe = read_recipe(run_dir, reader)
    found = []
    for inp in recipe_inputs(recipe):
        places = [run_dir / inp["relative_path"] if inp.get("relative_path") else None,
                  Path(inp["path"]) if inp.get("path") else None]
        places = list(dict.fromkeys(p for p in places if p is not None))
        present = [p for p in places if p.is_dir()]
        if not present:
            raise ArtifactError(f"input run {inp['name']!r} of blend {run_dir} not found at "
                                f"{' or '.join(map(str, places))}; restore it or re-run the blend")
        hit, other = None, None
        for place in present:
            found_id = check_run(place, reader=reader).run_id
            if inp.get("run_id") in (None, found_id):
                hit = place
                break
            other = (place, found_id)
        if hit is None:
            raise ArtifactError(f"blend {run_dir} was fitted on run {inp['run_id']} of {other[0]}, which now holds "
                                f"run {other[1]}; re-run the blend (`{check_run(run_dir).command} --overwrite`)")
        found.append(hit.resolve())
    return found


def training_data_dir(run_dir: str | Path, reader: str = "this command", _depth: int = 0) -> Path:
    """The data folder (ingest's output) a run was trained on: ``data_dir`` in its config.yaml, tried as written
    and relative to the run; for a blend, that of its first input run."""
    run_dir = Path(run_dir)
    if check_run(run_dir, reader=reader).kind == "blend":
        if _depth >= 5:
            raise ArtifactError(f"{run_dir}: blends nested more than 5 deep; give a run trained on a data folder")
        return training_data_dir(blend_inputs(run_dir, reader)[0], reader, _depth + 1)
    data_dir = read_config(run_dir).get("data_dir")
    places = [Path(data_dir), run_dir / data_dir] if data_dir else []
    hit = (next((p for p in places if (p / "cohort.parquet").is_file()), None)
           or next((p for p in places if p.is_dir()), None))
    if hit is None:
        raise ArtifactError(f"{run_dir / CONFIG_FILE} names data_dir={data_dir!r}, which does not exist here; "
                            f"{reader} needs the data folder the run was trained on - restore it there")
    return hit


def find_data_dir(run_dir: str | Path) -> Path | None:
    """:func:`training_data_dir` if it holds a cohort, else None (pages that can do without images)."""
    try:
        found = training_data_dir(run_dir)
    except MelanetError:
        return None
    return found if (found / "cohort.parquet").is_file() else None
