""" CADA operators, apart from the modules that use them (see `functional.py` for the dispatch). """
from .functional import BACKENDS, CADA_IMPLS, PIXEL_FILTER_IMPLS, cada_filter, choose_backend, dense_pays, pixel_filter
from .native import native_available
from .reference import filter_output_size, synthesize_attn
