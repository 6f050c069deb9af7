"""`skinscan predict / benchmark / app`: the torch-free runtime's verbs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from skinscan import DISCLAIMER
from skinscan.cli.common import UsageError, positive_int, require_extra


def add_runtime_verbs(verbs) -> None:
    for add_verb in (add_predict, add_benchmark, add_app):
        add_verb(verbs)


def cmd_predict(args) -> int:
    # Torch-free on purpose: only the runtime, numpy and tqdm (a test runs this verb with torch blocked).
    import numpy as np
    from tqdm import tqdm

    from skinscan.runtime.classifier import IMAGE_SUFFIXES, Classifier, ModelPackageError, find_images
    from skinscan.runtime.manifest import IntegrityError
    from skinscan.runtime.preprocess import ImageError

    images, failures = find_images(args.paths)
    if not images:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in failures)
        raise UsageError(f"no images found ({reasons}); pass image files ({' '.join(IMAGE_SUFFIXES)}), "
                         "folders or glob patterns")
    try:
        classifier = Classifier.load(args.model, precision=args.precision, threads=args.threads)
    except (ModelPackageError, IntegrityError) as error:
        raise UsageError(str(error)) from None
    if args.explain is not None and not classifier.has_cam:
        raise UsageError(f"this model package ({classifier.path}) has no explanation output (`cam`), so --explain "
                         "cannot draw one; re-export it with `skinscan export` (then `skinscan quantize`)")
    if args.report is not None:
        _check_report_dir(args.report)

    predictions, overlays, taken = [], 0, set()
    reports, replaced, report_names = [], [], set()
    with tqdm(total=len(images), unit="image", desc="classifying", file=sys.stderr, disable=len(images) < 2) as bar:
        for start in range(0, len(images), args.batch_size):
            chunk, arrays, sources, sizes = images[start:start + args.batch_size], [], [], []
            for path in chunk:
                try:
                    array, size = classifier.decode(path)
                except (ImageError, OSError) as error:
                    failures.append((str(path), str(error)))
                    continue
                arrays.append(array)
                sources.append(str(path))
                sizes.append(size)
            if arrays:
                batch = classifier.classify_arrays(np.stack(arrays), sources, sizes)
                predictions += batch
                if args.explain is not None:
                    from skinscan.runtime.explain import overlay_path, save_overlay

                    for array, prediction in zip(arrays, batch, strict=True):
                        if not prediction.assessable:  # no diagnosis, so no map of where it came from
                            continue
                        save_overlay(array, prediction, overlay_path(args.explain, prediction.source, taken))
                        overlays += 1
                if args.report is not None:
                    for array, prediction in zip(arrays, batch, strict=True):
                        written, overwritten = _write_report(args.report, classifier, array, prediction, report_names)
                        reports += written
                        replaced += overwritten
            bar.update(len(chunk))

    if args.json:
        _print_predictions_json(classifier, predictions, failures)
    elif args.csv:
        _print_predictions_csv(classifier, predictions)
    else:
        _print_predictions_table(classifier, predictions)
    if failures:
        print(f"\n{len(failures)} input(s) could not be classified:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
    if args.explain is not None:
        skipped = sum(not p.assessable for p in predictions)
        print(f"{overlays} explanation overlay(s) (Grad-CAM of the top diagnosis) written to {args.explain}"
              + (f"; none for the {skipped} image(s) that cannot be assessed" if skipped else ""),
              file=sys.stderr if args.json or args.csv else sys.stdout)
    if args.report is not None:
        where = sys.stderr if args.json or args.csv else sys.stdout
        print(f"{len(reports) // 2} report(s) for the doctor (one page each, PNG and PDF) written to {args.report}:",
              file=where)
        for path in reports:
            print(f"  {path}" + ("  (replaced the file that was there)" if path in replaced else ""), file=where)
    print(DISCLAIMER, file=sys.stderr if args.json or args.csv else sys.stdout)
    return 1 if failures else 0


def _check_report_dir(folder: Path) -> None:
    """--report DIR must be a folder we can write to (created if missing); a clear error before any work."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--report {folder}: that is a file, not a folder; pass a folder for the reports (it is "
                         "created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--report {folder}: cannot create that folder ({error.strerror}); pass a folder you can "
                         "write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--report {folder}: this folder is not writable; pass a folder you can write to")


