"""``melanet eda``: the cohort page, its tables, and duplicate detection on a planted cohort."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from melanet import eda, synth
from melanet.cli import app
from melanet.cohort import DICOM_COLUMNS, read_cohort
from melanet.eda import EDAConfig, age_bins, cohort_overview, find_duplicates, scan_images, target_rates
from melanet.errors import ArtifactError
from melanet.imagehash import hamming, near_pairs, phash
from melanet.io import write_parquet

SIZE = 48


def lesions(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct dermoscopy-like RGB pictures (SIZE, SIZE, 3) uint8 drawn by ``melanet synth``."""
    params = synth.sample_cohort(synth.SynthConfig(out_dir="unused", patients=n, seed=seed)).head(n)
    assert len(params) == n
    return [synth.render_lesion(row, SIZE, synth.image_rng(seed, i)) for i, row in enumerate(params.to_dict("records"))]


def brighter(image: np.ndarray, grey_levels: int) -> np.ndarray:
    return np.clip(image.astype(int) + grey_levels, 0, 255).astype(np.uint8)


def write_cohort(data_dir: Path, images: list[np.ndarray], **columns) -> pd.DataFrame:
    """cohort.parquet + images/<sha>.npy; byte-identical pictures share one cache file, like ingest."""
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    shas = [hashlib.sha256(img.tobytes()).hexdigest() for img in images]
    for sha, img in zip(shas, images):
        np.save(data_dir / "images" / f"{sha}.npy", img)
    n = len(images)
    cohort = pd.DataFrame({
        "image_id": [f"ISIC_{i:04d}" for i in range(n)], "sop_instance_uid": [f"1.2.3.{i}" for i in range(n)],
        "patient_id": [f"P{i // 3:03d}" for i in range(n)], "sex": "female", "age": 50.0, "site": "torso",
        "modality": "XC", "photometric": "RGB", "rows": SIZE, "cols": SIZE, "frames": 1, "bits_stored": 8,
        "transfer_syntax": "1.2.840.10008.1.2.1", "sha256": shas, "image_path": [f"images/{s}.npy" for s in shas],
    })
    for name, values in columns.items():
        cohort[name] = values
    write_parquet(data_dir / "cohort.parquet", cohort[DICOM_COLUMNS + list(columns)])
    return cohort


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """36 images, 12 patients, 3 folds + a test set, with planted duplicates.

    - ISIC_0001 is a byte-identical copy of ISIC_0030 (another patient, another fold): exact, cross-fold;
    - ISIC_0016 is ISIC_0004 brightened by 12 grey levels (another fold): near, cross-fold;
    - ISIC_0007 is ISIC_0006 with sensor noise (same patient, same fold): near, not cross-fold.
    """
    images = lesions(36)
    images[1] = images[30].copy()
    images[16] = brighter(images[4], 12)
    noise = np.random.default_rng(0).normal(0, 3, images[6].shape)
    images[7] = np.clip(images[6] + noise, 0, 255).astype(np.uint8)
    patient = np.arange(36) // 3
    fold = np.where(patient >= 10, -1, patient % 3)  # patients 10, 11: test set
    target = np.where(fold >= 0, (np.arange(36) % 4 == 0).astype(float), np.nan)
    data_dir = tmp_path_factory.mktemp("planted")
    cohort = write_cohort(data_dir, images, target=target,
                          diagnosis=np.where(target == 1, "melanoma", np.where(fold >= 0, "nevus", None)), fold=fold)
    cohort["sex"] = np.where(np.arange(36) % 2 == 0, "female", "male")
    cohort.loc[[2, 3], "sex"] = None
    cohort["age"] = 30.0 + np.arange(36)
    cohort.loc[5, "age"] = np.nan
    write_parquet(data_dir / "cohort.parquet", cohort)
    return data_dir, read_cohort(data_dir)


def embedded_pngs(text: str) -> list[str]:
    return re.findall(r'<img src="(data:image/png;base64,[^"]+)"', text)


