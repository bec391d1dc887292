"""Prefect flows that chain the stage tasks (installed as `ner_pipeline_flows`)."""
