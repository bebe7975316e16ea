"""Draw the example edit, examples/cat_sticker.png, and the README's edit-propagation picture.

    .venv/bin/python examples/make_edit_example.py            # writes both (needs the eval extra: OpenCV)

The picture is NOT made with DIFT features. No Stable Diffusion weights were reachable where it was made, and the
random-weight tiny model gives meaningless matches, so the correspondences come from a stand-in: the test suite's
``HomographyCodedExtractor`` (tests/edit_helpers.py), whose features encode a known transform of the source. The
transform cat.jpg -> cat_turned.jpg (a mirrored, rotated crop) is estimated here with SIFT on the mirrored target.
What the picture shows is dift-fast's edit path on the example pair (sampling under the edit, point transfer,
RANSAC homography, premultiplied warp, compositing), not DIFT's matching quality. With the real model:

    dift-fast edit examples/cat.jpg examples/cat_sticker.png examples/cat_turned.jpg --out edited/
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SCALE = 4  # draw at 4x and downsample: smooth alpha edges


def draw_sticker(size: tuple[int, int]) -> Image.Image:
    """A gold monocle on the cat's left-hand eye and a red star on its forehead, on a transparent layer."""
    w, h = size
    big = Image.new("RGBA", (w * SCALE, h * SCALE), (0, 0, 0, 0))
    d = ImageDraw.Draw(big)

    def s(*v: float) -> list[float]:
        return [x * SCALE for x in v]

    cx, cy, r = 172, 114, 42  # monocle ring around the eye
    d.ellipse(s(cx - r, cy - r, cx + r, cy + r), outline=(212, 175, 55, 255), width=7 * SCALE)
    d.ellipse(s(cx - r + 7, cy - r + 7, cx + r - 7, cy + r - 7), fill=(200, 230, 255, 60))  # tinted glass
    d.line(s(cx + r * 0.7, cy + r * 0.7, cx + 70, cy + 150), fill=(212, 175, 55, 255), width=3 * SCALE)  # chain
    star = []
    for k in range(10):  # a five-pointed star on the forehead
        radius = 30 if k % 2 == 0 else 12
        angle = -math.pi / 2 + k * math.pi / 5
        star.append((252 + radius * math.cos(angle), 48 + radius * math.sin(angle)))
    d.polygon([c * SCALE for p in star for c in p], fill=(220, 30, 40, 255), outline=(90, 0, 0, 255))
    return big.resize((w, h), Image.LANCZOS)  # Pillow resamples RGBA premultiplied


def estimate_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Homography source -> target pixels of a mirrored view: SIFT + RANSAC against the mirrored target."""
    import cv2

    mirrored = np.ascontiguousarray(target[:, ::-1])
    sift = cv2.SIFT_create()
    ka, da = sift.detectAndCompute(cv2.cvtColor(source, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(mirrored, cv2.COLOR_RGB2GRAY), None)
    pairs = [m for m, n in cv2.BFMatcher().knnMatch(da, db, k=2) if m.distance < 0.75 * n.distance]
    src = np.float64([ka[m.queryIdx].pt for m in pairs])
    dst = np.float64([kb[m.trainIdx].pt for m in pairs])
    H, mask = cv2.findHomography(src, dst, cv2.RANSAC, 2.0)
    proj = cv2.perspectiveTransform(src[mask.ravel() > 0][None], H)[0]
    err = np.hypot(*(proj - dst[mask.ravel() > 0]).T)
    print(f"SIFT: {int(mask.sum())} inliers of {len(pairs)} matches, median reprojection error {np.median(err):.2f} px")
    flip = np.array([[-1.0, 0, target.shape[1] - 1], [0, 1, 0], [0, 0, 1]])  # mirrored -> target pixels
    return flip @ H


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picture", default=str(HERE.parent / "docs" / "images" / "edit_propagation.jpg"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from edit_helpers import HomographyCodedExtractor

    from dift_fast.edit import composite_edit, transfer_edit

    source = np.asarray(Image.open(HERE / "cat.jpg").convert("RGB"))
    target = np.asarray(Image.open(HERE / "cat_turned.jpg").convert("RGB"))
    sticker = draw_sticker((source.shape[1], source.shape[0]))
    sticker.save(HERE / "cat_sticker.png")
    print(f"wrote {HERE / 'cat_sticker.png'}")

    extractor = HomographyCodedExtractor(image_size=(768, 768))  # the spair preset's size, as the CLI would use
    extractor.register(source, np.eye(3))
    extractor.register(target, estimate_transform(source, target))
    (result,) = transfer_edit(extractor, source, np.asarray(sticker), [target])
    if result.image is None:
        raise SystemExit(result.reason)
    print(f"edit: {result.inliers} inliers of {result.points} points")
    left = Image.fromarray(composite_edit(source, np.asarray(sticker), np.eye(3)))
    right = result.image
    gap = 8
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.picture, quality=90)
    print(f"wrote {args.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
