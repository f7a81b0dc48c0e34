"""A small RASP-style language and its compiler to TinyTransformer weights (circuits known by construction)."""

from .compiler import Compiled, Leak, compile_program
from .program import (EQ, GT, LEQ, LT, TRUE, Aggregate, Indices, Map, Predicate, Select, SelectorWidth,
                      SequenceMap, SOp, Tokens, evaluate, indices, run_program, tokens)

__all__ = ["EQ", "GT", "LEQ", "LT", "TRUE", "Aggregate", "Compiled", "Indices", "Leak", "Map", "Predicate",
           "Select", "SelectorWidth", "SequenceMap", "SOp", "Tokens", "compile_program", "evaluate", "indices",
           "run_program", "tokens"]
