"""What the readers of an exported folder share with its writer: the name of the file that
describes it, and the optional ctranslate2 package.

Nothing here imports torch: running an exported model never loads it
(`seq2seq.engines.ctranslate2_engine`); only exporting one does
(`seq2seq.export`, whose converter needs ctranslate2's torch-based converters).
"""

from __future__ import annotations

from .errors import ConfigError

# What `s2s export` writes beside CTranslate2's files for s2s to run the folder; its
# presence is what makes a folder an exported model.
EXPORT_FILE = "s2s_export.json"
INSTALL_HINT = "pip install 's2s[ctranslate2]'"


def import_ctranslate2(purpose: str, converters: bool = False):
    """The ctranslate2 module, or a ConfigError saying how to install it.

    It is an optional extra, imported only by what needs it; `purpose` says
    what that is. With `converters`, its converters and specs are imported too
    (they import torch).
    """
    try:
        import ctranslate2

        if converters:
            import ctranslate2.converters  # noqa: F401
            import ctranslate2.specs  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"{purpose} needs the ctranslate2 package ({err}): {INSTALL_HINT}") from None
    return ctranslate2
