"""App-facing services: background jobs (:mod:`.jobs`), per-session storage (:mod:`.session_store`) and the
conventions shared by the command-line tools (:mod:`.cli`)."""
