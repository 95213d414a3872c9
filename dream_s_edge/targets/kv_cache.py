"""A KV cache allocated once, with the verbs the speculative loop needs.

The target's attention layers call `past_key_values.update(k, v, layer_idx)`; this cache writes the
new K/V at a write offset the adapter sets (`begin_step(start)`) and hands back the *whole* buffers,
so every step attends over a fixed `S_max` slots and the adapter's 4D mask says which are visible.
After acceptance, `commit(start, accepted)` copies the accepted tree slots to contiguous slots in
place. Buffers are never reallocated or concatenated, so their `data_ptr` never changes.

Layout per layer: keys and values `[B, Hkv, S_max, D]`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from runtime.errors import CapacityError


class StaticKVLayer(CacheLayerMixin):
    """One layer's preallocated keys and values; writes at `write_offset`."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys = keys  # [B, Hkv, S_max, D]
        self.values = values  # [B, Hkv, S_max, D]
        self.is_initialized = True
        self.write_offset = 0
        self.committed = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist from construction."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Consumes new K/V [B, Hkv, T, D], writes them at the write offset, returns the full buffers."""
        n = key_states.shape[-2]
        end = self.write_offset + n
        self.keys[:, :, self.write_offset : end].copy_(key_states)
        self.values[:, :, self.write_offset : end].copy_(value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask always spans every slot (kv_length, kv_offset)."""
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return self.committed

    def get_max_length(self) -> int:
        return self.keys.shape[2]

    def reset(self) -> None:
        """Forgets the committed tokens; stale slots stay, hidden by the adapter's mask."""
        self.committed = 0
        self.write_offset = 0


class StaticKVCache(Cache):
    """The target's KV cache: `num_layers` preallocated layers and a committed length.

    Verbs: `begin_step(start)` (where the next forward writes), `commit(start, accepted)` (move
    accepted tree slots to contiguous slots), `advance(start, n)` (accept a chain as written),
    `rewind_to(n)`, `reset()`, `layer(i)`.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        layers = [
            StaticKVLayer(
                torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
            )
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.max_len = max_len
        self._length = 0

    @property
    def length(self) -> int:
        """Committed tokens (slots [0, length) hold the accepted sequence)."""
        return self._length

    def layer(self, index: int) -> StaticKVLayer:
        """The cache layer of decoder layer `index`."""
        return self.layers[index]

    def begin_step(self, start: int, num_tokens: int) -> None:
        """Makes the next forward write its `num_tokens` K/V at slots [start, start + num_tokens)."""
        if start < 0 or start + num_tokens > self.max_len:
            raise CapacityError(
                "The KV cache is too small for this step.",
                note=f"start {start} + {num_tokens} new tokens > {self.max_len} slots",
                hint="allocate a larger cache (new_cache(max_len=...)) or shorten the prompt",
            )
        for layer in self.layers:
            layer.write_offset = start

    def commit(self, start: int, accepted: torch.Tensor) -> None:
        """Consumes accepted node indices [A] (relative to `start`), copies slot start+accepted[i]
        to slot start+i in every layer, and sets the committed length to start + A."""
        num = int(accepted.shape[0])
        if start + num > self.max_len:
            raise CapacityError("Commit beyond the KV cache.", note=f"{start} + {num} > {self.max_len}")
        src = accepted.to(device=self.layers[0].keys.device, dtype=torch.long) + start  # [A]
        dst = torch.arange(start, start + num, device=src.device)  # [A]
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                # index_select copies first, so overlapping source and destination slots are safe.
                buffer.index_copy_(2, dst, buffer.index_select(2, src))
        self._set_length(start + num)

    def advance(self, start: int, num_tokens: int) -> None:
        """Accepts `num_tokens` slots written as a chain at `start` (no copy)."""
        if start + num_tokens > self.max_len:
            raise CapacityError(
                "Advance beyond the KV cache.", note=f"{start} + {num_tokens} > {self.max_len}"
            )
        self._set_length(start + num_tokens)

    def rewind_to(self, length: int) -> None:
        """Forgets every committed token from `length` on."""
        self._set_length(min(length, self._length))

    def reset(self) -> None:
        """Forgets every committed token; keeps every buffer."""
        super().reset()
        self._length = 0

    def _set_length(self, length: int) -> None:
        self._length = length
        for layer in self.layers:
            layer.committed = length