def test_cli_writes_self_contained_page_with_sections(planted):
    data_dir, _ = planted
    result = CliRunner().invoke(app, ["eda", str(data_dir)])
    assert result.exit_code == 0, result.output
    text = (data_dir / "eda.html").read_text()
    for heading in ("Cohort overview", "Metadata", "Target rate by sex, age and site", "Images", "Duplicates",
                    "Mean image per class", "Sample thumbnails per class", "Per fold"):
        assert heading in text
    # Every picture is embedded: the page opens from a mail attachment, no server, no files beside it.
    assert len(embedded_pngs(text)) == len(re.findall(r"<img ", text))
    # 4 charts, 3 class means, 8 + 8 + 6 samples (the test set has 6 images), 6 duplicate thumbnails.
    assert len(embedded_pngs(text)) >= 4 + 3 + 22 + 6
    for cls in ("target=0", "target=1", "unlabelled"):
        assert f"{cls} (" in text
    assert "Explicit VR Little Endian" in text  # the transfer syntax by name, beside its UID


def test_planted_duplicates_are_flagged_cross_fold(planted):
    data_dir, cohort = planted
    classes = eda.class_labels(cohort)
    scan = scan_images(data_dir, cohort, classes)
    dups = find_duplicates(cohort, scan.hashes, EDAConfig().max_hash_distance, valid=scan.valid)
    groups = {frozenset(g["image_id"]): g.iloc[0] for _, g in dups.groupby("group")}
    assert set(groups) == {frozenset({"ISIC_0001", "ISIC_0030"}), frozenset({"ISIC_0004", "ISIC_0016"}),
                           frozenset({"ISIC_0006", "ISIC_0007"})}
    exact = groups[frozenset({"ISIC_0001", "ISIC_0030"})]
    assert exact["kind"] == "exact" and exact["cross_fold"] and exact["cross_patient"]
    brightened = groups[frozenset({"ISIC_0004", "ISIC_0016"})]
    assert brightened["kind"] == "near" and brightened["cross_fold"] and brightened["cross_patient"]
    noisy = groups[frozenset({"ISIC_0006", "ISIC_0007"})]
    assert noisy["kind"] == "near" and not noisy["cross_fold"] and not noisy["cross_patient"]
    # Leaking groups come first, and the CSV beside the page lists every member with its fold.
    assert dups.groupby("group")["cross_fold"].first().tolist() == [True, True, False]
    eda.run(data_dir)
    written = pd.read_csv(data_dir / "duplicates.csv")
    assert set(written["image_id"]) == {"ISIC_0001", "ISIC_0030", "ISIC_0004", "ISIC_0016", "ISIC_0006", "ISIC_0007"}
    assert "image_id" in written.columns  # usable as train-fusion/train-gbdt --exclude
    text = (data_dir / "eda.html").read_text()
    duplicates_section = text[text.index('<section id="duplicates">'):]
    assert "3 group(s) of duplicate images" in duplicates_section and "2 span more than one fold" in duplicates_section
    assert "ISIC_0030" in duplicates_section and "ISIC_0016" in duplicates_section


def test_labels_disagree_and_chained_near_duplicates():
    base, other = lesions(2, seed=1)
    hashes = np.stack([phash(img) for img in (base, brighter(base, 8), brighter(base, 16), other)])
    cohort = pd.DataFrame({"image_id": list("abcd"), "patient_id": ["p1", "p1", "p1", "p2"], "fold": [0, 0, 0, 1],
                           "target": [0, 1, 0, 0], "sha256": ["s1", "s2", "s3", "s4"]})
    dups = find_duplicates(cohort, hashes, max_distance=24)
    assert dups["image_id"].tolist() == ["a", "b", "c"]
    assert dups["labels_disagree"].all() and not dups["cross_fold"].any()
    # An unreadable image still joins its byte-identical twin through sha256.
    twins = cohort.iloc[[0, 3]].assign(sha256="s1")
    dups = find_duplicates(twins, hashes[[0, 3]], valid=np.array([True, False]))
    assert dups["image_id"].tolist() == ["a", "d"] and (dups["kind"] == "exact").all() and dups["cross_fold"].all()


def test_phash_separates_copies_from_other_pictures():
    pictures = lesions(50, seed=2)
    hashes = np.stack([phash(p) for p in pictures])
    distances = hamming(hashes[:, None], hashes[None])[np.triu_indices(50, 1)]
    assert distances.min() > 2 * EDAConfig().max_hash_distance
    copy = cv2.resize(brighter(pictures[0], 20), (96, 96))  # re-cached at another size, brighter
    assert hamming(phash(copy), hashes[0]) <= EDAConfig().max_hash_distance // 2
    assert near_pairs(np.vstack([hashes, phash(copy)]), 24).tolist() == [[0, 50]]


