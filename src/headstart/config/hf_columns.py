"""The recipe's fields for a Hugging Face data set (headstart.data.hf_source): which columns hold the image and label.

A base of DataConfig (config/recipe.py), so `data.image_column` / `--image-column` and
`data.label_column` / `--label-column` are recipe fields and flags like any other.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# data.path of a data set on the Hugging Face Hub: hf://datasets/NAME (downloaded once, then read from the cache).
HF_PREFIX = "hf://datasets/"


class HuggingFaceColumns(BaseModel):
    # Empty: the data set's one column with an Image feature, and its one ClassLabel column (names from
    # the feature); a label column of plain ints or strings is read with its values as the class names.
    image_column: str | None = Field(None, min_length=1, max_length=200)
    label_column: str | None = Field(None, min_length=1, max_length=200)
