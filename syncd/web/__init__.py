"""``syncd dashboard``: a server-rendered web dashboard over syncd's library functions.

One module per kind of page (overview, products, product, audit, links, dead letters), the
templates beside them in ``templates/``, every asset served from ``static/`` (no CDN, no
JavaScript). Every page has a JSON twin (the same URL with ``.json``); every action is a POST that
scripts may call with a bearer token (``syncd dashboard token create NAME``).
"""
