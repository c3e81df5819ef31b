"""The one exception tree of cairn.

Library code raises these and nothing else for protocol, store or user
errors; only the CLI catches them, prints ``Error: <message>`` and exits 1.
A message is a template and its parameters, ``NotFound("model {name} is
missing", name=n)``: ``str(error)`` is English (what an HTTP API sends) and
:func:`cairn.i18n.localize` says it in the user's language.

    CairnError
    ├── ConfigError                 a setting in the environment is unusable
    ├── InvalidReferenceError       a model name that breaks the naming rules
    ├── ModelNotFoundError          no such model in the local store
    ├── InputTooLongError           an input longer than the context, not to be cut
    ├── ManifestError               a manifest that is not valid JSON or breaks the spec
    ├── ModelfileError              a Modelfile that cannot be understood
    ├── ModelFormatError            a model file that is not what it claims (not GGUF, truncated)
    ├── QuantizeError               create --quantize: an unknown type, or llama.cpp failed
    ├── RuntimeUnavailableError     no runtime can run this model here (or the one asked for can't)
    ├── RunnerError                 the runner process failed or died (a crash, out of memory)
    │   └── RunnerRequestError      it failed one request and lives on (a plugin's exception)
    ├── ServerBusyError             too many requests wait for a model already (cairn serve)
    ├── ServerError                 a running server failed a request, or none is running
    ├── TemplateError               a prompt template that cannot be parsed or executed
    ├── BundleError                 an OCI layout or bundle to import that is broken or unsafe
    ├── SignatureError              a model signature that is malformed or fails, or an unusable key
    ├── RegistryError               a registry answered with an error or broke the protocol
    │   ├── AuthenticationError     credentials missing or refused (401/403)
    │   ├── RemoteNotFoundError     the registry has no such repository, tag or blob (404)
    │   └── TransferError           the connection failed, or retries ran out
    └── StoreError                  the blob store cannot do what was asked
        ├── InvalidDigestError      a digest string with the wrong syntax
        ├── BlobNotFoundError       no blob with that digest
        ├── DigestMismatchError     bytes whose sha256 is not the one expected
        ├── SizeMismatchError       more or fewer bytes than expected (a truncated stream)
        ├── CorruptBlobError        a stored blob whose bytes no longer match its name
        ├── StorageFullError        the disk (or quota) ran out while writing
        ├── StoreBusyError          a lock held by another process did not come free
        ├── UploadClosedError       an upload session another request finished or cancelled
        └── UploadLimitError        too many upload sessions open at once
"""

from __future__ import annotations

from typing import Any

from cairn.i18n import Phrase


class CairnError(Exception):
    """Base of every error cairn raises on purpose."""

    def __init__(self, message: str = "", /, **params: Any) -> None:
        super().__init__(Phrase(message, **params))

    @property
    def message(self) -> Phrase:
        """The message: English as a ``str``, with what it takes to translate it."""
        phrase: Phrase = self.args[0]
        return phrase


class ConfigError(CairnError):
    """A setting read from the environment cannot be used."""


class InvalidReferenceError(CairnError):
    """A model reference that breaks Ollama's or OCI's naming rules."""


class ModelNotFoundError(CairnError):
    """The named model is not in the local store."""


class InputTooLongError(CairnError):
    """An input longer than the model's context, where cutting it to fit was not allowed."""


class ManifestError(CairnError):
    """A manifest or index that is not valid JSON or breaks the spec."""


class ModelfileError(CairnError):
    """A Modelfile with a syntax error, an unknown instruction or a bad value."""


class ModelFormatError(CairnError):
    """A model file that is not of the format it must be, or is cut short."""


class QuantizeError(CairnError):
    """``create --quantize``: an unknown type, or llama.cpp could not quantize the model."""


class RuntimeUnavailableError(CairnError):
    """No installed runtime can run the model here, or the chosen one cannot."""


class ServerBusyError(CairnError):
    """The inference server's queue is full: the request is refused, not queued."""


class ServerError(CairnError):
    """A running server (``cairn serve``, or Ollama) that the CLI went through answered
    with an error, could not be reached, or there was none to go through."""


class RunnerError(CairnError):
    """The runner process failed or died; the message carries its last stderr lines."""


class RunnerRequestError(RunnerError):
    """The runner caught what went wrong with one request and is fit for the next."""


class TemplateError(CairnError):
    """A prompt template that cannot be parsed or executed."""


class BundleError(CairnError):
    """An OCI layout or bundle (``cairn import``) that is broken, unsafe or not one at all."""


class SignatureError(CairnError):
    """A model signature (an OMS bundle) that is malformed or does not verify, or a key or
    certificate that cannot sign or verify one."""


class PolicyError(SignatureError):
    """The trust policy (``$CAIRN_HOME/policy.json``) is malformed, or refuses a model."""


class RegistryError(CairnError):
    """A registry answered with an error, or broke the Distribution protocol."""

    def __init__(self, message: str, /, status: int | None = None, **params: Any) -> None:
        super().__init__(message, **params)
        self.status = status


class AuthenticationError(RegistryError):
    """Credentials are missing or were refused."""


class RemoteNotFoundError(RegistryError):
    """The registry has no such repository, manifest or blob."""


class TransferError(RegistryError):
    """A connection failed, stalled or kept failing after every retry."""


class StoreError(CairnError):
    """The blob store cannot do what was asked."""


class InvalidDigestError(StoreError):
    """A digest string that is not ``sha256:`` followed by 64 lowercase hex digits."""


class BlobNotFoundError(StoreError):
    """No blob with the given digest is in the store."""


class DigestMismatchError(StoreError):
    """Bytes whose digest differs from the one they were expected to have."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            "digest mismatch: expected {expected}, got {actual}", expected=expected, actual=actual
        )
        self.expected = expected
        self.actual = actual


class SizeMismatchError(StoreError):
    """A stream that ended before, or ran past, the size it was expected to have."""


class CorruptBlobError(StoreError):
    """A blob in the store whose bytes no longer hash to its name."""


class StorageFullError(StoreError):
    """The filesystem ran out of space (or quota) during a write."""


class StoreBusyError(StoreError):
    """Another process holds a lock on the store for longer than we wait."""


class UploadClosedError(StoreError):
    """A request reached an upload session another request finished or cancelled."""


class UploadLimitError(StoreError):
    """Too many upload sessions are open at once (in all, or for one client)."""
