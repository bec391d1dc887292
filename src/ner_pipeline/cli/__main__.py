"""`python -m ner_pipeline.cli` (e.g. under torchrun) runs the command line."""

from ner_pipeline.cli import app

app()
