""" The trainer's options, each declared once with the rule its values follow: the table builds the argparse
parser, checks a YAML recipe's values before they become defaults (`load_recipe`) and checks the parsed values
(`check`). Choices that timm owns are checked by asking timm's own factories. Also the KEY=VALUE options
(`--model-kwargs`, `--opt-kwargs`). """
import argparse
import ast
import dataclasses
import difflib
import math
import os
import warnings
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import yaml

from timm.data.transforms import str_to_interp_mode
from timm.scheduler import create_scheduler_v2
from timm.utils import dispatch_clip_grad


@dataclasses.dataclass(frozen=True)
class Rule:
    """What an option's values must be besides their type: `ok(value)`, and the words that say it."""
    accepted: str
    ok: Callable[[Any], bool]


def choice(*values: Any, more: str = '', ok: Optional[Callable[[Any], bool]] = None) -> Rule:
    """One of `values`; with `ok`, whatever `ok` accepts (`values` then name the common ones, `more` the rest)."""
    return Rule('one of ' + ', '.join(map(repr, values)) + (f' or {more}' if more else ''),
                ok or (lambda v: v in values))


AT_LEAST_1 = Rule('an integer >= 1', lambda v: v >= 1)
AT_LEAST_0 = Rule('an integer >= 0', lambda v: v >= 0)
POSITIVE = Rule('a finite number > 0', lambda v: math.isfinite(v) and v > 0)
NON_NEGATIVE = Rule('a finite number >= 0', lambda v: math.isfinite(v) and v >= 0)
FRACTION = Rule('a number in [0, 1)', lambda v: 0 <= v < 1)
PROBABILITY = Rule('a probability in [0, 1]', lambda v: 0 <= v <= 1)


def _timm_builds_scheduler(name: str) -> bool:
    """Whether timm's create_scheduler_v2 builds a scheduler named `name` (a later timm may know more)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        with warnings.catch_warnings():  # e.g. a deprecation: the run itself warns
            warnings.simplefilter('ignore')
            scheduler, _ = create_scheduler_v2(optimizer, sched=name, num_epochs=10, decay_epochs=1, warmup_epochs=1)
    except (ValueError, TypeError):
        return False
    return scheduler is not None  # 'none' builds no scheduler, which this trainer needs


def _timm_clips(mode: str) -> bool:
    """Whether timm's dispatch_clip_grad knows clip mode `mode`."""
    param = torch.zeros(1, requires_grad=True)
    param.grad = torch.zeros(1)
    try:
        dispatch_clip_grad([param], 1.0, mode=mode)
    except AssertionError:
        return False
    return True


def _timm_interpolates(name: str) -> bool:
    """Whether timm's transforms know interpolation `name`."""
    try:
        str_to_interp_mode(name)
    except KeyError:
        return False
    return True


SCHEDULER = choice('cosine', 'tanh', 'step', 'constant', 'multistep', 'plateau', 'poly', 'rsqrt',
                   more='another that timm\'s create_scheduler_v2 builds', ok=_timm_builds_scheduler)
CLIP_MODE = choice('norm', 'value', 'agc', more='another that timm\'s dispatch_clip_grad knows', ok=_timm_clips)
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')
INTERPOLATION = choice('', *INTERPOLATIONS, more='another that timm\'s transforms know',
                       ok=lambda v: v == '' or _timm_interpolates(v))
TRAIN_INTERPOLATION = choice('random', *INTERPOLATIONS, more='another that timm\'s transforms know',
                             ok=lambda v: v == 'random' or _timm_interpolates(v))


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its flags, add_argument's keyword arguments, and its Rule (None: its type alone says it).
    A None value passes when None is the option's default."""
    flags: Tuple[str, ...]
    kwargs: Dict[str, Any]
    rule: Optional[Rule]
    dest: str

    @property
    def name(self) -> str:
        """The flag that errors name: the first long one."""
        return next((f for f in self.flags if f.startswith('--')), self.flags[0])

    def check(self, value: Any) -> None:
        """A ValueError saying what this option accepts, when `value` does not follow its rule."""
        if self.rule is None or (value is None and self.kwargs.get('default') is None):
            return
        if value is None or not self.rule.ok(value):
            raise ValueError(f'{self.name} must be {self.rule.accepted}, got {value!r}')

    def recipe_error(self, value: Any) -> Optional[str]:
        """What a recipe value for this option should have been, or None when it fits (None always fits)."""
        if value is None:
            return None
        if self.kwargs.get('action') in ('store_true', 'store_false'):
            return None if isinstance(value, bool) else 'true or false'
        if self.kwargs.get('action') is ParseKwargs:
            return None if isinstance(value, dict) else 'a mapping of keyword arguments'
        kind_of = self.kwargs.get('type', str if self.kwargs.get('action') in (None, 'store') else None)
        kind = {int: 'an integer', float: 'a number', str: 'a string'}.get(kind_of)
        if kind is None:
            return None
        fits = lambda v: (isinstance(v, kind_of) or (kind_of is float and isinstance(v, int))) and not isinstance(v, bool)
        nargs = self.kwargs.get('nargs')
        if nargs in (None, '?'):
            return None if fits(value) else kind
        count = nargs if isinstance(nargs, int) else None
        fits_all = isinstance(value, list) and all(fits(v) for v in value)
        if fits_all and (len(value) == count if count else nargs == '*' or value):
            return None
        return f'a list of {count or "one or more"} {kind.split(" ", 1)[1]}s'


class Options:
    """The table: `add` declares an option in an argument group of `parser` and records its rule."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.table: Dict[str, Option] = {}

    def add(self, group: Any, *flags: str, rule: Optional[Rule] = None, **kwargs: Any) -> None:
        action = group.add_argument(*flags, **kwargs)
        self.table[action.dest] = Option(flags, kwargs, rule, action.dest)

    def check(self, args: argparse.Namespace) -> None:
        """Every option's value against its rule, in declaration order; a ValueError names the first that fails."""
        for option in self.table.values():
            option.check(getattr(args, option.dest))

    def load_recipe(self, path: str, forbidden: Iterable[str] = ()) -> Dict[str, Any]:
        """Read a YAML recipe of argument defaults; every key must be an option's dest (not one of `forbidden`,
        e.g. paths that belong on the command line), every value of the option's type (its rule is checked on
        the parsed values, with `check`)."""
        if not os.path.isfile(path):
            raise ValueError(f'--config: recipe file {path} does not exist.')
        try:
            with open(path) as f:
                cfg = yaml.safe_load(f) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ValueError(f'--config: recipe {path} is not valid YAML: {e}') from None
        if not isinstance(cfg, dict):
            raise ValueError(f'--config: recipe {path} must be a mapping of argument names to values.')
        allowed = sorted(set(self.table) - set(forbidden))
        for key, value in cfg.items():
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=3)
                hint = f' Did you mean {", ".join(hint)}?' if hint else ''
                raise ValueError(
                    f'--config: recipe {path} has unknown key {key!r}.{hint} Keys are train.py argument names '
                    f'with underscores, e.g. {", ".join(allowed[:6])}, ...')
            expected = self.table[key].recipe_error(value)
            if expected:
                raise ValueError(f'--config: recipe {path}: {key}: {value!r} is not {expected}')
        return cfg


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
