"""The raw-data model: typed load, validation and save of ``pretrain_data.json`` (upstream nnssl's schema).

A collection is a BIDS-like tree ``Collection > Dataset > Subject > Session > Image``::

    {"collection_index": 745, "collection_name": "Dataset745_OpenMind",
     "datasets": {"ds000001": {"dataset_index": "ds000001", "name": null, "dataset_info": {...},
        "subjects": {"sub-01": {"subject_id": "sub-01", "subject_info": {"age": 25},
           "sessions": {"ses-DEFAULT": {"session_id": "ses-DEFAULT", "session_info": null,
              "images": [{"name": "sub-01_T1w.nii.gz", "image_path": "$nnssl_raw/.../sub-01_T1w.nii.gz",
                          "modality": "T1w", "image_info": {...},
                          "associated_masks": {"anatomy_mask": "...", "anonymization_mask": null}}]}}}}}}}

Paths are kept in the dataclasses exactly as written in the JSON; a leading ``$VAR/`` component is expanded
from the environment only when a path is used (:func:`expand_path`, :meth:`Collection.iter_images`).
:meth:`Collection.save` writes absolute paths under ``$nnssl_raw`` / ``$nnssl_preprocessed`` back in the
``$VAR/...`` form (:func:`relativize_path`).

:func:`validate_collection_dict` reports every problem of a JSON document at once, each with its JSON location
(``datasets["ds1"].subjects["sub-01"].sessions["ses-1"].images[0].image_path: missing key``);
:meth:`Collection.load` and :meth:`Collection.from_dict` raise one :class:`CollectionValidationError` listing them.
Optional keys that a file leaves out stay left out when the collection is saved again, so load -> save gives the
same JSON document (apart from the intended ``$VAR`` rewriting of absolute paths).

Downstream code works on :class:`IndependentImage`, the flattened per-image record of :meth:`Collection.iter_images`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nnssl.paths import PREPROCESSED, RAW, MissingEnvironmentVariable
from nnssl.serialization import atomic_path, load_json, to_jsonable

logger = logging.getLogger(__name__)

#: Image file endings removed from an image name to form its case stem (longest first).
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr", ".gz")
#: Environment variables whose absolute paths :func:`relativize_path` rewrites to ``$VAR/...``.
RELATIVE_PATH_VARIABLES = (RAW, PREPROCESSED)

ImageFilter = Callable[["IndependentImage"], bool]
#: Longest file name most file systems allow, in bytes (ext4, xfs, btrfs, NTFS: 255).
MAX_NAME_BYTES = 255
#: Bytes the case store appends to an image stem in its longest file name:
#: ``<stem>__anat.nnssl_tmp-<8 hex>.b2nd`` (mask suffix 6 + temporary marker 19 + ``.b2nd`` 5).
CASE_FILE_SUFFIX_BYTES = 30
#: ``image_info`` key with which an image declares more than one channel per voxel.
CHANNELS_KEY = "num_channels"


class CollectionValidationError(ValueError):
    """A ``pretrain_data.json`` document breaks the schema; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str | os.PathLike[str] | None = None) -> None:
        self.problems = list(problems)
        self.source = None if source is None else str(source)
        where = f"{self.source}" if self.source else "The collection"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{where} is not a valid pretrain_data.json ({len(self.problems)} problem(s)); fix these entries:\n{lines}"
        )


class MissingFilesError(FileNotFoundError):
    """Image or mask files named by a collection do not exist; ``missing`` lists all of them."""

    MAX_LISTED = 200

    def __init__(self, missing: list[str], collection_name: str) -> None:
        self.missing = list(missing)
        shown = "\n".join(f"  - {m}" for m in self.missing[: self.MAX_LISTED])
        more = len(self.missing) - self.MAX_LISTED
        tail = f"\n  ... and {more} more (all are in .missing)" if more > 0 else ""
        super().__init__(
            f"{len(self.missing)} file(s) named by collection '{collection_name}' do not exist. Fix the paths in "
            f"pretrain_data.json or the $nnssl_raw / $nnssl_preprocessed variables they use:\n{shown}{tail}"
        )


