"""The README stays true: its reference is the CLI's, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from skor_bridge import reference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_readme_reference_matches_the_cli():
    # When the reference is rendered from the CLI, it is what the README holds
    assert reference.replace_in(README, reference.render()) == README, (
        "README reference is stale: run python -m skor_bridge.reference --write README.md"
    )


def test_the_two_setup_commands_are_make_targets():
    block = README.split("## Try it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "install", "lint", "bench", "image"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_option_the_readme_mentions_exists():
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", README))
    text = reference.render()
    known = set(re.findall(r"`(--[a-z][a-z-]+)`", text))
    known |= {"--single-transaction", "--help", "--write"}
    assert documented <= known, sorted(documented - known)
