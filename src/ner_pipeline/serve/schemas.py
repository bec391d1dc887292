"""Request and response models of the service's routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

OFFSETS = (
    "Offsets count Unicode code points (Python `str` indices), not UTF-16 units or bytes: in JavaScript slice "
    "`Array.from(text)`, not `text`, so that emoji and flags before an entity do not shift it."
)


class EntityOut(BaseModel):
    label: str = Field(description="Entity type, e.g. PER.")
    text: str = Field(description="The exact substring of the input: the code points `start` to `end`.")
    start: int = Field(description=f"Start offset into the input text, in Unicode code points. {OFFSETS}")
    end: int = Field(description=f"End offset (exclusive), in Unicode code points. {OFFSETS}")
    score: float = Field(description="Model confidence in [0, 1].")


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Raw texts to tag (valid Unicode: no lone surrogates).")
    aggregation: Literal["first", "average", "max"] = Field(
        "first", description="How subword scores combine into a word's label (as in Hugging Face pipelines)."
    )

    @field_validator("texts")
    @classmethod
    def _valid_unicode(cls, texts: list[str]) -> list[str]:
        # JSON may carry a lone surrogate ("\ud800"), which no tokenizer (and no UTF-8 encoder) accepts.
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"texts[{i}] has a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}; "
                    "send valid Unicode (a \\u escape above U+FFFF is a high and a low surrogate together)"
                ) from None
        return texts


class PredictResponse(BaseModel):
    model: str = Field(description="name/version (or folder name) of the model that answered.")
    entities: list[list[EntityOut]] = Field(description="One list per input text, in the order of `texts`.")


class ModelInfo(BaseModel):
    name: str = Field(description="Registered model name, or the served folder's name (never a full path).")
    version: str | None = None
    alias: str | None = None
    source: str = Field(description="models:/NAME@alias, or the served folder's name.")
    backend: str
    labels: list[str]
    metrics: dict[str, float] = {}


class Health(BaseModel):
    status: str = Field(description="ok, loading (the model is still loading) or failed.")
