"""The README's commands and Python examples, run as pasted in a copy of the repository's configs and
data, in their order; training commands only shortened (``--trainer.max_steps``), each with a time
limit so that a hang fails. The DDP command has its own test (tests/test_train_defects.py)."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SHORT = ["--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]
NOT_HERE = ("make ", "pip ", "python3 -m venv", "python -m pytest")  # set-up and the suite itself


def blocks(language: str):
    text = open(README, encoding="utf-8").read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_commands():
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                yield line


def run(argv, cwd, limit=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} did not finish within {limit} s")
    assert out.returncode == 0, f"{' '.join(argv)}\n{out.stderr[-3000:]}"
    return out


def as_argv(command: str):
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "e3pot":
        argv[:1] = [sys.executable, "-m", "e3pot"]
    if "train.py" in argv[1:2]:
        argv[1] = os.path.join(ROOT, "train.py")
        if "--print_config" not in argv:
            argv += SHORT
    return argv


@pytest.mark.slow
def test_readme_commands_run_as_pasted(tmp_path):
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    shutil.copytree(os.path.join(ROOT, "data"), tmp_path / "data")
    # what `make example` makes (its recipe, shortened): the model the later commands use
    run([sys.executable, os.path.join(ROOT, "train.py"), "--config", "configs/example.yaml", "--overwrite", *SHORT],
        tmp_path)
    assert (tmp_path / "models" / "example.pt").exists()
    ran = []
    for command in shell_commands():
        if command.startswith(NOT_HERE) or "--trainer.strategy ddp" in command:
            continue
        run(as_argv(command), tmp_path)
        ran.append(command.split()[:2])
    assert ["e3pot", "predict"] in ran and ["e3pot", "audit"] in ran and ["python", "train.py"] in ran
    assert (tmp_path / "predictions.extxyz").exists() and (tmp_path / "models" / "example.ts").exists()
    for k, code in enumerate(blocks("python")):
        script = tmp_path / f"readme_example_{k}.py"
        script.write_text(code)
        run([sys.executable, str(script)], tmp_path)
