"""Telling a local path from a hub name (a model, tokenizer or dataset id). A leaf module."""
import os


def looks_like_local_path(name: str) -> bool:
    """An absolute, relative or home path, or anything that exists here; everything else is a hub id."""
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name))
