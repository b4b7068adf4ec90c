"""The commands and Python examples of the README and of docs/, run as pasted in a copy of the
repository's configs, data and train.py, in their order; training commands only shortened
(``--trainer.max_steps``), each with a time limit so that a hang fails.

Left to their own tests: the DDP command (tests/test_train_defects.py), ``--compile``
(tests/test_compiled.py), ``--format aoti`` (tests/test_aoti.py; minutes of compilation for the example
model); not run here: set-up and the suite itself, cluster launchers, and commands on data that is not
shipped (``/path/to``)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", "docs/training.md", "docs/using.md", "docs/lammps.md"]
SHORT = "--trainer.max_steps 2 --trainer.enable_progress_bar false"
AUDIT_SHORT = "--nve-steps 20"
# Python examples run with fewer steps and a smaller box; everything else as written
PYTHON_SHORT = {"md.run(200)": "md.run(20)", "atoms.repeat((24, 24, 24))": "atoms.repeat((4, 4, 4))"}
LEFT_OUT = ("make ", "pip ", "python3 -m venv", "python -m pytest", "srun ", "torchrun ")
ELSEWHERE = ("--trainer.strategy ddp", "--compile", "compile=True", "--format aoti", "/path/to")


def blocks(document: str, language: str):
    text = open(os.path.join(ROOT, document), encoding="utf-8").read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_commands(document: str):
    """Every command line of a document's bash blocks (continuations joined, comments dropped)."""
    for block in blocks(document, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("  #")[0].split())
            if line and not line.startswith("#"):
                yield line


def shortened(command: str) -> str:
    if "train.py" in command and "--print_config" not in command and "--help" not in command:
        if command.endswith("; done"):  # a loop of trainings: each one shortened
            return f"{command[:-len('; done')]} {SHORT}; done"
        return f"{command} {SHORT}"
    if "e3pot audit" in command:
        return re.sub(r"(e3pot audit [^>&]*?)(\s*(>|&&|$))", rf"\1 {AUDIT_SHORT}\2", command, count=1)
    return command


def shortened_python(code: str) -> str:
    for long, short in PYTHON_SHORT.items():
        code = code.replace(long, short)
    return code


def run(command: str, cwd, limit=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    try:
        out = subprocess.run(["bash", "-c", f"set -e -o pipefail; {command}"], cwd=cwd, capture_output=True,
                             text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} did not finish within {limit} s")
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def example_model(tmp_path_factory):
    """The example model as ``make example`` makes it (its recipe, shortened), made once."""
    folder = tmp_path_factory.mktemp("example")
    shutil.copytree(os.path.join(ROOT, "configs"), folder / "configs")
    shutil.copytree(os.path.join(ROOT, "data"), folder / "data")
    shutil.copy(os.path.join(ROOT, "train.py"), folder / "train.py")
    run(shortened("python train.py --config configs/example.yaml --overwrite"), folder)
    assert (folder / "models" / "example.pt").exists()
    return folder


@pytest.fixture
def workdir(tmp_path, example_model):
    """A fresh copy of what the documents' commands use, with the example model in models/."""
    for name in ("configs", "data", "models"):
        shutil.copytree(example_model / name, tmp_path / name)
    shutil.copy(example_model / "train.py", tmp_path / "train.py")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_commands_run_as_pasted(document, workdir):
    ran = []
    for command in shell_commands(document):
        if command.startswith(LEFT_OUT) or any(mark in command for mark in ELSEWHERE):
            continue
        run(shortened(command), workdir)
        ran.append(command)
    assert ran, f"no command of {document} ran"
    for k, code in enumerate(blocks(document, "python")):
        if any(mark in code for mark in ELSEWHERE):
            continue
        script = workdir / f"example_{k}.py"
        script.write_text(shortened_python(code))
        run(f"python {script.name}", workdir)


def test_the_readme_commands_are_found():
    commands = list(shell_commands("README.md"))
    assert any(c.startswith("e3pot predict") for c in commands)
    assert any(c.startswith("e3pot audit") for c in commands)
    assert any("train.py" in c and "--trainer.strategy ddp" in c for c in commands)
    assert blocks("README.md", "python")