# ----------------------------------------------------------------------------------------------- paths


def expand_path(path: str) -> str:
    """Expand a leading ``$VAR`` (or ``${VAR}``) path component from ``os.environ``; other paths are returned as is.

    Only the first component is replaced (``$nnssl_raw/a/$b`` keeps ``$b``). An unset variable raises
    :class:`nnssl.paths.MissingEnvironmentVariable` naming the path and the variable.
    """
    if not path.startswith("$"):
        return path
    head, sep, rest = path.partition("/")
    variable = head[1:]
    if variable.startswith("{") and variable.endswith("}"):
        variable = variable[1:-1]
    if not variable:
        raise ValueError(f"Path '{path}' starts with '$' but names no environment variable; write $VAR/...")
    value = os.environ.get(variable)
    if not value:
        raise MissingEnvironmentVariable(
            f"Path '{path}' is relative to ${variable}, but the environment variable '{variable}' is not set. "
            f"Set it to the folder these paths are relative to, for example: export {variable}=/data/{variable}"
        )
    root = value.rstrip("/") if value != "/" else ""
    return f"{root}{sep}{rest}" if sep else value


def relativize_path(path: str, variables: Iterable[str] = RELATIVE_PATH_VARIABLES) -> str:
    """Rewrite an absolute path under ``$nnssl_raw`` or ``$nnssl_preprocessed`` to ``$nnssl_raw/...``.

    The match is per path component (``/data/raw2/x`` is not under ``/data/raw``); when the roots are nested,
    the longest one wins. Unset variables are skipped; ``$VAR`` paths, relative paths and paths outside every
    root are returned unchanged.
    """
    if path.startswith("$") or not os.path.isabs(path):
        return path
    normalized = os.path.normpath(path)
    best: tuple[int, str, str] | None = None
    for variable in variables:
        value = os.environ.get(variable)
        if not value:
            continue
        root = os.path.normpath(value)
        inside = normalized == root or normalized.startswith(root.rstrip(os.sep) + os.sep)
        if inside and (best is None or len(root) > best[0]):
            best = (len(root), variable, root)
    if best is None:
        return path
    _, variable, root = best
    rest = os.path.relpath(normalized, root)
    return f"${variable}" if rest == "." else f"${variable}/{rest.replace(os.sep, '/')}"


def image_stem(name: str) -> str:
    """The image name without its file ending (:data:`IMAGE_ENDINGS`, one ending removed)."""
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return name


def make_unique_id(collection_name: str, dataset_index: str, subject_id: str, session_id: str, image_name: str) -> str:
    """``collection__dataset__subject__session__image``: the id of one image (upstream's format)."""
    return f"{collection_name}__{dataset_index}__{subject_id}__{session_id}__{image_name}"


# ---------------------------------------------------------------------------------------- dataclasses


@dataclass
class AssociatedMasks:
    """Mask files of one image: anatomy (1 = anatomy) and anonymization (1 = removed by defacing)."""

    anonymization_mask: str | None = None
    anatomy_mask: str | None = None


@dataclass
class Image:
    """One image file with its modality and optional metadata and masks."""

    name: str
    image_path: str
    modality: str
    image_info: dict[str, Any] | None = None
    associated_masks: AssociatedMasks | None = None


@dataclass
class Session:
    """One imaging session of a subject."""

    session_id: str
    session_info: dict[str, Any] | None = None
    images: list[Image] = field(default_factory=list)


@dataclass
class Subject:
    """One subject; ``subject_id`` only needs to be unique within its dataset."""

    subject_id: str
    subject_info: dict[str, Any] | None = None
    sessions: dict[str, Session] = field(default_factory=dict)


@dataclass
class Dataset:
    """One dataset of a collection; its key in ``Collection.datasets`` is ``str(dataset_index)``."""

    dataset_index: str | int
    name: str | None = None
    dataset_info: dict[str, Any] | None = None
    subjects: dict[str, Subject] = field(default_factory=dict)


