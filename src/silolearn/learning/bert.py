"""The base model's forward pass in plain torch: all-MiniLM-L6-v2 is a BERT encoder, run here
from its own ``model.safetensors``, ``config.json`` and ``tokenizer.json`` without importing
transformers.

Why: importing transformers' ``BertModel`` costs about 2.5 s of CPU on top of torch (it
imports ``torch._dynamo`` and ``torch.distributed.tensor``), paid by every worker process
that starts, two a round, and by every command that embeds. What it computes for this model
in eval mode is small: embeddings, then six layers of self-attention and a feed-forward
block, each with a residual connection and a layer norm. Only LoRA, which PEFT injects into
a transformers model, still loads transformers (``FrozenEncoder.model``). The tests check
this forward against transformers' on real texts, tokens and vectors
(tests/learning/test_encoder.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

QKV = ("query", "key", "value")


@dataclass(frozen=True)
class BertShape:
    """What ``config.json`` says of the architecture; anything else is refused."""

    hidden: int
    heads: int
    layers: int
    eps: float

    @classmethod
    def read(cls, model_dir: Path) -> BertShape:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text("utf-8"))
        expected = {"model_type": "bert", "hidden_act": "gelu"}
        for key, value in expected.items():
            if config.get(key) != value:
                raise ValueError(f"{model_dir}: {key} is {config.get(key)!r}, not {value!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{model_dir}: only absolute position embeddings are supported")
        return cls(
            hidden=int(config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            layers=int(config["num_hidden_layers"]),
            eps=float(config["layer_norm_eps"]),
        )


class BertTokens:
    """``tokenizer.json`` (the WordPiece tokenizer transformers' fast tokenizer wraps):
    ``[CLS] text [SEP]``, truncated to ``max_length`` tokens, padded to the longest."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # the file carries a fixed padding and truncation; each call sets its own
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._cls = self._id("[CLS]")
        self._sep = self._id("[SEP]")
        self._pad = self._id("[PAD]")

    def _id(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"the tokenizer has no {token} token")
        return int(found)

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, each of shape ``(len(texts), longest)``."""
        import torch

        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        rows = [[self._cls, *e.ids[: max(max_length - 2, 0)], self._sep] for e in encoded]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask


class Bert:
    """The encoder's token states (``last_hidden_state``), inference only."""

    def __init__(self, model_dir: Path, weights_file: str) -> None:
        import torch
        from safetensors.torch import load_file

        self.shape = BertShape.read(model_dir)
        self._w = load_file(str(model_dir / weights_file))
        # query, key and value as one product: one larger matrix multiply is cheaper
        self._qkv = [
            tuple(
                torch.cat([self._w[f"encoder.layer.{i}.attention.self.{p}.{kind}"] for p in QKV])
                for kind in ("weight", "bias")
            )
            for i in range(self.shape.layers)
        ]

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The weights as read from the model's file, by their transformers names."""
        return dict(self._w)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        import torch

        return torch.nn.functional.linear(x, self._w[f"{name}.weight"], self._w[f"{name}.bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        import torch

        weight, bias = self._w[f"{name}.weight"], self._w[f"{name}.bias"]
        return torch.nn.functional.layer_norm(x, (self.shape.hidden,), weight, bias, self.shape.eps)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        w, (batch, length) = self._w, ids.shape
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][:length]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = self._norm(x, "embeddings.LayerNorm")
        # padded keys get no attention (a boolean mask: True takes part)
        keep = mask.bool()[:, None, None, :]
        heads, width = self.shape.heads, self.shape.hidden // self.shape.heads
        for i in range(self.shape.layers):
            at = f"encoder.layer.{i}"
            q, k, v = (
                torch.nn.functional.linear(x, *self._qkv[i])
                .view(batch, length, 3, heads, width)
                .permute(2, 0, 3, 1, 4)
            )
            context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            context = context.transpose(1, 2).reshape(batch, length, self.shape.hidden)
            attended = self._linear(context, f"{at}.attention.output.dense")
            x = self._norm(attended + x, f"{at}.attention.output.LayerNorm")
            inner = torch.nn.functional.gelu(self._linear(x, f"{at}.intermediate.dense"))
            x = self._norm(self._linear(inner, f"{at}.output.dense") + x, f"{at}.output.LayerNorm")
        return x
