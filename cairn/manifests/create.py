"""``cairn create``: build a model from a Modelfile, in Ollama's format.

A GGUF named by FROM is copied into the store in one pass (hashed while it
is written) while a second thread reads its header; the blob enters the
store only once the header has been read and every tensor found inside the
file, so a file that is not GGUF, or is cut short, leaves nothing behind.
The manifest is written last, so the model appears only when whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cairn import threads
from cairn.blobstore import Blob, BlobStore
from cairn.blobstore.digest import from_filename
from cairn.errors import (
    InvalidReferenceError,
    ManifestError,
    ModelfileError,
    ModelFormatError,
    ModelNotFoundError,
    QuantizeError,
    TemplateError,
)
from cairn.gguf import MAGIC, GGUFInfo, check_tensors, human_parameters, read_gguf
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor, Manifest
from cairn.manifests.models import LocalModel, Models
from cairn.manifests.platform import architecture
from cairn.manifests.reference import parse_reference
from cairn.modelfile import Modelfile

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def _short_switch_interval() -> Iterator[None]:
    """Hand the GIL over often, so the copy loop is not held up by the header parser."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def import_gguf(blobs: BlobStore, path: Path) -> tuple[Blob, GGUFInfo]:
    """Copy a GGUF file into the store while its header is read and checked."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFormatError(
            "cannot read {path}: {reason}", path=path, reason=exc.strerror or exc
        ) from exc
    if magic != MAGIC:  # what it starts with stays unsaid: it may be anyone's file
        raise ModelFormatError("{path} is not a GGUF file", path=path)

    info: list[GGUFInfo] = []
    error: list[BaseException] = []
    failed = threading.Event()

    def parse() -> None:
        try:
            header = read_gguf(path)
            check_tensors(header)  # what llama.cpp would refuse, refused before it is stored
            info.append(header)
        except BaseException as exc:
            error.append(exc)
            failed.set()

    parser = threading.Thread(target=parse, name="cairn-gguf-header", daemon=True)

    def accept(blob: Blob) -> None:
        parser.join()
        if error:
            raise error[0]
        if blob.size != info[0].file_size:
            raise ModelFormatError("{path} changed while it was being imported", path=path)

    def interrupt() -> None:
        if failed.is_set():  # a bad header stops the copy at once
            raise error[0]

    with _short_switch_interval():
        threads.start(parser)
        try:
            blob = blobs.put_file(path, accept=accept, interrupt=interrupt)
        finally:
            parser.join()
    return blob, info[0]


# What a model made FROM another keeps of its config, as Ollama's create keeps it.
_INHERITED = (
    "model_format",
    "model_family",
    "model_families",
    "model_type",
    "file_type",
    "renderer",
    "parser",
    "requires",
    "capabilities",
    "remote_host",
    "remote_model",
)


def _config(info: GGUFInfo | None, base: dict[str, Any], layers: list[Descriptor]) -> bytes:
    """The config blob Ollama writes (``ConfigV2``), with the model's facts from its GGUF."""
    config: dict[str, Any] = {key: base[key] for key in _INHERITED if key in base}
    if info is not None:
        family = info.architecture or "unknown"
        config.update(
            model_format="gguf",
            model_family=family,
            model_families=[family],
            model_type=human_parameters(info.parameter_count),
            file_type=info.file_type or "unknown",
        )
    config["architecture"] = architecture()
    config["os"] = sys.platform
    config["rootfs"] = {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]}
    return json.dumps(config, separators=(",", ":")).encode()


def _local(instruction: str, value: str, base_dir: Path) -> tuple[Path, str | None]:
    """The path a FROM or ADAPTER names, and what it is there ("file", "dir" or None).

    ``~user`` that names no user, a name the filesystem refuses as too long,
    a path that cannot be looked at: each a ModelfileError that gives the
    value as written and (where there is one) the path it resolved to.
    """
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "Could not determine home directory."
        raise ModelfileError(
            "{instruction} {value:.200}: no such user's home directory",
            instruction=instruction,
            value=value,
        ) from None
    if not path.is_absolute():
        path = Path(os.path.abspath(base_dir / path))
    try:
        kind = "dir" if path.is_dir() else "file" if path.is_file() else None
    except OSError as exc:
        raise ModelfileError(
            "{instruction} {value:.200} ({path:.300}): {reason}",
            instruction=instruction,
            value=value,
            path=str(path),
            reason=exc.strerror or exc,
        ) from None
    return path, kind


