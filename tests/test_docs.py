"""The README stays short and true: at most 14,000 bytes, and every script, config and file it names exists.
(The trainers' diff it tells learners to run is checked in tests/test_train.py.)"""

import os
import re

from conftest import ROOT


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_the_docs_keep_their_caps():
    """Each document holds what it is for, and the story of a measurement goes to the development log."""
    caps = {"README.md": 14_000, "experiments/README.md": 15_000, "dev/LOG.md": 32_000}
    sizes = {name: os.path.getsize(os.path.join(ROOT, name)) for name in caps}
    assert all(sizes[name] <= cap for name, cap in caps.items()), sizes
    for name in ("README.md", "experiments/README.md"):  # and no figure left to fill in
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert "{{" not in f.read(), f"{name} holds a placeholder"


def test_ci_runs_the_readmes_set_up_and_test_commands():
    """The README's install line, word for word, and its test command: what CI runs is what a newcomer types."""
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read().splitlines()
    setup = re.search(r"## Set up\n\n```bash\n(.*?)```", readme(), flags=re.S).group(1).splitlines()
    install = [line.split("#")[0].strip() for line in setup if "requirements" in line]
    assert install == ["pip install -r requirements-dev.txt"] and install[0] in ci
    assert any(line.split("#")[0].strip() == "python -m pytest" for line in setup)
    assert any(line.startswith("python -m pytest") and "-m slow" not in line for line in ci)


def test_every_file_the_readme_names_exists():
    names = set(re.findall(r"`([\w/.-]+\.(?:py|md|json))`", readme()))
    names |= set(re.findall(r"(?:python|torchrun [^\n]*?) ([\w/]+\.py)", readme()))
    names |= set(re.findall(r"\]\(([\w/.-]+\.md)", readme()))
    local = {n for n in names if "/" in n or os.path.exists(os.path.join(ROOT, n)) or n.endswith(".py")}
    generated = {"meta.json", "alpaca_data.json", "my_data.json"}  # files a user makes or downloads
    folders = ("", "configs", "experiments")  # the file table names configs by their own names
    missing = sorted(n for n in local - generated if not any(os.path.exists(os.path.join(ROOT, d, n)) for d in folders))
    assert not missing, f"README.md names files that do not exist: {missing}"
