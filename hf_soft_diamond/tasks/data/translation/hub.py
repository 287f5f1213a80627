"""The Hub loader: German-English translation datasets through :func:`datasets.load_dataset` (needs internet).

Conventions: the datasets' rows already are ``{"translation": {src: ..., tgt: ...}}``;
:data:`HUB_TRANSLATION_DATASETS` maps the known dataset names to their de-en
config, used when no config is given.
"""

from __future__ import annotations

from typing import Any

import datasets

__all__ = ["HUB_TRANSLATION_DATASETS", "load_hub_translation_dataset"]


#: Hub datasets for users with internet: dataset name -> config name (de-en).
HUB_TRANSLATION_DATASETS: dict[str, str] = {
    "iwslt2017": "iwslt2017-de-en",
    "wmt14": "de-en",
    "wmt16": "de-en",
}


def load_hub_translation_dataset(
    dataset_name: str,
    dataset_config_name: str | None = None,
    *,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool | None = None,
    streaming: bool = False,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load a translation dataset from the Hugging Face Hub (needs internet).

    A thin wrapper of :func:`datasets.load_dataset` for datasets whose rows
    already are ``{"translation": {src: ..., tgt: ...}}``, e.g.
    ``("iwslt2017", "iwslt2017-de-en")``, ``("wmt14", "de-en")``,
    ``("wmt16", "de-en")``. When ``dataset_config_name`` is ``None`` and the
    name is in :data:`HUB_TRANSLATION_DATASETS`, its de-en config is used.
    ``trust_remote_code`` is passed only when set (newer ``datasets`` dropped
    script datasets).
    """
    if dataset_config_name is None:
        dataset_config_name = HUB_TRANSLATION_DATASETS.get(dataset_name.split("/")[-1])
    kwargs: dict[str, Any] = dict(load_kwargs)
    if trust_remote_code is not None:
        kwargs["trust_remote_code"] = trust_remote_code
    return datasets.load_dataset(
        dataset_name, dataset_config_name, cache_dir=cache_dir, token=token, streaming=streaming, **kwargs
    )
