"""Training for stacsr: pair manifests, sampling, pair kinds, degradations, the Ray Data pipeline that reads
pairs remotely, and training on Ray Train.

A *manifest* (:mod:`.manifest`) is a GeoParquet table with one row per training patch (a window on an item's
10 m grid, unsigned asset hrefs, radiometry, footprint). Windows are sampled where the ground is clear
(:mod:`.sampling`). Each pair kind is one module holding its builder and its reader: ``wald`` makes LR from
HR by degradation (:mod:`.pairs_wald`, and :mod:`.pairs_images` for local GeoTIFFs), ``cross-sensor`` pairs
Sentinel-2 with another sensor (:mod:`.pairs_cross_sensor`); :data:`stacsr.train.data.KINDS` maps a kind to
its reader. Pixels are read only when a pair is loaded (:mod:`.reading`, :mod:`.data`), with hrefs signed at
that moment.
"""
