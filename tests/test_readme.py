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
