""" Recipes and KEY=VALUE options of the trainer: a YAML recipe of argument defaults, checked against the
parser, and the kwargs options (`--model-kwargs`, `--opt-kwargs`). """
import argparse
import ast
import difflib
import os
from typing import Any, Dict, Iterable, Optional, Tuple

import yaml


def parse_kwarg(text: str, option: str = '--model-kwargs') -> Tuple[str, Any]:
    """One KEY=VALUE of a kwargs option: VALUE a Python literal, a `dict(k=v, ...)` of literals, or else a
    plain string (so `mixer=box` needs no quotes)."""
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise ValueError(f'{option}: expected KEY=VALUE with KEY a Python name, got {text!r}; e.g. '
                         f'drop_rate=0.1 mixer=box \'mixer_args=dict(num_bases=4)\' \'channels=(32,64,128,256)\'')
    return key, _literal(value, f'{option} {key}')


def _literal(text: str, where: str) -> Any:
    try:
        node = ast.parse(text.strip(), mode='eval').body
    except SyntaxError:
        return text
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict':
        if node.args or any(k.arg is None for k in node.keywords):
            raise ValueError(f'{where}: dict(...) takes only KEY=VALUE pairs, got {text!r}')
        return {k.arg: _literal(ast.unparse(k.value), f'{where}.{k.arg}') for k in node.keywords}
    try:
        return ast.literal_eval(node)
    except ValueError:
        if not any(isinstance(n, ast.Call) for n in ast.walk(node)):
            return text.strip()  # e.g. a bare word: a string, as timm's ParseKwargs reads it
        raise ValueError(f'{where}: {text!r} calls something; accepted: Python literals (numbers, strings, '
                         f'tuples, lists, dicts, True/False/None), dict(KEY=VALUE, ...) or a plain word') from None


class ParseKwargs(argparse.Action):
    """argparse action for KEY=VALUE options (`parse_kwarg`); a malformed pair is an argparse error."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, dict(parse_kwarg(v, option_string) for v in values if v))
        except ValueError as e:
            parser.error(str(e))


def load_recipe(path: str, parser: argparse.ArgumentParser, forbidden: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a YAML recipe of argument defaults; every key must be an argument `dest` of `parser`.

    `forbidden` names destinations a recipe may not set (e.g. paths that belong on the command line).
    """
    if not os.path.isfile(path):
        raise ValueError(f'--config: recipe file {path} does not exist.')
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f'--config: recipe {path} is not valid YAML: {e}') from None
    if not isinstance(cfg, dict):
        raise ValueError(f'--config: recipe {path} must be a mapping of argument names to values.')
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    allowed = sorted(set(actions) - set(forbidden))
    for key, value in cfg.items():
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=3)
            hint = f' Did you mean {", ".join(hint)}?' if hint else ''
            raise ValueError(
                f'--config: recipe {path} has unknown key {key!r}.{hint} Keys are train.py argument names '
                f'with underscores, e.g. {", ".join(allowed[:6])}, ...')
        expected = _recipe_type_error(actions[key], value)
        if expected:
            raise ValueError(f'--config: recipe {path}: {key}: {value!r} is not {expected}')
    return cfg


def _recipe_type_error(action: argparse.Action, value: Any) -> Optional[str]:
    """What a recipe value for `action` should have been, or None when it fits (None always fits)."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return None if isinstance(value, bool) else 'true or false'
    if isinstance(action, ParseKwargs):
        return None if isinstance(value, dict) else 'a mapping of keyword arguments'
    kind = {int: 'an integer', float: 'a number', str: 'a string'}.get(action.type)
    if kind is None:
        return None
    fits = lambda v: (isinstance(v, action.type) or (action.type is float and isinstance(v, int))) and not isinstance(v, bool)
    if action.nargs in (None, '?'):
        return None if fits(value) else kind
    count = action.nargs if isinstance(action.nargs, int) else None
    fits_all = isinstance(value, list) and all(fits(v) for v in value)
    if fits_all and (len(value) == count if count else action.nargs == '*' or value):
        return None
    return f'a list of {count or "one or more"} {kind.split(" ", 1)[1]}s'