@dataclass(frozen=True)
class IndependentImage:
    """The flattened record of one image, with expanded absolute paths (see :meth:`Collection.iter_images`)."""

    collection_name: str
    collection_index: int | str
    dataset_index: str
    subject_id: str
    session_id: str
    image_name: str
    image_path: str
    modality: str
    image_info: dict[str, Any] | None = None
    subject_info: dict[str, Any] | None = None
    anatomy_mask: str | None = None
    anonymization_mask: str | None = None

    @property
    def unique_id(self) -> str:
        """``collection__dataset__subject__session__image``."""
        return make_unique_id(
            self.collection_name, self.dataset_index, self.subject_id, self.session_id, self.image_name
        )

    @property
    def subject_uid(self) -> str:
        """``collection__dataset__subject``: the unit of the train/validation split."""
        return f"{self.collection_name}__{self.dataset_index}__{self.subject_id}"

    @property
    def stem(self) -> str:
        """The image name without its file ending."""
        return image_stem(self.image_name)

    @property
    def relative_case_path(self) -> Path:
        """``collection/dataset/subject/session/stem``: where the preprocessed case lives."""
        return Path(self.collection_name, self.dataset_index, self.subject_id, self.session_id, self.stem)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (for lists such as ``valid_imgs.json``)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndependentImage:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise a ValueError naming them."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [n for n in required if n not in data]
        if unknown or missing:
            raise ValueError(f"Not an IndependentImage record: missing keys {missing}, unknown keys {unknown}.")
        return cls(**{k: data[k] for k in names if k in data})


# Keys each level may have: name -> (required, accepted types). "int|str" excludes bool.
_COLLECTION_KEYS = {
    "collection_index": (True, "int|str"),
    "collection_name": (True, "str"),
    "datasets": (True, "object"),
}
_DATASET_KEYS = {
    "dataset_index": (True, "int|str"),
    "name": (False, "str|null"),
    "dataset_info": (False, "object|null"),
    "subjects": (True, "object"),
}
_SUBJECT_KEYS = {"subject_id": (False, "str"), "subject_info": (False, "object|null"), "sessions": (True, "object")}
_SESSION_KEYS = {"session_id": (False, "int|str"), "session_info": (False, "object|null"), "images": (True, "array")}
_IMAGE_KEYS = {
    "name": (True, "str"),
    "image_path": (True, "str"),
    "modality": (True, "str"),
    "image_info": (False, "object|null"),
    "associated_masks": (False, "object|null"),
}
_MASK_KEYS = {"anonymization_mask": (False, "str|null"), "anatomy_mask": (False, "str|null")}


def _absent(obj: object) -> frozenset[str]:
    return getattr(obj, "_absent_keys", frozenset())


def _remember_absent(obj: object, data: Mapping[str, Any], keys: Iterable[str]) -> None:
    absent = [k for k in keys if k not in data]
    if absent:
        object.__setattr__(obj, "_absent_keys", frozenset(absent))


def _emit(obj: object, out: dict[str, Any], key: str, value: Any) -> None:
    """Add an optional key unless the source document left it out and it still has its default (None)."""
    if value is None and key in _absent(obj):
        return
    out[key] = value


