"""Verbatim memorization of text (ALGORITHMS.md §6), as `rote text` does it.

- `import_files(paths, out, tokenizer="bytes")`: a corpus from text files.
- `build_index(corpus, kind="bloom"|"exact", n=50, fp=1e-3, …)`: an n-gram index file.
- `Index(path)`: open one; `.hits(tokens, n)`, `.contains(gram)`, `.count(pattern)`,
  `.longest_match(tokens)`, `.memfree_choose(context, candidates)`, `.scan(generations)`,
  `.demo(passages, length)` (the style demonstration).
- `normalize(text)`: the normal form the near-verbatim metrics compare.
"""

from ._rote import Index  # noqa: F401
from ._rote import text_build_index as build_index  # noqa: F401
from ._rote import text_import as import_files  # noqa: F401
from ._rote import text_normalize as normalize  # noqa: F401

__all__ = ["Index", "build_index", "import_files", "normalize"]
