"""MkDocs hook: stand-in pages for documents that other parts of the project write.

Some pages of the site (the multi-GPU guide, ...) are written together with the code they describe.
Until such a page exists in ``docs/``, this hook adds a short stand-in so that links to it resolve
and ``mkdocs build --strict`` passes; once the real page exists, the hook does nothing for it.
"""

from __future__ import annotations

import logging

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.pending_pages")

PENDING_PAGES: dict[str, str] = {
    "multi_gpu.md": (
        "# Multi-GPU and multi-node training\n\n"
        "This guide is written together with the distributed-training code (strategy presets, DDP "
        "tests, multi-node launch). Until it lands, see "
        "[Run on many GPUs and nodes](how-to/many-gpus.md).\n"
    ),
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, content in PENDING_PAGES.items():
        if files.get_file_from_path(path) is None:
            log.info("pending page %s: using a stand-in", path)
            files.append(File.generated(config, path, content=content))
    return files
