"""A tiny end-to-end run on real HAM10000 images: train, evaluate, and resume after an interruption."""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from skinscan.factory import train as train_module  # noqa: E402
from skinscan.factory.compare import compare_checkpoints, format_comparison  # noqa: E402
from skinscan.factory.data import DatasetError, read_metadata, read_split  # noqa: E402
from skinscan.factory.evaluate import evaluate_checkpoint  # noqa: E402
from skinscan.factory.export import build_package, torch_probabilities  # noqa: E402
from skinscan.factory.train import TrainConfig, load_checkpoint, load_model, train  # noqa: E402
from skinscan.runtime.manifest import verify_file  # noqa: E402

pytestmark = pytest.mark.slow


def tiny_config(ham10000_dir, split_csv, out_dir, pretrained, **overrides) -> TrainConfig:
    values = dict(data_dir=str(ham10000_dir), split_csv=str(split_csv), out_dir=str(out_dir),
                  pretrained=pretrained, input_size=(96, 128), warmup_epochs=1, epochs=2, batch_size=16,
                  warmup_steps=4, max_images=70, threads=2, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_train_then_evaluate(ham10000_dir, split_csv, pretrained_v3_small, tmp_path):
    config = tiny_config(ham10000_dir, split_csv, tmp_path / "run", pretrained_v3_small)
    best = train(config)

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["phase"] for r in rows] == ["warmup", "finetune", "finetune"]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_balanced_accuracy"] <= 1 for r in rows)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["input_size"] == [96, 128]
    assert "best epoch" in (tmp_path / "run" / "log.txt").read_text()
    best_row = max(rows, key=lambda r: r["val_balanced_accuracy"])
    assert load_checkpoint(best)["epoch_metrics"]["epoch"] == best_row["epoch"]

    metrics = evaluate_checkpoint(best, ham10000_dir, split_csv, tmp_path / "eval", part="test", threads=2)
    for name in ("report.md", "metrics.json", "confusion_matrix.png", "roc_curves.png",
                 "reliability_diagram.png", "reliability_diagram_before.png", "predictions.csv"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name
    predictions = np.loadtxt(tmp_path / "eval" / "predictions.csv", delimiter=",", skiprows=1,
                             usecols=range(2, 9))
    np.testing.assert_allclose(predictions.sum(1), 1.0, atol=1e-5)
    assert 0 <= metrics["balanced_accuracy"] <= 1 and metrics["calibration"]["temperature"] > 0
    assert "## Calibration" in (tmp_path / "eval" / "report.md").read_text()
    assert "per-class bias" in (tmp_path / "eval" / "report.md").read_text()
    # HAM10000's metadata gives subgroups, among them how each diagnosis was confirmed.
    assert {"sex", "age_band", "localization", "dx_type"} <= set(metrics["subgroups"])
    assert "### How the diagnosis was confirmed (dx_type)" in (tmp_path / "eval" / "report.md").read_text()
    compared = metrics["calibration"]["compared"]
    assert [row["calibrator"].split(" ")[0] for row in compared] == ["none", "temperature", "temperature"]
    # Temperature never moves the argmax: same balanced accuracy as the raw logits.
    assert compared[1]["balanced_accuracy"] == compared[0]["balanced_accuracy"] == metrics["balanced_accuracy"]

    # The checkpoint packages into the contract ONNX graph, calibrated on val, with its ORT Mobile form.
    metadata = build_package(best, ham10000_dir, split_csv, tmp_path / "package", threads=2)
    for name in ("skinscan.onnx", "skinscan.ort", "skinscan.required_operators.config", "manifest.json"):
        assert (tmp_path / "package" / name).is_file(), name
    verify_file(tmp_path / "package", "skinscan.onnx")
    assert metadata["skinscan.preprocess"] == {"size": [96, 128], "resize": "center_crop"}
    assert metadata["skinscan.temperature"] > 0 and 0 <= metadata["skinscan.thresholds"]["malignant"] <= 1
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 128, 3), dtype=np.uint8)
    onnx_probabilities = ort.InferenceSession(str(tmp_path / "package" / "skinscan.onnx")).run(
        ["probabilities"], {"image": images})[0]
    reference = torch_probabilities(load_model(best), images, metadata["skinscan.temperature"])
    np.testing.assert_allclose(onnx_probabilities, reference, atol=1e-4)


