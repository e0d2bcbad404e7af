"""Responses that live on the server: storage (SQLite by default, Redis for several replicas),
``previous_response_id``, retrieval, background runs. See ``service.py`` for how it hooks in, and
``routes.install_store`` for where it is wired into the app."""
