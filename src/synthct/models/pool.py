"""Image history buffer (Shrivastava et al. 2017) as used by CycleGAN: the discriminator sees a
mix of the newest fakes and fakes from earlier steps, which damps oscillation."""

from __future__ import annotations

import torch
from torch import Tensor


class ImagePool:
    """Stores up to ``size`` generated images. Until full, every image is stored and returned as
    is; afterwards each image is returned with p = 0.5, or swapped with a random stored one.
    ``size`` 0 disables the pool. Random draws come from a private torch.Generator seeded by
    ``seed``, and its state travels in ``state_dict`` together with the stored images, so a
    resumed run draws exactly what the uninterrupted run would have drawn."""

    def __init__(self, size: int = 50, seed: int = 0):
        if size < 0:
            raise ValueError(f"ImagePool size must be >= 0, got {size}")
        self.size = size
        self.images: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        if self.images and self.images[0].shape != images.shape[1:]:
            # Progressive resizing changed the image size: older fakes no longer fit a batch.
            self.images = []
        returned = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                returned.append(image)
            elif torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(self.size, (), generator=self.generator))
                returned.append(self.images[index].to(image))
                self.images[index] = image.clone()
            else:
                returned.append(image)
        return torch.stack(returned)

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (safetensors-ready): stored images (n, C, H, W) and the RNG state."""
        images = torch.stack(self.images) if self.images else torch.empty(0)
        return {"images": images, "rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        images = state["images"]
        if images.ndim != 4 and images.numel() != 0:
            raise ValueError(f"ImagePool state: images must be (n, C, H, W), got {tuple(images.shape)}")
        if len(images) > self.size:
            raise ValueError(f"ImagePool state holds {len(images)} images, more than its size {self.size}")
        self.images = [image.clone() for image in images] if images.numel() else []
        self.generator.set_state(state["rng_state"].to(torch.uint8).cpu())
