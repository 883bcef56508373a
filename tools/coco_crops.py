"""A single-class, large-object, real-photo dataset cut from a COCO json: the held-out-like
check docs/results.md reports (coco128's persons).

    python tools/coco_crops.py ../shared/data/coco128/annotations/instances.json \
        ../shared/data/coco128/images OUT [--category person] [--seed 0]

Every instance of the category at least 32 px on its short side and 48² px in area gets
up to two crops around it (1.2-2.5x its size, the centre jittered, at least 80 px); a crop
is kept when every other instance of the category is either at least 75 % inside it
(labelled, clipped) or shows at most 20 % or 24² px of itself (then it is background),
and when it touches no crowd region. Instances are taken largest first until a photo
has six crops or more (up to two each: seven at most). The crops of a photo all
go to the same split (a fifth of the photos, by a hash of the file name, are the test
split), so no test object was seen in training. Written as Pascal VOC (1-based pixel
coordinates) with ``OUT/spec.yaml``: train, val (= test) and test splits.
"""

import argparse
import collections
import hashlib
import json
import os
import random

import cv2

SPEC = """format: voc
names: [{name}]
train: {{images: JPEGImages, annotations: Annotations, ids: ImageSets/train.txt}}
val: {{images: JPEGImages, annotations: Annotations, ids: ImageSets/test.txt}}
test: {{images: JPEGImages, annotations: Annotations, ids: ImageSets/test.txt}}
"""


def overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def area(a) -> float:
    return (a[2] - a[0]) * (a[3] - a[1])


def crop_labels(crop, boxes, crowd):
    """The boxes of a crop (xyxy relative to it), or None when it is ambiguous."""
    if any(overlap(crop, q) > 0 for q in crowd):
        return None
    labels = []
    for q in boxes:
        inside = overlap(crop, q)
        if inside >= 0.75 * area(q):
            x1, y1 = max(q[0], crop[0]) - crop[0], max(q[1], crop[1]) - crop[1]
            labels.append((x1, y1, min(q[2], crop[2]) - crop[0], min(q[3], crop[3]) - crop[1]))
        elif inside > 0.2 * area(q) and inside > 24 * 24:
            return None
    return labels or None


def crops_of(image, boxes, crowd, rng):
    """(crop xyxy, labels) of one photo: see the module docstring."""
    width, height = image["width"], image["height"]
    out = []
    for p in sorted(boxes, key=area, reverse=True):
        if len(out) >= 6:
            break
        bw, bh = p[2] - p[0], p[3] - p[1]
        if min(bw, bh) < 32 or area(p) < 48 * 48:
            continue
        got = 0
        for _ in range(30):
            if got == 2:
                break
            cw, ch = max(bw * rng.uniform(1.2, 2.5), 80), max(bh * rng.uniform(1.2, 2.5), 80)
            cx = (p[0] + p[2]) / 2 + rng.uniform(-0.3, 0.3) * (cw - bw)
            cy = (p[1] + p[3]) / 2 + rng.uniform(-0.3, 0.3) * (ch - bh)
            crop = [max(0, cx - cw / 2), max(0, cy - ch / 2), min(width, cx + cw / 2)]
            crop = [round(v) for v in (*crop, min(height, cy + ch / 2))]
            if crop[2] - crop[0] < 80 or crop[3] - crop[1] < 80:
                continue
            labels = crop_labels(crop, boxes, crowd)
            if labels:
                out.append((crop, labels))
                got += 1
    return out


def voc_xml(stem: str, name: str, size, labels) -> str:
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x1 + 1:.1f}</xmin><ymin>{y1 + 1:.1f}</ymin>"
        f"<xmax>{x2:.1f}</xmax><ymax>{y2:.1f}</ymax></bndbox></object>"
        for x1, y1, x2, y2 in labels
    )
    return (
        f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{objects}</annotation>"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("annotations")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--category", default="person")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.annotations, encoding="utf-8") as f:
        coco = json.load(f)
    wanted = [c["id"] for c in coco["categories"] if c["name"] == args.category]
    boxes, crowd = collections.defaultdict(list), collections.defaultdict(list)
    for a in coco["annotations"]:
        if a["category_id"] in wanted:
            x, y, w, h = a["bbox"]
            (crowd if a.get("iscrowd") else boxes)[a["image_id"]].append((x, y, x + w, y + h))
    for folder in ("Annotations", "ImageSets", "JPEGImages"):
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    rng, splits = random.Random(args.seed), {"train": [], "test": []}
    for image in coco["images"]:
        found = crops_of(image, boxes[image["id"]], crowd[image["id"]], rng)
        if not found:
            continue
        pixels = cv2.imread(os.path.join(args.images, image["file_name"]))
        digest = int(hashlib.md5(image["file_name"].encode()).hexdigest(), 16)
        split = splits["test" if digest % 5 == 0 else "train"]
        for index, (c, labels) in enumerate(found):
            stem = f"{os.path.splitext(image['file_name'])[0]}_{index}"
            part = pixels[c[1] : c[3], c[0] : c[2]]
            cv2.imwrite(os.path.join(args.out, "JPEGImages", stem + ".jpg"), part)
            xml = voc_xml(stem, args.category, (part.shape[1], part.shape[0]), labels)
            with open(os.path.join(args.out, "Annotations", stem + ".xml"), "w") as f:
                f.write(xml)
            split.append(stem)
    for name, stems in splits.items():
        with open(os.path.join(args.out, "ImageSets", f"{name}.txt"), "w") as f:
            f.write("".join(s + "\n" for s in stems))
    with open(os.path.join(args.out, "spec.yaml"), "w") as f:
        f.write(SPEC.format(name=args.category))
    print(f"{args.out}: {len(splits['train'])} train / {len(splits['test'])} test crops")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
