"""``cairn create -q/--quantize TYPE`` (issue 15, item 3), with the real Gemma 3 270M.

The Q4_K_M model is requantized once per type (module-scoped: a few seconds
each) and the results looked at by the tests below; the failure cases each
run a create of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GEMMA_TEMPLATE, Runner, cairn_env, foreground, modelfile
from tests.ggufmaker import write_gguf
from tests.runtime_plugins.test_run import require_llama

WARNING = (
    "warning: requantizing Q4_K_M weights to {target} loses quality:"
    " quantize from F16 or F32 weights when you can"
)
SHORT = ("-p", "num_predict=8")


@dataclass
class Made:
    store: Path
    work: Path
    q8: subprocess.CompletedProcess[str]
    q4_0: subprocess.CompletedProcess[str]

    def cairn(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "cairn", *args],
            env=cairn_env(self.store),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert "Traceback" not in done.stdout + done.stderr
        if check:
            assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Made:
    """gemma3:270m (Q4_K_M), gemma3:q8 quantized FROM it, gemma3:q4_0 FROM the GGUF file."""
    require_llama()
    work = tmp_path_factory.mktemp("quantize")
    store = work / "models"
    store.mkdir()
    model = Made(store, work, None, None)  # type: ignore[arg-type]
    modelfile(
        work,
        f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
        "PARAMETER seed 42\nPARAMETER stop <end_of_turn>\n",
        "Modelfile.base",
    )
    model.cairn("create", "gemma3:270m", "--quiet", "-f", str(work / "Modelfile.base"))
    modelfile(work, "FROM gemma3:270m\n", "Modelfile.q8")
    started = time.monotonic()
    model.q8 = model.cairn("create", "gemma3:q8", "-q", "q8_0", "-f", str(work / "Modelfile.q8"))
    print(
        f"\nrequantize Q4_K_M -> Q8_0 (create, whole process): {time.monotonic() - started:.2f} s"
    )
    modelfile(
        work,
        f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
        "PARAMETER seed 42\nPARAMETER stop <end_of_turn>\n",
        "Modelfile.q4_0",
    )
    started = time.monotonic()
    model.q4_0 = model.cairn(
        "create", "gemma3:q4_0", "--quantize", "Q4_0", "--quiet", "-f", str(work / "Modelfile.q4_0")
    )
    print(f"requantize Q4_K_M -> Q4_0 (create, whole process): {time.monotonic() - started:.2f} s")
    return model


def leftovers(store: Path) -> list[str]:
    """What is left in the store's temp folder."""
    tmp = store / ".cairn" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def blobs(store: Path) -> set[str]:
    folder = store / "blobs"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def manifest(store: Path, tag: str) -> dict[str, object]:
    path = store / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / tag
    value: dict[str, object] = json.loads(path.read_bytes())
    return value


def weights_digest(store: Path, tag: str) -> str:
    layers = manifest(store, tag)["layers"]
    assert isinstance(layers, list)
    (digest,) = [d["digest"] for d in layers if d["mediaType"].endswith(".model")]
    assert isinstance(digest, str)
    return digest


def test_requantized_to_q8_0_says_so_and_shows_it(made: Made) -> None:
    assert made.q8.stderr.splitlines() == [
        "gathering model components",
        "using model gemma3:270m",
        WARNING.format(target="Q8_0"),
        "quantizing Q4_K_M model to Q8_0",
        "writing manifest",
        "success",
    ]
    assert "quantization        Q8_0" in made.cairn("show", "gemma3:q8").stdout
    shown = json.loads(made.cairn("show", "gemma3:q8", "--json").stdout)
    assert shown["details"]["quantization_level"] == "Q8_0"
    assert shown["model_info"]["general.file_type"] == 7  # what the new GGUF itself says
    assert leftovers(made.store) == []


def test_quiet_still_warns_and_q4_0_is_made_from_the_file(made: Made) -> None:
    assert made.q4_0.stderr.splitlines() == [WARNING.format(target="Q4_0")]
    assert "quantization        Q4_0" in made.cairn("show", "gemma3:q4_0").stdout
    shown = json.loads(made.cairn("show", "gemma3:q4_0", "--json").stdout)
    assert shown["model_info"]["general.file_type"] == 2