def test_resume_after_interruption_matches_an_uninterrupted_run(ham10000_dir, split_csv, tmp_path, monkeypatch):
    reference = train(tiny_config(ham10000_dir, split_csv, tmp_path / "straight", None))

    original = train_module.train_one_epoch

    def interrupted(*args, **kwargs):
        if args[6] == 3:  # the epoch argument: stop the run during its last epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    config = tiny_config(ham10000_dir, split_csv, tmp_path / "resumed", None)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(train_module, "train_one_epoch", original)
    train(config, resume=True)

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 3
    for name, tensor in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert load_model(reference) is not None


def test_resume_without_a_run_is_a_clear_error(ham10000_dir, split_csv, tmp_path):
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        train(tiny_config(ham10000_dir, split_csv, tmp_path / "none", None), resume=True)


def test_a_fresh_run_refuses_a_folder_that_holds_a_run_and_resume_keeps_a_finished_one(
        ham10000_dir, split_csv, tmp_path, capsys):
    config = tiny_config(ham10000_dir, split_csv, tmp_path / "run", None, warmup_epochs=0, epochs=1)
    best = train(config)
    kept = (best.read_bytes(), (tmp_path / "run" / "metrics.jsonl").read_text())
    with pytest.raises(FileExistsError, match="already holds a training run .*--resume"):
        train(config)
    assert train(config, resume=True) == best  # finished: nothing left to train, nothing rewritten
    assert (best.read_bytes(), (tmp_path / "run" / "metrics.jsonl").read_text()) == kept

    from skinscan.cli import main
    assert main(["train", "--data", str(ham10000_dir), "--split", str(split_csv), "--out", str(tmp_path / "run"),
                 "--pretrained", "none", "--max-images", "70"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert best.read_bytes() == kept[0]


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it():
    teacher = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    assert train_module.distillation_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0, abs=1e-6)
    student = torch.zeros_like(teacher, requires_grad=True)
    optimizer = torch.optim.SGD([student], lr=1.0)
    losses = []
    for _ in range(50):
        loss = train_module.distillation_loss(student, teacher, 2.0)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[0] > 0.1 and losses[-1] < 0.01 * losses[0]
    np.testing.assert_array_equal(student.argmax(1).numpy(), teacher.argmax(1).numpy())


def test_distillation_run_caches_teacher_logits_and_refuses_mismatched_teachers(ham10000_dir, split_csv, tmp_path):
    teacher = train(tiny_config(ham10000_dir, split_csv, tmp_path / "teacher", None, warmup_epochs=0, epochs=1))
    config = tiny_config(ham10000_dir, split_csv, tmp_path / "student", None, warmup_epochs=0, epochs=1,
                         teachers=[str(teacher)])
    train(config)
    cache = tmp_path / "student" / "teacher_logits.pt"
    cached = torch.load(cache, weights_only=True)
    assert cached["key"]["teachers"] == [str(teacher)]
    assert cached["logits"].shape == (len(cached["key"]["image_ids"]), 7)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["teachers"] == [str(teacher)]
    assert "teacher logits for" in (tmp_path / "student" / "log.txt").read_text()
    # The cached logits are the teacher's flip-averaged logits on the training images.
    images = train_module.load_split_data(config, parts=("train",))["train"].images
    expected = train_module.predict_logits(load_model(teacher), images, tta=True)
    np.testing.assert_allclose(cached["logits"].numpy(), expected, atol=1e-4)

    mtime = cache.stat().st_mtime_ns
    train(config, resume=True)  # resuming (here: a finished run, so no epochs are left) asks for the targets again
    assert cache.stat().st_mtime_ns == mtime  # reused, not recomputed
    os.utime(teacher)  # a teacher retrained in place: the cache no longer matches and is recomputed
    train(config, resume=True)
    assert cache.stat().st_mtime_ns != mtime

    # `skinscan compare`: each model, with flips, and the ensemble, each against the first (paired).
    comparison = compare_checkpoints([teacher, tmp_path / "student" / "best.pt"], ham10000_dir, split_csv,
                                     part="val", tta=True, n_bootstrap=50, threads=2)
    assert [row["model"].split("/")[-1] for row in comparison["rows"]] == [
        "best.pt", "best.pt + flips", "best.pt", "best.pt + flips", "mean logits of the 2",
        "mean logits of the 2 + flips"]
    first = comparison["rows"][0]
    assert first["difference_from_first"]["balanced_accuracy"]["estimate"] == 0
    assert 0 <= first["balanced_accuracy"]["low"] <= first["balanced_accuracy"]["estimate"] <= 1
    assert "mean logits of the 2 + flips" in format_comparison(comparison)

    with pytest.raises(ValueError, match="--input-size"):
        train(tiny_config(ham10000_dir, split_csv, tmp_path / "other-size", None, warmup_epochs=0, epochs=1,
                          input_size=(64, 96), teachers=[str(teacher)]))


def test_ema_decay_is_a_cap_reached_only_after_its_ramp():
    """The ramp (1+n)/(10+n) governs until it reaches --ema-decay; two caps give the same average until then
    (why --ema-decay changes nothing in a run shorter than `steps_to_full_decay`)."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    slow, fast = (train_module.ExponentialMovingAverage(model, d) for d in (0.998, 0.995))
    assert fast.steps_to_full_decay() == 1790 and slow.steps_to_full_decay() == 4490
    assert fast.decay_at(1789) < 0.995 <= fast.decay_at(1790) == pytest.approx(0.995)
    assert fast.decay_at(100_000) == 0.995 and slow.decay_at(1790) < 0.998
    for _ in range(30):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        slow.update_parameters(model)
        fast.update_parameters(model)
    assert torch.equal(slow.module.weight, fast.module.weight)
    slow.n_averaged.fill_(5000)
    fast.n_averaged.fill_(5000)
    with torch.no_grad():
        model.weight.add_(1.0)
    slow.update_parameters(model)
    fast.update_parameters(model)
    assert not torch.equal(slow.module.weight, fast.module.weight)


def test_mixup_blends_each_image_with_a_partner_reproducibly():
    torch = pytest.importorskip("torch")
    images = torch.rand(6, 3, 4, 5) * 255
    mixed, lam, partner = train_module.mixup(images, 0.2, torch.Generator().manual_seed(1))
    assert 0.0 <= lam <= 1.0
    assert sorted(partner.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[partner])
    again, lam_again, partner_again = train_module.mixup(images, 0.2, torch.Generator().manual_seed(1))
    assert lam_again == lam and torch.equal(partner_again, partner) and torch.equal(again, mixed)
    lams = [train_module.mixup(images, 0.2, torch.Generator().manual_seed(s))[1] for s in range(200)]
    assert np.mean([min(v, 1 - v) < 0.1 for v in lams]) > 0.5  # Beta(0.2, 0.2) piles up near 0 and 1


def test_mixup_run_trains_and_refuses_teachers(ham10000_dir, split_csv, pretrained_v3_small, tmp_path):
    best = train(tiny_config(ham10000_dir, split_csv, tmp_path / "mix", pretrained_v3_small, mixup_alpha=0.4))
    assert load_checkpoint(best)["train_config"]["mixup_alpha"] == 0.4
    with pytest.raises(ValueError, match="--mixup and --teacher"):
        train(tiny_config(ham10000_dir, split_csv, tmp_path / "both", None, mixup_alpha=0.4, teachers=[str(best)]))


def test_lesion_balanced_sampling_keeps_class_shares_and_evens_out_lesions():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    lesions = ["a", "a", "a", "b", "c", "d", "e"]  # class 0: lesion a has three images, b one
    per_image, prior = train_module.sampling_weights(labels, 0.5, 2)
    per_lesion, lesion_prior = train_module.sampling_weights(labels, 0.5, 2, lesions)
    assert torch.equal(prior, lesion_prior)
    for c in (0, 1):  # each class keeps its total weight
        assert per_lesion[labels == c].sum() == pytest.approx(per_image[labels == c].sum().item())
    assert per_lesion[:3].sum() == pytest.approx(per_lesion[3].item())  # lesion a as likely as lesion b
    assert per_image[:3].sum() == pytest.approx(3 * per_image[3].item())  # per image: three times as likely
    assert torch.equal(per_lesion[4:], per_image[4:])  # single-image lesions only: nothing changes


def test_histo_weight_favours_histopathology_within_each_class_only():
    labels = torch.tensor([0, 0, 0, 1, 1])
    histo = torch.tensor([True, False, False, True, True])  # class 1: every image histo-confirmed
    plain, prior = train_module.sampling_weights(labels, 0.5, 2)
    weighted, weighted_prior = train_module.sampling_weights(labels, 0.5, 2, histopathology=histo, histo_weight=3.0)
    assert torch.equal(prior, weighted_prior)
    for c in (0, 1):  # each class keeps its total weight
        assert weighted[labels == c].sum() == pytest.approx(plain[labels == c].sum().item())
    assert weighted[0] == pytest.approx(3 * weighted[1].item())  # histo three times as likely as the others
    assert weighted[0] == pytest.approx(0.6 * weighted[:3].sum().item())  # 3 of the class's 5 parts
    assert torch.allclose(weighted[3:], plain[3:])  # all histo: nothing to favour
    lesion_balanced = train_module.sampling_weights(labels, 0.5, 2, ["a", "a", "b", "c", "d"], histo, 3.0)[0]
    assert lesion_balanced[labels == 0].sum() == pytest.approx(plain[labels == 0].sum().item())


def test_histo_weight_needs_a_dx_type_column(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nL1,I1,nv\n")
    with pytest.raises(DatasetError, match="--histo-weight needs a dx_type column"):
        train_module.histopathology_mask(str(tmp_path), ["I1"])


def test_histo_weight_must_be_a_positive_finite_number(capsys):
    from skinscan.cli import build_parser

    assert build_parser().parse_args(["train", "--histo-weight", "2.5"]).histo_weight == 2.5
    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--histo-weight", bad])
        assert "must be a finite number above 0" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="--histo-weight reads dx_type"):
        train_module.histopathology_mask("/nonexistent-folder", ["I1"])


def test_sampling_options_reach_the_sampler(ham10000_dir, split_csv, pretrained_v3_small, tmp_path, monkeypatch):
    """--lesion-balanced and --histo-weight hand the split's lesions and the metadata's dx_type to the sampler."""
    seen = []
    original = train_module.sampling_weights

    def spy(labels, power, num_classes, lesion_ids=None, histopathology=None, histo_weight=1.0, sources=None):
        seen.append((lesion_ids, histopathology, histo_weight))
        return original(labels, power, num_classes, lesion_ids, histopathology, histo_weight, sources)

    monkeypatch.setattr(train_module, "sampling_weights", spy)
    config = tiny_config(ham10000_dir, split_csv, tmp_path / "run", pretrained_v3_small, epochs=1,
                         lesion_balanced=True, histo_weight=3.0)
    train(config)
    split = read_split(split_csv)
    lesion_of = dict(zip(split.image_id, split.lesion_id, strict=True))
    metadata = read_metadata(ham10000_dir)
    dx_type_of = dict(zip(metadata.image_id, metadata.dx_type, strict=True))
    drawn = [call for call in seen if call[0] is not None]
    assert len(drawn) == 2  # the warm-up and the fine-tuning epoch
    train_ids = train_module.load_split_data(config, parts=("train",))["train"].image_ids
    lesion_ids, histopathology, histo_weight = drawn[0]
    assert lesion_ids == [lesion_of[i] for i in train_ids]
    assert histopathology.tolist() == [dx_type_of[i] == "histo" for i in train_ids]
    assert 0 < sum(histopathology.tolist()) < len(train_ids)  # the tiny split mixes both kinds
    assert histo_weight == 3.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lesion_balanced"] is True and saved["histo_weight"] == 3.0


def test_selection_score_ranks_by_balanced_accuracy_or_its_sum_with_auc():
    late = {"val_balanced_accuracy": 0.76, "val_macro_auc": 0.92}
    earlier = {"val_balanced_accuracy": 0.75, "val_macro_auc": 0.94}
    score = train_module.selection_score
    assert score(late, "balanced_accuracy") > score(earlier, "balanced_accuracy")
    assert score(late, "balanced_accuracy_plus_auc") < score(earlier, "balanced_accuracy_plus_auc")
    undefined_auc = {"val_balanced_accuracy": 0.5, "val_macro_auc": float("nan")}
    assert score(undefined_auc, "balanced_accuracy_plus_auc") == 0.5
    with pytest.raises(ValueError, match="unknown selection rule 'auc'"):
        score(late, "auc")


@pytest.mark.parametrize("rule, kept_epoch", [("balanced_accuracy", 2), ("balanced_accuracy_plus_auc", 3)])
def test_best_checkpoint_follows_the_selection_rule(ham10000_dir, split_csv, tmp_path, monkeypatch, rule, kept_epoch):
    scripted = iter([(0.50, 0.90), (0.60, 0.80), (0.58, 0.95)])  # epoch 2 wins on bal.acc, epoch 3 on the sum

    def scripted_metrics(labels, logits):
        balanced_accuracy, auc = next(scripted)
        return {"val_balanced_accuracy": balanced_accuracy, "val_macro_auc": auc, "val_accuracy": 0.5}

    monkeypatch.setattr(train_module, "validation_metrics", scripted_metrics)
    best = train(tiny_config(ham10000_dir, split_csv, tmp_path / "run", None, select=rule))
    assert load_checkpoint(best)["epoch_metrics"]["epoch"] == kept_epoch
    assert f"best epoch {kept_epoch} (selected on {rule})" in (tmp_path / "run" / "log.txt").read_text()


def test_an_unknown_selection_rule_fails_before_any_work(ham10000_dir, split_csv, tmp_path):
    with pytest.raises(ValueError, match="unknown selection rule"):
        train(tiny_config(ham10000_dir, split_csv, tmp_path / "run", None, select="auc"))
    assert not (tmp_path / "run").exists()
