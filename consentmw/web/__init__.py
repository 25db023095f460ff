"""The HTTP endpoints under the consent prefix: consent API, beacon, rights, admin, assets.

Each module registers its routes on the one `ConsentAPI` router (see `routes`). The domain
(`core`, `collect`, `store`, `rights`) never imports from here.
"""
