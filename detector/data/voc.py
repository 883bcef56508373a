"""Pascal VOC xml -> `Dataset`.

A split is an images folder and a folder of VOC xml files (searched recursively),
optionally restricted to the names of a VOC image set file (``ImageSets/Main/train.txt``).
An xml's image is its ``<filename>`` in the images folder, else the image with the xml's
name; ``<size>`` is the image's size as displayed (EXIF orientation applied). Image ids
are 1-based positions in the sorted image listing; category ids are 1..C in the order of
the class names. Images without an xml are negatives.

Coordinates: VOC's ``xmin..xmax`` are 1-based pixel indices, both ends included, so a
box becomes ``x1 = xmin - 1, x2 = xmax`` in our continuous pixel coordinates (the
inverse of COCO's ``x + w``). ``<difficult>1</difficult>`` objects become ignore regions,
like COCO's crowd boxes: a detection on one is neither a hit nor a false positive.

Bad input follows `detector.data.policy`: an xml that does not parse is skipped with its
image (`annotation_malformed`: its objects are unknown, so it is no negative either); an
object without a name or with a malformed ``<bndbox>`` is skipped and the file's other
objects are kept; an unknown class name drops the box; a missing or zero ``<size>`` is
read from the image's header (as displayed).
"""

import os
import xml.etree.ElementTree as ET

import numpy as np

from detector.data.files import image_size, list_images
from detector.data.image_checks import MAX_PIXELS, ImageTooLarge
from detector.data.policy import build_records, clean_boxes, inspect_image
from detector.data.records import Dataset, Problems


def voc_class_names(annotation_dirs: list[str]) -> list[str]:
    """Sorted class names of every object in the xml files of `annotation_dirs`."""
    names = set()
    for folder in annotation_dirs:
        for path in _list_xml(folder):
            root = _parse(path)
            if root is not None:
                names.update(
                    n.strip() for n in (o.findtext("name") for o in root.iter("object")) if n
                )
    return sorted(names)


