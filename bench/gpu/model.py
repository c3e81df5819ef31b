"""A model of a real shape with random weights, for machines the real one cannot reach.

    python bench/gpu/model.py spec REAL.gguf SPEC.json.gz
    python bench/gpu/model.py make SPEC.json.gz OUT-f16.gguf [--quantize OUT-q4_k_m.gguf]

``spec`` keeps everything of a GGUF but its tensor data: every metadata
key with its exact GGUF type (the tokenizer too, so prompts tokenize as
they do for the real model) and every tensor's name and shape. For Gemma 3
270M that is about 2 MB compressed, against 253 MB for the model.

``make`` writes a GGUF with that metadata and random weights (normal, std
0.02; norms 1), F16 for matrices and F32 for vectors, one tensor at a time,
then quantizes it to Q4_K_M through llama.cpp's own quantizer
(``llama_model_quantize`` of llama-cpp-python). The embedding rows of the
control tokens (end of turn, end of text) are zero, so no prompt ends
early: a benchmark decodes as many tokens as it asks for.

Needs the ``gguf`` package (llama.cpp's gguf-py: PyPI's ``gguf``, or
``vendor/llama.cpp/gguf-py`` of the llama-cpp-python sdist on PYTHONPATH)
and numpy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

CONTROL = 3  # llama.cpp's token type of <eos>, <end_of_turn> and the like
STD = 0.02


def spec(real: Path, out: Path) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(real)
    fields = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue  # the header's own counts, not metadata
        types = [int(t) for t in field.types]
        value = field.contents()
        if types[0] == GGUFValueType.ARRAY and isinstance(value, list) and value:
            if isinstance(value[0], np.generic):
                value = [v.item() for v in value]
        elif isinstance(value, np.generic):
            value = value.item()
        fields.append({"key": field.name, "types": types, "value": value})
    tensors = [
        {"name": t.name, "shape": [int(n) for n in t.shape], "type": t.tensor_type.name}
        for t in reader.tensors
    ]
    with gzip.open(out, "wt", encoding="utf-8") as f:
        json.dump({"source": real.name, "fields": fields, "tensors": tensors}, f)
    print(f"{out}: {len(fields)} metadata keys, {len(tensors)} tensors")


def make(spec_path: Path, out: Path, seed: int = 1) -> None:
    from gguf import GGUFValueType, GGUFWriter

    with gzip.open(spec_path, "rt", encoding="utf-8") as f:
        described: dict[str, Any] = json.load(f)
    fields = {d["key"]: d for d in described["fields"]}
    arch = fields["general.architecture"]["value"]
    writer = GGUFWriter(out, arch)  # writes general.architecture itself
    for key, d in fields.items():
        if key in ("general.architecture", "general.file_type", "general.quantization_version"):
            continue
        types = [GGUFValueType(t) for t in d["types"]]
        writer.add_key_value(key, d["value"], types[0], types[-1] if len(types) > 1 else None)
    writer.add_file_type(1)  # F16
    control = [
        i for i, t in enumerate(fields["tokenizer.ggml.token_type"]["value"]) if t == CONTROL
    ]
    rng = np.random.default_rng(seed)

    def data(name: str, shape: list[int]) -> np.ndarray[Any, Any]:
        numpy_shape = tuple(reversed(shape))  # GGUF lists the fastest dimension first
        if len(shape) == 1:
            return np.ones(numpy_shape, dtype=np.float32)
        values = rng.standard_normal(numpy_shape, dtype=np.float32) * STD
        if name == "token_embd.weight":
            values[control] = 0.0  # the output is tied to it: these tokens score 0, never top
        return values.astype(np.float16)

    for t in described["tensors"]:
        dtype = np.float32 if len(t["shape"]) == 1 else np.float16
        count = int(np.prod(t["shape"]))
        writer.add_tensor_info(
            t["name"],
            tuple(reversed(t["shape"])),
            np.dtype(dtype),
            count * np.dtype(dtype).itemsize,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in described["tensors"]:
        writer.write_tensor_data(data(t["name"], t["shape"]))
    writer.close()
    print(f"{out}: random {described['source']}-shaped model, F16")


def quantize(source: Path, out: Path) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if failed:
        sys.exit(f"llama_model_quantize failed ({failed})")
    print(f"{out}: Q4_K_M, {out.stat().st_size:,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    described = commands.add_parser("spec", help="describe a real GGUF without its tensor data")
    described.add_argument("real", type=Path)
    described.add_argument("out", type=Path)
    made = commands.add_parser("make", help="write a random-weight GGUF from a description")
    made.add_argument("spec", type=Path)
    made.add_argument("out", type=Path)
    made.add_argument("--quantize", type=Path, help="also write a Q4_K_M copy here")
    args = parser.parse_args()
    if args.command == "spec":
        spec(args.real, args.out)
    else:
        make(args.spec, args.out)
        if args.quantize:
            quantize(args.out, args.quantize)


if __name__ == "__main__":
    main()
