"""The demo page at `/`: a text box that calls `POST /predict` and highlights the entities."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def demo_page() -> str:
    return files("ner_pipeline").joinpath("static/demo.html").read_text(encoding="utf-8")
