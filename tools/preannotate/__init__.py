"""Pre-annotate a whole Label Studio project: every task predicted by the backend's own models and
the predictions written into Label Studio through its API, resumably; in one process or on Ray.

    python -m tools.preannotate --ls_url URL --api_key KEY --project ID [--config settings.toml]
        [--with key=value ...] [--ray [ADDRESS]] [--batch N] [--limit N] [--dry_run]

Modules: `client` (the Label Studio API through label-studio-sdk, with retries), `predicting` (the
backend's predictor over task batches), `job` (the single-process job), `ray_job` (the same on Ray
Data), `__main__` (the command line).
"""
