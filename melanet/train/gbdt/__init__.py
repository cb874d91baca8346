"""``melanet train-gbdt``: LightGBM or XGBoost on DICOM metadata and patient context, on the cohort's folds.

The ISIC 2024 winners' recipe: gradient-boosted trees on header metadata (sex,
age, site, ... with categoricals handled natively by the engine and missing
values kept missing) and the lesion descriptors ingest measured from the pixels
(``lesion_*``, :mod:`melanet.descriptors`; ``features.descriptors``), plus
patient-context features (images per patient, each value relative to the same
patient's mean/std and rank, the "ugly duckling" distance of the descriptor
vector from the patient's other lesions), optionally with
image-model out-of-fold scores as features or, by default, as the starting
margin the trees correct (``with_oof_mode``, :mod:`melanet.train.offset`). Features come from
:func:`melanet.features.build_features`, the code FusionNet's metadata branch
uses too.

``backend: dask`` boosts each fold model on a Dask cluster through
``lightgbm.dask`` / ``xgboost.dask`` (same folds, same outputs, the same model
files); LightGBM's Dask interface cannot stop early, XGBoost's can. See
docs/distributed.md.

Written to ``OUT_DIR`` (docs/architecture.md "Runs")::

    config.yaml                 resolved config (tuned parameters included)
    features.json               feature columns, categorical levels, classes, folds (read by predict)
    fold_<k>/model.txt|json     the fold's booster in the engine's own format
    fold_<k>/offset.json        with_oof_mode: offset: the image-score offset it boosts from (melanet/train/offset.py)
    fold_<k>/history.csv        early-stopping metric per round on the inner split
    fold_<k>/{oof,test}.parquet, fold_<k>/DONE
    oof.parquet, test.parquet, metrics.json
    feature_importance.csv/png  total gain per feature, mean over folds
    tune.json, tune_trials.csv  with ``tune: N``

The package is layered like LightGBM's (``engine`` / ``sklearn`` / ``dask``);
each module imports only the ones above it in this list:

- :mod:`.dask`: Dask frames and client for ``backend: dask``
- :mod:`.model`: ``TreeModel``, the scikit-learn estimator every engine implements
- :mod:`.lightgbm_model`, :mod:`.xgboost_model`: the two engines
- :mod:`.engines`: the engine registry (``get_engine``)
- :mod:`.params`: parameter name/value checks, threads, small-data and monotone settings
- :mod:`.config`: ``FeatureConfig``, ``GBDTConfig``
- :mod:`.features`: the feature table and its encoding (pure); leakage of features and ``with_oof``
- :mod:`.cv`: inner splits, fold models, refit, tuning (pure); leakage of early stopping and ``tune``
- :mod:`.stage`: ``run``, the stage runner, and its output tables
- :mod:`.inference`: ``predict`` for new rows

Every name the rest of melanet uses is re-exported here: ``from melanet.train import gbdt; gbdt.run(...)``.
"""

from melanet.train.gbdt.config import FeatureConfig, GBDTConfig
from melanet.train.gbdt.cv import class_prob, inner_split, iter_fold_models, refit_rounds, tune_params
from melanet.train.gbdt.dask import backend_client, dask_early_stopping_error, dask_frames
from melanet.train.gbdt.engines import COMPUTE_BACKENDS, ENGINES, get_engine, n_classes_of
from melanet.train.gbdt.features import (FEATURES_FILE, NOT_FEATURES, apply_schema, feature_schema, feature_table,
                                         load_oof_features, oof_feature_name, oof_feature_names)
from melanet.train.gbdt.inference import predict
from melanet.train.gbdt.lightgbm_model import LightGBMModel
from melanet.train.gbdt.model import TreeModel
from melanet.train.gbdt.params import (check_engine_params, check_param_names, engine_params, model_factory,
                                       monotone_params, resolve_n_jobs, resolve_small_data)
from melanet.train.gbdt.stage import history_table, identity, importance_table, print_summary, run
from melanet.train.gbdt.xgboost_model import XGBoostModel

__all__ = [
    "COMPUTE_BACKENDS", "ENGINES", "FEATURES_FILE", "NOT_FEATURES", "FeatureConfig", "GBDTConfig", "LightGBMModel",
    "TreeModel", "XGBoostModel", "apply_schema", "backend_client", "check_engine_params", "check_param_names",
    "class_prob", "dask_early_stopping_error", "dask_frames", "engine_params", "feature_schema", "feature_table",
    "get_engine", "history_table", "identity", "importance_table", "inner_split", "iter_fold_models",
    "load_oof_features", "model_factory", "monotone_params", "n_classes_of", "oof_feature_name", "oof_feature_names",
    "predict",
    "print_summary", "refit_rounds", "resolve_n_jobs", "resolve_small_data", "run", "tune_params",
]