def test_quantized_blobs_are_whole_and_named_by_their_bytes(made: Made) -> None:
    original = weights_digest(made.store, "270m")
    for tag, file_type in (("q8", "Q8_0"), ("q4_0", "Q4_0")):
        digest = weights_digest(made.store, tag)
        assert digest != original
        blob = made.store / "blobs" / digest.replace(":", "-")
        with blob.open("rb") as f:
            assert "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == digest
        config = manifest(made.store, tag)["config"]
        assert isinstance(config, dict)
        body = (made.store / "blobs" / config["digest"].replace(":", "-")).read_bytes()
        assert json.loads(body)["file_type"] == file_type
    assert made.cairn("verify").stdout.strip().endswith("all intact")


def test_quantized_models_answer(made: Made) -> None:
    for model in ("gemma3:q8", "gemma3:q4_0"):
        first = made.cairn("run", model, "Name a colour.", *SHORT)
        again = made.cairn("run", model, "Name a colour.", *SHORT)
        assert first.stdout.strip() and first.stdout == again.stdout


def test_the_type_it_has_already_is_kept(made: Made) -> None:
    modelfile(made.work, "FROM gemma3:270m\n", "Modelfile.same")
    same = made.cairn(
        "create", "gemma3:same", "-q", "q4_k_m", "-f", str(made.work / "Modelfile.same")
    )
    assert same.stderr.splitlines() == [
        "gathering model components",
        "using model gemma3:270m",
        "the model is Q4_K_M already: it is kept as it is",
        "writing manifest",
        "success",
    ]
    assert weights_digest(made.store, "same") == weights_digest(made.store, "270m")
    # Q4_K is llama-quantize's (and Ollama's) short name for Q4_K_M.
    short = made.cairn(
        "create", "gemma3:same", "-q", "q4_k", "-f", str(made.work / "Modelfile.same")
    )
    assert "the model is Q4_K_M already: it is kept as it is" in short.stderr


def tiny_llama(path: Path) -> Path:
    """A GGUF of F32 weights of llama's shape (one block), small enough to quantize at once."""
    e, f, v = 64, 128, 32
    metadata = {
        "general.architecture": "llama",
        "general.file_type": 0,
        "llama.context_length": 128,
        "llama.embedding_length": e,
        "llama.block_count": 1,
        "llama.feed_forward_length": f,
        "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
    }
    shapes = {"token_embd": (e, v), "output_norm": (e,), "output": (e, v)}
    shapes.update({f"blk.0.{n}": (e,) for n in ("attn_norm", "ffn_norm")})
    shapes.update({f"blk.0.attn_{n}": (e, e) for n in ("q", "k", "v", "output")})
    shapes.update({"blk.0.ffn_gate": (e, f), "blk.0.ffn_up": (e, f), "blk.0.ffn_down": (f, e)})
    tensors = [(f"{name}.weight", shape) for name, shape in shapes.items()]
    return write_gguf(path, metadata=metadata, tensors=tensors, fill=struct.pack("<f", 0.5))


def test_f32_weights_quantize_without_a_warning(cairn: Runner, store: Path, tmp_path: Path) -> None:
    require_llama()
    source = modelfile(tmp_path, f"FROM {tiny_llama(tmp_path / 'llama.gguf')}\n")
    done = cairn("create", "tiny:q8", "-q", "Q8_0", "-f", str(source))
    assert done.stderr.splitlines() == [
        "gathering model components",
        "quantizing F32 model to Q8_0",
        "parsed GGUF: llama 45K",
        "writing manifest",
        "success",
    ]
    assert "quantization        Q8_0" in cairn("show", "tiny:q8").stdout
    assert leftovers(store) == []
    assert len(blobs(store)) == 2  # the quantized weights and the config: no F32 copy


