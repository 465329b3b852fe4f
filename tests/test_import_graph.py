"""The package's imports run one way: core < layers < models < objectives < finetune, convert < trainers < cli.

data is the input side (core's level: it imports nothing else of bert_jax); inputs.py joins data to the
trainers. Walks every module's AST, so imports hidden inside functions count too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "bert_jax"

# module-name prefix -> level; a module may import only its own level or lower ones.
LEVELS = [
    ("bert_jax.core", 0), ("bert_jax.data", 0),
    ("bert_jax.layers", 1),
    ("bert_jax.models", 2),
    ("bert_jax.objectives", 3),
    ("bert_jax.finetune", 4), ("bert_jax.convert", 4), ("bert_jax.inputs", 4),
    ("bert_jax.trainers", 5),
    ("bert_jax.cli", 6), ("bert_jax.train", 6), ("bert_jax.predict", 6), ("bert_jax.__main__", 6),
]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def level(module: str) -> int:
  if module.endswith(".__main__"):
    return 6  # `python -m bert_jax.x` entry points are CLI
  for prefix, lvl in sorted(LEVELS, key=lambda p: -len(p[0])):
    if module == prefix or module.startswith(prefix + "."):
      return lvl
  raise AssertionError(f"{module} has no level in LEVELS; add it")


def _imports(path: pathlib.Path, module: str) -> set[str]:
  """bert_jax modules imported anywhere in the file (top level or inside functions)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("bert_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bert_jax"):
      for a in node.names:  # `from bert_jax.x import y` may name a module y
        candidate = f"{node.module}.{a.name}"
        is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or \
            (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
        out.add(candidate if is_module else node.module)
  return out - {module}


def graph() -> dict[str, set[str]]:
  return {_module_name(p): _imports(p, _module_name(p)) for p in PACKAGE.rglob("*.py")}


def test_no_upward_imports():
  upward = [f"{m} (level {level(m)}) imports {d} (level {level(d)})"
            for m, deps in sorted(graph().items()) for d in sorted(deps) if level(d) > level(m)]
  assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_cycles():
  full = graph()
  g = {m: {d for d in deps if d in full} for m, deps in full.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(g.get(m, ())):
      if state.get(d) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in sorted(g):
    if m not in state:
      visit(m)


def _function_level_imports(path: pathlib.Path) -> list[int]:
  """Lines of bert_jax imports that are not at module level."""
  tree = ast.parse(path.read_text())
  top = {id(n) for n in tree.body}
  lines = []
  for node in ast.walk(tree):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
             else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    if any(n.startswith("bert_jax") for n in names) and id(node) not in top:
      lines.append(node.lineno)
  return lines


def test_no_bert_jax_import_is_hidden_inside_a_function():
  hidden = {str(p.relative_to(PACKAGE.parent)): lines for p in PACKAGE.rglob("*.py")
            if (lines := _function_level_imports(p))}
  assert not hidden, f"bert_jax imports inside functions (move them to the top): {hidden}"


def test_the_checker_sees_a_hidden_upward_import(tmp_path):
  """The walk finds imports inside functions, which is where cycles used to hide."""
  f = tmp_path / "x.py"
  f.write_text("def f():\n  from bert_jax.trainers import pretrain\n  return pretrain\n")
  assert "bert_jax.trainers.pretrain" in _imports(f, "bert_jax.core.x")
  assert level("bert_jax.trainers.pretrain") > level("bert_jax.core.x")
  assert _function_level_imports(f) == [2]