def _resolve_from(models: Models, value: str, base_dir: Path) -> Path | LocalModel:
    path, kind = _local("FROM", value, base_dir)
    if kind == "dir":
        raise ModelfileError(
            "FROM {value}: is a directory; cairn imports GGUF files and existing models",
            value=value,
        )
    if kind == "file":
        return path
    try:
        return models.get(value)
    except (InvalidReferenceError, ModelNotFoundError):
        raise ModelfileError(
            "FROM {value:.200} ({path:.300}): no such file, and no model of that name",
            value=value,
            path=str(path),
        ) from None


def create_model(
    models: Models,
    name: str,
    modelfile: Modelfile,
    base_dir: Path | str = ".",
    progress: Progress = _quiet,
    quantize: str | None = None,
    warn: Progress = _quiet,
) -> LocalModel:
    """Build ``name`` from ``modelfile`` (paths in it relative to ``base_dir``).

    With ``quantize`` (a type such as ``q4_K_M``), the weights are quantized
    to it by llama.cpp (:mod:`cairn.quantize`); ``warn`` hears what the user
    should know (quantized weights quantized again).
    """
    from cairn.quantize import parse_type, quantize_file

    target = parse_type(quantize) if quantize is not None else None
    ref = parse_reference(name)
    if ref.tag is None:
        raise InvalidReferenceError(
            "cannot create {name!r}: a new model needs a tag, not a digest", name=name
        )
    base_dir = Path(base_dir)
    adapter = None  # looked at first: a missing one costs no copy of the weights
    if modelfile.adapter is not None:
        adapter, kind = _local("ADAPTER", modelfile.adapter, base_dir)
        if kind != "file":
            raise ModelfileError(
                "ADAPTER {value:.200} ({path:.300}): no such file",
                value=modelfile.adapter,
                path=str(adapter),
            )
    source = _resolve_from(models, modelfile.from_, base_dir)
    if modelfile.template is not None:
        check_template(modelfile.template)  # before any byte is copied
    progress(Phrase("gathering model components"))
    blobs = models.blobs

    def put_text(media_type: str, text: str) -> Descriptor:
        blob = blobs.put_bytes(text.encode())
        return Descriptor(media_type, blob.digest, blob.size)

    with blobs.writing():
        info: GGUFInfo | None = None
        base_config: dict[str, Any] = {}
        inherited: list[Descriptor] = []
        base_params: dict[str, Any] = {}
        if isinstance(source, Path):
            done = quantize_file(blobs, source, target, progress, warn) if target else None
            if done:  # the file FROM names is read where it lies, not copied in first
                blob, info = done
            else:
                progress(Phrase("copying file {source}", source=source))
                blob, info = import_gguf(blobs, source)
            parameters = human_parameters(info.parameter_count)
            progress(
                Phrase(
                    "parsed GGUF: {architecture} {parameters}",
                    architecture=info.architecture,
                    parameters=parameters,
                )
            )
            # The file's name as its title (as oras records one), so a signature names the
            # layer as model_signing names the file; not when quantized (other bytes), nor
            # for a store's blob (`show --modelfile`'s FROM): a digest is no file name.
            named = not done and from_filename(source.name) is None
            title = {mt.OCI_TITLE_ANNOTATION: source.name} if named else {}
            layers = [Descriptor(mt.OLLAMA_MODEL, blob.digest, blob.size, title)]
        else:
            progress(Phrase("using model {model}", model=source.reference.display))
            base_config = _read_json(blobs, source.manifest.config, dict)
            layers = list(source.manifest.layers_of(mt.OLLAMA_MODEL))
            layers += source.manifest.layers_of(mt.OLLAMA_PROJECTOR)
            layers += source.manifest.layers_of(mt.OLLAMA_ADAPTER)
            layers += [  # draft, tensors (with their names), JSON, embed: as they are
                d for d in source.manifest.layers if d.media_type in mt.OLLAMA_OTHER_LAYERS
            ]
            inherited = list(source.manifest.layers)
            if target is not None:
                info, layers = _quantize_layers(blobs, source, layers, target, progress, warn)
            params_layer = source.manifest.layer_of(mt.OLLAMA_PARAMS)
            if params_layer is not None:
                base_params = _read_json(blobs, params_layer, dict)

        if adapter is not None:
            progress(Phrase("copying adapter {adapter}", adapter=adapter))
            blob, _ = import_gguf(blobs, adapter)
            layers.append(Descriptor(mt.OLLAMA_ADAPTER, blob.digest, blob.size))

        def keep_or(media_type: str, text: str | None) -> None:
            if text is not None:
                layers.append(put_text(media_type, text))
            else:
                layers.extend(d for d in inherited if d.media_type == media_type)

        keep_or(mt.OLLAMA_TEMPLATE, modelfile.template)
        if modelfile.template is None:
            keep_or(mt.OLLAMA_PROMPT, None)  # an old model's template layer
        keep_or(mt.OLLAMA_SYSTEM, modelfile.system)
        params = {**base_params, **modelfile.parameters}
        if modelfile.parameters:
            layers.append(put_text(mt.OLLAMA_PARAMS, json.dumps(params, separators=(",", ":"))))
        else:
            keep_or(mt.OLLAMA_PARAMS, None)
        if modelfile.messages:
            messages = [{"role": m.role, "content": m.content} for m in modelfile.messages]
            layers.append(put_text(mt.OLLAMA_MESSAGES, json.dumps(messages, ensure_ascii=False)))
        else:
            keep_or(mt.OLLAMA_MESSAGES, None)
        if modelfile.licenses:
            layers.extend(put_text(mt.OLLAMA_LICENSE, text) for text in modelfile.licenses)
        else:
            keep_or(mt.OLLAMA_LICENSE, None)

        progress(Phrase("writing manifest"))
        config_blob = blobs.put_bytes(_config(info, base_config, layers))
        manifest = Manifest.build(
            Descriptor(mt.DOCKER_CONFIG, config_blob.digest, config_blob.size), layers
        )
        model = models.save(ref, manifest)
    progress(Phrase("success"))
    return model