def _write_report(folder: Path, classifier, array, prediction, taken: set[str]) -> tuple[list[Path], list[Path]]:
    """One doctor's report page for `prediction` (PNG + PDF): (files written, files among them that were replaced)."""
    from skinscan.runtime.doctor_report import ReportModel, render_report, report_name, save_report

    model = ReportModel(classifier.version, classifier.precision, classifier.malignant_codes, classifier.label_names)
    index = 0
    while report_name(prediction.source, index) in taken:  # two photos with the same name: both get a report
        index += 1
    name = report_name(prediction.source, index)
    taken.add(name)
    try:
        return save_report(render_report(array, prediction, model), folder, name)
    except OSError as error:
        raise UsageError(f"--report {folder}: cannot write {name}.png / .pdf ({error.strerror or error}); pass a "
                         "folder you can write to") from None


def add_predict(verbs) -> None:
    """The `skinscan predict` options."""
    pr = verbs.add_parser("predict", help="classify images with a model package (ONNX Runtime, no torch)")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    pr.add_argument("--model", type=Path, default=None,
                    help="model package folder or an .onnx file in one (default: the bundled package)")
    pr.add_argument("--precision", default=None, choices=["auto", "int8", "fp32"],
                    help="which ONNX file of the package (default: fp32, as the web app, so both give the same "
                         "answer for the same image; auto = int8 when the package has it)")
    output = pr.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON document on stdout")
    output.add_argument("--csv", action="store_true", help="CSV on stdout: one row per image, every probability")
    pr.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads (default: all cores)")
    pr.add_argument("--batch-size", type=positive_int, default=16,
                    help="images per ONNX Runtime call (more: a little faster, more memory)")
    pr.add_argument("--explain", type=Path, metavar="OUT_DIR", default=None,
                    help="also write one PNG per image into OUT_DIR: the image under a Grad-CAM heatmap of where "
                         "the model looked for its top diagnosis (needs a package exported with the `cam` output)")
    pr.add_argument("--report", type=Path, metavar="DIR", default=None,
                    help="also write a one-page report for the doctor per image into DIR (PNG and PDF): the photo, "
                         "where the model looked, the result in plain words, the date, the model version")
    pr.set_defaults(func=cmd_predict)


def _print_predictions_json(classifier, predictions, failures) -> None:
    import json

    document = {
        "model": {"path": str(classifier.path), "precision": classifier.precision, "version": classifier.version,
                  "malignant_threshold": classifier.threshold},
        "predictions": [prediction.to_dict() for prediction in predictions],
        "failures": [{"source": path, "error": reason} for path, reason in failures],
        "disclaimer": DISCLAIMER,
    }
    print(json.dumps(document, indent=2))


def _print_predictions_csv(classifier, predictions) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["file", "label", "name", "probability", *classifier.labels, "malignant_probability", "malignant",
                     "cannot_assess"])
    for p in predictions:
        if not p.assessable:  # no diagnosis for an image that cannot be assessed (--json has it for developers)
            writer.writerow([p.source, *[""] * (len(classifier.labels) + 5), p.cannot_assess])
            continue
        writer.writerow([p.source, p.label, p.name, f"{p.probability:.6f}",
                         *(f"{p.probabilities[code]:.6f}" for code in classifier.labels),
                         f"{p.malignant_probability:.6f}", "true" if p.malignant else "false", ""])