@dataclass
class Collection:
    """The whole ``pretrain_data.json``."""

    collection_index: int | str
    collection_name: str
    datasets: dict[str, Dataset] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------- reading

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Collection:
        """Read and validate ``pretrain_data.json``; every schema problem is reported in one error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Collection file {path} does not exist. Write it with a converter first.")
        data = load_json(path, object_pairs_hook=_DuplicateAwareDict.from_pairs)
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike[str] | None = None) -> Collection:
        """Build a collection from a JSON document; raises :class:`CollectionValidationError` listing all problems."""
        problems = validate_collection_dict(data)
        if problems:
            raise CollectionValidationError(problems, source)
        collection = cls(collection_index=data["collection_index"], collection_name=data["collection_name"])
        for key, ds in data["datasets"].items():
            dataset = Dataset(
                dataset_index=ds["dataset_index"],
                name=ds.get("name"),
                dataset_info=_plain(ds.get("dataset_info")),
            )
            _remember_absent(dataset, ds, ("name", "dataset_info"))
            for subject_key, sub in ds["subjects"].items():
                subject = Subject(subject_id=subject_key, subject_info=_plain(sub.get("subject_info")))
                _remember_absent(subject, sub, ("subject_id", "subject_info"))
                for session_key, ses in sub["sessions"].items():
                    session = Session(session_id=session_key, session_info=_plain(ses.get("session_info")))
                    _remember_absent(session, ses, ("session_id", "session_info"))
                    if "session_id" in ses and not isinstance(ses["session_id"], str):
                        object.__setattr__(session, "_raw_session_id", ses["session_id"])
                    for img in ses["images"]:
                        session.images.append(_image_from_dict(img))
                    subject.sessions[session_key] = session
                dataset.subjects[subject_key] = subject
            collection.datasets[key] = dataset
        return collection

    # ------------------------------------------------------------------------------------- writing

    def to_dict(self, relative_paths: bool = False) -> dict[str, Any]:
        """The JSON document; with ``relative_paths`` absolute paths under the nnssl roots become ``$VAR/...``."""

        def convert(path: Any) -> Any:
            return relativize_path(path) if relative_paths and isinstance(path, str) else path

        datasets: dict[str, Any] = {}
        for key, dataset in self.datasets.items():
            ds: dict[str, Any] = {"dataset_index": dataset.dataset_index}
            _emit(dataset, ds, "name", dataset.name)
            _emit(dataset, ds, "dataset_info", _plain(dataset.dataset_info))
            subjects: dict[str, Any] = {}
            for subject_key, subject in dataset.subjects.items():
                sub: dict[str, Any] = {}
                if "subject_id" not in _absent(subject) or subject.subject_id != subject_key:
                    sub["subject_id"] = subject.subject_id
                _emit(subject, sub, "subject_info", _plain(subject.subject_info))
                sessions: dict[str, Any] = {}
                for session_key, session in subject.sessions.items():
                    ses: dict[str, Any] = {}
                    if "session_id" not in _absent(session) or session.session_id != session_key:
                        raw_id = getattr(session, "_raw_session_id", None)
                        ses["session_id"] = raw_id if str(raw_id) == session.session_id else session.session_id
                    _emit(session, ses, "session_info", _plain(session.session_info))
                    ses["images"] = [_image_to_dict(img, convert) for img in session.images]
                    sessions[session_key] = ses
                sub["sessions"] = sessions
                subjects[subject_key] = sub
            ds["subjects"] = subjects
            datasets[key] = ds
        return {
            "collection_index": self.collection_index,
            "collection_name": self.collection_name,
            "datasets": datasets,
        }

    def save(self, path: str | os.PathLike[str], relative_paths: bool = True) -> None:
        """Validate and write the collection atomically (indent 4); see :meth:`to_dict` for ``relative_paths``.

        Non-finite numbers in the info dicts (NaN is not JSON) are written as null, with a warning.
        """
        document = self.to_dict(relative_paths=relative_paths)
        problems = validate_collection_dict(document)
        if problems:
            raise CollectionValidationError(problems, f"Collection '{self.collection_name}'")
        try:
            text = json.dumps(document, indent=4, allow_nan=False)
        except (ValueError, TypeError):
            document, replaced = _finite_or_none(to_jsonable(document))
            if replaced:
                logger.warning("%d NaN/infinite value(s) in the info dicts of %s were written as null.", replaced, path)
            text = json.dumps(document, indent=4, allow_nan=False)
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")

    # ---------------------------------------------------------------------------------- inspection

    def validate(self) -> None:
        """Raise :class:`CollectionValidationError` if this (possibly hand-built) collection breaks the schema."""
        problems = validate_collection_dict(self.to_dict())
        if problems:
            raise CollectionValidationError(problems, f"Collection '{self.collection_name}'")

    def iter_images(self, filters: Iterable[ImageFilter] = ()) -> Iterator[IndependentImage]:
        """Every image as an :class:`IndependentImage` (paths expanded and absolute) that passes all ``filters``."""
        filters = tuple(filters)
        for location, dataset, subject_key, subject, session_key, img in self._walk_images():
            masks = img.associated_masks
            record = IndependentImage(
                collection_name=self.collection_name,
                collection_index=self.collection_index,
                dataset_index=str(dataset.dataset_index),
                subject_id=subject_key,
                session_id=session_key,
                image_name=img.name,
                image_path=_absolute(img.image_path, f"{location}.image_path"),
                modality=img.modality,
                image_info=img.image_info,
                subject_info=subject.subject_info,
                anatomy_mask=_absolute_or_none(
                    masks.anatomy_mask if masks else None, f"{location}.associated_masks.anatomy_mask"
                ),
                anonymization_mask=_absolute_or_none(
                    masks.anonymization_mask if masks else None, f"{location}.associated_masks.anonymization_mask"
                ),
            )
            if all(f(record) for f in filters):
                yield record

    def _walk_images(self) -> Iterator[tuple[str, Dataset, str, Subject, str, Image]]:
        """Every image with its JSON location (``datasets["1"].subjects["s"].sessions["t"].images[0]``)."""
        for key, dataset in self.datasets.items():
            for subject_key, subject in dataset.subjects.items():
                for session_key, session in subject.sessions.items():
                    base = f"{_item('datasets', key)}{_item('.subjects', subject_key)}{_item('.sessions', session_key)}"
                    for i, img in enumerate(session.images):
                        yield f"{base}.images[{i}]", dataset, subject_key, subject, session_key, img

    def num_images(self) -> int:
        """How many images the collection holds."""
        return sum(
            len(session.images)
            for dataset in self.datasets.values()
            for subject in dataset.subjects.values()
            for session in subject.sessions.values()
        )

    def missing_files(self) -> list[str]:
        """Every image and mask file that does not exist, as ``<JSON location>: <expanded path>`` lines."""
        missing = []
        for location, _, _, _, _, img in self._walk_images():
            paths = [("image_path", img.image_path)]
            if img.associated_masks is not None:
                paths += [
                    ("associated_masks.anatomy_mask", img.associated_masks.anatomy_mask),
                    ("associated_masks.anonymization_mask", img.associated_masks.anonymization_mask),
                ]
            for where, raw in paths:
                if raw is None:
                    continue
                resolved = _absolute(raw, f"{location}.{where}")
                if not os.path.exists(resolved):
                    missing.append(f"{location}.{where}: {resolved} does not exist")
        return missing

    def verify_files_exist(self) -> None:
        """Raise :class:`MissingFilesError` listing every missing image and mask file."""
        missing = self.missing_files()
        if missing:
            raise MissingFilesError(missing, self.collection_name)

    # -------------------------------------------------------------------------------- transformation

    def with_image_paths(self, mapping: Mapping[str, tuple[str, str | None, str | None]]) -> Collection:
        """A new collection whose images point at other files (e.g. preprocessed cases).

        ``mapping`` goes from :attr:`IndependentImage.unique_id` to ``(image_path, anatomy_mask,
        anonymization_mask)``. Images not in the mapping are dropped, and so are sessions, subjects and datasets
        left without images. An id that names no image of this collection is an error.
        """
        known: set[str] = set()
        result = Collection(collection_index=self.collection_index, collection_name=self.collection_name)
        for key, dataset in self.datasets.items():
            new_dataset = replace(dataset, dataset_info=copy.deepcopy(dataset.dataset_info), subjects={})
            for subject_key, subject in dataset.subjects.items():
                new_subject = replace(subject, subject_info=copy.deepcopy(subject.subject_info), sessions={})
                for session_key, session in subject.sessions.items():
                    new_session = replace(session, session_info=copy.deepcopy(session.session_info), images=[])
                    for img in session.images:
                        uid = make_unique_id(
                            self.collection_name, str(dataset.dataset_index), subject_key, session_key, img.name
                        )
                        known.add(uid)
                        if uid not in mapping:
                            continue
                        image_path, anatomy, anonymization = mapping[uid]
                        masks = None
                        if anatomy is not None or anonymization is not None:
                            masks = AssociatedMasks(anonymization_mask=anonymization, anatomy_mask=anatomy)
                        new_session.images.append(
                            replace(
                                img,
                                image_path=str(image_path),
                                image_info=copy.deepcopy(img.image_info),
                                associated_masks=masks,
                            )
                        )
                    if new_session.images:
                        new_subject.sessions[session_key] = new_session
                if new_subject.sessions:
                    new_dataset.subjects[subject_key] = new_subject
            if new_dataset.subjects:
                result.datasets[key] = new_dataset
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise KeyError(
                f"with_image_paths got {len(unknown)} id(s) that name no image of collection "
                f"'{self.collection_name}', e.g. {unknown[:3]}"
            )
        return result


def _absolute(path: str, location: str) -> str:
    """``path`` expanded and absolute; an unset ``$VAR`` names ``location`` (the JSON location of the path)."""
    try:
        return os.path.abspath(expand_path(path))
    except MissingEnvironmentVariable as err:
        raise MissingEnvironmentVariable(f"{location}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{location}: {err}") from None


def _absolute_or_none(path: str | None, location: str) -> str | None:
    return None if path is None else _absolute(path, location)


def _image_from_dict(img: Mapping[str, Any]) -> Image:
    masks_data = img.get("associated_masks")
    masks = None
    if masks_data is not None:
        masks = AssociatedMasks(
            anonymization_mask=masks_data.get("anonymization_mask"), anatomy_mask=masks_data.get("anatomy_mask")
        )
        _remember_absent(masks, masks_data, _MASK_KEYS)
    image = Image(
        name=img["name"],
        image_path=img["image_path"],
        modality=img["modality"],
        image_info=_plain(img.get("image_info")),
        associated_masks=masks,
    )
    _remember_absent(image, img, ("image_info", "associated_masks"))
    return image


def _image_to_dict(img: Image, convert: Callable[[Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": img.name, "image_path": convert(img.image_path), "modality": img.modality}
    _emit(img, out, "image_info", _plain(img.image_info))
    masks = img.associated_masks
    if masks is None:
        _emit(img, out, "associated_masks", None)
    else:
        masks_out: dict[str, Any] = {}
        for key in _MASK_KEYS:
            value = getattr(masks, key)
            _emit(masks, masks_out, key, None if value is None else convert(value))
        out["associated_masks"] = masks_out
    return out


def _plain(obj: Any) -> Any:
    """A deep copy of parsed JSON with plain ``dict``/``list`` containers."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _finite_or_none(obj: Any) -> tuple[Any, int]:
    """Replace NaN/inf floats by None; returns the new object and how many were replaced."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, 1
    if isinstance(obj, dict):
        out, count = {}, 0
        for k, v in obj.items():
            out[k], n = _finite_or_none(v)
            count += n
        return out, count
    if isinstance(obj, list):
        items = [_finite_or_none(v) for v in obj]
        return [v for v, _ in items], sum(n for _, n in items)
    return obj, 0


# ---------------------------------------------------------------------------------------- validation


class _DuplicateAwareDict(dict):
    """A JSON object that remembers keys the file repeats (``json`` would silently keep the last)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) == len(pairs):
            return out
        seen: set[str] = set()
        marked = cls(out)
        marked.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
        return marked


