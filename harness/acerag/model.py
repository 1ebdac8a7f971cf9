"""The AceRAG model: a frozen causal LM plus a trained compressive encoder (modeling_acerag.py @bce608d1).

The encoder is ``AutoModel.from_pretrained(encoder_path, num_hidden_layers=k)``: token embeddings, the
first k decoder layers and the final norm of the same architecture, no projection (its hidden size is
the LM's).  Its last hidden states at the selected positions overwrite the LM's input-embedding rows at
the placeholder positions; the LM's own loss is the training loss, so gradients reach only the encoder.

Window mode ("two-stream AR", pretraining): for window j >= 1 the LM sees the selected states of windows
0..j-1, then window j's raw tokens, and is scored on window j; the sample loss is the token-weighted
mean over windows.  Ratios come from the encoder's own ``np.random.default_rng(42)`` (same draws on
every rank), random positions from ``torch.randperm`` (the global torch generator).

Saving writes ``OUTPUT/compressive_encoder/`` with ``save_pretrained(safe_serialization=True)``; the next
stage loads it with ``use_safetensors`` as its command says (False only finds ``pytorch_model.bin``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from harness.acerag.compress import PH_TOKEN_ID, window_plan

ENCODER_SUBDIR = "compressive_encoder"


class CompressiveEncoder(nn.Module):
    """Truncated copy of the LM (embeddings, first k layers, final norm) whose selected states are kept."""

    def __init__(
        self,
        path: str,
        num_hidden_layers: int,
        dtype: torch.dtype,
        attn_implementation: str,
        window: int,
        encoder_max_length: int,
        comp_candidates: Sequence[int],
        pretraining_down_scaling_method: str,
        seed: int = 42,
        use_safetensors: bool = False,
    ):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(
            path,
            num_hidden_layers=num_hidden_layers,
            dtype=dtype,
            attn_implementation=attn_implementation,
            use_safetensors=use_safetensors,
        )
        cfg = self.model.config
        if getattr(cfg, "layer_types", None) and len(cfg.layer_types) != cfg.num_hidden_layers:
            # DEVIATION: the twin's Qwen3 config.json is written by transformers 5 and lists layer_types for
            # all layers, which num_hidden_layers=k does not cut (saving then fails validation); Qwen3-8B's
            # hub config has no layer_types, so under 4.57.3 they are derived from k: the first k, as here
            cfg.layer_types = list(cfg.layer_types[: cfg.num_hidden_layers])
        self.window = window
        self.encoder_max_length = encoder_max_length
        self.comp_candidates = list(comp_candidates)
        self.method = pretraining_down_scaling_method
        self.rng = np.random.default_rng(seed)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def save(self, output_dir: str) -> None:
        self.model.save_pretrained(os.path.join(output_dir, ENCODER_SUBDIR), safe_serialization=True)

    def forward(self, input_ids, attention_mask, indices: Sequence[Sequence[int]]):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.cat([hidden[i][list(idx)] for i, idx in enumerate(indices)], dim=0).contiguous()

    def plan(self, seq_len: int, device):
        """The window plan for one text; consumes the ratio generator and the torch generator as upstream."""
        return window_plan(
            seq_len,
            self.window,
            self.encoder_max_length,
            self.comp_candidates,
            self.method,
            choose=self.rng.choice,
            randperm=lambda n: torch.randperm(n, device=device).tolist(),
        )


def splice(embed: nn.Module, input_ids, encoder_embeds, ph_indices: Sequence[Sequence[int]]):
    """LM input embeddings with the placeholder rows replaced by encoder states (prepare_inputs_embeds)."""
    inputs_embeds = embed(input_ids)
    k = 0
    for i, ph in enumerate(ph_indices):
        if not ph:
            continue
        inputs_embeds[i][list(ph)] = encoder_embeds[k : k + len(ph)]
        k += len(ph)
    return inputs_embeds


class AceRAG(nn.Module):
    """Frozen language model + compressive encoder; forward returns the frozen LM's loss."""

    def __init__(
        self,
        language_model_path: str,
        encoder_path: str,
        encoder_num_hidden_layers: int,
        *,
        window_mode: bool,
        window: int,
        lm_max_length: int,
        encoder_max_length: int,
        comp_candidates: Sequence[int],
        pretraining_down_scaling_method: str,
        dtype: torch.dtype,
        attn_implementation: str,
        use_safetensors: bool,
        seed: int = 42,
    ):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.language_model = AutoModelForCausalLM.from_pretrained(
            language_model_path, dtype=dtype, attn_implementation=attn_implementation
        )
        self.compressive_encoder = CompressiveEncoder(
            encoder_path,
            encoder_num_hidden_layers,
            dtype,
            attn_implementation,
            window,
            encoder_max_length,
            comp_candidates,
            pretraining_down_scaling_method,
            seed,
            use_safetensors=use_safetensors,
        )
        self.window_mode = window_mode
        self.lm_max_length = lm_max_length
        for p in self.language_model.parameters():
            p.requires_grad = False
        #: filled by the window-mode forward, read by the trainer's metrics (window count, ratios)
        self.last_windows: list[tuple[int, int]] = []
        #: [tokens the encoder compressed, states spliced into the LM] since the trainer last read them:
        #: the compression actually applied (comp_ratio), measured from the plan, not from the flags
        self.comp_counts = [0, 0]

    def take_comp_ratio(self) -> float | None:
        """Compressed tokens per spliced state since the last call (None when nothing was compressed)."""
        tokens, states = self.comp_counts
        self.comp_counts = [0, 0]
        return tokens / states if states else None

    @property
    def config(self):
        """The LM's config: what the HF Trainer and DeepSpeed read for hidden size and the like."""
        return self.language_model.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        # DEVIATION: transformers 5 also passes every_n_layers=...; upstream's signature (4.57.3) has only the kwargs dict
        del kwargs
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        self.compressive_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs)
        # DEVIATION: transformers 5 also hooks every input embedding to return a requires-grad leaf
        # (4.57.3 did so only for PEFT models); on the frozen LM that leaf cannot take the in-place
        # placeholder splice, so the hooks are removed again, which is 4.57.3's state
        self.language_model.disable_input_require_grads()
        self.compressive_encoder.model.disable_input_require_grads()

    def save(self, output_dir: str) -> None:
        self.compressive_encoder.save(output_dir)

    def _window_forward(self, input_ids, attention_mask, labels):
        if input_ids.shape[0] != 1:
            raise ValueError("Two-Steam AR training's batch_size must be 1.")
        enc = self.compressive_encoder
        plan = enc.plan(input_ids.shape[1], input_ids.device)
        total = sum(plan.group_sizes)
        ids_groups = input_ids[:, :total].split(plan.group_sizes, dim=1)
        mask_groups = attention_mask[:, :total].split(plan.group_sizes, dim=1)
        states = torch.cat([enc(ids, m, [idx]) for ids, m, idx in zip(ids_groups, mask_groups, plan.group_indices)])
        state_windows = states.split(plan.comp_sizes, dim=0)
        id_windows = input_ids.split(plan.segment_sizes, dim=1)
        label_windows = labels.split(plan.segment_sizes, dim=1)
        embed = self.language_model.get_input_embeddings()
        losses, counts = [], []
        for j in range(1, len(id_windows)):
            prefix = torch.cat(state_windows[:j])
            k = prefix.shape[0]
            ids = torch.cat([id_windows[j].new_ones(1, k), id_windows[j]], dim=1)
            lab = torch.cat([label_windows[j].new_full((1, k), -100), label_windows[j]], dim=1)
            embeds = splice(embed, ids, prefix, [list(range(k))])
            out = self.language_model(inputs_embeds=embeds, attention_mask=ids.new_ones(ids.shape), labels=lab)
            losses.append(out.loss)
            counts.append((lab[:, 1:] != -100).sum())
        self.last_windows = list(zip(plan.ratios[:-1], plan.comp_sizes))
        self.comp_counts[0] += sum(plan.segment_sizes[:-1])
        self.comp_counts[1] += sum(plan.comp_sizes)
        total_loss, total_count = 0, 0
        for loss, n in zip(losses, counts):
            if torch.isnan(loss):
                continue
            total_loss = total_loss + loss * n
            total_count = total_count + n
        return {"loss": total_loss / total_count}

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        encoder_input_ids=None,
        encoder_attention_mask=None,
        encoder_indices=None,
        ph_indices=None,
    ):
        if self.window_mode:
            return self._window_forward(input_ids, attention_mask, labels)
        if ph_indices and encoder_indices:
            states = torch.cat(
                [
                    self.compressive_encoder(encoder_input_ids[[i]], encoder_attention_mask[[i]], [idx])
                    for i, idx in enumerate(encoder_indices)
                    if idx
                ]
            )
            embeds = splice(self.language_model.get_input_embeddings(), input_ids, states, ph_indices)
            self.comp_counts[0] += int(encoder_attention_mask.sum())
            self.comp_counts[1] += int(states.shape[0])
            return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
        if ph_indices is None and encoder_indices is None:
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        raise ValueError("Arguments `ph_indices` and `encoder_indices` must be all `None` or not.")


def tensor_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, bytes): the bit-identity check."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["AceRAG", "CompressiveEncoder", "ENCODER_SUBDIR", "PH_TOKEN_ID", "splice", "tensor_digest"]