def read_voc(
    images_dir: str,
    annotations_dir: str,
    names: list[str],
    image_set: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Dataset:
    """Reads one split.

    Args:
        images_dir: str. Folder of images (searched recursively).
        annotations_dir: str. Folder of VOC xml files.
        names: list[str]. Class names; objects of other names are dropped.
        image_set: str | None. A VOC ``ImageSets/Main/<split>.txt``: the split is the
            images (and xml files) named in it, one name (file name without extension) a
            line. Defaults to None: every image of `images_dir`.
        max_pixels: int. An image whose size is read from its header (no ``<size>``) and
            is over this is skipped (`image_too_large`). Defaults to `MAX_PIXELS`.
    """
    images_dir, annotations_dir = os.path.abspath(images_dir), os.path.abspath(annotations_dir)
    problems = Problems()
    files = list_images(images_dir)
    wanted = None
    if image_set is not None:
        wanted = read_image_set(image_set)
        files = [f for f in files if _stem(f) in wanted]
        missing = sorted(wanted - {_stem(f) for f in files})
        for name in missing[:3]:
            problems.add("image_missing", f"{image_set}: {name}: no image in {images_dir}")
        problems.add("image_missing", None, len(missing) - min(len(missing), 3))
    annotated, broken = _match_xml(files, annotations_dir, problems, wanted)
    image_ids = {rel: i for i, rel in enumerate(files, start=1) if rel not in broken}
    images, rows = _objects(image_ids, images_dir, annotated, names, problems, max_pixels)
    image_index = np.asarray([r[0] for r in rows], np.int64)
    classes = np.asarray([r[1] for r in rows], np.int64)
    xyxy = np.asarray([r[2] for r in rows], np.float64).reshape(-1, 4)
    difficult = np.asarray([r[3] for r in rows], bool)
    sizes = np.asarray([info[2] for info in images], np.float64).reshape(-1, 2)
    limits = sizes[image_index][:, [1, 0, 1, 0]]
    keep, clipped = clean_boxes(xyxy, classes >= 0, limits, problems, [r[4] for r in rows])
    records = build_records(
        images, image_index[keep], clipped[keep], classes[keep], difficult[keep]
    )
    return Dataset(
        records=records,
        names=list(names),
        category_ids=list(range(1, len(names) + 1)),
        annotation_file=None,
        problems=problems,
    )


def read_image_set(path: str) -> set[str]:
    """The image names of a VOC image set file (the first word of each line)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: image set file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the image set ({e.__class__.__name__})") from None
    return {line.split()[0] for line in lines if line.strip()}


def _stem(path: str) -> str:
    """A file's name without folder and extension (VOC's image name)."""
    return os.path.splitext(os.path.basename(path))[0]


def _match_xml(files: list[str], annotations_dir: str, problems: Problems, wanted=None):
    """Each parsed xml's image: ({image path relative to the images folder: (xml path,
    xml root)}, {images whose xml does not parse}). `wanted`: the image names of an image
    set, whose xml files alone are read; None: all."""
    known = set(files)
    by_stem = {os.path.splitext(rel)[0]: rel for rel in files}
    annotated, broken = {}, set()
    for xml_path in _list_xml(annotations_dir):
        if wanted is not None and _stem(xml_path) not in wanted:
            continue
        root = _parse(xml_path)
        rel_stem = os.path.splitext(os.path.relpath(xml_path, annotations_dir))[0]
        filename = (root.findtext("filename") or "").strip() if root is not None else ""
        rel = filename if filename in known else by_stem.get(rel_stem)
        if rel is None:
            rel = by_stem.get(os.path.splitext(filename)[0]) if filename else None
        if root is None:
            problems.add("annotation_malformed", f"{xml_path}: not valid XML")
            if rel is not None:
                broken.add(rel)
            continue
        if rel is None:
            problems.add("image_missing", f"{xml_path}: image {filename or rel_stem} not found")
            continue
        annotated[rel] = (xml_path, root)
    return annotated, broken


def _objects(
    image_ids: dict, images_dir: str, annotated: dict, names: list[str], problems, max_pixels
):
    """The images (relative path -> image id) with a known size, as `build_records` takes
    them, and one row per well-formed object: (position in those images, class index or
    -1, xyxy, difficult, where)."""
    class_index = {name: i for i, name in enumerate(names)}
    images, rows = [], []
    for rel, image_id in image_ids.items():
        path = os.path.join(images_dir, rel)
        xml_path, root = annotated.get(rel, (None, None))
        try:
            size = (_xml_size(root) if root is not None else None) or image_size(path, max_pixels)
        except ImageTooLarge as error:
            problems.add("image_too_large", str(error))
            continue
        if size is None:
            fatal, _, _ = inspect_image(path, max_pixels)
            problems.add(fatal or "image_unreadable", path)
            continue
        images.append((image_id, path, size))
        for obj_no, obj in enumerate(root.iter("object") if root is not None else []):
            parsed = _object(obj)
            where = f"{xml_path}: object {obj_no}"
            if parsed is None:
                problems.add("annotation_malformed", f"{where}: missing name or bndbox")
                continue
            name, box, difficult = parsed
            row = (len(images) - 1, class_index.get(name, -1), box, difficult, f"{where} ({name})")
            rows.append(row)
    return images, rows


def _list_xml(folder: str) -> list[str]:
    """Sorted absolute paths of the ``.xml`` files under `folder`."""
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(".xml")]
    return sorted(found)


def _parse(path: str) -> ET.Element | None:
    """The xml's root element, or None if it does not parse."""
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError, ValueError):
        return None


def _number(element: ET.Element | None, tag: str) -> float | None:
    """The float in ``element/tag``, or None when absent or not a number."""
    text = element.findtext(tag) if element is not None else None
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _xml_size(root: ET.Element) -> tuple[int, int] | None:
    """(height, width) from ``<size>``, or None when missing, not positive or absurd
    (then the image's header gives it)."""
    size = root.find("size")
    width, height = _number(size, "width"), _number(size, "height")
    if not all(v is not None and 1 <= v < 2**31 for v in (width, height)):  # NaN, inf fail
        return None
    return int(height), int(width)


def _object(obj: ET.Element) -> tuple[str, list[float], bool] | None:
    """(name, xyxy continuous pixels, difficult) of an ``<object>``, or None if malformed."""
    name = (obj.findtext("name") or "").strip()
    bndbox = obj.find("bndbox")
    values = [_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
    if not name or any(v is None for v in values):
        return None
    xmin, ymin, xmax, ymax = values
    difficult = (_number(obj, "difficult") or 0) > 0
    return name, [xmin - 1.0, ymin - 1.0, xmax, ymax], difficult
