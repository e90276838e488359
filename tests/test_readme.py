"""The README's example runs as written and takes the step its comments describe."""

import pathlib
import re

import numpy as np
from _tol import assert_close_scaled

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_takes_the_documented_step():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README.md has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
  params = namespace["params"]
  # Step 0: lr 0.1, gradient 1, coupled L2 5e-4 on the kernel only (bias excluded by the mask).
  assert_close_scaled(params["dense"]["kernel"], 1.0 - 0.1 * (1.0 + 5e-4 * 1.0), c=16)
  assert_close_scaled(params["dense"]["bias"], 0.0 - 0.1 * 1.0, c=16)


def _shell_lines():
  """The README's shell commands in order, comments stripped."""
  for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
    for line in block.splitlines():
      line = line.split("#", 1)[0].strip()
      if line:
        yield line


def test_readme_enters_the_environment_before_its_bare_python_commands():
  # `python` and `pip` outside the two scripts need the .venv the scripts made; a fresh shell has no jax.
  lines = list(_shell_lines())
  bare = [i for i, line in enumerate(lines) if re.match(r"(python|pip)\b", line)]
  assert bare, "the README shows no python command"
  activate = [i for i, line in enumerate(lines) if line == "source .venv/bin/activate"]
  assert activate and activate[0] < bare[0], (
      f"the README runs {lines[bare[0]]!r} without entering .venv first (source .venv/bin/activate)")


def test_every_experiments_command_in_the_readme_passes_the_cli_checks(tmp_path, monkeypatch):
  # Everything a run checks before work starts (config, overrides, data, model, optimizers), for each
  # `python -m experiments ...` line as written; none trains.
  import shlex

  from experiments import checks, cli, studies
  monkeypatch.chdir(tmp_path)  # default work directories land here, not in the checkout
  commands = [shlex.split(line)[3:] for line in _shell_lines() if line.startswith("python -m experiments ")]
  assert len(commands) >= 3
  for argv in commands:
    args = cli._parser().parse_args(argv)  # pylint: disable=protected-access
    if args.command == "list":
      continue
    if args.command == "reproduce":
      checks.check_reproduce(str(tmp_path / "reproduce"), quick=args.quick, seeds=args.seeds,
                             overrides=args.overrides)
    else:
      checks.check_study(studies.get(args.command), args.workdir or str(tmp_path / args.command),
                         quick=args.quick, seeds=args.seeds, overrides=args.overrides)