def _item(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}[{json.dumps(key, ensure_ascii=False)}]"


def _field(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _type_ok(value: Any, expected: str) -> bool:
    for option in expected.split("|"):
        if option == "null" and value is None:
            return True
        if option == "str" and isinstance(value, str):
            return True
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "object" and isinstance(value, dict):
            return True
        if option == "array" and isinstance(value, list):
            return True
    return False


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_object(obj: Any, location: str, spec: Mapping[str, tuple[bool, str]], problems: list[str]) -> bool:
    """Check keys and value types of one JSON object; returns False if ``obj`` is not an object at all."""
    where = location or "<document>"
    if not isinstance(obj, dict):
        problems.append(f"{where}: wrong type: expected object, got {_json_type(obj)}")
        return False
    for key in getattr(obj, "duplicates", ()):
        problems.append(f"{_field(location, key)}: duplicate key (the JSON object repeats it; only the last is kept)")
    for key, (required, expected) in spec.items():
        if key not in obj:
            if required:
                problems.append(f"{_field(location, key)}: missing key")
        elif not _type_ok(obj[key], expected):
            problems.append(
                f"{_field(location, key)}: wrong type: expected {expected.replace('|', ' or ')}, "
                f"got {_json_type(obj[key])}"
            )
    for key in obj:
        if key not in spec:
            problems.append(f"{_field(location, key)}: unknown key (allowed: {', '.join(spec)})")
    return True


def _check_container_duplicates(container: dict[str, Any], location: str, what: str, problems: list[str]) -> None:
    for key in getattr(container, "duplicates", ()):
        problems.append(f"{_item(location, key)}: duplicate {what} (the JSON object repeats it; only the last is kept)")


def _check_name(value: Any, location: str, what: str, problems: list[str], reserve: int = 0) -> None:
    """Ids become folder and file names of preprocessed cases: each must be usable as one path component.

    Refused: empty, ``.``, ``..``, ``/`` or ``\\``, control characters (NUL, newline, ...), and names longer than
    :data:`MAX_NAME_BYTES` UTF-8 bytes once ``reserve`` bytes of suffixes are added.
    """
    text = str(value)
    if text in ("", ".", "..") or "/" in text or "\\" in text:
        problems.append(f"{location}: {what} {text!r} cannot be used as a folder name (empty, '.', '..' or has '/')")
        return
    controls = sorted({f"U+{ord(c):04X}" for c in text if ord(c) < 32 or ord(c) == 127})
    if controls:
        problems.append(
            f"{location}: {what} {text!r} contains control characters ({', '.join(controls)}: NUL, newline, tab, "
            "...), which cannot be (or should not be) part of a file name; remove them"
        )
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size + reserve > MAX_NAME_BYTES:
        needs = f" and nnssl appends up to {reserve} bytes of suffixes to it" if reserve else ""
        problems.append(
            f"{location}: {what} is {size} bytes long ({text[:40]!r}...); file systems allow {MAX_NAME_BYTES} bytes "
            f"per file name{needs}, so shorten it to at most {MAX_NAME_BYTES - reserve} bytes"
        )


def _check_path_text(value: Any, location: str, problems: list[str]) -> None:
    """A path with a NUL byte cannot be opened (the OS ends the name at NUL)."""
    if isinstance(value, str) and "\x00" in value:
        problems.append(f"{location}: the path contains a NUL character ({value!r}); no file can have that name")


def _check_declared_channels(info: Any, location: str, problems: list[str]) -> None:
    if isinstance(info, dict) and CHANNELS_KEY in info:
        value = info[CHANNELS_KEY]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(
                f"{location}.{CHANNELS_KEY}: must be a positive integer (channels per voxel), got {value!r}"
            )


def declared_channels(image_info: Mapping[str, Any] | None) -> int:
    """Channels per voxel an image declares in ``image_info["num_channels"]`` (1 when it declares nothing).

    A file with more channels than declared (e.g. an RGB or vector ``.mha``) is refused by the fingerprint and
    the preprocessing; declaring them is how a collection says that multi-channel input is meant.
    """
    if isinstance(image_info, Mapping) and isinstance(image_info.get(CHANNELS_KEY), int):
        return int(image_info[CHANNELS_KEY])
    return 1


def validate_collection_dict(data: Any) -> list[str]:
    """Every schema problem of a ``pretrain_data.json`` document, as ``<JSON location>: <problem>`` lines."""
    problems: list[str] = []
    if not _check_object(data, "", _COLLECTION_KEYS, problems):
        return problems
    collection_name = data.get("collection_name")
    if isinstance(collection_name, str):
        _check_name(collection_name, "collection_name", "collection name", problems)
    datasets = data.get("datasets")
    if not isinstance(datasets, dict):
        return problems
    _check_container_duplicates(datasets, "datasets", "dataset key", problems)
    seen_ids: dict[str, str] = {}
    for ds_key, ds in datasets.items():
        ds_loc = _item("datasets", ds_key)
        if not _check_object(ds, ds_loc, _DATASET_KEYS, problems):
            continue
        index = ds.get("dataset_index")
        if _type_ok(index, "int|str"):
            if str(index) != ds_key:
                problems.append(
                    f"{ds_loc}.dataset_index: is {index!r} but the dataset's key is {ds_key!r}; "
                    f"the key must equal str(dataset_index)"
                )
            _check_name(index, f"{ds_loc}.dataset_index", "dataset index", problems)
        subjects = ds.get("subjects")
        if not isinstance(subjects, dict):
            continue
        _check_container_duplicates(subjects, f"{ds_loc}.subjects", "subject id", problems)
        for sub_key, sub in subjects.items():
            sub_loc = _item(f"{ds_loc}.subjects", sub_key)
            if not _check_object(sub, sub_loc, _SUBJECT_KEYS, problems):
                continue
            _check_name(sub_key, sub_loc, "subject id", problems)
            if isinstance(sub.get("subject_id"), str) and sub["subject_id"] != sub_key:
                problems.append(
                    f"{sub_loc}.subject_id: is {sub['subject_id']!r} but the subject's key is {sub_key!r}; "
                    f"make them equal"
                )
            sessions = sub.get("sessions")
            if not isinstance(sessions, dict):
                continue
            _check_container_duplicates(sessions, f"{sub_loc}.sessions", "session id", problems)
            for ses_key, ses in sessions.items():
                ses_loc = _item(f"{sub_loc}.sessions", ses_key)
                if not _check_object(ses, ses_loc, _SESSION_KEYS, problems):
                    continue
                _check_name(ses_key, ses_loc, "session id", problems)
                if _type_ok(ses.get("session_id"), "int|str") and str(ses["session_id"]) != ses_key:
                    problems.append(
                        f"{ses_loc}.session_id: is {ses['session_id']!r} but the session's key is {ses_key!r}; "
                        f"make them equal"
                    )
                images = ses.get("images")
                if not isinstance(images, list):
                    continue
                names: dict[str, int] = {}
                stems: dict[str, int] = {}
                for i, img in enumerate(images):
                    img_loc = f"{ses_loc}.images[{i}]"
                    if not _check_object(img, img_loc, _IMAGE_KEYS, problems):
                        continue
                    _check_path_text(img.get("image_path"), f"{img_loc}.image_path", problems)
                    masks = img.get("associated_masks")
                    if isinstance(masks, dict):
                        _check_object(masks, f"{img_loc}.associated_masks", _MASK_KEYS, problems)
                        for mask_key in _MASK_KEYS:
                            _check_path_text(masks.get(mask_key), f"{img_loc}.associated_masks.{mask_key}", problems)
                    _check_declared_channels(img.get("image_info"), f"{img_loc}.image_info", problems)
                    name = img.get("name")
                    if not isinstance(name, str):
                        continue
                    _check_name(image_stem(name), f"{img_loc}.name", "image stem", problems, CASE_FILE_SUFFIX_BYTES)
                    if name in names:
                        problems.append(
                            f"{img_loc}.name: duplicate image name {name!r} in this session "
                            f"(also images[{names[name]}])"
                        )
                        continue
                    names[name] = i
                    stem = image_stem(name)
                    if stem in stems:
                        problems.append(
                            f"{img_loc}.name: {name!r} has the same stem {stem!r} as images[{stems[stem]}]; "
                            f"their preprocessed cases would overwrite each other, rename one"
                        )
                    stems.setdefault(stem, i)
                    if isinstance(collection_name, str) and _type_ok(index, "int|str"):
                        uid = make_unique_id(collection_name, str(index), sub_key, ses_key, name)
                        if uid in seen_ids:
                            problems.append(f"{img_loc}: duplicate unique id {uid!r} (also {seen_ids[uid]})")
                        else:
                            seen_ids[uid] = img_loc
    return problems
