"""Stage 10: bidirectional Mamba, for tasks that label every token of a whole sequence.

Notebook: ``notebooks/10_recall_and_hybrids.ipynb``. Paper: Zhu et al. (2024), *Vision Mamba:
Efficient Visual Representation Learning with Bidirectional State Space Model*, Section 3.3 and
Algorithm 1 (the Vim block).

A Mamba layer is causal: the output at position t is computed from tokens 0 … t. That is what a
language model needs, but a labelling task (which image patch is what, which token is a name)
may need the tokens *after* t too. The Vim block runs the selective scan twice, once forwards
and once over the reversed sequence, and adds the two::

    h = RMSNorm(x)                                   (b, l, D)
    x, z = in_proj(h)                                (b, l, E) each; shared by both directions
    y_fwd = SSM_fwd(SiLU(conv_fwd(x)))               reads 0 … t
    y_bwd = flip(SSM_bwd(SiLU(conv_bwd(flip(x)))))   reads t … l-1  (flip = reverse the time axis)
    out = x + out_proj((y_fwd + y_bwd) ⊙ SiLU(z))    out_proj shared

Each direction has its own convolution and its own S6 parameters (x_proj, dt_proj, A, D). Here
the two directions are two :class:`ssm_tutor.mamba.MambaMixer` whose ``in_proj`` and
``out_proj`` are the *same* modules, so (out_proj and the gate being linear in y) the sum of the
two mixers' outputs is exactly Algorithm 1's block:

    mixer_fwd(h) + flip(mixer_bwd(flip(h)))

:class:`BiMamba` stacks these blocks on an embedding and ends in a per-token classifier;
``BiMamba(config, num_labels, bidirectional=False)`` keeps only the forward mixers, the causal
model with otherwise the same layers, to compare against.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ssm_tutor.checkpoint import CheckpointError, load_state, read_config, read_tensors, resolve_directory, write_checkpoint
from ssm_tutor.mamba import MambaConfig, MambaMixer, RMSNorm
from ssm_tutor.validate import positive_int, check_token_ids

__all__ = ["BiMambaBlock", "BiMamba", "flip_and_combine"]


def flip_and_combine(mixer_fwd: nn.Module, mixer_bwd: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The two directions of a Vim block, added: h (b, l, D) -> (b, l, D).

    mixer_fwd reads the sequence as it comes; mixer_bwd reads it reversed in time (dimension 1),
    and its output is reversed back so that position t of both outputs describes token t.
    """
    forwards = mixer_fwd(h)                                     # position t has seen 0 … t
    backwards = mixer_bwd(h.flip(1)).flip(1)                    # position t has seen t … l-1
    return forwards + backwards


class BiMambaBlock(nn.Module):
    """Pre-norm residual block with a forward and a backward mixer: x <- x + mixers(RMSNorm(x)).

    ``backward`` is None for the causal variant. In the bidirectional one its ``in_proj`` and
    ``out_proj`` are the forward mixer's modules (shared, as in Vim)."""

    def __init__(self, config: MambaConfig, bidirectional: bool = True):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.forward_mixer = MambaMixer(config)
        self.backward_mixer = None
        if bidirectional:
            self.backward_mixer = MambaMixer(config)
            self.backward_mixer.in_proj = self.forward_mixer.in_proj      # shared: x, z for both directions
            self.backward_mixer.out_proj = self.forward_mixer.out_proj    # shared output projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # x: (b, l, D)
        h = self.norm(x)
        if self.backward_mixer is None:
            return x + self.forward_mixer(h)
        return x + flip_and_combine(self.forward_mixer, self.backward_mixer, h)


class BiMamba(nn.Module):
    """A token classifier of bidirectional Mamba blocks (Vision-Mamba style).

    ``forward(input_ids (b, l)) -> logits (b, l, num_labels)``: embeddings, ``num_hidden_layers``
    :class:`BiMambaBlock`, a final RMSNorm and a linear head per token. The sizes come from the
    :class:`MambaConfig` (``vocab_size``, ``hidden_size``, ``state_size``, …).
    ``bidirectional=False`` builds the causal twin (forward mixers only).
    """

    model_type = "ssm_tutor_bimamba"

    def __init__(self, config: MambaConfig, num_labels: int, bidirectional: bool = True):
        super().__init__()
        positive_int("num_labels", num_labels)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
        self.config, self.num_labels, self.bidirectional = config, num_labels, bidirectional
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(BiMambaBlock(config, bidirectional) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        nn.init.normal_(self.embeddings.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_token_ids(input_ids, self.config.vocab_size, device=self.embeddings.weight.device)
        x = self.embeddings(input_ids)                           # (b, l, D)
        for layer in self.layers:
            x = layer(x)                                         # (b, l, D)
        return self.classifier(self.norm_f(x))                   # (b, l, num_labels)

    # ---- checkpoints (ssm_tutor.checkpoint) --------------------------------------------------
    def _tied(self) -> dict:
        """The backward mixer's in_proj and out_proj are the forward mixer's: stored once."""
        if not self.bidirectional:
            return {}
        return {f"layers.{i}.backward_mixer.{name}.{p}": f"layers.{i}.forward_mixer.{name}.{p}"
                for i in range(len(self.layers)) for name in ("in_proj", "out_proj")
                for p, _ in getattr(self.layers[i].forward_mixer, name).named_parameters()}

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` (the :class:`MambaConfig`, ``model_type`` "ssm_tutor_bimamba",
        ``num_labels``, ``bidirectional``) and ``model.safetensors`` into ``path``, atomically."""
        cfg = self.config.to_dict()
        cfg.update(model_type=self.model_type, architectures=["BiMamba"], num_labels=self.num_labels,
                   bidirectional=self.bidirectional)
        tied = self._tied()
        write_checkpoint(path, cfg, {k: v for k, v in self.state_dict().items() if k not in tied})

    @classmethod
    def from_pretrained(cls, path) -> "BiMamba":
        """Load a checkpoint written by :meth:`save_pretrained`; every missing, unexpected or
        mis-shaped weight is named (:class:`ssm_tutor.checkpoint.CheckpointError`)."""
        directory = resolve_directory(path)
        config = read_config(directory)
        if config.pop("model_type", None) != cls.model_type:
            raise CheckpointError(f"{directory / 'config.json'} is not a BiMamba checkpoint "
                                  f"(model_type must be {cls.model_type!r})")
        num_labels, bidirectional = config.pop("num_labels", None), config.pop("bidirectional", None)
        if num_labels is None or not isinstance(bidirectional, bool):
            raise CheckpointError(f"{directory / 'config.json'} lacks num_labels or bidirectional")
        model = cls(MambaConfig.from_dict(config), num_labels, bidirectional)
        load_state(model, read_tensors(directory), what="BiMamba", tied=model._tied())
        return model.eval()
