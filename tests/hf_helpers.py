"""Random weights for parity checks against transformers: init values (LayerNorm 1/0, zero biases) would hide
a wrong name mapping, so every weight is drawn at random on both sides."""

import jax
import numpy as np
import torch


def randomize_torch(model, seed=0):
  """Every weight of an HF model random; ties re-applied; eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.2)
  model.tie_weights()
  return model.eval()


def perturb_params(params, seed=1, scale=0.1):
  """Flax params with Gaussian noise on every leaf, as numpy arrays (drawn on the host: jax.random op by op compiles
  a program for each leaf's shape)."""
  rng = np.random.default_rng(seed)
  def perturb(x):
    x = np.asarray(x)
    return (x + scale * rng.standard_normal(x.shape)).astype(x.dtype)
  return jax.tree_util.tree_map(perturb, params)


def refuse_token_type_ids(monkeypatch, hf_cls) -> None:
  """Makes hf_cls.forward refuse token_type_ids, as DistilBERT's classes do in transformers 4.x (which pyproject
  allows), for checks that must call each family's classes with the inputs they take."""
  forward = hf_cls.forward

  def forward_as_in_transformers_4(self, *args, **kwargs):
    if "token_type_ids" in kwargs:
      raise TypeError("forward() got an unexpected keyword argument 'token_type_ids'")
    return forward(self, *args, **kwargs)

  monkeypatch.setattr(hf_cls, "forward", forward_as_in_transformers_4)
