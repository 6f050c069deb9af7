"""Per-frame time of the web app in headless Chromium: capture+preprocess, inference, render, and FPS,
for FP32 and INT8 in the same run (the app measures itself: `window.skinscanStats`).

Settings are measured in interleaved rounds and each keeps its best round (bursts of other work on a shared
machine are discarded rather than averaged in). The fake camera plays a y4m video of a HAM10000 lesion at the
resolution the app asks the camera for (640x480), so preprocessing does the work it does on a phone. The app
runs unthrottled (`?maxfps=0`): the FPS is then bounded by the camera's 30 frames a second or by the pipeline,
whichever is slower, and the pipeline's own capacity is 1000 / (median end-to-end ms).

    python benchmarks/app_frame_time.py [--model PKG] [--frames 60] [--rounds 3] [--threads 0 1]
                                        [--screenshot docs/app-screenshot.png] [--json runs/app_frame_time.json]

Needs `bash scripts/setup_browser.sh` (Chromium, playwright-core) and the HAM10000 copy.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from skinscan.factory.data import default_data_dir
from skinscan.runtime.benchmark import write_json
from skinscan.runtime.classifier import bundled_package_dir

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "browser" / "drive_app.mjs"
CAMERA_SIZE = (640, 480)  # what app.js asks getUserMedia for
SCREENSHOT_BYTES = 300_000


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 30, fps: int = 30) -> None:
    """A still-image y4m video (BT.601 limited-range YUV 4:2:0), what Chromium's fake camera plays."""
    height, width = rgb.shape[:2]
    r, g, b = np.moveaxis(rgb.astype(np.float64) / 255.0, -1, 0)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    chroma = [c.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for c in (u, v)]
    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, *chroma)]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + b"".join(p.tobytes() for p in planes))


def camera_video(path: Path, data_dir: Path) -> Path:
    """The first HAM10000 melanoma image, scaled to the camera's resolution."""
    import csv

    with open(data_dir / "HAM10000_metadata.csv", newline="") as f:
        image_id = min(row["image_id"] for row in csv.DictReader(f) if row["dx"] == "mel")
    image = Image.open(data_dir / "images" / f"{image_id}.jpg").convert("RGB")
    write_y4m(path, np.asarray(image.resize(CAMERA_SIZE, Image.Resampling.BICUBIC)))
    return path


def shrink_png(path: Path) -> None:
    """Palette PNG (screenshots are flat UI plus one photo): well under SCREENSHOT_BYTES."""
    image = Image.open(path).convert("RGB")
    for colors in (256, 128, 64):
        buffer = io.BytesIO()
        image.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            buffer, "PNG", optimize=True)
        if buffer.tell() <= SCREENSHOT_BYTES:
            break
    path.write_bytes(buffer.getvalue())


def format_table(runs: list[dict]) -> str:
    lines = ["| precision | threads | capture+preprocess ms | inference ms | render ms | end-to-end ms | FPS "
             "| pipeline capacity FPS |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        if "error" in run:
            lines.append(f"| {run['precision']} | {run['threads']} | failed: {run['error'][:80]} |||||")
            continue
        m = run["median"]
        lines.append(f"| {run['precision']} | {run['threads']} | {m['capture'] + m['preprocess']:.1f} "
                     f"| {m['inference']:.1f} | {m['render']:.2f} | {m['total']:.1f} | {run['fps']:.1f} "
                     f"| {1000 / m['total']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=bundled_package_dir())
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--frames", type=int, default=60, help="frames timed per setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each setting keeps its best")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="WASM threads; 0 = the app's default")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a phone-sized screenshot (FP32 run)")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "app_frame_time.json")
    args = parser.parse_args()
    args.model = args.model.resolve()  # the app server runs from tests/browser, not from here

    chromium, node = shutil.which("chromium"), shutil.which("node")
    if not chromium or not node or not (DRIVER.parent / "node_modules" / "playwright-core").is_dir():
        print("needs Chromium, node and playwright-core: run `bash scripts/setup_browser.sh`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "scenario": "benchmark", "chromium": chromium,
            "server": [sys.executable, "-m", "skinscan.cli", "app", "--port", "0", "--model", str(args.model)],
            "y4m": str(camera_video(Path(tmp) / "camera.y4m", args.data)), "precisions": args.precisions,
            "threads": args.threads, "frames": args.frames, "rounds": args.rounds, "timeoutMs": 120_000,
            "screenshot": str(args.screenshot.resolve()) if args.screenshot else None,
        }
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        completed = subprocess.run([node, str(DRIVER), str(Path(tmp) / "config.json")], capture_output=True,
                                   text=True, cwd=DRIVER.parent)
    document = json.loads(completed.stdout.strip().splitlines()[-1]) if completed.stdout.strip() else {}
    if not document.get("ok"):
        print(document.get("failure") or completed.stderr[-3000:], file=sys.stderr)
        return 1
    if args.screenshot:
        shrink_png(args.screenshot)
    report = {"browser": f"Chromium {document['browser']} (headless)", "camera": f"{CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}",
              "model": str(args.model), "runs": document["runs"]}
    write_json(report, args.json)
    print(f"{report['browser']}, camera {report['camera']}, best of {args.rounds} rounds of {args.frames} frames\n")
    print(format_table(document["runs"]))
    print(f"\nresults: {args.json}" + (f"; screenshot: {args.screenshot}" if args.screenshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
