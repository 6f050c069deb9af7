"""Training that learns dermoscopy, not the source (issue 23, point 3): the resolution and vignette augmentations,
class x source balanced sampling, their options, and that a run stores and uses them."""

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from skinscan.cli import build_parser  # noqa: E402
from skinscan.factory import train as train_module  # noqa: E402
from skinscan.factory.augment import AugmentConfig, add_vignette, augment_batch, degrade_resolution  # noqa: E402
from skinscan.factory.data import DatasetError, read_split  # noqa: E402
from skinscan.factory.train import TrainConfig, train  # noqa: E402


def noise_batch(n=6, height=126, width=168, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between horizontal neighbours, per image: large for sharp detail, ~0 for blur."""
    return (images[..., 1:] - images[..., :-1]).pow(2).mean(dim=(1, 2, 3))


def test_degrade_keeps_shape_and_dtype_and_removes_high_frequencies():
    images = noise_batch()
    config = AugmentConfig(degrade_prob=1.0, degrade_size=84)
    out = degrade_resolution(images, config, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert (high_frequency_energy(out) < 0.25 * high_frequency_energy(images)).all()
    assert out.mean().item() == pytest.approx(images.mean().item(), rel=0.02)  # blurred, not darkened


def test_degrade_skips_images_already_at_low_resolution_and_sizes_at_or_below_the_frame():
    images = noise_batch(n=4)
    low = torch.tensor([True, False, True, False])
    out = degrade_resolution(images, AugmentConfig(degrade_prob=1.0), torch.Generator().manual_seed(1), low)
    assert torch.equal(out[low], images[low])
    assert not torch.equal(out[~low], images[~low])
    small = noise_batch(n=2, height=64, width=84)  # an input already smaller than 84 px: nothing to degrade
    assert torch.equal(degrade_resolution(small, AugmentConfig(degrade_prob=1.0), torch.Generator()), small)


def test_degrade_probability_is_the_share_of_images_degraded():
    images = noise_batch(n=400, height=32, width=40)
    out = degrade_resolution(images, AugmentConfig(degrade_prob=0.3, degrade_size=16),
                             torch.Generator().manual_seed(2))
    changed = (out != images).flatten(1).any(1).float().mean().item()
    assert 0.22 < changed < 0.38


def test_vignette_darkens_the_corners_and_not_the_centre():
    images = torch.full((8, 3, 126, 168), 200.0)
    out = add_vignette(images, AugmentConfig(vignette_prob=1.0), torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == images.dtype
    corners = torch.stack([out[..., 0, 0], out[..., 0, -1], out[..., -1, 0], out[..., -1, -1]], -1)
    assert (corners < 60).all()  # every corner of every image goes dark
    assert torch.allclose(out[..., 53:73, 74:94], images[..., 53:73, 74:94], atol=1.0)  # the centre stays
    assert (out <= images + 1e-4).all()  # it only darkens


def test_probability_zero_is_the_identity_and_draws_nothing():
    images = noise_batch()
    for function in (degrade_resolution, add_vignette):
        assert torch.equal(function(images, AugmentConfig(), torch.Generator().manual_seed(0)), images)
    batch = torch.randint(0, 256, (5, 60, 80, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    before = augment_batch(batch, AugmentConfig(), torch.Generator().manual_seed(5))
    after = augment_batch(batch, AugmentConfig(degrade_prob=0.0, vignette_prob=0.0), torch.Generator().manual_seed(5),
                          low_resolution=torch.zeros(5, dtype=torch.bool))
    assert torch.equal(before, after)  # a recipe without them replays the same random draws as before


def test_augment_batch_with_both_keeps_its_contract():
    batch = torch.randint(0, 256, (4, 60, 80, 3), dtype=torch.uint8)
    out = augment_batch(batch, AugmentConfig(degrade_prob=1.0, degrade_size=20, vignette_prob=1.0),
                        torch.Generator().manual_seed(0), low_resolution=torch.tensor([True, False, False, True]))
    assert out.shape == (4, 3, 60, 80) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 255


def cell_totals(weights, labels, sources):
    frame = pd.DataFrame({"w": weights.numpy(), "c": labels.numpy(), "s": sources})
    return frame.groupby(["c", "s"]).w.sum()


def test_source_balance_gives_each_class_source_cell_an_equal_share_of_its_class():
    # class 0: source a has 6 images, b 2; class 1: a 1, b 3; class 2 only in a.
    labels = torch.tensor([0] * 8 + [1] * 4 + [2] * 2)
    sources = ["a"] * 6 + ["b"] * 2 + ["a"] + ["b"] * 3 + ["a"] * 2
    plain, prior = train_module.sampling_weights(labels, 0.5, 3)
    balanced, balanced_prior = train_module.sampling_weights(labels, 0.5, 3, sources=sources)
    assert torch.equal(prior, balanced_prior)  # the class power rule and so the logit adjustment are unchanged
    for c in range(3):  # each class keeps its total weight
        assert balanced[labels == c].sum() == pytest.approx(plain[labels == c].sum().item())
    cells = cell_totals(balanced, labels, sources)
    assert cells[(0, "a")] == pytest.approx(cells[(0, "b")])
    assert cells[(1, "a")] == pytest.approx(cells[(1, "b")])
    assert cells[(2, "a")] == pytest.approx(plain[labels == 2].sum().item())  # a one-source class keeps it all
    assert balanced[6] == pytest.approx(3 * balanced[0].item())  # within a cell, images stay equal


def test_source_balance_composes_with_lesion_balance():
    labels = torch.tensor([0, 0, 0, 0, 0])
    sources = ["a", "a", "a", "b", "b"]
    lesions = ["x", "x", "y", "z", "w"]  # in source a, lesion x has two images and y one
    weights, _ = train_module.sampling_weights(labels, 0.5, 1, lesions, sources=sources)
    cells = cell_totals(weights, labels, sources)
    assert cells[(0, "a")] == pytest.approx(cells[(0, "b")])
    assert weights[:2].sum() == pytest.approx(weights[2].item())  # lesion x as likely as lesion y


def test_source_balance_needs_a_source_column(tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("image_id,lesion_id,dx,split\nI1,L1,nv,train\n")
    with pytest.raises(DatasetError, match="--source-balance needs a 'source' column .*skinscan data split --source"):
        train_module.require_source_column(read_split(split), split)
    config = TrainConfig(data_dir=str(tmp_path), split_csv=str(split), out_dir=str(tmp_path / "run"),
                         source_balanced=True)
    with pytest.raises(DatasetError, match="--source-balance"):  # before any decoding or model building
        train(config)
    split.write_text("image_id,lesion_id,dx,split,source\nI1,L1,nv,train,\n")
    with pytest.raises(DatasetError, match="some of its rows have none"):
        train_module.require_source_column(read_split(split), split)


def test_the_options_reach_the_config_and_are_checked(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config, resume=False: seen.setdefault("config", config))
    from skinscan.cli import main

    main(["train", "--split", "s.csv", "--out", "runs/x", "--source-balance", "--degrade-prob", "0.3",
          "--degrade-size", "64", "--vignette-prob", "0.2", "--epoch-images", "6400"])
    config = seen["config"]
    assert config.source_balanced is True and config.epoch_images == 6400
    assert (config.augment.degrade_prob, config.augment.degrade_size, config.augment.vignette_prob) == (0.3, 64, 0.2)
    restored = TrainConfig.from_json(json.loads(json.dumps(config.to_json())))  # what --resume reads back
    assert restored == config
    defaults = build_parser().parse_args(["train"])
    assert (defaults.source_balance, defaults.degrade_prob, defaults.vignette_prob, defaults.epoch_images) == \
        (False, 0.0, 0.0, 0)
    for option, bad, message in (("--degrade-prob", "1.5", "probability between 0 and 1"),
                                 ("--degrade-prob", "-0.1", "probability between 0 and 1"),
                                 ("--vignette-prob", "x", "probability between 0 and 1"),
                                 ("--degrade-size", "0", "must be at least 1"),
                                 ("--epoch-images", "-5", "must be at least 1")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", option, bad])
        assert message in capsys.readouterr().err


def test_a_config_from_before_these_options_resumes_with_them_off():
    old = TrainConfig(data_dir="d", split_csv="s", out_dir="o").to_json()
    for key in ("source_balanced", "epoch_images"):
        del old[key]
    for key in ("degrade_prob", "degrade_size", "vignette_prob"):
        del old["augment"][key]
    restored = TrainConfig.from_json(old)
    assert restored.source_balanced is False and restored.epoch_images == 0
    assert restored.augment == AugmentConfig()


@pytest.mark.slow
def test_a_pooled_run_hands_sources_and_resolutions_to_the_sampler_and_the_augmentation(
        ham10000_dir, split_csv, tmp_path, monkeypatch):
    """A tiny run on real images, with two made-up sources: the sampler gets each train image's source, the
    augmentation each one's low-resolution flag, and an epoch has --epoch-images samples."""
    split = read_split(split_csv)
    split["source"] = ["even" if int(lesion[-1]) % 2 == 0 else "odd" for lesion in split.lesion_id]
    pooled = tmp_path / "pooled.csv"
    split.to_csv(pooled, index=False)
    from skinscan.factory.data import as_source
    from skinscan.factory.sources import NamedSource, write_sources

    write_sources([NamedSource(name, as_source(ham10000_dir)) for name in ("even", "odd")], pooled)
    seen_sources, seen_low, batches = [], [], []
    original_weights, original_augment = train_module.sampling_weights, train_module.augment_batch

    def weights_spy(*args, **kwargs):
        seen_sources.append(args[6] if len(args) > 6 else kwargs.get("sources"))
        return original_weights(*args, **kwargs)

    def augment_spy(images, config, generator, low_resolution=None):
        seen_low.append(low_resolution)
        batches.append(len(images))
        return original_augment(images, config, generator, low_resolution)

    monkeypatch.setattr(train_module, "sampling_weights", weights_spy)
    monkeypatch.setattr(train_module, "augment_batch", augment_spy)
    monkeypatch.setattr(train_module, "native_short_sides",  # pretend every third image is an 84-px one
                        lambda paths: np.array([84 if i % 3 == 0 else 150 for i in range(len(paths))]))
    config = TrainConfig(data_dir=str(ham10000_dir), split_csv=str(pooled), out_dir=str(tmp_path / "run"),
                         pretrained=None, input_size=(64, 84), warmup_epochs=0, epochs=1, batch_size=8,
                         warmup_steps=2, max_images=70, threads=1, seed=1, source_balanced=True, epoch_images=24,
                         augment=AugmentConfig(degrade_prob=0.5, vignette_prob=0.5))
    train(config)
    train_ids = train_module.load_split_data(config, parts=("train",))["train"].image_ids
    source_of = dict(zip(split.image_id, split.source, strict=True))
    drawn = [s for s in seen_sources if s is not None]
    assert drawn and drawn[0] == [source_of[i] for i in train_ids]
    assert len(batches) == 3  # 24 sampled images in batches of 8
    assert all(low is not None and low.dtype == torch.bool for low in seen_low)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["source_balanced"] is True and saved["augment"]["degrade_prob"] == 0.5
