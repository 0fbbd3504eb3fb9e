"""Mixture-of-experts LoRA (iLoRA-style) around frozen ``nn.Linear`` layers.

Each wrapped layer computes, for token t of example b with gate vector ``g_{b,t}`` (E,)::

    y = W0 x + scaling * sum_e g_{b,t,e} * B_e A_e dropout(x),        scaling = lora_alpha / r

with E experts of rank ``r_e = r // E``: the total rank ``r`` is split evenly across the experts, as
iLoRA does, so the adapter has as many parameters as one peft LoRA of rank ``r``.

The layer keeps peft's LoRA contract (``peft/tuners/lora/layer.py``): it wraps the frozen
``base_layer``; ``lora_A`` starts kaiming-uniform and ``lora_B`` at zero, so a fresh adapter changes
nothing; ``scaling = lora_alpha / r``; ``merge``/``unmerge`` add and subtract a weight delta.

On the scaling. By default ``r`` in ``lora_alpha / r`` is the *total* rank (MOELoRA's convention), not
the expert rank. iLoRA's code scales by ``lora_alpha / (r / E)``, the expert rank: E times larger;
``per_expert_scaling=True`` gives that. With the default, two consequences, both checked in the tests:

- with all gates equal to 1 the layer is exactly a peft LoRA of rank ``r`` with the same
  ``lora_alpha``, whose ``lora_A``/``lora_B`` are the experts' stacked;
- with a one-hot gate on expert e the layer is exactly a peft LoRA of rank ``r_e`` holding
  ``A_e``/``B_e`` with ``lora_alpha' = lora_alpha * r_e / r = lora_alpha / E`` (so that
  ``lora_alpha' / r_e == lora_alpha / r``).

Gates (softmax weights from the teacher's gating network) are an input of the batch: ``(B, E)``, one row
per example (iLoRA's per-user gate), or ``(B, T, E)``, one row per token (the dense teacher's gate, read
from the latest history item at or before each token, so no token's adapter sees a later item). They are
set on every layer of a model by the :func:`moe_gates` context manager; a layer called without gates
raises.

Cost. The experts are evaluated together as one rank-``r`` LoRA with a per-example diagonal between its
two factors: ``z = dropout(x) @ A_all.T`` (B, T, E*r_e), ``z *= scaling * repeat(g, r_e)`` (per example
or per token, the same elementwise product) and
``z @ B_all.T``. That is the FLOPs of a peft LoRA of rank ``r`` plus one elementwise product, with no
loop over experts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from student.sasrec import Dropout

LORA_PARAMS = ("lora_A", "lora_B")


class MoELoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus E gated LoRA experts of rank ``r // E``.

    Args:
        base_layer: The layer to adapt; its parameters are frozen.
        experts: Number of experts E.
        r: Total LoRA rank, split evenly: each expert has rank ``r // experts``.
        lora_alpha: Scale numerator: the update is multiplied by ``lora_alpha / r`` (see the module
            docstring for how this relates to peft).
        lora_dropout: Dropout probability on the adapter's input (not on the base path), as in peft.
        per_expert_scaling: Scale by ``lora_alpha / (r // E)`` (iLoRA's code) instead of
            ``lora_alpha / r``.

    Attributes:
        lora_A: ``(E, r_e, in_features)``, kaiming-uniform like peft's ``lora_A``.
        lora_B: ``(E, out_features, r_e)``, zeros.
        scaling: ``lora_alpha / r``, or ``lora_alpha / (r // E)`` with ``per_expert_scaling``.
        merged: Whether a delta for a fixed gate vector is currently folded into ``base_layer.weight``.

    The adapter parameters are float32 whatever the base dtype (peft's ``autocast_adapter_dtype``). A
    float32 input runs the adapter path in float32; a bfloat16 input runs it in bfloat16 with the
    weights cast down per call (mixed precision, as autocast does), and the update is added in the
    output's dtype.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        experts: int,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        per_expert_scaling: bool = False,
    ) -> None:
        super().__init__()
        if experts < 1 or r < 1:
            raise ValueError(f"experts and r must be positive, got experts={experts}, r={r}")
        if r % experts:
            raise ValueError(f"r={r} must be divisible by experts={experts}: the total rank is split evenly")
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.experts = experts
        self.r = r
        self.rank_per_expert = r // experts
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / (self.rank_per_expert if per_expert_scaling else r)
        # student.sasrec's Dropout: nn.Dropout's CPU masks were 19% of a SmolLM2 training step
        self.lora_dropout = Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(
            torch.empty(experts, self.rank_per_expert, self.in_features, device=device, dtype=torch.float32)
        )
        self.lora_B = nn.Parameter(
            torch.empty(experts, self.out_features, self.rank_per_expert, device=device, dtype=torch.float32)
        )
        self.reset_parameters()
        self.merged = False
        self._merged_gates: Tensor | None = None
        self._gates: Tensor | None = None

    def reset_parameters(self) -> None:
        """peft's init per expert: ``kaiming_uniform_(a=sqrt(5))`` on each ``A_e``, zeros for ``B``."""
        with torch.no_grad():
            # Per expert, because the fan-in of a 3-d tensor would count r_e * in_features.
            for a in self.lora_A:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    @property
    def weight(self) -> Tensor:
        """The base weight, for code that inspects ``module.weight`` (as peft's layers expose it)."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def set_gates(self, gates: Tensor | None) -> None:
        """Set (or clear, with ``None``) the gates; prefer :func:`moe_gates`.

        Args:
            gates: ``(B, E)`` per-example or ``(B, T, E)`` per-token expert weights for the next forward
                passes, or ``None``.
        """
        if gates is not None and (gates.dim() not in (2, 3) or gates.shape[-1] != self.experts):
            raise ValueError(
                f"gates must have shape (batch, {self.experts}) or (batch, tokens, {self.experts}), "
                f"got {tuple(gates.shape)}"
            )
        self._gates = gates

    @property
    def gates(self) -> Tensor | None:
        return self._gates

    def _stacked(self) -> tuple[Tensor, Tensor]:
        """All experts as one LoRA: ``A_all`` (E*r_e, in) and ``B_all`` (out, E*r_e).

        Expert e occupies rows/columns ``e*r_e : (e+1)*r_e`` of both, so a per-rank gate
        ``repeat_interleave(g, r_e)`` between them weights each expert.
        """
        a_all = self.lora_A.reshape(-1, self.in_features)  # a view: experts are contiguous
        b_all = self.lora_B.permute(1, 0, 2).reshape(self.out_features, -1)  # (out, E*r_e), a small copy
        return a_all, b_all

    def delta_weight(self, gates: Tensor) -> Tensor:
        """The weight update for one fixed gate vector: ``scaling * sum_e g_e B_e A_e``.

        Args:
            gates: ``(E,)``.

        Returns:
            ``(out_features, in_features)`` float32.
        """
        if gates.shape != (self.experts,):
            raise ValueError(
                f"a merge gate vector must have shape ({self.experts},), got {tuple(gates.shape)}"
            )
        a_all, b_all = self._stacked()
        per_rank = gates.to(a_all).repeat_interleave(self.rank_per_expert) * self.scaling  # (E*r_e,)
        return b_all @ (per_rank[:, None] * a_all)

    @torch.no_grad()
    def merge(self, gates: Tensor) -> None:
        """Fold the update for a fixed gate vector into ``base_layer.weight``.

        While merged the layer is the plain base layer: gates set with :func:`moe_gates` are ignored
        and the adapter receives no gradient. Merging twice without :meth:`unmerge` raises.

        Args:
            gates: ``(E,)`` expert weights shared by every example.
        """
        if self.merged:
            raise RuntimeError("MoELoRALinear is already merged; call unmerge() before merging again")
        weight = self.base_layer.weight
        weight += self.delta_weight(gates).to(weight.dtype)
        self._merged_gates = gates.detach().clone()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the delta added by :meth:`merge`, recomputed from the same gates and adapter weights."""
        if not self.merged:
            raise RuntimeError("MoELoRALinear is not merged; nothing to unmerge")
        weight = self.base_layer.weight
        weight -= self.delta_weight(self._merged_gates).to(weight.dtype)
        self._merged_gates = None
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        """Base output plus the gated experts' update.

        Args:
            x: ``(B, T, in_features)`` or ``(B, in_features)``.

        Returns:
            Same leading shape with ``out_features`` last, in the base layer's output dtype.

        Raises:
            RuntimeError: No gates are set (and the layer is not merged), or their batch size is not
                ``B`` (per-token gates: their shape is not ``(B, T, E)``).
        """
        result = self.base_layer(x)
        if self.merged:
            return result
        gates = self._gates
        if gates is None:
            raise RuntimeError(
                "MoELoRALinear called without gates: run the model inside `with moe_gates(model, gates):`"
            )
        if gates.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"gates are set for a batch of {gates.shape[0]} but the input has batch size {x.shape[0]}"
            )
        if gates.dim() == 3 and gates.shape[:2] != x.shape[:2]:
            raise RuntimeError(
                f"per-token gates {tuple(gates.shape)} do not match the input {tuple(x.shape)}"
            )
        a_all, b_all = self._stacked()
        # The adapter computes in float32, or in the input's dtype when that is bfloat16: a bfloat16
        # activation cast up costs a copy of it per layer (12% of a bfloat16 SmolLM2 step), for an update
        # that is rounded to bfloat16 anyway when it is added to the base output. The weights stay
        # float32 (the master copy Adam updates), cast down per step as autocast would.
        compute = torch.bfloat16 if x.dtype == torch.bfloat16 else a_all.dtype
        a_all, b_all = a_all.to(compute), b_all.to(compute)
        per_rank = gates.to(compute).repeat_interleave(self.rank_per_expert, dim=-1) * self.scaling
        if x.dim() == 3 and gates.dim() == 2:
            per_rank = per_rank[:, None, :]  # (B, 1, E*r_e): one gate row for every position
        z = F.linear(self.lora_dropout(x.to(compute)), a_all)  # (..., E*r_e)
        update = F.linear(z * per_rank, b_all)  # (..., out)
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"experts={self.experts}, r={self.r}, rank_per_expert={self.rank_per_expert}, "
            f"lora_alpha={self.lora_alpha}, merged={self.merged}"
        )


