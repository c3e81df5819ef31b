"""Hostile templates (Go and Jinja) end in a TemplateError naming the limit, fast and small.

Each runs in a subprocess under an address-space limit, and the test
asserts its time and its peak memory (VmHWM, the process's own: a limit
alone would turn a huge allocation into a MemoryError that could pass for
a refusal).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cairn.runtime_plugins.prompt import Message, build_prompt
from cairn.template import jinja

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 1 << 30
_CHILD = """
import json, sys, time
from cairn.errors import TemplateError
from cairn.runtime_plugins.prompt import Message, build_prompt
kind, source = sys.argv[1], sys.stdin.read()
started = time.monotonic()
try:
    if kind == "go":
        out = build_prompt(source, [Message("user", "hi")], system="S")
    else:
        out = build_prompt(None, [Message("user", "hi")], chat_template=source)
    said = {"output": out[:200]}
except TemplateError as exc:
    said = {"error": str(exc)}
said["seconds"] = time.monotonic() - started
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
said["peak_mib"] = int(peak) // 1024
print(json.dumps(said))
"""


def bounded(kind: str, source: str) -> dict[str, object]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind],
        input=source,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    said: dict[str, object] = json.loads(done.stdout)
    assert float(said["seconds"]) < 5, said  # type: ignore[arg-type]
    assert int(said["peak_mib"]) < 200, said  # type: ignore[call-overload]
    return said


DOUBLING_GO = '{{ $x := "ab" }}' + "{{ $x = print $x $x }}" * 40 + "{{ len $x }}"
# Found by a second attack: a value 90 times the budget built before its size was
# looked at, and a step that copies a megabyte each time.
WIDE_PRINT_GO = (
    '{{ $x := "a" }}{{ range 23 }}{{ $x = print $x $x }}{{ end }}{{ $y := print'
    + " $x" * 90
    + " }}"
)
SLOW_JSON_GO = (
    '{{ $x := "\\u0001" }}{{ range 20 }}{{ $x = print $x $x }}{{ end }}'
    "{{ range 100000 }}{{ $y := json $x }}{{ end }}"
)
SHARED_LIST = "{% set x = ['aaaaaaaa'] %}" + "{% set x = [x, x] %}" * 24
DOUBLING_JINJA = "{% set x = 'ab' %}" + "{% set x = x ~ x %}" * 40 + "{{ x|length }}"
DOUBLING_NAMESPACE = (
    "{% set ns = namespace(x='ab') %}{% for i in range(40) %}"
    "{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}"
)


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("{{ range 1000000000 }}{{ end }}", "budget of 250000 steps"),
        ("{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}", "budget of 250000 steps"),
        ('{{ printf "%999999999s" "x" }}', "printf would build a value of about 1000000"),
        ('{{ printf "%99999s" "x" }}', "a field wider than 10000"),
        ('{{ printf "%*d" 999999999 1 }}', "a field wider than 10000"),
        (DOUBLING_GO, "print would build a value of about 16777216"),
        (WIDE_PRINT_GO, "print would build a value of about"),
        (SLOW_JSON_GO, "the template ran past its budget of"),
        ("{{" * 20_000, "unclosed action"),
        ("{{ .Prompt.__class__.__mro__ }}", "cannot read field __class__ of a string"),
        ("{{ .Prompt.__class__.__subclasses__ }}", "cannot read field"),
        ('{{ "\\x" }}', "malformed string"),
        ("{{ " + "9" * 5000 + " }}", "a number of 5000 digits"),
        ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "parentheses nest deeper than 100"),
        ("{{ if 1 }}" * 3000 + "{{ end }}" * 3000, "blocks nest deeper than 100"),
        ("{{ index .Messages 5 }}", "index"),
        ("{{ lt 1 .Prompt }}", "lt"),
        ("x" * (2 << 20), "more than the 65536 allowed"),
        ("{{ zz " + ".a " * 20_000 + "}}", "function 'zz' not defined"),
    ],
)
def test_a_hostile_go_template_is_refused_within_bounds(source: str, refusal: str) -> None:
    said = bounded("go", source)
    assert refusal in str(said.get("error")), said


def test_a_template_error_quotes_little_of_the_template() -> None:
    said = bounded("go", "{{ zz " + ".a " * 20_000 + "}}")
    assert len(str(said["error"])) < 300, len(str(said["error"]))


def test_the_go_engine_reaches_no_python_attribute() -> None:
    said = bounded("go", "{{ .__class__ }}|{{ $.__init__ }}|{{ .System.upper }}")
    assert "class" not in str(said.get("output", "")), said
    assert "cannot read field upper of a string" in str(said.get("error")), said
    assert bounded("go", "{{ .__class__ }}{{ $.__dict__ }}")["output"] == "<no value><no value>"


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("{{ lipsum(10**6) }}", "'lipsum' is undefined"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "budget of 250000 steps",
        ),
        ("{{ 9**(9**9) }}", "to the power 387420489"),
        ("{{ '%999999999s'|format(1) }}", "a field wider than 10000"),
        ("{{ '{:>999999999}'.format(1) }}", "a field wider than 10000"),
        ("{{ 'a'|center(10**9) }}", "a width of 1000000000"),
        ("{{ 'a'.ljust(10**9) }}", "a width of 1000000000"),
        ("{{ range(10**9)|list|length }}", "budget of 250000 steps"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurses too deeply"),
        ("{{ 1/0 }}", "ZeroDivisionError"),
        ("{{ 1 + 'a' }}", "TypeError"),
        ("{{ 'a'*10**10 }}", "more than its budget of 8388608"),
        ("{{ 'a'.replace('', 'bbbbbbbb' * 1000000) }}", "would build a value of 16000001"),
        (DOUBLING_JINJA, "more than its budget of 8388608"),
        (DOUBLING_NAMESPACE, "more than its budget of 8388608"),
        ("{{ raise_exception('no tools here') }}", "says: no tools here"),
        (
            "{% set l = ('ab' * 1000000)|list %}{% for i in range(30) %}"
            "{{ l|sort|length }}{% endfor %}",
            "a list of 2000000 items",
        ),
        (
            "{% set l = ('ab' * 200000)|list %}{% for i in range(100) %}"
            "{{ l|sort|length }}{% endfor %}",
            "ran past its budget",
        ),
        ("{{ ('a'.encode() * 900000000)|length }}", "would build a value of 900000000"),
        ("{% set s = 'a' * 8000000 %}{{ ([s] * 100)|join }}", "would build a value of"),
        (
            "{% set s = 'a' * 8000000 %}{% set b %}"
            + "{{ s }}" * 100
            + "{% endset %}{{ b|length }}",
            "wrote more than its budget",
        ),
        (
            "{% set s = 'a' * 8000000 %}{% filter upper %}" + "{{ s }}" * 100 + "{% endfilter %}",
            "wrote more than its budget",
        ),
        ("{% set s = 'a' * 8000000 %}{{ " + " ~ ".join(["s"] * 100) + " }}", "would build"),
        ("{{ a }}" * 140_000, "more than the 65536 allowed"),
        # A third attack: a list shared with itself (small to hold, huge as text),
        # loops over values the template built, filters that built before sizing.
        (SHARED_LIST + "{{ x|tojson }}", "would build a value of more than 8388608"),
        (SHARED_LIST + "{{ x }}", "would build a value of more than 8388608"),
        (
            "{% for c in 'a' * 20000 %}{% for d in 'a' * 20000 %}{% endfor %}{% endfor %}",
            "ran past its budget",
        ),
        ("{{ ('a' * 1000000)|replace('a', 'b' * 12) }}", "would build a value of 12000000"),
        ("{{ ('a ' * 1000000)|wordwrap(1, wrapstring='x' * 1000) }}", "would build a value"),
        ("{{ [1]|tojson(indent=10000000) }}", "a width of 10000000"),
        ("{{ ('a' * 8000000)|batch(1)|list|length }}", "ran past its budget"),
        ("{{ ([[1] * 8000] * 8000)|sum(start=[]) }}", "more than"),
        ("{% for %}", "failed"),
    ],
)
def test_a_hostile_jinja_chat_template_is_refused_within_bounds(source: str, refusal: str) -> None:
    said = bounded("jinja", source)
    assert refusal in str(said.get("error")), said


CONVERSATION = [
    Message("system", "S"),
    Message("user", "Hi"),
    Message("assistant", "Hello"),
    Message("user", "Why?"),
]


def test_real_jinja_chat_templates_render_within_their_budgets() -> None:
    variables = {
        "messages": [{"role": m.role, "content": m.content} for m in CONVERSATION],
        "add_generation_prompt": True,
        "bos_token": "<bos>",
    }
    gemma = jinja.render((FIXTURES / "gemma3.jinja").read_text(), variables)
    assert gemma == (
        "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )
    llama = jinja.render((FIXTURES / "llama3.jinja").read_text(), variables)
    assert llama.startswith("<bos><|start_header_id|>system<|end_header_id|>\n\nToday Date: ")
    assert llama.endswith("Why?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_the_guarded_filters_still_do_their_work() -> None:
    variables = {"messages": [{"role": "user", "content": "hi there"}, {"role": "model"}]}
    cases = {
        "{{ messages|map(attribute='role')|join(', ') }}": "user, model",
        "{{ messages|join(',', attribute='role') }}": "user,model",
        "{{ 'a b'|replace('a', 'x') }}": "x b",
        "{{ messages[0]|tojson }}": '{"content": "hi there", "role": "user"}',
        "{{ [1, 2]|sum }}": "3",
        "{{ 'aaa bbb'|wordwrap(3) }}": "aaa\nbbb",
        "{{ '%s!'|format(1) }}": "1!",
        "{{ 'a'|center(5) }}": "  a  ",
        "{% for m in messages %}{{ loop.index }}{% endfor %}": "12",
    }
    for source, expected in cases.items():
        assert jinja.render(source, variables) == expected, source


def test_a_long_real_conversation_fits_the_budgets() -> None:
    """A thousand turns through the Go and Jinja templates: far inside every limit."""
    turns = [Message("user" if i % 2 == 0 else "assistant", f"turn {i} " * 50) for i in range(1000)]
    turns.append(Message("user", "end"))
    go = build_prompt((FIXTURES / "gemma3.tmpl").read_text(), turns)
    assert go.count("<start_of_turn>") == 1002
    chat = (FIXTURES / "gemma3.jinja").read_text()
    rendered = build_prompt(None, turns, chat_template=chat)
    assert rendered.count("<start_of_turn>") == 1002
