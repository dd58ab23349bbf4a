"""ml_collections configs: one schema (``base.py``), a default per dataset, leaf configs
per SDE under ``ve/``, ``vp/`` and ``subvp/``, and ``validation.validate_config``."""
