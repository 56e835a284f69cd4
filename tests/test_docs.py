""" The docs stay true to the tree: every relative link in the markdown resolves, and every repository
path that a document, a docstring or a comment names exists. """
import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

from helpers import REPO

# repository paths as prose names them, e.g. timm_cada/ops/functional.py or train/configs/
PATH = re.compile(r'(?<![\w./-])((?:timm_cada|train|weights|benchmarks|docs|tests)/[\w./]*[\w/])')
# a markdown file named without its folder, e.g. MODEL_CARD.md
BARE_MD = re.compile(r'(?<![\w./-])([\w-]+\.md)\b')
WRITTEN_BY_TOOLS = {'ablation.md'}  # train/ablate.py's output, not a file of the repository
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def tracked(suffix):
    files = subprocess.run(['git', 'ls-files', f'*{suffix}'], cwd=REPO, capture_output=True, text=True).stdout.split()
    return [REPO / f for f in files if (REPO / f).is_file()] or sorted(REPO.rglob(f'*{suffix}'))


def prose_of_python(path: Path) -> str:
    """The comments and docstrings of a Python file."""
    source = path.read_text(encoding='utf-8')
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node) or '')
    return '\n'.join(parts)


MARKDOWN = [p for p in tracked('.md') if '.cache' not in p.parts]
PYTHON = [p for p in tracked('.py') if '.cache' not in p.parts]


def test_design_doc_is_in_the_repository():
    assert (REPO / 'docs' / 'design.md').is_file()
    for doc in ('README.md', 'MODEL_CARD.md'):
        assert 'docs/design.md' in (REPO / doc).read_text(encoding='utf-8'), doc


@pytest.mark.parametrize('doc', MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding='utf-8')
    broken = [t for t in LINK.findall(text)
              if not re.match(r'[a-z]+:|#', t) and not (doc.parent / t.split('#')[0]).exists()]
    assert not broken, f'{doc.relative_to(REPO)} links to missing {broken}'


@pytest.mark.parametrize('source', MARKDOWN + PYTHON, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_exist(source):
    text = source.read_text(encoding='utf-8') if source.suffix == '.md' else prose_of_python(source)
    missing = sorted({p for p in PATH.findall(text) if not (REPO / p).exists()}
                     | {m for m in BARE_MD.findall(text) if m not in {d.name for d in MARKDOWN} | WRITTEN_BY_TOOLS})
    assert not missing, f'{source.relative_to(REPO)} names {missing}, which do not exist'