def test_overview_and_rates_by_hand():
    cohort = pd.DataFrame({
        "patient_id": ["a", "a", "b", "c", "c", "c", "d"], "fold": [0, 0, 1, 1, 1, 1, -1],
        "sex": ["male", "male", "female", None, None, None, "female"],
        "age": [44.0, 45.0, 61.0, np.nan, 39.9, 40.0, 70.0],
        "target": [1, 0, 1, 0, 0, 0, np.nan],
    })
    info = cohort_overview(cohort)
    assert (info["images"], info["patients"], info["labelled"], info["unlabelled"], info["folds"]) == (7, 4, 6, 1, 2)
    assert info["prevalence"] == pytest.approx(2 / 6)
    assert info["images_per_patient"] == {"min": 1, "median": 1.5, "mean": 1.75, "max": 3}
    assert info["class_counts"] == {"target=0": 4, "target=1": 2, "unlabelled": 1}

    by_sex = target_rates(cohort, "sex").set_index("sex")
    assert by_sex.index.tolist() == ["male", "female", "(missing)"]  # most images first, missing last
    assert by_sex.loc["female", ["images", "patients", "labelled", "positives"]].tolist() == [2, 2, 1, 1]
    assert by_sex.loc["male", "rate"] == 0.5 and by_sex.loc["(missing)", "rate"] == 0.0
    assert (by_sex["rate_low"] <= by_sex["rate"]).all() and (by_sex["rate"] <= by_sex["rate_high"]).all()

    bins = age_bins(cohort["age"], 10)
    assert [None if pd.isna(b) else b for b in bins] == ["40-49", "40-49", "60-69", None, "30-39", "40-49", "70-79"]
    by_age = target_rates(cohort, bins).set_index("age_bin")
    assert by_age.index.tolist() == ["30-39", "40-49", "60-69", "70-79", "(missing)"]
    assert by_age.loc["70-79", "labelled"] == 0 and np.isnan(by_age.loc["70-79", "rate"])

    by_fold = target_rates(cohort, "fold").set_index("fold")
    assert by_fold.index.tolist() == [-1, 0, 1] and by_fold.loc[1, "rate"] == pytest.approx(0.25)

    by_diagnosis = target_rates(cohort.assign(dx=["mel", "nev", "mel", "nev", "nev", "bkl", None]), "sex", "dx")
    assert by_diagnosis.set_index("sex").loc["male", ["frac_mel", "frac_nev"]].tolist() == [0.5, 0.5]


def test_unlabelled_cohort_and_unreadable_image_still_give_a_page(tmp_path):
    cohort = write_cohort(tmp_path, lesions(6, seed=3), fold=-1)
    (tmp_path / cohort["image_path"][2]).unlink()
    path = eda.run(tmp_path)
    text = path.read_text()
    assert "1 cached image file(s) could not be read" in text and cohort["image_path"][2] in text
    assert "unlabelled (6 images)" in text and "No duplicate images found" in text


def test_missing_cohort_names_the_command(tmp_path):
    with pytest.raises(ArtifactError, match="melanet ingest"):
        eda.run(tmp_path)


def test_lesion_section_draws_mask_outlines_and_distributions(tmp_path):
    from melanet.descriptors import LESION_COLUMNS, lesion_descriptors

    images = lesions(12, seed=5)
    images[3] = np.full_like(images[3], 180)  # no lesion: shown as such
    rows = pd.DataFrame([lesion_descriptors(img) for img in images])
    target = (np.arange(12) % 3 == 0).astype(float)
    write_cohort(tmp_path, images, **{c: rows[c].to_numpy() for c in LESION_COLUMNS}, target=target, fold=np.arange(12) % 3)
    text = eda.run(tmp_path, eda.EDAConfig(mask_thumbnails=6, thumbnails_per_class=0)).read_text()
    section = text[text.index('<section id="lesions">'):text.index('<section id="duplicates">')]
    assert "Mask outlines on 6 sampled images" in section and "no lesion found" in section  # the failure is shown
    assert len(embedded_pngs(section)) == 6 + 1  # six outlined thumbnails, one histogram grid
    assert "Descriptor distributions by class" in section and "lesion_compactness" in section
    assert "AUC vs target" in section
    plain = tmp_path / "plain"
    write_cohort(plain, images[:3], target=target[:3], fold=[0, 1, 2])
    assert "descriptors=false" in eda.run(plain).read_text()