def _quantize_layers(
    blobs: BlobStore,
    source: LocalModel,
    layers: list[Descriptor],
    target: str,
    progress: Progress,
    warn: Progress,
) -> tuple[GGUFInfo | None, list[Descriptor]]:
    """The layers with the model's weights quantized to ``target``, and the new weights'
    header (None when they were of that type already and are kept)."""
    from cairn.quantize import quantize_file

    weights = [d for d in layers if d.media_type == mt.OLLAMA_MODEL]
    if len(weights) != 1:
        raise QuantizeError(
            "{model} has {count} model layers: cairn quantizes a model of one",
            model=source.reference.display,
            count=len(weights),
        )
    blobs.check_quick(weights[0].digest)  # llama.cpp reads the blob where it lies
    done = quantize_file(blobs, blobs.path(weights[0].digest), target, progress, warn)
    if not done:
        return None, layers
    blob, info = done
    new = Descriptor(mt.OLLAMA_MODEL, blob.digest, blob.size)
    return info, [new if d is weights[0] else d for d in layers]


def _read_json(blobs: BlobStore, descriptor: Descriptor, kind: type) -> Any:
    """A small JSON blob (config, params), checked against its digest first."""
    blobs.check_quick(descriptor.digest)
    with blobs.open(descriptor.digest) as f:
        data = f.read(1 << 20)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise ManifestError("blob {digest} is not valid JSON", digest=descriptor.digest) from None
    if not isinstance(value, kind):
        raise ManifestError(
            "blob {digest} is not a JSON {kind}", digest=descriptor.digest, kind=kind.__name__
        )
    return value


def check_template(template: str) -> None:
    """Refuse a TEMPLATE Ollama would refuse to parse: it would not load the model."""
    from cairn.template.engine import parse

    try:
        parse(template)
    except TemplateError as exc:
        raise ModelfileError(
            "TEMPLATE: {exc} (Ollama would refuse this model)", exc=exc.message
        ) from None
