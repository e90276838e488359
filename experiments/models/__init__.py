"""Flax NNX models for the weight-decay studies, each with or without normalisation.

``norm`` selects what follows every hidden linear / conv layer:

* ``"batch"`` — BatchNorm with learnable scale and shift;
* ``"batch_noaffine"`` — BatchNorm without scale/shift, as in Zhang et al. (2019): every conv (or linear) before a
  norm is then exactly scale-invariant, ``f(c * w) = f(w)`` for ``c > 0`` in train mode, which is what makes weight
  decay act through the effective learning rate;
* ``"layer"`` — LayerNorm over the feature/channel axis (per position for convs), also scale-invariant in the
  preceding layer's weights;
* ``None`` — no normalisation; the hidden layers then carry biases.

Layers followed by a norm have ``use_bias=False`` (the norm's mean subtraction would cancel a bias). BatchNorm uses
batch statistics when ``train=True`` and running averages (momentum 0.9, as in the PyTorch CIFAR ResNets) when
``train=False``. The final layer is always the attribute ``classifier``, so ``include("classifier")`` /
``exclude("classifier")`` masks select it. Every model takes ``linear_cls`` / ``conv_cls`` so that registered
drop-in subclasses (e.g. K-FAC layers) replace ``nnx.Linear`` / ``nnx.Conv`` everywhere.

References:
  He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016 (CIFAR ResNet-20/32).
  Simonyan, Zisserman, *Very Deep Convolutional Networks for Large-Scale Image Recognition*, ICLR 2015 (VGG).
  Zhang, Wang, Xu, Grosse, *Three Mechanisms of Weight Decay Regularization*, ICLR 2019 (arXiv:1810.12281).
  van Laarhoven, *L2 Regularization versus Batch and Weight Normalization*, 2017 (arXiv:1706.05350).
  Vaswani et al., *Attention Is All You Need*, NeurIPS 2017; Radford et al., *Language Models are Unsupervised
  Multitask Learners*, 2019 (pre-LN decoder).
  Power, Burda, Edwards, Babuschkin, Misra, *Grokking: Generalization Beyond Overfitting on Small Algorithmic
  Datasets*, 2022 (arXiv:2201.02177).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["NAMES", "NORMS", "MLP", "ResNet1D", "CifarResNet", "VGG", "Transformer", "build"]

NAMES = ("mlp", "resnet1d", "resnet20", "resnet32", "vgg", "transformer")
# Models over integer token sequences (the others read float images / vectors).
SEQUENCE_MODELS = ("transformer",)
NORMS = (None, "batch", "batch_noaffine", "layer")
BATCHNORM_MOMENTUM = 0.9


def _check_norm(norm: str | None) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")


class Norm(nnx.Module):
  """The normalisation chosen by ``norm`` over the last (feature/channel) axis; identity for ``None``."""

  def __init__(self, num_features: int, norm: str | None, *, rngs: nnx.Rngs):
    _check_norm(norm)
    self.kind = norm
    if norm in ("batch", "batch_noaffine"):
      affine = norm == "batch"
      self.layer = nnx.BatchNorm(num_features, momentum=BATCHNORM_MOMENTUM, use_scale=affine, use_bias=affine,
                                 rngs=rngs)
    elif norm == "layer":
      self.layer = nnx.LayerNorm(num_features, rngs=rngs)
    else:
      self.layer = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.layer is None:
      return x
    if isinstance(self.layer, nnx.BatchNorm):
      return self.layer(x, use_running_average=not train)
    return self.layer(x)


class MLP(nnx.Module):
  """Multilayer perceptron: ``[Linear -> Norm -> ReLU] * len(hidden) -> classifier``.

  Inputs of any shape ``(N, ...)`` are flattened to ``(N, in_features)``.

  Args:
    in_features: flattened input size (64 for digits, 40 for mnist1d).
    num_classes: output size.
    rngs: parameter RNGs.
    hidden: hidden layer widths (default ``(256, 256)``).
    norm: see module docstring.
    linear_cls: linear layer class.
    conv_cls: ignored (no convs); accepted for a uniform ``build`` interface.
  """

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs, hidden: Sequence[int] = (256, 256),
               norm: str | None = "batch", linear_cls: type[nnx.Linear] = nnx.Linear,
               conv_cls: type[nnx.Conv] = nnx.Conv):
    del conv_cls  # Accepted so every model takes the same layer-class arguments; an MLP has no convs.
    _check_norm(norm)
    widths = [in_features, *hidden]
    self.in_features = in_features
    self.layers = nnx.List([linear_cls(a, b, use_bias=norm is None, rngs=rngs) for a, b in zip(widths, widths[1:])])
    self.norms = nnx.List([Norm(b, norm, rngs=rngs) for b in hidden])
    self.classifier = linear_cls(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != self.in_features:
      raise ValueError(f"MLP expects {self.in_features} input features per example, got {x.shape[1]}.")
    for layer, norm in zip(self.layers, self.norms):
      x = nnx.relu(norm(layer(x), train=train))
    return self.classifier(x)


class ResidualBlock(nnx.Module):
  """Basic residual block ``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))`` for 1-D or 2-D inputs.

  The shortcut is the identity, or a strided 1x1 conv (+ norm) when the shape changes (He et al.'s option B).
  """

  def __init__(self, in_channels: int, out_channels: int, *, stride: int, kernel_size: int, ndim: int,
               norm: str | None, rngs: nnx.Rngs, conv_cls: type[nnx.Conv] = nnx.Conv):
    kernel, strides, use_bias = (kernel_size,) * ndim, (stride,) * ndim, norm is None
    self.conv1 = conv_cls(in_channels, out_channels, kernel, strides, padding="SAME", use_bias=use_bias, rngs=rngs)
    self.norm1 = Norm(out_channels, norm, rngs=rngs)
    self.conv2 = conv_cls(out_channels, out_channels, kernel, padding="SAME", use_bias=use_bias, rngs=rngs)
    self.norm2 = Norm(out_channels, norm, rngs=rngs)
    if stride != 1 or in_channels != out_channels:
      self.shortcut_conv = conv_cls(in_channels, out_channels, (1,) * ndim, strides, padding="SAME",
                                    use_bias=use_bias, rngs=rngs)
      self.shortcut_norm = Norm(out_channels, norm, rngs=rngs)
    else:
      self.shortcut_conv = None
      self.shortcut_norm = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out = nnx.relu(self.norm1(self.conv1(x), train=train))
    out = self.norm2(self.conv2(out), train=train)
    shortcut = x if self.shortcut_conv is None else self.shortcut_norm(self.shortcut_conv(x), train=train)
    return nnx.relu(out + shortcut)


class _ResNet(nnx.Module):
  """Stem conv -> stages of residual blocks (stride 2 from the second stage) -> global average pool -> classifier."""

  def __init__(self, *, ndim: int, in_channels: int, num_classes: int, widths: Sequence[int], blocks_per_stage: int,
               kernel_size: int, norm: str | None, rngs: nnx.Rngs, linear_cls: type[nnx.Linear] = nnx.Linear,
               conv_cls: type[nnx.Conv] = nnx.Conv):
    _check_norm(norm)
    if not widths or blocks_per_stage < 1:
      raise ValueError(f"need at least one stage and one block per stage, got widths={widths!r}, "
                       f"blocks_per_stage={blocks_per_stage!r}.")
    self.ndim = ndim
    self.stem = conv_cls(in_channels, widths[0], (kernel_size,) * ndim, padding="SAME", use_bias=norm is None,
                         rngs=rngs)
    self.stem_norm = Norm(widths[0], norm, rngs=rngs)
    blocks, channels = [], widths[0]
    for stage, width in enumerate(widths):
      for block in range(blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(ResidualBlock(channels, width, stride=stride, kernel_size=kernel_size, ndim=ndim, norm=norm,
                                    rngs=rngs, conv_cls=conv_cls))
        channels = width
    self.blocks = nnx.List(blocks)
    self.classifier = linear_cls(channels, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != self.ndim + 2:
      raise ValueError(f"{type(self).__name__} expects inputs of rank {self.ndim + 2} (batch, spatial..., channels), "
                       f"got shape {tuple(x.shape)}.")
    x = nnx.relu(self.stem_norm(self.stem(x), train=train))
    for block in self.blocks:
      x = block(x, train=train)
    x = jnp.mean(x, axis=tuple(range(1, self.ndim + 1)))
    return self.classifier(x)


class ResNet1D(_ResNet):
  """1-D ResNet for mnist1d sequences ``(N, 40, 1)``.

  Args:
    num_classes: output size.
    rngs: parameter RNGs.
    in_channels: input channels (1 for mnist1d).
    widths: channels per stage (default ``(16, 32, 64)``); stages after the first halve the length.
    blocks_per_stage: residual blocks per stage (default 1).
    kernel_size: conv kernel length (default 5).
    norm, linear_cls, conv_cls: see module docstring.
  """

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
               blocks_per_stage: int = 1, kernel_size: int = 5, norm: str | None = "batch",
               linear_cls: type[nnx.Linear] = nnx.Linear, conv_cls: type[nnx.Conv] = nnx.Conv):
    super().__init__(ndim=1, in_channels=in_channels, num_classes=num_classes, widths=widths,
                     blocks_per_stage=blocks_per_stage, kernel_size=kernel_size, norm=norm, rngs=rngs,
                     linear_cls=linear_cls, conv_cls=conv_cls)


class CifarResNet(_ResNet):
  """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016): 3x3 stem, three stages of ``n`` basic blocks.

  ResNet-20 is ``n = 3``, ResNet-32 is ``n = 5``. The original widths are ``(16, 32, 64)`` (the CPU-friendly default);
  Zhang et al. (2019) ran ResNet-32 with ``widths=(64, 128, 256)`` and ``norm="batch_noaffine"``.

  Args:
    num_classes: output size.
    rngs: parameter RNGs.
    depth: ``6n + 2`` (20, 32, 44, 56, ...).
    in_channels: input channels (3 for RGB).
    widths: channels of the three stages.
    norm, linear_cls, conv_cls: see module docstring.
  """

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, depth: int = 20, in_channels: int = 3,
               widths: Sequence[int] = (16, 32, 64), norm: str | None = "batch",
               linear_cls: type[nnx.Linear] = nnx.Linear, conv_cls: type[nnx.Conv] = nnx.Conv):
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"depth must be 6n + 2 with n >= 1 (e.g. 20, 32), got {depth!r}.")
    super().__init__(ndim=2, in_channels=in_channels, num_classes=num_classes, widths=widths,
                     blocks_per_stage=(depth - 2) // 6, kernel_size=3, norm=norm, rngs=rngs,
                     linear_cls=linear_cls, conv_cls=conv_cls)


class VGG(nnx.Module):
  """VGG-style net: stages of ``[3x3 conv -> Norm -> ReLU] * convs_per_stage -> 2x2 max pool``, global average pool,
  classifier.

  Args:
    num_classes: output size.
    rngs: parameter RNGs.
    in_channels: input channels (3 for RGB, 1 for digits).
    widths: channels per stage (default ``(32, 64, 128)``; VGG-16's CIFAR variant is ``(64, 128, 256, 512, 512)``
      with ``convs_per_stage`` 2-3).
    convs_per_stage: convs before each pool (default 2).
    norm, linear_cls, conv_cls: see module docstring.
  """

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128),
               convs_per_stage: int = 2, norm: str | None = "batch", linear_cls: type[nnx.Linear] = nnx.Linear,
               conv_cls: type[nnx.Conv] = nnx.Conv):
    _check_norm(norm)
    if not widths or convs_per_stage < 1:
      raise ValueError(f"need at least one stage and one conv per stage, got widths={widths!r}, "
                       f"convs_per_stage={convs_per_stage!r}.")
    convs, norms, channels = [], [], in_channels
    for width in widths:
      for _ in range(convs_per_stage):
        convs.append(conv_cls(channels, width, (3, 3), padding="SAME", use_bias=norm is None, rngs=rngs))
        norms.append(Norm(width, norm, rngs=rngs))
        channels = width
    self.convs_per_stage = convs_per_stage
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.classifier = linear_cls(channels, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"VGG expects (N, H, W, C) inputs, got shape {tuple(x.shape)}.")
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = nnx.relu(norm(conv(x), train=train))
      # Pool after each stage while there is room, so tiny inputs (8x8 digits) work with several stages.
      if (i + 1) % self.convs_per_stage == 0 and x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return self.classifier(x)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention in which position ``t`` attends to positions ``<= t`` only.

  ``softmax(q k^T / sqrt(d_head) + M) v`` per head, with ``M[t, s] = -inf`` for ``s > t``; the query, key, value
  and output projections are separate ``linear_cls`` layers, each applied once per call (so each is one K-FAC
  layer).
  """

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, linear_cls: type[nnx.Linear] = nnx.Linear):
    if dim % heads:
      raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}).")
    self.heads = heads
    self.query = linear_cls(dim, dim, use_bias=False, rngs=rngs)
    self.key = linear_cls(dim, dim, use_bias=False, rngs=rngs)
    self.value = linear_cls(dim, dim, use_bias=False, rngs=rngs)
    self.out = linear_cls(dim, dim, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, length, dim = x.shape
    split = lambda y: y.reshape(n, length, self.heads, dim // self.heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("nthd,nshd->nhts", q, k) / jnp.sqrt(jnp.asarray(dim // self.heads, q.dtype))
    causal = jnp.tril(jnp.ones((length, length), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    mixed = jnp.einsum("nhts,nshd->nthd", jax.nn.softmax(scores, axis=-1), v)
    return self.out(mixed.reshape(n, length, dim))


class DecoderBlock(nnx.Module):
  """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + W2 gelu(W1 norm(x))``."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, norm: str | None, rngs: nnx.Rngs,
               linear_cls: type[nnx.Linear] = nnx.Linear):
    self.attn_norm = Norm(dim, norm, rngs=rngs)
    self.attention = CausalSelfAttention(dim, heads, rngs=rngs, linear_cls=linear_cls)
    self.mlp_norm = Norm(dim, norm, rngs=rngs)
    self.mlp_in = linear_cls(dim, mlp_dim, rngs=rngs)
    self.mlp_out = linear_cls(mlp_dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x + self.attention(self.attn_norm(x, train=train))
    return x + self.mlp_out(nnx.gelu(self.mlp_in(self.mlp_norm(x, train=train))))


class Transformer(nnx.Module):
  """Decoder-only transformer over integer token sequences; returns the logits of the last position.

  ``h_0 = E_tok[x] + E_pos[0..T)``, ``depth`` pre-norm :class:`DecoderBlock` s with causal self-attention,
  a final norm, and ``classifier(h[:, -1])``: the answer is read where a language model would predict the next
  token (after ``=`` in ``a ∘ b =``). Inputs are ``(N, T)`` token ids, ``T <= seq_len``; float inputs holding
  integer ids (the harness's shape probe) are cast to int32. Every dense layer is a ``linear_cls``, so K-FAC
  registered layers replace them all; the embeddings are ``nnx.Embed`` lookups (no K-FAC factors).

  Args:
    num_classes: output size (the answer's vocabulary, e.g. ``p`` for ``a ∘ b mod p``).
    rngs: parameter RNGs.
    vocab_size: input vocabulary size (**required**).
    seq_len: longest input sequence (**required**).
    dim: residual width (default 128).
    depth: number of blocks (default 1).
    heads: attention heads (default 4).
    mlp_dim: hidden width of each MLP (default ``4 * dim``).
    norm: ``"layer"`` (default) or ``None``.
    linear_cls: dense layer class.
    conv_cls: ignored (no convs); accepted for a uniform ``build`` interface.
  """

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, vocab_size: int, seq_len: int, dim: int = 128,
               depth: int = 1, heads: int = 4, mlp_dim: int | None = None, norm: str | None = "layer",
               linear_cls: type[nnx.Linear] = nnx.Linear, conv_cls: type[nnx.Conv] = nnx.Conv):
    del conv_cls  # Accepted so every model takes the same layer-class arguments; a transformer has no convs.
    if norm not in (None, "layer"):
      raise ValueError(f"the transformer's norm must be 'layer' or None (BatchNorm over tokens is not "
                       f"supported), got {norm!r}.")
    for argname, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("dim", dim), ("depth", depth),
                           ("heads", heads)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argname} must be a positive int, got {value!r}.")
    self.seq_len = seq_len
    self.vocab_size = vocab_size
    # GPT-2's N(0, 0.02) embeddings: the default variance-scaling init would make them O(1) against the
    # O(1/sqrt(dim)) projections.
    init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Embed(vocab_size, dim, embedding_init=init, rngs=rngs)
    self.position_embed = nnx.Embed(seq_len, dim, embedding_init=init, rngs=rngs)
    self.blocks = nnx.List([DecoderBlock(dim, heads, mlp_dim or 4 * dim, norm=norm, rngs=rngs,
                                         linear_cls=linear_cls) for _ in range(depth)])
    self.final_norm = Norm(dim, norm, rngs=rngs)
    self.classifier = linear_cls(dim, num_classes, rngs=rngs)

  def hidden(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The final-norm hidden states ``(N, T, dim)`` of every position (position ``t`` sees tokens ``<= t``)."""
    if x.ndim != 2:
      raise ValueError(f"Transformer expects (N, T) token ids, got shape {tuple(x.shape)}.")
    if x.shape[1] > self.seq_len:
      raise ValueError(f"Transformer was built for sequences of at most seq_len={self.seq_len} tokens, got "
                       f"{x.shape[1]}.")
    if not jnp.issubdtype(x.dtype, jnp.integer):
      x = x.astype(jnp.int32)
    h = self.token_embed(x) + self.position_embed(jnp.arange(x.shape[1]))[None]
    for block in self.blocks:
      h = block(h, train=train)
    return self.final_norm(h, train=train)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.classifier(self.hidden(x, train=train)[:, -1])


def build(name: str, *, num_classes: int, rngs: nnx.Rngs, norm: str | None = "batch", **kwargs: Any) -> nnx.Module:
  """Builds a model by name; ``model(x, train=...)`` returns logits.

  Per-model keyword arguments (all optional unless stated):

  * ``"mlp"``: ``in_features`` (**required**), ``hidden=(256, 256)``.
  * ``"resnet1d"``: ``in_channels=1``, ``widths=(16, 32, 64)``, ``blocks_per_stage=1``, ``kernel_size=5``.
  * ``"resnet20"`` / ``"resnet32"``: ``in_channels=3``, ``widths=(16, 32, 64)`` (Zhang et al.: ``(64, 128, 256)``).
  * ``"vgg"``: ``in_channels=3``, ``widths=(32, 64, 128)``, ``convs_per_stage=2``.
  * ``"transformer"``: ``vocab_size`` and ``seq_len`` (**required**), ``dim=128``, ``depth=1``, ``heads=4``,
    ``mlp_dim=4 * dim``; ``norm`` ``"layer"`` or ``None``.
  * all: ``linear_cls=nnx.Linear``, ``conv_cls=nnx.Conv`` (drop-in subclasses, e.g. K-FAC-registered layers).

  Args:
    name: one of ``"mlp"``, ``"resnet1d"``, ``"resnet20"``, ``"resnet32"``, ``"vgg"``, ``"transformer"``.
    num_classes: number of output logits.
    rngs: parameter RNGs.
    norm: ``None``, ``"batch"``, ``"batch_noaffine"`` or ``"layer"`` (see module docstring).
    **kwargs: the model's options above.

  Returns:
    An ``nnx.Module`` whose final layer is ``.classifier``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments import models
    >>> model = models.build("resnet20", num_classes=10, rngs=nnx.Rngs(0), norm="batch_noaffine")
    >>> model(jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 10)
  """
  _check_norm(norm)
  if name == "mlp":
    if "in_features" not in kwargs:
      raise ValueError("build('mlp') needs in_features=<flattened input size> (e.g. 64 for digits, 40 for mnist1d).")
    return MLP(num_classes=num_classes, rngs=rngs, norm=norm, **kwargs)
  if name == "resnet1d":
    return ResNet1D(num_classes, rngs=rngs, norm=norm, **kwargs)
  if name in ("resnet20", "resnet32"):
    if "depth" in kwargs:
      raise ValueError(f"{name!r} fixes the depth; drop depth={kwargs['depth']!r} or use CifarResNet directly.")
    return CifarResNet(num_classes, rngs=rngs, depth=int(name[len("resnet"):]), norm=norm, **kwargs)
  if name == "vgg":
    return VGG(num_classes, rngs=rngs, norm=norm, **kwargs)
  if name == "transformer":
    missing = [k for k in ("vocab_size", "seq_len") if k not in kwargs]
    if missing:
      raise ValueError(f"build('transformer') needs {' and '.join(f'{k}=...' for k in missing)} (the token "
                       "vocabulary and the longest sequence, e.g. experiments.data.vocab_size(name)).")
    return Transformer(num_classes, rngs=rngs, norm=norm, **kwargs)
  raise ValueError(f"name must be one of {NAMES}, got {name!r}.")
