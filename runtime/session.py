"""`Session`: ask questions about images over an exported artifact folder, without torch.

Data flow::

    Session.from_dir(DIR)  -> Manifest.load (sha256, versions) -> OrtTargetRunner (+ OrtDraftRunner)
    session.ask(image, question)
        -> PromptBuilder.build (chat template, tokenizers, numpy image preprocessing) -> Prompt
        -> runtime.decode.speculative_generate (or autoregressive_generate without a draft)
        -> TextStreamer pieces (stream=True) or the whole answer

Runners and their KV buffers are built once per session and reused for every question; a bad image
or prompt raises a `UserInputError` and leaves the session usable.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.accept import SamplingConfig
from runtime.decode import GenerationResult, PassCallback, autoregressive_generate, speculative_generate
from runtime.detokenize import TextStreamer
from runtime.images import load_image
from runtime.manifest import Manifest
from runtime.ort_draft import OrtDraftRunner
from runtime.ort_target import OrtTargetRunner
from runtime.preprocess import PromptBuilder
from runtime.tree import TreeSpec


@dataclass(frozen=True)
class Answer:
    """One finished answer: its text and the loop's result (tokens, stop reason, metrics)."""

    text: str
    result: GenerationResult


def tree_from_manifest(section: dict) -> TreeSpec:
    """The manifest's tree section -> TreeSpec."""
    return TreeSpec.from_dict(section)


class Session:
    """Runners over one artifact folder, reused across questions.

    Args:
        manifest: the validated manifest.
        provider: onnxruntime provider ("cpu", "cuda", "tensorrt").
        speculative: use the draft when the folder has one.
        threads: intra-op threads per session (None: onnxruntime's default).
    """

    def __init__(self, manifest: Manifest, provider: str = "cpu", speculative: bool = True, threads: int | None = None):
        self.manifest = manifest
        self.prompts = PromptBuilder(manifest.folder, manifest["processor"])
        self.target = OrtTargetRunner(manifest, provider, threads)
        self.draft = None
        if speculative and manifest.has("draft_step"):
            self.draft = OrtDraftRunner(manifest, self.target.embeddings, provider, threads)
        self.tree = tree_from_manifest(manifest["tree"])
        self.eos_ids = tuple(manifest["target"]["eos_token_ids"])
        self.last_result: GenerationResult | None = None

    @classmethod
    def from_dir(cls, folder: str | Path, **kwargs) -> Session:
        """Loads and validates `folder/manifest.json`, then builds the runners (see the class Args)."""
        return cls(Manifest.load(folder), **kwargs)

    def generate(self, image, question: str, max_new_tokens: int = 96, sampling: SamplingConfig | None = None,
                 on_tokens=None, speculative: bool | None = None, seed: int = 0,
                 on_pass: PassCallback | None = None) -> GenerationResult:
        """Runs the loop on one question; `image` is a PIL image, a path, or None. `on_pass` observes
        every speculative pass (`runtime.decode.PassCallback`)."""
        if isinstance(image, (str, Path)):
            image = load_image(image)
        prompt = self.prompts.build(image, question)
        common = dict(sampling=sampling or SamplingConfig(), max_new_tokens=max_new_tokens, eos_ids=self.eos_ids,
                      rng=np.random.default_rng(seed), on_tokens=on_tokens)
        use_draft = self.draft is not None if speculative is None else speculative and self.draft is not None
        if use_draft:
            return speculative_generate(self.target, self.draft, prompt, self.tree, on_pass=on_pass, **common)
        return autoregressive_generate(self.target, prompt, **common)

    def ask(self, image, question: str, stream: bool = True, **kwargs) -> Iterator[str] | Answer:
        """Answers a question about an image (or None).

        With `stream=True` returns an iterator of text pieces, yielded while the loop decodes
        (`self.last_result` has the metrics afterwards); otherwise an `Answer`. kwargs go to `generate` (max_new_tokens, sampling, speculative, seed).
        """
        if stream:
            return self._stream(image, question, **kwargs)
        streamer = TextStreamer(self.prompts.decode)
        result = self.generate(image, question, on_tokens=streamer.push, **kwargs)
        return Answer(text=streamer.text, result=result)

    def _stream(self, image, question: str, **kwargs) -> Iterator[str]:
        """Runs generate in a worker thread and yields text pieces as the loop emits tokens.

        onnxruntime releases the GIL while it computes, so pieces reach the caller during decoding.
        An error in the worker (a bad image, say) is re-raised here. `self.last_result` holds the
        GenerationResult once the iterator is exhausted.
        """
        pieces: queue.Queue = queue.Queue()
        streamer = TextStreamer(self.prompts.decode)
        done = object()

        def work():
            try:
                self.last_result = self.generate(image, question, on_tokens=lambda ids: pieces.put(streamer.push(ids)),
                                                 **kwargs)
                pieces.put(streamer.finish())
            except BaseException as error:  # handed to the consumer thread, re-raised there
                pieces.put(error)
            pieces.put(done)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while (item := pieces.get()) is not done:
            if isinstance(item, BaseException):
                worker.join()
                raise item
            if item:
                yield item
        worker.join()
