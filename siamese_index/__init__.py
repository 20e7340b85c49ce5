"""siamese-index: Siamese-tower embeddings in a FAISS + SQLite index.

    from siamese_index import SiameseIndex
    with SiameseIndex.open("~/faces") as idx:
        idx.enroll("E1024", ["ada1.jpg", "ada2.jpg"], name="Ada Lovelace")
        [answer] = idx.identify(["visitor.jpg"])

The public API is imported lazily (PEP 562): `import siamese_index` imports neither TensorFlow nor
the web framework; each name loads its module on first use. The command line and the service use
only these names, the result types (siamese_index.types) and the errors (siamese_index.errors).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from siamese_index import errors as _errors
from siamese_index import types as _types

__version__ = "0.1.0"  # the one version: setuptools reads it (pyproject's dynamic version)


def _classes_of(module: Any) -> dict[str, type]:
    """The public classes a module defines (not those it imports)."""
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__ and not name.startswith("_")
    }


# Every result type (siamese_index.types) and every error (siamese_index.errors) is public: they
# are light modules, imported eagerly, so a result type added there is exported without a list.
_EAGER = {**_classes_of(_types), **_classes_of(_errors)}
globals().update(_EAGER)

# public name -> "module:attribute", loaded on first access
_LAZY = {
    # the index of one home
    "SiameseIndex": "siamese_index.index.facade:SiameseIndex",
    "verify": "siamese_index.index.facade:verify_files",
    "home_exists": "siamese_index.storage.db:home_exists",
    "run_demo": "siamese_index.demo:run_demo",
    # model versions of a home
    "retrain": "siamese_index.lifecycle.retrain:retrain",
    "RetrainOptions": "siamese_index.lifecycle.retrain:RetrainOptions",
    "activate": "siamese_index.lifecycle.versions:activate",
    "rollback": "siamese_index.lifecycle.versions:rollback",
    "reembed": "siamese_index.lifecycle.versions:reembed",
    "list_versions": "siamese_index.lifecycle.versions:list_versions",
    "show_version": "siamese_index.lifecycle.versions:show_version",
    "set_threshold": "siamese_index.lifecycle.thresholds:set_calibration",
    "record_feedback": "siamese_index.lifecycle.feedback:record",
    "list_feedback": "siamese_index.lifecycle.feedback:list_feedback",
    # deduplication
    "dedup": "siamese_index.duplicates.pipeline:dedup",
    "write_dedup_report": "siamese_index.duplicates.report:write_report",
    "DedupReport": "siamese_index.duplicates.report:DedupReport",
    "DuplicateGroup": "siamese_index.duplicates.report:DuplicateGroup",
    "DedupStats": "siamese_index.duplicates.report:DedupStats",
    "MoveResult": "siamese_index.duplicates.quarantine:MoveResult",
    "DeleteResult": "siamese_index.duplicates.quarantine:DeleteResult",
    "UndoResult": "siamese_index.duplicates.quarantine:UndoResult",
    "move_duplicates": "siamese_index.duplicates.quarantine:move_duplicates",
    "delete_duplicates": "siamese_index.duplicates.quarantine:delete_duplicates",
    "undo_quarantine": "siamese_index.duplicates.quarantine:undo",
    # towers and training
    "KerasEmbedder": "siamese_index.towers.embedder:KerasEmbedder",
    "build_ensemble": "siamese_index.towers.ensemble:build_ensemble",
    "Preprocessing": "siamese_index.imaging.loading:Preprocessing",
    "load_dataset": "siamese_index.training.datasets:load_dataset",
    "read_pairs_file": "siamese_index.training.pairs:read_pairs_file",
    "train": "siamese_index.training.trainer:train",
    "TrainOptions": "siamese_index.training.trainer:TrainOptions",
    "evaluate": "siamese_index.training.evaluate:evaluate",
    "EvaluationReport": "siamese_index.training.evaluate:EvaluationReport",
    "same_source": "siamese_index.towers.modeldir:same_source",
    "calibrate": "siamese_index.training.calibrate:calibrate",
    "CalibrationSet": "siamese_index.training.calibrate:CalibrationSet",
    "load_calibration_sets": "siamese_index.training.calibrate:load_calibration_sets",
    "held_out_patterns": "siamese_index.training.calibrate:held_out_patterns",
    "compute_teacher_file": "siamese_index.training.teacher:compute_teacher_file",
    "plot_roc": "siamese_index.training.plots:roc_and_histograms",
    "plot_pairs": "siamese_index.training.plots:pairs_grid",
    # the HTTP service (importing these imports FastAPI)
    "KeyStore": "siamese_index.service.keys:KeyStore",
    "ServiceSettings": "siamese_index.service.settings:ServiceSettings",
    "create_app": "siamese_index.service.app:create_app",
    # results outside siamese_index.types, and helpers the fronts share
    "DemoResult": "siamese_index.demo:DemoResult",
    "to_jsonable": "siamese_index.jsonable:to_jsonable",
}

__all__ = sorted(["__version__", *_EAGER, *_LAZY])


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'siamese_index' has no attribute {name!r}") from None
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the lazy names, imported eagerly
    from siamese_index.demo import DemoResult, run_demo  # noqa: F401
    from siamese_index.duplicates.pipeline import dedup  # noqa: F401
    from siamese_index.duplicates.quarantine import (  # noqa: F401  # noqa: F401
        DeleteResult,
        MoveResult,
        UndoResult,
        delete_duplicates,
        move_duplicates,
    )
    from siamese_index.duplicates.quarantine import undo as undo_quarantine  # noqa: F401
    from siamese_index.duplicates.report import DedupReport, DedupStats, DuplicateGroup  # noqa: F401
    from siamese_index.duplicates.report import write_report as write_dedup_report  # noqa: F401
    from siamese_index.errors import *  # noqa: F403
    from siamese_index.imaging.loading import Preprocessing  # noqa: F401
    from siamese_index.index.facade import SiameseIndex  # noqa: F401
    from siamese_index.index.facade import verify_files as verify  # noqa: F401
    from siamese_index.jsonable import to_jsonable  # noqa: F401
    from siamese_index.lifecycle.feedback import list_feedback  # noqa: F401
    from siamese_index.lifecycle.feedback import record as record_feedback  # noqa: F401
    from siamese_index.lifecycle.retrain import RetrainOptions, retrain  # noqa: F401
    from siamese_index.lifecycle.thresholds import set_calibration as set_threshold  # noqa: F401
    from siamese_index.lifecycle.versions import activate, list_versions, reembed, rollback, show_version  # noqa: F401
    from siamese_index.service.app import create_app  # noqa: F401
    from siamese_index.service.keys import KeyStore  # noqa: F401
    from siamese_index.service.settings import ServiceSettings  # noqa: F401
    from siamese_index.storage.db import home_exists  # noqa: F401
    from siamese_index.towers.embedder import KerasEmbedder  # noqa: F401
    from siamese_index.towers.ensemble import build_ensemble  # noqa: F401
    from siamese_index.towers.modeldir import same_source  # noqa: F401
    from siamese_index.training.calibrate import (  # noqa: F401
        CalibrationSet,
        calibrate,
        held_out_patterns,
        load_calibration_sets,  # noqa: F401
    )
    from siamese_index.training.datasets import load_dataset  # noqa: F401
    from siamese_index.training.evaluate import EvaluationReport, evaluate  # noqa: F401
    from siamese_index.training.pairs import read_pairs_file  # noqa: F401
    from siamese_index.training.plots import pairs_grid as plot_pairs  # noqa: F401
    from siamese_index.training.plots import roc_and_histograms as plot_roc  # noqa: F401
    from siamese_index.training.teacher import compute_teacher_file  # noqa: F401
    from siamese_index.training.trainer import TrainOptions, train  # noqa: F401
    from siamese_index.types import *  # noqa: F403
