"""The trust policy file: its shape, its mistakes (each an error naming it), and its scopes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cairn.errors import PolicyError
from cairn.manifests.reference import parse_reference
from cairn.signing.policy import (
    Policy,
    Requirement,
    judge,
    load_policy,
    parse_policy,
    refusal,
)


def public_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def policy(tmp_path: Path, document: Any) -> Policy:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    return load_policy(tmp_path)


def test_no_policy_file_accepts_everything(tmp_path: Path) -> None:
    loaded = load_policy(tmp_path)
    assert loaded.path is None and loaded.accepts_everything
    assert loaded.applying_to(parse_reference("gemma3")) == ("default", (Requirement("accept"),))


def test_the_longest_matching_scope_wins_whole_components_any_case(tmp_path: Path) -> None:
    public_key(tmp_path / "team.pub")
    loaded = policy(
        tmp_path,
        {
            "default": [{"type": "reject"}],
            "registries": {
                "lab.example:5000": [{"type": "accept"}],
                "lab.example:5000/team": [{"type": "signedBy", "keyPath": "team.pub"}],
                "lab.example:5000/team/open": [{"type": "accept"}],
                "ghcr.io/org/deep/er": [{"type": "reject"}],
            },
        },
    )
    assert not loaded.accepts_everything

    def scope(name: str) -> str:
        return loaded.applying_to(parse_reference(name))[0]

    assert scope("lab.example:5000/team/model:1") == "lab.example:5000/team"
    assert scope("LAB.example:5000/Team/model:1") == "lab.example:5000/team"
    assert scope("lab.example:5000/team/open:2") == "lab.example:5000/team/open"
    assert scope("lab.example:5000/teamwork/model") == "lab.example:5000"  # not a prefix match
    assert scope("lab.example:5000/other/model") == "lab.example:5000"
    assert scope("gemma3:270m") == "default"
    assert scope("ghcr.io/org/deep/er:1") == "ghcr.io/org/deep/er"
    (requirement,) = loaded.applying_to(parse_reference("lab.example:5000/team/m"))[1]
    assert requirement.kind == "signedBy" and requirement.keys[0][0] == tmp_path / "team.pub"


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ({"default": [{"type": "accept"}], "transports": {}}, "unknown key 'transports'"),
        ({"registries": {}}, "has no default list"),
        ({"default": []}, "'default' must be a non-empty list"),
        ({"default": [{"type": "insecureAcceptAnything"}]}, "unknown requirement type"),
        ({"default": [{"type": "accept", "keyPath": "x"}]}, "accept has an unknown key 'keyPath'"),
        ({"default": [{"type": "signedBy"}]}, "exactly one of keyPath, keyPaths or caPath"),
        (
            {"default": [{"type": "signedBy", "keyPath": "k.pub", "keyType": "GPGKeys"}]},
            "signedBy has an unknown key 'keyType'",
        ),
        ({"default": [{"type": "signedBy", "keyPaths": []}]}, "keyPaths must be a non-empty"),
        ({"default": [{"type": "signedBy", "keyPath": "missing.pub"}]}, "missing.pub"),
        ({"default": [{"type": "signedBy", "keyPath": "not-a-key.pub"}]}, "not-a-key.pub"),
        ({"default": [{"type": "signedBy", "keyPath": "private.pem"}]}, "private.pem"),
        ({"default": [{"type": "accept"}], "registries": {"a//b": []}}, "is not a scope"),
        ({"default": [{"type": "accept"}], "registries": []}, "registries is not an object"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_mistake_in_the_policy_is_an_error_naming_it(
    tmp_path: Path, document: Any, said: str
) -> None:
    (tmp_path / "not-a-key.pub").write_text("hello\n")
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "private.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PolicyError) as raised:
        policy(tmp_path, document)
    assert said in str(raised.value) and str(tmp_path / "policy.json") in str(raised.value)


def test_not_json_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is not JSON"):
        parse_policy(b"{default: accept", tmp_path / "policy.json")


def test_every_requirement_must_hold_and_any_listed_key_will_do(tmp_path: Path) -> None:
    one, two = public_key(tmp_path / "one.pub"), public_key(tmp_path / "two.pub")
    loaded = policy(
        tmp_path,
        {"default": [{"type": "accept"}, {"type": "signedBy", "keyPaths": ["one.pub", "two.pub"]}]},
    )
    scope, requirements = loaded.applying_to(parse_reference("m"))
    asked: list[Path] = []

    def signed_by_two(key: Any, roots: Any) -> tuple[str | None, str]:
        asked.append(key[0])
        return (str(key[0]), "") if key[0] == two else (None, "signed by another key")

    verdict = judge(requirements, scope, signed_by_two)
    assert verdict.ok and verdict.signers == (str(two),) and asked == [one, two]
    refused = judge(requirements, scope, lambda key, roots: (None, "no signature"))
    assert not refused.ok and refused.why == "no signature"
    assert refused.failed is not None and refused.failed.kind == "signedBy"
    rejected = policy(tmp_path, {"default": [{"type": "accept"}, {"type": "reject"}]})
    verdict = judge(rejected.default, "default", signed_by_two)
    assert not verdict.ok and verdict.failed == Requirement("reject")
    said = str(refusal(parse_reference("lab/m:1"), verdict))
    assert said == (
        "the trust policy refuses lab/m:1: rule reject of scope default:"
        " the policy rejects every model here"
    )
