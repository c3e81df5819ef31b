"""Media types cairn reads and writes.

Ollama's models are Docker schema 2 manifests whose layers carry
``application/vnd.ollama.image.*`` types; oras pushes OCI manifests with an
``artifactType``; CNCF ModelPack and Docker Model Runner have their own.
"""

from __future__ import annotations

# Docker schema 2 (what Ollama pushes and pulls).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# OCI image spec.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_TITLE_ANNOTATION = "org.opencontainers.image.title"

# Ollama's layers.
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"
OLLAMA_ADAPTER = "application/vnd.ollama.image.adapter"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"
OLLAMA_MESSAGES = "application/vnd.ollama.image.messages"
OLLAMA_PROMPT = "application/vnd.ollama.image.prompt"  # the template layer of old models
OLLAMA_DRAFT = "application/vnd.ollama.image.draft"  # a draft model, for speculative decoding
OLLAMA_TENSOR = "application/vnd.ollama.image.tensor"  # one named tensor (safetensors models)
OLLAMA_JSON = "application/vnd.ollama.image.json"  # a JSON file that came with the tensors
OLLAMA_EMBED = "application/vnd.ollama.image.embed"
# Layers cairn does not run but keeps, lists and passes on to a model made FROM it.
OLLAMA_OTHER_LAYERS = (OLLAMA_DRAFT, OLLAMA_TENSOR, OLLAMA_JSON, OLLAMA_EMBED)
OLLAMA_LAYERS = frozenset(
    {
        OLLAMA_PROMPT,
        *OLLAMA_OTHER_LAYERS,
        OLLAMA_MODEL,
        OLLAMA_TEMPLATE,
        OLLAMA_SYSTEM,
        OLLAMA_PARAMS,
        OLLAMA_LICENSE,
        OLLAMA_ADAPTER,
        OLLAMA_PROJECTOR,
        OLLAMA_MESSAGES,
    }
)

# CNCF ModelPack (model-spec).
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
MODELPACK_WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"
MODELPACK_WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
MODELPACK_DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"
MODELPACK_CODE_RAW = "application/vnd.cncf.model.code.v1.raw"
MODELPACK_DATASET_RAW = "application/vnd.cncf.model.dataset.v1.raw"

# Docker Model Runner.
DOCKER_AI_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
DOCKER_AI_GGUF = "application/vnd.docker.ai.gguf.v3"
DOCKER_AI_LICENSE = "application/vnd.docker.ai.license"
DOCKER_AI_MMPROJ = "application/vnd.docker.ai.mmproj"
DOCKER_AI_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"

# cairn's own artifact type for `push --format oci`.
CAIRN_ARTIFACT = "application/vnd.cairn.model.v1"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
# What a pull asks for, most wanted first.
ACCEPT = (DOCKER_MANIFEST, OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST)

# The layer types that hold model weights, whatever the format.
WEIGHT_TYPES = frozenset({OLLAMA_MODEL, DOCKER_AI_GGUF, MODELPACK_WEIGHT_RAW})

SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
"""A model's signature (an OpenSSF Model Signing bundle), as a referrer's artifactType."""
SIGSTORE_BUNDLES = frozenset(
    {SIGSTORE_BUNDLE, "application/vnd.dev.sigstore.bundle+json;version=0.3"}
)