def test_an_unknown_type_is_one_line(cairn: Runner, store: Path, tmp_path: Path) -> None:
    source = modelfile(tmp_path, f"FROM {write_gguf(tmp_path / 'tiny.gguf')}\n")
    done = cairn("create", "x:1", "-q", "q9_z", "-f", str(source), check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: unknown quantization type 'q9_z': use one of F32, F16, BF16, Q8_0, Q6_K,"
        " Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K"
    ]
    assert cairn("list").stdout.splitlines()[1:] == []
    bare = cairn("create", "x:1", "-f", str(source), "-q", check=False)
    assert bare.returncode == 2 and "Option '-q' requires an argument" in bare.stderr
    # -q was --quiet before: the old habit is told what -q is now.
    old = cairn("create", "x:1", "-q", "-f", str(source), check=False)
    assert old.returncode == 2
    assert old.stderr.splitlines() == [
        "Error: Invalid value for '-q' / '--quantize': '-f' is not a type: -q is --quantize"
        " TYPE, as in Ollama (--quiet is spelled out) Try 'cairn create --help' for help."
    ]
    assert "Traceback" not in done.stderr + bare.stderr + old.stderr


def test_a_failed_quantize_leaves_nothing(cairn: Runner, store: Path, tmp_path: Path) -> None:
    require_llama()
    # F32 weights, but of an architecture llama.cpp does not know: it refuses them.
    source = modelfile(tmp_path, f"FROM {write_gguf(tmp_path / 'tiny.gguf', fill=b'tiny')}\n")
    done = cairn("create", "x:1", "-q", "q8_0", "-f", str(source), check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "Error: quantizing to Q8_0 failed: unknown model architecture: 'tiny'"
    )
    assert "Traceback" not in done.stderr
    assert leftovers(store) == []
    assert blobs(store) == set()
    assert cairn("list").stdout.splitlines()[1:] == []


def _quantizer(parent: subprocess.Popen[str]) -> int:
    """The pid of the quantizer child of ``parent``, once it runs."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert parent.poll() is None, "create ended before its quantizer started"
        for task in Path(f"/proc/{parent.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"cairn.quantize" in cmdline:
                    return int(pid)
        time.sleep(0.01)
    raise AssertionError("no quantizer started")


def _start(store: Path, tmp_path: Path, gemma_gguf: Path) -> subprocess.Popen[str]:
    source = modelfile(tmp_path, f"FROM {gemma_gguf}\n")
    return subprocess.Popen(
        [sys.executable, "-m", "cairn", "create", "x:1", "-q", "q8_0", "-f", str(source)],
        env=cairn_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground,
    )


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie no one reaped yet counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_ctrl_c_stops_the_quantizer_and_leaves_nothing(
    store: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    require_llama()
    proc = _start(store, tmp_path, gemma_gguf)
    child = _quantizer(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "Interrupted"
    assert "Traceback" not in out + err
    assert _gone(child)  # killed, not left to finish
    assert leftovers(store) == []
    assert blobs(store) == set()


def test_a_crashed_quantizer_is_one_line_and_leaves_nothing(
    store: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    require_llama()
    proc = _start(store, tmp_path, gemma_gguf)
    os.kill(_quantizer(proc), signal.SIGKILL)  # as the kernel's OOM killer, or an abort()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.splitlines()[-1].startswith(
        "Error: llama.cpp died while quantizing to Q8_0 (SIGKILL)"
    )
    assert "Traceback" not in out + err
    assert leftovers(store) == []
    assert blobs(store) == set()


def test_a_killed_create_takes_its_quantizer_along(
    cairn: Runner, store: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    require_llama()
    proc = _start(store, tmp_path, gemma_gguf)
    child = _quantizer(proc)
    proc.kill()  # no finally runs: the child must notice by itself
    proc.communicate(timeout=120)
    deadline = time.monotonic() + 60
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)
    assert blobs(store) == set()  # nothing half-written became a blob
    pruned = cairn("prune")  # the folder it left is held by no one: prune takes it
    assert "removed partial file" in pruned.stdout
    assert leftovers(store) == []
