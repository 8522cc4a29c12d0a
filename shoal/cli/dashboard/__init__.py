"""``swctl dashboard``: a live web view of the cluster, and swctl's actions from the page.

The package is a client like every other swctl verb: it reads the cluster through the
runtime's shared informers (one list+watch per kind, no polling of etcd) and writes only
by running swctl's own verb functions (``actions``), so a change made in the page is
validated, conflict-handled and reported exactly as the same command typed in a shell.

Modules, one job each: ``command`` (the verb's flags, imported by ``swctl`` at start-up,
so it stays light), ``views`` (objects to the compact JSON the page draws), ``hub``
(informer changes coalesced into batches for every connected browser), ``customkinds``
(the CRDs followed, one table per custom kind), ``actions`` (page
requests to swctl argv, run in-process), ``access`` (localhost or a token), ``server``
(the aiohttp application: page, event stream, actions, logs). ``static/`` holds the page
itself: one HTML, one JS, one CSS file, no framework and no build step.
"""
