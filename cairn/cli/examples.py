"""The examples each command's ``--help`` ends with (click's ``epilog``).

One place for them, so that a command's decorator stays one line and a
test can walk them all: every command has one, each has a ``$ cairn`` line,
and each is translated whole (``cairn.cli._translate``), as help texts are.
``\\b`` keeps click from rewrapping the lines.
"""

from __future__ import annotations

CAIRN = """\b
Examples:
  $ cairn pull gemma3:270m
  $ cairn run gemma3:270m why is the sky blue
  $ cairn list
  $ cairn COMMAND --help"""

CREATE = """\b
Examples:
  $ cairn create mymodel                     (reads ./Modelfile)
  $ cairn create mymodel -f path/to/Modelfile
  $ cairn create mymodel-q8 -q q8_0          (quantized by llama.cpp)"""

LIST = """\b
Examples:
  $ cairn list
  $ cairn ls --json"""

SHOW = """\b
Examples:
  $ cairn show gemma3:270m
  $ cairn show gemma3:270m --modelfile
  $ cairn show gemma3:270m --json"""

CP = """\b
Examples:
  $ cairn cp gemma3:270m mymodel:latest
  $ cairn cp gemma3:270m 127.0.0.1:5000/lab/gemma3:270m"""

RM = """\b
Examples:
  $ cairn rm mymodel
  $ cairn rm mymodel gemma3:270m --grace 0"""

PRUNE = """\b
Examples:
  $ cairn prune --dry-run
  $ cairn prune --grace 0"""

VERIFY = """\b
Examples:
  $ cairn verify
  $ cairn verify gemma3:270m --repair
  $ cairn verify mymodel --key pub.pem --rehash
  $ cairn verify mymodel --key pub.pem --signature model.sig"""

SIGN = """\b
Examples:
  $ cairn sign mymodel --key key.pem
  $ cairn sign mymodel --key key.pem --cert signer.pem --chain ca.pem
  $ cairn sign mymodel --key key.pem -o model.sig"""

PULL = """\b
Examples:
  $ cairn pull gemma3:270m
  $ cairn pull 127.0.0.1:5000/lab/gemma3:270m --insecure
  $ cairn pull ghcr.io/lab/gemma3@sha256:<digest>
  $ cairn pull gemma3:270m --limit-rate 10M"""

PUSH = """\b
Examples:
  $ cairn push mymodel 127.0.0.1:5000/lab/mymodel:1 --insecure
  $ cairn push gemma3:270m ghcr.io/lab/gemma3:270m --format oci
  $ cairn push 127.0.0.1:5000/lab/mymodel:1 --insecure"""

LOGIN = """\b
Examples:
  $ cairn login ghcr.io -u me
  $ echo "$TOKEN" | cairn login ghcr.io -u me --password-stdin"""

LOGOUT = """\b
Examples:
  $ cairn logout ghcr.io"""

EXPORT = """\b
Examples:
  $ cairn export gemma3:270m -o gemma3.tar.zst
  $ cairn export gemma3:270m mymodel -o layout/ --format oci
  $ cairn export gemma3:270m -o - | ssh host cairn import -"""

IMPORT = """\b
Examples:
  $ cairn import gemma3.tar.zst
  $ cairn import layout/ --name mymodel:1"""

SYNC = """\b
Examples:
  $ cairn sync 127.0.0.1:5000/lab/gemma3 ghcr.io/lab --dest-insecure
  $ cairn sync models.yaml offline.tar.zst
  $ cairn sync ghcr.io/lab/gemma3:270m 127.0.0.1:5000 --dest-insecure --dry-run"""

RUN = """\b
Examples:
  $ cairn run gemma3:270m
  $ cairn run gemma3:270m why is the sky blue
  $ cat notes.txt | cairn run gemma3:270m "summarize:"
  $ cairn run --verbose -p temperature=0 gemma3:270m hello"""

RUNTIMES = """\b
Examples:
  $ cairn runtimes
  $ cairn runtimes --json"""

PS = """\b
Examples:
  $ cairn ps
  $ cairn ps --json"""

STOP = """\b
Examples:
  $ cairn stop gemma3:270m"""

COMPLETION = """\b
Examples:
  $ eval "$(cairn completion bash)"
  $ cairn completion fish > ~/.config/fish/completions/cairn.fish"""

REGISTRY = """\b
Examples:
  $ cairn registry serve
  $ cairn registry serve --help"""

REGISTRY_SERVE = """\b
Examples:
  $ cairn registry serve --addr 127.0.0.1:5000
  $ cairn registry serve --addr :5000 --htpasswd htpasswd --public-read
  $ cairn registry serve --upstream https://registry.ollama.ai --quota 50G"""

SERVE = """\b
Examples:
  $ cairn serve
  $ CAIRN_HOST=0.0.0.0:11434 CAIRN_API_KEYS=secret cairn serve"""