def moe_lora_layers(model: nn.Module) -> Iterator[tuple[str, MoELoRALinear]]:
    """``(name, layer)`` for every MoE-LoRA layer in ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, MoELoRALinear):
            yield name, module


@contextmanager
def moe_gates(model: nn.Module, gates: Tensor) -> Iterator[None]:
    """Set ``gates`` on every MoE-LoRA layer of ``model`` for the duration of the block.

    The previous gates (normally none) are restored on exit, also when the block raises, so nested
    uses work and no gate tensor (or the graph behind it) outlives the batch.

    Args:
        model: A module containing :class:`MoELoRALinear` layers.
        gates: ``(B, E)`` expert weights, one row per example of the batch, or ``(B, T, E)``, one
            row per token; gradients flow back through them to whatever produced them.

    Example:
        >>> with moe_gates(backbone, gate_net(user_emb)):
        ...     hidden = backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    """
    layers = [layer for _, layer in moe_lora_layers(model)]
    if not layers:
        raise ValueError("moe_gates: the model has no MoELoRALinear layers (call inject_moe_lora first)")
    previous = [layer.gates for layer in layers]
    try:
        for layer in layers:
            layer.set_gates(gates)
        yield
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.set_gates(old)


def inject_moe_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    experts: int,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    per_expert_scaling: bool = False,
) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends in one of ``target_modules`` with :class:`MoELoRALinear`.

    As peft's ``get_peft_model`` does, every parameter of ``model`` other than the new ``lora_A`` /
    ``lora_B`` is frozen afterwards: call this on the backbone, not on a module that also holds
    parts to train (projector, gate, head).

    Args:
        model: Modified in place.
        target_modules: Last components of module names, e.g. ``["q_proj", "v_proj"]``.
        experts: Number of experts E.
        r: Total rank, divisible by ``experts``.
        lora_alpha: See :class:`MoELoRALinear`.
        lora_dropout: See :class:`MoELoRALinear`.
        per_expert_scaling: See :class:`MoELoRALinear`.

    Returns:
        The full names of the replaced modules.

    Raises:
        DistillError: No ``nn.Linear`` matched ``target_modules``.
    """
    targets = set(target_modules)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise DistillError(
            f"no nn.Linear module matches target_modules {sorted(targets)}; "
            f"the model's Linear layers are named {linear[:10] or 'nothing (there are none)'}"
        )
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = MoELoRALinear(
            getattr(parent, child), experts, r, lora_alpha, lora_dropout, per_expert_scaling
        )
        setattr(parent, child, layer)
    for pname, param in model.named_parameters():
        param.requires_grad_(pname.rsplit(".", 1)[-1] in LORA_PARAMS)
    return names
