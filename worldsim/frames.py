"""Operations on uint8 frames (N, H, W, 3) that the envs and the data converters share."""

from __future__ import annotations

import numpy as np

RESIZE_CHUNK = 64  # frames resized per torch call: bounds the float32 working memory


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 frames (N, H, W, 3) -> (N, h, w, 3) with antialiased bilinear filtering.

    Antialiasing makes downscaling average over each output pixel's footprint (like an area
    resize) rather than sample a few source pixels. `size=None` or the same size is a no-op."""
    # Float frames in [0, 1] would come back as uint8 0s and 1s, and one frame without its batch
    # axis as a torch error about permute: say what is expected instead.
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    import torch  # here, so that the envs import without torch until a frame needs resizing
    import torch.nn.functional as F

    h, w = int(size[0]), int(size[1])
    out = np.empty((frames.shape[0], h, w, 3), np.uint8)  # (N, h, w, 3)
    with torch.no_grad():
        for s in range(0, frames.shape[0], RESIZE_CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + RESIZE_CHUNK]))
            x = x.permute(0, 3, 1, 2).float()  # (n, 3, H, W)
            y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                              align_corners=False)  # (n, 3, h, w)
            y = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (n, h, w, 3)
            out[s:s + RESIZE_CHUNK] = y.numpy()
    return out
