"""The llama.cpp runtime plugin (entry point ``llama-cpp`` in ``cairn.runtimes``).

GPU offload when llama-cpp-python was built with CUDA or HIP and a device is
visible; CPU otherwise, with as many threads as the process may use. The
native library is imported only inside the runner process.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from cairn.i18n import Phrase
from cairn.runtime_plugins import devices
from cairn.runtime_plugins.hookspecs import hookimpl
from cairn.runtime_plugins.runtime import (
    Availability,
    Chunk,
    Embedding,
    LoadedModel,
    ModelSpec,
    Runtime,
)
from cairn.runtime_plugins.utf8 import TextStream

# Ollama's option names to llama-cpp-python's generate() arguments.
_SAMPLING = {
    "temperature": "temp",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


@functools.lru_cache(maxsize=1)
def _gpu_build() -> str | None:
    """ "cuda" or "rocm" when the installed llama-cpp-python was built for one, else None."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    from pathlib import Path

    libs = [p.name.lower() for d in spec.submodule_search_locations for p in Path(d).rglob("*.so*")]
    if any("cuda" in name for name in libs):
        return "cuda"
    if any("hip" in name or "rocm" in name for name in libs):
        return "rocm"
    return None


def _offload_gpus() -> list[devices.GPU]:
    """The visible GPUs this build of llama-cpp-python can offload to."""
    build = _gpu_build()
    return [g for g in devices.detect() if g.kind == build] if build else []


def _no_gpu_reason(gpus: list[devices.GPU]) -> Phrase | str:
    """Why this build cannot offload here; empty when it can."""
    build = _gpu_build()
    if build is None:
        return Phrase(
            "this llama-cpp-python was built for the CPU only"
            " ('make install-cuda' builds it for CUDA; see docs/runtimes.md)"
        )
    if not gpus:
        return Phrase(
            "this llama-cpp-python was built for {build}, but no {build} device is visible",
            build=build.upper(),
        )
    return ""


# llama.cpp says how many layers it put on the GPU in its load log (llama-model.cpp).
_OFFLOADED = re.compile(r"offloaded (-?\d+)/(\d+) layers to GPU")


