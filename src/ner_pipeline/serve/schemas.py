"""Request and response models of the service's routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EntityOut(BaseModel):
    label: str = Field(description="Entity type, e.g. PER.")
    text: str = Field(description="The exact substring of the input.")
    start: int = Field(description="Start character offset into the input text.")
    end: int = Field(description="End character offset (exclusive).")
    score: float = Field(description="Model confidence in [0, 1].")


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Raw texts to tag.")
    aggregation: Literal["first", "average", "max"] = Field(
        "first", description="How subword scores combine into a word's label (as in Hugging Face pipelines)."
    )


class PredictResponse(BaseModel):
    model: str = Field(description="name/version (or folder) of the model that answered.")
    entities: list[list[EntityOut]]


class ModelInfo(BaseModel):
    name: str
    version: str | None = None
    alias: str | None = None
    source: str
    backend: str
    labels: list[str]
    metrics: dict[str, float] = {}


class Health(BaseModel):
    status: str
