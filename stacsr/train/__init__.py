"""Training data for stacsr: pair manifests (:mod:`.pairs`), degradations (:mod:`.degrade`) and the
Ray Data pipeline that reads pairs remotely (:mod:`.data`).

A *manifest* is a GeoParquet table with one row per training patch (a window on an item's 10 m grid,
unsigned asset hrefs, radiometry, footprint). Pixels are read only when a pair is loaded, with hrefs
signed at that moment. The ``wald`` kind makes LR from HR by degradation; other kinds (``cross-sensor``)
plug in as a manifest builder in :mod:`.pairs` plus a reader in :data:`stacsr.train.data.READERS`.
"""