def _print_predictions_table(classifier, predictions) -> None:
    if not predictions:
        print("no image could be classified")
        return
    rows = [("FILE", "DIAGNOSIS", "2ND", "3RD", "P(MALIGNANT)", "MALIGNANCY")]
    for p in predictions:
        (code, name, probability), *others = p.top
        if not p.assessable:  # the network's guess is not a result: say why and what to do instead
            rows.append((p.source or "-", f"CANNOT ASSESS ({p.cannot_assess.replace('_', ' ')})", "-", "-", "-",
                         p.cannot_assess_message or ""))
            continue
        rows.append((p.source or "-", f"{name} ({code}) {probability:.1%}",
                     *(f"{c} {q:.1%}" for c, _, q in others), f"{p.malignant_probability:.1%}",
                     "SUSPICIOUS: see a dermatologist" if p.malignant else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    shown = {c for p in predictions if p.assessable for c, _, _ in p.top[1:]}
    if shown:
        print("codes: " + "; ".join(f"{c} = {classifier.label_names[c]}" for c in classifier.labels if c in shown))
    flagged = sum(p.malignant for p in predictions if p.assessable)
    unassessable = sum(not p.assessable for p in predictions)
    malignant = " + ".join(classifier.malignant_codes)
    print(f"\n{len(predictions)} image(s) screened with {classifier.path} ({classifier.precision}): {flagged} with "
          f"features that look like skin cancer, to show a dermatologist soon (SUSPICIOUS: {malignant} together "
          f">= {classifier.threshold:.0%}); {unassessable} could not be assessed")


def cmd_benchmark(args) -> int:
    # Torch-free unless --checkpoint asks for the PyTorch eager engine.
    from skinscan.runtime.benchmark import format_table, run_benchmark, stderr_progress, write_json
    from skinscan.runtime.manifest import IntegrityError

    eager = None
    if args.checkpoint is not None:
        require_extra("train")
        from skinscan.factory.eager import load_eager_engine

        eager = load_eager_engine(args.checkpoint)
    try:
        report = run_benchmark(args.model, eager, threads=args.threads, batches=args.batch,
                               iterations=args.iterations, warmup=args.warmup, rounds=args.rounds,
                               progress=stderr_progress)
    except IntegrityError as error:
        raise UsageError(str(error)) from None
    print(format_table(report))
    print(f"results: {write_json(report, args.json)}")
    return 0


def add_benchmark(verbs) -> None:
    """The `skinscan benchmark` options."""
    be = verbs.add_parser("benchmark", help="latency and throughput: PyTorch eager vs ONNX FP32 vs INT8, sizes")
    be.add_argument("--model", type=Path, default=None, help="model package folder (default: the bundled package)")
    be.add_argument("--checkpoint", type=Path, default=None,
                    help="training checkpoint: adds the PyTorch eager engine (needs the `train` extra)")
    be.add_argument("--threads", type=positive_int, nargs="+", default=None,
                    help="thread counts to measure (default: 1 and all cores)")
    be.add_argument("--batch", type=positive_int, nargs="+", default=[1], help="batch sizes to measure")
    be.add_argument("--iterations", type=positive_int, default=200, help="timed calls per engine and setting")
    be.add_argument("--warmup", type=int, default=20, help="untimed calls per engine and setting first")
    be.add_argument("--rounds", type=positive_int, default=5,
                    help="interleaved rounds the iterations are split into (the best round's median is kept)")
    be.add_argument("--json", type=Path, default=Path("runs/benchmark.json"), help="where the JSON results go")
    be.set_defaults(func=cmd_benchmark)


def cmd_app(args) -> int:
    # Torch-free: the stdlib HTTP server; the browser does the screening (onnxruntime-web).
    from skinscan.runtime.app_server import serve
    from skinscan.runtime.classifier import ModelPackageError
    from skinscan.runtime.manifest import IntegrityError

    try:
        return serve(args.host, args.port, args.model)
    except (ModelPackageError, IntegrityError, OSError) as error:
        raise UsageError(str(error)) from None


def add_app(verbs) -> None:
    """The `skinscan app` options."""
    ap = verbs.add_parser("app", help="serve the offline camera web app (screening runs in the browser)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; anything but loopback makes the page reachable from the network")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    ap.add_argument("--model", type=Path, default=None, help="model package folder (default: the bundled package)")
    ap.set_defaults(func=cmd_app)
