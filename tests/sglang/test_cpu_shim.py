"""The CPU shim's stand-ins against the documented semantics of what they replace (torchvision's transforms,
sgl_kernel's ``copy_all_layer_kv_cache_cpu``). Run where the shim is active (the SGLang CPU environment)."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backends.sglang import cpu_shim  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_shim.active(), reason="the CPU shim is active only on machines without CUDA")


def test_sglang_resolves_the_shim_modules():
    import sgl_kernel
    import torchvision

    assert cpu_shim._is_shim(torchvision) and cpu_shim._is_shim(sgl_kernel)


def test_to_tensor_scales_uint8_hwc_to_float_chw_in_unit_range():
    from PIL import Image
    from torchvision.transforms import ToTensor

    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    out = ToTensor()(Image.fromarray(array))
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    assert out[1, 0, 2].item() == pytest.approx(array[0, 2, 1] / 255)


def test_normalize_is_per_channel_mean_and_std():
    from torchvision.transforms import Normalize

    x = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2)
    out = Normalize(mean=(1.0, 2.0), std=(2.0, 4.0))(x)
    torch.testing.assert_close(out[0], (x[0] - 1) / 2)
    torch.testing.assert_close(out[1], (x[1] - 2) / 4)
    assert torch.equal(x, torch.arange(8, dtype=torch.float32).reshape(2, 2, 2))  # not in place by default
    with pytest.raises(ValueError, match="std evaluated to zero"):
        Normalize(mean=(0.0,), std=(0.0,))(x[:1])


def test_resize_keeps_the_aspect_ratio_for_an_int_size():
    from PIL import Image
    from torchvision.transforms import InterpolationMode, Resize
    from torchvision.transforms import functional as F

    image = Image.new("RGB", (40, 20))  # width 40, height 20
    assert Resize(10, interpolation=InterpolationMode.BICUBIC)(image).size == (20, 10)
    assert F.resize(torch.zeros(3, 20, 40), [5, 7]).shape == (3, 5, 7)
    constant = torch.full((3, 8, 8), 0.25)
    torch.testing.assert_close(F.resize(constant, 4), torch.full((3, 4, 4), 0.25))  # constant stays constant


def test_compose_and_lambda_apply_in_order():
    from torchvision.transforms import Compose, Lambda

    assert Compose([Lambda(lambda x: x + 1), Lambda(lambda x: x * 10)])(1) == 20


def test_unprovided_names_import_but_say_what_is_missing_when_called():
    from torchvision.transforms import RandomCrop

    with pytest.raises(NotImplementedError, match="CPU shim"):
        RandomCrop(4)


def test_copy_all_layer_kv_cache_copies_rows_in_every_buffer_reading_sources_first():
    buffers = [torch.arange(6 * 4, dtype=torch.float32).reshape(6, 4), torch.arange(6 * 2, dtype=torch.int64)
               .reshape(6, 2) * -1]
    originals = [b.clone() for b in buffers]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in buffers], dtype=torch.int64)
    src, tgt = torch.tensor([1, 2, 3]), torch.tensor([2, 3, 5])  # overlapping: row 2 is read and written
    from sgl_kernel import copy_all_layer_kv_cache_cpu

    copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    for buf, orig in zip(buffers, originals):
        want = orig.clone()
        want[tgt] = orig[src]
        assert torch.equal(buf, want)


def test_pil_to_tensor_keeps_dtype_and_values():
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    array = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    out = pil_to_tensor(Image.fromarray(array))
    assert out.dtype == torch.uint8 and out.shape == (3, 4, 5)
    assert torch.equal(out, torch.from_numpy(array).permute(2, 0, 1))


def test_transformers_image_utilities_import_with_the_shim():
    from transformers import AutoProcessor  # noqa: F401 - SGLang's multimodal configs import it
    from transformers.image_utils import load_image  # noqa: F401
