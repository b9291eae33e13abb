"""pretrain_data.json written carelessly or with hostile intent: names that cannot be file names, encodings,
nesting depth, unset $VAR paths, channel declarations. Every problem names the file or the JSON location."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nnssl.data.case_store import case_is_complete, write_case
from nnssl.data.collection import (
    CASE_FILE_SUFFIX_BYTES,
    MAX_NAME_BYTES,
    Collection,
    CollectionValidationError,
    declared_channels,
    image_stem,
    validate_collection_dict,
)
from nnssl.paths import MissingEnvironmentVariable
from nnssl.serialization import load_json

IMAGE_LOC = 'datasets["d"].subjects["s"].sessions["t"].images[0]'


def _document(name: str = "a.nii.gz", subject: str = "s", session: str = "t", **image: object) -> dict:
    entry = {"name": name, "image_path": "$nnssl_raw/x/a.nii.gz", "modality": "T1w", **image}
    return {
        "collection_index": 1,
        "collection_name": "Dataset001_C",
        "datasets": {"d": {"dataset_index": "d", "subjects": {subject: {"sessions": {session: {"images": [entry]}}}}}},
    }


def test_control_characters_in_names_are_refused_with_their_location() -> None:
    problems = validate_collection_dict(_document(subject="s\x00b"))
    assert len(problems) == 1 and problems[0].startswith('datasets["d"].subjects["s\\u0000b"]: subject id')
    assert "U+0000" in problems[0]
    problems = validate_collection_dict(_document(name="a\nb.nii.gz"))
    assert problems == [p for p in problems if p.startswith(f"{IMAGE_LOC}.name: image stem")] and len(problems) == 1
    assert "U+000A" in problems[0]
    problems = validate_collection_dict(_document(image_path="/data/a\x00.nii.gz"))
    assert problems == [f"{IMAGE_LOC}.image_path: the path contains a NUL character ('/data/a\\x00.nii.gz'); "
                        "no file can have that name"]  # fmt: skip


def test_names_longer_than_the_file_system_allows_are_refused(tmp_path: Path) -> None:
    longest = MAX_NAME_BYTES - CASE_FILE_SUFFIX_BYTES
    assert validate_collection_dict(_document(name="a" * longest + ".nii.gz")) == []
    problems = validate_collection_dict(_document(name="a" * (longest + 1) + ".nii.gz"))
    assert len(problems) == 1 and problems[0].startswith(f"{IMAGE_LOC}.name: image stem is {longest + 1} bytes")
    assert f"at most {longest} bytes" in problems[0]
    problems = validate_collection_dict(_document(name="a" * 256 + ".nii.gz"))  # the name of the issue report
    assert len(problems) == 1
    # multi-byte characters count as bytes: 120 x "é" is 240 bytes
    assert len(validate_collection_dict(_document(name="é" * 120 + ".nii.gz"))) == 1
    problems = validate_collection_dict(_document(session="s" * 256))
    assert len(problems) == 1 and "256 bytes" in problems[0] and "at most 255 bytes" in problems[0]
    # the longest accepted stem really fits: the case store writes its longest names (masks, temporary files)
    stem = tmp_path / image_stem("a" * longest + ".nii.gz")
    write_case(stem, np.ones((1, 4, 4, 4), np.float32), {}, {"anatomy": np.ones((1, 4, 4, 4), np.int8)})
    assert case_is_complete(stem)
    with pytest.raises(OSError, match="File name too long"):  # and one byte more would not
        write_case(tmp_path / ("a" * (longest + 1)), np.ones((1, 4, 4, 4), np.float32), {},
                   {"anatomy": np.ones((1, 4, 4, 4), np.int8)})  # fmt: skip


def test_declared_channels_are_validated_and_read() -> None:
    assert declared_channels(None) == 1 and declared_channels({"num_channels": 3}) == 3
    assert validate_collection_dict(_document(image_info={"num_channels": 3})) == []
    for bad in (0, "3", True, 1.5):
        problems = validate_collection_dict(_document(image_info={"num_channels": bad}))
        assert problems == [f"{IMAGE_LOC}.image_info.num_channels: must be a positive integer (channels per voxel), "
                            f"got {bad!r}"]  # fmt: skip


def test_non_utf8_json_names_the_file_and_the_byte(tmp_path: Path) -> None:
    text = json.dumps(_document(), indent=2).replace("T1w", "T1w caf\u00e9")
    path = tmp_path / "pretrain_data.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as info:
        Collection.load(path)
    message = str(info.value)
    offset = text.encode("latin-1").index(b"\xe9")
    assert message.startswith(f"{path} is not UTF-8 text: byte b'\\xe9' at offset {offset}")
    assert "re-save it as UTF-8" in message
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_json(path)  # plans, fingerprints and splits are read by the same function


def test_deeply_nested_json_is_a_message_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "pretrain_data.json"
    path.write_text("[" * 1_000_000 + "]" * 1_000_000)
    with pytest.raises(ValueError, match="nests arrays/objects too deeply") as info:
        Collection.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="too deeply"):
        load_json(path)


def test_unset_variable_names_the_json_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnssl_raw", raising=False)
    document = _document(associated_masks={"anatomy_mask": "$MASKS/a.nii.gz", "anonymization_mask": None})
    document["datasets"]["d"]["subjects"]["s"]["sessions"]["t"]["images"][0]["image_path"] = "/abs/a.nii.gz"
    collection = Collection.from_dict(document)
    monkeypatch.delenv("MASKS", raising=False)
    for call in (lambda: list(collection.iter_images()), collection.missing_files):
        with pytest.raises(MissingEnvironmentVariable) as info:
            call()
        assert str(info.value).startswith(f"{IMAGE_LOC}.associated_masks.anatomy_mask: Path '$MASKS/a.nii.gz'")
        assert "export MASKS=" in str(info.value)
    plain = Collection.from_dict(_document())
    with pytest.raises(MissingEnvironmentVariable, match=f"^{re.escape(IMAGE_LOC)}.image_path: Path '[$]nnssl_raw/"):
        list(plain.iter_images())


def test_hand_built_collection_with_a_bad_name_is_not_saved(tmp_path: Path) -> None:
    document = copy.deepcopy(_document(name="a" * 300 + ".nii.gz"))
    with pytest.raises(CollectionValidationError) as info:
        Collection.from_dict(document)
    assert info.value.problems[0].startswith(f"{IMAGE_LOC}.name")
