"""Plumbing every layer may use, one implementation each: error lines and redaction (:mod:`.redaction`), one
retry policy (:mod:`.retry`), storage (:mod:`.storage`: a URI to a filesystem, atomic writes to a path or
key) and the figure renderer (:mod:`.figures`). Nothing here imports the rest of stacsr."""
