"""Quantization-aware fine-tuning: fake quantization in, weights snapped to the int8 grid out."""

import pytest

torch = pytest.importorskip("torch", reason="QAT needs the `train` extra (torch)")

from skinscan.factory.model import create_model  # noqa: E402
from skinscan.factory.qat import attach_fake_quantization, detach_fake_quantization  # noqa: E402


def test_fake_quantization_is_removed_and_weights_land_on_the_int8_grid():
    model = create_model("mobilenet_v3_small").train()
    handles = attach_fake_quantization(model)
    assert len(handles) > 50
    x = torch.rand(2, 3, 64, 64) * 255
    model(x).sum().backward()  # the straight-through estimator lets gradients reach the float weights
    assert model.net.features[0][0].parametrizations.weight.original.grad is not None
    detach_fake_quantization(model, handles)
    assert not any(m._forward_hooks for m in model.modules())
    weight = model.net.features[1].block[0][0].weight.detach().reshape(16, -1)  # a depthwise conv
    scale = weight.abs().amax(1, keepdim=True) / 127
    steps = weight / scale
    torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)
    assert "parametrizations" not in "".join(model.state_dict())


def test_simulated_int8_changes_outputs_only_slightly():
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small").eval()
    torch.nn.init.normal_(model.net.classifier[-1].weight, std=0.5)
    x = torch.rand(4, 3, 96, 96) * 255
    with torch.no_grad():
        reference = model(x)
        handles = attach_fake_quantization(model)
        model.train()
        model(x)  # one pass to set the activation ranges
        model.eval()
        simulated = model(x)
    detach_fake_quantization(model, handles)
    assert not torch.equal(simulated, reference)
    assert (simulated - reference).abs().mean() < 0.2 * reference.abs().mean() + 0.05