class _LoadLog:
    """llama.cpp's log of a model's load: kept to read the offload; errors go on to stderr.

    llama.cpp keeps the callback's pointer for the life of the process, so
    there is one callback, never freed, writing into the newest log.
    """

    ERROR, CONTINUED = 3, 5
    _callback: ClassVar[Any] = None
    _newest: ClassVar[_LoadLog | None] = None
    _level = 0

    def __init__(self) -> None:
        self.text: list[str] = []
        cls = type(self)
        if cls._callback is None:
            import ctypes

            import llama_cpp

            def receive(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
                line = text.decode("utf-8", "replace")
                cls._level = cls._level if level == cls.CONTINUED else level
                if cls._newest is not None and len(cls._newest.text) < 10_000:
                    cls._newest.text.append(line)
                if cls._level == cls.ERROR:
                    print(line, end="", file=sys.stderr, flush=True)

            cls._callback = llama_cpp.llama_log_callback(receive)
            llama_cpp.llama_log_set(cls._callback, ctypes.c_void_p(0))
        cls._newest = self

    def offloaded(self) -> tuple[int, int] | None:
        """(layers on the GPU, layers in all) as llama.cpp reported them, if it did."""
        found = _OFFLOADED.search("".join(self.text))
        return (max(0, int(found[1])), int(found[2])) if found else None

    def close(self) -> None:
        """The load is over: keep no more lines (errors still reach stderr)."""
        if type(self)._newest is self:
            type(self)._newest = None


class LlamaCppRuntime(Runtime):
    name = "llama-cpp"
    devices = ("cuda", "rocm", "cpu")
    formats = ("gguf",)
    priority = 10

    def availability(self) -> Availability:
        if importlib.util.find_spec("llama_cpp") is None:
            return Availability(
                False,
                Phrase(
                    "llama-cpp-python is not installed (pip install 'cairn[llama]';"
                    " see docs/runtimes.md for the build flags)"
                ),
            )
        gpus = _offload_gpus()
        return Availability(True, "", (*(g.device for g in gpus), "cpu"), _no_gpu_reason(gpus))

    def load(self, model: ModelSpec, options: Mapping[str, Any]) -> LoadedModel:
        return LlamaCppModel(model, options)


class LlamaCppModel(LoadedModel):
    def __init__(self, model: ModelSpec, options: Mapping[str, Any]) -> None:
        import llama_cpp
        from llama_cpp import Llama

        started = time.perf_counter()
        gpus = _offload_gpus()
        layers = int(options.get("num_gpu", -1 if gpus else 0))
        log = _LoadLog()
        self.llm = Llama(
            model_path=str(model.weights),
            n_ctx=int(options.get("num_ctx", 4096)),
            n_threads=int(options.get("num_thread", devices.default_threads())),
            # The prompt too (llama-cpp-python would take every core for it).
            n_threads_batch=int(options.get("num_thread", devices.default_threads())),
            n_batch=int(options.get("num_batch", 512)),
            n_gpu_layers=layers,
            seed=int(options.get("seed", 0xFFFFFFFF)),
            lora_path=str(model.adapters[0]) if model.adapters else None,
            use_mmap=bool(options.get("use_mmap", True)),
            verbose=False,
        )
        self.load_seconds = time.perf_counter() - started
        offloaded = log.offloaded()
        log.close()
        every = int(llama_cpp.llama_model_n_layer(self.llm._model.model)) + 1  # + output layer
        self.gpu_layers, self.layers = offloaded or (0, every)
        self.gpu_devices = [f"{g.device} ({g.name})" for g in gpus] if self.gpu_layers else []

    def generate(self, prompt: str, options: Mapping[str, Any]) -> Iterator[Chunk]:
        """Sample token by token; token bytes become text through :class:`TextStream`,
        so no character is ever split and stop sequences are matched on whole text."""
        import llama_cpp

        llm = self.llm
        sampling = {name: options[key] for key, name in _SAMPLING.items() if key in options}
        grammar = _grammar(options.get("format"))
        if "seed" in options:
            llm.set_seed(int(options["seed"]))
        stop = options.get("stop") or []
        stream = TextStream([stop] if isinstance(stop, str) else list(stop))
        started = time.perf_counter()
        prompt_tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        predict = int(options.get("num_predict", -1))
        prompt_tokens = _fit(prompt_tokens, llm.n_ctx(), predict)
        room = llm.n_ctx() - len(prompt_tokens) - 4  # 4: to finish a cut character
        limit = room if predict < 0 else min(predict, room)
        first: float | None = None
        produced = 0
        # Every prompt evaluated whole: reusing the cached prefix of the last one computes
        # its last token in another batch, and at temperature 0 a near tie then goes the
        # other way (the same request gave two answers). Same request, same answer.
        llm.reset()  # type: ignore[no-untyped-call]
        if limit > 0:
            for token in llm.generate(prompt_tokens, grammar=grammar, **sampling):
                if first is None:
                    first = time.perf_counter()
                    self._check_logits()
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    break
                produced += 1
                text = stream.feed(llm.detokenize([token]))
                if text:
                    yield Chunk(text)
                if stream.stopped or produced >= limit + 4:
                    break
                if produced >= limit and not stream.pending:
                    break  # past the limit only to finish a character it cut
        tail = stream.finish()
        if tail:
            yield Chunk(tail)
        ended = time.perf_counter()
        if first is None:
            self._check_logits()
        first = first or ended
        yield Chunk(
            done=True,
            stats={
                "load_duration": self.load_seconds,
                "prompt_eval_count": len(prompt_tokens),
                "prompt_eval_duration": first - started,
                "eval_count": produced,
                "eval_duration": ended - first,
                "gpu_layers": self.gpu_layers,
                "layers": self.layers,
                "gpu_devices": self.gpu_devices,
                **({"stop_sequence": stream.matched} if stream.matched else {}),
            },
        )

    def _check_logits(self) -> None:
        """Refuse weights that compute NaN (a GGUF whose tensors are garbage)."""
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),))
        if not np.isfinite(logits).any():
            from cairn.errors import ModelFormatError

            raise ModelFormatError(
                "the model computes NaN for every token: its weights are corrupt"
                " (the GGUF header is fine, the tensor data is not)"
            )

    def embed(self, texts: list[str], truncate: bool = True) -> list[Embedding]:
        """One vector per text. A model that pools (an embedding model) gives its pooled
        vector; one that does not (a generative model, like Gemma) gives its last token's
        hidden state, as Ollama does. The context computes embeddings for that token only
        (the rest is ordinary prompt evaluation, no logits for every token), and then
        generates again: one load does both."""
        import llama_cpp

        from cairn.errors import InputTooLongError

        llm = self.llm
        pooled = llm._ctx.pooling_type() != llama_cpp.LLAMA_POOLING_TYPE_NONE
        # A pooling model reads the whole text in one batch; a causal one, in many.
        limit = min(llm.n_ctx(), llm.context_params.n_ubatch) if pooled else llm.n_ctx()
        found = []
        for text in texts:
            tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
            if len(tokens) > limit:
                if not truncate:
                    raise InputTooLongError(
                        "the input length ({tokens} tokens) exceeds the context length ({limit})",
                        tokens=len(tokens),
                        limit=limit,
                    )
                tokens = tokens[:limit]
            found.append(Embedding(self._embed(tokens or [llm.token_bos()], pooled), len(tokens)))
        return found

    def _embed(self, tokens: list[int], pooled: bool) -> list[float]:
        import llama_cpp

        llm, context, batch = self.llm, self.llm._ctx, self.llm._batch
        self._forget()
        try:
            if pooled:
                llama_cpp.llama_set_embeddings(context.ctx, True)
                batch.set_batch(tokens, 0, True)
                context.decode(batch)
                vector = context.get_embeddings_seq(0)
            else:
                head, size = len(tokens) - 1, llm.n_batch
                for start in range(0, head, size):
                    batch.set_batch(tokens[start : min(start + size, head)], start, False)
                    context.decode(batch)
                llama_cpp.llama_set_embeddings(context.ctx, True)
                batch.set_batch(tokens[head:], head, False)
                context.decode(batch)
                vector = context.get_embeddings_ith(-1)
            if not vector:  # a NULL pointer: llama.cpp kept no embedding
                from cairn.errors import ModelFormatError

                raise ModelFormatError("llama.cpp gave no embedding for this model")
            return [float(x) for x in vector[: llm.n_embd()]]
        finally:
            llama_cpp.llama_set_embeddings(context.ctx, False)
            self._forget()

    def _forget(self) -> None:
        """Empty the KV cache, and llama-cpp-python's record of what it held (so that
        generate() does not take a prefix of it as evaluated)."""
        self.llm._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]
        self.llm.reset()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.llm.close()


def _fit(tokens: list[int], context: int, predict: int) -> list[int]:
    """A prompt too long for the context, cut as Ollama cuts one: its first token (the
    BOS) and as many of its last as leave room for an answer (``num_predict``, or 64
    tokens, and at most a quarter of the context). A prompt that leaves that much room
    is not cut."""
    room = min(predict if predict > 0 else 64, context // 4) + 4
    keep = context - room
    if len(tokens) <= keep:
        return tokens
    return tokens[:1] + tokens[len(tokens) - (keep - 1) :]


def _grammar(wanted: Any) -> Any:
    """Ollama's ``format``: ``"json"`` lets only JSON out, a JSON schema only JSON it allows."""
    if wanted is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if wanted == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    import json

    from cairn.errors import ConfigError

    try:
        return LlamaGrammar.from_json_schema(json.dumps(wanted), verbose=False)
    except Exception as exc:  # the converter raises what it likes on a schema it cannot take
        raise ConfigError(
            "the format's JSON schema cannot be used: {reason}", reason=str(exc)[:200]
        ) from None


@hookimpl
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    register(LlamaCppRuntime())
