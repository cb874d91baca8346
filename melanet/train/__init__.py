"""Trainers: ``fusion`` (timm CNN + metadata MLP) and ``gbdt`` (LightGBM / XGBoost on metadata)."""
