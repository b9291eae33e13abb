"""``data.filters``: text specifications, built against a collection, and upstream's filter presets."""

from __future__ import annotations

import pytest

from nnssl.data.collection import Collection
from nnssl.data.filters import (
    FilterSpecError,
    ModalityFilter,
    OpenMindIQSFilter,
    apply_filters,
    build_filters,
    parse_filter_spec,
)
from nnssl.presets import resolve_config
from nnssl.presets.mae import UPSTREAM_FILTER_PRESETS

#: (dataset, modality, derived_from, score): the IQS tables of a small OpenMind-like collection.
SCORES = [
    ("ds1", "T1w", None, 1.0),
    ("ds1", "T2w", None, 2.0),
    ("ds1", "FLAIR", None, 3.0),
    ("ds1", "FA", "dwi", 3.2),
    ("ds1", "MD", "dwi", 1.2),
    ("ds2", "T1w", None, 2.8),
    ("ds2", "FA", "dwi", 4.0),
]
#: (dataset, subject, modality, derived_from) of every image; ds2's FLAIR has no score.
IMAGES = [
    ("ds1", "s1", "T1w", None),
    ("ds1", "s1", "T2w", None),
    ("ds1", "s2", "FLAIR", None),
    ("ds1", "s2", "FA", "dwi"),
    ("ds1", "s3", "MD", "dwi"),
    ("ds2", "s1", "T1w", None),
    ("ds2", "s1", "FA", "dwi"),
    ("ds2", "s2", "FLAIR", None),
]


def openmind_like_collection() -> Collection:
    datasets: dict = {}
    for ds, subject, modality, derived in IMAGES:
        dataset = datasets.setdefault(
            ds,
            {
                "dataset_index": ds,
                "name": ds,
                "dataset_info": {
                    "image_quality_score": [
                        {"modality": m, "derived_from": d, "image_quality_score": s}
                        for dd, m, d, s in SCORES
                        if dd == ds
                    ]
                },
                "subjects": {},
            },
        )
        sessions = dataset["subjects"].setdefault(
            subject, {"subject_id": subject, "subject_info": None, "sessions": {}}
        )["sessions"]
        images = sessions.setdefault("ses-1", {"session_id": "ses-1", "session_info": None, "images": []})["images"]
        images.append(
            {
                "name": f"{modality}.nii.gz",
                "image_path": f"/data/{ds}/{subject}/{modality}.nii.gz",
                "modality": modality,
                "image_info": {"derived_from": derived} if derived else None,
                "associated_masks": None,
            }
        )
    return Collection.from_dict(
        {"collection_index": 745, "collection_name": "Dataset745_OpenMind", "datasets": datasets}
    )


def _names(images) -> list[str]:
    return [f"{i.dataset_index}/{i.subject_id}/{i.modality}" for i in images]


def test_specs_parse_and_bad_ones_name_the_syntax() -> None:
    assert parse_filter_spec("modality = T1w | T2w").modalities == ("T1w", "T2w")
    iqs = parse_filter_spec("iqs<=2.5")
    assert (iqs.kind, iqs.threshold, iqs.keep_unknown) == ("iqs", 2.5, False)
    assert parse_filter_spec("iqs <= 3|unknown").keep_unknown
    for bad in ("iqs<2", "modality=", "modality=T1w||T2w", "quality<=2", "iqs<=nan", "iqs<=abc"):
        with pytest.raises(FilterSpecError, match="modality=<m1>"):
            parse_filter_spec(bad)


def test_built_filters_select_by_modality_and_score() -> None:
    collection = openmind_like_collection()
    images = list(collection.iter_images())
    kept, removed = apply_filters(images, build_filters(["modality=T1w|FA", "iqs<=3.5"], collection))
    assert _names(kept) == ["ds1/s1/T1w", "ds1/s2/FA", "ds2/s1/T1w"]  # ds2 FA scores 4.0
    assert list(removed.values()) == [4, 1]  # 4 other modalities first, then the FA of score 4
    assert isinstance(build_filters(["modality=T1w"], collection)[0], ModalityFilter)
    unknown_kept, _ = apply_filters(images, build_filters(["iqs<=1.5|unknown"], collection))
    assert _names(unknown_kept) == ["ds1/s1/T1w", "ds1/s3/MD", "ds2/s2/FLAIR"]  # FLAIR of ds2 has no score
    assert isinstance(build_filters(["iqs<=1.5"], collection)[0], OpenMindIQSFilter)


def test_iqs_filter_on_a_collection_without_scores_is_refused() -> None:
    collection = openmind_like_collection()
    for dataset in collection.datasets.values():
        dataset.dataset_info = None
    with pytest.raises(ValueError, match="has no image-quality scores .*--set data.filters="):
        build_filters(["iqs<=2.5"], collection)


EXPECTED = {
    "BaseMAETrainer_BS8_IQS1_5": ["ds1/s1/T1w", "ds1/s3/MD"],
    "BaseMAETrainer_BS8_IQS2_5": ["ds1/s1/T1w", "ds1/s1/T2w", "ds1/s3/MD"],
    "BaseMAETrainer_BS8_IQS3_0": ["ds1/s1/T1w", "ds1/s1/T2w", "ds1/s2/FLAIR", "ds1/s3/MD", "ds2/s1/T1w"],
    "BaseMAETrainer_BS8_T1w_T2w_FLAIR": ["ds1/s1/T1w", "ds1/s1/T2w", "ds1/s2/FLAIR", "ds2/s1/T1w", "ds2/s2/FLAIR"],
    "BaseMAETrainer_BS8_IQS3_5_FA": ["ds1/s2/FA"],
}


@pytest.mark.parametrize("preset", sorted(UPSTREAM_FILTER_PRESETS))
def test_upstream_filter_presets_select_the_expected_images(preset: str) -> None:
    cfg = resolve_config(preset)
    assert (cfg.method, cfg.architecture, cfg.train.batch_size) == ("MAE", "ResEncL", 8)
    collection = openmind_like_collection()
    kept, _ = apply_filters(list(collection.iter_images()), build_filters(cfg.data.filters, collection))
    assert _names(kept) == EXPECTED[preset]


def test_iqs3_5_fa_keeps_upstreams_validation_iterations() -> None:
    assert resolve_config("BaseMAETrainer_BS8_IQS3_5_FA").train.val_iterations == 5
    assert set(EXPECTED) == set(UPSTREAM_FILTER_PRESETS)
